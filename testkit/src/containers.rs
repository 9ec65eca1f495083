//! Docker images and clean-up checks for the container-job tests. Nothing can be pulled on this
//! project's machines, so every image is built here: the shared Debian base (`.ci/base-image`,
//! debootstrap + `docker import`, cached by content hash) and small images `FROM` it whose tag is
//! the hash of their Dockerfile and files, so a test run builds each at most once and later runs
//! reuse it. Builds copy files only (no package installs: the build network may not reach a
//! registry).

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

/// The job user of the rootless-engine tests: `flotilla-ci-job`, made here when missing (as the
/// AMI makes `flotilla-job`), with the subordinate ids `useradd` gives a new user. Root only.
pub const ROOTLESS_USER: &str = "flotilla-ci-job";

pub fn rootless_user() -> agent::job_user::JobUser {
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the rootless-engine tests make a job user: run them as root (CI does)"
        );
        if agent::job_user::JobUser::lookup(ROOTLESS_USER).is_err() {
            let status = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/bash", ROOTLESS_USER])
                .status()
                .expect("useradd");
            assert!(status.success(), "useradd {ROOTLESS_USER}");
        }
        for (file, flag) in [
            ("/etc/subuid", "--add-subuids"),
            ("/etc/subgid", "--add-subgids"),
        ] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if !text
                .lines()
                .any(|l| l.starts_with(&format!("{ROOTLESS_USER}:")))
            {
                let status = Command::new("usermod")
                    .args([flag, "300000-365535", ROOTLESS_USER])
                    .status()
                    .expect("usermod");
                assert!(status.success(), "usermod {flag} {ROOTLESS_USER}");
            }
        }
    });
    agent::job_user::JobUser::lookup(ROOTLESS_USER).expect("the rootless job user")
}

/// A read-only image store for the job's engine holding `images` (from the host's Docker), as
/// the AMI bakes one: written once per test run by the job user with `podman load`.
pub fn rootless_store(images: &[&str]) -> PathBuf {
    let user = rootless_user();
    // One store for every run (loading what is there already costs nothing), not one per run left
    // behind in /tmp.
    let store = std::env::temp_dir().join("flotilla-ci-images");
    let archive =
        std::env::temp_dir().join(format!("flotilla-ci-images-{}.tar", std::process::id()));
    let saved = Command::new("docker")
        .arg("save")
        .arg("-o")
        .arg(&archive)
        .args(images)
        .status()
        .expect("docker save");
    assert!(saved.success(), "docker save {images:?}");
    std::fs::set_permissions(
        &archive,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let output = Command::new("su")
        .args([ROOTLESS_USER, "-s", "/bin/bash", "-c"])
        .arg(format!(
            "cd / && XDG_RUNTIME_DIR={store}-run podman --root {store} --runroot {store}-run --storage-driver overlay load -i {archive}",
            store = store.display(),
            archive = archive.display()
        ))
        .output()
        .expect("podman load");
    let _ = std::fs::remove_file(&archive);
    assert!(
        output.status.success(),
        "podman load into {}: {}{}",
        store.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(user.uid > 0);
    store
}

/// What is left of the job user's: its processes and those of its subordinate ids (zombies
/// excepted: they hold nothing and their parent reaps them), as `pid uid command` lines.
pub fn user_processes(user: &agent::job_user::JobUser) -> Vec<String> {
    let subordinate = std::fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() == 3 && (fields[0] == user.name || fields[0] == user.uid.to_string()))
                .then(|| {
                    Some((
                        fields[1].parse::<u32>().ok()?,
                        fields[2].parse::<u32>().ok()?,
                    ))
                })
                .flatten()
        })
        .collect::<Vec<_>>();
    let output = Command::new("ps")
        .args(["-e", "-o", "pid=,uid=,stat=,args="])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(uid), Some(stat)) = (fields.get(1), fields.get(2)) else {
                return false;
            };
            let Ok(uid) = uid.parse::<u32>() else {
                return false;
            };
            let ours = uid == user.uid
                || subordinate
                    .iter()
                    .any(|(start, count)| uid >= *start && uid < start + count);
            ours && !stat.starts_with('Z')
        })
        .map(|line| line.trim().to_string())
        .collect()
}

/// The rootless engines' run directories on this machine (`/tmp/flotilla-engine-*`).
pub fn engine_run_dirs() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("flotilla-engine-"))
        .collect()
}

/// A registry of this machine's own (Debian's `docker-registry`, the CNCF distribution server) on
/// a loopback port, for the tests that need a real pull: nothing outside can be reached. Docker
/// pushes to it over plain HTTP (loopback registries are insecure by default); the job's Podman
/// is told so by a drop-in under `/etc/containers/registries.conf.d`, removed with the registry.
pub struct Registry {
    process: std::process::Child,
    pub address: String,
    drop_in: PathBuf,
    _storage: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let program = which("docker-registry")
            .expect("docker-registry is missing: apt-get install docker-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let storage = tempfile::tempdir().unwrap();
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}/data\nhttp:\n  addr: {address}\nlog:\n  level: error\n",
                storage.path().display()
            ),
        )
        .unwrap();
        let process = Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let drop_in = PathBuf::from(format!(
            "/etc/containers/registries.conf.d/flotilla-test-{port}.conf"
        ));
        std::fs::create_dir_all(drop_in.parent().unwrap()).unwrap();
        std::fs::write(
            &drop_in,
            format!("[[registry]]\nlocation = \"{address}\"\ninsecure = true\n"),
        )
        .unwrap();
        let registry = Registry {
            process,
            address,
            drop_in,
            _storage: storage,
        };
        registry.wait_ready();
        registry
    }

    /// Waits (up to 30 s) until the registry accepts connections.
    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen on {}",
                self.address
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Pushes a local Docker image as `<registry>/<name>:1` and returns that reference.
    pub fn push(&self, image: &str, name: &str) -> String {
        let reference = format!("{}/{name}:1", self.address);
        assert!(docker_ok(&["tag", image, &reference]), "docker tag {image}");
        let output = Command::new("docker")
            .args(["push", &reference])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "docker push {reference}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        docker_ok(&["rmi", &reference]);
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_file(&self.drop_in);
    }
}
