//! Deferred last closes (`Fs::defer_releases`): the record of an open
//! stays until a batch clears it, a reopen in between writes nothing and
//! keeps it, an unlinked file is freed by the batch (not before), and a
//! batch leaves fsck clean. A batch whose commits were all ambiguous (but
//! applied) leaves its inodes "unsure": a reopen writes the record again.

use std::sync::Arc;

use hafs_core::clock::{Clock, TokioClock};
use hafs_core::codec::Attr;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::fault::{CommitFault, FaultPlan, FaultyBackend, ReadFault};
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::{CommitRequest, Database};
use std::sync::atomic::{AtomicBool, Ordering};

async fn stored(db: &Database, key: Vec<u8>) -> bool {
    db.read(|txn| {
        let key = key.clone();
        async move { txn.get(&key).await }
    })
    .await
    .unwrap()
    .is_some()
}

/// A fresh filesystem in `db`, opened as client "c" deferring its closes.
async fn deferring(db: &Database, options: FsOptions) -> Fs {
    mkfs(db, "fs", MkfsOptions::default()).await.unwrap();
    let fs = Fs::open(db.clone(), "fs", "c", options).await.unwrap();
    fs.defer_releases();
    fs
}

async fn create(fs: &Fs, name: &[u8]) -> Attr {
    let root = Caller::root();
    fs.create_open(&root, ROOT_INO, name, 0o644, libc::O_RDWR)
        .await
        .unwrap()
}

#[tokio::test]
async fn deferred_closes_keep_the_record_until_a_batch_clears_it() {
    let clock: Arc<dyn Clock> = TokioClock::new();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 5);
    let options = FsOptions {
        unlink_grace_ns: 0,
        ..FsOptions::default()
    };
    let fs = deferring(&db, options).await;
    let keys = fs.keys().clone();
    let root = Caller::root();

    let f = create(&fs, b"f").await;
    let g = create(&fs, b"g").await;
    let record = |ino| keys.open_handles(ino, "c");
    fs.release(&root, f.ino).await.unwrap();
    fs.release(&root, g.ino).await.unwrap();
    assert!(stored(&db, record(f.ino)).await, "cleared before the batch");
    assert!(matches!(
        fs.release(&root, f.ino).await,
        Err(FsError::Invalid)
    ));

    // Reopened before the batch: the record stays, and the batch skips it.
    fs.open_file(&root, f.ino, libc::O_RDONLY).await.unwrap();
    // Unlinked while its clear is pending: parked, not freed.
    fs.unlink(&root, ROOT_INO, b"g").await.unwrap();
    assert!(
        stored(&db, keys.attr(g.ino)).await,
        "freed while recorded open"
    );

    while fs.clear_deferred_releases().await.unwrap() {}
    assert!(
        stored(&db, record(f.ino)).await,
        "the reopen lost its record"
    );
    assert!(!stored(&db, record(g.ino)).await);
    assert!(!stored(&db, keys.attr(g.ino)).await, "unlinked g not freed");

    fs.release(&root, f.ino).await.unwrap();
    while fs.clear_deferred_releases().await.unwrap() {}
    assert!(!stored(&db, record(f.ino)).await);
    let report = check_invariants(&db, "fs", |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
}

/// While set, every write commit applies and reports `commit_unknown_result`.
#[derive(Debug, Default)]
struct Ambush(AtomicBool);

impl FaultPlan for Ambush {
    fn on_commit(&self, request: &CommitRequest) -> CommitFault {
        if self.0.load(Ordering::Relaxed) && !request.is_read_only() {
            CommitFault::UnknownApplied
        } else {
            CommitFault::None
        }
    }
    fn on_read(&self) -> ReadFault {
        ReadFault::None
    }
}

#[tokio::test]
async fn a_reopen_after_an_ambiguous_batch_writes_its_record_again() {
    let clock: Arc<dyn Clock> = TokioClock::new();
    let mem = MemBackend::new(clock.clone());
    let plan = Arc::new(Ambush::default());
    let faulty = FaultyBackend::new(Arc::new(mem), plan.clone(), clock.clone());
    let db = Database::new(Arc::new(faulty), clock, 7);
    let fs = deferring(&db, FsOptions::default()).await;
    let root = Caller::root();
    let f = create(&fs, b"f").await;
    fs.release(&root, f.ino).await.unwrap();
    plan.0.store(true, Ordering::Relaxed);
    // Every attempt cleared the record, and each said it did not know.
    assert!(fs.clear_deferred_releases().await.is_err());
    plan.0.store(false, Ordering::Relaxed);
    let record = fs.keys().open_handles(f.ino, "c");
    assert!(!stored(&db, record.clone()).await);
    fs.open_file(&root, f.ino, libc::O_RDONLY).await.unwrap();
    assert!(
        stored(&db, record.clone()).await,
        "open with no record: an unlink elsewhere could free it"
    );
    while fs.clear_deferred_releases().await.unwrap() {}
    assert!(
        stored(&db, record).await,
        "the requeued clear hit an open file"
    );
}
