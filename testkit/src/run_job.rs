//! Running one job in-process with an observer that collects its command output, for the tests
//! that check what a job can see or leaves behind (`job_user.rs`, `red_team_files.rs`): they set
//! up the job's options differently but run and read it back the same way, so that part lives
//! here once.

use agent::job::{run_job, JobControl, JobOptions};
use agent::joblog::JobLog;
use protocol::{JobRequest, JobResult, LogEvent};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Runs `request` under `options`, its job log in `scratch`; returns the result and the job's
/// command output.
pub fn run_collecting_output(
    request: &JobRequest,
    options: &JobOptions,
    scratch: &Path,
) -> (JobResult, String) {
    let output = Arc::new(Mutex::new(String::new()));
    let sink = output.clone();
    let observer: agent::joblog::Observer = Box::new(move |event: &LogEvent| {
        if let LogEvent::CmdOutput { output, .. } = event {
            sink.lock().unwrap().push_str(output);
        }
    });
    let log = JobLog::create(scratch.join("job_log.json"), Some(observer)).unwrap();
    let result = run_job(request, options, &log, &JobControl::new());
    log.close();
    let text = output.lock().unwrap().clone();
    (result, text)
}
