//! The upload: the file streamed again, the chosen rows normalised, blinded
//! and shuffled into record batches, two batches on the wire while the next
//! one is blinded.

use super::plan::{Plan, Row};
use super::quality::{read_rows, Chunk, RowSet};
use super::{MatchOptions, UPLOAD_PHASE};
use crate::api::{segment, ApiClient, Body};
use crate::error::ClientError;
use crate::input::RowSource;
use crate::progress::ProgressSink;
use onboard_protocol::wire::RecordBatch;
use onboard_protocol::{blind, Digest, MatchKind, SecretKey};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use reqwest::Method;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};

/// Where the upload of a job stands: batches below `skip` were acknowledged
/// by an earlier run; `acked` follows the acknowledged prefix.
#[derive(Clone, Copy)]
pub(super) struct Upload<'a> {
    pub(super) job_id: &'a str,
    pub(super) selected: &'a RowSet,
    pub(super) skip: u32,
    pub(super) acked: &'a AtomicU32,
}

struct Encoded {
    batch_no: u32,
    records: u64,
    bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct BatchAck {
    #[serde(default)]
    records: Option<u64>,
}

/// Stream the file again: select, normalise, blind, batch, upload; the next
/// batch is blinded while the previous one is on the wire. Batches below
/// `skip` were acknowledged by an earlier run: their rows are only counted.
/// Stops early on `stop` (set by a failure here or in the graph pass).
pub(super) fn upload(
    api: &ApiClient,
    opts: &MatchOptions,
    key: &SecretKey,
    up: Upload<'_>,
    expected_rows: u64,
    progress: &dyn ProgressSink,
    stop: &AtomicBool,
) -> Result<(u32, u64, u64), ClientError> {
    let Upload {
        job_id,
        selected,
        skip,
        acked,
    } = up;
    let mut reader = opts.open_input()?;
    let plan = Plan::resolve(&reader, opts)?;
    progress.begin(UPLOAD_PHASE, expected_rows);
    let (tx, rx) = mpsc::sync_channel::<Encoded>(UPLOADERS);
    let batch_path = format!("/v1/jobs/{}/batches", segment(job_id));
    let rx = Mutex::new(rx);
    let done = Mutex::new((0u32, BTreeSet::<u32>::new()));
    let shuffle_key = shuffle_key(key, job_id);
    let result: Result<(u32, u64, u64), ClientError> = std::thread::scope(|s| {
        let uploaders: Vec<_> = (0..UPLOADERS)
            .map(|_| {
                s.spawn(|| -> Result<u64, ClientError> {
                    let mut records = 0;
                    let mut error = None;
                    // Receive until the producer closes the channel, even
                    // after a failure: the producer may be blocked on a full
                    // channel and only stops at its next batch.
                    loop {
                        let next = rx.lock().expect("upload queue lock").recv();
                        let Ok(batch) = next else { break };
                        if stop.load(Ordering::SeqCst) {
                            continue;
                        }
                        if let Err(e) = put_batch(api, &batch_path, &batch) {
                            stop.store(true, Ordering::SeqCst);
                            error = Some(e);
                            continue;
                        }
                        // Acknowledged = the contiguous prefix of batches the
                        // server confirmed (several are in flight at once).
                        let mut guard = done.lock().expect("ack lock");
                        let (prefix, pending) = &mut *guard;
                        pending.insert(batch.batch_no);
                        while pending.remove(&(skip + *prefix)) {
                            *prefix += 1;
                        }
                        acked.store(skip + *prefix, Ordering::SeqCst);
                        drop(guard);
                        records += batch.records;
                        progress.advance(UPLOAD_PHASE, batch.records);
                    }
                    match error {
                        Some(e) => Err(e),
                        None => Ok(records),
                    }
                })
            })
            .collect();
        let produced = produce_batches(
            &mut reader,
            &plan,
            opts,
            key,
            selected,
            skip,
            &shuffle_key,
            stop,
            progress,
            tx,
        );
        let mut sent = 0;
        let mut upload_error = None;
        for u in uploaders {
            match u.join().expect("uploader panicked") {
                Ok(n) => sent += n,
                Err(e) => {
                    upload_error.get_or_insert(e);
                }
            }
        }
        // An upload error explains a producer's closed channel; report it first.
        if let Some(e) = upload_error {
            return Err(e);
        }
        let p = produced?;
        Ok((p.batches, sent + p.skipped_records, p.ids))
    });
    progress.end(UPLOAD_PHASE);
    let (batches, records, ids) = result?;
    if stop.load(Ordering::SeqCst) {
        return Err(ClientError::Protocol(
            "the upload was stopped by a failure of the graph pass".into(),
        ));
    }
    if records != expected_rows {
        return Err(ClientError::BadInput {
            path: opts.input.clone(),
            message: format!(
                "the file changed while being uploaded ({expected_rows} rows expected, {records} read)"
            ),
        });
    }
    Ok((batches, records, ids))
}

/// Record batches in flight at once.
const UPLOADERS: usize = 2;

/// Per-job secret for the in-batch shuffle: derived from the advertiser key,
/// so the server cannot undo the shuffle, and stable across runs of the same
/// job, so re-sent batches are identical.
fn shuffle_key(key: &SecretKey, job_id: &str) -> [u8; 32] {
    let text = key.to_file_string();
    Sha256::new()
        .chain_update(b"onboard-client/shuffle-v1\0")
        .chain_update(text.as_bytes())
        .chain_update(b"\0")
        .chain_update(job_id.as_bytes())
        .finalize()
        .into()
}

fn batch_rng(shuffle_key: &[u8; 32], batch_no: u32) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed: [u8; 32] = Sha256::new()
        .chain_update(shuffle_key)
        .chain_update(batch_no.to_be_bytes())
        .finalize()
        .into();
    rand::rngs::StdRng::from_seed(seed)
}

struct Produced {
    batches: u32,
    ids: u64,
    skipped_records: u64,
}

#[allow(clippy::too_many_arguments)]
fn produce_batches(
    reader: &mut RowSource,
    plan: &Plan,
    opts: &MatchOptions,
    key: &SecretKey,
    selected: &RowSet,
    skip: u32,
    shuffle_key: &[u8; 32],
    failed: &AtomicBool,
    progress: &dyn ProgressSink,
    tx: mpsc::SyncSender<Encoded>,
) -> Result<Produced, ClientError> {
    let mut ordinal = 0u64;
    let mut batch_no = 0u32;
    let mut chunk = Chunk::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut ids_total = 0;
    let mut skipped_records = 0;
    loop {
        if failed.load(Ordering::SeqCst) {
            break;
        }
        // The batch's selected rows, read into the buffers of the previous batch.
        let n = read_rows(reader, &mut chunk, opts.batch_size, || {
            ordinal += 1;
            selected.contains(ordinal - 1)
        })?;
        if n == 0 {
            break;
        }
        if batch_no < skip {
            // Acknowledged by an earlier run: count the rows, send nothing.
            skipped_records += n as u64;
            progress.advance(UPLOAD_PHASE, n as u64);
            batch_no += 1;
            continue;
        }
        rows.resize_with(n, Row::default);
        rows.par_iter_mut()
            .zip(&chunk[..n])
            .for_each(|(row, (line, record))| plan.classify_into(row, *line, record));
        if let Some(bad) = rows.iter().find(|r| !r.uploadable()) {
            return Err(ClientError::BadInput {
                path: opts.input.clone(),
                message: format!("line {}: the file changed since the quality pass", bad.line),
            });
        }
        // Shuffled with a seed only the advertiser can compute, so that a
        // batch re-sent after an interruption is byte-identical.
        rows.shuffle(&mut batch_rng(shuffle_key, batch_no));
        let items: Vec<(MatchKind, Digest)> =
            rows.iter().flat_map(|r| r.ids.iter().copied()).collect();
        let points = blind::hash_and_blind(key, &items);
        ids_total += points.len() as u64;
        let mut labels: Vec<String> = Vec::new();
        let mut label_index: HashMap<&str, u16> = HashMap::new();
        let mut refs: Vec<Vec<u16>> = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut v = Vec::with_capacity(r.segments.len());
            for s in &r.segments {
                let i = match label_index.get(s.as_str()) {
                    Some(&i) => i,
                    None => {
                        let i = labels.len() as u16;
                        labels.push(s.clone());
                        label_index.insert(s.as_str(), i);
                        i
                    }
                };
                v.push(i);
            }
            refs.push(v);
        }
        if labels.len() > onboard_protocol::wire::MAX_LABELS {
            return Err(ClientError::Usage(format!(
                "one batch holds more than {} distinct segments; lower the batch size",
                onboard_protocol::wire::MAX_LABELS
            )));
        }
        let mut batch = RecordBatch::new(batch_no, labels.clone())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut at = 0;
        for (r, segs) in rows.iter().zip(&refs) {
            let n = r.ids.len();
            let ids = r
                .ids
                .iter()
                .zip(&points[at..at + n])
                .map(|((k, _), p)| (*k, *p));
            batch
                .push(segs, ids)
                .map_err(|e| ClientError::Protocol(format!("building batch {batch_no}: {e}")))?;
            at += n;
        }
        let encoded = Encoded {
            batch_no,
            records: rows.len() as u64,
            bytes: batch.encode(),
        };
        if tx.send(encoded).is_err() {
            // The uploader stopped; its error is the one to report.
            break;
        }
        batch_no += 1;
    }
    Ok(Produced {
        batches: batch_no,
        ids: ids_total,
        skipped_records,
    })
}

/// PUT one batch; the PUT is idempotent, so transport failures are retried
/// again here beyond the client's own retries before giving up.
fn put_batch(api: &ApiClient, batch_path: &str, batch: &Encoded) -> Result<(), ClientError> {
    let path = format!("{batch_path}/{}", batch.batch_no);
    let body = Body::Frame(batch.bytes.clone());
    let mut tries = 0;
    loop {
        match api.call_json::<BatchAck>(Method::PUT, &path, &body) {
            Ok(ack) => {
                if let Some(r) = ack.records {
                    if r != batch.records {
                        return Err(ClientError::Protocol(format!(
                            "batch {}: the server counted {r} records, {} were sent",
                            batch.batch_no, batch.records
                        )));
                    }
                }
                return Ok(());
            }
            Err(ClientError::Unreachable { .. } | ClientError::Transport { .. }) if tries < 2 => {
                tries += 1;
                tracing::warn!(
                    batch = batch.batch_no,
                    "upload failed, resuming from this batch"
                );
                std::thread::sleep(std::time::Duration::from_secs(1 << tries));
            }
            Err(e) => return Err(e),
        }
    }
}
