//! The user operations behind the admin-token API: agent types, submitting, listing and stopping
//! jobs, listing agents and asking one to shut down. Finished jobs are read from the store; live
//! ones from memory. Answers are the `protocol::views` types the CLI reads.

use super::memory::{AgentMem, Changes, Core, JobMem};
use super::{jobs, Hub, HubError, HubResult, Inner, Invalid};
use crate::store::{AgentRow, JobRow, Store};
use crate::tokens;
use protocol::views::{AgentView, IdentityPolicy, JobView};
use protocol::{JobSpec, JobState};
use std::collections::HashMap;

impl Hub {
    /// Creates an agent type; returns its registration token (shown once, stored hashed).
    pub fn create_agent_type(&self, name: &str, now: i64) -> HubResult<String> {
        self.create_agent_type_with(name, &IdentityPolicy::default(), now)
    }

    /// Sets an agent type's registration rule (`identity::check_policy` first); the next
    /// registration on any replica applies it.
    pub fn set_agent_type_policy(&self, name: &str, policy: &IdentityPolicy) -> HubResult<()> {
        if let Some(why) = crate::identity::check_policy(policy) {
            return Err(Invalid::IdentityPolicy(why).into());
        }
        let mut guard = self.fresh()?;
        let Inner { store, core } = &mut *guard;
        if !core.types.contains_key(name) {
            return Err(HubError::NoSuchAgentType {
                name: name.to_string(),
            });
        }
        let json = serde_json::to_string(policy).map_err(Invalid::Json)?;
        store.set_identity_policy(name, (!policy.is_default()).then_some(json.as_str()))?;
        Ok(())
    }

    /// Creates an agent type with its instance-identity rule (`identity::check_policy`).
    pub fn create_agent_type_with(
        &self,
        name: &str,
        identity: &IdentityPolicy,
        now: i64,
    ) -> HubResult<String> {
        if !protocol::spec::valid_agent_type(name) {
            return Err(Invalid::AgentTypeName(name.to_string()).into());
        }
        if let Some(why) = crate::identity::check_policy(identity) {
            return Err(Invalid::IdentityPolicy(why).into());
        }
        self.locked(now, |store, core| {
            let exists = || HubError::AgentTypeExists {
                name: name.to_string(),
            };
            if core.types.contains_key(name) {
                return Err(exists());
            }
            let token = tokens::new_token();
            let token_hash = tokens::hash(&token);
            let inserted = if !identity.is_default() {
                let policy = serde_json::to_string(identity).unwrap_or_default();
                store.insert_agent_type_with_identity(name, &token_hash, now, &policy)?
            } else {
                store.insert_agent_type(name, &token_hash, now)?
            };
            if !inserted {
                // Another replica made it: memory learns of it at its next catch-up.
                return Err(exists());
            }
            core.types.insert(name.to_string(), now);
            core.type_by_token.insert(token_hash, name.to_string());
            Ok(token)
        })
    }

    /// Creates agent type `name` with a registration token chosen outside the hub (a replica
    /// started with `--registration-token`); nothing changes when the type exists with that
    /// token, and a type of that name with another token is refused.
    pub fn ensure_agent_type(&self, name: &str, token: &str, now: i64) -> HubResult<()> {
        if !protocol::spec::valid_agent_type(name) {
            return Err(Invalid::AgentTypeName(name.to_string()).into());
        }
        let token_hash = tokens::hash(token);
        self.locked(now, |store, core| {
            if core
                .type_by_token
                .get(&token_hash)
                .is_some_and(|owner| owner == name)
            {
                return Ok(());
            }
            if core.types.contains_key(name) || core.type_by_token.contains_key(&token_hash) {
                return Err(HubError::AgentTypeTokenMismatch {
                    name: name.to_string(),
                });
            }
            if !store.insert_agent_type(name, &token_hash, now)? {
                // Made meanwhile by another replica: catch up and look again.
                return Err(HubError::AgentTypeMadeElsewhere {
                    name: name.to_string(),
                });
            }
            core.types.insert(name.to_string(), now);
            core.type_by_token
                .insert(token_hash.clone(), name.to_string());
            Ok(())
        })
    }

    /// Every agent type: its name, when it was created, and its instance-identity rule.
    pub fn agent_types(&self) -> HubResult<Vec<(String, i64, IdentityPolicy)>> {
        let guard = self.fresh()?;
        let mut policies: HashMap<String, IdentityPolicy> = HashMap::new();
        for row in guard.store.identity_policies()? {
            let policy = super::agent_api::identity_policy(&row.policy)?;
            policies.insert(row.agent_type, policy);
        }
        let types = guard.core.types.iter().map(|(name, created)| {
            let policy = policies.remove(name).unwrap_or_default();
            (name.clone(), *created, policy)
        });
        Ok(types.collect())
    }

    pub fn submit(&self, spec: JobSpec, now: i64) -> HubResult<JobView> {
        spec.validate().map_err(Invalid::JobSpec)?;
        self.locked(now, |store, core| {
            self.submit_locked(store, core, &spec, now)
        })
    }

    fn submit_locked(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        spec: &JobSpec,
        now: i64,
    ) -> HubResult<JobView> {
        if !core.types.contains_key(&spec.agent_type) {
            // Perhaps made through another replica.
            self.catch_up(store, core, now)?;
        }
        if !core.types.contains_key(&spec.agent_type) {
            return Err(HubError::JobForUnknownAgentType {
                name: spec.agent_type.clone(),
            });
        }
        let text = serde_json::to_string(spec).map_err(Invalid::Json)?;
        let id = tokens::new_job_id();
        let mut row = JobRow::queued(id, spec.agent_type.clone(), text, now);
        let inserted = store.insert_job(&row)?;
        (row.seq, row.revision) = (inserted.seq, inserted.revision);
        core.committed(row.revision);
        let view = job_view(&row);
        let spec = spec.clone();
        core.insert_job(JobMem { row, spec });
        self.bump(core);
        Ok(view)
    }

    pub fn job(&self, job_id: &str) -> HubResult<JobView> {
        let guard = self.fresh()?;
        if let Some(job) = guard.core.jobs.get(job_id) {
            return Ok(job_view(&job.row));
        }
        guard
            .store
            .job(job_id)?
            .map(|row| job_view(&row))
            .ok_or_else(|| HubError::NoSuchJob {
                job_id: job_id.to_string(),
            })
    }

    /// The newest jobs first, optionally only those in `state`.
    pub fn list_jobs(&self, state: Option<JobState>, limit: u32) -> HubResult<Vec<JobView>> {
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
        self.locked(now, |store, core| {
            let Some(memory) = core.jobs.get(job_id) else {
                return match store.job(job_id)? {
                    Some(row) if row.state.is_finished() => Ok(job_view(&row)),
                    // Unfinished but not in memory: submitted through another replica.
                    Some(_) | None => Err(HubError::NoSuchJob {
                        job_id: job_id.to_string(),
                    }),
                };
            };
            let job = jobs::stop_requested(&memory.row, now);
            let view = job_view(&job);
            self.commit(store, core, Changes::job(job), now)?;
            Ok(view)
        })
    }

    pub fn agents(&self) -> Vec<AgentView> {
        let guard = self.fresh().unwrap_or_else(|error| {
            tracing::warn!(%error, "listing agents from memory: catching up failed");
            self.lock()
        });
        let mut agents: Vec<AgentView> = guard.core.agents.values().map(agent_view).collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        agents
    }

    /// Asks an agent to shut down at its next sync (after its job, if it has one).
    pub(crate) fn request_agent_shutdown(&self, name: &str, now: i64) -> HubResult<()> {
        self.locked(now, |store, core| {
            let agent = core.agents.get(name).ok_or_else(|| HubError::NoSuchAgent {
                name: name.to_string(),
            })?;
            if agent.row.shutdown_requested {
                return Ok(());
            }
            let row = AgentRow {
                shutdown_requested: true,
                ..agent.row.clone()
            };
            self.commit(store, core, Changes::agent(row), now)
        })
    }
}

pub(super) fn job_view(row: &JobRow) -> JobView {
    let name = serde_json::from_str::<JobSpec>(&row.spec)
        .map(|spec| spec.display_name())
        .unwrap_or_default();
    JobView {
        id: row.id.clone(),
        name,
        agent_type: row.agent_type.clone(),
        state: row.state,
        result: row.result,
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

fn agent_view(agent: &AgentMem) -> AgentView {
    let (row, registration) = (&agent.row, &agent.registration);
    AgentView {
        name: row.name.clone(),
        agent_type: row.agent_type.clone(),
        state: row.state.to_string(),
        job_id: row.job_id.clone(),
        jobs_finished: row.jobs_finished,
        registered_at: row.registered_at,
        last_sync_at: row.last_sync_at,
        interrupted_at: row.interrupted_at,
        hostname: registration.hostname.clone(),
        version: registration.version.clone(),
        pid: registration.pid,
        gpus: registration.flotilla_gpus.clone(),
        gpu_gate: registration.flotilla_gpu_gate.clone(),
    }
}
