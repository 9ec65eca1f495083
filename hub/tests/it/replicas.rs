//! Several hub replicas on one PostgreSQL database, in one process (the `scaler hub` processes,
//! a load balancer and `kill -9` are in scaler/tests/it/hub_replicas.rs): racing agents spread over
//! the replicas get each job exactly once; a token, a job and a log work through any replica; a
//! replica hears of another's commit through `NOTIFY`; only the leader sweeps, and another takes
//! over when it goes; an export of a SQLite hub imports into PostgreSQL with jobs, logs and
//! tokens intact. These need PostgreSQL whatever `FLOTILLA_TEST_STORE` says.

use testkit::stores;

use crate::core_support::{config, report};
use hub::hub::Hub;
use protocol::{AgentState, JobResult, JobSpec, JobState, RegisterRequest, SyncAction};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T0: i64 = 1_700_000_000;

fn spec(name: &str) -> JobSpec {
    JobSpec::from_commands("linux", &[format!("echo {name}")])
}

fn replicas(count: usize) -> Vec<Arc<Hub>> {
    let location = stores::new_database();
    (0..count)
        .map(|_| Arc::new(Hub::open_at(&location, config(), T0).unwrap()))
        .collect()
}

fn lines(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|index| {
            format!("{{\"event\":\"cmd_output\",\"timestamp\":{T0},\"output\":\"{index}\\n\"}}\n")
        })
        .collect()
}

/// One single-job agent's whole life, each call through the next replica in turn; returns the
/// job it was given.
fn agent_life(replicas: &[Arc<Hub>], registration_token: &str, index: usize) -> String {
    let hub = |step: usize| &replicas[(index + step) % replicas.len()];
    let request = RegisterRequest {
        name: format!("agent-{index}"),
        single_job: true,
        ..RegisterRequest::default()
    };
    let token = hub(0)
        .register(registration_token, request, T0)
        .unwrap()
        .token;
    let waiting = report(AgentState::WaitingForJobs, "", None);
    let answer = hub(1).sync(&token, &waiting, T0).unwrap();
    assert_eq!(answer.action, SyncAction::RunJob, "agent {index}");
    let job_id = answer.job_id;
    let log_token = hub(2)
        .job_request(&token, &job_id, T0)
        .unwrap()
        .logger
        .token;
    hub(3)
        .push_logs(&job_id, &log_token, 0, &lines(0, 3), T0)
        .unwrap();
    // The same batch again through another replica (a retry), then the rest.
    hub(4)
        .push_logs(&job_id, &log_token, 0, &lines(0, 3), T0)
        .unwrap();
    hub(5)
        .push_logs(&job_id, &log_token, 3, &lines(3, 2), T0)
        .unwrap();
    let running = report(AgentState::RunningJob, &job_id, None);
    hub(6).sync(&token, &running, T0 + 1).unwrap();
    let finished = report(AgentState::FinishedJob, &job_id, Some(JobResult::Passed));
    let answer = hub(7).sync(&token, &finished, T0 + 2).unwrap();
    assert_eq!(answer.action, SyncAction::Shutdown, "agent {index}");
    hub(8).disconnect(&token, T0 + 2).unwrap();
    job_id
}

#[test]
fn racing_agents_over_three_replicas_get_each_job_exactly_once() {
    const JOBS: usize = 60;
    let replicas = replicas(3);
    let registration_token = replicas[0].create_agent_type("linux", T0).unwrap();
    let submitted: Vec<String> = (0..JOBS)
        .map(|index| {
            replicas[index % 3]
                .submit(spec(&index.to_string()), T0)
                .unwrap()
                .id
        })
        .collect();
    let handed_out: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let threads: Vec<_> = (0..JOBS)
        .map(|index| {
            let (replicas, token) = (replicas.clone(), registration_token.clone());
            let handed_out = handed_out.clone();
            std::thread::spawn(move || {
                let job = agent_life(&replicas, &token, index);
                *handed_out.lock().unwrap().entry(job).or_default() += 1;
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let handed_out = handed_out.lock().unwrap();
    assert_eq!(handed_out.len(), JOBS, "every job handed out");
    assert!(
        handed_out.values().all(|&count| count == 1),
        "{handed_out:?}"
    );
    for (index, id) in submitted.iter().enumerate() {
        let job = replicas[index % 3].job(id).unwrap();
        assert_eq!(
            (job.state, job.result),
            (JobState::Finished, Some(JobResult::Passed))
        );
        assert_eq!(
            (job.attempts, job.log_lines),
            (1, 5),
            "job {id}: one attempt"
        );
        let page = replicas[(index + 1) % 3].logs(id, 0, 100).unwrap();
        let expected: Vec<String> = lines(0, 5).lines().map(str::to_string).collect();
        assert_eq!(page.lines, expected, "job {id}: each line once, in order");
    }
}

#[test]
fn a_replica_hears_of_another_replicas_job_through_notify() {
    let replicas = replicas(2);
    let registration_token = replicas[0].create_agent_type("linux", T0).unwrap();
    let signal = replicas[1].change_signal().expect("a shared store signals");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Whatever was announced before counts as heard.
    replicas[1].refresh(T0).unwrap();
    let _ = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(200), signal.notified()).await
    });
    replicas[1].refresh(T0).unwrap();
    let before = *replicas[1].subscribe_version().borrow();
    replicas[0].submit(spec("a"), T0).unwrap();
    let heard = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), signal.notified()).await });
    assert!(heard.is_ok(), "no NOTIFY within 5 s");
    assert!(replicas[1].refresh(T0).unwrap(), "news after the NOTIFY");
    assert!(
        *replicas[1].subscribe_version().borrow() > before,
        "the long-poll wakes"
    );
    let metrics = replicas[1].metrics(&registration_token, T0).unwrap();
    assert_eq!(metrics.jobs.queued, 1);
}

#[test]
fn only_the_leader_sweeps_and_another_replica_takes_over_when_it_goes() {
    let mut replicas = replicas(2);
    let registration_token = replicas[0].create_agent_type("linux", T0).unwrap();
    let request = RegisterRequest {
        name: "quiet".into(),
        ..RegisterRequest::default()
    };
    replicas[0]
        .register(&registration_token, request, T0)
        .unwrap();
    assert_eq!(
        replicas[0].maintain(T0).unwrap(),
        0,
        "replica 0 leads from now on"
    );
    let late = T0 + 10_000;
    assert_eq!(
        replicas[1].maintain(late).unwrap(),
        0,
        "replica 1 does not sweep"
    );
    assert_eq!(replicas[0].agents().len(), 1);
    drop(replicas.remove(0));
    // The leader's connection is gone, and with it the advisory lock.
    let mut lost = 0;
    for _ in 0..50 {
        lost = replicas[0].maintain(late).unwrap();
        if lost > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lost, 1, "the new leader finds the silent agent lost");
    assert!(replicas[0].agents().is_empty());
}

#[test]
fn a_sqlite_hub_moves_to_postgresql_with_its_jobs_logs_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Hub::open(dir.path(), config(), T0).unwrap();
    let registration_token = sqlite.create_agent_type("linux", T0).unwrap();
    let done = sqlite.submit(spec("done"), T0).unwrap().id;
    let waiting = sqlite.submit(spec("waiting"), T0).unwrap().id;
    let request = RegisterRequest {
        name: "mover".into(),
        ..RegisterRequest::default()
    };
    let token = sqlite
        .register(&registration_token, request, T0)
        .unwrap()
        .token;
    let idle = report(AgentState::WaitingForJobs, "", None);
    assert_eq!(sqlite.sync(&token, &idle, T0).unwrap().job_id, done);
    let log_token = sqlite.job_request(&token, &done, T0).unwrap().logger.token;
    sqlite
        .push_logs(&done, &log_token, 0, &lines(0, 4), T0)
        .unwrap();
    let finished = report(AgentState::FinishedJob, &done, Some(JobResult::Failed));
    sqlite.sync(&token, &finished, T0 + 1).unwrap();
    drop(sqlite);

    let source = hub::store::open(
        &hub::store::StoreLocation::Sqlite {
            data_dir: dir.path().to_path_buf(),
        },
        hub::store::Durability::Normal,
    )
    .unwrap();
    let mut export = Vec::new();
    let counts = hub::transfer::export(source.as_ref(), &mut export).unwrap();
    assert_eq!((counts.jobs, counts.log_lines, counts.agents), (2, 4, 1));
    let location = stores::new_database();
    let mut target = hub::store::open(&location, hub::store::Durability::Normal).unwrap();
    // A cut-off export is refused (and, this small, left nothing behind).
    let cut = &export[..export.len() - 10];
    assert!(hub::transfer::import(target.as_mut(), &mut &cut[..]).is_err());
    assert_eq!(
        hub::transfer::import(target.as_mut(), &mut &export[..]).unwrap(),
        counts
    );
    drop(target);

    let moved = Hub::open_at(&location, config(), T0 + 2).unwrap();
    let job = moved.job(&done).unwrap();
    assert_eq!(
        (job.state, job.result, job.log_lines),
        (JobState::Finished, Some(JobResult::Failed), 4)
    );
    assert_eq!(moved.logs(&done, 0, 10).unwrap().lines.len(), 4);
    // The agent's token still works, and the queued job goes on.
    assert_eq!(moved.sync(&token, &idle, T0 + 2).unwrap().job_id, waiting);
    let newer = moved.submit(spec("newer"), T0 + 2).unwrap();
    let listed: Vec<String> = moved
        .list_jobs(None, 10)
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(
        listed,
        [newer.id, waiting, done],
        "newest first: seq went on after the import"
    );
}
