//! Hub benchmarks (run by `bench/hub.sh`; figures, not assertions):
//! (1) sustained sync requests/s and latency percentiles with 10,000 registered agents syncing
//!     over keep-alive connections, against the real HTTP server;
//! (2) durable job dispatches/s: agents take queued jobs (each assignment committed to SQLite
//!     before the run-job answer) and report them finished (committed too).
//! Server and load generator share this machine's cores; the load generator is a lean HTTP/1.1
//! client so that most of the CPU goes to the hub.

use hub::hub::{Hub, HubConfig};
use hub::store::Durability;
use protocol::{AgentState, JobSpec, RegisterRequest, SyncRequest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One keep-alive connection that sends a request and reads the answer.
struct Connection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: String,
    body: Vec<u8>,
}

impl Connection {
    async fn open(address: &str) -> Connection {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (read, writer) = stream.into_split();
        Connection {
            reader: BufReader::new(read),
            writer,
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// POSTs `body` to `path`; returns (status, body).
    async fn post(&mut self, path: &str, token: &str, body: &[u8]) -> (u16, &[u8]) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: Token {token}\r\nUser-Agent: SemaphoreAgent/bench\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes()).await.unwrap();
        self.writer.write_all(body).await.unwrap();
        self.line.clear();
        self.reader.read_line(&mut self.line).await.unwrap();
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).await.unwrap();
            if self.line == "\r\n" || self.line.is_empty() {
                break;
            }
            if let Some(value) = self
                .line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body).await.unwrap();
        (status, &self.body)
    }
}

struct Server {
    address: String,
    hub: Arc<Hub>,
    registration_token: String,
    _dir: tempfile::TempDir,
}

fn start_server(runtime: &tokio::runtime::Runtime, durability: Durability) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let now = hub::api::unix_now();
    let mut config = HubConfig::new("http://127.0.0.1", "bench-admin-token");
    config.durability = durability;
    config.lost_after_secs = 3600;
    let hub = Arc::new(Hub::open(dir.path(), config, now).unwrap());
    let registration_token = hub.create_agent_type("bench", now).unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let serving = hub.clone();
    runtime.spawn(async move {
        hub::server::serve_on(serving, listener, None, std::future::pending()).await
    });
    Server {
        address,
        hub,
        registration_token,
        _dir: dir,
    }
}

fn register_agents(server: &Server, count: u64, single_job: bool) -> Vec<String> {
    let now = hub::api::unix_now();
    (0..count)
        .map(|index| {
            let request = RegisterRequest {
                name: format!("bench-agent-{index:06}"),
                single_job,
                ..RegisterRequest::default()
            };
            server
                .hub
                .register(&server.registration_token, request, now)
                .unwrap()
                .token
        })
        .collect()
}

fn sync_throughput(
    server_runtime: &tokio::runtime::Runtime,
    client_runtime: &tokio::runtime::Runtime,
) {
    let agents = env_u64("BENCH_AGENTS", 10_000);
    let connections = env_u64("BENCH_CONNECTIONS", 64);
    let seconds = env_u64("BENCH_SECONDS", 10);
    let server = start_server(server_runtime, Durability::Normal);
    let tokens = Arc::new(register_agents(&server, agents, false));
    let body = serde_json::to_vec(&SyncRequest {
        state: AgentState::WaitingForJobs,
        ..SyncRequest::default()
    })
    .unwrap();
    let body = Arc::new(body);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let latencies = client_runtime.block_on(async {
        let mut tasks = Vec::new();
        for connection_index in 0..connections {
            let (tokens, body, stop, total, address) = (
                tokens.clone(),
                body.clone(),
                stop.clone(),
                total.clone(),
                server.address.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut connection = Connection::open(&address).await;
                let mut latencies = Vec::with_capacity(100_000);
                let mut agent = connection_index as usize;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let (status, _) = connection
                        .post("/api/v1/self_hosted_agents/sync", &tokens[agent], &body)
                        .await;
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    assert_eq!(status, 200);
                    total.fetch_add(1, Ordering::Relaxed);
                    agent = (agent + connections as usize) % tokens.len();
                }
                latencies
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut sorted = latencies;
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("(1) syncs: {agents} agents, {connections} keep-alive connections, {seconds} s");
    println!(
        "    sustained        {:9.0} syncs/s   (target >= 20,000/s)",
        total.load(Ordering::Relaxed) as f64 / elapsed
    );
    println!(
        "    latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms   (target p99 <= 10 ms)",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        percentile(&sorted, 0.999),
        sorted.last().copied().unwrap_or(0.0)
    );
}

fn dispatch_throughput(
    server_runtime: &tokio::runtime::Runtime,
    client_runtime: &tokio::runtime::Runtime,
    durability: Durability,
) {
    let jobs = env_u64("BENCH_JOBS", 5_000);
    let agents = env_u64("BENCH_DISPATCH_AGENTS", 64);
    let server = start_server(server_runtime, durability);
    let now = hub::api::unix_now();
    for _ in 0..jobs {
        server
            .hub
            .submit(JobSpec::from_commands("bench", &["true".to_string()]), now)
            .unwrap();
    }
    let tokens = register_agents(&server, agents, false);
    let dispatched = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    client_runtime.block_on(async {
        let mut tasks = Vec::new();
        for token in tokens {
            let (dispatched, address) = (dispatched.clone(), server.address.clone());
            tasks.push(tokio::spawn(async move {
                let mut connection = Connection::open(&address).await;
                let waiting = serde_json::to_vec(&SyncRequest::default()).unwrap();
                loop {
                    let (status, answer) = connection
                        .post("/api/v1/self_hosted_agents/sync", &token, &waiting)
                        .await;
                    assert_eq!(status, 200);
                    let answer: protocol::SyncResponse = serde_json::from_slice(answer).unwrap();
                    if answer.action != protocol::SyncAction::RunJob {
                        return;
                    }
                    dispatched.fetch_add(1, Ordering::Relaxed);
                    let finished = serde_json::to_vec(&SyncRequest {
                        state: AgentState::FinishedJob,
                        job_id: answer.job_id,
                        job_result: Some(protocol::JobResult::Passed),
                        interrupted_at: 0,
                    })
                    .unwrap();
                    let (status, _) = connection
                        .post("/api/v1/self_hosted_agents/sync", &token, &finished)
                        .await;
                    assert_eq!(status, 200);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let count = dispatched.load(Ordering::Relaxed);
    assert_eq!(count, jobs, "every job dispatched once");
    let label = if durability == Durability::Full {
        "fsync every commit"
    } else {
        "WAL, fsync at checkpoints"
    };
    println!("(2) dispatches ({label}): {jobs} jobs, {agents} agents");
    println!(
        "    {:9.0} dispatches/s ({:.0} committed job changes/s: assign + finish)   (target >= 1,000/s)",
        count as f64 / elapsed,
        2.0 * count as f64 / elapsed
    );
}

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    if wants("sync") {
        sync_throughput(&server_runtime, &client_runtime);
    }
    if wants("dispatch") {
        dispatch_throughput(&server_runtime, &client_runtime, Durability::Normal);
        dispatch_throughput(&server_runtime, &client_runtime, Durability::Full);
    }
}
