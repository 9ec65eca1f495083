//! Attacks on the hub's HTTP edge, tried over real sockets against a served hub as a job on the
//! fleet or anyone who can reach the socket would: connections that never send a request,
//! bodies announced and never sent (or trickled), log pushes with bad tokens and 32 MiB
//! bodies, too many pushes at once, an unauthenticated `/metrics`, and registrations that would
//! store whatever they carry. Each test failed before its defence existed; each refusal has a
//! control that shows the same request, made rightly, goes through.

use crate::console_support;
use testkit::stores;

use hub::api::EdgeLimits;
use hub::hub::{Hub, HubConfig, HubError};
use hub::server::ConnectionLimits;
use protocol::{AgentState, GpuInfo, RegisterRequest, SyncAction, SyncRequest};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "edge-admin-token-0123456789";
const METRICS_TOKEN: &str = "metrics-token-0123456789";

fn now() -> i64 {
    hub::clock::unix_now()
}

/// A hub with agent type "linux", served on 127.0.0.1 within `limits`; stopped when dropped.
struct Served {
    address: SocketAddr,
    hub: Arc<Hub>,
    registration_token: String,
    _server: console_support::Server,
}

fn serve(limits: ConnectionLimits, config: HubConfig) -> Served {
    let hub = Arc::new(stores::fresh_hub(config, now()).unwrap());
    let registration_token = hub.create_agent_type("linux", now()).unwrap();
    let server = console_support::spawn_server(hub.clone(), limits);
    Served {
        address: server.address,
        hub,
        registration_token,
        _server: server,
    }
}

fn config() -> HubConfig {
    HubConfig::new("http://127.0.0.1", ADMIN)
}

fn limits(edge: EdgeLimits) -> ConnectionLimits {
    ConnectionLimits {
        edge,
        ..ConnectionLimits::default()
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body` on a new
/// connection and returns it.
fn send(address: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    let mut request = format!("{head}\r\nHost: hub\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).unwrap();
    stream
}

/// The status of the response on `stream`, or None if none came within `within` (or the
/// connection closed without one).
fn status_within(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => return error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// A single-job agent that took a job: (access token, job id, log token).
fn agent_with_job(served: &Served, name: &str) -> (String, String, String) {
    let job = protocol::JobSpec::from_commands("linux", &["true".to_string()]);
    served.hub.submit(job, now()).unwrap();
    let request = RegisterRequest {
        name: name.into(),
        single_job: true,
        ..RegisterRequest::default()
    };
    let agent = served
        .hub
        .register(&served.registration_token, request, now())
        .unwrap();
    let waiting = SyncRequest {
        state: AgentState::WaitingForJobs,
        ..SyncRequest::default()
    };
    let answer = served.hub.sync(&agent.token, &waiting, now()).unwrap();
    assert_eq!(answer.action, SyncAction::RunJob);
    let job = served
        .hub
        .job_request(&agent.token, &answer.job_id, now())
        .unwrap();
    (agent.token, answer.job_id, job.logger.token)
}

fn push_head(job_id: &str, token: &str, length: usize) -> String {
    format!(
        "POST /api/v1/logs/{job_id}?start_from=0 HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {length}"
    )
}

const ANSWER: Duration = Duration::from_secs(10);
const MIB_32: usize = 32 * 1024 * 1024;

#[test]
fn a_log_push_is_refused_before_its_body_is_read() {
    let served = serve(ConnectionLimits::default(), config());
    let (_, job_id, log_token) = agent_with_job(&served, "pusher");
    // A 32 MiB body announced, not a byte of it sent: the answer cannot wait for it.
    let mut forged = send(served.address, &push_head(&job_id, "forged", MIB_32), b"");
    assert_eq!(status_within(&mut forged, ANSWER), Some(401));
    let mut unknown = send(
        served.address,
        &push_head("no-such-job", &log_token, MIB_32),
        b"",
    );
    assert_eq!(status_within(&mut unknown, ANSWER), Some(404));
    // Control: the job's own token and a real body are stored.
    let line = "{\"event\":\"job_started\",\"timestamp\":1}\n";
    let mut real = send(
        served.address,
        &push_head(&job_id, &log_token, line.len()),
        line.as_bytes(),
    );
    assert_eq!(status_within(&mut real, ANSWER), Some(200));
    assert_eq!(served.hub.logs(&job_id, 0, 10).unwrap().lines.len(), 1);
}

const LINE: &str = "{\"event\":\"job_started\",\"timestamp\":1}\n";

/// Pushes the job's first line again (stored once, then skipped) and returns the status.
fn push_whole(served: &Served, job_id: &str, token: &str) -> Option<u16> {
    let head = push_head(job_id, token, LINE.len());
    let mut stream = send(served.address, &head, LINE.as_bytes());
    status_within(&mut stream, ANSWER)
}

/// Pushes to `job_id` that announce a body and send one byte of it: each either holds a place
/// (its body never comes) or is refused at once.
fn hold_pushes(served: &Served, job_id: &str, token: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| send(served.address, &push_head(job_id, token, 1000), b"{"))
        .collect()
}

/// Which of `streams` the hub answered with 429, waiting until `refusals` of them were (or
/// 10 s passed). Reads nothing: a peek at each in turn.
fn refused(streams: &[TcpStream], refusals: usize) -> Vec<usize> {
    let deadline = Instant::now() + ANSWER;
    let mut buffer = [0u8; 12];
    loop {
        let answered: Vec<usize> = (0..streams.len())
            .filter(|&index| {
                let stream = &streams[index];
                stream
                    .set_read_timeout(Some(Duration::from_millis(10)))
                    .unwrap();
                matches!(stream.peek(&mut buffer), Ok(12) if &buffer == b"HTTP/1.1 429")
            })
            .collect();
        if answered.len() >= refusals || Instant::now() > deadline {
            return answered;
        }
    }
}

#[test]
fn log_pushes_in_flight_are_capped_per_job_and_in_total() {
    let edge = EdgeLimits {
        max_log_pushes: 3,
        max_log_pushes_per_job: 2,
        ..EdgeLimits::default()
    };
    let served = serve(limits(edge), config());
    let (_, first_job, first_token) = agent_with_job(&served, "first");
    let (_, second_job, second_token) = agent_with_job(&served, "second");
    // Three pushes to one job whose bodies do not come: whichever comes last is refused.
    let first = hold_pushes(&served, &first_job, &first_token, 3);
    assert_eq!(
        refused(&first, 1).len(),
        1,
        "a third push to one job went in"
    );
    // The second job has places of its own, but the hub's total (3) leaves it one.
    let second = hold_pushes(&served, &second_job, &second_token, 2);
    assert_eq!(refused(&second, 1).len(), 1, "a fourth push in all went in");
    // Control: once the held pushes end, the job pushes again.
    drop(first);
    let accepted = (0..50).any(|_| push_whole(&served, &first_job, &first_token) == Some(200));
    assert!(accepted, "the job could not push after its pushes ended");
    drop(second);
}

/// A hub that gives a request's body one second.
fn serve_with_a_second_for_bodies() -> Served {
    let edge = EdgeLimits {
        body_read_timeout: Duration::from_secs(1),
        ..EdgeLimits::default()
    };
    serve(limits(edge), config())
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_cut_off() {
    let served = serve_with_a_second_for_bodies();
    let (agent_token, _, _) = agent_with_job(&served, "slow");
    let head = format!(
        "POST /api/v1/self_hosted_agents/sync HTTP/1.1\r\nAuthorization: Token {agent_token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100"
    );
    let started = Instant::now();
    let mut slow = send(served.address, &head, b"{\"state\":");
    assert_eq!(status_within(&mut slow, ANSWER), Some(408));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Control: the same request, sent whole, is answered.
    let body = br#"{"state":"running-job","job_id":""}"#;
    let head = head.replace(
        "Content-Length: 100",
        &format!("Content-Length: {}", body.len()),
    );
    let mut whole = send(served.address, &head, body);
    assert_eq!(status_within(&mut whole, ANSWER), Some(200));
}

#[test]
fn an_agent_body_larger_than_its_route_allows_is_refused() {
    let served = serve(ConnectionLimits::default(), config());
    let (agent_token, _, _) = agent_with_job(&served, "padded");
    let sync = |padding: usize| {
        let body = format!("{{\"state\":\"running-job\"{}}}", " ".repeat(padding));
        let head = format!(
            "POST /api/v1/self_hosted_agents/sync HTTP/1.1\r\nAuthorization: Token {agent_token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}",
            body.len()
        );
        let mut stream = send(served.address, &head, body.as_bytes());
        status_within(&mut stream, ANSWER)
    };
    // Valid JSON either way: only its size differs (64 KiB for register and sync).
    assert_eq!(sync(100_000), Some(413));
    assert_eq!(sync(1_000), Some(200));
}

/// Serves a hub within `max_connections` and `header_read_timeout` (seconds), opens `silent`
/// connections that send nothing, and checks a new client's `/healthz` is answered within
/// 10 s; returns the hub and the silent connections.
fn healthz_beside_silent(
    max_connections: usize,
    header_read_timeout: u64,
    silent: usize,
) -> (Served, Vec<TcpStream>) {
    let connection_limits = ConnectionLimits {
        max_connections,
        header_read_timeout: Duration::from_secs(header_read_timeout),
        ..ConnectionLimits::default()
    };
    let served = serve(connection_limits, config());
    let silent: Vec<TcpStream> = (0..silent)
        .map(|_| TcpStream::connect(served.address).unwrap())
        .collect();
    let started = Instant::now();
    let mut health = send(served.address, "GET /healthz HTTP/1.1", b"");
    let answered = status_within(&mut health, Duration::from_secs(20));
    assert_eq!(answered, Some(200));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    (served, silent)
}

#[test]
fn connections_that_send_nothing_are_dropped_so_the_hub_answers_again() {
    let (served, mut idle) = healthz_beside_silent(40, 1, 60);
    // The idle ones were served (accepted) and then closed by the hub, not left hanging.
    assert!(closed_within(&mut idle[59], Duration::from_secs(10)));
    // A request trickled header by header is closed at the same deadline.
    let mut trickle = TcpStream::connect(served.address).unwrap();
    trickle.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    assert!(closed_within(&mut trickle, Duration::from_secs(10)));
}

#[test]
fn at_the_connection_limit_the_oldest_silent_connection_makes_room() {
    // Long before the silent ones' 60 s deadline, a new client is served...
    let (_served, mut silent) = healthz_beside_silent(5, 60, 5);
    // ...because the oldest silent connection was closed for it.
    assert!(closed_within(&mut silent[0], Duration::from_secs(10)));
}

#[test]
fn metrics_ask_for_their_token_when_the_hub_has_one() {
    let fetch = |served: &Served, authorization: &str| {
        let head = format!("GET /metrics HTTP/1.1{authorization}");
        let mut stream = send(served.address, &head, b"");
        status_within(&mut stream, ANSWER)
    };
    let open = serve(ConnectionLimits::default(), config());
    assert_eq!(fetch(&open, ""), Some(200));
    let edge = EdgeLimits {
        metrics_token_hash: Some(hub::tokens::hash(METRICS_TOKEN)),
        ..EdgeLimits::default()
    };
    let guarded = serve(limits(edge), config());
    assert_eq!(fetch(&guarded, ""), Some(401));
    assert_eq!(
        fetch(&guarded, "\r\nAuthorization: Bearer wrong"),
        Some(401)
    );
    let good = format!("\r\nAuthorization: Bearer {METRICS_TOKEN}");
    assert_eq!(fetch(&guarded, &good), Some(200));
}

fn gpu(index: u32) -> GpuInfo {
    GpuInfo {
        index,
        name: "NVIDIA H100 80GB HBM3".into(),
        uuid: format!("GPU-{index:08}"),
        memory_mib: 81_559,
        driver: "550.54.15".into(),
    }
}

fn bad_request(result: Result<protocol::RegisterResponse, HubError>) -> String {
    match result {
        Err(error @ HubError::Invalid(_)) => error.to_string(),
        other => panic!("expected 400, got {other:?}"),
    }
}

#[test]
fn registrations_store_only_bounded_fields() {
    let served = serve(ConnectionLimits::default(), config());
    let register = |request: RegisterRequest| {
        served
            .hub
            .register(&served.registration_token, request, now())
    };
    let huge_hostname = RegisterRequest {
        name: "big-host".into(),
        hostname: "h".repeat(300_000),
        ..RegisterRequest::default()
    };
    assert!(bad_request(register(huge_hostname)).contains("hostname"));
    let many_gpus = RegisterRequest {
        name: "many-gpus".into(),
        flotilla_gpus: (0..4000).map(gpu).collect(),
        ..RegisterRequest::default()
    };
    assert!(bad_request(register(many_gpus)).contains("GPUs"));
    let long_gpu_name = RegisterRequest {
        name: "odd-gpu".into(),
        flotilla_gpus: vec![GpuInfo {
            name: "x".repeat(10_000),
            ..gpu(0)
        }],
        ..RegisterRequest::default()
    };
    assert!(bad_request(register(long_gpu_name)).contains("GPU"));
    assert!(served.hub.agents().is_empty(), "a refused agent was stored");
    // Control: a real 8-GPU machine registers with everything it reports.
    let real = RegisterRequest {
        name: "p5".into(),
        hostname: "ip-10-0-0-1.ec2.internal".into(),
        flotilla_gpus: (0..8).map(gpu).collect(),
        ..RegisterRequest::default()
    };
    register(real).unwrap();
    assert_eq!(served.hub.agents().len(), 1);
}

#[test]
fn an_agent_type_keeps_at_most_its_live_agents() {
    let mut capped = config();
    capped.max_agents_per_type = 3;
    let served = serve(ConnectionLimits::default(), capped);
    let register_with = |token: &str, name: &str| {
        let request = RegisterRequest {
            name: name.into(),
            ..RegisterRequest::default()
        };
        served.hub.register(token, request, now())
    };
    let register = |name: &str| register_with(&served.registration_token, name);
    let first = register("a-0").unwrap();
    let second = register("a-1").unwrap();
    register("a-2").unwrap();
    match register("a-3") {
        Err(HubError::AgentTypeFull { agent_type, live }) => {
            assert_eq!((agent_type.as_str(), live), ("linux", 3));
        }
        other => panic!("a fourth live agent was let in: {other:?}"),
    }
    // An agent registering again under its own live name (with its own token) replaces itself.
    register_with(&second.token, "a-1").unwrap();
    // Control: once one leaves, another comes in.
    served.hub.disconnect(&first.token, now()).unwrap();
    register("a-3").unwrap();
}

#[test]
fn agents_gone_past_the_give_up_time_are_forgotten_but_their_names_stay_spent() {
    const T0: i64 = 1_700_000_000;
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let (lost_after, give_up) = (config.lost_after_secs, config.give_up_after_secs);
    let hub = stores::open(dir.path(), config.clone(), T0).unwrap();
    let token = hub.create_agent_type("linux", T0).unwrap();
    let register = |hub: &Hub, name: &str, at: i64| {
        let request = RegisterRequest {
            name: name.into(),
            single_job: true,
            ..RegisterRequest::default()
        };
        hub.register(&token, request, at)
    };
    // "worker" takes a job and leaves; "silent" stops syncing (lost); "steady" keeps syncing.
    hub.submit(
        protocol::JobSpec::from_commands("linux", &["true".to_string()]),
        T0,
    )
    .unwrap();
    let worker = register(&hub, "worker", T0).unwrap();
    let waiting = SyncRequest {
        state: AgentState::WaitingForJobs,
        ..SyncRequest::default()
    };
    assert_eq!(
        hub.sync(&worker.token, &waiting, T0).unwrap().action,
        SyncAction::RunJob
    );
    hub.disconnect(&worker.token, T0).unwrap();
    register(&hub, "silent", T0).unwrap();
    let steady = register(&hub, "steady", T0).unwrap();
    let keep_syncing = |hub: &Hub, at: i64| {
        hub.sync(&steady.token, &waiting, at).unwrap();
        hub.maintain(at).unwrap();
    };
    keep_syncing(&hub, T0 + lost_after + 1);
    // Within the give-up time nothing is forgotten: "silent" may still heal.
    assert_eq!(hub.prune_agents(T0 + lost_after + 2).unwrap(), 0);
    let later = T0 + lost_after + give_up + 10;
    keep_syncing(&hub, later);
    assert_eq!(hub.prune_agents(later).unwrap(), 2, "worker and silent");
    assert_eq!(hub.prune_agents(later).unwrap(), 0, "pruned once");
    // The name that held a job stays spent; the live agent stays, after a restart too.
    drop(hub);
    let hub = stores::open(dir.path(), config, later).unwrap();
    match register(&hub, "worker", later) {
        Err(HubError::RegistrationRefused { name, refusal }) => {
            assert_eq!(name, "worker", "{refusal}");
        }
        other => panic!("a spent name registered again: {other:?}"),
    }
    let names: Vec<String> = hub.agents().into_iter().map(|agent| agent.name).collect();
    assert_eq!(names, ["steady"]);
}

/// A connection to `address` from the loopback address `source` (127.0.0.0/8 is all local).
fn connect_from(source: &str, address: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(address).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Tries to sign in to the console with `token` from `source`; the answer's status.
fn sign_in(served: &Served, source: &str, token: &str) -> Option<u16> {
    let body = format!("token={token}");
    let request = format!(
        "POST /console/login HTTP/1.1\r\nHost: hub\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = connect_from(source, served.address);
    stream.write_all(request.as_bytes()).unwrap();
    status_within(&mut stream, ANSWER)
}

#[test]
fn console_sign_in_attempts_are_limited_per_client_address() {
    let served = serve(ConnectionLimits::default(), config());
    let allowed = hub::console::SIGN_INS_PER_MINUTE;
    for _ in 0..allowed {
        assert_eq!(sign_in(&served, "127.0.0.1", "guess"), Some(401));
    }
    assert_eq!(sign_in(&served, "127.0.0.1", "guess"), Some(429));
    assert_eq!(
        sign_in(&served, "127.0.0.1", ADMIN),
        Some(429),
        "limited, even with the token"
    );
    // Control: another address is not limited, and the right token signs in (a redirect).
    assert_eq!(sign_in(&served, "127.0.0.2", "guess"), Some(401));
    assert_eq!(sign_in(&served, "127.0.0.2", ADMIN), Some(303));
}

#[test]
fn a_console_form_that_does_not_arrive_in_time_is_cut_off() {
    let served = serve_with_a_second_for_bodies();
    let head =
        "POST /console/login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                Content-Length: 100";
    let mut slow = send(served.address, head, b"token=");
    assert_eq!(status_within(&mut slow, ANSWER), Some(408));
}

#[test]
fn console_forms_are_read_only_for_a_session_or_a_sign_in_of_sign_in_size() {
    let served = serve(ConnectionLimits::default(), config());
    let form = "Content-Type: application/x-www-form-urlencoded";
    // 1 MB announced, not a byte sent: without a session the hub answers (sign in first).
    let head = format!("POST /console/jobs HTTP/1.1\r\n{form}\r\nContent-Length: 1000000");
    let mut unsigned = send(served.address, &head, b"");
    assert_eq!(status_within(&mut unsigned, ANSWER), Some(303));
    // A sign-in form has room for a token, not for a megabyte.
    let body = format!("token={}", "x".repeat(10_000));
    let head = format!(
        "POST /console/login HTTP/1.1\r\n{form}\r\nContent-Length: {}",
        body.len()
    );
    let mut padded = send(served.address, &head, body.as_bytes());
    assert_eq!(status_within(&mut padded, ANSWER), Some(413));
    // Control: a sign-in of sign-in size is read and judged.
    assert_eq!(sign_in(&served, "127.0.0.3", "guess"), Some(401));
}
