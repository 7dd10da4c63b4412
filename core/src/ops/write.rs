//! `write`: bytes at an offset or at the end (`O_APPEND`), past the end
//! leaving a hole, clearing set-user-ID (and set-group-ID with group
//! execute) when an unprivileged caller writes, and the file's
//! capabilities whoever writes, as Linux does.
//!
//! A write larger than [`WRITE_TRANSACTION_BYTES`] becomes several
//! transactions, each extending the size only over bytes it stored, so no
//! reader ever sees a size its chunks disagree with. An append that spans
//! several transactions is atomic per piece only: another client's append
//! may land between two pieces (each piece appends at the end as its own
//! transaction finds it, so neither overwrites the other). Should a later
//! piece fail, the write returns the bytes the earlier pieces stored (a
//! short write, as Linux reports one), not an error that hides them.

use crate::codec::{Attr, FileType};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;

use super::{account, data, read_attr, write_attr};

/// Most data bytes one write transaction stores (well under the KV's
/// 10 MB transaction limit, with room for the chunks it reads and merges).
pub const WRITE_TRANSACTION_BYTES: usize = 4 << 20;

/// Where a write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAt {
    Offset(u64),
    /// At the file's size when the write's transaction runs.
    Append,
}

/// Store `bytes` (those that fit below the largest file size) and return
/// the offset just past what was stored, and how many bytes that was.
pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    at: WriteAt,
    bytes: &[u8],
) -> FsResult<(u64, u64)> {
    let mut attr = read_attr(txn, ctx, ino).await?;
    match attr.kind()? {
        FileType::Regular => {}
        FileType::Directory => return Err(FsError::IsDir),
        _ => return Err(FsError::Invalid),
    }
    let offset = match at {
        WriteAt::Offset(offset) => offset,
        WriteAt::Append => attr.size,
    };
    // As Linux's `generic_write_checks`: nothing fits at or past the
    // largest size (EFBIG); a write crossing it stores what fits (short).
    let room = data::FILE_BYTES_MAX
        .checked_sub(offset)
        .filter(|&room| room > 0)
        .ok_or(FsError::FileTooBig)?;
    let bytes = &bytes[..bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
    let end = offset + bytes.len() as u64;
    data::write_range(txn, ctx, ino, offset, bytes).await?;
    let old_size = attr.size;
    attr.size = attr.size.max(end);
    attr.mtime_ns = ctx.now_ns;
    attr.ctime_ns = ctx.now_ns;
    kill_privileges(&mut attr, ctx.caller);
    // Linux drops a file's capabilities on every write, root's included
    // (`file_remove_privs`). hafs opens writers for direct I/O, and the
    // kernel's FUSE direct-write path leaves that to the filesystem. A
    // blind clear: no read, and nothing to do when there is none.
    txn.clear(&ctx.keys.xattr(ino, CAPABILITY_XATTR));
    write_attr(txn, ctx, &attr);
    account(txn, ctx, &attr, (attr.size - old_size) as i64, 0).await?;
    Ok((end, bytes.len() as u64))
}

/// File capabilities (`setcap`), which a write removes.
pub const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// Clear set-user-ID, and set-group-ID when group-executable or when the
/// caller is not in the file's group, after an unprivileged caller changes
/// a file's contents (Linux's `file_remove_privs`; the group rule is
/// `setattr_should_drop_sgid`, Linux 6.2 on). The kernel leaves this to
/// hafs: its FUSE direct-write path sends no mode change for it.
pub fn kill_privileges(attr: &mut Attr, caller: &Caller) {
    if caller.is_root() {
        return;
    }
    attr.mode &= !libc::S_ISUID;
    // The group test last: it may read the caller's groups from /proc.
    if attr.mode & libc::S_ISGID != 0
        && (attr.mode & libc::S_IXGRP != 0 || !caller.in_group(attr.gid))
    {
        attr.mode &= !libc::S_ISGID;
    }
}

impl Fs {
    /// Write `bytes`; returns how many were written: all of them, or, when
    /// a piece after the first failed, those the earlier pieces stored.
    pub async fn write(
        &self,
        caller: &Caller,
        ino: u64,
        at: WriteAt,
        bytes: &[u8],
    ) -> FsResult<u64> {
        if bytes.is_empty() {
            // Like Linux: a zero-length write changes nothing.
            self.getattr(caller, ino).await?;
            return Ok(0);
        }
        let mut at = at;
        let mut written = 0u64;
        for piece in bytes.chunks(WRITE_TRANSACTION_BYTES) {
            let stored = self
                .mutate(caller, |txn, ctx| async move {
                    apply(&txn, &ctx, ino, at, piece).await
                })
                .await;
            let (end, stored) = match stored {
                Ok(done) => done,
                Err(_) if written > 0 => return Ok(written),
                Err(e) => return Err(e),
            };
            written += stored;
            if stored < piece.len() as u64 {
                // At the largest file size: a short write.
                break;
            }
            if let WriteAt::Offset(_) = at {
                at = WriteAt::Offset(end);
            }
        }
        Ok(written)
    }
}
