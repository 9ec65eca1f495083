//! A pool's warm pool, as EC2 Auto Scaling keeps one: instances launched and initialised once
//! (they boot like any launch, at the running price), then stopped (their volume's price only).
//! When the group's desired capacity rises it starts stopped instances first, oldest first, and
//! launches only for the rest; a start needs capacity like a launch (in an outage both fail). The
//! pool is refilled to its size after use and trimmed, newest first, when its size falls. A started
//! instance has left the pool for good: it runs one job and terminates like any other.

use super::{Instance, InstanceState, World};
use rand::Rng;
use scaling::policy::WarmPoolState;

impl World {
    /// Starts up to `wanted` stopped instances of `pool`, oldest first; how many it started.
    pub(super) fn start_from_warm_pool(&mut self, pool: usize, wanted: u32, now: f64) -> u32 {
        let mut started = 0;
        for index in 0..self.instances.len() {
            if started == wanted {
                break;
            }
            let instance = &self.instances[index];
            if instance.pool != pool || instance.state != InstanceState::Stopped {
                continue;
            }
            let start = self.rng.gen_range(self.start_s.0..=self.start_s.1)
                + self.pools[pool].spec.extra_start_s;
            let instance: &mut Instance = &mut self.instances[index];
            instance.state = InstanceState::Starting;
            instance.ready = now + start;
            self.warm_starts += 1;
            started += 1;
        }
        started
    }

    /// Refills `pool`'s warm pool to its size (launches that fail in an outage), or terminates
    /// the newest of its instances beyond it.
    pub(super) fn keep_warm_pool(&mut self, pool: usize, now: f64) {
        let size = self.pools[pool].warm_size as usize;
        let warm = self.count(pool, InstanceState::in_warm_pool);
        if warm < size {
            if self.in_outage(pool, now) {
                self.pools[pool].last_failure = Some(now);
                return;
            }
            for _ in warm..size {
                self.launch(pool, now, InstanceState::Warming);
            }
        } else if warm > size {
            let mut excess = warm - size;
            for index in (0..self.instances.len()).rev() {
                if excess == 0 {
                    break;
                }
                let instance = &mut self.instances[index];
                if instance.pool == pool && instance.state.in_warm_pool() {
                    instance.state = InstanceState::Gone;
                    instance.gone_at = Some(now);
                    excess -= 1;
                }
            }
        }
    }

    /// `pool`'s warm pool for the policy, if it may have one.
    pub(crate) fn warm_pool_state(&self, pool: usize) -> Option<WarmPoolState> {
        let runtime = &self.pools[pool];
        (runtime.spec.warm_pool_max > 0).then(|| WarmPoolState {
            min: 0,
            max: runtime.spec.warm_pool_max.min(runtime.spec.max),
            size: runtime.warm_size,
            ready: self.count(pool, |s| s == InstanceState::Stopped) as u32,
            pending: self.count(pool, |s| s == InstanceState::Warming) as u32,
        })
    }

    /// Sets the size of the named pool's warm pool, within its bound and the group's maximum (an
    /// instance it could never start is waste); `None` when there is no such pool or it has no
    /// warm pool.
    pub(crate) fn set_warm_pool(&mut self, pool: &str, size: u32) -> Option<()> {
        let runtime = self
            .pools
            .iter_mut()
            .find(|p| p.spec.name == pool && p.spec.warm_pool_max > 0)?;
        runtime.warm_size = size.min(runtime.spec.warm_pool_max).min(runtime.spec.max);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;
    use crate::trace::TraceJob;
    use crate::PolicyKind;

    /// A world of one pool with a warm pool of up to 10, no jobs, advanced to `until` seconds.
    fn world_with_outage(outage: Option<(f64, f64)>) -> World {
        let mut config = SimConfig::single_pool(10, 0.36);
        config.pools[0].outages.extend(outage);
        let trace = [TraceJob {
            submit_s: 10_000.0,
            duration_s: 60.0,
            agent_type: "default".into(),
        }];
        World::new(&trace, &config, PolicyKind::Flotilla)
    }

    fn run(world: &mut World, from: u64, to: u64) {
        for second in from..to {
            world.now = second as f64;
            world.step(1.0);
        }
    }

    /// Every instance is in exactly one place: the group, the warm pool, or gone.
    fn assert_conserved(world: &World) {
        let group = world.count(0, InstanceState::in_group);
        let warm = world.count(0, InstanceState::in_warm_pool);
        let gone = world.count(0, |s| s == InstanceState::Gone);
        assert_eq!(group + warm + gone, world.instances.len());
        assert_eq!(world.launches as usize, world.instances.len());
    }

    #[test]
    fn a_started_instance_leaves_the_pool_and_the_pool_refills() {
        let mut world = world_with_outage(None);
        assert_eq!(world.set_warm_pool("ci", 3), Some(()));
        assert_eq!(world.set_warm_pool("nope", 3), None);
        run(&mut world, 0, 200);
        let pool = world.warm_pool_state(0).unwrap_or_default();
        assert_eq!((pool.size, pool.ready, pool.pending), (3, 3, 0));
        assert_eq!(world.live(0), 0);
        world.pools[0].desired = 2;
        run(&mut world, 200, 201);
        assert_conserved(&world);
        assert_eq!(world.warm_starts, 2);
        assert_eq!(world.count(0, |s| s == InstanceState::Starting), 2);
        assert_eq!(
            world.launches, 5,
            "3 into the pool, 2 to refill it, none cold"
        );
        let pool = world.warm_pool_state(0).unwrap_or_default();
        assert_eq!(
            (pool.ready, pool.pending),
            (1, 2),
            "started ones are out of it"
        );
        // Ready within the start time (19–25 s), the pool full again after a boot.
        run(&mut world, 201, 227);
        assert_eq!(
            world.count(0, |s| matches!(s, InstanceState::Idle { .. })),
            2
        );
        run(&mut world, 227, 400);
        assert_eq!(world.warm_pool_state(0).unwrap_or_default().ready, 3);
        assert_conserved(&world);
        // A smaller pool terminates the newest stopped instances.
        world.set_warm_pool("ci", 1);
        run(&mut world, 400, 401);
        assert_eq!(world.warm_pool_state(0).unwrap_or_default().ready, 1);
        assert_eq!(world.count(0, |s| s == InstanceState::Gone), 2);
        assert_conserved(&world);
    }

    #[test]
    fn no_capacity_no_start_and_no_refill() {
        let mut world = world_with_outage(Some((300.0, 600.0)));
        world.set_warm_pool("ci", 2);
        run(&mut world, 0, 300);
        world.pools[0].desired = 1;
        world.set_warm_pool("ci", 4);
        run(&mut world, 300, 310);
        assert_eq!(world.warm_starts, 0);
        assert_eq!(world.warm_pool_state(0).unwrap_or_default().ready, 2);
        assert!(
            world.pool_states()[0].short,
            "a refused start marks the pool short"
        );
        run(&mut world, 600, 601);
        assert_eq!(world.warm_starts, 1, "capacity is back");
        assert_eq!(world.warm_pool_state(0).unwrap_or_default().pending, 3);
        assert_conserved(&world);
    }

    #[test]
    fn stopped_time_costs_the_volume_and_running_time_the_instance() {
        let mut world = world_with_outage(None);
        world.set_warm_pool("ci", 1);
        run(&mut world, 0, 1000);
        let instance = &world.instances[0];
        let lived = world.now - instance.launched;
        assert!(instance.stopped_seconds > 800.0 && instance.stopped_seconds < lived);
        let outcome = crate::report::outcome(&world, PolicyKind::Flotilla, Vec::new());
        let spec = &world.pools[0].spec;
        let running = lived - instance.stopped_seconds;
        assert!((outcome.running_cost - running / 3600.0 * spec.price_per_hour).abs() < 1e-9);
        assert!(
            (outcome.stopped_cost
                - instance.stopped_seconds / 3600.0 * spec.stopped_price_per_hour)
                .abs()
                < 1e-9
        );
        assert!((outcome.cost - outcome.running_cost - outcome.stopped_cost).abs() < 1e-12);
    }
}
