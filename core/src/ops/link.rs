//! `link`: a new entry for an existing non-directory inode.
//!
//! Errors as Linux orders them: the new entry's directory (search, `EEXIST`,
//! write permission), then `EPERM` for a directory, `ENOENT` for an inode
//! already unlinked, `EMLINK`. A link across subvolumes is `EXDEV`: each
//! inode counts toward exactly one subvolume's totals.

use crate::codec::{Attr, Dirent};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;

use super::{
    prepare_new_entry, read_attr, set_dirent, subvolume_of_children, touch_dir, write_attr, Made,
};

/// Most links a file may have.
pub const FILE_LINK_MAX: u32 = 65_000;

pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    new_parent: u64,
    new_name: &[u8],
) -> FsResult<Made> {
    let mut attr = read_attr(txn, ctx, ino).await?;
    let mut dir = prepare_new_entry(txn, ctx, new_parent, new_name).await?;
    if attr.is_dir() {
        return Err(FsError::Perm);
    }
    if attr.nlink == 0 {
        return Err(FsError::NotFound);
    }
    if attr.nlink >= FILE_LINK_MAX {
        return Err(FsError::TooManyLinks);
    }
    if subvolume_of_children(&dir) != attr.subvolume {
        return Err(FsError::CrossDevice);
    }
    attr.nlink += 1;
    attr.ctime_ns = ctx.now_ns;
    write_attr(txn, ctx, &attr);
    let kind = attr.kind()?;
    set_dirent(txn, ctx, new_parent, new_name, Dirent { ino, kind });
    touch_dir(txn, ctx, &mut dir);
    Ok(Made {
        attr,
        dir_mode: dir.mode,
    })
}

impl Fs {
    pub async fn link(
        &self,
        caller: &Caller,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> FsResult<Attr> {
        Ok(self.link_in(caller, ino, new_parent, new_name).await?.attr)
    }

    /// [`Fs::link`], with the new entry's directory's mode.
    pub async fn link_in(
        &self,
        caller: &Caller,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> FsResult<Made> {
        self.mutate(caller, |txn, ctx| async move {
            apply(&txn, &ctx, ino, new_parent, new_name).await
        })
        .await
    }
}
