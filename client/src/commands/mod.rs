//! One module per command: parse nothing, call the library, print. Progress
//! bars live here and only here.

pub mod progress;

mod admin;
mod audiences;
mod keygen;
mod r#match;
mod normalize;

use crate::api::ApiClient;
use crate::cli::{Cli, Command};
use anyhow::{Context as _, Result};

/// Global options every command may need.
pub(crate) struct Context {
    pub server: String,
    pub ca: Option<std::path::PathBuf>,
    pub api_key_file: Option<std::path::PathBuf>,
    pub quiet: bool,
}

impl Context {
    /// A client with the API key from `--api-key-file` or `ONBOARD_API_KEY`.
    pub fn api(&self) -> Result<ApiClient> {
        let key = match &self.api_key_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API key file {}", path.display()))?,
            None => std::env::var("ONBOARD_API_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
                .context("no API key: pass --api-key-file FILE or set ONBOARD_API_KEY")?,
        };
        Ok(ApiClient::new(
            &self.server,
            self.ca.as_deref(),
            key.trim(),
        )?)
    }

    /// A client that will never be used to call the server (dry runs).
    pub fn offline_api(&self) -> Result<ApiClient> {
        Ok(ApiClient::new(&self.server, None, "")?)
    }

    /// An informational line on stderr, unless `--quiet`.
    pub fn note(&self, text: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

/// Run a parsed command line.
pub(crate) fn run(cli: Cli) -> Result<()> {
    let ctx = Context {
        server: cli.server,
        ca: cli.ca,
        api_key_file: cli.api_key_file,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Keygen(args) => keygen::run(&ctx, &args),
        Command::Normalize(args) => normalize::run(&args),
        Command::Match(args) => r#match::run(&ctx, &args),
        Command::Audiences(cmd) => audiences::run(&ctx, cmd),
        Command::Admin(cmd) => admin::run(&ctx, cmd),
    }
}

/// A plain text table, columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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

/// A JSON scalar as display text (strings unquoted, null empty).
pub(crate) fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
