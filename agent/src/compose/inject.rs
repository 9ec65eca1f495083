//! `Injecting Files` for container jobs (docs/protocol.md §8.1 "InjectFiles"): each file of the
//! job goes through the job's scratch directory (mounted read-only into `main`) and is put in place
//! by silent `mkdir -p`, `cp` and `chmod` commands in the container's shell, so it lands in the
//! container's file system with the container user's ownership.
//!
//! Log lines are upstream's: `Injecting <path as given> with file mode <mode>`, then one `Failed to
//! ...` line when a step fails. Departures: paths are shell-quoted (upstream pastes them into the
//! commands, so a space splits a path), an empty path is a failure line instead of a crash, and
//! the directive always ends with `cmd_finished`.

use crate::job::INJECT_DIRECTIVE as DIRECTIVE;
use crate::joblog::JobLog;
use crate::shell::{shell_quote, unix_now, Shell};
use protocol::File;
use std::path::Path;

/// A path as the container's shell should see it: `~` and `~/` stay unquoted (the shell expands
/// them), the rest is quoted; relative paths are under `~` (upstream's rule).
pub(crate) fn container_path(path: &str) -> String {
    if path.starts_with('/') {
        return shell_quote(path);
    }
    let path = if path.starts_with('~') {
        path.to_string()
    } else {
        format!("~/{path}")
    };
    let (head, tail) = match path.find('/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (path.as_str(), ""),
    };
    let user_ok = head[1..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    match (user_ok, tail.is_empty()) {
        (true, true) => head.to_string(),
        (true, false) => format!("{head}/{}", shell_quote(tail)),
        (false, _) => shell_quote(&path),
    }
}

/// The directory part of a container path (Go's `path.Dir` on the text before quoting).
pub fn parent(path: &str) -> String {
    let path = if path.starts_with('/') || path.starts_with('~') {
        path.to_string()
    } else {
        format!("~/{path}")
    };
    match path.trim_end_matches('/').rfind('/') {
        Some(0) => "/".to_string(),
        Some(at) => path[..at].to_string(),
        None => ".".to_string(),
    }
}

/// Injects `files` into the container; the directive's exit code.
pub(crate) fn inject_files(shell: &mut Shell, log: &JobLog, files: &[File], scratch: &Path) -> i32 {
    let started_at = unix_now();
    log.cmd_started(DIRECTIVE);
    let staged = scratch.join("inject-file");
    let mut exit = 0;
    for file in files {
        log.cmd_output(
            format!("Injecting {} with file mode {}\n", file.path, file.mode).as_bytes(),
        );
        exit = inject_one(shell, log, file, &staged);
        if exit != 0 {
            break;
        }
    }
    let _ = std::fs::remove_file(&staged);
    log.cmd_finished(DIRECTIVE, exit, started_at, unix_now());
    exit
}

fn inject_one(shell: &mut Shell, log: &JobLog, file: &File, staged: &Path) -> i32 {
    let fail = |message: String, exit: i32| {
        log.cmd_output(format!("{message}\n").as_bytes());
        exit
    };
    if file.path.is_empty() {
        return fail("Failed to inject a file without a path.".to_string(), 1);
    }
    let Ok(content) = file.decode_content() else {
        return fail("Failed to decode the content of the file.".to_string(), 1);
    };
    if let Err(error) = stage(staged, &content) {
        return fail(error.to_string(), 255);
    }
    let destination = container_path(&file.path);
    let staged_text = staged.display().to_string();
    let steps = [
        (
            format!("mkdir -p {}", container_path(&parent(&file.path))),
            format!("Failed to create destination path {}", file.path),
        ),
        (
            format!("cp {} {destination}", shell_quote(&staged_text)),
            format!(
                "Failed to move to destination path {staged_text} {}",
                file.path
            ),
        ),
        (
            format!("chmod {} {destination}", shell_quote(&file.mode)),
            format!("Failed to set file mode to {}", file.mode),
        ),
    ];
    for (command, failure) in steps {
        let (exit, _) = shell.run_silent(&command);
        if exit != 0 {
            return fail(failure, exit);
        }
    }
    0
}

/// Writes the content where the container can read it (0644: the container's user may be anyone).
fn stage(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    crate::secure_fs::write(path, 0o644, crate::secure_fs::Existing::Refuse, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_as_the_container_shell_sees_them() {
        let table = [
            ("/a/b/c", "/a/b/c", "/a/b"),
            ("test.txt", "~/test.txt", "~"),
            ("~/.ssh/id rsa", "~/'.ssh/id rsa'", "~/.ssh"),
            ("~", "~", "."),
            ("/tmp/a b", "'/tmp/a b'", "/tmp"),
            ("/x", "/x", "/"),
            ("~root/x", "~root/x", "~root"),
            ("~$(id)/x", "'~$(id)/x'", "~$(id)"),
        ];
        for (path, quoted, dir) in table {
            assert_eq!(container_path(path), quoted, "{path}");
            assert_eq!(parent(path), dir, "{path}");
        }
    }
}
