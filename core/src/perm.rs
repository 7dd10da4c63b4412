//! Permission checks, made inside the transaction that acts on them so no
//! other client can change the answer between check and act.

use crate::codec::Attr;
use crate::ctx::Caller;
use crate::error::{FsError, FsResult};

pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const EXEC: u32 = 1;

/// Whether `caller` may access `attr` for every bit of `mask` (an `rwx`
/// triple): owner bits for the owner, group bits for members, other bits
/// otherwise. Root may read and write anything, and execute anything with
/// an execute bit set (and search any directory).
pub fn allowed(attr: &Attr, caller: &Caller, mask: u32) -> bool {
    if caller.is_root() {
        let exec_ok = mask & EXEC == 0 || attr.is_dir() || attr.mode & 0o111 != 0;
        return exec_ok;
    }
    let bits = if caller.uid == attr.uid {
        (attr.mode >> 6) & 7
    } else if caller.in_group(attr.gid) {
        (attr.mode >> 3) & 7
    } else {
        attr.mode & 7
    };
    bits & mask == mask
}

/// [`allowed`], as `EACCES` when not.
pub fn check(attr: &Attr, caller: &Caller, mask: u32) -> FsResult<()> {
    if allowed(attr, caller, mask) {
        Ok(())
    } else {
        Err(FsError::Access)
    }
}

/// Removing or renaming `child` out of `dir`: write and search permission on
/// the directory, and, if the directory is sticky, ownership of the child or
/// the directory (`EPERM` otherwise, as Linux).
pub fn check_remove(dir: &Attr, child: &Attr, caller: &Caller) -> FsResult<()> {
    check(dir, caller, WRITE | EXEC)?;
    let sticky = dir.mode & libc::S_ISVTX != 0;
    if sticky && !caller.is_root() && caller.uid != dir.uid && caller.uid != child.uid {
        return Err(FsError::Perm);
    }
    Ok(())
}

/// Only the owner (or root) may change mode, times to arbitrary values, or
/// xattrs in the `user.` namespace of a file it cannot write.
pub fn check_owner(attr: &Attr, caller: &Caller) -> FsResult<()> {
    if caller.is_root() || caller.uid == attr.uid {
        Ok(())
    } else {
        Err(FsError::Perm)
    }
}
