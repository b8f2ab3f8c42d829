//! What the sled files share: error conversion, the JSON and key codecs, the
//! tree names and the blob bases (the blob file names each tree's values
//! live in). The sled modules import from here, never from each other's
//! internals, so each stays readable on its own.

use super::{PointBytes, StoreError, StoreResult};
use ::sled::transaction::TransactionError;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

pub(super) fn be(e: ::sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) fn tx_err(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => be(e),
        TransactionError::Abort(()) => StoreError::Backend("transaction aborted".into()),
    }
}

pub(super) fn json<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(super) fn from_json<T: for<'de> Deserialize<'de>>(
    tree: &'static str,
    bytes: &[u8],
) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(tree))
}

pub(super) fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

pub(super) fn u64_of(tree: &'static str, bytes: &[u8]) -> StoreResult<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt(tree))?;
    Ok(u64::from_be_bytes(arr))
}

pub(super) fn point_of(tree: &'static str, bytes: &[u8]) -> StoreResult<PointBytes> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Corrupt(tree))?;
    Ok(PointBytes(arr))
}

// Tree names.

/// Tree of staged runs: `version | part | batch` → blob pointer.
pub(super) const GRAPH_RUNS: &str = "graph_runs";
/// Tree of point chunks.
pub(super) const GRAPH_CHUNKS: &str = "graph_chunks";
/// Tree of cookie chunks.
pub(super) const GRAPH_COOKIE_CHUNKS: &str = "graph_cookie_chunks";

/// Tree of cache runs: `ns | first b·P(y) | tag` → blob pointer.
pub(super) const CACHE_RUNS: &str = "cache_runs";
/// Tree of graph-pass pages: `job | 0 | kind | page` → blob pointer.
pub(super) const JOB_PAGES: &str = "job_pages";
/// Tree of uploads: `job | 0 | batch` → content hash | blob pointer.
pub(super) const JOB_UPLOADS: &str = "job_uploads";

/// Tree of audience member chunks: `id | 0 | first record key` → blob pointer.
pub(super) const AUDIENCE_MEMBERS: &str = "audience_members";

/// Tree of an audience's kept changes (its latest refresh): `id | 0 |
/// position` → op | sealed cookie.
pub(super) const AUDIENCE_CHANGES: &str = "audience_changes";

/// Tree of tombstoned persons: person key → its `b·P(y)`, concatenated.
pub(super) const ERASED_PERSONS: &str = "erased_persons";
/// Tree of tombstoned points: `b·P(y) | person key` → nothing (a point may
/// belong to two erased persons, through different graph versions).
pub(super) const ERASED_POINTS: &str = "erased_points";

// Blob bases: the file names a tree's values live in.

/// Blob base of a cache namespace's runs.
pub(super) fn cache_base(ns: &[u8]) -> String {
    format!("cache-{}", hex::encode(ns))
}

/// Blob base of an audience's member chunks.
pub(super) fn audience_base(id: &str) -> String {
    format!("aud-{id}")
}

/// Blob base of a job's pages and uploads.
pub(super) fn job_base(job: &str) -> String {
    format!("job-{job}")
}

/// Blob base of a version's chunks.
pub(super) fn graph_base(version: u64) -> String {
    format!("graph-{version}")
}

/// Blob base of a version's staged runs.
pub(super) fn runs_base(version: u64) -> String {
    format!("graph-{version}-runs")
}

/// The blob directory of a database directory: inside it (sled leaves
/// files it does not know alone), so a restore's directory swap moves both.
pub(crate) fn blob_dir(db: &Path) -> PathBuf {
    db.join("onboard-blobs")
}

/// The key of a cached run in its namespace: its first point and its
/// content, so a re-sent page overwrites itself and a different run is kept
/// beside. `value` is the run's sorted 64-byte pairs, at least one.
pub(super) fn cache_run_key(ns: &[u8; 16], value: &[u8]) -> Vec<u8> {
    let tag = Sha256::digest(value);
    key(&[ns, &value[..value.len().min(32)], &tag[..8]])
}

/// A cached run's `(b·P(y), a·b·P(y))` pairs from their 64-byte records.
pub(super) fn decode_pairs(v: &[u8]) -> StoreResult<Vec<(PointBytes, PointBytes)>> {
    if !v.len().is_multiple_of(64) {
        return Err(StoreError::Corrupt(CACHE_RUNS));
    }
    v.chunks_exact(64)
        .map(|c| {
            Ok((
                point_of(CACHE_RUNS, &c[..32])?,
                point_of(CACHE_RUNS, &c[32..])?,
            ))
        })
        .collect()
}

/// Is `p` among the `n` sorted 64-byte `(b·P(y), a·b·P(y))` pairs of `run`?
pub(super) fn binary_search_run(run: &[u8], n: usize, p: &[u8; 32]) -> bool {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match run[mid * 64..mid * 64 + 32].cmp(&p[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}
