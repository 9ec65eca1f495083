//! Flotilla's test infrastructure, shared by every crate's integration tests and benches: what no
//! one suite owns (a fake EC2 instance metadata service, a fake control plane for the agent, moto,
//! real `scaler hub`, `agent` and `scaler run` processes, Docker images built here, network
//! namespaces, the hub's store under test). One crate, so each helper is compiled once and a suite
//! imports it by name instead of including a file by path; features keep what needs more than the
//! standard library and the workspace's HTTP stack (the AWS SDK, the agent's and the hub's
//! libraries) to the suites that use it. Not published: tests and benches are its only users.

// Test support, like the tests it serves: the function-length rule is for shipped code.
#![allow(clippy::too_many_lines)]

pub mod agent_process;
pub mod balancer;
#[cfg(feature = "docker")]
pub mod containers;
pub mod fault_proxy;
pub mod gpu;
pub mod http;
pub mod hub_process;
pub mod imds;
pub mod job_users;
pub mod mock_hub;
#[cfg(feature = "aws")]
pub mod moto;
#[cfg(feature = "netns")]
pub mod netbed;
#[cfg(feature = "agent")]
pub mod run_job;
pub mod scaler_run;
#[cfg(feature = "agent")]
pub mod sequences;
#[cfg(feature = "stores")]
pub mod stores;
#[cfg(feature = "aws")]
pub mod terraform;
pub mod toolbox;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A current-thread runtime for tests that drive async clients (the AWS SDK's among them) from
/// plain `#[test]`s.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One of the workspace's binaries (`agent`, `scaler`), built beside the running test or bench:
/// cargo puts test executables in `<profile>/deps/` and binaries in `<profile>/`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --workspace` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` every 50 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}
