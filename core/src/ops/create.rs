//! `mknod` and `create`: a new non-directory inode and its entry.
//!
//! `create` with `exclusive` (O_CREAT|O_EXCL) fails with `EEXIST` on an
//! existing name; without it, an existing regular file is returned (another
//! mount may have created it between the kernel's lookup and this call), as
//! `open(O_CREAT)` does on a local filesystem.

use crate::codec::{Attr, Dirent, FileType};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;
use crate::perm;

use super::{
    account, get_dirent, new_inode, prepare_new_entry, read_attr, set_dirent, touch_dir,
    write_attr, Made,
};

/// What to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewNode {
    /// File type and permission bits (`S_IFREG | 0644`, ...), umask applied.
    pub mode: u32,
    pub rdev: u64,
}

pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
    ino: u64,
    node: NewNode,
) -> FsResult<Made> {
    let kind = FileType::from_mode(node.mode).ok_or(FsError::Invalid)?;
    if kind == FileType::Directory || kind == FileType::Symlink {
        return Err(FsError::Invalid);
    }
    if matches!(kind, FileType::CharDevice | FileType::BlockDevice) && !ctx.caller.is_root() {
        return Err(FsError::Perm);
    }
    let mut dir = prepare_new_entry(txn, ctx, parent, name).await?;
    let attr = new_inode(ctx, ino, kind, node.mode, &dir, node.rdev);
    write_attr(txn, ctx, &attr);
    set_dirent(txn, ctx, parent, name, Dirent { ino, kind });
    touch_dir(txn, ctx, &mut dir);
    account(txn, ctx, &attr, 0, 1).await?;
    Ok(Made {
        attr,
        dir_mode: dir.mode,
    })
}

/// `create` without O_EXCL: return an existing regular file after checking
/// the access the open asks for (`flags_access`: a `perm::READ|WRITE` mask).
pub async fn apply_open_or_create(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
    ino: u64,
    node: NewNode,
    flags_access: u32,
) -> FsResult<Made> {
    super::check_name(name)?;
    let dir = super::searchable_dir(txn, ctx, parent).await?;
    if let Some(entry) = get_dirent(txn, ctx, parent, name).await? {
        let attr = read_attr(txn, ctx, entry.ino).await?;
        if attr.is_dir() {
            return Err(FsError::IsDir);
        }
        perm::check(&attr, ctx.caller, flags_access)?;
        return Ok(Made {
            attr,
            dir_mode: dir.mode,
        });
    }
    apply(txn, ctx, parent, name, ino, node).await
}

/// A regular file by `open(2)` with `O_CREAT`: with `exclusive` (O_EXCL)
/// create it or fail; without, return an existing file after checking
/// `access`, or create it.
#[allow(clippy::too_many_arguments)] // the open(2) arguments, as the kernel passes them
pub async fn apply_create_file(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
    ino: u64,
    perm_bits: u32,
    exclusive: bool,
    access: u32,
) -> FsResult<Made> {
    let node = NewNode {
        mode: libc::S_IFREG | (perm_bits & 0o7777),
        rdev: 0,
    };
    if exclusive {
        apply(txn, ctx, parent, name, ino, node).await
    } else {
        apply_open_or_create(txn, ctx, parent, name, ino, node, access).await
    }
}

impl Fs {
    pub async fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
    ) -> FsResult<Attr> {
        Ok(self.mknod_in(caller, parent, name, mode, rdev).await?.attr)
    }

    /// [`Fs::mknod`], with the directory's mode.
    pub async fn mknod_in(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
    ) -> FsResult<Made> {
        let ino = self.allocate_inode().await?;
        let node = NewNode { mode, rdev };
        self.mutate(caller, |txn, ctx| async move {
            apply(&txn, &ctx, parent, name, ino, node).await
        })
        .await
    }

    /// Create a regular file; `exclusive` is O_EXCL; `access` is the
    /// `perm::READ | perm::WRITE` mask the open asks for.
    pub async fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        perm_bits: u32,
        exclusive: bool,
        access: u32,
    ) -> FsResult<Attr> {
        let ino = self.allocate_inode().await?;
        let made = self
            .mutate(caller, |txn, ctx| async move {
                apply_create_file(&txn, &ctx, parent, name, ino, perm_bits, exclusive, access).await
            })
            .await?;
        Ok(made.attr)
    }
}
