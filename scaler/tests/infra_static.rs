//! Static checks of infra/: the CloudFormation stack (`infra/cloudformation/fleet.yaml`, which
//! `scaler deploy` embeds) and the Terraform module (`infra/terraform`). cfn-lint, checkov and
//! `terraform fmt` must pass; the two must stay in step (every parameter a variable of the same
//! snake_case name and default, the same validations, the same resource kinds and outputs); the
//! configuration YAML both write to SSM must follow docs/aws-contract.md and parse as the scaler's
//! own config.
//!
//! A missing tool fails its test with the command that installs it: nothing is skipped.

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the scaler package sits in the workspace root")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs a tool from PATH in the repository root; a tool that is not installed fails the test with
/// how to install it.
fn run_tool(program: &str, args: &[&str], install: &str) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        // terraform: no update check over the network, no complaint about a missing ~/.terraformrc.
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .output();
    match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is required by this test but is not installed (not on PATH). Install it: {install}"
        ),
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

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

/// PascalCase → snake_case, keeping acronyms whole and a plural `s` on them:
/// `ManagedPolicyARNs` → `managed_policy_arns`, `PermissionsBoundaryARN` →
/// `permissions_boundary_arn`, `OnDemandPercentage` → `on_demand_percentage`, `VpcId` → `vpc_id`.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next = chars.get(i + 1).copied();
            // An acronym's plural: "ARNs" followed by the end or by the next word.
            let plural_s = next == Some('s')
                && chars.get(i + 2).is_none_or(|c| c.is_ascii_uppercase())
                && prev.is_ascii_uppercase();
            let starts_word = prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase()
                    && next.is_some_and(|n| n.is_ascii_lowercase())
                    && !plural_s);
            if starts_word {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

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

/// A default, normalized so that both sides compare: numbers, bools, lists of strings, strings.
#[derive(Debug, PartialEq, Clone)]
enum DefaultValue {
    Number(f64),
    Bool(bool),
    List(Vec<String>),
    Text(String),
}

#[derive(Debug)]
struct CfnParameter {
    kind: String,
    default: Option<DefaultValue>,
    allowed_values: Vec<String>,
    allowed_pattern: Option<String>,
    min_value: Option<String>,
    max_value: Option<String>,
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn template() -> Value {
    serde_yaml::from_str(&read(TEMPLATE)).expect("fleet.yaml is YAML")
}

/// Is this CloudFormation String parameter really a boolean ('true'/'false')?
fn is_bool_parameter(allowed: &[String]) -> bool {
    let set: BTreeSet<&str> = allowed.iter().map(String::as_str).collect();
    set == BTreeSet::from(["true", "false"])
}

fn cfn_parameters() -> BTreeMap<String, CfnParameter> {
    let template = template();
    let parameters = template["Parameters"]
        .as_mapping()
        .expect("fleet.yaml has Parameters");
    let mut out = BTreeMap::new();
    for (name, body) in parameters {
        let name = name
            .as_str()
            .expect("parameter names are strings")
            .to_string();
        let kind = body["Type"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no Type"))
            .to_string();
        let allowed_values: Vec<String> = body
            .get("AllowedValues")
            .and_then(Value::as_sequence)
            .map(|values| values.iter().map(scalar_text).collect())
            .unwrap_or_default();
        let default = body.get("Default").map(|value| {
            let text = scalar_text(value);
            match kind.as_str() {
                "Number" => DefaultValue::Number(
                    text.parse()
                        .unwrap_or_else(|_| panic!("{name}: default {text:?} is not a number")),
                ),
                "CommaDelimitedList" => DefaultValue::List(if text.is_empty() {
                    Vec::new()
                } else {
                    text.split(',').map(|s| s.trim().to_string()).collect()
                }),
                "String" if is_bool_parameter(&allowed_values) => {
                    DefaultValue::Bool(text == "true")
                }
                "String" => DefaultValue::Text(text),
                other => panic!(
                    "{name}: parameter type {other} has no Terraform counterpart in this test"
                ),
            }
        });
        out.insert(
            name,
            CfnParameter {
                kind,
                default,
                allowed_values,
                allowed_pattern: body.get("AllowedPattern").map(scalar_text),
                min_value: body.get("MinValue").map(scalar_text),
                max_value: body.get("MaxValue").map(scalar_text),
            },
        );
    }
    out
}

#[derive(Debug)]
struct TfVariable {
    kind: Option<String>,
    default: Option<DefaultValue>,
    /// The block's text (validations included).
    body: String,
}

/// Skips a string literal starting at `i` (the opening quote); returns the index after it.
fn skip_string(bytes: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    panic!("unterminated string literal in variables.tf");
}

/// The index of the `}` closing the block whose `{` is at `open`, string literals skipped.
fn block_end(text: &str, open: usize) -> usize {
    let bytes = text.as_bytes();
    let mut depth = 0;
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = skip_string(bytes, i);
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' | b')' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced block in variables.tf starting at byte {open}");
}

/// Parses an HCL literal: a string, a number, true/false, or a list of those.
fn hcl_literal(text: &str) -> DefaultValue {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let mut items = Vec::new();
        let bytes = inner.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    let end = skip_string(bytes, i);
                    items.push(hcl_string(&inner[i..end]));
                    i = end;
                }
                b',' | b' ' | b'\n' | b'\t' | b'\r' => i += 1,
                other => panic!(
                    "list default {text}: only string items are supported here, found {:?}",
                    other as char
                ),
            }
        }
        return DefaultValue::List(items);
    }
    if text.starts_with('"') {
        return DefaultValue::Text(hcl_string(text));
    }
    match text {
        "true" => DefaultValue::Bool(true),
        "false" => DefaultValue::Bool(false),
        number => DefaultValue::Number(number.parse().unwrap_or_else(|_| {
            panic!("default {number:?} is not a literal this test understands")
        })),
    }
}

fn hcl_string(quoted: &str) -> String {
    let inner = &quoted[1..quoted.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name = value` at the top level of a block body (not inside nested blocks).
fn top_level_attribute(body: &str, name: &str) -> Option<String> {
    let bytes = body.as_bytes();
    let mut depth = 0;
    let mut i = 0;
    let mut line_start = true;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = skip_string(bytes, i);
                line_start = false;
                continue;
            }
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' | b')' => depth -= 1,
            b'\n' => {
                line_start = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' => {
                i += 1;
                continue;
            }
            _ if line_start && depth == 0 => {
                let rest = &body[i..];
                if let Some(after) = rest.strip_prefix(name) {
                    let after = after.trim_start_matches([' ', '\t']);
                    if let Some(value) = after.strip_prefix('=') {
                        // The value runs to the end of the line, or to its closing bracket.
                        let value = value.trim_start_matches([' ', '\t']);
                        let start = body.len() - value.len();
                        let end = if value.starts_with('[') {
                            block_end(body, start) + 1
                        } else {
                            start + value.find('\n').unwrap_or(value.len())
                        };
                        return Some(body[start..end].to_string());
                    }
                }
            }
            _ => {}
        }
        line_start = false;
        i += 1;
    }
    None
}

fn tf_variables() -> BTreeMap<String, TfVariable> {
    let text = read("infra/terraform/variables.tf");
    let mut out = BTreeMap::new();
    let mut rest = 0;
    while let Some(found) = text[rest..].find("variable \"") {
        let start = rest + found + "variable \"".len();
        let name_end = start + text[start..].find('"').expect("variable name ends");
        let name = text[start..name_end].to_string();
        let open = name_end + text[name_end..].find('{').expect("variable block opens");
        let close = block_end(&text, open);
        let body = text[open + 1..close].to_string();
        let default = top_level_attribute(&body, "default").map(|v| hcl_literal(&v));
        let kind = top_level_attribute(&body, "type").map(|t| t.trim().to_string());
        assert!(
            out.insert(
                name.clone(),
                TfVariable {
                    kind,
                    default,
                    body
                }
            )
            .is_none(),
            "variable {name} is declared twice"
        );
        rest = close;
    }
    assert!(!out.is_empty(), "no variable blocks found in variables.tf");
    out
}

/// The Terraform variable that stands for CloudFormation's AWS::StackName pseudo parameter: the
/// only variable without a parameter.
const STACK_NAME_VARIABLE: &str = "stack_name";

#[test]
fn every_parameter_is_a_variable_with_the_same_default() {
    let parameters = cfn_parameters();
    let variables = tf_variables();
    let mut problems = Vec::new();
    for (name, parameter) in &parameters {
        let snake = snake_case(name);
        let Some(variable) = variables.get(&snake) else {
            problems.push(format!(
                "parameter {name} has no variable \"{snake}\" in variables.tf"
            ));
            continue;
        };
        if parameter.default != variable.default {
            problems.push(format!(
                "{name} / {snake}: defaults differ: CloudFormation {:?}, Terraform {:?}",
                parameter.default, variable.default
            ));
        }
        let expected_type = match parameter.kind.as_str() {
            "Number" => "number",
            "CommaDelimitedList" => "list(string)",
            _ if is_bool_parameter(&parameter.allowed_values) => "bool",
            _ => "string",
        };
        if variable.kind.as_deref() != Some(expected_type) {
            problems.push(format!(
                "{snake}: type {:?}, expected {expected_type} (from {name}'s {})",
                variable.kind, parameter.kind
            ));
        }
        // Validations mirror the parameter's constraints.
        let body = variable.body.replace("\\\\", "\\");
        if !is_bool_parameter(&parameter.allowed_values) && !parameter.allowed_values.is_empty() {
            // The items of the validation's `contains([...], var.x)` list.
            let listed: BTreeSet<String> = body
                .find("contains([")
                .map(|at| {
                    let list = &body[at + "contains([".len()..];
                    list[..list.find(']').expect("the list closes")]
                        .split(',')
                        .map(|item| item.trim().trim_matches('"').to_string())
                        .collect()
                })
                .unwrap_or_default();
            let allowed: BTreeSet<String> = parameter.allowed_values.iter().cloned().collect();
            if listed != allowed {
                problems.push(format!(
                    "{snake}: validation allows {listed:?}, {name}'s AllowedValues are {allowed:?}"
                ));
            }
        }
        if let Some(pattern) = &parameter.allowed_pattern {
            // A list parameter's pattern allows the empty default ('^(X)?$'); a list variable
            // need not: '^X$' is the same check.
            let unwrapped = pattern
                .strip_prefix("^(")
                .and_then(|p| p.strip_suffix(")?$"))
                .map(|inner| format!("^{inner}$"));
            let mirrored = body.contains(&format!("\"{pattern}\""))
                || (parameter.kind == "CommaDelimitedList"
                    && unwrapped.is_some_and(|p| body.contains(&format!("\"{p}\""))));
            if !mirrored {
                problems.push(format!(
                    "{snake}: no validation with {name}'s pattern {pattern}"
                ));
            }
        }
        if let Some(min) = &parameter.min_value {
            if !body.contains(&format!("var.{snake} >= {min}")) {
                problems.push(format!(
                    "{snake}: no validation `var.{snake} >= {min}` (MinValue of {name})"
                ));
            }
        }
        if let Some(max) = &parameter.max_value {
            if !body.contains(&format!("var.{snake} <= {max}")) {
                problems.push(format!(
                    "{snake}: no validation `var.{snake} <= {max}` (MaxValue of {name})"
                ));
            }
        }
    }
    let expected: BTreeSet<String> = parameters.keys().map(|n| snake_case(n)).collect();
    for name in variables.keys() {
        if name != STACK_NAME_VARIABLE && !expected.contains(name) {
            problems.push(format!("variable {name} has no CloudFormation parameter"));
        }
    }
    if !variables.contains_key(STACK_NAME_VARIABLE) {
        problems.push(format!(
            "no variable {STACK_NAME_VARIABLE} (CloudFormation's stack name)"
        ));
    }
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
];

fn tf_module_files() -> Vec<(String, String)> {
    let dir = repo_root().join("infra/terraform");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "tf"))
        .map(|path| {
            (
                path.display().to_string(),
                std::fs::read_to_string(&path).expect("readable .tf file"),
            )
        })
        .collect();
    files.sort();
    files
}

/// `keyword "a" "b"` or `keyword "a"` at the start of a line: the first label of each.
fn tf_blocks(keyword: &str) -> Vec<String> {
    let prefix = format!("{keyword} \"");
    tf_module_files()
        .iter()
        .flat_map(|(_, text)| text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|line| {
            line.strip_prefix(&prefix)
                .map(|rest| rest[..rest.find('"').expect("label ends")].to_string())
        })
        .collect()
}

#[test]
fn resource_kinds_match_both_ways() {
    let template = template();
    let cfn_kinds: BTreeSet<String> = template["Resources"]
        .as_mapping()
        .expect("fleet.yaml has Resources")
        .values()
        .map(|resource| {
            resource["Type"]
                .as_str()
                .expect("resources have a Type")
                .to_string()
        })
        .collect();
    let tf_kinds: BTreeSet<String> = tf_blocks("resource").into_iter().collect();
    assert!(
        !tf_kinds.is_empty(),
        "no resource blocks found in infra/terraform/*.tf"
    );
    let mut problems = Vec::new();
    for kind in &cfn_kinds {
        let counterparts: Vec<&str> = KINDS
            .iter()
            .filter(|(c, _)| c == kind)
            .map(|(_, t)| *t)
            .collect();
        if counterparts.is_empty() {
            problems.push(format!(
                "{kind} is not in this test's mapping table (add its Terraform kind)"
            ));
        }
        for tf in counterparts {
            if !tf_kinds.contains(tf) {
                problems.push(format!("the stack has {kind}, the module has no {tf}"));
            }
        }
    }
    for kind in &tf_kinds {
        let counterparts: Vec<&str> = KINDS
            .iter()
            .filter(|(_, t)| t == kind)
            .map(|(c, _)| *c)
            .collect();
        if counterparts.is_empty() {
            problems.push(format!(
                "{kind} is not in this test's mapping table (add its CloudFormation kind)"
            ));
        } else if !counterparts.iter().any(|c| cfn_kinds.contains(*c)) {
            problems.push(format!(
                "the module has {kind}, the stack has none of {counterparts:?}"
            ));
        }
    }
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
        (&fleet["queue"]["endpoint"], "<QueueEndpoint>"),
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
            "QueueEndpoint" => "https://example.semaphoreci.com",
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
