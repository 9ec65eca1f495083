//! Several `scaler hub` replicas sharing one PostgreSQL database (`--database`), behind a test
//! load balancer (`support/balancer.rs`): what a deployment with more than one hub must keep.
//! 200 protocol-level agents racing over three replicas for 500 jobs submitted through all of
//! them get each job exactly once; a replica killed with `kill -9` mid-run loses no job and its
//! agents carry on through the others; the metrics long-poll on one replica answers within a
//! second of a job submitted on another (and not before, while that replica's `/metrics` shows it
//! waiting). Each test has a database of its own, made through `psql "$FLOTILLA_TEST_POSTGRES"`
//! (`.ci/postgres` starts the server) and dropped at the end. The agents speak the wire protocol
//! (docs/protocol.md) over keep-alive connections with a small HTTP/1.1 client, so that each
//! connection stays on one replica as a real agent's would, and each hand-out can be counted.
//! Like the real agent they retry a 503 (a write conflict between replicas that outlasted the
//! hub's own retries; the count is printed) and, in the kill test only, a broken connection.

use testkit::balancer;
use testkit::stores;

use balancer::Balancer;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::hub_process::HubProcess;

const ADMIN_TOKEN: &str = "replica-test-admin-token";
const REGISTRATION_TOKEN: &str = "replica-test-registration-token";
const AGENT_API: &str = "/api/v1/self_hosted_agents";

/// The tests share two cores: one at a time, so that the long-poll's timing means something.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ------------------------------------------------------------------ databases

/// A database of its own for one test (`testkit/src/stores.rs`: named after this process, dropped by
/// the next run once this process is gone).
struct TestDatabase {
    url: String,
}

impl TestDatabase {
    fn create() -> TestDatabase {
        TestDatabase {
            url: stores::new_database_url(),
        }
    }
}

fn replicas(database: &TestDatabase, count: usize, extra_args: &[&str]) -> Vec<HubProcess> {
    (0..count)
        .map(|_| {
            HubProcess::start_with_database(
                &database.url,
                ADMIN_TOKEN,
                REGISTRATION_TOKEN,
                extra_args,
            )
        })
        .collect()
}

// ------------------------------------------------------------------ HTTP/1.1 over keep-alive

/// One keep-alive connection (through the balancer, it stays on one replica), opened on demand.
struct Link {
    address: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Link {
    fn new(address: &str) -> Link {
        Link {
            address: address.to_string(),
            stream: None,
        }
    }

    /// The next request goes over a new connection (to the balancer's next replica).
    fn hop(&mut self) {
        self.stream = None;
    }

    /// One request and its answer (status, body); an error closes the connection.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.address)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(90)))?;
            self.stream = Some(BufReader::new(stream));
        }
        let result = exchange(self.stream.as_mut().unwrap(), method, path, auth, body);
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

fn exchange(
    reader: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: {auth}\r\nUser-Agent: SemaphoreAgent/replica-test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = reader.get_mut();
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let broken =
        |what: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_string());
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(broken("connection closed before the status line"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| broken(&format!("bad status line {line:?}")))?;
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(broken("connection closed in the headers"));
        }
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(value) = header.strip_prefix("content-length:") {
            length = value.trim().parse().map_err(|_| broken(&header))?;
        }
        if header.starts_with("transfer-encoding:") {
            return Err(broken("the test client reads Content-Length bodies only"));
        }
    }
    let mut answer = vec![0; length];
    reader.read_exact(&mut answer)?;
    Ok((status, String::from_utf8_lossy(&answer).into_owned()))
}

// ------------------------------------------------------------------ protocol-level agents

/// What the agents saw, together.
#[derive(Default)]
struct Tally {
    /// Per job, the agents it was handed to (`run-job`), once per hand-out.
    handouts: Mutex<HashMap<String, Vec<usize>>>,
    finished: Mutex<HashSet<String>>,
    /// Requests answered 503 ("busy or unavailable; retry": a write conflict between replicas
    /// that outlasted the hub's attempts), retried as the real agent retries a failed request.
    unavailable: AtomicUsize,
}

impl Tally {
    fn finished_count(&self) -> usize {
        self.finished.lock().unwrap().len()
    }
}

struct Plan {
    address: String,
    /// The agents stop once this many distinct jobs have finished.
    total: usize,
    deadline: Instant,
    /// How long a job "runs" between its running-job and finished-job syncs.
    run_for: Duration,
    /// Whether a broken connection is expected (a killed replica): retried on a new one.
    retry_broken: bool,
}

/// How one agent fared.
struct AgentReport {
    index: usize,
    outcome: Result<(), String>,
    /// Its connection broke (its replica was killed) at least once.
    cut: bool,
    /// Requests answered after its first broken connection.
    answered_after_cut: usize,
    jobs: usize,
}

struct Agent {
    index: usize,
    link: Link,
    token: String,
    plan: Arc<Plan>,
    tally: Arc<Tally>,
    cut: bool,
    answered_after_cut: usize,
    jobs: usize,
}

impl Agent {
    fn run(index: usize, plan: Arc<Plan>, tally: Arc<Tally>) -> AgentReport {
        let mut agent = Agent {
            index,
            link: Link::new(&plan.address),
            token: String::new(),
            plan,
            tally,
            cut: false,
            answered_after_cut: 0,
            jobs: 0,
        };
        let outcome = agent.work();
        AgentReport {
            index,
            outcome,
            cut: agent.cut,
            answered_after_cut: agent.answered_after_cut,
            jobs: agent.jobs,
        }
    }

    /// One request; a broken connection is retried on a new one when the plan expects it.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        loop {
            match self.link.call(method, path, auth, body) {
                Ok(answer) => {
                    if self.cut {
                        self.answered_after_cut += 1;
                    }
                    return Ok(answer);
                }
                Err(_) if self.plan.retry_broken && Instant::now() < self.plan.deadline => {
                    self.cut = true;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => {
                    return Err(format!("agent {}: {method} {path}: {error}", self.index))
                }
            }
        }
    }

    /// A request that must answer 200 (503s are retried, as the real agent retries).
    fn ok(&mut self, method: &str, path: &str, body: &str) -> Result<String, String> {
        let auth = if path.ends_with("/register") {
            format!("Token {REGISTRATION_TOKEN}")
        } else {
            format!("Token {}", self.token)
        };
        loop {
            match self.request(method, path, &auth, body)? {
                (200, answer) => return Ok(answer),
                (503, _) if Instant::now() < self.plan.deadline => {
                    self.tally.unavailable.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
                (status, answer) => {
                    return Err(format!(
                        "agent {}: {method} {path} {body}: HTTP {status}: {answer}",
                        self.index
                    ))
                }
            }
        }
    }

    fn sync(&mut self, state: &str, job_id: &str, result: &str) -> Result<String, String> {
        let body =
            json!({"state": state, "job_id": job_id, "job_result": result, "interrupted_at": 0});
        let answer = self.ok("POST", &format!("{AGENT_API}/sync"), &body.to_string())?;
        let reply: Value =
            serde_json::from_str(&answer).map_err(|e| format!("sync: {e}: {answer}"))?;
        Ok(format!(
            "{}:{}",
            reply["action"].as_str().unwrap_or(""),
            reply["job_id"].as_str().unwrap_or("")
        ))
    }

    fn register(&mut self) -> Result<(), String> {
        let body = json!({"name": format!("replica-agent-{:03}", self.index), "version": "v0",
            "pid": self.index, "os": "", "arch": "", "hostname": "", "single_job": false,
            "idle_timeout": 0, "interruption_grace_period": 0, "job_id": ""});
        let answer = self.ok("POST", &format!("{AGENT_API}/register"), &body.to_string())?;
        let reply: Value = serde_json::from_str(&answer).map_err(|e| format!("register: {e}"))?;
        self.token = reply["token"]
            .as_str()
            .ok_or(format!("register: {answer}"))?
            .to_string();
        Ok(())
    }

    fn work(&mut self) -> Result<(), String> {
        self.register()?;
        let pause = Duration::from_millis(80 + (self.index as u64 * 7) % 80);
        while self.tally.finished_count() < self.plan.total {
            if Instant::now() > self.plan.deadline {
                let done = self.tally.finished_count();
                return Err(format!(
                    "agent {}: out of time with {done} jobs finished",
                    self.index
                ));
            }
            let reply = self.sync("waiting-for-jobs", "", "")?;
            match reply.split_once(':') {
                Some(("run-job", job_id)) => self.run_job(job_id)?,
                Some(("wait-for-jobs" | "continue", _)) => std::thread::sleep(pause),
                _ => {
                    return Err(format!(
                        "agent {}: waiting-for-jobs answered {reply}",
                        self.index
                    ))
                }
            }
        }
        self.ok("POST", &format!("{AGENT_API}/disconnect"), "")?;
        Ok(())
    }

    fn run_job(&mut self, job_id: &str) -> Result<(), String> {
        let handout = job_id.to_string();
        self.tally
            .handouts
            .lock()
            .unwrap()
            .entry(handout)
            .or_default()
            .push(self.index);
        let answer = self.ok("GET", &format!("{AGENT_API}/jobs/{job_id}"), "")?;
        let job: Value =
            serde_json::from_str(&answer).map_err(|e| format!("job: {e}: {answer}"))?;
        if job["job_id"] != job_id {
            return Err(format!(
                "agent {}: asked for {job_id}, got {answer}",
                self.index
            ));
        }
        let reply = self.sync("running-job", job_id, "")?;
        if !reply.starts_with("continue:") {
            return Err(format!(
                "agent {}: running-job {job_id} answered {reply}",
                self.index
            ));
        }
        std::thread::sleep(self.plan.run_for);
        let reply = self.sync("finished-job", job_id, "passed")?;
        if !(reply.starts_with("wait-for-jobs:") || reply.starts_with("continue:")) {
            return Err(format!(
                "agent {}: finished-job {job_id} answered {reply}",
                self.index
            ));
        }
        self.tally
            .finished
            .lock()
            .unwrap()
            .insert(job_id.to_string());
        self.jobs += 1;
        // A new connection for the next job: through the balancer, most likely another replica.
        self.link.hop();
        Ok(())
    }
}

fn start_agents(
    count: usize,
    plan: &Arc<Plan>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<AgentReport>> {
    (0..count)
        .map(|index| {
            let (plan, tally) = (plan.clone(), tally.clone());
            std::thread::spawn(move || Agent::run(index, plan, tally))
        })
        .collect()
}

/// The agents' reports; a test failure with the failures and the replicas' logs if any failed.
fn join_agents(
    agents: Vec<std::thread::JoinHandle<AgentReport>>,
    hubs: &[HubProcess],
) -> Vec<AgentReport> {
    let reports: Vec<AgentReport> = agents
        .into_iter()
        .map(|agent| agent.join().unwrap())
        .collect();
    let failures: Vec<&String> = reports
        .iter()
        .filter_map(|r| r.outcome.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} agents failed:\n{failures:#?}\n{}",
        failures.len(),
        hub_logs(hubs)
    );
    reports
}

/// The last lines of every replica's log.
fn hub_logs(hubs: &[HubProcess]) -> String {
    hubs.iter()
        .map(|hub| {
            let log = hub.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            format!("--- replica {} (last 40 lines):\n{tail}\n", hub.address)
        })
        .collect()
}

// ------------------------------------------------------------------ jobs

/// Submits `count` jobs, job k through replica k mod N, from four threads at once.
fn submit_jobs(addresses: &[String], count: usize) -> Vec<String> {
    let submitters: Vec<_> = (0..4)
        .map(|thread| {
            let addresses = addresses.to_vec();
            std::thread::spawn(move || {
                let mut links: Vec<Link> = addresses.iter().map(|a| Link::new(a)).collect();
                let spec = json!({"name": "replica-job", "commands": ["true"], "retry": {"agent_lost": 5}});
                (thread..count)
                    .step_by(4)
                    .map(|k| {
                        let link = &mut links[k % addresses.len()];
                        let auth = format!("Bearer {ADMIN_TOKEN}");
                        let (status, body) = link.call("POST", "/api/v1/jobs", &auth, &spec.to_string()).unwrap();
                        assert_eq!(status, 201, "submit through {}: {body}", addresses[k % addresses.len()]);
                        serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    submitters
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect()
}

/// The finished jobs as one replica lists them: id → result.
fn finished_jobs(hub: &HubProcess) -> HashMap<String, String> {
    let listed = hub.admin_get("/api/v1/jobs?state=finished&limit=10000");
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            (
                job["id"].as_str().unwrap().to_string(),
                job["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Every replica lists every job as finished and passed.
fn assert_all_passed(hubs: &[HubProcess], ids: &[String]) {
    for hub in hubs.iter().filter(|hub| hub.child.is_some()) {
        let finished = finished_jobs(hub);
        let not_passed: Vec<(&String, Option<&String>)> = ids
            .iter()
            .map(|id| (id, finished.get(id)))
            .filter(|(_, result)| result.map(String::as_str) != Some("passed"))
            .collect();
        assert!(
            not_passed.is_empty(),
            "{}: {} of {} jobs not finished and passed, e.g. {:?}",
            hub.address,
            not_passed.len(),
            ids.len(),
            &not_passed[..not_passed.len().min(5)]
        );
    }
}

fn addresses(hubs: &[HubProcess]) -> Vec<String> {
    hubs.iter().map(|hub| hub.address.clone()).collect()
}

// ------------------------------------------------------------------ the tests

#[test]
fn two_hundred_agents_racing_over_three_replicas_get_each_job_exactly_once() {
    let _serial = one_at_a_time();
    let database = TestDatabase::create();
    let hubs = replicas(&database, 3, &["--sync-interval-ms", "100"]);
    let balancer = Balancer::start(&addresses(&hubs));
    let jobs = 500;
    let plan = Arc::new(Plan {
        address: balancer.address.clone(),
        total: jobs,
        deadline: Instant::now() + Duration::from_secs(300),
        run_for: Duration::ZERO,
        retry_broken: false,
    });
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let agents = start_agents(200, &plan, &tally);
    // Submitted while the agents already race: through every replica, from four threads.
    let ids = submit_jobs(&addresses(&hubs), jobs);
    let reports = join_agents(agents, &hubs);
    let elapsed = started.elapsed();
    let handouts = tally.handouts.lock().unwrap();
    let twice: Vec<(&String, &Vec<usize>)> = handouts
        .iter()
        .filter(|(_, agents)| agents.len() != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "jobs handed out more than once (job, agents): {twice:?}"
    );
    let handed: HashSet<&String> = handouts.keys().collect();
    assert_eq!(
        handed,
        ids.iter().collect(),
        "every job submitted was handed out, and only those"
    );
    assert_all_passed(&hubs, &ids);
    let counts = balancer.counts();
    assert!(
        counts.iter().all(|c| c.opened > 0),
        "every replica served agents: {counts:?}"
    );
    let busiest = reports.iter().map(|r| r.jobs).max().unwrap_or(0);
    let unavailable = tally.unavailable.load(Ordering::SeqCst);
    eprintln!(
        "{jobs} jobs over 3 replicas, 200 agents, in {elapsed:?} (busiest agent {busiest} jobs, \
         {unavailable} answers 503 retried); balancer {counts:?}"
    );
}

#[test]
fn a_replica_killed_mid_run_loses_no_job_and_its_agents_carry_on() {
    let _serial = one_at_a_time();
    let database = TestDatabase::create();
    let mut hubs = replicas(
        &database,
        3,
        &["--lost-after", "5", "--give-up-after", "30"],
    );
    let balancer = Balancer::start(&addresses(&hubs));
    let jobs = 300;
    let ids = submit_jobs(&addresses(&hubs), jobs);
    let plan = Arc::new(Plan {
        address: balancer.address.clone(),
        total: jobs,
        deadline: Instant::now() + Duration::from_secs(300),
        run_for: Duration::from_millis(300),
        retry_broken: true,
    });
    let tally = Arc::new(Tally::default());
    let agents = start_agents(60, &plan, &tally);
    testkit::wait_for(
        "a quarter of the jobs to finish",
        Duration::from_secs(120),
        || tally.finished_count() >= jobs / 4,
    );
    let open_at_kill = balancer.counts()[0].open;
    hubs[0].kill_9();
    let finished_at_kill = tally.finished_count();
    assert!(finished_at_kill < jobs, "the kill came after the run");
    let reports = join_agents(agents, &hubs);
    let cut: Vec<&AgentReport> = reports.iter().filter(|r| r.cut).collect();
    assert!(
        !cut.is_empty(),
        "no agent's connection went through the killed replica ({open_at_kill} open at the kill)"
    );
    for report in &cut {
        assert!(
            report.answered_after_cut > 0,
            "agent {} did not carry on after the kill",
            report.index
        );
    }
    assert_all_passed(&hubs, &ids);
    let handouts = tally.handouts.lock().unwrap();
    let again = handouts.values().filter(|agents| agents.len() > 1).count();
    let counts = balancer.counts();
    eprintln!(
        "killed replica 0 with {finished_at_kill}/{jobs} finished and {open_at_kill} connections open on it; \
         {} agents cut over, {again} jobs handed out again, {} answers 503 retried; balancer {counts:?}",
        cut.len(),
        tally.unavailable.load(Ordering::SeqCst)
    );
}

/// How many queue-metrics long-polls `hub`'s Prometheus `/metrics` says wait for a change.
fn long_polls_waiting(hub: &HubProcess) -> Option<u64> {
    let reply = testkit::http::get(&format!("{}/metrics", hub.url()), "").ok()?;
    let line = reply
        .body
        .lines()
        .find_map(|line| line.strip_prefix("flotilla_hub_long_polls_waiting "))?;
    line.trim().parse().ok()
}

#[test]
fn the_metrics_long_poll_on_one_replica_answers_a_job_submitted_on_another() {
    let _serial = one_at_a_time();
    let database = TestDatabase::create();
    let hubs = replicas(&database, 2, &[]);
    let metrics = format!("{AGENT_API}/metrics");
    let auth = format!("Token {REGISTRATION_TOKEN}");
    let (status, body) = Link::new(&hubs[0].address)
        .call("GET", &metrics, &auth, "")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let before: Value = serde_json::from_str(&body).unwrap();
    let version = before["version"]
        .as_u64()
        .expect("the hub's metrics carry a version");
    assert_eq!(before["jobs"]["queued"], 0, "{before}");
    assert_eq!(long_polls_waiting(&hubs[0]), Some(0), "none before ours");
    let (sender, answers) = std::sync::mpsc::channel();
    let (address, poll) = (
        hubs[0].address.clone(),
        format!("{metrics}?version={version}&wait=30"),
    );
    std::thread::spawn(move || {
        let answer = Link::new(&address).call("GET", &poll, &auth, "");
        let _ = sender.send((Instant::now(), answer));
    });
    // The hub's word that the long-poll waits for a change (not that it was slow to answer).
    testkit::wait_for(
        "the long-poll to wait on replica A",
        Duration::from_secs(20),
        || long_polls_waiting(&hubs[0]) == Some(1),
    );
    if let Ok((_, answer)) = answers.try_recv() {
        panic!("the long-poll answered before anything changed: {answer:?}");
    }
    let submitted = Instant::now();
    let ids = submit_jobs(&[hubs[1].address.clone()], 1);
    let (answered, answer) = answers
        .recv_timeout(Duration::from_secs(20))
        .expect("the long-poll on replica A answers a job submitted on replica B");
    let (status, body) = answer.unwrap();
    let latency = answered.duration_since(submitted);
    assert_eq!(status, 200, "{body}");
    let after: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        after["jobs"]["queued"], 1,
        "job {} counted on replica A: {after}",
        ids[0]
    );
    assert_ne!(after["version"].as_u64(), Some(version), "{after}");
    assert!(
        latency <= Duration::from_secs(1),
        "the long-poll answered {latency:?} after the submit on replica B"
    );
    eprintln!("long-poll on replica A answered {latency:?} after the submit on replica B");
}
