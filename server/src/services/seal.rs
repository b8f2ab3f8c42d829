//! Encryption at rest of destination cookie IDs, so that an erased or
//! expired cookie ID does not linger in plaintext in the store's log
//! segments. XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under a
//! key derived from the sealing key (`seal.key`), with a random 24-byte
//! nonce per value. Cookies are deduplicated by a keyed tag
//! (`HMAC(identity key, cookie)`), never by their plaintext: the tag is an
//! identity in stored data (record keys, pull positions), so it stays on
//! the identity key when the sealing key rotates. The same construction,
//! under its own derived keys, makes the opaque members cursors (see
//! `audiences.rs`) and seals webhook secrets (see `webhooks.rs`).
//!
//! While `keys rotate --seal-key` runs, a [`Sealer`] holds both keys: it
//! seals under the new one and opens under either (the AEAD tag tells which).

use crate::services::auth::{hmac_with, LabelledHmac};
use crate::storage::SealedCookie;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// Nonce length of XChaCha20-Poly1305.
const NONCE: usize = 24;

/// Label of a cookie ID's tag.
const TAG_LABEL: &[u8] = b"cookie-tag";

/// A cookie ID's keyed tag, used in storage keys (under the identity key).
pub fn cookie_tag(identity: &[u8; 32], cookie: &str) -> [u8; 16] {
    truncated_tag(&hmac_with(identity, TAG_LABEL, cookie.as_bytes()))
}

fn truncated_tag(full: &[u8; 32]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Seals the cookie IDs of one import batch: the cipher and the tag's keyed
/// HMAC are derived once for the batch, not once per cookie.
pub struct CookieSealer {
    cipher: XChaCha20Poly1305,
    tag: LabelledHmac,
}

impl CookieSealer {
    /// A cookie ID sealed, with its tag; the same as
    /// [`Sealer::sealed_cookie`].
    pub fn seal(&self, cookie: &str) -> Option<SealedCookie> {
        Some(SealedCookie {
            tag: truncated_tag(&self.tag.of(cookie.as_bytes())),
            sealed: seal_with(&self.cipher, b"", cookie.as_bytes())?,
        })
    }
}

/// The sealing key, and the next one while a rotation runs.
pub struct Sealer {
    current: Zeroizing<[u8; 32]>,
    next: Option<Zeroizing<[u8; 32]>>,
}

impl Sealer {
    /// One key, no rotation.
    pub fn new(current: Zeroizing<[u8; 32]>) -> Self {
        Self {
            current,
            next: None,
        }
    }

    /// Both keys of a running rotation: new values go under `next`.
    pub fn rotating(current: Zeroizing<[u8; 32]>, next: Zeroizing<[u8; 32]>) -> Self {
        Self {
            current,
            next: Some(next),
        }
    }

    /// A copy of the current key (the older one during a rotation).
    pub fn current_key(&self) -> Zeroizing<[u8; 32]> {
        self.current.clone()
    }

    /// The key new values are sealed under.
    fn sealing_key(&self) -> &[u8; 32] {
        self.next.as_deref().unwrap_or(&self.current)
    }

    /// A cookie ID sealed, with its tag under `identity`.
    pub fn sealed_cookie(&self, identity: &[u8; 32], cookie: &str) -> Option<SealedCookie> {
        self.cookie_sealer(identity).seal(cookie)
    }

    /// A sealer of many cookie IDs under the sealing key, tagged under
    /// `identity`.
    pub fn cookie_sealer(&self, identity: &[u8; 32]) -> CookieSealer {
        CookieSealer {
            cipher: cipher(self.sealing_key(), COOKIE_LABEL),
            tag: LabelledHmac::new(identity, TAG_LABEL),
        }
    }

    /// Open a sealed cookie ID under either key.
    pub fn open_cookie(&self, sealed: &[u8]) -> Option<String> {
        String::from_utf8(self.open_bytes(COOKIE_LABEL, b"", sealed)?).ok()
    }

    /// [`seal_bytes`] under the sealing key.
    pub fn seal_bytes(&self, label: &[u8], context: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        seal_bytes(self.sealing_key(), label, context, plain)
    }

    /// [`open_bytes`] under either key (the newer first).
    pub fn open_bytes(&self, label: &[u8], context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        self.next
            .as_deref()
            .and_then(|next| open_bytes(next, label, context, sealed))
            .or_else(|| open_bytes(&self.current, label, context, sealed))
    }

    /// A value sealed under either key, sealed again under the newer one;
    /// `None` if neither opens it.
    pub fn reseal(&self, label: &[u8], context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let plain = Zeroizing::new(self.open_bytes(label, context, sealed)?);
        self.seal_bytes(label, context, &plain)
    }

    /// A sealed cookie ID sealed again under the newer key.
    pub fn reseal_cookie(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.reseal(COOKIE_LABEL, b"", sealed)
    }
}

fn cipher(key: &[u8; 32], label: &[u8]) -> XChaCha20Poly1305 {
    let key = hmac_with(key, label, b"");
    XChaCha20Poly1305::new(&key.into())
}

/// Key label of sealed cookie IDs.
pub const COOKIE_LABEL: &[u8] = b"cookie-aead";

/// Encrypt a cookie ID under `key`: `nonce || ciphertext || tag`.
pub fn seal(key: &[u8; 32], cookie: &str) -> Option<Vec<u8>> {
    seal_bytes(key, COOKIE_LABEL, b"", cookie.as_bytes())
}

/// Decrypt a cookie ID sealed under `key`; `None` if it was altered or is
/// not one (tests use it to look for values sealed under an old key).
pub fn open(key: &[u8; 32], sealed: &[u8]) -> Option<String> {
    String::from_utf8(open_bytes(key, COOKIE_LABEL, b"", sealed)?).ok()
}

/// Encrypt `plain` under the key derived for `label`, bound to `context`
/// (authenticated, not encrypted): `nonce || ciphertext || tag`. The random
/// nonce makes two seals of the same bytes unlinkable.
pub fn seal_bytes(key: &[u8; 32], label: &[u8], context: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
    seal_with(&cipher(key, label), context, plain)
}

/// [`seal_bytes`] with the derived cipher. The nonce comes from `rand`'s
/// thread-local CSPRNG (seeded and reseeded by the OS): 192 random bits, as
/// from the OS, without a system call per value.
fn seal_with(cipher: &XChaCha20Poly1305, context: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::thread_rng());
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: context,
            },
        )
        .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ciphertext);
    Some(out)
}

/// Decrypt what [`seal_bytes`] made with the same label and context; `None`
/// if anything was altered or differs.
pub fn open_bytes(key: &[u8; 32], label: &[u8], context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE);
    cipher(key, label)
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: context,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_round_trips_and_hides(cookie in "\\PC{1,200}") {
            let key = [3u8; 32];
            let sealed = seal(&key, &cookie).unwrap();
            prop_assert_eq!(open(&key, &sealed), Some(cookie.clone()));
            prop_assert!(open(&[4u8; 32], &sealed).is_none());
            if cookie.len() >= 4 {
                prop_assert!(!sealed.windows(cookie.len()).any(|w| w == cookie.as_bytes()));
            }
            let mut tampered = sealed.clone();
            tampered[NONCE] ^= 1;
            prop_assert!(open(&key, &tampered).is_none());
            let mut tampered = sealed.clone();
            tampered[0] ^= 1;
            prop_assert!(open(&key, &tampered).is_none());
        }

        /// A batch's sealer seals like the one-cookie path: opened by the
        /// sealing key, the same tag, a fresh nonce each time.
        #[test]
        fn batch_sealer_matches_single_seals(cookie in "\\PC{1,100}") {
            let (key, identity) = ([3u8; 32], [9u8; 32]);
            let sealer = Sealer::new(Zeroizing::new(key)).cookie_sealer(&identity);
            let (a, b) = (sealer.seal(&cookie).unwrap(), sealer.seal(&cookie).unwrap());
            prop_assert_eq!(open(&key, &a.sealed), Some(cookie.clone()));
            prop_assert_eq!(open(&key, &b.sealed), Some(cookie.clone()));
            prop_assert_eq!(a.tag, cookie_tag(&identity, &cookie));
            prop_assert_eq!(b.tag, a.tag);
            prop_assert_ne!(&a.sealed[..NONCE], &b.sealed[..NONCE]);
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = open(&[3u8; 32], &bytes);
        }
    }
}
