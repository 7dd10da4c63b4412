//! Random operation sequences from three users on two clients, applied to
//! the core (over the `mem` KV) and to the reference model (`model/`); every
//! result and errno must agree, and after each sequence the whole tree must
//! match and fsck must be clean. A failure shrinks to a short sequence.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 1000, ~6 s; at 96 a planted
//! bug that skips rename's permission check went unnoticed, at 1000 it fails).

mod model;

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::codec::{Attr, FileType};
use hafs_core::ctx::{Caller, FsOptions, DEFAULT_UNLINK_GRACE_NS};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::Database;
use hafs_core::ops::setattr::SetAttr;
use hafs_core::ops::write::WriteAt;
use model::{Kind, Model, Summary, Who};
use proptest::prelude::*;

const ROOT_MODE: u32 = 0o1777;

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
        groups: who.groups.clone(),
        pid: 1,
    }
}

type Path = Vec<Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
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
        0o755, 0o700, 0o777, 0o1777, 0o2775, 0o644, 0o4755, 0o2755, 0o000, 0o311,
    ])
}

fn op() -> impl Strategy<Value = Op> {
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

fn core_res(r: Result<Attr, FsError>) -> Result<Summary, i32> {
    r.map(|a| summary(&a)).map_err(|e| e.errno())
}

fn errno<T>(r: Result<T, FsError>) -> Result<T, i32> {
    r.map_err(|e| e.errno())
}

struct Handle {
    client: usize,
    ino: u64,
    user: usize,
    writable: bool,
}

struct World {
    db: Database,
    clock: Arc<ManualClock>,
    clients: Vec<Fs>,
    model: Model,
    handles: Vec<Handle>,
    users: [Who; 3],
}

impl World {
    async fn new() -> World {
        let clock = ManualClock::new();
        let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock.clone(), 1);
        let options = MkfsOptions {
            root_mode: ROOT_MODE,
            chunk_size: 512,
            ..MkfsOptions::default()
        };
        mkfs(&db, "fs", options).await.unwrap();
        let mut clients = Vec::new();
        for id in ["c1", "c2"] {
            clients.push(
                Fs::open(db.clone(), "fs", id, FsOptions::default())
                    .await
                    .unwrap(),
            );
        }
        World {
            db,
            clock,
            clients,
            model: Model::new(ROOT_MODE),
            handles: Vec::new(),
            users: users(),
        }
    }

    /// Apply one operation to both sides; Err describes a disagreement.
    // `same!` yields the agreed result; most arms only need the agreement.
    #[allow(unused_must_use)]
    async fn step(&mut self, op: &Op) -> Result<(), String> {
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
                    errno(self.clients[*c].unlink(&caller(&users[*u]), p, name).await),
                    m.unlink(p, name, &users[*u])
                );
            }
            Op::Rmdir { c, u, parent, name } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                same!(
                    errno(self.clients[*c].rmdir(&caller(&users[*u]), p, name).await),
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
                let core = core_res(self.clients[*c].link(&caller(&users[*u]), s, p, name).await);
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
                    errno(core),
                    m.rename(p, name, t, to_name, *flags, &users[*u])
                );
            }
            Op::Lookup { c, u, parent, name } => {
                let Some(p) = m.resolve(parent) else {
                    return Ok(());
                };
                same!(
                    core_res(self.clients[*c].lookup(&caller(&users[*u]), p, name).await),
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
                let core = errno(core)
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
                        self.clients[handle.client]
                            .release(&caller(who), handle.ino)
                            .await
                    ),
                    Ok(())
                );
                m.release(handle.ino);
            }
            Op::Read { h, offset, len } => {
                let Some(handle) = pick(&self.handles, *h) else {
                    return Ok(());
                };
                let who = &users[handle.user];
                let core = self.clients[handle.client]
                    .read(&caller(who), handle.ino, *offset, *len)
                    .await;
                same!(errno(core), m.read(handle.ino, *offset, *len));
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
                same!(errno(core), m.write(handle.ino, *offset, &bytes, who));
            }
            Op::Truncate { c, u, path, size } => {
                let Some(ino) = m.resolve(path) else {
                    return Ok(());
                };
                let changes = SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                };
                let core = core_res(
                    self.clients[*c]
                        .setattr(&caller(&users[*u]), ino, changes)
                        .await,
                );
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
                let core = core_res(
                    self.clients[*c]
                        .setattr(&caller(&users[*u]), ino, changes)
                        .await,
                );
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
                let core = core_res(
                    self.clients[*c]
                        .setattr(&caller(&users[*u]), ino, changes)
                        .await,
                );
                same!(core, m.chown(ino, *uid, *gid, &users[*u]));
            }
        }
        Ok(())
    }

    /// Close every handle, then compare the whole tree and run fsck.
    async fn finish(&mut self) -> Result<(), String> {
        let root = Caller::root();
        while let Some(handle) = self.handles.pop() {
            self.clients[handle.client]
                .release(&root, handle.ino)
                .await
                .map_err(|e| format!("release: {e}"))?;
            self.model.release(handle.ino);
        }
        let mut stack = vec![model::ROOT];
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
        self.clock.advance(std::time::Duration::from_nanos(
            DEFAULT_UNLINK_GRACE_NS as u64 + 1,
        ));
        hafs_core::session::sweep_unlinked(&self.db, self.clients[0].keys())
            .await
            .map_err(|e| format!("sweep: {e}"))?;
        let report = check_invariants(&self.db, "fs", |_| {})
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

fn run(ops: &[Op]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut world = World::new().await;
        for (i, op) in ops.iter().enumerate() {
            world
                .step(op)
                .await
                .map_err(|e| format!("op {i} {op:?}: {e}"))?;
        }
        world.finish().await
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
