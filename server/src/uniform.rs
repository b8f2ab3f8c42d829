//! Hash maps for keys that are already uniformly random and that no client
//! can choose: `b`-blinded points (`b·a·P(x)`, `b·P(y)`) and person keys
//! (an HMAC under the server's pepper). Their first eight bytes are as good
//! a hash as SipHash would make, at none of its cost: the join of a
//! million-row job does a few million look-ups, and SipHash was a third of
//! its time. Keys a client can choose (such as `a·b·P(y)` from a graph-pass
//! page) may be looked up in these maps, never inserted, so they cannot
//! crowd a bucket.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// Builds [`FirstBytes`] hashers.
#[derive(Debug, Default, Clone, Copy)]
pub struct UniformKeys;

impl BuildHasher for UniformKeys {
    type Hasher = FirstBytes;

    fn build_hasher(&self) -> FirstBytes {
        FirstBytes(0)
    }
}

/// The first eight bytes of the key, as a little-endian word.
#[derive(Debug, Default)]
pub struct FirstBytes(u64);

impl Hasher for FirstBytes {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
    }

    /// A byte array hashes its length first: the same for every key here.
    fn write_usize(&mut self, _len: usize) {}
}

/// A map keyed by uniform, unchoosable bytes.
pub type UniformMap<K, V> = HashMap<K, V, UniformKeys>;
/// A set of uniform, unchoosable bytes.
pub type UniformSet<K> = HashSet<K, UniformKeys>;

/// An empty map with room for `n` entries.
pub fn map_with_capacity<K, V>(n: usize) -> UniformMap<K, V> {
    HashMap::with_capacity_and_hasher(n, UniformKeys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_to_their_first_eight_bytes() {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        key[8..].fill(0xff);
        assert_eq!(UniformKeys.hash_one(key), 0x0102_0304_0506_0708);
        let mut other = key;
        other[31] = 0;
        assert_eq!(UniformKeys.hash_one(other), UniformKeys.hash_one(key));
        other[0] = 9;
        assert_ne!(UniformKeys.hash_one(other), UniformKeys.hash_one(key));
    }

    #[test]
    fn maps_find_what_they_hold() {
        let mut m: UniformMap<[u8; 16], u32> = map_with_capacity(4);
        for i in 0..1000u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            m.insert(k, i);
        }
        assert_eq!(m.len(), 1000);
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&777u32.to_le_bytes());
        assert_eq!(m.get(&k), Some(&777));
        k[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(m.get(&k), None);
    }
}
