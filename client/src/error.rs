//! The library's error types: [`ClientError`], the server's [`ApiError`]
//! with its stable [`ErrorCode`], and why a key file is refused
//! ([`KeyFileProblem`]). It imports nothing of the crate, so every module
//! may use it without a cycle. Messages say what went wrong and what to do
//! about it; none of them carries an identifier, a key or a CSV value.

use std::fmt;
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
        problem: KeyFileProblem,
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
    /// (`api::limits`); reading stopped at the limit.
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

/// The stable error codes of docs/api.md.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 401: missing, malformed, unknown or revoked key.
    Unauthenticated,
    /// 403: the key's role may not call this endpoint.
    Forbidden,
    /// 404: no such object (or it belongs to someone else).
    NotFound,
    /// 400: malformed JSON or parameter.
    BadRequest,
    /// 400: a binary frame failed to decode.
    BadFrame,
    /// 400: a point is not a canonical non-identity encoding.
    BadPoint,
    /// 400: a members cursor this server did not issue.
    BadCursor,
    /// 409: exists already, or a batch re-sent with different content.
    Conflict,
    /// 409: the job is finished, failed or aborted.
    JobNotOpen,
    /// 409: finish before every batch / page arrived.
    Incomplete,
    /// 410: the audience has expired.
    Expired,
    /// 413: body over the route's limit.
    TooLarge,
    /// 415: wrong content type.
    UnsupportedMediaType,
    /// 422: a job below the minimum number of rows.
    TooFewRows,
    /// 422: well-formed but not acceptable.
    Invalid,
    /// 429: the advertiser's ε budget is spent.
    PrivacyBudgetExhausted,
    /// 429: too many open jobs.
    TooManyJobs,
    /// 503: the server is rotating its key; resume when it has finished.
    KeyRotationInProgress,
    /// 410: the changes since that audience version are no longer kept.
    VersionNotKept,
    /// 500: generic server failure.
    Internal,
    /// 503: the server's database is unreachable for now (retried).
    StorageUnavailable,
    /// A code this client does not know (a newer server).
    Other(String),
}

impl ErrorCode {
    /// Parse a code from the wire.
    pub fn from_code(code: &str) -> Self {
        match code {
            "unauthenticated" => Self::Unauthenticated,
            "forbidden" => Self::Forbidden,
            "not-found" => Self::NotFound,
            "bad-request" => Self::BadRequest,
            "bad-frame" => Self::BadFrame,
            "bad-point" => Self::BadPoint,
            "bad-cursor" => Self::BadCursor,
            "conflict" => Self::Conflict,
            "job-not-open" => Self::JobNotOpen,
            "incomplete" => Self::Incomplete,
            "expired" => Self::Expired,
            "too-large" => Self::TooLarge,
            "unsupported-media-type" => Self::UnsupportedMediaType,
            "too-few-rows" => Self::TooFewRows,
            "invalid" => Self::Invalid,
            "privacy-budget-exhausted" => Self::PrivacyBudgetExhausted,
            "too-many-jobs" => Self::TooManyJobs,
            "key-rotation-in-progress" => Self::KeyRotationInProgress,
            "version-not-kept" => Self::VersionNotKept,
            "internal" => Self::Internal,
            "storage-unavailable" => Self::StorageUnavailable,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The code a bare HTTP status stands for, when the body has none.
    pub fn from_status(status: u16) -> Self {
        match status {
            400 => Self::BadRequest,
            401 => Self::Unauthenticated,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            409 => Self::Conflict,
            410 => Self::Expired,
            413 => Self::TooLarge,
            415 => Self::UnsupportedMediaType,
            422 => Self::Invalid,
            s if s >= 500 => Self::Internal,
            s => Self::Other(format!("http-{s}")),
        }
    }

    /// The kebab-case wire code.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::BadRequest => "bad-request",
            Self::BadFrame => "bad-frame",
            Self::BadPoint => "bad-point",
            Self::BadCursor => "bad-cursor",
            Self::Conflict => "conflict",
            Self::JobNotOpen => "job-not-open",
            Self::Incomplete => "incomplete",
            Self::Expired => "expired",
            Self::TooLarge => "too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::TooFewRows => "too-few-rows",
            Self::Invalid => "invalid",
            Self::PrivacyBudgetExhausted => "privacy-budget-exhausted",
            Self::TooManyJobs => "too-many-jobs",
            Self::KeyRotationInProgress => "key-rotation-in-progress",
            Self::VersionNotKept => "version-not-kept",
            Self::Internal => "internal",
            Self::StorageUnavailable => "storage-unavailable",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer of the server.
#[derive(Debug, Clone, Error)]
#[error("{}", describe(self))]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The stable code: branch on this.
    pub code: ErrorCode,
    /// The server's message (for people; never parsed).
    pub message: String,
}

fn describe(e: &ApiError) -> String {
    let msg = if e.message.is_empty() {
        String::new()
    } else {
        format!(": {}", e.message)
    };
    match e.code {
        ErrorCode::Unauthenticated => format!(
            "the server refused the API key (401 unauthenticated{msg}); it is wrong or has been revoked — check --api-key-file or ONBOARD_API_KEY"
        ),
        ErrorCode::Forbidden => format!(
            "this API key has no permission for this command (403 forbidden{msg}); use a key of the right role (admin, advertiser or destination)"
        ),
        ErrorCode::NotFound => format!("not found (404{msg})"),
        ErrorCode::TooFewRows => format!("job refused: too few rows{msg}"),
        ErrorCode::PrivacyBudgetExhausted => format!("job refused: privacy budget exhausted{msg}"),
        ErrorCode::TooManyJobs => format!("job refused: too many open jobs{msg}"),
        ErrorCode::KeyRotationInProgress => format!(
            "the server is rotating its key (503 key-rotation-in-progress{msg}); run the command again when it has finished (an interrupted match with --resume JOB_ID)"
        ),
        ErrorCode::VersionNotKept => format!(
            "the server no longer keeps these changes (410 version-not-kept{msg}); pull the whole audience without --since"
        ),
        ErrorCode::Internal => format!("the server failed (HTTP {}, internal{msg}); see the server log", e.status),
        _ => format!("the server refused the request (HTTP {}, {}{msg})", e.status, e.code),
    }
}

/// A key file is a line of text; anything longer is not one.
pub const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// Why a key file is refused; each text names the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFileProblem {
    /// The path names a symbolic link.
    Symlink,
    /// A directory, FIFO, socket or device.
    NotRegular(&'static str),
    /// Owned by another user.
    NotOwned {
        /// The file's owner.
        owner: u32,
        /// The effective user running the client.
        euid: u32,
    },
    /// Some permission bit for group or others is set.
    OpenToOthers {
        /// The permission bits (`0o777` part).
        mode: u32,
    },
    /// Larger than [`MAX_KEY_FILE_BYTES`].
    TooLarge,
}

impl fmt::Display for KeyFileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Symlink => write!(
                f,
                "is a symbolic link, refused for a key file; give the path of the file itself"
            ),
            Self::NotRegular(kind) => write!(f, "is a {kind}, not a regular key file"),
            Self::NotOwned { owner, euid } => write!(
                f,
                "is owned by uid {owner}, not by the user running onboard (uid {euid}); \
                 use a key file of your own (chown it, or copy it and `chmod 600` the copy)"
            ),
            Self::OpenToOthers { mode } => write!(
                f,
                "is accessible by group or others (mode {mode:03o}); run `chmod 600` on it"
            ),
            Self::TooLarge => write!(
                f,
                "is larger than {MAX_KEY_FILE_BYTES} bytes, not a key file"
            ),
        }
    }
}
