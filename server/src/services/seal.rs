//! Encryption at rest of destination cookie IDs, so that an erased or
//! expired cookie ID does not linger in plaintext in the store's log
//! segments. Encrypt-then-MAC with HMAC-SHA256 as the PRF: keystream block
//! `i` = `HMAC(k_enc, nonce || i)`, tag = `HMAC(k_mac, nonce || ciphertext)`.
//! Keys are derived from the server pepper. Cookies are deduplicated by a
//! keyed tag (`HMAC(k_tag, cookie)`), never by their plaintext.

use crate::services::auth::hmac_with;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Random nonce length.
const NONCE: usize = 16;
/// Authentication tag length.
const TAG: usize = 16;

/// A cookie ID's keyed tag, used in storage keys.
pub fn cookie_tag(pepper: &[u8; 32], cookie: &str) -> [u8; 16] {
    let full = hmac_with(pepper, b"cookie-tag", cookie.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn prf(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32], // HMAC takes keys of any length.
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn keystream_xor(k_enc: &[u8; 32], nonce: &[u8], data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(32).enumerate() {
        let block = prf(k_enc, &[nonce, &(i as u32).to_be_bytes()]);
        for (b, k) in chunk.iter_mut().zip(block) {
            *b ^= k;
        }
    }
}

/// Encrypt a cookie ID: `nonce || ciphertext || tag`.
pub fn seal(pepper: &[u8; 32], cookie: &str) -> Vec<u8> {
    use rand::RngCore;
    let k_enc = hmac_with(pepper, b"cookie-enc", b"");
    let k_mac = hmac_with(pepper, b"cookie-mac", b"");
    let mut nonce = [0u8; NONCE];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut body = cookie.as_bytes().to_vec();
    keystream_xor(&k_enc, &nonce, &mut body);
    let tag = prf(&k_mac, &[&nonce, &body]);
    let mut out = Vec::with_capacity(NONCE + body.len() + TAG);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag[..TAG]);
    out
}

/// Decrypt a sealed cookie ID; `None` if it was altered or is not one.
pub fn open(pepper: &[u8; 32], sealed: &[u8]) -> Option<String> {
    use subtle::ConstantTimeEq;
    if sealed.len() < NONCE + TAG {
        return None;
    }
    let k_enc = hmac_with(pepper, b"cookie-enc", b"");
    let k_mac = hmac_with(pepper, b"cookie-mac", b"");
    let (nonce, rest) = sealed.split_at(NONCE);
    let (body, tag) = rest.split_at(rest.len() - TAG);
    let expected = prf(&k_mac, &[nonce, body]);
    if !bool::from(expected[..TAG].ct_eq(tag)) {
        return None;
    }
    let mut plain = body.to_vec();
    keystream_xor(&k_enc, nonce, &mut plain);
    String::from_utf8(plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_round_trips_and_hides(cookie in "\\PC{1,200}") {
            let pepper = [3u8; 32];
            let sealed = seal(&pepper, &cookie);
            prop_assert_eq!(open(&pepper, &sealed), Some(cookie.clone()));
            prop_assert!(open(&[4u8; 32], &sealed).is_none());
            if cookie.len() >= 4 {
                prop_assert!(!sealed.windows(cookie.len()).any(|w| w == cookie.as_bytes()));
            }
            let mut tampered = sealed.clone();
            tampered[NONCE] ^= 1;
            prop_assert!(open(&pepper, &tampered).is_none());
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = open(&[3u8; 32], &bytes);
        }
    }
}
