//! Network partitions between real processes on separate network namespaces (one per agent, the
//! hub on the host; `support/netbed.rs`): agent ↔ hub cuts during a job, shorter than the hub's
//! lost-agent timeout, longer than it, and longer than the agents' give-up time; a healed agent
//! whose job went to another agent; the hub restarted behind a partition.
//!
//! Time is scaled down by [`SCALE`] (10) through the real flags: `--lost-after 6` (60 s),
//! `--give-up-after 60` on hub and agent (600 s), a 6 s job of 120 lines (60 s), cuts of 3 s, 18 s
//! and 72 s for 30 s, 3 min and 12 min. HTTP timeouts are not scaled (30 s), so a request that
//! hangs in the cut adds up to 30 s to a scenario.
//!
//! Expected outcomes, written before the runs:
//! - cut 30 s: nothing is lost; log complete and in order, passed once, agent exits 0.
//! - cut 3 min: the hub declares the agent lost and re-queues the job; nobody else takes it; after
//!   the heal the agent resumes: log complete and in order, passed once (attempts 1), exit 0.
//! - cut 12 min: the agent gives up (stops the job, exits 1, `UNABLE_TO_SYNC`); the job was
//!   re-queued once (attempts 1, queued) and nothing else records a result.
//! - cut 3 min while another agent takes the re-queued job: after the heal the first agent is
//!   refused (401) and exits 1 at once; the job passes once, on the other agent, and its log holds
//!   the lost attempt's lines followed by the whole re-run, each once.
//! - hub `kill -9`ed and restarted behind a 3 s cut: the agent re-syncs, nothing is lost.

use testkit::netbed;

use netbed::{BedHub, Link};
use std::time::{Duration, Instant};
use testkit::wait_for;

/// Real timeouts ÷ SCALE.
const SCALE: u64 = 10;
const LOST_AFTER: u64 = 60 / SCALE;
const GIVE_UP_AFTER: u64 = 600 / SCALE;
const LINES: usize = 120;
const JOB: &str = "for i in $(seq 1 120); do echo line-$i; sleep 0.05; done";

fn hub_on(link: &Link) -> BedHub {
    let (lost, give_up) = (LOST_AFTER.to_string(), GIVE_UP_AFTER.to_string());
    BedHub::start(link, &["--lost-after", &lost, "--give-up-after", &give_up])
}

fn agent_args() -> Vec<String> {
    vec!["--give-up-after".into(), GIVE_UP_AFTER.to_string()]
}

fn start_agent(hub: &BedHub, link: &Link) -> testkit::agent_process::AgentProcess {
    let args = agent_args();
    hub.agent_in(link, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn wait_for_state(hub: &BedHub, job: &str, state: &str, timeout: Duration) {
    wait_for(&format!("job {job} to be {state}"), timeout, || {
        hub.job(job)["state"] == state
    });
}

/// The job's output lines (`line-N`) in log order, and how many job_started / job_finished
/// events the log holds.
fn delivered(hub: &BedHub, job: &str) -> (Vec<String>, usize, usize) {
    let output = hub.output_lines(job, "line-", netbed::Attempts::All);
    (output.lines, output.started, output.finished)
}

fn expected_lines() -> Vec<String> {
    (1..=LINES).map(|i| format!("line-{i}")).collect()
}

/// Runs the job on an agent behind `link`, cuts the link for `cut` once the job runs, heals it;
/// returns the hub, the agent and the job id.
fn cut_during_a_job(
    link: &Link,
    cut: Duration,
) -> (BedHub, testkit::agent_process::AgentProcess, String) {
    let hub = hub_on(link);
    let job = hub.submit(&[JOB]);
    let agent = start_agent(&hub, link);
    wait_for_state(&hub, &job, "running", Duration::from_secs(30));
    link.cut();
    std::thread::sleep(cut);
    link.heal();
    (hub, agent, job)
}

fn assert_passed_once_and_complete(hub: &BedHub, job: &str) {
    let view = hub.job(job);
    assert_eq!(view["state"], "finished", "{view}");
    assert_eq!(view["result"], "passed", "{view}");
    assert_eq!(view["attempts"], 1, "run once: {view}");
    let (lines, started, finished) = delivered(hub, job);
    assert_eq!(lines, expected_lines(), "complete, in order, no duplicates");
    assert_eq!(
        (started, finished),
        (1, 1),
        "one job_started, one job_finished"
    );
}

#[test]
fn a_cut_of_30_s_during_a_job_loses_nothing() {
    let link = Link::create();
    let (hub, mut agent, job) = cut_during_a_job(&link, Duration::from_secs(30 / SCALE));
    assert_eq!(agent.wait(Duration::from_secs(90)), 0, "{}", agent.output());
    assert_passed_once_and_complete(&hub, &job);
}

#[test]
fn a_cut_of_3_min_past_lost_after_resumes_the_job_nobody_took() {
    let link = Link::create();
    let (hub, mut agent, job) = cut_during_a_job(&link, Duration::from_secs(180 / SCALE));
    assert_eq!(
        agent.wait(Duration::from_secs(120)),
        0,
        "{}",
        agent.output()
    );
    assert_passed_once_and_complete(&hub, &job);
    let log = hub.log();
    assert!(
        log.contains("agent lost"),
        "the hub declared it lost:\n{log}"
    );
    assert!(log.contains("came back and resumes"), "{log}");
}

#[test]
fn a_cut_of_12_min_past_the_give_up_time_requeues_once_and_the_agent_exits_1() {
    let link = Link::create();
    let hub = hub_on(&link);
    let job = hub.submit(&["sleep 600"]);
    let mut agent = start_agent(&hub, &link);
    wait_for_state(&hub, &job, "running", Duration::from_secs(30));
    link.cut();
    let cut_at = Instant::now();
    // The agent gives up within the cut (60 s, plus a request hanging up to 30 s).
    let code = agent.wait(Duration::from_secs(720 / SCALE + 60));
    assert!(
        cut_at.elapsed() < Duration::from_secs(720 / SCALE + 40),
        "gave up in time"
    );
    link.heal();
    assert_eq!(code, 1, "{}", agent.output());
    assert_eq!(agent.shutdown_reason(), "UNABLE_TO_SYNC");
    let view = hub.job(&job);
    assert_eq!(
        view["state"], "queued",
        "re-queued, never run twice: {view}"
    );
    assert_eq!(view["attempts"], 1, "{view}");
    assert!(
        view["reason"].as_str().unwrap_or("").contains("lost"),
        "{view}"
    );
}

#[test]
fn a_healed_agent_whose_job_went_elsewhere_is_refused_and_leaves_at_once() {
    let (first_link, second_link) = (Link::create(), Link::create());
    let hub = hub_on(&first_link);
    let job = hub.submit(&[JOB]);
    let mut first = start_agent(&hub, &first_link);
    wait_for_state(&hub, &job, "running", Duration::from_secs(30));
    first_link.cut();
    // Lost after 6 s: re-queued, then taken by a second agent on its own link.
    wait_for_state(&hub, &job, "queued", Duration::from_secs(30));
    let mut second = start_agent(&hub, &second_link);
    wait_for_state(&hub, &job, "running", Duration::from_secs(30));
    first_link.heal();
    let healed_at = Instant::now();
    assert_eq!(first.wait(Duration::from_secs(60)), 1, "{}", first.output());
    assert!(
        healed_at.elapsed() < Duration::from_secs(45),
        "left at the first answer after the heal (a hanging request may take 30 s)"
    );
    assert_eq!(first.shutdown_reason(), "UNABLE_TO_SYNC");
    assert!(
        first.output().contains("refused this agent's token")
            || agent_log(&first).contains("refused this agent's token")
    );
    assert_eq!(
        second.wait(Duration::from_secs(60)),
        0,
        "{}",
        second.output()
    );
    let view = hub.job(&job);
    assert_eq!(
        (view["state"].as_str(), view["result"].as_str()),
        (Some("finished"), Some("passed")),
        "{view}"
    );
    assert_eq!(view["attempts"], 2, "{view}");
    // The lost attempt's partial log, then the re-run's whole log, each line once.
    let (lines, started, finished) = delivered(&hub, &job);
    let rerun_from = lines.iter().rposition(|line| line == "line-1").unwrap();
    assert_eq!(
        lines[rerun_from..],
        expected_lines()[..],
        "the re-run's log is complete"
    );
    assert_eq!(
        lines[..rerun_from],
        expected_lines()[..rerun_from],
        "then the lost attempt's"
    );
    assert_eq!((started, finished), (2, 1));
}

#[test]
fn a_hub_restarted_behind_a_partition_loses_nothing() {
    let link = Link::create();
    let mut hub = hub_on(&link);
    let job = hub.submit(&[JOB]);
    let mut agent = start_agent(&hub, &link);
    wait_for_state(&hub, &job, "running", Duration::from_secs(30));
    link.cut();
    hub.kill_9();
    hub.launch();
    std::thread::sleep(Duration::from_secs(30 / SCALE));
    link.heal();
    assert_eq!(agent.wait(Duration::from_secs(90)), 0, "{}", agent.output());
    assert_passed_once_and_complete(&hub, &job);
}

fn agent_log(agent: &testkit::agent_process::AgentProcess) -> String {
    std::fs::read_to_string(agent.dir.path().join("agent.log")).unwrap_or_default()
}

/// The log size of the slow-link scenario: 8 MiB in CI (the 200 MB takes tens of minutes
/// over this link); `FLOTILLA_SLOW_LINK_LOG_MIB=200` runs the long profile.
fn slow_link_log_mib() -> usize {
    std::env::var("FLOTILLA_SLOW_LINK_LOG_MIB")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(8)
}

#[test]
fn a_big_log_over_a_slow_lossy_link_arrives_complete_in_order_once() {
    let link = Link::create();
    let port = testkit::free_port();
    let hub_address = format!("{}:{port}", link.host_ip);
    let proxy = netbed::DelayProxy::start(
        &link.host_ip,
        &hub_address,
        Duration::from_millis(500),
        Duration::from_millis(100),
    );
    let public_url = format!("http://{}", proxy.address);
    let hub = BedHub::start_at(
        &hub_address,
        &public_url,
        &["--max-log-bytes", "1000000000"],
    );
    // "line-" and 7 digits and a newline: 13 bytes a line.
    let lines = slow_link_log_mib() * 1024 * 1024 / 13;
    let job = hub.submit(&[&format!(
        "seq 1000001 {} | sed 's/^/line-/'",
        1_000_000 + lines
    )]);
    link.lossy(5);
    let started = Instant::now();
    let mut agent = hub.agent_via(&link, &proxy.address, &[]);
    assert_eq!(
        agent.wait(Duration::from_secs(600)),
        0,
        "{}",
        agent.output()
    );
    eprintln!(
        "{lines} lines over the slow link in {:?}",
        started.elapsed()
    );
    link.heal();
    let view = hub.job(&job);
    assert_eq!(
        (view["result"].as_str(), view["attempts"].as_i64()),
        (Some("passed"), Some(1))
    );
    let (delivered, started_events, finished_events) = delivered(&hub, &job);
    let expected: Vec<String> = (1_000_001..=1_000_000 + lines)
        .map(|i| format!("line-{i}"))
        .collect();
    assert!(
        delivered == expected,
        "{} lines delivered, {} expected",
        delivered.len(),
        expected.len()
    );
    assert_eq!((started_events, finished_events), (1, 1));
}

#[test]
fn a_scaler_cut_from_the_hub_raises_nothing_on_stale_metrics_and_converges_after() {
    let link = Link::create();
    let hub = hub_on(&link);
    let scaler = netbed::scaler_in_namespace(&link, &hub, 3, &[]);
    let raises = || scaler.metric("flotilla_scaler_raises_total").unwrap_or(0.0);
    wait_for(
        "the scaler's first decisions",
        Duration::from_secs(30),
        || {
            scaler
                .metric("flotilla_scaler_decisions_total")
                .unwrap_or(0.0)
                > 0.0
        },
    );
    link.cut_port(hub.port);
    let jobs: Vec<String> = (0..3).map(|_| hub.submit(&["echo done"])).collect();
    // Long past the metrics' staleness (30 s): the loop goes on, on nothing new.
    std::thread::sleep(Duration::from_secs(35));
    assert_eq!(raises(), 0.0, "no raise while cut off:\n{}", scaler.log());
    assert_eq!(scaler.metric("flotilla_scaler_desired"), Some(0.0));
    link.heal();
    for job in &jobs {
        wait_for_state(&hub, job, "finished", Duration::from_secs(120));
        assert_eq!(hub.job(job)["result"], "passed");
    }
    assert!(raises() > 0.0, "raised once the metrics were fresh again");
    wait_for("the fleet back to zero", Duration::from_secs(60), || {
        scaler.metric("flotilla_scaler_in_service") == Some(0.0)
    });
}
