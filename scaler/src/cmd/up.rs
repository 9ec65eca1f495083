//! `scaler up`: the whole product on one machine — the hub (embedded), a local fleet of agent
//! processes and the control loop — with live progress and, at the end, a table of every job's
//! timeline. `--examples` submits the job specs under `examples/jobs/`.

use crate::cmd::run::stop_on_signals;
use crate::cmd::HUB_URL_FILE;
use anyhow::{bail, Context, Result};
use hub::hub::Hub;
use protocol::views::JobView;
use protocol::JobSpec;
use scaling::config::default_agent_binary;
use scaling::control::{FleetLoop, LoopStatus};
use scaling::fleet::{LocalFleet, LocalFleetConfig};
use scaling::policy::PolicyConfig;
use scaling::queue::MetricsQueue;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The agent type `up` runs its jobs as.
const AGENT_TYPE: &str = protocol::spec::DEFAULT_AGENT_TYPE;

#[derive(clap::Args)]
pub(crate) struct UpArgs {
    /// Where the hub keeps its database, tokens and the fleet's working directories.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "flotilla-data")]
    pub data_dir: PathBuf,
    /// Address for the hub. When the default port is taken, any free port is used instead; the
    /// URL is recorded in <data-dir>/hub-url, where `scaler jobs|agents|agent-types` find it.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
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
            job.result
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            seconds(job.queued_at, job.assigned_at),
            seconds(job.queued_at, job.started_at),
            seconds(job.queued_at, job.finished_at),
            job.attempts
        );
    }
    println!("(times are seconds after the job was queued)");
}

/// The embedded hub, serving on `url`, and the default agent type's registration token.
struct RunningHub {
    hub: Arc<Hub>,
    url: String,
    address: SocketAddr,
    registration: String,
    runtime: tokio::runtime::Runtime,
}

/// Logs go to <data-dir>/scaler-up.log: the terminal is for the progress line and the table.
fn log_to_file(data_dir: &Path) -> Result<()> {
    let log_path = data_dir.join("scaler-up.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(Mutex::new(log_file))
        .with_ansi(false)
        .try_init();
    Ok(())
}

/// Binds `listen`; the default address falls back to any free port when it is taken.
fn bind(runtime: &tokio::runtime::Runtime, listen: SocketAddr) -> Result<tokio::net::TcpListener> {
    match runtime.block_on(tokio::net::TcpListener::bind(listen)) {
        Ok(listener) => Ok(listener),
        Err(error)
            if error.kind() == std::io::ErrorKind::AddrInUse
                && listen.to_string() == DEFAULT_LISTEN =>
        {
            let any = SocketAddr::new(listen.ip(), 0);
            runtime
                .block_on(tokio::net::TcpListener::bind(any))
                .with_context(|| format!("cannot listen on {any}"))
        }
        Err(error) => Err(error).with_context(|| format!("cannot listen on {listen}")),
    }
}

/// Opens the hub in the data directory (admin token and default agent type made on first use),
/// serves it, and records its URL for the CLI.
fn start_hub(args: &UpArgs) -> Result<RunningHub> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = bind(&runtime, args.listen)?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}");
    let now = hub::clock::unix_now();
    let secrets = hub::bootstrap(&args.data_dir)?;
    let mut config = secrets.hub_config(&url);
    config.lost_after_secs = args.lost_after;
    config.sync_interval_ms = 250;
    let hub = Arc::new(
        Hub::open(&args.data_dir, config, now)
            .with_context(|| format!("cannot open the hub in {}", args.data_dir.display()))?,
    );
    let registration = secrets.registration_token()?.to_string();
    let serving = hub.clone();
    runtime.spawn(async move {
        hub::server::serve_on(serving, listener, None, std::future::pending()).await
    });
    let url_file = args.data_dir.join(HUB_URL_FILE);
    std::fs::write(&url_file, format!("{url}\n"))
        .with_context(|| format!("cannot write {}", url_file.display()))?;
    Ok(RunningHub {
        hub,
        url,
        address,
        registration,
        runtime,
    })
}

/// Submits the job specs as the default agent type; returns their ids in order.
fn submit_all(hub: &Hub, specs: Vec<(PathBuf, JobSpec)>) -> Result<Vec<String>> {
    let mut submitted = Vec::new();
    for (file, mut spec) in specs {
        spec.agent_type = AGENT_TYPE.to_string();
        let job = hub
            .submit(spec, hub::clock::unix_now())
            .with_context(|| format!("submitting {}", file.display()))?;
        submitted.push(job.id);
    }
    Ok(submitted)
}

/// Starts the local fleet's control loop on a thread; it stops (and stops its agents) on `stop`.
fn start_fleet(
    args: &UpArgs,
    running: &RunningHub,
    stop: Arc<AtomicBool>,
) -> Result<(Arc<Mutex<LoopStatus>>, JoinHandle<()>)> {
    let agent_binary = args
        .agent_binary
        .clone()
        .unwrap_or_else(default_agent_binary);
    let fleet = LocalFleet::new(LocalFleetConfig {
        pool: "local".into(),
        min: 0,
        max: args.max_agents,
        agent_binary,
        endpoint: running.address.to_string(),
        no_https: true,
        registration_token: running.registration.clone(),
        work_dir: args.data_dir.join("fleet"),
    })?;
    let queue = MetricsQueue::new(&running.url, &running.registration, true);
    let mut fleet_loop = FleetLoop::new(
        AGENT_TYPE,
        Box::new(queue),
        Box::new(fleet),
        PolicyConfig::default(),
        false,
        Duration::from_millis(500),
    );
    let status = fleet_loop.status.clone();
    let thread = std::thread::spawn(move || {
        fleet_loop.run(&stop);
        drop(fleet_loop); // stops any instances still running
    });
    Ok((status, thread))
}

/// Shows one progress line until the submitted jobs are done and the fleet drained (or until
/// SIGINT/SIGTERM with `--keep-running`).
fn follow_progress(
    args: &UpArgs,
    hub: &Hub,
    submitted: &[String],
    status: &Mutex<LoopStatus>,
    stop: &AtomicBool,
) {
    let interactive = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_line = String::new();
    let mut finished_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let snapshot: LoopStatus = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let done = submitted
            .iter()
            .filter_map(|id| hub.job(id).ok())
            .filter(|job| job.state.is_finished())
            .count();
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
        if interactive {
            print!("\r{line}");
            let _ = std::io::stdout().flush();
        } else if line[9..] != *last_line.get(9..).unwrap_or("") {
            println!("{line}");
        }
        last_line = line;
        if !submitted.is_empty() && done == submitted.len() && !args.keep_running {
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
}

pub(crate) fn run(args: UpArgs) -> Result<i32> {
    super::hub::private_umask();
    if args.max_agents == 0 {
        bail!("--max-agents must be at least 1");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    log_to_file(&args.data_dir)?;
    let mut files = args.submit.clone();
    if args.examples {
        files.extend(example_files(Path::new("examples/jobs"))?);
    }
    let specs: Vec<(PathBuf, JobSpec)> = files
        .iter()
        .map(|f| super::load_job_spec(f).map(|s| (f.clone(), s)))
        .collect::<Result<_>>()?;
    let running = start_hub(&args)?;
    let submitted = submit_all(&running.hub, specs)?;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone())?;
    let (status, loop_thread) = start_fleet(&args, &running, stop.clone())?;
    println!(
        "Flotilla is up: hub {} (data in {}), local fleet of up to {} agents",
        running.url,
        args.data_dir.display(),
        args.max_agents
    );
    println!(
        "  web console:  {}/console   (sign in with the token in {})",
        running.url,
        args.data_dir
            .join(hub::bootstrap::ADMIN_TOKEN_FILE)
            .display()
    );
    println!(
        "  submit more:  scaler jobs submit FILE   (the CLI finds this hub through {})",
        args.data_dir.join(HUB_URL_FILE).display()
    );
    if !submitted.is_empty() {
        println!("  {} job(s) submitted", submitted.len());
    }
    follow_progress(&args, &running.hub, &submitted, &status, &stop);
    stop.store(true, Ordering::Relaxed);
    let _ = loop_thread.join();
    let jobs: Vec<JobView> = submitted
        .iter()
        .filter_map(|id| running.hub.job(id).ok())
        .collect();
    Ok(report(&args, &jobs, &status, running))
}

/// Prints the table and the summary; the exit code is 0 when every job passed.
fn report(args: &UpArgs, jobs: &[JobView], status: &Mutex<LoopStatus>, running: RunningHub) -> i32 {
    if !jobs.is_empty() {
        print_table(jobs);
    }
    let passed = jobs
        .iter()
        .filter(|j| j.result == Some(protocol::JobResult::Passed))
        .count();
    println!("{passed} passed, {} failed", jobs.len() - passed);
    println!(
        "fleet back to {} agents; hub log and data in {}",
        status.lock().unwrap_or_else(|p| p.into_inner()).in_service,
        args.data_dir.display()
    );
    let _ = std::fs::remove_file(args.data_dir.join(HUB_URL_FILE));
    running.runtime.shutdown_timeout(Duration::from_secs(2));
    if passed == jobs.len() {
        0
    } else {
        1
    }
}
