//! The hub's HTTP API (axum): the agent protocol under `/api/v1/self_hosted_agents` exactly as
//! docs/protocol.md §2 describes it, log intake under `/api/v1/logs`, the user API (admin token)
//! under `/api/v1`, plus `/healthz` and Prometheus `/metrics`. Handlers only translate HTTP to
//! [`Hub`] calls and [`HubError`]s to status codes; errors never echo secrets.

use crate::hub::{Hub, HubError};
use crate::store::StoreError;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::views::{AgentTypeView, CreatedAgentType, ErrorBody, NewAgentType};
use protocol::{JobSpec, JobState, RefreshResponse, RegisterRequest, SyncRequest};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Largest log push body (2000 lines of fully escaped 1000-byte output fit).
pub const MAX_LOG_BODY: usize = 32 * 1024 * 1024;
/// Largest body anywhere else.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest long-poll a client may ask for.
pub const MAX_WAIT_SECONDS: u64 = 60;

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            HubError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized".to_string()),
            HubError::NotFound(message) => (StatusCode::NOT_FOUND, message.clone()),
            HubError::BadRequest(message) => (StatusCode::BAD_REQUEST, message.clone()),
            HubError::Conflict(message) => (StatusCode::CONFLICT, message.clone()),
            HubError::Forbidden(message) => (StatusCode::FORBIDDEN, message.clone()),
            HubError::LogFull => (StatusCode::UNPROCESSABLE_ENTITY, self.to_string()),
            HubError::Store(
                error @ (StoreError::Conflict | StoreError::Postgres(_) | StoreError::Connect(_)),
            ) => {
                // Busy or briefly unreachable (a database failover): the client retries.
                tracing::warn!(%error, "store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the hub's database is busy or unavailable; retry".to_string(),
                )
            }
            HubError::Store(error) => {
                tracing::error!(%error, "store error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_string(),
                )
            }
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
    serde_json::from_slice(body)
        .map_err(|error| HubError::BadRequest(format!("invalid JSON body: {error}")))
}

type Shared = State<Arc<Hub>>;

pub fn router(hub: Arc<Hub>) -> Router {
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
    Router::new()
        .nest("/api/v1/self_hosted_agents", agent_api)
        .nest("/api/v1", user_api)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .merge(
            Router::new()
                .route("/api/v1/logs/{id}", post(push_logs))
                .layer(DefaultBodyLimit::max(MAX_LOG_BODY)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(prometheus))
        .with_state(hub)
}

// ---------------------------------------------------------------- agent protocol

async fn register(
    State(hub): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HubError> {
    let token = token(&headers)?;
    let request: RegisterRequest = json_body(&body)?;
    Ok(Json(hub.register(&token, request, unix_now())?).into_response())
}

async fn sync(State(hub): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, HubError> {
    let token = token(&headers)?;
    let request: SyncRequest = json_body(&body)?;
    Ok(Json(hub.sync(&token, &request, unix_now())?).into_response())
}

async fn job_request(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HubError> {
    let token = token(&headers)?;
    Ok(Json(hub.job_request(&token, &id, unix_now())?).into_response())
}

async fn refresh(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    let token = token(&headers)?;
    let token = hub.refresh_log_token(&token, unix_now())?;
    Ok(Json(RefreshResponse { token }).into_response())
}

async fn disconnect(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    let token = token(&headers)?;
    hub.disconnect(&token, unix_now())?;
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
    let mut metrics = hub.metrics(&token, unix_now())?;
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
            metrics = hub.metrics(&token, unix_now())?;
        }
    }
    Ok(Json(metrics).into_response())
}

/// Flotilla extension: the agents of the asking token's type (names and whether busy).
async fn type_agents(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    let token = token(&headers)?;
    Ok(Json(hub.agents_of_type(&token)?).into_response())
}

#[derive(Deserialize)]
struct LogPushQuery {
    start_from: Option<i64>,
}

async fn push_logs(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogPushQuery>,
    body: Bytes,
) -> Result<Response, HubError> {
    let token = token(&headers)?;
    let start_from = query
        .start_from
        .ok_or_else(|| HubError::BadRequest("start_from is required".into()))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| HubError::BadRequest("the body is not UTF-8".into()))?;
    hub.push_logs(&id, &token, start_from, text, unix_now())?;
    Ok(StatusCode::OK.into_response())
}

// ---------------------------------------------------------------- user API

async fn create_agent_type(
    State(hub): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let request: NewAgentType = json_body(&body)?;
    if request.execution_time_limit == Some(0) {
        return Err(HubError::BadRequest(
            "execution_time_limit must be more than 0 seconds".into(),
        ));
    }
    let registration_token =
        hub.create_agent_type_with(&request.name, &request.identity, unix_now())?;
    if request.execution_time_limit.is_some() {
        hub.set_agent_type_time_limit(&request.name, request.execution_time_limit)?;
    }
    let created = CreatedAgentType {
        name: request.name,
        registration_token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_agent_types(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let types: Vec<AgentTypeView> = hub
        .agent_types()?
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
    State(hub): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    let spec: JobSpec = json_body(&body)?;
    Ok((StatusCode::CREATED, Json(hub.submit(spec, unix_now())?)).into_response())
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
                .map_err(|error| HubError::BadRequest(error.to_string()))?,
        ),
        None => None,
    };
    let limit = query.limit.unwrap_or(100).min(10_000);
    Ok(Json(hub.list_jobs(state, limit)?).into_response())
}

async fn get_job(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    Ok(Json(hub.job(&id)?).into_response())
}

async fn stop_job(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    Ok(Json(hub.stop_job(&id, unix_now())?).into_response())
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
    let mut page = hub.logs(&id, start_from, limit)?;
    let wait = query.wait.unwrap_or(0).min(MAX_WAIT_SECONDS);
    if page.lines.is_empty() && !page.job_finished && wait > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(wait), notified).await;
        page = hub.logs(&id, start_from, limit)?;
    }
    Ok(Json(page).into_response())
}

async fn list_agents(State(hub): Shared, headers: HeaderMap) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    Ok(Json(hub.agents()).into_response())
}

async fn shutdown_agent(
    State(hub): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, HubError> {
    admin(&hub, &headers)?;
    hub.request_agent_shutdown(&name, unix_now())?;
    Ok(StatusCode::OK.into_response())
}

// ---------------------------------------------------------------- Prometheus

async fn prometheus(State(hub): Shared) -> Response {
    let (types, counters) = hub.all_metrics(unix_now());
    let mut out = String::new();
    out.push_str(
        "# HELP flotilla_hub_jobs Jobs by agent type and state.\n# TYPE flotilla_hub_jobs gauge\n",
    );
    for (name, metrics) in &types {
        out.push_str(&format!(
            "flotilla_hub_jobs{{agent_type=\"{name}\",state=\"queued\"}} {}\n",
            metrics.jobs.queued
        ));
        out.push_str(&format!(
            "flotilla_hub_jobs{{agent_type=\"{name}\",state=\"running\"}} {}\n",
            metrics.jobs.running
        ));
    }
    out.push_str("# HELP flotilla_hub_agents Connected agents by agent type and state.\n# TYPE flotilla_hub_agents gauge\n");
    for (name, metrics) in &types {
        out.push_str(&format!(
            "flotilla_hub_agents{{agent_type=\"{name}\",state=\"idle\"}} {}\n",
            metrics.agents.idle
        ));
        out.push_str(&format!(
            "flotilla_hub_agents{{agent_type=\"{name}\",state=\"occupied\"}} {}\n",
            metrics.agents.occupied
        ));
    }
    out.push_str("# HELP flotilla_hub_oldest_queued_seconds Age of the oldest queued job.\n# TYPE flotilla_hub_oldest_queued_seconds gauge\n");
    for (name, metrics) in &types {
        out.push_str(&format!(
            "flotilla_hub_oldest_queued_seconds{{agent_type=\"{name}\"}} {}\n",
            metrics.oldest_queued_seconds.unwrap_or(0)
        ));
    }
    out.push_str("# HELP flotilla_hub_jobs_finished_total Finished jobs by result.\n# TYPE flotilla_hub_jobs_finished_total counter\n");
    for ((name, result), count) in &counters.finished {
        out.push_str(&format!("flotilla_hub_jobs_finished_total{{agent_type=\"{name}\",result=\"{result}\"}} {count}\n"));
    }
    out.push_str(&format!(
        "# HELP flotilla_hub_jobs_requeued_total Jobs re-queued after their agent was lost or interrupted.\n# TYPE flotilla_hub_jobs_requeued_total counter\nflotilla_hub_jobs_requeued_total {}\n",
        counters.requeued
    ));
    out.push_str(&format!(
        "# HELP flotilla_hub_agents_lost_total Agents that stopped syncing.\n# TYPE flotilla_hub_agents_lost_total counter\nflotilla_hub_agents_lost_total {}\n",
        counters.lost_agents
    ));
    for (metric, help, histogram) in [
        (
            "flotilla_hub_time_to_start_seconds",
            "Time from queued to started.",
            &counters.time_to_start,
        ),
        (
            "flotilla_hub_job_duration_seconds",
            "Time from started to finished.",
            &counters.duration,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {metric} {help}\n# TYPE {metric} histogram\n"
        ));
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            out.push_str(&format!("{metric}_bucket{{le=\"{bound}\"}} {count}\n"));
        }
        out.push_str(&format!(
            "{metric}_bucket{{le=\"+Inf\"}} {}\n{metric}_sum {}\n{metric}_count {}\n",
            histogram.count, histogram.sum, histogram.count
        ));
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
