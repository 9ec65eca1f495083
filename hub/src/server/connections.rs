//! The accept loop for plain and TLS connections: one permit per open connection (at most
//! `max_connections`), the TLS handshake within its timeout, and each connection served by
//! hyper's HTTP/1 builder with its header timer (`keep_alive_timeout`: the wait for every
//! request's head, idle keep-alive time included). The first request's head has a shorter
//! deadline (`header_read_timeout`): a client that connects and sends nothing, or trickles its
//! headers, holds a connection that long at most, and at the connection limit the oldest such
//! connection is closed to make room for a new one ([`Silent`]); with none to close, new
//! connections wait for one to end, and the hub logs when that starts and stops ([`AtLimit`]).
//! Each request carries its peer's address (`ConnectInfo`) for per-client limits. Shutdown stops
//! accepting, lets in-flight requests finish (hyper-util's `GracefulShutdown`) for up to
//! [`DRAIN`], then returns.

use super::ConnectionLimits;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
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
    let silent = Arc::new(Silent::default());
    let mut full = AtLimit {
        max_connections: limits.max_connections.max(1),
        waiting: false,
    };
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let permit = tokio::select! {
            permit = place(&permits, &silent, &mut full, peer) => permit,
            () = &mut shutdown => break,
        };
        // Evictable from here, its TLS handshake included, until its first request.
        let (id, evicted) = silent.enter();
        let connection = Connection {
            app: app.clone(),
            peer,
            limits: limits.clone(),
            watcher: graceful.watcher(),
            silent: silent.clone(),
            id,
            first_request: Arc::new(AtomicBool::new(false)),
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (silent, first_request) =
                (connection.silent.clone(), connection.first_request.clone());
            tokio::select! {
                () = connection.handshake_and_serve(stream, acceptor) => {}
                () = evicted_while_silent(evicted, first_request) => {
                    tracing::debug!(%peer, "silent at the connection limit: closed");
                }
            }
            silent.leave(id);
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

/// A place for a new connection: a free one, or, when every place is taken, the one the
/// oldest connection that never sent a request leaves when it is closed for it (asked again
/// every 100 ms while the new one waits, as connections come and go); with none silent, the
/// new connection waits for any to end (as in the backlog), which `full` logs.
async fn place(
    permits: &Arc<Semaphore>,
    silent: &Silent,
    full: &mut AtLimit,
    peer: SocketAddr,
) -> OwnedSemaphorePermit {
    let mut first_try = true;
    loop {
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            if first_try {
                full.below(peer);
            }
            return permit;
        }
        first_try = false;
        if !silent.evict_oldest() {
            full.waits(peer);
        }
        let freed = tokio::time::timeout(EVICT_AGAIN, permits.clone().acquire_owned()).await;
        if let Ok(Ok(permit)) = freed {
            return permit;
        }
    }
}

/// How often a connection waiting for a place asks for another silent one to be closed.
const EVICT_AGAIN: Duration = Duration::from_millis(100);

/// Whether new connections wait because every place is held by a connection that sent a
/// request, logged when that changes: the first connection that has to wait for one to end is
/// named (an operator's sign that `--max-connections` is too low, or that clients hold their
/// connections; a test's sign that a connection waits), and so is the first that finds a free
/// place again. Once per change, not per connection: a flood at the limit logs one line.
struct AtLimit {
    max_connections: usize,
    waiting: bool,
}

impl AtLimit {
    fn waits(&mut self, peer: SocketAddr) {
        if !std::mem::replace(&mut self.waiting, true) {
            tracing::info!(
                %peer,
                max_connections = self.max_connections,
                "at the connection limit, every connection busy: new connections wait for one to end"
            );
        }
    }

    fn below(&mut self, peer: SocketAddr) {
        if std::mem::replace(&mut self.waiting, false) {
            tracing::info!(%peer, "below the connection limit again");
        }
    }
}

/// Completes when the connection is evicted before its first request arrived; a request that
/// arrived first wins (the eviction is then ignored, and the next waiter evicts another).
async fn evicted_while_silent(evicted: oneshot::Receiver<()>, first_request: Arc<AtomicBool>) {
    if evicted.await.is_err() || first_request.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

/// Out of file descriptors and the like: waits a moment instead of spinning on the error.
async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The connections that have not sent a request yet, oldest first, each with the means to
/// close it: at the connection limit the oldest makes room for a new one, so silent sockets
/// cannot lock clients out (a client sends its request as soon as it connects).
#[derive(Default)]
struct Silent {
    next: AtomicU64,
    by_age: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
}

impl Silent {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        self.by_age
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection; the receiver completes when it is evicted.
    fn enter(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (evict, evicted) = oneshot::channel();
        self.lock().insert(id, evict);
        (id, evicted)
    }

    /// The connection sent its first request, or ended: it is no longer evictable.
    fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the oldest silent connection, if there is one (whether there was).
    fn evict_oldest(&self) -> bool {
        let oldest = self.lock().pop_first();
        let Some((_, evict)) = oldest else {
            return false;
        };
        let _ = evict.send(());
        true
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    app: Router,
    peer: SocketAddr,
    limits: ConnectionLimits,
    watcher: Watcher,
    silent: Arc<Silent>,
    /// Its place among the silent connections until its first request.
    id: u64,
    first_request: Arc<AtomicBool>,
}

impl Connection {
    /// Finishes the TLS handshake (when serving TLS) within its timeout, then serves.
    async fn handshake_and_serve(self, stream: TcpStream, acceptor: Option<TlsAcceptor>) {
        let Some(acceptor) = acceptor else {
            return self.serve(stream).await;
        };
        let timeout = self.limits.tls_handshake_timeout;
        if let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            self.serve(stream).await;
        }
    }

    /// Serves HTTP/1 on `io` until the client leaves, a timeout closes it, or shutdown drains
    /// it.
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let first_request = self.first_request.clone();
        let (seen, silent, id) = (first_request.clone(), self.silent.clone(), self.id);
        let peer = self.peer;
        let service = ServiceBuilder::new()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                if !seen.swap(true, Ordering::SeqCst) {
                    silent.leave(id);
                }
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
    if first_request.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}
