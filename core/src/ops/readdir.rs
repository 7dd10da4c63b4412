//! `readdir`: one page of a directory's entries, in name order, after a
//! cursor (the last name of the previous page). A page is one range read
//! bounded by `limit`, so listing never loads a whole directory, and the
//! cursor stays valid while entries are added and removed: every entry
//! present for the whole listing is returned exactly once.
//!
//! "." and ".." are not stored; the FUSE layer adds them.

use crate::codec::{decode_dirent, Dirent};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::{key_after, RangeOptions, Transaction};
use crate::perm;

/// One page of entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirPage {
    pub entries: Vec<(Vec<u8>, Dirent)>,
    /// More entries follow the last one of this page.
    pub more: bool,
}

pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    dir: u64,
    after: Option<&[u8]>,
    limit: usize,
) -> FsResult<DirPage> {
    let attr = super::read_attr(txn, ctx, dir).await?;
    if !attr.is_dir() {
        return Err(FsError::NotDir);
    }
    perm::check(&attr, ctx.caller, perm::READ)?;
    let (mut begin, end) = ctx.keys.dirents(dir);
    if let Some(after) = after {
        begin = key_after(&ctx.keys.dirent(dir, after));
    }
    let options = RangeOptions {
        limit: limit.max(1),
        ..RangeOptions::default()
    };
    let page = txn.get_range(&begin, &end, options).await?;
    let mut entries = Vec::with_capacity(page.kvs.len());
    for (key, value) in &page.kvs {
        let name = ctx
            .keys
            .dirent_name(dir, key)
            .ok_or_else(|| FsError::Corrupted(format!("entry key in directory {dir}")))?;
        entries.push((name, decode_dirent(value)?));
    }
    Ok(DirPage {
        entries,
        more: page.more,
    })
}

impl Fs {
    pub async fn readdir(
        &self,
        caller: &Caller,
        dir: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> FsResult<DirPage> {
        self.query(caller, |txn, ctx| async move {
            apply(&txn, &ctx, dir, after, limit).await
        })
        .await
    }
}
