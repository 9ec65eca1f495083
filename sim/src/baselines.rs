//! The two baselines Flotilla is compared with, re-implemented from their public descriptions
//! (docs/ARCHITECTURE.md, "The simulator"): Semaphore's agent-aws-stack scaler and
//! buildkite-agent-scaler. Each tick reads the world's queue and may raise the first pool's
//! desired capacity; when they tick is the caller's (their stacks' schedules, in `simulate`).

use crate::world::World;

/// Baseline scalers' state between ticks.
#[derive(Default)]
pub(crate) struct BaselineState {
    last_scale_out: Option<f64>,
}

/// Semaphore's agent-aws-stack: a Lambda each minute polling ~every 10 s for 50 s; desired =
/// queued + running (+ overprovision), scale up only; the first group only.
pub(crate) fn semaphore_tick(world: &mut World, spare: u32) {
    let queue = world.snapshot();
    let pool = &mut world.pools[0];
    let total = queue.queued + queue.running;
    let new_size = if total < pool.spec.min {
        pool.spec.min
    } else {
        (total + if total > 0 || spare > 0 { spare } else { 0 }).min(pool.spec.max)
    };
    if new_size > pool.desired {
        pool.desired = new_size;
    }
}

/// Whether Semaphore's Lambda polls at `second`: at 0, 10, ... 40 s past each minute.
pub(crate) fn semaphore_polls_at(second: u64) -> bool {
    (second % 60).is_multiple_of(10) && second % 60 <= 40
}

/// buildkite-agent-scaler as the Elastic CI Stack runs it: every 10 s; desired = scheduled +
/// running (+ a proportional instance buffer), scale-out cooldown 300 s, scale-in disabled
/// (agents idle out after 600 s); the first group only.
pub(crate) fn buildkite_tick(world: &mut World, state: &mut BaselineState, spare: u32) {
    let now = world.now;
    let queue = world.snapshot();
    let pool = &mut world.pools[0];
    let required = queue.queued + queue.running;
    let buffer = if required > 0 { required.min(spare) } else { 0 };
    let desired = (required + buffer).clamp(pool.spec.min, pool.spec.max);
    if desired > pool.desired && state.last_scale_out.is_none_or(|at| now - at >= 300.0) {
        pool.desired = desired;
        state.last_scale_out = Some(now);
    }
}

/// Whether buildkite-agent-scaler runs at `second`: every 10 s.
pub(crate) fn buildkite_runs_at(second: u64) -> bool {
    second.is_multiple_of(10)
}
