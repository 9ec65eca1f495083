//! `scaler deploy --stack NAME [--template fleet|hub]`: creates or updates a fleet's CloudFormation
//! stack (`infra/cloudformation/fleet.yaml`) or a hub's (`infra/cloudformation/hub.yaml`, whose
//! outputs a fleet uses: `QueueEndpoint`, the registration token's secret), both embedded in this
//! binary, in three parts kept apart so each
//! can be read and tested alone. First the checks that need no AWS (stack name, parameters against
//! the template's declarations, MinSize ≤ MaxSize among the values given, a registration token);
//! then a pure [`plan`] from the resolved values and the stack as it is ([`Plan::NoChange`],
//! [`Plan::Create`] or [`Plan::Update`]); then the calls, all through [`Stacks`], with the
//! printing in [`super::watch`]. The token goes to SSM as a SecureString (CloudFormation cannot
//! create one) under the stack's KMS key, which only the stack's roles may decrypt with: the key is
//! made by the stack (or named by `KmsKeyArn`), so the token is written once the stack operation
//! has succeeded, under the key its `KmsKeyArn` output names ([`token_step`]; a token stored under
//! another key is stored again under this one). Until then the scaler's unit retries every 10 s,
//! and an agent started for MinSize removes its instance and is replaced. A first deploy is a
//! `CreateStack` (moto gives stacks created through a change set
//! no outputs); an update is a change set that passes every kept value explicitly (moto cannot
//! take `UsePreviousValue`); "no changes" is success; `--dry-run` prints the change set and
//! deletes it; a failed create or update names the first failing resource and exits 1. The hub
//! template makes its own secrets (admin and registration tokens in Secrets Manager, the
//! database's password managed by RDS), so no token step runs for it ([`TemplateKind`]).

use super::watch::{self, Progress};
use crate::aws::stacks::{ChangeSet, Definition, Stacks};
use anyhow::{bail, Context, Result};
use aws_sdk_cloudformation::types::{ChangeSetStatus, ChangeSetType, StackStatus};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The fleet template, as deployed.
pub(crate) const TEMPLATE: &str = include_str!("../../../infra/cloudformation/fleet.yaml");

/// The hub template, as deployed.
pub(crate) const HUB_TEMPLATE: &str = include_str!("../../../infra/cloudformation/hub.yaml");

/// Which embedded template a stack is made from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TemplateKind {
    /// CI agents, their Auto Scaling groups and the scaler (`fleet.yaml`).
    #[default]
    Fleet,
    /// The hub: instances behind an HTTPS load balancer, PostgreSQL on RDS (`hub.yaml`).
    Hub,
}

impl TemplateKind {
    /// Whether `scaler deploy` stores a registration token in SSM for stacks of this kind.
    pub(crate) fn has_token_step(self) -> bool {
        self == TemplateKind::Fleet
    }

    /// The kind of a deployed stack, told by a parameter only its template declares (the stack's
    /// parameters are there whatever state it is in). `None`: neither.
    pub(crate) fn of_stack(parameters: &BTreeMap<String, String>) -> Option<TemplateKind> {
        if parameters.contains_key("QueueEndpoint") {
            Some(TemplateKind::Fleet)
        } else if parameters.contains_key("CertificateArn") {
            Some(TemplateKind::Hub)
        } else {
            None
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct StackArgs {
    /// The stack's name (also the fleet's name: /flotilla/NAME/… parameters and log groups).
    #[arg(long)]
    pub stack: String,
    /// AWS region [default: AWS_REGION / the standard chain].
    #[arg(long, env = "AWS_REGION", default_value = "")]
    pub region: String,
}

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct DeployArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Which built-in template: a fleet of agents, or the hub they use as their queue.
    #[arg(long, value_enum, default_value_t = TemplateKind::Fleet)]
    pub template: TemplateKind,
    /// Template parameters as KEY=VALUE (e.g. InstanceTypes=g6.xlarge,g5.xlarge MaxSize=8). On an
    /// update, parameters not given keep their current values.
    #[arg(long = "parameters", alias = "parameter", num_args = 1.., value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,
    /// The agent type's registration token, from this file ...
    #[arg(long, conflicts_with_all = ["token_env", "existing_token"])]
    pub token_file: Option<PathBuf>,
    /// ... or from this environment variable ...
    #[arg(long, conflicts_with = "existing_token")]
    pub token_env: Option<String>,
    /// ... or keep the token a previous deploy stored.
    #[arg(long)]
    pub existing_token: bool,
    /// Show the change set's changes, then delete it without executing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give up waiting for the stack after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_seconds: u64,
}

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct DestroyArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Keep the registration token parameter that deploy created.
    #[arg(long)]
    pub keep_token: bool,
    #[arg(long, default_value_t = 3600)]
    pub timeout_seconds: u64,
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

/// A template as deploy needs it: its text, its parameters in declaration order, and how many
/// resources it declares (the denominator of the progress lines).
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub body: String,
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
            template: &self.body,
            parameters,
        }
    }
}

fn parameter_spec(name: &serde_yaml::Value, body: &serde_yaml::Value) -> Result<ParameterSpec> {
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

fn scalar(value: &serde_yaml::Value) -> Option<String> {
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

/// A stack name CloudFormation accepts.
pub(crate) fn valid_stack_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Parses `KEY=VALUE` arguments and checks each against the template, and MinSize ≤ MaxSize
/// when both are given. Needs no AWS: what the stack holds now is checked in [`resolve_parameters`].
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
    check_sizes(&values, |name| {
        specs
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.default.clone())
    })?;
    Ok(values)
}

/// MinSize ≤ MaxSize, each taken from `values`, else from `fallback`; nothing to check without both.
fn check_sizes(
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

fn check_value(spec: &ParameterSpec, value: &str) -> Result<()> {
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
    if name == "QueueEndpoint" && !(value.starts_with("https://") || value.starts_with("http://")) {
        bail!("parameter QueueEndpoint: '{value}' must be an http:// or https:// URL");
    }
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

/// The stack output naming the KMS key the token is stored under.
pub(crate) const KEY_OUTPUT: &str = "KmsKeyArn";

/// Whether the token parameter is one the user named (`AgentTokenParameter`) and manages.
pub(crate) fn user_manages_token(values: &BTreeMap<String, String>) -> bool {
    values
        .get("AgentTokenParameter")
        .is_some_and(|name| !name.is_empty())
}

/// What becomes of the registration token once the stack's key exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenStep {
    /// Store the token given on the command line under the key.
    Store,
    /// The stored token is under the key already.
    Keep,
    /// The stored token (deploy's own) is under another key — a stack deployed before it had a
    /// key, or a key that changed: store its value again under the key.
    Reencrypt,
    /// The user's own token parameter is missing (`None`) or under another key: only say so.
    Warn { under: Option<String> },
}

/// Decides [`TokenStep`] from whether a token was given, whose the parameter is, the key it is
/// stored under now (`None`: no parameter) and the stack's key (its ARN, and its alias when the
/// stack made it). SSM may name a key by ARN, id or alias; any of the three is the same key.
pub(crate) fn token_step(
    given: bool,
    user_managed: bool,
    stored_under: Option<&str>,
    key_arn: &str,
    key_alias: Option<&str>,
) -> Result<TokenStep> {
    let same_key = |stored: &str| {
        stored == key_arn
            || key_arn.ends_with(&format!(":key/{stored}"))
            || key_alias == Some(stored)
    };
    Ok(match stored_under {
        _ if given => TokenStep::Store,
        Some(stored) if same_key(stored) => TokenStep::Keep,
        Some(stored) if user_managed => TokenStep::Warn {
            under: Some(stored.to_string()),
        },
        Some(_) => TokenStep::Reencrypt,
        None if user_managed => TokenStep::Warn { under: None },
        None => bail!("no registration token is stored: give --token-file or --token-env"),
    })
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

/// The stack as deploy finds it (settled: see [`check_settled`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Existing {
    /// Its parameter values, lists read as `a,b` ([`normalize_list_value`]).
    pub parameters: BTreeMap<String, String>,
    /// The template it was last deployed with.
    pub template: String,
}

/// What a deploy does. Parameters are the values to pass, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The stack runs this template with these values already.
    NoChange,
    /// No stack yet: `CreateStack` (or, for `--dry-run`, a CREATE change set).
    Create(Vec<(String, String)>),
    /// An UPDATE change set.
    Update(Vec<(String, String)>),
}

/// Decides what to do from the resolved `values` ([`resolve_parameters`]) and the stack as it is.
/// What is passed: every value given, every list, and every value that differs from the
/// template's default (moto cannot take `UsePreviousValue`, and AWS reads a value left out as the
/// default).
pub(crate) fn plan(
    template: &Template,
    request: &Request,
    values: &BTreeMap<String, String>,
    existing: Option<&Existing>,
) -> Plan {
    let passed = values
        .iter()
        .filter(|(key, value)| {
            let spec = template.parameters.iter().find(|s| &s.name == *key);
            request.given.contains_key(*key)
                || spec.is_none_or(|spec| {
                    spec.kind.contains("List") || spec.default.as_ref() != Some(*value)
                })
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let Some(existing) = existing else {
        return Plan::Create(passed);
    };
    let in_effect = |map: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        let value = |s: &ParameterSpec| map.get(&s.name).or(s.default.as_ref()).cloned();
        template
            .parameters
            .iter()
            .filter_map(|s| Some((s.name.clone(), value(s)?)))
            .collect()
    };
    if existing.template == template.body && in_effect(&existing.parameters) == in_effect(values) {
        Plan::NoChange
    } else {
        Plan::Update(passed)
    }
}

/// How a stack operation ended, read from the stack's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    InProgress,
    Succeeded,
    Failed,
    Gone,
}

pub(crate) fn outcome(status: &StackStatus) -> Outcome {
    use StackStatus as S;
    match status {
        S::CreateComplete | S::UpdateComplete | S::ImportComplete => Outcome::Succeeded,
        S::DeleteComplete => Outcome::Gone,
        S::CreateInProgress
        | S::DeleteInProgress
        | S::ImportInProgress
        | S::ImportRollbackInProgress
        | S::ReviewInProgress
        | S::RollbackInProgress
        | S::UpdateCompleteCleanupInProgress
        | S::UpdateInProgress
        | S::UpdateRollbackCompleteCleanupInProgress
        | S::UpdateRollbackInProgress => Outcome::InProgress,
        // ROLLBACK_COMPLETE, UPDATE_ROLLBACK_COMPLETE, *_FAILED, and statuses newer than the SDK.
        _ => Outcome::Failed,
    }
}

/// Whether a stack in `status` can be deployed to now.
pub(crate) fn check_settled(stack: &str, status: &StackStatus) -> Result<()> {
    if *status == StackStatus::RollbackComplete {
        bail!("stack {stack} is ROLLBACK_COMPLETE (its first create failed): run `scaler destroy --stack {stack}` first");
    }
    if outcome(status) == Outcome::InProgress {
        bail!("stack {stack} is busy ({status}); try again when it settles");
    }
    Ok(())
}

/// Whether a change set failed only because it holds nothing to do. AWS says so only in the change
/// set's status reason (there is no code for it). An empty list of changes is not enough: moto
/// lists none for any update.
pub(crate) fn is_no_changes(change_set: &ChangeSet) -> bool {
    const NO_CHANGES: [&str; 2] = ["didn't contain changes", "No updates are to be performed"];
    change_set.status == Some(ChangeSetStatus::Failed)
        && NO_CHANGES.iter().any(|r| change_set.reason.contains(r))
}

/// `scaler deploy`.
pub(crate) fn run(args: DeployArgs) -> Result<i32> {
    let template = Template::embedded_kind(args.template)?;
    let request = check_request(&args, &template)?;
    let stack = request.stack.as_str();
    let stacks = Stacks::connect(&args.stack.region)?;
    let existing = existing_stack(&stacks, stack)?;
    if let Some(existing) = &existing {
        check_kind(stack, args.template, &existing.parameters)?;
    }
    let previous = existing
        .as_ref()
        .map(|e| e.parameters.clone())
        .unwrap_or_default();
    let values = resolve_parameters(&template.parameters, &request.given, &previous)?;
    let plan = plan(&template, &request, &values, existing.as_ref());
    if !args.template.has_token_step() {
        return apply(&stacks, &template, &request, plan, &args);
    }
    let token = token_parameter_name(stack, &values);
    let user_managed = user_manages_token(&values);
    if request.token.is_none() && !user_managed && stacks.parameter_key(&token)?.is_none() {
        bail!("the token parameter {token} is needed: give --token-file or --token-env");
    }
    let code = apply(&stacks, &template, &request, plan, &args)?;
    if code == 0 && !args.dry_run {
        secure_token(&stacks, &request, &token, user_managed)?;
    }
    Ok(code)
}

/// Carries out the plan; the exit code (0: the stack is as asked, or the dry run is shown).
fn apply(
    stacks: &Stacks,
    template: &Template,
    request: &Request,
    plan: Plan,
    args: &DeployArgs,
) -> Result<i32> {
    let stack = request.stack.as_str();
    let timeout = Duration::from_secs(args.timeout_seconds);
    let (parameters, kind) = match plan {
        Plan::NoChange => {
            println!("No changes: stack {stack} is up to date.");
            return Ok(0);
        }
        Plan::Create(parameters) if !args.dry_run => {
            println!("Creating stack {stack}");
            let definition = template.definition(stack, &parameters);
            stacks.create_stack(&definition)?;
            let progress = Progress::new(stack, template.resources, []);
            return watch::finish(stacks, stack, progress, timeout);
        }
        Plan::Create(parameters) => (parameters, ChangeSetType::Create),
        Plan::Update(parameters) => (parameters, ChangeSetType::Update),
    };
    let definition = template.definition(stack, &parameters);
    let change_set = change_set(stacks, &definition, &kind)?;
    let Some((id, described)) = change_set else {
        return Ok(0);
    };
    watch::print_changes(&described.changes);
    if args.dry_run {
        discard(stacks, &definition, &id, &kind)?;
        println!("Dry run: nothing was changed.");
        return Ok(0);
    }
    let progress = watch::progress_after(stacks, stack, template.resources);
    stacks.execute_change_set(stack, &id)?;
    watch::finish(stacks, stack, progress, timeout)
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

fn name_of(kind: TemplateKind) -> &'static str {
    match kind {
        TemplateKind::Fleet => "fleet",
        TemplateKind::Hub => "hub",
    }
}

/// Everything that can be checked without AWS.
fn check_request(args: &DeployArgs, template: &Template) -> Result<Request> {
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

fn read_token(args: &DeployArgs) -> Result<Option<String>> {
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

/// The stack, if there is one, once it is settled enough to deploy to.
fn existing_stack(stacks: &Stacks, name: &str) -> Result<Option<Existing>> {
    let Some(stack) = stacks.stack(name)? else {
        return Ok(None);
    };
    check_settled(name, &stack.status)?;
    Ok(Some(Existing {
        parameters: stack
            .parameters
            .iter()
            .map(|(key, value)| (key.clone(), normalize_list_value(value)))
            .collect(),
        template: stacks.template(name)?,
    }))
}

/// Puts the registration token under the stack's key, once the stack has one ([`token_step`]).
fn secure_token(stacks: &Stacks, request: &Request, name: &str, user_managed: bool) -> Result<()> {
    let stack = request.stack.as_str();
    let settled = stacks.stack(stack)?;
    let key = settled
        .as_ref()
        .and_then(|s| s.output(KEY_OUTPUT))
        .with_context(|| {
            format!("stack {stack} has no {KEY_OUTPUT} output to store the token under")
        })?
        .to_string();
    let made_by_stack = settled
        .as_ref()
        .is_some_and(|s| s.parameters.get("KmsKeyArn").is_none_or(String::is_empty));
    let alias = made_by_stack.then(|| format!("alias/flotilla/{stack}"));
    let stored = stacks.parameter_key(name)?;
    let step = token_step(
        request.token.is_some(),
        user_managed,
        stored.as_deref(),
        &key,
        alias.as_deref(),
    )?;
    let description = format!("Flotilla registration token for stack {stack}");
    match step {
        TokenStep::Keep => {}
        TokenStep::Warn { under } => println!(
            "Note: the token parameter {name} is {}; the stack's roles decrypt only what is under {key}: put it with --key-id {key}",
            under.map_or("missing".to_string(), |k| format!("under the key {k}"))
        ),
        TokenStep::Store | TokenStep::Reencrypt => {
            // Re-encrypting reads the old value with the caller's rights on the old key.
            let token = match &request.token {
                Some(token) => token.clone(),
                None => stacks.parameter(name)?,
            };
            stacks.put_secure_string(name, &token, &description, &key)?;
            println!("Stored the registration token as SecureString {name} under {key}");
        }
    }
    Ok(())
}

/// Creates a change set and waits for it: its id and description, or `None` when it holds no
/// changes (then it is already deleted and "No changes" printed).
fn change_set(
    stacks: &Stacks,
    definition: &Definition,
    kind: &ChangeSetType,
) -> Result<Option<(String, ChangeSet)>> {
    let stack = definition.stack;
    let name = format!("flotilla-{}", scaling::unix_now());
    let verb = match kind {
        ChangeSetType::Update => "Updating",
        _ => "Planning",
    };
    println!("{verb} stack {stack} (change set {name})");
    let id = stacks.create_change_set(definition, &name, kind.clone())?;
    let described = wait_for_change_set(stacks, stack, &id)?;
    if described.status != Some(ChangeSetStatus::Failed) {
        return Ok(Some((id, described)));
    }
    if let Err(error) = discard(stacks, definition, &id, kind) {
        eprintln!("scaler: {error:#}");
    }
    if is_no_changes(&described) {
        println!("No changes: stack {stack} is up to date.");
        return Ok(None);
    }
    bail!("the change set failed: {}", described.reason)
}

fn wait_for_change_set(stacks: &Stacks, stack: &str, id: &str) -> Result<ChangeSet> {
    const READY_WITHIN: Duration = Duration::from_secs(300);
    let started = Instant::now();
    loop {
        let described = stacks.change_set(stack, id)?;
        if matches!(
            described.status,
            Some(ChangeSetStatus::CreateComplete | ChangeSetStatus::Failed)
        ) {
            return Ok(described);
        }
        if started.elapsed() > READY_WITHIN {
            bail!(
                "the change set did not become ready within {} s",
                READY_WITHIN.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Deletes a change set that will not run, and the empty REVIEW_IN_PROGRESS stack a CREATE change
/// set leaves behind.
fn discard(stacks: &Stacks, definition: &Definition, id: &str, kind: &ChangeSetType) -> Result<()> {
    stacks.delete_change_set(definition.stack, id)?;
    if *kind == ChangeSetType::Create {
        stacks.delete_stack(definition.stack)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::stacks::ResourceChange;

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
        assert!(
            !valid_stack_name("1fleet") && !valid_stack_name("gpu_fleet") && !valid_stack_name("")
        );
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
        assert!(error(&["InstanceTypes=g6.xlarge,gpu-big"])
            .contains("'gpu-big' is not an instance type"));
        assert!(
            error(&["MinSize=5", "MaxSize=2"]).contains("MinSize (5) is greater than MaxSize (2)")
        );
        assert!(error(&["MaxSize=lots"]).contains("'lots' is not a number"));
        assert!(error(&["FallbackPools=sometimes"]).contains("is not one of"));
        assert!(error(&["QueueEndpoint=org.semaphoreci.com"]).contains("http:// or https://"));
        assert!(error(&["MaxSize"]).contains("is not KEY=VALUE"));
        assert!(error(&["MaxSize=3", "MaxSize=4"]).contains("given twice"));
        // An update keeps what is not given; MinSize is checked against the kept MaxSize.
        let previous = map(&[("MaxSize", "3")]);
        assert_eq!(resolve(&[], &previous).unwrap()["MaxSize"], "3");
        assert!(resolve(&["MinSize=4"], &previous).is_err());
        // Without AWS, a lone MinSize cannot be judged (the stack may hold a larger MaxSize) ...
        assert!(parse_parameters(&specs, &strings(&["MinSize=12"])).is_ok());
        // ... and a required parameter may come from the stack.
        let required = resolve_parameters(&specs, &BTreeMap::new(), &BTreeMap::new());
        assert!(required.unwrap_err().to_string().contains("is required"));
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
}
