//! The container engine a job's Compose talks to (`container-engine`). `host` is the machine's
//! Docker daemon, as upstream's agent uses it: whoever may use its socket is root on the machine.
//! `rootless` gives each job an engine of its own: a rootless Podman, run as the job user, whose
//! Docker-compatible API the job's Compose, a `docker` CLI in `main` and a shell job's `docker`
//! reach through `DOCKER_HOST`. Its containers live in a user namespace whose root is the job user and whose
//! other users are the job user's subordinate ids, so nothing a job does through it is more than
//! the job user could do, and its traffic leaves through slirp4netns as the job user's own, where
//! the metadata service's owner rule applies.
//!
//! One engine per job: its storage lives in the job's scratch directory (`engine/state`), its run
//! state in a short private directory under `/tmp`, the configuration beside the storage where the
//! job cannot change it; images baked into the machine come from a read-only additional image
//! store (no pull, no copy); at the end of the job every container is removed, the storage reset,
//! and every process of the job user killed. Why Podman and not rootless Docker:
//! docs/ARCHITECTURE.md, key decision 7.

use crate::command::CommandError;
use crate::job_user::JobUser;
use crate::secure_fs::{self, Existing};
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long Podman's API service may take to answer its first `/_ping`.
pub(crate) const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Each teardown step (remove every container, reset the storage) gets this long.
const TEARDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The API service gets this long to exit after SIGTERM.
const SERVICE_STOP_GRACE: Duration = Duration::from_secs(5);
/// Where each engine's run state goes (see [`make_runtime_dir`]).
const RUNTIME_PARENT: &str = "/tmp";
const RUNTIME_PREFIX: &str = "flotilla-engine-";
/// Where the AMI bakes images for the job's engine (`container-image-store`'s default).
pub(crate) const DEFAULT_IMAGE_STORE: &str = "/var/lib/flotilla-images";

/// `container-engine`: which engine container jobs use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ContainerEngine {
    /// The machine's Docker daemon (upstream's way; its socket is root-equivalent).
    #[default]
    Host,
    /// A rootless Podman of the job's own, as the job user.
    Rootless(RootlessOptions),
}

/// What a rootless engine is made of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RootlessOptions {
    /// A read-only image store of images baked into the machine (`container-image-store`); used
    /// when it exists.
    pub image_store: Option<PathBuf>,
}

impl ContainerEngine {
    /// `host` (or empty) and `rootless`; `None` for anything else.
    pub fn parse(text: &str, image_store: &str) -> Option<ContainerEngine> {
        match text {
            "" | "host" => Some(ContainerEngine::Host),
            "rootless" => Some(ContainerEngine::Rootless(RootlessOptions {
                image_store: Some(PathBuf::from(match image_store {
                    "" => DEFAULT_IMAGE_STORE,
                    path => path,
                })),
            })),
            _ => None,
        }
    }
}

/// Why a job's engine cannot run; each says what to do (the job log's `Preparing the job executor`).
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("The rootless container engine runs a job's containers as the job user, but this agent has no job-user. Set job-user, or container-engine: host.")]
    NoJobUser,
    #[error("No container engine: '{program}' is not installed on this machine ({package}), or run the agent with container-engine: host.")]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error("The job user '{user}' has no subordinate {kind}s in {file}, so its containers cannot have users of their own. Add a range: usermod --add-sub{kind}s 100000-165535 {user}")]
    NoSubordinateIds {
        user: String,
        kind: &'static str,
        file: &'static str,
    },
    #[error("Failed to prepare the job's container engine: {0}")]
    Prepare(std::io::Error),
    #[error("Failed to start the job's container engine (podman system service): {0}")]
    Start(std::io::Error),
    #[error("The job's container engine did not answer within {} s. Its last words: {log}", waited.as_secs())]
    NotReady { waited: Duration, log: String },
    #[error("The job's container engine stopped as it started. Its last words: {log}")]
    Exited { log: String },
    #[error("This machine does not let the job user make the user namespace its container engine needs: check `sysctl user.max_user_namespaces` and, on Ubuntu 24.04, `kernel.apparmor_restrict_unprivileged_userns`, or run container jobs on the machine's Docker (JobDockerAccess=true). Podman said: {log}")]
    NoUserNamespaces { log: String },
}

/// Why the engine's service did not come up, from whether it exited and its last words.
pub(crate) fn diagnose(exited: bool, waited: Duration, log: String) -> EngineError {
    const NO_NAMESPACE: &[&str] = &[
        "uid_map",
        "gid_map",
        "newuidmap",
        "user namespace",
        "cannot clone",
    ];
    if NO_NAMESPACE.iter().any(|words| log.contains(words)) {
        return EngineError::NoUserNamespaces { log };
    }
    match exited {
        true => EngineError::Exited { log },
        false => EngineError::NotReady { waited, log },
    }
}

/// The job user's subordinate id range in `/etc/subuid` or `/etc/subgid` text (`name:start:count`
/// or `uid:start:count`): whether one with at least 65,536 ids is there, as a whole image's users
/// need.
pub(crate) fn has_subordinate_range(text: &str, name: &str, id: u32) -> bool {
    let id = id.to_string();
    text.lines().any(|line| {
        let mut fields = line.trim().split(':');
        let (Some(owner), Some(start), Some(count), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        (owner == name || owner == id)
            && start.parse::<u64>().is_ok()
            && count.parse::<u64>().is_ok_and(|count| count >= 65_536)
    })
}

/// The engine's `storage.conf`: its own storage under `dir`, baked images from `image_store`. A
/// rootless Podman takes its storage from `rootless_storage_path` (it ignores `graphroot`, which is
/// root's) and its run state from `XDG_RUNTIME_DIR`.
pub(crate) fn storage_conf(dir: &Path, image_store: Option<&Path>) -> String {
    let storage = toml_string(&dir.join("storage"));
    let mut text = format!(
        "[storage]\ndriver = \"overlay\"\ngraphroot = {storage}\nrunroot = {}\nrootless_storage_path = {storage}\n",
        toml_string(&dir.join("run")),
    );
    if let Some(store) = image_store {
        text.push_str(&format!(
            "\n[storage.options]\nadditionalimagestores = [{}]\n",
            toml_string(store)
        ));
    }
    text
}

/// The engine's `containers.conf`: no systemd or journald (the job user has no session). Everything
/// else Podman keeps under `XDG_RUNTIME_DIR` and its storage, both the job's: Podman passes on
/// neither this file nor its environment to the clean-up it runs when a container exits, so a
/// setting of its own here (an events file, a temporary directory) would leave that clean-up
/// looking elsewhere, and a client waiting for the container's exit waits forever.
pub(crate) fn containers_conf() -> String {
    "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n".to_string()
}

/// A TOML basic string: paths are the agent's, but quote them properly all the same.
fn toml_string(path: &Path) -> String {
    let mut quoted = String::from("\"");
    for c in path.display().to_string().chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// One job's running engine. [`JobEngine::tear_down`] ends it with everything it made.
#[derive(Debug)]
pub struct JobEngine {
    user: JobUser,
    dir: PathBuf,
    /// The run directory under `/tmp` (`XDG_RUNTIME_DIR` in `env`).
    runtime: PathBuf,
    env: Vec<(String, String)>,
    service: Child,
}

impl JobEngine {
    /// Starts the job's engine: checks the machine, lays out `scratch/engine`, starts Podman's
    /// API service as the job user and waits until it answers.
    pub fn start(
        options: &RootlessOptions,
        user: Option<&JobUser>,
        scratch: &Path,
        shell_env: &[(String, String)],
    ) -> Result<JobEngine, EngineError> {
        let user = user.ok_or(EngineError::NoJobUser)?;
        check_machine(user, shell_env)?;
        let dir = scratch.join("engine").join("state");
        let image_store = options
            .image_store
            .as_deref()
            .filter(|store| store.is_dir());
        let Layout { env, runtime } = lay_out(user, scratch, &dir, image_store, shell_env)?;
        let service = spawn_service(user, &dir, &env)?;
        let mut engine = JobEngine {
            user: user.clone(),
            dir,
            runtime,
            env,
            service,
        };
        if let Err(error) = engine.wait_until_ready(SERVICE_READY_TIMEOUT) {
            engine.tear_down();
            return Err(error);
        }
        Ok(engine)
    }

    /// The API socket (the job user's alone).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("podman.sock")
    }

    /// The environment every client of this engine runs with: the job's, plus `DOCKER_HOST` and
    /// Podman's configuration.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn user(&self) -> &JobUser {
        &self.user
    }

    /// Whether every one of `images` is in the engine already (baked into the machine's store):
    /// then nothing needs a pull.
    pub(crate) fn has_images<'a>(&self, mut images: impl Iterator<Item = &'a str>) -> bool {
        let socket = self.socket();
        images.all(|image| {
            is_image_reference(image)
                && self
                    .user
                    .run_as(|| answers_ok(&socket, &format!("/images/{image}/json")))
                    .unwrap_or(false)
        })
    }

    fn wait_until_ready(&mut self, timeout: Duration) -> Result<(), EngineError> {
        let deadline = Instant::now() + timeout;
        let socket = self.socket();
        loop {
            if self.user.run_as(|| ping(&socket)).unwrap_or(false) {
                return Ok(());
            }
            let exited = matches!(self.service.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                return Err(diagnose(exited, timeout, self.service_log_tail()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Why the first of `images` that is not in the engine cannot be pulled, in Podman's words
    /// (the last line it printed), found by pulling it with Podman's own CLI within `timeout`;
    /// `None` when every image pulls. Compose 1 drops the error the Docker API streams for a
    /// failed pull (it says only `no such image` after it), so the job log gets it this way.
    pub(crate) fn pull_error<'a>(
        &self,
        images: impl Iterator<Item = &'a str>,
        timeout: Duration,
    ) -> Option<String> {
        for image in images {
            if !is_image_reference(image) || self.has_images(std::iter::once(image)) {
                continue;
            }
            let args = ["pull", "--quiet", image];
            match self.podman_within(&args, timeout) {
                Ok(_) => {}
                Err(CommandError::Failed { stderr, .. }) => {
                    return stderr.lines().last().map(str::to_string);
                }
                Err(error) => return Some(error.to_string()),
            }
        }
        None
    }

    fn service_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
        match tail.is_empty() {
            true => "(nothing)".to_string(),
            false => tail,
        }
    }

    /// Ends the engine with everything it made: every container (the job's own `docker run`s
    /// included) removed, networks, volumes, images pulled and the storage reset, the service
    /// stopped and every process of the job user killed. Each step has a deadline; a failure
    /// goes to the agent log and the next step runs all the same.
    pub(crate) fn tear_down(mut self) {
        tracing::info!("Tearing down the job's container engine");
        for args in [
            &["rm", "--all", "--force", "--time", "0"][..],
            &["system", "reset", "--force"][..],
        ] {
            if let Err(error) = self.podman(args) {
                tracing::error!("Error tearing down the job's container engine: {error}");
            }
        }
        stop_child(&mut self.service, SERVICE_STOP_GRACE);
        // Every process of the job user goes first: the engine's namespace holder keeps its
        // mounts (and so its storage) busy while it lives.
        self.user.kill_all();
        // What reset leaves may belong to the job user's subordinate ids, which only the job
        // user's namespace may remove.
        let dir = self.dir.display().to_string();
        let (storage, run) = (format!("{dir}/storage"), format!("{dir}/run"));
        if let Err(error) = self.podman(&["unshare", "rm", "-rf", "--", &storage, &run]) {
            tracing::error!("Error removing the job's container storage: {error}");
        }
        self.user.kill_all();
        let shared = self.dir.parent().unwrap_or(&self.dir);
        if let Err(error) = remove_entries_as(&self.user, shared) {
            tracing::error!("Error removing the job's container engine files: {error}");
        }
        let removed = self.user.run_as(|| std::fs::remove_dir_all(&self.runtime));
        if let Err(error) = removed
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::error!("Error removing the job's container engine run directory: {error}");
        }
    }

    /// Runs `podman args` as the job user with the engine's configuration (from `/`: the job may
    /// have removed the engine's directory, and the teardown must still run).
    fn podman(&self, args: &[&str]) -> Result<String, CommandError> {
        self.podman_within(args, TEARDOWN_STEP_TIMEOUT)
    }

    fn podman_within(&self, args: &[&str], timeout: Duration) -> Result<String, CommandError> {
        let mut command = Command::new("podman");
        command
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/");
        as_user(&mut command, &self.user);
        crate::command::run_command_with_timeout(command, "podman", args, timeout)
    }
}

/// Podman, newuidmap, slirp4netns (on the job's `PATH`) and the job user's subordinate ids: what
/// a rootless engine needs.
fn check_machine(user: &JobUser, shell_env: &[(String, String)]) -> Result<(), EngineError> {
    let path = shell_env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", |(_, value)| value.as_str());
    for (program, package) in [
        ("podman", "apt-get install podman"),
        ("newuidmap", "apt-get install uidmap"),
        ("slirp4netns", "apt-get install slirp4netns"),
    ] {
        if crate::command::find_program(program, path).is_none() {
            return Err(EngineError::Missing { program, package });
        }
    }
    for (file, kind) in [("/etc/subuid", "uid"), ("/etc/subgid", "gid")] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let id = if kind == "uid" { user.uid } else { user.gid };
        if !has_subordinate_range(&text, &user.name, id) {
            return Err(EngineError::NoSubordinateIds {
                user: user.name.clone(),
                kind,
                file,
            });
        }
    }
    Ok(())
}

/// `scratch/engine` (the agent's, which the job user may write in through its group, the job
/// user's, and anyone may pass through: Podman makes every directory above a container's state
/// passable for the container's users, and fails where it cannot) holding `dir`, the engine's
/// state (the job user's own), the two configuration files beside them (the agent's: the job
/// cannot change them) and the clients' environment.
fn lay_out(
    user: &JobUser,
    scratch: &Path,
    dir: &Path,
    image_store: Option<&Path>,
    shell_env: &[(String, String)],
) -> Result<Layout, EngineError> {
    let shared = dir.parent().unwrap_or(scratch);
    std::fs::DirBuilder::new()
        .mode(0o2771)
        .create(shared)
        .and_then(|()| std::os::unix::fs::chown(shared, None, Some(user.gid)))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(shared, std::fs::Permissions::from_mode(0o2771))
        })
        .map_err(EngineError::Prepare)?;
    let storage = scratch.join("engine-storage.conf");
    let containers = scratch.join("engine-containers.conf");
    write_config(&storage, &storage_conf(dir, image_store))?;
    write_config(&containers, &containers_conf())?;
    let made = user.run_as(|| {
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        make_runtime_dir()
    });
    let xdg = made
        .map_err(|error| EngineError::Prepare(std::io::Error::other(error.to_string())))?
        .map_err(EngineError::Prepare)?;
    let mut env: Vec<(String, String)> = shell_env
        .iter()
        .filter(|(name, _)| !is_engine_variable(name))
        .cloned()
        .collect();
    for (name, value) in [
        (
            "DOCKER_HOST",
            format!("unix://{}", dir.join("podman.sock").display()),
        ),
        ("CONTAINERS_STORAGE_CONF", storage.display().to_string()),
        ("CONTAINERS_CONF", containers.display().to_string()),
        ("XDG_RUNTIME_DIR", xdg.display().to_string()),
    ] {
        env.push((name.to_string(), value));
    }
    Ok(Layout { env, runtime: xdg })
}

/// What [`lay_out`] made: the clients' environment and the run directory.
struct Layout {
    env: Vec<(String, String)>,
    runtime: PathBuf,
}

/// Where Podman keeps its run state (`XDG_RUNTIME_DIR`): a new private directory of the job
/// user's under `/tmp` (made by that user, so nobody can have prepared it), with a short name,
/// because Podman's own clean-up after a container refuses a run directory of over 50
/// characters (socket paths live under it). Removed with the engine.
fn make_runtime_dir() -> std::io::Result<PathBuf> {
    crate::job::create_unique_dir(Path::new(RUNTIME_PARENT), RUNTIME_PREFIX)
}

fn is_engine_variable(name: &str) -> bool {
    matches!(
        name,
        "DOCKER_HOST"
            | "DOCKER_CONTEXT"
            | "CONTAINERS_STORAGE_CONF"
            | "CONTAINERS_CONF"
            | "CONTAINERS_REGISTRIES_CONF"
            | "XDG_RUNTIME_DIR"
            | "XDG_CONFIG_HOME"
            | "XDG_DATA_HOME"
    )
}

fn write_config(path: &Path, text: &str) -> Result<(), EngineError> {
    secure_fs::write(path, 0o644, Existing::Refuse, text.as_bytes()).map_err(EngineError::Prepare)
}

/// `podman system service --time=0 unix://DIR/podman.sock` as the job user, its output in
/// `DIR/service.log` (the job user's file).
fn spawn_service(
    user: &JobUser,
    dir: &Path,
    env: &[(String, String)],
) -> Result<Child, EngineError> {
    let log_path = dir.join("service.log");
    let log = user
        .run_as(|| secure_fs::create(&log_path, 0o600, Existing::Refuse))
        .map_err(|error| EngineError::Start(std::io::Error::other(error.to_string())))?
        .map_err(EngineError::Start)?;
    let socket = format!("unix://{}", dir.join("podman.sock").display());
    let mut command = Command::new("podman");
    command
        .args(["system", "service", "--time=0", &socket])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        // From `/`: the directory is changed before the child becomes the job user, and the
        // agent itself may not enter the job user's private directories.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().map_err(EngineError::Start)?))
        .stderr(Stdio::from(log));
    as_user(&mut command, user);
    command.spawn().map_err(EngineError::Start)
}

/// Makes `command` start as `user`, in a session of its own (no signal of the agent's terminal
/// reaches it), with no descriptor of the agent's beyond its standard three: whatever the agent
/// inherited without close-on-exec (a parent's pipe) must not reach the engine, whose
/// container monitors would hold it for as long as they live.
fn as_user(command: &mut Command, user: &JobUser) {
    let user = user.for_engine();
    // SAFETY: setsid, close_range and become_in_child make only async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            user.become_in_child()
        });
    }
}

/// Removes everything in `dir` as `user` (whose files they are; the agent may not remove them).
fn remove_entries_as(user: &JobUser, dir: &Path) -> std::io::Result<()> {
    let removed = user.run_as(|| -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            match std::fs::symlink_metadata(&path)?.is_dir() {
                true => std::fs::remove_dir_all(&path)?,
                false => std::fs::remove_file(&path)?,
            }
        }
        Ok(())
    });
    removed.map_err(|error| std::io::Error::other(error.to_string()))?
}

/// Whether the engine at `socket` answers `GET /_ping` with 200.
fn ping(socket: &Path) -> bool {
    answers_ok(socket, "/_ping")
}

/// Whether the engine at `socket` answers `GET path` with 200 (`path` is the agent's, or checked
/// by [`is_image_reference`]).
fn answers_ok(socket: &Path, path: &str) -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Whether `image` is a plain image reference (what may go into a request path as it is).
pub(crate) fn is_image_reference(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 512
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/:@-".contains(&b))
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; always reaped.
fn stop_child(child: &mut Child, grace: Duration) {
    // SAFETY: signalling our own child by its pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_by_name_or_id_and_large_enough() {
        let text = "root:100000:65536\nflotilla-job:165536:65536\n2002:231072:1000\n\nbad line\n";
        let table = [
            ("flotilla-job", 2001, true),
            ("root", 0, true),
            ("other", 2002, false),
            ("nobody", 65534, false),
            ("bad line", 1, false),
        ];
        for (name, id, expected) in table {
            assert_eq!(has_subordinate_range(text, name, id), expected, "{name}");
        }
        assert!(has_subordinate_range(
            "x:1:65536:extra\n2001:1:70000",
            "y",
            2001
        ));
        assert!(!has_subordinate_range("x:1:65536:extra\n", "x", 5));
    }

    #[test]
    fn engine_names_and_image_store() {
        assert_eq!(ContainerEngine::parse("", ""), Some(ContainerEngine::Host));
        assert_eq!(
            ContainerEngine::parse("host", "/x"),
            Some(ContainerEngine::Host)
        );
        assert_eq!(ContainerEngine::parse("docker", ""), None);
        let rootless = |store: &str| {
            ContainerEngine::Rootless(RootlessOptions {
                image_store: Some(PathBuf::from(store)),
            })
        };
        assert_eq!(
            ContainerEngine::parse("rootless", ""),
            Some(rootless(DEFAULT_IMAGE_STORE))
        );
        assert_eq!(
            ContainerEngine::parse("rootless", "/srv/images"),
            Some(rootless("/srv/images"))
        );
    }

    #[test]
    fn configuration_files() {
        let dir = Path::new("/var/tmp/job \"1\"/engine");
        let storage = storage_conf(dir, Some(Path::new("/var/lib/flotilla-images")));
        assert_eq!(
            storage,
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"/var/tmp/job \\\"1\\\"/engine/storage\"\nrunroot = \"/var/tmp/job \\\"1\\\"/engine/run\"\nrootless_storage_path = \"/var/tmp/job \\\"1\\\"/engine/storage\"\n\n[storage.options]\nadditionalimagestores = [\"/var/lib/flotilla-images\"]\n"
        );
        assert!(!storage_conf(dir, None).contains("additionalimagestores"));
        let containers = containers_conf();
        assert!(
            containers.contains("cgroup_manager = \"cgroupfs\"\n"),
            "{containers}"
        );
    }

    #[test]
    fn why_the_engine_did_not_come_up() {
        let waited = Duration::from_secs(30);
        let userns = "Error: cannot set up namespace using \"/usr/bin/newuidmap\": exit status 1";
        let table = [
            (true, userns, "user namespace"),
            (
                false,
                "write to uid_map failed: Operation not permitted",
                "user namespace",
            ),
            (true, "Error: database is locked", "stopped as it started"),
            (false, "(nothing)", "did not answer within 30 s"),
        ];
        for (exited, log, expected) in table {
            let message = diagnose(exited, waited, log.to_string()).to_string();
            assert!(message.contains(expected), "{log}: {message}");
            assert!(message.contains(log), "{message}");
        }
    }

    #[test]
    fn image_references_that_may_go_into_a_path() {
        for good in [
            "postgres:16",
            "nvidia/cuda:12.8.1-base-ubuntu24.04",
            "a.io/b/c@sha256:00ff",
        ] {
            assert!(is_image_reference(good), "{good}");
        }
        for bad in [
            "",
            "a b",
            "x\r\nHost: y",
            "a?b",
            "a#b",
            "a%20b",
            &"a".repeat(513),
        ] {
            assert!(!is_image_reference(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_clients_environment_replaces_engine_variables() {
        assert!(is_engine_variable("DOCKER_HOST"));
        assert!(is_engine_variable("XDG_RUNTIME_DIR"));
        assert!(!is_engine_variable("PATH"));
    }
}
