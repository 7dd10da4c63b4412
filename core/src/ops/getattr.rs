//! `getattr`: an inode's attributes.

use crate::codec::Attr;
use crate::ctx::{Caller, Ctx};
use crate::error::FsResult;
use crate::fs::Fs;
use crate::kv::Transaction;

pub async fn apply(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<Attr> {
    super::read_attr(txn, ctx, ino).await
}

impl Fs {
    pub async fn getattr(&self, caller: &Caller, ino: u64) -> FsResult<Attr> {
        self.query(
            caller,
            |txn, ctx| async move { apply(&txn, &ctx, ino).await },
        )
        .await
    }
}
