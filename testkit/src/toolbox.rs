//! A stand-in for Semaphore's self-hosted toolbox release, built here (nothing can be downloaded
//! on this project's machines): a tarball with the release's layout (`toolbox/` holding the
//! sourced `toolbox` file, `libcheckout` defining `checkout`, and the `cache`, `artifact`,
//! `test-results` and `retry` commands), each printing `<name>-stand-in`. The AMI's installer
//! tests and the booted image install it with `ami/scripts/install-toolbox.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `<dir>/<name>.tar` (leaving out the file `without`, if any); its path and SHA-256.
pub fn tarball(dir: &Path, name: &str, without: &str) -> (PathBuf, String) {
    let root = dir.join(format!("{name}-tree/toolbox"));
    std::fs::create_dir_all(&root).unwrap();
    let mut files = vec![
        ("toolbox", "source ~/.toolbox/libcheckout\n".to_string()),
        (
            "libcheckout",
            "checkout() { echo checkout-stand-in; }\n".to_string(),
        ),
    ];
    for command in ["cache", "artifact", "test-results", "retry"] {
        files.push((command, format!("#!/bin/sh\necho {command}-stand-in\n")));
    }
    for (file, body) in files.iter().filter(|(file, _)| *file != without) {
        std::fs::write(root.join(file), body).unwrap();
    }
    let tarball = dir.join(format!("{name}.tar"));
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(root.parent().unwrap())
        .arg("toolbox")
        .status()
        .unwrap();
    assert!(tar.success(), "tar the stand-in toolbox");
    let sum = Command::new("sha256sum").arg(&tarball).output().unwrap();
    let sha = String::from_utf8_lossy(&sum.stdout)[..64].to_string();
    (tarball, sha)
}
