//! The agent protocol's server side (docs/protocol.md §2): register, sync, the job request,
//! log-token refresh and disconnect. Each call reads the facts from memory, lets `rules` decide,
//! turns the decision into row [`Changes`] and hands them to `Hub::commit`. Registration also
//! checks who may take a name (`rules::decide_register`) and, for agent types that require it,
//! the instance the agent runs on (`crate::identity`).
//!
//! A lost agent whose link heals presents its old access token: [`Hub::heal`] asks
//! `rules::decide_healed` whether it may resume (taking its re-queued job back) before the call
//! goes on; refused, the token stays unknown and the call gets 401, on which the agent leaves.

use super::memory::{AgentMem, Changes, Core};
use super::{admission, jobs, Hub, HubError, HubResult, Inner, Invalid};
use crate::identity::{self, Certificates, IdentityDocument};
use crate::rules::{
    self, AgentFacts, AssignedJob, HealFacts, JobChange, LostJob, RegisterFacts, Reply,
};
use crate::store::{AgentRow, AgentStatus, InstanceRow, JobRow, Store, StoreError};
use crate::tokens;
use protocol::views::IdentityPolicy;
use protocol::{
    AgentState, JobRequest, Logger, RegisterRequest, RegisterResponse, ShutdownReason, SyncAction,
    SyncRequest, SyncResponse,
};

impl Hub {
    /// Registers an agent (docs/protocol.md §2.3) under the rules of `rules::decide_register`;
    /// with an agent type that requires it, bound to a verified EC2 instance and named by it.
    pub fn register(
        &self,
        presented_token: &str,
        request: RegisterRequest,
        now: i64,
    ) -> HubResult<RegisterResponse> {
        admission::check_registration(&request)?;
        // An instance this call recorded is not "registered before" when the call runs again.
        let mut recorded_here = false;
        self.locked(now, |store, core| {
            self.register_locked(
                store,
                core,
                presented_token,
                &request,
                now,
                &mut recorded_here,
            )
        })
    }

    fn register_locked(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        presented_token: &str,
        request: &RegisterRequest,
        now: i64,
        recorded_here: &mut bool,
    ) -> HubResult<RegisterResponse> {
        let (agent_type, presenter) = presenter(core, presented_token)?;
        let policy = match store.identity_policy(&agent_type)? {
            Some(json) => identity_policy(&json)?,
            None => IdentityPolicy::default(),
        };
        let instance = self.verified_instance(&policy, request)?;
        let name = match &instance {
            Some(document) => document.instance_id.clone(),
            None => agent_name(request)?,
        };
        admission::check_type_capacity(core, &agent_type, &name, self.config.max_agents_per_type)?;
        let live = core.agents.get(&name);
        let record = store.name_record(&name)?;
        let facts = RegisterFacts {
            agent_type: &agent_type,
            single_job: request.single_job,
            live_holder: live.map(|agent| agent.row.agent_type.as_str()),
            owner: record.owner.as_deref(),
            holders_own_token: presenter.as_deref() == Some(name.as_str()),
            name_held_a_job: record.held_a_job,
            instance_registered_before: match &instance {
                Some(document) => {
                    !*recorded_here && store.instance_registered(&document.instance_id)?
                }
                None => false,
            },
            single_job_only: policy.single_job_only(),
        };
        rules::decide_register(&facts).map_err(|refusal| HubError::RegistrationRefused {
            name: name.clone(),
            refusal,
        })?;
        if let Some(document) = &instance {
            // Recorded before the agent row: a crash in between leaves the instance spent, never
            // registrable twice.
            let row = InstanceRow {
                instance_id: document.instance_id.clone(),
                agent_type: agent_type.clone(),
                account_id: document.account_id.clone(),
                region: document.region.clone(),
                registered_at: now,
                launched_at: document.launched_at(),
            };
            *recorded_here |= store.record_instance(&row)?;
        }
        let mut changes = Changes::default();
        // A re-registration under a live name replaces the old agent; its job is lost.
        if let Some(old) = live {
            changes
                .jobs
                .extend(lost_job(core, old, now, "its agent registered again"));
        }
        let token = tokens::new_token();
        let registration = RegisterRequest {
            name: name.clone(),
            flotilla_instance_identity: None,
            ..request.clone()
        };
        changes.agents.push(AgentRow {
            name: name.clone(),
            agent_type,
            token_hash: tokens::hash(&token),
            state: AgentStatus::Reported(AgentState::WaitingForJobs),
            job_id: None,
            jobs_finished: 0,
            registered_at: now,
            last_sync_at: now,
            interrupted_at: 0,
            disconnected_at: None,
            registration: serde_json::to_string(&registration).unwrap_or_default(),
            shutdown_requested: false,
            revision: live.map_or(0, |agent| agent.row.revision),
        });
        self.commit(store, core, changes, now)?;
        Ok(RegisterResponse { name, token })
    }

    /// The instance a registration is bound to, when its agent type requires one; refused
    /// (403) when the identity does not check out.
    fn verified_instance(
        &self,
        policy: &IdentityPolicy,
        request: &RegisterRequest,
    ) -> HubResult<Option<IdentityDocument>> {
        if !policy.require_instance_identity {
            return Ok(None);
        }
        let certificates = match &self.config.identity_certificates {
            Some(certificates) => certificates.as_ref(),
            None => Certificates::aws(),
        };
        let identity = request.flotilla_instance_identity.as_ref();
        identity::verify(certificates, policy, identity)
            .map(Some)
            .map_err(HubError::IdentityRefused)
    }

    pub fn sync(
        &self,
        access_token: &str,
        request: &SyncRequest,
        now: i64,
    ) -> HubResult<SyncResponse> {
        let mut lost_races = 0;
        let reply = self.locked(now, |store, core| {
            let reply = self.sync_locked(store, core, access_token, request, (now, lost_races));
            lost_races += 1;
            reply
        })?;
        Ok(self.sync_response(reply))
    }

    /// The sync's answer when memory alone gives it, without waiting for the lock or touching
    /// the store: a known agent whose job is the one memory gave it, and whose sync changes no
    /// row (the usual sync: nothing to hand out, its job goes on). `sync_locked` would decide
    /// the same from the same memory. None otherwise: then [`Hub::sync`] answers, on the
    /// blocking side.
    pub(crate) fn sync_in_memory(
        &self,
        access_token: &str,
        request: &SyncRequest,
        now: i64,
    ) -> Option<SyncResponse> {
        let mut guard = self.inner.try_lock().ok()?;
        let Inner { store, core } = &mut *guard;
        let agent = core.agent(access_token).ok()?;
        if store.shared() && agent.row.job_id.as_deref().unwrap_or("") != request.job_id {
            return None;
        }
        let spread = if store.others_writing(now) { 8 } else { 0 };
        let decided = decide(core, access_token, request, now, spread).ok()?;
        if !decided.changes.is_empty() {
            return None;
        }
        core.touch(&decided.name, request, now);
        Some(self.sync_response(decided.reply))
    }

    fn sync_response(&self, reply: Reply) -> SyncResponse {
        let (action, job_id, shutdown_reason) = match reply {
            Reply::Continue => (SyncAction::Continue, String::new(), ShutdownReason::Unknown),
            Reply::WaitForJobs => (
                SyncAction::WaitForJobs,
                String::new(),
                ShutdownReason::Unknown,
            ),
            Reply::Assign(job_id) | Reply::RunJob(job_id) => {
                (SyncAction::RunJob, job_id, ShutdownReason::Unknown)
            }
            Reply::StopJob(job_id) => (SyncAction::StopJob, job_id, ShutdownReason::Unknown),
            Reply::Shutdown(reason) => (SyncAction::Shutdown, String::new(), reason),
        };
        SyncResponse {
            action,
            job_id,
            shutdown_reason,
            next_sync_after: self.config.sync_interval_ms,
        }
    }

    /// One sync; `lost_races` is how many times this sync already ran and met another replica's
    /// write (its next job is then picked from further down the queue).
    fn sync_locked(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        access_token: &str,
        request: &SyncRequest,
        (now, lost_races): (i64, usize),
    ) -> HubResult<Reply> {
        self.heal(store, core, access_token, now)?;
        // The agent reports a job other than the one memory gave it: another replica moved it.
        if store.shared()
            && core
                .agent(access_token)?
                .row
                .job_id
                .as_deref()
                .unwrap_or("")
                != request.job_id
        {
            self.catch_up(store, core, now)?;
        }
        // Replicas picking the same queue head collide: while others are writing, each picks
        // among the first few from the start, wider after each lost race (alone, in order).
        let racing = store.others_writing(now);
        let spread = if racing { 8 } else { 0 } + 4 * lost_races;
        let decided = decide(core, access_token, request, now, spread)?;
        self.commit(store, core, decided.changes, now)?;
        core.touch(&decided.name, request, now);
        Ok(decided.reply)
    }

    /// The job an agent was assigned, with a fresh log token (only the token's hash is kept).
    pub fn job_request(&self, access_token: &str, job_id: &str, now: i64) -> HubResult<JobRequest> {
        self.locked(now, |store, core| {
            self.job_request_locked(store, core, access_token, job_id, now)
        })
    }

    fn job_request_locked(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        access_token: &str,
        job_id: &str,
        now: i64,
    ) -> HubResult<JobRequest> {
        self.heal(store, core, access_token, now)?;
        let agent = core.agent(access_token)?;
        let job = core
            .jobs
            .get(job_id)
            .filter(|job| {
                job.row.agent.as_ref() == Some(&agent.row.name)
                    && job.row.agent_type == agent.row.agent_type
                    && job.row.state.is_active()
            })
            .ok_or_else(|| HubError::JobNotAssigned {
                job_id: job_id.to_string(),
            })?;
        let token = tokens::new_token();
        let logger = Logger {
            method: "push".into(),
            url: format!("{}/api/v1/logs/{job_id}", self.config.public_url),
            token: token.clone(),
            max_size_in_bytes: self.config.max_log_bytes,
        };
        let request = job.spec.to_job_request(job_id, logger);
        let expires_at = now + self.config.log_token_ttl_secs;
        let row = jobs::with_log_token(&job.row, &token, expires_at);
        self.commit(store, core, Changes::job(row), now)?;
        Ok(request)
    }

    /// A new log token for the agent's current job.
    pub fn refresh_log_token(&self, access_token: &str, now: i64) -> HubResult<String> {
        self.locked(now, |store, core| {
            self.refresh_locked(store, core, access_token, now)
        })
    }

    fn refresh_locked(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        access_token: &str,
        now: i64,
    ) -> HubResult<String> {
        self.heal(store, core, access_token, now)?;
        let job_id = core
            .agent(access_token)?
            .row
            .job_id
            .as_deref()
            .ok_or(HubError::AgentHasNoJob)?;
        let job = core
            .jobs
            .get(job_id)
            .ok_or_else(|| HubError::JobNotRunning {
                job_id: job_id.to_string(),
            })?;
        let token = tokens::new_token();
        let expires_at = now + self.config.log_token_ttl_secs;
        let row = jobs::with_log_token(&job.row, &token, expires_at);
        self.commit(store, core, Changes::job(row), now)?;
        Ok(token)
    }

    pub fn disconnect(&self, access_token: &str, now: i64) -> HubResult<()> {
        self.locked(now, |store, core| {
            let name = core.agent(access_token)?.row.name.clone();
            let why = "its agent disconnected";
            self.remove_agent(store, core, &name, AgentStatus::Disconnected, now, why)
        })
    }

    /// Takes an agent out of service in state `state` (`disconnected`, `lost`); its job is lost
    /// for the reason `why`.
    pub(super) fn remove_agent(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        name: &str,
        state: AgentStatus,
        now: i64,
        why: &str,
    ) -> HubResult<()> {
        let Some(agent) = core.agents.get(name) else {
            return Ok(());
        };
        // A lost agent's row keeps the job it had: if its link heals, it may take it back.
        let row = AgentRow {
            state,
            job_id: agent
                .row
                .job_id
                .clone()
                .filter(|_| state == AgentStatus::Lost),
            disconnected_at: Some(now),
            ..agent.row.clone()
        };
        let changes = Changes {
            jobs: lost_job(core, agent, now, why).into_iter().collect(),
            agents: vec![row],
        };
        self.commit(store, core, changes, now)
    }

    /// A lost agent presents its access token again (the link healed): it resumes, taking back
    /// its re-queued job, when `rules::decide_healed` allows; else it is forgotten and the call
    /// goes on to answer 401. Nothing happens for any other token.
    fn heal(
        &self,
        store: &mut dyn Store,
        core: &mut Core,
        access_token: &str,
        now: i64,
    ) -> HubResult<()> {
        if core.agent(access_token).is_ok() {
            return Ok(());
        }
        // It stays among the lost until a commit says otherwise (a conflict runs this again).
        let Some(lost) = core.lost.get(&tokens::hash(access_token)).cloned() else {
            return Ok(());
        };
        let facts = HealFacts {
            silent_for: now - lost.last_sync_at,
            give_up_after: self.config.give_up_after_secs,
            name_taken: core.agents.contains_key(&lost.name),
            job: lost.job_id.as_ref().map(|id| LostJob {
                id: id.clone(),
                state: core.jobs.get(id).map(|job| job.row.state),
            }),
        };
        let reclaim = match rules::decide_healed(&facts) {
            Ok(reclaim) => reclaim,
            Err(refusal) => {
                tracing::warn!(agent = %lost.name, "a lost agent came back, refused: {refusal}");
                // Stored as revoked, so that a restarted hub does not weigh it again.
                let revoked = AgentRow {
                    state: AgentStatus::Revoked,
                    ..lost
                };
                return self.commit(store, core, Changes::agent(revoked), now);
            }
        };
        tracing::info!(agent = %lost.name, job = ?reclaim, "a lost agent came back and resumes");
        let mut changes = Changes::default();
        if let Some(job_id) = &reclaim {
            changes
                .jobs
                .push(jobs::reclaimed(&core.job(job_id)?.row, &lost.name, now));
        }
        changes.agents.push(AgentRow {
            job_id: reclaim,
            last_sync_at: now,
            disconnected_at: None,
            ..lost
        });
        self.commit(store, core, changes, now)
    }
}

/// The agent type a presented token registers for, and the name of the live agent it belongs
/// to when it is an access token (an agent registering itself again).
fn presenter(core: &Core, token: &str) -> HubResult<(String, Option<String>)> {
    if let Ok(agent_type) = core.type_of_token(token) {
        return Ok((agent_type.clone(), None));
    }
    let agent = core.agent(token)?;
    Ok((agent.row.agent_type.clone(), Some(agent.row.name.clone())))
}

/// An agent type's stored instance-identity rule.
pub(super) fn identity_policy(json: &str) -> HubResult<IdentityPolicy> {
    serde_json::from_str(json).map_err(|error| {
        HubError::Store(StoreError::Corrupt(format!(
            "an agent type's identity rule: {error}"
        )))
    })
}

/// The name an agent registers under: its own, or a random one; never a URL.
fn agent_name(request: &RegisterRequest) -> HubResult<String> {
    if request.name.contains("://") {
        return Err(Invalid::AgentNameIsUrl.into());
    }
    if request.name.len() > 255 {
        return Err(Invalid::FieldTooLong {
            field: "agent name",
            limit: 255,
        }
        .into());
    }
    if request.name.is_empty() {
        return Ok(format!("agent-{}", &tokens::new_token()[..16]));
    }
    Ok(request.name.clone())
}

/// The row of `agent`'s job once the agent is gone, if it had one.
fn lost_job(core: &Core, agent: &AgentMem, now: i64, why: &str) -> Option<JobRow> {
    let job = core.jobs.get(agent.row.job_id.as_deref()?)?;
    jobs::lost(job, now, why)
}

/// A sync decided from memory: the answer, the rows it changes, and the agent's name.
struct Decided {
    reply: Reply,
    changes: Changes,
    name: String,
}

/// Decides a sync of the agent with `access_token` from memory (the rules; nothing written):
/// the next job is picked among the first `spread` + 1 queued ones.
fn decide(
    core: &Core,
    access_token: &str,
    request: &SyncRequest,
    now: i64,
    spread: usize,
) -> HubResult<Decided> {
    let agent = core.agent(access_token)?;
    let facts = agent_facts(core, agent);
    let next_job = core.next_job_for(agent, spread);
    let (reply, change) = rules::decide_sync(&facts, request, now, next_job);
    let interrupted = facts.interrupted_at > 0 || request.interrupted_at > 0;
    let leaving = jobs::Leaving {
        interrupted,
        fault: request.flotilla_fault.as_deref().map(bounded_fault),
    };
    let changes = sync_changes(core, &agent.row, change, &reply, leaving, now)?;
    Ok(Decided {
        reply,
        changes,
        name: agent.row.name.clone(),
    })
}

/// Longest fault reason kept from an agent's report (it becomes the job's reason, shown on the
/// console): a client's text is bounded like every other field it sends.
const MAX_FAULT_CHARS: usize = 300;

/// An agent's fault reason, cut to [`MAX_FAULT_CHARS`] characters.
fn bounded_fault(fault: &str) -> &str {
    match fault.char_indices().nth(MAX_FAULT_CHARS) {
        Some((end, _)) => &fault[..end],
        None => fault,
    }
}

/// What the rules need to know about a syncing agent.
fn agent_facts(core: &Core, agent: &AgentMem) -> AgentFacts {
    let job = agent
        .row
        .job_id
        .as_ref()
        .and_then(|id| core.jobs.get(id))
        .map(|job| AssignedJob {
            id: job.row.id.clone(),
            state: job.row.state,
            stop_requested: job.row.stop_requested,
        });
    AgentFacts {
        single_job: agent.registration.single_job,
        idle_timeout: agent.registration.idle_timeout,
        interruption_grace_period: agent.registration.interruption_grace_period,
        interrupted_at: agent.row.interrupted_at,
        idle_since: agent.idle_since,
        jobs_finished: agent.row.jobs_finished,
        shutdown_requested: agent.row.shutdown_requested,
        job,
    }
}

/// The rows a sync rewrites: the job change its report reveals, then the assignment its reply
/// makes, and the agent's row when its job changed.
fn sync_changes(
    core: &Core,
    agent: &AgentRow,
    change: Option<JobChange>,
    reply: &Reply,
    leaving: jobs::Leaving<'_>,
    now: i64,
) -> HubResult<Changes> {
    let mut changes = Changes::default();
    let mut row = agent.clone();
    match change {
        None => {}
        Some(JobChange::Started(job_id)) => {
            changes
                .jobs
                .push(jobs::started(&core.job(&job_id)?.row, now));
        }
        Some(JobChange::Finished { job_id, result }) => {
            let job = core.job(&job_id)?;
            changes.jobs.push(jobs::finished(job, result, leaving, now));
            row.job_id = None;
            row.jobs_finished += 1;
        }
        Some(JobChange::Lost(job_id)) => {
            let why = "its agent reported it had no job";
            let job = core.jobs.get(&job_id);
            changes
                .jobs
                .extend(job.and_then(|job| jobs::lost(job, now, why)));
            row.job_id = None;
        }
    }
    if let Reply::Assign(job_id) = reply {
        changes
            .jobs
            .push(jobs::assigned(&core.job(job_id)?.row, &row.name, now));
        row.job_id = Some(job_id.clone());
    }
    if row != *agent {
        changes.agents.push(row);
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fault_reason_is_cut_at_a_character_boundary() {
        let long = "é".repeat(super::MAX_FAULT_CHARS + 100);
        let cut = super::bounded_fault(&long);
        assert_eq!(cut.chars().count(), super::MAX_FAULT_CHARS);
        let short = "GPU fault on i-1: Xid 79";
        assert_eq!(super::bounded_fault(short), short);
    }
}
