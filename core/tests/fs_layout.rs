//! Inode layouts (`keys::InodeLayout`): where an inode's keys sit.
//!
//! Guards against two bugs: a store choosing the wrong layout (the
//! allocation layout's point is that files made one after another share
//! B-tree pages on SQLite; FoundationDB must keep the spread one), and a
//! filesystem made before layouts existed (settings format 1) being read
//! with the new layout, which would lose every inode but none of the bytes.

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::codec::Settings;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::fs::{mkfs, open_keys, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::{InodeLayout, Keys, ROOT_INO};
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::sqlite::SqliteBackend;
use hafs_core::kv::{Database, RangeOptions};
use hafs_core::perm;

fn mem_db() -> Database {
    let clock = ManualClock::new();
    Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 11)
}

/// Every inode whose attributes are stored, in key order.
async fn inodes_in_key_order(db: &Database, keys: &Keys) -> Vec<u64> {
    let (begin, end) = keys.inodes_range();
    let all = db
        .read(|txn| {
            let (begin, end) = (begin.clone(), end.clone());
            async move { txn.get_range(&begin, &end, RangeOptions::default()).await }
        })
        .await
        .unwrap();
    all.kvs
        .iter()
        .filter_map(|(k, _)| keys.inode_key_kind(k))
        .filter(|(_, kind)| kind == "attr")
        .map(|(ino, _)| ino)
        .collect()
}

/// A fresh filesystem with inode layout `layout`, and a client `id` of it.
async fn fs_with_layout(layout: InodeLayout, id: &str) -> (Database, Fs) {
    let db = mem_db();
    let options = MkfsOptions {
        inode_layout: Some(layout),
        ..MkfsOptions::default()
    };
    mkfs(&db, "fs", options).await.unwrap();
    let fs = Fs::open(db.clone(), "fs", id, FsOptions::default())
        .await
        .unwrap();
    (db, fs)
}

async fn make_files(fs: &Fs, n: usize) -> Vec<u64> {
    let root = Caller::root();
    let mut made = Vec::new();
    for i in 0..n {
        let name = format!("f{i}");
        let attr = fs
            .create(&root, ROOT_INO, name.as_bytes(), 0o644, true, perm::WRITE)
            .await
            .unwrap();
        made.push(attr.ino);
    }
    made
}

#[tokio::test]
async fn memory_and_sqlite_get_the_allocation_layout_by_default() {
    let db = mem_db();
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let (keys, settings) = open_keys(&db, "fs").await.unwrap();
    assert_eq!(settings.inode_layout, InodeLayout::Allocation);
    assert_eq!(keys.layout(), InodeLayout::Allocation);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hafs.db");
    let clock = ManualClock::new();
    let backend = SqliteBackend::open(&path, Default::default(), clock.clone()).unwrap();
    let db = Database::new(Arc::new(backend), clock, 1);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let (_, settings) = open_keys(&db, "fs").await.unwrap();
    assert_eq!(settings.inode_layout, InodeLayout::Allocation);
}

/// Files made one after another are neighbours in the key space under the
/// allocation layout, and scattered under the spread one.
#[tokio::test]
async fn files_made_together_sit_together_only_under_the_allocation_layout() {
    for layout in [InodeLayout::Allocation, InodeLayout::Spread] {
        let (db, fs) = fs_with_layout(layout, "c1").await;
        let made = make_files(&fs, 40).await;
        let stored: Vec<u64> = inodes_in_key_order(&db, fs.keys())
            .await
            .into_iter()
            .filter(|ino| *ino != ROOT_INO)
            .collect();
        let mut sorted_made = made.clone();
        sorted_made.sort_unstable();
        let mut sorted_stored = stored.clone();
        sorted_stored.sort_unstable();
        assert_eq!(sorted_stored, sorted_made, "{layout:?}: every file stored");
        match layout {
            InodeLayout::Allocation => assert_eq!(stored, made, "in creation order"),
            InodeLayout::Spread => assert_ne!(stored, made, "scattered"),
        }
        let report = check_invariants(&db, "fs", |_| {}).await.unwrap();
        assert!(report.is_clean(), "{layout:?}: {:?}", report.violations);
    }
}

/// A filesystem whose settings predate layouts (format 1) was made with
/// the spread layout and keeps working: its files are found, new ones are
/// made, fsck finds nothing wrong.
#[tokio::test]
async fn a_filesystem_from_before_layouts_reads_as_spread() {
    let (db, fs) = fs_with_layout(InodeLayout::Spread, "c1").await;
    let old = make_files(&fs, 5).await;
    fs.close().await.unwrap();
    // Rewrite the settings as format 1 wrote them: no layout.
    let (_, settings): (Keys, Settings) = open_keys(&db, "fs").await.unwrap();
    let format_1 = foundationdb_tuple::pack(&(
        1u64,
        settings.chunk_size,
        settings.generation,
        settings.created_ns,
    ));
    let txn = db.begin().await.unwrap();
    txn.set(&Keys::settings_of("fs"), &format_1);
    txn.commit().await.unwrap();

    let fs = Fs::open(db.clone(), "fs", "c2", FsOptions::default())
        .await
        .unwrap();
    assert_eq!(fs.settings().inode_layout, InodeLayout::Spread);
    let root = Caller::root();
    for (i, ino) in old.iter().enumerate() {
        let name = format!("f{i}");
        assert_eq!(
            fs.lookup(&root, ROOT_INO, name.as_bytes())
                .await
                .unwrap()
                .ino,
            *ino
        );
        assert_eq!(fs.getattr(&root, *ino).await.unwrap().ino, *ino);
    }
    fs.create(&root, ROOT_INO, b"new", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    let report = check_invariants(&db, "fs", |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.violations);
}

/// `rmfs` reads the layout in its own transaction: it refuses a filesystem
/// with files under either layout (its root's entries sit at different
/// keys), removes an empty one, and with `force` removes one whose
/// settings no longer decode — without `force` that is an error.
#[tokio::test]
async fn rmfs_checks_the_root_of_the_layout_it_reads() {
    use hafs_core::error::FsError;
    use hafs_core::fs::{list_filesystems, rmfs};
    for layout in [InodeLayout::Allocation, InodeLayout::Spread] {
        let (db, fs) = fs_with_layout(layout, "c1").await;
        make_files(&fs, 1).await;
        fs.close().await.unwrap();
        assert!(
            matches!(rmfs(&db, "fs", false).await, Err(FsError::Busy(_))),
            "{layout:?}: a filesystem with a file is not removed without force"
        );
        let fs = Fs::open(db.clone(), "fs", "c2", FsOptions::default())
            .await
            .unwrap();
        fs.unlink(&Caller::root(), ROOT_INO, b"f0").await.unwrap();
        fs.close().await.unwrap();
        rmfs(&db, "fs", false).await.unwrap();
        assert!(list_filesystems(&db).await.unwrap().is_empty());
        assert!(matches!(
            rmfs(&db, "fs", false).await,
            Err(FsError::NotFormatted(_))
        ));
    }

    let db = mem_db();
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let txn = db.begin().await.unwrap();
    txn.set(&Keys::settings_of("fs"), b"not a tuple");
    txn.commit().await.unwrap();
    assert!(matches!(
        rmfs(&db, "fs", false).await,
        Err(FsError::Corrupted(_))
    ));
    rmfs(&db, "fs", true).await.unwrap();
    assert!(list_filesystems(&db).await.unwrap().is_empty());
}
