//! Hub benchmarks (run by `bench/hub.sh`; figures, not assertions):
//! (1) sustained sync requests/s and latency percentiles with 10,000 registered agents syncing
//!     over keep-alive connections, against the real HTTP server;
//! (2) durable job dispatches/s: agents take queued jobs (each assignment committed before the
//!     run-job answer) and report them finished (committed too).
//! Each runs on SQLite, on PostgreSQL with one hub, and on PostgreSQL with two hub replicas
//! sharing the database (each served on its own port, the load split between them), and prints
//! PostgreSQL's figures as ratios to SQLite's from the same run. PostgreSQL is the server at
//! `FLOTILLA_BENCH_POSTGRES` (else `FLOTILLA_TEST_POSTGRES`, which `.ci/postgres` exports), a
//! fresh database per variant (its role needs CREATEDB).
//! Server and load generator share this machine's cores; the load generator is a lean HTTP/1.1
//! client so that most of the CPU goes to the hub.

use hub::hub::{Hub, HubConfig};
use hub::store::{Durability, StoreLocation};
use protocol::{AgentState, JobSpec, RegisterRequest, SyncRequest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::{env_u64, percentile, BenchDatabase, Connection};

/// Where a variant keeps its state, and how many hubs share it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    backend: Backend,
    replicas: usize,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "SQLite",
        backend: Backend::Sqlite,
        replicas: 1,
    },
    Variant {
        label: "PostgreSQL, 1 hub",
        backend: Backend::Postgres,
        replicas: 1,
    },
    Variant {
        label: "PostgreSQL, 2 replicas",
        backend: Backend::Postgres,
        replicas: 2,
    },
];

/// A variant's hubs, each served on a port of its own.
struct Servers {
    addresses: Vec<String>,
    hubs: Vec<Arc<Hub>>,
    registration_token: String,
    /// What the state lives in, kept until the variant is done.
    _dir: Option<tempfile::TempDir>,
    _database: Option<BenchDatabase>,
}

impl Servers {
    /// The server and hub for agent (or connection) `index`: the load split between replicas.
    fn address(&self, index: usize) -> &str {
        &self.addresses[index % self.addresses.len()]
    }

    fn hub(&self, index: usize) -> &Hub {
        &self.hubs[index % self.hubs.len()]
    }
}

fn open_hub(location: &StoreLocation, durability: Durability) -> Arc<Hub> {
    let mut config = HubConfig::new("http://127.0.0.1", "bench-admin-token");
    config.durability = durability;
    config.lost_after_secs = 3600;
    Arc::new(Hub::open_at(location, config, hub::clock::unix_now()).unwrap())
}

fn start_servers(
    runtime: &tokio::runtime::Runtime,
    durability: Durability,
    variant: Variant,
) -> Servers {
    let (location, (dir, database)) = match variant.backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let data_dir = dir.path().to_path_buf();
            (StoreLocation::Sqlite { data_dir }, (Some(dir), None))
        }
        Backend::Postgres => {
            let database = BenchDatabase::create();
            let url = database.url.clone();
            let location = StoreLocation::Postgres { url, ca_file: None };
            (location, (None, Some(database)))
        }
    };
    // The agent type exists before the other replicas open: they load it.
    let first = open_hub(&location, durability);
    let registration_token = first
        .create_agent_type("bench", hub::clock::unix_now())
        .unwrap();
    let mut hubs = vec![first];
    while hubs.len() < variant.replicas {
        hubs.push(open_hub(&location, durability));
    }
    let addresses = hubs
        .iter()
        .map(|hub| {
            // Housekeeping, and on PostgreSQL the replica's catch-up with the others' writes.
            let housekeeping = hub.clone();
            runtime.spawn(async move {
                hub::server::spawn_housekeeping(housekeeping);
            });
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let serving = hub.clone();
            runtime.spawn(async move {
                hub::server::serve_on(serving, listener, None, std::future::pending()).await
            });
            address
        })
        .collect();
    Servers {
        addresses,
        hubs,
        registration_token,
        _dir: dir,
        _database: database,
    }
}

/// Agent `index` registers with replica `index mod replicas`, the one its connection goes to.
fn register_agents(servers: &Servers, count: u64, single_job: bool) -> Vec<String> {
    let now = hub::clock::unix_now();
    (0..count as usize)
        .map(|index| {
            let request = RegisterRequest {
                name: format!("bench-agent-{index:06}"),
                single_job,
                ..RegisterRequest::default()
            };
            servers
                .hub(index)
                .register(&servers.registration_token, request, now)
                .unwrap()
                .token
        })
        .collect()
}

/// A variant's figures.
struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn ratio(figure: f64, baseline: f64) -> String {
    if baseline > 0.0 {
        format!("{:.2}x SQLite", figure / baseline)
    } else {
        "no SQLite baseline".to_string()
    }
}

/// Keeps syncing on one connection, agents `first`, `first + step`, … in turn, until `stop`.
async fn sync_loop(
    address: String,
    tokens: Arc<Vec<String>>,
    (first, step): (usize, usize),
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
) -> Vec<f64> {
    let body = serde_json::to_vec(&SyncRequest {
        state: AgentState::WaitingForJobs,
        ..SyncRequest::default()
    })
    .unwrap();
    let mut connection = Connection::open(&address).await;
    let mut latencies = Vec::with_capacity(100_000);
    let mut agent = first;
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let (status, _) = connection
            .post("/api/v1/self_hosted_agents/sync", &tokens[agent], &body)
            .await;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200);
        total.fetch_add(1, Ordering::Relaxed);
        agent = (agent + step) % tokens.len();
    }
    latencies
}

fn sync_throughput(
    server_runtime: &tokio::runtime::Runtime,
    client_runtime: &tokio::runtime::Runtime,
    variant: Variant,
) -> Figures {
    let agents = env_u64("BENCH_AGENTS", 10_000);
    let connections = env_u64("BENCH_CONNECTIONS", 64) as usize;
    let seconds = env_u64("BENCH_SECONDS", 10);
    let servers = start_servers(server_runtime, Durability::Normal, variant);
    let tokens = Arc::new(register_agents(&servers, agents, false));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let latencies = client_runtime.block_on(async {
        // Connection c syncs agents c, c + connections, …: with an even number of connections,
        // each on the replica it registered with.
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let address = servers.address(c).to_string();
                let (tokens, stop, total) = (tokens.clone(), stop.clone(), total.clone());
                tokio::spawn(sync_loop(address, tokens, (c, connections), stop, total))
            })
            .collect();
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
    println!("    {}:", variant.label);
    println!(
        "      sustained        {:9.0} syncs/s   (target >= 20,000/s)",
        total.load(Ordering::Relaxed) as f64 / elapsed
    );
    println!(
        "      latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms   (target p99 <= 10 ms)",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        percentile(&sorted, 0.999),
        sorted.last().copied().unwrap_or(0.0)
    );
    Figures {
        per_second: total.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: percentile(&sorted, 0.5),
        p99_ms: percentile(&sorted, 0.99),
    }
}

/// Takes jobs and reports them finished on one connection until `jobs` have been dispatched.
async fn dispatch_loop(address: String, token: String, jobs: u64, dispatched: Arc<AtomicU64>) {
    let mut connection = Connection::open(&address).await;
    let waiting = serde_json::to_vec(&SyncRequest::default()).unwrap();
    while dispatched.load(Ordering::SeqCst) < jobs {
        let (status, answer) = connection
            .post("/api/v1/self_hosted_agents/sync", &token, &waiting)
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(answer));
        let answer: protocol::SyncResponse = serde_json::from_slice(answer).unwrap();
        if answer.action != protocol::SyncAction::RunJob {
            // Jobs left, none for this agent right now (taken by an agent of another replica).
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        dispatched.fetch_add(1, Ordering::SeqCst);
        let finished = serde_json::to_vec(&SyncRequest {
            state: AgentState::FinishedJob,
            job_id: answer.job_id,
            job_result: Some(protocol::JobResult::Passed),
            interrupted_at: 0,
            flotilla_fault: None,
        })
        .unwrap();
        let (status, _) = connection
            .post("/api/v1/self_hosted_agents/sync", &token, &finished)
            .await;
        assert_eq!(status, 200);
    }
}

/// Submits `jobs`, job j on replica j mod replicas; returns once every replica sees them all.
fn submit_jobs(servers: &Servers, jobs: u64) {
    let now = hub::clock::unix_now();
    for index in 0..jobs as usize {
        let spec = JobSpec::from_commands("bench", &["true".to_string()]);
        servers.hub(index).submit(spec, now).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for hub in &servers.hubs {
        while hub
            .metrics(&servers.registration_token, now)
            .unwrap()
            .jobs
            .queued
            < jobs
        {
            assert!(
                Instant::now() < deadline,
                "a replica did not see every job in 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn dispatch_throughput(
    server_runtime: &tokio::runtime::Runtime,
    client_runtime: &tokio::runtime::Runtime,
    durability: Durability,
    variant: Variant,
) -> f64 {
    let jobs = env_u64("BENCH_JOBS", 5_000);
    let agents = env_u64("BENCH_DISPATCH_AGENTS", 64);
    let servers = start_servers(server_runtime, durability, variant);
    submit_jobs(&servers, jobs);
    let tokens = register_agents(&servers, agents, false);
    let dispatched = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    client_runtime.block_on(async {
        let tasks: Vec<_> = tokens
            .into_iter()
            .enumerate()
            .map(|(index, token)| {
                let address = servers.address(index).to_string();
                tokio::spawn(dispatch_loop(address, token, jobs, dispatched.clone()))
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let count = dispatched.load(Ordering::SeqCst);
    assert_eq!(count, jobs, "every job dispatched once");
    let label = match (variant.backend, durability) {
        (Backend::Postgres, _) => "the server's synchronous_commit",
        (Backend::Sqlite, Durability::Full) => "fsync every commit",
        (Backend::Sqlite, Durability::Normal) => "WAL, fsync at checkpoints",
    };
    println!(
        "    {} ({label}): {jobs} jobs, {agents} agents",
        variant.label
    );
    println!(
        "      {:9.0} dispatches/s ({:.0} committed job changes/s: assign + finish)   (target >= 1,000/s)",
        count as f64 / elapsed,
        2.0 * count as f64 / elapsed
    );
    count as f64 / elapsed
}

fn sync_comparison(
    server_runtime: &tokio::runtime::Runtime,
    client_runtime: &tokio::runtime::Runtime,
) {
    let agents = env_u64("BENCH_AGENTS", 10_000);
    let connections = env_u64("BENCH_CONNECTIONS", 64);
    let seconds = env_u64("BENCH_SECONDS", 10);
    println!(
        "(1) syncs: {agents} agents, {connections} keep-alive connections, {seconds} s per variant"
    );
    let figures: Vec<Figures> = VARIANTS
        .iter()
        .map(|variant| sync_throughput(server_runtime, client_runtime, *variant))
        .collect();
    println!("    against SQLite:");
    for (variant, figures_of) in VARIANTS.iter().zip(&figures).skip(1) {
        println!(
            "      {:24} {:9.0} syncs/s ({}), p50 {:.2} ms ({}), p99 {:.2} ms ({})",
            variant.label,
            figures_of.per_second,
            ratio(figures_of.per_second, figures[0].per_second),
            figures_of.p50_ms,
            ratio(figures_of.p50_ms, figures[0].p50_ms),
            figures_of.p99_ms,
            ratio(figures_of.p99_ms, figures[0].p99_ms),
        );
    }
}

fn dispatch_comparison(
    server_runtime: &tokio::runtime::Runtime,
    client_runtime: &tokio::runtime::Runtime,
) {
    println!("(2) dispatches:");
    let baseline = dispatch_throughput(
        server_runtime,
        client_runtime,
        Durability::Normal,
        VARIANTS[0],
    );
    dispatch_throughput(
        server_runtime,
        client_runtime,
        Durability::Full,
        VARIANTS[0],
    );
    let others: Vec<(Variant, f64)> = VARIANTS[1..]
        .iter()
        .map(|variant| {
            let rate =
                dispatch_throughput(server_runtime, client_runtime, Durability::Normal, *variant);
            (*variant, rate)
        })
        .collect();
    println!("    against SQLite (WAL):");
    for (variant, rate) in others {
        println!(
            "      {:24} {rate:9.0} dispatches/s ({})",
            variant.label,
            ratio(rate, baseline)
        );
    }
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
        sync_comparison(&server_runtime, &client_runtime);
    }
    if wants("dispatch") {
        dispatch_comparison(&server_runtime, &client_runtime);
    }
}
