//! `scaler hub`: opens the hub's data directory, makes sure there is an admin token and a default
//! agent type, and serves until SIGINT/SIGTERM.

use anyhow::{bail, Context, Result};
use hub::hub::Hub;
use hub::server::{serve, ServeOptions};
use hub::store::Durability;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct HubArgs {
    /// Address to listen on.
    #[arg(long, env = "FLOTILLA_HUB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the database and tokens live.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "flotilla-data")]
    pub data_dir: PathBuf,
    /// The URL agents reach this hub at (log pushes go there) [default: http(s)://<listen>].
    #[arg(long, env = "FLOTILLA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The admin token for the user API [default: <data-dir>/admin-token, created on first start].
    #[arg(long, env = "FLOTILLA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long, env = "FLOTILLA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, env = "FLOTILLA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds without a sync after which an agent is lost (its job re-queued or failed).
    #[arg(long, env = "FLOTILLA_LOST_AFTER", default_value_t = 60)]
    pub lost_after: i64,
    /// Largest job log, in bytes; pushes beyond it get 422.
    #[arg(long, env = "FLOTILLA_MAX_LOG_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_log_bytes: i64,
    /// How long agents wait between syncs (the next_sync_after hint), in ms.
    #[arg(long, env = "FLOTILLA_SYNC_INTERVAL_MS", default_value_t = 1000)]
    pub sync_interval_ms: i64,
    /// fsync every commit (full) or only at checkpoints (normal; survives a killed process).
    #[arg(long, env = "FLOTILLA_DURABILITY", default_value = "normal", value_parser = ["normal", "full"])]
    pub durability: String,
    /// The agent type created on first start (its registration token goes to <data-dir>/<name>.token).
    #[arg(long, env = "FLOTILLA_DEFAULT_AGENT_TYPE", default_value = protocol::spec::DEFAULT_AGENT_TYPE)]
    pub default_agent_type: String,
    /// Log format.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

pub fn run(args: HubArgs) -> Result<i32> {
    crate::logging::init(&args.log_format);
    let options = hub::BootstrapOptions {
        admin_token: args.admin_token.clone(),
        agent_type: args.default_agent_type.clone(),
    };
    let secrets = hub::bootstrap_with(&args.data_dir, &options)?;
    if secrets.created_admin_token {
        eprintln!(
            "scaler hub: created an admin token in {}",
            args.data_dir
                .join(hub::bootstrap::ADMIN_TOKEN_FILE)
                .display()
        );
    }
    if secrets.created_agent_type {
        eprintln!(
            "scaler hub: created agent type '{}'; its registration token is in {}",
            secrets.agent_type,
            secrets.registration_token_file.display()
        );
    }
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", args.listen));
    let mut config = secrets.hub_config(&public_url);
    config.lost_after_secs = args.lost_after;
    config.max_log_bytes = args.max_log_bytes;
    config.sync_interval_ms = args.sync_interval_ms;
    config.durability = if args.durability == "full" {
        Durability::Full
    } else {
        Durability::Normal
    };
    if args.lost_after < 1 || args.max_log_bytes < 1 || args.sync_interval_ms < 1 {
        bail!("--lost-after, --max-log-bytes and --sync-interval-ms must be positive");
    }
    let now = hub::api::unix_now();
    let hub = Hub::open(&args.data_dir, config, now)
        .with_context(|| format!("cannot open the hub in {}", args.data_dir.display()))?;
    let options = ServeOptions {
        listen: args.listen,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tracing::info!(listen = %options.listen, public_url = %public_url, data_dir = %args.data_dir.display(), "hub serving");
        serve(Arc::new(hub), options, shutdown_signal()).await.context("the hub server failed")
    })?;
    tracing::info!("hub stopped");
    Ok(0)
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => {}
    }
}
