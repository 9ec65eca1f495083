//! `scaler hub`: opens the hub's data directory, makes sure there is an admin token and a default
//! agent type, and serves until SIGINT/SIGTERM. What it writes is its user's only (umask 077),
//! and it will not send tokens and job secrets in clear text over a network: on an address other
//! than loopback it needs TLS, or an explicit `--plain-http-behind-proxy`.
//!
//! With `--database postgres://…` it is one replica of a hub on PostgreSQL: any number of them
//! serve the same queue. Their tokens come from outside (`--admin-token`, and
//! `--registration-token` for the default agent type), so every replica is started the same way.
//! `scaler hub migrate|export|import` are in `hub_admin.rs`.

use anyhow::{bail, Context, Result};
use hub::api::EdgeLimits;
use hub::hub::{Hub, HubConfig};
use hub::server::{serve, ConnectionLimits, ServeOptions};
use hub::store::{Durability, StoreLocation};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `scaler hub`: serve, or one of the administration commands.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct HubCommand {
    #[command(subcommand)]
    pub admin: Option<super::hub_admin::HubAdmin>,
    #[command(flatten)]
    pub serve: HubArgs,
}

/// Where the hub's state lives: PostgreSQL when `--database` is given, else SQLite in the data
/// directory.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct DatabaseArgs {
    /// A PostgreSQL URL (postgres://USER:PASSWORD@HOST:5432/DB?sslmode=require): several hub
    /// replicas share it. Prefer the environment variable: arguments are visible to every user.
    #[arg(long, env = "FLOTILLA_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// PEM certificates of the authorities that sign the database server's certificate (TLS to
    /// the database; e.g. the RDS CA bundle).
    #[arg(long, env = "FLOTILLA_DATABASE_CA", requires = "database")]
    pub database_ca: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The store these flags name, SQLite in `data_dir` by default.
    pub(crate) fn location(&self, data_dir: &Path) -> StoreLocation {
        match &self.database {
            Some(url) => StoreLocation::Postgres {
                url: url.clone(),
                ca_file: self.database_ca.clone(),
            },
            None => StoreLocation::Sqlite {
                data_dir: data_dir.to_path_buf(),
            },
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct HubArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// With --database: the default agent type's registration token (created with it when the
    /// type does not exist; refused if it exists with another).
    #[arg(
        long,
        env = "FLOTILLA_REGISTRATION_TOKEN",
        hide_env_values = true,
        requires = "database"
    )]
    pub registration_token: Option<String>,
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
    /// Seconds without a sync after which agents give up (stop their job and exit); the hub
    /// remembers a lost agent this long so that one whose link heals can resume its job if nobody
    /// else took it. Agents' `--give-up-after` must be the same; longer than --lost-after.
    #[arg(long, env = "FLOTILLA_GIVE_UP_AFTER", default_value_t = protocol::GIVE_UP_AFTER_SECS)]
    pub give_up_after: i64,
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
    /// The default agent type's registration rule, set at every start when any of these flags
    /// is given (else left as it is).
    #[command(flatten)]
    pub default_type_rule: super::registration_rule::RegistrationRuleArgs,
    /// Log format.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// A job's time limit in seconds when neither its spec nor its agent type sets one.
    #[arg(long, env = "FLOTILLA_JOB_TIME_LIMIT", default_value_t = 3600)]
    pub job_time_limit: i64,
    /// Seconds after a job finishes when its environment values and file contents are purged
    /// from the database (the job and its log stay).
    #[arg(long, env = "FLOTILLA_SECRET_RETENTION", default_value_t = 3600)]
    pub secret_retention: i64,
    /// Connections served at once; more wait in the listen backlog, and at the limit the oldest
    /// connection that never sent a request is closed for a new one. Every agent keeps one
    /// open: set it above the fleet's size. The open-files limit is raised to its hard limit at
    /// start, and the value lowered (with a warning) if that limit cannot hold it.
    #[arg(long, env = "FLOTILLA_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Seconds a TLS client has to finish its handshake.
    #[arg(long, env = "FLOTILLA_TLS_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub tls_handshake_timeout: u64,
    /// Seconds a new connection has to send its first request's head (request line and headers);
    /// one that sends nothing, or trickles, is closed.
    #[arg(long, env = "FLOTILLA_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Seconds a connection may stay idle between requests (its next request's head included).
    /// Agents sync every second; behind a load balancer set it above the balancer's idle timeout.
    #[arg(long, env = "FLOTILLA_KEEP_ALIVE_TIMEOUT", default_value_t = 30)]
    pub keep_alive_timeout: u64,
    /// Seconds a request's whole body has to arrive in, once its token has been checked.
    #[arg(long, env = "FLOTILLA_BODY_READ_TIMEOUT", default_value_t = 30)]
    pub body_read_timeout: u64,
    /// Log pushes read or stored at once, over all jobs (more get 429; agents retry).
    #[arg(long, env = "FLOTILLA_MAX_LOG_PUSHES", default_value_t = 64)]
    pub max_log_pushes: usize,
    /// Log pushes read or stored at once for one job.
    #[arg(long, env = "FLOTILLA_MAX_LOG_PUSHES_PER_JOB", default_value_t = 2)]
    pub max_log_pushes_per_job: usize,
    /// Live agents one agent type may have; registrations beyond get 429.
    #[arg(long, env = "FLOTILLA_MAX_AGENTS_PER_TYPE", default_value_t = 10_000)]
    pub max_agents_per_type: usize,
    /// A bearer token Prometheus must send to read /metrics (its `authorization` setting);
    /// /metrics is open without it.
    #[arg(long, env = "FLOTILLA_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// PEM certificates for instance identity documents (`region: NAME` lines before each),
    /// instead of the AWS certificates shipped with the hub (tests, other partitions).
    #[arg(long, env = "FLOTILLA_IDENTITY_CERTIFICATES")]
    pub identity_certificates: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address because a TLS-terminating proxy is in front.
    #[arg(long, env = "FLOTILLA_PLAIN_HTTP_BEHIND_PROXY")]
    pub plain_http_behind_proxy: bool,
}

/// Files and directories the process creates are its user's only. `scaler hub` and `scaler up`
/// call this first: the hub's database holds jobs' secrets.
pub(crate) fn private_umask() {
    // SAFETY: umask only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Refuses plain HTTP on an address other than loopback unless a proxy terminates TLS.
fn check_plain_http(listen: SocketAddr, tls: bool, behind_proxy: bool) -> Result<()> {
    if tls || behind_proxy || listen.ip().is_loopback() {
        return Ok(());
    }
    bail!(
        "refusing to serve plain HTTP on {listen}: agents' tokens and jobs' secrets would cross \
         the network in clear text. Give --tls-cert and --tls-key, listen on 127.0.0.1, or pass \
         --plain-http-behind-proxy if a TLS-terminating proxy is in front of the hub"
    )
}

pub(crate) fn run(command: HubCommand) -> Result<i32> {
    private_umask();
    if let Some(admin) = command.admin {
        return super::hub_admin::run(admin);
    }
    let args = command.serve;
    crate::logging::init(&args.log_format);
    check_plain_http(
        args.listen,
        args.tls_cert.is_some(),
        args.plain_http_behind_proxy,
    )?;
    check_edge_flags(&args)?;
    if args.database.database.is_some() {
        return serve_replica(&args);
    }
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
    let public_url = public_url(&args);
    let config = hub_config(&args, secrets.hub_config(&public_url))?;
    let now = hub::clock::unix_now();
    let hub = Hub::open(&args.data_dir, config, now)
        .with_context(|| format!("cannot open the hub in {}", args.data_dir.display()))?;
    set_default_type_rule(&args, &hub)?;
    let store = args.data_dir.display().to_string();
    serve_hub(&args, hub, public_url, store)
}

/// The URL agents reach this hub at.
fn public_url(args: &HubArgs) -> String {
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    args.public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", args.listen))
}

/// One replica of a hub on PostgreSQL: its tokens come from its flags, not a data directory.
fn serve_replica(args: &HubArgs) -> Result<i32> {
    let admin_token = args.admin_token.clone().context(
        "--database needs --admin-token (or FLOTILLA_ADMIN_TOKEN): every replica checks the same one",
    )?;
    if admin_token.len() < hub::bootstrap::MIN_ADMIN_TOKEN_LEN {
        bail!(
            "the admin token must be at least {} characters",
            hub::bootstrap::MIN_ADMIN_TOKEN_LEN
        );
    }
    let public_url = public_url(args);
    let config = hub_config(args, HubConfig::new(&public_url, &admin_token))?;
    let now = hub::clock::unix_now();
    let location = args.database.location(&args.data_dir);
    let hub = Hub::open_at(&location, config, now)
        .context("cannot open the hub's PostgreSQL database")?;
    if let Some(token) = &args.registration_token {
        hub.ensure_agent_type(&args.default_agent_type, token, now)
            .with_context(|| format!("agent type '{}'", args.default_agent_type))?;
    }
    set_default_type_rule(args, &hub)?;
    serve_hub(args, hub, public_url, "PostgreSQL".to_string())
}

/// Sets the default agent type's registration rule when the flags state one.
fn set_default_type_rule(args: &HubArgs, hub: &Hub) -> Result<()> {
    let rule = &args.default_type_rule;
    if !rule.given() {
        return Ok(());
    }
    let policy = rule.policy();
    hub.set_agent_type_policy(&args.default_agent_type, &policy)
        .with_context(|| {
            format!(
                "the registration rule of agent type '{}'",
                args.default_agent_type
            )
        })?;
    tracing::info!(
        agent_type = %args.default_agent_type,
        require_instance_identity = policy.require_instance_identity,
        single_job_only = policy.single_job_only(),
        "set the default agent type's registration rule"
    );
    Ok(())
}

/// Serves `hub` until SIGINT/SIGTERM.
fn serve_hub(args: &HubArgs, hub: Hub, public_url: String, store: String) -> Result<i32> {
    let options = ServeOptions {
        listen: args.listen,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        limits: connection_limits(args)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tracing::info!(listen = %options.listen, public_url = %public_url, store = %store, "hub serving");
        serve(Arc::new(hub), options, shutdown_signal()).await.context("the hub server failed")
    })?;
    tracing::info!("hub stopped");
    Ok(0)
}

/// File descriptors kept for everything but client connections (the database, its WAL, the
/// store's connections, logs).
const OTHER_FILES: u64 = 512;

/// Raises the open-files limit to its hard limit and returns `wanted` connections, or fewer
/// (with a warning) when even the hard limit cannot hold them beside [`OTHER_FILES`].
fn fit_open_files(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            limit.rlim_max
        } else {
            limit.rlim_cur
        }
    };
    let room = usize::try_from(soft.saturating_sub(OTHER_FILES)).unwrap_or(usize::MAX);
    if wanted > room {
        tracing::warn!(
            wanted,
            open_files = soft,
            "--max-connections is more than the open-files limit allows: serving {room} at once"
        );
        return room.max(1);
    }
    wanted
}

/// What one client may hold of the server, from the flags (checked first).
fn connection_limits(args: &HubArgs) -> Result<ConnectionLimits> {
    check_edge_flags(args)?;
    Ok(ConnectionLimits {
        max_connections: fit_open_files(args.max_connections),
        tls_handshake_timeout: Duration::from_secs(args.tls_handshake_timeout),
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
        keep_alive_timeout: Duration::from_secs(args.keep_alive_timeout),
        edge: EdgeLimits {
            body_read_timeout: Duration::from_secs(args.body_read_timeout),
            max_log_pushes: args.max_log_pushes,
            max_log_pushes_per_job: args.max_log_pushes_per_job,
            metrics_token_hash: args.metrics_token.as_deref().map(hub::tokens::hash),
            trust_forwarded_for: args.plain_http_behind_proxy,
        },
    })
}

/// Refuses edge limits of zero and a short metrics token.
fn check_edge_flags(args: &HubArgs) -> Result<()> {
    let seconds = [
        args.tls_handshake_timeout,
        args.header_read_timeout,
        args.keep_alive_timeout,
        args.body_read_timeout,
    ];
    if seconds.contains(&0) || args.max_log_pushes == 0 || args.max_log_pushes_per_job == 0 {
        bail!(
            "--tls-handshake-timeout, --header-read-timeout, --keep-alive-timeout, \
             --body-read-timeout, --max-log-pushes and --max-log-pushes-per-job must be positive"
        );
    }
    if args
        .metrics_token
        .as_ref()
        .is_some_and(|token| token.len() < 16)
    {
        bail!("--metrics-token must be at least 16 characters");
    }
    Ok(())
}

/// The hub's configuration from the flags, over `config`'s defaults.
fn hub_config(args: &HubArgs, mut config: HubConfig) -> Result<HubConfig> {
    config.lost_after_secs = args.lost_after;
    config.give_up_after_secs = args.give_up_after;
    config.max_log_bytes = args.max_log_bytes;
    config.sync_interval_ms = args.sync_interval_ms;
    config.default_time_limit_secs = args.job_time_limit;
    config.secret_retention_secs = args.secret_retention;
    config.max_agents_per_type = args.max_agents_per_type;
    if let Some(path) = &args.identity_certificates {
        let certificates = hub::identity::Certificates::from_file(path)
            .with_context(|| format!("cannot use {}", path.display()))?;
        config.identity_certificates = Some(std::sync::Arc::new(certificates));
    }
    config.durability = if args.durability == "full" {
        Durability::Full
    } else {
        Durability::Normal
    };
    let durations = [args.lost_after, args.max_log_bytes, args.sync_interval_ms];
    if durations.iter().any(|value| *value < 1) {
        bail!("--lost-after, --max-log-bytes and --sync-interval-ms must be positive");
    }
    if args.lost_after >= args.give_up_after {
        bail!("--lost-after must be shorter than --give-up-after (the agents' give-up time)");
    }
    if args.job_time_limit < 1
        || args.secret_retention < 0
        || args.max_connections < 1
        || args.max_agents_per_type < 1
    {
        bail!(
            "--job-time-limit, --max-connections and --max-agents-per-type must be positive, \
             --secret-retention 0 or more"
        );
    }
    Ok(config)
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{check_plain_http, hub_config, HubArgs};
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        hub: HubArgs,
    }

    fn config_from(flags: &[&str]) -> anyhow::Result<hub::hub::HubConfig> {
        let command = Command::try_parse_from([&["hub"], flags].concat())?;
        hub_config(&command.hub, hub::hub::HubConfig::new("http://h", "a"))
    }

    #[test]
    fn lost_after_must_be_shorter_than_the_agents_give_up_time() {
        let config = config_from(&[]).unwrap();
        assert_eq!(config.give_up_after_secs, protocol::GIVE_UP_AFTER_SECS);
        assert!(config.lost_after_secs < config.give_up_after_secs);
        let scaled = config_from(&["--lost-after", "6", "--give-up-after", "60"]).unwrap();
        assert_eq!((scaled.lost_after_secs, scaled.give_up_after_secs), (6, 60));
        for flags in [
            &["--lost-after", "600"][..],
            &["--lost-after", "9", "--give-up-after", "9"],
        ] {
            let error = config_from(flags).unwrap_err();
            assert!(error.to_string().contains("--give-up-after"), "{flags:?}");
        }
    }

    #[test]
    fn plain_http_only_on_loopback_or_behind_a_proxy() {
        let table = [
            ("127.0.0.1:8080", false, false, true),
            ("[::1]:8080", false, false, true),
            ("0.0.0.0:8080", false, false, false),
            ("10.0.0.5:8080", false, false, false),
            ("[::]:8080", false, false, false),
            ("0.0.0.0:8080", true, false, true),
            ("0.0.0.0:8080", false, true, true),
        ];
        for (listen, tls, proxy, allowed) in table {
            let result = check_plain_http(listen.parse().unwrap(), tls, proxy);
            assert_eq!(result.is_ok(), allowed, "{listen} tls={tls} proxy={proxy}");
        }
        let error = check_plain_http("0.0.0.0:1".parse().unwrap(), false, false).unwrap_err();
        assert!(error.to_string().contains("--plain-http-behind-proxy"));
    }
}
