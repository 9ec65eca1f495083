//! The hub's Prometheus text (`GET /metrics`), written by `prometheus-client` as the scaler's is
//! (`scaling::control`): the hub owns the numbers (its queue metrics per agent type and the
//! counters that follow committed job transitions, `hub/src/hub/metrics.rs`), and one scrape
//! encodes them as constant samples, label values escaped by the client. The text is the one the
//! hub wrote by hand before, sample for sample (`hub/benches/swaps.rs` keeps the old writer as the
//! baseline and checks), except that a histogram's `_sum` is written as a float (`12.0`), and
//! for the gauge of queue-metrics long-polls waiting for a change, added after (last in the text).

use crate::hub::{Histogram, HubCounters};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use protocol::QueueMetrics;
use std::fmt;

/// What one scrape writes: the queue metrics of each agent type, the hub's counters, and how
/// many queue-metrics long-polls (`?version=V&wait=S`) wait on this hub for the counts to change.
#[derive(Debug)]
pub struct Scrape {
    pub types: Vec<(String, QueueMetrics)>,
    pub counters: HubCounters,
    pub long_polls_waiting: usize,
}

/// Prometheus text (format 0.0.4) of one scrape.
pub fn render(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// A gauge family over agent types: per type, one sample per `(state label, value)`.
type ByState = fn(&QueueMetrics) -> [(&'static str, i64); 2];

const BY_STATE: [(&str, &str, ByState); 2] = [
    (
        "flotilla_hub_jobs",
        "Jobs by agent type and state.",
        |metrics| {
            [
                ("queued", metrics.jobs.queued as i64),
                ("running", metrics.jobs.running as i64),
            ]
        },
    ),
    (
        "flotilla_hub_agents",
        "Connected agents by agent type and state.",
        |metrics| {
            [
                ("idle", metrics.agents.idle as i64),
                ("occupied", metrics.agents.occupied as i64),
            ]
        },
    ),
];

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for (name, help, samples) in BY_STATE {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (agent_type, metrics) in &self.types {
                for (state, value) in samples(metrics) {
                    let labels = [("agent_type", agent_type.as_str()), ("state", state)];
                    ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        self.oldest_queued(&mut encoder)?;
        self.counters(&mut encoder)?;
        for (name, help, histogram) in [
            (
                "flotilla_hub_time_to_start_seconds",
                "Time from queued to started.",
                &self.counters.time_to_start,
            ),
            (
                "flotilla_hub_job_duration_seconds",
                "Time from started to finished.",
                &self.counters.duration,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            ConstHistogram(histogram).encode(family)?;
        }
        let family = encoder.encode_descriptor(
            "flotilla_hub_long_polls_waiting",
            "Queue metrics long-polls waiting for the counts to change.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.long_polls_waiting as i64).encode(family)?;
        Ok(())
    }
}

impl Scrape {
    fn oldest_queued(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "flotilla_hub_oldest_queued_seconds",
            "Age of the oldest queued job.",
            None,
            MetricType::Gauge,
        )?;
        for (agent_type, metrics) in &self.types {
            let age = metrics.oldest_queued_seconds.unwrap_or(0) as i64;
            let labels = [("agent_type", agent_type.as_str())];
            ConstGauge::new(age).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counters(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut finished = encoder.encode_descriptor(
            "flotilla_hub_jobs_finished",
            "Finished jobs by result.",
            None,
            MetricType::Counter,
        )?;
        for ((agent_type, result), count) in &self.counters.finished {
            let labels = [("agent_type", agent_type.as_str()), ("result", result)];
            ConstCounter::new(*count).encode(finished.encode_family(&labels)?)?;
        }
        for (name, help, count) in [
            (
                "flotilla_hub_jobs_requeued",
                "Jobs re-queued after their agent was lost or interrupted.",
                self.counters.requeued,
            ),
            (
                "flotilla_hub_agents_lost",
                "Agents that stopped syncing.",
                self.counters.lost_agents,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(count).encode(family)?;
        }
        Ok(())
    }
}

/// A histogram the hub counted (cumulative bucket counts), written as it stands.
#[derive(Debug)]
struct ConstHistogram<'a>(&'a Histogram);

impl TypedMetric for ConstHistogram<'_> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        // The client adds the buckets up itself: give it each bucket's own count.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = (self.0.bounds.iter())
            .zip(&self.0.counts)
            .map(|(bound, cumulative)| {
                let own = cumulative - below;
                below = *cumulative;
                (*bound, own)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{AgentCounts, JobCounts};

    #[test]
    fn the_text_keeps_the_hubs_names_labels_and_cumulative_buckets() {
        let metrics = QueueMetrics {
            jobs: JobCounts {
                queued: 2,
                running: 1,
            },
            agents: AgentCounts {
                idle: 0,
                occupied: 1,
            },
            version: None,
            oldest_queued_seconds: Some(30),
        };
        let mut counters = HubCounters::default();
        counters.finished.insert(("gpu".into(), "passed".into()), 1);
        counters.time_to_start.observe(3.0);
        counters.time_to_start.observe(20.0);
        let text = render(Scrape {
            types: vec![("gpu".into(), metrics)],
            counters,
            long_polls_waiting: 3,
        });
        for line in [
            "# TYPE flotilla_hub_jobs gauge",
            "flotilla_hub_jobs{agent_type=\"gpu\",state=\"queued\"} 2",
            "flotilla_hub_agents{agent_type=\"gpu\",state=\"occupied\"} 1",
            "flotilla_hub_oldest_queued_seconds{agent_type=\"gpu\"} 30",
            "# TYPE flotilla_hub_jobs_finished_total counter",
            "flotilla_hub_jobs_finished_total{agent_type=\"gpu\",result=\"passed\"} 1",
            "flotilla_hub_agents_lost_total 0",
            "flotilla_hub_time_to_start_seconds_bucket{le=\"1\"} 0",
            "flotilla_hub_time_to_start_seconds_bucket{le=\"5\"} 1",
            "flotilla_hub_time_to_start_seconds_bucket{le=\"30\"} 2",
            "flotilla_hub_time_to_start_seconds_bucket{le=\"+Inf\"} 2",
            "flotilla_hub_time_to_start_seconds_count 2",
            "# TYPE flotilla_hub_long_polls_waiting gauge",
            "flotilla_hub_long_polls_waiting 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
