//! The scaling decision, pure and table-tested (DESIGN decisions 4–5): raise only; desired =
//! clamp(queued + running + spare, min, max), at least any scheduled minimum; no scale-out
//! cooldown; a token bucket bounds how fast desired rises; stale metrics never raise; capacity
//! pools are filled in priority order and a pool that cannot launch, or whose instances keep
//! faulting ([`crate::pool_health`]), spills its share to the next.
//! With a forecast ([`crate::forecast`]) the spare is the running warm capacity the forecast
//! asks for, and each pool's warm pool of stopped instances is sized within its bounds; queued
//! jobs that no capacity is coming for go first to pools with stopped instances ready (a start
//! takes a fraction of a cold boot).

use crate::forecast::{Forecast, ForecastConfig, Forecaster};
use crate::pool_health::PoolHealth;
use crate::schedule::{minimum_at, ScheduledMinimum};

/// The queue as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueSnapshot {
    pub queued: u32,
    pub running: u32,
    pub idle: u32,
    pub occupied: u32,
    /// Seconds the oldest queued job has waited (when the source says).
    pub oldest_queued_seconds: Option<u64>,
    /// How old the observation is, in milliseconds.
    pub age_ms: u64,
}

/// One capacity pool (an Auto Scaling group, or the local fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    pub name: String,
    pub desired: u32,
    pub min: u32,
    pub max: u32,
    pub in_service: u32,
    pub pending: u32,
    /// The pool failed to launch recently (no capacity, spot limits, ...): give its share to the
    /// next pool until it recovers.
    pub short: bool,
    /// Its instances' recent GPU faults; an unhealthy pool gives its share to the next pool too,
    /// until its cool-off ends.
    pub health: PoolHealth,
    /// The pool's warm pool of stopped, pre-initialised instances, if it has one.
    pub warm_pool: Option<WarmPoolState>,
}

impl PoolState {
    /// Whether the fill passes this pool over: short of capacity, or unhealthy.
    fn passed_over(&self) -> bool {
        self.short || self.health.unhealthy.is_some()
    }
}

/// An EC2 Auto Scaling warm pool: stopped instances, initialised once, that start in a fraction
/// of a cold boot when the group's desired capacity rises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WarmPoolState {
    /// The sizes the policy may choose between (the stack's parameters).
    pub min: u32,
    pub max: u32,
    /// The size asked for now (the warm pool's minimum size).
    pub size: u32,
    /// Stopped instances ready to start.
    pub ready: u32,
    /// Instances being initialised into the pool.
    pub pending: u32,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Instances kept beyond what the queue needs.
    pub spare: u32,
    /// Token bucket: desired may rise by at most `rise_burst` at once, refilled at
    /// `rise_per_minute`.
    pub rise_per_minute: u32,
    pub rise_burst: u32,
    /// Metrics older than this never raise capacity.
    pub stale_after_ms: u64,
    pub scheduled_minimums: Vec<ScheduledMinimum>,
    /// Warm capacity that follows demand: keep `warm_fraction` × the peak demand (queued +
    /// running) of the last `warm_window_ms` as spare, at most `warm_max` (0 = off). CI traffic
    /// comes in bursts (pipelines fan out): this keeps agents ready while a team is busy and
    /// none at night, where a constant `spare` would cost all day.
    pub warm_fraction: f64,
    pub warm_window_ms: u64,
    pub warm_max: u32,
    /// Demand seen coming: when set, the forecast's running warm capacity replaces
    /// `warm_fraction`, and warm pools are sized from the forecast.
    pub forecast: Option<ForecastConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            spare: 0,
            rise_per_minute: 120,
            rise_burst: 20,
            stale_after_ms: 30_000,
            scheduled_minimums: Vec::new(),
            warm_fraction: 0.0,
            warm_window_ms: 15 * 60 * 1000,
            warm_max: 0,
            forecast: None,
        }
    }
}

/// What the policy remembers between decisions: the rise-rate bucket and recent demand.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyState {
    pub bucket: TokenBucket,
    /// (time ms, queued + running), oldest first, within the warm window.
    demand: std::collections::VecDeque<(u64, u32)>,
    /// The forecast's memory (used when the config has a forecast).
    pub forecaster: Forecaster,
}

impl PolicyState {
    pub fn new(config: &PolicyConfig) -> PolicyState {
        PolicyState {
            bucket: TokenBucket::new(config.rise_burst, config.rise_per_minute),
            demand: Default::default(),
            forecaster: Forecaster::default(),
        }
    }

    /// Records demand at `now_ms` and returns the peak over the window.
    fn peak_demand(&mut self, now_ms: u64, demand: u32, window_ms: u64) -> u32 {
        while self
            .demand
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > window_ms)
        {
            self.demand.pop_front();
        }
        // Keep the deque small: a sample only when demand changes.
        if self.demand.back().is_none_or(|(_, last)| *last != demand) {
            self.demand.push_back((now_ms, demand));
        }
        self.demand
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(0)
            .max(demand)
    }
}

/// How fast desired may rise: `capacity` tokens, refilled at `per_minute`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last_ms: Option<u64>,
}

impl TokenBucket {
    pub fn new(capacity: u32, per_minute: u32) -> TokenBucket {
        TokenBucket {
            tokens: capacity as f64,
            capacity: capacity as f64,
            per_second: per_minute as f64 / 60.0,
            last_ms: None,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if let Some(last) = self.last_ms {
            let elapsed = now_ms.saturating_sub(last) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        }
        self.last_ms = Some(now_ms);
    }

    /// How many of `wanted` may be taken at `now_ms`.
    pub fn available(&mut self, now_ms: u64, wanted: u32) -> u32 {
        self.refill(now_ms);
        (self.tokens.floor() as u32).min(wanted)
    }

    pub fn take(&mut self, count: u32) {
        self.tokens = (self.tokens - count as f64).max(0.0);
    }
}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The capacity the queue asks for (before limits), if the metrics could be trusted.
    pub wanted: Option<u32>,
    /// New desired per pool, for pools whose desired rises.
    pub raises: Vec<(String, u32)>,
    /// New warm pool size per pool, for pools whose warm pool size changes.
    pub warm_pools: Vec<(String, u32)>,
    pub reason: String,
}

/// Decides new desired capacities. `state` carries the rise rate and recent demand between calls.
///
/// The steps, in order: stale metrics raise only to minimums; the target is the queue plus spare
/// (or warm capacity), at least the scheduled minimum, clamped to the pools' bounds; capacity that
/// exists or is coming is subtracted; the token bucket bounds the rise; what is granted fills the
/// pools in priority order, short or unhealthy pools spilling their share to the next.
pub fn decide(
    queue: &QueueSnapshot,
    pools: &[PoolState],
    config: &PolicyConfig,
    state: &mut PolicyState,
    now_ms: u64,
    unix_now: i64,
) -> Decision {
    if queue.age_ms > config.stale_after_ms {
        return stale_decision(queue, pools, config);
    }
    let scheduled = minimum_at(&config.scheduled_minimums, unix_now);
    let demand = queue.queued.saturating_add(queue.running);
    let forecast = config.forecast.as_ref().map(|forecast| {
        state.forecaster.observe(unix_now, demand, forecast);
        state.forecaster.forecast(unix_now, forecast)
    });
    let warm = match &forecast {
        Some(forecast) => forecast.warm,
        None => warm_spare(demand, config, state, now_ms),
    };
    let target = Target::new(demand, config.spare.max(warm), scheduled, pools);
    let mut reason = target.explain(queue, pools);
    let warm_pools = forecast.map_or_else(Vec::new, |forecast| {
        reason.push_str("; ");
        reason.push_str(&forecast.explain());
        size_warm_pools(pools, &forecast)
    });
    let mut raises = raise_to_minimums(pools);
    let committed = committed_capacity(pools);
    if target.target <= committed {
        reason.push_str(": no raise");
        return Decision {
            wanted: Some(target.wanted),
            raises,
            warm_pools,
            reason,
        };
    }
    let granted = rate_limit(
        &mut state.bucket,
        now_ms,
        target.target - committed,
        &mut reason,
    );
    let urgent = uncovered_jobs(queue, pools).min(granted);
    let fill = fill_in_priority_order(pools, granted, urgent, &mut raises);
    state.bucket.take(granted - fill.remaining);
    fill.explain(&mut reason);
    Decision {
        wanted: Some(target.wanted),
        raises,
        warm_pools,
        reason,
    }
}

/// Spreads the forecast's stopped pool over the pools that have a warm pool, in priority order,
/// each within its bounds; returns the pools whose size changes.
fn size_warm_pools(pools: &[PoolState], forecast: &Forecast) -> Vec<(String, u32)> {
    let mut remaining = forecast.stopped;
    let mut sizes = Vec::new();
    for pool in pools {
        let Some(warm_pool) = pool.warm_pool else {
            continue;
        };
        let size = remaining.clamp(warm_pool.min, warm_pool.max.max(warm_pool.min));
        remaining = remaining.saturating_sub(size);
        if size != warm_pool.size {
            sizes.push((pool.name.clone(), size));
        }
    }
    sizes
}

/// Queued jobs that no quick capacity is coming for: not an idle agent, not an instance coming
/// in a pool with a warm pool (its group starts stopped instances first). An instance booting
/// cold elsewhere does not count: a start from a warm pool is likely ready sooner, and the cold
/// one then stays as warm capacity.
fn uncovered_jobs(queue: &QueueSnapshot, pools: &[PoolState]) -> u32 {
    let coming: u32 = pools
        .iter()
        .filter(|p| p.warm_pool.is_some())
        .map(|p| {
            let launched = p.in_service.saturating_add(p.pending);
            p.pending.saturating_add(p.desired.saturating_sub(launched))
        })
        .fold(0, u32::saturating_add);
    queue
        .queued
        .saturating_sub(coming.saturating_add(queue.idle))
}

/// Metrics too old to trust: pools are raised to their minimums, never for the queue.
fn stale_decision(queue: &QueueSnapshot, pools: &[PoolState], config: &PolicyConfig) -> Decision {
    Decision {
        wanted: None,
        raises: raise_to_minimums(pools),
        warm_pools: Vec::new(),
        reason: format!(
            "metrics are {} ms old (> {} ms): not raising for the queue",
            queue.age_ms, config.stale_after_ms
        ),
    }
}

/// The capacity the queue asks for, and the schedule and pool bounds that shape it.
struct Target {
    /// Spare beyond the queue: the configured spare or the warm capacity, whichever is larger.
    spare: u32,
    /// Queued + running + spare.
    from_queue: u32,
    /// The scheduled minimum in force now (0 when none).
    scheduled: u32,
    /// `from_queue`, at least `scheduled`.
    wanted: u32,
    /// `wanted` clamped to the pools' summed minimums and maximums.
    target: u32,
}

impl Target {
    /// `demand` (queued + running) plus `spare`, at least `scheduled`, within the pools' bounds.
    fn new(demand: u32, spare: u32, scheduled: u32, pools: &[PoolState]) -> Target {
        let (floor, ceiling) = bounds(pools);
        let from_queue = demand.saturating_add(spare);
        let wanted = from_queue.max(scheduled);
        Target {
            spare,
            from_queue,
            scheduled,
            wanted,
            target: wanted.clamp(floor, ceiling.max(floor)),
        }
    }

    /// The arithmetic, for the decision's reason.
    fn explain(&self, queue: &QueueSnapshot, pools: &[PoolState]) -> String {
        let (floor, ceiling) = bounds(pools);
        let current = pools.iter().map(|p| p.desired).fold(0, u32::saturating_add);
        let Target {
            spare,
            from_queue,
            scheduled,
            wanted,
            target,
        } = *self;
        let scheduled_note = if scheduled > from_queue {
            format!(", scheduled minimum {scheduled}")
        } else {
            String::new()
        };
        format!(
            "queued {} + running {} + spare {spare} = {from_queue}{scheduled_note}; clamp({wanted}, {floor}, {ceiling}) = {target}; desired now {current}",
            queue.queued, queue.running,
        )
    }
}

/// The pools' summed minimums and maximums. Sums here saturate: the counts come from outside
/// (the queue's metrics, the groups' sizes), and no answer may panic the loop.
fn bounds(pools: &[PoolState]) -> (u32, u32) {
    (
        pools.iter().map(|p| p.min).fold(0, u32::saturating_add),
        pools.iter().map(|p| p.max).fold(0, u32::saturating_add),
    )
}

/// Warm capacity: `warm_fraction` of the peak demand over the warm window, at most `warm_max`;
/// 0 when off. Records `demand` in `state` only when on.
fn warm_spare(demand: u32, config: &PolicyConfig, state: &mut PolicyState, now_ms: u64) -> u32 {
    if config.warm_fraction > 0.0 && config.warm_max > 0 {
        let peak = state.peak_demand(now_ms, demand, config.warm_window_ms);
        ((peak as f64 * config.warm_fraction).ceil() as u32).min(config.warm_max)
    } else {
        0
    }
}

/// Capacity that exists or is coming, once minimums are honoured. A short (or unhealthy) pool's
/// desired beyond what it has actually launched is unmet: that share must come from the next pools.
fn committed_capacity(pools: &[PoolState]) -> u32 {
    pools
        .iter()
        .map(|p| {
            if p.passed_over() {
                p.desired.min(p.in_service.saturating_add(p.pending))
            } else {
                p.desired.max(p.min)
            }
        })
        .fold(0, u32::saturating_add)
}

/// The token bucket: how many of `wanted` more instances may be asked for now. Takes no tokens
/// (the caller takes what the pools actually accepted); notes a limited rise in `reason`.
fn rate_limit(bucket: &mut TokenBucket, now_ms: u64, wanted: u32, reason: &mut String) -> u32 {
    let granted = bucket.available(now_ms, wanted);
    if granted < wanted {
        reason.push_str(&format!("; rise limited to {granted} by the rate limit"));
    }
    granted
}

/// What filling the pools left over.
struct Fill {
    /// Granted instances no pool could take.
    remaining: u32,
    /// Short pools passed over, in priority order.
    spilled: Vec<String>,
    /// Unhealthy pools passed over, in priority order, each with why.
    unhealthy: Vec<String>,
}

impl Fill {
    fn explain(&self, reason: &mut String) {
        if !self.spilled.is_empty() {
            reason.push_str(&format!(
                "; short of capacity: {} (share spilled to the next pool)",
                self.spilled.join(", ")
            ));
        }
        for pool in &self.unhealthy {
            reason.push_str(&format!("; unhealthy: {pool}"));
        }
        if self.remaining > 0 {
            reason.push_str(&format!(
                "; {} more wanted but no pool can launch them",
                self.remaining
            ));
        }
    }
}

/// Fills pools with `granted` more instances, each up to its max. The first `urgent` (queued
/// jobs nothing is coming for) go to pools with stopped instances ready, in priority order; the
/// rest fill pools in priority order. Short, unhealthy and full pools pass their share on. Raises
/// land in `raises` (an existing entry for a pool, from its minimum, is updated in place).
fn fill_in_priority_order(
    pools: &[PoolState],
    granted: u32,
    urgent: u32,
    raises: &mut Vec<(String, u32)>,
) -> Fill {
    let mut added = vec![0u32; pools.len()];
    let mut urgent = urgent.min(granted);
    let mut remaining = granted;
    for (index, pool) in pools.iter().enumerate() {
        let ready = pool.warm_pool.map_or(0, |w| w.ready);
        if urgent == 0 || pool.passed_over() || ready == 0 {
            continue;
        }
        let add = room(pool).min(ready).min(urgent);
        added[index] += add;
        urgent -= add;
        remaining -= add;
    }
    let (mut spilled, mut unhealthy) = (Vec::new(), Vec::new());
    for (index, pool) in pools.iter().enumerate() {
        if remaining == 0 {
            break;
        }
        if let Some(why) = &pool.health.unhealthy {
            unhealthy.push(format!(
                "{} ({}; share spilled to the next pool)",
                pool.name, why.reason
            ));
            continue;
        }
        if pool.short {
            spilled.push(pool.name.clone());
            continue;
        }
        let add = room(pool).saturating_sub(added[index]).min(remaining);
        added[index] += add;
        remaining -= add;
    }
    for (pool, add) in pools.iter().zip(added) {
        if add == 0 {
            continue;
        }
        let desired = pool.desired.max(pool.min) + add;
        match raises.iter_mut().find(|(name, _)| name == &pool.name) {
            Some(entry) => entry.1 = desired,
            None => raises.push((pool.name.clone(), desired)),
        }
    }
    Fill {
        remaining,
        spilled,
        unhealthy,
    }
}

/// How many more instances a pool can take: its max above its desired (at least its minimum).
fn room(pool: &PoolState) -> u32 {
    pool.max.saturating_sub(pool.desired.max(pool.min))
}

/// Pools below their minimum are raised to it regardless of the queue.
fn raise_to_minimums(pools: &[PoolState]) -> Vec<(String, u32)> {
    pools
        .iter()
        .filter(|p| p.desired < p.min)
        .map(|p| (p.name.clone(), p.min))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, desired: u32, min: u32, max: u32, short: bool) -> PoolState {
        PoolState {
            name: name.into(),
            desired,
            min,
            max,
            in_service: desired,
            pending: 0,
            short,
            health: PoolHealth::default(),
            warm_pool: None,
        }
    }

    /// `pool` cooling off after GPU faults.
    fn unhealthy(mut pool: PoolState) -> PoolState {
        pool.health = PoolHealth {
            recent_faults: 2,
            unhealthy: Some(crate::pool_health::Unhealthy {
                until_unix: 1_800,
                reason: "2 GPU faults in 30 min: xid: Xid 79, xid: Xid 48; 30 min of cool-off left"
                    .into(),
            }),
        };
        pool
    }

    fn queue(queued: u32, running: u32, age_ms: u64) -> QueueSnapshot {
        QueueSnapshot {
            queued,
            running,
            idle: 0,
            occupied: running,
            oldest_queued_seconds: None,
            age_ms,
        }
    }

    fn raises(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(n, d)| (n.to_string(), *d)).collect()
    }

    /// name, queue, pools, config, expected raises
    type DecisionRow<'a> = (
        &'static str,
        QueueSnapshot,
        Vec<PoolState>,
        &'a PolicyConfig,
        Vec<(String, u32)>,
    );

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per scenario, read top to bottom
    fn decision_table() {
        let config = PolicyConfig {
            spare: 1,
            ..PolicyConfig::default()
        };
        let no_spare = PolicyConfig::default();
        let rows: Vec<DecisionRow> = vec![
            (
                "empty queue, spare 1",
                queue(0, 0, 0),
                vec![pool("a", 0, 0, 10, false)],
                &config,
                raises(&[("a", 1)]),
            ),
            (
                "queued + running + spare",
                queue(3, 2, 0),
                vec![pool("a", 2, 0, 10, false)],
                &config,
                raises(&[("a", 6)]),
            ),
            (
                "clamped to max",
                queue(30, 0, 0),
                vec![pool("a", 2, 0, 10, false)],
                &no_spare,
                raises(&[("a", 10)]),
            ),
            (
                "raise only: never lowers",
                queue(0, 1, 0),
                vec![pool("a", 5, 0, 10, false)],
                &no_spare,
                vec![],
            ),
            (
                "below min is raised to min",
                queue(0, 0, 0),
                vec![pool("a", 0, 2, 10, false)],
                &no_spare,
                raises(&[("a", 2)]),
            ),
            (
                "stale metrics do not raise",
                queue(8, 0, 60_000),
                vec![pool("a", 1, 0, 10, false)],
                &no_spare,
                vec![],
            ),
            (
                "stale metrics still honour min",
                queue(8, 0, 60_000),
                vec![pool("a", 0, 1, 10, false)],
                &no_spare,
                raises(&[("a", 1)]),
            ),
            (
                "pools in priority order",
                queue(6, 0, 0),
                vec![
                    pool("spot", 0, 0, 4, false),
                    pool("ondemand", 0, 0, 10, false),
                ],
                &no_spare,
                raises(&[("spot", 4), ("ondemand", 2)]),
            ),
            (
                "a short pool spills to the next",
                queue(3, 0, 0),
                vec![
                    pool("spot", 1, 0, 4, true),
                    pool("ondemand", 0, 0, 10, false),
                ],
                &no_spare,
                raises(&[("ondemand", 2)]),
            ),
            (
                "nowhere to launch",
                queue(3, 0, 0),
                vec![pool("spot", 0, 0, 4, true)],
                &no_spare,
                vec![],
            ),
            (
                "an unhealthy pool spills to the next like a short one",
                queue(3, 0, 0),
                vec![
                    unhealthy(pool("spot", 1, 0, 4, false)),
                    pool("ondemand", 0, 0, 10, false),
                ],
                &no_spare,
                raises(&[("ondemand", 2)]),
            ),
            (
                "a healthy pool with faults on record takes its share",
                queue(3, 0, 0),
                vec![
                    PoolState {
                        health: PoolHealth {
                            recent_faults: 1,
                            unhealthy: None,
                        },
                        ..pool("spot", 1, 0, 4, false)
                    },
                    pool("ondemand", 0, 0, 10, false),
                ],
                &no_spare,
                raises(&[("spot", 3)]),
            ),
            (
                "an unhealthy pool's stopped instances are not started",
                queue(2, 0, 0),
                vec![
                    unhealthy(with_warm_pool(pool("ondemand", 0, 0, 10, false), 5, 2, 2)),
                    pool("spot", 0, 0, 10, false),
                ],
                &no_spare,
                raises(&[("spot", 2)]),
            ),
        ];
        assert_rows(rows);
    }

    /// Decides each row from a fresh state with a bucket of 100; without a forecast no warm pool
    /// is ever sized.
    fn assert_rows(rows: Vec<DecisionRow>) {
        for (name, queue, pools, config, expected) in rows {
            let mut state = PolicyState {
                bucket: TokenBucket::new(100, 600),
                demand: Default::default(),
                forecaster: Forecaster::default(),
            };
            let decision = decide(&queue, &pools, config, &mut state, 0, 0);
            assert_eq!(decision.raises, expected, "{name}: {}", decision.reason);
            assert!(
                decision.warm_pools.is_empty(),
                "{name}: no forecast, no sizing"
            );
        }
    }

    #[test]
    fn the_decision_says_which_pools_spilled_and_why() {
        let pools = vec![
            unhealthy(pool("spot", 0, 0, 4, false)),
            pool("spot-b", 0, 0, 4, true),
            pool("ondemand", 0, 0, 10, false),
        ];
        let mut state = PolicyState::new(&PolicyConfig::default());
        let decision = decide(
            &queue(2, 0, 0),
            &pools,
            &PolicyConfig::default(),
            &mut state,
            0,
            0,
        );
        assert_eq!(decision.raises, raises(&[("ondemand", 2)]));
        assert!(
            decision
                .reason
                .contains("; short of capacity: spot-b (share spilled to the next pool)"),
            "{}",
            decision.reason
        );
        assert!(
            decision.reason.contains("; unhealthy: spot (2 GPU faults in 30 min: xid: Xid 79, xid: Xid 48; 30 min of cool-off left; share spilled to the next pool)"),
            "{}",
            decision.reason
        );
        // The positive control: healthy, the same pool takes the jobs and no spill is reported.
        let healthy = vec![
            pool("spot", 0, 0, 4, false),
            pool("ondemand", 0, 0, 10, false),
        ];
        let decision = decide(
            &queue(2, 0, 0),
            &healthy,
            &PolicyConfig::default(),
            &mut state,
            0,
            0,
        );
        assert_eq!(decision.raises, raises(&[("spot", 2)]));
        assert!(
            !decision.reason.contains("unhealthy"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn the_token_bucket_bounds_the_rise_rate() {
        let config = PolicyConfig {
            rise_per_minute: 60,
            rise_burst: 5,
            ..PolicyConfig::default()
        };
        let mut state = PolicyState::new(&config);
        let pools = vec![pool("a", 0, 0, 100, false)];
        let first = decide(&queue(50, 0, 0), &pools, &config, &mut state, 0, 0);
        assert_eq!(first.raises, raises(&[("a", 5)]));
        assert!(first.reason.contains("rate limit"), "{}", first.reason);
        let pools = vec![pool("a", 5, 0, 100, false)];
        let same_instant = decide(&queue(50, 0, 0), &pools, &config, &mut state, 0, 0);
        assert!(same_instant.raises.is_empty());
        let three_seconds_later = decide(&queue(50, 0, 0), &pools, &config, &mut state, 3_000, 0);
        assert_eq!(
            three_seconds_later.raises,
            raises(&[("a", 8)]),
            "1 per second refill"
        );
    }

    #[test]
    fn warm_capacity_follows_recent_demand() {
        let config = PolicyConfig {
            warm_fraction: 0.5,
            warm_max: 3,
            warm_window_ms: 60_000,
            ..PolicyConfig::default()
        };
        let mut state = PolicyState::new(&config);
        let idle_pool = |desired| vec![pool("a", desired, 0, 100, false)];
        assert!(
            decide(&queue(0, 0, 0), &idle_pool(0), &config, &mut state, 0, 0)
                .raises
                .is_empty(),
            "no demand yet: no warm capacity"
        );
        let burst = decide(
            &queue(8, 0, 0),
            &idle_pool(0),
            &config,
            &mut state,
            1_000,
            0,
        );
        assert_eq!(
            burst.raises,
            raises(&[("a", 11)]),
            "8 + min(ceil(8 x 0.5), 3)"
        );
        // The burst is done; within the window the warm capacity stays.
        assert_eq!(
            decide(
                &queue(0, 0, 0),
                &idle_pool(0),
                &config,
                &mut state,
                30_000,
                0
            )
            .raises,
            raises(&[("a", 3)])
        );
        // After the window it is gone.
        assert!(decide(
            &queue(0, 0, 0),
            &idle_pool(0),
            &config,
            &mut state,
            62_000,
            0
        )
        .raises
        .is_empty());
    }

    /// `pool` with a warm pool of bounds 0..=`max`, size `size`, `ready` stopped.
    fn with_warm_pool(mut pool: PoolState, max: u32, size: u32, ready: u32) -> PoolState {
        pool.warm_pool = Some(WarmPoolState {
            min: 0,
            max,
            size,
            ready,
            pending: 0,
        });
        pool
    }

    #[test]
    fn queued_jobs_go_first_to_pools_with_stopped_instances_ready() {
        let booting = |name: &str, desired| PoolState {
            in_service: 0,
            pending: desired,
            ..pool(name, desired, 0, 10, false)
        };
        let spare = PolicyConfig {
            spare: 1,
            ..PolicyConfig::default()
        };
        let no_spare = PolicyConfig::default();
        let rows: Vec<DecisionRow> = vec![
            (
                "2 start from the on-demand warm pool; the third fills spot first",
                queue(3, 0, 0),
                vec![
                    pool("spot", 0, 0, 10, false),
                    with_warm_pool(pool("ondemand", 0, 0, 10, false), 5, 2, 2),
                ],
                &no_spare,
                raises(&[("spot", 1), ("ondemand", 2)]),
            ),
            (
                "a spot instance booting cold does not hold a queued job back from a start",
                queue(1, 0, 0),
                vec![
                    booting("spot", 1),
                    with_warm_pool(pool("ondemand", 0, 0, 10, false), 5, 1, 1),
                ],
                &spare,
                raises(&[("ondemand", 1)]),
            ),
            (
                "a start already coming covers the job",
                queue(1, 0, 0),
                vec![
                    pool("spot", 0, 0, 10, false),
                    with_warm_pool(booting("ondemand", 1), 5, 1, 1),
                ],
                &no_spare,
                vec![],
            ),
            (
                "a short pool's stopped instances cannot start",
                queue(2, 0, 0),
                vec![
                    pool("spot", 0, 0, 10, false),
                    with_warm_pool(pool("ondemand", 0, 0, 10, true), 5, 2, 2),
                ],
                &no_spare,
                raises(&[("spot", 2)]),
            ),
        ];
        assert_rows(rows);
    }

    #[test]
    fn warm_pools_are_sized_in_priority_order_within_their_bounds() {
        let forecast = |stopped| Forecast {
            recent_per_hour: 0.0,
            profile_per_hour: 0.0,
            mean_batch: 1.0,
            warm_batch: 1,
            pool_batch: 1,
            warm: 0,
            stopped,
        };
        let pools = |a_size, b_size| {
            vec![
                pool("spot", 0, 0, 10, false),
                with_warm_pool(pool("a", 0, 0, 10, false), 4, a_size, 0),
                PoolState {
                    warm_pool: Some(WarmPoolState {
                        min: 1,
                        max: 10,
                        size: b_size,
                        ready: 0,
                        pending: 0,
                    }),
                    ..pool("b", 0, 0, 10, false)
                },
            ]
        };
        // name, stopped pool wanted, (a, b) now, expected changes
        let rows = [
            (
                "a to its max, the rest to b",
                9,
                (0, 1),
                raises(&[("a", 4), ("b", 5)]),
            ),
            (
                "b keeps its minimum",
                2,
                (0, 3),
                raises(&[("a", 2), ("b", 1)]),
            ),
            ("unchanged sizes are not set again", 5, (4, 1), vec![]),
            (
                "night: empty, but b's minimum",
                0,
                (4, 5),
                raises(&[("a", 0), ("b", 1)]),
            ),
        ];
        for (name, stopped, (a, b), expected) in rows {
            assert_eq!(
                size_warm_pools(&pools(a, b), &forecast(stopped)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn a_forecast_decision_sizes_warm_capacity_and_pools_and_says_why() {
        let config = PolicyConfig {
            forecast: Some(ForecastConfig::default()),
            ..PolicyConfig::default()
        };
        let mut state = PolicyState::new(&config);
        let pools = vec![with_warm_pool(pool("a", 0, 0, 50, false), 20, 0, 0)];
        // Batches of 4 arrive: the recent rate makes warm capacity and a stopped pool.
        let mut decision = decide(&queue(0, 0, 0), &pools, &config, &mut state, 0, 0);
        for batch in 1..=3u32 {
            let at = i64::from(batch) * 60;
            let running = 4 * (batch - 1);
            let ms = at as u64 * 1000;
            decide(&queue(0, running, 0), &pools, &config, &mut state, ms, at);
            decision = decide(
                &queue(4, running, 0),
                &pools,
                &config,
                &mut state,
                ms + 1,
                at + 1,
            );
        }
        assert!(
            decision.reason.contains("forecast: recent 48.0/h"),
            "{}",
            decision.reason
        );
        assert_eq!(decision.warm_pools.len(), 1, "{}", decision.reason);
        assert!(decision.warm_pools[0].1 >= 4, "{}", decision.reason);
        let wanted = decision.wanted.unwrap_or(0);
        assert!(
            wanted > 12,
            "queued + running + warm capacity: {}",
            decision.reason
        );
        let stale = decide(
            &queue(4, 8, 60_000),
            &pools,
            &config,
            &mut state,
            200_000,
            200,
        );
        assert!(stale.warm_pools.is_empty(), "stale metrics size nothing");
    }

    #[test]
    fn scheduled_minimums_apply_in_their_window() {
        let berlin_office =
            ScheduledMinimum::new("* 8-18 * * MON-FRI", "Europe/Berlin", 4).unwrap();
        let config = PolicyConfig {
            scheduled_minimums: vec![berlin_office],
            ..PolicyConfig::default()
        };
        let monday_0830_berlin = 1_795_419_000;
        let pools = vec![pool("a", 0, 0, 10, false)];
        let mut state = PolicyState::new(&PolicyConfig {
            rise_burst: 100,
            rise_per_minute: 600,
            ..PolicyConfig::default()
        });
        let decision = decide(
            &queue(1, 0, 0),
            &pools,
            &config,
            &mut state,
            0,
            monday_0830_berlin,
        );
        assert_eq!(decision.raises, raises(&[("a", 4)]));
        assert!(
            decision.reason.contains("scheduled minimum 4"),
            "{}",
            decision.reason
        );
        let night = decide(
            &queue(1, 0, 0),
            &pools,
            &config,
            &mut state,
            0,
            monday_0830_berlin + 12 * 3600,
        );
        assert_eq!(night.raises, raises(&[("a", 1)]));
    }
}
