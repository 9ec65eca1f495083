//! `scaler simulate`: replays a job trace on a virtual clock (no sleeping: a day runs in about a
//! second) against a simulated Auto Scaling fleet — launches, boot times drawn from a distribution,
//! one job per agent, capacity outages per pool, spot interruptions — driven by Flotilla's real
//! policy and control loop ([`FleetLoop`] through the [`Queue`] and [`Fleet`] traits), or by the two
//! baselines re-implemented from their public descriptions (docs/ARCHITECTURE.md, "The simulator"):
//! Semaphore's agent-aws-stack scaler and buildkite-agent-scaler.

pub mod plot;
pub mod trace;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scaling::control::FleetLoop;
use scaling::fleet::{Fleet, FleetError};
use scaling::policy::{PolicyConfig, PoolState, QueueSnapshot};
use scaling::queue::Queue;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trace::TraceJob;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Flotilla,
    Semaphore,
    Buildkite,
}

impl PolicyKind {
    pub fn parse(name: &str) -> Option<PolicyKind> {
        match name {
            "flotilla" => Some(PolicyKind::Flotilla),
            "semaphore" => Some(PolicyKind::Semaphore),
            "buildkite" => Some(PolicyKind::Buildkite),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Flotilla => "flotilla",
            PolicyKind::Semaphore => "semaphore",
            PolicyKind::Buildkite => "buildkite",
        }
    }
}

/// One capacity pool (an ASG).
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub spot: bool,
    pub price_per_hour: f64,
    /// Extra boot seconds (GPU drivers initialising, larger images).
    pub extra_boot_s: f64,
    /// Windows (seconds from the start) in which the pool cannot launch.
    pub outages: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Pools in priority order. The baselines use only the first (their stacks run one group).
    pub pools: Vec<PoolSpec>,
    /// EC2 start before the OS runs, seconds.
    pub boot_fixed_s: f64,
    /// Then agent registered after a uniform draw in this range, seconds (baked AMI).
    pub boot_agent_s: (f64, f64),
    /// Spot interruptions per spot instance per hour.
    pub spot_interruptions_per_hour: f64,
    /// An idle agent removes itself (with decrement) after this long: Semaphore's stack default.
    pub idle_timeout_s: f64,
    /// The same for Flotilla's agents (Buildkite's stack uses 600 s).
    pub flotilla_idle_timeout_s: f64,
    /// Instances kept beyond the queue (Flotilla's `spare`, Semaphore's overprovision,
    /// Buildkite's instance buffer).
    pub spare: u32,
    /// Flotilla's warm capacity (see [`PolicyConfig::warm_fraction`]).
    pub warm_fraction: f64,
    pub warm_max: u32,
    pub seed: u64,
    /// Give up this long after the last submission.
    pub drain_limit_s: f64,
}

impl SimConfig {
    pub fn single_pool(max: u32, price_per_hour: f64) -> SimConfig {
        SimConfig {
            pools: vec![PoolSpec {
                name: "ci".into(),
                min: 0,
                max,
                spot: false,
                price_per_hour,
                extra_boot_s: 0.0,
                outages: Vec::new(),
            }],
            boot_fixed_s: 16.0,
            boot_agent_s: (25.0, 70.0),
            spot_interruptions_per_hour: 0.0,
            idle_timeout_s: 300.0,
            flotilla_idle_timeout_s: 300.0,
            spare: 0,
            warm_fraction: 0.0,
            warm_max: 0,
            seed: 1,
            drain_limit_s: 12.0 * 3600.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SeriesRow {
    pub time_s: f64,
    pub queued: u32,
    pub running: u32,
    pub instances: u32,
    pub desired: u32,
}

/// A policy's results on a trace.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub policy: PolicyKind,
    /// Queued → first started, seconds, for jobs that started.
    pub waits: Vec<f64>,
    pub never_started: usize,
    pub started_more_than_once: usize,
    pub finished: usize,
    pub instance_seconds: f64,
    pub idle_instance_seconds: f64,
    pub cost: f64,
    pub launches: u64,
    pub series: Vec<SeriesRow>,
}

impl Outcome {
    pub fn wait_percentile(&self, p: f64) -> f64 {
        if self.waits.is_empty() {
            return 0.0;
        }
        let mut sorted = self.waits.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum InstanceState {
    Booting,
    Idle { since: f64 },
    Busy { job: usize, until: f64 },
    Gone,
}

#[derive(Debug, Clone)]
struct Instance {
    pool: usize,
    launched: f64,
    ready: f64,
    state: InstanceState,
    gone_at: Option<f64>,
    idle_seconds: f64,
}

#[derive(Debug, Clone)]
struct SimJob {
    submit: f64,
    duration: f64,
    started: Option<f64>,
    starts: u32,
    finished: Option<f64>,
}

struct PoolRuntime {
    spec: PoolSpec,
    desired: u32,
    last_failure: Option<f64>,
}

/// The simulated world: queue, fleet and clock.
struct World {
    now: f64,
    jobs: Vec<SimJob>,
    next_submission: usize,
    queue: VecDeque<usize>,
    instances: Vec<Instance>,
    pools: Vec<PoolRuntime>,
    rng: StdRng,
    launches: u64,
    boot_fixed_s: f64,
    boot_agent_s: (f64, f64),
    spot_rate_per_s: f64,
    idle_timeout_s: f64,
    /// Instances leave after one job (Flotilla, Semaphore) or stay (Buildkite).
    one_job_per_instance: bool,
    /// Leaving after the job lowers desired (Flotilla) or the ASG replaces it (Semaphore).
    decrement_after_job: bool,
}

impl World {
    fn live(&self, pool: usize) -> usize {
        self.instances
            .iter()
            .filter(|i| i.pool == pool && i.state != InstanceState::Gone)
            .count()
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

    fn snapshot(&self) -> QueueSnapshot {
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

    fn pool_states(&self) -> Vec<PoolState> {
        self.pools
            .iter()
            .enumerate()
            .map(|(index, pool)| {
                let booting = self
                    .instances
                    .iter()
                    .filter(|i| i.pool == index && i.state == InstanceState::Booting)
                    .count() as u32;
                PoolState {
                    name: pool.spec.name.clone(),
                    desired: pool.desired,
                    min: pool.spec.min,
                    max: pool.spec.max,
                    in_service: self.live(index) as u32 - booting,
                    pending: booting,
                    short: pool.last_failure.is_some_and(|at| self.now - at < 60.0),
                }
            })
            .collect()
    }

    /// One second of the world.
    fn step(&mut self, dt: f64) {
        let now = self.now;
        while self.next_submission < self.jobs.len()
            && self.jobs[self.next_submission].submit <= now
        {
            self.queue.push_back(self.next_submission);
            self.next_submission += 1;
        }
        for index in 0..self.instances.len() {
            let state = self.instances[index].state;
            let pool = self.instances[index].pool;
            // Spot interruptions: the job goes back to the front of the queue; the ASG replaces.
            if state != InstanceState::Gone
                && self.pools[pool].spec.spot
                && self.spot_rate_per_s > 0.0
                && self.rng.gen::<f64>() < self.spot_rate_per_s * dt
            {
                if let InstanceState::Busy { job, .. } = state {
                    self.queue.push_front(job);
                }
                self.remove(index, false);
                continue;
            }
            match state {
                InstanceState::Booting if now >= self.instances[index].ready => {
                    self.instances[index].state = InstanceState::Idle { since: now };
                }
                InstanceState::Busy { job, until } if now >= until => {
                    self.jobs[job].finished = Some(now);
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
        // Idle agents take queued jobs, oldest job first, longest-idle agent first.
        for index in 0..self.instances.len() {
            if self.queue.is_empty() {
                break;
            }
            if let InstanceState::Idle { .. } = self.instances[index].state {
                let job = self.queue.pop_front().expect("not empty");
                let until = now + self.jobs[job].duration;
                self.jobs[job].starts += 1;
                self.jobs[job].started.get_or_insert(now);
                self.instances[index].state = InstanceState::Busy { job, until };
            }
        }
        // The ASGs converge on desired: launch (unless in an outage), or shed idle instances.
        for pool in 0..self.pools.len() {
            let live = self.live(pool) as u32;
            let desired = self.pools[pool].desired;
            if live < desired {
                let in_outage = self.pools[pool]
                    .spec
                    .outages
                    .iter()
                    .any(|(from, to)| (*from..*to).contains(&now));
                if in_outage {
                    self.pools[pool].last_failure = Some(now);
                    continue;
                }
                for _ in live..desired {
                    let boot = self.boot_fixed_s
                        + self
                            .rng
                            .gen_range(self.boot_agent_s.0..=self.boot_agent_s.1)
                        + self.pools[pool].spec.extra_boot_s;
                    self.instances.push(Instance {
                        pool,
                        launched: now,
                        ready: now + boot,
                        state: InstanceState::Booting,
                        gone_at: None,
                        idle_seconds: 0.0,
                    });
                    self.launches += 1;
                }
            } else if live > desired {
                let mut excess = live - desired;
                for index in (0..self.instances.len()).rev() {
                    if excess == 0 {
                        break;
                    }
                    let instance = &self.instances[index];
                    if instance.pool == pool
                        && matches!(
                            instance.state,
                            InstanceState::Idle { .. } | InstanceState::Booting
                        )
                    {
                        self.remove(index, false);
                        excess -= 1;
                    }
                }
            }
        }
    }
}

/// The simulator's view of the queue, for the real control loop.
struct SimQueue(Arc<Mutex<World>>);

impl Queue for SimQueue {
    fn poll(&mut self, _wait: Duration) -> Result<QueueSnapshot, scaling::queue::QueueError> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).snapshot())
    }
}

/// The simulator's view of the fleet, for the real control loop.
struct SimFleet(Arc<Mutex<World>>);

impl Fleet for SimFleet {
    fn describe(&mut self) -> Result<Vec<PoolState>, FleetError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pool_states())
    }

    fn raise_desired(&mut self, pool: &str, desired: u32) -> Result<(), FleetError> {
        let mut world = self.0.lock().unwrap_or_else(|p| p.into_inner());
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

/// Baseline scalers' state between ticks.
#[derive(Default)]
struct BaselineState {
    last_scale_out: Option<f64>,
}

/// Semaphore's agent-aws-stack: a Lambda each minute polling ~every 10 s for 50 s; desired =
/// queued + running (+ overprovision), scale up only; the first group only.
fn semaphore_tick(world: &mut World, spare: u32) {
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

/// buildkite-agent-scaler as the Elastic CI Stack runs it: every 10 s; desired = scheduled +
/// running (+ a proportional instance buffer), scale-out cooldown 300 s, scale-in disabled
/// (agents idle out after 600 s); the first group only.
fn buildkite_tick(world: &mut World, state: &mut BaselineState, spare: u32) {
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

/// Replays `trace` under `policy`.
pub fn simulate(trace: &[TraceJob], config: &SimConfig, policy: PolicyKind) -> Outcome {
    let (one_job, decrement, idle_timeout) = match policy {
        PolicyKind::Flotilla => (true, true, config.flotilla_idle_timeout_s),
        PolicyKind::Semaphore => (true, false, config.idle_timeout_s),
        PolicyKind::Buildkite => (false, true, 600.0),
    };
    let pools: Vec<PoolRuntime> = match policy {
        PolicyKind::Flotilla => config.pools.clone(),
        _ => config.pools.iter().take(1).cloned().collect(),
    }
    .into_iter()
    .map(|spec| PoolRuntime {
        desired: spec.min,
        spec,
        last_failure: None,
    })
    .collect();
    let world = Arc::new(Mutex::new(World {
        now: 0.0,
        jobs: trace
            .iter()
            .map(|j| SimJob {
                submit: j.submit_s,
                duration: j.duration_s,
                started: None,
                starts: 0,
                finished: None,
            })
            .collect(),
        next_submission: 0,
        queue: VecDeque::new(),
        instances: Vec::new(),
        pools,
        rng: StdRng::seed_from_u64(config.seed),
        launches: 0,
        boot_fixed_s: config.boot_fixed_s,
        boot_agent_s: config.boot_agent_s,
        spot_rate_per_s: config.spot_interruptions_per_hour / 3600.0,
        idle_timeout_s: idle_timeout,
        one_job_per_instance: one_job,
        decrement_after_job: decrement,
    }));
    let policy_config = PolicyConfig {
        spare: config.spare,
        rise_burst: 1000,
        rise_per_minute: 6000,
        warm_fraction: config.warm_fraction,
        warm_max: config.warm_max,
        // Warm agents outlive the window by their idle timeout, so the window is shorter.
        warm_window_ms: ((config.flotilla_idle_timeout_s * 1000.0) as u64).max(60_000),
        ..PolicyConfig::default()
    };
    let mut fleet_loop = FleetLoop::new(
        "sim",
        Box::new(SimQueue(world.clone())),
        Box::new(SimFleet(world.clone())),
        policy_config,
        false,
        Duration::from_secs(1),
    );
    let mut baseline = BaselineState::default();
    let last_submit = trace.iter().map(|j| j.submit_s).fold(0.0, f64::max);
    let end = last_submit + config.drain_limit_s;
    let mut series = Vec::new();
    let mut second: u64 = 0;
    loop {
        let now = second as f64;
        {
            let mut w = world.lock().unwrap_or_else(|p| p.into_inner());
            w.now = now;
            w.step(1.0);
            let all_done = w.next_submission == w.jobs.len()
                && w.queue.is_empty()
                && w.jobs.iter().all(|j| j.finished.is_some());
            if second.is_multiple_of(60) {
                let snapshot = w.snapshot();
                series.push(SeriesRow {
                    time_s: now,
                    queued: snapshot.queued,
                    running: snapshot.running,
                    instances: (0..w.pools.len()).map(|p| w.live(p) as u32).sum(),
                    desired: w.pools.iter().map(|p| p.desired).sum(),
                });
            }
            let fleet_empty = (0..w.pools.len()).all(|p| w.live(p) == 0);
            if (all_done && fleet_empty) || now >= end {
                break;
            }
            match policy {
                PolicyKind::Semaphore => {
                    if (second % 60).is_multiple_of(10) && second % 60 <= 40 {
                        semaphore_tick(&mut w, config.spare);
                    }
                }
                PolicyKind::Buildkite => {
                    if second.is_multiple_of(10) {
                        buildkite_tick(&mut w, &mut baseline, config.spare);
                    }
                }
                PolicyKind::Flotilla => {}
            }
        }
        if policy == PolicyKind::Flotilla {
            // The hub's long-poll wakes the real loop on every change; at this resolution: each second.
            fleet_loop.tick_at(second * 1000, 1_795_392_000 + second as i64);
        }
        second += 1;
    }
    let w = world.lock().unwrap_or_else(|p| p.into_inner());
    let end_time = w.now;
    let mut instance_seconds = 0.0;
    let mut idle_seconds = 0.0;
    let mut cost = 0.0;
    for instance in &w.instances {
        let lived = instance.gone_at.unwrap_or(end_time) - instance.launched;
        instance_seconds += lived;
        idle_seconds += instance.idle_seconds;
        cost += lived / 3600.0 * w.pools[instance.pool].spec.price_per_hour;
    }
    Outcome {
        policy,
        waits: w
            .jobs
            .iter()
            .filter_map(|j| j.started.map(|s| s - j.submit))
            .collect(),
        never_started: w.jobs.iter().filter(|j| j.started.is_none()).count(),
        started_more_than_once: w.jobs.iter().filter(|j| j.starts > 1).count(),
        finished: w.jobs.iter().filter(|j| j.finished.is_some()).count(),
        instance_seconds,
        idle_instance_seconds: idle_seconds,
        cost,
        launches: w.launches,
        series,
    }
}

/// The built-in scenarios: the trace and the fleet it runs on.
pub fn scenario(name: &str, seed: u64) -> Option<(Vec<TraceJob>, SimConfig)> {
    match name {
        "bursty-day" => Some((
            trace::bursty_day(seed),
            SimConfig {
                seed,
                ..SimConfig::single_pool(60, 0.384)
            },
        )),
        "steady" => Some((
            trace::steady(seed),
            SimConfig {
                seed,
                ..SimConfig::single_pool(20, 0.384)
            },
        )),
        "gpu-shortage" => {
            let mut config = SimConfig {
                seed,
                ..SimConfig::single_pool(20, 0.0)
            };
            config.pools = vec![
                PoolSpec {
                    name: "g5-spot".into(),
                    min: 0,
                    max: 20,
                    spot: true,
                    price_per_hour: 0.50,
                    extra_boot_s: 45.0,
                    outages: vec![(10.0 * 3600.0, 12.0 * 3600.0)],
                },
                PoolSpec {
                    name: "g5-ondemand".into(),
                    min: 0,
                    max: 20,
                    spot: false,
                    price_per_hour: 1.21,
                    extra_boot_s: 45.0,
                    outages: Vec::new(),
                },
            ];
            Some((trace::gpu_shortage_day(seed), config))
        }
        _ => None,
    }
}

/// The results as a table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<10} {:>9} {:>9} {:>9} {:>12} {:>12} {:>9} {:>8} {:>9}\n",
        "policy",
        "p50 wait",
        "p95 wait",
        "p99 wait",
        "inst-min",
        "idle inst-min",
        "cost $",
        "never",
        "launches"
    );
    for o in outcomes {
        out.push_str(&format!(
            "{:<10} {:>8.0}s {:>8.0}s {:>8.0}s {:>12.0} {:>12.0} {:>9.2} {:>8} {:>9}\n",
            o.policy.name(),
            o.wait_percentile(0.5),
            o.wait_percentile(0.95),
            o.wait_percentile(0.99),
            o.instance_seconds / 60.0,
            o.idle_instance_seconds / 60.0,
            o.cost,
            o.never_started,
            o.launches
        ));
    }
    out
}

/// The time series of every policy as one CSV.
pub fn series_csv(outcomes: &[Outcome]) -> String {
    let mut out = String::from("policy,time_s,queued,running,instances,desired\n");
    for o in outcomes {
        for row in &o.series {
            out.push_str(&format!(
                "{},{},{},{},{},{}\n",
                o.policy.name(),
                row.time_s,
                row.queued,
                row.running,
                row.instances,
                row.desired
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_policies() -> [PolicyKind; 3] {
        [
            PolicyKind::Flotilla,
            PolicyKind::Semaphore,
            PolicyKind::Buildkite,
        ]
    }

    #[test]
    fn same_seed_same_table() {
        let (trace, config) = scenario("steady", 4).unwrap();
        let first: Vec<Outcome> = all_policies()
            .iter()
            .map(|&p| simulate(&trace, &config, p))
            .collect();
        let second: Vec<Outcome> = all_policies()
            .iter()
            .map(|&p| simulate(&trace, &config, p))
            .collect();
        assert_eq!(table(&first), table(&second));
        assert_eq!(series_csv(&first), series_csv(&second));
    }

    #[test]
    fn zero_boot_and_ample_capacity_means_almost_no_wait() {
        let (trace, mut config) = scenario("steady", 2).unwrap();
        config.boot_fixed_s = 0.0;
        config.boot_agent_s = (0.0, 0.0);
        config.pools[0].max = 10_000;
        let flotilla = simulate(&trace, &config, PolicyKind::Flotilla);
        // Submit → seen → launched → ready → assigned, at the simulator's 1 s resolution.
        assert!(
            flotilla.wait_percentile(0.99) <= 3.0,
            "{}",
            flotilla.wait_percentile(0.99)
        );
        // The baselines only wait for their polling schedules.
        assert!(simulate(&trace, &config, PolicyKind::Semaphore).wait_percentile(0.99) <= 30.0);
        assert!(simulate(&trace, &config, PolicyKind::Buildkite).wait_percentile(0.5) <= 10.0);
    }

    #[test]
    fn with_max_zero_nothing_runs() {
        let (trace, mut config) = scenario("steady", 2).unwrap();
        config.pools[0].max = 0;
        config.drain_limit_s = 3600.0;
        for policy in all_policies() {
            let outcome = simulate(&trace, &config, policy);
            assert_eq!(outcome.never_started, trace.len(), "{policy:?}");
            assert_eq!(outcome.launches, 0);
        }
    }

    #[test]
    fn every_job_starts_once_and_finishes_once() {
        let (trace, config) = scenario("bursty-day", 3).unwrap();
        for policy in all_policies() {
            let outcome = simulate(&trace, &config, policy);
            assert_eq!(outcome.never_started, 0, "{policy:?}");
            assert_eq!(outcome.started_more_than_once, 0, "{policy:?}");
            assert_eq!(outcome.finished, trace.len(), "{policy:?}");
            assert_eq!(outcome.waits.len(), trace.len());
        }
    }

    #[test]
    fn spill_over_starts_every_job_on_the_shortage_day() {
        let (trace, config) = scenario("gpu-shortage", 1).unwrap();
        let flotilla = simulate(&trace, &config, PolicyKind::Flotilla);
        assert_eq!(flotilla.never_started, 0);
        let semaphore = simulate(&trace, &config, PolicyKind::Semaphore);
        assert!(flotilla.wait_percentile(0.95) < semaphore.wait_percentile(0.95));
    }
}
