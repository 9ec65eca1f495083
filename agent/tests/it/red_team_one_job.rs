//! Red team, "one job per machine": a job that `kill -9`s its own agent, after which the agent is
//! started again on the same machine (same HOME and job record, as a service manager or a reboot
//! would start it) while another job waits in the queue. Before the job record the restarted
//! agent registered again and ran the second job on the dirty machine; now it does not register:
//! it exits 1 naming the record, and with `--ec2` it removes its instance first (fake IMDS and
//! moto standing in for EC2).

use testkit::agent_process;

use testkit::moto;

use protocol::{Command, JobRequest};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;
use testkit::imds::FakeImds;
use testkit::mock_hub::FakeHub;

const LONG: Duration = Duration::from_secs(60);

fn job(id: &str, command: &str) -> JobRequest {
    JobRequest {
        job_id: id.into(),
        commands: vec![Command::new(command)],
        ..JobRequest::default()
    }
}

/// `agent start --disconnect-after-job` against `hub` with `home` as HOME (and TMPDIR under it);
/// output goes to `out`.
fn start_agent(
    hub: &FakeHub,
    home: &Path,
    out: &Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> Child {
    let output = std::fs::File::create(out).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_agent"));
    command
        .args(["start", "--endpoint", &hub.address, "--no-https"])
        .args(["--name", "red-team-agent", "--disconnect-after-job"])
        .args(extra)
        .env("SEMAPHORE_AGENT_TOKEN", "registration-token")
        .env("SEMAPHORE_AGENT_LOG_FILE_PATH", home.join("agent.log"))
        .env("HOME", home)
        .env("TMPDIR", home)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output);
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("start the agent binary")
}

fn wait(child: &mut Child, out: &Path) -> i32 {
    agent_process::wait_for_exit(child, LONG, || {
        std::fs::read_to_string(out).unwrap_or_default()
    })
}

/// Runs the first agent until its job kills it with SIGKILL; returns the agent's output.
fn first_agent_is_killed_by_its_job(
    hub: &FakeHub,
    home: &Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> String {
    let out = home.join("first.out");
    let mut first = start_agent(hub, home, &out, extra, env);
    hub.assign(job("job-killer", &format!("kill -9 {}", first.id())), "jwt");
    let code = wait(&mut first, &out);
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(code, -1, "killed by a signal:\n{output}");
    assert_eq!(hub.state().job_fetches, vec!["job-killer".to_string()]);
    output
}

#[test]
fn an_agent_killed_by_its_job_is_not_registered_again_on_the_same_machine() {
    let hub = FakeHub::start();
    let home = tempfile::tempdir().unwrap();
    first_agent_is_killed_by_its_job(&hub, home.path(), &[], &[]);
    let record = home.path().join(".flotilla-agent/job-taken");

    // Restarted as systemd's Restart= would do, with another project's job waiting.
    hub.assign(
        job("job-second", "echo second job on a dirty machine"),
        "jwt",
    );
    let out = home.path().join("second.out");
    let mut second = start_agent(&hub, home.path(), &out, &[], &[]);
    let code = wait(&mut second, &out);
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("This machine already took a job")
            && output.contains(&record.display().to_string())
            && output.contains("job_id=job-killer"),
        "{output}"
    );
    let state = hub.state();
    assert_eq!(
        state.register_attempts, 1,
        "registered once only:\n{output}"
    );
    assert_eq!(state.job_fetches, vec!["job-killer".to_string()]);
    assert!(state.finished.is_empty(), "{:?}", state.finished);
    let text = std::fs::read_to_string(&record).expect("the job was recorded under HOME");
    assert!(text.starts_with("job_id=job-killer\ntaken_at="), "{text}");
}

#[test]
fn a_record_at_an_explicit_path_is_honoured_whatever_home_is() {
    let hub = FakeHub::start();
    let state_dir = tempfile::tempdir().unwrap();
    let record = state_dir.path().join("var/lib/flotilla/job-taken");
    let record_arg = record.display().to_string();
    let extra = ["--job-record-file", record_arg.as_str()];
    let home = tempfile::tempdir().unwrap();
    first_agent_is_killed_by_its_job(&hub, home.path(), &extra, &[]);
    assert!(record.exists());
    hub.assign(job("job-second", "echo second"), "jwt");
    // A fresh HOME (the job could have emptied its own): the record still refuses the machine.
    let other_home = tempfile::tempdir().unwrap();
    let out = other_home.path().join("second.out");
    let mut second = start_agent(&hub, other_home.path(), &out, &extra, &[]);
    let output_code = wait(&mut second, &out);
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(output_code, 1, "{output}");
    assert!(output.contains(&record_arg), "{output}");
    assert_eq!(hub.state().register_attempts, 1);
}

#[test]
fn on_ec2_an_agent_restarted_after_its_job_killed_it_removes_its_instance() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "agents", 0, 3, 2);
    let (_, instances, _) = moto.group(&runtime, "agents");
    let imds = FakeImds::start(&instances[0]);
    let hub = FakeHub::start();
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("powered-off");
    let poweroff = format!("touch {}", marker.display());
    let extra = [
        "--ec2",
        "--ec2-poll-seconds",
        "1",
        "--imds-endpoint",
        imds.address.as_str(),
        "--ec2-poweroff-command",
        poweroff.as_str(),
    ];
    let env = moto.env();
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
    first_agent_is_killed_by_its_job(&hub, home.path(), &extra, &env);
    let (desired, remaining, _) = moto.group(&runtime, "agents");
    assert_eq!(desired, 2, "a killed agent removed nothing");
    assert!(remaining.contains(&instances[0]));

    hub.assign(job("job-second", "echo second"), "jwt");
    let out = home.path().join("second.out");
    let mut second = start_agent(&hub, home.path(), &out, &extra, &env);
    let code = wait(&mut second, &out);
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("This machine already took a job"),
        "{output}"
    );
    assert_eq!(hub.state().register_attempts, 1, "{output}");
    assert_eq!(hub.state().job_fetches, vec!["job-killer".to_string()]);
    let (desired, remaining, _) = moto.group(&runtime, "agents");
    assert_eq!(desired, 1, "removed with decrement:\n{output}");
    assert!(!remaining.contains(&instances[0]), "{remaining:?}");
    assert!(!marker.exists(), "the group removed it; no power-off");
}
