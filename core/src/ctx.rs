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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsOptions {
    pub atime: AtimeMode,
    pub read_only: bool,
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
