//! `lookup`: the attributes of the entry `name` in a directory.
//! One point read of the entry plus one of its attributes, whatever the
//! directory's size.

use crate::codec::Attr;
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;

use super::{check_name, get_dirent, read_attr, searchable_dir};

pub async fn apply(txn: &Transaction, ctx: &Ctx<'_>, parent: u64, name: &[u8]) -> FsResult<Attr> {
    if name.len() > super::NAME_BYTES_MAX {
        return Err(FsError::NameTooLong);
    }
    let dir = searchable_dir(txn, ctx, parent).await?;
    match name {
        b"." => return Ok(dir),
        b".." => return read_attr(txn, ctx, dir.parent).await,
        _ => check_name(name)?,
    }
    let entry = get_dirent(txn, ctx, parent, name)
        .await?
        .ok_or(FsError::NotFound)?;
    let attr = read_attr(txn, ctx, entry.ino).await.map_err(|e| match e {
        FsError::NotFound => FsError::Corrupted(format!(
            "entry {name:?} of {parent} points to missing inode {}",
            entry.ino
        )),
        other => other,
    })?;
    Ok(attr)
}

impl Fs {
    pub async fn lookup(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<Attr> {
        self.query(caller, |txn, ctx| async move {
            apply(&txn, &ctx, parent, name).await
        })
        .await
    }
}
