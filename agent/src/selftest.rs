//! `agent self-test`: what an image must have before it is worth booting — run last by the Packer
//! build and usable on any instance. It checks the installed units and boot scripts, that instance
//! metadata answers over IMDSv2, that the job user's rootless container engine starts and stops
//! (`--engine-user`), that the job user's login shell has Semaphore's toolbox (`--toolbox-user`),
//! and on the GPU variant that the driver answers (`nvidia-smi`), that Docker
//! can hand GPUs to containers and (with `--engine-user`) that the NVIDIA Container Toolkit makes
//! the CDI spec the rootless engine's GPUs come from. Every check runs; any failure means a non-zero exit.

use crate::command::{run_with_timeout, CommandError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The units the AMI installs (ami/systemd).
pub const UNITS: &[&str] = &[
    "flotilla-firewall.service",
    "flotilla-boot.service",
    "flotilla-seal.service",
    "flotilla-agent.service",
    "flotilla-remove-instance.service",
    "flotilla-boot-deadline.service",
    "flotilla-boot-deadline.timer",
    "flotilla-scaler.service",
];

/// The scripts the units run (ami/scripts).
pub(crate) const SCRIPTS: &[&str] = &["flotilla-boot", "flotilla-boot-deadline", "flotilla-seal"];

#[derive(Debug, Clone)]
pub struct SelfTestOptions {
    pub units_dir: PathBuf,
    pub scripts_dir: PathBuf,
    /// Empty: skip the instance metadata check (not on EC2).
    pub imds_endpoint: String,
    pub gpu: bool,
    /// With `gpu`: also run `nvidia-smi` in this image with `docker run --gpus all`.
    pub docker_image: String,
    /// Non-empty: start and tear down the rootless container engine as this user, as a
    /// container job does (`container-engine: rootless`).
    pub engine_user: String,
    /// Non-empty: this user's login shell must find Semaphore's toolbox ([`TOOLBOX_COMMANDS`]).
    pub toolbox_user: String,
}

/// What a Semaphore pipeline calls from the toolbox (`checkout` is a shell function).
pub(crate) const TOOLBOX_COMMANDS: &[&str] =
    &["checkout", "cache", "artifact", "test-results", "retry"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check<E: std::fmt::Display>(name: &str, result: Result<String, E>) -> Check {
    match result {
        Ok(detail) => Check {
            name: name.into(),
            ok: true,
            detail,
        },
        Err(error) => Check {
            name: name.into(),
            ok: false,
            detail: error.to_string(),
        },
    }
}

/// A check's failure, as the self-test prints it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CheckFailed(String);

fn files_present(dir: &Path, names: &[&str], executable: bool) -> Result<String, CheckFailed> {
    use std::os::unix::fs::PermissionsExt;
    let mut missing = Vec::new();
    for name in names {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(meta) if !executable || meta.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => missing.push(format!("{name} (not executable)")),
            Err(_) => missing.push(name.to_string()),
        }
    }
    if missing.is_empty() {
        Ok(format!("{} in {}", names.len(), dir.display()))
    } else {
        Err(CheckFailed(format!(
            "missing in {}: {}",
            dir.display(),
            missing.join(", ")
        )))
    }
}

/// `program args`, with a time limit of `seconds`.
fn run(program: &str, args: &[&str], seconds: u64) -> Result<String, CommandError> {
    run_with_timeout(program, args, Duration::from_secs(seconds))
}

pub fn run_checks(options: &SelfTestOptions) -> Vec<Check> {
    let mut checks = vec![
        check(
            "agent binary",
            std::env::current_exe()
                .map(|exe| format!("{} {}", exe.display(), crate::listener::VERSION))
                .map_err(|e| e.to_string()),
        ),
        check(
            "systemd units",
            files_present(&options.units_dir, UNITS, false),
        ),
        check(
            "boot scripts",
            files_present(&options.scripts_dir, SCRIPTS, true),
        ),
    ];
    if !options.imds_endpoint.is_empty() {
        let mut imds = crate::cloud::imds::Imds::new(&options.imds_endpoint);
        checks.push(check(
            "instance metadata (IMDSv2)",
            imds.instance_id().map(|id| format!("instance {id}")),
        ));
    }
    if !options.engine_user.is_empty() {
        checks.push(check(
            "rootless container engine",
            rootless_engine(&options.engine_user),
        ));
    }
    if !options.toolbox_user.is_empty() {
        checks.push(check(
            "Semaphore toolbox",
            toolbox_check(&options.toolbox_user),
        ));
    }
    if options.gpu {
        checks.extend(gpu_checks(options));
    }
    checks
}

/// `--gpu`: the driver, Docker's runtime, the rootless engine's CDI spec, a GPU container.
fn gpu_checks(options: &SelfTestOptions) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(check(
        "NVIDIA driver (nvidia-smi)",
        match crate::gpu::nvidia_smi() {
            Ok(gpus) if gpus.is_empty() => Err("nvidia-smi lists no GPU".to_string()),
            Ok(gpus) => Ok(crate::gpu::describe(&gpus)),
            Err(error) => Err(error.to_string()),
        },
    ));
    checks.push(check(
        "Docker NVIDIA runtime",
        match run("docker", &["info", "--format", "{{json .Runtimes}}"], 30) {
            Ok(runtimes) if runtimes.contains("nvidia") => {
                Ok("docker knows the nvidia runtime".to_string())
            }
            Ok(runtimes) => Err(format!(
                "docker has no nvidia runtime (run `nvidia-ctk runtime configure --runtime=docker`): {runtimes}"
            )),
            Err(error) => Err(error.to_string()),
        },
    ));
    if !options.engine_user.is_empty() {
        checks.push(check("CDI specs for the rootless engine", cdi_check()));
    }
    if !options.docker_image.is_empty() {
        checks.push(check(
            "docker run --gpus all",
            run(
                "docker",
                &[
                    "run",
                    "--rm",
                    "--gpus",
                    "all",
                    &options.docker_image,
                    "nvidia-smi",
                    "-L",
                ],
                600,
            )
            .map(|out| out.lines().next().unwrap_or_default().to_string()),
        ));
    }
    checks
}

/// What `flotilla-seal` does at every boot for the rootless engine's GPUs (`nvidia-ctk cdi
/// generate`), here into a file of the check's own, and the GPU device names the spec gives.
fn cdi_check() -> Result<String, CdiCheckError> {
    let dir = crate::job::create_unique_dir(&std::env::temp_dir(), "flotilla-cdi-check-")?;
    let output = dir.join("nvidia.yaml");
    let output_arg = format!("--output={}", output.display());
    let generated = run("nvidia-ctk", &["cdi", "generate", &output_arg], 120)
        .map_err(CdiCheckError::from)
        .and_then(|_| Ok(std::fs::read_to_string(&output)?));
    let _ = std::fs::remove_dir_all(&dir);
    let names = crate::gpu::cdi_gpu_devices(&generated?)?;
    Ok(format!("nvidia.com/gpu={}", names.join(", ")))
}

/// Why the CDI check failed.
#[derive(Debug, thiserror::Error)]
enum CdiCheckError {
    #[error("the spec file: {0}")]
    File(#[from] std::io::Error),
    #[error(transparent)]
    Generate(#[from] CommandError),
    #[error(transparent)]
    Spec(#[from] crate::gpu::CdiError),
}

/// Asks the user's login shell (`bash --login`, as a shell job starts) what each toolbox command
/// is: `found <name> <type>` or `missing <name>` per line.
fn toolbox_check(user: &str) -> Result<String, ToolboxCheckError> {
    use std::os::unix::process::CommandExt;
    let user = crate::job_user::JobUser::lookup(user)?;
    let script: String = TOOLBOX_COMMANDS
        .iter()
        .map(|name| {
            format!("if t=$(type -t {name}); then echo \"found {name} $t\"; else echo \"missing {name}\"; fi\n")
        })
        .collect();
    let mut env = crate::job::job_environment(std::env::vars());
    user.apply_to_environment(&mut env);
    let mut command = std::process::Command::new("bash");
    command
        .args(["--login", "-c", &script])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/");
    let job_user = user.clone();
    // SAFETY: become_in_child makes only async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || job_user.become_in_child());
    }
    let output = crate::command::run_command_with_timeout(
        command,
        "bash",
        &["--login"],
        Duration::from_secs(60),
    )?;
    toolbox_verdict(&user.name, &output)
}

/// The toolbox check's verdict from its shell's lines: every command found, or which are not.
pub(crate) fn toolbox_verdict(user: &str, lines: &str) -> Result<String, ToolboxCheckError> {
    let found: Vec<String> = lines
        .lines()
        .filter_map(|line| line.strip_prefix("found "))
        .map(|rest| rest.replacen(' ', " (", 1) + ")")
        .collect();
    let missing: Vec<&str> = TOOLBOX_COMMANDS
        .iter()
        .copied()
        .filter(|name| {
            !lines
                .lines()
                .any(|l| l.starts_with(&format!("found {name} ")))
        })
        .collect();
    match missing.is_empty() {
        true => Ok(format!("{user}'s login shell has {}", found.join(", "))),
        false => Err(ToolboxCheckError::Missing {
            user: user.to_string(),
            missing: missing.join(", "),
        }),
    }
}

/// Why the toolbox check failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ToolboxCheckError {
    #[error(transparent)]
    User(#[from] crate::job_user::JobUserError),
    #[error(transparent)]
    Shell(#[from] CommandError),
    #[error("{user}'s login shell lacks Semaphore's toolbox commands: {missing} (ami/scripts/install-toolbox.sh installs them)")]
    Missing { user: String, missing: String },
}

/// Why the engine check failed.
#[derive(Debug, thiserror::Error)]
enum EngineCheckError {
    #[error(transparent)]
    User(#[from] crate::job_user::JobUserError),
    #[error("cannot make a scratch directory for the engine: {0}")]
    Scratch(#[from] std::io::Error),
    #[error(transparent)]
    Engine(#[from] crate::compose::engine::EngineError),
}

/// Starts the engine a container job gets, as `user`, in a scratch directory of its own, and tears
/// it down: how long it took to answer.
fn rootless_engine(user: &str) -> Result<String, EngineCheckError> {
    let user = crate::job_user::JobUser::lookup(user)?;
    let scratch = crate::job::create_unique_dir(&std::env::temp_dir(), "flotilla-self-test-")?;
    let result = engine_round_trip(&user, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn engine_round_trip(
    user: &crate::job_user::JobUser,
    scratch: &Path,
) -> Result<String, EngineCheckError> {
    use crate::compose::engine::{JobEngine, RootlessOptions, DEFAULT_IMAGE_STORE};
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o711))?;
    let mut env = crate::job::job_environment(std::env::vars());
    user.apply_to_environment(&mut env);
    let options = RootlessOptions {
        image_store: Some(PathBuf::from(DEFAULT_IMAGE_STORE)),
    };
    let started = std::time::Instant::now();
    let engine = JobEngine::start(&options, Some(user), scratch, &env)?;
    let answered = started.elapsed();
    engine.tear_down();
    Ok(format!(
        "as {} answered in {} ms and was torn down",
        user.name,
        answered.as_millis()
    ))
}

/// One line per check, `ok` or `FAIL`.
pub fn render(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| {
            format!(
                "{:<4} {}: {}\n",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toolbox_verdict_names_what_is_missing() {
        let all = "found checkout function\nfound cache file\nfound artifact file\nfound test-results file\nfound retry file\n";
        assert_eq!(
            toolbox_verdict("job", all).unwrap(),
            "job's login shell has checkout (function), cache (file), artifact (file), test-results (file), retry (file)"
        );
        let some = "found checkout function\nmissing cache\nfound artifact file\nmissing test-results\nfound retry file\n";
        let error = toolbox_verdict("job", some).unwrap_err().to_string();
        assert!(
            error.contains("lacks Semaphore's toolbox commands: cache, test-results"),
            "{error}"
        );
        // A line that merely mentions a name is not a find.
        let error = toolbox_verdict("job", "found checkoutx function\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("checkout, cache, artifact, test-results, retry"),
            "{error}"
        );
    }
}
