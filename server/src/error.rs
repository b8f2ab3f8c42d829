//! The service error: one variant per stable code of docs/api.md. The HTTP
//! mapping lives in exactly one place, `http/error.rs`. Messages never carry
//! identifiers or keys; `Internal` details go to the log only.

use crate::config::MicroEpsilon;
use crate::storage::StoreError;
use thiserror::Error;

/// A failure a service reports; each variant has a stable kebab-case code.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Missing, malformed, unknown or revoked key.
    #[error("a valid API key is required in the Authorization: Bearer header")]
    Unauthenticated,
    /// The key's role may not call this endpoint.
    #[error("this API key's role may not call this endpoint")]
    Forbidden,
    /// Absent or someone else's object.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Malformed JSON or parameter.
    #[error("{0}")]
    BadRequest(String),
    /// A binary frame failed to decode.
    #[error("{0}")]
    BadFrame(String),
    /// A point is not a canonical non-identity ristretto255 encoding.
    #[error("{0}")]
    BadPoint(String),
    /// A members cursor this server did not issue for this audience.
    #[error("the cursor was not issued by this server for this audience")]
    BadCursor,
    /// Exists already / re-sent with different content.
    #[error("{0}")]
    Conflict(String),
    /// The job is finished, failed or aborted.
    #[error("job is {0}, not open")]
    JobNotOpen(String),
    /// Finish called too early.
    #[error("{0}")]
    Incomplete(String),
    /// The audience has expired.
    #[error("the audience has expired")]
    Expired,
    /// Body over the route's limit.
    #[error("request body is larger than this route's limit of {0} bytes")]
    TooLarge(usize),
    /// Wrong Content-Type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A job below the minimum number of distinct identifiers.
    #[error("the job has {rows} distinct identifiers, the minimum is {min}")]
    TooFewRows {
        /// Distinct blinded identifiers uploaded.
        rows: u64,
        /// The configured minimum.
        min: usize,
    },
    /// Well-formed but not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The advertiser's ε budget cannot pay for the job's released values.
    #[error("the privacy budget of this advertiser is exhausted for the current window: {spent} of {budget} ε spent, this job needs {needed} ε")]
    BudgetExhausted {
        /// ε spent in the window.
        spent: MicroEpsilon,
        /// ε the job's released values would cost.
        needed: MicroEpsilon,
        /// The budget.
        budget: MicroEpsilon,
    },
    /// Too many open jobs.
    #[error("the advertiser already has {0} open jobs, the maximum")]
    TooManyJobs(usize),
    /// The request body did not arrive in time (`client_body_timeout`,
    /// `client_body_min_rate`).
    #[error("the request body arrived too slowly")]
    BodyTimeout,
    /// This source address failed authentication too often; retry later.
    #[error("too many failed authentications from this address; retry in {retry_after} s")]
    TooManyAuthFailures {
        /// Seconds until one more attempt is allowed (the Retry-After header).
        retry_after: u64,
    },
    /// The database cannot be reached; nothing was written. The text is
    /// for the log only.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// A server key rotation is running: retry (or `--resume`) when it ends.
    #[error("a server key rotation is in progress; retry when it has finished (a job or import can then be resumed)")]
    KeyRotation,
    /// Changes asked since an audience version whose changes are no longer kept.
    #[error("the changes since version {since} are not kept (only those since version {kept} are): pull the members instead")]
    VersionNotKept {
        /// The version asked for.
        since: u64,
        /// The version the kept changes lead from.
        kept: u64,
    },
    /// Anything else; the text is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::BadRequest(_) => "bad-request",
            Self::BadFrame(_) => "bad-frame",
            Self::BadPoint(_) => "bad-point",
            Self::BadCursor => "bad-cursor",
            Self::Conflict(_) => "conflict",
            Self::JobNotOpen(_) => "job-not-open",
            Self::Incomplete(_) => "incomplete",
            Self::Expired => "expired",
            Self::TooLarge(_) => "too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::TooFewRows { .. } => "too-few-rows",
            Self::Invalid(_) => "invalid",
            Self::BudgetExhausted { .. } => "privacy-budget-exhausted",
            Self::TooManyJobs(_) => "too-many-jobs",
            Self::BodyTimeout => "body-timeout",
            Self::TooManyAuthFailures { .. } => "too-many-auth-failures",
            Self::StorageUnavailable(_) => "storage-unavailable",
            Self::KeyRotation => "key-rotation-in-progress",
            Self::VersionNotKept { .. } => "version-not-kept",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound(_) => 404,
            Self::BadRequest(_) | Self::BadFrame(_) | Self::BadPoint(_) | Self::BadCursor => 400,
            Self::Conflict(_) | Self::JobNotOpen(_) | Self::Incomplete(_) => 409,
            Self::Expired | Self::VersionNotKept { .. } => 410,
            Self::TooLarge(_) => 413,
            Self::UnsupportedMediaType(_) => 415,
            Self::TooFewRows { .. } | Self::Invalid(_) => 422,
            Self::BudgetExhausted { .. } | Self::TooManyJobs(_) => 429,
            Self::BodyTimeout => 408,
            Self::TooManyAuthFailures { .. } => 429,
            Self::StorageUnavailable(_) => 503,
            Self::KeyRotation => 503,
            Self::Internal(_) => 500,
        }
    }

    /// The message shown to clients: generic for 5xx.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal server error".to_string(),
            Self::StorageUnavailable(_) => {
                "the server's database is unavailable; retry later".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => ApiError::StorageUnavailable(detail),
            other => ApiError::Internal(format!("storage: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_database_is_a_503_storage_unavailable_without_details() {
        let e = ApiError::from(StoreError::Unavailable("connection reset".into()));
        assert_eq!((e.status(), e.code()), (503, "storage-unavailable"));
        assert!(!e.public_message().contains("reset"));
        let e = ApiError::from(StoreError::Backend("disk".into()));
        assert_eq!((e.status(), e.code()), (500, "internal"));
    }
}
