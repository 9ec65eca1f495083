//! Hardware faults (issue 29): a pool's `fault_rate` is the share of its instances that are bad.
//! Half of those fail the GPU health gate at boot (when they would have become ready), half fault
//! with an Xid error halfway through their first job. Either way the agent does what the real one
//! does: it records the fault (the `flotilla:fault` tag, here a [`FaultRecord`] in the world) and
//! removes its instance with decrement; a job it held goes back to the front of the queue. The
//! draws are made at launch and only for a pool with a positive rate, so a world without faults
//! replays exactly as before.

use super::{InstanceState, World};
use crate::START_UNIX;
use rand::Rng;
use scaling::pool_health::{FaultKind, FaultRecord};

impl World {
    /// The fault a new instance of `pool` will have, if any.
    pub(super) fn draw_fault(&mut self, pool: usize) -> Option<FaultKind> {
        let rate = self.pools[pool].spec.fault_rate;
        if rate <= 0.0 || self.rng.gen::<f64>() >= rate {
            return None;
        }
        Some(if self.rng.gen_bool(0.5) {
            FaultKind::GpuGate
        } else {
            FaultKind::Xid
        })
    }

    /// Whether instance `index`'s fault strikes now; if so, it is recorded and the instance gone.
    pub(super) fn fault_strikes(&mut self, index: usize, state: InstanceState, now: f64) -> bool {
        let instance = &self.instances[index];
        let Some(kind) = instance.fault else {
            return false;
        };
        let strikes = match (kind, state) {
            (FaultKind::GpuGate, InstanceState::Booting | InstanceState::Starting) => {
                now >= instance.ready
            }
            (FaultKind::Xid, InstanceState::Busy { job, until }) => {
                until - now <= self.jobs[job].duration / 2.0
            }
            _ => false,
        };
        if !strikes {
            return false;
        }
        if let InstanceState::Busy { job, .. } = state {
            self.queue.push_front(job);
        }
        let detail = match kind {
            FaultKind::GpuGate => "3 of 4 GPUs visible",
            FaultKind::Xid => "Xid 79 (GPU has fallen off the bus)",
        };
        self.faults.push(FaultRecord {
            pool: self.pools[instance.pool].spec.name.clone(),
            at_unix: START_UNIX + now.floor() as i64,
            kind,
            detail: detail.into(),
        });
        self.remove(index, true);
        true
    }

    /// The world's time in Unix seconds (what a fault record or the pool health decision reads).
    pub(crate) fn unix_now(&self) -> i64 {
        START_UNIX + self.now.floor() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;
    use crate::trace::TraceJob;
    use crate::PolicyKind;

    /// One pool of `fault_rate`, one 10-minute job at 0, the pool raised to 1 for it.
    fn world(fault_rate: f64, seed: u64) -> World {
        let mut config = SimConfig::single_pool(10, 1.0);
        config.pools[0].fault_rate = fault_rate;
        config.pools[0].warm_pool_max = 0;
        config.seed = seed;
        let trace = [TraceJob {
            submit_s: 0.0,
            duration_s: 600.0,
            agent_type: "gpu".into(),
        }];
        let mut world = World::new(&trace, &config, PolicyKind::Flotilla);
        world.pools[0].desired = 1;
        world
    }

    fn run(world: &mut World, seconds: u64) {
        for second in 0..seconds {
            world.now = second as f64;
            world.step(1.0);
        }
    }

    #[test]
    fn a_bad_instance_faults_is_removed_with_decrement_and_its_job_queued_again() {
        // Seeds that draw each kind of fault for the first instance.
        let seed_for = |kind: FaultKind| {
            (0..100u64).find(|&seed| {
                let mut world = world(1.0, seed);
                run(&mut world, 1);
                world.instances[0].fault == Some(kind)
            })
        };
        for kind in [FaultKind::GpuGate, FaultKind::Xid] {
            let seed = seed_for(kind).unwrap_or_else(|| panic!("no seed draws {kind:?}"));
            let mut world = world(1.0, seed);
            run(&mut world, 700);
            assert_eq!(world.faults.len(), 1, "{kind:?}: {:?}", world.faults);
            let fault = &world.faults[0];
            assert_eq!((fault.pool.as_str(), fault.kind), ("ci", kind));
            assert_eq!(
                world.pools[0].desired, 0,
                "{kind:?}: removed with decrement"
            );
            assert_eq!(world.live(0), 0);
            assert_eq!(world.jobs[0].finished, None, "{kind:?}");
            assert_eq!(
                world.snapshot().queued,
                1,
                "{kind:?}: the job is queued again"
            );
            let started = u32::from(kind == FaultKind::Xid);
            assert_eq!(world.jobs[0].starts, started, "{kind:?}");
        }
    }

    #[test]
    fn without_a_fault_rate_the_job_finishes_on_the_pool() {
        let mut world = world(0.0, 1);
        run(&mut world, 800);
        assert!(world.faults.is_empty());
        assert_eq!(world.jobs[0].finished_on, Some(0));
    }
}
