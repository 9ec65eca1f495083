//! HTTP client for the self-hosted control plane (spec §2): register, sync, get job, refresh,
//! disconnect. `Authorization: Token <t>`, `User-Agent: SemaphoreAgent/<version>`, compact JSON
//! bodies without a Content-Type (as upstream), 30 s timeout, and upstream's success rules:
//! any 2xx for register, exactly 200 for everything else.

use protocol::{
    JobRequest, RefreshResponse, RegisterRequest, RegisterResponse, SyncRequest, SyncResponse,
};
use std::sync::RwLock;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{0}")]
    Status(String),
    #[error("{operation} request to {url} failed: {message}")]
    Transport {
        operation: &'static str,
        url: String,
        message: String,
    },
    #[error("{operation}: invalid response body: {message}")]
    Decode {
        operation: &'static str,
        message: String,
    },
}

pub struct ControlPlane {
    http: ureq::Agent,
    base_url: String,
    user_agent: String,
    access_token: RwLock<String>,
}

impl ControlPlane {
    pub fn new(base_url: String, user_agent: String) -> ControlPlane {
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        ControlPlane {
            http,
            base_url,
            user_agent,
            access_token: RwLock::new(String::new()),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn token(&self) -> String {
        self.access_token
            .read()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    fn send(
        &self,
        operation: &'static str,
        method: &str,
        url: &str,
        token: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, String), ClientError> {
        let request = self
            .http
            .request(method, url)
            .set("Authorization", &format!("Token {token}"))
            .set("User-Agent", &self.user_agent);
        let result = match (method, body) {
            (_, Some(bytes)) => request.send_bytes(bytes),
            ("GET", None) => request.call(),
            (_, None) => request.send_bytes(&[]),
        };
        match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => {
                let status = response.status();
                let text = response
                    .into_string()
                    .map_err(|error| ClientError::Transport {
                        operation,
                        url: url.to_string(),
                        message: error.to_string(),
                    })?;
                Ok((status, text))
            }
            Err(error) => Err(ClientError::Transport {
                operation,
                url: url.to_string(),
                message: error.to_string(),
            }),
        }
    }

    /// Registers with the registration token and adopts the returned access token.
    pub fn register(
        &self,
        request: &RegisterRequest,
        registration_token: &str,
    ) -> Result<RegisterResponse, ClientError> {
        let url = format!("{}/register", self.base_url);
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode {
            operation: "register",
            message: e.to_string(),
        })?;
        let (status, text) =
            self.send("register", "POST", &url, registration_token, Some(&body))?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Status(format!(
                "register request to {url} got HTTP {status}: {text}"
            )));
        }
        let response: RegisterResponse =
            serde_json::from_str(&text).map_err(|e| ClientError::Decode {
                operation: "register",
                message: e.to_string(),
            })?;
        if let Ok(mut token) = self.access_token.write() {
            *token = response.token.clone();
        }
        Ok(response)
    }

    pub fn sync(&self, request: &SyncRequest) -> Result<SyncResponse, ClientError> {
        let url = format!("{}/sync", self.base_url);
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode {
            operation: "sync",
            message: e.to_string(),
        })?;
        let (status, text) = self.send("sync", "POST", &url, &self.token(), Some(&body))?;
        if status != 200 {
            return Err(ClientError::Status(format!(
                "failed to sync with upstream, got HTTP {status}"
            )));
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            operation: "sync",
            message: e.to_string(),
        })
    }

    pub fn get_job(&self, job_id: &str) -> Result<JobRequest, ClientError> {
        let url = format!("{}/jobs/{job_id}", self.base_url);
        let (status, text) = self.send("get job", "GET", &url, &self.token(), None)?;
        if status != 200 {
            return Err(ClientError::Status(format!(
                "failed to describe job, got HTTP {status}"
            )));
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            operation: "get job",
            message: e.to_string(),
        })
    }

    /// A new log-push token; the access token is unchanged.
    pub fn refresh_log_token(&self) -> Result<String, ClientError> {
        let url = format!("{}/refresh", self.base_url);
        let (status, text) = self.send("refresh", "POST", &url, &self.token(), None)?;
        if status != 200 {
            return Err(ClientError::Status(format!(
                "failed to refresh token, got HTTP {status}"
            )));
        }
        let response: RefreshResponse =
            serde_json::from_str(&text).map_err(|e| ClientError::Decode {
                operation: "refresh",
                message: e.to_string(),
            })?;
        Ok(response.token)
    }

    pub fn disconnect(&self) -> Result<(), ClientError> {
        let url = format!("{}/disconnect", self.base_url);
        let (status, _) = self.send("disconnect", "POST", &url, &self.token(), None)?;
        if status != 200 {
            return Err(ClientError::Status(format!(
                "failed to disconnect, got HTTP {status}"
            )));
        }
        Ok(())
    }
}
