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

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::codec::Attr;
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;
use crate::perm;

use super::read_attr;

/// Opens of each inode on this client.
#[derive(Debug, Default)]
pub struct OpenTable {
    inodes: parking_lot::Mutex<BTreeMap<u64, Arc<tokio::sync::Mutex<u32>>>>,
}

impl OpenTable {
    fn slot(&self, ino: u64) -> Arc<tokio::sync::Mutex<u32>> {
        self.inodes.lock().entry(ino).or_default().clone()
    }

    /// Forget `ino`'s slot if nobody else holds it (called with count 0).
    fn forget(&self, ino: u64, slot: &Arc<tokio::sync::Mutex<u32>>) {
        let mut inodes = self.inodes.lock();
        // Ours and the map's: no other open or release is waiting on it.
        if Arc::strong_count(slot) == 2 {
            inodes.remove(&ino);
        }
    }

    /// How many inodes this client has open.
    pub fn len(&self) -> usize {
        self.inodes.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// Check that the caller may open `ino` with `flags`; with `register`, also
/// record that this client has it open.
pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    flags: i32,
    register: bool,
) -> FsResult<Attr> {
    let attr = read_attr(txn, ctx, ino).await?;
    let mask = access_mask(flags);
    if attr.is_dir() && mask & perm::WRITE != 0 {
        return Err(FsError::IsDir);
    }
    if ctx.options.read_only && mask & perm::WRITE != 0 {
        return Err(FsError::ReadOnly);
    }
    perm::check(&attr, ctx.caller, mask)?;
    if register {
        // An unlinked inode is still openable while it is parked: the caller
        // looked its name up before the last link went (see
        // `FsOptions::unlink_grace_ns`). Once freed, `read_attr` said NotFound.
        if attr.nlink == 0 && txn.get(&ctx.keys.unlinked(ino)).await?.is_none() {
            return Err(FsError::NotFound);
        }
        record_open(txn, ctx, ino);
    }
    Ok(attr)
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
    free_if_unused(txn, keys, &attr, now_ns).await
}

/// Free unlinked inode `attr` if its grace is over at `now_ns` and no client
/// has it open. Returns whether it was freed.
pub async fn free_if_unused(
    txn: &Transaction,
    keys: &crate::keys::Keys,
    attr: &Attr,
    now_ns: i64,
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
    let others = !txn.get_range(&begin, &end, options).await?.kvs.is_empty();
    if !others {
        super::delete_inode_keys(txn, keys, attr);
        return Ok(true);
    }
    Ok(false)
}

/// The last close of `ino` on this client: drop the client's record and, if
/// the inode is unlinked and no other client has it open, free it.
pub async fn apply_release(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<()> {
    drop_open_record(txn, ctx.keys, ino, ctx.client, ctx.now_ns).await?;
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
        let ino = self.allocate_inode().await?;
        let exclusive = flags & libc::O_EXCL != 0;
        let access = access_mask(flags & !libc::O_TRUNC);
        // The slot of the new inode is ours alone: nothing else knows `ino`.
        let slot = self.open_table().slot(ino);
        let mut count = slot.lock().await;
        let result = self
            .mutate(caller, |txn, ctx| async move {
                let attr = super::create::apply_create_file(
                    &txn, &ctx, parent, name, ino, perm_bits, exclusive, access,
                )
                .await?;
                if attr.ino == ino {
                    record_open(&txn, &ctx, ino);
                }
                Ok(attr)
            })
            .await;
        if matches!(&result, Ok(attr) if attr.ino == ino) {
            *count += 1;
            return result;
        }
        drop(count);
        self.open_table().forget(ino, &slot);
        match result {
            // The name held an existing file: open it like `open` would.
            Ok(existing) => {
                self.open_file(caller, existing.ino, flags & !libc::O_TRUNC)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    /// Open `ino` with `open(2)` `flags` (access mode, `O_TRUNC`).
    pub async fn open_file(&self, caller: &Caller, ino: u64, flags: i32) -> FsResult<Attr> {
        let slot = self.open_table().slot(ino);
        let mut count = slot.lock().await;
        let result = if *count > 0 {
            self.query(caller, |txn, ctx| async move {
                apply(&txn, &ctx, ino, flags, false).await
            })
            .await
        } else {
            // Setting the record is idempotent: no marker needed. Nor an
            // fsync: a power loss ends every open with it.
            self.run_fenced(caller, |txn, ctx| async move {
                txn.relax_durability();
                apply(&txn, &ctx, ino, flags, true).await
            })
            .await
        };
        if result.is_ok() {
            *count += 1;
        }
        let idle = *count == 0;
        drop(count);
        if idle {
            self.open_table().forget(ino, &slot);
        }
        result
    }

    /// Close one open of `ino` made by [`Fs::open_file`].
    pub async fn release(&self, caller: &Caller, ino: u64) -> FsResult<()> {
        let slot = self.open_table().slot(ino);
        let mut count = slot.lock().await;
        if *count == 0 {
            drop(count);
            self.open_table().forget(ino, &slot);
            return Err(FsError::Invalid);
        }
        if *count > 1 {
            *count -= 1;
            return Ok(());
        }
        // Clearing the record and freeing an unlinked inode are idempotent,
        // and need no fsync: if a power loss drops them, the record of a
        // client that no longer exists is cleared and the inode freed when
        // its session expires (`session::gc_client`), as after a crash.
        let result = self
            .run_fenced(caller, |txn, ctx| async move {
                txn.relax_durability();
                apply_release(&txn, &ctx, ino).await
            })
            .await;
        if result.is_ok() {
            *count = 0;
            drop(count);
            self.open_table().forget(ino, &slot);
        }
        result
    }
}
