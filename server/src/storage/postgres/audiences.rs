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

/// Insert member rows `(audience, pos, person, sealed)` from arrays.
const INSERT_MEMBERS: &str = "INSERT INTO audience_members (audience, pos, person, sealed)
     SELECT $1, k, p, s FROM unnest($2::bytea[], $3::text[], $4::bytea[]) AS u(k, p, s)
     ON CONFLICT DO NOTHING";

impl PgStore {
    /// An audience record with its members (none for a metadata update), in
    /// one transaction.
    fn write_audience(
        &self,
        a: &Audience,
        members: &[(String, &[SealedCookie])],
    ) -> StoreResult<()> {
        let mut rows: Vec<(Vec<u8>, &str, &[u8])> = members
            .iter()
            .flat_map(|(person, cookies)| {
                cookies.iter().map(|c| {
                    (
                        member_position(person, &c.tag),
                        person.as_str(),
                        &c.sealed[..],
                    )
                })
            })
            .collect();
        // In key order, the inserts append to the index instead of
        // landing on random pages.
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let positions: Vec<&[u8]> = rows.iter().map(|r| r.0.as_slice()).collect();
        let persons: Vec<&str> = rows.iter().map(|r| r.1).collect();
        let sealed: Vec<&[u8]> = rows.iter().map(|r| r.2).collect();
        let (expires, record) = (i64_of(a.expires_unix), json(a)?);
        let audience: Params<'_> = &[
            &a.id,
            &a.advertiser,
            &a.destination,
            &expires,
            &a.pulled,
            &record,
        ];
        let members: Params<'_> = &[&a.id, &positions, &persons, &sealed];
        let statements = [(PUT_AUDIENCE, audience), (INSERT_MEMBERS, members)];
        let count = if positions.is_empty() { 1 } else { 2 };
        self.execute_all(&statements[..count])?;
        Ok(())
    }
}

impl AudienceRepo for PgStore {
    fn create_audience(
        &self,
        a: &Audience,
        members: &[(String, &[SealedCookie])],
    ) -> StoreResult<()> {
        self.write_audience(a, members)
    }
    fn put_audience(&self, a: &Audience) -> StoreResult<()> {
        self.write_audience(a, &[])
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
        let positions: Vec<&[u8]> = members.iter().map(|(k, _)| k.as_slice()).collect();
        let persons = members
            .iter()
            .map(|(k, _)| position_person(k).ok_or_else(corrupt))
            .collect::<StoreResult<Vec<&str>>>()?;
        let sealed: Vec<&[u8]> = members.iter().map(|(_, s)| s.as_slice()).collect();
        let change_pos: Vec<&[u8]> = changes.iter().map(|c| c.pos.as_slice()).collect();
        let ops: Vec<i8> = changes.iter().map(|c| c.op.code() as i8).collect();
        let change_sealed: Vec<&[u8]> = changes.iter().map(|c| c.sealed.as_slice()).collect();
        let (expires, record) = (i64_of(a.expires_unix), json(a)?);
        let id: Params<'_> = &[&a.id];
        self.execute_all(&[
            (
                PUT_AUDIENCE,
                &[
                    &a.id,
                    &a.advertiser,
                    &a.destination,
                    &expires,
                    &a.pulled,
                    &record,
                ],
            ),
            ("DELETE FROM audience_members WHERE audience = $1", id),
            (INSERT_MEMBERS, &[&a.id, &positions, &persons, &sealed]),
            ("DELETE FROM audience_changes WHERE audience = $1", id),
            (
                "INSERT INTO audience_changes (audience, pos, op, sealed)
                 SELECT $1, k, o, s FROM unnest($2::bytea[], $3::\"char\"[], $4::bytea[]) AS u(k, o, s)",
                &[&a.id, &change_pos, &ops, &change_sealed],
            ),
        ])?;
        Ok(())
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
