//! Key rotations on PostgreSQL ([`RotationRepo`]): each step replaces
//! its rows and saves the rotation record (`meta` key `rotation`) in one
//! transaction, so a restart resumes after the last step that committed.

use super::*;

const ROTATION_KEY: &str = "rotation";
const FINGERPRINTS_KEY: &str = "key-fingerprints";

const SAVE_META: &str = "INSERT INTO meta (key, value) VALUES ($1, $2)
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";

impl PgStore {
    /// Run `statements` then save `rec`, in one transaction.
    fn replace_with_record(
        &self,
        statements: &[(&str, Params<'_>)],
        rec: &RotationRecord,
    ) -> StoreResult<()> {
        let record = json(rec)?;
        let save: (&str, Params<'_>) = (SAVE_META, &[&ROTATION_KEY, &record]);
        let all: Vec<(&str, Params<'_>)> = statements
            .iter()
            .copied()
            .chain(std::iter::once(save))
            .collect();
        self.execute_all(&all)?;
        Ok(())
    }
}

impl RotationRepo for PgStore {
    fn rotation(&self) -> StoreResult<Option<RotationRecord>> {
        self.record(
            "meta",
            "SELECT value FROM meta WHERE key = $1",
            &[&ROTATION_KEY],
        )
    }

    fn put_rotation(&self, rec: Option<&RotationRecord>) -> StoreResult<()> {
        match rec {
            Some(rec) => self.execute(SAVE_META, &[&ROTATION_KEY, &json(rec)?])?,
            None => self.execute("DELETE FROM meta WHERE key = $1", &[&ROTATION_KEY])?,
        };
        Ok(())
    }

    fn cached_namespaces(&self) -> StoreResult<Vec<[u8; 16]>> {
        self.query("SELECT DISTINCT ns FROM cache_runs ORDER BY ns", &[])?
            .iter()
            .map(|r| {
                <[u8; 16]>::try_from(r.get::<_, &[u8]>(0))
                    .map_err(|_| StoreError::Corrupt("cache_runs"))
            })
            .collect()
    }

    fn replace_optouts(&self, points: &[PointBytes], rec: &RotationRecord) -> StoreResult<()> {
        let points = point_params(points);
        self.replace_with_record(
            &[
                ("DELETE FROM optouts", &[]),
                (
                    "INSERT INTO optouts (point) SELECT unnest($1::bytea[]) ON CONFLICT DO NOTHING",
                    &[&points],
                ),
            ],
            rec,
        )
    }

    fn tombstones(&self) -> StoreResult<Vec<(PersonKey, Vec<PointBytes>)>> {
        let mut out: Vec<(PersonKey, Vec<PointBytes>)> = Vec::new();
        let rows = self.query(
            "SELECT p.person, e.point FROM erased_persons p
             LEFT JOIN erased_points e ON e.person = p.person
             ORDER BY p.person, e.point",
            &[],
        )?;
        for r in &rows {
            let person = PersonKey::try_from(r.get::<_, &[u8]>(0))
                .map_err(|_| StoreError::Corrupt("erased_persons"))?;
            if out.last().map(|(p, _)| *p) != Some(person) {
                out.push((person, Vec::new()));
            }
            if let Some(point) = r.get::<_, Option<&[u8]>>(1) {
                let point = point_of("erased_points", point)?;
                if let Some((_, points)) = out.last_mut() {
                    points.push(point);
                }
            }
        }
        Ok(out)
    }

    fn replace_tombstones(
        &self,
        tombstones: &[(PersonKey, Vec<PointBytes>)],
        rec: &RotationRecord,
    ) -> StoreResult<()> {
        let (mut points, mut persons) = (Vec::new(), Vec::new());
        for (person, person_points) in tombstones {
            for p in person_points {
                points.push(&p.0[..]);
                persons.push(&person[..]);
            }
        }
        self.replace_with_record(
            &[
                ("DELETE FROM erased_points", &[]),
                (
                    "INSERT INTO erased_points (point, person)
                     SELECT p, q FROM unnest($1::bytea[], $2::bytea[]) AS u(p, q)
                     ON CONFLICT DO NOTHING",
                    &[&points, &persons],
                ),
            ],
            rec,
        )
    }

    fn replace_cache(
        &self,
        ns: &[u8; 16],
        pairs: Vec<(PointBytes, PointBytes)>,
        rec: &RotationRecord,
    ) -> StoreResult<()> {
        let runs = super::cache::runs_of(pairs);
        // Eight runs per statement: (keys, packed pairs).
        let columns: Vec<RunColumns<'_>> = runs
            .chunks(8)
            .map(|c| c.iter().map(|(k, p)| (k.as_slice(), p.as_slice())).unzip())
            .collect();
        let ns: &[u8] = &ns[..];
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 3]> = columns
            .iter()
            .map(|(k, p)| [&ns as _, k as _, p as _])
            .collect();
        let ns_only: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ns];
        let mut statements: Vec<(&str, Params<'_>)> =
            vec![("DELETE FROM cache_runs WHERE ns = $1", &ns_only)];
        statements.extend(params.iter().map(|p| (super::cache::INSERT_RUNS, &p[..])));
        self.replace_with_record(&statements, rec)
    }

    fn key_fingerprints(&self) -> StoreResult<Option<KeyFingerprints>> {
        self.record(
            "meta",
            "SELECT value FROM meta WHERE key = $1",
            &[&FINGERPRINTS_KEY],
        )
    }

    fn put_key_fingerprints(&self, f: Option<&KeyFingerprints>) -> StoreResult<()> {
        match f {
            Some(f) => self.execute(SAVE_META, &[&FINGERPRINTS_KEY, &json(f)?])?,
            None => self.execute("DELETE FROM meta WHERE key = $1", &[&FINGERPRINTS_KEY])?,
        };
        Ok(())
    }

    fn reseal_members(&self, id: &str, reseal: &Reseal<'_>) -> StoreResult<Option<u64>> {
        let rows = self.query(
            "SELECT pos, sealed FROM audience_members WHERE audience = $1",
            &[&id],
        )?;
        let mut positions: Vec<&[u8]> = Vec::with_capacity(rows.len());
        let mut sealed: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(new) = reseal(r.get::<_, &[u8]>(1)) else {
                return Ok(None);
            };
            positions.push(r.get::<_, &[u8]>(0));
            sealed.push(new);
        }
        // The kept changes of its latest refresh hold sealed cookies too.
        let change_rows = self.query(
            "SELECT pos, sealed FROM audience_changes WHERE audience = $1",
            &[&id],
        )?;
        let mut change_positions: Vec<&[u8]> = Vec::with_capacity(change_rows.len());
        let mut change_sealed: Vec<Vec<u8>> = Vec::with_capacity(change_rows.len());
        for r in &change_rows {
            let Some(new) = reseal(r.get::<_, &[u8]>(1)) else {
                return Ok(None);
            };
            change_positions.push(r.get::<_, &[u8]>(0));
            change_sealed.push(new);
        }
        // One transaction: every member and change switches at once.
        let changed = self.execute_all(&[
            (
                "UPDATE audience_members m SET sealed = u.s
                 FROM unnest($2::bytea[], $3::bytea[]) AS u(p, s)
                 WHERE m.audience = $1 AND m.pos = u.p",
                &[&id, &positions, &sealed],
            ),
            (
                "UPDATE audience_changes c SET sealed = u.s
                 FROM unnest($2::bytea[], $3::bytea[]) AS u(p, s)
                 WHERE c.audience = $1 AND c.pos = u.p",
                &[&id, &change_positions, &change_sealed],
            ),
        ])?;
        Ok(Some(changed[0]))
    }
}

/// Keys and packed pairs of some cache runs, as two statement parameters.
type RunColumns<'a> = (Vec<&'a [u8]>, Vec<&'a [u8]>);
