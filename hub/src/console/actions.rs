//! The console's sign-in and sign-out and the CLI's actions: submit a job (a small form, or a
//! pasted YAML or JSON spec) and stop one. Every action is a POST whose form carries the
//! session's CSRF token, and answers with a redirect to the page that shows its effect.

use super::layout::{self, csrf_field, Nav};
use super::{auth, page, Console, Page};
use crate::api::blocking;
use crate::hub::{HubError, Invalid};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use protocol::JobSpec;
use serde::Deserialize;
use std::net::SocketAddr;

fn login_form(refused: bool) -> Markup {
    layout::bare(
        "Sign in to Flotilla",
        html! {
            @if refused {
                p.alert role="alert" { "That token is not the hub's admin token." }
            }
            form.login method="post" action="/console/login" {
                label for="token" { "Admin token" }
                p.hint { "From the data directory's " code { "admin-token" } " file. It is exchanged once for a session cookie and never shown again." }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub(super) async fn login_page() -> Response {
    page(login_form(false))
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
}

pub(super) async fn login(
    State(console): State<Console>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(address))| address);
    let client = auth::client_address(peer, &headers, console.trust_forwarded_for);
    if let Some(client) = client.filter(|client| !console.sign_ins.allow(*client)) {
        tracing::warn!(%client, "console: too many sign-in attempts");
        let mut response = page(login_form(true));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let again = axum::http::HeaderValue::from_static("60");
        response.headers_mut().insert(header::RETRY_AFTER, again);
        return response;
    }
    if form.token.is_empty() || !console.hub.is_admin(form.token.trim()) {
        tracing::warn!("console: sign-in refused");
        let mut response = page(login_form(true));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let id = console.sessions.start(console.hub.now());
    let cookie = auth::set_cookie(Some(&id), console.secure);
    super::secured(([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response())
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Page {
    console.action(&headers, &form.csrf)?;
    console.sessions.end(&headers);
    let cookie = auth::set_cookie(None, console.secure);
    let redirect = Redirect::to("/console/login");
    Ok(super::secured(
        ([(header::SET_COOKIE, cookie)], redirect).into_response(),
    ))
}

pub(super) async fn submit_page(State(console): State<Console>, headers: HeaderMap) -> Page {
    let session = console.session(&headers)?;
    let types = blocking(&console.hub, |hub| hub.agent_types()).await?;
    let body = html! {
        form.submit method="post" action="/console/jobs" {
            (csrf_field(&session))
            fieldset {
                legend { "A few commands" }
                label for="name" { "Name" }
                input #name name="name" maxlength="200";
                label for="agent_type" { "Agent type" }
                select #agent_type name="agent_type" {
                    @for (name, _, _) in &types { option value=(name) { (name) } }
                }
                label for="commands" { "Commands, one per line" }
                textarea #commands name="commands" rows="5" {}
            }
            fieldset {
                legend { "Or a whole spec" }
                label for="spec" { "YAML or JSON job spec (as for " code { "scaler jobs submit" } "); used when not empty" }
                textarea #spec name="spec" rows="10" {}
            }
            button type="submit" { "Submit" }
        }
    };
    Ok(page(layout::page(
        "Submit a job",
        Nav::Submit,
        &session,
        body,
    )))
}

#[derive(Deserialize)]
pub(super) struct SubmitForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    agent_type: String,
    #[serde(default)]
    commands: String,
    #[serde(default)]
    spec: String,
}

/// The spec a submit form describes.
fn spec_of(form: &SubmitForm) -> Result<JobSpec, HubError> {
    if !form.spec.trim().is_empty() {
        return serde_yaml::from_str(&form.spec)
            .map_err(|error| Invalid::JobSpecText(error.to_string()).into());
    }
    let commands: Vec<String> = form
        .commands
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect();
    let mut spec = JobSpec::from_commands(&form.agent_type, &commands);
    spec.name = form.name.trim().to_string();
    Ok(spec)
}

pub(super) async fn submit(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<SubmitForm>,
) -> Page {
    console.action(&headers, &form.csrf)?;
    let spec = spec_of(&form)?;
    let job = blocking(&console.hub, move |hub| hub.submit(spec, hub.now())).await?;
    tracing::info!(job = %job.id, "console: job submitted");
    Ok(Redirect::to(&format!("/console/jobs/{}", job.id)).into_response())
}

pub(super) async fn stop(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Page {
    console.action(&headers, &form.csrf)?;
    let job = blocking(&console.hub, move |hub| hub.stop_job(&id, hub.now())).await?;
    tracing::info!(job = %job.id, "console: stop requested");
    Ok(Redirect::to(&format!("/console/jobs/{}", job.id)).into_response())
}
