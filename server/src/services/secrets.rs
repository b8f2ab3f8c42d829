//! Rotation of the API-key pepper (`keys rotate --pepper`).
//!
//! Policy: **re-hash on next use.** The rotation makes a new pepper current
//! and keeps the previous one as `pepper.key.old`. New keys are hashed
//! under the new pepper; a key issued before is still found under the old
//! pepper, and its first successful use stores its hash under the new one
//! (the record notes the pepper by its public fingerprint). `keys rotate
//! --pepper --status` counts the live keys still hashed under the old
//! pepper; `--finish` removes the old pepper and is refused while any
//! remain (revoke them, or have them used once). Only API keys depend on
//! the pepper: person pseudonyms, cookie tags and audit pseudonyms are on
//! the identity key, sealed values on the sealing key.
//!
//! Also here: the deployment's key fingerprints ([`KeyFingerprints`]),
//! recorded in the store and checked by every server at start, so that a
//! server whose key files were not updated after a rotation refuses to
//! start instead of working with an old key.

use super::auth::hmac_with;
use super::rotation::RotationError;
use super::{lock, Services};
use crate::error::ApiError;
use crate::keyfiles::{
    self, PEPPER_OLD_FILE, SEAL_KEY_FILE, SEAL_KEY_NEXT_FILE, SEAL_LABEL, SERVER_KEY_FILE,
    SERVER_KEY_NEXT_FILE,
};
use crate::storage::{ApiKeyRecord, KeyFingerprints, StoreError};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

/// HMAC label of API-key hashes.
const API_KEY_LABEL: &[u8] = b"api-key";
/// HMAC label of a pepper's public fingerprint.
const FINGERPRINT_LABEL: &[u8] = b"pepper-fingerprint";

/// The current pepper and, during a rotation, the previous one.
pub struct Peppers {
    current: Zeroizing<[u8; 32]>,
    current_id: String,
    old: Option<Zeroizing<[u8; 32]>>,
}

impl Peppers {
    /// The peppers a server starts with.
    pub fn new(current: Zeroizing<[u8; 32]>, old: Option<Zeroizing<[u8; 32]>>) -> Self {
        Self {
            current_id: pepper_id(&current),
            current,
            old,
        }
    }
}

/// A pepper's public fingerprint (an HMAC of a fixed label under it): it
/// names the pepper a stored key hash is under without revealing it.
pub fn pepper_id(pepper: &[u8; 32]) -> String {
    symmetric_id(pepper, FINGERPRINT_LABEL)
}

/// A 32-byte key's public fingerprint under `label`.
fn symmetric_id(key: &[u8; 32], label: &[u8]) -> String {
    hex::encode(&hmac_with(key, label, b"")[..8])
}

/// The sealing key's public fingerprint.
pub fn seal_id(key: &[u8; 32]) -> String {
    symmetric_id(key, b"seal-fingerprint")
}

/// An API key's stored hash under `pepper`.
pub fn api_key_hash(pepper: &[u8; 32], api_key: &str) -> [u8; 32] {
    hmac_with(pepper, API_KEY_LABEL, api_key.as_bytes())
}

impl Services {
    fn peppers(&self) -> std::sync::RwLockReadGuard<'_, Peppers> {
        self.peppers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current pepper and its fingerprint, for hashing a new key.
    pub(crate) fn current_pepper(&self) -> (Zeroizing<[u8; 32]>, String) {
        let p = self.peppers();
        (p.current.clone(), p.current_id.clone())
    }

    /// The key record whose hash matches `token` (compared in constant
    /// time), under the current pepper or else the old one; a live key
    /// found under the old pepper is re-hashed under the current one.
    pub(crate) fn find_api_key(&self, token: &str) -> Result<Option<ApiKeyRecord>, ApiError> {
        let (hash, id, old_hash) = {
            let p = self.peppers();
            (
                api_key_hash(&p.current, token),
                p.current_id.clone(),
                p.old.as_ref().map(|old| api_key_hash(old, token)),
            )
        };
        if let Some(rec) = self.repo.key_by_hash(&hash)? {
            return Ok(bool::from(rec.hash.ct_eq(&hash)).then_some(rec));
        }
        let Some(old_hash) = old_hash else {
            return Ok(None);
        };
        let Some(mut rec) = self.repo.key_by_hash(&old_hash)? else {
            return Ok(None);
        };
        if !bool::from(rec.hash.ct_eq(&old_hash)) {
            return Ok(None);
        }
        if !rec.revoked {
            rec.hash = hash;
            rec.pepper = id;
            self.repo.insert_key(&rec)?;
        }
        Ok(Some(rec))
    }

    /// The fingerprints of the keys this server holds now.
    fn local_fingerprints(&self) -> KeyFingerprints {
        let p = self.peppers();
        KeyFingerprints {
            server: self
                .key_state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .key()
                .fingerprint()
                .to_string(),
            seal: seal_id(&self.sealer().current_key()),
            identity: symmetric_id(self.identity_key(), b"identity-fingerprint"),
            pepper: p.current_id.clone(),
            old_pepper: p.old.as_deref().map(pepper_id),
        }
    }

    /// At start: record this server's key fingerprints if the store has
    /// none, else check that it holds the keys they name (or, for a
    /// rotation it was running, their `.next` files). A server that itself
    /// switched a key the record does not show yet (stopped between the
    /// two) brings the record up to date.
    pub fn check_key_fingerprints(&self) -> Result<(), RotationError> {
        let mine = self.local_fingerprints();
        let Some(mut rec) = self.repo.key_fingerprints()? else {
            self.repo.put_key_fingerprints(Some(&mine))?;
            return Ok(());
        };
        let dir = &self.config.data_dir;
        let next_server = match keyfiles::read_server_key_file(dir, SERVER_KEY_NEXT_FILE) {
            Ok(k) => Some(k.fingerprint().to_string()),
            Err(keyfiles::KeyFileError::Missing { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let next_seal = keyfiles::read_symmetric_if_present(dir, SEAL_KEY_NEXT_FILE, SEAL_LABEL)?
            .map(|k| seal_id(&k));
        let mismatch = |file: &'static str| RotationError::KeyMismatch { file };
        if rec.server != mine.server && Some(&rec.server) != next_server.as_ref() {
            return Err(mismatch(SERVER_KEY_FILE));
        }
        if rec.seal != mine.seal && Some(&rec.seal) != next_seal.as_ref() {
            return Err(mismatch(SEAL_KEY_FILE));
        }
        if rec.identity != mine.identity {
            return Err(mismatch(keyfiles::IDENTITY_KEY_FILE));
        }
        if rec.pepper != mine.pepper {
            if mine.old_pepper.as_ref() != Some(&rec.pepper) {
                return Err(mismatch(keyfiles::PEPPER_FILE));
            }
            // This server's pepper switch outran the record.
            rec.pepper = mine.pepper.clone();
            rec.old_pepper = mine.old_pepper.clone();
            self.repo.put_key_fingerprints(Some(&rec))?;
        }
        if rec.old_pepper.is_some() && rec.old_pepper != mine.old_pepper {
            return Err(mismatch(PEPPER_OLD_FILE));
        }
        Ok(())
    }

    /// Update the recorded fingerprints (a rotation switching a key).
    pub(crate) fn record_fingerprints(
        &self,
        change: impl FnOnce(&mut KeyFingerprints),
    ) -> Result<(), StoreError> {
        let mut rec = match self.repo.key_fingerprints()? {
            Some(rec) => rec,
            None => self.local_fingerprints(),
        };
        change(&mut rec);
        self.repo.put_key_fingerprints(Some(&rec))
    }

    /// Live keys whose hash is not under the current pepper, by key ID.
    pub fn keys_on_old_pepper(&self) -> Result<Vec<String>, ApiError> {
        let id = self.peppers().current_id.clone();
        Ok(self
            .repo
            .keys()?
            .into_iter()
            .filter(|k| !k.revoked && k.pepper != id)
            .map(|k| k.key_id)
            .collect())
    }

    /// Start a pepper rotation: a new pepper becomes current, the previous
    /// one verifies older keys until [`Services::finish_pepper_rotation`].
    pub fn start_pepper_rotation(&self) -> Result<String, RotationError> {
        let _g = lock(&self.pepper_lock);
        if self.peppers().old.is_some() {
            return Err(RotationError::PepperPending(
                self.keys_on_old_pepper()?.len(),
            ));
        }
        let new = keyfiles::random_symmetric();
        keyfiles::switch_pepper(&self.config.data_dir, &new)?;
        let (old_id, new_id) = {
            let mut p = self.peppers.write().unwrap_or_else(|p| p.into_inner());
            let new_id = pepper_id(&new);
            let old = std::mem::replace(&mut p.current, new);
            let old_id = std::mem::replace(&mut p.current_id, new_id);
            p.old = Some(old);
            (old_id, p.current_id.clone())
        };
        self.record_fingerprints(|f| {
            f.pepper = new_id;
            f.old_pepper = Some(old_id);
        })?;
        self.audit("system", "keys.rotate.pepper.start", "pepper.key", "ok")?;
        self.pepper_status()
    }

    /// One line: is a pepper rotation pending, and how many keys need it.
    pub fn pepper_status(&self) -> Result<String, RotationError> {
        if self.peppers().old.is_none() {
            return Ok("no pepper rotation pending".into());
        }
        let n = self.keys_on_old_pepper()?.len();
        Ok(format!(
            "pepper rotated: {n} live API keys still hashed under the old pepper{}",
            if n == 0 {
                " (finish with `keys rotate --pepper --finish`)"
            } else {
                " (each moves on its next use; revoke the others)"
            }
        ))
    }

    /// Drop the old pepper (file and memory), once no live key needs it.
    pub fn finish_pepper_rotation(&self) -> Result<String, RotationError> {
        let _g = lock(&self.pepper_lock);
        if self.peppers().old.is_none() {
            return Err(RotationError::NoPepperRotation);
        }
        let waiting = self.keys_on_old_pepper()?;
        if !waiting.is_empty() {
            return Err(RotationError::PepperInUse {
                count: waiting.len(),
                first: waiting
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let path = self.config.data_dir.join(PEPPER_OLD_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RotationError::KeyFile(keyfiles::KeyFileError::Io {
                    path,
                    reason: e.to_string(),
                }))
            }
        }
        keyfiles::sync_dir(&self.config.data_dir);
        self.record_fingerprints(|f| f.old_pepper = None)?;
        // Dropping the Zeroizing value wipes the old pepper.
        self.peppers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .old
            .take();
        self.audit("system", "keys.rotate.pepper.finish", "pepper.key", "ok")?;
        Ok("finished: the old pepper is destroyed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Role;
    use std::sync::Arc;

    fn services_in(dir: &std::path::Path) -> Arc<Services> {
        let config = crate::config::Config {
            data_dir: dir.to_path_buf(),
            ..crate::config::Config::default()
        };
        let secrets = crate::keyfiles::ServerSecrets::derive_for_tests("pepper");
        keyfiles::write_private(
            &dir.join(keyfiles::PEPPER_FILE),
            keyfiles::pepper_file_string(&secrets.pepper).as_bytes(),
        )
        .unwrap();
        Arc::new(Services::new(crate::storage::open_sled(dir).unwrap(), config, secrets).unwrap())
    }

    #[test]
    fn keys_move_to_the_new_pepper_on_use_and_finish_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = services_in(dir.path());
        let admin = crate::services::auth::Caller {
            name: "admin".into(),
            role: Role::Admin,
            key_id: "k-admin".into(),
        };
        let used = s
            .create_principal(&admin, "acme", Role::Advertiser, None)
            .unwrap();
        let unused = s
            .create_principal(&admin, "dsp", Role::Destination, None)
            .unwrap();
        assert_eq!(s.pepper_status().unwrap(), "no pepper rotation pending");
        assert!(matches!(
            s.finish_pepper_rotation(),
            Err(RotationError::NoPepperRotation)
        ));

        s.start_pepper_rotation().unwrap();
        assert!(dir.path().join(PEPPER_OLD_FILE).exists());
        assert!(matches!(
            s.start_pepper_rotation(),
            Err(RotationError::PepperPending(2))
        ));
        assert_eq!(s.keys_on_old_pepper().unwrap().len(), 2);
        assert_eq!(s.authenticate(&used.api_key).unwrap().name, "acme");
        assert_eq!(s.keys_on_old_pepper().unwrap(), vec![unused.key_id.clone()]);
        // The stored hash is the new pepper's.
        let (pepper, _) = s.current_pepper();
        let rec = s.repo.key(&used.key_id).unwrap().unwrap();
        assert_eq!(rec.hash, api_key_hash(&pepper, &used.api_key));
        assert!(s.repo.key_by_hash(&rec.hash).unwrap().is_some());
        let made_after = s.create_key(&admin, "acme").unwrap();
        assert_eq!(s.keys_on_old_pepper().unwrap().len(), 1);
        assert!(s.authenticate("obk_not-a-key").is_err());

        let refused = s.finish_pepper_rotation().unwrap_err();
        assert!(refused.to_string().contains(&unused.key_id), "{refused}");
        s.revoke_key(&admin, &unused.key_id).unwrap();
        s.finish_pepper_rotation().unwrap();
        assert!(!dir.path().join(PEPPER_OLD_FILE).exists());
        assert!(s.authenticate(&used.api_key).is_ok());
        assert!(s.authenticate(&made_after.api_key).is_ok());
        assert!(s.authenticate(&unused.api_key).is_err());
    }
}
