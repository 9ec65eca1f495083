//! The scaler's config schema (`scaler run --config`, examples/scaler.yaml, the SSM parameter a
//! deployed stack writes) and its pure validation. [`parse`] turns YAML text into a checked list of
//! [`ResolvedFleet`]s without any I/O: where a registration token lives is recorded as a
//! [`TokenSource`], and the binary reads it (file, env, SSM) before anything starts.

use crate::fleet::LocalFleetConfig;
use crate::forecast::ForecastConfig;
use crate::policy::PolicyConfig;
use crate::pool_health::HealthConfig;
use crate::reaper::ReaperConfig;
use crate::schedule::{ScheduleError, ScheduledMinimum};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a config was refused; nothing has started when one is returned.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{origin} is not a valid scaler config: {source}")]
    Yaml {
        origin: String,
        source: serde_yaml::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("fleet '{fleet}': {source}")]
    Fleet {
        fleet: String,
        source: Box<ConfigError>,
    },
    #[error("fleet '{fleet}': scheduled minimum: {source}")]
    Schedule {
        fleet: String,
        source: ScheduleError,
    },
}

impl ConfigError {
    fn invalid(message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(message.into())
    }

    fn in_fleet(self, fleet: &str) -> ConfigError {
        ConfigError::Fleet {
            fleet: fleet.to_string(),
            source: Box::new(self),
        }
    }
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
    /// When a group whose instances keep faulting (GPU health gate, Xid) is passed over.
    #[serde(default)]
    pub pool_health: PoolHealthSection,
}

/// [`HealthConfig`] in the config: `faults` within `window_minutes` make a group unhealthy for
/// `cool_off_minutes` (defaults 2, 30, 30; `faults: 0` turns it off).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolHealthSection {
    #[serde(default = "default_health_faults")]
    pub faults: u32,
    #[serde(default = "default_health_window")]
    pub window_minutes: u32,
    #[serde(default = "default_health_cool_off")]
    pub cool_off_minutes: u32,
}

impl Default for PoolHealthSection {
    fn default() -> Self {
        let defaults = HealthConfig::default();
        PoolHealthSection {
            faults: defaults.faults,
            window_minutes: defaults.window_minutes,
            cool_off_minutes: defaults.cool_off_minutes,
        }
    }
}

fn default_health_faults() -> u32 {
    HealthConfig::default().faults
}
fn default_health_window() -> u32 {
    HealthConfig::default().window_minutes
}
fn default_health_cool_off() -> u32 {
    HealthConfig::default().cool_off_minutes
}

impl PoolHealthSection {
    /// The checked settings: a window and a cool-off of at least a minute, unless off.
    fn resolve(&self) -> Result<HealthConfig, ConfigError> {
        if self.faults > 0 && (self.window_minutes == 0 || self.cool_off_minutes == 0) {
            return Err(ConfigError::invalid(
                "aws.pool_health.window_minutes and cool_off_minutes must be positive (faults: 0 turns it off)",
            ));
        }
        Ok(HealthConfig {
            faults: self.faults,
            window_minutes: self.window_minutes,
            cool_off_minutes: self.cool_off_minutes,
        })
    }
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
    /// Demand seen coming: warm capacity and warm pools sized from the recent rate and the
    /// time-of-day profile ([`crate::forecast`]).
    #[serde(default)]
    pub forecast: bool,
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
            forecast: false,
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
    pub fn entries(&self) -> Result<Vec<ScheduleSection>, ConfigError> {
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
                    let (rest, minimum) = entry.rsplit_once('=').ok_or_else(|| {
                        ConfigError::invalid(format!(
                            "scheduled minimum '{entry}': expected CRON@TIME_ZONE=MINIMUM"
                        ))
                    })?;
                    let (cron, time_zone) = rest.rsplit_once('@').unwrap_or((rest, "UTC"));
                    let minimum = minimum.trim().parse().map_err(|_| {
                        ConfigError::invalid(format!(
                            "scheduled minimum '{entry}': '{minimum}' is not a whole number"
                        ))
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
#[derive(Debug)]
pub enum FleetKind {
    /// Agent processes on this machine; `registration_token` is filled by [`ResolvedFleet::set_token`].
    Local(LocalFleetConfig),
    Aws {
        region: String,
        endpoint_url: String,
        groups: Vec<String>,
        health: HealthConfig,
    },
}

/// Where a fleet's registration token is read from (by the binary: this crate does no I/O here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file; relative paths are already joined to the config's directory.
    File(PathBuf),
    Env(String),
    SsmParameter(String),
}

/// A fleet's settings, checked and resolved.
#[derive(Debug)]
pub struct ResolvedFleet {
    pub agent_type: String,
    pub endpoint: String,
    pub token_source: TokenSource,
    /// Empty until [`ResolvedFleet::set_token`].
    pub token: String,
    pub long_poll: bool,
    pub fleet: FleetKind,
    pub policy: PolicyConfig,
    pub reaper: Option<ReaperConfig>,
}

impl ResolvedFleet {
    /// Records the registration token read from [`ResolvedFleet::token_source`].
    pub fn set_token(&mut self, token: &str) -> Result<(), ConfigError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(
                ConfigError::invalid("the registration token is empty").in_fleet(&self.agent_type)
            );
        }
        self.token = token.to_string();
        if let FleetKind::Local(local) = &mut self.fleet {
            local.registration_token = self.token.clone();
        }
        Ok(())
    }
}

/// The agent binary shipped beside this process's executable (the `scaler`).
pub fn default_agent_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("agent")))
        .unwrap_or_else(|| PathBuf::from("agent"))
}

/// `http://host:port` → (`host:port`, plain HTTP?).
pub fn agent_endpoint(url: &str) -> Result<(String, bool), ConfigError> {
    let (no_https, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else {
        return Err(ConfigError::invalid(format!(
            "endpoint '{url}' must start with http:// or https://"
        )));
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(ConfigError::invalid(format!(
            "endpoint '{url}' must be a base URL such as http://127.0.0.1:8080"
        )));
    }
    Ok((host.to_string(), no_https))
}

/// The policy of one fleet, its scheduled minimums parsed.
pub fn policy_from(section: &PolicySection, agent_type: &str) -> Result<PolicyConfig, ConfigError> {
    let mut scheduled = Vec::new();
    let entries = section
        .scheduled_minimums
        .entries()
        .map_err(|error| error.in_fleet(agent_type))?;
    for entry in &entries {
        scheduled.push(
            ScheduledMinimum::new(&entry.cron, &entry.time_zone, entry.minimum).map_err(
                |source| ConfigError::Schedule {
                    fleet: agent_type.to_string(),
                    source,
                },
            )?,
        );
    }
    if !(0.0..=4.0).contains(&section.warm_fraction) {
        return Err(
            ConfigError::invalid("warm_fraction must be between 0 and 4").in_fleet(agent_type),
        );
    }
    if section.rise_burst == 0 || section.rise_per_minute == 0 {
        return Err(
            ConfigError::invalid("rise_burst and rise_per_minute must be positive")
                .in_fleet(agent_type),
        );
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
        forecast: section.forecast.then(ForecastConfig::default),
    })
}

/// Parses and validates a config's text; `origin` names it in errors, relative paths start at
/// `base`. Pure: tokens are not read (see [`TokenSource`]).
pub fn parse(
    text: &str,
    origin: &str,
    base: &Path,
) -> Result<(ScalerConfig, Vec<ResolvedFleet>), ConfigError> {
    let config: ScalerConfig = serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
        origin: origin.to_string(),
        source,
    })?;
    if config.fleets.is_empty() {
        return Err(ConfigError::invalid(format!(
            "{origin}: no fleets configured"
        )));
    }
    if config.poll_interval_ms < 100 {
        return Err(ConfigError::invalid(
            "poll_interval_ms must be at least 100",
        ));
    }
    let mut resolved: Vec<ResolvedFleet> = Vec::new();
    for fleet in &config.fleets {
        let name = &fleet.agent_type;
        if resolved.iter().any(|r| &r.agent_type == name) {
            return Err(ConfigError::invalid(format!(
                "fleet '{name}' is configured twice"
            )));
        }
        resolved.push(resolve_fleet(fleet, base).map_err(|error| match error {
            ConfigError::Schedule { .. } | ConfigError::Fleet { .. } => error,
            other => other.in_fleet(name),
        })?);
    }
    Ok((config, resolved))
}

fn resolve_fleet(fleet: &FleetConfig, base: &Path) -> Result<ResolvedFleet, ConfigError> {
    let name = &fleet.agent_type;
    if !protocol::spec::valid_agent_type(name) {
        return Err(ConfigError::invalid("not a valid agent type name"));
    }
    Ok(ResolvedFleet {
        agent_type: name.clone(),
        endpoint: fleet.queue.endpoint.clone(),
        token_source: token_source(&fleet.queue, base)?,
        token: String::new(),
        long_poll: fleet.queue.long_poll,
        fleet: fleet_kind(fleet, base)?,
        policy: policy_from(&fleet.policy, name)?,
        reaper: reaper_config(fleet)?,
    })
}

fn token_source(queue: &QueueConfig, base: &Path) -> Result<TokenSource, ConfigError> {
    match (
        &queue.token_file,
        &queue.token_env,
        &queue.token_ssm_parameter,
    ) {
        (Some(file), None, None) if file.is_absolute() => Ok(TokenSource::File(file.clone())),
        (Some(file), None, None) => Ok(TokenSource::File(base.join(file))),
        (None, Some(variable), None) => Ok(TokenSource::Env(variable.clone())),
        (None, None, Some(parameter)) => Ok(TokenSource::SsmParameter(parameter.clone())),
        _ => Err(ConfigError::invalid(
            "give exactly one of queue.token_file, queue.token_env and queue.token_ssm_parameter",
        )),
    }
}

fn fleet_kind(fleet: &FleetConfig, base: &Path) -> Result<FleetKind, ConfigError> {
    let name = &fleet.agent_type;
    let (endpoint, no_https) = agent_endpoint(&fleet.queue.endpoint)?;
    match (&fleet.local, &fleet.aws) {
        (Some(local), None) => {
            if local.min > local.max {
                return Err(ConfigError::invalid(format!(
                    "min ({}) is greater than max ({})",
                    local.min, local.max
                )));
            }
            let agent_binary = local
                .agent_binary
                .clone()
                .unwrap_or_else(default_agent_binary);
            let work_dir = if local.work_dir.is_absolute() {
                local.work_dir.clone()
            } else {
                base.join(&local.work_dir)
            };
            Ok(FleetKind::Local(LocalFleetConfig {
                pool: format!("{name}-local"),
                min: local.min,
                max: local.max,
                agent_binary,
                endpoint,
                no_https,
                registration_token: String::new(),
                work_dir: work_dir.join(name),
            }))
        }
        (None, Some(aws)) => {
            if aws.groups.is_empty() || aws.groups.iter().any(|g| g.is_empty()) {
                return Err(ConfigError::invalid(
                    "aws.groups must name at least one Auto Scaling group",
                ));
            }
            Ok(FleetKind::Aws {
                region: aws.region.clone(),
                endpoint_url: aws.endpoint_url.clone(),
                groups: aws.groups.clone(),
                health: aws.pool_health.resolve()?,
            })
        }
        _ => Err(ConfigError::invalid(
            "give exactly one of `local` and `aws`",
        )),
    }
}

fn reaper_config(fleet: &FleetConfig) -> Result<Option<ReaperConfig>, ConfigError> {
    match (&fleet.reaper, &fleet.aws) {
        (Some(_), None) => Err(ConfigError::invalid(
            "the reaper applies to aws fleets (a local fleet replaces dead agents itself)",
        )),
        (Some(section), Some(_)) if !section.enabled => Ok(None),
        (Some(section), Some(_)) => {
            if section.interval_seconds == 0 {
                return Err(ConfigError::invalid(
                    "reaper.interval_seconds must be positive",
                ));
            }
            Ok(Some(ReaperConfig {
                boot_deadline_seconds: section.boot_deadline_seconds,
                max_lifetime_seconds: section.max_lifetime_seconds,
                interval_seconds: section.interval_seconds,
            }))
        }
        (None, Some(_)) => Ok(Some(ReaperConfig::default())),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "fleets:\n  - agent_type: default\n    queue: {endpoint: 'http://127.0.0.1:8080', token_file: token}\n    local: {max: 4, agent_binary: agent}\n";

    fn parse_here(yaml: &str) -> Result<(ScalerConfig, Vec<ResolvedFleet>), ConfigError> {
        parse(yaml, "scaler.yaml", Path::new("/etc/flotilla"))
    }

    #[test]
    fn a_good_config_resolves() {
        let (config, mut fleets) = parse_here(GOOD).unwrap();
        assert_eq!(config.poll_interval_ms, 1000);
        assert_eq!(
            fleets[0].token_source,
            TokenSource::File(PathBuf::from("/etc/flotilla/token"))
        );
        fleets[0].set_token("registration-token\n").unwrap();
        assert_eq!(fleets[0].token, "registration-token");
        let FleetKind::Local(local) = &fleets[0].fleet else {
            panic!("a local fleet")
        };
        assert_eq!(local.registration_token, "registration-token");
        assert_eq!(
            (local.endpoint.as_str(), local.no_https),
            ("127.0.0.1:8080", true)
        );
        assert_eq!(
            local.work_dir,
            PathBuf::from("/etc/flotilla/flotilla-fleet/default")
        );
        assert_eq!(
            fleets[0].policy.rise_burst,
            PolicyConfig::default().rise_burst
        );
        assert!(fleets[0].set_token("  \n").is_err());
    }

    #[test]
    fn compact_scheduled_minimums_parse() {
        let yaml = GOOD.to_string()
            + "    policy: {scheduled_minimums: '* 8-18 * * MON-FRI@Europe/Berlin=2; 0 * * * *=1'}\n";
        let (_, fleets) = parse_here(&yaml).unwrap();
        assert_eq!(fleets[0].policy.scheduled_minimums.len(), 2);
    }

    #[test]
    fn pool_health_has_defaults_and_can_be_set() {
        let aws = GOOD.replace(
            "    local: {max: 4, agent_binary: agent}\n",
            "    aws: {groups: [gpu-spot, gpu-ondemand]}\n",
        );
        let health = |yaml: &str| match parse_here(yaml).map(|(_, fleets)| fleets) {
            Ok(fleets) => match &fleets[0].fleet {
                FleetKind::Aws { health, .. } => Some(*health),
                FleetKind::Local(_) => None,
            },
            Err(error) => panic!("{error}"),
        };
        assert_eq!(health(&aws), Some(HealthConfig::default()));
        let set = aws.replace(
            "groups: [gpu-spot, gpu-ondemand]",
            "groups: [gpu-spot], pool_health: {faults: 3, cool_off_minutes: 60}",
        );
        assert_eq!(
            health(&set),
            Some(HealthConfig {
                faults: 3,
                window_minutes: 30,
                cool_off_minutes: 60,
            })
        );
        let off = aws.replace(
            "gpu-ondemand]",
            "gpu-ondemand], pool_health: {faults: 0, window_minutes: 0}",
        );
        assert_eq!(health(&off).map(|h| h.faults), Some(0));
    }

    #[test]
    fn bad_configs_are_refused_before_anything_starts() {
        let table = [
            (GOOD.replace("max: 4", "max: 4, maxx: 5"), "unknown field `maxx`"),
            (GOOD.replace("max: 4", "min: 5, max: 4"), "fleet 'default': min (5) is greater than max (4)"),
            (GOOD.to_string() + "    policy: {scheduled_minimums: [{cron: '* 25 * * *', minimum: 1}]}\n", "cron field '25'"),
            (GOOD.to_string() + "    policy: {scheduled_minimums: [{cron: '* * * * *', time_zone: Nowhere/City, minimum: 1}]}\n", "unknown time zone"),
            (GOOD.to_string() + "    policy: {scheduled_minimums: '* * * * *@UTC=x'}\n", "is not a whole number"),
            (GOOD.replace("token_file: token", "token_file: token, token_env: T"), "give exactly one of queue.token_file"),
            (GOOD.replace("    local: {max: 4, agent_binary: agent}\n", ""), "give exactly one of `local` and `aws`"),
            (GOOD.replace("    local: {max: 4, agent_binary: agent}\n", "    aws: {groups: []}\n"), "aws.groups must name"),
            (GOOD.replace("    local: {max: 4, agent_binary: agent}\n", "    aws: {groups: [g], pool_health: {cool_off_minutes: 0}}\n"), "cool_off_minutes must be positive"),
            (GOOD.replace("    local: {max: 4, agent_binary: agent}\n", "    aws: {groups: [g], pool_health: {fault: 3}}\n"), "unknown field `fault`"),
            (GOOD.replace("http://127.0.0.1:8080", "127.0.0.1:8080"), "must start with http:// or https://"),
            (GOOD.to_string() + "    reaper: {interval_seconds: 5}\n", "the reaper applies to aws fleets"),
            (GOOD.replace("agent_type: default", "agent_type: 'no spaces'"), "not a valid agent type name"),
            ("fleets: []\n".to_string(), "no fleets configured"),
            ("poll_interval_ms: 5\n".to_string() + GOOD, "poll_interval_ms must be at least 100"),
            (GOOD.to_string() + "extra: 1\n", "unknown field `extra`"),
        ];
        for (yaml, expected) in table {
            let error = parse_here(&yaml)
                .err()
                .unwrap_or_else(|| panic!("accepted: {yaml}"))
                .to_string();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }
}
