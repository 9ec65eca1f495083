//! `agent start`: registers, then runs the sync loop that drives [`crate::state`] and carries out
//! its effects — fetching and running the job on a worker thread, stopping it, forcing syncs,
//! and the shutdown sequence (disconnect, shutdown hook, exit). Signals become `interrupted_at`.
//! A 401 on sync (the server revoked this agent after a partition) and the give-up time both end
//! in `UNABLE_TO_SYNC` without the disconnect: the server no longer knows the token, so a
//! disconnect could only wait out its retries.

use crate::client::{ClientError, ControlPlane};
use crate::config::Config;
use crate::job::{run_job, JobControl, JobOptions};
use crate::job_record::{JobRecord, JobRecordError};
use crate::joblog::JobLog;
use crate::pusher::{LogPusher, PushConfig, DEFAULT_FLUSH_TIMEOUT};
use crate::retry::with_constant_wait;
use crate::shell::unix_now;
use crate::state::{step, Effect, Event, State};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use protocol::{JobResult, RegisterRequest, ShutdownReason};
use rand::Rng;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

pub fn user_agent() -> String {
    format!("SemaphoreAgent/{VERSION}")
}

/// Timings upstream hard-codes (docs/protocol.md §1.3); tests shorten them.
#[derive(Debug, Clone)]
pub struct Timings {
    pub register_attempts: u32,
    pub register_delay: Duration,
    pub get_job_attempts: u32,
    pub get_job_delay: Duration,
    pub disconnect_attempts: u32,
    pub disconnect_delay: Duration,
    pub log_flush_timeout: Duration,
    pub partial_log_batch_interval: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            register_attempts: 30,
            register_delay: Duration::from_secs(1),
            get_job_attempts: 10,
            get_job_delay: Duration::from_secs(3),
            disconnect_attempts: 100,
            disconnect_delay: Duration::from_secs(1),
            log_flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            partial_log_batch_interval: Duration::from_secs(1),
        }
    }
}

/// The agent's name (docs/protocol.md §2.8): configured, from the named env var, or 20 random
/// characters.
pub fn resolve_name(config: &Config, env: &std::collections::BTreeMap<String, String>) -> String {
    if !config.name.is_empty() {
        return config.name.clone();
    }
    if !config.name_from_env.is_empty() {
        return env.get(&config.name_from_env).cloned().unwrap_or_default();
    }
    tracing::info!("Agent name was not assigned - using a random one.");
    let bytes: [u8; 15] = rand::thread_rng().gen();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The log prefix for a name: a URL shows as its host until registration returns the real name.
fn log_prefix(name: &str) -> String {
    match name.split_once("://") {
        Some((_, rest)) => rest
            .split(['/', '?', '#'])
            .next()
            .unwrap_or(rest)
            .to_string(),
        None => name.to_string(),
    }
}

fn random_sync_delay() -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(3000..6000))
}

enum Message {
    Job(Event),
    Interrupted,
    HardwareFault(String),
}

/// Reports an interruption to a running listener, as SIGTERM does (used for spot notices), or a
/// hardware fault (a fatal GPU Xid), which stops the job at once.
#[derive(Clone)]
pub struct Interrupter(mpsc::Sender<Message>);

impl Interrupter {
    pub fn interrupt(&self) {
        let _ = self.0.send(Message::Interrupted);
    }

    /// The machine failed: `reason` goes to the job's log and to the server.
    pub fn fault(&self, reason: String) {
        let _ = self.0.send(Message::HardwareFault(reason));
    }
}

/// The result of the listener's last job, readable after [`Listener::run`] returns (the agent
/// keeps a failed job's instance for debugging: `keep-failed-instance-minutes`).
#[derive(Debug, Clone, Default)]
pub struct LastJob(Arc<std::sync::Mutex<Option<JobResult>>>);

impl LastJob {
    pub fn get(&self) -> Option<JobResult> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, result: JobResult) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    }
}

struct RunningJob {
    control: Arc<JobControl>,
    thread: JoinHandle<()>,
}

pub struct Listener {
    config: Config,
    timings: Timings,
    job_options: JobOptions,
    client: Arc<ControlPlane>,
    state: State,
    started: Instant,
    messages_tx: mpsc::Sender<Message>,
    messages: mpsc::Receiver<Message>,
    job: Option<RunningJob>,
    gpus: Vec<protocol::GpuInfo>,
    /// The GPU health gate's report, sent with the GPUs.
    gpu_gate: Option<protocol::GpuGate>,
    /// A single-job agent's record of the job this machine took (`job-record-file`).
    job_record: Option<JobRecord>,
    /// The EC2 instance identity sent at registration (a Flotilla extension; `--ec2` only).
    instance_identity: Option<protocol::InstanceIdentity>,
    last_job: LastJob,
}

impl Listener {
    pub fn new(config: Config, job_options: JobOptions, timings: Timings) -> Listener {
        let client = Arc::new(ControlPlane::new(config.base_url(), user_agent()));
        let (messages_tx, messages) = mpsc::channel();
        let started = Instant::now();
        let job_record = (config.disconnect_after_job && !config.job_record_file.is_empty())
            .then(|| JobRecord::new(&config.job_record_file));
        Listener {
            job_record,
            state: State::new(config.disconnect_after_job, 0),
            config,
            timings,
            job_options,
            client,
            started,
            messages_tx,
            messages,
            job: None,
            gpus: Vec::new(),
            gpu_gate: None,
            instance_identity: None,
            last_job: LastJob::default(),
        }
    }

    /// A handle on the result of the last job this listener runs.
    pub fn last_job(&self) -> LastJob {
        self.last_job.clone()
    }

    /// A handle that interrupts this listener from another thread.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.messages_tx.clone())
    }

    /// The GPUs to report at registration (sent only with `report-gpus`).
    pub fn with_gpus(mut self, gpus: Vec<protocol::GpuInfo>) -> Listener {
        self.gpus = gpus;
        self
    }

    /// The GPU health gate's report to send at registration (with `report-gpus`).
    pub fn with_gpu_gate(mut self, gate: protocol::GpuGate) -> Listener {
        self.gpu_gate = Some(gate);
        self
    }

    /// The signed instance identity to send at registration (on EC2).
    pub fn with_instance_identity(mut self, identity: protocol::InstanceIdentity) -> Listener {
        self.instance_identity = Some(identity);
        self
    }

    /// Ok unless this single-job agent's machine already took a job (then it must not register).
    pub(crate) fn check_job_record(&self) -> Result<(), JobRecordError> {
        self.job_record.as_ref().map_or(Ok(()), JobRecord::check)
    }

    /// `--give-up-after`: no successful sync (or accepted log batch) for this long ends it all.
    fn give_up_after(&self) -> Duration {
        let seconds = match self.config.give_up_after {
            seconds if seconds > 0 => seconds,
            _ => protocol::GIVE_UP_AFTER_SECS,
        };
        Duration::from_secs(seconds.unsigned_abs())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Registers and serves until a shutdown; returns the process exit code.
    pub fn run(mut self, name: String) -> i32 {
        crate::logging::set_name(&log_prefix(&name));
        if let Err(error) = self.check_job_record() {
            tracing::error!("{error}");
            return 1;
        }
        let request = RegisterRequest {
            name,
            version: VERSION.to_string(),
            pid: std::process::id() as i64,
            os: crate::host::os_name(),
            arch: crate::host::arch().to_string(),
            hostname: crate::host::hostname(),
            single_job: self.config.disconnect_after_job,
            idle_timeout: self.config.disconnect_after_idle_timeout,
            interruption_grace_period: self.config.interruption_grace_period,
            job_id: self.config.job_id.clone(),
            flotilla_gpus: if self.config.report_gpus {
                self.gpus.clone()
            } else {
                Vec::new()
            },
            flotilla_instance_identity: self.instance_identity.clone(),
            flotilla_gpu_gate: match self.config.report_gpus {
                true => self.gpu_gate.clone(),
                false => None,
            },
        };
        let client = self.client.clone();
        let registered = with_constant_wait(
            "register",
            self.timings.register_attempts,
            self.timings.register_delay,
            || client.register(&request, &self.config.token),
        );
        match registered {
            Ok(response) => {
                crate::logging::set_name(&response.name);
                tracing::info!(
                    "Agent registered as '{}' with {}",
                    response.name,
                    self.client.base_url()
                );
                if !self.config.registered_file.is_empty() {
                    if let Err(error) = std::fs::write(&self.config.registered_file, &response.name)
                    {
                        tracing::warn!(
                            "could not write the registered file {}: {error}",
                            self.config.registered_file
                        );
                    }
                }
            }
            Err(error) => {
                tracing::error!("failed to register agent: {error}");
                return 1;
            }
        }
        self.install_signal_handler();
        self.state = State::new(self.config.disconnect_after_job, self.now_ms())
            .with_give_up_after(self.give_up_after().as_millis() as u64);
        self.sync_loop()
    }

    fn install_signal_handler(&self) {
        let tx = self.messages_tx.clone();
        match signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ]) {
            Ok(mut signals) => {
                let spawned = std::thread::Builder::new()
                    .name("signals".into())
                    .spawn(move || {
                        for _ in signals.forever() {
                            if tx.send(Message::Interrupted).is_err() {
                                break;
                            }
                        }
                    });
                if let Err(error) = spawned {
                    tracing::error!("Could not watch for termination signals: {error}");
                }
            }
            Err(error) => tracing::error!("Could not watch for termination signals: {error}"),
        }
    }

    fn sync_loop(&mut self) -> i32 {
        loop {
            let request = self.state.sync_request();
            tracing::info!(
                "SYNC request (state: {}, job: {}, result: {})",
                request.state.as_str(),
                request.job_id,
                request.job_result.map(JobResult::as_str).unwrap_or("")
            );
            let event = match self.client.sync(&request) {
                Ok(response) => {
                    tracing::info!("SYNC response (action: {})", response.action.as_str());
                    Event::SyncSucceeded {
                        response,
                        now_ms: self.now_ms(),
                    }
                }
                Err(error) => {
                    tracing::error!("[SYNC ERR] Failed to sync with API: {error}");
                    match error {
                        ClientError::Status { status: 401, .. } => Event::SyncRefused,
                        _ => Event::SyncFailed {
                            now_ms: self.now_ms(),
                        },
                    }
                }
            };
            let mut wait = None;
            match self.apply(event, &mut wait) {
                Applied::Exit(code) => return code,
                Applied::SyncNow => continue,
                Applied::Continue => {}
            }
            let interval = wait.unwrap_or_else(random_sync_delay);
            tracing::debug!("Waiting {interval:?} for next sync...");
            let deadline = Instant::now() + interval;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let event = match self.messages.recv_timeout(remaining) {
                    Ok(Message::Job(event)) => event,
                    Ok(Message::Interrupted) => Event::Interrupted {
                        unix_now: unix_now(),
                    },
                    Ok(Message::HardwareFault(reason)) => Event::HardwareFault {
                        reason,
                        unix_now: unix_now(),
                    },
                    Err(_) => break,
                };
                match self.apply(event, &mut wait) {
                    Applied::Exit(code) => return code,
                    Applied::SyncNow => break,
                    Applied::Continue => {}
                }
            }
        }
    }

    fn apply(&mut self, event: Event, wait: &mut Option<Duration>) -> Applied {
        if let Event::JobFinished { result } = &event {
            self.last_job.set(*result);
        }
        let (next, effects) = step(&self.state, event);
        self.state = next;
        let mut applied = Applied::Continue;
        for effect in effects {
            match effect {
                Effect::Note(text) => tracing::info!("{text}"),
                Effect::StartJob { job_id } => self.start_job(job_id),
                Effect::StopJob => {
                    if let Some(job) = &self.job {
                        tracing::info!("Stopping job {}", self.state.job_id);
                        match &self.state.fault {
                            Some(reason) => job.control.stop_for_fault(reason),
                            None => job.control.stop(),
                        }
                    }
                }
                Effect::SyncNow => applied = Applied::SyncNow,
                Effect::NextSyncIn { millis } => *wait = millis.map(Duration::from_millis),
                Effect::Shutdown { reason } => return Applied::Exit(self.shutdown(reason)),
            }
        }
        applied
    }

    fn start_job(&mut self, job_id: String) {
        // On disk before anything of the job runs (it is not even fetched without it).
        if let Some(record) = &self.job_record {
            if let Err(error) = record.record(&job_id, unix_now()) {
                tracing::error!("Not running job {job_id}: {error}");
                let _ = self.messages_tx.send(Message::Job(Event::JobFinished {
                    result: JobResult::Failed,
                }));
                return;
            }
            tracing::info!("Recorded job {job_id} in {}", record.path().display());
        }
        let control = Arc::new(JobControl::new());
        let context = JobContext {
            job_id,
            client: self.client.clone(),
            timings: self.timings.clone(),
            options: self.job_options.clone(),
            control: control.clone(),
            events: self.messages_tx.clone(),
            give_up_after: self.give_up_after(),
        };
        match std::thread::Builder::new()
            .name("job".into())
            .spawn(move || context.run())
        {
            Ok(thread) => self.job = Some(RunningJob { control, thread }),
            Err(error) => {
                tracing::error!("Could not start the job thread: {error}");
                let _ = self.messages_tx.send(Message::Job(Event::JobFinished {
                    result: JobResult::Failed,
                }));
            }
        }
    }

    fn shutdown(&mut self, reason: ShutdownReason) -> i32 {
        if let Some(job) = self.job.take() {
            if !job.thread.is_finished() {
                // Upstream orphans the job's shell here; stop it so nothing outlives the agent,
                // and give its teardown the log flush time (none when the server is out of
                // reach or refuses the agent: its log cannot be delivered).
                tracing::info!("Stopping the running job before shutting down");
                job.control.stop();
                let flush = match reason {
                    ShutdownReason::UnableToSync => Duration::ZERO,
                    _ => self.timings.log_flush_timeout,
                };
                let deadline = Instant::now() + flush + Duration::from_secs(5);
                while !job.thread.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if reason == ShutdownReason::UnableToSync {
            tracing::info!("Not disconnecting: the server no longer accepts this agent");
        } else {
            self.disconnect();
        }
        if !self.config.shutdown_hook_path.is_empty() {
            run_shutdown_hook(
                &self.config.shutdown_hook_path,
                reason,
                &self.job_options.shell_env,
            );
        }
        tracing::info!("Agent shutting down due to: {}", reason.env_value());
        reason.exit_code()
    }

    /// POST /disconnect with upstream's retries (docs/protocol.md §2.7).
    fn disconnect(&self) {
        tracing::info!("Disconnecting the Agent from Semaphore");
        let client = self.client.clone();
        let disconnected = with_constant_wait(
            "disconnect",
            self.timings.disconnect_attempts,
            self.timings.disconnect_delay,
            || client.disconnect(),
        );
        match disconnected {
            Ok(()) => tracing::info!("Disconnected."),
            Err(_) => tracing::error!(
                "Failed to disconnect from Semaphore even after {} tries",
                self.timings.disconnect_attempts
            ),
        }
    }
}

enum Applied {
    Continue,
    SyncNow,
    Exit(i32),
}

/// Runs `bash <path>` with `SEMAPHORE_AGENT_SHUTDOWN_REASON`; output is logged, failures too.
pub(crate) fn run_shutdown_hook(path: &str, reason: ShutdownReason, env: &[(String, String)]) {
    tracing::info!("Executing shutdown hook from {path}");
    let output = std::process::Command::new("bash")
        .arg(path)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("SEMAPHORE_AGENT_SHUTDOWN_REASON", reason.env_value())
        .stdin(std::process::Stdio::null())
        .output();
    match output {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            if output.status.success() {
                tracing::info!("Output: {text}");
            } else {
                tracing::error!(
                    "Error executing shutdown hook: {}. Output: {text}",
                    output.status
                );
            }
        }
        Err(error) => tracing::error!("Error executing shutdown hook: {error}"),
    }
}

/// Why a fetched job could not be set up (upstream: "Could not construct job").
#[derive(Debug, thiserror::Error)]
enum ConstructError {
    #[error("HTTP logger needs a URL")]
    NoLogUrl,
    #[error("the pull logger method is not supported by a self-hosted agent")]
    PullLogger,
    #[error("unknown logger method '{0}'")]
    UnknownLogger(String),
    #[error("creating {path}: {error}")]
    LogFile { path: String, error: std::io::Error },
    #[error("starting the log pusher: {0}")]
    Pusher(std::io::Error),
}

/// Everything the job thread needs.
struct JobContext {
    job_id: String,
    client: Arc<ControlPlane>,
    timings: Timings,
    options: JobOptions,
    control: Arc<JobControl>,
    events: mpsc::Sender<Message>,
    /// The log is flushed until no batch has been accepted for this long (the agent's give-up
    /// time, so a partition it rides out loses no line).
    give_up_after: Duration,
}

impl JobContext {
    fn finish(&self, result: JobResult) {
        let _ = self
            .events
            .send(Message::Job(Event::JobFinished { result }));
    }

    /// The job's event log and the thread that pushes it to `logger`.
    fn start_job_log(
        &self,
        logger: &protocol::Logger,
    ) -> Result<(Arc<JobLog>, LogPusher), ConstructError> {
        match logger.method.as_str() {
            "push" if logger.url.is_empty() => return Err(ConstructError::NoLogUrl),
            "push" => {}
            "" | "pull" => return Err(ConstructError::PullLogger),
            other => return Err(ConstructError::UnknownLogger(other.to_string())),
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let log_path = self
            .options
            .scratch_root
            .join(format!("job_log_{nanos}.json"));
        let job_log =
            JobLog::create(log_path.clone(), None).map_err(|error| ConstructError::LogFile {
                path: log_path.display().to_string(),
                error,
            })?;
        let job_log = Arc::new(job_log);
        let refresh_client = self.client.clone();
        let push_config = PushConfig {
            url: logger.url.clone(),
            token: logger.token.clone(),
            user_agent: user_agent(),
            refresh_token: Box::new(move || refresh_client.refresh_log_token()),
            partial_batch_interval: self.timings.partial_log_batch_interval,
            lines_per_request: crate::pusher::MAX_LINES_PER_REQUEST,
        };
        match LogPusher::spawn(job_log.clone(), push_config) {
            Ok(pusher) => Ok((job_log, pusher)),
            Err(error) => {
                job_log.remove_file();
                Err(ConstructError::Pusher(error))
            }
        }
    }

    fn run(self) {
        let client = self.client.clone();
        let fetched = with_constant_wait(
            "get job",
            self.timings.get_job_attempts,
            self.timings.get_job_delay,
            || client.get_job(&self.job_id),
        );
        let request = match fetched {
            Ok(request) => request,
            Err(error) => {
                tracing::error!("Could not get job {}: {error}", self.job_id);
                return self.finish(JobResult::Failed);
            }
        };
        let (job_log, pusher) = match self.start_job_log(&request.logger) {
            Ok(started) => started,
            Err(error) => {
                tracing::error!("Could not construct job {}: {error}", self.job_id);
                return self.finish(JobResult::Failed);
            }
        };
        let _ = self.events.send(Message::Job(Event::JobRunning));
        tracing::info!("Running job {}", self.job_id);
        let result = run_job(&request, &self.options, &job_log, &self.control);
        let outcome = pusher.close(self.give_up_after);
        tracing::info!(
            "Job {} finished: {result} ({} log events pushed in {} requests{})",
            self.job_id,
            outcome.lines_pushed,
            outcome.requests,
            if outcome.trimmed {
                ", trimmed by the server"
            } else {
                ""
            }
        );
        self.finish(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_names_log_as_their_host() {
        assert_eq!(
            log_prefix("https://sts.amazonaws.com/?Action=X"),
            "sts.amazonaws.com"
        );
        assert_eq!(log_prefix("plain-agent-name"), "plain-agent-name");
    }

    #[test]
    fn random_names_are_20_url_safe_characters() {
        let config = Config::default();
        let name = resolve_name(&config, &Default::default());
        assert_eq!(name.len(), 20);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
