//! `readlink`: a symbolic link's target (`EINVAL` for other files).

use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;

pub async fn apply(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<Vec<u8>> {
    let attr = super::read_attr(txn, ctx, ino).await?;
    if attr.mode & libc::S_IFMT != libc::S_IFLNK {
        return Err(FsError::Invalid);
    }
    txn.get(&ctx.keys.symlink(ino))
        .await?
        .ok_or_else(|| FsError::Corrupted(format!("symlink {ino} has no target")))
}

impl Fs {
    pub async fn readlink(&self, caller: &Caller, ino: u64) -> FsResult<Vec<u8>> {
        self.query(
            caller,
            |txn, ctx| async move { apply(&txn, &ctx, ino).await },
        )
        .await
    }
}
