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

/// Values kept in the order they were added, each found by its key once and then by its
/// place: a receiver remembers where a stream's state is beside what it learned of the
/// stream's SSRC, so a packet costs no lookup. Nothing is removed, so a place stays valid.
pub struct Placed<V> {
    items: Vec<(u32, V)>,
    places: IdMap<u32, u32>,
}

impl<V> Default for Placed<V> {
    fn default() -> Self {
        Self { items: Vec::new(), places: IdMap::default() }
    }
}

impl<V> Placed<V> {
    /// Where `key`'s value is, added by `make` if it has none yet.
    pub fn place_of(&mut self, key: u32, make: impl FnOnce() -> V) -> u32 {
        if let Some(at) = self.places.get(&key) {
            return *at;
        }
        let at = self.items.len() as u32;
        self.items.push((key, make()));
        self.places.insert(key, at);
        at
    }

    /// The value at `at` if it is `key`'s (a place from `place_of`).
    pub fn at_mut(&mut self, at: u32, key: u32) -> Option<&mut V> {
        self.items.get_mut(at as usize).filter(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn get(&self, key: u32) -> Option<&V> {
        self.places.get(&key).map(|at| &self.items[*at as usize].1)
    }

    pub fn get_mut(&mut self, key: u32) -> Option<&mut V> {
        self.places.get(&key).map(|at| &mut self.items[*at as usize].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &V)> {
        self.items.iter().map(|(k, v)| (*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.items.iter().map(|(_, v)| v)
    }

    pub fn into_items(self) -> impl Iterator<Item = (u32, V)> {
        self.items.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_finds_its_own_key_only() {
        let mut placed: Placed<&str> = Placed::default();
        let a = placed.place_of(7, || "seven");
        let b = placed.place_of(3, || "three");
        assert_eq!(placed.place_of(7, || "again"), a, "found, not added twice");
        assert_eq!(placed.at_mut(a, 7).map(|v| *v), Some("seven"));
        assert_eq!(placed.at_mut(b, 7), None, "another key's place");
        assert_eq!(placed.at_mut(9, 7), None, "no such place");
        assert_eq!(placed.get(3), Some(&"three"));
        assert_eq!(placed.iter().map(|(k, _)| k).collect::<Vec<_>>(), vec![7, 3]);
    }

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
