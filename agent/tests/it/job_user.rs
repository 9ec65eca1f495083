//! Jobs run as a job user (`job-user`), on this machine: the shell is that user with no
//! capability, injected files are created as that user (so a path the user may not write is
//! refused, and a 0600 secret is the user's own), and at the end of the job nothing of the user's
//! is left running, processes that left the job's session included. The booted image checks the
//! same boundary under systemd (sealed_instance.rs); this one runs in the ordinary suite.
//!
//! Needs root (to switch users), as CI runs; the job user is `nobody`, with a home of its own.
//! One job per job user at a time, as on an instance (the end of a job kills all of the user's
//! processes): the tests take turns (`testkit::job_users`), with every other test of this binary
//! that runs a job as `nobody`.

use testkit::run_job;

use agent::job::{job_environment, JobOptions};
use agent::job_user::JobUser;
use protocol::{Command, File, JobRequest, JobResult};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn nobody_with_home(home: &Path) -> JobUser {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the job-user tests switch users: run them as root (CI does)"
    );
    let mut user = JobUser::lookup("nobody").expect("nobody exists");
    std::os::unix::fs::chown(home, Some(user.uid), Some(user.gid)).unwrap();
    user.home = home.to_path_buf();
    user
}

/// Runs `request` as `user`; the result and the job's output.
fn run_as(user: &JobUser, request: &JobRequest) -> (JobResult, String) {
    run_as_with_env(user, request, &[])
}

fn run_as_with_env(
    user: &JobUser,
    request: &JobRequest,
    env: &[(&str, &str)],
) -> (JobResult, String) {
    let _turn = testkit::job_users::turn(&user.name);
    let scratch = tempfile::tempdir().unwrap();
    let mut shell_env = job_environment(std::env::vars());
    user.apply_to_environment(&mut shell_env);
    shell_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let options = JobOptions {
        shell_env,
        scratch_root: scratch.path().to_path_buf(),
        job_user: Some(user.clone()),
        ..JobOptions::default()
    };
    run_job::run_collecting_output(request, &options, scratch.path())
}

fn job(commands: &[&str], files: Vec<File>) -> JobRequest {
    JobRequest {
        job_id: "job-user".into(),
        commands: commands.iter().map(|c| Command::new(*c)).collect(),
        files,
        ..JobRequest::default()
    }
}

#[test]
fn the_job_runs_as_the_job_user_with_no_capability_and_its_files_are_its_own() {
    let home = tempfile::tempdir().unwrap();
    let user = nobody_with_home(home.path());
    let request = job(
        &[
            "echo \"user=$(id -un) home=$HOME\"",
            "grep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/self/status",
            "stat -c 'secret %U %a' ~/.ssh/id_ed25519",
        ],
        vec![File::plain("~/.ssh/id_ed25519", "secret key", "0600")],
    );
    let (result, output) = run_as(&user, &request);
    assert_eq!(result, JobResult::Passed, "{output}");
    assert!(
        output.contains(&format!("user=nobody home={}", home.path().display())),
        "{output}"
    );
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert!(
            output.contains(&format!("{set}:\t0000000000000000")),
            "{set}: {output}"
        );
    }
    assert!(output.contains("secret nobody 600"), "{output}");
    let key = std::fs::metadata(home.path().join(".ssh/id_ed25519")).unwrap();
    assert_eq!((key.uid(), key.mode() & 0o777), (user.uid, 0o600));
}

#[test]
fn a_file_injected_where_the_job_user_may_not_write_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let user = nobody_with_home(home.path());
    // Root's private directory: the agent could write there, the job user cannot.
    let private = tempfile::tempdir().unwrap();
    let target = private.path().join("planted");
    let request = job(
        &["echo should not run"],
        vec![File::plain(target.display().to_string(), "x", "0644")],
    );
    let (result, output) = run_as(&user, &request);
    assert_eq!(result, JobResult::Failed, "{output}");
    assert!(output.contains("permission denied"), "{output}");
    assert!(!target.exists());
}

#[test]
fn nothing_of_the_job_user_runs_after_the_job_even_what_left_its_session() {
    let home = tempfile::tempdir().unwrap();
    let user = nobody_with_home(home.path());
    let marker = format!("flotilla-escaped-{}", std::process::id());
    let request = job(
        &[
            &format!("setsid bash -c 'exec -a {marker} sleep 300' </dev/null >/dev/null 2>&1 &"),
            "sleep 0.2",
        ],
        Vec::new(),
    );
    let (result, output) = run_as(&user, &request);
    assert_eq!(result, JobResult::Passed, "{output}");
    // Live processes only (a killed one may stay a zombie until its new parent reaps it).
    let table = std::process::Command::new("ps")
        .args(["-u", "nobody", "-o", "stat=,args="])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    let alive: Vec<&str> = table
        .lines()
        .filter(|line| !line.trim_start().starts_with('Z') && line.contains(&marker))
        .collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
}

#[test]
fn a_container_job_whose_job_user_cannot_use_docker_fails_saying_what_grants_it() {
    let home = tempfile::tempdir().unwrap();
    let user = nobody_with_home(home.path());
    // A socket only root may use stands in for the Docker socket without the docker group.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    let request = JobRequest {
        executor: "dockercompose".into(),
        compose: protocol::Compose {
            containers: vec![protocol::Container {
                name: "main".into(),
                image: "debian:bookworm".into(),
                ..protocol::Container::default()
            }],
            ..protocol::Compose::default()
        },
        ..job(&["echo should not run"], Vec::new())
    };
    let (result, output) = run_as_with_env(
        &user,
        &request,
        &[("DOCKER_HOST", &format!("unix://{}", socket.display()))],
    );
    assert_eq!(result, JobResult::Failed, "{output}");
    assert!(output.contains("JobDockerAccess=true"), "{output}");
    assert!(!output.contains("should not run"), "{output}");
}
