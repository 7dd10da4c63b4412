//! The write-behind memtable of a relaxed SQLite backend that has its
//! database to itself: commits acknowledged but not yet written to SQLite,
//! readable at any recent version, and the conflict log those commits are
//! checked against.
//!
//! Pure data (no I/O, no threads): [`super::sqlite`] owns the locking, the
//! flushing and when this is used at all. A reader combines this table at
//! its read version with an SQLite snapshot taken *after* pinning (see
//! [`Memtable::pin`]): every event the table no longer holds is in that
//! snapshot.
//!
//! Events per key are kept with their versions (a deletion is `None`), and
//! range clears as `(version, begin, end)`: a key's state at version `v` is
//! its newest event at or before `v`, a point or a clear covering it,
//! whichever is newer; no event means "whatever SQLite holds".

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use super::backend::{apply_add, Mutation};
use super::{KeyRange, KeyValue, KvError, KvResult, Version};

/// One key's events, ascending by version; `None` is a deletion.
type Events = Vec<(Version, Option<Vec<u8>>)>;

/// What the table says about one key at one version.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Decided by a commit the table holds, or remembered from SQLite
    /// ([`Memtable::remember`]).
    Known(Option<Vec<u8>>),
    /// No event: the SQLite snapshot decides.
    Unknown,
}

/// A commit waiting to be written to SQLite.
#[derive(Debug)]
pub struct Unflushed {
    pub version: Version,
    /// Atomic adds already resolved to sets.
    pub mutations: Vec<Mutation>,
    pub writes: Vec<KeyRange>,
}

#[derive(Debug, Default)]
pub struct Memtable {
    /// The newest committed version.
    version: Version,
    /// SQLite holds every commit up to this version.
    flushed: Version,
    points: BTreeMap<Vec<u8>, Events>,
    /// Range clears, ascending by version.
    clears: Vec<(Version, Vec<u8>, Vec<u8>)>,
    unflushed: VecDeque<Unflushed>,
    /// Bytes of keys and values in `unflushed`.
    unflushed_bytes: usize,
    /// Recent commits' write conflict ranges: version, monotonic time.
    log: VecDeque<(Version, Duration, Vec<KeyRange>)>,
    /// Reads at versions below this can no longer be checked for conflicts.
    horizon: Version,
    /// How long the log keeps a commit.
    retention: Duration,
    /// Readers' pins: the flushed version when each began, and how many.
    pins: BTreeMap<Version, usize>,
    /// What SQLite holds for keys this table holds no event of (a point,
    /// or a clear covering them): filled by reads ([`Memtable::remember`]),
    /// dropped for every key a commit writes. See [`Memtable::remember`]
    /// for why an entry is what every running reader would find there.
    stored: Stored,
    /// What `stored` costs ([`stored_cost`]).
    stored_bytes: usize,
}

/// What [`Memtable::remember`] remembered: SQLite's value per key.
pub type Stored = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Most bytes [`Memtable::remember`] keeps (as [`stored_cost`] counts
/// them); past it the cache starts over empty.
const STORED_MAX_BYTES: usize = 16 << 20;

/// Values longer than this are not remembered.
const STORED_VALUE_MAX: usize = 512;

/// What one remembered entry costs: its key and value, and about what the
/// map's node and the two allocations take besides.
fn stored_cost(key: &[u8], value_len: usize) -> usize {
    key.len() + value_len + 64
}

impl Memtable {
    /// An empty table over an SQLite database whose newest version is
    /// `version`, keeping commits in its conflict log for `retention`.
    pub fn new(version: Version, retention: Duration) -> Self {
        Memtable {
            version,
            flushed: version,
            horizon: version,
            retention,
            ..Memtable::default()
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn flushed(&self) -> Version {
        self.flushed
    }

    pub fn unflushed_bytes(&self) -> usize {
        self.unflushed_bytes
    }

    pub fn has_unflushed(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// A reader is about to take an SQLite snapshot: keep every event newer
    /// than what SQLite holds now until [`Memtable::unpin`]. Returns the pin.
    pub fn pin(&mut self) -> Version {
        *self.pins.entry(self.flushed).or_default() += 1;
        self.flushed
    }

    /// Pins held.
    #[cfg(test)]
    pub fn pins(&self) -> usize {
        self.pins.values().sum()
    }

    pub fn unpin(&mut self, pin: Version) {
        if let Some(n) = self.pins.get_mut(&pin) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&pin);
            }
        }
    }

    /// The state of `key` at version `at`.
    pub fn lookup(&self, key: &[u8], at: Version) -> Seen {
        let events = self.points.get(key);
        let point = events.and_then(|events| {
            let n = events.partition_point(|(v, _)| *v <= at);
            n.checked_sub(1).map(|i| &events[i])
        });
        let cleared = self.cleared_at(key, at);
        match (point, cleared) {
            // No event at all: SQLite's value, if remembered, is the
            // key's value at every version a reader can hold.
            (None, None) if events.is_none() => match self.stored.get(key) {
                Some(value) => Seen::Known(value.clone()),
                None => Seen::Unknown,
            },
            (None, None) => Seen::Unknown,
            // Ties are points written after a clear in the same commit.
            (Some((pv, value)), c) if c.is_none_or(|cv| *pv >= cv) => Seen::Known(value.clone()),
            _ => Seen::Known(None),
        }
    }

    /// Remember `value`, which a reader holding a pin just read for `key`
    /// from its SQLite snapshot, for later reads — unless this table holds
    /// an event of `key`.
    ///
    /// Why that is the key's value for every reader, now and until a
    /// commit writes it (which drops the entry): the reader's pin keeps
    /// every event newer than its snapshot here, and there is none, so no
    /// commit since the snapshot wrote the key; and any other running
    /// reader's snapshot is no older than the oldest pin, so it holds the
    /// same value. A reader of another memtable (a generation ago) must
    /// not call this.
    ///
    /// Only values up to [`STORED_VALUE_MAX`] bytes (attributes, dirents,
    /// sessions: not file chunks, which a read would otherwise copy here
    /// under the backend's lock only to push the rest out). Past
    /// [`STORED_MAX_BYTES`] the cache starts over: the old one is returned,
    /// for the caller to free once it no longer holds the lock.
    #[must_use]
    pub fn remember(&mut self, key: &[u8], value: Option<&[u8]>) -> Option<Stored> {
        let len = value.map_or(0, <[u8]>::len);
        if len > STORED_VALUE_MAX
            || self.points.contains_key(key)
            || self
                .clears
                .iter()
                .any(|(_, b, e)| b.as_slice() <= key && key < e.as_slice())
        {
            return None;
        }
        let mut dropped = None;
        if self.stored_bytes + stored_cost(key, len) > STORED_MAX_BYTES {
            dropped = Some(std::mem::take(&mut self.stored));
            self.stored_bytes = 0;
        }
        if let Some(old) = self.stored.insert(key.to_vec(), value.map(<[u8]>::to_vec)) {
            self.stored_bytes -= stored_cost(key, old.map_or(0, |v| v.len()));
        }
        self.stored_bytes += stored_cost(key, len);
        dropped
    }

    /// Forget what was remembered for `key`: a commit writes it.
    fn forget_stored(&mut self, key: &[u8]) {
        if let Some(old) = self.stored.remove(key) {
            self.stored_bytes -= stored_cost(key, old.map_or(0, |v| v.len()));
        }
    }

    /// Forget what was remembered in `[begin, end)`: a commit clears it.
    fn forget_stored_range(&mut self, begin: &[u8], end: &[u8]) {
        for (key, old) in super::remove_range(&mut self.stored, begin, end) {
            self.stored_bytes -= stored_cost(&key, old.map_or(0, |v| v.len()));
        }
    }

    /// The version of the newest clear at or before `at` covering `key`.
    fn cleared_at(&self, key: &[u8], at: Version) -> Option<Version> {
        self.clears
            .iter()
            .rev()
            .filter(|(v, _, _)| *v <= at)
            .find(|(_, b, e)| b.as_slice() <= key && key < e.as_slice())
            .map(|(v, _, _)| *v)
    }

    /// Merge SQLite's pairs with the table at `at` over `[begin, end)`, a
    /// window in which `stored` holds every pair of the snapshot, in key
    /// order (descending if `reverse`). Returns the pairs in the same order.
    pub fn merge_window(
        &self,
        begin: &[u8],
        end: &[u8],
        at: Version,
        stored: Vec<KeyValue>,
        reverse: bool,
    ) -> Vec<KeyValue> {
        // No event in the window (the table holds only what the last few
        // milliseconds wrote): SQLite's page as it is.
        if begin < end
            && !self
                .clears
                .iter()
                .any(|(v, b, e)| *v <= at && b.as_slice() < end && begin < e.as_slice())
            && !super::any_in(&self.points, begin, end)
        {
            return stored;
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (key, value) in stored {
            match self.lookup(&key, at) {
                Seen::Unknown => {
                    merged.insert(key, value);
                }
                Seen::Known(Some(v)) => {
                    merged.insert(key, v);
                }
                Seen::Known(None) => {}
            }
        }
        if begin < end {
            for key in self
                .points
                .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
                .map(|(k, _)| k)
            {
                match self.lookup(key, at) {
                    Seen::Known(Some(v)) => {
                        merged.insert(key.clone(), v);
                    }
                    Seen::Known(None) => {
                        merged.remove(key);
                    }
                    Seen::Unknown => {}
                }
            }
        }
        if reverse {
            merged.into_iter().rev().collect()
        } else {
            merged.into_iter().collect()
        }
    }

    /// Check a commit read at `read_version` against the log, then apply
    /// `mutations` at the next version. `stored` reads a key's value in
    /// SQLite now (for atomic adds on keys the table has no event for).
    /// `now` is monotonic time; log entries older than the retention go.
    pub fn commit(
        &mut self,
        read_version: Version,
        read_conflicts: &[KeyRange],
        writes: Vec<KeyRange>,
        mutations: Vec<Mutation>,
        now: Duration,
        mut stored: impl FnMut(&[u8]) -> KvResult<Option<Vec<u8>>>,
    ) -> KvResult<Version> {
        // A commit only matters to transactions that began before it: keep
        // the log back to the oldest reader's pin (at most its read
        // version), and never past the retention. Without readers it is
        // empty, so the log's memory follows what is running, not the
        // commit rate.
        let floor = self.pins.keys().next().copied().unwrap_or(self.version);
        while self
            .log
            .front()
            .is_some_and(|(v, at, _)| *v <= floor || now.saturating_sub(*at) > self.retention)
        {
            if let Some((v, _, _)) = self.log.pop_front() {
                self.horizon = v;
            }
        }
        if read_version < self.horizon {
            return Err(KvError::TransactionTooOld);
        }
        let conflicted = self
            .log
            .iter()
            .rev()
            .take_while(|(v, _, _)| *v > read_version)
            .any(|(_, _, w)| {
                w.iter()
                    .any(|w| read_conflicts.iter().any(|r| r.intersects(w)))
            });
        if conflicted {
            return Err(KvError::NotCommitted);
        }
        let version = self.version + 1;
        // Resolve adds first, so a failed read applies nothing.
        let mut resolved = Vec::with_capacity(mutations.len());
        let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut cleared: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for m in mutations {
            match m {
                Mutation::Add { key, delta } => {
                    let base = match pending.get(&key) {
                        Some(v) => v.clone(),
                        None if cleared.iter().any(|(b, e)| *b <= key && key < *e) => None,
                        None => match self.lookup(&key, self.version) {
                            Seen::Known(v) => v,
                            Seen::Unknown => stored(&key)?,
                        },
                    };
                    let value = apply_add(base.as_deref(), delta).to_vec();
                    pending.insert(key.clone(), Some(value.clone()));
                    resolved.push(Mutation::Set { key, value });
                }
                Mutation::Set { key, value } => {
                    pending.insert(key.clone(), Some(value.clone()));
                    resolved.push(Mutation::Set { key, value });
                }
                Mutation::Clear { key } => {
                    pending.insert(key.clone(), None);
                    resolved.push(Mutation::Clear { key });
                }
                Mutation::ClearRange { begin, end } => {
                    pending.retain(|k, _| !(begin <= *k && *k < end));
                    cleared.push((begin.clone(), end.clone()));
                    resolved.push(Mutation::ClearRange { begin, end });
                }
            }
        }
        for m in &resolved {
            match m {
                Mutation::Set { key, value } => {
                    self.forget_stored(key);
                    self.push(key, version, Some(value.clone()));
                }
                Mutation::Clear { key } => {
                    self.forget_stored(key);
                    self.push(key, version, None);
                }
                Mutation::ClearRange { begin, end } if begin >= end => {}
                Mutation::ClearRange { begin, end } => {
                    self.forget_stored_range(begin, end);
                    // A point event of this same commit after the clear
                    // must win over it: drop this version's earlier points
                    // inside, record the clear, and let later points of
                    // this commit be pushed after it (ties go to points).
                    for (_, events) in self.points.range_mut::<[u8], _>((
                        Bound::Included(&begin[..]),
                        Bound::Excluded(&end[..]),
                    )) {
                        if events.last().is_some_and(|(v, _)| *v == version) {
                            events.pop();
                        }
                    }
                    self.clears.push((version, begin.clone(), end.clone()));
                }
                Mutation::Add { .. } => unreachable!("adds were resolved above"),
            }
        }
        let bytes: usize = resolved.iter().map(mutation_bytes).sum();
        self.unflushed_bytes += bytes;
        self.log.push_back((version, now, writes.clone()));
        self.unflushed.push_back(Unflushed {
            version,
            mutations: resolved,
            writes,
        });
        self.version = version;
        Ok(version)
    }

    fn push(&mut self, key: &[u8], version: Version, value: Option<Vec<u8>>) {
        let events = self.points.entry(key.to_vec()).or_default();
        if events.last().is_some_and(|(v, _)| *v == version) {
            events.pop();
        }
        events.push((version, value));
    }

    /// The newest commit not yet handed to SQLite.
    pub fn last_unflushed(&self) -> Option<&Unflushed> {
        self.unflushed.back()
    }

    /// Everything not yet handed to SQLite, oldest first.
    pub fn take_unflushed(&mut self) -> Vec<Unflushed> {
        self.unflushed_bytes = 0;
        self.unflushed.drain(..).collect()
    }

    /// Put back commits whose flush failed, in front of any newer ones.
    pub fn restore_unflushed(&mut self, commits: Vec<Unflushed>) {
        self.unflushed_bytes += commits
            .iter()
            .flat_map(|c| &c.mutations)
            .map(mutation_bytes)
            .sum::<usize>();
        for c in commits.into_iter().rev() {
            self.unflushed.push_front(c);
        }
    }

    /// SQLite now holds every commit up to `version`: drop the events no
    /// pinned reader needs.
    pub fn flushed_through(&mut self, version: Version) {
        self.flushed = self.flushed.max(version);
        self.collect();
    }

    /// Drop events that every reader can get from SQLite: those at or below
    /// both the flushed version and the oldest pin.
    pub fn collect(&mut self) {
        let floor = self
            .pins
            .keys()
            .next()
            .copied()
            .unwrap_or(self.flushed)
            .min(self.flushed);
        self.points.retain(|_, events| {
            let keep = events.partition_point(|(v, _)| *v <= floor);
            events.drain(..keep);
            !events.is_empty()
        });
        self.clears.retain(|(v, _, _)| *v > floor);
    }

    /// Events held.
    #[cfg(test)]
    pub fn events(&self) -> usize {
        self.points.values().map(Vec::len).sum::<usize>() + self.clears.len()
    }
}

/// Key and value bytes of `m`: what it costs held in memory or logged.
pub(crate) fn mutation_bytes(m: &Mutation) -> usize {
    match m {
        Mutation::Set { key, value } => key.len() + value.len(),
        Mutation::Clear { key } | Mutation::Add { key, .. } => key.len(),
        Mutation::ClearRange { begin, end } => begin.len() + end.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETAIN: Duration = Duration::from_secs(10);

    fn set(k: &str, v: &str) -> Mutation {
        Mutation::Set {
            key: k.into(),
            value: v.into(),
        }
    }

    fn commit(t: &mut Memtable, read: Version, ms: Vec<Mutation>) -> Version {
        t.commit(read, &[], vec![], ms, Duration::ZERO, |_| Ok(None))
            .unwrap()
    }

    fn known(v: &str) -> Seen {
        Seen::Known(Some(v.as_bytes().to_vec()))
    }

    /// A remembered SQLite value answers reads until a commit writes the
    /// key; a read of a key the table holds events of is not remembered
    /// (it may be older than a commit a newer reader must see).
    #[test]
    fn a_remembered_value_never_outlives_a_write() {
        let mut t = Memtable::new(0, RETAIN);
        let _ = t.remember(b"a", Some(b"0"));
        let _ = t.remember(b"gone", None);
        assert_eq!(t.lookup(b"a", 0), known("0"));
        assert_eq!(t.lookup(b"gone", 0), Seen::Known(None));
        let v = commit(&mut t, 0, vec![set("a", "1")]);
        // An older reader's snapshot has "0" and finds it there; the table
        // decides for newer ones.
        assert_eq!(t.lookup(b"a", 0), Seen::Unknown);
        assert_eq!(t.lookup(b"a", v), known("1"));
        // A read through that older snapshot is not remembered.
        let _ = t.remember(b"a", Some(b"0"));
        t.flushed_through(v);
        assert_eq!(t.lookup(b"a", v), Seen::Unknown, "SQLite has it now");
        // Range clears forget too, and refuse what they cover while held.
        let _ = t.remember(b"b1", Some(b"x"));
        let _ = t.remember(b"c", Some(b"y"));
        let v = commit(
            &mut t,
            v,
            vec![Mutation::ClearRange {
                begin: "b".into(),
                end: "bz".into(),
            }],
        );
        let _ = t.remember(b"b2", Some(b"x"));
        assert_eq!(t.lookup(b"b1", v), Seen::Known(None));
        t.flushed_through(v);
        assert_eq!(t.lookup(b"b1", v), Seen::Unknown);
        assert_eq!(t.lookup(b"b2", v), Seen::Unknown);
        assert_eq!(t.lookup(b"c", v), known("y"));
        // So does a point clear.
        let v = commit(&mut t, v, vec![Mutation::Clear { key: "c".into() }]);
        t.flushed_through(v);
        assert_eq!(t.lookup(b"c", v), Seen::Unknown);
    }

    /// File chunks are not remembered, and past its budget the cache
    /// starts over, handing the old entries back to be freed.
    #[test]
    fn the_remembered_values_stay_small() {
        let mut t = Memtable::new(0, RETAIN);
        let _ = t.remember(b"chunk", Some(&[7; STORED_VALUE_MAX + 1]));
        assert_eq!(t.lookup(b"chunk", 0), Seen::Unknown);
        let value = [1; STORED_VALUE_MAX];
        let per_entry = stored_cost(&[0; 8], value.len());
        let fit = STORED_MAX_BYTES / per_entry;
        for i in 0..fit as u64 {
            assert!(t.remember(&i.to_be_bytes(), Some(&value)).is_none());
        }
        assert!(t.stored_bytes <= STORED_MAX_BYTES);
        let dropped = t.remember(b"one more", Some(&value)).expect("started over");
        assert_eq!(dropped.len(), fit);
        assert_eq!(t.stored.len(), 1);
        assert_eq!(t.stored_bytes, stored_cost(b"one more", value.len()));
    }

    #[test]
    fn each_version_sees_its_own_state() {
        let mut t = Memtable::new(10, RETAIN);
        assert_eq!(commit(&mut t, 10, vec![set("a", "1")]), 11);
        assert_eq!(
            commit(&mut t, 11, vec![Mutation::Clear { key: "a".into() }]),
            12
        );
        commit(&mut t, 12, vec![set("a", "3")]);
        assert_eq!(t.lookup(b"a", 10), Seen::Unknown);
        assert_eq!(t.lookup(b"a", 11), known("1"));
        assert_eq!(t.lookup(b"a", 12), Seen::Known(None));
        assert_eq!(t.lookup(b"a", 13), known("3"));
        assert_eq!(t.lookup(b"b", 13), Seen::Unknown);
    }

    #[test]
    fn a_range_clear_hides_stored_keys_until_rewritten() {
        let mut t = Memtable::new(0, RETAIN);
        commit(
            &mut t,
            0,
            vec![
                Mutation::ClearRange {
                    begin: "b".into(),
                    end: "d".into(),
                },
                set("c", "new"),
            ],
        );
        let stored = vec![
            (b"a".to_vec(), b"A".to_vec()),
            (b"b".to_vec(), b"B".to_vec()),
            (b"c".to_vec(), b"C".to_vec()),
            (b"d".to_vec(), b"D".to_vec()),
        ];
        let merged = t.merge_window(b"a", b"z", 1, stored.clone(), false);
        let keys: Vec<(&[u8], &[u8])> = merged
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (&b"a"[..], &b"A"[..]),
                (&b"c"[..], &b"new"[..]),
                (&b"d"[..], &b"D"[..])
            ]
        );
        // Read backwards: the same pairs, descending.
        let descending: Vec<KeyValue> = stored.iter().rev().cloned().collect();
        let backwards = t.merge_window(b"a", b"z", 1, descending, true);
        assert_eq!(backwards, merged.iter().rev().cloned().collect::<Vec<_>>());
        // Past every event: SQLite's pairs as they came.
        let tail = stored[3..].to_vec();
        assert_eq!(t.merge_window(b"d", b"z", 1, tail.clone(), false), tail);
        // Before the clear, SQLite's view stands.
        assert_eq!(t.merge_window(b"a", b"z", 0, stored.clone(), false), stored);
        // A later clear hides the rewritten key again.
        commit(
            &mut t,
            1,
            vec![Mutation::ClearRange {
                begin: "a".into(),
                end: "z".into(),
            }],
        );
        assert!(t.merge_window(b"a", b"z", 2, stored, false).is_empty());
    }

    #[test]
    fn adds_resolve_against_the_table_then_the_store() {
        let mut t = Memtable::new(0, RETAIN);
        let add = |d| Mutation::Add {
            key: "n".into(),
            delta: d,
        };
        t.commit(0, &[], vec![], vec![add(2), add(3)], Duration::ZERO, |_| {
            Ok(Some(40i64.to_le_bytes().to_vec()))
        })
        .unwrap();
        assert_eq!(
            t.lookup(b"n", 1),
            Seen::Known(Some(45i64.to_le_bytes().to_vec()))
        );
        // Now the table knows the key: the store is not asked.
        t.commit(1, &[], vec![], vec![add(-5)], Duration::ZERO, |_| {
            panic!("the table holds n")
        })
        .unwrap();
        assert_eq!(
            t.lookup(b"n", 2),
            Seen::Known(Some(40i64.to_le_bytes().to_vec()))
        );
    }

    #[test]
    fn conflicts_come_from_commits_after_the_read_version_only() {
        let mut t = Memtable::new(0, RETAIN);
        let _reader = t.pin(); // readers at version 0 are running
        let w = |k: &str| vec![KeyRange::new(k.as_bytes(), format!("{k}\0").into_bytes())];
        t.commit(0, &[], w("a"), vec![set("a", "1")], Duration::ZERO, |_| {
            Ok(None)
        })
        .unwrap();
        let read = w("a");
        let late = t.commit(
            0,
            &read,
            w("b"),
            vec![set("b", "1")],
            Duration::ZERO,
            |_| Ok(None),
        );
        assert_eq!(late, Err(KvError::NotCommitted));
        assert!(t
            .commit(
                1,
                &read,
                w("b"),
                vec![set("b", "1")],
                Duration::ZERO,
                |_| Ok(None)
            )
            .is_ok());
        // Once the log forgot version 1, a read at 0 is too old to check.
        let later = RETAIN + Duration::from_secs(1);
        assert_eq!(
            t.commit(0, &[], w("c"), vec![set("c", "1")], later, |_| Ok(None)),
            Err(KvError::TransactionTooOld)
        );
    }

    #[test]
    fn the_log_keeps_only_what_running_readers_can_conflict_with() {
        let mut t = Memtable::new(0, RETAIN);
        let w = |k: &str| vec![KeyRange::new(k.as_bytes(), format!("{k}\0").into_bytes())];
        for i in 0..100 {
            t.commit(i, &[], w("a"), vec![set("a", "1")], Duration::ZERO, |_| {
                Ok(None)
            })
            .unwrap();
        }
        // The log is pruned on each commit down to what readers need.
        assert!(t.log.len() <= 1, "no reader: {} entries kept", t.log.len());
        let pin = t.pin(); // a reader at version 100 (nothing flushed: pin 0)
        let read_version = t.version();
        for _ in 0..10 {
            let v = t.version();
            t.commit(v, &[], w("b"), vec![set("b", "1")], Duration::ZERO, |_| {
                Ok(None)
            })
            .unwrap();
        }
        assert!(t.log.len() >= 10, "the reader's conflicts are kept");
        // The reader still conflicts with what came after it.
        assert_eq!(
            t.commit(
                read_version,
                &w("b"),
                w("c"),
                vec![set("c", "1")],
                Duration::ZERO,
                |_| { Ok(None) }
            ),
            Err(KvError::NotCommitted)
        );
        t.unpin(pin);
    }

    #[test]
    fn flushed_events_stay_while_a_reader_needs_them() {
        let mut t = Memtable::new(0, RETAIN);
        commit(&mut t, 0, vec![set("a", "1")]);
        let pin = t.pin(); // a reader whose snapshot predates the flush
        let flushed = t.take_unflushed();
        assert_eq!(flushed.len(), 1);
        t.flushed_through(1);
        assert_eq!(t.lookup(b"a", 1), known("1"), "pinned");
        t.unpin(pin);
        t.collect();
        assert_eq!(t.lookup(b"a", 1), Seen::Unknown, "SQLite has it now");
        assert_eq!(t.events(), 0);
    }

    #[test]
    fn a_failed_flush_is_put_back_in_order() {
        let mut t = Memtable::new(0, RETAIN);
        commit(&mut t, 0, vec![set("a", "1")]);
        let first = t.take_unflushed();
        commit(&mut t, 1, vec![set("a", "2")]);
        t.restore_unflushed(first);
        let order: Vec<Version> = t.take_unflushed().iter().map(|c| c.version).collect();
        assert_eq!(order, vec![1, 2]);
    }
}
