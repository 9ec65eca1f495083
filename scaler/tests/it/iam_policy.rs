//! The IAM policies and the KMS key policy of the CloudFormation stack, rendered for a stack
//! named gpu-fleet and held to the rules of `policy_rules` (shared with `terraform_e2e.rs`, which
//! checks what Terraform applied). Rendering evaluates the template's intrinsic functions (Ref,
//! Fn::Sub, Fn::If with the template's own Conditions, Fn::Join/Select/Split, Fn::GetAtt as the
//! ARN CloudFormation would give) for a set of parameter values, so each variant (the defaults,
//! Session Manager on, a key of one's own) is checked as AWS would see it.

use crate::policy_rules;
use crate::policy_rules::Stack;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const STACK: &str = "gpu-fleet";
const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
const OWN_KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/1111aaaa-22bb-33cc-44dd-555555eeeeee";

fn template() -> serde_yaml::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra/cloudformation/fleet.yaml"
    );
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The template rendered for parameter values (defaults for the rest).
struct Rendered {
    template: serde_yaml::Value,
    parameters: BTreeMap<String, Value>,
}

impl Rendered {
    fn new(given: &[(&str, &str)]) -> Rendered {
        let template = template();
        let mut parameters = BTreeMap::new();
        for (name, body) in template["Parameters"].as_mapping().unwrap() {
            let name = name.as_str().unwrap().to_string();
            let text = given
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
                .or_else(|| body.get("Default").map(scalar))
                .unwrap_or_default();
            let value = if body["Type"] == "CommaDelimitedList" {
                Value::Array(text.split(',').map(|s| json!(s.trim())).collect())
            } else {
                json!(text)
            };
            parameters.insert(name, value);
        }
        Rendered {
            template,
            parameters,
        }
    }

    /// A resource's Properties, rendered; `None` when its Condition is false.
    fn properties(&self, logical_id: &str) -> Option<Value> {
        let resource = &self.template["Resources"][logical_id];
        assert!(!resource.is_null(), "no resource {logical_id}");
        if let Some(condition) = resource.get("Condition") {
            if !self.condition(condition.as_str().unwrap()) {
                return None;
            }
        }
        self.eval(&resource["Properties"])
    }

    fn condition(&self, name: &str) -> bool {
        let value = self.eval(&self.template["Conditions"][name]).unwrap();
        value
            .as_bool()
            .unwrap_or_else(|| panic!("condition {name}: {value}"))
    }

    fn reference(&self, name: &str) -> Value {
        match name {
            "AWS::StackName" => json!(STACK),
            "AWS::Region" => json!(REGION),
            "AWS::AccountId" => json!(ACCOUNT),
            "AWS::Partition" => json!("aws"),
            "AWS::URLSuffix" => json!("amazonaws.com"),
            _ => match self.parameters.get(name) {
                Some(value) => value.clone(),
                None => json!(format!("<Ref:{name}>")),
            },
        }
    }

    /// What Fn::GetAtt gives, the way CloudFormation names things.
    fn attribute(&self, path: &str) -> Value {
        json!(match path {
            "InstanceRole.Arn" => role_arn("InstanceRole"),
            "ScalerRole.Arn" => role_arn("ScalerRole"),
            "JobRole.Arn" => role_arn("JobRole"),
            "CacheBucket.Arn" => cache_bucket_arn(),
            "KmsKey.Arn" => stack_key_arn(),
            "AgentLogGroup.Arn" => log_group_arn("agent"),
            "ScalerLogGroup.Arn" => log_group_arn("scaler"),
            "SystemLogGroup.Arn" => log_group_arn("system"),
            other => format!("<GetAtt:{other}>"),
        })
    }

    /// Evaluates a template value; `None` is AWS::NoValue.
    fn eval(&self, value: &serde_yaml::Value) -> Option<Value> {
        use serde_yaml::Value as Y;
        Some(match value {
            Y::Tagged(tagged) => {
                let name = tagged.tag.to_string();
                self.function(name.trim_start_matches('!'), &tagged.value)?
            }
            Y::Mapping(map) if map.len() == 1 => {
                let (key, inner) = map.iter().next().unwrap();
                let key = key.as_str().unwrap();
                match key.strip_prefix("Fn::").or((key == "Ref").then_some("Ref")) {
                    Some(function) => self.function(function, inner)?,
                    None => json!({ key: self.eval(inner)? }),
                }
            }
            Y::Mapping(map) => Value::Object(
                map.iter()
                    .filter_map(|(k, v)| Some((scalar(k), self.eval(v)?)))
                    .collect(),
            ),
            Y::Sequence(items) => Value::Array(items.iter().filter_map(|v| self.eval(v)).collect()),
            Y::String(s) => json!(s),
            Y::Number(n) => serde_json::to_value(n).unwrap(),
            Y::Bool(b) => json!(b),
            Y::Null => Value::Null,
        })
    }

    fn function(&self, name: &str, argument: &serde_yaml::Value) -> Option<Value> {
        let args = || -> Vec<Value> {
            argument
                .as_sequence()
                .unwrap_or_else(|| panic!("Fn::{name} takes a list"))
                .iter()
                .map(|v| self.eval(v).unwrap_or(Value::Null))
                .collect()
        };
        let text = |v: &Value| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        };
        Some(match name {
            "Ref" if argument.as_str() == Some("AWS::NoValue") => return None,
            "Ref" => self.reference(argument.as_str().unwrap()),
            "GetAtt" => self.attribute(&match argument {
                serde_yaml::Value::Sequence(parts) => {
                    format!("{}.{}", scalar(&parts[0]), scalar(&parts[1]))
                }
                other => scalar(other),
            }),
            "Sub" => json!(self.sub(argument)),
            "If" => {
                let branches = argument.as_sequence().unwrap();
                let chosen = if self.condition(branches[0].as_str().unwrap()) {
                    1
                } else {
                    2
                };
                return self.eval(&branches[chosen]);
            }
            "Condition" => json!(self.condition(argument.as_str().unwrap())),
            "Equals" => {
                let a = args();
                json!(text(&a[0]) == text(&a[1]))
            }
            "Not" => json!(!args()[0].as_bool().unwrap()),
            "And" => json!(args().iter().all(|v| v.as_bool().unwrap())),
            "Or" => json!(args().iter().any(|v| v.as_bool().unwrap())),
            "Join" => {
                let a = args();
                let items: Vec<String> = a[1].as_array().unwrap().iter().map(text).collect();
                json!(items.join(a[0].as_str().unwrap()))
            }
            "Split" => {
                let a = args();
                let parts = text(&a[1]);
                json!(parts.split(a[0].as_str().unwrap()).collect::<Vec<_>>())
            }
            "Select" => {
                let a = args();
                let index: usize = text(&a[0]).parse().unwrap();
                a[1][index].clone()
            }
            "Base64" => self.eval(argument)?,
            "GetAZs" => json!(["us-east-1a", "us-east-1b"]),
            other => panic!("the renderer does not know Fn::{other}"),
        })
    }

    /// Fn::Sub: `text` or `[text, {Name: value}]`; `${Name}` and `${Resource.Attribute}`.
    fn sub(&self, argument: &serde_yaml::Value) -> String {
        let (text, variables) = match argument {
            serde_yaml::Value::Sequence(items) => {
                (scalar(&items[0]), self.eval(&items[1]).unwrap())
            }
            other => (scalar(other), json!({})),
        };
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = start + rest[start..].find('}').unwrap();
            let name = &rest[start + 2..end];
            let value = match variables.get(name) {
                Some(value) => value.clone(),
                None if name.contains('.') => self.attribute(name),
                None => self.reference(name),
            };
            out.push_str(value.as_str().unwrap_or(&value.to_string()));
            rest = &rest[end + 1..];
        }
        out + rest
    }

    /// The policy documents of the AWS::IAM::Policy resources attached to `role`.
    fn inline_policies(&self, role: &str) -> Vec<Value> {
        let resources = self.template["Resources"].as_mapping().unwrap();
        resources
            .iter()
            .filter(|(_, body)| body["Type"] == "AWS::IAM::Policy")
            .filter_map(|(id, _)| self.properties(id.as_str().unwrap()))
            .filter(|p| {
                p["Roles"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(format!("<Ref:{role}>")))
            })
            .map(|p| p["PolicyDocument"].clone())
            .collect()
    }

    fn managed_policies(&self, role: &str) -> Vec<String> {
        let properties = self.properties(role).unwrap();
        policy_rules::strings(&properties["ManagedPolicyArns"])
    }

    fn stack(&self, key_arn: &str) -> Stack {
        let group = |logical_id: &str| {
            format!("arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/{STACK}-{logical_id}-*")
        };
        Stack {
            name: STACK.into(),
            region: REGION.into(),
            account: ACCOUNT.into(),
            key_arn: key_arn.into(),
            token_arn: format!(
                "arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/flotilla/{STACK}/agent-token"
            ),
            agent_role_arn: role_arn("InstanceRole"),
            scaler_role_arn: role_arn("ScalerRole"),
            job_role_arn: role_arn("JobRole"),
            cache_bucket_arn: cache_bucket_arn(),
            group_arns: vec![group("AgentGroup"), group("FallbackGroup")],
            ecr_repositories: policy_rules::strings(&self.parameters["JobEcrRepositories"])
                .into_iter()
                .filter(|name| !name.is_empty())
                .collect(),
        }
    }

    /// The agents' configuration YAML as the stack stores it, parsed.
    fn agent_config(&self) -> serde_yaml::Value {
        let value = self.properties("AgentConfigParameter").unwrap()["Value"].clone();
        let text = value.as_str().unwrap();
        serde_yaml::from_str(text)
            .unwrap_or_else(|e| panic!("agent-config is not YAML ({e}):\n{text}"))
    }
}

fn scalar(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn role_arn(logical_id: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{STACK}-{logical_id}-ABCDEFGH")
}

fn cache_bucket_arn() -> String {
    format!("arn:aws:s3:::{STACK}-cachebucket-abcdefgh")
}

fn stack_key_arn() -> String {
    format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/stack-key")
}

fn log_group_arn(name: &str) -> String {
    format!("arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/flotilla/{STACK}/{name}:*")
}

fn assert_none(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// A variant checked: (what, parameters, the key in use).
type Variant = (&'static str, Vec<(&'static str, &'static str)>, String);

fn variants() -> Vec<Variant> {
    vec![
        ("the defaults", vec![], stack_key_arn()),
        (
            "Session Manager on, extra managed policies",
            vec![
                ("EnableSessionManager", "true"),
                (
                    "ManagedPolicyARNs",
                    "arn:aws:iam::123456789012:policy/ecr-read",
                ),
            ],
            stack_key_arn(),
        ),
        (
            "a key of one's own",
            vec![("KmsKeyArn", OWN_KEY)],
            OWN_KEY.to_string(),
        ),
        (
            "ECR repositories for the jobs, failed instances kept",
            vec![
                ("JobEcrRepositories", "team/app,base"),
                ("KeepFailedInstanceMinutes", "30"),
            ],
            stack_key_arn(),
        ),
        (
            "the agent role's credentials only through its VPC's endpoints",
            vec![("RequireVpcEndpoints", "true")],
            stack_key_arn(),
        ),
    ]
}

#[test]
fn the_agent_and_scaler_roles_get_only_their_stacks_resources() {
    for (what, parameters, key) in variants() {
        let rendered = Rendered::new(&parameters);
        let stack = rendered.stack(&key);
        let agent = rendered.inline_policies("InstanceRole");
        assert!(!agent.is_empty(), "{what}: no agent policy");
        assert_none(
            &format!("{what}: the agent role"),
            policy_rules::agent_role_problems(
                &stack,
                &agent,
                &rendered.managed_policies("InstanceRole"),
            ),
        );
        assert_none(
            &format!("{what}: the scaler role"),
            policy_rules::scaler_role_problems(&stack, &rendered.inline_policies("ScalerRole")),
        );
        // The agent can still do its job: read its config, the job settings and the token, and
        // tag (a GPU fault) and remove its instance.
        let text = serde_json::to_string(&agent).unwrap();
        for needed in [
            "agent-config",
            "job-sudo",
            "job-docker",
            "agent-token",
            "TerminateInstanceInAutoScalingGroup",
            "SetInstanceHealth",
            "EnterStandby",
            "flotilla:fault",
        ] {
            assert!(
                text.contains(needed),
                "{what}: the agent role lacks {needed}"
            );
        }
        // The checks see what they refuse: Standby (or anything else of Auto Scaling's) on every
        // group, or for sessions EC2 did not make, and Auto Scaling actions beyond removing the
        // instance.
        let mut widened = agent[0].clone();
        widened["Statement"].as_array_mut().unwrap().extend([
            json!({"Sid": "StandbyAnywhere", "Effect": "Allow", "Action": "autoscaling:EnterStandby", "Resource": "*",
                   "Condition": {"StringEquals": {"autoscaling:ResourceTag/flotilla:stack": STACK}, "Null": {"ec2:SourceInstanceARN": "false"}}}),
            json!({"Sid": "StandbyInAnySession", "Effect": "Allow", "Action": "autoscaling:EnterStandby", "Resource": stack.group_arns.clone(),
                   "Condition": {"StringEquals": {"autoscaling:ResourceTag/flotilla:stack": STACK}}}),
            json!({"Sid": "BackInService", "Effect": "Allow", "Action": "autoscaling:ExitStandby", "Resource": stack.group_arns.clone(),
                   "Condition": {"StringEquals": {"autoscaling:ResourceTag/flotilla:stack": STACK}, "Null": {"ec2:SourceInstanceARN": "false"}}}),
            json!({"Sid": "TagAnything", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"),
                   "Condition": {"StringEquals": {"aws:ResourceTag/flotilla:stack": STACK}, "ForAllValues:StringLike": {"aws:TagKeys": ["flotilla:*"]}, "Null": {"ec2:SourceInstanceARN": "false"}}}),
            json!({"Sid": "TagAnyInstance", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"),
                   "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["flotilla:fault"]}, "Null": {"ec2:SourceInstanceARN": "false"}}}),
            json!({"Sid": "UntagOwnFault", "Effect": "Allow", "Action": "ec2:DeleteTags", "Resource": format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"),
                   "Condition": {"StringEquals": {"aws:ResourceTag/flotilla:stack": STACK}, "ForAllValues:StringEquals": {"aws:TagKeys": ["flotilla:fault"]}, "Null": {"ec2:SourceInstanceARN": "false"}}}),
        ]);
        let problems = policy_rules::agent_role_problems(&stack, &[widened], &[]);
        for (sid, problem) in [
            ("StandbyAnywhere", "acts on groups *"),
            ("StandbyInAnySession", "not limited to sessions EC2 made"),
            ("BackInService", "beyond removing its own instance"),
            ("TagAnything", "beyond the flotilla:fault tag"),
            ("TagAnyInstance", "beyond the flotilla:fault tag"),
            ("UntagOwnFault", "ec2:DeleteTags acts on EC2 resources"),
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(&format!("statement {sid}")) && p.contains(problem)),
                "{what}: {sid} not flagged ({problem}): {problems:?}"
            );
        }
    }
}

#[test]
fn no_aws_managed_policy_and_session_manager_only_on_request() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra/cloudformation/fleet.yaml"
    ))
    .unwrap();
    assert!(
        !text.contains(":iam::aws:policy/"),
        "the template attaches an AWS-managed policy"
    );
    let defaults = Rendered::new(&[]);
    assert_eq!(defaults.parameters["EnableSessionManager"], "false");
    assert!(defaults.properties("SessionManagerPolicy").is_none());
    assert!(defaults.managed_policies("InstanceRole").is_empty());
    let on = Rendered::new(&[("EnableSessionManager", "true")]);
    let policy = on
        .properties("SessionManagerPolicy")
        .expect("the Session Manager policy");
    assert_eq!(
        policy["Roles"],
        json!(["<Ref:InstanceRole>", "<Ref:ScalerRole>"])
    );
    let actions: Vec<String> = policy_rules::statements(&policy["PolicyDocument"])
        .iter()
        .flat_map(|s| policy_rules::strings(&s["Action"]))
        .collect();
    assert_eq!(
        actions,
        [
            "ssm:UpdateInstanceInformation",
            "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel"
        ]
    );
}

#[test]
fn the_key_policy_names_only_the_stacks_roles() {
    let rendered = Rendered::new(&[]);
    let key = rendered
        .properties("KmsKey")
        .expect("the stack makes its key by default");
    assert_eq!(key["EnableKeyRotation"], true);
    assert_none(
        "the key policy",
        policy_rules::key_policy_problems(&rendered.stack(&stack_key_arn()), &key["KeyPolicy"]),
    );
    // The positive control: administration by a wildcard that takes in CreateGrant is flagged.
    let mut widened = key["KeyPolicy"].clone();
    widened["Statement"][0]["Action"]
        .as_array_mut()
        .expect("the administration statement lists its actions")
        .push(json!("kms:Create*"));
    let problems = policy_rules::key_policy_problems(&rendered.stack(&stack_key_arn()), &widened);
    assert!(
        problems.iter().any(|p| p.contains("kms:CreateGrant")),
        "{problems:?}"
    );
    let alias = rendered.properties("KmsKeyAlias").unwrap();
    assert_eq!(alias["AliasName"], "alias/flotilla/gpu-fleet");
    // The log groups and the output take the key in use; a key of one's own replaces the stack's.
    for (parameters, key) in [
        (vec![], stack_key_arn()),
        (vec![("KmsKeyArn", OWN_KEY)], OWN_KEY.to_string()),
    ] {
        let rendered = Rendered::new(&parameters);
        for group in ["AgentLogGroup", "ScalerLogGroup", "SystemLogGroup"] {
            assert_eq!(
                rendered.properties(group).unwrap()["KmsKeyId"],
                json!(key),
                "{group}"
            );
        }
        let output = rendered.eval(&rendered.template["Outputs"]["KmsKeyArn"]["Value"]);
        assert_eq!(output, Some(json!(key)));
        assert_eq!(rendered.properties("KmsKey").is_some(), key != OWN_KEY);
    }
}

#[test]
fn the_job_settings_and_the_hop_limit_follow_the_parameters() {
    let metadata = |r: &Rendered| {
        r.properties("AgentLaunchTemplate").unwrap()["LaunchTemplateData"]["MetadataOptions"]
            .clone()
    };
    let defaults = Rendered::new(&[]);
    assert_eq!(metadata(&defaults)["HttpPutResponseHopLimit"], "1");
    assert_eq!(metadata(&defaults)["HttpTokens"], "required");
    // One metadata address to seal: the IPv6 endpoint is off, explicitly.
    assert_eq!(metadata(&defaults)["HttpProtocolIpv6"], "disabled");
    for (resource, name) in [
        ("JobSudoParameter", "job-sudo"),
        ("JobDockerParameter", "job-docker"),
    ] {
        let parameter = defaults.properties(resource).unwrap();
        assert_eq!(parameter["Name"], format!("/flotilla/{STACK}/{name}"));
        assert_eq!(parameter["Type"], "String");
        assert_eq!(parameter["Value"], "false", "{name} is off by default");
    }
    let opened = Rendered::new(&[
        ("JobSudo", "true"),
        ("JobDockerAccess", "true"),
        ("MetadataHopLimit", "2"),
    ]);
    assert_eq!(
        opened.properties("JobSudoParameter").unwrap()["Value"],
        "true"
    );
    assert_eq!(
        opened.properties("JobDockerParameter").unwrap()["Value"],
        "true"
    );
    assert_eq!(metadata(&opened)["HttpPutResponseHopLimit"], "2");
}

/// The job role (issue 26): only the cache bucket's objects and the key through S3 for it, only
/// assumable by the agent role, and the agent role may assume nothing else. The checks see what
/// they refuse: the same rules flag a job policy widened to the token, Auto Scaling and the key.
#[test]
fn the_job_role_reaches_the_cache_and_nothing_else() {
    for (what, parameters, key) in variants() {
        let rendered = Rendered::new(&parameters);
        let stack = rendered.stack(&key);
        let job = rendered.inline_policies("JobRole");
        assert!(!job.is_empty(), "{what}: no job policy");
        let managed =
            policy_rules::strings(&rendered.properties("JobRole").unwrap()["ManagedPolicyArns"]);
        assert_none(
            &format!("{what}: the job role"),
            policy_rules::job_role_problems(&stack, &job, &managed),
        );
        let trust = &rendered.properties("JobRole").unwrap()["AssumeRolePolicyDocument"];
        assert_none(
            &format!("{what}: the job role's trust"),
            policy_rules::job_trust_problems(&stack, trust),
        );
        let mut widened = job[0].clone();
        widened["Statement"].as_array_mut().unwrap().extend([
            json!({"Sid": "Token", "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": stack.token_arn}),
            json!({"Sid": "Groups", "Effect": "Allow", "Action": "autoscaling:SetDesiredCapacity", "Resource": "*"}),
            json!({"Sid": "Key", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": key}),
        ]);
        assert_none(
            &format!("{what}: the job role's ECR grants"),
            policy_rules::job_ecr_missing(&stack, &job),
        );
        let problems = policy_rules::job_role_problems(&stack, &[widened], &[]);
        for sid in ["Token", "Groups", "Key"] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(&format!("job statement {sid}:"))),
                "{what}: {sid} not flagged: {problems:?}"
            );
        }
        let bad_trust = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")}, "Action": "sts:AssumeRole"}]});
        assert!(!policy_rules::job_trust_problems(&stack, &bad_trust).is_empty());
    }
    // The agent gets the role and the cache in its configuration.
    let config = Rendered::new(&[])
        .properties("AgentConfigParameter")
        .unwrap()["Value"]
        .clone();
    let config = config.as_str().unwrap();
    for line in [
        format!("job-role-arn: {}", role_arn("JobRole")),
        format!("job-role-stack: {STACK}"),
        format!("job-role-agent-type: {STACK}"),
        "cache-bucket: <Ref:CacheBucket>".to_string(),
    ] {
        assert!(config.contains(&line), "{line} not in:\n{config}");
    }
}

/// JobEcrRepositories: no ECR statement without it; with it, the login token and pull and push
/// on exactly the named repositories (one ARN each, up to the template's 10 slots), and the
/// names in the agents' configuration. The rules flag a job policy widened beyond them.
#[test]
fn the_job_role_reaches_only_the_named_ecr_repositories() {
    let sids = |r: &Rendered| -> Vec<String> {
        r.inline_policies("JobRole")
            .iter()
            .flat_map(policy_rules::statements)
            .map(|s| s["Sid"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let defaults = Rendered::new(&[]);
    let stack = defaults.stack(&stack_key_arn());
    assert!(stack.ecr_repositories.is_empty());
    assert_eq!(
        sids(&defaults),
        ["CacheObjects", "CacheListing", "CacheKeyThroughS3"]
    );
    assert_eq!(defaults.agent_config()["job-ecr-repositories"], "");

    let one = Rendered::new(&[("JobEcrRepositories", "team/app")]);
    let stack = one.stack(&stack_key_arn());
    assert_eq!(stack.ecr_repositories, ["team/app"]);
    let job = one.inline_policies("JobRole");
    assert_eq!(
        sids(&one),
        [
            "CacheObjects",
            "CacheListing",
            "CacheKeyThroughS3",
            "EcrLogin",
            "EcrPullAndPush"
        ]
    );
    assert_none(
        "team/app",
        policy_rules::job_role_problems(&stack, &job, &[]),
    );
    assert_none("team/app", policy_rules::job_ecr_missing(&stack, &job));
    let pull_and_push = policy_rules::statements(&job[0])
        .into_iter()
        .find(|s| s["Sid"] == "EcrPullAndPush")
        .unwrap();
    assert_eq!(
        policy_rules::strings(&pull_and_push["Action"]),
        policy_rules::ECR_PULL_AND_PUSH
    );
    assert_eq!(
        pull_and_push["Resource"],
        json!([format!(
            "arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team/app"
        )])
    );
    assert_eq!(one.agent_config()["job-ecr-repositories"], "team/app");
    // The same statements, held to a stack without repositories: nothing of ECR is allowed there.
    let problems = policy_rules::job_role_problems(&defaults.stack(&stack_key_arn()), &job, &[]);
    assert_eq!(
        problems.len(),
        1 + policy_rules::ECR_PULL_AND_PUSH.len(),
        "{problems:?}"
    );
    // Without the pull and push statement the grants are found missing.
    let mut without = job[0].clone();
    without["Statement"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["Sid"] != "EcrPullAndPush");
    assert_eq!(
        policy_rules::job_ecr_missing(&stack, &[without]).len(),
        policy_rules::ECR_PULL_AND_PUSH.len()
    );

    // Widened copies: every ECR action, pull on every repository, push into another account's,
    // another region's or a pattern of repositories, another repository, deleting images.
    let other_account = format!("arn:aws:ecr:{REGION}:210987654321:repository/team/app");
    let other_region = format!("arn:aws:ecr:eu-west-1:{ACCOUNT}:repository/team/app");
    let pattern = format!("arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team/*");
    let other = format!("arn:aws:ecr:{REGION}:{ACCOUNT}:repository/other");
    let own = stack.ecr_repository_arn("team/app");
    let mut widened = job[0].clone();
    widened["Statement"].as_array_mut().unwrap().extend([
        json!({"Sid": "EcrAll", "Effect": "Allow", "Action": "ecr:*", "Resource": own}),
        json!({"Sid": "PullAnywhere", "Effect": "Allow", "Action": "ecr:BatchGetImage", "Resource": "*"}),
        json!({"Sid": "OtherAccount", "Effect": "Allow", "Action": "ecr:PutImage", "Resource": other_account}),
        json!({"Sid": "OtherRegion", "Effect": "Allow", "Action": "ecr:PutImage", "Resource": other_region}),
        json!({"Sid": "Pattern", "Effect": "Allow", "Action": "ecr:PutImage", "Resource": [own, pattern]}),
        json!({"Sid": "OtherRepository", "Effect": "Allow", "Action": "ecr:BatchGetImage", "Resource": other}),
        json!({"Sid": "Delete", "Effect": "Allow", "Action": "ecr:BatchDeleteImage", "Resource": own}),
        json!({"Sid": "LoginOnARepository", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": own}),
    ]);
    let problems = policy_rules::job_role_problems(&stack, &[widened], &[]);
    for sid in [
        "EcrAll",
        "PullAnywhere",
        "OtherAccount",
        "OtherRegion",
        "Pattern",
        "OtherRepository",
        "Delete",
        "LoginOnARepository",
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("job statement {sid}:"))),
            "{sid} not flagged: {problems:?}"
        );
    }
    assert!(
        !problems
            .iter()
            .any(|p| p.contains("job statement Ecr") && !p.contains("job statement EcrAll:")),
        "the stack's own ECR statements flagged: {problems:?}"
    );

    // All ten slots, in order.
    let names: Vec<String> = (1..=10).map(|i| format!("team/app{i}")).collect();
    let joined = names.join(",");
    let ten = Rendered::new(&[("JobEcrRepositories", joined.as_str())]);
    let stack = ten.stack(&stack_key_arn());
    let job = ten.inline_policies("JobRole");
    assert_none(
        "ten repositories",
        policy_rules::job_role_problems(&stack, &job, &[]),
    );
    assert_none(
        "ten repositories",
        policy_rules::job_ecr_missing(&stack, &job),
    );
    let resources: Vec<String> = policy_rules::statements(&job[0])
        .iter()
        .filter(|s| s["Sid"] == "EcrPullAndPush")
        .flat_map(|s| policy_rules::strings(&s["Resource"]))
        .collect();
    let expected: Vec<String> = names.iter().map(|n| stack.ecr_repository_arn(n)).collect();
    assert_eq!(resources, expected);
    assert_eq!(
        ten.agent_config()["job-ecr-repositories"],
        names.join(" ").as_str()
    );
}

/// KeepFailedInstanceMinutes reaches the agents' configuration (0 by default: never kept).
#[test]
fn the_agents_configuration_keeps_failed_instances_only_on_request() {
    let config = Rendered::new(&[]).agent_config();
    assert_eq!(config["keep-failed-instance-minutes"], 0);
    let config = Rendered::new(&[("KeepFailedInstanceMinutes", "30")]).agent_config();
    assert_eq!(config["keep-failed-instance-minutes"], 30);
}

/// The cache bucket: the key in use, no public access, TLS only, objects expire.
#[test]
fn the_cache_bucket_is_private_encrypted_and_expires() {
    for (what, parameters, key) in variants() {
        let rendered = Rendered::new(&parameters);
        let bucket = rendered.properties("CacheBucket").unwrap();
        let encryption = &bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0];
        assert_eq!(
            encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"], "aws:kms",
            "{what}"
        );
        assert_eq!(
            encryption["ServerSideEncryptionByDefault"]["KMSMasterKeyID"],
            json!(key),
            "{what}"
        );
        for flag in [
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        ] {
            assert_eq!(
                bucket["PublicAccessBlockConfiguration"][flag], true,
                "{what}: {flag}"
            );
        }
        let rule = &bucket["LifecycleConfiguration"]["Rules"][0];
        assert_eq!(rule["ExpirationInDays"], "30", "{what}");
        let policy = rendered.properties("CacheBucketPolicy").unwrap()["PolicyDocument"].clone();
        let statement = &policy_rules::statements(&policy)[0];
        assert_eq!(statement["Effect"], "Deny");
        assert_eq!(
            statement["Condition"]["Bool"]["aws:SecureTransport"],
            "false"
        );
    }
    let short = Rendered::new(&[("CacheRetentionDays", "3")]);
    assert_eq!(
        short.properties("CacheBucket").unwrap()["LifecycleConfiguration"]["Rules"][0]
            ["ExpirationInDays"],
        "3"
    );
}

/// RequireVpcEndpoints (issue 27): off by default (the default VPC has no interface endpoints, and
/// the agents could not read their configuration); on, the agent role carries AWS's documented
/// pair of Denies, so its credentials work only through its own VPC's endpoints and from the
/// instance they were delivered to. The rule sees what it refuses: each Deny left out, the two
/// merged into one statement (ANDed), `...IfExists` (a public endpoint passes), and no exception for
/// calls through AWS services (KMS through SSM would be refused).
#[test]
fn require_vpc_endpoints_keeps_the_agents_credentials_on_their_instance() {
    let defaults = Rendered::new(&[]).inline_policies("InstanceRole");
    assert_eq!(
        policy_rules::source_vpc_problems(&defaults).len(),
        2,
        "the default agent role has neither Deny"
    );
    let on = Rendered::new(&[("RequireVpcEndpoints", "true")]);
    let agent = on.inline_policies("InstanceRole");
    assert_none(
        "RequireVpcEndpoints=true",
        policy_rules::source_vpc_problems(&agent),
    );
    // Nothing else of the agent's policy changed: the same Allow statements as by default.
    let allows = |policies: &[Value]| -> Vec<Value> {
        policies
            .iter()
            .flat_map(policy_rules::statements)
            .filter(|s| s["Effect"] == "Allow")
            .collect()
    };
    assert_eq!(allows(&agent), allows(&defaults));

    // The Denies are a policy of their own (no statement list with a NoValue for moto).
    assert_eq!(agent.len(), defaults.len() + 1);
    let (vpc, address) = {
        let found: Vec<Value> = agent
            .iter()
            .flat_map(policy_rules::statements)
            .filter(|s| s["Effect"] == "Deny")
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        (found[0].clone(), found[1].clone())
    };
    // The agent's own policy with other Denies in their place.
    let with_denies = |replaced: Vec<Value>| -> Value {
        let mut copy = defaults[0].clone();
        copy["Statement"].as_array_mut().unwrap().extend(replaced);
        copy
    };
    let mut merged = vpc.clone();
    merged["Condition"]["StringNotEquals"]
        .as_object_mut()
        .unwrap()
        .extend(
            address["Condition"]["StringNotEquals"]
                .as_object()
                .unwrap()
                .clone(),
        );
    let mut if_exists = vpc.clone();
    let compared = if_exists["Condition"]
        .as_object_mut()
        .unwrap()
        .remove("StringNotEquals")
        .unwrap();
    if_exists["Condition"]["StringNotEqualsIfExists"] = compared;
    let mut no_service_exception = address.clone();
    no_service_exception["Condition"]
        .as_object_mut()
        .unwrap()
        .remove("BoolIfExists");
    for (what, statements, refused) in [
        (
            "without the VPC's Deny",
            vec![address.clone()],
            "aws:Ec2InstanceSourceVpc",
        ),
        (
            "without the address's Deny",
            vec![vpc.clone()],
            "aws:Ec2InstanceSourcePrivateIPv4",
        ),
        (
            "the two merged into one statement",
            vec![merged],
            "aws:Ec2InstanceSourceVpc",
        ),
        (
            "StringNotEqualsIfExists",
            vec![if_exists, address.clone()],
            "aws:Ec2InstanceSourceVpc",
        ),
        (
            "no exception for calls through AWS services",
            vec![vpc.clone(), no_service_exception],
            "aws:Ec2InstanceSourcePrivateIPv4",
        ),
    ] {
        let problems = policy_rules::source_vpc_problems(&[with_denies(statements)]);
        assert!(
            problems.iter().any(|p| p.contains(refused)),
            "{what}: not flagged: {problems:?}"
        );
    }
}

/// A pattern that can only match `scheme` URLs (or nothing): it starts with the literal scheme
/// (`^scheme…` or `^(scheme…)?$`) and has no alternation or optional character before it.
fn takes_only(pattern: &str, scheme: &str) -> bool {
    let rest = pattern
        .strip_prefix("^(")
        .or_else(|| pattern.strip_prefix('^'))
        .unwrap_or_default();
    rest.starts_with(scheme) && !pattern.contains('|')
}

/// A plain-HTTP queue only when the parameter that says so is used (issue 27). QueueEndpoint's
/// pattern takes https:// alone, PlainHttpQueueEndpoint's http:// alone, and the Rule wants
/// exactly one of the two; the agents turn HTTPS off (`no-https`) only for the second, and both
/// configurations carry the endpoint given. The pattern check sees what it refuses: the old
/// `^https?://` pattern.
#[test]
fn the_queue_is_https_unless_plain_http_is_named() {
    let template = template();
    let pattern = |name: &str| scalar(&template["Parameters"][name]["AllowedPattern"]);
    assert!(
        takes_only(&pattern("QueueEndpoint"), "https://"),
        "{}",
        pattern("QueueEndpoint")
    );
    assert!(takes_only(&pattern("PlainHttpQueueEndpoint"), "http://"));
    assert!(!takes_only(
        "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        "https://"
    ));
    assert!(!takes_only(
        "^(https://[a-z.]+|http://[a-z.]+)$",
        "https://"
    ));
    for name in ["QueueEndpoint", "PlainHttpQueueEndpoint"] {
        assert_eq!(
            scalar(&template["Parameters"][name]["Default"]),
            "",
            "{name}"
        );
    }

    let https = "https://org.semaphoreci.com";
    let http = "http://hub.internal:8080";
    for (queue, plain, accepted) in [
        (https, "", true),
        ("", http, true),
        ("", "", false),
        (https, http, false),
    ] {
        let rendered =
            Rendered::new(&[("QueueEndpoint", queue), ("PlainHttpQueueEndpoint", plain)]);
        let rule =
            &rendered.template["Rules"]["ExactlyOneQueueEndpoint"]["Assertions"][0]["Assert"];
        assert_eq!(
            rendered.eval(rule),
            Some(json!(accepted)),
            "QueueEndpoint={queue:?} PlainHttpQueueEndpoint={plain:?}"
        );
    }

    for (given, host, no_https, url) in [
        (
            ("QueueEndpoint", https),
            "org.semaphoreci.com",
            false,
            https,
        ),
        (
            ("PlainHttpQueueEndpoint", http),
            "hub.internal:8080",
            true,
            http,
        ),
    ] {
        let rendered = Rendered::new(&[given]);
        let config = rendered.agent_config();
        assert_eq!(config["endpoint"], host, "{given:?}");
        assert_eq!(config["no-https"], no_https, "{given:?}");
        let scaler = rendered.properties("ScalerConfigParameter").unwrap()["Value"].clone();
        let scaler = scaler.as_str().unwrap();
        assert!(
            scaler.contains(&format!("endpoint: {url}\n")),
            "{given:?}:\n{scaler}"
        );
    }
}
