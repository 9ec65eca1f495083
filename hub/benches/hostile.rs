//! The hub under hostile load (run by `bench/hostile.sh`; figures, not assertions). One served
//! hub (SQLite, default limits) and 200 real agents syncing every 100 ms on keep-alive
//! connections; each attack runs beside them and the agents' p99 is printed as a ratio to the
//! same hub unattacked, measured in the same run:
//! (1) idle connections held by an attacker (reconnecting as the hub drops them), with the
//!     slowest `/healthz` answered on a new connection meanwhile;
//! (2) 200 concurrent unauthenticated log pushes announcing 32 MiB, their bodies streamed,
//!     with the process's RSS growth;
//! (3) syncs with random tokens, as fast as 64 connections send them (again on PostgreSQL when
//!     `FLOTILLA_BENCH_POSTGRES` or `FLOTILLA_TEST_POSTGRES` names a server);
//! (4) 1,000 registrations with maximal fields (300 KB hostname, 4,000 GPUs), RSS growth;
//! (5) a restart over 1,000,000 historical agent rows: time to ready and RSS growth.
//! Server and load share this machine's cores, as in `benches/hub.rs`.

mod support;

use hub::hub::{Hub, HubConfig};
use hub::server::ConnectionLimits;
use hub::store::StoreLocation;
use protocol::{AgentState, GpuInfo, RegisterRequest, SyncRequest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env_u64, percentile, BenchDatabase, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENTS: usize = 200;

/// The process's resident set, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

struct Served {
    address: String,
    hub: Arc<Hub>,
    registration_token: String,
    _dir: tempfile::TempDir,
    _database: Option<BenchDatabase>,
}

/// A hub on SQLite, or on a fresh PostgreSQL database when `postgres`, served with the
/// default limits.
fn serve(runtime: &tokio::runtime::Runtime, postgres: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let database = postgres.then(BenchDatabase::create);
    let location = match &database {
        Some(database) => StoreLocation::Postgres {
            url: database.url.clone(),
            ca_file: None,
        },
        None => StoreLocation::Sqlite {
            data_dir: dir.path().to_path_buf(),
        },
    };
    let mut config = HubConfig::new("http://127.0.0.1", "bench-admin-token");
    config.lost_after_secs = 3600;
    let hub = Arc::new(Hub::open_at(&location, config, hub::clock::unix_now()).unwrap());
    let registration_token = hub
        .create_agent_type("bench", hub::clock::unix_now())
        .unwrap();
    let _entered = runtime.enter();
    let listener = hub::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let serving = hub.clone();
    runtime.spawn(async move {
        let limits = ConnectionLimits::default();
        hub::server::serve_limited(serving, listener, None, limits, std::future::pending()).await
    });
    Served {
        address,
        hub,
        registration_token,
        _dir: dir,
        _database: database,
    }
}

fn register(served: &Served, count: usize, prefix: &str) -> Vec<String> {
    (0..count)
        .map(|index| {
            let request = RegisterRequest {
                name: format!("{prefix}-{index:06}"),
                ..RegisterRequest::default()
            };
            let now = hub::clock::unix_now();
            let registered = served
                .hub
                .register(&served.registration_token, request, now);
            registered.unwrap().token
        })
        .collect()
}

/// The real agents' sync p99 (ms) over `BENCH_SECONDS`, whatever else runs meanwhile.
fn agents_p99(client: &tokio::runtime::Runtime, served: &Served, tokens: &[String]) -> f64 {
    agents_p99_for(client, served, tokens, env_u64("BENCH_SECONDS", 5))
}

fn agents_p99_for(
    client: &tokio::runtime::Runtime,
    served: &Served,
    tokens: &[String],
    seconds: u64,
) -> f64 {
    let body = serde_json::to_vec(&SyncRequest {
        state: AgentState::WaitingForJobs,
        ..SyncRequest::default()
    })
    .unwrap();
    let body = Arc::new(body);
    let loops: Vec<_> = tokens
        .iter()
        .map(|token| {
            let (address, token, body) = (served.address.clone(), token.clone(), body.clone());
            client.spawn(async move {
                let mut connection = Connection::open(&address).await;
                let mut latencies = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while Instant::now() < deadline {
                    tick.tick().await;
                    let sent = Instant::now();
                    let path = "/api/v1/self_hosted_agents/sync";
                    let (status, _) = connection.post(path, &token, &body).await;
                    assert_eq!(status, 200);
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<f64> = client.block_on(async {
        let mut all = Vec::new();
        for handle in loops {
            all.extend(handle.await.unwrap());
        }
        all
    });
    all.sort_by(f64::total_cmp);
    percentile(&all, 0.99)
}

/// The slowest `/healthz` on a new connection, asked every 200 ms until `stop`.
async fn slowest_health(address: String, stop: Arc<AtomicBool>) -> f64 {
    let mut slowest: f64 = 0.0;
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
            let request = b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n";
            stream.write_all(request).await.ok()?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.ok()?;
            reply.starts_with(b"HTTP/1.1 200").then_some(())
        })
        .await;
        let took = asked.elapsed().as_secs_f64();
        slowest = slowest.max(if matches!(answered, Ok(Some(()))) {
            took
        } else {
            30.0
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    slowest
}

/// Holds one idle connection, opening a new one whenever the hub closes it, until `stop`.
async fn hold_idle(address: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut byte = [0u8; 1];
        while !stop.load(Ordering::Relaxed) {
            let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte));
            if read.await.is_ok() {
                break; // closed by the hub: hold a new one
            }
        }
    }
}

/// Sends unauthenticated 32 MiB log pushes on one connection after another until `stop`.
async fn flood_logs(address: String, job_id: String, stop: Arc<AtomicBool>) {
    let chunk = vec![b'{'; 64 * 1024];
    let length = 32 * 1024 * 1024;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let head = format!(
            "POST /api/v1/logs/{job_id}?start_from=0 HTTP/1.1\r\nHost: hub\r\n\
             Authorization: Bearer forged\r\nContent-Length: {length}\r\n\r\n"
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let mut sent = 0;
        while sent < length && !stop.load(Ordering::Relaxed) {
            if stream.write_all(&chunk).await.is_err() {
                break; // refused and closed: start over
            }
            sent += chunk.len();
        }
    }
}

/// POSTs `body` to `path` on a new connection; the status, or None when the hub closed the
/// connection before answering (a refused body is not read to its end).
async fn post_once(address: &str, path: &str, token: &str, body: &[u8]) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: Token {token}\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    // The hub may answer and close before the whole body is sent.
    let _ = stream.write_all(body).await;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let line = String::from_utf8_lossy(&reply[..reply.len().min(32)]).to_string();
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sends syncs with random tokens, one connection each (a refused request's connection ends).
async fn random_tokens(address: String, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let body = br#"{"state":"waiting-for-jobs"}"#;
    while !stop.load(Ordering::Relaxed) {
        let token = hub::tokens::new_token();
        post_once(&address, "/api/v1/self_hosted_agents/sync", &token, body).await;
        sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// The agents' p99 while an attack (started by the caller) runs, after it has built up.
fn under(client: &tokio::runtime::Runtime, served: &Served, tokens: &[String]) -> f64 {
    std::thread::sleep(Duration::from_secs(2));
    agents_p99(client, served, tokens)
}

fn report(what: &str, p99: f64, baseline: f64, extra: &str) {
    println!(
        "{what:<44} agents' sync p99 {p99:>7.2} ms = {:>5.2}x unattacked{extra}",
        p99 / baseline.max(1e-9)
    );
}

/// An attacker in a process of its own (its sockets need their own open-files limit, and its
/// runtime must not share the hub's): `HOSTILE_ATTACK=<kind>,<address>,<count>[,<job>]` runs
/// `count` attackers of `kind` (idle, logs, tokens) until killed.
fn attacker(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let (kind, address) = (parts[0], parts[1].to_string());
    let count: usize = parts[2].parse().expect("a count");
    let job = parts.get(3).map(|job| job.to_string()).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    runtime.block_on(async {
        let attackers: Vec<_> = (0..count)
            .map(|_| {
                let (address, stop) = (address.clone(), stop.clone());
                match kind {
                    "idle" => tokio::spawn(hold_idle(address, stop)),
                    "logs" => tokio::spawn(flood_logs(address, job.clone(), stop)),
                    "tokens" => tokio::spawn(random_tokens(address, stop, sent.clone())),
                    other => panic!("no attack '{other}'"),
                }
            })
            .collect();
        if kind == "tokens" {
            report_rate(sent).await;
        }
        for attacker in attackers {
            let _ = attacker.await;
        }
    });
}

/// Prints the attack's requests per second to stderr every second.
async fn report_rate(sent: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0;
    loop {
        tick.tick().await;
        let now = sent.load(Ordering::Relaxed);
        eprintln!("attacker: {} requests/s", now - last);
        last = now;
    }
}

/// Starts the attacker process of `kind`.
fn attack(kind: &str, address: &str, count: usize, job: &str) -> Attacker {
    std::process::Command::new(std::env::current_exe().unwrap())
        .env("HOSTILE_ATTACK", format!("{kind},{address},{count},{job}"))
        .spawn()
        .map(Attacker)
        .expect("the attacker process")
}

/// The attacker process, killed when dropped.
struct Attacker(std::process::Child);

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The process's peak RSS growth over a stretch, sampled every 50 ms on a thread.
struct PeakRss {
    before: f64,
    sampling: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<f64>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let sampling = Arc::new(AtomicBool::new(true));
        let running = sampling.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = rss_mib();
            while running.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib());
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        PeakRss {
            before: rss_mib(),
            sampling,
            sampler,
        }
    }

    /// MiB the peak was above the start.
    fn finish(self) -> f64 {
        self.sampling.store(false, Ordering::Relaxed);
        self.sampler.join().unwrap_or(0.0) - self.before
    }
}

fn idle_attack(client: &tokio::runtime::Runtime, served: &Served, tokens: &[String], base: f64) {
    let count = env_u64("BENCH_IDLE", 10_000) as usize;
    let peak = PeakRss::start();
    let stop = Arc::new(AtomicBool::new(false));
    let health = client.spawn(slowest_health(served.address.clone(), stop.clone()));
    let attacker = attack("idle", &served.address, count, "");
    let p99 = under(client, served, tokens);
    drop(attacker);
    stop.store(true, Ordering::Relaxed);
    let slowest = client.block_on(health).unwrap();
    let extra = format!(
        "; slowest /healthz {slowest:.2} s; peak RSS +{:.1} MiB",
        peak.finish()
    );
    report(&format!("(1) {count} idle connections"), p99, base, &extra);
}

fn log_flood(client: &tokio::runtime::Runtime, served: &Served, tokens: &[String], base: f64) {
    let job = protocol::JobSpec::from_commands("bench", &["true".to_string()]);
    let job_id = served.hub.submit(job, hub::clock::unix_now()).unwrap().id;
    let peak = PeakRss::start();
    let attacker = attack("logs", &served.address, 200, &job_id);
    let p99 = under(client, served, tokens);
    drop(attacker);
    let extra = format!("; peak RSS +{:.1} MiB", peak.finish());
    report(
        "(2) 200 unauthenticated 32 MiB log pushes",
        p99,
        base,
        &extra,
    );
}

fn token_flood(client: &tokio::runtime::Runtime, served: &Served, tokens: &[String], base: f64) {
    let attacker = attack("tokens", &served.address, 64, "");
    let p99 = under(client, served, tokens);
    drop(attacker);
    report(
        "(3) syncs with random tokens",
        p99,
        base,
        "; attack rate on stderr",
    );
}

/// (3) again on PostgreSQL, where an unknown token may cost a round trip to the database.
fn token_flood_postgres(client: &tokio::runtime::Runtime, server: &tokio::runtime::Runtime) {
    let served = serve(server, true);
    let tokens = register(&served, AGENTS, "agent");
    agents_p99_for(client, &served, &tokens, 2);
    let baseline = agents_p99(client, &served, &tokens);
    println!(
        "{:<44} agents' sync p99 {baseline:>7.2} ms",
        "(0) PostgreSQL, unattacked"
    );
    token_flood(client, &served, &tokens, baseline);
}

/// 1,000 registrations with maximal fields straight through the API; (refused, RSS growth).
fn huge_registrations(client: &tokio::runtime::Runtime, served: &Served) -> (usize, f64) {
    // About 0.8 MB a registration, as the attack the issue measured.
    let gpu = GpuInfo {
        name: "NVIDIA H100 80GB HBM3".into(),
        ..GpuInfo::default()
    };
    let before = rss_mib();
    let refused = client.block_on(async {
        let mut refused = 0;
        for index in 0..1000 {
            let request = RegisterRequest {
                name: format!("huge-{index}"),
                hostname: "h".repeat(300_000),
                flotilla_gpus: vec![gpu.clone(); 4000],
                ..RegisterRequest::default()
            };
            let body = serde_json::to_vec(&request).unwrap();
            let path = "/api/v1/self_hosted_agents/register";
            let token = &served.registration_token;
            if post_once(&served.address, path, token, &body).await != Some(200) {
                refused += 1;
            }
        }
        refused
    });
    (refused, rss_mib() - before)
}

/// Opens a hub over `rows` historical (disconnected) agents; (seconds to ready, RSS growth).
fn restart_over_history(rows: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = HubConfig::new("http://127.0.0.1", "bench-admin-token");
    drop(Hub::open(dir.path(), config.clone(), 1).unwrap());
    let database = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
    database
        .execute(
            "INSERT INTO agents (name, agent_type, token_hash, state, registered_at, last_sync_at,
               disconnected_at, registration)
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             SELECT 'old-' || i, 'bench', 'hash-' || i, 'disconnected', 1, 1, 1,
               '{\"name\":\"old-' || i || '\",\"hostname\":\"' || hex(randomblob(24)) || '\"}'
             FROM n",
            [rows],
        )
        .unwrap();
    drop(database);
    let before = rss_mib();
    let started = Instant::now();
    let hub = Hub::open(dir.path(), config, hub::clock::unix_now()).unwrap();
    let (took, grown) = (started.elapsed().as_secs_f64(), rss_mib() - before);
    drop(hub);
    (took, grown)
}

fn main() {
    if let Ok(spec) = std::env::var("HOSTILE_ATTACK") {
        return attacker(&spec);
    }
    let threads = |n| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .unwrap()
    };
    let (server, client) = (threads(2), threads(2));
    let served = serve(&server, false);
    let tokens = register(&served, AGENTS, "agent");
    println!("hostile load: {AGENTS} agents syncing every 100 ms, default limits, SQLite");
    // Connections opened and the first allocations made before anything is measured.
    agents_p99_for(&client, &served, &tokens, 2);
    let baseline = agents_p99(&client, &served, &tokens);
    println!(
        "{:<44} agents' sync p99 {baseline:>7.2} ms",
        "(0) unattacked"
    );
    idle_attack(&client, &served, &tokens, baseline);
    log_flood(&client, &served, &tokens, baseline);
    token_flood(&client, &served, &tokens, baseline);
    let (refused, grown) = huge_registrations(&client, &served);
    println!("(4) 1,000 maximal registrations: {refused} refused, RSS +{grown:.1} MiB");
    let rows = env_u64("BENCH_HISTORY", 1_000_000);
    let (took, grown) = restart_over_history(rows);
    println!(
        "(5) restart over {rows} historical agents: ready in {took:.2} s, RSS +{grown:.1} MiB"
    );
    drop(served);
    if std::env::var_os("FLOTILLA_BENCH_POSTGRES").is_some()
        || std::env::var_os("FLOTILLA_TEST_POSTGRES").is_some()
    {
        token_flood_postgres(&client, &server);
    } else {
        println!(
            "(3) on PostgreSQL: skipped (set FLOTILLA_BENCH_POSTGRES or FLOTILLA_TEST_POSTGRES)"
        );
    }
}
