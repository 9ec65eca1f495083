//! A fake EC2 instance metadata service for tests (no emulator serves IMDS), shared by the
//! agent's and the scaler's suites, plus the small HTTP server (axum) both fakes run on.

use std::sync::{Arc, Mutex};

/// One request as a test server's handler sees it.
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub url: String,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

/// A handler's answer: status and body.
pub type Reply = (u16, Vec<u8>);

pub fn respond(status: u16, body: &str) -> Reply {
    (status, body.as_bytes().to_vec())
}

pub fn header(request: &Request, name: &'static str) -> String {
    request
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A small HTTP/1.1 server on 127.0.0.1 (axum, on its own runtime thread) that hands every
/// request to a blocking handler on a thread of its own (handlers may sleep). Dropping it stops
/// the server.
pub struct TestServer {
    pub address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestServer {
    pub fn start(handler: impl Fn(Request) -> Reply + Send + Sync + 'static) -> TestServer {
        TestServer::start_on("127.0.0.1", handler)
    }

    /// Listens on `ip` (a container network's gateway, for tests whose clients run in containers).
    pub fn start_on(
        ip: &str,
        handler: impl Fn(Request) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind test server");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let address = listener.local_addr().expect("local address");
        let handler = Arc::new(handler);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let handler = handler.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .map(|bytes| bytes.to_vec())
                    .unwrap_or_default();
                // IMDSv2 token answers carry the TTL they were granted; the AWS SDK's IMDS
                // credentials provider refuses a token without it.
                let token_ttl = (parts.uri.path() == "/latest/api/token")
                    .then(|| {
                        parts
                            .headers
                            .get("x-aws-ec2-metadata-token-ttl-seconds")
                            .cloned()
                    })
                    .flatten();
                let request = Request {
                    method: parts.method.to_string(),
                    url: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                };
                let (status, body) = tokio::task::spawn_blocking(move || handler(request))
                    .await
                    .unwrap_or_else(|_| respond(500, "handler panicked"));
                let status = axum::http::StatusCode::from_u16(status).expect("status code");
                let mut headers = axum::http::HeaderMap::new();
                if let Some(ttl) = token_ttl.filter(|_| status.is_success()) {
                    headers.insert("x-aws-ec2-metadata-token-ttl-seconds", ttl);
                }
                (status, headers, body)
            }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        TestServer {
            address,
            stop: Some(stop),
        }
    }
}

/// A fake EC2 instance metadata service (no emulator serves IMDS): IMDSv2 only — metadata
/// requests without a valid session token get 401, as on an instance that requires IMDSv2.
pub struct FakeImds {
    pub address: String,
    pub state: Arc<Mutex<ImdsState>>,
    _server: TestServer,
}

#[derive(Default)]
pub struct ImdsState {
    pub instance_id: String,
    pub lifecycle_state: Option<String>,
    pub spot_action: Option<String>,
    /// `/latest/user-data` (404 when unset; any bytes) and the placement region.
    pub user_data: Option<Vec<u8>>,
    pub region: String,
    /// `/latest/dynamic/instance-identity/document` and `/signature` (404 when unset): set by
    /// [`FakeImds::sign_identity`], or by hand for forged ones.
    pub identity_document: Option<String>,
    pub identity_signature: Option<String>,
    /// Token requests get 403 (IMDSv2 unavailable).
    pub refuse_tokens: bool,
    /// Every request: (method, path, carried the current token).
    pub requests: Vec<(String, String, bool)>,
    pub tokens_issued: u32,
    pub refused_without_token: u32,
    pub current_token: String,
}

impl FakeImds {
    /// Every request so far: (method, path, carried the current token).
    pub fn requests(&self) -> Vec<(String, String, bool)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Serves an instance identity document for `account_id`, signed (base64 RSA-SHA256, as
    /// AWS's `signature`) with the PEM private key at `key`, through the `openssl` CLI.
    pub fn sign_identity(&self, account_id: &str, key: &std::path::Path) {
        let mut state = self.state.lock().unwrap();
        let document = identity_document(&state.instance_id, account_id, &state.region);
        state.identity_signature = Some(sign(&document, key));
        state.identity_document = Some(document);
    }

    pub fn start(instance_id: &str) -> FakeImds {
        FakeImds::start_on(instance_id, "127.0.0.1")
    }

    pub fn start_on(instance_id: &str, ip: &str) -> FakeImds {
        let state = Arc::new(Mutex::new(ImdsState {
            instance_id: instance_id.into(),
            region: "us-east-1".into(),
            ..ImdsState::default()
        }));
        let shared = state.clone();
        let server = TestServer::start_on(ip, move |request| {
            answer(&mut shared.lock().unwrap(), &request)
        });
        FakeImds {
            address: format!("http://{}", server.address),
            state,
            _server: server,
        }
    }
}

/// The instance profile's role name the fake serves credentials for.
pub const INSTANCE_ROLE: &str = "flotilla-test-agent-role";
/// The secret access key of those credentials (a job that prints it has crossed the boundary).
pub const INSTANCE_ROLE_SECRET: &str = "instance-role-secret-4f1c9e";

fn role_credentials() -> String {
    let in_an_hour = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    let expiration = in_an_hour.strftime("%Y-%m-%dT%H:%M:%SZ");
    format!(
        r#"{{"Code":"Success","LastUpdated":"{expiration}","Type":"AWS-HMAC","AccessKeyId":"ASIATESTINSTANCE","SecretAccessKey":"{INSTANCE_ROLE_SECRET}","Token":"instance-session-token","Expiration":"{expiration}"}}"#
    )
}

fn answer(state: &mut ImdsState, request: &Request) -> Reply {
    let (url, method) = (request.url.clone(), request.method.clone());
    let has_token = !state.current_token.is_empty()
        && header(request, "X-aws-ec2-metadata-token") == state.current_token;
    state
        .requests
        .push((method.clone(), url.clone(), has_token));
    if method == "PUT" && url == "/latest/api/token" {
        if state.refuse_tokens {
            return respond(403, "");
        }
        if header(request, "X-aws-ec2-metadata-token-ttl-seconds").is_empty() {
            return respond(400, "missing ttl");
        }
        state.tokens_issued += 1;
        state.current_token = format!("token-{}", state.tokens_issued);
        return respond(200, &state.current_token);
    }
    if method != "GET" {
        return respond(405, "");
    }
    if !has_token {
        // IMDSv1 (no token) is refused, as on an instance that requires IMDSv2.
        state.refused_without_token += 1;
        return respond(401, "");
    }
    let answer = match url.strip_prefix("/latest/meta-data/") {
        _ if url == "/latest/user-data" => state.user_data.clone(),
        Some("instance-id") => Some(state.instance_id.clone().into_bytes()),
        Some("placement/region") => Some(state.region.clone().into_bytes()),
        Some("autoscaling/target-lifecycle-state") => {
            state.lifecycle_state.clone().map(String::into_bytes)
        }
        Some("spot/instance-action") => state.spot_action.clone().map(String::into_bytes),
        // The instance role's credentials, as the SDK's IMDS provider reads them (any key works
        // with moto): what a job must never be able to fetch.
        Some("iam/security-credentials/") => Some(INSTANCE_ROLE.as_bytes().to_vec()),
        Some(path) if path == format!("iam/security-credentials/{INSTANCE_ROLE}") => {
            Some(role_credentials().into_bytes())
        }
        _ if url == "/latest/dynamic/instance-identity/document" => {
            state.identity_document.clone().map(String::into_bytes)
        }
        _ if url == "/latest/dynamic/instance-identity/signature" => {
            state.identity_signature.clone().map(String::into_bytes)
        }
        _ => None,
    };
    match answer {
        Some(body) => (200, body),
        None => respond(404, "Not Found"),
    }
}

/// An instance identity document shaped like AWS's (pretty-printed JSON, camelCase keys).
pub fn identity_document(instance_id: &str, account_id: &str, region: &str) -> String {
    format!(
        "{{\n  \"accountId\" : \"{account_id}\",\n  \"architecture\" : \"x86_64\",\n  \"availabilityZone\" : \"{region}a\",\n  \"imageId\" : \"ami-0123456789abcdef0\",\n  \"instanceId\" : \"{instance_id}\",\n  \"instanceType\" : \"m7i.large\",\n  \"pendingTime\" : \"2026-01-01T00:00:00Z\",\n  \"privateIp\" : \"10.0.0.1\",\n  \"region\" : \"{region}\",\n  \"version\" : \"2017-09-30\"\n}}"
    )
}

/// `document`'s base64 RSA-SHA256 signature (PKCS#1 v1.5) with the PEM private key at `key`,
/// wrapped at 64 columns as IMDS serves it (`openssl dgst -sign | openssl base64`).
pub fn sign(document: &str, key: &std::path::Path) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; openssl dgst -sha256 -sign \"$1\" | openssl base64")
        .arg("sign")
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("bash runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(document.as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "openssl dgst -sign failed (apt-get install openssl)"
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// A new RSA key and a self-signed certificate for it in `dir` (`key.pem`, `cert.pem`), made
/// with the `openssl` CLI; returns their paths.
pub fn signing_key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join(format!("{name}-key.pem"));
    let cert = dir.join(format!("{name}-cert.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed (apt-get install openssl)");
    assert!(status.success(), "openssl req -x509 failed");
    (key, cert)
}
