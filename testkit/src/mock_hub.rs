//! A small in-process control plane and log sink for the agent's end-to-end tests: it speaks
//! docs/protocol.md §2 (register, sync, jobs, refresh, disconnect) and §6.2 (log push) with the
//! server-side rules of upstream's Go mock hub (§9.1), and records everything it is sent. It is a
//! test fixture; the real control plane is the hub.

use crate::imds::{header, respond, Reply, Request, TestServer};
use protocol::{JobRequest, RegisterRequest, SyncRequest, SyncResponse};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct HubState {
    pub register_rejections: u32,
    pub register_attempts: u32,
    pub registered: Option<RegisterRequest>,
    /// (Authorization, User-Agent) of every request, by path prefix.
    pub headers: Vec<(String, String, String)>,
    pub syncs: Vec<SyncRequest>,
    pub jobs: HashMap<String, JobRequest>,
    pub queue: VecDeque<String>,
    pub get_job_rejections: u32,
    pub get_job_attempts: u32,
    pub get_job_delay: Duration,
    /// Bodies served as-is for these job ids (malformed job requests).
    pub raw_job_bodies: HashMap<String, String>,
    pub job_fetches: Vec<String>,
    pub shutdown_scheduled: bool,
    pub stop_requested: bool,
    /// Also answer stop-job while the agent reports starting-job (upstream's mock never does).
    pub stop_while_starting: bool,
    /// Misbehave: never send shutdown(job-finished) to a single-job agent.
    pub ignore_single_job: bool,
    pub last_state: String,
    pub last_state_change: Option<Instant>,
    pub finished: Vec<(String, String)>,
    pub disconnected: bool,
    pub next_sync_after: i64,
    pub logs: HashMap<String, Vec<String>>,
    pub log_batches: Vec<(String, u64, usize)>,
    pub log_max_events: Option<usize>,
    pub token_refreshed: bool,
    pub unexpected: Vec<String>,
    /// When each job's run-job answer was sent, and when its first `cmd_started` arrived.
    pub run_job_sent: HashMap<String, Instant>,
    pub first_command_pushed: HashMap<String, Instant>,
    /// Lines and bytes received by the log sink.
    pub log_lines_received: u64,
    pub log_bytes_received: u64,
    /// Keep only counts, not the lines (benchmarks push hundreds of MB).
    pub count_logs_only: bool,
}

pub struct FakeHub {
    pub address: String,
    state: Arc<Mutex<HubState>>,
    _server: TestServer,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        FakeHub::start_on("127.0.0.1")
    }

    pub fn start_on(ip: &str) -> FakeHub {
        let state = Arc::new(Mutex::new(HubState {
            next_sync_after: 100,
            ..HubState::default()
        }));
        let shared = state.clone();
        let server = TestServer::start_on(ip, move |request| handle(request, &shared));
        FakeHub {
            address: server.address.to_string(),
            state,
            _server: server,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap()
    }

    pub fn log_url(&self, job_id: &str) -> String {
        format!("http://{}/api/v1/logs/{job_id}", self.address)
    }

    /// Queues a job for the next agent that waits for one.
    pub fn assign(&self, mut job: JobRequest, log_token: &str) {
        job.logger = protocol::Logger {
            method: "push".into(),
            url: self.log_url(&job.job_id),
            token: log_token.into(),
            max_size_in_bytes: 0,
        };
        let mut state = self.state();
        state.queue.push_back(job.job_id.clone());
        state.jobs.insert(job.job_id.clone(), job);
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, condition: impl Fn(&HubState) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if condition(&self.state()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; syncs: {:?}",
            self.state().syncs.iter().rev().take(5).collect::<Vec<_>>()
        );
    }

    /// The job's log as upstream's simplified strings.
    pub fn simplified_log(&self, job_id: &str) -> Vec<String> {
        self.state()
            .logs
            .get(job_id)
            .map(|lines| {
                lines
                    .iter()
                    .map(|line| {
                        serde_json::from_str::<protocol::LogEvent>(line)
                            .expect("valid event")
                            .simplified()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn states_reported(&self) -> Vec<String> {
        let mut states: Vec<String> = Vec::new();
        for sync in &self.state().syncs {
            let state = sync.state.as_str().to_string();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
        states
    }
}

fn handle(request: Request, shared: &Mutex<HubState>) -> Reply {
    let url = request.url.clone();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let user_agent = header(&request, "User-Agent");
    let authorization = header(&request, "Authorization");
    let mut state = shared.lock().unwrap();
    state
        .headers
        .push((path.clone(), authorization.clone(), user_agent.clone()));
    if !user_agent.starts_with("SemaphoreAgent/v") {
        return respond(500, "missing User-Agent");
    }
    const API: &str = "/api/v1/self_hosted_agents";
    if path == format!("{API}/register") {
        state.register_attempts += 1;
        if state.register_attempts <= state.register_rejections {
            return respond(500, "rejected");
        }
        let register: RegisterRequest =
            serde_json::from_slice(&request.body).expect("register body");
        let name = register.name.clone();
        state.registered = Some(register);
        state.last_state_change = Some(Instant::now());
        return respond(
            201,
            &format!(r#"{{"name":"{name}","token":"access-token"}}"#),
        );
    }
    if path == format!("{API}/sync") {
        let sync: SyncRequest = serde_json::from_slice(&request.body).expect("sync body");
        let response = decide(&mut state, &sync);
        state.syncs.push(sync);
        return respond(200, &serde_json::to_string(&response).unwrap());
    }
    if let Some(job_id) = path.strip_prefix(&format!("{API}/jobs/")) {
        state.get_job_attempts += 1;
        state.job_fetches.push(job_id.to_string());
        let delay = state.get_job_delay;
        if state.get_job_attempts <= state.get_job_rejections {
            return respond(500, "rejected");
        }
        if let Some(body) = state.raw_job_bodies.get(job_id).cloned() {
            return respond(200, &body);
        }
        let job = state.jobs.get(job_id).cloned();
        drop(state);
        std::thread::sleep(delay);
        return match job {
            Some(job) => respond(200, &serde_json::to_string(&job).unwrap()),
            None => respond(404, "no such job"),
        };
    }
    if path == format!("{API}/refresh") {
        state.token_refreshed = true;
        return respond(200, r#"{"token":"new-token"}"#);
    }
    if path == format!("{API}/disconnect") {
        state.disconnected = true;
        return respond(200, "");
    }
    if let Some(job_id) = path.strip_prefix("/api/v1/logs/") {
        let token = authorization.strip_prefix("Bearer ").unwrap_or("");
        if token.is_empty() || token == "expired-token" {
            return respond(401, "expired");
        }
        let start_from: u64 = query
            .strip_prefix("start_from=")
            .and_then(|n| n.parse().ok())
            .expect("start_from");
        if !state.first_command_pushed.contains_key(job_id)
            && find_bytes(&request.body, b"\"event\":\"cmd_started\"")
        {
            state
                .first_command_pushed
                .insert(job_id.to_string(), Instant::now());
        }
        if state.count_logs_only {
            state.log_bytes_received += request.body.len() as u64;
            state.log_lines_received += request.body.iter().filter(|&&b| b == b'\n').count() as u64;
            return respond(200, "");
        }
        let lines: Vec<String> = String::from_utf8(request.body)
            .expect("utf-8 body")
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let max = state.log_max_events;
        let stored = state.logs.entry(job_id.to_string()).or_default();
        if max.is_some_and(|max| stored.len() >= max) {
            return respond(422, "no more space");
        }
        if start_from as usize > stored.len() {
            let message = format!(
                "gap in log: start_from {start_from} but {} stored",
                stored.len()
            );
            state.unexpected.push(message.clone());
            return respond(400, &message);
        }
        stored.truncate(start_from as usize);
        let count = lines.len();
        stored.extend(lines);
        state
            .log_batches
            .push((job_id.to_string(), start_from, count));
        return respond(200, "");
    }
    state.unexpected.push(format!("{} {path}", request.method));
    respond(404, "unknown path")
}

/// The Go mock hub's sync rules (docs/protocol.md §9.1).
fn decide(state: &mut HubState, sync: &SyncRequest) -> SyncResponse {
    let now = Instant::now();
    let reported = sync.state.as_str().to_string();
    if reported != state.last_state {
        state.last_state = reported.clone();
        state.last_state_change = Some(now);
    }
    let registered = state.registered.clone().unwrap_or_default();
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let shutdown = |reason: &str| SyncResponse {
        action: protocol::SyncAction::Shutdown,
        shutdown_reason: protocol::ShutdownReason::from_api(reason),
        ..SyncResponse::default()
    };
    let action = |action: protocol::SyncAction, job_id: &str| SyncResponse {
        action,
        job_id: job_id.to_string(),
        ..SyncResponse::default()
    };
    let mut response = match reported.as_str() {
        "waiting-for-jobs" => {
            let idle_for = state
                .last_state_change
                .map(|at| now.duration_since(at))
                .unwrap_or_default();
            if sync.interrupted_at > 0 {
                shutdown("interrupted")
            } else if state.shutdown_scheduled {
                shutdown("requested")
            } else if registered.idle_timeout > 0
                && idle_for > Duration::from_secs(registered.idle_timeout as u64)
            {
                shutdown("idle")
            } else if let Some(job_id) = state.queue.pop_front() {
                state.run_job_sent.insert(job_id.clone(), Instant::now());
                action(protocol::SyncAction::RunJob, &job_id)
            } else {
                action(protocol::SyncAction::Continue, "")
            }
        }
        "running-job" => {
            let grace_over = sync.interrupted_at > 0
                && unix_now > sync.interrupted_at + registered.interruption_grace_period;
            if grace_over || state.shutdown_scheduled || state.stop_requested {
                action(protocol::SyncAction::StopJob, &sync.job_id)
            } else {
                action(protocol::SyncAction::Continue, "")
            }
        }
        "starting-job" if state.stop_while_starting && state.stop_requested => {
            action(protocol::SyncAction::StopJob, &sync.job_id)
        }
        "finished-job" => {
            let result = sync
                .job_result
                .map(|r| r.as_str().to_string())
                .unwrap_or_default();
            if !state.finished.iter().any(|(id, _)| id == &sync.job_id) {
                state.finished.push((sync.job_id.clone(), result));
            }
            state.stop_requested = false;
            if state.shutdown_scheduled {
                shutdown("requested")
            } else if sync.interrupted_at > 0 {
                shutdown("interrupted")
            } else if registered.single_job && !state.ignore_single_job {
                shutdown("job-finished")
            } else {
                action(protocol::SyncAction::WaitForJobs, "")
            }
        }
        _ => action(protocol::SyncAction::Continue, ""),
    };
    response.next_sync_after = state.next_sync_after;
    response
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
