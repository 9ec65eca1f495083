//! What a simulation runs on: the capacity pools, boot and start times, idle timeouts, spare
//! capacity and warm pools ([`SimConfig`]), and the built-in scenarios that pair a generated trace
//! (and the past days a forecast learns from) with the fleet it was written for. Plain data:
//! nothing here runs the clock.
//!
//! Where the numbers come from:
//! - a cold boot: 16 s pending → running (brevdev/ec2-coldboot-research measured 16.4–16.6 s on
//!   every instance family it tried) and 25–70 s until a baked AMI's agent registers (RunsOn,
//!   terraform-aws-github-runner users, namecheap's fork: README, "The simulator");
//! - a start from a warm pool (a stopped, already initialised instance): 19–25 s by default, the
//!   same 16 s to running, then the OS resuming and the agent registering. brevdev measured a
//!   stop/start at 21.2 s to SSH against 25.8 s for a cold launch; RunsOn's documentation on warm
//!   pools gives under 15 s of queue time for a stopped Linux runner. GPU pools add 10 s (the
//!   driver loads; the image is already on the volume): an assumption, not a measurement. It is
//!   a parameter ([`SimConfig::start_s`]) and `bench/warm-pools.sh` prints the results at half
//!   and double it;
//! - a stopped instance costs its EBS root volume: the stack's default 100 GiB of gp3 at
//!   $0.08 per GiB-month (us-east-1) ≈ $0.011 an hour. Hibernation is not modelled: it would
//!   keep memory on the volume (more EBS) to save the agent's registration, a second or two;
//! - EC2 Auto Scaling refuses a warm pool on a group that requests spot instances or has a mixed
//!   instances policy (the `PutWarmPool` API reference), so spot pools have none.

use crate::trace::{self, TraceJob};
use scaling::forecast::ForecastConfig;
use scaling::pool_health::HealthConfig;

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
    /// Windows (seconds from the start) in which the pool cannot launch or start an instance.
    pub outages: Vec<(f64, f64)>,
    /// The largest warm pool this group may keep (0: none; spot groups cannot have one).
    pub warm_pool_max: u32,
    /// What a stopped instance costs an hour (its EBS volume).
    pub stopped_price_per_hour: f64,
    /// Extra seconds a start from the warm pool takes in this pool (GPU drivers loading).
    pub extra_start_s: f64,
    /// The share of this pool's instances that are bad: they fail the GPU gate at boot or fault
    /// mid-job, and their agents remove them (`world::faults`). 0: none.
    pub fault_rate: f64,
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
    /// A stopped instance from a warm pool is ready after a uniform draw in this range, seconds
    /// (plus the pool's `extra_start_s`).
    pub start_s: (f64, f64),
    /// How `flotilla` sizes warm capacity and warm pools.
    pub forecast: ForecastConfig,
    /// Past days' submissions (seconds, negative: before the simulated day starts), the queue
    /// history `flotilla`'s forecast learns its time-of-day profile from.
    pub history: Vec<f64>,
    /// When Flotilla passes over a pool whose instances keep faulting (the scaler's default).
    pub pool_health: HealthConfig,
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
                warm_pool_max: 30,
                stopped_price_per_hour: EBS_PER_HOUR,
                extra_start_s: 0.0,
                fault_rate: 0.0,
            }],
            boot_fixed_s: 16.0,
            boot_agent_s: (25.0, 70.0),
            spot_interruptions_per_hour: 0.0,
            idle_timeout_s: 300.0,
            flotilla_idle_timeout_s: 300.0,
            spare: 0,
            warm_fraction: 0.0,
            warm_max: 0,
            start_s: (19.0, 25.0),
            forecast: ForecastConfig::default(),
            history: Vec::new(),
            pool_health: HealthConfig::default(),
            seed: 1,
            drain_limit_s: 12.0 * 3600.0,
        }
    }
}

impl SimConfig {
    /// Multiplies the start times of stopped instances (the range and every pool's extra).
    pub fn scale_start_times(&mut self, factor: f64) {
        self.start_s = (self.start_s.0 * factor, self.start_s.1 * factor);
        for pool in &mut self.pools {
            pool.extra_start_s *= factor;
        }
    }
}

/// 100 GiB of gp3 at $0.08 per GiB-month, per hour (a month of 730 hours).
const EBS_PER_HOUR: f64 = 100.0 * 0.08 / 730.0;
/// Past days a built-in scenario gives the forecast.
const HISTORY_DAYS: u64 = 7;

/// Submissions of `days` past days drawn by `generate` with seeds of their own (never a seed a
/// simulated day uses), each shifted before the simulated day: the queue history.
fn history(seed: u64, generate: fn(u64) -> Vec<TraceJob>) -> Vec<f64> {
    (1..=HISTORY_DAYS)
        .flat_map(|day| {
            generate(seed.wrapping_mul(1000).wrapping_add(day))
                .into_iter()
                .map(move |job| job.submit_s - day as f64 * 86_400.0)
        })
        .collect()
}

/// The built-in scenarios: the trace and the fleet it runs on.
pub fn scenario(name: &str, seed: u64) -> Option<(Vec<TraceJob>, SimConfig)> {
    match name {
        "bursty-day" => Some((
            trace::bursty_day(seed),
            SimConfig {
                seed,
                history: history(seed, trace::bursty_day),
                ..SimConfig::single_pool(60, 0.384)
            },
        )),
        "steady" => Some((
            trace::steady(seed),
            SimConfig {
                seed,
                history: history(seed, trace::steady),
                ..SimConfig::single_pool(20, 0.384)
            },
        )),
        "gpu-shortage" => {
            let mut config = SimConfig {
                seed,
                history: history(seed, trace::gpu_shortage_day),
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
                    warm_pool_max: 0,
                    stopped_price_per_hour: EBS_PER_HOUR,
                    extra_start_s: 10.0,
                    fault_rate: 0.0,
                },
                PoolSpec {
                    name: "g5-ondemand".into(),
                    min: 0,
                    max: 20,
                    spot: false,
                    price_per_hour: 1.21,
                    extra_boot_s: 45.0,
                    outages: Vec::new(),
                    warm_pool_max: 20,
                    stopped_price_per_hour: EBS_PER_HOUR,
                    extra_start_s: 10.0,
                    fault_rate: 0.0,
                },
            ];
            Some((trace::gpu_shortage_day(seed), config))
        }
        _ => None,
    }
}
