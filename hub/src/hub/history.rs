//! A short sampled history of the queue for the console's overview chart: every agent type's
//! queued and running jobs and connected agents, sampled by housekeeping every
//! [`SAMPLE_EVERY_SECS`] and kept for [`HISTORY_SECS`]. It lives in memory only: after a restart
//! the chart starts again, which is all a glance at "the last hours" needs.

use super::metrics::metrics_of;
use super::Hub;
use std::collections::{BTreeMap, VecDeque};

/// Seconds between samples.
pub(crate) const SAMPLE_EVERY_SECS: i64 = 10;
/// How far back the history reaches (six hours).
pub(crate) const HISTORY_SECS: i64 = 6 * 3600;

/// The queue of one agent type at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    pub queued: u64,
    pub running: u64,
    /// Connected agents (idle and occupied): the fleet's size as the hub sees it.
    pub agents: u64,
}

/// Samples per agent type, oldest first.
#[derive(Debug, Default)]
pub(super) struct History {
    by_type: BTreeMap<String, VecDeque<Sample>>,
}

impl History {
    /// Adds `sample` for `agent_type` and forgets what is older than [`HISTORY_SECS`].
    pub(super) fn record(&mut self, agent_type: &str, sample: Sample) {
        let samples = self.by_type.entry(agent_type.to_string()).or_default();
        samples.push_back(sample);
        while samples
            .front()
            .is_some_and(|oldest| oldest.at < sample.at - HISTORY_SECS)
        {
            samples.pop_front();
        }
    }

    pub(super) fn samples(&self, agent_type: &str) -> Vec<Sample> {
        self.by_type
            .get(agent_type)
            .map(|samples| samples.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl Hub {
    /// Takes one sample of every agent type's queue (housekeeping calls this).
    pub fn sample_history(&self, now: i64) {
        let mut guard = self.lock();
        let core = &mut guard.core;
        let samples: Vec<(String, Sample)> = core
            .types
            .keys()
            .map(|name| {
                let metrics = metrics_of(core, name, now);
                let sample = Sample {
                    at: now,
                    queued: metrics.jobs.queued,
                    running: metrics.jobs.running,
                    agents: metrics.agents.idle + metrics.agents.occupied,
                };
                (name.clone(), sample)
            })
            .collect();
        for (name, sample) in samples {
            core.history.record(&name, sample);
        }
    }

    /// The sampled history of `agent_type`, oldest first.
    pub fn history(&self, agent_type: &str) -> Vec<Sample> {
        self.lock().core.history.samples(agent_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64, queued: u64) -> Sample {
        Sample {
            at,
            queued,
            running: 0,
            agents: 0,
        }
    }

    #[test]
    fn history_forgets_samples_older_than_its_window() {
        let mut history = History::default();
        history.record("gpu", sample(0, 1));
        history.record("gpu", sample(HISTORY_SECS, 2));
        history.record("gpu", sample(HISTORY_SECS + 1, 3));
        let kept: Vec<u64> = history.samples("gpu").iter().map(|s| s.queued).collect();
        assert_eq!(kept, vec![2, 3]);
        assert!(history.samples("cpu").is_empty());
    }
}
