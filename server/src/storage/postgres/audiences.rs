//! Audiences on PostgreSQL: the record beside its indexed columns, and one
//! row per member cookie keyed by `(audience, pos)`; `pos` (`len | person |
//! tag`, as on sled) is the pull position, so a page is an index scan from
//! the cursor, stable when other members are removed.

use super::*;

/// Upsert an audience record with its indexed columns.
const PUT_AUDIENCE: &str =
    "INSERT INTO audiences (id, advertiser, destination, expires_unix, pulled, record)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (id) DO UPDATE SET advertiser = EXCLUDED.advertiser,
         destination = EXCLUDED.destination, expires_unix = EXCLUDED.expires_unix,
         pulled = EXCLUDED.pulled, record = EXCLUDED.record";

/// A member's position: `len | person | tag` (person cut at 255 bytes).
fn member_pos(person: &str, tag: &[u8; 16]) -> Vec<u8> {
    let p = &person.as_bytes()[..person.len().min(255)];
    let mut pos = Vec::with_capacity(1 + p.len() + 16);
    pos.push(p.len() as u8);
    pos.extend_from_slice(p);
    pos.extend_from_slice(tag);
    pos
}

impl PgStore {
    /// An audience record with its members (none for a metadata update), in
    /// one transaction.
    fn write_audience(
        &self,
        a: &Audience,
        members: &[(String, &[SealedCookie])],
    ) -> StoreResult<()> {
        let mut positions = Vec::new();
        let mut persons = Vec::new();
        let mut sealed = Vec::new();
        for (person, cookies) in members {
            for c in cookies.iter() {
                positions.push(member_pos(person, &c.tag));
                persons.push(person.as_str());
                sealed.push(c.sealed.as_slice());
            }
        }
        let positions: Vec<&[u8]> = positions.iter().map(Vec::as_slice).collect();
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
        let statements = [
            (PUT_AUDIENCE, audience),
            (
                "INSERT INTO audience_members (audience, pos, person, sealed)
                 SELECT $1, k, p, s FROM unnest($2::bytea[], $3::text[], $4::bytea[]) AS u(k, p, s)
                 ON CONFLICT DO NOTHING",
                members,
            ),
        ];
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
            member_pos(person, &[0; 16]),
            member_pos(person, &[0xff; 16]),
        );
        let n = self.execute(
            "DELETE FROM audience_members
             WHERE audience = $1 AND pos >= $2 AND pos <= $3 AND person = $4",
            &[&id, &low, &high, &person],
        )?;
        Ok(n as usize)
    }
    fn delete_members(&self, id: &str) -> StoreResult<()> {
        self.execute("DELETE FROM audience_members WHERE audience = $1", &[&id])?;
        Ok(())
    }
    fn delete_audience(&self, id: &str) -> StoreResult<()> {
        self.execute_all(&[
            ("DELETE FROM audience_members WHERE audience = $1", &[&id]),
            ("DELETE FROM audiences WHERE id = $1", &[&id]),
        ])?;
        Ok(())
    }
}
