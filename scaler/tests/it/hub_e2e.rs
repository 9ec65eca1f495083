//! The hub end to end: a real `scaler hub` process, real `agent` processes and the `scaler` CLI.
//! Submit → run → logs → result; single-job, idle, stop and interruption paths; kill -9 of the
//! hub mid-run; a GPU fault's job re-queued; many agents racing for few jobs; bad input at the HTTP edge.

use std::time::Duration;
use testkit::agent_process::AgentProcess;
use testkit::http::{get, post};
use testkit::hub_process::HubProcess;

const LONG: Duration = Duration::from_secs(60);

fn state(hub: &HubProcess, id: &str) -> (String, Option<String>) {
    let job = hub.job(id);
    (
        job["state"].as_str().unwrap().to_string(),
        job["result"].as_str().map(str::to_string),
    )
}

#[test]
fn submit_run_follow_and_read_the_result() {
    let hub = HubProcess::start(&[]);
    let id = hub.submit(&["echo hello from flotilla", "echo -n second; sh -c 'exit 3'"]);
    let mut agent = testkit::hub_process::start_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(agent.shutdown_reason(), "JOB_FINISHED");
    assert_eq!(state(&hub, &id), ("finished".into(), Some("failed".into())));
    let job = hub.job(&id);
    assert!(job["queued_at"].as_i64().unwrap() <= job["assigned_at"].as_i64().unwrap());
    assert!(job["started_at"].as_i64().is_some() && job["finished_at"].as_i64().is_some());

    let (code, logs, stderr) = hub.cli(&["jobs", "logs", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        logs.contains("$ echo hello from flotilla\nhello from flotilla\n-- exit code 0"),
        "{logs}"
    );
    assert!(logs.contains("second\n-- exit code 3"), "{logs}");
    assert!(logs.ends_with("== job finished: failed\n"), "{logs}");
    let (_, raw, _) = hub.cli(&["jobs", "logs", &id, "--raw"]);
    assert!(raw
        .lines()
        .all(|line| serde_json::from_str::<protocol::LogEvent>(line).is_ok()));

    let (code, listing, _) = hub.cli(&["jobs", "list"]);
    assert_eq!(code, 0);
    assert!(
        listing.contains(&id) && listing.contains("failed"),
        "{listing}"
    );
    let agents = hub.admin_get("/api/v1/agents");
    assert_eq!(
        agents.as_array().unwrap().len(),
        0,
        "the agent disconnected"
    );
}

#[test]
fn follow_prints_the_log_while_the_job_runs_and_exits_with_the_result() {
    let hub = HubProcess::start(&[]);
    let _agent = testkit::hub_process::start_agent(&hub, &[]);
    let (code, stdout, stderr) = hub.cli(&[
        "jobs",
        "submit",
        "--follow",
        "-c",
        "for i in 1 2 3; do echo tick $i; sleep 0.3; done",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("tick 1\n")
            && stdout.contains("tick 3\n")
            && stdout.contains("== job finished: passed"),
        "{stdout}"
    );
}

#[test]
fn idle_agents_shut_down_with_idle() {
    let hub = HubProcess::start(&[]);
    let mut agent =
        testkit::hub_process::start_agent(&hub, &["--disconnect-after-idle-timeout", "1"]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(agent.shutdown_reason(), "IDLE");
}

#[test]
fn a_user_stop_stops_the_running_job() {
    let hub = HubProcess::start(&[]);
    let id = hub.submit(&["sleep 60", "echo never"]);
    let mut agent = testkit::hub_process::start_agent(&hub, &["--disconnect-after-job"]);
    testkit::wait_for("the job to run", LONG, || state(&hub, &id).0 == "running");
    let (code, stdout, stderr) = hub.cli(&["jobs", "stop", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("stopping"), "{stdout}");
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert_eq!(
        state(&hub, &id),
        ("finished".into(), Some("stopped".into()))
    );
}

#[test]
fn an_interrupted_agents_job_is_requeued_and_finished_by_another() {
    let hub = HubProcess::start(&[]);
    let id = hub.submit(&["sleep 3; echo done"]);
    let mut first = testkit::hub_process::start_agent(
        &hub,
        &["--disconnect-after-job", "--interruption-grace-period", "0"],
    );
    testkit::wait_for("the job to run", LONG, || state(&hub, &id).0 == "running");
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait(LONG), 0, "{}", first.output());
    assert_eq!(first.shutdown_reason(), "INTERRUPTED");
    assert_eq!(
        state(&hub, &id).0,
        "queued",
        "re-queued once by the default retry policy"
    );
    let mut second = testkit::hub_process::start_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(second.wait(LONG), 0, "{}", second.output());
    assert_eq!(state(&hub, &id), ("finished".into(), Some("passed".into())));
    assert_eq!(hub.job(&id)["attempts"], 2);
}

/// A GPU that falls off the bus under a job (a fatal Xid in the agent's kernel log): the agent
/// stops the job at once and reports the fault, the hub re-queues the job once with the fault as
/// its reason, and a second agent on healthy hardware finishes it.
#[test]
fn a_job_stopped_by_a_gpu_fault_is_requeued_and_finished_by_another() {
    let hub = HubProcess::start(&[]);
    // It waits on the GPU machine (until the fault) and runs straight through on the second.
    let id = hub.submit(&["[ -z \"$FLOTILLA_GPU_COUNT\" ] || sleep 300; echo done"]);
    let tools = testkit::gpu::FakeGpu::healthy(1, "NVIDIA A10G").install();
    let kernel_log = testkit::gpu::FakeKernelLog::new();
    let log = kernel_log.path().display().to_string();
    let mut first = AgentProcess::start(
        &testkit::hub_process::agent_binary(),
        &format!("127.0.0.1:{}", hub.port),
        &hub.registration_token(),
        &[
            "--disconnect-after-job",
            "--report-gpus",
            "--kernel-log",
            &log,
        ],
        Some(tools.path()),
    );
    testkit::wait_for("the job to run", LONG, || state(&hub, &id).0 == "running");
    kernel_log.xid(79);
    assert_eq!(first.wait(LONG), 0, "{}", first.output());
    assert_eq!(first.shutdown_reason(), "INTERRUPTED");
    let requeued = hub.job(&id);
    assert_eq!(requeued["state"], "queued", "{requeued}");
    let reason = requeued["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with("re-queued: GPU fault on ") && reason.contains("Xid 79"),
        "{reason}"
    );
    let mut second = testkit::hub_process::start_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(second.wait(LONG), 0, "{}", second.output());
    assert_eq!(state(&hub, &id), ("finished".into(), Some("passed".into())));
    assert_eq!(hub.job(&id)["attempts"], 2);
}

#[test]
fn the_hub_survives_kill_9_mid_run() {
    let mut hub = HubProcess::start(&["--sync-interval-ms", "200"]);
    let ids: Vec<String> = (0..6)
        .map(|i| hub.submit(&[&format!("sleep 1; echo job {i}")]))
        .collect();
    let mut agents: Vec<AgentProcess> = (0..2)
        .map(|_| testkit::hub_process::start_agent(&hub, &[]))
        .collect();
    testkit::wait_for("two jobs to finish", LONG, || {
        ids.iter()
            .filter(|id| state(&hub, id).0 == "finished")
            .count()
            >= 2
    });
    hub.kill_9();
    std::thread::sleep(Duration::from_millis(500));
    hub.launch();
    testkit::wait_for("every job to finish", Duration::from_secs(120), || {
        ids.iter().all(|id| state(&hub, id).0 == "finished")
    });
    for id in &ids {
        let job = hub.job(id);
        assert_eq!(job["result"], "passed", "{job}");
        let (_, logs, _) = hub.cli(&["jobs", "logs", id]);
        assert_eq!(
            logs.matches("== job finished").count(),
            1,
            "each job ran to one end: {logs}"
        );
    }
    let listing = hub.admin_get("/api/v1/jobs?limit=100");
    assert_eq!(
        listing.as_array().unwrap().len(),
        6,
        "no job lost or duplicated"
    );
    for agent in &mut agents {
        agent.signal(libc::SIGTERM);
    }
    for agent in &mut agents {
        assert_eq!(agent.wait(LONG), 0);
    }
}

#[test]
fn many_agents_racing_for_few_jobs_run_each_job_once() {
    let hub = HubProcess::start(&["--sync-interval-ms", "50"]);
    let ids: Vec<String> = (0..50)
        .map(|i| hub.submit(&[&format!("echo {i}")]))
        .collect();
    let url = hub.url();
    let registration = hub.registration_token();
    let assigned = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = (0..200)
        .map(|index| {
            let (url, registration, assigned) = (url.clone(), registration.clone(), assigned.clone());
            std::thread::spawn(move || {
                let body = serde_json::json!({"name": format!("racer-{index:04}"), "version": "v0", "pid": index,
                    "os": "", "arch": "", "hostname": "", "single_job": true, "idle_timeout": 0,
                    "interruption_grace_period": 0, "job_id": ""});
                let token: serde_json::Value = post(&format!("{url}/api/v1/self_hosted_agents/register"), &format!("Token {registration}"), body.to_string()).unwrap().json();
                let token = token["token"].as_str().unwrap().to_string();
                for _ in 0..20 {
                    let response: serde_json::Value = post(&format!("{url}/api/v1/self_hosted_agents/sync"), &format!("Token {token}"), serde_json::json!({"state": "waiting-for-jobs", "job_id": "", "job_result": "", "interrupted_at": 0}).to_string()).unwrap().json();
                    if response["action"] == "run-job" {
                        let job_id = response["job_id"].as_str().unwrap().to_string();
                        assigned.lock().unwrap().push(job_id.clone());
                        // Report it finished, as a single-job agent would.
                        post(&format!("{url}/api/v1/self_hosted_agents/sync"), &format!("Token {token}"), serde_json::json!({"state": "finished-job", "job_id": job_id, "job_result": "passed", "interrupted_at": 0}).to_string()).unwrap();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut assigned = assigned.lock().unwrap().clone();
    assert_eq!(assigned.len(), 50, "every job handed out");
    assigned.sort();
    assigned.dedup();
    assert_eq!(assigned.len(), 50, "no job handed out twice");
    for id in &ids {
        assert_eq!(state(&hub, id), ("finished".into(), Some("passed".into())));
    }
}

#[test]
fn bad_input_gets_clear_status_codes() {
    // Room for one big line, not two: the cap is counted before a batch is stored.
    let hub = HubProcess::start(&["--max-log-bytes", "6000"]);
    let url = hub.url();
    let status = |result: reqwest::Result<testkit::http::Reply>| match result {
        Ok(reply) => reply.pair(),
        Err(error) => panic!("{error}"),
    };
    let api = format!("{url}/api/v1/self_hosted_agents");
    // Wrong or missing tokens: 401 with no detail.
    let (code, body) = status(post(&format!("{api}/register"), "Token wrong", "{}"));
    assert_eq!((code, body.as_str()), (401, r#"{"error":"unauthorized"}"#));
    let (code, _) = status(post(&format!("{api}/sync"), "", "{}"));
    assert_eq!(code, 401);
    let (code, _) = status(get(&format!("{url}/api/v1/jobs"), "Bearer nope"));
    assert_eq!(code, 401);
    let (code, _) = status(get(&format!("{api}/metrics"), ""));
    assert_eq!(code, 401);
    // Malformed JSON: 400.
    let registration = hub.registration_token();
    let (code, body) = status(post(
        &format!("{api}/register"),
        &format!("Token {registration}"),
        "{not json",
    ));
    assert_eq!(code, 400, "{body}");
    let admin = format!("Bearer {}", hub.admin_token());
    let (code, body) = status(post(
        &format!("{url}/api/v1/jobs"),
        &admin,
        r#"{"commands": []}"#,
    ));
    assert_eq!(code, 400);
    assert!(body.contains("at least one command"), "{body}");
    // Oversized bodies: 413.
    let (code, _) = status(post(
        &format!("{url}/api/v1/jobs"),
        &admin,
        "x".repeat(2 * 1024 * 1024),
    ));
    assert_eq!(code, 413);
    // Unknown ids: 404.
    let (code, _) = status(get(&format!("{url}/api/v1/jobs/no-such-job"), &admin));
    assert_eq!(code, 404);
    let (code, _) = status(post(
        &format!("{url}/api/v1/logs/no-such-job?start_from=0"),
        "Bearer x",
        "{}\n",
    ));
    assert_eq!(code, 404);

    // A real job: log pushes out of order are refused, nothing is corrupted.
    let id = hub.submit(&["echo ok"]);
    let register: serde_json::Value = post(
        &format!("{api}/register"),
        &format!("Token {registration}"),
        r#"{"name":"manual-agent-1"}"#,
    )
    .unwrap()
    .json();
    let token = format!("Token {}", register["token"].as_str().unwrap());
    let sync: serde_json::Value = post(
        &format!("{api}/sync"),
        &token,
        r#"{"state":"waiting-for-jobs"}"#,
    )
    .unwrap()
    .json();
    assert_eq!(sync["job_id"], id.as_str());
    let request: serde_json::Value = get(&format!("{api}/jobs/{id}"), &token).unwrap().json();
    let (log_url, log_token) = (
        request["logger"]["url"].as_str().unwrap().to_string(),
        request["logger"]["token"].as_str().unwrap().to_string(),
    );
    let bearer = format!("Bearer {log_token}");
    let line = r#"{"event":"job_started","timestamp":1}"#;
    let (code, _) = status(post(&format!("{log_url}?start_from=5"), &bearer, line));
    assert_eq!(code, 409);
    let (code, _) = status(post(
        &format!("{log_url}?start_from=0"),
        &bearer,
        format!("{line}\n"),
    ));
    assert_eq!(code, 200);
    let (code, _) = status(post(
        &format!("{log_url}?start_from=1"),
        &bearer,
        "garbage\n",
    ));
    assert_eq!(code, 400);
    let (code, _) = status(post(
        &format!("{log_url}?start_from=1"),
        "Bearer stolen",
        format!("{line}\n"),
    ));
    assert_eq!(code, 401);
    let big = format!(
        "{{\"event\":\"cmd_output\",\"timestamp\":1,\"output\":\"{}\"}}\n",
        "y".repeat(5000)
    );
    assert_eq!(
        status(post(&format!("{log_url}?start_from=1"), &bearer, &big)).0,
        200
    );
    assert_eq!(
        status(post(&format!("{log_url}?start_from=2"), &bearer, &big)).0,
        422,
        "log full"
    );
    let logs = hub.admin_get(&format!("/api/v1/jobs/{id}/logs"));
    assert_eq!(logs["lines"].as_array().unwrap().len(), 2);
    assert_eq!(hub.job(&id)["log_trimmed"], true);
    // The hub is still healthy.
    assert_eq!(status(get(&format!("{url}/healthz"), "")).0, 200);
    let metrics = get(&format!("{url}/metrics"), "").unwrap().body;
    assert!(
        metrics.contains("flotilla_hub_jobs{agent_type=\"default\",state=\"running\"} 1"),
        "{metrics}"
    );
}

#[test]
fn metrics_long_poll_answers_when_the_queue_changes() {
    let hub = HubProcess::start(&[]);
    let url = format!("{}/api/v1/self_hosted_agents/metrics", hub.url());
    let token = format!("Token {}", hub.registration_token());
    let first: serde_json::Value = get(&url, &token).unwrap().json();
    assert_eq!(first["jobs"]["queued"], 0);
    let version = first["version"].as_u64().unwrap();
    let waiter = {
        let (url, token) = (url.clone(), token.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let answer: serde_json::Value =
                get(&format!("{url}?version={version}&wait=30"), &token)
                    .unwrap()
                    .json();
            (answer, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    hub.submit(&["true"]);
    let (answer, waited) = waiter.join().unwrap();
    assert_eq!(answer["jobs"]["queued"], 1);
    assert!(
        waited < Duration::from_secs(10),
        "answered on the change, not at the timeout ({waited:?})"
    );
}

#[test]
fn the_hub_serves_https_with_a_certificate_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let generated = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is required by this test (.ci/run installs it)");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let port = testkit::free_port();
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(testkit::hub_process::scaler_binary())
        .args([
            "hub",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let curl = |extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(extra)
            .arg(format!("https://127.0.0.1:{port}/healthz"))
            .output()
            .expect("curl is required by this test (.ci/run installs it)")
    };
    testkit::wait_for("the HTTPS hub", Duration::from_secs(20), || {
        curl(&["--cacert", &cert.display().to_string()])
            .status
            .success()
    });
    let output = curl(&["--cacert", &cert.display().to_string()]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n");
    assert!(
        !curl(&[]).status.success(),
        "an untrusted certificate is refused by default"
    );
    let _ = child.kill();
    let _ = child.wait();

    // A key that does not match is a clear start-up error.
    let (other_cert, other_key) = (
        dir.path().join("other.pem"),
        dir.path().join("other-key.pem"),
    );
    std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(&other_key)
        .arg("-out")
        .arg(&other_cert)
        .output()
        .unwrap();
    let output = std::process::Command::new(testkit::hub_process::scaler_binary())
        .args([
            "hub",
            "--listen",
            &format!("127.0.0.1:{}", testkit::free_port()),
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&other_key)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("do not match"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_database_on_another_machine_is_reached_over_tls_or_not_at_all() {
    // No connection is tried: the URL alone decides (an address nothing answers at).
    let hub = |url: &str, extra: &[&str]| {
        std::process::Command::new(testkit::hub_process::scaler_binary())
            .args([
                "hub",
                "--database",
                url,
                "--registration-token",
                "0123456789abcdef0",
            ])
            .args(extra)
            .env("FLOTILLA_ADMIN_TOKEN", "0123456789abcdef0123")
            .output()
            .unwrap()
    };
    let refused = hub("postgres://u:p@10.255.0.9:5432/db", &[]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{text}");
    assert!(text.contains("needs TLS"), "{text}");
    // The positive control: plaintext asked for by name gets past the rule to connecting (and
    // fails there, with nothing at that address).
    let plain = hub(
        "postgres://u:p@10.255.0.9:5432/db?sslmode=disable&connect_timeout=1",
        &[],
    );
    let text = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success(), "{text}");
    assert!(
        !text.contains("needs TLS") && text.contains("error communicating with the server"),
        "{text}"
    );
}

/// Registers `name` with the hub's default type's token; answers the status.
fn register_status(hub: &HubProcess, name: &str, single_job: bool) -> u16 {
    let body = serde_json::json!({"name": name, "version": "v0", "pid": 1, "os": "", "arch": "",
        "hostname": "", "single_job": single_job, "idle_timeout": 0,
        "interruption_grace_period": 0, "job_id": ""});
    let url = format!("{}/api/v1/self_hosted_agents/register", hub.url());
    let token = format!("Token {}", hub.registration_token());
    post(&url, &token, body.to_string()).unwrap().status
}

#[test]
fn the_hubs_default_type_takes_its_registration_rule_from_the_flags() {
    // Single-job agents only: a multi-job agent is refused, a single-job one registers.
    let hub = HubProcess::start(&["--single-job-only"]);
    assert_eq!(register_status(&hub, "agent-multi", false), 409);
    assert_eq!(register_status(&hub, "agent-single", true), 200);
    // Bound to the fleet's instances: a registration without an identity document is refused;
    // the rule stays after a restart without the flags.
    let mut hub = HubProcess::start(&[
        "--require-instance-identity",
        "--allowed-account",
        "123456789012",
    ]);
    assert_eq!(register_status(&hub, "agent-plain", true), 403);
    let (code, listing, stderr) = hub.cli(&["agent-types", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(listing.contains("123456789012"), "{listing}");
    hub.kill_9();
    hub.extra_args.clear();
    hub.launch();
    assert_eq!(register_status(&hub, "agent-plain", true), 403);
    // Without the flags a hub's default type takes any agent (the positive control).
    let open = HubProcess::start(&[]);
    assert_eq!(register_status(&open, "agent-any", false), 200);
}
