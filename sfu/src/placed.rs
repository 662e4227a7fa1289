//! A map whose entries keep their place: found by key where they are set up, and by place
//! on the packet path, where a subscriber's sinks are reached once per forwarded packet and
//! a hash probe there is a cache miss more per subscriber (ADR 0017).
//!
//! Entries are never removed: an endpoint's sinks live as long as the endpoint. A place is
//! only a hint: `at_mut` checks the key stored there and looks the key up when it differs,
//! so a stale or foreign place costs a lookup, never a wrong entry.

use std::hash::Hash;

use crate::fasthash::FastMap;

pub struct PlacedMap<K, V> {
    entries: Vec<(K, V)>,
    places: FastMap<K, u32>,
}

impl<K, V> Default for PlacedMap<K, V> {
    fn default() -> Self {
        Self { entries: Vec::new(), places: FastMap::default() }
    }
}

impl<K: Copy + Eq + Hash, V> PlacedMap<K, V> {
    /// Sets the value of `key`: in its place when it has one, else in a new place at the end.
    pub fn insert(&mut self, key: K, value: V) {
        match self.places.get(&key) {
            Some(&at) => self.entries[at as usize].1 = value,
            None => {
                self.places.insert(key, self.entries.len() as u32);
                self.entries.push((key, value));
            }
        }
    }

    pub fn place(&self, key: &K) -> Option<u32> {
        self.places.get(key).copied()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.place(key).map(|at| &self.entries[at as usize].1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.place(key).map(|at| &mut self.entries[at as usize].1)
    }

    /// The value of `key`, found at `at` when that place holds it.
    pub fn at_mut(&mut self, at: u32, key: &K) -> Option<&mut V> {
        let at = match self.entries.get(at as usize) {
            Some((k, _)) if k == key => at,
            _ => self.place(key)?,
        };
        Some(&mut self.entries[at as usize].1)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.places.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in the order they were first inserted.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

impl<'a, K: Copy + Eq + Hash, V> IntoIterator for &'a PlacedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_its_place_when_set_again() {
        let mut map: PlacedMap<u32, &str> = PlacedMap::default();
        map.insert(7, "a");
        map.insert(3, "b");
        map.insert(7, "c");
        assert_eq!(map.len(), 2);
        assert_eq!(map.place(&7), Some(0));
        assert_eq!(map.place(&3), Some(1));
        assert_eq!(map.iter().collect::<Vec<_>>(), [(&7, &"c"), (&3, &"b")]);
    }

    #[test]
    fn a_wrong_place_falls_back_to_the_key() {
        let mut map: PlacedMap<u32, u32> = PlacedMap::default();
        map.insert(10, 100);
        map.insert(20, 200);
        assert_eq!(map.at_mut(1, &20).copied(), Some(200), "its own place");
        assert_eq!(map.at_mut(0, &20).copied(), Some(200), "another key's place");
        assert_eq!(map.at_mut(9, &10).copied(), Some(100), "no such place");
        assert_eq!(map.at_mut(0, &30), None, "no such key");
        *map.at_mut(1, &20).unwrap() += 1;
        assert_eq!(map.get(&20), Some(&201));
    }
}
