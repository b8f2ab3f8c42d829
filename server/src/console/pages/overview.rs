//! The overview: the graph, jobs and audiences of the last 24 h, the
//! webhook outbox, and the storage's health (the page could read it).

use super::layout::{badge, figures, page};
use crate::console::{svc, Operator, Page, State};
use crate::services::blocking;
use maud::html;

/// `GET /console/`.
pub async fn show(state: State, op: Operator) -> Page {
    let s = svc(&state);
    let o = blocking(move || s.console_overview()).await?;
    let graph = o.graph.as_ref();
    let identifiers: u64 = graph.map_or(0, |g| g.identifiers.values().sum());
    let mut items = vec![
        (
            "graph version",
            graph.map_or("none".into(), |g| g.version.to_string()),
        ),
        ("persons", graph.map_or(0, |g| g.persons).to_string()),
        ("identifiers", identifiers.to_string()),
        ("jobs (24 h)", o.recent_jobs.len().to_string()),
        ("audiences (24 h)", o.recent_audiences.len().to_string()),
        ("webhooks pending", o.outbox_pending.to_string()),
        ("webhooks failed", o.outbox_failed.to_string()),
    ];
    items.push(("storage", "healthy".into()));
    let content = html! {
        (figures(&items))
        h2 { "Jobs by status" }
        table {
            thead { tr { th { "status" } th.num { "jobs" } } }
            tbody {
                @for (status, n) in &o.job_counts {
                    tr { td { (badge(status)) } td.num { (n) } }
                }
            }
        }
        h2 { "Jobs of the last 24 hours" }
        @if o.recent_jobs.is_empty() { p.empty { "No job in the last 24 hours." } }
        @else {
            table {
                thead { tr { th { "job" } th { "advertiser" } th { "destination" } th { "created" } th { "status" } } }
                tbody {
                    @for j in &o.recent_jobs {
                        tr {
                            td { a href=(format!("/console/jobs/{}", j.id)) { (j.id) } }
                            td { (j.advertiser) } td { (j.destination) } td { (j.created) }
                            td { (badge(&j.status)) }
                        }
                    }
                }
            }
        }
        h2 { "Audiences of the last 24 hours" }
        @if o.recent_audiences.is_empty() { p.empty { "No audience in the last 24 hours." } }
        @else {
            table {
                thead { tr { th { "audience" } th { "segment" } th { "advertiser" } th { "destination" } th.num { "members" } } }
                tbody {
                    @for a in &o.recent_audiences {
                        tr {
                            td { a href=(format!("/console/audiences/{}", a.id)) { (a.id) } }
                            td { (a.segment) } td { (a.advertiser) } td { (a.destination) } td.num { (a.size) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&op.session, "/console/", "Overview", content))
}
