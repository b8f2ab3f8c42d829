//! The blinded graph on PostgreSQL: `graph_points` keyed by
//! `(version, kind, point)` (look-ups and ordered scans are index scans),
//! `graph_cookies` keyed by `(version, destination, person, tag)`, both
//! partitioned by version (`graph_points_v7`, …). Import batches are
//! `COPY`ed (binary) into their version's partitions, which have no index
//! yet; sealing builds each partition's primary key in one sort (the first
//! row of a repeated point or cookie winning) and counts; deleting a
//! version drops its partitions. Look-ups of many points or persons are
//! `= ANY($1)` queries over slices of them ([`PgStore::query_any`]).

use super::*;
use std::collections::HashMap;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

const META_GRAPH: &str = "graph";

impl PgStore {
    /// Rows of `sql`, a page of a version's points of a kind in key order:
    /// `$1` version, `$2` kind, `$3` the point after which it starts, `$4`
    /// the most rows.
    fn ordered_points(
        &self,
        sql: &str,
        (version, kind, after, limit): (u64, MatchKind, Option<&PointBytes>, usize),
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        // The empty bytea sorts before every point.
        let after: &[u8] = after.map_or(&[], |p| &p.0[..]);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(sql, &[&i64_of(version), &kind_col(kind), &after, &limit])
    }
}

impl GraphRepo for PgStore {
    fn current_graph(&self) -> StoreResult<Option<GraphInfo>> {
        self.record(
            "meta",
            "SELECT value FROM meta WHERE key = $1",
            &[&META_GRAPH],
        )
    }
    fn allocate_version(&self) -> StoreResult<u64> {
        let rows = self.query("SELECT nextval('graph_version_seq')", &[])?;
        let version = rows
            .first()
            .map(|r| u64_of(r.get(0)))
            .ok_or(StoreError::Corrupt("graph_version_seq"))?;
        self.ensure_partitions(version)?;
        Ok(version)
    }
    fn put_import(&self, rec: &ImportRecord) -> StoreResult<()> {
        self.execute(
            "INSERT INTO imports (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&rec.id, &json(rec)?],
        )?;
        Ok(())
    }
    fn import(&self, id: &str) -> StoreResult<Option<ImportRecord>> {
        self.record(
            "imports",
            "SELECT record FROM imports WHERE id = $1",
            &[&id],
        )
    }
    fn imports(&self) -> StoreResult<Vec<ImportRecord>> {
        self.records("imports", "SELECT record FROM imports ORDER BY id", &[])
    }
    fn import_batch_hash(
        &self,
        import: &str,
        part: u8,
        batch_no: u32,
    ) -> StoreResult<Option<[u8; 32]>> {
        self.query(
            "SELECT hash FROM import_batches WHERE import = $1 AND part = $2 AND batch_no = $3",
            &[&import, &i16::from(part), &batch_col(batch_no)],
        )?
        .first()
        .map(|r| point_of("import_batches", r.get(0)).map(|p| p.0))
        .transpose()
    }
    fn set_import_batch_hash(
        &self,
        import: &str,
        part: u8,
        batch_no: u32,
        hash: [u8; 32],
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO import_batches (import, part, batch_no, hash) VALUES ($1, $2, $3, $4)
             ON CONFLICT (import, part, batch_no) DO UPDATE SET hash = EXCLUDED.hash",
            &[&import, &i16::from(part), &batch_col(batch_no), &&hash[..]],
        )?;
        Ok(())
    }
    fn put_identifier_run(
        &self,
        version: u64,
        _batch_no: u32,
        rows: Vec<IdentifierRow>,
    ) -> StoreResult<()> {
        let v = i64_of(version);
        let kinds: Vec<i16> = rows.iter().map(|r| kind_col(r.0)).collect();
        let points: Vec<&[u8]> = rows.iter().map(|r| &r.1 .0[..]).collect();
        let persons: Vec<&[u8]> = rows.iter().map(|r| &r.2[..]).collect();
        let table = partition("graph_points", version);
        let columns = (
            "version, kind, point, person",
            &[Type::INT8, Type::INT2, Type::BYTEA, Type::BYTEA][..],
        );
        self.copy_into_version(version, &table, columns, rows.len(), |i| {
            vec![&v, &kinds[i], &points[i], &persons[i]]
        })
    }
    fn put_cookie_run(
        &self,
        version: u64,
        _batch_no: u32,
        rows: Vec<CookieRow>,
    ) -> StoreResult<()> {
        let v = i64_of(version);
        let persons: Vec<&[u8]> = rows.iter().map(|r| &r.1[..]).collect();
        let tags: Vec<&[u8]> = rows.iter().map(|r| &r.2.tag[..]).collect();
        let table = partition("graph_cookies", version);
        let columns = (
            "version, destination, person, tag, sealed",
            &[
                Type::INT8,
                Type::TEXT,
                Type::BYTEA,
                Type::BYTEA,
                Type::BYTEA,
            ][..],
        );
        self.copy_into_version(version, &table, columns, rows.len(), |i| {
            vec![&v, &rows[i].0, &persons[i], &tags[i], &rows[i].2.sealed]
        })
    }
    fn put_removal_run(
        &self,
        version: u64,
        _batch_no: u32,
        persons: Vec<PersonKey>,
    ) -> StoreResult<()> {
        let persons: Vec<&[u8]> = persons.iter().map(|p| &p[..]).collect();
        self.execute(
            "INSERT INTO graph_removals (version, person)
             SELECT $1, o FROM unnest($2::bytea[]) AS u(o)
             ON CONFLICT DO NOTHING",
            &[&i64_of(version), &persons],
        )?;
        Ok(())
    }
    fn seal_version(&self, version: u64) -> StoreResult<GraphInfo> {
        let v = i64_of(version);
        if let Some(info) = self.sealed_info(v)? {
            return Ok(info);
        }
        self.ensure_partitions(version)?;
        self.build_primary_keys(version)?;
        let mut info = GraphInfo {
            version,
            ..GraphInfo::default()
        };
        info.added = self.count(
            "SELECT (SELECT count(*) FROM graph_points WHERE version = $1)
                  + (SELECT count(*) FROM graph_cookies WHERE version = $1)",
            &[&v],
        )?;
        self.count_and_record(info)
    }
    fn seal_delta(&self, version: u64, base: u64) -> StoreResult<GraphInfo> {
        let (v, b) = (i64_of(version), i64_of(base));
        if let Some(info) = self.sealed_info(v)? {
            return Ok(info);
        }
        self.ensure_partitions(version)?;
        // One transaction: a crash leaves the delta's own rows as they were
        // staged, and a retry starts again from them.
        let (added, removed) = self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            let mut added = 0;
            let mut removed = 0;
            for (table, key) in [
                ("graph_points", "kind, point"),
                ("graph_cookies", "destination, person, tag"),
            ] {
                let kept_base = format!(
                    "FROM {table} o WHERE o.version = $2 AND NOT EXISTS
                     (SELECT 1 FROM graph_removals r WHERE r.version = $1 AND r.person = o.person)"
                );
                let same = key
                    .split(", ")
                    .map(|c| format!("n.{c} = o.{c}"))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                // The base's row wins over a delta row for the same key.
                tx.execute(
                    &format!(
                        "DELETE FROM {table} n WHERE n.version = $1 AND EXISTS
                         (SELECT 1 {kept_base} AND {same})"
                    ),
                    &[&v, &b],
                )
                .await
                .map_err(db_err)?;
                // The delta's own rows left, and the base's rows.
                let mut rows = [0i64; 2];
                for (n, version) in rows.iter_mut().zip([&v, &b]) {
                    *n = tx
                        .query_one(
                            &format!("SELECT count(*) FROM {table} WHERE version = $1"),
                            &[version],
                        )
                        .await
                        .map_err(db_err)?
                        .get(0);
                }
                let [own, total] = rows;
                let cols = key.to_string()
                    + if table == "graph_points" {
                        ", person"
                    } else {
                        ", sealed"
                    };
                let copied = tx
                    .execute(
                        &format!(
                            "INSERT INTO {table} (version, {cols}) SELECT $1, {cols} {kept_base}"
                        ),
                        &[&v, &b],
                    )
                    .await
                    .map_err(db_err)?;
                added += u64_of(own);
                removed += u64_of(total).saturating_sub(copied);
            }
            tx.execute("DELETE FROM graph_removals WHERE version = $1", &[&v])
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok((added, removed))
        })?;
        // The copied base went into the unindexed partitions too.
        self.build_primary_keys(version)?;
        self.count_and_record(GraphInfo {
            version,
            added,
            removed,
            ..GraphInfo::default()
        })
    }
    fn point_owner(
        &self,
        version: u64,
        kind: MatchKind,
        point: &PointBytes,
    ) -> StoreResult<Option<PersonKey>> {
        self.query(
            "SELECT person FROM graph_points WHERE version = $1 AND kind = $2 AND point = $3",
            &[&i64_of(version), &kind_col(kind), &&point.0[..]],
        )?
        .first()
        .map(|r| person_of("graph_points", r.get(0)))
        .transpose()
    }
    fn points_after(
        &self,
        version: u64,
        kind: MatchKind,
        after: Option<&PointBytes>,
        limit: usize,
    ) -> StoreResult<Vec<(PointBytes, PersonKey)>> {
        self.ordered_points(
            "SELECT point, person FROM graph_points
             WHERE version = $1 AND kind = $2 AND point > $3 ORDER BY point LIMIT $4",
            (version, kind, after, limit),
        )?
        .iter()
        .map(|r| {
            Ok((
                point_of("graph_points", r.get(0))?,
                person_of("graph_points", r.get(1))?,
            ))
        })
        .collect()
    }
    fn bare_points_after(
        &self,
        version: u64,
        kind: MatchKind,
        after: Option<&PointBytes>,
        limit: usize,
    ) -> StoreResult<Vec<PointBytes>> {
        // Points alone: an index-only scan of the sealed partition's primary
        // key (its visibility map is set at seal), no heap fetch per point.
        self.ordered_points(
            "SELECT point FROM graph_points
             WHERE version = $1 AND kind = $2 AND point > $3 ORDER BY point LIMIT $4",
            (version, kind, after, limit),
        )?
        .iter()
        .map(|r| point_of("graph_points", r.get(0)))
        .collect()
    }
    fn owners_of_sorted(
        &self,
        version: u64,
        kind: MatchKind,
        points: &[PointBytes],
    ) -> StoreResult<Vec<Option<PersonKey>>> {
        let rows = self.query_any(
            "SELECT point, person FROM graph_points
             WHERE version = $1 AND kind = $2 AND point = ANY($3::bytea[])",
            &[&i64_of(version), &kind_col(kind)],
            &point_params(points),
        )?;
        let mut owners: HashMap<[u8; 32], PersonKey> = HashMap::with_capacity(rows.len());
        for r in &rows {
            owners.insert(
                point_of("graph_points", r.get(0))?.0,
                person_of("graph_points", r.get(1))?,
            );
        }
        Ok(points.iter().map(|p| owners.get(&p.0).copied()).collect())
    }
    fn cookies_of_sorted(
        &self,
        version: u64,
        destination: &str,
        persons: &[PersonKey],
    ) -> StoreResult<Vec<(PersonKey, Vec<SealedCookie>)>> {
        let wanted: Vec<&[u8]> = persons.iter().map(|p| &p[..]).collect();
        let rows = self.query_any(
            "SELECT person, tag, sealed FROM graph_cookies
             WHERE version = $1 AND destination = $2 AND person = ANY($3::bytea[])",
            &[&i64_of(version), &destination],
            &wanted,
        )?;
        // Sorted here rather than by the database: its estimate of an
        // `= ANY` scan is a few rows, so it would plan a sort that spills.
        let mut cookies = rows
            .iter()
            .map(|r| {
                let person = person_of("graph_cookies", r.get(0))?;
                let tag: [u8; 16] = r
                    .get::<_, &[u8]>(1)
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("graph_cookies"))?;
                Ok((person, tag, r.get::<_, &[u8]>(2)))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        cookies.sort_unstable_by_key(|c| (c.0, c.1));
        let mut out: Vec<(PersonKey, Vec<SealedCookie>)> = Vec::new();
        for (person, tag, sealed) in cookies {
            let cookie = SealedCookie {
                tag,
                sealed: sealed.to_vec(),
            };
            match out.last_mut() {
                Some((p, cookies)) if *p == person => cookies.push(cookie),
                _ => out.push((person, vec![cookie])),
            }
        }
        Ok(out)
    }
    fn has_destination(&self, version: u64, destination: &str) -> StoreResult<bool> {
        self.exists(
            "SELECT 1 FROM graph_cookies WHERE version = $1 AND destination = $2 LIMIT 1",
            &[&i64_of(version), &destination],
        )
    }
    fn suppress(&self, version: u64, person: &PersonKey) -> StoreResult<bool> {
        let n = self.execute(
            "INSERT INTO graph_suppressed (version, person) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&i64_of(version), &&person[..]],
        )?;
        Ok(n == 1)
    }
    fn suppressed_persons(&self, version: u64) -> StoreResult<Vec<PersonKey>> {
        self.query(
            "SELECT person FROM graph_suppressed WHERE version = $1 ORDER BY person",
            &[&i64_of(version)],
        )?
        .iter()
        .map(|r| person_of("graph_suppressed", r.get(0)))
        .collect()
    }
    fn person_points(&self, version: u64, person: &PersonKey) -> StoreResult<Vec<PointBytes>> {
        // Rare (erasures): a scan of the version, not an index on persons
        // that every import would pay for.
        self.query(
            "SELECT point FROM graph_points WHERE version = $1 AND person = $2 ORDER BY point",
            &[&i64_of(version), &&person[..]],
        )?
        .iter()
        .map(|r| point_of("graph_points", r.get(0)))
        .collect()
    }
    fn erase_person(&self, version: u64, person: &PersonKey) -> StoreResult<ErasedCounts> {
        let v = i64_of(version);
        let (sealed, kinds, destinations) = self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            let sealed = !tx
                .query("SELECT 1 FROM graph_sealed WHERE version = $1", &[&v])
                .await
                .map_err(db_err)?
                .is_empty();
            let kinds = tx
                .query(
                    "DELETE FROM graph_points WHERE version = $1 AND person = $2 RETURNING kind",
                    &[&v, &&person[..]],
                )
                .await
                .map_err(db_err)?;
            let destinations = tx
                .query(
                    "DELETE FROM graph_cookies WHERE version = $1 AND person = $2 RETURNING destination",
                    &[&v, &&person[..]],
                )
                .await
                .map_err(db_err)?;
            tx.execute(
                "DELETE FROM graph_removals WHERE version = $1 AND person = $2",
                &[&v, &&person[..]],
            )
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok((sealed, kinds, destinations))
        })?;
        let mut counts = ErasedCounts::default();
        // Like sled: the counts are those removed from a sealed version.
        if sealed {
            for r in &kinds {
                let kind = kind_of("graph_points", r.get(0))?;
                *counts.identifiers.entry(kind.as_str().into()).or_default() += 1;
            }
            for r in &destinations {
                *counts.cookies.entry(r.get(0)).or_default() += 1;
            }
        }
        counts.person = !counts.identifiers.is_empty() || !counts.cookies.is_empty();
        Ok(counts)
    }
    fn commit_graph(&self, info: &GraphInfo) -> StoreResult<Option<u64>> {
        let value = json(info)?;
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            let old = tx
                .query(
                    "SELECT value FROM meta WHERE key = $1 FOR UPDATE",
                    &[&META_GRAPH],
                )
                .await
                .map_err(db_err)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&META_GRAPH, &value],
            )
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            old.first()
                .map(|r| from_json::<GraphInfo>("meta", r.get(0)).map(|g| g.version))
                .transpose()
        })
    }
    fn delete_version(&self, version: u64) -> StoreResult<()> {
        let v = i64_of(version);
        let drop = format!(
            "DROP TABLE IF EXISTS {}, {}",
            partition("graph_points", version),
            partition("graph_cookies", version)
        );
        self.execute_all(&[
            (drop.as_str(), &[]),
            ("DELETE FROM graph_suppressed WHERE version = $1", &[&v]),
            ("DELETE FROM graph_removals WHERE version = $1", &[&v]),
            ("DELETE FROM graph_sealed WHERE version = $1", &[&v]),
        ])?;
        Ok(())
    }
}

/// The partition of `table` (`graph_points` or `graph_cookies`) holding
/// `version`. Versions come from our own sequence: the name is never
/// built from input.
fn partition(table: &str, version: u64) -> String {
    format!("{table}_v{version}")
}

/// Serialises the creation of version partitions between servers.
const PARTITION_LOCK: i64 = 0x6f6e_626f_6172_6402;

impl PgStore {
    /// Create `version`'s partitions (unindexed) unless they exist.
    fn ensure_partitions(&self, version: u64) -> StoreResult<()> {
        let ddl = format!(
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS {} PARTITION OF graph_points FOR VALUES IN ({version});
             CREATE TABLE IF NOT EXISTS {} PARTITION OF graph_cookies FOR VALUES IN ({version});",
            partition("graph_points", version),
            partition("graph_cookies", version)
        );
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
                .await
                .map_err(db_err)?;
            tx.batch_execute(&ddl).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)
        })
    }

    /// `COPY` `count` rows (`row(i)` gives the i-th row's columns) into
    /// `table`, a partition of `version`, creating the version's
    /// partitions first if they are missing (an import opened before they
    /// existed). A failed `COPY` would leave its connection unusable, hence
    /// the look first.
    fn copy_into_version<'r>(
        &self,
        version: u64,
        table: &str,
        columns: (&str, &[Type]),
        count: usize,
        row: impl Fn(usize) -> Vec<&'r (dyn ToSql + Sync)>,
    ) -> StoreResult<()> {
        if !self.exists("SELECT 1 WHERE to_regclass($1) IS NOT NULL", &[&table])? {
            self.ensure_partitions(version)?;
        }
        let copy = format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", columns.0);
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            Self::copy_rows(&tx, &copy, columns.1, count, row).await?;
            tx.commit().await.map_err(db_err)
        })
    }

    /// Fresh statistics and visibility map before a version serves. Without
    /// statistics the planner may scan and sort the whole table for each
    /// graph-pass chunk instead of walking the primary key; without the
    /// visibility map (a bulk load leaves it empty) the graph pass's
    /// index-only scans would fetch every point's heap row. VACUUM runs
    /// outside any transaction, so through the simple query protocol.
    fn vacuum_partitions(&self, version: u64) -> StoreResult<()> {
        let sql = format!(
            "VACUUM (ANALYZE) {}, {}",
            partition("graph_points", version),
            partition("graph_cookies", version)
        );
        self.run(async {
            let client = self.client().await?;
            client.batch_execute(&sql).await.map_err(db_err)
        })
    }

    /// Build the primary keys of `version`'s partitions if they have none
    /// yet: one sort each. Should a repeated point or cookie make a key
    /// fail, the later copies are deleted (the first row wins, as on sled)
    /// and the key built again. One transaction: a crash leaves the
    /// partitions as they were.
    fn build_primary_keys(&self, version: u64) -> StoreResult<()> {
        let points = partition("graph_points", version);
        let cookies = partition("graph_cookies", version);
        // The points' key carries each point's owner, so the join's owner
        // look-ups are index-only scans like the graph pass.
        let keys = [
            (points.clone(), "kind, point", " INCLUDE (person)"),
            (cookies.clone(), "destination, person, tag", ""),
        ];
        self.run(async {
            let mut client = self.client().await?;
            let mut tx = client.transaction().await.map_err(db_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
                .await
                .map_err(db_err)?;
            for (table, columns, include) in &keys {
                let keyed = tx
                    .query_opt(
                        "SELECT 1 FROM pg_index WHERE indrelid = to_regclass($1) AND indisprimary",
                        &[table],
                    )
                    .await
                    .map_err(db_err)?
                    .is_some();
                if keyed {
                    continue;
                }
                let add_key =
                    format!("ALTER TABLE {table} ADD PRIMARY KEY (version, {columns}){include}");
                let first_try = {
                    let sp = tx.savepoint("primary_key").await.map_err(db_err)?;
                    match sp.batch_execute(&add_key).await {
                        Ok(()) => sp.commit().await.map_err(db_err).map(|()| true),
                        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                            sp.rollback().await.map_err(db_err).map(|()| false)
                        }
                        Err(e) => Err(db_err(e)),
                    }
                }?;
                if !first_try {
                    tx.batch_execute(&format!(
                        "DELETE FROM {table} t USING (
                             SELECT ctid FROM (
                                 SELECT ctid, row_number() OVER (PARTITION BY {columns} ORDER BY ctid) AS n
                                 FROM {table}) d
                             WHERE d.n > 1) later
                         WHERE t.ctid = later.ctid;
                         {add_key}"
                    ))
                    .await
                    .map_err(db_err)?;
                }
            }
            tx.commit().await.map_err(db_err)
        })
    }
}

/// A batch or page number as PostgreSQL's integer (bit for bit).
pub(super) fn batch_col(n: u32) -> i32 {
    n as i32
}

/// An integer column back to the batch or page number it stores.
pub(super) fn batch_of(n: i32) -> u32 {
    n as u32
}

impl PgStore {
    /// A sealed version's recorded counts.
    fn sealed_info(&self, v: i64) -> StoreResult<Option<GraphInfo>> {
        self.query("SELECT info FROM graph_sealed WHERE version = $1", &[&v])?
            .first()
            .map(|row| from_json("graph_sealed", row.get(0)))
            .transpose()
    }

    /// Count a version's rows into `info` and record it as sealed.
    fn count_and_record(&self, mut info: GraphInfo) -> StoreResult<GraphInfo> {
        let v = i64_of(info.version);
        for row in self.query(
            "SELECT kind, count(*) FROM graph_points WHERE version = $1 GROUP BY kind",
            &[&v],
        )? {
            let kind = kind_of("graph_points", row.get(0))?;
            info.identifiers
                .insert(kind.as_str().into(), u64_of(row.get(1)));
        }
        for row in self.query(
            "SELECT destination, count(*) FROM graph_cookies WHERE version = $1 GROUP BY destination",
            &[&v],
        )? {
            info.cookies.insert(row.get(0), u64_of(row.get(1)));
        }
        info.persons = self.count(
            "SELECT count(*) FROM (SELECT person FROM graph_points WHERE version = $1
                                   UNION SELECT person FROM graph_cookies WHERE version = $1) p",
            &[&v],
        )?;
        self.execute(
            "INSERT INTO graph_sealed (version, info) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&v, &json(&info)?],
        )?;
        self.vacuum_partitions(info.version)?;
        Ok(info)
    }
}
