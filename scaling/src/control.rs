//! The control loop: for one fleet (agent type), read the queue, describe the fleet, decide with
//! the policy, raise desired capacity, and log one structured line per decision. Its gauges feed
//! the scaler's Prometheus `/metrics`. Every reaper interval it also runs a reaper pass (see
//! [`crate::reaper`]) when the queue can list agents, one line per action and one (at debug) per
//! pass. The `/metrics` text is written by the official `prometheus-client` crate (its Prometheus
//! 0.0.4 text encoder, fed each scrape's statuses as constant samples): same names, HELP and TYPE
//! lines and `agent_type` label as the hand-written text it replaced, with label values escaped;
//! `benches/swaps.rs` compares the two.

use crate::fleet::Fleet;
use crate::policy::{decide, Decision, PolicyConfig, PolicyState, PoolState, QueueSnapshot};
use crate::queue::Queue;
use crate::reaper::{self, ReapAction, ReaperConfig};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the loop last saw and did, for `/metrics` and progress displays.
#[derive(Debug, Clone, Default)]
pub struct LoopStatus {
    pub agent_type: String,
    pub queue: QueueSnapshot,
    pub desired: u32,
    pub in_service: u32,
    pub pending: u32,
    pub decisions: u64,
    pub raises: u64,
    pub errors: u64,
    pub completed_instances: u64,
    pub replaced_instances: u64,
    /// Time from the poll that saw more demand to the raise call returning, last one (ms).
    pub last_reaction_ms: f64,
    /// Reaper marks set, and instances it terminated.
    pub reaper_marked: u64,
    pub reaper_terminated: u64,
}

pub struct FleetLoop {
    pub agent_type: String,
    pub queue: Box<dyn Queue>,
    pub fleet: Box<dyn Fleet>,
    pub policy: PolicyConfig,
    pub state: PolicyState,
    pub dry_run: bool,
    pub poll_interval: Duration,
    pub status: Arc<Mutex<LoopStatus>>,
    started: Instant,
    reaper: Option<ReaperConfig>,
    last_reap: Option<Instant>,
    reaper_off_logged: bool,
    /// Where each round's CloudWatch EMF lines go (`scaler run --emf-file`); none: not written.
    pub emf: Option<crate::emf::Sink>,
}

impl FleetLoop {
    pub fn new(
        agent_type: &str,
        queue: Box<dyn Queue>,
        fleet: Box<dyn Fleet>,
        policy: PolicyConfig,
        dry_run: bool,
        poll_interval: Duration,
    ) -> FleetLoop {
        let state = PolicyState::new(&policy);
        let status = Arc::new(Mutex::new(LoopStatus {
            agent_type: agent_type.to_string(),
            ..LoopStatus::default()
        }));
        FleetLoop {
            agent_type: agent_type.to_string(),
            queue,
            fleet,
            policy,
            state,
            dry_run,
            poll_interval,
            status,
            started: Instant::now(),
            emf: None,
            reaper: None,
            last_reap: None,
            reaper_off_logged: false,
        }
    }

    /// Runs a reaper pass every `config.interval_seconds`.
    pub fn with_reaper(mut self, config: ReaperConfig) -> FleetLoop {
        self.reaper = Some(config);
        self
    }

    /// One reaper pass: never acts when the agent list or the instances cannot be read.
    fn reap(&mut self, unix_now: i64) {
        let Some(config) = self.reaper else { return };
        if self
            .last_reap
            .is_some_and(|at| at.elapsed() < Duration::from_secs(config.interval_seconds))
        {
            return;
        }
        self.last_reap = Some(Instant::now());
        let agents = match self.queue.agents() {
            Ok(Some(agents)) => agents,
            Ok(None) => {
                if !self.reaper_off_logged {
                    self.reaper_off_logged = true;
                    tracing::info!(agent_type = %self.agent_type, "the control plane does not list agents: the reaper is off (instances still enforce their own boot deadline)");
                }
                return;
            }
            Err(error) => {
                tracing::warn!(agent_type = %self.agent_type, %error, "reaper pass skipped: no agent list");
                return;
            }
        };
        let instances = match self.fleet.instances() {
            Ok(instances) => instances,
            Err(error) => {
                tracing::warn!(agent_type = %self.agent_type, %error, "reaper pass skipped: no instance list");
                return;
            }
        };
        let (mut marked, mut terminated) = (0, 0);
        let actions = reaper::decide(&instances, &agents, &config, unix_now);
        let acting = actions.len();
        let in_service = instances.iter().filter(|i| i.in_service).count();
        for action in actions {
            tracing::info!(agent_type = %self.agent_type, action = ?action, dry_run = self.dry_run, "reaper");
            if self.dry_run {
                continue;
            }
            let result = match &action {
                ReapAction::Mark { instance, mark } => self
                    .fleet
                    .set_mark(instance, Some(mark))
                    .map(|()| marked += 1),
                ReapAction::Unmark { instance } => self.fleet.set_mark(instance, None),
                ReapAction::Terminate { instance, .. } => self
                    .fleet
                    .terminate(instance, true)
                    .map(|()| terminated += 1),
            };
            if let Err(error) = result {
                tracing::error!(agent_type = %self.agent_type, %error, "reaper action failed");
            }
        }
        // Every pass, those that change nothing included: "the reaper left it alone" is then
        // read off passes made, not off a pause.
        tracing::debug!(agent_type = %self.agent_type, in_service, actions = acting, "reaper pass done");
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.reaper_marked += marked;
        status.reaper_terminated += terminated;
    }

    /// One round on the real clock.
    pub fn tick(&mut self) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.tick_at(now_ms, crate::unix_now());
    }

    /// One round at a given time (the simulator drives it on a virtual clock): poll (waiting up
    /// to the poll interval for a change, where the queue can), describe, decide, act.
    pub fn tick_at(&mut self, now_ms: u64, unix_now: i64) {
        let snapshot = match self.queue.poll(self.poll_interval) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                self.status.lock().unwrap_or_else(|p| p.into_inner()).errors += 1;
                tracing::warn!(agent_type = %self.agent_type, %error, "no queue metrics yet");
                // Keep the fleet reaped and at its minimum even without metrics.
                let _ = self.fleet.describe();
                return;
            }
        };
        let observed = Instant::now();
        let pools = match self.fleet.describe() {
            Ok(pools) => pools,
            Err(error) => {
                self.status.lock().unwrap_or_else(|p| p.into_inner()).errors += 1;
                tracing::error!(agent_type = %self.agent_type, %error, "describing the fleet failed");
                return;
            }
        };
        let decision = decide(
            &snapshot,
            &pools,
            &self.policy,
            &mut self.state,
            now_ms,
            unix_now,
        );
        let (raised, errors) = self.act(&snapshot, &pools, &decision);
        let (completed, replaced) = self.fleet.counts();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.queue = snapshot;
        status.desired = pools
            .iter()
            .map(|p| p.desired)
            .sum::<u32>()
            .max(decision.raises.iter().map(|r| r.1).sum());
        status.in_service = pools.iter().map(|p| p.in_service).sum();
        status.pending = pools.iter().map(|p| p.pending).sum();
        status.decisions += 1;
        status.raises += raised;
        status.errors += errors;
        status.completed_instances = completed;
        status.replaced_instances = replaced;
        if raised > 0 {
            status.last_reaction_ms = observed.elapsed().as_secs_f64() * 1000.0;
        }
        let (reaction_ms, reaped_before) = (
            (raised > 0).then_some(status.last_reaction_ms),
            status.reaper_terminated,
        );
        drop(status);
        self.reap(unix_now);
        self.write_emf(
            unix_now,
            (&snapshot, &pools),
            &decision,
            (reaction_ms, reaped_before),
        );
    }

    /// Writes the round's CloudWatch EMF lines, when the loop has a sink for them.
    fn write_emf(
        &self,
        unix_now: i64,
        (queue, pools): (&QueueSnapshot, &[PoolState]),
        decision: &Decision,
        (reaction_ms, reaped_before): (Option<f64>, u64),
    ) {
        let Some(sink) = &self.emf else {
            return;
        };
        let reaped = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reaper_terminated;
        let launches = match self.dry_run {
            true => 0,
            false => crate::emf::launches(pools, &decision.raises),
        };
        let round = crate::emf::Round {
            agent_type: &self.agent_type,
            timestamp_ms: unix_now.saturating_mul(1000),
            queue,
            pools,
            launches,
            reaps: reaped.saturating_sub(reaped_before),
            reaction_ms,
        };
        crate::emf::write(sink, &round);
    }

    /// Logs a decision (at info when it changes anything, with its inputs) and applies it unless
    /// this is a dry run: raises, then warm pool sizes. Returns (calls that worked, that failed).
    fn act(
        &mut self,
        snapshot: &QueueSnapshot,
        pools: &[PoolState],
        decision: &Decision,
    ) -> (u64, u64) {
        if decision.raises.is_empty() && decision.warm_pools.is_empty() {
            tracing::debug!(agent_type = %self.agent_type, reason = %decision.reason, "decision");
            return (0, 0);
        }
        tracing::info!(
            agent_type = %self.agent_type,
            queued = snapshot.queued,
            running = snapshot.running,
            idle = snapshot.idle,
            occupied = snapshot.occupied,
            metrics_age_ms = snapshot.age_ms,
            desired = pools.iter().map(|p| p.desired).sum::<u32>(),
            raises = ?decision.raises,
            warm_pools = ?decision.warm_pools,
            dry_run = self.dry_run,
            reason = %decision.reason,
            "decision"
        );
        let (mut raised, mut errors) = (0, 0);
        if self.dry_run {
            return (0, 0);
        }
        for (pool, desired) in &decision.raises {
            match self.fleet.raise_desired(pool, *desired) {
                Ok(()) => raised += 1,
                Err(error) => {
                    errors += 1;
                    tracing::error!(agent_type = %self.agent_type, %pool, %error, "raising desired capacity failed");
                }
            }
        }
        for (pool, size) in &decision.warm_pools {
            if let Err(error) = self.fleet.set_warm_pool(pool, *size) {
                errors += 1;
                tracing::error!(agent_type = %self.agent_type, %pool, %error, "sizing the warm pool failed");
            }
        }
        (raised, errors)
    }

    /// Runs until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.tick();
        }
    }
}

/// A metric: name (counters without `_total`: the encoder adds it), help, how to read it.
type Metric<T> = (&'static str, &'static str, fn(&LoopStatus) -> T);

const GAUGES: [Metric<i64>; 7] = [
    (
        "flotilla_scaler_desired",
        "Desired capacity of the fleet.",
        |s| s.desired.into(),
    ),
    ("flotilla_scaler_in_service", "Instances in service.", |s| {
        s.in_service.into()
    }),
    ("flotilla_scaler_pending", "Instances launching.", |s| {
        s.pending.into()
    }),
    (
        "flotilla_scaler_queue_queued",
        "Queued jobs last seen.",
        |s| s.queue.queued as i64,
    ),
    (
        "flotilla_scaler_queue_running",
        "Running jobs last seen.",
        |s| s.queue.running as i64,
    ),
    (
        "flotilla_scaler_metrics_age_milliseconds",
        "Age of the queue metrics last used.",
        |s| s.queue.age_ms as i64,
    ),
    (
        "flotilla_scaler_oldest_queued_seconds",
        "Wait of the oldest queued job.",
        |s| s.queue.oldest_queued_seconds.unwrap_or(0) as i64,
    ),
];

const REACTION: Metric<f64> = (
    "flotilla_scaler_reaction_milliseconds",
    "From seeing more demand to the raise call returning (last raise).",
    |s| s.last_reaction_ms,
);

const COUNTERS: [Metric<u64>; 7] = [
    (
        "flotilla_scaler_reaper_marked",
        "Stuck instances the reaper marked.",
        |s| s.reaper_marked,
    ),
    (
        "flotilla_scaler_reaper_terminated",
        "Stuck instances the reaper terminated (a mark confirmed on a later pass).",
        |s| s.reaper_terminated,
    ),
    ("flotilla_scaler_decisions", "Policy decisions made.", |s| {
        s.decisions
    }),
    (
        "flotilla_scaler_raises",
        "Desired-capacity raises applied.",
        |s| s.raises,
    ),
    (
        "flotilla_scaler_errors",
        "Failed queue reads, describes or raises.",
        |s| s.errors,
    ),
    (
        "flotilla_scaler_instances_completed",
        "Instances that removed themselves after their job.",
        |s| s.completed_instances,
    ),
    (
        "flotilla_scaler_instances_replaced",
        "Unhealthy instances replaced.",
        |s| s.replaced_instances,
    ),
];

/// One scrape's statuses, encoded by prometheus-client as constant samples (the loops own the
/// numbers; the client only writes them).
#[derive(Debug)]
struct Scrape(Vec<LoopStatus>);

impl Scrape {
    /// One family: HELP and TYPE, then a sample per fleet labelled with its agent type.
    fn family<T, M: EncodeMetric + TypedMetric>(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help, value): Metric<T>,
        metric: fn(T) -> M,
    ) -> fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
        for status in &self.0 {
            let labels = [("agent_type", status.agent_type.as_str())];
            metric(value(status)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // The order of the hand-written text: the reaction time before the oldest queued wait.
        let (before, after) = GAUGES.split_at(6);
        for &gauge in before {
            self.family(&mut encoder, gauge, ConstGauge::new)?;
        }
        self.family(&mut encoder, REACTION, ConstGauge::new)?;
        for &gauge in after {
            self.family(&mut encoder, gauge, ConstGauge::new)?;
        }
        for counter in COUNTERS {
            self.family(&mut encoder, counter, ConstCounter::new)?;
        }
        Ok(())
    }
}

/// Prometheus text (format 0.0.4) for the loops' statuses.
pub fn render_metrics(statuses: &[LoopStatus]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(statuses.to_vec())));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_their_names_help_types_and_labels() {
        let statuses = [
            LoopStatus {
                agent_type: "default".into(),
                desired: 3,
                decisions: 7,
                last_reaction_ms: 12.5,
                ..LoopStatus::default()
            },
            LoopStatus {
                agent_type: "gpu \"big\"".into(),
                ..LoopStatus::default()
            },
        ];
        let text = render_metrics(&statuses);
        for line in [
            "# HELP flotilla_scaler_desired Desired capacity of the fleet.",
            "# TYPE flotilla_scaler_desired gauge",
            "flotilla_scaler_desired{agent_type=\"default\"} 3",
            "flotilla_scaler_reaction_milliseconds{agent_type=\"default\"} 12.5",
            "# TYPE flotilla_scaler_decisions_total counter",
            "flotilla_scaler_decisions_total{agent_type=\"default\"} 7",
            "flotilla_scaler_decisions_total{agent_type=\"gpu \\\"big\\\"\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("# TYPE").count(), 15);
        assert!(!text.contains("# EOF"));
    }
}
