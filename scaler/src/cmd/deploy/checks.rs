//! The checks `scaler deploy` makes before it calls AWS (the first of its three parts,
//! `deploy/mod.rs`): the embedded template's parameter declarations, the stack name, the values
//! given against the declarations (allowed values, patterns, lists, MinSize ≤ MaxSize among the
//! values given), the queue's endpoint (plain HTTP only as `PlainHttpQueueEndpoint`, exactly one
//! of the two: [`EndpointError`]), a registration token from a file or the environment, and a
//! stack made from the other template refused. What they produce is a [`Request`].

use super::{DeployArgs, TemplateKind, HUB_TEMPLATE, TEMPLATE};
use crate::aws::stacks::Definition;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// The fleet template's two ways to name the queue: an https:// URL, or an http:// one under a
/// name that says what it is (issue 27). Its Rule wants exactly one.
pub(crate) const QUEUE_ENDPOINT: &str = "QueueEndpoint";
pub(crate) const PLAIN_HTTP_QUEUE_ENDPOINT: &str = "PlainHttpQueueEndpoint";

/// Why the queue's endpoint is refused: the template's patterns and Rule, said before AWS would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EndpointError {
    #[error("parameter QueueEndpoint: '{0}' is plain HTTP, so the registration token and every job would cross the network unencrypted. Use an https:// URL, or, for a queue that speaks plain HTTP only, say so: PlainHttpQueueEndpoint={0}")]
    PlainHttp(String),
    #[error("parameter QueueEndpoint: '{0}' must be an https:// URL")]
    NotHttps(String),
    #[error("parameter PlainHttpQueueEndpoint: '{0}' must be an http:// URL (an https:// one is QueueEndpoint)")]
    NotPlainHttp(String),
    #[error("no queue endpoint: give QueueEndpoint=https://HOST[:PORT] (or PlainHttpQueueEndpoint=http://HOST[:PORT] for a queue that speaks plain HTTP only)")]
    Missing,
    #[error("QueueEndpoint and PlainHttpQueueEndpoint are both set: give one of them")]
    Both,
}

/// One template parameter's declaration.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ParameterSpec {
    pub name: String,
    pub kind: String,
    pub default: Option<String>,
    pub allowed_values: Vec<String>,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
}

/// A template as deploy needs it: its text, the body it sends ([`super::wire`]), its parameters
/// in declaration order, and how many resources it declares (the denominator of the progress
/// lines).
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub body: String,
    pub wire: String,
    pub parameters: Vec<ParameterSpec>,
    pub resources: usize,
}

impl Template {
    /// The fleet template built into this binary.
    pub(crate) fn embedded() -> Result<Template> {
        Template::parse(TEMPLATE)
    }

    /// The built-in template of this kind.
    pub(crate) fn embedded_kind(kind: TemplateKind) -> Result<Template> {
        match kind {
            TemplateKind::Fleet => Template::embedded(),
            TemplateKind::Hub => Template::parse(HUB_TEMPLATE),
        }
    }

    pub(crate) fn parse(body: &str) -> Result<Template> {
        let document: serde_yaml::Value =
            serde_yaml::from_str(body).context("the embedded template is not YAML")?;
        let declared = document
            .get("Parameters")
            .and_then(|p| p.as_mapping())
            .context("the embedded template has no Parameters")?;
        let parameters = declared
            .iter()
            .map(|(name, body)| parameter_spec(name, body))
            .collect::<Result<_>>()?;
        let resources = document
            .get("Resources")
            .and_then(|r| r.as_mapping())
            .map_or(0, |m| m.len());
        Ok(Template {
            wire: super::wire::compact(&document)?,
            body: body.to_string(),
            parameters,
            resources,
        })
    }

    /// What a stack of this template with these parameter values is made from.
    pub(crate) fn definition<'a>(
        &'a self,
        stack: &'a str,
        parameters: &'a [(String, String)],
    ) -> Definition<'a> {
        Definition {
            stack,
            template: &self.wire,
            parameters,
        }
    }
}

pub(super) fn parameter_spec(
    name: &serde_yaml::Value,
    body: &serde_yaml::Value,
) -> Result<ParameterSpec> {
    let field = |key: &str| body.get(key);
    let number = |key: &str| field(key).and_then(scalar).and_then(|v| v.parse().ok());
    Ok(ParameterSpec {
        name: scalar(name).context("a parameter name is not a string")?,
        kind: field("Type").and_then(scalar).unwrap_or_default(),
        default: field("Default").and_then(scalar),
        allowed_values: field("AllowedValues")
            .and_then(|v| v.as_sequence())
            .map(|values| values.iter().filter_map(scalar).collect())
            .unwrap_or_default(),
        min_value: number("MinValue"),
        max_value: number("MaxValue"),
    })
}

pub(super) fn scalar(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `g6.xlarge`, `p4d.24xlarge`, `u-6tb1.metal`: FAMILY.SIZE.
pub(crate) fn valid_instance_type(text: &str) -> bool {
    let Some((family, size)) = text.split_once('.') else {
        return false;
    };
    let mut chars = family.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && family.chars().any(|c| c.is_ascii_digit())
        && !size.is_empty()
        && size
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The most names `JobEcrRepositories` takes: the template has one ARN slot per name (a list
/// cannot be mapped to ARNs without a transform), as it has for instance types.
pub(crate) const MAX_ECR_REPOSITORIES: usize = 10;

/// An ECR repository name (`team/app`): lower-case letters, digits and `._/-`, starting with a
/// letter or digit, 2 to 256 characters; nothing that would widen an ARN (`*`, `?`, `:`).
pub(crate) fn valid_ecr_repository(name: &str) -> bool {
    let mut chars = name.chars();
    (2..=256).contains(&name.len())
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._/-".contains(c))
}

/// A stack name CloudFormation accepts.
pub(crate) fn valid_stack_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Parses `KEY=VALUE` arguments and checks each against the template, MinSize ≤ MaxSize when
/// both are given, and not both queue endpoints. Needs no AWS: what the stack holds now is
/// checked in [`resolve_parameters`].
pub(crate) fn parse_parameters(
    specs: &[ParameterSpec],
    given: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for argument in given {
        let (key, value) = argument
            .split_once('=')
            .with_context(|| format!("parameter '{argument}' is not KEY=VALUE"))?;
        let Some(spec) = specs.iter().find(|s| s.name == key) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "unknown parameter '{key}'; the template takes: {}",
                known.join(", ")
            );
        };
        check_value(spec, value)?;
        if values.insert(key.to_string(), value.to_string()).is_some() {
            bail!("parameter '{key}' is given twice");
        }
    }
    let set = |name: &str| values.get(name).is_some_and(|v: &String| !v.is_empty());
    if set(QUEUE_ENDPOINT) && set(PLAIN_HTTP_QUEUE_ENDPOINT) {
        return Err(EndpointError::Both.into());
    }
    check_sizes(&values, |_| None)?;
    Ok(values)
}

/// The full parameter set: what is given, else the stack's current value (`previous`, empty on
/// create); a parameter without a default must have one of the two. MinSize ≤ MaxSize is checked
/// on the values in effect (defaults included).
pub(crate) fn resolve_parameters(
    specs: &[ParameterSpec],
    given: &BTreeMap<String, String>,
    previous: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for spec in specs {
        match given.get(&spec.name).or_else(|| previous.get(&spec.name)) {
            Some(value) => {
                values.insert(spec.name.clone(), value.clone());
            }
            None if spec.default.is_none() => {
                bail!("parameter '{}' is required (it has no default)", spec.name)
            }
            None => {}
        }
    }
    resolve_queue_endpoint(specs, given, &mut values)?;
    check_sizes(&values, |name| {
        specs
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.default.clone())
    })?;
    Ok(values)
}

/// One of a template's two queue endpoints given replaces the other's kept value (so a stack
/// moves from one to the other with one parameter); then exactly one must be set, each of the
/// right scheme, kept values included (a stack made before PlainHttpQueueEndpoint existed may keep
/// an http:// QueueEndpoint, which its template now refuses). Templates without the two (the
/// hub's) pass untouched.
pub(crate) fn resolve_queue_endpoint(
    specs: &[ParameterSpec],
    given: &BTreeMap<String, String>,
    values: &mut BTreeMap<String, String>,
) -> Result<(), EndpointError> {
    let pair = [QUEUE_ENDPOINT, PLAIN_HTTP_QUEUE_ENDPOINT];
    if !pair
        .iter()
        .all(|name| specs.iter().any(|s| s.name == *name))
    {
        return Ok(());
    }
    for (one, other) in [(pair[0], pair[1]), (pair[1], pair[0])] {
        if given.contains_key(one) && !given.contains_key(other) {
            values.insert(other.to_string(), String::new());
        }
    }
    let value = |name: &str| values.get(name).cloned().unwrap_or_default();
    for name in pair {
        check_endpoint(name, &value(name))?;
    }
    match (value(pair[0]).is_empty(), value(pair[1]).is_empty()) {
        (true, true) => Err(EndpointError::Missing),
        (false, false) => Err(EndpointError::Both),
        _ => Ok(()),
    }
}

/// A queue endpoint parameter's value against its scheme ('' is left to [`resolve_queue_endpoint`]).
pub(crate) fn check_endpoint(name: &str, value: &str) -> Result<(), EndpointError> {
    match name {
        _ if value.is_empty() => Ok(()),
        QUEUE_ENDPOINT if value.starts_with("http://") => {
            Err(EndpointError::PlainHttp(value.to_string()))
        }
        QUEUE_ENDPOINT if !value.starts_with("https://") => {
            Err(EndpointError::NotHttps(value.to_string()))
        }
        PLAIN_HTTP_QUEUE_ENDPOINT if !value.starts_with("http://") => {
            Err(EndpointError::NotPlainHttp(value.to_string()))
        }
        _ => Ok(()),
    }
}

/// MinSize ≤ MaxSize, each taken from `values`, else from `fallback`; nothing to check without both.
pub(super) fn check_sizes(
    values: &BTreeMap<String, String>,
    fallback: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let effective = |name: &str| values.get(name).cloned().or_else(|| fallback(name));
    let (Some(min), Some(max)) = (effective("MinSize"), effective("MaxSize")) else {
        return Ok(());
    };
    let size = |name: &str, text: &str| -> Result<u64> {
        text.parse()
            .with_context(|| format!("{name} '{text}' is not a whole number"))
    };
    let (min, max) = (size("MinSize", &min)?, size("MaxSize", &max)?);
    if min > max {
        bail!("MinSize ({min}) is greater than MaxSize ({max})");
    }
    Ok(())
}

pub(super) fn check_value(spec: &ParameterSpec, value: &str) -> Result<()> {
    let name = &spec.name;
    if !spec.allowed_values.is_empty() && !spec.allowed_values.iter().any(|v| v == value) {
        bail!(
            "parameter {name}: '{value}' is not one of {}",
            spec.allowed_values.join(", ")
        );
    }
    if spec.kind == "Number" {
        let number: f64 = value
            .parse()
            .ok()
            .with_context(|| format!("parameter {name}: '{value}' is not a number"))?;
        if spec.min_value.is_some_and(|min| number < min)
            || spec.max_value.is_some_and(|max| number > max)
        {
            bail!(
                "parameter {name}: {value} is outside {}..{}",
                spec.min_value.map(|v| v.to_string()).unwrap_or_default(),
                spec.max_value.map(|v| v.to_string()).unwrap_or_default()
            );
        }
    }
    if name == "InstanceTypes" {
        let types: Vec<&str> = value.split(',').map(str::trim).collect();
        if let Some(bad) = types.iter().find(|t| !valid_instance_type(t)) {
            bail!(
                "parameter InstanceTypes: '{bad}' is not an instance type (FAMILY.SIZE, such as g6.xlarge)"
            );
        }
    }
    if name == "JobEcrRepositories" && !value.trim().is_empty() {
        let names: Vec<&str> = value.split(',').map(str::trim).collect();
        if let Some(bad) = names.iter().find(|n| !valid_ecr_repository(n)) {
            bail!(
                "parameter JobEcrRepositories: '{bad}' is not an ECR repository name (lower-case letters, digits and ._/-, starting with a letter or digit, 2 to 256 characters; a name, not an ARN)"
            );
        }
        if names.len() > MAX_ECR_REPOSITORIES {
            bail!(
                "parameter JobEcrRepositories: {} repositories, the stack takes at most {MAX_ECR_REPOSITORIES}",
                names.len()
            );
        }
    }
    check_endpoint(name, value)?;
    Ok(())
}

/// A list parameter's current value as `a,b`. AWS reports it so; moto reports a Python list
/// (`['a', 'b']`), which is read the same way so an update never writes that text back.
pub(crate) fn normalize_list_value(value: &str) -> String {
    let trimmed = value.trim();
    if !(trimmed.starts_with("['") && trimmed.ends_with("']")) && trimmed != "[]" {
        return value.to_string();
    }
    trimmed[1..trimmed.len() - 1]
        .split(',')
        .map(|item| item.trim().trim_matches('\'').to_string())
        .filter(|item| !item.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// Where the registration token parameter lives for these values.
pub(crate) fn token_parameter_name(stack: &str, values: &BTreeMap<String, String>) -> String {
    match values.get("AgentTokenParameter") {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!("/flotilla/{stack}/agent-token"),
    }
}

/// Whether the token parameter is one the user named (`AgentTokenParameter`) and manages.
pub(crate) fn user_manages_token(values: &BTreeMap<String, String>) -> bool {
    values
        .get("AgentTokenParameter")
        .is_some_and(|name| !name.is_empty())
}

/// What deploy was asked for, checked before any AWS call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub stack: String,
    /// The parameters given on the command line, each checked against the template.
    pub given: BTreeMap<String, String>,
    /// The registration token to store, when one was given.
    pub token: Option<String>,
}

/// A stack of one kind is never updated with the other kind's template (that would replace
/// everything it holds).
pub(crate) fn check_kind(
    stack: &str,
    kind: TemplateKind,
    parameters: &BTreeMap<String, String>,
) -> Result<()> {
    match TemplateKind::of_stack(parameters) {
        Some(found) if found != kind => bail!(
            "stack {stack} was made from the {} template, not the {} one: give --template {}",
            name_of(found),
            name_of(kind),
            name_of(found)
        ),
        _ => Ok(()),
    }
}

pub(super) fn name_of(kind: TemplateKind) -> &'static str {
    match kind {
        TemplateKind::Fleet => "fleet",
        TemplateKind::Hub => "hub",
    }
}

/// Everything that can be checked without AWS.
pub(super) fn check_request(args: &DeployArgs, template: &Template) -> Result<Request> {
    let stack = &args.stack.stack;
    if !valid_stack_name(stack) {
        bail!("'{stack}' is not a valid stack name (a letter, then letters, digits and dashes)");
    }
    let given = parse_parameters(&template.parameters, &args.parameters)?;
    let token = read_token(args)?;
    if !args.template.has_token_step() {
        if token.is_some() || args.existing_token {
            bail!("the hub stack makes its own registration token (output RegistrationTokenSecretArn): drop --token-file, --token-env and --existing-token");
        }
        return Ok(Request {
            stack: stack.clone(),
            given,
            token: None,
        });
    }
    if token.is_none() && !args.existing_token && !user_manages_token(&given) {
        bail!(
            "no registration token: give --token-file FILE or --token-env VAR (stored as the SecureString /flotilla/{stack}/agent-token), --existing-token to keep the one a previous deploy stored, or --parameters AgentTokenParameter=NAME for a parameter you manage"
        );
    }
    Ok(Request {
        stack: stack.clone(),
        given,
        token,
    })
}

pub(super) fn read_token(args: &DeployArgs) -> Result<Option<String>> {
    let token = match (&args.token_file, &args.token_env) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the token file {}", file.display()))?,
        (None, Some(variable)) => std::env::var(variable)
            .with_context(|| format!("the token variable {variable} is not set"))?,
        (None, None) => return Ok(None),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the registration token is empty");
    }
    Ok(Some(token))
}
