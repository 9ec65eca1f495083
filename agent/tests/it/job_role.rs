//! The job role's credential endpoint (`agent/src/job_role/`) with moto's STS and S3 and the real
//! AWS CLI (from PyPI): a shell job, run as a job user with nothing but the agent's variables,
//! gets credentials through the standard container credential provider, is the assumed job
//! role's session named after the job, and writes and reads an object of its project in the
//! cache bucket. Then the endpoint's refusals, each beside the request that succeeds: another
//! local user (root) with the job's token, no token, a wrong token, the token of a finished job,
//! and a job's token at another machine's endpoint. (moto does not enforce IAM: what the role's
//! policies allow is checked on the stacks' rendered policies, not here.)

use testkit::containers;
use testkit::moto;
use testkit::sequences;

use agent::job::{job_environment, JobOptions};
use agent::job_role::{Caller, JobRole, JobRoleOptions};
use protocol::{EnvVar, JobRequest, JobResult};
use sequences::{commands, run_watched, simplified};
use std::process::Command;

const ROLE: &str = "arn:aws:iam::123456789012:role/flotilla-job-role";
const BUCKET: &str = "flotilla-cache-test";
const PROJECT: &str = "proj-1";

/// The AWS CLI, which the job user must be able to run (`.ci/run` makes its venv with Debian's
/// interpreter and names it in `FLOTILLA_AWS_CLI`).
fn aws_cli() -> std::path::PathBuf {
    let cli = std::env::var_os("FLOTILLA_AWS_CLI")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/flotilla-awscli/bin/aws".into());
    assert!(
        cli.is_file(),
        "the job role test needs the AWS CLI at {}: /usr/bin/python3 -m venv /opt/flotilla-awscli && /opt/flotilla-awscli/bin/pip install awscli (.ci/run does)",
        cli.display()
    );
    cli
}

/// `curl` as `user` (or as root, the test's own user), printing the body, then the status code.
fn ask(user: Option<&str>, url: &str, token: Option<&str>) -> String {
    let mut curl: Vec<String> = ["curl", "-s", "-w", "\n%{http_code}"]
        .map(String::from)
        .to_vec();
    if let Some(token) = token {
        curl.extend(["-H".into(), format!("Authorization: {token}")]);
    }
    curl.push(url.to_string());
    let mut command = match user {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).args(&curl);
            command
        }
        None => {
            let mut command = Command::new(&curl[0]);
            command.args(&curl[1..]);
            command
        }
    };
    let output = command.current_dir("/").output().unwrap();
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn status(answer: &str) -> &str {
    answer.lines().last().unwrap_or_default()
}

fn job_options(moto: &moto::MotoServer, role: &JobRole, scratch: &std::path::Path) -> JobOptions {
    let user = containers::rootless_user();
    let mut shell_env: Vec<(String, String)> = job_environment(std::env::vars())
        .into_iter()
        .filter(|(name, _)| !name.starts_with("AWS_"))
        .collect();
    shell_env.push(("AWS_ENDPOINT_URL".into(), moto.url.clone()));
    shell_env.push(("AWS_MAX_ATTEMPTS".into(), "1".into()));
    user.apply_to_environment(&mut shell_env);
    JobOptions {
        shell_env,
        scratch_root: scratch.to_path_buf(),
        job_user: Some(user),
        job_role: Some(role.clone()),
        ..JobOptions::default()
    }
}

fn job(id: &str, commands_: &[&str]) -> JobRequest {
    JobRequest {
        job_id: id.into(),
        env_vars: vec![
            EnvVar::plain("SEMAPHORE_PROJECT_ID", PROJECT),
            // The login shell sets its own PATH; the job puts the CLI on it, as a job would.
            EnvVar::plain(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin",
                    aws_cli().parent().unwrap().display()
                ),
            ),
        ],
        commands: commands(commands_),
        ..JobRequest::default()
    }
}

/// A running job's grant on `role` (for `options`' job user) and its token.
fn granted(role: &JobRole, id: &str, options: &JobOptions) -> (agent::job_role::Grant, String) {
    let grant = role
        .grant(&job(id, &[]), options.job_user.as_ref(), Caller::Host)
        .expect("a host caller always gets a grant");
    let token = grant
        .env
        .iter()
        .find(|(name, _)| name == "AWS_CONTAINER_AUTHORIZATION_TOKEN")
        .map(|(_, value)| value.clone())
        .expect("a grant's environment has its token");
    (grant, token)
}

#[test]
fn a_job_gets_its_roles_credentials_from_the_endpoint_and_only_it_does() {
    // The job and the endpoint's callers are the rootless tests' job user: its turn, for all of it.
    let _turn = testkit::job_users::turn(containers::ROOTLESS_USER);
    let moto = moto::MotoServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let made = Command::new(aws_cli())
        .args(["s3", "mb", &format!("s3://{BUCKET}")])
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let options = JobRoleOptions {
        role_arn: ROLE.into(),
        listen: "127.0.0.1:0".into(),
        cache_bucket: BUCKET.into(),
        stack: "test-stack".into(),
        agent_type: "s1-test".into(),
        region: moto::REGION.into(),
        ..JobRoleOptions::default()
    };
    let role = JobRole::start(options, &moto.sdk(&runtime)).unwrap();
    let url = format!(
        "http://{}{}",
        role.address(),
        agent::job_role::CREDENTIALS_PATH
    );
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let user = containers::ROOTLESS_USER;
    let home = format!("/home/{user}");
    let _ = std::fs::remove_file(format!("{home}/token"));

    let request = job(
        "job-role-test-1",
        &[
            "aws sts get-caller-identity --query Arn --output text",
            "echo cached-bytes > object && aws s3 cp --quiet object s3://$SEMAPHORE_CACHE_S3_BUCKET/proj-1/key && aws s3 cp s3://$SEMAPHORE_CACHE_S3_BUCKET/proj-1/key -",
            "echo $AWS_CONTAINER_AUTHORIZATION_TOKEN > ~/token",
        ],
    );
    let options = job_options(&moto, &role, scratch.path());
    let log = scratch.path().join("log.json");
    let (result, events, _log) = run_watched(&request, &options, &log, |_, _| {});
    let lines = simplified(&events).join("");
    assert_eq!(result, JobResult::Passed, "{lines}");
    assert!(
        lines.contains("assumed-role/flotilla-job-role/job-role-test-1"),
        "{lines}"
    );
    assert!(lines.contains("cached-bytes\n"), "{lines}");

    // The finished job's token is refused, to its own user too.
    let finished = std::fs::read_to_string(format!("{home}/token")).unwrap();
    let finished = finished.trim();
    assert_eq!(finished.len(), 64, "{finished}");
    assert_eq!(status(&ask(Some(user), &url, Some(finished))), "403");

    // A running job's token: its user gets credentials (the positive control of every refusal).
    let (grant, token) = granted(&role, "job-role-test-2", &options);
    let answer = ask(Some(user), &url, Some(&token));
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(answer.contains("\"AccessKeyId\""), "{answer}");
    // Another local user with the right token, the job's user without one or with another.
    assert_eq!(status(&ask(None, &url, Some(&token))), "403");
    assert_eq!(status(&ask(Some(user), &url, None)), "401");
    assert_eq!(status(&ask(Some(user), &url, Some(&"0".repeat(64)))), "403");
    // No other path: a role cannot be named.
    let other = format!("http://{}/v1/credentials/agent-role", role.address());
    assert_eq!(status(&ask(Some(user), &other, Some(&token))), "404");
    // Another machine's endpoint (another agent) does not know this job's token; its own job's
    // token works there (the positive control).
    let other_machine = JobRole::start(
        JobRoleOptions {
            role_arn: ROLE.into(),
            listen: "127.0.0.1:0".into(),
            ..JobRoleOptions::default()
        },
        &moto.sdk(&runtime),
    )
    .unwrap();
    let other_url = format!(
        "http://{}{}",
        other_machine.address(),
        agent::job_role::CREDENTIALS_PATH
    );
    assert_eq!(status(&ask(Some(user), &other_url, Some(&token))), "403");
    let (_its_own, its_token) = granted(&other_machine, "job-role-test-3", &options);
    assert_eq!(
        status(&ask(Some(user), &other_url, Some(&its_token))),
        "200"
    );
    drop(grant);
    assert_eq!(status(&ask(Some(user), &url, Some(&token))), "403");
    let _ = std::fs::remove_file(format!("{home}/token"));
}
