//! Old against new for the hub's hand-written Prometheus text, which `hub::prometheus` replaced
//! with `prometheus-client` (issue 24), in one run: figures, not assertions, apart from the two
//! writing the same samples. The old writer lives on only here, as the baseline. Both write the
//! same text line for line except a histogram's `_sum`, which the client writes as a float
//! (`12.0` where the old text had `12`): those lines are compared as numbers; the new text also
//! ends with the long-polls gauge, added after the swap ([`LONG_POLLS`]). Rounds of old and
//! new alternate; it prints each median in ns per call and the new/old ratio.
//! `cargo bench -p hub --bench swaps`.

use hub::hub::{Histogram, HubCounters};
use hub::prometheus::{render, Scrape};
use protocol::{AgentCounts, JobCounts, QueueMetrics};
use std::hint::black_box;
use std::time::Instant;

/// The hand-written text as it was in `hub/src/api.rs`, kept as the baseline.
fn old_render(types: &[(String, QueueMetrics)], counters: &HubCounters) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP flotilla_hub_jobs Jobs by agent type and state.\n# TYPE flotilla_hub_jobs gauge\n",
    );
    for (name, metrics) in types {
        out.push_str(&format!(
            "flotilla_hub_jobs{{agent_type=\"{name}\",state=\"queued\"}} {}\n",
            metrics.jobs.queued
        ));
        out.push_str(&format!(
            "flotilla_hub_jobs{{agent_type=\"{name}\",state=\"running\"}} {}\n",
            metrics.jobs.running
        ));
    }
    out.push_str("# HELP flotilla_hub_agents Connected agents by agent type and state.\n# TYPE flotilla_hub_agents gauge\n");
    for (name, metrics) in types {
        out.push_str(&format!(
            "flotilla_hub_agents{{agent_type=\"{name}\",state=\"idle\"}} {}\n",
            metrics.agents.idle
        ));
        out.push_str(&format!(
            "flotilla_hub_agents{{agent_type=\"{name}\",state=\"occupied\"}} {}\n",
            metrics.agents.occupied
        ));
    }
    out.push_str("# HELP flotilla_hub_oldest_queued_seconds Age of the oldest queued job.\n# TYPE flotilla_hub_oldest_queued_seconds gauge\n");
    for (name, metrics) in types {
        out.push_str(&format!(
            "flotilla_hub_oldest_queued_seconds{{agent_type=\"{name}\"}} {}\n",
            metrics.oldest_queued_seconds.unwrap_or(0)
        ));
    }
    out.push_str("# HELP flotilla_hub_jobs_finished_total Finished jobs by result.\n# TYPE flotilla_hub_jobs_finished_total counter\n");
    for ((name, result), count) in &counters.finished {
        out.push_str(&format!(
            "flotilla_hub_jobs_finished_total{{agent_type=\"{name}\",result=\"{result}\"}} {count}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP flotilla_hub_jobs_requeued_total Jobs re-queued after their agent was lost or interrupted.\n# TYPE flotilla_hub_jobs_requeued_total counter\nflotilla_hub_jobs_requeued_total {}\n",
        counters.requeued
    ));
    out.push_str(&format!(
        "# HELP flotilla_hub_agents_lost_total Agents that stopped syncing.\n# TYPE flotilla_hub_agents_lost_total counter\nflotilla_hub_agents_lost_total {}\n",
        counters.lost_agents
    ));
    for (metric, help, histogram) in [
        (
            "flotilla_hub_time_to_start_seconds",
            "Time from queued to started.",
            &counters.time_to_start,
        ),
        (
            "flotilla_hub_job_duration_seconds",
            "Time from started to finished.",
            &counters.duration,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {metric} {help}\n# TYPE {metric} histogram\n"
        ));
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            out.push_str(&format!("{metric}_bucket{{le=\"{bound}\"}} {count}\n"));
        }
        out.push_str(&format!(
            "{metric}_bucket{{le=\"+Inf\"}} {}\n{metric}_sum {}\n{metric}_count {}\n",
            histogram.count, histogram.sum, histogram.count
        ));
    }
    out
}

/// What the new text writes that the old never did: the gauge of long-polls waiting (issue 24),
/// last, for the scrape of [`scrape`].
const LONG_POLLS: &str = "# HELP flotilla_hub_long_polls_waiting Queue metrics long-polls waiting for the counts to change.\n# TYPE flotilla_hub_long_polls_waiting gauge\nflotilla_hub_long_polls_waiting 5\n";

/// A hub's scrape: four agent types, finished jobs of three results, both histograms in use.
fn scrape() -> Scrape {
    let types = (0..4)
        .map(|index| {
            let metrics = QueueMetrics {
                jobs: JobCounts {
                    queued: 12 + index,
                    running: 3,
                },
                agents: AgentCounts {
                    idle: index,
                    occupied: 3,
                },
                version: Some(7),
                oldest_queued_seconds: (index != 2).then_some(40 + index),
            };
            (format!("fleet-{index}"), metrics)
        })
        .collect();
    let mut counters = HubCounters::default();
    for (index, result) in ["passed", "failed", "stopped"].into_iter().enumerate() {
        counters
            .finished
            .insert(("fleet-0".into(), result.into()), 10 + index as u64);
    }
    counters.requeued = 4;
    counters.lost_agents = 2;
    let observe = |histogram: &mut Histogram, values: &[f64]| {
        values.iter().for_each(|value| histogram.observe(*value));
    };
    observe(
        &mut counters.time_to_start,
        &[0.0, 3.0, 12.0, 45.0, 700.0, 5000.0],
    );
    observe(&mut counters.duration, &[2.5, 61.0, 3599.0]);
    Scrape {
        types,
        counters,
        long_polls_waiting: 5,
    }
}

/// The two texts, line for line; `_sum` lines by value.
fn assert_same_samples(old: &str, new: &str) {
    let (old, new): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    assert_eq!(old.len(), new.len(), "old:\n{old:#?}\nnew:\n{new:#?}");
    for (old_line, new_line) in old.iter().zip(&new) {
        let sum = |line: &str| {
            let (name, value) = line.rsplit_once(' ')?;
            name.ends_with("_sum")
                .then(|| (name.to_string(), value.parse::<f64>().ok()))
        };
        match (sum(old_line), sum(new_line)) {
            (Some(old_sum), Some(new_sum)) => assert_eq!(old_sum, new_sum),
            _ => assert_eq!(old_line, new_line),
        }
    }
}

/// Nanoseconds per call of each closure, one median per side, rounds interleaved.
fn compare(label: &str, calls: u64, mut old: impl FnMut(), mut new: impl FnMut()) {
    const ROUNDS: usize = 15;
    let mut timing = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (side, run) in [&mut old as &mut dyn FnMut(), &mut new]
            .into_iter()
            .enumerate()
        {
            let started = Instant::now();
            (0..calls).for_each(|_| run());
            timing[side].push(started.elapsed().as_nanos() as f64 / calls as f64);
        }
    }
    for side in &mut timing {
        side.sort_by(f64::total_cmp);
    }
    let (old_ns, new_ns) = (timing[0][ROUNDS / 2], timing[1][ROUNDS / 2]);
    println!(
        "{label:<34} old {old_ns:>9.1} ns  new {new_ns:>9.1} ns  new/old {:.2}",
        new_ns / old_ns
    );
}

fn main() {
    let scrape = scrape();
    let old = old_render(&scrape.types, &scrape.counters) + LONG_POLLS;
    let new = render(Scrape {
        types: scrape.types.clone(),
        counters: scrape.counters.clone(),
        long_polls_waiting: scrape.long_polls_waiting,
    });
    assert_same_samples(&old, &new);
    println!(
        "old and new write the same samples ({} lines)",
        new.lines().count()
    );
    compare(
        "/metrics text (4 agent types)",
        5_000,
        || {
            black_box(old_render(
                black_box(&scrape.types),
                black_box(&scrape.counters),
            ));
        },
        || {
            let copy = Scrape {
                types: scrape.types.clone(),
                counters: scrape.counters.clone(),
                long_polls_waiting: scrape.long_polls_waiting,
            };
            black_box(render(black_box(copy)));
        },
    );
}
