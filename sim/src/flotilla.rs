//! Flotilla's side of the simulation: its real control loop ([`FleetLoop`]) and policy, connected
//! to the simulated world through the same [`Queue`] and [`Fleet`] traits the hub and AWS
//! implement. Nothing of the policy is re-implemented here; only the adapters and the settings
//! the simulator runs it with: `flotilla` with its forecast (which learns its time-of-day profile
//! from the scenario's past days before the day starts), `flotilla-before` with the warm capacity
//! of `--warm-fraction` / `--warm-max` and no warm pools. As the AWS fleet reads the fault tags
//! agents leave, the simulated fleet reads the world's fault records and judges each pool's health
//! with the scaler's own decision ([`scaling::pool_health`]).

use crate::config::SimConfig;
use crate::world::{lock, World};
use crate::{PolicyKind, START_UNIX};
use scaling::control::FleetLoop;
use scaling::fleet::{Fleet, FleetError};
use scaling::forecast::{Forecaster, Profile};
use scaling::policy::{PolicyConfig, PoolState, QueueSnapshot};
use scaling::pool_health::{self, HealthConfig};
use scaling::queue::Queue;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The real control loop over the shared world, as `policy` runs it.
pub(crate) fn fleet_loop(
    world: &Arc<Mutex<World>>,
    config: &SimConfig,
    policy: PolicyKind,
) -> FleetLoop {
    let mut fleet_loop = FleetLoop::new(
        "sim",
        Box::new(SimQueue(world.clone())),
        Box::new(SimFleet {
            world: world.clone(),
            health: config.pool_health,
        }),
        policy_config(config, policy),
        false,
        Duration::from_secs(1),
    );
    if let Some(forecast) = &fleet_loop.policy.forecast {
        let history: Vec<i64> = config
            .history
            .iter()
            .map(|at| START_UNIX + at.floor() as i64)
            .collect();
        fleet_loop.state.forecaster =
            Forecaster::with_profile(Profile::learn(&history, forecast.batch_gap_s));
    }
    fleet_loop
}

/// The policy settings: the simulation's spare, warm capacity (the forecast for `flotilla`,
/// `warm_fraction` for `flotilla-before`), and a rise rate high enough never to bind at the
/// simulated fleet sizes.
fn policy_config(config: &SimConfig, policy: PolicyKind) -> PolicyConfig {
    let forecast = (policy == PolicyKind::Flotilla).then(|| config.forecast.clone());
    PolicyConfig {
        forecast,
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
struct SimFleet {
    world: Arc<Mutex<World>>,
    health: HealthConfig,
}

impl Fleet for SimFleet {
    fn describe(&mut self) -> Result<Vec<PoolState>, FleetError> {
        let world = lock(&self.world);
        let mut pools = world.pool_states();
        pool_health::apply(&mut pools, &world.faults, world.unix_now(), &self.health);
        Ok(pools)
    }

    fn raise_desired(&mut self, pool: &str, desired: u32) -> Result<(), FleetError> {
        let mut world = lock(&self.world);
        let pool = world
            .pools
            .iter_mut()
            .find(|p| p.spec.name == pool)
            .ok_or_else(|| FleetError::UnknownPool(pool.to_string()))?;
        pool.desired = pool.desired.max(desired.min(pool.spec.max));
        Ok(())
    }

    fn set_warm_pool(&mut self, pool: &str, size: u32) -> Result<(), FleetError> {
        lock(&self.world)
            .set_warm_pool(pool, size)
            .ok_or_else(|| FleetError::NoWarmPool(pool.to_string()))
    }

    fn terminate(&mut self, instance: &str, _decrement: bool) -> Result<(), FleetError> {
        // Simulated instances leave on their own after their job; none is known by name.
        Err(FleetError::UnknownInstance(instance.to_string()))
    }
}
