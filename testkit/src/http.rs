//! The tests' HTTP client: one blocking request through reqwest (the workspace's one HTTP client
//! stack), answered as a status code and a body whatever the status, so a test can assert on 4xx
//! answers as easily as on 200.

use std::time::Duration;

/// A finished HTTP exchange.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as JSON; a test failure with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("HTTP {}: not JSON ({e}): {}", self.status, self.body))
    }

    /// (status, body), for table-style assertions.
    pub fn pair(self) -> (u16, String) {
        (self.status, self.body)
    }
}

fn send(request: reqwest::blocking::RequestBuilder, authorization: &str) -> reqwest::Result<Reply> {
    let request = if authorization.is_empty() {
        request
    } else {
        request.header("Authorization", authorization)
    };
    let response = request.timeout(Duration::from_secs(60)).send()?;
    let status = response.status().as_u16();
    Ok(Reply {
        status,
        body: response.text()?,
    })
}

/// GET with an `Authorization` header (none when empty); Err only when no answer came.
pub fn get(url: &str, authorization: &str) -> reqwest::Result<Reply> {
    send(reqwest::blocking::Client::new().get(url), authorization)
}

/// POST of a raw body with an `Authorization` header (none when empty).
pub fn post(url: &str, authorization: &str, body: impl Into<String>) -> reqwest::Result<Reply> {
    let body: String = body.into();
    send(
        reqwest::blocking::Client::new().post(url).body(body),
        authorization,
    )
}
