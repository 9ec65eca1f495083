//! GPU inventory: which NVIDIA GPUs this machine has, from `nvidia-smi --query-gpu` (or, when the
//! tool is missing or fails, from `/proc/driver/nvidia/gpus/*/information`). The agent logs them at
//! start, exports them to every job (`FLOTILLA_GPU_COUNT`, `FLOTILLA_GPU_MODEL`, and
//! `NVIDIA_VISIBLE_DEVICES` unless already set) and, when asked, reports them at registration.

use crate::command::{run_with_timeout, CommandError};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub(crate) enum GpuError {
    #[error("unexpected nvidia-smi line '{0}'")]
    BadLine(String),
    #[error("bad GPU index in '{0}'")]
    BadIndex(String),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// Why a CDI spec gives the rootless engine no GPUs.
#[derive(Debug, Error)]
pub(crate) enum CdiError {
    #[error("the CDI spec is not YAML or JSON of the CDI format: {0}")]
    Malformed(#[from] serde_yaml::Error),
    #[error("the CDI spec is of kind '{0}', not nvidia.com/gpu")]
    WrongKind(String),
    #[error("the CDI spec has no device named 'all' (it has: {0})")]
    NoAll(String),
}

/// The part of a CDI spec (the Container Device Interface's file, written by `nvidia-ctk cdi
/// generate`) that says which device names a container may ask for.
#[derive(Debug, serde::Deserialize)]
struct CdiSpec {
    kind: String,
    #[serde(default)]
    devices: Vec<CdiDevice>,
}

#[derive(Debug, serde::Deserialize)]
struct CdiDevice {
    name: String,
}

/// The device names of an `nvidia.com/gpu` CDI spec, which must include `all` (what the rootless
/// engine's compose file asks for with `--container-gpus all|auto`, `agent/src/compose/file.rs`).
pub(crate) fn cdi_gpu_devices(spec: &str) -> Result<Vec<String>, CdiError> {
    let spec: CdiSpec = serde_yaml::from_str(spec)?;
    if spec.kind != "nvidia.com/gpu" {
        return Err(CdiError::WrongKind(spec.kind));
    }
    let names: Vec<String> = spec.devices.into_iter().map(|d| d.name).collect();
    match names.iter().any(|name| name == "all") {
        true => Ok(names),
        false => Err(CdiError::NoAll(names.join(", "))),
    }
}

/// The wire type the registration extension carries.
pub type Gpu = protocol::GpuInfo;

pub(crate) const QUERY: &str = "--query-gpu=index,name,uuid,memory.total,driver_version";

/// Parses `nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version
/// --format=csv,noheader,nounits` output.
pub(crate) fn parse_nvidia_smi(text: &str) -> Result<Vec<Gpu>, GpuError> {
    let mut gpus = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 5 {
            return Err(GpuError::BadLine(line.to_string()));
        }
        gpus.push(Gpu {
            index: fields[0]
                .parse()
                .map_err(|_| GpuError::BadIndex(line.to_string()))?,
            name: fields[1].to_string(),
            uuid: fields[2].to_string(),
            memory_mib: fields[3].parse().unwrap_or(0),
            driver: fields[4].to_string(),
        });
    }
    Ok(gpus)
}

/// Parses one `/proc/driver/nvidia/gpus/<bus>/information` file.
pub(crate) fn parse_proc_information(text: &str, index: u32, driver: &str) -> Option<Gpu> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim_start_matches(':').trim().to_string())
        })
    };
    Some(Gpu {
        index,
        name: value("Model")?,
        uuid: value("GPU UUID").unwrap_or_default(),
        memory_mib: 0,
        driver: driver.to_string(),
    })
}

fn from_nvidia_smi(program: &str) -> Result<Vec<Gpu>, GpuError> {
    // nvidia-smi can hang on a wedged driver: give it ten seconds.
    let args = [QUERY, "--format=csv,noheader,nounits"];
    let output = run_with_timeout(program, &args, Duration::from_secs(10))?;
    parse_nvidia_smi(&output)
}

fn from_proc(root: &Path) -> Vec<Gpu> {
    let driver = std::fs::read_to_string(root.join("version"))
        .ok()
        .and_then(|v| {
            v.split_whitespace()
                .skip_while(|w| *w != "Module")
                .nth(1)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(root.join("gpus")) else {
        return Vec::new();
    };
    let mut buses: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    buses.sort();
    buses
        .iter()
        .enumerate()
        .filter_map(|(index, bus)| {
            let text = std::fs::read_to_string(bus.join("information")).ok()?;
            parse_proc_information(&text, index as u32, &driver)
        })
        .collect()
}

/// The GPUs `nvidia-smi` (on PATH) reports, or why it could not tell (the self-test's driver check).
pub(crate) fn nvidia_smi() -> Result<Vec<Gpu>, GpuError> {
    from_nvidia_smi("nvidia-smi")
}

/// The GPUs of this machine (empty when there are none or nothing can tell).
pub fn detect() -> Vec<Gpu> {
    match from_nvidia_smi("nvidia-smi") {
        Ok(gpus) => gpus,
        Err(error) => {
            let gpus = from_proc(Path::new("/proc/driver/nvidia"));
            if !gpus.is_empty() {
                tracing::warn!("{error}; GPUs read from /proc/driver/nvidia instead");
            }
            gpus
        }
    }
}

/// One line for the agent log.
pub fn describe(gpus: &[Gpu]) -> String {
    match gpus.first() {
        None => "no NVIDIA GPUs found".to_string(),
        Some(first) => {
            let driver = if first.driver.is_empty() {
                String::new()
            } else {
                format!(", driver {}", first.driver)
            };
            let memory = if first.memory_mib > 0 {
                format!(" ({} MiB)", first.memory_mib)
            } else {
                String::new()
            };
            format!(
                "{} NVIDIA GPU(s): {}{memory}{driver}",
                gpus.len(),
                models(gpus)
            )
        }
    }
}

fn models(gpus: &[Gpu]) -> String {
    let mut names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
    names.dedup();
    names.join(" + ")
}

/// Variables every job gets; `NVIDIA_VISIBLE_DEVICES` only when the environment has none.
pub(crate) fn job_env(gpus: &[Gpu], environment: &[(String, String)]) -> Vec<(String, String)> {
    if gpus.is_empty() {
        return Vec::new();
    }
    let mut vars = vec![
        ("FLOTILLA_GPU_COUNT".to_string(), gpus.len().to_string()),
        ("FLOTILLA_GPU_MODEL".to_string(), models(gpus)),
    ];
    if !environment
        .iter()
        .any(|(name, _)| name == "NVIDIA_VISIBLE_DEVICES")
    {
        let indices: Vec<String> = gpus.iter().map(|g| g.index.to_string()).collect();
        vars.push(("NVIDIA_VISIBLE_DEVICES".to_string(), indices.join(",")));
    }
    vars
}

/// Adds the GPU variables to a shell environment (replacing older values of the same names).
pub fn add_to_environment(environment: &mut Vec<(String, String)>, gpus: &[Gpu]) {
    for (name, value) in job_env(gpus, environment) {
        environment.retain(|(existing, _)| *existing != name);
        environment.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cdi_specs_name_their_gpus_and_need_all() {
        let spec = "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits: {}\n- name: GPU-4b1e\n- name: all\ncontainerEdits:\n  env: [NVIDIA_VISIBLE_DEVICES=void]\n";
        assert_eq!(
            super::cdi_gpu_devices(spec).unwrap(),
            ["0", "GPU-4b1e", "all"]
        );
        let json = r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"all"}]}"#;
        assert_eq!(super::cdi_gpu_devices(json).unwrap(), ["all"]);
        let errors = [
            (
                "kind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n",
                "no device named 'all' (it has: 0)",
            ),
            (
                "kind: example.com/fpga\ndevices: []\n",
                "of kind 'example.com/fpga'",
            ),
            ("devices: []\n", "not YAML or JSON of the CDI format"),
            ("[", "not YAML or JSON of the CDI format"),
        ];
        for (text, words) in errors {
            let error = super::cdi_gpu_devices(text).unwrap_err().to_string();
            assert!(error.contains(words), "{text}: {error}");
        }
    }

    use super::*;

    const SMI: &str = "0, NVIDIA A10G, GPU-6a5a0c2b-1111-2222-3333-444455556666, 23028, 550.54.15\n1, NVIDIA A10G, GPU-7b6b1d3c-1111-2222-3333-444455556666, 23028, 550.54.15\n";

    #[test]
    fn nvidia_smi_csv() {
        let gpus = parse_nvidia_smi(SMI).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(
            gpus[1],
            Gpu {
                index: 1,
                name: "NVIDIA A10G".into(),
                uuid: "GPU-7b6b1d3c-1111-2222-3333-444455556666".into(),
                memory_mib: 23028,
                driver: "550.54.15".into()
            }
        );
        assert_eq!(
            describe(&gpus),
            "2 NVIDIA GPU(s): NVIDIA A10G (23028 MiB), driver 550.54.15"
        );
        assert!(parse_nvidia_smi("garbage").is_err());
        assert!(parse_nvidia_smi("").unwrap().is_empty());
    }

    #[test]
    fn proc_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let bus = dir.path().join("gpus/0000:00:1e.0");
        std::fs::create_dir_all(&bus).unwrap();
        std::fs::write(
            bus.join("information"),
            "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   44\nGPU UUID: \t GPU-abc\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("version"), "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.90.07  Fri May 31 09:35:42 UTC 2024\n").unwrap();
        let gpus = from_proc(dir.path());
        assert_eq!(
            gpus,
            vec![Gpu {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-abc".into(),
                memory_mib: 0,
                driver: "550.90.07".into()
            }]
        );
        assert!(from_proc(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn job_variables_respect_a_preset_visible_devices() {
        let gpus = parse_nvidia_smi(SMI).unwrap();
        let vars = job_env(&gpus, &[]);
        assert_eq!(
            vars,
            vec![
                ("FLOTILLA_GPU_COUNT".to_string(), "2".to_string()),
                ("FLOTILLA_GPU_MODEL".to_string(), "NVIDIA A10G".to_string()),
                ("NVIDIA_VISIBLE_DEVICES".to_string(), "0,1".to_string()),
            ]
        );
        let preset = vec![("NVIDIA_VISIBLE_DEVICES".to_string(), "1".to_string())];
        assert_eq!(job_env(&gpus, &preset).len(), 2);
        assert!(job_env(&[], &[]).is_empty());
    }
}
