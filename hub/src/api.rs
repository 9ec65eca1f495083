//! The hub's HTTP API (axum): the agent protocol under `/api/v1/self_hosted_agents` exactly as
//! docs/protocol.md §2 describes it, log intake under `/api/v1/logs`, the user API (admin token)
//! under `/api/v1`, plus `/healthz` and Prometheus `/metrics`. Handlers only translate HTTP to
//! [`Hub`] calls and [`HubError`]s to status codes; errors never echo secrets.
//!
//! What a client costs the hub is bounded here, before the core sees it: every token (and a log
//! push's job) is checked before the request's body is read; a body is read only up to its
//! route's size and within `EdgeLimits::body_read_timeout` in all; log pushes being read or
//! stored are capped per job and in total (429 beyond, which agents retry); the blocking core
//! runs on tokio's blocking pool ([`blocking`]), never on the async workers; `/metrics` may ask
//! for a bearer token and renders at most once a second.

use crate::hub::{Admission, FirstLook, Hub, HubError, HubResult, Invalid};
use crate::store::StoreError;
use crate::tokens;
use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::views::{AgentTypeView, CreatedAgentType, ErrorBody, NewAgentType};
use protocol::{JobSpec, JobState, RefreshResponse, RegisterRequest, SyncRequest};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest log push body (2000 lines of fully escaped 1000-byte output fit).
pub(crate) const MAX_LOG_BODY: usize = 32 * 1024 * 1024;
/// Largest body of the user API (a job spec with its files).
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// Largest body of a registration or a sync (bounded fields: `hub::limits_of_registration`).
pub(crate) const MAX_AGENT_BODY: usize = 64 * 1024;
/// Longest long-poll a client may ask for.
pub(crate) const MAX_WAIT_SECONDS: u64 = 60;

/// The HTTP status of each of the hub's errors: the one table, for the API and the console.
pub(crate) fn status_of(error: &HubError) -> StatusCode {
    match error {
        HubError::Unauthorized => StatusCode::UNAUTHORIZED,
        HubError::IdentityRefused(_) => StatusCode::FORBIDDEN,
        HubError::Invalid(_) | HubError::JobForUnknownAgentType { .. } => StatusCode::BAD_REQUEST,
        HubError::NoSuchJob { .. }
        | HubError::JobNotRunning { .. }
        | HubError::JobNotAssigned { .. }
        | HubError::AgentHasNoJob
        | HubError::NoSuchAgent { .. }
        | HubError::NoSuchAgentType { .. } => StatusCode::NOT_FOUND,
        HubError::AgentTypeExists { .. }
        | HubError::AgentTypeTokenMismatch { .. }
        | HubError::AgentTypeMadeElsewhere { .. }
        | HubError::RegistrationRefused { .. }
        | HubError::LogGap { .. } => StatusCode::CONFLICT,
        HubError::LogFull => StatusCode::UNPROCESSABLE_ENTITY,
        HubError::AgentTypeFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        HubError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        // Busy or briefly unreachable (a database failover): the client retries.
        HubError::Store(
            StoreError::Conflict | StoreError::Unavailable(_) | StoreError::Connect(_),
        ) => StatusCode::SERVICE_UNAVAILABLE,
        HubError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let status = status_of(&self);
        // A store's own words stay in the log.
        let message = match &self {
            HubError::Store(error) if status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(%error, "store unavailable");
                "the hub's database is busy or unavailable; retry".to_string()
            }
            HubError::Store(error) => {
                tracing::error!(%error, "store error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        (status, Json(ErrorBody { error: message })).into_response()
    }
}

/// The token after `Token ` or `Bearer ` in `Authorization`.
fn token(headers: &HeaderMap) -> Result<String, HubError> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(HubError::Unauthorized)?;
    let token = value
        .strip_prefix("Token ")
        .or_else(|| value.strip_prefix("Bearer "))
        .ok_or(HubError::Unauthorized)?;
    if token.is_empty() {
        return Err(HubError::Unauthorized);
    }
    Ok(token.to_string())
}

fn admin(hub: &Hub, headers: &HeaderMap) -> Result<(), HubError> {
    if hub.is_admin(&token(headers)?) {
        Ok(())
    } else {
        Err(HubError::Unauthorized)
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HubError> {
    serde_json::from_slice(body).map_err(|error| Invalid::Json(error).into())
}

/// What one client may make the API do (the connection-level limits are `server`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLimits {
    /// A request's whole body must be in within this long of its handler asking for it.
    pub body_read_timeout: Duration,
    /// Log pushes being read or stored at once, over all jobs.
    pub max_log_pushes: usize,
    /// Log pushes being read or stored at once for one job (its agent sends one at a time).
    pub max_log_pushes_per_job: usize,
    /// SHA-256 of the bearer token `/metrics` asks for (None: open).
    pub metrics_token_hash: Option<String>,
    /// A proxy in front (`--plain-http-behind-proxy`) appends each client's address to
    /// `X-Forwarded-For`: per-client limits key on it instead of the peer (the proxy).
    pub trust_forwarded_for: bool,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            body_read_timeout: Duration::from_secs(30),
            max_log_pushes: 64,
            max_log_pushes_per_job: 2,
            metrics_token_hash: None,
            trust_forwarded_for: false,
        }
    }
}

/// The router's state: the hub and what the edge keeps of its own.
#[derive(Clone)]
struct Edge {
    hub: Arc<Hub>,
    limits: Arc<EdgeLimits>,
    log_pushes: Arc<LogPushes>,
    /// The last `/metrics` text and when it was rendered.
    prometheus: Arc<tokio::sync::Mutex<Option<(Instant, String)>>>,
}

impl FromRef<Edge> for Arc<Hub> {
    fn from_ref(edge: &Edge) -> Arc<Hub> {
        edge.hub.clone()
    }
}

type Shared = State<Arc<Hub>>;

/// Runs `call` on the hub on tokio's blocking pool (the core takes a lock and may wait on the
/// store); a panic there is the handler's panic. At most [`Hub::callers`] calls are on the pool
/// at once; the rest wait their turn here, on the async side: the core is behind one lock, so
/// more threads would only queue on it (and, on two cores, trade places with each other).
pub async fn blocking<T: Send + 'static>(
    hub: &Arc<Hub>,
    call: impl FnOnce(&Hub) -> HubResult<T> + Send + 'static,
) -> HubResult<T> {
    blocking_holding(hub, (), call).await
}

/// [`blocking`], with `held` (permits) kept until the call has ended on the pool, not only
/// until this future is dropped: a client that hangs up does not free its places early.
async fn blocking_holding<T: Send + 'static, H: Send + 'static>(
    hub: &Arc<Hub>,
    held: H,
    call: impl FnOnce(&Hub) -> HubResult<T> + Send + 'static,
) -> HubResult<T> {
    let Ok(turn) = hub.callers().clone().acquire_owned().await else {
        return Err(HubError::ShuttingDown); // never closed
    };
    let hub = hub.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _held = (turn, held);
        call(&hub)
    })
    .await;
    match result {
        Ok(result) => result,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancelled: the runtime is shutting down.
            Err(_) => Err(HubError::ShuttingDown),
        },
    }
}

/// Whether the request is admitted before its body is read: from memory on the async side
/// when it knows the token (no lock wait, no store), else on the blocking side; requests
/// memory does not know take their turns one at a time, so made-up tokens cannot crowd the
/// real agents' calls out of the core.
async fn admit(hub: &Arc<Hub>, admission: Admission) -> HubResult<()> {
    let arrived = hub.arrival();
    let mut look = hub.first_look(&admission, hub.now());
    if look == FirstLook::Busy {
        let asked = admission.clone();
        look = blocking(hub, move |hub| Ok(hub.look(&asked, hub.now()))).await?;
    }
    if look == FirstLook::Admitted {
        return Ok(());
    }
    let Ok(turn) = hub.strangers().clone().acquire_owned().await else {
        return Err(HubError::ShuttingDown); // never closed
    };
    blocking_holding(hub, turn, move |hub| {
        hub.admit_since(&admission, arrived, hub.now())
    })
    .await
}

/// Reads `body` whole: at most `limit` bytes (413 beyond), all within `timeout` (408 after).
pub(crate) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Refused> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {limit} bytes"),
        )),
        Ok(Err(_)) => Err(refusal(
            StatusCode::BAD_REQUEST,
            "the body could not be read",
        )),
        Err(_) => Err(refusal(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the body was not sent within {timeout:?}"),
        )),
    }
}

fn refusal(status: StatusCode, message: &str) -> Refused {
    Refused::Edge {
        status,
        message: message.to_string(),
    }
}

/// A refusal of the edge's own (a status and why) or a hub error, as the response it becomes.
pub(crate) enum Refused {
    Edge { status: StatusCode, message: String },
    Hub(HubError),
}

impl From<HubError> for Refused {
    fn from(error: HubError) -> Refused {
        Refused::Hub(error)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Edge { status, message } => {
                let mut response = (status, Json(ErrorBody { error: message })).into_response();
                if status == StatusCode::TOO_MANY_REQUESTS {
                    let again = axum::http::HeaderValue::from_static("1");
                    response.headers_mut().insert("retry-after", again);
                }
                response
            }
            Refused::Hub(error) => error.into_response(),
        }
    }
}

/// The log pushes in flight: a permit in total and a count per job.
struct LogPushes {
    total: Arc<Semaphore>,
    per_job: Mutex<HashMap<String, usize>>,
    max_per_job: usize,
}

/// One log push in flight; leaving gives its places back.
struct LogPushPermit {
    pushes: Arc<LogPushes>,
    job_id: String,
    _total: OwnedSemaphorePermit,
}

impl LogPushes {
    fn new(limits: &EdgeLimits) -> LogPushes {
        LogPushes {
            total: Arc::new(Semaphore::new(limits.max_log_pushes.max(1))),
            per_job: Mutex::new(HashMap::new()),
            max_per_job: limits.max_log_pushes_per_job.max(1),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.per_job
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for one more push to `job_id`, or 429 when the job or the hub has none free.
    fn admit(self: &Arc<Self>, job_id: &str) -> Result<LogPushPermit, Refused> {
        let busy = |what: &str| refusal(StatusCode::TOO_MANY_REQUESTS, what);
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy("too many log pushes in flight on this hub; retry"))?;
        let mut jobs = self.jobs();
        let count = jobs.entry(job_id.to_string()).or_insert(0);
        if *count >= self.max_per_job {
            return Err(busy("too many log pushes in flight for this job; retry"));
        }
        *count += 1;
        Ok(LogPushPermit {
            pushes: self.clone(),
            job_id: job_id.to_string(),
            _total: total,
        })
    }
}

impl Drop for LogPushPermit {
    fn drop(&mut self) {
        let mut jobs = self.pushes.jobs();
        if let Some(count) = jobs.get_mut(&self.job_id) {
            *count -= 1;
            if *count == 0 {
                jobs.remove(&self.job_id);
            }
        }
    }
}

/// The API with the default edge limits.
pub fn router(hub: Arc<Hub>) -> Router {
    router_with(hub, EdgeLimits::default())
}

pub(crate) fn router_with(hub: Arc<Hub>, limits: EdgeLimits) -> Router {
    let agent_api = Router::new()
        .route("/register", post(register))
        .route("/sync", post(sync))
        .route("/jobs/{id}", get(job_request))
        .route("/refresh", post(refresh))
        .route("/disconnect", post(disconnect))
        .route("/metrics", get(queue_metrics))
        .route("/agents", get(type_agents));
    let user_api = Router::new()
        .route(
            "/agent_types",
            get(list_agent_types).post(create_agent_type),
        )
        .route("/jobs", get(list_jobs).post(submit_job))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/stop", post(stop_job))
        .route("/jobs/{id}/logs", get(job_logs))
        .route("/agents", get(list_agents))
        .route("/agents/{name}/shutdown", post(shutdown_agent));
    let edge = Edge {
        log_pushes: Arc::new(LogPushes::new(&limits)),
        limits: Arc::new(limits),
        hub,
        prometheus: Arc::new(tokio::sync::Mutex::new(None)),
    };
    Router::new()
        .nest("/api/v1/self_hosted_agents", agent_api)
        .nest("/api/v1", user_api)
        .route("/api/v1/logs/{id}", post(push_logs))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(prometheus))
        .with_state(edge)
}

// ---------------------------------------------------------------- agent protocol

async fn register(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let token = token(&headers)?;
    let admission = Admission::Register {
        token: token.clone(),
    };
    admit(&edge.hub, admission).await?;
    let body = read_body(body, MAX_AGENT_BODY, edge.limits.body_read_timeout).await?;
    let request: RegisterRequest = json_body(&body)?;
    let registered = blocking(&edge.hub, move |hub| {
        hub.register(&token, request, hub.now())
    })
    .await?;
    Ok(Json(registered).into_response())
}

async fn sync(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let token = token(&headers)?;
    let admission = Admission::Agent {
        token: token.clone(),
    };
    admit(&edge.hub, admission).await?;
    let body = read_body(body, MAX_AGENT_BODY, edge.limits.body_read_timeout).await?;
    let request: SyncRequest = json_body(&body)?;
    // The usual sync changes nothing and is answered from memory; any other on the blocking side.
    if let Some(reply) = edge.hub.sync_in_memory(&token, &request, edge.hub.now()) {
        return Ok(Json(reply).into_response());
    }
    let reply = blocking(&edge.hub, move |hub| hub.sync(&token, &request, hub.now())).await?;
    Ok(Json(reply).into_response())
}

async fn job_request(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HubError> {
    let token = token(&headers)?;
    admit(
        &hub,
        Admission::Agent {
            token: token.clone(),
        },
    )
    .await?;
    let job = blocking(&hub, move |hub| hub.job_request(&token, &id, hub.now())).await?;
    Ok(Json(job).into_response())
}

async fn refresh(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    let token = token(&headers)?;
    admit(
        &hub,
        Admission::Agent {
            token: token.clone(),
        },
    )
    .await?;
    let token = blocking(&hub, move |hub| hub.refresh_log_token(&token, hub.now())).await?;
    Ok(Json(RefreshResponse { token }).into_response())
}

async fn disconnect(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    let token = token(&headers)?;
    admit(
        &hub,
        Admission::Agent {
            token: token.clone(),
        },
    )
    .await?;
    blocking(&hub, move |hub| hub.disconnect(&token, hub.now())).await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct MetricsQuery {
    /// Long-poll: answer once the counts' version differs from this one (or after `wait` s).
    version: Option<u64>,
    wait: Option<u64>,
}

async fn queue_metrics(
    State(hub): Shared,
    headers: HeaderMap,
    Query(query): Query<MetricsQuery>,
) -> Result<Response, HubError> {
    let token = token(&headers)?;
    admit(
        &hub,
        Admission::Type {
            token: token.clone(),
        },
    )
    .await?;
    let asked = token.clone();
    let mut metrics = blocking(&hub, move |hub| hub.metrics(&asked, hub.now())).await?;
    if let (Some(version), Some(wait)) = (query.version, query.wait) {
        if metrics.version == Some(version) && wait > 0 {
            let mut changes = hub.subscribe_version();
            let deadline =
                tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_WAIT_SECONDS));
            while *changes.borrow_and_update() == version {
                if tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            metrics = blocking(&hub, move |hub| hub.metrics(&token, hub.now())).await?;
        }
    }
    Ok(Json(metrics).into_response())
}

/// Flotilla extension: the agents of the asking token's type (names and whether busy).
async fn type_agents(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    let token = token(&headers)?;
    admit(
        &hub,
        Admission::Type {
            token: token.clone(),
        },
    )
    .await?;
    let agents = blocking(&hub, move |hub| hub.agents_of_type(&token)).await?;
    Ok(Json(agents).into_response())
}

#[derive(Deserialize)]
struct LogPushQuery {
    start_from: Option<i64>,
}

/// A log push: the job and its log token are checked, and a place among the pushes in flight
/// taken, before a byte of the (up to 32 MiB) body is read.
async fn push_logs(
    State(edge): State<Edge>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogPushQuery>,
    body: Body,
) -> Result<Response, Refused> {
    let token = token(&headers)?;
    let start_from = query
        .start_from
        .ok_or(HubError::Invalid(Invalid::Missing("start_from")))?;
    let admission = Admission::LogPush {
        job_id: id.clone(),
        bearer: token.clone(),
    };
    admit(&edge.hub, admission).await?;
    let permit = edge.log_pushes.admit(&id)?;
    let body = read_body(body, MAX_LOG_BODY, edge.limits.body_read_timeout).await?;
    blocking_holding(&edge.hub, permit, move |hub| {
        let text = std::str::from_utf8(&body).map_err(|_| HubError::Invalid(Invalid::NotUtf8))?;
        hub.push_logs(&id, &token, start_from, text, hub.now())
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

// ---------------------------------------------------------------- user API

async fn create_agent_type(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let hub = &edge.hub;
    admin(hub, &headers)?;
    let body = read_body(body, MAX_BODY, edge.limits.body_read_timeout).await?;
    let request: NewAgentType = json_body(&body)?;
    if request.execution_time_limit == Some(0) {
        return Err(HubError::Invalid(Invalid::ZeroTimeLimit).into());
    }
    let created = blocking(hub, move |hub| {
        let registration_token =
            hub.create_agent_type_with(&request.name, &request.identity, hub.now())?;
        if request.execution_time_limit.is_some() {
            hub.set_agent_type_time_limit(&request.name, request.execution_time_limit)?;
        }
        Ok(CreatedAgentType {
            name: request.name,
            registration_token,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_agent_types(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let types: Vec<AgentTypeView> = blocking(&hub, |hub| hub.agent_types())
        .await?
        .into_iter()
        .map(|(name, created_at, identity)| AgentTypeView {
            name,
            created_at,
            identity,
        })
        .collect();
    Ok(Json(types).into_response())
}

async fn submit_job(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    admin(&edge.hub, &headers)?;
    let body = read_body(body, MAX_BODY, edge.limits.body_read_timeout).await?;
    let spec: JobSpec = json_body(&body)?;
    let job = blocking(&edge.hub, move |hub| hub.submit(spec, hub.now())).await?;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

async fn list_jobs(
    State(hub): Shared,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let state = match query.state.as_deref() {
        Some(text) => Some(
            text.parse::<JobState>()
                .map_err(|error| HubError::Invalid(error.into()))?,
        ),
        None => None,
    };
    let limit = query.limit.unwrap_or(100).min(10_000);
    let jobs = blocking(&hub, move |hub| hub.list_jobs(state, limit)).await?;
    Ok(Json(jobs).into_response())
}

async fn get_job(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let job = blocking(&hub, move |hub| hub.job(&id)).await?;
    Ok(Json(job).into_response())
}

async fn stop_job(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let job = blocking(&hub, move |hub| hub.stop_job(&id, hub.now())).await?;
    Ok(Json(job).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    start_from: Option<i64>,
    limit: Option<i64>,
    /// Seconds to wait for new lines when there are none yet (follow mode).
    wait: Option<u64>,
}

async fn job_logs(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let start_from = query.start_from.unwrap_or(0);
    let limit = query.limit.unwrap_or(5000).clamp(1, 50_000);
    let notified = hub.logs_changed().notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let job = id.clone();
    let mut page = blocking(&hub, move |hub| hub.logs(&job, start_from, limit)).await?;
    let wait = query.wait.unwrap_or(0).min(MAX_WAIT_SECONDS);
    if page.lines.is_empty() && !page.job_finished && wait > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(wait), notified).await;
        page = blocking(&hub, move |hub| hub.logs(&id, start_from, limit)).await?;
    }
    Ok(Json(page).into_response())
}

async fn list_agents(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let agents = blocking(&hub, |hub| Ok(hub.agents())).await?;
    Ok(Json(agents).into_response())
}

async fn shutdown_agent(
    State(hub): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    blocking(&hub, move |hub| {
        hub.request_agent_shutdown(&name, hub.now())
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

// ---------------------------------------------------------------- Prometheus

/// How long a rendered `/metrics` text is served again (scrapes are 15 s or more apart; a
/// flood of them costs one rendering a second).
const PROMETHEUS_FRESH_FOR: Duration = Duration::from_secs(1);

/// Prometheus `/metrics`: behind the bearer token when the hub was given one.
async fn prometheus(State(edge): State<Edge>, headers: HeaderMap) -> Result<Response, Refused> {
    if let Some(expected) = &edge.limits.metrics_token_hash {
        let presented = token(&headers)?;
        if !tokens::constant_time_eq(&tokens::hash(&presented), expected) {
            return Err(HubError::Unauthorized.into());
        }
    }
    // Held while rendering: scrapes that arrive meanwhile get the same text.
    let mut slot = edge.prometheus.lock().await;
    let text = match slot.as_ref() {
        Some((at, text)) if at.elapsed() < PROMETHEUS_FRESH_FOR => text.clone(),
        _ => {
            let text = blocking(&edge.hub, |hub| Ok(render_prometheus(hub))).await?;
            *slot = Some((Instant::now(), text.clone()));
            text
        }
    };
    Ok(([("content-type", "text/plain; version=0.0.4")], text).into_response())
}

/// The hub's metrics in Prometheus's text format.
fn render_prometheus(hub: &Hub) -> String {
    let (types, counters) = hub.all_metrics(hub.now());
    let long_polls_waiting = hub.long_polls_waiting();
    crate::prometheus::render(crate::prometheus::Scrape {
        types,
        counters,
        long_polls_waiting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each of the hub's errors, with the status it must map to.
    #[allow(clippy::too_many_lines)] // a table: one row per situation, read top to bottom
    fn every_situation() -> Vec<(HubError, StatusCode)> {
        let (job_id, name) = (|| "job-x".to_string(), || "worker".to_string());
        vec![
            (HubError::Unauthorized, StatusCode::UNAUTHORIZED),
            (
                HubError::IdentityRefused(crate::identity::IdentityError::Missing),
                StatusCode::FORBIDDEN,
            ),
            (HubError::Invalid(Invalid::NotUtf8), StatusCode::BAD_REQUEST),
            (
                HubError::JobForUnknownAgentType { name: name() },
                StatusCode::BAD_REQUEST,
            ),
            (
                HubError::NoSuchJob { job_id: job_id() },
                StatusCode::NOT_FOUND,
            ),
            (
                HubError::JobNotRunning { job_id: job_id() },
                StatusCode::NOT_FOUND,
            ),
            (
                HubError::JobNotAssigned { job_id: job_id() },
                StatusCode::NOT_FOUND,
            ),
            (HubError::AgentHasNoJob, StatusCode::NOT_FOUND),
            (
                HubError::NoSuchAgent { name: name() },
                StatusCode::NOT_FOUND,
            ),
            (
                HubError::NoSuchAgentType { name: name() },
                StatusCode::NOT_FOUND,
            ),
            (
                HubError::AgentTypeExists { name: name() },
                StatusCode::CONFLICT,
            ),
            (
                HubError::AgentTypeTokenMismatch { name: name() },
                StatusCode::CONFLICT,
            ),
            (
                HubError::AgentTypeMadeElsewhere { name: name() },
                StatusCode::CONFLICT,
            ),
            (
                HubError::RegistrationRefused {
                    name: name(),
                    refusal: crate::rules::RegisterRefusal::NameHeldAJob,
                },
                StatusCode::CONFLICT,
            ),
            (
                HubError::LogGap {
                    start_from: 9,
                    lines: 2,
                },
                StatusCode::CONFLICT,
            ),
            (HubError::LogFull, StatusCode::UNPROCESSABLE_ENTITY),
            (
                HubError::AgentTypeFull {
                    agent_type: name(),
                    live: 2,
                },
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (HubError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (
                HubError::Store(StoreError::Conflict),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                HubError::Store(StoreError::Unavailable("secret-host:5432".into())),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                HubError::Store(StoreError::Failed("secret-table".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ]
    }

    #[test]
    fn every_error_has_its_status_and_a_store_never_shows_its_words() {
        let table = every_situation();
        for (error, status) in table {
            assert_eq!(status_of(&error), status, "{error}");
            let (words, from_store) = (error.to_string(), matches!(error, HubError::Store(_)));
            let body = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(axum::body::to_bytes(
                    error.into_response().into_body(),
                    4096,
                ))
                .unwrap();
            let body = String::from_utf8_lossy(&body);
            // The positive control: the other errors' own words are in their bodies.
            assert_eq!(body.contains(&words), !from_store, "{body}");
            assert!(!body.contains("secret"), "{body}");
        }
    }
}
