//! Queue state for the control loop. [`MetricsQueue`] reads `GET /api/v1/self_hosted_agents/metrics`
//! — the hub's or Semaphore's — with the agent type's registration token. When the answer carries a
//! `version` (the hub), it long-polls (`?version=&wait=`) so a new job is seen within milliseconds;
//! otherwise it polls. Errors back off exponentially; the token never appears in a log line.

use crate::policy::QueueSnapshot;
use protocol::metrics::{AgentList, AgentSummary};
use protocol::QueueMetrics;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why the queue could not be read. The token is never part of one.
#[derive(Debug, Error)]
pub enum QueueError {
    #[error("{what} from {url}: {source}")]
    Http {
        what: &'static str,
        url: String,
        source: reqwest::Error,
    },
    #[error("{what} from {url} answered HTTP {status}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
    },
}

pub trait Queue: Send {
    /// The queue's counts, waiting up to `wait` for a change where the source can tell one.
    /// After errors it returns the last counts with their age (so stale counts never raise).
    fn poll(&mut self, wait: Duration) -> Result<QueueSnapshot, QueueError>;
    /// The agent type's registered agents, where the control plane lists them (the hub);
    /// `None` where it cannot (Semaphore), which turns the reaper off.
    fn agents(&mut self) -> Result<Option<Vec<AgentSummary>>, QueueError> {
        Ok(None)
    }
}

pub struct MetricsQueue {
    http: reqwest::blocking::Client,
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
            http: reqwest::blocking::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
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

    /// A GET with the registration token (never logged), its JSON body decoded. `Ok(None)` for
    /// 404 when `missing_is_none` (Semaphore has no agent list for registration tokens).
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        url: &str,
        timeout: Duration,
        missing_is_none: bool,
    ) -> Result<Option<T>, QueueError> {
        let http_error = |source| QueueError::Http {
            what,
            url: url.to_string(),
            source,
        };
        let response = self
            .http
            .get(url)
            .timeout(timeout)
            .header("Authorization", format!("Token {}", self.token))
            .header("Agent", "flotilla-scaler")
            .send()
            .map_err(http_error)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND && missing_is_none {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(QueueError::Status {
                what,
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        response.json::<T>().map(Some).map_err(http_error)
    }

    fn agents_url(&self) -> String {
        self.url
            .replace("/self_hosted_agents/metrics", "/self_hosted_agents/agents")
    }

    fn fetch(&mut self, wait: Duration) -> Result<QueueMetrics, QueueError> {
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
        let metrics = self.get_json::<QueueMetrics>("metrics", &url, timeout, false)?;
        metrics.ok_or_else(|| QueueError::Status {
            what: "metrics",
            url: self.url.clone(),
            status: 404,
        })
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
    fn agents(&mut self) -> Result<Option<Vec<AgentSummary>>, QueueError> {
        let url = self.agents_url();
        let list = self.get_json::<AgentList>("agents", &url, Duration::from_secs(10), true)?;
        Ok(list.map(|list| list.agents))
    }

    fn poll(&mut self, wait: Duration) -> Result<QueueSnapshot, QueueError> {
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
