//! `scaler deploy --stack NAME [--template fleet|hub]`: creates or updates a fleet's CloudFormation
//! stack (`infra/cloudformation/fleet.yaml`) or a hub's (`infra/cloudformation/hub.yaml`, whose
//! outputs a fleet uses: `QueueEndpoint`, the registration token's secret), both embedded in this
//! binary, in three parts kept apart so each
//! can be read and tested alone. First the checks that need no AWS (stack name, parameters against
//! the template's declarations, MinSize ≤ MaxSize among the values given, a registration token)
//! and, for a fleet, the read-only preflight of `cmd/preflight` (quotas, offerings, image, network:
//! its errors stop here unless `--ignore-preflight`, `--dry-run` included);
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

mod calls;
mod checks;
mod plan;
#[cfg(test)]
mod tests;
mod wire;

use calls::{apply, existing_stack, secure_token};
use checks::{check_kind, check_request, resolve_parameters, user_manages_token};
pub(crate) use checks::{normalize_list_value, parse_parameters, token_parameter_name, Template};
pub(crate) use plan::{outcome, Outcome};

use crate::aws::stacks::Stacks;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The fleet template, as deployed.
pub(crate) const TEMPLATE: &str = include_str!("../../../../infra/cloudformation/fleet.yaml");

/// The hub template, as deployed.
pub(crate) const HUB_TEMPLATE: &str = include_str!("../../../../infra/cloudformation/hub.yaml");

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
    /// Show the change set's changes, then delete it without executing (after the preflight).
    #[arg(long)]
    pub dry_run: bool,
    /// Deploy a fleet even when its preflight (quotas, offerings, image, network) finds errors.
    #[arg(long)]
    pub ignore_preflight: bool,
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
    if args.template == TemplateKind::Fleet {
        let region = &args.stack.region;
        super::preflight::before_deploy(region, &template, &values, args.ignore_preflight)?;
    }
    let plan = plan::plan(&template, &request, &values, existing.as_ref());
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
