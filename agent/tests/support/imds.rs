//! A fake EC2 instance metadata service for tests (no emulator serves IMDS), shared by the
//! agent's and the scaler's suites, plus the two tiny_http helpers the fakes use.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

pub fn respond(request: tiny_http::Request, status: u16, body: &str) {
    let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(status));
}

pub fn header(request: &tiny_http::Request, name: &'static str) -> String {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.to_string())
        .unwrap_or_default()
}

/// A fake EC2 instance metadata service (no emulator serves IMDS): IMDSv2 only — metadata
/// requests without a valid session token get 401, as on an instance that requires IMDSv2.
pub struct FakeImds {
    pub address: String,
    pub state: Arc<Mutex<ImdsState>>,
    server: Arc<tiny_http::Server>,
}

#[derive(Default)]
pub struct ImdsState {
    pub instance_id: String,
    pub lifecycle_state: Option<String>,
    pub spot_action: Option<String>,
    /// `/latest/user-data` (404 when unset; any bytes) and the placement region.
    pub user_data: Option<Vec<u8>>,
    pub region: String,
    /// Token requests get 403 (IMDSv2 unavailable).
    pub refuse_tokens: bool,
    /// Every request: (method, path, carried the current token).
    pub requests: Vec<(String, String, bool)>,
    pub tokens_issued: u32,
    pub refused_without_token: u32,
    pub current_token: String,
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

impl FakeImds {
    /// Every request so far: (method, path, carried the current token).
    pub fn requests(&self) -> Vec<(String, String, bool)> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn start(instance_id: &str) -> FakeImds {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind fake IMDS"));
        let address = format!("http://{}", server.server_addr().to_ip().expect("ip"));
        let state = Arc::new(Mutex::new(ImdsState {
            instance_id: instance_id.into(),
            region: "us-east-1".into(),
            ..ImdsState::default()
        }));
        let (serving, shared) = (server.clone(), state.clone());
        std::thread::spawn(move || {
            for request in serving.incoming_requests() {
                let mut state = shared.lock().unwrap();
                let url = request.url().to_string();
                let method = request.method().to_string();
                let has_token = !state.current_token.is_empty()
                    && header(&request, "X-aws-ec2-metadata-token") == state.current_token;
                state
                    .requests
                    .push((method.clone(), url.clone(), has_token));
                if method == "PUT" && url == "/latest/api/token" {
                    if state.refuse_tokens {
                        drop(state);
                        respond(request, 403, "");
                        continue;
                    }
                    if header(&request, "X-aws-ec2-metadata-token-ttl-seconds").is_empty() {
                        drop(state);
                        respond(request, 400, "missing ttl");
                        continue;
                    }
                    state.tokens_issued += 1;
                    state.current_token = format!("token-{}", state.tokens_issued);
                    let token = state.current_token.clone();
                    drop(state);
                    respond(request, 200, &token);
                    continue;
                }
                if method != "GET" {
                    drop(state);
                    respond(request, 405, "");
                    continue;
                }
                if !has_token {
                    // IMDSv1 (no token) is refused, as on an instance that requires IMDSv2.
                    state.refused_without_token += 1;
                    drop(state);
                    respond(request, 401, "");
                    continue;
                }
                let answer = match url.strip_prefix("/latest/meta-data/") {
                    _ if url == "/latest/user-data" => state.user_data.clone(),
                    Some("instance-id") => Some(state.instance_id.clone().into_bytes()),
                    Some("placement/region") => Some(state.region.clone().into_bytes()),
                    Some("autoscaling/target-lifecycle-state") => {
                        state.lifecycle_state.clone().map(String::into_bytes)
                    }
                    Some("spot/instance-action") => {
                        state.spot_action.clone().map(String::into_bytes)
                    }
                    _ => None,
                };
                drop(state);
                match answer {
                    Some(body) => {
                        let _ = request.respond(tiny_http::Response::from_data(body));
                    }
                    None => respond(request, 404, "Not Found"),
                }
            }
        });
        FakeImds {
            address,
            state,
            server,
        }
    }
}
