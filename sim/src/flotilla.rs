//! Flotilla's side of the simulation: its real control loop ([`FleetLoop`]) and policy, connected
//! to the simulated world through the same [`Queue`] and [`Fleet`] traits the hub and AWS
//! implement. Nothing of the policy is re-implemented here; only the adapters and the settings
//! the simulator runs it with.

use crate::config::SimConfig;
use crate::world::{lock, World};
use scaling::control::FleetLoop;
use scaling::fleet::{Fleet, FleetError};
use scaling::policy::{PolicyConfig, PoolState, QueueSnapshot};
use scaling::queue::Queue;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The real control loop over the shared world.
pub(crate) fn fleet_loop(world: &Arc<Mutex<World>>, config: &SimConfig) -> FleetLoop {
    FleetLoop::new(
        "sim",
        Box::new(SimQueue(world.clone())),
        Box::new(SimFleet(world.clone())),
        policy_config(config),
        false,
        Duration::from_secs(1),
    )
}

/// The policy settings: the simulation's spare and warm capacity, and a rise rate high enough
/// never to bind at the simulated fleet sizes.
fn policy_config(config: &SimConfig) -> PolicyConfig {
    PolicyConfig {
        spare: config.spare,
        rise_burst: 1000,
        rise_per_minute: 6000,
        warm_fraction: config.warm_fraction,
        warm_max: config.warm_max,
        // Warm agents outlive the window by their idle timeout, so the window is shorter.
        warm_window_ms: ((config.flotilla_idle_timeout_s * 1000.0) as u64).max(60_000),
        ..PolicyConfig::default()
    }
}

/// The simulator's view of the queue, for the real control loop.
struct SimQueue(Arc<Mutex<World>>);

impl Queue for SimQueue {
    fn poll(&mut self, _wait: Duration) -> Result<QueueSnapshot, scaling::queue::QueueError> {
        Ok(lock(&self.0).snapshot())
    }
}

/// The simulator's view of the fleet, for the real control loop.
struct SimFleet(Arc<Mutex<World>>);

impl Fleet for SimFleet {
    fn describe(&mut self) -> Result<Vec<PoolState>, FleetError> {
        Ok(lock(&self.0).pool_states())
    }

    fn raise_desired(&mut self, pool: &str, desired: u32) -> Result<(), FleetError> {
        let mut world = lock(&self.0);
        let pool = world
            .pools
            .iter_mut()
            .find(|p| p.spec.name == pool)
            .ok_or_else(|| FleetError::UnknownPool(pool.to_string()))?;
        pool.desired = pool.desired.max(desired.min(pool.spec.max));
        Ok(())
    }

    fn terminate(&mut self, instance: &str, _decrement: bool) -> Result<(), FleetError> {
        // Simulated instances leave on their own after their job; none is known by name.
        Err(FleetError::UnknownInstance(instance.to_string()))
    }
}
