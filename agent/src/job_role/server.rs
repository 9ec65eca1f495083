//! The job credential endpoint's I/O: the HTTP server (axum, on a thread and runtime of its own),
//! the table of granted tokens, and STS. Every decision it makes is in [`super::rules`].

use super::rules::{self, Session};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// What the endpoint and the grants share.
#[derive(Debug)]
pub(super) struct Shared {
    pub grants: Mutex<Vec<Granted>>,
    pub role_arn: String,
    pub sts: aws_sdk_sts::Client,
    /// Every address the endpoint listens on (a caller's socket points at one of them).
    pub addresses: Vec<SocketAddrV4>,
}

/// A job's token, whose connections it is accepted from, its session, its credentials so far.
#[derive(Debug)]
pub(super) struct Granted {
    token: String,
    uid: u32,
    session: Session,
    cached: Option<Cached>,
}

#[derive(Debug, Clone)]
struct Cached {
    body: String,
    expiration: i64,
}

pub(super) fn admit(shared: &Shared, token: &str, uid: u32, session: Session) {
    lock(shared).push(Granted {
        token: token.to_string(),
        uid,
        session,
        cached: None,
    });
}

pub(super) fn revoke(shared: &Shared, token: &str) {
    lock(shared).retain(|granted| !same_token(&granted.token, token));
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Vec<Granted>> {
    shared.grants.lock().unwrap_or_else(|p| p.into_inner())
}

fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Serves `listeners` on a thread with a runtime of its own, for the agent's lifetime.
pub(super) fn spawn(
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("job-credentials".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut served = tokio::task::JoinSet::new();
                for listener in listeners {
                    served.spawn(serve(listener, shared.clone()));
                }
                while served.join_next().await.is_some() {}
            });
        })?;
    Ok(())
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!("The job credential endpoint cannot listen: {error}");
            return;
        }
    };
    let app = axum::Router::new()
        .route(super::CREDENTIALS_PATH, axum::routing::get(credentials))
        .with_state(shared)
        .into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!("The job credential endpoint stopped: {error}");
    }
}

/// Why a request gets no credentials (mapped to a status here, at the edge).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no authorization token")]
    NoToken,
    #[error("this token is not a running job's, or the caller is not its job's user")]
    NotThisCaller,
    #[error("STS refused the job role: {0}")]
    Sts(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self {
            Refusal::NoToken => StatusCode::UNAUTHORIZED,
            Refusal::NotThisCaller => StatusCode::FORBIDDEN,
            Refusal::Sts(_) => StatusCode::BAD_GATEWAY,
        };
        (status, self.to_string()).into_response()
    }
}

async fn credentials(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .filter(|token| !token.is_empty())
        .ok_or(Refusal::NoToken)?;
    let caller = match peer {
        SocketAddr::V4(peer) => std::fs::read_to_string("/proc/net/tcp")
            .ok()
            .and_then(|table| rules::socket_owner(&table, peer, &shared.addresses)),
        SocketAddr::V6(_) => None,
    };
    let (session, cached) = {
        let grants = lock(&shared);
        let granted = grants
            .iter()
            .find(|granted| same_token(&granted.token, token) && caller == Some(granted.uid))
            .ok_or(Refusal::NotThisCaller)?;
        (granted.session.clone(), granted.cached.clone())
    };
    let now = crate::shell::unix_now();
    if let Some(cached) = cached.filter(|c| !rules::needs_refresh(c.expiration, now)) {
        return Ok(json(cached.body));
    }
    let fresh = assume(&shared, &session).await?;
    if let Some(granted) = lock(&shared)
        .iter_mut()
        .find(|granted| same_token(&granted.token, token))
    {
        granted.cached = Some(fresh.clone());
    }
    Ok(json(fresh.body))
}

fn json(body: String) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `AssumeRole` for the job's session.
async fn assume(shared: &Shared, session: &Session) -> Result<Cached, Refusal> {
    let tags: Vec<aws_sdk_sts::types::Tag> = session
        .tags
        .iter()
        .filter_map(|tag| {
            aws_sdk_sts::types::Tag::builder()
                .key(&tag.key)
                .value(&tag.value)
                .build()
                .ok()
        })
        .collect();
    let output = shared
        .sts
        .assume_role()
        .role_arn(&shared.role_arn)
        .role_session_name(&session.name)
        .duration_seconds(rules::SESSION_SECS)
        .policy(&session.policy)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|error| {
            let text = aws_sdk_sts::error::DisplayErrorContext(&error).to_string();
            tracing::error!(
                "AssumeRole {} for job session {}: {text}",
                shared.role_arn,
                session.name
            );
            Refusal::Sts(text)
        })?;
    let credentials = output
        .credentials()
        .ok_or_else(|| Refusal::Sts("AssumeRole answered without credentials".into()))?;
    let expiration = credentials.expiration();
    let expiration_text = expiration
        .fmt(aws_sdk_sts::primitives::DateTimeFormat::DateTime)
        .map_err(|error| Refusal::Sts(error.to_string()))?;
    Ok(Cached {
        body: rules::credentials_body(
            credentials.access_key_id(),
            credentials.secret_access_key(),
            credentials.session_token(),
            &expiration_text,
        ),
        expiration: expiration.secs(),
    })
}
