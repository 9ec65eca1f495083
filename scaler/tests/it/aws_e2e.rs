//! The scaler's AWS fleet against moto server: jobs queued on a real hub raise Auto Scaling groups'
//! desired capacity through the real control loop (never past MaxSize; a full group's share goes
//! to the next group), AZRebalance is suspended, the queue token comes from SSM, and a wrong group
//! name stops the scaler before anything starts. The instances moto launches get real agents
//! (named by instance id through a fake IMDS) that run the jobs and remove themselves; the reaper
//! marks then terminates an instance with no agent and never one whose agent is busy; through a
//! fault-injecting proxy, a pool that cannot launch spills to the next and throttling or 503s only
//! slow the loop down; a group whose instances agents removed for GPU faults (the `flotilla:fault`
//! tag) spills to the next for its cool-off, one with old or unreadable fault tags does not.

use testkit::moto;

use testkit::imds;

use testkit::fault_proxy::FaultProxy;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::hub_process::HubProcess;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A hub whose agent type's registration token is stored in moto's SSM, where the scaler reads it.
fn hub_with_token_in_ssm(runtime: &tokio::runtime::Runtime, moto: &moto::MotoServer) -> HubProcess {
    let hub = HubProcess::start(&[]);
    moto.put_secret(
        runtime,
        "/flotilla/default-token",
        &hub.registration_token(),
    );
    hub
}

/// [`hub_with_token_in_ssm`] with `jobs` jobs queued (`echo 0`, `echo 1`, ...).
fn hub_with_jobs(
    runtime: &tokio::runtime::Runtime,
    moto: &moto::MotoServer,
    jobs: usize,
) -> HubProcess {
    let hub = hub_with_token_in_ssm(runtime, moto);
    for index in 0..jobs {
        hub.submit(&[&format!("echo {index}")]);
    }
    hub
}

fn scaler_run(
    hub: &HubProcess,
    moto: &moto::MotoServer,
    groups: &[&str],
    dir: &std::path::Path,
) -> Child {
    scaler_run_with(hub, &moto.env(), groups, "", dir)
}

/// `scaler run` with the AWS environment `aws_env` (moto's or the fault proxy's) and extra fleet
/// settings (YAML at the fleet's indentation).
fn scaler_run_with(
    hub: &HubProcess,
    aws_env: &[(&'static str, String)],
    groups: &[&str],
    fleet_extra: &str,
    dir: &std::path::Path,
) -> Child {
    let config = format!(
        "poll_interval_ms: 300\nfleets:\n  - agent_type: default\n    queue:\n      endpoint: {}\n      token_ssm_parameter: /flotilla/default-token\n    aws:\n      region: us-east-1\n      groups: [{}]\n{fleet_extra}",
        hub.url(),
        groups.join(", ")
    );
    let path = dir.join("scaler.yaml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join("scaler.log")).unwrap();
    let mut command = Command::new(testkit::hub_process::scaler_binary());
    command
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (name, value) in aws_env {
        command.env(name, value);
    }
    // Every decision in the log, those that change nothing included: "nothing more happened" is
    // then read off decisions made, not off a pause.
    command.env("FLOTILLA_LOG", "info,scaling::control=debug");
    command.spawn().unwrap()
}

/// Waits until the scaler in `dir` has logged `more` decisions after those it had logged when
/// called: the loop demonstrably went round (the positive control of a "nothing changed" check).
fn wait_for_decisions(dir: &std::path::Path, more: usize) {
    let decisions = || {
        std::fs::read_to_string(dir.join("scaler.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(" decision"))
            .count()
    };
    let before = decisions();
    testkit::wait_for(
        &format!("{more} more decisions"),
        Duration::from_secs(30),
        || decisions() >= before + more,
    );
}

/// Waits until the scaler in `dir` has logged `passes` completed reaper passes (a skipped one
/// does not count) after the first line that contains `after`; returns the last of them.
fn wait_for_reaper_passes_after(dir: &std::path::Path, after: &str, passes: usize) -> String {
    let passes_after = || {
        let log = std::fs::read_to_string(dir.join("scaler.log")).unwrap_or_default();
        let from = log.find(after).unwrap_or(log.len());
        log[from..]
            .lines()
            .filter(|line| line.contains("reaper pass done"))
            .map(|line| line.trim_end().to_string())
            .collect::<Vec<_>>()
    };
    testkit::wait_for(
        &format!("{passes} reaper passes after {after}"),
        Duration::from_secs(30),
        || passes_after().len() >= passes,
    );
    passes_after()[passes - 1].clone()
}

#[test]
fn queued_jobs_raise_the_groups_in_priority_order() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu-spot", 0, 2, 0);
    moto.create_group(&runtime, "gpu-ondemand", 0, 10, 0);
    let hub = hub_with_jobs(&runtime, &moto, 5);
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run(&hub, &moto, &["gpu-spot", "gpu-ondemand"], dir.path());
    let log = || std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default();
    testkit::wait_for("both groups to be raised", Duration::from_secs(60), || {
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
    // Raise only: a steady queue changes nothing more, over three more decisions.
    wait_for_decisions(dir.path(), 3);
    assert_eq!(moto.group(&runtime, "gpu-ondemand").0, 3, "{}", log());
    assert!(log().contains("decision"), "{}", log());
    let _ = scaler.kill();
    let _ = scaler.wait();
}

#[test]
fn a_wrong_group_name_is_a_clear_error() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    let hub = hub_with_token_in_ssm(&runtime, &moto);
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

/// Waits until the reaper has marked `instance` (the EC2 tag), checks it is still there, then
/// waits until it is terminated.
fn wait_for_mark_then_termination(
    runtime: &tokio::runtime::Runtime,
    moto: &moto::MotoServer,
    instance: &str,
    reasons: &[&str],
) {
    testkit::wait_for(
        &format!("{instance} to be marked"),
        Duration::from_secs(30),
        || {
            let mark = moto.instance_tag(runtime, instance, "flotilla:reap");
            reasons.iter().any(|r| mark.starts_with(&format!("{r}@")))
        },
    );
    assert!(
        moto.group(runtime, "gpu").1.iter().any(|i| i == instance),
        "marked, not yet terminated"
    );
    testkit::wait_for(
        &format!("{instance} to be terminated"),
        Duration::from_secs(30),
        || !moto.group(runtime, "gpu").1.iter().any(|i| i == instance),
    );
}

#[test]
fn the_reaper_terminates_a_stuck_instance_and_a_busy_one_only_past_its_lifetime() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu", 0, 4, 2);
    let (_, instances, _) = moto.group(&runtime, "gpu");
    assert_eq!(instances.len(), 2);
    let (busy, stuck) = (instances[0].clone(), instances[1].clone());
    let hub = hub_with_token_in_ssm(&runtime, &moto);
    // The first instance's agent (named by its instance id) runs a long job.
    let _agent = testkit::hub_process::start_agent(&hub, &["--name", &busy]);
    hub.submit(&["sleep 120"]);
    testkit::wait_for("the agent to be busy", Duration::from_secs(30), || {
        hub.admin_get("/api/v1/agents")
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == busy.as_str() && !a["job_id"].is_null())
    });
    let dir = tempfile::tempdir().unwrap();
    let reaper = |lifetime: u64| {
        format!("    reaper: {{boot_deadline_seconds: 0, max_lifetime_seconds: {lifetime}, interval_seconds: 3}}\n")
    };
    let mut scaler = scaler_run_with(&hub, &moto.env(), &["gpu"], &reaper(3600), dir.path());
    let log = || std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default();
    // The stuck instance: marked (a tag on the instance), then terminated with decrement.
    wait_for_mark_then_termination(&runtime, &moto, &stuck, &["no-agent"]);
    let (desired, remaining, _) = moto.group(&runtime, "gpu");
    assert_eq!(desired, 1, "terminated with decrement: {}", log());
    assert_eq!(remaining, vec![busy.clone()]);
    // Busy and within its lifetime: never marked, never touched, over the pass that terminated
    // the stuck one and a whole pass after it that judged the busy one alone.
    let after = wait_for_reaper_passes_after(
        dir.path(),
        &format!("Terminate {{ instance: \"{stuck}\""),
        2,
    );
    assert!(after.ends_with("in_service=1 actions=0"), "{}", log());
    assert!(moto.group(&runtime, "gpu").1.contains(&busy));
    let mark = moto.instance_tag(&runtime, &busy, "flotilla:reap");
    assert_eq!(mark, "", "{}", log());
    let first_log = log();
    assert!(
        !first_log.contains(&format!("instance: \"{busy}\"")),
        "{first_log}"
    );
    let mark_at = first_log.find(&format!("Mark {{ instance: \"{stuck}\""));
    let terminate_at = first_log.find(&format!("Terminate {{ instance: \"{stuck}\""));
    assert!(mark_at.expect(&first_log) < terminate_at.expect(&first_log));
    let _ = scaler.kill();
    let _ = scaler.wait();
    // Past its maximum lifetime the cap is hard, busy or not: marked, then terminated.
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run_with(&hub, &moto.env(), &["gpu"], &reaper(1), dir.path());
    wait_for_mark_then_termination(&runtime, &moto, &busy, &["lifetime"]);
    assert_eq!(
        moto.group(&runtime, "gpu").0,
        0,
        "terminated with decrement"
    );
    let _ = scaler.kill();
    let _ = scaler.wait();
}

#[test]
fn a_pool_that_cannot_launch_spills_its_share_to_the_next_pool() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu-spot", 0, 10, 0);
    moto.create_group(&runtime, "gpu-ondemand", 0, 10, 0);
    let proxy = FaultProxy::start(&moto.url);
    proxy.faults.lock().unwrap().failed_launches.insert(
        "gpu-spot".into(),
        "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that matches your request. Launching EC2 instance failed.".into(),
    );
    let hub = hub_with_jobs(&runtime, &moto, 4);
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run_with(
        &hub,
        &proxy.env(),
        &["gpu-spot", "gpu-ondemand"],
        "",
        dir.path(),
    );
    let log = || std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default();
    testkit::wait_for(
        "the on-demand pool to take the demand",
        Duration::from_secs(60),
        || moto.group(&runtime, "gpu-ondemand").0 == 4,
    );
    wait_for_decisions(dir.path(), 3);
    assert_eq!(
        moto.group(&runtime, "gpu-spot").1.len(),
        0,
        "nothing launched in the short pool: {}",
        log()
    );
    assert_eq!(moto.group(&runtime, "gpu-ondemand").0, 4, "{}", log());
    assert!(log().contains("short of capacity: gpu-spot"), "{}", log());
    let _ = scaler.kill();
    let _ = scaler.wait();
}

#[test]
fn throttling_and_outages_slow_the_scaler_down_but_it_converges() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu", 0, 10, 0);
    let proxy = FaultProxy::start(&moto.url);
    let hub = hub_with_token_in_ssm(&runtime, &moto);
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run_with(&hub, &proxy.env(), &["gpu"], "", dir.path());
    let log = || std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default();
    testkit::wait_for("the scaler to start", Duration::from_secs(30), || {
        log().contains("scaler running")
    });
    {
        let mut faults = proxy.faults.lock().unwrap();
        faults.throttle_next = 8;
        faults.unavailable_next = 4;
    }
    for index in 0..3 {
        hub.submit(&[&format!("echo {index}")]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while moto.group(&runtime, "gpu").0 != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "desired never reached the demand: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let faults = proxy.faults.lock().unwrap();
    assert_eq!(
        (faults.throttle_next, faults.unavailable_next),
        (0, 0),
        "every fault was served"
    );
    assert_eq!(faults.faults_answered, 12);
    drop(faults);
    assert!(
        scaler.try_wait().unwrap().is_none(),
        "the scaler is still running: {}",
        log()
    );
    let _ = scaler.kill();
    let _ = scaler.wait();
}

#[test]
fn the_groups_instances_become_agents_that_run_the_jobs_and_remove_themselves() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu", 0, 4, 0);
    let hub = hub_with_token_in_ssm(&runtime, &moto);
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run_with(
        &hub,
        &moto.env(),
        &["gpu"],
        "    reaper: {boot_deadline_seconds: 120, interval_seconds: 1}\n",
        dir.path(),
    );
    let jobs: Vec<String> = (0..3)
        .map(|index| hub.submit(&[&format!("echo job {index} on $SEMAPHORE_AGENT_NAME")]))
        .collect();
    // Play EC2: every instance moto launches boots an agent named by its instance id.
    let mut booted: Vec<(String, Child, imds::FakeImds)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (desired, instances, _) = moto.group(&runtime, "gpu");
        for id in instances {
            if booted.iter().any(|(booted_id, _, _)| *booted_id == id) {
                continue;
            }
            let fake_imds = imds::FakeImds::start(&id);
            let instance_dir = dir.path().join(&id);
            std::fs::create_dir_all(&instance_dir).unwrap();
            let out = std::fs::File::create(instance_dir.join("out")).unwrap();
            let mut command = Command::new(testkit::hub_process::agent_binary());
            command
                .args(["start", "--endpoint", &format!("127.0.0.1:{}", hub.port)])
                .args(["--no-https", "--ec2", "--ec2-poll-seconds", "1"])
                .args(["--imds-endpoint", &fake_imds.address])
                .args(["--token-ssm-parameter", "/flotilla/default-token"])
                .args([
                    "--disconnect-after-job",
                    "--disconnect-after-idle-timeout",
                    "20",
                ])
                .args([
                    "--ec2-poweroff-command",
                    &format!("touch {}", instance_dir.join("powered-off").display()),
                ])
                .env(
                    "SEMAPHORE_AGENT_LOG_FILE_PATH",
                    instance_dir.join("agent.log"),
                )
                .env("HOME", &instance_dir)
                .env("TMPDIR", &instance_dir)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            for (name, value) in moto.env() {
                command.env(name, value);
            }
            booted.push((id, command.spawn().unwrap(), fake_imds));
        }
        let finished = jobs.iter().all(|id| hub.job(id)["state"] == "finished");
        if finished
            && desired == 0
            && booted
                .iter_mut()
                .all(|(_, child, _)| child.try_wait().unwrap().is_some())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet did not drain: desired {desired}, scaler: {}",
            std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ids: Vec<String> = booted.iter().map(|(id, _, _)| id.clone()).collect();
    for job in &jobs {
        let view = hub.job(job);
        assert_eq!(view["result"], "passed", "{view}");
        let agent = view["agent"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.contains(&agent),
            "job ran on {agent}, an instance of the group: {ids:?}"
        );
    }
    for (id, child, _) in &mut booted {
        let status = child.wait().unwrap();
        let out = std::fs::read_to_string(dir.path().join(&*id).join("out")).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "{id}: {out}");
        assert!(
            !dir.path().join(&*id).join("powered-off").exists(),
            "{id} left through the group, not power-off"
        );
    }
    let (desired, remaining, _) = moto.group(&runtime, "gpu");
    assert_eq!((desired, remaining.len()), (0, 0));
    let log = std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default();
    assert!(
        !log.contains("Terminate {"),
        "the reaper left registered instances alone: {log}"
    );
    let _ = scaler.kill();
    let _ = scaler.wait();
}

/// A group with a warm pool whose bounds the stack tagged it with: 0 to `max`, now `size`.
fn create_warm_pool(
    runtime: &tokio::runtime::Runtime,
    moto: &moto::MotoServer,
    group: &str,
    max: u32,
    size: i32,
) {
    use aws_sdk_autoscaling::types::Tag;
    let client = aws_sdk_autoscaling::Client::new(&moto.sdk(runtime));
    let tag = Tag::builder()
        .resource_id(group)
        .resource_type("auto-scaling-group")
        .key("flotilla:warm-pool-max")
        .value(max.to_string())
        .propagate_at_launch(false)
        .build();
    runtime
        .block_on(client.create_or_update_tags().tags(tag).send())
        .unwrap();
    runtime
        .block_on(
            client
                .put_warm_pool()
                .auto_scaling_group_name(group)
                .min_size(size)
                .max_group_prepared_capacity(size)
                .send(),
        )
        .unwrap();
}

/// (MinSize, MaxGroupPreparedCapacity, pool state) of a group's warm pool, as moto keeps it.
fn warm_pool(
    runtime: &tokio::runtime::Runtime,
    moto: &moto::MotoServer,
    group: &str,
) -> (i32, i32, String) {
    let client = aws_sdk_autoscaling::Client::new(&moto.sdk(runtime));
    let output = runtime
        .block_on(
            client
                .describe_warm_pool()
                .auto_scaling_group_name(group)
                .send(),
        )
        .unwrap();
    let configuration = output
        .warm_pool_configuration()
        .cloned()
        .unwrap_or_else(|| aws_sdk_autoscaling::types::WarmPoolConfiguration::builder().build());
    (
        configuration.min_size().unwrap_or(-1),
        configuration.max_group_prepared_capacity().unwrap_or(-1),
        configuration
            .pool_state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
    )
}

/// The forecast sizes a group's warm pool within the bounds the stack tagged it with: a batch of
/// jobs makes the recent rate, and the scaler puts a larger stopped pool (PutWarmPool, MinSize =
/// MaxGroupPreparedCapacity, Stopped), logging the forecast's inputs. moto stops there: it keeps
/// the warm pool's configuration but never puts instances in it (DescribeWarmPool lists none), so
/// every raise launches new instances; the agent's wait while `Warmed:*` is tested against the
/// fake IMDS in the agent's suite.
#[test]
fn the_forecast_sizes_the_warm_pool_within_the_stack_bounds() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "ci", 0, 20, 0);
    create_warm_pool(&runtime, &moto, "ci", 6, 1);
    let hub = hub_with_jobs(&runtime, &moto, 8);
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run_with(
        &hub,
        &moto.env(),
        &["ci"],
        "    policy: {forecast: true}\n",
        dir.path(),
    );
    let log = || std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default();
    testkit::wait_for("the warm pool to be sized", Duration::from_secs(60), || {
        warm_pool(&runtime, &moto, "ci").0 > 1
    });
    let (min_size, prepared, state) = warm_pool(&runtime, &moto, "ci");
    assert!(
        min_size <= 6,
        "within the tagged bound: {min_size}\n{}",
        log()
    );
    assert_eq!(prepared, min_size, "the pool holds exactly MinSize");
    assert_eq!(state, "Stopped");
    assert!(
        moto.group(&runtime, "ci").0 >= 8,
        "the jobs raised desired too"
    );
    assert!(log().contains("forecast: recent"), "{}", log());
    let _ = scaler.kill();
    let _ = scaler.wait();
}

/// What an agent does on a GPU fault (the contract of issue 29): tags its instance
/// `flotilla:fault` with `value`, then terminates it through its group with decrement.
fn fault_out(runtime: &tokio::runtime::Runtime, moto: &moto::MotoServer, id: &str, value: &str) {
    let sdk = moto.sdk(runtime);
    let tag = aws_sdk_ec2::types::Tag::builder()
        .key("flotilla:fault")
        .value(value)
        .build();
    runtime
        .block_on(
            aws_sdk_ec2::Client::new(&sdk)
                .create_tags()
                .resources(id)
                .tags(tag)
                .send(),
        )
        .expect("tag the instance");
    runtime
        .block_on(
            aws_sdk_autoscaling::Client::new(&sdk)
                .terminate_instance_in_auto_scaling_group()
                .instance_id(id)
                .should_decrement_desired_capacity(true)
                .send(),
        )
        .expect("terminate the instance");
}

/// Two groups in priority order, the first with two instances the scaler has seen; agents fault
/// both out with the fault tags `values` (seconds ago, tag text after the time); then 3 jobs are
/// queued and the test waits for `raised` to take them. Returns the log and (gpu-a, gpu-b) desired.
fn faults_then_jobs(values: [(i64, &str); 2], raised: &str, wait_for: &str) -> (String, i32, i32) {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    moto.create_group(&runtime, "gpu-a", 0, 10, 2);
    moto.create_group(&runtime, "gpu-b", 0, 10, 0);
    let hub = hub_with_token_in_ssm(&runtime, &moto);
    let dir = tempfile::tempdir().unwrap();
    let mut scaler = scaler_run(&hub, &moto, &["gpu-a", "gpu-b"], dir.path());
    let log = || std::fs::read_to_string(dir.path().join("scaler.log")).unwrap_or_default();
    // Rounds that described the groups with their instances in them.
    wait_for_decisions(dir.path(), 2);
    let (_, instances, _) = moto.group(&runtime, "gpu-a");
    assert_eq!(instances.len(), 2);
    let now = scaling::unix_now();
    for (id, (ago, text)) in instances.iter().zip(values) {
        fault_out(&runtime, &moto, id, &format!("{} {text}", now - ago));
    }
    assert_eq!(moto.group(&runtime, "gpu-a").0, 0, "removed with decrement");
    testkit::wait_for(wait_for, Duration::from_secs(30), || {
        log().contains(wait_for)
    });
    for index in 0..3 {
        hub.submit(&[&format!("echo {index}")]);
    }
    testkit::wait_for(
        &format!("{raised} to take the jobs"),
        Duration::from_secs(60),
        || moto.group(&runtime, raised).0 == 3,
    );
    // Raise only and steady: three more rounds change nothing.
    wait_for_decisions(dir.path(), 3);
    let desired = (
        moto.group(&runtime, "gpu-a").0,
        moto.group(&runtime, "gpu-b").0,
    );
    let _ = scaler.kill();
    let _ = scaler.wait();
    (log(), desired.0, desired.1)
}

#[test]
fn a_group_whose_instances_faulted_spills_its_share_to_the_next_group() {
    let (log, a, b) = faults_then_jobs(
        [
            (
                120,
                "xid: Xid 79 on PCI 0000:00:1e.0 (GPU has fallen off the bus)",
            ),
            (60, "gpu-gate: 3 of 4 GPUs visible"),
        ],
        "gpu-b",
        "pool unhealthy",
    );
    assert_eq!((a, b), (0, 3), "{log}");
    assert!(
        log.contains("unhealthy: gpu-a (2 GPU faults in 30 min: xid: Xid 79 on PCI 0000:00:1e.0 (GPU has fallen off the bus), gpu-gate: 3 of 4 GPUs visible;"),
        "the decision says why: {log}"
    );
    assert!(log.contains("share spilled to the next pool"), "{log}");
}

#[test]
fn a_group_whose_faults_are_old_or_unreadable_keeps_its_share() {
    // The positive control of the test above: the same two faults, one outside the window (and
    // its cool-off), one a tag no agent would write. The unreadable one is logged, then ignored.
    let (log, a, b) = faults_then_jobs(
        [
            (3 * 3600, "xid: Xid 79 on PCI 0000:00:1e.0"),
            (60, "gpu-gate 3 of 4 GPUs visible"),
        ],
        "gpu-a",
        "ignoring an unreadable fault tag",
    );
    assert_eq!((a, b), (3, 0), "{log}");
    assert!(!log.contains("unhealthy"), "{log}");
}
