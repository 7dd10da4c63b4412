//! File contents: writes at offsets and appends, holes, truncate and extend,
//! fallocate, setattr's permission rules, writes split over several
//! transactions, and an unlinked file that stays usable while open on
//! another client. Each check compares with what Linux does; fsck runs at
//! the end of each test, so chunks left beyond a file's size fail it.

use std::sync::Arc;
use std::time::Duration;

use hafs_core::clock::ManualClock;
use hafs_core::ctx::{Caller, FsOptions, DEFAULT_UNLINK_GRACE_NS};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::{Database, RangeOptions};
use hafs_core::ops::fallocate::{KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE};
use hafs_core::ops::setattr::{SetAttr, TimeSet};
use hafs_core::ops::write::{WriteAt, WRITE_TRANSACTION_BYTES};
use hafs_core::perm;
use hafs_core::session::sweep_unlinked;

const CHUNK: u64 = 1024;

async fn new_db() -> Database {
    new_db_and_clock().await.0
}

async fn new_db_and_clock() -> (Database, Arc<ManualClock>) {
    let clock = ManualClock::new();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock.clone(), 7);
    let options = MkfsOptions {
        root_mode: 0o777,
        chunk_size: CHUNK,
        ..MkfsOptions::default()
    };
    mkfs(&db, "fs", options).await.expect("mkfs");
    (db, clock)
}

async fn client(db: &Database, id: &str) -> Fs {
    Fs::open(db.clone(), "fs", id, FsOptions::default())
        .await
        .expect("open")
}

/// A new file `f` in the root, created by `fs`; its inode.
async fn new_file(fs: &Fs) -> u64 {
    let root = Caller::root();
    let made = fs.create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE);
    made.await.unwrap().ino
}

async fn assert_clean(db: &Database) {
    let report = check_invariants(db, "fs", |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
}

/// How many chunk keys inode `ino` has.
async fn chunk_count(fs: &Fs, ino: u64) -> usize {
    let (begin, end) = fs.keys().chunks_from(ino, 0);
    let txn = fs.db().begin().await.unwrap();
    let page = txn
        .get_range(&begin, &end, RangeOptions::default())
        .await
        .unwrap();
    page.kvs.len()
}

#[tokio::test]
async fn writes_reads_holes_and_appends() {
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let root = Caller::root();
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    // A write that straddles a chunk boundary, then one far past the end.
    let first: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8 + 1).collect();
    assert_eq!(
        fs.write(&root, f.ino, WriteAt::Offset(100), &first)
            .await
            .unwrap(),
        1500
    );
    assert_eq!(
        fs.write(&root, f.ino, WriteAt::Offset(10 * CHUNK), b"tail")
            .await
            .unwrap(),
        4
    );
    let size = 10 * CHUNK + 4;
    assert_eq!(fs.getattr(&root, f.ino).await.unwrap().size, size);
    let all = fs.read(&root, f.ino, 0, 1 << 20).await.unwrap();
    let mut expect = vec![0u8; size as usize];
    expect[100..1600].copy_from_slice(&first);
    expect[10 * CHUNK as usize..].copy_from_slice(b"tail");
    assert_eq!(all, expect);
    // Chunks 0, 1 and 10 exist; the hole between them stores nothing.
    assert_eq!(chunk_count(&fs, f.ino).await, 3);
    // Reads at and past EOF are short.
    assert_eq!(fs.read(&root, f.ino, size - 2, 10).await.unwrap(), b"il");
    assert!(fs
        .read(&root, f.ino, size + 5, 10)
        .await
        .unwrap()
        .is_empty());
    // Overwrite in the middle, then append.
    fs.write(&root, f.ino, WriteAt::Offset(1000), b"XYZ")
        .await
        .unwrap();
    fs.write(&root, f.ino, WriteAt::Append, b"++")
        .await
        .unwrap();
    let all = fs.read(&root, f.ino, 0, 1 << 20).await.unwrap();
    expect[1000..1003].copy_from_slice(b"XYZ");
    expect.extend_from_slice(b"++");
    assert_eq!(all, expect);
    // Reading a directory is EISDIR.
    assert_eq!(fs.read(&root, ROOT_INO, 0, 10).await, Err(FsError::IsDir));
    assert_clean(&db).await;
}

#[tokio::test]
async fn truncate_frees_chunks_and_extending_reads_zeros() {
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let root = Caller::root();
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    fs.write(
        &root,
        f.ino,
        WriteAt::Offset(0),
        &vec![7u8; 5 * CHUNK as usize],
    )
    .await
    .unwrap();
    assert_eq!(chunk_count(&fs, f.ino).await, 5);
    let shrink = SetAttr {
        size: Some(CHUNK + 10),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(&root, f.ino, shrink).await.unwrap().size,
        CHUNK + 10
    );
    assert_eq!(chunk_count(&fs, f.ino).await, 2);
    // Extending again must not resurrect the old bytes.
    let grow = SetAttr {
        size: Some(3 * CHUNK),
        ..SetAttr::default()
    };
    fs.setattr(&root, f.ino, grow).await.unwrap();
    let all = fs.read(&root, f.ino, 0, 1 << 20).await.unwrap();
    assert_eq!(all.len(), 3 * CHUNK as usize);
    assert!(all[..(CHUNK + 10) as usize].iter().all(|&b| b == 7));
    assert!(all[(CHUNK + 10) as usize..].iter().all(|&b| b == 0));
    // Truncating a directory is EISDIR.
    let on_dir = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(&root, ROOT_INO, on_dir).await,
        Err(FsError::IsDir)
    );
    assert_clean(&db).await;
}

#[tokio::test]
async fn fallocate_modes() {
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let root = Caller::root();
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    fs.fallocate(&root, f.ino, 0, 0, 4 * CHUNK).await.unwrap();
    assert_eq!(fs.getattr(&root, f.ino).await.unwrap().size, 4 * CHUNK);
    fs.fallocate(&root, f.ino, KEEP_SIZE, 0, 8 * CHUNK)
        .await
        .unwrap();
    assert_eq!(fs.getattr(&root, f.ino).await.unwrap().size, 4 * CHUNK);
    fs.write(
        &root,
        f.ino,
        WriteAt::Offset(0),
        &vec![1u8; 4 * CHUNK as usize],
    )
    .await
    .unwrap();
    // Punch [CHUNK/2, 3*CHUNK + 1): one partial chunk at each end.
    let (from, to) = (CHUNK / 2, 3 * CHUNK + 1);
    fs.fallocate(&root, f.ino, PUNCH_HOLE | KEEP_SIZE, from, to - from)
        .await
        .unwrap();
    let all = fs.read(&root, f.ino, 0, 1 << 20).await.unwrap();
    for (i, &b) in all.iter().enumerate() {
        let punched = (from..to).contains(&(i as u64));
        assert_eq!(b, if punched { 0 } else { 1 }, "byte {i}");
    }
    assert_eq!(chunk_count(&fs, f.ino).await, 2);
    // ZERO_RANGE without KEEP_SIZE extends.
    fs.fallocate(&root, f.ino, ZERO_RANGE, 4 * CHUNK - 2, 10)
        .await
        .unwrap();
    assert_eq!(fs.getattr(&root, f.ino).await.unwrap().size, 4 * CHUNK + 8);
    let errno = |r: Result<(), FsError>| r.unwrap_err().errno();
    assert_eq!(
        errno(fs.fallocate(&root, f.ino, PUNCH_HOLE, 0, 1).await),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(fs.fallocate(&root, f.ino, 0, 0, 0).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.fallocate(&root, ROOT_INO, 0, 0, 1).await),
        libc::EISDIR
    );
    assert_clean(&db).await;
}

/// chown and chgrp drop set-group-ID without group execute when the
/// caller is outside the group the file had (Linux 6.2 on), as the kernel's
/// FUSE path leaves to hafs; the mode the kernel sends with the change (its
/// own clearing of set-user-ID, computed before) must not bring it back.
/// A member and root keep it.
#[tokio::test]
async fn a_chgrp_from_outside_the_group_drops_set_group_id() {
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let root = Caller::root();
    let f = new_file(&fs).await;
    let outsider = Caller::user(1000, 1000);
    let member = Caller {
        groups: vec![500].into(),
        ..Caller::user(1000, 1000)
    };
    for (who, kernel_mode, want) in [
        (&outsider, None, 0o666),
        (&outsider, Some(0o2666), 0o666),
        (&member, Some(0o2666), 0o2666),
        (&root, Some(0o2666), 0o2666),
    ] {
        let reset = SetAttr {
            mode: Some(0o6666),
            uid: Some(1000),
            gid: Some(500),
            ..SetAttr::default()
        };
        fs.setattr(&root, f, reset).await.unwrap();
        fs.setattr(&root, f, mode_only(0o6666)).await.unwrap();
        let chgrp = SetAttr {
            gid: Some(1000),
            mode: kernel_mode,
            ..SetAttr::default()
        };
        let done = fs.setattr(who, f, chgrp).await.unwrap();
        assert_eq!(
            done.mode & 0o7777,
            want,
            "chgrp by {who:?}, mode {kernel_mode:?}"
        );
    }
    assert_clean(&db).await;
}

fn mode_only(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

/// Every mode, even one that changes neither size nor contents (an
/// allocation within the size, a hole punched past it), is a change of the
/// file, as Linux's `file_modified` makes it on ext4 and tmpfs: new mtime
/// and ctime, set-group-ID dropped for a caller outside the file's group.
#[tokio::test]
async fn every_fallocate_mode_changes_the_times_and_drops_set_ids() {
    let (db, clock) = new_db_and_clock().await;
    let fs = client(&db, "c1").await;
    let root = Caller::root();
    let f = new_file(&fs).await;
    fs.write(&root, f, WriteAt::Offset(0), &[1u8; 100])
        .await
        .unwrap();
    let outsider = Caller::user(2000, 2000);
    let modes = [
        (0, 0, 10),
        (KEEP_SIZE, 0, 10),
        (KEEP_SIZE, 5 * CHUNK, 10),
        (PUNCH_HOLE | KEEP_SIZE, 5 * CHUNK, 10),
        (ZERO_RANGE | KEEP_SIZE, 5 * CHUNK, 10),
    ];
    for (mode, offset, len) in modes {
        let reset = SetAttr {
            mode: Some(0o6666),
            gid: Some(500),
            ..SetAttr::default()
        };
        let before = fs.setattr(&root, f, reset).await.unwrap();
        clock.advance(Duration::from_secs(1));
        fs.fallocate(&outsider, f, mode, offset, len).await.unwrap();
        let after = fs.getattr(&root, f).await.unwrap();
        assert!(after.mtime_ns > before.mtime_ns, "mtime, mode {mode:#x}");
        assert!(after.ctime_ns > before.ctime_ns, "ctime, mode {mode:#x}");
        assert_eq!(after.mode & 0o7777, 0o666, "set-ID bits, mode {mode:#x}");
        assert_eq!(after.size, 100, "size, mode {mode:#x}");
    }
    assert_clean(&db).await;
}

#[tokio::test]
async fn setattr_permission_rules() {
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let root = Caller::root();
    let owner = Caller {
        groups: vec![200].into(),
        ..Caller::user(1000, 1000)
    };
    let other = Caller::user(2000, 2000);
    let f = fs
        .create(&owner, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    let errno = |r: Result<hafs_core::codec::Attr, FsError>| r.unwrap_err().errno();
    assert_eq!(
        errno(fs.setattr(&other, f.ino, mode_only(0o777)).await),
        libc::EPERM
    );
    // The owner may chmod, and set-group-ID is dropped outside the group.
    let changed = fs.setattr(&owner, f.ino, mode_only(0o6755)).await.unwrap();
    assert_eq!(changed.mode & 0o7777, 0o6755);
    let chgrp = |gid| SetAttr {
        gid: Some(gid),
        ..SetAttr::default()
    };
    // chgrp to a group the owner is in; chown clears set-uid/set-gid(+x).
    let changed = fs.setattr(&owner, f.ino, chgrp(200)).await.unwrap();
    assert_eq!((changed.gid, changed.mode & 0o7777), (200, 0o755));
    assert_eq!(
        errno(fs.setattr(&owner, f.ino, chgrp(300)).await),
        libc::EPERM
    );
    let chown = SetAttr {
        uid: Some(3000),
        ..SetAttr::default()
    };
    assert_eq!(
        errno(fs.setattr(&owner, f.ino, chown.clone()).await),
        libc::EPERM
    );
    assert_eq!(fs.setattr(&root, f.ino, chown).await.unwrap().uid, 3000);
    // Now owned by 3000, mode 0755: 1000 may neither truncate nor set times.
    let trunc = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(&owner, f.ino, trunc).await), libc::EACCES);
    let now = SetAttr {
        atime: Some(TimeSet::Now),
        mtime: Some(TimeSet::Now),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(&owner, f.ino, now).await), libc::EACCES);
    let explicit = SetAttr {
        mtime: Some(TimeSet::At(42)),
        ..SetAttr::default()
    };
    assert_eq!(
        errno(fs.setattr(&owner, f.ino, explicit.clone()).await),
        libc::EPERM
    );
    assert_eq!(
        fs.setattr(&root, f.ino, explicit).await.unwrap().mtime_ns,
        42
    );
    // An unprivileged write clears set-user-ID.
    fs.setattr(&root, f.ino, mode_only(0o4777)).await.unwrap();
    fs.write(&other, f.ino, WriteAt::Append, b"x")
        .await
        .unwrap();
    assert_eq!(fs.getattr(&root, f.ino).await.unwrap().mode & 0o7777, 0o777);
    assert_clean(&db).await;
}

/// Linux drops a file's capabilities on every write, root's too; hafs's
/// writers are direct I/O, where the kernel leaves that to hafs. Other
/// attributes stay.
#[tokio::test]
async fn a_write_drops_the_files_capabilities() {
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let f = new_file(&fs).await;
    let root = Caller::root();
    let user = Caller::user(1000, 1000);
    fs.setattr(
        &root,
        f,
        SetAttr {
            mode: Some(0o666),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for writer in [&root, &user] {
        fs.setxattr(&root, f, b"security.capability", b"\x01\x00\x00\x02", 0)
            .await
            .unwrap();
        fs.setxattr(&root, f, b"user.keep", b"1", 0).await.unwrap();
        fs.write(writer, f, WriteAt::Offset(0), b"new program")
            .await
            .unwrap();
        let gone = fs.getxattr(&root, f, b"security.capability").await;
        assert_eq!(gone.unwrap_err().errno(), libc::ENODATA);
        assert_eq!(fs.getxattr(&root, f, b"user.keep").await.unwrap(), b"1");
    }
    assert_clean(&db).await;
}

async fn mode_of(fs: &Fs, ino: u64) -> u32 {
    fs.getattr(&Caller::root(), ino).await.unwrap().mode & 0o7777
}

/// Set-group-ID without group execute is dropped by a write or truncate
/// of someone outside the file's group (Linux 6.2 on; tmpfs here does
/// it), kept for a member; root keeps every bit. The file is root's, mode
/// 02666, group 500.
#[tokio::test]
async fn a_writer_outside_the_group_drops_set_group_id() {
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let f = new_file(&fs).await;
    let root = Caller::root();
    let reset = SetAttr {
        mode: Some(0o2666),
        gid: Some(500),
        ..SetAttr::default()
    };
    let member = Caller {
        groups: vec![500].into(),
        ..Caller::user(1000, 1000)
    };
    let outsider = Caller::user(2000, 2000);
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    for (who, kept) in [(&root, true), (&member, true), (&outsider, false)] {
        fs.setattr(&root, f, reset.clone()).await.unwrap();
        fs.write(who, f, WriteAt::Append, b"x").await.unwrap();
        let want = if kept { 0o2666 } else { 0o666 };
        assert_eq!(mode_of(&fs, f).await, want, "write by {}", who.uid);
        fs.setattr(&root, f, reset.clone()).await.unwrap();
        fs.setattr(who, f, truncate.clone()).await.unwrap();
        assert_eq!(mode_of(&fs, f).await, want, "truncate by {}", who.uid);
    }
    assert_clean(&db).await;
}

/// As Linux's `generic_write_checks`: a write crossing the largest file
/// size stores what fits (a short write); one starting there gets EFBIG.
#[tokio::test]
async fn a_write_crossing_the_largest_size_is_short() {
    use hafs_core::ops::data::FILE_BYTES_MAX;
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let f = new_file(&fs).await;
    let root = Caller::root();
    let wrote = fs.write(&root, f, WriteAt::Offset(FILE_BYTES_MAX - 3), b"abcdefgh");
    assert_eq!(wrote.await.unwrap(), 3);
    assert_eq!(fs.getattr(&root, f).await.unwrap().size, FILE_BYTES_MAX);
    let read = fs.read(&root, f, FILE_BYTES_MAX - 3, 100).await.unwrap();
    assert_eq!(read, b"abc");
    let at_max = fs
        .write(&root, f, WriteAt::Offset(FILE_BYTES_MAX), b"x")
        .await;
    assert_eq!(at_max.unwrap_err().errno(), libc::EFBIG);
    let append = fs.write(&root, f, WriteAt::Append, b"x").await;
    assert_eq!(append.unwrap_err().errno(), libc::EFBIG);
    assert_clean(&db).await;
}

#[tokio::test]
async fn big_writes_split_into_consistent_transactions() {
    let db = new_db().await;
    let fs = client(&db, "c1").await;
    let root = Caller::root();
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    let len = 2 * WRITE_TRANSACTION_BYTES + 12_345;
    let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8 + 1).collect();
    assert_eq!(
        fs.write(&root, f.ino, WriteAt::Append, &bytes)
            .await
            .unwrap(),
        len as u64
    );
    assert_eq!(
        fs.read(&root, f.ino, 0, len as u32 + 10).await.unwrap(),
        bytes
    );
    assert_clean(&db).await;
}

#[tokio::test]
async fn unlinked_file_lives_until_the_last_close_on_every_client() {
    let (db, clock) = new_db_and_clock().await;
    let a = client(&db, "a").await;
    let b = client(&db, "b").await;
    let root = Caller::root();
    let f = a
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    a.write(&root, f.ino, WriteAt::Append, b"data")
        .await
        .unwrap();
    b.open_file(&root, f.ino, libc::O_RDWR).await.unwrap();
    b.open_file(&root, f.ino, libc::O_RDONLY).await.unwrap();
    a.unlink(&root, ROOT_INO, b"f").await.unwrap();
    assert_eq!(
        a.lookup(&root, ROOT_INO, b"f").await,
        Err(FsError::NotFound)
    );
    // Still readable and writable through b's open handles.
    b.write(&root, f.ino, WriteAt::Append, b"+more")
        .await
        .unwrap();
    assert_eq!(b.read(&root, f.ino, 0, 100).await.unwrap(), b"data+more");
    assert_eq!(a.getattr(&root, f.ino).await.unwrap().nlink, 0);
    assert_clean(&db).await;
    b.release(&root, f.ino).await.unwrap();
    assert!(b.getattr(&root, f.ino).await.is_ok(), "one open remains");
    b.release(&root, f.ino).await.unwrap();
    assert!(b.open_table().is_empty());
    // Closed everywhere, but still parked: the unlink grace is not over.
    assert_eq!(sweep_unlinked(&db, a.keys()).await.unwrap(), 0);
    assert_eq!(b.getattr(&root, f.ino).await.unwrap().nlink, 0);
    clock.advance(Duration::from_nanos(DEFAULT_UNLINK_GRACE_NS as u64 + 1));
    assert_eq!(sweep_unlinked(&db, a.keys()).await.unwrap(), 1);
    assert_eq!(b.getattr(&root, f.ino).await, Err(FsError::NotFound));
    assert_clean(&db).await;
    // Open checks permissions; opening a directory for writing is EISDIR.
    let user = Caller::user(1000, 1000);
    let g = a
        .create(&root, ROOT_INO, b"g", 0o600, true, perm::WRITE)
        .await
        .unwrap();
    let errno = |r: Result<hafs_core::codec::Attr, FsError>| r.unwrap_err().errno();
    assert_eq!(
        errno(a.open_file(&user, g.ino, libc::O_RDONLY).await),
        libc::EACCES
    );
    assert_eq!(
        errno(a.open_file(&root, ROOT_INO, libc::O_RDWR).await),
        libc::EISDIR
    );
    assert!(a.open_table().is_empty());
}

/// The kernel opens a name in two requests, LOOKUP then OPEN; a rename over
/// the name from another client may land between them. The replaced inode
/// stays openable for the unlink grace, so that OPEN succeeds (reading the
/// old contents, as if it had run just before the rename); once the grace
/// is over and a sweep freed it, the inode is gone.
#[tokio::test]
async fn a_replaced_file_stays_openable_for_the_grace() {
    let (db, clock) = new_db_and_clock().await;
    let a = client(&db, "a").await;
    let b = client(&db, "b").await;
    let root = Caller::root();
    let old = a
        .create(&root, ROOT_INO, b"config", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    a.write(&root, old.ino, WriteAt::Append, b"v1")
        .await
        .unwrap();
    // b looks the name up ...
    let seen = b.lookup(&root, ROOT_INO, b"config").await.unwrap();
    // ... a replaces it ...
    let new = a
        .create(&root, ROOT_INO, b"config.tmp", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    a.write(&root, new.ino, WriteAt::Append, b"v2")
        .await
        .unwrap();
    a.rename(&root, ROOT_INO, b"config.tmp", ROOT_INO, b"config", 0)
        .await
        .unwrap();
    // ... and b's open of what it looked up still works, on the old contents.
    b.open_file(&root, seen.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(b.read(&root, seen.ino, 0, 10).await.unwrap(), b"v1");
    assert_clean(&db).await;
    clock.advance(Duration::from_nanos(DEFAULT_UNLINK_GRACE_NS as u64 + 1));
    assert_eq!(
        sweep_unlinked(&db, a.keys()).await.unwrap(),
        0,
        "b has it open"
    );
    b.release(&root, seen.ino).await.unwrap();
    assert_eq!(
        b.getattr(&root, seen.ino).await,
        Err(FsError::NotFound),
        "freed at the last close"
    );
    // Past the grace, a stale open fails.
    let gone = a.lookup(&root, ROOT_INO, b"config").await.unwrap();
    a.unlink(&root, ROOT_INO, b"config").await.unwrap();
    clock.advance(Duration::from_nanos(DEFAULT_UNLINK_GRACE_NS as u64 + 1));
    assert_eq!(sweep_unlinked(&db, a.keys()).await.unwrap(), 1);
    assert_eq!(
        b.open_file(&root, gone.ino, libc::O_RDONLY).await,
        Err(FsError::NotFound)
    );
    assert_clean(&db).await;
    // With no grace, the last unlink frees at once, as on a local filesystem.
    let eager = Fs::open(
        db.clone(),
        "fs",
        "eager",
        FsOptions {
            unlink_grace_ns: 0,
            ..FsOptions::default()
        },
    )
    .await
    .unwrap();
    let f = eager
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    eager.unlink(&root, ROOT_INO, b"f").await.unwrap();
    assert_eq!(eager.getattr(&root, f.ino).await, Err(FsError::NotFound));
    assert_clean(&db).await;
}

/// `open(path, O_CREAT|O_RDWR, 0)` by an ordinary user: the file it just
/// made is opened read-write whatever its mode (one transaction); the same
/// call on the now existing mode-0 file is refused.
#[tokio::test]
async fn create_open_grants_the_creator_its_access() {
    let db = new_db().await;
    let fs = client(&db, "a").await;
    let user = Caller::user(1000, 1000);
    let flags = libc::O_CREAT | libc::O_RDWR;
    let f = fs
        .create_open(&user, ROOT_INO, b"f", 0, flags)
        .await
        .unwrap();
    assert_eq!(f.mode & 0o7777, 0);
    assert_eq!(fs.open_table().len(), 1, "the open is registered");
    assert_eq!(
        fs.create_open(&user, ROOT_INO, b"f", 0, flags).await,
        Err(FsError::Access)
    );
    assert_eq!(
        fs.create_open(&user, ROOT_INO, b"f", 0, flags | libc::O_EXCL)
            .await,
        Err(FsError::Exists)
    );
    fs.release(&user, f.ino).await.unwrap();
    assert!(fs.open_table().is_empty());
    assert_clean(&db).await;
}

/// The second big commit waits (real time) and says so: room for another
/// client to append between two pieces of one large append.
#[derive(Debug, Default)]
struct PauseSecondPiece {
    big_commits: std::sync::atomic::AtomicUsize,
    reached: tokio::sync::Notify,
}

impl hafs_core::kv::fault::FaultPlan for PauseSecondPiece {
    fn on_commit(
        &self,
        request: &hafs_core::kv::CommitRequest,
    ) -> hafs_core::kv::fault::CommitFault {
        use hafs_core::kv::fault::CommitFault;
        if request.mutations.len() < 100 {
            return CommitFault::None;
        }
        let n = self
            .big_commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == 1 {
            self.reached.notify_one();
            return CommitFault::Delay(Duration::from_millis(300));
        }
        CommitFault::None
    }
    fn on_read(&self) -> hafs_core::kv::fault::ReadFault {
        hafs_core::kv::fault::ReadFault::None
    }
}

/// Another client's append that lands between two pieces of a large
/// append is kept: each piece appends where its own transaction finds the
/// end (a later piece once wrote at the offset the earlier one ended at,
/// over the other client's bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_between_two_pieces_of_a_large_append_is_kept() {
    use hafs_core::clock::TokioClock;
    use hafs_core::kv::fault::FaultyBackend;
    let clock = TokioClock::new();
    let plan = Arc::new(PauseSecondPiece::default());
    let mem = Arc::new(MemBackend::new(clock.clone()));
    let db = Database::new(
        Arc::new(FaultyBackend::new(mem, plan.clone(), clock.clone())),
        clock,
        1,
    );
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let (a, b) = (Arc::new(client(&db, "a").await), client(&db, "b").await);
    let root = Caller::root();
    let f = new_file(&a).await;
    let big = vec![b'a'; 2 * WRITE_TRANSACTION_BYTES + 1];
    let appending = {
        let (a, big) = (a.clone(), big.clone());
        tokio::spawn(async move { a.write(&Caller::root(), f, WriteAt::Append, &big).await })
    };
    plan.reached.notified().await;
    b.write(&root, f, WriteAt::Append, b"BBBB").await.unwrap();
    assert_eq!(appending.await.unwrap(), Ok(big.len() as u64));
    let size = b.getattr(&root, f).await.unwrap().size;
    assert_eq!(size, big.len() as u64 + 4, "an append was overwritten");
    let data = b.read(&root, f, 0, size as u32).await.unwrap();
    assert_eq!(data.iter().filter(|&&c| c == b'B').count(), 4);
    assert_clean(&db).await;
}

/// Lets `ok` more write commits through, then times every later one out
/// (a `TimedOut` surfaces; the commit's late attempt, an hour on, is
/// refused by the in-memory KV as too old).
#[derive(Debug)]
struct FailAfter(std::sync::atomic::AtomicU32);

impl hafs_core::kv::fault::FaultPlan for FailAfter {
    fn on_commit(
        &self,
        request: &hafs_core::kv::CommitRequest,
    ) -> hafs_core::kv::fault::CommitFault {
        use std::sync::atomic::Ordering;
        if request.is_read_only() {
            return hafs_core::kv::fault::CommitFault::None;
        }
        let left = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        match left {
            Ok(_) => hafs_core::kv::fault::CommitFault::None,
            Err(_) => {
                hafs_core::kv::fault::CommitFault::TimedOutLandsLater(Duration::from_secs(3600))
            }
        }
    }
    fn on_read(&self) -> hafs_core::kv::fault::ReadFault {
        hafs_core::kv::fault::ReadFault::None
    }
}

/// A large write whose later piece fails reports the bytes the earlier
/// pieces stored (a short write), not an error that hides them; a write
/// whose first piece fails is an error.
#[tokio::test]
async fn a_large_write_failing_midway_is_a_short_write() {
    let (db, clock) = new_db_and_clock().await;
    let fs = client(&db, "a").await;
    let root = Caller::root();
    let f = new_file(&fs).await;
    let plan = Arc::new(FailAfter(u32::MAX.into()));
    let faulty =
        hafs_core::kv::fault::FaultyBackend::new(db.backend().clone(), plan.clone(), clock.clone());
    let faulty_db = Database::new(Arc::new(faulty), clock, 7);
    let fs = client(&faulty_db, "b").await;
    // One write commit more: the write's first piece.
    plan.0.store(1, std::sync::atomic::Ordering::Relaxed);
    let bytes = vec![1u8; WRITE_TRANSACTION_BYTES + 20];
    let wrote = fs.write(&root, f, WriteAt::Offset(0), &bytes).await;
    assert_eq!(wrote, Ok(WRITE_TRANSACTION_BYTES as u64));
    assert_eq!(
        fs.getattr(&root, f).await.unwrap().size,
        WRITE_TRANSACTION_BYTES as u64
    );
    let failed = fs.write(&root, f, WriteAt::Offset(0), &[1u8; 20]).await;
    assert!(
        failed.is_err(),
        "a first piece's failure is an error: {failed:?}"
    );
}

/// mkfs refuses chunks so small that a write transaction's piece passes
/// the KV's transaction size limit, and the smallest it takes works.
#[tokio::test]
async fn mkfs_refuses_chunks_too_small_for_a_write_piece() {
    use hafs_core::fs::format::CHUNK_SIZE_MIN;
    for (name, chunk_size) in [("tiny", 16), ("min", CHUNK_SIZE_MIN)] {
        let db = new_db().await;
        let options = MkfsOptions {
            chunk_size,
            ..MkfsOptions::default()
        };
        let made = mkfs(&db, name, options).await;
        if chunk_size < CHUNK_SIZE_MIN {
            assert_eq!(made, Err(FsError::Invalid));
            continue;
        }
        made.unwrap();
        let fs = Fs::open(db.clone(), name, "a", FsOptions::default())
            .await
            .unwrap();
        let root = Caller::root();
        let f = new_file(&fs).await;
        let bytes = vec![3u8; WRITE_TRANSACTION_BYTES + 1];
        assert_eq!(
            fs.write(&root, f, WriteAt::Append, &bytes).await,
            Ok(bytes.len() as u64)
        );
    }
}

/// `rm -rf` of a subvolume: its files wait out their unlink grace (one of
/// them open and written to meanwhile) after the root is gone. Their
/// writes and frees must not bring the deleted root's totals back: fsck
/// is clean during the grace and after the sweep (it reported negative
/// totals for ever before).
#[tokio::test]
async fn a_deleted_subvolumes_parked_files_leave_no_totals_behind() {
    let (db, clock) = new_db_and_clock().await;
    let fs = client(&db, "a").await;
    let root = Caller::root();
    let s = fs.mkdir(&root, ROOT_INO, b"s", 0o755).await.unwrap();
    fs.setxattr(&root, s.ino, b"hafs.subvolume", b"true", 0)
        .await
        .unwrap();
    let made = fs
        .create_open(&root, s.ino, b"f", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    fs.write(&root, made.ino, WriteAt::Append, b"abc")
        .await
        .unwrap();
    fs.create(&root, s.ino, b"g", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    fs.unlink(&root, s.ino, b"f").await.unwrap();
    fs.unlink(&root, s.ino, b"g").await.unwrap();
    fs.rmdir(&root, ROOT_INO, b"s").await.unwrap();
    fs.write(&root, made.ino, WriteAt::Append, b"defgh")
        .await
        .unwrap();
    assert_clean(&db).await;
    fs.release(&root, made.ino).await.unwrap();
    clock.advance(Duration::from_nanos(DEFAULT_UNLINK_GRACE_NS as u64) + Duration::from_secs(1));
    assert_eq!(sweep_unlinked(&db, fs.keys()).await.unwrap(), 2);
    assert_clean(&db).await;
}

/// A rename into a directory removed while another client has it open
/// fails with ENOENT, like a create there; it used to move the file into
/// the parked directory, whose freeing then left it unreachable.
#[tokio::test]
async fn a_rename_into_a_removed_directory_is_enoent() {
    let (db, _clock) = new_db_and_clock().await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let root = Caller::root();
    let d = a.mkdir(&root, ROOT_INO, b"d", 0o755).await.unwrap();
    new_file(&a).await;
    b.open_file(&root, d.ino, libc::O_RDONLY).await.unwrap();
    a.rmdir(&root, ROOT_INO, b"d").await.unwrap();
    assert_eq!(
        a.rename(&root, ROOT_INO, b"f", d.ino, b"f", 0).await,
        Err(FsError::NotFound)
    );
    b.release(&root, d.ino).await.unwrap();
    assert_clean(&db).await;
}
