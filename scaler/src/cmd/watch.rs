//! Following a stack operation to its end and printing it, for `deploy` and `destroy`: one line
//! per new stack event with progress (`[done/total]` resources), then the outputs on success, or
//! the first failing resource and why. [`Progress`] and the line builders are pure (tested here);
//! [`follow`] only polls the stacks client and prints what they return.

use super::deploy::{outcome, Outcome};
use crate::aws::stacks::{Event, ResourceChange, Stacks};
use anyhow::{bail, Result};
use aws_sdk_cloudformation::types::{ResourceStatus, StackStatus};
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

/// How often a stack in progress is polled.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// Which events were shown, and which resources are done.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    stack: String,
    total: usize,
    seen: HashSet<String>,
    done: BTreeSet<String>,
}

impl Progress {
    /// Progress over `total` resources, not showing the events in `seen` (earlier operations').
    pub(crate) fn new(
        stack: &str,
        total: usize,
        seen: impl IntoIterator<Item = String>,
    ) -> Progress {
        Progress {
            stack: stack.to_string(),
            total,
            seen: seen.into_iter().collect(),
            done: BTreeSet::new(),
        }
    }

    /// One line per event not shown yet (events oldest first).
    pub(crate) fn lines(&mut self, events: &[Event]) -> Vec<String> {
        let mut lines = Vec::new();
        for event in events {
            if !self.seen.insert(event.id.clone()) {
                continue;
            }
            if is_complete(&event.status) && event.logical_id != self.stack {
                self.done.insert(event.logical_id.clone());
            }
            lines.push(format!(
                "  [{:>2}/{}] {:<28} {:<40} {}{}",
                self.done.len().min(self.total),
                self.total,
                event.status.as_str(),
                format!("{} ({})", event.logical_id, event.resource_type),
                if event.reason.is_empty() { "" } else { "— " },
                event.reason
            ));
        }
        lines
    }
}

fn is_complete(status: &ResourceStatus) -> bool {
    use ResourceStatus as R;
    matches!(
        status,
        R::CreateComplete
            | R::UpdateComplete
            | R::DeleteComplete
            | R::ImportComplete
            | R::RollbackComplete
            | R::UpdateRollbackComplete
            | R::ImportRollbackComplete
    )
}

fn is_failure(status: &ResourceStatus) -> bool {
    use ResourceStatus as R;
    matches!(
        status,
        R::CreateFailed
            | R::UpdateFailed
            | R::DeleteFailed
            | R::ImportFailed
            | R::ImportRollbackFailed
            | R::RollbackFailed
            | R::UpdateRollbackFailed
            | R::ExportFailed
            | R::ExportRollbackFailed
    )
}

/// Progress that skips the events the stack has now (an update or a delete shows only its own).
pub(crate) fn progress_after(stacks: &Stacks, stack: &str, total: usize) -> Progress {
    // A stack without readable events has nothing to skip.
    let events = stacks.events(stack).unwrap_or_default();
    Progress::new(stack, total, events.into_iter().map(|e| e.id))
}

/// Prints new events until the stack settles; returns its final status (`DELETE_COMPLETE` once
/// it is gone).
pub(crate) fn follow(
    stacks: &Stacks,
    stack: &str,
    mut progress: Progress,
    timeout: Duration,
) -> Result<StackStatus> {
    let started = Instant::now();
    loop {
        let status = stacks
            .stack(stack)?
            .map_or(StackStatus::DeleteComplete, |s| s.status);
        // A deleted stack's events cannot be read by name: nothing more to show then.
        if let Ok(events) = stacks.events(stack) {
            for line in progress.lines(&events) {
                println!("{line}");
            }
        }
        if outcome(&status) != Outcome::InProgress {
            return Ok(status);
        }
        if started.elapsed() > timeout {
            bail!(
                "stack {stack} is still {status} after {} s",
                timeout.as_secs()
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Follows a create or update to its end: 0 with the outputs on success, 1 with the first
/// failure otherwise.
pub(crate) fn finish(
    stacks: &Stacks,
    stack: &str,
    progress: Progress,
    timeout: Duration,
) -> Result<i32> {
    let status = follow(stacks, stack, progress, timeout)?;
    if outcome(&status) != Outcome::Succeeded {
        report_failure(stacks, stack, &status);
        return Ok(1);
    }
    println!("Stack {stack}: {status}");
    if let Some(settled) = stacks.stack(stack)? {
        print!("{}", Outputs(&settled.outputs));
    }
    Ok(0)
}

/// Says on stderr how the stack ended and the first resource that failed.
pub(crate) fn report_failure(stacks: &Stacks, stack: &str, status: &StackStatus) {
    let events = stacks.events(stack).unwrap_or_default();
    eprintln!("{}", failure_line(stack, status, &events));
    if *status == StackStatus::RollbackComplete {
        eprintln!("scaler: the failed create was rolled back; `scaler destroy --stack {stack}` removes what is left");
    }
}

pub(crate) fn failure_line(stack: &str, status: &StackStatus, events: &[Event]) -> String {
    let cause = first_failure(events)
        .map(|e| format!("{} ({}): {}", e.logical_id, e.resource_type, e.reason))
        .unwrap_or_else(|| "no failure reason was reported".into());
    format!("scaler: stack {stack} ended {status}; first failure: {cause}")
}

/// The first failure among events (oldest first), the cause users need. Resources CloudFormation
/// stopped because another one failed are marked failed too, with a reason saying so (event
/// data; there is no status for it): they are skipped.
pub(crate) fn first_failure(events: &[Event]) -> Option<&Event> {
    const CONSEQUENCES: [&str; 2] = ["Resource creation cancelled", "Resource update cancelled"];
    events.iter().find(|e| {
        is_failure(&e.status)
            && !e.reason.is_empty()
            && !CONSEQUENCES.iter().any(|c| e.reason.contains(c))
    })
}

/// A change set's planned changes, one line each.
pub(crate) fn print_changes(changes: &[ResourceChange]) {
    for change in changes {
        println!(
            "  {:<8} {} ({})",
            change.action, change.logical_id, change.resource_type
        );
    }
}

/// A stack's outputs as printed after a deploy and by `status`.
pub(crate) struct Outputs<'a>(pub &'a [(String, String)]);

impl fmt::Display for Outputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Outputs:")?;
        for (key, value) in self.0 {
            writeln!(f, "  {key:<24} {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(logical: &str, status: &str, reason: &str) -> Event {
        Event {
            id: format!("{logical}-{status}"),
            logical_id: logical.into(),
            resource_type: "AWS::AutoScaling::AutoScalingGroup".into(),
            status: ResourceStatus::from(status),
            reason: reason.into(),
        }
    }

    #[test]
    fn the_first_real_failure_is_the_cause() {
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
        let line = failure_line("gpu-fleet", &StackStatus::RollbackComplete, &events);
        assert_eq!(
            line,
            "scaler: stack gpu-fleet ended ROLLBACK_COMPLETE; first failure: AgentGroup \
             (AWS::AutoScaling::AutoScalingGroup): You have requested more vCPU capacity than \
             your current vCPU limit of 0 allows"
        );
        let quiet = failure_line("gpu-fleet", &StackStatus::UpdateRollbackComplete, &[]);
        assert!(quiet.ends_with("first failure: no failure reason was reported"));
    }

    #[test]
    fn progress_counts_done_resources_and_shows_each_event_once() {
        let mut progress = Progress::new("gpu-fleet", 3, ["old".to_string()]);
        let mut old = event("Role", "CREATE_COMPLETE", "");
        old.id = "old".into();
        let first = vec![
            old.clone(),
            event("Role", "CREATE_IN_PROGRESS", ""),
            event("Role", "CREATE_COMPLETE", ""),
        ];
        let lines = progress.lines(&first);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("  [ 0/3] CREATE_IN_PROGRESS"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("  [ 1/3] CREATE_COMPLETE"),
            "{lines:?}"
        );
        assert!(lines[1].contains("Role (AWS::AutoScaling::AutoScalingGroup)"));
        let mut second = first.clone();
        second.push(event("Group", "CREATE_FAILED", "no capacity"));
        second.push(event("gpu-fleet", "CREATE_COMPLETE", ""));
        let lines = progress.lines(&second);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].ends_with("— no capacity"), "{lines:?}");
        // The stack's own event is not a resource.
        assert!(lines[1].starts_with("  [ 1/3]"), "{lines:?}");
    }

    #[test]
    fn outputs_are_a_table() {
        let outputs = vec![("AgentGroupNames".to_string(), "a,b".to_string())];
        assert_eq!(
            Outputs(&outputs).to_string(),
            format!("Outputs:\n  {:<24} a,b\n", "AgentGroupNames")
        );
    }
}
