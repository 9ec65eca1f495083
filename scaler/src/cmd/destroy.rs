//! `scaler destroy --stack NAME`: deletes a fleet's stack, following its events to the end, then
//! the registration token parameter `deploy` created for it (`/flotilla/NAME/agent-token`) unless
//! `--keep-token`. A token parameter the user named (`AgentTokenParameter`) is theirs and is never
//! deleted. A hub stack (`--template hub`, told apart by its parameters) has no such parameter:
//! its secrets belong to the stack and go with it; its database leaves a final snapshot. A delete
//! that fails names the first failing resource and exits 1.

use super::deploy::{outcome, token_parameter_name, DestroyArgs, Outcome, Template, TemplateKind};
use super::watch;
use crate::aws::stacks::Stacks;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::time::Duration;

/// `scaler destroy`.
pub(crate) fn run(args: DestroyArgs) -> Result<i32> {
    let name = &args.stack.stack;
    let stacks = Stacks::connect(&args.stack.region)?;
    let Some(stack) = stacks.stack(name)? else {
        bail!("stack {name} does not exist");
    };
    let kind = TemplateKind::of_stack(&stack.parameters).unwrap_or_default();
    let template = Template::embedded_kind(kind)?;
    println!("Deleting stack {name}");
    let progress = watch::progress_after(&stacks, name, template.resources);
    stacks.delete_stack(name)?;
    let timeout = Duration::from_secs(args.timeout_seconds);
    let status = watch::follow(&stacks, name, progress, timeout)?;
    if outcome(&status) != Outcome::Gone {
        watch::report_failure(&stacks, name, &status);
        return Ok(1);
    }
    if let Some(token) = created_token(name, &stack.parameters).filter(|_| !args.keep_token) {
        match stacks.delete_parameter(&token) {
            Ok(()) => println!("Deleted the token parameter {token}"),
            Err(error) => println!("The token parameter {token} was not deleted: {error:#}"),
        }
    }
    println!("Stack {name} deleted.");
    Ok(0)
}

/// The token parameter `deploy` created for the stack; `None` when the user manages their own,
/// and for a hub stack (its tokens are its own secrets).
fn created_token(stack: &str, parameters: &BTreeMap<String, String>) -> Option<String> {
    if TemplateKind::of_stack(parameters) == Some(TemplateKind::Hub) {
        return None;
    }
    let user_managed = parameters
        .get("AgentTokenParameter")
        .is_some_and(|name| !name.is_empty());
    (!user_managed).then(|| token_parameter_name(stack, parameters))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_deploy_created_is_deleted() {
        let parameters = |value: &str| -> BTreeMap<String, String> {
            [("AgentTokenParameter".to_string(), value.to_string())].into()
        };
        assert_eq!(
            created_token("gpu-fleet", &BTreeMap::new()).as_deref(),
            Some("/flotilla/gpu-fleet/agent-token")
        );
        assert_eq!(
            created_token("gpu-fleet", &parameters("")).as_deref(),
            Some("/flotilla/gpu-fleet/agent-token")
        );
        assert_eq!(created_token("gpu-fleet", &parameters("/mine/token")), None);
        let hub: BTreeMap<String, String> =
            [("CertificateArn".to_string(), "arn:x".to_string())].into();
        assert_eq!(created_token("ci-hub", &hub), None);
    }
}
