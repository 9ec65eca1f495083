//! Runs one job with the shell executor, phase by phase as upstream does (docs/protocol.md
//! §5.2–§5.6): export env vars → inject files → pre-job hook → commands → [SEMAPHORE_JOB_RESULT →
//! epilogues] → post-job hook → `job_finished`. Every event goes to the [`JobLog`].
//!
//! Departures from upstream, each fixing a documented bug without changing what a well-formed
//! job logs: `~` is expanded only as a leading `~` / `~user` (§5.4); a decode error or a missing
//! `$HOME` still closes the "Injecting Files" command with `cmd_finished`; the job's whole
//! session is killed on stop and at the end (no leaked background processes); the job shell
//! never sees the agent's `SEMAPHORE_AGENT_*` settings (tokens included).

use crate::job_role::Caller;
use crate::job_user::JobUser;
use crate::joblog::JobLog;
use crate::shell::{shell_quote_bytes, unix_now, Shell};
use protocol::{Command, JobRequest, JobResult};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub(crate) const EXPORT_DIRECTIVE: &str = "Exporting environment variables";
pub(crate) const INJECT_DIRECTIVE: &str = "Injecting Files";
pub(crate) const PRE_HOOK_ALIAS: &str = "Running the pre-job hook configured in the agent";
pub(crate) const POST_HOOK_ALIAS: &str = "Running the post-job hook configured in the agent";
pub(crate) const CHECK_RESULT_DIRECTIVE: &str = "Checking job result";
/// The directive of a job that fails before it has a shell (bad executor, bad containers).
pub(crate) const PREPARE_DIRECTIVE: &str = "Preparing the job executor";
/// Agent log line (followed by the duration) once the job's bash is ready for commands.
pub const SHELL_READY_LOG: &str = "Job shell (bash --login in a PTY) ready in";
/// Exit code with which a command reports Ctrl-C (or `exit 130`): "stop the job" (docs/protocol.md
/// §5.6b).
pub(crate) const MANUAL_STOP_EXIT_CODE: i32 = 130;

/// How the agent runs jobs (from its configuration).
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// `--env-vars`: exported into every job, overriding the job's own values.
    pub agent_env_vars: Vec<(String, String)>,
    pub pre_job_hook_path: String,
    pub post_job_hook_path: String,
    pub fail_on_pre_job_hook_error: bool,
    pub source_pre_job_hook: bool,
    /// The environment bash starts with (see [`job_environment`]).
    pub shell_env: Vec<(String, String)>,
    /// Where per-job scratch files (command file, env files) go.
    pub scratch_root: PathBuf,
    /// Run the job as this unprivileged user ([`crate::job_user`]); `None`: as the agent.
    pub job_user: Option<JobUser>,
    /// How container jobs (`dockercompose`) run: `--files`, GPUs ([`crate::compose`]).
    pub compose: crate::compose::ComposeOptions,
    /// `job-role-arn`: short-lived credentials of the stack's job role for each job
    /// ([`crate::job_role`]); `None`: the job gets no AWS credentials from the agent.
    pub job_role: Option<crate::job_role::JobRole>,
    /// Debug jobs: a failed job's scratch directory (its environment files) is kept, not removed.
    pub keep_failed_scratch: bool,
    /// `job-cgroups`: where each job (with a job user) gets a cgroup of its own.
    pub job_cgroups: Option<crate::job_cgroup::JobCgroups>,
}

/// The agent's environment without its own configuration and secrets: every `SEMAPHORE_AGENT_*`
/// variable is removed (upstream hands the registration token to every job, docs/protocol.md §1.4).
pub fn job_environment(
    agent_env: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    agent_env
        .into_iter()
        .filter(|(name, _)| !name.starts_with("SEMAPHORE_AGENT_"))
        .collect()
}

/// Lets another thread stop the job (server `stop-job`, shutdown) at any phase.
#[derive(Debug, Default)]
pub struct JobControl {
    stopped: AtomicBool,
    session: Mutex<Option<(i32, Option<JobUser>)>>,
    /// Why the machine stopped the job, when a hardware fault did (the job's log says so).
    fault: Mutex<Option<String>>,
}

impl JobControl {
    pub fn new() -> JobControl {
        JobControl::default()
    }

    /// Marks the job stopped and kills its shell session, if it has one yet; a shell that starts
    /// later is killed as soon as it is attached.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let session = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((session, user)) = session {
            kill_job(session, user.as_ref());
        }
    }

    /// Stops the job because the machine failed (`reason`, e.g. a GPU's Xid 79): the job's log
    /// ends with the reason, so no one reads the stop as the job's own failure.
    pub fn stop_for_fault(&self, reason: &str) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        self.stop();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub(crate) fn attach(&self, session: i32, user: Option<&JobUser>) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some((session, user.cloned()));
        if self.is_stopped() {
            kill_job(session, user);
        }
    }

    pub(crate) fn detach(&self) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Kills the job's session and, when it runs as a job user, every process of that user (an agent
/// without `CAP_KILL` cannot signal them itself, and a job may have left its session).
fn kill_job(session: i32, user: Option<&JobUser>) {
    crate::shell::pty::kill_session(session);
    if let Some(user) = user {
        user.kill_all();
    }
}

/// Why a job cannot be run by this agent at all.
pub(crate) fn unsupported_executor(request: &JobRequest) -> Option<String> {
    match request.executor.as_str() {
        "" | "shell" | "dockercompose" => None,
        other => Some(format!("Unknown executor type '{other}': this agent supports the shell and dockercompose executors.")),
    }
}

/// Runs the job to its end and returns its result. `job_finished` is the last event logged.
pub fn run_job(
    request: &JobRequest,
    options: &JobOptions,
    log: &JobLog,
    control: &JobControl,
) -> JobResult {
    log.job_started();
    if request.executor.is_empty() {
        tracing::info!("No executor specified - using shell executor");
    }
    if let Some(message) = unsupported_executor(request) {
        fail_before_shell(log, PREPARE_DIRECTIVE, &message);
        log.job_finished(JobResult::Failed);
        return JobResult::Failed;
    }
    let scratch = match make_scratch_dir(
        &options.scratch_root,
        &request.job_id,
        options.job_user.as_ref(),
    ) {
        Ok(dir) => dir,
        Err(error) => {
            fail_before_shell(
                log,
                "Starting the job shell",
                &format!("Failed to create a scratch directory: {error}"),
            );
            log.job_finished(JobResult::Failed);
            return JobResult::Failed;
        }
    };
    // How the job is stopped, made before it runs: its cgroup (every process of the job user
    // joins it, and it is killed as one), or a killer thread it cannot signal.
    let for_this_job;
    let options = match stoppable(request, options) {
        Ok(Some(with_cgroup)) => {
            for_this_job = with_cgroup;
            &for_this_job
        }
        Ok(None) => options,
        Err(error) => {
            fail_before_shell(log, PREPARE_DIRECTIVE, &error);
            log.job_finished(JobResult::Failed);
            let _ = std::fs::remove_dir_all(&scratch);
            return JobResult::Failed;
        }
    };
    // The job's credentials are valid from here until the grant is dropped, after the job.
    let grant = match (&options.job_role, credentials_caller(request, options)) {
        (Some(role), Some(caller)) => role.grant(request, options.job_user.as_ref(), caller),
        _ => None,
    };
    let granted_options;
    let options = match &grant {
        Some(grant) => {
            granted_options = with_agent_env(options, &grant.env);
            &granted_options
        }
        None => options,
    };
    let result = if control.is_stopped() {
        log.job_finished(JobResult::Stopped);
        JobResult::Stopped
    } else {
        run_in_shell(request, options, log, control, &scratch)
    };
    drop(grant);
    // A failed job's environment files stay for a debug session (`flotilla-debug-job`).
    if result == JobResult::Failed && options.keep_failed_scratch {
        tracing::info!("Keeping the failed job's files in {}", scratch.display());
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

/// `options` whose job user is in a new cgroup of this job's (`job-cgroups`) or has a killer of
/// this job's; `None` without a job user.
fn stoppable(request: &JobRequest, options: &JobOptions) -> Result<Option<JobOptions>, String> {
    let Some(user) = &options.job_user else {
        return Ok(None);
    };
    let mut user = user.clone();
    match &options.job_cgroups {
        Some(cgroups) => {
            let cgroup = cgroups.create(&request.job_id).map_err(|e| e.to_string())?;
            user.cgroup = Some(crate::job_user::PerJob::new(cgroup));
        }
        None => {
            let killer = crate::job_user::Killer::spawn(user.uid)
                .map_err(|error| format!("cannot prepare stopping the job: {error}"))?;
            user.killer = Some(crate::job_user::PerJob::new(killer));
        }
    }
    let mut options = options.clone();
    options.job_user = Some(user);
    Ok(Some(options))
}

/// Where the job calls the credential endpoint from: the machine (a shell job), `main` on the
/// job's rootless engine, or nowhere (containers on the machine's Docker come from its bridge,
/// which no local user owns: see [`crate::job_role`]).
fn credentials_caller(request: &JobRequest, options: &JobOptions) -> Option<Caller> {
    match (request.executor == "dockercompose", &options.compose.engine) {
        (false, _) => Some(Caller::Host),
        (true, crate::compose::engine::ContainerEngine::Rootless(_)) => Some(Caller::Container),
        (true, crate::compose::engine::ContainerEngine::Host) => None,
    }
}

/// `options` with `env` among the agent's env vars (exported into the job over its own values).
fn with_agent_env(options: &JobOptions, env: &[(String, String)]) -> JobOptions {
    let mut options = options.clone();
    options.agent_env_vars.extend(env.iter().cloned());
    options
}

/// Starts the job's shell (bash, or bash in the job's container) and runs the job in it.
fn run_in_shell(
    request: &JobRequest,
    options: &JobOptions,
    log: &JobLog,
    control: &JobControl,
    scratch: &Path,
) -> JobResult {
    let shell_starting = std::time::Instant::now();
    let user = options.job_user.as_ref();
    match start_shell(request, options, log, control, scratch) {
        Ok((shell, teardown)) => {
            tracing::info!(
                "{SHELL_READY_LOG} {:.1} ms",
                shell_starting.elapsed().as_secs_f64() * 1000.0
            );
            control.attach(shell.session_id(), user);
            let mut runner = Runner {
                request,
                options,
                log,
                control,
                shell,
                scratch,
                container: match &teardown {
                    Teardown::Containers(containers) => Some(&containers.project),
                    _ => None,
                },
            };
            let result = runner.run();
            runner.shell.close();
            if let Some(user) = user {
                user.kill_all();
            }
            control.detach();
            teardown.run();
            result
        }
        Err(NoShell::Containers) => {
            let result = match control.is_stopped() {
                true => JobResult::Stopped,
                false => JobResult::Failed,
            };
            log.job_finished(result);
            result
        }
        Err(NoShell::Bash(error)) => {
            fail_before_shell(
                log,
                "Starting the job shell",
                &format!("Failed to start bash: {error}"),
            );
            log.job_finished(JobResult::Failed);
            JobResult::Failed
        }
    }
}

/// Why a job has no shell; the container case has said why in the job log already.
enum NoShell {
    Bash(std::io::Error),
    Containers,
}

/// What to take down when the job's shell is done.
enum Teardown {
    Nothing,
    /// A container job's project (and its engine, on the rootless engine).
    Containers(crate::compose::Containers),
    /// A shell job's own container engine.
    Engine(crate::compose::engine::JobEngine),
}

impl Teardown {
    fn run(self) {
        match self {
            Teardown::Nothing => {}
            Teardown::Containers(containers) => containers.down(),
            Teardown::Engine(engine) => engine.tear_down(),
        }
    }
}

/// The job's shell: bash in a PTY (with an engine of the job's own on `container-engine:
/// rootless`), or for `dockercompose` bash in the job's `main` container, with what to take down
/// at the end.
fn start_shell(
    request: &JobRequest,
    options: &JobOptions,
    log: &JobLog,
    control: &JobControl,
    scratch: &Path,
) -> Result<(Shell, Teardown), NoShell> {
    if request.executor == "dockercompose" {
        return crate::compose::start(request, options, log, control, scratch)
            .map(|(shell, containers)| (shell, Teardown::Containers(containers)))
            .ok_or(NoShell::Containers);
    }
    let engine = crate::compose::start_shell_engine(options, scratch);
    let env = engine.as_ref().map_or(&options.shell_env[..], |e| e.env());
    match Shell::start(env, scratch, options.job_user.as_ref()) {
        Ok(shell) => Ok((shell, engine.map_or(Teardown::Nothing, Teardown::Engine))),
        Err(error) => {
            if let Some(engine) = engine {
                engine.tear_down();
            }
            Err(NoShell::Bash(error))
        }
    }
}

pub(crate) fn fail_before_shell(log: &JobLog, directive: &str, message: &str) {
    let started_at = unix_now();
    log.cmd_started(directive);
    log.cmd_output(format!("{message}\n").as_bytes());
    log.cmd_finished(directive, 1, started_at, unix_now());
}

/// A new private directory for the job's scratch files: 0700, or with a job user 2750 and that
/// user's group, so the job's shell can read the command files the agent writes but not change
/// them.
fn make_scratch_dir(root: &Path, job_id: &str, user: Option<&JobUser>) -> std::io::Result<PathBuf> {
    let dir = make_private_dir(root, job_id)?;
    if let Some(user) = user {
        let shared = std::os::unix::fs::chown(&dir, None, Some(user.gid))
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2750)));
        if let Err(error) = shared {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(error);
        }
    }
    Ok(dir)
}

fn make_private_dir(root: &Path, job_id: &str) -> std::io::Result<PathBuf> {
    let safe_id: String = job_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    create_unique_dir(root, &format!("flotilla-job-{safe_id}-"))
}

/// A new directory `root/<prefix><8 random hex digits>`, mode 0700, that did not exist before
/// (so nobody can have prepared it), trying 16 names.
pub(crate) fn create_unique_dir(root: &Path, prefix: &str) -> std::io::Result<PathBuf> {
    for _ in 0..16 {
        let dir = root.join(format!("{prefix}{:08x}", rand::random::<u32>()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(std::io::Error::other(
        "could not pick a unique directory name",
    ))
}

/// The job log's directive when the kernel killed a process of the job for lack of memory.
pub(crate) const OUT_OF_MEMORY_DIRECTIVE: &str = "The job ran out of memory";
/// The pseudo-command under which a job's log says a hardware fault stopped it.
pub(crate) const FAULT_DIRECTIVE: &str = "The machine failed";

struct Runner<'a> {
    request: &'a JobRequest,
    options: &'a JobOptions,
    log: &'a JobLog,
    control: &'a JobControl,
    shell: Shell,
    scratch: &'a Path,
    /// The Compose project of a container job (files are injected inside the container).
    container: Option<&'a crate::compose::cli::Project>,
}

impl Runner<'_> {
    /// When the kernel killed processes of the job for lack of memory (its cgroup's count), the
    /// job log says so in a step of its own, failed, so the reason is not a bare exit code 137.
    fn report_out_of_memory(&self) {
        let Some(cgroup) = self
            .options
            .job_user
            .as_ref()
            .and_then(|u| u.cgroup.as_ref())
        else {
            return;
        };
        let kills = cgroup.0.oom_kills();
        if kills == 0 {
            return;
        }
        let limit = match cgroup.0.memory_max() {
            Some(bytes) => format!("its limit, {} MiB (job-memory-max)", bytes >> 20),
            None => "the machine's memory".to_string(),
        };
        let started_at = unix_now();
        self.log.cmd_started(OUT_OF_MEMORY_DIRECTIVE);
        self.log.cmd_output(
            format!("The kernel killed {kills} process(es) of the job: it used more than {limit}. Use less memory, or a larger instance type for this agent type.\n")
                .as_bytes(),
        );
        self.log
            .cmd_finished(OUT_OF_MEMORY_DIRECTIVE, 1, started_at, unix_now());
    }

    /// When a hardware fault stopped the job, a last step in its log says so: the machine failed,
    /// not the job's code, and the job goes back to the queue where its retry policy allows.
    fn report_fault(&mut self) {
        let Some(reason) = self.control.fault() else {
            return;
        };
        let started_at = unix_now();
        self.log.cmd_started(FAULT_DIRECTIVE);
        self.log.cmd_output(
            format!("{reason}.\nThe job was stopped because the machine it ran on failed, not because of its code; this machine leaves the fleet, and the job is re-queued where its retry policy allows.\n")
                .as_bytes(),
        );
        self.log
            .cmd_finished(FAULT_DIRECTIVE, 1, started_at, unix_now());
    }

    fn run(&mut self) -> JobResult {
        let mut result = self.run_regular_commands();
        self.report_out_of_memory();
        self.report_fault();
        let mut epilogues_ran = false;
        if !self.control.is_stopped() {
            self.run_epilogues(result);
            epilogues_ran = true;
        }
        if !self.options.post_job_hook_path.is_empty() {
            let command = format!("bash {}", self.options.post_job_hook_path);
            self.run_command(POST_HOOK_ALIAS, &command, true, None);
        }
        if epilogues_ran && self.control.is_stopped() {
            result = JobResult::Stopped;
        }
        self.log.job_finished(result);
        result
    }

    fn run_regular_commands(&mut self) -> JobResult {
        let job_vars = self
            .request
            .env_vars
            .iter()
            .map(|var| (var.name.clone(), var.decode_value()));
        let agent_vars = self
            .options
            .agent_env_vars
            .iter()
            .map(|(name, value)| (name.clone(), Ok(value.as_bytes().to_vec())));
        // A stop that lands while the shell starts kills it under the first step: that step
        // fails, and the job was stopped, not failed.
        let failed = || match self.control.is_stopped() {
            true => JobResult::Stopped,
            false => JobResult::Failed,
        };
        if self.export_env_vars(job_vars.chain(agent_vars).collect()) != 0 {
            return failed();
        }
        if self.inject_files() != 0 {
            return failed();
        }
        if !self.options.pre_job_hook_path.is_empty() {
            let verb = if self.options.source_pre_job_hook {
                "source"
            } else {
                "bash"
            };
            let command = format!("{verb} {}", self.options.pre_job_hook_path);
            let warning = if self.options.fail_on_pre_job_hook_error {
                "The agent is configured to fail the job if the pre-job hook fails."
            } else {
                "The agent is configured to proceed with the job even if the pre-job hook fails."
            };
            let exit = self.run_command(PRE_HOOK_ALIAS, &command, true, Some(warning));
            if exit != 0 && self.options.fail_on_pre_job_hook_error {
                return JobResult::Failed;
            }
        }
        let exit = if self.request.commands.is_empty() {
            0
        } else {
            self.run_until_first_failure(&self.request.commands)
        };
        if self.control.is_stopped() {
            return JobResult::Stopped;
        }
        if exit == MANUAL_STOP_EXIT_CODE {
            self.control.mark_stopped();
            return self.check_job_result();
        }
        if exit == 0 {
            JobResult::Passed
        } else {
            JobResult::Failed
        }
    }

    fn run_epilogues(&mut self, result: JobResult) {
        let exit = self.export_env_vars(vec![(
            "SEMAPHORE_JOB_RESULT".to_string(),
            Ok(result.as_str().as_bytes().to_vec()),
        )]);
        if exit != 0 {
            tracing::warn!("Error exporting SEMAPHORE_JOB_RESULT: exit code {exit}");
        }
        if self.control.is_stopped() {
            return;
        }
        self.run_until_first_failure(&self.request.epilogue_always_commands);
        if self.control.is_stopped() {
            return;
        }
        let commands = if result == JobResult::Passed {
            &self.request.epilogue_on_pass_commands
        } else {
            &self.request.epilogue_on_fail_commands
        };
        self.run_until_first_failure(commands);
    }

    /// Runs commands until one fails; returns the last exit code (1 for an empty list or a stop).
    fn run_until_first_failure(&mut self, commands: &[Command]) -> i32 {
        let mut exit = 1;
        for command in commands {
            if self.control.is_stopped() {
                return 1;
            }
            let (display, aliased) = if command.alias.is_empty() {
                (&command.directive, false)
            } else {
                (&command.alias, true)
            };
            exit = self.run_command(display, &command.directive, aliased, None);
            if exit != 0 {
                break;
            }
        }
        exit
    }

    /// A non-silent command: `cmd_started`, [`Running: …`], [`Warning: …`], output, `cmd_finished`.
    fn run_command(
        &mut self,
        display: &str,
        command: &str,
        aliased: bool,
        warning: Option<&str>,
    ) -> i32 {
        self.log.cmd_started(display);
        if aliased {
            self.log
                .cmd_output(format!("Running: {command}\n").as_bytes());
        }
        if let Some(warning) = warning {
            self.log
                .cmd_output(format!("Warning: {warning}\n").as_bytes());
        }
        let log = self.log;
        let outcome = self.shell.run(command, &mut |chunk| log.cmd_output(chunk));
        self.log.cmd_finished(
            display,
            outcome.exit_code,
            outcome.started_at,
            outcome.finished_at,
        );
        outcome.exit_code
    }

    /// docs/protocol.md §5.3: values decoded, agent values override job values, names sorted by
    /// bytes, one `Exporting NAME` line each, then the file is sourced silently.
    fn export_env_vars(
        &mut self,
        vars: Vec<(String, Result<Vec<u8>, base64::DecodeError>)>,
    ) -> i32 {
        let started_at = unix_now();
        self.log.cmd_started(EXPORT_DIRECTIVE);
        let mut environment: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (name, value) in vars {
            match value {
                Ok(value) => {
                    environment.insert(name, value);
                }
                Err(error) => {
                    tracing::error!("Error decoding environment variable {name}: {error}");
                    self.log
                        .cmd_finished(EXPORT_DIRECTIVE, 1, started_at, unix_now());
                    return 1;
                }
            }
        }
        let mut content = Vec::new();
        for (name, value) in &environment {
            self.log
                .cmd_output(format!("Exporting {name}\n").as_bytes());
            content.extend_from_slice(b"export ");
            content.extend_from_slice(name.as_bytes());
            content.push(b'=');
            content.extend_from_slice(&shell_quote_bytes(value));
            content.push(b'\n');
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self.scratch.join(format!(".env-{nanos}"));
        // A container's user may be anyone: it reads the file through the scratch mount.
        let mode = if self.container.is_some() {
            0o644
        } else if self.options.job_user.is_some() {
            0o640
        } else {
            0o600
        };
        let written =
            crate::secure_fs::write(&path, mode, crate::secure_fs::Existing::Refuse, &content);
        let exit = match written {
            Ok(()) => {
                self.shell
                    .run_silent(&format!("source {}", path.display()))
                    .0
            }
            Err(error) => {
                tracing::error!("Error writing environment file {}: {error}", path.display());
                1
            }
        };
        self.log
            .cmd_finished(EXPORT_DIRECTIVE, exit, started_at, unix_now());
        exit
    }

    /// docs/protocol.md §5.4, with upstream's path bugs fixed.
    fn inject_files(&mut self) -> i32 {
        if self.container.is_some() {
            let files = &self.request.files;
            return crate::compose::inject::inject_files(
                &mut self.shell,
                self.log,
                files,
                self.scratch,
            );
        }
        let started_at = unix_now();
        self.log.cmd_started(INJECT_DIRECTIVE);
        let home = self
            .options
            .shell_env
            .iter()
            .find(|(name, _)| name == "HOME")
            .map(|(_, value)| value.clone());
        let exit = match home {
            _ if self.request.files.is_empty() => 0,
            Some(home) if !home.is_empty() => self.write_files(Path::new(&home)),
            _ => {
                self.log
                    .cmd_output(b"Failed to determine the home directory: HOME is not set.\n");
                1
            }
        };
        self.log
            .cmd_finished(INJECT_DIRECTIVE, exit, started_at, unix_now());
        exit
    }

    fn write_files(&mut self, home: &Path) -> i32 {
        for file in &self.request.files {
            let destination = match normalize_path(&file.path, home) {
                Ok(path) => path,
                Err(message) => {
                    self.log.cmd_output(format!("{message}\n").as_bytes());
                    return 1;
                }
            };
            let shown = destination.display().to_string();
            self.log
                .cmd_output(format!("Injecting {shown} with file mode {}\n", file.mode).as_bytes());
            let Ok(content) = file.decode_content() else {
                self.log
                    .cmd_output(b"Failed to decode the content of the file.\n");
                return 1;
            };
            let Some(mode) = file.parse_mode() else {
                self.log
                    .cmd_output(format!("bad file permission '{}'\n", file.mode).as_bytes());
                return 1;
            };
            let written = match &self.options.job_user {
                None => write_job_file(&destination, &content, mode),
                Some(user) => user
                    .run_as(|| write_job_file(&destination, &content, mode))
                    .unwrap_or_else(|error| {
                        Err(WriteFileError::Open(std::io::Error::other(error)))
                    }),
            };
            if let Err(failure) = written {
                self.log
                    .cmd_output(failure.message(&shown, &file.mode).as_bytes());
                return failure.exit_code();
            }
        }
        0
    }

    /// docs/protocol.md §5.6b: a command exited 130; the job result comes from
    /// `$SEMAPHORE_JOB_RESULT`.
    fn check_job_result(&mut self) -> JobResult {
        let (_, output) = self.shell.run_silent("echo $SEMAPHORE_JOB_RESULT");
        let value = String::from_utf8_lossy(&output)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        let now = unix_now();
        self.log.cmd_started(CHECK_RESULT_DIRECTIVE);
        let (message, result) = match value.as_str() {
            "passed" => ("SEMAPHORE_JOB_RESULT=passed - stopping job and marking it as passed".to_string(), JobResult::Passed),
            "failed" => ("SEMAPHORE_JOB_RESULT=failed - stopping job and marking it as failed".to_string(), JobResult::Failed),
            other => (format!("SEMAPHORE_JOB_RESULT is set to '{other}' - stopping job and marking it as stopped"), JobResult::Stopped),
        };
        self.log.cmd_output(message.as_bytes());
        self.log.cmd_finished(CHECK_RESULT_DIRECTIVE, 0, now, now);
        result
    }
}

/// Where writing an injected file failed; each has upstream's message and exit code.
#[derive(Debug)]
enum WriteFileError {
    Directory {
        path: PathBuf,
        error: std::io::Error,
    },
    Open(std::io::Error),
    Mode(std::io::Error),
    Write(std::io::Error),
}

impl WriteFileError {
    fn message(&self, shown: &str, mode: &str) -> String {
        match self {
            WriteFileError::Directory { path, error } => format!(
                "Failed to create directory '{}': {}\n",
                path.display(),
                go_error(error)
            ),
            WriteFileError::Open(error) => format!(
                "Failed to create destination path '{shown}': open {shown}: {}\n",
                go_error(error)
            ),
            WriteFileError::Mode(error) => format!(
                "Failed to set file mode '{mode}' for '{shown}': {}\n",
                go_error(error)
            ),
            WriteFileError::Write(error) => format!("write {shown}: {}\n", go_error(error)),
        }
    }

    fn exit_code(&self) -> i32 {
        match self {
            WriteFileError::Write(_) => 255,
            _ => 1,
        }
    }
}

/// Writes an injected file so that its content is never readable beyond `mode`: missing parents
/// are created 0700, the file is opened with `O_NOFOLLOW` (a symbolic link planted at the path
/// makes the open fail instead of writing through it) and created with its final mode; a file
/// that already existed gets its mode (through the open descriptor) before it is emptied and
/// written.
fn write_job_file(destination: &Path, content: &[u8], mode: u32) -> Result<(), WriteFileError> {
    let mode = mode & 0o7777;
    if let Some(parent) = destination.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|error| WriteFileError::Directory {
                path: parent.to_path_buf(),
                error,
            })?;
    }
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(destination)
        .map_err(WriteFileError::Open)?;
    handle
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(WriteFileError::Mode)?;
    handle
        .set_len(0)
        .and_then(|()| handle.write_all(content))
        .map_err(WriteFileError::Write)
}

/// A job file's `~user/...` path names a user this machine does not have.
#[derive(Debug, thiserror::Error)]
#[error("Failed to resolve '{path}': there is no user '{user}'.")]
pub(crate) struct NoSuchUser {
    pub path: String,
    pub user: String,
}

/// Where a job file goes: absolute paths as given; `~` / `~/x` under the job's home; `~user/x`
/// under that user's home; anything else relative to the home directory (not the cwd).
pub(crate) fn normalize_path(path: &str, home: &Path) -> Result<PathBuf, NoSuchUser> {
    if path.starts_with('/') {
        return Ok(PathBuf::from(path));
    }
    if let Some(rest) = path.strip_prefix('~') {
        let (user, tail) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at + 1..].to_string()),
            None => (rest, String::new()),
        };
        let base = if user.is_empty() {
            home.to_path_buf()
        } else {
            user_home(user).ok_or_else(|| NoSuchUser {
                path: path.to_string(),
                user: user.to_string(),
            })?
        };
        return Ok(if tail.is_empty() {
            base
        } else {
            base.join(tail)
        });
    }
    Ok(home.join(path))
}

fn user_home(user: &str) -> Option<PathBuf> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[0] == user).then(|| PathBuf::from(fields[5]))
    })
}

/// An I/O error worded as Go words it (`permission denied`), without Rust's `(os error N)`.
fn go_error(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().collect::<String>() + chars.as_str(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_without_upstreams_tilde_bug() {
        let home = Path::new("/home/u");
        let table = [
            ("/abs/file", "/abs/file"),
            ("~/a~b", "/home/u/a~b"),
            ("~", "/home/u"),
            ("relative/x.txt", "/home/u/relative/x.txt"),
            ("~root/x", "/root/x"),
        ];
        for (input, expected) in table {
            assert_eq!(
                normalize_path(input, home).unwrap(),
                PathBuf::from(expected),
                "{input}"
            );
        }
        assert!(normalize_path("~no-such-user-xyz/x", home)
            .unwrap_err()
            .to_string()
            .contains("no user 'no-such-user-xyz'"));
    }

    #[test]
    fn job_environment_drops_agent_settings() {
        let env = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("SEMAPHORE_AGENT_TOKEN".to_string(), "secret".to_string()),
            ("SEMAPHORE_AGENT_ENDPOINT".to_string(), "x".to_string()),
            ("SEMAPHORE_JOB_ID".to_string(), "kept".to_string()),
        ];
        let names: Vec<String> = job_environment(env)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec!["PATH", "SEMAPHORE_JOB_ID"]);
    }

    #[test]
    fn go_style_errors() {
        let error = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(go_error(&error), "permission denied");
    }
}
