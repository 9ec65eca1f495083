//! The overview page: per agent type, queued and running jobs, idle and busy agents and the
//! oldest queued job's age now, and a chart of the last hours from the hub's sampled history.

use super::layout::{self, Nav};
use super::{chart, page, Console, Page};
use axum::extract::State;
use axum::http::HeaderMap;
use maud::html;

pub(super) async fn overview(State(console): State<Console>, headers: HeaderMap) -> Page {
    let session = console.session(&headers)?;
    let (types, _) = console.hub.all_metrics(console.hub.now());
    let body = html! {
        section aria-labelledby="now" {
            h2 #now { "Now" }
            table.numbers {
                thead { tr {
                    th scope="col" { "Agent type" } th scope="col" { "Queued" }
                    th scope="col" { "Running" } th scope="col" { "Idle agents" }
                    th scope="col" { "Busy agents" } th scope="col" { "Oldest queued" }
                } }
                tbody {
                    @for (name, metrics) in &types {
                        tr data-agent-type=(name) {
                            th scope="row" {
                                a href=(format!("/console/jobs?agent_type={name}")) { (name) }
                            }
                            td.queued { (metrics.jobs.queued) }
                            td.running { (metrics.jobs.running) }
                            td { (metrics.agents.idle) }
                            td { (metrics.agents.occupied) }
                            td { @match metrics.oldest_queued_seconds {
                                Some(age) => (layout::duration(age as i64)),
                                None => "–",
                            } }
                        }
                    }
                }
            }
        }
        section aria-labelledby="history" {
            h2 #history { "The last hours" }
            @for (name, _) in &types {
                h3 { (name) }
                (chart::chart(name, &console.hub.history(name)))
            }
        }
    };
    Ok(page(layout::page(
        "Overview",
        Nav::Overview,
        &session,
        body,
    )))
}
