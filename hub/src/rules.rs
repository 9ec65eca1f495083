//! The server side of the agent protocol as pure functions: what to answer an agent's sync
//! (docs/protocol.md §3.7, §3.10, §9.1) and how a job's state may change. The hub feeds them
//! facts and applies what they decide; nothing here does I/O or reads a clock. Registration is
//! here too: who may take a name (tenancy, one job per machine, one registration per instance).
//! And the healed-agent rule: what a lost agent that comes back after a partition may do.

use protocol::{AgentState, JobResult, JobState, ShutdownReason, SyncRequest};

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    Assign,
    Start,
    RequestStop,
    Finish,
    /// Back to the queue (its agent was lost or interrupted, and the retry policy allows).
    Requeue,
}

/// The job state machine: the next state, or `None` when the event does not apply.
pub fn next_job_state(state: JobState, event: JobEvent) -> Option<JobState> {
    use JobEvent::*;
    use JobState::*;
    match (state, event) {
        (Queued, Assign) => Some(Assigned),
        (Assigned, Start) => Some(Running),
        (Queued, RequestStop) => Some(Finished),
        (Assigned | Running, RequestStop) => Some(Stopping),
        (Stopping, RequestStop) => Some(Stopping),
        (Assigned | Running | Stopping, Finish) => Some(Finished),
        (Assigned | Running | Stopping, Requeue) => Some(Queued),
        _ => None,
    }
}

/// What the hub knows about the job assigned to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AssignedJob {
    pub id: String,
    pub state: JobState,
    pub stop_requested: bool,
}

/// What the hub knows about the agent that syncs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct AgentFacts {
    pub single_job: bool,
    /// Seconds; 0 = never idle out.
    pub idle_timeout: i64,
    pub interruption_grace_period: i64,
    /// Unix seconds the agent reported being interrupted, or 0 (sticky).
    pub interrupted_at: i64,
    /// Unix seconds since the agent has been waiting for a job.
    pub idle_since: i64,
    pub jobs_finished: i64,
    /// An operator asked this agent to shut down.
    pub shutdown_requested: bool,
    pub job: Option<AssignedJob>,
}

/// The answer to a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Continue,
    /// Assign this queued job (the next one the agent may take) and send run-job for it.
    Assign(String),
    /// Send run-job for this (already assigned) job again: the agent did not get it.
    RunJob(String),
    StopJob(String),
    Shutdown(ShutdownReason),
    WaitForJobs,
}

/// A job change the sync reveals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobChange {
    Started(String),
    Finished {
        job_id: String,
        result: JobResult,
    },
    /// The agent says it has no job, but it had one running: the job is lost.
    Lost(String),
}

/// Decides the answer to `report` from an agent described by `facts` at `now` (Unix seconds).
/// `next_job`: the queued job this agent would take, if any.
pub(crate) fn decide_sync(
    facts: &AgentFacts,
    report: &SyncRequest,
    now: i64,
    next_job: Option<&str>,
) -> (Reply, Option<JobChange>) {
    let interrupted = facts.interrupted_at > 0 || report.interrupted_at > 0;
    let interrupted_at = if facts.interrupted_at > 0 {
        facts.interrupted_at
    } else {
        report.interrupted_at
    };
    match report.state {
        AgentState::WaitingForJobs => decide_waiting(facts, interrupted, now, next_job),
        AgentState::StartingJob | AgentState::RunningJob => {
            let Some(job) = facts.job.as_ref().filter(|job| job.id == report.job_id) else {
                // A job this hub does not know this agent for: have it stopped.
                return (Reply::StopJob(report.job_id.clone()), None);
            };
            let change =
                (job.state == JobState::Assigned).then(|| JobChange::Started(job.id.clone()));
            let grace_over = interrupted && now >= interrupted_at + facts.interruption_grace_period;
            if job.stop_requested || facts.shutdown_requested || grace_over {
                (Reply::StopJob(job.id.clone()), change)
            } else {
                (Reply::Continue, change)
            }
        }
        AgentState::StoppingJob => (Reply::Continue, None),
        AgentState::FinishedJob => {
            let change = facts
                .job
                .as_ref()
                .filter(|job| job.id == report.job_id && job.state != JobState::Finished)
                .map(|job| JobChange::Finished {
                    job_id: job.id.clone(),
                    result: report.job_result.unwrap_or(JobResult::Failed),
                });
            let finished_one = change.is_some() || facts.jobs_finished > 0;
            let reply = if facts.shutdown_requested {
                Reply::Shutdown(ShutdownReason::Requested)
            } else if interrupted {
                Reply::Shutdown(ShutdownReason::Interrupted)
            } else if facts.single_job && finished_one {
                Reply::Shutdown(ShutdownReason::JobFinished)
            } else {
                Reply::WaitForJobs
            };
            (reply, change)
        }
    }
}

/// The answer to an agent waiting for jobs: run-job again if the last answer was lost, a
/// shutdown if one is due, else the next job; a job the hub thought it had is lost.
fn decide_waiting(
    facts: &AgentFacts,
    interrupted: bool,
    now: i64,
    next_job: Option<&str>,
) -> (Reply, Option<JobChange>) {
    let mut change = None;
    if let Some(job) = &facts.job {
        match job.state {
            JobState::Assigned if !interrupted && !facts.shutdown_requested => {
                return (Reply::RunJob(job.id.clone()), None);
            }
            JobState::Assigned | JobState::Running | JobState::Stopping => {
                change = Some(JobChange::Lost(job.id.clone()));
            }
            _ => {}
        }
    }
    let reply = if interrupted {
        Reply::Shutdown(ShutdownReason::Interrupted)
    } else if facts.shutdown_requested {
        Reply::Shutdown(ShutdownReason::Requested)
    } else if facts.single_job && facts.jobs_finished > 0 {
        Reply::Shutdown(ShutdownReason::JobFinished)
    } else if facts.idle_timeout > 0 && now - facts.idle_since > facts.idle_timeout {
        Reply::Shutdown(ShutdownReason::Idle)
    } else if let Some(job_id) = next_job.filter(|_| change.is_none()) {
        Reply::Assign(job_id.to_string())
    } else {
        Reply::Continue
    };
    (reply, change)
}

/// What decides whether a job its agent reported finished goes back to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FinishFacts {
    pub result: JobResult,
    /// A user asked for the stop: that is final.
    pub user_stopped: bool,
    /// The agent reported an interruption (a signal, a spot notice, a fault).
    pub agent_interrupted: bool,
    /// The agent reported a hardware fault (a fatal GPU Xid): the job's failure may be the
    /// machine's, not its code's.
    pub machine_fault: bool,
    pub requeues_done: u32,
    pub requeues_allowed: u32,
}

/// Whether a finished job goes back to the queue, with re-queues left and no user stop: stopped
/// because its agent was interrupted, or stopped or failed on a machine that reported a hardware
/// fault (the GPU may have failed under it before the agent saw the fault). A passed job is done
/// wherever it ran, and a failure on a healthy machine is the job's own.
pub(crate) fn requeue_after_finish(facts: &FinishFacts) -> bool {
    let machine_ended_it = match facts.result {
        JobResult::Stopped => facts.agent_interrupted || facts.machine_fault,
        JobResult::Failed => facts.machine_fault,
        JobResult::Passed => false,
    };
    machine_ended_it && !facts.user_stopped && facts.requeues_done < facts.requeues_allowed
}

/// What the hub knows when an agent it declared lost (no sync for `--lost-after`) presents its
/// access token again: the link healed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealFacts {
    /// Seconds since its last sync before it was lost.
    pub silent_for: i64,
    /// The agents' give-up time (`--give-up-after`): an agent silent for longer has stopped its
    /// job and exited by its own rule.
    pub give_up_after: i64,
    /// Another live agent registered under its name since.
    pub name_taken: bool,
    /// The job it had when it was lost, if any.
    pub job: Option<LostJob>,
}

/// Where the job of a lost agent stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LostJob {
    pub id: String,
    /// `None`: the job has finished (failed when its agent was lost, or run to the end
    /// elsewhere, or stopped).
    pub state: Option<JobState>,
}

/// Why a healed agent is refused (its token stays revoked: 401, and the agent leaves at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HealRefusal {
    /// Silent past the give-up time: by its own rule it has given up.
    PastGiveUp,
    /// Its name belongs to another live agent now.
    NameTaken,
    /// Its job was handed to another agent.
    JobHandedOver,
    /// Its job has a result already (recorded once).
    JobFinished,
}

impl std::fmt::Display for HealRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealRefusal::PastGiveUp => write!(f, "it was silent for longer than the give-up time"),
            HealRefusal::NameTaken => write!(f, "another live agent holds its name"),
            HealRefusal::JobHandedOver => write!(f, "its job was handed to another agent"),
            HealRefusal::JobFinished => write!(f, "its job has finished without it"),
        }
    }
}

/// The healed-agent rule. A lost agent may come back while it has not given up and its work
/// is still its own: with no job, or with its job still waiting in the queue (re-queued when it
/// was lost, not handed to anyone): then it resumes, and takes that job back (`Ok(Some(job))`)
/// to deliver its log and result. Otherwise it is refused and must stop at once.
pub(crate) fn decide_healed(facts: &HealFacts) -> Result<Option<String>, HealRefusal> {
    if facts.silent_for > facts.give_up_after {
        return Err(HealRefusal::PastGiveUp);
    }
    if facts.name_taken {
        return Err(HealRefusal::NameTaken);
    }
    match &facts.job {
        None => Ok(None),
        Some(LostJob { state: None, .. }) => Err(HealRefusal::JobFinished),
        Some(LostJob {
            id,
            state: Some(JobState::Queued),
        }) => Ok(Some(id.clone())),
        Some(_) => Err(HealRefusal::JobHandedOver),
    }
}

/// What the hub knows when an agent asks to register under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegisterFacts<'a> {
    /// The agent type of the token presented (a registration token, or a live agent's own
    /// access token).
    pub agent_type: &'a str,
    /// The registering agent says it takes one job only (`single_job`).
    pub single_job: bool,
    /// The agent type of the live agent that holds the name, if one does.
    pub live_holder: Option<&'a str>,
    /// The agent type the name belongs to: the first that used it (a live, lost or departed
    /// agent's, or the one a job was assigned under), if any did.
    pub owner: Option<&'a str>,
    /// The token presented is that live agent's own access token.
    pub holders_own_token: bool,
    /// An agent of this name (of any type) was assigned a job before.
    pub name_held_a_job: bool,
    /// The instance this registration is bound to has registered before.
    pub instance_registered_before: bool,
    /// The agent type takes single-job agents only (`IdentityPolicy::single_job_only`).
    pub single_job_only: bool,
}

/// Why a registration is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterRefusal {
    /// One registration per instance, ever.
    InstanceRegisteredBefore,
    /// Names belong to the agent type that first used them: another type has this one.
    HeldByAnotherType(String),
    /// A live agent of this type has the name; only its own access token may replace it.
    HeldByLiveAgent,
    /// A single-job agent under a name that already held a job: its machine is used.
    NameHeldAJob,
    /// An agent that would take more than one job, of a type that takes single-job agents only.
    MultiJobNotAllowed,
}

impl std::fmt::Display for RegisterRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterRefusal::MultiJobNotAllowed => write!(f, "this agent type takes single-job agents only (single_job: true; the type's single_job_only rule)"),
            RegisterRefusal::InstanceRegisteredBefore => write!(f, "this instance has registered before; an instance registers once"),
            RegisterRefusal::HeldByAnotherType(agent_type) => write!(f, "the name belongs to agent type '{agent_type}'"),
            RegisterRefusal::HeldByLiveAgent => write!(f, "the name is held by a live agent; only its own access token may register it again (or wait until it is lost)"),
            RegisterRefusal::NameHeldAJob => write!(f, "an agent of this name has already held a job: only that agent itself may go on under it, and a single-job agent's machine is used and takes no other job"),
        }
    }
}

/// Whether an agent may register under a name: the name is not another type's (names belong
/// to the type that first used them, live agent or not), a live agent is replaced only by
/// itself, and a name that held a job is never registered afresh — whatever `single_job` the
/// request claims: only its own live multi-job agent, presenting its own access token, goes on
/// under it (a single-job agent never does: its machine is used).
pub(crate) fn decide_register(facts: &RegisterFacts) -> Result<(), RegisterRefusal> {
    if facts.instance_registered_before {
        return Err(RegisterRefusal::InstanceRegisteredBefore);
    }
    if facts.single_job_only && !facts.single_job {
        return Err(RegisterRefusal::MultiJobNotAllowed);
    }
    if let Some(owner) = facts.live_holder.or(facts.owner) {
        if owner != facts.agent_type {
            return Err(RegisterRefusal::HeldByAnotherType(owner.to_string()));
        }
    }
    let itself = facts.live_holder.is_some() && facts.holders_own_token;
    match facts.live_holder {
        _ if facts.name_held_a_job && (facts.single_job || !itself) => {
            Err(RegisterRefusal::NameHeldAJob)
        }
        Some(_) if !itself => Err(RegisterRefusal::HeldByLiveAgent),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        state: AgentState,
        job_id: &str,
        result: Option<JobResult>,
        interrupted_at: i64,
    ) -> SyncRequest {
        SyncRequest {
            state,
            job_id: job_id.into(),
            job_result: result,
            interrupted_at,
            flotilla_fault: None,
        }
    }

    fn job(id: &str, state: JobState, stop_requested: bool) -> Option<AssignedJob> {
        Some(AssignedJob {
            id: id.into(),
            state,
            stop_requested,
        })
    }

    #[test]
    fn job_state_machine() {
        use JobEvent::*;
        use JobState::*;
        let table = [
            (Queued, Assign, Some(Assigned)),
            (Queued, Start, None),
            (Queued, Finish, None),
            (Queued, RequestStop, Some(Finished)),
            (Assigned, Start, Some(Running)),
            (Assigned, RequestStop, Some(Stopping)),
            (Running, RequestStop, Some(Stopping)),
            (Running, Finish, Some(Finished)),
            (Stopping, Finish, Some(Finished)),
            (Running, Requeue, Some(Queued)),
            (Finished, Requeue, None),
            (Finished, Finish, None),
            (Finished, RequestStop, None),
            (Running, Assign, None),
        ];
        for (state, event, expected) in table {
            assert_eq!(
                next_job_state(state, event),
                expected,
                "{state:?} + {event:?}"
            );
        }
    }

    /// name, facts, report, next queued job, expected reply, expected job change
    type DecisionRow = (
        &'static str,
        AgentFacts,
        SyncRequest,
        Option<&'static str>,
        Reply,
        Option<JobChange>,
    );

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per scenario, read top to bottom
    fn sync_decisions() {
        use AgentState::*;
        let now = 1_000;
        let idle = AgentFacts {
            idle_since: now - 5,
            ..AgentFacts::default()
        };
        let running = AgentFacts {
            job: job("J", JobState::Running, false),
            ..idle.clone()
        };
        let rows: Vec<DecisionRow> = vec![
            (
                "idle, nothing queued",
                idle.clone(),
                report(WaitingForJobs, "", None, 0),
                None,
                Reply::Continue,
                None,
            ),
            (
                "idle, work queued",
                idle.clone(),
                report(WaitingForJobs, "", None, 0),
                Some("N"),
                Reply::Assign("N".into()),
                None,
            ),
            (
                "interrupted while waiting",
                idle.clone(),
                report(WaitingForJobs, "", None, now),
                Some("N"),
                Reply::Shutdown(ShutdownReason::Interrupted),
                None,
            ),
            (
                "operator shutdown",
                AgentFacts {
                    shutdown_requested: true,
                    ..idle.clone()
                },
                report(WaitingForJobs, "", None, 0),
                Some("N"),
                Reply::Shutdown(ShutdownReason::Requested),
                None,
            ),
            (
                "idle timeout not reached",
                AgentFacts {
                    idle_timeout: 10,
                    ..idle.clone()
                },
                report(WaitingForJobs, "", None, 0),
                None,
                Reply::Continue,
                None,
            ),
            (
                "idle timeout passed",
                AgentFacts {
                    idle_timeout: 4,
                    ..idle.clone()
                },
                report(WaitingForJobs, "", None, 0),
                Some("N"),
                Reply::Shutdown(ShutdownReason::Idle),
                None,
            ),
            (
                "single job already done",
                AgentFacts {
                    single_job: true,
                    jobs_finished: 1,
                    ..idle.clone()
                },
                report(WaitingForJobs, "", None, 0),
                Some("N"),
                Reply::Shutdown(ShutdownReason::JobFinished),
                None,
            ),
            (
                "run-job answer was lost",
                AgentFacts {
                    job: job("J", JobState::Assigned, false),
                    ..idle.clone()
                },
                report(WaitingForJobs, "", None, 0),
                Some("N"),
                Reply::RunJob("J".into()),
                None,
            ),
            (
                "agent forgot a running job",
                running.clone(),
                report(WaitingForJobs, "", None, 0),
                Some("N"),
                Reply::Continue,
                Some(JobChange::Lost("J".into())),
            ),
            (
                "starting reported",
                AgentFacts {
                    job: job("J", JobState::Assigned, false),
                    ..idle.clone()
                },
                report(StartingJob, "J", None, 0),
                None,
                Reply::Continue,
                Some(JobChange::Started("J".into())),
            ),
            (
                "running",
                running.clone(),
                report(RunningJob, "J", None, 0),
                None,
                Reply::Continue,
                None,
            ),
            (
                "user stop",
                AgentFacts {
                    job: job("J", JobState::Stopping, true),
                    ..idle.clone()
                },
                report(RunningJob, "J", None, 0),
                None,
                Reply::StopJob("J".into()),
                None,
            ),
            (
                "unknown job",
                running.clone(),
                report(RunningJob, "X", None, 0),
                None,
                Reply::StopJob("X".into()),
                None,
            ),
            (
                "interrupted, grace 0",
                running.clone(),
                report(RunningJob, "J", None, now),
                None,
                Reply::StopJob("J".into()),
                None,
            ),
            (
                "interrupted, in grace",
                AgentFacts {
                    interruption_grace_period: 30,
                    ..running.clone()
                },
                report(RunningJob, "J", None, now - 10),
                None,
                Reply::Continue,
                None,
            ),
            (
                "interrupted, grace over",
                AgentFacts {
                    interruption_grace_period: 30,
                    ..running.clone()
                },
                report(RunningJob, "J", None, now - 30),
                None,
                Reply::StopJob("J".into()),
                None,
            ),
            (
                "stopping",
                running.clone(),
                report(StoppingJob, "J", None, 0),
                None,
                Reply::Continue,
                None,
            ),
            (
                "finished",
                running.clone(),
                report(FinishedJob, "J", Some(JobResult::Passed), 0),
                Some("N"),
                Reply::WaitForJobs,
                Some(JobChange::Finished {
                    job_id: "J".into(),
                    result: JobResult::Passed,
                }),
            ),
            (
                "finished without a result",
                running.clone(),
                report(FinishedJob, "J", None, 0),
                Some("N"),
                Reply::WaitForJobs,
                Some(JobChange::Finished {
                    job_id: "J".into(),
                    result: JobResult::Failed,
                }),
            ),
            (
                "finished, single job",
                AgentFacts {
                    single_job: true,
                    ..running.clone()
                },
                report(FinishedJob, "J", Some(JobResult::Failed), 0),
                Some("N"),
                Reply::Shutdown(ShutdownReason::JobFinished),
                Some(JobChange::Finished {
                    job_id: "J".into(),
                    result: JobResult::Failed,
                }),
            ),
            (
                "finished, interrupted",
                running.clone(),
                report(FinishedJob, "J", Some(JobResult::Stopped), now),
                Some("N"),
                Reply::Shutdown(ShutdownReason::Interrupted),
                Some(JobChange::Finished {
                    job_id: "J".into(),
                    result: JobResult::Stopped,
                }),
            ),
            (
                "finished reported again",
                AgentFacts {
                    job: None,
                    jobs_finished: 1,
                    ..idle.clone()
                },
                report(FinishedJob, "J", Some(JobResult::Passed), 0),
                Some("N"),
                Reply::WaitForJobs,
                None,
            ),
        ];
        for (name, facts, request, next_job, reply, change) in rows {
            assert_eq!(
                decide_sync(&facts, &request, now, next_job),
                (reply, change),
                "{name}"
            );
        }
    }

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per scenario, read top to bottom
    fn register_decisions() {
        use RegisterRefusal::*;
        let fresh = RegisterFacts {
            agent_type: "a",
            single_job: true,
            live_holder: None,
            owner: None,
            holders_own_token: false,
            name_held_a_job: false,
            instance_registered_before: false,
            single_job_only: false,
        };
        let cases: Vec<(&str, RegisterFacts, Result<(), RegisterRefusal>)> = vec![
            ("a new name", fresh, Ok(())),
            (
                "a name that held a job, single job",
                RegisterFacts {
                    name_held_a_job: true,
                    ..fresh
                },
                Err(NameHeldAJob),
            ),
            (
                "a name that held a job, claiming many jobs",
                RegisterFacts {
                    name_held_a_job: true,
                    single_job: false,
                    ..fresh
                },
                Err(NameHeldAJob),
            ),
            (
                "a live multi-job agent going on under its name with its own token",
                RegisterFacts {
                    name_held_a_job: true,
                    single_job: false,
                    live_holder: Some("a"),
                    holders_own_token: true,
                    ..fresh
                },
                Ok(()),
            ),
            (
                "a multi-job agent of a single-job-only type",
                RegisterFacts {
                    single_job_only: true,
                    single_job: false,
                    ..fresh
                },
                Err(MultiJobNotAllowed),
            ),
            (
                "a single-job agent of a single-job-only type",
                RegisterFacts {
                    single_job_only: true,
                    ..fresh
                },
                Ok(()),
            ),
            (
                "a lost agent's name, by another type",
                RegisterFacts {
                    owner: Some("b"),
                    ..fresh
                },
                Err(HeldByAnotherType("b".into())),
            ),
            (
                "a departed agent's name, by its own type",
                RegisterFacts {
                    owner: Some("a"),
                    ..fresh
                },
                Ok(()),
            ),
            (
                "the holder's own token, after its job",
                RegisterFacts {
                    name_held_a_job: true,
                    live_holder: Some("a"),
                    holders_own_token: true,
                    ..fresh
                },
                Err(NameHeldAJob),
            ),
            (
                "the holder's own token, no job yet",
                RegisterFacts {
                    live_holder: Some("a"),
                    holders_own_token: true,
                    ..fresh
                },
                Ok(()),
            ),
            (
                "a live agent of the same type",
                RegisterFacts {
                    live_holder: Some("a"),
                    ..fresh
                },
                Err(HeldByLiveAgent),
            ),
            (
                "a live agent of another type",
                RegisterFacts {
                    live_holder: Some("b"),
                    ..fresh
                },
                Err(HeldByAnotherType("b".into())),
            ),
            (
                "a replayed instance",
                RegisterFacts {
                    instance_registered_before: true,
                    ..fresh
                },
                Err(InstanceRegisteredBefore),
            ),
        ];
        for (case, facts, expected) in cases {
            assert_eq!(decide_register(&facts), expected, "{case}");
        }
    }

    #[test]
    fn healed_agent_decisions() {
        use HealRefusal::*;
        let lost_with = |state: Option<JobState>| HealFacts {
            silent_for: 90,
            give_up_after: 600,
            name_taken: false,
            job: Some(LostJob {
                id: "J".into(),
                state,
            }),
        };
        type Row = (&'static str, HealFacts, Result<Option<String>, HealRefusal>);
        let rows: Vec<Row> = vec![
            (
                "job re-queued, nobody took it: resume and take it back",
                lost_with(Some(JobState::Queued)),
                Ok(Some("J".into())),
            ),
            (
                "job handed to another agent",
                lost_with(Some(JobState::Assigned)),
                Err(JobHandedOver),
            ),
            (
                "job running on another agent",
                lost_with(Some(JobState::Running)),
                Err(JobHandedOver),
            ),
            (
                "job being stopped on another agent",
                lost_with(Some(JobState::Stopping)),
                Err(JobHandedOver),
            ),
            (
                "job failed when the agent was lost (no re-queue left), or finished elsewhere",
                lost_with(None),
                Err(JobFinished),
            ),
            (
                "an idle agent comes back",
                HealFacts {
                    job: None,
                    ..lost_with(None)
                },
                Ok(None),
            ),
            (
                "silent exactly the give-up time: still may resume",
                HealFacts {
                    silent_for: 600,
                    ..lost_with(Some(JobState::Queued))
                },
                Ok(Some("J".into())),
            ),
            (
                "silent past the give-up time",
                HealFacts {
                    silent_for: 601,
                    ..lost_with(Some(JobState::Queued))
                },
                Err(PastGiveUp),
            ),
            (
                "its name was taken by a new agent",
                HealFacts {
                    name_taken: true,
                    ..lost_with(Some(JobState::Queued))
                },
                Err(NameTaken),
            ),
        ];
        for (name, facts, expected) in rows {
            assert_eq!(decide_healed(&facts), expected, "{name}");
        }
    }

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per case, read top to bottom
    fn requeue_policy() {
        let stopped = FinishFacts {
            result: JobResult::Stopped,
            user_stopped: false,
            agent_interrupted: true,
            machine_fault: false,
            requeues_done: 0,
            requeues_allowed: 1,
        };
        let faulted = FinishFacts {
            machine_fault: true,
            ..stopped
        };
        let rows = [
            ("stopped by an interruption", stopped, true),
            (
                "re-queues used up",
                FinishFacts {
                    requeues_done: 1,
                    ..stopped
                },
                false,
            ),
            (
                "a user stop is final",
                FinishFacts {
                    user_stopped: true,
                    ..stopped
                },
                false,
            ),
            (
                "a failed job is never re-run",
                FinishFacts {
                    result: JobResult::Failed,
                    ..stopped
                },
                false,
            ),
            (
                "stopped, not interrupted",
                FinishFacts {
                    agent_interrupted: false,
                    ..stopped
                },
                false,
            ),
            ("stopped by a hardware fault", faulted, true),
            (
                "failed on a machine that faulted",
                FinishFacts {
                    result: JobResult::Failed,
                    ..faulted
                },
                true,
            ),
            (
                "passed on a machine that faulted",
                FinishFacts {
                    result: JobResult::Passed,
                    ..faulted
                },
                false,
            ),
            (
                "a fault does not lift the retry limit",
                FinishFacts {
                    requeues_done: 1,
                    ..faulted
                },
                false,
            ),
            (
                "a user stop is final, fault or not",
                FinishFacts {
                    user_stopped: true,
                    ..faulted
                },
                false,
            ),
        ];
        for (name, facts, expected) in rows {
            assert_eq!(requeue_after_finish(&facts), expected, "{name}");
        }
    }
}
