//! Storage: narrow capability traits joined by [`Repo`]. Records are plain
//! serde structs; binary values (blinded points) are fixed-size arrays. Two
//! backends implement every trait: sled in [`sled`] (the embedded default,
//! the only code that knows sled) and PostgreSQL in [`postgres`] (several
//! servers on one database; the only code that knows tokio-postgres).
//!
//! Invariant: nothing here ever receives a raw identifier or a plain digest;
//! the graph holds only `b·P(y)` (compressed, 32 bytes).

pub mod blobs;
#[cfg(test)]
pub(crate) mod console_tests;
pub mod postgres;
pub mod sled;
mod sled_codec;
mod sled_console;
mod sled_erasure;
mod sled_graph;
mod sled_index;
mod sled_outbox;
mod sled_rotation;

use onboard_protocol::{MatchKind, PointBytes};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The on-disk schema this build reads and writes.
/// Version 2: bulk values in blob files, the graph as sealed chunks keyed
/// by person pseudonyms (version 1 held them in sled, by person number).
pub const SCHEMA_VERSION: u32 = 2;

/// A storage failure (I/O, corruption, schema mismatch).
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(String),
    /// A record failed to decode.
    #[error("corrupt record in {0}")]
    Corrupt(&'static str),
    /// A blob file failed or holds bytes that do not match their pointer.
    #[error(transparent)]
    Blob(#[from] blobs::BlobError),
    /// The database cannot be reached (connection lost, server down or
    /// restarting); the call wrote nothing and may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database was written by a different schema.
    #[error("database schema version {found}, this build needs {expected}")]
    Schema {
        /// Found on disk.
        found: u32,
        /// This build's.
        expected: u32,
    },
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// "Already exists" is an expected outcome, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyExists;

/// A cookie ID encrypted at rest: a keyed tag (for deduplication and
/// ordering) and the sealed bytes. Storage never sees the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCookie {
    /// `HMAC(identity key, cookie)`, truncated.
    pub tag: [u8; 16],
    /// `nonce || ciphertext || mac`.
    pub sealed: Vec<u8>,
}

/// What an erasure removed, to keep the graph's counts right.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasedCounts {
    /// The person's ID mapping existed.
    pub person: bool,
    /// Identifiers removed per kind.
    pub identifiers: BTreeMap<String, u64>,
    /// Cookies removed per destination.
    pub cookies: BTreeMap<String, u64>,
}

/// A principal's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The onboarder's operator.
    Admin,
    /// A CRM owner.
    Advertiser,
    /// A DMP/DSP pulling audiences.
    Destination,
}

impl Role {
    /// `admin`, `advertiser` or `destination`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Advertiser => "advertiser",
            Role::Destination => "destination",
        }
    }
}

/// A named principal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Principal {
    /// Unique name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// RFC 3339 creation time.
    pub created: String,
    /// Optional notification URL.
    pub webhook_url: Option<String>,
}

/// An API key: only its HMAC is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public key ID.
    pub key_id: String,
    /// Owner.
    pub principal: String,
    /// `HMAC-SHA256(pepper, key)`.
    pub hash: [u8; 32],
    /// RFC 3339 creation time.
    pub created: String,
    /// Revoked keys are refused.
    pub revoked: bool,
    /// Public fingerprint of the pepper `hash` is under (empty: the pepper
    /// of a data dir before any pepper rotation), so a pepper rotation can
    /// count the keys still hashed under the old one.
    #[serde(default)]
    pub pepper: String,
}

/// Counts describing a graph version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GraphInfo {
    /// Version number.
    pub version: u64,
    /// Persons.
    pub persons: u64,
    /// Identifiers per kind.
    pub identifiers: BTreeMap<String, u64>,
    /// Cookies per destination.
    pub cookies: BTreeMap<String, u64>,
    /// Rows (identifiers and cookies) a delta brought in; every row for a
    /// full import.
    #[serde(default)]
    pub added: u64,
    /// Rows of the delta's base version dropped with removed persons.
    #[serde(default)]
    pub removed: u64,
}

/// How an import builds its version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// From the rows sent only.
    #[default]
    Full,
    /// From the current version (its base) plus the rows sent, minus the
    /// persons removed.
    Delta,
}

impl ImportMode {
    /// `full` or `delta`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Delta => "delta",
        }
    }
}

/// A graph import session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportRecord {
    /// Import ID.
    pub id: String,
    /// The version it writes.
    pub version: u64,
    /// open | committed | abandoned.
    pub status: String,
    /// Created.
    pub created: String,
    /// Running counts.
    pub info: GraphInfo,
    /// Next person number to allocate.
    pub next_person: u64,
    /// Unix seconds of the last batch, for abandonment.
    #[serde(default)]
    pub touched: u64,
    /// Rows dropped because their person or identifier is erased (a count only).
    #[serde(default)]
    pub skipped_erased: u64,
    /// Full or delta.
    #[serde(default)]
    pub mode: ImportMode,
    /// A delta's base: the version current when it was opened.
    #[serde(default)]
    pub base: Option<u64>,
    /// The principal who opened it.
    #[serde(default)]
    pub importer: String,
    /// When it was committed (RFC 3339).
    #[serde(default)]
    pub committed: Option<String>,
}

/// Per-kind size of a job's graph pass.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PassInfo {
    /// Pages.
    pub pages: u32,
    /// Points.
    pub points: u64,
}

/// A matching job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Job ID.
    pub id: String,
    /// Owner.
    pub advertiser: String,
    /// Destination name.
    pub destination: String,
    /// Kinds in the graph pass.
    pub kinds: Vec<String>,
    /// The advertiser key's fingerprint (hex).
    pub key_fingerprint: String,
    /// Graph version at creation.
    pub graph_version: u64,
    /// open | finished | failed.
    pub status: String,
    /// Created.
    pub created: String,
    /// Unix seconds of the last upload or page, for abandonment.
    pub touched: u64,
    /// Batches accepted.
    pub batches: u64,
    /// Records accepted.
    pub records: u64,
    /// Graph pass per kind.
    pub pass: BTreeMap<String, PassInfo>,
    /// The report, once finished.
    pub report: Option<serde_json::Value>,
    /// Segments become new audiences instead of refreshing live ones.
    #[serde(default)]
    pub new_audience: bool,
}

/// A released audience.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Audience {
    /// Audience ID.
    pub id: String,
    /// Segment label.
    pub segment: String,
    /// Advertiser.
    pub advertiser: String,
    /// Destination.
    pub destination: String,
    /// The job that made it.
    pub job_id: String,
    /// Cookie IDs (members), not persons: the count a destination could
    /// make itself from the list, so it reveals nothing about how many
    /// persons stand behind the cookies.
    pub size: u64,
    /// Created (RFC 3339).
    pub created: String,
    /// Expires (RFC 3339).
    pub expires: String,
    /// Expiry in Unix seconds.
    pub expires_unix: u64,
    /// Last page served.
    pub pulled: bool,
    /// 1 at release, one more at each refresh.
    #[serde(default = "first_version")]
    pub version: u64,
    /// When the current version was released by a refresh (RFC 3339).
    #[serde(default)]
    pub refreshed: Option<String>,
    /// The version the kept changes lead from (the previous one), if they
    /// are kept: `GET …/changes?since=` answers for it and for `version`.
    #[serde(default)]
    pub changes_from: Option<u64>,
    /// The record of the previous version (without its own `prior`), so a
    /// refresh whose finish is interrupted rolls back to it.
    #[serde(default)]
    pub prior: Option<Box<Audience>>,
}

fn first_version() -> u64 {
    1
}

/// Whether a change adds a member cookie or removes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// In the current version, not in the previous one.
    Add,
    /// In the previous version, not in the current one.
    Remove,
}

impl ChangeOp {
    /// The op's byte on disk.
    pub fn code(self) -> u8 {
        match self {
            ChangeOp::Add => b'+',
            ChangeOp::Remove => b'-',
        }
    }

    /// The op of a byte on disk.
    pub fn of_code(code: u8) -> Option<Self> {
        match code {
            b'+' => Some(ChangeOp::Add),
            b'-' => Some(ChangeOp::Remove),
            _ => None,
        }
    }
}

/// One member cookie added or removed by an audience's latest refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// The member's position ([`member_position`]), also the pull position.
    pub pos: Vec<u8>,
    /// Added or removed.
    pub op: ChangeOp,
    /// The sealed cookie ID.
    pub sealed: Vec<u8>,
}

/// A member cookie's position in its audience, the same on every backend:
/// `len | person | tag` (the person cut at 255 bytes), so members sort by
/// person and a position survives the removal of other members.
pub fn member_position(person: &str, tag: &[u8; 16]) -> Vec<u8> {
    let p = &person.as_bytes()[..person.len().min(255)];
    let mut pos = Vec::with_capacity(1 + p.len() + 16);
    pos.push(p.len() as u8);
    pos.extend_from_slice(p);
    pos.extend_from_slice(tag);
    pos
}

/// The person of a position made by [`member_position`] (`None` if it is not one).
pub fn position_person(pos: &[u8]) -> Option<&str> {
    let len = usize::from(*pos.first()?);
    (pos.len() == 1 + len + 16)
        .then(|| std::str::from_utf8(&pos[1..1 + len]).ok())
        .flatten()
}

/// One entry of the audit log, chained by keyed hashes (see `services::audit`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// Sequence number from 1.
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    /// Principal name (or `system`).
    pub actor: String,
    /// What was done.
    pub action: String,
    /// Object ID.
    pub object: String,
    /// ok | refused | failed.
    pub outcome: String,
    /// Previous entry's hash (hex), zeros for the first.
    pub prev_hash: String,
    /// HMAC-SHA256 under the audit key (kept outside the store) over
    /// prev_hash and the entry's canonical JSON (hex).
    pub hash: String,
}

/// How a destination wants its audiences pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookMode {
    /// Events only; the destination pulls the members.
    Notify,
    /// Events, and each released audience's members in NDJSON pages.
    Members,
}

/// A signing secret of an endpoint, sealed at rest (never stored in clear).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedWebhookSecret {
    /// `nonce || ciphertext || mac` of the secret's bytes.
    pub sealed: Vec<u8>,
    /// Unix seconds it was made.
    pub created: u64,
    /// Unix seconds after which it no longer signs (a rotated-out secret).
    pub expires: Option<u64>,
}

/// A destination's push endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// The destination (principal name).
    pub destination: String,
    /// Canonical `https://` URL.
    pub url: String,
    /// What is pushed.
    pub mode: WebhookMode,
    /// Signing secrets, newest first.
    pub secrets: Vec<SealedWebhookSecret>,
    /// Why deliveries stopped (`gone`: the endpoint answered 410), if they did.
    pub disabled: Option<String>,
    /// Unix seconds of creation.
    pub created: u64,
}

/// Where an outbox message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up (retries exhausted, endpoint gone or removed).
    Failed,
}

/// What a message carries: event data kept as is, or one page of an
/// audience's members, read from the audience when it is sent (so the
/// outbox never holds a cookie ID).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MessageData {
    /// The event's `data` object.
    Event(serde_json::Value),
    /// Page `page` (from 1) of `pages`: the members after position `after`
    /// up to and including position `last`.
    MembersPage {
        /// Page number, from 1.
        page: u32,
        /// Pages of the audience.
        pages: u32,
        /// Position the page starts after (none: the first page).
        after: Option<Vec<u8>>,
        /// The page's last position.
        last: Vec<u8>,
    },
    /// Page `page` (from 1) of `pages` of the changes that made `version`:
    /// those after position `after` up to and including position `last`.
    ChangesPage {
        /// The audience version the changes lead to.
        version: u64,
        /// Page number, from 1.
        page: u32,
        /// Pages of the changes.
        pages: u32,
        /// Position the page starts after (none: the first page).
        after: Option<Vec<u8>>,
        /// The page's last position.
        last: Vec<u8>,
    },
}

/// One message of the durable outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxMessage {
    /// `msg_…`: the `webhook-id`, the same on every attempt.
    pub id: String,
    /// Destination it goes to.
    pub destination: String,
    /// Order within the destination, assigned by storage at enqueue.
    pub seq: u64,
    /// `audience.released`, `audience.members`, `audience.refreshed`,
    /// `audience.changes`, `audience.expired`, `audience.withdrawn`.
    pub event: String,
    /// The audience it is about.
    pub audience_id: String,
    /// The payload's data.
    pub data: MessageData,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// HTTP status of the last answer, if one came.
    pub last_status: Option<u16>,
    /// Why the last attempt failed without an HTTP status (`timeout`, `connect`, …).
    pub last_error: Option<String>,
    /// Unix milliseconds of enqueueing.
    pub created_ms: u64,
    /// Unix milliseconds of the next attempt (pending messages).
    pub next_attempt_ms: u64,
    /// Unix milliseconds of the acknowledged attempt.
    pub delivered_ms: Option<u64>,
    /// Unix milliseconds it was delivered or failed (pruned a retention after).
    #[serde(default)]
    pub ended_ms: Option<u64>,
}

/// Schema version and durability.
pub trait MetaRepo {
    /// The stored schema version.
    fn schema_version(&self) -> StoreResult<Option<u32>>;
    /// Record the schema version.
    fn set_schema_version(&self, v: u32) -> StoreResult<()>;
    /// Flush to disk.
    fn flush(&self) -> StoreResult<()>;
}

/// Principals and API keys.
pub trait PrincipalRepo {
    /// Create a principal.
    fn create_principal(&self, p: &Principal) -> StoreResult<Result<(), AlreadyExists>>;
    /// One principal.
    fn principal(&self, name: &str) -> StoreResult<Option<Principal>>;
    /// All principals, by name.
    fn principals(&self) -> StoreResult<Vec<Principal>>;
    /// Add a key.
    fn insert_key(&self, k: &ApiKeyRecord) -> StoreResult<()>;
    /// The key with this HMAC.
    fn key_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ApiKeyRecord>>;
    /// One key.
    fn key(&self, key_id: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// All keys.
    fn keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
}

/// A person as storage knows it: a keyed pseudonym of the onboarder's person
/// ID (`HMAC(identity key, "person-key" || id)`, 16 bytes). The same ID gives the same
/// key in every graph version; the ID itself is never stored.
pub type PersonKey = [u8; 16];

/// One identifier of an import batch: kind, `b·P(y)`, owner.
pub type IdentifierRow = (MatchKind, PointBytes, PersonKey);

/// One cookie of an import batch: destination, owner, sealed cookie ID.
pub type CookieRow = (String, PersonKey, SealedCookie);

/// The blinded graph, versioned. An import stages each batch as a sorted
/// run; [`GraphRepo::seal_version`] merges the runs into the version's
/// ordered tables (first row wins on a repeated point or cookie) and counts
/// them; [`GraphRepo::commit_graph`] then makes the version current.
pub trait GraphRepo {
    /// The current version, if any import was committed.
    fn current_graph(&self) -> StoreResult<Option<GraphInfo>>;
    /// Allocate a new version number.
    fn allocate_version(&self) -> StoreResult<u64>;
    /// Save an import session.
    fn put_import(&self, rec: &ImportRecord) -> StoreResult<()>;
    /// Load an import session.
    fn import(&self, id: &str) -> StoreResult<Option<ImportRecord>>;
    /// All import sessions.
    fn imports(&self) -> StoreResult<Vec<ImportRecord>>;
    /// Content hash of an import batch (`part` is `i` or `c`).
    fn import_batch_hash(
        &self,
        import: &str,
        part: u8,
        batch_no: u32,
    ) -> StoreResult<Option<[u8; 32]>>;
    /// Record an import batch's content hash.
    fn set_import_batch_hash(
        &self,
        import: &str,
        part: u8,
        batch_no: u32,
        hash: [u8; 32],
    ) -> StoreResult<()>;
    /// Stage an identifiers batch of a version being imported (durable on return).
    fn put_identifier_run(
        &self,
        version: u64,
        batch_no: u32,
        rows: Vec<IdentifierRow>,
    ) -> StoreResult<()>;
    /// Stage a cookies batch of a version being imported (durable on return).
    fn put_cookie_run(&self, version: u64, batch_no: u32, rows: Vec<CookieRow>) -> StoreResult<()>;
    /// Stage persons a delta removes from its base (durable on return).
    fn put_removal_run(
        &self,
        version: u64,
        batch_no: u32,
        persons: Vec<PersonKey>,
    ) -> StoreResult<()>;
    /// Merge a version's staged runs into its tables and count them. Calling
    /// it again on a sealed version only recounts.
    fn seal_version(&self, version: u64) -> StoreResult<GraphInfo>;
    /// Seal a delta: the `base` version's rows, minus those of the staged
    /// removed persons, copied without curve work, merged with the staged
    /// runs (a point or cookie already in the base keeps the base's row);
    /// `added` and `removed` counted. Idempotent like
    /// [`GraphRepo::seal_version`]; the base is only read.
    fn seal_delta(&self, version: u64, base: u64) -> StoreResult<GraphInfo>;
    /// The person owning `b·P(y)`.
    fn point_owner(
        &self,
        version: u64,
        kind: MatchKind,
        point: &PointBytes,
    ) -> StoreResult<Option<PersonKey>>;
    /// Up to `limit` points of a kind in blinded-value order, after `after`.
    fn points_after(
        &self,
        version: u64,
        kind: MatchKind,
        after: Option<&PointBytes>,
        limit: usize,
    ) -> StoreResult<Vec<(PointBytes, PersonKey)>>;
    /// [`GraphRepo::points_after`] without the owners: the graph pass needs
    /// only the points, and a backend may read them from its index alone.
    fn bare_points_after(
        &self,
        version: u64,
        kind: MatchKind,
        after: Option<&PointBytes>,
        limit: usize,
    ) -> StoreResult<Vec<PointBytes>> {
        Ok(self
            .points_after(version, kind, after, limit)?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }
    /// The owners of sorted `points` of a kind (`None` for a point not in the
    /// graph), in one ordered pass.
    fn owners_of_sorted(
        &self,
        version: u64,
        kind: MatchKind,
        points: &[PointBytes],
    ) -> StoreResult<Vec<Option<PersonKey>>>;
    /// The sealed cookies at a destination of sorted, distinct `persons`, in one
    /// ordered pass; persons without a cookie there are left out.
    fn cookies_of_sorted(
        &self,
        version: u64,
        destination: &str,
        persons: &[PersonKey],
    ) -> StoreResult<Vec<(PersonKey, Vec<SealedCookie>)>>;
    /// Is any cookie stored for this destination in this version?
    fn has_destination(&self, version: u64, destination: &str) -> StoreResult<bool>;
    /// Mark a person suppressed (opt-out).
    fn suppress(&self, version: u64, person: &PersonKey) -> StoreResult<bool>;
    /// Every suppressed person of a version (one scan, for a whole join).
    fn suppressed_persons(&self, version: u64) -> StoreResult<Vec<PersonKey>>;
    /// Every `b·P(y)` of a person in a version: in its tables if sealed, in
    /// its staged batches if still importing.
    fn person_points(&self, version: u64, person: &PersonKey) -> StoreResult<Vec<PointBytes>>;
    /// Remove a person's points and cookies from a version, sealed or still
    /// importing, leaving no copy of them in the version's files (the counts
    /// are those removed from the sealed tables). Callers serialise it with
    /// the version's imports.
    fn erase_person(&self, version: u64, person: &PersonKey) -> StoreResult<ErasedCounts>;
    /// Make `info.version` current in one write.
    fn commit_graph(&self, info: &GraphInfo) -> StoreResult<Option<u64>>;
    /// Delete every record of a version.
    fn delete_version(&self, version: u64) -> StoreResult<()>;
}

/// The per-(advertiser, key) cache of `b·P(y)` ↔ `a·b·P(y)`.
pub trait CacheRepo {
    /// Is `b·P(y)` cached in this namespace?
    fn cache_contains(&self, ns: &[u8; 16], bpy: &PointBytes) -> StoreResult<bool>;
    /// Cache pairs `(b·P(y), a·b·P(y))` (one graph-pass page) as one run.
    /// Pairs whose `b·P(y)` is an erased point ([`ErasureRepo`]) are dropped,
    /// so a page returned after an erasure cannot cache the person again.
    fn cache_put(&self, ns: &[u8; 16], pairs: &[(PointBytes, PointBytes)]) -> StoreResult<()>;
    /// Remove every pair whose `b·P(y)` is one of `points` from every
    /// namespace, leaving no copy of the removed pairs in the cache's files;
    /// returns the pairs removed.
    fn cache_remove_points(&self, points: &[PointBytes]) -> StoreResult<u64>;
    /// Up to `limit` cached runs of the namespace, in order of their run key,
    /// after the run keyed `after` (from the start if `None`). A run is a
    /// `(key, pairs)`: pairs `(b·P(y), a·b·P(y))` sorted by `b·P(y)`, the key
    /// starting with the run's first `b·P(y)`. Runs may overlap (merge them).
    fn cache_runs_after(
        &self,
        ns: &[u8; 16],
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<CacheRun>>;
    /// The keys of every cached run of the namespace, in order.
    fn cache_run_keys(&self, ns: &[u8; 16]) -> StoreResult<Vec<Vec<u8>>>;
    /// One cached run's pairs (empty if the key is gone).
    fn cache_run(
        &self,
        ns: &[u8; 16],
        run_key: &[u8],
    ) -> StoreResult<Vec<(PointBytes, PointBytes)>>;
    /// Record that the namespace caches every point of a kind in a graph
    /// version (a job's whole graph pass came back).
    fn set_cache_complete(&self, ns: &[u8; 16], version: u64, kind: MatchKind) -> StoreResult<()>;
    /// Was [`CacheRepo::set_cache_complete`] recorded?
    fn cache_complete(&self, ns: &[u8; 16], version: u64, kind: MatchKind) -> StoreResult<bool>;
}

/// One cached run: its key and its `(b·P(y), a·b·P(y))` pairs, sorted.
pub type CacheRun = (Vec<u8>, Vec<(PointBytes, PointBytes)>);

/// Jobs and their transient data (graph pass, uploads).
pub trait JobRepo {
    /// Save a job.
    fn put_job(&self, job: &Job) -> StoreResult<()>;
    /// Load a job.
    fn job(&self, id: &str) -> StoreResult<Option<Job>>;
    /// An advertiser's jobs (by index: no scan of other advertisers').
    fn jobs_of(&self, advertiser: &str) -> StoreResult<Vec<Job>>;
    /// Up to `limit` jobs in `status` last touched at or before
    /// `before_unix`, oldest first (by index).
    fn jobs_touched_before(
        &self,
        status: &str,
        before_unix: u64,
        limit: usize,
    ) -> StoreResult<Vec<Job>>;
    /// How many jobs are in each status (index entries only).
    fn job_counts(&self) -> StoreResult<BTreeMap<String, u64>>;
    /// Forget a job record (its transient data must be gone already).
    fn delete_job(&self, id: &str) -> StoreResult<()>;
    /// Store consecutive graph-pass pages (each concatenated points) from
    /// `first_page` on, durable on return.
    fn put_pass_pages(
        &self,
        job: &str,
        kind: MatchKind,
        first_page: u32,
        pages: &[Vec<u8>],
    ) -> StoreResult<()>;
    /// Load a graph-pass page.
    fn pass_page(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<Option<Vec<u8>>>;
    /// Mark a page as returned.
    fn mark_page_done(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<()>;
    /// Was the page returned?
    fn page_done(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<bool>;
    /// Store a re-blinded upload batch (content hash and frame) and the job
    /// record counting it, atomically: a crash never leaves one without the other.
    fn put_upload(&self, job: &Job, batch_no: u32, hash: [u8; 32], frame: &[u8])
        -> StoreResult<()>;
    /// Content hash of an upload.
    fn upload_hash(&self, job: &str, batch_no: u32) -> StoreResult<Option<[u8; 32]>>;
    /// An upload's re-blinded frame.
    fn upload(&self, job: &str, batch_no: u32) -> StoreResult<Option<Vec<u8>>>;
    /// Batch numbers uploaded.
    fn upload_numbers(&self, job: &str) -> StoreResult<Vec<u32>>;
    /// Delete every upload, page and mark of a job.
    fn delete_job_data(&self, job: &str) -> StoreResult<()>;
    /// How many transient records a job still has (uploads, pages, marks).
    fn job_data_count(&self, job: &str) -> StoreResult<usize>;
}

/// Audiences and their members (person ID → cookies).
pub trait AudienceRepo {
    /// Save an audience with its members, atomically.
    fn create_audience(
        &self,
        a: &Audience,
        members: &[(String, &[SealedCookie])],
    ) -> StoreResult<()>;
    /// Save audience metadata.
    fn put_audience(&self, a: &Audience) -> StoreResult<()>;
    /// Load one.
    fn audience(&self, id: &str) -> StoreResult<Option<Audience>>;
    /// A destination's audiences (by index).
    fn audiences_for_destination(&self, destination: &str) -> StoreResult<Vec<Audience>>;
    /// The audiences an advertiser sent to a destination (by index).
    fn audiences_of(&self, advertiser: &str, destination: &str) -> StoreResult<Vec<Audience>>;
    /// Audiences whose last page has not been served (by index).
    fn unpulled_audiences(&self) -> StoreResult<Vec<Audience>>;
    /// Audiences expiring at or before `unix` (by index).
    fn audiences_expiring_by(&self, unix: u64) -> StoreResult<Vec<Audience>>;
    /// How many audiences expire after `now` (index entries only).
    fn live_audience_count(&self, now: u64) -> StoreResult<u64>;
    /// Member persons.
    fn audience_persons(&self, id: &str) -> StoreResult<Vec<String>>;
    /// Up to `limit` sealed cookies after an opaque position; returns (position, sealed).
    fn members_after(
        &self,
        id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Remove a person from the members; returns how many of its cookies
    /// were members (0 if it was not a member). In the kept changes (if
    /// the record keeps any: `changes_from`), the person's additions go and
    /// its members the latest refresh did not add become removals, in the
    /// same write: a destination holding them from the previous version
    /// learns they left.
    fn remove_member(&self, id: &str, person: &str) -> StoreResult<usize>;
    /// Delete an audience's members and changes, keeping its record.
    fn delete_members(&self, id: &str) -> StoreResult<()>;
    /// Delete an audience with its members and changes.
    fn delete_audience(&self, id: &str) -> StoreResult<()>;
    /// Replace an audience's record, its members (`(position, sealed)`,
    /// sorted by position) and its kept changes, atomically: a refresh
    /// (the changes from the previous version) or its rollback (none).
    fn refresh_audience(
        &self,
        a: &Audience,
        members: &[(Vec<u8>, Vec<u8>)],
        changes: &[MemberChange],
    ) -> StoreResult<()>;
    /// Up to `limit` kept changes after an opaque position, in position order.
    fn changes_after(
        &self,
        id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<MemberChange>>;
}

/// Opted-out `b·P(y)` values (never digests).
pub trait OptoutRepo {
    /// Add; returns how many were new.
    fn add_optouts(&self, points: &[PointBytes]) -> StoreResult<usize>;
    /// Exact membership.
    fn is_opted_out(&self, point: &PointBytes) -> StoreResult<bool>;
    /// All of them (to fill the bloom filter at start).
    fn optouts(&self) -> StoreResult<Vec<PointBytes>>;
}

/// Tombstones of erased persons, so later imports skip them. Like opt-outs,
/// only keyed values: the person's pseudonym and its `b·P(y)` (never an ID
/// or a digest).
pub trait ErasureRepo {
    /// Record a tombstone, or add points to one, durable on return; returns
    /// every point of the person's tombstone.
    fn add_erasure(
        &self,
        person: &PersonKey,
        points: &[PointBytes],
    ) -> StoreResult<Vec<PointBytes>>;
    /// Is the person tombstoned?
    fn is_erased_person(&self, person: &PersonKey) -> StoreResult<bool>;
    /// Is `b·P(y)` a point of a tombstoned person?
    fn is_erased_point(&self, point: &PointBytes) -> StoreResult<bool>;
    /// Remove a person's tombstone and its points, durable on return;
    /// `false` if there was none.
    fn lift_erasure(&self, person: &PersonKey) -> StoreResult<bool>;
    /// Tombstoned persons.
    fn erasure_count(&self) -> StoreResult<u64>;
    /// [`ErasureRepo::is_erased_person`] of each of `persons`, in one call
    /// (an import batch's check; a database answers it in one round trip).
    fn erased_persons_among(&self, persons: &[PersonKey]) -> StoreResult<Vec<bool>> {
        persons.iter().map(|p| self.is_erased_person(p)).collect()
    }
    /// [`ErasureRepo::is_erased_point`] of each of `points`, in one call.
    fn erased_points_among(&self, points: &[PointBytes]) -> StoreResult<Vec<bool>> {
        points.iter().map(|p| self.is_erased_point(p)).collect()
    }
}

/// The hash-chained audit log.
pub trait AuditRepo {
    /// The last entry.
    fn last_audit(&self) -> StoreResult<Option<AuditEntry>>;
    /// Write an entry at its seq (append, or overwrite for repair tools and tests).
    fn put_audit(&self, e: &AuditEntry) -> StoreResult<()>;
    /// Entries with seq > after, at most limit.
    fn audit_after(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>>;
}

/// Which key a rotation replaces.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RotationKind {
    /// The server scalar `b` (`server.key`): stored points move to `b'`.
    #[default]
    ServerKey,
    /// The sealing key (`seal.key`): sealed values are sealed again.
    SealKey,
}

/// Progress of a key rotation (see `services::rotation`), saved with each
/// step it finishes so that a restart resumes after the last one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotationRecord {
    /// Rotation ID (for the audit log).
    pub id: String,
    /// The key it replaces (records written before sealing-key rotations
    /// were all server-key ones).
    #[serde(default)]
    pub kind: RotationKind,
    /// The graph version being written under the new key, once allocated.
    pub new_version: Option<u64>,
    /// Finished steps (`graph`, `optouts`, `tombstones`, `cache:<ns hex>`,
    /// `audiences`, `webhooks`, `commit`, `switched`).
    pub done: BTreeSet<String>,
}

/// What a server key rotation rewrites besides the graph: every stored
/// `b·P(y)` (opt-outs, tombstones) and every cached pair. Each `replace_*`
/// saves `rec` (the step marked done) in the same atomic write as the data,
/// so a crash never leaves a step applied but not recorded, or the reverse.
pub trait RotationRepo {
    /// The rotation in progress, if any.
    fn rotation(&self) -> StoreResult<Option<RotationRecord>>;
    /// Save (`Some`) or forget (`None`) the rotation record, durable on return.
    fn put_rotation(&self, rec: Option<&RotationRecord>) -> StoreResult<()>;
    /// Every cache namespace holding a run, in order.
    fn cached_namespaces(&self) -> StoreResult<Vec<[u8; 16]>>;
    /// Replace every opt-out point with `points`, saving `rec` with them.
    fn replace_optouts(&self, points: &[PointBytes], rec: &RotationRecord) -> StoreResult<()>;
    /// Every tombstone: the person and its points.
    fn tombstones(&self) -> StoreResult<Vec<(PersonKey, Vec<PointBytes>)>>;
    /// Replace every tombstone's points (same persons), saving `rec` with them.
    fn replace_tombstones(
        &self,
        tombstones: &[(PersonKey, Vec<PointBytes>)],
        rec: &RotationRecord,
    ) -> StoreResult<()>;
    /// Replace a namespace's cached runs with `pairs` (any order, repeats
    /// dropped), saving `rec` with them; no copy of the old pairs is left
    /// in the cache's files.
    fn replace_cache(
        &self,
        ns: &[u8; 16],
        pairs: Vec<(PointBytes, PointBytes)>,
        rec: &RotationRecord,
    ) -> StoreResult<()>;
    /// Replace each sealed cookie of an audience's members by
    /// `reseal(sealed)`, positions unchanged, in one atomic switch that
    /// leaves no copy of the old values in the store's files (sealing-key
    /// rotation). Returns how many were resealed, or `None` (nothing
    /// written) if `reseal` refused one.
    fn reseal_members(&self, id: &str, reseal: &Reseal<'_>) -> StoreResult<Option<u64>>;
    /// The deployment's key fingerprints, once a server recorded them.
    fn key_fingerprints(&self) -> StoreResult<Option<KeyFingerprints>>;
    /// Record (`Some`) or forget (`None`) the deployment's key
    /// fingerprints, durable on return.
    fn put_key_fingerprints(&self, f: Option<&KeyFingerprints>) -> StoreResult<()>;
}

/// The public fingerprints of the keys every server of a deployment must
/// hold (never a key): each server checks its key files against them at
/// start, so a server left with an old key after a rotation refuses to
/// serve instead of matching or unsealing with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyFingerprints {
    /// `b`'s fingerprint (a hash of `b·G`).
    pub server: String,
    /// HMAC of a fixed label under the sealing key.
    pub seal: String,
    /// HMAC of a fixed label under the identity key.
    pub identity: String,
    /// HMAC of a fixed label under the current pepper.
    pub pepper: String,
    /// The same under the old pepper while a pepper rotation is pending.
    pub old_pepper: Option<String>,
}

/// A sealed value sealed again under a new key; `None` if it does not open.
pub type Reseal<'a> = dyn Fn(&[u8]) -> Option<Vec<u8>> + Sync + 'a;

/// How long budget charges are kept, in seconds: the longest budget window
/// the configuration accepts (366 days), so lengthening the window never
/// forgets charges that fall inside it.
pub const BUDGET_HISTORY_SECS: u64 = 366 * 86_400;

/// A job's charge against its advertiser's budget, made now or found made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetCharge {
    /// The job's charge, in micro-ε (an earlier charge when the job was already charged).
    pub charged_micro: u64,
    /// The advertiser's total in the window after it, in micro-ε.
    pub spent_micro: u64,
}

/// A charge refused: it would take the window's total past the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetExhausted {
    /// The advertiser's total in the window, in micro-ε (unchanged).
    pub spent_micro: u64,
}

/// ε spent per advertiser, in whole micro-ε.
///
/// Check and spend are one atomic step, so concurrent finishes cannot both
/// pass the check and then overspend together. The sled backend does it in
/// one transaction on the advertiser's ledger record. A PostgreSQL backend
/// must do it in one transaction that takes `SELECT … FOR UPDATE` on the
/// advertiser's budget row (inserted first with `ON CONFLICT DO NOTHING`),
/// sums the charges in the window, inserts the job's charge under a unique
/// `(advertiser, job)` key, and commits; that lock is what makes it hold
/// across servers sharing the database.
pub trait BudgetRepo {
    /// Charge `cost_micro` for `job` at `now` unless the advertiser's charges
    /// since `window_start` plus it exceed `budget_micro`. Idempotent per
    /// job: a job already charged is not charged again and gets its earlier
    /// charge back. Charges older than [`BUDGET_HISTORY_SECS`] are dropped.
    fn try_spend(
        &self,
        advertiser: &str,
        job: &str,
        now: u64,
        window_start: u64,
        cost_micro: u64,
        budget_micro: u64,
    ) -> StoreResult<Result<BudgetCharge, BudgetExhausted>>;
    /// The advertiser's charges since `window_start`, in micro-ε.
    fn budget_spent(&self, advertiser: &str, window_start: u64) -> StoreResult<u64>;
}

/// What keeps a store-wide lock, released when dropped.
pub trait LockHold: Send {
    /// Whether the lock still holds: a database releases a session's locks
    /// when the session ends (a failover, a network cut), and then another
    /// server may take it.
    fn is_held(&self) -> bool;
}

/// A held store-wide lock, released when dropped.
pub struct HeldLock(Option<Box<dyn LockHold>>);

impl HeldLock {
    /// A lock that needs no release (one process owns the store).
    pub fn local() -> Self {
        Self(None)
    }

    /// A lock released by dropping `inner`.
    pub fn held_by(inner: Box<dyn LockHold>) -> Self {
        Self(Some(inner))
    }

    /// Whether the lock still holds; long holders check it between steps.
    pub fn is_held(&self) -> bool {
        self.0.as_ref().is_none_or(|hold| hold.is_held())
    }
}

/// Named locks across every server sharing the store, for the services'
/// read-then-write steps (audit chain, open-jobs limit, audience creation
/// and the difference check, imports) and for background clean-up that
/// must run once. Callers take their in-process mutex first, so a server
/// has at most one waiter per name. sled has one process per store: its
/// locks are free; PostgreSQL takes session advisory locks.
pub trait LockRepo {
    /// Wait for the lock `name`.
    fn lock(&self, name: &str) -> StoreResult<HeldLock>;
    /// Take the lock `name` if no other server holds it.
    fn try_lock(&self, name: &str) -> StoreResult<Option<HeldLock>>;
}

/// Push delivery: destinations' webhook endpoints and the durable outbox.
///
/// A message is enqueued in the same transaction as the record change that
/// causes it ([`OutboxRepo::put_job_with_messages`] when a finish marks its
/// job finished, which releases its audiences;
/// [`OutboxRepo::put_audience_with_messages`] at expiry or withdrawal), so a
/// crash never leaves an event without its message or a message without its
/// event. A PostgreSQL backend does each in one transaction and assigns
/// `seq` from a sequence.
pub trait OutboxRepo {
    /// Create or replace a destination's endpoint.
    fn put_webhook_endpoint(&self, e: &WebhookEndpoint) -> StoreResult<()>;
    /// A destination's endpoint.
    fn webhook_endpoint(&self, destination: &str) -> StoreResult<Option<WebhookEndpoint>>;
    /// Remove a destination's endpoint; `false` if it had none.
    fn delete_webhook_endpoint(&self, destination: &str) -> StoreResult<bool>;
    /// Save a job record and enqueue `messages` (their `seq` assigned in
    /// the order given), atomically.
    fn put_job_with_messages(&self, job: &Job, messages: Vec<OutboxMessage>) -> StoreResult<()>;
    /// Save an audience record and enqueue `messages`, atomically.
    fn put_audience_with_messages(
        &self,
        a: &Audience,
        messages: Vec<OutboxMessage>,
    ) -> StoreResult<()>;
    /// Save a message's new state (status, attempts, next attempt).
    fn update_message(&self, m: &OutboxMessage) -> StoreResult<()>;
    /// One message.
    fn message(&self, id: &str) -> StoreResult<Option<OutboxMessage>>;
    /// A destination's messages, newest first, at most `limit`.
    fn messages_of(&self, destination: &str, limit: usize) -> StoreResult<Vec<OutboxMessage>>;
    /// The oldest `per_destination` pending messages of every destination
    /// that has one, each destination's in order (by index).
    fn pending_heads(&self, per_destination: usize) -> StoreResult<Vec<OutboxMessage>>;
    /// Pending messages (index entries only).
    fn pending_count(&self) -> StoreResult<u64>;
    /// Delete up to `limit` messages that ended (delivered or failed) before
    /// `ended_before_ms`, by index; returns how many.
    fn prune_messages(&self, ended_before_ms: u64, limit: usize) -> StoreResult<usize>;
}

/// An operator of the console (see `crate::console`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Operator {
    /// Unique name (the audit log's `operator:NAME`).
    pub name: String,
    /// Argon2id hash of the password, as a PHC string (salt and parameters inside).
    pub password_hash: String,
    /// The TOTP secret sealed under the server's sealing key, bound to the
    /// name (`nonce || ciphertext || tag`); never stored in clear.
    pub totp_sealed: Vec<u8>,
    /// The last TOTP time step accepted: a code of this step or an earlier
    /// one is refused, so each code logs in once.
    pub totp_last_step: u64,
    /// RFC 3339 creation time.
    pub created: String,
}

/// A console session. Only a hash of its ID is stored, so a copy of the
/// store does not let anyone into the console.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsoleSession {
    /// `HMAC(pepper, "console-session" || id)`.
    pub id_hash: [u8; 32],
    /// The operator logged in.
    pub operator: String,
    /// Unix seconds of the login (absolute expiry).
    pub created: u64,
    /// Unix seconds of the last request (idle expiry).
    pub last_seen: u64,
}

/// Console operators and their sessions.
pub trait ConsoleRepo {
    /// Create an operator.
    fn create_operator(&self, op: &Operator) -> StoreResult<Result<(), AlreadyExists>>;
    /// One operator.
    fn operator(&self, name: &str) -> StoreResult<Option<Operator>>;
    /// Replace an operator's password and second factor (its TOTP step
    /// counter included) and end its sessions, atomically; `false` if there
    /// is no such operator.
    fn reset_operator(&self, op: &Operator) -> StoreResult<bool>;
    /// Delete an operator and its sessions, atomically; `false` if there was none.
    fn delete_operator(&self, name: &str) -> StoreResult<bool>;
    /// Record `step` as the operator's last accepted TOTP step if it is
    /// later than the one recorded, in one atomic compare-and-set (across
    /// servers too): `false` when it is not (a replayed code).
    fn accept_totp_step(&self, name: &str, step: u64) -> StoreResult<bool>;
    /// Save a session (new, or its `last_seen` moved).
    fn put_session(&self, s: &ConsoleSession) -> StoreResult<()>;
    /// The session with this ID hash.
    fn session(&self, id_hash: &[u8; 32]) -> StoreResult<Option<ConsoleSession>>;
    /// End a session.
    fn delete_session(&self, id_hash: &[u8; 32]) -> StoreResult<()>;
    /// Delete the sessions idle since before `idle_before` or created before
    /// `created_before` (Unix seconds); returns how many.
    fn prune_sessions(&self, idle_before: u64, created_before: u64) -> StoreResult<usize>;
}

/// Everything a server needs.
pub trait Repo:
    MetaRepo
    + PrincipalRepo
    + GraphRepo
    + CacheRepo
    + JobRepo
    + AudienceRepo
    + OptoutRepo
    + ErasureRepo
    + AuditRepo
    + BudgetRepo
    + LockRepo
    + OutboxRepo
    + RotationRepo
    + ConsoleRepo
    + Send
    + Sync
{
}

impl<T> Repo for T where
    T: MetaRepo
        + PrincipalRepo
        + GraphRepo
        + CacheRepo
        + JobRepo
        + AudienceRepo
        + OptoutRepo
        + ErasureRepo
        + AuditRepo
        + BudgetRepo
        + LockRepo
        + OutboxRepo
        + RotationRepo
        + ConsoleRepo
        + Send
        + Sync
{
}

/// Refuse a data dir written by an older schema (there is no migration:
/// re-initialise and re-import, or restore a backup of this schema).
fn refuse_older_schema(db: &std::path::Path) -> StoreResult<()> {
    if db.exists() {
        return Ok(());
    }
    for found in (1..SCHEMA_VERSION).rev() {
        if db.with_file_name(format!("v{found}")).exists() {
            return Err(StoreError::Schema {
                found,
                expected: SCHEMA_VERSION,
            });
        }
    }
    Ok(())
}

/// Which backend holds a server's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StorageConfig {
    /// sled under the data dir (`<dir>/db/v<SCHEMA_VERSION>`).
    #[default]
    Sled,
    /// A PostgreSQL database shared by every server of the deployment.
    Postgres(postgres::DatabaseUrl),
}

/// Open the store of a data dir on its configured backend, checking the
/// schema (and, on PostgreSQL, applying pending migrations).
pub fn open(
    data_dir: &std::path::Path,
    storage: &StorageConfig,
) -> StoreResult<std::sync::Arc<dyn Repo>> {
    match storage {
        StorageConfig::Sled => open_sled(data_dir),
        StorageConfig::Postgres(url) => Ok(std::sync::Arc::new(postgres::PgStore::connect(url)?)),
    }
}

/// Open the sled store under a data dir (`<dir>/db/v<SCHEMA_VERSION>`), checking the schema.
pub fn open_sled(data_dir: &std::path::Path) -> StoreResult<std::sync::Arc<dyn Repo>> {
    refuse_older_schema(&db_dir(data_dir))?;
    let store = sled::SledStore::open(&data_dir.join("db").join(format!("v{SCHEMA_VERSION}")))?;
    match store.schema_version()? {
        None => store.set_schema_version(SCHEMA_VERSION)?,
        Some(v) if v == SCHEMA_VERSION => {}
        Some(found) => {
            return Err(StoreError::Schema {
                found,
                expected: SCHEMA_VERSION,
            })
        }
    }
    Ok(std::sync::Arc::new(store))
}

/// Called with each `(key, value)` of a tree by [`ExportRepo::export_tree`].
pub type EntryVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> StoreResult<()> + 'a;

/// Whole-store copy for backups and restores: every tree's raw entries. The
/// backup file format is not storage's business (see `crate::backup`).
pub trait ExportRepo {
    /// The names of every tree, in a stable order.
    fn tree_names(&self) -> StoreResult<Vec<Vec<u8>>>;
    /// Visit every entry of a tree in key order.
    fn export_tree(&self, tree: &[u8], visit: &mut EntryVisitor<'_>) -> StoreResult<()>;
    /// Insert entries into a tree (creating it), in one batch.
    fn import_entries(&self, tree: &[u8], entries: &[(Vec<u8>, Vec<u8>)]) -> StoreResult<()>;
    /// Does any tree other than `meta` (the schema version) hold an entry?
    fn has_data(&self) -> StoreResult<bool>;
}

/// A repository behind a store-wide lock: every mutating call holds it
/// shared, [`Guarded::snapshot`] holds it exclusively, so a snapshot sees the
/// store between two writes (what a crash at that instant would leave, which
/// the services already tolerate), consistent across all trees.
pub struct Guarded<R> {
    inner: R,
    lock: std::sync::RwLock<()>,
}

impl<R> Guarded<R> {
    /// Wrap a repository.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            lock: std::sync::RwLock::new(()),
        }
    }

    /// Run `f` with every writer excluded (readers continue).
    pub fn snapshot<T>(&self, f: impl FnOnce(&R) -> T) -> T {
        let _guard = self.lock.write().unwrap_or_else(|p| p.into_inner());
        f(&self.inner)
    }

    fn writer(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.lock.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Delegate read-only methods straight through.
macro_rules! guarded_reads {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret {
            self.inner.$name($($arg),*)
        })*
    };
}

/// Delegate mutating methods under the shared side of the store lock.
macro_rules! guarded_writes {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret {
            let _guard = self.writer();
            self.inner.$name($($arg),*)
        })*
    };
}

impl<R: MetaRepo> MetaRepo for Guarded<R> {
    guarded_reads! {
        fn schema_version(&self) -> StoreResult<Option<u32>>;
        fn flush(&self) -> StoreResult<()>;
    }
    guarded_writes! {
        fn set_schema_version(&self, v: u32) -> StoreResult<()>;
    }
}

impl<R: PrincipalRepo> PrincipalRepo for Guarded<R> {
    guarded_reads! {
        fn principal(&self, name: &str) -> StoreResult<Option<Principal>>;
        fn principals(&self) -> StoreResult<Vec<Principal>>;
        fn key_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ApiKeyRecord>>;
        fn key(&self, key_id: &str) -> StoreResult<Option<ApiKeyRecord>>;
        fn keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
    }
    guarded_writes! {
        fn create_principal(&self, p: &Principal) -> StoreResult<Result<(), AlreadyExists>>;
        fn insert_key(&self, k: &ApiKeyRecord) -> StoreResult<()>;
    }
}

impl<R: GraphRepo> GraphRepo for Guarded<R> {
    guarded_reads! {
        fn current_graph(&self) -> StoreResult<Option<GraphInfo>>;
        fn import(&self, id: &str) -> StoreResult<Option<ImportRecord>>;
        fn imports(&self) -> StoreResult<Vec<ImportRecord>>;
        fn import_batch_hash(&self, import: &str, part: u8, batch_no: u32) -> StoreResult<Option<[u8; 32]>>;
        fn point_owner(&self, version: u64, kind: MatchKind, point: &PointBytes) -> StoreResult<Option<PersonKey>>;
        fn points_after(&self, version: u64, kind: MatchKind, after: Option<&PointBytes>, limit: usize) -> StoreResult<Vec<(PointBytes, PersonKey)>>;
        fn bare_points_after(&self, version: u64, kind: MatchKind, after: Option<&PointBytes>, limit: usize) -> StoreResult<Vec<PointBytes>>;
        fn owners_of_sorted(&self, version: u64, kind: MatchKind, points: &[PointBytes]) -> StoreResult<Vec<Option<PersonKey>>>;
        fn cookies_of_sorted(&self, version: u64, destination: &str, persons: &[PersonKey]) -> StoreResult<Vec<(PersonKey, Vec<SealedCookie>)>>;
        fn has_destination(&self, version: u64, destination: &str) -> StoreResult<bool>;
        fn suppressed_persons(&self, version: u64) -> StoreResult<Vec<PersonKey>>;
        fn person_points(&self, version: u64, person: &PersonKey) -> StoreResult<Vec<PointBytes>>;
    }
    guarded_writes! {
        fn allocate_version(&self) -> StoreResult<u64>;
        fn put_import(&self, rec: &ImportRecord) -> StoreResult<()>;
        fn set_import_batch_hash(&self, import: &str, part: u8, batch_no: u32, hash: [u8; 32]) -> StoreResult<()>;
        fn put_identifier_run(&self, version: u64, batch_no: u32, rows: Vec<IdentifierRow>) -> StoreResult<()>;
        fn put_cookie_run(&self, version: u64, batch_no: u32, rows: Vec<CookieRow>) -> StoreResult<()>;
        fn put_removal_run(&self, version: u64, batch_no: u32, persons: Vec<PersonKey>) -> StoreResult<()>;
        fn seal_version(&self, version: u64) -> StoreResult<GraphInfo>;
        fn seal_delta(&self, version: u64, base: u64) -> StoreResult<GraphInfo>;
        fn suppress(&self, version: u64, person: &PersonKey) -> StoreResult<bool>;
        fn erase_person(&self, version: u64, person: &PersonKey) -> StoreResult<ErasedCounts>;
        fn commit_graph(&self, info: &GraphInfo) -> StoreResult<Option<u64>>;
        fn delete_version(&self, version: u64) -> StoreResult<()>;
    }
}

impl<R: CacheRepo> CacheRepo for Guarded<R> {
    guarded_reads! {
        fn cache_contains(&self, ns: &[u8; 16], bpy: &PointBytes) -> StoreResult<bool>;
        fn cache_runs_after(&self, ns: &[u8; 16], after: Option<&[u8]>, limit: usize) -> StoreResult<Vec<CacheRun>>;
        fn cache_run_keys(&self, ns: &[u8; 16]) -> StoreResult<Vec<Vec<u8>>>;
        fn cache_run(&self, ns: &[u8; 16], run_key: &[u8]) -> StoreResult<Vec<(PointBytes, PointBytes)>>;
        fn cache_complete(&self, ns: &[u8; 16], version: u64, kind: MatchKind) -> StoreResult<bool>;
    }
    guarded_writes! {
        fn cache_put(&self, ns: &[u8; 16], pairs: &[(PointBytes, PointBytes)]) -> StoreResult<()>;
        fn cache_remove_points(&self, points: &[PointBytes]) -> StoreResult<u64>;
        fn set_cache_complete(&self, ns: &[u8; 16], version: u64, kind: MatchKind) -> StoreResult<()>;
    }
}

impl<R: JobRepo> JobRepo for Guarded<R> {
    guarded_reads! {
        fn job(&self, id: &str) -> StoreResult<Option<Job>>;
        fn jobs_of(&self, advertiser: &str) -> StoreResult<Vec<Job>>;
        fn jobs_touched_before(&self, status: &str, before_unix: u64, limit: usize) -> StoreResult<Vec<Job>>;
        fn job_counts(&self) -> StoreResult<BTreeMap<String, u64>>;
        fn pass_page(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<Option<Vec<u8>>>;
        fn page_done(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<bool>;
        fn upload_hash(&self, job: &str, batch_no: u32) -> StoreResult<Option<[u8; 32]>>;
        fn upload(&self, job: &str, batch_no: u32) -> StoreResult<Option<Vec<u8>>>;
        fn upload_numbers(&self, job: &str) -> StoreResult<Vec<u32>>;
        fn job_data_count(&self, job: &str) -> StoreResult<usize>;
    }
    guarded_writes! {
        fn put_job(&self, job: &Job) -> StoreResult<()>;
        fn put_pass_pages(&self, job: &str, kind: MatchKind, first_page: u32, pages: &[Vec<u8>]) -> StoreResult<()>;
        fn mark_page_done(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<()>;
        fn put_upload(&self, job: &Job, batch_no: u32, hash: [u8; 32], frame: &[u8]) -> StoreResult<()>;
        fn delete_job_data(&self, job: &str) -> StoreResult<()>;
        fn delete_job(&self, id: &str) -> StoreResult<()>;
    }
}

impl<R: AudienceRepo> AudienceRepo for Guarded<R> {
    guarded_reads! {
        fn audience(&self, id: &str) -> StoreResult<Option<Audience>>;
        fn audiences_for_destination(&self, destination: &str) -> StoreResult<Vec<Audience>>;
        fn audiences_of(&self, advertiser: &str, destination: &str) -> StoreResult<Vec<Audience>>;
        fn unpulled_audiences(&self) -> StoreResult<Vec<Audience>>;
        fn audiences_expiring_by(&self, unix: u64) -> StoreResult<Vec<Audience>>;
        fn live_audience_count(&self, now: u64) -> StoreResult<u64>;
        fn audience_persons(&self, id: &str) -> StoreResult<Vec<String>>;
        fn members_after(&self, id: &str, after: Option<&[u8]>, limit: usize) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>>;
        fn changes_after(&self, id: &str, after: Option<&[u8]>, limit: usize) -> StoreResult<Vec<MemberChange>>;
    }
    guarded_writes! {
        fn create_audience(&self, a: &Audience, members: &[(String, &[SealedCookie])]) -> StoreResult<()>;
        fn put_audience(&self, a: &Audience) -> StoreResult<()>;
        fn remove_member(&self, id: &str, person: &str) -> StoreResult<usize>;
        fn delete_members(&self, id: &str) -> StoreResult<()>;
        fn delete_audience(&self, id: &str) -> StoreResult<()>;
        fn refresh_audience(&self, a: &Audience, members: &[(Vec<u8>, Vec<u8>)], changes: &[MemberChange]) -> StoreResult<()>;
    }
}

impl<R: OptoutRepo> OptoutRepo for Guarded<R> {
    guarded_reads! {
        fn is_opted_out(&self, point: &PointBytes) -> StoreResult<bool>;
        fn optouts(&self) -> StoreResult<Vec<PointBytes>>;
    }
    guarded_writes! {
        fn add_optouts(&self, points: &[PointBytes]) -> StoreResult<usize>;
    }
}

impl<R: ErasureRepo> ErasureRepo for Guarded<R> {
    guarded_reads! {
        fn is_erased_person(&self, person: &PersonKey) -> StoreResult<bool>;
        fn is_erased_point(&self, point: &PointBytes) -> StoreResult<bool>;
        fn erasure_count(&self) -> StoreResult<u64>;
        fn erased_persons_among(&self, persons: &[PersonKey]) -> StoreResult<Vec<bool>>;
        fn erased_points_among(&self, points: &[PointBytes]) -> StoreResult<Vec<bool>>;
    }
    guarded_writes! {
        fn add_erasure(&self, person: &PersonKey, points: &[PointBytes]) -> StoreResult<Vec<PointBytes>>;
        fn lift_erasure(&self, person: &PersonKey) -> StoreResult<bool>;
    }
}

impl<R: AuditRepo> AuditRepo for Guarded<R> {
    guarded_reads! {
        fn last_audit(&self) -> StoreResult<Option<AuditEntry>>;
        fn audit_after(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>>;
    }
    guarded_writes! {
        fn put_audit(&self, e: &AuditEntry) -> StoreResult<()>;
    }
}

impl<R: LockRepo> LockRepo for Guarded<R> {
    guarded_reads! {
        fn lock(&self, name: &str) -> StoreResult<HeldLock>;
        fn try_lock(&self, name: &str) -> StoreResult<Option<HeldLock>>;
    }
}

impl<R: BudgetRepo> BudgetRepo for Guarded<R> {
    guarded_reads! {
        fn budget_spent(&self, advertiser: &str, window_start: u64) -> StoreResult<u64>;
    }
    guarded_writes! {
        fn try_spend(&self, advertiser: &str, job: &str, now: u64, window_start: u64, cost_micro: u64, budget_micro: u64) -> StoreResult<Result<BudgetCharge, BudgetExhausted>>;
    }
}

impl<R: OutboxRepo> OutboxRepo for Guarded<R> {
    guarded_reads! {
        fn webhook_endpoint(&self, destination: &str) -> StoreResult<Option<WebhookEndpoint>>;
        fn message(&self, id: &str) -> StoreResult<Option<OutboxMessage>>;
        fn messages_of(&self, destination: &str, limit: usize) -> StoreResult<Vec<OutboxMessage>>;
        fn pending_heads(&self, per_destination: usize) -> StoreResult<Vec<OutboxMessage>>;
        fn pending_count(&self) -> StoreResult<u64>;
    }
    guarded_writes! {
        fn put_webhook_endpoint(&self, e: &WebhookEndpoint) -> StoreResult<()>;
        fn delete_webhook_endpoint(&self, destination: &str) -> StoreResult<bool>;
        fn put_job_with_messages(&self, job: &Job, messages: Vec<OutboxMessage>) -> StoreResult<()>;
        fn put_audience_with_messages(&self, a: &Audience, messages: Vec<OutboxMessage>) -> StoreResult<()>;
        fn update_message(&self, m: &OutboxMessage) -> StoreResult<()>;
        fn prune_messages(&self, ended_before_ms: u64, limit: usize) -> StoreResult<usize>;
    }
}

impl<R: RotationRepo> RotationRepo for Guarded<R> {
    guarded_reads! {
        fn rotation(&self) -> StoreResult<Option<RotationRecord>>;
        fn key_fingerprints(&self) -> StoreResult<Option<KeyFingerprints>>;
        fn cached_namespaces(&self) -> StoreResult<Vec<[u8; 16]>>;
        fn tombstones(&self) -> StoreResult<Vec<(PersonKey, Vec<PointBytes>)>>;
    }
    guarded_writes! {
        fn put_rotation(&self, rec: Option<&RotationRecord>) -> StoreResult<()>;
        fn replace_optouts(&self, points: &[PointBytes], rec: &RotationRecord) -> StoreResult<()>;
        fn replace_tombstones(&self, tombstones: &[(PersonKey, Vec<PointBytes>)], rec: &RotationRecord) -> StoreResult<()>;
        fn replace_cache(&self, ns: &[u8; 16], pairs: Vec<(PointBytes, PointBytes)>, rec: &RotationRecord) -> StoreResult<()>;
        fn reseal_members(&self, id: &str, reseal: &Reseal<'_>) -> StoreResult<Option<u64>>;
        fn put_key_fingerprints(&self, f: Option<&KeyFingerprints>) -> StoreResult<()>;
    }
}

impl<R: ConsoleRepo> ConsoleRepo for Guarded<R> {
    guarded_reads! {
        fn operator(&self, name: &str) -> StoreResult<Option<Operator>>;
        fn session(&self, id_hash: &[u8; 32]) -> StoreResult<Option<ConsoleSession>>;
    }
    guarded_writes! {
        fn create_operator(&self, op: &Operator) -> StoreResult<Result<(), AlreadyExists>>;
        fn reset_operator(&self, op: &Operator) -> StoreResult<bool>;
        fn delete_operator(&self, name: &str) -> StoreResult<bool>;
        fn accept_totp_step(&self, name: &str, step: u64) -> StoreResult<bool>;
        fn put_session(&self, s: &ConsoleSession) -> StoreResult<()>;
        fn delete_session(&self, id_hash: &[u8; 32]) -> StoreResult<()>;
        fn prune_sessions(&self, idle_before: u64, created_before: u64) -> StoreResult<usize>;
    }
}

/// The store a server runs on: the sled backend behind the store-wide lock.
pub type Store = Guarded<sled::SledStore>;

/// The database directory of a data dir (`<dir>/db/v<SCHEMA_VERSION>`).
pub fn db_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("db").join(format!("v{SCHEMA_VERSION}"))
}

/// Open (creating) the store at a database directory, checking the schema;
/// `Ok(None)` when another process (a running server) holds it.
pub fn try_open_at(db: &std::path::Path) -> StoreResult<Option<std::sync::Arc<Store>>> {
    refuse_older_schema(db)?;
    let Some(store) = sled::SledStore::open_unless_locked(db)? else {
        return Ok(None);
    };
    match store.schema_version()? {
        None => store.set_schema_version(SCHEMA_VERSION)?,
        Some(v) if v == SCHEMA_VERSION => {}
        Some(found) => {
            return Err(StoreError::Schema {
                found,
                expected: SCHEMA_VERSION,
            })
        }
    }
    Ok(Some(std::sync::Arc::new(Guarded::new(store))))
}

/// Open a data dir's store for serving (lockable for snapshots).
pub fn open_store(data_dir: &std::path::Path) -> StoreResult<std::sync::Arc<Store>> {
    let db = db_dir(data_dir);
    // sled releases its file lock from a background thread after the last
    // handle drops, so a store closed a moment ago (by `init`, or a server
    // that just stopped) can still look locked: retry for a bounded while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        if let Some(store) = try_open_at(&db)? {
            return Ok(store);
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Backend(format!(
                "the database {} is in use by another process (is a server running?)",
                db.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl<R: ExportRepo> ExportRepo for Guarded<R> {
    fn tree_names(&self) -> StoreResult<Vec<Vec<u8>>> {
        self.inner.tree_names()
    }

    fn export_tree(&self, tree: &[u8], visit: &mut EntryVisitor<'_>) -> StoreResult<()> {
        self.inner.export_tree(tree, visit)
    }

    fn import_entries(&self, tree: &[u8], entries: &[(Vec<u8>, Vec<u8>)]) -> StoreResult<()> {
        let _guard = self.writer();
        self.inner.import_entries(tree, entries)
    }

    fn has_data(&self) -> StoreResult<bool> {
        self.inner.has_data()
    }
}

/// Checks every backend's [`AudienceRepo`] passes (sled and PostgreSQL tests).
#[cfg(test)]
pub(crate) mod audience_checks {
    use super::*;

    /// Person `i`'s one member record: its position and sealed cookie.
    fn record(i: u8) -> (Vec<u8>, Vec<u8>) {
        (
            member_position(&format!("person{i:02}"), &[i; 16]),
            format!("sealed-{i}").into_bytes(),
        )
    }

    fn change(i: u8, op: ChangeOp) -> MemberChange {
        let (pos, sealed) = record(i);
        MemberChange { pos, op, sealed }
    }

    /// A refresh replaces members and changes at once; changes page by
    /// position; a removed person leaves both; a rollback keeps no changes;
    /// deletion takes everything.
    pub(crate) fn refresh_replaces_members_and_changes(s: &dyn AudienceRepo, a: Audience) {
        let first: Vec<SealedCookie> = (0..10u8)
            .map(|i| SealedCookie {
                tag: [i; 16],
                sealed: record(i).1,
            })
            .collect();
        let members: Vec<(String, &[SealedCookie])> = first
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("person{i:02}"), std::slice::from_ref(c)))
            .collect();
        s.create_audience(&a, &members).unwrap();
        let kept: Vec<_> = (0..5).chain(10..15).map(record).collect();
        let changes: Vec<_> = (5..10)
            .map(|i| change(i, ChangeOp::Remove))
            .chain((10..15).map(|i| change(i, ChangeOp::Add)))
            .collect();
        let v2 = Audience {
            version: 2,
            changes_from: Some(1),
            size: kept.len() as u64,
            ..a.clone()
        };
        s.refresh_audience(&v2, &kept, &changes).unwrap();
        assert_eq!(s.audience(&a.id).unwrap().unwrap().version, 2);
        assert_eq!(s.members_after(&a.id, None, 100).unwrap(), kept);
        let mut paged = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = s.changes_after(&a.id, after.as_deref(), 3).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.pos.clone());
            paged.extend(page);
        }
        assert_eq!(paged, changes, "each change once, in position order");
        // An added person leaves the changes; a person who stayed becomes a
        // removal; a removed one stays removed.
        assert_eq!(s.remove_member(&a.id, "person11").unwrap(), 1);
        assert_eq!(s.remove_member(&a.id, "person02").unwrap(), 1);
        assert_eq!(s.remove_member(&a.id, "person05").unwrap(), 0);
        let mut expected = changes.clone();
        expected.retain(|c| position_person(&c.pos) != Some("person11"));
        expected.push(change(2, ChangeOp::Remove));
        expected.sort_by(|x, y| x.pos.cmp(&y.pos));
        assert_eq!(s.changes_after(&a.id, None, 100).unwrap(), expected);
        let kept: Vec<_> = kept
            .into_iter()
            .filter(|(pos, _)| !matches!(position_person(pos), Some("person02" | "person11")))
            .collect();
        assert_eq!(s.members_after(&a.id, None, 100).unwrap(), kept);
        // Without kept changes (version 1, or rolled back) a removal is
        // only a removal.
        s.refresh_audience(&a, &kept[..4], &[]).unwrap();
        assert!(s.changes_after(&a.id, None, 100).unwrap().is_empty());
        assert_eq!(s.remove_member(&a.id, "person00").unwrap(), 1);
        assert!(s.changes_after(&a.id, None, 100).unwrap().is_empty());
        assert_eq!(s.members_after(&a.id, None, 100).unwrap(), kept[1..4]);
        s.refresh_audience(&v2, &kept, &changes).unwrap();
        s.delete_audience(&a.id).unwrap();
        assert!(s.changes_after(&a.id, None, 100).unwrap().is_empty());
        assert!(s.members_after(&a.id, None, 100).unwrap().is_empty());
    }

    /// A sealing-key rotation's re-seal of an audience covers the kept
    /// changes of its latest refresh as well as its members.
    pub(crate) fn reseal_covers_the_kept_changes<S: AudienceRepo + RotationRepo>(
        s: &S,
        a: Audience,
    ) {
        let first = [SealedCookie {
            tag: [0; 16],
            sealed: record(0).1,
        }];
        s.create_audience(&a, &[("person00".into(), &first[..])])
            .unwrap();
        let v2 = Audience {
            version: 2,
            changes_from: Some(1),
            size: 1,
            ..a.clone()
        };
        let changes = [change(0, ChangeOp::Remove), change(1, ChangeOp::Add)];
        s.refresh_audience(&v2, &[record(1)], &changes).unwrap();
        let upper = |v: &[u8]| Some(v.to_ascii_uppercase());
        assert_eq!(s.reseal_members(&a.id, &upper).unwrap(), Some(1));
        let resealed = s.changes_after(&a.id, None, 100).unwrap();
        assert_eq!(resealed.len(), 2);
        for (new, old) in resealed.iter().zip(&changes) {
            assert_eq!((&new.pos, new.op), (&old.pos, old.op));
            assert_eq!(new.sealed, old.sealed.to_ascii_uppercase());
        }
        let members = s.members_after(&a.id, None, 100).unwrap();
        assert_eq!(
            members,
            vec![(record(1).0, record(1).1.to_ascii_uppercase())]
        );
    }

    #[test]
    fn positions_name_their_person() {
        let pos = member_position("person07", &[9; 16]);
        assert_eq!(position_person(&pos), Some("person07"));
        assert_eq!(position_person(&pos[..pos.len() - 1]), None);
        assert_eq!(position_person(&[]), None);
    }
}
