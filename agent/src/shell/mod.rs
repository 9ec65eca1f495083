//! The job shell: one `bash --login` in a PTY that runs commands one at a time using upstream's
//! marker protocol (docs/protocol.md §5.7 "Per command").
//!
//! Each command is written to a file and `source`d between two marker lines, so shell state
//! persists and the exit status comes back in-band. Output between the markers goes through
//! [`output::OutputBuffer`], which decides where `cmd_output` events are cut.

pub mod output;
pub mod pty;
pub mod reader;

use crate::job_user::JobUser;
use output::OutputBuffer;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Exit code reported when the shell died or the command was stopped (upstream's default).
pub(crate) const DEAD_SHELL_EXIT_CODE: i32 = 1;

const MARK_PREFIX: &str = "949556c7";
/// How often the loop checks whether bash is still alive while nothing is read.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(20);

/// The times a command ran, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandOutcome {
    pub exit_code: i32,
    pub started_at: i64,
    pub finished_at: i64,
}

/// Unix seconds from the coarse real-time clock: log events carry whole seconds and are stamped
/// millions of times in a chatty job, so the cheaper clock is worth it.
pub fn unix_now() -> i64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) } == 0 {
        #[allow(clippy::unnecessary_cast)] // time_t is not i64 on every target
        return now.tv_sec as i64;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Receives each output chunk of a non-silent command.
type OutputCallback<'a> = &'a mut dyn FnMut(&[u8]);

pub struct Shell {
    master: File,
    reader: reader::PtyReader,
    /// The buffer the last hand-over from the reader landed in (reused).
    read_data: Vec<u8>,
    child: Child,
    pid: i32,
    command_file: PathBuf,
    command_file_mode: u32,
    dead: bool,
    closed: bool,
}

impl Shell {
    /// Starts bash with exactly `env`, prepares the terminal (no prompt, no echo), changes to
    /// `$HOME` and waits until bash is ready. `scratch_dir` holds the command file; it must be
    /// private to this job.
    pub fn start(
        env: &[(String, String)],
        scratch_dir: &Path,
        user: Option<&JobUser>,
    ) -> std::io::Result<Shell> {
        // The job user reads the command file through the scratch directory's group.
        let mode = if user.is_some() { 0o640 } else { 0o600 };
        let terminal = pty::open_pty()?;
        let mut shell = Shell::launch(terminal, scratch_dir, mode, |pty| {
            pty::spawn_bash(pty, env, user)
        })?;
        // Bash that dies before it is ready leaves a dead shell: every command then fails.
        let _ = shell.wait_ready(&[], None);
        Ok(shell)
    }

    /// Starts the job shell through another program that ends in an interactive bash (the docker
    /// CLI running bash in the job's container) and waits until that bash is ready. Unlike
    /// [`Shell::start`], a program that exits first, or prints one of `program.refuse` before
    /// bash is ready, is an error that carries what it printed.
    #[cfg(test)]
    pub(crate) fn start_program(
        program: &ShellProgram<'_>,
        env: &[(String, String)],
        scratch_dir: &Path,
    ) -> Result<Shell, StartError> {
        Shell::start_program_on(pty::open_pty()?, program, env, scratch_dir)
    }

    /// [`Shell::start_program`] on a PTY the caller opened (and may have shared by name).
    pub(crate) fn start_program_on(
        terminal: pty::Pty,
        program: &ShellProgram<'_>,
        env: &[(String, String)],
        scratch_dir: &Path,
    ) -> Result<Shell, StartError> {
        let mut shell = Shell::launch(terminal, scratch_dir, program.command_file_mode, |pty| {
            let (name, args, user) = (program.program, program.args, program.user);
            pty::spawn_on_pty(pty, name, args, env, user, program.attach)
        })?;
        match shell.wait_ready(program.refuse, program.ready_timeout) {
            Startup::Ready => Ok(shell),
            Startup::Refused(line) => {
                shell.close();
                Err(StartError::Refused(line))
            }
            Startup::Exited(lines) => {
                shell.close();
                Err(StartError::Exited(lines))
            }
        }
    }

    fn launch(
        pty: pty::Pty,
        scratch_dir: &Path,
        command_file_mode: u32,
        spawn: impl FnOnce(&pty::Pty) -> std::io::Result<Child>,
    ) -> std::io::Result<Shell> {
        let child = spawn(&pty)?;
        drop(pty.slave);
        let pid = child.id() as i32;
        let reader = reader::PtyReader::spawn(pty.master.try_clone()?)?;
        Ok(Shell {
            master: pty.master,
            reader,
            read_data: Vec::new(),
            child,
            pid,
            command_file: scratch_dir.join("current-agent-cmd"),
            command_file_mode,
            dead: false,
            closed: false,
        })
    }

    /// Prepares the terminal and discards everything up to a line holding the ready mark that is
    /// not our own echoed input. A line containing one of `refuse` ends the wait.
    fn wait_ready(&mut self, refuse: &[&str], timeout: Option<Duration>) -> Startup {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let setup = format!(
            "export PS1=''\nstty -echo\ncd ~\necho '{}'\n",
            pty::READY_MARK
        );
        if pty::write_master(&mut self.master, setup.as_bytes()).is_err() {
            self.dead = true;
            return Startup::Exited(String::new());
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut seen = StartupLines::default();
        loop {
            if let (Some(deadline), Some(timeout)) = (deadline, timeout) {
                if Instant::now() >= deadline {
                    let waited = timeout.as_secs();
                    return Startup::Refused(format!("bash did not answer within {waited} s"));
                }
            }
            match self.read_some(Duration::from_millis(50)) {
                ReadResult::Data => {
                    pending.extend_from_slice(&self.read_data);
                    while let Some(newline) = pending.iter().position(|&b| b == b'\n') {
                        let line = String::from_utf8_lossy(&pending[..newline]).into_owned();
                        pending.drain(..=newline);
                        if line.contains(pty::READY_MARK) && !line.contains("echo") {
                            return Startup::Ready;
                        }
                        if refuse.iter().any(|text| line.contains(text)) {
                            return Startup::Refused(line.trim_end().to_string());
                        }
                        seen.push(line);
                    }
                }
                ReadResult::Nothing => {}
                ReadResult::Closed => {
                    self.dead = true;
                    seen.push(String::from_utf8_lossy(&pending).into_owned());
                    return Startup::Exited(seen.text());
                }
            }
        }
    }

    /// The session (and process group) id of the job: bash's pid.
    pub(crate) fn session_id(&self) -> i32 {
        self.pid
    }

    /// Waits up to `timeout` for output, which lands in `self.read_data`.
    fn read_some(&mut self, timeout: Duration) -> ReadResult {
        match self.reader.take(timeout, &mut self.read_data) {
            reader::Taken::Data => ReadResult::Data,
            reader::Taken::Closed => ReadResult::Closed,
            reader::Taken::Nothing => {
                if self.child_exited() {
                    // Bash is gone but something else holds the terminal: take what is left.
                    match self
                        .reader
                        .take(Duration::from_millis(5), &mut self.read_data)
                    {
                        reader::Taken::Data => ReadResult::Data,
                        _ => ReadResult::Closed,
                    }
                } else {
                    ReadResult::Nothing
                }
            }
        }
    }

    fn child_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs one command; output chunks go to `on_output` as the output buffer cuts them.
    pub fn run(&mut self, command: &str, on_output: &mut dyn FnMut(&[u8])) -> CommandOutcome {
        self.run_inner(command, Some(on_output), &mut Vec::new())
    }

    /// Runs one command without events; returns its exit code and its output (`\r\n` → `\n`).
    pub(crate) fn run_silent(&mut self, command: &str) -> (i32, Vec<u8>) {
        let mut collected = Vec::new();
        let outcome = self.run_inner(command, None, &mut collected);
        (outcome.exit_code, output::crlf_to_lf(&collected))
    }

    fn run_inner(
        &mut self,
        command: &str,
        on_output: Option<OutputCallback<'_>>,
        collected: &mut Vec<u8>,
    ) -> CommandOutcome {
        let started_at = unix_now();
        let dead = |started_at| CommandOutcome {
            exit_code: DEAD_SHELL_EXIT_CODE,
            started_at,
            finished_at: unix_now(),
        };
        if self.dead {
            return dead(started_at);
        }
        if write_private(
            &self.command_file,
            command.as_bytes(),
            self.command_file_mode,
        )
        .is_err()
        {
            return CommandOutcome {
                exit_code: DEAD_SHELL_EXIT_CODE,
                started_at: 0,
                finished_at: 0,
            };
        }
        let nonce = format!("{}-{:08x}", started_at, rand::random::<u32>());
        let start_mark = format!("{MARK_PREFIX}-{nonce}-start");
        let end_mark = format!("{MARK_PREFIX}-{nonce}-end");
        let line = format!(
            "echo -e \"\\001 {start_mark}\"; source {file}; AGENT_CMD_RESULT=$?; echo -e \"\\001 {end_mark} $AGENT_CMD_RESULT\"; echo \"exit $AGENT_CMD_RESULT\" | sh\n",
            file = shell_quote(&self.command_file.to_string_lossy()),
        );
        if pty::write_master(&mut self.master, line.as_bytes()).is_err() {
            self.dead = true;
            return dead(started_at);
        }

        let mut parser = MarkerParser::new(&start_mark, &end_mark);
        let mut sink = OutputSink {
            on_output,
            buffer: OutputBuffer::new(),
            chunk: Vec::with_capacity(output::CUT_LENGTH_CLOSED),
            collected,
        };
        let exit_code = self.wait_for_end_mark(&mut parser, &mut sink);
        sink.emit(Instant::now(), true);
        CommandOutcome {
            exit_code: exit_code.unwrap_or(DEAD_SHELL_EXIT_CODE),
            started_at,
            finished_at: unix_now(),
        }
    }

    /// Reads the command's output until its end mark (its exit code), or until bash is gone.
    fn wait_for_end_mark(
        &mut self,
        parser: &mut MarkerParser,
        sink: &mut OutputSink<'_, '_>,
    ) -> Option<i32> {
        let mut last_liveness_check = Instant::now();
        loop {
            let now = Instant::now();
            sink.emit(now, false);
            let wait = sink
                .buffer
                .due_at()
                .map(|at| {
                    at.saturating_duration_since(now)
                        .max(Duration::from_millis(1))
                })
                .unwrap_or(LIVENESS_INTERVAL)
                .min(LIVENESS_INTERVAL);
            match self.read_some(wait) {
                ReadResult::Data => {
                    let exit_code = parser.feed(&self.read_data, &mut |output| sink.append(output));
                    if exit_code.is_some() {
                        return exit_code;
                    }
                    // A process that keeps writing must not hide bash's death.
                    if last_liveness_check.elapsed() >= LIVENESS_INTERVAL {
                        last_liveness_check = Instant::now();
                        if self.child_exited() {
                            self.dead = true;
                            return None;
                        }
                    }
                }
                ReadResult::Nothing => {}
                ReadResult::Closed => {
                    self.dead = true;
                    return None;
                }
            }
        }
    }

    /// Kills the whole job session and reaps bash.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        pty::kill_session(self.pid);
        let _ = self.child.wait();
        self.reader.stop();
        self.dead = true;
        self.closed = true;
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.close();
    }
}

/// Where a command's output goes: cut into chunks for `on_output`, or collected whole.
struct OutputSink<'a, 'c> {
    on_output: Option<OutputCallback<'a>>,
    buffer: OutputBuffer,
    chunk: Vec<u8>,
    collected: &'c mut Vec<u8>,
}

impl OutputSink<'_, '_> {
    fn append(&mut self, output: &[u8]) {
        if self.on_output.is_some() {
            self.buffer.append(output, Instant::now());
        } else {
            self.collected.extend_from_slice(output);
        }
    }

    /// Hands every chunk that is due (all of them when `closed`) to `on_output`.
    fn emit(&mut self, now: Instant, closed: bool) {
        if let Some(emit) = self.on_output.as_mut() {
            while self.buffer.next_chunk_into(now, closed, &mut self.chunk) {
                emit(&self.chunk);
            }
        }
    }
}

/// How [`Shell::start_program`] starts the job shell.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShellProgram<'a> {
    pub program: &'a str,
    pub args: &'a [&'a str],
    /// Output lines that mean no shell is coming (docs/protocol.md §5.7, the docker-compose cases).
    pub refuse: &'a [&'a str],
    /// Mode of the command file (0640, or 0644 when a container user must read it).
    pub command_file_mode: u32,
    /// Run the program as the job user, when there is one.
    pub user: Option<&'a JobUser>,
    /// Give up when bash has not answered by then.
    pub ready_timeout: Option<Duration>,
    /// How the program holds the PTY: as its terminal, or only for its output while bash opens
    /// the slave by name (the docker-compose executor).
    pub attach: pty::Attach,
}

/// Why [`Shell::start_program`] has no shell.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A line that means no shell is coming.
    #[error("{0}")]
    Refused(String),
    /// The program exited before bash was ready; what it printed last.
    #[error("{0}")]
    Exited(String),
}

enum Startup {
    Ready,
    Refused(String),
    Exited(String),
}

/// The last lines a starting program printed (for the error when it exits).
#[derive(Default)]
struct StartupLines(std::collections::VecDeque<String>);

impl StartupLines {
    const KEPT: usize = 20;

    fn push(&mut self, line: String) {
        let line = line.trim_end().to_string();
        if line.trim().is_empty() {
            return;
        }
        if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }

    fn text(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

enum ReadResult {
    /// New output is in `Shell::read_data`.
    Data,
    Nothing,
    Closed,
}

/// Finds the start and end markers in the PTY stream and passes the bytes between them on.
struct MarkerParser {
    start_needle: Vec<u8>,
    end_needle: Vec<u8>,
    end_mark_length: usize,
    started: bool,
    pending: Vec<u8>,
}

impl MarkerParser {
    fn new(start_mark: &str, end_mark: &str) -> MarkerParser {
        MarkerParser {
            start_needle: format!("{start_mark}\r\n").into_bytes(),
            end_needle: format!("{end_mark} ").into_bytes(),
            end_mark_length: end_mark.len(),
            started: false,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes read from the PTY; calls `output` with command output; returns the exit
    /// code once the end marker has been seen.
    fn feed(&mut self, data: &[u8], output: &mut dyn FnMut(&[u8])) -> Option<i32> {
        if !self.started {
            self.pending.extend_from_slice(data);
            let at = find(&self.pending, &self.start_needle)?;
            self.started = true;
            let rest = self.pending.split_off(at + self.start_needle.len());
            self.pending = rest;
        } else if self.pending.is_empty() && !data.contains(&1u8) {
            // The common case: plain output.
            output(data);
            return None;
        } else {
            self.pending.extend_from_slice(data);
        }
        loop {
            let Some(marker) = self.pending.iter().position(|&b| b == 1) else {
                output(&self.pending);
                self.pending.clear();
                return None;
            };
            if marker > 0 {
                output(&self.pending[..marker]);
                self.pending.drain(..marker);
            }
            if let Some(code) = parse_end(&self.pending, &self.end_needle) {
                self.pending.clear();
                return Some(code);
            }
            if self.pending.len() < self.end_mark_length + 10 {
                return None; // wait for more bytes
            }
            // A stray \x01 in the output: pass it on up to the next \x01 and look again.
            let next = self.pending[1..]
                .iter()
                .position(|&b| b == 1)
                .map(|p| p + 1)
                .unwrap_or(self.pending.len());
            output(&self.pending[..next]);
            self.pending.drain(..next);
        }
    }
}

/// Matches `<endMark> (\d+)[\r\n]+` anywhere in `buffer`.
fn parse_end(buffer: &[u8], end_needle: &[u8]) -> Option<i32> {
    let at = find(buffer, end_needle)?;
    let rest = &buffer[at + end_needle.len()..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || !matches!(rest.get(digits), Some(b'\r') | Some(b'\n')) {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Upstream's `shellQuote` (docs/protocol.md §5.3): `''` for empty, unchanged when only safe
/// characters (`[A-Za-z0-9_@%+=:,./-]`), else single-quoted with `'` written as `'"'"'`.
pub(crate) fn shell_quote(value: &str) -> String {
    String::from_utf8(shell_quote_bytes(value.as_bytes())).unwrap_or_default()
}

/// [`shell_quote`] over raw bytes (environment values need not be UTF-8).
pub(crate) fn shell_quote_bytes(value: &[u8]) -> Vec<u8> {
    if value.is_empty() {
        return b"''".to_vec();
    }
    let safe = value.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'_' | b'@' | b'%' | b'+' | b'=' | b':' | b',' | b'.' | b'/' | b'-'
            )
    });
    if safe {
        return value.to_vec();
    }
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'\'');
    for &byte in value {
        if byte == b'\'' {
            out.extend_from_slice(b"'\"'\"'");
        } else {
            out.push(byte);
        }
    }
    out.push(b'\'');
    out
}

/// Writes an agent scratch file with `mode`, 0640 for the job shell (the command file holds the
/// job's commands, secrets included), never through a symbolic link at `path`. The scratch
/// directory decides who may read it: 0700 for the agent alone, or 2750 with the job user's group
/// when jobs run as another user.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    crate::secure_fs::write(path, mode, crate::secure_fs::Existing::Replace, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(parser: &mut MarkerParser, pieces: &[&[u8]]) -> (Vec<u8>, Option<i32>) {
        let mut out = Vec::new();
        let mut code = None;
        for piece in pieces {
            code = parser.feed(piece, &mut |bytes| out.extend_from_slice(bytes));
            if code.is_some() {
                break;
            }
        }
        (out, code)
    }

    #[test]
    fn markers_split_across_reads() {
        let mut parser = MarkerParser::new("S", "E-mark");
        let (out, code) = feed_all(
            &mut parser,
            &[
                b"noise\x01 S",
                b"\r\nhel",
                b"lo\x01 E-ma",
                b"rk 42",
                b"\r\n",
            ],
        );
        assert_eq!(out, b"hello");
        assert_eq!(code, Some(42));
    }

    #[test]
    fn stray_control_a_in_output_is_kept() {
        let mut parser = MarkerParser::new("S", "E-mark");
        let (out, code) = feed_all(
            &mut parser,
            &[
                b"\x01 S\r\n",
                b"a\x01bcdefghijklmnopqrstuvwxyz",
                b"\x01 E-mark 0\r\n",
            ],
        );
        assert_eq!(out, b"a\x01bcdefghijklmnopqrstuvwxyz");
        assert_eq!(code, Some(0));
    }

    #[test]
    fn echoed_command_line_does_not_count_as_a_marker() {
        let mut parser = MarkerParser::new("S", "E-mark");
        let echoed =
            b"echo -e \"\\001 S\"; source f; echo -e \"\\001 E-mark $AGENT_CMD_RESULT\"\r\n";
        let (out, code) = feed_all(
            &mut parser,
            &[echoed, b"\x01 S\r\nout\r\n\x01 E-mark 3\r\n"],
        );
        assert_eq!(out, b"out\r\n");
        assert_eq!(code, Some(3));
    }

    fn start(program: &str, args: &[&str], scratch: &Path) -> Result<Shell, StartError> {
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let program = ShellProgram {
            program,
            args,
            refuse: &["refused here"],
            command_file_mode: 0o640,
            user: None,
            ready_timeout: Some(Duration::from_secs(1)),
            attach: pty::Attach::Controlling,
        };
        Shell::start_program(&program, &env, scratch)
    }

    #[test]
    fn a_program_that_brings_no_shell_is_an_error_with_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path();
        match start("sh", &["-c", "echo boom; exit 3"], scratch) {
            Err(StartError::Exited(text)) => assert!(text.contains("boom"), "{text}"),
            other => panic!("{:?}", other.map(|_| "a shell")),
        }
        match start(
            "sh",
            &["-c", "echo 'it was refused here'; sleep 5"],
            scratch,
        ) {
            Err(StartError::Refused(line)) => assert_eq!(line, "it was refused here"),
            other => panic!("{:?}", other.map(|_| "a shell")),
        }
        let started = Instant::now();
        match start("sleep", &["5"], scratch) {
            Err(StartError::Refused(line)) => assert_eq!(line, "bash did not answer within 1 s"),
            other => panic!("{:?}", other.map(|_| "a shell")),
        }
        assert!(started.elapsed() < Duration::from_secs(4));
        let mut shell = start("bash", &[], scratch)
            .map_err(|e| e.to_string())
            .unwrap();
        assert_eq!(shell.run_silent("echo -n ready").1, b"ready");
    }

    #[test]
    fn shell_quote_matches_upstream() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("abc-1.2/x:y=z@%+,_"), "abc-1.2/x:y=z@%+,_");
        assert_eq!(shell_quote("$PATH:/etc/a"), "'$PATH:/etc/a'");
        assert_eq!(shell_quote("quotes ' quotes"), "'quotes '\"'\"' quotes'");
    }
}
