//! Who is asking and when: the context every operation gets. Operations read
//! identity, time and configuration only from here, never from the OS.

use crate::codec::Settings;
use crate::keys::Keys;

/// The caller of an operation: the process's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
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
            groups: Vec::new(),
            pid: 0,
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
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
