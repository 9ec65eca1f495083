//! What the hub checks before it reads a request's body (the API asks first, `api.rs`), and the
//! bounds on what a registration may store. A client that holds no valid token costs a lookup in
//! memory (on a shared store, at most one catch-up with other replicas, shared by every request
//! that waited for it: [`Hub::locked`]); one that holds a registration token cannot store more
//! than [`RegistrationLimits`] allows per agent, nor keep more than `max_agents_per_type` live
//! agents of its type.

use super::memory::Core;
use super::{logs, Hub, HubError, HubResult};
use protocol::RegisterRequest;

/// The largest value a registration may carry in each field (bytes), and the longest GPU list.
/// An instance has at most 16 GPUs today (p5, p4d: 8; a few inference types 16).
pub struct RegistrationLimits;

impl RegistrationLimits {
    pub const NAME: usize = 255;
    pub const HOSTNAME: usize = 255;
    pub const VERSION: usize = 64;
    pub const OS: usize = 128;
    pub const ARCH: usize = 32;
    pub const JOB_ID: usize = 64;
    pub const GPUS: usize = 64;
    pub const GPU_FIELD: usize = 128;
    /// An instance identity document is about 500 bytes, its signature about 350.
    pub const IDENTITY: usize = 8 * 1024;
}

impl Hub {
    /// Whether `token` may register: a registration token, or a live agent's own (re-registering).
    pub fn admit_register(&self, token: &str, now: i64) -> HubResult<()> {
        self.locked(now, |_, core| {
            if core.type_of_token(token).is_ok() || core.agent(token).is_ok() {
                Ok(())
            } else {
                Err(HubError::Unauthorized)
            }
        })
    }

    /// Whether `token` may sync: a live agent's, or a lost one's within its give-up time (which
    /// may heal).
    pub fn admit_sync(&self, token: &str, now: i64) -> HubResult<()> {
        self.locked(now, |_, core| {
            let hash = crate::tokens::hash(token);
            if core.agent_by_token.contains_key(&hash) || core.lost.contains_key(&hash) {
                Ok(())
            } else {
                Err(HubError::Unauthorized)
            }
        })
    }

    /// Whether `bearer` may push to `job_id`'s log now: the job is live and the token is its
    /// unexpired log token.
    pub fn admit_log_push(&self, job_id: &str, bearer: &str, now: i64) -> HubResult<()> {
        self.locked(now, |_, core| {
            let Some(job) = core.jobs.get(job_id) else {
                return Err(HubError::NotFound(format!("job {job_id} is not running")));
            };
            if logs::log_token_valid(&job.row, bearer, now) {
                Ok(())
            } else {
                Err(HubError::Unauthorized)
            }
        })
    }
}

/// Refuses a registration whose fields exceed [`RegistrationLimits`] (400, naming the field).
pub(super) fn check_registration(request: &RegisterRequest) -> HubResult<()> {
    let fields = [
        ("name", request.name.len(), RegistrationLimits::NAME),
        (
            "hostname",
            request.hostname.len(),
            RegistrationLimits::HOSTNAME,
        ),
        (
            "version",
            request.version.len(),
            RegistrationLimits::VERSION,
        ),
        ("os", request.os.len(), RegistrationLimits::OS),
        ("arch", request.arch.len(), RegistrationLimits::ARCH),
        ("job_id", request.job_id.len(), RegistrationLimits::JOB_ID),
    ];
    for (field, length, limit) in fields {
        if length > limit {
            return Err(too_long(field, limit));
        }
    }
    if request.flotilla_gpus.len() > RegistrationLimits::GPUS {
        return Err(HubError::BadRequest(format!(
            "flotilla_gpus lists {} GPUs; at most {} are accepted",
            request.flotilla_gpus.len(),
            RegistrationLimits::GPUS
        )));
    }
    for gpu in &request.flotilla_gpus {
        let longest = [&gpu.name, &gpu.uuid, &gpu.driver]
            .iter()
            .map(|field| field.len())
            .max()
            .unwrap_or(0);
        if longest > RegistrationLimits::GPU_FIELD {
            return Err(too_long(
                "a GPU's name, uuid or driver",
                RegistrationLimits::GPU_FIELD,
            ));
        }
    }
    if let Some(identity) = &request.flotilla_instance_identity {
        if identity.document.len() + identity.signature.len() > RegistrationLimits::IDENTITY {
            return Err(too_long(
                "flotilla_instance_identity",
                RegistrationLimits::IDENTITY,
            ));
        }
    }
    Ok(())
}

fn too_long(field: &str, limit: usize) -> HubError {
    HubError::BadRequest(format!("{field} is longer than {limit} bytes"))
}

/// Refuses one more live agent of `agent_type` when it has `max` already (a re-registration
/// under a live name of the type replaces one, so it is let through).
pub(super) fn check_type_capacity(
    core: &Core,
    agent_type: &str,
    name: &str,
    max: usize,
) -> HubResult<()> {
    if core
        .agents
        .get(name)
        .is_some_and(|agent| agent.row.agent_type == agent_type)
    {
        return Ok(());
    }
    let live = core
        .agents
        .values()
        .filter(|agent| agent.row.agent_type == agent_type)
        .count();
    if live >= max {
        return Err(HubError::Limit(format!(
            "agent type '{agent_type}' has {live} live agents, the most this hub allows \
             (--max-agents-per-type); retry when one has left"
        )));
    }
    Ok(())
}
