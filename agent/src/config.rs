//! `agent start` configuration (docs/protocol.md §1): flags, `SEMAPHORE_AGENT_*` env vars and a
//! YAML file, with upstream's precedence (flag > env > file > default), validation and error texts.
//!
//! Parsing is pure (argument list, environment and file text in; `Config` or an error out) so
//! every rule is table-tested without touching the process environment.

use std::collections::BTreeMap;
use thiserror::Error;

/// Every option `agent start` knows, with its kind. Also the set of valid YAML keys.
pub const OPTIONS: &[(&str, Kind)] = &[
    ("config-file", Kind::Text),
    ("name", Kind::Text),
    ("name-from-env", Kind::Text),
    ("endpoint", Kind::Text),
    ("token", Kind::Text),
    ("no-https", Kind::Flag),
    ("shutdown-hook-path", Kind::Text),
    ("pre-job-hook-path", Kind::Text),
    ("post-job-hook-path", Kind::Text),
    ("disconnect-after-job", Kind::Flag),
    ("job-id", Kind::Text),
    ("disconnect-after-idle-timeout", Kind::Int),
    ("interruption-grace-period", Kind::Int),
    ("env-vars", Kind::List),
    ("files", Kind::List),
    ("fail-on-missing-files", Kind::Flag),
    ("upload-job-logs", Kind::Text),
    ("fail-on-pre-job-hook-error", Kind::Flag),
    ("source-pre-job-hook", Kind::Flag),
    ("kubernetes-executor", Kind::Flag),
    ("kubernetes-pod-spec", Kind::Text),
    ("kubernetes-allowed-images", Kind::List),
    ("kubernetes-labels", Kind::List),
    ("kubernetes-pod-start-timeout", Kind::Int),
    ("kubernetes-default-image", Kind::Text),
    // Flotilla's own options, under the same scheme.
    ("report-gpus", Kind::Flag),
    ("container-gpus", Kind::Text),
    ("container-engine", Kind::Text),
    ("container-image-store", Kind::Text),
    ("container-pull-stall-timeout", Kind::Int),
    ("ec2", Kind::Flag),
    ("imds-endpoint", Kind::Text),
    ("ec2-poll-seconds", Kind::Int),
    ("ec2-keep-instance", Kind::Flag),
    ("ec2-poweroff-command", Kind::Text),
    ("token-ssm-parameter", Kind::Text),
    ("aws-region", Kind::Text),
    ("config-ssm-parameter", Kind::Text),
    ("registered-file", Kind::Text),
    ("job-record-file", Kind::Text),
    ("job-user", Kind::Text),
    ("job-no-new-privileges", Kind::Flag),
    ("job-cgroups", Kind::Flag),
    ("job-memory-max", Kind::Text),
    ("job-pids-max", Kind::Int),
    ("job-role-arn", Kind::Text),
    ("job-role-listen", Kind::Text),
    ("job-role-container-listen", Kind::Text),
    ("job-ecr-repositories", Kind::List),
    ("job-role-stack", Kind::Text),
    ("job-role-agent-type", Kind::Text),
    ("cache-bucket", Kind::Text),
    ("give-up-after", Kind::Int),
    ("keep-failed-instance-minutes", Kind::Int),
    ("gpu-gate", Kind::Text),
    ("expect-gpus", Kind::Text),
    ("gpu-gate-dcgm", Kind::Text),
    ("kernel-log", Kind::Text),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Flag,
    Int,
    List,
}

/// A validated `agent start` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub name: String,
    pub name_from_env: String,
    pub endpoint: String,
    pub token: String,
    pub no_https: bool,
    pub shutdown_hook_path: String,
    pub pre_job_hook_path: String,
    pub post_job_hook_path: String,
    pub disconnect_after_job: bool,
    pub job_id: String,
    pub disconnect_after_idle_timeout: i64,
    pub interruption_grace_period: i64,
    /// `NAME=VALUE` pairs exported into every job (they override the job's own).
    pub env_vars: Vec<(String, String)>,
    /// `hostPath:destination` (docker-compose only upstream; kept for compatibility).
    pub files: Vec<(String, String)>,
    pub fail_on_missing_files: bool,
    pub upload_job_logs: UploadJobLogs,
    pub fail_on_pre_job_hook_error: bool,
    pub source_pre_job_hook: bool,
    /// Report GPUs at registration (a Flotilla extension: only for a Flotilla hub).
    pub report_gpus: bool,
    /// Which GPUs a container job's containers get (`all`, `auto`, `none`; default `auto`).
    pub container_gpus: crate::compose::ContainerGpus,
    /// Which engine container jobs use: `host` (the machine's Docker, the default) or `rootless`
    /// (a rootless Podman of the job's own, as the job user; `container-image-store` names its
    /// store of baked images).
    pub container_engine: crate::compose::engine::ContainerEngine,
    /// Seconds a container job's pull may print nothing before it is stopped (0: the default,
    /// [`crate::compose::DEFAULT_PULL_STALL`]).
    pub container_pull_stall_timeout: i64,
    /// Running on EC2: name = instance id, wait out warm pools, spot notices interrupt.
    pub ec2: bool,
    /// Instance metadata service base URL ("" = the standard address).
    pub imds_endpoint: String,
    /// How often to look at instance metadata (warm-pool state, spot notices), seconds.
    pub ec2_poll_seconds: i64,
    /// On EC2, leave the instance running when the agent exits (default: remove it).
    pub ec2_keep_instance: bool,
    /// Last resort when the instance cannot be removed from its group.
    pub ec2_poweroff_command: String,
    /// Read the registration token from this SSM parameter (SecureString) instead of `token`.
    pub token_ssm_parameter: String,
    pub aws_region: String,
    /// Touched once registered (an instance's boot-deadline watchdog looks for it).
    pub registered_file: String,
    /// With `disconnect_after_job`: where the agent records, before it runs anything of its job,
    /// that this machine took one (default `$HOME/.flotilla-agent/job-taken`); an agent started
    /// where a record exists does not register ([`crate::job_record`]). Empty otherwise.
    pub job_record_file: String,
    /// Run jobs as this unprivileged user instead of the agent's own ([`crate::job_user`]);
    /// empty: the agent's user, as upstream does.
    pub job_user: String,
    /// The job user's processes get `no_new_privs` (no setuid binary raises them).
    pub job_no_new_privileges: bool,
    /// Each job in a cgroup of its own under the agent's delegated one ([`crate::job_cgroup`]),
    /// with `job-memory-max` and `job-pids-max` as its limits.
    pub job_cgroups: Option<crate::job_cgroup::Limits>,
    /// `job-role-arn`, `job-role-listen`, `job-role-stack`, `job-role-agent-type`,
    /// `cache-bucket`: the role assumed for each job, whose credentials the job gets from the
    /// agent's endpoint ([`crate::job_role`]); an empty ARN: none. The region is the agent's.
    pub job_role: crate::job_role::JobRoleOptions,
    /// Seconds without a successful sync after which the agent gives up (stops its job, exits
    /// `UNABLE_TO_SYNC`); 0 in a `Config::default()` means [`protocol::GIVE_UP_AFTER_SECS`].
    pub give_up_after: i64,
    /// Debug jobs: on EC2, keep the instance this many minutes after a failed job (in Standby)
    /// before removing it; 0: never.
    pub keep_failed_instance_minutes: i64,
    /// The GPU health gate before registration and the GPU fault watch during jobs.
    pub gpu_health: GpuHealthOptions,
}

/// `gpu-gate`, `expect-gpus`, `gpu-gate-dcgm`, `kernel-log` ([`crate::gpu_health`],
/// [`crate::xid`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuHealthOptions {
    pub gate: GateMode,
    /// What this machine must have (`COUNT:MODEL`, e.g. `4:A10G`); `None`: what its EC2 instance
    /// type has, if the image's table knows it.
    pub expect: Option<crate::gpu_health::Expected>,
    /// Run DCGM's short diagnostic (`dcgmi diag -r 1`) where DCGM is installed (`gpu-gate-dcgm:
    /// auto`, the default; the GPU image installs it); `off` skips it.
    pub dcgm: bool,
    /// The kernel log watched for GPU Xid errors (default `/dev/kmsg`).
    pub kernel_log: String,
}

/// What a failed GPU health gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GateMode {
    /// The machine does not register (and on EC2 removes itself).
    #[default]
    Enforce,
    /// The failure is logged and reported at registration; the agent registers anyway.
    Warn,
    /// No gate, and no fault watch.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadJobLogs {
    #[default]
    Never,
    Always,
    WhenTrimmed,
}

/// A fatal configuration problem; the message is what the agent prints before exiting 1.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// One raw value before typing: lists keep their source because the split rule differs.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    /// From a flag: text; lists are comma-separated and repeated flags append.
    Flag(Vec<String>),
    /// From the environment: text; lists are whitespace-separated.
    Env(String),
    /// From YAML.
    Yaml(serde_yaml::Value),
}

/// Parses `agent start` arguments (without the sub-command), the environment and a config file
/// reader into a validated [`Config`].
pub fn load(
    args: &[String],
    env: &BTreeMap<String, String>,
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<Config, ConfigError> {
    let flags = parse_flags(args)?;
    let mut values: BTreeMap<&'static str, Raw> = BTreeMap::new();

    // The config file's YAML may instead come from an SSM parameter (a booting EC2 instance's
    // user data names only that parameter); `read_file` is asked for `ssm:<name>` then.
    let ssm_parameter = match flags.get("config-ssm-parameter") {
        Some(Raw::Flag(values)) => values.last().cloned(),
        _ => env.get("SEMAPHORE_AGENT_CONFIG_SSM_PARAMETER").cloned(),
    }
    .filter(|name| !name.is_empty());
    let config_file = match flags.get("config-file") {
        Some(Raw::Flag(paths)) => paths.last().cloned(),
        _ => None,
    }
    .filter(|path| !path.is_empty());
    let source = match (config_file, ssm_parameter) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "Give config-file or config-ssm-parameter, not both. Exiting...",
            ))
        }
        (Some(path), None) => Some(path),
        (None, Some(name)) => Some(format!("ssm:{name}")),
        (None, None) => None,
    };
    if let Some(path) = source {
        let text = read_file(&path).map_err(|error| {
            invalid(format!(
                "Error reading config file '{path}': {error}. Exiting..."
            ))
        })?;
        for (key, value) in parse_yaml(&text, &path)? {
            values.insert(key, Raw::Yaml(value));
        }
    }
    for (key, _) in OPTIONS {
        if *key == "config-file" {
            continue;
        }
        let env_name = format!("SEMAPHORE_AGENT_{}", key.to_uppercase().replace('-', "_"));
        if let Some(value) = env.get(&env_name) {
            values.insert(key, Raw::Env(value.clone()));
        }
    }
    for (key, value) in flags {
        values.insert(key, value);
    }
    build(&values, env)
}

fn option_kind(key: &str) -> Option<(&'static str, Kind)> {
    OPTIONS.iter().find(|(name, _)| *name == key).copied()
}

fn parse_flags(args: &[String]) -> Result<BTreeMap<&'static str, Raw>, ConfigError> {
    let mut flags: BTreeMap<&'static str, Raw> = BTreeMap::new();
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        let Some(body) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-').filter(|b| b.len() > 1))
        else {
            return Err(invalid(format!("Unexpected argument '{arg}'. Exiting...")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        let Some((key, kind)) = option_kind(name) else {
            return Err(invalid(format!("unknown flag: --{name}")));
        };
        let value = match (kind, inline) {
            (_, Some(value)) => value,
            (Kind::Flag, None) => "true".to_string(),
            (_, None) => {
                let Some(value) = args.get(index) else {
                    return Err(invalid(format!("flag needs an argument: --{name}")));
                };
                index += 1;
                value.clone()
            }
        };
        match flags.entry(key).or_insert_with(|| Raw::Flag(Vec::new())) {
            Raw::Flag(values) => values.push(value),
            _ => unreachable!("flags only hold flag values"),
        }
    }
    Ok(flags)
}

fn parse_yaml(
    text: &str,
    path: &str,
) -> Result<Vec<(&'static str, serde_yaml::Value)>, ConfigError> {
    let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(|error| {
        invalid(format!(
            "Error reading config file '{path}': {error}. Exiting..."
        ))
    })?;
    let mapping = match document {
        serde_yaml::Value::Null => return Ok(Vec::new()),
        serde_yaml::Value::Mapping(mapping) => mapping,
        _ => {
            return Err(invalid(format!(
                "Error reading config file '{path}': expected a mapping of options. Exiting..."
            )))
        }
    };
    let mut out = Vec::new();
    for (key, value) in mapping {
        let key_text = match &key {
            serde_yaml::Value::String(text) => text.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        match option_kind(&key_text) {
            Some(("config-file", _)) | Some(("config-ssm-parameter", _)) | None => {
                return Err(invalid(format!(
                    "Unrecognized option '{key_text}'. Exiting..."
                )));
            }
            Some((known, _)) => out.push((known, value)),
        }
    }
    Ok(out)
}

fn text(values: &BTreeMap<&'static str, Raw>, key: &str) -> Result<String, ConfigError> {
    Ok(match values.get(key) {
        None => String::new(),
        Some(Raw::Flag(list)) => list.last().cloned().unwrap_or_default(),
        Some(Raw::Env(value)) => value.clone(),
        Some(Raw::Yaml(value)) => match value {
            serde_yaml::Value::String(text) => text.clone(),
            serde_yaml::Value::Number(number) => number.to_string(),
            serde_yaml::Value::Bool(flag) => flag.to_string(),
            serde_yaml::Value::Null => String::new(),
            _ => {
                return Err(invalid(format!(
                    "Invalid value for '{key}': expected a string. Exiting..."
                )))
            }
        },
    })
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Ok(false),
        other => Err(invalid(format!(
            "Invalid value '{other}' for '{key}': expected true or false. Exiting..."
        ))),
    }
}

fn flag(values: &BTreeMap<&'static str, Raw>, key: &str) -> Result<bool, ConfigError> {
    match values.get(key) {
        Some(Raw::Yaml(serde_yaml::Value::Bool(flag))) => Ok(*flag),
        Some(Raw::Yaml(serde_yaml::Value::Null)) => Ok(false),
        Some(Raw::Yaml(serde_yaml::Value::String(text))) => parse_bool(key, text),
        Some(Raw::Yaml(_)) => Err(invalid(format!(
            "Invalid value for '{key}': expected true or false. Exiting..."
        ))),
        _ => parse_bool(key, &text(values, key)?),
    }
}

fn int(values: &BTreeMap<&'static str, Raw>, key: &str, default: i64) -> Result<i64, ConfigError> {
    if let Some(Raw::Yaml(serde_yaml::Value::Number(number))) = values.get(key) {
        return number.as_i64().ok_or_else(|| {
            invalid(format!(
                "Invalid value '{number}' for '{key}': expected an integer. Exiting..."
            ))
        });
    }
    let raw = text(values, key)?;
    if raw.is_empty() {
        return Ok(default);
    }
    raw.trim().parse::<i64>().map_err(|_| {
        invalid(format!(
            "Invalid value '{raw}' for '{key}': expected an integer. Exiting..."
        ))
    })
}

/// An integer option that may not be negative (0: its default).
fn non_negative(values: &BTreeMap<&'static str, Raw>, key: &str) -> Result<i64, ConfigError> {
    let value = int(values, key, 0)?;
    if value < 0 {
        return Err(invalid(format!(
            "Invalid value '{value}' for '{key}': expected 0 or more seconds. Exiting..."
        )));
    }
    Ok(value)
}

fn list(values: &BTreeMap<&'static str, Raw>, key: &str) -> Result<Vec<String>, ConfigError> {
    Ok(match values.get(key) {
        None => Vec::new(),
        Some(Raw::Flag(entries)) => entries
            .iter()
            .flat_map(|entry| entry.split(','))
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Raw::Env(value)) => value.split_whitespace().map(str::to_string).collect(),
        Some(Raw::Yaml(serde_yaml::Value::Sequence(items))) => items
            .iter()
            .map(|item| match item {
                serde_yaml::Value::String(text) => Ok(text.clone()),
                serde_yaml::Value::Number(number) => Ok(number.to_string()),
                serde_yaml::Value::Bool(flag) => Ok(flag.to_string()),
                _ => Err(invalid(format!(
                    "Invalid value for '{key}': expected a list of strings. Exiting..."
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(Raw::Yaml(serde_yaml::Value::Null)) => Vec::new(),
        Some(Raw::Yaml(serde_yaml::Value::String(text))) => {
            text.split_whitespace().map(str::to_string).collect()
        }
        Some(Raw::Yaml(_)) => {
            return Err(invalid(format!(
                "Invalid value for '{key}': expected a list of strings. Exiting..."
            )));
        }
    })
}

fn build(
    values: &BTreeMap<&'static str, Raw>,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let endpoint = text(values, "endpoint")?;
    if endpoint.is_empty() {
        return Err(invalid("Semaphore endpoint was not specified. Exiting..."));
    }
    let token = text(values, "token")?;
    let token_ssm_parameter = text(values, "token-ssm-parameter")?;
    if token.is_empty() && token_ssm_parameter.is_empty() {
        return Err(invalid(
            "Agent registration token was not specified. Exiting...",
        ));
    }
    let disconnect_after_job = flag(values, "disconnect-after-job")?;
    let job_id = text(values, "job-id")?;
    if !job_id.is_empty() && !disconnect_after_job {
        return Err(invalid(
            "job-id can only be used if disconnect-after-job is also used. Exiting...",
        ));
    }
    let idle_timeout = int(values, "disconnect-after-idle-timeout", 0)?;
    if idle_timeout < 0 {
        return Err(invalid("Idle timeout can't be negative. Exiting..."));
    }
    let upload_job_logs = upload_job_logs(values)?;
    let env_vars = pairs(values, "env-vars", '=', "environment variable")?;
    let files = pairs(values, "files", ':', "file mapping")?;
    check_kubernetes_options(values)?;
    let name = text(values, "name")?;
    let name_from_env = text(values, "name-from-env")?;
    if !name.is_empty() {
        validate_name(&name)?;
    } else if !name_from_env.is_empty() {
        validate_name(env.get(&name_from_env).map(String::as_str).unwrap_or(""))?;
    }

    let job_record_file = job_record_file(values, env, disconnect_after_job)?;

    Ok(Config {
        name,
        name_from_env,
        endpoint,
        token,
        no_https: flag(values, "no-https")?,
        shutdown_hook_path: text(values, "shutdown-hook-path")?,
        pre_job_hook_path: text(values, "pre-job-hook-path")?,
        post_job_hook_path: text(values, "post-job-hook-path")?,
        disconnect_after_job,
        job_id,
        disconnect_after_idle_timeout: idle_timeout,
        interruption_grace_period: int(values, "interruption-grace-period", 0)?,
        env_vars,
        files,
        fail_on_missing_files: flag(values, "fail-on-missing-files")?,
        upload_job_logs,
        fail_on_pre_job_hook_error: flag(values, "fail-on-pre-job-hook-error")?,
        source_pre_job_hook: flag(values, "source-pre-job-hook")?,
        report_gpus: flag(values, "report-gpus")?,
        container_gpus: container_gpus(values)?,
        container_engine: container_engine(values)?,
        container_pull_stall_timeout: non_negative(values, "container-pull-stall-timeout")?,
        ec2: flag(values, "ec2")?,
        ec2_keep_instance: flag(values, "ec2-keep-instance")?,
        ec2_poweroff_command: match values.get("ec2-poweroff-command") {
            None => "poweroff".to_string(),
            Some(_) => text(values, "ec2-poweroff-command")?,
        },
        token_ssm_parameter,
        aws_region: text(values, "aws-region")?,
        registered_file: text(values, "registered-file")?,
        job_record_file,
        job_user: text(values, "job-user")?,
        job_no_new_privileges: flag(values, "job-no-new-privileges")?,
        job_cgroups: job_cgroups(values)?,
        job_role: job_role(values)?,
        imds_endpoint: text(values, "imds-endpoint")?,
        ec2_poll_seconds: ec2_poll_seconds(values)?,
        give_up_after: give_up_after(values)?,
        keep_failed_instance_minutes: keep_failed_instance_minutes(values)?,
        gpu_health: gpu_health(values)?,
    })
}

fn gpu_health(values: &BTreeMap<&'static str, Raw>) -> Result<GpuHealthOptions, ConfigError> {
    let gate = match text(values, "gpu-gate")?.as_str() {
        "" | "enforce" => GateMode::Enforce,
        "warn" => GateMode::Warn,
        "off" => GateMode::Off,
        other => {
            return Err(invalid(format!(
                "gpu-gate must be enforce, warn or off, got '{other}'. Exiting..."
            )))
        }
    };
    let expect = match text(values, "expect-gpus")?.as_str() {
        "" => None,
        spec => Some(expected_gpus(spec)?),
    };
    let kernel_log = match text(values, "kernel-log")?.as_str() {
        "" => "/dev/kmsg".to_string(),
        path => path.to_string(),
    };
    Ok(GpuHealthOptions {
        gate,
        expect,
        dcgm: gate_dcgm(values)?,
        kernel_log,
    })
}

fn gate_dcgm(values: &BTreeMap<&'static str, Raw>) -> Result<bool, ConfigError> {
    match text(values, "gpu-gate-dcgm")?.as_str() {
        "" | "auto" => Ok(true),
        "off" => Ok(false),
        other => Err(invalid(format!(
            "gpu-gate-dcgm must be auto or off, got '{other}'. Exiting..."
        ))),
    }
}

/// `COUNT:MODEL`, e.g. `4:A10G` or `8:H100 80GB HBM3`.
fn expected_gpus(spec: &str) -> Result<crate::gpu_health::Expected, ConfigError> {
    let bad = |why: String| {
        invalid(format!(
            "expect-gpus must be COUNT:MODEL (e.g. 4:A10G), got '{spec}': {why}. Exiting..."
        ))
    };
    let (count, model) = spec
        .split_once(':')
        .ok_or_else(|| bad("no ':'".to_string()))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| bad(format!("'{count}' is not a count")))?;
    crate::gpu_health::Expected::new(count, model, "expect-gpus").map_err(|e| bad(e.to_string()))
}

fn job_role(
    values: &BTreeMap<&'static str, Raw>,
) -> Result<crate::job_role::JobRoleOptions, ConfigError> {
    Ok(crate::job_role::JobRoleOptions {
        role_arn: text(values, "job-role-arn")?,
        listen: text(values, "job-role-listen")?,
        container_listen: text(values, "job-role-container-listen")?,
        ecr_repositories: ecr_repositories(values)?,
        cache_bucket: text(values, "cache-bucket")?,
        stack: text(values, "job-role-stack")?,
        agent_type: text(values, "job-role-agent-type")?,
        region: String::new(),
    })
}

/// `job-ecr-repositories`: repository names only, as ECR spells them (nothing that widens an ARN).
fn ecr_repositories(values: &BTreeMap<&'static str, Raw>) -> Result<Vec<String>, ConfigError> {
    let names = list(values, "job-ecr-repositories")?;
    match names
        .iter()
        .find(|name| !crate::job_role::rules::is_repository_name(name))
    {
        Some(bad) => Err(invalid(format!(
            "Invalid ECR repository name '{bad}' in job-ecr-repositories: lower-case letters, digits and ._/- only. Exiting..."
        ))),
        None => Ok(names),
    }
}

fn upload_job_logs(values: &BTreeMap<&'static str, Raw>) -> Result<UploadJobLogs, ConfigError> {
    Ok(match text(values, "upload-job-logs")?.as_str() {
        "" | "never" => UploadJobLogs::Never,
        "always" => UploadJobLogs::Always,
        "when-trimmed" => UploadJobLogs::WhenTrimmed,
        other => {
            return Err(invalid(format!(
                "Unsupported value '{other}' for upload-job-logs. Allowed values are: never, always, when-trimmed. Exiting..."
            )))
        }
    })
}

fn container_gpus(
    values: &BTreeMap<&'static str, Raw>,
) -> Result<crate::compose::ContainerGpus, ConfigError> {
    let value = text(values, "container-gpus")?;
    crate::compose::ContainerGpus::parse(&value).ok_or_else(|| {
        invalid(format!(
            "Unsupported value '{value}' for container-gpus. Allowed values are: all, auto, none. Exiting..."
        ))
    })
}

fn container_engine(
    values: &BTreeMap<&'static str, Raw>,
) -> Result<crate::compose::engine::ContainerEngine, ConfigError> {
    let value = text(values, "container-engine")?;
    let store = text(values, "container-image-store")?;
    crate::compose::engine::ContainerEngine::parse(&value, &store).ok_or_else(|| {
        invalid(format!(
            "Unsupported value '{value}' for container-engine. Allowed values are: host, rootless. Exiting..."
        ))
    })
}

/// `key`'s entries as `a<separator>b` pairs; `what` names a bad entry in upstream's message.
fn pairs(
    values: &BTreeMap<&'static str, Raw>,
    key: &str,
    separator: char,
    what: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    list(values, key)?
        .into_iter()
        .map(
            |entry| match entry.split(separator).collect::<Vec<_>>()[..] {
                [a, b] => Ok((a.to_string(), b.to_string())),
                _ => Err(invalid(format!(
                    "Error parsing --{key}: {entry} is not a valid {what}. Exiting..."
                ))),
            },
        )
        .collect()
}

/// The Kubernetes options are validated as upstream does, then refused: no such executor here.
fn check_kubernetes_options(values: &BTreeMap<&'static str, Raw>) -> Result<(), ConfigError> {
    pairs(values, "kubernetes-labels", '=', "label")?;
    if int(values, "kubernetes-pod-start-timeout", 300)? < 0 {
        return Err(invalid(
            "Kubernetes pod start timeout can't be negative. Exiting...",
        ));
    }
    if flag(values, "kubernetes-executor")? {
        return Err(invalid(
            "The Kubernetes executor is not supported by this agent; run jobs with the shell executor. Exiting...",
        ));
    }
    Ok(())
}

/// The job record's path for a single-job agent (given, else under `$HOME`); empty for an agent
/// that takes many jobs, which keeps no record.
fn job_record_file(
    values: &BTreeMap<&'static str, Raw>,
    env: &BTreeMap<String, String>,
    disconnect_after_job: bool,
) -> Result<String, ConfigError> {
    let configured = text(values, "job-record-file")?;
    if !disconnect_after_job {
        return Ok(String::new());
    }
    let home = env.get("HOME").map(String::as_str);
    crate::job_record::default_path(&configured, home).ok_or_else(|| {
        invalid("HOME is not set and job-record-file was not given: a single-job agent (disconnect-after-job) needs a place to record that this machine took its job. Exiting...")
    })
}

fn ec2_poll_seconds(values: &BTreeMap<&'static str, Raw>) -> Result<i64, ConfigError> {
    let seconds = int(values, "ec2-poll-seconds", 5)?;
    if seconds < 1 {
        return Err(invalid("ec2-poll-seconds must be at least 1. Exiting..."));
    }
    Ok(seconds)
}

fn give_up_after(values: &BTreeMap<&'static str, Raw>) -> Result<i64, ConfigError> {
    let seconds = int(values, "give-up-after", protocol::GIVE_UP_AFTER_SECS)?;
    if seconds < 1 {
        return Err(invalid("give-up-after must be at least 1. Exiting..."));
    }
    Ok(seconds)
}

/// A job's task limit in its cgroup unless `job-pids-max` says otherwise (0: none): far above
/// what a build's processes and threads need, far below what would starve the machine.
pub(crate) const DEFAULT_JOB_PIDS_MAX: i64 = 32_768;

/// `job-cgroups` and its limits (which need it).
fn job_cgroups(
    values: &BTreeMap<&'static str, Raw>,
) -> Result<Option<crate::job_cgroup::Limits>, ConfigError> {
    let memory_max = crate::job_cgroup::parse_size(&text(values, "job-memory-max")?)
        .map_err(|error| invalid(format!("{error}. Exiting...")))?;
    let pids_max = int(values, "job-pids-max", DEFAULT_JOB_PIDS_MAX)?;
    if pids_max < 0 {
        return Err(invalid(
            "job-pids-max must be 0 (no limit) or more. Exiting...",
        ));
    }
    let pids_max = (pids_max > 0).then_some(pids_max.unsigned_abs());
    let limited = memory_max.is_some() || values.contains_key("job-pids-max");
    match flag(values, "job-cgroups")? {
        true => Ok(Some(crate::job_cgroup::Limits {
            memory_max,
            pids_max,
        })),
        false if limited => Err(invalid(
            "job-memory-max and job-pids-max need job-cgroups. Exiting...",
        )),
        false => Ok(None),
    }
}

/// The most a failed job's instance may be kept: a day (the stacks allow 12 hours).
pub(crate) const MAX_KEEP_FAILED_MINUTES: i64 = 24 * 60;

fn keep_failed_instance_minutes(values: &BTreeMap<&'static str, Raw>) -> Result<i64, ConfigError> {
    let minutes = int(values, "keep-failed-instance-minutes", 0)?;
    if !(0..=MAX_KEEP_FAILED_MINUTES).contains(&minutes) {
        return Err(invalid(format!(
            "keep-failed-instance-minutes must be 0 to {MAX_KEEP_FAILED_MINUTES}, got {minutes}. Exiting..."
        )));
    }
    Ok(minutes)
}

/// docs/protocol.md §2.8: a URL (Go's `url.ParseRequestURI`) has no length limit; any other name
/// must have 8..=80 bytes.
pub(crate) fn validate_name(name: &str) -> Result<(), ConfigError> {
    if looks_like_request_uri(name) {
        return Ok(());
    }
    let length = name.len();
    if !(8..=80).contains(&length) {
        return Err(invalid(format!(
            "Agent name validation failed: name should have between 8 and 80 characters. '{name}' has {length}"
        )));
    }
    Ok(())
}

/// Approximates `url.ParseRequestURI`: an absolute path, or `scheme:rest` with a valid scheme,
/// and no ASCII control bytes.
fn looks_like_request_uri(text: &str) -> bool {
    if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return false;
    }
    if text.starts_with('/') {
        return true;
    }
    match text.split_once(':') {
        Some((scheme, rest)) => {
            let mut chars = scheme.chars();
            let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
            first_ok
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
                && !rest.contains(' ')
        }
        None => false,
    }
}

impl Config {
    /// `<scheme>://<endpoint>/api/v1/self_hosted_agents` (the endpoint is used verbatim).
    pub(crate) fn base_url(&self) -> String {
        let scheme = if self.no_https { "http" } else { "https" };
        format!("{scheme}://{}/api/v1/self_hosted_agents", self.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn env(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_file(_: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ))
    }

    const BASE: &[&str] = &["--endpoint", "org.example.com", "--token", "secret"];

    fn load_with(
        list: &[&str],
        environment: &[(&str, &str)],
        yaml: &str,
    ) -> Result<Config, ConfigError> {
        let yaml = yaml.to_string();
        let reader = move |_: &str| Ok(yaml.clone());
        load(&args(list), &env(environment), &reader)
    }

    #[test]
    fn required_options_and_their_messages() {
        let table: &[(&[&str], &str)] = &[
            (&[], "Semaphore endpoint was not specified. Exiting..."),
            (&["--endpoint", "x"], "Agent registration token was not specified. Exiting..."),
            (&["--endpoint=x", "--token=t", "--job-id", "j"], "job-id can only be used if disconnect-after-job is also used. Exiting..."),
            (&["--endpoint=x", "--token=t", "--disconnect-after-idle-timeout", "-1"], "Idle timeout can't be negative. Exiting..."),
            (&["--endpoint=x", "--token=t", "--env-vars", "A=B=C"], "Error parsing --env-vars: A=B=C is not a valid environment variable. Exiting..."),
            (&["--endpoint=x", "--token=t", "--name", "short"], "Agent name validation failed: name should have between 8 and 80 characters. 'short' has 5"),
            (&["--endpoint=x", "--token=t", "--bogus"], "unknown flag: --bogus"),
            (&["--endpoint=x", "--token"], "flag needs an argument: --token"),
            (&["--endpoint=x", "--token=t", "--upload-job-logs", "sometimes"], "Unsupported value 'sometimes' for upload-job-logs. Allowed values are: never, always, when-trimmed. Exiting..."),
            (&["--endpoint=x", "--token=t", "--disconnect-after-idle-timeout", "ten"], "Invalid value 'ten' for 'disconnect-after-idle-timeout': expected an integer. Exiting..."),
            (&["--endpoint=x", "--token=t", "--kubernetes-executor"], "The Kubernetes executor is not supported by this agent; run jobs with the shell executor. Exiting..."),
        ];
        for (list, message) in table {
            let error = load(&args(list), &env(&[]), &no_file).unwrap_err();
            assert_eq!(error.to_string(), *message, "args {list:?}");
        }
    }

    #[test]
    fn gpu_health_options_and_their_messages() {
        let config = load_with(BASE, &[], "").unwrap().gpu_health;
        assert_eq!(
            config,
            GpuHealthOptions {
                gate: GateMode::Enforce,
                expect: None,
                dcgm: true,
                kernel_log: "/dev/kmsg".into()
            }
        );
        let options = [
            BASE,
            &[
                "--gpu-gate",
                "warn",
                "--expect-gpus",
                "4:A10G",
                "--gpu-gate-dcgm",
                "off",
                "--kernel-log",
                "/tmp/k",
            ],
        ]
        .concat();
        let config = load_with(&options, &[], "").unwrap().gpu_health;
        assert_eq!(config.gate, GateMode::Warn);
        assert_eq!(
            config.expect.as_ref().map(|e| (e.count, e.model.as_str())),
            Some((4, "A10G"))
        );
        assert!(!config.dcgm);
        assert_eq!(config.kernel_log, "/tmp/k");
        let from_yaml = load_with(
            &[BASE, &["--config-file=c.yaml"]].concat(),
            &[],
            "gpu-gate: \"off\"\nexpect-gpus: \"8:H100 80GB HBM3\"\n",
        )
        .unwrap()
        .gpu_health;
        assert_eq!(from_yaml.gate, GateMode::Off);
        assert_eq!(
            from_yaml.expect.map(|e| e.model),
            Some("H100 80GB HBM3".to_string())
        );
        let errors = [
            (
                &["--gpu-gate", "maybe"][..],
                "gpu-gate must be enforce, warn or off, got 'maybe'",
            ),
            (
                &["--expect-gpus", "4"],
                "expect-gpus must be COUNT:MODEL (e.g. 4:A10G), got '4': no ':'",
            ),
            (&["--expect-gpus", "four:A10G"], "'four' is not a count"),
            (&["--expect-gpus", "0:A10G"], "at least 1"),
            (&["--expect-gpus", "4:"], "must not be empty"),
        ];
        for (extra, words) in errors {
            let error = load_with(&[BASE, extra].concat(), &[], "")
                .unwrap_err()
                .to_string();
            assert!(error.contains(words), "{extra:?}: {error}");
        }
    }

    #[test]
    fn job_cgroups_and_their_limits() {
        assert_eq!(load_with(BASE, &[], "").unwrap().job_cgroups, None);
        let args = [
            BASE,
            &[
                "--job-cgroups",
                "--job-memory-max",
                "64M",
                "--job-pids-max",
                "200",
            ],
        ];
        let limits = load_with(&args.concat(), &[], "")
            .unwrap()
            .job_cgroups
            .unwrap();
        assert_eq!(limits.memory_max, Some(64 << 20));
        assert_eq!(limits.pids_max, Some(200));
        let defaults = load_with(&[BASE, &["--job-cgroups"]].concat(), &[], "").unwrap();
        assert_eq!(defaults.job_cgroups.unwrap().pids_max, Some(32_768));
        let unlimited = [BASE, &["--job-cgroups", "--job-pids-max", "0"]].concat();
        let unlimited = load_with(&unlimited, &[], "").unwrap().job_cgroups.unwrap();
        assert_eq!((unlimited.pids_max, unlimited.memory_max), (None, None));
        for bad in [
            &["--job-memory-max", "64M"][..],
            &["--job-cgroups", "--job-memory-max", "lots"],
            &["--job-cgroups", "--job-pids-max", "-1"],
        ] {
            assert!(
                load_with(&[BASE, bad].concat(), &[], "").is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_new_privileges_is_off_unless_the_image_turns_it_on() {
        assert!(!load_with(BASE, &[], "").unwrap().job_no_new_privileges);
        let config = load_with(
            BASE,
            &[("SEMAPHORE_AGENT_JOB_NO_NEW_PRIVILEGES", "true")],
            "",
        );
        assert!(config.unwrap().job_no_new_privileges);
    }

    #[test]
    fn failed_instances_are_kept_only_within_a_day() {
        assert_eq!(
            load_with(BASE, &[], "")
                .unwrap()
                .keep_failed_instance_minutes,
            0
        );
        let config = load_with(
            &[BASE, &["--config-file", "c.yaml"]].concat(),
            &[],
            "keep-failed-instance-minutes: 30\n",
        )
        .unwrap();
        assert_eq!(config.keep_failed_instance_minutes, 30);
        for bad in ["-1", "1441"] {
            let error = load_with(
                &[BASE, &["--keep-failed-instance-minutes", bad]].concat(),
                &[],
                "",
            )
            .unwrap_err();
            assert!(
                error.to_string().contains("keep-failed-instance-minutes"),
                "{error}"
            );
        }
    }

    #[test]
    fn give_up_after_defaults_to_the_shared_number_and_must_be_positive() {
        let config = load_with(BASE, &[], "").unwrap();
        assert_eq!(config.give_up_after, protocol::GIVE_UP_AFTER_SECS);
        let config = load_with(&[BASE, &["--give-up-after", "30"]].concat(), &[], "").unwrap();
        assert_eq!(config.give_up_after, 30);
        let error = load_with(&[BASE, &["--give-up-after", "0"]].concat(), &[], "").unwrap_err();
        assert_eq!(
            error.to_string(),
            "give-up-after must be at least 1. Exiting..."
        );
    }

    #[test]
    fn precedence_is_flag_then_env_then_file_then_default() {
        let yaml = "endpoint: from-file\ntoken: file-token\nname: file-name-123\nno-https: true\n";
        let config = load_with(BASE, &[("SEMAPHORE_AGENT_NAME", "env-name-123")], yaml).unwrap();
        // config-file is not given: the file is not read.
        assert_eq!(config.endpoint, "org.example.com");
        assert_eq!(config.name, "env-name-123");
        assert!(!config.no_https);

        let config = load_with(
            &["--config-file", "c.yaml", "--token", "flag-token"],
            &[("SEMAPHORE_AGENT_NAME", "env-name-123")],
            yaml,
        )
        .unwrap();
        assert_eq!(config.endpoint, "from-file");
        assert_eq!(config.token, "flag-token");
        assert_eq!(config.name, "env-name-123");
        assert!(config.no_https);
        assert_eq!(
            config.base_url(),
            "http://from-file/api/v1/self_hosted_agents"
        );
        assert_eq!(config.upload_job_logs, UploadJobLogs::Never);
    }

    #[test]
    fn lists_split_by_source() {
        let config = load_with(
            &[BASE, &["--env-vars", "A=1,B=2", "--env-vars=C=3"]].concat(),
            &[],
            "",
        )
        .unwrap();
        assert_eq!(
            config.env_vars,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("C".into(), "3".into())
            ]
        );

        let config = load_with(BASE, &[("SEMAPHORE_AGENT_ENV_VARS", "X=1  Y=2")], "").unwrap();
        assert_eq!(
            config.env_vars,
            vec![("X".into(), "1".into()), ("Y".into(), "2".into())]
        );

        let config = load_with(
            &[BASE, &["--config-file=c.yaml"]].concat(),
            &[],
            "env-vars:\n  - K=v\nfiles:\n  - /a:/b\n",
        )
        .unwrap();
        assert_eq!(config.env_vars, vec![("K".into(), "v".into())]);
        assert_eq!(config.files, vec![("/a".into(), "/b".into())]);
    }

    #[test]
    fn container_engine_default_host_rootless_with_its_store() {
        use crate::compose::engine::{ContainerEngine, RootlessOptions, DEFAULT_IMAGE_STORE};
        let rootless = |store: &str| {
            ContainerEngine::Rootless(RootlessOptions {
                image_store: Some(store.into()),
            })
        };
        let table: &[(&[&str], ContainerEngine)] = &[
            (&[], ContainerEngine::Host),
            (&["--container-engine", "host"], ContainerEngine::Host),
            (
                &["--container-engine", "rootless"],
                rootless(DEFAULT_IMAGE_STORE),
            ),
            (
                &[
                    "--container-engine=rootless",
                    "--container-image-store=/srv/images",
                ],
                rootless("/srv/images"),
            ),
        ];
        for (flags, expected) in table {
            let config = load_with(&[BASE, flags].concat(), &[], "").unwrap();
            assert_eq!(config.container_engine, *expected, "{flags:?}");
        }
        let config = load_with(
            &[BASE, &["--container-pull-stall-timeout", "90"]].concat(),
            &[],
            "",
        )
        .unwrap();
        assert_eq!(config.container_pull_stall_timeout, 90);
        assert_eq!(
            load_with(&[BASE, &["--container-pull-stall-timeout", "-1"]].concat(), &[], ""),
            Err(ConfigError::Invalid(
                "Invalid value '-1' for 'container-pull-stall-timeout': expected 0 or more seconds. Exiting...".into()
            ))
        );
        // The AMI's agent unit sets it through the environment (flotilla-seal writes it).
        let config = load_with(
            BASE,
            &[("SEMAPHORE_AGENT_CONTAINER_ENGINE", "rootless")],
            "",
        )
        .unwrap();
        assert_eq!(config.container_engine, rootless(DEFAULT_IMAGE_STORE));
        assert_eq!(
            load_with(&[BASE, &["--container-engine", "docker"]].concat(), &[], ""),
            Err(ConfigError::Invalid(
                "Unsupported value 'docker' for container-engine. Allowed values are: host, rootless. Exiting...".into()
            ))
        );
    }

    #[test]
    fn container_gpus_default_auto_with_upstreams_precedence() {
        use crate::compose::ContainerGpus;
        let file = "container-gpus: none\n";
        let with_file = [BASE, &["--config-file=c.yaml"]].concat();
        type Row<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], ContainerGpus);
        let table: &[Row] = &[
            (BASE, &[], ContainerGpus::Auto),
            (&with_file, &[], ContainerGpus::None),
            (
                &with_file,
                &[("SEMAPHORE_AGENT_CONTAINER_GPUS", "all")],
                ContainerGpus::All,
            ),
            (
                &[&with_file[..], &["--container-gpus", "auto"]].concat(),
                &[("SEMAPHORE_AGENT_CONTAINER_GPUS", "all")],
                ContainerGpus::Auto,
            ),
        ];
        for (list, environment, expected) in table {
            let config = load_with(list, environment, file).unwrap();
            assert_eq!(config.container_gpus, *expected, "{list:?} {environment:?}");
        }
        assert_eq!(
            load_with(&[BASE, &["--container-gpus", "some"]].concat(), &[], "")
                .unwrap_err()
                .to_string(),
            "Unsupported value 'some' for container-gpus. Allowed values are: all, auto, none. Exiting..."
        );
    }

    #[test]
    fn env_vars_map_dashes_to_underscores() {
        let config = load_with(
            BASE,
            &[
                ("SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB", "true"),
                ("SEMAPHORE_AGENT_JOB_ID", "job-1"),
                ("SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT", "30"),
                ("HOME", "/home/agent"),
            ],
            "",
        )
        .unwrap();
        assert!(config.disconnect_after_job);
        assert_eq!(config.job_id, "job-1");
        assert_eq!(config.disconnect_after_idle_timeout, 30);
    }

    #[test]
    fn unknown_yaml_keys_are_rejected() {
        let error = load_with(
            &[BASE, &["--config-file", "c.yaml"]].concat(),
            &[],
            "endpoint: x\nendpiont: y\n",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Unrecognized option 'endpiont'. Exiting..."
        );
        let error = load_with(
            &[BASE, &["--config-file", "c.yaml"]].concat(),
            &[],
            "config-file: other.yaml\n",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Unrecognized option 'config-file'. Exiting..."
        );
    }

    #[test]
    fn the_config_yaml_can_come_from_an_ssm_parameter_below_env_and_flags() {
        let read = |path: &str| {
            match path {
            "ssm:/flotilla/fleet/agent-config" => Ok("endpoint: from-ssm.example.com\ntoken: ssm-token\ndisconnect-after-idle-timeout: 30\n".to_string()),
            other => Err(std::io::Error::other(format!("unexpected read of {other}"))),
        }
        };
        let config = load(
            &args(&["--disconnect-after-idle-timeout", "60"]),
            &env(&[
                (
                    "SEMAPHORE_AGENT_CONFIG_SSM_PARAMETER",
                    "/flotilla/fleet/agent-config",
                ),
                ("SEMAPHORE_AGENT_TOKEN", "env-token"),
            ]),
            &read,
        )
        .unwrap();
        assert_eq!(config.endpoint, "from-ssm.example.com");
        assert_eq!(config.token, "env-token", "env beats the parameter's YAML");
        assert_eq!(
            config.disconnect_after_idle_timeout, 60,
            "flags beat it too"
        );
        let both = load(
            &args(&["--config-file", "c.yaml", "--config-ssm-parameter", "/p"]),
            &env(&[]),
            &read,
        )
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let nested = load(
            &args(&["--config-ssm-parameter", "/nested"]),
            &env(&[]),
            &|_: &str| Ok("config-ssm-parameter: /other\n".to_string()),
        )
        .unwrap_err();
        assert_eq!(
            nested.to_string(),
            "Unrecognized option 'config-ssm-parameter'. Exiting..."
        );
        let missing = load(
            &args(&["--config-ssm-parameter", "/missing"]),
            &env(&[]),
            &|_: &str| {
                Err(std::io::Error::other(
                    "SSM parameter '/missing' does not exist",
                ))
            },
        )
        .unwrap_err();
        assert!(
            missing.to_string().contains("'ssm:/missing'")
                && missing.to_string().contains("does not exist"),
            "{missing}"
        );
    }

    #[test]
    fn unreadable_or_malformed_config_file_is_fatal() {
        let error = load(&args(&["--config-file", "/nope.yaml"]), &env(&[]), &no_file).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("Error reading config file '/nope.yaml'"),
            "{error}"
        );
        let error =
            load_with(&["--config-file", "c.yaml"], &[], "endpoint: [unclosed").unwrap_err();
        assert!(
            error.to_string().contains("Error reading config file"),
            "{error}"
        );
        let error = load_with(&["--config-file", "c.yaml"], &[], "- just\n- a list\n").unwrap_err();
        assert!(error.to_string().contains("expected a mapping"), "{error}");
    }

    #[test]
    fn the_job_role_comes_from_flags_env_or_file() {
        let config = load_with(
            &[
                BASE,
                &[
                    "--config-file",
                    "c.yaml",
                    "--job-role-arn",
                    "arn:aws:iam::1:role/j",
                ],
                &["--cache-bucket", "b"],
            ]
            .concat(),
            &[("SEMAPHORE_AGENT_JOB_ROLE_STACK", "gpu-fleet")],
            "job-role-agent-type: s1-gpu\njob-role-listen: 127.0.0.1:51681\njob-ecr-repositories: [team/app, base]\njob-role-container-listen: 169.254.170.2:51680\n",
        )
        .unwrap();
        let role = &config.job_role;
        assert_eq!(role.role_arn, "arn:aws:iam::1:role/j");
        assert_eq!(role.cache_bucket, "b");
        assert_eq!(role.stack, "gpu-fleet");
        assert_eq!(role.agent_type, "s1-gpu");
        assert_eq!(role.listen, "127.0.0.1:51681");
        assert_eq!(role.container_listen, "169.254.170.2:51680");
        assert_eq!(role.ecr_repositories, ["team/app", "base"]);
        assert_eq!(load_with(BASE, &[], "").unwrap().job_role.role_arn, "");
        let error = load_with(
            BASE,
            &[("SEMAPHORE_AGENT_JOB_ECR_REPOSITORIES", "ok *")],
            "",
        )
        .unwrap_err();
        assert!(error.to_string().contains("'*'"), "{error}");
    }

    #[test]
    fn bool_flags_take_optional_values() {
        let config = load_with(
            &[
                BASE,
                &[
                    "--no-https",
                    "--disconnect-after-job=true",
                    "--source-pre-job-hook=false",
                ],
            ]
            .concat(),
            &[("HOME", "/home/agent")],
            "",
        )
        .unwrap();
        assert!(config.no_https && config.disconnect_after_job && !config.source_pre_job_hook);
        let error = load_with(&[BASE, &["--no-https=maybe"]].concat(), &[], "").unwrap_err();
        assert_eq!(
            error.to_string(),
            "Invalid value 'maybe' for 'no-https': expected true or false. Exiting..."
        );
    }

    #[test]
    fn only_a_single_job_agent_has_a_job_record_under_home_unless_told_where() {
        let home = [("HOME", "/home/agent")];
        let config = load_with(BASE, &home, "").unwrap();
        assert_eq!(config.job_record_file, "", "many jobs: no record");
        let single = [BASE, &["--disconnect-after-job"]].concat();
        let config = load_with(&single, &home, "").unwrap();
        assert_eq!(
            config.job_record_file,
            "/home/agent/.flotilla-agent/job-taken"
        );
        let given = [
            &single[..],
            &["--job-record-file", "/var/lib/flotilla/job-taken"],
        ]
        .concat();
        let config = load_with(&given, &[], "").unwrap();
        assert_eq!(config.job_record_file, "/var/lib/flotilla/job-taken");
        let error = load_with(&single, &[], "").unwrap_err();
        assert!(error.to_string().contains("HOME is not set"), "{error}");
    }

    #[test]
    fn names_follow_upstream_validation() {
        assert!(validate_name("abcdefgh").is_ok());
        assert!(validate_name(&"a".repeat(80)).is_ok());
        assert!(validate_name(&"a".repeat(81)).is_err());
        assert!(validate_name("https://sts.amazonaws.com/?Action=GetCallerIdentity").is_ok());
        assert!(validate_name("/x").is_ok());
        assert!(validate_name("").is_err());
        let error = load_with(
            &[BASE, &["--name-from-env", "MY_NAME"]].concat(),
            &[("MY_NAME", "tiny")],
            "",
        )
        .unwrap_err();
        assert!(error.to_string().contains("'tiny' has 4"), "{error}");
        let config = load_with(
            &[BASE, &["--name-from-env", "MY_NAME"]].concat(),
            &[("MY_NAME", "long-enough-name")],
            "",
        )
        .unwrap();
        assert_eq!(config.name_from_env, "MY_NAME");
    }
}
