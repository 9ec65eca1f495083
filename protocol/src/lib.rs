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
    AgentState, GpuInfo, InstanceIdentity, JobResult, RefreshResponse, RegisterRequest,
    RegisterResponse, ShutdownReason, SyncAction, SyncRequest, SyncResponse,
};
pub use events::LogEvent;
pub use job::{Callbacks, Command, Compose, Container, EnvVar, File, JobRequest, Logger};
pub use metrics::{AgentCounts, JobCounts, QueueMetrics};
pub use spec::{JobSpec, RetryPolicy};
pub use views::{AgentView, JobState, JobView, LogPage};
