//! Queue state for the control loop. [`MetricsQueue`] reads `GET /api/v1/self_hosted_agents/metrics`
//! — the hub's or Semaphore's — with the agent type's registration token. When the answer carries a
//! `version` (the hub), it long-polls (`?version=&wait=`) so a new job is seen within milliseconds;
//! otherwise it polls. Errors back off exponentially; the token never appears in a log line.

use crate::policy::QueueSnapshot;
use protocol::metrics::{AgentList, AgentSummary};
use protocol::QueueMetrics;
use std::time::{Duration, Instant};

pub trait Queue: Send {
    /// The queue's counts, waiting up to `wait` for a change where the source can tell one.
    /// After errors it returns the last counts with their age (so stale counts never raise).
    fn poll(&mut self, wait: Duration) -> Result<QueueSnapshot, String>;
    /// The agent type's registered agents, where the control plane lists them (the hub);
    /// `None` where it cannot (Semaphore), which turns the reaper off.
    fn agents(&mut self) -> Result<Option<Vec<AgentSummary>>, String> {
        Ok(None)
    }
}

pub struct MetricsQueue {
    http: ureq::Agent,
    url: String,
    token: String,
    long_poll: bool,
    version: Option<u64>,
    last: Option<(QueueSnapshot, Instant)>,
    backoff: Duration,
    /// When the last request went out (plain polling paces itself from here).
    last_request: Option<Instant>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl MetricsQueue {
    /// `endpoint` is the control plane's base URL (`http://127.0.0.1:8080`,
    /// `https://org.semaphoreci.com`).
    pub fn new(endpoint: &str, token: &str, long_poll: bool) -> MetricsQueue {
        MetricsQueue {
            http: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .build(),
            url: format!(
                "{}/api/v1/self_hosted_agents/metrics",
                endpoint.trim_end_matches('/')
            ),
            token: token.to_string(),
            long_poll,
            version: None,
            last: None,
            backoff: Duration::ZERO,
            last_request: None,
        }
    }

    /// A GET with the registration token (never logged). The error is ureq's own, as its calls return it.
    #[allow(clippy::result_large_err)]
    fn get(&self, url: &str, timeout: Duration) -> Result<ureq::Response, ureq::Error> {
        self.http
            .get(url)
            .timeout(timeout)
            .set("Authorization", &format!("Token {}", self.token))
            .set("Agent", "flotilla-scaler")
            .call()
    }

    fn agents_url(&self) -> String {
        self.url
            .replace("/self_hosted_agents/metrics", "/self_hosted_agents/agents")
    }

    fn fetch(&mut self, wait: Duration) -> Result<QueueMetrics, String> {
        let (url, timeout) = match (self.long_poll, self.version) {
            (true, Some(version)) => {
                let seconds = wait.as_secs().max(1);
                (
                    format!("{}?version={version}&wait={seconds}", self.url),
                    Duration::from_secs(seconds + 10),
                )
            }
            _ => (self.url.clone(), Duration::from_secs(10)),
        };
        let response = self.get(&url, timeout);
        match response {
            Ok(response) => response
                .into_json::<QueueMetrics>()
                .map_err(|e| format!("metrics from {}: invalid JSON: {e}", self.url)),
            Err(ureq::Error::Status(code, _)) => {
                Err(format!("metrics from {} answered HTTP {code}", self.url))
            }
            Err(error) => Err(format!("metrics from {}: {}", self.url, error.kind())),
        }
    }
}

fn snapshot(metrics: &QueueMetrics, age_ms: u64) -> QueueSnapshot {
    QueueSnapshot {
        queued: metrics.jobs.queued as u32,
        running: metrics.jobs.running as u32,
        idle: metrics.agents.idle as u32,
        occupied: metrics.agents.occupied as u32,
        oldest_queued_seconds: metrics.oldest_queued_seconds,
        age_ms,
    }
}

impl Queue for MetricsQueue {
    fn agents(&mut self) -> Result<Option<Vec<AgentSummary>>, String> {
        let url = self.agents_url();
        let response = self.get(&url, Duration::from_secs(10));
        match response {
            Ok(response) => response
                .into_json::<AgentList>()
                .map(|list| Some(list.agents))
                .map_err(|e| format!("agents from {url}: invalid JSON: {e}")),
            // Semaphore has no such list for registration tokens.
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(ureq::Error::Status(code, _)) => {
                Err(format!("agents from {url} answered HTTP {code}"))
            }
            Err(error) => Err(format!("agents from {url}: {}", error.kind())),
        }
    }

    fn poll(&mut self, wait: Duration) -> Result<QueueSnapshot, String> {
        if !(self.long_poll && self.version.is_some()) {
            // Plain polling: wait out the interval first, so the counts returned are fresh.
            if let Some(at) = self.last_request {
                std::thread::sleep(wait.saturating_sub(at.elapsed()));
            }
        }
        self.last_request = Some(Instant::now());
        match self.fetch(wait) {
            Ok(metrics) => {
                self.backoff = Duration::ZERO;
                self.version = metrics.version;
                let now = snapshot(&metrics, 0);
                self.last = Some((now, Instant::now()));
                Ok(now)
            }
            Err(error) => {
                self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                self.version = None;
                tracing::warn!(error = %error, retry_in_ms = self.backoff.as_millis() as u64, "reading queue metrics failed");
                std::thread::sleep(self.backoff.min(wait.max(Duration::from_millis(100))));
                match &self.last {
                    Some((last, at)) => Ok(QueueSnapshot {
                        age_ms: at.elapsed().as_millis() as u64,
                        ..*last
                    }),
                    None => Err(error),
                }
            }
        }
    }
}
