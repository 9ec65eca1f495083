//! Running a helper program (`nvidia-smi`, `docker`) with a time limit, for the GPU inventory and
//! the self-test: a wedged driver or daemon must not hang the agent. Its stdout when it exits 0;
//! otherwise a [`CommandError`] that names the program.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CommandError {
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
pub fn run_with_timeout(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, CommandError> {
    let spawn_error = |error| CommandError::Spawn {
        program: program.to_string(),
        error,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
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
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(CommandError::Failed {
            program: program.to_string(),
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
