//! A hub's data directory made ready to serve, the same way for `scaler hub` and `scaler up`:
//! the directory, the admin token, and an agent type with its registration token in
//! `<data-dir>/<type>.token`. It promises that an existing token file is never replaced: a token
//! is read when its file exists and made only when it does not. Everything in it is its owner's
//! only, set when created rather than left to the process umask: a new data directory is 0700,
//! and token files and the database (which holds jobs' environment secrets) are 0600 (SQLite
//! gives its WAL and shared-memory files the database file's mode).

use crate::clock::unix_now;
use crate::hub::HubConfig;
use crate::store::{Durability, SqliteStore, Store, StoreError};
use crate::tokens;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The admin token's file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Admin tokens given from outside must be at least this long.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Error)]
pub enum BootstrapError {
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is empty: delete it to have a new token made")]
    EmptyTokenFile { path: PathBuf },
    #[error("the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters")]
    AdminTokenTooShort,
    #[error("'{0}' is not a valid agent type name")]
    InvalidAgentType(String),
    #[error("the registration token in {path} already belongs to another agent type")]
    TokenInUse { path: PathBuf },
    #[error(
        "agent type '{agent_type}' exists but its registration token file {path} is missing \
         (only the token's hash is stored): use a fresh data directory"
    )]
    RegistrationTokenMissing { agent_type: String, path: PathBuf },
    #[error("cannot open the hub's database in {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
}

/// What to bootstrap beyond the defaults.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// The admin token to use instead of `<data-dir>/admin-token` (that file is then untouched).
    pub admin_token: Option<String>,
    /// The agent type to make sure of.
    pub agent_type: String,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions {
            admin_token: None,
            agent_type: protocol::spec::DEFAULT_AGENT_TYPE.to_string(),
        }
    }
}

/// A data directory ready for `Hub::open`.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub data_dir: PathBuf,
    pub admin_token: String,
    pub agent_type: String,
    /// `<data-dir>/<agent type>.token`.
    pub registration_token_file: PathBuf,
    /// `None` when the agent type existed but its token file is gone.
    registration_token: Option<String>,
    /// What this call made (for a first-start message).
    pub created_admin_token: bool,
    pub created_agent_type: bool,
}

impl Bootstrap {
    /// The agent type's registration token; an error naming the file when it cannot be known.
    pub fn registration_token(&self) -> Result<&str, BootstrapError> {
        self.registration_token
            .as_deref()
            .ok_or_else(|| BootstrapError::RegistrationTokenMissing {
                agent_type: self.agent_type.clone(),
                path: self.registration_token_file.clone(),
            })
    }

    /// A hub configuration with this admin token, for agents reaching it at `public_url`.
    pub fn hub_config(&self, public_url: &str) -> HubConfig {
        HubConfig::new(public_url, &self.admin_token)
    }
}

/// Bootstraps `data_dir` with the default agent type and the admin token in its file.
pub fn bootstrap(data_dir: &Path) -> Result<Bootstrap, BootstrapError> {
    bootstrap_with(data_dir, &BootstrapOptions::default())
}

/// Creates `data_dir` if needed; reads the admin token from its file, or makes it there (unless
/// `options` gives one); creates the agent type if the hub lacks it — with the token already in
/// its token file when there is one, else with a new token written there.
pub fn bootstrap_with(
    data_dir: &Path,
    options: &BootstrapOptions,
) -> Result<Bootstrap, BootstrapError> {
    create_private_dir(data_dir).map_err(|source| BootstrapError::CreateDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    create_private_database(data_dir)?;
    let (admin_token, created_admin_token) = match &options.admin_token {
        Some(token) if token.len() < MIN_ADMIN_TOKEN_LEN => {
            return Err(BootstrapError::AdminTokenTooShort)
        }
        Some(token) => (token.clone(), false),
        None => read_or_create_token(&data_dir.join(ADMIN_TOKEN_FILE))?,
    };
    let agent_type = &options.agent_type;
    if !protocol::spec::valid_agent_type(agent_type) {
        return Err(BootstrapError::InvalidAgentType(agent_type.clone()));
    }
    let token_file = data_dir.join(format!("{agent_type}.token"));
    let (registration_token, created_agent_type) =
        ensure_agent_type(data_dir, agent_type, &token_file)?;
    Ok(Bootstrap {
        data_dir: data_dir.to_path_buf(),
        admin_token,
        agent_type: agent_type.clone(),
        registration_token_file: token_file,
        registration_token,
        created_admin_token,
        created_agent_type,
    })
}

/// The agent type's registration token (if known) and whether the type was created now.
fn ensure_agent_type(
    data_dir: &Path,
    agent_type: &str,
    token_file: &Path,
) -> Result<(Option<String>, bool), BootstrapError> {
    let store_error = |source| BootstrapError::Store {
        path: data_dir.to_path_buf(),
        source,
    };
    let mut store = SqliteStore::open(data_dir, Durability::Full).map_err(store_error)?;
    let exists = store
        .agent_types()
        .map_err(store_error)?
        .iter()
        .any(|row| row.name == agent_type);
    if exists {
        return Ok((read_token(token_file)?, false));
    }
    let (token, _) = read_or_create_token(token_file)?;
    let inserted = store
        .insert_agent_type(agent_type, &tokens::hash(&token), unix_now())
        .map_err(store_error)?;
    if !inserted {
        return Err(BootstrapError::TokenInUse {
            path: token_file.to_path_buf(),
        });
    }
    tracing::info!(agent_type, token_file = %token_file.display(), "created the agent type");
    Ok((Some(token), true))
}

/// The token in `path`, or a new one written there; `true` when it was made now.
fn read_or_create_token(path: &Path) -> Result<(String, bool), BootstrapError> {
    if let Some(token) = read_token(path)? {
        return Ok((token, false));
    }
    let token = tokens::new_token();
    write_secret(path, &token)?;
    tracing::info!(file = %path.display(), "created a token");
    Ok((token, true))
}

/// The token in `path`; `None` when there is no such file.
fn read_token(path: &Path) -> Result<Option<String>, BootstrapError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Err(BootstrapError::EmptyTokenFile {
            path: path.to_path_buf(),
        }),
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BootstrapError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates `dir` (and missing parents) accessible by its owner only; an existing one is kept as
/// it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates the database file 0600 before SQLite opens it (SQLite would create it 0644 less the
/// umask); an existing one is made 0600, with its WAL and shared-memory files.
fn create_private_database(data_dir: &Path) -> Result<(), BootstrapError> {
    use std::os::unix::fs::PermissionsExt;
    for name in ["hub.db", "hub.db-wal", "hub.db-shm"] {
        let path = data_dir.join(name);
        let write_error = |source| BootstrapError::Write {
            path: path.clone(),
            source,
        };
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(name == "hub.db")
            .truncate(false)
            .mode(0o600)
            .open(&path);
        match opened {
            Ok(file) => file
                .set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(write_error)?,
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(write_error(error)),
        }
    }
    Ok(())
}

/// Writes a new secret file readable by its owner only; never replaces an existing file.
fn write_secret(path: &Path, secret: &str) -> Result<(), BootstrapError> {
    let write_error = |source| BootstrapError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(format!("{secret}\n").as_bytes())
        .map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_makes_tokens_and_later_starts_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = bootstrap(&data).unwrap();
        assert!(first.created_admin_token && first.created_agent_type);
        assert_eq!(first.agent_type, "default");
        assert_eq!(first.registration_token_file, data.join("default.token"));
        for file in [data.join(ADMIN_TOKEN_FILE), data.join("default.token")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        let again = bootstrap(&data).unwrap();
        assert!(!again.created_admin_token && !again.created_agent_type);
        assert_eq!(again.admin_token, first.admin_token);
        assert_eq!(
            again.registration_token().unwrap(),
            first.registration_token().unwrap()
        );
    }

    #[test]
    fn the_data_directory_and_database_are_the_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("new").join("data");
        let first = bootstrap(&data).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        let hub = crate::Hub::open(&data, first.hub_config("http://hub"), 1).unwrap();
        hub.create_agent_type("more", 1).unwrap();
        for name in ["hub.db", "hub.db-wal", "hub.db-shm"] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
        drop(hub);
        // A database made by an older hub with the umask's modes is tightened.
        let loose = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(data.join("hub.db"), loose).unwrap();
        bootstrap(&data).unwrap();
        assert_eq!(mode(&data.join("hub.db")), 0o600);
    }

    #[test]
    fn existing_token_files_are_kept_even_for_a_new_database() {
        let dir = tempfile::tempdir().unwrap();
        let first = bootstrap(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("hub.db")).unwrap();
        let again = bootstrap(dir.path()).unwrap();
        assert!(again.created_agent_type && !again.created_admin_token);
        assert_eq!(
            again.registration_token().unwrap(),
            first.registration_token().unwrap()
        );
        let hub = crate::Hub::open(dir.path(), again.hub_config("http://hub"), 1).unwrap();
        let token = again.registration_token().unwrap();
        assert!(hub.metrics(token, 1).is_ok(), "the kept token registers");
        assert!(hub.is_admin(&first.admin_token));
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let short = BootstrapOptions {
            admin_token: Some("short".into()),
            ..BootstrapOptions::default()
        };
        assert!(matches!(
            bootstrap_with(dir.path(), &short),
            Err(BootstrapError::AdminTokenTooShort)
        ));
        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "\n").unwrap();
        assert!(matches!(
            bootstrap(dir.path()),
            Err(BootstrapError::EmptyTokenFile { .. })
        ));
        std::fs::remove_file(dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
        let first = bootstrap(dir.path()).unwrap();
        std::fs::remove_file(&first.registration_token_file).unwrap();
        let again = bootstrap(dir.path()).unwrap();
        assert!(matches!(
            again.registration_token(),
            Err(BootstrapError::RegistrationTokenMissing { .. })
        ));
    }
}
