//! The `Store` contract, stated once and run against both stores: this binary runs on SQLite, and
//! `.ci/run` runs it again on PostgreSQL (`FLOTILLA_TEST_STORE=postgres`, `testkit::stores`). Two
//! handles on one location stand for two hub replicas. What every store must do: a write from a
//! stale read changes nothing (and a fresh read's write goes through), `changes_since` returns
//! exactly what was committed after a revision, a retried log batch adds nothing twice, a finished
//! job's secrets are purged once, and an export imported into an empty store reads back the same.

use hub::store::{
    open, AgentRow, AgentStatus, Durability, InstanceRow, JobHolderRow, JobRow, LogCounts,
    NameRecord, Store, StoreError, StoreLocation,
};
use protocol::{AgentState, JobResult, JobState};
use std::cell::Cell;
use testkit::stores;

const NOW: i64 = 1_700_000_000;

/// A store at `location`, as a hub opens it.
fn handle(location: &StoreLocation) -> Box<dyn Store> {
    open(location, Durability::Normal).expect("open the store")
}

/// A new store and its location (a directory on SQLite, a database on PostgreSQL).
fn fresh() -> (tempfile::TempDir, StoreLocation) {
    let dir = tempfile::tempdir().unwrap();
    let location = stores::location(dir.path());
    (dir, location)
}

/// A stored queued job of the `linux` agent type (which it creates when missing).
fn stored_job(store: &mut dyn Store, id: &str) -> JobRow {
    store
        .insert_agent_type("linux", "hash-of-linux", NOW)
        .unwrap();
    let mut job = JobRow::queued(id.into(), "linux".into(), format!("spec of {id}"), NOW);
    let inserted = store.insert_job(&job).unwrap();
    job.seq = inserted.seq;
    job.revision = inserted.revision;
    job
}

/// A new registration of `name` (revision 0).
fn registered(name: &str) -> AgentRow {
    AgentRow {
        name: name.into(),
        agent_type: "linux".into(),
        token_hash: format!("hash-of-{name}"),
        state: AgentStatus::Reported(AgentState::WaitingForJobs),
        job_id: None,
        jobs_finished: 0,
        registered_at: NOW,
        last_sync_at: NOW,
        interrupted_at: 0,
        disconnected_at: None,
        registration: "{}".into(),
        shutdown_requested: false,
        revision: 0,
    }
}

/// `job` handed to `agent`.
fn assigned(job: &JobRow, agent: &str) -> JobRow {
    JobRow {
        state: JobState::Assigned,
        agent: Some(agent.into()),
        attempts: job.attempts + 1,
        assigned_at: Some(NOW + 1),
        ..job.clone()
    }
}

#[test]
fn a_write_from_a_stale_read_writes_nothing() {
    let (_dir, location) = fresh();
    let (mut replica_a, mut replica_b) = (handle(&location), handle(&location));
    let job = stored_job(replica_a.as_mut(), "job-1");
    let stale = replica_b
        .job("job-1")
        .unwrap()
        .expect("b reads the job a stored");
    assert_eq!(stale, job);

    let won = replica_a
        .commit(&[&assigned(&job, "agent-a")], &[&registered("agent-a")])
        .unwrap();
    let lost = replica_b.commit(&[&assigned(&stale, "agent-b")], &[&registered("agent-b")]);
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    // Nothing of b's commit is there: the job is a's, agent-b was not registered, and no row was
    // written after a's commit.
    let stored = replica_b.job("job-1").unwrap().unwrap();
    assert_eq!(
        (stored.agent.as_deref(), stored.revision),
        (Some("agent-a"), won)
    );
    assert_eq!(replica_b.agent("agent-b").unwrap(), None);
    let after = replica_b.changes_since(won).unwrap();
    assert!(
        after.jobs.is_empty() && after.agents.is_empty(),
        "{after:?}"
    );

    // The positive control: from a fresh read, b's write goes through.
    let fresh_read = replica_b.job("job-1").unwrap().unwrap();
    let stop = JobRow {
        stop_requested: true,
        ..fresh_read
    };
    let later = replica_b.commit(&[&stop], &[]).unwrap();
    assert!(later > won);
    assert!(replica_a.job("job-1").unwrap().unwrap().stop_requested);
}

#[test]
fn changes_since_returns_exactly_what_was_committed_after_a_revision() {
    let (_dir, location) = fresh();
    let (mut writer, reader) = (handle(&location), handle(&location));
    let start = reader.head_revision().unwrap();
    let first = stored_job(writer.as_mut(), "job-1");
    let second = stored_job(writer.as_mut(), "job-2");

    let feed = reader.changes_since(start).unwrap();
    let mut ids: Vec<&str> = feed.jobs.iter().map(|job| job.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["job-1", "job-2"]);
    assert!(feed.revision >= first.revision.max(second.revision));
    assert!(feed.jobs.iter().all(|job| job.revision <= feed.revision));
    let nothing_new = reader.changes_since(feed.revision).unwrap();
    assert!(nothing_new.jobs.is_empty(), "{nothing_new:?}");

    let revision = writer
        .commit(&[&assigned(&first, "agent-a")], &[&registered("agent-a")])
        .unwrap();
    let next = reader.changes_since(feed.revision).unwrap();
    assert_eq!(next.revision, revision);
    assert_eq!(
        next.jobs
            .iter()
            .map(|job| (job.id.as_str(), job.revision))
            .collect::<Vec<_>>(),
        [("job-1", revision)]
    );
    assert_eq!(
        next.agents
            .iter()
            .map(|agent| agent.name.as_str())
            .collect::<Vec<_>>(),
        ["agent-a"]
    );
}

#[test]
fn a_retried_log_batch_adds_nothing_twice() {
    let (_dir, location) = fresh();
    let mut store = handle(&location);
    stored_job(store.as_mut(), "job-1");
    let three = LogCounts { lines: 3, bytes: 6 };
    assert_eq!(
        store.append_log("job-1", 0, &["a", "b", "c"]).unwrap(),
        three
    );
    assert_eq!(
        store.append_log("job-1", 0, &["a", "b", "c"]).unwrap(),
        three
    );
    // A batch that overlaps the stored lines adds only the new ones.
    let four = LogCounts { lines: 4, bytes: 8 };
    assert_eq!(store.append_log("job-1", 2, &["c", "d"]).unwrap(), four);
    assert_eq!(store.log_counts("job-1").unwrap(), four);
    assert_eq!(
        store.log_lines("job-1", 0, 100).unwrap(),
        ["a", "b", "c", "d"]
    );
    assert_eq!(store.log_lines("job-1", 3, 100).unwrap(), ["d"]);
}

#[test]
fn a_name_belongs_to_the_type_it_was_first_used_under() {
    let (_dir, location) = fresh();
    let mut store = handle(&location);
    let owner = |store: &dyn Store, name: &str| store.name_record(name).unwrap().owner;
    assert_eq!(
        store.name_record("agent-a").unwrap(),
        NameRecord::default(),
        "a free name"
    );
    let gpu_agent = AgentRow {
        agent_type: "gpu".into(),
        ..registered("agent-a")
    };
    store.commit(&[], &[&gpu_agent]).unwrap();
    assert_eq!(owner(store.as_ref(), "agent-a").as_deref(), Some("gpu"));
    assert!(!store.name_record("agent-a").unwrap().held_a_job);
    // A name a job was assigned under belongs to the job's type, agent row or not.
    let job = stored_job(store.as_mut(), "job-1");
    store.commit(&[&assigned(&job, "agent-b")], &[]).unwrap();
    let record = store.name_record("agent-b").unwrap();
    assert_eq!(record.owner.as_deref(), Some("linux"));
    assert!(record.held_a_job);
}

#[test]
fn a_finished_jobs_secrets_are_purged_once() {
    let (_dir, location) = fresh();
    let mut store = handle(&location);
    let finished = |job: JobRow, at: i64| JobRow {
        state: JobState::Finished,
        result: Some(JobResult::Passed),
        finished_at: Some(at),
        ..job
    };
    let early = finished(stored_job(store.as_mut(), "early"), NOW + 10);
    let late = finished(stored_job(store.as_mut(), "late"), NOW + 1000);
    stored_job(store.as_mut(), "queued");
    store.commit(&[&early, &late], &[]).unwrap();

    let calls = Cell::new(0);
    let redact = |spec: &str| {
        calls.set(calls.get() + 1);
        format!("redacted {}", spec.len())
    };
    assert_eq!(store.purge_job_secrets(NOW + 100, &redact).unwrap(), 1);
    assert_eq!(calls.get(), 1);
    assert_eq!(store.job("early").unwrap().unwrap().spec, "redacted 13");
    // The positive control for "untouched": the job finished later and the queued one keep theirs.
    assert_eq!(store.job("late").unwrap().unwrap().spec, "spec of late");
    assert_eq!(store.job("queued").unwrap().unwrap().spec, "spec of queued");
    // Once: a second sweep finds nothing to purge and never redacts again.
    assert_eq!(store.purge_job_secrets(NOW + 100, &redact).unwrap(), 0);
    assert_eq!(calls.get(), 1);
    assert_eq!(store.purge_job_secrets(NOW + 2000, &redact).unwrap(), 1);
    assert_eq!(store.job("late").unwrap().unwrap().spec, "redacted 12");
}

/// Everything a store holds, as its readers give it back, with revisions (which an import renews)
/// set to 0.
#[derive(Debug, PartialEq)]
struct Contents {
    agent_types: Vec<hub::store::AgentTypeRow>,
    identity_policies: Vec<hub::store::IdentityPolicyRow>,
    instances: Vec<InstanceRow>,
    job_holders: Vec<JobHolderRow>,
    agents: Vec<AgentRow>,
    jobs: Vec<JobRow>,
    logs: Vec<Vec<String>>,
}

fn contents(store: &dyn Store) -> Contents {
    let mut agent_types = store.agent_types().unwrap();
    agent_types.iter_mut().for_each(|row| row.revision = 0);
    let mut agents = store.agents(true).unwrap();
    agents.iter_mut().for_each(|row| row.revision = 0);
    let mut jobs = store.jobs_after(0, 1000).unwrap();
    jobs.iter_mut().for_each(|row| row.revision = 0);
    let logs = jobs
        .iter()
        .map(|job| store.log_lines(&job.id, 0, 1000).unwrap())
        .collect();
    Contents {
        agent_types,
        identity_policies: store.identity_policies().unwrap(),
        instances: store.instances().unwrap(),
        job_holders: store.job_holders().unwrap(),
        agents,
        jobs,
        logs,
    }
}

#[test]
fn an_export_imported_into_an_empty_store_reads_back_the_same() {
    let (_dir, location) = fresh();
    let mut source = handle(&location);
    let job = stored_job(source.as_mut(), "job-1");
    stored_job(source.as_mut(), "job-2");
    source
        .insert_agent_type_with_identity("gpu", "hash-of-gpu", NOW, r#"{"accounts":["1"]}"#)
        .unwrap();
    let instance = InstanceRow {
        instance_id: "i-0123".into(),
        agent_type: "gpu".into(),
        account_id: "111122223333".into(),
        region: "eu-west-1".into(),
        registered_at: NOW,
        launched_at: Some(NOW - 30),
    };
    assert!(source.record_instance(&instance).unwrap());
    source
        .commit(&[&assigned(&job, "agent-a")], &[&registered("agent-a")])
        .unwrap();
    source.append_log("job-1", 0, &["one", "two"]).unwrap();
    let before = contents(source.as_ref());
    // The positive control for "the same": the source holds one of each kind of row.
    assert_eq!(before.instances, [instance]);
    assert_eq!(before.job_holders.len(), 1, "{before:?}");
    assert_eq!(before.identity_policies.len(), 1, "{before:?}");
    assert_eq!((before.agents.len(), before.jobs.len()), (1, 2));

    let mut exported = Vec::new();
    let counts = hub::transfer::export(source.as_ref(), &mut exported).unwrap();
    let (_other_dir, other) = fresh();
    let mut target = handle(&other);
    let imported = hub::transfer::import(target.as_mut(), &mut exported.as_slice()).unwrap();
    assert_eq!(imported, counts);
    assert_eq!(contents(target.as_ref()), before);
}

#[test]
fn an_export_of_format_1_still_imports() {
    // Format 1 wrote an instance's row as the list of its fields.
    let export = r#"{"kind":"header","format":1}
{"kind":"agent_type","row":{"name":"gpu","token_hash":"hash-of-gpu","created_at":1,"time_limit":null,"revision":3},"identity_policy":null}
{"kind":"instance","row":["i-0123","gpu","111122223333","eu-west-1",5,null]}
{"kind":"end","counts":{"agent_types":1,"agents":0,"jobs":0,"log_lines":0}}
"#;
    let (_dir, location) = fresh();
    let mut target = handle(&location);
    hub::transfer::import(target.as_mut(), &mut export.as_bytes()).unwrap();
    let instances = target.instances().unwrap();
    assert_eq!(
        instances,
        [InstanceRow {
            instance_id: "i-0123".into(),
            agent_type: "gpu".into(),
            account_id: "111122223333".into(),
            region: "eu-west-1".into(),
            registered_at: 5,
            launched_at: None,
        }]
    );
}
