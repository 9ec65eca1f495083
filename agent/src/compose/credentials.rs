//! Image pull credentials (docs/protocol.md §4.2, §8.1 "Start"): one `docker login` on the host
//! per entry of `compose.image_pull_credentials`, under the `Setting up image pull credentials`
//! directive, with upstream's log lines: which registry kind, the login command as text (never the
//! secrets: they are only in the command's environment), then every line the command printed.
//!
//! The kinds: `DockerHub`, `GenericDocker`, `AWS_ECR` and `GCR`. ECR goes through the AWS CLI, whose
//! default credential chain ends at the instance role, so on EC2 a job needs no keys of its own
//! (`AWS_REGION` is enough; the account comes from `AWS_ACCOUNT_ID` or `sts get-caller-identity`).
//! Each login command runs with the credential's variables only (upstream's rule), plus `PATH`
//! and the agent's `HOME` so the CLIs are found and the login lands where the pull will read it.
//!
//! On the machine's Docker the logins run as the agent's user while the job runs as the job user,
//! and a credential's variables and files are the job's to choose: so a variable that steers the
//! shell or the command search (`BASH_ENV`, `PATH`, exported functions, `LD_*`, ...) is dropped
//! ([`is_reserved`]), and a file goes only under `HOME` or upstream's `/tmp/gcr`, never through
//! a `..`, a symbolic link or a directory of another user's ([`write_file`]).

use crate::joblog::JobLog;
use crate::shell::unix_now;
use protocol::job::ImagePullCredentials;
use protocol::EnvVar;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use thiserror::Error;

pub(crate) const DIRECTIVE: &str = "Setting up image pull credentials";
const TYPE_VARIABLE: &str = "DOCKER_CREDENTIAL_TYPE";

/// Why a login could not be prepared; each message is the job log's line (upstream's texts).
#[derive(Debug, Error)]
pub(crate) enum LoginError {
    #[error("Failed to decode {0}")]
    BadVariable(String),
    #[error(
        "Failed to determine docker login command: cannot tell the AWS CLI version from '{0}'"
    )]
    AwsCliVersion(String),
    #[error("Failed to determine docker login command: cannot find the AWS account id: {0}")]
    AwsAccount(String),
    #[error("Failed to decode the content of the file.")]
    BadFileContent,
    #[error("Failed to create destination path {0}: HOME is not set")]
    NoHome(String),
    #[error("Failed to set file mode to {0}")]
    BadFileMode(String),
    #[error("Failed to create destination path {path}: {error}")]
    Write { path: String, error: String },
}

/// The registry kinds upstream knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    DockerHub,
    GenericDocker,
    Ecr,
    Gcr,
}

/// Why a credential's kind cannot be told (upstream's texts).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StrategyError {
    #[error("DOCKER_CREDENTIAL_TYPE not set")]
    NotSet,
    #[error("illegal base64 data in DOCKER_CREDENTIAL_TYPE")]
    BadEncoding,
    #[error("unknown DOCKER_CREDENTIAL_TYPE: '{0}'")]
    Unknown(String),
}

/// The credential's kind, from its `DOCKER_CREDENTIAL_TYPE` variable.
pub fn strategy(credential: &ImagePullCredentials) -> Result<Strategy, StrategyError> {
    let var = credential
        .env_vars
        .iter()
        .find(|var| var.name == TYPE_VARIABLE)
        .ok_or(StrategyError::NotSet)?;
    let value = var.decode_value().map_err(|_| StrategyError::BadEncoding)?;
    match value.as_slice() {
        b"DockerHub" => Ok(Strategy::DockerHub),
        b"GenericDocker" => Ok(Strategy::GenericDocker),
        b"AWS_ECR" => Ok(Strategy::Ecr),
        b"GCR" => Ok(Strategy::Gcr),
        other => Err(StrategyError::Unknown(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// `aws --version` → whether it is version 2 or later (`aws-cli/2.15.0 Python/3.11 ...`).
pub(crate) fn is_aws_cli_v2(version_output: &str) -> Option<bool> {
    let version = version_output.split(['/', ' ']).nth(1)?;
    let major: u32 = version.split('.').next()?.trim().parse().ok()?;
    Some(major >= 2)
}

/// The ECR login command, upstream's for each CLI generation.
pub(crate) fn ecr_login_command(cli_v2: bool, account_id: Option<&str>) -> String {
    match (cli_v2, account_id) {
        (true, Some(account)) => format!("aws ecr get-login-password --region $AWS_REGION | docker login --username AWS --password-stdin {account}.dkr.ecr.$AWS_REGION.amazonaws.com"),
        (false, None) => "$(aws ecr get-login --no-include-email --region $AWS_REGION)".to_string(),
        (_, Some(account)) => format!("$(aws ecr get-login --no-include-email --region $AWS_REGION --registry-ids {account})"),
        (true, None) => "aws ecr get-login-password --region $AWS_REGION | docker login --username AWS --password-stdin $(aws sts get-caller-identity --query Account --output text).dkr.ecr.$AWS_REGION.amazonaws.com".to_string(),
    }
}

/// Where the logins run: the Compose CLI's environment, and its user (the job user for a job's
/// own engine, whose pulls then read the logins from the job user's `HOME`; the agent otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    pub env: &'a [(String, String)],
    pub user: Option<&'a crate::job_user::JobUser>,
}

/// Logs in with every credential; the directive's exit code (0, or 1 at the first failure).
pub(crate) fn set_up(credentials: &[ImagePullCredentials], login: &Login<'_>, log: &JobLog) -> i32 {
    let started_at = unix_now();
    log.cmd_started(DIRECTIVE);
    let mut exit = 0;
    for credential in credentials {
        exit = match strategy(credential) {
            Ok(kind) => log_in(kind, credential, login, log),
            Err(error) => {
                log.cmd_output(
                    format!("Failed to resolve docker login strategy: {error}\n").as_bytes(),
                );
                1
            }
        };
        if exit != 0 {
            break;
        }
    }
    log.cmd_finished(DIRECTIVE, exit, started_at, unix_now());
    exit
}

fn log_in(
    kind: Strategy,
    credential: &ImagePullCredentials,
    login: &Login<'_>,
    log: &JobLog,
) -> i32 {
    let title = match kind {
        Strategy::DockerHub => "DockerHub",
        Strategy::GenericDocker => "Docker",
        Strategy::Ecr => "ECR",
        Strategy::Gcr => "GCR",
    };
    log.cmd_output(format!("Setting up credentials for {title}\n").as_bytes());
    let (command, env) = match login_command(kind, credential, login) {
        Ok(prepared) => prepared,
        Err(error) => {
            log.cmd_output(format!("{error}\n").as_bytes());
            return 1;
        }
    };
    log.cmd_output(format!("{command}\n").as_bytes());
    let (success, output) = bash(&command, &env, login.user);
    for line in output.split('\n') {
        log.cmd_output(format!("{line}\n").as_bytes());
    }
    if success {
        0
    } else {
        1
    }
}

/// The login command for `kind` and the environment it runs with; GCR's key file written.
fn login_command(
    kind: Strategy,
    credential: &ImagePullCredentials,
    login: &Login<'_>,
) -> Result<(String, Vec<(String, String)>), LoginError> {
    let env = command_env(decoded(&credential.env_vars)?, login);
    let command = match kind {
        Strategy::DockerHub => "echo $DOCKERHUB_PASSWORD | docker login --username $DOCKERHUB_USERNAME --password-stdin".to_string(),
        Strategy::GenericDocker => r#"docker login -u "$DOCKER_USERNAME" -p "$DOCKER_PASSWORD" $DOCKER_URL"#.to_string(),
        Strategy::Gcr => {
            write_files_as(login.user, credential, &env)?;
            "cat /tmp/gcr/keyfile.json | docker login -u _json_key --password-stdin https://$GCR_HOSTNAME".to_string()
        }
        Strategy::Ecr => ecr_command(&env, login.user)?,
    };
    Ok((command, env))
}

/// The credential's variables decoded; the first one that is not valid base64 is named.
fn decoded(vars: &[EnvVar]) -> Result<Vec<(String, String)>, LoginError> {
    vars.iter()
        .map(|var| {
            var.decode_value()
                .map(|value| {
                    (
                        var.name.clone(),
                        String::from_utf8_lossy(&value).into_owned(),
                    )
                })
                .map_err(|_| LoginError::BadVariable(var.name.clone()))
        })
        .collect()
}

/// A variable a credential may not set: it would choose what the login's shell runs (bash's
/// start-up file, exported functions, options and prompts, the command search, the loader) or
/// where it writes (`HOME`), or which engine it talks to.
pub(crate) fn is_reserved(name: &str) -> bool {
    const RESERVED: [&str; 16] = [
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PATH",
        "HOME",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "CONTAINERS_CONF",
        "CONTAINERS_STORAGE_CONF",
        "XDG_RUNTIME_DIR",
    ];
    RESERVED.contains(&name) || name.starts_with("BASH_FUNC_") || name.starts_with("LD_")
}

/// The credential's variables (the reserved ones dropped), plus `PATH` (the job's) and `HOME`: the
/// agent's own, or with a job user the job's, with the engine's variables (`DOCKER_HOST`,
/// Podman's configuration).
fn command_env(mut env: Vec<(String, String)>, login: &Login<'_>) -> Vec<(String, String)> {
    env.retain(|(name, _)| !is_reserved(name));
    let from_client = |name: &str| {
        login
            .env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let home = match login.user {
        Some(_) => from_client("HOME"),
        None => std::env::var("HOME").ok(),
    };
    let mut wanted = vec![("PATH", from_client("PATH")), ("HOME", home)];
    if login.user.is_some() {
        for name in [
            "DOCKER_HOST",
            "CONTAINERS_CONF",
            "CONTAINERS_STORAGE_CONF",
            "XDG_RUNTIME_DIR",
        ] {
            wanted.push((name, from_client(name)));
        }
    }
    for (name, value) in wanted {
        if let (Some(value), false) = (value, env.iter().any(|(n, _)| n == name)) {
            env.push((name.to_string(), value));
        }
    }
    env
}

/// Runs `bash -c command` with exactly `env` (as `user` when given); whether it exited 0, and its
/// combined output.
fn bash(
    command: &str,
    env: &[(String, String)],
    user: Option<&crate::job_user::JobUser>,
) -> (bool, String) {
    let mut process = Command::new("bash");
    process
        .arg("-c")
        .arg(format!("{{ {command}\n}} 2>&1"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if let Some(user) = user.cloned() {
        use std::os::unix::process::CommandExt;
        // SAFETY: become_in_child makes only async-signal-safe system calls.
        unsafe {
            process.pre_exec(move || user.become_in_child());
        }
    }
    match process.output() {
        Ok(output) => (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ),
        Err(error) => (false, format!("bash: {error}")),
    }
}

fn ecr_command(
    env: &[(String, String)],
    user: Option<&crate::job_user::JobUser>,
) -> Result<String, LoginError> {
    let (_, version) = bash("aws --version", env, user);
    let v2 = is_aws_cli_v2(&version)
        .ok_or_else(|| LoginError::AwsCliVersion(version.trim().to_string()))?;
    let account = env
        .iter()
        .find(|(name, _)| name == "AWS_ACCOUNT_ID")
        .map(|(_, v)| v.clone());
    let account = match (v2, account) {
        (true, None) => {
            let (ok, output) = bash(
                "aws sts get-caller-identity --query Account --output text",
                env,
                user,
            );
            if !ok {
                return Err(LoginError::AwsAccount(output.trim().to_string()));
            }
            Some(output.trim().to_string())
        }
        (_, account) => account,
    };
    Ok(ecr_login_command(v2, account.as_deref()))
}

/// [`write_files`] as `user` when there is one (the files are then the user's, and the user may
/// write only where it could anyway).
fn write_files_as(
    user: Option<&crate::job_user::JobUser>,
    credential: &ImagePullCredentials,
    env: &[(String, String)],
) -> Result<(), LoginError> {
    match user {
        Some(user) => user
            .run_as(|| write_files(credential, env))
            .map_err(|error| LoginError::Write {
                path: "~".to_string(),
                error: error.to_string(),
            })?,
        None => write_files(credential, env),
    }
}

/// Writes the credential's files (GCR's key file) on the host.
fn write_files(
    credential: &ImagePullCredentials,
    env: &[(String, String)],
) -> Result<(), LoginError> {
    let home = env
        .iter()
        .find(|(name, _)| name == "HOME")
        .map(|(_, v)| PathBuf::from(v));
    for file in &credential.files {
        let content = file
            .decode_content()
            .map_err(|_| LoginError::BadFileContent)?;
        let destination = match (file.path.strip_prefix("~/"), &home) {
            _ if file.path.starts_with('/') => PathBuf::from(&file.path),
            (Some(rest), Some(home)) => home.join(rest),
            (None, Some(home)) => home.join(&file.path),
            (_, None) => return Err(LoginError::NoHome(file.path.clone())),
        };
        if !allowed_destination(&destination, home.as_deref()) {
            return Err(LoginError::Write {
                path: destination.display().to_string(),
                error: "credential files go under HOME or /tmp/gcr only, without '..'".into(),
            });
        }
        let mode = file
            .parse_mode()
            .ok_or_else(|| LoginError::BadFileMode(file.mode.clone()))?;
        write_file(&destination, &content, mode).map_err(|error| LoginError::Write {
            path: destination.display().to_string(),
            error: error.to_string(),
        })?;
    }
    Ok(())
}

/// Upstream's GCR key file lives here (its login command reads it).
const GCR_DIR: &str = "/tmp/gcr";

/// Whether a credential file may be written at `path`: under `home` or [`GCR_DIR`], with no `..`.
pub(crate) fn allowed_destination(path: &Path, home: Option<&Path>) -> bool {
    let no_parent = !path
        .components()
        .any(|part| part == std::path::Component::ParentDir);
    let under_home = home.is_some_and(|home| path.starts_with(home));
    no_parent && (under_home || path.starts_with(GCR_DIR))
}

/// Writes `path`, making its directories; every directory on the way must be a real directory
/// (no symbolic link) and, where the writer made it or owns it, the writer's: a directory another
/// user prepared (a job's `/tmp/gcr` pointing at the agent's home) is refused.
fn write_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
        let meta = std::fs::symlink_metadata(parent)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        use std::os::unix::fs::MetadataExt;
        if !meta.is_dir() || meta.uid() != me {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is not a directory of this user's", parent.display()),
            ));
        }
    }
    crate::secure_fs::write(
        path,
        mode & 0o7777,
        crate::secure_fs::Existing::Replace,
        content,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_cannot_choose_what_the_logins_shell_runs() {
        let login = Login {
            env: &[("PATH".into(), "/usr/bin:/bin".into())],
            user: None,
        };
        let mut vars: Vec<(String, String)> = [
            "BASH_ENV",
            "ENV",
            "BASH_FUNC_docker%%",
            "LD_PRELOAD",
            "PATH",
            "HOME",
            "SHELLOPTS",
            "PS4",
            "DOCKER_HOST",
        ]
        .iter()
        .map(|name| (name.to_string(), "/tmp/evil".to_string()))
        .collect();
        vars.push(("DOCKER_PASSWORD".into(), "secret".into()));
        let env = command_env(vars, &login);
        assert!(env.contains(&("DOCKER_PASSWORD".into(), "secret".into())));
        assert!(env.contains(&("PATH".into(), "/usr/bin:/bin".into())));
        assert!(
            !env.iter().any(|(_, value)| value == "/tmp/evil"),
            "{env:?}"
        );
    }

    #[test]
    fn credential_files_go_under_home_or_upstreams_gcr_directory() {
        let home = Path::new("/home/flotilla");
        for (path, allowed) in [
            ("/home/flotilla/.docker/key.json", true),
            ("/tmp/gcr/keyfile.json", true),
            ("/home/flotilla/../root/.bashrc", false),
            ("/tmp/gcr/../../etc/cron.d/x", false),
            ("/etc/passwd", false),
            ("/home/flotillax/k", false),
        ] {
            assert_eq!(
                allowed_destination(Path::new(path), Some(home)),
                allowed,
                "{path}"
            );
        }
        assert!(!allowed_destination(Path::new("/home/flotilla/k"), None));
    }

    #[test]
    fn a_directory_another_user_prepared_or_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        // The positive control: a directory of the writer's own takes the file.
        write_file(&real.join("key.json"), b"{}", 0o600).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let error = write_file(&link.join("other.json"), b"{}", 0o600).unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{error}"
        );
        assert!(!real.join("other.json").exists());
    }

    #[test]
    fn login_errors_read_as_upstreams_lines() {
        let table = [
            (LoginError::BadVariable("X".into()), "Failed to decode X"),
            (
                LoginError::AwsCliVersion("aws: not found".into()),
                "Failed to determine docker login command: cannot tell the AWS CLI version from 'aws: not found'",
            ),
            (LoginError::BadFileContent, "Failed to decode the content of the file."),
            (
                LoginError::NoHome("~/k.json".into()),
                "Failed to create destination path ~/k.json: HOME is not set",
            ),
            (LoginError::BadFileMode("abc".into()), "Failed to set file mode to abc"),
        ];
        for (error, text) in table {
            assert_eq!(error.to_string(), text);
        }
    }

    fn credential(kind: Option<&str>) -> ImagePullCredentials {
        ImagePullCredentials {
            env_vars: kind
                .map(|k| EnvVar::plain(TYPE_VARIABLE, k))
                .into_iter()
                .collect(),
            files: Vec::new(),
        }
    }

    #[test]
    fn strategies() {
        let table = [
            (Some("DockerHub"), Ok(Strategy::DockerHub)),
            (Some("GenericDocker"), Ok(Strategy::GenericDocker)),
            (Some("AWS_ECR"), Ok(Strategy::Ecr)),
            (Some("GCR"), Ok(Strategy::Gcr)),
            (Some("Quay"), Err(StrategyError::Unknown("Quay".into()))),
            (None, Err(StrategyError::NotSet)),
        ];
        for (kind, expected) in table {
            assert_eq!(strategy(&credential(kind)), expected, "{kind:?}");
        }
        let bad = ImagePullCredentials {
            env_vars: vec![EnvVar {
                name: TYPE_VARIABLE.into(),
                value: "%%".into(),
            }],
            files: Vec::new(),
        };
        assert_eq!(strategy(&bad), Err(StrategyError::BadEncoding));
        assert_eq!(
            StrategyError::Unknown("Quay".into()).to_string(),
            "unknown DOCKER_CREDENTIAL_TYPE: 'Quay'"
        );
    }

    #[test]
    fn ecr_commands() {
        assert_eq!(
            is_aws_cli_v2("aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64"),
            Some(true)
        );
        assert_eq!(
            is_aws_cli_v2("aws-cli/1.18.69 Python/3.8.5 Linux/5.4 botocore/1.17.12"),
            Some(false)
        );
        assert_eq!(is_aws_cli_v2("bash: aws: command not found"), None);
        assert_eq!(
            ecr_login_command(true, Some("123")),
            "aws ecr get-login-password --region $AWS_REGION | docker login --username AWS --password-stdin 123.dkr.ecr.$AWS_REGION.amazonaws.com"
        );
        assert_eq!(
            ecr_login_command(false, None),
            "$(aws ecr get-login --no-include-email --region $AWS_REGION)"
        );
        assert_eq!(
            ecr_login_command(false, Some("123")),
            "$(aws ecr get-login --no-include-email --region $AWS_REGION --registry-ids 123)"
        );
    }
}
