//! The tables of `scaler deploy`'s checks and plan (`checks.rs`, `plan.rs`).

use super::checks::*;
use super::plan::*;
use super::*;
use crate::aws::stacks::{ChangeSet, ResourceChange};
use aws_sdk_cloudformation::types::{ChangeSetStatus, StackStatus};

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn instance_types_and_stack_names() {
    for good in [
        "g6.xlarge",
        "p4d.24xlarge",
        "g5g.2xlarge",
        "u-6tb1.metal",
        "c7i.large",
    ] {
        assert!(valid_instance_type(good), "{good}");
    }
    for bad in [
        "g6",
        "G6.xlarge",
        "g6.",
        ".xlarge",
        "g6.x large",
        "gpu.xlarge",
        "g6;rm.x",
    ] {
        assert!(!valid_instance_type(bad), "{bad}");
    }
    assert!(valid_stack_name("gpu-fleet"));
    for good in ["team/app", "base", "a1", "team.x/app_y-z", "0cache"] {
        assert!(valid_ecr_repository(good), "{good}");
    }
    for bad in [
        "",
        "a",
        "Team/app",
        "team/*",
        "team/ap?",
        "/team",
        "-app",
        "arn:aws:ecr:us-east-1:123456789012:repository/app",
        "team app",
    ] {
        assert!(!valid_ecr_repository(bad), "{bad}");
    }
    assert!(valid_ecr_repository(&"a".repeat(256)) && !valid_ecr_repository(&"a".repeat(257)));
    assert!(!valid_stack_name("1fleet") && !valid_stack_name("gpu_fleet") && !valid_stack_name(""));
}

#[test]
fn the_embedded_template_declares_the_documented_parameters() {
    let template = Template::embedded().unwrap();
    for name in [
        "ImageId",
        "InstanceTypes",
        "MinSize",
        "MaxSize",
        "QueueEndpoint",
        "PlainHttpQueueEndpoint",
        "RequireVpcEndpoints",
        "AgentTokenParameter",
        "FallbackPools",
        "EnableWarmPool",
        "ScheduledMinimums",
    ] {
        assert!(template.parameters.iter().any(|s| s.name == name), "{name}");
    }
    assert!(template.resources > 10, "{}", template.resources);
}

#[test]
fn parameters_are_checked_against_the_template() {
    let specs = Template::embedded().unwrap().parameters;
    let base = [
        "QueueEndpoint=https://org.semaphoreci.com",
        "ImageId=ami-12345678",
    ];
    let resolve = |list: &[&str], previous: &BTreeMap<String, String>| {
        let given = parse_parameters(&specs, &strings(&[&base[..], list].concat()))?;
        resolve_parameters(&specs, &given, previous)
    };
    let error = |list: &[&str]| resolve(list, &BTreeMap::new()).unwrap_err().to_string();
    let ok = resolve(
        &["InstanceTypes=g6.xlarge,g5.xlarge", "MaxSize=8"],
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(ok["MaxSize"], "8");
    assert!(error(&["MaxInstances=3"]).starts_with("unknown parameter 'MaxInstances'"));
    assert!(
        error(&["InstanceTypes=g6.xlarge,gpu-big"]).contains("'gpu-big' is not an instance type")
    );
    assert!(error(&["MinSize=5", "MaxSize=2"]).contains("MinSize (5) is greater than MaxSize (2)"));
    assert!(error(&["MaxSize=lots"]).contains("'lots' is not a number"));
    assert!(error(&["FallbackPools=sometimes"]).contains("is not one of"));
    assert!(error(&["QueueEndpoint=org.semaphoreci.com"]).contains("must be an https:// URL"));
    assert!(resolve(&["JobEcrRepositories=team/app,base"], &BTreeMap::new()).is_ok());
    assert!(resolve(&["JobEcrRepositories="], &BTreeMap::new()).is_ok());
    assert!(error(&["JobEcrRepositories=team/*"]).contains("'team/*' is not an ECR repository"));
    assert!(error(&["JobEcrRepositories=team/app,,base"]).contains("'' is not an ECR repository"));
    let eleven: Vec<String> = (0..11).map(|i| format!("repo{i}")).collect();
    let eleven = format!("JobEcrRepositories={}", eleven.join(","));
    assert!(error(&[eleven.as_str()]).contains("11 repositories, the stack takes at most 10"));
    assert!(error(&["KeepFailedInstanceMinutes=721"]).contains("outside 0..720"));
    assert!(error(&["MaxSize"]).contains("is not KEY=VALUE"));
    assert!(error(&["MaxSize=3", "MaxSize=4"]).contains("given twice"));
    // An update keeps what is not given; MinSize is checked against the kept MaxSize.
    let previous = map(&[("MaxSize", "3")]);
    assert_eq!(resolve(&[], &previous).unwrap()["MaxSize"], "3");
    assert!(resolve(&["MinSize=4"], &previous).is_err());
    // Without AWS, a lone MinSize cannot be judged (the stack may hold a larger MaxSize) ...
    assert!(parse_parameters(&specs, &strings(&["MinSize=12"])).is_ok());
    // ... and the queue's endpoint may come from the stack.
    let none = resolve_parameters(&specs, &BTreeMap::new(), &BTreeMap::new());
    assert!(none.unwrap_err().to_string().contains("no queue endpoint"));
    let kept = map(&[("QueueEndpoint", "https://org.semaphoreci.com")]);
    assert!(resolve_parameters(&specs, &BTreeMap::new(), &kept).is_ok());
}

/// A plain-HTTP queue only as PlainHttpQueueEndpoint (issue 27), exactly one of the two, each of
/// its own scheme, checked on what is given and on what the stack keeps; giving one clears the
/// other's kept value.
#[test]
fn plain_http_only_under_its_own_name() {
    let specs = Template::embedded().unwrap().parameters;
    let (https, http) = ("https://org.semaphoreci.com", "http://hub.internal:8080");
    // (given, kept by the stack, the endpoints in effect or the error)
    type Row<'a> = (
        Vec<(&'a str, &'a str)>,
        Vec<(&'a str, &'a str)>,
        Result<(&'a str, &'a str), EndpointError>,
    );
    let rows: Vec<Row> = vec![
        (vec![("QueueEndpoint", https)], vec![], Ok((https, ""))),
        (
            vec![("PlainHttpQueueEndpoint", http)],
            vec![],
            Ok(("", http)),
        ),
        (
            vec![("QueueEndpoint", http)],
            vec![],
            Err(EndpointError::PlainHttp(http.into())),
        ),
        (
            vec![("PlainHttpQueueEndpoint", https)],
            vec![],
            Err(EndpointError::NotPlainHttp(https.into())),
        ),
        (
            vec![("QueueEndpoint", https), ("PlainHttpQueueEndpoint", http)],
            vec![],
            Err(EndpointError::Both),
        ),
        (vec![], vec![], Err(EndpointError::Missing)),
        (
            vec![("QueueEndpoint", "")],
            vec![("QueueEndpoint", https)],
            Err(EndpointError::Missing),
        ),
        // Moving a stack from one to the other takes one parameter.
        (
            vec![("PlainHttpQueueEndpoint", http)],
            vec![("QueueEndpoint", https)],
            Ok(("", http)),
        ),
        (
            vec![("QueueEndpoint", https)],
            vec![("PlainHttpQueueEndpoint", http)],
            Ok((https, "")),
        ),
        // A stack deployed with an http:// QueueEndpoint before issue 27 is told what to give.
        (
            vec![],
            vec![("QueueEndpoint", http)],
            Err(EndpointError::PlainHttp(http.into())),
        ),
        (
            vec![("PlainHttpQueueEndpoint", http)],
            vec![("QueueEndpoint", http)],
            Ok(("", http)),
        ),
    ];
    for (given, kept, expected) in rows {
        let (given, kept) = (map(&given), map(&kept));
        let got = resolve_parameters(&specs, &given, &kept).map(|values| {
            let value = |name: &str| values.get(name).cloned().unwrap_or_default();
            (value("QueueEndpoint"), value("PlainHttpQueueEndpoint"))
        });
        let expected = expected
            .map(|(queue, plain)| (queue.to_string(), plain.to_string()))
            .map_err(|e| e.to_string());
        assert_eq!(
            got.map_err(|e| e.to_string()),
            expected,
            "given {given:?}, kept {kept:?}"
        );
    }
}

/// An http:// QueueEndpoint given is refused before any AWS call, with the way out in the message;
/// the hub's template has no queue endpoint parameters and is left alone.
#[test]
fn plain_http_is_refused_with_the_way_out() {
    let specs = Template::embedded().unwrap().parameters;
    let http = "http://hub.internal:8080";
    let error = parse_parameters(&specs, &strings(&[&format!("QueueEndpoint={http}")]))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("PlainHttpQueueEndpoint={http}")),
        "{error}"
    );
    let hub = Template::embedded_kind(TemplateKind::Hub)
        .unwrap()
        .parameters;
    let mut values = BTreeMap::new();
    assert_eq!(
        resolve_queue_endpoint(&hub, &BTreeMap::new(), &mut values),
        Ok(())
    );
    assert!(values.is_empty());
}

#[test]
fn the_hub_template_is_checked_like_the_fleets() {
    let template = Template::embedded_kind(TemplateKind::Hub).unwrap();
    let specs = &template.parameters;
    let required = [
        "VpcId=vpc-0abc",
        "SubnetIds=subnet-01,subnet-02",
        "LoadBalancerSubnetIds=subnet-03,subnet-04",
        "AllowedCidr=10.0.0.0/16",
        "CertificateArn=arn:aws:acm:us-east-1:123456789012:certificate/abc-123",
        "ImageId=ami-12345678",
    ];
    let resolve = |extra: &[&str]| -> Result<BTreeMap<String, String>> {
        let given = parse_parameters(specs, &strings(&[&required[..], extra].concat()))?;
        resolve_parameters(specs, &given, &BTreeMap::new())
    };
    let values = resolve(&["HubInstances=3"]).unwrap();
    assert_eq!(values["HubInstances"], "3");
    // (extra parameters, what the error says)
    let rows = [
        (vec!["HubInstances=0"], "outside 1..10"),
        (vec!["DatabaseMultiAZ=maybe"], "is not one of"),
        (vec!["DatabaseBackupRetentionDays=36"], "outside 1..35"),
        (vec!["DatabaseEngineVersion=14"], "is not one of"),
        (
            vec!["QueueEndpoint=https://x"],
            "unknown parameter 'QueueEndpoint'",
        ),
    ];
    for (extra, expected) in rows {
        let error = resolve(&extra).unwrap_err().to_string();
        assert!(error.contains(expected), "{extra:?}: {error}");
    }
    let missing = resolve_parameters(specs, &BTreeMap::new(), &BTreeMap::new());
    assert!(missing.unwrap_err().to_string().contains("is required"));
    assert!(template.resources > 15, "{}", template.resources);
}

#[test]
fn template_kinds_of_stacks() {
    let parameters = |name: &str| map(&[(name, "x")]);
    // (the stack's parameters, kind found, deploying as fleet is fine, as hub is fine)
    let rows = [
        (
            parameters("QueueEndpoint"),
            Some(TemplateKind::Fleet),
            true,
            false,
        ),
        (
            parameters("CertificateArn"),
            Some(TemplateKind::Hub),
            false,
            true,
        ),
        (BTreeMap::new(), None, true, true),
    ];
    for (stack, kind, as_fleet, as_hub) in rows {
        assert_eq!(TemplateKind::of_stack(&stack), kind, "{stack:?}");
        assert_eq!(
            check_kind("s", TemplateKind::Fleet, &stack).is_ok(),
            as_fleet,
            "{stack:?}"
        );
        assert_eq!(
            check_kind("s", TemplateKind::Hub, &stack).is_ok(),
            as_hub,
            "{stack:?}"
        );
    }
    let error = check_kind("hub", TemplateKind::Fleet, &parameters("CertificateArn"));
    assert!(error
        .unwrap_err()
        .to_string()
        .contains("give --template hub"));
    assert!(TemplateKind::Fleet.has_token_step() && !TemplateKind::Hub.has_token_step());
}

#[test]
fn the_hub_takes_no_token_and_the_fleet_needs_one() {
    let args = |template: TemplateKind, existing_token: bool| DeployArgs {
        stack: StackArgs {
            stack: "ci-hub".into(),
            region: String::new(),
        },
        template,
        parameters: Vec::new(),
        token_file: None,
        token_env: None,
        existing_token,
        dry_run: false,
        ignore_preflight: false,
        timeout_seconds: 60,
    };
    // (template, --existing-token, accepted)
    let rows = [
        (TemplateKind::Hub, false, true),
        (TemplateKind::Hub, true, false),
        (TemplateKind::Fleet, false, false),
        (TemplateKind::Fleet, true, true),
    ];
    for (kind, existing, accepted) in rows {
        let template = Template::embedded_kind(kind).unwrap();
        let request = check_request(&args(kind, existing), &template);
        assert_eq!(
            request.is_ok(),
            accepted,
            "{kind:?} {existing}: {request:?}"
        );
    }
}

#[test]
fn list_values_read_back_from_a_stack() {
    assert_eq!(
        normalize_list_value("g6.xlarge,g5.xlarge"),
        "g6.xlarge,g5.xlarge"
    );
    assert_eq!(
        normalize_list_value("['g6.xlarge', 'g5.xlarge']"),
        "g6.xlarge,g5.xlarge"
    );
    assert_eq!(normalize_list_value("[]"), "");
    assert_eq!(normalize_list_value("https://x"), "https://x");
}

#[test]
fn plans() {
    let template = Template::embedded().unwrap();
    let endpoint = ("QueueEndpoint", "https://org.semaphoreci.com");
    // The list at its default is passed; MinSize at its default is left to the template.
    let deployed = map(&[
        endpoint,
        ("InstanceTypes", "g6.xlarge,g5.xlarge"),
        ("MaxSize", "6"),
        ("MinSize", "0"),
    ]);
    let stack = |template: &str| Existing {
        parameters: deployed.clone(),
        template: template.to_string(),
    };
    let same = stack(TEMPLATE);
    let older = stack("Resources: {}");
    let pairs =
        |list: &[(&str, &str)]| -> Vec<(String, String)> { map(list).into_iter().collect() };
    // (scenario, given, the stack, plan)
    type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a Existing>, Plan);
    let rows: Vec<Row> = vec![
        (
            "first deploy: what is given, defaults too, not the rest",
            vec![endpoint, ("MinSize", "0"), ("MaxSize", "10")],
            None,
            Plan::Create(pairs(&[endpoint, ("MaxSize", "10"), ("MinSize", "0")])),
        ),
        (
            "a changed value: kept values passed explicitly",
            vec![("MaxSize", "8")],
            Some(&same),
            Plan::Update(pairs(&[
                endpoint,
                ("InstanceTypes", "g6.xlarge,g5.xlarge"),
                ("MaxSize", "8"),
            ])),
        ),
        (
            "the same values again",
            vec![("MaxSize", "6")],
            Some(&same),
            Plan::NoChange,
        ),
        ("nothing given", vec![], Some(&same), Plan::NoChange),
        (
            "a value given that the stack has already",
            vec![("MinSize", "0")],
            Some(&same),
            Plan::NoChange,
        ),
        (
            "a new template, same values",
            vec![],
            Some(&older),
            Plan::Update(pairs(&[
                endpoint,
                ("InstanceTypes", "g6.xlarge,g5.xlarge"),
                ("MaxSize", "6"),
            ])),
        ),
    ];
    for (scenario, given, existing, expected) in rows {
        let request = Request {
            stack: "gpu-fleet".into(),
            given: map(&given),
            token: None,
        };
        let previous = existing.map(|e| e.parameters.clone()).unwrap_or_default();
        let values = resolve_parameters(&template.parameters, &request.given, &previous)
            .unwrap_or_else(|e| panic!("{scenario}: {e:#}"));
        let plan = plan(&template, &request, &values, existing);
        assert_eq!(plan, expected, "{scenario}");
    }
}

/// Giving PlainHttpQueueEndpoint clears the stack's QueueEndpoint, and the cleared value (its
/// default) is passed, not left to how the endpoint reads a value left out.
#[test]
fn a_cleared_queue_endpoint_is_passed() {
    let template = Template::embedded().unwrap();
    let existing = Existing {
        parameters: map(&[
            ("QueueEndpoint", "https://org.semaphoreci.com"),
            ("MaxSize", "6"),
        ]),
        template: TEMPLATE.to_string(),
    };
    let plain = ("PlainHttpQueueEndpoint", "http://hub.internal:8080");
    let request = Request {
        stack: "gpu-fleet".into(),
        given: map(&[plain]),
        token: None,
    };
    let values =
        resolve_parameters(&template.parameters, &request.given, &existing.parameters).unwrap();
    let expected = map(&[("MaxSize", "6"), plain, ("QueueEndpoint", "")]);
    assert_eq!(
        plan(&template, &request, &values, Some(&existing)),
        Plan::Update(expected.into_iter().collect())
    );
}

#[test]
#[allow(clippy::too_many_lines)] // a table: one row per scenario, read top to bottom
fn the_token_ends_under_the_stacks_key() {
    let arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab";
    let alias = Some("alias/flotilla/gpu-fleet");
    let warn = |under: Option<&str>| TokenStep::Warn {
        under: under.map(str::to_string),
    };
    // (scenario, given, user's parameter, stored under, the stack's alias, step)
    type Row<'a> = (
        &'a str,
        bool,
        bool,
        Option<&'a str>,
        Option<&'a str>,
        TokenStep,
    );
    let rows: Vec<Row> = vec![
        ("a new token", true, false, None, alias, TokenStep::Store),
        (
            "a new token over an old one",
            true,
            false,
            Some("alias/aws/ssm"),
            alias,
            TokenStep::Store,
        ),
        (
            "a new token into the user's parameter",
            true,
            true,
            None,
            alias,
            TokenStep::Store,
        ),
        (
            "kept, under the key by ARN",
            false,
            false,
            Some(arn),
            alias,
            TokenStep::Keep,
        ),
        (
            "kept, under the key by id",
            false,
            false,
            Some("1234abcd-12ab"),
            None,
            TokenStep::Keep,
        ),
        (
            "kept, under the key by alias",
            false,
            false,
            alias,
            alias,
            TokenStep::Keep,
        ),
        (
            "a stack from before its key",
            false,
            false,
            Some("alias/aws/ssm"),
            alias,
            TokenStep::Reencrypt,
        ),
        (
            "a given key, not the alias",
            false,
            false,
            alias,
            None,
            TokenStep::Reencrypt,
        ),
        (
            "the user's, under another key",
            false,
            true,
            Some("alias/aws/ssm"),
            alias,
            warn(Some("alias/aws/ssm")),
        ),
        (
            "the user's, not there yet",
            false,
            true,
            None,
            alias,
            warn(None),
        ),
        (
            "the user's, under the key",
            false,
            true,
            Some(arn),
            alias,
            TokenStep::Keep,
        ),
    ];
    for (scenario, given, user_managed, stored, alias, expected) in rows {
        let step = token_step(given, user_managed, stored, arn, alias).unwrap();
        assert_eq!(step, expected, "{scenario}");
    }
    let missing = token_step(false, false, None, arn, alias).unwrap_err();
    assert!(missing.to_string().contains("--token-file"), "{missing}");
}

#[test]
fn stack_statuses() {
    use StackStatus as S;
    // (status, outcome, can deploy)
    let rows = [
        (S::CreateComplete, Outcome::Succeeded, true),
        (S::UpdateComplete, Outcome::Succeeded, true),
        (
            S::UpdateCompleteCleanupInProgress,
            Outcome::InProgress,
            false,
        ),
        (S::RollbackInProgress, Outcome::InProgress, false),
        (S::ReviewInProgress, Outcome::InProgress, false),
        (S::RollbackComplete, Outcome::Failed, false),
        (S::UpdateRollbackComplete, Outcome::Failed, true),
        (S::CreateFailed, Outcome::Failed, true),
        (S::DeleteComplete, Outcome::Gone, true),
        (S::from("SOMETHING_NEW"), Outcome::Failed, true),
    ];
    for (status, expected, deployable) in rows {
        assert_eq!(outcome(&status), expected, "{status}");
        assert_eq!(
            check_settled("gpu-fleet", &status).is_ok(),
            deployable,
            "{status}"
        );
    }
    let rolled_back = check_settled("gpu-fleet", &S::RollbackComplete).unwrap_err();
    assert!(rolled_back
        .to_string()
        .contains("run `scaler destroy --stack gpu-fleet` first"));
}

#[test]
fn change_sets_without_changes() {
    let change = ResourceChange {
        action: "Modify".into(),
        logical_id: "AgentGroup".into(),
        resource_type: "AWS::AutoScaling::AutoScalingGroup".into(),
    };
    use ChangeSetStatus::{CreateComplete, Failed};
    // (status, reason, changes, nothing to do)
    let rows = [
        (Failed, "The submitted information didn't contain changes. Submit different information to create a change set.", vec![], true),
        (Failed, "No updates are to be performed.", vec![], true),
        (Failed, "Template format error", vec![], false),
        (CreateComplete, "", vec![], false),
        (CreateComplete, "", vec![change], false),
    ];
    for (status, reason, changes, expected) in rows {
        let change_set = ChangeSet {
            status: Some(status),
            reason: reason.into(),
            changes,
        };
        assert_eq!(is_no_changes(&change_set), expected, "{change_set:?}");
    }
}
