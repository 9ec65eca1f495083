//! A job's log in the console: the agent's log events folded by command like Semaphore's job
//! page (a `<details>` per command, closed once it passed, open while it runs or if it failed),
//! output with its ANSI colours as escaped HTML ([`super::ansi`]), a long-poll endpoint the
//! script follows while the job runs, and the raw log as plain text.

use super::ansi::{self, Style};
use super::{Console, Page};
use crate::api::blocking;
use crate::api::MAX_WAIT_SECONDS;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use maud::{html, Markup, PreEscaped};
use protocol::events::TextRenderer;
use protocol::views::LogPage;
use protocol::LogEvent;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Log lines the job page renders itself, and their bytes at most (the page stays under
/// 100 KB); the script fetches the rest.
const FIRST_PAGE_LINES: i64 = 400;
const FIRST_PAGE_BYTES: usize = 48 * 1024;
/// Log lines per answer of the follow endpoint.
const FOLLOW_LINES: i64 = 1000;

/// One thing the log view shows, in order. `html` fields are already escaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Item {
    /// A job-level line (`job started`, `job finished: passed`).
    Job { text: String },
    /// A command starts: a new fold.
    Cmd { text: String },
    /// Output of the current command, as escaped HTML.
    Out { html: String },
    /// The current command ended.
    End { text: String, ok: bool },
}

/// The items of raw log lines (JSON events; unreadable lines are shown as they are). The colour
/// state runs through the lines and restarts at each command.
pub(super) fn items(lines: &[String]) -> Vec<Item> {
    let mut style = Style::default();
    let mut items = Vec::with_capacity(lines.len());
    for line in lines {
        let item = match serde_json::from_str::<LogEvent>(line) {
            Ok(LogEvent::JobStarted { .. }) => Item::Job {
                text: "job started".into(),
            },
            Ok(LogEvent::CmdStarted { directive, .. }) => {
                style = Style::default();
                Item::Cmd { text: directive }
            }
            Ok(LogEvent::CmdOutput { output, .. }) => Item::Out {
                html: ansi::to_html(&output, &mut style),
            },
            Ok(LogEvent::CmdFinished {
                exit_code,
                started_at,
                finished_at,
                ..
            }) => Item::End {
                text: format!("exit code {exit_code} ({}s)", finished_at - started_at),
                ok: exit_code == 0,
            },
            Ok(LogEvent::JobFinished { result, .. }) => Item::Job {
                text: format!("job finished: {result}"),
            },
            Err(_) => Item::Out {
                html: ansi::to_html(&format!("{line}\n"), &mut Style::default()),
            },
        };
        items.push(item);
    }
    items
}

/// The log lines the job page renders: the first [`FIRST_PAGE_LINES`], cut to
/// [`FIRST_PAGE_BYTES`].
pub(super) fn first_page(
    hub: &crate::hub::Hub,
    job_id: &str,
) -> Result<LogPage, crate::hub::HubError> {
    let mut page = hub.logs(job_id, 0, FIRST_PAGE_LINES)?;
    let mut bytes = 0;
    let keep = page
        .lines
        .iter()
        .take_while(|line| {
            bytes += line.len();
            bytes <= FIRST_PAGE_BYTES
        })
        .count();
    page.lines.truncate(keep);
    page.next_start_from = keep as i64;
    Ok(page)
}

/// A command's fold while it is being built.
struct Fold {
    directive: String,
    output: String,
    end: Option<(String, bool)>,
}

fn fold_markup(fold: &Fold) -> Markup {
    let open = fold.end.as_ref().is_none_or(|(_, ok)| !ok);
    html! {
        details.cmd open[open] {
            summary {
                code { "$ " (fold.directive) }
                @if let Some((text, ok)) = &fold.end {
                    " " span class=(if *ok { "exit ok" } else { "exit failed" }) { (text) }
                }
            }
            pre { (PreEscaped(&fold.output)) }
        }
    }
}

/// The log view of a job's first page of lines; the script continues from `data-next`.
pub(super) fn rendered(job_id: &str, log: &LogPage) -> Markup {
    let mut blocks: Vec<Markup> = Vec::new();
    let mut fold: Option<Fold> = None;
    for item in items(&log.lines) {
        match item {
            Item::Cmd { text } => {
                blocks.extend(fold.take().map(|f| fold_markup(&f)));
                fold = Some(Fold {
                    directive: text,
                    output: String::new(),
                    end: None,
                });
            }
            Item::Out { html } => match fold.as_mut() {
                Some(fold) => fold.output.push_str(&html),
                None => blocks.push(html! { pre { (PreEscaped(html)) } }),
            },
            Item::End { text, ok } => {
                if let Some(fold) = fold.as_mut() {
                    fold.end = Some((text, ok));
                }
            }
            Item::Job { text } => {
                blocks.extend(fold.take().map(|f| fold_markup(&f)));
                blocks.push(html! { p.job-event { (text) } });
            }
        }
    }
    blocks.extend(fold.take().map(|f| fold_markup(&f)));
    html! {
        div #log-view .log aria-live="polite" data-job=(job_id) data-next=(log.next_start_from)
            data-finished=(if log.job_finished { "true" } else { "false" }) {
            @for block in &blocks { (block) }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct FollowQuery {
    #[serde(default)]
    from: i64,
    /// Seconds to wait for new lines when there are none yet.
    #[serde(default)]
    wait: u64,
}

/// What the follow endpoint answers.
#[derive(Serialize)]
struct Follow {
    items: Vec<Item>,
    next: i64,
    finished: bool,
}

/// New log items from `from`, waiting up to `wait` seconds for some while the job runs.
pub(super) async fn follow(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<FollowQuery>,
) -> Page {
    console.session(&headers)?;
    let hub = &console.hub;
    let notified = hub.logs_changed().notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let from = query.from;
    let page = |id: String| blocking(hub, move |hub| hub.logs(&id, from, FOLLOW_LINES));
    let mut log = page(id.clone()).await?;
    let wait = query.wait.min(MAX_WAIT_SECONDS);
    if log.lines.is_empty() && !log.job_finished && wait > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(wait), notified).await;
        log = page(id).await?;
    }
    let answer = Follow {
        items: items(&log.lines),
        next: log.next_start_from,
        finished: log.job_finished,
    };
    Ok(super::secured(Json(answer).into_response()))
}

/// The whole log as a terminal transcript (`text/plain`, escapes as they are).
pub(super) async fn raw(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    console.session(&headers)?;
    let mut renderer = TextRenderer::default();
    let mut text = String::new();
    let mut from = 0;
    loop {
        let asked = id.clone();
        let log = blocking(&console.hub, move |hub| hub.logs(&asked, from, 5000)).await?;
        for line in &log.lines {
            match serde_json::from_str::<LogEvent>(line) {
                Ok(event) => text.push_str(&renderer.render(&event)),
                Err(_) => text.push_str(line),
            }
        }
        if log.lines.is_empty() {
            break;
        }
        from = log.next_start_from;
    }
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    Ok(super::secured((headers, text).into_response()))
}
