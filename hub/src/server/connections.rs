//! The accept loop for plain and TLS connections: one permit per open connection (at most
//! `max_connections`), the TLS handshake within its timeout, and each connection served by
//! hyper's HTTP/1 builder with its header timer (`keep_alive_timeout`: the wait for every
//! request's head, idle keep-alive time included). The first request's head has a shorter
//! deadline (`header_read_timeout`): a client that connects and sends nothing, or trickles its
//! headers, holds a connection that long at most. Each request carries its peer's address
//! (`ConnectInfo`) for per-client limits. Shutdown stops accepting, lets in-flight requests
//! finish (hyper-util's `GracefulShutdown`) for up to [`DRAIN`], then returns.

use super::ConnectionLimits;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;

/// How long shutdown waits for in-flight requests (a long-poll ends within a minute; its
/// client asks again elsewhere).
const DRAIN: Duration = Duration::from_secs(30);

/// Accepts connections on `listener` until `shutdown` completes, then drains them.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    acceptor: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            app: app.clone(),
            peer,
            limits: limits.clone(),
            watcher: graceful.watcher(),
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                return connection.serve(stream).await;
            };
            let timeout = connection.limits.tls_handshake_timeout;
            if let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                connection.serve(stream).await;
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}: stopping anyway");
    }
    Ok(())
}

/// Out of file descriptors and the like: waits a moment instead of spinning on the error.
async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One accepted connection and what serving it needs.
struct Connection {
    app: Router,
    peer: SocketAddr,
    limits: ConnectionLimits,
    watcher: Watcher,
}

impl Connection {
    /// Serves HTTP/1 on `io` until the client leaves, a timeout closes it, or shutdown drains it.
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let first_request = Arc::new(AtomicBool::new(false));
        let seen = first_request.clone();
        let peer = self.peer;
        let service = ServiceBuilder::new()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                seen.store(true, Ordering::Relaxed);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            })
            .service(self.app);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.keep_alive_timeout);
        let connection =
            builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let connection = self.watcher.watch(connection);
        let deadline = first_request_deadline(first_request, self.limits.header_read_timeout);
        // Whichever ends first; dropping the connection closes it.
        tokio::select! {
            _ = connection => {}
            () = deadline => tracing::debug!(%peer, "no request head in time: closed"),
        }
    }
}

/// Completes `timeout` after the connection started unless its first request arrived by then
/// (then never).
async fn first_request_deadline(first_request: Arc<AtomicBool>, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if first_request.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}
