//! Principals and API keys: `obk_` + base64url(32 random bytes), shown once,
//! stored as `HMAC-SHA256(pepper, key)`, compared in constant time.

use super::{new_id, rfc3339, unix_now, Services};
use crate::error::ApiError;
use crate::storage::{ApiKeyRecord, Principal, Role};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "obk_";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Principal name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The key used.
    pub key_id: String,
}

impl Caller {
    /// 403 unless the caller has `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role == role {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// A freshly created key (the secret is shown once).
#[derive(Debug, Serialize)]
pub struct NewKey {
    /// Principal.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Key ID.
    pub key_id: String,
    /// The key itself.
    pub api_key: String,
}

/// `HMAC-SHA256(pepper, label || 0 || data)`.
pub fn hmac_with(pepper: &[u8; 32], label: &[u8], data: &[u8]) -> [u8; 32] {
    LabelledHmac::new(pepper, label).of(data)
}

/// [`hmac_with`] under one key and label, the key's pads and the label
/// absorbed once: each value of an import batch then costs two SHA-256
/// compressions instead of four.
#[derive(Clone)]
pub struct LabelledHmac(Hmac<Sha256>);

impl LabelledHmac {
    /// The keyed state after `label || 0`.
    pub fn new(key: &[u8; 32], label: &[u8]) -> Self {
        // HMAC pads a key shorter than the block with zeros (RFC 2104), so
        // the padded block is the same key, and takes the infallible
        // constructor.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(key);
        let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&(*block).into());
        mac.update(label);
        mac.update(&[0]);
        Self(mac)
    }

    /// `HMAC(key, label || 0 || data)`.
    pub fn of(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// A principal name: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Create a principal and its first key directly on a store (used by `init`).
pub fn create_principal_in(
    repo: &dyn crate::storage::Repo,
    pepper: &[u8; 32],
    name: &str,
    role: Role,
    webhook_url: Option<String>,
) -> Result<NewKey, ApiError> {
    if !valid_name(name) {
        return Err(ApiError::BadRequest(
            "name: 1 to 64 characters of letters, digits, '.', '_' or '-'".into(),
        ));
    }
    let webhook_url = webhook_url.as_deref().map(checked_webhook).transpose()?;
    let p = Principal {
        name: name.into(),
        role,
        created: rfc3339(unix_now()),
        webhook_url,
    };
    if repo.create_principal(&p)?.is_err() {
        return Err(ApiError::Conflict(format!(
            "principal {name} exists already"
        )));
    }
    new_key_in(repo, pepper, &p)
}

/// A webhook URL will be called with a secret: the rule of every such URL
/// (`onboard_protocol::endpoint`: https, or plain http only to loopback, no
/// user-info, no query). Stored in the parser's canonical form, so the host
/// checked is the host called.
fn checked_webhook(text: &str) -> Result<String, ApiError> {
    onboard_protocol::check_secret_url(text)
        .map(String::from)
        .map_err(|e| ApiError::BadRequest(format!("webhook_url: {e}")))
}

fn new_key_in(
    repo: &dyn crate::storage::Repo,
    pepper: &[u8; 32],
    p: &Principal,
) -> Result<NewKey, ApiError> {
    use rand::RngCore;
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    let api_key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    );
    let rec = ApiKeyRecord {
        key_id: new_id("k-")[..18].to_string(),
        principal: p.name.clone(),
        hash: super::secrets::api_key_hash(pepper, &api_key),
        created: rfc3339(unix_now()),
        revoked: false,
        pepper: super::secrets::pepper_id(pepper),
    };
    repo.insert_key(&rec)?;
    Ok(NewKey {
        name: p.name.clone(),
        role: p.role,
        key_id: rec.key_id,
        api_key,
    })
}

impl Services {
    /// An HMAC under the identity key (person and audit pseudonyms).
    pub(crate) fn hmac(&self, label: &[u8], data: &[u8]) -> [u8; 32] {
        hmac_with(self.identity_key(), label, data)
    }

    /// Resolve a bearer token to a caller: 401 for anything not a live key.
    pub fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        if !token.starts_with(KEY_PREFIX) || token.len() > 128 {
            return Err(ApiError::Unauthenticated);
        }
        let rec = self.find_api_key(token)?.ok_or(ApiError::Unauthenticated)?;
        if rec.revoked {
            return Err(ApiError::Unauthenticated);
        }
        let p = self
            .repo
            .principal(&rec.principal)?
            .ok_or(ApiError::Unauthenticated)?;
        Ok(Caller {
            name: p.name,
            role: p.role,
            key_id: rec.key_id,
        })
    }

    /// Create a principal with a first key.
    pub fn create_principal(
        &self,
        actor: &Caller,
        name: &str,
        role: Role,
        webhook: Option<String>,
    ) -> Result<NewKey, ApiError> {
        let (pepper, _) = self.current_pepper();
        let result = create_principal_in(self.repo.as_ref(), &pepper, name, role, webhook);
        let outcome = if result.is_ok() { "ok" } else { "refused" };
        self.audit(
            &actor.name,
            &format!("principal.create.{}", role.as_str()),
            name,
            outcome,
        )?;
        result
    }

    /// An extra key for a principal.
    pub fn create_key(&self, actor: &Caller, name: &str) -> Result<NewKey, ApiError> {
        let p = self
            .repo
            .principal(name)?
            .ok_or(ApiError::NotFound("principal"))?;
        let (pepper, _) = self.current_pepper();
        let k = new_key_in(self.repo.as_ref(), &pepper, &p)?;
        self.audit(&actor.name, "key.create", &k.key_id, "ok")?;
        Ok(k)
    }

    /// Revoke one key.
    pub fn revoke_key(&self, actor: &Caller, key_id: &str) -> Result<(), ApiError> {
        let mut k = self.repo.key(key_id)?.ok_or(ApiError::NotFound("key"))?;
        k.revoked = true;
        self.repo.insert_key(&k)?;
        self.audit(&actor.name, "key.revoke", key_id, "ok")?;
        Ok(())
    }

    /// Revoke every key of a principal.
    pub fn revoke_principal(&self, actor: &Caller, name: &str) -> Result<u64, ApiError> {
        self.repo
            .principal(name)?
            .ok_or(ApiError::NotFound("principal"))?;
        let mut n = 0;
        for mut k in self
            .repo
            .keys()?
            .into_iter()
            .filter(|k| k.principal == name && !k.revoked)
        {
            k.revoked = true;
            self.repo.insert_key(&k)?;
            n += 1;
        }
        self.audit(&actor.name, "principal.revoke", name, "ok")?;
        Ok(n)
    }

    /// Principals with their keys, for the admin listing.
    pub fn list_principals(&self) -> Result<serde_json::Value, ApiError> {
        let keys = self.repo.keys()?;
        let list: Vec<_> = self
            .repo
            .principals()?
            .into_iter()
            .map(|p| {
                let ks: Vec<_> = keys
                    .iter()
                    .filter(|k| k.principal == p.name)
                    .map(|k| serde_json::json!({"key_id": k.key_id, "created": k.created, "revoked": k.revoked}))
                    .collect();
                serde_json::json!({"name": p.name, "role": p.role, "created": p.created, "webhook_url": p.webhook_url, "keys": ks})
            })
            .collect();
        Ok(serde_json::json!({ "principals": list }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(repo: &dyn crate::storage::Repo, name: &str, url: &str) -> Result<NewKey, ApiError> {
        create_principal_in(repo, &[5u8; 32], name, Role::Destination, Some(url.into()))
    }

    proptest::proptest! {
        /// The pre-keyed state gives the textbook HMAC of `label || 0 || data`.
        #[test]
        fn labelled_hmac_is_plain_hmac(
            key: [u8; 32],
            label in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
            plain.update(&label);
            plain.update(&[0]);
            plain.update(&data);
            let expected: [u8; 32] = plain.finalize().into_bytes().into();
            let keyed = LabelledHmac::new(&key, &label);
            proptest::prop_assert_eq!(keyed.of(&data), expected);
            // Reusable: a second value does not see the first.
            proptest::prop_assert_eq!(keyed.of(&data), expected);
            proptest::prop_assert_eq!(hmac_with(&key, &label, &data), expected);
        }
    }

    #[test]
    fn webhook_urls_follow_the_secret_url_rule() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::storage::open_sled(dir.path()).unwrap();
        for (i, url) in [
            "http://127.0.0.1:80@evil.example/hook",
            "https://user:pw@hooks.example/",
            "http://hooks.example/in",
            "http://127.0.0.1.evil.example",
            "https://hooks.example/in?token=x",
            "ftp://hooks.example/",
            "not a url",
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("refused-{i}");
            match create(repo.as_ref(), &name, url) {
                Err(ApiError::BadRequest(m)) => {
                    assert!(m.starts_with("webhook_url: "), "{url}: {m}")
                }
                other => panic!("{url}: {other:?}"),
            }
            assert!(repo.principal(&name).unwrap().is_none(), "{url} was stored");
        }
        // Accepted URLs are stored in canonical form: the host checked is the host called.
        for (name, url, stored) in [
            (
                "tls",
                "https://Hooks.Example/in",
                "https://hooks.example/in",
            ),
            ("local", "http://0x7f.1:9000/in", "http://127.0.0.1:9000/in"),
        ] {
            create(repo.as_ref(), name, url).unwrap();
            let p = repo.principal(name).unwrap().unwrap();
            assert_eq!(p.webhook_url.as_deref(), Some(stored));
        }
        create_principal_in(repo.as_ref(), &[5u8; 32], "none", Role::Destination, None).unwrap();
        assert_eq!(repo.principal("none").unwrap().unwrap().webhook_url, None);
    }
}
