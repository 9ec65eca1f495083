//! Flotilla's hub: a self-hosted, durable control plane that speaks Semaphore's self-hosted agent
//! protocol, so the fleet runs without any SaaS and everything can be tested end to end.
//! `scaler hub` serves it; the scaler reads its metrics.

pub mod api;
pub mod hub;
pub mod rules;
pub mod server;
pub mod store;
pub mod tokens;

pub use hub::{Hub, HubConfig, HubError, JobView};
