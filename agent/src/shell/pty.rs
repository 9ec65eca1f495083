//! A bash login shell in a real pseudo-terminal (docs/protocol.md §5.7 "Shell start").
//!
//! Jobs run in one long-lived `bash --login` whose stdin/stdout/stderr are the PTY's slave side,
//! in a session of its own (`setsid` + controlling terminal), so `cd`, `export` and functions
//! persist between commands and programs behave as they do in a terminal. The session id is the
//! bash pid, which lets [`kill_session`] remove every process the job started, background ones
//! included (upstream only kills bash itself).

use crate::job_user::JobUser;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The line that tells us bash has read its profile and is ready for commands.
pub(crate) const READY_MARK: &str = "87d140552e404df69f6472729d2b2c3";

pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
}

/// Opens a new PTY pair. The window size is left unset (0×0), as upstream does.
pub fn open_pty() -> io::Result<Pty> {
    let mut master: RawFd = -1;
    let mut slave: RawFd = -1;
    // SAFETY: openpty writes two fds into the provided pointers; name/termios/winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    set_cloexec(master.as_raw_fd())?;
    set_cloexec(slave.as_raw_fd())?;
    Ok(Pty { master, slave })
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `bash --login` on the slave side of `pty`, in its own session, with exactly `env`, as
/// `user` when there is one (in its home directory).
pub(crate) fn spawn_bash(
    pty: &Pty,
    env: &[(String, String)],
    user: Option<&JobUser>,
) -> io::Result<Child> {
    spawn_in_pty_as(pty, "bash", &["--login"], env, user)
}

/// Starts `program` on the slave side of `pty` as a session leader with the PTY as its
/// controlling terminal and stdin/stdout/stderr, with exactly `env`.
pub fn spawn_in_pty(
    pty: &Pty,
    program: &str,
    args: &[&str],
    env: &[(String, String)],
) -> io::Result<Child> {
    spawn_in_pty_as(pty, program, args, env, None)
}

/// [`spawn_in_pty`], as `user` (groups, ids, no capabilities: [`JobUser::become_in_child`]) when
/// there is one, started in that user's home directory.
pub(crate) fn spawn_in_pty_as(
    pty: &Pty,
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    user: Option<&JobUser>,
) -> io::Result<Child> {
    spawn_on_pty(pty, program, args, env, user, Attach::Controlling)
}

/// How a program started on a PTY holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attach {
    /// stdin, stdout and stderr, and its controlling terminal.
    Controlling,
    /// stdout and stderr only (stdin is `/dev/null`), and not its controlling terminal, so that a
    /// process that opens the slave by name later (bash in a container) can take it as its own.
    OutputOnly,
}

/// Starts `program` as a session leader on `pty` as `attach` says, as `user` when there is one.
pub(crate) fn spawn_on_pty(
    pty: &Pty,
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    user: Option<&JobUser>,
    attach: Attach,
) -> io::Result<Child> {
    let user = user.cloned();
    let mut command = Command::new(program);
    if let Some(user) = &user {
        // A user without a home (nobody's is /nonexistent) starts at the root instead.
        command.current_dir(if user.home.is_dir() {
            user.home.as_path()
        } else {
            std::path::Path::new("/")
        });
    }
    command.args(args);
    command.env_clear();
    command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
        .stdin(match attach {
            Attach::Controlling => Stdio::from(pty.slave.try_clone()?),
            Attach::OutputOnly => Stdio::null(),
        })
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave.try_clone()?));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // stdin is the slave side: make it our controlling terminal.
            if attach == Attach::Controlling && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Restore default signal dispositions the agent may have changed.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            match &user {
                Some(user) => user.become_in_child(),
                None => Ok(()),
            }
        });
    }
    command.spawn()
}

impl Pty {
    /// Opens the slave side to anyone who can name it (mode 0666) and returns its path, for a
    /// process that can only reach it by name: bash in the job's container, whose user may be any
    /// user of the image, mapped to any id of the job user's subordinate range. Who else could
    /// name it is a process of this machine outside the job, all of which are trusted: the job
    /// reaching its own terminal is no new power.
    pub(crate) fn share_slave(&self) -> io::Result<std::path::PathBuf> {
        // SAFETY: fchmod on an fd we own.
        if unsafe { libc::fchmod(self.slave.as_raw_fd(), 0o666) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes a NUL-terminated name of at most `name.len()` bytes.
        let rc = unsafe { libc::ptsname_r(self.master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        Ok(std::path::PathBuf::from(
            name.to_string_lossy().into_owned(),
        ))
    }
}

/// Waits until `fd` is readable or `timeout` passes. Returns true when readable (or hung up).
pub(crate) fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        return Ok(rc > 0);
    }
}

/// Reads what is available from the master side. `Ok(0)` or EIO mean every slave fd is closed.
pub fn read_master(master: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match master.read(buffer) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) if error.raw_os_error() == Some(libc::EIO) => return Ok(0),
            other => return other,
        }
    }
}

pub(crate) fn write_master(master: &mut File, data: &[u8]) -> io::Result<()> {
    master.write_all(data)
}

/// SIGKILLs every process in session `session_id` (the bash pid), plus its process group.
/// Processes that left the session with their own `setsid` are out of reach, as with any
/// session-based cleanup.
pub(crate) fn kill_session(session_id: i32) {
    if session_id <= 0 {
        return;
    }
    // SAFETY: kill with a negative pid signals a process group; harmless if it is gone.
    unsafe {
        libc::kill(-session_id, libc::SIGKILL);
        libc::kill(session_id, libc::SIGKILL);
    }
    // Job control puts pipelines and background jobs into groups of their own: sweep /proc.
    for _ in 0..3 {
        let members = session_members(session_id);
        if members.is_empty() {
            break;
        }
        for pid in members {
            // SAFETY: signalling a pid we just found in the session.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pids whose session id is `session_id` (from `/proc/<pid>/stat`), zombies excluded.
pub(crate) fn session_members(session_id: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let Some(after) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // fields[0] = state, [1] = ppid, [2] = pgrp, [3] = session
        if fields.len() > 3 && fields[0] != "Z" && fields[3].parse::<i32>() == Ok(session_id) {
            members.push(pid);
        }
    }
    members
}
