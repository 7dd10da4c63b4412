//! Exactly-once under ambiguous commits. Every write commit is reported as
//! `commit_unknown_result` — sometimes after applying it, sometimes not —
//! and every mutating operation must still return what it would without
//! faults: a create never turns into EEXIST, an unlink into ENOENT, a rename
//! into ENOENT, and an append is never written twice. Without the
//! idempotency markers (fs/mod.rs) this test fails.

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::fault::{CommitFault, FaultPlan, FaultyBackend, ReadFault};
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::{CommitRequest, Database};
use hafs_core::ops::write::WriteAt;
use hafs_core::perm;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Two of three write commits are ambiguous; half of those were applied.
#[derive(Debug)]
struct Ambiguous {
    rng: Mutex<ChaCha8Rng>,
}

impl FaultPlan for Ambiguous {
    fn on_commit(&self, request: &CommitRequest) -> CommitFault {
        if request.is_read_only() {
            return CommitFault::None;
        }
        match self.rng.lock().gen_range(0..3) {
            0 => CommitFault::UnknownApplied,
            1 => CommitFault::UnknownNotApplied,
            _ => CommitFault::None,
        }
    }
    fn on_read(&self) -> ReadFault {
        ReadFault::None
    }
}

#[tokio::test]
async fn every_mutation_applies_exactly_once() {
    for seed in 0..8 {
        run(seed).await;
    }
}

async fn run(seed: u64) {
    let clock = ManualClock::new();
    let mem = MemBackend::new(clock.clone());
    let plan = Arc::new(Ambiguous {
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
    });
    let faulty = FaultyBackend::new(Arc::new(mem.clone()), plan, clock.clone());
    let counters = faulty.counters().clone();
    let db = Database::new(Arc::new(faulty), clock, seed);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let fs = Fs::open(db.clone(), "fs", "c1", FsOptions::default())
        .await
        .unwrap();
    let root = Caller::root();

    let d = fs.mkdir(&root, ROOT_INO, b"d", 0o755).await.unwrap();
    let f = fs
        .create(&root, d.ino, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(
            fs.write(&root, f.ino, WriteAt::Append, b"abc")
                .await
                .unwrap(),
            3
        );
    }
    assert_eq!(fs.getattr(&root, f.ino).await.unwrap().size, 60);
    assert_eq!(
        fs.read(&root, f.ino, 0, 100).await.unwrap(),
        b"abc".repeat(20)
    );
    fs.setxattr(
        &root,
        f.ino,
        b"user.k",
        b"v",
        hafs_core::ops::xattr::XATTR_CREATE,
    )
    .await
    .unwrap();
    fs.symlink(&root, d.ino, b"l", b"f").await.unwrap();
    fs.link(&root, f.ino, d.ino, b"g").await.unwrap();
    fs.rename(&root, d.ino, b"g", ROOT_INO, b"h", 0)
        .await
        .unwrap();
    fs.unlink(&root, d.ino, b"l").await.unwrap();
    let e = fs.mkdir(&root, d.ino, b"e", 0o755).await.unwrap();
    fs.rmdir(&root, d.ino, b"e").await.unwrap();
    assert!(fs.getattr(&root, e.ino).await.is_err());
    fs.mknod(&root, d.ino, b"fifo", libc::S_IFIFO | 0o600, 0)
        .await
        .unwrap();
    fs.unlink(&root, ROOT_INO, b"h").await.unwrap();
    assert_eq!(fs.getattr(&root, f.ino).await.unwrap().nlink, 1);

    let report = check_invariants(&db, "fs", |_| {}).await.unwrap();
    assert!(report.is_clean(), "seed {seed}: {:#?}", report.violations);
    let faults = counters.snapshot();
    let count = |name: &str| {
        faults
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, c)| *c)
    };
    assert!(
        count("unknown_applied") > 0 && count("unknown_not_applied") > 0,
        "seed {seed}: {faults:?}"
    );
}

/// Markers do not pile up: after many operations a client keeps about the
/// window's worth (old ones are cleared a batch at a time), and the marker
/// of every recent operation is still there for its retry to find.
#[tokio::test]
async fn old_markers_are_cleared_and_recent_ones_kept() {
    use hafs_core::fs::{IDEMPOTENCY_CLEAR_EVERY, IDEMPOTENCY_WINDOW};
    use hafs_core::kv::RangeOptions;

    let clock = ManualClock::new();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 1);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let fs = Fs::open(db.clone(), "fs", "c1", FsOptions::default())
        .await
        .unwrap();
    let root = Caller::root();
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    let ops = 2 * IDEMPOTENCY_WINDOW + 100;
    for _ in 1..ops {
        fs.write(&root, f.ino, WriteAt::Offset(0), b"x")
            .await
            .unwrap();
    }
    let (begin, end) = fs.keys().idempotency_markers("c1", 0, u64::MAX);
    let seq_of: std::collections::HashMap<Vec<u8>, u64> = (0..=ops)
        .map(|s| (fs.keys().idempotency_marker("c1", s), s))
        .collect();
    let seqs: Vec<u64> = db
        .read(|txn| {
            let (begin, end) = (begin.clone(), end.clone());
            async move {
                let page = txn.get_range(&begin, &end, RangeOptions::default()).await?;
                Ok::<_, hafs_core::kv::KvError>(page.kvs)
            }
        })
        .await
        .unwrap()
        .iter()
        .map(|(key, _)| *seq_of.get(key).expect("a marker key"))
        .collect();
    let kept = seqs.len() as u64;
    assert!(
        (IDEMPOTENCY_WINDOW..=IDEMPOTENCY_WINDOW + IDEMPOTENCY_CLEAR_EVERY).contains(&kept),
        "{kept} markers kept after {ops} operations"
    );
    // Exactly the newest `kept` operations: no stray old marker below them.
    let expected: Vec<u64> = (ops + 1 - kept..=ops).collect();
    assert_eq!(seqs, expected);
}

/// A store whose commits are ambiguous only after a local I/O error, like
/// SQLite ([`Backend::ambiguous_commits`] false) — here the fault wrapper
/// underneath still makes them ambiguous when told to.
#[derive(Debug)]
struct RarelyAmbiguous(Arc<dyn hafs_core::kv::Backend>);

#[async_trait::async_trait]
impl hafs_core::kv::Backend for RarelyAmbiguous {
    fn name(&self) -> &'static str {
        "rarely-ambiguous"
    }
    fn ambiguous_commits(&self) -> bool {
        false
    }
    async fn begin(&self) -> hafs_core::kv::KvResult<Box<dyn hafs_core::kv::BackendTxn>> {
        self.0.begin().await
    }
}

/// The next write commits' fault, switched by the test.
#[derive(Debug, Default)]
struct Switch(Mutex<Option<CommitFault>>);

impl FaultPlan for Switch {
    fn on_commit(&self, request: &CommitRequest) -> CommitFault {
        match *self.0.lock() {
            Some(fault) if !request.is_read_only() => fault,
            _ => CommitFault::None,
        }
    }
    fn on_read(&self) -> ReadFault {
        ReadFault::None
    }
}

/// A new filesystem on `db`, client "c1", with a file "f" holding "abc".
async fn with_file(db: &Database) -> (Fs, hafs_core::codec::Attr) {
    mkfs(db, "fs", MkfsOptions::default()).await.unwrap();
    let fs = Fs::open(db.clone(), "fs", "c1", FsOptions::default())
        .await
        .unwrap();
    let root = Caller::root();
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    fs.write(&root, f.ino, WriteAt::Append, b"abc")
        .await
        .unwrap();
    (fs, f)
}

/// Markers a client has stored.
async fn markers(fs: &Fs) -> usize {
    let (begin, end) = fs.keys().idempotency_markers(fs.client(), 0, u64::MAX);
    fs.db()
        .read(|txn| {
            let (begin, end) = (begin.clone(), end.clone());
            async move {
                let page = txn
                    .get_range(&begin, &end, hafs_core::kv::RangeOptions::default())
                    .await?;
                Ok::<_, hafs_core::kv::KvError>(page.kvs.len())
            }
        })
        .await
        .unwrap()
}

/// On a store that is ambiguous only on I/O errors, mutations write no
/// marker, and a commit whose outcome is unknown is reported (EIO) — never
/// applied a second time: a create that landed does not turn into EEXIST,
/// one that did not is not made to land by a retry.
#[tokio::test]
async fn without_markers_an_unknown_outcome_is_reported_not_repeated() {
    let clock = ManualClock::new();
    let mem = MemBackend::new(clock.clone());
    let plan = Arc::new(Switch::default());
    let faulty = FaultyBackend::new(Arc::new(mem.clone()), plan.clone(), clock.clone());
    let db = Database::new(
        Arc::new(RarelyAmbiguous(Arc::new(faulty))),
        clock.clone(),
        1,
    );
    let (fs, f) = with_file(&db).await;
    let root = Caller::root();
    fs.rename(&root, ROOT_INO, b"f", ROOT_INO, b"g", 0)
        .await
        .unwrap();
    assert_eq!(markers(&fs).await, 0, "no marker on this store");

    *plan.0.lock() = Some(CommitFault::UnknownApplied);
    let landed = fs
        .create(&root, ROOT_INO, b"landed", 0o644, true, perm::WRITE)
        .await
        .unwrap_err();
    let appended = fs
        .write(&root, f.ino, WriteAt::Append, b"def")
        .await
        .unwrap_err();
    *plan.0.lock() = Some(CommitFault::UnknownNotApplied);
    let lost = fs
        .create(&root, ROOT_INO, b"lost", 0o644, true, perm::WRITE)
        .await
        .unwrap_err();
    *plan.0.lock() = None;
    for e in [&landed, &appended, &lost] {
        assert_eq!(e.errno(), libc::EIO, "{e}");
    }
    fs.lookup(&root, ROOT_INO, b"landed").await.unwrap();
    assert_eq!(
        fs.read(&root, f.ino, 0, 100).await.unwrap(),
        b"abcdef",
        "appended once"
    );
    assert_eq!(
        fs.lookup(&root, ROOT_INO, b"lost").await.unwrap_err(),
        hafs_core::error::FsError::NotFound
    );
    let report = check_invariants(&db, "fs", |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);

    // The same store said to be ambiguous: markers, and the retry answers.
    let db = Database::new(Arc::new(mem), clock, 2);
    let fs = Fs::open(db, "fs", "c2", FsOptions::default())
        .await
        .unwrap();
    fs.create(&root, ROOT_INO, b"marked", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    assert_eq!(markers(&fs).await, 1);
}

/// SQLite is such a store: a mount's mutations leave no markers in it.
#[tokio::test]
async fn sqlite_mutations_write_no_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = hafs_core::clock::TokioClock::new();
    let sqlite = hafs_core::kv::sqlite::SqliteBackend::open(
        &tmp.path().join("hafs.db"),
        Default::default(),
        clock.clone(),
    )
    .unwrap();
    let db = Database::new(Arc::new(sqlite), clock, 1);
    let (fs, _) = with_file(&db).await;
    fs.unlink(&Caller::root(), ROOT_INO, b"f").await.unwrap();
    assert_eq!(markers(&fs).await, 0);
}

/// Reports the first commit that registers each of `sessions` as
/// ambiguous, having applied it or not (`applied`).
#[derive(Debug)]
struct AmbiguousAttach {
    sessions: Vec<Vec<u8>>,
    applied: bool,
    fired: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl FaultPlan for AmbiguousAttach {
    fn on_commit(&self, request: &CommitRequest) -> CommitFault {
        for m in &request.mutations {
            let hafs_core::kv::Mutation::Set { key, .. } = m else {
                continue;
            };
            let mut fired = self.fired.lock().unwrap();
            if self.sessions.contains(key) && !fired.contains(key) {
                fired.push(key.clone());
                return match self.applied {
                    true => CommitFault::UnknownApplied,
                    false => CommitFault::UnknownNotApplied,
                };
            }
        }
        CommitFault::None
    }
    fn on_read(&self) -> ReadFault {
        ReadFault::None
    }
}

/// A filesystem whose first commit registering each of `ids` is
/// ambiguous (`applied` or not): the plain database, the faulty one, the
/// keys.
async fn ambiguous_attach(
    ids: &[&str],
    applied: bool,
) -> (Database, Database, hafs_core::keys::Keys) {
    let clock = ManualClock::new();
    let mem = MemBackend::new(clock.clone());
    let plain = Database::new(Arc::new(mem.clone()), clock.clone(), 1);
    mkfs(&plain, "fs", MkfsOptions::default()).await.unwrap();
    let (keys, _) = hafs_core::fs::open_keys(&plain, "fs").await.unwrap();
    let plan = Arc::new(AmbiguousAttach {
        sessions: ids.iter().map(|id| keys.session(id)).collect(),
        applied,
        fired: Default::default(),
    });
    let faulty = FaultyBackend::new(Arc::new(mem), plan, clock.clone());
    (plain, Database::new(Arc::new(faulty), clock, 2), keys)
}

async fn registered(db: &Database, keys: &hafs_core::keys::Keys, id: &str) -> bool {
    let txn = db.begin().await.unwrap();
    txn.get(&keys.session(id)).await.unwrap().is_some()
}

/// An attach whose commit was ambiguous (it landed) and whose client is
/// evicted before the retry (it has not heartbeated yet: an expiry sweep
/// may take it for dead) must not attach again: that would undo the
/// eviction, and the client would go on as if never evicted. Found by the
/// simulation (`lockset`, seed 3138 of a soak past CI's seeds). The mount
/// attaches under a new id instead, which nobody evicted.
#[tokio::test(flavor = "current_thread")]
async fn an_attach_retried_after_an_eviction_does_not_undo_it() {
    let (plain, db, keys) = ambiguous_attach(&["c1"], true).await;
    // Evicts c1 the moment its registration lands: while the attach waits
    // to retry (the runner's backoff yields to other tasks).
    let evictor = {
        let (plain, keys) = (plain.clone(), keys.clone());
        tokio::spawn(async move {
            for _ in 0..10_000 {
                if registered(&plain, &keys, "c1").await {
                    hafs_core::session::evict(&plain, &keys, "c1")
                        .await
                        .unwrap();
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("c1 never registered");
        })
    };
    let opened = Fs::open(db.clone(), "fs", "c1", FsOptions::default()).await;
    evictor.await.unwrap();
    let c1 = registered(&plain, &keys, "c1").await;
    assert!(!c1, "evicted while attaching, c1 attached again");
    let fs = opened.expect("attached under a new id");
    assert_eq!(fs.client(), "c1~1");
    assert!(registered(&plain, &keys, "c1~1").await);
    let root = Caller::root();
    fs.create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .expect("the new client works");
}

/// An attach whose ambiguous commit did not land mounts all the same (under
/// a new id: the retry cannot tell it from one that landed and was
/// evicted).
#[tokio::test(flavor = "current_thread")]
async fn an_ambiguous_attach_that_did_not_land_still_mounts() {
    let (plain, db, keys) = ambiguous_attach(&["c1"], false).await;
    let fs = Fs::open(db.clone(), "fs", "c1", FsOptions::default())
        .await
        .expect("mounted");
    assert_eq!(fs.client(), "c1~1");
    assert!(!registered(&plain, &keys, "c1").await);
    assert!(registered(&plain, &keys, "c1~1").await);
}

/// Each new id may be spent the same way: the mount tries `c1~2`, then
/// gives up (`Busy`) with none of the three registered. A caller's id
/// may not contain `~`, the new ids' mark.
#[tokio::test(flavor = "current_thread")]
async fn spent_ids_are_not_tried_again_and_three_are_the_limit() {
    let (plain, db, keys) = ambiguous_attach(&["c1", "c1~1"], false).await;
    let fs = Fs::open(db.clone(), "fs", "c1", FsOptions::default())
        .await
        .expect("mounted");
    assert_eq!(fs.client(), "c1~2");
    for (id, expected) in [("c1", false), ("c1~1", false), ("c1~2", true)] {
        assert_eq!(registered(&plain, &keys, id).await, expected, "{id}");
    }
    let (plain, db, keys) = ambiguous_attach(&["c1", "c1~1", "c1~2"], false).await;
    let opened = Fs::open(db.clone(), "fs", "c1", FsOptions::default()).await;
    assert!(
        matches!(opened, Err(hafs_core::error::FsError::Busy(_))),
        "{:?}",
        opened.map(|_| ())
    );
    for id in ["c1", "c1~1", "c1~2", "c1~3"] {
        assert!(!registered(&plain, &keys, id).await, "{id}");
    }
    let opened = Fs::open(db, "fs", "c1~1", FsOptions::default()).await;
    assert!(
        matches!(opened, Err(hafs_core::error::FsError::Invalid)),
        "{:?}",
        opened.map(|_| ())
    );
}
