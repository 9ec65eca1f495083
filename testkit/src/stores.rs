//! The store the hub's test suites run on: SQLite by default, PostgreSQL when
//! `FLOTILLA_TEST_STORE=postgres` (`.ci/run` runs the suites both ways, with the server
//! `.ci/postgres` starts at `FLOTILLA_TEST_POSTGRES`). Each fresh hub gets a database of its own,
//! named `flotilla_t_<pid>_<n>`; databases left by earlier runs whose process is gone are dropped
//! when this one makes its first. Tests that reopen "the same" hub (a restart) pass the same
//! directory: on PostgreSQL the directory names the database.

use hub::hub::{Hub, HubConfig, HubResult};
use hub::store::StoreLocation;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

/// Whether the suites run on PostgreSQL.
pub fn postgres() -> bool {
    match std::env::var("FLOTILLA_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("FLOTILLA_TEST_STORE={other}: use sqlite or postgres"),
    }
}

/// A new, empty hub (in memory on SQLite).
pub fn fresh_hub(config: HubConfig, now: i64) -> HubResult<Hub> {
    if !postgres() {
        return Hub::in_memory(config, now);
    }
    Hub::open_at(&new_database(), config, now)
}

/// The hub whose state lives "in" `dir`: that directory on SQLite, or the database that
/// directory names on PostgreSQL (made the first time).
pub fn open(dir: &Path, config: HubConfig, now: i64) -> HubResult<Hub> {
    Hub::open_at(&location(dir), config, now)
}

pub fn location(dir: &Path) -> StoreLocation {
    if !postgres() {
        return StoreLocation::Sqlite {
            data_dir: dir.to_path_buf(),
        };
    }
    static BY_DIR: Mutex<Option<HashMap<PathBuf, StoreLocation>>> = Mutex::new(None);
    let mut known = BY_DIR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    known
        .get_or_insert_with(HashMap::new)
        .entry(dir.to_path_buf())
        .or_insert_with(new_database)
        .clone()
}

/// The server URL with `database` in place of its database.
fn server_url(database: &str) -> String {
    let url = std::env::var("FLOTILLA_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "the PostgreSQL tests need FLOTILLA_TEST_POSTGRES (a server URL whose role \
             may create databases): `source .ci/postgres` starts one, as `bash .ci/run` does"
        )
    });
    let (base, _) = url
        .rsplit_once('/')
        .expect("FLOTILLA_TEST_POSTGRES: postgres://…/DB");
    format!("{base}/{database}")
}

fn psql(sql: &str) {
    let output = Command::new("psql")
        .args([
            &server_url("postgres"),
            "-v",
            "ON_ERROR_STOP=1",
            "-qAtc",
            sql,
        ])
        .output()
        .expect("psql is missing: apt-get install postgresql-client");
    assert!(
        output.status.success(),
        "psql -c {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A new database for one hub (or several replicas of one), whatever `FLOTILLA_TEST_STORE` says.
pub fn new_database() -> StoreLocation {
    static CLEANED: Once = Once::new();
    CLEANED.call_once(drop_abandoned_databases);
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "flotilla_t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    psql(&format!("CREATE DATABASE {name}"));
    StoreLocation::Postgres {
        url: server_url(&name),
        ca_file: None,
    }
}

/// The URL of a new database (for `scaler hub --database` processes).
pub fn new_database_url() -> String {
    match new_database() {
        StoreLocation::Postgres { url, .. } => url,
        StoreLocation::Sqlite { .. } => unreachable!("new_database makes PostgreSQL databases"),
    }
}

/// Drops test databases whose process has ended.
fn drop_abandoned_databases() {
    let output = Command::new("psql")
        .args([
            &server_url("postgres"),
            "-qAtc",
            "SELECT datname FROM pg_database WHERE datname LIKE 'flotilla\\_t\\_%'",
        ])
        .output()
        .expect("psql is missing: apt-get install postgresql-client");
    for name in String::from_utf8_lossy(&output.stdout).lines() {
        let pid = name
            .split('_')
            .nth(2)
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}
