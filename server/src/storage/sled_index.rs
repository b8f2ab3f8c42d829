//! Secondary indexes of the sled backend, so that job creation, listings,
//! the difference check, clean-up and `/metrics` look records up by key
//! instead of scanning every job and audience ever made:
//!
//! - jobs: `a 0 advertiser 0 id` (an advertiser's jobs) and
//!   `s 0 status 0 touched(8, BE) id` (by status, oldest touch first);
//! - audiences: `d 0 destination 0 id`, `p 0 advertiser 0 destination 0 id`,
//!   `e 0 expires(8, BE) id` and, while not pulled, `u 0 id`.
//!
//! Index entries are written in the same sled transaction as the record
//! they point to, so a crash never leaves them apart; a store written
//! before they existed gets them rebuilt from the records when it is opened.

use super::sled::SledStore;
use super::sled_codec::{be, from_json, key};
use super::{Audience, Job, StoreError, StoreResult};
use ::sled::transaction::{ConflictableTransactionError, TransactionalTree};
use ::sled::Tree;

/// What a transaction body returns.
type TxResult<T> = Result<T, ConflictableTransactionError<()>>;

/// Index entries of a job.
pub(super) fn job_keys(job: &Job) -> Vec<Vec<u8>> {
    vec![
        key(&[b"a\0", job.advertiser.as_bytes(), b"\0", job.id.as_bytes()]),
        key(&[
            b"s\0",
            job.status.as_bytes(),
            b"\0",
            &job.touched.to_be_bytes(),
            job.id.as_bytes(),
        ]),
    ]
}

/// Index entries of an audience.
pub(super) fn audience_keys(a: &Audience) -> Vec<Vec<u8>> {
    let mut keys = vec![
        key(&[b"d\0", a.destination.as_bytes(), b"\0", a.id.as_bytes()]),
        key(&[
            b"p\0",
            a.advertiser.as_bytes(),
            b"\0",
            a.destination.as_bytes(),
            b"\0",
            a.id.as_bytes(),
        ]),
        key(&[b"e\0", &a.expires_unix.to_be_bytes(), a.id.as_bytes()]),
    ];
    if !a.pulled {
        keys.push(key(&[b"u\0", a.id.as_bytes()]));
    }
    keys
}

/// Replace `old` index entries by `new` ones inside a transaction.
pub(super) fn reindex(idx: &TransactionalTree, old: &[Vec<u8>], new: &[Vec<u8>]) -> TxResult<()> {
    for k in old.iter().filter(|k| !new.contains(k)) {
        idx.remove(k.as_slice())?;
    }
    for k in new {
        idx.insert(k.as_slice(), &[] as &[u8])?;
    }
    Ok(())
}

/// Write a JSON record and move its index entries, in a transaction; the
/// previous version of the record (if any) says which entries to drop.
pub(super) fn put_indexed<T: serde::de::DeserializeOwned>(
    records: &TransactionalTree,
    idx: &TransactionalTree,
    id: &str,
    value: &[u8],
    new_keys: &[Vec<u8>],
    keys_of: impl Fn(&T) -> Vec<Vec<u8>>,
) -> TxResult<()> {
    let old_keys = match records.insert(id.as_bytes(), value)? {
        // An unreadable old record aborts: its index entries are unknown.
        Some(old) => keys_of(
            &serde_json::from_slice(&old).map_err(|_| ConflictableTransactionError::Abort(()))?,
        ),
        None => Vec::new(),
    };
    reindex(idx, &old_keys, new_keys)
}

/// Remove a record and its index entries, in a transaction.
pub(super) fn remove_indexed<T: serde::de::DeserializeOwned>(
    records: &TransactionalTree,
    idx: &TransactionalTree,
    id: &str,
    keys_of: impl Fn(&T) -> Vec<Vec<u8>>,
) -> TxResult<()> {
    if let Some(old) = records.remove(id.as_bytes())? {
        let old: T =
            serde_json::from_slice(&old).map_err(|_| ConflictableTransactionError::Abort(()))?;
        for k in keys_of(&old) {
            idx.remove(k)?;
        }
    }
    Ok(())
}

/// The record IDs of index entries under `prefix`; `skip` bytes after the
/// prefix (a timestamp) come before the ID. `stop` ends the scan early
/// (entries are in key order).
pub(super) fn ids_under(
    idx: &Tree,
    prefix: &[u8],
    skip: usize,
    mut stop: impl FnMut(&[u8]) -> bool,
) -> StoreResult<Vec<String>> {
    let mut ids = Vec::new();
    for k in idx.scan_prefix(prefix).keys() {
        let k = k.map_err(be)?;
        let rest = k.get(prefix.len()..).unwrap_or_default();
        if stop(rest) {
            break;
        }
        let id = rest
            .get(skip..)
            .and_then(|id| std::str::from_utf8(id).ok())
            .ok_or(StoreError::Corrupt("record index"))?;
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// The big-endian timestamp at the start of an index entry's rest.
pub(super) fn time_of(rest: &[u8]) -> u64 {
    rest.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX)
}

/// Load the records of `ids` (an entry whose record is gone is skipped).
pub(super) fn load<T: serde::de::DeserializeOwned>(
    records: &Tree,
    name: &'static str,
    ids: Vec<String>,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(v) = records.get(id.as_bytes()).map_err(be)? {
            out.push(from_json(name, &v)?);
        }
    }
    Ok(out)
}

impl SledStore {
    /// Build the indexes of a store written before they existed (or whose
    /// index trees were lost): only when an index is empty and its records
    /// are not.
    pub(super) fn rebuild_indexes(&self) -> StoreResult<()> {
        if self.job_index.is_empty() && !self.jobs.is_empty() {
            let jobs: Vec<Job> = Self::all(&self.jobs, "jobs")?;
            rebuild(&self.job_index, jobs.iter().flat_map(job_keys))?;
        }
        if self.audience_index.is_empty() && !self.audiences.is_empty() {
            let audiences: Vec<Audience> = Self::all(&self.audiences, "audiences")?;
            rebuild(
                &self.audience_index,
                audiences.iter().flat_map(audience_keys),
            )?;
        }
        Ok(())
    }
}

fn rebuild(idx: &Tree, keys: impl Iterator<Item = Vec<u8>>) -> StoreResult<()> {
    let mut batch = ::sled::Batch::default();
    for k in keys {
        batch.insert(k, &[] as &[u8]);
    }
    idx.apply_batch(batch).map_err(be)?;
    idx.flush().map_err(be)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{AudienceRepo, JobRepo};

    fn job(id: &str, advertiser: &str, status: &str, touched: u64) -> Job {
        Job {
            id: id.into(),
            advertiser: advertiser.into(),
            destination: "dsp".into(),
            kinds: vec!["email".into()],
            key_fingerprint: String::new(),
            graph_version: 1,
            status: status.into(),
            created: String::new(),
            touched,
            batches: 0,
            records: 0,
            pass: Default::default(),
            report: None,
            new_audience: false,
        }
    }

    fn audience(id: &str, advertiser: &str, destination: &str, expires: u64) -> Audience {
        Audience {
            id: id.into(),
            segment: "s".into(),
            advertiser: advertiser.into(),
            destination: destination.into(),
            job_id: "j".into(),
            size: 0,
            created: String::new(),
            expires: String::new(),
            expires_unix: expires,
            pulled: false,
            version: 1,
            refreshed: None,
            changes_from: None,
            prior: None,
        }
    }

    fn ids<T>(records: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
        let mut v: Vec<String> = records.iter().map(|r| id(r).to_string()).collect();
        v.sort();
        v
    }

    fn check_jobs(store: &SledStore) {
        assert_eq!(
            ids(&store.jobs_of("acme").unwrap(), |j| &j.id),
            ["j1", "j2"]
        );
        assert_eq!(ids(&store.jobs_of("other").unwrap(), |j| &j.id), ["j3"]);
        // j1 moved from open to finished: only its current status is indexed.
        let open = store.jobs_touched_before("open", 100, 10).unwrap();
        assert_eq!(ids(&open, |j| &j.id), ["j2", "j3"]);
        let open = store.jobs_touched_before("open", 55, 10).unwrap();
        assert_eq!(ids(&open, |j| &j.id), ["j2"]);
        assert!(store
            .jobs_touched_before("open", 49, 10)
            .unwrap()
            .is_empty());
        let counts = store.job_counts().unwrap();
        assert_eq!(counts.get("open"), Some(&2));
        assert_eq!(counts.get("finished"), Some(&1));
        assert_eq!(store.jobs_touched_before("open", 1000, 1).unwrap().len(), 1);
    }

    fn check_audiences(store: &SledStore) {
        let of = |a: &str, d: &str| ids(&store.audiences_of(a, d).unwrap(), |x| &x.id);
        assert_eq!(of("acme", "dsp"), ["a1", "a2"]);
        assert_eq!(of("acme", "dsp2"), ["a3"]);
        assert!(of("acm", "edsp").is_empty(), "names are delimited");
        let dest = ids(&store.audiences_for_destination("dsp").unwrap(), |x| &x.id);
        assert_eq!(dest, ["a1", "a2"]);
        assert_eq!(
            ids(&store.unpulled_audiences().unwrap(), |x| &x.id),
            ["a2", "a3"]
        );
        assert_eq!(
            ids(&store.audiences_expiring_by(200).unwrap(), |x| &x.id),
            ["a1", "a2"]
        );
        assert_eq!(store.live_audience_count(150).unwrap(), 2);
        assert_eq!(store.live_audience_count(300).unwrap(), 0);
    }

    #[test]
    fn indexes_follow_the_records_and_are_rebuilt_for_old_stores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = SledStore::open(&path).unwrap();
            store.put_job(&job("j1", "acme", "open", 10)).unwrap();
            store.put_job(&job("j2", "acme", "open", 50)).unwrap();
            store.put_job(&job("j3", "other", "open", 60)).unwrap();
            store.put_job(&job("j1", "acme", "finished", 70)).unwrap();
            store.put_job(&job("gone", "acme", "failed", 5)).unwrap();
            store.delete_job("gone").unwrap();
            for a in [
                audience("a1", "acme", "dsp", 100),
                audience("a2", "acme", "dsp", 200),
                audience("a3", "acme", "dsp2", 300),
                audience("a4", "acme", "dsp", 400),
            ] {
                store.create_audience(&a, &[]).unwrap();
            }
            store
                .put_audience(&Audience {
                    pulled: true,
                    ..audience("a1", "acme", "dsp", 100)
                })
                .unwrap();
            store.delete_audience("a4").unwrap();
            check_jobs(&store);
            check_audiences(&store);
            // A store written before the indexes existed.
            store.job_index.clear().unwrap();
            store.audience_index.clear().unwrap();
            store.db.flush().unwrap();
        }
        let reopened = SledStore::open(&path).unwrap();
        check_jobs(&reopened);
        check_audiences(&reopened);
    }
}
