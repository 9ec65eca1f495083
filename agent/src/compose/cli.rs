//! The Compose command line: which one this machine has (docs/protocol.md §8.1: `docker compose`
//! v2, else the `docker-compose` binary; a version starting with `v` means the plugin, #268), the
//! arguments of each call the executor makes, and `down`. The parsing is pure; [`detect`] and
//! [`Project::down`] run the CLI.

use crate::command::{run_with_timeout, CommandError};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// `docker compose version` must answer quickly; a wedged daemon must not hang the job.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// `down` stops the containers (1 s grace each) and removes them, their network and volumes.
const DOWN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Error)]
pub enum ComposeCliError {
    #[error("neither `docker compose version` ({plugin}) nor `docker-compose --version` ({standalone}) answered with a version")]
    NotFound { plugin: String, standalone: String },
}

/// The Compose CLI to call: `docker compose` (v2 and later) or `docker-compose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeCli {
    pub version: String,
}

impl ComposeCli {
    /// The program and the arguments that select Compose.
    pub fn program(&self) -> (&'static str, &'static [&'static str]) {
        if self.version.starts_with('v') {
            ("docker", &["compose"])
        } else {
            ("docker-compose", &[])
        }
    }
}

/// `^Docker Compose version (.*)$` of `docker compose version`.
pub(crate) fn parse_plugin_version(output: &str) -> Option<String> {
    output
        .trim_matches('\n')
        .strip_prefix("Docker Compose version ")
        .filter(|rest| !rest.contains('\n') && !rest.is_empty())
        .map(str::to_string)
}

/// `^docker-compose version (.*),.*$` of `docker-compose --version` (greedy, as Go's regexp).
pub(crate) fn parse_standalone_version(output: &str) -> Option<String> {
    let rest = output
        .trim_matches('\n')
        .strip_prefix("docker-compose version ")?;
    if rest.contains('\n') {
        return None;
    }
    rest.rfind(',').map(|comma| rest[..comma].to_string())
}

/// The Compose CLI of this machine, found once per agent process (upstream looks for it at every
/// job; starting the CLI twice costs a Python Compose ~0.6 s). A failure is not remembered.
pub fn find() -> Result<ComposeCli, ComposeCliError> {
    static FOUND: std::sync::OnceLock<ComposeCli> = std::sync::OnceLock::new();
    if let Some(cli) = FOUND.get() {
        return Ok(cli.clone());
    }
    let cli = detect()?;
    Ok(FOUND.get_or_init(|| cli).clone())
}

/// Finds the Compose CLI of this machine, as upstream does.
pub fn detect() -> Result<ComposeCli, ComposeCliError> {
    let describe =
        |result: Result<String, CommandError>, parse: fn(&str) -> Option<String>| match result {
            Ok(output) => parse(&output).ok_or(output),
            Err(error) => Err(error.to_string()),
        };
    let plugin = describe(
        run_with_timeout("docker", &["compose", "version"], VERSION_TIMEOUT),
        parse_plugin_version,
    );
    let plugin_error = match plugin {
        Ok(version) => return Ok(ComposeCli { version }),
        Err(error) => error,
    };
    match describe(
        run_with_timeout("docker-compose", &["--version"], VERSION_TIMEOUT),
        parse_standalone_version,
    ) {
        Ok(version) => Ok(ComposeCli { version }),
        Err(standalone) => Err(ComposeCliError::NotFound {
            plugin: plugin_error,
            standalone,
        }),
    }
}

/// Where `main` sees the agent's terminal (the slave side of the job's PTY, bind-mounted).
pub(crate) const CONTAINER_TERMINAL: &str = "/dev/flotilla-tty";
/// What `bash -c` runs first in `main`: the agent's terminal becomes bash's stdin, stdout and
/// stderr (and, bash being the session leader of the container, its controlling terminal), then
/// an interactive bash replaces it, as upstream's `run main bash`. `TERM` as the engine sets it
/// when it allocates the terminal (`xterm`, unless the image sets one; Compose 1 sets `dumb` for
/// `-T`). A container user that cannot open the terminal ends here, and
/// its line says so ([`TERMINAL_REFUSED`]).
pub(crate) const SHELL_PRELUDE: &str = "case \"$TERM\" in ''|dumb) export TERM=xterm;; esac; exec </dev/flotilla-tty >/dev/flotilla-tty 2>&1 && exec bash";
/// The start of bash's line when the container's user cannot open the agent's terminal.
pub(crate) const TERMINAL_REFUSED: &str = "/dev/flotilla-tty: ";

/// One job's Compose project: its file, its name, and the name of its `main` container.
#[derive(Debug, Clone)]
pub struct Project {
    pub cli: ComposeCli,
    pub file: PathBuf,
    pub name: String,
    /// The first container's service name.
    pub main: String,
}

impl Project {
    /// `<compose> --ansi never -f FILE -p NAME`, the start of every call.
    fn base(&self) -> Vec<String> {
        let (program, selector) = self.cli.program();
        let mut args = vec![program.to_string()];
        args.extend(selector.iter().map(|s| s.to_string()));
        args.extend([
            "--ansi".to_string(),
            "never".to_string(),
            "-f".to_string(),
            self.file.display().to_string(),
            "-p".to_string(),
            self.name.clone(),
        ]);
        args
    }

    /// The container the job's shell runs in: the project's name and `main`'s, so two jobs on one
    /// machine (or a container a crashed agent left) never collide.
    pub(crate) fn main_container_name(&self) -> String {
        format!("{}-{}", self.name, self.main)
    }

    /// Pulls what is missing and starts the services: `run --rm main true` (upstream's way, since
    /// `pull` would pull images that are already here).
    pub(crate) fn pull_command(&self) -> Vec<String> {
        let mut args = self.base();
        args.extend(["run", "--rm", &self.main, "true"].map(str::to_string));
        args
    }

    /// The job's shell: bash in `main`, with the engine's socket at `/var/run/docker.sock`, the
    /// job's scratch directory (read-only, where the agent writes the command and env files)
    /// mounted at its own path, and the agent's terminal (`terminal`, the slave side of the job's
    /// PTY) at [`CONTAINER_TERMINAL`]. Compose allocates no terminal (`-T`): bash makes the
    /// agent's its stdin, stdout, stderr and controlling terminal ([`SHELL_PRELUDE`]), so the
    /// job's output reaches the agent without passing through Compose's relay.
    pub(crate) fn shell_command(
        &self,
        scratch: &Path,
        socket: &Path,
        terminal: &Path,
    ) -> Vec<String> {
        let scratch = scratch.display().to_string();
        let mut args = self.base();
        args.extend([
            "run".to_string(),
            "--rm".to_string(),
            "-T".to_string(),
            "--name".to_string(),
            self.main_container_name(),
            "-v".to_string(),
            format!("{}:/var/run/docker.sock", socket.display()),
            "-v".to_string(),
            format!("{scratch}:{scratch}:ro"),
            "-v".to_string(),
            format!("{}:{CONTAINER_TERMINAL}", terminal.display()),
            self.main.clone(),
            "bash".to_string(),
            "-c".to_string(),
            SHELL_PRELUDE.to_string(),
        ]);
        args
    }

    /// `down --remove-orphans`: removes every container of the project (the job's shell's
    /// included), its network and its anonymous volumes. Failures go to the agent log only.
    pub fn down(&self) {
        let mut args = self.base();
        args.extend(
            ["down", "--remove-orphans", "--volumes", "--timeout", "1"].map(str::to_string),
        );
        let (program, rest) = (args[0].clone(), args[1..].to_vec());
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        tracing::info!("Cleaning up docker resources");
        if let Err(error) = run_with_timeout(&program, &rest, DOWN_TIMEOUT) {
            tracing::error!("Error removing docker resources: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_programs() {
        let table = [
            ("Docker Compose version v2.29.7\n", Some("v2.29.7"), None),
            (
                "Docker Compose version 2.20.2+ds1-0ubuntu1~22.04.1\n",
                Some("2.20.2+ds1-0ubuntu1~22.04.1"),
                None,
            ),
            (
                "docker-compose version 1.29.2, build unknown\n",
                None,
                Some("1.29.2"),
            ),
            (
                "docker-compose version 1.29.2, build 5becea4c, extra\n",
                None,
                Some("1.29.2, build 5becea4c"),
            ),
            ("Usage: docker [OPTIONS] COMMAND\n", None, None),
        ];
        for (output, plugin, standalone) in table {
            assert_eq!(parse_plugin_version(output).as_deref(), plugin, "{output}");
            assert_eq!(
                parse_standalone_version(output).as_deref(),
                standalone,
                "{output}"
            );
        }
        let v2 = ComposeCli {
            version: "v2.29.7".into(),
        };
        assert_eq!(v2.program(), ("docker", &["compose"][..]));
        let v1 = ComposeCli {
            version: "1.29.2".into(),
        };
        assert_eq!(v1.program(), ("docker-compose", &[][..]));
    }

    #[test]
    fn commands() {
        let project = Project {
            cli: ComposeCli {
                version: "v2.29.7".into(),
            },
            file: PathBuf::from("/tmp/j/docker-compose.yml"),
            name: "flotilla-j1".into(),
            main: "main".into(),
        };
        assert_eq!(
            project.pull_command().join(" "),
            "docker compose --ansi never -f /tmp/j/docker-compose.yml -p flotilla-j1 run --rm main true"
        );
        let tty = Path::new("/dev/pts/7");
        let shell =
            project.shell_command(Path::new("/tmp/j"), Path::new("/var/run/docker.sock"), tty);
        assert_eq!(
            shell[..shell.len() - 1].join(" "),
            "docker compose --ansi never -f /tmp/j/docker-compose.yml -p flotilla-j1 run --rm -T --name flotilla-j1-main -v /var/run/docker.sock:/var/run/docker.sock -v /tmp/j:/tmp/j:ro -v /dev/pts/7:/dev/flotilla-tty main bash -c"
        );
        assert_eq!(shell.last().unwrap(), SHELL_PRELUDE);
        assert!(project
            .shell_command(
                Path::new("/tmp/j"),
                Path::new("/tmp/j/engine/podman.sock"),
                tty
            )
            .join(" ")
            .contains(" -v /tmp/j/engine/podman.sock:/var/run/docker.sock "));
    }
}
