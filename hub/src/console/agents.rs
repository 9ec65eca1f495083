//! The agents page: every connected agent with its type, state, current job and GPUs, and a
//! button that asks one to shut down at its next sync (after its job, if it has one) — the
//! user API's `POST /api/v1/agents/<name>/shutdown`, behind the session's CSRF token.

use super::layout::{self, csrf_field, Nav};
use super::{page, Console, Page};
use crate::api::blocking;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use axum::Form;
use maud::html;
use protocol::views::AgentView;

fn gpus(agent: &AgentView) -> String {
    if agent.gpus.is_empty() {
        return "none".to_string();
    }
    let mut models: Vec<String> = agent.gpus.iter().map(|gpu| gpu.name.clone()).collect();
    models.dedup();
    format!("{} × {}", agent.gpus.len(), models.join(", "))
}

/// The GPU health gate's result in a word, and its checks one per line (the cell's tooltip).
fn gate(agent: &AgentView) -> Option<(String, String)> {
    let gate = agent.gpu_gate.as_ref()?;
    let verdict = match gate.passed {
        true => format!("health gate passed ({} checks)", gate.checks.len()),
        false => "health gate FAILED".to_string(),
    };
    let lines: Vec<String> = gate
        .checks
        .iter()
        .map(|check| {
            let mark = if check.passed { "ok" } else { "FAIL" };
            format!("{mark} {}: {}", check.name, check.detail)
        })
        .collect();
    Some((verdict, lines.join("\n")))
}

pub(super) async fn list(State(console): State<Console>, headers: HeaderMap) -> Page {
    let session = console.session(&headers)?;
    let agents = console.hub.agents();
    let now = console.hub.now();
    let body = html! {
        @if agents.is_empty() { p.note { "No agent is connected." } }
        @else {
            table.agents {
                thead { tr {
                    th scope="col" { "Agent" } th scope="col" { "Type" } th scope="col" { "State" }
                    th scope="col" { "Job" } th scope="col" { "GPUs" } th scope="col" { "Up" }
                    th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody {
                    @for agent in &agents {
                        tr {
                            th scope="row" { (agent.name) br; small { (agent.hostname) } }
                            td { (agent.agent_type) }
                            td { (agent.state) }
                            td { @match &agent.job_id {
                                Some(job) => a href=(format!("/console/jobs/{job}")) { (job) },
                                None => "–",
                            } }
                            td {
                                (gpus(agent))
                                @if let Some((verdict, checks)) = gate(agent) {
                                    br; small.gpu-gate title=(checks) { (verdict) }
                                }
                            }
                            td { (layout::duration(now - agent.registered_at)) }
                            td {
                                form method="post" action=(format!("/console/agents/{}/shutdown", layout::url_encode(&agent.name))) {
                                    (csrf_field(&session))
                                    button type="submit" aria-label=(format!("Shut down {}", agent.name)) { "Shut down" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(layout::page("Agents", Nav::Agents, &session, body)))
}

#[derive(serde::Deserialize)]
pub(super) struct ShutdownForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn shutdown(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ShutdownForm>,
) -> Page {
    console.action(&headers, &form.csrf)?;
    let asked = name.clone();
    blocking(&console.hub, move |hub| {
        hub.request_agent_shutdown(&asked, hub.now())
    })
    .await?;
    tracing::info!(agent = %name, "console: shutdown requested");
    Ok(Redirect::to("/console/agents").into_response())
}
