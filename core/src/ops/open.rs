//! `open` and `release`: access checks at open, and the per-client record of
//! open inodes that keeps an unlinked file alive until its last close on
//! every client.
//!
//! A client records `("ino", INO, "open", CLIENT)` when it first opens an
//! inode and clears it at its last close; opens in between are counted in
//! memory ([`OpenTable`]), so only the first open and the last close of an
//! inode on a client write to the KV. `unlink` reads that range in its own
//! transaction: an inode some client holds open is parked in the unlinked
//! set instead of deleted, and the last release frees it. Each transition
//! is serialized per inode on this client, so a close racing a reopen can
//! never clear a record the reopen needs.
//!
//! A mount defers last closes ([`Fs::run_deferred_releases`]): the close
//! returns at once, the record stays ("pending"), and a background task
//! clears the pending records of many inodes in one transaction a couple
//! of milliseconds later. A reopen in between finds the record still there
//! and writes nothing. Nobody can tell the difference but `statfs`: an
//! unlinked inode's space comes back those milliseconds later, as if the
//! close had come later. (Measured on a relaxed SQLite mount: a release
//! was a quarter of a create's daemon time.)
//!
//! **Unrecorded opens under the cache lease.** While a mount holds the cache
//! lease (`crate::cache`) no other client is attached, so nobody but this
//! process can free an inode it has open — provided every free decided
//! elsewhere waits for the lease to go. Then an open of a *linked* file
//! writes no record ([`OpenTable::allow_unrecorded`]): opening an existing
//! file is a read-only transaction, a create writes two keys fewer, and
//! the last close writes nothing at all. The rules that keep it safe:
//!
//! - Every free ([`free_if_unused`]) reads the cache leases in its own
//!   transaction, after its other reads, and frees nothing while a lease
//!   may cover an unrecorded open of the inode: any lease but the freeing
//!   process's own (whose [`OpenTable`] it consults) or the one of a client
//!   being evicted (whose opens end with it). A `hafs gc` thus frees
//!   nothing while a mount is alone; that mount's own sweep does.
//! - An inode already unlinked (parked) is always opened with a record, so
//!   an open racing a free still conflicts with it as before; and only a
//!   linked inode can be open unrecorded, which nothing frees while it is
//!   linked. Unrecorded opens need the unlink grace (parking every unlinked
//!   file): with no grace an unlink would free at once, so they are off.
//! - An open registers its slot before its transaction begins, and a free
//!   looks at the table after its reads: if the slot was not there yet,
//!   the open's transaction begins after the free's and sees the inode
//!   parked, so it records itself. A slot busy with another operation
//!   counts as holding the inode, and a slot leaves the table only if,
//!   under the table's lock, nobody else holds it and it counts no open
//!   (an unrecorded open leaves nothing behind but its slot).
//! - Before the holder gives the lease up, it stops unrecorded opens and
//!   writes a record for every one still open
//!   ([`Fs::record_unrecorded_opens`]); until that succeeds it keeps the
//!   lease (and does not take it again: `keep_cache_lease`). A batch that
//!   failed is waited out (it may still land) and its slots marked unsure.
//!   A close of an unrecorded slot once unrecorded opens are off clears
//!   the record as usual (a failed batch may have written it) and marks
//!   the slot unsure, so that a reopen before the
//!   recording reaches it writes the record itself: the recording skips a
//!   slot that is no longer unrecorded. A crash needs nothing: the opens
//!   end with the process, and the parked inodes are freed by a sweep once
//!   the holder is evicted.
//! - What it costs: under the lease the last close of an unlinked file
//!   does not free it (the close writes nothing); the holder's next
//!   heartbeat sweep does, so its space returns up to a heartbeat later.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::codec::Attr;
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;
use crate::perm;

use super::{read_attr, Made};

/// One inode's opens on this client.
#[derive(Debug, Default)]
struct Slot {
    count: u32,
    /// The last open was closed but the record is still stored: its clear
    /// is queued in [`OpenTable::deferred`].
    pending: bool,
    /// A clear of the record failed in a way that may yet land: a reopen
    /// must write the record again.
    unsure: bool,
    /// The opens counted have no record: the cache lease covers them.
    unrecorded: bool,
}

type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

/// Opens of each inode on this client.
#[derive(Debug, Default)]
pub struct OpenTable {
    inodes: parking_lot::Mutex<BTreeMap<u64, SlotRef>>,
    /// Whether last closes are deferred, and the inodes whose are.
    defer: std::sync::atomic::AtomicBool,
    deferred: parking_lot::Mutex<Vec<u64>>,
    /// After a failed batch: clear one inode per transaction until the
    /// queue is empty, so one bad inode cannot hold back the others.
    solo: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    /// Whether a first open of a linked file may skip its record (this
    /// client holds the cache lease; module docs).
    unrecorded_ok: std::sync::atomic::AtomicBool,
    /// Test hook: a close of an unrecorded slot signals the first sender,
    /// then waits for the second before it forgets the slot.
    #[cfg(test)]
    before_forget: parking_lot::Mutex<Option<ForgetHook>>,
}

#[cfg(test)]
type ForgetHook = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

/// Pending records cleared per transaction.
const RELEASE_BATCH: usize = 64;
/// How long the release task lets closes gather before clearing them.
const RELEASE_GATHER: std::time::Duration = std::time::Duration::from_millis(2);

impl OpenTable {
    fn slot(&self, ino: u64) -> SlotRef {
        self.inodes.lock().entry(ino).or_default().clone()
    }

    /// Forget `ino`'s slot if nobody else holds it (called with count 0
    /// and nothing pending).
    fn forget(&self, ino: u64, slot: &SlotRef) {
        let mut inodes = self.inodes.lock();
        // Ours and the map's: no other open or release is waiting on it
        // (clones are made under the map's lock). Still idle: an open may
        // have come and gone between the caller's look and this lock, and
        // an unrecorded open leaves nothing but its slot behind.
        let idle = Arc::strong_count(slot) == 2
            && matches!(slot.try_lock(), Ok(s) if s.count == 0 && !s.pending);
        if idle {
            inodes.remove(&ino);
        }
    }

    /// How many inodes this client has open or has a pending clear for.
    pub fn len(&self) -> usize {
        self.inodes.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// From now on, first opens of linked files write no record, until
    /// [`Fs::record_unrecorded_opens`]. Only for the holder of the cache
    /// lease, with an unlink grace (module docs).
    pub fn allow_unrecorded(&self) {
        self.unrecorded_ok
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn unrecorded_ok(&self) -> bool {
        self.unrecorded_ok.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this client may hold `ino` open with no record: an
    /// unrecorded slot with opens, or a slot some operation is busy with
    /// (an open in progress may be about to count one).
    pub fn held_unrecorded(&self, ino: u64) -> bool {
        // Under the map's lock and without a clone of the slot, which
        // would keep a close from forgetting it.
        self.inodes.lock().get(&ino).is_some_and(held_unrecorded)
    }

    /// How many inodes this client has open without a record.
    pub fn unrecorded(&self) -> usize {
        let inodes = self.inodes.lock();
        inodes.values().filter(|slot| held_unrecorded(slot)).count()
    }

    /// Forget `ino`'s slot if it is idle and nobody else holds it.
    fn forget_if_idle(&self, ino: u64) {
        let mut inodes = self.inodes.lock();
        let idle = inodes.get(&ino).is_some_and(|slot| {
            Arc::strong_count(slot) == 1
                && matches!(slot.try_lock(), Ok(s) if s.count == 0 && !s.pending)
        });
        if idle {
            inodes.remove(&ino);
        }
    }
}

fn held_unrecorded(slot: &SlotRef) -> bool {
    match slot.try_lock() {
        Ok(state) => state.unrecorded && state.count > 0,
        Err(_) => true,
    }
}

/// Who is freeing an inode, so that [`free_if_unused`] knows which cache
/// leases may cover an unrecorded open of it (module docs). The default
/// (a process with no client, like `hafs gc`) is held back by any lease.
#[derive(Debug, Clone, Copy, Default)]
pub struct Frees<'a> {
    /// This process's client and its open table: its own lease holds back
    /// only inodes the table may hold unrecorded.
    pub here: Option<(&'a str, &'a OpenTable)>,
    /// A client being evicted: its lease holds nothing back, its opens end
    /// with it.
    pub evicting: Option<&'a str>,
    /// An inode whose recorded slot this transaction releases (holding the
    /// slot): its opens on this client all have the record.
    pub releasing: Option<u64>,
}

impl Frees<'_> {
    fn held_back_by(&self, holder: &str, ino: u64) -> bool {
        if self.evicting == Some(holder) {
            return false;
        }
        match self.here {
            Some((me, table)) if me == holder => {
                self.releasing != Some(ino) && table.held_unrecorded(ino)
            }
            _ => true,
        }
    }
}

/// Whether an open writes its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Register {
    No,
    Yes,
    /// Only for an inode that is not a linked file (module docs).
    UnlessLinked,
}

/// The `perm` mask an open with `flags` needs.
pub fn access_mask(flags: i32) -> u32 {
    let mut mask = match flags & libc::O_ACCMODE {
        libc::O_WRONLY => perm::WRITE,
        libc::O_RDWR => perm::READ | perm::WRITE,
        _ => perm::READ,
    };
    if flags & libc::O_TRUNC != 0 {
        mask |= perm::WRITE;
    }
    mask
}

/// Check that the caller may open `ino` with `flags` and, as `register`
/// says, record that this client has it open. Returns the attributes and
/// whether it wrote the record.
async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    flags: i32,
    register: Register,
) -> FsResult<(Attr, bool)> {
    let attr = read_attr(txn, ctx, ino).await?;
    let mask = access_mask(flags);
    if attr.is_dir() && mask & perm::WRITE != 0 {
        return Err(FsError::IsDir);
    }
    if ctx.options.read_only && mask & perm::WRITE != 0 {
        return Err(FsError::ReadOnly);
    }
    perm::check(&attr, ctx.caller, mask)?;
    let record = match register {
        Register::No => false,
        Register::Yes => true,
        Register::UnlessLinked => attr.nlink == 0 || attr.is_dir(),
    };
    if record {
        // An unlinked inode is still openable while it is parked: the caller
        // looked its name up before the last link went (see
        // `FsOptions::unlink_grace_ns`). Once freed, `read_attr` said NotFound.
        if attr.nlink == 0 && txn.get(&ctx.keys.unlinked(ino)).await?.is_none() {
            return Err(FsError::NotFound);
        }
        record_open(txn, ctx, ino);
    }
    Ok((attr, record))
}

/// Record that this client has `ino` open (and index it under the client).
fn record_open(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) {
    txn.set(&ctx.keys.open_handles(ino, ctx.client), &1i64.to_le_bytes());
    txn.set(&ctx.keys.client_open(ctx.client, ino), &[]);
}

/// Drop `client`'s open record of `ino` and free the inode if it was
/// unlinked, its grace is over at `now_ns` and nobody else has it open.
/// Returns whether it was freed.
pub async fn drop_open_record(
    txn: &Transaction,
    keys: &crate::keys::Keys,
    ino: u64,
    client: &str,
    now_ns: i64,
    frees: Frees<'_>,
) -> FsResult<bool> {
    txn.clear(&keys.open_handles(ino, client));
    txn.clear(&keys.client_open(client, ino));
    let Some(bytes) = txn.get(&keys.attr(ino)).await? else {
        return Ok(false);
    };
    let attr = crate::codec::decode_attr(ino, &bytes)?;
    if attr.nlink != 0 {
        return Ok(false);
    }
    free_if_unused(txn, keys, &attr, now_ns, frees).await
}

/// Free unlinked inode `attr` if its grace is over at `now_ns` and no client
/// has it open: no open record, and no cache lease that may cover an open
/// without one (`frees` says whose). Returns whether it was freed.
pub async fn free_if_unused(
    txn: &Transaction,
    keys: &crate::keys::Keys,
    attr: &Attr,
    now_ns: i64,
    frees: Frees<'_>,
) -> FsResult<bool> {
    let ino = attr.ino;
    let until = match txn.get(&keys.unlinked(ino)).await? {
        None => i64::MIN,
        Some(v) => super::parked_until(&v)
            .ok_or_else(|| FsError::Corrupted(format!("unlinked-set value of inode {ino}")))?,
    };
    if until > now_ns {
        return Ok(false);
    }
    let (begin, end) = keys.open_handles_all(ino);
    let options = crate::kv::RangeOptions {
        limit: 1,
        ..Default::default()
    };
    if !txn.get_range(&begin, &end, options).await?.kvs.is_empty() {
        return Ok(false);
    }
    // Last, after every other read (module docs): a lease taken after this
    // read conflicts with it; an open whose slot appears after the table
    // is consulted begins after these reads and sees the inode parked.
    let (begin, end) = keys.cache_leases();
    let leases = txn
        .get_range(&begin, &end, crate::kv::RangeOptions::default())
        .await?;
    for (key, _) in &leases.kvs {
        let holder = keys
            .cache_lease_client(key)
            .ok_or_else(|| FsError::Corrupted("cache lease key".into()))?;
        if frees.held_back_by(&holder, ino) {
            return Ok(false);
        }
    }
    super::delete_inode_keys(txn, keys, attr).await?;
    Ok(true)
}

/// The last close of `ino` on this client: drop the client's record and, if
/// the inode is unlinked and no other client has it open, free it.
/// `table` is this client's, whose slot of `ino` the caller holds.
pub async fn apply_release(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    table: &OpenTable,
    ino: u64,
) -> FsResult<()> {
    let frees = Frees {
        here: Some((ctx.client, table)),
        evicting: None,
        releasing: Some(ino),
    };
    drop_open_record(txn, ctx.keys, ino, ctx.client, ctx.now_ns, frees).await?;
    Ok(())
}

impl Fs {
    /// `open(2)` with `O_CREAT` (and `O_EXCL` if in `flags`). A new file is
    /// created and opened in one transaction, without an access check — the
    /// caller gets the access it asked for on a file it just made, whatever
    /// the mode, as on Linux (`open("f", O_CREAT|O_RDWR, 0)` works). An
    /// existing file (no `O_EXCL`) is opened with the usual checks.
    pub async fn create_open(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        perm_bits: u32,
        flags: i32,
    ) -> FsResult<Attr> {
        Ok(self
            .create_open_in(caller, parent, name, perm_bits, flags)
            .await?
            .attr)
    }

    /// [`Fs::create_open`], with the directory's mode.
    pub async fn create_open_in(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        perm_bits: u32,
        flags: i32,
    ) -> FsResult<Made> {
        let ino = self.allocate_inode().await?;
        let exclusive = flags & libc::O_EXCL != 0;
        let access = access_mask(flags & !libc::O_TRUNC);
        // The slot of the new inode is ours alone: nothing else knows `ino`.
        let slot = self.open_table().slot(ino);
        let mut state = slot.lock().await;
        // A new file is linked: under the lease it needs no record.
        let unrecorded = self.open_table().unrecorded_ok();
        let result = self
            .mutate(caller, |txn, ctx| async move {
                let made = super::create::apply_create_file(
                    &txn, &ctx, parent, name, ino, perm_bits, exclusive, access,
                )
                .await?;
                if made.attr.ino == ino && !unrecorded {
                    record_open(&txn, &ctx, ino);
                }
                Ok(made)
            })
            .await;
        if matches!(&result, Ok(made) if made.attr.ino == ino) {
            state.count += 1;
            state.unrecorded = unrecorded;
            return result;
        }
        drop(state);
        self.open_table().forget(ino, &slot);
        match result {
            // The name held an existing file (another mount created it
            // since the kernel's lookup): open it like `open` would, with
            // O_TRUNC's permission check and truncation — the kernel takes
            // the file for one it just created and does neither.
            Ok(existing) => {
                let mut attr = self.open_file(caller, existing.attr.ino, flags).await?;
                if flags & libc::O_TRUNC != 0 && attr.size > 0 && !attr.is_dir() {
                    let truncate = super::setattr::SetAttr {
                        size: Some(0),
                        mtime: Some(super::setattr::TimeSet::Now),
                        by_handle: true,
                        ..Default::default()
                    };
                    match self.setattr(caller, attr.ino, truncate).await {
                        Ok(truncated) => attr = truncated,
                        Err(e) => {
                            self.release(caller, attr.ino).await.ok();
                            return Err(e);
                        }
                    }
                }
                Ok(Made {
                    attr,
                    dir_mode: existing.dir_mode,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Open `ino` with `open(2)` `flags` (access mode, `O_TRUNC`).
    pub async fn open_file(&self, caller: &Caller, ino: u64, flags: i32) -> FsResult<Attr> {
        let slot = self.open_table().slot(ino);
        let mut state = slot.lock().await;
        // Open already (recorded, or unrecorded under the lease), or a
        // pending record still stored: reopening needs no write. Unsure:
        // the record may be gone, write it again.
        let covered = (state.count > 0 || state.pending) && !state.unsure;
        let result = if covered {
            let unrecorded = state.count > 0 && state.unrecorded;
            self.query(caller, |txn, ctx| async move {
                apply(&txn, &ctx, ino, flags, Register::No).await
            })
            .await
            .map(|(attr, _)| (attr, unrecorded))
        } else {
            // Under the lease a linked file needs no record (module docs),
            // unless a record of it may still be stored.
            let fresh = state.count == 0 && !state.pending && !state.unsure;
            let register = if fresh && self.open_table().unrecorded_ok() {
                Register::UnlessLinked
            } else {
                Register::Yes
            };
            // Setting the record is idempotent: no marker needed. Nor an
            // fsync: a power loss ends every open with it.
            self.run_fenced(caller, |txn, ctx| async move {
                txn.relax_durability();
                apply(&txn, &ctx, ino, flags, register).await
            })
            .await
            .map(|(attr, recorded)| (attr, !recorded))
        };
        if let Ok((_, unrecorded)) = result {
            state.count += 1;
            state.unrecorded = unrecorded;
            // The queued clear now skips this inode.
            state.pending = false;
            state.unsure = false;
        }
        let idle = state.count == 0 && !state.pending;
        drop(state);
        if idle {
            self.open_table().forget(ino, &slot);
        }
        result.map(|(attr, _)| attr)
    }

    /// Close one open of `ino` made by [`Fs::open_file`].
    pub async fn release(&self, caller: &Caller, ino: u64) -> FsResult<()> {
        let table = self.open_table();
        let slot = table.slot(ino);
        let mut state = slot.lock().await;
        if state.count == 0 {
            let idle = !state.pending;
            drop(state);
            if idle {
                table.forget(ino, &slot);
            }
            return Err(FsError::Invalid);
        }
        if state.count > 1 {
            state.count -= 1;
            return Ok(());
        }
        // No record to clear.
        if state.unrecorded && !state.unsure && table.unrecorded_ok() {
            state.count = 0;
            state.unrecorded = false;
            drop(state);
            #[cfg(test)]
            {
                let hook = table.before_forget.lock().take();
                if let Some((reached, go)) = hook {
                    let _ = reached.send(());
                    let _ = go.await;
                }
            }
            table.forget(ino, &slot);
            return Ok(());
        }
        if state.unrecorded {
            // Unrecorded opens are off, or a batch of
            // `record_unrecorded_opens` failed: the record may or may not
            // be stored. Clear it as usual, and let no reopen count on it.
            state.unrecorded = false;
            state.unsure = true;
        }
        if table.defer.load(std::sync::atomic::Ordering::Relaxed) {
            state.count = 0;
            state.pending = true;
            table.deferred.lock().push(ino);
            table.wake.notify_one();
            return Ok(());
        }
        // Clearing the record and freeing an unlinked inode are idempotent,
        // and need no fsync: if a power loss drops them, the record of a
        // client that no longer exists is cleared and the inode freed when
        // its session expires (`session::gc_client`), as after a crash.
        let result = self
            .run_fenced(caller, |txn, ctx| async move {
                txn.relax_durability();
                apply_release(&txn, &ctx, table, ino).await
            })
            .await;
        if result.is_ok() {
            state.count = 0;
            drop(state);
            table.forget(ino, &slot);
        }
        result
    }

    /// Defer this client's last closes from now on, and clear their records
    /// in batches (see the module doc). Returns only when this client is
    /// fenced, which also clears every record it left.
    pub async fn run_deferred_releases(&self) -> FsError {
        self.defer_releases();
        let table = self.open_table();
        let clock = self.db().clock().clone();
        let fenced = loop {
            table.wake.notified().await;
            clock.sleep(RELEASE_GATHER).await;
            loop {
                match self.clear_deferred_releases().await {
                    Ok(true) => {
                        // Closes that came in during that transaction gather
                        // too, unless a full batch is waiting (or batches are
                        // failing, `solo`): going straight on cleared them
                        // one or two per transaction, 1.5 commits per create
                        // in a loop of creates instead of about 1.1.
                        let solo = table.solo.load(std::sync::atomic::Ordering::Relaxed);
                        if !solo && table.deferred.lock().len() < RELEASE_BATCH {
                            clock.sleep(RELEASE_GATHER).await;
                        }
                    }
                    Ok(false) => break,
                    Err(FsError::Fenced) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "clearing open records failed; retrying");
                        clock.sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
            if self.is_fenced() {
                break FsError::Fenced;
            }
        };
        // Later closes fail as fenced, instead of queueing forever.
        table
            .defer
            .store(false, std::sync::atomic::Ordering::Relaxed);
        fenced
    }

    /// From now on, leave the record of a last close for
    /// [`Fs::clear_deferred_releases`].
    pub fn defer_releases(&self) {
        let defer = &self.open_table().defer;
        defer.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Clear up to a batch of pending records in one transaction. Returns
    /// whether more may be queued.
    pub async fn clear_deferred_releases(&self) -> FsResult<bool> {
        let table = self.open_table();
        let mut inos = {
            let mut queue = table.deferred.lock();
            let batch = if table.solo.load(std::sync::atomic::Ordering::Relaxed) {
                1
            } else {
                RELEASE_BATCH
            };
            let take = queue.len().min(batch);
            queue.drain(..take).collect::<Vec<_>>()
        };
        if inos.is_empty() {
            table
                .solo
                .store(false, std::sync::atomic::Ordering::Relaxed);
            return Ok(false);
        }
        // Ascending, like every other holder of several slots (none).
        inos.sort_unstable();
        inos.dedup();
        let mut held = Vec::with_capacity(inos.len());
        for ino in inos {
            let slot = table.slot(ino);
            let state = slot.clone().lock_owned().await;
            if state.pending && state.count == 0 {
                held.push((ino, slot, state));
            } else {
                let idle = state.count == 0 && !state.pending;
                drop(state);
                if idle {
                    table.forget(ino, &slot);
                }
            }
        }
        let inos: Vec<u64> = held.iter().map(|(ino, _, _)| *ino).collect();
        let caller = Caller::root();
        let result = self
            .run_fenced(&caller, |txn, ctx| {
                let inos = inos.clone();
                async move {
                    txn.relax_durability(); // see `Fs::release`
                    for ino in inos {
                        apply_release(&txn, &ctx, table, ino).await?;
                    }
                    Ok(())
                }
            })
            .await;
        match &result {
            // Fenced: the eviction cleared the records.
            Ok(()) | Err(FsError::Fenced) => {
                for (ino, slot, mut state) in held {
                    state.pending = false;
                    drop(state);
                    table.forget(ino, &slot);
                }
            }
            Err(e) => {
                // The commit may have landed, or may still land until the
                // age limit: wait that out holding the slots, and make a
                // reopen write its record again.
                let clock = self.db().clock().clone();
                clock.sleep(crate::limits::SETTLE_AFTER).await;
                // Alone in its batch and not the database's fault: this
                // inode is bad; its record stays until this client detaches.
                let give_up = held.len() == 1 && !matches!(e, FsError::Kv(_));
                if give_up {
                    tracing::error!(ino = held[0].0, error = %e, "cannot clear an open record; it stays until this client detaches");
                }
                for (ino, slot, mut state) in held {
                    state.unsure = true;
                    if give_up {
                        state.pending = false;
                        drop(state);
                        table.forget(ino, &slot);
                    } else {
                        table.deferred.lock().push(ino);
                    }
                }
                table.solo.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        result.map(|()| !table.deferred.lock().is_empty())
    }
}

impl Fs {
    /// Stop unrecorded opens and write the record of every inode this
    /// client still has open without one: before the cache lease is given
    /// up (module docs). On an error some may still be unrecorded; call it
    /// again before giving the lease up.
    pub async fn record_unrecorded_opens(&self) -> FsResult<()> {
        let table = self.open_table();
        table
            .unrecorded_ok
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // Taken after the store: an open that still saw unrecorded opens
        // allowed had put its slot in the table before it looked.
        let mut slots: std::collections::VecDeque<(u64, SlotRef)> = table
            .inodes
            .lock()
            .iter()
            .map(|(ino, slot)| (*ino, slot.clone()))
            .collect();
        // Ascending (the map's order), like every holder of several slots.
        while !slots.is_empty() {
            let mut held = Vec::new();
            while held.len() < RELEASE_BATCH {
                let Some((ino, slot)) = slots.pop_front() else {
                    break;
                };
                let state = slot.lock_owned().await;
                if state.unrecorded && state.count > 0 {
                    held.push((ino, state));
                } else {
                    // Our clone may have kept a close from forgetting it.
                    drop(state);
                    table.forget_if_idle(ino);
                }
            }
            if held.is_empty() {
                continue;
            }
            let inos: Vec<u64> = held.iter().map(|(ino, _)| *ino).collect();
            let result = self
                .run_fenced(&Caller::root(), |txn, ctx| {
                    let inos = inos.clone();
                    async move {
                        // No fsync, as for any open record (`Fs::open_file`).
                        txn.relax_durability();
                        for ino in inos {
                            record_open(&txn, &ctx, ino);
                        }
                        Ok(())
                    }
                })
                .await;
            match result {
                Ok(()) => {
                    for (_, mut state) in held {
                        state.unrecorded = false;
                        state.unsure = false;
                    }
                }
                Err(FsError::Fenced) => return Err(FsError::Fenced),
                Err(e) => {
                    // The records may land until the age limit: wait that
                    // out holding the slots, so that a close clears them
                    // only after; they stay unrecorded (the next call
                    // writes them) and unsure (a close clears them).
                    let clock = self.db().clock().clone();
                    clock.sleep(crate::limits::SETTLE_AFTER).await;
                    for (_, mut state) in held {
                        state.unsure = true;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::{Clock, TokioClock};
    use crate::ctx::{Caller, FsOptions};
    use crate::fs::{mkfs, Fs, MkfsOptions};
    use crate::keys::ROOT_INO;
    use crate::kv::mem::MemBackend;
    use crate::kv::Database;

    /// An open that comes and goes between a close dropping its slot's lock
    /// and forgetting the slot: the slot must stay, as it is the only trace
    /// of an unrecorded open. (`forget` once checked only that nobody else
    /// held the slot.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_between_a_close_and_its_forget_keeps_the_slot() {
        let clock: Arc<dyn Clock> = TokioClock::new();
        let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 3);
        mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
        let fs = Arc::new(Fs::open(db, "fs", "a", FsOptions::default()).await.unwrap());
        // As the cache lease's holder does.
        fs.open_table().allow_unrecorded();
        let root = Caller::root();
        let f = fs
            .create_open(&root, ROOT_INO, b"f", 0o644, libc::O_RDWR)
            .await
            .unwrap();
        assert!(fs.open_table().held_unrecorded(f.ino));
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel();
        *fs.open_table().before_forget.lock() = Some((reached_tx, go_rx));
        let closing = {
            let fs = fs.clone();
            tokio::spawn(async move { fs.release(&Caller::root(), f.ino).await })
        };
        reached.await.unwrap();
        fs.open_file(&root, f.ino, libc::O_RDONLY).await.unwrap();
        go.send(()).unwrap();
        closing.await.unwrap().unwrap();
        assert!(
            fs.open_table().held_unrecorded(f.ino),
            "the reopen's slot was forgotten"
        );
        fs.release(&root, f.ino).await.unwrap();
        assert!(!fs.open_table().held_unrecorded(f.ino));
        assert!(fs.open_table().is_empty());
    }
}
