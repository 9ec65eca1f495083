//! Docker images and clean-up checks for the container-job tests. Nothing can be pulled on this
//! project's machines, so every image is built here: the shared Debian base (`.ci/base-image`,
//! debootstrap + `docker import`, cached by content hash) and small images `FROM` it whose tag is
//! the hash of their Dockerfile and files, so a test run builds each at most once and later runs
//! reuse it. Builds copy files only (no package installs: the build network may not reach a
//! registry).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared base image's tag (built on first use, a few minutes, by `.ci/base-image`).
pub fn base_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo().join(".ci/base-image"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run .ci/base-image");
        assert!(
            output.status.success(),
            ".ci/base-image failed: the container tests need Docker and debootstrap"
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    })
}

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).unwrap()[..12].to_string()
}

/// An image `FROM` the base: `dockerfile` is the text after the `FROM` line, `files` are
/// `(name, content, mode)` in the build context. Tagged `flotilla-test-<name>:<content hash>`.
pub fn image(name: &str, dockerfile: &str, files: &[(&str, &[u8], u32)]) -> String {
    static BUILDS: Mutex<()> = Mutex::new(());
    let text = format!("FROM {}\n{dockerfile}", base_image());
    let mut identity = text.clone().into_bytes();
    for (file, content, mode) in files {
        identity.extend_from_slice(format!("\0{file}\0{mode:o}\0").as_bytes());
        identity.extend_from_slice(content);
    }
    let tag = format!("flotilla-test-{name}:{}", sha256(&identity));
    let _serial = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    if docker_ok(&["image", "inspect", &tag]) {
        return tag;
    }
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("Dockerfile"), &text).unwrap();
    for (file, content, mode) in files {
        let path = context.path().join(file);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode))
            .unwrap();
    }
    let output = Command::new("docker")
        .args(["build", "--network", "none", "-q", "-t", &tag])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    tag
}

fn docker_ok(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let output = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Containers (any state), networks and volumes whose name holds `marker` (a job's project
/// names start with `flotilla-<job id>-`): what a finished job must not leave behind.
pub fn leftovers(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (kind, args) in [
        ("container", &["ps", "-a", "--format", "{{.Names}}"][..]),
        ("network", &["network", "ls", "--format", "{{.Name}}"][..]),
        ("volume", &["volume", "ls", "--format", "{{.Name}}"][..]),
    ] {
        found.extend(
            docker_lines(args)
                .into_iter()
                .filter(|name| name.contains(marker))
                .map(|name| format!("{kind} {name}")),
        );
    }
    found
}

/// A directory with `name` scripts (mode 0755) for PATH.
pub fn tools(scripts: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in scripts {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    dir
}

/// Where a program is on this machine's PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}
