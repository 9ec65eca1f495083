//! The agent end to end against a control plane (the fixture in `support/`): the real `agent`
//! binary registers, syncs, runs jobs in bash, pushes logs, reports results, obeys shutdowns and
//! signals, and runs its shutdown hook. Tests that need upstream's long retry timings shortened
//! run the same listener in-process with shorter [`Timings`].

use agent::config::Config;
use agent::job::{job_environment, JobOptions};
use agent::listener::{Listener, Timings};
use protocol::{Command, JobRequest};

use std::time::Duration;
use testkit::mock_hub::FakeHub;

const LONG: Duration = Duration::from_secs(30);

use agent_process::AgentProcess;
use testkit::agent_process;

/// The agent binary against `hub`, named `test-agent-1`.
fn spawn_agent(hub: &FakeHub, extra_args: &[&str]) -> AgentProcess {
    spawn_agent_with_path(hub, extra_args, None)
}

fn spawn_agent_with_path(
    hub: &FakeHub,
    extra_args: &[&str],
    path_prefix: Option<&std::path::Path>,
) -> AgentProcess {
    let args = [&["--name", "test-agent-1"][..], extra_args].concat();
    AgentProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_agent")),
        &hub.address,
        "registration-token",
        &args,
        path_prefix,
    )
}

fn job(id: &str, commands: &[&str]) -> JobRequest {
    JobRequest {
        job_id: id.into(),
        commands: commands.iter().map(|c| Command::new(*c)).collect(),
        ..JobRequest::default()
    }
}

fn hello_log() -> Vec<String> {
    [
        "job_started",
        "directive: Exporting environment variables",
        "Exit Code: 0",
        "directive: Injecting Files",
        "Exit Code: 0",
        "directive: echo -n 'hello'",
        "hello",
        "Exit Code: 0",
        "directive: Exporting environment variables",
        "Exporting SEMAPHORE_JOB_RESULT\n",
        "Exit Code: 0",
        "job_finished: passed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn runs_one_job_end_to_end_and_shuts_down_after_it() {
    let hub = FakeHub::start();
    hub.assign(job("job-1", &["echo -n 'hello'"]), "jwt");
    hub.assign(job("job-2", &["echo -n 'second'"]), "jwt");
    let mut agent = spawn_agent(&hub, &["--disconnect-after-job"]);
    let code = agent.wait(LONG);
    assert_eq!(code, 0, "{}", agent.output());

    let state = hub.state();
    let registered = state.registered.clone().expect("registered");
    assert_eq!(registered.name, "test-agent-1");
    assert_eq!(registered.version, agent::listener::VERSION);
    assert_eq!(registered.pid, agent.pid() as i64);
    assert_eq!(registered.arch, agent::host::arch());
    assert_eq!(registered.hostname, agent::host::hostname());
    assert!(registered.single_job);
    let (_, register_auth, user_agent) = state
        .headers
        .iter()
        .find(|(p, _, _)| p.ends_with("/register"))
        .unwrap()
        .clone();
    assert_eq!(register_auth, "Token registration-token");
    assert_eq!(user_agent, agent::listener::user_agent());
    assert!(state
        .headers
        .iter()
        .filter(|(p, _, _)| p.ends_with("/sync"))
        .all(|(_, auth, _)| auth == "Token access-token"));
    assert!(state
        .headers
        .iter()
        .filter(|(p, _, _)| p.starts_with("/api/v1/logs/"))
        .all(|(_, auth, _)| auth == "Bearer jwt"));
    assert_eq!(
        state.finished,
        vec![("job-1".to_string(), "passed".to_string())]
    );
    assert_eq!(state.job_fetches, vec!["job-1".to_string()], "one job only");
    assert!(state.disconnected);
    assert!(state.unexpected.is_empty(), "{:?}", state.unexpected);
    drop(state);

    assert_eq!(hub.simplified_log("job-1"), hello_log());
    let states = hub.states_reported();
    assert_eq!(states.first().map(String::as_str), Some("waiting-for-jobs"));
    assert!(states.contains(&"finished-job".to_string()), "{states:?}");
    assert_eq!(agent.shutdown_reason(), "JOB_FINISHED");
    assert!(
        agent
            .output()
            .contains("Agent shutting down due to: JOB_FINISHED"),
        "{}",
        agent.output()
    );
}

#[test]
fn the_job_shell_does_not_see_the_registration_token() {
    let hub = FakeHub::start();
    hub.assign(
        job(
            "job-env",
            &["echo -n \"token=${SEMAPHORE_AGENT_TOKEN:-unset}\""],
        ),
        "jwt",
    );
    let mut agent = spawn_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(agent.wait(LONG), 0);
    let log = hub.simplified_log("job-env");
    assert!(log.contains(&"token=unset".to_string()), "{log:?}");
}

#[test]
fn expired_log_token_is_refreshed() {
    let hub = FakeHub::start();
    hub.assign(job("job-1", &["echo -n 'hello'"]), "expired-token");
    let mut agent = spawn_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert!(hub.state().token_refreshed);
    assert_eq!(hub.simplified_log("job-1"), hello_log());
    let state = hub.state();
    assert!(state
        .headers
        .iter()
        .any(|(p, auth, _)| p.starts_with("/api/v1/logs/") && auth == "Bearer new-token"));
}

#[test]
fn a_full_log_server_trims_the_log_but_the_job_still_passes() {
    let hub = FakeHub::start();
    hub.state().log_max_events = Some(3);
    hub.assign(
        job(
            "job-1",
            &["for i in $(seq 1 30); do echo line $i; sleep 0.1; done"],
        ),
        "jwt",
    );
    let mut agent = spawn_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    let state = hub.state();
    assert_eq!(
        state.finished,
        vec![("job-1".to_string(), "passed".to_string())]
    );
    let pushed_after_full = state
        .headers
        .iter()
        .filter(|(p, _, _)| p.starts_with("/api/v1/logs/"))
        .count();
    assert_eq!(
        pushed_after_full,
        state.log_batches.len() + 1,
        "pushing stops at the first 422"
    );
    assert!(
        state.logs["job-1"].len() < 30,
        "later events were not accepted"
    );
}

#[test]
fn log_batches_are_contiguous_and_at_most_2000_lines() {
    let hub = FakeHub::start();
    // ~4500 output events: at least three batches.
    hub.assign(
        job(
            "job-big",
            &["for i in $(seq 1 4500); do printf '%099d' $i; done"],
        ),
        "jwt",
    );
    let mut agent = spawn_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    let state = hub.state();
    assert!(state.unexpected.is_empty(), "{:?}", state.unexpected);
    assert!(state.log_batches.len() >= 3, "{:?}", state.log_batches);
    let mut expected_start = 0;
    for (_, start_from, count) in &state.log_batches {
        assert_eq!(*start_from, expected_start);
        assert!(*count <= 2000);
        expected_start += *count as u64;
    }
    let lines = &state.logs["job-big"];
    assert_eq!(lines.len() as u64, expected_start);
    let output: String = lines
        .iter()
        .filter_map(
            |l| match serde_json::from_str::<protocol::LogEvent>(l).unwrap() {
                protocol::LogEvent::CmdOutput { output, .. }
                    if !output.starts_with("Exporting") =>
                {
                    Some(output)
                }
                _ => None,
            },
        )
        .collect();
    assert_eq!(output.len(), 4500 * 99);
}

#[test]
fn register_is_retried_until_it_succeeds() {
    let hub = FakeHub::start();
    hub.state().register_rejections = 2;
    hub.state().shutdown_scheduled = true;
    let mut agent = spawn_agent(&hub, &[]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(hub.state().register_attempts, 3);
    assert_eq!(agent.shutdown_reason(), "REQUESTED");
}

#[test]
fn sigterm_while_running_reports_interruption_and_the_server_stops_the_job() {
    let hub = FakeHub::start();
    hub.assign(job("job-1", &["sleep 60"]), "jwt");
    let mut agent = spawn_agent(&hub, &["--interruption-grace-period", "0"]);
    hub.wait_until("the job to run", LONG, |s| {
        s.syncs.iter().any(|x| x.state.as_str() == "running-job")
    });
    agent.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    agent.signal(libc::SIGTERM); // a second signal must not kill the agent
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    let state = hub.state();
    assert_eq!(
        state.finished,
        vec![("job-1".to_string(), "stopped".to_string())]
    );
    assert!(state.syncs.iter().any(|s| s.interrupted_at > 0));
    drop(state);
    assert_eq!(agent.shutdown_reason(), "INTERRUPTED");
    let log = hub.simplified_log("job-1");
    assert_eq!(
        log[log.len() - 3..],
        [
            "directive: sleep 60",
            "Exit Code: 1",
            "job_finished: stopped"
        ]
    );
}

#[test]
fn grace_period_lets_the_job_finish_before_the_interrupted_shutdown() {
    let hub = FakeHub::start();
    hub.assign(job("job-1", &["sleep 2"]), "jwt");
    let mut agent = spawn_agent(&hub, &["--interruption-grace-period", "60"]);
    hub.wait_until("the job to run", LONG, |s| {
        s.syncs.iter().any(|x| x.state.as_str() == "running-job")
    });
    agent.signal(libc::SIGINT);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(
        hub.state().finished,
        vec![("job-1".to_string(), "passed".to_string())]
    );
    assert_eq!(agent.shutdown_reason(), "INTERRUPTED");
}

#[test]
fn idle_timeout_shuts_down_an_idle_agent() {
    let hub = FakeHub::start();
    let mut agent = spawn_agent(&hub, &["--disconnect-after-idle-timeout", "1"]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(hub.state().registered.as_ref().unwrap().idle_timeout, 1);
    assert_eq!(agent.shutdown_reason(), "IDLE");
}

#[test]
fn server_stop_then_shutdown_while_running_a_job() {
    let hub = FakeHub::start();
    hub.assign(job("job-1", &["sleep 60", "echo never"]), "jwt");
    let mut agent = spawn_agent(&hub, &[]);
    hub.wait_until("the job to run", LONG, |s| {
        s.syncs.iter().any(|x| x.state.as_str() == "running-job")
    });
    hub.state().stop_requested = true;
    hub.wait_until("the job to finish", LONG, |s| !s.finished.is_empty());
    assert_eq!(
        hub.state().finished,
        vec![("job-1".to_string(), "stopped".to_string())]
    );
    // Not single-job: the agent goes back to waiting.
    hub.wait_until("waiting again", LONG, |s| {
        s.syncs
            .last()
            .is_some_and(|x| x.state.as_str() == "waiting-for-jobs")
    });
    hub.state().shutdown_scheduled = true;
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(agent.shutdown_reason(), "REQUESTED");
}

#[test]
fn stop_job_while_the_job_is_starting_does_not_crash_the_agent() {
    let hub = FakeHub::start();
    {
        let mut state = hub.state();
        state.get_job_delay = Duration::from_millis(800);
        state.stop_while_starting = true;
        state.stop_requested = true;
    }
    hub.assign(job("job-1", &["sleep 60"]), "jwt");
    let mut agent = spawn_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(
        hub.state().finished,
        vec![("job-1".to_string(), "stopped".to_string())]
    );
    assert_eq!(
        hub.simplified_log("job-1"),
        ["job_started", "job_finished: stopped"]
    );
}

#[test]
fn a_single_job_agent_never_takes_a_second_job_even_when_offered() {
    let hub = FakeHub::start();
    hub.state().ignore_single_job = true;
    hub.assign(job("job-1", &["echo -n 'hello'"]), "jwt");
    hub.assign(job("job-2", &["echo -n 'second'"]), "jwt");
    let mut agent = spawn_agent(&hub, &["--disconnect-after-job"]);
    hub.wait_until("the first job to finish", LONG, |s| !s.finished.is_empty());
    hub.wait_until("job-2 to be offered", LONG, |s| s.queue.is_empty());
    std::thread::sleep(Duration::from_millis(500));
    hub.state().shutdown_scheduled = true;
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(hub.state().job_fetches, vec!["job-1".to_string()]);
    assert!(
        agent.output().contains("this agent runs a single job"),
        "{}",
        agent.output()
    );
}

#[test]
fn invalid_configuration_exits_1_with_the_upstream_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "endpoint: localhost:1\ntoken: t\nendpiont: typo\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["start", "--config-file", &config.display().to_string()])
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            dir.path().join("agent.log"),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("Unrecognized option 'endpiont'. Exiting..."));
}

#[test]
fn version_and_run_commands() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        agent::listener::VERSION
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"commands\": [{\"directive\": 5}]}").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["run", &bad.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not a valid JSON job request"),
        "{output:?}"
    );

    let good = dir.path().join("job.yaml");
    std::fs::write(
        &good,
        "commands:\n  - directive: echo hi\n  - directive: exit 3\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["run", &good.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "a failed job exits 1");
    let events: Vec<protocol::LogEvent> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.last().unwrap().simplified(), "job_finished: failed");
    assert!(events.iter().any(|e| e.simplified() == "hi\n"));
}

// In-process runs, for the scenarios upstream's retry timings would make slow.

fn in_process(hub_address: &str, timings: Timings) -> std::thread::JoinHandle<i32> {
    let config = Config {
        endpoint: hub_address.to_string(),
        token: "registration-token".into(),
        no_https: true,
        disconnect_after_job: true,
        ..Config::default()
    };
    let scratch = tempfile::tempdir().unwrap().keep();
    let options = JobOptions {
        shell_env: job_environment(std::env::vars()),
        scratch_root: scratch,
        ..JobOptions::default()
    };
    std::thread::spawn(move || {
        Listener::new(config, options, timings).run("in-process-agent".into())
    })
}

fn fast_timings() -> Timings {
    Timings {
        register_attempts: 3,
        register_delay: Duration::from_millis(10),
        get_job_attempts: 5,
        get_job_delay: Duration::from_millis(10),
        disconnect_attempts: 3,
        disconnect_delay: Duration::from_millis(10),
        ..Timings::default()
    }
}

#[test]
fn registration_failure_exits_1() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    assert_eq!(in_process(&address, fast_timings()).join().unwrap(), 1);

    let hub = FakeHub::start();
    hub.state().register_rejections = 100;
    assert_eq!(in_process(&hub.address, fast_timings()).join().unwrap(), 1);
    assert_eq!(
        hub.state().register_attempts,
        3,
        "exactly register_attempts calls"
    );
}

#[test]
fn get_job_is_retried() {
    let hub = FakeHub::start();
    hub.state().get_job_rejections = 4;
    hub.assign(job("job-1", &["echo -n 'hello'"]), "jwt");
    assert_eq!(in_process(&hub.address, fast_timings()).join().unwrap(), 0);
    assert_eq!(hub.state().get_job_attempts, 5);
    assert_eq!(
        hub.state().finished,
        vec![("job-1".to_string(), "passed".to_string())]
    );
}

#[test]
fn a_job_that_cannot_be_fetched_is_reported_failed() {
    let hub = FakeHub::start();
    hub.state().get_job_rejections = 100;
    hub.assign(job("job-1", &["echo -n 'hello'"]), "jwt");
    assert_eq!(in_process(&hub.address, fast_timings()).join().unwrap(), 0);
    assert_eq!(hub.state().get_job_attempts, 5);
    assert_eq!(
        hub.state().finished,
        vec![("job-1".to_string(), "failed".to_string())]
    );
    assert!(
        hub.simplified_log("job-1").is_empty(),
        "no log for a job that never ran"
    );
}

#[test]
fn an_unknown_executor_is_reported_failed_with_a_log_message() {
    let hub = FakeHub::start();
    let mut request = job("job-1", &["echo -n 'hello'"]);
    request.executor = "doesnotexist".into();
    hub.assign(request, "jwt");
    assert_eq!(in_process(&hub.address, fast_timings()).join().unwrap(), 0);
    assert_eq!(
        hub.state().finished,
        vec![("job-1".to_string(), "failed".to_string())]
    );
    let log = hub.simplified_log("job-1");
    assert!(
        log.iter()
            .any(|l| l.contains("Unknown executor type 'doesnotexist'")),
        "{log:?}"
    );
}

#[test]
fn a_malformed_job_request_is_reported_failed() {
    let hub = FakeHub::start();
    {
        let mut state = hub.state();
        state.queue.push_back("job-bad".into());
        state.raw_job_bodies.insert(
            "job-bad".into(),
            r#"{"job_id": "job-bad", "commands": "not a list""#.into(),
        );
    }
    assert_eq!(in_process(&hub.address, fast_timings()).join().unwrap(), 0);
    assert_eq!(
        hub.state().get_job_attempts,
        5,
        "a bad body is retried like any failed fetch"
    );
    assert_eq!(
        hub.state().finished,
        vec![("job-bad".to_string(), "failed".to_string())]
    );
}

/// Two healthy A10Gs (GPU-aaaa, GPU-bbbb; 23028 MiB, driver 550.54.15).
fn fake_nvidia_smi() -> testkit::gpu::FakeGpuTools {
    testkit::gpu::FakeGpu::healthy(2, "NVIDIA A10G").install()
}

#[test]
fn gpus_are_exported_to_jobs_and_reported_only_when_asked() {
    let tools = fake_nvidia_smi();
    let hub = FakeHub::start();
    hub.assign(
        job(
            "job-gpu",
            &["echo -n \"$FLOTILLA_GPU_COUNT|$FLOTILLA_GPU_MODEL|$NVIDIA_VISIBLE_DEVICES\""],
        ),
        "jwt",
    );
    let mut agent = spawn_agent_with_path(
        &hub,
        &["--disconnect-after-job", "--report-gpus"],
        Some(tools.path()),
    );
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert!(
        hub.simplified_log("job-gpu")
            .contains(&"2|NVIDIA A10G|0,1".to_string()),
        "{:?}",
        hub.simplified_log("job-gpu")
    );
    let reported = hub.state().registered.clone().unwrap().flotilla_gpus;
    assert_eq!(reported.len(), 2);
    assert_eq!(
        (
            reported[1].index,
            reported[1].uuid.as_str(),
            reported[1].memory_mib
        ),
        (1, "GPU-bbbb", 23028)
    );
    assert!(
        agent
            .output()
            .contains("2 NVIDIA GPU(s): NVIDIA A10G (23028 MiB), driver 550.54.15"),
        "{}",
        agent.output()
    );

    // Without --report-gpus the registration is upstream's, byte for byte.
    let hub = FakeHub::start();
    hub.state().shutdown_scheduled = true;
    let mut agent = spawn_agent_with_path(&hub, &[], Some(tools.path()));
    assert_eq!(agent.wait(LONG), 0);
    assert!(hub
        .state()
        .registered
        .clone()
        .unwrap()
        .flotilla_gpus
        .is_empty());
}
