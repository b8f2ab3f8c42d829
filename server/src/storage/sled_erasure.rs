//! Erasure on the sled backend: the tombstones of erased persons (their
//! pseudonyms and their `b·P(y)`, in two named trees) and the rewrite that
//! takes a person's pairs out of every advertiser's cache files.
//!
//! Cache files are append-only and one namespace's runs share them, so
//! removing a pair means copying every run of its namespace to a new file
//! generation without it, switching the pointers in one batch, and deleting
//! the old generations: no copy of a removed pair is left in a blob file.

use super::blobs::BlobRef;
use super::sled::SledStore;
use super::sled_codec::{
    be, binary_search_run, cache_base, cache_run_key, key, point_of, CACHE_RUNS, ERASED_PERSONS,
};
use super::*;
use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Batch, Transactional};
use std::collections::BTreeSet;

/// The points of a tombstone's value.
fn tombstone_points(value: &[u8]) -> StoreResult<BTreeSet<[u8; 32]>> {
    if !value.len().is_multiple_of(32) {
        return Err(StoreError::Corrupt(ERASED_PERSONS));
    }
    value
        .chunks_exact(32)
        .map(|c| Ok(point_of(ERASED_PERSONS, c)?.0))
        .collect()
}

fn tombstone_tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Storage(e) => be(e),
        TransactionError::Abort(e) => e,
    }
}

impl SledStore {
    /// The shared side of the cache lock.
    pub(super) fn cache_shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.cache_lock.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `pairs` without those whose `b·P(y)` is tombstoned.
    pub(super) fn without_erased_points(
        &self,
        pairs: &[(PointBytes, PointBytes)],
    ) -> StoreResult<Vec<(PointBytes, PointBytes)>> {
        if self.erased_points.is_empty() {
            return Ok(pairs.to_vec());
        }
        let mut kept = Vec::with_capacity(pairs.len());
        for pair in pairs {
            if !self.is_erased_point(&pair.0)? {
                kept.push(*pair);
            }
        }
        Ok(kept)
    }

    /// Every namespace with a cached run, in order.
    pub(super) fn cache_namespaces(&self) -> StoreResult<Vec<[u8; 16]>> {
        let mut out: Vec<[u8; 16]> = Vec::new();
        for k in self.cache_runs.iter().keys() {
            let k = k.map_err(be)?;
            let ns: [u8; 16] = k
                .get(..16)
                .and_then(|n| n.try_into().ok())
                .ok_or(StoreError::Corrupt(CACHE_RUNS))?;
            if out.last() != Some(&ns) {
                out.push(ns);
            }
        }
        Ok(out)
    }

    /// Delete the cache files of namespaces without any run: bytes no
    /// pointer refers to (a crash between a rewrite's pointer switch and its
    /// deletion of the old files, or inside a `cache_put`).
    pub(super) fn remove_orphan_cache_files(&self, live: &[[u8; 16]]) -> StoreResult<()> {
        let live: BTreeSet<String> = live.iter().map(|ns| cache_base(ns)).collect();
        for base in self.blobs.bases_with_prefix("cache-")? {
            if !live.contains(&base) {
                self.blobs.remove(&base)?;
            }
        }
        Ok(())
    }

    /// Copy a namespace's runs to a new file generation without the pairs
    /// of `points` (sorted), switch the pointers in one batch, delete the
    /// old files; returns the pairs removed. A namespace without such pairs
    /// keeps its runs, and loses only files no pointer refers to.
    pub(super) fn rewrite_cache_without(
        &self,
        ns: &[u8; 16],
        points: &[PointBytes],
    ) -> StoreResult<u64> {
        let base = cache_base(ns);
        let runs = self
            .cache_runs
            .scan_prefix(ns)
            .map(|item| {
                let (k, v) = item.map_err(be)?;
                let r = BlobRef::decode(&v).ok_or(StoreError::Corrupt(CACHE_RUNS))?;
                Ok((k, r))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let mut generations: Vec<u32> = runs.iter().map(|(_, r)| r.generation).collect();
        generations.sort_unstable();
        generations.dedup();
        if !self.cache_runs_hold(&base, &runs, points)? {
            self.blobs.remove_generations_except(&base, &generations)?;
            return Ok(0);
        }
        let next = generations.last().map_or(0, |g| g + 1);
        // Left by a rewrite that crashed before its pointer switch.
        self.blobs.remove_generation(&base, next)?;
        let mut batch = Batch::default();
        let mut fresh = Vec::new();
        let mut removed = 0;
        for (k, r) in &runs {
            batch.remove(k.clone());
            let run = self.blobs.read(&base, r)?;
            if !run.len().is_multiple_of(64) {
                return Err(StoreError::Corrupt(CACHE_RUNS));
            }
            let mut kept = Vec::with_capacity(run.len());
            for pair in run.chunks_exact(64) {
                if points
                    .binary_search_by(|p| p.0[..].cmp(&pair[..32]))
                    .is_ok()
                {
                    removed += 1;
                } else {
                    kept.extend_from_slice(pair);
                }
            }
            if !kept.is_empty() {
                let pointer = self.blobs.append_unsynced(&base, next, &kept)?;
                fresh.push((cache_run_key(ns, &kept), pointer.encode()));
            }
        }
        let keep = if fresh.is_empty() {
            Vec::new()
        } else {
            self.blobs.sync(&base, next)?;
            vec![next]
        };
        // Inserts after removes: a rewritten run may keep its old key.
        for (k, pointer) in &fresh {
            batch.insert(k.as_slice(), &pointer[..]);
        }
        self.cache_runs.apply_batch(batch).map_err(be)?;
        self.db.flush().map_err(be)?;
        self.blobs.remove_generations_except(&base, &keep)?;
        Ok(removed)
    }

    /// Does any of a namespace's runs hold one of `points`?
    fn cache_runs_hold(
        &self,
        base: &str,
        runs: &[(::sled::IVec, BlobRef)],
        points: &[PointBytes],
    ) -> StoreResult<bool> {
        for (_, r) in runs {
            let run = self.blobs.read(base, r)?;
            let n = run.len() / 64;
            if points.iter().any(|p| binary_search_run(&run, n, &p.0)) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl ErasureRepo for SledStore {
    fn add_erasure(
        &self,
        person: &PersonKey,
        points: &[PointBytes],
    ) -> StoreResult<Vec<PointBytes>> {
        let all = (&self.erased_persons, &self.erased_points)
            .transaction(|(persons, erased_points)| {
                let mut all = match persons.get(person)? {
                    Some(v) => tombstone_points(&v).map_err(ConflictableTransactionError::Abort)?,
                    None => BTreeSet::new(),
                };
                all.extend(points.iter().map(|p| p.0));
                let value: Vec<u8> = all.iter().flatten().copied().collect();
                persons.insert(&person[..], value)?;
                for p in &all {
                    erased_points.insert(key(&[p, person]), &[][..])?;
                }
                Ok(all)
            })
            .map_err(tombstone_tx_err)?;
        self.db.flush().map_err(be)?;
        Ok(all.into_iter().map(PointBytes).collect())
    }
    fn is_erased_person(&self, person: &PersonKey) -> StoreResult<bool> {
        self.erased_persons.contains_key(person).map_err(be)
    }
    fn is_erased_point(&self, point: &PointBytes) -> StoreResult<bool> {
        match self.erased_points.scan_prefix(point.0).next() {
            None => Ok(false),
            Some(item) => item.map(|_| true).map_err(be),
        }
    }
    fn erased_persons_among(&self, persons: &[PersonKey]) -> StoreResult<Vec<bool>> {
        // No tombstone at all, the usual case: no look-up per row of a batch.
        if self.erased_persons.is_empty() {
            return Ok(vec![false; persons.len()]);
        }
        persons.iter().map(|p| self.is_erased_person(p)).collect()
    }
    fn erased_points_among(&self, points: &[PointBytes]) -> StoreResult<Vec<bool>> {
        if self.erased_points.is_empty() {
            return Ok(vec![false; points.len()]);
        }
        points.iter().map(|p| self.is_erased_point(p)).collect()
    }
    fn lift_erasure(&self, person: &PersonKey) -> StoreResult<bool> {
        let lifted = (&self.erased_persons, &self.erased_points)
            .transaction(|(persons, erased_points)| {
                let Some(v) = persons.remove(&person[..])? else {
                    return Ok(false);
                };
                let points = tombstone_points(&v).map_err(ConflictableTransactionError::Abort)?;
                for p in &points {
                    erased_points.remove(key(&[p, person]))?;
                }
                Ok(true)
            })
            .map_err(tombstone_tx_err)?;
        self.db.flush().map_err(be)?;
        Ok(lifted)
    }
    fn erasure_count(&self) -> StoreResult<u64> {
        Ok(self.erased_persons.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sled::blob_dir;

    fn point(i: u8) -> PointBytes {
        PointBytes([i; 32])
    }

    fn pair(i: u8) -> (PointBytes, PointBytes) {
        let mut ab = [i; 32];
        ab[0] = 0xab;
        (point(i), PointBytes(ab))
    }

    fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(blob_dir(dir))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        out.sort();
        out
    }

    fn holds(bytes: &[u8], needle: &[u8]) -> bool {
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn tombstones_grow_and_lift_per_person() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        let (p, q) = ([1u8; 16], [2u8; 16]);
        assert_eq!(
            store.add_erasure(&p, &[point(5), point(3)]).unwrap(),
            [point(3), point(5)]
        );
        assert_eq!(
            store.add_erasure(&p, &[point(9)]).unwrap(),
            [point(3), point(5), point(9)],
            "a retry adds to the tombstone"
        );
        store.add_erasure(&q, &[point(5)]).unwrap();
        assert_eq!(store.erasure_count().unwrap(), 2);
        assert!(store.is_erased_person(&p).unwrap());
        assert!(store.is_erased_point(&point(3)).unwrap());
        assert!(!store.is_erased_point(&point(4)).unwrap());
        assert!(store.lift_erasure(&p).unwrap());
        assert!(!store.lift_erasure(&p).unwrap());
        assert!(!store.is_erased_person(&p).unwrap());
        assert!(!store.is_erased_point(&point(3)).unwrap());
        assert!(store.is_erased_point(&point(5)).unwrap(), "still q's");
        assert_eq!(store.erasure_count().unwrap(), 1);
    }

    #[test]
    fn removed_pairs_leave_no_copy_in_the_cache_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let store = SledStore::open(&db).unwrap();
        let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        store
            .cache_put(&a, &[pair(10), pair(20), pair(30)])
            .unwrap();
        store.cache_put(&a, &[pair(20), pair(40)]).unwrap();
        store.cache_put(&a, &[pair(50)]).unwrap();
        store.cache_put(&b, &[pair(20)]).unwrap();
        store.cache_put(&c, &[pair(60)]).unwrap();
        // Leftovers of crashes: an old generation of `a` after a pointer
        // switch, and the file of a namespace whose runs are all gone.
        store
            .blobs
            .append(&cache_base(&a), 7, &[pair(10).0 .0, pair(10).1 .0].concat())
            .unwrap();
        store
            .blobs
            .append(&cache_base(&[4u8; 16]), 0, &pair(10).1 .0)
            .unwrap();

        assert_eq!(
            store.cache_remove_points(&[point(10), point(20)]).unwrap(),
            4
        );

        for (name, bytes) in files(&db) {
            for p in [pair(10), pair(20)] {
                assert!(!holds(&bytes, &p.0 .0) && !holds(&bytes, &p.1 .0), "{name}");
            }
        }
        assert_eq!(
            files(&db).iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
            [
                format!("{}.1", cache_base(&a)),
                format!("{}.0", cache_base(&c))
            ],
            "`b` lost its only run, `c` kept its file"
        );
        let runs = store.cache_runs_after(&a, None, 10).unwrap();
        let mut left: Vec<_> = runs.iter().flat_map(|r| r.1.clone()).collect();
        left.sort_unstable_by_key(|p| p.0 .0);
        assert_eq!(left, [pair(30), pair(40), pair(50)]);
        for (k, pairs) in &runs {
            assert_eq!(
                &k[..32],
                &pairs[0].0 .0,
                "a run's key starts with its first point"
            );
        }
        assert!(store.cache_run_keys(&b).unwrap().is_empty());
        // Later writes go on beside the rewritten runs.
        store.cache_put(&a, &[pair(70)]).unwrap();
        assert!(store.cache_contains(&a, &point(70)).unwrap());
        assert!(store.cache_contains(&a, &point(30)).unwrap());
        assert_eq!(store.cache_remove_points(&[point(70)]).unwrap(), 1);
        assert!(store.cache_contains(&a, &point(50)).unwrap());
        assert_eq!(files(&db).len(), 2);
    }

    #[test]
    fn erased_points_are_not_cached_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        store.add_erasure(&[1u8; 16], &[point(10)]).unwrap();
        store.cache_put(&[9u8; 16], &[pair(10), pair(11)]).unwrap();
        store.cache_put(&[9u8; 16], &[pair(10)]).unwrap();
        assert!(!store.cache_contains(&[9u8; 16], &point(10)).unwrap());
        assert!(store.cache_contains(&[9u8; 16], &point(11)).unwrap());
        assert_eq!(store.cache_run_keys(&[9u8; 16]).unwrap().len(), 1);
    }
}
