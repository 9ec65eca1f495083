//! Serving the hub: HTTP or HTTPS (rustls, PEM cert and key files) on a socket, a housekeeping
//! task (lost agents, last-sync flushes), and a graceful shutdown that finishes in-flight requests.

use crate::api::{router, unix_now};
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
}

/// Runs housekeeping every second until the hub is dropped by everyone else.
pub fn spawn_housekeeping(hub: Arc<Hub>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks += 1;
            let hub = hub.clone();
            let result = tokio::task::spawn_blocking(move || {
                let lost = hub.maintain(unix_now())?;
                if ticks.is_multiple_of(5) {
                    hub.checkpoint()?;
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

/// Binds `options.listen` and serves until `shutdown` completes.
pub async fn serve(
    hub: Arc<Hub>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    serve_on(hub, listener, options.tls, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0).
pub async fn serve_on(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    tls: Option<(PathBuf, PathBuf)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let housekeeping = spawn_housekeeping(hub.clone());
    let app = router(hub.clone());
    let result = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some((cert, key)) => tls::serve(listener, app, &cert, &key, shutdown).await,
    };
    housekeeping.abort();
    // A last flush of agents' last-sync times.
    let _ = tokio::task::spawn_blocking(move || hub.maintain(unix_now())).await;
    result
}

mod tls {
    use axum::Router;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use std::future::Future;
    use std::path::Path;
    use std::sync::Arc;

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

    pub async fn serve(
        listener: tokio::net::TcpListener,
        app: Router,
        cert: &Path,
        key: &Path,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(load_config(cert, key)?));
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = &mut shutdown => return Ok(()),
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
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
