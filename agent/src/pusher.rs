//! Delivers a job's event log to the server (spec §6.2–§6.3): batches of at most 2000 lines
//! read from the local NDJSON file, `POST <url>?start_from=<index>` with the job's bearer token.
//! 200 advances the index; 401 refreshes the token and retries; 422 means the server's log space
//! is full (trimmed): stop pushing; anything else is retried with the same `start_from`.
//!
//! Timing departs from upstream where it only cost latency: a full batch is pushed at once, and
//! the first batch of a job goes out as soon as it exists; partial batches go at most once per
//! `partial_batch_interval` (upstream sleeps 1.5–3 s before every push, which caps throughput at
//! ~1000 lines/s and delays the first log line by seconds).

use crate::joblog::JobLog;
use rand::Rng;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Upstream's `MaxLinesPerRequest`.
pub const MAX_LINES_PER_REQUEST: usize = 2000;
/// Upstream's default flush timeout on close.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Fetches a new log token (`POST .../refresh`).
pub type RefreshToken = Box<dyn Fn() -> Result<String, String> + Send>;

pub struct PushConfig {
    pub url: String,
    pub token: String,
    pub user_agent: String,
    pub refresh_token: RefreshToken,
    pub partial_batch_interval: Duration,
    pub lines_per_request: usize,
}

/// How the delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushOutcome {
    /// The server answered 422: later events were not accepted.
    pub trimmed: bool,
    /// Every event was accepted (or the log was trimmed) before the flush timeout.
    pub complete: bool,
    pub lines_pushed: u64,
    pub requests: u64,
}

pub struct LogPusher {
    log: Arc<JobLog>,
    abort: Arc<AtomicBool>,
    done: mpsc::Receiver<PushOutcome>,
    thread: Option<JoinHandle<()>>,
    url: String,
}

impl LogPusher {
    /// Starts the push thread for `log`.
    pub fn spawn(log: Arc<JobLog>, config: PushConfig) -> std::io::Result<LogPusher> {
        let abort = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel();
        let url = config.url.clone();
        let thread = {
            let log = log.clone();
            let abort = abort.clone();
            std::thread::Builder::new()
                .name("log-push".into())
                .spawn(move || {
                    let outcome = push_loop(&log, config, &abort);
                    let _ = done_tx.send(outcome);
                })?
        };
        Ok(LogPusher {
            log,
            abort,
            done,
            thread: Some(thread),
            url,
        })
    }

    /// Closes the log and waits up to `timeout` for every event to be delivered. On timeout the
    /// rest is dropped (logged as upstream does). The local file is deleted either way.
    pub fn close(mut self, timeout: Duration) -> PushOutcome {
        self.log.close();
        let outcome = match self.done.recv_timeout(timeout) {
            Ok(outcome) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                outcome
            }
            Err(_) => {
                self.abort.store(true, Ordering::SeqCst);
                log::error!("Could not push all logs to {} - giving up", self.url);
                PushOutcome::default()
            }
        };
        self.log.remove_file();
        outcome
    }
}

fn retry_delay(flushing: bool) -> Duration {
    let mut rng = rand::thread_rng();
    if flushing {
        Duration::from_millis(rng.gen_range(250..500))
    } else {
        Duration::from_millis(rng.gen_range(1500..3000))
    }
}

fn push_loop(log: &JobLog, mut config: PushConfig, abort: &AtomicBool) -> PushOutcome {
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let lines_per_request = config.lines_per_request.clamp(1, MAX_LINES_PER_REQUEST);
    let mut outcome = PushOutcome::default();
    let mut start_from: u64 = 0;
    let mut reader: Option<BufReader<File>> = None;
    let mut offset: u64 = 0;
    let mut last_push: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut body = Vec::with_capacity(512 * 1024);

    while !abort.load(Ordering::SeqCst) {
        let progress = log.flush();
        let pending = progress.lines - start_from;
        if pending == 0 {
            if progress.closed {
                outcome.complete = true;
                return outcome;
            }
            log.wait_for_more(start_from, None);
            continue;
        }
        let now = Instant::now();
        if let Some(at) = retry_at {
            if now < at {
                std::thread::sleep((at - now).min(Duration::from_millis(200)));
                continue;
            }
        }
        let full_batch = pending >= lines_per_request as u64;
        let partial_due =
            last_push.is_none_or(|at| now.duration_since(at) >= config.partial_batch_interval);
        if !(progress.closed || full_batch || partial_due) {
            let due = last_push.map(|at| at + config.partial_batch_interval);
            // Wake early when a full batch accumulates or the log closes.
            log.wait_for_more(start_from + lines_per_request as u64 - 1, due);
            continue;
        }

        let count = pending.min(lines_per_request as u64) as usize;
        if reader.is_none() {
            match File::open(log.path()) {
                Ok(file) => reader = Some(BufReader::with_capacity(256 * 1024, file)),
                Err(error) => {
                    log::error!("Error reading job log {}: {error}", log.path().display());
                    retry_at = Some(Instant::now() + retry_delay(progress.closed));
                    continue;
                }
            }
        }
        let Some(file) = reader.as_mut() else {
            continue;
        };
        body.clear();
        if let Err(error) = read_lines(file, offset, count, &mut body) {
            log::error!("Error reading job log {}: {error}", log.path().display());
            reader = None;
            retry_at = Some(Instant::now() + retry_delay(progress.closed));
            continue;
        }

        let url = format!("{}?start_from={start_from}", config.url);
        outcome.requests += 1;
        let response = http
            .post(&url)
            .set("Content-Type", "text/plain")
            .set("Authorization", &format!("Bearer {}", config.token))
            .set("User-Agent", &config.user_agent)
            .send_bytes(&body);
        last_push = Some(Instant::now());
        match response {
            Ok(response) if response.status() == 200 => {
                let _ = response.into_string();
                start_from += count as u64;
                offset += body.len() as u64;
                outcome.lines_pushed = start_from;
                retry_at = None;
            }
            Err(ureq::Error::Status(422, _)) => {
                log::info!("Job log reached the server's size limit: later events are not pushed");
                outcome.trimmed = true;
                outcome.complete = true;
                return outcome;
            }
            Err(ureq::Error::Status(401, _)) => match (config.refresh_token)() {
                Ok(token) => {
                    config.token = token;
                    retry_at = None;
                }
                Err(error) => {
                    log::error!("Error pushing logs: token refresh failed: {error}");
                    retry_at = Some(Instant::now() + retry_delay(progress.closed));
                }
            },
            Ok(response) => {
                log::error!(
                    "Error pushing logs: request to {} got HTTP {}",
                    config.url,
                    response.status()
                );
                retry_at = Some(Instant::now() + retry_delay(progress.closed));
            }
            Err(ureq::Error::Status(code, _)) => {
                log::error!(
                    "Error pushing logs: request to {} got HTTP {code}",
                    config.url
                );
                retry_at = Some(Instant::now() + retry_delay(progress.closed));
            }
            Err(error) => {
                log::error!("Error pushing logs: {error}");
                retry_at = Some(Instant::now() + retry_delay(progress.closed));
            }
        }
    }
    outcome
}

/// Reads `count` complete lines starting at byte `offset` into `body`.
fn read_lines(
    file: &mut BufReader<File>,
    offset: u64,
    count: usize,
    body: &mut Vec<u8>,
) -> std::io::Result<()> {
    if file.stream_position()? != offset {
        file.seek(SeekFrom::Start(offset))?;
    }
    for _ in 0..count {
        let before = body.len();
        let read = file.read_until(b'\n', body)?;
        if read == 0 || body.last() != Some(&b'\n') {
            body.truncate(before);
            file.seek(SeekFrom::Start(offset))?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "job log line is incomplete",
            ));
        }
    }
    Ok(())
}
