//! Opening files the agent writes where a job could have planted something: the job's scratch
//! directory (command and env files, the compose file, files for a container, the engine's
//! configuration), the job log and the job record. Each is opened with `O_NOFOLLOW` (a symbolic
//! link at the path is an error, never followed to a file the job chose), `O_CLOEXEC` (no child
//! inherits it) and its mode from the start (no moment in which it is readable by others). One
//! place, so that a new writer cannot forget one of the three.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What to do when something is already at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail (`O_EXCL`): the file must be new.
    Refuse,
    /// Truncate a regular file that is there (a link there is still refused).
    Replace,
}

/// Opens `path` for writing as [`Existing`] says, with `mode` for a new file, never through a
/// symbolic link.
pub fn create(path: &Path, mode: u32, existing: Existing) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    match existing {
        Existing::Refuse => options.create_new(true),
        Existing::Replace => options.create(true).truncate(true),
    };
    options.open(path)
}

/// [`create`], then writes `bytes`.
pub fn write(path: &Path, mode: u32, existing: Existing, bytes: &[u8]) -> std::io::Result<()> {
    create(path, mode, existing)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn links_are_never_followed_and_modes_hold_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"theirs").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for existing in [Existing::Refuse, Existing::Replace] {
            assert!(
                write(&link, 0o600, existing, b"ours").is_err(),
                "{existing:?}"
            );
        }
        // The positive control: the target itself can be written, and was not through the link.
        assert_eq!(std::fs::read(&target).unwrap(), b"theirs");

        let new = dir.path().join("new");
        write(&new, 0o640, Existing::Refuse, b"one").unwrap();
        let mode = std::fs::metadata(&new).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
        assert!(write(&new, 0o640, Existing::Refuse, b"two").is_err());
        write(&new, 0o640, Existing::Replace, b"two").unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"two");
        write(&target, 0o600, Existing::Replace, b"ours").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"ours");
    }
}
