//! `onboard jobs list|show|abort`.

use super::{plain, table, Context};
use crate::cli::JobsCommand;
use crate::jobs::{abort_job, get_job, list_jobs};
use anyhow::Result;

pub(super) fn run(ctx: &Context, cmd: JobsCommand) -> Result<()> {
    let api = ctx.api()?;
    match cmd {
        JobsCommand::List { json } => {
            let jobs = list_jobs(&api)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "jobs": jobs }))?
                );
            } else {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        let rate = j
                            .report
                            .as_ref()
                            .map(|r| r.match_rate.clone())
                            .unwrap_or_default();
                        vec![
                            j.job_id.clone(),
                            j.status.clone(),
                            j.destination.clone(),
                            plain(&j.created),
                            j.batches.to_string(),
                            j.records.to_string(),
                            rate,
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "id",
                            "status",
                            "destination",
                            "created",
                            "batches",
                            "records",
                            "match rate"
                        ],
                        &rows
                    )
                );
            }
        }
        JobsCommand::Show { id, json } => {
            let job = get_job(&api, &id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                println!(
                    "job {}: {} for {}, created {}, {} batches, {} records",
                    job.job_id,
                    job.status,
                    job.destination,
                    plain(&job.created),
                    job.batches,
                    job.records
                );
                if let Some(report) = &job.report {
                    print!(
                        "{}",
                        crate::render::render_report(report, &Default::default())
                    );
                }
            }
        }
        JobsCommand::Abort { id } => {
            abort_job(&api, &id)?;
            println!("aborted job {id}; its uploads are deleted");
        }
    }
    Ok(())
}
