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
    apply_in(txn, ctx, parent, name)
        .await?
        .found
        .ok_or(FsError::NotFound)
}

/// A lookup's answer and the searched directory's mode, which says who
/// else would have been allowed the same lookup (a name the kernel caches
/// is walked without asking us again).
#[derive(Debug, Clone)]
pub struct Looked {
    /// The entry's attributes; `None`: no such name.
    pub found: Option<Attr>,
    pub dir_mode: u32,
}

pub async fn apply_in(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
) -> FsResult<Looked> {
    if name.len() > super::NAME_BYTES_MAX {
        return Err(FsError::NameTooLong);
    }
    let dir = searchable_dir(txn, ctx, parent).await?;
    let dir_mode = dir.mode;
    let found = match name {
        b"." => Some(dir),
        b".." => Some(read_attr(txn, ctx, dir.parent).await?),
        _ => {
            check_name(name)?;
            match get_dirent(txn, ctx, parent, name).await? {
                None => None,
                Some(entry) => Some(entry_attr(txn, ctx, parent, name, entry.ino).await?),
            }
        }
    };
    Ok(Looked { found, dir_mode })
}

async fn entry_attr(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
    ino: u64,
) -> FsResult<Attr> {
    read_attr(txn, ctx, ino).await.map_err(|e| match e {
        FsError::NotFound => FsError::Corrupted(format!(
            "entry {name:?} of {parent} points to missing inode {ino}"
        )),
        other => other,
    })
}

impl Fs {
    pub async fn lookup(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<Attr> {
        self.query(caller, |txn, ctx| async move {
            apply(&txn, &ctx, parent, name).await
        })
        .await
    }

    /// [`Fs::lookup`], with the searched directory's mode.
    pub async fn lookup_in(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<Looked> {
        self.query(caller, |txn, ctx| async move {
            apply_in(&txn, &ctx, parent, name).await
        })
        .await
    }
}
