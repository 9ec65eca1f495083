//! The one-job record of a single-job agent (`disconnect-after-job`): before the agent runs
//! anything of a job it writes a small file, the job id and the time, at `job-record-file`; an
//! agent started on a machine that has one does not register. So a machine whose agent died in
//! the middle of a job (killed by its own job, out of memory, a crash) never takes a second job,
//! whatever starts the agent again: a service manager, a reboot, a person.
//!
//! The rule fails closed. The record is created with `O_EXCL | O_NOFOLLOW`, mode 0600, in
//! directories created 0700, and synced (with its directory) before the job is fetched; a record
//! that cannot be written means the job is not run. At start, anything at the path (a file, a
//! symbolic link, a directory) or a path that cannot be looked at counts as "a job was taken".
//! The record only protects against a job that cannot delete it: a job that runs as the agent's
//! own user can (docs/aws-contract.md says what the image does about that).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where the record goes when `job-record-file` is not given, under `$HOME`.
pub(crate) const DEFAULT_RELATIVE_PATH: &str = ".flotilla-agent/job-taken";

/// At most this much of an existing record is quoted in the refusal.
const QUOTED_BYTES: u64 = 512;

/// Why the agent will not take (or did not record) a job on this machine.
#[derive(Debug, Error)]
pub(crate) enum JobRecordError {
    #[error("This machine already took a job: the job record {path} exists ({found}). A single-job agent (disconnect-after-job) never registers again on a machine that ran a job; start it on a fresh machine, or delete {path} if this one may really be reused. Exiting...")]
    Taken { path: String, found: String },
    #[error("Cannot tell whether this machine already took a job: looking at the job record {path} failed: {source}. Exiting...")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the job record {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The record file of one single-job agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobRecord {
    path: PathBuf,
}

impl JobRecord {
    pub(crate) fn new(path: impl Into<PathBuf>) -> JobRecord {
        JobRecord { path: path.into() }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// Ok when no job was recorded here; otherwise why this agent must not register.
    pub(crate) fn check(&self) -> Result<(), JobRecordError> {
        let metadata = match std::fs::symlink_metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(JobRecordError::Unreadable {
                    path: self.shown(),
                    source,
                })
            }
        };
        let found = if metadata.file_type().is_symlink() {
            "a symbolic link".to_string()
        } else if metadata.is_dir() {
            "a directory".to_string()
        } else {
            self.quote_contents()
        };
        Err(JobRecordError::Taken {
            path: self.shown(),
            found,
        })
    }

    /// The record's first bytes on one line, or why they could not be read.
    fn quote_contents(&self) -> String {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path);
        let mut text = String::new();
        let read = opened.and_then(|file| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(file, QUOTED_BYTES), &mut bytes)?;
            text = String::from_utf8_lossy(&bytes).into_owned();
            Ok(())
        });
        match read {
            Ok(()) => summarize(&text),
            Err(error) => format!("unreadable: {error}"),
        }
    }

    /// Records that this machine took `job_id` at `unix_now`; the file is on disk when this
    /// returns Ok. Fails if anything is already at the path.
    pub(crate) fn record(&self, job_id: &str, unix_now: i64) -> Result<(), JobRecordError> {
        let write_error = |source| JobRecordError::Write {
            path: self.shown(),
            source,
        };
        let parent = self
            .path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(write_error)?;
        }
        let mut file =
            crate::secure_fs::create(&self.path, 0o600, crate::secure_fs::Existing::Refuse)
                .map_err(write_error)?;
        file.write_all(render(job_id, unix_now, std::process::id()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_error)?;
        if let Some(parent) = parent {
            std::fs::File::open(parent)
                .and_then(|directory| directory.sync_all())
                .map_err(write_error)?;
        }
        Ok(())
    }
}

/// The record's text: `job_id=…`, `taken_at=…` (Unix seconds) and `pid=…`, one per line. Control
/// characters in the server-given job id are dropped so the record stays three lines.
pub fn render(job_id: &str, unix_now: i64, pid: u32) -> String {
    let job_id: String = job_id.chars().filter(|c| !c.is_control()).collect();
    format!("job_id={job_id}\ntaken_at={unix_now}\npid={pid}\n")
}

/// A record's text on one line for a message: lines joined with ", ", control characters dropped.
fn summarize(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    let clean: String = joined.chars().filter(|c| !c.is_control()).collect();
    match clean.is_empty() {
        true => "empty".to_string(),
        false => clean,
    }
}

/// The record path for a configuration: `configured` if given, else `$HOME/` +
/// [`DEFAULT_RELATIVE_PATH`]; None without either.
pub(crate) fn default_path(configured: &str, home: Option<&str>) -> Option<String> {
    if !configured.is_empty() {
        return Some(configured.to_string());
    }
    home.filter(|home| !home.is_empty())
        .map(|home| Path::new(home).join(DEFAULT_RELATIVE_PATH))
        .map(|path| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_record_is_written_once_0600_and_then_refuses_the_machine() {
        let dir = tempfile::tempdir().unwrap();
        let record = JobRecord::new(dir.path().join("state/sub/job-taken"));
        record.check().unwrap();
        record.record("job-1\n", 1_700_000_000).unwrap();
        let text = std::fs::read_to_string(record.path()).unwrap();
        assert!(
            text.starts_with("job_id=job-1\ntaken_at=1700000000\npid="),
            "{text}"
        );
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(record.path()), 0o600);
        assert_eq!(mode(&dir.path().join("state/sub")), 0o700);
        let error = record.check().unwrap_err();
        assert!(matches!(error, JobRecordError::Taken { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&record.path().display().to_string())
                && message.contains("job_id=job-1, taken_at=1700000000"),
            "{message}"
        );
        // A second job is never recorded over the first.
        assert!(matches!(
            record.record("job-2", 1),
            Err(JobRecordError::Write { .. })
        ));
    }

    #[test]
    fn anything_at_the_path_counts_as_taken_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("job-taken");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let record = JobRecord::new(&link);
        let error = record.check().unwrap_err();
        assert!(error.to_string().contains("a symbolic link"), "{error}");
        assert!(record.record("job-1", 1).is_err());
        assert!(!target.exists(), "the link was not followed");
        std::fs::remove_file(&link).unwrap();
        std::fs::create_dir(&link).unwrap();
        assert!(record
            .check()
            .unwrap_err()
            .to_string()
            .contains("a directory"));
        std::fs::remove_dir(&link).unwrap();
        std::fs::write(&link, "").unwrap();
        assert!(record.check().unwrap_err().to_string().contains("(empty)"));
    }

    #[test]
    fn the_default_path_is_under_home() {
        let table = [
            (
                "/var/lib/flotilla/job-taken",
                Some("/home/u"),
                Some("/var/lib/flotilla/job-taken"),
            ),
            (
                "",
                Some("/home/u"),
                Some("/home/u/.flotilla-agent/job-taken"),
            ),
            ("", Some(""), None),
            ("", None, None),
        ];
        for (configured, home, expected) in table {
            assert_eq!(
                default_path(configured, home).as_deref(),
                expected,
                "{configured:?} {home:?}"
            );
        }
    }
}
