//! Secret scalars: the advertiser's `a` and the server's `b`. Versioned text
//! encoding for key files, a public fingerprint, zeroised on drop.

use crate::error::KeyError;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use rand::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Key-file header; a new encoding gets a new header, never an edit of this one.
pub const KEY_FILE_LABEL: &str = "onboard-key-v1";

/// Domain-separation label of public-key fingerprints.
pub const FINGERPRINT_LABEL: &[u8] = b"onboard-v1/fingerprint";

/// A secret blinding scalar. Never printed, zeroised when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey {
    scalar: Scalar,
}

impl SecretKey {
    /// A fresh random non-zero key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        loop {
            let scalar = Scalar::random(rng);
            if scalar != Scalar::ZERO {
                return Self { scalar };
            }
        }
    }

    /// A key from 32 little-endian bytes: canonical and non-zero.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        let scalar: Option<Scalar> = Scalar::from_canonical_bytes(bytes).into();
        match scalar {
            Some(scalar) if scalar != Scalar::ZERO => Ok(Self { scalar }),
            _ => Err(KeyError::BadScalar),
        }
    }

    /// A deterministic key derived from a label, for test vectors and tests
    /// only: anyone who knows the label knows the key.
    pub fn derive_for_tests(label: &str) -> Self {
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&sha2::Sha512::digest(label.as_bytes()));
        Self {
            scalar: Scalar::from_bytes_mod_order_wide(&wide),
        }
    }

    /// The key file's text: `onboard-key-v1 <64 hex>\n`.
    pub fn to_file_string(&self) -> Zeroizing<String> {
        let mut bytes = self.scalar.to_bytes();
        let text = format!("{KEY_FILE_LABEL} {}\n", hex::encode(bytes));
        bytes.zeroize();
        Zeroizing::new(text)
    }

    /// Parse a key file's text.
    pub fn from_file_string(text: &str) -> Result<Self, KeyError> {
        let rest = text
            .trim()
            .strip_prefix(KEY_FILE_LABEL)
            .ok_or(KeyError::BadFormat)?
            .trim();
        let mut bytes = Zeroizing::new([0u8; 32]);
        if rest.len() != 64 || hex::decode_to_slice(rest, bytes.as_mut()).is_err() {
            return Err(KeyError::BadFormat);
        }
        Self::from_bytes(*bytes)
    }

    /// The public fingerprint: first 16 bytes of
    /// `SHA-256(FINGERPRINT_LABEL || compress(k·G))`. It lets the server
    /// cache per key without learning anything usable about the key.
    pub fn fingerprint(&self) -> Fingerprint {
        let public = (&self.scalar * RISTRETTO_BASEPOINT_TABLE).compress();
        let hash = Sha256::new()
            .chain_update(FINGERPRINT_LABEL)
            .chain_update(public.as_bytes())
            .finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&hash[..16]);
        Fingerprint(out)
    }

    /// The factor `new·old⁻¹` of a key rotation: it turns `old·X` into
    /// `new·X` (and `a·old·X` into `a·new·X`) in one multiplication.
    pub fn rotation_factor(old: &SecretKey, new: &SecretKey) -> SecretKey {
        // `old` is non-zero (every constructor refuses zero), so it inverts.
        Self {
            scalar: new.scalar * old.scalar.invert(),
        }
    }

    pub(crate) fn scalar(&self) -> &Scalar {
        &self.scalar
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(fingerprint {})", self.fingerprint())
    }
}

/// A public key fingerprint, shown as 32 hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// Parse 32 hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        if text.len() != 32 {
            return None;
        }
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotation_factor_moves_points_from_the_old_key_to_the_new() {
        use crate::blind::{blind_with, reblind};
        use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as G;
        let old = SecretKey::derive_for_tests("old");
        let new = SecretKey::derive_for_tests("new");
        let a = SecretKey::derive_for_tests("advertiser");
        let factor = SecretKey::rotation_factor(&old, &new);
        let under_old = blind_with(&old, &G);
        let rotated = reblind(&factor, &[under_old]).unwrap();
        assert_eq!(rotated[0], blind_with(&new, &G));
        let ab_old = reblind(&a, &[under_old]).unwrap();
        let ab_rotated = reblind(&factor, &ab_old).unwrap();
        assert_eq!(ab_rotated, reblind(&a, &[blind_with(&new, &G)]).unwrap());
    }

    #[test]
    fn key_file_round_trips_and_rejects_junk() {
        let key = SecretKey::generate(&mut rand::thread_rng());
        let text = key.to_file_string();
        let back = SecretKey::from_file_string(&text).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert_eq!(
            SecretKey::from_file_string("hello").unwrap_err(),
            KeyError::BadFormat
        );
        let zero = format!("{KEY_FILE_LABEL} {}", "00".repeat(32));
        assert_eq!(
            SecretKey::from_file_string(&zero).unwrap_err(),
            KeyError::BadScalar
        );
        let non_canonical = format!("{KEY_FILE_LABEL} {}", "ff".repeat(32));
        assert_eq!(
            SecretKey::from_file_string(&non_canonical).unwrap_err(),
            KeyError::BadScalar
        );
    }

    #[test]
    fn debug_never_prints_the_scalar() {
        let key = SecretKey::derive_for_tests("debug");
        let hex_scalar = hex::encode(key.scalar().to_bytes());
        assert!(!format!("{key:?}").contains(&hex_scalar));
        assert_ne!(
            SecretKey::derive_for_tests("other").fingerprint(),
            key.fingerprint()
        );
    }
}
