//! `mkdir`: a new directory and its entry; the parent gains a link (`..`).

use crate::codec::{Attr, Dirent, FileType};
use crate::ctx::{Caller, Ctx};
use crate::error::FsResult;
use crate::fs::Fs;
use crate::kv::Transaction;

use super::{account, new_inode, prepare_new_entry, set_dirent, touch_dir, write_attr, Made};

/// Most links a directory may have (each subdirectory's `..` is one).
pub const LINK_MAX: u32 = u32::MAX - 1;

pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
    ino: u64,
    perm_bits: u32,
) -> FsResult<Made> {
    let mut dir = prepare_new_entry(txn, ctx, parent, name).await?;
    if dir.nlink >= LINK_MAX {
        return Err(crate::error::FsError::TooManyLinks);
    }
    let attr = new_inode(ctx, ino, FileType::Directory, perm_bits, &dir, 0);
    write_attr(txn, ctx, &attr);
    set_dirent(
        txn,
        ctx,
        parent,
        name,
        Dirent {
            ino,
            kind: FileType::Directory,
        },
    );
    // Saturating: a damaged count must not panic (fsck reports it).
    dir.nlink = dir.nlink.saturating_add(1);
    touch_dir(txn, ctx, &mut dir);
    account(txn, ctx, &attr, 0, 1).await?;
    Ok(Made {
        attr,
        dir_mode: dir.mode,
    })
}

impl Fs {
    pub async fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        perm_bits: u32,
    ) -> FsResult<Attr> {
        Ok(self.mkdir_in(caller, parent, name, perm_bits).await?.attr)
    }

    /// [`Fs::mkdir`], with the parent's mode.
    pub async fn mkdir_in(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        perm_bits: u32,
    ) -> FsResult<Made> {
        let ino = self.allocate_inode().await?;
        self.mutate(caller, |txn, ctx| async move {
            apply(&txn, &ctx, parent, name, ino, perm_bits).await
        })
        .await
    }
}
