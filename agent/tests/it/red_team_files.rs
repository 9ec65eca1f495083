//! Red team, "files a job leaves readable": an injected 0600 secret must be 0600 at every moment
//! (it used to be created 0644, written, and only then chmod-ed), a symbolic link planted at an
//! injected file's path must not be written through, the directories created for injected files
//! are 0700, and the job log NDJSON (`$TMPDIR/job_log_*.json`) and the agent's scratch files
//! (the command file, the env files) are 0600. The process umask is set to the usual 022 so
//! that "created with the default mode" would show as 0644.

use testkit::agent_process;

use testkit::run_job;

use agent::job::{job_environment, JobOptions};
use protocol::{Command, File, JobRequest, JobResult};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::mock_hub::FakeHub;

fn usual_umask() {
    // SAFETY: umask only sets this process's file mode creation mask.
    unsafe {
        libc::umask(0o022);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `request` with `home` as HOME; returns the result and the job's output lines.
fn run_with_home(request: &JobRequest, home: &Path) -> (JobResult, String) {
    let scratch = tempfile::tempdir().unwrap();
    let mut env = job_environment(std::env::vars());
    env.retain(|(name, _)| name != "HOME");
    env.push(("HOME".into(), home.display().to_string()));
    let options = JobOptions {
        shell_env: env,
        scratch_root: scratch.path().to_path_buf(),
        ..JobOptions::default()
    };
    run_job::run_collecting_output(request, &options, scratch.path())
}

fn injecting(files: Vec<File>, commands: &[&str]) -> JobRequest {
    JobRequest {
        job_id: "red-team-files".into(),
        commands: commands.iter().map(|c| Command::new(*c)).collect(),
        files,
        ..JobRequest::default()
    }
}

/// Watches `path` from another thread until `done`; returns every mode seen while it existed.
fn watch_modes(path: PathBuf, done: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u32>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !done.load(Ordering::SeqCst) {
            if let Ok(metadata) = std::fs::symlink_metadata(&path) {
                let mode = metadata.permissions().mode() & 0o7777;
                if seen.last() != Some(&mode) {
                    seen.push(mode);
                }
            }
        }
        seen
    })
}

#[test]
fn an_injected_0600_secret_is_never_readable_by_others_even_while_it_is_written() {
    usual_umask();
    let home = tempfile::tempdir().unwrap();
    let destination = home.path().join("secret.pem");
    // Big enough that writing it takes a while: a 0644 window before a chmod would be seen.
    let content = "k".repeat(48 * 1024 * 1024);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_modes(destination.clone(), done.clone());
    let request = injecting(vec![File::plain("secret.pem", &content, "0600")], &["true"]);
    let (result, output) = run_with_home(&request, home.path());
    done.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    assert_eq!(
        result,
        JobResult::Passed,
        "{}",
        &output[..output.len().min(2000)]
    );
    assert_eq!(seen, vec![0o600], "modes seen while the secret existed");
    assert_eq!(
        std::fs::metadata(&destination).unwrap().len(),
        content.len() as u64
    );
}

#[test]
fn an_existing_file_gets_its_final_mode_before_the_new_content() {
    usual_umask();
    let home = tempfile::tempdir().unwrap();
    let destination = home.path().join("token");
    std::fs::write(&destination, "old").unwrap();
    std::fs::set_permissions(&destination, std::fs::Permissions::from_mode(0o644)).unwrap();
    let request = injecting(vec![File::plain("token", "new secret", "0600")], &["true"]);
    let (result, output) = run_with_home(&request, home.path());
    assert_eq!(result, JobResult::Passed, "{output}");
    assert_eq!(mode(&destination), 0o600);
    assert_eq!(std::fs::read_to_string(&destination).unwrap(), "new secret");
}

#[test]
fn a_symlink_planted_at_an_injected_path_is_not_followed_and_the_job_says_so() {
    usual_umask();
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("authorized_keys");
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let link = home.path().join(".ssh/id_ed25519");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let request = injecting(
        vec![File::plain("~/.ssh/id_ed25519", "secret key", "0600")],
        &["echo never"],
    );
    let (result, output) = run_with_home(&request, home.path());
    assert_eq!(result, JobResult::Failed, "{output}");
    assert!(
        !target.exists(),
        "written through the planted link:\n{output}"
    );
    let shown = link.display().to_string();
    assert!(
        output.contains(&format!(
            "Failed to create destination path '{shown}': open {shown}: too many levels of symbolic links"
        )),
        "{output}"
    );
    assert!(!output.contains("never"), "{output}");
}

#[test]
fn directories_created_for_injected_files_are_0700() {
    usual_umask();
    let home = tempfile::tempdir().unwrap();
    let request = injecting(
        vec![File::plain("~/.config/cloud/credentials", "secret", "0600")],
        &["true"],
    );
    let (result, output) = run_with_home(&request, home.path());
    assert_eq!(result, JobResult::Passed, "{output}");
    assert_eq!(mode(&home.path().join(".config")), 0o700);
    assert_eq!(mode(&home.path().join(".config/cloud")), 0o700);
    assert_eq!(mode(&home.path().join(".config/cloud/credentials")), 0o600);
}

#[test]
fn the_job_log_and_the_agents_scratch_files_are_0600() {
    usual_umask();
    let hub = FakeHub::start();
    // The job looks at its own log file, its command file and its env files while it runs.
    let probe = concat!(
        "stat -c 'log %a' \"$TMPDIR\"/job_log_*.json; ",
        "stat -c 'cmd %a' \"${BASH_SOURCE[0]}\"; ",
        "stat -c 'env %a' \"$(dirname \"${BASH_SOURCE[0]}\")\"/.env-*"
    );
    hub.assign(
        JobRequest {
            job_id: "job-modes".into(),
            commands: vec![Command::new(probe)],
            ..JobRequest::default()
        },
        "jwt",
    );
    let mut agent = agent_process::AgentProcess::start(
        Path::new(env!("CARGO_BIN_EXE_agent")),
        &hub.address,
        "registration-token",
        &["--name", "red-team-files", "--disconnect-after-job"],
        None,
    );
    assert_eq!(agent.wait(Duration::from_secs(30)), 0, "{}", agent.output());
    let lines: Vec<String> = hub
        .simplified_log("job-modes")
        .into_iter()
        .flat_map(|line| line.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|line| ["log ", "cmd ", "env "].iter().any(|p| line.starts_with(p)))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        assert!(line.ends_with(" 600"), "{lines:?}");
    }
    let agent_log = agent.dir.path().join("agent.log");
    assert_eq!(mode(&agent_log), 0o600, "the agent's own log");
}
