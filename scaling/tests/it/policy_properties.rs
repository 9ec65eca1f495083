//! Properties of the scaling policy (`scaling::policy::decide`) over generated queues, pools and
//! times, beside the table test in its file: it only ever raises, never past a pool's maximum;
//! stale metrics raise to minimums only; the token bucket bounds a first rise by the burst; and
//! any counts a metrics answer may carry (it comes from outside) are taken without panicking.

use proptest::prelude::*;
use scaling::policy::{decide, PolicyConfig, PolicyState, PoolState, QueueSnapshot};
use scaling::pool_health::{PoolHealth, Unhealthy};

/// Counts as a healthy queue shows them, or anything a broken or hostile answer may carry.
fn count() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..200, 1 => any::<u32>()]
}

fn queue() -> impl Strategy<Value = QueueSnapshot> {
    let ages = (proptest::option::of(0u64..100_000), 0u64..120_000);
    (count(), count(), count(), count(), ages).prop_map(
        |(queued, running, idle, occupied, (oldest_queued_seconds, age_ms))| QueueSnapshot {
            queued,
            running,
            idle,
            occupied,
            oldest_queued_seconds,
            age_ms,
        },
    )
}

fn pool(index: usize) -> impl Strategy<Value = PoolState> {
    (
        count(),
        count(),
        count(),
        count(),
        count(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            move |(desired, min, max, in_service, pending, short, unhealthy)| PoolState {
                name: format!("pool-{index}"),
                desired,
                min,
                max,
                in_service,
                pending,
                short,
                health: PoolHealth {
                    recent_faults: if unhealthy { 2 } else { 0 },
                    unhealthy: unhealthy.then(|| Unhealthy {
                        until_unix: 1_800_000_600,
                        reason: "2 GPU faults in 30 min".into(),
                    }),
                },
                warm_pool: None,
            },
        )
}

fn pools() -> impl Strategy<Value = Vec<PoolState>> {
    (1usize..4).prop_flat_map(|count| (0..count).map(pool).collect::<Vec<_>>())
}

fn config() -> impl Strategy<Value = PolicyConfig> {
    (0u32..10, 0u32..300, 0u32..50).prop_map(|(spare, rise_per_minute, rise_burst)| PolicyConfig {
        spare,
        rise_per_minute,
        rise_burst,
        ..PolicyConfig::default()
    })
}

proptest! {
    #[test]
    fn the_policy_only_raises_within_bounds(queue in queue(), pools in pools(), config in config(), now_ms in 0u64..10_000_000) {
        let mut state = PolicyState::new(&config);
        let decision = decide(&queue, &pools, &config, &mut state, now_ms, 1_800_000_000);
        let mut raised = std::collections::HashSet::new();
        for (name, desired) in &decision.raises {
            prop_assert!(raised.insert(name.clone()), "one raise per pool: {decision:?}");
            let pool = pools.iter().find(|p| &p.name == name);
            prop_assert!(pool.is_some(), "a raise names a pool: {name}");
            let pool = pool.unwrap();
            prop_assert!(*desired > pool.desired, "a raise rises: {pool:?} -> {desired}");
            prop_assert!(*desired <= pool.max.max(pool.min), "within bounds: {pool:?} -> {desired}");
            if pool.short || pool.health.unhealthy.is_some() {
                prop_assert!(*desired <= pool.min, "a pool passed over is raised to its minimum only: {pool:?} -> {desired}");
            }
        }
        if queue.age_ms > config.stale_after_ms {
            for (name, desired) in &decision.raises {
                let pool = pools.iter().find(|p| &p.name == name).unwrap();
                prop_assert!(*desired <= pool.min, "stale metrics raise to minimums only: {pool:?} -> {desired}");
            }
        }
    }

    #[test]
    fn a_first_rise_is_bounded_by_the_burst(queue in queue(), pools in pools(), config in config()) {
        let mut state = PolicyState::new(&config);
        let decision = decide(&queue, &pools, &config, &mut state, 0, 1_800_000_000);
        let above_minimums: u64 = decision
            .raises
            .iter()
            .map(|(name, desired)| {
                let pool = pools.iter().find(|p| &p.name == name).unwrap();
                u64::from(desired.saturating_sub(pool.desired.max(pool.min)))
            })
            .sum();
        prop_assert!(above_minimums <= u64::from(config.rise_burst), "{decision:?}");
    }
}

/// Found by `a_first_rise_is_bounded_by_the_burst`: pool bounds (and queue counts) near `u32::MAX`
/// overflowed the policy's sums, panicking the scaler's loop on one odd metrics answer.
#[test]
fn huge_counts_and_bounds_do_not_overflow() {
    let pool = |name: &str| PoolState {
        name: name.into(),
        desired: 1,
        min: u32::MAX,
        max: u32::MAX,
        in_service: u32::MAX,
        pending: u32::MAX,
        short: false,
        health: PoolHealth::default(),
        warm_pool: None,
    };
    let queue = QueueSnapshot {
        queued: u32::MAX,
        running: u32::MAX,
        ..QueueSnapshot::default()
    };
    let config = PolicyConfig::default();
    let mut state = PolicyState::new(&config);
    let decision = decide(&queue, &[pool("a"), pool("b")], &config, &mut state, 0, 0);
    assert_eq!(decision.wanted, Some(u32::MAX));
}
