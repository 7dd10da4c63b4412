//! `unlink` and `rmdir`: remove an entry; the inode loses a link and is
//! freed with its last one — or parked in the unlinked set while some client
//! still has it open (see `ops::open`).
//!
//! Errors in Linux's order: search permission, `ENOENT`, write permission
//! and the sticky-directory rule (`EPERM`), then the type (`EISDIR` for
//! unlink, `ENOTDIR` for rmdir), then `ENOTEMPTY`. `rmdir` reads the first
//! entry of the victim inside its transaction, so a create racing into it
//! from another client makes one of the two fail instead of orphaning it.

use crate::codec::Attr;
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::{RangeOptions, Transaction};
use crate::perm;

use super::{check_name, drop_link, get_dirent, read_attr, searchable_dir, touch_dir};

/// The directory, its entry `name` and that entry's inode, with the caller
/// allowed to remove it.
async fn victim(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
) -> FsResult<(Attr, Attr)> {
    let dir = searchable_dir(txn, ctx, parent).await?;
    let entry = get_dirent(txn, ctx, parent, name)
        .await?
        .ok_or(FsError::NotFound)?;
    let child = read_attr(txn, ctx, entry.ino).await.map_err(|e| match e {
        FsError::NotFound => FsError::Corrupted(format!(
            "entry {name:?} of {parent} points to missing inode {}",
            entry.ino
        )),
        other => other,
    })?;
    perm::check_remove(&dir, &child, ctx.caller)?;
    Ok((dir, child))
}

/// Whether directory `ino` has no entries (a read that conflicts with any
/// entry added or removed concurrently).
pub async fn is_empty_dir(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<bool> {
    let (begin, end) = ctx.keys.dirents(ino);
    let options = RangeOptions {
        limit: 1,
        ..RangeOptions::default()
    };
    Ok(txn.get_range(&begin, &end, options).await?.kvs.is_empty())
}

pub async fn apply_unlink(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
) -> FsResult<()> {
    if super::is_dot_or_dotdot(name) {
        searchable_dir(txn, ctx, parent).await?;
        return Err(FsError::IsDir);
    }
    check_name(name)?;
    let (mut dir, mut child) = victim(txn, ctx, parent, name).await?;
    if child.is_dir() {
        return Err(FsError::IsDir);
    }
    txn.clear(&ctx.keys.dirent(parent, name));
    touch_dir(txn, ctx, &mut dir);
    drop_link(txn, ctx, &mut child).await
}

pub async fn apply_rmdir(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
) -> FsResult<()> {
    match name {
        b"." => return Err(FsError::Invalid),
        b".." => return Err(FsError::NotEmpty),
        _ => check_name(name)?,
    }
    let (mut dir, mut child) = victim(txn, ctx, parent, name).await?;
    if !child.is_dir() {
        return Err(FsError::NotDir);
    }
    if !is_empty_dir(txn, ctx, child.ino).await? {
        return Err(FsError::NotEmpty);
    }
    txn.clear(&ctx.keys.dirent(parent, name));
    // Saturating: a damaged count must not panic (fsck reports it).
    dir.nlink = dir.nlink.saturating_sub(1);
    touch_dir(txn, ctx, &mut dir);
    drop_link(txn, ctx, &mut child).await
}

impl Fs {
    pub async fn unlink(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        self.mutate(caller, |txn, ctx| async move {
            apply_unlink(&txn, &ctx, parent, name).await
        })
        .await
    }

    pub async fn rmdir(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        self.mutate(caller, |txn, ctx| async move {
            apply_rmdir(&txn, &ctx, parent, name).await
        })
        .await
    }
}
