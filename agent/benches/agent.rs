//! Agent benchmarks (run by `bench/agent.sh`; figures, not assertions):
//! (a) log throughput of a job that prints ~200 MB, end to end into a local HTTP log sink, as a
//!     ratio to raw PTY throughput (`cat` of the same file through a PTY) measured in the same run;
//! (b) job start overhead: run-job answered → first `cmd_started` received by the log sink,
//!     minus the time bash takes to start;
//! (c) idle RSS of `agent start` (the release binary) registered and syncing.

mod common;

use agent::config::Config;
use agent::job::{job_environment, run_job, JobControl, JobOptions};
use agent::joblog::JobLog;
use agent::listener::{Listener, Timings};
use agent::pusher::{LogPusher, PushConfig};
use agent::shell::pty;
use common::{env_usize, make_data, median};
use protocol::{Command, JobRequest, JobResult};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::mock_hub::FakeHub;

/// The characters of `make_data`'s lines.
const ALPHABET: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_=+/()[]{}";

/// Seconds to read all of `cat file` from a PTY master (the raw baseline).
fn raw_pty_seconds(file: &std::path::Path) -> (f64, u64) {
    let pty = pty::open_pty().unwrap();
    let env: Vec<(String, String)> =
        vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())];
    let started = Instant::now();
    let mut child = pty::spawn_in_pty(&pty, "cat", &[&file.display().to_string()], &env).unwrap();
    drop(pty.slave);
    let mut master = pty.master;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match pty::read_master(&mut master, &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let _ = child.wait();
    (started.elapsed().as_secs_f64(), total)
}

/// A minimal HTTP/1.1 log sink: reads each request's body (Content-Length), counts its lines,
/// answers 200 with keep-alive. Lean on purpose, so the benchmark measures the agent, not the
/// sink (a real log server runs elsewhere).
struct LeanSink {
    address: String,
    lines: Arc<std::sync::atomic::AtomicU64>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl LeanSink {
    fn start() -> LeanSink {
        use std::io::{BufRead, BufReader, Read};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let lines = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (line_count, byte_count) = (lines.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (line_count, byte_count) = (line_count.clone(), byte_count.clone());
                let _ = std::thread::Builder::new()
                    .name("log-sink".into())
                    .spawn(move || {
                        let mut writer = stream.try_clone().unwrap();
                        let mut reader = BufReader::with_capacity(16 * 1024, stream);
                        let mut body = Vec::new();
                        loop {
                            let mut length = 0usize;
                            let mut header = String::new();
                            loop {
                                header.clear();
                                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                    return;
                                }
                                if header == "\r\n" {
                                    break;
                                }
                                let lower = header.to_ascii_lowercase();
                                if let Some(value) = lower.strip_prefix("content-length:") {
                                    length = value.trim().parse().unwrap_or(0);
                                }
                            }
                            body.resize(length, 0);
                            if reader.read_exact(&mut body).is_err() {
                                return;
                            }
                            byte_count.fetch_add(length as u64, Ordering::Relaxed);
                            line_count.fetch_add(
                                memchr::memchr_iter(b'\n', &body).count() as u64,
                                Ordering::Relaxed,
                            );
                            if writer
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
            }
        });
        LeanSink {
            address,
            lines,
            bytes,
        }
    }
}

/// Seconds for a job that `cat`s the file, from job start until every event is accepted by the
/// sink; plus the number of events and bytes the sink received.
fn agent_seconds(
    file: &std::path::Path,
    sink: &LeanSink,
    scratch: &std::path::Path,
) -> (f64, u64, u64) {
    use std::sync::atomic::Ordering;
    sink.lines.store(0, Ordering::SeqCst);
    sink.bytes.store(0, Ordering::SeqCst);
    let request = JobRequest {
        job_id: "throughput".into(),
        commands: vec![Command::new(format!("cat {}", file.display()))],
        ..JobRequest::default()
    };
    let options = JobOptions {
        shell_env: job_environment(std::env::vars()),
        scratch_root: scratch.to_path_buf(),
        ..JobOptions::default()
    };
    let started = Instant::now();
    // The command's start, as the log records it: the end-to-end figure excludes bash's login
    // start-up (measured by the start benchmark), which does not depend on how much is logged.
    let command_started: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let seen = command_started.clone();
    let observer: agent::joblog::Observer = Box::new(move |event| {
        if matches!(event, protocol::LogEvent::CmdStarted { directive, .. } if directive.starts_with("cat "))
        {
            *seen.lock().unwrap() = Some(Instant::now());
        }
    });
    let log = Arc::new(JobLog::create(scratch.join("throughput.json"), Some(observer)).unwrap());
    let pusher = LogPusher::spawn(
        log.clone(),
        PushConfig {
            url: format!("http://{}/api/v1/logs/throughput", sink.address),
            token: "jwt".into(),
            user_agent: agent::listener::user_agent(),
            refresh_token: Box::new(|| {
                Err(agent::client::ClientError::Status {
                    what: "no refresh in the benchmark",
                    status: 401,
                })
            }),
            partial_batch_interval: Duration::from_secs(1),
            lines_per_request: agent::pusher::MAX_LINES_PER_REQUEST,
        },
    )
    .unwrap();
    let result = run_job(&request, &options, &log, &JobControl::new());
    let job_done = started.elapsed().as_secs_f64();
    let pushed_then = sink.lines.load(Ordering::SeqCst);
    let outcome = pusher.close(Duration::from_secs(600));
    if std::env::var("BENCH_VERBOSE").is_ok() {
        println!(
            "  job done after {job_done:.2} s with {pushed_then} events pushed; {} requests",
            outcome.requests
        );
    }
    let command_started = command_started
        .lock()
        .unwrap()
        .expect("the cat command started");
    let seconds = command_started.elapsed().as_secs_f64();
    assert_eq!(result, JobResult::Passed);
    assert!(outcome.complete, "every event delivered");
    (
        seconds,
        sink.lines.load(Ordering::SeqCst),
        sink.bytes.load(Ordering::SeqCst),
    )
}

fn throughput() {
    let megabytes = env_usize("BENCH_LOG_MB", 200);
    let rounds = env_usize("BENCH_ROUNDS", 5);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("data.txt");
    make_data(&file, megabytes, ALPHABET);
    let sink = LeanSink::start();
    let (mut raw, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut events = 0;
    for round in 0..rounds {
        // Alternate which runs first, so drift on a noisy machine does not favour one side.
        let (raw_seconds, agent_run) = if round % 2 == 0 {
            let raw_seconds = raw_pty_seconds(&file).0;
            (raw_seconds, agent_seconds(&file, &sink, scratch.path()))
        } else {
            let agent_run = agent_seconds(&file, &sink, scratch.path());
            (raw_pty_seconds(&file).0, agent_run)
        };
        let (seconds, lines, pushed) = agent_run;
        events = lines;
        raw.push(raw_seconds);
        ours.push(seconds);
        ratios.push(raw_seconds / seconds);
        println!(
            "  round {}: raw PTY {raw_seconds:.2} s | agent {seconds:.2} s ({lines} events, {:.0} MB of JSON pushed) | ratio {:.2}x",
            round + 1,
            pushed as f64 / 1e6,
            raw_seconds / seconds
        );
    }
    let mb = megabytes as f64;
    println!("(a) log throughput, {megabytes} MB job output, {rounds} paired rounds:");
    println!(
        "    raw PTY (cat through a PTY), median     {:8.1} MB/s",
        mb / median(raw)
    );
    println!(
        "    agent end to end into HTTP sink, median {:8.1} MB/s  ({events} events)",
        mb / median(ours)
    );
    println!(
        "    ratio agent / raw PTY, median of rounds {:8.2}x   (target >= 0.8x)",
        median(ratios)
    );
}

/// Collects the agent's "job shell ready in N ms" log lines: bash's start time per job.
struct ShellStartTimes(std::sync::Mutex<Vec<f64>>);

/// The message of a `tracing` event.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for &'static ShellStartTimes {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        if let Some(rest) = message.0.strip_prefix(agent::job::SHELL_READY_LOG) {
            if let Ok(millis) = rest.trim().trim_end_matches("ms").trim().parse::<f64>() {
                self.0.lock().unwrap().push(millis);
            }
        }
    }
}

static SHELL_STARTS: ShellStartTimes = ShellStartTimes(std::sync::Mutex::new(Vec::new()));

fn start_overhead() {
    let jobs = env_usize("BENCH_START_JOBS", 15);
    let scratch = tempfile::tempdir().unwrap();
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(&SHELL_STARTS);
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let hub = FakeHub::start();
    hub.state().next_sync_after = 50;
    let config = Config {
        endpoint: hub.address.clone(),
        token: "t".into(),
        no_https: true,
        ..Config::default()
    };
    let options = JobOptions {
        shell_env: job_environment(std::env::vars()),
        scratch_root: scratch.path().to_path_buf(),
        ..JobOptions::default()
    };
    let listener = Listener::new(config, options, Timings::default());
    let agent = std::thread::spawn(move || listener.run("bench-agent-1".into()));
    let (mut end_to_end, mut overhead) = (Vec::new(), Vec::new());
    for index in 0..jobs {
        let id = format!("start-{index}");
        let request = JobRequest {
            job_id: id.clone(),
            commands: vec![Command::new("true")],
            ..JobRequest::default()
        };
        hub.assign(request, "jwt");
        hub.wait_until("the job to finish", Duration::from_secs(60), |s| {
            s.finished.iter().any(|(j, _)| j == &id)
        });
        let state = hub.state();
        let total = state.first_command_pushed[&id]
            .duration_since(state.run_job_sent[&id])
            .as_secs_f64()
            * 1000.0;
        let bash = SHELL_STARTS.0.lock().unwrap()[index];
        end_to_end.push(total);
        overhead.push(total - bash);
    }
    hub.state().shutdown_scheduled = true;
    let _ = agent.join();
    let bash = median(SHELL_STARTS.0.lock().unwrap().clone());
    let (total, overhead) = (median(end_to_end), median(overhead));
    println!("(b) job start, median of {jobs} jobs (bash's start measured in each job):");
    println!("    run-job answered -> first cmd_started at the log sink  {total:6.1} ms");
    println!("    of which bash --login start in a PTY                   {bash:6.1} ms");
    println!("    overhead (per-job difference)                          {overhead:6.1} ms   (target <= 20 ms)");
}

fn idle_rss() {
    let hub = FakeHub::start();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args([
            "start",
            "--endpoint",
            &hub.address,
            "--token",
            "t",
            "--no-https",
            "--name",
            "idle-rss-agent",
        ])
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            dir.path().join("agent.log"),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    hub.wait_until("a few syncs", Duration::from_secs(30), |s| {
        s.syncs.len() >= 10
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    println!("(c) idle agent (registered, 10 syncs done):");
    println!(
        "    VmRSS {:6.2} MiB   (target <= 10 MiB)",
        field("VmRSS:") / 1024.0
    );
    println!("    VmHWM {:6.2} MiB   (peak)", field("VmHWM:") / 1024.0);
}

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wants("throughput") {
        throughput();
    }
    if wants("start") {
        start_overhead();
    }
    if wants("rss") {
        idle_rss();
    }
}
