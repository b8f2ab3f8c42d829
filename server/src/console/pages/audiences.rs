//! Audiences of every destination, one audience's detail and its push
//! deliveries (never its members).

use super::layout::{badge, figures, page};
use crate::console::{svc, Operator, Page, State};
use crate::services::blocking;
use actix_web::web;
use maud::html;

/// `GET /console/audiences`.
pub async fn list(state: State, op: Operator) -> Page {
    let s = svc(&state);
    let audiences = blocking(move || s.console_audiences()).await?;
    let content = html! {
        @if audiences.is_empty() { p.empty { "No audience yet." } }
        @else {
            table {
                thead { tr { th { "audience" } th { "segment" } th { "advertiser" } th { "destination" } th.num { "members" } th { "created" } th { "expires" } th { "pulled" } } }
                tbody {
                    @for a in &audiences {
                        tr {
                            td { a href=(format!("/console/audiences/{}", a.id)) { (a.id) } }
                            td { (a.segment) } td { (a.advertiser) } td { (a.destination) }
                            td.num { (a.size) } td { (a.created) } td { (a.expires) }
                            td { @if a.pulled { "yes" } @else { "no" } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        &op.session,
        "/console/audiences",
        "Audiences",
        content,
    ))
}

/// `GET /console/audiences/{id}`.
pub async fn detail(state: State, op: Operator, path: web::Path<String>) -> Page {
    let s = svc(&state);
    let (a, deliveries) = blocking(move || s.console_audience(&path)).await?;
    let content = html! {
        (figures(&[
            ("segment", a.segment.clone()),
            ("advertiser", a.advertiser.clone()),
            ("destination", a.destination.clone()),
            ("members", a.size.to_string()),
            ("pulled", if a.pulled { "yes".into() } else { "no".into() }),
        ]))
        p { "From job " a href=(format!("/console/jobs/{}", a.job_id)) { (a.job_id) } "; created " (a.created) ", expires " (a.expires) "." }
        h2 { "Push deliveries" }
        @if deliveries.is_empty() { p.empty { "No push delivery (the destination pulls, or has no webhook)." } }
        @else {
            table {
                thead { tr { th { "message" } th { "event" } th { "status" } th.num { "attempts" } th.num { "last HTTP status" } th { "last error" } } }
                tbody {
                    @for m in &deliveries {
                        tr {
                            td { code { (m.id) } } td { (m.event) }
                            td { (badge(&format!("{:?}", m.status).to_lowercase())) }
                            td.num { (m.attempts) }
                            td.num { (m.last_status.map_or(String::new(), |s| s.to_string())) }
                            td { (m.last_error.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        &op.session,
        "/console/audiences",
        &format!("Audience {}", a.id),
        content,
    ))
}
