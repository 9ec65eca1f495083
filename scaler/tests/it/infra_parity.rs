//! What the static checks of infra/ share (`infra_static.rs` for the fleet, `hub_stack_static.rs`
//! for the hub): running the tools, and the parity of a CloudFormation template with its Terraform
//! twin — parameters against variables (snake_case names, defaults, types, validations), resource
//! kinds both ways, output names. Each pair of files is named by its callers.
#![allow(dead_code)]

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the scaler package sits in the workspace root")
        .to_path_buf()
}

pub(crate) fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs a tool from PATH in the repository root; a tool that is not installed fails the test with
/// how to install it.
pub(crate) fn run_tool(program: &str, args: &[&str], install: &str) -> Output {
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

pub(crate) fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A repository file parsed as YAML.
pub(crate) fn yaml(relative: &str) -> Value {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"))
}

/// PascalCase → snake_case, keeping acronyms whole and a plural `s` on them:
/// `ManagedPolicyARNs` → `managed_policy_arns`, `PermissionsBoundaryARN` →
/// `permissions_boundary_arn`, `OnDemandPercentage` → `on_demand_percentage`, `VpcId` → `vpc_id`.
pub(crate) fn snake_case(name: &str) -> String {
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

/// A default, normalized so that both sides compare: numbers, bools, lists of strings, strings.
#[derive(Debug, PartialEq, Clone)]
pub(crate) enum DefaultValue {
    Number(f64),
    Bool(bool),
    List(Vec<String>),
    Text(String),
}

#[derive(Debug)]
pub(crate) struct CfnParameter {
    pub kind: String,
    pub default: Option<DefaultValue>,
    pub allowed_values: Vec<String>,
    pub allowed_pattern: Option<String>,
    pub min_value: Option<String>,
    pub max_value: Option<String>,
}

pub(crate) fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// Is this CloudFormation String parameter really a boolean ('true'/'false')?
pub(crate) fn is_bool_parameter(allowed: &[String]) -> bool {
    let set: BTreeSet<&str> = allowed.iter().map(String::as_str).collect();
    set == BTreeSet::from(["true", "false"])
}

/// The parameters of a CloudFormation template. `AWS::EC2::Image::Id` is a String to Terraform.
pub(crate) fn cfn_parameters(template: &Value) -> BTreeMap<String, CfnParameter> {
    let parameters = template["Parameters"]
        .as_mapping()
        .expect("the template has Parameters");
    let mut out = BTreeMap::new();
    for (name, body) in parameters {
        let name = name
            .as_str()
            .expect("parameter names are strings")
            .to_string();
        let kind = match body["Type"].as_str() {
            Some("AWS::EC2::Image::Id") => "String".to_string(),
            Some(kind) => kind.to_string(),
            None => panic!("{name}: no Type"),
        };
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
pub(crate) struct TfVariable {
    pub kind: Option<String>,
    pub default: Option<DefaultValue>,
    /// The block's text (validations included).
    pub body: String,
}

/// Skips a string literal starting at `i` (the opening quote); returns the index after it.
pub(crate) fn skip_string(bytes: &[u8], mut i: usize) -> usize {
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
pub(crate) fn block_end(text: &str, open: usize) -> usize {
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
pub(crate) fn hcl_literal(text: &str) -> DefaultValue {
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

pub(crate) fn hcl_string(quoted: &str) -> String {
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
pub(crate) fn top_level_attribute(body: &str, name: &str) -> Option<String> {
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

/// The variable blocks of a `variables.tf` (a path from the repository root).
pub(crate) fn tf_variables(relative: &str) -> BTreeMap<String, TfVariable> {
    let text = read(relative);
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
pub(crate) const STACK_NAME_VARIABLE: &str = "stack_name";

/// Everything that differs between a template's parameters and a module's variables.
pub(crate) fn parameter_problems(
    parameters: &BTreeMap<String, CfnParameter>,
    variables: &BTreeMap<String, TfVariable>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, parameter) in parameters {
        let snake = snake_case(name);
        match variables.get(&snake) {
            Some(variable) => problems.extend(variable_problems(name, parameter, variable)),
            None => problems.push(format!(
                "parameter {name} has no variable \"{snake}\" in variables.tf"
            )),
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
    problems
}

/// How one variable differs from its parameter: default, type, validations.
fn variable_problems(name: &str, parameter: &CfnParameter, variable: &TfVariable) -> Vec<String> {
    let snake = snake_case(name);
    let mut problems = Vec::new();
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
    problems
}

/// `keyword "a" "b"` or `keyword "a"` at the start of a line in the `.tf` files of `dir` (from the
/// repository root, not its subdirectories): the first label of each.
pub(crate) fn tf_blocks(dir: &str, keyword: &str) -> Vec<String> {
    let dir = repo_root().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "tf"))
        .collect();
    files.sort();
    let prefix = format!("{keyword} \"");
    files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("readable .tf file");
            text.lines().map(str::to_string).collect::<Vec<_>>()
        })
        .filter_map(|line| {
            line.strip_prefix(&prefix)
                .map(|rest| rest[..rest.find('"').expect("label ends")].to_string())
        })
        .collect()
}

/// The resource types a template declares.
pub(crate) fn cfn_kinds(template: &Value) -> BTreeSet<String> {
    template["Resources"]
        .as_mapping()
        .expect("the template has Resources")
        .values()
        .map(|resource| {
            resource["Type"]
                .as_str()
                .expect("resources have a Type")
                .to_string()
        })
        .collect()
}

/// Resource kinds without a counterpart, both ways, through `kinds` (CloudFormation kind,
/// Terraform kind): a CloudFormation kind may need several Terraform kinds, and a Terraform kind
/// may carry several CloudFormation kinds.
pub(crate) fn kind_problems(
    cfn_kinds: &BTreeSet<String>,
    tf_kinds: &BTreeSet<String>,
    kinds: &[(&str, &str)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for kind in cfn_kinds {
        let counterparts: Vec<&str> = kinds
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
    for kind in tf_kinds {
        let counterparts: Vec<&str> = kinds
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
    problems
}
