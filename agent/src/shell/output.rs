//! How a command's PTY output is cut into `cmd_output` events (docs/protocol.md §5.7 "Output
//! buffer").
//!
//! Log consumers see these cuts, so they follow upstream exactly: 100-byte chunks while the
//! command runs, 1000-byte chunks once it has ended, short output held back until 100 ms have
//! passed since the last write (so `echo -n a; echo -n b` is one event), never a split UTF-8
//! character while running, never a split CRLF, and `\r\n` turned back into `\n`.
//! The buffer is a pure structure driven by explicit instants so it can be table-tested.

use std::time::{Duration, Instant};

/// Chunk size while the command runs.
pub(crate) const CUT_LENGTH_RUNNING: usize = 100;
/// Chunk size once the buffer is closed (the command finished).
pub(crate) const CUT_LENGTH_CLOSED: usize = 1000;
/// Short output is merged for this long after the last append.
pub(crate) const MERGE_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub(crate) struct OutputBuffer {
    bytes: Vec<u8>,
    /// Start of the unconsumed part of `bytes` (consumed bytes are dropped lazily).
    start: usize,
    last_append: Option<Instant>,
}

impl OutputBuffer {
    pub(crate) fn new() -> OutputBuffer {
        OutputBuffer::default()
    }

    pub(crate) fn append(&mut self, data: &[u8], now: Instant) {
        if data.is_empty() {
            return;
        }
        if self.start > 0 && self.start * 2 >= self.bytes.len() {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(data);
        self.last_append = Some(now);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.bytes.len()
    }

    /// When a held-back short chunk becomes due, if one is held back.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        if self.is_empty() {
            None
        } else {
            self.last_append.map(|at| at + MERGE_WINDOW)
        }
    }

    /// The next chunk to emit at `now`, or `None` when nothing is due yet. `closed` is true once
    /// the command has finished; call until `None`. (The agent itself reuses a buffer:
    /// [`OutputBuffer::next_chunk_into`].)
    #[cfg(test)]
    pub(crate) fn next_chunk(&mut self, now: Instant, closed: bool) -> Option<Vec<u8>> {
        let mut chunk = Vec::new();
        self.next_chunk_into(now, closed, &mut chunk)
            .then_some(chunk)
    }

    /// [`OutputBuffer::next_chunk`] into a reusable buffer (cleared first); false when nothing is
    /// due.
    pub(crate) fn next_chunk_into(
        &mut self,
        now: Instant,
        closed: bool,
        chunk: &mut Vec<u8>,
    ) -> bool {
        chunk.clear();
        let pending = &self.bytes[self.start..];
        let chunk_length = if closed {
            CUT_LENGTH_CLOSED
        } else {
            CUT_LENGTH_RUNNING
        };
        if pending.is_empty() {
            return false;
        }
        // Once closed nothing more can arrive, so waiting out the merge window (as upstream does)
        // would only delay the same cut: emit at once.
        let quiet_long_enough = closed
            || self
                .last_append
                .is_none_or(|at| now.saturating_duration_since(at) >= MERGE_WINDOW);
        if pending.len() < chunk_length && !quiet_long_enough {
            return false;
        }
        let mut cut = pending.len().min(chunk_length);
        if !closed || cut == chunk_length {
            // Up to four steps back so a multi-byte character is not split; the fourth step is
            // not re-checked (upstream), so truly invalid bytes still flow.
            for _ in 0..4 {
                if cut == 0 || std::str::from_utf8(&pending[..cut]).is_ok() {
                    break;
                }
                cut -= 1;
            }
        }
        if cut == 0 {
            return false;
        }
        if pending[cut - 1] == b'\r' && pending.get(cut) == Some(&b'\n') {
            cut -= 1;
            if cut == 0 {
                return false;
            }
        }
        append_crlf_to_lf(chunk, &pending[..cut]);
        self.start += cut;
        if self.is_empty() {
            self.bytes.clear();
            self.start = 0;
        }
        true
    }
}

pub(crate) fn crlf_to_lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    append_crlf_to_lf(&mut out, data);
    out
}

/// Appends `data` to `out` with every `\r\n` turned into `\n`, copying runs in bulk.
fn append_crlf_to_lf(out: &mut Vec<u8>, data: &[u8]) {
    let mut start = 0;
    let mut index = 0;
    while let Some(offset) = memchr::memchr(b'\r', &data[index..]) {
        let at = index + offset;
        if data.get(at + 1) == Some(&b'\n') {
            out.extend_from_slice(&data[start..at]);
            start = at + 1;
        }
        index = at + 1;
    }
    out.extend_from_slice(&data[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(buffer: &mut OutputBuffer, now: Instant, closed: bool) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(chunk) = buffer.next_chunk(now, closed) {
            out.push(String::from_utf8_lossy(&chunk).into_owned());
        }
        out
    }

    #[test]
    fn short_output_waits_for_the_merge_window() {
        let t0 = Instant::now();
        let mut buffer = OutputBuffer::new();
        buffer.append(b"hel", t0);
        buffer.append(b"lo", t0 + Duration::from_millis(50));
        assert!(drain(&mut buffer, t0 + Duration::from_millis(120), false).is_empty());
        assert_eq!(buffer.due_at(), Some(t0 + Duration::from_millis(150)));
        assert_eq!(
            drain(&mut buffer, t0 + Duration::from_millis(150), false),
            vec!["hello"]
        );
        assert!(buffer.is_empty());
    }

    #[test]
    fn long_output_is_cut_at_100_bytes_while_running_and_1000_when_closed() {
        let t0 = Instant::now();
        let mut buffer = OutputBuffer::new();
        buffer.append(&[b'a'; 150], t0);
        assert_eq!(drain(&mut buffer, t0, false), vec!["a".repeat(100)]);
        assert_eq!(
            drain(&mut buffer, t0 + MERGE_WINDOW, false),
            vec!["a".repeat(50)]
        );

        let mut closed = OutputBuffer::new();
        closed.append(&[b'a'; 150], t0);
        assert_eq!(
            drain(&mut closed, t0, true),
            vec!["a".repeat(150)],
            "closed: no merge wait, one 1000-byte cut"
        );

        let mut big = OutputBuffer::new();
        big.append(&[b'b'; 2500], t0);
        let chunks = drain(&mut big, t0 + MERGE_WINDOW, true);
        assert_eq!(
            chunks.iter().map(String::len).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
    }

    #[test]
    fn crlf_is_never_split_and_becomes_lf() {
        let t0 = Instant::now();
        let mut buffer = OutputBuffer::new();
        let mut data = vec![b'a'; 99];
        data.extend_from_slice(b"\r\nb");
        buffer.append(&data, t0);
        assert_eq!(
            drain(&mut buffer, t0 + MERGE_WINDOW, false),
            vec!["a".repeat(99), "\nb".to_string()]
        );
        let mut lone = OutputBuffer::new();
        lone.append(b"x\ry\r\n", t0);
        assert_eq!(drain(&mut lone, t0 + MERGE_WINDOW, false), vec!["x\ry\n"]);
    }

    #[test]
    fn multibyte_characters_are_not_split_while_running() {
        let t0 = Instant::now();
        let text = "━".repeat(100); // 3 bytes each
        let mut buffer = OutputBuffer::new();
        buffer.append(text.as_bytes(), t0);
        let chunks = drain(&mut buffer, t0 + MERGE_WINDOW, false);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
        assert_eq!(chunks[0].len(), 99);
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn an_incomplete_character_waits_for_its_remaining_bytes() {
        let t0 = Instant::now();
        let mut buffer = OutputBuffer::new();
        buffer.append(&"━".as_bytes()[..2], t0);
        assert!(drain(&mut buffer, t0 + MERGE_WINDOW, false).is_empty());
        buffer.append(&"━".as_bytes()[2..], t0 + MERGE_WINDOW);
        assert_eq!(drain(&mut buffer, t0 + MERGE_WINDOW * 2, false), vec!["━"]);
    }

    #[test]
    fn invalid_bytes_still_flow() {
        let t0 = Instant::now();
        let mut buffer = OutputBuffer::new();
        buffer.append(&[150, 150, 150, 150, 150], t0);
        let chunk = buffer.next_chunk(t0 + MERGE_WINDOW, false).unwrap();
        assert_eq!(chunk, vec![150]);
        let rest = buffer.next_chunk(t0 + MERGE_WINDOW, true).unwrap();
        assert_eq!(rest, vec![150; 4]);
    }
}
