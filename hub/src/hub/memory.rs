//! The hub's in-memory view of the live state — agent types, connected agents, unfinished jobs
//! and the queues — and the one way it changes: [`Changes`], the rows a call rewrites, are
//! committed to the store first (`Hub::commit`) and only then applied here, so memory never runs
//! ahead of the disk. The `/metrics` counters follow the same row transitions. On a shared store
//! other replicas' rows arrive as a [`Feed`] ([`Core::apply_feed`]); a row memory already holds at
//! the same or a newer revision is skipped, so applying twice changes nothing.

use super::metrics::HubCounters;
use super::{HubError, HubResult};
use crate::store::{AgentRow, AgentStatus, AgentTypeRow, Feed, JobRow};
use crate::tokens;
use protocol::{JobSpec, JobState, RegisterRequest, SyncRequest};
use std::collections::{BTreeMap, HashMap};

pub(super) struct AgentMem {
    pub row: AgentRow,
    pub registration: RegisterRequest,
    pub idle_since: i64,
    /// last_sync/state changed since the last flush.
    pub touched: bool,
}

impl AgentMem {
    fn new(row: AgentRow, idle_since: i64) -> AgentMem {
        AgentMem {
            registration: serde_json::from_str(&row.registration).unwrap_or_default(),
            row,
            idle_since,
            touched: false,
        }
    }
}

pub(super) struct JobMem {
    pub row: JobRow,
    pub spec: JobSpec,
}

#[derive(Default)]
pub(super) struct Core {
    pub types: BTreeMap<String, i64>,
    pub type_by_token: HashMap<String, String>,
    pub agents: HashMap<String, AgentMem>,
    pub agent_by_token: HashMap<String, String>,
    pub jobs: HashMap<String, JobMem>,
    pub queues: HashMap<String, BTreeMap<i64, String>>,
    pub version: u64,
    pub counters: HubCounters,
    /// Agent types with their own default job time limit (seconds).
    pub type_time_limits: HashMap<String, i64>,
    /// Sampled queue history (the console's chart).
    pub history: super::history::History,
    /// Agents lost within the give-up time, by token hash, with the job they had: one whose
    /// link heals may come back (`Hub::heal`).
    pub lost: HashMap<String, AgentRow>,
    /// The store's revision memory has caught up to.
    pub revision: i64,
}

/// Rows one call rewrites: committed in one transaction, then applied to memory. An agent row
/// with `disconnected_at` set leaves memory; one with a new token hash is a new registration.
#[derive(Default)]
pub(super) struct Changes {
    pub jobs: Vec<JobRow>,
    pub agents: Vec<AgentRow>,
}

impl Changes {
    pub(super) fn job(job: JobRow) -> Changes {
        Changes {
            jobs: vec![job],
            agents: Vec::new(),
        }
    }

    pub(super) fn agent(agent: AgentRow) -> Changes {
        Changes {
            jobs: Vec::new(),
            agents: vec![agent],
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.agents.is_empty()
    }

    /// The rows as the commit at `revision` stored them.
    pub(super) fn at_revision(mut self, revision: i64) -> Changes {
        for job in &mut self.jobs {
            job.revision = revision;
        }
        for agent in &mut self.agents {
            agent.revision = revision;
        }
        self
    }
}

/// What applying [`Changes`] moved, for the hub's notifications.
#[derive(Default)]
pub(super) struct Applied {
    /// A job changed state or an agent took, dropped, joined or left (the metrics counts).
    pub counts_changed: bool,
    /// A job finished (log followers stop).
    pub job_finished: bool,
}

impl Core {
    /// The connected agent an access token belongs to.
    pub(super) fn agent(&self, access_token: &str) -> HubResult<&AgentMem> {
        self.agent_by_token
            .get(&tokens::hash(access_token))
            .and_then(|name| self.agents.get(name))
            .ok_or(HubError::Unauthorized)
    }

    /// The agent type a registration token belongs to.
    pub(super) fn type_of_token(&self, registration_token: &str) -> HubResult<&String> {
        self.type_by_token
            .get(&tokens::hash(registration_token))
            .ok_or(HubError::Unauthorized)
    }

    /// A live (unfinished) job.
    pub(super) fn job(&self, job_id: &str) -> HubResult<&JobMem> {
        self.jobs
            .get(job_id)
            .ok_or_else(|| HubError::JobNotRunning {
                job_id: job_id.to_string(),
            })
    }

    /// The next queued job `agent` may take (only its requested job, if it registered with
    /// `job_id`). `spread` > 0 after a lost race for the queue's head with another replica:
    /// one of the first `spread` queued jobs, picked at random, so that replicas retrying
    /// together stop colliding on the same job.
    pub(super) fn next_job_for(&self, agent: &AgentMem, spread: usize) -> Option<&str> {
        let agent_type = &agent.row.agent_type;
        let requested = &agent.registration.job_id;
        if !requested.is_empty() {
            return self
                .jobs
                .get(requested)
                .filter(|job| {
                    &job.row.agent_type == agent_type && job.row.state == JobState::Queued
                })
                .map(|job| job.row.id.as_str());
        }
        let queue = self.queues.get(agent_type)?;
        let skip = match spread.min(queue.len()) {
            0 | 1 => 0,
            window => rand::random::<usize>() % window,
        };
        queue.values().nth(skip).map(String::as_str)
    }

    /// Adds a connected agent read from the store (at start).
    pub(super) fn insert_agent(&mut self, row: AgentRow) {
        self.agent_by_token
            .insert(row.token_hash.clone(), row.name.clone());
        let idle_since = row.last_sync_at;
        self.agents
            .insert(row.name.clone(), AgentMem::new(row, idle_since));
    }

    /// Adds an unfinished job (submitted, or read from the store at start), queued if it waits.
    pub(super) fn insert_job(&mut self, job: JobMem) {
        if job.row.state == JobState::Queued {
            self.queues
                .entry(job.row.agent_type.clone())
                .or_default()
                .insert(job.row.seq, job.row.id.clone());
        }
        self.jobs.insert(job.row.id.clone(), job);
    }

    /// Records what a sync reported that is not job state (flushed in batches by `maintain`).
    pub(super) fn touch(&mut self, name: &str, report: &SyncRequest, now: i64) {
        let Some(agent) = self.agents.get_mut(name) else {
            return;
        };
        agent.row.state = AgentStatus::Reported(report.state);
        agent.row.last_sync_at = now;
        if agent.row.interrupted_at == 0 && report.interrupted_at > 0 {
            agent.row.interrupted_at = report.interrupted_at;
        }
        agent.touched = true;
    }

    /// This process committed `revision`: memory is at it if it was at the one before
    /// (otherwise other replicas' commits lie between, and the next catch-up reads them).
    pub(super) fn committed(&mut self, revision: i64) {
        if revision == self.revision + 1 {
            self.revision = revision;
        }
    }

    /// An agent type, as stored.
    pub(super) fn apply_type(&mut self, row: AgentTypeRow) {
        self.type_by_token.insert(row.token_hash, row.name.clone());
        match row.time_limit {
            Some(seconds) => self.type_time_limits.insert(row.name.clone(), seconds),
            None => self.type_time_limits.remove(&row.name),
        };
        self.types.insert(row.name, row.created_at);
    }

    /// Puts committed rows into memory: queues, the live set and the counters follow the rows.
    pub(super) fn apply(&mut self, changes: Changes, now: i64) -> Applied {
        let mut applied = Applied::default();
        for job in changes.jobs {
            self.apply_job(job, true, &mut applied);
        }
        for agent in changes.agents {
            self.apply_agent(agent, now, &mut applied);
        }
        applied
    }

    /// Puts rows other replicas committed into memory (their transitions count in their own
    /// `/metrics`, not here). Lost agents within `give_up_after` are remembered, so that one
    /// whose link heals through this replica may resume.
    pub(super) fn apply_feed(&mut self, feed: Feed, now: i64, give_up_after: i64) -> Applied {
        let mut applied = Applied::default();
        for row in feed.agent_types {
            self.apply_type(row);
        }
        for job in feed.jobs {
            match self.jobs.get(&job.id) {
                Some(memory) if memory.row.revision >= job.revision => {}
                Some(_) => self.apply_job(job, false, &mut applied),
                None if job.state.is_finished() => {}
                None => match serde_json::from_str::<JobSpec>(&job.spec) {
                    Ok(spec) => {
                        applied.counts_changed = true;
                        self.insert_job(JobMem { row: job, spec });
                    }
                    Err(error) => tracing::error!(job = %job.id, "a stored job's spec: {error}"),
                },
            }
        }
        for agent in feed.agents {
            self.apply_agent_feed(agent, now, give_up_after, &mut applied);
        }
        self.revision = self.revision.max(feed.revision);
        applied
    }

    fn apply_agent_feed(
        &mut self,
        mut row: AgentRow,
        now: i64,
        give_up_after: i64,
        applied: &mut Applied,
    ) {
        if let Some(memory) = self.agents.get(&row.name) {
            if memory.row.revision >= row.revision {
                return;
            }
            // Syncs this replica served are newer than the row's flushed time.
            row.last_sync_at = row.last_sync_at.max(memory.row.last_sync_at);
        }
        if row.state == AgentStatus::Lost && now - row.last_sync_at > give_up_after {
            return; // Gone for good: it gave up long ago.
        }
        self.apply_agent(row, now, applied);
    }

    fn apply_job(&mut self, job: JobRow, count: bool, applied: &mut Applied) {
        let Some(memory) = self.jobs.get_mut(&job.id) else {
            return;
        };
        if memory.row.state != job.state {
            applied.counts_changed = true;
            if count {
                self.counters.record(&memory.row, &job);
            }
        }
        let queue = self.queues.entry(job.agent_type.clone()).or_default();
        if job.state == JobState::Queued {
            queue.insert(job.seq, job.id.clone());
        } else {
            queue.remove(&job.seq);
        }
        if job.state.is_finished() {
            applied.job_finished = true;
            self.jobs.remove(&job.id);
        } else {
            memory.row = job;
        }
    }

    fn apply_agent(&mut self, row: AgentRow, now: i64, applied: &mut Applied) {
        // A lost agent is remembered (until it gives up), so that one whose link heals may resume.
        if row.disconnected_at.is_some() && row.state == AgentStatus::Lost {
            self.lost.insert(row.token_hash.clone(), row.clone());
        } else {
            self.lost.remove(&row.token_hash);
        }
        match self.agents.get_mut(&row.name) {
            Some(memory)
                if memory.row.token_hash == row.token_hash && row.disconnected_at.is_none() =>
            {
                if memory.row.job_id != row.job_id {
                    applied.counts_changed = true;
                    if row.job_id.is_none() {
                        memory.idle_since = now;
                    }
                }
                if memory.row.registration != row.registration {
                    memory.registration =
                        serde_json::from_str(&row.registration).unwrap_or_default();
                }
                memory.row = row;
            }
            _ => {
                applied.counts_changed = true;
                if let Some(old) = self.agents.remove(&row.name) {
                    self.agent_by_token.remove(&old.row.token_hash);
                }
                if row.disconnected_at.is_none() {
                    self.agent_by_token
                        .insert(row.token_hash.clone(), row.name.clone());
                    self.agents
                        .insert(row.name.clone(), AgentMem::new(row, now));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Core, Feed, JobMem};
    use crate::store::AgentStatus::{self, Lost};
    use crate::store::{AgentRow, JobRow};
    use protocol::AgentState::WaitingForJobs;
    use protocol::{JobSpec, JobState};

    fn job(id: &str, seq: i64, state: JobState, revision: i64) -> JobRow {
        let spec = JobSpec::from_commands("linux", &["true".to_string()]);
        let spec = serde_json::to_string(&spec).unwrap();
        JobRow {
            seq,
            state,
            revision,
            ..JobRow::queued(id.into(), "linux".into(), spec, 0)
        }
    }

    fn agent(name: &str, state: AgentStatus, disconnected: bool, revision: i64) -> AgentRow {
        AgentRow {
            name: name.into(),
            agent_type: "linux".into(),
            token_hash: format!("hash-{name}"),
            state,
            job_id: None,
            jobs_finished: 0,
            registered_at: 0,
            last_sync_at: 100,
            interrupted_at: 0,
            disconnected_at: disconnected.then_some(100),
            registration: "{}".into(),
            shutdown_requested: false,
            revision,
        }
    }

    fn queued(core: &Core) -> Vec<String> {
        core.queues["linux"].values().cloned().collect()
    }

    #[test]
    fn a_feed_applies_newer_rows_only_and_twice_changes_nothing() {
        let mut core = Core::default();
        let first = job("a", 1, JobState::Queued, 5);
        let spec = serde_json::from_str(&first.spec).unwrap();
        core.insert_job(JobMem { row: first, spec });
        let feed = || Feed {
            revision: 9,
            agent_types: vec![],
            // "a" at an older revision than memory's is not news; "b" is new; "c" finished
            // before this replica ever saw it.
            jobs: vec![
                job("a", 1, JobState::Assigned, 4),
                job("b", 2, JobState::Queued, 8),
                job("c", 3, JobState::Finished, 9),
            ],
            agents: vec![agent("x", AgentStatus::Reported(WaitingForJobs), false, 7)],
        };
        let applied = core.apply_feed(feed(), 100, 600);
        assert!(applied.counts_changed);
        assert_eq!(queued(&core), ["a", "b"]);
        assert_eq!(
            (core.revision, core.agents.len(), core.jobs.len()),
            (9, 1, 2)
        );
        let again = core.apply_feed(feed(), 100, 600);
        assert!(!again.counts_changed && !again.job_finished, "nothing new");
        assert_eq!(queued(&core), ["a", "b"]);
        // A newer row moves the job on; finishing removes it.
        let assigned = Feed {
            revision: 11,
            jobs: vec![
                job("a", 1, JobState::Assigned, 10),
                job("b", 2, JobState::Finished, 11),
            ],
            ..Feed::default()
        };
        let applied = core.apply_feed(assigned, 100, 600);
        assert!(applied.counts_changed && applied.job_finished);
        assert!(core.queues["linux"].is_empty());
        assert_eq!(core.jobs["a"].row.state, JobState::Assigned);
    }

    #[test]
    fn agents_lost_elsewhere_are_remembered_until_they_would_have_given_up() {
        let mut core = Core::default();
        let feed = Feed {
            revision: 3,
            agents: vec![agent("x", AgentStatus::Reported(WaitingForJobs), false, 2)],
            ..Feed::default()
        };
        core.apply_feed(feed, 100, 600);
        assert!(core.agent_by_token.contains_key("hash-x"));
        let lost = Feed {
            revision: 4,
            agents: vec![agent("x", Lost, true, 4), agent("old", Lost, true, 4)],
            ..Feed::default()
        };
        // "old" last synced at 100; at 800 it gave up long ago (600 s).
        core.apply_feed(lost, 650, 600);
        assert!(core.agents.is_empty() && core.agent_by_token.is_empty());
        assert!(core.lost.contains_key("hash-x"));
        let mut late = Core::default();
        let lost_long_ago = Feed {
            revision: 4,
            agents: vec![agent("old", Lost, true, 4)],
            ..Feed::default()
        };
        late.apply_feed(lost_long_ago, 800, 600);
        assert!(late.lost.is_empty(), "gone for good");
    }
}
