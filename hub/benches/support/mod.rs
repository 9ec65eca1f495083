//! What the hub's benchmarks share: their knobs from the environment, percentiles, a lean
//! HTTP/1.1 keep-alive client (so that most of the CPU goes to the hub, not the load generator),
//! and a fresh PostgreSQL database per variant.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One keep-alive connection that sends a request and reads the answer.
pub(crate) struct Connection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: String,
    body: Vec<u8>,
}

impl Connection {
    pub(crate) async fn open(address: &str) -> Connection {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (read, writer) = stream.into_split();
        Connection {
            reader: BufReader::new(read),
            writer,
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// POSTs `body` to `path`; returns (status, body).
    pub(crate) async fn post(&mut self, path: &str, token: &str, body: &[u8]) -> (u16, &[u8]) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: Token {token}\r\nUser-Agent: SemaphoreAgent/bench\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes()).await.unwrap();
        self.writer.write_all(body).await.unwrap();
        self.line.clear();
        self.reader.read_line(&mut self.line).await.unwrap();
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).await.unwrap();
            if self.line == "\r\n" || self.line.is_empty() {
                break;
            }
            if let Some(value) = self
                .line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body).await.unwrap();
        (status, &self.body)
    }
}

pub(crate) fn psql(url: &str, sql: &str) {
    let output = std::process::Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql])
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(
        output.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A fresh database for one variant, dropped afterwards.
pub(crate) struct BenchDatabase {
    server: String,
    name: String,
    pub url: String,
}

impl BenchDatabase {
    pub(crate) fn create() -> BenchDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let server = std::env::var("FLOTILLA_BENCH_POSTGRES")
            .or_else(|_| std::env::var("FLOTILLA_TEST_POSTGRES"))
            .unwrap_or_else(|_| {
                panic!(
                    "set FLOTILLA_BENCH_POSTGRES=postgres://USER:PASSWORD@HOST:PORT/postgres (a role \
                     with CREATEDB; `source .ci/postgres` starts one and sets FLOTILLA_TEST_POSTGRES)"
                )
            });
        let name = format!(
            "flotilla_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        psql(&server, &format!("CREATE DATABASE {name}"));
        let (base, query) = server.split_once('?').unwrap_or((&server, ""));
        let (prefix, _) = base.rsplit_once('/').expect("a postgres://…/DATABASE URL");
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let url = format!("{prefix}/{name}{query}");
        BenchDatabase { server, name, url }
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        psql(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}
