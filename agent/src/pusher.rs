//! Delivers a job's event log to the server (spec §6.2–§6.3): batches of at most 2000 lines
//! read from the local NDJSON file, `POST <url>?start_from=<index>` with the job's bearer token.
//! 200 advances the index; 401 refreshes the token and retries; 422 means the server's log space
//! is full (trimmed): stop pushing; anything else is retried with the same `start_from`.
//!
//! Timing departs from upstream where it only cost latency: a full batch is pushed at once, the
//! first batch goes out as soon as the job's first command has started (so a viewer sees the job
//! begin without delay), and partial batches go at most once per `partial_batch_interval`
//! (upstream sleeps 1.5–3 s before every push, which caps throughput at ~1000 lines/s and delays
//! the first log line by seconds).

use crate::joblog::{JobLog, WakeWhen};
use rand::Rng;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
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
    let mut reader: Option<File> = None;
    // Bytes read from the file but not yet accepted by the server; they start at line
    // `start_from`. A batch is a prefix of it, so a retry re-sends the very same bytes.
    let mut unsent = UnsentLines::default();
    let mut last_push: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;

    let started = Instant::now();
    while !abort.load(Ordering::SeqCst) {
        let progress = log.flush();
        let pending = progress.lines - start_from;
        let full_batch_at = start_from + lines_per_request as u64;
        if pending == 0 {
            if progress.closed {
                outcome.complete = true;
                return outcome;
            }
            log.wait(
                WakeWhen {
                    lines_at_least: start_from + 1,
                    on_command_started: false,
                },
                None,
            );
            continue;
        }
        let now = Instant::now();
        if let Some(at) = retry_at {
            if now < at {
                std::thread::sleep((at - now).min(Duration::from_millis(200)));
                continue;
            }
        }
        let interval = config.partial_batch_interval;
        let (ready, due) = match last_push {
            None => (
                progress.commands_started > 0 || now >= started + interval,
                started + interval,
            ),
            Some(at) => (now >= at + interval, at + interval),
        };
        if !(progress.closed || pending >= lines_per_request as u64 || ready) {
            let wake = WakeWhen {
                lines_at_least: full_batch_at,
                on_command_started: last_push.is_none(),
            };
            log.wait(wake, Some(due));
            continue;
        }

        let count = pending.min(lines_per_request as u64) as usize;
        if reader.is_none() {
            match File::open(log.path()) {
                Ok(file) => reader = Some(file),
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
        let batch_length = match unsent.batch(file, count) {
            Ok(length) => length,
            Err(error) => {
                log::error!("Error reading job log {}: {error}", log.path().display());
                reader = None;
                unsent = UnsentLines::default_at(unsent.file_offset_of_start());
                retry_at = Some(Instant::now() + retry_delay(progress.closed));
                continue;
            }
        };
        let body = unsent.front_bytes(batch_length);

        let url = format!("{}?start_from={start_from}", config.url);
        outcome.requests += 1;
        let response = http
            .post(&url)
            .set("Content-Type", "text/plain")
            .set("Authorization", &format!("Bearer {}", config.token))
            .set("User-Agent", &config.user_agent)
            .send_bytes(body);
        last_push = Some(Instant::now());
        match response {
            Ok(response) if response.status() == 200 => {
                let _ = response.into_string();
                start_from += count as u64;
                unsent.consume(batch_length, count);
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

/// The not-yet-accepted tail of the log file, read in large blocks; batches are cut from its
/// front at line boundaries without copying line by line.
#[derive(Default)]
struct UnsentLines {
    bytes: Vec<u8>,
    /// Index in `bytes` of the first unsent byte (consumed bytes are dropped lazily).
    front: usize,
    /// File offset of `bytes[0]`.
    base_offset: u64,
    /// Complete lines counted from `front`, and where the last of them ends (index in `bytes`).
    lines_scanned: usize,
    scanned_end: usize,
}

impl UnsentLines {
    fn default_at(offset: u64) -> UnsentLines {
        UnsentLines {
            base_offset: offset,
            ..UnsentLines::default()
        }
    }

    fn file_offset_of_start(&self) -> u64 {
        self.base_offset + self.front as u64
    }

    /// The unsent bytes from the front.
    fn front_bytes(&self, length: usize) -> &[u8] {
        &self.bytes[self.front..self.front + length]
    }

    /// The byte length of the first `count` unsent lines, reading more of the file as needed.
    /// `count` never shrinks between calls for the same front (the log only grows).
    fn batch(&mut self, file: &mut File, count: usize) -> std::io::Result<usize> {
        if self.scanned_end < self.front {
            self.scanned_end = self.front;
        }
        while self.lines_scanned < count {
            let scan_from = self.scanned_end;
            for at in memchr::memchr_iter(b'\n', &self.bytes[scan_from..]) {
                self.lines_scanned += 1;
                self.scanned_end = scan_from + at + 1;
                if self.lines_scanned == count {
                    break;
                }
            }
            if self.lines_scanned == count {
                break;
            }
            // Read the next block: lines the log has counted are flushed, so they are there.
            let end = self.base_offset + self.bytes.len() as u64;
            file.seek(SeekFrom::Start(end))?;
            let old_length = self.bytes.len();
            self.bytes.resize(old_length + 1024 * 1024, 0);
            let read = file.read(&mut self.bytes[old_length..]);
            let read = match read {
                Ok(read) => read,
                Err(error) => {
                    self.bytes.truncate(old_length);
                    return Err(error);
                }
            };
            self.bytes.truncate(old_length + read);
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "job log is shorter than its line count",
                ));
            }
        }
        Ok(self.scanned_end - self.front)
    }

    /// The server accepted the first `length` bytes (`lines` lines).
    fn consume(&mut self, length: usize, lines: usize) {
        self.front += length;
        self.lines_scanned -= lines;
        if self.front * 2 > self.bytes.len() {
            self.bytes.drain(..self.front);
            self.base_offset += self.front as u64;
            self.scanned_end -= self.front;
            self.front = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn batches_are_whole_lines_across_block_boundaries_and_retries_resend_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let mut expected = Vec::new();
        for index in 0..30_000 {
            // Lines of varying length, ~3 MB in all: several 1 MiB blocks.
            expected.extend_from_slice(
                format!(
                    "{{\"line\":{index},\"pad\":\"{}\"}}\n",
                    "x".repeat(index % 150)
                )
                .as_bytes(),
            );
        }
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&expected)
            .unwrap();
        let mut file = File::open(&path).unwrap();
        let mut unsent = UnsentLines::default();
        let mut received = Vec::new();
        let mut lines_left = 30_000usize;
        let mut round = 0;
        while lines_left > 0 {
            let count = lines_left.min(MAX_LINES_PER_REQUEST);
            let length = unsent.batch(&mut file, count).unwrap();
            let batch = unsent.front_bytes(length).to_vec();
            assert_eq!(batch.iter().filter(|&&b| b == b'\n').count(), count);
            assert_eq!(batch.last(), Some(&b'\n'));
            if round % 3 == 1 {
                // A failed push: the retry must send exactly the same bytes.
                let again = unsent.batch(&mut file, count).unwrap();
                assert_eq!(unsent.front_bytes(again), &batch[..]);
            }
            received.extend_from_slice(&batch);
            unsent.consume(length, count);
            lines_left -= count;
            round += 1;
        }
        assert_eq!(received, expected);
        assert!(
            unsent.batch(&mut file, 1).is_err(),
            "no more lines than the file holds"
        );
    }
}
