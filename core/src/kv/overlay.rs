//! A transaction's uncommitted writes, so its own reads see them
//! (read-your-writes), and their translation into the mutations and write
//! conflict ranges a backend commits.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::backend::{apply_add, Mutation};
use super::ranges::RangeSet;
use super::KeyValue;

/// The pending state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Value(Vec<u8>),
    Cleared,
    /// An atomic add whose base value has not been read.
    Add(i64),
}

/// Writes buffered by a transaction.
///
/// Invariant: a point entry inside a cleared range was written after that
/// range was cleared (clearing a range drops the entries inside it), so
/// applying every cleared range first and then every point entry
/// reproduces the order the caller wrote them in.
#[derive(Debug, Default)]
pub struct Overlay {
    points: BTreeMap<Vec<u8>, Pending>,
    cleared: RangeSet,
}

/// What the overlay knows about one key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Decided by this transaction's writes.
    Known(Option<&'a [u8]>),
    /// The stored value plus this delta.
    AddTo(i64),
    /// Not written by this transaction.
    Unknown,
}

impl Overlay {
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        self.points
            .insert(key.to_vec(), Pending::Value(value.to_vec()));
    }

    pub fn clear(&mut self, key: &[u8]) {
        self.points.insert(key.to_vec(), Pending::Cleared);
    }

    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        super::remove_range(&mut self.points, begin, end);
        self.cleared.insert(begin, end);
    }

    pub fn add(&mut self, key: &[u8], delta: i64) {
        let next = match self.points.get(key) {
            Some(Pending::Value(v)) => Pending::Value(apply_add(Some(v), delta).to_vec()),
            Some(Pending::Cleared) => Pending::Value(apply_add(None, delta).to_vec()),
            Some(Pending::Add(d)) => Pending::Add(d.wrapping_add(delta)),
            None if self.cleared.contains(key) => Pending::Value(apply_add(None, delta).to_vec()),
            None => Pending::Add(delta),
        };
        self.points.insert(key.to_vec(), next);
    }

    pub fn lookup(&self, key: &[u8]) -> Lookup<'_> {
        match self.points.get(key) {
            Some(Pending::Value(v)) => Lookup::Known(Some(v)),
            Some(Pending::Cleared) => Lookup::Known(None),
            Some(Pending::Add(d)) => Lookup::AddTo(*d),
            None if self.cleared.contains(key) => Lookup::Known(None),
            None => Lookup::Unknown,
        }
    }

    /// Merge stored pairs with this overlay over `[begin, end)`, a window in
    /// which `stored` holds every stored pair, in key order (descending if
    /// `reverse`). Returns the pairs in the same order.
    pub fn merge_window(
        &self,
        begin: &[u8],
        end: &[u8],
        stored: Vec<KeyValue>,
        reverse: bool,
    ) -> Vec<KeyValue> {
        // Nothing of this transaction's in the window (every read of a
        // transaction that wrote nothing there, such as each 1 MiB READ of
        // a file: 256 chunks): the page as it is, not rebuilt pair by pair
        // through a map.
        if begin < end
            && !self.cleared.intersects(begin, end)
            && !super::any_in(&self.points, begin, end)
        {
            return stored;
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored
            .into_iter()
            .filter(|(k, _)| !self.cleared.contains(k))
            .collect();
        if begin < end {
            for (key, pending) in self
                .points
                .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            {
                match pending {
                    Pending::Value(v) => {
                        merged.insert(key.clone(), v.clone());
                    }
                    Pending::Cleared => {
                        merged.remove(key);
                    }
                    Pending::Add(d) => {
                        let sum = apply_add(merged.get(key).map(Vec::as_slice), *d);
                        merged.insert(key.clone(), sum.to_vec());
                    }
                }
            }
        }
        if reverse {
            merged.into_iter().rev().collect()
        } else {
            merged.into_iter().collect()
        }
    }

    /// The mutations to commit, in an order equivalent to the caller's.
    pub fn mutations(&self) -> Vec<Mutation> {
        let mut out: Vec<Mutation> = self
            .cleared
            .iter()
            .map(|(b, e)| Mutation::ClearRange {
                begin: b.to_vec(),
                end: e.to_vec(),
            })
            .collect();
        out.extend(self.points.iter().map(|(key, pending)| match pending {
            Pending::Value(v) => Mutation::Set {
                key: key.clone(),
                value: v.clone(),
            },
            Pending::Cleared => Mutation::Clear { key: key.clone() },
            Pending::Add(delta) => Mutation::Add {
                key: key.clone(),
                delta: *delta,
            },
        }));
        out
    }

    /// Add the ranges these writes touch to `into`.
    pub fn write_ranges(&self, into: &mut RangeSet) {
        for (b, e) in self.cleared.iter() {
            into.insert(b, e);
        }
        for key in self.points.keys() {
            into.insert_key(key);
        }
    }
}
