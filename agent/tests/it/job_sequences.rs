//! The shell executor's job log, event by event, for every upstream test sequence that applies to
//! the shell executor (docs/protocol.md §9.4), run through a real PTY and bash. Lenient upstream
//! checks are exact here, and the vacuous ones (background processes killed, the on-fail result)
//! check what they claim to.

use testkit::log;
use testkit::sequences;

use agent::job::{job_environment, run_job, JobControl, JobOptions};
use agent::joblog::JobLog;
use protocol::{Command, EnvVar, File, JobRequest, JobResult, LogEvent};
use sequences::*;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

struct Harness {
    home: tempfile::TempDir,
    scratch: tempfile::TempDir,
    options: JobOptions,
}

impl Harness {
    fn new() -> Harness {
        let home = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = job_environment(std::env::vars())
            .into_iter()
            .filter(|(name, _)| name != "HOME")
            .collect();
        env.push(("HOME".into(), home.path().display().to_string()));
        let options = JobOptions {
            shell_env: env,
            scratch_root: scratch.path().to_path_buf(),
            ..JobOptions::default()
        };
        Harness {
            home,
            scratch,
            options,
        }
    }

    fn home(&self) -> String {
        self.home.path().display().to_string()
    }

    fn hook(&self, name: &str, body: &str) -> String {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        path.display().to_string()
    }

    fn run(&self, request: &JobRequest) -> (JobResult, Vec<LogEvent>) {
        self.run_with(request, |_, _| {})
    }

    /// Runs the job; `watch` sees every event with the control, e.g. to stop the job.
    fn run_with(&self, request: &JobRequest, watch: impl Watch) -> (JobResult, Vec<LogEvent>) {
        let log_path = self.scratch.path().join("job_log.json");
        let (result, observed, log) = run_watched(request, &self.options, &log_path, watch);
        let from_file = log.read_events().unwrap();
        assert_eq!(
            from_file, observed,
            "the NDJSON file holds exactly the observed events"
        );
        (result, observed)
    }
}

fn job(commands: &[&str]) -> JobRequest {
    JobRequest {
        job_id: "test-job".into(),
        commands: commands.iter().map(|c| Command::new(*c)).collect(),
        logger: protocol::Logger {
            method: "push".into(),
            ..Default::default()
        },
        ..JobRequest::default()
    }
}

/// Processes whose command line is exactly `cmdline` (NUL-separated argv joined by spaces).
fn processes_running(cmdline: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|raw| {
            let text: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            text.join(" ") == cmdline
        })
        .count()
}

fn unique_sleep() -> String {
    format!("sleep {}", 4000 + rand_u16() as u32)
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 60000) as u16
}

#[test]
fn env_vars_are_available_to_commands() {
    let h = Harness::new();
    let mut request = job(&["echo -n $A", "echo -n $B", "echo -n $C"]);
    request.env_vars = env(&[("A", "VALUE_A"), ("B", "VALUE_B")]);
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&["A", "B"]),
            inject(),
            cmd("echo -n $A", &["VALUE_A"], 0),
            cmd("echo -n $B", &["VALUE_B"], 0),
            cmd("echo -n $C", &[], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

fn epilogue_block(label: &str, result: &str) -> Vec<String> {
    log![
        cmd(&format!("echo -n '{label}'"), &[label], 0),
        cmd("echo -n $A", &["VALUE_A"], 0),
        cmd("echo -n $B", &["VALUE_B"], 0),
        cmd("echo -n $C", &[], 0),
        cmd("echo -n $SEMAPHORE_JOB_RESULT", &[result], 0),
    ]
}

fn epilogue_commands(label: &str) -> Vec<Command> {
    let first = format!("echo -n '{label}'");
    commands(&[
        &first,
        "echo -n $A",
        "echo -n $B",
        "echo -n $C",
        "echo -n $SEMAPHORE_JOB_RESULT",
    ])
}

#[test]
fn env_vars_are_available_to_epilogue_always_and_on_pass() {
    let h = Harness::new();
    let mut request = job(&[]);
    request.env_vars = env(&[("A", "VALUE_A"), ("B", "VALUE_B")]);
    request.epilogue_always_commands = epilogue_commands("On EpilogueAlways");
    request.epilogue_on_pass_commands = epilogue_commands("On EpilogueOnPass");
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&["A", "B"]),
            inject(),
            result_export(),
            epilogue_block("On EpilogueAlways", "passed"),
            epilogue_block("On EpilogueOnPass", "passed"),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn env_vars_are_available_to_epilogue_always_and_on_fail() {
    let h = Harness::new();
    let mut request = job(&["badcommand"]);
    request.env_vars = env(&[("A", "VALUE_A"), ("B", "VALUE_B")]);
    request.epilogue_always_commands = epilogue_commands("On EpilogueAlways");
    request.epilogue_on_fail_commands = epilogue_commands("On EpilogueOnFail");
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Failed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&["A", "B"]),
            inject(),
            ["directive: badcommand", OUTPUT, "Exit Code: 127"],
            result_export(),
            epilogue_block("On EpilogueAlways", "failed"),
            epilogue_block("On EpilogueOnFail", "failed"),
            ["job_finished: failed"],
        ],
    );
}

fn labelled_epilogues(request: &mut JobRequest) {
    request.epilogue_always_commands = commands(&["echo -n 'On epilogue always'"]);
    request.epilogue_on_pass_commands = commands(&["echo -n 'On epilogue on pass'"]);
    request.epilogue_on_fail_commands = commands(&["echo -n 'On epilogue on fail'"]);
}

#[test]
fn epilogue_on_pass_only_executes_on_successful_job() {
    let h = Harness::new();
    let mut request = job(&["echo -n 'hello'"]);
    labelled_epilogues(&mut request);
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("echo -n 'hello'", &["hello"], 0),
            result_export(),
            cmd("echo -n 'On epilogue always'", &["On epilogue always"], 0),
            cmd("echo -n 'On epilogue on pass'", &["On epilogue on pass"], 0),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn epilogue_on_fail_only_executes_on_failed_job() {
    let h = Harness::new();
    let mut request = job(&["badcommand"]);
    labelled_epilogues(&mut request);
    let (result, events) = h.run(&request);
    // Upstream's expected list ends with `job_finished: passed`, unchecked; the real result is failed.
    assert_eq!(result, JobResult::Failed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            ["directive: badcommand", OUTPUT, "Exit Code: 127"],
            result_export(),
            cmd("echo -n 'On epilogue always'", &["On epilogue always"], 0),
            cmd("echo -n 'On epilogue on fail'", &["On epilogue on fail"], 0),
            ["job_finished: failed"],
        ],
    );
}

#[test]
fn command_aliases_show_the_alias_and_a_running_line() {
    let h = Harness::new();
    let mut request = job(&[]);
    request.commands = vec![Command {
        directive: "echo -n 'hello world'".into(),
        alias: "Display Hello World".into(),
    }];
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd(
                "Display Hello World",
                &["Running: echo -n 'hello world'\n", "hello world"],
                0
            ),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn stop_job_kills_the_command_and_skips_the_rest() {
    let h = Harness::new();
    let request = job(&["sleep 60", "echo -n 'hello'"]);
    let started = Instant::now();
    let (result, events) = h.run_with(
        &request,
        stop_when_started("sleep 60", Duration::from_millis(300)),
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the stop ended the sleep"
    );
    assert_eq!(result, JobResult::Stopped);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("sleep 60", &[], 1),
            ["job_finished: stopped"]
        ],
    );
}

#[test]
fn stop_job_kills_background_processes_too() {
    let h = Harness::new();
    let background = unique_sleep();
    let first = format!("{background} &");
    let request = job(&[&first, "sleep 60"]);
    let (result, _) = h.run_with(
        &request,
        stop_when_started("sleep 60", Duration::from_millis(300)),
    );
    assert_eq!(result, JobResult::Stopped);
    assert_eq!(
        processes_running(&background),
        0,
        "the background process was killed with the job"
    );
}

#[test]
fn exit_code_130_stops_the_job() {
    let h = Harness::new();
    let (result, events) = h.run(&job(&["echo 'exit 130' | sh", "echo -n 'hello'"]));
    assert_eq!(result, JobResult::Stopped);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("echo 'exit 130' | sh", &[], 130),
            cmd(
                "Checking job result",
                &["SEMAPHORE_JOB_RESULT is set to '' - stopping job and marking it as stopped"],
                0
            ),
            ["job_finished: stopped"],
        ],
    );
}

#[test]
fn exit_code_130_with_result_set_to_passed_or_failed() {
    for (value, expected) in [("passed", JobResult::Passed), ("failed", JobResult::Failed)] {
        let h = Harness::new();
        let set = format!("export SEMAPHORE_JOB_RESULT={value}");
        let (result, events) = h.run(&job(&[&set, "echo 'exit 130' | sh", "echo -n 'hello'"]));
        assert_eq!(result, expected);
        let message =
            format!("SEMAPHORE_JOB_RESULT={value} - stopping job and marking it as {value}");
        assert_log(
            &events,
            &log![
                ["job_started"],
                export(&[]),
                inject(),
                cmd(&set, &[], 0),
                cmd("echo 'exit 130' | sh", &[], 130),
                cmd("Checking job result", &[&message], 0),
                [format!("job_finished: {value}")],
            ],
        );
    }
}

#[test]
fn stop_job_during_epilogue() {
    let h = Harness::new();
    let mut request = job(&["echo -n 'hello'"]);
    request.epilogue_always_commands = commands(&["sleep 60"]);
    let (result, events) = h.run_with(
        &request,
        stop_when_started("sleep 60", Duration::from_millis(300)),
    );
    assert_eq!(result, JobResult::Stopped);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("echo -n 'hello'", &["hello"], 0),
            result_export(),
            cmd("sleep 60", &[], 1),
            ["job_finished: stopped"],
        ],
    );
}

#[test]
fn stty_echo_does_not_leak_commands_into_the_log() {
    let h = Harness::new();
    let (result, events) = h.run(&job(&["stty echo", "echo Hello World"]));
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("stty echo", &[], 0),
            cmd("echo Hello World", &["Hello World\n"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn background_job_is_killed_after_the_job_is_done() {
    let h = Harness::new();
    let background = unique_sleep();
    let first = format!("{background} > /dev/null &");
    let check = format!("pgrep -f '^{background}$' > /dev/null && true");
    let (result, events) = h.run(&job(&[&first, "sleep 1", &check]));
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd(&first, &[], 0),
            cmd("sleep 1", &[], 0),
            cmd(&check, &[], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
    // Upstream's follow-up check is vacuous; this one is not.
    assert_eq!(
        processes_running(&background),
        0,
        "'{background}' outlived its job"
    );
}

#[test]
fn killing_the_root_bash_fails_every_later_command() {
    let h = Harness::new();
    let background = unique_sleep();
    let first = format!("{background} &");
    let (result, events) = h.run(&job(&[&first, "exit 1"]));
    assert_eq!(result, JobResult::Failed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd(&first, &[], 0),
            cmd("exit 1", &[], 1),
            cmd(
                "Exporting environment variables",
                &["Exporting SEMAPHORE_JOB_RESULT\n"],
                1
            ),
            ["job_finished: failed"],
        ],
    );
    assert_eq!(processes_running(&background), 0);
}

#[test]
fn bash_set_e() {
    let h = Harness::new();
    let (result, events) = h.run(&job(&["sleep infinity &", "set -e", "false"]));
    assert_eq!(result, JobResult::Failed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("sleep infinity &", &[], 0),
            cmd("set -e", &[], 0),
            cmd("false", &[], 1),
            cmd(
                "Exporting environment variables",
                &["Exporting SEMAPHORE_JOB_RESULT\n"],
                1
            ),
            ["job_finished: failed"],
        ],
    );
}

#[test]
fn bash_set_pipefail() {
    let h = Harness::new();
    let (result, events) = h.run(&job(&[
        "sleep infinity &",
        "set -eo pipefail",
        "cat non_existant | sort",
    ]));
    assert_eq!(result, JobResult::Failed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("sleep infinity &", &[], 0),
            cmd("set -eo pipefail", &[], 0),
            cmd(
                "cat non_existant | sort",
                &["cat: non_existant: No such file or directory\n"],
                1
            ),
            cmd(
                "Exporting environment variables",
                &["Exporting SEMAPHORE_JOB_RESULT\n"],
                1
            ),
            ["job_finished: failed"],
        ],
    );
}

const PROCEED: &str =
    "Warning: The agent is configured to proceed with the job even if the pre-job hook fails.\n";
const PRE_HOOK: &str = "directive: Running the pre-job hook configured in the agent";
const POST_HOOK: &str = "directive: Running the post-job hook configured in the agent";

#[test]
fn pre_job_hook_runs_before_the_commands() {
    let mut h = Harness::new();
    h.options.pre_job_hook_path = h.hook("pre.sh", "echo -n 'hello from pre-job hook'");
    let (result, events) = h.run(&job(&["echo -n 'hello'"]));
    assert_eq!(result, JobResult::Passed);
    let running = format!("Running: bash {}\n", h.options.pre_job_hook_path);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            [
                PRE_HOOK,
                running.as_str(),
                PROCEED,
                "hello from pre-job hook",
                "Exit Code: 0"
            ],
            cmd("echo -n 'hello'", &["hello"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn post_job_hook_runs_after_the_epilogues() {
    let mut h = Harness::new();
    h.options.post_job_hook_path = h.hook("post.sh", "echo 'hello from post-job hook'");
    let mut request = job(&["echo -n 'hello'"]);
    request.epilogue_always_commands = commands(&["echo -n 'On EpilogueAlways'"]);
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("echo -n 'hello'", &["hello"], 0),
            result_export(),
            cmd("echo -n 'On EpilogueAlways'", &["On EpilogueAlways"], 0),
            [
                POST_HOOK,
                IGNORE_ONE,
                "hello from post-job hook\n",
                "Exit Code: 0"
            ],
            ["job_finished: passed"],
        ],
    );
}

const ENV_HOOK: &str = "echo -n $A\necho -n ' - '\necho -n $B\n";

#[test]
fn pre_job_hook_sees_job_env_vars_and_its_writes_merge_into_one_event() {
    let mut h = Harness::new();
    h.options.pre_job_hook_path = h.hook("pre.sh", ENV_HOOK);
    let mut request = job(&["echo -n 'hello'"]);
    request.env_vars = env(&[("A", "VALUE_A"), ("B", "VALUE_B")]);
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&["A", "B"]),
            inject(),
            [
                PRE_HOOK,
                IGNORE_ONE,
                PROCEED,
                "VALUE_A - VALUE_B",
                "Exit Code: 0"
            ],
            cmd("echo -n 'hello'", &["hello"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn post_job_hook_sees_job_env_vars() {
    let mut h = Harness::new();
    h.options.post_job_hook_path = h.hook("post.sh", ENV_HOOK);
    let mut request = job(&["echo -n 'hello'"]);
    request.env_vars = env(&[("A", "VALUE_A"), ("B", "VALUE_B")]);
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&["A", "B"]),
            inject(),
            cmd("echo -n 'hello'", &["hello"], 0),
            result_export(),
            [POST_HOOK, IGNORE_ONE, "VALUE_A - VALUE_B", "Exit Code: 0"],
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn failing_pre_job_hook_fails_the_job_when_configured() {
    let mut h = Harness::new();
    h.options.pre_job_hook_path = h.hook("pre.sh", "badcommand");
    h.options.fail_on_pre_job_hook_error = true;
    let (result, events) = h.run(&job(&["echo -n 'hello'"]));
    assert_eq!(result, JobResult::Failed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            [
                PRE_HOOK,
                IGNORE_ONE,
                "Warning: The agent is configured to fail the job if the pre-job hook fails.\n",
                OUTPUT,
                "Exit Code: 127"
            ],
            result_export(),
            ["job_finished: failed"],
        ],
    );
}

#[test]
fn sourced_pre_job_hook_changes_the_job_shell() {
    let mut h = Harness::new();
    h.options.pre_job_hook_path = h.hook("pre.sh", "export FROM_HOOK=yes");
    h.options.source_pre_job_hook = true;
    let (result, events) = h.run(&job(&["echo -n $FROM_HOOK"]));
    assert_eq!(result, JobResult::Passed);
    let running = format!("Running: source {}\n", h.options.pre_job_hook_path);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            [PRE_HOOK, running.as_str(), PROCEED, "Exit Code: 0"],
            cmd("echo -n $FROM_HOOK", &["yes"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn agent_env_vars_override_job_vars_and_are_not_reexported_for_epilogues() {
    let mut h = Harness::new();
    h.options.agent_env_vars = vec![
        (
            "IMPORTANT_HOST_VAR_A".into(),
            "IMPORTANT_HOST_VAR_A_VALUE".into(),
        ),
        (
            "IMPORTANT_HOST_VAR_B".into(),
            "IMPORTANT_HOST_VAR_B_VALUE".into(),
        ),
    ];
    let mut request = job(&[
        "echo -n 'On regular commands'",
        "echo -n $IMPORTANT_HOST_VAR_A",
        "echo -n $IMPORTANT_HOST_VAR_B",
        "echo -n $IMPORTANT_HOST_VAR_C",
    ]);
    request.env_vars = env(&[("IMPORTANT_HOST_VAR_A", "overridden")]);
    request.epilogue_always_commands = commands(&[
        "echo -n 'On epilogue always'",
        "echo -n $IMPORTANT_HOST_VAR_A",
    ]);
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&["IMPORTANT_HOST_VAR_A", "IMPORTANT_HOST_VAR_B"]),
            inject(),
            cmd("echo -n 'On regular commands'", &["On regular commands"], 0),
            cmd(
                "echo -n $IMPORTANT_HOST_VAR_A",
                &["IMPORTANT_HOST_VAR_A_VALUE"],
                0
            ),
            cmd(
                "echo -n $IMPORTANT_HOST_VAR_B",
                &["IMPORTANT_HOST_VAR_B_VALUE"],
                0
            ),
            cmd("echo -n $IMPORTANT_HOST_VAR_C", &[], 0),
            result_export(),
            cmd("echo -n 'On epilogue always'", &["On epilogue always"], 0),
            cmd(
                "echo -n $IMPORTANT_HOST_VAR_A",
                &["IMPORTANT_HOST_VAR_A_VALUE"],
                0
            ),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn env_var_values_are_quoted_not_expanded() {
    let mut h = Harness::new();
    h.options.agent_env_vars = vec![("C".into(), "CCC".into()), ("D".into(), "DDD".into())];
    let mut request = job(&[
        "echo -n $A",
        "echo -n $B",
        "echo -n $VAR_WITH_QUOTES",
        "echo -n $VAR_WITH_ENV_VAR",
        "echo -n $C",
        "echo -n $D",
        "echo -n $E",
    ]);
    request.env_vars = env(&[
        ("A", "AAA"),
        ("B", "BBB"),
        ("VAR_WITH_QUOTES", "quotes ' quotes"),
        ("VAR_WITH_ENV_VAR", "$PATH:/etc/a"),
    ]);
    let (_, events) = h.run(&request);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&["A", "B", "C", "D", "VAR_WITH_ENV_VAR", "VAR_WITH_QUOTES"]),
            inject(),
            cmd("echo -n $A", &["AAA"], 0),
            cmd("echo -n $B", &["BBB"], 0),
            cmd("echo -n $VAR_WITH_QUOTES", &["quotes ' quotes"], 0),
            cmd("echo -n $VAR_WITH_ENV_VAR", &["$PATH:/etc/a"], 0),
            cmd("echo -n $C", &["CCC"], 0),
            cmd("echo -n $D", &["DDD"], 0),
            cmd("echo -n $E", &[], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn files_are_injected_with_their_modes() {
    let h = Harness::new();
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = tmp.path().display().to_string();
    let home = h.home();
    let files = [
        (
            format!("{tmp_path}/absolute-file.txt"),
            format!("{tmp_path}/absolute-file.txt"),
            "absolute\n",
            "0400",
        ),
        (
            format!("{tmp_path}/somedir/absolute-file-missing-dir.txt"),
            format!("{tmp_path}/somedir/absolute-file-missing-dir.txt"),
            "absolute-in-missing-dir\n",
            "0440",
        ),
        (
            "somedir/relative-file.txt".to_string(),
            format!("{home}/somedir/relative-file.txt"),
            "relative\n",
            "0600",
        ),
        (
            "somedir/relative-file-in-missing-dir.txt".to_string(),
            format!("{home}/somedir/relative-file-in-missing-dir.txt"),
            "relative-in-missing-dir\n",
            "0644",
        ),
        (
            "~/home-file.txt".to_string(),
            format!("{home}/home-file.txt"),
            "home\n",
            "0777",
        ),
    ];
    let mut request = job(&[]);
    request.files = files
        .iter()
        .map(|(path, _, content, mode)| File::plain(path.clone(), content, *mode))
        .collect();
    request.commands = files
        .iter()
        .map(|(_, resolved, _, _)| Command::new(format!("cat {resolved}")))
        .collect();
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Passed);
    let mut expected = log![["job_started"], export(&[]), ["directive: Injecting Files"]];
    for (_, resolved, _, mode) in &files {
        expected.push(format!("Injecting {resolved} with file mode {mode}\n"));
    }
    expected.push("Exit Code: 0".into());
    for (_, resolved, content, _) in &files {
        expected.extend(cmd(&format!("cat {resolved}"), &[content], 0));
    }
    expected.extend(result_export());
    expected.push("job_finished: passed".into());
    assert_log(&events, &expected);
    for (_, resolved, _, mode) in &files {
        let actual = std::fs::metadata(resolved).unwrap().permissions().mode() & 0o777;
        assert_eq!(actual, u32::from_str_radix(mode, 8).unwrap(), "{resolved}");
    }
}

#[test]
fn bad_file_content_and_modes_fail_the_job_with_a_message() {
    let h = Harness::new();
    let mut request = job(&["echo never"]);
    request.files = vec![File {
        path: "a.txt".into(),
        content: "%%% not base64".into(),
        mode: "0644".into(),
    }];
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Failed);
    let injecting = format!("Injecting {}/a.txt with file mode 0644\n", h.home());
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            [
                "directive: Injecting Files",
                injecting.as_str(),
                "Failed to decode the content of the file.\n",
                "Exit Code: 1"
            ],
            result_export(),
            ["job_finished: failed"],
        ],
    );

    let mut request = job(&["echo never"]);
    request.files = vec![File::plain("b.txt", "x", "+x")];
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Failed);
    let injecting = format!("Injecting {}/b.txt with file mode +x\n", h.home());
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            [
                "directive: Injecting Files",
                injecting.as_str(),
                "bad file permission '+x'\n",
                "Exit Code: 1"
            ],
            result_export(),
            ["job_finished: failed"],
        ],
    );
}

#[test]
fn bad_env_var_encoding_fails_the_export() {
    let h = Harness::new();
    let mut request = job(&["echo never"]);
    request.env_vars = vec![EnvVar {
        name: "A".into(),
        value: "not-base64!".into(),
    }];
    let (result, events) = h.run(&request);
    assert_eq!(result, JobResult::Failed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            ["directive: Exporting environment variables", "Exit Code: 1"],
            result_export(),
            ["job_finished: failed"],
        ],
    );
}

#[test]
fn unsupported_executor_fails_with_a_job_log_message() {
    let h = Harness::new();
    for (executor, message) in [
        ("doesnotexist", "Unknown executor type 'doesnotexist': this agent supports the shell and dockercompose executors.\n"),
        // Upstream accepts the Kubernetes executor only from its own flag, never from a request.
        ("kubernetes", "Unknown executor type 'kubernetes': this agent supports the shell and dockercompose executors.\n"),
    ] {
        let mut request = job(&["echo never"]);
        request.executor = executor.into();
        let (result, events) = h.run(&request);
        assert_eq!(result, JobResult::Failed);
        assert_log(&events, &log![["job_started"], cmd("Preparing the job executor", &[message], 1), ["job_finished: failed"]]);
    }
}

#[test]
fn multiline_command() {
    let h = Harness::new();
    let multiline =
        "\n\t\tif [ -d /etc ]; then\n\t\t\techo 'etc exists, multiline huzzahh!'\n\t\tfi\n\t";
    let (_, events) = h.run(&job(&[multiline]));
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd(multiline, &["etc exists, multiline huzzahh!\n"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn shell_state_persists_between_commands() {
    let h = Harness::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("somedir")).unwrap();
    std::fs::write(dir.path().join("somedir/some-file.txt"), "x").unwrap();
    let cd = format!("cd {}", dir.path().display());
    let probe = "test -f somedir/some-file.txt && echo -n found || echo -n missing";
    let (result, events) = h.run(&job(&[
        probe,
        &cd,
        probe,
        "echo -n $IMPORTANT_VAR",
        "export IMPORTANT_VAR=IMPORTANT_VAR_VALUE",
        "echo -n $IMPORTANT_VAR",
        "unset IMPORTANT_VAR",
        "echo -n $IMPORTANT_VAR",
    ]));
    assert_eq!(result, JobResult::Passed);
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd(probe, &["missing"], 0),
            cmd(&cd, &[], 0),
            cmd(probe, &["found"], 0),
            cmd("echo -n $IMPORTANT_VAR", &[], 0),
            cmd("export IMPORTANT_VAR=IMPORTANT_VAR_VALUE", &[], 0),
            cmd("echo -n $IMPORTANT_VAR", &["IMPORTANT_VAR_VALUE"], 0),
            cmd("unset IMPORTANT_VAR", &[], 0),
            cmd("echo -n $IMPORTANT_VAR", &[], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn large_output_is_cut_into_events_of_at_most_1000_bytes_and_arrives_whole() {
    let h = Harness::new();
    let (_, events) = h.run(&job(&[
        "for i in {1..100}; { printf 'hello'; }",
        "head -c 250000 /dev/zero | tr '\\0' 'x'",
    ]));
    let outputs: Vec<&String> = events
        .iter()
        .filter_map(|e| {
            if let LogEvent::CmdOutput { output, .. } = e {
                Some(output)
            } else {
                None
            }
        })
        .filter(|output| !output.starts_with("Exporting "))
        .collect();
    let joined: String = outputs.iter().map(|s| s.as_str()).collect();
    let expected = format!("{}{}", "hello".repeat(100), "x".repeat(250_000));
    assert_eq!(
        joined.len(),
        expected.len(),
        "{:?}",
        &joined[joined.len().saturating_sub(200)..]
    );
    assert!(joined == expected);
    assert!(
        outputs.iter().all(|o| o.len() <= 1000),
        "no event exceeds 1000 bytes"
    );
    assert!(
        outputs.len() >= 250,
        "long output is cut into many events ({})",
        outputs.len()
    );
}

#[test]
fn output_written_apart_becomes_separate_events() {
    let h = Harness::new();
    let (_, events) = h.run(&job(&["echo one; sleep 0.5; echo two"]));
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd("echo one; sleep 0.5; echo two", &["one\n", "two\n"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
}

#[test]
fn unicode_output_is_never_split_inside_a_character() {
    let h = Harness::new();
    let japanese = "特定の伝説に拠る物語の由来については諸説存在し。".repeat(3);
    let line = "━".repeat(300);
    let first = format!("echo -n '{japanese}'");
    let second = format!("echo -n '{line}'");
    let (_, events) = h.run(&job(&[&first, &second]));
    let outputs: Vec<&String> = events
        .iter()
        .filter_map(|e| {
            if let LogEvent::CmdOutput { output, .. } = e {
                Some(output)
            } else {
                None
            }
        })
        .collect();
    assert!(
        outputs.iter().all(|o| !o.contains('\u{FFFD}')),
        "{outputs:?}"
    );
    let joined: String = outputs.iter().map(|s| s.as_str()).collect();
    assert!(joined.contains(&japanese) && joined.contains(&line));
}

#[test]
fn broken_unicode_becomes_one_replacement_character_per_byte() {
    let h = Harness::new();
    let command = "printf '\\226\\226\\226\\226\\226'";
    let (_, events) = h.run(&job(&[command]));
    assert_log(
        &events,
        &log![
            ["job_started"],
            export(&[]),
            inject(),
            cmd(command, &["\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"], 0),
            result_export(),
            ["job_finished: passed"],
        ],
    );
    // On the wire each invalid byte is the escape `\ufffd`, exactly as Go's encoder writes it.
    let file = std::fs::read_to_string(h.scratch.path().join("job_log.json")).unwrap();
    assert!(
        file.contains(r#""output":"\ufffd\ufffd\ufffd\ufffd\ufffd""#),
        "{file}"
    );
}

#[test]
fn job_shell_does_not_inherit_agent_secrets() {
    let mut h = Harness::new();
    let mut agent_env = h.options.shell_env.clone();
    agent_env.push(("SEMAPHORE_AGENT_TOKEN".into(), "registration-secret".into()));
    agent_env.push(("SEMAPHORE_AGENT_ENDPOINT".into(), "org.example.com".into()));
    h.options.shell_env = job_environment(agent_env);
    let (_, events) = h.run(&job(&[
        "echo -n \"${SEMAPHORE_AGENT_TOKEN:-unset} ${SEMAPHORE_AGENT_ENDPOINT:-unset}\"",
        "env | grep -c SEMAPHORE_AGENT_ || true",
    ]));
    let outputs = simplified(&events);
    assert!(outputs.contains(&"unset unset".to_string()), "{outputs:?}");
    assert!(outputs.contains(&"0\n".to_string()), "{outputs:?}");
}

#[test]
fn job_stopped_before_its_shell_starts_runs_nothing() {
    let h = Harness::new();
    let control = JobControl::new();
    control.stop();
    let log = JobLog::create(h.scratch.path().join("early.json"), None).unwrap();
    let result = run_job(&job(&["echo never"]), &h.options, &log, &control);
    assert_eq!(result, JobResult::Stopped);
    let names: Vec<String> = log
        .read_events()
        .unwrap()
        .iter()
        .map(LogEvent::simplified)
        .collect();
    assert_eq!(names, vec!["job_started", "job_finished: stopped"]);
}
