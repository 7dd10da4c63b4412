//! The `fuser::Filesystem` implementation: a thin translation from kernel
//! requests to `hafs_core::fs::Fs` calls. No filesystem rules live here;
//! errors become errnos through `FsError::errno` (core's one exhaustive
//! table).
//!
//! On a local database (SQLite, memory) each of the `--fuse-threads` reader
//! threads serves its request to the end itself — a request costs a
//! transaction of tens of microseconds, and handing it to a tokio task
//! costs thread wake-ups of about the same (stat latency 80 → 48 µs, see
//! `HafsFuse::serve`). Lock waits, which can last forever, and every
//! request on a networked database (FoundationDB) run as tokio tasks, so
//! they never stall the others. Consistency first: files are opened with
//! direct I/O, and replies carry nonzero attribute and entry TTLs only
//! while the mount holds the cache lease (it is the filesystem's only
//! client, `hafs_core::cache`), so every mount sees every committed change
//! at once.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType as FuseType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use hafs_core::cache::{
    everyone_may_search, CacheGate, CacheGuard, CacheTicket, GateNow, KernelCache, NameGrants,
    NameTicket,
};
use hafs_core::codec::{Attr, FileType, LockKind};
use hafs_core::ctx::{Caller, Groups};
use hafs_core::error::{FsError, FsResult};
use hafs_core::fs::Fs;
use hafs_core::ops::lock::{LockRequest, LOCK_END_MAX};
use hafs_core::ops::lookup::Looked;
use hafs_core::ops::setattr::{SetAttr, TimeSet};
use hafs_core::ops::write::WriteAt;
use hafs_core::ops::Made;
use parking_lot::Mutex;

/// Entries fetched per readdir page from the KV.
const DIR_PAGE: usize = 512;

/// An open file or directory.
#[derive(Debug)]
enum Handle {
    File,
    Dir(Mutex<DirCursor>),
}

/// A directory listing in progress: the current page of entries, each
/// with the readdir offset that follows it. Offsets 1 and 2 are "." and
/// "..", entries count from 3, so a listing resumes where the kernel asks.
#[derive(Debug, Default)]
struct DirCursor {
    page: Vec<(u64, Vec<u8>, u64, FileType)>,
    done: bool,
}

/// Shared state of a mount.
#[derive(Debug)]
struct Inner {
    fs: Arc<Fs>,
    /// The TTLs replies may carry now.
    cache: Arc<CacheGate>,
    /// Without `-o default_permissions`, which names the kernel may cache
    /// (`hafs_core::cache` module docs); `None`: the kernel checks search
    /// permission itself, so any name may be cached.
    names: Option<NameGrants>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Per open file (`fh`), the (inode, lock owner) pairs that asked for a
    /// lock through it and no FLUSH has unlocked since. The kernel's owner
    /// of an open-file-description lock (`F_OFD_SETLK`) is the open file;
    /// no FLUSH carries it, and RELEASE carries it only for files that
    /// `flock` was used on, so RELEASE unlocks what is left here. A POSIX
    /// owner (a process) is unlocked by the FLUSH of its own close first.
    lockers: Mutex<HashMap<u64, Vec<(u64, u64)>>>,
    next_handle: AtomicU64,
    /// Whether files may be opened through the page cache: the kernel
    /// agreed to `FUSE_AUTO_INVAL_DATA` ([`Inner::open_mode`]).
    page_cache: AtomicBool,
    /// Inodes opened through the page cache that the kernel may still hold
    /// pages of (until it forgets the inode).
    kept: Mutex<HashMap<u64, Kept>>,
    /// Inodes opened (direct I/O) once in an opening of the gate, and which
    /// opening: the next read-only open of one in that opening goes
    /// through the page cache ([`Inner::open_mode`]).
    opened_once: Mutex<HashMap<u64, u64>>,
}

/// What a drop of an inode's pages settles ([`Inner::pages_settled`]).
#[derive(Debug, Clone, Copy)]
enum Settled {
    /// Right for the rest of this opening of the gate.
    InOpening(u64),
    /// Right as of this ctime, without the lease since the given opening.
    Seen(u64, i64),
}

/// What a mount knows of an inode it opened through the page cache.
#[derive(Debug, Clone, Copy)]
struct Kept {
    /// The gate opening in which its pages were last dropped: until that
    /// opening ends they stay right, and opens keep them.
    opening: u64,
    /// Without the lease: the ctime as of its last drop, and the gate
    /// opening that lease-less time followed ([`Inner::pages_unsure`]).
    ctime_ns: Option<(u64, i64)>,
}

/// Files bigger than this at open are direct I/O even under the lease. A
/// big file is mostly streamed, and the page cache slows that down: the
/// kernel reads ahead 128 KiB per request where a direct read asks for the
/// caller's whole buffer (1 MiB reads of a 64 MiB file just written: 920 →
/// 400–690 MiB/s through the page cache, 2026-12-05, the first read after a
/// write drops the pages as the mtime changed), and its pages would push
/// out the small files — configuration, metadata — that gain from it
/// (4 KiB random reads of a cached file ×50).
const PAGE_CACHE_FILE_MAX: u64 = 1 << 20;

/// Inodes [`Inner::kept`] remembers; past this, other inodes are opened
/// direct I/O (an inode leaves it when the kernel forgets the inode, and
/// its pages with it).
const KEPT_MAX: usize = 65_536;

/// The filesystem fuser drives.
#[derive(Debug)]
pub struct HafsFuse {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
    /// Serve requests on the reader thread (local database).
    inline: bool,
    /// Requests served on tasks of their own, which the mount cancels and
    /// waits for before its runtime goes ([`RequestTasks::stop`]).
    tasks: RequestTasks,
}

/// The tasks serving requests off the reader threads (lock waits, and
/// every request on a remote database). A task still inside
/// `block_in_place` when the runtime is dropped would resume after the
/// runtime's timers are gone and panic at its next sleep; stopping them
/// first ends each at its next await instead.
#[derive(Debug, Clone)]
pub struct RequestTasks(Arc<Mutex<Option<tokio::task::JoinSet<()>>>>);

impl Default for RequestTasks {
    fn default() -> Self {
        RequestTasks(Arc::new(Mutex::new(Some(tokio::task::JoinSet::new()))))
    }
}

impl RequestTasks {
    fn spawn<Fut>(&self, runtime: &tokio::runtime::Handle, work: Fut)
    where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks = self.0.lock();
        // Stopped: a reader thread outlived the session's end (an unmount
        // that failed before joining them). Dropping the work drops its
        // reply, which fuser answers with EIO.
        let Some(tasks) = tasks.as_mut() else { return };
        // Forget the finished ones, so the set holds only running tasks.
        while tasks.try_join_next().is_some() {}
        tasks.spawn_on(work, runtime);
    }

    /// Cancel every task and wait until each has ended; later spawns are
    /// refused.
    pub async fn stop(&self) {
        let Some(mut tasks) = self.0.lock().take() else {
            return;
        };
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

impl HafsFuse {
    /// `kernel_checks_permissions`: mounted with `-o default_permissions`.
    pub fn new(
        fs: Arc<Fs>,
        cache: Arc<CacheGate>,
        runtime: tokio::runtime::Handle,
        kernel_checks_permissions: bool,
        tasks: RequestTasks,
    ) -> Self {
        let inline = fs.db().backend().is_local();
        let names = (!kernel_checks_permissions).then(|| NameGrants::new(fs.db().clock().clone()));
        HafsFuse {
            inline,
            inner: Arc::new(Inner {
                fs,
                cache,
                names,
                handles: Mutex::new(HashMap::new()),
                lockers: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
                page_cache: AtomicBool::new(false),
                kept: Mutex::new(HashMap::new()),
                opened_once: Mutex::new(HashMap::new()),
            }),
            runtime,
            tasks,
        }
    }

    /// Serve a request: on this reader thread for a local database, else on
    /// its own task. Measured on a relaxed SQLite mount (alternating runs,
    /// 4 reader threads): single-threaded stat 71–98 → 48–50 µs, open+close
    /// 206–267 → 142–151 µs, create+unlink 369–418 → 273–280 µs; four
    /// threads creating, 5,000–6,300 → 6,000–6,700 creates/s.
    fn spawn<F, Fut>(&self, req: &Request, work: F)
    where
        F: FnOnce(Arc<Inner>, Caller) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.inline {
            self.runtime.block_on(work(self.inner.clone(), caller(req)));
        } else {
            self.spawn_task(req, work);
        }
    }

    /// `fsync`/`fsyncdir`: make everything acknowledged so far durable.
    fn sync(&self, req: &Request, reply: ReplyEmpty) {
        self.spawn(req, move |i, _| async move {
            match i.fs.sync().await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// Serve a request on its own task if `on_task` (it may drop kernel
    /// pages, which can wait for a read that a reader thread must be free
    /// to serve), else as [`HafsFuse::spawn`] would.
    fn spawn_on_task_if<F, Fut>(&self, on_task: bool, req: &Request, work: F)
    where
        F: FnOnce(Arc<Inner>, Caller) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if on_task {
            self.spawn_task(req, work);
        } else {
            self.spawn(req, work);
        }
    }

    /// Serve a request that may wait indefinitely (a lock wait) on its own
    /// task, whatever the database.
    fn spawn_task<F, Fut>(&self, req: &Request, work: F)
    where
        F: FnOnce(Arc<Inner>, Caller) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .spawn(&self.runtime, work(self.inner.clone(), caller(req)));
    }
}

/// The caller of a request; its supplementary groups are read from
/// `/proc/PID/status` (FUSE passes only uid, gid and pid) only if a
/// permission check needs them.
fn caller(req: &Request) -> Caller {
    let pid = req.pid();
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        groups: Groups::lazy(pid, supplementary_groups),
        pid,
    }
}

fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves when thread `tid` (a FUSE request's pid) has a signal pending
/// that would interrupt a lock wait on a local filesystem, or is gone.
///
/// fuser 0.18 answers FUSE_INTERRUPT with ENOSYS itself and never tells the
/// filesystem. The kernel then stops sending interrupts for the whole
/// connection and waits for replies uninterruptibly: a process blocked in
/// F_SETLKW or flock() could not even be killed until the lock came. So
/// the adapter looks for itself, every 100 ms, in /proc: a pending signal
/// that is not blocked, not ignored, and either caught or fatal by default
/// (not a stop, continue or ignore-by-default signal) ends the wait with
/// EINTR, and the cancelled wait leaves nothing queued. The kernel turns a
/// lock's EINTR into ERESTARTSYS, so callers see what a local filesystem
/// gives them: a restart under SA_RESTART, EINTR otherwise.
async fn interrupted(tid: u32) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if signal_pending(tid) {
            return;
        }
    }
}

fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true; // the waiter is gone
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = |sig: i32| 1u64 << (sig - 1);
    // Signals whose default action is to stop, continue or do nothing: they
    // interrupt only when the process catches them.
    let harmless = [
        libc::SIGCHLD,
        libc::SIGCONT,
        libc::SIGURG,
        libc::SIGWINCH,
        libc::SIGSTOP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ]
    .into_iter()
    .fold(0, |m, s| m | bit(s));
    let pending = (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") & !mask("SigIgn:");
    pending & (mask("SigCgt:") | !harmless) != 0
}

fn errno(e: &FsError) -> Errno {
    match e {
        // A full disk is logged where it is found, at most every 10 s.
        FsError::Kv(hafs_core::kv::KvError::NoSpace(_)) => {
            tracing::debug!(error = %e, "operation failed")
        }
        FsError::Corrupted(_) | FsError::Kv(_) => tracing::warn!(error = %e, "operation failed"),
        _ => tracing::debug!(error = %e, "operation failed"),
    }
    Errno::from_i32(e.errno())
}

/// The FUSE node id (and `st_ino`) of hafs inode `ino`, and back: the same
/// function both ways.
///
/// hafs spreads inode numbers over the key space by bit-reversing a
/// counter, so the numbers differ only in their high bits. The kernel's
/// inode hash keys on the node id and keeps mostly low bits, so those
/// numbers fell into a handful of buckets and every lookup walked a long
/// chain: creates in a 40,000-entry directory ran at a quarter of the rate
/// of an empty one, with `find_inode` and `fuse_inode_eq` at 40% of all CPU
/// (perf). Reversing back hands the kernel the dense counter values. The
/// root keeps id 1, and the inode of counter 1 (number 1 << 63, whose
/// reversal is 1) keeps its number.
fn swap_ino(x: u64) -> u64 {
    const COUNTER_ONE: u64 = 1 << 63;
    match x {
        hafs_core::keys::ROOT_INO | COUNTER_ONE => x,
        _ => x.reverse_bits(),
    }
}

fn hafs_ino(node: INodeNo) -> u64 {
    swap_ino(node.0)
}

fn kernel_ino(ino: u64) -> INodeNo {
    INodeNo(swap_ino(ino))
}

/// The kernel's caches of names and attributes, dropped through FUSE
/// notifications when the cache lease is given up (`CacheGate::close`).
#[derive(Debug)]
pub struct KernelNotify(pub fuser::Notifier);

impl KernelCache for KernelNotify {
    fn forget_name(&self, parent: u64, name: &[u8]) -> std::io::Result<()> {
        absent_is_dropped(
            self.0
                .inval_entry(kernel_ino(parent), OsStr::from_bytes(name)),
        )
    }

    fn forget_attrs(&self, ino: u64) -> std::io::Result<()> {
        // Offset -1: attributes only.
        absent_is_dropped(self.0.inval_inode(kernel_ino(ino), -1, 0))
    }

    fn forget_data(&self, ino: u64) -> std::io::Result<()> {
        // Offset 0, length 0: the attributes and every page.
        absent_is_dropped(self.0.inval_inode(kernel_ino(ino), 0, 0))
    }

    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        absent_is_dropped(self.0.store(kernel_ino(ino), offset, data))
    }
}

/// Run `notify` (about inode `ino`) on `kernel` off the executor, as the
/// kernel may wait for a read in flight; whether it succeeded (a failure
/// is logged: could not `what`).
async fn tell_kernel(
    kernel: Arc<dyn KernelCache>,
    what: &str,
    ino: u64,
    notify: impl FnOnce(&dyn KernelCache) -> std::io::Result<()> + Send + 'static,
) -> bool {
    let told = tokio::task::spawn_blocking(move || notify(kernel.as_ref())).await;
    let ok = matches!(told, Ok(Ok(())));
    if !ok {
        tracing::warn!(ino, "could not {what}");
    }
    ok
}

/// Reply with inode `a` for a name cached for `name_ttl` (recorded by the
/// caller), its attributes cached as `ttl` allows (recorded here).
fn found_entry(
    inner: &Inner,
    ttl: &CacheGuard<'_>,
    reply: ReplyEntry,
    a: &Attr,
    name_ttl: Duration,
) {
    let attr_ttl = inner.attr_ttl(ttl, a);
    ttl.handing_attrs(a.ino, attr_ttl);
    reply.entry_with_ttls(
        &attr_ttl,
        &name_ttl,
        &file_attr(a),
        Generation(a.generation),
    );
}

/// The kernel answers ENOENT for a name or inode it no longer holds.
fn absent_is_dropped(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// For operations on an inode the kernel looked up earlier: a missing
/// inode means another client removed it since — `ESTALE`, which makes the
/// kernel redo the lookup once (so an open racing a rename-over opens the
/// new file instead of failing with ENOENT).
fn stale(e: FsError) -> FsError {
    match e {
        FsError::NotFound => FsError::Stale,
        other => other,
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Nanoseconds since the epoch, clamped to what an i64 holds (1677 to
/// 2262), as the kernel clamps times to a filesystem's range; a bare cast
/// made `touch -d 2300-01-01` read back as 1715.
fn ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn kind(k: FileType) -> FuseType {
    match k {
        FileType::Regular => FuseType::RegularFile,
        FileType::Directory => FuseType::Directory,
        FileType::Symlink => FuseType::Symlink,
        FileType::Fifo => FuseType::NamedPipe,
        FileType::Socket => FuseType::Socket,
        FileType::CharDevice => FuseType::CharDevice,
        FileType::BlockDevice => FuseType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: kernel_ino(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: kind(a.kind().unwrap_or(FileType::Regular)),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The attribute TTL for `a` under `ttl`. None for a set-user-ID or
/// set-group-ID file, whose bits a write by another user clears: Linux
/// 6.18 clears them first with a SETATTR of its own (so its cache follows;
/// checked by hand with `setpriv`), and our write transaction clears them
/// too, but a kernel that left that to us would keep exec'ing the file
/// set-ID for a TTL. A stale set-ID mode is not worth the round trip.
fn attr_ttl(ttl: &CacheGuard<'_>, a: &Attr) -> Duration {
    let set_id = libc::S_ISUID | libc::S_ISGID;
    if a.mode & set_id != 0 && !a.is_dir() {
        Duration::ZERO
    } else {
        ttl.attr_ttl()
    }
}

impl Inner {
    /// The reply to an operation that made the name `parent`/… (mknod,
    /// mkdir, symlink, link): cached like a LOOKUP's answer, which the
    /// making transaction's read of the directory's mode stands in for.
    fn entry(
        &self,
        tickets: (CacheTicket, Option<NameTicket>),
        parent: u64,
        name: &[u8],
        reply: ReplyEntry,
        result: FsResult<Made>,
    ) {
        let (ticket, name_ticket) = tickets;
        let ttl = self.cache.enter(ticket);
        match result {
            Ok(Made { attr: a, dir_mode }) => {
                let name_ttl = self.name_ttl(&ttl, name_ticket, parent, Some(dir_mode));
                ttl.handing_name(parent, name, name_ttl);
                found_entry(self, &ttl, reply, &a, name_ttl);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// The tickets an operation takes before it reads what it will let the
    /// kernel cache.
    fn tickets(&self) -> (CacheTicket, Option<NameTicket>) {
        (
            self.cache.ticket(),
            self.names.as_ref().map(NameGrants::ticket),
        )
    }

    /// The TTL of a name in `parent`, whose mode (as read after the
    /// operation's ticket was taken) is `dir_mode`.
    fn name_ttl(
        &self,
        ttl: &CacheGuard<'_>,
        ticket: Option<NameTicket>,
        parent: u64,
        dir_mode: Option<u32>,
    ) -> Duration {
        match (&self.names, ticket, dir_mode) {
            (None, _, _) => ttl.entry_ttl(),
            (Some(names), Some(t), Some(mode)) if everyone_may_search(mode) => {
                names.grant(t, parent, ttl.entry_ttl())
            }
            (Some(_), _, _) => Duration::ZERO,
        }
    }

    /// After a rename from `from` into `to`: the kernel moved the cached
    /// name from `from` into `to` with its TTL (under an exchange, also the
    /// one from `to` into `from`). If such a name may still be believed and
    /// now sits in a directory not everyone may search, wait until it is
    /// not. A name moved out of a directory with no name believed is not
    /// cached, so writing a temporary file in a private directory and
    /// renaming it into a public one never waits (it waited up to a TTL
    /// whenever a name in the public directory had been looked up).
    async fn names_moved(&self, from: u64, to: u64, exchange: bool) {
        let Some(names) = &self.names else { return };
        let live = names.moved(from, to);
        let root = Caller::root();
        for (dir, arrived) in [(to, live.from), (from, exchange && live.to)] {
            if !arrived {
                continue;
            }
            let open = match self.fs.getattr(&root, dir).await {
                Ok(a) => everyone_may_search(a.mode),
                // Gone or unreadable: assume the worst.
                Err(_) => false,
            };
            if !open {
                // `moved` made this directory's wait cover both.
                names.revoke_in(dir).await;
                return;
            }
        }
    }

    /// A LOOKUP's reply. An absent name becomes a negative entry (node id
    /// 0) while caching: the kernel remembers the name is absent, so an
    /// `O_CREAT` open skips its LOOKUP. Without `default_permissions` a
    /// name is cached only in a directory everyone may search.
    fn lookup_entry(
        &self,
        tickets: (CacheTicket, Option<NameTicket>),
        parent: u64,
        name: &[u8],
        reply: ReplyEntry,
        result: FsResult<Looked>,
    ) {
        let (ticket, name_ticket) = tickets;
        let looked = match result {
            Ok(looked) => looked,
            Err(e) => return reply.error(errno(&e)),
        };
        let ttl = self.cache.enter(ticket);
        let entry_ttl = self.name_ttl(&ttl, name_ticket, parent, Some(looked.dir_mode));
        ttl.handing_name(parent, name, entry_ttl);
        match looked.found {
            Some(a) => found_entry(self, &ttl, reply, &a, entry_ttl),
            None if entry_ttl > Duration::ZERO => {
                let absent = FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: UNIX_EPOCH,
                    mtime: UNIX_EPOCH,
                    ctime: UNIX_EPOCH,
                    crtime: UNIX_EPOCH,
                    kind: FuseType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 4096,
                    flags: 0,
                };
                reply.entry_with_ttls(&Duration::ZERO, &entry_ttl, &absent, Generation(0));
            }
            None => reply.error(errno(&FsError::NotFound)),
        }
    }

    fn attr(&self, ticket: CacheTicket, reply: ReplyAttr, result: FsResult<Attr>) {
        let ttl = self.cache.enter(ticket);
        match result {
            Ok(a) => {
                let attr_ttl = self.attr_ttl(&ttl, &a);
                ttl.handing_attrs(a.ino, attr_ttl);
                reply.attr(&attr_ttl, &file_attr(&a))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// The TTL of `a`'s attributes in a reply under `ttl` ([`attr_ttl`]),
    /// and zero for a file whose pages the kernel may hold and this gate
    /// opening has not dropped yet ([`Inner::pages_unsure`]): such pages
    /// may be stale in a way size and mtime do not show, and only the next
    /// read's GETATTR, which its attributes expiring forces, drops them.
    fn attr_ttl(&self, ttl: &CacheGuard<'_>, a: &Attr) -> Duration {
        let unsure = ttl.opening().is_some_and(|opening| {
            self.kept
                .lock()
                .get(&a.ino)
                .is_some_and(|k| k.opening != opening)
        });
        if unsure {
            Duration::ZERO
        } else {
            attr_ttl(ttl, a)
        }
    }

    /// Forget that the kernel's pages of `ino` were right: its next GETATTR
    /// drops them.
    fn pages_unsure_from_now(&self, ino: u64) {
        if let Some(k) = self.kept.lock().get_mut(&ino) {
            k.opening = 0;
            k.ctime_ns = None;
        }
    }

    /// Whether an open with `flags` may go through the page cache, as far
    /// as the flags tell.
    fn may_cache(&self, flags: i32) -> bool {
        flags & libc::O_ACCMODE == libc::O_RDONLY
            && flags & libc::O_DIRECT == 0
            && self.page_cache.load(Ordering::Relaxed)
    }

    /// Whether an open of `ino` with `flags` would first have to drop the
    /// kernel's pages of it ([`Inner::open_mode`]): then it is served on a
    /// task, as the drop may wait for a read in flight.
    fn open_drops_pages(&self, ino: u64, flags: i32) -> bool {
        match self.cache.now() {
            GateNow::Open(opening) => {
                self.may_cache(flags)
                    && self.kept.lock().get(&ino).map(|k| k.opening) != Some(opening)
                    && self.opened_once.lock().get(&ino) == Some(&opening)
            }
            GateNow::ClosedAfter(_) => false,
        }
    }

    /// How an open of the file `a` with `flags`, answered under `ttl`, may
    /// use the kernel's page cache; `may_drop`: the open is served on a
    /// task, where it may drop pages first.
    ///
    /// Without the cache lease every file is direct I/O: each read is a
    /// round trip, so every mount sees every committed change at once.
    /// While the lease is held (the reply falls in an opening of the gate),
    /// every change passes through this mount, so a read-only open of a
    /// file up to [`PAGE_CACHE_FILE_MAX`] goes through the page cache, with
    /// `FOPEN_KEEP_CACHE` — from its second open in that opening on: a file
    /// opened once (most, in a metadata workload) is not worth a drop. The
    /// cost: a file opened once and read many times through that one
    /// descriptor is not cached; and a mapping of a first (direct) open is
    /// not tracked in `kept`, so after the lease it follows another mount's
    /// change only when size or mtime moved (as any direct file's). What
    /// keeps those pages right:
    /// - the first cached open of an inode in an opening drops whatever
    ///   pages the kernel holds of it before replying (they may date from
    ///   before the lease); until that drop is done, no open of it keeps
    ///   pages;
    /// - writers stay direct I/O, and a write makes the kernel mark the
    ///   file's attributes stale (and drop the pages it overwrites, on
    ///   kernels since direct writes invalidate); before each read the
    ///   kernel refreshes stale or expired attributes (TTL 0 once the lease
    ///   is gone) and drops the pages when the size or mtime changed
    ///   (`FUSE_AUTO_INVAL_DATA`); truncation drops them itself;
    /// - a SETATTR reply is the one the kernel takes without that
    ///   comparison, so `setattr` without a size drops the pages of such a
    ///   file first (with one, the next GETATTR does);
    /// - without the lease, a GETATTR of such a file drops its pages when
    ///   they may be stale in a way size and mtime do not show
    ///   ([`Inner::pages_unsure`]).
    ///
    /// Writers stay direct so that a write never waits for the kernel to
    /// fill pages or to look up the file's `security.capability` (a GETXATTR
    /// per write), and so that hafs places `O_APPEND` data at the real end.
    /// `O_DIRECT` asks for direct I/O.
    async fn open_mode(
        &self,
        ttl: &CacheGuard<'_>,
        a: &Attr,
        flags: i32,
        may_drop: bool,
    ) -> FopenFlags {
        let ino = a.ino;
        let Some(opening) = ttl.opening() else {
            return FopenFlags::FOPEN_DIRECT_IO;
        };
        if !self.may_cache(flags) || a.size > PAGE_CACHE_FILE_MAX {
            return FopenFlags::FOPEN_DIRECT_IO;
        }
        let current = {
            let kept = self.kept.lock();
            match kept.get(&ino) {
                Some(k) => k.opening == opening,
                None if kept.len() >= KEPT_MAX => return FopenFlags::FOPEN_DIRECT_IO,
                None => false,
            }
        };
        if !current {
            if !may_drop {
                // The first open in this opening (or the gate opened
                // meanwhile), served on a reader thread: direct, remembered.
                let mut once = self.opened_once.lock();
                if once.len() >= KEPT_MAX {
                    // Forgetting only delays caching.
                    once.clear();
                }
                once.insert(ino, opening);
                return FopenFlags::FOPEN_DIRECT_IO;
            }
            if !self.drop_pages(ino).await {
                return FopenFlags::FOPEN_DIRECT_IO;
            }
            self.pages_dropped(ino, opening);
            self.opened_once.lock().remove(&ino);
        }
        FopenFlags::FOPEN_KEEP_CACHE
    }

    /// The kernel's pages of `ino` were dropped in the gate's `opening`:
    /// from here on, until it closes, every change passes through this
    /// mount and the pages stay right.
    fn pages_dropped(&self, ino: u64, opening: u64) {
        let mut kept = self.kept.lock();
        let entry = kept.entry(ino).or_insert(Kept {
            opening,
            ctime_ns: None,
        });
        entry.opening = opening;
    }

    /// Whether a GETATTR of `ino` may have to drop the kernel's pages of it
    /// ([`Inner::pages_unsure`]); it is served on a task then.
    fn checks_pages(&self, ino: u64) -> bool {
        let Some(k) = self.kept.lock().get(&ino).copied() else {
            return false;
        };
        match self.cache.now() {
            GateNow::Open(opening) => k.opening != opening,
            GateNow::ClosedAfter(_) => true,
        }
    }

    /// Whether the kernel's pages of the file `a` (a GETATTR's answer) may
    /// be stale in a way it cannot see, so that they must be dropped before
    /// the reply; what is known once they are ([`Inner::pages_settled`]).
    ///
    /// The kernel drops pages itself when a read finds another size or
    /// mtime; a change by another mount that keeps both (a same-size write
    /// with the mtime set back) moves only the ctime. So: under the lease,
    /// if no drop was made in this opening yet (an old descriptor reading);
    /// without it, at the first GETATTR since the lease ended (pages read
    /// under it are right only up to its end) and whenever the ctime moved
    /// since the last drop. Every read without the lease asks for the
    /// attributes first (TTL 0), as does the first read of such a file in
    /// an opening ([`Inner::attr_ttl`]), so this check comes before any
    /// page it vouches for is used. Nothing is recorded until the drop is
    /// done: a GETATTR meanwhile drops again rather than trust them.
    fn pages_unsure(&self, a: &Attr) -> Option<Settled> {
        let now = self.cache.now();
        let kept = self.kept.lock();
        let entry = kept.get(&a.ino)?;
        match now {
            GateNow::Open(opening) => {
                (entry.opening != opening).then_some(Settled::InOpening(opening))
            }
            GateNow::ClosedAfter(after) => {
                let seen = Some((after, a.ctime_ns));
                (entry.ctime_ns != seen).then_some(Settled::Seen(after, a.ctime_ns))
            }
        }
    }

    /// The kernel's pages of `ino` were dropped as [`Inner::pages_unsure`]
    /// asked.
    fn pages_settled(&self, ino: u64, settled: Settled) {
        match settled {
            Settled::InOpening(opening) => self.pages_dropped(ino, opening),
            Settled::Seen(after, ctime) => {
                if let Some(k) = self.kept.lock().get_mut(&ino) {
                    k.ctime_ns = Some((after, ctime));
                }
            }
        }
    }

    /// After a drop that answered a GETATTR of the file `a`: the kernel sets
    /// that reply aside (the drop bumped its attribute version), so a read
    /// waiting on it would go on with the size it had — missing what
    /// another mount appended. Storing the file's last byte at its place
    /// (`FUSE_NOTIFY_STORE`) raises the kernel's size to `a.size`. The
    /// kernel marks the page holding it up to date only if the byte begins
    /// that page, which it then holds whole (the file ends there).
    async fn restore_size(&self, a: &Attr) {
        let (Some(kernel), Some(last)) = (self.cache.kernel(), a.size.checked_sub(1)) else {
            return;
        };
        let Ok(byte) = self.fs.read(&Caller::root(), a.ino, last, 1).await else {
            return;
        };
        if byte.len() != 1 {
            return; // shrank meanwhile: the kernel shrinks on a short read
        }
        let ino = a.ino;
        tell_kernel(kernel, "give the kernel a file's size", ino, move |k| {
            k.store(ino, last, &byte)
        })
        .await;
    }

    /// Drop the kernel's pages (and attributes) of `ino`. Whether they are
    /// gone.
    async fn drop_pages(&self, ino: u64) -> bool {
        let Some(kernel) = self.cache.kernel() else {
            return false;
        };
        tell_kernel(kernel, "drop a file's cached pages", ino, move |k| {
            k.forget_data(ino)
        })
        .await
    }

    /// `owner` asks for a lock on `ino` through the open file `fh`.
    fn locking(&self, fh: u64, ino: u64, owner: u64) {
        let mut lockers = self.lockers.lock();
        let pairs = lockers.entry(fh).or_default();
        if !pairs.contains(&(ino, owner)) {
            pairs.push((ino, owner));
        }
    }

    /// A FLUSH released every lock of `owner` on `ino`, whichever open
    /// file it took them through.
    fn unlocked(&self, ino: u64, owner: u64) {
        let mut lockers = self.lockers.lock();
        if lockers.is_empty() {
            return;
        }
        lockers.retain(|_, pairs| {
            pairs.retain(|&pair| pair != (ino, owner));
            !pairs.is_empty()
        });
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Arc::new(handle));
        fh
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.handles.lock().get(&fh.0).cloned()
    }

    /// Fill `reply` from `offset` on, fetching KV pages as needed.
    async fn readdir(
        &self,
        caller: &Caller,
        dir: u64,
        cursor: &Mutex<DirCursor>,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if offset < 1 && reply.add(kernel_ino(dir), 1, FuseType::Directory, ".") {
            return reply.ok();
        }
        if offset < 2 {
            // Listing needs read permission only (checked with the first
            // page); a directory one may read but not search still lists,
            // so `..` is looked up as root.
            let parent = match self.fs.lookup(&Caller::root(), dir, b"..").await {
                Ok(p) => p.ino,
                Err(e) => return reply.error(errno(&e)),
            };
            if reply.add(kernel_ino(parent), 2, FuseType::Directory, "..") {
                return reply.ok();
            }
        }
        // The offset of the last entry the kernel has.
        let mut next = offset.max(2);
        loop {
            let step = {
                let c = cursor.lock();
                match (c.page.first(), c.page.last()) {
                    (Some(first), Some(last)) if first.0 <= next + 1 && last.0 > next => {
                        Step::Serve
                    }
                    (Some(_), Some(last)) if last.0 <= next && c.done => Step::Done,
                    (Some(_), Some(last)) if last.0 <= next => {
                        Step::After(last.1.clone(), last.0 + 1)
                    }
                    _ => Step::FromStart,
                }
            };
            let (after, first_offset) = match step {
                Step::Done => return reply.ok(),
                Step::Serve => {
                    let c = cursor.lock();
                    let from = next;
                    for (off, name, ino, k) in c.page.iter().filter(|e| e.0 > from) {
                        if reply.add(kernel_ino(*ino), *off, kind(*k), OsStr::from_bytes(name)) {
                            return reply.ok();
                        }
                        next = *off;
                    }
                    continue;
                }
                Step::After(name, off) => (Some(name), off),
                Step::FromStart => (None, 3),
            };
            let got = match self
                .fs
                .readdir(caller, dir, after.as_deref(), DIR_PAGE)
                .await
            {
                Ok(got) => got,
                Err(e) => return reply.error(errno(&e)),
            };
            let mut c = cursor.lock();
            c.done = !got.more;
            c.page = got
                .entries
                .into_iter()
                .enumerate()
                .map(|(i, (name, d))| (first_offset + i as u64, name, d.ino, d.kind))
                .collect();
            if c.page.is_empty() {
                return reply.ok();
            }
        }
    }
}

/// What a readdir does next with its cursor.
enum Step {
    Serve,
    Done,
    After(Vec<u8>, u64),
    FromStart,
}

fn to_time(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(ns(t)),
    }
}

/// A FUSE lock range (inclusive end, `OFFSET_MAX` for "to the end") as a
/// core range (exclusive end).
fn lock_end(end: u64) -> u64 {
    if end >= i64::MAX as u64 {
        LOCK_END_MAX
    } else {
        end + 1
    }
}

fn fuse_end(end: u64) -> u64 {
    if end == LOCK_END_MAX {
        i64::MAX as u64
    } else {
        end - 1
    }
}

impl Filesystem for HafsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Locks reach getlk/setlk only with these; without them the kernel
        // keeps locks local to this mount.
        let wanted = InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS;
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::warn!(
                ?missing,
                "kernel lacks lock capabilities; locks stay local to this mount"
            );
        }
        // Under the cache lease files go through the page cache, which
        // needs the kernel to check a file's size and mtime before each
        // read once attributes expire (`Inner::open_mode`); without it
        // every file is direct I/O.
        match config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA) {
            Ok(()) => self.inner.page_cache.store(true, Ordering::Relaxed),
            Err(_) => tracing::info!("kernel lacks FUSE_AUTO_INVAL_DATA: files are direct I/O"),
        }
        // Direct I/O files (every read and write goes to the database):
        // without this (Linux 6.6+) the kernel refuses shared mmap on them.
        // A mapping is served from this mount's page cache: it sees this
        // mount's writes, and other mounts' once a read or stat finds the
        // size or mtime changed.
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_err()
        {
            tracing::info!("kernel older than 6.6: shared mmap of hafs files is refused");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            let tickets = i.tickets();
            let parent = hafs_ino(parent);
            let r = i.fs.lookup_in(&c, parent, &name).await;
            i.lookup_entry(tickets, parent, &name, reply, r)
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // The kernel dropped the inode, and its pages with it.
        let ino = hafs_ino(ino);
        self.inner.kept.lock().remove(&ino);
        self.inner.opened_once.lock().remove(&ino);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = hafs_ino(ino);
        let check = self.inner.checks_pages(ino);
        let work = move |i: Arc<Inner>, c| async move {
            let ticket = i.cache.ticket();
            let r = i.fs.getattr(&c, ino).await.map_err(stale);
            if let (true, Ok(a)) = (check, &r) {
                if let Some(settled) = i.pages_unsure(a) {
                    // Not dropped: the next GETATTR checks again.
                    if i.drop_pages(ino).await {
                        i.pages_settled(ino, settled);
                        i.restore_size(a).await;
                    }
                }
            }
            i.attr(ticket, reply, r)
        };
        self.spawn_on_task_if(check, req, work);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(to_time),
            mtime: mtime.map(to_time),
            ctime: ctime.map(ns),
            by_handle: fh.is_some(),
        };
        let may_wait = mode.is_some() && self.inner.names.is_some();
        // The kernel takes a SETATTR reply's mtime without comparing it with
        // the one its pages were read under: where a direct write leaves the
        // pages it overwrote (kernels before direct writes invalidated them;
        // 6.18 does), a chmod or touch right after it would make them look
        // current. So the pages of a file read through the page cache go
        // first — from a task, as dropping a page may wait for a read in
        // flight, which a reader thread must be free to serve. Not for a
        // size change: the kernel drops the pages itself then, and holds
        // back writes until this reply (`FUSE_NOWRITE`), so a drop that had
        // to write back a dirty mapped page would wait for it forever.
        let drop_pages = size.is_none() && self.inner.kept.lock().contains_key(&hafs_ino(ino));
        let work = move |i: Arc<Inner>, c| async move {
            let ticket = i.cache.ticket();
            let r =
                i.fs.setattr(&c, hafs_ino(ino), changes)
                    .await
                    .map_err(stale);
            if drop_pages && !i.drop_pages(hafs_ino(ino)).await {
                i.pages_unsure_from_now(hafs_ino(ino));
            }
            if size.is_some() {
                // The kernel drops pages itself when the size changes; a
                // truncate to the same size after a write that left pages
                // (older kernels) is caught by the next read's GETATTR.
                i.pages_unsure_from_now(hafs_ino(ino));
            }
            if let (Some(names), Some(_)) = (&i.names, mode) {
                match &r {
                    // Took search permission away from someone: names
                    // cached in this directory must not be walked once we
                    // reply.
                    Ok(a) if a.is_dir() && !everyone_may_search(a.mode) => {
                        names.revoke_in(a.ino).await
                    }
                    // The change may have landed (a timed-out or unknown
                    // commit): assume it did.
                    Err(FsError::Kv(_)) => names.revoke_in(hafs_ino(ino)).await,
                    _ => {}
                }
            }
            i.attr(ticket, reply, r)
        };
        // A chmod may wait out a TTL: not on a reader thread, which the
        // mount's other requests need meanwhile.
        self.spawn_on_task_if(may_wait || drop_pages, req, work);
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(req, move |i, c| async move {
            match i.fs.readlink(&c, hafs_ino(ino)).await.map_err(stale) {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            let tickets = i.tickets();
            let parent = hafs_ino(parent);
            let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
            let r =
                i.fs.mknod_in(&c, parent, &name, mode, u64::from(rdev))
                    .await;
            i.entry(tickets, parent, &name, reply, r)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            let tickets = i.tickets();
            let parent = hafs_ino(parent);
            let r =
                i.fs.mkdir_in(&c, parent, &name, mode & 0o7777 & !umask)
                    .await;
            i.entry(tickets, parent, &name, reply, r)
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            match i.fs.unlink(&c, hafs_ino(parent), &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            match i.fs.rmdir(&c, hafs_ino(parent), &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = link_name.as_bytes().to_vec();
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            let tickets = i.tickets();
            let parent = hafs_ino(parent);
            let r = i.fs.symlink_in(&c, parent, &name, &target).await;
            i.entry(tickets, parent, &name, reply, r)
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        let across = parent != newparent;
        let work = move |i: Arc<Inner>, c| async move {
            let moving = i.cache.moving();
            let (from, to) = (hafs_ino(parent), hafs_ino(newparent));
            let exchange = flags.bits() & libc::RENAME_EXCHANGE != 0;
            let r =
                i.fs.rename(&c, from, &name, to, &newname, flags.bits())
                    .await;
            // The kernel moves a cached name only when the rename
            // succeeded; on an error it keeps both names as they were, so
            // their records stay where they are too (a review found a
            // failed rename's source record moved, and so never dropped).
            if r.is_ok() {
                i.cache.renamed(from, &name, to, &newname, exchange);
            }
            // A timed-out or unknown commit may have landed: for who may
            // walk in through the names, assume it did.
            if across && matches!(r, Ok(()) | Err(FsError::Kv(_))) {
                i.names_moved(from, to, exchange).await;
            }
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
            drop(moving);
        };
        // A rename between directories may wait out a TTL: not on a reader
        // thread, which the mount's other requests need meanwhile.
        if across && self.inner.names.is_some() {
            self.spawn_task(req, work);
        } else {
            self.spawn(req, work);
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            let tickets = i.tickets();
            let newparent = hafs_ino(newparent);
            let r = i.fs.link_in(&c, hafs_ino(ino), newparent, &newname).await;
            i.entry(tickets, newparent, &newname, reply, r)
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = hafs_ino(ino);
        let may_drop = self.inner.open_drops_pages(ino, flags.0);
        let work = move |i: Arc<Inner>, c| async move {
            let ticket = i.cache.ticket();
            match i.fs.open_file(&c, ino, flags.0).await.map_err(stale) {
                Ok(a) => {
                    let fh = i.add_handle(Handle::File);
                    let ttl = i.cache.enter(ticket);
                    let mode = i.open_mode(&ttl, &a, flags.0, may_drop).await;
                    reply.opened(FileHandle(fh), mode);
                }
                Err(e) => reply.error(errno(&e)),
            }
        };
        self.spawn_on_task_if(may_drop, req, work);
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(req, move |i, c| async move {
            match i.fs.read(&c, hafs_ino(ino), offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        // The open file's flags now: `fcntl(F_SETFL)` may have changed
        // O_APPEND since the open.
        let append = flags.0 & libc::O_APPEND != 0;
        self.spawn(req, move |i, c| async move {
            // O_APPEND writes go to the real end at commit time, whatever
            // offset the kernel computed from its (uncached) view.
            let at = if append {
                WriteAt::Append
            } else {
                WriteAt::Offset(offset)
            };
            match i.fs.write(&c, hafs_ino(ino), at, &data).await {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) releases the closing process's POSIX locks on the file.
        self.spawn(req, move |i, c| async move {
            let unlocked = i.fs.unlock_owner(&c, hafs_ino(ino), lock_owner.0).await;
            // Done, or owed and retried by the core (`Fs::unlock_owner`):
            // either way no RELEASE may unlock this owner later (it may
            // hold a newer lock through another open file by then).
            i.unlocked(ino.0, lock_owner.0);
            match unlocked {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.inner.handles.lock().remove(&fh.0);
        let lockers = self.inner.lockers.lock().remove(&fh.0).unwrap_or_default();
        self.spawn(req, move |i, c| async move {
            // The last close of an open file releases its flock (the kernel
            // passes the owner then) and its OFD locks (`Inner::lockers`).
            // The open is released whatever the unlocks answer.
            let mut owners: Vec<u64> = lock_owner.map(|o| o.0).into_iter().collect();
            for (locked, owner) in lockers {
                if locked == ino.0 && !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
            let mut result = Ok(());
            for owner in owners {
                let unlocked = i.fs.unlock_owner(&c, hafs_ino(ino), owner).await;
                result = result.and(unlocked);
            }
            let released = i.fs.release(&c, hafs_ino(ino)).await;
            match result.and(released) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every write is its own committed transaction, so what is left is
        // the database's own sync (relaxed SQLite commits are not fsynced).
        self.sync(req, reply);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(req, move |i, c| async move {
            match i.fs.getattr(&c, hafs_ino(ino)).await.map_err(stale) {
                // open(2) of a directory needs read permission (the kernel
                // checks it only with `-o default_permissions`).
                Ok(a)
                    if a.is_dir()
                        && hafs_core::perm::check(&a, &c, hafs_core::perm::READ).is_err() =>
                {
                    reply.error(Errno::EACCES)
                }
                Ok(a) if a.is_dir() => {
                    let fh = i.add_handle(Handle::Dir(Mutex::new(DirCursor::default())));
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Ok(_) => reply.error(Errno::ENOTDIR),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some(handle) = self.inner.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        self.spawn(req, move |i, c| async move {
            match &*handle {
                Handle::Dir(cursor) => i.readdir(&c, hafs_ino(ino), cursor, offset, reply).await,
                Handle::File => reply.error(Errno::ENOTDIR),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.inner.handles.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(req, reply);
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(req, move |i, c| async move {
            match i.fs.statfs(&c).await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.blocks_free,
                    s.blocks_free,
                    s.files,
                    s.files_free,
                    s.block_size,
                    s.name_max,
                    s.block_size,
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.as_bytes().to_vec(), value.to_vec());
        self.spawn(req, move |i, c| async move {
            match i.fs.setxattr(&c, hafs_ino(ino), &name, &value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            match i.fs.getxattr(&c, hafs_ino(ino), &name).await {
                Ok(v) => xattr_reply(reply, size, v),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(req, move |i, c| async move {
            match i.fs.listxattr(&c, hafs_ino(ino)).await {
                Ok(names) => {
                    let mut out = Vec::new();
                    for n in names {
                        out.extend_from_slice(&n);
                        out.push(0);
                    }
                    xattr_reply(reply, size, out)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            match i.fs.removexattr(&c, hafs_ino(ino), &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.spawn(req, move |i, c| async move {
            match i.fs.access(&c, hafs_ino(ino), mask.bits() as u32).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.as_bytes().to_vec();
        self.spawn(req, move |i, c| async move {
            let (ticket, name_ticket) = i.tickets();
            let parent = hafs_ino(parent);
            let opened =
                i.fs.create_open_in(&c, parent, &name, mode & 0o7777 & !umask, flags)
                    .await;
            match opened {
                Ok(Made { attr: a, dir_mode }) => {
                    let fh = i.add_handle(Handle::File);
                    let ttl = i.cache.enter(ticket);
                    let name_ttl = i.name_ttl(&ttl, name_ticket, parent, Some(dir_mode));
                    // One TTL for the name and the attributes here.
                    let both = name_ttl.min(i.attr_ttl(&ttl, &a));
                    ttl.handing_attrs(a.ino, both);
                    ttl.handing_name(parent, &name, both);
                    reply.created(
                        &both,
                        &file_attr(&a),
                        Generation(a.generation),
                        FileHandle(fh),
                        // Created files are written: direct I/O.
                        FopenFlags::FOPEN_DIRECT_IO,
                    );
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        self.spawn(req, move |i, c| async move {
            let kind = if typ == libc::F_WRLCK {
                LockKind::Write
            } else {
                LockKind::Read
            };
            match i
                .fs
                .getlk(&c, hafs_ino(ino), lock_owner.0, kind, start, lock_end(end))
                .await
            {
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, pid),
                Ok(Some(held)) => {
                    let typ = match held.kind {
                        LockKind::Read => libc::F_RDLCK,
                        LockKind::Write => libc::F_WRLCK,
                    };
                    reply.locked(held.start, fuse_end(held.end), typ, held.pid)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn_task(req, move |i, c| async move {
            let kind = match typ {
                libc::F_RDLCK => Some(LockKind::Read),
                libc::F_WRLCK => Some(LockKind::Write),
                _ => None,
            };
            let request = LockRequest {
                kind,
                start,
                end: lock_end(end),
                pid,
            };
            if kind.is_some() {
                i.locking(fh.0, ino.0, lock_owner.0);
            }
            let waiter = c.pid;
            let result =
                i.fs.setlk(
                    &c,
                    hafs_ino(ino),
                    lock_owner.0,
                    request,
                    sleep,
                    interrupted(waiter),
                )
                .await;
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.spawn(req, move |i, c| async move {
            match i
                .fs
                .fallocate(&c, hafs_ino(ino), mode, offset, length)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: Vec<u8>) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(&value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_the_i64_range_clamp() {
        let far = UNIX_EPOCH + Duration::from_secs(10_413_792_000); // 2300
        assert_eq!(ns(far), i64::MAX);
        let early = UNIX_EPOCH - Duration::from_secs(10_000_000_000); // 1653
        assert_eq!(ns(early), i64::MIN);
        assert_eq!(ns(UNIX_EPOCH - Duration::from_nanos(5)), -5);
        assert_eq!(ns(UNIX_EPOCH + Duration::from_nanos(5)), 5);
    }

    #[test]
    fn node_ids_are_a_dense_involution_with_the_root_fixed() {
        assert_eq!(swap_ino(hafs_core::keys::ROOT_INO), 1);
        for counter in [1u64, 2, 3, 1000, 123_456_789] {
            let ino = hafs_core::fs::alloc::inode_number(counter);
            let node = swap_ino(ino);
            assert_eq!(swap_ino(node), ino, "both ways");
            assert_ne!(node, 1, "no inode shares the root's id");
            if counter > 1 {
                assert_eq!(node, counter, "the kernel sees the dense counter");
            }
        }
    }
}
