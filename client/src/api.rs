//! The HTTP client of the onboard API (docs/api.md): TLS with an optional
//! private CA, the API key in the `Authorization: Bearer` header only,
//! `{"error":{"code","message"}}` turned into a typed [`ApiError`] by its code
//! (never by its text), and bounded exponential backoff on transient failures
//! (connection errors, 502/503/504).
//!
//! Two rules keep a hostile or broken server (or a typo) from hurting the
//! client: the `--server` URL must pass [`check_secret_url`] (https, or plain
//! http only to a loopback address, never user-info), and no answer is read
//! beyond the limit of its kind ([`limits`]).

use crate::error::ClientError;
pub use crate::error::{ApiError, ErrorCode};
use onboard_protocol::endpoint::{check_secret_url, LOCALHOST, LOOPBACK_ADDRS};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How much the client reads of each kind of answer. A larger answer is an
/// error ([`ClientError::AnswerTooLarge`]) read no further than the limit, so
/// an endless body costs at most the limit in memory.
pub mod limits {
    use onboard_protocol::wire::MAX_POINTS_PER_PAGE;

    /// A JSON control answer (job, report, lists, audit page). Lists of jobs
    /// carry every job's report and grow with history, hence the room; the
    /// server accepts JSON bodies of the same size.
    pub const MAX_JSON_ANSWER: u64 = 16 << 20;
    /// The body of an error answer; a larger one is not read and the error is
    /// reported by its HTTP status alone.
    pub const MAX_ERROR_BODY: u64 = 64 << 10;
    /// Header of a point-page frame: magic, version, kind, page number, count.
    pub const POINT_PAGE_HEADER: u64 = 14;
    /// Bytes of one point on a page.
    pub const POINT_BYTES: u64 = 32;
    /// Any graph-pass page, whatever the server announced: the wire format's
    /// own maximum of points per page.
    pub const MAX_POINT_PAGE: u64 = POINT_PAGE_HEADER + POINT_BYTES * MAX_POINTS_PER_PAGE as u64;
    /// Cookie IDs asked for per members page (`limit`): the server's default
    /// and documented maximum (`members_page_limit`).
    pub const MEMBERS_PAGE_LIMIT: u32 = 10_000;
    /// The longest cookie ID the server stores (docs/api.md, graph import).
    pub const MAX_COOKIE_BYTES: u64 = 512;
    /// One member line: a cookie ID escaped (at most doubled, by JSON or CSV
    /// quoting) plus `{"cookie":""}` and the newline.
    pub const MAX_MEMBER_LINE: u64 = 2 * MAX_COOKIE_BYTES + 16;
    /// Any members page, whatever `limit` was asked.
    pub const MAX_MEMBERS_PAGE: u64 = 16 << 20;

    /// The largest page of a graph pass whose server announced `page_size`
    /// (absent on resume: then the kind's point count bounds it) and whose
    /// kind has `points` points in all.
    pub fn point_page(page_size: Option<u32>, points: u64) -> u64 {
        let per_page = page_size.map_or(points, |size| u64::from(size).min(points));
        (POINT_PAGE_HEADER + POINT_BYTES.saturating_mul(per_page)).min(MAX_POINT_PAGE)
    }

    /// The largest members page of at most `limit` cookie IDs (the CSV
    /// header line included).
    pub fn members_page(limit: u32) -> u64 {
        (MAX_MEMBER_LINE * (u64::from(limit) + 1)).min(MAX_MEMBERS_PAGE)
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
        // The canonical form of the parsed URL from here on: the host that
        // was checked is the host reqwest connects to.
        let checked = check_secret_url(server.trim()).map_err(ClientError::ServerUrl)?;
        let base = checked.as_str().trim_end_matches('/').to_owned();
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
            .user_agent(concat!("onboard-client/", env!("CARGO_PKG_VERSION")))
            // `localhost` is accepted for plain http as loopback: never ask a
            // resolver about it (the port here is ignored; the URL's is used).
            .resolve_to_addrs(LOCALHOST, &LOOPBACK_ADDRS.map(|ip| SocketAddr::new(ip, 0)))
            // The API never redirects; a redirect would be a URL the key was
            // not checked for.
            .redirect(reqwest::redirect::Policy::none());
        if checked.scheme() == "http" {
            // Plain http is allowed because it stays on loopback: an
            // HTTP_PROXY from the environment would carry the key in clear.
            builder = builder.no_proxy();
        }
        // Mozilla's roots (or `--ca` alone): the system's roots, which the
        // workspace's reqwest feature adds, are for the server's webhooks.
        builder = builder.tls_built_in_native_certs(false);
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

    /// GET a binary body of at most `limit` bytes; `what` names it in errors.
    pub fn get_bytes(&self, path: &str, limit: u64, what: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.send(
            Method::GET,
            path,
            &[],
            &Body::Empty,
            Some("application/octet-stream"),
        )?;
        read_bounded(resp, limit, what)
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

/// Read a whole answer of at most `limit` bytes; `what` names it in the error.
/// A larger announced length is refused before reading; otherwise at most
/// `limit + 1` bytes are read.
pub(crate) fn read_bounded(resp: Response, limit: u64, what: &str) -> Result<Vec<u8>, ClientError> {
    let too_large = || ClientError::AnswerTooLarge {
        what: what.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let server = resp.url().origin().ascii_serialization();
    let mut bytes = Vec::new();
    resp.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| ClientError::Transport {
            server,
            detail: format!("reading {what}: {}", error_chain(&e)),
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Read a JSON answer (at most [`limits::MAX_JSON_ANSWER`]).
pub(crate) fn read_json<T: DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
    let bytes = read_bounded(resp, limits::MAX_JSON_ANSWER, "a JSON answer")?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Protocol(format!("answer is not the expected JSON: {e}")))
}

/// The typed error of a non-2xx answer; a body over
/// [`limits::MAX_ERROR_BODY`] or not the JSON envelope leaves the status alone
/// to speak.
fn api_error(resp: Response) -> ApiError {
    let status = resp.status().as_u16();
    let bytes = read_bounded(resp, limits::MAX_ERROR_BODY, "an error answer").unwrap_or_default();
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
            "storage-unavailable",
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
    fn server_urls_follow_the_secret_url_rule() {
        for (text, base) in [
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("http://localhost/x", "http://localhost/x"),
            ("http://[::1]:80", "http://[::1]"),
            ("HTTP://0x7f.1:9", "http://127.0.0.1:9"),
            (
                " https://onboard.example:8443/ ",
                "https://onboard.example:8443",
            ),
        ] {
            assert_eq!(
                ApiClient::new(text, None, "").unwrap().server(),
                base,
                "{text}"
            );
        }
        for text in [
            "http://127.0.0.1:80@evil.example",
            "http://user:pw@127.0.0.1",
            "http://127.0.0.1@evil.example/",
            "http://127.0.0.1.evil.example",
            "http://[::ffff:127.0.0.1]",
            "http://localhost.",
            "http://example.com",
            "https://x.example/?a=b",
        ] {
            assert!(
                matches!(
                    ApiClient::new(text, None, "obk_x"),
                    Err(ref e @ ClientError::ServerUrl(_)) if e.is_usage()
                ),
                "{text}"
            );
        }
    }

    /// `http://localhost` is pinned to the loopback addresses: no resolver
    /// is asked, so no DNS answer can send the key elsewhere.
    #[test]
    fn localhost_reaches_the_loopback_interface() {
        let (url, seen) = fake_server(vec![answer("200 OK", "", "{}")]);
        let port = url.rsplit(':').next().unwrap();
        let api = fast(&format!("http://localhost:{port}"));
        let _: serde_json::Value = api.get_json("/healthz", &[]).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
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
    fn redirects_are_not_followed() {
        let (url, seen) = fake_server(vec![answer(
            "302 Found",
            "Location: http://evil.invalid/v1/jobs\r\n",
            "",
        )]);
        let err = fast(&url)
            .get_json::<serde_json::Value>("/v1/jobs", &[])
            .unwrap_err();
        assert_eq!(err.api().unwrap().status, 302, "{err}");
        assert_eq!(seen.lock().unwrap().len(), 1);
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
            seen[0].starts_with("GET /v1/audiences/a-1/members?limit=10000 HTTP"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1]
                .starts_with("GET /v1/audiences/a-1/members?limit=10000&cursor=cur%2B1%2F2 HTTP"),
            "{}",
            seen[1]
        );
    }

    /// A server that answers one request with `head` and then an endless
    /// body (chunked, or under a huge Content-Length): it writes until the
    /// client hangs up (or a write stalls 5 s, or 1 GiB is out) and returns
    /// how many body bytes it wrote.
    fn endless_server(
        head: &'static str,
        line: &'static [u8],
    ) -> (String, std::thread::JoinHandle<u64>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let chunked = head.contains("chunked");
            let block: Vec<u8> = line.iter().copied().cycle().take(64 << 10).collect();
            let frame = if chunked {
                [
                    format!("{:x}\r\n", block.len()).into_bytes(),
                    block.clone(),
                    b"\r\n".to_vec(),
                ]
                .concat()
            } else {
                block.clone()
            };
            let mut written = 0u64;
            if conn.write_all(head.as_bytes()).is_err() {
                return written;
            }
            while written < 1 << 30 && conn.write_all(&frame).is_ok() {
                written += block.len() as u64;
            }
            written
        });
        (url, handle)
    }

    /// The client stopped at the limit: the error names it, and the server
    /// could not push much more than the limit before the client hung up.
    fn assert_stopped_at(
        err: ClientError,
        limit: u64,
        what: &str,
        server: std::thread::JoinHandle<u64>,
    ) {
        match &err {
            ClientError::AnswerTooLarge { what: w, limit: l } => {
                assert_eq!((w.as_str(), *l), (what, limit), "{err}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(&limit.to_string()), "{err}");
        let written = server.join().unwrap();
        // Socket buffers on both sides hold a few MiB at most.
        assert!(
            written < limit + (32 << 20),
            "the server pushed {written} bytes"
        );
    }

    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    const HUGE_LENGTH: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n";

    #[test]
    fn an_endless_json_answer_stops_at_its_limit() {
        let (url, server) = endless_server(CHUNKED, b"[1,2,3,");
        let err = fast(&url)
            .get_json::<serde_json::Value>("/v1/jobs", &[])
            .unwrap_err();
        assert_stopped_at(err, limits::MAX_JSON_ANSWER, "a JSON answer", server);
    }

    #[test]
    fn a_huge_announced_length_is_refused_before_reading() {
        let (url, server) = endless_server(HUGE_LENGTH, b"[1,2,3,");
        let err = fast(&url)
            .get_json::<serde_json::Value>("/v1/jobs", &[])
            .unwrap_err();
        assert_stopped_at(err, limits::MAX_JSON_ANSWER, "a JSON answer", server);
    }

    #[test]
    fn an_endless_point_page_stops_at_the_announced_page_size() {
        let (url, server) = endless_server(CHUNKED, b"OBPP");
        let limit = limits::point_page(Some(100), 1_000_000);
        assert_eq!(limit, 14 + 32 * 100);
        let err = fast(&url)
            .get_bytes("/v1/jobs/j/graph/email/0", limit, "graph page email/0")
            .unwrap_err();
        assert_stopped_at(err, limit, "graph page email/0", server);
    }

    #[test]
    fn an_endless_members_page_stops_at_its_limit() {
        let (url, server) = endless_server(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"{\"cookie\":\"c\"}\n",
        );
        let mut out = Vec::new();
        // Short lines: the count of cookie IDs asked for is what stops it.
        let err =
            crate::destination::pull_audience_paged(&fast(&url), "a-1", 50, &mut out).unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol(m) if m.contains("more than the 50")),
            "{err}"
        );
        assert_eq!(out.len(), 50 * 2);
        assert!(server.join().unwrap() < 32 << 20);
    }

    #[test]
    fn an_endless_member_line_stops_at_the_line_limit() {
        let (url, server) = endless_server(
            "HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"cccccccc",
        );
        let mut out = Vec::new();
        let err = crate::destination::pull_audience(&fast(&url), "a-1", &mut out).unwrap_err();
        assert_stopped_at(err, limits::MAX_MEMBER_LINE, "a member line", server);
        assert!(out.is_empty());
    }

    #[test]
    fn endless_blank_lines_stop_at_the_page_limit() {
        // Blank lines count no cookie ID: the page's byte budget stops them.
        let (url, server) = endless_server(
            "HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\n",
        );
        let mut out = Vec::new();
        let err =
            crate::destination::pull_audience_paged(&fast(&url), "a-1", 3, &mut out).unwrap_err();
        assert_stopped_at(err, limits::members_page(3), "a members page", server);
    }

    #[test]
    fn an_endless_error_body_is_cut_and_the_status_reported() {
        let (url, server) = endless_server(
            "HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"x",
        );
        let api = fast(&url).with_retry(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        });
        let err = api.get_json::<serde_json::Value>("/x", &[]).unwrap_err();
        assert_eq!(err.api().unwrap().status, 500);
        assert!(server.join().unwrap() < limits::MAX_ERROR_BODY + (32 << 20));
    }

    #[test]
    fn limits_fit_their_kinds() {
        use onboard_protocol::wire::PointPage;
        let empty = PointPage {
            kind: onboard_protocol::MatchKind::ALL[0],
            page_no: 0,
            points: Vec::new(),
        };
        assert_eq!(empty.encode().len() as u64, limits::POINT_PAGE_HEADER);
        assert_eq!(
            limits::point_page(Some(8192), 10),
            14 + 32 * 10,
            "the kind's points bound a page"
        );
        assert_eq!(limits::point_page(None, 500), 14 + 32 * 500);
        assert_eq!(
            limits::point_page(Some(u32::MAX), u64::MAX),
            limits::MAX_POINT_PAGE
        );
        assert_eq!(
            limits::members_page(10_000),
            10_001 * limits::MAX_MEMBER_LINE
        );
        assert_eq!(limits::members_page(u32::MAX), limits::MAX_MEMBERS_PAGE);
        // The longest cookie ID as NDJSON, every character escaped, fits a line.
        let cookie = "\"".repeat(limits::MAX_COOKIE_BYTES as usize);
        let line = serde_json::json!({ "cookie": cookie }).to_string() + "\n";
        assert!(
            line.len() as u64 <= limits::MAX_MEMBER_LINE,
            "{}",
            line.len()
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
            Err(ClientError::ServerUrl(
                onboard_protocol::EndpointError::Scheme(_)
            ))
        ));
        assert!(matches!(
            ApiClient::new("https://x", None, "a b"),
            Err(ClientError::Usage(_))
        ));
        assert!(ApiClient::new("https://127.0.0.1:1/", None, "obk_x").is_ok());
    }
}
