//! Operator operations: principals and keys, graph import (normalised and
//! hashed locally, only digests sent), opt-outs, erasure, audit, stats.

use crate::api::{segment, ApiClient, Body};
use crate::error::ClientError;
use crate::input::csv::{field, CsvReader};
use crate::matching::RowIssue;
use crate::progress::{NoProgress, ProgressSink};
use onboard_protocol::wire::{
    DigestBatch, DigestEntry, MAX_DIGESTS_PER_BATCH, MAX_PERSON_ID_BYTES,
};
use onboard_protocol::{normalize, IdKind, Region};
use rayon::prelude::*;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

/// Digests per graph-import or opt-out frame.
pub const DIGEST_BATCH_SIZE: usize = MAX_DIGESTS_PER_BATCH;
/// Largest digest frame sent, in bytes (the server's default limit is 8 MiB).
pub const DIGEST_FRAME_BYTES: usize = 4 << 20;
/// Cookies per JSON batch.
pub const COOKIE_BATCH_SIZE: usize = 50_000;
/// Digest frames in flight at once.
const SENDERS: usize = 2;
/// Person IDs per removals batch.
pub const REMOVAL_BATCH_SIZE: usize = 50_000;

/// A principal's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The operator.
    Admin,
    /// A CRM owner running jobs.
    Advertiser,
    /// A DMP/DSP pulling audiences.
    Destination,
}

impl Role {
    /// `admin`, `advertiser` or `destination`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Advertiser => "advertiser",
            Self::Destination => "destination",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "admin" => Ok(Self::Admin),
            "advertiser" => Ok(Self::Advertiser),
            "destination" => Ok(Self::Destination),
            _ => Err("expected admin, advertiser or destination".into()),
        }
    }
}

/// A new principal and its first API key (shown this once).
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedPrincipal {
    /// Name.
    pub name: String,
    /// Role.
    #[serde(default)]
    pub role: String,
    /// Key ID (for revocation).
    #[serde(default)]
    pub key_id: String,
    /// The API key itself.
    pub api_key: String,
}

impl fmt::Debug for CreatedPrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedPrincipal")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Create a principal (admin key needed).
pub fn create_principal(
    api: &ApiClient,
    name: &str,
    role: Role,
) -> Result<CreatedPrincipal, ClientError> {
    create_principal_with_webhook(api, name, role, None)
}

/// Create a principal, with a webhook URL for destinations.
pub fn create_principal_with_webhook(
    api: &ApiClient,
    name: &str,
    role: Role,
    webhook_url: Option<&str>,
) -> Result<CreatedPrincipal, ClientError> {
    let mut created: CreatedPrincipal = api.call_json(
        Method::POST,
        "/v1/admin/principals",
        &Body::json(&serde_json::json!({ "name": name, "role": role, "webhook_url": webhook_url })),
    )?;
    if created.role.is_empty() {
        created.role = role.to_string();
    }
    Ok(created)
}

/// Create an extra key for a principal (rotation).
pub fn create_key(api: &ApiClient, name: &str) -> Result<CreatedPrincipal, ClientError> {
    api.call_json(
        Method::POST,
        &format!("/v1/admin/principals/{}/keys", segment(name)),
        &Body::json(&serde_json::json!({})),
    )
}

/// Revoke one key by ID.
pub fn revoke_key(api: &ApiClient, key_id: &str) -> Result<serde_json::Value, ClientError> {
    api.call_json(
        Method::POST,
        &format!("/v1/admin/keys/{}/revoke", segment(key_id)),
        &Body::json(&serde_json::json!({})),
    )
}

/// Revoke every key of a principal; returns how many were revoked.
pub fn revoke_principal(api: &ApiClient, name: &str) -> Result<u64, ClientError> {
    let v: serde_json::Value = api.call_json(
        Method::POST,
        &format!("/v1/admin/principals/{}/revoke", segment(name)),
        &Body::json(&serde_json::json!({})),
    )?;
    Ok(v.get("revoked_keys").and_then(|n| n.as_u64()).unwrap_or(0))
}

/// One key of a principal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Key ID.
    pub key_id: String,
    /// Creation time.
    #[serde(default)]
    pub created: serde_json::Value,
    /// Revoked?
    #[serde(default)]
    pub revoked: serde_json::Value,
}

/// A principal as listed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrincipalInfo {
    /// Name.
    pub name: String,
    /// Role.
    #[serde(default)]
    pub role: String,
    /// Creation time.
    #[serde(default)]
    pub created: serde_json::Value,
    /// Webhook of a destination.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Keys.
    #[serde(default)]
    pub keys: Vec<KeyInfo>,
}

/// List principals.
pub fn list_principals(api: &ApiClient) -> Result<Vec<PrincipalInfo>, ClientError> {
    #[derive(Deserialize)]
    struct List {
        principals: Vec<PrincipalInfo>,
    }
    Ok(api
        .get_json::<List>("/v1/admin/principals", &[])?
        .principals)
}

/// What a graph import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportSummary {
    /// The import.
    pub import_id: String,
    /// The new graph version.
    pub version: u64,
    /// Persons in the new version.
    pub persons: u64,
    /// Identifiers per kind in the new version.
    pub identifiers: BTreeMap<String, u64>,
    /// Cookies per destination in the new version.
    pub cookies: BTreeMap<String, u64>,
    /// Identifier rows read locally.
    pub identifier_rows: u64,
    /// Identifier rows sent.
    pub identifiers_sent: u64,
    /// Identifier batches sent.
    pub identifier_batches: u32,
    /// Invalid identifier rows, by reason, skipped.
    pub invalid: BTreeMap<String, RowIssue>,
    /// Cookie rows sent.
    pub cookies_sent: u64,
    /// Cookie batches sent.
    pub cookie_batches: u32,
    /// Invalid cookie rows, by reason, skipped.
    pub invalid_cookies: BTreeMap<String, RowIssue>,
    /// Rows the server dropped because their person or identifier is erased.
    #[serde(default)]
    pub skipped_erased: u64,
    /// A delta (built from the version current when it started)?
    #[serde(default)]
    pub delta: bool,
    /// Persons to remove sent (a delta).
    #[serde(default)]
    pub removals_sent: u64,
    /// Removal batches sent.
    #[serde(default)]
    pub removal_batches: u32,
    /// Invalid removal rows, by reason, skipped.
    #[serde(default)]
    pub invalid_removals: BTreeMap<String, RowIssue>,
    /// Rows (identifiers and cookies) the new version took from this import.
    #[serde(default)]
    pub added: u64,
    /// Rows of the base version a delta removed.
    #[serde(default)]
    pub removed: u64,
}

#[derive(Deserialize)]
struct CommitAnswer {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    persons: u64,
    #[serde(default)]
    identifiers: BTreeMap<String, u64>,
    #[serde(default)]
    cookies: BTreeMap<String, u64>,
    #[serde(default)]
    skipped_erased: u64,
    #[serde(default)]
    added: u64,
    #[serde(default)]
    removed: u64,
}

/// The files of a graph import.
#[derive(Debug, Clone, Copy, Default)]
pub struct GraphFiles<'a> {
    /// `person_id,kind,value` rows (required for a full import).
    pub identifiers: Option<&'a Path>,
    /// `person_id,destination,cookie_id` rows.
    pub cookies: Option<&'a Path>,
    /// `person_id` rows: persons a delta removes (a delta only).
    pub remove_persons: Option<&'a Path>,
}

/// Import a graph version: `person_id,kind,value` rows normalised and
/// hashed locally (only digests sent) while `person_id,destination,cookie_id`
/// rows are sent beside them, then commit.
pub fn import_graph(
    api: &ApiClient,
    identifiers_csv: &Path,
    cookies_csv: Option<&Path>,
    region: Region,
    show_progress: bool,
) -> Result<ImportSummary, ClientError> {
    let sink = crate::progress::Bars::new_sink(show_progress);
    let files = GraphFiles {
        identifiers: Some(identifiers_csv),
        cookies: cookies_csv,
        remove_persons: None,
    };
    import_graph_with(api, files, false, region, sink.as_ref())
}

/// Import a delta: a new version made of the current one, minus the rows of
/// the persons in `files.remove_persons`, plus the rows of the other files.
pub fn import_delta(
    api: &ApiClient,
    files: GraphFiles<'_>,
    region: Region,
    show_progress: bool,
) -> Result<ImportSummary, ClientError> {
    let sink = crate::progress::Bars::new_sink(show_progress);
    import_graph_with(api, files, true, region, sink.as_ref())
}

/// A CSV file and the positions of the named columns.
fn open_columns<const N: usize>(
    path: &Path,
    names: [&str; N],
) -> Result<(CsvReader, [usize; N]), ClientError> {
    let r = CsvReader::open(path)?;
    let mut cols = [0; N];
    for (c, name) in cols.iter_mut().zip(names) {
        *c = r.column(name)?;
    }
    Ok((r, cols))
}

/// [`import_graph`] or [`import_delta`] reporting progress to `progress`.
pub fn import_graph_with(
    api: &ApiClient,
    files: GraphFiles<'_>,
    delta: bool,
    region: Region,
    progress: &dyn ProgressSink,
) -> Result<ImportSummary, ClientError> {
    if !delta && files.remove_persons.is_some() {
        return Err(ClientError::Usage("--remove-persons needs --delta".into()));
    }
    if !delta && files.identifiers.is_none() {
        return Err(ClientError::Usage(
            "a full import needs --identifiers".into(),
        ));
    }
    // Open every file first: a missing file fails before anything is sent.
    let ids = files
        .identifiers
        .map(|p| open_columns(p, ["person_id", "kind", "value"]))
        .transpose()?;
    let cookies = files
        .cookies
        .map(|p| open_columns(p, ["person_id", "destination", "cookie_id"]))
        .transpose()?;
    let removals = files
        .remove_persons
        .map(|p| open_columns(p, ["person_id"]))
        .transpose()?;
    #[derive(Deserialize)]
    struct Created {
        import_id: String,
    }
    let created: Created = api.call_json(
        Method::POST,
        "/v1/admin/graph/imports",
        &Body::json(&serde_json::json!({"mode": if delta { "delta" } else { "full" }})),
    )?;
    let base = format!("/v1/admin/graph/imports/{}", segment(&created.import_id));
    let mut summary = ImportSummary {
        import_id: created.import_id.clone(),
        ..ImportSummary::default()
    };
    if let Some((mut reader, [col])) = removals {
        progress.begin("removals", 0);
        let r = send_removals(api, &base, &mut reader, col, progress, &mut summary);
        progress.end("removals");
        r?;
    }
    // Identifiers and cookies side by side: the server seals cookies while
    // it computes points, and neither waits for the other's network.
    let mut cookie_summary = ImportSummary::default();
    std::thread::scope(|s| -> Result<(), ClientError> {
        let cookies_sent = cookies.map(|(mut reader, cols)| {
            let cookie_summary = &mut cookie_summary;
            let base = &base;
            s.spawn(move || {
                progress.begin("cookies", 0);
                let r = send_cookies(api, base, &mut reader, cols, progress, cookie_summary);
                progress.end("cookies");
                r
            })
        });
        let ids_sent = match ids {
            Some((mut reader, cols)) => {
                progress.begin("identifiers", 0);
                let r = send_digests(
                    &mut reader,
                    cols,
                    true,
                    region,
                    (progress, "identifiers"),
                    &mut summary,
                    |batch_no, bytes| {
                        let _: serde_json::Value = api.call_json(
                            Method::PUT,
                            &format!("{base}/identifiers/{batch_no}"),
                            &Body::Frame(bytes),
                        )?;
                        Ok(())
                    },
                );
                progress.end("identifiers");
                r
            }
            None => Ok(()),
        };
        let cookies_sent = match cookies_sent {
            Some(h) => h
                .join()
                .map_err(|_| ClientError::Protocol("the cookies sender panicked".into()))?,
            None => Ok(()),
        };
        ids_sent.and(cookies_sent)
    })?;
    summary.cookies_sent = cookie_summary.cookies_sent;
    summary.cookie_batches = cookie_summary.cookie_batches;
    summary.invalid_cookies = cookie_summary.invalid_cookies;

    let commit: CommitAnswer = api.call_json(
        Method::POST,
        &format!("{base}/commit"),
        &Body::json(&serde_json::json!({
            "identifier_batches": summary.identifier_batches,
            "cookie_batches": summary.cookie_batches,
            "removal_batches": summary.removal_batches,
        })),
    )?;
    summary.delta = delta;
    summary.version = commit.version;
    summary.persons = commit.persons;
    summary.identifiers = commit.identifiers;
    summary.cookies = commit.cookies;
    summary.added = commit.added;
    summary.removed = commit.removed;
    summary.skipped_erased = commit.skipped_erased;
    Ok(summary)
}

/// Send the `person_id` rows of a removals file in batches.
fn send_removals(
    api: &ApiClient,
    base: &str,
    reader: &mut CsvReader,
    person_col: usize,
    progress: &dyn ProgressSink,
    summary: &mut ImportSummary,
) -> Result<(), ClientError> {
    let mut batch_no = 0u32;
    loop {
        let chunk = reader.next_chunk(REMOVAL_BATCH_SIZE)?;
        if chunk.is_empty() {
            break;
        }
        let mut persons = Vec::with_capacity(chunk.len());
        for (line, rec) in &chunk {
            let parsed = field(rec, person_col)
                .map_err(|_| "not-utf8")
                .map(str::trim)
                .and_then(|p| match p {
                    "" => Err("empty-person-id"),
                    p if p.len() > MAX_PERSON_ID_BYTES || p.chars().any(char::is_control) => {
                        Err("bad-person-id")
                    }
                    p => Ok(p),
                });
            match parsed {
                Ok(p) => persons.push(p),
                Err(code) => note_issue(&mut summary.invalid_removals, code, *line),
            }
        }
        if persons.is_empty() {
            continue;
        }
        let n = persons.len();
        let _: serde_json::Value = api.call_json(
            Method::PUT,
            &format!("{base}/removals/{batch_no}"),
            &Body::json(&serde_json::json!({ "persons": persons })),
        )?;
        summary.removals_sent += n as u64;
        progress.advance("removals", n as u64);
        batch_no += 1;
    }
    summary.removal_batches = batch_no;
    Ok(())
}

/// Count a skipped row under its reason, keeping the first line numbers.
fn note_issue(issues: &mut BTreeMap<String, RowIssue>, code: &str, line: u64) {
    let issue = issues.entry(code.to_owned()).or_default();
    issue.count += 1;
    if issue.first_rows.len() < crate::matching::FIRST_ROWS_KEPT {
        issue.first_rows.push(line);
    }
}

/// One kept graph version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphVersion {
    /// Version number.
    pub version: u64,
    /// Is it the one matches use?
    pub current: bool,
    /// `full` or `delta`.
    pub mode: String,
    /// A delta's base version.
    #[serde(default)]
    pub base: Option<u64>,
    /// Who imported it.
    pub importer: String,
    /// Import opened (RFC 3339).
    pub created: String,
    /// Import committed (RFC 3339).
    #[serde(default)]
    pub committed: Option<String>,
    /// Persons.
    pub persons: u64,
    /// Identifiers per kind.
    pub identifiers: BTreeMap<String, u64>,
    /// Cookies per destination.
    pub cookies: BTreeMap<String, u64>,
    /// Rows the import brought in.
    pub added: u64,
    /// Rows of the base a delta removed.
    pub removed: u64,
}

/// The kept graph versions, newest first.
pub fn graph_versions(api: &ApiClient) -> Result<Vec<GraphVersion>, ClientError> {
    #[derive(Deserialize)]
    struct List {
        versions: Vec<GraphVersion>,
    }
    Ok(api
        .get_json::<List>("/v1/admin/graph/versions", &[])?
        .versions)
}

/// Make a kept graph version current again; returns its persons.
pub fn activate_graph_version(api: &ApiClient, version: u64) -> Result<u64, ClientError> {
    let answer: CommitAnswer = api.call_json(
        Method::POST,
        &format!("/v1/admin/graph/versions/{version}/activate"),
        &Body::json(&serde_json::json!({})),
    )?;
    Ok(answer.persons)
}

/// Read `(person?, kind, value)` rows, normalise in parallel, send digest
/// frames through `send` while the next one is prepared.
#[allow(clippy::too_many_arguments)]
fn send_digests(
    reader: &mut CsvReader,
    cols: [usize; 3],
    with_person: bool,
    region: Region,
    (progress, phase): (&dyn ProgressSink, &str),
    summary: &mut ImportSummary,
    send: impl Fn(u32, Vec<u8>) -> Result<(), ClientError> + Sync,
) -> Result<(), ClientError> {
    let [person_col, kind_col, value_col] = cols;
    let (tx, rx) = mpsc::sync_channel::<(u32, usize, Vec<u8>)>(SENDERS);
    let rx = std::sync::Mutex::new(rx);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Several frames in flight: while the server stores one batch (one
        // core), it computes the points of the next (all cores).
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| {
                s.spawn(|| -> Result<u32, ClientError> {
                    let mut batches = 0;
                    let mut outcome = Ok(());
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((batch_no, n, bytes)) = next else {
                            break;
                        };
                        // After a failure, drain (so the producer never
                        // blocks) without sending.
                        if outcome.is_err() || failed.load(Ordering::SeqCst) {
                            continue;
                        }
                        outcome = send(batch_no, bytes);
                        if outcome.is_err() {
                            failed.store(true, Ordering::SeqCst);
                            continue;
                        }
                        batches = batches.max(batch_no + 1);
                        progress.advance(phase, n as u64);
                    }
                    outcome.map(|()| batches)
                })
            })
            .collect();
        let produced = (|| -> Result<(), ClientError> {
            let mut batch_no = 0u32;
            let mut chunk = Vec::new();
            loop {
                reader.refill_chunk(DIGEST_BATCH_SIZE, &mut chunk)?;
                if chunk.is_empty() {
                    return Ok(());
                }
                let results: Vec<(u64, Result<DigestEntry, &'static str>)> = chunk
                    .par_iter()
                    .map(|(line, rec)| {
                        let entry = (|| {
                            let person = if with_person {
                                let p = field(rec, person_col).map_err(|_| "not-utf8")?.trim();
                                if p.is_empty() {
                                    return Err("empty-person-id");
                                }
                                if p.len() > MAX_PERSON_ID_BYTES || p.chars().any(char::is_control)
                                {
                                    return Err("bad-person-id");
                                }
                                p.to_owned()
                            } else {
                                String::new()
                            };
                            let kind: IdKind = field(rec, kind_col)
                                .map_err(|_| "not-utf8")?
                                .parse()
                                .map_err(|_| "unknown-kind")?;
                            let value = field(rec, value_col).map_err(|_| "not-utf8")?;
                            let n = normalize(kind, value, region).map_err(|e| e.code())?;
                            Ok(DigestEntry {
                                person,
                                kind: n.kind,
                                digest: n.digest,
                            })
                        })();
                        (*line, entry)
                    })
                    .collect();
                summary.identifier_rows += results.len() as u64;
                let mut entries = Vec::with_capacity(results.len());
                for (line, r) in results {
                    match r {
                        Ok(e) => entries.push(e),
                        Err(code) => note_issue(&mut summary.invalid, code, line),
                    }
                }
                // Split by encoded size too: long person IDs must not push a
                // frame over the server's body limit.
                let mut rest = entries.into_iter().peekable();
                while rest.peek().is_some() {
                    let mut size = 0;
                    let mut part = Vec::new();
                    while let Some(e) = rest.next_if(|e| {
                        part.is_empty() || size + 34 + e.person.len() <= DIGEST_FRAME_BYTES
                    }) {
                        size += 34 + e.person.len();
                        part.push(e);
                    }
                    let n = part.len();
                    summary.identifiers_sent += n as u64;
                    let bytes = DigestBatch {
                        batch_no,
                        entries: part,
                    }
                    .encode()
                    .map_err(|e| {
                        ClientError::Protocol(format!("building digest batch {batch_no}: {e}"))
                    })?;
                    if failed.load(Ordering::SeqCst) || tx.send((batch_no, n, bytes)).is_err() {
                        return Ok(());
                    }
                    batch_no += 1;
                }
            }
        })();
        drop(tx);
        let mut batches = 0;
        for sender in senders {
            let sent = sender
                .join()
                .map_err(|_| ClientError::Protocol("a batch sender panicked".into()))??;
            batches = batches.max(sent);
        }
        produced?;
        summary.identifier_batches = batches;
        Ok(())
    })
}

fn send_cookies(
    api: &ApiClient,
    base: &str,
    reader: &mut CsvReader,
    [person_col, dest_col, cookie_col]: [usize; 3],
    progress: &dyn ProgressSink,
    summary: &mut ImportSummary,
) -> Result<(), ClientError> {
    #[derive(Serialize)]
    struct Cookie<'a> {
        person: &'a str,
        destination: &'a str,
        cookie: &'a str,
    }
    /// The request body, serialised straight from the borrowed rows.
    #[derive(Serialize)]
    struct Batch<'a> {
        cookies: &'a [Cookie<'a>],
    }
    let mut batch_no = 0u32;
    let mut chunk = Vec::new();
    loop {
        reader.refill_chunk(COOKIE_BATCH_SIZE, &mut chunk)?;
        if chunk.is_empty() {
            break;
        }
        let mut cookies = Vec::with_capacity(chunk.len());
        for (line, rec) in &chunk {
            let parsed = (|| {
                let p = field(rec, person_col).map_err(|_| "not-utf8")?.trim();
                let d = field(rec, dest_col).map_err(|_| "not-utf8")?.trim();
                let c = field(rec, cookie_col).map_err(|_| "not-utf8")?.trim();
                if p.is_empty() || d.is_empty() || c.is_empty() {
                    return Err("empty-field");
                }
                if p.len() > MAX_PERSON_ID_BYTES
                    || [p, d, c].iter().any(|t| t.chars().any(char::is_control))
                {
                    return Err("bad-field");
                }
                Ok(Cookie {
                    person: p,
                    destination: d,
                    cookie: c,
                })
            })();
            match parsed {
                Ok(c) => cookies.push(c),
                Err(code) => note_issue(&mut summary.invalid_cookies, code, *line),
            }
        }
        if cookies.is_empty() {
            continue;
        }
        let n = cookies.len();
        let _: serde_json::Value = api.call_json(
            Method::PUT,
            &format!("{base}/cookies/{batch_no}"),
            &Body::json(&Batch { cookies: &cookies }),
        )?;
        summary.cookies_sent += n as u64;
        progress.advance("cookies", n as u64);
        batch_no += 1;
    }
    summary.cookie_batches = batch_no;
    Ok(())
}

/// What an opt-out upload did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OptoutSummary {
    /// Rows read.
    pub rows: u64,
    /// Digests accepted by the server.
    pub accepted: u64,
    /// Persons suppressed.
    pub persons_suppressed: u64,
    /// Invalid rows by reason, skipped.
    pub invalid: BTreeMap<String, RowIssue>,
}

/// Upload an opt-out list (`kind,value`): digests only, no person IDs.
pub fn optout(api: &ApiClient, file: &Path, region: Region) -> Result<OptoutSummary, ClientError> {
    let mut reader = CsvReader::open(file)?;
    let cols = [0, reader.column("kind")?, reader.column("value")?];
    let mut import = ImportSummary::default();
    let totals = std::sync::Mutex::new((0u64, 0u64));
    send_digests(
        &mut reader,
        cols,
        false,
        region,
        (&NoProgress, "opt-outs"),
        &mut import,
        |_batch_no, bytes| {
            let v: serde_json::Value =
                api.call_json(Method::POST, "/v1/admin/optouts", &Body::Frame(bytes))?;
            let mut t = totals.lock().expect("totals lock");
            t.0 += v.get("accepted").and_then(|n| n.as_u64()).unwrap_or(0);
            t.1 += v
                .get("persons_suppressed")
                .and_then(|n| n.as_u64())
                .unwrap_or(0);
            Ok(())
        },
    )?;
    let (accepted, persons_suppressed) = totals.into_inner().expect("totals lock");
    Ok(OptoutSummary {
        rows: import.identifier_rows,
        accepted,
        persons_suppressed,
        invalid: import.invalid,
    })
}

/// What an erasure did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EraseSummary {
    /// The person.
    pub person: String,
    /// Erased?
    #[serde(default)]
    pub erased: bool,
    /// Audiences from which the person was removed.
    #[serde(default)]
    pub audiences_updated: u64,
}

/// Erase a person from the graph and from audiences not yet pulled.
pub fn erase(api: &ApiClient, person: &str) -> Result<EraseSummary, ClientError> {
    api.call_json(
        Method::POST,
        "/v1/admin/erase",
        &Body::json(&serde_json::json!({ "person": person })),
    )
}

/// What lifting an erasure did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiftSummary {
    /// The person.
    pub person: String,
    /// Lifted?
    #[serde(default)]
    pub lifted: bool,
}

/// Lift a person's erasure tombstone (a `not-found` error if it has none),
/// so a later import may bring the person back.
pub fn lift_erasure(api: &ApiClient, person: &str) -> Result<LiftSummary, ClientError> {
    api.call_json(
        Method::POST,
        "/v1/admin/erase/lift",
        &Body::json(&serde_json::json!({ "person": person })),
    )
}

/// One audit-log entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub seq: u64,
    /// When.
    #[serde(default)]
    pub time: serde_json::Value,
    /// Who.
    #[serde(default)]
    pub actor: String,
    /// What.
    #[serde(default)]
    pub action: String,
    /// On what.
    #[serde(default)]
    pub object: serde_json::Value,
    /// Outcome.
    #[serde(default)]
    pub outcome: serde_json::Value,
    /// Hash of the previous entry.
    #[serde(default)]
    pub prev_hash: String,
    /// This entry's hash.
    #[serde(default)]
    pub hash: String,
}

/// Page size when reading the audit log.
const AUDIT_PAGE: u64 = 1000;

/// The whole audit log, following `after=SEQ` pages.
pub fn audit(api: &ApiClient) -> Result<Vec<AuditEntry>, ClientError> {
    #[derive(Deserialize)]
    struct Page {
        entries: Vec<AuditEntry>,
    }
    let mut out: Vec<AuditEntry> = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let limit = AUDIT_PAGE.to_string();
        let after_s = after.map(|a| a.to_string());
        let mut query = vec![("limit", limit.as_str())];
        if let Some(a) = after_s.as_deref() {
            query.push(("after", a));
        }
        let page: Page = api.get_json("/v1/admin/audit", &query)?;
        let Some(last) = page.entries.last().map(|e| e.seq) else {
            break;
        };
        if after.is_some_and(|a| last <= a) {
            break; // A server ignoring `after`: stop rather than loop.
        }
        let short = (page.entries.len() as u64) < AUDIT_PAGE;
        out.extend(page.entries);
        if short {
            break;
        }
        after = Some(last);
    }
    Ok(out)
}

/// Server statistics, as returned.
pub fn stats(api: &ApiClient) -> Result<serde_json::Value, ClientError> {
    api.get_json("/v1/admin/stats", &[])
}
