//! The `(b·P(y), a·b·P(y))` cache on PostgreSQL, stored as runs like the
//! sled store's blob runs: one row per cached graph-pass page, its pairs
//! sorted by `b·P(y)` and packed into one `bytea` (64 bytes a pair). A page
//! is cached with one insert instead of one B-tree insert per pair, and the
//! finish reads a namespace as a few hundred rows instead of millions.
//!
//! A run's key is its first and last `b·P(y)` and a digest of its points, so
//! keys sort by first point (the merge's order) and a page cached twice (a
//! retried request, two jobs of one key) is stored once.

use super::*;
use sha2::{Digest as _, Sha256};

/// Bytes of one packed pair.
const PAIR: usize = 64;

/// Pairs per run written by a key rotation (a graph-pass page is one run).
const REWRITE_RUN_PAIRS: usize = 65_536;

/// Insert runs `(key, pairs)` of namespace `$1` from two arrays.
pub(super) const INSERT_RUNS: &str = "INSERT INTO cache_runs (ns, key, pairs)
     SELECT $1, k, p FROM unnest($2::bytea[], $3::bytea[]) AS u(k, p)
     ON CONFLICT DO NOTHING";

/// Serialises erasures against caching: a page cached at the same moment
/// as an erasure either sees the erased point or is removed by it.
const ERASURE_LOCK: i64 = 0x6f6e_626f_6172_6401;

/// Pack sorted pairs into a run row: `(key, pairs)`.
fn pack(pairs: &[(PointBytes, PointBytes)]) -> (Vec<u8>, Vec<u8>) {
    let mut packed = Vec::with_capacity(pairs.len() * PAIR);
    let mut points = Sha256::new();
    for (bpy, abpy) in pairs {
        packed.extend_from_slice(&bpy.0);
        packed.extend_from_slice(&abpy.0);
        points.update(bpy.0);
    }
    let first = pairs.first().map_or([0; 32], |p| p.0 .0);
    let last = pairs.last().map_or([0; 32], |p| p.0 .0);
    let key = [&first[..], &last[..], &points.finalize()[..16]].concat();
    (key, packed)
}

fn unpack(packed: &[u8]) -> StoreResult<Vec<(PointBytes, PointBytes)>> {
    if !packed.len().is_multiple_of(PAIR) {
        return Err(StoreError::Corrupt("cache_runs"));
    }
    packed
        .chunks_exact(PAIR)
        .map(|pair| {
            let (b, ab) = pair.split_at(32);
            Ok((point_of("cache_runs", b)?, point_of("cache_runs", ab)?))
        })
        .collect()
}

/// Runs of any pairs (a key rotation's rewrite): sorted, deduplicated.
pub(super) fn runs_of(pairs: Vec<(PointBytes, PointBytes)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    sorted_unique(pairs)
        .chunks(REWRITE_RUN_PAIRS)
        .map(pack)
        .collect()
}

/// Pairs sorted by `b·P(y)`, the first of each `b·P(y)` kept.
fn sorted_unique(mut pairs: Vec<(PointBytes, PointBytes)>) -> Vec<(PointBytes, PointBytes)> {
    pairs.sort_by_key(|p| p.0 .0);
    pairs.dedup_by(|a, b| a.0 == b.0);
    pairs
}

impl PgStore {
    /// Which of `points` are erased.
    async fn erased_among(
        tx: &tokio_postgres::Transaction<'_>,
        points: &[&[u8]],
    ) -> StoreResult<std::collections::HashSet<Vec<u8>>> {
        let rows = tx
            .query(
                "SELECT point FROM erased_points WHERE point = ANY($1::bytea[])",
                &[&points],
            )
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect())
    }

    /// Take [`ERASURE_LOCK`] until the transaction ends: shared by cache
    /// writes (side by side), exclusive for an erasure's rewrite of the runs.
    async fn lock_erasures(
        tx: &tokio_postgres::Transaction<'_>,
        sharing: Sharing,
    ) -> StoreResult<()> {
        let sql = match sharing {
            Sharing::Shared => "SELECT pg_advisory_xact_lock_shared($1)",
            Sharing::Exclusive => "SELECT pg_advisory_xact_lock($1)",
        };
        tx.execute(sql, &[&ERASURE_LOCK]).await.map_err(db_err)?;
        Ok(())
    }

    /// Insert packed runs of a namespace (in the caller's transaction).
    async fn insert_runs(
        tx: &tokio_postgres::Transaction<'_>,
        ns: &[u8; 16],
        runs: &[(Vec<u8>, Vec<u8>)],
    ) -> StoreResult<()> {
        let keys: Vec<&[u8]> = runs.iter().map(|r| r.0.as_slice()).collect();
        let packed: Vec<&[u8]> = runs.iter().map(|r| r.1.as_slice()).collect();
        tx.execute(INSERT_RUNS, &[&&ns[..], &keys, &packed])
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// A namespace's runs that may hold `bpy` (first point ≤ `bpy` ≤ last).
    fn runs_around(&self, ns: Option<&[u8; 16]>, bpy: &PointBytes) -> StoreResult<Vec<Row>> {
        let upper = last_key_from(bpy);
        let sql = "SELECT ns, key, pairs FROM cache_runs
                   WHERE ($1::bytea IS NULL OR ns = $1) AND key <= $2
                     AND substring(key FROM 33 FOR 32) >= $3";
        self.query(sql, &[&ns.map(|n| &n[..]), &upper, &&bpy.0[..]])
    }
}

type Row = tokio_postgres::Row;

/// How [`PgStore::lock_erasures`] takes the lock.
enum Sharing {
    Shared,
    Exclusive,
}

/// The greatest run key whose run starts at `bpy`: runs that may hold `bpy`
/// have keys up to it (keys begin with the run's first point).
fn last_key_from(bpy: &PointBytes) -> Vec<u8> {
    [&bpy.0[..], &[0xff; 48][..]].concat()
}

fn run_holds(packed: &[u8], bpy: &PointBytes) -> bool {
    packed
        .chunks_exact(PAIR)
        .collect::<Vec<_>>()
        .binary_search_by(|pair| pair[..32].cmp(&bpy.0[..]))
        .is_ok()
}

impl CacheRepo for PgStore {
    fn cache_contains(&self, ns: &[u8; 16], bpy: &PointBytes) -> StoreResult<bool> {
        Ok(self
            .runs_around(Some(ns), bpy)?
            .iter()
            .any(|r| run_holds(r.get(2), bpy)))
    }
    fn cache_put(&self, ns: &[u8; 16], pairs: &[(PointBytes, PointBytes)]) -> StoreResult<()> {
        let pairs = sorted_unique(pairs.to_vec());
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            Self::lock_erasures(&tx, Sharing::Shared).await?;
            // Erased points are dropped under the lock an erasure takes.
            let bpys: Vec<&[u8]> = pairs.iter().map(|p| &p.0 .0[..]).collect();
            let erased = Self::erased_among(&tx, &bpys).await?;
            let kept: Vec<_> = pairs
                .iter()
                .filter(|p| !erased.contains(&p.0 .0[..]))
                .copied()
                .collect();
            if !kept.is_empty() {
                Self::insert_runs(&tx, ns, &[pack(&kept)]).await?;
            }
            tx.commit().await.map_err(db_err)
        })
    }
    fn cache_remove_points(&self, points: &[PointBytes]) -> StoreResult<u64> {
        // Rare (erasures): every namespace's runs around each point are
        // rewritten without it, under the lock that orders them with caching.
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            Self::lock_erasures(&tx, Sharing::Exclusive).await?;
            let gone: std::collections::HashSet<&[u8]> = points.iter().map(|p| &p.0[..]).collect();
            let mut removed = 0u64;
            for point in points {
                let upper = last_key_from(point);
                let rows = tx
                    .query(
                        "SELECT ns, key, pairs FROM cache_runs
                         WHERE key <= $1 AND substring(key FROM 33 FOR 32) >= $2
                         FOR UPDATE",
                        &[&upper, &&point.0[..]],
                    )
                    .await
                    .map_err(db_err)?;
                for row in rows.iter().filter(|r| run_holds(r.get(2), point)) {
                    let ns: &[u8] = row.get(0);
                    let ns =
                        <[u8; 16]>::try_from(ns).map_err(|_| StoreError::Corrupt("cache_runs"))?;
                    let pairs = unpack(row.get(2))?;
                    let kept: Vec<_> = pairs
                        .iter()
                        .filter(|p| !gone.contains(&p.0 .0[..]))
                        .copied()
                        .collect();
                    removed += (pairs.len() - kept.len()) as u64;
                    tx.execute(
                        "DELETE FROM cache_runs WHERE ns = $1 AND key = $2",
                        &[&&ns[..], &row.get::<_, &[u8]>(1)],
                    )
                    .await
                    .map_err(db_err)?;
                    if !kept.is_empty() {
                        Self::insert_runs(&tx, &ns, &[pack(&kept)]).await?;
                    }
                }
            }
            tx.commit().await.map_err(db_err)?;
            Ok(removed)
        })
    }
    fn cache_runs_after(
        &self,
        ns: &[u8; 16],
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<CacheRun>> {
        let after: &[u8] = after.unwrap_or(&[]);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            "SELECT key, pairs FROM cache_runs WHERE ns = $1 AND key > $2 ORDER BY key LIMIT $3",
            &[&&ns[..], &after, &limit],
        )?
        .iter()
        .map(|r| Ok((r.get::<_, Vec<u8>>(0), unpack(r.get(1))?)))
        .collect()
    }
    fn cache_run_keys(&self, ns: &[u8; 16]) -> StoreResult<Vec<Vec<u8>>> {
        Ok(self
            .query(
                "SELECT key FROM cache_runs WHERE ns = $1 ORDER BY key",
                &[&&ns[..]],
            )?
            .iter()
            .map(|r| r.get::<_, Vec<u8>>(0))
            .collect())
    }
    fn cache_run(
        &self,
        ns: &[u8; 16],
        run_key: &[u8],
    ) -> StoreResult<Vec<(PointBytes, PointBytes)>> {
        match self
            .query(
                "SELECT pairs FROM cache_runs WHERE ns = $1 AND key = $2",
                &[&&ns[..], &run_key],
            )?
            .first()
        {
            Some(r) => unpack(r.get(0)),
            None => Ok(Vec::new()),
        }
    }
    fn set_cache_complete(&self, ns: &[u8; 16], version: u64, kind: MatchKind) -> StoreResult<()> {
        self.execute(
            "INSERT INTO cache_complete (ns, version, kind) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&&ns[..], &i64_of(version), &kind_col(kind)],
        )?;
        Ok(())
    }
    fn cache_complete(&self, ns: &[u8; 16], version: u64, kind: MatchKind) -> StoreResult<bool> {
        Ok(!self
            .query(
                "SELECT 1 FROM cache_complete WHERE ns = $1 AND version = $2 AND kind = $3",
                &[&&ns[..], &i64_of(version), &kind_col(kind)],
            )?
            .is_empty())
    }
}
