//! SHA-256 digests of normalised identifiers.

use sha2::{Digest as _, Sha256};
use std::fmt;

/// `SHA-256(normalised UTF-8)`: what the client and the operator's import
/// tool hash to the curve. It never reaches the server's disk or logs, so
/// its `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Hash a normalised identifier.
    pub fn of(normalised: &str) -> Self {
        Self(Sha256::digest(normalised.as_bytes()).into())
    }

    /// Lower-case hexadecimal, as printed by `onboard normalize`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hexadecimal characters (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest(..)")
    }
}
