//! Static checks of the hub stack (`infra/cloudformation/hub.yaml`, which `scaler deploy
//! --template hub` embeds) and its Terraform twin (`infra/terraform-hub`), as `infra_static.rs`
//! does for the fleet: cfn-lint and `terraform fmt` pass (checkov scans both through
//! `infra_static.rs`, which runs it on all of infra/); every parameter is a variable of the same
//! snake_case name, default and validations, the resource kinds and outputs match; the one-line
//! user data and the hub-config keys are those the image's `flotilla-hub-boot` reads; and the
//! security properties docs/hub-stack.md promises hold in the template (IMDSv2, TLS only, each
//! network path from one place only, encrypted storage, a final snapshot, no secret in a
//! parameter).
//!
//! A missing tool fails its test with the command that installs it: nothing is skipped.

use crate::infra_parity::*;
use serde_yaml::Value;
use std::collections::BTreeSet;

const TEMPLATE: &str = "infra/cloudformation/hub.yaml";
const MODULE: &str = "infra/terraform-hub";

fn template() -> Value {
    yaml(TEMPLATE)
}

fn resource(name: &str) -> Value {
    template()["Resources"][name].clone()
}

#[test]
fn cfn_lint_passes() {
    let output = run_tool("cfn-lint", &[TEMPLATE], "python3 -m pip install cfn-lint");
    assert_success(&format!("cfn-lint {TEMPLATE}"), &output);
}

#[test]
fn terraform_fmt_is_clean() {
    let args = ["fmt", "-check", "-recursive", "-no-color", MODULE];
    let output = run_tool(
        "terraform",
        &args,
        "https://developer.hashicorp.com/terraform/install (a single binary; 1.5 or newer)",
    );
    assert_success(&format!("terraform {}", args.join(" ")), &output);
}

#[test]
fn every_parameter_is_a_variable_with_the_same_default() {
    let problems = parameter_problems(
        &cfn_parameters(&template()),
        &tf_variables(&format!("{MODULE}/variables.tf")),
    );
    assert!(
        problems.is_empty(),
        "hub.yaml and infra/terraform-hub inputs differ:\n  {}",
        problems.join("\n  ")
    );
}

/// CloudFormation kind → the Terraform kinds that stand for it.
const KINDS: &[(&str, &str)] = &[
    ("AWS::KMS::Key", "aws_kms_key"),
    ("AWS::KMS::Alias", "aws_kms_alias"),
    ("AWS::SecretsManager::Secret", "aws_secretsmanager_secret"),
    (
        "AWS::SecretsManager::Secret",
        "aws_secretsmanager_secret_version",
    ),
    ("AWS::Logs::LogGroup", "aws_cloudwatch_log_group"),
    ("AWS::EC2::SecurityGroup", "aws_security_group"),
    (
        "AWS::EC2::SecurityGroup",
        "aws_vpc_security_group_ingress_rule",
    ),
    (
        "AWS::EC2::SecurityGroup",
        "aws_vpc_security_group_egress_rule",
    ),
    (
        "AWS::EC2::SecurityGroupEgress",
        "aws_vpc_security_group_egress_rule",
    ),
    ("AWS::RDS::DBSubnetGroup", "aws_db_subnet_group"),
    ("AWS::RDS::DBParameterGroup", "aws_db_parameter_group"),
    ("AWS::RDS::DBInstance", "aws_db_instance"),
    ("AWS::SSM::Parameter", "aws_ssm_parameter"),
    ("AWS::IAM::Role", "aws_iam_role"),
    ("AWS::IAM::Policy", "aws_iam_role_policy"),
    ("AWS::IAM::InstanceProfile", "aws_iam_instance_profile"),
    ("AWS::EC2::LaunchTemplate", "aws_launch_template"),
    (
        "AWS::AutoScaling::AutoScalingGroup",
        "aws_autoscaling_group",
    ),
    ("AWS::ElasticLoadBalancingV2::LoadBalancer", "aws_lb"),
    (
        "AWS::ElasticLoadBalancingV2::TargetGroup",
        "aws_lb_target_group",
    ),
    ("AWS::ElasticLoadBalancingV2::Listener", "aws_lb_listener"),
];

#[test]
fn resource_kinds_match_both_ways() {
    let tf_kinds: BTreeSet<String> = tf_blocks(MODULE, "resource").into_iter().collect();
    assert!(tf_kinds.len() > 10, "{tf_kinds:?}");
    let problems = kind_problems(&cfn_kinds(&template()), &tf_kinds, KINDS);
    assert!(
        problems.is_empty(),
        "hub.yaml and infra/terraform-hub resources differ:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn outputs_match() {
    let cfn: BTreeSet<String> = template()["Outputs"]
        .as_mapping()
        .expect("hub.yaml has Outputs")
        .keys()
        .map(|k| snake_case(k.as_str().expect("output names are strings")))
        .collect();
    let tf: BTreeSet<String> = tf_blocks(MODULE, "output").into_iter().collect();
    assert_eq!(
        cfn, tf,
        "outputs of hub.yaml (snake_case) and of the module"
    );
    for required in [
        "queue_endpoint",
        "admin_token_secret_arn",
        "registration_token_secret_arn",
        "database_endpoint",
        "database_secret_arn",
        "kms_key_arn",
        "load_balancer_dns_name",
    ] {
        assert!(tf.contains(required), "output {required} is missing");
    }
}

/// The keys `flotilla-hub-boot` accepts in the hub-config parameter (its `want` table).
fn boot_script_keys() -> BTreeSet<String> {
    let script = read("ami/scripts/flotilla-hub-boot");
    let keys: BTreeSet<String> = script
        .lines()
        .filter_map(|line| line.trim().strip_prefix('['))
        .filter_map(|rest| rest.split_once("]='^").map(|(key, _)| key.to_string()))
        .collect();
    assert!(keys.len() >= 7, "{keys:?}");
    keys
}

/// The keys of KEY=VALUE lines.
fn line_keys(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.trim().split_once('='))
        .map(|(key, _)| key.to_string())
        .collect()
}

#[test]
fn both_write_the_hub_config_the_boot_script_reads() {
    let config = &resource("HubConfigParameter")["Properties"]["Value"];
    let Value::Tagged(sub) = config else {
        panic!("HubConfigParameter's Value is not a !Sub: {config:?}")
    };
    let cfn_text = sub.value[0].as_str().expect("the !Sub text").to_string();
    let main = read(&format!("{MODULE}/main.tf"));
    let heredoc = main
        .split_once("<<-CONFIG")
        .and_then(|(_, rest)| rest.split_once("  CONFIG"))
        .map(|(text, _)| text.to_string())
        .expect("main.tf writes the hub config as a <<-CONFIG heredoc");
    assert_eq!(line_keys(&cfn_text), boot_script_keys(), "hub.yaml");
    assert_eq!(line_keys(&heredoc), boot_script_keys(), "main.tf");
}

#[test]
fn user_data_is_the_one_line_the_image_reads() {
    let data = &resource("HubLaunchTemplate")["Properties"]["LaunchTemplateData"];
    let user_data = format!("{:?}", data["UserData"]);
    let line = "FLOTILLA_HUB_CONFIG_PARAMETER=/flotilla/${AWS::StackName}/hub-config";
    assert!(user_data.contains(line), "{user_data}");
    let main = read(&format!("{MODULE}/main.tf"));
    assert!(main
        .contains(r#"base64encode("FLOTILLA_HUB_CONFIG_PARAMETER=${local.prefix}/hub-config")"#));
    let boot = read("ami/scripts/flotilla-boot");
    assert!(
        boot.contains("FLOTILLA_HUB_CONFIG_PARAMETER)=("),
        "flotilla-boot's line_re"
    );
    let unit = read("ami/systemd/flotilla-hub.service");
    assert!(unit.contains("ConditionPathExists=/run/flotilla/hub-config.env"));
    assert!(unit.contains("ExecStartPre=+/usr/local/lib/flotilla/flotilla-hub-boot"));
}

/// `path` (keys separated by '/') under a resource's Properties, as YAML text.
fn property(resource_name: &str, path: &str) -> String {
    let mut value = resource(resource_name)["Properties"].clone();
    for key in path.split('/') {
        value = match key.parse::<usize>() {
            Ok(index) => value[index].clone(),
            Err(_) => value[key].clone(),
        };
    }
    serde_yaml::to_string(&value).unwrap().trim().to_string()
}

#[test]
fn the_promised_security_properties_hold() {
    // (resource, property path, expected YAML text)
    let rows = [
        (
            "HubLaunchTemplate",
            "LaunchTemplateData/MetadataOptions/HttpTokens",
            "required",
        ),
        (
            "HubLaunchTemplate",
            "LaunchTemplateData/MetadataOptions/HttpPutResponseHopLimit",
            "1",
        ),
        (
            "HubLaunchTemplate",
            "LaunchTemplateData/BlockDeviceMappings/0/Ebs/Encrypted",
            "true",
        ),
        ("Database", "StorageEncrypted", "true"),
        ("Database", "ManageMasterUserPassword", "true"),
        ("Database", "PubliclyAccessible", "false"),
        ("Database", "Engine", "postgres"),
        ("DatabaseParameterGroup", "Parameters/rds.force_ssl", "'1'"),
        ("HttpsListener", "Protocol", "HTTPS"),
        ("HttpsListener", "Port", "443"),
        (
            "HttpsListener",
            "SslPolicy",
            "ELBSecurityPolicy-TLS13-1-2-2021-06",
        ),
        ("HubTargetGroup", "HealthCheckPath", "/healthz"),
        ("HubTargetGroup", "Port", "8080"),
        (
            "LoadBalancerSecurityGroup",
            "SecurityGroupIngress/0/FromPort",
            "443",
        ),
        (
            "LoadBalancerSecurityGroup",
            "SecurityGroupIngress/0/CidrIp",
            "!Ref AllowedCidr",
        ),
        (
            "HubSecurityGroup",
            "SecurityGroupIngress/0/FromPort",
            "8080",
        ),
        (
            "HubSecurityGroup",
            "SecurityGroupIngress/0/SourceSecurityGroupId",
            "!GetAtt LoadBalancerSecurityGroup.GroupId",
        ),
        (
            "DatabaseSecurityGroup",
            "SecurityGroupIngress/0/FromPort",
            "5432",
        ),
        (
            "DatabaseSecurityGroup",
            "SecurityGroupIngress/0/SourceSecurityGroupId",
            "!GetAtt HubSecurityGroup.GroupId",
        ),
    ];
    for (name, path, expected) in rows {
        assert_eq!(property(name, path), expected, "{name} {path}");
    }
    for (name, ingress) in [
        ("LoadBalancerSecurityGroup", 1),
        ("HubSecurityGroup", 1),
        ("DatabaseSecurityGroup", 1),
    ] {
        let rules = &resource(name)["Properties"]["SecurityGroupIngress"];
        assert_eq!(rules.as_sequence().map(Vec::len), Some(ingress), "{name}");
    }
    let database = resource("Database");
    assert_eq!(database["DeletionPolicy"], "Snapshot");
    assert_eq!(database["UpdateReplacePolicy"], "Snapshot");
    // Only one listener, HTTPS: nothing on port 80.
    let listeners = cfn_kinds_named("AWS::ElasticLoadBalancingV2::Listener");
    assert_eq!(listeners, ["HttpsListener"]);
    // Who may reach the hub is always the user's choice, never a default.
    let parameters = &template()["Parameters"];
    assert!(parameters["AllowedCidr"].get("Default").is_none());
}

/// Logical ids of the resources of one type.
fn cfn_kinds_named(kind: &str) -> Vec<String> {
    template()["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, body)| body["Type"] == kind)
        .map(|(name, _)| name.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_hub_role_reads_its_secrets_only() {
    let policy = resource("HubPolicy")["Properties"]["PolicyDocument"]["Statement"].clone();
    let statements = policy.as_sequence().expect("statements");
    let text = serde_yaml::to_string(&policy).unwrap();
    assert!(
        !text.contains("ssm:*") && !text.contains("secretsmanager:*") && !text.contains("kms:*")
    );
    for statement in statements {
        let resource = serde_yaml::to_string(&statement["Resource"]).unwrap();
        assert_ne!(resource.trim(), "'*'", "{statement:?}");
    }
    let decrypt = statements
        .iter()
        .find(|s| s["Action"] == "kms:Decrypt")
        .expect("a kms:Decrypt statement");
    let via =
        serde_yaml::to_string(&decrypt["Condition"]["StringEquals"]["kms:ViaService"]).unwrap();
    assert!(via.contains("secretsmanager.${AWS::Region}"), "{via}");
    let secrets = statements
        .iter()
        .find(|s| s["Action"] == "secretsmanager:GetSecretValue")
        .expect("a GetSecretValue statement");
    assert_eq!(secrets["Resource"].as_sequence().map(Vec::len), Some(3));
    // No secret is a parameter: they are generated into Secrets Manager.
    for name in template()["Parameters"].as_mapping().unwrap().keys() {
        let name = name.as_str().unwrap().to_lowercase();
        assert!(
            !name.contains("password") && !name.contains("token"),
            "{name}"
        );
    }
}
