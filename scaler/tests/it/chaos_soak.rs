//! The chaos soak: jobs through a real hub, `scaler run` and its local fleet (the scaler and its
//! agents in a network namespace of their own, the hub on the host; `testkit::netbed`) while a
//! seeded, replayable chaos driver SIGKILLs agents, `kill -9`s and restarts the hub, and cuts the
//! link between them. Afterwards every job has ended exactly once and passed (each may be
//! re-queued up to 20 times), its last attempt's log is complete, in order and without
//! duplicates, the fleet is back to zero and no agent process is left; and the chaos happened:
//! each kind at least once while the jobs ran (the kinds not done yet come first).
//!
//! Profiles: CI runs 200 jobs (`FLOTILLA_SOAK_JOBS`, default 200) with seed
//! `FLOTILLA_SOAK_SEED` (default 18); the long profile is e.g. `FLOTILLA_SOAK_JOBS=1000`. The
//! counts are printed (`cargo test -p scaler --test it chaos_soak -- --nocapture`).

use testkit::netbed;

use netbed::{scaler_in_namespace, BedHub, Link};
use std::time::{Duration, Instant};

const LINES: usize = 20;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// xorshift64: the chaos is replayable from its seed.
struct Chaos(u64);

impl Chaos {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[derive(Debug, Default)]
struct Counts {
    agents_killed: u32,
    hub_restarts: u32,
    link_cuts: u32,
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    KillAgent,
    RestartHub,
    CutLink,
    Nothing,
}

impl Counts {
    /// The kinds of chaos not done yet.
    fn missing(&self) -> Vec<Kind> {
        [
            (self.agents_killed, Kind::KillAgent),
            (self.hub_restarts, Kind::RestartHub),
            (self.link_cuts, Kind::CutLink),
        ]
        .into_iter()
        .filter(|(count, _)| *count == 0)
        .map(|(_, kind)| kind)
        .collect()
    }
}

/// The next kind of chaos: those not done yet first (in the seed's order), so that every run,
/// however short, has each at least once; then 4 in 10 kills, 2 restarts, 3 cuts, 1 pause.
fn choose(chaos: &mut Chaos, counts: &Counts) -> Kind {
    let missing = counts.missing();
    if !missing.is_empty() {
        return missing[chaos.next(missing.len() as u64) as usize];
    }
    match chaos.next(10) {
        0..=3 => Kind::KillAgent,
        4 | 5 => Kind::RestartHub,
        6..=8 => Kind::CutLink,
        _ => Kind::Nothing,
    }
}

fn submit_jobs(hub: &BedHub, count: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    (0..count)
        .map(|index| {
            let spec = format!(
                "agent_type: default\ncommands:\n  - for i in $(seq 1 {LINES}); do echo soak-{index}-$i; sleep 0.02; done\nretry:\n  agent_lost: 20\n"
            );
            let path = dir.path().join(format!("job-{index}.yaml"));
            std::fs::write(&path, spec).unwrap();
            hub.submit_file(&path)
        })
        .collect()
}

/// One chaos action, chosen by the seed ([`choose`]). A kill finds no busy agent to kill now and
/// then (it counts only when it killed one).
fn act(chaos: &mut Chaos, hub: &mut BedHub, link: &Link, counts: &mut Counts) {
    match choose(chaos, counts) {
        Kind::KillAgent => {
            let agents = hub.admin_get("/api/v1/agents");
            let busy: Vec<i64> = agents
                .as_array()
                .into_iter()
                .flatten()
                .filter(|agent| agent["job_id"].is_string())
                .filter_map(|agent| agent["pid"].as_i64())
                .collect();
            if let Some(pid) = busy.get(chaos.next(busy.len().max(1) as u64) as usize) {
                // SAFETY: an agent of this test's fleet (its pid as the hub lists it).
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                counts.agents_killed += 1;
            }
        }
        Kind::RestartHub => {
            hub.kill_9();
            hub.launch();
            counts.hub_restarts += 1;
        }
        Kind::CutLink => {
            link.cut_port(hub.port);
            std::thread::sleep(Duration::from_millis(1000 + chaos.next(3000)));
            link.heal();
            counts.link_cuts += 1;
        }
        Kind::Nothing => {}
    }
}

fn fleet_processes_left(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path().join("cwd")).ok())
        .filter(|cwd| cwd.starts_with(dir))
        .count()
}

#[test]
fn jobs_end_exactly_once_through_killed_agents_hub_restarts_and_cut_links() {
    let jobs_wanted = env_number("FLOTILLA_SOAK_JOBS", 200) as usize;
    let mut chaos = Chaos(env_number("FLOTILLA_SOAK_SEED", 18).max(1));
    let link = Link::create();
    let mut hub = BedHub::start(
        &link,
        &[
            "--sync-interval-ms",
            "250",
            "--lost-after",
            "3",
            "--give-up-after",
            "30",
        ],
    );
    // The fleet's agents give up as the hub expects; an instance that replaced a killed one and
    // finds no job left leaves after 10 s idle, as a real fleet's instances do.
    let env = [
        ("SEMAPHORE_AGENT_GIVE_UP_AFTER", "30"),
        ("SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT", "10"),
    ];
    let scaler = scaler_in_namespace(&link, &hub, 6, &env);
    let started = Instant::now();
    let jobs = submit_jobs(&hub, jobs_wanted);
    let mut counts = Counts::default();
    let deadline = started + Duration::from_secs(60 + jobs_wanted as u64 * 3);
    let finished = |hub: &BedHub| {
        let listed = hub.admin_get(&format!(
            "/api/v1/jobs?state=finished&limit={}",
            jobs_wanted + 10
        ));
        listed.as_array().map_or(0, Vec::len)
    };
    while finished(&hub) < jobs_wanted {
        assert!(
            Instant::now() < deadline,
            "not done in time: {counts:?}\n{}",
            scaler.log()
        );
        act(&mut chaos, &mut hub, &link, &mut counts);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let elapsed = started.elapsed();
    // The chaos happened: every kind at least once while jobs ran (a kill counts only when it
    // killed a busy agent).
    assert!(counts.missing().is_empty(), "chaos not done: {counts:?}");
    let mut attempts = 0;
    for (index, job) in jobs.iter().enumerate() {
        let view = hub.job(job);
        assert_eq!(
            (view["state"].as_str(), view["result"].as_str()),
            (Some("finished"), Some("passed")),
            "{view}"
        );
        attempts += view["attempts"].as_i64().unwrap();
        let expected: Vec<String> = (1..=LINES).map(|i| format!("soak-{index}-{i}")).collect();
        let last = hub.output_lines(job, "soak-", netbed::Attempts::Last);
        let (lines, started, finished) = (last.lines, last.started, last.finished);
        assert_eq!(
            lines, expected,
            "job {index}: the last attempt's log, complete, in order, once"
        );
        assert_eq!((started, finished), (1, 1), "job {index}");
    }
    let back_to_zero = Instant::now() + Duration::from_secs(120);
    loop {
        let in_service = scaler.metric("flotilla_scaler_in_service");
        let agents = hub.admin_get("/api/v1/agents");
        if in_service == Some(0.0) && agents.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < back_to_zero,
            "the fleet is not back to zero: in service {in_service:?}, agents {agents}\n{}",
            scaler.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fleet_dir = scaler.dir.path().join("fleet");
    testkit::wait_for("no agent process left", Duration::from_secs(30), || {
        fleet_processes_left(&fleet_dir) == 0
    });
    eprintln!(
        "soak: {jobs_wanted} jobs passed once each ({attempts} attempts) in {elapsed:?}; chaos: {counts:?}"
    );
}
