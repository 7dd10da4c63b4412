//! The generic KV conformance suite: every check is an
//! `async fn check_xxx(factory: &dyn Factory)` that opens a fresh database
//! through the factory and asserts one part of the FoundationDB contract
//! (see `hafs_core::kv`). [`conformance_tests!`] turns the whole list into
//! one `#[tokio::test]` per check for one backend.
//!
//! Every key a check touches lies under [`Factory::prefix`], so the suite
//! also runs against a shared FoundationDB cluster. Each check names, in a
//! one-line comment, the backend bug it exists to catch.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hafs_core::clock::{Clock, ManualClock, TokioClock};
use hafs_core::kv::fault::{CommitFault, FaultPlan, FaultyBackend, ReadFault};
use hafs_core::kv::{
    prefix_end, CommitRequest, Database, KeyValue, KvError, KvResult, RangeOptions, RangeResult,
    RetryOptions, Transaction, Watch,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seed of every database's backoff jitter and of the suite's own RNGs.
pub const SEED: u64 = 0x00C0_FFEE_5EED;

/// How long a watch that must fire may take (real time).
const FIRES_WITHIN: Duration = Duration::from_secs(10);
/// How long a watch that must not fire is observed (real time).
const QUIET_FOR: Duration = Duration::from_millis(300);

/// Builds fresh databases of one backend.
#[async_trait]
pub trait Factory: Send + Sync {
    /// The backend's name, for messages.
    fn name(&self) -> &str;

    /// Why this backend cannot be tested here, if it cannot.
    fn skip_reason(&self) -> Option<String> {
        None
    }

    /// Every key of every check starts with this prefix. It must contain a
    /// byte below 0xff (so it has a [`prefix_end`]).
    fn prefix(&self) -> Vec<u8>;

    /// A database in which no key under [`Factory::prefix`] exists, timed by
    /// `clock` (the backend's clock too, where it has one).
    async fn open(&self, clock: Arc<dyn Clock>) -> Database;
}

/// Expand into one `#[tokio::test]` per check of the suite, in a module
/// named `$module`, each running against a database from `$factory`
/// (evaluated afresh by every test).
macro_rules! conformance_tests {
    ($module:ident, $factory:expr) => {
        conformance_tests!(@expand $module, $factory, [
            basic_point_ops => check_basic_point_ops,
            basic_edge_keys_and_values => check_basic_edge_keys_and_values,
            basic_read_your_writes => check_basic_read_your_writes,
            basic_isolation_until_commit => check_basic_isolation_until_commit,
            basic_failed_txn_leaves_no_trace => check_basic_failed_txn_leaves_no_trace,
            range_bounds_limit_more => check_range_bounds_limit_more,
            range_reverse => check_range_reverse,
            range_empty_and_inverted => check_range_empty_and_inverted,
            range_read_your_writes_model => check_range_read_your_writes_model,
            conflict_read_modify_write => check_conflict_read_modify_write,
            conflict_phantom_insert => check_conflict_phantom_insert,
            conflict_deletion_in_range => check_conflict_deletion_in_range,
            conflict_write_outside_range => check_conflict_write_outside_range,
            conflict_limited_range => check_conflict_limited_range,
            conflict_snapshot_reads => check_conflict_snapshot_reads,
            conflict_explicit_ranges => check_conflict_explicit_ranges,
            conflict_blind_writes => check_conflict_blind_writes,
            conflict_read_only_commits => check_conflict_read_only_commits,
            atomic_add_concurrent => check_atomic_add_concurrent,
            atomic_add_widths => check_atomic_add_widths,
            watch_fires_on_change => check_watch_fires_on_change,
            watch_once_per_change => check_watch_once_per_change,
            watch_ignores_unrelated_and_same_value => check_watch_ignores_unrelated_and_same_value,
            watch_failed_commit_errors => check_watch_failed_commit_errors,
            limits_key_size => check_limits_key_size,
            limits_value_size => check_limits_value_size,
            limits_transaction_size => check_limits_transaction_size,
            limits_count_conflict_ranges => check_limits_count_conflict_ranges,
            too_old => check_too_old,
            runner_retries_conflicts => check_runner_retries_conflicts,
            runner_non_retryable => check_runner_non_retryable,
            runner_maybe_committed => check_runner_maybe_committed,
            runner_timed_out_not_retried => check_runner_timed_out_not_retried,
            runner_attempt_budget => check_runner_attempt_budget,
            runner_read => check_runner_read,
        ]);
    };
    (@expand $module:ident, $factory:expr, [$($test:ident => $check:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let factory = $factory;
                    if crate::conformance::skipped(&factory) {
                        return;
                    }
                    crate::conformance::$check(&factory).await;
                }
            )*
        }
    };
}

/// True (after saying so) when the factory's backend cannot run here.
pub fn skipped(factory: &dyn Factory) -> bool {
    match factory.skip_reason() {
        Some(reason) => {
            println!("{} conformance: skipped ({reason})", factory.name());
            true
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Keys under the factory's prefix.
#[derive(Debug, Clone)]
struct Space {
    prefix: Vec<u8>,
}

impl Space {
    fn of(factory: &dyn Factory) -> Space {
        Space {
            prefix: factory.prefix(),
        }
    }

    fn k(&self, suffix: impl AsRef<[u8]>) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(suffix.as_ref());
        key
    }

    /// The end of the whole key space of the check.
    fn end(&self) -> Vec<u8> {
        prefix_end(&self.prefix).expect("the prefix has a byte below 0xff")
    }
}

fn tokio_clock() -> Arc<dyn Clock> {
    TokioClock::new()
}

fn opts(limit: usize, reverse: bool) -> RangeOptions {
    RangeOptions {
        limit,
        reverse,
        snapshot: false,
    }
}

fn kv(key: &[u8], value: &[u8]) -> KeyValue {
    (key.to_vec(), value.to_vec())
}

fn le(n: i64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

async fn begin(db: &Database) -> Transaction {
    db.begin().await.expect("begin")
}

/// Commit one transaction that does `write`.
async fn commit_with(db: &Database, write: impl FnOnce(&Transaction)) {
    let txn = begin(db).await;
    write(&txn);
    txn.commit().await.expect("commit of a blind write");
}

async fn put(db: &Database, key: &[u8], value: &[u8]) {
    commit_with(db, |t| t.set(key, value)).await;
}

/// The committed value of `key`, read in a fresh transaction.
async fn fetch(db: &Database, key: &[u8]) -> Option<Vec<u8>> {
    begin(db).await.get(key).await.expect("get")
}

/// Every committed pair under the check's prefix.
async fn contents(db: &Database, space: &Space) -> Vec<KeyValue> {
    let txn = begin(db).await;
    let result = txn
        .get_range(&space.prefix, &space.end(), RangeOptions::default())
        .await
        .expect("get_range over the prefix");
    assert!(!result.more, "an unlimited range read reported more");
    result.kvs
}

/// Read `[begin, end)` with `options` in `txn`, panicking on error.
async fn range(txn: &Transaction, begin: &[u8], end: &[u8], options: RangeOptions) -> RangeResult {
    txn.get_range(begin, end, options)
        .await
        .unwrap_or_else(|e| panic!("get_range({begin:?}, {end:?}, {options:?}): {e}"))
}

/// Give `txn` a write (so its commit is not read-only) and commit it.
async fn finish(txn: &Transaction, space: &Space) -> KvResult<u64> {
    txn.set(&space.k(b"zz/out"), b"out");
    txn.commit().await
}

/// FoundationDB's ADD, written independently of the code under test.
fn model_add(existing: Option<&[u8]>, delta: i64) -> Vec<u8> {
    let mut bytes = [0u8; 8];
    if let Some(existing) = existing {
        let n = existing.len().min(8);
        bytes[..n].copy_from_slice(&existing[..n]);
    }
    le(i64::from_le_bytes(bytes).wrapping_add(delta))
}

/// What a range read of `model` must return.
fn model_range(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    begin: &[u8],
    end: &[u8],
    limit: usize,
    reverse: bool,
) -> RangeResult {
    let mut kvs: Vec<KeyValue> = model
        .range(begin.to_vec()..end.to_vec())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if reverse {
        kvs.reverse();
    }
    let more = limit != 0 && kvs.len() > limit;
    if more {
        kvs.truncate(limit);
    }
    RangeResult { kvs, more }
}

/// Create a watch on `key` in a transaction of its own and commit it.
async fn watch(db: &Database, key: &[u8]) -> Watch {
    let txn = begin(db).await;
    let w = txn.watch(key);
    txn.commit()
        .await
        .unwrap_or_else(|e| panic!("commit of a transaction holding only a watch: {e}"));
    w
}

type PendingWatch = Pin<Box<dyn Future<Output = KvResult<()>> + Send>>;

fn pending(w: Watch) -> PendingWatch {
    Box::pin(w.changed())
}

/// Wait (up to [`FIRES_WITHIN`]) for a watch to resolve.
async fn resolved(w: &mut PendingWatch, what: &str) -> KvResult<()> {
    tokio::time::timeout(FIRES_WITHIN, w)
        .await
        .unwrap_or_else(|_| panic!("watch did not resolve within {FIRES_WITHIN:?}: {what}"))
}

/// Assert a watch stays unresolved for [`QUIET_FOR`].
async fn quiet(w: &mut PendingWatch, what: &str) {
    if let Ok(result) = tokio::time::timeout(QUIET_FOR, w).await {
        panic!("watch resolved ({result:?}) but must not have: {what}");
    }
}

/// A fault plan that applies scripted commit faults in order, then none.
#[derive(Debug)]
struct ScriptedFaults {
    commits: Mutex<VecDeque<CommitFault>>,
}

impl ScriptedFaults {
    fn new(faults: impl IntoIterator<Item = CommitFault>) -> Arc<Self> {
        Arc::new(ScriptedFaults {
            commits: Mutex::new(faults.into_iter().collect()),
        })
    }
}

impl FaultPlan for ScriptedFaults {
    fn on_commit(&self, _request: &CommitRequest) -> CommitFault {
        self.commits
            .lock()
            .expect("fault script lock")
            .pop_front()
            .unwrap_or(CommitFault::None)
    }

    fn on_read(&self) -> ReadFault {
        ReadFault::None
    }
}

/// `db`'s backend behind a [`FaultyBackend`] running `plan`.
fn with_faults(db: &Database, plan: Arc<ScriptedFaults>) -> Database {
    let backend = FaultyBackend::new(db.backend().clone(), plan, db.clock().clone());
    Database::new(Arc::new(backend), db.clock().clone(), SEED)
}

// ---------------------------------------------------------------------------
// Basic operations
// ---------------------------------------------------------------------------

/// Point get/set/overwrite/clear/clear_range as committed state.
pub async fn check_basic_point_ops(f: &dyn Factory) {
    // Catches: stale or phantom values, overwrites that keep the old value,
    // clears that do not delete, clear_range with an inclusive end.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    assert_eq!(fetch(&db, &s.k(b"missing")).await, None, "missing key");

    put(&db, &s.k(b"a"), b"1").await;
    assert_eq!(fetch(&db, &s.k(b"a")).await, Some(b"1".to_vec()), "set");
    put(&db, &s.k(b"a"), b"two").await;
    assert_eq!(
        fetch(&db, &s.k(b"a")).await,
        Some(b"two".to_vec()),
        "overwrite"
    );
    commit_with(&db, |t| t.clear(&s.k(b"a"))).await;
    assert_eq!(fetch(&db, &s.k(b"a")).await, None, "clear");
    // Clearing a missing key is fine.
    commit_with(&db, |t| t.clear(&s.k(b"never"))).await;

    commit_with(&db, |t| {
        for i in 1..=5u8 {
            t.set(&s.k([b'r', b'/', b'0' + i]), &[i]);
        }
    })
    .await;
    commit_with(&db, |t| t.clear_range(&s.k(b"r/2"), &s.k(b"r/4"))).await;
    assert_eq!(
        contents(&db, &s).await,
        vec![
            kv(&s.k(b"r/1"), &[1]),
            kv(&s.k(b"r/4"), &[4]),
            kv(&s.k(b"r/5"), &[5]),
        ],
        "clear_range [r/2, r/4) must delete r/2 and r/3 only"
    );
    // A range that covers everything.
    commit_with(&db, |t| t.clear_range(&s.prefix, &s.end())).await;
    assert_eq!(contents(&db, &s).await, vec![], "clear_range of everything");
}

/// Empty values, keys with 0x00/0xff bytes, byte-wise key order.
pub async fn check_basic_edge_keys_and_values(f: &dyn Factory) {
    // Catches: empty values stored as "absent", NUL-terminated or signed-char
    // key comparison, keys truncated at 0x00.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let suffixes: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x00\x00",
        b"a",
        b"a\x00",
        b"a\x00b",
        b"\xff",
        b"\xff\xff",
    ];
    commit_with(&db, |t| {
        for (i, suffix) in suffixes.iter().enumerate() {
            t.set(&s.k(suffix), &[b'v', u8::try_from(i).expect("few keys")]);
        }
        t.set(&s.k(b"empty"), b"");
    })
    .await;
    for (i, suffix) in suffixes.iter().enumerate() {
        assert_eq!(
            fetch(&db, &s.k(suffix)).await,
            Some(vec![b'v', u8::try_from(i).expect("few keys")]),
            "key suffix {suffix:?}"
        );
    }
    assert_eq!(
        fetch(&db, &s.k(b"empty")).await,
        Some(Vec::new()),
        "an empty value is a present value"
    );
    let mut want: Vec<KeyValue> = suffixes
        .iter()
        .enumerate()
        .map(|(i, x)| kv(&s.k(x), &[b'v', u8::try_from(i).expect("few keys")]))
        .collect();
    want.push(kv(&s.k(b"empty"), b""));
    want.sort();
    assert_eq!(
        contents(&db, &s).await,
        want,
        "byte-wise order, empty value included"
    );

    // Exact bounds made of 0x00 and 0xff bytes.
    let txn = begin(&db).await;
    let got = range(&txn, &s.k(b"\x00"), &s.k(b"a\x00"), opts(0, false)).await;
    assert_eq!(
        got.kvs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![s.k(b"\x00"), s.k(b"\x00\x00"), s.k(b"a")],
        "range [\\x00, a\\x00)"
    );
    drop(txn);
    commit_with(&db, |t| t.clear_range(&s.k(b"\x00\x00"), &s.k(b"\xff"))).await;
    let keys: Vec<Vec<u8>> = contents(&db, &s)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![s.k(b""), s.k(b"\x00"), s.k(b"\xff"), s.k(b"\xff\xff")],
        "clear_range [\\x00\\x00, \\xff)"
    );
}

/// Read-your-writes inside one transaction.
pub async fn check_basic_read_your_writes(f: &dyn Factory) {
    // Catches: reads that bypass the transaction's own uncommitted
    // sets/clears/clear_ranges/adds and return the stored value instead.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    commit_with(&db, |t| {
        t.set(&s.k(b"x"), b"stored");
        t.set(&s.k(b"r/a"), b"A");
        t.set(&s.k(b"r/b"), b"B");
        t.set(&s.k(b"r/c"), b"C");
        t.set(&s.k(b"n"), &le(5));
    })
    .await;

    let txn = begin(&db).await;
    txn.set(&s.k(b"x"), b"mine");
    assert_eq!(
        txn.get(&s.k(b"x")).await.unwrap(),
        Some(b"mine".to_vec()),
        "set then get"
    );
    txn.clear(&s.k(b"x"));
    assert_eq!(txn.get(&s.k(b"x")).await.unwrap(), None, "clear then get");
    txn.set(&s.k(b"new"), b"fresh");
    assert_eq!(
        txn.get(&s.k(b"new")).await.unwrap(),
        Some(b"fresh".to_vec()),
        "set of a new key"
    );

    txn.clear_range(&s.k(b"r/a"), &s.k(b"r/c"));
    assert_eq!(
        txn.get(&s.k(b"r/b")).await.unwrap(),
        None,
        "clear_range then get"
    );
    let got = range(&txn, &s.k(b"r/"), &s.k(b"r0"), opts(0, false)).await;
    assert_eq!(
        got.kvs,
        vec![kv(&s.k(b"r/c"), b"C")],
        "clear_range then get_range"
    );
    txn.set(&s.k(b"r/b"), b"B2");
    let got = range(&txn, &s.k(b"r/"), &s.k(b"r0"), opts(0, true)).await;
    assert_eq!(
        got.kvs,
        vec![kv(&s.k(b"r/c"), b"C"), kv(&s.k(b"r/b"), b"B2")],
        "set inside a cleared range, read in reverse"
    );

    txn.atomic_add(&s.k(b"n"), 3);
    assert_eq!(
        txn.get(&s.k(b"n")).await.unwrap(),
        Some(le(8)),
        "add on an unread stored key"
    );
    txn.atomic_add(&s.k(b"m"), 7);
    txn.atomic_add(&s.k(b"m"), -2);
    assert_eq!(
        txn.get(&s.k(b"m")).await.unwrap(),
        Some(le(5)),
        "two adds on a missing key"
    );
    let got = range(&txn, &s.k(b"m"), &s.k(b"n\x00"), opts(0, false)).await;
    assert_eq!(
        got.kvs,
        vec![kv(&s.k(b"m"), &le(5)), kv(&s.k(b"n"), &le(8))],
        "adds seen by get_range"
    );
    txn.commit().await.expect("commit");

    assert_eq!(
        contents(&db, &s).await,
        vec![
            kv(&s.k(b"m"), &le(5)),
            kv(&s.k(b"n"), &le(8)),
            kv(&s.k(b"new"), b"fresh"),
            kv(&s.k(b"r/b"), b"B2"),
            kv(&s.k(b"r/c"), b"C"),
        ],
        "committed result of the transaction"
    );
}

/// Writes are invisible to other transactions until commit, and a
/// transaction keeps reading at its read version.
pub async fn check_basic_isolation_until_commit(f: &dyn Factory) {
    // Catches: dirty reads of uncommitted writes, and reads at the latest
    // version instead of the transaction's read version.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    put(&db, &s.k(b"k"), b"old").await;

    let writer = begin(&db).await;
    writer.set(&s.k(b"k"), b"new");
    writer.set(&s.k(b"j"), b"J");
    let reader = begin(&db).await;
    assert_eq!(
        reader.get(&s.k(b"k")).await.unwrap(),
        Some(b"old".to_vec()),
        "dirty read"
    );
    assert_eq!(
        reader.get(&s.k(b"j")).await.unwrap(),
        None,
        "dirty read of a new key"
    );
    writer.commit().await.expect("writer commit");

    assert_eq!(
        reader.get(&s.k(b"k")).await.unwrap(),
        Some(b"old".to_vec()),
        "a transaction must keep reading at its read version"
    );
    assert_eq!(reader.get_snapshot(&s.k(b"j")).await.unwrap(), None);
    let got = range(&reader, &s.prefix, &s.end(), opts(0, false)).await;
    assert_eq!(
        got.kvs,
        vec![kv(&s.k(b"k"), b"old")],
        "range at the read version"
    );

    let later = begin(&db).await;
    assert_eq!(later.get(&s.k(b"k")).await.unwrap(), Some(b"new".to_vec()));
    assert_eq!(later.get(&s.k(b"j")).await.unwrap(), Some(b"J".to_vec()));
    assert!(
        later.read_version() > reader.read_version(),
        "a transaction begun after a commit reads at a later version"
    );
}

/// An uncommitted or failed transaction leaves nothing behind.
pub async fn check_basic_failed_txn_leaves_no_trace(f: &dyn Factory) {
    // Catches: writes applied before the commit decision, partial
    // application of a conflicting commit.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    put(&db, &s.k(b"c"), b"0").await;

    let dropped = begin(&db).await;
    dropped.set(&s.k(b"d/1"), b"x");
    dropped.clear(&s.k(b"c"));
    dropped.atomic_add(&s.k(b"d/2"), 1);
    drop(dropped);

    let failed = begin(&db).await;
    failed.get(&s.k(b"c")).await.unwrap();
    failed.set(&s.k(b"f/1"), b"x");
    failed.clear_range(&s.prefix, &s.k(b"c\x00"));
    failed.atomic_add(&s.k(b"f/2"), 1);
    put(&db, &s.k(b"c"), b"1").await;
    assert_eq!(failed.commit().await, Err(KvError::NotCommitted));

    assert_eq!(
        contents(&db, &s).await,
        vec![kv(&s.k(b"c"), b"1")],
        "only the committed write may be visible"
    );
}

// ---------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------

async fn seed_ten(db: &Database, s: &Space) -> Vec<KeyValue> {
    let pairs: Vec<KeyValue> = (0..10u8)
        .map(|i| kv(&s.k([b'r', b'/', b'0' + i]), &[b'v', i]))
        .collect();
    commit_with(db, |t| {
        for (k, v) in &pairs {
            t.set(k, v);
        }
        t.set(&s.k(b"q"), b"before");
        t.set(&s.k(b"s"), b"after");
    })
    .await;
    pairs
}

/// Exclusive ends, limits and an exact `more`.
pub async fn check_range_bounds_limit_more(f: &dyn Factory) {
    // Catches: inclusive ends, limits off by one, `more` set when the limit
    // merely equals the number of pairs (or unset when pairs were cut off).
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let pairs = seed_ten(&db, &s).await;
    let txn = begin(&db).await;
    let (b, e) = (s.k(b"r/"), s.k(b"r0"));

    let got = range(&txn, &s.k(b"r/2"), &s.k(b"r/5"), opts(0, false)).await;
    assert_eq!(
        got,
        RangeResult {
            kvs: pairs[2..5].to_vec(),
            more: false
        },
        "exclusive end"
    );
    let got = range(&txn, &s.k(b"r/2\x00"), &s.k(b"r/5\x00"), opts(0, false)).await;
    assert_eq!(got.kvs, pairs[3..6].to_vec(), "bounds between keys");

    for (limit, more) in [
        (1, true),
        (3, true),
        (9, true),
        (10, false),
        (11, false),
        (0, false),
    ] {
        let got = range(&txn, &b, &e, opts(limit, false)).await;
        let n = if limit == 0 { 10 } else { limit.min(10) };
        assert_eq!(
            got,
            RangeResult {
                kvs: pairs[..n].to_vec(),
                more
            },
            "limit {limit} over 10 pairs"
        );
    }
    let got = range(&txn, &s.k(b"r/7"), &e, opts(3, false)).await;
    assert_eq!(
        got,
        RangeResult {
            kvs: pairs[7..].to_vec(),
            more: false
        },
        "limit equal to the pairs left in a sub-range"
    );
    let got = range(&txn, &s.k(b"r/7"), &e, opts(2, false)).await;
    assert_eq!(
        got,
        RangeResult {
            kvs: pairs[7..9].to_vec(),
            more: true
        }
    );
}

/// Reverse reads with and without a limit.
pub async fn check_range_reverse(f: &dyn Factory) {
    // Catches: reverse reads that return ascending order, or whose limit
    // keeps the smallest keys instead of the largest.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let pairs = seed_ten(&db, &s).await;
    let mut descending = pairs.clone();
    descending.reverse();
    let txn = begin(&db).await;
    let (b, e) = (s.k(b"r/"), s.k(b"r0"));

    let got = range(&txn, &b, &e, opts(0, true)).await;
    assert_eq!(
        got,
        RangeResult {
            kvs: descending.clone(),
            more: false
        },
        "reverse, no limit"
    );
    for (limit, more) in [(1, true), (3, true), (9, true), (10, false), (11, false)] {
        let got = range(&txn, &b, &e, opts(limit, true)).await;
        let n = limit.min(10);
        assert_eq!(
            got,
            RangeResult {
                kvs: descending[..n].to_vec(),
                more
            },
            "reverse, limit {limit}: the largest keys first"
        );
    }
    let got = range(&txn, &s.k(b"r/2"), &s.k(b"r/5"), opts(2, true)).await;
    assert_eq!(
        got,
        RangeResult {
            kvs: vec![pairs[4].clone(), pairs[3].clone()],
            more: true
        },
        "reverse with an exclusive end"
    );
}

/// Empty and inverted ranges.
pub async fn check_range_empty_and_inverted(f: &dyn Factory) {
    // Catches: begin == end returning the key at begin, and inverted ranges
    // accepted silently (by reads or by clear_range).
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    seed_ten(&db, &s).await;
    let txn = begin(&db).await;
    for reverse in [false, true] {
        let got = range(&txn, &s.k(b"r/3"), &s.k(b"r/3"), opts(0, reverse)).await;
        assert_eq!(
            got,
            RangeResult::default(),
            "begin == end at a key, reverse {reverse}"
        );
        let got = range(&txn, &s.k(b"t"), &s.k(b"u"), opts(1, reverse)).await;
        assert_eq!(
            got,
            RangeResult::default(),
            "range with no keys, reverse {reverse}"
        );
        let err = txn
            .get_range(&s.k(b"r/5"), &s.k(b"r/3"), opts(0, reverse))
            .await
            .expect_err("begin > end must fail");
        assert!(
            matches!(err, KvError::InvalidArgument(_)),
            "begin > end: {err:?}"
        );
    }
    drop(txn);

    let txn = begin(&db).await;
    txn.set(&s.k(b"marker"), b"m");
    txn.clear_range(&s.k(b"r/5"), &s.k(b"r/3"));
    let err = txn
        .commit()
        .await
        .expect_err("inverted clear_range must fail the commit");
    assert!(
        matches!(err, KvError::InvalidArgument(_)),
        "inverted clear_range: {err:?}"
    );
    assert_eq!(fetch(&db, &s.k(b"marker")).await, None, "nothing applied");
    assert_eq!(contents(&db, &s).await.len(), 12, "nothing cleared");
}

/// Random writes and range reads inside transactions, compared with a
/// `BTreeMap` model.
pub async fn check_range_read_your_writes_model(f: &dyn Factory) {
    // Catches: range reads that mis-merge the transaction's own sets, clears,
    // clear_ranges and adds with stored pairs, especially with limits and in
    // reverse (pages refilled after own clears, `more` miscounted).
    range_model_rounds(f, SEED, 10).await;
}

/// `rounds` transactions of random writes and checked reads, seeded by
/// `seed`; even rounds commit, odd ones are dropped.
pub async fn range_model_rounds(f: &dyn Factory, seed: u64, rounds: usize) {
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut keys: Vec<Vec<u8>> = vec![s.k(b"")];
    for a in [0x00u8, b'a', b'b', 0xff] {
        for b in [None, Some(0x00u8), Some(b'a'), Some(0xff)] {
            let mut suffix = vec![a];
            suffix.extend(b);
            keys.push(s.k(&suffix));
        }
    }
    let mut bounds = keys.clone();
    bounds.push(s.end());
    bounds.push(s.k(b"a\x80"));
    let value = |rng: &mut ChaCha8Rng| -> Vec<u8> {
        let len = rng.gen_range(0..12);
        (0..len).map(|_| rng.gen()).collect()
    };
    let pick_range = |rng: &mut ChaCha8Rng| -> (Vec<u8>, Vec<u8>) {
        let a = bounds.choose(rng).expect("bounds").clone();
        let b = bounds.choose(rng).expect("bounds").clone();
        if a <= b {
            (a, b)
        } else {
            (b, a)
        }
    };

    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let txn = begin(&db).await;
    for key in &keys {
        if rng.gen_bool(0.5) {
            let v = value(&mut rng);
            txn.set(key, &v);
            model.insert(key.clone(), v);
        }
    }
    txn.commit().await.expect("seed commit");

    for round in 0..rounds {
        let txn = begin(&db).await;
        let mut local = model.clone();
        for step in 0..16 {
            let key = keys.choose(&mut rng).expect("keys").clone();
            let op = match rng.gen_range(0..6) {
                0 | 1 => {
                    let v = value(&mut rng);
                    txn.set(&key, &v);
                    local.insert(key.clone(), v);
                    format!("set {key:?}")
                }
                2 => {
                    txn.clear(&key);
                    local.remove(&key);
                    format!("clear {key:?}")
                }
                3 => {
                    let (b, e) = pick_range(&mut rng);
                    txn.clear_range(&b, &e);
                    local.retain(|k, _| *k < b || *k >= e);
                    format!("clear_range {b:?}..{e:?}")
                }
                _ => {
                    let delta = *[1i64, -1, 300, i64::MAX, i64::MIN]
                        .choose(&mut rng)
                        .expect("deltas");
                    txn.atomic_add(&key, delta);
                    let sum = model_add(local.get(&key).map(Vec::as_slice), delta);
                    local.insert(key.clone(), sum);
                    format!("add {key:?} {delta}")
                }
            };
            let probe = keys.choose(&mut rng).expect("keys");
            assert_eq!(
                txn.get(probe).await.expect("get"),
                local.get(probe).cloned(),
                "round {round} step {step} after {op}: get {probe:?}"
            );
            for _ in 0..3 {
                let (b, e) = pick_range(&mut rng);
                let limit = rng.gen_range(0..6);
                let reverse = rng.gen_bool(0.5);
                let got = range(&txn, &b, &e, opts(limit, reverse)).await;
                let want = model_range(&local, &b, &e, limit, reverse);
                assert_eq!(
                    got, want,
                    "round {round} step {step} after {op}: get_range {b:?}..{e:?} limit {limit} reverse {reverse}"
                );
            }
        }
        if round % 2 == 0 {
            txn.commit().await.expect("commit");
            model = local;
        } else {
            drop(txn);
        }
        let want: Vec<KeyValue> = model.clone().into_iter().collect();
        assert_eq!(
            contents(&db, &s).await,
            want,
            "committed state after round {round}"
        );
    }
}

// ---------------------------------------------------------------------------
// Conflicts
// ---------------------------------------------------------------------------

/// Two read-modify-writes of one key: the second to commit fails.
pub async fn check_conflict_read_modify_write(f: &dyn Factory) {
    // Catches: lost updates (no read conflict checking, or checking only
    // commits after the read call instead of after the read version).
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let key = s.k(b"counter");
    put(&db, &key, &le(0)).await;

    let t1 = begin(&db).await;
    let t2 = begin(&db).await;
    let v1 = t1.get(&key).await.unwrap().expect("seeded");
    let v2 = t2.get(&key).await.unwrap().expect("seeded");
    t1.set(&key, &model_add(Some(&v1), 1));
    t2.set(&key, &model_add(Some(&v2), 1));
    t1.commit().await.expect("first commit");
    assert_eq!(
        t2.commit().await,
        Err(KvError::NotCommitted),
        "second read-modify-write"
    );
    assert_eq!(fetch(&db, &key).await, Some(le(1)), "exactly one increment");

    // The conflicting write lands between begin and the read.
    let t3 = begin(&db).await;
    put(&db, &key, &le(10)).await;
    let v3 = t3.get(&key).await.unwrap();
    assert_eq!(v3, Some(le(1)), "the read sees the read version");
    t3.set(&key, &le(2));
    assert_eq!(
        t3.commit().await,
        Err(KvError::NotCommitted),
        "write before the read call"
    );
    assert_eq!(fetch(&db, &key).await, Some(le(10)));
}

/// A key inserted into a range another transaction read.
pub async fn check_conflict_phantom_insert(f: &dyn Factory) {
    // Catches: conflict checking on the keys a range returned rather than on
    // the range itself (phantoms).
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    commit_with(&db, |t| {
        t.set(&s.k(b"r/a"), b"A");
        t.set(&s.k(b"r/c"), b"C");
    })
    .await;
    let cases: [(bool, &[u8]); 3] = [(false, b"r/b"), (true, b"r/d"), (false, b"r/")];
    for (reverse, insert) in cases {
        let t1 = begin(&db).await;
        let got = range(&t1, &s.k(b"r/"), &s.k(b"r0"), opts(0, reverse)).await;
        assert_eq!(got.kvs.len(), 2);
        put(&db, &s.k(insert), b"phantom").await;
        assert_eq!(
            finish(&t1, &s).await,
            Err(KvError::NotCommitted),
            "phantom insert of {insert:?} (reverse read {reverse})"
        );
        commit_with(&db, |t| t.clear(&s.k(insert))).await;
    }
    // An empty range read conflicts with an insert too.
    let t1 = begin(&db).await;
    assert!(range(&t1, &s.k(b"e/"), &s.k(b"e0"), opts(0, false))
        .await
        .kvs
        .is_empty());
    put(&db, &s.k(b"e/x"), b"phantom").await;
    assert_eq!(
        finish(&t1, &s).await,
        Err(KvError::NotCommitted),
        "insert into an empty read range"
    );
    assert_eq!(
        fetch(&db, &s.k(b"zz/out")).await,
        None,
        "nothing of the failed commits applied"
    );
}

/// A key deleted from a range another transaction read.
pub async fn check_conflict_deletion_in_range(f: &dyn Factory) {
    // Catches: deletions (clear, clear_range) not recorded as writes for
    // conflict checking.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let seed = |db: Database, s: Space| async move {
        commit_with(&db, |t| {
            for x in [&b"r/a"[..], b"r/b", b"r/c"] {
                t.set(&s.k(x), b"v");
            }
        })
        .await;
    };
    seed(db.clone(), s.clone()).await;
    let t1 = begin(&db).await;
    range(&t1, &s.k(b"r/"), &s.k(b"r0"), opts(0, false)).await;
    commit_with(&db, |t| t.clear(&s.k(b"r/b"))).await;
    assert_eq!(
        finish(&t1, &s).await,
        Err(KvError::NotCommitted),
        "clear inside a read range"
    );

    seed(db.clone(), s.clone()).await;
    let t1 = begin(&db).await;
    range(&t1, &s.k(b"r/"), &s.k(b"r0"), opts(0, true)).await;
    commit_with(&db, |t| t.clear_range(&s.k(b"r/c"), &s.k(b"r/z"))).await;
    assert_eq!(
        finish(&t1, &s).await,
        Err(KvError::NotCommitted),
        "clear_range inside a read range"
    );

    seed(db.clone(), s.clone()).await;
    let t1 = begin(&db).await;
    assert!(t1.get(&s.k(b"r/a")).await.unwrap().is_some());
    commit_with(&db, |t| t.clear_range(&s.k(b"r/"), &s.k(b"r/b"))).await;
    assert_eq!(
        finish(&t1, &s).await,
        Err(KvError::NotCommitted),
        "clear_range over a read key"
    );
}

/// Writes next to, but outside, what was read do not conflict.
pub async fn check_conflict_write_outside_range(f: &dyn Factory) {
    // Catches: over-wide conflict ranges (inclusive ends, whole-database
    // conflicts), which make unrelated transactions fail.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    commit_with(&db, |t| {
        for x in [&b"r/a"[..], b"r/b", b"r/c", b"k"] {
            t.set(&s.k(x), b"v");
        }
    })
    .await;
    let t1 = begin(&db).await;
    range(&t1, &s.k(b"r/a"), &s.k(b"r/c"), opts(0, false)).await;
    t1.get(&s.k(b"k")).await.unwrap();
    t1.get(&s.k(b"missing")).await.unwrap();
    commit_with(&db, |t| {
        t.set(&s.k(b"r/c"), b"at the exclusive end");
        t.set(&s.k(b"r/"), b"before the begin");
        t.set(&s.k(b"k\x00"), b"right after a read key");
        t.set(&s.k(b"j"), b"right before a read key");
        t.set(&s.k(b"missing\x00"), b"right after a read missing key");
        t.clear_range(&s.k(b"r/c"), &s.k(b"r/z"));
    })
    .await;
    assert!(
        finish(&t1, &s).await.is_ok(),
        "writes outside the read set must not conflict"
    );
    assert_eq!(fetch(&db, &s.k(b"zz/out")).await, Some(b"out".to_vec()));
}

/// A limited range read only read up to its last returned key.
pub async fn check_conflict_limited_range(f: &dyn Factory) {
    // Catches: a limited read whose conflict range is the whole requested
    // range (false conflicts) or stops before its last key (lost conflicts).
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    commit_with(&db, |t| {
        for x in [&b"r/a"[..], b"r/b", b"r/c", b"r/d", b"r/e"] {
            t.set(&s.k(x), b"v");
        }
    })
    .await;
    let (b, e) = (s.k(b"r/"), s.k(b"r0"));
    // (reverse, key written by the other transaction, must conflict)
    let cases: [(bool, &[u8], bool); 8] = [
        (false, b"r/c", false),
        (false, b"r/b\x00", false),
        (false, b"r/zz", false),
        (false, b"r/b", true),
        (false, b"r/a\x00", true),
        (true, b"r/c", false),
        (true, b"r/d", true),
        (true, b"r/d\x00", true),
    ];
    for (reverse, write, conflicts) in cases {
        let t1 = begin(&db).await;
        let got = range(&t1, &b, &e, opts(2, reverse)).await;
        assert!(got.more, "limit 2 of 5");
        let want: Vec<&[u8]> = if reverse {
            vec![&b"r/e"[..], b"r/d"]
        } else {
            vec![&b"r/a"[..], b"r/b"]
        };
        assert_eq!(
            got.kvs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            want.iter().map(|x| s.k(x)).collect::<Vec<_>>()
        );
        put(&db, &s.k(write), b"w").await;
        let result = finish(&t1, &s).await;
        if conflicts {
            assert_eq!(
                result,
                Err(KvError::NotCommitted),
                "reverse {reverse}: write {write:?} must conflict"
            );
        } else {
            assert!(
                result.is_ok(),
                "reverse {reverse}: write {write:?} beyond the last returned key: {result:?}"
            );
        }
        commit_with(&db, |t| t.set(&s.k(write), b"v")).await;
        if ![&b"r/a"[..], b"r/b", b"r/c", b"r/d", b"r/e"].contains(&write) {
            commit_with(&db, |t| t.clear(&s.k(write))).await;
        }
    }
}

/// Snapshot reads add no read conflicts.
pub async fn check_conflict_snapshot_reads(f: &dyn Factory) {
    // Catches: snapshot reads that record conflicts (false aborts), and
    // snapshot reads that do not read at the read version.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    commit_with(&db, |t| {
        t.set(&s.k(b"k"), b"old");
        t.set(&s.k(b"r/a"), b"A");
    })
    .await;
    let t1 = begin(&db).await;
    assert_eq!(
        t1.get_snapshot(&s.k(b"k")).await.unwrap(),
        Some(b"old".to_vec())
    );
    assert_eq!(t1.get_snapshot(&s.k(b"missing")).await.unwrap(), None);
    let snap = RangeOptions {
        limit: 0,
        reverse: false,
        snapshot: true,
    };
    let got = range(&t1, &s.k(b"r/"), &s.k(b"r0"), snap).await;
    assert_eq!(got.kvs, vec![kv(&s.k(b"r/a"), b"A")]);
    commit_with(&db, |t| {
        t.set(&s.k(b"k"), b"new");
        t.set(&s.k(b"missing"), b"now here");
        t.set(&s.k(b"r/b"), b"phantom");
        t.clear(&s.k(b"r/a"));
    })
    .await;
    assert_eq!(
        t1.get_snapshot(&s.k(b"k")).await.unwrap(),
        Some(b"old".to_vec()),
        "snapshot read after another commit still sees the read version"
    );
    assert!(
        finish(&t1, &s).await.is_ok(),
        "snapshot reads must not conflict"
    );
}

/// Explicit read and write conflict ranges.
pub async fn check_conflict_explicit_ranges(f: &dyn Factory) {
    // Catches: explicit conflict ranges ignored by the backend, or write
    // conflict ranges that write data.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);

    let t1 = begin(&db).await;
    t1.add_read_conflict_range(&s.k(b"c/a"), &s.k(b"c/z"));
    put(&db, &s.k(b"c/m"), b"w").await;
    assert_eq!(
        finish(&t1, &s).await,
        Err(KvError::NotCommitted),
        "explicit read conflict range"
    );

    let t1 = begin(&db).await;
    t1.add_read_conflict_range(&s.k(b"c/a"), &s.k(b"c/b"));
    put(&db, &s.k(b"c/b"), b"w").await;
    assert!(
        finish(&t1, &s).await.is_ok(),
        "write at the explicit range's exclusive end"
    );

    let t1 = begin(&db).await;
    assert_eq!(t1.get(&s.k(b"c/q")).await.unwrap(), None);
    let t2 = begin(&db).await;
    t2.add_write_conflict_range(&s.k(b"c/p"), &s.k(b"c/r"));
    t2.commit()
        .await
        .expect("commit of a write conflict range alone");
    assert_eq!(
        finish(&t1, &s).await,
        Err(KvError::NotCommitted),
        "another transaction's explicit write conflict range"
    );
    assert_eq!(
        fetch(&db, &s.k(b"c/q")).await,
        None,
        "a write conflict range writes nothing"
    );

    let t1 = begin(&db).await;
    t1.get(&s.k(b"c/x")).await.unwrap();
    let t2 = begin(&db).await;
    t2.add_write_conflict_range(&s.k(b"c/p"), &s.k(b"c/x"));
    t2.commit().await.expect("commit");
    assert!(
        finish(&t1, &s).await.is_ok(),
        "write conflict range ending at the read key"
    );
}

/// Transactions that write without reading never conflict.
pub async fn check_conflict_blind_writes(f: &dyn Factory) {
    // Catches: write-write conflicts (FoundationDB only checks reads), and
    // the wrong commit winning.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let key = s.k(b"k");
    put(&db, &key, b"0").await;

    let t1 = begin(&db).await;
    let t2 = begin(&db).await;
    t1.set(&key, b"1");
    t2.set(&key, b"2");
    t1.commit().await.expect("first blind write");
    t2.commit().await.expect("second blind write");
    assert_eq!(
        fetch(&db, &key).await,
        Some(b"2".to_vec()),
        "the later commit wins"
    );

    let t1 = begin(&db).await;
    let t2 = begin(&db).await;
    let t3 = begin(&db).await;
    t1.clear(&key);
    t2.clear_range(&s.prefix, &s.end());
    t3.atomic_add(&key, 1);
    t3.commit().await.expect("blind add");
    t2.commit().await.expect("blind clear_range");
    t1.commit().await.expect("blind clear");
    t1.commit()
        .await
        .expect_err("second commit of one transaction");
    assert_eq!(contents(&db, &s).await, vec![]);
}

/// Transactions that only read always commit.
pub async fn check_conflict_read_only_commits(f: &dyn Factory) {
    // Catches: read-only commits failing on conflicts (they serialize at
    // their read version), or read-only commits that write.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    put(&db, &s.k(b"k"), b"old").await;
    let t1 = begin(&db).await;
    t1.get(&s.k(b"k")).await.unwrap();
    range(&t1, &s.prefix, &s.end(), opts(0, false)).await;
    t1.add_read_conflict_range(&s.prefix, &s.end());
    commit_with(&db, |t| {
        t.set(&s.k(b"k"), b"new");
        t.set(&s.k(b"k2"), b"v");
    })
    .await;
    let version = t1.commit().await.expect("read-only commit");
    assert_eq!(
        version,
        t1.read_version(),
        "a read-only commit returns its read version"
    );
    assert_eq!(
        contents(&db, &s).await,
        vec![kv(&s.k(b"k"), b"new"), kv(&s.k(b"k2"), b"v")]
    );
}

// ---------------------------------------------------------------------------
// Atomic add
// ---------------------------------------------------------------------------

/// 8 tasks × 50 adds through the runner.
pub async fn check_atomic_add_concurrent(f: &dyn Factory) {
    // Catches: lost updates (add done as read-then-write outside the commit's
    // atomic step) and adds that conflict with each other.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let key = s.k(b"counter");
    let attempts = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (db, key, attempts) = (db.clone(), key.clone(), attempts.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    db.run(|txn, _maybe_committed| {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let key = key.clone();
                        async move {
                            txn.atomic_add(&key, 1);
                            Ok::<_, KvError>(())
                        }
                    })
                    .await
                    .expect("atomic add");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("adding task panicked");
    }
    assert_eq!(fetch(&db, &key).await, Some(le(400)), "exact total");
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        400,
        "adds must never need a retry"
    );
}

/// An add test: name, stored value (if any), delta.
type AddCase<'a> = (&'a [u8], Option<&'a [u8]>, i64);

/// ADD on values shorter and longer than 8 bytes, and wrapping.
pub async fn check_atomic_add_widths(f: &dyn Factory) {
    // Catches: adds that refuse or mis-read short/long/empty values, that do
    // not wrap, or that differ between the backend's commit path and the
    // transaction's read-your-writes path.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let (max, min) = (i64::MAX.to_le_bytes(), i64::MIN.to_le_bytes());
    // (name, stored value, delta)
    let cases: [AddCase; 7] = [
        (b"short", Some(&[1, 2, 3]), 1),
        (b"long", Some(&[0xff; 10]), 1),
        (b"long2", Some(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9]), 2),
        (b"max", Some(&max), 1),
        (b"min", Some(&min), -1),
        (b"empty", Some(b""), 5),
        (b"absent", None, -3),
    ];
    let expect = |existing: Option<&[u8]>, delta: i64| model_add(existing, delta);
    assert_eq!(expect(Some(&[1, 2, 3]), 1), vec![2, 2, 3, 0, 0, 0, 0, 0]);
    assert_eq!(expect(Some(&[0xff; 10]), 1), vec![0; 8]);
    assert_eq!(expect(Some(&i64::MAX.to_le_bytes()), 1), le(i64::MIN));

    // Stored values, then a blind add applied by the backend at commit.
    commit_with(&db, |t| {
        for (name, existing, _) in &cases {
            if let Some(v) = existing {
                t.set(&s.k([&b"commit/"[..], *name].concat()), v);
                t.set(&s.k([&b"read/"[..], *name].concat()), v);
            }
        }
    })
    .await;
    commit_with(&db, |t| {
        for (name, _, delta) in &cases {
            t.atomic_add(&s.k([&b"commit/"[..], *name].concat()), *delta);
        }
    })
    .await;
    // Stored values, add, read back in the same transaction.
    let txn = begin(&db).await;
    for (name, existing, delta) in &cases {
        let key = s.k([&b"read/"[..], *name].concat());
        txn.atomic_add(&key, *delta);
        assert_eq!(
            txn.get(&key).await.unwrap(),
            Some(expect(*existing, *delta)),
            "read-your-writes of add on stored {name:?}"
        );
    }
    // Values set in the same transaction, then added to.
    for (name, existing, delta) in &cases {
        let key = s.k([&b"same/"[..], *name].concat());
        if let Some(v) = existing {
            txn.set(&key, v);
        }
        txn.atomic_add(&key, *delta);
        assert_eq!(
            txn.get(&key).await.unwrap(),
            Some(expect(*existing, *delta)),
            "add on a value set in the same transaction {name:?}"
        );
    }
    txn.commit().await.expect("commit");
    for (name, existing, delta) in &cases {
        for path in [&b"commit/"[..], b"read/", b"same/"] {
            assert_eq!(
                fetch(&db, &s.k([path, *name].concat())).await,
                Some(expect(*existing, *delta)),
                "committed add, path {path:?}, value {name:?}"
            );
        }
    }
    // Adds accumulate within a transaction and across transactions.
    commit_with(&db, |t| {
        t.atomic_add(&s.k(b"acc"), 40);
        t.atomic_add(&s.k(b"acc"), 2);
    })
    .await;
    commit_with(&db, |t| t.atomic_add(&s.k(b"acc"), -50)).await;
    assert_eq!(fetch(&db, &s.k(b"acc")).await, Some(le(-8)));
}

// ---------------------------------------------------------------------------
// Watches
// ---------------------------------------------------------------------------

/// A watch fires after another transaction changes the key.
pub async fn check_watch_fires_on_change(f: &dyn Factory) {
    // Catches: watches never armed, not fired by other transactions' commits,
    // or armed against the current value instead of the one the watching
    // transaction saw.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let key = s.k(b"w");
    put(&db, &key, b"1").await;
    let mut w = pending(watch(&db, &key).await);
    put(&db, &key, b"2").await;
    resolved(&mut w, "after a change").await.expect("fired");

    let mut w = pending(watch(&db, &key).await);
    commit_with(&db, |t| t.clear(&key)).await;
    resolved(&mut w, "after a clear").await.expect("fired");

    let mut w = pending(watch(&db, &key).await);
    put(&db, &key, b"").await;
    resolved(&mut w, "a missing key set to an empty value")
        .await
        .expect("fired");

    // Changed between the watching transaction's read version and its commit.
    let txn = begin(&db).await;
    let w = txn.watch(&key);
    put(&db, &key, b"3").await;
    txn.commit()
        .await
        .expect("commit of the watching transaction");
    resolved(&mut pending(w), "changed before the watch was armed")
        .await
        .expect("fired");

    // A watch on a key the transaction itself wrote expects that value.
    let txn = begin(&db).await;
    txn.set(&key, b"mine");
    let mut w = pending(txn.watch(&key));
    txn.commit().await.expect("commit");
    quiet(&mut w, "own write of the watched key is the expected value").await;
    put(&db, &key, b"theirs").await;
    resolved(&mut w, "after another change")
        .await
        .expect("fired");
}

/// Each change fires the watches set before it; re-watching sees the next.
pub async fn check_watch_once_per_change(f: &dyn Factory) {
    // Catches: watches that fire again for an old change, or that stay
    // unarmed after the first one fired.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let key = s.k(b"w");
    put(&db, &key, b"0").await;
    for i in 1..=3u8 {
        let mut w = pending(watch(&db, &key).await);
        quiet(&mut w, &format!("before change {i}")).await;
        put(&db, &key, &[i]).await;
        resolved(&mut w, &format!("change {i}"))
            .await
            .expect("fired");
    }
    // Two watches of one key both fire on one change.
    let mut a = pending(watch(&db, &key).await);
    let mut b = pending(watch(&db, &key).await);
    put(&db, &key, b"both").await;
    resolved(&mut a, "first of two watches")
        .await
        .expect("fired");
    resolved(&mut b, "second of two watches")
        .await
        .expect("fired");
}

/// Unrelated writes and same-value writes do not fire a watch.
pub async fn check_watch_ignores_unrelated_and_same_value(f: &dyn Factory) {
    // Catches: watches fired by any commit, by a neighbouring key, or by a
    // write that leaves the value unchanged.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let key = s.k(b"w");
    put(&db, &key, b"same").await;
    let mut w = pending(watch(&db, &key).await);
    put(&db, &s.k(b"w\x00"), b"neighbour").await;
    put(&db, &s.k(b"v"), b"other").await;
    put(&db, &key, b"same").await;
    commit_with(&db, |t| t.clear(&s.k(b"missing"))).await;
    quiet(&mut w, "unrelated and same-value writes").await;
    put(&db, &key, b"different").await;
    resolved(&mut w, "a real change").await.expect("fired");

    let missing = s.k(b"absent");
    let mut w = pending(watch(&db, &missing).await);
    commit_with(&db, |t| t.clear(&missing)).await;
    commit_with(&db, |t| t.clear_range(&s.k(b"a"), &s.k(b"b"))).await;
    quiet(&mut w, "clearing a missing key").await;
    put(&db, &missing, b"now").await;
    resolved(&mut w, "a missing key appeared")
        .await
        .expect("fired");
}

/// A watch whose transaction fails to commit resolves with an error.
pub async fn check_watch_failed_commit_errors(f: &dyn Factory) {
    // Catches: watches of failed transactions that hang forever or fire as
    // if they had been armed.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let key = s.k(b"w");
    put(&db, &key, b"0").await;

    let txn = begin(&db).await;
    txn.get(&key).await.unwrap();
    let mut w = pending(txn.watch(&key));
    put(&db, &key, b"1").await;
    assert_eq!(finish(&txn, &s).await, Err(KvError::NotCommitted));
    let result = resolved(&mut w, "watch of a conflicted transaction").await;
    assert!(
        result.is_err(),
        "watch of a conflicted transaction: {result:?}"
    );

    // Failed on a limit; the transaction handle is still alive.
    let txn = begin(&db).await;
    let mut w = pending(txn.watch(&key));
    txn.set(&key, &vec![0; 100_001]);
    assert!(matches!(
        txn.commit().await,
        Err(KvError::ValueTooLarge { .. })
    ));
    let result = resolved(&mut w, "watch of a transaction failed on a limit").await;
    assert!(
        result.is_err(),
        "watch of a transaction failed on a limit: {result:?}"
    );
    drop(txn);

    // Never committed.
    let txn = begin(&db).await;
    let mut w = pending(txn.watch(&key));
    drop(txn);
    let result = resolved(&mut w, "watch of a dropped transaction").await;
    assert!(
        result.is_err(),
        "watch of a dropped transaction: {result:?}"
    );
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// `s.k(..)` padded to exactly `len` bytes.
fn key_of_len(s: &Space, tag: u8, len: usize) -> Vec<u8> {
    let mut key = s.k([tag]);
    assert!(key.len() <= len, "prefix too long for the key limit test");
    key.resize(len, b'k');
    key
}

/// Keys of 10,000 bytes pass, 10,001 fail at commit with nothing applied.
pub async fn check_limits_key_size(f: &dyn Factory) {
    // Catches: a key limit that is off by one, not enforced by a backend, or
    // enforced by applying part of the transaction.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let ok = key_of_len(&s, b'a', 10_000);
    put(&db, &ok, b"v").await;
    assert_eq!(
        fetch(&db, &ok).await,
        Some(b"v".to_vec()),
        "10,000-byte key"
    );

    let big = key_of_len(&s, b'b', 10_001);
    for what in ["set", "clear", "add"] {
        let txn = begin(&db).await;
        txn.set(&s.k(b"marker"), b"m");
        match what {
            "set" => txn.set(&big, b"v"),
            "clear" => txn.clear(&big),
            _ => txn.atomic_add(&big, 1),
        }
        txn.set(&s.k(b"marker2"), b"m");
        assert_eq!(
            txn.commit().await,
            Err(KvError::KeyTooLarge { bytes: 10_001 }),
            "{what} of a 10,001-byte key"
        );
    }
    let txn = begin(&db).await;
    assert_eq!(
        txn.get(&big).await,
        Err(KvError::KeyTooLarge { bytes: 10_001 }),
        "get of a 10,001-byte key"
    );
    assert_eq!(
        contents(&db, &s).await,
        vec![(ok, b"v".to_vec())],
        "nothing of the failed transactions applied"
    );
}

/// Values of 100,000 bytes pass, 100,001 fail at commit with nothing applied.
pub async fn check_limits_value_size(f: &dyn Factory) {
    // Catches: a value limit that is off by one or not enforced.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let value: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    put(&db, &s.k(b"ok"), &value).await;
    assert_eq!(
        fetch(&db, &s.k(b"ok")).await.as_deref(),
        Some(&value[..]),
        "100,000-byte value"
    );

    let txn = begin(&db).await;
    txn.set(&s.k(b"marker"), b"m");
    txn.set(&s.k(b"big"), &vec![7; 100_001]);
    assert_eq!(
        txn.commit().await,
        Err(KvError::ValueTooLarge { bytes: 100_001 })
    );
    assert_eq!(
        contents(&db, &s).await.len(),
        1,
        "nothing of the failed transaction applied"
    );
}

/// More than 10,000,000 bytes in one transaction fails at commit.
pub async fn check_limits_transaction_size(f: &dyn Factory) {
    // Catches: no transaction size limit, or one checked per mutation only.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let value = vec![3u8; 99_990];
    let txn = begin(&db).await;
    let mut bytes = 0;
    let mut i = 0u32;
    while bytes <= 10_000_000 {
        let key = s.k(format!("big/{i:05}"));
        bytes += key.len() + value.len();
        txn.set(&key, &value);
        i += 1;
    }
    let result = txn.commit().await;
    assert!(
        matches!(result, Err(KvError::TransactionTooLarge { .. })),
        "{i} values, {bytes} bytes: {result:?}"
    );
    assert_eq!(contents(&db, &s).await, vec![], "nothing applied");
}

/// Conflict ranges count toward the 10,000,000 bytes, as FoundationDB
/// counts them: writes whose keys and values fit but whose write conflict
/// ranges (begin and end key each) pass the limit fail, and so do reads of
/// keys whose read conflict ranges pass it.
pub async fn check_limits_count_conflict_ranges(f: &dyn Factory) {
    // Catches: a size that counts mutations only, which accepts here what
    // a FoundationDB cluster refuses.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let long = |i: u32| s.k(format!("{i:05}/{}", "k".repeat(4_990)));
    let txn = begin(&db).await;
    for i in 0..700 {
        txn.set(&long(i), b"v"); // ~3.5 MB of mutations, ~7 MB of ranges
    }
    let result = txn.commit().await;
    assert!(
        matches!(result, Err(KvError::TransactionTooLarge { .. })),
        "write conflict ranges: {result:?}"
    );
    let txn = begin(&db).await;
    for i in 0..1_100 {
        assert_eq!(txn.get(&long(i)).await, Ok(None)); // ~11 MB of ranges
    }
    txn.set(&s.k(b"small"), b"v");
    let result = txn.commit().await;
    assert!(
        matches!(result, Err(KvError::TransactionTooLarge { .. })),
        "read conflict ranges: {result:?}"
    );
    assert_eq!(contents(&db, &s).await, vec![], "nothing applied");
}

// ---------------------------------------------------------------------------
// Too old
// ---------------------------------------------------------------------------

/// Transactions older than five seconds fail, younger ones do not.
pub async fn check_too_old(f: &dyn Factory) {
    // Catches: no age limit (readers pinning history forever), an age limit
    // measured from the wrong time, or too-old commits partly applied.
    let clock = ManualClock::new();
    let db = f.open(clock.clone()).await;
    let s = Space::of(f);
    put(&db, &s.k(b"k"), b"v").await;

    let txn = begin(&db).await;
    clock.advance(Duration::from_millis(4_900));
    assert_eq!(
        txn.get(&s.k(b"k")).await,
        Ok(Some(b"v".to_vec())),
        "get at 4.9 s"
    );
    range(&txn, &s.prefix, &s.end(), opts(0, false)).await;
    txn.set(&s.k(b"young"), b"y");
    txn.commit().await.expect("commit at 4.9 s");

    let txn = begin(&db).await;
    txn.set(&s.k(b"old"), b"o");
    clock.advance(Duration::from_millis(5_100));
    assert_eq!(
        txn.get(&s.k(b"k")).await,
        Err(KvError::TransactionTooOld),
        "get at 5.1 s"
    );
    assert_eq!(
        txn.get_range(&s.prefix, &s.end(), opts(0, false)).await,
        Err(KvError::TransactionTooOld),
        "get_range at 5.1 s"
    );
    assert_eq!(
        txn.commit().await,
        Err(KvError::TransactionTooOld),
        "commit at 5.1 s"
    );

    let txn = begin(&db).await;
    txn.set(&s.k(b"old2"), b"o");
    clock.advance(Duration::from_millis(5_100));
    assert_eq!(
        txn.commit().await,
        Err(KvError::TransactionTooOld),
        "blind commit at 5.1 s"
    );

    assert_eq!(
        contents(&db, &s).await,
        vec![kv(&s.k(b"k"), b"v"), kv(&s.k(b"young"), b"y")],
        "too-old transactions applied nothing"
    );
}

// ---------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------

/// A body that conflicts once is retried and then succeeds.
pub async fn check_runner_retries_conflicts(f: &dyn Factory) {
    // Catches: a runner that surfaces NotCommitted, or that reuses the failed
    // transaction (and its stale read version) for the retry.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let key = s.k(b"k");
    put(&db, &key, b"start").await;
    let attempts = AtomicU32::new(0);
    let seen = db
        .run(|txn, _maybe_committed| {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let (db, key) = (db.clone(), key.clone());
            async move {
                let seen = txn.get(&key).await?;
                if attempt == 1 {
                    put(&db, &key, b"interloper").await;
                }
                txn.set(&key, b"mine");
                Ok::<_, KvError>(seen)
            }
        })
        .await
        .expect("run");
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        2,
        "one retry after one conflict"
    );
    assert_eq!(
        seen,
        Some(b"interloper".to_vec()),
        "the retry reads the new state"
    );
    assert_eq!(fetch(&db, &key).await, Some(b"mine".to_vec()));
}

/// A non-retryable error comes back after one attempt.
pub async fn check_runner_non_retryable(f: &dyn Factory) {
    // Catches: a runner that retries errors retrying cannot fix.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let attempts = AtomicU32::new(0);
    let result = db
        .run(|txn, _| {
            attempts.fetch_add(1, Ordering::Relaxed);
            let key = s.k(b"k");
            async move {
                txn.set(&key, &vec![0; 100_001]);
                Ok::<_, KvError>(())
            }
        })
        .await;
    assert_eq!(result, Err(KvError::ValueTooLarge { bytes: 100_001 }));
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        1,
        "ValueTooLarge is not retried"
    );

    let attempts = AtomicU32::new(0);
    let result: Result<(), KvError> = db
        .run(|_txn, _| {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Err(KvError::InvalidArgument("from the body".into())) }
        })
        .await;
    assert!(matches!(result, Err(KvError::InvalidArgument(_))));
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        1,
        "a body's own error is not retried"
    );
    assert_eq!(contents(&db, &s).await, vec![]);
}

/// `maybe_committed` after a CommitUnknownResult.
pub async fn check_runner_maybe_committed(f: &dyn Factory) {
    // Catches: a runner that hides an ambiguous commit from the body (so
    // non-idempotent work is silently repeated) or flags the first attempt.
    let base = f.open(tokio_clock()).await;
    let s = Space::of(f);
    for (fault, applied) in [
        (CommitFault::UnknownApplied, true),
        (CommitFault::UnknownNotApplied, false),
    ] {
        let key = s.k(format!("{fault:?}"));
        let db = with_faults(&base, ScriptedFaults::new([fault]));
        let flags = Mutex::new(Vec::new());
        db.run(|txn, maybe_committed| {
            flags.lock().expect("flags").push(maybe_committed);
            let key = key.clone();
            async move {
                txn.atomic_add(&key, 1);
                Ok::<_, KvError>(())
            }
        })
        .await
        .expect("run after an unknown result");
        assert_eq!(
            *flags.lock().expect("flags"),
            vec![false, true],
            "{fault:?}: maybe_committed per attempt"
        );
        let want = if applied { 2 } else { 1 };
        assert_eq!(
            fetch(&base, &key).await,
            Some(le(want)),
            "{fault:?}: adds applied"
        );
    }
}

/// TimedOut is surfaced, not retried.
pub async fn check_runner_timed_out_not_retried(f: &dyn Factory) {
    // Catches: a runner that retries a timed-out commit, which may still land
    // later and so be applied twice.
    let base = f.open(tokio_clock()).await;
    let s = Space::of(f);
    let db = with_faults(
        &base,
        ScriptedFaults::new([CommitFault::TimedOutLandsLater(Duration::from_millis(1))]),
    );
    let attempts = AtomicU32::new(0);
    let result = db
        .run(|txn, _| {
            attempts.fetch_add(1, Ordering::Relaxed);
            let key = s.k(b"k");
            async move {
                txn.atomic_add(&key, 1);
                Ok::<_, KvError>(())
            }
        })
        .await;
    assert_eq!(result, Err(KvError::TimedOut));
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        1,
        "TimedOut is not retried"
    );
}

/// The attempt budget stops a body that always conflicts.
pub async fn check_runner_attempt_budget(f: &dyn Factory) {
    // Catches: a runner that loops forever (or stops early) under conflicts.
    let clock = ManualClock::new();
    let base = f.open(clock.clone()).await;
    let s = Space::of(f);
    let db = Database::with_retry(
        base.backend().clone(),
        base.clock().clone(),
        SEED,
        RetryOptions {
            attempts_max: 3,
            ..RetryOptions::default()
        },
    );
    let key = s.k(b"k");
    let attempts = AtomicU32::new(0);
    let result = db
        .run(|txn, _| {
            attempts.fetch_add(1, Ordering::Relaxed);
            let (db, key) = (db.clone(), key.clone());
            async move {
                txn.get(&key).await?;
                put(&db, &key, b"interloper").await;
                txn.set(&key, b"mine");
                Ok::<_, KvError>(())
            }
        })
        .await;
    assert_eq!(result, Err(KvError::NotCommitted));
    assert_eq!(attempts.load(Ordering::Relaxed), 3, "attempts_max 3");
    assert_eq!(fetch(&db, &key).await, Some(b"interloper".to_vec()));
}

/// `Database::read` runs a read-only body, retrying retryable errors.
pub async fn check_runner_read(f: &dyn Factory) {
    // Catches: a read runner that commits, drops results, or does not retry.
    let db = f.open(tokio_clock()).await;
    let s = Space::of(f);
    put(&db, &s.k(b"k"), b"v").await;
    let attempts = AtomicU32::new(0);
    let got = db
        .read(|txn| {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let key = s.k(b"k");
            async move {
                let value = txn.get(&key).await?;
                if attempt == 1 {
                    return Err(KvError::NotCommitted);
                }
                Ok(value)
            }
        })
        .await;
    assert_eq!(got, Ok(Some(b"v".to_vec())));
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        2,
        "a retryable error is retried"
    );

    let attempts = AtomicU32::new(0);
    let got: Result<(), KvError> = db
        .read(|_txn| {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Err(KvError::Cancelled) }
        })
        .await;
    assert_eq!(got, Err(KvError::Cancelled));
    assert_eq!(attempts.load(Ordering::Relaxed), 1);
}
