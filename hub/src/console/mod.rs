//! The hub's web console: server-rendered HTML pages under `/console` on the hub's own listener
//! (same TLS), for people who would rather look than read — the queue per agent type with a
//! chart of the last hours, jobs with filters, each job's spec, timeline and live log, the
//! agents, and the CLI's actions (submit, stop, shut an agent down). Templates are `maud`
//! (escaped by default); the only script (`assets/console.js`) follows a running job's log, so
//! everything else works without JavaScript. Sign-in and CSRF: [`auth`].
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from the hub only,
//! no inline ones), `no-store` and `nosniff`, so even markup that escaped the templates could
//! not run.

mod actions;
mod agents;
mod ansi;
mod auth;
pub use auth::SIGN_INS_PER_MINUTE;
mod chart;
mod jobs;
mod layout;
mod logs;
mod overview;
mod timeline;

use crate::hub::{Hub, HubError};
use auth::{Session, Sessions};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use std::sync::Arc;
use thiserror::Error;

/// What every console handler shares.
#[derive(Clone)]
pub struct Console {
    hub: Arc<Hub>,
    sessions: Arc<Sessions>,
    sign_ins: Arc<auth::SignInLimiter>,
    /// Session cookies are `Secure` (the hub is served over TLS, or behind an HTTPS proxy).
    secure: bool,
    /// A proxy in front appends the client's address to `X-Forwarded-For`.
    trust_forwarded_for: bool,
    /// A form's whole body must be in within this long.
    body_read_timeout: std::time::Duration,
}

/// Largest sign-in form (the token and a little more).
const MAX_SIGN_IN_BODY: usize = 4 * 1024;

/// Reads a form whole before its handler runs, within the body deadline, and only the forms a
/// client may send: a sign-in (up to 4 KiB) or a signed-in session's action (up to
/// `api::MAX_BODY`); a POST without a session is sent to sign in unread. Other requests'
/// bodies are never read.
async fn bounded_form(
    State(console): State<Console>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let limit = if request.uri().path() == "/console/login" {
        MAX_SIGN_IN_BODY
    } else if console.session(request.headers()).is_ok() {
        crate::api::MAX_BODY
    } else {
        return ConsoleError::SignIn.into_response();
    };
    let (parts, body) = request.into_parts();
    match crate::api::read_body(body, limit, console.body_read_timeout).await {
        Ok(bytes) => {
            let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

impl Console {
    /// The signed-in session of a request, or [`ConsoleError::SignIn`].
    fn session(&self, headers: &HeaderMap) -> Result<Session, ConsoleError> {
        self.sessions
            .find(headers, self.hub.now())
            .ok_or(ConsoleError::SignIn)
    }

    /// The session of a request whose form carries `csrf`; refused (403) without the right one.
    fn action(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, ConsoleError> {
        let session = self.session(headers)?;
        if auth::csrf_ok(&session, csrf) {
            Ok(session)
        } else {
            Err(ConsoleError::Csrf)
        }
    }
}

/// Why a console request was not answered with its page.
#[derive(Debug, Error)]
pub(crate) enum ConsoleError {
    /// No live session: the browser is sent to the login page.
    #[error("sign in first")]
    SignIn,
    #[error("the form's CSRF token is missing or wrong: reload the page and try again")]
    Csrf,
    #[error(transparent)]
    Hub(#[from] HubError),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::SignIn => return Redirect::to("/console/login").into_response(),
            ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::Hub(error) => crate::api::status_of(error),
        };
        let message = match &self {
            ConsoleError::Hub(HubError::Store(error)) => {
                tracing::error!(%error, "console: store error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut response = page(layout::error_page(status, &message));
        *response.status_mut() = status;
        response
    }
}

/// The console's security headers on any answer.
fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let policy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                  connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, policy),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An HTML page as an answer.
fn page(markup: Markup) -> Response {
    secured(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            markup.into_string(),
        )
            .into_response(),
    )
}

type Page = Result<Response, ConsoleError>;

/// The console's routes with the default edge limits. `secure`: mark cookies `Secure`.
pub fn router(hub: Arc<Hub>, secure: bool) -> Router {
    router_with(hub, secure, &crate::api::EdgeLimits::default())
}

/// The console's routes, to merge into the hub's router: forms are read whole within
/// `limits` before any handler runs ([`bounded_form`]); sign-in attempts are limited per
/// client address.
pub(crate) fn router_with(hub: Arc<Hub>, secure: bool, limits: &crate::api::EdgeLimits) -> Router {
    let console = Console {
        hub,
        sessions: Arc::new(Sessions::default()),
        sign_ins: Arc::new(auth::SignInLimiter::default()),
        secure,
        trust_forwarded_for: limits.trust_forwarded_for,
        body_read_timeout: limits.body_read_timeout,
    };
    let bounded = axum::middleware::from_fn_with_state(console.clone(), bounded_form);
    Router::new()
        // A person who opens the hub's own address lands on the console (sign-in first).
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/console") }),
        )
        .route("/console", get(overview::overview))
        .route(
            "/console/login",
            get(actions::login_page).post(actions::login),
        )
        .route("/console/logout", post(actions::logout))
        .route("/console/jobs", get(jobs::list).post(actions::submit))
        .route("/console/jobs/new", get(actions::submit_page))
        .route("/console/jobs/{id}", get(jobs::show))
        .route("/console/jobs/{id}/stop", post(actions::stop))
        .route("/console/jobs/{id}/log", get(logs::follow))
        .route("/console/jobs/{id}/log.txt", get(logs::raw))
        .route("/console/agents", get(agents::list))
        .route("/console/agents/{name}/shutdown", post(agents::shutdown))
        .route("/console/assets/console.css", get(layout::stylesheet))
        .route("/console/assets/console.js", get(layout::script))
        .layer(bounded)
        .with_state(console)
}
