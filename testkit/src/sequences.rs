//! Upstream's simplified job-log notation (docs/protocol.md §9.2) for the event-by-event job
//! tests: a job's events as strings (`job_started`, `directive: X`, outputs verbatim, `Exit Code:
//! N`, `job_finished: R`), the blocks every job logs (export, inject, the result export), and one
//! exact comparison where upstream's helper is lenient. Shared by the shell and container tests.

use agent::job::{run_job, JobControl, JobOptions};
use agent::joblog::JobLog;
use protocol::{Command, EnvVar, JobRequest, JobResult, LogEvent};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Any items up to the next `Exit Code: ` (upstream's `*** OUTPUT ***`).
pub const OUTPUT: &str = "*** OUTPUT ***";
/// Exactly one item, whatever it is.
pub const IGNORE_ONE: &str = "*** IGNORE SINGLE LINE ***";

pub fn commands(list: &[&str]) -> Vec<Command> {
    list.iter().map(|c| Command::new(*c)).collect()
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<EnvVar> {
    pairs
        .iter()
        .map(|(name, value)| EnvVar::plain(*name, value))
        .collect()
}

pub fn simplified(events: &[LogEvent]) -> Vec<String> {
    events.iter().map(LogEvent::simplified).collect()
}

/// Expected items: literal strings, `OUTPUT` (any items up to the next `Exit Code: `), or
/// `IGNORE_ONE`. Lengths must match exactly.
pub fn assert_log(events: &[LogEvent], expected: &[String]) {
    let actual = simplified(events);
    let (mut a, mut e) = (0, 0);
    while e < expected.len() {
        match expected[e].as_str() {
            OUTPUT => {
                while a < actual.len() && !actual[a].starts_with("Exit Code: ") {
                    a += 1;
                }
            }
            IGNORE_ONE => a += 1,
            item => {
                assert!(
                    a < actual.len(),
                    "log ended early; expected {item:?}\nactual: {actual:#?}"
                );
                assert_eq!(actual[a], item, "item {a}\nactual: {actual:#?}");
                a += 1;
            }
        }
        e += 1;
    }
    assert_eq!(
        a,
        actual.len(),
        "unexpected trailing events\nactual: {actual:#?}"
    );
}

pub fn export(names: &[&str]) -> Vec<String> {
    let mut out = vec!["directive: Exporting environment variables".to_string()];
    out.extend(names.iter().map(|n| format!("Exporting {n}\n")));
    out.push("Exit Code: 0".into());
    out
}

pub fn inject() -> Vec<String> {
    vec!["directive: Injecting Files".into(), "Exit Code: 0".into()]
}

pub fn result_export() -> Vec<String> {
    export(&["SEMAPHORE_JOB_RESULT"])
}

pub fn cmd(directive: &str, outputs: &[&str], exit: i32) -> Vec<String> {
    let mut out = vec![format!("directive: {directive}")];
    out.extend(outputs.iter().map(|o| o.to_string()));
    out.push(format!("Exit Code: {exit}"));
    out
}

/// Concatenates blocks of expected items.
#[macro_export]
macro_rules! log {
    ($($part:expr),* $(,)?) => {{
        let mut all: Vec<String> = Vec::new();
        $( all.extend(IntoIterator::into_iter($part).map(|s| s.to_string())); )*
        all
    }};
}

/// Stops the job once a command with `directive` has started (after `delay`).
pub fn stop_when_started(
    directive: &'static str,
    delay: Duration,
) -> impl Fn(&LogEvent, &Arc<JobControl>) + Send + Sync {
    move |event, control| {
        if matches!(event, LogEvent::CmdStarted { directive: d, .. } if d == directive) {
            let control = control.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                control.stop();
            });
        }
    }
}

/// What sees every event of a job with its control, e.g. to stop the job.
pub trait Watch: Fn(&LogEvent, &Arc<JobControl>) + Send + Sync + 'static {}

impl<T: Fn(&LogEvent, &Arc<JobControl>) + Send + Sync + 'static> Watch for T {}

/// Runs `request` under `options`, its job log at `log_path`; `watch` sees every event with the
/// control, e.g. to stop the job. Returns the result, the events as observed, and the closed log.
pub fn run_watched(
    request: &JobRequest,
    options: &JobOptions,
    log_path: &Path,
    watch: impl Watch,
) -> (JobResult, Vec<LogEvent>, JobLog) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let control = Arc::new(JobControl::new());
    let (sink, watched_control) = (events.clone(), control.clone());
    let observer: agent::joblog::Observer = Box::new(move |event: &LogEvent| {
        sink.lock().unwrap().push(event.clone());
        watch(event, &watched_control);
    });
    let log = JobLog::create(log_path.to_path_buf(), Some(observer)).unwrap();
    let result = run_job(request, options, &log, &control);
    log.close();
    let observed = events.lock().unwrap().clone();
    (result, observed, log)
}
