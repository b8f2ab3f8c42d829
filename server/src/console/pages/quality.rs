//! Data quality over time, per advertiser: for each finished job, the
//! match rate the advertiser was shown (noisy, whole percent, capped at
//! "> 85%": never an exact count), the share of rows its tool rejected and
//! of its segments withheld, and per identifier kind the share of invalid
//! values, as SVG charts. The rejected rows and invalid values are the
//! advertiser's own counts, sent with the finish (`LocalQuality`).

use super::layout::page;
use crate::console::svg::{percent_chart, Series};
use crate::console::{svc, Operator, Page, State};
use crate::services::blocking;
use crate::services::jobs::LocalQuality;
use crate::storage::Job;
use maud::{html, Markup};
use std::collections::{BTreeMap, BTreeSet};

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

/// The advertiser's own counts of a finished job's file, if its tool sent them.
fn local_quality(job: &Job) -> Option<LocalQuality> {
    serde_json::from_value(job.report.as_ref()?.get("quality")?.clone()).ok()
}

/// The share of a kind's values that were invalid, in percent.
fn invalid_share(job: &Job, kind: &str) -> Option<f64> {
    let q = local_quality(job)?.kinds.get(kind).copied()?;
    let all = q.valid + q.invalid;
    (all > 0).then(|| 100.0 * q.invalid as f64 / all as f64)
}

/// Classes of the chart series, in order.
const SERIES: [&str; 5] = ["s1", "s2", "s3", "s4", "s5"];

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
    let rates = percent_chart(
        &format!("{advertiser}: per job"),
        &labels,
        &[
            Series {
                name: "match rate (noisy)",
                class: "s1",
                values: jobs.iter().map(shown_rate).collect(),
            },
            Series {
                name: "rows rejected",
                class: "s2",
                values: jobs
                    .iter()
                    .map(|j| local_quality(j)?.rejected_percent())
                    .collect(),
            },
            Series {
                name: "segments withheld",
                class: "s3",
                values: jobs.iter().map(withheld_share).collect(),
            },
        ],
    );
    let kinds: BTreeSet<String> = jobs
        .iter()
        .filter_map(local_quality)
        .flat_map(|q| q.kinds.into_keys())
        .collect();
    let per_kind: Vec<Series<'_>> = kinds
        .iter()
        .zip(SERIES)
        .map(|(kind, class)| Series {
            name: kind,
            class,
            values: jobs.iter().map(|j| invalid_share(j, kind)).collect(),
        })
        .collect();
    let kinds_chart = (!per_kind.is_empty()).then(|| {
        percent_chart(
            &format!("{advertiser}: invalid values per identifier kind"),
            &labels,
            &per_kind,
        )
    });
    let pct = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.0}%"));
    html! {
        h2 { (advertiser) }
        (rates)
        @if let Some(chart) = kinds_chart { (chart) }
        table {
            thead { tr { th { "job" } th { "created" } th { "kinds" } th.num { "rows read" } th.num { "rows rejected" } th { "match rate (noisy)" } th.num { "segments withheld" } } }
            tbody {
                @for j in jobs {
                    @let q = local_quality(j);
                    tr {
                        td { a href=(format!("/console/jobs/{}", j.id)) { (j.id) } }
                        td { (j.created) } td { (j.kinds.join(", ")) }
                        td.num { (q.as_ref().map_or(String::new(), |q| q.rows_read.to_string())) }
                        td.num { (pct(q.as_ref().and_then(LocalQuality::rejected_percent))) }
                        td { (j.report.as_ref().and_then(|r| r["match_rate"].as_str()).unwrap_or("")) }
                        td.num { (pct(withheld_share(j))) }
                    }
                }
            }
        }
    }
}

/// Per identifier kind, over every advertiser: finished jobs using it, the
/// values they held and the share invalid.
fn kinds_section(by_advertiser: &BTreeMap<String, Vec<Job>>) -> Markup {
    let mut kinds: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for j in by_advertiser.values().flatten() {
        for (kind, q) in local_quality(j).map(|q| q.kinds).unwrap_or_default() {
            let e = kinds.entry(kind).or_default();
            *e = (e.0 + 1, e.1 + q.valid, e.2 + q.invalid);
        }
    }
    html! {
        h2 { "Per identifier kind" }
        table {
            thead { tr { th { "kind" } th.num { "jobs" } th.num { "valid values" } th.num { "invalid values" } th.num { "invalid share" } } }
            tbody {
                @for (kind, (jobs, valid, invalid)) in &kinds {
                    tr {
                        td { (kind) } td.num { (jobs) } td.num { (valid) } td.num { (invalid) }
                        td.num { (if valid + invalid > 0 { format!("{:.1}%", 100.0 * *invalid as f64 / (valid + invalid) as f64) } else { String::new() }) }
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
        p.hint { "Match rates are those shown to the advertiser: noised, whole percent, capped at 85%. "
                 "Rejected rows and invalid values are the counts the advertiser's tool sent with each job." }
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
