//! Work off the request path, run every second by the server: agents that stopped syncing are
//! lost (their jobs re-queued or failed), jobs past their time limit are stopped, agents'
//! last-sync times are flushed in small batches, the WAL is checkpointed, and finished jobs'
//! secrets (environment values, file contents) are purged once their retention period is over.
//! With several replicas on one store, only the leader (`Store::try_lead`: PostgreSQL's advisory
//! lock, held until its connection ends) sweeps and purges; every replica flushes its syncs.

use super::memory::Core;
use super::{Hub, HubError, HubResult, Inner};
use crate::store::{AgentStatus, AgentTouch, SqliteStore, Store, StoreError};
use protocol::JobSpec;

impl Hub {
    /// Marks agents silent for longer than `lost_after` as lost (their jobs re-queued or failed),
    /// stops jobs past their time limit and writes agents' last-sync times. Returns how many
    /// agents were lost.
    pub fn maintain(&self, now: i64) -> HubResult<usize> {
        let (lost_count, touched) = {
            let mut guard = self.lock();
            let Inner { store, core } = &mut *guard;
            let lost_count = if store.try_lead()? {
                // The sweeps judge every replica's agents and jobs: see them all first.
                self.catch_up(store.as_ref(), core, now)?;
                match self.sweep(store.as_mut(), core, now) {
                    // Another replica changed a row the sweep read: the next tick sweeps again.
                    Err(HubError::Store(StoreError::Conflict)) => {
                        self.catch_up(store.as_ref(), core, now)?;
                        0
                    }
                    other => other?,
                }
            } else {
                0
            };
            let give_up = self.config.give_up_after_secs;
            core.lost
                .retain(|_, agent| now - agent.last_sync_at <= give_up);
            (lost_count, take_touched(core))
        };
        // Last-sync times are not job state: write them in small batches, releasing the lock in
        // between, so thousands of agents do not stall syncs.
        for batch in touched.chunks(256) {
            self.lock().store.touch_agents(batch)?;
        }
        Ok(lost_count)
    }

    /// The once-only sweeps (the leading replica's on a shared store): agents silent for
    /// longer than `lost_after` are lost, jobs past their time limit stopped.
    fn sweep(&self, store: &mut dyn Store, core: &mut Core, now: i64) -> HubResult<usize> {
        let silent = |core: &Core| -> Vec<String> {
            core.agents
                .values()
                .filter(|agent| now - agent.row.last_sync_at > self.config.lost_after_secs)
                .map(|agent| agent.row.name.clone())
                .collect()
        };
        let mut lost = silent(core);
        if store.shared() && !lost.is_empty() {
            // They may have synced through other replicas: their flushed times say.
            for name in &lost {
                if let (Some(row), Some(agent)) = (store.agent(name)?, core.agents.get_mut(name)) {
                    agent.row.last_sync_at = agent.row.last_sync_at.max(row.last_sync_at);
                }
            }
            lost = silent(core);
        }
        for name in &lost {
            tracing::warn!(agent = %name, "agent lost: no sync for {} s", self.config.lost_after_secs);
            self.remove_agent(
                store,
                core,
                name,
                AgentStatus::Lost,
                now,
                "its agent was lost",
            )?;
            core.counters.lost_agents += 1;
        }
        self.enforce_time_limits(store, core, now)?;
        Ok(lost.len())
    }

    /// Empties the environment values and file contents of jobs that finished more than the
    /// retention period ago (the job row and its log stay). Returns how many jobs were purged.
    pub fn purge_secrets(&self, now: i64) -> HubResult<usize> {
        let before = now.saturating_sub(self.config.secret_retention_secs);
        let redact = |text: &str| match serde_json::from_str::<JobSpec>(text) {
            Ok(spec) => serde_json::to_string(&spec.without_secrets()).unwrap_or_default(),
            // Not a spec this hub can read: keep nothing of it.
            Err(_) => String::new(),
        };
        let mut guard = self.lock();
        if !guard.store.try_lead()? {
            return Ok(0);
        }
        let purged = guard.store.purge_job_secrets(before, &redact)?;
        if purged > 0 {
            tracing::info!(jobs = purged, "purged finished jobs' secrets");
        }
        Ok(purged)
    }

    /// Forgets agents that left more than the give-up time ago (none of them can heal), so
    /// agent rows do not grow without end; what the one-job rules need (`job_holders`,
    /// `registered_instances`) stays. The leader's job on a shared store. Returns how many.
    pub fn prune_agents(&self, now: i64) -> HubResult<usize> {
        let left_before = now.saturating_sub(self.config.give_up_after_secs);
        let mut guard = self.lock();
        if !guard.store.try_lead()? {
            return Ok(0);
        }
        let pruned = guard.store.prune_agents(left_before)?;
        if pruned > 0 {
            tracing::info!(
                agents = pruned,
                "forgot agents that left before the give-up time"
            );
        }
        Ok(pruned)
    }

    /// Moves committed WAL pages into the database file (off the request path).
    pub fn checkpoint(&self) -> HubResult<()> {
        if let Some(dir) = &self.data_dir {
            SqliteStore::checkpoint(dir)?;
        }
        Ok(())
    }
}

/// Agents whose last sync and reported state changed since the last flush (marks them clean).
fn take_touched(core: &mut Core) -> Vec<AgentTouch> {
    core.agents
        .values_mut()
        .filter(|agent| agent.touched)
        .map(|agent| {
            agent.touched = false;
            AgentTouch {
                name: agent.row.name.clone(),
                last_sync_at: agent.row.last_sync_at,
                state: agent.row.state,
                interrupted_at: agent.row.interrupted_at,
            }
        })
        .collect()
}
