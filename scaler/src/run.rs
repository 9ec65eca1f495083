//! `scaler run`: the scaling service. Reads a YAML config (one entry per fleet: the agent type's
//! queue, its fleet, its policy), validates all of it before starting anything, runs one control
//! loop per fleet, serves Prometheus `/metrics`, and stops cleanly on SIGINT/SIGTERM.

use crate::control::{render_metrics, FleetLoop, LoopStatus};
use crate::fleet::{LocalFleet, LocalFleetConfig};
use crate::policy::PolicyConfig;
use crate::queue::MetricsQueue;
use crate::reaper::ReaperConfig;
use crate::schedule::ScheduledMinimum;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The scaler's YAML config (see examples/scaler.yaml).
    #[arg(
        long,
        env = "FLOTILLA_SCALER_CONFIG",
        required_unless_present = "config_ssm_parameter",
        conflicts_with = "config_ssm_parameter"
    )]
    pub config: Option<PathBuf>,
    /// Read the YAML config from this SSM parameter instead (the scaler instance of a deployed
    /// stack; region and credentials from the standard AWS chain).
    #[arg(long, env = "FLOTILLA_CONFIG_SSM_PARAMETER")]
    pub config_ssm_parameter: Option<String>,
    /// Decide and log, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log format.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerConfig {
    /// Where to serve Prometheus /metrics (none: not served).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long one round waits for a queue change (long-poll) or between polls, in ms.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    pub fleets: Vec<FleetConfig>,
}

fn default_poll_interval_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    pub agent_type: String,
    pub queue: QueueConfig,
    /// Agents as local processes ...
    #[serde(default)]
    pub local: Option<LocalConfig>,
    /// ... or Auto Scaling groups.
    #[serde(default)]
    pub aws: Option<AwsSection>,
    #[serde(default)]
    pub policy: PolicySection,
    /// The reaper (aws fleets; on by default there).
    #[serde(default)]
    pub reaper: Option<ReaperSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaperSection {
    #[serde(default = "default_boot_deadline")]
    pub boot_deadline_seconds: u64,
    #[serde(default)]
    pub max_lifetime_seconds: u64,
    #[serde(default = "default_reaper_interval")]
    pub interval_seconds: u64,
    /// `false` turns the reaper off.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_boot_deadline() -> u64 {
    ReaperConfig::default().boot_deadline_seconds
}
fn default_reaper_interval() -> u64 {
    ReaperConfig::default().interval_seconds
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSection {
    /// Default: AWS_REGION / the standard chain.
    #[serde(default)]
    pub region: String,
    /// Another endpoint for every AWS API (an emulator); default: AWS's.
    #[serde(default)]
    pub endpoint_url: String,
    /// Auto Scaling group names, in priority order (e.g. spot first, on-demand last).
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The control plane's base URL: the hub (`http://127.0.0.1:8080`) or Semaphore.
    pub endpoint: String,
    /// A file holding the agent type's registration token ...
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// ... or an environment variable holding it ...
    #[serde(default)]
    pub token_env: Option<String>,
    /// ... or an SSM parameter (SecureString) holding it.
    #[serde(default)]
    pub token_ssm_parameter: Option<String>,
    #[serde(default = "yes")]
    pub long_poll: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// The agent binary [default: `agent` beside `scaler`].
    #[serde(default)]
    pub agent_binary: Option<PathBuf>,
    /// Where instances get their working directories.
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
}

fn default_work_dir() -> PathBuf {
    PathBuf::from("flotilla-fleet")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    #[serde(default)]
    pub spare: u32,
    #[serde(default = "default_rise_per_minute")]
    pub rise_per_minute: u32,
    #[serde(default = "default_rise_burst")]
    pub rise_burst: u32,
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
    /// A list of {cron, time_zone, minimum}, or the compact string form
    /// `CRON@TIME_ZONE=MINIMUM;…` (what the CloudFormation stack passes).
    #[serde(default)]
    pub scheduled_minimums: ScheduledMinimums,
    /// Warm capacity following recent demand (off while warm_max is 0).
    #[serde(default)]
    pub warm_fraction: f64,
    #[serde(default = "default_warm_window_ms")]
    pub warm_window_ms: u64,
    #[serde(default)]
    pub warm_max: u32,
}

fn default_warm_window_ms() -> u64 {
    PolicyConfig::default().warm_window_ms
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            spare: 0,
            rise_per_minute: default_rise_per_minute(),
            rise_burst: default_rise_burst(),
            stale_after_ms: default_stale_after_ms(),
            scheduled_minimums: ScheduledMinimums::default(),
            warm_fraction: 0.0,
            warm_window_ms: default_warm_window_ms(),
            warm_max: 0,
        }
    }
}

fn default_rise_per_minute() -> u32 {
    PolicyConfig::default().rise_per_minute
}
fn default_rise_burst() -> u32 {
    PolicyConfig::default().rise_burst
}
fn default_stale_after_ms() -> u64 {
    PolicyConfig::default().stale_after_ms
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ScheduledMinimums {
    List(Vec<ScheduleSection>),
    Compact(String),
}

impl Default for ScheduledMinimums {
    fn default() -> Self {
        ScheduledMinimums::List(Vec::new())
    }
}

impl ScheduledMinimums {
    /// The entries, the compact form parsed (`* 8-18 * * MON-FRI@Europe/Berlin=2;…`).
    pub fn entries(&self) -> Result<Vec<ScheduleSection>> {
        match self {
            ScheduledMinimums::List(list) => Ok(list
                .iter()
                .map(|e| ScheduleSection {
                    cron: e.cron.clone(),
                    time_zone: e.time_zone.clone(),
                    minimum: e.minimum,
                })
                .collect()),
            ScheduledMinimums::Compact(text) => text
                .split(';')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(|entry| {
                    let (rest, minimum) = entry.rsplit_once('=').with_context(|| {
                        format!("scheduled minimum '{entry}': expected CRON@TIME_ZONE=MINIMUM")
                    })?;
                    let (cron, time_zone) = rest.rsplit_once('@').unwrap_or((rest, "UTC"));
                    let minimum = minimum.trim().parse().with_context(|| {
                        format!("scheduled minimum '{entry}': '{minimum}' is not a whole number")
                    })?;
                    Ok(ScheduleSection {
                        cron: cron.trim().to_string(),
                        time_zone: time_zone.trim().to_string(),
                        minimum,
                    })
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    pub cron: String,
    #[serde(default = "utc")]
    pub time_zone: String,
    pub minimum: u32,
}

fn utc() -> String {
    "UTC".into()
}

/// Where a fleet's instances come from.
pub enum FleetKind {
    Local(LocalFleetConfig),
    Aws {
        region: String,
        endpoint_url: String,
        groups: Vec<String>,
    },
}

/// A fleet's settings, checked and resolved.
pub struct ResolvedFleet {
    pub agent_type: String,
    pub endpoint: String,
    pub token: String,
    pub long_poll: bool,
    pub fleet: FleetKind,
    pub policy: PolicyConfig,
    pub reaper: Option<ReaperConfig>,
}

/// The agent binary shipped beside this `scaler`.
pub fn default_agent_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("agent")))
        .unwrap_or_else(|| PathBuf::from("agent"))
}

/// `http://host:port` → (`host:port`, plain HTTP?).
pub fn agent_endpoint(url: &str) -> Result<(String, bool)> {
    let (no_https, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else {
        bail!("endpoint '{url}' must start with http:// or https://");
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        bail!("endpoint '{url}' must be a base URL such as http://127.0.0.1:8080");
    }
    Ok((host.to_string(), no_https))
}

pub fn policy_from(section: &PolicySection, agent_type: &str) -> Result<PolicyConfig> {
    let mut scheduled = Vec::new();
    let entries = section
        .scheduled_minimums
        .entries()
        .with_context(|| format!("fleet '{agent_type}'"))?;
    for entry in &entries {
        scheduled.push(
            ScheduledMinimum::new(&entry.cron, &entry.time_zone, entry.minimum)
                .with_context(|| format!("fleet '{agent_type}': scheduled minimum"))?,
        );
    }
    if !(0.0..=4.0).contains(&section.warm_fraction) {
        bail!("fleet '{agent_type}': warm_fraction must be between 0 and 4");
    }
    if section.rise_burst == 0 || section.rise_per_minute == 0 {
        bail!("fleet '{agent_type}': rise_burst and rise_per_minute must be positive");
    }
    Ok(PolicyConfig {
        spare: section.spare,
        rise_per_minute: section.rise_per_minute,
        rise_burst: section.rise_burst,
        stale_after_ms: section.stale_after_ms,
        scheduled_minimums: scheduled,
        warm_fraction: section.warm_fraction,
        warm_window_ms: section.warm_window_ms,
        warm_max: section.warm_max,
    })
}

/// Parses and validates the whole config; nothing starts if anything is wrong.
pub fn load_config(path: &Path) -> Result<(ScalerConfig, Vec<ResolvedFleet>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    load_config_text(
        &text,
        &path.display().to_string(),
        path.parent().unwrap_or(Path::new(".")),
    )
}

/// Reads the config from an SSM parameter (region/credentials/endpoint from the standard chain).
pub fn load_config_from_ssm(parameter: &str) -> Result<(ScalerConfig, Vec<ResolvedFleet>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sdk = crate::fleet_aws::sdk_config(&runtime, "", "").map_err(anyhow::Error::msg)?;
    let text = crate::fleet_aws::ssm_parameter(&runtime, &sdk, parameter)
        .map_err(anyhow::Error::msg)
        .context("reading the scaler config")?;
    load_config_text(&text, &format!("SSM parameter {parameter}"), Path::new("."))
}

/// Parses and validates a config's text; `origin` names it in errors, relative paths start at `base`.
pub fn load_config_text(
    text: &str,
    origin: &str,
    base: &Path,
) -> Result<(ScalerConfig, Vec<ResolvedFleet>)> {
    let config: ScalerConfig = serde_yaml::from_str(text)
        .with_context(|| format!("{origin} is not a valid scaler config"))?;
    if config.fleets.is_empty() {
        bail!("{origin}: no fleets configured");
    }
    if config.poll_interval_ms < 100 {
        bail!("poll_interval_ms must be at least 100");
    }
    let mut resolved = Vec::new();
    for fleet in &config.fleets {
        let name = &fleet.agent_type;
        if !protocol::spec::valid_agent_type(name) {
            bail!("fleet '{name}': not a valid agent type name");
        }
        if resolved
            .iter()
            .any(|r: &ResolvedFleet| &r.agent_type == name)
        {
            bail!("fleet '{name}' is configured twice");
        }
        let (aws_region, aws_endpoint) = fleet
            .aws
            .as_ref()
            .map(|a| (a.region.as_str(), a.endpoint_url.as_str()))
            .unwrap_or(("", ""));
        let token = match (&fleet.queue.token_file, &fleet.queue.token_env, &fleet.queue.token_ssm_parameter) {
            (Some(file), None, None) => {
                let file = if file.is_absolute() { file.clone() } else { base.join(file) };
                std::fs::read_to_string(&file).with_context(|| format!("fleet '{name}': cannot read token_file {}", file.display()))?.trim().to_string()
            }
            (None, Some(variable), None) => std::env::var(variable).with_context(|| format!("fleet '{name}': token_env {variable} is not set"))?,
            (None, None, Some(parameter)) => {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let sdk = crate::fleet_aws::sdk_config(&runtime, aws_region, aws_endpoint).map_err(anyhow::Error::msg).with_context(|| format!("fleet '{name}'"))?;
                crate::fleet_aws::ssm_parameter(&runtime, &sdk, parameter).map_err(anyhow::Error::msg).with_context(|| format!("fleet '{name}'"))?
            }
            _ => bail!("fleet '{name}': give exactly one of queue.token_file, queue.token_env and queue.token_ssm_parameter"),
        };
        if token.is_empty() {
            bail!("fleet '{name}': the registration token is empty");
        }
        let kind = match (&fleet.local, &fleet.aws) {
            (Some(local), None) => {
                if local.min > local.max {
                    bail!(
                        "fleet '{name}': min ({}) is greater than max ({})",
                        local.min,
                        local.max
                    );
                }
                let (endpoint, no_https) = agent_endpoint(&fleet.queue.endpoint)
                    .with_context(|| format!("fleet '{name}'"))?;
                let agent_binary = local
                    .agent_binary
                    .clone()
                    .unwrap_or_else(default_agent_binary);
                let work_dir = if local.work_dir.is_absolute() {
                    local.work_dir.clone()
                } else {
                    base.join(&local.work_dir)
                };
                FleetKind::Local(LocalFleetConfig {
                    pool: format!("{name}-local"),
                    min: local.min,
                    max: local.max,
                    agent_binary,
                    endpoint,
                    no_https,
                    registration_token: token.clone(),
                    work_dir: work_dir.join(name),
                })
            }
            (None, Some(aws)) => {
                if aws.groups.is_empty() || aws.groups.iter().any(|g| g.is_empty()) {
                    bail!("fleet '{name}': aws.groups must name at least one Auto Scaling group");
                }
                agent_endpoint(&fleet.queue.endpoint).with_context(|| format!("fleet '{name}'"))?;
                FleetKind::Aws {
                    region: aws.region.clone(),
                    endpoint_url: aws.endpoint_url.clone(),
                    groups: aws.groups.clone(),
                }
            }
            _ => bail!("fleet '{name}': give exactly one of `local` and `aws`"),
        };
        resolved.push(ResolvedFleet {
            agent_type: name.clone(),
            endpoint: fleet.queue.endpoint.clone(),
            token,
            long_poll: fleet.queue.long_poll,
            reaper: match (&fleet.reaper, &fleet.aws) {
                (Some(_), None) => bail!("fleet '{name}': the reaper applies to aws fleets (a local fleet replaces dead agents itself)"),
                (Some(section), Some(_)) if !section.enabled => None,
                (Some(section), Some(_)) => {
                    if section.interval_seconds == 0 {
                        bail!("fleet '{name}': reaper.interval_seconds must be positive");
                    }
                    Some(ReaperConfig {
                        boot_deadline_seconds: section.boot_deadline_seconds,
                        max_lifetime_seconds: section.max_lifetime_seconds,
                        interval_seconds: section.interval_seconds,
                    })
                }
                (None, Some(_)) => Some(ReaperConfig::default()),
                (None, None) => None,
            },
            fleet: kind,
            policy: policy_from(&fleet.policy, name)?,
        });
    }
    Ok((config, resolved))
}

/// Serves `/metrics` from the loops' statuses on a plain thread.
pub fn serve_metrics(
    listen: std::net::SocketAddr,
    statuses: Vec<Arc<Mutex<LoopStatus>>>,
) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(stream) => stream,
                Err(_) => continue,
            });
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let (status, body) = if request_line.starts_with("GET /metrics ") {
                let snapshot: Vec<LoopStatus> = statuses.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect();
                ("200 OK", render_metrics(&snapshot))
            } else if request_line.starts_with("GET /healthz ") {
                ("200 OK", "ok\n".to_string())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let mut stream = stream;
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    })?;
    Ok(())
}

/// Sets `stop` on SIGINT/SIGTERM.
pub fn stop_on_signals(stop: Arc<AtomicBool>) -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot watch for signals")?;
    }
    Ok(())
}

pub fn run(args: RunArgs) -> Result<i32> {
    crate::serve::init_logging(&args.log_format);
    let (config, fleets) = match (&args.config, &args.config_ssm_parameter) {
        (Some(path), _) => load_config(path)?,
        (None, Some(parameter)) => load_config_from_ssm(parameter)?,
        (None, None) => bail!("give --config or --config-ssm-parameter"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone())?;
    let poll_interval = Duration::from_millis(config.poll_interval_ms);
    let mut loops = Vec::new();
    for fleet in fleets {
        let queue = MetricsQueue::new(&fleet.endpoint, &fleet.token, fleet.long_poll);
        let instances: Box<dyn crate::fleet::Fleet> = match fleet.fleet {
            FleetKind::Local(local) => {
                Box::new(LocalFleet::new(local).map_err(anyhow::Error::msg)?)
            }
            FleetKind::Aws {
                region,
                endpoint_url,
                groups,
            } => Box::new(
                crate::fleet_aws::AwsFleet::new(&region, &endpoint_url, groups)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("fleet '{}'", fleet.agent_type))?,
            ),
        };
        let mut fleet_loop = FleetLoop::new(
            &fleet.agent_type,
            Box::new(queue),
            instances,
            fleet.policy,
            args.dry_run,
            poll_interval,
        );
        if let Some(reaper) = fleet.reaper {
            fleet_loop = fleet_loop.with_reaper(reaper);
        }
        loops.push(fleet_loop);
    }
    if let Some(listen) = config.metrics_listen {
        serve_metrics(listen, loops.iter().map(|l| l.status.clone()).collect())?;
        tracing::info!(%listen, "serving /metrics");
    }
    tracing::info!(
        fleets = loops.len(),
        dry_run = args.dry_run,
        "scaler running"
    );
    let mut threads = Vec::new();
    for mut fleet_loop in loops {
        let stop = stop.clone();
        let name = format!("loop-{}", fleet_loop.agent_type);
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || fleet_loop.run(&stop))
                .context("cannot start a control loop thread")?,
        );
    }
    for thread in threads {
        let _ = thread.join();
    }
    tracing::info!("scaler stopped; local instances were asked to stop");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<(ScalerConfig, Vec<ResolvedFleet>)> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "registration-token\n").unwrap();
        std::fs::write(dir.path().join("agent"), "").unwrap();
        let path = dir.path().join("scaler.yaml");
        std::fs::write(&path, yaml).unwrap();
        load_config(&path)
    }

    const GOOD: &str = "fleets:\n  - agent_type: default\n    queue: {endpoint: 'http://127.0.0.1:8080', token_file: token}\n    local: {max: 4, agent_binary: agent}\n";

    #[test]
    fn a_good_config_resolves() {
        let (config, fleets) = load(GOOD).unwrap();
        assert_eq!(config.poll_interval_ms, 1000);
        assert_eq!(fleets[0].token, "registration-token");
        let FleetKind::Local(local) = &fleets[0].fleet else {
            panic!("a local fleet")
        };
        assert_eq!(
            (local.endpoint.as_str(), local.no_https),
            ("127.0.0.1:8080", true)
        );
        assert_eq!(
            fleets[0].policy.rise_burst,
            PolicyConfig::default().rise_burst
        );
    }

    #[test]
    fn bad_configs_are_refused_before_anything_starts() {
        let table = [
            (GOOD.replace("max: 4", "max: 4, maxx: 5"), "unknown field `maxx`"),
            (GOOD.replace("max: 4", "min: 5, max: 4"), "min (5) is greater than max (4)"),
            (GOOD.to_string() + "    policy: {scheduled_minimums: [{cron: '* 25 * * *', minimum: 1}]}\n", "cron field '25'"),
            (GOOD.to_string() + "    policy: {scheduled_minimums: [{cron: '* * * * *', time_zone: Nowhere/City, minimum: 1}]}\n", "unknown time zone"),
            (GOOD.replace("token_file: token", "token_file: missing"), "cannot read token_file"),
            (GOOD.replace("    local: {max: 4, agent_binary: agent}\n", ""), "give exactly one of `local` and `aws`"),
            (GOOD.replace("    local: {max: 4, agent_binary: agent}\n", "    aws: {groups: []}\n"), "aws.groups must name"),
            (GOOD.replace("http://127.0.0.1:8080", "127.0.0.1:8080"), "must start with http:// or https://"),
            ("fleets: []\n".to_string(), "no fleets configured"),
            (GOOD.to_string() + "extra: 1\n", "unknown field `extra`"),
        ];
        for (yaml, expected) in table {
            let error = format!(
                "{:#}",
                load(&yaml)
                    .err()
                    .unwrap_or_else(|| panic!("accepted: {yaml}"))
            );
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }
}
