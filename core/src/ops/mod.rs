//! Filesystem operations: one module per operation, each a pure function of
//! (transaction, [`Ctx`], arguments) → reply, with no I/O but the
//! transaction and no clock but the context's. Each module also adds the
//! matching method to [`crate::fs::Fs`], which runs it in one transaction.
//!
//! Errors are the errno a local Linux filesystem returns for the same call.

pub mod access;
pub mod create;
pub mod data;
pub mod fallocate;
pub mod getattr;
pub mod link;
pub mod lock;
pub mod lookup;
pub mod mkdir;
pub mod open;
pub mod read;
pub mod readdir;
pub mod readlink;
pub mod rename;
pub mod setattr;
pub mod statfs;
pub mod symlink;
pub mod unlink;
pub mod write;
pub mod xattr;

use crate::codec::{self, Attr, Dirent, FileType};
use crate::ctx::Ctx;
use crate::error::{FsError, FsResult};
use crate::keys::Counter;
use crate::kv::Transaction;
use crate::perm;

/// Longest file name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest symlink target, in bytes (Linux's PATH_MAX).
pub const SYMLINK_BYTES_MAX: usize = 4095;
/// Shards of each subvolume counter: concurrent atomic adds to different
/// shards never touch the same key.
pub const COUNTER_SHARDS: u64 = 16;

/// A name a new entry may have: 1–255 bytes, no '/' and no NUL (`EINVAL`,
/// as the kernel would never send them; `ENAMETOOLONG` beyond 255).
pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_BYTES_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() {
        return Err(FsError::NotFound);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid);
    }
    Ok(())
}

pub fn is_dot_or_dotdot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// The attributes of `ino`, or `ENOENT`.
pub async fn read_attr(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<Attr> {
    match txn.get(&ctx.keys.attr(ino)).await? {
        Some(bytes) => codec::decode_attr(ino, &bytes),
        None => Err(FsError::NotFound),
    }
}

pub fn write_attr(txn: &Transaction, ctx: &Ctx<'_>, attr: &Attr) {
    txn.set(&ctx.keys.attr(attr.ino), &codec::encode_attr(attr));
}

/// A new entry's inode, and the mode of its directory as the creating
/// transaction read it: like [`lookup::Looked`], it says who else could
/// have looked the name up, so a mount without `default_permissions` may
/// let the kernel cache it with no further read.
#[derive(Debug, Clone)]
pub struct Made {
    pub attr: Attr,
    pub dir_mode: u32,
}

/// A directory the caller may search: `ENOTDIR` / `EACCES` otherwise.
pub async fn searchable_dir(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<Attr> {
    let dir = read_attr(txn, ctx, ino).await?;
    if !dir.is_dir() {
        return Err(FsError::NotDir);
    }
    perm::check(&dir, ctx.caller, perm::EXEC)?;
    Ok(dir)
}

/// The entry `name` in `dir`, if any (a point read: its cost does not grow
/// with the directory).
pub async fn get_dirent(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    dir: u64,
    name: &[u8],
) -> FsResult<Option<Dirent>> {
    match txn.get(&ctx.keys.dirent(dir, name)).await? {
        Some(bytes) => codec::decode_dirent(&bytes).map(Some),
        None => Ok(None),
    }
}

pub fn set_dirent(txn: &Transaction, ctx: &Ctx<'_>, dir: u64, name: &[u8], entry: Dirent) {
    txn.set(&ctx.keys.dirent(dir, name), &codec::encode_dirent(&entry));
}

/// A directory the caller may add entries to, and no entry `name` in it yet.
pub async fn prepare_new_entry(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    parent: u64,
    name: &[u8],
) -> FsResult<Attr> {
    check_name(name)?;
    let dir = searchable_dir(txn, ctx, parent).await?;
    if is_dot_or_dotdot(name) || get_dirent(txn, ctx, parent, name).await?.is_some() {
        return Err(FsError::Exists);
    }
    perm::check(&dir, ctx.caller, perm::WRITE)?;
    if dir.nlink == 0 {
        // Creating in a directory that was removed.
        return Err(FsError::NotFound);
    }
    Ok(dir)
}

/// Attributes of a new inode created by the caller in `parent`: owned by the
/// caller, group from a setgid parent (which directories inherit), times now.
pub fn new_inode(
    ctx: &Ctx<'_>,
    ino: u64,
    kind: FileType,
    perm_bits: u32,
    parent: &Attr,
    rdev: u64,
) -> Attr {
    let setgid_parent = parent.mode & libc::S_ISGID != 0;
    let gid = if setgid_parent {
        parent.gid
    } else {
        ctx.caller.gid
    };
    let mut perm_bits = perm_bits & 0o7777;
    if kind == FileType::Directory && setgid_parent {
        perm_bits |= libc::S_ISGID;
    }
    if kind != FileType::Directory
        && perm_bits & libc::S_ISGID != 0
        && !ctx.caller.is_root()
        && !ctx.caller.in_group(gid)
    {
        perm_bits &= !libc::S_ISGID;
    }
    Attr {
        ino,
        mode: kind.mode_bits() | perm_bits,
        uid: ctx.caller.uid,
        gid,
        size: 0,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        atime_ns: ctx.now_ns,
        mtime_ns: ctx.now_ns,
        ctime_ns: ctx.now_ns,
        rdev,
        flags: 0,
        generation: ctx.settings.generation,
        parent: if kind == FileType::Directory {
            parent.ino
        } else {
            0
        },
        subvolume: subvolume_of_children(parent),
    }
}

/// The subvolume new children of `dir` count toward.
pub fn subvolume_of_children(dir: &Attr) -> u64 {
    if dir.flags & FLAG_SUBVOLUME != 0 {
        dir.ino
    } else {
        dir.subvolume
    }
}

/// `Attr::flags` bit: this directory is a subvolume root.
pub const FLAG_SUBVOLUME: u32 = 1;

/// Add to a subvolume's byte and inode totals with conflict-free atomic
/// adds on a shard picked by the inode, so parallel writers rarely share a key.
pub async fn account(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    attr: &Attr,
    bytes: i64,
    inodes: i64,
) -> FsResult<()> {
    account_keys(txn, ctx.keys, attr, bytes, inodes).await
}

async fn account_keys(
    txn: &Transaction,
    keys: &crate::keys::Keys,
    attr: &Attr,
    bytes: i64,
    inodes: i64,
) -> FsResult<()> {
    if attr.subvolume == 0 || bytes == 0 && inodes == 0 {
        return Ok(());
    }
    // An unlinked inode (parked, or open) can outlive its subvolume's root:
    // `rm -rf` of a subvolume removes the root while the files it unlinked
    // wait out their grace, and deleting the root deletes its totals. Their
    // later writes and frees must not bring those totals back as orphans
    // (a review found negative ones fsck reported for ever). The read
    // conflicts with the root's deletion; a linked inode needs none (its
    // subvolume's root cannot be deleted under it).
    if attr.nlink == 0 && txn.get(&keys.attr(attr.subvolume)).await?.is_none() {
        return Ok(());
    }
    let shard = attr.ino % COUNTER_SHARDS;
    if bytes != 0 {
        txn.atomic_add(
            &keys.subvolume_counter(attr.subvolume, shard, Counter::Bytes),
            bytes,
        );
    }
    if inodes != 0 {
        txn.atomic_add(
            &keys.subvolume_counter(attr.subvolume, shard, Counter::Inodes),
            inodes,
        );
    }
    Ok(())
}

/// Set mtime and ctime of a directory whose entries changed.
pub fn touch_dir(txn: &Transaction, ctx: &Ctx<'_>, dir: &mut Attr) {
    dir.mtime_ns = ctx.now_ns;
    dir.ctime_ns = ctx.now_ns;
    write_attr(txn, ctx, dir);
}

/// True if any client holds `ino` open.
pub async fn is_open(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<bool> {
    let (begin, end) = ctx.keys.open_handles_all(ino);
    let options = crate::kv::RangeOptions {
        limit: 1,
        ..Default::default()
    };
    Ok(!txn.get_range(&begin, &end, options).await?.kvs.is_empty())
}

/// Drop one link of `attr`, whose directory entry the caller has already
/// removed. When the last link goes, the inode is parked in the unlinked set
/// with the time after which it may be freed (now + the unlink grace); the
/// last `release` past that time, or a sweep ([`crate::session::sweep_unlinked`])
/// once no client has it open, frees it. With no grace and no open record it
/// is deleted at once.
pub async fn drop_link(txn: &Transaction, ctx: &Ctx<'_>, attr: &mut Attr) -> FsResult<()> {
    attr.nlink = if attr.is_dir() {
        0
    } else {
        attr.nlink.saturating_sub(1)
    };
    attr.ctime_ns = ctx.now_ns;
    if attr.nlink > 0 {
        write_attr(txn, ctx, attr);
        return Ok(());
    }
    let grace = ctx.options.unlink_grace_ns;
    // Directories are freed at once: nothing opens a directory by inode
    // after a lookup the way OPEN follows LOOKUP, and a parked directory
    // would still accept entries through a stale inode number.
    if (grace > 0 && !attr.is_dir()) || is_open(txn, ctx, attr.ino).await? {
        write_attr(txn, ctx, attr);
        let free_after = ctx.now_ns.saturating_add(grace);
        txn.set(&ctx.keys.unlinked(attr.ino), &free_after.to_le_bytes());
        return Ok(());
    }
    delete_inode(txn, ctx, attr).await
}

/// The wall time (ns) after which a parked inode may be freed, from its
/// unlinked-set value; `None` if the value is malformed. An empty value
/// (written before the grace existed) may be freed at once.
pub fn parked_until(value: &[u8]) -> Option<i64> {
    match value.len() {
        0 => Some(i64::MIN),
        8 => Some(i64::from_le_bytes(value.try_into().ok()?)),
        _ => None,
    }
}

/// Delete every key of an inode (attributes, data, target, xattrs, open
/// counts) and take it out of its subvolume's totals.
pub async fn delete_inode(txn: &Transaction, ctx: &Ctx<'_>, attr: &Attr) -> FsResult<()> {
    delete_inode_keys(txn, ctx.keys, attr).await
}

/// [`delete_inode`] without an operation context (eviction, gc).
pub async fn delete_inode_keys(
    txn: &Transaction,
    keys: &crate::keys::Keys,
    attr: &Attr,
) -> FsResult<()> {
    let (begin, end) = keys.inode_range(attr.ino);
    txn.clear_range(&begin, &end);
    txn.clear(&keys.unlinked(attr.ino));
    // Wrapping, as the counters' atomic adds are: a damaged size (2^63)
    // must not panic.
    account_keys(txn, keys, attr, (attr.size as i64).wrapping_neg(), -1).await
}
