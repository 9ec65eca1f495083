//! Each job in a cgroup of its own (`job-cgroups`, cgroup v2; the AMI's unit delegates its cgroup
//! to the agent with `Delegate=yes`). A job is untrusted code, and stopping it must not depend on
//! its cooperation: a helper that becomes the job user to `kill -1` can be frozen by the job (a
//! process that SIGSTOPs every new process of its uid) or never start (a fork bomb at the unit's
//! task limit). In a cgroup, every process of the job (its shell, whatever left the session, its
//! rootless engine and containers) is killed at once by the kernel (`cgroup.kill`), stopped or
//! not, with no helper; the job's own `pids.max` and `memory.max` keep a fork bomb or a memory hog
//! inside the job, and the job's `memory.events` says when the kernel killed for lack of memory.
//!
//! Layout under the agent's delegated cgroup D (from `/proc/self/cgroup`): the agent moves itself
//! to `D/agent` (cgroup v2 puts processes only in leaves once children have controllers), enables
//! `pids` and `memory` for D's children, and makes `D/job-<n>` per job. A job's processes join it
//! between fork and exec, before they become the job user ([`JobCgroup::join_in_child`]), through
//! a descriptor the agent opened: the job user owns nothing in the tree, so it cannot leave.
//! The file formats are parsed by the pure functions at the bottom, table-tested.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Where cgroup v2 is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a killed job's cgroup may take to empty.
pub(crate) const KILL_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("job-cgroups needs cgroup v2 (no {CGROUP_ROOT}/cgroup.controllers)")]
    NotV2,
    #[error("job-cgroups: cannot tell the agent's cgroup from /proc/self/cgroup")]
    Unknown,
    #[error(
        "job-cgroups: {path} is not delegated to the agent (its unit needs Delegate=yes): {error}"
    )]
    NotDelegated { path: String, error: std::io::Error },
    #[error("job-cgroups: {what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("job-memory-max: '{0}' is not a size (bytes, or a number with K, M or G)")]
    BadSize(String),
}

/// What each job's cgroup may use (`None`: no limit of its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `job-memory-max`, bytes.
    pub memory_max: Option<u64>,
    /// `job-pids-max`.
    pub pids_max: Option<u64>,
}

/// The agent's delegated cgroup, in which it makes one cgroup per job.
#[derive(Debug, Clone)]
pub struct JobCgroups {
    root: PathBuf,
    limits: Limits,
}

impl JobCgroups {
    /// Takes over the agent's own cgroup: moves the agent into its `agent` leaf and enables the
    /// `pids` and `memory` controllers (those the parent offers) for the jobs' cgroups.
    pub fn adopt(limits: Limits) -> Result<JobCgroups, CgroupError> {
        if !Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            return Err(CgroupError::NotV2);
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|_| CgroupError::Unknown)?;
        let relative = own_cgroup(&own).ok_or(CgroupError::Unknown)?;
        let root = Path::new(CGROUP_ROOT).join(relative.trim_start_matches('/'));
        let leaf = root.join("agent");
        make_dir(&leaf).map_err(|error| CgroupError::NotDelegated {
            path: root.display().to_string(),
            error,
        })?;
        write_file(&leaf.join("cgroup.procs"), "0", "joining")?;
        let offered = read_file(&root.join("cgroup.controllers"), "reading")?;
        for controller in wanted_controllers(&offered) {
            write_file(
                &root.join("cgroup.subtree_control"),
                &format!("+{controller}"),
                "enabling a controller in",
            )?;
        }
        Ok(JobCgroups { root, limits })
    }

    /// A new cgroup for the job `id`, with the limits.
    pub fn create(&self, id: &str) -> Result<JobCgroup, CgroupError> {
        let safe: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect();
        let dir = self
            .root
            .join(format!("job-{safe}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir(&dir).map_err(|error| CgroupError::Io {
            what: "making",
            path: dir.display().to_string(),
            error,
        })?;
        let limits = [
            ("memory.max", self.limits.memory_max),
            ("pids.max", self.limits.pids_max),
        ];
        for (file, limit) in limits {
            if let Some(limit) = limit {
                write_file(&dir.join(file), &limit.to_string(), "limiting")?;
            }
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|error| CgroupError::Io {
                what: "opening",
                path: dir.display().to_string(),
                error,
            })?;
        Ok(JobCgroup {
            dir,
            procs,
            limits: self.limits,
        })
    }
}

/// One job's cgroup. Dropped: everything in it killed, then the cgroup removed.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    procs: File,
    limits: Limits,
}

impl JobCgroup {
    /// Moves the calling process into this cgroup.
    ///
    /// # Safety
    /// Only for `pre_exec`: one `write` system call, no allocation.
    pub unsafe fn join_in_child(&self) -> std::io::Result<()> {
        let written = libc::write(self.procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
        match written {
            1 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Kills every process in the cgroup (stopped ones too) and waits, up to `deadline`, for it
    /// to be empty; whether it is.
    pub fn kill(&self, deadline: Duration) -> bool {
        if let Err(error) = write_file(&self.dir.join("cgroup.kill"), "1", "killing") {
            tracing::error!("{error}");
        }
        let until = Instant::now() + deadline;
        loop {
            let events =
                std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap_or_default();
            if !populated(&events) {
                return true;
            }
            if Instant::now() >= until {
                tracing::error!(
                    "{} still has processes after {deadline:?}",
                    self.dir.display()
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many processes of the job the kernel killed for lack of memory so far.
    pub(crate) fn oom_kills(&self) -> u64 {
        let events = std::fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        event_count(&events, "oom_kill")
    }

    /// The job's memory limit, for the job log's words.
    pub(crate) fn memory_max(&self) -> Option<u64> {
        self.limits.memory_max
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        self.kill(KILL_DEADLINE);
        if let Err(error) = std::fs::remove_dir(&self.dir) {
            tracing::warn!("could not remove {}: {error}", self.dir.display());
        }
    }
}

fn make_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn write_file(path: &Path, text: &str, what: &'static str) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|error| CgroupError::Io {
            what,
            path: path.display().to_string(),
            error,
        })
}

fn read_file(path: &Path, what: &'static str) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|error| CgroupError::Io {
        what,
        path: path.display().to_string(),
        error,
    })
}

/// The cgroup v2 path of `/proc/self/cgroup`'s text (the `0::PATH` line).
pub(crate) fn own_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| path.starts_with('/') && !path.contains(".."))
}

/// The controllers jobs get, of those the parent offers (`cgroup.controllers`).
pub(crate) fn wanted_controllers(offered: &str) -> Vec<&'static str> {
    ["pids", "memory"]
        .into_iter()
        .filter(|wanted| offered.split_whitespace().any(|c| c == *wanted))
        .collect()
}

/// Whether `cgroup.events` says processes are left.
pub(crate) fn populated(events: &str) -> bool {
    event_count(events, "populated") > 0
}

/// A counter of a flat-keyed cgroup file (`memory.events`, `cgroup.events`).
pub(crate) fn event_count(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(name, _)| *name == key)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// `job-memory-max`: bytes, or a number with K, M or G (binary units); "" is no limit.
pub(crate) fn parse_size(text: &str) -> Result<Option<u64>, CgroupError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (number, unit) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (&text[..at], 1 << 10),
        Some((at, 'M' | 'm')) => (&text[..at], 1 << 20),
        Some((at, 'G' | 'g')) => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(unit))
        .map(Some)
        .ok_or_else(|| CgroupError::BadSize(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_cgroup_comes_from_the_v2_line() {
        let table = [
            (
                "0::/system.slice/flotilla-agent.service\n",
                Some("/system.slice/flotilla-agent.service"),
            ),
            ("12:pids:/x\n0::/\n", Some("/")),
            ("12:pids:/x\n", None),
            ("0::relative\n", None),
            ("0::/a/../b\n", None),
        ];
        for (text, path) in table {
            assert_eq!(own_cgroup(text), path, "{text:?}");
        }
    }

    #[test]
    fn controllers_events_and_sizes_are_read_as_the_kernel_writes_them() {
        assert_eq!(
            wanted_controllers("cpuset cpu io memory pids\n"),
            ["pids", "memory"]
        );
        assert_eq!(wanted_controllers("cpu io pids"), ["pids"]);
        assert!(populated("populated 1\nfrozen 0\n"));
        assert!(!populated("populated 0\nfrozen 0\n"));
        let memory = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(event_count(memory, "oom_kill"), 1);
        assert_eq!(event_count(memory, "oom"), 2);
        assert_eq!(event_count("", "oom_kill"), 0);
        for (text, size) in [
            ("", None),
            ("1048576", Some(1 << 20)),
            ("64M", Some(64 << 20)),
            ("2G", Some(2 << 30)),
            ("512k", Some(512 << 10)),
        ] {
            assert_eq!(parse_size(text).unwrap(), size, "{text}");
        }
        for bad in ["x", "0", "-1M", "1T", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
