//! Reaction latency (run by `bench/scaler.sh`; figures, not assertions): from a job being enqueued
//! in the hub to the control loop's `raise_desired` call, with the hub's long-poll and with plain
//! polling at the default interval. The real hub server, queue client, policy and loop; only the
//! fleet is a recorder (no instances are started).

use hub::hub::{Hub, HubConfig};
use protocol::JobSpec;
use scaling::control::FleetLoop;
use scaling::fleet::Fleet;
use scaling::policy::{PolicyConfig, PoolState};
use scaling::queue::MetricsQueue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fleet that records when desired capacity is raised.
struct RecordingFleet {
    desired: u32,
    raised: mpsc::Sender<Instant>,
}

impl Fleet for RecordingFleet {
    fn describe(&mut self) -> Result<Vec<PoolState>, scaling::fleet::FleetError> {
        Ok(vec![PoolState {
            name: "pool".into(),
            desired: self.desired,
            min: 0,
            max: 100_000,
            in_service: self.desired,
            pending: 0,
            short: false,
            health: scaling::pool_health::PoolHealth::default(),
            warm_pool: None,
        }])
    }

    fn raise_desired(
        &mut self,
        _pool: &str,
        desired: u32,
    ) -> Result<(), scaling::fleet::FleetError> {
        self.desired = desired;
        let _ = self.raised.send(Instant::now());
        Ok(())
    }

    fn terminate(
        &mut self,
        _instance: &str,
        _decrement: bool,
    ) -> Result<(), scaling::fleet::FleetError> {
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn measure(long_poll: bool, samples: usize) -> Vec<f64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let now = hub::clock::unix_now();
    let hub = Arc::new(
        Hub::in_memory(HubConfig::new("http://127.0.0.1", "bench-admin-token"), now).unwrap(),
    );
    let token = hub.create_agent_type("default", now).unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = hub.clone();
    runtime.spawn(async move {
        hub::server::serve_on(serving, listener, None, std::future::pending()).await
    });

    let (raised_tx, raised) = mpsc::channel();
    let policy = PolicyConfig {
        rise_burst: 100_000,
        rise_per_minute: 1_000_000,
        ..PolicyConfig::default()
    };
    // The default interval of `scaler run` (poll_interval_ms: 1000).
    let mut fleet_loop = FleetLoop::new(
        "default",
        Box::new(MetricsQueue::new(&url, &token, long_poll)),
        Box::new(RecordingFleet {
            desired: 0,
            raised: raised_tx,
        }),
        policy,
        false,
        Duration::from_millis(1000),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let loop_stop = stop.clone();
    let thread = std::thread::spawn(move || fleet_loop.run(&loop_stop));
    std::thread::sleep(Duration::from_millis(1500));
    while raised.try_recv().is_ok() {}
    let mut latencies = Vec::new();
    for index in 0..samples {
        // Land at a different phase of the poll cycle each time.
        std::thread::sleep(Duration::from_millis(200 + (index as u64 * 373) % 1000));
        let enqueued = Instant::now();
        hub.submit(
            JobSpec::from_commands("default", &["true".to_string()]),
            hub::clock::unix_now(),
        )
        .unwrap();
        let at = raised
            .recv_timeout(Duration::from_secs(30))
            .expect("a raise");
        latencies.push(at.duration_since(enqueued).as_secs_f64() * 1000.0);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    latencies
}

fn main() {
    let samples = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!("reaction latency, job enqueued -> raise_desired called, {samples} samples each:");
    for (long_poll, label, target) in [
        (true, "hub long-poll", "<= 100 ms"),
        (false, "plain polling, 1 s interval", "<= 2 s"),
    ] {
        let sorted = measure(long_poll, samples);
        println!(
            "    {label:<30} p50 {:8.1} ms   p95 {:8.1} ms   max {:8.1} ms   (target {target})",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.95),
            sorted.last().unwrap()
        );
    }
}
