//! The third part of `scaler deploy` (`deploy/mod.rs`): the calls, all through [`Stacks`] — the
//! stack as it is, a create or a change set (printed, executed or discarded), waiting for them
//! with the progress printed by `cmd/watch.rs`, and the token stored as a SecureString under the
//! stack's KMS key once the stack operation has succeeded.

use super::super::watch::{self, Progress};
use super::checks::normalize_list_value;
use super::checks::{Request, Template};
use super::plan::{
    check_settled, is_no_changes, token_step, Existing, Plan, TokenStep, KEY_OUTPUT,
};
use super::DeployArgs;
use crate::aws::stacks::{ChangeSet, Definition, Stacks};
use anyhow::{bail, Context, Result};
use aws_sdk_cloudformation::types::{ChangeSetStatus, ChangeSetType};
use std::time::{Duration, Instant};

/// Carries out the plan; the exit code (0: the stack is as asked, or the dry run is shown).
pub(super) fn apply(
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

/// The stack, if there is one, once it is settled enough to deploy to.
pub(super) fn existing_stack(stacks: &Stacks, name: &str) -> Result<Option<Existing>> {
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
pub(super) fn secure_token(
    stacks: &Stacks,
    request: &Request,
    name: &str,
    user_managed: bool,
) -> Result<()> {
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
pub(super) fn change_set(
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

pub(super) fn wait_for_change_set(stacks: &Stacks, stack: &str, id: &str) -> Result<ChangeSet> {
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
pub(super) fn discard(
    stacks: &Stacks,
    definition: &Definition,
    id: &str,
    kind: &ChangeSetType,
) -> Result<()> {
    stacks.delete_change_set(definition.stack, id)?;
    if *kind == ChangeSetType::Create {
        stacks.delete_stack(definition.stack)?;
    }
    Ok(())
}
