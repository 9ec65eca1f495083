//! The job spec users submit to the hub (`scaler jobs submit`): plain values where the wire
//! format has base64, a retry policy, and the agent type that must run it. The hub turns it into
//! the wire [`JobRequest`] an agent fetches.

use crate::job::{Command, EnvVar, File, JobRequest, Logger};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

pub const DEFAULT_AGENT_TYPE: &str = "default";

fn default_agent_type() -> String {
    DEFAULT_AGENT_TYPE.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A display name (defaults to the first command).
    #[serde(default)]
    pub name: String,
    /// Which agent type (fleet) runs it.
    #[serde(default = "default_agent_type")]
    pub agent_type: String,
    pub commands: Vec<CommandSpec>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub epilogue: EpilogueSpec,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How long the job may run once an agent has it; absent: its agent type's default. Past it
    /// the hub stops the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time_limit: Option<TimeLimit>,
}

/// Semaphore's `execution_time_limit`: `{hours: 2}` or `{minutes: 30}`; Flotilla also takes
/// `{seconds: 90}` and a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TimeLimit {
    Seconds(u64),
    Parts(TimeLimitParts),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeLimitParts {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hours: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub minutes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seconds: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl TimeLimit {
    /// The limit in seconds (saturating).
    pub fn seconds(&self) -> u64 {
        match *self {
            TimeLimit::Seconds(seconds) => seconds,
            TimeLimit::Parts(parts) => parts
                .hours
                .saturating_mul(3600)
                .saturating_add(parts.minutes.saturating_mul(60))
                .saturating_add(parts.seconds),
        }
    }
}

/// A duration the way a person writes it: `2s`, `1m`, `1h30m`, `1h0m5s`.
pub fn human_duration(seconds: u64) -> String {
    let (hours, minutes, rest) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (hours, minutes, rest) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, 0) => format!("{h}h{m}m"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// A command: a plain string, or a directive with a display alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    Plain(String),
    Aliased {
        directive: String,
        #[serde(default)]
        alias: String,
    },
}

impl CommandSpec {
    fn to_command(&self) -> Command {
        match self {
            CommandSpec::Plain(directive) => Command::new(directive.clone()),
            CommandSpec::Aliased { directive, alias } => Command {
                directive: directive.clone(),
                alias: alias.clone(),
            },
        }
    }

    pub fn directive(&self) -> &str {
        match self {
            CommandSpec::Plain(directive) | CommandSpec::Aliased { directive, .. } => directive,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    /// Text content; or give `content_base64` for bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_mode() -> String {
    "0644".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EpilogueSpec {
    #[serde(default)]
    pub always: Vec<CommandSpec>,
    #[serde(default)]
    pub on_pass: Vec<CommandSpec>,
    #[serde(default)]
    pub on_fail: Vec<CommandSpec>,
}

/// When the hub runs a job again. A job that fails on its own is never re-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// How many times to re-queue the job when its agent was lost or interrupted.
    #[serde(default = "default_agent_lost_retries")]
    pub agent_lost: u32,
}

fn default_agent_lost_retries() -> u32 {
    1
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            agent_lost: default_agent_lost_retries(),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("a job needs at least one command")]
    NoCommands,
    #[error("command {0} is empty")]
    EmptyCommand(usize),
    #[error("agent_type must be 1-64 characters of letters, digits, '-', '_' or '.'; got '{0}'")]
    BadAgentType(String),
    #[error("env var name '{0}' is not a valid shell variable name")]
    BadEnvName(String),
    #[error("file {0}: path is empty")]
    EmptyPath(usize),
    #[error("file '{0}': give exactly one of content and content_base64")]
    FileContent(String),
    #[error("file '{0}': content_base64 is not valid base64")]
    FileBase64(String),
    #[error("file '{path}': mode '{mode}' is not an octal file mode such as 0644")]
    FileMode { path: String, mode: String },
    #[error("execution_time_limit must be more than 0 seconds")]
    ZeroTimeLimit,
}

/// Agent type names: used in URLs and metrics labels.
pub fn valid_agent_type(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl JobSpec {
    /// A spec that runs `commands` on `agent_type`.
    pub fn from_commands(agent_type: &str, commands: &[String]) -> JobSpec {
        JobSpec {
            name: String::new(),
            agent_type: agent_type.to_string(),
            commands: commands
                .iter()
                .map(|c| CommandSpec::Plain(c.clone()))
                .collect(),
            env: BTreeMap::new(),
            files: Vec::new(),
            epilogue: EpilogueSpec::default(),
            retry: RetryPolicy::default(),
            execution_time_limit: None,
        }
    }

    /// The spec with its secrets gone: environment values and file contents emptied (what the
    /// hub keeps of a job once its retention period is over).
    pub fn without_secrets(&self) -> JobSpec {
        let mut spec = self.clone();
        spec.env.values_mut().for_each(String::clear);
        for file in &mut spec.files {
            file.content = Some(String::new());
            file.content_base64 = None;
        }
        spec
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self
            .execution_time_limit
            .is_some_and(|limit| limit.seconds() == 0)
        {
            return Err(SpecError::ZeroTimeLimit);
        }
        if self.commands.is_empty() {
            return Err(SpecError::NoCommands);
        }
        if let Some(index) = self
            .commands
            .iter()
            .position(|c| c.directive().trim().is_empty())
        {
            return Err(SpecError::EmptyCommand(index + 1));
        }
        if !valid_agent_type(&self.agent_type) {
            return Err(SpecError::BadAgentType(self.agent_type.clone()));
        }
        if let Some(name) = self.env.keys().find(|name| !valid_env_name(name)) {
            return Err(SpecError::BadEnvName(name.clone()));
        }
        for (index, file) in self.files.iter().enumerate() {
            if file.path.is_empty() {
                return Err(SpecError::EmptyPath(index + 1));
            }
            match (&file.content, &file.content_base64) {
                (Some(_), None) => {}
                (None, Some(encoded)) => {
                    use base64::Engine;
                    if base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .is_err()
                    {
                        return Err(SpecError::FileBase64(file.path.clone()));
                    }
                }
                _ => return Err(SpecError::FileContent(file.path.clone())),
            }
            let probe = File {
                path: file.path.clone(),
                content: String::new(),
                mode: file.mode.clone(),
            };
            if probe.parse_mode().is_none() {
                return Err(SpecError::FileMode {
                    path: file.path.clone(),
                    mode: file.mode.clone(),
                });
            }
        }
        Ok(())
    }

    /// The name shown in listings.
    pub fn display_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        self.commands
            .first()
            .map(|c| c.directive().lines().next().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// The wire job request for an agent, pushing its log to `logger`.
    pub fn to_job_request(&self, job_id: &str, logger: Logger) -> JobRequest {
        let commands =
            |list: &[CommandSpec]| list.iter().map(CommandSpec::to_command).collect::<Vec<_>>();
        JobRequest {
            job_id: job_id.to_string(),
            executor: "shell".to_string(),
            commands: commands(&self.commands),
            epilogue_always_commands: commands(&self.epilogue.always),
            epilogue_on_pass_commands: commands(&self.epilogue.on_pass),
            epilogue_on_fail_commands: commands(&self.epilogue.on_fail),
            env_vars: self
                .env
                .iter()
                .map(|(name, value)| EnvVar::plain(name.clone(), value))
                .collect(),
            files: self
                .files
                .iter()
                .map(|file| match (&file.content, &file.content_base64) {
                    (Some(text), _) => File::plain(file.path.clone(), text, file.mode.clone()),
                    (None, Some(encoded)) => File {
                        path: file.path.clone(),
                        content: encoded.clone(),
                        mode: file.mode.clone(),
                    },
                    (None, None) => File::plain(file.path.clone(), "", file.mode.clone()),
                })
                .collect(),
            logger,
            ..JobRequest::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
name: build
agent_type: gpu-a10
commands:
  - nvidia-smi
  - directive: make test
    alias: Tests
env:
  CUDA_VISIBLE_DEVICES: "0"
files:
  - path: ~/.config/x.toml
    content: "a = 1\n"
    mode: "0600"
epilogue:
  always: [echo done]
retry:
  agent_lost: 2
"#;

    #[test]
    fn yaml_spec_becomes_a_wire_job_request() {
        let spec: JobSpec = serde_yaml::from_str(YAML).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.retry.agent_lost, 2);
        let request = spec.to_job_request(
            "j1",
            Logger {
                method: "push".into(),
                url: "u".into(),
                token: "t".into(),
                max_size_in_bytes: 0,
            },
        );
        assert_eq!(
            request.commands[1],
            Command {
                directive: "make test".into(),
                alias: "Tests".into()
            }
        );
        assert_eq!(request.env_vars[0].decode_value().unwrap(), b"0");
        assert_eq!(request.files[0].decode_content().unwrap(), b"a = 1\n");
        assert_eq!(request.epilogue_always_commands[0].directive, "echo done");
        assert_eq!(request.executor, "shell");
        assert_eq!(spec.display_name(), "build");
    }

    #[test]
    fn defaults_and_validation() {
        let spec: JobSpec = serde_json::from_str(r#"{"commands":["true"]}"#).unwrap();
        assert_eq!(spec.agent_type, DEFAULT_AGENT_TYPE);
        assert_eq!(spec.retry.agent_lost, 1);
        assert_eq!(spec.display_name(), "true");
        let table: &[(&str, SpecError)] = &[
            (r#"{"commands":[]}"#, SpecError::NoCommands),
            (r#"{"commands":["  "]}"#, SpecError::EmptyCommand(1)),
            (
                r#"{"commands":["x"],"agent_type":"a b"}"#,
                SpecError::BadAgentType("a b".into()),
            ),
            (
                r#"{"commands":["x"],"env":{"1X":"v"}}"#,
                SpecError::BadEnvName("1X".into()),
            ),
            (
                r#"{"commands":["x"],"files":[{"path":"p"}]}"#,
                SpecError::FileContent("p".into()),
            ),
            (
                r#"{"commands":["x"],"files":[{"path":"p","content_base64":"%%"}]}"#,
                SpecError::FileBase64("p".into()),
            ),
            (
                r#"{"commands":["x"],"files":[{"path":"p","content":"","mode":"+x"}]}"#,
                SpecError::FileMode {
                    path: "p".into(),
                    mode: "+x".into(),
                },
            ),
        ];
        for (json, expected) in table {
            let spec: JobSpec = serde_json::from_str(json).unwrap();
            assert_eq!(spec.validate().unwrap_err(), *expected, "{json}");
        }
        assert!(
            serde_json::from_str::<JobSpec>(r#"{"commands":["x"],"comands":[]}"#).is_err(),
            "unknown keys are rejected"
        );
    }

    #[test]
    fn execution_time_limit_in_semaphore_and_flotilla_forms() {
        let table: &[(&str, Option<u64>)] = &[
            ("commands: [x]\n", None),
            (
                "commands: [x]\nexecution_time_limit:\n  hours: 2\n",
                Some(7200),
            ),
            (
                "commands: [x]\nexecution_time_limit:\n  minutes: 30\n",
                Some(1800),
            ),
            (
                "commands: [x]\nexecution_time_limit:\n  seconds: 2\n",
                Some(2),
            ),
            ("commands: [x]\nexecution_time_limit: 90\n", Some(90)),
        ];
        for (yaml, seconds) in table {
            let spec: JobSpec = serde_yaml::from_str(yaml).unwrap();
            spec.validate().unwrap();
            assert_eq!(
                spec.execution_time_limit.map(|l| l.seconds()),
                *seconds,
                "{yaml}"
            );
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
            assert_eq!(json.contains("execution_time_limit"), seconds.is_some());
        }
        let zero: JobSpec =
            serde_yaml::from_str("commands: [x]\nexecution_time_limit:\n  minutes: 0\n").unwrap();
        assert_eq!(zero.validate(), Err(SpecError::ZeroTimeLimit));
        assert!(serde_yaml::from_str::<JobSpec>(
            "commands: [x]\nexecution_time_limit:\n  days: 1\n"
        )
        .is_err());
        for (seconds, text) in [
            (2, "2s"),
            (60, "1m"),
            (3600, "1h"),
            (5400, "1h30m"),
            (3605, "1h0m5s"),
            (61, "1m1s"),
        ] {
            assert_eq!(human_duration(seconds), text);
        }
    }

    #[test]
    fn without_secrets_empties_env_values_and_file_contents() {
        let spec: JobSpec = serde_yaml::from_str(YAML).unwrap();
        let purged = spec.without_secrets();
        assert_eq!(purged.env["CUDA_VISIBLE_DEVICES"], "");
        assert_eq!(purged.files[0].content.as_deref(), Some(""));
        assert_eq!(purged.files[0].path, spec.files[0].path);
        assert_eq!(purged.commands, spec.commands);
        purged.validate().unwrap();
    }
}
