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
    /// A key file that is not safely ours: a symlink, not a regular file,
    /// owned by another user, or open to group or others.
    #[error("{path}: {problem}")]
    UnsafeKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong, and the fix.
        problem: crate::secret_file::KeyFileProblem,
    },
    /// Options that do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// `--server` may not be called with an API key.
    #[error("--server (or ONBOARD_SERVER) is refused: {0}")]
    ServerUrl(onboard_protocol::EndpointError),
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
    /// An answer larger than this client reads for its kind
    /// ([`crate::api::limits`]); reading stopped at the limit.
    #[error(
        "the server's answer ({what}) is larger than this client's limit of {limit} bytes; \
         stopped reading (is --server the onboard server?)"
    )]
    AnswerTooLarge {
        /// What was being read.
        what: String,
        /// The limit, in bytes.
        limit: u64,
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

    /// A mistake on the command line (exit code 2), not a failed operation.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_) | Self::ServerUrl(_))
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
