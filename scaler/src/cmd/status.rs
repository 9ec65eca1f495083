//! `scaler status --stack NAME`: a deployed fleet at a glance — the stack's status, its pools in
//! priority order, the queue as the scaler reads it, recent scaling activity and the outputs.
//! [`collect`] gathers a plain [`FleetStatus`] through the shared pieces (the stacks client,
//! [`crate::aws::ssm_parameter`] for the token, [`MetricsQueue`] for the counts) and its `Display`
//! prints it. The stack must exist; the queue and the activities are best effort (a laptop often
//! cannot reach the queue), and a `status` of a stack that is not complete exits 1. A hub stack
//! (`--template hub`) shows its group of hub instances and its `QueueEndpoint` output; its queue is
//! read by the fleets that use it, with their token, so it is not read here.

use super::deploy::{outcome, token_parameter_name, Outcome, StackArgs, TemplateKind};
use super::preflight::checks::Finding;
use super::watch::Outputs;
use crate::aws::stacks::{Activity, Pool, Stacks};
use anyhow::{bail, Result};
use aws_sdk_cloudformation::types::StackStatus;
use scaling::policy::QueueSnapshot;
use scaling::queue::{MetricsQueue, Queue};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Scaling activities shown per group.
const ACTIVITIES_PER_GROUP: i32 = 5;

/// A deployed fleet, as `scaler status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FleetStatus {
    pub stack: String,
    pub status: StackStatus,
    /// The agent groups in priority order; `None` for one the stack names but that is missing.
    pub pools: Vec<(String, Option<Pool>)>,
    /// The stack's `QueueEndpoint` (or `PlainHttpQueueEndpoint`).
    pub endpoint: String,
    pub queue: QueueReading,
    /// Newest first within each group.
    pub activities: Vec<Activity>,
    pub outputs: Vec<(String, String)>,
    /// A fleet's parameters (empty for a hub), for the quota check.
    pub fleet_parameters: BTreeMap<String, String>,
    /// A fleet's vCPU quotas against what MaxSize needs (the preflight's quota check).
    pub quotas: Vec<Finding>,
}

/// The queue's counts, or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QueueReading {
    Counts(QueueSnapshot),
    Unreachable(String),
    NoToken {
        parameter: String,
        reason: String,
    },
    /// A hub stack: it serves the queue; the fleets read it.
    ServedHere,
}

impl FleetStatus {
    /// Whether the stack's last operation succeeded.
    pub(crate) fn healthy(&self) -> bool {
        outcome(&self.status) == Outcome::Succeeded
    }
}

/// `scaler status`.
pub(crate) fn run(args: StackArgs) -> Result<i32> {
    let stacks = Stacks::connect(&args.region)?;
    let mut status = collect(&stacks, &args.stack)?;
    if !status.fleet_parameters.is_empty() {
        status.quotas = super::preflight::quota_headroom(&args.region, &status.fleet_parameters);
    }
    print!("{status}");
    Ok(if status.healthy() { 0 } else { 1 })
}

pub(crate) fn collect(stacks: &Stacks, name: &str) -> Result<FleetStatus> {
    let Some(stack) = stacks.stack(name)? else {
        bail!("stack {name} does not exist");
    };
    let hub = TemplateKind::of_stack(&stack.parameters) == Some(TemplateKind::Hub);
    let groups_output = if hub {
        "HubGroupName"
    } else {
        "AgentGroupNames"
    };
    let groups: Vec<String> = stack
        .output(groups_output)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();
    let pools = groups.iter().cloned().zip(stacks.pools(&groups)?).collect();
    // A fleet names its queue in QueueEndpoint, or in PlainHttpQueueEndpoint when it is http://.
    let parameter = |name: &str| {
        stack
            .parameters
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let endpoint = match hub {
        true => stack.output("QueueEndpoint").map(str::to_string),
        false => parameter("QueueEndpoint").or_else(|| parameter("PlainHttpQueueEndpoint")),
    }
    .unwrap_or_default();
    let token = stack
        .output("AgentTokenParameter")
        .map(str::to_string)
        .unwrap_or_else(|| token_parameter_name(name, &stack.parameters));
    let queue = match hub {
        true => QueueReading::ServedHere,
        false => read_queue(stacks, &endpoint, &token),
    };
    let activities = groups
        .iter()
        .flat_map(|group| {
            // Best effort: not every endpoint (moto) keeps activities.
            stacks
                .activities(group, ACTIVITIES_PER_GROUP)
                .unwrap_or_default()
        })
        .collect();
    Ok(FleetStatus {
        stack: name.to_string(),
        status: stack.status,
        pools,
        endpoint,
        queue,
        activities,
        outputs: stack.outputs,
        fleet_parameters: match hub {
            true => BTreeMap::new(),
            false => stack.parameters,
        },
        quotas: Vec::new(),
    })
}

/// One read of the queue's metrics with the agent type's token, as the scaler makes it.
fn read_queue(stacks: &Stacks, endpoint: &str, token_parameter: &str) -> QueueReading {
    let token = match stacks.parameter(token_parameter) {
        Ok(token) => token,
        Err(error) => {
            return QueueReading::NoToken {
                parameter: token_parameter.to_string(),
                reason: format!("{error:#}"),
            }
        }
    };
    match MetricsQueue::new(endpoint, &token, false).poll(Duration::ZERO) {
        Ok(counts) => QueueReading::Counts(counts),
        Err(error) => QueueReading::Unreachable(error.to_string()),
    }
}

impl fmt::Display for FleetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Stack {}: {}", self.stack, self.status)?;
        writeln!(f, "Fleet (pools in priority order):")?;
        for (name, pool) in &self.pools {
            match pool {
                Some(p) => writeln!(
                    f,
                    "  {name}: desired {} (min {}, max {}), {} instances, {} in service",
                    p.desired, p.min, p.max, p.instances, p.in_service
                )?,
                None => writeln!(f, "  {name}: missing")?,
            }
        }
        let endpoint = &self.endpoint;
        match &self.queue {
            QueueReading::Counts(q) => writeln!(
                f,
                "Queue ({endpoint}): {} queued, {} running; agents {} idle, {} busy",
                q.queued, q.running, q.idle, q.occupied
            )?,
            QueueReading::Unreachable(why) => {
                writeln!(f, "Queue ({endpoint}): unreachable from here ({why})")?
            }
            QueueReading::NoToken { parameter, reason } => writeln!(
                f,
                "Queue ({endpoint}): cannot read the token {parameter}: {reason}"
            )?,
            QueueReading::ServedHere => writeln!(
                f,
                "Queue ({endpoint}): served by this stack's hub instances"
            )?,
        }
        if !self.quotas.is_empty() {
            writeln!(f, "vCPU quotas at MaxSize:")?;
            for quota in &self.quotas {
                writeln!(f, "  {quota}")?;
            }
        }
        writeln!(f, "Recent scaling activity:")?;
        for a in &self.activities {
            writeln!(
                f,
                "  {}: {} {} — {}",
                a.group, a.started, a.status, a.description
            )?;
        }
        write!(f, "{}", Outputs(&self.outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::preflight::checks::Severity;

    #[test]
    fn a_fleet_status_prints_every_part() {
        let status = FleetStatus {
            stack: "gpu-fleet".into(),
            status: StackStatus::UpdateComplete,
            pools: vec![
                (
                    "gpu-fleet-agents".into(),
                    Some(Pool {
                        desired: 2,
                        min: 0,
                        max: 8,
                        instances: 2,
                        in_service: 1,
                    }),
                ),
                ("gpu-fleet-fallback".into(), None),
            ],
            endpoint: "https://org.semaphoreci.com".into(),
            queue: QueueReading::Counts(QueueSnapshot {
                queued: 3,
                running: 1,
                idle: 0,
                occupied: 1,
                ..QueueSnapshot::default()
            }),
            activities: vec![Activity {
                group: "gpu-fleet-agents".into(),
                started: "2024-05-01T10:00:00Z".into(),
                status: "Successful".into(),
                description: "Launching a new EC2 instance".into(),
            }],
            outputs: vec![("AgentGroupNames".into(), "gpu-fleet-agents".into())],
            fleet_parameters: BTreeMap::new(),
            quotas: vec![Finding::new(
                Severity::Info,
                "quotas",
                "Running On-Demand G and VT instances (L-DB2E81BA): 64 vCPUs; 8 × g6.xlarge (4 vCPUs) need 32 (headroom 32)",
                "",
            )],
        };
        assert!(status.healthy());
        let text = status.to_string();
        for line in [
            "Stack gpu-fleet: UPDATE_COMPLETE",
            "Fleet (pools in priority order):",
            "  gpu-fleet-agents: desired 2 (min 0, max 8), 2 instances, 1 in service",
            "  gpu-fleet-fallback: missing",
            "Queue (https://org.semaphoreci.com): 3 queued, 1 running; agents 0 idle, 1 busy",
            "vCPU quotas at MaxSize:",
            "  ok      quotas    Running On-Demand G and VT instances (L-DB2E81BA): 64 vCPUs; 8 × g6.xlarge (4 vCPUs) need 32 (headroom 32)",
            "  gpu-fleet-agents: 2024-05-01T10:00:00Z Successful — Launching a new EC2 instance",
            "Outputs:",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let unreachable = FleetStatus {
            status: StackStatus::UpdateRollbackComplete,
            queue: QueueReading::Unreachable("connection refused".into()),
            ..status
        };
        assert!(!unreachable.healthy());
        assert!(unreachable.to_string().contains(
            "Queue (https://org.semaphoreci.com): unreachable from here (connection refused)"
        ));
        let hub = FleetStatus {
            endpoint: "https://hub.example.com".into(),
            queue: QueueReading::ServedHere,
            ..unreachable
        };
        assert!(hub
            .to_string()
            .contains("Queue (https://hub.example.com): served by this stack's hub instances"));
    }
}
