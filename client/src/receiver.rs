//! The reference webhook receiver for DSP engineers (`onboard destination
//! listen`): a small HTTPS server (actix-web over rustls) that verifies
//! every request's Standard Webhooks signature and timestamp (401 when they
//! do not verify), acknowledges a `webhook-id` it has processed already
//! without processing it again, appends each event to `DIR/events.ndjson`
//! and writes `DIR/<audience id>.csv` (header `cookie_id`) when the last
//! members page of an audience has arrived, and `DIR/<audience
//! id>.v<version>.changes` (`+id` / `-id` lines) when the last changes page
//! of a refresh has.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use onboard_protocol::webhook::{self, SignedHeaders, SigningSecret};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Largest request body accepted.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// The events log in the output directory.
pub const EVENTS_FILE: &str = "events.ndjson";

/// Why the receiver could not start.
#[derive(Debug, Error)]
pub enum ReceiverError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Bad TLS material or secrets.
    #[error("{0}")]
    Setup(String),
}

/// What the receiver needs.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// Secrets that may have signed a request (one, or two during a rotation).
    pub secrets: Vec<SigningSecret>,
    /// Where events and audiences are written.
    pub out_dir: PathBuf,
    /// Allowed distance between a request's timestamp and now, in seconds.
    pub tolerance_secs: u64,
}

/// Read signing secrets from a file (one `whsec_…` a line), which must be a
/// regular file of the user's, mode 0600.
pub fn read_secrets(path: &Path) -> Result<Vec<SigningSecret>, ReceiverError> {
    let text =
        crate::secret_file::read_key_file(path).map_err(|e| ReceiverError::Setup(e.to_string()))?;
    let secrets = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            SigningSecret::parse(l).map_err(|e| {
                ReceiverError::Setup(format!("{} line {}: {e}", path.display(), i + 1))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if secrets.is_empty() {
        return Err(ReceiverError::Setup(format!(
            "{}: no secret",
            path.display()
        )));
    }
    Ok(secrets)
}

/// A rustls server configuration from a PEM chain and key (the key a
/// regular file of the user's, mode 0600).
pub fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ReceiverError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ReceiverError::File {
            path: path.to_owned(),
            source,
        })
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReceiverError::Setup(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ReceiverError::Setup(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    let key_pem =
        crate::secret_file::read_key_file(key).map_err(|e| ReceiverError::Setup(e.to_string()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| ReceiverError::Setup(format!("{}: {e}", key.display())))?
        .ok_or_else(|| ReceiverError::Setup(format!("{}: no private key", key.display())))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
        .map_err(|e| ReceiverError::Setup(format!("TLS: {e}")))
}

/// What the receiver keeps between requests.
#[derive(Default)]
struct State {
    /// Message IDs processed.
    seen: HashSet<String>,
    /// Members pages received per audience: page → cookie IDs.
    pages: HashMap<String, BTreeMap<u32, Vec<String>>>,
}

struct Shared {
    options: ReceiverOptions,
    state: Mutex<State>,
}

/// A running receiver.
pub struct ReceiverHandle {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReceiverHandle {
    /// Stop and wait for the server thread.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        drop(self.handle.stop(true));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ReceiverHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shut();
        }
    }
}

/// Serve on `listener` on a thread of its own; returns once it accepts.
pub fn start(
    options: ReceiverOptions,
    listener: std::net::TcpListener,
    tls: rustls::ServerConfig,
) -> Result<ReceiverHandle, ReceiverError> {
    std::fs::create_dir_all(&options.out_dir).map_err(|source| ReceiverError::File {
        path: options.out_dir.clone(),
        source,
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ReceiverError::Setup(format!("listener: {e}")))?;
    let shared = web::Data::new(Shared {
        options,
        state: Mutex::new(State::default()),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("onboard-receiver".into())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(shared.clone())
                        .app_data(web::PayloadConfig::new(MAX_BODY))
                        .default_service(web::to(receive))
                })
                .workers(2)
                .disable_signals()
                .listen_rustls_0_23(listener, tls);
                match server {
                    Ok(s) => {
                        let s = s.run();
                        let _ = tx.send(Ok(s.handle()));
                        let _ = s.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| ReceiverError::Setup(format!("thread: {e}")))?;
    let handle = rx
        .recv()
        .map_err(|_| ReceiverError::Setup("the receiver thread ended".into()))?
        .map_err(|e| ReceiverError::Setup(format!("listen: {e}")))?;
    Ok(ReceiverHandle {
        addr,
        handle,
        thread: Some(thread),
    })
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn refuse(status: actix_web::http::StatusCode, text: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body(text)
}

async fn receive(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    use actix_web::http::StatusCode;
    let headers = SignedHeaders {
        id: header(&req, webhook::HEADER_ID),
        timestamp: header(&req, webhook::HEADER_TIMESTAMP),
        signature: header(&req, webhook::HEADER_SIGNATURE),
    };
    let opts = &shared.options;
    let id = match webhook::verify(
        &opts.secrets,
        headers,
        &body,
        unix_now(),
        opts.tolerance_secs,
    ) {
        Ok(id) => id.to_owned(),
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, format!("{e}\n")),
    };
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    if state.seen.contains(&id) {
        return HttpResponse::Ok().body("duplicate\n");
    }
    match process(&opts.out_dir, &mut state, &body) {
        Ok(()) => {
            state.seen.insert(id);
            HttpResponse::Ok().body("ok\n")
        }
        Err(Bad::Request(text)) => refuse(StatusCode::BAD_REQUEST, format!("{text}\n")),
        Err(Bad::Io(e)) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write: {e}\n"),
        ),
    }
}

enum Bad {
    Request(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Bad {
    fn from(e: std::io::Error) -> Self {
        Bad::Io(e)
    }
}

/// An audience ID safe as a file name.
fn audience_file_name(id: &str) -> Result<&str, Bad> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(id)
        .ok_or_else(|| Bad::Request("data.audience_id is not a plain ID".into()))
}

fn process(out: &Path, state: &mut State, body: &[u8]) -> Result<(), Bad> {
    let text =
        std::str::from_utf8(body).map_err(|_| Bad::Request("the body is not UTF-8".into()))?;
    let mut lines = text.lines();
    let head_line = lines.next().unwrap_or_default();
    let head: serde_json::Value = serde_json::from_str(head_line)
        .map_err(|_| Bad::Request("the first line is not a JSON event".into()))?;
    let event = head["type"].as_str().unwrap_or_default();
    let data = &head["data"];
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join(EVENTS_FILE))?;
    writeln!(log, "{head_line}")?;
    let parse_line: fn(&str) -> Option<String> = match event {
        "audience.members" => member_line,
        "audience.changes" => change_line,
        _ => return Ok(()),
    };
    let audience = audience_file_name(data["audience_id"].as_str().unwrap_or_default())?.to_owned();
    let (file, header) = match event {
        "audience.changes" => {
            let version = data["version"]
                .as_u64()
                .ok_or_else(|| Bad::Request("data.version is not a version".into()))?;
            (format!("{audience}.v{version}.changes"), None)
        }
        _ => (format!("{audience}.csv"), Some("cookie_id")),
    };
    let number = |field: &str| {
        data[field]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| Bad::Request(format!("data.{field} is not a page number")))
    };
    let (page, pages) = (number("page")?, number("pages")?);
    let cookies = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            parse_line(l).ok_or_else(|| Bad::Request(format!("a line of {event} is malformed")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let received = state.pages.entry(file.clone()).or_default();
    received.insert(page, cookies);
    if received.len() as u32 >= pages && (1..=pages).all(|p| received.contains_key(&p)) {
        let received = state.pages.remove(&file).unwrap_or_default();
        write_whole(out, &file, header, received.values().flatten())?;
    }
    Ok(())
}

/// A members line's cookie ID (`{"cookie":…}`).
fn member_line(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["cookie"].as_str().map(str::to_owned)
}

/// A changes line (`{"op":"add"|"remove","cookie_id":…}`) as `+id` / `-id`.
fn change_line(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let sign = match v["op"].as_str()? {
        "add" => '+',
        "remove" => '-',
        _ => return None,
    };
    Some(format!("{sign}{}", v["cookie_id"].as_str()?))
}

/// Write `DIR/<file>` whole (after `header`, if any): to a temporary name,
/// then renamed.
fn write_whole<'a>(
    out: &Path,
    file: &str,
    header: Option<&str>,
    lines: impl Iterator<Item = &'a String>,
) -> std::io::Result<()> {
    let tmp = out.join(format!(".{file}.part"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    if let Some(h) = header {
        writeln!(w, "{h}")?;
    }
    for l in lines {
        writeln!(w, "{l}")?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, out.join(file))
}
