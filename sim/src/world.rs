//! The simulated world: the job queue, each pool's instances and the virtual clock. [`World::step`]
//! advances it one tick: submissions arrive; instances are interrupted, finish booting or
//! starting, finish their job or idle out; idle agents take queued jobs; each pool converges on
//! its desired capacity (from its warm pool first, see `warm_pool`). Instances of a pool with a
//! fault rate may fail the GPU gate or fault mid-job (`faults`). Every random draw comes from
//! the world's one seeded generator in that fixed order, so the same seed replays the same day.

use crate::config::{PoolSpec, SimConfig};
use crate::report::SeriesRow;
use crate::trace::TraceJob;
use crate::PolicyKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scaling::policy::{PoolState, QueueSnapshot};
use scaling::pool_health::{FaultKind, FaultRecord, PoolHealth};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

mod faults;
mod warm_pool;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum InstanceState {
    Booting,
    /// Launched into the warm pool: booting once, then stopped.
    Warming,
    /// Stopped in the warm pool: costs its volume only.
    Stopped,
    /// Started from the warm pool, not yet ready.
    Starting,
    Idle {
        since: f64,
    },
    Busy {
        job: usize,
        until: f64,
    },
    Gone,
}

#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) pool: usize,
    pub(crate) launched: f64,
    ready: f64,
    state: InstanceState,
    pub(crate) gone_at: Option<f64>,
    pub(crate) idle_seconds: f64,
    /// Seconds spent stopped in a warm pool (the rest of its life it ran).
    pub(crate) stopped_seconds: f64,
    /// The hardware fault this instance will have, drawn at launch (see `faults`).
    fault: Option<FaultKind>,
}

impl InstanceState {
    /// In the group (booting, starting, serving), not in its warm pool nor gone.
    fn in_group(self) -> bool {
        matches!(
            self,
            InstanceState::Booting
                | InstanceState::Starting
                | InstanceState::Idle { .. }
                | InstanceState::Busy { .. }
        )
    }

    /// In the pool's warm pool (initialising or stopped).
    fn in_warm_pool(self) -> bool {
        matches!(self, InstanceState::Warming | InstanceState::Stopped)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SimJob {
    pub(crate) submit: f64,
    duration: f64,
    pub(crate) started: Option<f64>,
    pub(crate) starts: u32,
    pub(crate) finished: Option<f64>,
    /// The pool whose instance finished it.
    pub(crate) finished_on: Option<usize>,
}

pub(crate) struct PoolRuntime {
    pub(crate) spec: PoolSpec,
    pub(crate) desired: u32,
    last_failure: Option<f64>,
    /// Instances the warm pool keeps (0: none).
    pub(crate) warm_size: u32,
}

/// The simulated world: queue, fleet and clock.
pub(crate) struct World {
    pub(crate) now: f64,
    pub(crate) jobs: Vec<SimJob>,
    next_submission: usize,
    queue: VecDeque<usize>,
    pub(crate) instances: Vec<Instance>,
    pub(crate) pools: Vec<PoolRuntime>,
    rng: StdRng,
    pub(crate) launches: u64,
    /// Instances started from a warm pool.
    pub(crate) warm_starts: u64,
    /// Instances removed for a hardware fault, as their agents tagged them.
    pub(crate) faults: Vec<FaultRecord>,
    boot_fixed_s: f64,
    boot_agent_s: (f64, f64),
    start_s: (f64, f64),
    spot_rate_per_s: f64,
    idle_timeout_s: f64,
    /// Instances leave after one job (Flotilla, Semaphore) or stay (Buildkite).
    one_job_per_instance: bool,
    /// Leaving after the job lowers desired (Flotilla) or the ASG replaces it (Semaphore).
    decrement_after_job: bool,
}

/// The world behind its lock, whether or not a holder panicked.
pub(crate) fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    /// The world at time 0 for `trace` under `policy`: how its agents leave, and its pools (all
    /// of them for Flotilla, the first for the baselines) at their minimums.
    pub(crate) fn new(trace: &[TraceJob], config: &SimConfig, policy: PolicyKind) -> World {
        let (one_job, decrement, idle_timeout) = match policy {
            PolicyKind::Flotilla | PolicyKind::FlotillaBefore => {
                (true, true, config.flotilla_idle_timeout_s)
            }
            PolicyKind::Semaphore => (true, false, config.idle_timeout_s),
            PolicyKind::Buildkite => (false, true, 600.0),
        };
        let pools: Vec<PoolRuntime> = match policy {
            PolicyKind::Flotilla | PolicyKind::FlotillaBefore => config.pools.clone(),
            _ => config.pools.iter().take(1).cloned().collect(),
        }
        .into_iter()
        .map(|mut spec| {
            // Warm pools are the new policy's: the others run the stacks they were measured on.
            if policy != PolicyKind::Flotilla || spec.spot {
                spec.warm_pool_max = 0;
            }
            PoolRuntime {
                desired: spec.min,
                spec,
                last_failure: None,
                warm_size: 0,
            }
        })
        .collect();
        World {
            now: 0.0,
            jobs: trace
                .iter()
                .map(|j| SimJob {
                    submit: j.submit_s,
                    duration: j.duration_s,
                    started: None,
                    starts: 0,
                    finished: None,
                    finished_on: None,
                })
                .collect(),
            next_submission: 0,
            queue: VecDeque::new(),
            instances: Vec::new(),
            pools,
            rng: StdRng::seed_from_u64(config.seed),
            launches: 0,
            warm_starts: 0,
            faults: Vec::new(),
            boot_fixed_s: config.boot_fixed_s,
            boot_agent_s: config.boot_agent_s,
            start_s: config.start_s,
            spot_rate_per_s: config.spot_interruptions_per_hour / 3600.0,
            idle_timeout_s: idle_timeout,
            one_job_per_instance: one_job,
            decrement_after_job: decrement,
        }
    }

    /// Instances in `pool`'s group (not its warm pool).
    pub(crate) fn live(&self, pool: usize) -> usize {
        self.count(pool, |state| state.in_group())
    }

    /// Instances of `pool` in a state `which` accepts.
    pub(crate) fn count(&self, pool: usize, which: impl Fn(InstanceState) -> bool) -> usize {
        self.instances
            .iter()
            .filter(|i| i.pool == pool && which(i.state))
            .count()
    }

    /// Every job submitted and finished, none queued.
    pub(crate) fn all_done(&self) -> bool {
        self.next_submission == self.jobs.len()
            && self.queue.is_empty()
            && self.jobs.iter().all(|j| j.finished.is_some())
    }

    /// No pool has an instance in its group (warm pools stay).
    pub(crate) fn fleet_empty(&self) -> bool {
        (0..self.pools.len()).all(|p| self.live(p) == 0)
    }

    /// Queue and fleet now, for the time series.
    pub(crate) fn series_row(&self) -> SeriesRow {
        let snapshot = self.snapshot();
        SeriesRow {
            time_s: self.now,
            queued: snapshot.queued,
            running: snapshot.running,
            instances: (0..self.pools.len()).map(|p| self.live(p) as u32).sum(),
            desired: self.pools.iter().map(|p| p.desired).sum(),
        }
    }

    fn remove(&mut self, index: usize, decrement: bool) {
        let now = self.now;
        let instance = &mut self.instances[index];
        instance.state = InstanceState::Gone;
        instance.gone_at = Some(now);
        if decrement {
            let pool = &mut self.pools[instance.pool];
            pool.desired = pool.desired.saturating_sub(1).max(pool.spec.min);
        }
    }

    pub(crate) fn snapshot(&self) -> QueueSnapshot {
        let running = self
            .instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Busy { .. }))
            .count() as u32;
        let idle = self
            .instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Idle { .. }))
            .count() as u32;
        let oldest = self
            .queue
            .front()
            .map(|&j| (self.now - self.jobs[j].submit).max(0.0) as u64);
        QueueSnapshot {
            queued: self.queue.len() as u32,
            running,
            idle,
            occupied: running,
            oldest_queued_seconds: oldest,
            age_ms: 0,
        }
    }

    pub(crate) fn pool_states(&self) -> Vec<PoolState> {
        self.pools
            .iter()
            .enumerate()
            .map(|(index, pool)| {
                let pending = self.count(index, |s| {
                    matches!(s, InstanceState::Booting | InstanceState::Starting)
                }) as u32;
                PoolState {
                    name: pool.spec.name.clone(),
                    desired: pool.desired,
                    min: pool.spec.min,
                    max: pool.spec.max,
                    in_service: self.live(index) as u32 - pending,
                    pending,
                    short: pool.last_failure.is_some_and(|at| self.now - at < 60.0),
                    health: PoolHealth::default(),
                    warm_pool: self.warm_pool_state(index),
                }
            })
            .collect()
    }

    /// One tick of `dt` seconds at `self.now`, its phases in a fixed order (see the module).
    pub(crate) fn step(&mut self, dt: f64) {
        let now = self.now;
        self.submit_due(now);
        for index in 0..self.instances.len() {
            self.advance_instance(index, now, dt);
        }
        self.assign_queued(now);
        for pool in 0..self.pools.len() {
            self.converge_pool(pool, now);
        }
    }

    /// Jobs whose submit time has come join the back of the queue.
    fn submit_due(&mut self, now: f64) {
        while self.next_submission < self.jobs.len()
            && self.jobs[self.next_submission].submit <= now
        {
            self.queue.push_back(self.next_submission);
            self.next_submission += 1;
        }
    }

    /// One instance's tick: a spot interruption, or the end of its boot, of its job (it leaves or
    /// idles) or of its idle timeout.
    fn advance_instance(&mut self, index: usize, now: f64, dt: f64) {
        let state = self.instances[index].state;
        if self.interrupt(index, state, dt) || self.fault_strikes(index, state, now) {
            return;
        }
        match state {
            InstanceState::Booting | InstanceState::Starting
                if now >= self.instances[index].ready =>
            {
                self.instances[index].state = InstanceState::Idle { since: now };
            }
            InstanceState::Warming if now >= self.instances[index].ready => {
                self.instances[index].state = InstanceState::Stopped;
            }
            InstanceState::Stopped => self.instances[index].stopped_seconds += dt,
            InstanceState::Busy { job, until } if now >= until => {
                self.jobs[job].finished = Some(now);
                self.jobs[job].finished_on = Some(self.instances[index].pool);
                if self.one_job_per_instance {
                    let decrement = self.decrement_after_job;
                    self.remove(index, decrement);
                } else {
                    self.instances[index].state = InstanceState::Idle { since: now };
                }
            }
            InstanceState::Idle { since } => {
                self.instances[index].idle_seconds += dt;
                if now - since >= self.idle_timeout_s {
                    self.remove(index, true);
                }
            }
            _ => {}
        }
    }

    /// Spot interruptions: the job goes back to the front of the queue; the ASG replaces the
    /// instance. Draws from the generator only for live spot instances when the rate is positive.
    fn interrupt(&mut self, index: usize, state: InstanceState, dt: f64) -> bool {
        let pool = self.instances[index].pool;
        let interrupted = state != InstanceState::Gone
            && self.pools[pool].spec.spot
            && self.spot_rate_per_s > 0.0
            && self.rng.gen::<f64>() < self.spot_rate_per_s * dt;
        if interrupted {
            if let InstanceState::Busy { job, .. } = state {
                self.queue.push_front(job);
            }
            self.remove(index, false);
        }
        interrupted
    }

    /// Idle agents take queued jobs, oldest job first, longest-idle agent first.
    fn assign_queued(&mut self, now: f64) {
        for index in 0..self.instances.len() {
            if self.queue.is_empty() {
                break;
            }
            if let InstanceState::Idle { .. } = self.instances[index].state {
                let Some(job) = self.queue.pop_front() else {
                    break;
                };
                let until = now + self.jobs[job].duration;
                self.jobs[job].starts += 1;
                self.jobs[job].started.get_or_insert(now);
                self.instances[index].state = InstanceState::Busy { job, until };
            }
        }
    }

    /// The ASG converges on desired: starts stopped instances of its warm pool, then launches
    /// (unless in an outage, when both fail), or sheds idle instances; then refills or trims the
    /// warm pool.
    fn converge_pool(&mut self, pool: usize, now: f64) {
        let live = self.live(pool) as u32;
        let desired = self.pools[pool].desired;
        if live < desired {
            if self.in_outage(pool, now) {
                self.pools[pool].last_failure = Some(now);
            } else {
                let started = self.start_from_warm_pool(pool, desired - live, now);
                for _ in live + started..desired {
                    self.launch(pool, now, InstanceState::Booting);
                }
            }
        } else if live > desired {
            self.shed(pool, live - desired);
        }
        self.keep_warm_pool(pool, now);
    }

    /// Whether `pool` has no capacity at `now`.
    fn in_outage(&self, pool: usize, now: f64) -> bool {
        self.pools[pool]
            .spec
            .outages
            .iter()
            .any(|(from, to)| (*from..*to).contains(&now))
    }

    /// A new instance in `pool` (in its group, or `Warming` into its warm pool), ready after a
    /// drawn boot time.
    fn launch(&mut self, pool: usize, now: f64, state: InstanceState) {
        let boot = self.boot_fixed_s
            + self
                .rng
                .gen_range(self.boot_agent_s.0..=self.boot_agent_s.1)
            + self.pools[pool].spec.extra_boot_s;
        let fault = self.draw_fault(pool);
        self.instances.push(Instance {
            pool,
            launched: now,
            ready: now + boot,
            state,
            gone_at: None,
            idle_seconds: 0.0,
            stopped_seconds: 0.0,
            fault,
        });
        self.launches += 1;
    }

    /// Removes `excess` idle or booting instances of `pool`, newest first.
    fn shed(&mut self, pool: usize, mut excess: u32) {
        for index in (0..self.instances.len()).rev() {
            if excess == 0 {
                break;
            }
            let instance = &self.instances[index];
            if instance.pool == pool
                && matches!(
                    instance.state,
                    InstanceState::Idle { .. } | InstanceState::Booting | InstanceState::Starting
                )
            {
                self.remove(index, false);
                excess -= 1;
            }
        }
    }
}
