//! The frame every console page shares — the `<head>`, the navigation with the sign-out form,
//! the `<main>` landmark — plus the error page, small formatting helpers, and the stylesheet
//! and script served from `hub/assets/` (compiled into the binary: no files to deploy).

use super::auth::Session;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

const STYLESHEET: &str = include_str!("../../assets/console.css");
const SCRIPT: &str = include_str!("../../assets/console.js");

/// The pages in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    Jobs,
    Agents,
    Submit,
}

const NAV: [(Nav, &str, &str); 4] = [
    (Nav::Overview, "/console", "Overview"),
    (Nav::Jobs, "/console/jobs", "Jobs"),
    (Nav::Agents, "/console/agents", "Agents"),
    (Nav::Submit, "/console/jobs/new", "Submit a job"),
];

fn head(title: &str) -> Markup {
    html! {
        (DOCTYPE)
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · Flotilla" }
        link rel="stylesheet" href="/console/assets/console.css";
    }
}

/// A signed-in page: navigation (the current page marked), sign-out, then `body`.
pub(super) fn page(title: &str, current: Nav, session: &Session, body: Markup) -> Markup {
    html! {
        html lang="en" {
            head { (head(title)) script src="/console/assets/console.js" defer {} }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Console" {
                        span.brand { "Flotilla" }
                        ul {
                            @for (nav, href, label) in NAV {
                                li {
                                    @if nav == current {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/console/logout" {
                            (csrf_field(session))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page for someone not signed in (the login page).
pub(super) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        html lang="en" {
            head { (head(title)) }
            body { main #main { h1 { (title) } (body) } }
        }
    }
}

pub(super) fn error_page(status: StatusCode, message: &str) -> Markup {
    bare(
        status.canonical_reason().unwrap_or("Error"),
        html! {
            p role="alert" { (message) }
            p { a href="/console" { "Back to the console" } }
        },
    )
}

/// The hidden field every action's form carries.
pub(super) fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A Unix time as UTC `YYYY-MM-DD HH:MM:SS` inside `<time>`.
pub(super) fn time(unix: i64) -> Markup {
    let text = jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|_| unix.to_string());
    let machine = jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default();
    html! { time datetime=(machine) { (text) } }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(super) fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Seconds as `1h2m3s`.
pub(super) fn duration(seconds: i64) -> String {
    protocol::spec::human_duration(seconds.max(0) as u64)
}

pub(super) async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "max-age=300"),
    ];
    super::secured((headers, body).into_response())
}
