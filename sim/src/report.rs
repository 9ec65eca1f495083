//! What a run produced: the per-policy [`Outcome`] (waits, instance time, dollars for running and
//! for stopped instances, the per-minute series) gathered from the world once the clock stops, and its two renderings, the table
//! `scaler simulate` prints and the CSV it writes. Formatting only here: the numbers are
//! computed once, in [`outcome`].

use crate::world::World;
use crate::PolicyKind;

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
    /// Seconds instances ran (booting, starting, idle, busy); stopped seconds are not in it.
    pub instance_seconds: f64,
    pub idle_instance_seconds: f64,
    /// Seconds instances spent stopped in warm pools.
    pub stopped_instance_seconds: f64,
    /// Dollars for running instances and for stopped ones (their volumes); `cost` is the sum.
    pub running_cost: f64,
    pub stopped_cost: f64,
    pub cost: f64,
    pub launches: u64,
    /// Instances started from a warm pool.
    pub warm_starts: u64,
    /// Instances removed for a hardware fault (pools with a `fault_rate`).
    pub faults: usize,
    /// Jobs finished on each pool the run used, in the config's order.
    pub finished_by_pool: Vec<usize>,
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

/// The outcome of `policy` from the world as the clock stopped; instances still alive count
/// until then.
pub(crate) fn outcome(world: &World, policy: PolicyKind, series: Vec<SeriesRow>) -> Outcome {
    let end_time = world.now;
    let (mut instance_seconds, mut idle_seconds, mut stopped_seconds) = (0.0, 0.0, 0.0);
    let (mut running_cost, mut stopped_cost) = (0.0, 0.0);
    for instance in &world.instances {
        let lived = instance.gone_at.unwrap_or(end_time) - instance.launched;
        let running = lived - instance.stopped_seconds;
        let spec = &world.pools[instance.pool].spec;
        instance_seconds += running;
        idle_seconds += instance.idle_seconds;
        stopped_seconds += instance.stopped_seconds;
        running_cost += running / 3600.0 * spec.price_per_hour;
        stopped_cost += instance.stopped_seconds / 3600.0 * spec.stopped_price_per_hour;
    }
    let jobs = &world.jobs;
    Outcome {
        policy,
        waits: jobs
            .iter()
            .filter_map(|j| j.started.map(|s| s - j.submit))
            .collect(),
        never_started: jobs.iter().filter(|j| j.started.is_none()).count(),
        started_more_than_once: jobs.iter().filter(|j| j.starts > 1).count(),
        finished: jobs.iter().filter(|j| j.finished.is_some()).count(),
        instance_seconds,
        idle_instance_seconds: idle_seconds,
        stopped_instance_seconds: stopped_seconds,
        running_cost,
        stopped_cost,
        cost: running_cost + stopped_cost,
        launches: world.launches,
        warm_starts: world.warm_starts,
        faults: world.faults.len(),
        finished_by_pool: (0..world.pools.len())
            .map(|pool| jobs.iter().filter(|j| j.finished_on == Some(pool)).count())
            .collect(),
        series,
    }
}

/// The results as a table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>13} {:>12} {:>8} {:>10} {:>9} {:>6} {:>9} {:>7}\n",
        "policy",
        "p50 wait",
        "p95 wait",
        "p99 wait",
        "inst-min",
        "idle inst-min",
        "stopped-min",
        "run $",
        "stopped $",
        "cost $",
        "never",
        "launches",
        "starts"
    );
    for o in outcomes {
        out.push_str(&format!(
            "{:<16} {:>8.0}s {:>8.0}s {:>8.0}s {:>9.0} {:>13.0} {:>12.0} {:>8.2} {:>10.2} {:>9.2} {:>6} {:>9} {:>7}\n",
            o.policy.name(),
            o.wait_percentile(0.5),
            o.wait_percentile(0.95),
            o.wait_percentile(0.99),
            o.instance_seconds / 60.0,
            o.idle_instance_seconds / 60.0,
            o.stopped_instance_seconds / 60.0,
            o.running_cost,
            o.stopped_cost,
            o.cost,
            o.never_started,
            o.launches,
            o.warm_starts
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
