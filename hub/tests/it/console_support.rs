//! What the console's tests share: a real hub served over HTTP on a port of its own (its own
//! runtime on a thread, stopped when dropped), and an agent that speaks the protocol through the
//! hub's core — registering (optionally with a signed instance identity document), taking a
//! job, pushing log events and finishing — so a test decides when each phase happens.

#![allow(dead_code)]

pub(crate) use testkit::imds;

use hub::clock::{Clock, ManualClock};
use hub::hub::{Hub, HubConfig};
use hub::identity::Certificates;
use hub::server::ConnectionLimits;
use protocol::views::IdentityPolicy;
use protocol::{
    AgentState, InstanceIdentity, JobResult, LogEvent, RegisterRequest, SyncAction, SyncRequest,
};
use std::sync::Arc;

pub(crate) const ADMIN: &str = "console-admin-token";
pub(crate) const ACCOUNT: &str = "123456789012";

/// A hub serving the API and the console on 127.0.0.1.
pub(crate) struct Served {
    pub url: String,
    pub hub: Arc<Hub>,
    /// Registration token of agent type "linux".
    pub linux_token: String,
    /// Registration token of agent type "gpu" (instance identity required).
    pub gpu_token: String,
    pub signing_key: std::path::PathBuf,
    /// The hub's clock: a test moves it instead of sleeping.
    pub clock: Arc<ManualClock>,
    _server: Server,
    _dir: tempfile::TempDir,
}

/// Starts a hub with agent types "linux" and "gpu" (the latter bound to EC2 instances, with a
/// test certificate) and serves it.
pub(crate) fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let (signing_key, cert) = imds::signing_key(dir.path(), "console-test");
    let clock = Arc::new(ManualClock::starting_at(hub::clock::unix_now()));
    let mut config = HubConfig::new("http://127.0.0.1", ADMIN);
    config.identity_certificates = Some(Arc::new(Certificates::from_file(&cert).unwrap()));
    config.clock = clock.clone();
    let now = clock.now();
    let hub = Arc::new(testkit::stores::open(dir.path(), config, now).unwrap());
    let linux_token = hub.create_agent_type("linux", now).unwrap();
    let policy = IdentityPolicy {
        require_instance_identity: true,
        allowed_accounts: vec![ACCOUNT.into()],
        allowed_regions: vec![],
        single_job_only: None,
    };
    let gpu_token = hub.create_agent_type_with("gpu", &policy, now).unwrap();
    let server = spawn_server(hub.clone(), ConnectionLimits::default());
    Served {
        url: format!("http://{}", server.address),
        hub,
        linux_token,
        gpu_token,
        signing_key,
        clock,
        _server: server,
        _dir: dir,
    }
}

/// A hub served on 127.0.0.1 from a runtime on a thread of its own; stopped when dropped.
pub(crate) struct Server {
    pub address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Serves `hub` on a free loopback port within `limits`.
pub(crate) fn spawn_server(hub: Arc<Hub>, limits: ConnectionLimits) -> Server {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            address_tx.send(listener.local_addr().unwrap()).unwrap();
            let shutdown = async move {
                let _ = stopped.await;
            };
            hub::server::serve_limited(hub, listener, None, limits, shutdown)
                .await
                .unwrap();
        });
    });
    Server {
        address: address_rx.recv().unwrap(),
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An agent driven by the test through the hub's core.
pub(crate) struct Agent {
    pub name: String,
    token: String,
    pub job_id: String,
    log_token: String,
    lines: i64,
}

impl Served {
    /// The time now, by the hub's clock.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Registers a single-job "linux" agent.
    pub(crate) fn linux_agent(&self, name: &str) -> Agent {
        self.register(&self.linux_token, name, None)
    }

    /// Registers a "linux" agent with the GPUs and GPU gate `request` reports.
    pub(crate) fn linux_agent_with(&self, request: RegisterRequest) -> Agent {
        self.register_request(&self.linux_token, request)
    }

    /// Registers a "gpu" agent on instance `instance_id`, launched at `launched` (Unix seconds).
    pub(crate) fn gpu_agent(&self, instance_id: &str, launched: i64) -> Agent {
        let pending = jiff::Timestamp::from_second(launched).unwrap().to_string();
        let document = imds::identity_document(instance_id, ACCOUNT, "us-east-1")
            .replace("2026-01-01T00:00:00Z", &pending);
        let identity = InstanceIdentity {
            signature: imds::sign(&document, &self.signing_key),
            document,
        };
        self.register(&self.gpu_token, instance_id, Some(identity))
    }

    fn register(&self, token: &str, name: &str, identity: Option<InstanceIdentity>) -> Agent {
        let request = RegisterRequest {
            name: name.into(),
            single_job: true,
            flotilla_instance_identity: identity,
            ..RegisterRequest::default()
        };
        self.register_request(token, request)
    }

    fn register_request(&self, token: &str, request: RegisterRequest) -> Agent {
        let registered = self.hub.register(token, request, self.now()).unwrap();
        Agent {
            name: registered.name,
            token: registered.token,
            job_id: String::new(),
            log_token: String::new(),
            lines: 0,
        }
    }

    /// The agent syncs, is given the next job, fetches it and starts it (its first log push).
    pub(crate) fn take_job(&self, agent: &mut Agent) {
        self.assign(agent);
        self.start(agent);
    }

    /// The job's first log push: the hub marks it started.
    pub(crate) fn start(&self, agent: &mut Agent) {
        self.push(
            agent,
            &[LogEvent::JobStarted {
                timestamp: self.now(),
            }],
        );
    }

    /// The agent syncs, is given the next job and fetches it.
    pub(crate) fn assign(&self, agent: &mut Agent) {
        let waiting = SyncRequest {
            state: AgentState::WaitingForJobs,
            ..SyncRequest::default()
        };
        let answer = self.hub.sync(&agent.token, &waiting, self.now()).unwrap();
        assert_eq!(answer.action, SyncAction::RunJob, "the agent gets a job");
        agent.job_id = answer.job_id;
        let request = self
            .hub
            .job_request(&agent.token, &agent.job_id, self.now())
            .unwrap();
        agent.log_token = request.logger.token.clone();
    }

    /// Pushes log events of the agent's job.
    pub(crate) fn push(&self, agent: &mut Agent, events: &[LogEvent]) {
        let body: String = events
            .iter()
            .map(|event| String::from_utf8(event.to_line()).unwrap())
            .collect();
        let (job, token) = (&agent.job_id, &agent.log_token);
        self.hub
            .push_logs(job, token, agent.lines, &body, self.now())
            .unwrap();
        agent.lines += events.len() as i64;
    }

    /// Pushes one command with `output` and its end.
    pub(crate) fn command(&self, agent: &mut Agent, directive: &str, output: &str, exit_code: i32) {
        let t = self.now();
        let directive = directive.to_string();
        self.push(
            agent,
            &[
                LogEvent::CmdStarted {
                    timestamp: t,
                    directive: directive.clone(),
                },
                LogEvent::CmdOutput {
                    timestamp: t,
                    output: output.to_string(),
                },
                LogEvent::CmdFinished {
                    timestamp: t,
                    directive,
                    exit_code,
                    started_at: t,
                    finished_at: t,
                },
            ],
        );
    }

    /// The agent reports its job finished with `result` (after a stop, `stopped`).
    pub(crate) fn finish(&self, agent: &mut Agent, result: JobResult) {
        self.push(
            agent,
            &[LogEvent::JobFinished {
                timestamp: self.now(),
                result,
            }],
        );
        let finished = SyncRequest {
            state: AgentState::FinishedJob,
            job_id: agent.job_id.clone(),
            job_result: Some(result),
            ..SyncRequest::default()
        };
        self.hub.sync(&agent.token, &finished, self.now()).unwrap();
    }

    /// The agent's machine failed under its job (`fault`): it reports the job stopped, with the
    /// interruption and the fault, as an agent that saw a fatal Xid does.
    pub(crate) fn fault(&self, agent: &mut Agent, fault: &str) {
        let faulted = SyncRequest {
            state: AgentState::FinishedJob,
            job_id: agent.job_id.clone(),
            job_result: Some(JobResult::Stopped),
            interrupted_at: self.now(),
            flotilla_fault: Some(fault.to_string()),
        };
        self.hub.sync(&agent.token, &faulted, self.now()).unwrap();
    }

    /// What the hub answers the agent's next sync while it runs its job.
    pub(crate) fn running_sync(&self, agent: &Agent) -> SyncAction {
        let running = SyncRequest {
            state: AgentState::RunningJob,
            job_id: agent.job_id.clone(),
            ..SyncRequest::default()
        };
        self.hub
            .sync(&agent.token, &running, self.now())
            .unwrap()
            .action
    }
}
