//! The Terraform module for real: `terraform init -plugin-dir /opt/tf-plugins` (the AWS provider
//! cannot be downloaded here), `terraform validate` of the module and of
//! `infra/terraform/examples/gpu-fleet`, then `apply` and `destroy` of the example against moto
//! server, twice: as written (the defaults: hop limit 1, job sudo and docker off, no Session
//! Manager, no ECR repositories, failed instances not kept, an https:// queue, no VPC endpoint
//! conditions) and with an override file that turns those on (a plain-HTTP queue through its own
//! variable, the agent role's credentials only through its VPC's endpoints). Before that, a plan
//! with an http:// queue_endpoint, and one with both endpoints, must be refused. After each apply
//! the resources are looked up in moto (the groups, the launch template's hop limit, the
//! job-setting parameters, the agents' and scaler's configuration, the KMS key with rotation and
//! its alias, the log groups under the key) and the policies Terraform read back are held to the
//! rules in `policy_rules` (shared with `iam_policy.rs`); after each
//! destroy they are gone (the key pending deletion). Each apply is a fresh one: an update against
//! moto hangs in the scaler group's instance refresh (docs/testing.md). A copy of infra/terraform
//! in a temporary directory is what Terraform works in, so nothing is written into the tree.

use crate::policy_rules;
use testkit::moto;
use testkit::terraform;

use serde_json::{json, Value};
use terraform::Terraform;

const STACK: &str = "gpu-fleet";
const ACCOUNT: &str = "123456789012";

/// The module's resources in the state, by address within the module (`aws_kms_key.this[0]`).
fn state(terraform: &Terraform) -> Vec<(String, Value)> {
    let shown: Value =
        serde_json::from_str(&terraform.run(&["show", "-json", "-no-color"])).unwrap();
    let module = &shown["values"]["root_module"]["child_modules"][0];
    module["resources"]
        .as_array()
        .expect("the module's resources in the state")
        .iter()
        .filter(|r| r["mode"] == "managed")
        .map(|r| {
            let address = r["address"].as_str().unwrap();
            let local = address.trim_start_matches("module.gpu_fleet.").to_string();
            (local, r["values"].clone())
        })
        .collect()
}

fn resource<'a>(state: &'a [(String, Value)], address: &str) -> &'a Value {
    state
        .iter()
        .find(|(a, _)| a == address)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {address} in the state"))
}

/// A policy document Terraform read back (a JSON string in the state).
fn document(values: &Value) -> Value {
    serde_json::from_str(values["policy"].as_str().unwrap()).unwrap()
}

/// One call to a JSON-protocol AWS API on moto (KMS and CloudWatch Logs, whose SDK crates the
/// scaler does not carry); moto routes by the credential scope and checks no signature.
fn aws_json(moto: &moto::MotoServer, service: &str, target: &str, body: Value) -> Value {
    let scope = format!(
        "Credential=testing/20260101/{}/{service}/aws4_request",
        moto::REGION
    );
    let response = reqwest::blocking::Client::new()
        .post(&moto.url)
        .header("X-Amz-Target", target)
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 {scope}, SignedHeaders=host, Signature=0"),
        )
        .body(body.to_string())
        .send()
        .unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    assert!(status.is_success(), "{target}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

fn policy_stack(state: &[(String, Value)], ecr_repositories: &[&str]) -> policy_rules::Stack {
    let group = |name: &str| {
        format!(
            "arn:aws:autoscaling:{}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/{name}",
            moto::REGION
        )
    };
    policy_rules::Stack {
        name: STACK.into(),
        region: moto::REGION.into(),
        account: ACCOUNT.into(),
        key_arn: resource(state, "aws_kms_key.this[0]")["arn"]
            .as_str()
            .unwrap()
            .into(),
        token_arn: format!(
            "arn:aws:ssm:{}:{ACCOUNT}:parameter/flotilla/{STACK}/agent-token",
            moto::REGION
        ),
        agent_role_arn: resource(state, "aws_iam_role.instance")["arn"]
            .as_str()
            .unwrap()
            .into(),
        scaler_role_arn: resource(state, "aws_iam_role.scaler")["arn"]
            .as_str()
            .unwrap()
            .into(),
        job_role_arn: resource(state, "aws_iam_role.job")["arn"]
            .as_str()
            .unwrap()
            .into(),
        cache_bucket_arn: resource(state, "aws_s3_bucket.cache")["arn"]
            .as_str()
            .unwrap()
            .into(),
        group_arns: vec![
            group("flotilla-gpu-fleet-agent"),
            group("flotilla-gpu-fleet-agent-fallback"),
        ],
        ecr_repositories: ecr_repositories.iter().map(|s| s.to_string()).collect(),
    }
}

/// The applied policies, held to the rules.
fn check_policies(state: &[(String, Value)], variant: &Variant) {
    let session_manager = variant.session_manager;
    let stack = policy_stack(state, variant.ecr_repositories);
    let of_role = |role: &str| -> Vec<Value> {
        state
            .iter()
            .filter(|(a, v)| a.starts_with("aws_iam_role_policy.") && v["role"] == role)
            .map(|(_, v)| document(v))
            .collect()
    };
    let agent_role = format!("flotilla-{STACK}-agent");
    let managed: Vec<String> = state
        .iter()
        .filter(|(a, _)| a.starts_with("aws_iam_role_policy_attachment."))
        .map(|(_, v)| v["policy_arn"].as_str().unwrap().to_string())
        .collect();
    let (agent, scaler) = (
        of_role(&agent_role),
        of_role(&format!("flotilla-{STACK}-scaler")),
    );
    // Its own, Session Manager's, and for the agent require_vpc_endpoints' Denies.
    let scaler_policies = 1 + usize::from(session_manager);
    let agent_policies = scaler_policies + usize::from(variant.vpc_endpoints);
    assert_eq!(
        (agent.len(), scaler.len()),
        (agent_policies, scaler_policies),
        "inline policies per role"
    );
    let job = of_role(&format!("flotilla-{STACK}-job"));
    assert_eq!(job.len(), 1, "the job role's inline policies");
    let job_trust: Value = serde_json::from_str(
        resource(state, "aws_iam_role.job")["assume_role_policy"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let problems = [
        policy_rules::agent_role_problems(&stack, &agent, &managed),
        policy_rules::scaler_role_problems(&stack, &scaler),
        policy_rules::job_role_problems(&stack, &job, &[]),
        policy_rules::job_ecr_missing(&stack, &job),
        policy_rules::job_trust_problems(&stack, &job_trust),
        policy_rules::key_policy_problems(
            &stack,
            &document(resource(state, "aws_kms_key.this[0]")),
        ),
    ]
    .concat();
    assert!(
        problems.is_empty(),
        "the applied policies:\n  {}",
        problems.join("\n  ")
    );
    // require_vpc_endpoints: both Denies, or neither.
    let missing = policy_rules::source_vpc_problems(&agent).len();
    assert_eq!(
        missing,
        if variant.vpc_endpoints { 0 } else { 2 },
        "{agent:?}"
    );
    let sessions = state
        .iter()
        .filter(|(a, _)| a.starts_with("aws_iam_role_policy.session_manager"))
        .count();
    assert_eq!(
        sessions,
        if session_manager { 2 } else { 0 },
        "Session Manager policies"
    );
}

/// What apply made, looked up in moto.
fn check_applied(moto: &moto::MotoServer, runtime: &tokio::runtime::Runtime, variant: &Variant) {
    let (hop_limit, job_sudo) = (variant.hop_limit, variant.job_sudo);
    let sdk = moto.sdk(runtime);
    // The groups exist, and the scaler alone raises them.
    for group in [
        "flotilla-gpu-fleet-agent",
        "flotilla-gpu-fleet-agent-fallback",
    ] {
        let (desired, _, _) = moto.group(runtime, group);
        assert_eq!(desired, 0, "{group}");
    }
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let versions = runtime
        .block_on(
            ec2.describe_launch_template_versions()
                .launch_template_name("flotilla-gpu-fleet-agent")
                .versions("$Latest")
                .send(),
        )
        .unwrap();
    let options = versions.launch_template_versions()[0]
        .launch_template_data()
        .and_then(|d| d.metadata_options())
        .cloned()
        .unwrap();
    assert_eq!(options.http_put_response_hop_limit(), Some(hop_limit));
    assert_eq!(options.http_tokens().map(|t| t.as_str()), Some("required"));
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    for (name, value) in [("job-sudo", job_sudo), ("job-docker", "false")] {
        let read = runtime
            .block_on(
                ssm.get_parameter()
                    .name(format!("/flotilla/{STACK}/{name}"))
                    .send(),
            )
            .unwrap();
        assert_eq!(read.parameter().unwrap().value(), Some(value), "{name}");
    }
    // The agents' configuration: the ECR repositories space-separated ('' when none), the
    // minutes a failed job's instance is kept.
    let read = runtime
        .block_on(
            ssm.get_parameter()
                .name(format!("/flotilla/{STACK}/agent-config"))
                .send(),
        )
        .unwrap();
    let text = read.parameter().unwrap().value().unwrap().to_string();
    let config: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("agent-config is not YAML ({e}):\n{text}"));
    assert_eq!(
        config["job-ecr-repositories"],
        variant.ecr_repositories.join(" ").as_str(),
        "{text}"
    );
    assert_eq!(
        config["keep-failed-instance-minutes"], variant.keep_failed_minutes,
        "{text}"
    );
    // The queue: HTTPS off only for the plain-HTTP variable, the scaler given the same URL.
    let (url, no_https) = variant.queue;
    assert_eq!(
        config["endpoint"],
        url.split_once("://").unwrap().1,
        "{text}"
    );
    assert_eq!(config["no-https"], no_https, "{text}");
    let read = runtime
        .block_on(
            ssm.get_parameter()
                .name(format!("/flotilla/{STACK}/scaler-config"))
                .send(),
        )
        .unwrap();
    let text = read.parameter().unwrap().value().unwrap();
    assert!(text.contains(&format!("endpoint: {url}\n")), "{text}");
    let key = key_by_alias(moto).expect("the alias alias/flotilla/gpu-fleet");
    let described = aws_json(
        moto,
        "kms",
        "TrentService.DescribeKey",
        json!({"KeyId": key}),
    );
    assert_eq!(described["KeyMetadata"]["KeyState"], "Enabled");
    let rotation = aws_json(
        moto,
        "kms",
        "TrentService.GetKeyRotationStatus",
        json!({"KeyId": key}),
    );
    assert_eq!(rotation["KeyRotationEnabled"], true);
    let arn = described["KeyMetadata"]["Arn"].clone();
    let groups = aws_json(
        moto,
        "logs",
        "Logs_20140328.DescribeLogGroups",
        json!({"logGroupNamePrefix": format!("/flotilla/{STACK}/")}),
    );
    let groups = groups["logGroups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{groups:?}");
    for group in groups {
        assert_eq!(group["kmsKeyId"], arn, "{group}");
    }
}

/// The key id the stack's alias points at, if the alias exists.
fn key_by_alias(moto: &moto::MotoServer) -> Option<String> {
    let aliases = aws_json(moto, "kms", "TrentService.ListAliases", json!({}));
    aliases["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["AliasName"] == format!("alias/flotilla/{STACK}"))
        .map(|a| a["TargetKeyId"].as_str().unwrap().to_string())
}

/// After destroy: no groups, no parameters, no alias, the key pending deletion.
fn check_destroyed(moto: &moto::MotoServer, runtime: &tokio::runtime::Runtime, key_arn: &str) {
    let sdk = moto.sdk(runtime);
    let autoscaling = aws_sdk_autoscaling::Client::new(&sdk);
    let groups = runtime
        .block_on(autoscaling.describe_auto_scaling_groups().send())
        .unwrap();
    assert!(groups.auto_scaling_groups().is_empty(), "{groups:?}");
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let left = runtime
        .block_on(
            ssm.get_parameters_by_path()
                .path(format!("/flotilla/{STACK}"))
                .send(),
        )
        .unwrap();
    assert!(left.parameters().is_empty(), "{left:?}");
    assert_eq!(key_by_alias(moto), None);
    let key = aws_json(
        moto,
        "kms",
        "TrentService.DescribeKey",
        json!({"KeyId": key_arn}),
    );
    assert_eq!(key["KeyMetadata"]["KeyState"], "PendingDeletion");
}

/// What an apply of the example should have made.
struct Variant {
    session_manager: bool,
    hop_limit: i32,
    job_sudo: &'static str,
    ecr_repositories: &'static [&'static str],
    keep_failed_minutes: u32,
    /// The queue's URL, and whether the agents turn HTTPS off for it.
    queue: (&'static str, bool),
    vpc_endpoints: bool,
}

/// One fresh apply of the example, checked in moto and in the state, then destroyed.
fn apply_check_destroy(
    terraform: &Terraform,
    moto: &moto::MotoServer,
    runtime: &tokio::runtime::Runtime,
    variant: Variant,
) {
    terraform.apply();
    let state = state(terraform);
    check_policies(&state, &variant);
    check_applied(moto, runtime, &variant);
    let key_arn = resource(&state, "aws_kms_key.this[0]")["arn"]
        .as_str()
        .unwrap()
        .to_string();
    terraform.destroy();
    check_destroyed(moto, runtime, &key_arn);
}

#[test]
fn the_module_validates_applies_and_destroys_against_moto() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let moto = moto::MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let terraform = Terraform::new(dir.path(), &moto, "terraform", "gpu-fleet");
    terraform.init_and_validate(&terraform.module);
    terraform.init_and_validate(&terraform.example);
    // The example reads its image id from SSM.
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk(&runtime));
    runtime
        .block_on(
            ssm.put_parameter()
                .name("/flotilla/images/gpu")
                .value("ami-12c6146b")
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send(),
        )
        .unwrap();

    // A plain-HTTP queue only under its own name (issue 27): an http:// queue_endpoint is
    // refused by its validation, both endpoints together by the module's precondition.
    let endpoints = terraform.example.join("endpoint_override.tf");
    for (inputs, refusal) in [
        (
            "queue_endpoint = \"http://hub.internal:8080\"",
            "a plain http:// queue goes in plain_http_queue_endpoint",
        ),
        (
            "plain_http_queue_endpoint = \"http://hub.internal:8080\"",
            "Set exactly one of queue_endpoint (https://) and plain_http_queue_endpoint",
        ),
    ] {
        std::fs::write(
            &endpoints,
            format!("module \"gpu_fleet\" {{\n  {inputs}\n}}\n"),
        )
        .unwrap();
        let said = terraform.refused(&["plan", "-input=false", "-no-color"]);
        assert!(said.contains(refusal), "{inputs}: {said}");
    }
    std::fs::remove_file(&endpoints).unwrap();

    // As written (the defaults), then the opt-ins through an override file: Session Manager,
    // job sudo, containers reach IMDS, an ECR repository for the jobs, failed instances kept, a
    // plain-HTTP queue, the agent role's credentials only through its VPC's endpoints.
    let opt_in = concat!(
        "module \"gpu_fleet\" {\n",
        "  enable_session_manager       = true\n",
        "  job_sudo                     = true\n",
        "  metadata_hop_limit           = 2\n",
        "  job_ecr_repositories         = [\"team/app\"]\n",
        "  keep_failed_instance_minutes = 30\n",
        "  queue_endpoint               = \"\"\n",
        "  plain_http_queue_endpoint    = \"http://hub.internal:8080\"\n",
        "  require_vpc_endpoints        = true\n",
        "}\n",
    );
    let variants = [
        (
            None,
            Variant {
                session_manager: false,
                hop_limit: 1,
                job_sudo: "false",
                ecr_repositories: &[],
                keep_failed_minutes: 0,
                queue: ("https://example.semaphoreci.com", false),
                vpc_endpoints: false,
            },
        ),
        (
            Some(opt_in),
            Variant {
                session_manager: true,
                hop_limit: 2,
                job_sudo: "true",
                ecr_repositories: &["team/app"],
                keep_failed_minutes: 30,
                queue: ("http://hub.internal:8080", true),
                vpc_endpoints: true,
            },
        ),
    ];
    for (override_file, variant) in variants {
        if let Some(text) = override_file {
            std::fs::write(terraform.example.join("opt_in_override.tf"), text).unwrap();
        }
        apply_check_destroy(&terraform, &moto, &runtime, variant);
    }
}
