//! The `agent` command: `start` (the self-hosted listener), `run <job file>` (run one job
//! locally and print its event log) and `version`.

use agent::cloud::aws::{Aws, AwsError};
use agent::cloud::imds::{Imds, ImdsError};
use agent::cloud::CloudError;
use agent::config::{self, Config, ConfigError, UploadJobLogs};
use agent::gpu_health::GateReport;
use agent::health::{self, FaultKind, Verdict};
use agent::job::{job_environment, run_job, JobControl, JobOptions};
use agent::joblog::JobLog;
use agent::listener::{resolve_name, Listener, Timings, VERSION};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use protocol::{JobRequest, JobResult, LogEvent};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::level_filters::LevelFilter;

#[derive(Parser)]
#[command(name = "agent", about = "Flotilla's one-job CI agent (Semaphore self-hosted agent protocol)", version = VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Register with the control plane and run the jobs it assigns (see `agent start --help`).
    #[command(disable_help_flag = true)]
    Start {
        /// Options as Semaphore's agent takes them: --endpoint, --token, --config-file, ...
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        options: Vec<String>,
    },
    /// Run one job from a JSON or YAML job request and print its event log.
    Run {
        /// The job request (docs/protocol.md §4.1), as .json or .yaml.
        file: PathBuf,
        /// How to print the event log.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Print the agent's version.
    Version,
    /// Run the GPU health gate the agent runs before it registers, print each check, and exit 1
    /// if it fails (an operator's check of a machine; `bench/gpu-check.sh` on a real GPU).
    GpuGate {
        /// What the machine must have, COUNT:MODEL (e.g. 4:A10G).
        #[arg(long, default_value = "")]
        expect_gpus: String,
        /// Expect what this EC2 instance type has (the image's table), unless --expect-gpus.
        #[arg(long, default_value = "")]
        instance_type: String,
        /// Skip DCGM's diagnostic even where dcgmi is installed.
        #[arg(long)]
        no_dcgm: bool,
        /// The kernel log read for fatal Xids since boot.
        #[arg(long, default_value = "/dev/kmsg")]
        kernel_log: PathBuf,
    },
    /// Remove this EC2 instance: terminate it in its Auto Scaling group with decrement, else
    /// without, else mark it unhealthy, else power it off (the units' OnFailure= and boot
    /// deadline).
    RemoveInstance {
        /// Why, for the log.
        #[arg(long, default_value = "requested")]
        reason: String,
        /// Instance metadata endpoint.
        #[arg(long, env = "FLOTILLA_IMDS_ENDPOINT", default_value = agent::cloud::imds::DEFAULT_ENDPOINT)]
        imds_endpoint: String,
        /// AWS region [default: AWS_REGION, else instance metadata].
        #[arg(long, default_value = "")]
        aws_region: String,
        /// Last resort when the group cannot remove the instance.
        #[arg(long, default_value = "poweroff")]
        poweroff_command: String,
    },
    /// Print the (decrypted) value of an SSM parameter: the instance's boot scripts read the
    /// stack's settings with the instance role this way (flotilla-seal: job-sudo, job-docker).
    GetParameter {
        name: String,
        /// AWS region [default: AWS_REGION, else the SDK's chain].
        #[arg(long, default_value = "")]
        aws_region: String,
        /// Printed when the parameter does not exist (without it, a missing parameter fails).
        #[arg(long)]
        default: Option<String>,
    },
    /// Check that this machine can run jobs: units, boot scripts, IMDSv2, with --engine-user the
    /// rootless container engine, with --toolbox-user Semaphore's toolbox, and with --gpu the
    /// NVIDIA driver and Docker's GPU runtime.
    /// Exits 1 if any check fails.
    SelfTest {
        /// Also check the NVIDIA driver and Docker's nvidia runtime.
        #[arg(long)]
        gpu: bool,
        /// With --gpu: run `nvidia-smi -L` in this image with `docker run --gpus all`.
        #[arg(long, default_value = "")]
        docker_image: String,
        #[arg(long, default_value = "/etc/systemd/system")]
        units_dir: PathBuf,
        #[arg(long, default_value = "/usr/local/lib/flotilla")]
        scripts_dir: PathBuf,
        /// Instance metadata endpoint ("" skips the check, e.g. off EC2).
        #[arg(long, env = "FLOTILLA_IMDS_ENDPOINT", default_value = agent::cloud::imds::DEFAULT_ENDPOINT)]
        imds_endpoint: String,
        /// Start and tear down the rootless container engine as this user (the job user), as a
        /// container job does.
        #[arg(long, default_value = "")]
        engine_user: String,
        /// Check that this user's login shell has Semaphore's toolbox (checkout, cache, artifact,
        /// test-results, retry), as a shell job sees it.
        #[arg(long, default_value = "")]
        toolbox_user: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON event per line, exactly as pushed to a log server.
    Json,
    /// Commands and their output as plain text.
    Text,
}

fn main() {
    let cli = Cli::parse();
    let (command, result) = match cli.command {
        Commands::Version => {
            println!("{VERSION}");
            ("version", Ok(0))
        }
        Commands::Start { options } => ("start", start(&options)),
        Commands::GpuGate {
            expect_gpus,
            instance_type,
            no_dcgm,
            kernel_log,
        } => (
            "gpu-gate",
            gpu_gate_command(&expect_gpus, &instance_type, !no_dcgm, &kernel_log),
        ),
        Commands::RemoveInstance {
            reason,
            imds_endpoint,
            aws_region,
            poweroff_command,
        } => (
            "remove-instance",
            remove_instance(&reason, &imds_endpoint, &aws_region, &poweroff_command),
        ),
        Commands::SelfTest {
            gpu,
            docker_image,
            units_dir,
            scripts_dir,
            imds_endpoint,
            engine_user,
            toolbox_user,
        } => {
            let options = agent::selftest::SelfTestOptions {
                units_dir,
                scripts_dir,
                imds_endpoint,
                gpu,
                docker_image,
                engine_user,
                toolbox_user,
            };
            ("self-test", Ok(self_test(&options)))
        }
        Commands::Run { file, format } => ("run", run(&file, format)),
        Commands::GetParameter {
            name,
            aws_region,
            default,
        } => (
            "get-parameter",
            get_parameter(&name, &aws_region, default.as_deref()),
        ),
    };
    let code = result.unwrap_or_else(|error| {
        // Once the agent's log is up (`start`), failures go there, in upstream's words.
        match error.downcast_ref::<StartError>() {
            Some(error) if tracing::dispatcher::has_been_set() => tracing::error!("{error}"),
            Some(error) => eprintln!("{error}"),
            None => eprintln!("agent {command}: {error:#}"),
        }
        1
    });
    std::process::exit(code);
}

fn get_parameter(name: &str, region: &str, default: Option<&str>) -> Result<i32> {
    let aws = agent::cloud::aws::Aws::load(region)?;
    let value = match (aws.ssm_parameter(name), default) {
        (Ok(value), _) => value,
        (Err(agent::cloud::aws::AwsError::NoSuchParameter { .. }), Some(default)) => {
            default.to_string()
        }
        (Err(error), _) => return Err(error.into()),
    };
    println!("{value}");
    Ok(0)
}

fn self_test(options: &agent::selftest::SelfTestOptions) -> i32 {
    let checks = agent::selftest::run_checks(options);
    print!("{}", agent::selftest::render(&checks));
    if checks.iter().all(|c| c.ok) {
        println!("self-test passed");
        0
    } else {
        println!("self-test FAILED");
        1
    }
}

fn remove_instance(reason: &str, imds_endpoint: &str, region: &str, poweroff: &str) -> Result<i32> {
    let instance_id = Imds::new(imds_endpoint)
        .instance_id()
        .context("cannot read the instance id")?;
    let aws = Aws::load(region)?;
    println!("removing instance {instance_id} ({reason})");
    // A kept debug instance (Standby) was decremented when it was kept: not a second time.
    let in_standby = aws.in_standby(&instance_id);
    let (steps, leaving) = aws.remove_instance(&instance_id, poweroff, in_standby);
    for step in steps {
        println!("  {step}");
    }
    if !leaving {
        anyhow::bail!("every way of removing {instance_id} failed");
    }
    Ok(0)
}

fn start_help() -> String {
    let mut text = String::from("Usage: agent start [--option value | --option=value]...\n\nOptions (also SEMAPHORE_AGENT_<OPTION> env vars and keys of --config-file YAML):\n");
    for (name, kind) in config::OPTIONS {
        let kind = match kind {
            config::Kind::Text => "string",
            config::Kind::Flag => "bool",
            config::Kind::Int => "int",
            config::Kind::List => "list",
        };
        text.push_str(&format!("  --{name} <{kind}>\n"));
    }
    text
}

/// Why `agent start` gave up before serving, in upstream's words (printed once by `main`).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("Invalid SEMAPHORE_AGENT_LOG_LEVEL '{0}'. Exiting...")]
    LogLevel(String),
    #[error("Error opening the agent log {path}: {error}. Exiting...")]
    LogFile { path: String, error: std::io::Error },
    #[error("{0}")]
    Config(ConfigError),
    #[error("{0}. Exiting...")]
    Aws(AwsError),
    #[error("Could not read the registration token: {0}. Exiting...")]
    Token(AwsError),
    #[error("Could not read the instance's lifecycle state: {0}. Exiting...")]
    Lifecycle(CloudError),
    #[error("Could not read the instance id: {0}. Exiting...")]
    InstanceId(ImdsError),
}

/// `agent start`: registers and serves until a shutdown; the exit code is the listener's.
fn start(options: &[String]) -> Result<i32> {
    if options.iter().any(|o| o == "--help" || o == "-h") {
        print!("{}", start_help());
        return Ok(0);
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    init_agent_log(&env)?;
    let machine = prepare(options, &env)?;
    let gpus = agent::gpu::detect();
    tracing::info!("{}", agent::gpu::describe(&gpus));
    let gate = gpu_gate(&machine.config, machine.ec2.as_ref(), !gpus.is_empty());
    if let Some(report) = &gate {
        match health::verdict(machine.config.gpu_health.gate, report) {
            Verdict::Register => {}
            Verdict::RegisterDespiteFailure => tracing::warn!(
                "The GPU health gate failed ({}); registering anyway (gpu-gate: warn)",
                report.failures()
            ),
            Verdict::Leave => {
                tracing::error!(
                    "The GPU health gate failed: {}. This machine does not register.",
                    report.failures()
                );
                let fault = (FaultKind::Gate, report.failures());
                return Ok(machine.leave(Some(fault), None).max(1));
            }
        }
    }
    serve(&machine, gpus, gate)
}

/// What `agent start` knows before its GPUs are looked at: its configuration (with the token read
/// from SSM where it lives there), the AWS client it needs, its EC2 instance, its name.
struct Machine {
    config: Config,
    aws: Option<Aws>,
    ec2: Option<Ec2>,
    name: String,
}

fn prepare(options: &[String], env: &BTreeMap<String, String>) -> Result<Machine> {
    let mut config = load_config(options, env)?;
    let needs_aws = !config.token_ssm_parameter.is_empty()
        || (config.ec2 && !config.ec2_keep_instance)
        || !config.job_role.role_arn.is_empty();
    let aws = match needs_aws {
        true => Some(Aws::load(&config.aws_region).map_err(StartError::Aws)?),
        false => None,
    };
    if let (Some(aws), false) = (&aws, config.token_ssm_parameter.is_empty()) {
        config.token = aws
            .ssm_parameter(&config.token_ssm_parameter)
            .map_err(StartError::Token)?;
    }
    let ec2 = match config.ec2 {
        true => Some(Ec2::join(&config)?),
        false => None,
    };
    let name = match &ec2 {
        Some(ec2) if config.name.is_empty() && config.name_from_env.is_empty() => {
            ec2.instance_id.clone()
        }
        _ => resolve_name(&config, env),
    };
    Ok(Machine {
        config,
        aws,
        ec2,
        name,
    })
}

/// Registers and serves until a shutdown (spot notices and GPU faults interrupt it), then the
/// instance leaves; the exit code is the listener's, or non-zero when nothing removed it.
fn serve(machine: &Machine, gpus: Vec<agent::gpu::Gpu>, gate: Option<GateReport>) -> Result<i32> {
    let config = machine.config.clone();
    let mut job_options = job_options(&config, &gpus)?;
    if let Some(aws) = machine
        .aws
        .as_ref()
        .filter(|_| !config.job_role.role_arn.is_empty())
    {
        job_options.job_role = Some(start_job_role(&config, aws)?);
    }
    let kernel_log = PathBuf::from(&config.gpu_health.kernel_log);
    let mut listener = Listener::new(config, job_options, Timings::default()).with_gpus(gpus);
    if let Some(report) = &gate {
        listener = listener.with_gpu_gate(health::to_wire(report));
    }
    if let Some(ec2) = &machine.ec2 {
        if let Some(identity) = ec2.identity.clone() {
            listener = listener.with_instance_identity(identity);
        }
        let interrupter = listener.interrupter();
        let watcher = agent::cloud::watch_spot_notices(Imds::new(&ec2.endpoint), ec2.poll, {
            move |_| interrupter.interrupt()
        });
        if let Err(error) = watcher {
            tracing::error!("Could not watch for spot interruption notices: {error}");
        }
    }
    let fault = Arc::new(Mutex::new(None));
    if gate.is_some() {
        watch_gpu_faults(&kernel_log, &machine.name, &listener, fault.clone());
    }
    let last_job = listener.last_job();
    let code = listener.run(machine.name.clone());
    let fault = fault
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .map(|reason| (FaultKind::Xid, reason));
    let kept = fault.is_none().then(|| last_job.get()).flatten();
    Ok(code.max(machine.leave(fault, kept)))
}

/// `agent gpu-gate`: the gate as `agent start` runs it, its checks on stdout, exit 1 on a failure.
fn gpu_gate_command(
    expect_gpus: &str,
    instance_type: &str,
    dcgm: bool,
    kernel_log: &Path,
) -> Result<i32> {
    let mut options = vec!["--endpoint=gate".to_string(), "--token=gate".to_string()];
    if !expect_gpus.is_empty() {
        options.push(format!("--expect-gpus={expect_gpus}"));
    }
    let gate = config::load(&options, &BTreeMap::new(), &|_| Ok(String::new()))?.gpu_health;
    let expected = gate
        .expect
        .or_else(|| agent::gpu_health::expected_for(instance_type));
    let report = agent::gpu_health::run(expected, dcgm, kernel_log);
    println!("{}", report.describe());
    match report.passed() {
        true => Ok(0),
        false => {
            println!("FAILED: {}", report.failures());
            Ok(1)
        }
    }
}

/// The GPU health gate, where it applies (GPUs found, or expected of this instance type or by
/// `expect-gpus`); its checks go to the agent log.
fn gpu_gate(config: &Config, ec2: Option<&Ec2>, gpus_found: bool) -> Option<GateReport> {
    let instance_type = ec2.and_then(|ec2| ec2.instance_type.as_deref());
    let expected = health::gate_plan(&config.gpu_health, instance_type, gpus_found)?;
    let started = std::time::Instant::now();
    let options = &config.gpu_health;
    let report = agent::gpu_health::run(expected, options.dcgm, Path::new(&options.kernel_log));
    for line in report.describe().lines() {
        tracing::info!("GPU health gate: {line}");
    }
    tracing::info!(
        "GPU health gate: {} in {:.1} s",
        if report.passed() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Some(report)
}

/// Watches the kernel log for fatal GPU Xids while the agent serves: the first stops the job
/// (the listener reports it as a fault) and is kept in `fault` for the instance's tag.
fn watch_gpu_faults(
    kernel_log: &Path,
    name: &str,
    listener: &Listener,
    fault: Arc<Mutex<Option<String>>>,
) {
    let interrupter = listener.interrupter();
    let name = name.to_string();
    let watched = agent::xid::watch(kernel_log.to_path_buf(), move |event| {
        let reason = health::fault_reason(&name, &event);
        tracing::error!("{reason}");
        fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| reason.clone());
        interrupter.fault(reason);
    });
    match watched {
        Ok(_) => tracing::info!("Watching {} for GPU faults (Xid)", kernel_log.display()),
        Err(error) => tracing::error!(
            "Could not watch {} for GPU faults: {error}",
            kernel_log.display()
        ),
    }
}

impl Machine {
    /// On EC2 (unless told to keep it), the instance goes: a faulty one first tags itself with the
    /// fault (what the scaler counts against its pool), a failed job's may wait in Standby for
    /// debugging (`last_job`), then it is removed. Returns a non-zero code when nothing removed it
    /// (the unit's OnFailure= removal then runs, as root, with retries); 0 otherwise.
    fn leave(&self, fault: Option<(FaultKind, String)>, last_job: Option<JobResult>) -> i32 {
        let config = &self.config;
        let remove_instance = config.ec2 && !config.ec2_keep_instance;
        let (Some(aws), Some(ec2), true) = (&self.aws, &self.ec2, remove_instance) else {
            return 0;
        };
        if let Some((kind, detail)) = fault {
            let value = health::fault_tag_value(agent::shell::unix_now(), kind, &detail);
            match aws.tag_instance(&ec2.instance_id, health::FAULT_TAG, &value) {
                Ok(()) => {
                    tracing::info!("Tagged {} {}={value}", ec2.instance_id, health::FAULT_TAG)
                }
                Err(error) => {
                    tracing::error!("Could not record the fault on the instance: {error}")
                }
            }
        }
        // Logs are flushed: the job's teardown delivered them before the last sync.
        let keep_minutes = config.keep_failed_instance_minutes;
        let kept = agent::cloud::keep_failed_for(keep_minutes, last_job, remove_instance)
            .is_some_and(|keep| keep_for_debugging(aws, &ec2.instance_id, keep));
        let poweroff = &config.ec2_poweroff_command;
        let (steps, leaving) = aws.remove_instance(&ec2.instance_id, poweroff, kept);
        for step in steps {
            tracing::info!("Instance removal: {step}");
        }
        if leaving {
            return 0;
        }
        tracing::error!(
            "every way of removing {} failed: exiting non-zero",
            ec2.instance_id
        );
        1
    }
}

/// Debug jobs: keeps this instance, in Standby, for `keep` (or until the agent is told to stop)
/// so that someone can connect with Session Manager and run `sudo flotilla-debug-job`. Returns
/// whether it was kept (in Standby, to be terminated without a second decrement).
fn keep_for_debugging(aws: &Aws, instance_id: &str, keep: std::time::Duration) -> bool {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(error) = signal_hook::flag::register(signal, stop.clone()) {
            tracing::error!("Not keeping the instance: cannot watch for signals: {error}");
            return false;
        }
    }
    match aws.enter_standby(instance_id) {
        Ok(group) => tracing::info!(
            "The job failed: keeping {instance_id} for {} minutes, in Standby in {group} (out of the queue and of scale-in). To debug it: connect with Session Manager and run 'sudo flotilla-debug-job' (a shell as the job user in the job's environment).",
            keep.as_secs() / 60
        ),
        Err(error) => {
            tracing::error!("Not keeping the failed job's instance: {error}");
            return false;
        }
    }
    let until = std::time::Instant::now() + keep;
    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    tracing::info!("Done keeping {instance_id} for debugging: removing it");
    true
}

/// The agent's own log, at `SEMAPHORE_AGENT_LOG_LEVEL`, to stdout and the log file.
fn init_agent_log(env: &BTreeMap<String, String>) -> Result<(), StartError> {
    let level = match env.get("SEMAPHORE_AGENT_LOG_LEVEL") {
        None => LevelFilter::INFO,
        Some(text) => {
            agent::logging::parse_level(text).ok_or_else(|| StartError::LogLevel(text.clone()))?
        }
    };
    let log_path = env
        .get("SEMAPHORE_AGENT_LOG_FILE_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("agent_log"));
    agent::logging::init("", Some(&log_path), true, level).map_err(|error| StartError::LogFile {
        path: log_path.display().to_string(),
        error,
    })
}

/// The validated configuration; warns about options this agent accepts but ignores.
fn load_config(options: &[String], env: &BTreeMap<String, String>) -> Result<Config, StartError> {
    // `ssm:<name>`: the config YAML from an SSM parameter (region from AWS_REGION or IMDS).
    let read_file = |path: &str| match path.strip_prefix("ssm:") {
        Some(name) => Aws::load("")
            .and_then(|aws| aws.ssm_parameter(name))
            .map_err(std::io::Error::other),
        None => std::fs::read_to_string(path),
    };
    let config = config::load(options, env, &read_file).map_err(StartError::Config)?;
    if config.upload_job_logs != UploadJobLogs::Never {
        tracing::warn!("upload-job-logs is accepted for compatibility, but this agent does not upload job logs as artifacts: logs are pushed only");
    }
    Ok(config)
}

/// This agent as an EC2 citizen (`--ec2`): in service, and its instance id.
struct Ec2 {
    endpoint: String,
    poll: Duration,
    instance_id: String,
    /// The signed instance identity, for a hub that binds registration to the instance.
    identity: Option<protocol::InstanceIdentity>,
    /// Its instance type, from the identity document (what the GPU gate expects of it).
    instance_type: Option<String>,
}

impl Ec2 {
    /// Waits while the instance is in a warm pool, then reads its id.
    fn join(config: &Config) -> Result<Ec2, StartError> {
        let endpoint = match config.imds_endpoint.as_str() {
            "" => agent::cloud::imds::DEFAULT_ENDPOINT,
            endpoint => endpoint,
        };
        let mut client = Imds::new(endpoint);
        let poll = Duration::from_secs(config.ec2_poll_seconds as u64);
        let a_week = Duration::from_secs(7 * 24 * 3600);
        agent::cloud::wait_until_in_service(&mut client, poll, a_week)
            .map_err(StartError::Lifecycle)?;
        let instance_id = client.instance_id().map_err(StartError::InstanceId)?;
        let identity = client
            .instance_identity()
            .inspect_err(|error| {
                tracing::warn!("Registering without an instance identity: {error}")
            })
            .ok();
        let instance_type = identity.as_ref().and_then(|identity| {
            let document: serde_json::Value = serde_json::from_str(&identity.document).ok()?;
            document["instanceType"].as_str().map(str::to_string)
        });
        Ok(Ec2 {
            endpoint: endpoint.to_string(),
            poll,
            instance_id,
            identity,
            instance_type,
        })
    }
}

/// What every job gets: the agent's hooks and env vars, and this machine's GPUs in its env.
/// A `job-user` that cannot be used is fatal: running the job as the agent instead would hand it
/// the agent's powers.
fn job_options(config: &Config, gpus: &[agent::gpu::Gpu]) -> Result<JobOptions> {
    let mut shell_env = job_environment(std::env::vars());
    agent::gpu::add_to_environment(&mut shell_env, gpus);
    let job_user = match config.job_user.as_str() {
        "" => None,
        name => {
            let mut user = agent::job_user::JobUser::lookup(name)?;
            user.no_new_privs = config.job_no_new_privileges;
            user.apply_to_environment(&mut shell_env);
            tracing::info!(
                "Jobs run as {} (uid {}{})",
                user.name,
                user.uid,
                if user.no_new_privs {
                    ", no new privileges"
                } else {
                    ""
                }
            );
            Some(user)
        }
    };
    Ok(JobOptions {
        agent_env_vars: config.env_vars.clone(),
        pre_job_hook_path: config.pre_job_hook_path.clone(),
        post_job_hook_path: config.post_job_hook_path.clone(),
        fail_on_pre_job_hook_error: config.fail_on_pre_job_hook_error,
        source_pre_job_hook: config.source_pre_job_hook,
        shell_env,
        scratch_root: std::env::temp_dir(),
        job_user,
        compose: agent::compose::ComposeOptions {
            files: config.files.clone(),
            fail_on_missing_files: config.fail_on_missing_files,
            gpus: config.container_gpus,
            host_gpus: gpus.to_vec(),
            engine: config.container_engine.clone(),
            pull_stall_timeout: (config.container_pull_stall_timeout > 0)
                .then(|| Duration::from_secs(config.container_pull_stall_timeout as u64)),
        },
        job_role: None,
        job_cgroups: match config.job_cgroups {
            Some(limits) => adopt_job_cgroups(limits)?,
            None => None,
        },
        keep_failed_scratch: config.ec2
            && !config.ec2_keep_instance
            && config.keep_failed_instance_minutes > 0,
    })
}

/// `job-cgroups`: the agent's delegated cgroup. On cgroup v1 (no per-job cgroups) jobs are still
/// stopped by a thread they cannot signal, without limits of their own; anything else wrong
/// (cgroup v2 without `Delegate=yes`) is fatal: the image asked for them.
fn adopt_job_cgroups(
    limits: agent::job_cgroup::Limits,
) -> Result<Option<agent::job_cgroup::JobCgroups>> {
    match agent::job_cgroup::JobCgroups::adopt(limits) {
        Ok(cgroups) => Ok(Some(cgroups)),
        Err(agent::job_cgroup::CgroupError::NotV2) => {
            tracing::warn!("job-cgroups: this machine has cgroup v1, so jobs get no cgroup (and no job-memory-max or job-pids-max) of their own; they are stopped from a thread they cannot signal");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// The job credential endpoint (`job-role-arn`); one that cannot start is fatal, since the jobs
/// this machine is for would fail without it.
fn start_job_role(config: &Config, aws: &Aws) -> Result<agent::job_role::JobRole> {
    let options = agent::job_role::JobRoleOptions {
        region: aws
            .sdk_config()
            .region()
            .map(|region| region.to_string())
            .unwrap_or_default(),
        ..config.job_role.clone()
    };
    Ok(agent::job_role::JobRole::start(options, aws.sdk_config())?)
}

/// Parses a job request: JSON when the file says so (or looks like it), YAML otherwise.
fn parse_job_file(path: &Path, text: &str) -> Result<JobRequest> {
    // '\u{7b}' is the opening brace of a JSON object.
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('\u{7b}');
    let request = if is_json {
        serde_json::from_str(text)
            .with_context(|| format!("{} is not a valid JSON job request", path.display()))?
    } else {
        serde_yaml::from_str(text)
            .with_context(|| format!("{} is not a valid YAML job request", path.display()))?
    };
    Ok(request)
}

fn run(path: &Path, format: Format) -> Result<i32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut request = parse_job_file(path, &text)?;
    if request.job_id.is_empty() {
        request.job_id = "local".to_string();
    }
    let _ = agent::logging::init("agent run", None, false, LevelFilter::WARN);
    let observer: agent::joblog::Observer = match format {
        Format::Json => Box::new(|event: &LogEvent| {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&event.to_line());
            let _ = stdout.flush();
        }),
        Format::Text => {
            let renderer = std::sync::Mutex::new(protocol::events::TextRenderer::default());
            Box::new(move |event: &LogEvent| {
                let text = renderer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .render(event);
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            })
        }
    };
    let scratch_root = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let job_log = JobLog::create(
        scratch_root.join(format!("job_log_{nanos}.json")),
        Some(observer),
    )
    .context("cannot create the job log file")?;
    let control = Arc::new(JobControl::new());
    let stopper = control.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot watch for signals")?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stopper.stop();
        }
    });
    let mut shell_env = job_environment(std::env::vars());
    let gpus = agent::gpu::detect();
    agent::gpu::add_to_environment(&mut shell_env, &gpus);
    let options = JobOptions {
        shell_env,
        scratch_root,
        compose: agent::compose::ComposeOptions {
            host_gpus: gpus,
            ..Default::default()
        },
        ..JobOptions::default()
    };
    let result = run_job(&request, &options, &job_log, &control);
    job_log.close();
    job_log.remove_file();
    Ok(if result == JobResult::Passed { 0 } else { 1 })
}
