//! What the hub counts: the queue metrics a scaler reads per agent type (long-polled through the
//! version, Semaphore's shape plus extensions), the agent list its reaper reads, and the counters
//! and histograms behind Prometheus `/metrics`, which follow committed job transitions.

use super::memory::Core;
use super::{Hub, HubResult};
use crate::store::JobRow;
use protocol::metrics::{AgentList, AgentSummary};
use protocol::{AgentCounts, JobCounts, JobState, QueueMetrics};
use std::collections::BTreeMap;

/// Counters for the Prometheus endpoint.
#[derive(Debug, Default, Clone)]
pub struct HubCounters {
    /// Finished jobs by (agent type, result).
    pub finished: BTreeMap<(String, String), u64>,
    pub time_to_start: Histogram,
    pub duration: Histogram,
    pub requeued: u64,
    pub lost_agents: u64,
}

impl HubCounters {
    /// Counts a committed change of a job's row from `old` to `new`.
    pub(super) fn record(&mut self, old: &JobRow, new: &JobRow) {
        if let (None, Some(started)) = (old.started_at, new.started_at) {
            self.time_to_start
                .observe((started - new.queued_at).max(0) as f64);
        }
        if old.state.is_active() && new.state == JobState::Queued {
            self.requeued += 1;
        }
        if new.state.is_finished() && !old.state.is_finished() {
            let result = new.result.map(|result| result.as_str()).unwrap_or("none");
            *self
                .finished
                .entry((new.agent_type.clone(), result.to_string()))
                .or_default() += 1;
            if let (Some(started), Some(finished)) = (new.started_at, new.finished_at) {
                self.duration.observe((finished - started).max(0) as f64);
            }
        }
    }
}

#[derive(Debug, Clone)]
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

impl Hub {
    /// Queue metrics for the agent type owning `registration_token`.
    pub fn metrics(&self, registration_token: &str, now: i64) -> HubResult<QueueMetrics> {
        // `locked`: a type made through another replica is caught up with, not refused.
        self.locked(now, |_, core| {
            let agent_type = core.type_of_token(registration_token)?;
            Ok(metrics_of(core, agent_type, now))
        })
    }

    /// The agents registered under the agent type whose registration token asks (reaper input).
    pub(crate) fn agents_of_type(&self, registration_token: &str) -> HubResult<AgentList> {
        let guard = self.fresh()?;
        let core = &guard.core;
        let agent_type = core.type_of_token(registration_token)?;
        let mut agents: Vec<AgentSummary> = core
            .agents
            .values()
            .filter(|agent| &agent.row.agent_type == agent_type)
            .map(|agent| AgentSummary {
                name: agent.row.name.clone(),
                busy: agent.row.job_id.is_some(),
            })
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(AgentList { agents })
    }

    /// Per agent type metrics for the Prometheus endpoint, plus the counters.
    pub fn all_metrics(&self, now: i64) -> (Vec<(String, QueueMetrics)>, HubCounters) {
        let guard = self.lock();
        let core = &guard.core;
        let types = core
            .types
            .keys()
            .map(|name| (name.clone(), metrics_of(core, name, now)))
            .collect();
        (types, core.counters.clone())
    }
}

pub(super) fn metrics_of(core: &Core, agent_type: &str, now: i64) -> QueueMetrics {
    let queue = core.queues.get(agent_type);
    let queued = queue.map(|q| q.len() as u64).unwrap_or(0);
    let oldest = queue
        .and_then(|q| q.values().next())
        .and_then(|id| core.jobs.get(id))
        .map(|job| (now - job.row.queued_at).max(0) as u64);
    let running = core
        .jobs
        .values()
        .filter(|job| job.row.agent_type == agent_type && job.row.state.is_active())
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
