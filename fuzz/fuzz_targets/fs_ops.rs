//! Filesystem operations on a small tree, with the stored bytes damaged in
//! between: no operation and no fsck may panic, hang or overflow, whatever
//! the arguments and whatever the database holds. An input that damages
//! nothing must also leave a tree fsck finds clean — so the fuzzer checks
//! every operation's bookkeeping (link counts, parents, sizes, subvolume
//! totals), not only that it returns.
//!
//! The input is a list of [`Action`]s: operations with fuzzer-chosen
//! arguments (inodes and names picked from the tree, or raw numbers), and
//! damage — a value replaced by arbitrary bytes, one byte changed, or one
//! field of a stored attribute or entry set to an arbitrary, well-formed
//! value (a size of 2^64−1, a parent that does not exist), which reaches
//! deeper than garbage that fails to decode — and session events: time
//! passing, heartbeats, expiry sweeps, evictions, `hafs gc`, remounts.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use hafs_core::clock::ManualClock;
use hafs_core::codec::{self, LockKind};
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::{Database, Transaction};
use hafs_core::ops::lock::LockRequest;
use hafs_core::ops::setattr::{SetAttr, TimeSet};
use hafs_core::ops::write::WriteAt;
use hafs_core::perm;
use hafs_core::session::{self, ExpiryTracker};
use libfuzzer_sys::fuzz_target;

/// Names operations use: the tree's own, and a few that are not valid.
const NAMES: &[&[u8]] = &[
    b"a", b"b", b"dir", b"sub", b"file", b"link", b"vol", b"in-vol", b"hard", b".", b"..", b"",
];

#[derive(Arbitrary, Debug)]
enum Action {
    /// An operation through the first mount, or the second.
    Op {
        user: bool,
        second: bool,
        op: Op,
    },
    /// Replace a stored value with arbitrary bytes.
    Replace {
        key: u16,
        value: Vec<u8>,
    },
    /// Change one byte of a stored value (past its end: append it).
    Poke {
        key: u16,
        at: u16,
        byte: u8,
    },
    /// Set one field of a stored attribute to an arbitrary value.
    AttrField {
        key: u16,
        field: AttrField,
        value: u64,
    },
    /// Point a stored directory entry at an arbitrary inode.
    DirentIno {
        key: u16,
        ino: u64,
    },
    Session(SessionOp),
}

/// Sessions: time passing, heartbeats, expiry sweeps, evictions and
/// remounts, so that eviction's cleanup (locks, open files, unlinked
/// inodes) runs on the trees the operations leave.
#[derive(Arbitrary, Debug)]
enum SessionOp {
    Tick {
        secs: u16,
    },
    Heartbeat {
        second: bool,
    },
    Sweep {
        expiry_secs: u8,
    },
    /// `hafs gc`: detached clients' leftovers and unlinked inodes.
    Gc,
    ListClients,
    /// Evict the current client (`hafs evict`): it is fenced from then on.
    Evict {
        second: bool,
    },
    /// A new client takes over; the old one closes cleanly or just stops
    /// (a crash: its session stays until evicted).
    Remount {
        second: bool,
        clean: bool,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AttrField {
    Mode,
    Size,
    Nlink,
    Parent,
    Subvolume,
    Flags,
    Uid,
    Times,
}

/// An inode: one the tree made (by index), or a raw number.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ino {
    Known(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Name(u8);

#[derive(Arbitrary, Debug)]
enum Op {
    Getattr(Ino),
    Lookup(Ino, Name),
    Readdir {
        dir: Ino,
        after: Option<Name>,
        limit: u8,
    },
    Read {
        ino: Ino,
        offset: u64,
        len: u32,
    },
    Write {
        ino: Ino,
        offset: Option<u64>,
        len: u16,
        byte: u8,
    },
    Truncate {
        ino: Ino,
        size: u64,
    },
    Fallocate {
        ino: Ino,
        mode: u8,
        offset: u64,
        len: u64,
    },
    Chmod {
        ino: Ino,
        mode: u32,
    },
    Chown {
        ino: Ino,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Utimes {
        ino: Ino,
        atime: i64,
        mtime: i64,
    },
    Create {
        dir: Ino,
        name: Name,
        exclusive: bool,
    },
    Mkdir {
        dir: Ino,
        name: Name,
        mode: u16,
    },
    Mknod {
        dir: Ino,
        name: Name,
        mode: u32,
    },
    Symlink {
        dir: Ino,
        name: Name,
        target: Vec<u8>,
    },
    Readlink(Ino),
    Link {
        ino: Ino,
        dir: Ino,
        name: Name,
    },
    Unlink {
        dir: Ino,
        name: Name,
    },
    Rmdir {
        dir: Ino,
        name: Name,
    },
    Rename {
        dir: Ino,
        name: Name,
        to_dir: Ino,
        to_name: Name,
        flags: u8,
    },
    Setxattr {
        ino: Ino,
        name: u8,
        value: Vec<u8>,
        flags: u8,
    },
    Getxattr {
        ino: Ino,
        name: u8,
    },
    Listxattr(Ino),
    Removexattr {
        ino: Ino,
        name: u8,
    },
    Setlk {
        ino: Ino,
        owner: u8,
        kind: u8,
        start: u64,
        end: u64,
    },
    Getlk {
        ino: Ino,
        owner: u8,
        write: bool,
        start: u64,
        end: u64,
    },
    UnlockOwner {
        ino: Ino,
        owner: u8,
    },
    Open {
        ino: Ino,
        flags: i32,
    },
    Release(Ino),
    Access {
        ino: Ino,
        mask: u8,
    },
    Statfs,
}

const XATTRS: &[&[u8]] = &[
    b"user.k",
    b"user.other",
    b"trusted.t",
    b"security.s",
    b"hafs.subvolume",
    b"hafs.totals",
    b"system.posix_acl_access",
    b"bogus",
];

struct World {
    /// Two mounts (clients) of the filesystem.
    fs: [Fs; 2],
    db: Database,
    clock: Arc<ManualClock>,
    tracker: ExpiryTracker,
    mounts: u32,
    inos: Vec<u64>,
    damaged: bool,
}

impl World {
    fn ino(&self, i: Ino) -> u64 {
        match i {
            Ino::Known(n) => self.inos[n as usize % self.inos.len()],
            Ino::Raw(n) => n,
        }
    }

    fn name(n: Name) -> Vec<u8> {
        match NAMES.get(n.0 as usize) {
            Some(name) => name.to_vec(),
            // Long names probe the length limit (255 bytes).
            None if n.0 >= 250 => vec![b'x'; 200 + n.0 as usize],
            None => format!("n{}", n.0).into_bytes(),
        }
    }

    async fn keys(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (begin, end) = self.fs[0].keys().all();
        let txn = self.db.begin().await.unwrap();
        let kvs = txn.get_range(&begin, &end, Default::default()).await;
        kvs.map(|r| r.kvs).unwrap_or_default()
    }

    /// The stored inode keys of one kind ("attr", "dirent", ...), with
    /// their inode and value.
    async fn stored(&self, kind: &str) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
        let keys = self.fs[0].keys();
        let all = self.keys().await.into_iter();
        all.filter_map(|(k, v)| {
            let (ino, k_kind) = keys.inode_key_kind(&k)?;
            (k_kind == kind).then_some((k, ino, v))
        })
        .collect()
    }

    async fn raw(&mut self, f: impl FnOnce(&Transaction)) {
        self.damaged = true;
        let txn = self.db.begin().await.unwrap();
        f(&txn);
        txn.commit().await.unwrap();
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Op { user, second, op } => {
                let caller = if user {
                    Caller::user(1000, 1000)
                } else {
                    Caller::root()
                };
                self.op(&caller, usize::from(second), op).await;
            }
            Action::Replace { key, value } => {
                let all = self.keys().await;
                if let Some((k, _)) = all.get(key as usize % all.len().max(1)) {
                    let k = k.clone();
                    self.raw(|txn| txn.set(&k, &value)).await;
                }
            }
            Action::Poke { key, at, byte } => {
                let all = self.keys().await;
                if let Some((k, v)) = all.get(key as usize % all.len().max(1)) {
                    let (k, mut v) = (k.clone(), v.clone());
                    match v.get_mut(at as usize) {
                        Some(b) => *b = byte,
                        None => v.push(byte),
                    }
                    self.raw(|txn| txn.set(&k, &v)).await;
                }
            }
            Action::AttrField { key, field, value } => {
                let attrs: Vec<_> = (self.stored("attr").await.into_iter())
                    .filter_map(|(k, ino, v)| Some((k, codec::decode_attr(ino, &v).ok()?)))
                    .collect();
                if let Some((k, mut attr)) = attrs.get(key as usize % attrs.len().max(1)).cloned() {
                    match field {
                        AttrField::Mode => attr.mode = value as u32,
                        AttrField::Size => attr.size = value,
                        AttrField::Nlink => attr.nlink = value as u32,
                        AttrField::Parent => attr.parent = value,
                        AttrField::Subvolume => attr.subvolume = value,
                        AttrField::Flags => attr.flags = value as u32,
                        AttrField::Uid => attr.uid = value as u32,
                        AttrField::Times => {
                            attr.atime_ns = value as i64;
                            attr.mtime_ns = value as i64;
                            attr.ctime_ns = value as i64;
                        }
                    }
                    let bytes = codec::encode_attr(&attr);
                    self.raw(|txn| txn.set(&k, &bytes)).await;
                }
            }
            Action::DirentIno { key, ino } => {
                let entries: Vec<_> = (self.stored("dirent").await.into_iter())
                    .filter_map(|(k, _, v)| Some((k, codec::decode_dirent(&v).ok()?)))
                    .collect();
                if let Some((k, mut entry)) =
                    entries.get(key as usize % entries.len().max(1)).cloned()
                {
                    entry.ino = ino;
                    let bytes = codec::encode_dirent(&entry);
                    self.raw(|txn| txn.set(&k, &bytes)).await;
                }
            }
            Action::Session(op) => self.session(op).await,
        }
    }

    async fn session(&mut self, op: SessionOp) {
        let keys = self.fs[0].keys().clone();
        match op {
            SessionOp::Tick { secs } => self.clock.advance(Duration::from_secs(u64::from(secs))),
            SessionOp::Heartbeat { second } => {
                let client = self.fs[usize::from(second)].client();
                let _ = session::heartbeat(&self.db, &keys, client).await;
            }
            SessionOp::Sweep { expiry_secs } => {
                let expiry = Duration::from_secs(u64::from(expiry_secs));
                let clock = self.clock.as_ref();
                let _ = self
                    .tracker
                    .sweep(&self.db, &keys, clock, expiry, None)
                    .await;
            }
            SessionOp::Gc => {
                let _ = session::gc(&self.db, &keys).await;
                let _ = session::sweep_unlinked(&self.db, &keys).await;
            }
            SessionOp::ListClients => {
                let _ = session::list_clients(&self.db, &keys).await;
            }
            SessionOp::Evict { second } => {
                let client = self.fs[usize::from(second)].client();
                let _ = session::evict(&self.db, &keys, client).await;
            }
            SessionOp::Remount { second, clean } => {
                self.mounts += 1;
                let id = format!("c{}", self.mounts);
                let Ok(fs) = Fs::open(self.db.clone(), "fs", &id, FsOptions::default()).await
                else {
                    return;
                };
                let old = std::mem::replace(&mut self.fs[usize::from(second)], fs);
                if clean {
                    let _ = old.close().await;
                }
            }
        }
    }

    /// Run one operation; its result is dropped (errors are expected), but
    /// inodes it makes join the pool later operations pick from.
    async fn op(&mut self, c: &Caller, mount: usize, op: Op) {
        let fs = &self.fs[mount];
        let made = match op {
            Op::Getattr(i) => fs.getattr(c, self.ino(i)).await.ok().map(|a| a.ino),
            Op::Lookup(d, n) => fs
                .lookup(c, self.ino(d), &Self::name(n))
                .await
                .ok()
                .map(|a| a.ino),
            Op::Readdir { dir, after, limit } => {
                let after = after.map(Self::name);
                let _ = fs
                    .readdir(c, self.ino(dir), after.as_deref(), limit as usize)
                    .await;
                None
            }
            Op::Read { ino, offset, len } => {
                // Up to 1 MiB: the kernel asks for at most that much.
                let _ = fs.read(c, self.ino(ino), offset, len % (1 << 20)).await;
                None
            }
            Op::Write {
                ino,
                offset,
                len,
                byte,
            } => {
                let at = offset.map_or(WriteAt::Append, WriteAt::Offset);
                let data = vec![byte; len as usize % 20_000];
                let _ = fs.write(c, self.ino(ino), at, &data).await;
                None
            }
            Op::Truncate { ino, size } => {
                let changes = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                let _ = fs.setattr(c, self.ino(ino), changes).await;
                None
            }
            Op::Fallocate {
                ino,
                mode,
                offset,
                len,
            } => {
                let modes = [
                    0,
                    libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_ZERO_RANGE,
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_COLLAPSE_RANGE,
                    libc::FALLOC_FL_PUNCH_HOLE,
                ];
                let mode = modes[mode as usize % modes.len()];
                let _ = fs.fallocate(c, self.ino(ino), mode, offset, len).await;
                None
            }
            Op::Chmod { ino, mode } => {
                let changes = SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                };
                let _ = fs.setattr(c, self.ino(ino), changes).await;
                None
            }
            Op::Chown { ino, uid, gid } => {
                let changes = SetAttr {
                    uid,
                    gid,
                    ..Default::default()
                };
                let _ = fs.setattr(c, self.ino(ino), changes).await;
                None
            }
            Op::Utimes { ino, atime, mtime } => {
                let changes = SetAttr {
                    atime: Some(TimeSet::At(atime)),
                    mtime: Some(TimeSet::At(mtime)),
                    ..Default::default()
                };
                let _ = fs.setattr(c, self.ino(ino), changes).await;
                None
            }
            Op::Create {
                dir,
                name,
                exclusive,
            } => {
                let name = Self::name(name);
                let made = fs.create(c, self.ino(dir), &name, 0o644, exclusive, perm::WRITE);
                made.await.ok().map(|a| a.ino)
            }
            Op::Mkdir { dir, name, mode } => {
                let name = Self::name(name);
                let made = fs.mkdir(c, self.ino(dir), &name, u32::from(mode));
                made.await.ok().map(|a| a.ino)
            }
            Op::Mknod { dir, name, mode } => {
                let name = Self::name(name);
                let made = fs.mknod(c, self.ino(dir), &name, mode, 0);
                made.await.ok().map(|a| a.ino)
            }
            Op::Symlink { dir, name, target } => {
                let name = Self::name(name);
                let made = fs.symlink(c, self.ino(dir), &name, &target);
                made.await.ok().map(|a| a.ino)
            }
            Op::Readlink(i) => {
                let _ = fs.readlink(c, self.ino(i)).await;
                None
            }
            Op::Link { ino, dir, name } => {
                let name = Self::name(name);
                let made = fs.link(c, self.ino(ino), self.ino(dir), &name);
                made.await.ok().map(|a| a.ino)
            }
            Op::Unlink { dir, name } => {
                let _ = fs.unlink(c, self.ino(dir), &Self::name(name)).await;
                None
            }
            Op::Rmdir { dir, name } => {
                let _ = fs.rmdir(c, self.ino(dir), &Self::name(name)).await;
                None
            }
            Op::Rename {
                dir,
                name,
                to_dir,
                to_name,
                flags,
            } => {
                let flags = match flags % 4 {
                    0 => 0,
                    1 => libc::RENAME_NOREPLACE,
                    2 => libc::RENAME_EXCHANGE,
                    _ => u32::from(flags),
                };
                let (from, to) = (Self::name(name), Self::name(to_name));
                let _ = fs
                    .rename(c, self.ino(dir), &from, self.ino(to_dir), &to, flags)
                    .await;
                None
            }
            Op::Setxattr {
                ino,
                name,
                value,
                flags,
            } => {
                let name = XATTRS[name as usize % XATTRS.len()];
                let flags = i32::from(flags % 4);
                let _ = fs.setxattr(c, self.ino(ino), name, &value, flags).await;
                None
            }
            Op::Getxattr { ino, name } => {
                let name = XATTRS[name as usize % XATTRS.len()];
                let _ = fs.getxattr(c, self.ino(ino), name).await;
                None
            }
            Op::Listxattr(i) => {
                let _ = fs.listxattr(c, self.ino(i)).await;
                None
            }
            Op::Removexattr { ino, name } => {
                let name = XATTRS[name as usize % XATTRS.len()];
                let _ = fs.removexattr(c, self.ino(ino), name).await;
                None
            }
            Op::Setlk {
                ino,
                owner,
                kind,
                start,
                end,
            } => {
                let kind = match kind % 3 {
                    0 => None,
                    1 => Some(LockKind::Read),
                    _ => Some(LockKind::Write),
                };
                let request = LockRequest {
                    kind,
                    start,
                    end,
                    pid: 1,
                };
                // Never waits: a conflict answers EAGAIN at once.
                let lock = fs.setlk(c, self.ino(ino), u64::from(owner), request, false, async {});
                let _ = lock.await;
                None
            }
            Op::Getlk {
                ino,
                owner,
                write,
                start,
                end,
            } => {
                let kind = if write {
                    LockKind::Write
                } else {
                    LockKind::Read
                };
                let _ = fs
                    .getlk(c, self.ino(ino), u64::from(owner), kind, start, end)
                    .await;
                None
            }
            Op::UnlockOwner { ino, owner } => {
                let _ = fs.unlock_owner(c, self.ino(ino), u64::from(owner)).await;
                None
            }
            Op::Open { ino, flags } => {
                let _ = fs.open_file(c, self.ino(ino), flags).await;
                None
            }
            Op::Release(i) => {
                let _ = fs.release(c, self.ino(i)).await;
                None
            }
            Op::Access { ino, mask } => {
                let _ = fs.access(c, self.ino(ino), u32::from(mask % 8)).await;
                None
            }
            Op::Statfs => {
                let _ = fs.statfs(c).await;
                None
            }
        };
        if let Some(ino) = made.filter(|i| !self.inos.contains(i)) {
            self.inos.push(ino);
        }
    }
}

async fn tree() -> World {
    let clock = ManualClock::new();
    let clock_handle = clock.clone();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 3);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let fs = Fs::open(db.clone(), "fs", "c1", FsOptions::default())
        .await
        .unwrap();
    let root = Caller::root();
    let dir = fs.mkdir(&root, ROOT_INO, b"dir", 0o755).await.unwrap().ino;
    let sub = fs.mkdir(&root, dir, b"sub", 0o777).await.unwrap().ino;
    let file = fs
        .create(&root, sub, b"file", 0o666, true, perm::WRITE)
        .await
        .unwrap()
        .ino;
    fs.write(&root, file, WriteAt::Append, &[7u8; 9000])
        .await
        .unwrap();
    fs.setxattr(&root, file, b"user.k", b"v", 0).await.unwrap();
    fs.link(&root, file, dir, b"hard").await.unwrap();
    let link = fs
        .symlink(&root, dir, b"link", b"sub/file")
        .await
        .unwrap()
        .ino;
    let vol = fs.mkdir(&root, ROOT_INO, b"vol", 0o755).await.unwrap().ino;
    fs.setxattr(&root, vol, b"hafs.subvolume", b"true", 0)
        .await
        .unwrap();
    let in_vol = fs
        .create(&root, vol, b"in-vol", 0o644, true, perm::WRITE)
        .await
        .unwrap()
        .ino;
    let lock = LockRequest {
        kind: Some(LockKind::Write),
        start: 0,
        end: 99,
        pid: 1,
    };
    fs.setlk(&root, file, 7, lock, false, async {})
        .await
        .unwrap();
    let other = Fs::open(db.clone(), "fs", "c2", FsOptions::default())
        .await
        .unwrap();
    World {
        fs: [fs, other],
        db,
        clock: clock_handle,
        tracker: ExpiryTracker::default(),
        mounts: 2,
        inos: vec![ROOT_INO, dir, sub, file, link, vol, in_vol],
        damaged: false,
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|actions: Vec<Action>| {
    runtime().block_on(async move {
        let mut world = tree().await;
        for action in actions.into_iter().take(64) {
            world.act(action).await;
        }
        let report = check_invariants(&world.db, "fs", |_| {}).await;
        if !world.damaged {
            let report = report.expect("fsck of an undamaged tree");
            assert!(
                report.is_clean(),
                "operations alone broke the tree: {:#?}",
                report.violations
            );
        }
    });
});
