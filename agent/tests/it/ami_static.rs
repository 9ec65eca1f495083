//! The AMI (ami/) checked offline: `packer validate` and `packer fmt -check` on the template,
//! `shellcheck` on every script, `systemd-analyze verify` on every unit, and the boot scripts'
//! behaviour — `flotilla-boot` against a small fake instance metadata service (IMDSv2 only) and
//! `flotilla-boot-deadline` with a stand-in `agent` that records its arguments.
//!
//! The tools are required: a missing one fails the test with the command that installs it
//! (`apt-get install -y packer shellcheck systemd curl`); nothing is skipped.

use testkit::imds;
use testkit::toolbox;

use imds::{FakeImds, ImdsState};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------------------------------------
// helpers

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

fn ami() -> PathBuf {
    repo_root().join("ami")
}

/// The tool's path, or a failed test that says how to install it.
fn require_tool(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return candidate;
            }
        }
    }
    panic!(
        "`{name}` is required by the AMI tests but is not on PATH: install it with `{install}` \
         (the AMI checks are never skipped)"
    );
}

fn packer() -> PathBuf {
    require_tool("packer", "apt-get install -y packer")
}

fn text(output: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("could not run {command:?}: {e}"))
}

fn write_executable(path: &Path, body: &str) {
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no files in {}", dir.display());
    files
}

// ---------------------------------------------------------------------------------------------
// packer

/// Packer with no AWS credentials, no update check, and its own HOME: validation is offline.
fn packer_command(home: &Path) -> Command {
    let mut command = Command::new(packer());
    command
        .current_dir(repo_root())
        .env("HOME", home)
        .env("CHECKPOINT_DISABLE", "1")
        .env_remove("PACKER_LOG");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    command
}

struct PackerVars {
    _dir: tempfile::TempDir,
    args: Vec<String>,
}

/// Stand-in binaries (packer's file provisioner wants its sources to exist) and a binaries hash.
fn packer_vars(binaries_sha256: &str) -> PackerVars {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent");
    let scaler = dir.path().join("scaler");
    fs::write(&agent, "stand-in agent").unwrap();
    fs::write(&scaler, "stand-in scaler").unwrap();
    let args = vec![
        "-var".into(),
        format!("agent_binary={}", agent.display()),
        "-var".into(),
        format!("scaler_binary={}", scaler.display()),
        "-var".into(),
        format!("binaries_sha256={binaries_sha256}"),
        "-var".into(),
        format!("toolbox_sha256={TOOLBOX_SHA256}"),
    ];
    PackerVars { _dir: dir, args }
}

/// A stand-in for the toolbox tarball's pinned SHA-256 (the variable has no default).
const TOOLBOX_SHA256: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const HASH_A: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_B: &str = "1111111111111111111111111111111111111111111111111111111111111111";

#[test]
fn packer_validate_accepts_every_variant() {
    // Packer 1.6.6 validates HCL2 amazon-ebs templates fully offline (it reaches AWS only when
    // building), so this is the full `packer validate`, not -syntax-only.
    let home = tempfile::tempdir().unwrap();
    let vars = packer_vars(HASH_A);
    for base_os in ["ubuntu-24.04", "al2023"] {
        for arch in ["x86_64", "arm64"] {
            for gpu in ["false", "true"] {
                let output = run(packer_command(home.path())
                    .arg("validate")
                    .args(&vars.args)
                    .args(["-var", &format!("base_os={base_os}")])
                    .args(["-var", &format!("arch={arch}")])
                    .args(["-var", &format!("gpu={gpu}")])
                    .arg("ami/flotilla.pkr.hcl"));
                assert!(
                    output.status.success(),
                    "packer validate ({base_os}, {arch}, gpu={gpu}) failed:\n{}",
                    text(&output)
                );
            }
        }
    }
}

#[test]
fn packer_validate_rejects_bad_variables() {
    let home = tempfile::tempdir().unwrap();
    let vars = packer_vars(HASH_A);
    for (bad, expect) in [
        (
            "base_os=debian-12",
            "base_os must be ubuntu-24.04 or al2023",
        ),
        ("arch=amd64", "arch must be x86_64 or arm64"),
        (
            "binaries_sha256=abc",
            "binaries_sha256 must be 64 lowercase hex",
        ),
        ("agent_version=1.0 beta", "agent_version must be"),
        (
            "nvidia_driver_branch=latest",
            "nvidia_driver_branch must be",
        ),
        (
            r#"engine_images=["nvidia/cuda:12 ; rm -rf /"]"#,
            "Each of engine_images must be an image reference",
        ),
        (
            "toolbox_version=latest",
            "toolbox_version must be a toolbox release tag",
        ),
        (
            "toolbox_sha256=abc",
            "toolbox_sha256 must be 64 lowercase hex",
        ),
    ] {
        let output = run(packer_command(home.path())
            .arg("validate")
            .args(&vars.args)
            .args(["-var", bad])
            .arg("ami/flotilla.pkr.hcl"));
        assert!(
            !output.status.success(),
            "{bad} was accepted:\n{}",
            text(&output)
        );
        let all = text(&output).replace('\n', " ");
        assert!(
            all.contains(expect),
            "{bad}: expected '{expect}' in:\n{}",
            text(&output)
        );
    }
    // A binary that does not exist is caught by validate too.
    let output = run(packer_command(home.path())
        .arg("validate")
        .args(["-var", "agent_binary=/nonexistent/agent"])
        .args(["-var", "scaler_binary=/nonexistent/scaler"])
        .args(["-var", &format!("binaries_sha256={HASH_A}")])
        .args(["-var", &format!("toolbox_sha256={TOOLBOX_SHA256}")])
        .arg("ami/flotilla.pkr.hcl"));
    assert!(
        !output.status.success() && text(&output).contains("Bad source '/nonexistent/agent'"),
        "missing binaries accepted:\n{}",
        text(&output)
    );
}

fn packer_local(home: &Path, vars: &PackerVars, extra: &[&str], expression: &str) -> String {
    let mut child = packer_command(home)
        .arg("console")
        .args(&vars.args)
        .args(extra.iter().flat_map(|v| ["-var", v]))
        .arg("ami/flotilla.pkr.hcl")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("packer console starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{expression}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "packer console: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn ami_name_carries_version_variant_and_content_hash() {
    let home = tempfile::tempdir().unwrap();
    let vars_a = packer_vars(HASH_A);
    let vars_b = packer_vars(HASH_B);
    let cargo = fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let version = cargo
        .split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find(|l| l.starts_with("version")))
        .and_then(|l| l.split('"').nth(1))
        .expect("workspace version in Cargo.toml");

    let name_a = packer_local(home.path(), &vars_a, &[], "local.ami_name");
    let prefix = format!("flotilla-{version}-ubuntu-24.04-x86_64-cpu-");
    let hash = name_a
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("AMI name {name_a:?} does not start with {prefix:?}"));
    assert!(
        hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "content hash {hash:?}"
    );
    let gpu = packer_local(
        home.path(),
        &vars_a,
        &[
            "gpu=true",
            "base_os=al2023",
            "arch=arm64",
            "agent_version=9.9.9",
        ],
        "local.ami_name",
    );
    assert!(gpu.starts_with("flotilla-9.9.9-al2023-arm64-gpu-"), "{gpu}");
    // Other binaries, other name.
    let name_b = packer_local(home.path(), &vars_b, &[], "local.ami_name");
    assert_ne!(
        name_a, name_b,
        "the binaries' hash must change the AMI name"
    );
    // Every script and unit is part of the hash.
    let files = packer_local(home.path(), &vars_a, &[], "local.content_files");
    for file in sorted_files(&ami().join("scripts"))
        .iter()
        .chain(sorted_files(&ami().join("systemd")).iter())
    {
        let relative = file.strip_prefix(ami()).unwrap().display().to_string();
        assert!(
            files.contains(&format!("\"{relative}\"")),
            "{relative} not hashed: {files}"
        );
    }
    // Builder type defaults.
    assert_eq!(
        packer_local(home.path(), &vars_a, &["gpu=true"], "local.instance_type"),
        "g5.xlarge"
    );
    assert_eq!(
        packer_local(home.path(), &vars_a, &[], "local.instance_type"),
        "c6i.large"
    );
    assert_eq!(
        packer_local(
            home.path(),
            &vars_a,
            &["instance_type=g6.2xlarge"],
            "local.instance_type"
        ),
        "g6.2xlarge"
    );
}

#[test]
fn packer_fmt_check() {
    let home = tempfile::tempdir().unwrap();
    let output = run(packer_command(home.path()).args(["fmt", "-check", "-diff", "ami"]));
    assert!(
        output.status.success() && output.stdout.is_empty(),
        "`packer fmt -check ami` wants changes (run `packer fmt ami`):\n{}",
        text(&output)
    );
}

#[test]
fn template_ends_with_the_self_test_and_records_a_manifest() {
    let template = fs::read_to_string(ami().join("flotilla.pkr.hcl")).unwrap();
    let code: String = template
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !code.contains("required_plugins"),
        "Packer 1.6.6 has no required_plugins"
    );
    let last = code
        .rfind("provisioner \"")
        .expect("the template has provisioners");
    let last_block = &code[last..];
    assert!(
        last_block.contains("inline = [local.self_test]"),
        "the last provisioner must run the self-test:\n{last_block}"
    );
    assert!(template.contains(
        "\"sudo /usr/local/bin/agent self-test --engine-user flotilla-job --toolbox-user flotilla-job --gpu --docker-image '${var.cuda_image}'\""
    ));
    assert!(template.contains("post-processor \"manifest\""));
    assert!(
        template.contains("--http-tokens required"),
        "IMDSv2 on the builder"
    );
}

// ---------------------------------------------------------------------------------------------
// shellcheck

#[test]
fn shellcheck_every_script() {
    let shellcheck = require_tool("shellcheck", "apt-get install -y shellcheck");
    for script in sorted_files(&ami().join("scripts")) {
        let body = fs::read_to_string(&script).unwrap();
        let name = script.display();
        assert!(
            body.starts_with("#!/usr/bin/env bash\n"),
            "{name}: bash shebang"
        );
        assert!(
            body.contains("\nset -euo pipefail\n"),
            "{name}: set -euo pipefail"
        );
        let mode = fs::metadata(&script).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{name} is not executable");
        let output = run(Command::new(&shellcheck)
            .args(["--shell=bash", "--severity=style"])
            .arg(&script));
        assert!(
            output.status.success(),
            "shellcheck {name}:\n{}",
            text(&output)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// systemd units

const AGENT_EXEC_START: &str = "ExecStart=/usr/local/bin/agent start --ec2 --report-gpus \
    --disconnect-after-job --registered-file /run/flotilla/registered \
    --job-record-file /var/lib/flotilla/job-taken --job-user flotilla-job \
    --job-cgroups \
    --ec2-poweroff-command \"sudo /usr/bin/systemctl poweroff\"";

fn unit_settings(body: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in body.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        settings.entry(key.into()).or_default().push(value.into());
    }
    settings
}

fn setting(units: &BTreeMap<String, String>, unit: &str, key: &str) -> String {
    let settings = unit_settings(&units[unit]);
    settings
        .get(key)
        .unwrap_or_else(|| panic!("{unit} has no {key}="))
        .join(" ")
}

#[test]
fn systemd_units_verify() {
    let analyze = require_tool("systemd-analyze", "apt-get install -y systemd");
    // systemd-analyze verify checks that every Exec*= binary exists. The real ones live on the
    // image only, so the units are verified as copies whose /usr/local/bin and
    // /usr/local/lib/flotilla paths point at executable stand-ins in a temporary directory.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let units_dir = dir.path().join("units");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(&units_dir).unwrap();
    for name in [
        "agent",
        "scaler",
        "flotilla-boot",
        "flotilla-boot-deadline",
        "flotilla-seal",
        "flotilla-hub-boot",
    ] {
        write_executable(&bin.join(name), "#!/bin/sh\nexit 0\n");
    }
    let mut units = BTreeMap::new();
    let mut copies = Vec::new();
    for unit in sorted_files(&ami().join("systemd")) {
        let name = unit.file_name().unwrap().to_string_lossy().to_string();
        let body = fs::read_to_string(&unit).unwrap();
        let rewritten = body
            .replace("/usr/local/bin/", &format!("{}/", bin.display()))
            .replace("/usr/local/lib/flotilla/", &format!("{}/", bin.display()));
        let copy = units_dir.join(&name);
        fs::write(&copy, rewritten).unwrap();
        copies.push(copy);
        units.insert(name, body);
    }
    let expected = [
        "flotilla-agent.service",
        "flotilla-boot-deadline.service",
        "flotilla-boot-deadline.timer",
        "flotilla-boot.service",
        "flotilla-firewall.service",
        "flotilla-hub.service",
        "flotilla-remove-instance.service",
        "flotilla-scaler.service",
        "flotilla-seal.service",
    ];
    assert_eq!(
        units.keys().map(String::as_str).collect::<Vec<_>>(),
        expected
    );

    let output = run(Command::new(&analyze).arg("verify").args(&copies));
    // verify exits 0 on unknown keys or unparsable values and only prints them: any output fails.
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&output)
    );

    // verify does not notice a dangling OnFailure=/Requires=/Unit=: check flotilla-* references.
    for (name, body) in &units {
        for (key, values) in unit_settings(body) {
            if [
                "Requires",
                "After",
                "Wants",
                "OnFailure",
                "Unit",
                "Before",
                "BindsTo",
            ]
            .contains(&key.as_str())
            {
                for reference in values.iter().flat_map(|v| v.split_whitespace()) {
                    if reference.starts_with("flotilla-") {
                        assert!(
                            units.contains_key(reference),
                            "{name}: {key}={reference} does not exist"
                        );
                    }
                }
            }
        }
    }

    // The contract's command lines and the settings the design depends on.
    let agent = &units["flotilla-agent.service"];
    assert!(
        agent.lines().any(|l| l == AGENT_EXEC_START),
        "agent ExecStart:\n{agent}"
    );
    for (unit, key, value) in [
        ("flotilla-agent.service", "User", "flotilla"),
        // Jobs run as flotilla-job: the agent may switch to it and stop it, nothing more, and
        // the job cannot see the agent in /proc.
        (
            "flotilla-agent.service",
            "AmbientCapabilities",
            "CAP_SETUID CAP_SETGID CAP_KILL CAP_SYSLOG",
        ),
        ("flotilla-agent.service", "ProtectProc", "invisible"),
        (
            "flotilla-seal.service",
            "Before",
            "docker.service flotilla-agent.service cron.service atd.service",
        ),
        // The metadata rule, from the image alone, before any network and before the user data
        // is read (flotilla-seal --early).
        (
            "flotilla-firewall.service",
            "Before",
            "network-pre.target flotilla-boot.service flotilla-seal.service cron.service atd.service",
        ),
        ("flotilla-firewall.service", "DefaultDependencies", "no"),
        (
            "flotilla-firewall.service",
            "ExecStart",
            "/usr/local/lib/flotilla/flotilla-seal --early",
        ),
        // Each job in a cgroup of its own under the agent's (agent/src/job_cgroup.rs); a job's
        // out-of-memory kill fails the job, not the unit.
        ("flotilla-agent.service", "Delegate", "yes"),
        ("flotilla-agent.service", "OOMPolicy", "continue"),
        ("flotilla-agent.service", "TasksMax", "infinity"),
        (
            "flotilla-agent.service",
            "ConditionPathExists",
            "/run/flotilla/agent.env",
        ),
        (
            "flotilla-agent.service",
            "EnvironmentFile",
            "/run/flotilla/agent.env /run/flotilla/container-engine.env",
        ),
        (
            "flotilla-agent.service",
            "Requires",
            "flotilla-boot.service flotilla-seal.service",
        ),
        (
            "flotilla-agent.service",
            "OnFailure",
            "flotilla-remove-instance.service",
        ),
        ("flotilla-agent.service", "Restart", "no"),
        ("flotilla-agent.service", "KillMode", "mixed"),
        ("flotilla-agent.service", "TimeoutStopSec", "120s"),
        ("flotilla-boot.service", "Type", "oneshot"),
        ("flotilla-boot.service", "RemainAfterExit", "yes"),
        (
            "flotilla-boot.service",
            "ExecStart",
            "/usr/local/lib/flotilla/flotilla-boot",
        ),
        (
            "flotilla-remove-instance.service",
            "ExecStart",
            "/usr/local/bin/agent remove-instance --reason unit-failed",
        ),
        ("flotilla-boot-deadline.timer", "OnBootSec", "15min"),
        ("flotilla-boot-deadline.timer", "OnUnitActiveSec", "1min"),
        (
            "flotilla-boot-deadline.service",
            "ExecStart",
            "/usr/local/lib/flotilla/flotilla-boot-deadline",
        ),
        (
            "flotilla-scaler.service",
            "ConditionPathExists",
            "/run/flotilla/scaler.env",
        ),
        (
            "flotilla-scaler.service",
            "ExecStart",
            "/usr/local/bin/scaler run --config-ssm-parameter ${FLOTILLA_CONFIG_SSM_PARAMETER} --emf-file /var/log/flotilla-scaler/metrics.log",
        ),
        ("flotilla-scaler.service", "Restart", "always"),
        ("flotilla-scaler.service", "DynamicUser", "yes"),
    ] {
        assert_eq!(setting(&units, unit, key), value, "{unit} {key}=");
    }
    // One job per machine: the agent unit is never restarted (a restart after a job was taken
    // would run a second job on a used machine); every failure goes to OnFailure= removal. A
    // Condition*= would skip the unit without failing it, and so without removal.
    let agent_settings = unit_settings(agent);
    for key in [
        "RestartSec",
        "StartLimitIntervalSec",
        "StartLimitBurst",
        "RestartPreventExitStatus",
        "RestartForceExitStatus",
        "SuccessExitStatus",
    ] {
        assert!(
            !agent_settings.contains_key(key),
            "flotilla-agent.service must not set {key}="
        );
    }
    for key in agent_settings.keys() {
        assert!(
            !key.starts_with("Condition") || key == "ConditionPathExists",
            "flotilla-agent.service: {key}= would skip the unit instead of failing it"
        );
    }
    assert_eq!(
        agent_settings["ConditionPathExists"],
        vec!["/run/flotilla/agent.env".to_string()],
        "the only condition: this is an agent instance"
    );
    assert!(setting(&units, "flotilla-boot.service", "After").contains("network-online.target"));
    assert!(setting(&units, "flotilla-boot.service", "After").contains("cloud-init.service"));
    // The deadline's default must match the timer's first run (15 min).
    assert!(units["flotilla-boot-deadline.service"].contains("FLOTILLA_BOOT_DEADLINE_SECONDS=900"));
}

#[test]
fn the_image_has_a_root_owned_job_record_directory_and_no_record() {
    let configure = fs::read_to_string(ami().join("scripts/configure.sh")).unwrap();
    assert!(
        configure.contains("install -d -o root -g flotilla -m 1770 /var/lib/flotilla\n"),
        "configure.sh creates the job record's directory"
    );
    let install = fs::read_to_string(ami().join("scripts/install.sh")).unwrap();
    assert!(
        install.contains("/scripts/configure.sh"),
        "install.sh runs configure.sh"
    );
    let cleanup = fs::read_to_string(ami().join("scripts/cleanup.sh")).unwrap();
    assert!(
        cleanup.contains("rm -f /var/lib/flotilla/job-taken\n"),
        "cleanup.sh leaves no job record in the image"
    );
}

// ---------------------------------------------------------------------------------------------
// Semaphore's toolbox (ami/scripts/install-toolbox.sh)

/// The user the toolbox tests install for (made once, with a home, as configure.sh makes
/// flotilla-job).
const TOOLBOX_USER: &str = "flotilla-ci-toolbox";

fn toolbox_user_home() -> PathBuf {
    let exists = Command::new("id").arg(TOOLBOX_USER).output().unwrap();
    if !exists.status.success() {
        let made = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/bash", TOOLBOX_USER])
            .status()
            .unwrap();
        assert!(
            made.success(),
            "useradd {TOOLBOX_USER} (the tests run as root)"
        );
    }
    PathBuf::from(format!("/home/{TOOLBOX_USER}"))
}

/// Runs install-toolbox.sh with the tarball and checksum, its links and profile snippet in
/// `out` (not the machine's /usr/local/bin and /etc/profile.d).
fn install_toolbox(tarball: &Path, sha256: &str, out: &Path) -> Output {
    run(Command::new("bash")
        .arg(ami().join("scripts/install-toolbox.sh"))
        .env("FLOTILLA_TOOLBOX_TARBALL", tarball)
        .env("FLOTILLA_TOOLBOX_SHA256", sha256)
        .env("FLOTILLA_JOB_USER", TOOLBOX_USER)
        .env("FLOTILLA_TOOLBOX_BIN_DIR", out.join("bin"))
        .env("FLOTILLA_PROFILE_D", out.join("profile.d")))
}

/// What the job user's login shell finds, reading the profile snippets as /etc/profile does.
fn toolbox_as_job_user(out: &Path) -> String {
    let script = format!(
        "for f in {dir}/profile.d/*.sh; do . \"$f\"; done; PATH={dir}/bin:$PATH; \
         for c in checkout cache artifact test-results retry; do \
         if t=$(type -t $c); then echo \"found $c $t\"; else echo \"missing $c\"; fi; done; \
         checkout; cache",
        dir = out.display()
    );
    let output = run(Command::new("runuser")
        .args(["-u", TOOLBOX_USER, "--", "bash", "-c", &script])
        .current_dir("/"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A wrong checksum fails the bake before anything is unpacked, and so does a tarball that lacks
/// a command; the right one lays the toolbox out, root's, where the job user's login shell finds
/// `checkout` (a function) and the commands (the positive control of the refusals above: the
/// same check, after the same script, sees them).
#[test]
fn install_toolbox_checks_the_checksum_and_lays_out_the_toolbox_for_the_job_user() {
    let home = toolbox_user_home();
    let _ = fs::remove_dir_all(home.join(".toolbox"));
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("out");
    fs::create_dir_all(out.join("bin")).unwrap();
    let (good, sha) = toolbox::tarball(dir.path(), "good", "");
    let (lacking, lacking_sha) = toolbox::tarball(dir.path(), "lacking", "cache");

    let wrong = if sha.starts_with('0') { "1" } else { "0" }.repeat(64);
    let refused = install_toolbox(&good, &wrong, &out);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("refusing it"), "{}", text(&refused));
    let refused = install_toolbox(&lacking, &lacking_sha, &out);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("has no cache"),
        "{}",
        text(&refused)
    );
    assert!(
        !home.join(".toolbox").exists(),
        "a refused tarball left files"
    );
    assert!(toolbox_as_job_user(&out).contains("missing checkout"));

    let installed = install_toolbox(&good, &sha, &out);
    assert!(installed.status.success(), "{}", text(&installed));
    let found = toolbox_as_job_user(&out);
    for line in [
        "found checkout function",
        "found cache file",
        "found artifact file",
        "found test-results file",
        "found retry file",
        "checkout-stand-in",
        "cache-stand-in",
    ] {
        assert!(found.contains(line), "{line} not in:\n{found}");
    }
    let meta = fs::metadata(home.join(".toolbox/libcheckout")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "the toolbox is root's"
    );
    assert_eq!(
        meta.permissions().mode() & 0o022,
        0,
        "nobody else may change it"
    );
    fs::remove_dir_all(home.join(".toolbox")).unwrap();
}

// ---------------------------------------------------------------------------------------------
// the shared fake instance metadata service (IMDSv2 only), in this suite's region

const REGION: &str = "eu-west-1";

/// The fake IMDS answering with `state`'s user data, lifecycle state and token refusal.
fn start_imds(state: ImdsState) -> FakeImds {
    let imds = FakeImds::start("i-0123456789abcdef0");
    {
        let mut shared = imds.state.lock().unwrap();
        shared.user_data = state.user_data;
        shared.lifecycle_state = state.lifecycle_state;
        shared.refuse_tokens = state.refuse_tokens;
        shared.region = REGION.into();
    }
    imds
}

fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    endpoint
}

// ---------------------------------------------------------------------------------------------
// flotilla-boot

struct Boot {
    dir: tempfile::TempDir,
}

impl Boot {
    fn new() -> Boot {
        require_tool("curl", "apt-get install -y curl");
        let dir = tempfile::tempdir().unwrap();
        // A stand-in amazon-cloudwatch-agent-ctl that records its arguments.
        write_executable(
            &dir.path().join("cwctl"),
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
                dir.path().join("cwctl.args").display()
            ),
        );
        Boot { dir }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn cloudwatch_config(&self) -> PathBuf {
        self.dir.path().join("etc/cloudwatch-agent.json")
    }

    fn run(&self, endpoint: &str) -> Output {
        let group = String::from_utf8(run(Command::new("id").arg("-gn")).stdout).unwrap();
        run(Command::new(ami().join("scripts/flotilla-boot"))
            .env("FLOTILLA_IMDS_ENDPOINT", endpoint)
            .env("FLOTILLA_IMDS_RETRIES", "0")
            .env("FLOTILLA_RUN_DIR", self.run_dir())
            .env("FLOTILLA_RUN_DIR_GROUP", group.trim())
            .env(
                "FLOTILLA_CLOUDWATCH_TEMPLATE",
                ami().join("cloudwatch-agent.json"),
            )
            .env("FLOTILLA_CLOUDWATCH_CONFIG", self.cloudwatch_config())
            .env("FLOTILLA_CLOUDWATCH_CTL", self.dir.path().join("cwctl")))
    }

    fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.run_dir().join(name)).ok()
    }
}

fn boot_with_user_data(user_data: &[u8]) -> (Boot, FakeImds, Output) {
    let imds = start_imds(ImdsState {
        user_data: Some(user_data.to_vec()),
        ..Default::default()
    });
    let boot = Boot::new();
    let output = boot.run(&imds.address);
    (boot, imds, output)
}

#[test]
fn flotilla_boot_writes_the_agent_env_and_renders_log_shipping() {
    for user_data in [
        &b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/gpu-fleet/agent-config"[..],
        &b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/gpu-fleet/agent-config\n"[..],
    ] {
        let (boot, imds, output) = boot_with_user_data(user_data);
        assert!(output.status.success(), "{}", text(&output));
        assert_eq!(
            boot.read("agent.env").as_deref(),
            Some("SEMAPHORE_AGENT_CONFIG_SSM_PARAMETER=/flotilla/gpu-fleet/agent-config\nAWS_REGION=eu-west-1\n")
        );
        assert_eq!(boot.read("scaler.env"), None);
        let mode = fs::metadata(boot.run_dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1775, "run dir: group-writable, sticky");

        // Only IMDSv2: one token, and every other request carried it.
        let requests = imds.requests();
        assert_eq!(
            requests[0],
            ("PUT".into(), "/latest/api/token".into(), false)
        );
        assert!(
            requests[1..]
                .iter()
                .all(|(m, _, token)| m == "GET" && *token),
            "{requests:?}"
        );
        assert!(requests.iter().any(|(_, p, _)| p == "/latest/user-data"));

        // CloudWatch: log groups P/agent, P/scaler, P/system with P = /flotilla/gpu-fleet.
        let config = fs::read_to_string(boot.cloudwatch_config()).unwrap();
        assert!(!config.contains('@'), "template placeholder left: {config}");
        let json: serde_json::Value = serde_json::from_str(&config).unwrap();
        let groups: Vec<&str> = json["logs"]["logs_collected"]["files"]["collect_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["log_group_name"].as_str().unwrap())
            .collect();
        for group in ["agent", "scaler", "system"] {
            assert!(
                groups.contains(&format!("/flotilla/gpu-fleet/{group}").as_str()),
                "{groups:?}"
            );
        }
        assert!(
            groups.iter().all(|g| g.starts_with("/flotilla/gpu-fleet/")),
            "{groups:?}"
        );
        // The scaler's EMF lines are shipped as they are written (no syslog prefix), to P/scaler.
        let emf = json["logs"]["logs_collected"]["files"]["collect_list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["file_path"] == "/var/log/flotilla-scaler/metrics.log")
            .expect("the scaler's EMF file is shipped");
        assert_eq!(emf["log_group_name"], "/flotilla/gpu-fleet/scaler");
        let args = fs::read_to_string(boot.dir.path().join("cwctl.args")).unwrap();
        assert_eq!(
            args,
            format!(
                "-a\nfetch-config\n-m\nec2\n-s\n-c\nfile:{}\n",
                boot.cloudwatch_config().display()
            )
        );
    }
}

#[test]
fn flotilla_boot_writes_the_scaler_env_and_drops_a_stale_agent_env() {
    let imds = start_imds(ImdsState {
        user_data: Some(b"FLOTILLA_SCALER_CONFIG_PARAMETER=/flotilla/S/scaler-config".to_vec()),
        ..Default::default()
    });
    let boot = Boot::new();
    fs::create_dir_all(boot.run_dir()).unwrap();
    fs::write(boot.run_dir().join("agent.env"), "stale").unwrap();
    let output = boot.run(&imds.address);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        boot.read("scaler.env").as_deref(),
        Some("FLOTILLA_CONFIG_SSM_PARAMETER=/flotilla/S/scaler-config\nAWS_REGION=eu-west-1\n")
    );
    assert_eq!(
        boot.read("agent.env"),
        None,
        "the agent unit must not start on the scaler"
    );
    let config = fs::read_to_string(boot.cloudwatch_config()).unwrap();
    assert!(config.contains("\"/flotilla/S/scaler\""), "{config}");
}

#[test]
fn flotilla_boot_writes_the_hub_config_env_and_drops_the_other_roles_files() {
    let imds = start_imds(ImdsState {
        user_data: Some(b"FLOTILLA_HUB_CONFIG_PARAMETER=/flotilla/H/hub-config\n".to_vec()),
        ..Default::default()
    });
    let boot = Boot::new();
    fs::create_dir_all(boot.run_dir()).unwrap();
    for stale in ["agent.env", "scaler.env", "hub.env"] {
        fs::write(boot.run_dir().join(stale), "stale").unwrap();
    }
    let output = boot.run(&imds.address);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        boot.read("hub-config.env").as_deref(),
        Some("FLOTILLA_HUB_CONFIG_PARAMETER=/flotilla/H/hub-config\nAWS_REGION=eu-west-1\n")
    );
    // Only the hub unit starts (its secrets are fetched again by flotilla-hub-boot).
    for gone in ["agent.env", "scaler.env", "hub.env"] {
        assert_eq!(boot.read(gone), None, "{gone}");
    }
    let config = fs::read_to_string(boot.cloudwatch_config()).unwrap();
    assert!(config.contains("\"/flotilla/H/hub\""), "{config}");
}

#[test]
fn flotilla_boot_rejects_bad_user_data_without_echoing_it() {
    let secret = "s3cr3t-T0KEN-value";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            format!("FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/agent-config\nSEMAPHORE_AGENT_TOKEN={secret}\n").into_bytes(),
            "not a single line",
        ),
        (
            b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/agent-config\n\n".to_vec(),
            "not a single line",
        ),
        (format!("SEMAPHORE_AGENT_TOKEN={secret}").into_bytes(), "is not of the form"),
        (
            format!("FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/agent-config token={secret}").into_bytes(),
            "is not of the form",
        ),
        (b"FLOTILLA_AGENT_CONFIG_PARAMETER=flotilla/S/agent-config".to_vec(), "is not of the form"),
        (b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/agent config".to_vec(), "is not of the form"),
        (b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/$(reboot)".to_vec(), "is not of the form"),
        (b"FLOTILLA_AGENT_CONFIG_PARAMETER=".to_vec(), "is not of the form"),
        (b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla//agent-config".to_vec(), "invalid SSM parameter"),
        (b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/".to_vec(), "invalid SSM parameter"),
        (b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/../agent-config".to_vec(), "invalid SSM parameter"),
        (b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/agent-config\r\n".to_vec(), "is not of the form"),
        (b"#!/bin/bash\necho hi\n".to_vec(), "not a single line"),
        (
            b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/agent-config\nX".to_vec(),
            "not a single line",
        ),
        (
            b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/agent-config\0".to_vec(),
            "not a single line",
        ),
        (
            "FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S\u{e9}/agent-config".as_bytes().to_vec(),
            "is not of the form",
        ),
        (b"".to_vec(), "is not of the form"),
    ];
    for (user_data, expect) in cases {
        let (boot, _imds, output) = boot_with_user_data(&user_data);
        let shown = String::from_utf8_lossy(&user_data).to_string();
        assert!(
            !output.status.success(),
            "accepted {shown:?}:\n{}",
            text(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expect),
            "{shown:?}: expected {expect:?} in:\n{stderr}"
        );
        assert!(stderr.contains("ERROR"), "{stderr}");
        assert!(
            !stderr.contains(secret),
            "the user data was echoed: {stderr}"
        );
        assert_eq!(boot.read("agent.env"), None, "{shown:?}");
        assert_eq!(boot.read("scaler.env"), None, "{shown:?}");
    }
}

#[test]
fn flotilla_boot_fails_loudly_without_imdsv2() {
    // No user data at all (404).
    let imds = start_imds(ImdsState::default());
    let boot = Boot::new();
    let output = boot.run(&imds.address);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("could not read the user data"),
        "{}",
        text(&output)
    );

    // The token is refused: no fallback to IMDSv1.
    let imds = start_imds(ImdsState {
        user_data: Some(b"FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/S/agent-config".to_vec()),
        refuse_tokens: true,
        ..Default::default()
    });
    let output = boot.run(&imds.address);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("IMDSv2 token"), "{}", text(&output));
    assert_eq!(
        imds.requests().len(),
        1,
        "nothing after the refused token: {:?}",
        imds.requests()
    );
    assert_eq!(boot.read("agent.env"), None);

    // Nothing listening.
    let output = boot.run(&closed_endpoint());
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("IMDSv2 token"), "{}", text(&output));
}

// ---------------------------------------------------------------------------------------------
// flotilla-boot-deadline

struct Deadline {
    dir: tempfile::TempDir,
}

impl Deadline {
    /// A run dir with agent.env (the agent is meant to run) and a stand-in agent.
    fn new() -> Deadline {
        require_tool("curl", "apt-get install -y curl");
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("run")).unwrap();
        fs::write(
            dir.path().join("run/agent.env"),
            "SEMAPHORE_AGENT_CONFIG_SSM_PARAMETER=/flotilla/S/agent-config\nAWS_REGION=eu-west-1\n",
        )
        .unwrap();
        write_executable(
            &dir.path().join("agent"),
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
                dir.path().join("agent.args").display()
            ),
        );
        Deadline { dir }
    }

    fn run(&self, endpoint: &str) -> Output {
        run(Command::new(ami().join("scripts/flotilla-boot-deadline"))
            .env("FLOTILLA_IMDS_ENDPOINT", endpoint)
            .env("FLOTILLA_IMDS_RETRIES", "0")
            .env("FLOTILLA_RUN_DIR", self.dir.path().join("run"))
            .env("FLOTILLA_AGENT_BIN", self.dir.path().join("agent"))
            .env("FLOTILLA_BOOT_DEADLINE_SECONDS", "900"))
    }

    fn agent_args(&self) -> Option<String> {
        fs::read_to_string(self.dir.path().join("agent.args")).ok()
    }
}

fn imds_in_state(state: Option<&str>) -> FakeImds {
    start_imds(ImdsState {
        lifecycle_state: state.map(str::to_string),
        ..Default::default()
    })
}

const REMOVE: &str = "remove-instance\n--reason\nboot-deadline\n";

#[test]
fn boot_deadline_removes_an_instance_whose_agent_never_registered() {
    for state in [Some("InService"), None] {
        let deadline = Deadline::new();
        let imds = imds_in_state(state);
        let output = deadline.run(&imds.address);
        assert!(output.status.success(), "{state:?}: {}", text(&output));
        assert_eq!(deadline.agent_args().as_deref(), Some(REMOVE), "{state:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("has not registered"),
            "{}",
            text(&output)
        );
        assert!(imds
            .requests()
            .iter()
            .all(|(m, _, token)| m == "PUT" || *token));
    }
}

#[test]
fn boot_deadline_leaves_registered_warm_and_scaler_instances_alone() {
    // Registered.
    let deadline = Deadline::new();
    fs::write(deadline.dir.path().join("run/registered"), "").unwrap();
    let output = deadline.run(&imds_in_state(Some("InService")).address);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(deadline.agent_args(), None, "registered: agent called");

    // Warm pool: Warmed:Pending:Wait (and the other Warmed:* states).
    for state in ["Warmed:Pending:Wait", "Warmed:Running", "Warmed:Stopped"] {
        let deadline = Deadline::new();
        let output = deadline.run(&imds_in_state(Some(state)).address);
        assert!(output.status.success(), "{state}: {}", text(&output));
        assert_eq!(deadline.agent_args(), None, "{state}: agent called");
        // Just out of the warm pool: the deadline starts again.
        let output = deadline.run(&imds_in_state(Some("InService")).address);
        assert!(output.status.success(), "{}", text(&output));
        assert_eq!(
            deadline.agent_args(),
            None,
            "{state} then InService: agent called at once"
        );
        // ... and runs out like the first one.
        let output = run(Command::new(ami().join("scripts/flotilla-boot-deadline"))
            .env(
                "FLOTILLA_IMDS_ENDPOINT",
                &imds_in_state(Some("InService")).address,
            )
            .env("FLOTILLA_IMDS_RETRIES", "0")
            .env("FLOTILLA_RUN_DIR", deadline.dir.path().join("run"))
            .env("FLOTILLA_AGENT_BIN", deadline.dir.path().join("agent"))
            .env("FLOTILLA_BOOT_DEADLINE_SECONDS", "0"));
        assert!(output.status.success(), "{}", text(&output));
        assert_eq!(
            deadline.agent_args().as_deref(),
            Some(REMOVE),
            "{state}: deadline after the warm pool"
        );
    }

    // No agent.env: the agent is not meant to run (scaler instance, or the boot failed).
    let deadline = Deadline::new();
    fs::remove_file(deadline.dir.path().join("run/agent.env")).unwrap();
    let output = deadline.run(&closed_endpoint());
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(deadline.agent_args(), None, "no agent.env: agent called");
}

#[test]
fn boot_deadline_removes_nothing_while_imds_is_unreachable() {
    let deadline = Deadline::new();
    let output = deadline.run(&closed_endpoint());
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not removing"),
        "{}",
        text(&output)
    );
    assert_eq!(deadline.agent_args(), None);
}
