//! Old against new for the hand-written Prometheus text that `scaling::control` replaced with
//! `prometheus-client` (issue 12), in one run: figures, not assertions, apart from the two writing
//! the same text. The old code lives on only here, as the baseline. Rounds of old and new
//! alternate so that drift hits both; it prints each median in ns per call, the new/old ratio and
//! the noise (the spread of the old rounds). `cargo bench -p scaling --bench swaps`. (The cron
//! matcher stayed hand-written: see the opening of `scaling/src/schedule.rs`.)

use scaling::control::{render_metrics, LoopStatus};
use scaling::policy::QueueSnapshot;
use std::hint::black_box;
use std::time::Instant;

/// The hand-written Prometheus text as it was, kept as the baseline.
mod old_metrics {
    use scaling::control::LoopStatus;

    type Metric<T> = (&'static str, &'static str, fn(&LoopStatus) -> T);

    fn write_family<T: std::fmt::Display>(
        out: &mut String,
        (name, help, value): Metric<T>,
        kind: &str,
        statuses: &[LoopStatus],
    ) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for status in statuses {
            out.push_str(&format!(
                "{name}{{agent_type=\"{}\"}} {}\n",
                status.agent_type,
                value(status)
            ));
        }
    }

    const GAUGES: [Metric<f64>; 8] = [
        (
            "flotilla_scaler_desired",
            "Desired capacity of the fleet.",
            |s| s.desired as f64,
        ),
        ("flotilla_scaler_in_service", "Instances in service.", |s| {
            s.in_service as f64
        }),
        ("flotilla_scaler_pending", "Instances launching.", |s| {
            s.pending as f64
        }),
        (
            "flotilla_scaler_queue_queued",
            "Queued jobs last seen.",
            |s| s.queue.queued as f64,
        ),
        (
            "flotilla_scaler_queue_running",
            "Running jobs last seen.",
            |s| s.queue.running as f64,
        ),
        (
            "flotilla_scaler_metrics_age_milliseconds",
            "Age of the queue metrics last used.",
            |s| s.queue.age_ms as f64,
        ),
        (
            "flotilla_scaler_reaction_milliseconds",
            "From seeing more demand to the raise call returning (last raise).",
            |s| s.last_reaction_ms,
        ),
        (
            "flotilla_scaler_oldest_queued_seconds",
            "Wait of the oldest queued job.",
            |s| s.queue.oldest_queued_seconds.unwrap_or(0) as f64,
        ),
    ];

    const COUNTERS: [Metric<u64>; 7] = [
        (
            "flotilla_scaler_reaper_marked_total",
            "Stuck instances the reaper marked.",
            |s| s.reaper_marked,
        ),
        (
            "flotilla_scaler_reaper_terminated_total",
            "Stuck instances the reaper terminated (a mark confirmed on a later pass).",
            |s| s.reaper_terminated,
        ),
        (
            "flotilla_scaler_decisions_total",
            "Policy decisions made.",
            |s| s.decisions,
        ),
        (
            "flotilla_scaler_raises_total",
            "Desired-capacity raises applied.",
            |s| s.raises,
        ),
        (
            "flotilla_scaler_errors_total",
            "Failed queue reads, describes or raises.",
            |s| s.errors,
        ),
        (
            "flotilla_scaler_instances_completed_total",
            "Instances that removed themselves after their job.",
            |s| s.completed_instances,
        ),
        (
            "flotilla_scaler_instances_replaced_total",
            "Unhealthy instances replaced.",
            |s| s.replaced_instances,
        ),
    ];

    pub(crate) fn render_metrics(statuses: &[LoopStatus]) -> String {
        let mut out = String::new();
        for gauge in GAUGES {
            write_family(&mut out, gauge, "gauge", statuses);
        }
        for counter in COUNTERS {
            write_family(&mut out, counter, "counter", statuses);
        }
        out
    }
}

/// Nanoseconds per call of each closure, one median per side, rounds interleaved.
fn compare(label: &str, calls: u64, mut old: impl FnMut(u64), mut new: impl FnMut(u64)) {
    const ROUNDS: usize = 15;
    let mut timing = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (side, run) in [&mut old as &mut dyn FnMut(u64), &mut new]
            .into_iter()
            .enumerate()
        {
            let started = Instant::now();
            (0..calls).for_each(&mut *run);
            timing[side].push(started.elapsed().as_nanos() as f64 / calls as f64);
        }
    }
    for side in &mut timing {
        side.sort_by(f64::total_cmp);
    }
    let median = |side: &Vec<f64>| side[ROUNDS / 2];
    let (old_ns, new_ns) = (median(&timing[0]), median(&timing[1]));
    let quartiles = (timing[0][ROUNDS * 3 / 4] - timing[0][ROUNDS / 4]) / old_ns;
    println!(
        "{label:<34} old {old_ns:>9.1} ns  new {new_ns:>9.1} ns  new/old {:.2}  noise ±{:.0}%",
        new_ns / old_ns,
        quartiles * 50.0
    );
}

/// Old and new write the same text (with a reaction time that both print alike), then timed.
fn metrics() {
    let statuses: Vec<LoopStatus> = (0..4)
        .map(|fleet| LoopStatus {
            agent_type: format!("fleet-{fleet}"),
            queue: QueueSnapshot {
                queued: 12,
                running: 3,
                oldest_queued_seconds: Some(40),
                ..QueueSnapshot::default()
            },
            desired: 5 + fleet,
            in_service: 4,
            decisions: 12_345,
            last_reaction_ms: 17.25,
            ..LoopStatus::default()
        })
        .collect();
    assert_eq!(
        old_metrics::render_metrics(&statuses),
        render_metrics(&statuses)
    );
    compare(
        "render_metrics (4 fleets)",
        20_000,
        |_| {
            black_box(old_metrics::render_metrics(black_box(&statuses)));
        },
        |_| {
            black_box(render_metrics(black_box(&statuses)));
        },
    );
}

fn main() {
    metrics();
}
