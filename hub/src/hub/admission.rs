//! What the hub checks before it reads a request's body (the API asks first, `api.rs`), and the
//! bounds on what a registration may store. A client that holds no valid token costs a lookup in
//! memory (on a shared store, at most one catch-up with other replicas, shared by every request
//! that waited for it: [`Hub::locked`]); one that holds a registration token cannot store more
//! than [`RegistrationLimits`] allows per agent, nor keep more than `max_agents_per_type` live
//! agents of its type.

use super::memory::Core;
use super::{logs, Hub, HubError, HubResult, Invalid};
use protocol::RegisterRequest;

/// The largest value a registration may carry in each field (bytes), and the longest GPU list.
/// An instance has at most 16 GPUs today (p5, p4d: 8; a few inference types 16).
pub(crate) struct RegistrationLimits;

impl RegistrationLimits {
    pub(crate) const NAME: usize = 255;
    pub(crate) const HOSTNAME: usize = 255;
    pub(crate) const VERSION: usize = 64;
    pub(crate) const OS: usize = 128;
    pub(crate) const ARCH: usize = 32;
    pub(crate) const JOB_ID: usize = 64;
    pub(crate) const GPUS: usize = 64;
    pub(crate) const GPU_FIELD: usize = 128;
    /// The GPU health gate's checks (the agent runs about eight) and each one's text.
    pub(crate) const GATE_CHECKS: usize = 32;
    pub(crate) const GATE_FIELD: usize = 512;
    /// An instance identity document is about 500 bytes, its signature about 350.
    pub(crate) const IDENTITY: usize = 8 * 1024;
}

/// A request the API checks before it reads the body: who asks, for what.
#[derive(Debug, Clone)]
pub enum Admission {
    /// A registration token, or a live agent's own token (re-registering).
    Register { token: String },
    /// A live agent's token, or a lost one's within its give-up time (it may heal): sync, job
    /// request, log-token refresh, disconnect.
    Agent { token: String },
    /// An agent type's registration token: the queue's metrics, the type's agents.
    Type { token: String },
    /// A live job and its unexpired log token.
    LogPush { job_id: String, bearer: String },
}

impl Admission {
    /// Memory's answer as a first look: admitted or unknown.
    fn look(&self, core: &Core, now: i64) -> FirstLook {
        match self.check(core, now) {
            Ok(()) => FirstLook::Admitted,
            Err(_) => FirstLook::Unknown,
        }
    }

    /// The answer memory gives (a pure function of the live state and the time).
    fn check(&self, core: &Core, now: i64) -> HubResult<()> {
        let known = match self {
            Admission::Register { token } => {
                core.type_of_token(token).is_ok() || core.agent(token).is_ok()
            }
            Admission::Type { token } => core.type_of_token(token).is_ok(),
            Admission::Agent { token } => {
                let hash = crate::tokens::hash(token);
                core.agent_by_token.contains_key(&hash) || core.lost.contains_key(&hash)
            }
            Admission::LogPush { job_id, bearer } => {
                let Some(job) = core.jobs.get(job_id) else {
                    return Err(HubError::JobNotRunning {
                        job_id: job_id.clone(),
                    });
                };
                logs::log_token_valid(&job.row, bearer, now)
            }
        };
        if known {
            Ok(())
        } else {
            Err(HubError::Unauthorized)
        }
    }
}

/// What memory says of a request without waiting for the lock or the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstLook {
    /// Known: admitted (a known token needs nothing more).
    Admitted,
    /// Memory does not know the token or job: [`Hub::admit_since`] decides, catching up with
    /// other replicas if it must.
    Unknown,
    /// The lock was busy: [`Hub::admit_since`] decides.
    Busy,
}

impl Hub {
    /// What memory says of the request right now, without waiting: the usual request (a known
    /// token) is admitted on the async side at the cost of a lookup.
    pub(crate) fn first_look(&self, admission: &Admission, now: i64) -> FirstLook {
        match self.inner.try_lock() {
            Ok(guard) => admission.look(&guard.core, now),
            Err(_) => FirstLook::Busy,
        }
    }

    /// What memory says of the request, waiting for the lock (the blocking side's first look
    /// when [`Hub::first_look`] found the lock busy); never [`FirstLook::Busy`].
    pub fn look(&self, admission: &Admission, now: i64) -> FirstLook {
        admission.look(&self.lock().core, now)
    }

    /// The catch-up ticket to pass to [`Hub::admit_since`], taken when the request arrived.
    pub fn arrival(&self) -> u64 {
        self.catch_ups_begun
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the request that arrived at `arrived` ([`Hub::arrival`]) is admitted: memory's
    /// answer, caught up with other replicas first when it does not know the token and no
    /// catch-up has begun and succeeded since the request arrived (`Hub::locked_since`).
    pub(crate) fn admit_since(
        &self,
        admission: &Admission,
        arrived: u64,
        now: i64,
    ) -> HubResult<()> {
        self.locked_since(arrived, now, |_, core| admission.check(core, now))
    }

    /// Turns for requests memory did not know (one at a time): a flood of made-up tokens
    /// queues here, on the async side, and takes one of [`super::CALLERS`] at most.
    pub(crate) fn strangers(&self) -> &std::sync::Arc<tokio::sync::Semaphore> {
        &self.strangers
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
        return Err(Invalid::TooManyGpus {
            count: request.flotilla_gpus.len(),
            max: RegistrationLimits::GPUS,
        }
        .into());
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
    if let Some(gate) = &request.flotilla_gpu_gate {
        check_gpu_gate(gate)?;
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

/// The GPU health gate's report: a bounded number of checks, each with bounded text.
fn check_gpu_gate(gate: &protocol::GpuGate) -> HubResult<()> {
    if gate.checks.len() > RegistrationLimits::GATE_CHECKS {
        return Err(too_long(
            "flotilla_gpu_gate.checks (in entries)",
            RegistrationLimits::GATE_CHECKS,
        ));
    }
    let longest = gate
        .checks
        .iter()
        .map(|check| check.name.len().max(check.detail.len()))
        .max()
        .unwrap_or(0);
    match longest > RegistrationLimits::GATE_FIELD {
        true => Err(too_long(
            "a GPU gate check's name or detail",
            RegistrationLimits::GATE_FIELD,
        )),
        false => Ok(()),
    }
}

fn too_long(field: &'static str, limit: usize) -> HubError {
    Invalid::FieldTooLong { field, limit }.into()
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
        return Err(HubError::AgentTypeFull {
            agent_type: agent_type.to_string(),
            live,
        });
    }
    Ok(())
}
