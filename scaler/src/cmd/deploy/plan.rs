//! The second part of `scaler deploy` (`deploy/mod.rs`): pure decisions over the checked request
//! and the stack as it is — [`plan`] (no change, create or update), where the registration
//! token goes ([`token_step`]), and what a stack's status means ([`outcome`]). No I/O: each is
//! table-tested in `deploy/tests.rs`.

use super::checks::{ParameterSpec, Request, Template};
use crate::aws::stacks::ChangeSet;
use anyhow::{bail, Result};
use aws_sdk_cloudformation::types::{ChangeSetStatus, StackStatus};
use std::collections::BTreeMap;

/// The stack output naming the KMS key the token is stored under.
pub(crate) const KEY_OUTPUT: &str = "KmsKeyArn";

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
/// What is passed: every value given, every list, every value that differs from the template's
/// default (moto cannot take `UsePreviousValue`, and AWS reads a value left out as the default),
/// and every value that differs from the stack's (a kept value cleared back to its default, as
/// giving `PlainHttpQueueEndpoint` clears `QueueEndpoint`, is said, not left to either reading).
pub(crate) fn plan(
    template: &Template,
    request: &Request,
    values: &BTreeMap<String, String>,
    existing: Option<&Existing>,
) -> Plan {
    let kept = |key: &str| existing.and_then(|e| e.parameters.get(key));
    let passed = values
        .iter()
        .filter(|(key, value)| {
            let spec = template.parameters.iter().find(|s| &s.name == *key);
            request.given.contains_key(*key)
                || spec.is_none_or(|spec| {
                    spec.kind.contains("List") || spec.default.as_ref() != Some(*value)
                })
                || kept(key).is_some_and(|was| was != *value)
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
    // A stack deployed before deploy sent compact bodies holds the YAML text.
    let same_template = existing.template == template.wire || existing.template == template.body;
    if same_template && in_effect(&existing.parameters) == in_effect(values) {
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
