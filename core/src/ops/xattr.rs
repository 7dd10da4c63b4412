//! Extended attributes: `setxattr`, `getxattr`, `listxattr`, `removexattr`.
//!
//! Namespaces, as Linux enforces them: `user.*` on regular files and
//! directories, governed by the file's read/write permission; `trusted.*`
//! for root only (invisible to others); `security.*` with write permission;
//! `system.*` (POSIX ACLs) is not supported. `hafs.*` are control
//! attributes, not stored:
//! - `hafs.subvolume`: setting it (to `true` or `1`) on an empty directory
//!   makes it a subvolume root; reading it gives `true` on one.
//! - `hafs.totals`: on a subvolume root, `{"bytes":B,"inodes":N}` for
//!   everything under it, summed from counters kept with conflict-free
//!   atomic adds. Subvolumes do not nest (a subvolume inside another
//!   would need every ancestor's totals updated by each change).

use crate::codec::{decode_counter, Attr};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::keys::Counter;
use crate::kv::{RangeOptions, Transaction};
use crate::perm;

use super::{read_attr, write_attr, FLAG_SUBVOLUME};

/// Longest attribute name and value, as Linux (XATTR_NAME_MAX, XATTR_SIZE_MAX).
pub const XATTR_NAME_BYTES_MAX: usize = 255;
pub const XATTR_VALUE_BYTES_MAX: usize = 65536;

/// `setxattr` flags.
pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

const SUBVOLUME: &[u8] = b"hafs.subvolume";
const TOTALS: &[u8] = b"hafs.totals";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    User,
    Trusted,
    Security,
    Hafs,
}

fn namespace(name: &[u8]) -> FsResult<Namespace> {
    if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX {
        return Err(FsError::Range);
    }
    let ns = [
        (&b"user."[..], Namespace::User),
        (b"trusted.", Namespace::Trusted),
        (b"security.", Namespace::Security),
        (b"hafs.", Namespace::Hafs),
    ];
    ns.iter()
        .find(|(prefix, _)| name.starts_with(prefix) && name.len() > prefix.len())
        .map(|(_, ns)| *ns)
        .ok_or(FsError::NotSupported)
}

/// May `caller` read (`write == false`) or change the attribute `name`?
fn check_access(attr: &Attr, caller: &Caller, ns: Namespace, write: bool) -> FsResult<()> {
    match ns {
        Namespace::Trusted if !caller.is_root() => Err(if write {
            FsError::Perm
        } else {
            FsError::NoData
        }),
        Namespace::User => {
            let kind_ok = attr.is_dir() || attr.mode & libc::S_IFMT == libc::S_IFREG;
            if !kind_ok {
                return Err(if write {
                    FsError::Perm
                } else {
                    FsError::NoData
                });
            }
            perm::check(attr, caller, if write { perm::WRITE } else { perm::READ })
        }
        Namespace::Security if write => perm::check(attr, caller, perm::WRITE),
        Namespace::Trusted | Namespace::Security | Namespace::Hafs => Ok(()),
    }
}

pub async fn set(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    name: &[u8],
    value: &[u8],
    flags: i32,
) -> FsResult<()> {
    let ns = namespace(name)?;
    if value.len() > XATTR_VALUE_BYTES_MAX {
        return Err(FsError::TooBig);
    }
    if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
        return Err(FsError::Invalid);
    }
    let mut attr = read_attr(txn, ctx, ino).await?;
    check_access(&attr, ctx.caller, ns, true)?;
    if ns == Namespace::Hafs {
        return set_control(txn, ctx, &mut attr, name, value, flags).await;
    }
    let key = ctx.keys.xattr(ino, name);
    let exists = txn.get(&key).await?.is_some();
    if exists && flags == XATTR_CREATE {
        return Err(FsError::Exists);
    }
    if !exists && flags == XATTR_REPLACE {
        return Err(FsError::NoData);
    }
    txn.set(&key, value);
    attr.ctime_ns = ctx.now_ns;
    write_attr(txn, ctx, &attr);
    Ok(())
}

async fn set_control(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    attr: &mut Attr,
    name: &[u8],
    value: &[u8],
    flags: i32,
) -> FsResult<()> {
    if name != SUBVOLUME {
        return Err(if name == TOTALS {
            FsError::Perm
        } else {
            FsError::NotSupported
        });
    }
    if !matches!(value, b"true" | b"1") {
        return Err(FsError::Invalid);
    }
    perm::check_owner(attr, ctx.caller)?;
    if !attr.is_dir() {
        return Err(FsError::NotDir);
    }
    let already = attr.flags & FLAG_SUBVOLUME != 0;
    if already {
        return if flags == XATTR_CREATE {
            Err(FsError::Exists)
        } else {
            Ok(())
        };
    }
    if flags == XATTR_REPLACE {
        return Err(FsError::NoData);
    }
    if attr.subvolume != 0 {
        return Err(FsError::Invalid); // no nesting: see the module docs
    }
    let (begin, end) = ctx.keys.dirents(attr.ino);
    let one = RangeOptions {
        limit: 1,
        ..RangeOptions::default()
    };
    if !txn.get_range(&begin, &end, one).await?.kvs.is_empty() {
        return Err(FsError::NotEmpty);
    }
    attr.flags |= FLAG_SUBVOLUME;
    attr.ctime_ns = ctx.now_ns;
    write_attr(txn, ctx, attr);
    Ok(())
}

pub async fn get(txn: &Transaction, ctx: &Ctx<'_>, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
    let ns = namespace(name)?;
    let attr = read_attr(txn, ctx, ino).await?;
    check_access(&attr, ctx.caller, ns, false)?;
    if ns == Namespace::Hafs {
        return get_control(txn, ctx, &attr, name).await;
    }
    txn.get(&ctx.keys.xattr(ino, name))
        .await?
        .ok_or(FsError::NoData)
}

async fn get_control(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    attr: &Attr,
    name: &[u8],
) -> FsResult<Vec<u8>> {
    if attr.flags & FLAG_SUBVOLUME == 0 {
        return Err(FsError::NoData);
    }
    match name {
        SUBVOLUME => Ok(b"true".to_vec()),
        TOTALS => {
            let (bytes, inodes) = subvolume_totals(txn, ctx, attr.ino).await?;
            // Bytes as unsigned: the sum of sizes, exact below 2^64.
            let bytes = bytes as u64;
            Ok(format!("{{\"bytes\":{bytes},\"inodes\":{inodes}}}").into_bytes())
        }
        _ => Err(FsError::NoData),
    }
}

/// Sum a subvolume's counter shards: (bytes, inodes).
pub async fn subvolume_totals(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    subvolume: u64,
) -> FsResult<(i64, i64)> {
    let (begin, end) = ctx.keys.subvolume_counters(subvolume);
    let all = txn.get_range(&begin, &end, RangeOptions::default()).await?;
    let (mut bytes, mut inodes) = (0i64, 0i64);
    for (key, value) in &all.kvs {
        let n = decode_counter(Some(value))?;
        match ctx.keys.subvolume_counter_kind(subvolume, key) {
            // Wrapping, as the shards' atomic adds are: sparse files count
            // their full size, and 8,192 files of 2^50 bytes reach 2^63.
            Some(Counter::Bytes) => bytes = bytes.wrapping_add(n),
            Some(Counter::Inodes) => inodes = inodes.wrapping_add(n),
            None => {
                return Err(FsError::Corrupted(format!(
                    "counter key of subvolume {subvolume}"
                )))
            }
        }
    }
    Ok((bytes, inodes))
}

pub async fn list(txn: &Transaction, ctx: &Ctx<'_>, ino: u64) -> FsResult<Vec<Vec<u8>>> {
    let attr = read_attr(txn, ctx, ino).await?;
    let (begin, end) = ctx.keys.xattrs(ino);
    let all = txn.get_range(&begin, &end, RangeOptions::default()).await?;
    let mut names = Vec::with_capacity(all.kvs.len());
    for (key, _) in &all.kvs {
        let name = ctx
            .keys
            .xattr_name(ino, key)
            .ok_or_else(|| FsError::Corrupted(format!("xattr key of inode {ino}")))?;
        // Like Linux, listing needs no read permission; only trusted.*
        // names are hidden from non-root callers.
        let visible =
            namespace(&name).is_ok_and(|ns| ns != Namespace::Trusted || ctx.caller.is_root());
        if visible {
            names.push(name);
        }
    }
    if attr.flags & FLAG_SUBVOLUME != 0 {
        names.push(SUBVOLUME.to_vec());
        names.push(TOTALS.to_vec());
    }
    Ok(names)
}

pub async fn remove(txn: &Transaction, ctx: &Ctx<'_>, ino: u64, name: &[u8]) -> FsResult<()> {
    let ns = namespace(name)?;
    let mut attr = read_attr(txn, ctx, ino).await?;
    check_access(&attr, ctx.caller, ns, true)?;
    if ns == Namespace::Hafs {
        // Un-making a subvolume would orphan its totals; not supported.
        return Err(if attr.flags & FLAG_SUBVOLUME != 0 {
            FsError::Perm
        } else {
            FsError::NoData
        });
    }
    let key = ctx.keys.xattr(ino, name);
    if txn.get(&key).await?.is_none() {
        return Err(FsError::NoData);
    }
    txn.clear(&key);
    attr.ctime_ns = ctx.now_ns;
    write_attr(txn, ctx, &attr);
    Ok(())
}

impl Fs {
    pub async fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        self.mutate(caller, |txn, ctx| async move {
            set(&txn, &ctx, ino, name, value, flags).await
        })
        .await
    }

    pub async fn getxattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.query(caller, |txn, ctx| async move {
            get(&txn, &ctx, ino, name).await
        })
        .await
    }

    pub async fn listxattr(&self, caller: &Caller, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        self.query(
            caller,
            |txn, ctx| async move { list(&txn, &ctx, ino).await },
        )
        .await
    }

    pub async fn removexattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> FsResult<()> {
        self.mutate(caller, |txn, ctx| async move {
            remove(&txn, &ctx, ino, name).await
        })
        .await
    }
}
