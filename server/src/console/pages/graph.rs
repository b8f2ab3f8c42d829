//! The graph: its current version, every import with its counts, and the
//! opt-out and erasure counts.

use super::layout::{badge, figures, page};
use crate::console::{svc, Operator, Page, State};
use crate::services::blocking;
use maud::html;

/// `GET /console/graph`.
pub async fn show(state: State, op: Operator) -> Page {
    let s = svc(&state);
    let (current, (imports, optouts, erasures)) =
        blocking(move || Ok((s.repo.current_graph()?, s.console_graph()?))).await?;
    let content = html! {
        (figures(&[
            ("current version", current.as_ref().map_or("none".into(), |g| g.version.to_string())),
            ("persons", current.as_ref().map_or(0, |g| g.persons).to_string()),
            ("opted-out identifiers", optouts.to_string()),
            ("erased persons", erasures.to_string()),
        ]))
        @if let Some(g) = &current {
            h2 { "Current version " (g.version) }
            table {
                thead { tr { th { "identifier kind" } th.num { "identifiers" } } }
                tbody { @for (kind, n) in &g.identifiers { tr { td { (kind) } td.num { (n) } } } }
            }
            table {
                thead { tr { th { "destination" } th.num { "cookies" } } }
                tbody { @for (d, n) in &g.cookies { tr { td { (d) } td.num { (n) } } } }
            }
        }
        h2 { "Imports" }
        @if imports.is_empty() { p.empty { "No import yet: run `onboard admin graph import`." } }
        @else {
            table {
                thead { tr { th { "import" } th.num { "version" } th { "created" } th { "status" } th.num { "persons" } th.num { "identifiers" } th.num { "skipped (erased)" } } }
                tbody {
                    @for i in &imports {
                        tr {
                            td { (i.id) } td.num { (i.version) } td { (i.created) } td { (badge(&i.status)) }
                            td.num { (i.info.persons) }
                            td.num { (i.info.identifiers.values().sum::<u64>()) }
                            td.num { (i.skipped_erased) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&op.session, "/console/graph", "Graph", content))
}
