//! The AMI's boot path on this machine, with the fake IMDS and moto standing in for EC2: the boot
//! script reads the one-line user data, the agent unit's own command line (taken from
//! ami/systemd/flotilla-agent.service) starts the agent, which takes its config and token from SSM,
//! registers under its instance id, runs its job and removes its instance; the boot-deadline
//! watchdog removes an instance whose agent never registered; `agent self-test` passes on the
//! installed units and scripts and names what is missing; `agent remove-instance` fails clearly
//! off EC2.

use testkit::agent_process;

use testkit::moto;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::imds::FakeImds;
use testkit::mock_hub::FakeHub;
use testkit::repo;
use testkit::runtime;

const AGENT_CONFIG: &str = "/flotilla/gpu-fleet/agent-config";
const TOKEN: &str = "/flotilla/gpu-fleet/agent-token";

/// The words of a unit's `ExecStart=`, split as systemd does for double-quoted words.
fn exec_start(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("ami/systemd").join(unit)).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn put_string(runtime: &tokio::runtime::Runtime, moto: &moto::MotoServer, name: &str, value: &str) {
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk(runtime));
    runtime
        .block_on(
            ssm.put_parameter()
                .name(name)
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send(),
        )
        .unwrap();
}

/// Runs ami/scripts/flotilla-boot against the fake IMDS; (exit code, stderr).
fn boot_script(imds: &FakeImds, run_dir: &Path) -> (i32, String) {
    let output = Command::new(repo().join("ami/scripts/flotilla-boot"))
        .env("FLOTILLA_IMDS_ENDPOINT", &imds.address)
        .env("FLOTILLA_IMDS_RETRIES", "1")
        .env("FLOTILLA_RUN_DIR", run_dir)
        .env("FLOTILLA_RUN_DIR_GROUP", "no-such-group-here")
        .env("FLOTILLA_CLOUDWATCH_TEMPLATE", run_dir.join("no-template"))
        .output()
        .expect("run flotilla-boot (needs bash and curl)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn the_boot_path_starts_the_agent_from_user_data_and_ssm_and_the_instance_removes_itself() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu-fleet", 0, 2, 1);
    let (_, instances, _) = moto.group(&runtime, "gpu-fleet");
    let instance = instances[0].clone();
    let hub = FakeHub::start();
    moto.put_secret(&runtime, TOKEN, "registration-token-from-ssm");
    put_string(
        &runtime,
        &moto,
        AGENT_CONFIG,
        &format!(
            "endpoint: {}\nno-https: true\ntoken-ssm-parameter: {TOKEN}\n",
            hub.address
        ),
    );
    hub.assign(
        protocol::JobRequest {
            job_id: "job-boot".into(),
            commands: vec![protocol::Command::new("echo booted")],
            ..Default::default()
        },
        "jwt",
    );
    let imds = FakeImds::start(&instance);
    imds.state.lock().unwrap().user_data =
        Some(format!("FLOTILLA_AGENT_CONFIG_PARAMETER={AGENT_CONFIG}\n").into_bytes());
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");

    let (code, stderr) = boot_script(&imds, &run_dir);
    assert_eq!(code, 0, "{stderr}");
    let env_text = std::fs::read_to_string(run_dir.join("agent.env")).unwrap();
    assert_eq!(
        env_text,
        format!("SEMAPHORE_AGENT_CONFIG_SSM_PARAMETER={AGENT_CONFIG}\nAWS_REGION=us-east-1\n")
    );
    assert!(!run_dir.join("scaler.env").exists());

    // The unit's command line, with the image's paths pointed into this test.
    let mut words = exec_start("flotilla-agent.service");
    assert_eq!(words[0], "/usr/local/bin/agent");
    words[0] = env!("CARGO_BIN_EXE_agent").to_string();
    let marker = dir.path().join("powered-off");
    let state_dir = dir.path().join("var-lib-flotilla");
    for index in 1..words.len() {
        words[index] = words[index]
            .replace("/run/flotilla", &run_dir.display().to_string())
            .replace("/var/lib/flotilla", &state_dir.display().to_string());
        // The image's job user is made by configure.sh; on this machine jobs run as nobody.
        if words[index - 1] == "--job-user" {
            words[index] = "nobody".to_string();
        }
        if words[index - 1] == "--ec2-poweroff-command" {
            words[index] = format!("touch {}", marker.display());
        }
    }
    for expected in [
        "start",
        "--ec2",
        "--disconnect-after-job",
        "--registered-file",
        "--job-record-file",
    ] {
        assert!(
            words.iter().any(|w| w == expected),
            "{expected} in {words:?}"
        );
    }
    let out = std::fs::File::create(dir.path().join("out")).unwrap();
    let mut command = Command::new(&words[0]);
    command
        .args(&words[1..])
        .env("SEMAPHORE_AGENT_IMDS_ENDPOINT", &imds.address)
        .env("SEMAPHORE_AGENT_EC2_POLL_SECONDS", "1")
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            dir.path().join("agent.log"),
        )
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (name, value) in moto.env() {
        command.env(name, value);
    }
    // EnvironmentFile= as systemd reads it.
    for line in env_text.lines() {
        let (name, value) = line.split_once('=').unwrap();
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let output_path = dir.path().join("out");
    let code = agent_process::wait_for_exit(&mut child, Duration::from_secs(60), || {
        std::fs::read_to_string(&output_path).unwrap_or_default()
    });
    let output = std::fs::read_to_string(&output_path).unwrap_or_default();
    assert_eq!(code, 0, "{output}");
    let state = hub.state();
    assert_eq!(
        state.registered.clone().unwrap().name,
        instance,
        "named by instance id"
    );
    let registration = state
        .headers
        .iter()
        .find(|(path, _, _)| path.ends_with("/register"))
        .unwrap()
        .1
        .clone();
    assert_eq!(registration, "Token registration-token-from-ssm");
    assert_eq!(
        state.finished,
        vec![("job-boot".to_string(), "passed".to_string())]
    );
    drop(state);
    assert_eq!(
        std::fs::read_to_string(run_dir.join("registered")).unwrap(),
        instance,
        "the registered file the watchdog looks for"
    );
    let (desired, remaining, _) = moto.group(&runtime, "gpu-fleet");
    assert_eq!((desired, remaining.len()), (0, 0), "{output}");
    assert!(!marker.exists());
    let record = std::fs::read_to_string(state_dir.join("job-taken")).unwrap();
    assert!(
        record.starts_with("job_id=job-boot\n"),
        "the job record a restarted agent would find: {record}"
    );
}

/// Runs ami/scripts/flotilla-boot-deadline as its unit does, with the real agent binary.
fn watchdog(imds: &FakeImds, moto: &moto::MotoServer, run_dir: &Path) -> (i32, String) {
    let words = exec_start("flotilla-boot-deadline.service");
    assert_eq!(
        words,
        vec!["/usr/local/lib/flotilla/flotilla-boot-deadline"]
    );
    let mut command = Command::new(repo().join("ami/scripts/flotilla-boot-deadline"));
    command
        .env("FLOTILLA_RUN_DIR", run_dir)
        .env("FLOTILLA_AGENT_BIN", env!("CARGO_BIN_EXE_agent"))
        .env("FLOTILLA_IMDS_ENDPOINT", &imds.address)
        .env("FLOTILLA_IMDS_RETRIES", "1");
    for (name, value) in moto.env() {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_boot_deadline_removes_an_instance_whose_agent_never_registered() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu-fleet", 0, 3, 2);
    let (_, instances, _) = moto.group(&runtime, "gpu-fleet");
    let imds = FakeImds::start(&instances[0]);
    imds.state.lock().unwrap().user_data =
        Some(format!("FLOTILLA_AGENT_CONFIG_PARAMETER={AGENT_CONFIG}").into_bytes());
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    assert_eq!(boot_script(&imds, &run_dir).0, 0);

    // Registered: the watchdog leaves the instance alone.
    std::fs::write(run_dir.join("registered"), &instances[0]).unwrap();
    let (code, output) = watchdog(&imds, &moto, &run_dir);
    assert_eq!(code, 0, "{output}");
    assert_eq!(moto.group(&runtime, "gpu-fleet").0, 2, "{output}");

    // Never registered: `agent remove-instance` takes it out of the group, with decrement.
    std::fs::remove_file(run_dir.join("registered")).unwrap();
    let (code, output) = watchdog(&imds, &moto, &run_dir);
    assert_eq!(code, 0, "{output}");
    let (desired, remaining, _) = moto.group(&runtime, "gpu-fleet");
    assert_eq!(desired, 1, "{output}");
    assert!(!remaining.contains(&instances[0]), "{output}");
    assert!(output.contains("boot-deadline"), "{output}");
    assert!(output.contains("(decrement: true)"), "{output}");
}

/// One H100 (testkit's fake `nvidia-smi`) and a fake `docker` beside it whose `info` lists
/// `docker_runtimes`.
fn fake_gpu_tools(docker_runtimes: &str) -> testkit::gpu::FakeGpuTools {
    let tools = testkit::gpu::FakeGpu::healthy(1, "NVIDIA H100 80GB HBM3")
        .memory_mib(81559)
        .driver_version("560.35.03")
        .install();
    let write = |name: &str, body: &str| {
        let path = tools.path().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    write(
        "docker",
        &format!(
            "#!/bin/sh\ncase \"$1\" in info) echo '{docker_runtimes}';; run) [ \"$3\" = --gpus ] && echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)';; *) exit 2;; esac\n"
        ),
    );
    tools
}

fn self_test(tools: &Path, scripts: &Path, imds: &str) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args([
            "self-test",
            "--gpu",
            "--docker-image",
            "nvidia/cuda:12.4.1-base-ubuntu22.04",
        ])
        .arg("--units-dir")
        .arg(repo().join("ami/systemd"))
        .arg("--scripts-dir")
        .arg(scripts)
        .args(["--imds-endpoint", imds])
        .env(
            "PATH",
            format!(
                "{}:{}",
                tools.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[test]
fn self_test_passes_on_the_image_layout_and_names_what_is_missing() {
    let imds = FakeImds::start("i-0123456789abcdef0");
    let tools =
        fake_gpu_tools(r#"{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}"#);
    let (code, output) = self_test(tools.path(), &repo().join("ami/scripts"), &imds.address);
    assert_eq!(code, 0, "{output}");
    for line in [
        "ok   systemd units: 8 in",
        "ok   boot scripts: 3 in",
        "ok   instance metadata (IMDSv2): instance i-0123456789abcdef0",
        "ok   NVIDIA driver (nvidia-smi): 1 NVIDIA GPU(s): NVIDIA H100",
        "ok   Docker NVIDIA runtime",
        "ok   docker run --gpus all: GPU 0: NVIDIA H100",
        "self-test passed",
    ] {
        assert!(output.contains(line), "{line}: {output}");
    }

    // No nvidia runtime, a boot script missing, no metadata service: each one named, exit 1.
    let tools = fake_gpu_tools(r#"{"runc":{"path":"runc"}}"#);
    let scripts = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("ami/scripts/flotilla-boot"),
        scripts.path().join("flotilla-boot"),
    )
    .unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, output) = self_test(tools.path(), scripts.path(), &closed);
    assert_eq!(code, 1, "{output}");
    for line in [
        "FAIL boot scripts: missing in",
        "flotilla-boot-deadline",
        "FAIL instance metadata (IMDSv2)",
        "FAIL Docker NVIDIA runtime: docker has no nvidia runtime",
        "self-test FAILED",
    ] {
        assert!(output.contains(line), "{line}: {output}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn remove_instance_off_ec2_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["remove-instance", "--reason", "test"])
        .env(
            "FLOTILLA_IMDS_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("agent remove-instance: cannot read the instance id"),
        "{stderr}"
    );
}
