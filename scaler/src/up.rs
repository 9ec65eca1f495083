//! `scaler up`: the whole product on one machine — the hub (embedded), a local fleet of agent
//! processes and the control loop — with live progress and, at the end, a table of every job's
//! timeline. `--examples` submits the job specs under `examples/jobs/`.

use crate::control::{FleetLoop, LoopStatus};
use crate::fleet::{LocalFleet, LocalFleetConfig};
use crate::policy::PolicyConfig;
use crate::queue::MetricsQueue;
use crate::run::{default_agent_binary, stop_on_signals};
use crate::serve::write_secret;
use anyhow::{bail, Context, Result};
use hub::hub::{Hub, HubConfig, JobView};
use protocol::JobSpec;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the hub keeps its database, tokens and the fleet's working directories.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "flotilla-data")]
    pub data_dir: PathBuf,
    /// Address for the hub (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Most agents running at once.
    #[arg(long, default_value_t = 4)]
    pub max_agents: u32,
    /// Submit the example jobs under examples/jobs.
    #[arg(long)]
    pub examples: bool,
    /// Submit these job spec files (YAML or JSON).
    #[arg(long = "submit")]
    pub submit: Vec<PathBuf>,
    /// Keep serving after the submitted jobs are done (stop with Ctrl-C).
    #[arg(long)]
    pub keep_running: bool,
    /// The agent binary [default: `agent` beside `scaler`].
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// Seconds without a sync after which an agent counts as lost.
    #[arg(long, default_value_t = 10)]
    pub lost_after: i64,
}

fn example_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "cannot read {} (run from the repository root, or use --submit)",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

fn load_spec(path: &Path) -> Result<JobSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec: JobSpec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)?
    } else {
        serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid job spec", path.display()))?
    };
    spec.validate()
        .with_context(|| format!("{} is not a valid job spec", path.display()))?;
    Ok(spec)
}

fn seconds(from: i64, to: Option<i64>) -> String {
    to.map(|to| format!("{}s", (to - from).max(0)))
        .unwrap_or_else(|| "-".into())
}

fn print_table(jobs: &[JobView]) {
    println!();
    println!(
        "{:<8}  {:<34}  {:<7}  {:>8}  {:>8}  {:>8}  {:>8}",
        "JOB", "NAME", "RESULT", "ASSIGNED", "STARTED", "FINISHED", "ATTEMPTS"
    );
    for job in jobs {
        let name: String = job.name.chars().take(34).collect();
        println!(
            "{:<8}  {:<34}  {:<7}  {:>8}  {:>8}  {:>8}  {:>8}",
            &job.id[..8],
            name,
            job.result.as_deref().unwrap_or("-"),
            seconds(job.queued_at, job.assigned_at),
            seconds(job.queued_at, job.started_at),
            seconds(job.queued_at, job.finished_at),
            job.attempts
        );
    }
    println!("(times are seconds after the job was queued)");
}

pub fn run(args: UpArgs) -> Result<i32> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let log_path = args.data_dir.join("scaler-up.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(Mutex::new(log_file))
        .with_ansi(false)
        .try_init();
    if args.max_agents == 0 {
        bail!("--max-agents must be at least 1");
    }
    let mut files = args.submit.clone();
    if args.examples {
        files.extend(example_files(Path::new("examples/jobs"))?);
    }
    let specs: Vec<(PathBuf, JobSpec)> = files
        .iter()
        .map(|f| load_spec(f).map(|s| (f.clone(), s)))
        .collect::<Result<_>>()?;
    let agent_binary = args
        .agent_binary
        .clone()
        .unwrap_or_else(default_agent_binary);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}");
    let admin = match std::fs::read_to_string(args.data_dir.join("admin-token")) {
        Ok(token) => token.trim().to_string(),
        Err(_) => {
            let token = hub::tokens::new_token();
            write_secret(&args.data_dir.join("admin-token"), &token)?;
            token
        }
    };
    let mut config = HubConfig::new(&url, &admin);
    config.lost_after_secs = args.lost_after;
    config.sync_interval_ms = 250;
    let now = hub::api::unix_now();
    let hub = Arc::new(
        Hub::open(&args.data_dir, config, now)
            .with_context(|| format!("cannot open the hub in {}", args.data_dir.display()))?,
    );
    let type_name = protocol::spec::DEFAULT_AGENT_TYPE;
    let token_path = args.data_dir.join(format!("{type_name}.token"));
    let registration = if hub.agent_types().iter().any(|(name, _)| name == type_name) {
        std::fs::read_to_string(&token_path)
            .with_context(|| {
                format!(
                    "agent type '{type_name}' exists but {} is missing: use a fresh --data-dir",
                    token_path.display()
                )
            })?
            .trim()
            .to_string()
    } else {
        let token = hub.create_agent_type(type_name, now)?;
        write_secret(&token_path, &token)?;
        token
    };
    let serving = hub.clone();
    runtime.spawn(async move {
        hub::server::serve_on(serving, listener, None, std::future::pending()).await
    });

    let mut submitted = Vec::new();
    for (file, mut spec) in specs {
        spec.agent_type = type_name.to_string();
        let job = hub
            .submit(spec, hub::api::unix_now())
            .with_context(|| format!("submitting {}", file.display()))?;
        submitted.push(job.id);
    }

    let fleet = LocalFleet::new(LocalFleetConfig {
        pool: "local".into(),
        min: 0,
        max: args.max_agents,
        agent_binary,
        endpoint: address.to_string(),
        no_https: true,
        registration_token: registration.clone(),
        work_dir: args.data_dir.join("fleet"),
    })
    .map_err(anyhow::Error::msg)?;
    let queue = MetricsQueue::new(&url, &registration, true);
    let mut fleet_loop = FleetLoop::new(
        type_name,
        Box::new(queue),
        Box::new(fleet),
        PolicyConfig::default(),
        false,
        Duration::from_millis(500),
    );
    let status = fleet_loop.status.clone();
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone())?;
    let loop_stop = stop.clone();
    let loop_thread = std::thread::spawn(move || {
        fleet_loop.run(&loop_stop);
        drop(fleet_loop); // stops any instances still running
    });

    println!(
        "Flotilla is up: hub {url} (data in {}), local fleet of up to {} agents",
        args.data_dir.display(),
        args.max_agents
    );
    println!(
        "  submit more:  scaler jobs submit FILE --hub {url} --data-dir {}",
        args.data_dir.display()
    );
    if !submitted.is_empty() {
        println!("  {} job(s) submitted", submitted.len());
    }
    let interactive = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_line = String::new();
    let mut finished_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let snapshot: LoopStatus = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let jobs: Vec<JobView> = submitted.iter().filter_map(|id| hub.job(id).ok()).collect();
        let done = jobs.iter().filter(|j| j.state == "finished").count();
        let line = format!(
            "[{:>5.1}s] queued {:>2} · running {:>2} · fleet {}/{} agents · jobs done {}/{}",
            started.elapsed().as_secs_f64(),
            snapshot.queue.queued,
            snapshot.queue.running,
            snapshot.in_service,
            args.max_agents,
            done,
            submitted.len()
        );
        let changed = line[9..] != *last_line.get(9..).unwrap_or("");
        if interactive {
            print!("\r{line}");
            let _ = std::io::stdout().flush();
        } else if changed {
            println!("{line}");
        }
        last_line = line;
        let all_done = !submitted.is_empty() && done == submitted.len();
        if all_done && !args.keep_running {
            // Let the fleet drain to zero (agents remove themselves after their job).
            let drained = snapshot.in_service == 0 && snapshot.desired == 0;
            let waited = *finished_at.get_or_insert_with(Instant::now);
            if drained || waited.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
    }
    if interactive {
        println!();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = loop_thread.join();
    let jobs: Vec<JobView> = submitted.iter().filter_map(|id| hub.job(id).ok()).collect();
    if !jobs.is_empty() {
        print_table(&jobs);
    }
    let passed = jobs
        .iter()
        .filter(|j| j.result.as_deref() == Some("passed"))
        .count();
    println!("{passed} passed, {} failed", jobs.len() - passed);
    println!(
        "fleet back to {} agents; hub log and data in {}",
        status.lock().unwrap_or_else(|p| p.into_inner()).in_service,
        args.data_dir.display()
    );
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(if passed == jobs.len() { 0 } else { 1 })
}

use std::sync::Mutex;
