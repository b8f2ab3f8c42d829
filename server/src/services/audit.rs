//! The keyed audit chain: `hash = HMAC-SHA256(audit_key, prev_hash ||
//! canonical JSON)`, where the canonical JSON is the entry without its `hash`
//! field, fields in declaration order. The key lives in `DATA_DIR/audit.key`,
//! outside the store, so whoever can write the store but not read the key
//! cannot rewrite an entry and recompute the chain. Entries carry names and
//! object IDs, never identifiers.
//!
//! What the chain cannot show by itself is a cut tail (the last entries
//! removed): `onboard-server audit head` prints the head to be kept off the
//! host, and `audit verify --expect-head SEQ:HASH` checks the chain still
//! reaches it.
//!
//! Data dirs made before the key existed hold a plain SHA-256 chain; the key
//! file added to them (`onboard-server keys add-audit-key`) pins that chain's
//! last hash ([`LegacyHead`]), so those entries are frozen from then on.

use super::{rfc3339, unix_now, Services};
use crate::storage::{AuditEntry, AuditRepo, StoreError};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// First word of the audit key file.
pub const AUDIT_KEY_LABEL: &str = "onboard-audit-key-v1";
/// The key file's line pinning a pre-key chain.
const LEGACY_LABEL: &str = "legacy-sha256-head";

/// The last entry of a chain written before the audit key existed (plain
/// SHA-256), pinned in the key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyHead {
    /// Its seq: entries up to here are checked as plain SHA-256.
    pub seq: u64,
    /// Its hash (64 hex).
    pub hash: String,
}

/// The audit chain's HMAC key, with the pinned legacy head if the data dir
/// predates it. `Debug` never shows the key.
#[derive(Clone)]
pub struct AuditKey {
    key: Zeroizing<[u8; 32]>,
    legacy: Option<LegacyHead>,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key", &"<redacted>")
            .field("legacy", &self.legacy)
            .finish()
    }
}

impl AuditKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Self { key, legacy: None }
    }

    /// A key from its bytes.
    pub fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        Self { key, legacy: None }
    }

    /// The same key, pinning a pre-key chain ending at `head`.
    pub fn with_legacy(mut self, head: LegacyHead) -> Self {
        self.legacy = Some(head);
        self
    }

    /// The pinned pre-key chain head, if any.
    pub fn legacy(&self) -> Option<&LegacyHead> {
        self.legacy.as_ref()
    }

    /// The key file's text: `onboard-audit-key-v1 <64 hex>\n`, then
    /// `legacy-sha256-head <seq> <64 hex>\n` when a pre-key chain is pinned.
    pub fn to_file_string(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(format!("{AUDIT_KEY_LABEL} {}\n", hex::encode(*self.key)));
        if let Some(l) = &self.legacy {
            text.push_str(&format!("{LEGACY_LABEL} {} {}\n", l.seq, l.hash));
        }
        text
    }

    /// Parse a key file's text; the error says what is expected, never the key.
    pub fn from_file_string(text: &str) -> Result<Self, String> {
        let expected = || format!("expected `{AUDIT_KEY_LABEL} <64 hex>`");
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().ok_or_else(expected)?;
        let hex_part = first
            .strip_prefix(AUDIT_KEY_LABEL)
            .ok_or_else(expected)?
            .trim();
        let mut key = Zeroizing::new([0u8; 32]);
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, key.as_mut()).is_err() {
            return Err(expected());
        }
        let legacy = match lines.next() {
            None => None,
            Some(line) => Some(parse_legacy(line)?),
        };
        if lines.next().is_some() {
            return Err("unexpected lines after the legacy head".into());
        }
        Ok(Self { key, legacy })
    }

    /// The HMAC state under this key. HMAC zero-pads a key shorter than its
    /// 64-byte block, so this equals `new_from_slice(key)` without a `Result`
    /// that cannot fail.
    fn mac(&self) -> Hmac<Sha256> {
        let mut block = Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(self.key.as_ref());
        <Hmac<Sha256> as KeyInit>::new(&(*block).into())
    }
}

fn parse_legacy(line: &str) -> Result<LegacyHead, String> {
    let bad = || format!("expected `{LEGACY_LABEL} <seq> <64 hex>` on the second line");
    let mut words = line.split_whitespace();
    if words.next() != Some(LEGACY_LABEL) {
        return Err(bad());
    }
    let seq = words
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|&s: &u64| s > 0)
        .ok_or_else(bad)?;
    let hash = words.next().filter(|h| is_hash(h)).ok_or_else(bad)?;
    if words.next().is_some() {
        return Err(bad());
    }
    Ok(LegacyHead {
        seq,
        hash: hash.to_string(),
    })
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

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

/// The entry's canonical JSON: every field but `hash`, in declaration order.
pub fn canonical_json(e: &AuditEntry) -> Vec<u8> {
    let canonical = Canonical {
        seq: e.seq,
        time: &e.time,
        actor: &e.actor,
        action: &e.action,
        object: &e.object,
        outcome: &e.outcome,
        prev_hash: &e.prev_hash,
    };
    // Serialising a struct of strings and an integer cannot fail.
    serde_json::to_vec(&canonical).unwrap_or_default()
}

fn entry_mac(key: &AuditKey, e: &AuditEntry) -> Hmac<Sha256> {
    key.mac()
        .chain_update(e.prev_hash.as_bytes())
        .chain_update(canonical_json(e))
}

/// The hash an entry must carry under `key` (64 hex).
pub fn entry_hash(key: &AuditKey, e: &AuditEntry) -> String {
    hex::encode(entry_mac(key, e).finalize().into_bytes())
}

/// The unkeyed hash of chains written before the audit key: SHA-256 of the
/// same bytes.
pub fn legacy_hash(e: &AuditEntry) -> String {
    hex::encode(
        Sha256::new()
            .chain_update(e.prev_hash.as_bytes())
            .chain_update(canonical_json(e))
            .finalize(),
    )
}

/// Whether `e.hash` is the HMAC of `e` under `key` (compared in constant time).
fn tag_matches(key: &AuditKey, e: &AuditEntry) -> bool {
    match hex::decode(&e.hash) {
        Ok(stored) => entry_mac(key, e).verify_slice(&stored).is_ok(),
        Err(_) => false,
    }
}

/// Constant-time equality of two hex hashes.
fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Append one entry to a store (used by the services and by `init`).
pub fn append(
    repo: &dyn AuditRepo,
    key: &AuditKey,
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
    e.hash = entry_hash(key, &e);
    repo.put_audit(&e)?;
    Ok(e)
}

/// A head recorded earlier (off the host) that the chain must still reach:
/// `SEQ:HASH` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The anchored entry's seq.
    pub seq: u64,
    /// Its hash (64 hex).
    pub hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || "expected SEQ:HASH (as printed by `audit head`)".to_string();
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq = seq.trim().parse().ok().filter(|&n: &u64| n > 0);
        let hash = hash.trim().to_ascii_lowercase();
        match seq {
            Some(seq) if is_hash(&hash) => Ok(Self { seq, hash }),
            _ => Err(bad()),
        }
    }
}

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The entry's seq.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

fn broken(seq: u64, reason: impl Into<String>) -> BrokenLink {
    BrokenLink {
        seq,
        reason: reason.into(),
    }
}

/// What every entry is checked against while walking the chain.
struct Walk<'a> {
    /// `None`: a chain from before the audit key, plain SHA-256 throughout.
    key: Option<&'a AuditKey>,
    anchors: &'a [Anchor],
    prev: String,
    next_seq: u64,
}

impl<'a> Walk<'a> {
    fn new(key: Option<&'a AuditKey>, anchors: &'a [Anchor]) -> Self {
        Self {
            key,
            anchors,
            prev: GENESIS.to_string(),
            next_seq: 1,
        }
    }

    /// Check every entry of `repo` in order.
    fn run(&mut self, repo: &dyn AuditRepo) -> Result<Result<(), BrokenLink>, StoreError> {
        loop {
            let page = repo.audit_after(self.next_seq - 1, 1000)?;
            if page.is_empty() {
                return Ok(Ok(()));
            }
            for e in &page {
                if let Err(b) = self.check(e) {
                    return Ok(Err(b));
                }
            }
        }
    }

    fn check(&mut self, e: &AuditEntry) -> Result<(), BrokenLink> {
        if e.seq != self.next_seq {
            return Err(broken(
                self.next_seq,
                format!("missing (next is {})", e.seq),
            ));
        }
        if e.prev_hash != self.prev {
            return Err(broken(e.seq, "prev_hash does not match the previous entry"));
        }
        self.check_hash(e)?;
        if let Some(a) = self.anchors.iter().find(|a| a.seq == e.seq) {
            if !same_hash(&a.hash, &e.hash) {
                return Err(broken(e.seq, "hash differs from the anchored head"));
            }
        }
        self.prev = e.hash.clone();
        self.next_seq += 1;
        Ok(())
    }

    fn check_hash(&self, e: &AuditEntry) -> Result<(), BrokenLink> {
        let Some(key) = self.key else {
            return match same_hash(&legacy_hash(e), &e.hash) {
                true => Ok(()),
                false => Err(broken(
                    e.seq,
                    "hash does not match the entry's content (SHA-256 chain)",
                )),
            };
        };
        match key.legacy() {
            Some(l) if e.seq <= l.seq => {
                if !same_hash(&legacy_hash(e), &e.hash) {
                    return Err(broken(
                        e.seq,
                        "hash does not match the entry's content (pre-key SHA-256 entry)",
                    ));
                }
                if e.seq == l.seq && !same_hash(&l.hash, &e.hash) {
                    return Err(broken(
                        e.seq,
                        "hash differs from the legacy head pinned in audit.key: the pre-key entries were rewritten",
                    ));
                }
                Ok(())
            }
            _ if tag_matches(key, e) => Ok(()),
            _ => Err(broken(
                e.seq,
                "hash is not the audit key's HMAC of the entry (the entry was changed, or the chain recomputed without audit.key)",
            )),
        }
    }

    /// After the last entry: the pinned legacy head and every anchor reached.
    fn finish(&self) -> Result<u64, BrokenLink> {
        let count = self.next_seq - 1;
        let pinned = self.key.and_then(|k| k.legacy()).map(|l| l.seq);
        for (seq, what) in pinned
            .map(|s| (s, "the legacy head pinned in audit.key"))
            .into_iter()
            .chain(self.anchors.iter().map(|a| (a.seq, "the anchored head")))
        {
            if seq > count {
                return Err(broken(
                    count + 1,
                    format!("missing: the chain ends at entry {count}, before {what} (entry {seq}): entries were removed"),
                ));
            }
        }
        Ok(count)
    }
}

/// Verify the whole chain under `key`, and that it reaches every anchor;
/// `Ok(n)` is the number of entries checked.
pub fn verify(
    repo: &dyn AuditRepo,
    key: &AuditKey,
    anchors: &[Anchor],
) -> Result<Result<u64, BrokenLink>, StoreError> {
    let mut walk = Walk::new(Some(key), anchors);
    Ok(walk.run(repo)?.and_then(|()| walk.finish()))
}

/// Verify a chain written before the audit key existed (plain SHA-256
/// throughout); `Ok(head)` is its last entry's seq and hash, if any.
pub fn verify_legacy(
    repo: &dyn AuditRepo,
) -> Result<Result<Option<LegacyHead>, BrokenLink>, StoreError> {
    let mut walk = Walk::new(None, &[]);
    Ok(walk.run(repo)?.map(|()| {
        (walk.next_seq > 1).then(|| LegacyHead {
            seq: walk.next_seq - 1,
            hash: walk.prev.clone(),
        })
    }))
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
        let _g = self.exclusive(&self.audit_lock, "audit")?;
        append(
            self.repo.as_ref(),
            &self.audit_key,
            actor,
            action,
            object,
            outcome,
        )
        .map(|_| ())
    }

    /// Verify the whole chain under the server's audit key (the console's status).
    pub fn verify_audit_chain(&self) -> Result<Result<u64, BrokenLink>, StoreError> {
        verify(self.repo.as_ref(), &self.audit_key, &[])
    }

    /// A pseudonym for a person ID in the audit log (HMAC under the pepper).
    pub fn person_pseudonym(&self, person: &str) -> String {
        format!(
            "person:{}",
            &hex::encode(self.hmac(b"audit-person", person.as_bytes()))[..16]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(byte: u8) -> AuditKey {
        AuditKey::from_bytes(Zeroizing::new([byte; 32]))
    }

    fn store() -> (tempfile::TempDir, Arc<dyn crate::storage::Repo>) {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::storage::open_sled(dir.path()).unwrap();
        (dir, repo)
    }

    fn chain(repo: &dyn AuditRepo, key: &AuditKey, n: u64) {
        for i in 0..n {
            append(
                repo,
                key,
                "admin",
                "principal.create",
                &format!("p{i}"),
                "ok",
            )
            .unwrap();
        }
    }

    fn entries(repo: &dyn AuditRepo) -> Vec<AuditEntry> {
        repo.audit_after(0, 1000).unwrap()
    }

    /// Rewrite entries from `from` on as an attacker with write access would:
    /// `change` each, then relink and rehash with `hash`.
    fn rewrite(
        repo: &dyn AuditRepo,
        from: u64,
        change: impl Fn(&mut AuditEntry),
        hash: impl Fn(&AuditEntry) -> String,
    ) {
        let all = entries(repo);
        let mut prev = if from == 1 {
            GENESIS.to_string()
        } else {
            all[from as usize - 2].hash.clone()
        };
        for mut e in all.into_iter().skip(from as usize - 1) {
            change(&mut e);
            e.prev_hash = prev;
            e.hash = hash(&e);
            prev = e.hash.clone();
            repo.put_audit(&e).unwrap();
        }
    }

    fn broken_at(repo: &dyn AuditRepo, key: &AuditKey, anchors: &[Anchor]) -> BrokenLink {
        verify(repo, key, anchors).unwrap().unwrap_err()
    }

    #[test]
    fn a_keyed_chain_verifies_and_is_not_plain_sha256() {
        let (_d, repo) = store();
        chain(repo.as_ref(), &key(1), 5);
        assert_eq!(verify(repo.as_ref(), &key(1), &[]).unwrap(), Ok(5));
        let all = entries(repo.as_ref());
        assert_eq!(all[0].prev_hash, GENESIS);
        for w in all.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        assert!(all.iter().all(|e| e.hash != legacy_hash(e)));
        assert_eq!(broken_at(repo.as_ref(), &key(2), &[]).seq, 1);
    }

    #[test]
    fn a_changed_entry_fails_however_the_chain_is_recomputed() {
        let refuse = |e: &mut AuditEntry| e.outcome = "refused".into();
        let keep = |_: &mut AuditEntry| {};
        // Changed, hashes left as they were.
        let (_d, repo) = store();
        chain(repo.as_ref(), &key(1), 5);
        let mut e = entries(repo.as_ref()).remove(2);
        e.outcome = "refused".into();
        repo.put_audit(&e).unwrap();
        let b = broken_at(repo.as_ref(), &key(1), &[]);
        assert_eq!(b.seq, 3);
        assert!(b.reason.contains("HMAC"), "{}", b.reason);
        // Changed, then the tail recomputed with plain SHA-256 (the old chain).
        let (_d, repo) = store();
        chain(repo.as_ref(), &key(1), 5);
        rewrite(repo.as_ref(), 3, refuse, legacy_hash);
        assert_eq!(broken_at(repo.as_ref(), &key(1), &[]).seq, 3);
        assert_eq!(entries(repo.as_ref())[2].outcome, "refused");
        // The whole chain recomputed with plain SHA-256.
        let (_d, repo) = store();
        chain(repo.as_ref(), &key(1), 5);
        rewrite(repo.as_ref(), 1, keep, legacy_hash);
        assert_eq!(broken_at(repo.as_ref(), &key(1), &[]).seq, 1);
        // ...which the unkeyed check of older builds accepts.
        assert!(verify_legacy(repo.as_ref()).unwrap().is_ok());
        // Changed, then recomputed under another key.
        let (_d, repo) = store();
        chain(repo.as_ref(), &key(1), 5);
        rewrite(repo.as_ref(), 3, refuse, |e| entry_hash(&key(9), e));
        assert_eq!(broken_at(repo.as_ref(), &key(1), &[]).seq, 3);
        // Unchanged but rehashed under the right key still verifies (the
        // rewrite helper itself is sound).
        let (_d, repo) = store();
        chain(repo.as_ref(), &key(1), 5);
        rewrite(repo.as_ref(), 2, keep, |e| entry_hash(&key(1), e));
        assert_eq!(verify(repo.as_ref(), &key(1), &[]).unwrap(), Ok(5));
    }

    #[test]
    fn anchors_catch_a_cut_tail_and_a_replaced_head() {
        let (_d, repo) = store();
        chain(repo.as_ref(), &key(1), 3);
        let head = entries(repo.as_ref()).pop().unwrap();
        let anchor: Anchor = format!("{}:{}", head.seq, head.hash).parse().unwrap();
        chain(repo.as_ref(), &key(1), 2);
        assert_eq!(
            verify(repo.as_ref(), &key(1), std::slice::from_ref(&anchor)).unwrap(),
            Ok(5)
        );
        // An anchor past the end: the tail was cut.
        let beyond = Anchor {
            seq: 7,
            hash: head.hash.clone(),
        };
        let b = broken_at(repo.as_ref(), &key(1), &[anchor.clone(), beyond]);
        assert_eq!(b.seq, 6);
        assert!(b.reason.contains("anchored head (entry 7)"), "{}", b.reason);
        // The anchored entry has another hash.
        let other = Anchor {
            seq: 3,
            hash: "ab".repeat(32),
        };
        assert_eq!(broken_at(repo.as_ref(), &key(1), &[other]).seq, 3);
    }

    #[test]
    fn anchors_parse_from_the_head_line_only() {
        let hash = "AB".repeat(32);
        let a: Anchor = format!("12:{hash}").parse().unwrap();
        assert_eq!((a.seq, a.hash), (12, "ab".repeat(32)));
        for bad in [
            "12".to_string(),
            format!("0:{hash}"),
            format!("x:{hash}"),
            "3:abc".into(),
        ] {
            assert!(bad.parse::<Anchor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pinned_legacy_chain_is_frozen() {
        let (_d, repo) = store();
        // A chain written by an older build: plain SHA-256.
        chain(repo.as_ref(), &key(1), 4);
        rewrite(repo.as_ref(), 1, |_| {}, legacy_hash);
        let head = verify_legacy(repo.as_ref()).unwrap().unwrap().unwrap();
        assert_eq!(head.seq, 4);
        let k = key(5).with_legacy(head);
        chain(repo.as_ref(), &k, 3);
        assert_eq!(verify(repo.as_ref(), &k, &[]).unwrap(), Ok(7));
        // After the pin, legacy hashes past it are refused.
        let (_d2, repo2) = store();
        chain(repo2.as_ref(), &key(1), 1);
        rewrite(repo2.as_ref(), 1, |_| {}, legacy_hash);
        let k2 = key(5).with_legacy(verify_legacy(repo2.as_ref()).unwrap().unwrap().unwrap());
        chain(repo2.as_ref(), &k2, 2);
        rewrite(repo2.as_ref(), 2, |_| {}, legacy_hash);
        assert_eq!(broken_at(repo2.as_ref(), &k2, &[]).seq, 2);
        // A rewritten legacy entry, recomputed to the pin: the pin differs.
        rewrite(
            repo.as_ref(),
            2,
            |e| e.outcome = "refused".into(),
            legacy_hash,
        );
        let b = broken_at(repo.as_ref(), &k, &[]);
        assert_eq!(b.seq, 4);
        assert!(b.reason.contains("pinned"), "{}", b.reason);
        // A store cut below the pin.
        let (_d3, repo3) = store();
        chain(repo3.as_ref(), &key(1), 2);
        rewrite(repo3.as_ref(), 1, |_| {}, legacy_hash);
        assert_eq!(broken_at(repo3.as_ref(), &k, &[]).seq, 3);
    }

    #[test]
    fn the_key_file_round_trips_and_its_errors_show_no_key() {
        let k = key(7).with_legacy(LegacyHead {
            seq: 9,
            hash: "cd".repeat(32),
        });
        let text = k.to_file_string();
        let back = AuditKey::from_file_string(&text).unwrap();
        assert_eq!(back.legacy(), k.legacy());
        assert_eq!(*back.key, [7u8; 32]);
        let plain = AuditKey::from_file_string(&key(7).to_file_string()).unwrap();
        assert!(plain.legacy().is_none());
        let secret = "07".repeat(32);
        for bad in [
            format!("onboard-pepper-v1 {secret}"),
            format!("{AUDIT_KEY_LABEL} {}", &secret[2..]),
            format!(
                "{AUDIT_KEY_LABEL} {secret}\nlegacy-sha256-head 0 {}",
                "cd".repeat(32)
            ),
            format!("{AUDIT_KEY_LABEL} {secret}\nlegacy-sha256-head 3 xyz"),
            format!(
                "{AUDIT_KEY_LABEL} {secret}\nlegacy-sha256-head 3 {}\nmore",
                "cd".repeat(32)
            ),
        ] {
            let err = AuditKey::from_file_string(&bad).unwrap_err();
            assert!(!err.contains(&secret[4..]), "{err}");
        }
        assert!(!format!("{k:?}").contains(&secret));
    }

    #[test]
    fn the_padded_key_is_the_hmac_key() {
        let k = key(3);
        let mut expected = <Hmac<Sha256> as Mac>::new_from_slice(&[3u8; 32]).unwrap();
        expected.update(b"x");
        assert_eq!(
            k.mac().chain_update(b"x").finalize().into_bytes(),
            expected.finalize().into_bytes()
        );
    }
}
