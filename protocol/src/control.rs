//! Control-plane messages (docs/protocol.md §2.3–§2.7): register, sync, refresh.
//!
//! Field order matches the upstream Go structs because the JSON the agent sends is compact and
//! ordered; decoding is tolerant (missing fields take zero values, unknown fields are ignored),
//! as Go's `encoding/json` is.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Body of `POST /api/v1/self_hosted_agents/register`. All fields are always present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RegisterRequest {
    pub name: String,
    pub version: String,
    pub pid: i64,
    pub os: String,
    pub arch: String,
    pub hostname: String,
    pub single_job: bool,
    pub idle_timeout: i64,
    pub interruption_grace_period: i64,
    pub job_id: String,
    /// Flotilla extension, sent only when the agent is told to report its GPUs (Semaphore's
    /// servers never see it; absent when empty, so the body is upstream's byte for byte).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flotilla_gpus: Vec<GpuInfo>,
    /// Flotilla extension, sent only by an agent started with `--ec2`: the instance's signed
    /// identity, which a hub agent type may require (absent otherwise, so the body stays
    /// upstream's byte for byte).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flotilla_instance_identity: Option<InstanceIdentity>,
    /// Flotilla extension, sent with `flotilla_gpus`: what the GPU health gate checked before
    /// this registration (an agent that failed it never registers, so `passed` is true here
    /// unless the gate was told only to warn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flotilla_gpu_gate: Option<GpuGate>,
}

/// The GPU health gate's checks, as an agent reports them at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct GpuGate {
    pub passed: bool,
    pub checks: Vec<GpuGateCheck>,
}

/// One check of the GPU health gate: its name, whether it passed, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct GpuGateCheck {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// An EC2 instance identity document exactly as IMDS serves it
/// (`/latest/dynamic/instance-identity/document`) and its base64 RSA-SHA256 signature
/// (`/latest/dynamic/instance-identity/signature`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceIdentity {
    pub document: String,
    pub signature: String,
}

/// An NVIDIA GPU as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub memory_mib: u64,
    pub driver: String,
}

/// Register answer. Servers may omit either field (the Ruby reference hub does); the agent then
/// adopts the empty values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RegisterResponse {
    pub name: String,
    pub token: String,
}

/// Body of `POST .../sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SyncRequest {
    pub state: AgentState,
    pub job_id: String,
    #[serde(with = "optional_result")]
    pub job_result: Option<JobResult>,
    /// Unix seconds at which SIGTERM/SIGINT arrived, or 0. Sticky once set.
    pub interrupted_at: i64,
    /// Flotilla extension: the hardware fault that made this agent stop its job and leave
    /// (e.g. "GPU fault on i-0abc: Xid 79 on PCI 0000:00:1e (GPU has fallen off the bus)"), sent
    /// with `interrupted_at` from the fault on (absent otherwise, so the body is upstream's byte
    /// for byte; Semaphore's servers ignore it and see an interruption).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flotilla_fault: Option<String>,
}

/// Answer to a sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SyncResponse {
    pub action: SyncAction,
    pub job_id: String,
    pub shutdown_reason: ShutdownReason,
    /// Milliseconds until the next sync; used only when > 0.
    pub next_sync_after: i64,
}

/// Body of the `POST .../refresh` answer: a new log-push token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RefreshResponse {
    pub token: String,
}

/// The agent's state as reported in every sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    #[default]
    WaitingForJobs,
    StartingJob,
    RunningJob,
    StoppingJob,
    FinishedJob,
}

impl AgentState {
    /// Every state, in the order an agent goes through them.
    pub const ALL: [AgentState; 5] = [
        AgentState::WaitingForJobs,
        AgentState::StartingJob,
        AgentState::RunningJob,
        AgentState::StoppingJob,
        AgentState::FinishedJob,
    ];

    /// The state a wire name names, if any.
    pub fn parse(text: &str) -> Option<AgentState> {
        AgentState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::WaitingForJobs => "waiting-for-jobs",
            AgentState::StartingJob => "starting-job",
            AgentState::RunningJob => "running-job",
            AgentState::StoppingJob => "stopping-job",
            AgentState::FinishedJob => "finished-job",
        }
    }
}

/// A finished job's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobResult {
    Passed,
    Failed,
    Stopped,
}

impl JobResult {
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Passed => "passed",
            JobResult::Failed => "failed",
            JobResult::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<JobResult> {
        match text {
            "passed" => Some(JobResult::Passed),
            "failed" => Some(JobResult::Failed),
            "stopped" => Some(JobResult::Stopped),
            _ => None,
        }
    }
}

impl std::fmt::Display for JobResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `job_result` is `""` until a job finishes.
mod optional_result {
    use super::JobResult;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<JobResult>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.map(JobResult::as_str).unwrap_or(""))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<JobResult>, D::Error> {
        let text = String::deserialize(d)?;
        Ok(JobResult::parse(&text))
    }
}

/// What the server tells the agent to do. An unknown or empty action is ignored by the agent,
/// so it decodes to [`SyncAction::Ignored`] carrying the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncAction {
    Continue,
    RunJob,
    StopJob,
    Shutdown,
    WaitForJobs,
    Ignored(String),
}

impl SyncAction {
    pub fn as_str(&self) -> &str {
        match self {
            SyncAction::Continue => "continue",
            SyncAction::RunJob => "run-job",
            SyncAction::StopJob => "stop-job",
            SyncAction::Shutdown => "shutdown",
            SyncAction::WaitForJobs => "wait-for-jobs",
            SyncAction::Ignored(text) => text,
        }
    }

    pub fn parse(text: &str) -> SyncAction {
        match text {
            "continue" => SyncAction::Continue,
            "run-job" => SyncAction::RunJob,
            "stop-job" => SyncAction::StopJob,
            "shutdown" => SyncAction::Shutdown,
            "wait-for-jobs" => SyncAction::WaitForJobs,
            other => SyncAction::Ignored(other.to_string()),
        }
    }
}

/// A missing `action` decodes as an empty, ignored one.
impl Default for SyncAction {
    fn default() -> Self {
        SyncAction::Ignored(String::new())
    }
}

impl Serialize for SyncAction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SyncAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SyncAction::parse(&String::deserialize(d)?))
    }
}

/// Why the server (or the agent itself) shuts the agent down (docs/protocol.md §3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ShutdownReason {
    Idle,
    JobFinished,
    Requested,
    Interrupted,
    /// Anything the agent does not recognise, including a missing reason.
    #[default]
    Unknown,
    /// Agent-side only: no successful sync for 10 minutes. Never sent by a server.
    UnableToSync,
}

impl ShutdownReason {
    /// The string used in the `shutdown_reason` field of a sync response.
    pub fn api_str(self) -> &'static str {
        match self {
            ShutdownReason::Idle => "idle",
            ShutdownReason::JobFinished => "job-finished",
            ShutdownReason::Requested => "requested",
            ShutdownReason::Interrupted => "interrupted",
            ShutdownReason::Unknown => "",
            ShutdownReason::UnableToSync => "unable-to-sync",
        }
    }

    /// `SEMAPHORE_AGENT_SHUTDOWN_REASON` as the shutdown hook sees it.
    pub fn env_value(self) -> &'static str {
        match self {
            ShutdownReason::Idle => "IDLE",
            ShutdownReason::JobFinished => "JOB_FINISHED",
            ShutdownReason::Requested => "REQUESTED",
            ShutdownReason::Interrupted => "INTERRUPTED",
            ShutdownReason::Unknown => "UNKNOWN",
            ShutdownReason::UnableToSync => "UNABLE_TO_SYNC",
        }
    }

    /// Maps the API string; anything unrecognised is `Unknown` (as upstream does).
    pub fn from_api(text: &str) -> ShutdownReason {
        match text {
            "idle" => ShutdownReason::Idle,
            "job-finished" => ShutdownReason::JobFinished,
            "requested" => ShutdownReason::Requested,
            "interrupted" => ShutdownReason::Interrupted,
            _ => ShutdownReason::Unknown,
        }
    }

    /// The agent's exit code for this reason.
    pub fn exit_code(self) -> i32 {
        if self == ShutdownReason::UnableToSync {
            1
        } else {
            0
        }
    }
}

impl Serialize for ShutdownReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.api_str())
    }
}

impl<'de> Deserialize<'de> for ShutdownReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ShutdownReason::from_api(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_request_matches_spec_field_order() {
        let request = RegisterRequest {
            name: "agent-name-1".into(),
            version: "v1.0.2".into(),
            pid: 12345,
            os: "Ubuntu 22.04.4 LTS".into(),
            arch: "x86_64".into(),
            hostname: "box".into(),
            single_job: false,
            idle_timeout: 0,
            interruption_grace_period: 0,
            job_id: String::new(),
            flotilla_gpus: Vec::new(),
            flotilla_instance_identity: None,
            flotilla_gpu_gate: None,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"name":"agent-name-1","version":"v1.0.2","pid":12345,"os":"Ubuntu 22.04.4 LTS","arch":"x86_64","hostname":"box","single_job":false,"idle_timeout":0,"interruption_grace_period":0,"job_id":""}"#
        );
        let back: RegisterRequest =
            serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn gpu_extension_is_sent_only_when_there_are_gpus() {
        let gpu = GpuInfo {
            index: 0,
            name: "NVIDIA H100".into(),
            uuid: "GPU-1".into(),
            memory_mib: 81559,
            driver: "550".into(),
        };
        let request = RegisterRequest {
            name: "a".into(),
            flotilla_gpus: vec![gpu.clone()],
            ..RegisterRequest::default()
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.ends_with(r#","job_id":"","flotilla_gpus":[{"index":0,"name":"NVIDIA H100","uuid":"GPU-1","memory_mib":81559,"driver":"550"}]}"#), "{text}");
        assert_eq!(
            serde_json::from_str::<RegisterRequest>(&text)
                .unwrap()
                .flotilla_gpus,
            vec![gpu]
        );
        assert!(!serde_json::to_string(&RegisterRequest::default())
            .unwrap()
            .contains("flotilla"));
    }

    #[test]
    fn instance_identity_extension_is_sent_only_when_present() {
        let identity = InstanceIdentity {
            document: "{\"instanceId\":\"i-1\"}".into(),
            signature: "c2ln".into(),
        };
        let request = RegisterRequest {
            name: "a".into(),
            flotilla_instance_identity: Some(identity.clone()),
            ..RegisterRequest::default()
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.ends_with(r#","job_id":"","flotilla_instance_identity":{"document":"{\"instanceId\":\"i-1\"}","signature":"c2ln"}}"#), "{text}");
        let back: RegisterRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.flotilla_instance_identity, Some(identity));
        let plain = serde_json::to_string(&RegisterRequest::default()).unwrap();
        assert!(!plain.contains("identity"), "{plain}");
    }

    #[test]
    fn register_response_tolerates_reference_hub_shape() {
        let response: RegisterResponse =
            serde_json::from_str(r#"{"access_token":"dsjfaklsd123412341"}"#).unwrap();
        assert_eq!(
            response,
            RegisterResponse {
                name: String::new(),
                token: String::new()
            }
        );
        let response: RegisterResponse =
            serde_json::from_str(r#"{"name":"n","token":"t","extra":[1]}"#).unwrap();
        assert_eq!(response.name, "n");
        assert_eq!(response.token, "t");
    }

    #[test]
    fn sync_request_round_trips_spec_example() {
        let literal =
            r#"{"state":"waiting-for-jobs","job_id":"","job_result":"","interrupted_at":0}"#;
        let request: SyncRequest = serde_json::from_str(literal).unwrap();
        assert_eq!(request, SyncRequest::default());
        assert_eq!(serde_json::to_string(&request).unwrap(), literal);

        let finished = SyncRequest {
            state: AgentState::FinishedJob,
            job_id: "J".into(),
            job_result: Some(JobResult::Stopped),
            interrupted_at: 1_700_000_000,
            flotilla_fault: None,
        };
        let text = serde_json::to_string(&finished).unwrap();
        assert_eq!(
            text,
            r#"{"state":"finished-job","job_id":"J","job_result":"stopped","interrupted_at":1700000000}"#
        );
        assert_eq!(
            serde_json::from_str::<SyncRequest>(&text).unwrap(),
            finished
        );
    }

    #[test]
    fn sync_response_round_trips_spec_example_and_tolerates_unknowns() {
        let literal =
            r#"{"action":"run-job","job_id":"<id>","shutdown_reason":"","next_sync_after":1000}"#;
        let response: SyncResponse = serde_json::from_str(literal).unwrap();
        assert_eq!(response.action, SyncAction::RunJob);
        assert_eq!(response.job_id, "<id>");
        assert_eq!(response.shutdown_reason, ShutdownReason::Unknown);
        assert_eq!(response.next_sync_after, 1000);
        assert_eq!(serde_json::to_string(&response).unwrap(), literal);

        let odd: SyncResponse =
            serde_json::from_str(r#"{"action":"dance","shutdown_reason":"bored","x":1}"#).unwrap();
        assert_eq!(odd.action, SyncAction::Ignored("dance".into()));
        assert_eq!(odd.shutdown_reason, ShutdownReason::Unknown);
        assert_eq!(odd.next_sync_after, 0);

        let empty: SyncResponse = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.action, SyncAction::Ignored(String::new()));
    }

    #[test]
    fn every_action_and_reason_round_trips() {
        for action in [
            "continue",
            "run-job",
            "stop-job",
            "shutdown",
            "wait-for-jobs",
        ] {
            assert_eq!(SyncAction::parse(action).as_str(), action);
            assert!(!matches!(SyncAction::parse(action), SyncAction::Ignored(_)));
        }
        let table = [
            ("idle", "IDLE"),
            ("job-finished", "JOB_FINISHED"),
            ("requested", "REQUESTED"),
            ("interrupted", "INTERRUPTED"),
            ("whatever", "UNKNOWN"),
            ("", "UNKNOWN"),
        ];
        for (api, env) in table {
            let reason = ShutdownReason::from_api(api);
            assert_eq!(reason.env_value(), env);
            assert_eq!(reason.exit_code(), 0);
        }
        assert_eq!(ShutdownReason::UnableToSync.exit_code(), 1);
        assert_eq!(ShutdownReason::UnableToSync.env_value(), "UNABLE_TO_SYNC");
    }

    #[test]
    fn refresh_response_decodes() {
        let response: RefreshResponse = serde_json::from_str(r#"{"token":"new-token"}"#).unwrap();
        assert_eq!(response.token, "new-token");
    }

    #[test]
    fn every_agent_state_parses_back_from_its_wire_name() {
        for state in AgentState::ALL {
            assert_eq!(AgentState::parse(state.as_str()), Some(state));
            let wire = serde_json::to_string(&state).unwrap();
            assert_eq!(wire, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(AgentState::parse("lost"), None);
    }
}
