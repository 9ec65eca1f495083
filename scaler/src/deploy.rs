//! `scaler deploy | status | destroy --stack NAME`: the CloudFormation stack of a fleet
//! (`infra/cloudformation/fleet.yaml`, embedded in this binary). Parameters are checked against
//! the template before any AWS call (unknown names, allowed values and patterns, numbers, instance
//! type strings, MinSize ≤ MaxSize, a registration token). A deploy stores the token as an SSM
//! SecureString (CloudFormation cannot create one), creates or updates the stack through a change
//! set, streams its events with progress, waits and prints the outputs; "no changes" is success; a
//! failed create or update says which resource failed and why, and exits 1.

use anyhow::{bail, Context, Result};
use aws_sdk_cloudformation::error::DisplayErrorContext;
use aws_sdk_cloudformation::types::{Capability, ChangeSetStatus, ChangeSetType, Parameter, Tag};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The fleet template, as deployed.
pub const TEMPLATE: &str = include_str!("../../infra/cloudformation/fleet.yaml");

#[derive(clap::Args, Clone, Debug)]
pub struct StackArgs {
    /// The stack's name (also the fleet's name: /flotilla/NAME/… parameters and log groups).
    #[arg(long)]
    pub stack: String,
    /// AWS region [default: AWS_REGION / the standard chain].
    #[arg(long, env = "AWS_REGION", default_value = "")]
    pub region: String,
}

#[derive(clap::Args, Clone, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    pub stack: StackArgs,
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
pub struct DestroyArgs {
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
pub struct ParameterSpec {
    pub name: String,
    pub kind: String,
    pub default: Option<String>,
    pub allowed_values: Vec<String>,
    pub allowed_pattern: Option<String>,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
}

fn scalar(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The template's parameters, in declaration order.
pub fn template_parameters(template: &str) -> Result<Vec<ParameterSpec>> {
    let document: serde_yaml::Value =
        serde_yaml::from_str(template).context("the embedded template is not YAML")?;
    let parameters = document
        .get("Parameters")
        .and_then(|p| p.as_mapping())
        .context("the embedded template has no Parameters")?;
    let mut specs = Vec::new();
    for (name, body) in parameters {
        let name = scalar(name).context("a parameter name is not a string")?;
        let field = |key: &str| body.get(key);
        specs.push(ParameterSpec {
            kind: field("Type").and_then(scalar).unwrap_or_default(),
            default: field("Default").and_then(scalar),
            allowed_values: field("AllowedValues")
                .and_then(|v| v.as_sequence())
                .map(|values| values.iter().filter_map(scalar).collect())
                .unwrap_or_default(),
            allowed_pattern: field("AllowedPattern").and_then(scalar),
            min_value: field("MinValue")
                .and_then(scalar)
                .and_then(|v| v.parse().ok()),
            max_value: field("MaxValue")
                .and_then(scalar)
                .and_then(|v| v.parse().ok()),
            name,
        });
    }
    Ok(specs)
}

/// `g6.xlarge`, `p4d.24xlarge`, `u-6tb1.metal`: FAMILY.SIZE.
pub fn valid_instance_type(text: &str) -> bool {
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
pub fn valid_stack_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Parses `KEY=VALUE` arguments and checks each against the template; `previous` are the values
/// the stack has now (update), used for what is not given. Returns the full parameter set.
pub fn resolve_parameters(
    specs: &[ParameterSpec],
    given: &[String],
    previous: &BTreeMap<String, String>,
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
    for spec in specs {
        if values.contains_key(&spec.name) {
            continue;
        }
        if let Some(value) = previous.get(&spec.name) {
            values.insert(spec.name.clone(), value.clone());
        } else if spec.default.is_none() {
            bail!("parameter '{}' is required (it has no default)", spec.name);
        }
    }
    let effective = |name: &str| -> Option<String> {
        values.get(name).cloned().or_else(|| {
            specs
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.default.clone())
        })
    };
    if let (Some(min), Some(max)) = (effective("MinSize"), effective("MaxSize")) {
        let (min, max): (u64, u64) = (min.parse()?, max.parse()?);
        if min > max {
            bail!("MinSize ({min}) is greater than MaxSize ({max})");
        }
    }
    Ok(values)
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
pub fn normalize_list_value(value: &str) -> String {
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
pub fn token_parameter_name(stack: &str, values: &BTreeMap<String, String>) -> String {
    match values.get("AgentTokenParameter") {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!("/flotilla/{stack}/agent-token"),
    }
}

/// How a stack operation ended, read from the stack's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    InProgress,
    Succeeded,
    Failed,
    Gone,
}

pub fn outcome(status: &str) -> Outcome {
    match status {
        "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" => Outcome::Succeeded,
        "DELETE_COMPLETE" => Outcome::Gone,
        s if s.ends_with("_IN_PROGRESS") => Outcome::InProgress,
        // ROLLBACK_COMPLETE, UPDATE_ROLLBACK_COMPLETE, *_FAILED
        _ => Outcome::Failed,
    }
}

/// Whether a failed change set only means "nothing to change".
pub fn is_no_changes(reason: &str) -> bool {
    reason.contains("didn't contain changes")
        || reason.contains("No updates are to be performed")
        || reason.contains("The submitted information didn't contain changes")
}

/// A stack event, as streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    pub reason: String,
}

/// The first failure among events (oldest first), the cause users need.
pub fn first_failure(events: &[Event]) -> Option<&Event> {
    events.iter().find(|e| {
        e.status.ends_with("_FAILED")
            && !e.reason.is_empty()
            && !e.reason.contains("Resource creation cancelled")
            && !e.reason.contains("Resource update cancelled")
    })
}

struct Aws {
    runtime: tokio::runtime::Runtime,
    cloudformation: aws_sdk_cloudformation::Client,
    ssm: aws_sdk_ssm::Client,
    autoscaling: aws_sdk_autoscaling::Client,
}

impl Aws {
    fn connect(region: &str) -> Result<Aws> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config =
            crate::fleet_aws::sdk_config(&runtime, region, "").map_err(anyhow::Error::msg)?;
        Ok(Aws {
            cloudformation: aws_sdk_cloudformation::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            autoscaling: aws_sdk_autoscaling::Client::new(&config),
            runtime,
        })
    }

    /// (status, parameters, outputs) of a stack, `None` when it does not exist.
    #[allow(clippy::type_complexity)]
    fn stack(
        &self,
        name: &str,
    ) -> Result<Option<(String, BTreeMap<String, String>, Vec<(String, String)>)>> {
        let result = self.runtime.block_on(
            self.cloudformation
                .describe_stacks()
                .stack_name(name)
                .send(),
        );
        let output = match result {
            Ok(output) => output,
            Err(error) if format!("{}", DisplayErrorContext(&error)).contains("does not exist") => {
                return Ok(None)
            }
            Err(error) => bail!("describing stack {name}: {}", DisplayErrorContext(&error)),
        };
        let Some(stack) = output.stacks().first() else {
            return Ok(None);
        };
        let status = stack
            .stack_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if status == "DELETE_COMPLETE" {
            return Ok(None);
        }
        let parameters = key_values(stack.parameters(), |p| {
            (p.parameter_key(), p.parameter_value())
        })
        .collect();
        let outputs = key_values(stack.outputs(), |o| (o.output_key(), o.output_value())).collect();
        Ok(Some((status, parameters, outputs)))
    }

    fn events(&self, name: &str) -> Result<Vec<Event>> {
        let output = self
            .runtime
            .block_on(
                self.cloudformation
                    .describe_stack_events()
                    .stack_name(name)
                    .send(),
            )
            .map_err(|e| anyhow::anyhow!("stack events of {name}: {}", DisplayErrorContext(&e)))?;
        let mut events: Vec<Event> = output
            .stack_events()
            .iter()
            .map(|e| Event {
                id: e.event_id().unwrap_or_default().to_string(),
                logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
                resource_type: e.resource_type().unwrap_or_default().to_string(),
                status: e
                    .resource_status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                reason: e.resource_status_reason().unwrap_or_default().to_string(),
            })
            .collect();
        events.reverse(); // oldest first
        Ok(events)
    }

    /// Ids of the stack's events so far (to stream only what comes after).
    fn event_ids(&self, name: &str) -> std::collections::HashSet<String> {
        self.events(name)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// Streams events (those not in `seen`) until the stack settles; returns its final status.
    fn follow(
        &self,
        name: &str,
        mut seen: std::collections::HashSet<String>,
        resources: usize,
        timeout: Duration,
    ) -> Result<String> {
        let started = std::time::Instant::now();
        let mut done = std::collections::BTreeSet::new();
        loop {
            let status = match self.stack(name)? {
                Some((status, _, _)) => status,
                None => "DELETE_COMPLETE".to_string(),
            };
            if let Ok(events) = self.events(name) {
                for event in events {
                    if !seen.insert(event.id.clone()) {
                        continue;
                    }
                    if event.status.ends_with("_COMPLETE") && event.logical_id != name {
                        done.insert(event.logical_id.clone());
                    }
                    println!(
                        "  [{:>2}/{resources}] {:<28} {:<40} {}{}",
                        done.len().min(resources),
                        event.status,
                        format!("{} ({})", event.logical_id, event.resource_type),
                        if event.reason.is_empty() { "" } else { "— " },
                        event.reason
                    );
                }
            }
            if outcome(&status) != Outcome::InProgress {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                bail!(
                    "stack {name} is still {status} after {} s",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn put_token(&self, name: &str, token: &str, stack: &str) -> Result<()> {
        self.runtime
            .block_on(
                self.ssm
                    .put_parameter()
                    .name(name)
                    .value(token)
                    .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                    .overwrite(true)
                    .description(format!("Flotilla registration token for stack {stack}"))
                    .send(),
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "storing the token in {name}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                )
            })?;
        Ok(())
    }

    fn parameter_exists(&self, name: &str) -> Result<bool> {
        match self
            .runtime
            .block_on(self.ssm.get_parameter().name(name).send())
        {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                Ok(false)
            }
            Err(error) => bail!(
                "reading {name}: {}",
                aws_sdk_ssm::error::DisplayErrorContext(&error)
            ),
        }
    }
}

/// (key, value) pairs of stack parameters or outputs; entries without a key are left out.
fn key_values<'a, T>(
    items: &'a [T],
    fields: impl Fn(&'a T) -> (Option<&'a str>, Option<&'a str>) + 'a,
) -> impl Iterator<Item = (String, String)> + 'a {
    items.iter().filter_map(move |item| {
        let (key, value) = fields(item);
        Some((key?.to_string(), value.unwrap_or_default().to_string()))
    })
}

fn template_resource_count(template: &str) -> usize {
    serde_yaml::from_str::<serde_yaml::Value>(template)
        .ok()
        .and_then(|d| {
            d.get("Resources")
                .and_then(|r| r.as_mapping())
                .map(|m| m.len())
        })
        .unwrap_or(0)
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

fn print_outputs(outputs: &[(String, String)]) {
    println!("Outputs:");
    for (key, value) in outputs {
        println!("  {key:<24} {value}");
    }
}

pub fn deploy(args: DeployArgs) -> Result<i32> {
    let stack = &args.stack.stack;
    if !valid_stack_name(stack) {
        bail!("'{stack}' is not a valid stack name (a letter, then letters, digits and dashes)");
    }
    // Everything that can be checked without AWS is checked first.
    let specs = template_parameters(TEMPLATE)?;
    resolve_parameters(&specs, &args.parameters, &BTreeMap::new()).or_else(|error| {
        // A parameter may be required only on create; the full check runs again below.
        if error.to_string().contains("is required") {
            Ok(BTreeMap::new())
        } else {
            Err(error)
        }
    })?;
    let token = read_token(&args)?;
    let user_manages_token = args
        .parameters
        .iter()
        .any(|p| p.starts_with("AgentTokenParameter=") && p.len() > "AgentTokenParameter=".len());
    if token.is_none() && !args.existing_token && !user_manages_token {
        bail!(
            "no registration token: give --token-file FILE or --token-env VAR (stored as the SecureString /flotilla/{stack}/agent-token), --existing-token to keep the one a previous deploy stored, or --parameters AgentTokenParameter=NAME for a parameter you manage"
        );
    }
    let aws = Aws::connect(&args.stack.region)?;
    let existing = aws.stack(stack)?;
    if let Some((status, _, _)) = &existing {
        if status == "ROLLBACK_COMPLETE" {
            bail!("stack {stack} is ROLLBACK_COMPLETE (its first create failed): run `scaler destroy --stack {stack}` first");
        }
        if outcome(status) == Outcome::InProgress {
            bail!("stack {stack} is busy ({status}); try again when it settles");
        }
    }
    let previous: BTreeMap<String, String> = existing
        .as_ref()
        .map(|(_, parameters, _)| {
            parameters
                .iter()
                .map(|(k, v)| (k.clone(), normalize_list_value(v)))
                .collect()
        })
        .unwrap_or_default();
    let values = resolve_parameters(&specs, &args.parameters, &previous)?;
    let token_name = token_parameter_name(stack, &values);
    if let Some(token) = &token {
        if !args.dry_run {
            aws.put_token(&token_name, token, stack)?;
            println!("Stored the registration token as SecureString {token_name}");
        }
    } else if !aws.parameter_exists(&token_name)? {
        bail!("the token parameter {token_name} does not exist: give --token-file or --token-env");
    }
    if existing.is_some() {
        let current = &previous;
        let current_template = aws
            .runtime
            .block_on(aws.cloudformation.get_template().stack_name(stack).send())
            .ok()
            .and_then(|t| t.template_body().map(str::to_string));
        let defaults_filled = |map: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            specs
                .iter()
                .filter_map(|s| {
                    map.get(&s.name)
                        .cloned()
                        .or_else(|| s.default.clone())
                        .map(|v| (s.name.clone(), v))
                })
                .collect()
        };
        if current_template.as_deref() == Some(TEMPLATE)
            && defaults_filled(current) == defaults_filled(&values)
        {
            println!("No changes: stack {stack} is up to date.");
            return Ok(0);
        }
    }
    // On an update, what the user did not give keeps its current value, passed explicitly where
    // it differs from the template's default (moto cannot take `UsePreviousValue`); lists are
    // always passed.
    let given = |key: &str| {
        args.parameters
            .iter()
            .any(|p| p.split_once('=').is_some_and(|(k, _)| k == key))
    };
    let parameters: Vec<Parameter> = values
        .iter()
        .filter(|(key, value)| {
            given(key)
                || specs.iter().find(|s| &s.name == *key).is_none_or(|spec| {
                    spec.kind.contains("List") || spec.default.as_ref() != Some(*value)
                })
        })
        .map(|(key, value)| {
            Parameter::builder()
                .parameter_key(key)
                .parameter_value(value)
                .build()
        })
        .collect();
    if existing.is_none() && !args.dry_run {
        // A first deploy creates the stack directly (every resource is an "Add"); rollback on
        // failure is CloudFormation's default for CreateStack.
        println!("Creating stack {stack}");
        aws.runtime
            .block_on(
                aws.cloudformation
                    .create_stack()
                    .stack_name(stack)
                    .template_body(TEMPLATE)
                    .set_parameters(Some(parameters))
                    .capabilities(Capability::CapabilityIam)
                    .capabilities(Capability::CapabilityNamedIam)
                    .tags(Tag::builder().key("flotilla:stack").value(stack).build())
                    .send(),
            )
            .map_err(|e| anyhow::anyhow!("creating stack {stack}: {}", DisplayErrorContext(&e)))?;
        return finish(
            &aws,
            stack,
            std::collections::HashSet::new(),
            args.timeout_seconds,
        );
    }
    let change_set_type = if existing.is_some() {
        ChangeSetType::Update
    } else {
        ChangeSetType::Create
    };
    let change_set_name = format!("flotilla-{}", hub::api::unix_now());
    println!(
        "{} stack {stack} (change set {change_set_name})",
        if existing.is_some() {
            "Updating"
        } else {
            "Planning"
        }
    );
    let created = aws
        .runtime
        .block_on(
            aws.cloudformation
                .create_change_set()
                .stack_name(stack)
                .change_set_name(&change_set_name)
                .change_set_type(change_set_type)
                .template_body(TEMPLATE)
                .set_parameters(Some(parameters))
                .capabilities(Capability::CapabilityIam)
                .capabilities(Capability::CapabilityNamedIam)
                .tags(Tag::builder().key("flotilla:stack").value(stack).build())
                .send(),
        )
        .map_err(|e| anyhow::anyhow!("creating the change set: {}", DisplayErrorContext(&e)))?;
    let change_set_id = created.id().unwrap_or(&change_set_name).to_string();
    // Wait for the change set.
    let started = std::time::Instant::now();
    let described = loop {
        let described = aws
            .runtime
            .block_on(
                aws.cloudformation
                    .describe_change_set()
                    .stack_name(stack)
                    .change_set_name(&change_set_id)
                    .send(),
            )
            .map_err(|e| {
                anyhow::anyhow!("describing the change set: {}", DisplayErrorContext(&e))
            })?;
        match described.status() {
            Some(ChangeSetStatus::CreateComplete) | Some(ChangeSetStatus::Failed) => {
                break described
            }
            _ if started.elapsed() > Duration::from_secs(300) => {
                bail!("the change set did not become ready within 300 s")
            }
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    };
    if described.status() == Some(&ChangeSetStatus::Failed) {
        let reason = described.status_reason().unwrap_or_default().to_string();
        let _ = aws.runtime.block_on(
            aws.cloudformation
                .delete_change_set()
                .stack_name(stack)
                .change_set_name(&change_set_id)
                .send(),
        );
        if is_no_changes(&reason) {
            println!("No changes: stack {stack} is up to date.");
            return Ok(0);
        }
        bail!("the change set failed: {reason}");
    }
    for change in described.changes() {
        if let Some(resource) = change.resource_change() {
            println!(
                "  {:<8} {} ({})",
                resource.action().map(|a| a.as_str()).unwrap_or("?"),
                resource.logical_resource_id().unwrap_or_default(),
                resource.resource_type().unwrap_or_default()
            );
        }
    }
    if args.dry_run {
        let _ = aws.runtime.block_on(
            aws.cloudformation
                .delete_change_set()
                .stack_name(stack)
                .change_set_name(&change_set_id)
                .send(),
        );
        if existing.is_none() {
            // A CREATE change set leaves an empty REVIEW_IN_PROGRESS stack behind.
            let _ = aws
                .runtime
                .block_on(aws.cloudformation.delete_stack().stack_name(stack).send());
        }
        println!("Dry run: nothing was changed.");
        return Ok(0);
    }
    let seen = aws.event_ids(stack);
    aws.runtime
        .block_on(
            aws.cloudformation
                .execute_change_set()
                .stack_name(stack)
                .change_set_name(&change_set_id)
                .send(),
        )
        .map_err(|e| anyhow::anyhow!("executing the change set: {}", DisplayErrorContext(&e)))?;
    finish(&aws, stack, seen, args.timeout_seconds)
}

/// Follows a create or update to its end: outputs on success, the first failure otherwise.
fn finish(
    aws: &Aws,
    stack: &str,
    seen: std::collections::HashSet<String>,
    timeout_seconds: u64,
) -> Result<i32> {
    let status = aws.follow(
        stack,
        seen,
        template_resource_count(TEMPLATE),
        Duration::from_secs(timeout_seconds),
    )?;
    match outcome(&status) {
        Outcome::Succeeded => {
            println!("Stack {stack}: {status}");
            if let Some((_, _, outputs)) = aws.stack(stack)? {
                print_outputs(&outputs);
            }
            Ok(0)
        }
        _ => {
            let events = aws.events(stack).unwrap_or_default();
            let cause = first_failure(&events)
                .map(|e| format!("{} ({}): {}", e.logical_id, e.resource_type, e.reason))
                .unwrap_or_else(|| "no failure reason was reported".into());
            eprintln!("scaler: stack {stack} ended {status}; first failure: {cause}");
            if status == "ROLLBACK_COMPLETE" {
                eprintln!("scaler: the failed create was rolled back; `scaler destroy --stack {stack}` removes what is left");
            }
            Ok(1)
        }
    }
}

pub fn status(args: StackArgs) -> Result<i32> {
    let stack = &args.stack;
    let aws = Aws::connect(&args.region)?;
    let Some((status, parameters, outputs)) = aws.stack(stack)? else {
        bail!("stack {stack} does not exist");
    };
    println!("Stack {stack}: {status}");
    let output = |key: &str| {
        outputs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let groups: Vec<String> = output("AgentGroupNames")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();
    println!("Fleet (pools in priority order):");
    if !groups.is_empty() {
        let described = aws
            .runtime
            .block_on(
                aws.autoscaling
                    .describe_auto_scaling_groups()
                    .set_auto_scaling_group_names(Some(groups.clone()))
                    .send(),
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "describing the groups: {}",
                    aws_sdk_autoscaling::error::DisplayErrorContext(&e)
                )
            })?;
        for name in &groups {
            let Some(group) = described
                .auto_scaling_groups()
                .iter()
                .find(|g| g.auto_scaling_group_name() == Some(name))
            else {
                println!("  {name}: missing");
                continue;
            };
            let in_service = group
                .instances()
                .iter()
                .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
                .count();
            println!(
                "  {name}: desired {} (min {}, max {}), {} instances, {in_service} in service",
                group.desired_capacity().unwrap_or(0),
                group.min_size().unwrap_or(0),
                group.max_size().unwrap_or(0),
                group.instances().len()
            );
        }
    }
    // The queue, read like the scaler reads it.
    let endpoint = parameters.get("QueueEndpoint").cloned().unwrap_or_default();
    let token_name =
        output("AgentTokenParameter").unwrap_or_else(|| token_parameter_name(stack, &parameters));
    match aws.runtime.block_on(
        aws.ssm
            .get_parameter()
            .name(&token_name)
            .with_decryption(true)
            .send(),
    ) {
        Ok(token) => {
            let token = token
                .parameter()
                .and_then(|p| p.value())
                .unwrap_or_default()
                .to_string();
            let url = format!(
                "{}/api/v1/self_hosted_agents/metrics",
                endpoint.trim_end_matches('/')
            );
            match ureq::get(&url)
                .timeout(Duration::from_secs(10))
                .set("Authorization", &format!("Token {token}"))
                .call()
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    r.into_json::<protocol::QueueMetrics>()
                        .map_err(|e| e.to_string())
                }) {
                Ok(metrics) => println!(
                    "Queue ({endpoint}): {} queued, {} running; agents {} idle, {} busy",
                    metrics.jobs.queued,
                    metrics.jobs.running,
                    metrics.agents.idle,
                    metrics.agents.occupied
                ),
                Err(error) => println!("Queue ({endpoint}): unreachable from here ({error})"),
            }
        }
        Err(error) => println!(
            "Queue: cannot read the token {token_name}: {}",
            aws_sdk_ssm::error::DisplayErrorContext(&error)
        ),
    }
    println!("Recent scaling activity:");
    for name in &groups {
        if let Ok(activities) = aws.runtime.block_on(
            aws.autoscaling
                .describe_scaling_activities()
                .auto_scaling_group_name(name)
                .max_records(5)
                .send(),
        ) {
            for activity in activities.activities() {
                println!(
                    "  {name}: {} {} — {}",
                    activity
                        .start_time()
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                    activity
                        .status_code()
                        .map(|s| s.as_str())
                        .unwrap_or_default(),
                    activity.description().unwrap_or_default()
                );
            }
        }
    }
    print_outputs(&outputs);
    Ok(if outcome(&status) == Outcome::Succeeded {
        0
    } else {
        1
    })
}

pub fn destroy(args: DestroyArgs) -> Result<i32> {
    let stack = &args.stack.stack;
    let aws = Aws::connect(&args.stack.region)?;
    let Some((_, parameters, _)) = aws.stack(stack)? else {
        bail!("stack {stack} does not exist");
    };
    println!("Deleting stack {stack}");
    let seen = aws.event_ids(stack);
    aws.runtime
        .block_on(aws.cloudformation.delete_stack().stack_name(stack).send())
        .map_err(|e| anyhow::anyhow!("deleting stack {stack}: {}", DisplayErrorContext(&e)))?;
    let status = aws.follow(
        stack,
        seen,
        template_resource_count(TEMPLATE),
        Duration::from_secs(args.timeout_seconds),
    )?;
    if outcome(&status) != Outcome::Gone {
        let events = aws.events(stack).unwrap_or_default();
        let cause = first_failure(&events)
            .map(|e| format!("{}: {}", e.logical_id, e.reason))
            .unwrap_or_default();
        eprintln!("scaler: stack {stack} ended {status}: {cause}");
        return Ok(1);
    }
    // The token parameter deploy created (not one the user manages).
    let user_managed = parameters
        .get("AgentTokenParameter")
        .is_some_and(|p| !p.is_empty());
    if !args.keep_token && !user_managed {
        let name = token_parameter_name(stack, &parameters);
        match aws
            .runtime
            .block_on(aws.ssm.delete_parameter().name(&name).send())
        {
            Ok(_) => println!("Deleted the token parameter {name}"),
            Err(error) => println!(
                "The token parameter {name} was not deleted: {}",
                aws_sdk_ssm::error::DisplayErrorContext(&error)
            ),
        }
    }
    println!("Stack {stack} deleted.");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let specs = template_parameters(TEMPLATE).unwrap();
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
            assert!(specs.iter().any(|s| s.name == name), "{name}");
        }
    }

    #[test]
    fn parameters_are_checked_against_the_template() {
        let specs = template_parameters(TEMPLATE).unwrap();
        let given = |list: &[&str]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
        let base = [
            "QueueEndpoint=https://org.semaphoreci.com",
            "ImageId=ami-12345678",
        ];
        let ok = resolve_parameters(
            &specs,
            &given(
                &[
                    &base[..],
                    &["InstanceTypes=g6.xlarge,g5.xlarge", "MaxSize=8"],
                ]
                .concat(),
            ),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(ok["MaxSize"], "8");
        let error = |list: &[&str]| {
            resolve_parameters(
                &specs,
                &given(&[&base[..], list].concat()),
                &BTreeMap::new(),
            )
            .unwrap_err()
            .to_string()
        };
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
        // An update keeps what is not given; MinSize is checked against the kept MaxSize.
        let previous: BTreeMap<String, String> = [("MaxSize".to_string(), "3".to_string())].into();
        let kept = resolve_parameters(&specs, &given(&base), &previous).unwrap();
        assert_eq!(kept["MaxSize"], "3");
        assert!(resolve_parameters(
            &specs,
            &given(&[&base[..], &["MinSize=4"]].concat()),
            &previous
        )
        .is_err());
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
    fn outcomes_and_failures() {
        assert_eq!(outcome("CREATE_COMPLETE"), Outcome::Succeeded);
        assert_eq!(outcome("UPDATE_COMPLETE"), Outcome::Succeeded);
        assert_eq!(
            outcome("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"),
            Outcome::InProgress
        );
        assert_eq!(outcome("ROLLBACK_IN_PROGRESS"), Outcome::InProgress);
        assert_eq!(outcome("ROLLBACK_COMPLETE"), Outcome::Failed);
        assert_eq!(outcome("UPDATE_ROLLBACK_COMPLETE"), Outcome::Failed);
        assert_eq!(outcome("CREATE_FAILED"), Outcome::Failed);
        assert_eq!(outcome("DELETE_COMPLETE"), Outcome::Gone);
        assert!(is_no_changes("The submitted information didn't contain changes. Submit different information to create a change set."));
        assert!(is_no_changes("No updates are to be performed."));
        assert!(!is_no_changes("Template format error"));
        let event = |logical: &str, status: &str, reason: &str| Event {
            id: format!("{logical}-{status}"),
            logical_id: logical.into(),
            resource_type: "AWS::AutoScaling::AutoScalingGroup".into(),
            status: status.into(),
            reason: reason.into(),
        };
        let events = vec![
            event("AgentGroup", "CREATE_IN_PROGRESS", ""),
            event(
                "ScalerGroup",
                "CREATE_FAILED",
                "Resource creation cancelled",
            ),
            event(
                "AgentGroup",
                "CREATE_FAILED",
                "You have requested more vCPU capacity than your current vCPU limit of 0 allows",
            ),
            event(
                "gpu-fleet",
                "ROLLBACK_IN_PROGRESS",
                "The following resource(s) failed to create: [AgentGroup].",
            ),
        ];
        assert_eq!(first_failure(&events).unwrap().logical_id, "AgentGroup");
    }
}
