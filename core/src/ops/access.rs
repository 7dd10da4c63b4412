//! `access`: may the caller read, write or execute an inode (`F_OK` = 0
//! only checks that it exists)?

use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;
use crate::perm;

pub async fn apply(txn: &Transaction, ctx: &Ctx<'_>, ino: u64, mask: u32) -> FsResult<()> {
    if mask & !7 != 0 {
        return Err(FsError::Invalid);
    }
    let attr = super::read_attr(txn, ctx, ino).await?;
    if mask & perm::WRITE != 0 && ctx.options.read_only {
        return Err(FsError::ReadOnly);
    }
    perm::check(&attr, ctx.caller, mask)
}

impl Fs {
    /// `mask` is a combination of `perm::READ`, `WRITE`, `EXEC` (R_OK, W_OK, X_OK).
    pub async fn access(&self, caller: &Caller, ino: u64, mask: u32) -> FsResult<()> {
        self.query(caller, |txn, ctx| async move {
            apply(&txn, &ctx, ino, mask).await
        })
        .await
    }
}
