//! The agent on EC2 against a fake instance metadata service: IMDSv2 only, the warm-pool wait,
//! spot notices, naming by instance id — and end to end, a spot notice stopping the running job.

use testkit::agent_process;

use agent::cloud::imds::{Imds, ImdsError};
use std::time::Duration;
use testkit::imds::FakeImds;
use testkit::mock_hub::FakeHub;
use testkit::runtime;

#[test]
fn imdsv2_tokens_are_always_used_and_renewed_when_refused() {
    let imds = FakeImds::start("i-0123456789abcdef0");
    let mut client = Imds::new(&imds.address);
    assert_eq!(client.instance_id().unwrap(), "i-0123456789abcdef0");
    assert_eq!(client.get("no/such/item").unwrap(), None);
    assert_eq!(
        imds.state.lock().unwrap().tokens_issued,
        1,
        "one token for both requests"
    );
    // The service forgets the token (as after a restart): the client gets a new one, once.
    imds.state.lock().unwrap().current_token = "rotated".into();
    assert_eq!(client.instance_id().unwrap(), "i-0123456789abcdef0");
    assert_eq!(imds.state.lock().unwrap().tokens_issued, 2);
    // IMDSv1 (no token) is refused by the fake, as by an instance requiring IMDSv2.
    let v1 = reqwest::blocking::get(format!("{}/latest/meta-data/instance-id", imds.address));
    assert_eq!(v1.unwrap().status().as_u16(), 401);
}

#[test]
fn the_signed_instance_identity_is_read_through_imdsv2() {
    let imds = FakeImds::start("i-0identity00000001");
    let mut client = Imds::new(&imds.address);
    assert!(matches!(
        client.instance_identity(),
        Err(ImdsError::NoIdentity { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let (key, _cert) = testkit::imds::signing_key(dir.path(), "aws-test");
    imds.sign_identity("111122223333", &key);
    let identity = client.instance_identity().unwrap();
    let state = imds.state.lock().unwrap();
    assert_eq!(Some(&identity.document), state.identity_document.as_ref());
    assert_eq!(Some(&identity.signature), state.identity_signature.as_ref());
    assert!(identity
        .document
        .contains(r#""instanceId" : "i-0identity00000001""#));
    let dynamic: Vec<_> = state
        .requests
        .iter()
        .filter(|(_, path, _)| path.starts_with("/latest/dynamic/"))
        .collect();
    assert!(
        dynamic.iter().all(|(_, _, with_token)| *with_token),
        "{dynamic:?}"
    );
}

#[test]
fn an_unreachable_metadata_service_is_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let error = Imds::new(&address).instance_id().unwrap_err();
    assert!(
        matches!(error, ImdsError::TokenUnreachable { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("IMDSv2 token request"),
        "{error}"
    );
}

#[test]
fn warm_pool_instances_wait_until_in_service() {
    let imds = FakeImds::start("i-warm");
    imds.state.lock().unwrap().lifecycle_state = Some("Warmed:Running".into());
    let state = imds.state.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        state.lock().unwrap().lifecycle_state = Some("InService".into());
    });
    let mut client = Imds::new(&imds.address);
    let started = std::time::Instant::now();
    let state = agent::cloud::wait_until_in_service(
        &mut client,
        Duration::from_millis(50),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(state, "InService");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Outside an Auto Scaling group there is no lifecycle state: go on at once.
    let plain = FakeImds::start("i-plain");
    assert_eq!(
        agent::cloud::wait_until_in_service(
            &mut Imds::new(&plain.address),
            Duration::from_millis(50),
            Duration::from_secs(1)
        )
        .unwrap(),
        ""
    );
}

#[test]
fn spot_notices_are_parsed() {
    let imds = FakeImds::start("i-spot");
    let mut client = Imds::new(&imds.address);
    assert_eq!(agent::cloud::spot_notice(&mut client).unwrap(), None);
    imds.state.lock().unwrap().spot_action =
        Some(r#"{"action": "terminate", "time": "2026-11-23T12:00:00Z"}"#.into());
    let notice = agent::cloud::spot_notice(&mut client).unwrap().unwrap();
    assert_eq!(
        (notice.action.as_str(), notice.time.as_str()),
        ("terminate", "2026-11-23T12:00:00Z")
    );
    imds.state.lock().unwrap().spot_action = Some("not json".into());
    assert!(agent::cloud::spot_notice(&mut client).is_err());
}

#[test]
fn on_ec2_the_agent_is_named_by_instance_id_and_a_spot_notice_stops_its_job() {
    let imds = FakeImds::start("i-0feedfacecafebeef");
    let hub = FakeHub::start();
    hub.assign(
        protocol::JobRequest {
            job_id: "job-spot".into(),
            commands: vec![protocol::Command::new("sleep 60")],
            ..protocol::JobRequest::default()
        },
        "jwt",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::fs::File::create(dir.path().join("out")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args([
            "start",
            "--endpoint",
            &hub.address,
            "--no-https",
            "--token",
            "t",
            "--ec2",
            "--ec2-poll-seconds",
            "1",
        ])
        .args([
            "--imds-endpoint",
            &imds.address,
            "--interruption-grace-period",
            "0",
            "--disconnect-after-job",
            "--ec2-keep-instance",
        ])
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            dir.path().join("agent.log"),
        )
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    hub.wait_until("the job to run", Duration::from_secs(30), |s| {
        s.syncs.iter().any(|x| x.state.as_str() == "running-job")
    });
    assert_eq!(
        hub.state().registered.clone().unwrap().name,
        "i-0feedfacecafebeef"
    );
    imds.state.lock().unwrap().spot_action =
        Some(r#"{"action":"terminate","time":"2026-11-23T12:02:00Z"}"#.into());
    let out_file = dir.path().join("out");
    let code = agent_process::wait_for_exit(&mut child, Duration::from_secs(30), || {
        std::fs::read_to_string(&out_file).unwrap_or_default()
    });
    assert_eq!(code, 0);
    let state = hub.state();
    assert!(
        state.syncs.iter().any(|s| s.interrupted_at > 0),
        "the notice was reported as an interruption"
    );
    assert_eq!(
        state.finished,
        vec![("job-spot".to_string(), "stopped".to_string())]
    );
    assert_eq!(
        imds.state.lock().unwrap().refused_without_token,
        0,
        "no IMDSv1 request was ever made"
    );
}

use testkit::moto;

use testkit::fault_proxy;

/// Starts `agent start --ec2 ...` against the fake IMDS and moto; returns (exit code, output).
pub(crate) fn run_ec2_agent(
    hub: &FakeHub,
    imds: &FakeImds,
    aws_env: &[(&'static str, String)],
    dir: &std::path::Path,
    extra: &[&str],
) -> (i32, String) {
    let mut child = spawn_ec2_agent(hub, imds, aws_env, dir, extra);
    let out_file = dir.join("out");
    let code = agent_process::wait_for_exit(&mut child, Duration::from_secs(60), || {
        std::fs::read_to_string(&out_file).unwrap_or_default()
    });
    (
        code,
        std::fs::read_to_string(dir.join("out")).unwrap_or_default(),
    )
}

/// Starts `agent start --ec2 ...` (output in `dir/out`, scratch directories in `dir`).
pub(crate) fn spawn_ec2_agent(
    hub: &FakeHub,
    imds: &FakeImds,
    aws_env: &[(&'static str, String)],
    dir: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let out = std::fs::File::create(dir.join("out")).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_agent"));
    command
        .args([
            "start",
            "--endpoint",
            &hub.address,
            "--no-https",
            "--ec2",
            "--ec2-poll-seconds",
            "1",
        ])
        .args([
            "--imds-endpoint",
            &imds.address,
            "--token-ssm-parameter",
            "/flotilla/agent-token",
        ])
        .args(extra)
        .env("SEMAPHORE_AGENT_LOG_FILE_PATH", dir.join("agent.log"))
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (name, value) in aws_env {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

/// The Auto Scaling lifecycle state of `instance` in moto.
fn lifecycle_state(
    runtime: &tokio::runtime::Runtime,
    moto: &moto::MotoServer,
    instance: &str,
) -> String {
    let client = aws_sdk_autoscaling::Client::new(&moto.sdk(runtime));
    let described = runtime
        .block_on(
            client
                .describe_auto_scaling_instances()
                .instance_ids(instance)
                .send(),
        )
        .expect("describe the instance");
    described
        .auto_scaling_instances()
        .first()
        .and_then(|i| i.lifecycle_state())
        .unwrap_or("gone")
        .to_string()
}

pub(crate) fn one_job(hub: &FakeHub, id: &str, command: &str) {
    hub.assign(
        protocol::JobRequest {
            job_id: id.into(),
            commands: vec![protocol::Command::new(command)],
            env_vars: vec![protocol::EnvVar::plain("DEBUG_ME", "kept-value")],
            ..Default::default()
        },
        "jwt",
    );
}

#[test]
fn a_failed_jobs_instance_is_kept_in_standby_with_its_files_then_removed_without_a_second_decrement(
) {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "agents", 0, 3, 2);
    moto.put_secret(&runtime, "/flotilla/agent-token", "token");
    let (_, instances, _) = moto.group(&runtime, "agents");
    let keep = [
        "--disconnect-after-job",
        "--keep-failed-instance-minutes",
        "60",
    ];
    // The positive control: a passed job's instance is removed at once, with decrement.
    let (passed_hub, passed_imds) = (FakeHub::start(), FakeImds::start(&instances[1]));
    one_job(&passed_hub, "passes", "true");
    let (code, output, _) =
        run_ec2_agent_marking_power_off(&passed_hub, &passed_imds, &moto.env(), &keep);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("(decrement: true)"), "{output}");
    assert_eq!(moto.group(&runtime, "agents").0, 1, "{output}");

    let (hub, imds) = (FakeHub::start(), FakeImds::start(&instances[0]));
    one_job(&hub, "fails", "echo about to fail; false");
    let dir = tempfile::tempdir().unwrap();
    let poweroff = format!("touch {}", dir.path().join("powered-off").display());
    let args = [&keep[..], &["--ec2-poweroff-command", &poweroff]].concat();
    let mut agent = spawn_ec2_agent(&hub, &imds, &moto.env(), dir.path(), &args);
    let output = || std::fs::read_to_string(dir.path().join("out")).unwrap_or_default();
    testkit::wait_for(
        "the failed job's instance in Standby",
        Duration::from_secs(60),
        || lifecycle_state(&runtime, &moto, &instances[0]) == "Standby",
    );
    let (desired, members, _) = moto.group(&runtime, "agents");
    assert_eq!(
        desired,
        0,
        "decremented once, on entering Standby: {}",
        output()
    );
    assert!(members.contains(&instances[0]), "kept in its group");
    testkit::wait_for(
        "the instructions in the log",
        Duration::from_secs(10),
        || output().contains("sudo flotilla-debug-job"),
    );
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent waits while the instance is kept"
    );
    // The job's environment files stay for the debug session.
    let kept: String = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("flotilla-job-fails-")
        })
        .flat_map(|job| {
            std::fs::read_dir(job.path())
                .unwrap()
                .filter_map(Result::ok)
        })
        .map(|file| std::fs::read_to_string(file.path()).unwrap_or_default())
        .collect();
    assert!(
        kept.contains("export DEBUG_ME=kept-value"),
        "{kept}
{}",
        output()
    );

    // Told to stop (an operator, a spot notice's shutdown): removed, without a second decrement.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let code = agent_process::wait_for_exit(&mut agent, Duration::from_secs(60), output);
    assert_eq!(code, 0, "{}", output());
    assert!(output().contains("(decrement: false)"), "{}", output());
    let (desired, members, _) = moto.group(&runtime, "agents");
    assert_eq!(
        (desired, members.contains(&instances[0])),
        (0, false),
        "{}",
        output()
    );
}

/// `run_ec2_agent` with a power-off command that only leaves a marker: (code, output, powered off?).
fn run_ec2_agent_marking_power_off(
    hub: &FakeHub,
    imds: &FakeImds,
    aws_env: &[(&'static str, String)],
    extra: &[&str],
) -> (i32, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("powered-off");
    let poweroff = format!("touch {}", marker.display());
    let args: Vec<&str> = extra
        .iter()
        .copied()
        .chain(["--ec2-poweroff-command", &poweroff])
        .collect();
    let (code, output) = run_ec2_agent(hub, imds, aws_env, dir.path(), &args);
    (code, output, marker.exists())
}

#[test]
fn after_its_job_the_agent_removes_its_own_instance_with_decrement() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "agents", 0, 3, 2);
    moto.put_secret(
        &runtime,
        "/flotilla/agent-token",
        "registration-token-from-ssm",
    );
    let (_, instances, _) = moto.group(&runtime, "agents");
    assert_eq!(instances.len(), 2);
    let imds = FakeImds::start(&instances[0]);
    let hub = FakeHub::start();
    hub.assign(
        protocol::JobRequest {
            job_id: "job-1".into(),
            commands: vec![protocol::Command::new("echo hi")],
            ..Default::default()
        },
        "jwt",
    );
    let (code, output, powered_off) =
        run_ec2_agent_marking_power_off(&hub, &imds, &moto.env(), &["--disconnect-after-job"]);
    assert_eq!(code, 0, "{output}");
    let registration = hub
        .state()
        .headers
        .iter()
        .find(|(p, _, _)| p.ends_with("/register"))
        .unwrap()
        .1
        .clone();
    assert_eq!(
        registration, "Token registration-token-from-ssm",
        "the token came from SSM"
    );
    assert_eq!(hub.state().registered.clone().unwrap().name, instances[0]);
    let (desired, remaining, _) = moto.group(&runtime, "agents");
    assert_eq!(desired, 1, "decremented: {output}");
    assert!(!remaining.contains(&instances[0]), "{remaining:?}");
    assert!(
        !powered_off,
        "no power-off needed when the group removed the instance"
    );
    assert!(
        output.contains("terminated") && output.contains("(decrement: true)"),
        "{output}"
    );
}

#[test]
fn self_removal_retries_through_throttling_and_outages() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "agents", 0, 3, 2);
    moto.put_secret(&runtime, "/flotilla/agent-token", "t");
    let (_, instances, _) = moto.group(&runtime, "agents");
    let imds = FakeImds::start(&instances[0]);
    let hub = FakeHub::start();
    hub.state().shutdown_scheduled = true;
    let proxy = fault_proxy::FaultProxy::start(&moto.url);
    {
        let mut faults = proxy.faults.lock().unwrap();
        faults.only_action = Some("TerminateInstanceInAutoScalingGroup".into());
        faults.throttle_next = 2;
        faults.unavailable_next = 1;
    }
    let (code, output, powered_off) =
        run_ec2_agent_marking_power_off(&hub, &imds, &proxy.env(), &[]);
    assert_eq!(code, 0, "{output}");
    let faults = proxy.faults.lock().unwrap();
    assert_eq!(faults.faults_answered, 3, "{output}");
    let attempts = faults
        .actions
        .iter()
        .filter(|a| *a == "TerminateInstanceInAutoScalingGroup")
        .count();
    assert_eq!(
        attempts, 4,
        "three faults, then success: {:?}",
        faults.actions
    );
    drop(faults);
    assert!(output.contains("(decrement: true)"), "{output}");
    let (desired, remaining, _) = moto.group(&runtime, "agents");
    assert_eq!(desired, 1);
    assert!(!remaining.contains(&instances[0]));
    assert!(!powered_off, "the retries made power-off unnecessary");
}

/// moto with the token, an instance id no group knows, and a hub that shuts the agent down.
fn an_instance_of_no_group() -> (moto::MotoServer, FakeImds, FakeHub) {
    let moto = moto::MotoServer::start();
    moto.put_secret(&runtime(), "/flotilla/agent-token", "t");
    let imds = FakeImds::start("i-00000000000000000");
    let hub = FakeHub::start();
    hub.state().shutdown_scheduled = true;
    (moto, imds, hub)
}

#[test]
fn an_instance_the_group_cannot_remove_falls_back_to_power_off() {
    // An instance id no group knows: both terminate calls fail; power-off is the last resort.
    let (moto, imds, hub) = an_instance_of_no_group();
    let (code, output, powered_off) =
        run_ec2_agent_marking_power_off(&hub, &imds, &moto.env(), &[]);
    assert_eq!(code, 0, "{output}");
    let order: Vec<usize> = [
        "terminate (decrement: true) failed",
        "terminate (decrement: false) failed",
        "unhealthy",
        "ran 'touch",
    ]
    .iter()
    .map(|step| {
        output
            .find(step)
            .unwrap_or_else(|| panic!("missing '{step}' in {output}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "fallbacks in order: {output}"
    );
    assert!(powered_off);
}

#[test]
fn an_agent_whose_instance_could_not_be_removed_exits_non_zero() {
    // No group knows the instance and the power-off fails too: the unit must fail, so that its
    // OnFailure= removal (as root, with retries) runs.
    let (moto, imds, hub) = an_instance_of_no_group();
    let dir = tempfile::tempdir().unwrap();
    let (code, output) = run_ec2_agent(
        &hub,
        &imds,
        &moto.env(),
        dir.path(),
        &["--ec2-poweroff-command", "false"],
    );
    assert!(output.contains("ran 'false'"), "{output}");
    assert!(output.contains("every way of removing"), "{output}");
    assert_eq!(code, 1, "{output}");
}

#[test]
fn a_missing_ssm_parameter_is_a_clear_error() {
    let moto = moto::MotoServer::start();
    let imds = FakeImds::start("i-1");
    let hub = FakeHub::start();
    let dir = tempfile::tempdir().unwrap();
    let (code, output) = run_ec2_agent(&hub, &imds, &moto.env(), dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(
        output.contains("SSM parameter '/flotilla/agent-token' does not exist"),
        "{output}"
    );
    assert!(hub.state().registered.is_none());
}

#[test]
fn no_aws_credentials_is_a_clear_error() {
    let imds = FakeImds::start("i-1");
    let hub = FakeHub::start();
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args([
            "start",
            "--endpoint",
            &hub.address,
            "--no-https",
            "--ec2",
            "--imds-endpoint",
            &imds.address,
        ])
        .args([
            "--token-ssm-parameter",
            "/flotilla/agent-token",
            "--aws-region",
            "us-east-1",
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            dir.path().join("agent.log"),
        )
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("Could not read the registration token")
            && text.to_lowercase().contains("credentials"),
        "{text}"
    );
    assert!(hub.state().registered.is_none());
}
