//! The sealed instance, booted: the image's root file system is built the way the Packer template
//! provisions it (ami/scripts/configure.sh with the same scripts, units and agent binary) on the
//! shared Debian base (`.ci/base-image`), and booted under real systemd as PID 1 in a container.
//! The fake IMDS (reached at 169.254.169.254 through a NAT rule that only the test adds), moto and
//! the hub run on the host, on the container network's gateway.
//!
//! What is checked, end to end: `flotilla-boot` reads the user data, `flotilla-seal` installs the
//! metadata firewall, the agent unit starts, registers, runs one job as `flotilla-job` and the
//! instance removes itself with decrement; the unit's `OnFailure=` removes the instance when the
//! agent is killed; the boot deadline removes an instance whose agent never registered. Inside the
//! booted system, as the job: reading the token, the agent's environment and the instance role's
//! credentials, `sudo`, killing or stopping the agent, removing the job record, forging the agent's
//! log lines, and waiting for a second job all fail. A container job on the stack's default engine
//! (a rootless Podman of the job's own) runs its attacks from `main` and from a service container:
//! the metadata service over IPv4 and IPv6, a Docker of the machine's, the boot environment, the
//! job record and the agent's home through a container that mounts the machine's `/`; each has a
//! positive control (the network, the engine, the mount, the service's verdict, root's view), and
//! nothing of the engine is left after the job.
//!
//! Test-only pieces (never in the image Packer builds): the NAT rule to the fake IMDS, an
//! environment file with moto's address (AWS_ENDPOINT_URL) for every unit, a boot deadline
//! counted from the container's start (`OnStartupSec=`), since a container's boot time is the
//! host's; what a VM has and a container lacks: `/dev/net/tun`, and a file system of its own for
//! the engines' image store (overlay layers cannot live on the container's overlay root); and
//! Debian's `podman-docker` as the `docker` that Compose 1.29's `run` calls.

use testkit::moto;
use testkit::toolbox;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use testkit::imds::FakeImds;
use testkit::mock_hub::FakeHub;
use testkit::repo;
use testkit::runtime;

const AGENT_CONFIG: &str = "/flotilla/sealed/agent-config";
const TOKEN_PARAMETER: &str = "/flotilla/sealed/agent-token";
const TOKEN: &str = "registration-token-that-jobs-must-not-see";
/// The stack's job role and cache bucket, as the agent's configuration names them.
const JOB_ROLE: &str = "arn:aws:iam::123456789012:role/sealed-job";
const CACHE_BUCKET: &str = "sealed-cache";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker is required by the sealed-instance test (.ci/run checks it)")
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A private network, removed with everything on it when dropped.
struct Network {
    name: String,
    gateway: String,
    containers: Vec<String>,
}

impl Network {
    fn create(tag: &str) -> Network {
        let name = format!("flotilla-sealed-{tag}-{}", std::process::id());
        let _ = docker(&["network", "rm", &name]);
        docker_ok(&["network", "create", &name]);
        let gateway = docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &name,
        ]);
        Network {
            name,
            gateway,
            containers: Vec::new(),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = docker(&["rm", "-f", container]);
        }
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// What the AMI installs for container jobs' rootless engines (ami/scripts/install.sh), in
/// Debian's names (the AWS CLI for the job that uses its job credentials): Podman and its helpers, and Compose (the `docker` its `run` calls is Podman's
/// `podman-docker`, where the AMI has Docker's CLI).
const ENGINE_PACKAGES: &str =
    "podman uidmap slirp4netns docker-compose podman-docker awscli cron at";

/// The image: the base, the engine's packages (from Debian's registry: the build uses the
/// machine's network), configure.sh run over the staged files, and the test-only units.
fn build_image() -> String {
    let base = Command::new("bash")
        .arg(repo().join(".ci/base-image"))
        .output()
        .expect("run .ci/base-image");
    assert!(
        base.status.success(),
        "{}",
        String::from_utf8_lossy(&base.stderr)
    );
    let base = String::from_utf8_lossy(&base.stdout).trim().to_string();
    let context = tempfile::tempdir().unwrap();
    let staging = context.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_agent"), staging.join("agent")).unwrap();
    copy_dir(&repo().join("ami/scripts"), &staging.join("scripts"));
    copy_dir(&repo().join("ami/systemd"), &staging.join("systemd"));
    std::fs::copy(
        repo().join("ami/cloudwatch-agent.json"),
        staging.join("cloudwatch-agent.json"),
    )
    .unwrap();
    copy_dir(
        &repo().join("agent/tests/sealed"),
        &context.path().join("test"),
    );
    // Semaphore's toolbox, as the Packer build installs it (a stand-in release built here).
    let (toolbox, toolbox_sha256) = toolbox::tarball(context.path(), "toolbox", "");
    std::fs::rename(&toolbox, staging.join("toolbox.tar")).unwrap();
    std::fs::remove_dir_all(context.path().join("toolbox-tree")).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends {ENGINE_PACKAGES} >/dev/null && rm -rf /var/lib/apt/lists/*\n\
             COPY staging /tmp/flotilla\n\
             COPY test/ /etc/systemd/system/\n\
             RUN FLOTILLA_RSYSLOG_USER=root bash /tmp/flotilla/scripts/configure.sh \
             && FLOTILLA_TOOLBOX_TARBALL=/tmp/flotilla/toolbox.tar \
             FLOTILLA_TOOLBOX_SHA256={toolbox_sha256} bash /tmp/flotilla/scripts/install-toolbox.sh \
             && systemctl enable flotilla-test-imds.service && rm -rf /tmp/flotilla \
             && mkdir -p /var/log/journal\n"
        ),
    )
    .unwrap();
    // Tagged by the hash of everything that goes in, so the tests of one run share one image and
    // a later run with the same inputs reuses it.
    let tag = format!("flotilla-sealed-test:{:016x}", hash_dir(context.path()));
    docker_ok(&[
        "build",
        "--network",
        "host",
        "-q",
        "-t",
        &tag,
        &context.path().display().to_string(),
    ]);
    tag
}

fn hash_dir(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut paths = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        path.strip_prefix(dir).unwrap().hash(&mut hasher);
        std::fs::read(&path).unwrap().hash(&mut hasher);
    }
    hasher.finish()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// One booted instance: its own instance id in moto and in the fake IMDS.
struct Instance {
    name: String,
    id: String,
    _imds: FakeImds,
    _env_dir: tempfile::TempDir,
}

fn boot(
    image: &str,
    network: &mut Network,
    moto: &moto::MotoServer,
    instance_id: &str,
) -> Instance {
    let imds = FakeImds::start_on(instance_id, &network.gateway);
    imds.state.lock().unwrap().user_data =
        Some(format!("FLOTILLA_AGENT_CONFIG_PARAMETER={AGENT_CONFIG}\n").into_bytes());
    let imds_port = imds.address.rsplit(':').next().unwrap().to_string();
    let env_dir = tempfile::tempdir().unwrap();
    let env_file = env_dir.path().join("flotilla-test.env");
    std::fs::write(
        &env_file,
        format!(
            "FLOTILLA_TEST_IMDS={}:{imds_port}\nAWS_ENDPOINT_URL={}\nSEMAPHORE_AGENT_EC2_POLL_SECONDS=1\n\
             FLOTILLA_BOOT_DEADLINE_SECONDS=30\n",
            network.gateway, moto.url
        ),
    )
    .unwrap();
    let name = format!("{}-{instance_id}", network.name);
    let mount = format!("{}:/etc/flotilla-test.env:ro", env_file.display());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--hostname",
        instance_id,
        "--network",
        &network.name,
        "--cap-add",
        "ALL",
        "--cap-drop",
        "SYS_RESOURCE",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        // What a VM has and the job's rootless engine uses: slirp4netns opens the tun device.
        "--device",
        "/dev/net/tun",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "--tmpfs",
        "/tmp",
        // The engines' image store holds overlay layers, which the container's own overlay root
        // file system cannot (a VM's disk can): a file system of its own, flotilla-job's (uid 2001).
        "--tmpfs",
        "/var/lib/flotilla-images:uid=2001,gid=2001,mode=0755",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "-v",
        &mount,
        image,
        "/sbin/init",
    ]);
    network.containers.push(name.clone());
    Instance {
        name,
        id: instance_id.to_string(),
        _imds: imds,
        _env_dir: env_dir,
    }
}

impl Instance {
    /// Runs a shell command in the booted system as root (the test's own view).
    fn root(&self, script: &str) -> String {
        let output = docker(&["exec", &self.name, "bash", "-c", script]);
        String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr)
    }

    fn wait_for(&self, what: &str, timeout: Duration, script: &str, expected: &str) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.root(script);
            if last.trim() == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{what}: `{script}` gave {last:?}, not {expected:?}\n{}",
            self.journal()
        );
    }

    /// Waits up to two minutes for `condition` on the hub, showing what each job logged so far
    /// and the instance's journal if not.
    fn wait_for_hub(
        &self,
        hub: &FakeHub,
        what: &str,
        condition: impl Fn(&testkit::mock_hub::HubState) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !condition(&hub.state()) {
            if Instant::now() >= deadline {
                let jobs: Vec<String> = hub.state().jobs.keys().cloned().collect();
                let logs: Vec<String> = jobs
                    .iter()
                    .map(|job| format!("{job}:\n{}", hub.simplified_log(job).join("\n")))
                    .collect();
                panic!(
                    "timed out waiting for {what}\n{}\n{}",
                    logs.join("\n"),
                    self.journal()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The Flotilla units' journal; read from the stopped container's disk if it has stopped.
    fn journal(&self) -> String {
        let running = docker_ok(&["inspect", "-f", "{{.State.Running}}", &self.name]);
        if running != "true" {
            let copy = tempfile::tempdir().unwrap();
            let target = copy.path().join("journal");
            docker_ok(&[
                "cp",
                &format!("{}:/var/log/journal", self.name),
                &target.display().to_string(),
            ]);
            let output = Command::new("journalctl")
                .args(["--no-pager", "-o", "short-precise", "-D"])
                .arg(&target)
                .output()
                .expect("journalctl");
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            let tail: Vec<&str> = text.lines().rev().take(120).collect();
            return tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        }
        self.root("journalctl --no-pager -o short-precise -u flotilla-boot -u flotilla-seal -u flotilla-agent -u flotilla-remove-instance -u flotilla-boot-deadline | tail -n 80")
    }
}

/// The metadata rule was loaded from the image before the boot script read any user data
/// (flotilla-firewall.service, `flotilla-seal --early`), with systemd's dynamic users let through
/// until the full seal narrowed it.
fn early_firewall_came_first(instance: &Instance) {
    instance.wait_for(
        "flotilla-boot to have run",
        Duration::from_secs(120),
        "systemctl is-active flotilla-boot.service 2>/dev/null",
        "active",
    );
    let entered = instance.root(
        "systemctl show -p ActiveEnterTimestampMonotonic --value flotilla-firewall.service flotilla-boot.service",
    );
    let times: Vec<u64> = entered
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    assert!(
        times.len() == 2 && times[0] > 0 && times[0] < times[1],
        "firewall then boot: {entered}\n{}",
        instance.journal()
    );
    let early = instance.root("journalctl --no-pager -o cat -u flotilla-firewall");
    assert!(early.contains("(early rule)"), "{early}");
    // The full seal replaced the early rule: dynamic users no longer pass.
    let chain = instance.root("iptables -S FLOTILLA-IMDS");
    assert!(
        chain.contains("--uid-owner 0") && !chain.contains("61184"),
        "{chain}"
    );
}

/// moto with a group of `instances` and the stack's parameters; the hub's address in the config,
/// and `extra` (YAML lines) after the stack's own.
fn aws(
    runtime: &tokio::runtime::Runtime,
    moto: &moto::MotoServer,
    hub: &str,
    instances: u32,
    extra: &str,
) -> Vec<String> {
    moto.create_group(runtime, "sealed", 0, 4, instances as i32);
    let (_, ids, _) = moto.group(runtime, "sealed");
    moto.put_secret(runtime, TOKEN_PARAMETER, TOKEN);
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk(runtime));
    let config = format!(
        "endpoint: {hub}\nno-https: true\ntoken-ssm-parameter: {TOKEN_PARAMETER}\n\
         job-role-arn: {JOB_ROLE}\njob-role-stack: sealed\njob-role-agent-type: sealed\n\
         cache-bucket: {CACHE_BUCKET}\n{extra}"
    );
    make_bucket(moto, CACHE_BUCKET);
    runtime
        .block_on(
            ssm.put_parameter()
                .name(AGENT_CONFIG)
                .value(config)
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send(),
        )
        .unwrap();
    ids
}

/// Makes an S3 bucket in moto with the AWS CLI (`.ci/run` installs it, `FLOTILLA_AWS_CLI`).
fn make_bucket(moto: &moto::MotoServer, bucket: &str) {
    let cli = std::env::var("FLOTILLA_AWS_CLI").unwrap_or("/opt/flotilla-awscli/bin/aws".into());
    let made = Command::new(&cli)
        .args(["s3", "mb", &format!("s3://{bucket}")])
        .envs(moto.env())
        .output()
        .unwrap_or_else(|error| panic!("{cli} (pip install awscli; .ci/run does): {error}"));
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// The job's attacks: each prints `BLOCKED name` when it fails and `CROSSED name` when it works.
const ATTACKS: &[(&str, &str)] = &[
    ("agent-visible", "test -e /proc/$AGENT_PID"),
    ("agent-environment", "cat /proc/$AGENT_PID/environ"),
    ("agent-memory", "head -c 16 /proc/$AGENT_PID/mem"),
    ("imds-token", "curl -sf -m 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token"),
    ("imds-credentials", "curl -sf -m 3 http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
    ("sudo", "sudo -n true"),
    ("kill-agent", "kill -KILL $AGENT_PID"),
    ("stop-agent", "systemctl stop --no-ask-password flotilla-agent.service"),
    ("remove-job-record", "rm /var/lib/flotilla/job-taken"),
    ("read-boot-env", "cat /run/flotilla/agent.env"),
    ("read-agent-home", "ls /home/flotilla"),
    // The job credential endpoint: nothing without the job's token, no other role through it.
    ("credentials-without-token", "curl -sf -m 3 \"$AWS_CONTAINER_CREDENTIALS_FULL_URI\""),
    ("credentials-of-another-role", "curl -sf -m 3 -H \"Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN\" http://127.0.0.1:51680/v1/credentials/agent-role"),
    ("write-agent-log", "echo forged >> /var/log/flotilla/agent.log"),
    ("capabilities", "grep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/self/status | grep -v '0000000000000000$'"),
    // A setuid binary does not raise the job (no_new_privs): sudo then runs without euid 0 and
    // says so; any other answer (a password it asks for) means it ran as root.
    // Persistence: an entry that would run on a later boot of the used machine.
    ("crontab", "echo '@reboot touch /tmp/cron-ran' | crontab -"),
    ("at", "echo 'touch /tmp/at-ran' | at now + 10 minutes"),
    ("setuid-root", "out=$(sudo -n true 2>&1); case \"$out\" in *'no new privileges'*|*'effective uid is not 0'*) false;; *) true;; esac"),
];

fn attack_job() -> protocol::JobRequest {
    let mut commands = vec![
        protocol::Command::new("echo \"job runs as $(id -un)\""),
        // Semaphore's toolbox in the job's login shell, as a pipeline's first line needs it.
        protocol::Command::new("checkout && cache && echo \"checkout is a $(type -t checkout)\""),
        // The job role's credentials, from the agent's endpoint, with no settings changed: who
        // the job is, and an object of its project in the cache bucket written and read back.
        protocol::Command::new("aws --endpoint-url \"$AWS_ENDPOINT_URL\" sts get-caller-identity --query Arn --output text"),
        protocol::Command::new("echo cached-by-the-job > object && aws --endpoint-url \"$AWS_ENDPOINT_URL\" s3 cp --quiet object \"s3://$SEMAPHORE_CACHE_S3_BUCKET/proj-sealed/k\" && aws --endpoint-url \"$AWS_ENDPOINT_URL\" s3 cp \"s3://$SEMAPHORE_CACHE_S3_BUCKET/proj-sealed/k\" -"),
        protocol::Command::new("AGENT_PID=$(systemctl show -p MainPID --value flotilla-agent.service); echo \"agent pid $AGENT_PID\""),
        protocol::Command::new("logger -t flotilla-agent FORGED-BY-THE-JOB; logger -p authpriv.notice -t sudo FORGED-AUTH-LINE; true"),
    ];
    for (name, attack) in ATTACKS {
        commands.push(protocol::Command::new(format!(
            "if ( {attack} ) >/dev/null 2>&1; then echo 'CROSSED {name}'; else echo 'BLOCKED {name}'; fi"
        )));
    }
    protocol::JobRequest {
        job_id: "job-attacks".into(),
        commands,
        env_vars: vec![protocol::EnvVar::plain(
            "SEMAPHORE_PROJECT_ID",
            "proj-sealed",
        )],
        ..Default::default()
    }
}

#[test]
fn a_booted_instance_runs_one_job_as_the_job_user_which_cannot_cross_any_boundary_and_leaves() {
    let image = build_image();
    let mut network = Network::create("job");
    let runtime = runtime();
    let moto = moto::MotoServer::start_on(&network.gateway);
    let hub = FakeHub::start_on(&network.gateway);
    let ids = aws(&runtime, &moto, &hub.address, 1, "");
    hub.assign(attack_job(), "jwt");
    hub.assign(
        protocol::JobRequest {
            job_id: "second-job".into(),
            commands: vec![protocol::Command::new(
                "echo a second job on a used machine",
            )],
            ..Default::default()
        },
        "jwt",
    );
    let instance = boot(&image, &mut network, &moto, &ids[0]);
    early_firewall_came_first(&instance);

    wait_for_the_one_job(&instance, &hub, "job-attacks");
    let log = hub.simplified_log("job-attacks").join("\n");
    assert!(log.contains("job runs as flotilla-job"), "{log}");
    for line in [
        "checkout-stand-in",
        "cache-stand-in",
        "checkout is a function",
        "assumed-role/sealed-job/job-attacks",
        "cached-by-the-job",
    ] {
        assert!(log.contains(line), "{line} not in:\n{log}");
    }
    let self_test = instance.root(
        "/usr/local/bin/agent self-test --toolbox-user flotilla-job --imds-endpoint '' | grep toolbox",
    );
    assert!(
        self_test.contains("flotilla-job's login shell has checkout (function)"),
        "{self_test}"
    );
    every_attack_blocked(&log, ATTACKS);
    // The persistence rows could see a crossing: cron and at are there and root may use them.
    let scheduled = instance.root(
        "echo '@reboot true' | crontab - && crontab -l; echo true | at now + 10 minutes 2>&1; atq | wc -l",
    );
    assert!(
        scheduled.contains("@reboot true") && scheduled.trim_end().ends_with('1'),
        "{scheduled}"
    );

    // Root (and the agent) still reach the metadata service: the firewall is an owner match,
    // not a blanket block.
    // Containers are kept away too: DOCKER-USER (which Docker consults first) drops them.
    let docker_user = instance.root("iptables -S DOCKER-USER");
    assert!(
        docker_user.contains("--ctorigdst 169.254.169.254 -j DROP"),
        "{docker_user}"
    );
    // The agent's own sudo is its last resort and nothing else.
    let agent_sudo = instance.root(
        "runuser -u flotilla -- sudo -n -l /usr/bin/systemctl poweroff && echo poweroff-allowed; \
         runuser -u flotilla -- sudo -n -l /bin/bash || echo shell-refused",
    );
    assert!(agent_sudo.contains("poweroff-allowed"), "{agent_sudo}");
    assert!(agent_sudo.contains("shell-refused"), "{agent_sudo}");
    root_reaches_imds_and_the_one_job_machine_left(&instance, &hub, &moto, &runtime);
    // Logs: the agent's lines reach P/agent; the job's forged lines and auth lines go nowhere.
    let agent_log = instance.root("cat /var/log/flotilla/agent.log");
    assert!(
        agent_log.contains("flotilla-agent"),
        "{agent_log}\n{}",
        instance.journal()
    );
    // The positive control: the job's forged lines were written, and the journal holds them.
    let journal = instance.root("journalctl --no-pager -o cat");
    assert!(
        journal.contains("FORGED-BY-THE-JOB") && journal.contains("FORGED-AUTH-LINE"),
        "the job's logger lines are not in the journal: {journal}"
    );
    let shipped = instance.root("cat /var/log/flotilla/*.log");
    assert!(!shipped.contains("FORGED"), "{shipped}");
    assert!(!shipped.contains("COMMAND="), "{shipped}");
    assert_eq!(instance.id, ids[0]);
}

#[test]
fn an_agent_killed_mid_job_removes_the_instance_and_one_that_never_registers_is_removed_by_the_deadline(
) {
    let image = build_image();
    let mut network = Network::create("fail");
    let runtime = runtime();
    let moto = moto::MotoServer::start_on(&network.gateway);
    let hub = FakeHub::start_on(&network.gateway);
    let ids = aws(&runtime, &moto, &hub.address, 2, "");
    // This stack turns JobSudo on: the job user gets sudo (and only then).
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk(&runtime));
    runtime
        .block_on(
            ssm.put_parameter()
                .name("/flotilla/sealed/job-sudo")
                .value("true")
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send(),
        )
        .unwrap();
    hub.assign(
        protocol::JobRequest {
            job_id: "long-job".into(),
            commands: vec![protocol::Command::new(
                "sudo -n true && echo sudo-granted; sleep 600",
            )],
            ..Default::default()
        },
        "jwt",
    );
    let killed = boot(&image, &mut network, &moto, &ids[0]);
    killed.wait_for_hub(&hub, "the job to use the sudo JobSudo grants", |state| {
        state
            .logs
            .get("long-job")
            .is_some_and(|lines| lines.iter().any(|line| line.contains("sudo-granted\\n")))
    });
    killed.root("systemctl kill -s KILL flotilla-agent.service");
    killed.wait_for(
        "OnFailure= to remove the instance",
        Duration::from_secs(60),
        "systemctl show -p ActiveState,Result --value flotilla-remove-instance.service | paste -sd,",
        "success,inactive",
    );
    let (_, members, _) = moto.group(&runtime, "sealed");
    assert!(
        !members.contains(&ids[0]),
        "{members:?}\n{}",
        killed.journal()
    );

    // The second instance's hub never answers (each request hangs): the agent never registers.
    let silent = ids[1].clone();
    runtime
        .block_on(
            ssm.delete_parameter()
                .name("/flotilla/sealed/job-sudo")
                .send(),
        )
        .unwrap();
    let black_hole = testkit::imds::TestServer::start_on(&network.gateway, |_| {
        std::thread::sleep(Duration::from_secs(600));
        testkit::imds::respond(500, "")
    });
    runtime
        .block_on(
            ssm.put_parameter()
                .name(AGENT_CONFIG)
                .overwrite(true)
                .value(format!(
                    "endpoint: {}\nno-https: true\ntoken-ssm-parameter: {TOKEN_PARAMETER}\n",
                    black_hole.address
                ))
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send(),
        )
        .unwrap();
    let never = boot(&image, &mut network, &moto, &silent);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, members, _) = moto.group(&runtime, "sealed");
        if !members.contains(&silent) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the boot deadline did not remove the instance\n{}",
            never.journal()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let journal = never.journal();
    assert!(
        journal.contains("has not registered within the boot deadline"),
        "{journal}"
    );
}

/// What a container job tries from its `main` container on the sealed instance's default engine
/// (each line prints `BLOCKED name` or `CROSSED name`); `SOCKET` is `main`'s engine socket.
const CONTAINER_ATTACKS: &[(&str, &str)] = &[
    ("imds-token", "curl -sf -m 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token"),
    ("imds-credentials", "curl -sf -m 3 http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
    ("imds-ipv6", "curl -sf -m 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' 'http://[fd00:ec2::254]/latest/api/token'"),
    ("host-docker", "curl -sf -m 3 --unix-socket /var/run/docker.sock http://localhost/version | grep -v 'Podman Engine' | grep -q Version"),
    ("mount-boot-env", "host_cat /run/flotilla/agent.env | grep -q SEMAPHORE_AGENT"),
    ("mount-job-record", "host_cat /var/lib/flotilla/job-taken | grep -q container-attacks"),
    ("mount-agent-home", "host_cat /home/flotilla/.bashrc | grep -q 'executed by bash'"),
    ("service-imds", "service_says SVC-CROSSED"),
    // The job credential endpoint, as `main` reaches it: nothing without the job's token, no
    // other role, and the machine's loopback address is `main`'s own.
    ("credentials-without-token", "curl -sf -m 3 \"$AWS_CONTAINER_CREDENTIALS_FULL_URI\""),
    ("credentials-of-another-role", "curl -sf -m 3 -H \"Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN\" \"${AWS_CONTAINER_CREDENTIALS_FULL_URI%/v1/*}/v1/credentials/agent-role\""),
    ("credentials-on-host-loopback", "curl -sf -m 3 -H \"Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN\" http://127.0.0.1:51680/v1/credentials"),
];

/// Shell functions for the attacks: `host_cat PATH` reads PATH through a container with the
/// machine's `/` mounted, made through `main`'s engine socket;
/// `service_says WORD` waits for the service container's verdict in its log.
const CONTAINER_TOOLS: &str = r#"api() { curl -s --unix-socket /var/run/docker.sock -H 'Content-Type: application/json' "$@"; }
host_cat() { made=$(api -d "{\"Image\":\"$IMAGE\",\"Cmd\":[\"cat\",\"/host$1\"],\"HostConfig\":{\"Binds\":[\"/:/host\"]}}" http://localhost/containers/create); id=$(echo "$made" | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); [ -n "$id" ] || { echo "create: $made"; return 1; }; api -X POST "http://localhost/containers/$id/start" >/dev/null; api -X POST "http://localhost/containers/$id/wait" >/dev/null; api "http://localhost/containers/$id/logs?stdout=1&stderr=1" | tr -cd '[:print:]\n'; api -X DELETE "http://localhost/containers/$id?force=true" >/dev/null; }
service_says() { for _ in $(seq 40); do svc=$(api 'http://localhost/containers/json' | grep -o '"Names":\["[^"]*svc[^"]*"' | cut -d'"' -f4 | tr -d /); out=$(api "http://localhost/containers/$svc/logs?stdout=1" | tr -cd '[:print:]\n'); case "$out" in *SVC-*) echo "$out" | grep -q "$1"; return;; esac; sleep 0.5; done; return 1; }"#;

fn container_attack_job(image: &str, hub: &str) -> protocol::JobRequest {
    let mut commands = vec![
        protocol::Command::new(format!("export IMAGE={image}")),
        protocol::Command::new(CONTAINER_TOOLS),
        // Positive controls: the network out works, the socket is the job's own engine, and a
        // mount of the machine's / reads what the job user may read.
        protocol::Command::new(format!(
            "curl -s -m 5 -o /dev/null -w 'SEEN network %{{http_code}}\\n' {hub}/"
        )),
        protocol::Command::new(
            "api http://localhost/version | grep -q 'Podman Engine' && echo 'SEEN own-engine' || echo 'MISSING own-engine'",
        ),
        protocol::Command::new(
            "service_says SVC- && echo 'SEEN service' || echo 'MISSING service'",
        ),
        protocol::Command::new(
            "out=$(host_cat /etc/os-release); case \"$out\" in *ID=*) echo 'SEEN mount';; *) echo \"MISSING mount: $out\";; esac",
        ),
        // The job role's credentials reach `main` (the positive control of the endpoint's rows).
        protocol::Command::new(
            "out=$(curl -s -m 5 -H \"Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN\" \"$AWS_CONTAINER_CREDENTIALS_FULL_URI\"); case \"$out\" in *AccessKeyId*) echo 'SEEN container-credentials';; *) echo \"MISSING container-credentials at $AWS_CONTAINER_CREDENTIALS_FULL_URI: $out\";; esac",
        ),
    ];
    for (name, attack) in CONTAINER_ATTACKS {
        commands.push(protocol::Command::new(format!(
            "if ( {attack} ) >/dev/null 2>&1; then echo 'CROSSED {name}'; else echo 'BLOCKED {name}'; fi"
        )));
    }
    let service = protocol::Container {
        name: "svc".into(),
        image: image.into(),
        command: "bash -c \"if curl -sf -m 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token; then echo SVC-CROSSED; else echo SVC-BLOCKED; fi; sleep 600\"".into(),
        ..Default::default()
    };
    protocol::JobRequest {
        job_id: "container-attacks".into(),
        executor: "dockercompose".into(),
        compose: protocol::Compose {
            containers: vec![
                protocol::Container {
                    name: "main".into(),
                    image: image.into(),
                    ..Default::default()
                },
                service,
            ],
            ..Default::default()
        },
        commands,
        ..Default::default()
    }
}

/// Bakes `image` (from the machine's Docker) into the booted instance's engine image store, as
/// `ami/scripts/bake-images.sh` does at build time: pulled (here: loaded) as flotilla-job.
fn bake_into(instance: &Instance, image: &str) {
    let archive = tempfile::tempdir().unwrap();
    let tar = archive.path().join("image.tar");
    docker_ok(&["save", "-o", &tar.display().to_string(), image]);
    docker_ok(&[
        "cp",
        &tar.display().to_string(),
        &format!("{}:/var/tmp/image.tar", instance.name),
    ]);
    let loaded = instance.root(
        "chmod 644 /var/tmp/image.tar && run=$(runuser -u flotilla-job -- mktemp -d /tmp/bake-XXXXXX) && cd / && \
         runuser -u flotilla-job -- env XDG_RUNTIME_DIR=$run podman --root /var/lib/flotilla-images \
         --runroot $run/containers --storage-driver overlay load -i /var/tmp/image.tar && echo BAKED; \
         pkill -KILL -u flotilla-job; rm -rf $run /var/tmp/image.tar",
    );
    assert!(loaded.contains("BAKED"), "{loaded}\n{}", instance.journal());
}

#[test]
fn a_booted_instance_runs_a_container_job_on_its_own_engine_which_stays_sealed() {
    let image = build_image();
    let base = image_base();
    let mut network = Network::create("containers");
    let runtime = runtime();
    let moto = moto::MotoServer::start_on(&network.gateway);
    let hub = FakeHub::start_on(&network.gateway);
    let ids = aws(&runtime, &moto, &hub.address, 1, "");
    let instance = boot(&image, &mut network, &moto, &ids[0]);
    instance.wait_for_hub(&hub, "the agent to register", |state| {
        state.registered.is_some()
    });
    bake_into(&instance, &base);
    hub.assign(container_attack_job(&base, &hub.address), "jwt");
    hub.assign(
        protocol::JobRequest {
            job_id: "second-job".into(),
            commands: vec![protocol::Command::new("echo a second job")],
            ..Default::default()
        },
        "jwt",
    );
    wait_for_the_one_job(&instance, &hub, "container-attacks");
    let log = hub.simplified_log("container-attacks").join("\n");
    // The table as the job saw it (`--nocapture` shows it).
    println!("{log}");
    // Output lines, not the directives that print them.
    let printed = |text: &str| log.lines().any(|line| line.trim_end() == text);
    for seen in [
        "SEEN own-engine",
        "SEEN mount",
        "SEEN service",
        "SEEN container-credentials",
    ] {
        assert!(
            printed(seen),
            "{seen} missing:\n{log}\n{}",
            instance.journal()
        );
    }
    assert!(
        log.lines().any(|line| line.starts_with("SEEN network ")),
        "{log}"
    );
    every_attack_blocked(&log, CONTAINER_ATTACKS);
    // What the mount rows looked for is there, for root: they were refused, not wrong.
    let as_root = instance
        .root("cat /var/lib/flotilla/job-taken /home/flotilla/.bashrc /run/flotilla/agent.env");
    for wanted in ["container-attacks", "executed by bash", "SEMAPHORE_AGENT"] {
        assert!(
            as_root.contains(wanted),
            "{wanted} not found by root:\n{as_root}"
        );
    }

    // Nothing of the job's engine is left: no process of flotilla-job or its subordinate ids.
    let left = instance.root(
        "range=$(grep '^flotilla-job:' /etc/subuid | cut -d: -f2,3); start=${range%:*}; count=${range#*:}; \
         job=$(id -u flotilla-job); ps -e -o uid=,stat=,args= | \
         awk -v j=$job -v s=$start -v c=$count '($1==j || ($1>=s && $1<s+c)) && $2 !~ /^Z/' ; \
         ls -d /tmp/flotilla-engine-* 2>/dev/null; echo END",
    );
    assert_eq!(left.trim(), "END", "left after the job:\n{left}");
    root_reaches_imds_and_the_one_job_machine_left(&instance, &hub, &moto, &runtime);
}

/// Every attack printed `BLOCKED name` (an output line, not the directive that prints it), none
/// `CROSSED`, and neither the registration token nor the role's secret reached the job's log.
fn every_attack_blocked(log: &str, attacks: &[(&str, &str)]) {
    for (name, _) in attacks {
        assert!(
            log.lines()
                .any(|line| line.trim_end() == format!("BLOCKED {name}")),
            "{name} was not blocked:\n{log}"
        );
    }
    assert!(
        !log.lines().any(|line| line.starts_with("CROSSED")),
        "{log}"
    );
    assert!(
        !log.contains(TOKEN),
        "the job saw the registration token:\n{log}"
    );
    assert!(!log.contains(testkit::imds::INSTANCE_ROLE_SECRET), "{log}");
}

/// Waits for `job` to finish and the agent to exit 0 after it.
fn wait_for_the_one_job(instance: &Instance, hub: &FakeHub, job: &str) {
    instance.wait_for_hub(hub, &format!("{job} to finish"), |state| {
        state.finished.iter().any(|(done, _)| done == job)
    });
    instance.wait_for(
        "the agent to exit 0 after its one job",
        Duration::from_secs(60),
        "systemctl show -p ActiveState,Result --value flotilla-agent.service | paste -sd,",
        "success,inactive",
    );
}

/// Root still reaches the metadata service (the firewall is an owner match, not a blanket block);
/// one job only: the second was never fetched, and the instance left its group with decrement.
fn root_reaches_imds_and_the_one_job_machine_left(
    instance: &Instance,
    hub: &FakeHub,
    moto: &moto::MotoServer,
    runtime: &tokio::runtime::Runtime,
) {
    let as_root = instance.root("curl -sf -m 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token");
    assert!(as_root.starts_with("token-"), "{as_root}");
    let state = hub.state();
    assert!(
        state.queue.contains(&"second-job".to_string()),
        "{:?}",
        state.queue
    );
    drop(state);
    let (desired, members, _) = moto.group(runtime, "sealed");
    assert_eq!(
        (desired, members.len()),
        (0, 0),
        "the instance removed itself"
    );
}

/// The shared base image's tag (the booted image's own base, with curl and bash for jobs).
fn image_base() -> String {
    let base = Command::new("bash")
        .arg(repo().join(".ci/base-image"))
        .output()
        .expect("run .ci/base-image");
    assert!(base.status.success());
    String::from_utf8_lossy(&base.stdout).trim().to_string()
}

#[test]
fn a_failed_jobs_instance_is_kept_for_a_debug_session_as_the_job_user_then_removed() {
    let image = build_image();
    let mut network = Network::create("debug");
    let runtime = runtime();
    let moto = moto::MotoServer::start_on(&network.gateway);
    let hub = FakeHub::start_on(&network.gateway);
    let ids = aws(
        &runtime,
        &moto,
        &hub.address,
        1,
        "keep-failed-instance-minutes: 30\n",
    );
    hub.assign(
        protocol::JobRequest {
            job_id: "failing-job".into(),
            commands: vec![
                // The endpoint's rows that need the machine while the job runs: the job hands
                // its token over and waits until the test has asked with it.
                protocol::Command::new(
                    "echo \"$AWS_CONTAINER_AUTHORIZATION_TOKEN\" > /tmp/job-token",
                ),
                protocol::Command::new(
                    "for _ in $(seq 240); do [ -e /tmp/asked ] && break; sleep 0.5; done",
                ),
                protocol::Command::new("echo failing now; false"),
            ],
            env_vars: vec![protocol::EnvVar::plain("DEBUG_ME", "the job's value")],
            ..Default::default()
        },
        "jwt",
    );
    let instance = boot(&image, &mut network, &moto, &ids[0]);
    instance.wait_for(
        "the job's token",
        Duration::from_secs(120),
        "test -s /tmp/job-token && echo written",
        "written",
    );
    // While the job runs: its user gets credentials with its token (the positive control);
    // another local user and root, with the same token, do not.
    let ask = |user: &str| {
        instance.root(&format!(
            "runuser -u {user} -- curl -s -m 5 -o /dev/null -w '%{{http_code}}' -H \"Authorization: $(cat /tmp/job-token)\" http://127.0.0.1:51680/v1/credentials"
        ))
    };
    assert_eq!(ask("flotilla-job"), "200");
    assert_eq!(ask("nobody"), "403");
    assert_eq!(ask("root"), "403");
    instance.root("touch /tmp/asked");
    instance.wait_for_hub(&hub, "the job to fail", |state| {
        state.finished.iter().any(|(done, _)| done == "failing-job")
    });
    instance.wait_for(
        "the agent to keep the instance",
        Duration::from_secs(60),
        "journalctl -u flotilla-agent -o cat | grep -c 'sudo flotilla-debug-job' || true",
        "1",
    );
    let (desired, members, _) = moto.group(&runtime, "sealed");
    assert_eq!(
        (desired, members.len()),
        (0, 1),
        "kept, out of the desired count"
    );
    // The agent (and its endpoint) still runs: the finished job's token, replayed, is refused.
    assert_eq!(ask("flotilla-job"), "403");
    // The documented one-liner, as the session's root: the job user, the job's environment.
    let session = instance.root(
        "flotilla-debug-job -c 'echo \"as $(id -un): $DEBUG_ME\"; sudo -n true || echo no-sudo; type -t checkout' 2>&1",
    );
    for wanted in ["as flotilla-job: the job's value", "no-sudo", "function"] {
        assert!(session.contains(wanted), "{wanted} not in:\n{session}");
    }
    // Only root may open one: the job user (or the agent's) cannot.
    let refused = instance.root(
        "runuser -u flotilla-job -- /usr/local/bin/flotilla-debug-job -c true 2>&1; echo exit=$?",
    );
    assert!(
        refused.contains("run it as root") && refused.contains("exit=1"),
        "{refused}"
    );
    // A used machine booting again: the seal clears the job user's crontab (planted here by
    // root, in the spool itself, since neither the job nor `crontab` may), and leaves root's.
    let planted = instance.root(
        "install -o flotilla-job -g crontab -m 0600 /dev/null /var/spool/cron/crontabs/flotilla-job \
         && echo '@reboot touch /tmp/x' > /var/spool/cron/crontabs/flotilla-job \
         && echo '@reboot true' | crontab - && ls /var/spool/cron/crontabs",
    );
    assert!(planted.contains("flotilla-job"), "{planted}");
    // The seal as its unit runs it (a restart of the unit would restart the agent too).
    let seal = "set -a; . /run/flotilla/agent.env; set +a; /usr/local/lib/flotilla/flotilla-seal";
    let restarted = instance.root(&format!("{seal} 2>&1; echo restarted=$?"));
    assert!(restarted.contains("restarted=0"), "{restarted}");
    let left = instance.root("ls /var/spool/cron/crontabs 2>&1; crontab -l 2>&1");
    assert!(
        !left.contains("flotilla-job") && left.contains("@reboot true"),
        "{planted} {restarted} {left}\n{}",
        instance.root("journalctl -u flotilla-seal -o cat | tail -n 20")
    );
    // IPv6 on (as the seal reads it: this container has it off) and no way to filter it: the
    // seal fails (closed), where it passed just above.
    let open_ipv6 = instance.root(&format!(
        "mkdir -p /opt/stub /opt/proc/net /opt/proc/sys/net/ipv6/conf/all \
         && printf '#!/bin/sh\\nexit 1\\n' > /opt/stub/ip6tables && chmod +x /opt/stub/ip6tables \
         && touch /opt/proc/net/if_inet6 && echo 0 > /opt/proc/sys/net/ipv6/conf/all/disable_ipv6; \
         (export PATH=/opt/stub:$PATH FLOTILLA_PROC=/opt/proc; {seal}) 2>&1; echo exit=$?"
    ));
    assert!(
        open_ipv6.contains("ip6tables cannot filter it") && open_ipv6.contains("exit=1"),
        "{open_ipv6}"
    );
    // Done debugging: stopping the agent removes the instance, without a second decrement.
    assert_eq!(
        instance
            .root("systemctl is-active flotilla-agent.service")
            .trim(),
        "active"
    );
    instance.root("systemctl stop flotilla-agent.service");
    testkit::wait_for("the kept instance removed", Duration::from_secs(60), || {
        moto.group(&runtime, "sealed").1.is_empty()
    });
    assert_eq!(moto.group(&runtime, "sealed").0, 0);
}

/// A job that freezes every other process of its user (a helper that became the job user to
/// kill it included) is still stopped, and the instance leaves as usual. On the AMI (cgroup v2)
/// the job's cgroup is killed (`cgroup.kill`); this machine has cgroup v1, where the agent kills
/// from a thread whose real and saved uids no job process has, so the job cannot stop it.
#[test]
fn a_job_that_freezes_its_killer_is_still_stopped() {
    let image = build_image();
    let mut network = Network::create("freeze");
    let runtime = runtime();
    let moto = moto::MotoServer::start_on(&network.gateway);
    let hub = FakeHub::start_on(&network.gateway);
    let ids = aws(&runtime, &moto, &hub.address, 1, "");
    hub.assign(
        protocol::JobRequest {
            job_id: "freezing-job".into(),
            commands: vec![
                protocol::Command::new("echo freezing now"),
                // kill(-1) from the job: every other process of its user, in a tight loop, so
                // a process that becomes the job user is stopped at once.
                protocol::Command::new(
                    "setsid python3 -c 'import os, signal\nwhile True:\n    try:\n        \
                     os.kill(-1, signal.SIGSTOP)\n    except OSError:\n        pass' \
                     </dev/null >/dev/null 2>&1 & sleep 600",
                ),
            ],
            ..Default::default()
        },
        "jwt",
    );
    let instance = boot(&image, &mut network, &moto, &ids[0]);
    instance.wait_for_hub(&hub, "the job to start freezing", |state| {
        state
            .logs
            .get("freezing-job")
            .is_some_and(|lines| lines.iter().any(|line| line.contains("freezing now\\n")))
    });
    // The job's own processes are frozen by the job (the kernel's process table says so).
    instance.wait_for(
        "a process of the job stopped by the job",
        Duration::from_secs(30),
        "for p in $(pgrep -u flotilla-job); do grep -q '^State:.*stopped' /proc/$p/status \
         2>/dev/null && echo frozen; done | head -n 1",
        "frozen",
    );
    // A process of another user, which stopping the job must not reach.
    instance.root("setsid runuser -u nobody -- sleep 600 </dev/null >/dev/null 2>&1 &");
    hub.state().stop_requested = true;
    wait_for_the_one_job(&instance, &hub, "freezing-job");
    let left = instance.root("pgrep -u flotilla-job | wc -l; pgrep -u nobody -x sleep | wc -l");
    assert_eq!(
        left.split_whitespace().collect::<Vec<_>>(),
        ["0", "1"],
        "job processes, then other users' processes, left: {left}"
    );
    // Which way this machine stopped it (cgroup v1 here; the AMI has v2).
    let journal = instance.root("journalctl -u flotilla-agent -o cat");
    assert!(journal.contains("this machine has cgroup v1"), "{journal}");
    let (desired, members, _) = moto.group(&runtime, "sealed");
    assert_eq!(
        (desired, members.len()),
        (0, 0),
        "the instance removed itself"
    );
}
