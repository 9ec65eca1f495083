//! Static checks of infra/: the CloudFormation stack (`infra/cloudformation/fleet.yaml`, which
//! `scaler deploy` embeds) and the Terraform module (`infra/terraform`). cfn-lint, checkov and
//! `terraform fmt` must pass; the two must stay in step (every parameter a variable of the same
//! snake_case name and default, the same validations, the same resource kinds and outputs); the
//! configuration YAML both write to SSM must follow docs/aws-contract.md and parse as the scaler's
//! own config.
//!
//! A missing tool fails its test with the command that installs it: nothing is skipped.

use crate::infra_parity;
use crate::infra_parity::*;
use serde_yaml::Value;
use std::collections::BTreeSet;

const TEMPLATE: &str = "infra/cloudformation/fleet.yaml";

// ------------------------------------------------------------------ (a) (b) (c) the tools

#[test]
fn cfn_lint_passes() {
    let output = run_tool("cfn-lint", &[TEMPLATE], "python3 -m pip install cfn-lint");
    assert_success(&format!("cfn-lint {TEMPLATE}"), &output);
}

#[test]
fn checkov_passes_on_cloudformation_and_terraform() {
    let output = run_tool(
        "checkov",
        &[
            "-d",
            "infra",
            "--framework",
            "cloudformation",
            "terraform",
            "--skip-download",
            "--quiet",
            "--compact",
        ],
        "python3 -m pip install checkov (best in its own virtual environment: it pins boto3)",
    );
    assert_success("checkov -d infra", &output);
    // Both frameworks really scanned something (a passing run over nothing proves nothing).
    let stdout = String::from_utf8_lossy(&output.stdout);
    for framework in ["cloudformation", "terraform"] {
        assert!(
            stdout.contains(&format!("{framework} scan results")),
            "checkov found no {framework} resources to scan under infra/:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("Parsing errors"),
        "checkov could not parse part of infra/:\n{stdout}"
    );
}

#[test]
fn terraform_fmt_is_clean() {
    let output = run_tool(
        "terraform",
        &[
            "fmt",
            "-check",
            "-recursive",
            "-no-color",
            "infra/terraform",
        ],
        "https://developer.hashicorp.com/terraform/install (a single binary; 1.5 or newer)",
    );
    assert_success(
        "terraform fmt -check -recursive infra/terraform (run `terraform fmt -recursive infra/terraform`)",
        &output,
    );
}

// ------------------------------------------------------------------ (d) parity

#[test]
fn snake_case_conversion() {
    for (pascal, snake) in [
        ("ManagedPolicyARNs", "managed_policy_arns"),
        ("PermissionsBoundaryARN", "permissions_boundary_arn"),
        ("OnDemandPercentage", "on_demand_percentage"),
        ("VpcId", "vpc_id"),
        ("ImageIdParameter", "image_id_parameter"),
        ("SecurityGroupIds", "security_group_ids"),
        ("EnableWarmPool", "enable_warm_pool"),
        ("ScalerInstanceType", "scaler_instance_type"),
        ("AgentGroupNames", "agent_group_names"),
        ("LogGroups", "log_groups"),
    ] {
        assert_eq!(snake_case(pascal), snake, "{pascal}");
    }
}

fn template() -> Value {
    yaml(TEMPLATE)
}

/// The Terraform variable that stands for CloudFormation's AWS::StackName pseudo parameter: the
#[test]
fn every_parameter_is_a_variable_with_the_same_default() {
    let problems = parameter_problems(
        &cfn_parameters(&template()),
        &tf_variables("infra/terraform/variables.tf"),
    );
    assert!(
        problems.is_empty(),
        "CloudFormation and Terraform inputs differ:\n  {}",
        problems.join("\n  ")
    );
}

/// Which Terraform resource kinds stand for which CloudFormation resource kinds. A CloudFormation
/// kind may need several Terraform kinds (a role's managed policies are attachments there), and a
/// Terraform kind may carry several CloudFormation kinds (a warm pool is a block of the group).
const KINDS: &[(&str, &str)] = &[
    ("AWS::EC2::LaunchTemplate", "aws_launch_template"),
    (
        "AWS::AutoScaling::AutoScalingGroup",
        "aws_autoscaling_group",
    ),
    ("AWS::AutoScaling::WarmPool", "aws_autoscaling_group"),
    ("AWS::EC2::SecurityGroup", "aws_security_group"),
    ("AWS::IAM::Role", "aws_iam_role"),
    ("AWS::IAM::Role", "aws_iam_role_policy_attachment"),
    ("AWS::IAM::Policy", "aws_iam_role_policy"),
    ("AWS::IAM::InstanceProfile", "aws_iam_instance_profile"),
    ("AWS::SSM::Parameter", "aws_ssm_parameter"),
    ("AWS::Logs::LogGroup", "aws_cloudwatch_log_group"),
    ("AWS::KMS::Key", "aws_kms_key"),
    ("AWS::KMS::Alias", "aws_kms_alias"),
    ("AWS::CloudWatch::Dashboard", "aws_cloudwatch_dashboard"),
    ("AWS::CloudWatch::Alarm", "aws_cloudwatch_metric_alarm"),
    ("AWS::S3::Bucket", "aws_s3_bucket"),
    (
        "AWS::S3::Bucket",
        "aws_s3_bucket_server_side_encryption_configuration",
    ),
    ("AWS::S3::Bucket", "aws_s3_bucket_public_access_block"),
    ("AWS::S3::Bucket", "aws_s3_bucket_ownership_controls"),
    ("AWS::S3::Bucket", "aws_s3_bucket_versioning"),
    ("AWS::S3::Bucket", "aws_s3_bucket_lifecycle_configuration"),
    ("AWS::S3::BucketPolicy", "aws_s3_bucket_policy"),
];

/// `keyword "a"` blocks of the module: the first label of each.
fn tf_blocks(keyword: &str) -> Vec<String> {
    infra_parity::tf_blocks("infra/terraform", keyword)
}

#[test]
fn resource_kinds_match_both_ways() {
    let tf_kinds: BTreeSet<String> = tf_blocks("resource").into_iter().collect();
    assert!(
        !tf_kinds.is_empty(),
        "no resource blocks found in infra/terraform/*.tf"
    );
    let problems = kind_problems(&cfn_kinds(&template()), &tf_kinds, KINDS);
    assert!(
        problems.is_empty(),
        "CloudFormation and Terraform resources differ:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn outputs_match() {
    let template = template();
    let cfn: BTreeSet<String> = template["Outputs"]
        .as_mapping()
        .expect("fleet.yaml has Outputs")
        .keys()
        .map(|k| snake_case(k.as_str().expect("output names are strings")))
        .collect();
    let tf: BTreeSet<String> = tf_blocks("output").into_iter().collect();
    assert_eq!(
        cfn, tf,
        "outputs of the stack (snake_case) and of the module differ"
    );
    for required in [
        "agent_group_names",
        "primary_group_name",
        "fallback_group_name",
        "scaler_group_name",
        "instance_role_arn",
        "scaler_role_arn",
        "kms_key_arn",
        "log_groups",
        "agent_config_parameter",
        "scaler_config_parameter",
        "agent_token_parameter",
    ] {
        assert!(tf.contains(required), "output {required} is missing");
    }
}

// ------------------------------------------------------------------ (e) the configuration YAML

/// The `Fn::Sub` template string of a resource's property (`!Sub [text, {vars}]` or `!Sub text`).
fn sub_text(template: &Value, resource: &str, property: &str) -> String {
    let value = &template["Resources"][resource]["Properties"][property];
    let Value::Tagged(tagged) = value else {
        panic!("{resource}.{property} is not a !Sub: {value:?}")
    };
    assert!(
        tagged.tag == "Sub",
        "{resource}.{property} is !{}, expected !Sub",
        tagged.tag
    );
    match &tagged.value {
        Value::String(text) => text.clone(),
        Value::Sequence(items) => items[0]
            .as_str()
            .expect("!Sub's first item is the text")
            .to_string(),
        other => panic!("{resource}.{property}: unexpected !Sub form {other:?}"),
    }
}

/// `${Name}` (CloudFormation) or `${expr}` (Terraform) replaced by what `value` gives for it.
fn substitute(text: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // Terraform expressions may nest braces and strings ("${join(", ", x)}").
        let bytes = after.as_bytes();
        let (mut depth, mut i) = (1, 0);
        while depth > 0 {
            match bytes[i] {
                b'"' => {
                    i = skip_string(bytes, i);
                    continue;
                }
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        out.push_str(&value(&after[..i - 1]));
        rest = &after[i..];
    }
    out.push_str(rest);
    out
}

/// The keys of a YAML document as paths (`fleets[].queue.endpoint`), scalars' values dropped.
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Mapping(map) => {
            for (key, value) in map {
                let path = format!(
                    "{prefix}{}{}",
                    if prefix.is_empty() { "" } else { "." },
                    key.as_str().expect("string keys")
                );
                out.insert(path.clone());
                key_paths(value, &path, out);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                if item.is_mapping() {
                    key_paths(item, &format!("{prefix}[]"), out);
                }
            }
        }
        _ => {}
    }
}

fn paths(yaml: &str) -> BTreeSet<String> {
    let value: Value =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("not YAML ({e}):\n{yaml}"));
    let mut out = BTreeSet::new();
    key_paths(&value, "", &mut out);
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The keys docs/aws-contract.md gives the two parameters.
fn contract_agent_keys() -> BTreeSet<String> {
    set(&[
        "endpoint",
        "no-https",
        "token-ssm-parameter",
        "disconnect-after-idle-timeout",
        "job-role-arn",
        "job-role-stack",
        "job-role-agent-type",
        "cache-bucket",
        "job-ecr-repositories",
        "keep-failed-instance-minutes",
    ])
}

fn contract_scaler_keys() -> BTreeSet<String> {
    set(&[
        "metrics_listen",
        "fleets",
        "fleets[].agent_type",
        "fleets[].queue",
        "fleets[].queue.endpoint",
        "fleets[].queue.token_ssm_parameter",
        "fleets[].aws",
        "fleets[].aws.groups",
        "fleets[].policy",
        "fleets[].policy.spare",
        "fleets[].policy.scheduled_minimums",
        "fleets[].reaper",
        "fleets[].reaper.boot_deadline_seconds",
        "fleets[].reaper.max_lifetime_seconds",
    ])
}

#[test]
fn agent_config_follows_the_contract() {
    let template = template();
    let text = sub_text(&template, "AgentConfigParameter", "Value");
    assert_eq!(
        paths(&substitute(&text, |name| name.to_string())),
        contract_agent_keys()
    );
    // Each key carries the right value.
    let value: Value =
        serde_yaml::from_str(&substitute(&text, |name| format!("<{name}>"))).unwrap();
    for (key, from) in [
        ("endpoint", "<Host>"),
        ("no-https", "<NoHttps>"),
        ("token-ssm-parameter", "<TokenParameter>"),
        ("disconnect-after-idle-timeout", "<IdleTimeout>"),
        ("job-role-arn", "<JobRole.Arn>"),
        ("job-role-stack", "<AWS::StackName>"),
        ("job-role-agent-type", "<FleetName>"),
        ("cache-bucket", "<CacheBucket>"),
        ("job-ecr-repositories", "<EcrRepositories>"),
        (
            "keep-failed-instance-minutes",
            "<KeepFailedInstanceMinutes>",
        ),
    ] {
        assert_eq!(value[key].as_str(), Some(from), "agent-config {key}");
    }
    assert_eq!(
        template["Resources"]["AgentConfigParameter"]["Properties"]["Name"],
        Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
            tag: serde_yaml::value::Tag::new("Sub"),
            value: Value::String("/flotilla/${AWS::StackName}/agent-config".into()),
        }))
    );
}

#[test]
fn scaler_config_follows_the_contract_and_parses_as_the_scalers_config() {
    let template = template();
    let text = sub_text(&template, "ScalerConfigParameter", "Value");
    assert_eq!(
        paths(&substitute(&text, |name| name.to_string())),
        contract_scaler_keys()
    );
    let value: Value =
        serde_yaml::from_str(&substitute(&text, |name| format!("<{name}>"))).unwrap();
    let fleet = &value["fleets"][0];
    for (got, from) in [
        (&fleet["agent_type"], "<FleetName>"),
        (&fleet["queue"]["endpoint"], "<Endpoint>"),
        (&fleet["queue"]["token_ssm_parameter"], "<TokenParameter>"),
        (&fleet["aws"]["groups"][0], "<Groups>"),
        (&fleet["policy"]["spare"], "<SpareInstances>"),
        (
            &fleet["policy"]["scheduled_minimums"],
            "<ScheduledMinimums>",
        ),
        (&fleet["reaper"]["boot_deadline_seconds"], "<BootDeadline>"),
        (
            &fleet["reaper"]["max_lifetime_seconds"],
            "<MaxInstanceLifetime>",
        ),
    ] {
        assert_eq!(got.as_str(), Some(from));
    }
    // What CloudFormation would write for a two-pool fleet is a config `scaler run` accepts.
    let rendered = substitute(&text, |name| {
        match name {
            "FleetName" => "gpu-fleet",
            "Endpoint" => "https://example.semaphoreci.com",
            "TokenParameter" => "/flotilla/gpu-fleet/agent-token",
            "Groups" => "gpu-fleet-AgentGroup-ABC, gpu-fleet-FallbackGroup-DEF",
            "SpareInstances" => "1",
            "ScheduledMinimums" => "* 8-18 * * MON-FRI@Europe/Berlin=2;0 0 * * SAT@UTC=0",
            "BootDeadline" => "900",
            "MaxInstanceLifetime" => "0",
            other => panic!("scaler-config uses an unknown variable ${{{other}}}"),
        }
        .to_string()
    });
    let config: scaling::config::ScalerConfig =
        serde_yaml::from_str(&rendered).unwrap_or_else(|e| {
            panic!("the scaler rejects the stack's scaler-config: {e}\n{rendered}")
        });
    let fleet = &config.fleets[0];
    assert_eq!(fleet.agent_type, "gpu-fleet");
    assert_eq!(
        fleet.aws.as_ref().expect("an aws section").groups,
        ["gpu-fleet-AgentGroup-ABC", "gpu-fleet-FallbackGroup-DEF"]
    );
    assert_eq!(fleet.policy.spare, 1);
    assert_eq!(
        fleet
            .policy
            .scheduled_minimums
            .entries()
            .expect("compact schedule parses")
            .len(),
        2
    );
    assert_eq!(
        fleet
            .reaper
            .as_ref()
            .expect("a reaper section")
            .boot_deadline_seconds,
        900
    );
    assert!(config.metrics_listen.is_some());
}

/// The heredoc assigned to `local.NAME` in main.tf, its indentation stripped (as `<<-` does).
fn tf_heredoc(name: &str) -> String {
    let main = read("infra/terraform/main.tf");
    let marker = format!("{name} = <<-EOT\n");
    let start = main
        .find(&marker)
        .unwrap_or_else(|| panic!("main.tf has no `{name} = <<-EOT` heredoc"))
        + marker.len();
    let end = start
        + main[start..]
            .find("\n  EOT")
            .or_else(|| main[start..].find("EOT"))
            .expect("heredoc ends");
    let lines: Vec<&str> = main[start..end].lines().collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn terraform_writes_the_same_configuration_keys() {
    assert_eq!(
        paths(&substitute(&tf_heredoc("agent_config"), |_| "x".into())),
        contract_agent_keys()
    );
    assert_eq!(
        paths(&substitute(&tf_heredoc("scaler_config"), |_| "x".into())),
        contract_scaler_keys()
    );
}

#[test]
fn user_data_is_the_contract_line() {
    let template = template();
    for (resource, line) in [
        (
            "AgentLaunchTemplate",
            "FLOTILLA_AGENT_CONFIG_PARAMETER=/flotilla/${AWS::StackName}/agent-config",
        ),
        (
            "ScalerLaunchTemplate",
            "FLOTILLA_SCALER_CONFIG_PARAMETER=/flotilla/${AWS::StackName}/scaler-config",
        ),
    ] {
        let user_data = &template["Resources"][resource]["Properties"]["LaunchTemplateData"]
            ["UserData"]["Fn::Base64"];
        let Value::Tagged(sub) = user_data else {
            panic!("{resource}: UserData is not Fn::Base64 of !Sub")
        };
        assert_eq!(sub.value.as_str(), Some(line), "{resource}'s user data");
    }
    let main = read("infra/terraform/main.tf");
    for line in [
        "base64encode(\"FLOTILLA_AGENT_CONFIG_PARAMETER=${aws_ssm_parameter.agent_config.name}\")",
        "base64encode(\"FLOTILLA_SCALER_CONFIG_PARAMETER=${aws_ssm_parameter.scaler_config.name}\")",
    ] {
        assert!(main.contains(line), "main.tf lacks user data {line}");
    }
}

/// The names the image and `scaler deploy` rely on are the same in both: the job settings'
/// parameters (read by the image's flotilla-seal), the key's alias, and the key given as an input.
#[test]
fn job_settings_and_the_key_have_the_same_names_in_both() {
    let template = template();
    let resources = &template["Resources"];
    let sub = |resource: &str, property: &str| sub_text(&template, resource, property);
    assert_eq!(
        sub("JobSudoParameter", "Name"),
        "/flotilla/${AWS::StackName}/job-sudo"
    );
    assert_eq!(
        sub("JobDockerParameter", "Name"),
        "/flotilla/${AWS::StackName}/job-docker"
    );
    assert_eq!(
        sub("KmsKeyAlias", "AliasName"),
        "alias/flotilla/${AWS::StackName}"
    );
    assert_eq!(
        resources["KmsKey"]["Properties"]["EnableKeyRotation"],
        Value::Bool(true)
    );
    for (resource, parameter) in [
        ("JobSudoParameter", "JobSudo"),
        ("JobDockerParameter", "JobDockerAccess"),
    ] {
        let value = &resources[resource]["Properties"]["Value"];
        let Value::Tagged(reference) = value else {
            panic!("{resource}'s Value is not !Ref {parameter}")
        };
        assert_eq!(reference.value.as_str(), Some(parameter), "{resource}");
    }
    let main = read("infra/terraform/main.tf");
    for needed in [
        "job-sudo   = { value = var.job_sudo,",
        "job-docker = { value = var.job_docker_access,",
        "name        = \"${local.prefix}/${each.key}\"",
        "name          = \"alias/flotilla/${var.stack_name}\"",
        "enable_key_rotation = true",
        "http_put_response_hop_limit = var.metadata_hop_limit",
        "kms_key_id        = local.kms_key_arn",
    ] {
        assert!(main.contains(needed), "main.tf lacks `{needed}`");
    }
}

// ------------------------------------------------------------------ (f) monitoring

/// The metric names the scaler's EMF lines carry (from a round of two pools that raised).
fn emf_metric_names() -> BTreeSet<String> {
    use scaling::policy::{PoolState, QueueSnapshot};
    let pool = PoolState {
        name: "pool".into(),
        desired: 1,
        min: 0,
        max: 2,
        in_service: 1,
        pending: 0,
        short: true,
        health: scaling::pool_health::PoolHealth::default(),
        warm_pool: None,
    };
    let queue = QueueSnapshot::default();
    let round = scaling::emf::Round {
        agent_type: "gpu",
        timestamp_ms: 1_700_000_000_000,
        queue: &queue,
        pools: std::slice::from_ref(&pool),
        launches: 1,
        reaps: 1,
        reaction_ms: Some(1.0),
    };
    let mut names = BTreeSet::new();
    for line in scaling::emf::lines(&round) {
        let line: serde_json::Value = serde_json::from_str(&line).expect("EMF lines are JSON");
        for directive in line["_aws"]["CloudWatchMetrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for metric in directive["Metrics"].as_array().into_iter().flatten() {
                names.insert(metric["Name"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    names
}

/// The EMF metric names `text` mentions as whole words.
fn metrics_named(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    known
        .iter()
        .filter(|name| {
            text.match_indices(name.as_str()).any(|(at, _)| {
                !word(text[..at].chars().next_back())
                    && !word(text[at + name.len()..].chars().next())
            })
        })
        .cloned()
        .collect()
}

#[test]
fn the_dashboard_and_alarms_match_and_watch_metrics_the_scaler_writes() {
    let known = emf_metric_names();
    let template = template();
    let resources = template["Resources"].as_mapping().expect("Resources");
    let of_type = |kind: &str| -> String {
        resources
            .values()
            .filter(|resource| resource["Type"].as_str() == Some(kind))
            .map(|resource| serde_yaml::to_string(resource).expect("YAML"))
            .collect()
    };
    let cfn_dashboard = metrics_named(&of_type("AWS::CloudWatch::Dashboard"), &known);
    let cfn_alarms = metrics_named(&of_type("AWS::CloudWatch::Alarm"), &known);
    let module = read("infra/terraform/monitoring.tf");
    let dashboard_end = module
        .find("resource \"aws_cloudwatch_metric_alarm\"")
        .expect("alarms");
    let tf_dashboard = metrics_named(&module[..dashboard_end], &known);
    let tf_alarms = metrics_named(&module[dashboard_end..], &known);
    for expected in [
        "Queued",
        "Running",
        "OldestQueuedSeconds",
        "PoolsShort",
        "Desired",
        "InService",
        "Launches",
        "Reaps",
        "EnqueueToRaise",
    ] {
        assert!(
            cfn_dashboard.contains(expected),
            "the stack's dashboard lacks {expected}"
        );
    }
    assert_eq!(
        cfn_dashboard, tf_dashboard,
        "dashboards of the stack and the module differ"
    );
    let alarms = BTreeSet::from(["OldestQueuedSeconds".to_string(), "PoolsShort".to_string()]);
    assert_eq!(cfn_alarms, alarms);
    assert_eq!(tf_alarms, alarms);
    for text in [
        of_type("AWS::CloudWatch::Alarm"),
        module[dashboard_end..].to_string(),
    ] {
        assert!(
            text.contains("Flotilla") && text.contains("AgentType"),
            "{text}"
        );
    }
}
