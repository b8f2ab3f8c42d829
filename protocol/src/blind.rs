//! Batch blinding: `k·P` over slices, in parallel with rayon, compressed in
//! batches (one field inversion per chunk instead of one per point).

use crate::curve::{hash_to_point, PointBytes};
use crate::digest::Digest;
use crate::error::IndexedPointError;
use crate::keys::SecretKey;
use crate::normalize::MatchKind;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;

/// Points per rayon task: large enough to amortise batch compression (one
/// inversion) and task overhead, small enough that the last task of a call,
/// which runs alone (a few milliseconds), leaves little of a core idle.
pub const CHUNK: usize = 128;

/// `k·P` for one point.
pub fn blind_with(key: &SecretKey, point: &RistrettoPoint) -> PointBytes {
    PointBytes::encode(&(key.scalar() * point))
}

/// `compress(k·P)` for each point, in parallel.
pub fn blind_points(key: &SecretKey, points: &[RistrettoPoint]) -> Vec<PointBytes> {
    let half_k = half(key);
    let mut out = vec![PointBytes::default(); points.len()];
    out.par_chunks_mut(CHUNK)
        .zip(points.par_chunks(CHUNK))
        .for_each(|(out, points)| {
            let scaled: Vec<RistrettoPoint> = points.iter().map(|p| half_k * p).collect();
            compress_doubled_into(&scaled, out);
        });
    out
}

/// Hash each digest to the curve and blind it: the client's `a·P(x)` and the
/// server's import-time `b·P(y)`, in one parallel pass.
pub fn hash_and_blind(key: &SecretKey, items: &[(MatchKind, Digest)]) -> Vec<PointBytes> {
    let half_k = half(key);
    let mut out = vec![PointBytes::default(); items.len()];
    out.par_chunks_mut(CHUNK)
        .zip(items.par_chunks(CHUNK))
        .for_each(|(out, items)| {
            let scaled: Vec<RistrettoPoint> = items
                .iter()
                .map(|(kind, digest)| half_k * hash_to_point(*kind, digest))
                .collect();
            compress_doubled_into(&scaled, out);
        });
    out
}

/// Decode each point strictly, multiply by `k`, compress: `k·X` for each `X`.
/// The first invalid point fails the whole slice, naming its index.
pub fn reblind(
    key: &SecretKey,
    encoded: &[PointBytes],
) -> Result<Vec<PointBytes>, IndexedPointError> {
    let half_k = half(key);
    let mut out = vec![PointBytes::default(); encoded.len()];
    out.par_chunks_mut(CHUNK)
        .zip(encoded.par_chunks(CHUNK))
        .enumerate()
        .try_for_each(|(chunk_no, (out, encoded))| {
            let scaled = encoded
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    bytes
                        .decode()
                        .map(|p| half_k * p)
                        .map_err(|error| IndexedPointError {
                            index: chunk_no * CHUNK + i,
                            error,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            compress_doubled_into(&scaled, out);
            Ok(())
        })?;
    Ok(out)
}

/// `k/2`, so that the batch "double and compress" gives `compress(k·P)`.
fn half(key: &SecretKey) -> Scalar {
    key.scalar() * Scalar::from(2u8).invert()
}

fn compress_doubled_into(points: &[RistrettoPoint], out: &mut [PointBytes]) {
    let compressed = RistrettoPoint::double_and_compress_batch(points.iter());
    for (slot, c) in out.iter_mut().zip(compressed) {
        *slot = PointBytes(c.to_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PointError;

    #[test]
    fn batch_equals_one_by_one_across_chunk_edges() {
        let key = SecretKey::derive_for_tests("batch");
        let items: Vec<_> = (0..CHUNK + 7)
            .map(|i| {
                (
                    MatchKind::Email,
                    Digest::of(&format!("user{i}@example.com")),
                )
            })
            .collect();
        let batch = hash_and_blind(&key, &items);
        for (item, got) in items.iter().zip(&batch) {
            assert_eq!(*got, blind_with(&key, &hash_to_point(item.0, &item.1)));
        }
        let points: Vec<_> = items.iter().map(|(k, d)| hash_to_point(*k, d)).collect();
        assert_eq!(blind_points(&key, &points), batch);
    }

    #[test]
    fn reblind_names_the_bad_index() {
        let key = SecretKey::derive_for_tests("reblind");
        let items: Vec<_> = (0..CHUNK + 3)
            .map(|i| (MatchKind::Maid, Digest::of(&i.to_string())))
            .collect();
        let mut encoded = hash_and_blind(&key, &items);
        encoded[CHUNK + 1] = PointBytes([0; 32]);
        let err = reblind(&key, &encoded).unwrap_err();
        assert_eq!(
            err,
            IndexedPointError {
                index: CHUNK + 1,
                error: PointError::Identity
            }
        );
    }
}
