//! The audit log: newest first, searchable (a word of the actor, action,
//! object or outcome), paged, with the chain's verification under the
//! audit key.

use super::layout::page;
use crate::console::data::AUDIT_PAGE;
use crate::console::{svc, Operator, Page, State};
use crate::services::blocking;
use actix_web::web;
use maud::html;
use serde::Deserialize;

/// The page's query.
#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    q: String,
    before: Option<u64>,
}

/// `GET /console/audit`.
pub async fn show(state: State, op: Operator, query: web::Query<AuditQuery>) -> Page {
    let AuditQuery { q, before } = query.into_inner();
    let q: String = q.chars().take(100).collect();
    let s = svc(&state);
    let search = q.clone();
    let audit = blocking(move || s.console_audit(&search, before)).await?;
    let older = audit.entries.last().map(|e| e.seq);
    let content = html! {
        @match &audit.chain {
            Ok(n) => p.good { "Chain verified under the audit key: " (n) " entries." },
            Err(b) => p.error { "Chain broken at entry " (b.seq) ": " (b.reason) },
        }
        form.inline method="get" action="/console/audit" {
            label { "Search" input type="search" name="q" value=(q) maxlength="100"; }
            button type="submit" { "Search" }
        }
        table {
            thead { tr { th.num { "#" } th { "time" } th { "actor" } th { "action" } th { "object" } th { "outcome" } } }
            tbody {
                @for e in &audit.entries {
                    tr { td.num { (e.seq) } td { (e.time) } td { (e.actor) } td { (e.action) } td { (e.object) } td { (e.outcome) } }
                }
            }
        }
        @if audit.more {
            @if let Some(seq) = older {
                p { a href=(format!("/console/audit?q={}&before={seq}", form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>())) { "Older entries" } }
            }
        }
        p.hint { (AUDIT_PAGE) " entries per page." }
    };
    Ok(page(&op.session, "/console/audit", "Audit log", content))
}
