//! Extended attributes, subvolume totals, statfs and access: results and
//! errno as Linux gives them.

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::Database;
use hafs_core::ops::xattr::{XATTR_CREATE, XATTR_REPLACE};
use hafs_core::perm;

async fn new_fs() -> Fs {
    let clock = ManualClock::new();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 7);
    let options = MkfsOptions {
        root_mode: 0o777,
        ..MkfsOptions::default()
    };
    mkfs(&db, "fs", options).await.expect("mkfs");
    Fs::open(db, "fs", "c1", FsOptions::default())
        .await
        .expect("open")
}

fn errno<T>(r: Result<T, FsError>) -> i32 {
    r.map(|_| ()).unwrap_err().errno()
}

#[tokio::test]
async fn set_get_list_remove_with_flags() {
    let fs = new_fs().await;
    let root = Caller::root();
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    fs.setxattr(&root, f.ino, b"user.a", b"1", 0).await.unwrap();
    assert_eq!(fs.getxattr(&root, f.ino, b"user.a").await.unwrap(), b"1");
    assert_eq!(
        errno(
            fs.setxattr(&root, f.ino, b"user.a", b"2", XATTR_CREATE)
                .await
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno(
            fs.setxattr(&root, f.ino, b"user.b", b"2", XATTR_REPLACE)
                .await
        ),
        libc::ENODATA
    );
    fs.setxattr(&root, f.ino, b"user.a", b"3", XATTR_REPLACE)
        .await
        .unwrap();
    assert_eq!(fs.getxattr(&root, f.ino, b"user.a").await.unwrap(), b"3");
    fs.setxattr(&root, f.ino, b"trusted.t", b"x", 0)
        .await
        .unwrap();
    assert_eq!(
        fs.listxattr(&root, f.ino).await.unwrap(),
        vec![b"trusted.t".to_vec(), b"user.a".to_vec()]
    );
    fs.removexattr(&root, f.ino, b"user.a").await.unwrap();
    assert_eq!(
        errno(fs.getxattr(&root, f.ino, b"user.a").await),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.removexattr(&root, f.ino, b"user.a").await),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.setxattr(&root, f.ino, b"nonamespace", b"", 0).await),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(
            fs.setxattr(&root, f.ino, b"user.big", &vec![0; 65537], 0)
                .await
        ),
        libc::E2BIG
    );
    let long = [b"user.".to_vec(), vec![b'n'; 251]].concat();
    assert_eq!(
        errno(fs.setxattr(&root, f.ino, &long, b"", 0).await),
        libc::ERANGE
    );
}

#[tokio::test]
async fn namespaces_follow_linux_permissions() {
    let fs = new_fs().await;
    let root = Caller::root();
    let user = Caller::user(1000, 1000);
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    fs.setxattr(&root, f.ino, b"trusted.t", b"x", 0)
        .await
        .unwrap();
    assert_eq!(
        errno(fs.setxattr(&user, f.ino, b"user.a", b"1", 0).await),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.setxattr(&user, f.ino, b"trusted.a", b"1", 0).await),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.getxattr(&user, f.ino, b"trusted.t").await),
        libc::ENODATA
    );
    assert!(
        fs.listxattr(&user, f.ino).await.unwrap().is_empty(),
        "trusted.* hidden from users"
    );
    let link = fs.symlink(&root, ROOT_INO, b"l", b"f").await.unwrap();
    assert_eq!(
        errno(fs.setxattr(&root, link.ino, b"user.a", b"1", 0).await),
        libc::EPERM
    );
}

/// Sparse files count their full size: totals past 2^63 bytes are summed
/// wrapping, as the stored shards' atomic adds are, and shown unsigned
/// (exact below 2^64) instead of panicking (a debug build overflowed
/// summing the shards).
#[tokio::test]
async fn subvolume_totals_past_two_to_the_63_do_not_panic() {
    use hafs_core::keys::Counter;
    let fs = new_fs().await;
    let root = Caller::root();
    let vol = fs.mkdir(&root, ROOT_INO, b"vol", 0o755).await.unwrap();
    fs.setxattr(&root, vol.ino, b"hafs.subvolume", b"true", 0)
        .await
        .unwrap();
    let txn = fs.db().begin().await.unwrap();
    for shard in [0, 1] {
        let key = fs.keys().subvolume_counter(vol.ino, shard, Counter::Bytes);
        txn.set(&key, &(i64::MAX - 1).to_le_bytes());
    }
    txn.commit().await.unwrap();
    let totals = fs.getxattr(&root, vol.ino, b"hafs.totals").await.unwrap();
    let expected = format!(r#"{{"bytes":{},"inodes":0}}"#, (i64::MAX as u64 - 1) * 2);
    assert_eq!(String::from_utf8(totals).unwrap(), expected);
}

#[tokio::test]
async fn subvolume_totals_count_everything_under_it() {
    let fs = new_fs().await;
    let root = Caller::root();
    let vol = fs.mkdir(&root, ROOT_INO, b"vol", 0o755).await.unwrap();
    fs.setxattr(&root, vol.ino, b"hafs.subvolume", b"true", 0)
        .await
        .unwrap();
    assert_eq!(
        fs.getxattr(&root, vol.ino, b"hafs.subvolume")
            .await
            .unwrap(),
        b"true"
    );
    let totals = || async {
        String::from_utf8(fs.getxattr(&root, vol.ino, b"hafs.totals").await.unwrap()).unwrap()
    };
    assert_eq!(totals().await, r#"{"bytes":0,"inodes":0}"#);
    let sub = fs.mkdir(&root, vol.ino, b"sub", 0o755).await.unwrap();
    fs.create(&root, sub.ino, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    fs.symlink(&root, sub.ino, b"l", b"0123456789")
        .await
        .unwrap();
    fs.create(&root, ROOT_INO, b"outside", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    assert_eq!(totals().await, r#"{"bytes":10,"inodes":3}"#);
    // Only empty directories become subvolumes, and they do not nest.
    let full = fs.mkdir(&root, ROOT_INO, b"full", 0o755).await.unwrap();
    fs.mkdir(&root, full.ino, b"x", 0o755).await.unwrap();
    assert_eq!(
        errno(
            fs.setxattr(&root, full.ino, b"hafs.subvolume", b"true", 0)
                .await
        ),
        libc::ENOTEMPTY
    );
    let inner = fs.mkdir(&root, vol.ino, b"inner", 0o755).await.unwrap();
    assert_eq!(
        errno(
            fs.setxattr(&root, inner.ino, b"hafs.subvolume", b"1", 0)
                .await
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.setxattr(&root, vol.ino, b"hafs.totals", b"{}", 0).await),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.getxattr(&root, ROOT_INO, b"hafs.totals").await),
        libc::ENODATA
    );
}

#[tokio::test]
async fn access_and_statfs() {
    let fs = new_fs().await;
    let root = Caller::root();
    let user = Caller::user(1000, 1000);
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o640, true, perm::WRITE)
        .await
        .unwrap();
    assert!(fs
        .access(&root, f.ino, perm::READ | perm::WRITE)
        .await
        .is_ok());
    assert_eq!(
        errno(fs.access(&root, f.ino, perm::EXEC).await),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.access(&user, f.ino, perm::READ).await),
        libc::EACCES
    );
    assert!(fs.access(&user, f.ino, 0).await.is_ok());
    let st = fs.statfs(&root).await.unwrap();
    assert_eq!(st.name_max, 255);
    assert!(st.blocks > 0 && st.blocks_free <= st.blocks);
}
