//! Key ranges and a set of them: the bookkeeping behind conflict detection.

use std::collections::BTreeMap;
use std::ops::Bound;

/// The half-open key range `[begin, end)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRange {
    pub begin: Vec<u8>,
    pub end: Vec<u8>,
}

impl KeyRange {
    pub fn new(begin: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            begin: begin.into(),
            end: end.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.begin >= self.end
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && key < self.end.as_slice()
    }

    pub fn intersects(&self, other: &KeyRange) -> bool {
        self.begin < other.end && other.begin < self.end
    }
}

/// The smallest key greater than `key`.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// if there is none (the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A set of keys stored as disjoint, non-adjacent half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// begin → end; ranges are disjoint and never touch.
    ranges: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl RangeSet {
    pub fn new() -> Self {
        RangeSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Add `[begin, end)`, merging with ranges it overlaps or touches.
    pub fn insert(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        self.insert_owned(begin.to_vec(), end.to_vec());
    }

    /// Add the range holding exactly `key` (`[key, key + "\0")`): what a
    /// point read adds, several times per operation, so it allocates only
    /// the two bounds it stores.
    pub fn insert_key(&mut self, key: &[u8]) {
        self.insert_owned(key.to_vec(), key_after(key));
    }

    fn insert_owned(&mut self, begin: Vec<u8>, end: Vec<u8>) {
        if self.touches_nothing(&begin, &end) {
            self.ranges.insert(begin, end);
        } else {
            self.merge(begin, end);
        }
    }

    /// True when no stored range overlaps or touches `[begin, end]`: then
    /// the range goes in as it is (the common case, a key not read yet).
    fn touches_nothing(&self, begin: &[u8], end: &[u8]) -> bool {
        let before = self
            .ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(begin)))
            .next_back();
        if before.is_some_and(|(_, e)| e.as_slice() >= begin) {
            return false;
        }
        self.ranges
            .range::<[u8], _>((Bound::Included(begin), Bound::Included(end)))
            .next()
            .is_none()
    }

    fn merge(&mut self, mut begin: Vec<u8>, mut end: Vec<u8>) {
        // A range starting at or before `begin` that reaches it merges in.
        let before = self
            .ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(begin.as_slice())))
            .next_back();
        if let Some((b, e)) = before {
            if e.as_slice() >= begin.as_slice() {
                if e > &end {
                    end = e.clone();
                }
                begin = b.clone();
            }
        }
        // Ranges starting inside `[begin, end]` merge in.
        let absorbed: Vec<Vec<u8>> = self
            .ranges
            .range::<[u8], _>((
                Bound::Included(begin.as_slice()),
                Bound::Included(end.as_slice()),
            ))
            .map(|(b, _)| b.clone())
            .collect();
        for b in absorbed {
            if let Some(e) = self.ranges.remove(&b) {
                if e > end {
                    end = e;
                }
            }
        }
        self.ranges.insert(begin, end);
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, end)| key < end.as_slice())
    }

    /// True if any range of the set intersects `[begin, end)`.
    pub fn intersects(&self, begin: &[u8], end: &[u8]) -> bool {
        if begin >= end {
            return false;
        }
        if self.contains(begin) {
            return true;
        }
        self.ranges
            .range::<[u8], _>((Bound::Excluded(begin), Bound::Excluded(end)))
            .next()
            .is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ranges
            .iter()
            .map(|(b, e)| (b.as_slice(), e.as_slice()))
    }

    pub fn to_ranges(&self) -> Vec<KeyRange> {
        self.iter().map(|(b, e)| KeyRange::new(b, e)).collect()
    }

    /// Sum of the lengths of the ranges' bounds (for size accounting).
    pub fn bytes(&self) -> usize {
        self.ranges.iter().map(|(b, e)| b.len() + e.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_contains(ranges: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
        ranges
            .iter()
            .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    proptest! {
        #[test]
        fn range_set_matches_naive_union(
            ranges in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..3), proptest::collection::vec(0u8..4, 0..3)), 0..8),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..3), 0..16),
        ) {
            let mut set = RangeSet::new();
            for (b, e) in &ranges {
                set.insert(b, e);
            }
            // Point ranges through `insert_key`, as point reads add them.
            let mut ranges = ranges.clone();
            for key in probes.iter().step_by(3) {
                set.insert_key(key);
                ranges.push((key.clone(), key_after(key)));
            }
            let spans: Vec<_> = set.iter().map(|(b, e)| (b.to_vec(), e.to_vec())).collect();
            for pair in spans.windows(2) {
                prop_assert!(pair[0].1 < pair[1].0, "ranges touch or overlap: {:?}", pair);
            }
            for key in &probes {
                prop_assert_eq!(set.contains(key), naive_contains(&ranges, key));
            }
            for (pb, pe) in probes.iter().zip(probes.iter().skip(1)) {
                let overlaps = ranges.iter().any(|(x, y)| x < y && x < pe && pb < y);
                prop_assert_eq!(set.intersects(pb, pe), pb < pe && overlaps);
            }
        }
    }

    #[test]
    fn prefix_end_skips_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
