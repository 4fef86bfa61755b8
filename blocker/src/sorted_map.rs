//! A map kept as one sorted vector: what the ban entries are held in. A policy can name a
//! million files, and a `BTreeMap` of them takes twice the memory of the entries themselves
//! (half-full nodes after sorted inserts); the entries are built once per resolution and then
//! only looked up, so a sorted vector does the job at the size of the data.

use std::borrow::Borrow;

/// Keys in ascending order, each once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortedMap<K, V> {
    pairs: Vec<(K, V)>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        Self { pairs: Vec::new() }
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Where `key` is, or where it would go.
    pub fn position<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.pairs
            .binary_search_by(|(existing, _)| existing.borrow().cmp(key))
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.position(key).ok().map(|index| &self.pairs[index].1)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.position(key).is_ok()
    }

    /// Inserts or replaces; returns the position of `key` and the value it replaced. Moves the
    /// entries after it: for the few files found after a resolution, not for building one.
    pub fn insert(&mut self, key: K, value: V) -> (usize, Option<V>) {
        match self.position(&key) {
            Ok(index) => (
                index,
                Some(std::mem::replace(&mut self.pairs[index].1, value)),
            ),
            Err(index) => {
                self.pairs.insert(index, (key, value));
                (index, None)
            }
        }
    }

    /// The map of `pairs` already in ascending order of distinct keys, as built without a
    /// copy; pairs out of order are sorted as [`FromIterator`] would.
    pub fn from_sorted(pairs: Vec<(K, V)>) -> Self {
        if pairs.is_sorted_by(|(a, _), (b, _)| a < b) {
            return Self { pairs };
        }
        pairs.into_iter().collect()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, &V)> {
        self.pairs.iter().map(|(key, value)| (key, value))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> {
        self.pairs.iter().map(|(key, _)| key)
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    /// As `BTreeMap`'s: of pairs with equal keys, the last one stays.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut pairs: Vec<(K, V)> = pairs.into_iter().collect();
        // Stable, so that equal keys keep their order and the last can be kept.
        pairs.sort_by(|(a, _), (b, _)| a.cmp(b));
        pairs.reverse();
        pairs.dedup_by(|(later, _), (earlier, _)| later == earlier);
        pairs.reverse();
        pairs.shrink_to_fit();
        Self { pairs }
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.pairs.iter().map(|(key, value)| (key, value))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn behaves_as_a_btree_map(
            built in proptest::collection::vec((0u16..64, any::<u8>()), 0..64),
            inserted in proptest::collection::vec((0u16..64, any::<u8>()), 0..16),
            probes in proptest::collection::vec(0u16..64, 0..16),
        ) {
            let mut sorted: SortedMap<u16, u8> = built.iter().copied().collect();
            let mut model: BTreeMap<u16, u8> = built.iter().copied().collect();
            for (key, value) in inserted {
                prop_assert_eq!(sorted.insert(key, value).1, model.insert(key, value));
            }
            let pairs: Vec<(u16, u8)> = model.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(&SortedMap::from_sorted(pairs), &sorted);
            prop_assert_eq!(sorted.len(), model.len());
            prop_assert!(sorted.iter().eq(model.iter()));
            for probe in probes {
                prop_assert_eq!(sorted.get(&probe), model.get(&probe));
                prop_assert_eq!(sorted.contains_key(&probe), model.contains_key(&probe));
            }
        }
    }
}
