//! Namespace mutations: unlink, rmdir, link and rename with every errno rule
//! Linux has for them, and the rename loop race — two clients moving two
//! directories into each other — interleaved by hand so the race happens
//! every run: exactly one commits and no cycle forms.

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::ctx::{Caller, Ctx, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::{Database, KvError};
use hafs_core::ops::rename::{self, RENAME_EXCHANGE, RENAME_NOREPLACE};
use hafs_core::perm;

async fn setup() -> (Database, Fs) {
    let clock = ManualClock::new();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 7);
    let options = MkfsOptions {
        root_mode: 0o777,
        ..MkfsOptions::default()
    };
    mkfs(&db, "fs", options).await.expect("mkfs");
    let fs = Fs::open(db.clone(), "fs", "c1", FsOptions::default())
        .await
        .expect("open");
    (db, fs)
}

async fn assert_clean(db: &Database) {
    let report = check_invariants(db, "fs", |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
}

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.unwrap_err().errno()
}

#[tokio::test]
async fn unlink_and_rmdir_errors() {
    let (db, fs) = setup().await;
    let root = Caller::root();
    let d = fs.mkdir(&root, ROOT_INO, b"d", 0o755).await.unwrap();
    let f = fs
        .create(&root, d.ino, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    assert_eq!(errno(fs.unlink(&root, ROOT_INO, b"d").await), libc::EISDIR);
    assert_eq!(
        errno(fs.unlink(&root, ROOT_INO, b"nope").await),
        libc::ENOENT
    );
    assert_eq!(errno(fs.rmdir(&root, d.ino, b"f").await), libc::ENOTDIR);
    assert_eq!(
        errno(fs.rmdir(&root, ROOT_INO, b"d").await),
        libc::ENOTEMPTY
    );
    assert_eq!(errno(fs.rmdir(&root, d.ino, b".").await), libc::EINVAL);
    assert_eq!(errno(fs.rmdir(&root, d.ino, b"..").await), libc::ENOTEMPTY);
    assert_eq!(
        errno(fs.unlink(&root, d.ino, &[b'x'; 256]).await),
        libc::ENAMETOOLONG
    );
    // Sticky directory: only the owner of the file or the directory may remove.
    let t = fs.mkdir(&root, ROOT_INO, b"tmp", 0o1777).await.unwrap();
    let alice = Caller::user(1000, 1000);
    let bob = Caller::user(1001, 1001);
    fs.create(&alice, t.ino, b"a", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    assert_eq!(errno(fs.unlink(&bob, t.ino, b"a").await), libc::EPERM);
    fs.unlink(&alice, t.ino, b"a").await.unwrap();
    // No write permission on the directory.
    assert_eq!(errno(fs.unlink(&bob, d.ino, b"f").await), libc::EACCES);
    fs.unlink(&root, d.ino, b"f").await.unwrap();
    assert_eq!(
        fs.getattr(&root, f.ino).await.unwrap().nlink,
        0,
        "parked for the unlink grace"
    );
    fs.rmdir(&root, ROOT_INO, b"d").await.unwrap();
    assert_eq!(fs.getattr(&root, ROOT_INO).await.unwrap().nlink, 3);
    assert_clean(&db).await;
}

#[tokio::test]
async fn hard_links() {
    let (db, fs) = setup().await;
    let root = Caller::root();
    let d = fs.mkdir(&root, ROOT_INO, b"d", 0o755).await.unwrap();
    let f = fs
        .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    assert_eq!(fs.link(&root, f.ino, d.ino, b"g").await.unwrap().nlink, 2);
    assert_eq!(
        errno(fs.link(&root, f.ino, d.ino, b"g").await),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.link(&root, d.ino, ROOT_INO, b"d2").await),
        libc::EPERM
    );
    fs.unlink(&root, ROOT_INO, b"f").await.unwrap();
    assert_eq!(fs.lookup(&root, d.ino, b"g").await.unwrap().nlink, 1);
    // Links across subvolumes are EXDEV.
    let s = fs.mkdir(&root, ROOT_INO, b"sub", 0o755).await.unwrap();
    fs.setxattr(&root, s.ino, b"hafs.subvolume", b"true", 0)
        .await
        .unwrap();
    assert_eq!(errno(fs.link(&root, f.ino, s.ino, b"x").await), libc::EXDEV);
    assert_clean(&db).await;
}

#[tokio::test]
async fn rename_rules() {
    let (db, fs) = setup().await;
    let root = Caller::root();
    let a = fs.mkdir(&root, ROOT_INO, b"a", 0o755).await.unwrap();
    let b = fs.mkdir(&root, ROOT_INO, b"b", 0o755).await.unwrap();
    let f = fs
        .create(&root, a.ino, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    let g = fs
        .create(&root, b.ino, b"g", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    // File over file: the target is replaced and freed.
    fs.rename(&root, a.ino, b"f", b.ino, b"g", 0).await.unwrap();
    assert_eq!(fs.lookup(&root, b.ino, b"g").await.unwrap().ino, f.ino);
    assert_eq!(
        fs.getattr(&root, g.ino).await.unwrap().nlink,
        0,
        "parked for the unlink grace"
    );
    assert_eq!(
        errno(fs.rename(&root, a.ino, b"f", b.ino, b"x", 0).await),
        libc::ENOENT
    );
    // Type rules for an overwrite.
    let e = fs.mkdir(&root, a.ino, b"e", 0o755).await.unwrap();
    assert_eq!(
        errno(fs.rename(&root, b.ino, b"g", a.ino, b"e", 0).await),
        libc::EISDIR
    );
    assert_eq!(
        errno(fs.rename(&root, a.ino, b"e", b.ino, b"g", 0).await),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs.rename(&root, a.ino, b"e", ROOT_INO, b"b", 0).await),
        libc::ENOTEMPTY
    );
    // A directory over an empty directory; link counts follow "..".
    let c = fs.mkdir(&root, b.ino, b"c", 0o755).await.unwrap();
    fs.rename(&root, a.ino, b"e", b.ino, b"c", 0).await.unwrap();
    assert_eq!(fs.getattr(&root, c.ino).await, Err(FsError::NotFound));
    assert_eq!(fs.getattr(&root, a.ino).await.unwrap().nlink, 2);
    assert_eq!(fs.getattr(&root, b.ino).await.unwrap().nlink, 3);
    assert_eq!(fs.lookup(&root, e.ino, b"..").await.unwrap().ino, b.ino);
    // Never into its own subtree.
    assert_eq!(
        errno(fs.rename(&root, ROOT_INO, b"b", e.ino, b"x", 0).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.rename(&root, ROOT_INO, b"b", b.ino, b"x", 0).await),
        libc::EINVAL
    );
    // NOREPLACE, EXCHANGE and bad flags.
    fs.create(&root, a.ino, b"h", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    assert_eq!(
        errno(
            fs.rename(&root, a.ino, b"h", b.ino, b"g", RENAME_NOREPLACE)
                .await
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno(
            fs.rename(&root, a.ino, b"h", b.ino, b"zz", RENAME_EXCHANGE)
                .await
        ),
        libc::ENOENT
    );
    assert_eq!(
        errno(fs.rename(&root, a.ino, b"h", b.ino, b"g", 3).await),
        libc::EINVAL
    );
    fs.rename(&root, a.ino, b"h", b.ino, b"c", RENAME_EXCHANGE)
        .await
        .unwrap();
    assert_eq!(fs.lookup(&root, a.ino, b"h").await.unwrap().ino, e.ino);
    assert_eq!(fs.lookup(&root, e.ino, b"..").await.unwrap().ino, a.ino);
    assert_eq!(fs.getattr(&root, a.ino).await.unwrap().nlink, 3);
    assert_eq!(fs.getattr(&root, b.ino).await.unwrap().nlink, 2);
    // Renaming onto another link of the same inode does nothing.
    fs.link(&root, f.ino, a.ino, b"f2").await.unwrap();
    fs.rename(&root, a.ino, b"f2", b.ino, b"g", 0)
        .await
        .unwrap();
    assert_eq!(fs.lookup(&root, a.ino, b"f2").await.unwrap().nlink, 2);
    assert_eq!(
        errno(fs.rename(&root, a.ino, b".", b.ino, b"x", 0).await),
        libc::EBUSY
    );
    assert_clean(&db).await;
}

#[tokio::test]
async fn rename_permissions() {
    let (db, fs) = setup().await;
    let root = Caller::root();
    let alice = Caller::user(1000, 1000);
    let bob = Caller::user(1001, 1001);
    let t = fs.mkdir(&root, ROOT_INO, b"t", 0o1777).await.unwrap();
    let d = fs.mkdir(&alice, t.ino, b"d", 0o555).await.unwrap();
    fs.create(&alice, t.ino, b"f", 0o644, true, perm::WRITE)
        .await
        .unwrap();
    // Sticky source directory.
    assert_eq!(
        errno(fs.rename(&bob, t.ino, b"f", t.ino, b"g", 0).await),
        libc::EPERM
    );
    // Moving a directory to another parent writes its "..": needs write on it.
    let other = fs.mkdir(&alice, ROOT_INO, b"o", 0o755).await.unwrap();
    assert_eq!(
        errno(fs.rename(&alice, t.ino, b"d", other.ino, b"d", 0).await),
        libc::EACCES
    );
    fs.rename(&alice, t.ino, b"d", t.ino, b"d2", 0)
        .await
        .unwrap();
    assert_eq!(fs.lookup(&root, t.ino, b"d2").await.unwrap().ino, d.ino);
    assert_clean(&db).await;
}

/// `mv p/a q/b/d/x` and `mv q/b p/a/c/y` from two clients, interleaved so
/// both read before either commits. The two touch disjoint directories, so
/// only the ancestor chains read inside each transaction make them
/// conflict; without them both commit and a, b, c, d form a cycle cut off
/// from the root.
#[tokio::test]
async fn racing_renames_never_make_a_cycle() {
    let (db, fs) = setup().await;
    let root = Caller::root();
    let p = fs.mkdir(&root, ROOT_INO, b"p", 0o755).await.unwrap();
    let q = fs.mkdir(&root, ROOT_INO, b"q", 0o755).await.unwrap();
    let a = fs.mkdir(&root, p.ino, b"a", 0o755).await.unwrap();
    let b = fs.mkdir(&root, q.ino, b"b", 0o755).await.unwrap();
    let c = fs.mkdir(&root, a.ino, b"c", 0o755).await.unwrap();
    let d = fs.mkdir(&root, b.ino, b"d", 0o755).await.unwrap();
    let options = FsOptions::default();
    let ctx = |client| Ctx {
        caller: &root,
        client,
        now_ns: 1,
        keys: fs.keys(),
        settings: fs.settings(),
        options: &options,
    };
    let t1 = db.begin().await.unwrap();
    let t2 = db.begin().await.unwrap();
    rename::apply(&t1, &ctx("c1"), p.ino, b"a", d.ino, b"x", 0)
        .await
        .unwrap();
    rename::apply(&t2, &ctx("c2"), q.ino, b"b", c.ino, b"y", 0)
        .await
        .unwrap();
    t1.commit().await.unwrap();
    assert_eq!(t2.commit().await, Err(KvError::NotCommitted));
    // The loser's retry sees a under b and refuses to put b under a.
    assert_eq!(
        errno(fs.rename(&root, q.ino, b"b", c.ino, b"y", 0).await),
        libc::EINVAL
    );
    assert_eq!(fs.lookup(&root, d.ino, b"x").await.unwrap().ino, a.ino);
    assert_clean(&db).await;
}
