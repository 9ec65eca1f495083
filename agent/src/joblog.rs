//! A job's event log: every event is appended as one Go-encoded JSON line to a local NDJSON file
//! (spec §6.1), from which the pusher delivers batches. The file bounds memory however much a
//! job prints and lets a slow log server lag behind without slowing the job.

use crate::shell::unix_now;
use protocol::gojson::utf8_lossy_per_byte;
use protocol::{JobResult, LogEvent};
use std::fs::File;
use std::io::{BufWriter, Write};
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
    /// No more events will come.
    closed: bool,
    line_buffer: Vec<u8>,
    write_failed: bool,
}

/// What the pusher sees when it looks at the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogProgress {
    pub lines: u64,
    pub closed: bool,
}

impl JobLog {
    /// Creates the NDJSON file at `path` (truncating it).
    pub fn create(path: PathBuf, observer: Option<Observer>) -> std::io::Result<JobLog> {
        let file = File::create(&path)?;
        Ok(JobLog {
            inner: Mutex::new(Inner {
                writer: BufWriter::with_capacity(256 * 1024, file),
                lines: 0,
                closed: false,
                line_buffer: Vec::with_capacity(256),
                write_failed: false,
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

    /// Appends one event. Logging errors are reported once and never fail the job (spec §6.1).
    pub fn log(&self, event: LogEvent) {
        if let Some(observer) = &self.observer {
            observer(&event);
        }
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        let mut line = std::mem::take(&mut inner.line_buffer);
        line.clear();
        event.write_line(&mut line);
        let result = inner.writer.write_all(&line);
        inner.line_buffer = line;
        match result {
            Ok(()) => {
                inner.lines += 1;
                drop(inner);
                self.changed.notify_all();
            }
            Err(error) => {
                if !inner.write_failed {
                    inner.write_failed = true;
                    log::error!(
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

    /// Output bytes become a string with each invalid UTF-8 byte replaced by U+FFFD.
    pub fn cmd_output(&self, output: &[u8]) {
        if output.is_empty() {
            return;
        }
        self.log(LogEvent::CmdOutput {
            timestamp: unix_now(),
            output: utf8_lossy_per_byte(output),
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
                log::error!("Error writing job log {}: {error}", self.path.display());
            }
        }
        LogProgress {
            lines: inner.lines,
            closed: inner.closed,
        }
    }

    /// Waits until more than `seen` lines exist, the log is closed, or `deadline` passes.
    pub fn wait_for_more(&self, seen: u64, deadline: Option<Instant>) -> LogProgress {
        let mut inner = self.lock();
        loop {
            if inner.lines > seen || inner.closed {
                break;
            }
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
        }
        LogProgress {
            lines: inner.lines,
            closed: inner.closed,
        }
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
