//! Encryption at rest of destination cookie IDs, so that an erased or
//! expired cookie ID does not linger in plaintext in the store's log
//! segments. XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under a
//! key derived from the server pepper, with a random 24-byte nonce per
//! value. Cookies are deduplicated by a keyed tag (`HMAC(k_tag, cookie)`),
//! never by their plaintext. The same construction, under its own derived
//! key, makes the opaque members cursors (see `audiences.rs`).

use crate::services::auth::hmac_with;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Nonce length of XChaCha20-Poly1305.
const NONCE: usize = 24;

/// A cookie ID's keyed tag, used in storage keys.
pub fn cookie_tag(pepper: &[u8; 32], cookie: &str) -> [u8; 16] {
    let full = hmac_with(pepper, b"cookie-tag", cookie.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn cipher(pepper: &[u8; 32], label: &[u8]) -> XChaCha20Poly1305 {
    let key = hmac_with(pepper, label, b"");
    XChaCha20Poly1305::new(&key.into())
}

/// Key label of sealed cookie IDs.
const COOKIE_LABEL: &[u8] = b"cookie-aead";

/// Encrypt a cookie ID: `nonce || ciphertext || tag`.
pub fn seal(pepper: &[u8; 32], cookie: &str) -> Option<Vec<u8>> {
    seal_bytes(pepper, COOKIE_LABEL, b"", cookie.as_bytes())
}

/// Decrypt a sealed cookie ID; `None` if it was altered or is not one.
pub fn open(pepper: &[u8; 32], sealed: &[u8]) -> Option<String> {
    String::from_utf8(open_bytes(pepper, COOKIE_LABEL, b"", sealed)?).ok()
}

/// Encrypt `plain` under the key derived for `label`, bound to `context`
/// (authenticated, not encrypted): `nonce || ciphertext || tag`. The random
/// nonce makes two seals of the same bytes unlinkable.
pub fn seal_bytes(
    pepper: &[u8; 32],
    label: &[u8],
    context: &[u8],
    plain: &[u8],
) -> Option<Vec<u8>> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ciphertext = cipher(pepper, label)
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
pub fn open_bytes(
    pepper: &[u8; 32],
    label: &[u8],
    context: &[u8],
    sealed: &[u8],
) -> Option<Vec<u8>> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE);
    cipher(pepper, label)
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
            let pepper = [3u8; 32];
            let sealed = seal(&pepper, &cookie).unwrap();
            prop_assert_eq!(open(&pepper, &sealed), Some(cookie.clone()));
            prop_assert!(open(&[4u8; 32], &sealed).is_none());
            if cookie.len() >= 4 {
                prop_assert!(!sealed.windows(cookie.len()).any(|w| w == cookie.as_bytes()));
            }
            let mut tampered = sealed.clone();
            tampered[NONCE] ^= 1;
            prop_assert!(open(&pepper, &tampered).is_none());
            let mut tampered = sealed.clone();
            tampered[0] ^= 1;
            prop_assert!(open(&pepper, &tampered).is_none());
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = open(&[3u8; 32], &bytes);
        }
    }
}
