//! Console page benchmark (figures, not assertions): the server time of each console page with
//! 10,000 jobs in the hub's SQLite database, measured through the hub's real router without a
//! network (tower `oneshot`), against a baseline measured in the same run: the user API's JSON
//! job list of the same page size. Prints median and p95 milliseconds and each page's size.
//!
//!     cargo bench -p hub --bench console        (CONSOLE_BENCH_JOBS, CONSOLE_BENCH_ROUNDS)

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use hub::hub::{Hub, HubConfig};
use protocol::{AgentState, JobSpec, LogEvent, RegisterRequest, SyncRequest};
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

const ADMIN: &str = "bench-admin";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `jobs` jobs over two agent types, 90% of them finished (stopped), and one running job with
/// a 400-line log; returns the hub and the running job's id.
fn populate(dir: &std::path::Path, jobs: usize) -> (Arc<Hub>, String) {
    let now = hub::clock::unix_now();
    let hub = Hub::open(dir, HubConfig::new("http://127.0.0.1", ADMIN), now).unwrap();
    let token = hub.create_agent_type("linux", now).unwrap();
    hub.create_agent_type("gpu", now).unwrap();
    let running = hub
        .submit(JobSpec::from_commands("linux", &["make".into()]), now)
        .unwrap();
    for index in 0..jobs - 1 {
        let agent_type = if index % 4 == 0 { "gpu" } else { "linux" };
        let mut spec = JobSpec::from_commands(agent_type, &["make test".into()]);
        spec.name = format!("{}-{index}", if index % 2 == 0 { "build" } else { "test" });
        let job = hub.submit(spec, now).unwrap();
        if index * 10 < (jobs - 1) * 9 {
            hub.stop_job(&job.id, now).unwrap();
        }
    }
    let request = RegisterRequest {
        name: "bench-agent".into(),
        ..RegisterRequest::default()
    };
    let agent = hub.register(&token, request, now).unwrap();
    let waiting = SyncRequest {
        state: AgentState::WaitingForJobs,
        ..SyncRequest::default()
    };
    let assigned = hub.sync(&agent.token, &waiting, now).unwrap();
    assert_eq!(assigned.job_id, running.id, "the oldest job runs");
    let job = hub.job_request(&agent.token, &running.id, now).unwrap();
    let mut body = String::new();
    for line in 0..400 {
        let event = LogEvent::CmdOutput {
            timestamp: now,
            output: format!("\u{1b}[32mok\u{1b}[0m test {line} <passed> & done\n"),
        };
        body.push_str(&String::from_utf8(event.to_line()).unwrap());
    }
    hub.push_logs(&running.id, &job.logger.token, 0, &body, now)
        .unwrap();
    (Arc::new(hub), running.id)
}

/// Signs in through the router; returns the session cookie.
async fn sign_in(app: &Router) -> String {
    let request = Request::post("/console/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={ADMIN}")))
        .unwrap();
    let answer = app.clone().oneshot(request).await.unwrap();
    let cookie = answer.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// Median and p95 milliseconds of `rounds` GETs of `path`, and the answer's size in bytes.
async fn measure(app: &Router, path: &str, auth: (&str, &str), rounds: usize) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(rounds);
    let mut size = 0;
    for _ in 0..rounds {
        let request = Request::get(path)
            .header(auth.0, auth.1)
            .body(Body::empty())
            .unwrap();
        let started = Instant::now();
        let answer = app.clone().oneshot(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        size = body.len();
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.95), size)
}

fn main() {
    let jobs = env_usize("CONSOLE_BENCH_JOBS", 10_000);
    let rounds = env_usize("CONSOLE_BENCH_ROUNDS", 200);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (hub, running) = populate(dir.path(), jobs);
    println!(
        "{jobs} jobs in the database ({:.1} s to fill)",
        started.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let app = hub::api::router(hub.clone()).merge(hub::console::router(hub.clone(), false));
        let cookie = sign_in(&app).await;
        let admin = format!("Bearer {ADMIN}");
        let baseline = measure(
            &app,
            "/api/v1/jobs?limit=50",
            ("authorization", &admin),
            rounds,
        )
        .await;
        println!(
            "{:<44} {:>9} {:>9} {:>9}",
            "page", "p50 ms", "p95 ms", "bytes"
        );
        let row = |name: &str, (p50, p95, size): (f64, f64, usize)| {
            println!("{name:<44} {p50:>9.2} {p95:>9.2} {size:>9}");
        };
        row("baseline: GET /api/v1/jobs?limit=50 (JSON)", baseline);
        let job_page = format!("/console/jobs/{running}");
        let pages = [
            "/console",
            "/console/jobs",
            "/console/jobs?state=finished&agent_type=gpu",
            "/console/jobs?name=build-99",
            "/console/jobs?before=2000",
            job_page.as_str(),
            "/console/agents",
        ];
        for path in pages {
            let figures = measure(&app, path, ("cookie", &cookie), rounds).await;
            let label = if path == job_page {
                "/console/jobs/ID (400 log lines)"
            } else {
                path
            };
            row(label, figures);
            println!(
                "{:<44} {:>8.1}x baseline",
                "",
                figures.0 / baseline.0.max(1e-9)
            );
        }
    });
}
