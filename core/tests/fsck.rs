//! fsck finds each kind of damage, and damaged stored bytes surface as
//! `Corrupted` (EIO) from operations instead of panicking. Each case plants
//! one specific fault through raw KV writes, so a checker that missed it
//! would fail here.

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::codec::{self, Dirent, FileType};
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::{Counter, Keys, ROOT_INO};
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::{Database, Transaction};
use hafs_core::perm;

struct Tree {
    fs: Fs,
    db: Database,
    keys: Keys,
    dir: u64,
    sub: u64,
    file: u64,
    vol: u64,
}

async fn tree() -> Tree {
    let clock = ManualClock::new();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 3);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let fs = Fs::open(db.clone(), "fs", "c1", FsOptions::default())
        .await
        .unwrap();
    let root = Caller::root();
    let dir = fs.mkdir(&root, ROOT_INO, b"dir", 0o755).await.unwrap().ino;
    let sub = fs.mkdir(&root, dir, b"sub", 0o755).await.unwrap().ino;
    let file = fs
        .create(&root, sub, b"file", 0o644, true, perm::WRITE)
        .await
        .unwrap()
        .ino;
    fs.symlink(&root, dir, b"link", b"sub/file").await.unwrap();
    let vol = fs.mkdir(&root, ROOT_INO, b"vol", 0o755).await.unwrap().ino;
    fs.setxattr(&root, vol, b"hafs.subvolume", b"true", 0)
        .await
        .unwrap();
    fs.create(&root, vol, b"in-vol", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    Tree {
        keys: fs.keys().clone(),
        fs,
        db,
        dir,
        sub,
        file,
        vol,
    }
}

async fn raw(db: &Database, f: impl Fn(&Transaction)) {
    let txn = db.begin().await.unwrap();
    f(&txn);
    txn.commit().await.unwrap();
}

async fn problems(t: &Tree) -> Vec<String> {
    let report = check_invariants(&t.db, "fs", |_| {}).await.unwrap();
    report
        .violations
        .into_iter()
        .map(|v| format!("{}: {}", v.ino, v.problem))
        .collect()
}

async fn assert_found(t: &Tree, needle: &str) {
    let found = problems(t).await;
    assert!(
        found.iter().any(|p| p.contains(needle)),
        "expected {needle:?} in {found:#?}"
    );
}

#[tokio::test]
async fn a_healthy_tree_is_clean() {
    let t = tree().await;
    let report = check_invariants(&t.db, "fs", |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
    assert_eq!(report.inodes, 7);
    assert_eq!(report.entries, 6);
}

#[tokio::test]
async fn finds_an_entry_to_a_missing_inode() {
    let t = tree().await;
    let entry = codec::encode_dirent(&Dirent {
        ino: 999,
        kind: FileType::Regular,
    });
    raw(&t.db, |txn| {
        txn.set(&t.keys.dirent(t.dir, b"ghost"), &entry)
    })
    .await;
    assert_found(&t, "points to missing inode 999").await;
}

/// Sizes no operation can make (found by `fuzz/` fs_ops): reported, and
/// summing them into the subvolume's totals does not overflow.
#[tokio::test]
async fn finds_a_size_beyond_the_largest_file() {
    let t = tree().await;
    let root = Caller::root();
    let in_vol = t.fs.lookup(&root, t.vol, b"in-vol").await.unwrap();
    let other =
        t.fs.create(&root, t.vol, b"other", 0o644, true, perm::WRITE)
            .await
            .unwrap();
    for mut attr in [in_vol, other] {
        attr.size = i64::MAX as u64;
        raw(&t.db, |txn| {
            txn.set(&t.keys.attr(attr.ino), &codec::encode_attr(&attr))
        })
        .await;
    }
    assert_found(&t, "size 9223372036854775807 beyond the largest file").await;
    assert_found(&t, "subvolume totals").await;
}

/// Well-formed but absurd stored counts and sizes (a parent's nlink of 0,
/// a size of 2^63) must not make a mutation panic; each overflowed in a
/// debug build before (reported by a review of what `fuzz/` fs_ops could
/// reach).
#[tokio::test]
async fn absurd_counts_and_sizes_do_not_panic_mutations() {
    let t = tree().await;
    let root = Caller::root();
    let set = |attr: hafs_core::codec::Attr| {
        let db = t.db.clone();
        let key = t.keys.attr(attr.ino);
        async move { raw(&db, |txn| txn.set(&key, &codec::encode_attr(&attr))).await }
    };
    // rmdir under a parent whose nlink says 0, mkdir under one at the top.
    t.fs.mkdir(&root, t.dir, b"empty", 0o755).await.unwrap();
    let mut dir = t.fs.getattr(&root, t.dir).await.unwrap();
    dir.nlink = 0;
    set(dir.clone()).await;
    let _ = t.fs.rmdir(&root, t.dir, b"empty").await;
    dir.nlink = u32::MAX;
    set(dir).await;
    let _ = t.fs.mkdir(&root, t.dir, b"again", 0o755).await;
    // Truncating, and freeing, a file whose size says 2^63.
    let mut file = t.fs.getattr(&root, t.file).await.unwrap();
    file.size = 1 << 63;
    set(file).await;
    let to_zero = hafs_core::ops::setattr::SetAttr {
        size: Some(0),
        ..Default::default()
    };
    let _ = t.fs.setattr(&root, t.file, to_zero).await;
    let mut file = t.fs.getattr(&root, t.file).await.unwrap();
    file.size = 1 << 63;
    set(file).await;
    let _ = t.fs.unlink(&root, t.sub, b"file").await;
    let _ = hafs_core::session::sweep_unlinked(&t.db, &t.keys).await;
}

#[tokio::test]
async fn finds_a_wrong_link_count() {
    let t = tree().await;
    let mut attr = t.fs.getattr(&Caller::root(), t.file).await.unwrap();
    attr.nlink = 2;
    raw(&t.db, |txn| {
        txn.set(&t.keys.attr(t.file), &codec::encode_attr(&attr))
    })
    .await;
    assert_found(&t, "nlink 2 != 1 entries").await;
}

#[tokio::test]
async fn finds_a_directory_cycle() {
    let t = tree().await;
    // Move `dir` under its own child `sub` by rewriting entries and parents.
    let mut dir = t.fs.getattr(&Caller::root(), t.dir).await.unwrap();
    dir.parent = t.sub;
    let entry = codec::encode_dirent(&Dirent {
        ino: t.dir,
        kind: FileType::Directory,
    });
    raw(&t.db, |txn| {
        txn.clear(&t.keys.dirent(ROOT_INO, b"dir"));
        txn.set(&t.keys.dirent(t.sub, b"loop"), &entry);
        txn.set(&t.keys.attr(t.dir), &codec::encode_attr(&dir));
    })
    .await;
    assert_found(&t, "does not reach the root").await;
}

#[tokio::test]
async fn finds_an_unreachable_inode() {
    let t = tree().await;
    raw(&t.db, |txn| txn.clear(&t.keys.dirent(t.sub, b"file"))).await;
    assert_found(&t, "unreachable inode not in the unlinked set").await;
}

#[tokio::test]
async fn finds_data_beyond_the_size() {
    let t = tree().await;
    raw(&t.db, |txn| {
        txn.set(&t.keys.chunk(t.file, 3), b"stray bytes")
    })
    .await;
    assert_found(&t, "beyond size 0").await;
}

#[tokio::test]
async fn finds_wrong_subvolume_totals() {
    let t = tree().await;
    raw(&t.db, |txn| {
        txn.atomic_add(&t.keys.subvolume_counter(t.vol, 5, Counter::Inodes), 1)
    })
    .await;
    assert_found(&t, "subvolume totals").await;
}

#[tokio::test]
async fn corrupted_values_are_reported_and_give_eio() {
    let t = tree().await;
    raw(&t.db, |txn| {
        txn.set(&t.keys.attr(t.file), b"\x15\x01garbage")
    })
    .await;
    assert_found(&t, "corrupted").await;
    let err = t.fs.getattr(&Caller::root(), t.file).await.unwrap_err();
    assert!(matches!(err, FsError::Corrupted(_)), "{err:?}");
    assert_eq!(err.errno(), libc::EIO);
    let err =
        t.fs.lookup(&Caller::root(), t.sub, b"file")
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    raw(&t.db, |txn| txn.set(&t.keys.dirent(t.dir, b"sub"), b"\xff")).await;
    let err =
        t.fs.lookup(&Caller::root(), t.dir, b"sub")
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let err =
        t.fs.readdir(&Caller::root(), t.dir, None, 10)
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
}

/// A malformed published expiry is reported by fsck, and read as none by
/// expiry sweeps: one bad value must not stop every eviction.
#[tokio::test]
async fn a_malformed_published_expiry_is_reported_and_sweeps_go_on() {
    let t = tree().await;
    raw(&t.db, |txn| {
        txn.set(&t.keys.client_expiry("c1"), b"\x01\x02")
    })
    .await;
    assert_found(&t, "client expiry of 2 bytes").await;
    let clock = t.db.clock().clone();
    let mut tracker = hafs_core::session::ExpiryTracker::default();
    let expiry = std::time::Duration::from_secs(30);
    let sweep = tracker.sweep(&t.db, &t.keys, clock.as_ref(), expiry, None);
    assert_eq!(sweep.await.unwrap(), Vec::<String>::new());
    assert_eq!(tracker.longest_published(), std::time::Duration::ZERO);
    let listed = hafs_core::session::list_clients(&t.db, &t.keys).await;
    assert_eq!(listed.unwrap()[0].info.expiry, std::time::Duration::ZERO);
}

/// Every stored value of a small tree, replaced in turn by each of several
/// kinds of garbage: no operation and no fsck may panic, and damage to an
/// attribute or entry must surface as `Corrupted` from some operation or as
/// an fsck violation (a flip can decode to another valid value).
#[tokio::test]
async fn no_damaged_value_makes_anything_panic() {
    let t = tree().await;
    let root = Caller::root();
    t.fs.write(
        &root,
        t.file,
        hafs_core::ops::write::WriteAt::Append,
        &[7u8; 9000],
    )
    .await
    .unwrap();
    t.fs.setxattr(&root, t.file, b"user.k", b"v", 0)
        .await
        .unwrap();
    let (begin, end) = t.keys.all();
    let txn = t.db.begin().await.unwrap();
    let all = txn
        .get_range(&begin, &end, Default::default())
        .await
        .unwrap()
        .kvs;
    drop(txn);
    let mut corrupted_seen = 0;
    for (key, good) in &all {
        let mut flipped = good.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 0xff;
        }
        let truncated = good[..good.len() / 2].to_vec();
        let long = vec![0xabu8; 5000];
        for bad in [
            Vec::new(),
            truncated,
            flipped,
            long,
            b"\x15\x01\xff".to_vec(),
        ] {
            raw(&t.db, |txn| txn.set(key, &bad)).await;
            let mut results = Vec::new();
            for ino in [ROOT_INO, t.dir, t.sub, t.file, t.vol] {
                results.push(t.fs.getattr(&root, ino).await.err());
                results.push(t.fs.readdir(&root, ino, None, 100).await.err());
                results.push(t.fs.read(&root, ino, 0, 20_000).await.err());
                results.push(t.fs.listxattr(&root, ino).await.err());
                results.push(t.fs.getxattr(&root, ino, b"hafs.totals").await.err());
            }
            results.push(t.fs.lookup(&root, t.dir, b"link").await.err());
            results.push(t.fs.lookup(&root, t.sub, b"file").await.err());
            results.push(t.fs.statfs(&root).await.err());
            let fsck_clean = check_invariants(&t.db, "fs", |_| {})
                .await
                .is_ok_and(|r| r.is_clean());
            let kind = t.keys.inode_key_kind(key).map(|(_, kind)| kind);
            if matches!(kind.as_deref(), Some("attr") | Some("dirent")) {
                let eio = results
                    .iter()
                    .flatten()
                    .any(|e| matches!(e, FsError::Corrupted(_)));
                assert!(
                    eio || !fsck_clean,
                    "damaged {kind:?} value {bad:?} went unnoticed by operations and fsck"
                );
                corrupted_seen += 1;
            }
            raw(&t.db, |txn| txn.set(key, good)).await;
        }
    }
    assert!(corrupted_seen > 20, "too few attr/dirent keys damaged");
    assert!(problems(&t).await.is_empty());
}
