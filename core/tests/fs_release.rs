//! Deferred last closes (`Fs::defer_releases`): the record of an open
//! stays until a batch clears it, a reopen in between writes nothing and
//! keeps it, an unlinked file is freed by the batch (not before), and a
//! batch leaves fsck clean.

use std::sync::Arc;

use hafs_core::clock::{Clock, TokioClock};
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::{Keys, ROOT_INO};
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::Database;

async fn stored(db: &Database, key: Vec<u8>) -> bool {
    db.read(|txn| {
        let key = key.clone();
        async move { txn.get(&key).await }
    })
    .await
    .unwrap()
    .is_some()
}

#[tokio::test]
async fn deferred_closes_keep_the_record_until_a_batch_clears_it() {
    let clock: Arc<dyn Clock> = TokioClock::new();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 5);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let options = FsOptions {
        unlink_grace_ns: 0,
        ..FsOptions::default()
    };
    let fs = Fs::open(db.clone(), "fs", "c", options).await.unwrap();
    let keys = Keys::new("fs");
    let root = Caller::root();
    fs.defer_releases();

    let f = fs
        .create_open(&root, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    let g = fs
        .create_open(&root, ROOT_INO, b"g", 0o644, libc::O_RDWR)
        .await
        .unwrap();
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
