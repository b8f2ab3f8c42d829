//! The hash-chained audit log: `hash = SHA-256(prev_hash || canonical JSON)`
//! where the canonical JSON is the entry without its `hash` field, fields in
//! declaration order. Entries carry names and object IDs, never identifiers.

use super::{lock, rfc3339, unix_now, Services};
use crate::storage::{AuditEntry, AuditRepo, StoreError};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    object: &'a str,
    outcome: &'a str,
    prev_hash: &'a str,
}

/// The hash an entry must carry.
pub fn entry_hash(e: &AuditEntry) -> String {
    let canonical = Canonical {
        seq: e.seq,
        time: &e.time,
        actor: &e.actor,
        action: &e.action,
        object: &e.object,
        outcome: &e.outcome,
        prev_hash: &e.prev_hash,
    };
    let json = serde_json::to_vec(&canonical).unwrap_or_default();
    hex::encode(
        Sha256::new()
            .chain_update(e.prev_hash.as_bytes())
            .chain_update(json)
            .finalize(),
    )
}

/// Append one entry to a store (used by the services and by `init`).
pub fn append(
    repo: &dyn AuditRepo,
    actor: &str,
    action: &str,
    object: &str,
    outcome: &str,
) -> Result<AuditEntry, StoreError> {
    let last = repo.last_audit()?;
    let (seq, prev_hash) = match last {
        Some(l) => (l.seq + 1, l.hash),
        None => (1, GENESIS.to_string()),
    };
    let mut e = AuditEntry {
        seq,
        time: rfc3339(unix_now()),
        actor: actor.into(),
        action: action.into(),
        object: object.into(),
        outcome: outcome.into(),
        prev_hash,
        hash: String::new(),
    };
    e.hash = entry_hash(&e);
    repo.put_audit(&e)?;
    Ok(e)
}

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The entry's seq.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Verify the whole chain; `Ok(n)` is the number of entries checked.
pub fn verify(repo: &dyn AuditRepo) -> Result<Result<u64, BrokenLink>, StoreError> {
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1;
    loop {
        let page = repo.audit_after(expected_seq - 1, 1000)?;
        if page.is_empty() {
            return Ok(Ok(expected_seq - 1));
        }
        for e in page {
            if e.seq != expected_seq {
                return Ok(Err(BrokenLink {
                    seq: expected_seq,
                    reason: format!("missing (next is {})", e.seq),
                }));
            }
            if e.prev_hash != prev {
                return Ok(Err(BrokenLink {
                    seq: e.seq,
                    reason: "prev_hash does not match the previous entry".into(),
                }));
            }
            if entry_hash(&e) != e.hash {
                return Ok(Err(BrokenLink {
                    seq: e.seq,
                    reason: "hash does not match the entry's content".into(),
                }));
            }
            prev = e.hash;
            expected_seq += 1;
        }
    }
}

impl Services {
    /// Append to the audit log; a failure is logged, never shown.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        object: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        let _g = lock(&self.audit_lock);
        append(self.repo.as_ref(), actor, action, object, outcome).map(|_| ())
    }

    /// A pseudonym for a person ID in the audit log (HMAC under the pepper).
    pub fn person_pseudonym(&self, person: &str) -> String {
        format!(
            "person:{}",
            &hex::encode(self.hmac(b"audit-person", person.as_bytes()))[..16]
        )
    }
}
