//! The scaler's decisions and gauges as CloudWatch Embedded Metric Format (EMF) lines: one JSON
//! object per line whose `_aws` member tells CloudWatch Logs which of its fields are metrics, so
//! the log the scaler already ships becomes the stack's dashboard and alarms with no
//! `PutMetricData` call and no extra permission. Pure: what one loop round saw and did in, lines
//! out; the loop writes them to its [`Sink`].
//!
//! Per round, one line per fleet (dimension `AgentType`: queued and running jobs, the oldest
//! queued job's age, pools short of capacity, pools unhealthy after GPU faults, instances launched
//! and reaped, enqueue → raise time when the round raised) and one per pool (dimensions
//! `AgentType`, `Pool`: desired, in service, pending, short, faulty, recent faults). Names and
//! units follow the EMF specification (docs.aws.amazon.com, "Specification: Embedded metric
//! format").

use crate::policy::{PoolState, QueueSnapshot};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// The CloudWatch namespace of every Flotilla metric.
pub const NAMESPACE: &str = "Flotilla";

/// Where EMF lines go (a file the CloudWatch agent ships, or any writer in tests).
pub type Sink = Arc<Mutex<dyn Write + Send>>;

/// What one round of a fleet's loop saw and did.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    pub agent_type: &'a str,
    /// Unix milliseconds.
    pub timestamp_ms: i64,
    pub queue: &'a QueueSnapshot,
    pub pools: &'a [PoolState],
    /// Instances added by this round's raises (new desired minus old, summed).
    pub launches: u64,
    /// Instances the reaper terminated this round.
    pub reaps: u64,
    /// Enqueue → raise time when this round raised (milliseconds).
    pub reaction_ms: Option<f64>,
}

/// One metric: name, CloudWatch unit, value.
type Metric = (&'static str, &'static str, f64);

/// One EMF object: `dimensions` (name, value) and `metrics`, at `timestamp_ms`.
fn line(timestamp_ms: i64, dimensions: &[(&str, &str)], metrics: &[Metric]) -> String {
    let names: Vec<&str> = dimensions.iter().map(|(name, _)| *name).collect();
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, unit, _)| json!({ "Name": name, "Unit": unit }))
        .collect();
    let mut object = Map::new();
    object.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [names],
                "Metrics": definitions,
            }],
        }),
    );
    for (name, value) in dimensions {
        object.insert((*name).into(), json!(value));
    }
    for (name, _, value) in metrics {
        object.insert((*name).into(), json!(value));
    }
    Value::Object(object).to_string()
}

/// The round's EMF lines: the fleet's, then one per pool.
pub fn lines(round: &Round) -> Vec<String> {
    let queue = round.queue;
    let short = round.pools.iter().filter(|pool| pool.short).count();
    let faulty = round
        .pools
        .iter()
        .filter(|pool| pool.health.unhealthy.is_some())
        .count();
    let mut fleet: Vec<Metric> = vec![
        ("Queued", "Count", queue.queued.into()),
        ("Running", "Count", queue.running.into()),
        ("IdleAgents", "Count", queue.idle.into()),
        (
            "OldestQueuedSeconds",
            "Seconds",
            queue.oldest_queued_seconds.unwrap_or(0) as f64,
        ),
        ("Desired", "Count", sum(round.pools, |p| p.desired)),
        ("InService", "Count", sum(round.pools, |p| p.in_service)),
        ("PoolsShort", "Count", short as f64),
        ("PoolsFaulty", "Count", faulty as f64),
        ("Launches", "Count", round.launches as f64),
        ("Reaps", "Count", round.reaps as f64),
    ];
    if let Some(reaction) = round.reaction_ms {
        fleet.push(("EnqueueToRaise", "Milliseconds", reaction));
    }
    let dimensions = [("AgentType", round.agent_type)];
    let mut lines = vec![line(round.timestamp_ms, &dimensions, &fleet)];
    for pool in round.pools {
        let dimensions = [
            ("AgentType", round.agent_type),
            ("Pool", pool.name.as_str()),
        ];
        let faulty = pool.health.unhealthy.is_some();
        let metrics: [Metric; 6] = [
            ("Desired", "Count", pool.desired.into()),
            ("InService", "Count", pool.in_service.into()),
            ("Pending", "Count", pool.pending.into()),
            ("Short", "Count", if pool.short { 1.0 } else { 0.0 }),
            ("Faulty", "Count", if faulty { 1.0 } else { 0.0 }),
            ("RecentFaults", "Count", pool.health.recent_faults.into()),
        ];
        lines.push(line(round.timestamp_ms, &dimensions, &metrics));
    }
    lines
}

fn sum(pools: &[PoolState], value: fn(&PoolState) -> u32) -> f64 {
    pools.iter().map(|pool| f64::from(value(pool))).sum()
}

/// Instances a round's raises add: each pool's new desired minus its old one.
pub fn launches(pools: &[PoolState], raises: &[(String, u32)]) -> u64 {
    raises
        .iter()
        .map(|(name, desired)| {
            let before = pools
                .iter()
                .find(|pool| &pool.name == name)
                .map_or(0, |pool| pool.desired);
            u64::from(desired.saturating_sub(before))
        })
        .sum()
}

/// Writes the round's lines to `sink`; a failed write is logged, never fatal.
pub fn write(sink: &Sink, round: &Round) {
    let mut out = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut text = lines(round).join("\n");
    text.push('\n');
    if let Err(error) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!(%error, "writing EMF metrics failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool_health::{PoolHealth, Unhealthy};

    fn pool(name: &str, desired: u32, short: bool) -> PoolState {
        PoolState {
            name: name.into(),
            desired,
            min: 0,
            max: 10,
            in_service: desired,
            pending: 0,
            short,
            health: PoolHealth::default(),
            warm_pool: None,
        }
    }

    #[test]
    fn launches_count_what_each_raise_adds() {
        let pools = [pool("spot", 2, false), pool("on-demand", 0, false)];
        let raises = [("spot".to_string(), 5), ("on-demand".to_string(), 1)];
        assert_eq!(launches(&pools, &raises), 4);
        assert_eq!(launches(&pools, &[]), 0);
    }

    #[test]
    fn a_round_is_one_fleet_line_and_one_line_per_pool() {
        let queue = QueueSnapshot {
            queued: 3,
            oldest_queued_seconds: Some(42),
            ..QueueSnapshot::default()
        };
        let mut pools = [pool("spot", 2, true), pool("on-demand", 1, false)];
        pools[1].health = PoolHealth {
            recent_faults: 3,
            unhealthy: Some(Unhealthy {
                until_unix: 1_700_001_800,
                reason: "3 GPU faults in 30 min".into(),
            }),
        };
        let round = Round {
            agent_type: "gpu",
            timestamp_ms: 1_700_000_000_000,
            queue: &queue,
            pools: &pools,
            launches: 1,
            reaps: 0,
            reaction_ms: Some(0.5),
        };
        let lines: Vec<Value> = lines(&round)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["PoolsShort"], 1.0);
        assert_eq!(lines[0]["OldestQueuedSeconds"], 42.0);
        assert_eq!(lines[0]["EnqueueToRaise"], 0.5);
        assert_eq!(lines[2]["Pool"], "on-demand");
        assert_eq!(lines[1]["Short"], 1.0);
        assert_eq!(lines[0]["PoolsFaulty"], 1.0);
        assert_eq!(
            (&lines[1]["Faulty"], &lines[1]["RecentFaults"]),
            (&json!(0.0), &json!(0.0)),
            "the short pool has no faults"
        );
        assert_eq!(
            (&lines[2]["Faulty"], &lines[2]["RecentFaults"]),
            (&json!(1.0), &json!(3.0))
        );
    }
}
