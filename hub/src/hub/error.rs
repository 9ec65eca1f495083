//! What the hub refuses, named by situation: "no job X", "the agent type is full", "a line of the
//! batch is not JSON". The core says what happened; how that reads on the wire is the edge's
//! business (`api::status_of`, the one table of HTTP statuses), and whether another replica may
//! have done what this one has not seen yet is a property of the situation
//! ([`HubError::may_be_unseen`]), not of the status it maps to.

use crate::identity::IdentityError;
use crate::rules::RegisterRefusal;
use crate::store::StoreError;
use protocol::spec::SpecError;
use protocol::views::UnknownJobState;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HubError {
    /// No such token, or a token that does not open this.
    #[error("unauthorized")]
    Unauthorized,
    /// An instance identity that does not check out.
    #[error("registration refused: {0}")]
    IdentityRefused(#[source] IdentityError),
    /// What the request says is malformed or out of bounds, whatever the hub holds.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("no job {job_id}")]
    NoSuchJob { job_id: String },
    /// The job exists (or did) but is not among the live ones this replica holds.
    #[error("job {job_id} is not running")]
    JobNotRunning { job_id: String },
    #[error("job {job_id} is not assigned to this agent")]
    JobNotAssigned { job_id: String },
    #[error("the agent has no job")]
    AgentHasNoJob,
    #[error("no agent {name}")]
    NoSuchAgent { name: String },
    #[error("no agent type '{name}'")]
    NoSuchAgentType { name: String },
    /// A job submitted for a type that does not exist: the request is wrong, not the path.
    #[error("no agent type '{name}': create it first (scaler agent-types create {name})")]
    JobForUnknownAgentType { name: String },
    #[error("agent type '{name}' already exists")]
    AgentTypeExists { name: String },
    #[error("agent type '{name}' exists with another registration token (or the token is another type's)")]
    AgentTypeTokenMismatch { name: String },
    /// Another replica made the type between this one's look and its insert.
    #[error("agent type '{name}' was made meanwhile through another replica")]
    AgentTypeMadeElsewhere { name: String },
    /// The registration rules (`rules::decide_register`) refuse this agent.
    #[error("agent '{name}': {refusal}")]
    RegistrationRefused {
        name: String,
        refusal: RegisterRefusal,
    },
    /// A log push that would leave lines missing between what is stored and what it brings.
    #[error("start_from {start_from} leaves a gap: this attempt's log has {lines} lines")]
    LogGap { start_from: i64, lines: i64 },
    #[error("the job's log is full")]
    LogFull,
    /// The type has as many live agents as `--max-agents-per-type` allows.
    #[error(
        "agent type '{agent_type}' has {live} live agents, the most this hub allows \
         (--max-agents-per-type); retry when one has left"
    )]
    AgentTypeFull { agent_type: String, live: usize },
    /// The hub is shutting down: the call did not run (retry, elsewhere).
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request malformed or out of bounds on its face.
#[derive(Debug, Error)]
pub enum Invalid {
    #[error("agent type names are 1-64 characters of letters, digits, '-', '_' or '.'; got '{0}'")]
    AgentTypeName(String),
    /// An agent type's identity policy that could never admit anyone (`identity::check_policy`).
    #[error("{0}")]
    IdentityPolicy(String),
    #[error(transparent)]
    JobSpec(#[from] SpecError),
    /// A job spec that does not parse (the console's YAML form).
    #[error("the job spec is not valid: {0}")]
    JobSpecText(String),
    #[error("execution_time_limit must be more than 0 seconds")]
    ZeroTimeLimit,
    #[error("agent names that are URLs are not supported by this hub")]
    AgentNameIsUrl,
    #[error("{field} is longer than {limit} bytes")]
    FieldTooLong { field: &'static str, limit: usize },
    #[error("flotilla_gpus lists {count} GPUs; at most {max} are accepted")]
    TooManyGpus { count: usize, max: usize },
    #[error("line {line} of the batch is not JSON")]
    LogLineNotJson { line: usize },
    #[error("invalid JSON body: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(transparent)]
    JobState(#[from] UnknownJobState),
}

impl HubError {
    /// Whether this replica may refuse only because it has not yet seen what another replica
    /// wrote (a token, a job, an assignment, an agent, a type): on a shared store the operation
    /// catches up and runs again (`Hub::locked`). Every other refusal stands as it is.
    pub(crate) fn may_be_unseen(&self) -> bool {
        matches!(
            self,
            HubError::Unauthorized
                | HubError::NoSuchJob { .. }
                | HubError::JobNotRunning { .. }
                | HubError::JobNotAssigned { .. }
                | HubError::AgentHasNoJob
                | HubError::NoSuchAgent { .. }
                | HubError::NoSuchAgentType { .. }
                | HubError::AgentTypeMadeElsewhere { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_another_replica_may_have_done_is_retried_after_a_catch_up() {
        let job_id = || "j".to_string();
        let name = || "n".to_string();
        let table: [(HubError, bool); 12] = [
            (HubError::Unauthorized, true),
            (HubError::NoSuchJob { job_id: job_id() }, true),
            (HubError::JobNotRunning { job_id: job_id() }, true),
            (HubError::JobNotAssigned { job_id: job_id() }, true),
            (HubError::AgentHasNoJob, true),
            (HubError::NoSuchAgent { name: name() }, true),
            (HubError::AgentTypeMadeElsewhere { name: name() }, true),
            // The request itself is wrong, or what it meets is really there: no catch-up helps.
            (HubError::Invalid(Invalid::ZeroTimeLimit), false),
            (HubError::AgentTypeExists { name: name() }, false),
            (
                HubError::LogGap {
                    start_from: 5,
                    lines: 1,
                },
                false,
            ),
            (HubError::LogFull, false),
            (HubError::Store(StoreError::Conflict), false),
        ];
        for (error, unseen) in table {
            assert_eq!(error.may_be_unseen(), unseen, "{error:?}");
        }
    }
}
