//! `fallocate`: mode 0 (extend the size, the new range reading as zeros),
//! `KEEP_SIZE` (nothing to reserve: chunks are written on demand),
//! `PUNCH_HOLE | KEEP_SIZE` and `ZERO_RANGE` (with or without `KEEP_SIZE`).
//! Other modes are `EOPNOTSUPP`, as on a filesystem that lacks them.

use crate::codec::FileType;
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;

use super::write::kill_privileges;
use super::{account, data, read_attr, write_attr};

pub const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
pub const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
pub const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;

pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    mode: i32,
    offset: u64,
    len: u64,
) -> FsResult<()> {
    if len == 0 || offset > i64::MAX as u64 || len > i64::MAX as u64 {
        return Err(FsError::Invalid);
    }
    let punch = mode & PUNCH_HOLE != 0;
    let zero = mode & ZERO_RANGE != 0;
    if mode & !(KEEP_SIZE | PUNCH_HOLE | ZERO_RANGE) != 0 || (punch && zero) {
        return Err(FsError::NotSupported);
    }
    if punch && mode & KEEP_SIZE == 0 {
        return Err(FsError::NotSupported);
    }
    let mut attr = read_attr(txn, ctx, ino).await?;
    match attr.kind()? {
        FileType::Regular => {}
        FileType::Directory => return Err(FsError::IsDir),
        _ => return Err(FsError::NoDevice),
    }
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= data::FILE_BYTES_MAX)
        .ok_or(FsError::FileTooBig)?;
    if punch || zero {
        // Bytes at or past the size are already zeros (no chunk holds them).
        let until = end.min(attr.size);
        if offset < until {
            data::zero_range(txn, ctx, ino, offset, until - offset).await?;
        }
    }
    let old_size = attr.size;
    if mode & KEEP_SIZE == 0 && end > attr.size {
        attr.size = end;
    }
    // Every mode counts as a change of the file, whatever it changed, as
    // Linux's `file_modified` has it in every local filesystem's fallocate
    // (ext4 since 5.18, tmpfs): new mtime and ctime, and the set-ID bits
    // dropped as a write drops them.
    attr.mtime_ns = ctx.now_ns;
    attr.ctime_ns = ctx.now_ns;
    kill_privileges(&mut attr, ctx.caller);
    write_attr(txn, ctx, &attr);
    account(txn, ctx, &attr, (attr.size - old_size) as i64, 0).await?;
    Ok(())
}

impl Fs {
    pub async fn fallocate(
        &self,
        caller: &Caller,
        ino: u64,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> FsResult<()> {
        self.mutate(caller, |txn, ctx| async move {
            apply(&txn, &ctx, ino, mode, offset, len).await
        })
        .await
    }
}
