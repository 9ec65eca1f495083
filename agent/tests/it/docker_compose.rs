//! The docker-compose executor against the real Docker engine, event by event, for the upstream
//! sequences that apply (docs/protocol.md §9.5: `test/e2e/docker/*` and
//! `test/e2e/self-hosted/docker_compose_*` of github.com/semaphoreci/agent): hello world, env vars,
//! files, epilogues, failing and unknown commands, stops during a command and an epilogue, a
//! service reachable by name, the agent's env vars and files, missing files with and without
//! `fail-on-missing-files`, an image that does not exist, an image without bash; then Flotilla's
//! own: bad input, image pull credentials, and GPUs (a fake inventory and a fake `nvidia-smi`).
//! Every image is built locally ([`containers`]); after every job nothing of it may be left
//! (`docker ps -a`, networks, volumes).

use testkit::agent_process;
use testkit::containers;
use testkit::job_users;
use testkit::log;
use testkit::sequences;

use agent::compose::engine::{ContainerEngine, RootlessOptions};
use agent::compose::{ComposeOptions, ContainerGpus};
use agent::gpu::Gpu;
use agent::job::{job_environment, JobOptions};
use protocol::{Compose, Container, EnvVar, File, JobRequest, JobResult, LogEvent};
use sequences::*;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A function returning the tag of an image built once (by [`containers::image`]) per run.
macro_rules! image {
    ($(#[$doc:meta])* $function:ident, $name:expr, $dockerfile:expr, $files:expr) => {
        $(#[$doc])*
        fn $function() -> &'static str {
            static TAG: OnceLock<String> = OnceLock::new();
            TAG.get_or_init(|| containers::image($name, $dockerfile, $files))
        }
    };
}

image!(
    /// The job image: the base, plus a file the tests look for.
    job_image,
    "job",
    "COPY marker /etc/flotilla-test-image\n",
    &[("marker", b"job image\n", 0o644)]
);

image!(
    /// A service answering `pong` on port 8080.
    service_image,
    "service",
    "COPY index.html /srv/index.html\nCMD [\"python3\", \"-m\", \"http.server\", \"8080\", \"--directory\", \"/srv\"]\n",
    &[("index.html", b"pong\n", 0o644)]
);

image!(
    /// An image whose user is not root (`USER builder`): main's bash must still reach the
    /// agent's terminal.
    user_image,
    "user",
    "RUN useradd --create-home builder\nUSER builder\n",
    &[]
);

image!(
    /// The job image plus 40 MB that do not compress: a pull that needs room.
    fat_image,
    "fat",
    "RUN head -c 40000000 /dev/urandom > /fat\n",
    &[]
);

image!(
    /// An image without bash (like Alpine's): the shell cannot start.
    no_bash_image,
    "no-bash",
    "RUN rm -f /usr/bin/bash /bin/bash\n",
    &[]
);

/// The engine a test's jobs use: the machine's Docker, or a rootless Podman of the job's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Host,
    Rootless,
}

/// Each upstream sequence runs on both engines: `host::NAME` and `rootless::NAME`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod host {
            $(#[test]
            fn $name() {
                super::$name(super::Engine::Host)
            })*
        }
        mod rootless {
            $(#[test]
            fn $name() {
                super::$name(super::Engine::Rootless)
            })*
        }
    };
}

on_both_engines!(
    hello_world,
    main_runs_on_the_agents_terminal_whatever_its_user,
    env_vars_container_env_vars_and_aliases,
    files_are_injected_in_the_container,
    failing_and_unknown_commands_run_the_on_fail_epilogue,
    stop_during_a_command,
    stop_during_an_epilogue,
    a_service_is_reachable_from_main_by_its_name,
    agent_env_vars_and_files,
    missing_agent_files_are_skipped_or_fail_the_job,
    an_image_that_does_not_exist_fails_the_pull,
    an_image_without_bash_fails_the_start_with_dockers_words,
    bad_input_fails_with_a_job_log_line,
    the_container_dying_midway_fails_the_job,
    stop_during_the_pull,
    the_socket_in_main_is_as_strong_as_its_engine,
);

struct Harness {
    scratch: tempfile::TempDir,
    options: JobOptions,
    job_id: String,
}

impl Harness {
    /// A harness whose jobs are named `cj-<name>` (the marker of their Docker objects), or
    /// `cjr-<name>` on the rootless engine, which they run on as [`containers::ROOTLESS_USER`]
    /// with the test images in a baked image store.
    fn new(name: &str, engine: Engine) -> Harness {
        let scratch = tempfile::tempdir().unwrap();
        let mut options = JobOptions {
            shell_env: job_environment(std::env::vars()),
            scratch_root: scratch.path().to_path_buf(),
            ..JobOptions::default()
        };
        let mut job_id = format!("cj-{name}");
        if engine == Engine::Rootless {
            let user = containers::rootless_user();
            // The job user reaches its scratch directory through the root (as through /tmp).
            std::fs::set_permissions(
                scratch.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o711),
            )
            .unwrap();
            user.apply_to_environment(&mut options.shell_env);
            options.job_user = Some(user);
            options.compose.engine = ContainerEngine::Rootless(RootlessOptions {
                image_store: Some(image_store().to_path_buf()),
            });
            job_id = format!("cjr-{name}");
        }
        Harness {
            scratch,
            options,
            job_id,
        }
    }

    fn job(&self, images: &[(&str, &str)], commands_: &[&str]) -> JobRequest {
        JobRequest {
            job_id: self.job_id.clone(),
            executor: "dockercompose".into(),
            compose: Compose {
                containers: images
                    .iter()
                    .map(|(name, image)| Container {
                        name: name.to_string(),
                        image: image.to_string(),
                        ..Container::default()
                    })
                    .collect(),
                ..Compose::default()
            },
            commands: commands(commands_),
            ..JobRequest::default()
        }
    }

    fn main_job(&self, commands_: &[&str]) -> JobRequest {
        self.job(&[("main", job_image())], commands_)
    }

    fn run(&self, request: &JobRequest) -> (JobResult, Vec<LogEvent>) {
        self.run_with(request, |_, _| {})
    }

    /// Runs the job, then checks its result and its log ([`assert_log`]); returns its events.
    fn check(&self, request: &JobRequest, result: JobResult, expected: &[String]) -> Vec<LogEvent> {
        self.check_with(request, |_, _| {}, result, expected)
    }

    /// Runs the job, stops it a second into `sleep infinity`, and checks that it logged
    /// `before`, then that command cut short, and finished stopped.
    fn check_stopped_in_sleep(&self, request: &JobRequest, before: Vec<String>) {
        let stop = stop_when_started("sleep infinity", Duration::from_secs(1));
        let stopped = [
            "directive: sleep infinity",
            OUTPUT,
            "Exit Code: 1",
            "job_finished: stopped",
        ];
        self.check_with(request, stop, JobResult::Stopped, &log![before, stopped]);
    }

    /// [`Harness::check`] with a `watch` as for [`Harness::run_with`].
    fn check_with(
        &self,
        request: &JobRequest,
        watch: impl Watch,
        result: JobResult,
        expected: &[String],
    ) -> Vec<LogEvent> {
        let (actual, events) = self.run_with(request, watch);
        assert_eq!(actual, result, "{:#?}", simplified(&events));
        assert_log(&events, expected);
        events
    }

    /// Runs the job; `watch` sees every event with the control. Afterwards nothing of the job may
    /// be left in Docker, and on the rootless engine no process of the job user's, nor anything in
    /// the scratch root (its engine's storage included). Jobs with a job user take turns on it
    /// (`job_users`): the end of a job kills every process of the job user, as on an instance.
    fn run_with(&self, request: &JobRequest, watch: impl Watch) -> (JobResult, Vec<LogEvent>) {
        let _turn = self
            .options
            .job_user
            .as_ref()
            .map(|user| job_users::turn(&user.name));
        let log_path = self.scratch.path().join("job_log.json");
        let (result, observed, _log) = run_watched(request, &self.options, &log_path, watch);
        let marker = format!("flotilla-{}-", self.job_id);
        assert_eq!(
            containers::leftovers(&marker),
            Vec::<String>::new(),
            "the job left Docker objects"
        );
        if let Some(user) = self
            .options
            .job_user
            .as_ref()
            .filter(|user| user.name == containers::ROOTLESS_USER)
        {
            assert_eq!(
                containers::user_processes(user),
                Vec::<String>::new(),
                "the job left processes of its user"
            );
            let left: Vec<_> = std::fs::read_dir(self.scratch.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .filter(|name| name != "job_log.json")
                .collect();
            assert!(left.is_empty(), "the job left files: {left:?}");
            assert_eq!(
                containers::engine_run_dirs(),
                Vec::<String>::new(),
                "the job left its engine's run directory"
            );
        }
        (result, observed)
    }
}

/// The baked image store of the rootless engine's jobs: the test images, loaded once.
fn image_store() -> &'static std::path::Path {
    static STORE: OnceLock<std::path::PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        containers::rootless_store(&[job_image(), service_image(), no_bash_image(), user_image()])
    })
}

fn pulled() -> Vec<String> {
    log![
        ["directive: Pulling docker images..."],
        [OUTPUT],
        ["Exit Code: 0"]
    ]
}

fn started() -> Vec<String> {
    cmd(
        "Starting the docker image...",
        &["Starting a new bash session.\n"],
        0,
    )
}

/// Every job's opening: started, images pulled, the container's shell started.
fn opened() -> Vec<String> {
    log![["job_started"], pulled(), started()]
}

/// [`opened`], no env vars exported, then the injection of files with these `outputs`.
fn injected(outputs: &[&str], exit: i32) -> Vec<String> {
    log![opened(), export(&[]), cmd("Injecting Files", outputs, exit)]
}

/// A job that fails at pulling its images.
fn pull_failed() -> Vec<String> {
    log![
        ["job_started", "directive: Pulling docker images..."],
        [OUTPUT],
        ["Exit Code: 1", "job_finished: failed"]
    ]
}

/// A job that fails while preparing its executor, with `message`.
fn prepare(message: &str) -> Vec<String> {
    log![
        ["job_started"],
        cmd("Preparing the job executor", &[message], 1),
        ["job_finished: failed"]
    ]
}

/// [`opened`], then the export of `exported` and an empty file injection.
fn prologue(exported: &[&str]) -> Vec<String> {
    log![opened(), export(exported), inject()]
}

fn outputs(events: &[LogEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            LogEvent::CmdOutput { output, .. } => Some(output.as_str()),
            _ => None,
        })
        .collect()
}

/// The env vars of upstream's env-var tests, set on the job or by the agent.
const ABCD: [(&str, &str); 4] = [
    ("A", "hello"),
    ("B", "how are you?"),
    ("C", "quotes ' quotes"),
    ("D", "$PATH:/etc/a"),
];

/// Also: on the rootless engine a job whose images are all baked into the store pulls nothing
/// (one line says so); on the machine's Docker, Compose's `run` does the pull as upstream's.
fn hello_world(engine: Engine) {
    let h = Harness::new("hello", engine);
    let events = h.check(
        &h.main_job(&["echo Hello World", "cat /etc/flotilla-test-image"]),
        JobResult::Passed,
        &log![
            prologue(&[]),
            cmd("echo Hello World", &["Hello World\n"], 0),
            cmd("cat /etc/flotilla-test-image", &["job image\n"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
    let baked = simplified(&events).contains(&format!("{}\n", agent::compose::BAKED_LINE));
    assert_eq!(
        baked,
        engine == Engine::Rootless,
        "{:#?}",
        simplified(&events)
    );
}

/// Bash in main has the agent's terminal as its stdin, stdout and controlling terminal (so
/// `/dev/tty` opens), whoever the image's user is; its output reaches the job log as in the
/// shell executor, without Compose's relay.
fn main_runs_on_the_agents_terminal_whatever_its_user(engine: Engine) {
    let h = Harness::new("terminal", engine);
    let commands = [
        "tty",
        "id -un",
        "test -t 0 && test -t 1 && echo both-terminals",
        "echo through-dev-tty > /dev/tty",
        "echo $TERM",
    ];
    h.check(
        &h.job(&[("main", user_image())], &commands),
        JobResult::Passed,
        &log![
            prologue(&[]),
            cmd("tty", &["/dev/flotilla-tty\n"], 0),
            cmd("id -un", &["builder\n"], 0),
            cmd(commands[2], &["both-terminals\n"], 0),
            cmd(commands[3], &["through-dev-tty\n"], 0),
            cmd("echo $TERM", &["xterm\n"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

fn env_vars_container_env_vars_and_aliases(engine: Engine) {
    let h = Harness::new("env", engine);
    let mut request = h.main_job(&["echo $A", "echo $B", "echo $C", "echo $D", "echo $FOO"]);
    request.env_vars = env(&ABCD);
    request.compose.containers[0].env_vars = vec![EnvVar::plain("FOO", "bar $HOME")];
    request.commands.push(protocol::Command {
        directive: "echo Hello World".into(),
        alias: "Display Hello World".into(),
    });
    h.check(
        &request,
        JobResult::Passed,
        &log![
            prologue(&["A", "B", "C", "D"]),
            cmd("echo $A", &["hello\n"], 0),
            cmd("echo $B", &["how are you?\n"], 0),
            cmd("echo $C", &["quotes ' quotes\n"], 0),
            cmd("echo $D", &["$PATH:/etc/a\n"], 0),
            cmd("echo $FOO", &["bar $HOME\n"], 0),
            cmd(
                "Display Hello World",
                &["Running: echo Hello World\n", "Hello World\n"],
                0
            ),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

fn files_are_injected_in_the_container(engine: Engine) {
    let h = Harness::new("files", engine);
    let mut request = h.main_job(&[
        "cat test.txt",
        "cat /a/b/c",
        "stat -c '%a' /tmp/a",
        "cat '/tmp/with space'",
    ]);
    request.files = vec![
        File::plain("test.txt", "hello\n", "0644"),
        File::plain("/a/b/c", "hello\n", "0644"),
        File::plain("/tmp/a", "hello\n", "0600"),
        File::plain("/tmp/with space", "spaced\n", "0644"),
    ];
    h.check(
        &request,
        JobResult::Passed,
        &log![
            injected(
                &[
                    "Injecting test.txt with file mode 0644\n",
                    "Injecting /a/b/c with file mode 0644\n",
                    "Injecting /tmp/a with file mode 0600\n",
                    "Injecting /tmp/with space with file mode 0644\n",
                ],
                0,
            ),
            cmd("cat test.txt", &["hello\n"], 0),
            cmd("cat /a/b/c", &["hello\n"], 0),
            cmd("stat -c '%a' /tmp/a", &["600\n"], 0),
            cmd("cat '/tmp/with space'", &["spaced\n"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );

    // upstream's file_injection_broken_file_mode
    let h = Harness::new("badmode", engine);
    let mut request = h.main_job(&["cat test.txt"]);
    request.files = vec![File::plain("test.txt", "hello\n", "obviously broken")];
    h.check(
        &request,
        JobResult::Failed,
        &log![
            injected(
                &[
                    "Injecting test.txt with file mode obviously broken\n",
                    "Failed to set file mode to obviously broken\n"
                ],
                1,
            ),
            result_export(),
            ["job_finished: failed"],
        ],
    );
}

fn failing_and_unknown_commands_run_the_on_fail_epilogue(engine: Engine) {
    let h = Harness::new("fail", engine);
    let mut request = h.main_job(&["echhhho Hello World", "echo never"]);
    request.epilogue_always_commands = commands(&["echo Hello Epilogue $SEMAPHORE_JOB_RESULT"]);
    request.epilogue_on_pass_commands =
        commands(&["echo Hello On Pass Epilogue $SEMAPHORE_JOB_RESULT"]);
    request.epilogue_on_fail_commands =
        commands(&["echo Hello On Fail Epilogue $SEMAPHORE_JOB_RESULT"]);
    h.check(
        &request,
        JobResult::Failed,
        &log![
            prologue(&[]),
            cmd(
                "echhhho Hello World",
                &["bash: echhhho: command not found\n"],
                127
            ),
            result_export(),
            cmd(
                "echo Hello Epilogue $SEMAPHORE_JOB_RESULT",
                &["Hello Epilogue failed\n"],
                0
            ),
            cmd(
                "echo Hello On Fail Epilogue $SEMAPHORE_JOB_RESULT",
                &["Hello On Fail Epilogue failed\n"],
                0
            ),
            ["job_finished: failed"],
        ],
    );
}

fn stop_during_a_command(engine: Engine) {
    let h = Harness::new("stopcmd", engine);
    let request = h.main_job(&["sleep infinity", "echo 'here'"]);
    h.check_stopped_in_sleep(&request, prologue(&[]));
}

fn stop_during_an_epilogue(engine: Engine) {
    let h = Harness::new("stop-epilogue", engine);
    let mut request = h.main_job(&["echo 'here'"]);
    request.epilogue_always_commands = commands(&["sleep infinity"]);
    h.check_stopped_in_sleep(
        &request,
        log![
            prologue(&[]),
            cmd("echo 'here'", &["here\n"], 0),
            result_export(),
        ],
    );
}

fn a_service_is_reachable_from_main_by_its_name(engine: Engine) {
    let h = Harness::new("service", engine);
    let fetch = "curl -sf --retry 50 --retry-delay 1 --retry-connrefused http://db:8080/index.html";
    let request = h.job(&[("main", job_image()), ("db", service_image())], &[fetch]);
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed, "{:#?}", simplified(&events));
    assert_log(
        &events,
        &log![
            prologue(&[]),
            cmd(fetch, &["pong\n"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

/// upstream's docker_compose_host_env_vars and docker_compose_host_files
fn agent_env_vars_and_files(engine: Engine) {
    let mut h = Harness::new("host", engine);
    let host = tempfile::tempdir().unwrap();
    let (one, two) = (host.path().join("file1.txt"), host.path().join("file2.txt"));
    std::fs::write(&one, "Hello from file1.txt").unwrap();
    std::fs::write(&two, "Hello from file2.txt").unwrap();
    h.options.agent_env_vars = ABCD
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    h.options.compose.files = vec![
        (one.display().to_string(), "/tmp/agent/file1.txt".into()),
        (two.display().to_string(), "/tmp/agent/file2.txt".into()),
    ];
    let request = h.main_job(&[
        "echo $A",
        "echo $D",
        "cat /tmp/agent/file1.txt",
        "cat /tmp/agent/file2.txt",
    ]);
    h.check(
        &request,
        JobResult::Passed,
        &log![
            prologue(&["A", "B", "C", "D"]),
            cmd("echo $A", &["hello\n"], 0),
            cmd("echo $D", &["$PATH:/etc/a\n"], 0),
            cmd("cat /tmp/agent/file1.txt", &["Hello from file1.txt"], 0),
            cmd("cat /tmp/agent/file2.txt", &["Hello from file2.txt"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

/// upstream's docker_compose_missing_host_files and docker_compose_fail_on_missing_host_files
fn missing_agent_files_are_skipped_or_fail_the_job(engine: Engine) {
    let host = tempfile::tempdir().unwrap();
    let one = host.path().join("file1.txt");
    std::fs::write(&one, "Hello from file1.txt").unwrap();
    let missing = host.path().join("notfound.txt");
    let files = vec![
        (
            one.display().to_string(),
            "/tmp/agent/file1.txt".to_string(),
        ),
        (
            missing.display().to_string(),
            "/tmp/agent/notfound.txt".to_string(),
        ),
    ];
    let mut h = Harness::new("missing", engine);
    h.options.compose.files = files.clone();
    let request = h.main_job(&["cat /tmp/agent/file1.txt", "cat /tmp/agent/notfound.txt"]);
    h.check(
        &request,
        JobResult::Failed,
        &log![
            prologue(&[]),
            cmd("cat /tmp/agent/file1.txt", &["Hello from file1.txt"], 0),
            cmd(
                "cat /tmp/agent/notfound.txt",
                &["cat: /tmp/agent/notfound.txt: No such file or directory\n"],
                1
            ),
            result_export(),
            ["job_finished: failed"],
        ],
    );

    let mut h = Harness::new("fail-missing", engine);
    h.options.compose.files = files;
    h.options.compose.fail_on_missing_files = true;
    h.check(
        &h.main_job(&["cat /tmp/agent/file1.txt"]),
        JobResult::Failed,
        &log![["job_started", "job_finished: failed"]],
    );
}

fn an_image_that_does_not_exist_fails_the_pull(engine: Engine) {
    let h = Harness::new("no-image", engine);
    let request = h.job(
        &[("main", "flotilla-test-does-not-exist:nope")],
        &["echo Hello World"],
    );
    let events = h.check(&request, JobResult::Failed, &pull_failed());
    assert!(
        !outputs(&events).contains(agent::compose::BAKED_LINE),
        "{}",
        outputs(&events)
    );
    assert!(
        outputs(&events).contains("flotilla-test-does-not-exist"),
        "{}",
        outputs(&events)
    );
}

fn an_image_without_bash_fails_the_start_with_dockers_words(engine: Engine) {
    let h = Harness::new("no-bash", engine);
    // Docker names the missing program; Podman's API answers 409 to the attach, and the job log
    // says what that usually means.
    let (words, hint) = match engine {
        Engine::Host => ("executable file not found", vec![]),
        Engine::Rootless => (
            "unable to upgrade to tcp, received 409",
            vec![format!("{}\n", agent::compose::PODMAN_ATTACH_HINT)],
        ),
    };
    let events = h.check(
        &h.job(&[("main", no_bash_image())], &["echo Hello World"]),
        JobResult::Failed,
        &log![
            ["job_started"],
            pulled(),
            [
                "directive: Starting the docker image...",
                "Starting a new bash session.\n",
                "Failed to start the docker image\n"
            ],
            [IGNORE_ONE],
            hint,
            ["Exit Code: 1", "job_finished: failed"],
        ],
    );
    let log = simplified(&events);
    let reason = &log[log.len() - 3 - usize::from(engine == Engine::Rootless)];
    assert!(reason.contains(words), "{reason}");
}

/// Bad input never crashes the agent or leaves a container; the job log says what was wrong.
fn bad_input_fails_with_a_job_log_line(engine: Engine) {
    let h = Harness::new("bad", engine);

    h.check(
        &h.job(&[], &["echo never"]),
        JobResult::Failed,
        &prepare("The job has no containers: a docker-compose job needs at least one.\n"),
    );

    let mut request = h.main_job(&["echo never"]);
    request.compose.containers[0].env_vars = vec![EnvVar {
        name: "X".into(),
        value: "not base64!".into(),
    }];
    assert_log(
        &h.run(&request).1,
        &prepare("Environment variable 'X' of container 'main' is not valid base64.\n"),
    );

    let mut request = h.main_job(&["echo never"]);
    request.compose.image_pull_credentials = vec![protocol::job::ImagePullCredentials {
        env_vars: vec![EnvVar::plain("DOCKER_CREDENTIAL_TYPE", "Quay")],
        files: Vec::new(),
    }];
    h.check(
        &request,
        JobResult::Failed,
        &log![
            ["job_started"],
            cmd("Setting up image pull credentials", &["Failed to resolve docker login strategy: unknown DOCKER_CREDENTIAL_TYPE: 'Quay'\n"], 1),
            ["job_finished: failed"],
        ],
    );

    // A job env var that is not base64 fails the export, as with the shell executor (the
    // epilogue phase still exports the result).
    let mut request = h.main_job(&["echo never"]);
    request.env_vars = vec![EnvVar {
        name: "X".into(),
        value: "%%%".into(),
    }];
    h.check(
        &request,
        JobResult::Failed,
        &log![
            opened(),
            cmd("Exporting environment variables", &[], 1),
            result_export(),
            ["job_finished: failed"]
        ],
    );
}

/// Compose dying in the middle of the job (the container is removed under it): every later
/// command fails, the epilogues still run their course, nothing is left.
fn the_container_dying_midway_fails_the_job(engine: Engine) {
    let h = Harness::new("midway", engine);
    // Through the docker socket the job gets (the image has no docker CLI, curl speaks the API).
    let kill = "curl -s --unix-socket /var/run/docker.sock -X DELETE \"http://localhost/containers/$(hostname)?force=true\"; sleep 5";
    let mut request = h.main_job(&[kill, "echo never"]);
    request.epilogue_always_commands = commands(&["echo epilogue"]);
    h.check(
        &request,
        JobResult::Failed,
        &log![
            prologue(&[]),
            [format!("directive: {kill}")],
            [OUTPUT],
            ["Exit Code: 1"],
            cmd(
                "Exporting environment variables",
                &["Exporting SEMAPHORE_JOB_RESULT\n"],
                1
            ),
            cmd("echo epilogue", &[], 1),
            ["job_finished: failed"],
        ],
    );
}

/// upstream's dockerhub_private_image, with a `docker` that records the login and passes every
/// other call to the real one.
#[test]
fn image_pull_credentials_log_in_with_upstreams_lines() {
    let mut h = Harness::new("login", Engine::Host);
    let record = tempfile::tempdir().unwrap();
    let real = containers::which("docker").expect("docker on PATH");
    let fake = containers::tools(&[(
        "docker",
        &format!(
            "#!/bin/sh\nif [ \"$1\" = login ]; then echo \"$*\" > {dir}/args; cat > {dir}/stdin; echo 'Login Succeeded'; exit 0; fi\nexec {real} \"$@\"\n",
            dir = record.path().display(),
            real = real.display()
        ),
    )]);
    for (name, value) in h.options.shell_env.iter_mut() {
        if name == "PATH" {
            *value = format!("{}:{value}", fake.path().display());
        }
    }
    let mut request = h.main_job(&["echo Hello World"]);
    request.compose.image_pull_credentials = vec![protocol::job::ImagePullCredentials {
        env_vars: env(&[
            ("DOCKER_CREDENTIAL_TYPE", "DockerHub"),
            ("DOCKERHUB_USERNAME", "lasagna"),
            ("DOCKERHUB_PASSWORD", "spaghetti"),
        ]),
        files: Vec::new(),
    }];
    let events = h.check(
        &request,
        JobResult::Passed,
        &log![
            ["job_started"],
            cmd(
                "Setting up image pull credentials",
                &[
                    "Setting up credentials for DockerHub\n",
                    "echo $DOCKERHUB_PASSWORD | docker login --username $DOCKERHUB_USERNAME --password-stdin\n",
                    "Login Succeeded\n",
                    "\n"
                ],
                0
            ),
            pulled(),
            started(),
            export(&[]),
            inject(),
            cmd("echo Hello World", &["Hello World\n"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
    let args = std::fs::read_to_string(record.path().join("args")).unwrap();
    assert_eq!(args.trim(), "login --username lasagna --password-stdin");
    assert_eq!(
        std::fs::read_to_string(record.path().join("stdin")).unwrap(),
        "spaghetti\n"
    );
    assert!(
        !outputs(&events).contains("spaghetti"),
        "the password never reaches the log"
    );
}

fn fake_gpus(count: u32) -> Vec<Gpu> {
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

/// A job that asks for GPUs on a machine without them fails at once with a line saying so.
#[test]
fn gpus_asked_for_on_a_machine_without_them_fail_clearly() {
    let mut h = Harness::new("no-gpus", Engine::Host);
    h.options.compose = ComposeOptions {
        gpus: ContainerGpus::All,
        ..ComposeOptions::default()
    };
    h.check(
        &h.main_job(&["nvidia-smi"]),
        JobResult::Failed,
        &prepare("Container 'main' asks for GPUs (the agent runs with --container-gpus all), but this machine has no NVIDIA GPU.\n"),
    );

    h.options.compose.gpus = ContainerGpus::Auto;
    let mut request = h.job(
        &[("main", job_image()), ("trainer", job_image())],
        &["true"],
    );
    request.compose.containers[1].env_vars = vec![EnvVar::plain("NVIDIA_VISIBLE_DEVICES", "all")];
    assert_log(&h.run(&request).1, &prepare("Container 'trainer' asks for GPUs (NVIDIA_VISIBLE_DEVICES in its env vars), but this machine has no NVIDIA GPU.\n"));

    // Auto on a machine without GPUs: an ordinary container job.
    let (result, _) = h.run(&h.main_job(&["test -z \"$NVIDIA_VISIBLE_DEVICES\""]));
    assert_eq!(result, JobResult::Passed);
}

/// With a (fake) GPU inventory, the compose file gives `main` the GPUs the Compose way and the GPU
/// job variables; Docker without the NVIDIA runtime (this machine) refuses it at the pull, in the
/// job log, without hanging.
#[test]
fn gpus_are_reserved_for_main_in_the_compose_file() {
    let mut h = Harness::new("gpus", Engine::Host);
    h.options.compose.host_gpus = fake_gpus(2);
    let capture = tempfile::tempdir().unwrap();
    let wrappers = compose_capturing_wrappers(capture.path());
    for (name, value) in h.options.shell_env.iter_mut() {
        if name == "PATH" {
            *value = format!("{}:{value}", wrappers.path().display());
        }
    }
    let (result, events) = h.run(&h.main_job(&["nvidia-smi -L"]));
    if docker_has_nvidia_runtime() {
        assert_eq!(result, JobResult::Passed, "{}", outputs(&events));
    } else {
        assert_eq!(result, JobResult::Failed);
        assert_log(&events, &pull_failed());
        let refusal = "could not select device driver \"nvidia\" with capabilities: [[gpu]]";
        assert!(outputs(&events).contains(refusal), "{}", outputs(&events));
    }
    let file: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(capture.path().join("docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let main = &file["services"]["main"];
    let device = &main["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(device["driver"].as_str(), Some("nvidia"));
    assert_eq!(device["count"].as_str(), Some("all"));
    assert_eq!(device["capabilities"][0].as_str(), Some("gpu"));
    assert_eq!(
        main["environment"]["NVIDIA_VISIBLE_DEVICES"].as_str(),
        Some("0,1")
    );
    assert_eq!(
        main["environment"]["FLOTILLA_GPU_COUNT"].as_str(),
        Some("2")
    );
    assert_eq!(
        main["environment"]["FLOTILLA_GPU_MODEL"].as_str(),
        Some("NVIDIA A10G")
    );
}

fn docker_has_nvidia_runtime() -> bool {
    let output = std::process::Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).contains("nvidia")
}

/// `docker` and `docker-compose` that copy the compose file they are given (`-f FILE`) to `dir`
/// and then run the real program.
fn compose_capturing_wrappers(dir: &std::path::Path) -> tempfile::TempDir {
    let script = |real: Option<std::path::PathBuf>| {
        let real = real
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "false".into());
        format!(
            "#!/bin/bash\nprev=\nfor a in \"$@\"; do [ \"$prev\" = -f ] && cp \"$a\" {dir}/docker-compose.yml; prev=\"$a\"; done\nexec {real} \"$@\"\n",
            dir = dir.display()
        )
    };
    containers::tools(&[
        ("docker", &script(containers::which("docker"))),
        (
            "docker-compose",
            &script(containers::which("docker-compose")),
        ),
    ])
}

/// The `agent` binary end to end (the fixture hub in `support/`): `--files` reach `main`, and
/// `--container-gpus none` keeps a GPU machine's GPUs (a fake `nvidia-smi`) out of the containers.
#[test]
fn the_agent_binary_wires_files_and_the_gpu_setting() {
    let hub = testkit::mock_hub::FakeHub::start();
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("file1.txt");
    std::fs::write(&file, "Hello from file1.txt").unwrap();
    let h = Harness::new("agent-e2e", Engine::Host);
    let request = h.main_job(&[
        "cat /tmp/agent/file1.txt",
        "echo \"gpus=$FLOTILLA_GPU_COUNT\"",
    ]);
    hub.assign(request, "jwt");
    let tools = testkit::gpu::FakeGpu::healthy(1, "NVIDIA A10G").install();
    let files = format!("{}:/tmp/agent/file1.txt", file.display());
    let mut agent = agent_process::AgentProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_agent")),
        &hub.address,
        "registration-token",
        &[
            "--name",
            "test-agent-1",
            "--disconnect-after-job",
            "--files",
            &files,
            "--container-gpus",
            "none",
        ],
        Some(tools.path()),
    );
    assert_eq!(
        agent.wait(Duration::from_secs(120)),
        0,
        "{}",
        agent.output()
    );
    let log = hub.simplified_log(&h.job_id);
    assert!(
        log.contains(&"Hello from file1.txt".to_string()),
        "{log:#?}"
    );
    assert!(log.contains(&"gpus=\n".to_string()), "{log:#?}");
    assert_eq!(
        log.last().map(String::as_str),
        Some("job_finished: passed"),
        "{log:#?}"
    );
    assert!(
        agent.output().contains("1 NVIDIA GPU(s): NVIDIA A10G"),
        "{}",
        agent.output()
    );
    let marker = format!("flotilla-{}-", h.job_id);
    assert_eq!(containers::leftovers(&marker), Vec::<String>::new());
}

/// A stop while the images are pulled and the services start: the job ends `stopped` at once and
/// takes its containers with it. (On the rootless engine the images are baked, so nothing is
/// pulled and the services start with the shell: the stop comes then.)
fn stop_during_the_pull(engine: Engine) {
    let h = Harness::new("stop-pull", engine);
    let request = h.job(
        &[("main", job_image()), ("db", service_image())],
        &["echo never"],
    );
    let starting = match engine {
        Engine::Host => "Pulling docker images...",
        Engine::Rootless => "Starting the docker image...",
    };
    let (result, events) = h.run_with(&request, stop_when_started(starting, Duration::ZERO));
    assert_eq!(result, JobResult::Stopped, "{:#?}", simplified(&events));
    let log = simplified(&events);
    assert_eq!(
        &log[..2],
        ["job_started", "directive: Pulling docker images..."],
        "{log:#?}"
    );
    assert_eq!(
        log.last().map(String::as_str),
        Some("job_finished: stopped"),
        "{log:#?}"
    );
    assert!(
        !log.contains(&"directive: echo never".to_string()),
        "{log:#?}"
    );
}

/// The job's engine is its own: `main`'s `/var/run/docker.sock` is a Podman whose containers are
/// the job's (its `main` among them) and not the machine's (a container made on the machine's
/// Docker beforehand is there, and not in the job's list). While the job runs, its engine's
/// processes and run directory exist (so the checks that nothing of them is left after the job
/// can see them).
#[test]
fn rootless_the_job_drives_its_own_engine_not_the_machines() {
    let marker = format!("flotilla-ci-machine-{}", std::process::id());
    let created = std::process::Command::new("docker")
        .args(["create", "--name", &marker, job_image(), "true"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    assert!(
        !containers::leftovers(&marker).is_empty(),
        "the machine's Docker shows {marker}"
    );
    let h = Harness::new("own", Engine::Rootless);
    let api = "curl -s --unix-socket /var/run/docker.sock";
    let request = h.main_job(&[
        &format!("{api} http://localhost/version | grep -o 'Podman Engine'"),
        &format!("{api} 'http://localhost/containers/json?all=1' > /tmp/list; grep -o 'flotilla-cjr-own-[0-9a-f]*-main' /tmp/list"),
        &format!("grep -c {marker} /tmp/list || true"),
    ]);
    let during = std::sync::Arc::new(Mutex::new(None));
    let seen = during.clone();
    let user = containers::rootless_user();
    let watch = move |event: &LogEvent, _: &std::sync::Arc<agent::job::JobControl>| {
        if matches!(event, LogEvent::CmdStarted { directive, .. } if directive.contains("/version"))
        {
            let runtime_dirs = containers::engine_run_dirs().len();
            *seen.lock().unwrap() = Some((containers::user_processes(&user).len(), runtime_dirs));
        }
    };
    let (result, events) = h.run_with(&request, watch);
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &marker])
        .output();
    assert_eq!(result, JobResult::Passed, "{:#?}", simplified(&events));
    let output = outputs(&events);
    assert!(output.contains("Podman Engine\n"), "{output}");
    assert!(output.contains("flotilla-cjr-own-"), "{output}");
    assert!(
        output.contains("\n0\n"),
        "the job saw the machine's container: {output}"
    );
    let (processes, runtime_dirs) = during.lock().unwrap().expect("the watch saw the job run");
    assert!(
        processes >= 3,
        "the engine's processes during the job: {processes}"
    );
    assert!(
        runtime_dirs >= 1,
        "the engine's run directory during the job"
    );
    // That nothing is left afterwards, run_with checked while the job's turn still held.
}

/// A machine that cannot run the job's engine fails the job before anything starts, with a
/// `Preparing the job executor` line that says what to do: no job user, a job user without
/// subordinate ids, no Podman on the job's `PATH`.
#[test]
fn rootless_without_what_the_engine_needs_fails_clearly() {
    let mut h = Harness::new("no-user", Engine::Rootless);
    h.options.job_user = None;
    h.check(
        &h.main_job(&["echo never"]),
        JobResult::Failed,
        &prepare("The rootless container engine runs a job's containers as the job user, but this agent has no job-user. Set job-user, or container-engine: host.\n"),
    );

    let mut h = Harness::new("no-subids", Engine::Rootless);
    let mut nobody = agent::job_user::JobUser::lookup("nobody").unwrap();
    nobody.home = std::path::PathBuf::from("/");
    h.options.job_user = Some(nobody);
    h.check(
        &h.main_job(&["echo never"]),
        JobResult::Failed,
        &prepare("The job user 'nobody' has no subordinate uids in /etc/subuid, so its containers cannot have users of their own. Add a range: usermod --add-subuids 100000-165535 nobody\n"),
    );

    // A machine whose kernel refuses the job user a user namespace (a sysctl, or Ubuntu's AppArmor
    // rule): faked, since switching namespaces off here would switch them off for every test.
    let mut h = Harness::new("no-userns", Engine::Rootless);
    let fake = containers::tools(&[(
        "podman",
        "#!/bin/sh\necho 'Error: cannot set up namespace using \"/usr/bin/newuidmap\": exit status 1' >&2\nexit 125\n",
    )]);
    h.options.shell_env.retain(|(name, _)| name != "PATH");
    h.options.shell_env.push((
        "PATH".into(),
        format!("{}:/usr/bin:/bin", fake.path().display()),
    ));
    let (result, events) = h.run(&h.main_job(&["echo never"]));
    assert_eq!(result, JobResult::Failed);
    let output = outputs(&events);
    assert!(
        output.contains("does not let the job user make the user namespace")
            && output.contains("exit status 1"),
        "{output}"
    );

    let mut h = Harness::new("no-podman", Engine::Rootless);
    let bin = containers::tools(&[]);
    h.options.shell_env.retain(|(name, _)| name != "PATH");
    h.options
        .shell_env
        .push(("PATH".into(), bin.path().display().to_string()));
    h.check(
        &h.main_job(&["echo never"]),
        JobResult::Failed,
        &prepare("No container engine: 'podman' is not installed on this machine (apt-get install podman), or run the agent with container-engine: host.\n"),
    );
}

/// What the job can do with its engine's socket: make a container with the machine's
/// `/` mounted. On the machine's Docker that container reads a file only root may read (the
/// socket is root-equivalent, which is why `JobDockerAccess` says so); on the rootless engine the
/// same request gets the job user's rights and nothing more. A world-readable file beside it is
/// read on both (the mount works, so the refusal is the engine's user namespace).
fn the_socket_in_main_is_as_strong_as_its_engine(engine: Engine) {
    let dir = tempfile::Builder::new()
        .prefix("flotilla-ci-host-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (secret, public) = (dir.path().join("secret"), dir.path().join("public"));
    std::fs::write(&secret, "ROOT-ONLY-CONTENT\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(&public, "WORLD-READABLE-CONTENT\n").unwrap();
    std::fs::set_permissions(&public, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let h = Harness::new("mount-host", engine);
    let read = |path: &std::path::Path| {
        format!(
            "S=/var/run/docker.sock; api() {{ curl -s --unix-socket $S -H 'Content-Type: application/json' \"$@\"; }}; \
             ID=$(api -d '{{\"Image\":\"{image}\",\"Cmd\":[\"cat\",\"/host{path}\"],\"HostConfig\":{{\"Binds\":[\"/:/host\"]}}}}' http://localhost/containers/create | grep -o '\"Id\":\"[0-9a-f]*\"' | cut -d'\"' -f4); \
             api -X POST http://localhost/containers/$ID/start; api -X POST http://localhost/containers/$ID/wait >/dev/null; \
             api \"http://localhost/containers/$ID/logs?stdout=1&stderr=1\" | tr -cd '[:print:]\\n'; api -X DELETE \"http://localhost/containers/$ID?force=true\"",
            image = job_image(),
            path = path.display()
        )
    };
    let (result, events) = h.run(&h.main_job(&[&read(&public), &read(&secret)]));
    assert_eq!(result, JobResult::Passed, "{:#?}", simplified(&events));
    let output = outputs(&events);
    assert!(output.contains("WORLD-READABLE-CONTENT"), "{output}");
    match engine {
        Engine::Host => assert!(output.contains("ROOT-ONLY-CONTENT"), "{output}"),
        Engine::Rootless => {
            assert!(!output.contains("ROOT-ONLY-CONTENT"), "{output}");
            assert!(output.contains("Permission denied"), "{output}");
        }
    }
}

/// `agent self-test --engine-user USER` (the image's last build step) starts and tears down the
/// rootless engine as that user: it passes for the tests' job user, leaves nothing of it, and fails
/// for a user without subordinate ids, saying so.
#[test]
fn rootless_self_test_starts_and_tears_down_the_engine() {
    let options = |user: &str| agent::selftest::SelfTestOptions {
        units_dir: std::path::PathBuf::from("/nonexistent"),
        scripts_dir: std::path::PathBuf::from("/nonexistent"),
        imds_endpoint: String::new(),
        gpu: false,
        docker_image: String::new(),
        engine_user: user.to_string(),
        toolbox_user: String::new(),
    };
    let engine_check = |user: &str| {
        agent::selftest::run_checks(&options(user))
            .into_iter()
            .find(|check| check.name == "rootless container engine")
            .expect("the engine is checked")
    };
    let _turn = job_users::turn(containers::ROOTLESS_USER);
    let passed = engine_check(containers::ROOTLESS_USER);
    assert!(passed.ok, "{passed:?}");
    assert!(passed.detail.contains("answered in"), "{passed:?}");
    let user = containers::rootless_user();
    assert_eq!(containers::user_processes(&user), Vec::<String>::new());
    assert_eq!(containers::engine_run_dirs(), Vec::<String>::new());
    let failed = engine_check("nobody");
    assert!(!failed.ok, "{failed:?}");
    assert!(failed.detail.contains("no subordinate uids"), "{failed:?}");
}

/// A TCP listener on every address of this machine that answers each connection `REACHED`.
struct Listener {
    port: u16,
}

impl Listener {
    fn start() -> Listener {
        let v4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        let serve = |listener: std::net::TcpListener| {
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    use std::io::Write;
                    let mut stream = stream;
                    let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nREACHED\n");
                }
            });
        };
        serve(v4);
        Listener { port }
    }
}

/// This machine's IPv4 address (the source of its default route).
fn host_v4() -> String {
    let output = std::process::Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut words = text.split_whitespace();
    words.find(|word| *word == "src");
    words
        .next()
        .unwrap_or_else(|| panic!("no source address in {text}"))
        .to_string()
}

/// An `OUTPUT` rule that resets the job user's connections to `address:port`; removed when
/// dropped.
struct OwnerRule {
    args: Vec<String>,
}

impl OwnerRule {
    fn add(address: &str, port: u16) -> OwnerRule {
        let args: Vec<String> = [
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            address,
            "--dport",
            &port.to_string(),
            "-m",
            "owner",
            "--uid-owner",
            containers::ROOTLESS_USER,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]
        .map(str::to_string)
        .to_vec();
        let status = std::process::Command::new("iptables")
            .args(["-w", "-I"])
            .args(&args)
            .status()
            .unwrap();
        assert!(status.success(), "iptables -I {args:?}");
        OwnerRule { args }
    }
}

impl Drop for OwnerRule {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args(["-w", "-D"])
            .args(&self.args)
            .status();
    }
}

/// A pull that runs out of disk (the job's engine storage on a 24 MB file system) fails the job
/// with the engine's words and a line saying what to do, and leaves nothing behind; the same pull
/// with room passes (the positive control: the registry and the image are fine).
#[test]
fn rootless_a_full_disk_during_the_pull_fails_with_what_to_do() {
    let registry = containers::Registry::start();
    let reference = registry.push(fat_image(), "flotilla-test-fat");
    let job = |h: &Harness| {
        h.job(
            &[("main", reference.as_str())],
            &["test -s /fat && echo fat"],
        )
    };
    let roomy = Harness::new("pull-room", Engine::Rootless);
    let (result, events) = roomy.run(&job(&roomy));
    assert_eq!(result, JobResult::Passed, "{:#?}", simplified(&events));
    let roomy_text = outputs(&events);
    assert!(roomy_text.contains("fat\n"), "{roomy_text}");
    assert!(
        !roomy_text.contains(agent::compose::DISK_FULL_HINT),
        "{roomy_text}"
    );

    let full = Harness::new("pull-full", Engine::Rootless);
    let _small = SmallDisk::mount(full.scratch.path(), "24m");
    let (result, events) = full.run(&job(&full));
    let text = outputs(&events);
    assert_eq!(result, JobResult::Failed, "{:#?}", simplified(&events));
    assert!(text.contains("no space left on device"), "{text}");
    assert!(text.contains(agent::compose::DISK_FULL_HINT), "{text}");
}

/// A small tmpfs over a directory for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0711"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs on {}", path.display());
        SmallDisk(path.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Container traffic on the rootless engine leaves as the job user's own (slirp4netns is a process
/// of the job user), so a rule on the job user's connections, such as the sealed instance's
/// metadata rule, holds for it; on the machine's Docker it is forwarded traffic, which no owner
/// rule sees (the sealed instance's `DOCKER-USER` drop exists for that). Without the rule `main`
/// reaches the listener on both engines (the positive control), and root still does with it.
/// IPv6 has no route out of either engine's network.
#[test]
fn rootless_container_traffic_is_the_job_users_own() {
    let listener = Listener::start();
    let address = host_v4();
    let url = format!("http://{address}:{}/", listener.port);
    let fetch = format!("curl -s -m 5 {url} || echo BLOCKED-v4");
    let v6 = "curl -s -m 5 -6 'http://[fd00:ec2::254]/' || echo NO-ROUTE-v6";
    let run = |engine: Engine, name: &str| {
        let h = Harness::new(name, engine);
        let (result, events) = h.run(&h.main_job(&[&fetch, v6]));
        assert_eq!(result, JobResult::Passed, "{:#?}", simplified(&events));
        outputs(&events)
    };
    for engine in [Engine::Rootless, Engine::Host] {
        let output = run(engine, "traffic-open");
        assert!(
            output.contains("REACHED"),
            "{engine:?} without the rule: {output}"
        );
        assert!(output.contains("NO-ROUTE-v6"), "{engine:?}: {output}");
    }
    let _rule = OwnerRule::add(&address, listener.port);
    let root = std::process::Command::new("curl")
        .args(["-s", "-m", "5", &url])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&root.stdout).contains("REACHED"),
        "root is let through"
    );
    let rootless = run(Engine::Rootless, "traffic-ruled");
    assert!(rootless.contains("BLOCKED-v4"), "{rootless}");
    assert!(!rootless.contains("REACHED"), "{rootless}");
    let host = run(Engine::Host, "traffic-ruled");
    assert!(
        host.contains("REACHED"),
        "the machine's Docker forwards past owner rules: {host}"
    );
}

/// A shell job on the rootless engine gets the engine too (`DOCKER_HOST` is the job's own Podman):
/// its `docker run` runs a baked image, its `docker ps` sees only its own containers, and after
/// the job nothing of the engine is left. On the machine's Docker a shell job's environment is
/// left as it was (no `DOCKER_HOST`).
#[test]
fn rootless_shell_jobs_get_an_engine_of_their_own() {
    let shell_job = |h: &Harness, commands_: &[&str]| JobRequest {
        job_id: h.job_id.clone(),
        commands: commands(commands_),
        ..JobRequest::default()
    };
    let h = Harness::new("shell-engine", Engine::Rootless);
    let run = format!(
        "docker run --rm {} cat /etc/flotilla-test-image",
        job_image()
    );
    let request = shell_job(
        &h,
        &[
            "docker version --format '{{.Server.Components}}' | grep -o 'Podman Engine'",
            &run,
            "docker ps -a --format '{{.Names}}' | wc -l",
        ],
    );
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed, "{:#?}", simplified(&events));
    let output = outputs(&events);
    assert!(output.contains("Podman Engine\n"), "{output}");
    assert!(output.contains("job image\n"), "{output}");
    assert!(
        output.ends_with("0\n") || output.contains("\n0\n"),
        "{output}"
    );

    let mut h = Harness::new("shell-no-engine", Engine::Host);
    h.options
        .shell_env
        .retain(|(name, _)| name != "DOCKER_HOST");
    let request = shell_job(&h, &["echo \"DOCKER_HOST=${DOCKER_HOST:-unset}\""]);
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed, "{:#?}", simplified(&events));
    assert!(
        outputs(&events).contains("DOCKER_HOST=unset\n"),
        "{}",
        outputs(&events)
    );
}

/// A pull that prints nothing for `container-pull-stall-timeout` (a registry that accepts and never
/// answers; here a Compose that stalls at the pull's `run` and passes every other call on) is
/// stopped: the job fails with a line that says what to check, and nothing of it is left running.
#[test]
fn a_pull_that_stalls_is_stopped_with_a_line_saying_why() {
    let stall = |real: Option<std::path::PathBuf>| {
        let real = real
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "false".into());
        format!(
            "#!/bin/bash\ncase \" $* \" in *\" run --rm main true \"*) echo 'Pulling main...'; exec sleep 600;; esac\nexec {real} \"$@\"\n"
        )
    };
    let fakes = containers::tools(&[
        ("docker", &stall(containers::which("docker"))),
        (
            "docker-compose",
            &stall(containers::which("docker-compose")),
        ),
    ]);
    let mut h = Harness::new("stall", Engine::Host);
    let path = std::env::var("PATH").unwrap_or_default();
    h.options.shell_env.retain(|(name, _)| name != "PATH");
    h.options
        .shell_env
        .push(("PATH".into(), format!("{}:{path}", fakes.path().display())));
    h.options.compose.pull_stall_timeout = Some(Duration::from_secs(2));
    let sleeping = || {
        let found = std::process::Command::new("pgrep")
            .args(["-f", "^sleep 600$"])
            .output()
            .unwrap();
        !found.stdout.is_empty()
    };
    // While the pull stalls, its process is there to be seen (so that its absence later means
    // something).
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saw = seen.clone();
    let watch = move |event: &LogEvent, _: &std::sync::Arc<agent::job::JobControl>| {
        if matches!(event, LogEvent::CmdOutput { output, .. } if output.contains("Pulling main")) {
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while !sleeping() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            saw.store(sleeping(), std::sync::atomic::Ordering::SeqCst);
        }
    };
    let started = std::time::Instant::now();
    let (result, events) = h.run_with(&h.main_job(&["echo never"]), watch);
    assert!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        "the stalled pull was never seen"
    );
    assert_eq!(result, JobResult::Failed, "{:#?}", simplified(&events));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let log = simplified(&events);
    assert!(log.contains(&"Pulling main...\n".to_string()), "{log:#?}");
    assert!(
        log.iter()
            .any(|line| line.starts_with("The pull printed nothing for 2 s and was stopped")),
        "{log:#?}"
    );
    assert!(!sleeping(), "the stalled pull is still running");
}
