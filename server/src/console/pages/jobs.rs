//! Jobs of every advertiser: the list, one job's detail (status, rows,
//! the report's per-segment status and reasons, the noisy counts and match
//! rate it released, the advertiser's own quality counts), and abort of an
//! open job.

use super::layout::{badge, csrf, figures, page};
use crate::console::{see_other, svc, Operator, Page, State};
use crate::services::blocking;
use crate::services::jobs::LocalQuality;
use actix_web::web;
use maud::html;
use serde::Deserialize;

/// `GET /console/jobs`.
pub async fn list(state: State, op: Operator) -> Page {
    let s = svc(&state);
    let jobs = blocking(move || s.console_jobs()).await?;
    let content = html! {
        @if jobs.is_empty() { p.empty { "No job yet." } }
        @else {
            table {
                thead { tr { th { "job" } th { "advertiser" } th { "destination" } th { "created" } th { "status" } th.num { "rows" } th { "match rate" } } }
                tbody {
                    @for j in &jobs {
                        tr {
                            td { a href=(format!("/console/jobs/{}", j.id)) { (j.id) } }
                            td { (j.advertiser) } td { (j.destination) } td { (j.created) }
                            td { (badge(&j.status)) } td.num { (j.records) }
                            td { (j.report.as_ref().and_then(|r| r["match_rate"].as_str()).unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&op.session, "/console/jobs", "Jobs", content))
}

/// `GET /console/jobs/{id}`.
pub async fn detail(state: State, op: Operator, path: web::Path<String>) -> Page {
    let s = svc(&state);
    let job = blocking(move || s.console_job(&path)).await?;
    let report = job.report.clone().unwrap_or_default();
    let quality: Option<LocalQuality> = serde_json::from_value(report["quality"].clone()).ok();
    let none = Vec::new();
    let segments = report["segments"].as_array().unwrap_or(&none);
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let content = html! {
        (figures(&[
            ("status", job.status.clone()),
            ("advertiser", job.advertiser.clone()),
            ("destination", job.destination.clone()),
            ("graph version", job.graph_version.to_string()),
            ("batches", job.batches.to_string()),
            ("rows uploaded", job.records.to_string()),
            ("match rate (noisy)", text(&report["match_rate"])),
            ("ε spent", text(&report["epsilon_spent"])),
        ]))
        p { "Created " (job.created) "; kinds: " (job.kinds.join(", ")) "." }
        @if job.status == "open" {
            form method="post" action=(format!("/console/jobs/{}/abort", job.id)) {
                (csrf(&op.session))
                button.danger type="submit" { "Abort this job" }
            }
        }
        @if let Some(q) = &quality {
            h2 { "The advertiser's file" }
            p { (q.rows_read) " rows read, " (q.rows_rejected) " not uploaded (no consent, no valid identifier, duplicates, bad cells)." }
            table {
                thead { tr { th { "identifier kind" } th.num { "valid values" } th.num { "invalid values" } } }
                tbody { @for (kind, k) in &q.kinds { tr { td { (kind) } td.num { (k.valid) } td.num { (k.invalid) } } } }
            }
        }
        @if !segments.is_empty() {
            h2 { "Segments" }
            table {
                thead { tr { th { "segment" } th.num { "rows uploaded" } th.num { "matched (noisy)" } th { "status" } th { "reason" } th { "audience" } } }
                tbody {
                    @for seg in segments {
                        tr {
                            td { (text(&seg["name"])) }
                            td.num { (text(&seg["rows_uploaded"])) }
                            td.num { (text(&seg["matched"])) }
                            td { (badge(&text(&seg["status"]))) }
                            td { (text(&seg["reason"])) }
                            td {
                                @if let Some(a) = seg["audience_id"].as_str() {
                                    a href=(format!("/console/audiences/{a}")) { (a) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        &op.session,
        "/console/jobs",
        &format!("Job {}", job.id),
        content,
    ))
}

/// The abort form.
#[derive(Deserialize)]
pub struct Abort {
    csrf: String,
}

/// `POST /console/jobs/{id}/abort`.
pub async fn abort(
    state: State,
    op: Operator,
    path: web::Path<String>,
    form: web::Form<Abort>,
) -> Page {
    op.check_csrf(&state, &form.csrf)?;
    let s = svc(&state);
    let actor = op.session.caller().name;
    let id = path.into_inner();
    let target = format!("/console/jobs/{id}");
    blocking(move || s.console_abort_job(&actor, &id)).await?;
    Ok(see_other(&target))
}
