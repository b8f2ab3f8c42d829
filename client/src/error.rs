//! The library's error type. Messages say what went wrong and what to do
//! about it; none of them carries an identifier, a key or a CSV value.

use crate::api::ApiError;
use std::path::PathBuf;
use thiserror::Error;

/// Everything a client operation can fail with.
#[derive(Debug, Error)]
pub enum ClientError {
    /// A local file could not be opened, read or written.
    #[error("{action} {path}: {source}")]
    File {
        /// What was being done ("cannot read", "cannot create", …).
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A column named on the command line is not in the CSV header.
    #[error(
        "column `{column}` is not in the header of {path}; the header has: {}",
        format_header(header)
    )]
    UnknownColumn {
        /// The requested column.
        column: String,
        /// The file.
        path: PathBuf,
        /// The header that was found.
        header: Vec<String>,
    },
    /// The input is not usable as a whole (empty file, no header, …).
    #[error("{path}: {message}")]
    BadInput {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a value from the file).
        message: String,
    },
    /// The advertiser key file could not be parsed.
    #[error("key file {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: onboard_protocol::KeyError,
    },
    /// Options that do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached at all.
    #[error("cannot reach the server at {server}: {detail} (is it running? check --server / ONBOARD_SERVER)")]
    Unreachable {
        /// The server's base URL.
        server: String,
        /// The transport's reason.
        detail: String,
    },
    /// TLS failed because the server's certificate is not trusted.
    #[error("the TLS certificate of {server} is not trusted ({detail}); {hint}")]
    UntrustedCertificate {
        /// The server's base URL.
        server: String,
        /// The TLS library's reason.
        detail: String,
        /// What to do about it.
        hint: String,
    },
    /// Any other transport failure.
    #[error("request to {server} failed: {detail}")]
    Transport {
        /// The server's base URL.
        server: String,
        /// The transport's reason.
        detail: String,
    },
    /// The server answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The upload stopped on a network failure after some batches were
    /// acknowledged; the job stays open and can be resumed.
    #[error(
        "the upload of job {job_id} was interrupted after {acknowledged_batches} acknowledged batches: {source}; \
         run the same command again with `--resume {job_id}` to continue from there"
    )]
    Interrupted {
        /// The open job.
        job_id: String,
        /// Batches the server has.
        acknowledged_batches: u32,
        /// What stopped the upload.
        source: Box<ClientError>,
    },
    /// The server answered something this client cannot understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API error, when the server refused the request.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File {
            action: "cannot read",
            path: path.into(),
            source,
        }
    }
}

fn format_header(header: &[String]) -> String {
    if header.is_empty() {
        return "(no columns)".into();
    }
    header
        .iter()
        .map(|h| format!("`{h}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
