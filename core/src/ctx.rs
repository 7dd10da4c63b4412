//! Who is asking and when: the context every operation gets. Operations read
//! identity, time and configuration only from here, never from the OS.

use std::sync::{Arc, OnceLock};

use crate::codec::Settings;
use crate::keys::Keys;

/// The caller of an operation: the process's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Groups,
    pub pid: u32,
}

impl Caller {
    pub fn root() -> Caller {
        Caller::default()
    }

    pub fn user(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            groups: Groups::default(),
            pid: 0,
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.list().contains(&gid)
    }
}

/// A caller's supplementary groups: a known list, or one looked up on first
/// use. FUSE passes only uid, gid and pid, so the mount would read
/// `/proc/PID/status` for every request — a quarter of the daemon's CPU per
/// request under `perf` — although most requests (root callers, owners,
/// members by primary gid) never consult the list.
#[derive(Clone, Default)]
pub struct Groups(Arc<GroupsInner>);

/// Reads a process's supplementary groups.
pub type GroupLookup = fn(u32) -> Vec<u32>;

#[derive(Default)]
struct GroupsInner {
    list: OnceLock<Vec<u32>>,
    /// Where a lazy list comes from: (pid, lookup).
    lookup: Option<(u32, GroupLookup)>,
}

impl Groups {
    /// Groups read by `lookup(pid)` the first time they are needed.
    pub fn lazy(pid: u32, lookup: GroupLookup) -> Groups {
        Groups(Arc::new(GroupsInner {
            list: OnceLock::new(),
            lookup: Some((pid, lookup)),
        }))
    }

    pub fn list(&self) -> &[u32] {
        self.0.list.get_or_init(|| match self.0.lookup {
            Some((pid, lookup)) => lookup(pid),
            None => Vec::new(),
        })
    }
}

impl From<Vec<u32>> for Groups {
    fn from(list: Vec<u32>) -> Groups {
        Groups(Arc::new(GroupsInner {
            list: OnceLock::from(list),
            lookup: None,
        }))
    }
}

impl PartialEq for Groups {
    fn eq(&self, other: &Groups) -> bool {
        self.list() == other.list()
    }
}

impl Eq for Groups {}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.list.get() {
            Some(list) => list.fmt(f),
            None => f.write_str("<not looked up>"),
        }
    }
}

/// When to update access times on reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtimeMode {
    /// Update when atime ≤ mtime or ctime, or older than a day (Linux's default).
    #[default]
    Relatime,
    Noatime,
    Strictatime,
}

/// Mount-wide options that change operation behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsOptions {
    pub atime: AtimeMode,
    pub read_only: bool,
    /// How long an inode whose last link went stays openable (parked in the
    /// unlinked set) before a sweep frees it. The kernel opens a file in two
    /// requests — LOOKUP the name, then OPEN the inode — and another client
    /// can rename over or unlink the name in between; without the grace the
    /// OPEN finds nothing and `open(2)` fails although the name always
    /// existed. 0 frees at once (as a local filesystem does).
    pub unlink_grace_ns: i64,
}

/// Default [`FsOptions::unlink_grace_ns`]: far longer than a LOOKUP→OPEN
/// gap, short enough that space comes back within a heartbeat or two.
pub const DEFAULT_UNLINK_GRACE_NS: i64 = 5_000_000_000;

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            atime: AtimeMode::default(),
            read_only: false,
            unlink_grace_ns: DEFAULT_UNLINK_GRACE_NS,
        }
    }
}

/// Everything an operation may consult besides its transaction.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub caller: &'a Caller,
    pub client: &'a str,
    /// The operation's time, from the injected clock.
    pub now_ns: i64,
    pub keys: &'a Keys,
    pub settings: &'a Settings,
    pub options: &'a FsOptions,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

    fn lookup(pid: u32) -> Vec<u32> {
        LOOKUPS.fetch_add(1, Ordering::SeqCst);
        vec![pid + 1]
    }

    #[test]
    fn lazy_groups_are_read_once_and_only_when_needed() {
        let caller = Caller {
            uid: 1000,
            gid: 1000,
            groups: Groups::lazy(41, lookup),
            pid: 41,
        };
        assert!(caller.in_group(1000), "the primary group needs no lookup");
        assert_eq!(LOOKUPS.load(Ordering::SeqCst), 0);
        assert!(caller.in_group(42));
        assert!(!caller.in_group(43));
        assert_eq!(caller.clone().groups.list(), &[42]);
        assert_eq!(LOOKUPS.load(Ordering::SeqCst), 1);
    }
}
