//! Console operators and sessions on PostgreSQL ([`ConsoleRepo`]): the
//! operator's record beside its TOTP step counter, which servers sharing
//! the database move forward with one compare-and-set `UPDATE`; sessions by
//! the hash of their ID, removed with their operator by the foreign key.

use super::*;

/// An operator's record, with the step counter taken from its column.
fn operator_of(row: &tokio_postgres::Row) -> StoreResult<Operator> {
    let mut op: Operator = from_json("console_operators", row.get(0))?;
    op.totp_last_step = u64_of(row.get(1));
    Ok(op)
}

fn session_of(row: &tokio_postgres::Row) -> StoreResult<ConsoleSession> {
    Ok(ConsoleSession {
        id_hash: row
            .get::<_, &[u8]>(0)
            .try_into()
            .map_err(|_| StoreError::Corrupt("console_sessions"))?,
        operator: row.get(1),
        created: u64_of(row.get(2)),
        last_seen: u64_of(row.get(3)),
    })
}

impl ConsoleRepo for PgStore {
    fn create_operator(&self, op: &Operator) -> StoreResult<Result<(), AlreadyExists>> {
        let inserted = self.execute(
            "INSERT INTO console_operators (name, totp_last_step, record) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
            &[&op.name, &i64_of(op.totp_last_step), &json(op)?],
        )?;
        Ok(if inserted == 1 {
            Ok(())
        } else {
            Err(AlreadyExists)
        })
    }

    fn operator(&self, name: &str) -> StoreResult<Option<Operator>> {
        self.query(
            "SELECT record, totp_last_step FROM console_operators WHERE name = $1",
            &[&name],
        )?
        .first()
        .map(operator_of)
        .transpose()
    }

    fn reset_operator(&self, op: &Operator) -> StoreResult<bool> {
        let record = json(op)?;
        let changed = self.execute_all(&[
            (
                "UPDATE console_operators SET totp_last_step = $2, record = $3 WHERE name = $1",
                &[&op.name, &i64_of(op.totp_last_step), &record],
            ),
            (
                "DELETE FROM console_sessions WHERE operator = $1",
                &[&op.name],
            ),
        ])?;
        Ok(changed.first() == Some(&1))
    }

    fn delete_operator(&self, name: &str) -> StoreResult<bool> {
        // The sessions go with it (ON DELETE CASCADE).
        let deleted = self.execute("DELETE FROM console_operators WHERE name = $1", &[&name])?;
        Ok(deleted == 1)
    }

    fn accept_totp_step(&self, name: &str, step: u64) -> StoreResult<bool> {
        let changed = self.execute(
            "UPDATE console_operators SET totp_last_step = $2
             WHERE name = $1 AND totp_last_step < $2",
            &[&name, &i64_of(step)],
        )?;
        Ok(changed == 1)
    }

    fn put_session(&self, s: &ConsoleSession) -> StoreResult<()> {
        self.execute(
            "INSERT INTO console_sessions (id_hash, operator, created, last_seen)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (id_hash) DO UPDATE SET last_seen = EXCLUDED.last_seen",
            &[
                &&s.id_hash[..],
                &s.operator,
                &i64_of(s.created),
                &i64_of(s.last_seen),
            ],
        )?;
        Ok(())
    }

    fn session(&self, id_hash: &[u8; 32]) -> StoreResult<Option<ConsoleSession>> {
        self.query(
            "SELECT id_hash, operator, created, last_seen FROM console_sessions
             WHERE id_hash = $1",
            &[&&id_hash[..]],
        )?
        .first()
        .map(session_of)
        .transpose()
    }

    fn delete_session(&self, id_hash: &[u8; 32]) -> StoreResult<()> {
        self.execute(
            "DELETE FROM console_sessions WHERE id_hash = $1",
            &[&&id_hash[..]],
        )?;
        Ok(())
    }

    fn prune_sessions(&self, idle_before: u64, created_before: u64) -> StoreResult<usize> {
        let n = self.execute(
            "DELETE FROM console_sessions WHERE last_seen < $1 OR created < $2",
            &[&i64_of(idle_before), &i64_of(created_before)],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
