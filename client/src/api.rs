//! The HTTP client of the onboard API (docs/api.md): TLS with an optional
//! private CA, the API key in the `Authorization: Bearer` header only,
//! `{"error":{"code","message"}}` turned into a typed [`ApiError`] by its code
//! (never by its text), and bounded exponential backoff on transient failures
//! (connection errors, 502/503/504).

use crate::error::ClientError;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

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
    /// 500: generic server failure.
    Internal,
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
            "internal" => Self::Internal,
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
            Self::Internal => "internal",
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
        ErrorCode::Internal => format!("the server failed (HTTP {}, internal{msg}); see the server log", e.status),
        _ => format!("the server refused the request (HTTP {}, {}{msg})", e.status, e.code),
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// How transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body.
    Empty,
    /// `application/json`.
    Json(Vec<u8>),
    /// `application/octet-stream`: a wire frame.
    Frame(Vec<u8>),
}

impl Body {
    /// Serialise a value as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        Self::Json(serde_json::to_vec(value).expect("request bodies serialise"))
    }
}

/// A client of one onboard server with one API key.
#[derive(Clone)]
pub struct ApiClient {
    http: Client,
    base: String,
    api_key: String,
    ca_given: bool,
    retry: RetryPolicy,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("ApiClient")
            .field("server", &self.base)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client of `server` (e.g. `https://127.0.0.1:8443`), trusting only the
    /// CA in `ca_pem_file` when one is given, authenticating with `api_key`
    /// (may be empty for commands that never call the server).
    pub fn new(
        server: &str,
        ca_pem_file: Option<&Path>,
        api_key: &str,
    ) -> Result<Self, ClientError> {
        let base = server.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ClientError::Usage(format!(
                "--server must be an https:// URL, got `{base}`"
            )));
        }
        let api_key = api_key.trim().to_owned();
        if api_key.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(ClientError::Usage(
                "the API key contains spaces or non-ASCII characters; check --api-key-file or ONBOARD_API_KEY".into(),
            ));
        }
        let mut builder = Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(900))
            .user_agent(concat!("onboard-client/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_pem_file {
            let pem = std::fs::read(path).map_err(|e| ClientError::read(path, e))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::BadInput {
                    path: path.to_owned(),
                    message: format!("not a PEM certificate file: {e}"),
                })?;
            if certs.is_empty() {
                return Err(ClientError::BadInput {
                    path: path.to_owned(),
                    message: "no PEM certificate found".into(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
            builder = builder.tls_built_in_root_certs(false);
        }
        let http = builder.build().map_err(|e| ClientError::Transport {
            server: base.clone(),
            detail: error_chain(&e),
        })?;
        Ok(Self {
            http,
            base,
            api_key,
            ca_given: ca_pem_file.is_some(),
            retry: RetryPolicy::default(),
        })
    }

    /// Replace the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// Send one request, retrying transient failures; a non-2xx answer becomes
    /// [`ClientError::Api`].
    pub fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: &Body,
        accept: Option<&str>,
    ) -> Result<Response, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 1;
        loop {
            let mut req: RequestBuilder = self.http.request(method.clone(), &url);
            if !query.is_empty() {
                req = req.query(query);
            }
            if !self.api_key.is_empty() {
                req = req.bearer_auth(&self.api_key);
            }
            if let Some(accept) = accept {
                req = req.header(ACCEPT, accept);
            }
            req = match body {
                Body::Empty => req,
                Body::Json(bytes) => req
                    .header(CONTENT_TYPE, "application/json")
                    .body(bytes.clone()),
                Body::Frame(bytes) => req
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.clone()),
            };
            let retryable = match req.send() {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp)
                    if matches!(
                        resp.status(),
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    ) && attempt < self.retry.attempts =>
                {
                    tracing::debug!(
                        status = resp.status().as_u16(),
                        attempt,
                        "transient status, retrying"
                    );
                    true
                }
                Ok(resp) => return Err(api_error(resp).into()),
                Err(e) => {
                    let err = self.transport_error(&e);
                    let transient = matches!(err, ClientError::Unreachable { .. })
                        || (e.is_timeout()
                            && !matches!(err, ClientError::UntrustedCertificate { .. }));
                    if !transient || attempt >= self.retry.attempts {
                        return Err(err);
                    }
                    tracing::debug!(attempt, "transport error, retrying");
                    true
                }
            };
            debug_assert!(retryable);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }

    /// GET a JSON document.
    pub fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let resp = self.send(
            Method::GET,
            path,
            query,
            &Body::Empty,
            Some("application/json"),
        )?;
        read_json(resp)
    }

    /// Send a body with `method` and read a JSON answer.
    pub fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Body,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, &[], body, Some("application/json"))?;
        read_json(resp)
    }

    /// GET a binary body.
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.send(
            Method::GET,
            path,
            &[],
            &Body::Empty,
            Some("application/octet-stream"),
        )?;
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Transport {
                server: self.base.clone(),
                detail: error_chain(&e),
            })
    }

    fn transport_error(&self, e: &reqwest::Error) -> ClientError {
        let detail = error_chain(e);
        let lower = detail.to_ascii_lowercase();
        if lower.contains("certificate")
            || lower.contains("unknownissuer")
            || lower.contains("invalid peer")
        {
            let hint = if self.ca_given {
                "the certificate is not signed by the CA given with --ca, or is not valid for this host name".to_owned()
            } else {
                "pass the server's CA certificate with --ca FILE (or ONBOARD_CA)".to_owned()
            };
            return ClientError::UntrustedCertificate {
                server: self.base.clone(),
                detail,
                hint,
            };
        }
        if e.is_connect() {
            return ClientError::Unreachable {
                server: self.base.clone(),
                detail,
            };
        }
        ClientError::Transport {
            server: self.base.clone(),
            detail,
        }
    }
}

/// Read a JSON answer.
pub(crate) fn read_json<T: DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
    let bytes = resp
        .bytes()
        .map_err(|e| ClientError::Protocol(format!("reading the answer: {}", error_chain(&e))))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Protocol(format!("answer is not the expected JSON: {e}")))
}

fn api_error(resp: Response) -> ApiError {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().unwrap_or_default();
    match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
        Ok(env) => ApiError {
            status,
            code: ErrorCode::from_code(&env.error.code),
            message: env.error.message,
        },
        Err(_) => ApiError {
            status,
            code: ErrorCode::from_status(status),
            message: String::new(),
        },
    }
}

/// The error and its causes, joined with `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Percent-encode one path segment (names and IDs in URLs).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_statuses_map() {
        for code in [
            "unauthenticated",
            "forbidden",
            "bad-frame",
            "privacy-budget-exhausted",
            "job-not-open",
        ] {
            assert_eq!(ErrorCode::from_code(code).as_str(), code);
        }
        assert_eq!(
            ErrorCode::from_code("brand-new"),
            ErrorCode::Other("brand-new".into())
        );
        assert_eq!(ErrorCode::from_status(401), ErrorCode::Unauthenticated);
        assert_eq!(ErrorCode::from_status(403), ErrorCode::Forbidden);
        assert_eq!(ErrorCode::from_status(503), ErrorCode::Internal);
    }

    #[test]
    fn messages_point_to_the_fix() {
        let e = ApiError {
            status: 401,
            code: ErrorCode::Unauthenticated,
            message: "revoked".into(),
        };
        assert!(e.to_string().contains("wrong or has been revoked"));
        let e = ApiError {
            status: 403,
            code: ErrorCode::Forbidden,
            message: String::new(),
        };
        assert!(e.to_string().contains("no permission"));
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("dsp-a_1.x"), "dsp-a_1.x");
    }

    #[test]
    fn bad_server_urls_and_keys_are_usage_errors() {
        assert!(matches!(
            ApiClient::new("ftp://x", None, ""),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            ApiClient::new("https://x", None, "a b"),
            Err(ClientError::Usage(_))
        ));
        assert!(ApiClient::new("https://127.0.0.1:1/", None, "obk_x").is_ok());
    }
}
