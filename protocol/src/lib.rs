//! Wire types of Semaphore's self-hosted agent protocol (docs/protocol.md §2, §4, §6), and the
//! views of the hub's user API.
//!
//! Every part of Flotilla speaks through these types: the agent as a client, the hub as a server,
//! the scaler as a metrics reader and the CLI as a user-API client (`views`). The crate does no
//! I/O, so each shape is tested in isolation against the literal JSON of docs/protocol.md.

pub mod control;
pub mod events;
pub mod gojson;
pub mod job;
pub mod metrics;
pub mod spec;
pub mod views;

pub use control::{
    AgentState, GpuGate, GpuGateCheck, GpuInfo, InstanceIdentity, JobResult, RefreshResponse,
    RegisterRequest, RegisterResponse, ShutdownReason, SyncAction, SyncRequest, SyncResponse,
};
pub use events::LogEvent;
pub use job::{Callbacks, Command, Compose, Container, EnvVar, File, JobRequest, Logger};
pub use metrics::{AgentCounts, JobCounts, QueueMetrics};
pub use spec::{JobSpec, RetryPolicy};
pub use views::{AgentView, JobState, JobView, LogPage};

/// How long an agent keeps going without a successful sync before it gives up (stops its job
/// and exits with `UNABLE_TO_SYNC`, docs/protocol.md §3.9): upstream's 10 minutes. The one number
/// the agent (`--give-up-after`) and the hub (`--give-up-after`: how long it remembers a lost
/// agent so that one that comes back can resume) share; the hub's `--lost-after` must be shorter.
pub const GIVE_UP_AFTER_SECS: i64 = 600;
