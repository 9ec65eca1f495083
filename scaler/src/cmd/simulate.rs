//! `scaler simulate`: replay a built-in scenario or a CSV trace against Flotilla's policy (as it
//! is, and as it was before warm pools and the forecast) and the baselines, print a table per
//! policy (waits, instance time, dollars for running and for stopped instances), and write the
//! time series as CSV.

use anyhow::{bail, Context, Result};
use scaling::forecast::ForecastConfig;
use sim::{trace, PolicyKind};
use std::path::PathBuf;

#[derive(clap::Args)]
pub(crate) struct SimulateArgs {
    /// A built-in scenario (bursty-day, gpu-shortage, steady) or a CSV file
    /// (submit_time,duration,agent_type; seconds).
    #[arg(long, default_value = "bursty-day")]
    pub trace: String,
    /// Policies to compare: flotilla (forecast + warm pools), flotilla-before (warm capacity
    /// from --warm-fraction/--warm-max, no warm pools), semaphore, buildkite.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "flotilla-before,flotilla,semaphore,buildkite"
    )]
    pub policy: Vec<String>,
    /// Random seed (traces and boot times): same seed, same table.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instances kept beyond the queue (each policy's own notion of it).
    #[arg(long, default_value_t = 0)]
    pub spare: u32,
    /// flotilla-before's warm capacity: this fraction of the recent peak demand kept ready ...
    #[arg(long, default_value_t = 0.0)]
    pub warm_fraction: f64,
    /// ... at most this many instances (0: off).
    #[arg(long, default_value_t = 0)]
    pub warm_max: u32,
    /// flotilla's running warm capacity: enough idle agents that this share of a batch's jobs
    /// starts at once ...
    #[arg(long, default_value_t = ForecastConfig::default().warm_share)]
    pub warm_share: f64,
    /// ... kept in proportion to the chance that a batch comes within this many seconds.
    #[arg(long, default_value_t = ForecastConfig::default().warm_keep_s)]
    pub warm_keep: f64,
    /// Multiply the start time of a stopped instance from a warm pool (19–25 s, GPU pools
    /// +10 s) by this (0.5 and 2 bracket the default guess).
    #[arg(long, default_value_t = 1.0)]
    pub start_scale: f64,
    /// Seconds an idle Flotilla agent waits before removing itself (the baselines keep their
    /// stacks' defaults: Semaphore 300 s, Buildkite 600 s).
    #[arg(long, default_value_t = 300.0)]
    pub idle_timeout: f64,
    /// Largest fleet (for CSV traces and single-pool scenarios).
    #[arg(long)]
    pub max: Option<u32>,
    /// Price per instance-hour for CSV traces, in dollars.
    #[arg(long, default_value_t = 0.384)]
    pub price: f64,
    /// Spot interruptions per spot instance per hour.
    #[arg(long, default_value_t = 0.0)]
    pub spot_interruptions: f64,
    /// Write the time series (per minute, per policy) to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Render queue depth and fleet size over time per policy to this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the trace used to this CSV file (to replay or edit it).
    #[arg(long)]
    pub save_trace: Option<PathBuf>,
}

pub(crate) fn run(args: SimulateArgs) -> Result<i32> {
    let (jobs, mut config) = load_trace(&args)?;
    if jobs.is_empty() {
        bail!("the trace has no jobs");
    }
    let policies = parse_policies(&args.policy)?;
    apply_overrides(&args, &mut config)?;
    if let Some(path) = &args.save_trace {
        std::fs::write(path, trace::to_csv(&jobs))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let started = std::time::Instant::now();
    let outcomes: Vec<sim::Outcome> = policies
        .iter()
        .map(|&policy| sim::simulate(&jobs, &config, policy))
        .collect();
    println!(
        "trace {}: {} jobs; pools in priority order: {} (baselines use the first); seed {}",
        args.trace,
        jobs.len(),
        describe_pools(&config),
        args.seed
    );
    print!("{}", sim::table(&outcomes));
    println!(
        "(waits: queued -> started; inst-min: instance-minutes running; stopped-min: in warm pools; starts: from warm pools; simulated in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    write_outputs(&args, &outcomes)?;
    Ok(0)
}

/// The jobs and the fleet they run on: a built-in scenario by name, or else a CSV trace on a
/// single pool of 50 at `--price`.
fn load_trace(args: &SimulateArgs) -> Result<(Vec<trace::TraceJob>, sim::SimConfig)> {
    if let Some(scenario) = sim::scenario(&args.trace, args.seed) {
        return Ok(scenario);
    }
    let text = std::fs::read_to_string(&args.trace).with_context(|| {
        format!(
            "'{}' is neither a built-in scenario (bursty-day, gpu-shortage, steady) nor a readable CSV file",
            args.trace
        )
    })?;
    let jobs = trace::read_csv(&text).with_context(|| format!("reading {}", args.trace))?;
    let config = sim::SimConfig {
        seed: args.seed,
        ..sim::SimConfig::single_pool(50, args.price)
    };
    Ok((jobs, config))
}

fn parse_policies(names: &[String]) -> Result<Vec<PolicyKind>> {
    names
        .iter()
        .map(|name| {
            PolicyKind::parse(name.trim()).with_context(|| {
                format!("unknown policy '{name}' (flotilla, flotilla-before, semaphore, buildkite)")
            })
        })
        .collect()
}

/// The command line's settings over the scenario's: spare and warm capacity, the forecast's
/// trade-off, start times, idle timeout, spot interruptions, and `--max` on every pool.
fn apply_overrides(args: &SimulateArgs, config: &mut sim::SimConfig) -> Result<()> {
    config.spare = args.spare;
    config.warm_fraction = args.warm_fraction;
    config.warm_max = args.warm_max;
    if !(0.0..=1.0).contains(&args.warm_share) || !(0.0..=f64::MAX).contains(&args.warm_keep) {
        bail!("--warm-share must be between 0 and 1 and --warm-keep a non-negative number");
    }
    config.forecast.warm_share = args.warm_share;
    config.forecast.warm_keep_s = args.warm_keep;
    if !(args.start_scale > 0.0 && args.start_scale.is_finite()) {
        bail!("--start-scale must be a positive number");
    }
    config.scale_start_times(args.start_scale);
    if args.idle_timeout.is_nan() || args.idle_timeout < 0.0 {
        bail!("--idle-timeout must be a non-negative number of seconds");
    }
    config.flotilla_idle_timeout_s = args.idle_timeout;
    config.spot_interruptions_per_hour = args.spot_interruptions;
    if let Some(max) = args.max {
        for pool in &mut config.pools {
            pool.max = max;
        }
    }
    Ok(())
}

/// The pools for the header line, in priority order: "name (max N, $P/h[, outages])".
fn describe_pools(config: &sim::SimConfig) -> String {
    let pools: Vec<String> = config
        .pools
        .iter()
        .map(|p| {
            let outages = if p.outages.is_empty() {
                ""
            } else {
                ", outages"
            };
            let warm_pool = if p.warm_pool_max > 0 {
                format!(", warm pool <= {}", p.warm_pool_max)
            } else {
                String::new()
            };
            format!(
                "{} (max {}, ${}/h{outages}{warm_pool})",
                p.name, p.max, p.price_per_hour
            )
        })
        .collect();
    pools.join(", ")
}

/// The time series CSV and the plot, where asked for.
fn write_outputs(args: &SimulateArgs, outcomes: &[sim::Outcome]) -> Result<()> {
    if let Some(path) = &args.csv {
        std::fs::write(path, sim::series_csv(outcomes))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("time series written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} (seed {}): queue and fleet per policy",
            args.trace, args.seed
        );
        sim::plot::render(outcomes, &title, path)?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}
