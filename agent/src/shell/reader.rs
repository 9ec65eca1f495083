//! Reads a PTY master on its own thread, so the job writing to the terminal is never held up while
//! the command loop cuts and logs output on another core.
//!
//! The hand-over is a shared buffer, not a queue of reads: the reader appends whatever it reads
//! and wakes the consumer only when the consumer is waiting, and the consumer takes everything at
//! once by swapping buffers. Under a flood of output this batches thousands of small PTY reads
//! into a few hand-overs; when output is sparse each read is handed over at once. A full buffer
//! makes the reader wait, which makes the job's writes block: memory stays bounded.

use super::pty;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most bytes waiting for the consumer before the reader stops reading.
const PENDING_LIMIT: usize = 4 * 1024 * 1024;
/// Largest single read.
const READ_SIZE: usize = 64 * 1024;

#[derive(Default)]
struct Pending {
    data: Vec<u8>,
    closed: bool,
    consumer_waiting: bool,
    reader_waiting: bool,
}

#[derive(Default)]
struct Pipe {
    pending: Mutex<Pending>,
    data_ready: Condvar,
    space_ready: Condvar,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What [`PtyReader::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    Data,
    Nothing,
    /// Every slave fd is closed (or reading failed) and everything read was taken.
    Closed,
}

pub(crate) struct PtyReader {
    pipe: Arc<Pipe>,
    stop: Arc<AtomicBool>,
}

impl PtyReader {
    /// Starts the reader thread on `master` (a clone of the PTY master fd).
    pub(crate) fn spawn(mut master: File) -> std::io::Result<PtyReader> {
        let pipe = Arc::new(Pipe::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_pipe, thread_stop) = (pipe.clone(), stop.clone());
        std::thread::Builder::new()
            .name("pty-reader".into())
            .spawn(move || {
                let fd = master.as_raw_fd();
                let mut buffer = vec![0u8; READ_SIZE];
                let closed = loop {
                    if thread_stop.load(Ordering::Relaxed) {
                        break true;
                    }
                    match pty::wait_readable(fd, Duration::from_millis(100)) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(_) => break true,
                    }
                    let read = match pty::read_master(&mut master, &mut buffer) {
                        Ok(0) | Err(_) => break true,
                        Ok(read) => read,
                    };
                    let mut pending = thread_pipe.lock();
                    while pending.data.len() >= PENDING_LIMIT
                        && !thread_stop.load(Ordering::Relaxed)
                    {
                        pending.reader_waiting = true;
                        pending = thread_pipe
                            .space_ready
                            .wait_timeout(pending, Duration::from_millis(100))
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    pending.reader_waiting = false;
                    pending.data.extend_from_slice(&buffer[..read]);
                    if pending.consumer_waiting {
                        drop(pending);
                        thread_pipe.data_ready.notify_one();
                    }
                };
                let mut pending = thread_pipe.lock();
                pending.closed = closed;
                drop(pending);
                thread_pipe.data_ready.notify_one();
            })?;
        Ok(PtyReader { pipe, stop })
    }

    /// Waits up to `timeout` for output and moves all of it into `into` (which is cleared first).
    pub(crate) fn take(&self, timeout: Duration, into: &mut Vec<u8>) -> Taken {
        into.clear();
        let deadline = Instant::now() + timeout;
        let mut pending = self.pipe.lock();
        while pending.data.is_empty() && !pending.closed {
            let now = Instant::now();
            if now >= deadline {
                return Taken::Nothing;
            }
            pending.consumer_waiting = true;
            pending = self
                .pipe
                .data_ready
                .wait_timeout(pending, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            pending.consumer_waiting = false;
        }
        if pending.data.is_empty() {
            return Taken::Closed;
        }
        std::mem::swap(&mut pending.data, into);
        if pending.reader_waiting {
            drop(pending);
            self.pipe.space_ready.notify_one();
        }
        Taken::Data
    }

    /// Ends the reader thread (within its poll interval).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.pipe.space_ready.notify_one();
    }
}

impl Drop for PtyReader {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_over_output_then_reports_closed() {
        let pty = pty::open_pty().unwrap();
        let env = vec![(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_default(),
        )];
        let mut child = pty::spawn_in_pty(&pty, "printf", &["hello"], &env).unwrap();
        drop(pty.slave);
        let reader = PtyReader::spawn(pty.master.try_clone().unwrap()).unwrap();
        let mut got = Vec::new();
        let mut buffer = Vec::new();
        loop {
            match reader.take(Duration::from_secs(5), &mut buffer) {
                Taken::Data => got.extend_from_slice(&buffer),
                Taken::Closed => break,
                Taken::Nothing => panic!("no output within 5 s"),
            }
        }
        child.wait().unwrap();
        assert_eq!(got, b"hello");
    }
}
