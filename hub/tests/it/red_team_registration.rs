//! Registration attacked as a job on the fleet would attack it (issue 13): a crashed single-job
//! agent asking for a second job, another tenant's token taking a busy agent's name, a
//! registration token used off the instance, and forged or replayed instance identity
//! documents. Each test is an attack that succeeded before the registration rules and is refused
//! now; the closing table of the issue names them. Documents are signed with a test key made by
//! the `openssl` CLI, through the fake IMDS's helpers.

use testkit::imds;
use testkit::stores;

use hub::hub::{Hub, HubConfig, HubError, Invalid};
use hub::identity::Certificates;
use protocol::views::IdentityPolicy;
use protocol::{
    AgentState, InstanceIdentity, JobResult, JobSpec, RegisterRequest, SyncAction, SyncRequest,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const T0: i64 = 1_700_000_000;
const ACCOUNT: &str = "111122223333";

fn hub_with(config: HubConfig) -> Hub {
    stores::fresh_hub(config, T0).unwrap()
}

fn registration(name: &str, single_job: bool) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        single_job,
        ..RegisterRequest::default()
    }
}

fn waiting() -> SyncRequest {
    SyncRequest {
        state: AgentState::WaitingForJobs,
        ..SyncRequest::default()
    }
}

fn running(job_id: &str) -> SyncRequest {
    SyncRequest {
        state: AgentState::RunningJob,
        job_id: job_id.into(),
        ..SyncRequest::default()
    }
}

fn submit(hub: &Hub, agent_type: &str) -> String {
    let spec = JobSpec::from_commands(agent_type, &["make test".to_string()]);
    hub.submit(spec, T0).unwrap().id
}

/// Registers `name` and syncs once: (access token, the job it was told to run).
fn take_job(hub: &Hub, token: &str, name: &str, single_job: bool) -> (String, String) {
    let agent = hub
        .register(token, registration(name, single_job), T0)
        .unwrap();
    let answer = hub.sync(&agent.token, &waiting(), T0 + 1).unwrap();
    assert_eq!(answer.action, SyncAction::RunJob);
    (agent.token, answer.job_id)
}

fn conflict(result: Result<protocol::RegisterResponse, HubError>) -> String {
    match result {
        Err(error @ HubError::RegistrationRefused { .. }) => error.to_string(),
        other => panic!("expected a refusal (409), got {other:?}"),
    }
}

fn forbidden(result: Result<protocol::RegisterResponse, HubError>) -> String {
    match result {
        Err(error @ HubError::IdentityRefused(_)) => error.to_string(),
        other => panic!("expected a refusal (403), got {other:?}"),
    }
}

#[test]
fn a_single_job_agent_that_took_a_job_never_registers_again_under_its_name() {
    let hub = hub_with(HubConfig::new("http://hub.test", "admin"));
    let token = hub.create_agent_type("linux", T0).unwrap();
    let job = submit(&hub, "linux");
    let (access, taken) = take_job(&hub, &token, "i-0123456789abcdef0", true);
    assert_eq!(taken, job);
    // The job kills its agent; systemd starts it again 15 s later; it registers again.
    let again = hub.register(&token, registration("i-0123456789abcdef0", true), T0 + 15);
    assert!(conflict(again).contains("has already held a job"));
    // Whatever token it presents: its own access token is refused too.
    let again = hub.register(&access, registration("i-0123456789abcdef0", true), T0 + 15);
    assert!(conflict(again).contains("has already held a job"));
    // The first agent still has its job; nobody was handed it a second time.
    assert_eq!(
        hub.sync(&access, &running(&job), T0 + 16).unwrap().action,
        SyncAction::Continue
    );
    // Gone (disconnected or lost), its name stays used.
    hub.disconnect(&access, T0 + 20).unwrap();
    let after = hub.register(&token, registration("i-0123456789abcdef0", true), T0 + 30);
    assert!(conflict(after).contains("has already held a job"));
}

#[test]
fn the_used_name_is_remembered_across_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = HubConfig::new("http://hub.test", "admin");
    let token = {
        let hub = stores::open(dir.path(), config.clone(), T0).unwrap();
        let token = hub.create_agent_type("linux", T0).unwrap();
        submit(&hub, "linux");
        take_job(&hub, &token, "agent-used-0001", true);
        token
    };
    let hub = stores::open(dir.path(), config, T0 + 100).unwrap();
    let again = hub.register(&token, registration("agent-used-0001", true), T0 + 100);
    assert!(conflict(again).contains("has already held a job"));
}

#[test]
fn another_tenant_cannot_take_a_busy_agents_name_and_its_job_goes_on() {
    let hub = hub_with(HubConfig::new("http://hub.test", "admin"));
    let gpu_token = hub.create_agent_type("gpu", T0).unwrap();
    let cheap_token = hub.create_agent_type("cheap", T0).unwrap();
    let job = submit(&hub, "gpu");
    let (gpu_access, _) = take_job(&hub, &gpu_token, "i-0aaaaaaaaaaaaaaa1", false);
    let stolen = hub.register(
        &cheap_token,
        registration("i-0aaaaaaaaaaaaaaa1", false),
        T0 + 2,
    );
    assert!(conflict(stolen).contains("agent type 'gpu'"));
    // The GPU agent's next sync works and its job goes on.
    let answer = hub.sync(&gpu_access, &running(&job), T0 + 3).unwrap();
    assert_eq!(answer.action, SyncAction::Continue);
    hub.sync(
        &gpu_access,
        &SyncRequest {
            state: AgentState::FinishedJob,
            job_id: job.clone(),
            job_result: Some(JobResult::Passed),
            interrupted_at: 0,
            flotilla_fault: None,
        },
        T0 + 4,
    )
    .unwrap();
    assert_eq!(hub.job(&job).unwrap().result, Some(JobResult::Passed));
}

#[test]
fn a_live_agent_is_replaced_only_by_itself_or_once_it_is_gone() {
    let hub = hub_with(HubConfig::new("http://hub.test", "admin"));
    let token = hub.create_agent_type("linux", T0).unwrap();
    let first = hub
        .register(&token, registration("agent-multi-0001", false), T0)
        .unwrap();
    // Someone else with the registration token: refused while the agent lives.
    let other = hub.register(&token, registration("agent-multi-0001", false), T0 + 1);
    assert!(conflict(other).contains("only its own access token"));
    // The agent itself (its own access token) may register again.
    let second = hub
        .register(
            &first.token,
            registration("agent-multi-0001", false),
            T0 + 2,
        )
        .unwrap();
    assert!(matches!(
        hub.sync(&first.token, &waiting(), T0 + 3),
        Err(HubError::Unauthorized)
    ));
    // Once it is gone, the name is free again (an agent that takes many jobs).
    hub.disconnect(&second.token, T0 + 4).unwrap();
    hub.register(&token, registration("agent-multi-0001", false), T0 + 5)
        .unwrap();
}

#[test]
fn a_name_belongs_to_the_type_that_first_used_it_even_after_its_agent_left() {
    let hub = hub_with(HubConfig::new("http://hub.test", "admin"));
    let gpu_token = hub.create_agent_type("gpu", T0).unwrap();
    let cheap_token = hub.create_agent_type("cheap", T0).unwrap();
    let gone = hub
        .register(&gpu_token, registration("agent-gpu-0001", false), T0)
        .unwrap();
    hub.disconnect(&gone.token, T0 + 1).unwrap();
    // Another type may not take the departed agent's name…
    let taken = hub.register(&cheap_token, registration("agent-gpu-0001", false), T0 + 2);
    assert!(conflict(taken).contains("belongs to agent type 'gpu'"));
    // …while its own type may (the positive control: the name is free for it).
    hub.register(&gpu_token, registration("agent-gpu-0001", false), T0 + 3)
        .unwrap();
}

#[test]
fn a_used_name_is_refused_whatever_single_job_the_request_claims() {
    let hub = hub_with(HubConfig::new("http://hub.test", "admin"));
    let token = hub.create_agent_type("linux", T0).unwrap();
    submit(&hub, "linux");
    let (access, _) = take_job(&hub, &token, "i-0bbbbbbbbbbbbbbb2", true);
    hub.disconnect(&access, T0 + 5).unwrap();
    // A token read on the used machine, registering a multi-job agent under its name: refused.
    let again = hub.register(&token, registration("i-0bbbbbbbbbbbbbbb2", false), T0 + 6);
    assert!(conflict(again).contains("has already held a job"));
    // A name that never held a job registers as a multi-job agent (the check can pass).
    hub.register(&token, registration("i-0ccccccccccccccc3", false), T0 + 7)
        .unwrap();
}

#[test]
fn an_agents_token_works_only_for_its_own_types_jobs_and_logs() {
    let hub = hub_with(HubConfig::new("http://hub.test", "admin"));
    let a_token = hub.create_agent_type("a", T0).unwrap();
    let b_token = hub.create_agent_type("b", T0).unwrap();
    let a_job = submit(&hub, "a");
    let b_job = submit(&hub, "b");
    let (a_access, taken) = take_job(&hub, &a_token, "agent-type-a-01", true);
    assert_eq!(taken, a_job);
    let (b_access, _) = take_job(&hub, &b_token, "agent-type-b-01", true);
    assert!(matches!(
        hub.job_request(&a_access, &b_job, T0 + 2),
        Err(HubError::JobNotAssigned { .. })
    ));
    let a_logs = hub.job_request(&a_access, &a_job, T0 + 2).unwrap().logger;
    let b_logs = hub.job_request(&b_access, &b_job, T0 + 2).unwrap().logger;
    let line = r#"{"event":"job_started","timestamp":1}"#;
    assert!(matches!(
        hub.push_logs(&b_job, &a_logs.token, 0, line, T0 + 3),
        Err(HubError::Unauthorized)
    ));
    hub.push_logs(&b_job, &b_logs.token, 0, line, T0 + 3)
        .unwrap();
    // A registration token is not an agent's token, nor the other way round.
    assert!(hub.sync(&b_token, &waiting(), T0 + 4).is_err());
    assert!(hub.metrics(&a_access, T0 + 4).is_err());
}

/// A hub whose identity certificate is a test one, and an agent type that requires identity
/// from `ACCOUNT` in us-east-1.
struct IdentityFleet {
    hub: Hub,
    token: String,
    key: PathBuf,
    cert: PathBuf,
    _dir: tempfile::TempDir,
}

fn identity_config(cert: &Path) -> HubConfig {
    let mut config = HubConfig::new("http://hub.test", "admin");
    config.identity_certificates = Some(Arc::new(Certificates::from_file(cert).unwrap()));
    config
}

fn identity_fleet(hub_dir: Option<&Path>) -> IdentityFleet {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = imds::signing_key(dir.path(), "aws-test");
    let config = identity_config(&cert);
    let hub = match hub_dir {
        Some(path) => stores::open(path, config, T0).unwrap(),
        None => hub_with(config),
    };
    let policy = IdentityPolicy {
        require_instance_identity: true,
        allowed_accounts: vec![ACCOUNT.into()],
        allowed_regions: vec!["us-east-1".into()],
        single_job_only: None,
    };
    let token = hub.create_agent_type_with("gpu", &policy, T0).unwrap();
    IdentityFleet {
        hub,
        token,
        key,
        cert,
        _dir: dir,
    }
}

fn signed(instance_id: &str, account: &str, region: &str, key: &Path) -> InstanceIdentity {
    let document = imds::identity_document(instance_id, account, region);
    InstanceIdentity {
        signature: imds::sign(&document, key),
        document,
    }
}

fn with_identity(name: &str, identity: Option<InstanceIdentity>) -> RegisterRequest {
    RegisterRequest {
        flotilla_instance_identity: identity,
        ..registration(name, true)
    }
}

#[test]
fn a_good_identity_registers_once_under_its_instance_id() {
    let fleet = identity_fleet(None);
    let identity = signed("i-0good000000000001", ACCOUNT, "us-east-1", &fleet.key);
    // The agent asks for another name: the instance id wins.
    let request = with_identity("whatever-name", Some(identity.clone()));
    let agent = fleet.hub.register(&fleet.token, request, T0).unwrap();
    assert_eq!(agent.name, "i-0good000000000001");
    // Replayed (the real agent has used the one registration; a thief copies the document).
    let replay = with_identity("", Some(identity));
    let refused = conflict(fleet.hub.register(&fleet.token, replay, T0 + 1));
    assert!(refused.contains("registered before"), "{refused}");
}

#[test]
fn a_replayed_identity_is_refused_after_the_agent_left_and_the_hub_restarted() {
    let data = tempfile::tempdir().unwrap();
    let fleet = identity_fleet(Some(data.path()));
    let identity = signed("i-0replay0000000001", ACCOUNT, "us-east-1", &fleet.key);
    let request = with_identity("", Some(identity.clone()));
    let agent = fleet.hub.register(&fleet.token, request, T0).unwrap();
    fleet.hub.disconnect(&agent.token, T0 + 5).unwrap();
    drop(fleet.hub);
    let hub = stores::open(data.path(), identity_config(&fleet.cert), T0 + 100).unwrap();
    let replay = with_identity("", Some(identity));
    let refused = conflict(hub.register(&fleet.token, replay, T0 + 100));
    assert!(refused.contains("registered before"), "{refused}");
}

#[test]
fn forged_foreign_and_missing_identities_are_refused() {
    let fleet = identity_fleet(None);
    let other_key = imds::signing_key(fleet._dir.path(), "attacker").0;
    let register = |identity: Option<InstanceIdentity>| {
        let request = with_identity("i-0attack000000001", identity);
        forbidden(fleet.hub.register(&fleet.token, request, T0))
    };
    let by_another_key = signed("i-0attack000000001", ACCOUNT, "us-east-1", &other_key);
    assert!(register(Some(by_another_key)).contains("does not verify"));
    let other_account = signed(
        "i-0attack000000001",
        "999988887777",
        "us-east-1",
        &fleet.key,
    );
    assert!(register(Some(other_account)).contains("account 999988887777"));
    let other_region = signed("i-0attack000000001", ACCOUNT, "eu-west-1", &fleet.key);
    assert!(register(Some(other_region)).contains("Region eu-west-1"));
    // A good signature over another document, the document edited to name another instance.
    let mut edited = signed("i-0attack000000001", ACCOUNT, "us-east-1", &fleet.key);
    edited.document = edited
        .document
        .replace("i-0attack000000001", "i-0victim000000001");
    assert!(register(Some(edited)).contains("does not verify"));
    // The registration token alone, from another machine.
    assert!(register(None).contains("--ec2"));
    // None of these spent the instance: the real agent still registers.
    let real = signed("i-0attack000000001", ACCOUNT, "us-east-1", &fleet.key);
    let request = with_identity("", Some(real));
    fleet.hub.register(&fleet.token, request, T0 + 1).unwrap();
}

#[test]
fn agent_types_keep_their_identity_rule_and_bad_rules_are_refused() {
    let fleet = identity_fleet(None);
    let types = fleet.hub.agent_types().unwrap();
    let (_, _, policy) = types.iter().find(|(name, _, _)| name == "gpu").unwrap();
    assert!(policy.require_instance_identity);
    assert_eq!(policy.allowed_accounts, [ACCOUNT]);
    let no_account = IdentityPolicy {
        require_instance_identity: true,
        ..IdentityPolicy::default()
    };
    assert!(matches!(
        fleet.hub.create_agent_type_with("open", &no_account, T0),
        Err(HubError::Invalid(Invalid::IdentityPolicy(_)))
    ));
    // A type without the rule registers agents as before (Semaphore's agent, no document).
    let plain = fleet.hub.create_agent_type("plain", T0).unwrap();
    fleet
        .hub
        .register(&plain, registration("agent-plain-0001", false), T0)
        .unwrap();
}
