//! The scaler's AWS fleet against moto server: jobs queued on a real hub raise Auto Scaling groups'
//! desired capacity through the real control loop (never past MaxSize; a full group's share goes
//! to the next group), AZRebalance is suspended, the queue token comes from SSM, and a wrong group
//! name stops the scaler before anything starts.

mod support;

#[path = "../../agent/tests/support/moto.rs"]
mod moto;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::HubProcess;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn scaler_run(
    hub: &HubProcess,
    moto: &moto::MotoServer,
    groups: &[&str],
    dir: &std::path::Path,
) -> Child {
    let config = format!(
        "poll_interval_ms: 300\nfleets:\n  - agent_type: default\n    queue:\n      endpoint: {}\n      token_ssm_parameter: /flotilla/default-token\n    aws:\n      region: us-east-1\n      endpoint_url: {}\n      groups: [{}]\n",
        hub.url(),
        moto.url,
        groups.join(", ")
    );
    let path = dir.join("scaler.yaml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join("scaler.log")).unwrap();
    let mut command = Command::new(support::scaler_binary());
    command
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (name, value) in moto.env() {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

#[test]
fn queued_jobs_raise_the_groups_in_priority_order() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu-spot", 0, 2, 0);
    moto.create_group(&runtime, "gpu-ondemand", 0, 10, 0);
    let hub = HubProcess::start(&[]);
    moto.put_secret(
        &runtime,
        "/flotilla/default-token",
        &hub.registration_token(),
    );
    for index in 0..5 {
        hub.submit(&[&format!("echo {index}")]);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run(&hub, &moto, &["gpu-spot", "gpu-ondemand"], dir.path());
    let log = || std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default();
    support::wait_for("both groups to be raised", Duration::from_secs(60), || {
        moto.group(&runtime, "gpu-spot").0 == 2 && moto.group(&runtime, "gpu-ondemand").0 == 3
    });
    let (spot_desired, spot_instances, spot_suspended) = moto.group(&runtime, "gpu-spot");
    assert_eq!(
        (spot_desired, spot_instances.len()),
        (2, 2),
        "never past MaxSize"
    );
    assert!(
        spot_suspended.contains(&"AZRebalance".to_string()),
        "{spot_suspended:?}"
    );
    assert!(moto
        .group(&runtime, "gpu-ondemand")
        .2
        .contains(&"AZRebalance".to_string()));
    // Raise only: a steady queue changes nothing more.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(moto.group(&runtime, "gpu-ondemand").0, 3, "{}", log());
    assert!(log().contains("decision"), "{}", log());
    let _ = scaler.kill();
    let _ = scaler.wait();
}

#[test]
fn a_wrong_group_name_is_a_clear_error() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    let hub = HubProcess::start(&[]);
    moto.put_secret(
        &runtime,
        "/flotilla/default-token",
        &hub.registration_token(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run(&hub, &moto, &["no-such-group"], dir.path());
    let status = scaler.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(dir.path().join("scaler.log")).unwrap();
    assert!(
        log.contains("Auto Scaling group 'no-such-group' does not exist"),
        "{log}"
    );
}
