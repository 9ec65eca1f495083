//! The job request (docs/protocol.md §4.1): the body of `GET .../jobs/<id>`, and of
//! `agent run <file>`.
//!
//! Base64 fields stay as the wire strings here: a bad encoding is a job failure with a job-log
//! message (docs/protocol.md §5.3/§5.4), not a decoding error of the whole request, so decoding
//! happens where the job runs, through the helpers below.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct JobRequest {
    pub job_id: String,
    /// `""` means shell.
    pub executor: String,
    pub compose: Compose,
    pub commands: Vec<Command>,
    pub epilogue_always_commands: Vec<Command>,
    pub epilogue_on_pass_commands: Vec<Command>,
    pub epilogue_on_fail_commands: Vec<Command>,
    pub env_vars: Vec<EnvVar>,
    /// The YAML form used by `agent run` spells this key `file` (an upstream quirk); both work.
    #[serde(alias = "file")]
    pub files: Vec<File>,
    pub ssh_public_keys: Vec<String>,
    pub callbacks: Callbacks,
    pub logger: Logger,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Compose {
    pub containers: Vec<Container>,
    pub image_pull_credentials: Vec<ImagePullCredentials>,
    pub host_setup_commands: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: String,
    pub entrypoint: String,
    pub user: String,
    pub env_vars: Vec<EnvVar>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImagePullCredentials {
    pub env_vars: Vec<EnvVar>,
    pub files: Vec<File>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Command {
    pub directive: String,
    /// When non-empty it is shown instead of the directive, and `Running: <directive>` is logged.
    pub alias: String,
}

impl Command {
    pub fn new(directive: impl Into<String>) -> Command {
        Command {
            directive: directive.into(),
            alias: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EnvVar {
    pub name: String,
    /// Standard base64 with padding.
    pub value: String,
}

impl EnvVar {
    /// Builds an entry from a plain value (encoding it).
    pub fn plain(name: impl Into<String>, value: impl AsRef<[u8]>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: STANDARD.encode(value),
        }
    }

    pub fn decode_value(&self) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD.decode(&self.value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct File {
    pub path: String,
    /// Standard base64 of the file's bytes.
    pub content: String,
    /// Octal string, e.g. `"0644"`.
    pub mode: String,
}

impl File {
    pub fn plain(
        path: impl Into<String>,
        content: impl AsRef<[u8]>,
        mode: impl Into<String>,
    ) -> File {
        File {
            path: path.into(),
            content: STANDARD.encode(content),
            mode: mode.into(),
        }
    }

    pub fn decode_content(&self) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD.decode(&self.content)
    }

    /// Parses the octal mode like Go's `strconv.ParseUint(mode, 8, 32)`.
    pub fn parse_mode(&self) -> Option<u32> {
        if self.mode.is_empty() || !self.mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return None;
        }
        u32::from_str_radix(&self.mode, 8).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Callbacks {
    pub finished: String,
    pub teardown_finished: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Logger {
    /// `push`, `pull` or `""` (which means pull).
    pub method: String,
    pub url: String,
    pub token: String,
    pub max_size_in_bytes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_JOB: &str = r#"{
      "job_id": "string",
      "executor": "shell",
      "compose": {
        "containers": [
          {"name":"main","image":"ruby:2.6","command":"","entrypoint":"","user":"",
           "env_vars":[{"name":"X","value":"eA=="}]}
        ],
        "image_pull_credentials": [
          {"env_vars":[{"name":"DOCKER_CREDENTIAL_TYPE","value":"RG9ja2VySHVi"}],
           "files":[{"path":"/tmp/gcr/keyfile.json","content":"e30=","mode":"0644"}]}
        ],
        "host_setup_commands": [{"directive":"true","alias":""}]
      },
      "commands":                  [{"directive":"echo hi","alias":"optional display name"}],
      "epilogue_always_commands":  [{"directive":"a","alias":""}],
      "epilogue_on_pass_commands": [{"directive":"p","alias":""}],
      "epilogue_on_fail_commands": [{"directive":"f","alias":""}],
      "env_vars": [{"name":"NAME","value":"dmFsdWU="}],
      "files":    [{"path":"~/.ssh/id_rsa","content":"a2V5","mode":"0600"}],
      "ssh_public_keys": ["c3NoLXJzYSBhYWFhYQ=="],
      "callbacks": {"finished":"http://f","teardown_finished":"http://t","token":"cb"},
      "logger": {"method":"push", "url":"http://logs/1", "token":"jwt", "max_size_in_bytes": 0}
    }"#;

    #[test]
    fn spec_job_request_decodes_and_round_trips() {
        let job: JobRequest = serde_json::from_str(SPEC_JOB).unwrap();
        assert_eq!(job.job_id, "string");
        assert_eq!(job.commands[0].alias, "optional display name");
        assert_eq!(job.env_vars[0].decode_value().unwrap(), b"value");
        assert_eq!(job.files[0].decode_content().unwrap(), b"key");
        assert_eq!(job.files[0].parse_mode(), Some(0o600));
        assert_eq!(
            job.compose.containers[0].env_vars[0]
                .decode_value()
                .unwrap(),
            b"x"
        );
        assert_eq!(
            job.compose.image_pull_credentials[0].files[0].path,
            "/tmp/gcr/keyfile.json"
        );
        assert_eq!(job.logger.method, "push");
        assert_eq!(job.callbacks.token, "cb");

        let text = serde_json::to_string(&job).unwrap();
        let back: JobRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, job);
        // Field order of the request is the Go struct's.
        let job_id_at = text.find("\"job_id\"").unwrap();
        let executor_at = text.find("\"executor\"").unwrap();
        let logger_at = text.find("\"logger\"").unwrap();
        assert!(job_id_at < executor_at && executor_at < logger_at);
    }

    #[test]
    fn missing_fields_default_and_unknown_fields_are_ignored() {
        let job: JobRequest = serde_json::from_str(r#"{"job_id":"j","surprise":{"a":1}}"#).unwrap();
        assert_eq!(job.job_id, "j");
        assert!(job.commands.is_empty());
        assert_eq!(job.executor, "");
        assert_eq!(job.logger, Logger::default());
    }

    #[test]
    fn yaml_form_uses_file_key() {
        let yaml = "job_id: y\ncommands:\n  - directive: echo hi\nfile:\n  - path: a.txt\n    content: aGk=\n    mode: \"0644\"\n";
        let job: JobRequest = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(job.files.len(), 1);
        assert_eq!(job.files[0].decode_content().unwrap(), b"hi");
        assert_eq!(job.commands[0].directive, "echo hi");
    }

    #[test]
    fn bad_base64_and_modes_are_reported() {
        assert!(EnvVar {
            name: "A".into(),
            value: "not base64!".into()
        }
        .decode_value()
        .is_err());
        for (mode, expected) in [
            ("0644", Some(0o644)),
            ("644", Some(0o644)),
            ("0777", Some(0o777)),
            ("0400", Some(0o400)),
        ] {
            assert_eq!(File::plain("p", "", mode).parse_mode(), expected, "{mode}");
        }
        for mode in ["+x", "+r", "+w", "+rw", "", "0898", "-1", "99999999999"] {
            assert_eq!(File::plain("p", "", mode).parse_mode(), None, "{mode}");
        }
    }
}
