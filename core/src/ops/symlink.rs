//! `symlink`: a new symbolic link holding `target`.

use crate::codec::{Attr, Dirent, FileType};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;

use super::{
    account, new_inode, prepare_new_entry, set_dirent, touch_dir, write_attr, Made,
    SYMLINK_BYTES_MAX,
};

pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
    ino: u64,
    target: &[u8],
) -> FsResult<Made> {
    if target.is_empty() {
        return Err(FsError::NotFound);
    }
    if target.len() > SYMLINK_BYTES_MAX {
        return Err(FsError::NameTooLong);
    }
    let mut dir = prepare_new_entry(txn, ctx, parent, name).await?;
    let mut attr = new_inode(ctx, ino, FileType::Symlink, 0o777, &dir, 0);
    attr.size = target.len() as u64;
    write_attr(txn, ctx, &attr);
    txn.set(&ctx.keys.symlink(ino), target);
    set_dirent(
        txn,
        ctx,
        parent,
        name,
        Dirent {
            ino,
            kind: FileType::Symlink,
        },
    );
    touch_dir(txn, ctx, &mut dir);
    account(txn, ctx, &attr, attr.size as i64, 1).await?;
    Ok(Made {
        attr,
        dir_mode: dir.mode,
    })
}

impl Fs {
    pub async fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr> {
        Ok(self.symlink_in(caller, parent, name, target).await?.attr)
    }

    /// [`Fs::symlink`], with the directory's mode.
    pub async fn symlink_in(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Made> {
        let ino = self.allocate_inode().await?;
        self.mutate(caller, |txn, ctx| async move {
            apply(&txn, &ctx, parent, name, ino, target).await
        })
        .await
    }
}
