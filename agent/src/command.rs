//! Running a helper program (`nvidia-smi`, `docker`) with a time limit, for the GPU inventory and
//! the self-test: a wedged driver or daemon must not hang the agent. Its stdout when it exits 0;
//! otherwise a [`CommandError`] that names the program.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub(crate) enum CommandError {
    #[error("{program}: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("{program} did not finish within {} s", timeout.as_secs())]
    TimedOut { program: String, timeout: Duration },
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        program: String,
        args: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Runs `program args` with no stdin; its trimmed stdout when it exits 0 within `timeout`.
pub(crate) fn run_with_timeout(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, CommandError> {
    let mut command = Command::new(program);
    command.args(args);
    run_command_with_timeout(command, program, args, timeout)
}

/// [`run_with_timeout`] for a command already set up (its environment, its user); `program` and
/// `args` name it in errors.
pub(crate) fn run_command_with_timeout(
    command: Command,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, CommandError> {
    let out = capture(command, program, timeout)?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            program: program.to_string(),
            args: args.join(" "),
            status: out.status,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout.trim().to_string())
}

/// A finished program's exit status and its whole output, whatever the status.
pub(crate) struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` with no stdin within `timeout` and keeps its output whatever its exit status
/// (`nvidia-smi` and `dcgmi` say on stdout why they failed); `program` names it in errors.
pub(crate) fn capture(
    mut command: Command,
    program: &str,
    timeout: Duration,
) -> Result<Captured, CommandError> {
    let spawn_error = |error| CommandError::Spawn {
        program: program.to_string(),
        error,
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    // Drained as it comes, so a chatty program cannot fill the pipe and stall.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    while child.try_wait().map_err(spawn_error)?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CommandError::TimedOut {
                program: program.to_string(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().map_err(spawn_error)?;
    let text = |handle: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&handle.join().unwrap_or_default()).into_owned()
    };
    Ok(Captured {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    })
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// The first executable `program` in the directories of `path` (a `PATH` value), as a shell would
/// find it.
pub(crate) fn find_program(program: &str, path: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}
