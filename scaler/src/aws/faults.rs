//! The AWS fleet's memory of GPU faults (issue 29). Agents tag an instance `flotilla:fault` before
//! removing it; the fleet reads those tags each round (one `DescribeInstances` for all groups) and
//! keeps what it read here, because EC2 lists a terminated instance for only about an hour and the
//! pool health decision ([`scaling::pool_health`]) needs a window plus a cool-off of records. A
//! faulted instance belongs to the group its `aws:autoscaling:groupName` tag names, or else to the
//! group the scaler last saw it in (moto drops that tag on termination; AWS may too). Unreadable
//! tags are logged once and ignored. Pure bookkeeping: the caller passes the time and the tags.

use scaling::pool_health::{FaultRecord, HealthConfig};
use std::collections::HashMap;

/// The tag EC2 Auto Scaling puts on a group's instances.
pub(crate) const GROUP_TAG: &str = "aws:autoscaling:groupName";

/// Where and when an instance was last seen in one of the fleet's groups.
struct Sighting {
    group: String,
    at_unix: i64,
}

/// An instance carrying a fault tag, as `DescribeInstances` lists it.
pub(crate) struct TaggedInstance<'a> {
    pub(crate) id: &'a str,
    /// Its `aws:autoscaling:groupName` tag, if it still has one.
    pub(crate) group_tag: Option<&'a str>,
    /// Its `flotilla:fault` tag.
    pub(crate) fault_tag: &'a str,
}

pub(crate) struct FaultLog {
    /// How long a record can matter (window plus cool-off), seconds.
    horizon_s: i64,
    /// Fault records read so far, by instance id.
    records: HashMap<String, FaultRecord>,
    /// Instance id → the group it was last seen in.
    sightings: HashMap<String, Sighting>,
    /// Instances whose fault tag could not be read (logged once), and when it was read.
    unreadable: HashMap<String, i64>,
}

impl FaultLog {
    pub(crate) fn new(config: &HealthConfig) -> FaultLog {
        FaultLog {
            horizon_s: config.horizon_s(),
            records: HashMap::new(),
            sightings: HashMap::new(),
            unreadable: HashMap::new(),
        }
    }

    /// Remembers that `id` is in `group` at `now_unix`.
    pub(crate) fn saw(&mut self, id: &str, group: &str, now_unix: i64) {
        self.sightings.insert(
            id.to_string(),
            Sighting {
                group: group.to_string(),
                at_unix: now_unix,
            },
        );
    }

    /// Records an instance's fault tag, read at `now_unix`, if it is readable, recent enough to
    /// matter and the instance was in one of `groups`. One that cannot be placed now is looked at
    /// again next time.
    pub(crate) fn note(&mut self, instance: &TaggedInstance, groups: &[String], now_unix: i64) {
        if self.records.contains_key(instance.id) || self.unreadable.contains_key(instance.id) {
            return;
        }
        let ours = |group: &str| groups.iter().any(|g| g == group);
        let group = match instance.group_tag {
            Some(tag) if ours(tag) => Some(tag),
            // Another fleet's instance: none of ours.
            Some(_) => None,
            None => self
                .sightings
                .get(instance.id)
                .map(|s| s.group.as_str())
                .filter(|group| ours(group)),
        };
        let Some(group) = group else {
            return;
        };
        match FaultRecord::parse_tag(group, instance.fault_tag) {
            Ok(record) if record.at_unix < now_unix - self.horizon_s => {}
            Ok(record) => {
                tracing::warn!(instance = instance.id, pool = group, fault = %instance.fault_tag, "instance removed for a GPU fault");
                self.records.insert(instance.id.to_string(), record);
            }
            Err(error) => {
                tracing::warn!(instance = instance.id, pool = group, %error, "ignoring an unreadable fault tag");
                self.unreadable.insert(instance.id.to_string(), now_unix);
            }
        }
    }

    /// Forgets what can no longer matter at `now_unix` (older than window plus cool-off).
    pub(crate) fn prune(&mut self, now_unix: i64) {
        let oldest = now_unix - self.horizon_s;
        self.records.retain(|_, record| record.at_unix >= oldest);
        self.sightings
            .retain(|_, sighting| sighting.at_unix >= oldest);
        self.unreadable.retain(|_, read_at| *read_at >= oldest);
    }

    pub(crate) fn records(&self) -> Vec<FaultRecord> {
        self.records.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_765_152_000;

    fn groups() -> Vec<String> {
        vec!["gpu-spot".into(), "gpu-ondemand".into()]
    }

    fn tagged<'a>(
        id: &'a str,
        group_tag: Option<&'a str>,
        fault_tag: &'a str,
    ) -> TaggedInstance<'a> {
        TaggedInstance {
            id,
            group_tag,
            fault_tag,
        }
    }

    #[test]
    fn faults_are_placed_by_group_tag_or_by_sighting() {
        let mut log = FaultLog::new(&HealthConfig::default());
        log.saw("i-seen", "gpu-ondemand", NOW - 60);
        log.saw("i-elsewhere", "gpu-spot", NOW - 60);
        let value = format!("{} xid: Xid 79", NOW - 30);
        for instance in [
            tagged("i-tagged", Some("gpu-spot"), &value),
            tagged("i-seen", None, &value),
            // Another fleet's group, even if seen in ours before (the tag wins).
            tagged("i-elsewhere", Some("other-fleet"), &value),
            // Never seen, no tag: cannot be placed.
            tagged("i-unknown", None, &value),
            tagged("i-garbled", Some("gpu-spot"), "soon xid: ?"),
        ] {
            log.note(&instance, &groups(), NOW);
        }
        let mut placed: Vec<(String, i64)> = log
            .records()
            .into_iter()
            .map(|r| (r.pool, r.at_unix))
            .collect();
        placed.sort();
        assert_eq!(
            placed,
            vec![
                ("gpu-ondemand".to_string(), NOW - 30),
                ("gpu-spot".to_string(), NOW - 30)
            ]
        );
        // One that could not be placed is placed once it has been seen in a group.
        log.saw("i-unknown", "gpu-spot", NOW);
        log.note(&tagged("i-unknown", None, &value), &groups(), NOW);
        assert_eq!(log.records().len(), 3);
    }

    #[test]
    fn records_outlive_the_instance_listing_until_the_horizon() {
        let config = HealthConfig::default();
        let mut log = FaultLog::new(&config);
        let value = format!("{NOW} gpu-gate: 3 of 4 GPUs visible");
        log.note(&tagged("i-1", Some("gpu-spot"), &value), &groups(), NOW);
        // Later rounds no longer list it: the record stays within window + cool-off ...
        log.prune(NOW + config.horizon_s());
        assert_eq!(log.records().len(), 1);
        // ... and goes after.
        let later = NOW + config.horizon_s() + 1;
        log.prune(later);
        assert!(log.records().is_empty());
        // A tag that old, still listed, is not taken up again.
        log.note(&tagged("i-1", Some("gpu-spot"), &value), &groups(), later);
        assert!(log.records().is_empty());
    }
}
