//! Hash-to-ristretto255 with a versioned domain-separation tag per kind,
//! and the strict decoding of points received from the other party.

use crate::digest::Digest;
use crate::error::PointError;
use crate::normalize::MatchKind;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use sha2::{Digest as _, Sha512};
use std::fmt;

/// Protocol version prefix of every domain-separation tag. Changing how
/// points are derived means a new version, never an edit of this one.
pub const DST_PREFIX: &[u8] = b"onboard-v1/";

/// The full tag hashed before the digest of a `kind` identifier:
/// `onboard-v1/email`, `onboard-v1/phone`, `onboard-v1/maid`.
pub fn domain_separation_tag(kind: MatchKind) -> &'static [u8] {
    match kind {
        MatchKind::Email => b"onboard-v1/email",
        MatchKind::Phone => b"onboard-v1/phone",
        MatchKind::Maid => b"onboard-v1/maid",
    }
}

/// `P = RistrettoPoint::hash_from_bytes::<Sha512>(DST || kind || digest)`.
pub fn hash_to_point(kind: MatchKind, digest: &Digest) -> RistrettoPoint {
    let hasher = Sha512::new()
        .chain_update(domain_separation_tag(kind))
        .chain_update(digest.as_bytes());
    RistrettoPoint::from_hash(hasher)
}

/// A compressed ristretto255 point as it travels on the wire or sits in the
/// store: 32 bytes, not yet known to be valid until [`PointBytes::decode`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PointBytes(pub [u8; 32]);

impl PointBytes {
    /// Encoded length.
    pub const LEN: usize = 32;

    /// Compress a point.
    pub fn encode(point: &RistrettoPoint) -> Self {
        Self(point.compress().to_bytes())
    }

    /// Decode strictly: canonical encoding, not the identity.
    pub fn decode(&self) -> Result<RistrettoPoint, PointError> {
        // Encodings are canonical, so the identity is exactly the all-zero
        // string: a byte test here spares a projective comparison (four
        // field multiplications and two reductions) per decoded point.
        if self.0 == [0; 32] {
            return Err(PointError::Identity);
        }
        CompressedRistretto(self.0)
            .decompress()
            .ok_or(PointError::Invalid)
    }

    /// The encoding rules of ristretto255 that need no field arithmetic: a
    /// canonical (`< 2^255 - 19`), non-negative (even) field element, and
    /// not the identity. Enough for a point that is only ever compared with
    /// canonical encodings (a point off the curve can equal none of them);
    /// a point that enters arithmetic must pass [`PointBytes::decode`].
    pub fn check_form(&self) -> Result<(), PointError> {
        let s = &self.0;
        if s.iter().all(|&b| b == 0) {
            return Err(PointError::Identity);
        }
        // s >= p: the top bit set, or 2^255 - 19 ..= 2^255 - 1.
        let at_least_p = s[31] & 0x80 != 0
            || (s[31] == 0x7f && s[1..31].iter().all(|&b| b == 0xff) && s[0] >= 0xed);
        if at_least_p || s[0] & 1 == 1 {
            return Err(PointError::Invalid);
        }
        Ok(())
    }

    /// Take 32 bytes from a slice of any length, refusing other lengths.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PointError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| PointError::WrongLength {
            actual: bytes.len(),
        })?;
        Ok(Self(array))
    }

    /// Lower-case hexadecimal.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PointBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PointBytes({}..)", hex::encode(&self.0[..4]))
    }
}

/// Decode a point from any byte slice: right length, canonical, not identity.
pub fn decode_point(bytes: &[u8]) -> Result<RistrettoPoint, PointError> {
    PointBytes::from_slice(bytes)?.decode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;

    #[test]
    fn kinds_never_collide() {
        let d = Digest::of("same text");
        let points: Vec<_> = MatchKind::ALL
            .iter()
            .map(|&k| hash_to_point(k, &d))
            .collect();
        assert_ne!(points[0], points[1]);
        assert_ne!(points[1], points[2]);
        assert_ne!(points[0], points[2]);
    }

    #[test]
    fn check_form_agrees_with_decode_on_form() {
        assert!(PointBytes::encode(&RISTRETTO_BASEPOINT_POINT)
            .check_form()
            .is_ok());
        assert_eq!(PointBytes([0; 32]).check_form(), Err(PointError::Identity));
        assert_eq!(
            PointBytes([0xff; 32]).check_form(),
            Err(PointError::Invalid)
        );
        // p = 2^255 - 19 and p + 2 are not canonical encodings.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert_eq!(PointBytes(p).check_form(), Err(PointError::Invalid));
        let mut p_plus_2 = p;
        p_plus_2[0] = 0xef;
        assert_eq!(PointBytes(p_plus_2).check_form(), Err(PointError::Invalid));
        let mut neg = [0u8; 32];
        neg[0] = 1;
        assert_eq!(PointBytes(neg).check_form(), Err(PointError::Invalid));
    }

    #[test]
    fn decode_rejects_bad_points() {
        let good = PointBytes::encode(&RISTRETTO_BASEPOINT_POINT);
        assert!(good.decode().is_ok());
        assert_eq!(
            decode_point(&[0u8; 31]),
            Err(PointError::WrongLength { actual: 31 })
        );
        assert_eq!(
            decode_point(&[0u8; 33]),
            Err(PointError::WrongLength { actual: 33 })
        );
        assert_eq!(PointBytes([0u8; 32]).decode(), Err(PointError::Identity));
        // `decode` tests bytes for the identity: its only encoding is zero.
        use curve25519_dalek::traits::Identity;
        assert_eq!(
            PointBytes::encode(&RistrettoPoint::identity()),
            PointBytes([0; 32])
        );
        // All-ones is not a canonical field element encoding.
        assert_eq!(PointBytes([0xff; 32]).decode(), Err(PointError::Invalid));
        // A negative field element (low bit set) is never canonical ristretto.
        let mut neg = [0u8; 32];
        neg[0] = 1;
        assert_eq!(PointBytes(neg).decode(), Err(PointError::Invalid));
    }
}
