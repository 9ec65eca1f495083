//! The hub's core: the agent protocol (register, sync, jobs, refresh, disconnect), log intake,
//! queue metrics, and the user operations (agent types, jobs, stops), over an in-memory view of
//! the live state that is written through to the [`Store`] — every job change is committed before
//! the call that makes it returns. Calls take `now` (Unix seconds) so time-based rules are tested
//! without sleeping.

use crate::rules::{self, AgentFacts, AssignedJob, JobChange, JobEvent, JobState, Reply};
use crate::store::{AgentRow, Durability, JobRow, Store, StoreError};
use crate::tokens;
use protocol::{
    AgentCounts, AgentState, JobCounts, JobRequest, JobResult, JobSpec, Logger, QueueMetrics,
    RegisterRequest, RegisterResponse, ShutdownReason, SyncAction, SyncRequest, SyncResponse,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL agents reach the hub at (log pushes go to `<public_url>/api/v1/logs/<job>`).
    pub public_url: String,
    /// SHA-256 of the admin token (user API).
    pub admin_token_hash: String,
    /// An agent that has not synced for this long is lost.
    pub lost_after_secs: i64,
    /// Log pushes beyond this many bytes per job get 422.
    pub max_log_bytes: i64,
    /// Log tokens expire after this long (the agent then refreshes).
    pub log_token_ttl_secs: i64,
    /// `next_sync_after` hint (ms).
    pub sync_interval_ms: i64,
    pub durability: Durability,
}

impl HubConfig {
    pub fn new(public_url: &str, admin_token: &str) -> HubConfig {
        HubConfig {
            public_url: public_url.trim_end_matches('/').to_string(),
            admin_token_hash: tokens::hash(admin_token),
            lost_after_secs: 60,
            max_log_bytes: 64 * 1024 * 1024,
            log_token_ttl_secs: 3600,
            sync_interval_ms: 1000,
            durability: Durability::Normal,
        }
    }
}

#[derive(Debug, Error)]
pub enum HubError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the job's log is full")]
    LogFull,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type HubResult<T> = Result<T, HubError>;

/// A job as the user API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub agent_type: String,
    pub state: String,
    pub result: Option<String>,
    pub reason: Option<String>,
    pub attempts: i64,
    pub agent: Option<String>,
    pub queued_at: i64,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub log_lines: i64,
    pub log_trimmed: bool,
}

/// An agent as the user API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AgentView {
    pub name: String,
    pub agent_type: String,
    pub state: String,
    pub job_id: Option<String>,
    pub jobs_finished: i64,
    pub registered_at: i64,
    pub last_sync_at: i64,
    pub interrupted_at: i64,
    pub hostname: String,
    pub version: String,
    pub pid: i64,
    /// GPUs the agent reported (Flotilla extension).
    #[serde(default)]
    pub gpus: Vec<protocol::GpuInfo>,
}

/// New log lines and whether more can come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LogPage {
    pub lines: Vec<String>,
    pub next_start_from: i64,
    pub job_finished: bool,
}

struct AgentMem {
    row: AgentRow,
    registration: RegisterRequest,
    idle_since: i64,
    shutdown_requested: bool,
    /// last_sync/state changed since the last flush.
    touched: bool,
}

struct JobMem {
    row: JobRow,
    spec: JobSpec,
}

/// Counters for the Prometheus endpoint.
#[derive(Default, Clone)]
pub struct HubCounters {
    pub finished: BTreeMap<(String, String), u64>,
    pub time_to_start: Histogram,
    pub duration: Histogram,
    pub requeued: u64,
    pub lost_agents: u64,
}

#[derive(Clone)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        let bounds = vec![
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ];
        Histogram {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

#[derive(Default)]
struct Core {
    types: BTreeMap<String, i64>,
    type_by_token: HashMap<String, String>,
    agents: HashMap<String, AgentMem>,
    agent_by_token: HashMap<String, String>,
    jobs: HashMap<String, JobMem>,
    queues: HashMap<String, BTreeMap<i64, String>>,
    version: u64,
    counters: HubCounters,
}

struct Inner {
    store: Store,
    core: Core,
}

pub struct Hub {
    config: HubConfig,
    /// Where the database lives (None: in memory).
    data_dir: Option<std::path::PathBuf>,
    inner: Mutex<Inner>,
    /// Bumped whenever queue or agent counts change (metrics long-poll).
    version: tokio::sync::watch::Sender<u64>,
    /// Signalled when log lines arrive or a job finishes (log follow).
    logs_changed: tokio::sync::Notify,
}

fn job_view(row: &JobRow) -> JobView {
    let name = serde_json::from_str::<JobSpec>(&row.spec)
        .map(|spec| spec.display_name())
        .unwrap_or_default();
    JobView {
        id: row.id.clone(),
        name,
        agent_type: row.agent_type.clone(),
        state: row.state.clone(),
        result: row.result.clone(),
        reason: row.reason.clone(),
        attempts: row.attempts,
        agent: row.agent.clone(),
        queued_at: row.queued_at,
        assigned_at: row.assigned_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
        log_lines: row.log_lines,
        log_trimmed: row.log_trimmed,
    }
}

fn agent_view(row: &AgentRow) -> AgentView {
    let registration: RegisterRequest = serde_json::from_str(&row.registration).unwrap_or_default();
    AgentView {
        name: row.name.clone(),
        agent_type: row.agent_type.clone(),
        state: row.state.clone(),
        job_id: row.job_id.clone(),
        jobs_finished: row.jobs_finished,
        registered_at: row.registered_at,
        last_sync_at: row.last_sync_at,
        interrupted_at: row.interrupted_at,
        hostname: registration.hostname,
        version: registration.version,
        pid: registration.pid,
        gpus: registration.flotilla_gpus,
    }
}

fn job_state(row: &JobRow) -> JobState {
    JobState::parse(&row.state).unwrap_or(JobState::Finished)
}

impl Hub {
    /// Opens the hub's store in `data_dir` and rebuilds the live state from it. Agents known to be
    /// connected get a fresh `lost_after` grace period to resume syncing.
    pub fn open(data_dir: &Path, config: HubConfig, now: i64) -> HubResult<Hub> {
        let store = Store::open(data_dir, config.durability)?;
        let mut hub = Hub::with_store(store, config, now)?;
        hub.data_dir = Some(data_dir.to_path_buf());
        Ok(hub)
    }

    pub fn in_memory(config: HubConfig, now: i64) -> HubResult<Hub> {
        Hub::with_store(Store::open_in_memory()?, config, now)
    }

    fn with_store(store: Store, config: HubConfig, now: i64) -> HubResult<Hub> {
        let mut core = Core::default();
        for (name, token_hash, created_at) in store.agent_types()? {
            core.type_by_token.insert(token_hash, name.clone());
            core.types.insert(name, created_at);
        }
        for mut row in store.agents(false)? {
            row.last_sync_at = row.last_sync_at.max(now);
            let registration = serde_json::from_str(&row.registration).unwrap_or_default();
            core.agent_by_token
                .insert(row.token_hash.clone(), row.name.clone());
            let idle_since = row.last_sync_at;
            core.agents.insert(
                row.name.clone(),
                AgentMem {
                    row,
                    registration,
                    idle_since,
                    shutdown_requested: false,
                    touched: false,
                },
            );
        }
        for row in store.unfinished_jobs()? {
            let spec: JobSpec = serde_json::from_str(&row.spec)
                .map_err(|error| StoreError::Corrupt(format!("job {}: spec: {error}", row.id)))?;
            if job_state(&row) == JobState::Queued {
                core.queues
                    .entry(row.agent_type.clone())
                    .or_default()
                    .insert(row.seq, row.id.clone());
            }
            core.jobs.insert(row.id.clone(), JobMem { row, spec });
        }
        let (version, _) = tokio::sync::watch::channel(0);
        Ok(Hub {
            config,
            data_dir: None,
            inner: Mutex::new(Inner { store, core }),
            version,
            logs_changed: tokio::sync::Notify::new(),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self, core: &mut Core) {
        core.version += 1;
        self.version.send_replace(core.version);
    }

    pub fn subscribe_version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn logs_changed(&self) -> &tokio::sync::Notify {
        &self.logs_changed
    }

    pub fn is_admin(&self, token: &str) -> bool {
        tokens::constant_time_eq(&tokens::hash(token), &self.config.admin_token_hash)
    }

    // ------------------------------------------------------------------ agent protocol

    pub fn register(
        &self,
        registration_token: &str,
        request: RegisterRequest,
        now: i64,
    ) -> HubResult<RegisterResponse> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let agent_type = core
            .type_by_token
            .get(&tokens::hash(registration_token))
            .cloned()
            .ok_or(HubError::Unauthorized)?;
        let name = if request.name.is_empty() {
            format!("agent-{}", &tokens::new_token()[..16])
        } else {
            request.name.clone()
        };
        if name.contains("://") {
            return Err(HubError::BadRequest(
                "agent names that are URLs are not supported by this hub".into(),
            ));
        }
        if name.len() > 255 {
            return Err(HubError::BadRequest(
                "agent name is longer than 255 bytes".into(),
            ));
        }
        // A re-registration under a live name replaces the old agent; its job is lost.
        let mut changed_jobs = Vec::new();
        if let Some(old) = core.agents.get(&name) {
            if let Some(job_id) = old.row.job_id.clone() {
                if let Some(job) = Self::lose_job(core, &job_id, now, "its agent registered again")?
                {
                    changed_jobs.push(job);
                }
            }
        }
        let token = tokens::new_token();
        let token_hash = tokens::hash(&token);
        let registration = RegisterRequest {
            name: name.clone(),
            ..request
        };
        let row = AgentRow {
            name: name.clone(),
            agent_type,
            token_hash: token_hash.clone(),
            state: AgentState::WaitingForJobs.as_str().to_string(),
            job_id: None,
            jobs_finished: 0,
            registered_at: now,
            last_sync_at: now,
            interrupted_at: 0,
            disconnected_at: None,
            registration: serde_json::to_string(&registration).unwrap_or_default(),
        };
        let job_refs: Vec<&JobRow> = changed_jobs.iter().collect();
        store.commit(&job_refs, &[&row])?;
        Self::apply_jobs(core, changed_jobs);
        if let Some(old) = core.agents.remove(&name) {
            core.agent_by_token.remove(&old.row.token_hash);
        }
        core.agent_by_token.insert(token_hash, name.clone());
        core.agents.insert(
            name.clone(),
            AgentMem {
                row,
                registration,
                idle_since: now,
                shutdown_requested: false,
                touched: false,
            },
        );
        self.bump(core);
        Ok(RegisterResponse { name, token })
    }

    fn agent_name(core: &Core, access_token: &str) -> HubResult<String> {
        core.agent_by_token
            .get(&tokens::hash(access_token))
            .cloned()
            .ok_or(HubError::Unauthorized)
    }

    pub fn sync(
        &self,
        access_token: &str,
        request: &SyncRequest,
        now: i64,
    ) -> HubResult<SyncResponse> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let name = Self::agent_name(core, access_token)?;
        let (facts, agent_type, requested_job) = {
            let agent = &core.agents[&name];
            let job = agent
                .row
                .job_id
                .as_ref()
                .and_then(|id| core.jobs.get(id))
                .map(|job| AssignedJob {
                    id: job.row.id.clone(),
                    state: job_state(&job.row),
                    stop_requested: job.row.stop_requested,
                });
            let facts = AgentFacts {
                single_job: agent.registration.single_job,
                idle_timeout: agent.registration.idle_timeout,
                interruption_grace_period: agent.registration.interruption_grace_period,
                interrupted_at: agent.row.interrupted_at,
                idle_since: agent.idle_since,
                jobs_finished: agent.row.jobs_finished,
                shutdown_requested: agent.shutdown_requested,
                job,
            };
            (
                facts,
                agent.row.agent_type.clone(),
                agent.registration.job_id.clone(),
            )
        };
        let next_job = Self::next_job_for(core, &agent_type, &requested_job);
        let (reply, change) = rules::decide_sync(&facts, request, now, next_job.is_some());
        let mut counts_changed = false;

        // The job change the report reveals, committed first.
        if let Some(change) = change {
            counts_changed = true;
            match change {
                JobChange::Started(job_id) => Self::mark_started(store, core, &job_id, now)?,
                JobChange::Finished { job_id, result } => {
                    let agent_interrupted = facts.interrupted_at > 0 || request.interrupted_at > 0;
                    let job = Self::finish_job(core, &job_id, result, agent_interrupted, now)?;
                    let mut agent = core.agents[&name].row.clone();
                    agent.job_id = None;
                    agent.jobs_finished += 1;
                    store.commit(&[&job], &[&agent])?;
                    Self::apply_jobs(core, vec![job]);
                    let memory = core.agents.get_mut(&name).expect("agent exists");
                    memory.row.job_id = None;
                    memory.row.jobs_finished += 1;
                    memory.idle_since = now;
                    self.logs_changed.notify_waiters();
                }
                JobChange::Lost(job_id) => {
                    let job =
                        Self::lose_job(core, &job_id, now, "its agent reported it had no job")?;
                    let mut agent = core.agents[&name].row.clone();
                    agent.job_id = None;
                    let jobs: Vec<&JobRow> = job.iter().collect();
                    store.commit(&jobs, &[&agent])?;
                    Self::apply_jobs(core, job.into_iter().collect());
                    let memory = core.agents.get_mut(&name).expect("agent exists");
                    memory.row.job_id = None;
                    memory.idle_since = now;
                    self.logs_changed.notify_waiters();
                }
            }
        }

        let (action, job_id, shutdown_reason) = match reply {
            Reply::Continue => (SyncAction::Continue, String::new(), ShutdownReason::Unknown),
            Reply::WaitForJobs => (
                SyncAction::WaitForJobs,
                String::new(),
                ShutdownReason::Unknown,
            ),
            Reply::RunJob(job_id) => (SyncAction::RunJob, job_id, ShutdownReason::Unknown),
            Reply::StopJob(job_id) => (SyncAction::StopJob, job_id, ShutdownReason::Unknown),
            Reply::Shutdown(reason) => (SyncAction::Shutdown, String::new(), reason),
            Reply::AssignNext => {
                let job_id = next_job.expect("work was available");
                let mut job = core.jobs[&job_id].row.clone();
                job.state = JobState::Assigned.as_str().to_string();
                job.agent = Some(name.clone());
                job.assigned_at = Some(now);
                job.attempts += 1;
                let mut agent = core.agents[&name].row.clone();
                agent.job_id = Some(job_id.clone());
                store.commit(&[&job], &[&agent])?;
                if let Some(queue) = core.queues.get_mut(&agent_type) {
                    queue.remove(&job.seq);
                }
                Self::apply_jobs(core, vec![job]);
                core.agents.get_mut(&name).expect("agent exists").row.job_id = Some(job_id.clone());
                counts_changed = true;
                (SyncAction::RunJob, job_id, ShutdownReason::Unknown)
            }
        };

        let agent = core.agents.get_mut(&name).expect("agent exists");
        agent.row.state = request.state.as_str().to_string();
        agent.row.last_sync_at = now;
        if agent.row.interrupted_at == 0 && request.interrupted_at > 0 {
            agent.row.interrupted_at = request.interrupted_at;
        }
        agent.touched = true;
        if counts_changed {
            self.bump(core);
        }
        Ok(SyncResponse {
            action,
            job_id,
            shutdown_reason,
            next_sync_after: self.config.sync_interval_ms,
        })
    }

    /// An assigned job has started running (its agent said so, or its log began).
    fn mark_started(store: &mut Store, core: &mut Core, job_id: &str, now: i64) -> HubResult<()> {
        let mut job = core.jobs[job_id].row.clone();
        job.state = JobState::Running.as_str().to_string();
        job.started_at = Some(now);
        store.commit(&[&job], &[])?;
        core.counters
            .time_to_start
            .observe((now - job.queued_at).max(0) as f64);
        Self::apply_jobs(core, vec![job]);
        Ok(())
    }

    /// The next queued job an agent of `agent_type` may take (only its requested job, if it
    /// registered with `job_id`).
    fn next_job_for(core: &Core, agent_type: &str, requested_job: &str) -> Option<String> {
        if !requested_job.is_empty() {
            return core
                .jobs
                .get(requested_job)
                .filter(|job| {
                    job.row.agent_type == agent_type && job_state(&job.row) == JobState::Queued
                })
                .map(|job| job.row.id.clone());
        }
        core.queues
            .get(agent_type)
            .and_then(|queue| queue.values().next().cloned())
    }

    /// The job row after it finished with `result` (or went back to the queue).
    fn finish_job(
        core: &mut Core,
        job_id: &str,
        result: JobResult,
        agent_interrupted: bool,
        now: i64,
    ) -> HubResult<JobRow> {
        let memory = core
            .jobs
            .get(job_id)
            .ok_or_else(|| HubError::NotFound(format!("job {job_id} is not active")))?;
        let mut job = memory.row.clone();
        let requeues_done = (job.attempts - 1).max(0) as u32;
        if rules::requeue_after_finish(
            result,
            job.stop_requested,
            agent_interrupted,
            requeues_done,
            memory.spec.retry.agent_lost,
        ) {
            Self::requeue(&mut job, "its agent was interrupted");
            core.counters.requeued += 1;
            return Ok(job);
        }
        Self::close_job(core, &mut job, result, None, now);
        if let Some(started) = job.started_at {
            core.counters
                .duration
                .observe((now - started).max(0) as f64);
        }
        Ok(job)
    }

    fn requeue(job: &mut JobRow, why: &str) {
        job.state = JobState::Queued.as_str().to_string();
        job.agent = None;
        job.assigned_at = None;
        job.started_at = None;
        job.log_token_hash = None;
        job.log_token_expires_at = None;
        job.reason = Some(format!("re-queued: {why}"));
    }

    /// A job whose agent is gone: re-queued if its retry policy allows, else failed.
    fn lose_job(core: &mut Core, job_id: &str, now: i64, why: &str) -> HubResult<Option<JobRow>> {
        let Some(memory) = core.jobs.get(job_id) else {
            return Ok(None);
        };
        let mut job = memory.row.clone();
        if !job_state(&job).is_active() {
            return Ok(None);
        }
        let requeues_done = (job.attempts - 1).max(0) as u32;
        if !job.stop_requested && requeues_done < memory.spec.retry.agent_lost {
            Self::requeue(&mut job, why);
            core.counters.requeued += 1;
        } else {
            let result = if job.stop_requested {
                JobResult::Stopped
            } else {
                JobResult::Failed
            };
            Self::close_job(
                core,
                &mut job,
                result,
                Some(format!("{result} because {why}")),
                now,
            );
        }
        Ok(Some(job))
    }

    /// A job reaches its final state with `result` (counted for `/metrics`).
    fn close_job(
        core: &mut Core,
        job: &mut JobRow,
        result: JobResult,
        reason: Option<String>,
        now: i64,
    ) {
        let state =
            rules::next_job_state(job_state(job), JobEvent::Finish).unwrap_or(JobState::Finished);
        job.state = state.as_str().to_string();
        job.result = Some(result.as_str().to_string());
        if reason.is_some() {
            job.reason = reason;
        }
        job.finished_at = Some(now);
        job.log_token_hash = None;
        *core
            .counters
            .finished
            .entry((job.agent_type.clone(), result.as_str().to_string()))
            .or_default() += 1;
    }

    /// Puts committed job rows into memory: queues and the active set follow the state.
    fn apply_jobs(core: &mut Core, jobs: Vec<JobRow>) {
        for job in jobs {
            let state = job_state(&job);
            if state == JobState::Queued {
                core.queues
                    .entry(job.agent_type.clone())
                    .or_default()
                    .insert(job.seq, job.id.clone());
            } else if let Some(queue) = core.queues.get_mut(&job.agent_type) {
                queue.remove(&job.seq);
            }
            if state == JobState::Finished {
                core.jobs.remove(&job.id);
            } else if let Some(memory) = core.jobs.get_mut(&job.id) {
                memory.row = job;
            }
        }
    }

    /// The job an agent was assigned, with a fresh log token (only the token's hash is kept).
    pub fn job_request(&self, access_token: &str, job_id: &str, now: i64) -> HubResult<JobRequest> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let name = Self::agent_name(core, access_token)?;
        let memory = core
            .jobs
            .get(job_id)
            .filter(|job| {
                job.row.agent.as_deref() == Some(name.as_str()) && job_state(&job.row).is_active()
            })
            .ok_or_else(|| {
                HubError::NotFound(format!("job {job_id} is not assigned to this agent"))
            })?;
        let token = tokens::new_token();
        let mut job = memory.row.clone();
        job.log_token_hash = Some(tokens::hash(&token));
        job.log_token_expires_at = Some(now + self.config.log_token_ttl_secs);
        store.commit(&[&job], &[])?;
        let logger = Logger {
            method: "push".into(),
            url: format!("{}/api/v1/logs/{job_id}", self.config.public_url),
            token,
            max_size_in_bytes: self.config.max_log_bytes,
        };
        let request = memory.spec.to_job_request(job_id, logger);
        Self::apply_jobs(core, vec![job]);
        Ok(request)
    }

    /// A new log token for the agent's current job.
    pub fn refresh_log_token(&self, access_token: &str, now: i64) -> HubResult<String> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let name = Self::agent_name(core, access_token)?;
        let job_id = core.agents[&name]
            .row
            .job_id
            .clone()
            .ok_or_else(|| HubError::NotFound("the agent has no job".into()))?;
        let token = tokens::new_token();
        let mut job = core
            .jobs
            .get(&job_id)
            .map(|job| job.row.clone())
            .ok_or_else(|| HubError::NotFound("the agent's job is not active".into()))?;
        job.log_token_hash = Some(tokens::hash(&token));
        job.log_token_expires_at = Some(now + self.config.log_token_ttl_secs);
        store.commit(&[&job], &[])?;
        Self::apply_jobs(core, vec![job]);
        Ok(token)
    }

    pub fn disconnect(&self, access_token: &str, now: i64) -> HubResult<()> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let name = Self::agent_name(core, access_token)?;
        self.remove_agent(
            store,
            core,
            &name,
            "disconnected",
            now,
            "its agent disconnected",
        )
    }

    fn remove_agent(
        &self,
        store: &mut Store,
        core: &mut Core,
        name: &str,
        state: &str,
        now: i64,
        why: &str,
    ) -> HubResult<()> {
        let mut agent = core.agents[name].row.clone();
        let job = match agent.job_id.clone() {
            Some(job_id) => Self::lose_job(core, &job_id, now, why)?,
            None => None,
        };
        agent.state = state.to_string();
        agent.job_id = None;
        agent.disconnected_at = Some(now);
        let jobs: Vec<&JobRow> = job.iter().collect();
        store.commit(&jobs, &[&agent])?;
        Self::apply_jobs(core, job.into_iter().collect());
        if let Some(memory) = core.agents.remove(name) {
            core.agent_by_token.remove(&memory.row.token_hash);
        }
        self.bump(core);
        self.logs_changed.notify_waiters();
        Ok(())
    }

    /// Stores pushed log lines (`start_from` semantics of spec §6.3).
    pub fn push_logs(
        &self,
        job_id: &str,
        bearer: &str,
        start_from: i64,
        body: &str,
        now: i64,
    ) -> HubResult<()> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let Some(memory) = core.jobs.get_mut(job_id) else {
            return Err(HubError::NotFound(format!("job {job_id} is not running")));
        };
        let valid = memory
            .row
            .log_token_hash
            .as_deref()
            .is_some_and(|hash| tokens::constant_time_eq(hash, &tokens::hash(bearer)))
            && memory.row.log_token_expires_at.is_some_and(|at| at > now);
        if !valid {
            return Err(HubError::Unauthorized);
        }
        if memory.row.log_bytes >= self.config.max_log_bytes {
            if !memory.row.log_trimmed {
                memory.row.log_trimmed = true;
                store.commit(&[&memory.row], &[])?;
            }
            return Err(HubError::LogFull);
        }
        if start_from < 0 || start_from > memory.row.log_lines {
            return Err(HubError::Conflict(format!(
                "start_from {start_from} leaves a gap: the log has {} lines",
                memory.row.log_lines
            )));
        }
        let lines: Vec<&str> = body.split('\n').filter(|line| !line.is_empty()).collect();
        if let Some(bad) = lines
            .iter()
            .position(|line| serde_json::from_str::<serde::de::IgnoredAny>(line).is_err())
        {
            return Err(HubError::BadRequest(format!(
                "line {} of the batch is not JSON",
                bad + 1
            )));
        }
        let (count, bytes) = store.append_log(job_id, start_from, &lines)?;
        memory.row.log_lines = count;
        memory.row.log_bytes = bytes;
        // The first log push is the job starting, even if no sync reported it yet.
        if job_state(&memory.row) == JobState::Assigned {
            Self::mark_started(store, core, job_id, now)?;
            self.bump(core);
        }
        drop(guard);
        self.logs_changed.notify_waiters();
        Ok(())
    }

    /// Queue metrics for the agent type owning `registration_token`.
    pub fn metrics(&self, registration_token: &str, now: i64) -> HubResult<QueueMetrics> {
        let guard = self.lock();
        let core = &guard.core;
        let agent_type = Self::type_of_token(core, registration_token)?;
        Ok(Self::metrics_of(core, agent_type, now))
    }

    /// The agent type a registration token belongs to.
    fn type_of_token<'a>(core: &'a Core, registration_token: &str) -> HubResult<&'a String> {
        core.type_by_token
            .get(&tokens::hash(registration_token))
            .ok_or(HubError::Unauthorized)
    }

    /// The agents registered under the agent type whose registration token asks (reaper input).
    pub fn agents_of_type(
        &self,
        registration_token: &str,
    ) -> HubResult<protocol::metrics::AgentList> {
        let guard = self.lock();
        let core = &guard.core;
        let agent_type = Self::type_of_token(core, registration_token)?;
        let mut agents: Vec<protocol::metrics::AgentSummary> = core
            .agents
            .values()
            .filter(|agent| &agent.row.agent_type == agent_type)
            .map(|agent| protocol::metrics::AgentSummary {
                name: agent.row.name.clone(),
                busy: agent.row.job_id.is_some(),
            })
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(protocol::metrics::AgentList { agents })
    }

    fn metrics_of(core: &Core, agent_type: &str, now: i64) -> QueueMetrics {
        let queue = core.queues.get(agent_type);
        let queued = queue.map(|q| q.len() as u64).unwrap_or(0);
        let oldest = queue
            .and_then(|q| q.values().next())
            .and_then(|id| core.jobs.get(id))
            .map(|job| (now - job.row.queued_at).max(0) as u64);
        let running = core
            .jobs
            .values()
            .filter(|job| job.row.agent_type == agent_type && job_state(&job.row).is_active())
            .count() as u64;
        let (mut idle, mut occupied) = (0, 0);
        for agent in core
            .agents
            .values()
            .filter(|agent| agent.row.agent_type == agent_type)
        {
            if agent.row.job_id.is_some() {
                occupied += 1;
            } else {
                idle += 1;
            }
        }
        QueueMetrics {
            jobs: JobCounts { queued, running },
            agents: AgentCounts { idle, occupied },
            version: Some(core.version),
            oldest_queued_seconds: oldest,
        }
    }

    /// Per agent type metrics for the Prometheus endpoint, plus the counters.
    pub fn all_metrics(&self, now: i64) -> (Vec<(String, QueueMetrics)>, HubCounters) {
        let guard = self.lock();
        let core = &guard.core;
        let types = core
            .types
            .keys()
            .map(|name| (name.clone(), Self::metrics_of(core, name, now)))
            .collect();
        (types, core.counters.clone())
    }

    // ------------------------------------------------------------------ user operations

    /// Creates an agent type; returns its registration token (shown once, stored hashed).
    pub fn create_agent_type(&self, name: &str, now: i64) -> HubResult<String> {
        if !protocol::spec::valid_agent_type(name) {
            return Err(HubError::BadRequest(format!(
                "agent type names are 1-64 characters of letters, digits, '-', '_' or '.'; got '{name}'"
            )));
        }
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        if core.types.contains_key(name) {
            return Err(HubError::Conflict(format!(
                "agent type '{name}' already exists"
            )));
        }
        let token = tokens::new_token();
        let token_hash = tokens::hash(&token);
        store.insert_agent_type(name, &token_hash, now)?;
        core.types.insert(name.to_string(), now);
        core.type_by_token.insert(token_hash, name.to_string());
        Ok(token)
    }

    pub fn agent_types(&self) -> Vec<(String, i64)> {
        self.lock()
            .core
            .types
            .iter()
            .map(|(name, created)| (name.clone(), *created))
            .collect()
    }

    pub fn submit(&self, spec: JobSpec, now: i64) -> HubResult<JobView> {
        spec.validate()
            .map_err(|error| HubError::BadRequest(error.to_string()))?;
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        if !core.types.contains_key(&spec.agent_type) {
            return Err(HubError::BadRequest(format!(
                "no agent type '{}': create it first (scaler agent-types create {})",
                spec.agent_type, spec.agent_type
            )));
        }
        let mut row = JobRow {
            seq: 0,
            id: tokens::new_job_id(),
            agent_type: spec.agent_type.clone(),
            spec: serde_json::to_string(&spec).map_err(|e| HubError::BadRequest(e.to_string()))?,
            state: JobState::Queued.as_str().to_string(),
            result: None,
            reason: None,
            attempts: 0,
            agent: None,
            stop_requested: false,
            log_token_hash: None,
            log_token_expires_at: None,
            log_lines: 0,
            log_bytes: 0,
            log_trimmed: false,
            queued_at: now,
            assigned_at: None,
            started_at: None,
            finished_at: None,
        };
        row.seq = store.insert_job(&row)?;
        core.queues
            .entry(row.agent_type.clone())
            .or_default()
            .insert(row.seq, row.id.clone());
        let view = job_view(&row);
        core.jobs.insert(row.id.clone(), JobMem { row, spec });
        self.bump(core);
        Ok(view)
    }

    pub fn job(&self, job_id: &str) -> HubResult<JobView> {
        let guard = self.lock();
        if let Some(job) = guard.core.jobs.get(job_id) {
            return Ok(job_view(&job.row));
        }
        guard
            .store
            .job(job_id)?
            .map(|row| job_view(&row))
            .ok_or_else(|| HubError::NotFound(format!("no job {job_id}")))
    }

    pub fn list_jobs(&self, state: Option<&str>, limit: u32) -> HubResult<Vec<JobView>> {
        if let Some(state) = state {
            if JobState::parse(state).is_none() {
                return Err(HubError::BadRequest(format!(
                    "unknown job state '{state}' (queued, assigned, running, stopping, finished)"
                )));
            }
        }
        Ok(self
            .lock()
            .store
            .list_jobs(state, limit)?
            .iter()
            .map(job_view)
            .collect())
    }

    /// Stops a job: a queued one at once, a running one through its agent (`stop-job`).
    pub fn stop_job(&self, job_id: &str, now: i64) -> HubResult<JobView> {
        let mut guard = self.lock();
        let Inner { store, core } = &mut *guard;
        let Some(memory) = core.jobs.get(job_id) else {
            return match store.job(job_id)? {
                Some(row) => Ok(job_view(&row)),
                None => Err(HubError::NotFound(format!("no job {job_id}"))),
            };
        };
        let mut job = memory.row.clone();
        let next = rules::next_job_state(job_state(&job), JobEvent::RequestStop)
            .unwrap_or(job_state(&job));
        job.stop_requested = true;
        job.state = next.as_str().to_string();
        if next == JobState::Finished {
            job.result = Some(JobResult::Stopped.as_str().to_string());
            job.reason = Some("stopped before it started".into());
            job.finished_at = Some(now);
            *core
                .counters
                .finished
                .entry((job.agent_type.clone(), "stopped".into()))
                .or_default() += 1;
        }
        store.commit(&[&job], &[])?;
        let view = job_view(&job);
        Self::apply_jobs(core, vec![job]);
        self.bump(core);
        self.logs_changed.notify_waiters();
        Ok(view)
    }

    pub fn agents(&self) -> Vec<AgentView> {
        let guard = self.lock();
        let mut agents: Vec<AgentView> = guard
            .core
            .agents
            .values()
            .map(|agent| agent_view(&agent.row))
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        agents
    }

    /// Log lines of a job from `start_from`, at most `limit`.
    pub fn logs(&self, job_id: &str, start_from: i64, limit: i64) -> HubResult<LogPage> {
        let guard = self.lock();
        let finished = match guard.core.jobs.get(job_id) {
            Some(_) => false,
            None => {
                guard
                    .store
                    .job(job_id)?
                    .ok_or_else(|| HubError::NotFound(format!("no job {job_id}")))?;
                true
            }
        };
        let lines = guard.store.log_lines(job_id, start_from.max(0), limit)?;
        let next_start_from = start_from.max(0) + lines.len() as i64;
        Ok(LogPage {
            lines,
            next_start_from,
            job_finished: finished,
        })
    }

    // ------------------------------------------------------------------ housekeeping

    /// Marks agents silent for longer than `lost_after` as lost (their jobs re-queued or failed)
    /// and writes agents' last-sync times. Returns how many agents were lost.
    pub fn maintain(&self, now: i64) -> HubResult<usize> {
        let (lost_count, touched) = {
            let mut guard = self.lock();
            let Inner { store, core } = &mut *guard;
            let lost: Vec<String> = core
                .agents
                .values()
                .filter(|agent| now - agent.row.last_sync_at > self.config.lost_after_secs)
                .map(|agent| agent.row.name.clone())
                .collect();
            for name in &lost {
                tracing::warn!(agent = %name, "agent lost: no sync for {} s", self.config.lost_after_secs);
                self.remove_agent(store, core, name, "lost", now, "its agent was lost")?;
                core.counters.lost_agents += 1;
            }
            let touched: Vec<(String, i64, String, i64)> = core
                .agents
                .values_mut()
                .filter(|agent| agent.touched)
                .map(|agent| {
                    agent.touched = false;
                    (
                        agent.row.name.clone(),
                        agent.row.last_sync_at,
                        agent.row.state.clone(),
                        agent.row.interrupted_at,
                    )
                })
                .collect();
            (lost.len(), touched)
        };
        // Last-sync times are not job state: write them in small batches, releasing the lock in
        // between, so thousands of agents do not stall syncs.
        for batch in touched.chunks(256) {
            self.lock().store.touch_agents(batch)?;
        }
        Ok(lost_count)
    }

    /// Moves committed WAL pages into the database file (off the request path).
    pub fn checkpoint(&self) -> HubResult<()> {
        if let Some(dir) = &self.data_dir {
            Store::checkpoint(dir)?;
        }
        Ok(())
    }

    /// Asks an agent to shut down at its next sync (after its job, if it has one).
    pub fn request_agent_shutdown(&self, name: &str) -> HubResult<()> {
        let mut guard = self.lock();
        let agent = guard
            .core
            .agents
            .get_mut(name)
            .ok_or_else(|| HubError::NotFound(format!("no agent {name}")))?;
        agent.shutdown_requested = true;
        Ok(())
    }
}
