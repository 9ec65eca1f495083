//! Wire types of Semaphore's self-hosted agent protocol (spec `semaphore-agent-protocol.md` §2, §4, §6).
//!
//! Every part of Flotilla speaks through these types: the agent as a client, the hub as a server,
//! the scaler as a metrics reader. The crate does no I/O, so each shape is tested in isolation
//! against the spec's literal JSON.

pub mod control;
pub mod events;
pub mod gojson;
pub mod job;
pub mod metrics;
pub mod spec;

pub use control::{
    AgentState, GpuInfo, JobResult, RefreshResponse, RegisterRequest, RegisterResponse,
    ShutdownReason, SyncAction, SyncRequest, SyncResponse,
};
pub use events::LogEvent;
pub use job::{Callbacks, Command, Compose, Container, EnvVar, File, JobRequest, Logger};
pub use metrics::{AgentCounts, JobCounts, QueueMetrics};
pub use spec::{JobSpec, RetryPolicy};
