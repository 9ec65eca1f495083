//! What a simulation runs on: the capacity pools, boot times, idle timeouts and spare capacity
//! ([`SimConfig`]), and the built-in scenarios that pair a generated trace with the fleet it was
//! written for. Plain data: nothing here runs the clock.

use crate::trace::{self, TraceJob};

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
    /// Flotilla's warm capacity (see [`scaling::policy::PolicyConfig::warm_fraction`]).
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
