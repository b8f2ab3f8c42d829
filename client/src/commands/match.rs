//! `onboard match`: the data-quality report, then the job and its report.

use super::progress::Bars;
use super::{table, Context};
use crate::cli::MatchArgs;
use crate::matching::{run_match_with, JobReport, MatchOptions, QualityReport, RowIssue};
use anyhow::Result;
use std::fmt::Write as _;

pub(super) fn run(ctx: &Context, args: &MatchArgs) -> Result<()> {
    let opts = MatchOptions {
        input: args.input.clone(),
        key_file: args.key.clone(),
        destination: args.destination.clone(),
        email_cols: args.email_cols.clone(),
        phone_cols: args.phone_cols.clone(),
        maid_cols: args.maid_cols.clone(),
        email_sha256_cols: args.email_sha256_cols.clone(),
        phone_sha256_cols: args.phone_sha256_cols.clone(),
        segment_col: args.segment_col.clone(),
        consent_col: args.consent_col.clone(),
        region: args.region,
        dry_run: args.dry_run,
        batch_size: args.batch_size,
        show_progress: !ctx.quiet,
    };
    // A dry run never needs (nor reads) an API key and never connects.
    let api = if args.dry_run {
        ctx.offline_api()?
    } else {
        ctx.api()?
    };
    let bars = Bars::new_sink(!ctx.quiet);
    let outcome = run_match_with(&api, &opts, bars.as_ref())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "quality": outcome.quality, "report": outcome.report })
            )?
        );
        return Ok(());
    }
    print!("{}", quality_text(&outcome.quality));
    match &outcome.report {
        None => println!("\ndry run: nothing was sent"),
        Some(report) => print!("\n{}", report_text(report, &outcome.quality)),
    }
    Ok(())
}

fn lines(issue: &RowIssue) -> String {
    if issue.first_rows.is_empty() {
        return String::new();
    }
    let list: Vec<String> = issue.first_rows.iter().map(u64::to_string).collect();
    let more = if issue.count > issue.first_rows.len() as u64 {
        ", …"
    } else {
        ""
    };
    format!("  (line {}{more})", list.join(", "))
}

/// The quality report as text.
pub(crate) fn quality_text(q: &QualityReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Data quality of {} (delimiter '{}'):",
        q.input, q.delimiter
    );
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
pub(crate) fn report_text(r: &JobReport, q: &QualityReport) -> String {
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
                seg.audience_id.clone().unwrap_or_default(),
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
