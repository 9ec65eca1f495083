//! The GPU health gate and the GPU fault watch, end to end on a machine without a GPU: the agent
//! binary on EC2 (a fake instance metadata service, moto) with the shared fake `nvidia-smi` and a
//! fake kernel log. A machine short of a GPU never registers, tags itself with the fault and
//! leaves with decrement (a healthy one, the control, registers and reports the gate's checks); a
//! fatal Xid mid-job stops the job at once, tells the server why, and the instance tags itself
//! and leaves, while an Xid that is the application's (13) only leaves a line in the agent log.

use crate::cloud::{one_job, spawn_ec2_agent};
use std::time::Duration;
use testkit::agent_process;
use testkit::gpu::{FakeGpu, FakeKernelLog};
use testkit::imds::FakeImds;
use testkit::mock_hub::FakeHub;
use testkit::{moto, runtime};

/// Runs the agent on EC2 instance `instance` with `gpu` on its PATH and `kernel_log`; returns
/// (exit code, output).
fn run_gpu_agent(
    hub: &FakeHub,
    moto: &moto::MotoServer,
    instance: &str,
    gpu: &FakeGpu,
    kernel_log: &FakeKernelLog,
) -> (i32, String) {
    let imds = FakeImds::start(instance);
    let tools = gpu.install();
    let dir = tempfile::tempdir().unwrap();
    let mut env = moto.env();
    env.push(("PATH", tools.path_env()));
    let log = kernel_log.path().display().to_string();
    let args = [
        "--disconnect-after-job",
        "--report-gpus",
        "--expect-gpus",
        "2:A10G",
        "--kernel-log",
        &log,
    ];
    let mut child = spawn_ec2_agent(hub, &imds, &env, dir.path(), &args);
    let out = dir.path().join("out");
    let code = agent_process::wait_for_exit(&mut child, Duration::from_secs(60), || {
        std::fs::read_to_string(&out).unwrap_or_default()
    });
    (code, std::fs::read_to_string(&out).unwrap_or_default())
}

#[test]
fn a_machine_that_fails_the_gpu_gate_never_registers_tags_itself_and_leaves() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "agents", 0, 3, 2);
    moto.put_secret(&runtime, "/flotilla/agent-token", "registration-token");
    let (_, instances, _) = moto.group(&runtime, "agents");
    let kernel_log = FakeKernelLog::new();

    // The control: two healthy A10Gs pass, register with the gate's checks, run the job.
    let hub = FakeHub::start();
    one_job(&hub, "job-1", "echo hi");
    let healthy = FakeGpu::healthy(2, "NVIDIA A10G");
    let (code, output) = run_gpu_agent(&hub, &moto, &instances[1], &healthy, &kernel_log);
    assert_eq!(code, 0, "{output}");
    let registered = hub.state().registered.clone().expect("registered");
    let gate = registered.flotilla_gpu_gate.expect("the gate's report");
    assert!(gate.passed && gate.checks.len() >= 3, "{gate:?}");
    assert_eq!(
        moto.instance_tag(&runtime, &instances[1], "flotilla:fault"),
        ""
    );

    // One of the two GPUs is gone: no registration, a fault tag, removal with decrement.
    let hub = FakeHub::start();
    let broken = FakeGpu::healthy(2, "NVIDIA A10G").fewer(1);
    let (code, output) = run_gpu_agent(&hub, &moto, &instances[0], &broken, &kernel_log);
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("The GPU health gate failed"), "{output}");
    assert!(hub.state().registered.is_none(), "{output}");
    assert_eq!(hub.state().register_attempts, 0, "{output}");
    let fault = moto.instance_tag(&runtime, &instances[0], "flotilla:fault");
    let (at, detail) = fault
        .split_once(' ')
        .expect("<unix seconds> <kind>: <detail>");
    assert!(at.parse::<i64>().unwrap() > 1_700_000_000, "{fault}");
    assert!(
        detail.starts_with("gpu-gate: ") && detail.contains("1 of 2"),
        "{fault}"
    );
    let (desired, remaining, _) = moto.group(&runtime, "agents");
    assert_eq!(desired, 0, "both decremented: {output}");
    assert!(!remaining.contains(&instances[0]), "{remaining:?}");
}

#[test]
fn a_fatal_xid_mid_job_stops_it_reports_the_fault_and_the_instance_leaves() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "agents", 0, 3, 1);
    moto.put_secret(&runtime, "/flotilla/agent-token", "registration-token");
    let (_, instances, _) = moto.group(&runtime, "agents");
    let hub = FakeHub::start();
    one_job(&hub, "job-xid", "sleep 120");
    let kernel_log = FakeKernelLog::new();
    let imds = FakeImds::start(&instances[0]);
    let tools = FakeGpu::healthy(2, "NVIDIA A10G").install();
    let dir = tempfile::tempdir().unwrap();
    let mut env = moto.env();
    env.push(("PATH", tools.path_env()));
    let log = kernel_log.path().display().to_string();
    let args = ["--disconnect-after-job", "--kernel-log", &log];
    let mut child = spawn_ec2_agent(&hub, &imds, &env, dir.path(), &args);
    let out = dir.path().join("out");
    let output = || std::fs::read_to_string(&out).unwrap_or_default();
    hub.wait_until("the job to run", Duration::from_secs(30), |s| {
        s.syncs.iter().any(|x| x.state.as_str() == "running-job")
    });
    // An application's Xid (13) is noted, and the job goes on.
    kernel_log.xid(13);
    testkit::wait_for("the agent to note Xid 13", Duration::from_secs(30), || {
        output().contains("Xid 13")
    });
    assert!(hub.state().finished.is_empty(), "{}", output());
    assert!(hub.state().syncs.iter().all(|s| s.flotilla_fault.is_none()));
    // The GPU falls off the bus: the job stops at once and the server learns why.
    kernel_log.xid(79);
    let code = agent_process::wait_for_exit(&mut child, Duration::from_secs(60), output);
    assert_eq!(code, 0, "{}", output());
    let state = hub.state();
    assert_eq!(
        state.finished,
        vec![("job-xid".to_string(), "stopped".to_string())]
    );
    let reported = state.syncs.iter().find_map(|s| s.flotilla_fault.clone());
    let reported = reported.expect("the fault in a sync");
    assert!(
        reported.starts_with(&format!("GPU fault on {}: Xid 79", instances[0])),
        "{reported}"
    );
    assert!(state.syncs.iter().any(|s| s.interrupted_at > 0));
    drop(state);
    let log = hub.simplified_log("job-xid").join("\n");
    assert!(
        log.contains("The machine failed") && log.contains("Xid 79"),
        "{log}"
    );
    let fault = moto.instance_tag(&runtime, &instances[0], "flotilla:fault");
    assert!(
        fault.contains(" xid: GPU fault on") && fault.contains("Xid 79"),
        "{fault}"
    );
    let (desired, remaining, _) = moto.group(&runtime, "agents");
    assert_eq!(
        (desired, remaining.contains(&instances[0])),
        (0, false),
        "{}",
        output()
    );
}
