//! `scaler run`: the scaling service. Reads the YAML config (a file or an SSM parameter), has the
//! `scaling` crate validate all of it, reads each fleet's registration token, and only then runs
//! one control loop per fleet (a thread each), serves Prometheus `/metrics` and `/healthz` through
//! axum, and stops cleanly on SIGINT/SIGTERM.

use crate::aws;
use anyhow::{Context, Result};
use scaling::config::{parse, FleetKind, ResolvedFleet, ScalerConfig, TokenSource};
use scaling::control::{render_metrics, FleetLoop, LoopStatus};
use scaling::fleet::{Fleet, LocalFleet};
use scaling::queue::MetricsQueue;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The scaler's YAML config (see examples/scaler.yaml).
    #[arg(
        long,
        env = "FLOTILLA_SCALER_CONFIG",
        required_unless_present = "config_ssm_parameter",
        conflicts_with = "config_ssm_parameter"
    )]
    pub config: Option<PathBuf>,
    /// Read the YAML config from this SSM parameter instead (the scaler instance of a deployed
    /// stack; region and credentials from the standard AWS chain).
    #[arg(long, env = "FLOTILLA_CONFIG_SSM_PARAMETER")]
    pub config_ssm_parameter: Option<String>,
    /// Decide and log, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log format.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Append each round's decisions and gauges as CloudWatch Embedded Metric Format lines to
    /// this file (the CloudWatch agent ships it to the scaler's log group; `-` for stdout).
    #[arg(long, env = "FLOTILLA_EMF_FILE")]
    pub emf_file: Option<PathBuf>,
}

/// The EMF sink `--emf-file` names, opened for appending.
fn emf_sink(path: Option<&Path>) -> Result<Option<scaling::emf::Sink>> {
    let Some(path) = path else {
        return Ok(None);
    };
    if path == Path::new("-") {
        return Ok(Some(Arc::new(Mutex::new(std::io::stdout()))));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the EMF file {}", path.display()))?;
    Ok(Some(Arc::new(Mutex::new(file))))
}

/// The config's text, where it came from (for errors) and the directory relative paths start at.
fn read_config_text(args: &RunArgs) -> Result<(String, String, PathBuf)> {
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok((text, path.display().to_string(), base));
    }
    let parameter = args
        .config_ssm_parameter
        .as_deref()
        .context("give --config or --config-ssm-parameter")?;
    let runtime = aws::runtime()?;
    let sdk = aws::sdk_config(&runtime, "", "")?;
    let text =
        aws::ssm_parameter(&runtime, &sdk, parameter).context("reading the scaler config")?;
    Ok((
        text,
        format!("SSM parameter {parameter}"),
        PathBuf::from("."),
    ))
}

/// Reads a fleet's registration token from where the config says it is.
fn read_token(fleet: &ResolvedFleet) -> Result<String> {
    match &fleet.token_source {
        TokenSource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token_file {}", path.display())),
        TokenSource::Env(variable) => {
            std::env::var(variable).with_context(|| format!("token_env {variable} is not set"))
        }
        TokenSource::SsmParameter(parameter) => {
            let (region, endpoint_url) = match &fleet.fleet {
                FleetKind::Aws {
                    region,
                    endpoint_url,
                    ..
                } => (region.as_str(), endpoint_url.as_str()),
                FleetKind::Local(_) => ("", ""),
            };
            let runtime = aws::runtime()?;
            let sdk = aws::sdk_config(&runtime, region, endpoint_url)?;
            aws::ssm_parameter(&runtime, &sdk, parameter)
        }
    }
}

/// Reads and validates the whole config and every token; nothing starts if anything is wrong.
pub(crate) fn load(args: &RunArgs) -> Result<(ScalerConfig, Vec<ResolvedFleet>)> {
    let (text, origin, base) = read_config_text(args)?;
    let (config, mut fleets) = parse(&text, &origin, &base)?;
    for fleet in &mut fleets {
        let token = read_token(fleet).with_context(|| format!("fleet '{}'", fleet.agent_type))?;
        fleet.set_token(&token)?;
    }
    Ok((config, fleets))
}

/// Serves `/metrics` and `/healthz` from the loops' statuses, on a thread of its own.
pub(crate) fn serve_metrics(
    listen: std::net::SocketAddr,
    statuses: Vec<Arc<Mutex<LoopStatus>>>,
) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    let metrics = move || {
        let snapshot: Vec<LoopStatus> = statuses
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        (
            [("content-type", "text/plain; version=0.0.4")],
            render_metrics(&snapshot),
        )
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(metrics())),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, app).await
            })
        })?;
    Ok(())
}

/// Sets `stop` on SIGINT/SIGTERM.
pub(crate) fn stop_on_signals(stop: Arc<AtomicBool>) -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot watch for signals")?;
    }
    Ok(())
}

/// One fleet's control loop, its queue and instances connected.
fn fleet_loop(fleet: ResolvedFleet, dry_run: bool, poll_interval: Duration) -> Result<FleetLoop> {
    let queue = MetricsQueue::new(&fleet.endpoint, &fleet.token, fleet.long_poll);
    let instances: Box<dyn Fleet> = match fleet.fleet {
        FleetKind::Local(local) => Box::new(LocalFleet::new(local)?),
        FleetKind::Aws {
            region,
            endpoint_url,
            groups,
            health,
        } => Box::new(
            aws::fleet::AwsFleet::new(&region, &endpoint_url, groups, health)
                .with_context(|| format!("fleet '{}'", fleet.agent_type))?,
        ),
    };
    let fleet_loop = FleetLoop::new(
        &fleet.agent_type,
        Box::new(queue),
        instances,
        fleet.policy,
        dry_run,
        poll_interval,
    );
    Ok(match fleet.reaper {
        Some(reaper) => fleet_loop.with_reaper(reaper),
        None => fleet_loop,
    })
}

pub(crate) fn run(args: RunArgs) -> Result<i32> {
    crate::logging::init(&args.log_format);
    let (config, fleets) = load(&args)?;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone())?;
    let poll_interval = Duration::from_millis(config.poll_interval_ms);
    let mut loops = Vec::new();
    let emf = emf_sink(args.emf_file.as_deref())?;
    for fleet in fleets {
        let mut fleet_loop = fleet_loop(fleet, args.dry_run, poll_interval)?;
        fleet_loop.emf = emf.clone();
        loops.push(fleet_loop);
    }
    if let Some(listen) = config.metrics_listen {
        serve_metrics(listen, loops.iter().map(|l| l.status.clone()).collect())?;
        tracing::info!(%listen, "serving /metrics");
    }
    tracing::info!(
        fleets = loops.len(),
        dry_run = args.dry_run,
        "scaler running"
    );
    let mut threads = Vec::new();
    for mut fleet_loop in loops {
        let stop = stop.clone();
        let name = format!("loop-{}", fleet_loop.agent_type);
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || fleet_loop.run(&stop))
                .context("cannot start a control loop thread")?,
        );
    }
    for thread in threads {
        let _ = thread.join();
    }
    tracing::info!("scaler stopped; local instances were asked to stop");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_for(yaml: &str, token: Option<&str>) -> (tempfile::TempDir, RunArgs) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(token) = token {
            std::fs::write(dir.path().join("token"), token).unwrap();
        }
        let path = dir.path().join("scaler.yaml");
        std::fs::write(&path, yaml).unwrap();
        let args = RunArgs {
            config: Some(path),
            config_ssm_parameter: None,
            dry_run: true,
            log_format: "text".into(),
            emf_file: None,
        };
        (dir, args)
    }

    const GOOD: &str = "fleets:\n  - agent_type: default\n    queue: {endpoint: 'http://127.0.0.1:8080', token_file: token}\n    local: {max: 4, agent_binary: agent}\n";

    #[test]
    fn tokens_are_read_relative_to_the_config() {
        let (_dir, args) = args_for(GOOD, Some("registration-token\n"));
        let (_, fleets) = load(&args).unwrap();
        assert_eq!(fleets[0].token, "registration-token");
    }

    #[test]
    fn unreadable_or_empty_tokens_are_refused() {
        let table = [
            (None, "cannot read token_file"),
            (Some(" \n"), "the registration token is empty"),
        ];
        for (token, expected) in table {
            let (_dir, args) = args_for(GOOD, token);
            let error = format!("{:#}", load(&args).unwrap_err());
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
            assert!(error.contains("fleet 'default'"), "{error}");
        }
    }
}
