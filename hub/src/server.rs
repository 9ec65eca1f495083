//! Serving the hub: the API and the web console (`crate::console`) over HTTP or HTTPS (rustls,
//! PEM cert and key files) on one socket, a housekeeping task (lost agents, time limits,
//! last-sync flushes, secret purges, the console's queue samples), and a graceful shutdown
//! that finishes in-flight requests. It promises bounded resources to whoever can reach the
//! socket: at most `max_connections` connections are served at once (more wait in the listen
//! backlog), and a TLS client that has not finished its handshake in time is dropped.

use crate::api::{router, unix_now};
use crate::hub::Hub;
use limited::LimitedListener;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; further ones wait in the listen backlog. Every agent keeps
    /// one keep-alive connection, so this is above the largest fleet.
    pub max_connections: usize,
    /// A TLS client that has not finished its handshake this long after connecting is dropped.
    pub tls_handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            tls_handshake_timeout: Duration::from_secs(10),
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
                hub.refresh(unix_now())?;
                let lost = hub.maintain(unix_now())?;
                if ticks.is_multiple_of(5) {
                    hub.checkpoint()?;
                }
                if ticks % crate::hub::SAMPLE_EVERY_SECS as u64 == 1 {
                    hub.sample_history(unix_now());
                }
                if ticks % PURGE_EVERY_TICKS == 1 {
                    hub.purge_secrets(unix_now())?;
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
        let result = tokio::task::spawn_blocking(move || hub.refresh(unix_now())).await;
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
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    serve_limited(hub, listener, options.tls, options.limits, shutdown).await
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
    let housekeeping = spawn_housekeeping(hub.clone());
    // The console's cookies are `Secure` whenever browsers reach the hub over HTTPS.
    let secure = tls.is_some() || hub.config().public_url.starts_with("https://");
    let app = router(hub.clone()).merge(crate::console::router(hub.clone(), secure));
    let listener = LimitedListener::new(listener, limits.max_connections);
    let result = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some((cert, key)) => {
            let timeout = limits.tls_handshake_timeout;
            tls::serve(listener, app, (&cert, &key), timeout, shutdown).await
        }
    };
    housekeeping.abort();
    // A last flush of agents' last-sync times.
    let _ = tokio::task::spawn_blocking(move || hub.maintain(unix_now())).await;
    result
}

mod limited {
    //! A listener that holds one semaphore permit per open connection, so at most `max`
    //! connections are open at once; accepting waits for a permit first.
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{OwnedSemaphorePermit, Semaphore};

    pub struct LimitedListener {
        inner: TcpListener,
        permits: Arc<Semaphore>,
    }

    impl LimitedListener {
        pub fn new(inner: TcpListener, max: usize) -> LimitedListener {
            LimitedListener {
                inner,
                permits: Arc::new(Semaphore::new(max.max(1))),
            }
        }
    }

    /// A connection and its permit, given back when the connection is dropped.
    pub struct Limited {
        stream: TcpStream,
        _permit: OwnedSemaphorePermit,
    }

    impl axum::serve::Listener for LimitedListener {
        type Io = Limited;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Limited, Self::Addr) {
            // The semaphore is never closed, so acquiring cannot fail.
            let permit = self.permits.clone().acquire_owned().await;
            let permit = permit.expect("the connection semaphore is never closed");
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            let io = Limited {
                stream,
                _permit: permit,
            };
            (io, addr)
        }

        fn local_addr(&self) -> io::Result<Self::Addr> {
            self.inner.local_addr()
        }
    }

    impl AsyncRead for Limited {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Limited {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }
}

mod tls {
    use super::limited::LimitedListener;
    use axum::serve::Listener;
    use axum::Router;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use std::future::Future;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    fn load_config(cert: &Path, key: &Path) -> std::io::Result<tokio_rustls::rustls::ServerConfig> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let cert_pem = std::fs::read(cert)
            .map_err(|e| invalid(format!("reading TLS certificate {}: {e}", cert.display())))?;
        let key_pem = std::fs::read(key)
            .map_err(|e| invalid(format!("reading TLS key {}: {e}", key.display())))?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("TLS certificate {}: {e}", cert.display())))?;
        if certs.is_empty() {
            return Err(invalid(format!("no certificate in {}", cert.display())));
        }
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| invalid(format!("TLS key {}: {e}", key.display())))?
            .ok_or_else(|| invalid(format!("no private key in {}", key.display())))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid(format!("TLS certificate and key do not match: {e}")))
    }

    /// Serves `app` over TLS; a handshake not done within `handshake_timeout` is dropped.
    pub async fn serve(
        mut listener: LimitedListener,
        app: Router,
        (cert, key): (&Path, &Path),
        handshake_timeout: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(load_config(cert, key)?));
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = &mut shutdown => return Ok(()),
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                let Ok(Ok(stream)) = handshake.await else {
                    return;
                };
                let service = TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}
