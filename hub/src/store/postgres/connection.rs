//! One connection to PostgreSQL, usable from synchronous code: the `tokio-postgres` connection
//! future runs on a current-thread runtime on a thread of its own (so waiting for a query with a
//! plain executor never blocks the runtime that drives it, and works from inside the server's
//! runtime too), which also turns other replicas' `NOTIFY flotilla_hub` into a signal.
//! Statements are prepared once per connection.

use super::super::{StoreError, StoreResult};
use futures_executor::block_on;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;
use tokio_postgres::{AsyncMessage, Client, Statement};

/// How a transaction begins and how it commits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transaction {
    begin: &'static str,
    commit: &'static str,
}

impl Transaction {
    /// Reads and writes nobody else needs to hear of (log lines, migrations, purges).
    pub(super) const QUIET: Transaction = Transaction {
        begin: "BEGIN",
        commit: "COMMIT",
    };
    /// A write of rows the other replicas follow: they are told on commit.
    pub(super) const ANNOUNCED: Transaction = Transaction {
        begin: "BEGIN",
        commit: "SELECT pg_notify('flotilla_hub', ''); COMMIT",
    };
    /// Reads from one snapshot (the change feed: every row at or below the head it reads).
    pub(super) const SNAPSHOT: Transaction = Transaction {
        begin: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        commit: "COMMIT",
    };
}

pub(super) struct Connection {
    pub client: Client,
    statements: HashMap<String, Statement>,
}

impl Connection {
    /// Connects (TLS when `ca_file` names the server's certificate authorities), starts the
    /// thread that drives the connection, and listens for other replicas' commits.
    pub(super) fn open(
        url: &str,
        ca_file: Option<&Path>,
        (signal, heard_at): (Arc<tokio::sync::Notify>, Arc<AtomicI64>),
    ) -> StoreResult<Connection> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| StoreError::Connect(format!("the database URL: {error}")))?;
        let asked = DatabaseTls {
            loopback_only: config.get_hosts().iter().all(is_loopback),
            ssl_mode: config.get_ssl_mode(),
            mode_in_url: url.contains("sslmode="),
            ca_given: ca_file.is_some(),
        };
        let tls = match (tls_policy(&asked).map_err(StoreError::Connect)?, ca_file) {
            (TlsPolicy::Required, Some(path)) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tls_connector(path)?)
            }
            _ => None,
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        let own_backend = Arc::new(AtomicI32::new(0));
        let backend = own_backend.clone();
        std::thread::Builder::new()
            .name("flotilla-postgres".into())
            .spawn(move || drive(config, tls, (signal, own_backend, heard_at), sender))
            .map_err(|error| StoreError::Connect(format!("cannot start a thread: {error}")))?;
        let client = receiver
            .recv()
            .map_err(|_| StoreError::Connect("the connection thread ended".into()))??;
        let pid: i32 = block_on(client.query_one("SELECT pg_backend_pid()", &[]))?.try_get(0)?;
        backend.store(pid, Ordering::Relaxed);
        block_on(client.batch_execute("LISTEN flotilla_hub"))?;
        tracing::debug!(backend = pid, "connected to PostgreSQL");
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
    }

    /// `sql` prepared on this connection (once).
    pub(super) fn statement(&mut self, sql: &str) -> StoreResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = block_on(self.client.prepare(sql))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Runs `work` in one transaction of `kind`: it ends with `kind`'s commit when `work`
    /// succeeded, and with ROLLBACK when it failed. The store's one way to run a transaction.
    pub(super) fn in_transaction<T>(
        &mut self,
        kind: Transaction,
        work: impl FnOnce(&mut Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        block_on(self.client.batch_execute(kind.begin))?;
        let result = work(self);
        self.end(kind, result)
    }

    /// Runs `work` in one transaction of `kind` whose BEGIN goes in the same round trip as
    /// `work`'s own first requests: `work` gets BEGIN's future to send (join) with them. The
    /// transaction ends as [`Connection::in_transaction`]'s do.
    pub(super) fn in_pipelined_transaction<T>(
        &mut self,
        kind: Transaction,
        work: impl FnOnce(&Client, Begun<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let begun = Box::pin(self.client.batch_execute(kind.begin));
        let result = work(&self.client, begun);
        self.end(kind, result)
    }

    /// Ends the open transaction: `kind`'s commit when `result` is a success, else ROLLBACK.
    fn end<T>(&mut self, kind: Transaction, result: StoreResult<T>) -> StoreResult<T> {
        let end = if result.is_ok() {
            kind.commit
        } else {
            "ROLLBACK"
        };
        block_on(self.client.batch_execute(end))?;
        result
    }

    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<u64> {
        let statement = self.statement(sql)?;
        Ok(block_on(self.client.execute(&statement, params))?)
    }
}

type Connected = StoreResult<Client>;

/// A transaction's BEGIN, sent when first polled.
pub(super) type Begun<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>,
>;

/// The signal to raise for other backends' notifications, this connection's backend, and when
/// (Unix seconds) another backend last announced a commit.
pub(super) type Listener = (Arc<tokio::sync::Notify>, Arc<AtomicI32>, Arc<AtomicI64>);

/// The connection thread: connects, hands the client back, then drives the connection until the
/// client is dropped or the server goes away, raising `signal` for other backends' notifications.
fn drive(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    listener: Listener,
    sender: std::sync::mpsc::Sender<Connected>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = sender.send(Err(StoreError::Connect(format!("a runtime: {error}"))));
            return;
        }
    };
    runtime.block_on(async move {
        match tls {
            Some(tls) => match config.connect(tls).await {
                Ok((client, connection)) => run(client, connection, listener, sender).await,
                Err(error) => drop(sender.send(Err(error.into()))),
            },
            None => match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => run(client, connection, listener, sender).await,
                Err(error) => drop(sender.send(Err(error.into()))),
            },
        }
    });
}

async fn run<S, T>(
    client: Client,
    mut connection: tokio_postgres::Connection<S, T>,
    (signal, backend, heard_at): Listener,
    sender: std::sync::mpsc::Sender<Connected>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if sender.send(Ok(client)).is_err() {
        return;
    }
    let mut messages =
        futures_util::stream::poll_fn(move |context| connection.poll_message(context));
    use futures_util::StreamExt;
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(note))
                if note.process_id() != backend.load(Ordering::Relaxed) =>
            {
                heard_at.store(unix_now(), Ordering::Relaxed);
                signal.notify_one();
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!("the PostgreSQL connection failed: {error}");
                break;
            }
        }
    }
}

/// What decides whether a database connection must be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DatabaseTls {
    /// Every host of the URL is this machine (a loopback address, `localhost` or a socket).
    pub loopback_only: bool,
    pub ssl_mode: tokio_postgres::config::SslMode,
    /// The URL names its `sslmode` (else it is the library's default, `prefer`).
    pub mode_in_url: bool,
    /// `--database-ca` was given.
    pub ca_given: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsPolicy {
    /// TLS, the server's certificate checked against the given authorities; never plaintext.
    Required,
    /// Plaintext: the database is on this machine, or the URL says `sslmode=disable`.
    Plain,
}

/// TLS unless the database is on this machine or the operator wrote `sslmode=disable`: with
/// authorities given it is required (never `prefer`'s silent fall-back to plaintext, which a
/// network in the middle could force), and a remote database without them is refused.
pub(super) fn tls_policy(asked: &DatabaseTls) -> Result<TlsPolicy, String> {
    use tokio_postgres::config::SslMode;
    let disabled = asked.mode_in_url && asked.ssl_mode == SslMode::Disable;
    match (asked.ca_given, disabled) {
        (true, true) => Err("sslmode=disable contradicts --database-ca: drop one of them".into()),
        (true, false) => Ok(TlsPolicy::Required),
        (false, true) => Ok(TlsPolicy::Plain),
        (false, false) if asked.ssl_mode == SslMode::Require => Err(
            "sslmode=require needs the server's certificate authorities (--database-ca FILE, \
             e.g. the RDS CA bundle)"
                .into(),
        ),
        (false, false) if asked.loopback_only => Ok(TlsPolicy::Plain),
        (false, false) => Err(
            "a database on another machine needs TLS: give its certificate \
             authorities with --database-ca FILE (or write sslmode=disable in the URL to accept \
             plaintext)"
                .into(),
        ),
    }
}

fn is_loopback(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    }
}

/// rustls with the certificate authorities in `path` (PEM) as the only roots.
fn tls_connector(path: &Path) -> StoreResult<tokio_postgres_rustls::MakeRustlsConnect> {
    let pem = std::fs::read(path)
        .map_err(|error| StoreError::Connect(format!("cannot read {}: {error}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
        let certificate = certificate.map_err(|error| {
            StoreError::Connect(format!("{}: not PEM certificates: {error}", path.display()))
        })?;
        roots.add(certificate).map_err(|error| {
            StoreError::Connect(format!("{}: a bad certificate: {error}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(StoreError::Connect(format!(
            "{} holds no certificates",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| StoreError::Connect(format!("TLS: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode::{Disable, Prefer, Require};

    #[test]
    fn a_remote_database_is_reached_over_tls_or_not_at_all() {
        let asked = |loopback_only, ssl_mode, mode_in_url, ca_given| DatabaseTls {
            loopback_only,
            ssl_mode,
            mode_in_url,
            ca_given,
        };
        let table = [
            // With the authorities: required, whatever the URL's default says.
            (asked(false, Prefer, false, true), Ok(TlsPolicy::Required)),
            (asked(false, Prefer, true, true), Ok(TlsPolicy::Required)),
            (asked(true, Require, true, true), Ok(TlsPolicy::Required)),
            (asked(false, Disable, true, true), Err(())),
            // Without them: this machine, or plaintext asked for by name.
            (asked(true, Prefer, false, false), Ok(TlsPolicy::Plain)),
            (asked(false, Disable, true, false), Ok(TlsPolicy::Plain)),
            (asked(false, Prefer, false, false), Err(())),
            (asked(false, Prefer, true, false), Err(())),
            (asked(true, Require, true, false), Err(())),
        ];
        for (asked, expected) in table {
            assert_eq!(tls_policy(&asked).map_err(|_| ()), expected, "{asked:?}");
        }
    }

    #[test]
    fn loopback_hosts_are_this_machine() {
        use tokio_postgres::config::Host;
        for (host, loopback) in [
            (Host::Tcp("127.0.0.1".into()), true),
            (Host::Tcp("localhost".into()), true),
            (Host::Tcp("::1".into()), true),
            (Host::Unix("/run/postgresql".into()), true),
            (Host::Tcp("db.example.com".into()), false),
            (Host::Tcp("10.0.0.5".into()), false),
        ] {
            assert_eq!(is_loopback(&host), loopback, "{host:?}");
        }
    }
}
