//! A fast hasher for the packet path's maps, whose keys the server makes itself (session
//! ids, mids) or that only hurt their own session if chosen badly (a publisher's SSRCs).
//! Maps keyed by what any network peer chooses (source addresses) keep SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hashing, one 64-bit word at a time.
#[derive(Debug, Default, Clone, Copy)]
pub struct WordHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl WordHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Spread the high bits down: hashbrown takes its bucket from the low bits.
        self.0 ^ (self.0 >> 29)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash>(t: &T) -> u64 {
        BuildHasherDefault::<WordHasher>::default().hash_one(t)
    }

    #[test]
    fn sequential_session_ids_spread_over_buckets() {
        // Session ids are (counter << 8) | shard: the low bits are all alike.
        let mut buckets = [0u32; 64];
        for n in 1..=6400u64 {
            buckets[(hash(&((n << 8) | 1)) & 63) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 50 && *max < 150, "uneven: {min}..{max}");
    }

    #[test]
    fn strings_of_different_lengths_differ() {
        assert_ne!(hash(&"1"), hash(&"10"));
        assert_ne!(hash(&"abcdefgh"), hash(&"abcdefghi"));
        let mut map: FastMap<String, u32> = FastMap::default();
        map.insert("room".into(), 1);
        assert_eq!(map.get("room"), Some(&1));
    }
}
