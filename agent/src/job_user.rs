//! The unprivileged user a job runs as (`job-user`, a Flotilla option; the AMI sets
//! `flotilla-job`). A job is untrusted code: with a job user it cannot read the agent's memory,
//! environment or files, cannot signal the agent, and holds no capability, while the agent (user
//! `flotilla`, given `CAP_SETUID`, `CAP_SETGID` and `CAP_KILL` by its systemd unit) still starts,
//! feeds and stops it.
//!
//! Three ways the agent acts as the job user, each without a helper binary:
//! - the job's shell: [`JobUser::become_in_child`] runs between `fork` and `exec` (groups, gid,
//!   uid, then every capability set emptied, the ambient set included, so nothing the agent was
//!   given survives into bash);
//! - files injected into the job (`files` of the job request): [`JobUser::run_as`] runs the write
//!   on a thread of its own whose credentials alone are switched with the raw system calls (glibc's
//!   wrappers would switch every thread of the agent), so permissions and ownership are the job
//!   user's and the agent's privileges never touch a path the job chose;
//! - stopping: [`JobUser::kill_all`] kills the job's cgroup when it has one
//!   ([`crate::job_cgroup`]), or sends SIGKILL to every process of the job user (`kill(-1)` from
//!   a thread acting for that user that the job cannot signal: [`Killer`]), which also reaches
//!   processes that left the job's session with `setsid`.
//!
//! Users and groups are read with `getpwnam_r` and `getgrouplist`, so NSS sources work as they
//! do for `login`; no crate wraps both without pulling in more than these two calls.

use std::ffi::{CStr, CString};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A resolved job user: everything the child needs is allocated before `fork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`getgrouplist`, primary group included): `video`/`render` keep GPU
    /// devices usable, `docker` only where the stack grants it.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    /// `job-no-new-privileges`: the job's processes get `no_new_privs`, so no setuid binary or
    /// file capability on the machine raises them (the sealed image sets it unless `JobSudo`).
    /// Not for the job's rootless engine, whose `newuidmap` is such a binary ([`Self::for_engine`]).
    pub no_new_privs: bool,
    /// The running job's cgroup (`job-cgroups`): every process started as this user joins it, and
    /// [`Self::kill_all`] kills it there.
    pub cgroup: Option<PerJob<crate::job_cgroup::JobCgroup>>,
    /// The running job's [`Killer`], made when the job starts.
    pub killer: Option<PerJob<Killer>>,
}

/// Something of the running job's that every clone of its job user shares (its cgroup, its
/// killer); two are equal when they are the same one.
#[derive(Debug)]
pub struct PerJob<T>(pub std::sync::Arc<T>);

impl<T> PerJob<T> {
    pub fn new(value: T) -> PerJob<T> {
        PerJob(std::sync::Arc::new(value))
    }
}

impl<T> Clone for PerJob<T> {
    fn clone(&self) -> Self {
        PerJob(self.0.clone())
    }
}

impl<T> PartialEq for PerJob<T> {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for PerJob<T> {}

#[derive(Debug, thiserror::Error)]
pub enum JobUserError {
    #[error("job-user '{0}' does not exist on this machine")]
    NoSuchUser(String),
    #[error("job-user '{0}' is root (uid 0): jobs must run as an unprivileged user")]
    Root(String),
    #[error("job-user '{0}' is not a valid user name")]
    BadName(String),
    #[error("cannot look up job-user '{name}': {source}")]
    Lookup { name: String, source: io::Error },
    #[error("cannot act as job-user '{name}': {source}")]
    Switch { name: String, source: io::Error },
}

impl JobUser {
    /// Looks `name` up in the user database. Root is refused: a job user exists to take
    /// privileges away.
    pub fn lookup(name: &str) -> Result<JobUser, JobUserError> {
        let c_name = CString::new(name).map_err(|_| JobUserError::BadName(name.to_string()))?;
        let (uid, gid, home) = passwd_entry(&c_name, name)?;
        if uid == 0 {
            return Err(JobUserError::Root(name.to_string()));
        }
        let groups = group_list(&c_name, gid).map_err(|source| JobUserError::Lookup {
            name: name.to_string(),
            source,
        })?;
        Ok(JobUser {
            name: name.to_string(),
            uid,
            gid,
            groups,
            home,
            no_new_privs: false,
            cgroup: None,
            killer: None,
        })
    }

    /// This user as the job's container engine runs: without `no_new_privs` (rootless Podman
    /// maps its user namespace with the setuid `newuidmap`).
    pub(crate) fn for_engine(&self) -> JobUser {
        JobUser {
            no_new_privs: false,
            ..self.clone()
        }
    }

    /// The job's `HOME`, `USER` and `LOGNAME` are the job user's, not the agent's.
    pub fn apply_to_environment(&self, env: &mut Vec<(String, String)>) {
        env.retain(|(name, _)| !matches!(name.as_str(), "HOME" | "USER" | "LOGNAME"));
        env.push(("HOME".into(), self.home.display().to_string()));
        env.push(("USER".into(), self.name.clone()));
        env.push(("LOGNAME".into(), self.name.clone()));
    }

    /// Becomes the job user in a forked child before `exec`: supplementary groups, gid, uid,
    /// then empties the permitted, effective, inheritable and ambient capability sets, and sets
    /// `no_new_privs` when asked to ([`Self::no_new_privs`]); before all that, it joins the job's
    /// cgroup when there is one.
    ///
    /// # Safety
    /// Only for `pre_exec`: it makes async-signal-safe system calls and does not allocate.
    pub unsafe fn become_in_child(&self) -> io::Result<()> {
        // First, while the agent's: the job user may not move a process between cgroups.
        if let Some(cgroup) = &self.cgroup {
            cgroup.0.join_in_child()?;
        }
        if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
            || libc::setresgid(self.gid, self.gid, self.gid) != 0
            || libc::setresuid(self.uid, self.uid, self.uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
        drop_capabilities()?;
        if self.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `work` on a new thread whose credentials (groups, gid, uid) alone are the job user's;
    /// the agent's other threads keep theirs, and the thread ends with `work`.
    pub fn run_as<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, JobUserError> {
        let switch_error = |source| JobUserError::Switch {
            name: self.name.clone(),
            source,
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: raw system calls change only this thread's credentials; the
                    // pointer and length describe `self.groups`.
                    let switched = unsafe {
                        libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr())
                            == 0
                            && libc::syscall(libc::SYS_setresgid, self.gid, self.gid, self.gid) == 0
                            && libc::syscall(libc::SYS_setresuid, self.uid, self.uid, self.uid) == 0
                    };
                    if !switched {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(io::Error::other(
                        "the thread acting as the job user panicked",
                    ))
                })
        })
        .map_err(switch_error)
    }

    /// Whether the job user may read and write `path` (e.g. the Docker socket), asked as that
    /// user.
    pub(crate) fn may_use(&self, path: &std::path::Path) -> bool {
        let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: access only reads the NUL-terminated path.
        self.run_as(|| unsafe { libc::access(c_path.as_ptr(), libc::R_OK | libc::W_OK) } == 0)
            .unwrap_or(false)
    }

    /// SIGKILLs every process of the job user: in the job's cgroup when it has one, else with
    /// `kill(-1)` from a thread of the agent's acting for the job user ([`Killer`]).
    pub(crate) fn kill_all(&self) {
        // In its cgroup the job is killed by the kernel, all of it at once, stopped processes
        // too: no helper the job could freeze.
        if let Some(cgroup) = &self.cgroup {
            cgroup.0.kill(crate::job_cgroup::KILL_DEADLINE);
            return;
        }
        let done = match &self.killer {
            Some(killer) => killer.0.kill_all(KILL_WAIT),
            None => Killer::spawn(self.uid).is_ok_and(|killer| killer.kill_all(KILL_WAIT)),
        };
        if !done {
            tracing::warn!("cannot stop the processes of job-user {}", self.name);
        }
    }
}

/// How long [`JobUser::kill_all`] waits for its sweeps.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A uid no process has: the real and saved uid of the [`Killer`]'s thread.
const KILLER_UID: u32 = u32::MAX - 2;

/// A thread of the agent's that kills the job user's processes, made before the job runs. It
/// acts with the job user's uid as its effective uid and no capability (so `kill(-1)` reaches
/// exactly the job user's processes) and [`KILLER_UID`] as its real and saved ones, which no process of the job
/// has: the job cannot signal it back (stop it, as it could stop a helper that became the job
/// user), and it needs no new process or thread when it is asked (a job that forked up to the
/// task limit cannot keep it from running). A thread of its own, because the switch is one way
/// for a process that started as root, and other threads keep the agent's credentials.
#[derive(Debug)]
pub struct Killer {
    requests: std::sync::Mutex<std::sync::mpsc::Sender<std::sync::mpsc::Sender<()>>>,
}

impl Killer {
    /// Starts the thread; it switches its credentials at once and waits for requests.
    pub fn spawn(uid: u32) -> io::Result<Killer> {
        let (requests, incoming) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<()>>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("job-killer".into())
            .spawn(move || {
                // SAFETY: raw system calls change only this thread's credentials; without its
                // capabilities (the agent's CAP_KILL would let kill(-1) reach every process).
                let switched = unsafe {
                    match libc::syscall(libc::SYS_setresuid, KILLER_UID, uid, KILLER_UID) {
                        0 => drop_capabilities(),
                        _ => Err(io::Error::last_os_error()),
                    }
                };
                let failed = switched.is_err();
                let _ = ready_tx.send(switched);
                if failed {
                    return;
                }
                for done in incoming {
                    for sweep in 0..3 {
                        if sweep > 0 {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        // SAFETY: kill takes no pointers; -1 is every process this thread may
                        // signal except the agent's own.
                        unsafe { libc::kill(-1, libc::SIGKILL) };
                    }
                    let _ = done.send(());
                }
            })?;
        ready
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the killer thread ended")))?;
        Ok(Killer {
            requests: std::sync::Mutex::new(requests),
        })
    }

    /// Kills every process of the job user (three sweeps, 20 ms apart: a job that forks while
    /// the first lands is caught by the next); whether the thread answered within `wait`.
    pub(crate) fn kill_all(&self, wait: Duration) -> bool {
        let (done, answer) = std::sync::mpsc::channel();
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(done);
        sent.is_ok() && answer.recv_timeout(wait).is_ok()
    }
}

/// uid, gid and home directory of `name` from the user database.
fn passwd_entry(c_name: &CStr, name: &str) -> Result<(u32, u32, PathBuf), JobUserError> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter for getpwnam_r.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives the entry's strings,
    // which are copied before it is dropped.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(JobUserError::Lookup {
            name: name.to_string(),
            source: io::Error::from_raw_os_error(rc),
        });
    }
    if found.is_null() {
        return Err(JobUserError::NoSuchUser(name.to_string()));
    }
    // SAFETY: pw_dir points into `buffer`, NUL-terminated, when getpwnam_r found the user.
    let home = unsafe { CStr::from_ptr(entry.pw_dir) };
    let home = PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(home.to_bytes()),
    );
    Ok((entry.pw_uid, entry.pw_gid, home))
}

/// The user's groups (`getgrouplist`), growing the list until it fits.
fn group_list(c_name: &CStr, gid: u32) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..8 {
        let mut count = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `count` entries; getgrouplist updates `count`.
        let rc =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return Ok(groups);
        }
        groups.resize((count.max(0) as usize).max(groups.len() * 2), 0);
    }
    Err(io::Error::other("the user's group list keeps growing"))
}

/// Empties every capability set of the calling process (no allocation: usable in `pre_exec`).
unsafe fn drop_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    if libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL,
        0,
        0,
        0,
    ) != 0
    {
        // Kernels before 4.3 have no ambient set (EINVAL): nothing to clear there.
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINVAL) {
            return Err(error);
        }
    }
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown_users_are_refused() {
        assert!(matches!(
            JobUser::lookup("root"),
            Err(JobUserError::Root(_))
        ));
        assert!(matches!(
            JobUser::lookup("no-such-user-flotilla"),
            Err(JobUserError::NoSuchUser(_))
        ));
        assert!(matches!(
            JobUser::lookup("bad\0name"),
            Err(JobUserError::BadName(_))
        ));
    }

    #[test]
    fn a_real_user_resolves_with_its_home_and_groups() {
        let user = JobUser::lookup("nobody").expect("every Linux machine has nobody");
        assert_eq!(user.uid, 65534);
        assert!(user.groups.contains(&user.gid), "{user:?}");
        let mut env = vec![
            ("HOME".into(), "/root".into()),
            ("PATH".into(), "/bin".into()),
        ];
        user.apply_to_environment(&mut env);
        assert!(env.contains(&("HOME".into(), user.home.display().to_string())));
        assert!(env.contains(&("USER".into(), "nobody".into())));
        assert!(env.contains(&("PATH".into(), "/bin".into())));
    }
}
