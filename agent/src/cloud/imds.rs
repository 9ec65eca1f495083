//! An IMDSv2 client: a session token from `PUT /latest/api/token`, then `GET /latest/meta-data/...`
//! with it (and `/latest/dynamic/...` for the signed instance identity). IMDSv1 (no token) is
//! never used. Short timeouts, because a missing metadata service
//! must not hold up an agent; a token request that times out inside a container usually means the
//! instance's hop limit is 1, and the error says so.

use crate::client::{error_chain, http_client};
use protocol::InstanceIdentity;
use reqwest::blocking::Client;
use std::time::{Duration, Instant};
use thiserror::Error;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_TTL_SECONDS: u64 = 21_600;

#[derive(Debug, Error)]
pub enum ImdsError {
    #[error("IMDSv2 token request answered HTTP {status}")]
    TokenRefused { status: u16 },
    #[error("IMDSv2 token request timed out ({message}); in a container, the instance's metadata hop limit must be at least 2")]
    TokenTimedOut { message: String },
    #[error("IMDSv2 token request to {url} failed: {message}")]
    TokenUnreachable { url: String, message: String },
    #[error("instance metadata {path} answered HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("instance metadata {path}: {message}")]
    Transport { path: String, message: String },
    #[error("instance metadata {path}: unauthorized")]
    Unauthorized { path: String },
    #[error("instance metadata has no instance-id")]
    NoInstanceId,
    #[error("instance metadata has no {path}")]
    NoIdentity { path: String },
}

pub struct Imds {
    endpoint: String,
    http: Client,
    token: Option<(String, Instant)>,
}

impl Imds {
    pub fn new(endpoint: &str) -> Imds {
        Imds {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http: http_client(Some(Duration::from_secs(1)), Duration::from_secs(3)),
            token: None,
        }
    }

    fn token(&mut self) -> Result<String, ImdsError> {
        if let Some((token, expires)) = &self.token {
            if Instant::now() < *expires {
                return Ok(token.clone());
            }
        }
        let url = format!("{}/latest/api/token", self.endpoint);
        let mut attempt = 1;
        loop {
            let answer = self
                .http
                .put(&url)
                .header(
                    "X-aws-ec2-metadata-token-ttl-seconds",
                    TOKEN_TTL_SECONDS.to_string(),
                )
                .send()
                .and_then(|response| {
                    let status = response.status();
                    response.text().map(|text| (status, text))
                });
            let error = match answer {
                Ok((status, token)) if status.is_success() => {
                    let expires = Instant::now() + Duration::from_secs(TOKEN_TTL_SECONDS - 60);
                    self.token = Some((token.clone(), expires));
                    return Ok(token);
                }
                Ok((status, _)) => {
                    return Err(ImdsError::TokenRefused {
                        status: status.as_u16(),
                    })
                }
                Err(error) if error.is_timeout() => ImdsError::TokenTimedOut {
                    message: error_chain(&error),
                },
                Err(error) => ImdsError::TokenUnreachable {
                    url: url.clone(),
                    message: error_chain(&error),
                },
            };
            if attempt == 3 {
                return Err(error);
            }
            std::thread::sleep(Duration::from_millis(200 * attempt));
            attempt += 1;
        }
    }

    /// `GET /latest/meta-data/<path>`: `Ok(None)` when the item does not exist (404).
    pub fn get(&mut self, path: &str) -> Result<Option<String>, ImdsError> {
        self.fetch(&format!("meta-data/{path}"))
    }

    /// `GET /latest/<path>` with the session token, renewed once if refused.
    fn fetch(&mut self, path: &str) -> Result<Option<String>, ImdsError> {
        let url = format!("{}/latest/{path}", self.endpoint);
        let transport = |error: reqwest::Error| ImdsError::Transport {
            path: path.to_string(),
            message: error_chain(&error),
        };
        for retry in [false, true] {
            let token = self.token()?;
            let response = self
                .http
                .get(&url)
                .header("X-aws-ec2-metadata-token", &token)
                .send()
                .map_err(transport)?;
            match response.status().as_u16() {
                200..=299 => return response.text().map(Some).map_err(transport),
                404 => return Ok(None),
                // An expired or revoked token: get a new one, once.
                401 if !retry => self.token = None,
                status => {
                    return Err(ImdsError::Status {
                        path: path.to_string(),
                        status,
                    })
                }
            }
        }
        Err(ImdsError::Unauthorized {
            path: path.to_string(),
        })
    }

    /// The instance identity document, byte for byte, and its base64 RSA-SHA256 signature
    /// (`/latest/dynamic/instance-identity/{document,signature}`), for a hub that binds
    /// registration to the instance.
    pub fn instance_identity(&mut self) -> Result<InstanceIdentity, ImdsError> {
        let mut item = |name: &str| {
            let path = format!("dynamic/instance-identity/{name}");
            self.fetch(&path)?
                .filter(|text| !text.is_empty())
                .ok_or(ImdsError::NoIdentity { path })
        };
        let document = item("document")?;
        let signature = item("signature")?;
        Ok(InstanceIdentity {
            document,
            signature,
        })
    }

    pub fn instance_id(&mut self) -> Result<String, ImdsError> {
        self.get("instance-id")?
            .filter(|id| !id.is_empty())
            .ok_or(ImdsError::NoInstanceId)
    }
}
