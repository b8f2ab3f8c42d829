//! Data quality over time, per advertiser: for each finished job, the
//! match rate the advertiser was shown (noisy, whole percent, capped at
//! "> 85%": never an exact count) and the share of its segments withheld,
//! as SVG charts; then which identifier kinds each job matched on.

use super::layout::page;
use crate::console::svg::{percent_chart, Series};
use crate::console::{svc, Operator, Page, State};
use crate::services::blocking;
use crate::storage::Job;
use maud::{html, Markup};
use std::collections::BTreeMap;

/// The released match rate of a finished job, in percent ("> 85%" is 85:
/// the cap is all the advertiser saw).
fn shown_rate(job: &Job) -> Option<f64> {
    let text = job.report.as_ref()?["match_rate"].as_str()?;
    text.trim_start_matches('>')
        .trim()
        .trim_end_matches('%')
        .parse()
        .ok()
}

/// The share of a finished job's segments that were withheld, in percent.
fn withheld_share(job: &Job) -> Option<f64> {
    let segments = job.report.as_ref()?["segments"].as_array()?;
    if segments.is_empty() {
        return None;
    }
    let withheld = segments
        .iter()
        .filter(|s| s["status"] == "withheld")
        .count();
    Some(100.0 * withheld as f64 / segments.len() as f64)
}

fn advertiser_section(advertiser: &str, jobs: &[Job]) -> Markup {
    let labels: Vec<String> = jobs
        .iter()
        .map(|j| j.created.get(..10).unwrap_or("").to_string())
        .collect();
    let chart = percent_chart(
        &format!("{advertiser}: per job"),
        &labels,
        &[
            Series {
                name: "match rate (noisy)",
                class: "s1",
                values: jobs.iter().map(shown_rate).collect(),
            },
            Series {
                name: "segments withheld",
                class: "s2",
                values: jobs.iter().map(withheld_share).collect(),
            },
        ],
    );
    html! {
        h2 { (advertiser) }
        (chart)
        table {
            thead { tr { th { "job" } th { "finished" } th { "kinds" } th.num { "rows uploaded" } th { "match rate (noisy)" } th.num { "segments withheld" } } }
            tbody {
                @for j in jobs {
                    tr {
                        td { a href=(format!("/console/jobs/{}", j.id)) { (j.id) } }
                        td { (j.created) } td { (j.kinds.join(", ")) } td.num { (j.records) }
                        td { (j.report.as_ref().and_then(|r| r["match_rate"].as_str()).unwrap_or("")) }
                        td.num { (withheld_share(j).map_or(String::new(), |s| format!("{s:.0}%"))) }
                    }
                }
            }
        }
    }
}

/// Per identifier kind: finished jobs matching on it and their shown rates.
fn kinds_section(by_advertiser: &BTreeMap<String, Vec<Job>>) -> Markup {
    let mut kinds: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for jobs in by_advertiser.values() {
        for j in jobs {
            for k in &j.kinds {
                kinds.entry(k.as_str()).or_default().extend(shown_rate(j));
            }
        }
    }
    html! {
        h2 { "Per identifier kind" }
        table {
            thead { tr { th { "kind" } th.num { "finished jobs" } th.num { "lowest shown rate" } th.num { "highest shown rate" } } }
            tbody {
                @for (kind, rates) in &kinds {
                    tr {
                        td { (kind) } td.num { (rates.len()) }
                        td.num { (rates.iter().copied().reduce(f64::min).map_or(String::new(), |r| format!("{r:.0}%"))) }
                        td.num { (rates.iter().copied().reduce(f64::max).map_or(String::new(), |r| format!("{r:.0}%"))) }
                    }
                }
            }
        }
    }
}

/// `GET /console/quality`.
pub async fn show(state: State, op: Operator) -> Page {
    let s = svc(&state);
    let jobs = blocking(move || s.console_jobs()).await?;
    let mut by_advertiser: BTreeMap<String, Vec<Job>> = BTreeMap::new();
    for j in jobs.into_iter().rev().filter(|j| j.status == "finished") {
        by_advertiser
            .entry(j.advertiser.clone())
            .or_default()
            .push(j);
    }
    let content = html! {
        p.hint { "Rates are those shown to the advertiser: noised, whole percent, capped at 85%. "
                 "Rows the advertiser's tool rejected never reach the server and are not counted here." }
        @if by_advertiser.is_empty() { p.empty { "No finished job yet." } }
        @for (advertiser, jobs) in &by_advertiser { (advertiser_section(advertiser, jobs)) }
        @if !by_advertiser.is_empty() { (kinds_section(&by_advertiser)) }
    };
    Ok(page(
        &op.session,
        "/console/quality",
        "Data quality",
        content,
    ))
}
