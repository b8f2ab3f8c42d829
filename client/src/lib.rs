//! # onboard-client
//!
//! The advertiser's, destination's and operator's side of onboard, as a
//! library and as the `onboard` CLI (`main.rs` only calls [`main_with_args`]).
//!
//! - [`matching`]: the match pipeline — a local data-quality pass over a CRM
//!   export, then the double-blind job (graph pass, blinded batch upload,
//!   report). Raw identifiers never leave the machine; only `a·P(x)` does.
//! - [`destination`]: list and pull audiences; [`webhooks`]: the push
//!   endpoint and deliveries; [`receiver`]: the reference webhook receiver.
//! - [`admin`]: principals and keys, graph import (digests only), opt-outs,
//!   erasure, audit, stats.
//! - [`api`]: the HTTP client of docs/api.md with typed errors and retries.
//! - [`input`]: the advertiser's files as they come — CSV in any encoding
//!   and delimiter, gzipped or not, and spreadsheets — as one [`input::RowSource`].
//! - [`html`]: the match report as one self-contained HTML page.
//! - [`rows`]: match rows held in memory (the Python package) like a file.
//! - [`keyfile`]: a new advertiser key file; the API client from a key file.
//! - [`secret_file`]: key files are read only when they are safely ours.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod cli;
pub(crate) mod commands;
pub mod destination;
pub mod error;
pub mod html;
pub mod input;
pub mod jobs;
pub mod keyfile;
pub mod matching;
pub mod progress;
pub mod receiver;
pub mod render;
pub mod report;
pub mod rows;
pub mod secret_file;
pub mod webhooks;

/// The CSV reader under its earlier path.
pub use input::csv as csv_input;

pub use admin::{
    activate_graph_version, audit, create_key, create_principal, create_principal_with_webhook,
    erase, graph_versions, import_delta, import_graph, list_principals, optout, revoke_key,
    revoke_principal, stats, AuditEntry, CreatedPrincipal, EraseSummary, GraphFiles, GraphVersion,
    ImportSummary, OptoutSummary, Role,
};
pub use api::{ApiClient, ApiError, ErrorCode, RetryPolicy};
pub use destination::{list_audiences, pull_audience, pull_audience_paged, AudienceInfo};
pub use error::ClientError;
pub use html::{render_html, HtmlContext};
pub use jobs::{abort_job, get_job, list_jobs, JobInfo};
pub use keyfile::{api_client, generate_key_file};
pub use matching::{
    data_quality, resume_match, run_match, run_match_with, JobReport, MatchOptions, MatchOutcome,
    QualityReport, SegmentReport,
};
pub use onboard_protocol::Region;
pub use render::{render_outcome, render_quality, render_report};
pub use rows::RowsInput;

use clap::Parser;
use std::process::ExitCode;

/// Run the `onboard` CLI: exit 0 on success, 1 when the operation failed,
/// 2 on a usage error.
pub fn main_with_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> ExitCode {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            let usage = e.chain().any(|c| {
                c.downcast_ref::<ClientError>()
                    .is_some_and(ClientError::is_usage)
            });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// An error and its causes on one line, each cause only once (messages
/// that already quote their cause do not repeat it).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
