//! Container-job benchmarks (figures, not assertions), each a ratio to the shell executor measured
//! in the same run on the same machine, for both engines: the machine's Docker (`host`) and the
//! job's own rootless Podman (`rootless`, as the job user `flotilla-ci-job`; its image from a baked
//! store, its engine's start counted in the agent's part):
//! (a) start overhead: job start → the first command's `cmd_started`, minus the time spent inside
//!     `docker compose run` itself (the `Pulling docker images...` and `Starting the docker
//!     image...` steps, timed from their own events) — what the agent adds around Compose; for the
//!     shell executor the same span minus bash's start;
//! (b) log throughput: `cat` of the same file in the job, through `docker compose run`'s terminal
//!     and the agent's PTY, from the command's `cmd_started` to its `cmd_finished` in the job log;
//!     and, for comparison, a bare `compose run main cat` read from a PTY (first byte to last), the
//!     relay Compose itself manages without the agent.
//! Needs Docker, Compose, Podman and root; the job image is the tests' base image
//! (`.ci/base-image`).
//! `cargo bench -p agent --bench containers [start|throughput]`; sizes: `BENCH_CONTAINER_JOBS`,
//! `BENCH_CONTAINER_LOG_MB`, `BENCH_CONTAINER_ROUNDS`.

mod common;

use testkit::containers;

use agent::compose::engine::{ContainerEngine, RootlessOptions};
use agent::job::{job_environment, run_job, JobControl, JobOptions};
use agent::joblog::JobLog;
use common::{env_usize, make_data, median};
use protocol::{Command, Compose, Container, JobRequest, JobResult, LogEvent};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Every event of a job with the instant it was logged.
type Timeline = Vec<(Instant, LogEvent)>;

fn run_timed(request: &JobRequest, options: &JobOptions, scratch: &std::path::Path) -> Timeline {
    let events: Arc<Mutex<Timeline>> = Arc::default();
    let sink = events.clone();
    let observer: agent::joblog::Observer = Box::new(move |event: &LogEvent| {
        sink.lock().unwrap().push((Instant::now(), event.clone()));
    });
    let log = JobLog::create(scratch.join("bench-log.json"), Some(observer)).unwrap();
    let result = run_job(request, options, &log, &JobControl::new());
    log.close();
    log.remove_file();
    assert_eq!(result, JobResult::Passed, "{:#?}", events.lock().unwrap());
    let timeline = events.lock().unwrap().clone();
    timeline
}

/// When `directive` started and finished.
fn span(timeline: &Timeline, directive: &str) -> (Instant, Instant) {
    let at = |want_start: bool| {
        timeline
            .iter()
            .find(|(_, event)| match event {
                LogEvent::CmdStarted { directive: d, .. } => want_start && d == directive,
                LogEvent::CmdFinished { directive: d, .. } => !want_start && d == directive,
                _ => false,
            })
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no {directive} in the log"))
    };
    (at(true), at(false))
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64() * 1000.0
}

/// Which executor, and for containers which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Shell,
    Host,
    Rootless,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Shell, Kind::Host, Kind::Rootless];

    fn name(self) -> &'static str {
        match self {
            Kind::Shell => "shell executor",
            Kind::Host => "container, host Docker",
            Kind::Rootless => "container, rootless engine",
        }
    }
}

fn options(scratch: &std::path::Path, kind: Kind) -> JobOptions {
    let mut options = JobOptions {
        shell_env: job_environment(std::env::vars()),
        scratch_root: scratch.to_path_buf(),
        ..JobOptions::default()
    };
    if kind == Kind::Rootless {
        use std::os::unix::fs::PermissionsExt;
        let user = containers::rootless_user();
        std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o711)).unwrap();
        user.apply_to_environment(&mut options.shell_env);
        options.job_user = Some(user);
        options.compose.engine = ContainerEngine::Rootless(RootlessOptions {
            image_store: Some(image_store().to_path_buf()),
        });
    }
    options
}

/// The rootless engine's baked store, holding the base image.
fn image_store() -> &'static std::path::Path {
    static STORE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    STORE.get_or_init(|| containers::rootless_store(&[containers::base_image()]))
}

fn job(id: &str, kind: Kind, command: &str) -> JobRequest {
    let mut request = JobRequest {
        job_id: id.into(),
        commands: vec![Command::new(command)],
        ..JobRequest::default()
    };
    if kind != Kind::Shell {
        request.executor = "dockercompose".into();
        request.compose = Compose {
            containers: vec![Container {
                name: "main".into(),
                image: containers::base_image().into(),
                ..Container::default()
            }],
            ..Compose::default()
        };
    }
    request
}

/// (total, shell start, overhead) in ms of one job: job start → first command started, the time
/// spent in the shell's start (Compose's two runs, or bash's start), and the rest.
fn start_figures(kind: Kind, scratch: &std::path::Path) -> (f64, f64, f64) {
    let request = job(&format!("bench-start-{kind:?}"), kind, "true");
    let timeline = run_timed(&request, &options(scratch, kind), scratch);
    let job_started = timeline[0].0;
    let (first, _) = span(&timeline, "true");
    let total = millis(job_started, first);
    let shell = if kind == Kind::Shell {
        // Bash's start: from job_started to the export directive, which follows it at once.
        let (export, _) = span(&timeline, "Exporting environment variables");
        millis(job_started, export)
    } else {
        let (pull_start, pull_end) = span(&timeline, "Pulling docker images...");
        let (shell_start, shell_end) = span(&timeline, "Starting the docker image...");
        millis(pull_start, pull_end) + millis(shell_start, shell_end)
    };
    (total, shell, total - shell)
}

fn start_overhead() {
    let jobs = env_usize("BENCH_CONTAINER_JOBS", 5);
    let scratch = tempfile::tempdir().unwrap();
    let mut figures: [Vec<(f64, f64, f64)>; 3] = Default::default();
    for _ in 0..jobs {
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            figures[index].push(start_figures(kind, scratch.path()));
        }
    }
    let column = |index: usize, pick: fn(&(f64, f64, f64)) -> f64| {
        median(figures[index].iter().map(pick).collect())
    };
    println!(
        "(a) job start, median of {jobs} jobs each (job start -> first command's cmd_started):"
    );
    let shell_total = column(0, |f| f.0);
    for (index, kind) in Kind::ALL.into_iter().enumerate() {
        let (total, own, overhead) = (
            column(index, |f| f.0),
            column(index, |f| f.1),
            column(index, |f| f.2),
        );
        println!(
            "    {:27} total {total:8.1} ms, shell start {own:8.1} ms, agent's part {overhead:7.1} ms; total - shell's {:7.1} ms",
            kind.name(),
            total - shell_total
        );
    }
    let detection: Vec<f64> = (0..jobs)
        .map(|_| {
            let started = Instant::now();
            agent::compose::cli::detect().unwrap();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    println!(
        "    not in the median: finding Compose, once per agent process (a CLI start) {:6.1} ms",
        median(detection)
    );
}

/// Seconds from the first byte to the last of `compose run --rm main cat /data.txt` read from a
/// PTY: what Compose's own terminal relay allows, without the agent.
fn raw_compose_seconds(data: &std::path::Path, scratch: &std::path::Path) -> f64 {
    use agent::shell::pty;
    let cli = agent::compose::cli::detect().unwrap();
    let (program, selector) = cli.program();
    let file = scratch.join("raw-compose.yml");
    let text = format!(
        "version: '2.0'\nservices:\n  main:\n    image: {}\n    volumes:\n    - {}:/data.txt\n",
        containers::base_image(),
        data.display()
    );
    std::fs::write(&file, text).unwrap();
    let project = format!("flotilla-bench-raw-{:08x}", rand::random::<u32>());
    let file_text = file.display().to_string();
    let mut args: Vec<&str> = selector.to_vec();
    args.extend(["--ansi", "never", "-f", &file_text, "-p", &project]);
    let run: Vec<&str> = [&args[..], &["run", "--rm", "main", "cat", "/data.txt"]].concat();
    let terminal = pty::open_pty().unwrap();
    let env: Vec<(String, String)> = job_environment(std::env::vars());
    let mut child = pty::spawn_in_pty(&terminal, program, &run, &env).unwrap();
    drop(terminal.slave);
    let mut master = terminal.master;
    let mut buffer = vec![0u8; 64 * 1024];
    // From the first byte to the last one (Compose then still removes the container).
    let (mut first, mut last) = (None, Instant::now());
    while let Ok(read) = pty::read_master(&mut master, &mut buffer) {
        if read == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
    }
    let seconds = first
        .map(|at| last.duration_since(at).as_secs_f64())
        .unwrap_or(0.0);
    let _ = child.wait();
    let down: Vec<&str> = [&args[..], &["down", "--remove-orphans", "--volumes"]].concat();
    let _ = std::process::Command::new(program).args(down).output();
    seconds
}

/// Seconds from the `cat` command's start to its end in the job log.
fn cat_seconds(kind: Kind, data: &std::path::Path, scratch: &std::path::Path) -> f64 {
    let mut options = options(scratch, kind);
    let path = if kind == Kind::Shell {
        data.display().to_string()
    } else {
        options.compose.files = vec![(data.display().to_string(), "/data.txt".into())];
        "/data.txt".to_string()
    };
    let command = format!("cat {path}");
    let timeline = run_timed(
        &job(&format!("bench-cat-{kind:?}"), kind, &command),
        &options,
        scratch,
    );
    let (start, end) = span(&timeline, &command);
    end.duration_since(start).as_secs_f64()
}

fn throughput() {
    let megabytes = env_usize("BENCH_CONTAINER_LOG_MB", 50);
    let rounds = env_usize("BENCH_CONTAINER_ROUNDS", 3);
    let scratch = tempfile::tempdir().unwrap();
    // Readable by the rootless engine's job user, whose `main` mounts it.
    let data = std::env::temp_dir().join(format!("flotilla-bench-{}.txt", std::process::id()));
    make_data(&data, megabytes, b"abcdefghijklmnopqrstuvwxyz");
    let mut seconds: [Vec<f64>; 3] = Default::default();
    let mut raw = Vec::new();
    for round in 0..rounds {
        // Rotate which runs first, so drift on a noisy machine favours none.
        for step in 0..3 {
            let index = (round + step) % 3;
            seconds[index].push(cat_seconds(Kind::ALL[index], &data, scratch.path()));
        }
        raw.push(raw_compose_seconds(&data, scratch.path()));
        println!(
            "  round {}: shell {:.2} s | host {:.2} s | rootless {:.2} s",
            round + 1,
            seconds[0][round],
            seconds[1][round],
            seconds[2][round]
        );
    }
    let _ = std::fs::remove_file(&data);
    let mb = megabytes as f64;
    println!("(b) log throughput, {megabytes} MB `cat` into the job log, {rounds} rounds:");
    for (index, kind) in Kind::ALL.into_iter().enumerate() {
        let ratios: Vec<f64> = (0..rounds)
            .map(|round| seconds[0][round] / seconds[index][round])
            .collect();
        println!(
            "    {:27} median {:8.1} MB/s, ratio to the shell executor (median of rounds) {:.2}x",
            kind.name(),
            mb / median(seconds[index].clone()),
            median(ratios)
        );
    }
    println!(
        "    raw `compose run cat` on the host Docker from a PTY, median {:8.1} MB/s (Compose's own relay)",
        mb / median(raw)
    );
}

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    // Build (or find) the images before anything is timed.
    let _ = containers::base_image();
    let _ = image_store();
    if wants("start") {
        start_overhead();
    }
    if wants("throughput") {
        throughput();
    }
}
