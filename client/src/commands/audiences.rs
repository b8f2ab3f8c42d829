//! `onboard audiences list|pull`.

use super::{plain, table, Context};
use crate::cli::AudiencesCommand;
use crate::destination::{list_audiences, pull_audience_paged, pull_changes_paged};
use anyhow::{Context as _, Result};
use std::io::Write;

pub(super) fn run(ctx: &Context, cmd: AudiencesCommand) -> Result<()> {
    let api = ctx.api()?;
    match cmd {
        AudiencesCommand::List { json } => {
            let list = list_audiences(&api)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "audiences": list }))?
                );
            } else if list.is_empty() {
                ctx.note("no audiences");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.segment.clone(),
                            a.advertiser.clone(),
                            a.size.to_string(),
                            a.version.to_string(),
                            plain(&a.created),
                            plain(&a.expires),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "id",
                            "segment",
                            "advertiser",
                            "size",
                            "version",
                            "created",
                            "expires"
                        ],
                        &rows
                    )
                );
            }
        }
        AudiencesCommand::Pull {
            id,
            out,
            page_size,
            since,
        } => {
            let pull = |w: &mut dyn Write| match since {
                Some(v) => pull_changes_paged(&api, &id, v, page_size, w),
                None => pull_audience_paged(&api, &id, page_size, w),
            };
            let n = match &out {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let n = pull(&mut w)?;
                    w.flush()
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    n
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::new(stdout.lock());
                    pull(&mut w)?
                }
            };
            match since {
                Some(v) => ctx.note(format!("{n} changes since version {v}")),
                None => ctx.note(format!("{n} members")),
            }
        }
    }
    Ok(())
}
