//! Queue metrics (`GET /api/v1/self_hosted_agents/metrics`) in Semaphore's shape, scoped to the
//! agent type whose registration token asks. Flotilla's extensions are extra fields that
//! Semaphore's clients ignore.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct QueueMetrics {
    pub jobs: JobCounts,
    pub agents: AgentCounts,
    /// Extension: changes whenever any count changes (for long-polling with `?wait=&version=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Extension: seconds the oldest queued job has waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_queued_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct JobCounts {
    pub queued: u64,
    pub running: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AgentCounts {
    pub idle: u64,
    pub occupied: u64,
}

/// Extension (`GET /api/v1/self_hosted_agents/agents`, registration token): the agent type's
/// registered agents, so a scaler's reaper can match instances to agents by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AgentList {
    pub agents: Vec<AgentSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AgentSummary {
    pub name: String,
    /// Whether the agent holds a job (assigned, starting, running or stopping).
    pub busy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semaphore_shape_round_trips_and_extensions_are_optional() {
        let literal = r#"{"jobs":{"queued":3,"running":2},"agents":{"idle":1,"occupied":2}}"#;
        let metrics: QueueMetrics = serde_json::from_str(literal).unwrap();
        assert_eq!(metrics.jobs.queued, 3);
        assert_eq!(metrics.agents.occupied, 2);
        assert_eq!(serde_json::to_string(&metrics).unwrap(), literal);
        let extended = QueueMetrics {
            version: Some(7),
            ..metrics
        };
        let text = serde_json::to_string(&extended).unwrap();
        assert!(text.ends_with(r#","version":7}"#), "{text}");
    }
}
