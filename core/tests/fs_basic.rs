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

/// Set-ID bits, as the kernel clears them before a non-owner's truncate or
/// write: it sends the new mode with the size, as the writer. Linux allows
/// that to anyone who may write the file; any other mode change by a
/// non-owner stays EPERM.
#[tokio::test]
async fn a_writer_who_is_not_the_owner_may_clear_set_id_bits_only() {
    use hafs_core::ops::setattr::SetAttr;
    let fs = new_fs().await;
    let (owner, writer) = (Caller::user(1000, 1000), Caller::user(2000, 2000));
    let f = fs
        .create(&owner, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    let mode = |m: u32| SetAttr {
        mode: Some(m),
        ..SetAttr::default()
    };
    fs.setattr(&owner, f.ino, mode(0o4776 | libc::S_ISGID))
        .await
        .unwrap();
    let truncate = SetAttr {
        size: Some(0),
        mode: Some(0o776),
        ..SetAttr::default()
    };
    let done = fs.setattr(&writer, f.ino, truncate.clone()).await.unwrap();
    assert_eq!(done.mode & 0o7777, 0o776);
    assert_eq!(
        fs.setattr(&writer, f.ino, mode(0o777)).await,
        Err(FsError::Perm),
        "a non-owner changed permission bits"
    );
    fs.setattr(&owner, f.ino, mode(0o4744)).await.unwrap();
    assert_eq!(
        fs.setattr(&writer, f.ino, mode(0o744)).await,
        Err(FsError::Perm),
        "a non-owner who may not write cleared set-user-ID"
    );
}

/// `touch -a` (atime now, mtime left alone) needs the owner, as on Linux;
/// both times to now is a touch that write permission allows; a truncate
/// by a writer carries mtime "now" alone and is allowed.
#[tokio::test]
async fn only_both_times_to_now_is_a_touch_for_writers() {
    use hafs_core::ops::setattr::{SetAttr, TimeSet};
    let fs = new_fs().await;
    let (owner, writer) = (Caller::user(1000, 1000), Caller::user(2000, 2000));
    let f = fs
        .create(&owner, ROOT_INO, b"f", 0o666, true, perm::WRITE)
        .await
        .unwrap();
    let times = |atime, mtime| SetAttr {
        atime,
        mtime,
        ..SetAttr::default()
    };
    let now = Some(TimeSet::Now);
    fs.setattr(&writer, f.ino, times(now, now)).await.unwrap();
    assert_eq!(
        fs.setattr(&writer, f.ino, times(now, None)).await,
        Err(FsError::Perm)
    );
    assert_eq!(
        fs.setattr(&writer, f.ino, times(None, now)).await,
        Err(FsError::Perm)
    );
    fs.setattr(&owner, f.ino, times(now, None)).await.unwrap();
    let truncate = SetAttr {
        size: Some(0),
        mtime: now,
        ..SetAttr::default()
    };
    fs.setattr(&writer, f.ino, truncate).await.unwrap();
}

/// `O_CREAT|O_TRUNC` on a name another mount created after this kernel's
/// lookup: the create finds the file, and must truncate it and check write
/// permission as `open` would (the kernel believes it created the file and
/// does neither).
#[tokio::test]
async fn create_with_o_trunc_of_an_existing_file_truncates_it() {
    use hafs_core::ops::write::WriteAt;
    let fs = new_fs().await;
    let (owner, other) = (Caller::user(1000, 1000), Caller::user(2000, 2000));
    let f = fs
        .create(&owner, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    fs.write(&owner, f.ino, WriteAt::Offset(0), b"longer contents")
        .await
        .unwrap();
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
    let opened = fs
        .create_open(&owner, ROOT_INO, b"f", 0o644, flags)
        .await
        .unwrap();
    assert_eq!(opened.ino, f.ino);
    assert_eq!(opened.size, 0);
    assert_eq!(fs.getattr(&owner, f.ino).await.unwrap().size, 0);
    fs.release(&owner, f.ino).await.unwrap();
    fs.write(&owner, f.ino, WriteAt::Offset(0), b"kept")
        .await
        .unwrap();
    let read_only = libc::O_CREAT | libc::O_RDONLY | libc::O_TRUNC;
    assert_eq!(
        fs.create_open(&other, ROOT_INO, b"f", 0o644, read_only)
            .await,
        Err(FsError::Access),
        "O_TRUNC without write permission"
    );
    assert_eq!(fs.getattr(&owner, f.ino).await.unwrap().size, 4);
}

/// The set-ID clearing a writer may do is the kernel's: not set-group-ID
/// of a file without group execute, and nothing on a directory (a group
/// member's `chmod g-s` of a shared setgid directory stays EPERM).
#[tokio::test]
async fn a_writer_may_not_clear_what_the_kernel_would_not() {
    use hafs_core::ops::setattr::SetAttr;
    let fs = new_fs().await;
    let (owner, member) = (Caller::user(1000, 1000), Caller::user(2000, 1000));
    let mode = |m: u32| SetAttr {
        mode: Some(m),
        ..SetAttr::default()
    };
    let d = fs.mkdir(&owner, ROOT_INO, b"shared", 0o775).await.unwrap();
    fs.setattr(&owner, d.ino, mode(0o2775)).await.unwrap();
    assert_eq!(
        fs.setattr(&member, d.ino, mode(0o775)).await,
        Err(FsError::Perm)
    );
    let f = fs
        .create(&owner, ROOT_INO, b"f", 0o664, true, perm::WRITE)
        .await
        .unwrap();
    fs.setattr(&owner, f.ino, mode(0o2664)).await.unwrap();
    assert_eq!(
        fs.setattr(&member, f.ino, mode(0o664)).await,
        Err(FsError::Perm),
        "set-group-ID without group execute is not the kernel's to clear"
    );
    fs.setattr(&owner, f.ino, mode(0o2674)).await.unwrap();
    fs.setattr(&member, f.ino, mode(0o674)).await.unwrap();
}
