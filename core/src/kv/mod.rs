//! The KV layer: ordered byte keys with FoundationDB's transaction semantics
//! over interchangeable backends.
//!
//! Layers, top to bottom:
//! - [`Database::run`]: the one retry loop (a first conflict retried at
//!   once, then capped exponential backoff with jitter from a seeded RNG,
//!   an attempt and time budget, and the `maybe_committed` flag after an
//!   ambiguous commit);
//! - [`Transaction`]: read-your-writes, limits, conflict ranges, watches;
//! - [`Backend`]: a snapshot at a read version and an atomic
//!   check-conflicts-then-apply commit — [`mem`], [`sqlite`], and `fdb`
//!   (cargo feature `fdb`).
//!
//! The contract, shared by every backend: reads see one read version;
//! a commit fails with `NotCommitted` when a key or range it read without
//! snapshot (phantoms included) was written by a commit after its read
//! version; a transaction older than five seconds on the injected clock
//! fails with `TransactionTooOld`; the limits in [`crate::limits`] hold.

pub mod backend;
mod database;
#[cfg(not(madsim))]
mod doorbell;
pub mod error;
pub mod fault;
#[cfg(not(madsim))]
mod hostlock;
pub mod mem;
#[cfg(not(madsim))]
mod memtable;
mod overlay;
pub mod ranges;
// SQLite and URL opening need OS threads and files, which the simulator
// (`--cfg madsim`) does not provide; it uses `mem` only.
#[cfg(not(madsim))]
pub mod sqlite;
#[cfg(not(madsim))]
pub mod synclog;
mod txn;
#[cfg(not(madsim))]
pub mod url;

#[cfg(feature = "fdb")]
pub mod fdb;

pub use backend::{Backend, BackendTxn, CommitRequest, Mutation, WatchRequest};
pub use database::{Database, RetryOptions};
pub use error::{KvError, KvResult, RetryDecision, TxnError};
pub use ranges::{key_after, prefix_end, KeyRange, RangeSet};
pub use txn::{RangeOptions, RangeResult, Transaction, Watch};

/// A commit version. Versions of successive commits strictly increase.
pub type Version = u64;

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// `kvs` followed by `page`; the page itself when `kvs` is empty (a range
/// read's first page, usually its only one), not moved pair by pair.
pub(crate) fn append(kvs: &mut Vec<KeyValue>, page: Vec<KeyValue>) {
    if kvs.is_empty() {
        *kvs = page;
    } else {
        kvs.extend(page);
    }
}

/// Whether `map` has a key in `[begin, end)`.
/// Take every entry of `map` in `[begin, end)` out of it.
pub(crate) fn remove_range<V>(
    map: &mut std::collections::BTreeMap<Vec<u8>, V>,
    begin: &[u8],
    end: &[u8],
) -> Vec<(Vec<u8>, V)> {
    let inside: Vec<Vec<u8>> = map
        .range::<[u8], _>((
            std::ops::Bound::Included(begin),
            std::ops::Bound::Excluded(end),
        ))
        .map(|(k, _)| k.clone())
        .collect();
    inside
        .into_iter()
        .filter_map(|k| map.remove(&k).map(|v| (k, v)))
        .collect()
}

pub(crate) fn any_in<V>(
    map: &std::collections::BTreeMap<Vec<u8>, V>,
    begin: &[u8],
    end: &[u8],
) -> bool {
    map.range::<[u8], _>((
        std::ops::Bound::Included(begin),
        std::ops::Bound::Excluded(end),
    ))
    .next()
    .is_some()
}
