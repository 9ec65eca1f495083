//! HTTP client for the self-hosted control plane (docs/protocol.md §2): register, sync, get job,
//! refresh, disconnect. `Authorization: Token <t>`, `User-Agent: SemaphoreAgent/<version>`,
//! compact JSON bodies without a Content-Type (as upstream), 30 s timeout, and upstream's success
//! rules: any 2xx for register, exactly 200 for everything else.

use protocol::{
    JobRequest, RefreshResponse, RegisterRequest, RegisterResponse, SyncRequest, SyncResponse,
};
use reqwest::blocking::Client;
use reqwest::Method;
use std::sync::RwLock;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("register request to {url} got HTTP {status}: {body}")]
    RegisterRejected {
        url: String,
        status: u16,
        body: String,
    },
    /// A request other than register got a status other than 200; `what` is upstream's wording.
    #[error("{what}, got HTTP {status}")]
    Status { what: &'static str, status: u16 },
    #[error("{operation} request to {url} failed: {message}")]
    Transport {
        operation: &'static str,
        url: String,
        message: String,
    },
    #[error("{operation}: invalid response body: {source}")]
    Decode {
        operation: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A blocking HTTP client with the agent's settings: `timeout` for a whole request, and no proxy
/// from the environment (the agent never used one). Must not be built inside a tokio runtime.
pub(crate) fn http_client(connect_timeout: Option<Duration>, timeout: Duration) -> Client {
    let mut builder = Client::builder().timeout(timeout).no_proxy();
    if let Some(connect) = connect_timeout {
        builder = builder.connect_timeout(connect);
    }
    builder
        .build()
        .expect("the HTTP client's TLS backend initialises")
}

/// A transport error in a few words: its causes, `a: b: c` (reqwest's own message repeats the
/// URL, which the callers' messages already name, and omits the causes).
pub(crate) fn error_chain(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        parts.push(error.to_string());
        cause = error.source();
    }
    if parts.is_empty() {
        return error.to_string();
    }
    parts.join(": ")
}

pub(crate) struct ControlPlane {
    http: Client,
    base_url: String,
    user_agent: String,
    access_token: RwLock<String>,
}

impl ControlPlane {
    pub(crate) fn new(base_url: String, user_agent: String) -> ControlPlane {
        ControlPlane {
            http: http_client(None, Duration::from_secs(30)),
            base_url,
            user_agent,
            access_token: RwLock::new(String::new()),
        }
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    fn token(&self) -> String {
        self.access_token
            .read()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Sends one request; any status is an answer (the caller applies the success rules).
    fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: &str,
        token: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String), ClientError> {
        let transport = |error: reqwest::Error| ClientError::Transport {
            operation,
            url: url.to_string(),
            message: error_chain(&error),
        };
        let is_get = method == Method::GET;
        let mut request = self
            .http
            .request(method, url)
            .header("Authorization", format!("Token {token}"))
            .header("User-Agent", &self.user_agent);
        if !is_get || body.is_some() {
            request = request.body(body.unwrap_or_default());
        }
        let response = request.send().map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.text().map_err(transport)?;
        Ok((status, text))
    }

    fn post_json<T: serde::Serialize>(
        &self,
        operation: &'static str,
        url: &str,
        token: &str,
        body: &T,
    ) -> Result<(u16, String), ClientError> {
        let body =
            serde_json::to_vec(body).map_err(|source| ClientError::Decode { operation, source })?;
        self.send(operation, Method::POST, url, token, Some(body))
    }

    /// Registers with the registration token and adopts the returned access token.
    pub(crate) fn register(
        &self,
        request: &RegisterRequest,
        registration_token: &str,
    ) -> Result<RegisterResponse, ClientError> {
        let url = format!("{}/register", self.base_url);
        let (status, text) = self.post_json("register", &url, registration_token, request)?;
        if !(200..300).contains(&status) {
            return Err(ClientError::RegisterRejected {
                url,
                status,
                body: text,
            });
        }
        let response: RegisterResponse = decode("register", &text)?;
        if let Ok(mut token) = self.access_token.write() {
            *token = response.token.clone();
        }
        Ok(response)
    }

    pub(crate) fn sync(&self, request: &SyncRequest) -> Result<SyncResponse, ClientError> {
        let url = format!("{}/sync", self.base_url);
        let (status, text) = self.post_json("sync", &url, &self.token(), request)?;
        expect_200("failed to sync with upstream", status)?;
        decode("sync", &text)
    }

    pub(crate) fn get_job(&self, job_id: &str) -> Result<JobRequest, ClientError> {
        let url = format!("{}/jobs/{job_id}", self.base_url);
        let (status, text) = self.send("get job", Method::GET, &url, &self.token(), None)?;
        expect_200("failed to describe job", status)?;
        decode("get job", &text)
    }

    /// A new log-push token; the access token is unchanged.
    pub(crate) fn refresh_log_token(&self) -> Result<String, ClientError> {
        let url = format!("{}/refresh", self.base_url);
        let (status, text) = self.send("refresh", Method::POST, &url, &self.token(), None)?;
        expect_200("failed to refresh token", status)?;
        let response: RefreshResponse = decode("refresh", &text)?;
        Ok(response.token)
    }

    pub(crate) fn disconnect(&self) -> Result<(), ClientError> {
        let url = format!("{}/disconnect", self.base_url);
        let (status, _) = self.send("disconnect", Method::POST, &url, &self.token(), None)?;
        expect_200("failed to disconnect", status)
    }
}

fn expect_200(what: &'static str, status: u16) -> Result<(), ClientError> {
    if status == 200 {
        Ok(())
    } else {
        Err(ClientError::Status { what, status })
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    text: &str,
) -> Result<T, ClientError> {
    serde_json::from_str(text).map_err(|source| ClientError::Decode { operation, source })
}
