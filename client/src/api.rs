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
        if !base.starts_with("https://") && !is_loopback_http(&base) {
            return Err(ClientError::Usage(format!(
                "--server must be an https:// URL (plain http only to localhost), got `{base}`"
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
        let idempotent = matches!(
            method,
            Method::GET | Method::PUT | Method::DELETE | Method::HEAD
        );
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
            match req.send() {
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
                }
                Ok(resp) => return Err(api_error(resp).into()),
                Err(e) => {
                    let err = self.transport_error(&e);
                    // Never connected: always safe to retry. Failed mid-way
                    // (reset, timeout): only idempotent methods are re-sent.
                    let transient = match err {
                        ClientError::Unreachable { .. } => true,
                        ClientError::Transport { .. } => idempotent,
                        _ => false,
                    };
                    if !transient || attempt >= self.retry.attempts {
                        return Err(err);
                    }
                    tracing::debug!(attempt, "transport error, retrying");
                }
            }
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

/// Plain HTTP is accepted only to the loopback interface (tests, local
/// proxies): an API key never crosses a network in clear text.
fn is_loopback_http(base: &str) -> bool {
    let Some(rest) = base.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
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
    fn plain_http_only_to_loopback() {
        assert!(is_loopback_http("http://127.0.0.1:8080"));
        assert!(is_loopback_http("http://localhost/x"));
        assert!(is_loopback_http("http://[::1]:80"));
        assert!(!is_loopback_http("http://example.com"));
        assert!(!is_loopback_http("http://127.0.0.1.evil.com"));
        assert!(matches!(
            ApiClient::new("http://example.com", None, ""),
            Err(ClientError::Usage(_))
        ));
    }

    /// A one-request-per-connection HTTP server answering from a script and
    /// recording each request's head.
    fn fake_server(script: Vec<String>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for answer in script {
                let (mut conn, _) = listener.accept().unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                conn.read_exact(&mut body).unwrap();
                log.lock().unwrap().push(head);
                conn.write_all(answer.as_bytes()).unwrap();
            }
        });
        (url, seen)
    }

    fn answer(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    }

    fn fast(url: &str) -> ApiClient {
        ApiClient::new(url, None, "obk_secret")
            .unwrap()
            .with_retry(RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
            })
    }

    #[test]
    fn transient_statuses_are_retried_then_succeed() {
        let (url, seen) = fake_server(vec![
            answer("503 Service Unavailable", "", ""),
            answer("502 Bad Gateway", "", ""),
            answer(
                "200 OK",
                "Content-Type: application/json\r\n",
                r#"{"status":"ok"}"#,
            ),
        ]);
        let v: serde_json::Value = fast(&url).get_json("/healthz", &[]).unwrap();
        assert_eq!(v["status"], "ok");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer obk_secret"));
        assert!(
            !seen[0].lines().next().unwrap().contains("obk_"),
            "never in the URL"
        );
    }

    #[test]
    fn retries_are_bounded() {
        let (url, seen) = fake_server(vec![answer("504 Gateway Timeout", "", ""); 3]);
        let err = fast(&url)
            .get_json::<serde_json::Value>("/x", &[])
            .unwrap_err();
        assert_eq!(err.api().unwrap().status, 504);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn errors_are_typed_by_code_not_text() {
        let (url, seen) = fake_server(vec![
            answer(
                "401 Unauthorized",
                "",
                r#"{"error":{"code":"unauthenticated","message":"key revoked"}}"#,
            ),
            answer(
                "429 Too Many Requests",
                "",
                r#"{"error":{"code":"privacy-budget-exhausted","message":"ε budget spent"}}"#,
            ),
            answer("413 Payload Too Large", "", "too big"),
        ]);
        let api = fast(&url);
        let e = api.get_json::<serde_json::Value>("/a", &[]).unwrap_err();
        assert_eq!(e.api().unwrap().code, ErrorCode::Unauthenticated);
        assert!(e.to_string().contains("key revoked"));
        let e = api.get_json::<serde_json::Value>("/b", &[]).unwrap_err();
        assert_eq!(e.api().unwrap().code, ErrorCode::PrivacyBudgetExhausted);
        assert!(e.to_string().contains("budget"));
        let e = api.get_json::<serde_json::Value>("/c", &[]).unwrap_err();
        assert_eq!(e.api().unwrap().code, ErrorCode::TooLarge);
        assert_eq!(seen.lock().unwrap().len(), 3, "4xx are not retried");
    }

    #[test]
    fn members_follow_the_cursor() {
        let (url, seen) = fake_server(vec![
            answer(
                "200 OK",
                "Content-Type: application/x-ndjson\r\nOnboard-Next-Cursor: cur+1/2\r\n",
                "{\"cookie\":\"c1\"}\n{\"cookie\":\"c2\"}\n",
            ),
            answer("200 OK", "Content-Type: text/csv\r\n", "cookie_id\nc3\n"),
        ]);
        let mut out = Vec::new();
        assert_eq!(
            crate::destination::pull_audience(&fast(&url), "a-1", &mut out).unwrap(),
            3
        );
        assert_eq!(String::from_utf8(out).unwrap(), "c1\nc2\nc3\n");
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].starts_with("GET /v1/audiences/a-1/members HTTP"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].starts_with("GET /v1/audiences/a-1/members?cursor=cur%2B1%2F2 HTTP"),
            "{}",
            seen[1]
        );
    }

    #[test]
    fn unreachable_is_retried_then_reported() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = fast(&format!("http://127.0.0.1:{port}"))
            .get_json::<serde_json::Value>("/x", &[])
            .unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
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
