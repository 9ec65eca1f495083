//! The hub's integration tests, one binary: its core API (register, sync, jobs, logs), healed and
//! replicated hubs, the web console over HTTP and in a browser, and what a hostile client can do
//! at the edge, to registration and against the limits. They run on SQLite, and `.ci/run` runs
//! this binary again with `FLOTILLA_TEST_STORE=postgres` (`testkit::stores`).

// Scenarios read top to bottom: the function-length rule is for shipped code.
#![allow(clippy::too_many_lines)]

mod console_browser;
mod console_http;
mod console_support;
mod core_api;
mod core_support;
mod healed_agents;
mod red_team_edge;
mod red_team_limits;
mod red_team_registration;
mod replicas;
mod store_contract;
