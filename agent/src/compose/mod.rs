//! The docker-compose executor (docs/protocol.md §8.1): jobs whose request says `"executor":
//! "dockercompose"` run their commands in the first of their containers (`main`), with the others
//! started beside it as services reachable by name.
//!
//! This module prepares and starts the containers and hands back the job's shell; the phases after
//! that (env vars, files, commands, epilogues, `SEMAPHORE_JOB_RESULT`, stop) are the shell
//! executor's own ([`crate::job`]), because the shell is the same [`Shell`] and marker protocol,
//! only started as `<compose> run -T main bash -c ...` instead of `bash --login`. Bash in `main`
//! runs on the agent's own PTY, whose slave side is mounted into the container
//! ([`cli::CONTAINER_TERMINAL`]): the job's output goes from bash to the agent as in a shell job,
//! not through Compose's and the engine's terminal relays (three copies, a third of the speed).
//! The commands and env files reach the container through the job's scratch directory, mounted
//! read-only at its own path. Files are put in place inside the container ([`inject`]).
//!
//! Prepare (upstream's order): host set-up commands on the host (agent log only), the Compose CLI,
//! the agent's `--files`, the compose file ([`file`], pure). Start: image pull credentials
//! ([`credentials`]), `Pulling docker images...`, `Starting the docker image...`. A failure at any
//! step leaves nothing behind: the project is taken down (`down --remove-orphans`) there and then,
//! and at the end of every job.
//!
//! Departures from upstream: each job is a Compose project of its own in its scratch directory
//! (upstream shares `/tmp/docker-compose.yml` and names the container `main`, so two jobs on one
//! machine, or a container a crashed agent left, collide); the job's terminal is the agent's, not
//! one the engine allocates (above; `TERM` is `xterm` as the engine would set it); a pull that
//! fails on the job's own engine gets Podman's own words on why, and a full disk a line saying
//! what to do; no SSH jump point is set up (Flotilla
//! machines take no debug sessions, and upstream's writes to the agent's `authorized_keys`); bad
//! input upstream crashes on or ignores (no containers, an env var that is not base64, GPUs a
//! machine lacks) fails the job with a `Preparing the job executor` line saying why; the shell
//! start gives up after [`SHELL_READY_TIMEOUT`] instead of waiting forever.

pub mod cli;
pub mod credentials;
pub mod engine;
pub mod file;
pub mod inject;

use crate::gpu::Gpu;
use crate::job::{fail_before_shell, JobControl, JobOptions, PREPARE_DIRECTIVE};
use crate::joblog::JobLog;
use crate::shell::{pty, unix_now, Shell, ShellProgram};
use cli::Project;
use engine::{ContainerEngine, JobEngine};
pub use file::ContainerGpus;
use protocol::JobRequest;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

pub(crate) const PULL_DIRECTIVE: &str = "Pulling docker images...";
pub(crate) const START_DIRECTIVE: &str = "Starting the docker image...";
/// How long bash in `main` may take to answer once the images are here.
pub(crate) const SHELL_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Lines of the docker CLI that mean no shell is coming (docs/protocol.md §5.7).
const REFUSE: &[&str] = &[
    "executable file not found",
    "is already in use by container",
    PODMAN_ATTACH_REFUSED,
    cli::TERMINAL_REFUSED,
];
/// Podman's Docker API refuses the attach to a container that exited at once (its own words on
/// why are lost behind it).
const PODMAN_ATTACH_REFUSED: &str = "unable to upgrade to tcp, received 409";
/// The pull's line when every image is baked into the machine's image store.
pub const BAKED_LINE: &str =
    "Every image of the job is in this machine's image store: nothing to pull.";
/// The job log's explanation of [`PODMAN_ATTACH_REFUSED`].
pub const PODMAN_ATTACH_HINT: &str = "The container of the job's first image exited as soon as it started. The usual cause: the image has no bash, which runs the job's commands (an image such as Alpine's needs bash added).";

/// What container jobs take from the agent's configuration.
#[derive(Debug, Clone, Default)]
pub struct ComposeOptions {
    /// `--files`: `(host path, path in main)`, mounted into `main`.
    pub files: Vec<(String, String)>,
    /// `--fail-on-missing-files`: a missing `--files` host path fails the job.
    pub fail_on_missing_files: bool,
    /// `--container-gpus`.
    pub gpus: ContainerGpus,
    /// This machine's GPUs (the agent's inventory).
    pub host_gpus: Vec<Gpu>,
    /// `container-engine`: the machine's Docker or a rootless engine of the job's own.
    pub engine: ContainerEngine,
    /// `container-pull-stall-timeout`: how long the pull may go without a line of output before
    /// it is stopped and the job fails ([`DEFAULT_PULL_STALL`] when `None`).
    pub pull_stall_timeout: Option<Duration>,
}

/// The engine's words (the kernel's `ENOSPC`) when the pull ran out of disk.
const DISK_FULL: &str = "no space left on device";
/// The job log's line after a pull that failed with [`DISK_FULL`].
pub const DISK_FULL_HINT: &str = "The pull ran out of disk space on this machine. Use smaller images, bake the big ones into the machine's image (the Packer variable engine_images), or give the agent type a larger disk (the stack's RootVolumeSize).";

/// A pull that prints nothing for this long is stuck (a registry that accepts and never answers):
/// Compose prints progress lines while layers move.
pub(crate) const DEFAULT_PULL_STALL: Duration = Duration::from_secs(600);

/// A container job's Compose project and, with `container-engine: rootless`, its own engine.
#[derive(Debug)]
pub struct Containers {
    pub project: Project,
    pub engine: Option<JobEngine>,
}

impl Containers {
    /// The environment the Compose CLI runs with: the job's, plus the engine's own.
    fn client_env<'a>(&'a self, options: &'a JobOptions) -> &'a [(String, String)] {
        match &self.engine {
            Some(engine) => engine.env(),
            None => &options.shell_env,
        }
    }

    /// Who runs the Compose CLI: the job user for a job's own engine (its socket is that user's
    /// alone), the agent for the machine's Docker.
    fn client_user(&self) -> Option<&crate::job_user::JobUser> {
        self.engine.as_ref().map(JobEngine::user)
    }

    /// The socket `main` gets at `/var/run/docker.sock` (upstream mounts the machine's).
    fn socket(&self) -> std::path::PathBuf {
        match &self.engine {
            Some(engine) => engine.socket(),
            None => std::path::PathBuf::from("/var/run/docker.sock"),
        }
    }

    /// Takes everything down: the project on the machine's Docker, or the job's whole engine.
    pub fn down(self) {
        match self.engine {
            Some(engine) => engine.tear_down(),
            None => self.project.down(),
        }
    }
}

/// Prepares and starts the job's containers and returns the shell in `main` with what to take
/// down at the end; `None` when the job cannot run (the job log says why, except where upstream
/// logs to the agent only, and nothing is left running).
pub fn start(
    request: &JobRequest,
    options: &JobOptions,
    log: &JobLog,
    control: &JobControl,
    scratch: &Path,
) -> Option<(Shell, Containers)> {
    let project = prepare(request, options, log, scratch)?;
    let containers = Containers {
        project,
        engine: start_engine(options, log, scratch)?,
    };
    match start_containers(request, options, log, control, scratch, &containers) {
        Some(shell) => Some((shell, containers)),
        None => {
            containers.down();
            None
        }
    }
}

/// The engine of a shell job on `container-engine: rootless`, so that its `docker` (and `podman`)
/// commands have an engine of the job's own (`DOCKER_HOST` in the job's environment); `None` for
/// the machine's Docker, and where the engine cannot start (the agent log says why; the job runs
/// all the same, since it may not need one).
pub(crate) fn start_shell_engine(options: &JobOptions, scratch: &Path) -> Option<JobEngine> {
    let ContainerEngine::Rootless(rootless) = &options.compose.engine else {
        return None;
    };
    if let Err(error) = share_scratch(scratch) {
        tracing::error!("The job's container engine cannot use the scratch directory: {error}");
        return None;
    }
    let user = options.job_user.as_ref();
    match JobEngine::start(rootless, user, scratch, &options.shell_env) {
        Ok(engine) => Some(engine),
        Err(error) => {
            tracing::error!("The job's container engine did not start, docker commands in the job will fail: {error}");
            None
        }
    }
}

/// Lets anyone pass through the scratch directory (not list it): a container's user may be
/// anyone and reaches the command and env files by name, and the engine makes every directory
/// above a container's state passable.
fn share_scratch(scratch: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(scratch)?.permissions().mode();
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(mode | 0o011))
}

/// The job's own engine, for `container-engine: rootless`; `Some(None)` for the machine's Docker.
fn start_engine(options: &JobOptions, log: &JobLog, scratch: &Path) -> Option<Option<JobEngine>> {
    let ContainerEngine::Rootless(rootless) = &options.compose.engine else {
        return Some(None);
    };
    let started = std::time::Instant::now();
    let user = options.job_user.as_ref();
    match JobEngine::start(rootless, user, scratch, &options.shell_env) {
        Ok(engine) => {
            tracing::info!(
                "The job's container engine answered in {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
            Some(Some(engine))
        }
        Err(error) => {
            tracing::error!("Error starting the job's container engine: {error}");
            fail_before_shell(log, PREPARE_DIRECTIVE, &error.to_string());
            None
        }
    }
}

/// Prepare: host commands, the Compose CLI, the agent's files, the compose file.
fn prepare(
    request: &JobRequest,
    options: &JobOptions,
    log: &JobLog,
    scratch: &Path,
) -> Option<Project> {
    let fail = |message: String| {
        fail_before_shell(log, PREPARE_DIRECTIVE, &message);
        None
    };
    if let Err(error) = share_scratch(scratch) {
        return fail(format!(
            "Failed to share the scratch directory with the containers: {error}"
        ));
    }
    if let (ContainerEngine::Host, Some(message)) =
        (&options.compose.engine, docker_refused(options))
    {
        return fail(message);
    }
    run_host_commands(request, options).ok()?;
    let cli = match cli::find() {
        Ok(cli) => cli,
        Err(error) => {
            tracing::error!("Error finding docker compose: {error}");
            return fail(format!(
                "Docker Compose is not available on this machine: {error}"
            ));
        }
    };
    tracing::info!("Using Docker Compose version {}", cli.version);
    let host_files = existing_files(&options.compose)?;
    let input = file::ComposeInput {
        containers: &request.compose.containers,
        host_files: &host_files,
        gpu_mode: options.compose.gpus,
        host_gpus: &options.compose.host_gpus,
        dialect: match options.compose.engine {
            ContainerEngine::Host => file::Dialect::Docker,
            ContainerEngine::Rootless(_) => file::Dialect::Podman,
        },
    };
    let text = match file::compose_file(&input) {
        Ok(text) => text,
        Err(error) => return fail(error.to_string()),
    };
    tracing::debug!("Compose file:\n{text}");
    let path = scratch.join("docker-compose.yml");
    if let Err(error) = write_shared(&path, text.as_bytes()) {
        tracing::error!("Error writing docker compose manifest file: {error}");
        return fail(format!("Failed to write the compose file: {error}"));
    }
    Some(Project {
        cli,
        file: path,
        name: project_name(&request.job_id),
        main: request.compose.containers[0].name.clone(),
    })
}

/// Why the job user cannot drive Docker, when it cannot: container jobs run the Docker CLI as the
/// job user, which needs the Docker socket (on the AMI: the stack's JobDockerAccess, which is
/// root-equivalent). A `DOCKER_HOST` other than the local socket is left to the CLI.
fn docker_refused(options: &JobOptions) -> Option<String> {
    let user = options.job_user.as_ref()?;
    let docker_host = options
        .shell_env
        .iter()
        .find(|(name, _)| name == "DOCKER_HOST")
        .map(|(_, value)| value.as_str());
    let socket = match docker_host {
        None | Some("") => "/var/run/docker.sock",
        Some(host) => host.strip_prefix("unix://")?,
    };
    (!user.may_use(Path::new(socket))).then(|| {
        format!(
            "Container jobs need Docker, but the job user '{}' cannot use {socket}. Run the agent \
             with container-engine: rootless (the job's own engine, the Flotilla stack's default), \
             or on a Flotilla stack set JobDockerAccess=true (membership of the docker group is \
             root on this machine).",
            user.name
        )
    })
}

/// A Compose project name of this job's own: lowercase letters, digits and dashes.
pub(crate) fn project_name(job_id: &str) -> String {
    let id: String = job_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .take(36)
        .collect();
    format!("flotilla-{id}-{:08x}", rand::random::<u32>())
}

/// `compose.host_setup_commands`, each `bash -c` on the host (as the job user when there is one);
/// output to the agent log only; the first failure fails the job (docs/protocol.md §8.1).
fn run_host_commands(request: &JobRequest, options: &JobOptions) -> Result<(), ()> {
    for command in &request.compose.host_setup_commands {
        tracing::debug!("Executing Host Command: {}", command.directive);
        let mut process = std::process::Command::new("bash");
        process
            .arg("-c")
            .arg(&command.directive)
            .env_clear()
            .envs(options.shell_env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        if let Some(user) = options.job_user.clone() {
            use std::os::unix::process::CommandExt;
            // SAFETY: become_in_child makes only async-signal-safe system calls.
            unsafe {
                process.pre_exec(move || user.become_in_child());
            }
        }
        match process.output() {
            Ok(output) if output.status.success() => {
                tracing::debug!("{}", String::from_utf8_lossy(&output.stdout));
            }
            Ok(output) => {
                tracing::error!(
                    "Error: host setup command exited with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                return Err(());
            }
            Err(error) => {
                tracing::error!("Error: {error}");
                return Err(());
            }
        }
    }
    Ok(())
}

/// The agent's `--files` whose host path exists; a missing one is skipped with a warning, or with
/// `fail-on-missing-files` fails the job (agent log only, as upstream).
fn existing_files(options: &ComposeOptions) -> Option<Vec<(String, String)>> {
    let mut found = Vec::new();
    for (host, destination) in &options.files {
        match std::fs::metadata(host) {
            Ok(_) => found.push((host.clone(), destination.clone())),
            Err(error) if options.fail_on_missing_files => {
                tracing::error!("Error injecting files: stat {host}: {error}");
                return None;
            }
            Err(error) => {
                tracing::warn!("Error injecting file {host} - ignoring it: stat {host}: {error}")
            }
        }
    }
    Some(found)
}

fn start_containers(
    request: &JobRequest,
    options: &JobOptions,
    log: &JobLog,
    control: &JobControl,
    scratch: &Path,
    containers: &Containers,
) -> Option<Shell> {
    let credentials = &request.compose.image_pull_credentials;
    let login = credentials::Login {
        env: containers.client_env(options),
        user: containers.client_user(),
    };
    if !credentials.is_empty() && credentials::set_up(credentials, &login, log) != 0 {
        tracing::error!("Failed to set up image pull secrets");
        return None;
    }
    let images: Vec<&str> = request
        .compose
        .containers
        .iter()
        .map(|c| c.image.as_str())
        .collect();
    let baked = containers
        .engine
        .as_ref()
        .is_some_and(|engine| engine.has_images(images.iter().copied()));
    let pulled = match baked {
        true => nothing_to_pull(log),
        false => pull(&images, containers, options, log, control),
    };
    if control.is_stopped() || pulled != 0 {
        tracing::error!("Failed to pull images");
        return None;
    }
    if control.is_stopped() {
        return None;
    }
    start_shell(containers, options, log, scratch)
}

/// `Pulling docker images...`: `run --rm main true` in a PTY, every line of its output logged.
fn pull(
    request_images: &[&str],
    containers: &Containers,
    options: &JobOptions,
    log: &JobLog,
    control: &JobControl,
) -> i32 {
    let started_at = unix_now();
    log.cmd_started(PULL_DIRECTIVE);
    let pull = containers.project.pull_command();
    let command = Client {
        command: &pull,
        env: containers.client_env(options),
        user: containers.client_user(),
    };
    let stall = options
        .compose
        .pull_stall_timeout
        .unwrap_or(DEFAULT_PULL_STALL);
    let mut disk_full = false;
    let exit = match run_in_pty(&command, control, stall, &mut |line| {
        disk_full |= line.contains(DISK_FULL);
        log.cmd_output(format!("{line}\n").as_bytes())
    }) {
        Ok(PtyEnd::Exited(true)) => 0,
        Ok(PtyEnd::Exited(false)) => {
            explain_failed_pull(request_images, containers, stall, disk_full, log);
            1
        }
        Ok(PtyEnd::Stalled) => {
            let message = format!(
                "The pull printed nothing for {} s and was stopped: a registry that does not answer? Check the image names and this machine's network (or raise container-pull-stall-timeout).",
                stall.as_secs()
            );
            log.cmd_output(format!("{message}\n").as_bytes());
            1
        }
        Err(error) => {
            tracing::error!("Failed to initialize docker pull, err: {error}");
            1
        }
    };
    tracing::info!("Docker pull finished. Exit Code: {exit}");
    log.cmd_finished(PULL_DIRECTIVE, exit, started_at, unix_now());
    exit
}

/// After a failed pull: on the job's own engine, Podman's own words on why (what Compose 1 does not
/// pass on), and a line saying what to do when the disk is full.
fn explain_failed_pull(
    images: &[&str],
    containers: &Containers,
    timeout: Duration,
    mut disk_full: bool,
    log: &JobLog,
) {
    if let Some(engine) = containers.engine.as_ref().filter(|_| !disk_full) {
        if let Some(words) = engine.pull_error(images.iter().copied(), timeout) {
            log.cmd_output(format!("The job's container engine: {words}\n").as_bytes());
            disk_full = words.contains(DISK_FULL);
        }
    }
    if disk_full {
        log.cmd_output(format!("{DISK_FULL_HINT}\n").as_bytes());
    }
}

/// `Pulling docker images...` when every image is baked into the job's engine: no `run` (the
/// shell's own `run` starts the services), a line that says why.
fn nothing_to_pull(log: &JobLog) -> i32 {
    let started_at = unix_now();
    log.cmd_started(PULL_DIRECTIVE);
    log.cmd_output(format!("{BAKED_LINE}\n").as_bytes());
    log.cmd_finished(PULL_DIRECTIVE, 0, started_at, unix_now());
    0
}

/// A Compose CLI call: its arguments (program first), environment and user.
struct Client<'a> {
    command: &'a [String],
    env: &'a [(String, String)],
    user: Option<&'a crate::job_user::JobUser>,
}

/// How a command in a PTY ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PtyEnd {
    /// It exited: whether with 0.
    Exited(bool),
    /// It printed nothing for the stall time and was killed.
    Stalled,
}

/// Runs the client's command in a PTY of its own (as its user), each output line (without its
/// line end) to `on_line`. A stop kills it, and so does `stall` without a byte of output.
fn run_in_pty(
    client: &Client<'_>,
    control: &JobControl,
    stall: Duration,
    on_line: &mut dyn FnMut(&str),
) -> std::io::Result<PtyEnd> {
    let terminal = pty::open_pty()?;
    let command = client.command;
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    let mut child = pty::spawn_in_pty_as(&terminal, &command[0], &args, client.env, client.user)?;
    drop(terminal.slave);
    control.attach(child.id() as i32, client.user);
    let watchdog = Watchdog::start(child.id() as i32, stall);
    let mut reader = std::io::BufReader::new(terminal.master);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                watchdog.fed();
                let text = String::from_utf8_lossy(&line);
                on_line(text.trim_end_matches(['\n', '\r']));
            }
            // EIO: every slave fd is closed, the command is done.
            Err(_) => break,
        }
    }
    let status = child.wait();
    control.detach();
    let stalled = watchdog.finish();
    match stalled {
        true => Ok(PtyEnd::Stalled),
        false => Ok(PtyEnd::Exited(status?.success())),
    }
}

/// Kills a PTY session that has printed nothing for its stall time.
struct Watchdog {
    state: std::sync::Arc<WatchdogState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WatchdogState {
    fed_at: std::sync::Mutex<std::time::Instant>,
    done: std::sync::atomic::AtomicBool,
    fired: std::sync::atomic::AtomicBool,
}

impl Watchdog {
    fn start(session: i32, stall: Duration) -> Watchdog {
        use std::sync::atomic::Ordering;
        let state = std::sync::Arc::new(WatchdogState {
            fed_at: std::sync::Mutex::new(std::time::Instant::now()),
            done: Default::default(),
            fired: Default::default(),
        });
        let watched = state.clone();
        let thread = std::thread::spawn(move || {
            while !watched.done.load(Ordering::SeqCst) {
                let fed_at = *watched.fed_at.lock().unwrap_or_else(|p| p.into_inner());
                if fed_at.elapsed() > stall {
                    watched.fired.store(true, Ordering::SeqCst);
                    pty::kill_session(session);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watchdog {
            state,
            thread: Some(thread),
        }
    }

    fn fed(&self) {
        *self.state.fed_at.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    /// Stops watching; whether it fired.
    fn finish(mut self) -> bool {
        use std::sync::atomic::Ordering;
        self.state.done.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.state.fired.load(Ordering::SeqCst)
    }
}

/// `Starting the docker image...`: bash in `main`, through the Compose CLI in the job's PTY.
fn start_shell(
    containers: &Containers,
    options: &JobOptions,
    log: &JobLog,
    scratch: &Path,
) -> Option<Shell> {
    let started_at = unix_now();
    log.cmd_started(START_DIRECTIVE);
    log.cmd_output(b"Starting a new bash session.\n");
    tracing::debug!("Starting stateful shell");
    let (exit, shell) = match open_shell(containers, options, scratch) {
        Ok(shell) => (0, Some(shell)),
        Err(error) => {
            tracing::error!("Failed to start stateful shell err: {error}");
            log.cmd_output(b"Failed to start the docker image\n");
            log.cmd_output(format!("{error}\n").as_bytes());
            if let Some(hint) = start_hint(&error.to_string()) {
                log.cmd_output(format!("{hint}\n").as_bytes());
            }
            (1, None)
        }
    };
    log.cmd_finished(START_DIRECTIVE, exit, started_at, unix_now());
    shell
}

/// Bash in `main` on a terminal of the agent's own: the PTY is opened here, its slave side shared
/// by name and mounted into `main`, and the Compose CLI writes its own lines (a refusal, an
/// entrypoint's output) to it without holding it as its terminal ([`pty::Attach::OutputOnly`]).
fn open_shell(
    containers: &Containers,
    options: &JobOptions,
    scratch: &Path,
) -> Result<Shell, crate::shell::StartError> {
    let terminal = pty::open_pty()?;
    let slave = terminal.share_slave()?;
    let command = containers
        .project
        .shell_command(scratch, &containers.socket(), &slave);
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    let program = ShellProgram {
        program: &command[0],
        args: &args,
        refuse: REFUSE,
        command_file_mode: 0o644,
        user: options.job_user.as_ref(),
        ready_timeout: Some(SHELL_READY_TIMEOUT),
        attach: pty::Attach::OutputOnly,
    };
    let env = containers.client_env(options);
    Shell::start_program_on(terminal, &program, env, scratch)
}

/// What to tell the job about a shell that did not start, beyond the engine's own words.
fn start_hint(error: &str) -> Option<&'static str> {
    if error.contains(PODMAN_ATTACH_REFUSED) {
        Some(PODMAN_ATTACH_HINT)
    } else if error.contains(cli::TERMINAL_REFUSED) {
        Some(TERMINAL_HINT)
    } else {
        None
    }
}

/// The job log's explanation of [`cli::TERMINAL_REFUSED`].
pub(crate) const TERMINAL_HINT: &str = "Bash in the job's first container could not open the job's terminal (mounted at /dev/flotilla-tty): the image's user lacks the access the agent gave it, or a security profile forbids it.";

/// Writes the compose file for the job's docker CLI (the agent, or the job user through the
/// scratch directory's group); it holds the containers' env vars, so nobody else may read it.
fn write_shared(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::secure_fs::write(path, 0o640, crate::secure_fs::Existing::Refuse, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_that_did_not_start_gets_the_hint_for_its_cause() {
        let table = [
            (
                "bash: line 1: /dev/flotilla-tty: Permission denied",
                Some(TERMINAL_HINT),
            ),
            (
                "Error: unable to upgrade to tcp, received 409",
                Some(PODMAN_ATTACH_HINT),
            ),
            ("exec: \"bash\": executable file not found in $PATH", None),
            ("/dev/flotilla-tty", None),
        ];
        for (error, hint) in table {
            assert_eq!(start_hint(error), hint, "{error}");
        }
    }

    #[test]
    fn project_names_are_compose_safe_and_unique() {
        let a = project_name("Job_42/ABC-def");
        let b = project_name("Job_42/ABC-def");
        assert!(a.starts_with("flotilla-job42abc-def-"), "{a}");
        assert_ne!(a, b);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
    }
}
