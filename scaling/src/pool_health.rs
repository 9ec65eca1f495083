//! Pool health (issue 29, "GPU fleet health"). An agent that finds its instance's GPUs broken (the
//! health gate at boot, or an Xid error during a job) tags the instance [`FAULT_TAG`] and removes
//! it. One fault is one bad host; several in one pool within minutes mean the pool itself is bad
//! for now (a bad batch of hosts, a driver that does not suit the hardware, a zone in trouble), and
//! new instances there would fault too. This module decides, from the fault records and the time,
//! which pools are unhealthy and until when, so the policy passes them over for a cool-off as it
//! does a pool short of capacity. Pure: records and `now` in, no clock read.

use crate::policy::PoolState;
use thiserror::Error;

/// The EC2 tag an agent puts on its instance before removing it for a hardware fault:
/// `<unix seconds> <kind>: <detail>`, e.g. `1765152000 gpu-gate: 3 of 4 GPUs visible`.
pub const FAULT_TAG: &str = "flotilla:fault";

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The GPU health gate at boot.
    GpuGate,
    /// An Xid error reported by the driver during a job.
    Xid,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::GpuGate => "gpu-gate",
            FaultKind::Xid => "xid",
        }
    }
}

/// One instance removed for a hardware fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    /// The capacity pool (Auto Scaling group) the instance was in.
    pub pool: String,
    /// When the agent saw the fault, Unix seconds.
    pub at_unix: i64,
    pub kind: FaultKind,
    pub detail: String,
}

/// Why a [`FAULT_TAG`] value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FaultTagError {
    #[error("fault tag '{0}' is not '<unix seconds> <kind>: <detail>'")]
    Shape(String),
    #[error("fault tag '{value}': '{time}' is not a time in Unix seconds")]
    Time { value: String, time: String },
    #[error("fault tag '{value}': unknown kind '{kind}' (gpu-gate or xid)")]
    Kind { value: String, kind: String },
}

impl FaultRecord {
    /// Reads a [`FAULT_TAG`] value of an instance of `pool`.
    pub fn parse_tag(pool: &str, value: &str) -> Result<FaultRecord, FaultTagError> {
        let shape = || FaultTagError::Shape(value.to_string());
        let (time, rest) = value.trim().split_once(' ').ok_or_else(shape)?;
        let (kind, detail) = rest.split_once(':').ok_or_else(shape)?;
        let at_unix = time
            .parse::<i64>()
            .ok()
            .filter(|at| *at > 0)
            .ok_or_else(|| FaultTagError::Time {
                value: value.to_string(),
                time: time.to_string(),
            })?;
        let kind = match kind.trim() {
            "gpu-gate" => FaultKind::GpuGate,
            "xid" => FaultKind::Xid,
            other => {
                return Err(FaultTagError::Kind {
                    value: value.to_string(),
                    kind: other.to_string(),
                })
            }
        };
        Ok(FaultRecord {
            pool: pool.to_string(),
            at_unix,
            kind,
            detail: detail.trim().to_string(),
        })
    }

    /// The record as a [`FAULT_TAG`] value (what an agent writes).
    pub fn tag_value(&self) -> String {
        format!("{} {}: {}", self.at_unix, self.kind.as_str(), self.detail)
    }
}

/// When a pool counts as unhealthy. The defaults, 2 faults within 30 minutes → 30 minutes off:
/// one fault is a bad host, which the agent already took out of the fleet; a second in the same
/// pool within half an hour points at the pool. Half an hour off moves work elsewhere long enough
/// for a bad batch of hosts to be retired, and brings the pool (usually the cheaper, preferred
/// one) back the same hour. Window plus cool-off (1 hour) is also about how long EC2 still lists
/// terminated instances with their tags, where the AWS fleet reads the records from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Faults within the window that make a pool unhealthy (0: never).
    pub faults: u32,
    pub window_minutes: u32,
    /// How long the pool stays unhealthy after the fault that tipped it.
    pub cool_off_minutes: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            faults: 2,
            window_minutes: 30,
            cool_off_minutes: 30,
        }
    }
}

impl HealthConfig {
    fn window_s(&self) -> i64 {
        i64::from(self.window_minutes) * 60
    }

    fn cool_off_s(&self) -> i64 {
        i64::from(self.cool_off_minutes) * 60
    }

    /// How long a record can matter: records older than this may be forgotten.
    pub fn horizon_s(&self) -> i64 {
        self.window_s() + self.cool_off_s()
    }
}

/// A pool's health as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolHealth {
    /// Faults recorded in the pool within the window before now.
    pub recent_faults: u32,
    /// Set while the pool cools off: the policy passes it over like a pool short of capacity.
    pub unhealthy: Option<Unhealthy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    /// Unix seconds when the cool-off ends.
    pub until_unix: i64,
    /// For the decision log: "2 GPU faults in 30 min: xid: Xid 79 ..., gpu-gate: ...; 25 min
    /// of cool-off left".
    pub reason: String,
}

/// Faults listed in a reason; the rest are counted.
const LISTED: usize = 3;

/// The health of `pool` at `now_unix` from `records` (any pools', any order). A record from the
/// future (an agent's clock ahead of ours) counts as made now.
pub fn assess(
    records: &[FaultRecord],
    pool: &str,
    now_unix: i64,
    config: &HealthConfig,
) -> PoolHealth {
    let at = |record: &FaultRecord| record.at_unix.min(now_unix);
    let mut faults: Vec<&FaultRecord> = records.iter().filter(|r| r.pool == pool).collect();
    faults.sort_by_key(|r| at(r));
    let window = config.window_s();
    let recent_faults = faults.iter().filter(|r| now_unix - at(r) < window).count();
    let needed = config.faults as usize;
    // The newest fault that completed `needed` within a window is the one whose cool-off ends last.
    let tipped = (needed > 0 && faults.len() >= needed)
        .then(|| {
            (needed - 1..faults.len())
                .rev()
                .find(|&last| at(faults[last]) - at(faults[last + 1 - needed]) < window)
        })
        .flatten()
        .filter(|&last| now_unix < at(faults[last]) + config.cool_off_s());
    let unhealthy = tipped.map(|last| {
        let tipping_at = at(faults[last]);
        let in_window: Vec<&FaultRecord> = faults[..=last]
            .iter()
            .copied()
            .filter(|r| tipping_at - at(r) < window)
            .collect();
        let until_unix = tipping_at + config.cool_off_s();
        Unhealthy {
            until_unix,
            reason: reason(&in_window, config, until_unix - now_unix),
        }
    });
    PoolHealth {
        recent_faults: u32::try_from(recent_faults).unwrap_or(u32::MAX),
        unhealthy,
    }
}

/// "2 GPU faults in 30 min: xid: ..., gpu-gate: ...; 25 min of cool-off left".
fn reason(faults: &[&FaultRecord], config: &HealthConfig, left_s: i64) -> String {
    let mut listed: Vec<String> = faults
        .iter()
        .take(LISTED)
        .map(|r| format!("{}: {}", r.kind.as_str(), r.detail))
        .collect();
    if faults.len() > LISTED {
        listed.push(format!("{} more", faults.len() - LISTED));
    }
    let left_minutes = (left_s + 59) / 60;
    let plural = if faults.len() == 1 { "" } else { "s" };
    format!(
        "{} GPU fault{plural} in {} min: {}; {left_minutes} min of cool-off left",
        faults.len(),
        config.window_minutes,
        listed.join(", ")
    )
}

/// Sets the health of each of `pools` from `records` at `now_unix`.
pub fn apply(
    pools: &mut [PoolState],
    records: &[FaultRecord],
    now_unix: i64,
    config: &HealthConfig,
) {
    for pool in pools {
        pool.health = assess(records, &pool.name, now_unix, config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_765_152_000;

    fn fault(pool: &str, minutes_ago: i64, kind: FaultKind, detail: &str) -> FaultRecord {
        FaultRecord {
            pool: pool.into(),
            at_unix: NOW - minutes_ago * 60,
            kind,
            detail: detail.into(),
        }
    }

    fn xid(minutes_ago: i64) -> FaultRecord {
        fault("spot", minutes_ago, FaultKind::Xid, "Xid 79")
    }

    fn gate(minutes_ago: i64) -> FaultRecord {
        fault(
            "spot",
            minutes_ago,
            FaultKind::GpuGate,
            "3 of 4 GPUs visible",
        )
    }

    /// What a row expects: recent faults, and minutes of cool-off left (None: healthy).
    #[derive(Debug, PartialEq)]
    struct Expected {
        recent: u32,
        left_minutes: Option<i64>,
    }

    fn expect(recent: u32, left_minutes: Option<i64>) -> Expected {
        Expected {
            recent,
            left_minutes,
        }
    }

    struct Row {
        name: &'static str,
        records: Vec<FaultRecord>,
        config: HealthConfig,
        expected: Expected,
    }

    fn row(name: &'static str, records: Vec<FaultRecord>, expected: Expected) -> Row {
        Row {
            name,
            records,
            config: HealthConfig::default(),
            expected,
        }
    }

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per scenario, read top to bottom
    fn health_table() {
        let strict = HealthConfig {
            faults: 3,
            window_minutes: 10,
            cool_off_minutes: 60,
        };
        let off = HealthConfig {
            faults: 0,
            ..HealthConfig::default()
        };
        let rows = vec![
            row("no faults", vec![], expect(0, None)),
            row("one fault is a bad host", vec![xid(1)], expect(1, None)),
            row(
                "two within the window: unhealthy from the second",
                vec![xid(10), gate(5)],
                expect(2, Some(25)),
            ),
            row(
                "order does not matter",
                vec![gate(5), xid(10)],
                expect(2, Some(25)),
            ),
            row(
                "two exactly a window apart are not within it",
                vec![xid(40), gate(10)],
                expect(1, None),
            ),
            row(
                "the cool-off counts from the tipping fault, not from now",
                vec![xid(50), gate(29)],
                expect(1, Some(1)),
            ),
            row(
                "a cool-off that is over",
                vec![xid(45), gate(31)],
                expect(0, None),
            ),
            row(
                "a later fault extends the cool-off",
                vec![xid(45), gate(31), xid(2)],
                expect(1, Some(28)),
            ),
            row(
                "another pool's faults do not count",
                vec![xid(3), fault("ondemand", 2, FaultKind::Xid, "Xid 48")],
                expect(1, None),
            ),
            row(
                "a record from the future counts as now",
                vec![xid(3), xid(-5)],
                expect(2, Some(30)),
            ),
            Row {
                name: "three in ten minutes, an hour off",
                records: vec![xid(9), xid(5), gate(1)],
                config: strict,
                expected: expect(3, Some(59)),
            },
            Row {
                name: "three, but not within ten minutes",
                records: vec![xid(12), xid(5), gate(1)],
                config: strict,
                expected: expect(2, None),
            },
            Row {
                name: "faults: 0 turns it off",
                records: vec![xid(3), xid(2), xid(1)],
                config: off,
                expected: expect(3, None),
            },
        ];
        for Row {
            name,
            records,
            config,
            expected,
        } in rows
        {
            let health = assess(&records, "spot", NOW, &config);
            let left = health
                .unhealthy
                .as_ref()
                .map(|u| (u.until_unix - NOW + 59) / 60);
            assert_eq!(
                expect(health.recent_faults, left),
                expected,
                "{name}: {health:?}"
            );
        }
    }

    #[test]
    fn the_reason_names_the_faults_and_the_cool_off() {
        let health = assess(&[xid(10), gate(5)], "spot", NOW, &HealthConfig::default());
        let reason = health.unhealthy.map(|u| u.reason).unwrap_or_default();
        assert_eq!(
            reason,
            "2 GPU faults in 30 min: xid: Xid 79, gpu-gate: 3 of 4 GPUs visible; 25 min of cool-off left"
        );
        let many: Vec<FaultRecord> = (1..=5).map(xid).collect();
        let health = assess(&many, "spot", NOW, &HealthConfig::default());
        let reason = health.unhealthy.map(|u| u.reason).unwrap_or_default();
        assert!(
            reason.starts_with(
                "5 GPU faults in 30 min: xid: Xid 79, xid: Xid 79, xid: Xid 79, 2 more;"
            ),
            "{reason}"
        );
    }

    #[test]
    fn tag_values_parse_and_round_trip() {
        let record = FaultRecord::parse_tag(
            "gpu-spot",
            "1765152000 xid: Xid 79 on PCI 0000:00:1e.0 (GPU has fallen off the bus)",
        );
        let expected = FaultRecord {
            pool: "gpu-spot".into(),
            at_unix: 1_765_152_000,
            kind: FaultKind::Xid,
            detail: "Xid 79 on PCI 0000:00:1e.0 (GPU has fallen off the bus)".into(),
        };
        assert_eq!(record, Ok(expected.clone()));
        assert_eq!(
            FaultRecord::parse_tag("gpu-spot", &expected.tag_value()),
            Ok(expected)
        );
        let gate = FaultRecord::parse_tag("p", "1765152000 gpu-gate: 3 of 4 GPUs visible");
        assert_eq!(
            gate.map(|r| (r.kind, r.detail)),
            Ok((FaultKind::GpuGate, "3 of 4 GPUs visible".into()))
        );
    }

    #[test]
    fn malformed_tag_values_are_errors_not_panics() {
        let table = [
            ("", "is not '<unix seconds>"),
            ("1765152000", "is not '<unix seconds>"),
            ("1765152000 xid Xid 79", "is not '<unix seconds>"),
            ("yesterday xid: Xid 79", "'yesterday' is not a time"),
            ("-5 xid: Xid 79", "'-5' is not a time"),
            ("99999999999999999999 xid: x", "is not a time"),
            ("1765152000 ecc: double-bit", "unknown kind 'ecc'"),
            ("1765152000 : nothing", "unknown kind ''"),
        ];
        for (value, expected) in table {
            let error = FaultRecord::parse_tag("p", value)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(expected), "{value:?}: {error:?}");
        }
    }

    #[test]
    fn apply_sets_each_pools_health() {
        let pool = |name: &str| PoolState {
            name: name.into(),
            desired: 0,
            min: 0,
            max: 4,
            in_service: 0,
            pending: 0,
            short: false,
            health: PoolHealth::default(),
            warm_pool: None,
        };
        let mut pools = vec![pool("spot"), pool("ondemand")];
        apply(
            &mut pools,
            &[xid(10), gate(5)],
            NOW,
            &HealthConfig::default(),
        );
        assert!(pools[0].health.unhealthy.is_some());
        assert_eq!(pools[1].health, PoolHealth::default());
    }
}
