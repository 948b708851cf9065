//! A map bounded in entries that forgets the oldest first: for caches and bindings that must not
//! grow with what callers send.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// At most `capacity` entries; inserting beyond that evicts in insertion order.
pub struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    /// Keys oldest first; may still hold keys removed since (skipped on eviction).
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// An empty map holding at most `capacity` (at least one) entries.
    pub fn new(capacity: usize) -> BoundedMap<K, V> {
        BoundedMap { map: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    /// Inserts or replaces `key`, evicting the oldest entries to stay within capacity.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = value;
            return;
        }
        // Keys removed early linger in `order`; bounding it too keeps memory bounded.
        while self.map.len() >= self.capacity || self.order.len() >= 2 * self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(key.clone(), value);
        self.order.push_back(key);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_go_first_and_memory_stays_bounded() {
        let mut m = BoundedMap::new(3);
        for i in 0..5 {
            m.insert(i, i * 10);
        }
        assert_eq!(m.len(), 3);
        assert!(!m.contains_key(&0) && !m.contains_key(&1));
        assert_eq!(m.get(&4), Some(&40));
        m.insert(4, 41);
        assert_eq!((m.len(), m.get(&4)), (3, Some(&41)));
        // Insert/remove churn never grows the order queue past twice the capacity.
        for i in 100..10_000 {
            m.insert(i, 0);
            m.remove(&i);
        }
        assert!(m.order.len() <= 6, "{}", m.order.len());
    }
}
