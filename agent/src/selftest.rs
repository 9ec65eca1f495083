//! `agent self-test`: what an image must have before it is worth booting — run last by the Packer
//! build and usable on any instance. It checks the installed units and boot scripts, that instance
//! metadata answers over IMDSv2, and on the GPU variant that the driver answers (`nvidia-smi`) and
//! that Docker can hand GPUs to containers. Every check runs; any failure means a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The units the AMI installs (ami/systemd).
pub const UNITS: &[&str] = &[
    "flotilla-boot.service",
    "flotilla-agent.service",
    "flotilla-remove-instance.service",
    "flotilla-boot-deadline.service",
    "flotilla-boot-deadline.timer",
    "flotilla-scaler.service",
];

/// The scripts the units run (ami/scripts).
pub const SCRIPTS: &[&str] = &["flotilla-boot", "flotilla-boot-deadline"];

#[derive(Debug, Clone)]
pub struct SelfTestOptions {
    pub units_dir: PathBuf,
    pub scripts_dir: PathBuf,
    /// Empty: skip the instance metadata check (not on EC2).
    pub imds_endpoint: String,
    pub gpu: bool,
    /// With `gpu`: also run `nvidia-smi` in this image with `docker run --gpus all`.
    pub docker_image: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            name: name.into(),
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name: name.into(),
            ok: false,
            detail,
        },
    }
}

fn files_present(dir: &Path, names: &[&str], executable: bool) -> Result<String, String> {
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
        Err(format!(
            "missing in {}: {}",
            dir.display(),
            missing.join(", ")
        ))
    }
}

/// Runs a program with a time limit; its stdout when it exits 0.
fn run(program: &str, args: &[&str], seconds: u64) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{program} did not finish within {seconds} s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
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
    if options.gpu {
        checks.push(check(
            "NVIDIA driver (nvidia-smi)",
            crate::gpu::nvidia_smi().and_then(|gpus| {
                if gpus.is_empty() {
                    Err("nvidia-smi lists no GPU".to_string())
                } else {
                    Ok(crate::gpu::describe(&gpus))
                }
            }),
        ));
        checks.push(check(
            "Docker NVIDIA runtime",
            run("docker", &["info", "--format", "{{json .Runtimes}}"], 30).and_then(|runtimes| {
                if runtimes.contains("nvidia") {
                    Ok("docker knows the nvidia runtime".to_string())
                } else {
                    Err(format!(
                        "docker has no nvidia runtime (run `nvidia-ctk runtime configure --runtime=docker`): {runtimes}"
                    ))
                }
            }),
        ));
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
    }
    checks
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
