//! The transaction every caller uses, whatever the backend: read-your-writes,
//! the size and age limits, and the read and write conflict ranges that make
//! commits serializable.
//!
//! A [`Transaction`] is a cheap handle (clone it freely, e.g. to read several
//! keys concurrently). Mutations are buffered here and reach the backend only
//! at [`Transaction::commit`], so a failed transaction leaves no trace.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::backend::{apply_add, BackendTxn, CommitRequest, WatchRequest};
use super::overlay::{Lookup, Overlay};
use super::ranges::{key_after, KeyRange, RangeSet};
use super::{KeyValue, KvError, KvResult, Version};
use crate::clock::Clock;
use crate::limits::{KEY_BYTES_MAX, TRANSACTION_AGE_MAX, TRANSACTION_BYTES_MAX, VALUE_BYTES_MAX};

/// How to read a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Most pairs to return; 0 means no limit.
    pub limit: usize,
    /// Descending key order (the limit then keeps the largest keys).
    pub reverse: bool,
    /// Read without adding a read conflict range.
    pub snapshot: bool,
}

/// Pairs read from a range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// True when pairs of the range were left out because of the limit.
    pub more: bool,
}

/// A transaction: reads at one read version, buffered writes, one commit.
#[derive(Debug, Clone)]
pub struct Transaction {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Box<dyn BackendTxn>,
    clock: Arc<dyn Clock>,
    started: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    overlay: Overlay,
    read_conflicts: RangeSet,
    write_conflicts: RangeSet,
    watches: Vec<(Vec<u8>, oneshot::Sender<KvResult<()>>)>,
    /// Mutation bytes so far (keys and values, every call counted, as
    /// FoundationDB counts them). `commit` adds the conflict ranges'.
    bytes: usize,
    /// The first limit a mutation broke; reported by `commit`.
    error: Option<KvError>,
    finished: bool,
    relaxed: bool,
}

/// Resolves when the watched key changes after the watching transaction
/// committed; fails if that transaction did not commit.
#[derive(Debug)]
pub struct Watch {
    fired: oneshot::Receiver<KvResult<()>>,
}

impl Watch {
    pub async fn changed(self) -> KvResult<()> {
        self.fired.await.unwrap_or(Err(KvError::Cancelled))
    }
}

impl Transaction {
    pub(crate) fn new(backend: Box<dyn BackendTxn>, clock: Arc<dyn Clock>) -> Self {
        let started = clock.monotonic();
        Transaction {
            inner: Arc::new(Inner {
                backend,
                clock,
                started,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The version this transaction reads at.
    pub fn read_version(&self) -> Version {
        self.inner.backend.read_version()
    }

    /// The clock this transaction measures its age on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The value of `key`, adding a read conflict on it.
    pub async fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.get_with(key, false).await
    }

    /// The value of `key` without a read conflict: a later write by another
    /// transaction does not make this one fail.
    pub async fn get_snapshot(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.get_with(key, true).await
    }

    async fn get_with(&self, key: &[u8], snapshot: bool) -> KvResult<Option<Vec<u8>>> {
        self.check_readable()?;
        check_key(key)?;
        self.read_key(key, snapshot).await
    }

    /// Read through the overlay; no liveness checks (`commit` uses it after
    /// the transaction is marked finished, to learn what watches expect).
    async fn read_key(&self, key: &[u8], snapshot: bool) -> KvResult<Option<Vec<u8>>> {
        let lookup = {
            let mut state = self.inner.state.lock();
            if !snapshot {
                state.read_conflicts.insert_key(key);
            }
            match state.overlay.lookup(key) {
                Lookup::Known(v) => return Ok(v.map(<[u8]>::to_vec)),
                Lookup::AddTo(delta) => Some(delta),
                Lookup::Unknown => None,
            }
        };
        let stored = self.inner.backend.get(key).await?;
        Ok(match lookup {
            Some(delta) => Some(apply_add(stored.as_deref(), delta).to_vec()),
            None => stored,
        })
    }

    /// Pairs with `begin <= key < end`, merged with this transaction's own
    /// writes. A non-snapshot read adds a read conflict over the part of the
    /// range that decided the result: all of it, or up to the last returned
    /// key when the limit cut it short.
    pub async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> KvResult<RangeResult> {
        self.check_readable()?;
        if begin > end {
            return Err(KvError::InvalidArgument(
                "range begin is after its end".into(),
            ));
        }
        // Ask for one pair beyond the limit so `more` is exact.
        let target = if options.limit == 0 {
            0
        } else {
            options.limit + 1
        };
        let mut kvs: Vec<KeyValue> = Vec::new();
        let (mut lo, mut hi) = (begin.to_vec(), end.to_vec());
        while lo < hi && (target == 0 || kvs.len() < target) {
            let want = if target == 0 { 0 } else { target - kvs.len() };
            let (page, page_more) = self
                .inner
                .backend
                .get_range(&lo, &hi, want, options.reverse)
                .await?;
            // The window `page` covers completely.
            let (w_lo, w_hi) = match (page_more, page.last(), options.reverse) {
                (true, Some((last, _)), false) => (lo.clone(), key_after(last)),
                (true, Some((last, _)), true) => (last.clone(), hi.clone()),
                _ => (lo.clone(), hi.clone()),
            };
            let window =
                self.inner
                    .state
                    .lock()
                    .overlay
                    .merge_window(&w_lo, &w_hi, page, options.reverse);
            super::append(&mut kvs, window);
            if options.reverse {
                hi = w_lo;
            } else {
                lo = w_hi;
            }
        }
        let more = target != 0 && kvs.len() >= target;
        if more {
            kvs.truncate(options.limit);
        }
        if !options.snapshot {
            let decided = match (more, kvs.last(), options.reverse) {
                (true, Some((last, _)), false) => KeyRange::new(begin, key_after(last)),
                (true, Some((last, _)), true) => KeyRange::new(last.clone(), end),
                _ => KeyRange::new(begin, end),
            };
            self.inner
                .state
                .lock()
                .read_conflicts
                .insert(&decided.begin, &decided.end);
        }
        Ok(RangeResult { kvs, more })
    }

    /// Set `key` to `value`. Limits are checked here; a broken limit is
    /// reported by `commit`.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        self.mutate(
            key.len() + value.len(),
            || {
                check_key(key)?;
                check_value(value)
            },
            |o| o.set(key, value),
        );
    }

    pub fn clear(&self, key: &[u8]) {
        self.mutate(key.len(), || check_key(key), |o| o.clear(key));
    }

    pub fn clear_range(&self, begin: &[u8], end: &[u8]) {
        self.mutate(
            begin.len() + end.len(),
            || check_range(begin, end),
            |o| o.clear_range(begin, end),
        );
    }

    /// FoundationDB's ADD: add `delta` to the little-endian integer at `key`
    /// without reading it, so concurrent adds do not conflict.
    pub fn atomic_add(&self, key: &[u8], delta: i64) {
        self.mutate(key.len() + 8, || check_key(key), |o| o.add(key, delta));
    }

    /// Make this transaction conflict with any commit after its read version
    /// that writes in `[begin, end)`, as if it had read the range.
    pub fn add_read_conflict_range(&self, begin: &[u8], end: &[u8]) {
        let mut state = self.inner.state.lock();
        if let Err(e) = check_range(begin, end) {
            state.error.get_or_insert(e);
            return;
        }
        state.read_conflicts.insert(begin, end);
    }

    /// Make transactions that read in `[begin, end)` conflict with this one,
    /// as if it had written the range.
    pub fn add_write_conflict_range(&self, begin: &[u8], end: &[u8]) {
        let mut state = self.inner.state.lock();
        if let Err(e) = check_range(begin, end) {
            state.error.get_or_insert(e);
            return;
        }
        state.write_conflicts.insert(begin, end);
    }

    /// Watch `key`: once this transaction commits, the returned watch fires
    /// when the stored value differs from the one this transaction saw.
    pub fn watch(&self, key: &[u8]) -> Watch {
        let (tx, rx) = oneshot::channel();
        let mut state = self.inner.state.lock();
        match check_key(key) {
            Ok(()) => state.watches.push((key.to_vec(), tx)),
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        Watch { fired: rx }
    }

    /// Say that this transaction's writes need not survive power loss — a
    /// power loss takes every process using the data with it, as for
    /// records of which files a client has open. A backend whose commits
    /// are durable anyway (FoundationDB, memory) ignores it; the SQLite
    /// backend then commits without an fsync. Commits stay atomic and in
    /// order either way: a later durable commit makes earlier relaxed ones
    /// durable too, so a power loss drops only a suffix of relaxed commits.
    pub fn relax_durability(&self) {
        self.inner.state.lock().relaxed = true;
    }

    /// Commit. Returns the commit version (the read version for a
    /// transaction that wrote nothing).
    ///
    /// # Warning: maybe committed
    /// `CommitUnknownResult` and `TimedOut` mean the writes may be applied
    /// (`TimedOut`: possibly later). Only idempotent work may be retried.
    pub async fn commit(&self) -> KvResult<Version> {
        let watches = {
            let mut state = self.inner.state.lock();
            if state.finished {
                return Err(KvError::UsedAfterCommit);
            }
            state.finished = true;
            // Taken before any early return, so a failed commit drops the
            // senders and its watches resolve with an error.
            let watches = std::mem::take(&mut state.watches);
            if let Some(e) = state.error.clone() {
                return Err(e);
            }
            watches
        };
        self.check_age()?;
        let mut requests = Vec::with_capacity(watches.len());
        for (key, fired) in watches {
            let expected = self.read_key(&key, true).await?;
            requests.push(WatchRequest {
                key,
                expected,
                fired,
            });
        }
        let request = {
            // Finished: nothing reads the state again, so take it.
            let mut state = self.inner.state.lock();
            let mut write_conflicts = std::mem::take(&mut state.write_conflicts);
            state.overlay.write_ranges(&mut write_conflicts);
            let request = CommitRequest {
                mutations: state.overlay.mutations(),
                read_conflicts: state.read_conflicts.to_ranges(),
                write_conflicts: write_conflicts.to_ranges(),
                watches: requests,
                relaxed: state.relaxed,
            };
            // FoundationDB's limit counts the conflict ranges' keys too
            // (coalesced, as its client sends them): a transaction that
            // fits only without them would fail on a cluster alone.
            let range_bytes = |ranges: &[KeyRange]| -> usize {
                ranges.iter().map(|r| r.begin.len() + r.end.len()).sum()
            };
            let bytes = state.bytes
                + range_bytes(&request.read_conflicts)
                + range_bytes(&request.write_conflicts);
            // FoundationDB answers a read-only commit before checking.
            if bytes > TRANSACTION_BYTES_MAX && !request.is_read_only() {
                return Err(KvError::TransactionTooLarge { bytes });
            }
            request
        };
        self.inner.backend.commit(request).await
    }

    fn mutate(
        &self,
        bytes: usize,
        check: impl FnOnce() -> KvResult<()>,
        apply: impl FnOnce(&mut Overlay),
    ) {
        let mut state = self.inner.state.lock();
        if state.finished {
            state.error.get_or_insert(KvError::UsedAfterCommit);
            return;
        }
        if let Err(e) = check() {
            state.error.get_or_insert(e);
            return;
        }
        state.bytes += bytes;
        apply(&mut state.overlay);
        check_total(&mut state);
    }

    fn check_readable(&self) -> KvResult<()> {
        if self.inner.state.lock().finished {
            return Err(KvError::UsedAfterCommit);
        }
        self.check_age()
    }

    fn check_age(&self) -> KvResult<()> {
        let age = self
            .inner
            .clock
            .monotonic()
            .saturating_sub(self.inner.started);
        if age > TRANSACTION_AGE_MAX {
            return Err(KvError::TransactionTooOld);
        }
        Ok(())
    }
}

fn check_total(state: &mut State) {
    if state.bytes > TRANSACTION_BYTES_MAX {
        state
            .error
            .get_or_insert(KvError::TransactionTooLarge { bytes: state.bytes });
    }
}

fn check_key(key: &[u8]) -> KvResult<()> {
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::KeyTooLarge { bytes: key.len() });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> KvResult<()> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(KvError::ValueTooLarge { bytes: value.len() });
    }
    Ok(())
}

fn check_range(begin: &[u8], end: &[u8]) -> KvResult<()> {
    // FoundationDB allows range ends one byte longer than a key (a key
    // followed by "\0"), so bound each end by the key limit plus one.
    for bound in [begin, end] {
        if bound.len() > KEY_BYTES_MAX + 1 {
            return Err(KvError::KeyTooLarge { bytes: bound.len() });
        }
    }
    if begin > end {
        return Err(KvError::InvalidArgument(
            "range begin is after its end".into(),
        ));
    }
    Ok(())
}
