//! The match report as one self-contained HTML page (`onboard match --html`),
//! for the people a CRM team forwards it to: the job's metadata, the
//! data-quality table, each segment's status and reason, and an inline SVG
//! bar chart of uploaded, matched and delivered persons per segment.
//!
//! The page loads nothing (no script, font, style sheet or image from
//! anywhere) and shows only what the text report shows: counts, line
//! numbers, column and segment names — never a row's value. Matched and
//! delivered are the server's noisy or withheld figures as received, never
//! more precise. Every text goes through maud, which escapes it.

use crate::matching::{MatchOutcome, QualityReport, RowIssue, SegmentReport};
use crate::render::{line_list, phase_times};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use std::time::SystemTime;

/// What the page says about the job beyond the outcome itself.
#[derive(Debug, Clone)]
pub struct HtmlContext {
    /// The server's base URL (as given to the client).
    pub server: String,
    /// The destination the audiences are for.
    pub destination: String,
    /// When the report was written.
    pub written_at: SystemTime,
}

/// Width of the segment names' column in the chart, in pixels.
const LABEL_WIDTH: u32 = 190;
/// Width of the longest bar.
const BAR_AREA: u32 = 380;
/// Room after a bar for its value.
const VALUE_WIDTH: u32 = 130;
/// Height of one bar, and of one bar with its gap.
const BAR_HEIGHT: u32 = 12;
const BAR_STEP: u32 = 15;
/// Height of a segment's group: its name, then three bars, then a gap.
const GROUP_HEIGHT: u32 = 18 + 3 * BAR_STEP + 10;

/// The page's only style sheet, inline.
const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:60rem;color:#1d2430;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d5dae1;padding-bottom:.25rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{padding:.3rem .7rem;border-bottom:1px solid #e4e7ec;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f5f8}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.25rem 1.25rem}dl.meta dt{color:#5b6472}dl.meta dd{margin:0}
.uploaded{fill:#8aa4c8}.matched{fill:#3c6fb6}.delivered{fill:#1f9d6b}
.legend span{display:inline-block;margin-right:1rem}.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:-.1rem}
i.uploaded{background:#8aa4c8}i.matched{background:#3c6fb6}i.delivered{background:#1f9d6b}
svg text{font-size:12px;fill:#1d2430}svg text.name{font-weight:600}
.delivered-status{color:#1f7a55}.withheld-status{color:#a1452b}.note{color:#5b6472;font-size:.9rem}
";

/// A figure the report may show: a count, or a text standing for one
/// (`< 100`, `withheld`, `dry run`) that gets no bar.
#[derive(Debug, Clone, PartialEq)]
enum Shown {
    Count(u64),
    Text(String),
}

impl Shown {
    fn count(&self) -> Option<u64> {
        match self {
            Shown::Count(n) => Some(*n),
            Shown::Text(_) => None,
        }
    }

    fn label(&self) -> String {
        match self {
            Shown::Count(n) => n.to_string(),
            Shown::Text(t) => t.clone(),
        }
    }
}

/// One segment's row of the table and group of the chart.
struct SegmentView<'a> {
    name: &'a str,
    uploaded: u64,
    rejected: u64,
    matched: Shown,
    delivered: Shown,
    status: String,
    reason: String,
    audience: String,
}

/// The whole page.
pub fn render_html(outcome: &MatchOutcome, ctx: &HtmlContext) -> String {
    let q = &outcome.quality;
    let segments = segment_views(outcome);
    let title = match &outcome.report {
        Some(r) => format!("onboard match report: job {}", r.job_id),
        None => "onboard match report: dry run".to_owned(),
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { (title) }
                (metadata(outcome, ctx))
                h2 { "Segments" }
                (chart(&segments, outcome.report.is_none()))
                (segment_table(&segments))
                h2 { "Data quality" }
                (quality_table(q))
                (column_table(q))
            }
        }
    };
    page.into_string()
}

/// The segments as the report shows them: the server's, then those whose
/// every row was rejected locally; on a dry run, the local counts only.
fn segment_views(outcome: &MatchOutcome) -> Vec<SegmentView<'_>> {
    let q = &outcome.quality;
    let rejected = |name: &str| q.segments.get(name).map_or(0, |s| s.rows_rejected);
    let Some(report) = &outcome.report else {
        return q
            .segments
            .iter()
            .map(|(name, local)| SegmentView {
                name,
                uploaded: local.rows_to_upload,
                rejected: local.rows_rejected,
                matched: Shown::Text("dry run".into()),
                delivered: Shown::Text("dry run".into()),
                status: "dry run".into(),
                reason: "nothing was sent".into(),
                audience: String::new(),
            })
            .collect();
    };
    let mut views: Vec<SegmentView> = report
        .segments
        .iter()
        .map(|seg| server_segment(seg, rejected(&seg.name)))
        .collect();
    for (name, local) in &q.segments {
        if local.rows_to_upload == 0 && !report.segments.iter().any(|s| &s.name == name) {
            views.push(SegmentView {
                name,
                uploaded: 0,
                rejected: local.rows_rejected,
                matched: Shown::Text("not uploaded".into()),
                delivered: Shown::Text("not uploaded".into()),
                status: "not uploaded".into(),
                reason: "all rows rejected locally".into(),
                audience: String::new(),
            });
        }
    }
    views
}

/// A segment of the server's report: `matched` is the noisy count or a
/// bound (`< 100`); only a delivered segment has delivered persons.
fn server_segment(seg: &SegmentReport, rejected: u64) -> SegmentView<'_> {
    let matched = match seg.matched.trim().parse::<u64>() {
        Ok(n) => Shown::Count(n),
        Err(_) => Shown::Text(seg.matched.clone()),
    };
    let delivered = if seg.status == "delivered" {
        matched.clone()
    } else {
        Shown::Text(if seg.status.is_empty() {
            "none".into()
        } else {
            seg.status.clone()
        })
    };
    SegmentView {
        name: &seg.name,
        uploaded: seg.rows_uploaded,
        rejected,
        matched,
        delivered,
        status: seg.status.clone(),
        reason: seg.reason.clone().unwrap_or_default(),
        audience: seg.audience_label(),
    }
}

/// Job id, server, destination, times, and how the file was read.
fn metadata(outcome: &MatchOutcome, ctx: &HtmlContext) -> Markup {
    let q = &outcome.quality;
    html! {
        dl.meta {
            @match &outcome.report {
                Some(r) => {
                    dt { "Job" } dd { (r.job_id) }
                    dt { "Status" } dd { (r.status) }
                    dt { "Destination" } dd { (r.destination) }
                    dt { "Graph version" } dd { (r.graph_version) }
                    dt { "Rows uploaded" } dd { (r.rows_uploaded) }
                    dt { "Match rate" } dd { (r.match_rate) }
                    dt { "Minimum audience size (k)" } dd { (r.k) }
                    dt { "Privacy budget spent (ε)" } dd { (r.epsilon_spent) }
                }
                None => {
                    dt { "Job" } dd { "none: dry run, nothing was sent" }
                    dt { "Destination" } dd { (ctx.destination) }
                }
            }
            dt { "Server" } dd { (ctx.server) }
            dt { "Input" } dd { (q.input) }
            @if let Some(encoding) = encoding(q) {
                dt { "Encoding" } dd { (encoding) }
            }
            dt { "Delimiter" } dd { code { (q.delimiter) } }
            dt { "Written at" } dd { (humantime::format_rfc3339_seconds(ctx.written_at)) }
            @if !outcome.timings.is_empty() {
                dt { "Phases" } dd { (phase_times(&outcome.timings)) }
            }
        }
    }
}

/// The encoding the quality pass read the file with, when its report names one.
fn encoding(q: &QualityReport) -> Option<String> {
    // Read through serde so that the page shows the field as soon as the
    // quality report carries it, whatever its Rust type.
    let value = serde_json::to_value(q).ok()?;
    match value.get("encoding")? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The bar chart: one group per segment with its uploaded, matched and
/// delivered bars on one scale.
fn chart(segments: &[SegmentView], dry_run: bool) -> Markup {
    let largest = segments
        .iter()
        .flat_map(|s| [Some(s.uploaded), s.matched.count(), s.delivered.count()])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(1);
    let width = LABEL_WIDTH + BAR_AREA + VALUE_WIDTH;
    let height = GROUP_HEIGHT * segments.len().max(1) as u32;
    let uploaded_label = if dry_run { "to upload" } else { "uploaded" };
    html! {
        p.legend {
            span { i.uploaded {} (uploaded_label) }
            span { i.matched {} "matched (noisy)" }
            span { i.delivered {} "delivered (noisy)" }
        }
        svg width=(width) height=(height) viewBox=(format!("0 0 {width} {height}"))
            role="img" aria-label="Persons per segment: uploaded, matched and delivered" {
            @for (i, seg) in segments.iter().enumerate() {
                @let top = GROUP_HEIGHT * i as u32;
                g.segment data-segment=(seg.name) {
                    title { (seg.name) ": " (seg.status) }
                    text.name x="0" y=(top + 13) { (seg.name) }
                    (bar(top + 18, "uploaded", uploaded_label, &Shown::Count(seg.uploaded), largest))
                    (bar(top + 18 + BAR_STEP, "matched", "matched", &seg.matched, largest))
                    (bar(top + 18 + 2 * BAR_STEP, "delivered", "delivered", &seg.delivered, largest))
                }
            }
        }
        p.note {
            "Matched and delivered are the server's noisy counts (differential privacy); "
            "a bound such as “< 100” or a withheld segment gets no bar."
        }
    }
}

/// One bar at `y`, its length `value / largest` of the bar area, and its value.
fn bar(y: u32, class: &str, label: &str, value: &Shown, largest: u64) -> Markup {
    let length = value.count().map_or(0, |n| {
        let scaled = (n as f64 / largest as f64 * f64::from(BAR_AREA)).round() as u32;
        if n > 0 {
            scaled.max(1)
        } else {
            0
        }
    });
    html! {
        text x=(LABEL_WIDTH - 8) y=(y + BAR_HEIGHT - 2) text-anchor="end" { (label) }
        rect class=(class) x=(LABEL_WIDTH) y=(y) width=(length) height=(BAR_HEIGHT) {}
        text x=(LABEL_WIDTH + length + 6) y=(y + BAR_HEIGHT - 2) { (value.label()) }
    }
}

fn segment_table(segments: &[SegmentView]) -> Markup {
    html! {
        table.segments {
            thead {
                tr {
                    th { "Segment" } th { "Rows uploaded" } th { "Rejected locally" }
                    th { "Matched" } th { "Delivered" } th { "Status" } th { "Reason" }
                    th { "Audience" }
                }
            }
            tbody {
                @for seg in segments {
                    tr {
                        td { (seg.name) }
                        td.n { (seg.uploaded) }
                        td.n { (seg.rejected) }
                        td.n { (seg.matched.label()) }
                        td.n { (seg.delivered.label()) }
                        td class=(format!("{}-status", seg.status.replace(' ', "-"))) { (seg.status) }
                        td { (seg.reason) }
                        td { code { (seg.audience) } }
                    }
                }
            }
        }
    }
}

/// The file-level counts of the quality pass, with the first line numbers
/// of each problem.
fn quality_table(q: &QualityReport) -> Markup {
    let no_lines = RowIssue::default();
    let rows: [(&str, u64, &RowIssue); 8] = [
        ("Rows read", q.rows_read, &no_lines),
        ("Dropped: no consent", q.rows_without_consent, &no_lines),
        (
            "Rejected: bad consent value",
            q.bad_consent.count,
            &q.bad_consent,
        ),
        (
            "Rejected: no segment",
            q.rows_without_segment.count,
            &q.rows_without_segment,
        ),
        (
            "Rejected: unusable segment",
            q.bad_segment.count,
            &q.bad_segment,
        ),
        (
            "Rejected: no valid identifier",
            q.rows_without_identifier.count,
            &q.rows_without_identifier,
        ),
        (
            "Duplicate rows (skipped)",
            q.duplicate_rows.count,
            &q.duplicate_rows,
        ),
        ("Rows to upload", q.rows_to_upload, &no_lines),
    ];
    html! {
        table.quality {
            tbody {
                @for (label, count, issue) in rows {
                    tr { th { (label) } td.n { (count) } td { (line_list(issue)) } }
                }
                tr {
                    th { "Identifiers to upload" }
                    td.n { (q.identifiers_to_upload) }
                    td { "kinds: " (if q.kinds.is_empty() { "none".to_owned() } else { q.kinds.join(", ") }) }
                }
            }
        }
    }
}

/// Per identifier column: valid, empty and invalid cells by reason.
fn column_table(q: &QualityReport) -> Markup {
    html! {
        table.columns {
            thead {
                tr { th { "Column" } th { "Kind" } th { "Valid" } th { "Empty" } th { "Invalid" } }
            }
            tbody {
                @for c in &q.columns {
                    tr {
                        td { (c.column) }
                        td { (c.kind) }
                        td.n { (c.valid) }
                        td.n { (c.empty) }
                        td {
                            @for (code, issue) in &c.invalid {
                                div { (code) ": " (issue.count) " " (line_list(issue)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::{JobReport, SegmentQuality};

    fn outcome() -> MatchOutcome {
        let mut q = QualityReport {
            input: "crm.csv".into(),
            delimiter: ";".into(),
            rows_read: 10,
            ..QualityReport::default()
        };
        q.segments.insert(
            "Gold <b>".into(),
            SegmentQuality {
                rows: 5,
                rows_to_upload: 4,
                rows_rejected: 1,
            },
        );
        q.segments.insert(
            "Lost".into(),
            SegmentQuality {
                rows: 2,
                rows_to_upload: 0,
                rows_rejected: 2,
            },
        );
        let report = JobReport {
            job_id: "j-1".into(),
            status: "finished".into(),
            segments: vec![SegmentReport {
                name: "Gold <b>".into(),
                rows_uploaded: 4000,
                matched: "2480".into(),
                status: "delivered".into(),
                reason: None,
                audience_id: Some("a-1".into()),
                version: None,
            }],
            ..JobReport::default()
        };
        MatchOutcome {
            quality: q,
            report: Some(report),
            ..MatchOutcome::default()
        }
    }

    #[test]
    fn segment_names_are_escaped_and_every_segment_gets_a_group() {
        let ctx = HtmlContext {
            server: "https://127.0.0.1:8443".into(),
            destination: "dsp".into(),
            written_at: SystemTime::UNIX_EPOCH,
        };
        let page = render_html(&outcome(), &ctx);
        assert!(!page.contains("Gold <b>"), "unescaped name in {page}");
        assert!(page.contains("Gold &lt;b&gt;"));
        assert_eq!(page.matches("<g class=\"segment\"").count(), 2, "{page}");
        assert!(page.contains("all rows rejected locally"));
        assert!(page.contains("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn a_bound_gets_no_bar_and_a_withheld_segment_no_delivered_bar() {
        let seg = SegmentReport {
            name: "Bronze".into(),
            rows_uploaded: 120,
            matched: "< 100".into(),
            status: "withheld".into(),
            reason: Some("below-minimum-size".into()),
            audience_id: None,
            version: None,
        };
        let view = server_segment(&seg, 0);
        assert_eq!(view.matched, Shown::Text("< 100".into()));
        assert_eq!(view.delivered, Shown::Text("withheld".into()));
        let bar = bar(0, "matched", "matched", &view.matched, 120).into_string();
        assert!(bar.contains("width=\"0\""), "{bar}");
    }
}
