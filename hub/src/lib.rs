//! Flotilla's hub: a self-hosted, durable control plane that speaks Semaphore's self-hosted agent
//! protocol, so the fleet runs without any SaaS and everything can be tested end to end.
//! `scaler hub` serves it; the scaler reads its metrics. The user API's types live in
//! `protocol::views`, so its clients need not depend on this crate.

pub mod api;
pub mod bootstrap;
pub mod clock;
pub mod console;
pub mod hub;
pub mod identity;
pub mod prometheus;
pub mod rules;
pub mod server;
pub mod store;
pub mod tokens;
pub mod transfer;

pub use bootstrap::{bootstrap, bootstrap_with, Bootstrap, BootstrapError, BootstrapOptions};
pub use hub::{Hub, HubConfig, HubError};
