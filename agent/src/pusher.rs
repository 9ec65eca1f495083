//! Delivers a job's event log to the server (docs/protocol.md §6.2–§6.3): batches of at most 2000
//! lines read from the local NDJSON file, `POST <url>?start_from=<index>` with the job's bearer
//! token. 200 advances the index; 401 refreshes the token and retries; 422 means the server's log
//! space is full (trimmed): stop pushing; anything else is retried with the same `start_from`.
//!
//! Timing departs from upstream where it only cost latency: a full batch is pushed at once, the
//! first batch goes out as soon as the job's first command has started (so a viewer sees the job
//! begin without delay), and partial batches go at most once per `partial_batch_interval`
//! (upstream sleeps 1.5–3 s before every push, which caps throughput at ~1000 lines/s and delays
//! the first log line by seconds).
//!
//! Partitions: a closed log is flushed until no batch has been accepted for the close's patience
//! (the agent passes its give-up time; upstream gives up 60 s after the job ends), so a link that
//! heals within it loses no line; the retried batches keep their `start_from`, so none is stored
//! twice. A 401 from the token refresh means the server revoked the agent itself: delivery stops
//! at once, as the agent does.

use crate::client::{error_chain, http_client, ClientError};
use crate::joblog::{JobLog, LogProgress, WakeWhen};
use rand::Rng;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Upstream's `MaxLinesPerRequest`.
pub const MAX_LINES_PER_REQUEST: usize = 2000;
/// Upstream's default flush timeout on close.
pub(crate) const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Fetches a new log token (`POST .../refresh`).
pub(crate) type RefreshToken = Box<dyn Fn() -> Result<String, ClientError> + Send>;

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
    /// The server refused the agent's own token on refresh: delivery stopped.
    pub revoked: bool,
}

pub struct LogPusher {
    log: Arc<JobLog>,
    abort: Arc<AtomicBool>,
    /// Lines the server has accepted so far (the flush's sign of progress).
    accepted: Arc<AtomicU64>,
    done: mpsc::Receiver<PushOutcome>,
    thread: Option<JoinHandle<()>>,
    url: String,
}

impl LogPusher {
    /// Starts the push thread for `log`.
    pub fn spawn(log: Arc<JobLog>, config: PushConfig) -> std::io::Result<LogPusher> {
        let abort = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (done_tx, done) = mpsc::channel();
        let url = config.url.clone();
        let thread = {
            let log = log.clone();
            let abort = abort.clone();
            let accepted = accepted.clone();
            std::thread::Builder::new()
                .name("log-push".into())
                .spawn(move || {
                    let outcome = push_loop(&log, config, &abort, &accepted);
                    let _ = done_tx.send(outcome);
                })?
        };
        Ok(LogPusher {
            log,
            abort,
            accepted,
            done,
            thread: Some(thread),
            url,
        })
    }

    /// Closes the log and waits for every event to be delivered while delivery progresses: it
    /// gives up once no batch has been accepted for `patience` (the rest is dropped, logged as
    /// upstream does). The local file is deleted either way.
    pub fn close(mut self, patience: Duration) -> PushOutcome {
        self.log.close();
        let mut progress = (self.accepted.load(Ordering::SeqCst), Instant::now());
        let outcome = loop {
            match self.done.recv_timeout(Duration::from_millis(200)) {
                Ok(outcome) => {
                    if let Some(thread) = self.thread.take() {
                        let _ = thread.join();
                    }
                    break outcome;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let accepted = self.accepted.load(Ordering::SeqCst);
                    if accepted != progress.0 {
                        progress = (accepted, Instant::now());
                    } else if progress.1.elapsed() >= patience {
                        break self.give_up();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break self.give_up(),
            }
        };
        self.log.remove_file();
        outcome
    }

    fn give_up(&self) -> PushOutcome {
        self.abort.store(true, Ordering::SeqCst);
        tracing::error!("Could not push all logs to {} - giving up", self.url);
        PushOutcome::default()
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

/// Where delivery stands: everything [`next_step`] decides from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The job log as last flushed.
    pub log: LogProgress,
    /// Lines the server has accepted: the next batch's `start_from`.
    pub accepted: u64,
    pub started: Instant,
    /// When the last push (of any outcome) was answered.
    pub last_push: Option<Instant>,
    /// A failed push or refresh waits until then.
    pub retry_at: Option<Instant>,
    /// The server answered 401: the log token must be refreshed before the next push.
    pub token_expired: bool,
    /// The refresh itself got 401: the server no longer accepts this agent at all.
    pub revoked: bool,
    pub lines_per_request: u64,
    pub partial_batch_interval: Duration,
}

/// What the push thread does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Every line is accepted and the log is closed.
    Done,
    /// Wait for the log to grow (or a command to start), at most until `until`.
    WaitForLog {
        wake: WakeWhen,
        until: Option<Instant>,
    },
    /// Back off until then after a failure.
    RetryAt(Instant),
    RefreshToken,
    /// The agent was revoked: stop delivering.
    Revoked,
    /// POST the next `lines` lines now.
    Push {
        lines: usize,
    },
}

/// The push schedule: a full batch goes at once, the first batch as soon as a command has
/// started, a partial batch at most once per `partial_batch_interval`, everything at once after
/// the log is closed; failures back off until `retry_at`.
pub(crate) fn next_step(progress: &Progress, now: Instant) -> Step {
    let pending = progress.log.lines - progress.accepted;
    if pending == 0 {
        if progress.log.closed {
            return Step::Done;
        }
        let wake = WakeWhen {
            lines_at_least: progress.accepted + 1,
            on_command_started: false,
        };
        return Step::WaitForLog { wake, until: None };
    }
    if progress.revoked {
        return Step::Revoked;
    }
    if let Some(at) = progress.retry_at.filter(|at| now < *at) {
        return Step::RetryAt(at);
    }
    if progress.token_expired {
        return Step::RefreshToken;
    }
    let interval = progress.partial_batch_interval;
    let (ready, due) = match progress.last_push {
        None => (
            progress.log.commands_started > 0 || now >= progress.started + interval,
            progress.started + interval,
        ),
        Some(at) => (now >= at + interval, at + interval),
    };
    if progress.log.closed || pending >= progress.lines_per_request || ready {
        return Step::Push {
            lines: pending.min(progress.lines_per_request) as usize,
        };
    }
    let wake = WakeWhen {
        lines_at_least: progress.accepted + progress.lines_per_request,
        on_command_started: progress.last_push.is_none(),
    };
    Step::WaitForLog {
        wake,
        until: Some(due),
    }
}

/// How the server answered one batch.
#[derive(PartialEq, Eq)]
enum Answer {
    Accepted,
    Trimmed,
    TokenExpired,
    Failed,
}

/// The I/O half of the push thread: reads batches from the log file and POSTs them.
struct Sender {
    http: reqwest::blocking::Client,
    url: String,
    user_agent: String,
    token: String,
    refresh_token: RefreshToken,
    /// POSTs made.
    requests: u64,
    reader: Option<File>,
    /// Bytes read from the file but not yet accepted by the server; they start at the first
    /// unaccepted line. A batch is a prefix of it, so a retry re-sends the very same bytes.
    unsent: UnsentLines,
}

impl Sender {
    fn new(config: PushConfig) -> Sender {
        Sender {
            http: http_client(None, Duration::from_secs(30)),
            url: config.url,
            user_agent: config.user_agent,
            token: config.token,
            refresh_token: config.refresh_token,
            requests: 0,
            reader: None,
            unsent: UnsentLines::default(),
        }
    }

    fn refresh(&mut self, progress: &mut Progress) {
        match (self.refresh_token)() {
            Ok(token) => {
                self.token = token;
                progress.token_expired = false;
            }
            Err(error) => {
                tracing::error!("Error pushing logs: token refresh failed: {error}");
                progress.revoked = matches!(error, ClientError::Status { status: 401, .. });
                back_off(progress, Instant::now());
            }
        }
    }

    /// Reads and POSTs the next `lines` lines, and records the answer in `progress`.
    fn push(&mut self, path: &Path, lines: usize, progress: &mut Progress) -> Answer {
        let length = match self.batch(path, lines) {
            Ok(length) => length,
            Err(error) => {
                tracing::error!("Error reading job log {}: {error}", path.display());
                back_off(progress, Instant::now());
                return Answer::Failed;
            }
        };
        let answer = self.post(progress.accepted, length, lines);
        let now = Instant::now();
        progress.last_push = Some(now);
        progress.retry_at = None;
        match answer {
            Answer::Accepted => progress.accepted += lines as u64,
            Answer::TokenExpired => progress.token_expired = true,
            Answer::Failed => back_off(progress, now),
            Answer::Trimmed => tracing::info!(
                "Job log reached the server's size limit: later events are not pushed"
            ),
        }
        answer
    }

    /// The bytes of the next `count` lines; on a read error the file is reopened next time.
    fn batch(&mut self, path: &Path, count: usize) -> std::io::Result<usize> {
        let file = match self.reader.as_mut() {
            Some(file) => file,
            None => self.reader.insert(File::open(path)?),
        };
        self.unsent.batch(file, count).inspect_err(|_| {
            self.reader = None;
            self.unsent = UnsentLines::default_at(self.unsent.file_offset_of_start());
        })
    }

    /// POSTs the first `count` lines (`length` bytes) as `start_from`.
    fn post(&mut self, start_from: u64, length: usize, count: usize) -> Answer {
        self.requests += 1;
        let response = self
            .http
            .post(format!("{}?start_from={start_from}", self.url))
            .header("Content-Type", "text/plain")
            .header("Authorization", format!("Bearer {}", self.token))
            .header("User-Agent", &self.user_agent)
            .body(self.unsent.front_bytes(length).to_vec())
            .send();
        let status = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes();
                status
            }
            Err(error) => {
                tracing::error!("Error pushing logs: {}", error_chain(&error));
                return Answer::Failed;
            }
        };
        match status {
            200 => {
                self.unsent.consume(length, count);
                Answer::Accepted
            }
            422 => Answer::Trimmed,
            401 => Answer::TokenExpired,
            status => {
                tracing::error!(
                    "Error pushing logs: request to {} got HTTP {status}",
                    self.url
                );
                Answer::Failed
            }
        }
    }
}

fn back_off(progress: &mut Progress, now: Instant) {
    progress.retry_at = Some(now + retry_delay(progress.log.closed));
}

/// The push thread: carries out [`next_step`] until everything is delivered, the log is
/// trimmed, or `abort`.
fn push_loop(
    log: &JobLog,
    config: PushConfig,
    abort: &AtomicBool,
    accepted: &AtomicU64,
) -> PushOutcome {
    let mut progress = Progress {
        log: log.flush(),
        accepted: 0,
        started: Instant::now(),
        last_push: None,
        retry_at: None,
        token_expired: false,
        revoked: false,
        lines_per_request: config.lines_per_request.clamp(1, MAX_LINES_PER_REQUEST) as u64,
        partial_batch_interval: config.partial_batch_interval,
    };
    let mut sender = Sender::new(config);
    let mut outcome = PushOutcome::default();
    while !abort.load(Ordering::SeqCst) {
        progress.log = log.flush();
        match next_step(&progress, Instant::now()) {
            Step::Done => {
                outcome.complete = true;
                break;
            }
            Step::WaitForLog { wake, until } => {
                log.wait(wake, until);
            }
            // Short sleeps, so that an abort is seen.
            Step::RetryAt(at) => std::thread::sleep(
                at.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200)),
            ),
            Step::RefreshToken => sender.refresh(&mut progress),
            Step::Revoked => {
                tracing::error!("The server revoked this agent: not pushing the rest of the log");
                outcome.revoked = true;
                break;
            }
            Step::Push { lines } => {
                let answer = sender.push(log.path(), lines, &mut progress);
                accepted.store(progress.accepted, Ordering::SeqCst);
                if answer == Answer::Trimmed {
                    outcome.trimmed = true;
                    outcome.complete = true;
                    break;
                }
            }
        }
    }
    outcome.lines_pushed = progress.accepted;
    outcome.requests = sender.requests;
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

    /// Progress `lines` lines into the log, none accepted, pushes 1 s apart, batches of 10.
    fn at(base: Instant, lines: u64) -> Progress {
        Progress {
            log: LogProgress {
                lines,
                commands_started: 0,
                closed: false,
            },
            accepted: 0,
            started: base,
            last_push: None,
            retry_at: None,
            token_expired: false,
            revoked: false,
            lines_per_request: 10,
            partial_batch_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn schedule_table() {
        let base = Instant::now();
        let ms = |n: u64| base + Duration::from_millis(n);
        let wait = |lines_at_least, on_command_started, until| Step::WaitForLog {
            wake: WakeWhen {
                lines_at_least,
                on_command_started,
            },
            until,
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, Progress, Instant, Step)> = vec![
            ("nothing to push: wait for a line", at(base, 0), ms(0), wait(1, false, None)),
            ("nothing to push, log closed: done",
                Progress { log: LogProgress { closed: true, ..at(base, 5).log }, accepted: 5, ..at(base, 5) },
                ms(0), Step::Done),
            ("first lines, no command yet: wait for one (or a batch, or the interval)",
                at(base, 3), ms(10), wait(10, true, Some(ms(1000)))),
            ("first lines and a command started: push at once",
                Progress { log: LogProgress { commands_started: 1, ..at(base, 3).log }, ..at(base, 3) },
                ms(10), Step::Push { lines: 3 }),
            ("first lines, interval over: push", at(base, 3), ms(1000), Step::Push { lines: 3 }),
            ("a partial batch within the interval after a push: wait",
                Progress { last_push: Some(ms(500)), accepted: 2, ..at(base, 5) },
                ms(900), wait(12, false, Some(ms(1500)))),
            ("a partial batch after the interval: push",
                Progress { last_push: Some(ms(500)), accepted: 2, ..at(base, 5) },
                ms(1500), Step::Push { lines: 3 }),
            ("a full batch goes at once, and no more than a batch",
                Progress { last_push: Some(ms(500)), ..at(base, 25) },
                ms(600), Step::Push { lines: 10 }),
            ("log closed: the rest goes at once",
                Progress { last_push: Some(ms(500)), log: LogProgress { closed: true, ..at(base, 4).log }, ..at(base, 4) },
                ms(600), Step::Push { lines: 4 }),
            ("a failure backs off", Progress { retry_at: Some(ms(2000)), ..at(base, 25) },
                ms(600), Step::RetryAt(ms(2000))),
            ("back-off over: push again", Progress { retry_at: Some(ms(2000)), ..at(base, 25) },
                ms(2000), Step::Push { lines: 10 }),
            ("401: refresh before the next push", Progress { token_expired: true, ..at(base, 25) },
                ms(600), Step::RefreshToken),
            ("401 and a failed refresh: back off first",
                Progress { token_expired: true, retry_at: Some(ms(2000)), ..at(base, 25) },
                ms(600), Step::RetryAt(ms(2000))),
            ("the refresh got 401: the agent is revoked, stop at once",
                Progress { token_expired: true, revoked: true, retry_at: Some(ms(2000)), ..at(base, 25) },
                ms(600), Step::Revoked),
            ("401 but nothing left to push: no refresh",
                Progress { token_expired: true, accepted: 25, ..at(base, 25) },
                ms(600), wait(26, false, None)),
        ];
        for (name, progress, now, expected) in rows {
            assert_eq!(next_step(&progress, now), expected, "{name}");
        }
    }

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
