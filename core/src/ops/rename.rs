//! `rename`, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
//!
//! Linux's rules, in Linux's order: "." and ".." cannot be renamed
//! (`EBUSY`); a missing source is `ENOENT`; `NOREPLACE` onto an existing
//! name is `EEXIST`, `EXCHANGE` with a missing target `ENOENT`; a directory
//! never moves into its own subtree (`EINVAL`); then the permission checks
//! of removing the source and adding (or removing) the target, including
//! the sticky rule and write access to a directory whose `..` changes; then
//! the type rules for an overwrite (`ENOTDIR`, `EISDIR`, `ENOTEMPTY`).
//! Renaming onto another link of the same inode does nothing, as POSIX says.
//!
//! # Loops under races
//! Moving a directory reads the destination's whole ancestor chain (each
//! `parent` field, with read conflicts) inside the transaction, as 3FS does.
//! Two clients racing `mv a b/x` and `mv b a/y` each read the other's moved
//! directory's attributes, so at most one commits and no cycle can form.

use crate::codec::{Attr, Dirent};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::keys::ROOT_INO;
use crate::kv::Transaction;
use crate::perm;

use super::unlink::is_empty_dir;
use super::{
    check_name, drop_link, get_dirent, is_dot_or_dotdot, read_attr, searchable_dir, set_dirent,
    subvolume_of_children, touch_dir, write_attr, NAME_BYTES_MAX,
};

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// Deepest directory chain walked before calling the tree corrupted.
const DEPTH_MAX: usize = 1 << 16;

/// One side of a rename: the directory, the entry and its inode.
struct Side<'n> {
    dir: u64,
    name: &'n [u8],
    entry: Option<Dirent>,
    attr: Option<Attr>,
}

pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
    new_parent: u64,
    new_name: &[u8],
    flags: u32,
) -> FsResult<()> {
    let exchange = flags & RENAME_EXCHANGE != 0;
    let noreplace = flags & RENAME_NOREPLACE != 0;
    if flags & !(RENAME_EXCHANGE | RENAME_NOREPLACE) != 0 || (exchange && noreplace) {
        return Err(FsError::Invalid);
    }
    if name.len() > NAME_BYTES_MAX || new_name.len() > NAME_BYTES_MAX {
        return Err(FsError::NameTooLong);
    }
    let mut src_dir = searchable_dir(txn, ctx, parent).await?;
    let mut dst_dir = if new_parent == parent {
        None
    } else {
        Some(searchable_dir(txn, ctx, new_parent).await?)
    };
    // Into a directory that was removed (still open somewhere, so parked):
    // ENOENT, as for a create there. Its entries would go with it when it
    // is freed, and the moved inode with them, unreachable.
    if dst_dir.as_ref().is_some_and(|d| d.nlink == 0) {
        return Err(FsError::NotFound);
    }
    if is_dot_or_dotdot(name) || is_dot_or_dotdot(new_name) {
        return Err(FsError::Busy("cannot rename . or ..".into()));
    }
    check_name(name)?;
    check_name(new_name)?;
    let src = side(txn, ctx, parent, name).await?;
    let Some(src_attr) = src.attr.clone() else {
        return Err(FsError::NotFound);
    };
    let dst = side(txn, ctx, new_parent, new_name).await?;
    match (&dst.attr, noreplace, exchange) {
        (Some(_), true, _) => return Err(FsError::Exists),
        (None, _, true) => return Err(FsError::NotFound),
        _ => {}
    }
    if new_parent != parent {
        if src_attr.is_dir() {
            ensure_outside(txn, ctx, src_attr.ino, new_parent).await?;
        }
        if let (true, Some(d)) = (exchange, &dst.attr) {
            if d.is_dir() {
                ensure_outside(txn, ctx, d.ino, parent).await?;
            }
        }
    }
    if dst.attr.as_ref().map(|a| a.ino) == Some(src_attr.ino) {
        return Ok(());
    }
    let dst_dir_ref = dst_dir.as_ref().unwrap_or(&src_dir);
    check_permissions(
        ctx,
        &src_dir,
        dst_dir_ref,
        &src_attr,
        dst.attr.as_ref(),
        exchange,
    )?;
    if subvolume_of_children(&src_dir) != subvolume_of_children(dst_dir_ref) {
        return Err(FsError::CrossDevice);
    }
    let (src_delta, dst_delta) = if exchange {
        swap(txn, ctx, src, dst).await?
    } else {
        replace(txn, ctx, src, dst).await?
    };
    match dst_dir.as_mut() {
        Some(dst_dir) => {
            apply_nlink(&mut src_dir, src_delta);
            apply_nlink(dst_dir, dst_delta);
            touch_dir(txn, ctx, dst_dir);
        }
        None => apply_nlink(&mut src_dir, src_delta + dst_delta),
    }
    touch_dir(txn, ctx, &mut src_dir);
    Ok(())
}

async fn side<'n>(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    dir: u64,
    name: &'n [u8],
) -> FsResult<Side<'n>> {
    let entry = get_dirent(txn, ctx, dir, name).await?;
    let attr = match &entry {
        Some(e) => Some(read_attr(txn, ctx, e.ino).await.map_err(|err| match err {
            FsError::NotFound => FsError::Corrupted(format!(
                "entry {name:?} of {dir} points to missing inode {}",
                e.ino
            )),
            other => other,
        })?),
        None => None,
    };
    Ok(Side {
        dir,
        name,
        entry,
        attr,
    })
}

/// `EINVAL` if directory `moved` is `dir` or one of its ancestors.
async fn ensure_outside(txn: &Transaction, ctx: &Ctx<'_>, moved: u64, dir: u64) -> FsResult<()> {
    if crate::planted::active(crate::planted::Bug::SkipAncestorCheck) {
        return Ok(());
    }
    let mut at = dir;
    for _ in 0..DEPTH_MAX {
        if at == moved {
            return Err(FsError::Invalid);
        }
        if at == ROOT_INO {
            return Ok(());
        }
        at = read_attr(txn, ctx, at).await?.parent;
    }
    Err(FsError::Corrupted(format!(
        "directory {dir} is deeper than {DEPTH_MAX} levels (a cycle?)"
    )))
}

fn check_permissions(
    ctx: &Ctx<'_>,
    src_dir: &Attr,
    dst_dir: &Attr,
    src: &Attr,
    dst: Option<&Attr>,
    exchange: bool,
) -> FsResult<()> {
    let caller = ctx.caller;
    perm::check_remove(src_dir, src, caller)?;
    match dst {
        Some(dst) => perm::check_remove(dst_dir, dst, caller)?,
        None => perm::check(dst_dir, caller, perm::WRITE | perm::EXEC)?,
    }
    if src_dir.ino != dst_dir.ino {
        // A moved directory's ".." changes: that is a write to it.
        if src.is_dir() {
            perm::check(src, caller, perm::WRITE)?;
        }
        if let (true, Some(dst)) = (exchange, dst) {
            if dst.is_dir() {
                perm::check(dst, caller, perm::WRITE)?;
            }
        }
    }
    Ok(())
}

/// Plain rename: move the source entry over the target's name, dropping the
/// target if there was one. Returns the link-count changes of the source
/// and target directories.
async fn replace(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    src: Side<'_>,
    dst: Side<'_>,
) -> FsResult<(i64, i64)> {
    let (entry, mut moved) = (src.entry.expect("source exists"), src.attr.expect("source"));
    let (mut src_delta, mut dst_delta) = (0, 0);
    if let Some(mut old) = dst.attr {
        match (moved.is_dir(), old.is_dir()) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            (true, true) if !is_empty_dir(txn, ctx, old.ino).await? => {
                return Err(FsError::NotEmpty)
            }
            _ => {}
        }
        if old.is_dir() {
            dst_delta -= 1;
        }
        drop_link(txn, ctx, &mut old).await?;
    }
    txn.clear(&ctx.keys.dirent(src.dir, src.name));
    set_dirent(txn, ctx, dst.dir, dst.name, entry);
    if moved.is_dir() && src.dir != dst.dir {
        moved.parent = dst.dir;
        src_delta -= 1;
        dst_delta += 1;
    }
    moved.ctime_ns = ctx.now_ns;
    write_attr(txn, ctx, &moved);
    Ok((src_delta, dst_delta))
}

/// `RENAME_EXCHANGE`: swap the two entries.
async fn swap(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    src: Side<'_>,
    dst: Side<'_>,
) -> FsResult<(i64, i64)> {
    let (src_entry, mut a) = (src.entry.expect("source"), src.attr.expect("source"));
    let (dst_entry, mut b) = (dst.entry.expect("target"), dst.attr.expect("target"));
    set_dirent(txn, ctx, dst.dir, dst.name, src_entry);
    set_dirent(txn, ctx, src.dir, src.name, dst_entry);
    let (mut src_delta, mut dst_delta) = (0, 0);
    if src.dir != dst.dir {
        if a.is_dir() {
            a.parent = dst.dir;
            src_delta -= 1;
            dst_delta += 1;
        }
        if b.is_dir() {
            b.parent = src.dir;
            dst_delta -= 1;
            src_delta += 1;
        }
    }
    a.ctime_ns = ctx.now_ns;
    b.ctime_ns = ctx.now_ns;
    write_attr(txn, ctx, &a);
    write_attr(txn, ctx, &b);
    Ok((src_delta, dst_delta))
}

fn apply_nlink(dir: &mut Attr, delta: i64) {
    dir.nlink = (i64::from(dir.nlink) + delta).max(0) as u32;
}

impl Fs {
    /// Rename `parent/name` to `new_parent/new_name`; `flags` is a mask of
    /// [`RENAME_NOREPLACE`] and [`RENAME_EXCHANGE`].
    pub async fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if crate::planted::active(crate::planted::Bug::RenameInTwoTransactions)
            && flags & RENAME_EXCHANGE == 0
        {
            return self
                .rename_in_two_steps(caller, parent, name, new_parent, new_name)
                .await;
        }
        self.mutate(caller, |txn, ctx| async move {
            apply(&txn, &ctx, parent, name, new_parent, new_name, flags).await
        })
        .await
    }

    /// The planted bug `RenameInTwoTransactions`: between the two steps the
    /// file has no name at all, and a crash there loses it.
    async fn rename_in_two_steps(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
    ) -> FsResult<()> {
        let ino = self
            .mutate(caller, |txn, ctx| async move {
                let entry = get_dirent(&txn, &ctx, parent, name)
                    .await?
                    .ok_or(FsError::NotFound)?;
                txn.clear(&ctx.keys.dirent(parent, name));
                Ok(entry.ino)
            })
            .await?;
        self.mutate(caller, |txn, ctx| async move {
            let attr = read_attr(&txn, &ctx, ino).await?;
            set_dirent(
                &txn,
                &ctx,
                new_parent,
                new_name,
                Dirent {
                    ino,
                    kind: attr.kind()?,
                },
            );
            Ok(())
        })
        .await
    }
}
