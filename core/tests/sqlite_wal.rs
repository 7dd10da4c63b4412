//! The SQLite backend's WAL file: grown with zeros ahead of the commits
//! (so a commit's fdatasync overwrites blocks that exist instead of also
//! writing the file's new size and allocation), and still recovered
//! exactly — every durable commit, nothing else — from a crash image.
#![allow(clippy::disallowed_methods)] // real time: real threads and files

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hafs_core::clock::TokioClock;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{Database, KvError};

fn wal_len(db: &Path) -> u64 {
    std::fs::metadata(format!("{}-wal", db.display())).map_or(0, |m| m.len())
}

async fn put(db: &Database, i: u32) {
    let key = format!("k/{i:05}");
    db.run(|txn, _| {
        let key = key.clone();
        async move {
            txn.set(key.as_bytes(), &i.to_le_bytes());
            Ok::<_, KvError>(())
        }
    })
    .await
    .expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_grown_ahead_and_a_crash_image_recovers_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let clock = TokioClock::new();
    // Every commit straight to SQLite, as when several processes share the
    // file: alone, write-behind would acknowledge them from the sync log.
    let options = SqliteOptions {
        durability: Durability::Durable,
        write_behind: false,
        ..SqliteOptions::default()
    };
    let backend = Arc::new(SqliteBackend::open(&path, options, clock.clone()).expect("open"));
    let db = Database::new(backend.clone(), clock, 11);
    for i in 0..300 {
        put(&db, i).await;
    }
    // A few hundred small commits are well under a MiB of WAL; the
    // checkpoint thread (woken every 250 commits, or each second) grows it
    // to 8 MiB.
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal_len(&path) < 8 << 20 {
        assert!(
            Instant::now() < deadline,
            "the WAL was not grown ahead: {} bytes",
            wal_len(&path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // These land on the zeros.
    for i in 300..600 {
        put(&db, i).await;
    }
    // A crash image: the files as a power loss would leave them once every
    // commit was acknowledged (durable: synced), taken while the backend is
    // still open — no clean close, no final checkpoint.
    let image = tempfile::tempdir().unwrap();
    let copy = image.path().join("kv.db");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::copy(
        format!("{}-wal", path.display()),
        format!("{}-wal", copy.display()),
    )
    .unwrap();
    drop(db);
    drop(backend);

    // SQLite rebuilds its index from the WAL, reading frames until the
    // first that does not continue the checksum chain: the zeros end it.
    let conn = rusqlite::Connection::open(&copy).expect("open the crash image");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let mut stmt = conn
        .prepare("SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = stmt
        .query_map([b"k/".as_slice(), b"k0".as_slice()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 600, "every acknowledged commit, and only those");
    for (i, (key, value)) in rows.iter().enumerate() {
        let i = u32::try_from(i).unwrap();
        assert_eq!(key, format!("k/{i:05}").as_bytes());
        assert_eq!(value, &i.to_le_bytes());
    }
}
