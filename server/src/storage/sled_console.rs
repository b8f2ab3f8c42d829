//! Console operators and sessions on the sled backend: two trees,
//! `console_operators` (name → record) and `console_sessions` (ID hash →
//! record). Writes that touch both (reset, removal) are one transaction;
//! the TOTP step is a compare-and-set inside one. Sessions are few (one per
//! logged-in operator and browser), so the by-operator look-ups scan.

use super::sled::SledStore;
use super::sled_codec::{be, from_json, json};
use super::*;
use ::sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use ::sled::{Transactional, Tree};

const OPERATORS: &str = "console_operators";
const SESSIONS: &str = "console_sessions";

fn console_tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Storage(e) => be(e),
        TransactionError::Abort(e) => e,
    }
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

impl SledStore {
    /// The two console trees (sled keeps opened trees, so this is a map look-up).
    fn console_trees(&self) -> StoreResult<(Tree, Tree)> {
        Ok((
            self.db.open_tree(OPERATORS).map_err(be)?,
            self.db.open_tree(SESSIONS).map_err(be)?,
        ))
    }

    /// Keys of the sessions of `operator`.
    fn session_keys_of(sessions: &Tree, operator: &str) -> StoreResult<Vec<::sled::IVec>> {
        let mut keys = Vec::new();
        for item in sessions.iter() {
            let (k, v) = item.map_err(be)?;
            let s: ConsoleSession = from_json(SESSIONS, &v)?;
            if s.operator == operator {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// Inside a transaction: remove `keys` from the sessions tree.
    fn remove_all(
        sessions: &TransactionalTree,
        keys: &[::sled::IVec],
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        for k in keys {
            sessions.remove(k)?;
        }
        Ok(())
    }
}

impl ConsoleRepo for SledStore {
    fn create_operator(&self, op: &Operator) -> StoreResult<Result<(), AlreadyExists>> {
        let (operators, _) = self.console_trees()?;
        let swapped = operators
            .compare_and_swap(op.name.as_bytes(), None as Option<&[u8]>, Some(json(op)?))
            .map_err(be)?;
        operators.flush().map_err(be)?;
        Ok(swapped.map_err(|_| AlreadyExists))
    }

    fn operator(&self, name: &str) -> StoreResult<Option<Operator>> {
        let (operators, _) = self.console_trees()?;
        operators
            .get(name.as_bytes())
            .map_err(be)?
            .map(|v| from_json(OPERATORS, &v))
            .transpose()
    }

    fn reset_operator(&self, op: &Operator) -> StoreResult<bool> {
        let (operators, sessions) = self.console_trees()?;
        let ended = Self::session_keys_of(&sessions, &op.name)?;
        let record = json(op)?;
        let found = (&operators, &sessions)
            .transaction(|(operators, sessions)| {
                if operators.get(op.name.as_bytes())?.is_none() {
                    return Ok(false);
                }
                operators.insert(op.name.as_bytes(), record.as_slice())?;
                Self::remove_all(sessions, &ended)?;
                Ok(true)
            })
            .map_err(console_tx_err)?;
        self.db.flush().map_err(be)?;
        Ok(found)
    }

    fn delete_operator(&self, name: &str) -> StoreResult<bool> {
        let (operators, sessions) = self.console_trees()?;
        let ended = Self::session_keys_of(&sessions, name)?;
        let found = (&operators, &sessions)
            .transaction(|(operators, sessions)| {
                let found = operators.remove(name.as_bytes())?.is_some();
                Self::remove_all(sessions, &ended)?;
                Ok(found)
            })
            .map_err(console_tx_err)?;
        self.db.flush().map_err(be)?;
        Ok(found)
    }

    fn accept_totp_step(&self, name: &str, step: u64) -> StoreResult<bool> {
        let (operators, _) = self.console_trees()?;
        let accepted = operators
            .transaction(|operators| {
                let Some(v) = operators.get(name.as_bytes())? else {
                    return Ok(false);
                };
                let mut op: Operator = from_json(OPERATORS, &v).map_err(abort)?;
                if step <= op.totp_last_step {
                    return Ok(false);
                }
                op.totp_last_step = step;
                operators.insert(name.as_bytes(), json(&op).map_err(abort)?)?;
                Ok(true)
            })
            .map_err(console_tx_err)?;
        operators.flush().map_err(be)?;
        Ok(accepted)
    }

    fn put_session(&self, s: &ConsoleSession) -> StoreResult<()> {
        let (_, sessions) = self.console_trees()?;
        sessions.insert(&s.id_hash[..], json(s)?).map_err(be)?;
        Ok(())
    }

    fn session(&self, id_hash: &[u8; 32]) -> StoreResult<Option<ConsoleSession>> {
        let (_, sessions) = self.console_trees()?;
        sessions
            .get(&id_hash[..])
            .map_err(be)?
            .map(|v| from_json(SESSIONS, &v))
            .transpose()
    }

    fn delete_session(&self, id_hash: &[u8; 32]) -> StoreResult<()> {
        let (_, sessions) = self.console_trees()?;
        sessions.remove(&id_hash[..]).map_err(be)?;
        sessions.flush().map_err(be)?;
        Ok(())
    }

    fn prune_sessions(&self, idle_before: u64, created_before: u64) -> StoreResult<usize> {
        let (_, sessions) = self.console_trees()?;
        let mut batch = ::sled::Batch::default();
        let mut n = 0;
        for item in sessions.iter() {
            let (k, v) = item.map_err(be)?;
            let s: ConsoleSession = from_json(SESSIONS, &v)?;
            if s.last_seen < idle_before || s.created < created_before {
                batch.remove(k);
                n += 1;
            }
        }
        sessions.apply_batch(batch).map_err(be)?;
        Ok(n)
    }
}
