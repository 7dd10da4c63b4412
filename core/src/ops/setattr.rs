//! `setattr`: chmod, chown, truncate/extend and utimens in one transaction,
//! with Linux's rules:
//! - mode: owner or root (`EPERM`); an unprivileged owner outside the
//!   file's group loses set-group-ID; clearing only set-ID bits is also
//!   allowed to whoever may write the file (the kernel's own change before
//!   a truncate or write by a non-owner);
//! - uid: root only; gid: root, or the owner changing to a group it is in;
//!   a chown of a non-directory clears set-user-ID, and set-group-ID when
//!   group-executable (for root too, as Linux does);
//! - size: write permission unless done through an open handle (`ftruncate`);
//!   updates mtime and ctime; an unprivileged truncate clears set-user-ID;
//! - times: `UTIME_NOW` for both needs ownership or write permission, any
//!   explicit time, or one time set and the other left alone, needs
//!   ownership (`EPERM`, or `EACCES` for `UTIME_NOW`).
//!
//! Every change updates ctime.

use crate::codec::{Attr, FileType};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::kv::Transaction;
use crate::perm;

use super::write::kill_privileges;
use super::{account, data, read_attr, write_attr};

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The operation's time (`UTIME_NOW`).
    Now,
    /// Nanoseconds since the Unix epoch.
    At(i64),
}

/// The changes of one `setattr`; `None` leaves a field alone (`UTIME_OMIT`,
/// uid or gid -1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// An explicit ctime (the kernel sends one only with writeback caching).
    pub ctime: Option<i64>,
    /// Done through an open file (`ftruncate`, `futimens`): the open already
    /// checked write access.
    pub by_handle: bool,
}

pub async fn apply(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    changes: &SetAttr,
) -> FsResult<Attr> {
    let mut attr = read_attr(txn, ctx, ino).await?;
    let before = attr.mode;
    let caller = ctx.caller;
    if let Some(size) = changes.size {
        set_size(txn, ctx, &mut attr, size, changes.by_handle).await?;
    }
    let mut chown_cleared = 0;
    if changes.uid.is_some() || changes.gid.is_some() {
        chown_cleared = chown(&mut attr, caller, changes.uid, changes.gid)?;
    }
    if let Some(mode) = changes.mode {
        // The kernel clears set-ID bits itself before a truncate or write
        // by anyone (fuser negotiates no HANDLE_KILLPRIV), sending us a mode
        // change as the writer: allowed to whoever may write the file, as
        // the truncate or write it comes with would clear them anyway.
        let set_id = libc::S_ISUID | libc::S_ISGID;
        // Removes at least one bit the kernel's own clearing removes
        // (set-user-ID; set-group-ID only with group execute; never on a
        // directory) and changes nothing else: a no-op chmod, or a group
        // member's `chmod g-s` of a shared directory, stays EPERM.
        let killable = if attr.is_dir() {
            0
        } else if before & libc::S_IXGRP != 0 {
            set_id
        } else {
            libc::S_ISUID
        };
        let kills_set_id = mode & !killable & 0o7777 == before & !killable & 0o7777
            && mode & killable & !before == 0
            && before & killable & !mode != 0;
        let may_write = changes.by_handle || perm::check(&attr, caller, perm::WRITE).is_ok();
        if !(kills_set_id && may_write) {
            perm::check_owner(&attr, caller)?;
        }
        let mut bits = mode & 0o7777 & !chown_cleared;
        if !caller.is_root() && !caller.in_group(attr.gid) {
            bits &= !libc::S_ISGID;
        }
        attr.mode = (attr.mode & libc::S_IFMT) | bits;
    }
    set_times(&mut attr, ctx, changes)?;
    attr.ctime_ns = changes.ctime.unwrap_or(ctx.now_ns);
    write_attr(txn, ctx, &attr);
    Ok(attr)
}

async fn set_size(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    attr: &mut Attr,
    size: u64,
    by_handle: bool,
) -> FsResult<()> {
    match attr.kind()? {
        FileType::Regular => {}
        FileType::Directory => return Err(FsError::IsDir),
        _ => return Err(FsError::Invalid),
    }
    if !by_handle {
        perm::check(attr, ctx.caller, perm::WRITE)?;
    }
    if size > data::FILE_BYTES_MAX {
        return Err(FsError::FileTooBig);
    }
    if size < attr.size {
        data::truncate(txn, ctx, attr.ino, size).await?;
    }
    // Wrapping, as the counters' atomic adds are: a damaged stored size
    // (past 2^63) must not panic.
    let delta = (size as i64).wrapping_sub(attr.size as i64);
    attr.size = size;
    attr.mtime_ns = ctx.now_ns;
    kill_privileges(attr, ctx.caller);
    account(txn, ctx, attr, delta, 0).await?;
    Ok(())
}

/// Change owner and group; returns the set-ID bits it cleared, which the
/// mode sent with it (the kernel's own clearing, computed from the mode
/// before) must not bring back.
fn chown(attr: &mut Attr, caller: &Caller, uid: Option<u32>, gid: Option<u32>) -> FsResult<u32> {
    let owner = caller.uid == attr.uid;
    if let Some(uid) = uid {
        if !(caller.is_root() || owner && uid == attr.uid) {
            return Err(FsError::Perm);
        }
    }
    if let Some(gid) = gid {
        let allowed = owner && (gid == attr.gid || caller.in_group(gid));
        if !caller.is_root() && !allowed {
            return Err(FsError::Perm);
        }
    }
    // Linux's chown_common: set-user-ID always goes; set-group-ID with
    // group execute, or (6.2 on) when an unprivileged caller is outside the
    // file's group before the change.
    let mut cleared = 0;
    if !attr.is_dir() {
        cleared |= libc::S_ISUID;
        if attr.mode & libc::S_ISGID != 0
            && (attr.mode & libc::S_IXGRP != 0 || !caller.is_root() && !caller.in_group(attr.gid))
        {
            cleared |= libc::S_ISGID;
        }
    }
    cleared &= attr.mode;
    attr.mode &= !cleared;
    attr.uid = uid.unwrap_or(attr.uid);
    attr.gid = gid.unwrap_or(attr.gid);
    Ok(cleared)
}

fn set_times(attr: &mut Attr, ctx: &Ctx<'_>, changes: &SetAttr) -> FsResult<()> {
    let times = [changes.atime, changes.mtime];
    if times.iter().all(Option::is_none) {
        return Ok(());
    }
    // Only "both to now" (utimensat with NULL, or UTIME_NOW twice) is a
    // touch that write permission allows; any other pair, including one
    // time to now and the other left alone, needs the owner (as in
    // Linux's `vfs_utimes`). A truncate sends its mtime as "now" alone.
    let explicit = times.iter().any(|t| matches!(t, Some(TimeSet::At(_))))
        || changes.size.is_none() && !times.iter().all(|t| matches!(t, Some(TimeSet::Now)));
    let caller = ctx.caller;
    if explicit {
        perm::check_owner(attr, caller)?;
    } else if perm::check_owner(attr, caller).is_err() && !changes.by_handle {
        perm::check(attr, caller, perm::WRITE)?;
    }
    let resolve = |t: TimeSet| match t {
        TimeSet::Now => ctx.now_ns,
        TimeSet::At(ns) => ns,
    };
    if let Some(t) = changes.atime {
        attr.atime_ns = resolve(t);
    }
    if let Some(t) = changes.mtime {
        attr.mtime_ns = resolve(t);
    }
    Ok(())
}

impl Fs {
    pub async fn setattr(&self, caller: &Caller, ino: u64, changes: SetAttr) -> FsResult<Attr> {
        let changes = &changes;
        self.mutate(caller, |txn, ctx| async move {
            apply(&txn, &ctx, ino, changes).await
        })
        .await
    }
}
