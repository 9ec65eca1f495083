//! The reaper decides, as a pure function, which instances are stuck: in service past the boot
//! deadline with no agent registered under their name (the instance id), or past the maximum
//! lifetime. It is two-phase: a pass first marks an instance (a tag that survives scaler restarts);
//! a later pass that still finds it stuck, at least `confirm_after` after the mark, terminates it
//! with decrement. An instance whose agent holds a job is left alone (and loses a stale mark) until
//! it passes the maximum lifetime: that is a hard cap, so a job that never ends (`sleep infinity`
//! on a GPU machine) cannot hold its instance forever.

use protocol::metrics::AgentSummary;

/// The tag that carries a mark: `<reason>@<unix seconds>`.
pub const MARK_TAG: &str = "flotilla:reap";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaperConfig {
    /// An in-service instance with no registered agent this long after launch is stuck.
    pub boot_deadline_seconds: u64,
    /// Instances older than this are retired, busy or not: a hard cap (0 = no limit).
    pub max_lifetime_seconds: u64,
    /// Time between passes; also the least time between a mark and the termination it confirms.
    pub interval_seconds: u64,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        ReaperConfig {
            boot_deadline_seconds: 900,
            max_lifetime_seconds: 0,
            interval_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapReason {
    NoAgent,
    Lifetime,
}

impl ReapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReapReason::NoAgent => "no-agent",
            ReapReason::Lifetime => "lifetime",
        }
    }
}

impl std::fmt::Display for ReapReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mark as stored in [`MARK_TAG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub reason: ReapReason,
    pub at_unix: i64,
}

impl Mark {
    pub fn tag_value(&self) -> String {
        format!("{}@{}", self.reason, self.at_unix)
    }

    /// Reads a tag value; anything unreadable counts as a mark made now (so it is re-checked
    /// a full interval later rather than acted on at once).
    pub fn parse(value: &str, now_unix: i64) -> Mark {
        let (reason, at) = value.split_once('@').unwrap_or((value, ""));
        let reason = match reason {
            "lifetime" => ReapReason::Lifetime,
            _ => ReapReason::NoAgent,
        };
        Mark {
            reason,
            at_unix: at.parse().unwrap_or(now_unix),
        }
    }
}

/// What the reaper knows about one instance of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    pub id: String,
    pub pool: String,
    /// Only in-service instances are judged (pending and warmed ones are still booting).
    pub in_service: bool,
    pub launched_unix: i64,
    pub mark: Option<Mark>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReapAction {
    Mark {
        instance: String,
        mark: Mark,
    },
    Terminate {
        instance: String,
        reason: ReapReason,
    },
    Unmark {
        instance: String,
    },
}

/// One pass of the reaper.
pub fn decide(
    instances: &[InstanceFacts],
    agents: &[AgentSummary],
    config: &ReaperConfig,
    now_unix: i64,
) -> Vec<ReapAction> {
    let mut actions = Vec::new();
    for instance in instances.iter().filter(|i| i.in_service) {
        let agent = agents.iter().find(|a| a.name == instance.id);
        // Saturating: times come from EC2 and from tags anyone with tag rights can write.
        let age = now_unix.saturating_sub(instance.launched_unix).max(0) as u64;
        let reason = if config.max_lifetime_seconds > 0 && age >= config.max_lifetime_seconds {
            Some(ReapReason::Lifetime)
        } else if agent.is_none() && age >= config.boot_deadline_seconds {
            Some(ReapReason::NoAgent)
        } else {
            None
        };
        match (reason, instance.mark) {
            (Some(reason), None) => actions.push(ReapAction::Mark {
                instance: instance.id.clone(),
                mark: Mark {
                    reason,
                    at_unix: now_unix,
                },
            }),
            (Some(reason), Some(mark)) => {
                let interval = i64::try_from(config.interval_seconds.max(1)).unwrap_or(i64::MAX);
                if now_unix.saturating_sub(mark.at_unix) >= interval {
                    actions.push(ReapAction::Terminate {
                        instance: instance.id.clone(),
                        reason,
                    });
                }
            }
            (None, Some(_)) => actions.push(ReapAction::Unmark {
                instance: instance.id.clone(),
            }),
            (None, None) => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const CONFIG: ReaperConfig = ReaperConfig {
        boot_deadline_seconds: 600,
        max_lifetime_seconds: 86_400,
        interval_seconds: 60,
    };

    fn instance(
        id: &str,
        age: i64,
        in_service: bool,
        mark: Option<(ReapReason, i64)>,
    ) -> InstanceFacts {
        InstanceFacts {
            id: id.into(),
            pool: "gpu".into(),
            in_service,
            launched_unix: NOW - age,
            mark: mark.map(|(reason, ago)| Mark {
                reason,
                at_unix: NOW - ago,
            }),
        }
    }

    fn agent(name: &str, busy: bool) -> AgentSummary {
        AgentSummary {
            name: name.into(),
            busy,
        }
    }

    #[test]
    fn the_reaper_table() {
        use ReapReason::*;
        let mark = |reason| ReapAction::Mark {
            instance: "i-1".into(),
            mark: Mark {
                reason,
                at_unix: NOW,
            },
        };
        let terminate = |reason| ReapAction::Terminate {
            instance: "i-1".into(),
            reason,
        };
        let unmark = ReapAction::Unmark {
            instance: "i-1".into(),
        };
        #[rustfmt::skip]
        let table: Vec<(&str, InstanceFacts, Vec<AgentSummary>, Vec<ReapAction>)> = vec![
            ("young, no agent yet: wait", instance("i-1", 599, true, None), vec![], vec![]),
            ("past the boot deadline, no agent: mark", instance("i-1", 600, true, None), vec![], vec![mark(NoAgent)]),
            ("marked a pass ago, still no agent: terminate", instance("i-1", 700, true, Some((NoAgent, 60))), vec![], vec![terminate(NoAgent)]),
            ("marked just now (restarted scaler): wait for the confirming pass", instance("i-1", 700, true, Some((NoAgent, 59))), vec![], vec![]),
            ("marked, then its agent registered: unmark", instance("i-1", 700, true, Some((NoAgent, 120))), vec![agent("i-1", false)], vec![unmark.clone()]),
            ("idle agent registered: keep", instance("i-1", 5_000, true, None), vec![agent("i-1", false)], vec![]),
            ("another instance's agent does not count", instance("i-1", 700, true, None), vec![agent("i-2", false)], vec![mark(NoAgent)]),
            ("busy agent, young: not touched", instance("i-1", 5_000, true, None), vec![agent("i-1", true)], vec![]),
            ("busy agent with a stale mark, young: unmarked", instance("i-1", 5_000, true, Some((NoAgent, 600))), vec![agent("i-1", true)], vec![unmark.clone()]),
            ("busy agent past max lifetime: marked (the hard cap)", instance("i-1", 90_000, true, None), vec![agent("i-1", true)], vec![mark(Lifetime)]),
            ("busy agent past max lifetime, marked a pass ago: terminated", instance("i-1", 90_000, true, Some((Lifetime, 600))), vec![agent("i-1", true)], vec![terminate(Lifetime)]),
            ("busy agent past max lifetime, marked just now: wait for the confirming pass", instance("i-1", 90_000, true, Some((Lifetime, 30))), vec![agent("i-1", true)], vec![]),
            ("past max lifetime, idle: mark", instance("i-1", 86_400, true, None), vec![agent("i-1", false)], vec![mark(Lifetime)]),
            ("past max lifetime, marked: terminate", instance("i-1", 90_000, true, Some((Lifetime, 61))), vec![agent("i-1", false)], vec![terminate(Lifetime)]),
            ("pending (still launching): not judged", instance("i-1", 5_000, false, None), vec![], vec![]),
        ];
        for (case, instance, agents, expected) in table {
            assert_eq!(
                decide(&[instance], &agents, &CONFIG, NOW),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn no_lifetime_limit_when_zero() {
        let config = ReaperConfig {
            max_lifetime_seconds: 0,
            ..CONFIG
        };
        let old = instance("i-1", 10_000_000, true, None);
        assert!(decide(&[old], &[agent("i-1", false)], &config, NOW).is_empty());
    }

    #[test]
    fn marks_round_trip_and_bad_ones_wait_a_full_interval() {
        let mark = Mark {
            reason: ReapReason::Lifetime,
            at_unix: 123,
        };
        assert_eq!(mark.tag_value(), "lifetime@123");
        assert_eq!(Mark::parse(&mark.tag_value(), NOW), mark);
        assert_eq!(
            Mark::parse("garbage", NOW),
            Mark {
                reason: ReapReason::NoAgent,
                at_unix: NOW
            }
        );
    }
}
