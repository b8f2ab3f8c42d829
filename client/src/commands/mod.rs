//! One module per command: parse nothing, call the library, print. Progress
//! bars live here and only here.

mod admin;
mod audiences;
mod destination;
mod jobs;
mod keygen;
mod r#match;
mod normalize;

use crate::api::ApiClient;
use crate::cli::{Cli, Command};
pub(crate) use crate::render::table;
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
            // Refused unless a regular file of ours, mode 0600 (secret_file).
            Some(path) => {
                crate::secret_file::read_key_file(path).context("cannot use the API key file")?
            }
            None => crate::keyfile::api_key_from_env().context(crate::keyfile::NO_API_KEY)?,
        };
        Ok(ApiClient::new(
            &self.server,
            self.ca.as_deref(),
            key.trim(),
        )?)
    }

    /// A client that will never be used to call the server (dry runs).
    pub fn offline_api(&self) -> Result<ApiClient> {
        // Never used to connect, so a malformed --server is no reason to fail.
        Ok(ApiClient::new(&self.server, None, "")
            .or_else(|_| ApiClient::new("https://127.0.0.1:1", None, ""))?)
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
        Command::Jobs(cmd) => jobs::run(&ctx, cmd),
        Command::Audiences(cmd) => audiences::run(&ctx, cmd),
        Command::Destination(cmd) => destination::run(&ctx, cmd),
        Command::Admin(cmd) => admin::run(&ctx, cmd),
    }
}

/// A JSON scalar as display text (strings unquoted, null empty).
pub(crate) fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
