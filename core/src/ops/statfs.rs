//! `statfs`: filesystem-wide figures for `df`. hafs has no fixed capacity
//! (the KV store grows), so it reports a large nominal size and counts
//! nothing against it; block size is the chunk size.

use crate::ctx::{Caller, Ctx};
use crate::error::FsResult;
use crate::fs::Fs;
use crate::kv::Transaction;

/// What `statfs` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// Nominal capacity: 1 PiB.
const NOMINAL_BYTES: u64 = 1 << 50;

pub async fn apply(txn: &Transaction, ctx: &Ctx<'_>) -> FsResult<StatFs> {
    // Proves the filesystem is still there (and, once sessions land, that
    // this client is not fenced).
    super::read_attr(txn, ctx, crate::keys::ROOT_INO).await?;
    let block_size = u32::try_from(ctx.settings.chunk_size).unwrap_or(u32::MAX);
    let blocks = NOMINAL_BYTES / ctx.settings.chunk_size.max(1);
    Ok(StatFs {
        block_size,
        blocks,
        blocks_free: blocks,
        files: u64::from(u32::MAX),
        files_free: u64::from(u32::MAX),
        name_max: super::NAME_BYTES_MAX as u32,
    })
}

impl Fs {
    pub async fn statfs(&self, caller: &Caller) -> FsResult<StatFs> {
        self.query(caller, |txn, ctx| async move { apply(&txn, &ctx).await })
            .await
    }
}
