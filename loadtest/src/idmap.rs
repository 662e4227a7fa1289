//! Maps keyed by the generator's own small ids (client serials, stream ids), looked up
//! several times per received packet: a multiply instead of SipHash, as nobody picks them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from one of our ids to its state.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of an integer key; ids are dense, so the high bits must mix.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_ids_spread_over_buckets() {
        let mut map: IdMap<u32, u32> = IdMap::default();
        for id in 0..10_000 {
            map.insert(id * 5, id);
        }
        assert_eq!(map.len(), 10_000);
        assert!((0..10_000).all(|id| map.get(&(id * 5)) == Some(&id)));
        let hash = |n: u32| {
            let mut h = IdHasher::default();
            h.write_u32(n);
            h.finish()
        };
        // hashbrown takes its control bits from the top seven bits of the hash.
        let tops: std::collections::HashSet<u64> = (0..128).map(|n| hash(n) >> 57).collect();
        assert!(tops.len() > 64, "top bits vary: {}", tops.len());
    }
}
