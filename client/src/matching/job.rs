//! Start, resume and finish a job: the quality pass and the key, the job's
//! creation (or the state of the one resumed), the exchange, then the finish
//! — or, on a failure, keep the job for a resume or abort it.

use super::graph_pass::{graph_pass, GraphPassInfo, JobCreated};
use super::quality::{quality_pass_with, RowSet};
use super::upload::{upload, Upload};
use super::{load_key, MatchOptions, MatchOutcome, GRAPH_PHASE, UPLOAD_PHASE};
use crate::api::{segment, ApiClient, Body};
use crate::error::ClientError;
use crate::progress::ProgressSink;
use crate::report::JobReport;
use onboard_protocol::wire::MAX_RECORDS_PER_BATCH;
use onboard_protocol::SecretKey;
use reqwest::Method;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

/// Run the whole match: quality pass, then (unless `dry_run`) the job.
pub fn run_match(api: &ApiClient, opts: &MatchOptions) -> Result<MatchOutcome, ClientError> {
    let sink = crate::progress::Bars::new_sink(opts.show_progress);
    run_match_with(api, opts, sink.as_ref())
}

/// [`run_match`] reporting progress to `progress`.
pub fn run_match_with(
    api: &ApiClient,
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<MatchOutcome, ClientError> {
    let Some((key, selected, mut outcome)) = prepare(opts, progress)? else {
        return dry_outcome(opts, progress);
    };
    let t = Instant::now();
    let job: JobCreated = api.call_json(
        Method::POST,
        "/v1/jobs",
        &Body::json(&serde_json::json!({
            "destination": opts.destination,
            "kinds": outcome.quality.kinds,
            "key_fingerprint": key.fingerprint().to_string(),
            "new_audience": opts.new_audience,
        })),
    )?;
    outcome.job_id = Some(job.job_id.clone());
    outcome.timings.push(("create", t.elapsed().as_secs_f64()));
    tracing::info!(job = %job.job_id, graph_version = job.graph_version, "job created");
    let acked = AtomicU32::new(0);
    let job_id = job.job_id.clone();
    let result = exchange_and_finish(
        api,
        opts,
        &key,
        Upload {
            job_id: &job_id,
            selected: &selected,
            skip: 0,
            acked: &acked,
        },
        Some(job),
        progress,
        &mut outcome,
    );
    finish_or_keep(api, &job_id, result, &acked, progress, outcome)
}

/// Continue an interrupted job: graph-pass pages the server has not
/// acknowledged are done again, then the batches from the first one the
/// server is missing are blinded and sent, then the job is finished. `opts` must describe the
/// same file and columns as the interrupted run.
pub fn resume_match(
    api: &ApiClient,
    opts: &MatchOptions,
    job_id: &str,
    progress: &dyn ProgressSink,
) -> Result<MatchOutcome, ClientError> {
    if opts.dry_run {
        return Err(ClientError::Usage(
            "--resume and --dry-run exclude each other".into(),
        ));
    }
    let job = crate::jobs::get_job(api, job_id)?;
    if job.status != "open" {
        return Err(ClientError::Usage(format!(
            "job {job_id} is {}; only an open job can be resumed",
            job.status
        )));
    }
    if !job.destination.is_empty() && job.destination != opts.destination {
        return Err(ClientError::Usage(format!(
            "job {job_id} is for destination `{}`, not `{}`",
            job.destination, opts.destination
        )));
    }
    let Some((key, selected, mut outcome)) = prepare(opts, progress)? else {
        unreachable!("not a dry run")
    };
    outcome.job_id = Some(job_id.to_owned());
    // Pages the server never acknowledged are done again (page uploads are idempotent).
    let pass = job
        .graph_pass
        .values()
        .any(|p| p.done < p.pages)
        .then(|| JobCreated {
            job_id: job_id.to_owned(),
            graph_version: 0,
            page_size: None,
            graph_pass: job
                .graph_pass
                .iter()
                .map(|(kind, p)| {
                    (
                        kind.clone(),
                        GraphPassInfo {
                            pages: p.pages,
                            points: p.points,
                        },
                    )
                })
                .collect(),
        });
    // Batches may have arrived out of order: resume at the first one missing;
    // re-sent batches are byte-identical and answered as duplicates.
    let first_missing = job.next_batch.unwrap_or(job.batches);
    let skip = u32::try_from(first_missing).map_err(|_| {
        ClientError::Protocol(format!("job {job_id} reports batch {first_missing}"))
    })?;
    let acked = AtomicU32::new(skip);
    let result = exchange_and_finish(
        api,
        opts,
        &key,
        Upload {
            job_id,
            selected: &selected,
            skip,
            acked: &acked,
        },
        pass,
        progress,
        &mut outcome,
    );
    finish_or_keep(api, job_id, result, &acked, progress, outcome)
}

/// Key, quality pass and row selection; `None` on a dry run.
#[allow(clippy::type_complexity)]
fn prepare(
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<Option<(SecretKey, RowSet, MatchOutcome)>, ClientError> {
    if opts.batch_size == 0 || opts.batch_size > MAX_RECORDS_PER_BATCH {
        return Err(ClientError::Usage(format!(
            "batch size must be between 1 and {MAX_RECORDS_PER_BATCH}"
        )));
    }
    if opts.dry_run {
        return Ok(None);
    }
    if opts.destination.trim().is_empty() {
        return Err(ClientError::Usage("--destination must not be empty".into()));
    }
    let key = load_key(&opts.key_file)?;
    let (outcome, selected) = checked(opts, progress)?;
    if outcome.quality.rows_to_upload == 0 {
        return Err(ClientError::BadInput {
            path: opts.input.clone(),
            message: "no row can be uploaded (see the data-quality report)".into(),
        });
    }
    Ok(Some((key, selected, outcome)))
}

fn dry_outcome(
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<MatchOutcome, ClientError> {
    checked(opts, progress).map(|(outcome, _)| outcome)
}

/// The timed quality pass: an outcome with the quality report, and the rows
/// chosen for upload.
fn checked(
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<(MatchOutcome, RowSet), ClientError> {
    let started = Instant::now();
    let (quality, selected) = quality_pass_with(opts, progress)?;
    let mut outcome = MatchOutcome {
        quality,
        ..MatchOutcome::default()
    };
    outcome
        .timings
        .push(("quality", started.elapsed().as_secs_f64()));
    Ok((outcome, selected))
}

/// The graph pass (if `pass` has pages to do) and the upload at the same
/// time, then finish. The two share no state on either side, and running
/// them together lets one's network and storage waits be filled with the
/// other's curve arithmetic. The first failure stops both.
fn exchange_and_finish(
    api: &ApiClient,
    opts: &MatchOptions,
    key: &SecretKey,
    up: Upload<'_>,
    pass: Option<JobCreated>,
    progress: &dyn ProgressSink,
    outcome: &mut MatchOutcome,
) -> Result<JobReport, ClientError> {
    let stop = AtomicBool::new(false);
    let rows = outcome.quality.rows_to_upload;
    let started = Instant::now();
    let (graph, uploaded) = std::thread::scope(|s| {
        let graph = pass.as_ref().map(|job| {
            s.spawn(|| {
                let r = graph_pass(api, key, job, progress, &stop);
                if r.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                (r, started.elapsed().as_secs_f64())
            })
        });
        let r = upload(api, opts, key, up, rows, progress, &stop);
        if r.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        let uploaded = (r, started.elapsed().as_secs_f64());
        let graph = graph.map(|h| h.join().expect("graph pass panicked"));
        (graph, uploaded)
    });
    // A graph-pass failure stops the upload short, so it is the one to report.
    if let Some((r, secs)) = graph {
        let (pages, points) = r?;
        outcome.graph_pages = pages;
        outcome.graph_points_blinded = points;
        outcome.timings.push(("graph-pass", secs));
    }
    let ((batches, records, ids), secs) = (uploaded.0?, uploaded.1);
    outcome.batches_uploaded = batches;
    outcome.records_uploaded = records;
    outcome.identifiers_blinded = ids;
    outcome.timings.push(("upload", secs));

    let t = Instant::now();
    let report: JobReport = api.call_json(
        Method::POST,
        &format!("/v1/jobs/{}/finish", segment(up.job_id)),
        &Body::json(&serde_json::json!({
            "batches": batches,
            "quality": outcome.quality.server_counts(),
        })),
    )?;
    outcome.timings.push(("finish", t.elapsed().as_secs_f64()));
    Ok(report)
}

/// On success attach the report. On a network failure after some batches
/// were acknowledged, keep the job open so that it can be resumed; on any
/// other failure abort it (the server deletes its uploads).
fn finish_or_keep(
    api: &ApiClient,
    job_id: &str,
    result: Result<JobReport, ClientError>,
    acked: &AtomicU32,
    progress: &dyn ProgressSink,
    mut outcome: MatchOutcome,
) -> Result<MatchOutcome, ClientError> {
    let e = match result {
        Ok(report) => {
            outcome.report = Some(report);
            return Ok(outcome);
        }
        Err(e) => e,
    };
    progress.end(GRAPH_PHASE);
    progress.end(UPLOAD_PHASE);
    let acknowledged = acked.load(Ordering::SeqCst);
    let network = matches!(
        e,
        ClientError::Unreachable { .. } | ClientError::Transport { .. }
    ) || e.api().is_some_and(|a| a.status >= 500);
    if network && acknowledged > 0 {
        return Err(ClientError::Interrupted {
            job_id: job_id.to_owned(),
            acknowledged_batches: acknowledged,
            source: Box::new(e),
        });
    }
    let _ = api.send(
        Method::DELETE,
        &format!("/v1/jobs/{}", segment(job_id)),
        &[],
        &Body::Empty,
        None,
    );
    Err(e)
}
