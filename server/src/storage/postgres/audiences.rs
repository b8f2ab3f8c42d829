//! Audiences on PostgreSQL: the record beside its indexed columns, and one
//! row per member cookie keyed by `(audience, pos)`; `pos` (`len | person |
//! tag`, as on sled) is the pull position, so a page is an index scan from
//! the cursor, stable when other members are removed.

use super::*;

/// Upsert an audience record with its indexed columns.
pub(super) const PUT_AUDIENCE: &str =
    "INSERT INTO audiences (id, advertiser, destination, expires_unix, pulled, record)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (id) DO UPDATE SET advertiser = EXCLUDED.advertiser,
         destination = EXCLUDED.destination, expires_unix = EXCLUDED.expires_unix,
         pulled = EXCLUDED.pulled, record = EXCLUDED.record";

/// Member rows `(audience, pos, person, sealed)`, in bulk.
const COPY_MEMBERS: &str =
    "COPY audience_members (audience, pos, person, sealed) FROM STDIN (FORMAT binary)";
const MEMBER_TYPES: &[Type] = &[Type::TEXT, Type::BYTEA, Type::TEXT, Type::BYTEA];

/// One member row: its position (`len | person | tag`), person, sealed cookie.
type MemberRow<'a> = (&'a [u8], &'a str, &'a [u8]);

impl PgStore {
    /// In one transaction: an audience record, then (unless `None`) its
    /// members replaced by `members`, then (unless `None`) its kept
    /// changes replaced by `changes`.
    fn write_audience(
        &self,
        a: &Audience,
        members: Option<Vec<MemberRow<'_>>>,
        changes: Option<&[MemberChange]>,
    ) -> StoreResult<()> {
        let members = members.map(|mut rows| {
            // In key order, the rows append to the index instead of landing
            // on random pages; a position twice (one cookie listed twice)
            // is kept once, as on sled, where COPY would refuse it.
            rows.sort_unstable_by(|x, y| x.0.cmp(y.0));
            rows.dedup_by(|x, y| x.0 == y.0);
            rows
        });
        let (expires, record) = (i64_of(a.expires_unix), json(a)?);
        let audience: Params<'_> = &[
            &a.id,
            &a.advertiser,
            &a.destination,
            &expires,
            &a.pulled,
            &record,
        ];
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            let put = tx.prepare_cached(PUT_AUDIENCE).await.map_err(db_err)?;
            tx.execute(&put, audience).await.map_err(db_err)?;
            if let Some(rows) = &members {
                let clear = "DELETE FROM audience_members WHERE audience = $1";
                tx.execute(clear, &[&a.id]).await.map_err(db_err)?;
                Self::copy_rows(&tx, COPY_MEMBERS, MEMBER_TYPES, rows.len(), |i| {
                    vec![&a.id, &rows[i].0, &rows[i].1, &rows[i].2]
                })
                .await?;
            }
            if let Some(changes) = changes {
                Self::replace_changes(&tx, &a.id, changes).await?;
            }
            tx.commit().await.map_err(db_err)
        })
    }

    /// An audience's kept changes replaced by `changes`, within `tx`.
    async fn replace_changes(
        tx: &tokio_postgres::Transaction<'_>,
        id: &str,
        changes: &[MemberChange],
    ) -> StoreResult<()> {
        let positions: Vec<&[u8]> = changes.iter().map(|c| c.pos.as_slice()).collect();
        let ops: Vec<i8> = changes.iter().map(|c| c.op.code() as i8).collect();
        let sealed: Vec<&[u8]> = changes.iter().map(|c| c.sealed.as_slice()).collect();
        let clear = "DELETE FROM audience_changes WHERE audience = $1";
        tx.execute(clear, &[&id]).await.map_err(db_err)?;
        tx.execute(
            "INSERT INTO audience_changes (audience, pos, op, sealed)
             SELECT $1, k, o, s FROM unnest($2::bytea[], $3::\"char\"[], $4::bytea[]) AS u(k, o, s)",
            &[&id, &positions, &ops, &sealed],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

impl AudienceRepo for PgStore {
    fn create_audience(
        &self,
        a: &Audience,
        members: &[(String, &[SealedCookie])],
    ) -> StoreResult<()> {
        let positions: Vec<Vec<u8>> = members
            .iter()
            .flat_map(|(person, cookies)| cookies.iter().map(|c| member_position(person, &c.tag)))
            .collect();
        let sealed = members.iter().flat_map(|(person, cookies)| {
            cookies
                .iter()
                .map(move |c| (person.as_str(), &c.sealed[..]))
        });
        let rows = positions
            .iter()
            .zip(sealed)
            .map(|(pos, (person, sealed))| (pos.as_slice(), person, sealed))
            .collect();
        self.write_audience(a, Some(rows), None)
    }
    fn put_audience(&self, a: &Audience) -> StoreResult<()> {
        self.write_audience(a, None, None)
    }
    fn audience(&self, id: &str) -> StoreResult<Option<Audience>> {
        self.record(
            "audiences",
            "SELECT record FROM audiences WHERE id = $1",
            &[&id],
        )
    }
    fn audiences_for_destination(&self, destination: &str) -> StoreResult<Vec<Audience>> {
        self.records(
            "audiences",
            "SELECT record FROM audiences WHERE destination = $1 ORDER BY id",
            &[&destination],
        )
    }
    fn audiences_of(&self, advertiser: &str, destination: &str) -> StoreResult<Vec<Audience>> {
        self.records(
            "audiences",
            "SELECT record FROM audiences WHERE advertiser = $1 AND destination = $2 ORDER BY id",
            &[&advertiser, &destination],
        )
    }
    fn unpulled_audiences(&self) -> StoreResult<Vec<Audience>> {
        self.records(
            "audiences",
            "SELECT record FROM audiences WHERE NOT pulled ORDER BY id",
            &[],
        )
    }
    fn audiences_expiring_by(&self, unix: u64) -> StoreResult<Vec<Audience>> {
        self.records(
            "audiences",
            "SELECT record FROM audiences WHERE expires_unix <= $1 ORDER BY expires_unix, id",
            &[&i64_of(unix)],
        )
    }
    fn live_audience_count(&self, now: u64) -> StoreResult<u64> {
        self.count(
            "SELECT count(*) FROM audiences WHERE expires_unix > $1",
            &[&i64_of(now)],
        )
    }
    fn audience_persons(&self, id: &str) -> StoreResult<Vec<String>> {
        let rows = self.query(
            "SELECT person FROM audience_members WHERE audience = $1 ORDER BY pos",
            &[&id],
        )?;
        let mut out: Vec<String> = Vec::new();
        for r in &rows {
            let p: &str = r.get(0);
            if out.last().map(String::as_str) != Some(p) {
                out.push(p.to_string());
            }
        }
        Ok(out)
    }
    fn members_after(
        &self,
        id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let after: &[u8] = after.unwrap_or(&[]);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .query(
                "SELECT pos, sealed FROM audience_members
                 WHERE audience = $1 AND pos > $2 ORDER BY pos LIMIT $3",
                &[&id, &after, &limit],
            )?
            .iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
    }
    fn remove_member(&self, id: &str, person: &str) -> StoreResult<usize> {
        // The person's rows are one range of positions: an index range scan.
        let (low, high) = (
            member_position(person, &[0; 16]),
            member_position(person, &[0xff; 16]),
        );
        let keeps_changes = self.audience(id)?.is_some_and(|a| a.changes_from.is_some());
        let range: Params<'_> = &[&id, &low, &high];
        // As on sled: the person's members that the latest refresh did not
        // add become removals, its additions go, its removals stay.
        let statements = [
            (
                "INSERT INTO audience_changes (audience, pos, op, sealed)
                 SELECT m.audience, m.pos, '-', m.sealed FROM audience_members m
                 WHERE m.audience = $1 AND m.pos >= $2 AND m.pos <= $3
                   AND NOT EXISTS (SELECT 1 FROM audience_changes c
                                   WHERE c.audience = m.audience AND c.pos = m.pos)",
                range,
            ),
            (
                "DELETE FROM audience_changes
                 WHERE audience = $1 AND pos >= $2 AND pos <= $3 AND op = '+'",
                range,
            ),
            (
                "DELETE FROM audience_members WHERE audience = $1 AND pos >= $2 AND pos <= $3",
                range,
            ),
        ];
        let first = if keeps_changes { 0 } else { 1 };
        let n = self.execute_all(&statements[first..])?;
        Ok(n.last().copied().unwrap_or(0) as usize)
    }
    fn delete_members(&self, id: &str) -> StoreResult<()> {
        self.execute_all(&[
            ("DELETE FROM audience_changes WHERE audience = $1", &[&id]),
            ("DELETE FROM audience_members WHERE audience = $1", &[&id]),
        ])?;
        Ok(())
    }
    fn delete_audience(&self, id: &str) -> StoreResult<()> {
        self.execute_all(&[
            ("DELETE FROM audience_changes WHERE audience = $1", &[&id]),
            ("DELETE FROM audience_members WHERE audience = $1", &[&id]),
            ("DELETE FROM audiences WHERE id = $1", &[&id]),
        ])?;
        Ok(())
    }
    fn refresh_audience(
        &self,
        a: &Audience,
        members: &[(Vec<u8>, Vec<u8>)],
        changes: &[MemberChange],
    ) -> StoreResult<()> {
        let corrupt = || StoreError::Corrupt("audience_members");
        let rows = members
            .iter()
            .map(|(pos, sealed)| {
                let person = position_person(pos).ok_or_else(corrupt)?;
                Ok((pos.as_slice(), person, sealed.as_slice()))
            })
            .collect::<StoreResult<Vec<MemberRow<'_>>>>()?;
        self.write_audience(a, Some(rows), Some(changes))
    }
    fn changes_after(
        &self,
        id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<MemberChange>> {
        let after: &[u8] = after.unwrap_or(&[]);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            "SELECT pos, op, sealed FROM audience_changes
             WHERE audience = $1 AND pos > $2 ORDER BY pos LIMIT $3",
            &[&id, &after, &limit],
        )?
        .iter()
        .map(|r| {
            let op = r.get::<_, i8>(1) as u8;
            Ok(MemberChange {
                pos: r.get(0),
                op: ChangeOp::of_code(op).ok_or(StoreError::Corrupt("audience_changes"))?,
                sealed: r.get(2),
            })
        })
        .collect()
    }
}
