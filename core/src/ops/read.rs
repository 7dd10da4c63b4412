//! `read`: bytes of a regular file, holes as zeros, clipped at its size.
//!
//! Permission was checked when the file was opened (as the kernel does), so
//! `read` checks none. Access times follow the mount's [`AtimeMode`]; an
//! update is a separate small transaction only when one is due, so reads
//! stay read-only transactions in the common case.

use crate::codec::{Attr, FileType};
use crate::ctx::{AtimeMode, Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;

use super::{data, read_attr, write_attr};

/// A day, in nanoseconds: relatime updates an atime at least this old.
const RELATIME_AGE_NS: i64 = 24 * 3600 * 1_000_000_000;

/// Whether reading `attr` now should update its access time.
pub fn atime_due(attr: &Attr, ctx: &Ctx<'_>) -> bool {
    match ctx.options.atime {
        AtimeMode::Noatime => false,
        AtimeMode::Strictatime => attr.atime_ns != ctx.now_ns,
        AtimeMode::Relatime => {
            attr.atime_ns <= attr.mtime_ns
                || attr.atime_ns <= attr.ctime_ns
                || ctx.now_ns - attr.atime_ns >= RELATIME_AGE_NS
        }
    }
}

/// Up to `size` bytes at `offset`, and whether the atime should be updated.
pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    offset: u64,
    size: u32,
) -> FsResult<(Vec<u8>, bool)> {
    let attr = read_attr(txn, ctx, ino).await?;
    match attr.kind()? {
        FileType::Regular => {}
        FileType::Directory => return Err(FsError::IsDir),
        _ => return Err(FsError::Invalid),
    }
    let len = attr.size.saturating_sub(offset).min(u64::from(size));
    let bytes = data::read_range(txn, ctx, ino, offset, len).await?;
    Ok((bytes, atime_due(&attr, ctx)))
}

/// Set the atime to now if it is still due (another read may have done it).
pub async fn apply_touch_atime(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<()> {
    let mut attr = match read_attr(txn, ctx, ino).await {
        Ok(attr) => attr,
        Err(FsError::NotFound) => return Ok(()),
        Err(e) => return Err(e),
    };
    if atime_due(&attr, ctx) {
        attr.atime_ns = ctx.now_ns;
        write_attr(txn, ctx, &attr);
    }
    Ok(())
}

impl Fs {
    pub async fn read(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        let (bytes, due) = self
            .query(caller, |txn, ctx| async move {
                apply(&txn, &ctx, ino, offset, size).await
            })
            .await?;
        if due && !self.options().read_only {
            // Idempotent, so no marker: a repeat finds nothing due.
            self.run_fenced(caller, |txn, ctx| async move {
                apply_touch_atime(&txn, &ctx, ino).await
            })
            .await?;
        }
        Ok(bytes)
    }
}
