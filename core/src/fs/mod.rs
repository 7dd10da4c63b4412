//! [`Fs`]: one client's handle on one filesystem. It owns the client's
//! identity, its inode-number batch and its idempotency sequence, and runs
//! every operation (`crate::ops`) as one transaction through the KV runner.
//!
//! # Idempotency
//! Every mutating operation writes a marker `("client", id, "idem", seq)`
//! holding its reply in the same transaction. When the runner retries after
//! `commit_unknown_result`, the operation first looks for its marker: if the
//! earlier attempt committed, the stored reply is returned and nothing is
//! applied twice (a create does not turn into `EEXIST`, an append is not
//! written twice). Markers older than [`IDEMPOTENCY_WINDOW`] operations of
//! the same client are cleared by later operations, [`IDEMPOTENCY_CLEAR_EVERY`]
//! at a time: clearing one old marker per operation dirtied a second B-tree
//! page (far from the new marker's) in every mutating transaction. A marker
//! is never cleared while its operation is still running ([`MarkerSeqs`]):
//! one that waits out a timed-out commit for seconds while the mount's
//! other threads run thousands of operations must still find it.
//!
//! Markers are written only where commits can be ambiguous in normal
//! operation (FoundationDB; the fault-injecting wrapper the simulator and
//! tests use). On SQLite only a local I/O error during COMMIT leaves the
//! outcome unknown ([`crate::kv::Backend::ambiguous_commits`]): there a
//! mutation writes no marker and reports such an error (EIO) instead of
//! retrying — at most once, never twice, like a local filesystem whose disk
//! failed mid-write — and every mutation saves a key and often a WAL frame.

pub mod alloc;
pub mod format;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::codec::{ClientInfo, Settings};
use crate::ctx::{Caller, Ctx, FsOptions};
use crate::error::{FsError, FsResult};
use crate::keys::Keys;
use crate::kv::{Database, KvError, Transaction};
use crate::limits::SETTLE_AFTER;

pub use format::{list_filesystems, mkfs, open_keys, rmfs, MkfsOptions};

/// How many recent operations of a client keep their idempotency marker.
pub const IDEMPOTENCY_WINDOW: u64 = 4096;
/// Every this many operations, one clears the markers that have left the
/// window since (so a marker lives at most this many operations longer).
pub const IDEMPOTENCY_CLEAR_EVERY: u64 = 256;
const _: () = assert!(IDEMPOTENCY_CLEAR_EVERY <= IDEMPOTENCY_WINDOW);
/// Timed-out commits settled (waited out) before giving up.
const SETTLE_ATTEMPTS: u32 = 5;

/// Which idempotency markers may be cleared: those left behind by the
/// window and by every operation still running, from where the last clear
/// stopped.
#[derive(Debug, Default)]
pub struct MarkerSeqs {
    running: std::collections::BTreeSet<u64>,
    /// Every marker below this one has been cleared (or claimed by a clear).
    cleared_below: u64,
}

impl MarkerSeqs {
    /// Operation `seq` starts; the markers it should clear, if any
    /// (inclusive; every [`IDEMPOTENCY_CLEAR_EVERY`] operations).
    pub fn start(&mut self, seq: u64) -> Option<(u64, u64)> {
        self.running.insert(seq);
        if !seq.is_multiple_of(IDEMPOTENCY_CLEAR_EVERY) {
            return None;
        }
        let old = seq.checked_sub(IDEMPOTENCY_WINDOW)?;
        let oldest_running = self.running.first().copied().unwrap_or(seq);
        let last = old.min(oldest_running.checked_sub(1)?);
        if last < self.cleared_below {
            return None;
        }
        let first = self.cleared_below;
        self.cleared_below = last + 1;
        Some((first, last))
    }

    /// Operation `seq` is over (whatever its outcome).
    pub fn end(&mut self, seq: u64) {
        self.running.remove(&seq);
    }
}

/// Ends a running operation's sequence number on drop, also when the
/// operation is cancelled.
struct Running<'a> {
    seqs: &'a parking_lot::Mutex<MarkerSeqs>,
    seq: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.seqs.lock().end(self.seq);
    }
}

/// A reply that can be stored in an idempotency marker.
pub trait MarkerReply: Sized {
    fn to_marker(&self) -> Vec<u8>;
    fn from_marker(bytes: &[u8]) -> FsResult<Self>;
}

impl MarkerReply for () {
    fn to_marker(&self) -> Vec<u8> {
        Vec::new()
    }
    fn from_marker(_: &[u8]) -> FsResult<()> {
        Ok(())
    }
}

impl MarkerReply for u64 {
    fn to_marker(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn from_marker(bytes: &[u8]) -> FsResult<u64> {
        <[u8; 8]>::try_from(bytes)
            .map(u64::from_le_bytes)
            .map_err(|_| FsError::Corrupted("idempotency marker".into()))
    }
}

/// A write's reply: where it ended, and how many bytes it stored.
impl MarkerReply for (u64, u64) {
    fn to_marker(&self) -> Vec<u8> {
        [self.0.to_le_bytes(), self.1.to_le_bytes()].concat()
    }
    fn from_marker(bytes: &[u8]) -> FsResult<(u64, u64)> {
        let (a, b) = bytes
            .split_first_chunk::<8>()
            .and_then(|(a, rest)| Some((*a, <[u8; 8]>::try_from(rest).ok()?)))
            .ok_or_else(|| FsError::Corrupted("idempotency marker".into()))?;
        Ok((u64::from_le_bytes(a), u64::from_le_bytes(b)))
    }
}

impl MarkerReply for crate::codec::Attr {
    fn to_marker(&self) -> Vec<u8> {
        let mut out = self.ino.to_le_bytes().to_vec();
        out.extend(crate::codec::encode_attr(self));
        out
    }
    fn from_marker(bytes: &[u8]) -> FsResult<Self> {
        let (ino, attr) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| FsError::Corrupted("idempotency marker".into()))?;
        crate::codec::decode_attr(u64::from_le_bytes(*ino), attr)
    }
}

/// A new entry: the directory's mode, then the inode as [`Attr`]'s marker.
/// (A marker is only ever read back by the client that wrote it, so its
/// format may change between versions.)
///
/// [`Attr`]: crate::codec::Attr
impl MarkerReply for crate::ops::Made {
    fn to_marker(&self) -> Vec<u8> {
        let mut out = self.dir_mode.to_le_bytes().to_vec();
        out.extend(self.attr.to_marker());
        out
    }
    fn from_marker(bytes: &[u8]) -> FsResult<Self> {
        let (mode, attr) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| FsError::Corrupted("idempotency marker".into()))?;
        Ok(crate::ops::Made {
            attr: crate::codec::Attr::from_marker(attr)?,
            dir_mode: u32::from_le_bytes(*mode),
        })
    }
}

/// Ids a mount tries before it gives up attaching: its own, then
/// `ID~1`, `ID~2` (see [`attach_as_new`]).
const ATTACH_IDS: u32 = 3;

/// Attach as `info` describes, or, if that id is spent (an ambiguous
/// attach that may have landed and been evicted since,
/// [`crate::session::Attached::IdSpent`]), as `ID~1`, then `ID~2`: an id
/// never registered before cannot undo anyone's eviction, and a client
/// that has done nothing yet loses nothing by changing its name. Returns
/// the description the client attached with.
async fn attach_as_new(db: &Database, keys: &Keys, info: &ClientInfo) -> FsResult<ClientInfo> {
    // `~` is reserved for these names: a caller's id with one could be a
    // name this fallback gave another client, evicted since.
    if info.id.contains('~') {
        return Err(FsError::Invalid);
    }
    let names =
        std::iter::once(info.id.clone()).chain((1..ATTACH_IDS).map(|n| format!("{}~{n}", info.id)));
    for id in names {
        let attaching = ClientInfo { id, ..info.clone() };
        if crate::session::attach(db, keys, &attaching).await? == crate::session::Attached::Yes {
            return Ok(attaching);
        }
        tracing::warn!(
            client = %attaching.id,
            "attaching had an ambiguous commit and the registration is gone \
             (evicted meanwhile?): this id is spent"
        );
    }
    Err(FsError::Busy(format!(
        "attaching client {} had {ATTACH_IDS} ambiguous commits whose registrations went; \
         mount again",
        info.id
    )))
}

/// One client's handle on one filesystem.
#[derive(Debug)]
pub struct Fs {
    db: Database,
    name: String,
    keys: Keys,
    settings: Settings,
    options: FsOptions,
    client: String,
    next_seq: AtomicU64,
    marker_seqs: parking_lot::Mutex<MarkerSeqs>,
    /// Mutations write idempotency markers: the store's commits can be
    /// ambiguous ([`crate::kv::Backend::ambiguous_commits`]).
    markers: bool,
    inodes: alloc::InodeBatch,
    open: crate::ops::open::OpenTable,
    locks: crate::ops::lock::LockTracker,
    /// Set once a transaction found this client evicted (logged once).
    fenced: AtomicBool,
}

impl Fs {
    /// Open filesystem `name` as a new client `client` (a unique id per
    /// mount), registering it with no further description.
    pub async fn open(db: Database, name: &str, client: &str, options: FsOptions) -> FsResult<Fs> {
        let info = ClientInfo {
            id: client.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..ClientInfo::default()
        };
        Fs::open_client(db, name, &info, options).await
    }

    /// Open filesystem `name` and attach as the client `info` describes.
    pub async fn open_client(
        db: Database,
        name: &str,
        info: &ClientInfo,
        options: FsOptions,
    ) -> FsResult<Fs> {
        let (keys, settings) = format::open_keys(&db, name).await?;
        let info = &attach_as_new(&db, &keys, info).await?;
        // A `mkfs --overwrite` between reading the settings and attaching
        // would leave this client registered in a new filesystem with the
        // old one's layout and generation. Once attached, an overwrite
        // fences the client instead (it clears the registration), so one
        // more look closes the gap.
        if format::read_settings(&db, name).await.ok().as_ref() != Some(&settings) {
            let _ = crate::session::evict(&db, &keys, &info.id).await;
            return Err(FsError::Busy(format!(
                "filesystem {name:?} was re-created while attaching; mount again"
            )));
        }
        // Before this client changes anything, no other mount may still be
        // caching on the belief that it is alone.
        if let Err(e) = crate::cache::wait_for_holders(&db, &keys, &info.id).await {
            let _ = crate::session::evict(&db, &keys, &info.id).await;
            return Err(e);
        }
        let markers = db.backend().ambiguous_commits();
        Ok(Fs {
            db,
            name: name.to_string(),
            keys,
            settings,
            options,
            client: info.id.clone(),
            next_seq: AtomicU64::new(1),
            marker_seqs: parking_lot::Mutex::new(MarkerSeqs::default()),
            markers,
            inodes: alloc::InodeBatch::default(),
            open: Default::default(),
            locks: Default::default(),
            fenced: AtomicBool::new(false),
        })
    }

    /// Detach cleanly (unmount): release this client's locks and open
    /// records and remove its registration. Later operations are `Fenced`.
    pub async fn close(&self) -> FsResult<crate::session::GcStats> {
        let (_, stats) = crate::session::evict(&self.db, &self.keys, &self.client).await?;
        self.fenced.store(true, Ordering::Relaxed);
        // Everything acknowledged is on disk once a clean unmount returns
        // (relaxed SQLite, write-behind included).
        self.db.sync().await?;
        Ok(stats)
    }

    /// Whether this client has been evicted (every operation now fails).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The fencing check every transaction of this client starts with.
    async fn fence(&self, txn: &Transaction) -> FsResult<()> {
        if crate::planted::active(crate::planted::Bug::SkipFence) {
            return Ok(());
        }
        let result = crate::session::ensure_attached(txn, &self.keys, &self.client).await;
        if let Err(FsError::Fenced) = result {
            if !self.fenced.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    client = %self.client,
                    "this client was evicted (its heartbeat stopped or an operator evicted it); \
                     every operation now fails with EIO until it is remounted"
                );
            }
        }
        result
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &str {
        &self.client
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// `fsync`/`fsyncdir`: every change this filesystem acknowledged so
    /// far survives power loss once this returns (on a relaxed SQLite
    /// database, whose commits are not fsynced one by one).
    pub async fn sync(&self) -> FsResult<()> {
        Ok(self.db.sync().await?)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn options(&self) -> &FsOptions {
        &self.options
    }

    /// The inodes on which this client may hold locks.
    pub fn lock_tracker(&self) -> &crate::ops::lock::LockTracker {
        &self.locks
    }

    /// The inodes this client has open.
    pub fn open_table(&self) -> &crate::ops::open::OpenTable {
        &self.open
    }

    pub(crate) fn ctx<'a>(&'a self, caller: &'a Caller) -> Ctx<'a> {
        Ctx {
            caller,
            client: &self.client,
            now_ns: self.db.clock().wall_ns(),
            keys: &self.keys,
            settings: &self.settings,
            options: &self.options,
        }
    }

    /// A fresh inode number (never handed out before in this filesystem).
    pub async fn allocate_inode(&self) -> FsResult<u64> {
        self.inodes.next(&self.db, &self.keys).await
    }

    /// Run a read-only operation.
    pub async fn query<'a, T, F, Fut>(&'a self, caller: &'a Caller, op: F) -> FsResult<T>
    where
        F: Fn(Transaction, Ctx<'a>) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        let ctx = self.ctx(caller);
        let op = &op;
        self.db
            .read(|txn| async move {
                self.fence(&txn).await?;
                op(txn, ctx).await
            })
            .await
    }

    /// Run an idempotent mutation (no marker needed: repeating it changes
    /// nothing), fenced like every other transaction of this client.
    pub(crate) async fn run_fenced<'a, T, F, Fut>(
        &'a self,
        caller: &'a Caller,
        op: F,
    ) -> FsResult<T>
    where
        F: Fn(Transaction, Ctx<'a>) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        self.run_fenced_capped(caller, std::time::Duration::MAX, op)
            .await
    }

    /// [`Fs::run_fenced`] with the backoff between retries capped
    /// ([`crate::kv::Database::run_capped`]).
    pub(crate) async fn run_fenced_capped<'a, T, F, Fut>(
        &'a self,
        caller: &'a Caller,
        cap: std::time::Duration,
        op: F,
    ) -> FsResult<T>
    where
        F: Fn(Transaction, Ctx<'a>) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        let ctx = self.ctx(caller);
        let op = &op;
        self.settled(|_| async move {
            self.db
                .run_capped(cap, |txn, _| async move {
                    self.fence(&txn).await?;
                    op(txn, ctx).await
                })
                .await
        })
        .await
    }

    /// Run a mutating operation exactly once, even across ambiguous commits
    /// (see the module docs).
    pub async fn mutate<'a, T, F, Fut>(&'a self, caller: &'a Caller, op: F) -> FsResult<T>
    where
        T: MarkerReply,
        F: Fn(Transaction, Ctx<'a>) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        if self.options.read_only {
            return Err(FsError::ReadOnly);
        }
        if !self.markers {
            return self.mutate_unmarked(caller, op).await;
        }
        // Numbered and started under one lock, so a clear never passes a
        // number not yet marked running.
        let (seq, expired) = {
            let mut seqs = self.marker_seqs.lock();
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            (seq, seqs.start(seq))
        };
        let _running = Running {
            seqs: &self.marker_seqs,
            seq,
        };
        let ctx = self.ctx(caller);
        let marker = self.keys.idempotency_marker(&self.client, seq);
        let expired = expired
            .map(|(first, last)| self.keys.idempotency_markers(&self.client, first, last + 1));
        let (op, marker, expired) = (&op, &marker, &expired);
        self.settled(|settling| async move {
            self.db
                .run(|txn, maybe_committed| async move {
                    self.fence(&txn).await?;
                    let skip = crate::planted::active(crate::planted::Bug::SkipIdempotency);
                    if (maybe_committed || settling) && !skip {
                        if let Some(stored) = txn.get(marker).await? {
                            return T::from_marker(&stored);
                        }
                    }
                    let reply = op(txn.clone(), ctx).await?;
                    if crate::buggify!() {
                        // Hold the transaction open: more conflicts, more
                        // transactions too old.
                        self.db
                            .clock()
                            .sleep(std::time::Duration::from_millis(20))
                            .await;
                    }
                    txn.set(marker, &reply.to_marker());
                    if let Some((begin, end)) = expired {
                        txn.clear_range(begin, end);
                    }
                    Ok(reply)
                })
                .await
        })
        .await
    }

    /// [`Fs::mutate`] on a store whose commits are ambiguous only after a
    /// local I/O error ([`crate::kv::Backend::ambiguous_commits`]): no
    /// marker, so an attempt after one whose outcome is unknown cannot tell
    /// whether it landed — it reports an I/O error rather than apply the
    /// operation a second time (at most once, never twice).
    async fn mutate_unmarked<'a, T, F, Fut>(&'a self, caller: &'a Caller, op: F) -> FsResult<T>
    where
        F: Fn(Transaction, Ctx<'a>) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        let ctx = self.ctx(caller);
        let op = &op;
        // `TimedOut` is never retried by the runner: it reaches the caller.
        self.db
            .run(|txn, maybe_committed| async move {
                if maybe_committed {
                    return Err(FsError::Kv(KvError::Backend(
                        "the database could not say whether a commit landed; not retried".into(),
                    )));
                }
                self.fence(&txn).await?;
                op(txn, ctx).await
            })
            .await
    }

    /// Settle `TimedOut`: the KV surfaces it because the commit may still
    /// land — but never once its transaction is older than the KV's age
    /// limit. So wait that long, then run `body` again with `settling` set:
    /// like `maybe_committed`, it must check whether the earlier attempt
    /// landed (mutations through their idempotency marker; the others are
    /// idempotent). Without this, a write that timed out could land after
    /// the writer released its lock and gave up, inside the next holder's
    /// critical section (the simulator found exactly that).
    async fn settled<'b, T, F, Fut>(&'b self, body: F) -> FsResult<T>
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = FsResult<T>> + 'b,
    {
        let mut settling = false;
        for _ in 0..SETTLE_ATTEMPTS {
            match body(settling).await {
                Err(FsError::Kv(KvError::TimedOut)) => {
                    tracing::debug!("commit timed out; waiting until it can no longer land");
                    self.db.clock().sleep(SETTLE_AFTER).await;
                    settling = true;
                }
                other => return other,
            }
        }
        Err(FsError::Kv(KvError::TimedOut))
    }
}

#[cfg(test)]
mod tests {
    use super::{MarkerSeqs, IDEMPOTENCY_CLEAR_EVERY as EVERY, IDEMPOTENCY_WINDOW as WINDOW};

    /// Clears tile the sequence from 0, each reaching the window's edge,
    /// but never the marker of an operation still running: a slow one
    /// holds every clear below itself until it ends, and the next clear
    /// after that covers what was held back.
    #[test]
    fn markers_of_running_operations_are_never_cleared() {
        let mut seqs = MarkerSeqs::default();
        let mut cleared = Vec::new();
        let slow = 10;
        for seq in 1..=3 * WINDOW {
            if let Some((first, last)) = seqs.start(seq) {
                assert!(last + WINDOW <= seq, "cleared inside the window");
                cleared.push((first, last));
            }
            if seq == 2 * WINDOW {
                seqs.end(slow);
            }
            if seq != slow {
                seqs.end(seq);
            }
            for &(first, last) in &cleared {
                assert!(
                    seq >= 2 * WINDOW || !(first..=last).contains(&slow),
                    "the running operation {slow}'s marker was cleared at {seq}"
                );
            }
        }
        let mut next = 0;
        for &(first, last) in &cleared {
            assert_eq!(first, next, "a gap or an overlap in {cleared:?}");
            next = last + 1;
        }
        assert!(
            next + WINDOW + EVERY > 3 * WINDOW,
            "clears fell behind: {next}"
        );
    }
}
