//! The driver shared by the model proptest (`core/tests/fs_model.rs`) and
//! the simulator's model workload (`sim`): random operations from three
//! users on two clients of one filesystem, applied to the core and to the
//! reference model; every result and errno must agree, and `finish`
//! compares the whole tree and runs fsck.
//!
//! A KV failure the core surfaces (the simulator cuts clients off) leaves
//! the outcome unknown: `step` then sets [`World::infra`] and the caller
//! abandons the world instead of reporting a disagreement.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::codec::{Attr, FileType};
use hafs_core::ctx::{Caller, FsOptions, DEFAULT_UNLINK_GRACE_NS};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::InodeLayout;
use hafs_core::kv::Database;
use hafs_core::ops::setattr::SetAttr;
use hafs_core::ops::write::WriteAt;
use proptest::prelude::*;

use super::{Kind, Model, Summary, Who};

pub const ROOT_MODE: u32 = 0o1777;

fn users() -> [Who; 3] {
    [
        Who {
            uid: 0,
            gid: 0,
            groups: vec![],
        },
        Who {
            uid: 1000,
            gid: 1000,
            groups: vec![100],
        },
        Who {
            uid: 1001,
            gid: 100,
            groups: vec![],
        },
    ]
}

fn caller(who: &Who) -> Caller {
    Caller {
        uid: who.uid,
        gid: who.gid,
        groups: who.groups.clone().into(),
        pid: 1,
    }
}

pub type Path = Vec<Vec<u8>>;

#[derive(Debug, Clone)]
pub enum Op {
    Mkdir {
        c: usize,
        u: usize,
        parent: Path,
        name: Vec<u8>,
        perm: u32,
    },
    Create {
        c: usize,
        u: usize,
        parent: Path,
        name: Vec<u8>,
        perm: u32,
        excl: bool,
        access: u32,
    },
    Fifo {
        c: usize,
        u: usize,
        parent: Path,
        name: Vec<u8>,
        perm: u32,
    },
    Symlink {
        c: usize,
        u: usize,
        parent: Path,
        name: Vec<u8>,
    },
    Unlink {
        c: usize,
        u: usize,
        parent: Path,
        name: Vec<u8>,
    },
    Rmdir {
        c: usize,
        u: usize,
        parent: Path,
        name: Vec<u8>,
    },
    Link {
        c: usize,
        u: usize,
        src: Path,
        parent: Path,
        name: Vec<u8>,
    },
    Rename {
        c: usize,
        u: usize,
        parent: Path,
        name: Vec<u8>,
        to: Path,
        to_name: Vec<u8>,
        flags: u32,
    },
    Lookup {
        c: usize,
        u: usize,
        parent: Path,
        name: Vec<u8>,
    },
    Readdir {
        c: usize,
        u: usize,
        dir: Path,
    },
    Open {
        c: usize,
        u: usize,
        path: Path,
        flags: i32,
    },
    Close {
        h: usize,
    },
    Read {
        h: usize,
        offset: u64,
        len: u32,
    },
    Write {
        h: usize,
        offset: Option<u64>,
        len: usize,
        byte: u8,
    },
    Truncate {
        c: usize,
        u: usize,
        path: Path,
        size: u64,
    },
    Chmod {
        c: usize,
        u: usize,
        path: Path,
        mode: u32,
    },
    Chown {
        c: usize,
        u: usize,
        path: Path,
        uid: Option<u32>,
        gid: Option<u32>,
    },
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
        1 => Just(b".".to_vec()),
        1 => Just(b"..".to_vec()),
        1 => Just(vec![b'n'; 256]),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    prop::collection::vec(
        prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
        0..3,
    )
}

fn perm() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![
        0o755, 0o700, 0o777, 0o1777, 0o2775, 0o644, 0o4755, 0o2755, 0o000, 0o311, 0o4777, 0o775,
        0o2666, 0o6666,
    ])
}

pub fn op() -> impl Strategy<Value = Op> {
    let c = 0..2usize;
    let u = prop_oneof![2 => Just(0usize), 3 => Just(1usize), 2 => Just(2usize)];
    let flags = prop::sample::select(vec![
        0u32,
        0,
        0,
        libc::RENAME_NOREPLACE,
        libc::RENAME_EXCHANGE,
        3,
    ]);
    let oflags = prop::sample::select(vec![
        libc::O_RDONLY,
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDWR | libc::O_TRUNC,
    ]);
    let access = prop::sample::select(vec![4u32, 2, 6]);
    let id = prop::option::of(prop::sample::select(vec![0u32, 100, 1000, 1001]));
    prop_oneof![
        4 => (c.clone(), u.clone(), path(), name(), perm()).prop_map(|(c, u, parent, name, perm)| Op::Mkdir { c, u, parent, name, perm }),
        4 => (c.clone(), u.clone(), path(), name(), perm(), any::<bool>(), access)
            .prop_map(|(c, u, parent, name, perm, excl, access)| Op::Create { c, u, parent, name, perm, excl, access }),
        1 => (c.clone(), u.clone(), path(), name(), perm()).prop_map(|(c, u, parent, name, perm)| Op::Fifo { c, u, parent, name, perm }),
        1 => (c.clone(), u.clone(), path(), name()).prop_map(|(c, u, parent, name)| Op::Symlink { c, u, parent, name }),
        3 => (c.clone(), u.clone(), path(), name()).prop_map(|(c, u, parent, name)| Op::Unlink { c, u, parent, name }),
        2 => (c.clone(), u.clone(), path(), name()).prop_map(|(c, u, parent, name)| Op::Rmdir { c, u, parent, name }),
        2 => (c.clone(), u.clone(), path(), path(), name()).prop_map(|(c, u, src, parent, name)| Op::Link { c, u, src, parent, name }),
        5 => (c.clone(), u.clone(), path(), name(), path(), name(), flags)
            .prop_map(|(c, u, parent, name, to, to_name, flags)| Op::Rename { c, u, parent, name, to, to_name, flags }),
        2 => (c.clone(), u.clone(), path(), name()).prop_map(|(c, u, parent, name)| Op::Lookup { c, u, parent, name }),
        1 => (c.clone(), u.clone(), path()).prop_map(|(c, u, dir)| Op::Readdir { c, u, dir }),
        3 => (c.clone(), u.clone(), path(), oflags).prop_map(|(c, u, path, flags)| Op::Open { c, u, path, flags }),
        2 => any::<usize>().prop_map(|h| Op::Close { h }),
        2 => (any::<usize>(), 0..3000u64, 0..3000u32).prop_map(|(h, offset, len)| Op::Read { h, offset, len }),
        3 => (any::<usize>(), prop::option::of(0..3000u64), 0..1500usize, 1..=255u8)
            .prop_map(|(h, offset, len, byte)| Op::Write { h, offset, len, byte }),
        2 => (c.clone(), u.clone(), path(), 0..3000u64).prop_map(|(c, u, path, size)| Op::Truncate { c, u, path, size }),
        2 => (c.clone(), u.clone(), path(), perm()).prop_map(|(c, u, path, mode)| Op::Chmod { c, u, path, mode }),
        2 => (c, u, path(), id.clone(), id).prop_map(|(c, u, path, uid, gid)| Op::Chown { c, u, path, uid, gid }),
    ]
}

fn summary(a: &Attr) -> Summary {
    let kind = match a.kind().expect("kind") {
        FileType::Regular => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        other => panic!("unexpected kind {other:?}"),
    };
    Summary {
        ino: a.ino,
        kind,
        mode: a.mode & 0o7777,
        uid: a.uid,
        gid: a.gid,
        nlink: a.nlink,
        size: a.size,
    }
}

/// The errno of `e`; a KV failure or fencing marks the step's outcome
/// unknown (`infra`).
fn errno_of(infra: &AtomicBool, e: FsError) -> i32 {
    if matches!(e, FsError::Kv(_) | FsError::Fenced) {
        infra.store(true, Ordering::Relaxed);
    }
    e.errno()
}

fn core_res(infra: &AtomicBool, r: Result<Attr, FsError>) -> Result<Summary, i32> {
    r.map(|a| summary(&a)).map_err(|e| errno_of(infra, e))
}

/// `setattr` by `who` through `fs`, as the model sees its result.
async fn setattr(
    fs: &Fs,
    infra: &AtomicBool,
    who: &Who,
    ino: u64,
    changes: SetAttr,
) -> Result<Summary, i32> {
    core_res(infra, fs.setattr(&caller(who), ino, changes).await)
}

fn errno<T>(infra: &AtomicBool, r: Result<T, FsError>) -> Result<T, i32> {
    r.map_err(|e| errno_of(infra, e))
}

struct Handle {
    client: usize,
    ino: u64,
    user: usize,
    writable: bool,
}

pub struct World {
    db: Database,
    /// Set, the world advances it past the unlink grace before its final
    /// sweep; unset (simulation), worlds run with no grace.
    clock: Option<Arc<ManualClock>>,
    fs_name: String,
    /// A step met a KV failure: its outcome is unknown.
    pub infra: Arc<AtomicBool>,
    clients: Vec<Fs>,
    model: Model,
    handles: Vec<Handle>,
    users: [Who; 3],
}

impl World {
    /// A new filesystem `fs_name` in `db` with its inodes' keys laid out by
    /// `layout`, with two clients `ids`.
    pub async fn new(
        db: Database,
        clock: Option<Arc<ManualClock>>,
        fs_name: &str,
        ids: [&str; 2],
        layout: InodeLayout,
    ) -> Result<World, FsError> {
        let options = MkfsOptions {
            root_mode: ROOT_MODE,
            chunk_size: 512,
            inode_layout: Some(layout),
            ..MkfsOptions::default()
        };
        mkfs(&db, fs_name, options).await?;
        let fs_options = FsOptions {
            unlink_grace_ns: if clock.is_some() {
                DEFAULT_UNLINK_GRACE_NS
            } else {
                0
            },
            ..FsOptions::default()
        };
        let mut clients = Vec::new();
        for id in ids {
            clients.push(Fs::open(db.clone(), fs_name, id, fs_options).await?);
        }
        // The second client defers its last closes, as a mount does; its
        // pending records are cleared now and then (`Op::Close`) and at
        // the end, so opens, unlinks and renames meet them in between.
        clients[1].defer_releases();
        Ok(World {
            db,
            clock,
            fs_name: fs_name.to_string(),
            infra: Arc::new(AtomicBool::new(false)),
            clients,
            model: Model::new(ROOT_MODE),
            handles: Vec::new(),
            users: users(),
        })
    }

    /// Apply one operation to both sides; Err describes a disagreement.
    // `same!` yields the agreed result; most arms only need the agreement.
    #[allow(unused_must_use)]
    pub async fn step(&mut self, op: &Op) -> Result<(), String> {
        let infra = self.infra.clone();
        let infra = infra.as_ref();
        let users = self.users.clone();
        let m = &mut self.model;
        macro_rules! same {
            ($core:expr, $model:expr) => {{
                let (core, model) = ($core, $model);
                if core != model {
                    return Err(format!("core {core:?} != model {model:?}"));
                }
                core
            }};
        }
        match op {
            Op::Mkdir {
                c,
                u,
                parent,
                name,
                perm,
            } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                let core = core_res(
                    infra,
                    self.clients[*c]
                        .mkdir(&caller(&users[*u]), p, name, *perm)
                        .await,
                );
                let ino = core.as_ref().map_or(0, |s| s.ino);
                same!(core, m.mkdir(p, name, *perm, &users[*u], ino));
            }
            Op::Create {
                c,
                u,
                parent,
                name,
                perm,
                excl,
                access,
            } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                let who = &users[*u];
                let core = core_res(
                    infra,
                    self.clients[*c]
                        .create(&caller(who), p, name, *perm, *excl, *access)
                        .await,
                );
                let ino = core.as_ref().map_or(0, |s| s.ino);
                same!(core, m.create(p, name, *perm, *excl, *access, who, ino));
            }
            Op::Fifo {
                c,
                u,
                parent,
                name,
                perm,
            } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                let mode = libc::S_IFIFO | perm;
                let core = core_res(
                    infra,
                    self.clients[*c]
                        .mknod(&caller(&users[*u]), p, name, mode, 0)
                        .await,
                );
                let ino = core.as_ref().map_or(0, |s| s.ino);
                same!(core, m.mknod_fifo(p, name, *perm, &users[*u], ino));
            }
            Op::Symlink { c, u, parent, name } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                let core = core_res(
                    infra,
                    self.clients[*c]
                        .symlink(&caller(&users[*u]), p, name, b"target")
                        .await,
                );
                let ino = core.as_ref().map_or(0, |s| s.ino);
                same!(core, m.symlink(p, name, b"target", &users[*u], ino));
            }
            Op::Unlink { c, u, parent, name } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                same!(
                    errno(
                        infra,
                        self.clients[*c].unlink(&caller(&users[*u]), p, name).await
                    ),
                    m.unlink(p, name, &users[*u])
                );
            }
            Op::Rmdir { c, u, parent, name } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                same!(
                    errno(
                        infra,
                        self.clients[*c].rmdir(&caller(&users[*u]), p, name).await
                    ),
                    m.rmdir(p, name, &users[*u])
                );
            }
            Op::Link {
                c,
                u,
                src,
                parent,
                name,
            } => {
                let (Some(s), Some(p)) = (m.resolve(src), m.resolve(parent)) else {
                    return Ok(());
                };
                let core = core_res(
                    infra,
                    self.clients[*c].link(&caller(&users[*u]), s, p, name).await,
                );
                same!(core, m.link(s, p, name, &users[*u]));
            }
            Op::Rename {
                c,
                u,
                parent,
                name,
                to,
                to_name,
                flags,
            } => {
                let (Some(p), Some(t)) = (m.resolve(parent), m.resolve(to)) else {
                    return Ok(());
                };
                let core = self.clients[*c]
                    .rename(&caller(&users[*u]), p, name, t, to_name, *flags)
                    .await;
                same!(
                    errno(infra, core),
                    m.rename(p, name, t, to_name, *flags, &users[*u])
                );
            }
            Op::Lookup { c, u, parent, name } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                same!(
                    core_res(
                        infra,
                        self.clients[*c].lookup(&caller(&users[*u]), p, name).await
                    ),
                    m.lookup(p, name, &users[*u])
                );
            }
            Op::Readdir { c, u, dir } => {
                let Some(d) = m.resolve(dir) else {
                    return Ok(());
                };
                let core = self.clients[*c]
                    .readdir(&caller(&users[*u]), d, None, 1000)
                    .await;
                let core = errno(infra, core)
                    .map(|page| page.entries.into_iter().map(|(n, _)| n).collect::<Vec<_>>());
                same!(core, m.readdir(d, &users[*u]));
            }
            Op::Open { c, u, path, flags } => {
                let Some(ino) = m.resolve(path) else {
                    return Ok(());
                };
                if !matches!(m.nodes[&ino].kind, Kind::File | Kind::Dir) {
                    return Ok(()); // the kernel never sends these opens
                }
                let core = core_res(
                    infra,
                    self.clients[*c]
                        .open_file(&caller(&users[*u]), ino, *flags)
                        .await,
                );
                let ok = same!(core, m.open(ino, *flags, &users[*u])).is_ok();
                if ok {
                    let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
                    self.handles.push(Handle {
                        client: *c,
                        ino,
                        user: *u,
                        writable,
                    });
                }
            }
            Op::Close { h } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let handle = self.handles.swap_remove(h % self.handles.len());
                let who = &users[handle.user];
                same!(
                    errno(
                        infra,
                        self.clients[handle.client]
                            .release(&caller(who), handle.ino)
                            .await
                    ),
                    Ok(())
                );
                m.release(handle.ino);
                if handle.client == 1 && *h % 3 == 0 {
                    // A fault leaves the rest queued for the next clear.
                    while let Ok(true) =
                        errno(infra, self.clients[1].clear_deferred_releases().await)
                    {
                    }
                }
            }
            Op::Read { h, offset, len } => {
                let Some(handle) = pick(&self.handles, *h) else {
                    return Ok(());
                };
                let who = &users[handle.user];
                let core = self.clients[handle.client]
                    .read(&caller(who), handle.ino, *offset, *len)
                    .await;
                same!(errno(infra, core), m.read(handle.ino, *offset, *len));
            }
            Op::Write {
                h,
                offset,
                len,
                byte,
            } => {
                let Some(handle) = pick(&self.handles, *h) else {
                    return Ok(());
                };
                if !handle.writable {
                    return Ok(()); // EBADF in the kernel
                }
                let who = &users[handle.user];
                let bytes = vec![*byte; *len];
                let at = offset.map_or(WriteAt::Append, WriteAt::Offset);
                let core = self.clients[handle.client]
                    .write(&caller(who), handle.ino, at, &bytes)
                    .await;
                same!(
                    errno(infra, core),
                    m.write(handle.ino, *offset, &bytes, who)
                );
            }
            Op::Truncate { c, u, path, size } => {
                let Some(ino) = m.resolve(path) else {
                    return Ok(());
                };
                let changes = SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                };
                let core = setattr(&self.clients[*c], infra, &users[*u], ino, changes).await;
                same!(core, m.truncate(ino, *size, &users[*u]));
            }
            Op::Chmod { c, u, path, mode } => {
                let Some(ino) = m.resolve(path) else {
                    return Ok(());
                };
                let changes = SetAttr {
                    mode: Some(*mode),
                    ..SetAttr::default()
                };
                let core = setattr(&self.clients[*c], infra, &users[*u], ino, changes).await;
                same!(core, m.chmod(ino, *mode, &users[*u]));
            }
            Op::Chown {
                c,
                u,
                path,
                uid,
                gid,
            } => {
                let Some(ino) = m.resolve(path) else {
                    return Ok(());
                };
                if uid.is_none() && gid.is_none() {
                    return Ok(());
                }
                let changes = SetAttr {
                    uid: *uid,
                    gid: *gid,
                    ..SetAttr::default()
                };
                let core = setattr(&self.clients[*c], infra, &users[*u], ino, changes).await;
                same!(core, m.chown(ino, *uid, *gid, &users[*u]));
            }
        }
        Ok(())
    }

    /// Close every handle, then compare the whole tree and run fsck.
    pub async fn finish(&mut self) -> Result<(), String> {
        let root = Caller::root();
        while let Some(handle) = self.handles.pop() {
            self.clients[handle.client]
                .release(&root, handle.ino)
                .await
                .map_err(|e| format!("release: {e}"))?;
            self.model.release(handle.ino);
        }
        while self.clients[1]
            .clear_deferred_releases()
            .await
            .map_err(|e| format!("clearing deferred releases: {e}"))?
        {}
        let mut stack = vec![super::ROOT];
        while let Some(dir) = stack.pop() {
            let page = self.clients[0]
                .readdir(&root, dir, None, 10_000)
                .await
                .map_err(|e| format!("readdir: {e}"))?;
            let core: Vec<_> = page
                .entries
                .iter()
                .map(|(n, e)| (n.clone(), e.ino))
                .collect();
            let model: Vec<_> = self.model.nodes[&dir]
                .entries
                .iter()
                .map(|(n, i)| (n.clone(), *i))
                .collect();
            if core != model {
                return Err(format!("directory {dir}: core {core:?} != model {model:?}"));
            }
            for (_, ino) in model {
                let attr = self.clients[1]
                    .getattr(&root, ino)
                    .await
                    .map_err(|e| format!("getattr {ino}: {e}"))?;
                if summary(&attr) != self.model.summary(ino) {
                    return Err(format!(
                        "inode {ino}: core {:?} != model {:?}",
                        summary(&attr),
                        self.model.summary(ino)
                    ));
                }
                match self.model.nodes[&ino].kind {
                    Kind::Dir => stack.push(ino),
                    Kind::File => {
                        let data = self.clients[0]
                            .read(&root, ino, 0, 1 << 20)
                            .await
                            .map_err(|e| format!("read: {e}"))?;
                        if data != self.model.nodes[&ino].data {
                            return Err(format!("inode {ino}: contents differ"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let live = self.model.nodes.len();
        // Files unlinked while closed stay parked for the unlink grace; once
        // it is over a sweep must free exactly those the model dropped.
        if let Some(clock) = &self.clock {
            clock.advance(std::time::Duration::from_nanos(
                DEFAULT_UNLINK_GRACE_NS as u64 + 1,
            ));
        }
        hafs_core::session::sweep_unlinked(&self.db, self.clients[0].keys())
            .await
            .map_err(|e| format!("sweep: {e}"))?;
        let report = check_invariants(&self.db, &self.fs_name, |_| {})
            .await
            .map_err(|e| format!("fsck: {e}"))?;
        if !report.is_clean() {
            return Err(format!("fsck: {:#?}", report.violations));
        }
        if report.inodes != live as u64 {
            return Err(format!(
                "fsck counted {} inodes, model has {live}",
                report.inodes
            ));
        }
        Ok(())
    }
}

fn pick(handles: &[Handle], h: usize) -> Option<&Handle> {
    (!handles.is_empty()).then(|| &handles[h % handles.len()])
}
