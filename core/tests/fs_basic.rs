//! Namespace basics on the `mem` backend: each operation's result and
//! errno, as a local Linux filesystem gives them.

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::Database;
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

#[tokio::test]
async fn create_lookup_readdir() {
    let fs = new_fs().await;
    let root = Caller::root();
    let dir = fs.mkdir(&root, ROOT_INO, b"d", 0o755).await.unwrap();
    assert!(dir.is_dir());
    assert_eq!(fs.getattr(&root, ROOT_INO).await.unwrap().nlink, 3);
    let file = fs
        .create(&root, dir.ino, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    assert_eq!(fs.lookup(&root, dir.ino, b"f").await.unwrap(), file);
    assert_eq!(
        fs.lookup(&root, dir.ino, b"..").await.unwrap().ino,
        ROOT_INO
    );
    let page = fs.readdir(&root, dir.ino, None, 100).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].0, b"f");
    assert!(!page.more);
    let link = fs.symlink(&root, dir.ino, b"l", b"f").await.unwrap();
    assert_eq!(fs.readlink(&root, link.ino).await.unwrap(), b"f");
    assert_eq!(fs.readlink(&root, file.ino).await, Err(FsError::Invalid));
}

#[tokio::test]
async fn errors_match_linux() {
    let fs = new_fs().await;
    let root = Caller::root();
    let user = Caller::user(1000, 1000);
    let file = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    let errno = |r: Result<_, FsError>| r.map(|_| ()).unwrap_err().errno();
    assert_eq!(
        errno(
            fs.create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
                .await
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.mkdir(&root, ROOT_INO, b"f", 0o755).await),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.lookup(&root, ROOT_INO, b"missing").await),
        libc::ENOENT
    );
    assert_eq!(errno(fs.lookup(&root, file.ino, b"x").await), libc::ENOTDIR);
    assert_eq!(
        errno(fs.mkdir(&root, ROOT_INO, &[b'a'; 256], 0o755).await),
        libc::ENAMETOOLONG
    );
    assert!(fs.mkdir(&root, ROOT_INO, &[b'a'; 255], 0o755).await.is_ok());
    assert_eq!(
        errno(fs.mkdir(&root, ROOT_INO, b"a/b", 0o755).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.mkdir(&root, ROOT_INO, b".", 0o755).await),
        libc::EEXIST
    );
    // A user cannot create in a 0755 directory owned by root.
    let private = fs.mkdir(&root, ROOT_INO, b"private", 0o755).await.unwrap();
    assert_eq!(
        errno(fs.mkdir(&user, private.ino, b"x", 0o755).await),
        libc::EACCES
    );
    assert_eq!(
        errno(
            fs.mknod(&user, ROOT_INO, b"dev", libc::S_IFCHR | 0o600, 0x0101)
                .await
        ),
        libc::EPERM
    );
    // Without search permission, lookup is refused.
    let closed = fs.mkdir(&root, ROOT_INO, b"closed", 0o700).await.unwrap();
    assert_eq!(
        errno(fs.lookup(&user, closed.ino, b"x").await),
        libc::EACCES
    );
}

#[tokio::test]
async fn new_files_take_the_callers_identity_and_setgid_group() {
    let fs = new_fs().await;
    let root = Caller::root();
    let user = Caller::user(1000, 1000);
    let shared = fs
        .mkdir(&root, ROOT_INO, b"shared", 0o777 | libc::S_ISGID)
        .await
        .unwrap();
    let file = fs
        .create(&user, shared.ino, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    assert_eq!(
        (file.uid, file.gid),
        (1000, 0),
        "setgid directory gives its group"
    );
    let sub = fs.mkdir(&user, shared.ino, b"sub", 0o755).await.unwrap();
    assert_ne!(sub.mode & libc::S_ISGID, 0, "subdirectories inherit setgid");
}
