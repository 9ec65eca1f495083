//! An IMDSv2 client: a session token from `PUT /latest/api/token`, then `GET /latest/meta-data/...`
//! with it. IMDSv1 (no token) is never used. Short timeouts, because a missing metadata service
//! must not hold up an agent; a token request that times out inside a container usually means the
//! instance's hop limit is 1, and the error says so.

use std::time::{Duration, Instant};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_TTL_SECONDS: u64 = 21_600;

pub struct Imds {
    endpoint: String,
    http: ureq::Agent,
    token: Option<(String, Instant)>,
}

impl Imds {
    pub fn new(endpoint: &str) -> Imds {
        let http = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .build();
        Imds {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
            token: None,
        }
    }

    fn token(&mut self) -> Result<String, String> {
        if let Some((token, expires)) = &self.token {
            if Instant::now() < *expires {
                return Ok(token.clone());
            }
        }
        let url = format!("{}/latest/api/token", self.endpoint);
        let mut last_error = String::new();
        for attempt in 1..=3 {
            match self
                .http
                .put(&url)
                .set(
                    "X-aws-ec2-metadata-token-ttl-seconds",
                    &TOKEN_TTL_SECONDS.to_string(),
                )
                .call()
            {
                Ok(response) => {
                    let token = response
                        .into_string()
                        .map_err(|e| format!("IMDSv2 token: {e}"))?;
                    let expires = Instant::now() + Duration::from_secs(TOKEN_TTL_SECONDS - 60);
                    self.token = Some((token.clone(), expires));
                    return Ok(token);
                }
                Err(ureq::Error::Status(code, _)) => {
                    return Err(format!("IMDSv2 token request answered HTTP {code}"))
                }
                Err(error) => {
                    last_error = match error.kind() {
                        ureq::ErrorKind::Io if error.to_string().contains("timed out") => format!(
                            "IMDSv2 token request timed out ({error}); in a container, the instance's metadata hop limit must be at least 2"
                        ),
                        _ => format!("IMDSv2 token request to {url} failed: {error}"),
                    };
                    std::thread::sleep(Duration::from_millis(200 * attempt));
                }
            }
        }
        Err(last_error)
    }

    /// `GET /latest/meta-data/<path>`: `Ok(None)` when the item does not exist (404).
    pub fn get(&mut self, path: &str) -> Result<Option<String>, String> {
        let url = format!("{}/latest/meta-data/{path}", self.endpoint);
        for retry in [false, true] {
            let token = self.token()?;
            match self
                .http
                .get(&url)
                .set("X-aws-ec2-metadata-token", &token)
                .call()
            {
                Ok(response) => {
                    return response
                        .into_string()
                        .map(Some)
                        .map_err(|e| format!("{path}: {e}"))
                }
                Err(ureq::Error::Status(404, _)) => return Ok(None),
                // An expired or revoked token: get a new one, once.
                Err(ureq::Error::Status(401, _)) if !retry => self.token = None,
                Err(ureq::Error::Status(code, _)) => {
                    return Err(format!("instance metadata {path} answered HTTP {code}"))
                }
                Err(error) => return Err(format!("instance metadata {path}: {error}")),
            }
        }
        Err(format!("instance metadata {path}: unauthorized"))
    }

    pub fn instance_id(&mut self) -> Result<String, String> {
        self.get("instance-id")?
            .filter(|id| !id.is_empty())
            .ok_or_else(|| "instance metadata has no instance-id".to_string())
    }
}
