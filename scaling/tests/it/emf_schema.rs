//! The scaler's CloudWatch EMF lines checked against the Embedded Metric Format specification
//! (docs.aws.amazon.com, "Specification: Embedded metric format"), written out here as checks:
//! a root object with `_aws` {`Timestamp` (ms), `CloudWatchMetrics` [directives]}; each directive
//! with a non-blank `Namespace` (≤ 255), `Dimensions` as sets of ≤ 30 names, `Metrics` (≤ 100)
//! with a `Name` (1-1024) and an allowed `Unit`; every dimension naming a string member of the
//! root, every metric a number (or array of ≤ 100 numbers). The lines come from a real
//! `FleetLoop` round over a fleet of two pools, one short of capacity.

use scaling::control::FleetLoop;
use scaling::emf::{Sink, NAMESPACE};
use scaling::fleet::{Fleet, FleetError};
use scaling::policy::{PolicyConfig, PoolState, QueueSnapshot};
use scaling::pool_health::PoolHealth;
use scaling::queue::{Queue, QueueError};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Every way `line` breaks the EMF specification (empty: valid).
fn violations(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(root) = serde_json::from_str::<Value>(line) else {
        return vec!["not a JSON object".into()];
    };
    let aws = &root["_aws"];
    if aws["Timestamp"]
        .as_i64()
        .is_none_or(|t| t <= 1_000_000_000_000)
    {
        found.push("_aws.Timestamp is not Unix milliseconds".into());
    }
    let Some(directives) = aws["CloudWatchMetrics"].as_array() else {
        return vec!["_aws.CloudWatchMetrics is not an array".into()];
    };
    for directive in directives {
        let namespace = directive["Namespace"].as_str().unwrap_or("");
        if namespace.trim().is_empty() || namespace.len() > 255 {
            found.push(format!("bad Namespace {namespace:?}"));
        }
        for set in directive["Dimensions"].as_array().into_iter().flatten() {
            let names = set.as_array().cloned().unwrap_or_default();
            if names.len() > 30 {
                found.push("a dimension set of more than 30".into());
            }
            for name in names {
                let value = name.as_str().map(|name| &root[name]);
                if !value
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty() && v.len() <= 1024)
                {
                    found.push(format!("dimension {name} is not a string member"));
                }
            }
        }
        let metrics = directive["Metrics"].as_array().cloned().unwrap_or_default();
        if metrics.is_empty() || metrics.len() > 100 {
            found.push(format!("{} metrics in a directive", metrics.len()));
        }
        for metric in metrics {
            let name = metric["Name"].as_str().unwrap_or("");
            if name.is_empty() || name.len() > 1024 {
                found.push(format!("bad metric Name {name:?}"));
            }
            if let Some(unit) = metric.get("Unit") {
                if !unit.as_str().is_some_and(|unit| UNITS.contains(&unit)) {
                    found.push(format!("metric {name}: unit {unit} is not an EMF unit"));
                }
            }
            let value = &root[name];
            let numbers = value.as_array().map_or(value.is_number(), |values| {
                values.len() <= 100 && values.iter().all(Value::is_number)
            });
            if !numbers {
                found.push(format!("metric {name} is not a number member"));
            }
        }
    }
    found
}

struct FixedQueue;

impl Queue for FixedQueue {
    fn poll(&mut self, _wait: Duration) -> Result<QueueSnapshot, QueueError> {
        Ok(QueueSnapshot {
            queued: 4,
            running: 1,
            oldest_queued_seconds: Some(90),
            ..QueueSnapshot::default()
        })
    }
}

/// Two pools, the first short of capacity.
struct TwoPools {
    desired: [u32; 2],
}

impl Fleet for TwoPools {
    fn describe(&mut self) -> Result<Vec<PoolState>, FleetError> {
        let pool = |index: usize, name: &str| PoolState {
            name: name.into(),
            desired: self.desired[index],
            min: 0,
            max: 10,
            in_service: self.desired[index],
            pending: 0,
            short: index == 0,
            health: PoolHealth::default(),
            warm_pool: None,
        };
        Ok(vec![pool(0, "gpu-spot"), pool(1, "gpu-on-demand")])
    }

    fn raise_desired(&mut self, pool: &str, desired: u32) -> Result<(), FleetError> {
        let index = usize::from(pool == "gpu-on-demand");
        self.desired[index] = desired;
        Ok(())
    }

    fn terminate(&mut self, _instance: &str, _decrement: bool) -> Result<(), FleetError> {
        Ok(())
    }
}

#[test]
fn a_loop_rounds_emf_lines_follow_the_specification_with_the_right_dimensions() {
    let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink: Sink = buffer.clone();
    let fleet = TwoPools { desired: [0, 0] };
    let mut fleet_loop = FleetLoop::new(
        "gpu",
        Box::new(FixedQueue),
        Box::new(fleet),
        PolicyConfig::default(),
        false,
        Duration::ZERO,
    );
    fleet_loop.emf = Some(sink);
    fleet_loop.tick_at(1_000, 1_700_000_000);
    let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a fleet line and one per pool:\n{text}");
    for line in &lines {
        assert_eq!(violations(line), Vec::<String>::new(), "{line}");
    }
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let directive = |line: &Value| line["_aws"]["CloudWatchMetrics"][0].clone();
    assert_eq!(directive(&parsed[0])["Namespace"], NAMESPACE);
    assert_eq!(
        directive(&parsed[0])["Dimensions"],
        serde_json::json!([["AgentType"]])
    );
    assert_eq!(parsed[0]["AgentType"], "gpu");
    assert_eq!(parsed[0]["_aws"]["Timestamp"], 1_700_000_000_000_i64);
    assert_eq!(parsed[0]["Queued"], 4.0);
    assert_eq!(parsed[0]["OldestQueuedSeconds"], 90.0);
    assert_eq!(parsed[0]["PoolsShort"], 1.0);
    assert_eq!(parsed[0]["PoolsFaulty"], 0.0);
    assert!(
        parsed[0]["Launches"].as_f64().unwrap() >= 1.0,
        "the round raised: {text}"
    );
    assert!(parsed[0]["EnqueueToRaise"].is_number());
    for (line, pool, short) in [
        (&parsed[1], "gpu-spot", 1.0),
        (&parsed[2], "gpu-on-demand", 0.0),
    ] {
        assert_eq!(
            directive(line)["Dimensions"],
            serde_json::json!([["AgentType", "Pool"]])
        );
        assert_eq!(
            (line["AgentType"].as_str(), line["Pool"].as_str()),
            (Some("gpu"), Some(pool))
        );
        assert_eq!(line["Short"], short);
        assert_eq!(
            (&line["Faulty"], &line["RecentFaults"]),
            (&0.0.into(), &0.0.into())
        );
    }
}

#[test]
fn the_checks_catch_what_the_specification_forbids() {
    let cases = [
        ("{}", "_aws.CloudWatchMetrics is not an array"),
        (
            r#"{"_aws":{"Timestamp":1700000000000,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["Missing"]],"Metrics":[{"Name":"M","Unit":"Count"}]}]},"M":1}"#,
            "dimension \"Missing\" is not a string member",
        ),
        (
            r#"{"_aws":{"Timestamp":1700000000000,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[],"Metrics":[{"Name":"M","Unit":"Furlongs"}]}]},"M":1}"#,
            "metric M: unit \"Furlongs\" is not an EMF unit",
        ),
        (
            r#"{"_aws":{"Timestamp":1700000000,"CloudWatchMetrics":[{"Namespace":" ","Dimensions":[],"Metrics":[{"Name":"M"}]}]},"M":"1"}"#,
            "metric M is not a number member",
        ),
    ];
    for (line, expected) in cases {
        let found = violations(line);
        assert!(found.iter().any(|v| v == expected), "{line}: {found:?}");
    }
}
