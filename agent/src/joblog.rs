//! A job's event log: every event is appended as one Go-encoded JSON line to a local NDJSON file
//! (docs/protocol.md §6.1), from which the pusher delivers batches. The file bounds memory however
//! much a job prints and lets a slow log server lag behind without slowing the job.

use crate::shell::unix_now;
use protocol::gojson::utf8_lossy_per_byte;
use protocol::{JobResult, LogEvent};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Called with every event as it is logged (used by `agent run` to print, and by tests).
pub type Observer = Box<dyn Fn(&LogEvent) + Send + Sync>;

pub struct JobLog {
    inner: Mutex<Inner>,
    changed: Condvar,
    path: PathBuf,
    observer: Option<Observer>,
}

struct Inner {
    writer: BufWriter<File>,
    /// Complete lines appended so far.
    lines: u64,
    /// `cmd_started` events so far.
    commands_started: u64,
    /// No more events will come.
    closed: bool,
    line_buffer: Vec<u8>,
    write_failed: bool,
    /// What the waiting pusher wants to be woken for (so a busy job does not wake it per event).
    wake: WakeWhen,
}

/// What the pusher sees when it looks at the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogProgress {
    pub lines: u64,
    pub commands_started: u64,
    pub closed: bool,
}

/// A waiter's wake-up condition; closing the log always wakes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeWhen {
    /// Wake once the log has at least this many lines.
    pub lines_at_least: u64,
    /// Wake on the next `cmd_started`.
    pub on_command_started: bool,
}

impl WakeWhen {
    const NEVER: WakeWhen = WakeWhen {
        lines_at_least: u64::MAX,
        on_command_started: false,
    };
}

impl JobLog {
    /// Creates the NDJSON file at `path` (truncating it), 0600 from the start: the log can hold
    /// the job's secrets as it printed them. A file already there gets 0600 before anything is
    /// written; a symbolic link there is an error, not followed.
    pub fn create(path: PathBuf, observer: Option<Observer>) -> std::io::Result<JobLog> {
        let file = crate::secure_fs::create(&path, 0o600, crate::secure_fs::Existing::Replace)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(JobLog {
            inner: Mutex::new(Inner {
                writer: BufWriter::with_capacity(256 * 1024, file),
                lines: 0,
                commands_started: 0,
                closed: false,
                line_buffer: Vec::with_capacity(256),
                write_failed: false,
                wake: WakeWhen::NEVER,
            }),
            changed: Condvar::new(),
            path,
            observer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one event. Logging errors are reported once and never fail the job (docs/protocol.md
    /// §6.1).
    pub fn log(&self, event: LogEvent) {
        if let Some(observer) = &self.observer {
            observer(&event);
        }
        let command_started = matches!(event, LogEvent::CmdStarted { .. });
        self.append(command_started, |line| event.write_line(line));
    }

    /// Writes one line built by `encode` under the lock, and wakes the pusher if it waits for it.
    fn append(&self, command_started: bool, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        let mut line = std::mem::take(&mut inner.line_buffer);
        line.clear();
        encode(&mut line);
        let result = inner.writer.write_all(&line);
        inner.line_buffer = line;
        match result {
            Ok(()) => {
                inner.lines += 1;
                if command_started {
                    inner.commands_started += 1;
                }
                let wake = inner.lines >= inner.wake.lines_at_least
                    || (command_started && inner.wake.on_command_started);
                if wake {
                    inner.wake = WakeWhen::NEVER;
                    drop(inner);
                    self.changed.notify_all();
                }
            }
            Err(error) => {
                if !inner.write_failed {
                    inner.write_failed = true;
                    tracing::error!(
                        "Error writing job log event to {}: {error}",
                        self.path.display()
                    );
                }
            }
        }
    }

    pub fn job_started(&self) {
        self.log(LogEvent::JobStarted {
            timestamp: unix_now(),
        });
    }

    pub fn cmd_started(&self, directive: &str) {
        self.log(LogEvent::CmdStarted {
            timestamp: unix_now(),
            directive: directive.to_string(),
        });
    }

    /// Output bytes are encoded straight into the line, each invalid UTF-8 byte as U+FFFD.
    pub fn cmd_output(&self, output: &[u8]) {
        if output.is_empty() {
            return;
        }
        let timestamp = unix_now();
        if let Some(observer) = &self.observer {
            observer(&LogEvent::CmdOutput {
                timestamp,
                output: utf8_lossy_per_byte(output),
            });
        }
        self.append(false, |line| {
            LogEvent::write_output_line(line, timestamp, output)
        });
    }

    pub fn cmd_finished(&self, directive: &str, exit_code: i32, started_at: i64, finished_at: i64) {
        self.log(LogEvent::CmdFinished {
            timestamp: unix_now(),
            directive: directive.to_string(),
            exit_code,
            started_at,
            finished_at,
        });
    }

    pub fn job_finished(&self, result: JobResult) {
        self.log(LogEvent::JobFinished {
            timestamp: unix_now(),
            result,
        });
    }

    /// No more events: flushes the file and wakes the pusher so it drains what is left.
    pub fn close(&self) {
        let mut inner = self.lock();
        let _ = inner.writer.flush();
        inner.closed = true;
        drop(inner);
        self.changed.notify_all();
    }

    /// Makes every line counted so far readable from the file, and returns the progress.
    pub fn flush(&self) -> LogProgress {
        let mut inner = self.lock();
        if let Err(error) = inner.writer.flush() {
            if !inner.write_failed {
                inner.write_failed = true;
                tracing::error!("Error writing job log {}: {error}", self.path.display());
            }
        }
        progress(&inner)
    }

    /// Waits until `wake` holds, the log is closed, or `deadline` passes.
    pub fn wait(&self, wake: WakeWhen, deadline: Option<Instant>) -> LogProgress {
        let mut inner = self.lock();
        loop {
            let satisfied = inner.closed || inner.lines >= wake.lines_at_least;
            if satisfied {
                break;
            }
            inner.wake = wake;
            match deadline {
                None => inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        break;
                    }
                    inner = self
                        .changed
                        .wait_timeout(inner, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            if wake.on_command_started && inner.wake == WakeWhen::NEVER {
                break; // woken by a cmd_started
            }
        }
        inner.wake = WakeWhen::NEVER;
        progress(&inner)
    }

    /// Every event in the file (for `agent run` summaries and tests).
    pub fn read_events(&self) -> std::io::Result<Vec<LogEvent>> {
        self.flush();
        let text = std::fs::read(&self.path)?;
        text.split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(std::io::Error::other))
            .collect()
    }

    /// Deletes the local file (after delivery).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn progress(inner: &Inner) -> LogProgress {
    LogProgress {
        lines: inner.lines,
        commands_started: inner.commands_started,
        closed: inner.closed,
    }
}
