//! The docker-compose file of a container job, as a pure function (docs/protocol.md §8.1 "write
//! the compose file"): the job's containers, the agent's `--files` and the GPU plan in, the YAML
//! text (or why the job cannot run) out. No I/O here, so every rule has a table row in the tests.
//!
//! The shape is upstream's: version "2.0", one service per container in order, the first one
//! (`main`, where the commands run) linking to all the others and mounting the agent's `--files`.
//! Departures, each a fix that a well-formed job does not notice: the file is written by a YAML
//! serialiser (upstream pastes values into the text, so a value with `: ` or a newline breaks the
//! file), every `$` is written as `$$` (Compose would otherwise substitute the agent's own
//! environment into a value), and a container env var that is not valid base64 fails the job
//! instead of becoming an empty value. GPUs are Flotilla's: a container that gets GPUs carries a
//! Compose device reservation with the `gpu` capability and the GPU job variables.

use crate::gpu::Gpu;
use protocol::Container;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeSet;
use thiserror::Error;

/// The variable through which a container asks for GPUs (the NVIDIA container convention).
pub(crate) const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// `--container-gpus`: which GPUs the job's containers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerGpus {
    /// `main` gets every GPU; a machine without GPUs fails the job.
    All,
    /// `main` gets every GPU when the machine has any.
    #[default]
    Auto,
    /// No container gets GPUs; a container that asks for them fails the job.
    None,
}

impl ContainerGpus {
    /// Parses the option's value (`all`, `auto`, `none`).
    pub fn parse(text: &str) -> Option<ContainerGpus> {
        match text {
            "all" => Some(ContainerGpus::All),
            "" | "auto" => Some(ContainerGpus::Auto),
            "none" => Some(ContainerGpus::None),
            _ => None,
        }
    }
}

/// The GPUs one container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuGrant {
    None,
    All,
    /// Indices or UUIDs, as the container asked.
    Devices(Vec<String>),
}

/// Why a job's containers cannot be described: each message is the job log line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ComposeFileError {
    #[error("The job has no containers: a docker-compose job needs at least one.")]
    NoContainers,
    #[error("Container #{position} has no name.")]
    NoName { position: usize },
    #[error("Invalid container name '{0}': use letters, digits, '.', '_' and '-'.")]
    BadName(String),
    #[error("Two containers are named '{0}'.")]
    DuplicateName(String),
    #[error("Container '{0}' has no image.")]
    NoImage(String),
    #[error("Environment variable '{name}' of container '{container}' is not valid base64.")]
    BadEnvVar { container: String, name: String },
    #[error("Environment variable '{name}' of container '{container}' is not valid UTF-8.")]
    NotUtf8 { container: String, name: String },
    #[error(
        "Container '{container}' asks for GPUs ({asked}), but this machine has no NVIDIA GPU."
    )]
    NoGpus { container: String, asked: String },
    #[error("Container '{container}' asks for GPUs, but this agent gives none to containers (--container-gpus none).")]
    GpusOff { container: String },
    #[error("Container '{container}' asks for GPU '{device}', which this machine does not have (it has: {have}).")]
    UnknownGpu {
        container: String,
        device: String,
        have: String,
    },
}

/// A container's env vars decoded, in order (later entries win in Compose too).
pub(crate) fn decode_env(container: &Container) -> Result<Vec<(String, String)>, ComposeFileError> {
    container
        .env_vars
        .iter()
        .map(|var| {
            let bytes = var
                .decode_value()
                .map_err(|_| ComposeFileError::BadEnvVar {
                    container: container.name.clone(),
                    name: var.name.clone(),
                })?;
            let value = String::from_utf8(bytes).map_err(|_| ComposeFileError::NotUtf8 {
                container: container.name.clone(),
                name: var.name.clone(),
            })?;
            Ok((var.name.clone(), value))
        })
        .collect()
}

/// Checks names and images: non-empty, Compose-safe and unique.
pub fn validate(containers: &[Container]) -> Result<(), ComposeFileError> {
    if containers.is_empty() {
        return Err(ComposeFileError::NoContainers);
    }
    let mut seen = BTreeSet::new();
    for (position, container) in containers.iter().enumerate() {
        let name = &container.name;
        if name.is_empty() {
            return Err(ComposeFileError::NoName {
                position: position + 1,
            });
        }
        let safe = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !safe || name.starts_with(['.', '-']) {
            return Err(ComposeFileError::BadName(name.clone()));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(ComposeFileError::DuplicateName(name.clone()));
        }
        if container.image.trim().is_empty() {
            return Err(ComposeFileError::NoImage(name.clone()));
        }
    }
    Ok(())
}

/// What a container asked for through `NVIDIA_VISIBLE_DEVICES` in its env vars, if anything.
fn asked(env: &[(String, String)]) -> Option<GpuGrant> {
    let value = env
        .iter()
        .rev()
        .find(|(name, _)| name == VISIBLE_DEVICES)
        .map(|(_, value)| value.trim())?;
    match value {
        "" | "none" | "void" => None,
        "all" => Some(GpuGrant::All),
        list => Some(GpuGrant::Devices(
            list.split(',')
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty())
                .collect(),
        )),
    }
}

/// Which GPUs each container gets (same order as `envs`, `envs[0]` being `main`): `main` by the
/// agent's mode unless it asks itself, the others only when they ask.
pub(crate) fn plan_gpus(
    names: &[&str],
    envs: &[Vec<(String, String)>],
    mode: ContainerGpus,
    host: &[Gpu],
) -> Result<Vec<GpuGrant>, ComposeFileError> {
    let mut grants = Vec::with_capacity(envs.len());
    for (position, (name, env)) in names.iter().zip(envs).enumerate() {
        let explicit = asked(env);
        let wanted = match (&explicit, position, mode) {
            (Some(_), _, ContainerGpus::None) => {
                return Err(ComposeFileError::GpusOff {
                    container: name.to_string(),
                });
            }
            (Some(grant), _, _) => grant.clone(),
            (None, 0, ContainerGpus::All) => GpuGrant::All,
            (None, 0, ContainerGpus::Auto) if !host.is_empty() => GpuGrant::All,
            (None, _, _) => GpuGrant::None,
        };
        if wanted != GpuGrant::None && host.is_empty() {
            let asked = match explicit {
                Some(_) => format!("{VISIBLE_DEVICES} in its env vars"),
                None => "the agent runs with --container-gpus all".to_string(),
            };
            return Err(ComposeFileError::NoGpus {
                container: name.to_string(),
                asked,
            });
        }
        if let GpuGrant::Devices(devices) = &wanted {
            check_devices(name, devices, host)?;
        }
        grants.push(wanted);
    }
    Ok(grants)
}

fn check_devices(
    container: &str,
    devices: &[String],
    host: &[Gpu],
) -> Result<(), ComposeFileError> {
    for device in devices {
        let known = host.iter().any(|gpu| {
            gpu.index.to_string() == *device || (!gpu.uuid.is_empty() && gpu.uuid == *device)
        });
        if !known {
            let have: Vec<String> = host.iter().map(|gpu| gpu.index.to_string()).collect();
            return Err(ComposeFileError::UnknownGpu {
                container: container.to_string(),
                device: device.clone(),
                have: have.join(","),
            });
        }
    }
    Ok(())
}

/// The host GPUs a grant names.
pub fn granted<'a>(grant: &GpuGrant, host: &'a [Gpu]) -> Vec<&'a Gpu> {
    match grant {
        GpuGrant::None => Vec::new(),
        GpuGrant::All => host.iter().collect(),
        GpuGrant::Devices(devices) => host
            .iter()
            .filter(|gpu| {
                devices.iter().any(|d| {
                    *d == gpu.index.to_string() || (!gpu.uuid.is_empty() && *d == gpu.uuid)
                })
            })
            .collect(),
    }
}

/// Everything the compose file is made of.
#[derive(Debug, Clone)]
pub(crate) struct ComposeInput<'a> {
    pub containers: &'a [Container],
    /// The agent's `--files` that exist, `(host path, path in main)`.
    pub host_files: &'a [(String, String)],
    pub gpu_mode: ContainerGpus,
    pub host_gpus: &'a [Gpu],
    pub dialect: Dialect,
}

/// What the engine behind Compose understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Dialect {
    /// Docker: GPUs as a Compose device reservation (`driver: nvidia`, NVIDIA's runtime), the
    /// services as `links` of `main` (upstream's shape).
    #[default]
    Docker,
    /// A rootless Podman: GPUs as CDI device names (`nvidia.com/gpu=all`, `nvidia.com/gpu=0`, from
    /// the specs `nvidia-ctk cdi generate` writes); the services as `depends_on` of `main`
    /// (Podman's API refuses links; its network's DNS answers the services' names).
    Podman,
}

/// The compose file's text for `input`, or why the job cannot run.
pub(crate) fn compose_file(input: &ComposeInput<'_>) -> Result<String, ComposeFileError> {
    validate(input.containers)?;
    let envs = input
        .containers
        .iter()
        .map(decode_env)
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<&str> = input.containers.iter().map(|c| c.name.as_str()).collect();
    let grants = plan_gpus(&names, &envs, input.gpu_mode, input.host_gpus)?;
    let mut services = Mapping::new();
    for (position, container) in input.containers.iter().enumerate() {
        let mut env = envs[position].clone();
        let gpus: Vec<Gpu> = granted(&grants[position], input.host_gpus)
            .into_iter()
            .cloned()
            .collect();
        env.extend(crate::gpu::job_env(&gpus, &env));
        let mut service = service(container, &env, &grants[position], input.dialect);
        if position == 0 {
            add_main_extras(&mut service, &names[1..], input.host_files, input.dialect);
        }
        services.insert(container.name.clone().into(), Value::Mapping(service));
    }
    let mut file = Mapping::new();
    file.insert("version".into(), "2.0".into());
    file.insert("services".into(), Value::Mapping(services));
    // Serialising a mapping of strings cannot fail; an empty file would fail at `compose run`.
    Ok(serde_yaml::to_string(&file).unwrap_or_default())
}

/// Compose substitutes `$NAME` from its own environment: `$$` keeps a `$` literal.
fn literal(text: &str) -> Value {
    Value::String(text.replace('$', "$$"))
}

fn service(
    container: &Container,
    env: &[(String, String)],
    gpus: &GpuGrant,
    dialect: Dialect,
) -> Mapping {
    let mut service = Mapping::new();
    service.insert("image".into(), literal(&container.image));
    for (key, value) in [
        ("command", &container.command),
        ("user", &container.user),
        ("entrypoint", &container.entrypoint),
    ] {
        if !value.is_empty() {
            service.insert(key.into(), literal(value));
        }
    }
    if !env.is_empty() {
        let mut environment = Mapping::new();
        for (name, value) in env {
            environment.insert(name.clone().into(), literal(value));
        }
        service.insert("environment".into(), Value::Mapping(environment));
    }
    match dialect {
        Dialect::Docker => {
            if let Some(reservation) = gpu_reservation(gpus) {
                service.insert("deploy".into(), reservation);
            }
        }
        Dialect::Podman => {
            if let Some(devices) = cdi_devices(gpus) {
                service.insert("devices".into(), devices);
            }
        }
    }
    service
}

fn add_main_extras(
    service: &mut Mapping,
    others: &[&str],
    host_files: &[(String, String)],
    dialect: Dialect,
) {
    if !others.is_empty() {
        let links = others.iter().map(|name| Value::from(*name)).collect();
        let key = match dialect {
            Dialect::Docker => "links",
            Dialect::Podman => "depends_on",
        };
        service.insert(key.into(), Value::Sequence(links));
    }
    if !host_files.is_empty() {
        let volumes = host_files
            .iter()
            .map(|(host, destination)| literal(&format!("{host}:{destination}")))
            .collect();
        service.insert("volumes".into(), Value::Sequence(volumes));
    }
}

/// `devices: [nvidia.com/gpu=all]` or one CDI name per GPU index or UUID.
fn cdi_devices(gpus: &GpuGrant) -> Option<Value> {
    let names: Vec<Value> = match gpus {
        GpuGrant::None => return None,
        GpuGrant::All => vec!["nvidia.com/gpu=all".into()],
        GpuGrant::Devices(ids) => ids
            .iter()
            .map(|id| Value::from(format!("nvidia.com/gpu={id}")))
            .collect(),
    };
    Some(Value::Sequence(names))
}

/// `deploy.resources.reservations.devices: [{driver: nvidia, count|device_ids, capabilities: [gpu]}]`.
fn gpu_reservation(gpus: &GpuGrant) -> Option<Value> {
    let mut device = Mapping::new();
    device.insert("driver".into(), "nvidia".into());
    match gpus {
        GpuGrant::None => return None,
        GpuGrant::All => {
            device.insert("count".into(), "all".into());
        }
        GpuGrant::Devices(ids) => {
            let ids = ids.iter().map(|id| Value::from(id.as_str())).collect();
            device.insert("device_ids".into(), Value::Sequence(ids));
        }
    }
    device.insert(
        "capabilities".into(),
        Value::Sequence(vec![Value::from("gpu")]),
    );
    let nest = |key: &str, value: Value| {
        let mut map = Mapping::new();
        map.insert(key.into(), value);
        Value::Mapping(map)
    };
    let devices = Value::Sequence(vec![Value::Mapping(device)]);
    Some(nest(
        "resources",
        nest("reservations", nest("devices", devices)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::EnvVar;

    fn container(name: &str, image: &str, env: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            image: image.into(),
            env_vars: env.iter().map(|(n, v)| EnvVar::plain(*n, v)).collect(),
            ..Container::default()
        }
    }

    fn gpus(count: u32) -> Vec<Gpu> {
        (0..count)
            .map(|index| Gpu {
                index,
                name: "NVIDIA A10G".into(),
                uuid: format!("GPU-{index}"),
                memory_mib: 23028,
                driver: "550.54.15".into(),
            })
            .collect()
    }

    fn render(
        containers: &[Container],
        files: &[(String, String)],
        mode: ContainerGpus,
        host: &[Gpu],
    ) -> Result<String, ComposeFileError> {
        compose_file(&ComposeInput {
            containers,
            host_files: files,
            gpu_mode: mode,
            host_gpus: host,
            dialect: Dialect::Docker,
        })
    }

    #[test]
    fn upstreams_shape_main_first_linking_the_services() {
        let mut db = container("db", "postgres:9.6", &[("FOO", "BAR"), ("FAZ", "ZEZ")]);
        db.command = "postgres start".into();
        db.user = "postgres".into();
        db.entrypoint = "/docker-entrypoint-initdb.d/init-user-db.sh".into();
        let text = render(
            &[container("main", "ruby:2.6", &[]), db],
            &[],
            ContainerGpus::Auto,
            &[],
        )
        .unwrap();
        assert_eq!(
            text,
            "version: '2.0'\nservices:\n  main:\n    image: ruby:2.6\n    links:\n    - db\n  db:\n    image: postgres:9.6\n    command: postgres start\n    user: postgres\n    entrypoint: /docker-entrypoint-initdb.d/init-user-db.sh\n    environment:\n      FOO: BAR\n      FAZ: ZEZ\n"
        );
    }

    #[test]
    fn host_files_are_mounted_into_main_only_and_values_stay_literal() {
        let files = vec![("/tmp/a.txt".to_string(), "/etc/a.txt".to_string())];
        let main = container("main", "img", &[("D", "$PATH:/etc/a"), ("Q", "a: b\nc")]);
        let text = render(
            &[main, container("cache", "redis", &[])],
            &files,
            ContainerGpus::None,
            &gpus(1),
        )
        .unwrap();
        let value: Value = serde_yaml::from_str(&text).unwrap();
        let main = &value["services"]["main"];
        assert_eq!(main["volumes"][0], Value::from("/tmp/a.txt:/etc/a.txt"));
        assert_eq!(main["environment"]["D"], Value::from("$$PATH:/etc/a"));
        assert_eq!(main["environment"]["Q"], Value::from("a: b\nc"));
        assert!(value["services"]["cache"].get("volumes").is_none());
        assert!(main.get("deploy").is_none(), "none: no reservation");
    }

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per scenario, read top to bottom
    fn gpu_plan_table() {
        use ContainerGpus::*;
        let all = GpuGrant::All;
        let no = GpuGrant::None;
        let ask = |v: &str| vec![(VISIBLE_DEVICES.to_string(), v.to_string())];
        let plain: Vec<(String, String)> = Vec::new();
        // (mode, host GPUs, main env, service env) → grants or error kind
        type Env = Vec<(String, String)>;
        type Row = (
            ContainerGpus,
            u32,
            Env,
            Env,
            Result<Vec<GpuGrant>, &'static str>,
        );
        let table: Vec<Row> = vec![
            (
                Auto,
                2,
                plain.clone(),
                plain.clone(),
                Ok(vec![all.clone(), no.clone()]),
            ),
            (
                Auto,
                0,
                plain.clone(),
                plain.clone(),
                Ok(vec![no.clone(), no.clone()]),
            ),
            (
                All,
                2,
                plain.clone(),
                plain.clone(),
                Ok(vec![all.clone(), no.clone()]),
            ),
            (All, 0, plain.clone(), plain.clone(), Err("NoGpus")),
            (
                None,
                2,
                plain.clone(),
                plain.clone(),
                Ok(vec![no.clone(), no.clone()]),
            ),
            (None, 2, plain.clone(), ask("all"), Err("GpusOff")),
            (
                Auto,
                2,
                plain.clone(),
                ask("1"),
                Ok(vec![all.clone(), GpuGrant::Devices(vec!["1".into()])]),
            ),
            (
                Auto,
                2,
                ask("0"),
                ask("GPU-1"),
                Ok(vec![
                    GpuGrant::Devices(vec!["0".into()]),
                    GpuGrant::Devices(vec!["GPU-1".into()]),
                ]),
            ),
            (
                Auto,
                2,
                ask("none"),
                plain.clone(),
                Ok(vec![all.clone(), no.clone()]),
            ),
            (Auto, 0, plain.clone(), ask("all"), Err("NoGpus")),
            (Auto, 2, plain.clone(), ask("0,7"), Err("UnknownGpu")),
        ];
        for (row, (mode, host, main_env, service_env, expected)) in table.into_iter().enumerate() {
            let got = plan_gpus(
                &["main", "svc"],
                &[main_env, service_env],
                mode,
                &gpus(host),
            );
            match (got, expected) {
                (Ok(grants), Ok(expected)) => assert_eq!(grants, expected, "row {row}"),
                (Err(error), Err(kind)) => assert!(
                    format!("{error:?}").starts_with(kind),
                    "row {row}: {error:?}"
                ),
                (got, expected) => panic!("row {row}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn main_with_gpus_carries_the_reservation_and_the_job_variables() {
        let text = render(
            &[container("main", "cuda", &[])],
            &[],
            ContainerGpus::Auto,
            &gpus(2),
        )
        .unwrap();
        let value: Value = serde_yaml::from_str(&text).unwrap();
        let main = &value["services"]["main"];
        let device = &main["deploy"]["resources"]["reservations"]["devices"][0];
        assert_eq!(device["driver"], Value::from("nvidia"));
        assert_eq!(device["count"], Value::from("all"));
        assert_eq!(device["capabilities"][0], Value::from("gpu"));
        assert_eq!(main["environment"]["FLOTILLA_GPU_COUNT"], Value::from("2"));
        assert_eq!(
            main["environment"]["FLOTILLA_GPU_MODEL"],
            Value::from("NVIDIA A10G")
        );
        assert_eq!(main["environment"][VISIBLE_DEVICES], Value::from("0,1"));

        let asked = container("main", "cuda", &[(VISIBLE_DEVICES, "1")]);
        let text = render(&[asked], &[], ContainerGpus::Auto, &gpus(2)).unwrap();
        let value: Value = serde_yaml::from_str(&text).unwrap();
        let main = &value["services"]["main"];
        assert_eq!(
            main["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0],
            Value::from("1")
        );
        assert_eq!(main["environment"]["FLOTILLA_GPU_COUNT"], Value::from("1"));
        assert_eq!(main["environment"][VISIBLE_DEVICES], Value::from("1"));
    }

    #[test]
    fn a_rootless_engine_gets_cdi_device_names_and_depends_on() {
        let asked = container("main", "cuda", &[(VISIBLE_DEVICES, "1,GPU-0")]);
        let table = [
            (container("main", "cuda", &[]), vec!["nvidia.com/gpu=all"]),
            (asked, vec!["nvidia.com/gpu=1", "nvidia.com/gpu=GPU-0"]),
        ];
        for (main, expected) in table {
            let text = compose_file(&ComposeInput {
                containers: &[main, container("db", "postgres", &[])],
                host_files: &[],
                gpu_mode: ContainerGpus::Auto,
                host_gpus: &gpus(2),
                dialect: Dialect::Podman,
            })
            .unwrap();
            let value: Value = serde_yaml::from_str(&text).unwrap();
            let main = &value["services"]["main"];
            let expected: Vec<Value> = expected.into_iter().map(Value::from).collect();
            assert_eq!(main["devices"], Value::Sequence(expected), "{text}");
            assert_eq!(main.get("deploy"), None, "{text}");
            assert_eq!(value["services"]["db"].get("devices"), None, "{text}");
            assert_eq!(main.get("links"), None, "{text}");
            assert_eq!(main["depends_on"][0], Value::from("db"), "{text}");
        }
    }

    #[test]
    fn bad_input_is_named() {
        let table: Vec<(Vec<Container>, ComposeFileError)> = vec![
            (vec![], ComposeFileError::NoContainers),
            (
                vec![container("", "img", &[])],
                ComposeFileError::NoName { position: 1 },
            ),
            (
                vec![container("my main", "img", &[])],
                ComposeFileError::BadName("my main".into()),
            ),
            (
                vec![container("main", "img", &[]), container("Main", "img", &[])],
                ComposeFileError::DuplicateName("Main".into()),
            ),
            (
                vec![container("main", " ", &[])],
                ComposeFileError::NoImage("main".into()),
            ),
            (
                vec![Container {
                    env_vars: vec![EnvVar {
                        name: "X".into(),
                        value: "%%%".into(),
                    }],
                    ..container("main", "img", &[])
                }],
                ComposeFileError::BadEnvVar {
                    container: "main".into(),
                    name: "X".into(),
                },
            ),
        ];
        for (containers, expected) in table {
            assert_eq!(
                render(&containers, &[], ContainerGpus::Auto, &[]),
                Err(expected)
            );
        }
        assert_eq!(ContainerGpus::parse("all"), Some(ContainerGpus::All));
        assert_eq!(ContainerGpus::parse(""), Some(ContainerGpus::Auto));
        assert_eq!(ContainerGpus::parse("some"), Option::None);
    }
}
