//! The control loop end to end: a real hub, `scaler run` (or `scaler up`) with a local fleet of real
//! agents. The fleet rises to at most its max, every job passes exactly once, the fleet returns to
//! zero; a killed agent's job is re-queued and its instance replaced; a hub restarted mid-run is
//! ridden out; bad config stops nothing from starting because nothing starts.

use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::hub_process::HubProcess;
use testkit::scaler_run::ScalerRun;

const LONG: Duration = Duration::from_secs(120);

fn job_state(hub: &HubProcess, id: &str) -> serde_json::Value {
    hub.job(id)
}

fn agents_connected(hub: &HubProcess) -> usize {
    hub.admin_get("/api/v1/agents")
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0)
}

#[test]
fn twenty_jobs_rise_to_max_pass_once_and_the_fleet_returns_to_zero() {
    let hub = HubProcess::start(&["--sync-interval-ms", "250"]);
    let ids: Vec<String> = (0..20)
        .map(|i| hub.submit(&[&format!("sleep 0.3; echo job {i}")]))
        .collect();
    let scaler = ScalerRun::start(&hub, 4, &[]);
    let mut most_agents = 0;
    testkit::wait_for("every job to finish", LONG, || {
        most_agents = most_agents.max(agents_connected(&hub));
        ids.iter()
            .all(|id| job_state(&hub, id)["state"] == "finished")
    });
    for id in &ids {
        let job = job_state(&hub, id);
        assert_eq!(job["result"], "passed", "{job}");
        assert_eq!(job["attempts"], 1, "ran exactly once: {job}");
    }
    assert!(
        most_agents <= 4,
        "never more than max agents ({most_agents})"
    );
    assert!(most_agents >= 2, "the fleet rose ({most_agents})");
    testkit::wait_for("the fleet to return to zero", LONG, || {
        scaler.metric("flotilla_scaler_desired") == Some(0.0)
            && scaler.metric("flotilla_scaler_in_service") == Some(0.0)
    });
    assert!(
        scaler
            .metric("flotilla_scaler_instances_completed_total")
            .unwrap()
            >= 20.0,
        "one instance per job"
    );
    assert!(
        scaler.log().contains("decision"),
        "one log line per decision"
    );
}

#[test]
fn a_killed_agents_job_is_requeued_and_its_instance_replaced() {
    let hub = HubProcess::start(&["--sync-interval-ms", "250", "--lost-after", "2"]);
    let marker = tempfile::tempdir().unwrap();
    let flag = marker.path().join("first-attempt");
    let id = hub.submit(&[&format!(
        "if [ ! -f {0} ]; then touch {0}; sleep 60; fi; echo recovered",
        flag.display()
    )]);
    let scaler = ScalerRun::start(&hub, 2, &[]);
    testkit::wait_for("the first attempt to run", LONG, || {
        flag.exists() && job_state(&hub, &id)["state"] == "running"
    });
    let agents = hub.admin_get("/api/v1/agents");
    let pid = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["job_id"] == id.as_str())
        .expect("the agent running the job")["pid"]
        .as_i64()
        .unwrap();
    // SAFETY: a process of this test's fleet.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    testkit::wait_for("the job to pass on its second attempt", LONG, || {
        job_state(&hub, &id)["state"] == "finished"
    });
    let job = job_state(&hub, &id);
    assert_eq!(job["result"], "passed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(
        scaler
            .metric("flotilla_scaler_instances_replaced_total")
            .unwrap()
            >= 1.0
    );
    testkit::wait_for("the fleet to return to zero", LONG, || {
        scaler.metric("flotilla_scaler_in_service") == Some(0.0)
    });
}

#[test]
fn the_loop_converges_after_the_hub_restarts() {
    let mut hub = HubProcess::start(&["--sync-interval-ms", "250"]);
    let ids: Vec<String> = (0..8)
        .map(|i| hub.submit(&[&format!("sleep 1; echo job {i}")]))
        .collect();
    let scaler = ScalerRun::start(&hub, 3, &[]);
    testkit::wait_for("two jobs to finish", LONG, || {
        ids.iter()
            .filter(|id| job_state(&hub, id)["state"] == "finished")
            .count()
            >= 2
    });
    hub.kill_9();
    std::thread::sleep(Duration::from_secs(1));
    hub.launch();
    testkit::wait_for("every job to finish", LONG, || {
        ids.iter()
            .all(|id| job_state(&hub, id)["state"] == "finished")
    });
    for id in &ids {
        assert_eq!(job_state(&hub, id)["result"], "passed");
    }
    testkit::wait_for("the fleet to return to zero", LONG, || {
        scaler.metric("flotilla_scaler_in_service") == Some(0.0)
    });
}

#[test]
fn dry_run_decides_and_logs_but_launches_nothing() {
    let hub = HubProcess::start(&[]);
    hub.submit(&["true"]);
    let scaler = ScalerRun::start(&hub, 2, &["--dry-run"]);
    // Three decisions to raise, each only logged: nothing launches after any of them.
    testkit::wait_for("three dry-run decisions", Duration::from_secs(30), || {
        scaler.log().matches("dry_run=true").count() >= 3
    });
    assert_eq!(agents_connected(&hub), 0);
    assert_eq!(scaler.metric("flotilla_scaler_in_service"), Some(0.0));
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaler.yaml");
    std::fs::write(&path, "fleets:\n  - agent_type: default\n    queue: {endpoint: 'http://127.0.0.1:1', token_env: PATH}\n    local: {min: 3, max: 1}\n").unwrap();
    let output = Command::new(testkit::hub_process::scaler_binary())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("min (3) is greater than max (1)"),
        "{stderr}"
    );
}

#[test]
fn scaler_up_runs_the_examples_end_to_end() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    // A relative data directory, as the README's command uses (paths handed to agents must work).
    let relative = format!("target/test-scaler-up-{}", std::process::id());
    let output = Command::new(testkit::hub_process::scaler_binary())
        .args(["up", "--examples", "--max-agents", "3", "--agent-binary"])
        .arg(testkit::hub_process::agent_binary())
        .args(["--data-dir", &relative])
        .current_dir(root)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(root.join(&relative));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let examples = std::fs::read_dir(root.join("examples/jobs"))
        .unwrap()
        .count();
    assert!(
        stdout.contains(&format!("{examples} passed, 0 failed")),
        "{stdout}"
    );
    assert!(
        stdout.contains("JOB")
            && stdout.contains("FINISHED")
            && stdout.contains("fleet back to 0 agents"),
        "{stdout}"
    );
    // The web console's address, on the hub's own listener.
    assert!(
        stdout.contains("web console:  http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/console   (sign in with the token in"),
        "{stdout}"
    );
}

/// `scaler up --keep-running` records its URL in the data directory; the CLI finds the hub there
/// without `--hub`, and `jobs show` prints local date-times.
#[test]
fn the_cli_finds_a_running_scaler_up_without_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut up = Command::new(testkit::hub_process::scaler_binary())
        .args([
            "up",
            "--keep-running",
            "--max-agents",
            "1",
            "--agent-binary",
        ])
        .arg(testkit::hub_process::agent_binary())
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url_file = data_dir.join("hub-url");
    testkit::wait_for(
        "scaler up to record its URL",
        Duration::from_secs(30),
        || url_file.exists(),
    );
    let cli = |args: &[&str]| {
        let output = Command::new(testkit::hub_process::scaler_binary())
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("FLOTILLA_HUB_URL")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {stdout}\n{stderr}"
        );
        stdout
    };
    let followed = cli(&["jobs", "submit", "-c", "echo found-the-hub", "--follow"]);
    assert!(followed.contains("found-the-hub"), "{followed}");
    let listed = cli(&["jobs", "list"]);
    let id = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let shown = cli(&["jobs", "show", &id]);
    let queued = shown.lines().find(|l| l.starts_with("queued at:")).unwrap();
    let year = jiff::Timestamp::now().strftime("%Y").to_string();
    assert!(
        queued.contains(&format!(" {year}-")),
        "a local date-time: {queued}"
    );
    assert!(
        shown.contains("finished at:") && shown.contains("(+"),
        "{shown}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    testkit::agent_process::wait_for_exit(&mut up, Duration::from_secs(30), || "scaler up".into());
    assert!(!url_file.exists(), "the URL file goes when `up` stops");
}
