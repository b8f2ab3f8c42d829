//! `onboard match`: the data-quality report, then the job and its report.

use super::Context;
use crate::cli::MatchArgs;
use crate::html::{render_html, HtmlContext};
use crate::matching::{resume_match, run_match_with, MatchOptions};
use crate::progress::Bars;
use crate::render::{phase_times, render_outcome};
use anyhow::{Context as _, Result};

pub(super) fn run(ctx: &Context, args: &MatchArgs) -> Result<()> {
    let opts = MatchOptions {
        input: args.input.clone(),
        encoding: args.encoding.clone(),
        sheet: args.sheet.clone(),
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
        new_audience: args.new_audience,
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
    let outcome = match &args.resume {
        Some(job_id) => resume_match(&api, &opts, job_id, bars.as_ref())?,
        None => run_match_with(&api, &opts, bars.as_ref())?,
    };
    if let Some(notice) = outcome.quality.encoding_notice() {
        ctx.note(format!("note: {notice}"));
    }
    if !outcome.timings.is_empty() && outcome.report.is_some() {
        ctx.note(format!(
            "{} graph points re-blinded, {} identifiers blinded in {} batches; {}",
            outcome.graph_points_blinded,
            outcome.identifiers_blinded,
            outcome.batches_uploaded,
            phase_times(&outcome.timings)
        ));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "quality": outcome.quality, "report": outcome.report })
            )?
        );
    } else {
        print!("{}", render_outcome(&outcome));
    }
    // Written after the report is printed: a page that cannot be written
    // loses nothing of the job's outcome.
    if let Some(path) = &args.html {
        let page = render_html(
            &outcome,
            &HtmlContext {
                server: ctx.server.clone(),
                destination: args.destination.clone(),
                written_at: std::time::SystemTime::now(),
            },
        );
        std::fs::write(path, page)
            .with_context(|| format!("cannot write the HTML report {}", path.display()))?;
        ctx.note(format!("wrote the HTML report to {}", path.display()));
    }
    Ok(())
}
