//! Server key rotation on the sled backend: the rotation record in `meta`,
//! and the rewrites of opt-outs, tombstones and cache namespaces, each one
//! sled transaction over its trees and `meta` (the record), so a step and
//! its mark are written together.

use super::blobs::BlobRef;
use super::sled::SledStore;
use super::sled_codec::CACHE_RUNS;
use super::sled_codec::{be, cache_base, cache_run_key, from_json, json, key, point_of, tx_err};
use super::*;
use ::sled::transaction::TransactionError;
use ::sled::{IVec, Transactional};

/// Tombstones that fail to decode.
const ERASED_TREE: StoreError = StoreError::Corrupt("erased_persons");

/// The rotation record's key in `meta`.
const ROTATION_KEY: &[u8] = b"rotation";
/// The key fingerprints' key in `meta`.
const FINGERPRINTS_KEY: &[u8] = b"key-fingerprints";

fn rotation_tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Storage(e) => be(e),
        TransactionError::Abort(e) => e,
    }
}

fn keys_of(tree: &::sled::Tree) -> StoreResult<Vec<IVec>> {
    tree.iter().keys().map(|k| k.map_err(be)).collect()
}

impl RotationRepo for SledStore {
    fn rotation(&self) -> StoreResult<Option<RotationRecord>> {
        self.meta
            .get(ROTATION_KEY)
            .map_err(be)?
            .map(|v| from_json("meta", &v))
            .transpose()
    }

    fn put_rotation(&self, rec: Option<&RotationRecord>) -> StoreResult<()> {
        match rec {
            Some(rec) => self.meta.insert(ROTATION_KEY, json(rec)?),
            None => self.meta.remove(ROTATION_KEY),
        }
        .map_err(be)?;
        self.db.flush().map_err(be)?;
        Ok(())
    }

    fn cached_namespaces(&self) -> StoreResult<Vec<[u8; 16]>> {
        self.cache_namespaces()
    }

    fn replace_optouts(&self, points: &[PointBytes], rec: &RotationRecord) -> StoreResult<()> {
        let old = keys_of(&self.optouts)?;
        let rec = json(rec)?;
        (&self.optouts, &self.meta)
            .transaction(|(optouts, meta)| {
                for k in &old {
                    optouts.remove(k)?;
                }
                for p in points {
                    optouts.insert(&p.0[..], &[][..])?;
                }
                meta.insert(ROTATION_KEY, rec.as_slice())?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.db.flush().map_err(be)?;
        Ok(())
    }

    fn tombstones(&self) -> StoreResult<Vec<(PersonKey, Vec<PointBytes>)>> {
        self.erased_persons
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(be)?;
                let person: PersonKey = k[..].try_into().map_err(|_| ERASED_TREE)?;
                if !v.len().is_multiple_of(32) {
                    return Err(ERASED_TREE);
                }
                let points = v
                    .chunks_exact(32)
                    .map(|c| point_of("erased_persons", c))
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok((person, points))
            })
            .collect()
    }

    fn replace_tombstones(
        &self,
        tombstones: &[(PersonKey, Vec<PointBytes>)],
        rec: &RotationRecord,
    ) -> StoreResult<()> {
        let old_points = keys_of(&self.erased_points)?;
        let rec = json(rec)?;
        (&self.erased_persons, &self.erased_points, &self.meta)
            .transaction(|(persons, erased_points, meta)| {
                for k in &old_points {
                    erased_points.remove(k)?;
                }
                for (person, points) in tombstones {
                    let value: Vec<u8> = points.iter().flat_map(|p| p.0).collect();
                    persons.insert(&person[..], value)?;
                    for p in points {
                        erased_points.insert(key(&[&p.0, person]), &[][..])?;
                    }
                }
                meta.insert(ROTATION_KEY, rec.as_slice())?;
                Ok(())
            })
            .map_err(rotation_tx_err)?;
        self.db.flush().map_err(be)?;
        Ok(())
    }

    fn replace_cache(
        &self,
        ns: &[u8; 16],
        mut pairs: Vec<(PointBytes, PointBytes)>,
        rec: &RotationRecord,
    ) -> StoreResult<()> {
        let _exclusive = self.cache_lock.write().unwrap_or_else(|p| p.into_inner());
        let base = cache_base(ns);
        let mut old = Vec::new();
        let mut next = 0;
        for item in self.cache_runs.scan_prefix(ns) {
            let (k, v) = item.map_err(be)?;
            let r = BlobRef::decode(&v).ok_or(StoreError::Corrupt(CACHE_RUNS))?;
            next = next.max(r.generation + 1);
            old.push(k);
        }
        // Left by a replacement that crashed before its switch.
        self.blobs.remove_generation(&base, next)?;
        pairs.sort_unstable_by_key(|p| p.0 .0);
        pairs.dedup_by(|a, b| a.0 == b.0);
        let fresh = if pairs.is_empty() {
            None
        } else {
            let value: Vec<u8> = pairs
                .iter()
                .flat_map(|(b, ab)| b.0.into_iter().chain(ab.0))
                .collect();
            let pointer = self.blobs.append(&base, next, &value)?;
            Some((cache_run_key(ns, &value), pointer.encode()))
        };
        let rec = json(rec)?;
        (&self.cache_runs, &self.meta)
            .transaction(|(runs, meta)| {
                for k in &old {
                    runs.remove(k)?;
                }
                if let Some((k, pointer)) = &fresh {
                    runs.insert(k.as_slice(), &pointer[..])?;
                }
                meta.insert(ROTATION_KEY, rec.as_slice())?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.db.flush().map_err(be)?;
        let keep: Vec<u32> = fresh.iter().map(|_| next).collect();
        self.blobs.remove_generations_except(&base, &keep)?;
        Ok(())
    }

    fn reseal_members(&self, id: &str, reseal: &Reseal<'_>) -> StoreResult<Option<u64>> {
        self.reseal_audience_members(id, reseal)
    }

    fn key_fingerprints(&self) -> StoreResult<Option<KeyFingerprints>> {
        self.meta
            .get(FINGERPRINTS_KEY)
            .map_err(be)?
            .map(|v| from_json("meta", &v))
            .transpose()
    }

    fn put_key_fingerprints(&self, f: Option<&KeyFingerprints>) -> StoreResult<()> {
        match f {
            Some(f) => self.meta.insert(FINGERPRINTS_KEY, json(f)?),
            None => self.meta.remove(FINGERPRINTS_KEY),
        }
        .map_err(be)?;
        self.db.flush().map_err(be)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(i: u8) -> PointBytes {
        PointBytes([i; 32])
    }

    fn rec(done: &[&str]) -> RotationRecord {
        RotationRecord {
            id: "r-1".into(),
            kind: RotationKind::ServerKey,
            new_version: Some(7),
            done: done.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn each_replacement_saves_its_mark_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.rotation().unwrap(), None);
        store.add_optouts(&[point(1), point(2)]).unwrap();
        store
            .replace_optouts(&[point(3)], &rec(&["optouts"]))
            .unwrap();
        assert_eq!(store.optouts().unwrap(), vec![point(3)]);
        assert_eq!(store.rotation().unwrap(), Some(rec(&["optouts"])));

        store.add_erasure(&[9; 16], &[point(4), point(5)]).unwrap();
        store
            .replace_tombstones(&[([9; 16], vec![point(6)])], &rec(&["tombstones"]))
            .unwrap();
        assert!(!store.is_erased_point(&point(4)).unwrap());
        assert!(store.is_erased_point(&point(6)).unwrap());
        assert_eq!(store.tombstones().unwrap(), vec![([9; 16], vec![point(6)])]);

        let ns = [1u8; 16];
        store.cache_put(&ns, &[(point(10), point(11))]).unwrap();
        store.cache_put(&ns, &[(point(12), point(13))]).unwrap();
        assert_eq!(store.cached_namespaces().unwrap(), vec![ns]);
        store
            .replace_cache(
                &ns,
                vec![(point(22), point(23)), (point(20), point(21))],
                &rec(&["cache"]),
            )
            .unwrap();
        let keys = store.cache_run_keys(&ns).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            store.cache_run(&ns, &keys[0]).unwrap(),
            vec![(point(20), point(21)), (point(22), point(23))]
        );
        // No file keeps the replaced pairs.
        for e in std::fs::read_dir(crate::storage::sled::blob_dir(&dir.path().join("db"))).unwrap()
        {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            assert!(!bytes.windows(32).any(|w| w == [10u8; 32]));
        }
        store.put_rotation(None).unwrap();
        assert_eq!(store.rotation().unwrap(), None);
    }
}
