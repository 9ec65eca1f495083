//! Flotilla's scaling library: the decisions (policy, schedule, reaper — pure, table-tested), the
//! control loop that drives them over the [`queue::Queue`] and [`fleet::Fleet`] traits on any
//! clock, the local fleet, the scaler's config schema and its Prometheus text. It has no AWS SDK,
//! no SQLite and no plotters in its tree: the `scaler` binary adds the AWS fleet, the `sim` crate
//! the simulator.

pub mod config;
pub mod control;
pub mod emf;
pub mod fleet;
pub mod forecast;
pub mod policy;
pub mod pool_health;
pub mod queue;
pub mod reaper;
pub mod schedule;

/// Seconds since the Unix epoch (the reaper's and the control loop's wall clock).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}
