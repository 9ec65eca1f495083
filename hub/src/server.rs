//! Serving the hub: the API and the web console (`crate::console`) over HTTP or HTTPS (rustls,
//! PEM cert and key files) on one socket, a housekeeping task (lost agents, time limits,
//! last-sync flushes, secret purges, forgetting agents gone past the give-up time, the
//! console's queue samples), and a graceful shutdown
//! that finishes in-flight requests. It promises bounded resources to whoever can reach the
//! socket: at most `max_connections` connections are served at once (more wait in the listen
//! backlog); a TLS client that has not finished its handshake in time is dropped; so is a client
//! that has not sent its first request's head within `header_read_timeout` of connecting, or
//! its next one within `keep_alive_timeout` of the last response (hyper's own header timer);
//! a body that is not in within `body_read_timeout` is refused by the API (`api::read_body`).
//!
//! Plain and TLS connections share one accept loop over hyper's HTTP/1 connection builder
//! (axum's `serve` sets no header timer and takes no TLS); the loop is hand-written only as far
//! as hyper leaves it to the server: the permit per connection, the TLS handshake and the first
//! request's deadline.

use crate::api::{router_with, EdgeLimits};
use crate::hub::Hub;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; plain HTTP when absent.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub limits: ConnectionLimits,
}

/// What one peer can hold of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; further ones wait in the listen backlog (or, when the
    /// oldest connection that never sent a request is closed for them, get in). Every agent
    /// keeps one keep-alive connection: above the largest fleet, with room for idle sockets.
    pub max_connections: usize,
    /// A TLS client that has not finished its handshake this long after connecting is dropped.
    pub tls_handshake_timeout: Duration,
    /// A client that has not sent its first request's head (request line and headers) this long
    /// after connecting (after its TLS handshake) is dropped.
    pub header_read_timeout: Duration,
    /// A connection idle this long after a response, or whose next request's head is not in
    /// by then, is closed. Agents sync every second; behind a load balancer, set it above the
    /// balancer's own idle timeout (it reuses its connections to the hub).
    pub keep_alive_timeout: Duration,
    /// What the API allows each request's body (time, size) and each job's log pushes.
    pub edge: EdgeLimits,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 20_000,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            edge: EdgeLimits::default(),
        }
    }
}

/// Housekeeping ticks (seconds) between purges of finished jobs' secrets.
const PURGE_EVERY_TICKS: u64 = 60;

/// Runs housekeeping every second until the hub is dropped by everyone else. On a shared store
/// it also catches the hub up with other replicas' commits as they are announced, and every
/// second in case an announcement was missed (a reconnection).
pub fn spawn_housekeeping(hub: Arc<Hub>) -> tokio::task::JoinHandle<()> {
    if let Some(signal) = hub.change_signal() {
        tokio::spawn(follow_replicas(Arc::downgrade(&hub), signal));
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks += 1;
            let hub = hub.clone();
            let result = tokio::task::spawn_blocking(move || {
                let now = hub.now();
                hub.refresh(now)?;
                let lost = hub.maintain(now)?;
                if ticks.is_multiple_of(5) {
                    hub.checkpoint()?;
                }
                if ticks % crate::hub::SAMPLE_EVERY_SECS as u64 == 1 {
                    hub.sample_history(now);
                }
                if ticks % PURGE_EVERY_TICKS == 1 {
                    hub.purge_secrets(now)?;
                    hub.prune_agents(now)?;
                }
                Ok::<_, crate::hub::HubError>(lost)
            })
            .await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::error!(%error, "housekeeping failed"),
                Err(error) => tracing::error!(%error, "housekeeping panicked"),
            }
        }
    })
}

/// Applies other replicas' commits as their `NOTIFY`s arrive, until the hub is gone.
async fn follow_replicas(hub: std::sync::Weak<Hub>, signal: Arc<tokio::sync::Notify>) {
    loop {
        signal.notified().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || hub.refresh(hub.now())).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "catching up with other replicas failed");
        }
    }
}

/// Binds `options.listen` and serves until `shutdown` completes.
pub async fn serve(
    hub: Arc<Hub>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_limited(
        hub,
        bind(options.listen)?,
        options.tls,
        options.limits,
        shutdown,
    )
    .await
}

/// Connections the kernel queues for the accept loop (Linux caps it at `net.core.somaxconn`,
/// 4096 by default): a burst of reconnecting clients is queued rather than their SYNs dropped
/// (a dropped SYN costs the client a second).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address` for the accept loop, as `TcpListener::bind` does but with a longer backlog.
pub fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves on an already bound listener (tests bind port 0) with the default limits.
pub async fn serve_on(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    tls: Option<(PathBuf, PathBuf)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_limited(hub, listener, tls, ConnectionLimits::default(), shutdown).await
}

/// Serves on an already bound listener within `limits`.
pub async fn serve_limited(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    tls: Option<(PathBuf, PathBuf)>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = match &tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls::load_config(
            cert, key,
        )?))),
        None => None,
    };
    let housekeeping = spawn_housekeeping(hub.clone());
    // The console's cookies are `Secure` whenever browsers reach the hub over HTTPS.
    let secure = tls.is_some() || hub.config().public_url.starts_with("https://");
    let app = router_with(hub.clone(), limits.edge.clone()).merge(crate::console::router_with(
        hub.clone(),
        secure,
        &limits.edge,
    ));
    let result = connections::serve(listener, app, acceptor, limits, shutdown).await;
    housekeeping.abort();
    // A last flush of agents' last-sync times.
    let _ = tokio::task::spawn_blocking(move || hub.maintain(hub.now())).await;
    result
}

mod connections;
mod tls;
