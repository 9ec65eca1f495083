//! Properties of the reaper (`scaling::reaper`) over generated fleets, agents, marks and times,
//! beside the table test in its file: the reaper judges only in-service instances, acts at most
//! once on each, never touches an instance whose agent is registered before its hard cap,
//! terminates only what it marked at least an interval earlier, and takes any time or tag value
//! (a mark is an EC2 tag anyone with tag rights can write) without panicking.

use proptest::prelude::*;
use protocol::metrics::AgentSummary;
use scaling::reaper::{decide, InstanceFacts, Mark, ReapAction, ReapReason, ReaperConfig};

const NOW: i64 = 1_800_000_000;

fn reason() -> impl Strategy<Value = ReapReason> {
    prop_oneof![Just(ReapReason::NoAgent), Just(ReapReason::Lifetime)]
}

/// Times near now (the usual case) or anywhere in i64 (clock skew, a forged tag).
fn time() -> impl Strategy<Value = i64> {
    prop_oneof![4 => NOW - 200_000..NOW + 1_000, 1 => any::<i64>()]
}

fn instance(index: usize) -> impl Strategy<Value = InstanceFacts> {
    let mark = proptest::option::of(
        (reason(), time()).prop_map(|(reason, at_unix)| Mark { reason, at_unix }),
    );
    (any::<bool>(), time(), mark).prop_map(move |(in_service, launched_unix, mark)| InstanceFacts {
        id: format!("i-{index}"),
        pool: "gpu".into(),
        in_service,
        launched_unix,
        mark,
    })
}

fn fleet() -> impl Strategy<Value = (Vec<InstanceFacts>, Vec<AgentSummary>)> {
    let instances = (0usize..8).prop_flat_map(|count| (0..count).map(instance).collect::<Vec<_>>());
    let agents = proptest::collection::vec((0usize..10, any::<bool>()), 0..8).prop_map(|agents| {
        agents
            .into_iter()
            .map(|(index, busy)| AgentSummary {
                name: format!("i-{index}"),
                busy,
            })
            .collect()
    });
    (instances, agents)
}

fn config() -> impl Strategy<Value = ReaperConfig> {
    (
        0u64..2_000,
        prop_oneof![Just(0u64), 1u64..200_000],
        0u64..600,
    )
        .prop_map(
            |(boot_deadline_seconds, max_lifetime_seconds, interval_seconds)| ReaperConfig {
                boot_deadline_seconds,
                max_lifetime_seconds,
                interval_seconds,
            },
        )
}

fn target(action: &ReapAction) -> &str {
    match action {
        ReapAction::Mark { instance, .. }
        | ReapAction::Terminate { instance, .. }
        | ReapAction::Unmark { instance } => instance,
    }
}

proptest! {
    #[test]
    fn the_reaper_acts_only_where_it_may((instances, agents) in fleet(), config in config(), now in time()) {
        let actions = decide(&instances, &agents, &config, now);
        let mut seen = std::collections::HashSet::new();
        for action in &actions {
            let id = target(action);
            prop_assert!(seen.insert(id.to_string()), "one action per instance: {actions:?}");
            let facts = instances.iter().find(|i| i.id == id);
            prop_assert!(facts.is_some_and(|i| i.in_service), "only in-service instances: {action:?}");
            let facts = facts.unwrap();
            let registered = agents.iter().any(|a| a.name == id);
            let age = now.saturating_sub(facts.launched_unix);
            let capped = config.max_lifetime_seconds > 0
                && age >= i64::try_from(config.max_lifetime_seconds).unwrap();
            match action {
                ReapAction::Mark { mark, .. } => {
                    prop_assert!(facts.mark.is_none());
                    prop_assert_eq!(mark.at_unix, now);
                    prop_assert!(!registered || capped, "a registered agent before its cap: {action:?}");
                }
                ReapAction::Terminate { .. } => {
                    let marked_at = facts.mark.map(|m| m.at_unix);
                    prop_assert!(marked_at.is_some(), "terminated without a mark");
                    let waited = now.saturating_sub(marked_at.unwrap());
                    prop_assert!(waited >= i64::try_from(config.interval_seconds.max(1)).unwrap());
                    prop_assert!(!registered || capped, "a registered agent before its cap: {action:?}");
                }
                ReapAction::Unmark { .. } => prop_assert!(facts.mark.is_some()),
            }
        }
    }

    #[test]
    fn marks_read_back_and_any_tag_value_reads(reason in reason(), at in any::<i64>(), text in ".*", now in time()) {
        let mark = Mark { reason, at_unix: at };
        prop_assert_eq!(Mark::parse(&mark.tag_value(), now), mark);
        let read = Mark::parse(&text, now);
        prop_assert!(read.at_unix == now || text.contains('@'));
    }
}

/// Found by `the_reaper_acts_only_where_it_may`: a launch time or a mark far in the past (a
/// forged tag) overflowed the age and wait subtractions, panicking the scaler's loop.
#[test]
fn extreme_times_and_forged_marks_do_not_overflow() {
    let forged = Mark::parse("no-agent@-9223372036854775808", NOW);
    let instances = [InstanceFacts {
        id: "i-1".into(),
        pool: "gpu".into(),
        in_service: true,
        launched_unix: i64::MIN,
        mark: Some(forged),
    }];
    let config = ReaperConfig::default();
    let actions = decide(&instances, &[], &config, i64::MAX);
    assert_eq!(
        actions,
        vec![ReapAction::Terminate {
            instance: "i-1".into(),
            reason: ReapReason::NoAgent
        }]
    );
}
