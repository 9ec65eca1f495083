//! The hub's TLS server configuration: a PEM certificate chain and private key read from files,
//! served with rustls's safe defaults (TLS 1.2 and 1.3) and the `ring` provider.

use std::path::Path;
use std::sync::Arc;

pub(super) fn load_config(
    cert: &Path,
    key: &Path,
) -> std::io::Result<tokio_rustls::rustls::ServerConfig> {
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
