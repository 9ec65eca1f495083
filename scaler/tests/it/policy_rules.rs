//! The IAM and KMS rules of issue 14 as checks over rendered policy documents (JSON), shared by
//! the test that renders the CloudFormation template (`iam_policy.rs`) and the one that reads what
//! Terraform applied to moto (`terraform_e2e.rs`), so both deployments are held to the same rules:
//! the agent role reads only its own stack's parameters, decrypts only the token with the stack's
//! key, may remove instances only in its stack's groups and only with a session EC2 made for an
//! instance, has no mutating EC2 action but one (the `flotilla:fault` tag on its stack's
//! instances, issue 29: `fault_tag_problem`) and no AWS-managed policy, and may assume only the job
//! role; with `RequireVpcEndpoints` its credentials work only through its own VPC's endpoints from
//! its own address (issue 27, `source_vpc_problems`); the job role
//! (issue 26) may use only the cache bucket's objects and the key through S3 for that bucket (no
//! parameter, no Auto Scaling, no EC2, no STS, no direct use of the key), and, with ECR
//! repositories configured, the registry's login token and the pull and push actions on exactly
//! those repositories of its account and region; it is assumable by the agent role alone; the key policy lets only the agent and scaler roles read the token (beside
//! the account's administration, CloudWatch Logs for the stack's log groups, and the job role
//! through S3).
//! Each check returns the problems it found, so one failing test lists them all.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;

/// Where a stack lives, and what its resources are called there.
pub(crate) struct Stack {
    pub name: String,
    pub region: String,
    pub account: String,
    /// The KMS key's ARN.
    pub key_arn: String,
    pub token_arn: String,
    pub agent_role_arn: String,
    pub scaler_role_arn: String,
    pub job_role_arn: String,
    /// The cache bucket's ARN (`arn:aws:s3:::NAME`).
    pub cache_bucket_arn: String,
    /// The only Auto Scaling group ARNs (patterns) the roles may act on.
    pub group_arns: Vec<String>,
    /// The ECR repositories (names) the job role may pull from and push to; none by default.
    pub ecr_repositories: Vec<String>,
}

impl Stack {
    pub(crate) fn prefix_arn(&self) -> String {
        format!(
            "arn:aws:ssm:{}:{}:parameter/flotilla/{}/",
            self.region, self.account, self.name
        )
    }

    fn log_group_prefix(&self) -> String {
        format!(
            "arn:aws:logs:{}:{}:log-group:/flotilla/{}/",
            self.region, self.account, self.name
        )
    }

    fn root(&self) -> String {
        format!("arn:aws:iam::{}:root", self.account)
    }

    /// The ARN of one of the stack's ECR repositories (this account and region).
    pub(crate) fn ecr_repository_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:ecr:{}:{}:repository/{name}",
            self.region, self.account
        )
    }
}

/// What a job may do in the repositories of `JobEcrRepositories`: pull and push, nothing else
/// (no repository or policy administration, no deleting images).
pub(crate) const ECR_PULL_AND_PUSH: [&str; 9] = [
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:DescribeImages",
    "ecr:ListImages",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
];

/// An IAM wildcard (`*`, `?`) matches `text`, ignoring case as IAM does for actions.
pub(crate) fn wildcard_matches(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// A string or a list of strings, as policies write Action, Resource and condition values.
pub(crate) fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}

/// The statements of a policy document (Statement may be one object or a list).
pub(crate) fn statements(policy: &Value) -> Vec<Value> {
    match &policy["Statement"] {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    }
}

fn grants(statement: &Value, action: &str) -> bool {
    statement["Effect"] == "Allow"
        && strings(&statement["Action"])
            .iter()
            .any(|pattern| wildcard_matches(pattern, action))
}

fn sid(statement: &Value) -> String {
    statement["Sid"].as_str().unwrap_or("(no Sid)").to_string()
}

/// The rules for the agent role: `policies` are its inline policy documents, `managed` the ARNs
/// of the managed policies attached to it.
pub(crate) fn agent_role_problems(
    stack: &Stack,
    policies: &[Value],
    managed: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    for arn in managed {
        if arn.contains(":iam::aws:policy/") {
            problems.push(format!("the agent role has the AWS-managed policy {arn}"));
        }
    }
    for statement in policies.iter().flat_map(statements) {
        problems.extend(parameter_read_problems(stack, &statement, "agent"));
        problems.extend(decrypt_problems(stack, &statement, "agent"));
        problems.extend(group_problems(stack, &statement, "agent", true));
        problems.extend(log_problems(stack, &statement));
        for action in strings(&statement["Action"]) {
            let lower = action.to_ascii_lowercase();
            let ec2_write =
                lower == "*" || (lower.starts_with("ec2:") && !lower.starts_with("ec2:describe"));
            if statement["Effect"] == "Allow" && ec2_write {
                problems.extend(fault_tag_problem(stack, &statement, &action));
            }
            // EnterStandby: a failed job's instance kept for inspection (KeepFailedInstanceMinutes),
            // in the group DescribeAutoScalingInstances names (read-only, on no resource).
            let autoscaling_allowed = [
                "autoscaling:TerminateInstanceInAutoScalingGroup",
                "autoscaling:SetInstanceHealth",
                "autoscaling:EnterStandby",
                "autoscaling:DescribeAutoScalingInstances",
            ];
            if lower.starts_with("autoscaling:") && !autoscaling_allowed.contains(&action.as_str())
            {
                problems.push(format!(
                    "agent statement {}: {action} beyond removing its own instance",
                    sid(&statement)
                ));
            }
            problems.extend(sts_problems(stack, &statement, &action));
        }
    }
    problems
}

/// The agent role's one EC2 write: `ec2:CreateTags` of the `flotilla:fault` tag alone (issue 29:
/// an agent marks its instance before removing it for a GPU fault), on instances of this region
/// and account that carry the stack's tag, with a session EC2 made for an instance. Any other EC2
/// write, or that one wider, is a problem.
fn fault_tag_problem(stack: &Stack, statement: &Value, action: &str) -> Option<String> {
    if action != "ec2:CreateTags" {
        return Some(format!(
            "agent statement {}: {action} acts on EC2 resources (instances among them)",
            sid(statement)
        ));
    }
    let instances = format!("arn:aws:ec2:{}:{}:instance/*", stack.region, stack.account);
    let condition = &statement["Condition"];
    let scoped = strings(&statement["Resource"]) == [instances]
        && strings(&condition["StringEquals"]["aws:ResourceTag/flotilla:stack"])
            == [stack.name.clone()]
        && strings(&condition["ForAllValues:StringEquals"]["aws:TagKeys"]) == ["flotilla:fault"]
        && strings(&condition["Null"]["ec2:SourceInstanceARN"]) == ["false"]
        && condition.as_object().is_some_and(|keys| keys.len() == 3);
    (!scoped).then(|| {
        format!(
            "agent statement {}: ec2:CreateTags beyond the flotilla:fault tag on the stack's instances from an instance's session: {statement}",
            sid(statement)
        )
    })
}

/// The agent role's STS: assuming (and tagging sessions of) the job role, nothing else.
fn sts_problems(stack: &Stack, statement: &Value, action: &str) -> Vec<String> {
    let lower = action.to_ascii_lowercase();
    if statement["Effect"] != "Allow" || !(lower == "*" || lower.starts_with("sts:")) {
        return Vec::new();
    }
    let resources = strings(&statement["Resource"]);
    let allowed = ["sts:AssumeRole", "sts:TagSession"];
    if !allowed.contains(&action) || resources != [stack.job_role_arn.clone()] {
        return vec![format!(
            "agent statement {}: {action} on {resources:?}, not only assuming the job role",
            sid(statement)
        )];
    }
    Vec::new()
}

/// The rules for the job role: its inline policies may reach the cache bucket's objects (and
/// list it) and use the stack's key only through S3 for that bucket; with ECR repositories
/// configured, get the registry's login token (which has no resource: `*`) and pull and push on
/// exactly those repositories' ARNs (never `*`, never a pattern, never another account or
/// region); nothing else at all.
pub(crate) fn job_role_problems(
    stack: &Stack,
    policies: &[Value],
    managed: &[String],
) -> Vec<String> {
    let mut problems: Vec<String> = managed
        .iter()
        .map(|arn| format!("the job role has the managed policy {arn}"))
        .collect();
    let objects = format!("{}/*", stack.cache_bucket_arn);
    for statement in policies.iter().flat_map(statements) {
        if statement["Effect"] != "Allow" {
            continue;
        }
        let resources = strings(&statement["Resource"]);
        for action in strings(&statement["Action"]) {
            let fits = match action.as_str() {
                "s3:GetObject" | "s3:PutObject" | "s3:DeleteObject" => {
                    resources == [objects.clone()]
                }
                "s3:ListBucket" => resources == [stack.cache_bucket_arn.clone()],
                "kms:Decrypt" | "kms:GenerateDataKey" => {
                    resources == [stack.key_arn.clone()]
                        && key_through_s3_for_the_cache(stack, &statement)
                }
                "ecr:GetAuthorizationToken" => {
                    !stack.ecr_repositories.is_empty() && resources == ["*"]
                }
                pull_or_push if ECR_PULL_AND_PUSH.contains(&pull_or_push) => {
                    !resources.is_empty()
                        && resources.iter().all(|resource| {
                            stack
                                .ecr_repositories
                                .iter()
                                .any(|name| *resource == stack.ecr_repository_arn(name))
                        })
                }
                _ => false,
            };
            if !fits {
                problems.push(format!(
                    "job statement {}: {action} on {resources:?} is beyond the cache and the ECR repositories {:?}",
                    sid(&statement),
                    stack.ecr_repositories
                ));
            }
        }
    }
    problems
}

/// What the job role must grant when ECR repositories are configured (`job_role_problems` says
/// what it may): the registry's login token, and each pull and push action on each repository.
pub(crate) fn job_ecr_missing(stack: &Stack, policies: &[Value]) -> Vec<String> {
    let allowed = |action: &str, resource: &str| {
        policies.iter().flat_map(statements).any(|statement| {
            statement["Effect"] == "Allow"
                && strings(&statement["Action"]).iter().any(|a| a == action)
                && strings(&statement["Resource"])
                    .iter()
                    .any(|r| r == resource)
        })
    };
    let mut missing = Vec::new();
    if stack.ecr_repositories.is_empty() {
        return missing;
    }
    if !allowed("ecr:GetAuthorizationToken", "*") {
        missing.push("the job role cannot get the ECR login token".to_string());
    }
    for name in &stack.ecr_repositories {
        let arn = stack.ecr_repository_arn(name);
        for action in ECR_PULL_AND_PUSH {
            if !allowed(action, &arn) {
                missing.push(format!("the job role lacks {action} on {arn}"));
            }
        }
    }
    missing
}

fn key_through_s3_for_the_cache(stack: &Stack, statement: &Value) -> bool {
    let condition = &statement["Condition"];
    strings(&condition["StringEquals"]["kms:ViaService"])
        == [format!("s3.{}.amazonaws.com", stack.region)]
        && strings(&condition["ArnLike"]["kms:EncryptionContext:aws:s3:arn"])
            == [stack.cache_bucket_arn.clone()]
}

/// The job role's trust policy: the agent role alone may assume it (and tag its sessions).
pub(crate) fn job_trust_problems(stack: &Stack, trust: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for statement in statements(trust) {
        let principals = strings(&statement["Principal"]["AWS"]);
        let services = strings(&statement["Principal"]["Service"]);
        if statement["Effect"] == "Allow"
            && (principals != [stack.agent_role_arn.clone()] || !services.is_empty())
        {
            problems.push(format!(
                "the job role may be assumed by {}, not only the agent role",
                statement["Principal"]
            ));
        }
    }
    problems
}

/// The rules for the scaler role (its inline policies): parameters, key and groups of its stack.
pub(crate) fn scaler_role_problems(stack: &Stack, policies: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for statement in policies.iter().flat_map(statements) {
        problems.extend(parameter_read_problems(stack, &statement, "scaler"));
        problems.extend(decrypt_problems(stack, &statement, "scaler"));
        problems.extend(group_problems(stack, &statement, "scaler", false));
    }
    problems
}

/// SSM reads only of the stack's parameters and the token, never on `*`.
fn parameter_read_problems(stack: &Stack, statement: &Value, role: &str) -> Vec<String> {
    let reads = [
        "ssm:GetParameter",
        "ssm:GetParameters",
        "ssm:GetParametersByPath",
    ];
    if !reads.iter().any(|action| grants(statement, action)) {
        return Vec::new();
    }
    strings(&statement["Resource"])
        .into_iter()
        .filter(|resource| {
            !resource.starts_with(&stack.prefix_arn()) && *resource != stack.token_arn
        })
        .map(|resource| {
            format!(
                "{role} statement {} reads parameters at {resource}",
                sid(statement)
            )
        })
        .collect()
}

/// kms:Decrypt only with the stack's key, only through SSM, only the token.
fn decrypt_problems(stack: &Stack, statement: &Value, role: &str) -> Vec<String> {
    if !grants(statement, "kms:Decrypt") {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let resources = strings(&statement["Resource"]);
    if resources != [stack.key_arn.clone()] {
        problems.push(format!(
            "{role} statement {} decrypts with {resources:?}, not only the stack's key {}",
            sid(statement),
            stack.key_arn
        ));
    }
    let equals = &statement["Condition"]["StringEquals"];
    let via = format!("ssm.{}.amazonaws.com", stack.region);
    if strings(&equals["kms:ViaService"]) != [via.clone()]
        || strings(&equals["kms:EncryptionContext:PARAMETER_ARN"]) != [stack.token_arn.clone()]
    {
        problems.push(format!(
            "{role} statement {} decrypts beyond the token through {via}: {}",
            sid(statement),
            statement["Condition"]
        ));
    }
    problems
}

/// Auto Scaling actions only on the stack's groups, with the stack's tag; for the agent also only
/// with a session EC2 made for an instance (`ec2:SourceInstanceARN` present). That key belongs to
/// the session, not to where it is used: credentials copied off the instance still carry it, so
/// this shuts out other kinds of sessions of the role, not other places ([`source_vpc_problems`]
/// is the rule about places).
fn group_problems(
    stack: &Stack,
    statement: &Value,
    role: &str,
    from_instance: bool,
) -> Vec<String> {
    let acts = strings(&statement["Action"])
        .iter()
        .any(|a| a.to_ascii_lowercase().starts_with("autoscaling:") && !a.contains(":Describe"));
    if statement["Effect"] != "Allow" || !acts {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let allowed: BTreeSet<&String> = stack.group_arns.iter().collect();
    for resource in strings(&statement["Resource"]) {
        if !allowed.contains(&resource) {
            problems.push(format!(
                "{role} statement {} acts on groups {resource}, not only {:?}",
                sid(statement),
                stack.group_arns
            ));
        }
    }
    let condition = &statement["Condition"];
    if strings(&condition["StringEquals"]["autoscaling:ResourceTag/flotilla:stack"])
        != [stack.name.clone()]
    {
        problems.push(format!(
            "{role} statement {} has no stack tag condition",
            sid(statement)
        ));
    }
    if from_instance && strings(&condition["Null"]["ec2:SourceInstanceARN"]) != ["false"] {
        problems.push(format!(
            "{role} statement {} is not limited to sessions EC2 made for an instance (no Null ec2:SourceInstanceARN = false)",
            sid(statement)
        ));
    }
    problems
}

/// The policy variable each credential property is compared with under `RequireVpcEndpoints`: the
/// VPC the instance role's credentials were delivered to must be the VPC whose interface endpoint
/// the call came through, and the instance's primary private IPv4 address the address it came
/// from (AWS's documented pair of statements:
/// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-ec2instancesourceprivateip4).
pub(crate) const SOURCE_VPC_PAIR: [(&str, &str); 2] = [
    ("aws:Ec2InstanceSourceVpc", "${aws:SourceVpc}"),
    ("aws:Ec2InstanceSourcePrivateIPv4", "${aws:VpcSourceIp}"),
];

/// With `RequireVpcEndpoints`, the agent role's credentials work only on their instance: for each
/// of [`SOURCE_VPC_PAIR`] a Deny of every action unless the property equals the variable, for
/// the instance role's sessions, except calls an AWS service makes for the agent (KMS through
/// SSM). Through a public endpoint `aws:SourceVpc` and `aws:VpcSourceIp` have no value, and
/// `StringNotEquals` matches a variable with none, so the call is refused. Each comparison is a
/// statement of its own (in one statement the two would be ANDed, and a call from another address
/// in the same VPC would pass); `...IfExists` would let calls without the keys through; without
/// `aws:ViaAWSService` the agent could not decrypt its token through SSM.
pub(crate) fn source_vpc_problems(policies: &[Value]) -> Vec<String> {
    let statements: Vec<Value> = policies.iter().flat_map(statements).collect();
    SOURCE_VPC_PAIR
        .iter()
        .filter(|(key, variable)| !statements.iter().any(|s| denies_unless(s, key, variable)))
        .map(|(key, variable)| {
            format!(
                "no Deny of every action unless {key} = {variable} alone (for EC2's sessions, not for calls made through AWS services)"
            )
        })
        .collect()
}

/// `statement` is exactly the documented Deny for one property.
fn denies_unless(statement: &Value, key: &str, variable: &str) -> bool {
    let expected = serde_json::json!({
        "StringNotEquals": {key: variable},
        "Null": {"ec2:SourceInstanceARN": "false"},
        "BoolIfExists": {"aws:ViaAWSService": "false"},
    });
    statement["Effect"] == "Deny"
        && strings(&statement["Action"]) == ["*"]
        && strings(&statement["Resource"]) == ["*"]
        && statement["Condition"] == expected
}

/// logs actions only on the stack's log groups.
fn log_problems(stack: &Stack, statement: &Value) -> Vec<String> {
    let logs = strings(&statement["Action"])
        .iter()
        .any(|a| a.to_ascii_lowercase().starts_with("logs:"));
    if !logs {
        return Vec::new();
    }
    strings(&statement["Resource"])
        .into_iter()
        .filter(|r| !r.starts_with(&stack.log_group_prefix()))
        .map(|r| format!("agent statement {} writes logs to {r}", sid(statement)))
        .collect()
}

/// The key policy: the account administers the key (no use), encrypts the token through SSM;
/// only the stack's roles decrypt, through SSM, only the token; CloudWatch Logs uses it for the
/// stack's log groups only. Nothing else.
pub(crate) fn key_policy_problems(stack: &Stack, policy: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut decrypters = BTreeSet::new();
    for statement in statements(policy) {
        if statement["Effect"] != "Allow" {
            continue;
        }
        let principal = &statement["Principal"];
        let aws = strings(&principal["AWS"]);
        let service = strings(&principal["Service"]);
        if aws == [stack.root()] && service.is_empty() {
            problems.extend(account_statement_problems(
                stack,
                &statement,
                &mut decrypters,
            ));
        } else if aws.is_empty() && service == [format!("logs.{}.amazonaws.com", stack.region)] {
            let context =
                strings(&statement["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]);
            if context != [format!("{}*", stack.log_group_prefix())] {
                problems.push(format!(
                    "key statement {}: CloudWatch Logs may use the key for {context:?}",
                    sid(&statement)
                ));
            }
        } else {
            problems.push(format!(
                "key statement {} names other principals: {principal}",
                sid(&statement)
            ));
        }
    }
    let roles: BTreeSet<String> =
        [stack.agent_role_arn.clone(), stack.scaler_role_arn.clone()].into();
    if decrypters != roles {
        problems.push(format!(
            "the key lets {decrypters:?} decrypt, not exactly the stack's roles {roles:?}"
        ));
    }
    problems
}

/// A statement for the account's principals: administration, encrypting the token through SSM,
/// and decrypting it through SSM for the roles its `aws:PrincipalArn` condition names (collected
/// in `decrypters`). Nothing that reads with the key otherwise (ReEncryptFrom decrypts too).
fn account_statement_problems(
    stack: &Stack,
    statement: &Value,
    decrypters: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let equals = &statement["Condition"]["StringEquals"];
    let through_ssm_for_token = strings(&equals["kms:ViaService"])
        == [format!("ssm.{}.amazonaws.com", stack.region)]
        && strings(&equals["kms:EncryptionContext:PARAMETER_ARN"]) == [stack.token_arn.clone()];
    let role_arns = strings(&statement["Condition"]["ArnEquals"]["aws:PrincipalArn"]);
    let job_role_through_s3 = role_arns == [stack.job_role_arn.clone()]
        && strings(&equals["kms:ViaService"]) == [format!("s3.{}.amazonaws.com", stack.region)]
        && equals.get("kms:EncryptionContext:PARAMETER_ARN").is_none();
    if grants(statement, "kms:Decrypt") && job_role_through_s3 {
        // The cache's objects (the job role's IAM policy names the bucket); not a token reader.
    } else if grants(statement, "kms:Decrypt") {
        if role_arns.is_empty() || !through_ssm_for_token {
            problems.push(format!(
                "key statement {} lets the account decrypt beyond the roles and the token: {statement}",
                sid(statement)
            ));
        }
        decrypters.extend(role_arns);
    }
    if grants(statement, "kms:CreateGrant") {
        problems.push(format!(
            "key statement {} grants kms:CreateGrant (a grantee uses the key outside the policy)",
            sid(statement)
        ));
    }
    if grants(statement, "kms:ReEncryptFrom") {
        problems.push(format!(
            "key statement {} grants kms:ReEncryptFrom",
            sid(statement)
        ));
    }
    if grants(statement, "kms:Encrypt") && !through_ssm_for_token {
        problems.push(format!(
            "key statement {} lets the account encrypt beyond the token through SSM",
            sid(statement)
        ));
    }
    problems
}

#[test]
fn wildcards() {
    assert!(wildcard_matches("kms:Decrypt*", "kms:Decrypt"));
    assert!(wildcard_matches("KMS:*", "kms:Decrypt"));
    assert!(wildcard_matches("*", "ec2:TerminateInstances"));
    assert!(!wildcard_matches("kms:Get*", "kms:Decrypt"));
    assert!(!wildcard_matches("kms:Describe*", "kms:Decrypt"));
    assert!(wildcard_matches("ssm:GetParameter?", "ssm:GetParameters"));
}
