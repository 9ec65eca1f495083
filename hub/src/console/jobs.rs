//! The jobs pages: the list (filters by state, agent type and name; newest first; pages of
//! [`PAGE_SIZE`] by `seq`), and one job's page — its result, attempts, timeline, spec with every
//! secret value masked, and its log (server-rendered, then followed live by the script).

use super::layout::{self, csrf_field, Nav};
use super::timeline::{self, Moments};
use super::{logs, page, Console, Page};
use crate::api::blocking;
use crate::hub::JobDetail;
use crate::store::JobQuery;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use maud::{html, Markup};
use protocol::views::JobView;
use protocol::{JobSpec, JobState};
use serde::Deserialize;

/// Jobs per page of the list.
pub(super) const PAGE_SIZE: u32 = 50;

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    agent_type: String,
    #[serde(default)]
    name: String,
    before: Option<i64>,
}

impl ListQuery {
    fn job_query(&self) -> JobQuery {
        let text = |value: &str| Some(value.trim().to_string()).filter(|v| !v.is_empty());
        JobQuery {
            state: self.state.parse().ok(),
            agent_type: text(&self.agent_type),
            name: text(&self.name),
            before: self.before,
            limit: PAGE_SIZE,
        }
    }

    /// The query string of the next page after `seq`.
    fn next_page(&self, seq: i64) -> String {
        let pairs = [
            ("state", self.state.as_str()),
            ("agent_type", self.agent_type.as_str()),
            ("name", self.name.as_str()),
        ];
        let mut query: Vec<String> = pairs
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| format!("{key}={}", layout::url_encode(value)))
            .collect();
        query.push(format!("before={seq}"));
        format!("/console/jobs?{}", query.join("&"))
    }
}

fn filters(query: &ListQuery, types: &[String]) -> Markup {
    html! {
        form.filters method="get" action="/console/jobs" role="search" {
            label for="f-state" { "State" }
            select #f-state name="state" {
                option value="" { "any" }
                @for state in JobState::ALL {
                    option value=(state.as_str()) selected[query.state == state.as_str()] { (state.as_str()) }
                }
            }
            label for="f-type" { "Agent type" }
            select #f-type name="agent_type" {
                option value="" { "any" }
                @for name in types {
                    option value=(name) selected[&query.agent_type == name] { (name) }
                }
            }
            label for="f-name" { "Name contains" }
            input #f-name name="name" value=(query.name);
            button type="submit" { "Filter" }
        }
    }
}

fn state_badge(job: &JobView) -> Markup {
    let text = match job.result {
        Some(result) => result.as_str().to_string(),
        None => job.state.as_str().to_string(),
    };
    html! { span class=(format!("badge s-{text}")) { (text) } }
}

pub(super) async fn list(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Page {
    let session = console.session(&headers)?;
    let asked = query.job_query();
    let (jobs, more) = blocking(&console.hub, move |hub| hub.query_jobs(&asked)).await?;
    let types: Vec<String> = console
        .hub
        .agent_types()?
        .into_iter()
        .map(|t| t.0)
        .collect();
    let now = console.hub.now();
    let body = html! {
        (filters(&query, &types))
        table.jobs {
            thead { tr {
                th scope="col" { "Job" } th scope="col" { "State" } th scope="col" { "Agent type" }
                th scope="col" { "Queued" } th scope="col" { "Took" }
            } }
            tbody {
                @for (_, job) in &jobs {
                    tr {
                        td { a href=(format!("/console/jobs/{}", job.id)) { (job.name) } br; small.id { (job.id) } }
                        td { (state_badge(job)) }
                        td { (job.agent_type) }
                        td { (layout::time(job.queued_at)) }
                        td { (layout::duration(job.finished_at.unwrap_or(now) - job.queued_at)) }
                    }
                }
            }
        }
        @if jobs.is_empty() { p.note { "No jobs match." } }
        @if let (true, Some((seq, _))) = (more, jobs.last()) {
            p { a rel="next" href=(query.next_page(*seq)) { "Older jobs →" } }
        }
    };
    Ok(page(layout::page("Jobs", Nav::Jobs, &session, body)))
}

/// The timeline bar (an SVG: no inline styles under the console's CSP) and its legend.
fn timeline_bar(detail: &JobDetail, now: i64) -> Markup {
    let job = &detail.view;
    let moments = Moments {
        queued: job.queued_at,
        launched: detail.launched_at,
        registered: detail.registered_at,
        assigned: job.assigned_at,
        started: job.started_at,
        finished: job.finished_at,
    };
    let spans = timeline::phases(&moments, now);
    let total = spans
        .last()
        .map(|s| s.end - job.queued_at)
        .unwrap_or(0)
        .max(1) as f64;
    let milestones = [
        ("queued", Some(job.queued_at)),
        ("instance launched", detail.launched_at),
        ("agent registered", detail.registered_at),
        ("assigned", job.assigned_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
    ];
    html! {
        svg.timeline viewBox="0 0 1000 24" preserveAspectRatio="none" role="img" aria-labelledby="timeline-legend" {
            @for span in &spans {
                rect class=(span.phase.class())
                    x=(format!("{:.1}", (span.start - job.queued_at) as f64 / total * 1000.0))
                    width=(format!("{:.1}", ((span.end - span.start) as f64 / total * 1000.0).max(2.0)))
                    y="0" height="24" {}
            }
        }
        ul #timeline-legend .phases {
            @for span in &spans {
                li data-phase=(span.phase.label()) {
                    span class=(format!("swatch {}", span.phase.class())) {}
                    (span.phase.label()) ": " (layout::duration(span.end - span.start))
                }
            }
        }
        dl.milestones {
            @for (label, at) in milestones {
                @if let Some(at) = at { dt { (label) } dd { (layout::time(at)) } }
            }
        }
    }
}

/// The spec with every environment value and file content masked.
fn spec_table(spec: &JobSpec) -> Markup {
    html! {
        dl.spec {
            dt { "Commands" }
            dd { ol { @for command in &spec.commands { li { code { (command.directive()) } } } } }
            @if !spec.env.is_empty() {
                dt { "Environment" }
                dd { ul { @for name in spec.env.keys() { li { code { (name) } " = " span.masked { "••••••" } } } } }
            }
            @if !spec.files.is_empty() {
                dt { "Files" }
                dd { ul { @for file in &spec.files { li { code { (file.path) } " (mode " (file.mode) ", content masked)" } } } }
            }
            @if let Some(limit) = spec.execution_time_limit {
                dt { "Time limit" } dd { (layout::duration(limit.seconds() as i64)) }
            }
            dt { "Retries when its agent is lost" } dd { (spec.retry.agent_lost) }
        }
    }
}

/// The job's reason; a job re-queued (its agent lost, interrupted, or its machine faulty) and
/// taken again says where it went: "GPU fault on i-1: Xid 79 …; retried on i-2".
fn reason(job: &JobView) -> Option<String> {
    let reason = job.reason.as_deref()?;
    match (reason.strip_prefix("re-queued: "), &job.agent) {
        (Some(why), Some(agent)) if job.state != JobState::Queued => {
            Some(format!("{why}; retried on {agent}"))
        }
        _ => Some(reason.to_string()),
    }
}

fn summary(job: &JobView, session: &super::auth::Session) -> Markup {
    html! {
        dl.summary {
            dt { "Id" } dd { code { (job.id) } }
            dt { "State" } dd #job-state { (state_badge(job)) }
            @if let Some(reason) = reason(job) { dt { "Reason" } dd #job-reason { (reason) } }
            dt { "Agent type" } dd { (job.agent_type) }
            dt { "Attempts" } dd { (job.attempts) }
            @if let Some(agent) = &job.agent { dt { "Agent" } dd { (agent) } }
        }
        @if !job.state.is_finished() {
            form.stop method="post" action=(format!("/console/jobs/{}/stop", job.id)) {
                (csrf_field(session))
                button.danger type="submit" { "Stop this job" }
            }
        }
    }
}

pub(super) async fn show(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    let session = console.session(&headers)?;
    let (detail, log) = blocking(&console.hub, move |hub| {
        Ok((hub.job_detail(&id)?, logs::first_page(hub, &id)?))
    })
    .await?;
    let job = &detail.view;
    let body = html! {
        (summary(job, &session))
        section aria-labelledby="timeline" {
            h2 #timeline { "Timeline" }
            (timeline_bar(&detail, console.hub.now()))
        }
        section aria-labelledby="log" {
            h2 #log { "Log" }
            p { a href=(format!("/console/jobs/{}/log.txt", job.id)) { "Raw log" } }
            (logs::rendered(&job.id, &log))
        }
        section aria-labelledby="spec" {
            h2 #spec { "Spec" }
            @match &detail.spec {
                Some(spec) => (spec_table(spec)),
                None => p.note { "The spec cannot be read." },
            }
        }
    };
    Ok(page(layout::page(&job.name, Nav::Jobs, &session, body)))
}
