//! The `(b·P(y), a·b·P(y))` cache on PostgreSQL: one row per pair, keyed by
//! `(namespace, b·P(y))`. The traits read it as runs: here a run is a
//! stretch of the namespace's ordered pairs, keyed by its first and last
//! `b·P(y)` (64 bytes), so a run key names a range that stays valid while
//! other pages are cached (a run then holds more pairs, never fewer).

use super::*;

/// Pairs per run (4 MiB of pairs).
const RUN_PAIRS: i64 = 65_536;

fn pairs_of(rows: &[tokio_postgres::Row]) -> StoreResult<Vec<(PointBytes, PointBytes)>> {
    rows.iter()
        .map(|r| {
            Ok((
                point_of("cache_pairs", r.get(0))?,
                point_of("cache_pairs", r.get(1))?,
            ))
        })
        .collect()
}

/// A run key: its first and last `b·P(y)`.
fn run_key(pairs: &[(PointBytes, PointBytes)]) -> Vec<u8> {
    let first = pairs.first().map_or([0; 32], |p| p.0 .0);
    let last = pairs.last().map_or([0; 32], |p| p.0 .0);
    [first, last].concat()
}

fn run_bounds(key: &[u8]) -> StoreResult<(&[u8], &[u8])> {
    if key.len() != 64 {
        return Err(StoreError::Corrupt("cache run key"));
    }
    Ok(key.split_at(32))
}

impl CacheRepo for PgStore {
    fn cache_contains(&self, ns: &[u8; 16], bpy: &PointBytes) -> StoreResult<bool> {
        Ok(!self
            .query(
                "SELECT 1 FROM cache_pairs WHERE ns = $1 AND bpy = $2",
                &[&&ns[..], &&bpy.0[..]],
            )?
            .is_empty())
    }
    fn cache_put(&self, ns: &[u8; 16], pairs: &[(PointBytes, PointBytes)]) -> StoreResult<()> {
        let bpys: Vec<&[u8]> = pairs.iter().map(|p| &p.0 .0[..]).collect();
        let abpys: Vec<&[u8]> = pairs.iter().map(|p| &p.1 .0[..]).collect();
        // Erased points are dropped in the same statement.
        self.execute(
            "INSERT INTO cache_pairs (ns, bpy, abpy)
             SELECT $1, b, ab FROM unnest($2::bytea[], $3::bytea[]) AS u(b, ab)
             WHERE NOT EXISTS (SELECT 1 FROM erased_points e WHERE e.point = u.b)
             ON CONFLICT DO NOTHING",
            &[&&ns[..], &bpys, &abpys],
        )?;
        Ok(())
    }
    fn cache_remove_points(&self, points: &[PointBytes]) -> StoreResult<u64> {
        // Rare (erasures): every namespace, by point.
        self.execute(
            "DELETE FROM cache_pairs WHERE bpy = ANY($1::bytea[])",
            &[&point_params(points)],
        )
    }
    fn cache_runs_after(
        &self,
        ns: &[u8; 16],
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<CacheRun>> {
        let from: &[u8] = match after {
            None => &[],
            Some(key) => run_bounds(key)?.1,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX / RUN_PAIRS);
        let rows = self.query(
            "SELECT bpy, abpy FROM cache_pairs WHERE ns = $1 AND bpy > $2 ORDER BY bpy LIMIT $3",
            &[&&ns[..], &from, &limit.saturating_mul(RUN_PAIRS)],
        )?;
        let pairs = pairs_of(&rows)?;
        Ok(pairs
            .chunks(RUN_PAIRS as usize)
            .map(|run| (run_key(run), run.to_vec()))
            .collect())
    }
    fn cache_run_keys(&self, ns: &[u8; 16]) -> StoreResult<Vec<Vec<u8>>> {
        // The first and last pair of each full run, in one ordered scan of
        // the namespace's index; a partial last run ends at the largest point.
        let mut bounds: Vec<Vec<u8>> = self
            .query(
                "SELECT bpy FROM (
                     SELECT bpy, row_number() OVER (ORDER BY bpy) AS n
                     FROM cache_pairs WHERE ns = $1
                 ) r WHERE n % $2 IN (0, 1) ORDER BY bpy",
                &[&&ns[..], &RUN_PAIRS],
            )?
            .iter()
            .map(|r| r.get::<_, Vec<u8>>(0))
            .collect();
        if bounds.len() % 2 == 1 {
            let last = self.query(
                "SELECT bpy FROM cache_pairs WHERE ns = $1 ORDER BY bpy DESC LIMIT 1",
                &[&&ns[..]],
            )?;
            let last = last.first().ok_or(StoreError::Corrupt("cache_pairs"))?;
            bounds.push(last.get(0));
        }
        Ok(bounds.chunks_exact(2).map(|b| b.concat()).collect())
    }
    fn cache_run(
        &self,
        ns: &[u8; 16],
        run_key: &[u8],
    ) -> StoreResult<Vec<(PointBytes, PointBytes)>> {
        let (first, last) = run_bounds(run_key)?;
        let rows = self.query(
            "SELECT bpy, abpy FROM cache_pairs
             WHERE ns = $1 AND bpy >= $2 AND bpy <= $3 ORDER BY bpy",
            &[&&ns[..], &first, &last],
        )?;
        pairs_of(&rows)
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
