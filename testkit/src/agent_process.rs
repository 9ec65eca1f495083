//! An `agent start` process for end-to-end tests (shared by the agent's and the scaler's tests):
//! its own HOME, TMPDIR and log file, a shutdown hook that records the reason, output captured.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct AgentProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

/// Waits for `child` to exit; on timeout kills it and panics with `describe()`.
pub fn wait_for_exit(child: &mut Child, timeout: Duration, describe: impl Fn() -> String) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "process did not exit within {timeout:?}; output:\n{}",
                describe()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl AgentProcess {
    /// Starts `binary start --endpoint <endpoint> --no-https <extra_args>` with `token` in
    /// `SEMAPHORE_AGENT_TOKEN`; `path_prefix` goes first on PATH (fake tools).
    pub fn start(
        binary: &Path,
        endpoint: &str,
        token: &str,
        extra_args: &[&str],
        path_prefix: Option<&Path>,
    ) -> AgentProcess {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("shutdown-hook.sh");
        std::fs::write(
            &hook,
            format!(
                "echo \"$SEMAPHORE_AGENT_SHUTDOWN_REASON\" > {}/reason\necho hook-ran\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let (home, tmp) = (dir.path().join("home"), dir.path().join("tmp"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let mut command = Command::new(binary);
        if let Some(prefix) = path_prefix {
            command.env(
                "PATH",
                format!(
                    "{}:{}",
                    prefix.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        }
        let child = command
            .args(["start", "--endpoint", endpoint, "--no-https"])
            .args(["--shutdown-hook-path", &hook.display().to_string()])
            .args(extra_args)
            .env("SEMAPHORE_AGENT_TOKEN", token)
            .env(
                "SEMAPHORE_AGENT_LOG_FILE_PATH",
                dir.path().join("agent.log"),
            )
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the agent binary");
        AgentProcess { child, dir }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let output_file = self.dir.path().join("out");
        wait_for_exit(&mut self.child, timeout, || {
            std::fs::read_to_string(&output_file).unwrap_or_default()
        })
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }

    pub fn shutdown_reason(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("reason"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
