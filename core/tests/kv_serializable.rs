//! Serializability, property-tested: 2–5 transactions over six keys, their
//! steps (reads, writes, commits) interleaved at random against one
//! database, then checked against a `BTreeMap` model.
//!
//! Guards against: lost updates, phantoms and write skew slipping past
//! conflict detection (a committed transaction's non-snapshot reads must
//! equal what a serial replay in commit-version order reads); reads that
//! are not one snapshot at the read version plus the transaction's own
//! writes (checked for every read of every transaction, committed or not);
//! commits applied partly, twice or out of order (the final contents must
//! equal the serial replay); and false conflicts (a transaction may only
//! fail if a transaction committed after its read version wrote something
//! it read — and the first commit of a schedule can never fail).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hafs_core::clock::{Clock, ManualClock};
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{key_after, Database, KeyValue, KvError, RangeOptions, Transaction, Version};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Keys `s/a` … `s/f`.
const KEYS: usize = 6;
const MAX_TXNS: usize = 5;
const MAX_OPS: usize = 6;
const PREFIX: &[u8] = b"s/";
const SEED: u64 = 0x5e41_a11e;

fn key(i: usize) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.push(b'a' + u8::try_from(i).expect("few keys"));
    k
}

/// Range bound `i` in `0..=KEYS`: key `i`, or the end of the key space.
fn bound(i: usize) -> Vec<u8> {
    if i < KEYS {
        key(i)
    } else {
        b"s0".to_vec()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Get(usize),
    GetSnapshot(usize),
    GetRange {
        begin: usize,
        end: usize,
        limit: usize,
        reverse: bool,
        snapshot: bool,
    },
    /// Sets a value unique to (transaction, op).
    Set(usize),
    Clear(usize),
    ClearRange(usize, usize),
    Add(usize, i64),
}

impl Op {
    fn is_write(&self) -> bool {
        match *self {
            Op::Set(_) | Op::Clear(_) | Op::Add(..) => true,
            // An empty clear_range writes nothing.
            Op::ClearRange(b, e) => b < e,
            _ => false,
        }
    }

    fn is_snapshot(&self) -> bool {
        matches!(
            self,
            Op::GetSnapshot(_) | Op::GetRange { snapshot: true, .. }
        )
    }
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Observed {
    Value(Option<Vec<u8>>),
    Range { kvs: Vec<KeyValue>, more: bool },
}

#[derive(Clone)]
struct Case {
    initial: Vec<Option<Vec<u8>>>,
    txns: Vec<Vec<Op>>,
    schedule: Vec<Index>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Each schedule entry picks among the transactions still running.
        let schedule: Vec<usize> = self.schedule.iter().map(|ix| ix.index(1_000)).collect();
        f.debug_struct("Case")
            .field("initial", &self.initial)
            .field("txns", &self.txns)
            .field("schedule (per mille)", &schedule)
            .finish()
    }
}

fn bounds() -> impl Strategy<Value = (usize, usize)> {
    (0..=KEYS, 0..=KEYS).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..KEYS).prop_map(Op::Get),
        1 => (0..KEYS).prop_map(Op::GetSnapshot),
        3 => (bounds(), 0..4usize, any::<bool>(), prop::bool::weighted(0.2)).prop_map(
            |((begin, end), limit, reverse, snapshot)| Op::GetRange {
                begin,
                end,
                limit,
                reverse,
                snapshot,
            }
        ),
        3 => (0..KEYS).prop_map(Op::Set),
        1 => (0..KEYS).prop_map(Op::Clear),
        1 => bounds().prop_map(|(b, e)| Op::ClearRange(b, e)),
        2 => (0..KEYS, prop_oneof![Just(1i64), Just(-1), Just(i64::MAX), any::<i64>()])
            .prop_map(|(k, d)| Op::Add(k, d)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(
            prop::option::of(prop::collection::vec(any::<u8>(), 0..10)),
            KEYS,
        ),
        prop::collection::vec(prop::collection::vec(op(), 1..=MAX_OPS), 2..=MAX_TXNS),
        prop::collection::vec(any::<Index>(), MAX_TXNS * (MAX_OPS + 1)),
    )
        .prop_map(|(initial, txns, schedule)| Case {
            initial,
            txns,
            schedule,
        })
}

fn set_value(txn: usize, op: usize) -> Vec<u8> {
    vec![
        b'v',
        u8::try_from(txn).expect("few"),
        u8::try_from(op).expect("few"),
    ]
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// FoundationDB's ADD, written independently of the code under test.
fn model_add(existing: Option<&Vec<u8>>, delta: i64) -> Vec<u8> {
    let mut bytes = [0u8; 8];
    if let Some(existing) = existing {
        let n = existing.len().min(8);
        bytes[..n].copy_from_slice(&existing[..n]);
    }
    i64::from_le_bytes(bytes)
        .wrapping_add(delta)
        .to_le_bytes()
        .to_vec()
}

/// Apply op `i` of transaction `t` to `model`; what it reads, if a read.
fn model_op(model: &mut Model, op: &Op, t: usize, i: usize) -> Option<Observed> {
    match *op {
        Op::Get(k) | Op::GetSnapshot(k) => Some(Observed::Value(model.get(&key(k)).cloned())),
        Op::GetRange {
            begin,
            end,
            limit,
            reverse,
            ..
        } => {
            let mut kvs: Vec<KeyValue> = model
                .range(bound(begin)..bound(end))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if reverse {
                kvs.reverse();
            }
            let more = limit != 0 && kvs.len() > limit;
            if more {
                kvs.truncate(limit);
            }
            Some(Observed::Range { kvs, more })
        }
        Op::Set(k) => {
            model.insert(key(k), set_value(t, i));
            None
        }
        Op::Clear(k) => {
            model.remove(&key(k));
            None
        }
        Op::ClearRange(b, e) => {
            let (b, e) = (bound(b), bound(e));
            model.retain(|k, _| *k < b || *k >= e);
            None
        }
        Op::Add(k, delta) => {
            let sum = model_add(model.get(&key(k)), delta);
            model.insert(key(k), sum);
            None
        }
    }
}

/// Run op `i` of transaction `t` on `txn`.
async fn live_op(
    txn: &Transaction,
    op: &Op,
    t: usize,
    i: usize,
) -> Result<Option<Observed>, KvError> {
    Ok(match *op {
        Op::Get(k) => Some(Observed::Value(txn.get(&key(k)).await?)),
        Op::GetSnapshot(k) => Some(Observed::Value(txn.get_snapshot(&key(k)).await?)),
        Op::GetRange {
            begin,
            end,
            limit,
            reverse,
            snapshot,
        } => {
            let options = RangeOptions {
                limit,
                reverse,
                snapshot,
            };
            let r = txn.get_range(&bound(begin), &bound(end), options).await?;
            Some(Observed::Range {
                kvs: r.kvs,
                more: r.more,
            })
        }
        Op::Set(k) => {
            txn.set(&key(k), &set_value(t, i));
            None
        }
        Op::Clear(k) => {
            txn.clear(&key(k));
            None
        }
        Op::ClearRange(b, e) => {
            txn.clear_range(&bound(b), &bound(e));
            None
        }
        Op::Add(k, delta) => {
            txn.atomic_add(&key(k), delta);
            None
        }
    })
}

/// A half-open byte range.
type Span = (Vec<u8>, Vec<u8>);

fn spans_meet(a: &[Span], b: &[Span]) -> bool {
    a.iter()
        .any(|(ab, ae)| b.iter().any(|(bb, be)| ab < be && bb < ae))
}

/// The ranges a transaction's non-snapshot reads cover (as the contract
/// defines them: a limited range read that was cut short covers up to its
/// last returned key).
fn read_spans(ops: &[Op], observed: &[Option<Observed>]) -> Vec<Span> {
    let mut spans = Vec::new();
    for (op, seen) in ops.iter().zip(observed) {
        match (op, seen) {
            (Op::Get(k), _) => spans.push((key(*k), key_after(&key(*k)))),
            (
                Op::GetRange {
                    begin,
                    end,
                    reverse,
                    snapshot: false,
                    ..
                },
                Some(Observed::Range { kvs, more }),
            ) => {
                let (b, e) = (bound(*begin), bound(*end));
                spans.push(match (more, kvs.last(), reverse) {
                    (true, Some((last, _)), false) => (b, key_after(last)),
                    (true, Some((last, _)), true) => (last.clone(), e),
                    _ => (b, e),
                });
            }
            _ => {}
        }
    }
    spans
}

/// The ranges a transaction's writes cover.
fn write_spans(ops: &[Op]) -> Vec<Span> {
    ops.iter()
        .filter_map(|op| match *op {
            Op::Set(k) | Op::Clear(k) | Op::Add(k, _) => Some((key(k), key_after(&key(k)))),
            Op::ClearRange(b, e) if b < e => Some((bound(b), bound(e))),
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Running,
    /// Commit version; for a transaction without writes, its read version.
    Committed(Version),
    /// Failed with NotCommitted when the newest commit was this version.
    Conflicted {
        newest_commit: Version,
    },
}

#[derive(Debug)]
struct Live {
    txn: Option<Transaction>,
    read_version: Option<Version>,
    next: usize,
    observed: Vec<Option<Observed>>,
    outcome: Outcome,
}

/// Counts over a property run, printed at its end to show it tested
/// something: cases, committed and conflicted transactions.
#[derive(Debug, Default)]
struct Stats {
    cases: AtomicU64,
    committed: AtomicU64,
    conflicted: AtomicU64,
}

/// Run one case against `db` and check it.
async fn check_case(db: &Database, case: &Case, stats: &Stats) -> Result<(), TestCaseError> {
    // The initial state, committed before any of the case's transactions.
    let setup = db.begin().await.expect("begin");
    let mut initial = Model::new();
    for (i, v) in case.initial.iter().enumerate() {
        if let Some(v) = v {
            setup.set(&key(i), v);
            initial.insert(key(i), v.clone());
        }
    }
    let setup_version = setup.commit().await.expect("setup commit");

    // Run the schedule.
    let mut live: Vec<Live> = case
        .txns
        .iter()
        .map(|_| Live {
            txn: None,
            read_version: None,
            next: 0,
            observed: Vec::new(),
            outcome: Outcome::Running,
        })
        .collect();
    let mut newest_commit = setup_version;
    let mut first_to_commit = None;
    let mut choices = case.schedule.iter();
    loop {
        let runnable: Vec<usize> = (0..live.len())
            .filter(|&t| live[t].outcome == Outcome::Running)
            .collect();
        if runnable.is_empty() {
            break;
        }
        let t = choices.next().map_or(runnable[0], |ix| *ix.get(&runnable));
        let ops = &case.txns[t];
        let l = &mut live[t];
        if l.txn.is_none() {
            let txn = db.begin().await.expect("begin");
            l.read_version = Some(txn.read_version());
            l.txn = Some(txn);
        }
        let txn = l.txn.clone().expect("begun");
        if l.next < ops.len() {
            let i = l.next;
            let seen = live_op(&txn, &ops[i], t, i).await;
            let seen =
                seen.map_err(|e| TestCaseError::fail(format!("txn {t} op {i} {:?}: {e}", ops[i])))?;
            l.observed.push(seen);
            l.next += 1;
        } else {
            first_to_commit.get_or_insert(t);
            match txn.commit().await {
                Ok(version) => {
                    l.outcome = Outcome::Committed(version);
                    if ops.iter().any(Op::is_write) {
                        prop_assert!(
                            version > newest_commit,
                            "txn {t}: commit version {version} not after {newest_commit}"
                        );
                        newest_commit = version;
                    } else {
                        prop_assert_eq!(
                            Some(version),
                            l.read_version,
                            "txn {}: read-only commit version",
                            t
                        );
                    }
                }
                Err(KvError::NotCommitted) => {
                    l.outcome = Outcome::Conflicted { newest_commit };
                }
                Err(e) => return Err(TestCaseError::fail(format!("txn {t} commit: {e}"))),
            }
            l.txn = None;
        }
    }

    // Serial order: writers by commit version; a read-only transaction
    // right after the writer whose version it read at.
    let mut committed: Vec<(Version, bool, usize)> = live
        .iter()
        .enumerate()
        .filter_map(|(t, l)| match l.outcome {
            Outcome::Committed(v) => Some((v, !case.txns[t].iter().any(Op::is_write), t)),
            _ => None,
        })
        .collect();
    committed.sort();
    let conflicted = live.len() - committed.len();
    stats.cases.fetch_add(1, Ordering::Relaxed);
    stats
        .committed
        .fetch_add(committed.len() as u64, Ordering::Relaxed);
    stats
        .conflicted
        .fetch_add(conflicted as u64, Ordering::Relaxed);
    let first = first_to_commit.expect("every transaction commits at its last step");
    prop_assert!(
        matches!(live[first].outcome, Outcome::Committed(_)),
        "txn {} was the first to commit, so nothing can conflict with it, yet it failed",
        first
    );

    // Replay serially; every non-snapshot read of a committed transaction
    // must read what it read live (a cut-short range's `more` is not
    // protected by conflicts, so only its pairs are compared).
    let mut model = initial.clone();
    let mut states: Vec<(Version, Model)> = vec![(setup_version, initial)];
    for &(version, read_only, t) in &committed {
        for (i, op) in case.txns[t].iter().enumerate() {
            let replayed = model_op(&mut model, op, t, i);
            if op.is_snapshot() {
                continue;
            }
            prop_assert_eq!(
                ignore_more(live[t].observed[i].clone()),
                ignore_more(replayed),
                "committed txn {} (version {}) op {} {:?}: live read differs from the serial replay",
                t,
                version,
                i,
                op
            );
        }
        if !read_only {
            states.push((version, model.clone()));
        }
    }

    // Every read of every transaction saw its read version plus its own
    // writes, `more` included.
    for (t, l) in live.iter().enumerate() {
        let rv = l.read_version.expect("every transaction began");
        let Some((_, base)) = states.iter().rev().find(|(v, _)| *v <= rv) else {
            return Err(TestCaseError::fail(format!(
                "txn {t}: read version {rv} before the setup"
            )));
        };
        let mut own = base.clone();
        for (i, op) in case.txns[t].iter().enumerate() {
            let want = model_op(&mut own, op, t, i);
            prop_assert_eq!(
                &l.observed[i],
                &want,
                "txn {} (read version {}) op {} {:?}: not the snapshot plus own writes",
                t,
                rv,
                i,
                op
            );
        }
    }

    // A conflict needs a cause: a commit after the read version, before the
    // failed commit, writing something the failed transaction read.
    for (t, l) in live.iter().enumerate() {
        let Outcome::Conflicted { newest_commit } = l.outcome else {
            continue;
        };
        let rv = l.read_version.expect("began");
        let reads = read_spans(&case.txns[t], &l.observed);
        let cause = committed.iter().any(|&(v, read_only, w)| {
            !read_only
                && v > rv
                && v <= newest_commit
                && spans_meet(&reads, &write_spans(&case.txns[w]))
        });
        prop_assert!(
            cause,
            "txn {} failed with NotCommitted without a conflicting commit",
            t
        );
    }

    // The database holds exactly the serial replay's result.
    let check = db.begin().await.expect("begin");
    let stored = check
        .get_range(PREFIX, b"s0", RangeOptions::default())
        .await
        .expect("final read");
    let want: Vec<KeyValue> = model.into_iter().collect();
    prop_assert_eq!(
        stored.kvs,
        want,
        "final contents differ from the serial replay"
    );
    Ok(())
}

/// A read result with a range's `more` flag cleared.
fn ignore_more(seen: Option<Observed>) -> Option<Observed> {
    match seen {
        Some(Observed::Range { kvs, .. }) => Some(Observed::Range { kvs, more: false }),
        other => other,
    }
}

/// Run `cases` cases (deterministically seeded), each against a fresh
/// database from `open`.
async fn run_property<D>(name: &str, cases: u32, open: impl Fn() -> (Database, D)) {
    let stats = Stats::default();
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&SEED.to_le_bytes());
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let result = runner.run(&case(), |case| {
            let (db, keep) = open();
            let result = handle.block_on(check_case(&db, &case, &stats));
            drop(db);
            drop(keep);
            result
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    });
    let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
    println!(
        "{name}: {} cases, {} transactions committed, {} failed on conflicts",
        get(&stats.cases),
        get(&stats.committed),
        get(&stats.conflicted)
    );
    assert!(
        get(&stats.conflicted) * 10 > get(&stats.committed),
        "too few conflicts for the property to mean much"
    );
}

fn clock() -> Arc<dyn Clock> {
    ManualClock::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_interleavings_are_serializable() {
    run_property("mem", 6_000, || {
        let clock = clock();
        let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, SEED);
        (db, ())
    })
    .await;
}

/// Relaxed SQLite alone on its file: commits go through the write-behind
/// memtable and its conflict log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_interleavings_are_serializable() {
    sqlite_interleavings("sqlite", true).await;
}

/// Straight to SQLite, checked against its `commits` table: what every
/// backend does while another process has the file open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_direct_interleavings_are_serializable() {
    sqlite_interleavings("sqlite-direct", false).await;
}

async fn sqlite_interleavings(name: &str, write_behind: bool) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let opened = AtomicU64::new(0);
    run_property(name, 1_200, || {
        let n = opened.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("case-{n}.sqlite"));
        let clock = clock();
        let options = SqliteOptions {
            durability: Durability::Relaxed,
            write_behind,
            ..SqliteOptions::default()
        };
        let backend = SqliteBackend::open(&path, options, clock.clone())
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let db = Database::new(Arc::new(backend), clock, SEED);
        (db, RemoveOnDrop(path))
    })
    .await;
}

/// Deletes a case's database files once the case is done.
#[derive(Debug)]
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-lock"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}
