//! `sqlite`: the embedded default backend — one SQLite file that several
//! processes on one host share (two hafs mounts of one filesystem).
//!
//! How FoundationDB's semantics are built on SQLite:
//! - **Snapshots.** Each transaction holds a connection with an open WAL read
//!   transaction, so all its reads see one database state; its read version
//!   is the newest row of `commits` in that state.
//! - **Conflicts.** Every write commit appends a row to `commits` holding its
//!   write conflict ranges. Committing takes SQLite's write lock
//!   (`BEGIN IMMEDIATE`), and if any commit newer than the read version wrote
//!   a range this transaction read, it fails with `NotCommitted`. So unrelated
//!   transactions never conflict, while SQLite's single writer makes the
//!   check-then-apply atomic across processes. Rows older than the
//!   transaction age limit (plus a margin) are pruned; a transaction whose
//!   read version predates the kept rows gets `TransactionTooOld`.
//! - **Durability.** Every connection runs `synchronous=NORMAL` in WAL
//!   mode: COMMIT writes the WAL but does not fsync it. A durable commit is
//!   acknowledged only after an fdatasync of the WAL that began after its
//!   COMMIT returned ([`WalSync`]), so it survives power loss; the fsync
//!   happens outside SQLite's write lock and is shared by every commit that
//!   finished while the previous one ran (while write-behind buffers, an
//!   fdatasync of the sync log instead, below). [`Durability::Relaxed`]
//!   skips that wait (a power loss may drop the last commits, never
//!   corrupts) until someone calls [`Backend::sync`].
//! - **Never blocking the executor.** Reads run inline (WAL readers take no
//!   locks; a rare `SQLITE_BUSY` on starting a snapshot is retried on the
//!   blocking pool). An uncontended commit runs inline too (it writes to
//!   the OS page cache and never fsyncs); waiting for the write lock or
//!   for a WAL sync runs off the executor (`block_in_place` or the
//!   blocking pool).
//! - **Group commit.** Commits of this process that find the write lock
//!   taken queue behind one leader, which writes them together in one
//!   SQLite transaction, each still checked for conflicts on its own
//!   ([`GroupCommit`]).
//! - **Write-behind.** A backend that is the only one with the file open (a
//!   lock file says so, [`HostLock`]) keeps commits in a memtable and
//!   writes them out every few milliseconds, handing the file over to any
//!   newcomer first ([`WriteBehind`]). A durable commit there is
//!   acknowledged once a record of the sync log ([`synclog`]) holding it is
//!   synced — one small fdatasync shared by the commits that arrived during
//!   the previous one, and no SQLite transaction on the commit's path.
//!   There, a finished transaction's snapshot serves the next ones for a
//!   few milliseconds ([`Warm`]), and the memtable remembers small values
//!   read from SQLite until a commit writes them
//!   ([`Memtable::remember`]): both rest on the reader's pin.
//! - **Watches** across processes: a watcher thread polls
//!   `PRAGMA data_version` (it changes when any other connection commits)
//!   and is woken at once by commits of this process.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Condvar, Mutex};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::backend::{
    apply_add, Backend, BackendTxn, CommitRequest, Mutation, Waiters, WatchRequest,
};
use super::hostlock::{lock_path, HostLock};
use super::memtable::{self, Memtable, Seen, Unflushed};
use super::synclog::{self, RecordBuf, SyncLog};
use super::url::OpenError;
use super::{KeyRange, KeyValue, KvError, KvResult, Version};
use crate::clock::Clock;
use crate::limits::TRANSACTION_AGE_MAX;

/// On-disk format of the KV tables. A file with a newer format is refused;
/// an older one is upgraded at open.
///
/// - 1: the `hafs_meta`, `kv` and `commits` tables.
/// - 2: a relaxed mount alone on the file may have acknowledged `fsync`s
///   whose commits are only in `<db>-synclog`, which every open replays
///   first (`synclog`). A build of format 1 does not know that file: opening
///   the database after such a mount crashed, it would miss those commits
///   and then number its own commits over them, so that a newer build
///   would later replay the log over a history that had moved on. Hence
///   every open by a build of format 2 stamped it, which format-1 builds
///   refuse.
/// - 3: a breaker fences a lone holder out with a mark in the sync log
///   (`synclog::fence`), which the holder reads back after each append
///   instead of reading `write_behind_owner` from SQLite. A format-2 build
///   breaking in would change only that row, and its retire rewrites the
///   log's whole first page, wiping a newer breaker's mark: a holder of
///   this build would then acknowledge a record after the log was
///   replayed, and lose it. So every open stamps format 3 (before it joins
///   the lock file), which format-2 builds refuse; a format-2 process that
///   had joined before the stamp breaks in only then, in its own open, and
///   is itself fenced by the owner row, which this build's breakers still
///   write. Left: a format-2 open that checked the format just before the
///   stamp and joins just after, while this build's holder is stopped, can
///   still break in the old way — upgrade by stopping old builds first.
pub const FORMAT_VERSION: i64 = 3;
/// Conflict-log rows are kept this long (transaction age limit plus margin).
const LOG_RETENTION: Duration = Duration::from_secs(10);
const _: () = assert!(LOG_RETENTION.as_secs() > TRANSACTION_AGE_MAX.as_secs());
/// Prune the conflict log every this many commits of one process.
const PRUNE_EVERY: u64 = 256;
/// Checkpoint the WAL into the database file after this many commits of one
/// process (and at least every `CHECKPOINT_INTERVAL`). Checkpoints run on
/// their own thread so no commit pays for the checkpoint's fsync.
const CHECKPOINT_EVERY: u64 = 250;
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// WAL length (frames) above which the checkpointer restarts the log
/// (about 40 MiB at SQLite's 4 KiB pages, under `WAL_SIZE_LIMIT_BYTES`).
/// A create writes 8 frames, so at 1,000 nearly every checkpoint (each 250
/// commits) was a RESTART that held writers back: 10,000 measured +15%
/// creates/s and +4% unlinks/s on a relaxed mount (`hafs bench dir --only
/// meta`, 4 rounds alternating with the old value, 2026-12-02).
const WAL_RESTART_FRAMES: i64 = 10_000;
/// The checkpoint thread keeps the WAL file at least this far (bytes)
/// beyond its last live frame, writing zeros in steps of `WAL_AHEAD_BYTES`
/// (`presize_wal`), up to `WAL_PRESIZE_BYTES`.
const WAL_AHEAD_BYTES: u64 = 8 << 20;
/// The size the WAL file is grown to ahead of commits: a RESTARTed WAL
/// (`WAL_RESTART_FRAMES` frames of 4 KiB pages) and one step more, which
/// SQLite then overwrites from the start, cycle after cycle.
const WAL_PRESIZE_BYTES: u64 =
    WAL_HEADER_BYTES + WAL_RESTART_FRAMES as u64 * WAL_FRAME_BYTES + WAL_AHEAD_BYTES;
const _: () = assert!(WAL_PRESIZE_BYTES <= WAL_SIZE_LIMIT_BYTES);
/// SQLite's WAL file header.
const WAL_HEADER_BYTES: u64 = 32;
/// One WAL frame: its 24-byte header and a page (SQLite's default 4 KiB,
/// which hafs databases keep).
const WAL_FRAME_BYTES: u64 = 24 + PAGE_BYTES;
/// SQLite's page size (its default; hafs never sets another).
const PAGE_BYTES: u64 = 4096;
/// How long a RESTART checkpoint waits for readers and writers to drain.
const CHECKPOINT_RESTART_WAIT: Duration = Duration::from_millis(20);
/// Free pages in the database file beyond this many bytes go back to the
/// disk (`vacuum_some`); up to half of it stays, for the next files.
const VACUUM_FREE_BYTES: u64 = 16 << 20;
/// Pages one vacuum transaction gives back (4 MiB) at most, and how many
/// such transactions one checkpoint round runs: each holds SQLite's write
/// lock while it moves pages, so others' commits wait that long; between
/// two, a pause lets them in (waiters poll the lock every 1 ms at most,
/// `wait_for_lock`). Below `VACUUM_STEP_PAGES_MIN` (the disk too full
/// for more), no step.
const VACUUM_STEP_PAGES: u64 = 1024;
const VACUUM_STEP_PAGES_MIN: u64 = 64;
const VACUUM_STEPS_PER_ROUND: u32 = 16;
const VACUUM_STEP_PAUSE: Duration = Duration::from_millis(2);
/// How long a vacuum step waits for SQLite's write lock before it leaves
/// the pages for the next round.
const VACUUM_LOCK_WAIT: Duration = Duration::from_millis(50);
/// How much of the database file a transaction's connection reads through
/// a memory map instead of `pread` while this backend has the database to
/// itself (SQLite's `mmap_size`; SQLite caps it at its compile-time
/// `SQLITE_MAX_MMAP_SIZE`, 2 GiB in the bundled build).
///
/// Why: a 4 KiB chunk is too big for a `WITHOUT ROWID` leaf (at most ~1 KiB
/// of a row stays in the page), so every chunk read also reads an overflow
/// page — through `pread`, one system call and kernel copy per 4 KiB; from
/// the map it is a plain copy. Measured side by side (relaxed mounts, a
/// 256 MiB file of random bytes read with `dd bs=1M` once checkpointed,
/// 3 rounds, 2026-12-05): 930-1,000 -> 1,400-1,500 MB/s; a 1 GiB file read
/// right after it was written (`hafs bench dir --only io --mib 1024`, most
/// of it checkpointed by then), 930-953 -> 1,141-1,240 MiB/s. Pages still
/// in the WAL are read with `pread` as before.
///
/// Why only alone: a connection that finds the database changed by
/// another connection at the start of a transaction unmaps the whole
/// file, and maps it again page fault by page fault. Alone, only the
/// flusher commits (every few milliseconds); shared, every commit of every
/// process does, and mapping cost more than it saved: two mounts of one
/// database, `hafs bench dir --only meta --other-mount`, opens 10,400-11,700
/// -> 5,400-7,600/s, stats -25%.
///
/// The price: an I/O error reading the database through the map is a
/// SIGBUS that ends the process, where `pread` returned EIO (and hafs
/// answered EIO); so is a database file truncated under a running mount
/// by something other than SQLite (a backup copied over it; SQLite's own
/// truncations, `vacuum_some`, never cut a page a reader can still ask
/// for). SQLite maps
/// the file read-only (it writes with `pwrite` whatever the map). Each
/// idle mapped connection keeps its map, so a page read by several counts
/// several times in the process's RSS (once in its cgroup).
const MMAP_BYTES: u64 = 2 << 30;
/// A restarted WAL file is truncated back to this size.
const WAL_SIZE_LIMIT_BYTES: u64 = 64 << 20;
/// How long a commit waits for SQLite's write lock before reporting
/// `Unavailable` (which the runner retries).
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long opening waits by default for SQLite's write lock, held by
/// another process, before giving up ([`SqliteOptions::lock_wait`]).
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Prepared statements kept per connection: every statement this backend
/// runs (about 16), with room to spare, so none is ever parsed twice.
const STATEMENT_CACHE: usize = 64;
/// How long opening waits by default for a process that has the database
/// to itself to hand it over ([`HostLock`]) before fencing it out.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// Write-behind: a commit reaches SQLite at most this long after it was
/// acknowledged (plus the time to write its batch).
const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// How long a write-behind transaction's SQLite snapshot serves later
/// transactions ([`Warm`]): as long as a flush interval, so the memtable
/// keeps at most about one more interval of events for it, and a RESTART
/// checkpoint (which waits `CHECKPOINT_RESTART_WAIT` for readers) finds
/// none older.
const SNAPSHOT_REUSE: Duration = Duration::from_millis(5);

/// Most connections kept with a snapshot for reuse.
const WARM_MAX: usize = 16;
/// Write-behind: flush at once past this many unflushed bytes; commits wait
/// past four times as many.
const FLUSH_BYTES: usize = 4 << 20;
/// Write-behind: how often the holder looks for a newcomer knocking (a
/// `fcntl` each time; what a second mount or a `hafs` command waits at
/// most, on top of writing the memtable out).
const KNOCK_POLL: Duration = Duration::from_millis(10);
/// How often a backend that shares the database tries to have it alone
/// again.
const REGAIN_POLL: Duration = Duration::from_millis(100);
/// Write-behind: how often the flusher tries again after finding the disk
/// full.
const FULL_RETRY: Duration = Duration::from_millis(200);
/// How long closing keeps trying to write out commits to a full disk
/// before giving them up (the process cannot exit while holding them).
const CLOSE_FULL_WAIT: Duration = Duration::from_secs(10);
/// Write-behind's room check ([`Space`]): disk bytes counted per byte of
/// unflushed commits (the WAL, then the database file, with the b-tree's
/// overhead: 1 GiB written took 1.26 GB of WAL and 1.24 GB of database).
const SPACE_AMPLIFICATION: u64 = 3;
/// Commits up to this many bytes (metadata, small files) may use
/// [`SPACE_RESERVE`]; bigger ones leave it free.
const SMALL_COMMIT_BYTES: usize = 8 << 10;
/// Commits this small are never refused for room; a file's create is
/// bigger.
const TINY_COMMIT_BYTES: usize = 256;
/// What a commit that clears may also write and still count as a delete:
/// an inode's attributes, a dirent, markers.
const EXEMPT_WRITES_BYTES: usize = 1 << 10;
const SPACE_RESERVE: u64 = 8 << 20;
/// How stale the free-space figure may be while there is plenty
/// (below `SPACE_LOW` it is read for every commit).
const SPACE_REFRESH: Duration = Duration::from_millis(10);
const SPACE_LOW: u64 = 256 << 20;
/// WAL fsyncs that may run at once ([`WalSync`]).
const SYNCS_IN_FLIGHT: u32 = 2;
/// Idle connections kept for reuse.
const POOL_IDLE_MAX: usize = 32;

/// What an acknowledged commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Power loss: acknowledged after the WAL (or, while write-behind
    /// buffers, the sync log) is fsynced.
    #[default]
    Durable,
    /// Process crash; power loss only once [`Backend::sync`] returned.
    Relaxed,
}

/// Options of the SQLite backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// While this backend is the only one with the database open, keep
    /// commits in memory and write them to SQLite in batches every few
    /// milliseconds ([`WriteBehind`]); durable commits are acknowledged
    /// once the sync log holding them is synced.
    pub write_behind: bool,
    /// How long opening waits for a process that has the database to
    /// itself to hand it over ([`HostLock`]) before fencing it out.
    pub join_wait: Duration,
    /// How long opening waits for SQLite's write lock before failing with
    /// [`OpenError::Busy`]. Other processes hold it for milliseconds at a
    /// time; one stopped (SIGSTOP, a debugger) while it held the lock keeps
    /// it until resumed or killed — an `fcntl` lock nobody can break, so
    /// unlike a stopped holder between writes it cannot be fenced out.
    pub lock_wait: Duration,
    /// How often the watcher looks for commits of other processes.
    pub watch_poll: Duration,
    /// Write-behind: how long an acknowledged commit may wait in memory
    /// before the flusher writes it to SQLite.
    pub flush_interval: Duration,
    /// Write-behind: how long a transaction's SQLite snapshot may serve
    /// later transactions ([`Warm`]); zero never reuses one.
    pub snapshot_reuse: Duration,
    /// How long more than `VACUUM_FREE_BYTES` of the database file must
    /// stay free pages before they go back to the disk (`vacuum_some`):
    /// a file deleted and another written soon after reuse the pages.
    pub vacuum_after: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Durable,
            write_behind: true,
            join_wait: JOIN_WAIT,
            lock_wait: LOCK_WAIT,
            // A waiter on another process's lock release woke on this poll:
            // at 10 ms, lock hand-off between two mounts took 5.2 ms median;
            // at 2 ms, 1.4 ms (`hafs bench locks`, release build). Now the
            // WAL doorbell (`doorbell.rs`) wakes it first (0.47-0.52 ms
            // median) and the poll is the fallback. A poll is one
            // `PRAGMA data_version` (microseconds), run only while a watch
            // is waiting.
            watch_poll: Duration::from_millis(2),
            flush_interval: FLUSH_INTERVAL,
            snapshot_reuse: SNAPSHOT_REUSE,
            // Longer than a big file's delete and rewrite take (the bench
            // writes its next 256 MiB file within seconds: with the pages
            // vacuumed meanwhile, that write ran 7% slower).
            vacuum_after: Duration::from_secs(10),
        }
    }
}

/// The SQLite backend. Clones share connections and watches.
#[derive(Clone)]
pub struct SqliteBackend {
    shared: Arc<Shared>,
    /// Held by the handles only (never by this backend's own threads), so
    /// the last handle's drop writes the memtable out before it returns.
    _closer: Arc<Closer>,
}

/// Writes out what write-behind still holds when the last handle goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        let shared = &self.0;
        // The backend's threads exit at their next wake-up, which comes now:
        // they hold the connections and the lock file, which a process
        // opening the file next should not have to wait for.
        shared.closed.store(true, Ordering::Relaxed);
        shared.checkpoint_wake.notify_all();
        let Some(wb) = &shared.wb else { return };
        // No more buffering: a transaction that outlives the handles
        // commits straight to SQLite (after one retry).
        {
            let mut st = wb.state.lock();
            st.closed = true;
            st.draining = true;
        }
        match open_leader(shared) {
            Ok(conn) => {
                if !drain_until(shared, wb, &conn, Some(CLOSE_FULL_WAIT)) {
                    let mut st = wb.state.lock();
                    if let Some(e) = &st.failed {
                        tracing::error!(error = %e, "sqlite: commits lost at close");
                    } else {
                        let message = format!(
                            "sqlite: the database's disk stayed full for {} s at close: \
                             {} bytes of changes not written to SQLite; those never \
                             synced are lost (synced ones are in the sync log, which \
                             the next opener applies)",
                            CLOSE_FULL_WAIT.as_secs(),
                            st.table.unflushed_bytes()
                        );
                        tracing::error!(%message);
                        st.failed = Some(message);
                    }
                }
            }
            Err(e) => {
                let mut st = wb.state.lock();
                if st.table.has_unflushed() {
                    let message = format!("sqlite: cannot write out commits at close: {e}");
                    tracing::error!(%message, "acknowledged commits lost");
                    st.failed = Some(message);
                }
            }
        }
        stop_buffering(shared, wb);
        wb.wake.notify_all();
    }
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.shared.path)
            .field("options", &self.shared.options)
            .finish()
    }
}

struct Shared {
    path: PathBuf,
    /// The WAL file as SQLite names it: next to the database file with
    /// every symlink in its path resolved (SQLite resolves them too, so a
    /// WAL named after an unresolved symlink would not exist and a sync of
    /// it would silently do nothing).
    wal: PathBuf,
    /// The sync log next to the database ([`synclog`]).
    synclog: PathBuf,
    options: SqliteOptions,
    clock: Arc<dyn Clock>,
    pool: Mutex<Vec<Connection>>,
    /// Idle connections that read the database through a memory map
    /// ([`MMAP_BYTES`]): only transactions of a backend that has the
    /// database to itself use them.
    mapped_pool: Mutex<Vec<Connection>>,
    /// Mapped connections still inside a finished write-behind
    /// transaction's snapshot, each with its memtable pin, for the next
    /// transactions to read through ([`Warm`]). Taken after `wb.state` when
    /// both are held.
    warm: Mutex<Vec<Warm>>,
    commits: AtomicU64,
    /// (time, a version that existed then), one per `PRUNE_EVERY` commits:
    /// rows up to a mark's version may go once the mark is older than
    /// `LOG_RETENTION`. Pruning by version range touches only the rows it deletes.
    prune_marks: Mutex<VecDeque<(i64, Version)>>,
    checkpoint_lock: Mutex<()>,
    checkpoint_wake: Condvar,
    watches: Mutex<WatchTable>,
    watch_wake: Condvar,
    group: GroupCommit,
    wal_sync: WalSync,
    /// WAL bytes the last checkpoint left uncopied into the database file
    /// (what checkpoints may still add to it): write-behind's [`Space`].
    wal_backlog: AtomicU64,
    /// Bytes of the database file's free pages, as last counted.
    db_free_bytes: AtomicU64,
    /// Since when (monotonic) more than `VACUUM_FREE_BYTES` of the
    /// database file has been free pages, if it is.
    free_excess_since: Mutex<Option<Duration>>,
    /// WAL file bytes new frames will overwrite, as last counted.
    wal_reusable: AtomicU64,
    /// The flusher's batch being written (bytes), else 0.
    flushing_bytes: AtomicU64,
    space: Space,
    /// Presence in the lock file next to the database ([`HostLock`]).
    host: HostLock,
    /// Unless `SqliteOptions::write_behind` is off.
    wb: Option<WriteBehind>,
    /// Every handle is gone: the backend's threads exit.
    closed: std::sync::atomic::AtomicBool,
    /// Tests: fail the next sync that goes through SQLite (after it wrote
    /// and synced) without poisoning the backend, with an error retryable
    /// elsewhere, as a connection that stays busy gives.
    #[cfg(test)]
    fail_sql_sync: std::sync::atomic::AtomicBool,
    /// Tests: run once by the next logged sync after its fdatasync, before
    /// it reads the log's first page back for a breaker's mark (to stall
    /// it there).
    #[cfg(test)]
    after_log_append: Mutex<Option<TestHook>>,
    /// Tests: run once by the next attempt to take the file back, as it
    /// reaches the log mutex.
    #[cfg(test)]
    regain_at_log: Mutex<Option<TestHook>>,
}

#[cfg(test)]
type TestHook = Box<dyn FnOnce() + Send>;

/// Tests: run once by the next replay of the sync log at this path, just
/// after it read the log (an opener, before `Shared` exists).
#[cfg(test)]
static REPLAY_READ_HOOK: Mutex<Option<(PathBuf, TestHook)>> = Mutex::new(None);

/// Run the hook in `slot`, if one is set, once (not holding the slot).
#[cfg(test)]
fn run_test_hook(slot: &Mutex<Option<TestHook>>) {
    let hook = slot.lock().take();
    if let Some(hook) = hook {
        hook();
    }
}

/// Commits of this process that could not take SQLite's write lock at
/// once, batched: one SQLite transaction for every commit that arrived
/// while the previous batch was being written. Each commit is still checked
/// against the conflict log on its own and gets its own version; a conflict
/// fails only that commit. Commits of this process queue on a mutex here,
/// not in SQLite's busy handler (which sleeps).
///
/// No thread of its own: a committer queues its work, then takes `leader`.
/// Whoever holds `leader` writes everything queued; a committer that gets
/// `leader` and finds its slot filled was committed by a previous leader.
#[derive(Default)]
struct GroupCommit {
    queue: Mutex<Vec<(CommitWork, Arc<Slot>)>>,
    /// The connection batches are written on (opened on first use).
    leader: Mutex<Option<Connection>>,
}

type Slot = Mutex<Option<KvResult<Version>>>;

/// fdatasyncs of the WAL file, shared: a durable commit (or a relaxed
/// mount's `fsync`) takes a ticket once its COMMIT has returned, and is
/// durable as soon as a sync that *began* after that covers it. A waiter
/// that no sync in flight covers starts one on its own thread, for every
/// ticket issued so far, unless `SYNCS_IN_FLIGHT` are running; the others
/// wait. None holds SQLite's write lock: the next commits are written while
/// the WAL is being flushed.
///
/// Two in flight rather than one: a commit that lands during a sync need
/// not wait for it to end before its own begins (waiting ~1 sync instead
/// of ~1.5). Durable mounts side by side (`hafs bench dir --only meta
/// --files 1000`, 3 alternating rounds, 2026-12-05): creates 4,580 →
/// 4,931/s, the rest within noise; four in flight did no better (5,029 vs
/// 5,022).
///
/// SQLite's `synchronous=FULL` would fsync inside COMMIT, under the write
/// lock, so each fsync covered only the commits batched into that one
/// transaction (~1.8 creates per fsync with four writers, measured
/// 2026-12-02), and nobody could write meanwhile.
///
/// Why this is as safe as FULL: SQLite has one WAL per database, written
/// strictly in commit order, so syncing the file makes every commit in it
/// durable, whichever connection or process wrote it — and a later commit
/// never survives without the earlier ones (recovery keeps a checksummed
/// prefix). Frames a checkpoint already copied out are safe as well: in
/// NORMAL mode a checkpoint syncs the WAL before copying and the database
/// file after, and the WAL starts over only after that; the header of a
/// restarted WAL is synced by SQLite itself.
///
/// The difference from FULL: a commit is visible to other transactions up
/// to two syncs' time before it is acknowledged (the one running when it
/// committed, then its own: about a millisecond on the development VM,
/// more on slow disks). A power loss in that window loses it together with
/// every process on the host that could have seen it, and any commit made
/// after seeing it is lost too (it is later in the same WAL).
///
/// A failed sync (or a checkpoint's failed fsync) poisons the backend: no
/// durable commit of this process succeeds after it. The failing commit
/// itself is already visible; it reports a non-retried `Backend` error
/// (EIO at the FUSE edge): a retry would apply it a second time (this
/// store's commits carry no idempotency marker, see
/// `Backend::ambiguous_commits`).
///
/// Tried and dropped: making a sync about to start wait up to 150 µs for
/// durable commits being written at that moment, or up to 150–400 µs for
/// one more ticket. With four workers creating files on a durable mount
/// syncs fell from 0.56 to 0.42–0.39 per create, but creates/s did not
/// rise (2,554–3,101 without, 2,318–2,677 with; `fdatasync` is cheap next
/// to the rest of a create on this VM's disk), 2026-12-02.
#[derive(Default)]
struct WalSync {
    state: Mutex<WalSyncState>,
    /// A sync ended.
    done: Condvar,
    /// The WAL, open since the first sync, once per sync that may be in
    /// flight (`SYNCS_IN_FLIGHT`; a sync uses its slot's). Linux reports a
    /// failed writeback once to each open file description that was open
    /// when it happened (errseq), and to a new one only if nobody reported
    /// it yet: so a descriptor opened per sync could miss the error that
    /// lost a commit's pages, and two syncs in flight on one descriptor
    /// could see it reported to the first while the second returns success
    /// and acknowledges commits behind the lost pages before the first's
    /// poison lands. One descriptor per slot, all opened together, reports
    /// every error to each slot's next sync. Kept with the file's (device,
    /// inode), and reopened if the file at the path is another one (a WAL
    /// deleted and created again).
    files: Mutex<Option<(Vec<Arc<std::fs::File>>, FileId)>>,
    /// Tests: the descriptors syncs in flight use.
    #[cfg(test)]
    probe: Mutex<SyncProbe>,
}

/// Tests: what `WalSync::sync` saw of syncs in flight.
#[cfg(test)]
#[derive(Default)]
struct SyncProbe {
    in_flight: Vec<i32>,
    /// Most syncs in flight at once.
    most: usize,
    /// Two in flight on one descriptor.
    shared: bool,
}

/// A file's (device, inode).
type FileId = (u64, u64);

#[derive(Default)]
struct WalSyncState {
    /// Tickets handed out so far.
    issued: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// Which of the `SYNCS_IN_FLIGHT` descriptors a running sync holds
    /// (one per sync running now).
    slots_busy: [bool; SYNCS_IN_FLIGHT as usize],
    /// The newest ticket a sync in flight covers.
    running_through: u64,
    /// A sync failed: after a failed fsync the kernel may have dropped the
    /// dirty pages and cleared the error, so a later sync succeeding proves
    /// nothing about earlier commits (PostgreSQL's "fsyncgate", 2018). No
    /// commit of this process is called durable any more; remount.
    failed: Option<String>,
    /// Syncs run, for `SqliteBackend::group_commit_stats`.
    syncs: u64,
    tickets_synced: u64,
}

#[derive(Default)]
struct WatchTable {
    waiting: BTreeMap<Vec<u8>, Waiters>,
    /// A local commit or a new watch: check now rather than at the next poll.
    nudged: bool,
    /// Another process wrote the WAL ([`doorbell`]): read `data_version`
    /// now rather than at the next poll.
    rung: bool,
    thread_running: bool,
    /// The doorbell thread was started (once per backend, at its first
    /// watch; it ends when the backend goes).
    bell_started: bool,
}

impl SqliteBackend {
    /// Open (creating if missing) the database file at `path`.
    pub fn open(
        path: &Path,
        options: SqliteOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<SqliteBackend, OpenError> {
        // Two processes opening one new database at once can find it busy
        // in ways SQLite's busy handler does not cover (seen once in CI:
        // "database is locked" while the other set up WAL mode): retry, up
        // to `lock_wait` in all. (Each attempt waited up to 5 s, and there
        // were 250 of them: a stopped lock holder kept an opener waiting 21
        // minutes without a word.)
        let started = real_now();
        let conn = loop {
            let wait = WRITE_LOCK_WAIT.min(options.lock_wait.saturating_sub(started.elapsed()));
            let opened = connect(path)
                .map_err(|e| open_error(path, e))
                .and_then(|conn| init_schema(&conn, path, wait).map(|()| conn));
            match opened {
                Err(OpenError::Busy { .. }) if started.elapsed() < options.lock_wait => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(OpenError::Busy { path, .. }) => {
                    return Err(OpenError::Busy {
                        holder: write_lock_holder(Path::new(&path)).map_or_else(
                            || "another process".into(),
                            |pid| format!("process {pid}"),
                        ),
                        waited_secs: started.elapsed().as_secs(),
                        path,
                    })
                }
                other => break other?,
            }
        };
        let wal = wal_path(path).map_err(|e| OpenError::Io {
            path: path.display().to_string(),
            message: format!("cannot resolve the database path: {e}"),
        })?;
        // After SQLite had its say about the file (its errors are the more
        // telling ones), before any transaction: a process that has the
        // database to itself hands it over first.
        // Named after the resolved path, as SQLite names its WAL: two
        // openers through different links must find the same lock file.
        let canonical = std::fs::canonicalize(path).map_err(|e| OpenError::Io {
            path: path.display().to_string(),
            message: format!("cannot resolve the database path: {e}"),
        })?;
        let host = HostLock::join(&canonical, options.join_wait).map_err(|e| OpenError::Io {
            path: lock_path(&canonical).display().to_string(),
            message: e.to_string(),
        })?;
        let synclog = synclog::log_path(&canonical);
        if host.broke_in() {
            break_in(&conn, path, &synclog)?;
        }
        replay_sync_log(&conn, &synclog, &wal)?;
        let wb = options.write_behind.then(WriteBehind::default);
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            wal,
            synclog,
            options,
            clock,
            pool: Mutex::new(vec![conn]),
            mapped_pool: Mutex::default(),
            warm: Mutex::default(),
            commits: AtomicU64::new(0),
            prune_marks: Mutex::default(),
            checkpoint_lock: Mutex::new(()),
            checkpoint_wake: Condvar::new(),
            watches: Mutex::default(),
            watch_wake: Condvar::new(),
            group: GroupCommit::default(),
            wal_sync: WalSync::default(),
            wal_backlog: AtomicU64::new(0),
            db_free_bytes: AtomicU64::new(0),
            free_excess_since: Mutex::new(None),
            wal_reusable: AtomicU64::new(0),
            flushing_bytes: AtomicU64::new(0),
            space: Space::default(),
            host,
            wb,
            closed: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fail_sql_sync: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            after_log_append: Mutex::new(None),
            #[cfg(test)]
            regain_at_log: Mutex::new(None),
        });
        start_thread(&shared, "hafs-sqlite-ckpt", checkpoint_loop)?;
        if let Some(wb) = &shared.wb {
            // Alone already? Then buffered from the first transaction on
            // (a later switch would make the first transactions retry).
            let taken = shared.take_connection().and_then(|conn| {
                let taken = enter_buffered(&shared, wb, &conn);
                shared.give_back(conn);
                taken
            });
            if let Err(e) = taken {
                tracing::warn!(error = %e, "sqlite: cannot take the database to itself");
            }
            start_thread(&shared, "hafs-sqlite-flush", flush_loop)?;
        }
        let closer = Arc::new(Closer(shared.clone()));
        Ok(SqliteBackend {
            shared,
            _closer: closer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether commits go to the in-memory write-behind table now (this
    /// backend has the database to itself).
    pub fn write_behind_active(&self) -> bool {
        self.shared
            .wb
            .as_ref()
            .is_some_and(|wb| wb.state.lock().buffered)
    }

    /// Durable commits (and syncs asked for) made durable so far, and the
    /// WAL fsyncs that did it: `(tickets, fsyncs)`.
    pub fn group_commit_stats(&self) -> (u64, u64) {
        let state = self.shared.wal_sync.state.lock();
        (state.tickets_synced, state.syncs)
    }

    /// Syncs (durable commits and syncs asked for) answered while the sync
    /// log was in use, and the records synced for them: `(syncs, records)`.
    pub fn sync_log_stats(&self) -> (u64, u64) {
        self.shared.wb.as_ref().map_or((0, 0), |wb| {
            (
                wb.answered_by_log.load(Ordering::Relaxed),
                wb.log_records.load(Ordering::Relaxed),
            )
        })
    }
}

/// Start one of the backend's own threads; it holds only a weak handle and
/// exits once the backend is gone.
fn start_thread(shared: &Arc<Shared>, name: &str, body: fn(Weak<Shared>)) -> Result<(), OpenError> {
    let weak = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(weak))
        .map(|_| ())
        .map_err(|e| OpenError::Io {
            path: shared.path.display().to_string(),
            message: format!("cannot start thread {name}: {e}"),
        })
}

impl Shared {
    /// Record a mark; return the newest version that is now old enough to
    /// drop from the conflict log, if any.
    fn prune_mark(&self, now_ms: i64, version: Version) -> Option<Version> {
        let cutoff = now_ms - i64::try_from(LOG_RETENTION.as_millis()).unwrap_or(0);
        let mut marks = self.prune_marks.lock();
        marks.push_back((now_ms, version));
        let mut through = None;
        while marks.front().is_some_and(|(at, _)| *at < cutoff) {
            through = marks.pop_front().map(|(_, v)| v);
        }
        through
    }

    fn take_connection(&self) -> KvResult<Connection> {
        if let Some(conn) = self.pool.lock().pop() {
            return Ok(conn);
        }
        connect(&self.path).map_err(map_error)
    }

    /// Pool `conn` for reuse — never one still inside a transaction.
    fn give_back(&self, conn: Connection) {
        pool_again(&self.pool, conn);
    }

    /// A connection for a transaction in `mode`: while this backend has
    /// the database to itself (buffered), one reading it through a memory
    /// map ([`MMAP_BYTES`]); else a plain one.
    fn take_for(&self, mode: TxnMode) -> KvResult<Connection> {
        let TxnMode::Buffered { .. } = mode else {
            return self.take_connection();
        };
        if let Some(conn) = self.mapped_pool.lock().pop() {
            return Ok(conn);
        }
        let conn = self.take_connection()?;
        conn.execute_batch(&format!("PRAGMA mmap_size={MMAP_BYTES};"))
            .map_err(map_error)?;
        Ok(conn)
    }

    /// Pool a transaction's connection again, where [`Shared::take_for`]
    /// took it from.
    fn give_back_for(&self, mode: TxnMode, conn: Connection) {
        match mode {
            TxnMode::Buffered { .. } => pool_again(&self.mapped_pool, conn),
            TxnMode::Direct { .. } => self.give_back(conn),
        }
    }

    /// Keep a finished write-behind transaction's connection, still in its
    /// snapshot, for the next transaction ([`Warm`]), with its pin; gives
    /// it back if the snapshot is too old, the memtable changed
    /// generation, or enough are kept. Checked and pooled under the state
    /// lock, so a hand-over's generation change, then `cool_all`, cannot
    /// miss one.
    fn keep_warm(
        &self,
        conn: Connection,
        generation: u64,
        pin: Version,
        since: Duration,
    ) -> Option<Connection> {
        let Some(wb) = &self.wb else {
            return Some(conn);
        };
        if conn.is_autocommit()
            || self.clock.monotonic().saturating_sub(since) >= self.options.snapshot_reuse
        {
            return Some(conn);
        }
        let st = wb.state.lock();
        if st.closed || !st.buffers_in(generation) {
            return Some(conn);
        }
        let mut warm = self.warm.lock();
        if warm.len() >= WARM_MAX {
            return Some(conn);
        }
        warm.push(Warm {
            conn,
            generation,
            pin,
            since,
        });
        None
    }

    /// A transaction on a warm connection ([`Warm`]), if a fresh one of
    /// the current memtable is pooled; stale ones met on the way are
    /// cooled.
    fn begin_warm(self: &Arc<Self>) -> KvResult<Option<SqliteTxn>> {
        let Some(wb) = &self.wb else { return Ok(None) };
        let now = self.clock.monotonic();
        let (fresh, stale) = {
            let mut warm = self.warm.lock();
            if warm.is_empty() {
                return Ok(None);
            }
            let stale = self.stale(&mut warm, now);
            (warm.pop(), stale)
        };
        self.cool(stale);
        let Some(w) = fresh else { return Ok(None) };
        let read_version = {
            let st = wb.state.lock();
            if let Some(e) = &st.failed {
                let e = KvError::Backend(e.clone());
                drop(st);
                self.cool(vec![w]);
                return Err(e);
            }
            // The snapshot began in this generation and none began since:
            // no hand-over came between, and the memtable kept every event
            // newer than the pin.
            if !st.buffers_in(w.generation) {
                drop(st);
                self.cool(vec![w]);
                return Ok(None);
            }
            st.table.version()
        };
        Ok(Some(SqliteTxn {
            shared: self.clone(),
            conn: Mutex::new(Some(w.conn)),
            spent: Mutex::new(None),
            read_version,
            mode: TxnMode::Buffered {
                generation: w.generation,
                pin: w.pin,
            },
            since: w.since,
        }))
    }

    /// End warm connections' snapshots, release their pins and pool them.
    /// Not while holding `wb.state`.
    fn cool(&self, warm: Vec<Warm>) {
        if warm.is_empty() {
            return;
        }
        for w in &warm {
            let _ = control(&w.conn, "ROLLBACK");
        }
        if let Some(wb) = &self.wb {
            let mut st = wb.state.lock();
            for w in &warm {
                if st.table_generation == w.generation {
                    st.table.unpin(w.pin);
                }
            }
        }
        for w in warm {
            pool_again(&self.mapped_pool, w.conn);
        }
    }

    /// Cool every warm connection (a hand-over, a RESTART checkpoint).
    fn cool_all(&self) {
        let all = std::mem::take(&mut *self.warm.lock());
        self.cool(all);
    }

    /// Cool the warm connections past `snapshot_reuse` (the flusher, every
    /// round: idle ones would otherwise hold their snapshots and pins).
    fn cool_stale(&self, now: Duration) {
        let stale = self.stale(&mut self.warm.lock(), now);
        self.cool(stale);
    }

    /// Take the warm connections past `snapshot_reuse` out of `warm`.
    fn stale(&self, warm: &mut Vec<Warm>, now: Duration) -> Vec<Warm> {
        let reuse = self.options.snapshot_reuse;
        warm.extract_if(.., |w| now.saturating_sub(w.since) >= reuse)
            .collect()
    }

    /// Wait until SQLite holds every commit acknowledged before this call
    /// (a no-op unless write-behind buffers commits). Blocks.
    fn wait_flushed(&self) -> KvResult<()> {
        let Some(wb) = &self.wb else { return Ok(()) };
        let (through, generation, pending) = {
            let st = wb.state.lock();
            (
                st.table.version(),
                st.table_generation,
                st.table.has_unflushed() && st.failed.is_none(),
            )
        };
        if pending {
            // Write it out on this thread: handing it to the flusher and
            // waiting costs two thread wake-ups on the fsync's path.
            self.flush_inline(wb)?;
        }
        let mut tried = false;
        let mut st = wb.state.lock();
        st.sync_wanted = st.sync_wanted.max(through);
        wb.wake.notify_one();
        loop {
            if let Some(e) = &st.failed {
                return Err(KvError::Backend(e.clone()));
            }
            // A later memtable starts from a fully written-out one.
            if st.table_generation != generation || st.table.flushed() >= through {
                return Ok(());
            }
            if st.no_space {
                if tried {
                    // As a local filesystem's fsync on a full disk: ENOSPC,
                    // the changes kept in memory (written once there is room).
                    return Err(KvError::NoSpace(
                        "sqlite: the database's disk is full; the changes are kept in memory"
                            .into(),
                    ));
                }
                // Maybe from an earlier flush, or one still running: try
                // once more (after it, `flushing` orders the two).
                tried = true;
                drop(st);
                self.flush_inline(wb)?;
                st = wb.state.lock();
                continue;
            }
            wb.changed.wait(&mut st);
        }
    }

    /// Write the memtable out on this thread.
    fn flush_inline(&self, wb: &WriteBehind) -> KvResult<()> {
        let mut conn = self.take_connection()?;
        if conn.busy_handler(Some(wait_for_lock)).is_ok() {
            flush_once(self, wb, &conn);
        }
        if conn.busy_timeout(Duration::ZERO).is_ok() {
            self.give_back(conn);
        }
        Ok(())
    }

    /// Wait until everything committed before this call is durable
    /// ([`WalSync`]). Blocks.
    fn wait_durable(&self) -> KvResult<()> {
        let sync = &self.wal_sync;
        let mut state = sync.state.lock();
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if let Some(e) = &state.failed {
                return Err(KvError::Backend(e.clone()));
            }
            // A sync in flight that began after this ticket covers it;
            // otherwise start one, unless enough are in flight already.
            // (`running_through` may name a sync that failed to open the
            // WAL and synced nothing: with nothing running, start one.)
            let free = state.slots_busy.iter().position(|busy| !busy);
            let running = state.slots_busy.iter().any(|busy| *busy);
            let covered = state.running_through >= ticket && running;
            let Some(slot) = free.filter(|_| !covered) else {
                sync.done.wait(&mut state);
                continue;
            };
            state.slots_busy[slot] = true;
            let through = state.issued;
            state.running_through = state.running_through.max(through);
            let result = parking_lot::MutexGuard::unlocked(&mut state, || {
                // A panic must not leave the slot busy: every durable
                // commit could wait for good.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    sync.sync(&self.wal, slot)
                }))
                .unwrap_or_else(|_| Err(SyncError::Sync("the sync panicked".into())))
            });
            state.slots_busy[slot] = false;
            match result {
                // A sync that failed meanwhile on the other descriptor
                // poisoned everything: credit nothing after it.
                Ok(()) if state.failed.is_some() => {}
                Ok(()) => {
                    state.syncs += 1;
                    if through > state.synced {
                        state.tickets_synced += through - state.synced;
                        state.synced = through;
                    }
                }
                Err(SyncError::Open(e)) => {
                    // Nothing was synced and nothing was lost: this waiter
                    // fails, the next one tries again — and so does any
                    // waiter this sync was to cover, once none is running.
                    sync.done.notify_all();
                    return Err(KvError::Backend(e));
                }
                Err(SyncError::Sync(e)) => state.poison(e),
            }
            sync.done.notify_all();
        }
    }

    /// Whether a commit (`relaxed`: it asked for no fsync) is acknowledged
    /// only once durable.
    fn waits_for_disk(&self, relaxed: bool) -> bool {
        self.options.durability == Durability::Durable && !relaxed
    }

    /// `sync` on a relaxed backend: every commit acknowledged before this
    /// call durable. Blocks.
    fn sync_relaxed(&self) -> KvResult<()> {
        let target = self.wb.as_ref().map(|wb| wb.state.lock().table.version());
        self.sync_through(target.unwrap_or_default())
    }

    /// Make every commit through `target` durable — a relaxed backend's
    /// `sync`, and each buffered durable commit before it is acknowledged.
    /// Without write-behind, every commit acknowledged so far. Blocks.
    ///
    /// While write-behind buffers, through the sync log ([`synclog`]): the
    /// commits acknowledged since the last durable point, encoded as they
    /// were acknowledged, become one record, synced; the flusher writes them
    /// to SQLite on its own schedule. One sync at a time writes the log, so
    /// the commits that arrive while one runs share the next (group commit:
    /// a caller whose `target` a finished sync covered returns at once).
    /// Otherwise (sharing the file, the pending commits too big for a
    /// record, or the log full) through SQLite: write the memtable out,
    /// then sync the WAL.
    ///
    /// What keeps replay right (`replay_sync_log`): the log holds every
    /// commit after a version SQLite has durably (`SyncLog::start` begins
    /// only after a WAL sync; a restart follows one), in commit order with
    /// none left out (`pending` is filled under the state lock as commits
    /// are acknowledged; an overflow or a full log goes through SQLite
    /// before logging resumes); and only the exclusive holder starts it and
    /// appends to it (a breaker writes only its mark, `break_in`; an
    /// opener's replay retires it, rewriting the header's bytes).
    /// A `target` read while the backend shared the file is covered too
    /// once it buffers again: a new log starts above a version SQLite has
    /// durably.
    fn sync_through(&self, target: Version) -> KvResult<()> {
        let Some(wb) = &self.wb else {
            return self.wait_durable();
        };
        // One sync at a time writes the log, in order.
        let mut log = wb.log.lock();
        // A failed WAL or checkpoint sync: nothing is called durable any
        // more (`WalSyncState::failed`), logged or not.
        if let Some(e) = &self.wal_sync.state.lock().failed {
            return Err(KvError::Backend(e.clone()));
        }
        let (through, logging, record, owner) = {
            let mut st = wb.state.lock();
            if let Some(e) = &st.failed {
                return Err(KvError::Backend(e.clone()));
            }
            let through = st.table.version();
            let logging = st.buffered && log.is_some();
            if logging && log.as_ref().is_some_and(|l| l.through >= target) {
                wb.answered_by_log.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // Logging resumes after `through`: the commits up to it leave
            // `pending` now (an overflowed `pending` is `None`). Should
            // they fail to become durable below, `pending` becomes `None`
            // again, so no later record can follow a gap.
            let record = logging
                .then(|| st.pending.replace(RecordBuf::default()))
                .flatten();
            (through, logging, record, st.owner.clone())
        };
        let gap = || {
            if logging {
                wb.state.lock().pending = None;
            }
        };
        let mut full = false;
        if let (Some(l), Some(mut record)) = (log.as_mut(), record) {
            match l.append(&mut record) {
                Ok(true) => {
                    #[cfg(test)]
                    run_test_hook(&self.after_log_append);
                    let owned = match l.fenced() {
                        Ok(false) => Ok(()),
                        Ok(true) => {
                            let mut st = wb.state.lock();
                            let message = fenced_out(&mut st);
                            wb.changed.notify_all();
                            Err(KvError::Backend(message))
                        }
                        Err(e) => Err(KvError::Backend(format!(
                            "sqlite: cannot read the sync log back ({}): {e}",
                            self.synclog.display()
                        ))),
                    };
                    if owned.is_ok() {
                        l.through = through;
                        wb.answered_by_log.fetch_add(1, Ordering::Relaxed);
                        wb.log_records.fetch_add(1, Ordering::Relaxed);
                    } else {
                        gap();
                    }
                    return owned;
                }
                Ok(false) => full = true, // through SQLite, then start over
                Err(e) => {
                    // Nothing acknowledged depends on the log yet: go
                    // through SQLite, and stop logging (and encoding).
                    tracing::warn!(error = %e, path = %self.synclog.display(),
                        "sqlite: cannot write the sync log; syncs go through SQLite");
                    *log = None;
                    gap();
                }
            }
        }
        let through_sql = self.wait_flushed().and_then(|()| self.wait_durable());
        #[cfg(test)]
        let through_sql = through_sql.and_then(|()| {
            if self.fail_sql_sync.swap(false, Ordering::Relaxed) {
                return Err(KvError::Unavailable("planted".into()));
            }
            Ok(())
        });
        if let Err(e) = through_sql {
            gap();
            return Err(e);
        }
        // Everything through `through` is durable in SQLite now, and
        // `pending` holds every commit after it (it was replaced under the
        // state lock as `through` was read): the log may go on from there
        // — replay skips what SQLite has — unless it is full, when it
        // starts over after `through`.
        if let Some(l) = log.as_mut().filter(|_| logging) {
            if !full {
                l.through = through;
            } else if let Err(e) = self.as_owner(&owner, || l.restart(through)) {
                *log = None;
                gap();
                tracing::warn!(error = %e, "sqlite: sync log not restarted; syncs go through SQLite");
            }
        }
        Ok(())
    }

    /// Start the sync log for buffering from `newest` on, as `owner`, once
    /// SQLite has everything up to it durably; `None` (syncs then go
    /// through SQLite) if that cannot be done.
    fn start_sync_log(&self, newest: Version, owner: &str) -> Option<SyncLog> {
        let started = self
            .wait_durable()
            .map_err(|e| e.to_string())
            .and_then(|()| {
                self.as_owner(owner, || {
                    SyncLog::start(&self.synclog, newest, self.clock.wall_ns() as u64)
                })
            });
        match started {
            Ok(log) => Some(log),
            Err(e) => {
                tracing::warn!(error = %e, path = %self.synclog.display(),
                    "sqlite: no sync log; syncs go through SQLite");
                None
            }
        }
    }

    /// Run `activate` (which writes an active sync-log header) holding
    /// SQLite's write lock, and only if this backend is still `owner`. A
    /// breaker rewrites the owner under that lock before it reads and
    /// retires the log, so a holder it fenced out can never make the log
    /// active again and fill it with commits of a history that was cut off.
    fn as_owner<T>(
        &self,
        owner: &str,
        activate: impl FnOnce() -> std::io::Result<T>,
    ) -> Result<T, String> {
        let mut conn = self.take_connection().map_err(|e| e.to_string())?;
        let result = conn
            .busy_handler(Some(wait_for_lock))
            .and_then(|()| control(&conn, "BEGIN IMMEDIATE"))
            .and_then(|()| current_owner(&conn))
            .map_err(|e| e.to_string())
            .and_then(|current| match current {
                Some(v) if v == owner => activate().map_err(|e| e.to_string()),
                _ => Err("another process took the database over".to_string()),
            });
        // Nothing was written to SQLite: ROLLBACK only lets go of the lock
        // (a connection left in a transaction is not pooled again).
        let _ = control(&conn, "ROLLBACK");
        if conn.busy_timeout(Duration::ZERO).is_ok() {
            self.give_back(conn);
        }
        result
    }

    /// A checkpoint's fsync of the WAL or the database failed: the same
    /// pages may be lost as after a failed WAL sync ([`WalSyncState::failed`]).
    fn checkpoint_failed(&self, error: &rusqlite::Error) {
        if let rusqlite::Error::SqliteFailure(e, _) = error {
            if e.code == ErrorCode::SystemIoFailure {
                self.poison_syncs(format!("sqlite: checkpoint failed: {error}"));
            }
        }
    }

    /// Pages of the WAL or the database may be lost: no durable commit of
    /// this process succeeds any more ([`WalSyncState::failed`]).
    fn poison_syncs(&self, error: String) {
        let sync = &self.wal_sync;
        sync.state.lock().poison(error);
        sync.done.notify_all();
    }
}

impl Shared {
    /// The room for the database, for [`Space::admit`].
    fn room(&self) -> Room {
        Room {
            free: self.space.free(&self.path, self.clock.monotonic()),
            free_pages: self.db_free_bytes.load(Ordering::Relaxed),
            backlog: self.wal_backlog.load(Ordering::Relaxed),
            wal_reusable: self.wal_reusable.load(Ordering::Relaxed),
            in_flight: self.flushing_bytes.load(Ordering::Relaxed),
        }
    }

    /// [`Space::admit`], logging a refusal (at most every 10 s).
    fn admit(&self, commit: Commit, unflushed: usize, no_space: bool, room: Room) -> KvResult<()> {
        let admitted = Space::admit(commit, unflushed, no_space, room);
        if let Err(e) = &admitted {
            self.space.warn(e, self.clock.monotonic());
        }
        admitted
    }

    /// `bytes` of commits went into the WAL: a checkpoint will copy them
    /// into the database file (with the b-tree's pages, hence 3/2).
    /// Counted until the checkpointer measures the backlog again.
    fn wal_grew(&self, bytes: usize) {
        let frames = (bytes as u64).saturating_mul(3) / 2;
        self.wal_backlog.fetch_add(frames, Ordering::Relaxed);
        let _ = self
            .wal_reusable
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(frames))
            });
    }
}

impl WalSyncState {
    /// No commit of this process is called durable any more.
    fn poison(&mut self, error: String) {
        if self.failed.is_none() {
            tracing::error!(%error, "sqlite: syncing the WAL failed; commits are no longer durable (remount)");
            self.failed = Some(error);
        }
    }
}

enum SyncError {
    /// The WAL could not be opened: nothing synced, nothing lost.
    Open(String),
    /// fdatasync failed: pages may be lost.
    Sync(String),
}

impl WalSync {
    /// fdatasync the WAL at `path` on `slot`'s long-lived descriptor. A
    /// missing WAL has nothing to sync (everything is in the database file,
    /// which checkpoints sync).
    fn sync(&self, path: &Path, slot: usize) -> Result<(), SyncError> {
        let mut files = self.files.lock();
        let current = match file_id(path) {
            Ok(id) => id,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(SyncError::Open(format!(
                    "sqlite: cannot stat {}: {e}",
                    path.display()
                )))
            }
        };
        let f = match files.as_ref() {
            Some((fs, id)) if *id == current => fs[slot].clone(),
            _ => {
                // Every slot's at once: each then reports every later error
                // (one landing between the opens and collected elsewhere in
                // those microseconds could escape the later descriptors: the
                // limit of any descriptor opened after the fact).
                let opened = (0..SYNCS_IN_FLIGHT)
                    .map(|_| std::fs::File::open(path).map(Arc::new))
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|e| {
                        SyncError::Open(format!("sqlite: cannot open {}: {e}", path.display()))
                    })?;
                files.insert((opened, current)).0[slot].clone()
            }
        };
        // Not under the lock: another sync may start meanwhile.
        drop(files);
        #[cfg(test)]
        let fd = {
            use std::os::fd::AsRawFd;
            let fd = f.as_raw_fd();
            let mut probe = self.probe.lock();
            probe.shared |= probe.in_flight.contains(&fd);
            probe.in_flight.push(fd);
            probe.most = probe.most.max(probe.in_flight.len());
            fd
        };
        let synced = f.sync_data();
        #[cfg(test)]
        {
            let mut probe = self.probe.lock();
            if let Some(i) = probe.in_flight.iter().position(|&x| x == fd) {
                probe.in_flight.swap_remove(i);
            }
        }
        synced.map_err(|e| SyncError::Sync(format!("sqlite: cannot sync {}: {e}", path.display())))
    }
}

/// The (device, inode) of the file at `path`, asking for nothing else.
///
/// Not `std::fs::metadata`: since Linux 6.13 (multigrain timestamps) a
/// stat that fetches mtime/ctime marks them as seen, so the next write
/// stamps a fine-grained time and dirties the inode, and on ext4 without a
/// journal every fdatasync then wrote the WAL's inode block too: one more
/// synchronous I/O per durable commit. Counted with `perf record -e
/// block:block_rq_issue` during `hafs bench dir --only meta --files 1000`
/// on a durable mount (its third run, the WAL long since grown): 20,495
/// inode writes for 22,453 cache flushes with `metadata`, 1,954 for 22,737
/// with this (creates 4,742 → 6,113/s in that run).
fn file_id(path: &Path) -> std::io::Result<FileId> {
    let st = statx_only(path, rustix::fs::StatxFlags::INO)?;
    let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
    Ok((dev, st.stx_ino))
}

/// `statx` of `path` asking for `mask` only (never the timestamps: see
/// [`file_id`]).
fn statx_only(path: &Path, mask: rustix::fs::StatxFlags) -> std::io::Result<rustix::fs::Statx> {
    use rustix::fs::{statx, AtFlags, CWD};
    Ok(statx(CWD, path, AtFlags::empty(), mask)?)
}

/// Real time, for waits on other processes: the SQLite backend never runs
/// under the simulator, and a test's manual clock would never end them.
#[allow(clippy::disallowed_methods)]
fn real_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// The process holding SQLite's write lock on the database at `path`, as
/// `/proc/locks` tells: in WAL mode that is an `fcntl` write lock on byte
/// 120 of the `-shm` file (`UNIX_SHM_BASE` + `WAL_WRITE_LOCK` in
/// sqlite3.c). Not `F_GETLK`: that needs a descriptor of the file, and
/// closing it would drop every `fcntl` lock this process's own connections
/// hold on it. `None` when nobody holds it or it cannot be told (a holder
/// in another PID namespace shows as pid 0 or not at all).
fn write_lock_holder(path: &Path) -> Option<u32> {
    const WRITE_LOCK_BYTE: u64 = 120;
    let mut shm = std::fs::canonicalize(path).ok()?.into_os_string();
    shm.push("-shm");
    let st = statx_only(Path::new(&shm), rustix::fs::StatxFlags::INO).ok()?;
    let file = format!(
        "{:02x}:{:02x}:{}",
        st.stx_dev_major, st.stx_dev_minor, st.stx_ino
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "3: POSIX  ADVISORY  WRITE 1234 fe:01:5678 120 120"; a waiter's
        // line has "->" after the number and is skipped by the match.
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "POSIX" | "OFDLCK", _, "WRITE", pid, id, start, end] = fields[..] else {
            return None;
        };
        let start: u64 = start.parse().ok()?;
        let covers = end == "EOF" || end.parse::<u64>().is_ok_and(|end| end >= WRITE_LOCK_BYTE);
        let pid: u32 = pid.parse().ok().filter(|pid| *pid > 0)?;
        (id == file && start <= WRITE_LOCK_BYTE && covers).then_some(pid)
    })
}

/// The WAL's name for the database at `path` (which exists): symlinks
/// resolved, as SQLite resolves them.
fn wal_path(path: &Path) -> std::io::Result<PathBuf> {
    let mut wal = std::fs::canonicalize(path)?.into_os_string();
    wal.push("-wal");
    Ok(PathBuf::from(wal))
}

fn pool_again(pool: &Mutex<Vec<Connection>>, conn: Connection) {
    if !conn.is_autocommit() {
        return;
    }
    let mut pool = pool.lock();
    if pool.len() < POOL_IDLE_MAX {
        pool.push(conn);
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // Wait out a lock while setting up; transactions then use no timeout.
    conn.busy_timeout(WRITE_LOCK_WAIT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Checkpoints (which fsync the database file) belong to the checkpoint
    // thread, never to a commit: SQLite's own autocheckpoint runs inside
    // the COMMIT that crosses its threshold, holding the write lock, so
    // every commit queued behind it waited too. Measured on durable mounts
    // side by side, when durable commits were still batched under FULL
    // (`hafs bench dir --only meta --files 1000`, 3 rounds, 2026-12-02):
    // creates 4,425 -> 4,742/s (medians), opens +25%, renames +20%.
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint=0; \
         PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES};"
    ))?;
    // COMMIT never fsyncs; a durable commit then waits for a shared fsync
    // of the WAL, outside the write lock (`WalSync`).
    conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

/// Run a transaction-control statement (`BEGIN`, `COMMIT`, ...) from the
/// statement cache: `execute_batch` would parse it again every time, which
/// perf showed at 3% of a metadata workload's daemon CPU.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn open_error(path: &Path, e: rusqlite::Error) -> OpenError {
    let path = path.display().to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => OpenError::NotHafs { path },
        Some(ErrorCode::ReadOnly) => OpenError::ReadOnly { path },
        // `open` retries, then says who holds the lock and for how long.
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => OpenError::Busy {
            path,
            holder: String::new(),
            waited_secs: 0,
        },
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
            diagnose_cannot_open(Path::new(&path))
        }
        _ => OpenError::Io {
            path,
            message: e.to_string(),
        },
    }
}

/// SQLite says only "unable to open database file"; find out why by trying
/// what it tried: opening the file (or creating it) for writing.
fn diagnose_cannot_open(path: &Path) -> OpenError {
    let shown = path.display().to_string();
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(!path.exists())
        .truncate(false)
        .open(path);
    match probe {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) && path.exists() =>
        {
            OpenError::ReadOnly { path: shown }
        }
        Err(e) => OpenError::Io {
            path: shown,
            message: e.to_string(),
        },
        // The file itself is writable: its directory is not (SQLite must
        // create the -wal and -shm files beside it).
        Ok(_) => OpenError::Io {
            path: shown,
            message: "cannot create the -wal/-shm files: is its directory writable?".into(),
        },
    }
}

/// Create the tables, or check that an existing file is a hafs database of
/// a format this build reads. Runs under the write lock, so two processes
/// opening a new file at once do not race; also proves the file writable.
fn init_schema(conn: &Connection, path: &Path, wait: Duration) -> Result<(), OpenError> {
    conn.busy_timeout(wait).map_err(|e| open_error(path, e))?;
    // A new database gives the pages of deleted data back to the disk
    // (`vacuum_some`). The pragma takes only on an empty file, before the
    // switch to WAL (which writes the first page); an existing database
    // keeps its mode (SQLite converts only by a VACUUM), and on one made
    // with auto_vacuum the pragma would write page 1 at every open.
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if pages == 0 {
        conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL")
            .map_err(|e| open_error(path, e))?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Io {
            path: path.display().to_string(),
            message: format!("cannot switch to WAL mode (journal_mode is {mode})"),
        });
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| open_error(path, e))?;
    let result = init_schema_locked(conn, path);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = conn.execute_batch(end).map_err(|e| open_error(path, e));
    conn.busy_timeout(Duration::ZERO)
        .map_err(|e| open_error(path, e))?;
    result.and(ended)
}

fn init_schema_locked(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let err = |e| open_error(path, e);
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(err)?;
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='hafs_meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(err)?
        > 0;
    if tables > 0 && !has_meta {
        return Err(OpenError::NotHafs {
            path: path.display().to_string(),
        });
    }
    if has_meta {
        let format: Option<i64> = conn
            .query_row("SELECT value FROM hafs_meta WHERE name='format'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        return match format {
            Some(found) if found > FORMAT_VERSION => Err(OpenError::NewerFormat {
                path: path.display().to_string(),
                found,
                supported: FORMAT_VERSION,
            }),
            Some(found) if found < 1 => Err(OpenError::NotHafs {
                path: path.display().to_string(),
            }),
            Some(found) if found < FORMAT_VERSION => conn
                .execute(
                    "UPDATE hafs_meta SET value = ?1 WHERE name = 'format'",
                    params![FORMAT_VERSION],
                )
                .map(drop)
                .map_err(err),
            Some(_) => Ok(()),
            None => Err(OpenError::NotHafs {
                path: path.display().to_string(),
            }),
        };
    }
    conn.execute_batch(
        "CREATE TABLE hafs_meta(name TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
         CREATE TABLE kv(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
         CREATE TABLE commits(version INTEGER PRIMARY KEY, writes BLOB NOT NULL);
         INSERT INTO commits(version, writes) VALUES (0, x'');",
    )
    .map_err(err)?;
    conn.execute(
        "INSERT INTO hafs_meta(name, value) VALUES ('format', ?1)",
        params![FORMAT_VERSION],
    )
    .map_err(err)?;
    Ok(())
}

/// Map a SQLite error onto the KV error classes.
fn map_error(e: rusqlite::Error) -> KvError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            KvError::Unavailable(format!("sqlite: {e}"))
        }
        Some(ErrorCode::DiskFull) => KvError::NoSpace(format!("sqlite: {e}")),
        Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
            KvError::Backend(format!("sqlite: database corrupted: {e}"))
        }
        _ => KvError::Backend(format!("sqlite: {e}")),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked)
    )
}

/// Start a read snapshot and return its version.
fn start_snapshot(conn: &Connection) -> rusqlite::Result<Version> {
    control(conn, "BEGIN")?;
    let version = conn
        .prepare_cached("SELECT max(version) FROM commits")?
        .query_row([], |r| r.get::<_, i64>(0));
    match version {
        Ok(v) => Ok(u64::try_from(v).unwrap_or(0)),
        Err(e) => {
            let _ = control(conn, "ROLLBACK");
            Err(e)
        }
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn is_local(&self) -> bool {
        true
    }

    /// Only an I/O error during COMMIT (after which the WAL may hold the
    /// commit frame) or a group-commit leader that panicked leaves a
    /// commit's outcome unknown; BUSY applied nothing, and there is no
    /// timeout. The filesystem reports those as EIO rather than retrying,
    /// as a local filesystem whose disk failed mid-write would, and so
    /// writes no idempotency marker in any commit: one key and often one
    /// WAL frame less per mutation (unlinks +41%, renames +13%, creates +9%
    /// on a relaxed mount: `hafs bench dir --only meta --files 1000`, 4
    /// alternating rounds, 2026-12-04).
    fn ambiguous_commits(&self) -> bool {
        false
    }

    async fn begin(&self) -> KvResult<Box<dyn BackendTxn>> {
        if let Some(txn) = self.shared.begin_warm()? {
            return Ok(Box::new(txn));
        }
        loop {
            let mode = match &self.shared.wb {
                Some(wb) => wb.begin()?,
                None => TxnMode::Direct { generation: 0 },
            };
            // Pinned before the snapshot: the memtable keeps every event
            // newer than what the snapshot can hold.
            let txn = SqliteTxn {
                shared: self.shared.clone(),
                conn: Mutex::new(None),
                spent: Mutex::new(None),
                read_version: 0,
                mode,
                since: self.shared.clock.monotonic(),
            };
            let conn = self.shared.take_for(mode)?;
            let (conn, stored_version) = match start_snapshot(&conn) {
                Ok(v) => (conn, v),
                Err(e) if is_busy(&e) => snapshot_blocking(conn).await?,
                Err(e) => return Err(map_error(e)),
            };
            *txn.conn.lock() = Some(conn);
            let read_version = match (&self.shared.wb, mode) {
                (Some(wb), TxnMode::Buffered { generation, .. }) => {
                    let st = wb.state.lock();
                    // Still the same memtable generation after the snapshot:
                    // so the snapshot holds nothing written after a hand-over.
                    if st.generation != generation {
                        continue;
                    }
                    st.table.version()
                }
                _ => stored_version,
            };
            let mut txn = txn;
            txn.read_version = read_version;
            return Ok(Box::new(txn));
        }
    }

    /// Relaxed commits reach the WAL file but are not fsynced; a shared
    /// WAL sync ([`WalSync`]) makes them all durable, whichever connection
    /// or process wrote them. Durable commits were synced before they were
    /// acknowledged.
    async fn sync(&self) -> KvResult<()> {
        if self.shared.options.durability == Durability::Durable {
            return Ok(());
        }
        let shared = self.shared.clone();
        off_executor(move || shared.sync_relaxed()).await?
    }
}

/// Start a snapshot on the blocking pool, waiting out a busy database.
async fn snapshot_blocking(mut conn: Connection) -> KvResult<(Connection, Version)> {
    tokio::task::spawn_blocking(move || {
        conn.busy_handler(Some(wait_for_lock)).map_err(map_error)?;
        let version = start_snapshot(&conn);
        conn.busy_timeout(Duration::ZERO).map_err(map_error)?;
        Ok((conn, version.map_err(map_error)?))
    })
    .await
    .map_err(|e| KvError::Backend(format!("sqlite worker failed: {e}")))?
}

struct SqliteTxn {
    shared: Arc<Shared>,
    /// The connection holding this transaction's snapshot; `None` once the
    /// transaction committed.
    conn: Mutex<Option<Connection>>,
    /// After a write-behind commit: the connection, still in its snapshot,
    /// for the drop to keep warm ([`Warm`]).
    spent: Mutex<Option<Connection>>,
    read_version: Version,
    mode: TxnMode,
    /// When its snapshot began, or before (monotonic).
    since: Duration,
}

impl fmt::Debug for SqliteTxn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteTxn")
            .field("read_version", &self.read_version)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Drop for SqliteTxn {
    fn drop(&mut self) {
        let conn = match self.conn.get_mut().take() {
            Some(conn) => Some(conn),
            None => self.spent.get_mut().take(),
        };
        let conn = match (conn, self.mode) {
            (Some(conn), TxnMode::Buffered { generation, pin }) => {
                match self.shared.keep_warm(conn, generation, pin, self.since) {
                    // The pin went with it.
                    None => return,
                    Some(conn) => Some(conn),
                }
            }
            (conn, _) => conn,
        };
        if let Some(conn) = conn {
            let _ = control(&conn, "ROLLBACK");
            self.release(conn);
        }
        if let Some(wb) = &self.shared.wb {
            wb.end(self.mode);
        }
    }
}

impl SqliteTxn {
    /// Pool this transaction's connection again, in the pool it came from.
    fn release(&self, conn: Connection) {
        self.shared.give_back_for(self.mode, conn);
    }

    /// End the snapshot of the committed transaction's connection
    /// (`spent`); the drop then pools it without one.
    fn end_snapshot(&self) {
        if let Some(conn) = self.spent.lock().as_ref() {
            let _ = control(conn, "ROLLBACK");
        }
    }

    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> KvResult<T> {
        let guard = self.conn.lock();
        let conn = guard.as_ref().ok_or(KvError::UsedAfterCommit)?;
        f(conn).map_err(map_error)
    }
}

#[async_trait]
impl BackendTxn for SqliteTxn {
    fn read_version(&self) -> Version {
        self.read_version
    }

    async fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        if let (Some(wb), TxnMode::Buffered { generation, .. }) = (&self.shared.wb, self.mode) {
            if let Seen::Known(v) = wb.lookup(generation, key, self.read_version)? {
                return Ok(v);
            }
            let value = self.with_conn(|conn| read_value(conn, key))?;
            // Read under this transaction's pin (`Memtable::remember`).
            wb.remember(generation, key, value.as_deref());
            return Ok(value);
        }
        self.with_conn(|conn| read_value(conn, key))
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> KvResult<(Vec<KeyValue>, bool)> {
        if begin >= end {
            return Ok((Vec::new(), false));
        }
        let (Some(wb), TxnMode::Buffered { generation, .. }) = (&self.shared.wb, self.mode) else {
            return self.with_conn(|conn| stored_range(conn, begin, end, limit, reverse));
        };
        // SQLite's pages merged with the memtable, window by window, as the
        // transaction facade merges its own writes.
        let target = if limit == 0 { 0 } else { limit + 1 };
        let mut kvs: Vec<KeyValue> = Vec::new();
        let (mut lo, mut hi) = (begin.to_vec(), end.to_vec());
        while lo < hi && (target == 0 || kvs.len() < target) {
            let want = if target == 0 { 0 } else { target - kvs.len() };
            let (page, page_more) =
                self.with_conn(|conn| stored_range(conn, &lo, &hi, want, reverse))?;
            let (w_lo, w_hi) = match (page_more, page.last(), reverse) {
                (true, Some((last, _)), false) => (lo.clone(), super::key_after(last)),
                (true, Some((last, _)), true) => (last.clone(), hi.clone()),
                _ => (lo.clone(), hi.clone()),
            };
            let window = {
                let st = wb.state.lock();
                if st.table_generation != generation {
                    return Err(KvError::TransactionTooOld);
                }
                st.table
                    .merge_window(&w_lo, &w_hi, self.read_version, page, reverse)
            };
            super::append(&mut kvs, window);
            if reverse {
                hi = w_lo;
            } else {
                lo = w_hi;
            }
        }
        let more = target != 0 && kvs.len() >= target;
        if more {
            kvs.truncate(limit);
        }
        Ok((kvs, more))
    }

    async fn commit(&self, request: CommitRequest) -> KvResult<Version> {
        let conn = self.conn.lock().take().ok_or(KvError::UsedAfterCommit)?;
        if request.is_read_only() {
            if let TxnMode::Buffered { .. } = self.mode {
                // The drop keeps it warm.
                *self.spent.lock() = Some(conn);
            } else {
                let ended = control(&conn, "ROLLBACK").map_err(map_error);
                self.release(conn);
                ended?;
            }
            arm_watches(&self.shared, request.watches);
            return Ok(self.read_version);
        }
        let generation = match self.mode {
            TxnMode::Buffered { generation, .. } => {
                return self.commit_buffered(conn, generation, request).await;
            }
            TxnMode::Direct { generation } => generation,
        };
        // Straight into the WAL, then the database file: the same room
        // check as a buffered commit, with nothing unflushed ([`Space`];
        // without it a full disk took the WAL past what a checkpoint could
        // copy, and not even a delete could commit again).
        let commit = Commit::of(&request);
        if let Err(e) = self.shared.admit(commit, 0, false, self.shared.room()) {
            let _ = control(&conn, "ROLLBACK");
            self.release(conn);
            return Err(e);
        }
        let direct = match DirectCommit::enter(&self.shared, generation) {
            Ok(guard) => guard,
            Err(e) => {
                let _ = control(&conn, "ROLLBACK");
                self.release(conn);
                return Err(e);
            }
        };
        let at_ms = self.shared.clock.wall_ns() / 1_000_000;
        let commits = self.shared.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if commits.is_multiple_of(CHECKPOINT_EVERY) {
            self.shared.checkpoint_wake.notify_one();
        }
        let work = CommitWork {
            read_version: self.read_version,
            mutations: request.mutations,
            read_conflicts: request.read_conflicts,
            writes: request.write_conflicts,
            prune_through: commits
                .is_multiple_of(PRUNE_EVERY)
                .then(|| self.shared.prune_mark(at_ms, self.read_version))
                .flatten(),
            relaxed: request.relaxed,
        };
        let durable = self.shared.waits_for_disk(work.relaxed);
        // No fsync at COMMIT (`WalSync`; checkpoints run on their own
        // thread), so an uncontended commit runs inline. If another commit
        // holds the lock or landed since the snapshot, the group committer
        // takes over: it checks the conflict log.
        let inline = commit_promoted(&conn, &work);
        self.release(conn);
        let result = match inline {
            Attempt::Done(result) => {
                drop(direct);
                result
            }
            Attempt::Busy => {
                let shared = self.shared.clone();
                // The count moves with the work: if this future is
                // dropped, a commit on the blocking pool is still in flight.
                off_executor(move || {
                    let _direct = direct;
                    commit_grouped(&shared, work)
                })
                .await?
            }
        };
        let version = result?;
        self.shared.wal_grew(commit.bytes);
        nudge_watcher(&self.shared);
        if durable {
            // Committed and visible, not durable if the sync fails. That
            // error is not retried (a retry would apply it a second time):
            // the caller gets EIO,
            // as from a local filesystem whose disk failed mid-write.
            let shared = self.shared.clone();
            off_executor(move || shared.wait_durable()).await??;
        }
        arm_watches(&self.shared, request.watches);
        Ok(version)
    }
}

impl SqliteTxn {
    /// Commit into the memtable ([`WriteBehind`]): checked against its log,
    /// acknowledged at once, written to SQLite by the flusher.
    async fn commit_buffered(
        &self,
        conn: Connection,
        generation: u64,
        request: CommitRequest,
    ) -> KvResult<Version> {
        let shared = &self.shared;
        // Atomic adds on keys the memtable holds no event of read SQLite
        // in this snapshot: the pin, held until the drop, kept every newer
        // event in the table, so such a key is unchanged since ([`Warm`]).
        // The drop then keeps the connection warm.
        *self.spent.lock() = Some(conn);
        let Some(wb) = shared.wb.as_ref() else {
            return Err(KvError::Backend("sqlite: no memtable".into()));
        };
        let durable = shared.waits_for_disk(request.relaxed);
        if WriteBehind::must_wait(&wb.state.lock()) {
            // Not waiting inside a snapshot: a RESTART checkpoint waits for
            // every reader, and this one waits for the flusher, which that
            // checkpoint holds back. Reads in autocommit see SQLite now,
            // just as right under the pin.
            self.end_snapshot();
            let waiter = shared.clone();
            off_executor(move || {
                if let Some(wb) = &waiter.wb {
                    wb.wait_writable();
                }
            })
            .await?;
        }
        let commit = Commit::of(&request);
        let room = shared.room();
        let result = {
            let mut st = wb.state.lock();
            if let Some(e) = &st.failed {
                Err(KvError::Backend(e.clone()))
            } else if st.generation != generation || !st.buffered || st.draining {
                Err(KvError::NotCommitted)
            } else if let Err(e) =
                shared.admit(commit, st.table.unflushed_bytes(), st.no_space, room)
            {
                Err(e)
            } else {
                let now = shared.clock.monotonic();
                let spent = self.spent.lock();
                let committed = st.table.commit(
                    self.read_version,
                    &request.read_conflicts,
                    request.write_conflicts,
                    request.mutations,
                    now,
                    |key| match spent.as_ref() {
                        Some(conn) => read_value(conn, key).map_err(map_error),
                        None => Err(KvError::UsedAfterCommit),
                    },
                );
                drop(spent);
                if committed.is_ok() {
                    if st.first_unflushed.is_none() {
                        st.first_unflushed = Some(now);
                        wb.wake.notify_one();
                    }
                    log_pending(&mut st);
                }
                committed
            }
        };
        let version = result?;
        nudge_watcher(shared);
        if durable {
            // The sync may wait for SQLite's write lock (a flush): not
            // inside a snapshot either.
            self.end_snapshot();
            // As a direct commit: visible now, acknowledged once durable. A
            // failed sync must not be retried — the commit is in the
            // memtable, maybe in the log on disk, and a retry would apply it
            // twice — so every failure is a `Backend` error (EIO), even one
            // that is retryable elsewhere (a BUSY connection: `Unavailable`).
            let syncer = shared.clone();
            off_executor(move || syncer.sync_through(version))
                .await?
                .map_err(|e| match e {
                    KvError::Backend(_) => e,
                    other => KvError::Backend(format!(
                        "sqlite: a durable commit could not be made durable: {other}"
                    )),
                })?;
        }
        arm_watches(shared, request.watches);
        Ok(version)
    }
}

/// Encode the commit just acknowledged for the sync log's next record —
/// unless that would take the record past `synclog::RECORD_MAX`: then
/// `pending` becomes `None` without encoding it, and the next sync goes
/// through SQLite.
fn log_pending(st: &mut WbState) {
    let st = &mut *st;
    let overflow = match (st.pending.as_mut(), st.table.last_unflushed()) {
        (Some(buf), Some(c)) => {
            let bytes: usize = c.mutations.iter().map(memtable::mutation_bytes).sum();
            let fits = buf.len() + bytes <= synclog::RECORD_MAX;
            if fits {
                buf.push(c.version, &c.mutations);
            }
            !fits
        }
        _ => false,
    };
    if overflow {
        st.pending = None;
    }
}

/// Run blocking `f` without stalling the executor: on a multi-threaded
/// runtime `block_in_place` hands this worker's other tasks to another
/// thread and runs `f` right here (no thread switch, which costs more than
/// a whole relaxed commit); elsewhere, on the blocking pool.
async fn off_executor<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> KvResult<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi_thread {
        return Ok(tokio::task::block_in_place(f));
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KvError::Backend(format!("sqlite worker failed: {e}")))
}

/// SQLite's busy handler for waiting on another process's write lock
/// (`n`: retries so far). SQLite's own sleeps 1, 2, 5, 10… ms, while a
/// relaxed commit holds the lock for tens of microseconds: poll at 20 µs,
/// then 100 µs, then 1 ms, for about `WRITE_LOCK_WAIT` in all.
fn wait_for_lock(n: i32) -> bool {
    const FAST: i32 = 50;
    const MEDIUM: i32 = FAST + 200;
    let slow_max = i32::try_from(WRITE_LOCK_WAIT.as_millis()).unwrap_or(5_000);
    let pause = if n < FAST {
        Duration::from_micros(20)
    } else if n < MEDIUM {
        Duration::from_micros(100)
    } else if n < MEDIUM + slow_max {
        Duration::from_millis(1)
    } else {
        return false;
    };
    std::thread::sleep(pause);
    true
}

/// Commit `work` in a batch (see [`GroupCommit`]). Blocks.
fn commit_grouped(shared: &Shared, work: CommitWork) -> KvResult<Version> {
    let slot: Arc<Slot> = Arc::default();
    shared.group.queue.lock().push((work, slot.clone()));
    let mut leader = shared.group.leader.lock();
    if let Some(result) = slot.lock().take() {
        return result;
    }
    let batch = std::mem::take(&mut *shared.group.queue.lock());
    let opened = leader.take().map_or_else(|| open_leader(shared), Ok);
    let results = match opened {
        Ok(conn) => {
            let results = commit_batch(&conn, &batch);
            // A connection left inside a transaction (a ROLLBACK that
            // failed) would hold SQLite's write lock for good: keep it only
            // if it is not.
            if conn.is_autocommit() {
                *leader = Some(conn);
            }
            results
        }
        Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    };
    for ((_, s), result) in batch.iter().zip(results) {
        *s.lock() = Some(result);
    }
    drop(leader);
    let result = slot.lock().take();
    // Only a panic in a leader (after which its batch may or may not have
    // committed) leaves a slot empty.
    result.unwrap_or(Err(KvError::CommitUnknownResult))
}

/// The group committer's connection: it waits for the write lock.
fn open_leader(shared: &Shared) -> KvResult<Connection> {
    let mut conn = connect(&shared.path).map_err(map_error)?;
    conn.busy_handler(Some(wait_for_lock)).map_err(map_error)?;
    Ok(conn)
}

/// Write a batch in one SQLite transaction: each commit checked against the
/// log (which holds its batch-mates' rows too, so they conflict as if
/// committed one by one), then applied with the next version; one COMMIT.
fn commit_batch(conn: &Connection, batch: &[(CommitWork, Arc<Slot>)]) -> Vec<KvResult<Version>> {
    let all = |e: KvError| batch.iter().map(|_| Err(e.clone())).collect();
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        return all(map_error(e));
    }
    let mut results = Vec::with_capacity(batch.len());
    for (work, _) in batch {
        let checked = check_conflicts(conn, work.read_version, &work.read_conflicts);
        let version = match checked {
            Ok(latest) => latest + 1,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        if let Err(e) = write_all(conn, work, version) {
            // Part of this commit may be written: abandon the batch.
            let _ = control(conn, "ROLLBACK");
            return all(map_error(e));
        }
        results.push(Ok(version));
    }
    if results.iter().all(Result::is_err) {
        let _ = control(conn, "ROLLBACK");
        return results;
    }
    match finish(conn, 0) {
        Ok(_) => results,
        Err(e) => all(e),
    }
}

/// Up to `limit` (0: all) stored pairs in `[begin, end)`, and whether more
/// remain.
fn stored_range(
    conn: &Connection,
    begin: &[u8],
    end: &[u8],
    limit: usize,
    reverse: bool,
) -> rusqlite::Result<(Vec<KeyValue>, bool)> {
    // No `LIMIT ?3`: SQLite lets the planner use a bound LIMIT's value, so
    // such a statement is re-prepared (parsed and planned again) at every
    // execution — measured on 767 of 1,000 range reads. Rows come in key
    // order straight off the primary key, so stopping early is the limit.
    let sql = if reverse {
        "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key DESC"
    } else {
        "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key"
    };
    // One row past the limit tells whether more remain.
    let fetch = if limit == 0 {
        usize::MAX
    } else {
        limit.saturating_add(1)
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![begin, end], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut kvs = rows
        .take(fetch)
        .collect::<rusqlite::Result<Vec<KeyValue>>>()?;
    let more = limit != 0 && kvs.len() > limit;
    kvs.truncate(if limit == 0 { kvs.len() } else { limit });
    Ok((kvs, more))
}

fn read_value(conn: &Connection, key: &[u8]) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()
}

/// A write commit's inputs, owned so they can move to the blocking pool.
struct CommitWork {
    read_version: Version,
    mutations: Vec<Mutation>,
    read_conflicts: Vec<KeyRange>,
    /// Write conflict ranges, logged for later transactions' checks.
    writes: Vec<KeyRange>,
    /// Delete log rows up to this version (never the newest) in this commit.
    prune_through: Option<Version>,
    /// Need not survive power loss.
    relaxed: bool,
}

enum Attempt {
    Done(KvResult<Version>),
    /// The fast path could not take the write lock; nothing was applied.
    Busy,
}

/// Fast path: promote the snapshot's read transaction to a write
/// transaction. SQLite allows that only when nothing committed since the
/// snapshot began — so no conflict is possible and the new version is
/// `read_version + 1` — and otherwise answers BUSY at once (busy timeout 0),
/// leaving the slow path to wait for the lock and check the conflict log.
fn commit_promoted(conn: &Connection, work: &CommitWork) -> Attempt {
    let version = work.read_version + 1;
    match write_all(conn, work, version) {
        Ok(()) => Attempt::Done(finish(conn, version)),
        Err(e) => {
            let _ = control(conn, "ROLLBACK");
            if is_busy(&e) {
                Attempt::Busy
            } else {
                Attempt::Done(Err(map_error(e)))
            }
        }
    }
}

/// Apply the mutations and append the commit's conflict-log row.
fn write_all(conn: &Connection, work: &CommitWork, version: Version) -> rusqlite::Result<()> {
    for mutation in &work.mutations {
        apply(conn, mutation)?;
    }
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    conn.prepare_cached("INSERT INTO commits(version, writes) VALUES (?1, ?2)")?
        .execute(params![version, encode_ranges(&work.writes)])?;
    if let Some(through) = work.prune_through {
        // A rowid range: touches only the rows it deletes.
        let through = i64::try_from(through).unwrap_or(i64::MAX).min(version - 1);
        conn.prepare_cached("DELETE FROM commits WHERE version <= ?1")?
            .execute(params![through])?;
    }
    Ok(())
}

fn finish(conn: &Connection, version: Version) -> KvResult<Version> {
    match control(conn, "COMMIT") {
        Ok(()) => Ok(version),
        Err(e) => {
            let _ = control(conn, "ROLLBACK");
            // An I/O error during COMMIT may come after the WAL frames were
            // written: the outcome is unknown. BUSY applied nothing.
            Err(match map_error(e) {
                KvError::Backend(_) => KvError::CommitUnknownResult,
                other => other,
            })
        }
    }
}

/// Fail if a commit after `read_version` wrote a range we read. Returns the
/// latest committed version.
fn check_conflicts(
    conn: &Connection,
    read_version: Version,
    read_conflicts: &[KeyRange],
) -> KvResult<Version> {
    // Two subqueries, not `max(), min()` in one: SQLite seeks the primary
    // key for a lone min() or max() but scans the table for both together.
    let (latest, oldest): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT max(version) FROM commits), (SELECT min(version) FROM commits)",
        )
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(map_error)?;
    let latest = u64::try_from(latest).unwrap_or(0);
    let oldest = u64::try_from(oldest).unwrap_or(0);
    if latest == read_version || read_conflicts.is_empty() {
        return Ok(latest);
    }
    if oldest > read_version + 1 {
        return Err(KvError::TransactionTooOld);
    }
    let mut stmt = conn
        .prepare_cached("SELECT writes FROM commits WHERE version > ?1")
        .map_err(map_error)?;
    let rows = stmt
        .query_map(
            params![i64::try_from(read_version).unwrap_or(i64::MAX)],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .map_err(map_error)?;
    for row in rows {
        let writes = decode_ranges(&row.map_err(map_error)?)?;
        if writes
            .iter()
            .any(|w| read_conflicts.iter().any(|r| r.intersects(w)))
        {
            return Err(KvError::NotCommitted);
        }
    }
    Ok(latest)
}

fn apply(conn: &Connection, mutation: &Mutation) -> rusqlite::Result<()> {
    match mutation {
        Mutation::Set { key, value } => {
            conn.prepare_cached(
                "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        }
        Mutation::Clear { key } => {
            conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                .execute(params![key])?;
        }
        Mutation::ClearRange { begin, end } => {
            conn.prepare_cached("DELETE FROM kv WHERE key >= ?1 AND key < ?2")?
                .execute(params![begin, end])?;
        }
        Mutation::Add { key, delta } => {
            let sum = apply_add(read_value(conn, key)?.as_deref(), *delta);
            apply(
                conn,
                &Mutation::Set {
                    key: key.clone(),
                    value: sum.to_vec(),
                },
            )?;
        }
    }
    Ok(())
}

/// Ranges as `[u32 len][begin][u32 len][end]...`, lengths little-endian.
fn encode_ranges(ranges: &[KeyRange]) -> Vec<u8> {
    let size = ranges.iter().map(|r| 8 + r.begin.len() + r.end.len()).sum();
    let mut out = Vec::with_capacity(size);
    for range in ranges {
        for bound in [&range.begin, &range.end] {
            out.extend_from_slice(&u32::try_from(bound.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(bound);
        }
    }
    out
}

fn decode_ranges(mut bytes: &[u8]) -> KvResult<Vec<KeyRange>> {
    let corrupted = || KvError::Backend("sqlite: corrupted conflict log row".into());
    let take = |bytes: &mut &[u8]| -> KvResult<Vec<u8>> {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupted)?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(corrupted());
        }
        let (bound, rest) = rest.split_at(len);
        *bytes = rest;
        Ok(bound.to_vec())
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let begin = take(&mut bytes)?;
        let end = take(&mut bytes)?;
        out.push(KeyRange { begin, end });
    }
    Ok(out)
}

/// Copy the WAL back into the database file now and then. A PASSIVE
/// checkpoint never blocks anyone, but under a steady stream of commits it
/// never catches up, and a WAL that is never restarted grows without bound
/// (every commit then extends the file: measured 22 → 36 µs per commit over
/// 100k commits). So when the WAL stays long, a RESTART checkpoint briefly
/// holds new writers (they wait on the blocking pool) until the log can
/// start over. Exits when the backend is dropped.
fn checkpoint_loop(weak: Weak<Shared>) {
    let mut conn: Option<Connection> = None;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        {
            let mut guard = shared.checkpoint_lock.lock();
            shared
                .checkpoint_wake
                .wait_for(&mut guard, CHECKPOINT_INTERVAL);
        }
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
        if conn.is_none() {
            conn = connect(&shared.path).ok();
        }
        if let Some(c) = conn.as_ref() {
            if let Err(e) = checkpoint(&shared, c) {
                shared.checkpoint_failed(&e);
                tracing::debug!(error = %e, "sqlite checkpoint incomplete; will retry");
            }
            // Left inside `presize_wal`'s transaction (its ROLLBACK failed),
            // it would hold SQLite's write lock for good: closing rolls back.
            if !c.is_autocommit() {
                conn = None;
            }
        }
    }
}

fn checkpoint(shared: &Shared, conn: &Connection) -> rusqlite::Result<()> {
    // Frames in the WAL and frames copied into the database; what is left
    // is what checkpoints may still add to the file (`Space`).
    let run = |mode: &str| {
        let (frames, copied) =
            conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })?;
        let backlog = u64::try_from(frames - copied).unwrap_or(0) * WAL_FRAME_BYTES;
        shared.wal_backlog.store(backlog, Ordering::Relaxed);
        // All copied: the next commit starts the WAL over, in its blocks.
        let live = if backlog == 0 {
            0
        } else {
            WAL_HEADER_BYTES + u64::try_from(frames).unwrap_or(0) * WAL_FRAME_BYTES
        };
        let size = wal_size(&shared.wal).unwrap_or(0);
        shared
            .wal_reusable
            .store(size.saturating_sub(live), Ordering::Relaxed);
        Ok::<_, rusqlite::Error>(frames)
    };
    // Free pages past `VACUUM_FREE_BYTES` for `vacuum_after`: give some
    // back first, so the copy below carries the moved pages, truncates the
    // file and measures the WAL as the vacuum left it.
    let free_pages: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let free_pages = u64::try_from(free_pages).unwrap_or(0);
    let due = {
        let mut since = shared.free_excess_since.lock();
        let now = shared.clock.monotonic();
        if free_pages * PAGE_BYTES > VACUUM_FREE_BYTES {
            let at = *since.get_or_insert(now);
            now.saturating_sub(at) >= shared.options.vacuum_after
        } else {
            *since = None;
            false
        }
    };
    if due && vacuum_some(shared, conn, free_pages) * PAGE_BYTES <= VACUUM_FREE_BYTES {
        // Done: the next excess waits its full `vacuum_after`.
        *shared.free_excess_since.lock() = None;
    }
    let frames = run("PASSIVE")?;
    // Pages SQLite reuses before it grows the file: room too (`Space`).
    let free_pages: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    shared.db_free_bytes.store(
        u64::try_from(free_pages).unwrap_or(0) * PAGE_BYTES,
        Ordering::Relaxed,
    );
    if frames > WAL_RESTART_FRAMES {
        // RESTART waits for every reader to reach the newest snapshot.
        shared.cool_all();
        conn.busy_timeout(CHECKPOINT_RESTART_WAIT)?;
        let restarted = run("RESTART");
        conn.busy_timeout(Duration::ZERO)?;
        restarted?;
    } else {
        presize_wal(shared, conn, frames)?;
    }
    Ok(())
}

/// Give free pages of the database file back to the disk, once more than
/// `VACUUM_FREE_BYTES` of them pile up (a big file deleted): SQLite
/// reuses free pages but never shrinks the file by itself. In steps of
/// up to `VACUUM_STEP_PAGES` (`PRAGMA incremental_vacuum`: the pages at
/// the end of the file move into free ones, and the checkpoint that
/// copies that into the database file truncates it), leaving half of the
/// threshold free for what comes next. A step writes up to its size into
/// the WAL before anything is truncated, so on a nearly full disk steps
/// shrink to what the disk holds twice over, and a step that finds the
/// disk full (or the write lock taken) ends the round; nothing here fails
/// the checkpoint. Steps pause `VACUUM_STEP_PAUSE` between them, so
/// commits waiting for the write lock get it. Databases made before
/// auto_vacuum was set (`init_schema`) have nothing to give back this
/// way. Returns the free pages left.
///
/// Safe under the memory maps of other connections and processes: SQLite
/// truncates the file only at a checkpoint that copied every frame, which
/// no reader of an older, longer snapshot lets happen, and a newer
/// snapshot reads no page past its end. (Checked on this VM, Linux 6.18:
/// two processes reading with a 2 GiB map while a third deleted,
/// vacuumed and truncated 151 times in 60 s; no SIGBUS.)
fn vacuum_some(shared: &Shared, conn: &Connection, mut free_pages: u64) -> u64 {
    let keep = VACUUM_FREE_BYTES / 2 / PAGE_BYTES;
    let incremental = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0))
        .is_ok_and(|mode| mode == 2);
    if !incremental || conn.busy_timeout(VACUUM_LOCK_WAIT).is_err() {
        return free_pages;
    }
    for round in 0..VACUUM_STEPS_PER_ROUND {
        if free_pages <= keep {
            break;
        }
        let room = shared.space.free(&shared.path, shared.clock.monotonic())
            + shared.wal_reusable.load(Ordering::Relaxed);
        let step = (free_pages - keep)
            .min(VACUUM_STEP_PAGES)
            .min(room / 2 / PAGE_BYTES);
        if step < VACUUM_STEP_PAGES_MIN {
            break;
        }
        if round > 0 {
            std::thread::sleep(VACUUM_STEP_PAUSE);
        }
        // Stepped to its end: SQLite frees one page per step.
        let stepped = conn
            .prepare(&format!("PRAGMA incremental_vacuum({step})"))
            .and_then(|mut stmt| {
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            })
            .and_then(|()| conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0)));
        match stepped {
            Ok(left) => free_pages = u64::try_from(left).unwrap_or(0),
            // Busy, a full disk, an I/O error: the pages wait for a later
            // round (the error, if it says something, shows up elsewhere).
            Err(e) => {
                tracing::debug!(error = %e, "sqlite: vacuum step not taken");
                break;
            }
        }
    }
    let _ = conn.busy_timeout(Duration::ZERO);
    free_pages
}

/// Grow the WAL file with zeros ahead of the frames SQLite will append.
///
/// Why: an fdatasync after an append must also write the file's new size
/// and block allocation, so on this VM's ext4 every durable commit (and
/// every `fsync` of a relaxed mount) made three synchronous writes and a
/// cache flush instead of one write and a flush (`perf record -e
/// block:block_rq_issue`: 3,830 metadata writes for 2,014 flushes in 1,000
/// config updates). SQLite starts a restarted WAL over from the beginning,
/// so once the file is as long as a WAL ever gets between restarts, every
/// commit overwrites blocks that exist; but each mount begins with a new,
/// empty WAL (the last connection to close deletes it), and a lightly used
/// mount could take days to write 40 MiB of WAL.
///
/// Why it is safe: SQLite reads a WAL only up to its first frame whose
/// salt and checksum do not continue the chain from the header, and zeros
/// never do (a zero header makes the whole file count as empty). The
/// zeros are written while this connection holds SQLite's write lock
/// (`BEGIN IMMEDIATE`), the only state in which nobody — in any process —
/// can append a frame past the end or truncate the file; a failure to
/// sync them poisons the backend like a failed commit sync.
fn presize_wal(shared: &Shared, conn: &Connection, frames: i64) -> rusqlite::Result<()> {
    use std::os::unix::fs::FileExt;
    let live_end = WAL_HEADER_BYTES + u64::try_from(frames).unwrap_or(0) * WAL_FRAME_BYTES;
    let wanted = (live_end + WAL_AHEAD_BYTES).min(WAL_PRESIZE_BYTES);
    if wal_size(&shared.wal).is_ok_and(|size| size >= wanted) {
        return Ok(());
    }
    // Not on a nearly full disk: zeros ahead of the WAL would take the room
    // write-behind counts on (`Space`; a 48 MB disk filled up with them).
    let roomy = rustix::fs::statvfs(&shared.wal)
        .is_ok_and(|st| st.f_bavail.saturating_mul(st.f_frsize) >= 4 * WAL_PRESIZE_BYTES);
    if !roomy {
        return Ok(());
    }
    conn.busy_timeout(CHECKPOINT_RESTART_WAIT)?;
    let locked = control(conn, "BEGIN IMMEDIATE");
    conn.busy_timeout(Duration::ZERO)?;
    if let Err(e) = locked {
        // Busy: next time.
        return if is_busy(&e) { Ok(()) } else { Err(e) };
    }
    let grown = (|| -> std::io::Result<Option<std::fs::File>> {
        // Not created if missing: SQLite has no WAL open yet.
        let file = std::fs::OpenOptions::new().write(true).open(&shared.wal)?;
        let size = wal_size(&shared.wal)?;
        if size >= wanted {
            return Ok(None);
        }
        let end = (size + WAL_AHEAD_BYTES).min(WAL_PRESIZE_BYTES);
        let zeros = vec![0u8; 1 << 20];
        let mut at = size;
        while at < end {
            let n = (end - at).min(zeros.len() as u64);
            file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        Ok(Some(file))
    })();
    control(conn, "ROLLBACK")?;
    match grown {
        // Synced before a commit overwrites it, so the new blocks'
        // allocation is written once, here, not at a commit's sync. The
        // first page may hold the tail of a committed frame: a failure
        // here may have lost it (this descriptor was open when it failed,
        // so it hears of it).
        Ok(Some(file)) => {
            if let Err(e) = file.sync_data() {
                shared.poison_syncs(format!("sqlite: cannot sync {}: {e}", shared.wal.display()));
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "sqlite: could not grow the WAL ahead"),
    }
    Ok(())
}

/// The WAL file's length, asking for nothing else (see [`file_id`]).
fn wal_size(path: &Path) -> std::io::Result<u64> {
    Ok(statx_only(path, rustix::fs::StatxFlags::SIZE)?.stx_size)
}

fn nudge_watcher(shared: &Shared) {
    let mut table = shared.watches.lock();
    if !table.waiting.is_empty() {
        table.nudged = true;
        shared.watch_wake.notify_one();
    }
}

fn arm_watches(shared: &Arc<Shared>, watches: Vec<WatchRequest>) {
    if watches.is_empty() {
        return;
    }
    let mut table = shared.watches.lock();
    for w in watches {
        table
            .waiting
            .entry(w.key)
            .or_default()
            .push((w.expected, w.fired));
    }
    table.nudged = true;
    if !table.bell_started {
        table.bell_started = true;
        start_doorbell(shared);
    }
    if !table.thread_running {
        table.thread_running = true;
        let weak = Arc::downgrade(shared);
        let spawned = std::thread::Builder::new()
            .name("hafs-sqlite-watch".into())
            .spawn(move || watch_loop(weak));
        if spawned.is_err() {
            table.thread_running = false;
            for (_, waiters) in std::mem::take(&mut table.waiting) {
                for (_, fired) in waiters {
                    let _ = fired.send(Err(KvError::Backend("cannot start watcher".into())));
                }
            }
        }
    }
    shared.watch_wake.notify_one();
}

/// The watcher thread: wakes on local commits and new watches, and polls
/// `data_version` for commits of other processes; exits when the backend is
/// dropped or no watch is left.
fn watch_loop(weak: Weak<Shared>) {
    let mut conn: Option<Connection> = None;
    let mut seen_version: Option<i64> = None;
    // After a ring whose commit `data_version` did not show yet: how soon
    // to look again, and how many more looks (see below).
    let mut recheck: Option<(Duration, u32)> = None;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let rung = {
            let mut table = shared.watches.lock();
            table.waiting.retain(|_, w| {
                w.retain(|(_, fired)| !fired.is_closed());
                !w.is_empty()
            });
            if table.waiting.is_empty() {
                table.thread_running = false;
                return;
            }
            if !table.nudged && !table.rung {
                let wait = recheck.map_or(shared.options.watch_poll, |(pause, _)| pause);
                shared.watch_wake.wait_for(&mut table, wait);
            }
            std::mem::take(&mut table.rung)
        };
        if conn.is_none() {
            conn = connect(&shared.path).ok();
        }
        let Some(c) = conn.as_ref() else {
            std::thread::sleep(shared.options.watch_poll);
            continue;
        };
        let version: Option<i64> = c.query_row("PRAGMA data_version", [], |r| r.get(0)).ok();
        let nudged = std::mem::take(&mut shared.watches.lock().nudged);
        if !nudged && version.is_some() && version == seen_version {
            // The doorbell rings at another process's write of WAL frames;
            // `data_version` changes a few microseconds later, when that
            // process updates the WAL index (a memory map, which rings
            // nothing), unless it is preempted in between. So after a ring
            // with no new version, look again at 100 µs, doubling to
            // 1.6 ms, for about 50 ms in all (35 looks of one PRAGMA each),
            // then leave it to the poll.
            recheck = if rung {
                Some((Duration::from_micros(100), 35))
            } else {
                recheck.and_then(|(pause, left)| {
                    let pause = (pause * 2).min(Duration::from_micros(1_600));
                    (left > 1).then_some((pause, left - 1))
                })
            };
            continue;
        }
        recheck = None;
        seen_version = version;
        check_watches(&shared, c);
    }
}

/// Ring the watcher whenever another process writes the WAL: one thread
/// and one inotify instance per backend, from its first watch until the
/// backend is dropped or closed (a thread of its own, as the watcher waits
/// on a condition variable). Without inotify, the poll alone does the job.
fn start_doorbell(shared: &Arc<Shared>) {
    let Ok(bell) = super::doorbell::Doorbell::new(&shared.wal) else {
        return;
    };
    let weak = Arc::downgrade(shared);
    let _ = std::thread::Builder::new()
        .name("hafs-sqlite-bell".into())
        .spawn(move || loop {
            // The timeout bounds how long this thread outlives its backend.
            let rung = bell.wait(Duration::from_millis(100));
            let Some(shared) = weak.upgrade() else { return };
            if shared.closed.load(Ordering::Relaxed) {
                return;
            }
            match rung {
                Ok(true) => {
                    let mut table = shared.watches.lock();
                    if table.thread_running {
                        table.rung = true;
                        shared.watch_wake.notify_one();
                    }
                }
                Ok(false) => {}
                Err(_) => return,
            }
        });
}

/// Fire every watch whose key's value now differs from its expected value.
fn check_watches(shared: &Shared, conn: &Connection) {
    let keys: Vec<Vec<u8>> = shared.watches.lock().waiting.keys().cloned().collect();
    let mut current = Vec::with_capacity(keys.len());
    // With write-behind, the memtable's newest state over a snapshot
    // pinned as a transaction's is.
    let mode = shared.wb.as_ref().and_then(|wb| wb.begin().ok());
    if control(conn, "BEGIN").is_ok()
        && conn
            .query_row("SELECT count(*) FROM commits WHERE version < 0", [], |_| {
                Ok(())
            })
            .is_ok()
    {
        let buffered = match (&shared.wb, mode) {
            (Some(wb), Some(TxnMode::Buffered { generation, .. })) => {
                Some((wb, generation, wb.state.lock().table.version()))
            }
            _ => None,
        };
        for key in keys {
            let seen = match buffered {
                Some((wb, generation, latest)) => match wb.lookup(generation, &key, latest) {
                    Ok(seen) => seen,
                    Err(_) => break,
                },
                None => Seen::Unknown,
            };
            let value = match seen {
                Seen::Known(v) => Ok(v),
                Seen::Unknown => read_value(conn, &key),
            };
            match value {
                Ok(value) => current.push((key, value)),
                Err(_) => break,
            }
        }
    }
    let _ = control(conn, "ROLLBACK");
    if let (Some(wb), Some(mode)) = (&shared.wb, mode) {
        wb.end(mode);
    }
    let mut table = shared.watches.lock();
    for (key, value) in current {
        let Some(waiters) = table.waiting.remove(&key) else {
            continue;
        };
        let (changed, unchanged): (Vec<_>, Vec<_>) = waiters
            .into_iter()
            .partition(|(expected, _)| *expected != value);
        for (_, fired) in changed {
            let _ = fired.send(Ok(()));
        }
        if !unchanged.is_empty() {
            table.waiting.insert(key, unchanged);
        }
    }
}

/// Write-behind: while a relaxed backend is the only one with the database
/// open (it holds [`HostLock`] exclusively), its commits go to a
/// [`Memtable`] and are acknowledged at once; a flusher thread writes them
/// to SQLite in one transaction every `FLUSH_INTERVAL` (or sooner, past
/// `FLUSH_BYTES`, or when someone calls [`Backend::sync`]). Conflicts are
/// checked against the memtable's own log: nobody else writes the file.
///
/// Why: a relaxed create was one SQLite write transaction of 5–6 page
/// frames (the new inode's page, the directory's pages, the open index and
/// a conflict-log row), ~33 µs in one task; batched, commits share the
/// directory's, the index's and the log's pages, and the work leaves the
/// requests' critical path.
///
/// What it costs: a crash of this *process* (not only of the machine) may
/// drop the commits of the last few milliseconds — a suffix, never a torn or
/// reordered state (each flush is one SQLite transaction, in commit order).
/// "Milliseconds" when the flusher gets a CPU; a starved one can fall
/// behind by up to `4 × FLUSH_BYTES` of commits, where new ones wait (CI,
/// a debug build running tests in parallel on 2 cores, lost 1,063 of 3,000
/// quick commits to `kill -9` where an idle machine loses ~150).
/// That is the relaxed contract stretched from power loss to process loss;
/// `sync` (fsync) still makes everything before it durable, and so does a
/// clean close (the last handle's drop writes the memtable out).
///
/// Measured side by side (relaxed mounts, `hafs bench dir --only meta,config
/// --files 1000 --updates 500`, 3 alternating rounds, 2026-12-05): creates
/// 8,927 → 13,630/s, unlinks 15,390 → 34,512, renames 11,954 → 21,618,
/// open + close 15,768 → 28,055; config updates (an fsync each) barely move
/// (978 → 995), they wait for the disk.
///
/// Durable backends do not use it. Tried: every durable commit waiting for
/// a flush that includes it plus the shared WAL fsync; creates fell 4,714 →
/// 4,130/s (same command, `--only meta`): a durable create waits for the
/// disk either way, four workers give at most four commits per sync, and
/// the memtable only added work.
///
/// A lone holder that is stopped (SIGSTOP, a hung process) cannot hand
/// over. A newcomer waits `join_wait` (10 s), then *breaks in*: it holds
/// the lock file's breaker byte instead of presence (so nobody becomes
/// exclusive while it is open) and overwrites `write_behind_owner` in
/// `hafs_meta` under SQLite's write lock. The holder checks that row under
/// the same lock in every flush: resumed, it finds itself displaced, drops
/// what it buffered (acknowledged but unwritten: lost, as in a crash),
/// fails every later transaction and shares the file. This is how hafs
/// treats a stopped client anyway (evicted, then fenced), and it keeps
/// `hafs evict` and new mounts working while one is stopped. The holder's
/// pid (`write_behind_pid`) is logged by the breaker.
///
/// Handing over: a newcomer (another mount, a `hafs` command) knocks on
/// the lock file; the flusher sees the knock within `KNOCK_POLL`, stops
/// new commits, writes everything out and shares the lock. From then on
/// every backend commits straight to SQLite as usual, until this one finds
/// itself alone again (`REGAIN_POLL`). Transactions begun before a switch
/// fail with a retryable error (`NotCommitted` at commit, `TransactionTooOld`
/// for reads of a memtable that was replaced), so none mixes the two modes.
#[derive(Default)]
struct WriteBehind {
    state: Mutex<WbState>,
    /// Held by whoever writes a batch, so batches reach SQLite in order.
    flushing: Mutex<()>,
    /// The sync log, while this backend may write it (buffering, and the
    /// log could be started); held by a sync from start to end. Taken
    /// before `state`, never while holding it.
    log: Mutex<Option<SyncLog>>,
    /// A flush ended, the mode changed, or direct commits drained.
    changed: Condvar,
    /// Work for the flusher.
    wake: Condvar,
    /// Syncs (durable commits and `sync` calls) answered while the sync
    /// log was in use — by a record, or by an earlier sync (logged or
    /// through SQLite) that covered them — and the records synced.
    answered_by_log: AtomicU64,
    log_records: AtomicU64,
}

/// Room on the database's disk. A buffered commit is acknowledged before
/// SQLite has it, so it is taken only if the disk can hold it with
/// everything still unflushed — the way a local filesystem reserves blocks
/// at `write(2)`, not at writeback, so that ENOSPC reaches the writer
/// instead of failing later where nobody can be told. Before this, a full
/// disk failed the flush for good: every operation answered EIO until a
/// remount, and what the memtable held was lost. A direct commit is
/// checked the same way: SQLite would report the full disk itself, but
/// only once the WAL had taken the room a checkpoint needs to copy it into
/// the database, and then not even a delete could commit again.
///
/// An estimate ([`Space::admit`]: [`SPACE_AMPLIFICATION`], the checkpoint
/// backlog and the database's free pages as last measured): a flush can
/// still find the disk full (another program filled it); it then keeps its
/// commits and tries again ([`FULL_RETRY`]).
#[derive(Default)]
struct Space {
    /// Bytes available to this process (statvfs), `u64::MAX` if unknown.
    free: AtomicU64,
    /// When `free` was read (monotonic ns + 1; 0: never).
    read_at_ns: AtomicU64,
    /// When a refusal was last logged (monotonic ns + 1; 0: never).
    warned_at_ns: AtomicU64,
}

impl Space {
    /// Available bytes on the disk holding `path`, read again if stale.
    fn free(&self, path: &Path, now: Duration) -> u64 {
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let read_at = self.read_at_ns.load(Ordering::Relaxed);
        let free = self.free.load(Ordering::Relaxed);
        let stale = read_at == 0
            || free < SPACE_LOW
            || now_ns.saturating_sub(read_at - 1) >= SPACE_REFRESH.as_nanos() as u64;
        if !stale {
            return free;
        }
        let free = rustix::fs::statvfs(path)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
            .unwrap_or(u64::MAX);
        self.free.store(free, Ordering::Relaxed);
        self.read_at_ns
            .store(now_ns.saturating_add(1), Ordering::Relaxed);
        free
    }

    /// Log a refusal, at most every 10 s (a writer may retry in a loop).
    fn warn(&self, refusal: &KvError, now: Duration) {
        let now_ns = u64::try_from(now.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.warned_at_ns.load(Ordering::Relaxed);
        if last == 0 || now_ns.saturating_sub(last) >= 10_000_000_000 {
            self.warned_at_ns.store(now_ns, Ordering::Relaxed);
            tracing::warn!(error = %refusal, "writes refused: ENOSPC");
        }
    }

    /// Whether a commit may be acknowledged, `unflushed` bytes being
    /// acknowledged and not in SQLite yet.
    ///
    /// What is coming — the commit, the unflushed bytes, a batch being
    /// written — takes 3/2 of its size in the WAL, which must fit on the
    /// disk or in WAL blocks a restart reuses, and as much again in the
    /// database file, which grows into its own free pages first, after the
    /// WAL backlog a checkpoint has yet to copy. Commits over
    /// [`SMALL_COMMIT_BYTES`] leave [`SPACE_RESERVE`] free. Commits that
    /// barely take room ([`Commit::exempt`]: deletes, heartbeats, lock and
    /// open records) are taken whatever the count says, else a full disk
    /// could never be emptied, nor a client stay alive.
    fn admit(commit: Commit, unflushed: usize, no_space: bool, room: Room) -> KvResult<()> {
        let stuck = no_space && unflushed >= 4 * FLUSH_BYTES;
        if commit.exempt() && !stuck {
            return Ok(());
        }
        let big = commit.bytes > SMALL_COMMIT_BYTES;
        let coming = ((unflushed + commit.bytes) as u64)
            .saturating_add(room.in_flight)
            .saturating_mul(SPACE_AMPLIFICATION)
            / 2;
        let wal_room = room.free.saturating_add(room.wal_reusable);
        let total_room = wal_room.saturating_add(room.free_pages);
        let need = coming
            .saturating_mul(2)
            .saturating_add(room.backlog)
            .saturating_add(if big { SPACE_RESERVE } else { 0 });
        if stuck || (no_space && big) || coming > wal_room || need > total_room {
            return Err(KvError::NoSpace(format!(
                "sqlite: the database's disk is nearly full ({total_room} bytes of room, \
                 {need} wanted)"
            )));
        }
        Ok(())
    }
}

/// What [`Space::admit`] knows of the room for a commit (bytes).
#[derive(Debug, Clone, Copy)]
struct Room {
    /// Free on the database's disk.
    free: u64,
    /// The database file's free pages.
    free_pages: u64,
    /// WAL frames a checkpoint has yet to copy into the database file.
    backlog: u64,
    /// WAL file blocks the next frames overwrite.
    wal_reusable: u64,
    /// A batch being written by the flusher.
    in_flight: u64,
}

/// What [`Space::admit`] knows of a commit.
#[derive(Debug, Clone, Copy)]
struct Commit {
    /// Keys and values it writes or clears ([`memtable::mutation_bytes`]).
    bytes: usize,
    /// Of those, what it sets or adds.
    written: usize,
    /// It clears a key or a range.
    clears: bool,
    /// Bookkeeping written without fsync: heartbeats, lock and open records.
    relaxed: bool,
}

impl Commit {
    fn of(request: &CommitRequest) -> Commit {
        let (mut bytes, mut written, mut clears) = (0, 0, false);
        for m in &request.mutations {
            let n = memtable::mutation_bytes(m);
            bytes += n;
            match m {
                Mutation::Set { .. } | Mutation::Add { .. } => written += n,
                Mutation::Clear { .. } | Mutation::ClearRange { .. } => clears = true,
            }
        }
        Commit {
            bytes,
            written,
            clears,
            relaxed: request.relaxed,
        }
    }

    /// Barely takes room: a delete or truncate (clears, and writes no more
    /// than an inode's attributes and markers), the session and lock
    /// bookkeeping, or anything this small. A write whose chunk became
    /// zeros clears it too, but writes its other chunks: not exempt.
    fn exempt(self) -> bool {
        self.bytes <= TINY_COMMIT_BYTES
            || (self.relaxed && self.bytes <= SMALL_COMMIT_BYTES)
            || (self.clears && self.written <= EXEMPT_WRITES_BYTES)
    }
}

#[derive(Default)]
struct WbState {
    buffered: bool,
    /// Bumped by every switch; a transaction commits only in its own.
    generation: u64,
    table: Memtable,
    /// The generation whose memtable `table` is: readers of another one
    /// must not use it.
    table_generation: u64,
    /// Switching to buffered: direct commits are refused.
    entering: bool,
    /// Switching to direct: buffered commits wait, then are refused.
    draining: bool,
    /// Direct commits in flight.
    direct_inflight: usize,
    /// When the oldest unflushed commit was acknowledged.
    first_unflushed: Option<Duration>,
    /// Flush through this version without waiting for the interval.
    sync_wanted: Version,
    /// A flush failed for good: acknowledged commits may be lost; no commit
    /// succeeds any more (remount).
    failed: Option<String>,
    /// The last handle is gone: never buffer again.
    closed: bool,
    /// What this backend wrote as `write_behind_owner` when it took the
    /// file; a flush finding anything else was broken in on.
    owner: String,
    /// Broken in on: another process fenced this one out (it did not
    /// answer); nothing here is ever written to SQLite again.
    displaced: bool,
    /// The commits acknowledged since the sync log's last record, encoded
    /// for the next one; `None` while not logging, or after more than a
    /// record's worth (the next sync then goes through SQLite).
    pending: Option<RecordBuf>,
    /// The last flush found the disk full ([`Space`]): the memtable keeps
    /// its commits and the flusher tries again at `flush_retry_at`;
    /// meanwhile only small commits are taken.
    no_space: bool,
    flush_retry_at: Option<Duration>,
}

impl WbState {
    /// Buffering still, in `generation`, with that generation's memtable.
    fn buffers_in(&self, generation: u64) -> bool {
        self.buffered && self.generation == generation && self.table_generation == generation
    }
}

/// How a transaction reads and commits.
#[derive(Debug, Clone, Copy)]
enum TxnMode {
    Direct {
        generation: u64,
    },
    /// Through the memtable of `generation`, pinned at `pin`.
    Buffered {
        generation: u64,
        pin: Version,
    },
}

/// A pooled connection still inside the SQLite snapshot of a finished
/// write-behind transaction, with that transaction's memtable pin, so the
/// next transaction reads through it without starting a snapshot of its
/// own: `BEGIN`, the first read and the `ROLLBACK` take SQLite's file and
/// shared-memory locks (`fcntl`s and a process-wide mutex), which perf put
/// at 14% of a relaxed mount's daemon CPU under `hafs bench dir --only
/// meta`.
///
/// Why an older snapshot still reads right: a transaction reads the
/// memtable at its read version (the table's newest) and SQLite only for
/// keys the table holds no event of at or below it. The pin, held from
/// before the snapshot began until the connection is cooled, keeps every
/// event newer than the snapshot in the table, so such a key has not
/// changed since the snapshot. The same holds for atomic adds resolved at
/// commit. A hand-over starts a new generation, whose transactions never
/// take a warm connection of an older one.
///
/// What bounds them: a snapshot serves for `snapshot_reuse` from its
/// start, then the next `begin` or the flusher's next round (at least
/// every `KNOCK_POLL` while buffering) cools it; a hand-over and a
/// RESTART checkpoint cool them all. A commit that must wait (for the
/// flusher, or for a sync that may go through SQLite) ends its snapshot
/// first, so no RESTART ever waits on a reader that waits on it.
struct Warm {
    conn: Connection,
    generation: u64,
    pin: Version,
    /// When its snapshot began (monotonic).
    since: Duration,
}

impl WriteBehind {
    /// The mode for a new transaction (pinning the memtable if buffered).
    /// Fails once a flush failed: SQLite may lack acknowledged commits.
    fn begin(&self) -> KvResult<TxnMode> {
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Err(KvError::Backend(e.clone()));
        }
        Ok(if st.buffered {
            let pin = st.table.pin();
            TxnMode::Buffered {
                generation: st.generation,
                pin,
            }
        } else {
            TxnMode::Direct {
                generation: st.generation,
            }
        })
    }

    fn end(&self, mode: TxnMode) {
        if let TxnMode::Buffered { generation, pin } = mode {
            let mut st = self.state.lock();
            if st.table_generation == generation {
                st.table.unpin(pin);
            }
        }
    }

    /// The memtable's answer for `key` at `at`, for a transaction of
    /// `generation`.
    fn lookup(&self, generation: u64, key: &[u8], at: Version) -> KvResult<Seen> {
        let st = self.state.lock();
        if st.table_generation != generation {
            return Err(KvError::TransactionTooOld);
        }
        Ok(st.table.lookup(key, at))
    }

    /// Remember what a transaction of `generation`, holding its pin, read
    /// from SQLite for `key` ([`Memtable::remember`]).
    fn remember(&self, generation: u64, key: &[u8], value: Option<&[u8]>) {
        let dropped = {
            let mut st = self.state.lock();
            if st.table_generation != generation {
                return;
            }
            st.table.remember(key, value)
        };
        // Freed here, not under the lock every transaction takes.
        drop(dropped);
    }

    /// Whether a buffered commit must wait (a hand-over in progress, or
    /// too much unflushed).
    fn must_wait(st: &WbState) -> bool {
        st.draining || st.table.unflushed_bytes() >= 4 * FLUSH_BYTES
    }

    /// Wait until a buffered commit may proceed, or cannot (failed, or
    /// no longer buffered: the caller then refuses it). Blocks.
    fn wait_writable(&self) {
        let mut st = self.state.lock();
        while Self::must_wait(&st)
            && st.failed.is_none()
            && !st.no_space
            && st.buffered
            && !st.closed
        {
            self.wake.notify_one();
            self.changed.wait(&mut st);
        }
    }
}

/// Counts a direct commit in flight, so a switch to buffered waits for it.
struct DirectCommit {
    shared: Arc<Shared>,
}

impl DirectCommit {
    fn enter(shared: &Arc<Shared>, generation: u64) -> KvResult<Option<DirectCommit>> {
        let Some(wb) = &shared.wb else {
            return Ok(None);
        };
        let mut st = wb.state.lock();
        if let Some(e) = &st.failed {
            return Err(KvError::Backend(e.clone()));
        }
        if st.buffered || st.entering || st.generation != generation {
            return Err(KvError::NotCommitted);
        }
        st.direct_inflight += 1;
        Ok(Some(DirectCommit {
            shared: shared.clone(),
        }))
    }
}

impl Drop for DirectCommit {
    fn drop(&mut self) {
        if let Some(wb) = &self.shared.wb {
            let mut st = wb.state.lock();
            st.direct_inflight -= 1;
            if st.direct_inflight == 0 {
                wb.changed.notify_all();
            }
        }
    }
}

/// The flusher: writes the memtable out, answers knocks, and takes the
/// database back when alone. Exits when the backend is dropped (whose
/// `Drop` writes out what is left).
fn flush_loop(weak: Weak<Shared>) {
    let mut conn: Option<Connection> = None;
    let mut next_regain = Duration::ZERO;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let Some(wb) = shared.wb.as_ref() else { return };
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
        shared.cool_stale(shared.clock.monotonic());
        if conn.is_none() {
            match open_leader(&shared) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "sqlite flusher cannot connect; will retry");
                    std::thread::sleep(REGAIN_POLL);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_ref() else { continue };
        let now = shared.clock.monotonic();
        let buffered = wb.state.lock().buffered;
        if !buffered {
            if now >= next_regain {
                next_regain = now + REGAIN_POLL;
                if let Err(e) = enter_buffered(&shared, wb, c) {
                    tracing::warn!(error = %e, "sqlite: cannot take the database back to itself");
                }
            }
            let mut st = wb.state.lock();
            if !st.buffered {
                wb.wake.wait_for(&mut st, REGAIN_POLL);
            }
            continue;
        }
        if shared.host.knocked().unwrap_or(false) || wb.state.lock().displaced {
            hand_over(&shared, wb, c);
            next_regain = shared.clock.monotonic() + REGAIN_POLL;
            continue;
        }
        let mut st = wb.state.lock();
        // After a full disk, only at the retry time (then whatever else
        // holds: nothing may stay in memory longer than it must).
        let due = st.table.has_unflushed()
            && st.failed.is_none()
            && match st.flush_retry_at {
                Some(at) => now >= at,
                None => {
                    st.sync_wanted > st.table.flushed()
                        || st.table.unflushed_bytes() >= FLUSH_BYTES
                        || st.first_unflushed.is_some_and(|at| {
                            now.saturating_sub(at) >= shared.options.flush_interval
                        })
                }
            };
        if due {
            drop(st);
            flush_once(&shared, wb, c);
            continue;
        }
        let wait = match (st.flush_retry_at, st.first_unflushed) {
            (Some(retry), _) if st.failed.is_none() => retry.saturating_sub(now),
            (None, Some(at)) if st.failed.is_none() => {
                (shared.options.flush_interval).saturating_sub(now.saturating_sub(at))
            }
            _ => KNOCK_POLL,
        };
        wb.wake
            .wait_for(&mut st, wait.clamp(Duration::from_micros(100), KNOCK_POLL));
    }
}

/// Write every unflushed commit in one SQLite transaction.
fn flush_once(shared: &Shared, wb: &WriteBehind, conn: &Connection) {
    let _writing = wb.flushing.lock();
    let batch = {
        let mut st = wb.state.lock();
        st.first_unflushed = None;
        st.table.take_unflushed()
    };
    if batch.is_empty() {
        return;
    }
    let batch_bytes = batch
        .iter()
        .flat_map(|c| &c.mutations)
        .map(memtable::mutation_bytes)
        .sum::<usize>() as u64;
    let commits = shared.commits.fetch_add(1, Ordering::Relaxed) + 1;
    if commits.is_multiple_of(CHECKPOINT_EVERY) {
        shared.checkpoint_wake.notify_one();
    }
    let last = batch.last().map_or(0, |c| c.version);
    let at_ms = shared.clock.wall_ns() / 1_000_000;
    let prune_through = commits
        .is_multiple_of(PRUNE_EVERY)
        .then(|| shared.prune_mark(at_ms, last))
        .flatten();
    let owner = wb.state.lock().owner.clone();
    // While it is written the memtable no longer counts it: `Space` does.
    shared.flushing_bytes.store(batch_bytes, Ordering::Relaxed);
    let written = write_batch(conn, &batch, prune_through, &owner);
    shared.flushing_bytes.store(0, Ordering::Relaxed);
    if written.is_ok() {
        shared.wal_grew(batch_bytes as usize);
    }
    let mut st = wb.state.lock();
    match written {
        Ok(()) => {
            st.table.flushed_through(last);
            st.flush_retry_at = None;
            if std::mem::take(&mut st.no_space) {
                tracing::info!("sqlite: room on the database's disk again; writes resume");
            }
        }
        Err(FlushError::Displaced) => {
            st.table.restore_unflushed(batch);
            fenced_out(&mut st);
        }
        Err(FlushError::Sql(e)) if e.sqlite_error_code() == Some(ErrorCode::DiskFull) => {
            st.table.restore_unflushed(batch);
            if !st.no_space {
                tracing::warn!(error = %e, path = %shared.path.display(),
                    "sqlite: the database's disk is full; changes acknowledged so far are kept \
                     in memory and written once there is room; new writes fail with ENOSPC");
            }
            st.no_space = true;
            st.flush_retry_at = Some(shared.clock.monotonic() + FULL_RETRY);
        }
        Err(FlushError::Sql(e)) => {
            st.table.restore_unflushed(batch);
            if is_busy(&e) {
                // Another connection of this process (a checkpoint's
                // restart) held the lock past the busy handler: again soon.
                st.first_unflushed = Some(shared.clock.monotonic());
            } else {
                let message = format!("sqlite: writing acknowledged commits failed: {e}");
                tracing::error!(%message, "relaxed commits may be lost; remount");
                st.failed = Some(message);
            }
        }
    }
    wb.changed.notify_all();
}

/// Another process broke in: fail every transaction from now on.
fn fenced_out(st: &mut WbState) -> String {
    let message = "sqlite: another process took the database over while this one \
                   did not answer (was it stopped?); its last commits were lost; remount"
        .to_string();
    if !st.displaced {
        tracing::error!(%message);
    }
    st.failed = Some(message.clone());
    st.displaced = true;
    message
}

/// `write_behind_owner` as SQLite holds it now.
fn current_owner(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM hafs_meta WHERE name = 'write_behind_owner'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
}

enum FlushError {
    Sql(rusqlite::Error),
    /// Another process broke in: this one no longer owns the file.
    Displaced,
}

fn write_batch(
    conn: &Connection,
    batch: &[Unflushed],
    prune_through: Option<Version>,
    owner: &str,
) -> Result<(), FlushError> {
    control(conn, "BEGIN IMMEDIATE").map_err(FlushError::Sql)?;
    // Checked under SQLite's write lock, which a breaker takes to fence
    // us: either this batch lands before the break, or not at all.
    match current_owner(conn) {
        Ok(Some(v)) if v == owner => {}
        Ok(_) => {
            let _ = control(conn, "ROLLBACK");
            return Err(FlushError::Displaced);
        }
        Err(e) => {
            let _ = control(conn, "ROLLBACK");
            return Err(FlushError::Sql(e));
        }
    }
    let written = (|| {
        let mut writes = Vec::new();
        for commit in batch {
            for m in &commit.mutations {
                apply(conn, m)?;
            }
            writes.extend(commit.writes.iter().cloned());
        }
        let last = batch.last().map_or(0, |c| c.version);
        let work = CommitWork {
            read_version: last,
            mutations: Vec::new(),
            read_conflicts: Vec::new(),
            writes,
            prune_through,
            relaxed: true,
        };
        write_all(conn, &work, last)?;
        control(conn, "COMMIT")
    })();
    if written.is_err() {
        let _ = control(conn, "ROLLBACK");
    }
    written.map_err(FlushError::Sql)
}

/// A newcomer knocked: stop buffered commits, write everything out, switch
/// to direct commits and share the database.
fn hand_over(shared: &Shared, wb: &WriteBehind, conn: &Connection) {
    wb.state.lock().draining = true;
    drain(shared, wb, conn);
    {
        let mut st = wb.state.lock();
        if st.failed.is_some() && !st.displaced {
            // Acknowledged commits could not be written: sharing the file
            // would let everyone read (and number versions) without them.
            // Keep it; the newcomer times out with an error naming us, and
            // every transaction here fails until a remount.
            st.draining = false;
            wb.changed.notify_all();
            return;
        }
    }
    stop_buffering(shared, wb);
}

/// Everything is written out (or lost for good): commit straight to
/// SQLite from now on, in a new generation, and share the file.
fn stop_buffering(shared: &Shared, wb: &WriteBehind) {
    let mut st = wb.state.lock();
    if st.buffered {
        st.buffered = false;
        st.pending = None;
        st.generation += 1;
        if let Err(e) = shared.host.share() {
            tracing::error!(error = %e, "sqlite: cannot share the database lock");
        }
    }
    st.draining = false;
    wb.changed.notify_all();
    drop(st);
    // After the generation changed: none is kept warm from here on.
    shared.cool_all();
}

/// Opened past a lone holder that did not hand the file over within
/// `join_wait` (stopped, hung): fence it out. Its next flush checks
/// `write_behind_owner` under SQLite's write lock and, finding it changed,
/// gives up (the commits it buffered are lost, as in a crash) and fails
/// every later transaction; the breaker byte keeps anyone from becoming
/// exclusive while this backend runs without presence. Then mark its sync
/// log ([`synclog::fence`]) before the replay reads it: a sync the holder
/// logs from then on fails, and one it logged before is read.
///
/// In this order: the holder starts or restarts its log (a write of the
/// whole header page, which wipes a mark) only under SQLite's write lock
/// while the owner is still its own, so such a write finished before the
/// owner changed, hence before the mark.
fn break_in(conn: &Connection, path: &Path, log: &Path) -> Result<(), OpenError> {
    let pid: Option<i64> = conn
        .query_row(
            "SELECT value FROM hafs_meta WHERE name = 'write_behind_pid'",
            [],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten();
    tracing::warn!(
        holder_pid = ?pid,
        "the process that had this database to itself did not hand it over (stopped?): \
         fencing it out; what it had not written yet is lost"
    );
    let fenced = conn.busy_timeout(WRITE_LOCK_WAIT).and_then(|()| {
        set_meta(
            conn,
            "write_behind_owner",
            &format!("broken by {}", std::process::id()),
        )
    });
    let _ = conn.busy_timeout(Duration::ZERO);
    let holder = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let failed = |at: &Path, e: &dyn std::fmt::Display| OpenError::Io {
        path: at.display().to_string(),
        message: format!(
            "cannot fence out the process that has this database to itself{holder}: {e}"
        ),
    };
    fenced.map_err(|e| failed(path, &e))?;
    synclog::fence(log).map_err(|e| failed(log, &e))
}

/// The newest committed version SQLite holds.
fn newest_version(conn: &Connection) -> rusqlite::Result<Version> {
    conn.prepare_cached("SELECT max(version) FROM commits")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, Option<i64>>(0)))
        .map(|v| u64::try_from(v.unwrap_or(0)).unwrap_or(0))
}

/// Apply what the sync log holds and SQLite lacks ([`synclog`]): commits
/// that a process with the database to itself made durable there but had
/// not written to SQLite when it died or was fenced out, or whose write to
/// SQLite a power loss undid. Then make SQLite durable and retire the log.
///
/// Runs in `open` before the first transaction, holding presence (or the
/// breaker byte), so nobody is logging: a holder that handed over has
/// written everything to SQLite first (its records are all at or below
/// SQLite's newest version: nothing to apply, but its WAL may not be
/// synced yet, hence the sync before retiring); one that was fenced out
/// fails any sync it logs after this read (`break_in`, `SyncLog::fenced`).
///
/// The log starts at a version SQLite had durably, and holds every commit
/// after it, so SQLite's newest version after any crash is at or above the
/// log's start and everything above it is applied: a prefix of the
/// acknowledged commits, never a state with a hole. The applied commits
/// get one `commits` row with no write ranges: no transaction begun before
/// this open can still commit.
fn replay_sync_log(conn: &Connection, log: &Path, wal: &Path) -> Result<(), OpenError> {
    let failed = |message: String| OpenError::Io {
        path: log.display().to_string(),
        message: format!("cannot replay the sync log: {message}"),
    };
    let Some((file, commits)) = synclog::read_active(log).map_err(|e| failed(e.to_string()))?
    else {
        return Ok(());
    };
    #[cfg(test)]
    {
        let hook = REPLAY_READ_HOOK.lock().take_if(|(at, _)| at == log);
        if let Some((_, hook)) = hook {
            hook();
        }
    }
    let mut applied = 0;
    let replayed = conn
        .busy_timeout(WRITE_LOCK_WAIT)
        .and_then(|()| control(conn, "BEGIN IMMEDIATE"))
        .and_then(|()| {
            let newest = newest_version(conn)?;
            let mut last = None;
            for c in commits.iter().filter(|c| c.version > newest) {
                for m in &c.mutations {
                    apply(conn, m)?;
                }
                applied += 1;
                last = Some(c.version);
            }
            if let Some(version) = last {
                let work = CommitWork {
                    read_version: version,
                    mutations: Vec::new(),
                    read_conflicts: Vec::new(),
                    writes: Vec::new(),
                    prune_through: None,
                    relaxed: true,
                };
                write_all(conn, &work, version)?;
            }
            control(conn, "COMMIT")
        });
    let _ = conn.busy_timeout(Duration::ZERO);
    if let Err(e) = replayed {
        let _ = control(conn, "ROLLBACK");
        return Err(failed(e.to_string()));
    }
    if applied > 0 {
        tracing::warn!(
            commits = applied,
            "sqlite: applied synced commits that the database lacked (a process that had it \
             to itself died or was fenced out before writing them)"
        );
    }
    // Durable in SQLite before the log stops counting.
    sync_file(wal)
        .and_then(|()| synclog::retire(&file))
        .map_err(|e| failed(e.to_string()))
}

/// fdatasync the file at `path`, if there is one.
fn sync_file(path: &Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Set the `hafs_meta` row `name` (write-behind's owner and pid).
fn set_meta(conn: &Connection, name: &str, value: &dyn rusqlite::ToSql) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO hafs_meta(name, value) VALUES (?1, ?2) \
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])
    .map(|_| ())
}

/// Flush until nothing is left (new commits wait while `draining`).
fn drain(shared: &Shared, wb: &WriteBehind, conn: &Connection) {
    drain_until(shared, wb, conn, None);
}

/// [`drain`], giving up after `full_for` of finding the disk full
/// (`None`: until there is room, or another process breaks in — as on a
/// holder that stopped, a newcomer does after its `join_wait`). Returns
/// whether everything was written.
fn drain_until(
    shared: &Shared,
    wb: &WriteBehind,
    conn: &Connection,
    full_for: Option<Duration>,
) -> bool {
    let mut waited = Duration::ZERO;
    loop {
        flush_once(shared, wb, conn);
        let st = wb.state.lock();
        if !st.table.has_unflushed() {
            return true;
        }
        if st.failed.is_some() {
            return false;
        }
        if st.no_space {
            drop(st);
            if full_for.is_some_and(|limit| waited >= limit) {
                return false;
            }
            std::thread::sleep(FULL_RETRY);
            waited += FULL_RETRY;
        }
    }
}

/// Alone again? Then take the database: wait for direct commits in flight,
/// start a memtable at SQLite's newest version.
fn enter_buffered(shared: &Shared, wb: &WriteBehind, conn: &Connection) -> KvResult<()> {
    {
        let st = wb.state.lock();
        // After a failed flush the memtable may still hold acknowledged
        // commits: never replace it (the backend stays failed).
        if st.closed || st.failed.is_some() || st.table.has_unflushed() {
            return Ok(());
        }
    }
    if !shared
        .host
        .try_exclusive()
        .map_err(|e| KvError::Backend(format!("sqlite lock file: {e}")))?
    {
        return Ok(());
    }
    #[cfg(test)]
    run_test_hook(&shared.regain_at_log);
    // Held until the new log is in place: a sync that began before the
    // last hand-over must finish (and read back the header of the log it
    // wrote, `SyncLog::fenced`) before this backend starts a new log, or it
    // would find the new salt and take this backend for fenced out.
    let mut log_slot = wb.log.lock();
    // The pid tells a newcomer who to wake if this process stops
    // answering. Written before taking the state lock: it may wait for
    // SQLite's write lock, and executor threads take the state lock.
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    let owner = format!(
        "{}/{}",
        std::process::id(),
        TAKEN.fetch_add(1, Ordering::Relaxed)
    );
    let written = set_meta(conn, "write_behind_pid", &std::process::id())
        .and_then(|()| set_meta(conn, "write_behind_owner", &owner));
    if let Err(e) = written {
        let _ = shared.host.share();
        return Err(map_error(e));
    }
    // A breaker that fenced the previous owner before this write would be
    // undone by it: look again now that it is written (one that breaks in
    // later fences this owner at its first flush).
    if shared.host.breaker_present().unwrap_or(true) {
        let _ = shared.host.share();
        return Ok(());
    }
    let mut st = wb.state.lock();
    st.owner = owner.clone();
    st.entering = true;
    while st.direct_inflight > 0 {
        wb.changed.wait(&mut st);
    }
    if st.closed || st.failed.is_some() {
        // Closed (or failed) while direct commits drained: stay direct.
        st.entering = false;
        wb.changed.notify_all();
        drop(st);
        let _ = shared.host.share();
        return Ok(());
    }
    let newest = match newest_version(conn) {
        Ok(v) => v,
        Err(e) => {
            st.entering = false;
            wb.changed.notify_all();
            drop(st);
            let _ = shared.host.share();
            return Err(map_error(e));
        }
    };
    // Direct commits stay refused (`entering`) while the log starts: it
    // holds what comes after `newest`, which must be durable first.
    drop(st);
    let log = shared.start_sync_log(newest, &owner);
    let logging = log.is_some();
    *log_slot = log;
    drop(log_slot);
    let mut st = wb.state.lock();
    st.entering = false;
    if st.closed || st.failed.is_some() {
        wb.changed.notify_all();
        drop(st);
        let _ = shared.host.share();
        return Ok(());
    }
    st.generation += 1;
    st.table = Memtable::new(newest, LOG_RETENTION);
    st.table_generation = st.generation;
    st.pending = logging.then(RecordBuf::default);
    st.buffered = true;
    wb.changed.notify_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Range reads page by count without making SQLite plan the statement
    /// again at each use (a bound `LIMIT` did: every execution re-prepared).
    #[test]
    fn range_reads_page_by_count_and_are_never_re_prepared() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE kv(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
        )
        .unwrap();
        for i in 0u8..10 {
            conn.execute(
                "INSERT INTO kv VALUES (?1, ?2)",
                params![vec![i], vec![i; 3]],
            )
            .unwrap();
        }
        let keys = |kvs: &[KeyValue]| kvs.iter().map(|(k, _)| k[0]).collect::<Vec<_>>();
        for _ in 0..3 {
            let (kvs, more) = stored_range(&conn, &[2], &[8], 3, false).unwrap();
            assert_eq!((keys(&kvs), more), (vec![2, 3, 4], true));
            let (kvs, more) = stored_range(&conn, &[2], &[8], 6, false).unwrap();
            assert_eq!((keys(&kvs), more), (vec![2, 3, 4, 5, 6, 7], false));
            let (kvs, more) = stored_range(&conn, &[2], &[8], 0, false).unwrap();
            assert_eq!((keys(&kvs), more), (vec![2, 3, 4, 5, 6, 7], false));
            let (kvs, more) = stored_range(&conn, &[2], &[8], 2, true).unwrap();
            assert_eq!((keys(&kvs), more), (vec![7, 6], true));
            assert_eq!(kvs[0].1, vec![7; 3]);
        }
        for sql in [
            "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
            "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key DESC",
        ] {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert!(
                stmt.get_status(rusqlite::StatementStatus::VmStep) > 0,
                "{sql}: not the statement used"
            );
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
    }

    /// A relaxed backend alone on a new database in `dir` (buffering, its
    /// sync log started), and a `Database` over it.
    fn buffering(dir: &Path) -> (SqliteBackend, crate::kv::Database) {
        buffering_as(dir, Durability::Relaxed)
    }

    fn buffering_as(dir: &Path, durability: Durability) -> (SqliteBackend, crate::kv::Database) {
        let clock = crate::clock::TokioClock::new();
        let options = SqliteOptions {
            durability,
            flush_interval: Duration::from_secs(3600),
            ..SqliteOptions::default()
        };
        let backend = SqliteBackend::open(&dir.join("kv.db"), options, clock.clone()).unwrap();
        assert!(backend.write_behind_active());
        let db = crate::kv::Database::new(Arc::new(backend.clone()), clock, 1);
        (backend, db)
    }

    /// A warm connection's snapshot predates commits written out to
    /// SQLite since; its pin kept them in the memtable, so a transaction
    /// reading through it still sees them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reused_snapshot_still_sees_commits_written_out_since() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::clock::TokioClock::new();
        let options = SqliteOptions {
            durability: Durability::Relaxed,
            flush_interval: Duration::from_secs(3600),
            snapshot_reuse: Duration::from_secs(3600),
            ..SqliteOptions::default()
        };
        let backend =
            SqliteBackend::open(&dir.path().join("kv.db"), options, clock.clone()).unwrap();
        assert!(backend.write_behind_active());
        let db = crate::kv::Database::new(Arc::new(backend.clone()), clock, 1);
        // A snapshot without `k`, kept warm, then set aside so that the
        // write below takes a snapshot of its own.
        let txn = backend.begin().await.unwrap();
        assert_eq!(txn.get(b"k").await.unwrap(), None);
        drop(txn);
        let old = backend.shared.warm.lock().pop().expect("kept warm");
        put(&db, b"k").await;
        tokio::task::block_in_place(|| backend.shared.wait_flushed()).unwrap();
        backend.shared.cool_all();
        backend.shared.warm.lock().push(old);
        let txn = backend.begin().await.unwrap();
        assert!(
            backend.shared.warm.lock().is_empty(),
            "the old snapshot was reused"
        );
        assert_eq!(txn.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
        drop(txn);
        // The warm connection holds the only pin; a hand-over's generation
        // change cools it, and releases that pin.
        let wb = backend.shared.wb.as_ref().unwrap();
        assert_eq!(backend.shared.warm.lock().len(), 1);
        assert_eq!(wb.state.lock().table.pins(), 1);
        stop_buffering(&backend.shared, wb);
        assert!(backend.shared.warm.lock().is_empty());
        assert_eq!(wb.state.lock().table.pins(), 0);
    }

    /// A committer that must wait for the flusher, or for a durable sync,
    /// does so outside its snapshot (a RESTART checkpoint would wait for
    /// it), and its connection is not kept warm.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_commit_keeps_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, db) = buffering_as(dir.path(), Durability::Durable);
        put(&db, b"k").await;
        assert!(backend.shared.warm.lock().is_empty());
        let wb = backend.shared.wb.as_ref().unwrap();
        assert_eq!(wb.state.lock().table.pins(), 0);
        // A read-only transaction keeps its snapshot for the next one.
        db.run(|txn, _| async move { txn.get(b"k").await })
            .await
            .unwrap();
        assert_eq!(backend.shared.warm.lock().len(), 1);
    }

    /// The sync log of the database `buffering` made in `dir`.
    fn log_of(dir: &Path) -> PathBuf {
        synclog::log_path(&std::fs::canonicalize(dir.join("kv.db")).unwrap())
    }

    async fn put(db: &crate::kv::Database, key: &[u8]) {
        db.run(|txn, _| async move {
            txn.set(key, b"v");
            Ok::<_, KvError>(())
        })
        .await
        .unwrap();
    }

    fn sync(backend: &SqliteBackend) -> KvResult<()> {
        tokio::task::block_in_place(|| backend.shared.sync_relaxed())
    }

    /// A buffering backend whose sync log holds `a` and whose next record
    /// (pending) holds `b`.
    async fn a_logged_b_pending(dir: &Path) -> (SqliteBackend, crate::kv::Database) {
        let (backend, db) = buffering(dir);
        put(&db, b"a").await;
        sync(&backend).unwrap();
        put(&db, b"b").await;
        (backend, db)
    }

    /// Transactions read the database through a memory map only while the
    /// backend has it to itself (`MMAP_BYTES`): a backend that commits
    /// straight to SQLite uses unmapped connections (`mapped_pool`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_backend_alone_maps_its_database() {
        for write_behind in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kv.db");
            let clock = crate::clock::TokioClock::new();
            let options = SqliteOptions {
                write_behind,
                ..SqliteOptions::default()
            };
            let backend = SqliteBackend::open(&path, options, clock.clone()).unwrap();
            assert_eq!(backend.write_behind_active(), write_behind);
            let db = crate::kv::Database::new(Arc::new(backend.clone()), clock, 1);
            for i in 0..100u8 {
                put(&db, &[b'k', i]).await;
            }
            tokio::task::block_in_place(|| backend.shared.wait_flushed()).unwrap();
            // Everything into the database file, where a map can serve it.
            let raw = Connection::open(&path).unwrap();
            let (busy, _, _): (i64, i64, i64) = raw
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(busy, 0, "the checkpoint was blocked");
            let found = db
                .run(|txn, _| async move { txn.get(&[b'k', 50]).await })
                .await
                .unwrap();
            assert_eq!(found.as_deref(), Some(&b"v"[..]));
            let file = std::fs::canonicalize(&path).unwrap();
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let mapped = maps
                .lines()
                .any(|line| line.ends_with(&*file.to_string_lossy()));
            assert_eq!(mapped, write_behind, "write_behind: {write_behind}");
            // Each connection went back to the pool it came from: a mapped
            // one in the plain pool would map a later direct transaction's
            // reads (after a hand-over, say).
            let in_mapped_pool =
                backend.shared.mapped_pool.lock().len() + backend.shared.warm.lock().len();
            assert_eq!(
                in_mapped_pool > 0,
                write_behind,
                "write_behind: {write_behind}"
            );
        }
    }

    /// A sync whose commits left `pending` but did not become durable
    /// (here: the WAL sync fails once) must not let a later record follow
    /// that gap in the log: replay would apply it over a hole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_sync_is_acknowledged_after_a_gap_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, db) = a_logged_b_pending(dir.path()).await;
        let wb = backend.shared.wb.as_ref().unwrap();
        // As if `b` overflowed a record: this sync goes through SQLite...
        wb.state.lock().pending = None;
        // ... and fails, once (as a WAL that cannot be opened fails a sync
        // without poisoning the backend).
        backend.shared.fail_sql_sync.store(true, Ordering::Relaxed);
        assert!(sync(&backend).is_err());
        put(&db, b"c").await;
        sync(&backend).unwrap();
        // Whatever the log holds now, it never holds c without b.
        let log = log_of(dir.path());
        let (_, commits) = synclog::read_active(&log).unwrap().expect("active");
        let logged = |key: &[u8]| {
            commits
                .iter()
                .flat_map(|c| &c.mutations)
                .any(|m| matches!(m, Mutation::Set { key: k, .. } if k.as_slice() == key))
        };
        assert!(
            !logged(b"c") || logged(b"b"),
            "c logged after the gap b left"
        );
    }

    /// A logged sync that stalls after its fdatasync while this backend
    /// hands the file over and takes it back must still succeed: the
    /// regain waits for it (`enter_buffered` takes the log mutex before it
    /// starts a new log), so the sync never reads back the next log's salt
    /// and fences itself out; and the newcomer's retiring the log on the
    /// way (the holder wrote everything to SQLite) fences nobody.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_outlasting_a_hand_over_and_regain_is_not_fenced_out() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, db) = buffering(dir.path());
        put(&db, b"a").await;
        // Every wait is bounded: a sync that never reaches the log (or a
        // regain that never comes) fails the test instead of hanging it.
        let wait = |signal: &std::sync::mpsc::Receiver<()>, what: &str| {
            tokio::task::block_in_place(|| signal.recv_timeout(Duration::from_secs(30)))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        };
        let (stalled_tx, stalled) = std::sync::mpsc::channel();
        let (resume, resume_rx) = std::sync::mpsc::channel::<()>();
        *backend.shared.after_log_append.lock() = Some(Box::new(move || {
            stalled_tx.send(()).unwrap();
            let _ = resume_rx.recv_timeout(Duration::from_secs(60));
        }));
        let (regain_tx, regain) = std::sync::mpsc::channel();
        *backend.shared.regain_at_log.lock() = Some(Box::new(move || {
            let _ = regain_tx.send(());
        }));
        let syncing = {
            let shared = backend.shared.clone();
            std::thread::spawn(move || shared.sync_relaxed())
        };
        wait(&stalled, "the sync never reached the log");
        // A newcomer: the holder hands over (the stalled sync holds only
        // the log), and the newcomer leaves.
        let path = dir.path().join("kv.db");
        let clock = crate::clock::TokioClock::new();
        let newcomer = tokio::task::block_in_place(|| {
            SqliteBackend::open(&path, SqliteOptions::default(), clock)
        })
        .unwrap();
        assert!(!backend.write_behind_active(), "handed over");
        drop(newcomer);
        // The flusher tries to take the file back while the sync stalls;
        // then a little longer, in which a regain that started a new log
        // (a new salt) without waiting for the log mutex would have.
        wait(&regain, "no attempt to take the file back");
        tokio::time::sleep(REGAIN_POLL).await;
        resume.send(()).unwrap();
        syncing.join().unwrap().expect("the stalled sync");
        // Taken back, and working.
        for waited in 0.. {
            if backend.write_behind_active() {
                break;
            }
            assert!(waited < 500, "never taken back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        put(&db, b"b").await;
        sync(&backend).expect("a sync after the regain");
    }

    /// A durable commit never waits for a sync that is not running. A sync
    /// that cannot open the WAL syncs nothing and fails only its own
    /// waiter, leaving `running_through` at the tickets it was to cover:
    /// the state set up here. The next waiter, covered on paper, must
    /// start a sync of its own rather than wait for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_that_could_not_open_the_wal_leaves_no_waiter_behind() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            write_behind: false,
            ..SqliteOptions::default()
        };
        let clock = crate::clock::TokioClock::new();
        let backend = SqliteBackend::open(&dir.path().join("kv.db"), options, clock).unwrap();
        let shared = backend.shared.clone();
        {
            let mut state = shared.wal_sync.state.lock();
            state.running_through = state.issued + 10;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(shared.wait_durable()));
        let waited = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiter waits for a sync nobody runs");
        waited.unwrap();
        assert!(backend.group_commit_stats().1 >= 1, "it synced");
    }

    /// Two WAL syncs in flight never share a descriptor: on one, a
    /// writeback error would be reported to only one of them, and the
    /// other could acknowledge commits whose pages were lost (`WalSync`).
    /// On a disk (fdatasync takes long enough for syncs to overlap).
    #[test]
    fn wal_syncs_in_flight_never_share_a_descriptor() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let under = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&under).unwrap();
        let dir = tempfile::tempdir_in(under).unwrap();
        let clock = runtime.block_on(async { crate::clock::TokioClock::new() });
        let options = SqliteOptions {
            write_behind: false,
            ..SqliteOptions::default()
        };
        let backend =
            SqliteBackend::open(&dir.path().join("kv.db"), options, clock.clone()).unwrap();
        let db = crate::kv::Database::new(Arc::new(backend.clone()), clock, 1);
        runtime.block_on(async {
            let tasks: Vec<_> = (0..8u8)
                .map(|t| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        for i in 0..100u8 {
                            db.run(|txn, _| async move {
                                txn.set(&[t, i], b"v");
                                Ok::<_, KvError>(())
                            })
                            .await
                            .unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        let probe = backend.shared.wal_sync.probe.lock();
        assert!(probe.most >= 2, "no two syncs ever ran at once");
        assert!(!probe.shared, "two syncs in flight shared a descriptor");
    }

    /// A durable commit whose sync fails is not retried, even when the
    /// failure is one retried elsewhere: the commit is visible already (in
    /// SQLite here), and a retry would apply it a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_commit_whose_sync_fails_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, db) = buffering_as(dir.path(), Durability::Durable);
        backend.shared.fail_sql_sync.store(true, Ordering::Relaxed);
        let result = db
            .run(|txn, _| async move {
                let n = txn.get(b"n").await?.map_or(0, |v| v[0]);
                txn.set(b"n", &[n + 1]);
                // Too big for the log: through SQLite, where the sync fails.
                txn.set(b"pad", &vec![0; synclog::RECORD_MAX]);
                Ok::<_, KvError>(())
            })
            .await;
        assert!(matches!(result, Err(KvError::Backend(_))), "{result:?}");
        let n = db
            .run(|txn, _| async move { txn.get(b"n").await })
            .await
            .unwrap();
        assert_eq!(n, Some(vec![1]), "applied once");
    }

    /// A sync too big for the log goes through SQLite, unencoded, and the
    /// log goes on after it rather than starting over: the next record
    /// follows the earlier ones (replay skips what SQLite has).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logging_goes_on_after_a_sync_through_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, db) = buffering(dir.path());
        put(&db, b"a").await;
        sync(&backend).unwrap();
        db.run(|txn, _| async move {
            txn.set(b"big", &vec![1; synclog::RECORD_MAX]);
            Ok::<_, KvError>(())
        })
        .await
        .unwrap();
        let wb = backend.shared.wb.as_ref().unwrap();
        assert!(wb.state.lock().pending.is_none(), "too big to encode");
        sync(&backend).unwrap();
        let raw = Connection::open(dir.path().join("kv.db")).unwrap();
        assert!(
            read_value(&raw, b"big").unwrap().is_some(),
            "through SQLite"
        );
        put(&db, b"c").await;
        sync(&backend).unwrap();
        let (_, logged) = synclog::read_active(&log_of(dir.path()))
            .unwrap()
            .expect("active");
        let keys: Vec<&[u8]> = logged
            .iter()
            .flat_map(|c| &c.mutations)
            .map(|m| match m {
                Mutation::Set { key, .. } => key.as_slice(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(keys, vec![b"a".as_slice(), b"c"], "records of one log");
    }

    /// A holder fenced out by a breaker (who retired the log) never makes
    /// the log active again: restarting a full log after a sync through
    /// SQLite, or starting it, checks the owner under SQLite's write lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fenced_out_holder_never_reactivates_the_log() {
        let dir = tempfile::tempdir().unwrap();
        // `b` pending for the log but written out, so the next sync has a
        // record to log and nothing to flush.
        let (backend, _db) = a_logged_b_pending(dir.path()).await;
        tokio::task::block_in_place(|| backend.shared.wait_flushed()).unwrap();
        // The breaker: fences in SQLite, replays, retires the log.
        let raw = Connection::open(dir.path().join("kv.db")).unwrap();
        set_meta(&raw, "write_behind_owner", &"broken by test").unwrap();
        let log = log_of(dir.path());
        let (file, _) = synclog::read_active(&log).unwrap().expect("active");
        synclog::retire(&file).unwrap();
        // The holder's next sync finds the log full, goes through SQLite
        // and then would start the log over.
        let wb = backend.shared.wb.as_ref().unwrap();
        wb.log.lock().as_mut().expect("logging").fill_up();
        let synced = sync(&backend);
        assert!(
            wb.log.lock().is_none(),
            "the restart was not refused (sync: {synced:?})"
        );
        assert!(
            synclog::read_active(&log).unwrap().is_none(),
            "a fenced-out holder made the log active again"
        );
        let owner = wb.state.lock().owner.clone();
        assert!(backend.shared.start_sync_log(0, &owner).is_none());
        assert!(synclog::read_active(&log).unwrap().is_none());
    }

    /// A break-in marks the holder's sync log as well as changing the
    /// owner: the holder's next logged sync fails, whether the breaker is
    /// still between its mark and its read of the log or has replayed and
    /// retired it — a record written after the breaker's read is never
    /// acknowledged. (The holder reads the log's header back after each
    /// append; SQLite's owner row is not read there.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_logged_after_a_break_in_fails() {
        for replayed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (backend, _db) = a_logged_b_pending(dir.path()).await;
            // The breaker, on a connection of its own as another process.
            let path = dir.path().join("kv.db");
            let raw = Connection::open(&path).unwrap();
            let log = log_of(dir.path());
            break_in(&raw, &path, &log).unwrap();
            let (_, read) = synclog::read_active(&log).unwrap().expect("active");
            assert_eq!(read.len(), 1, "the breaker reads a, not b");
            if replayed {
                replay_sync_log(&raw, &log, &wal_path(&path).unwrap()).unwrap();
            }
            let synced = sync(&backend);
            assert!(
                matches!(&synced, Err(KvError::Backend(m)) if m.contains("took the database over")),
                "b acknowledged after the break-in (replayed: {replayed}): {synced:?}"
            );
        }
    }

    /// A breaker marks the holder's sync log before its replay reads it
    /// (`open`: `break_in`, then `replay_sync_log`): a holder that logs a
    /// sync just after the replay's read, while the breaker goes on, finds
    /// the mark and fails that sync. Marked only after the read, the
    /// record would be acknowledged and never replayed: lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_opener_breaking_in_marks_the_log_before_it_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, _db) = a_logged_b_pending(dir.path()).await;
        // The holder does not hand over: its flusher, answering the knock,
        // waits for the flush lock held here.
        let wb = backend.shared.wb.as_ref().unwrap();
        let flushing = wb.flushing.lock();
        let log = log_of(dir.path());
        let (synced_tx, synced) = std::sync::mpsc::channel();
        let shared = backend.shared.clone();
        *REPLAY_READ_HOOK.lock() = Some((
            log.clone(),
            Box::new(move || {
                let _ = synced_tx.send(shared.sync_relaxed());
            }),
        ));
        let options = SqliteOptions {
            join_wait: Duration::from_millis(300),
            ..SqliteOptions::default()
        };
        let clock = crate::clock::TokioClock::new();
        let opened = tokio::task::block_in_place(|| {
            SqliteBackend::open(&dir.path().join("kv.db"), options, clock)
        });
        drop(flushing);
        let breaker = opened.expect("the breaker opens");
        let synced = synced
            .recv_timeout(Duration::from_secs(30))
            .expect("the replay never read the log");
        assert!(
            matches!(&synced, Err(KvError::Backend(m)) if m.contains("took the database over")),
            "a sync logged after the breaker read the log was acknowledged: {synced:?}"
        );
        drop(breaker);
    }

    /// Deleted data goes back to the disk: once more than
    /// `VACUUM_FREE_BYTES` of the database file has been free pages for
    /// `vacuum_after`, the checkpoint thread vacuums them and the file
    /// shrinks (a new database is made with auto_vacuum; without it the
    /// file keeps its size). Before that, the pages stay for reuse.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn free_pages_of_deleted_data_go_back_to_the_disk() {
        for vacuum_after in [Duration::ZERO, Duration::from_secs(3600)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kv.db");
            let options = SqliteOptions {
                write_behind: false,
                vacuum_after,
                ..SqliteOptions::default()
            };
            let clock = crate::clock::TokioClock::new();
            let backend = SqliteBackend::open(&path, options, clock.clone()).unwrap();
            let db = crate::kv::Database::new(Arc::new(backend.clone()), clock, 1);
            // 45 MB of values, in transactions under the 10 MB limit.
            for t in 0..5u8 {
                db.run(|txn, _| async move {
                    for i in 0..100u8 {
                        txn.set(&[b'v', t, i], &vec![i ^ t; 90_000]);
                    }
                    Ok::<_, KvError>(())
                })
                .await
                .unwrap();
            }
            let conn = connect(&path).unwrap();
            let size = || std::fs::metadata(&path).unwrap().len();
            let round =
                || tokio::task::block_in_place(|| checkpoint(&backend.shared, &conn)).unwrap();
            // The backend's own checkpoint thread runs too: a round that
            // finds it busy copies nothing, so look until it is done.
            let settled = |done: &dyn Fn(u64) -> bool| {
                for _ in 0..200 {
                    round();
                    if done(size()) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            };
            settled(&|size| size > 45_000_000);
            let grown = size();
            assert!(grown > 45_000_000, "the values reached the file: {grown}");
            db.run(|txn, _| async move {
                txn.clear_range(b"v", b"w");
                Ok::<_, KvError>(())
            })
            .await
            .unwrap();
            if vacuum_after.is_zero() {
                settled(&|size| size < grown - 30_000_000);
            } else {
                for _ in 0..3 {
                    round();
                }
            }
            let shrunk = size();
            let free = backend.shared.db_free_bytes.load(Ordering::Relaxed);
            if vacuum_after.is_zero() {
                assert!(
                    shrunk < grown - 30_000_000,
                    "the file kept its size: {grown} bytes, {shrunk} after deleting 45 MB"
                );
                assert!(free <= VACUUM_FREE_BYTES, "{free} bytes still free");
            } else {
                assert!(
                    shrunk >= grown,
                    "vacuumed before its time: {shrunk} of {grown}"
                );
                assert!(free > 40_000_000, "{free} bytes free");
            }
        }
    }
}
