//! Plain-text rendering of match results: the data-quality report and the
//! server's report as a table. Used by the CLI and by the demo.

use crate::matching::{MatchOutcome, QualityReport, RowIssue};
use crate::report::JobReport;
use std::fmt::Write as _;

/// The quality report, then the job report (or the dry-run notice).
pub fn render_outcome(outcome: &MatchOutcome) -> String {
    let mut s = render_quality(&outcome.quality);
    match &outcome.report {
        None => s.push_str("\ndry run: nothing was sent\n"),
        Some(report) => {
            s.push('\n');
            s.push_str(&render_report(report, &outcome.quality));
        }
    }
    s
}

/// Wall time per phase on one line: `quality 0.1 s, create 0.0 s, …`.
pub(crate) fn phase_times(timings: &[(&str, f64)]) -> String {
    let phases: Vec<String> = timings
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.1} s"))
        .collect();
    phases.join(", ")
}

/// A plain text table, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(w - cell.chars().count()));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn lines(issue: &RowIssue) -> String {
    let list = line_list(issue);
    if list.is_empty() {
        list
    } else {
        format!("  ({list})")
    }
}

/// The first line numbers of an issue (`lines 3, 7, …`), empty when none
/// were kept. Line numbers only: never the rows' values.
pub(crate) fn line_list(issue: &RowIssue) -> String {
    if issue.first_rows.is_empty() {
        return String::new();
    }
    let list: Vec<String> = issue.first_rows.iter().map(u64::to_string).collect();
    let more = if issue.count > issue.first_rows.len() as u64 {
        ", …"
    } else {
        ""
    };
    format!(
        "{} {}{more}",
        if issue.count == 1 { "line" } else { "lines" },
        list.join(", ")
    )
}

/// How the input was read: format, then encoding and delimiter, or sheet.
fn source(q: &QualityReport) -> String {
    let mut parts = vec![if q.format.is_empty() {
        "csv"
    } else {
        &q.format
    }
    .to_owned()];
    if let Some(sheet) = &q.sheet {
        parts.push(format!("sheet '{sheet}'"));
    }
    if !q.encoding.is_empty() {
        let how = match q.encoding_source.as_str() {
            "bom" => " (BOM)",
            "fallback" => " (not UTF-8)",
            "forced" => " (--encoding)",
            _ => "",
        };
        parts.push(format!("encoding {}{how}", q.encoding));
    }
    if !q.delimiter.is_empty() {
        parts.push(format!("delimiter '{}'", q.delimiter));
    }
    parts.join(", ")
}

/// The quality report as text.
pub fn render_quality(q: &QualityReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Data quality of {} ({}):", q.input, source(q));
    let _ = writeln!(s, "  rows read                      {:>10}", q.rows_read);
    let _ = writeln!(
        s,
        "  dropped, no consent            {:>10}",
        q.rows_without_consent
    );
    let _ = writeln!(
        s,
        "  rejected, bad consent value    {:>10}{}",
        q.bad_consent.count,
        lines(&q.bad_consent)
    );
    let _ = writeln!(
        s,
        "  rejected, no segment           {:>10}{}",
        q.rows_without_segment.count,
        lines(&q.rows_without_segment)
    );
    if q.bad_segment.count > 0 {
        let _ = writeln!(
            s,
            "  rejected, unusable segment     {:>10}{}",
            q.bad_segment.count,
            lines(&q.bad_segment)
        );
    }
    let _ = writeln!(
        s,
        "  rejected, no valid identifier  {:>10}{}",
        q.rows_without_identifier.count,
        lines(&q.rows_without_identifier)
    );
    let _ = writeln!(
        s,
        "  duplicate rows (skipped)       {:>10}{}",
        q.duplicate_rows.count,
        lines(&q.duplicate_rows)
    );
    let _ = writeln!(
        s,
        "  rows to upload                 {:>10}  ({} identifiers; kinds: {})",
        q.rows_to_upload,
        q.identifiers_to_upload,
        if q.kinds.is_empty() {
            "none".into()
        } else {
            q.kinds.join(", ")
        }
    );
    for c in &q.columns {
        let _ = writeln!(
            s,
            "  column `{}` ({}): {} valid, {} empty",
            c.column, c.kind, c.valid, c.empty
        );
        for (code, issue) in &c.invalid {
            let _ = writeln!(s, "      invalid, {code}: {}{}", issue.count, lines(issue));
        }
    }
    s
}

/// The server's report as a table, with the local rejections per segment.
pub fn render_report(r: &JobReport, q: &QualityReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Job {} ({}), graph version {}, destination {}: {} rows uploaded, match rate {}, k = {}, ε spent {}",
        r.job_id, r.status, r.graph_version, r.destination, r.rows_uploaded, r.match_rate, r.k, r.epsilon_spent
    );
    let mut rows: Vec<Vec<String>> = r
        .segments
        .iter()
        .map(|seg| {
            let rejected = q
                .segments
                .get(&seg.name)
                .map(|l| l.rows_rejected)
                .unwrap_or(0);
            vec![
                seg.name.clone(),
                seg.rows_uploaded.to_string(),
                rejected.to_string(),
                seg.matched.clone(),
                seg.status.clone(),
                seg.reason.clone().unwrap_or_default(),
                seg.audience_label(),
            ]
        })
        .collect();
    for (name, local) in &q.segments {
        if local.rows_to_upload == 0 && !r.segments.iter().any(|seg| &seg.name == name) {
            rows.push(vec![
                name.clone(),
                "0".into(),
                local.rows_rejected.to_string(),
                String::new(),
                "not uploaded".into(),
                "all rows rejected locally".into(),
                String::new(),
            ]);
        }
    }
    s.push_str(&table(
        &[
            "segment",
            "rows uploaded",
            "rejected locally",
            "matched",
            "status",
            "reason",
            "audience",
        ],
        &rows,
    ));
    let _ = writeln!(s, "overall match rate: {}", r.match_rate);
    s
}
