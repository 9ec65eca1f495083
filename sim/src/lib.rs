//! `scaler simulate`: replays a job trace on a virtual clock (no sleeping: a day runs in about a
//! second) against a simulated Auto Scaling fleet — launches, boot times drawn from a distribution,
//! one job per agent, capacity outages per pool, spot interruptions, GPU faults — driven by
//! Flotilla's real policy and control loop ([`FleetLoop`] through the
//! [`Queue`](scaling::queue::Queue) and [`Fleet`](scaling::fleet::Fleet) traits) — as it is now (`flotilla`: a forecast of demand and
//! warm pools of stopped instances) and as it was before them (`flotilla-before`: warm capacity
//! following recent demand) — or by the two baselines re-implemented from their public
//! descriptions (docs/ARCHITECTURE.md, "The simulator"): Semaphore's agent-aws-stack scaler and
//! buildkite-agent-scaler.
//!
//! This file holds the clock loop ([`simulate`]) and who drives the fleet; the world it advances
//! is in `world`, the fleet and scenarios in `config`, the baselines in `baselines`, Flotilla's
//! adapters in `flotilla`, and the results and their rendering in `report`.

mod baselines;
mod config;
mod flotilla;
pub mod plot;
mod report;
pub mod trace;
mod world;

pub use config::{scenario, PoolSpec, SimConfig};
pub use report::{series_csv, table, Outcome, SeriesRow};

use baselines::BaselineState;
use scaling::control::FleetLoop;
use std::sync::{Arc, Mutex};
use trace::TraceJob;
use world::{lock, World};

/// The simulated clock's start, in Unix seconds: Monday 2026-11-23 00:00 UTC (scheduled minimums
/// see this time of day and week).
pub(crate) const START_UNIX: i64 = 1_795_392_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// The policy now: forecast warm capacity and warm pools.
    Flotilla,
    /// The policy before warm pools and the forecast (`warm_fraction` / `warm_max`).
    FlotillaBefore,
    Semaphore,
    Buildkite,
}

impl PolicyKind {
    pub fn parse(name: &str) -> Option<PolicyKind> {
        match name {
            "flotilla" => Some(PolicyKind::Flotilla),
            "flotilla-before" => Some(PolicyKind::FlotillaBefore),
            "semaphore" => Some(PolicyKind::Semaphore),
            "buildkite" => Some(PolicyKind::Buildkite),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Flotilla => "flotilla",
            PolicyKind::FlotillaBefore => "flotilla-before",
            PolicyKind::Semaphore => "semaphore",
            PolicyKind::Buildkite => "buildkite",
        }
    }
}

/// Replays `trace` under `policy`: one-second ticks until every job has finished and the fleet
/// is empty, or `drain_limit_s` after the last submission. A series row each minute.
pub fn simulate(trace: &[TraceJob], config: &SimConfig, policy: PolicyKind) -> Outcome {
    let world = Arc::new(Mutex::new(World::new(trace, config, policy)));
    let mut driver = Driver::new(policy, config, &world);
    let last_submit = trace.iter().map(|j| j.submit_s).fold(0.0, f64::max);
    let end = last_submit + config.drain_limit_s;
    let mut series = Vec::new();
    let mut second: u64 = 0;
    loop {
        {
            let mut w = lock(&world);
            w.now = second as f64;
            w.step(1.0);
            if second.is_multiple_of(60) {
                series.push(w.series_row());
            }
            if (w.all_done() && w.fleet_empty()) || w.now >= end {
                break;
            }
            driver.baseline_tick(&mut w, second);
        }
        driver.flotilla_tick(second);
        second += 1;
    }
    let world = lock(&world);
    report::outcome(&world, policy, series)
}

/// Who raises the fleet's desired capacity, and on what schedule.
enum Driver {
    /// Flotilla's real control loop, which takes the world's lock itself through its traits.
    Flotilla(Box<FleetLoop>),
    Semaphore {
        spare: u32,
    },
    Buildkite {
        state: BaselineState,
        spare: u32,
    },
}

impl Driver {
    fn new(policy: PolicyKind, config: &SimConfig, world: &Arc<Mutex<World>>) -> Driver {
        match policy {
            PolicyKind::Flotilla | PolicyKind::FlotillaBefore => {
                Driver::Flotilla(Box::new(flotilla::fleet_loop(world, config, policy)))
            }
            PolicyKind::Semaphore => Driver::Semaphore {
                spare: config.spare,
            },
            PolicyKind::Buildkite => Driver::Buildkite {
                state: BaselineState::default(),
                spare: config.spare,
            },
        }
    }

    /// A baseline's tick at `second`, when its schedule says, with the world locked.
    fn baseline_tick(&mut self, world: &mut World, second: u64) {
        match self {
            Driver::Semaphore { spare } if baselines::semaphore_polls_at(second) => {
                baselines::semaphore_tick(world, *spare);
            }
            Driver::Buildkite { state, spare } if baselines::buildkite_runs_at(second) => {
                baselines::buildkite_tick(world, state, *spare);
            }
            _ => {}
        }
    }

    /// Flotilla's tick at `second`, with the world unlocked. The hub's long-poll wakes the real
    /// loop on every change; at this resolution: each second.
    fn flotilla_tick(&mut self, second: u64) {
        if let Driver::Flotilla(fleet_loop) = self {
            fleet_loop.tick_at(second * 1000, START_UNIX + second as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_policies() -> [PolicyKind; 4] {
        [
            PolicyKind::Flotilla,
            PolicyKind::FlotillaBefore,
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
        config.start_s = (0.0, 0.0);
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
            let sum = outcome.running_cost + outcome.stopped_cost;
            assert!(
                (outcome.cost - sum).abs() < 1e-9,
                "{policy:?}: costs add up"
            );
            if policy != PolicyKind::Flotilla {
                assert_eq!(outcome.stopped_cost, 0.0, "{policy:?} keeps no warm pool");
                assert_eq!(outcome.warm_starts, 0);
            }
        }
    }

    #[test]
    fn warm_pools_cut_the_wait_on_both_days() {
        let (trace, config) = scenario("bursty-day", 2).unwrap();
        let [now, before, semaphore] = [
            PolicyKind::Flotilla,
            PolicyKind::FlotillaBefore,
            PolicyKind::Semaphore,
        ]
        .map(|policy| simulate(&trace, &config, policy).wait_percentile(0.95));
        assert!(
            now < before && now <= 0.33 * semaphore,
            "{now} {before} {semaphore}"
        );
        let (trace, config) = scenario("gpu-shortage", 2).unwrap();
        let gpu = simulate(&trace, &config, PolicyKind::Flotilla);
        assert_eq!(gpu.never_started, 0);
        assert!(gpu.warm_starts > 0);
        assert!(
            gpu.wait_percentile(0.95) <= 65.0,
            "{}",
            gpu.wait_percentile(0.95)
        );
    }

    /// Two GPU pools in priority order, the first with `fault_rate`; 40 ten-minute jobs, one
    /// every 90 s.
    fn faulty_first_pool(fault_rate: f64) -> (Vec<TraceJob>, SimConfig) {
        let mut config = SimConfig::single_pool(20, 0.5);
        config.pools[0].name = "gpu-a".into();
        config.pools[0].warm_pool_max = 0;
        let mut second = config.pools[0].clone();
        config.pools[0].fault_rate = fault_rate;
        second.name = "gpu-b".into();
        second.price_per_hour = 1.2;
        config.pools.push(second);
        config.drain_limit_s = 4.0 * 3600.0;
        let trace = (0..40)
            .map(|index| TraceJob {
                submit_s: f64::from(index) * 90.0,
                duration_s: 600.0,
                agent_type: "gpu".into(),
            })
            .collect();
        (trace, config)
    }

    #[test]
    fn a_pool_that_keeps_faulting_spills_to_the_next_and_every_job_finishes() {
        let (trace, config) = faulty_first_pool(1.0);
        let outcome = simulate(&trace, &config, PolicyKind::Flotilla);
        assert_eq!(outcome.finished, trace.len(), "{outcome:?}");
        assert_eq!(outcome.never_started, 0);
        // Every instance of gpu-a is bad: every job finished on gpu-b.
        assert_eq!(outcome.finished_by_pool, vec![0, trace.len()]);
        let threshold = config.pool_health.faults as usize;
        assert!(outcome.faults >= threshold, "{}", outcome.faults);
        // Without the cool-off gpu-a takes every job again after each fault.
        let mut blind = config.clone();
        blind.pool_health.faults = 0;
        let without = simulate(&trace, &blind, PolicyKind::Flotilla);
        assert!(
            without.finished < trace.len() && without.faults > 5 * outcome.faults,
            "with the cool-off {} faults, without {} faults and {} of {} finished",
            outcome.faults,
            without.faults,
            without.finished,
            trace.len()
        );
    }

    #[test]
    fn a_healthy_first_pool_takes_the_jobs() {
        let (trace, config) = faulty_first_pool(0.0);
        let outcome = simulate(&trace, &config, PolicyKind::Flotilla);
        assert_eq!(outcome.finished, trace.len());
        assert_eq!(outcome.faults, 0);
        assert_eq!(outcome.finished_by_pool, vec![trace.len(), 0]);
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
