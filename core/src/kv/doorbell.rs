//! `doorbell`: tells a SQLite backend's watcher at once that another
//! process wrote the database's WAL, so that a watch on a key another
//! mount changed (a lock waiter, above all) fires within microseconds
//! instead of at the next `PRAGMA data_version` poll. An inotify watch on
//! the WAL's directory, for writes to the WAL (which may be deleted and
//! made again; a watch on the directory outlives that).
//! It only hastens the poll, which stays: a bell that never rings (inotify
//! unavailable or out of watches, a network filesystem) changes nothing.

use std::ffi::OsString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify;

pub struct Doorbell {
    fd: OwnedFd,
    /// The WAL's file name.
    wal: OsString,
}

impl Doorbell {
    /// A bell for the WAL at `wal` (as SQLite names it: symlinks resolved).
    pub fn new(wal: &Path) -> io::Result<Doorbell> {
        let (Some(dir), Some(name)) = (wal.parent(), wal.file_name()) else {
            return Err(io::Error::other("the WAL path has no directory"));
        };
        let wal = name.to_os_string();
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(&fd, dir, inotify::WatchFlags::MODIFY)?;
        Ok(Doorbell { fd, wal })
    }

    /// Wait up to `timeout` for writes to the WAL; true if there were any.
    /// Other files' events are read and dropped.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.fd, &mut buf);
        let mut rung = false;
        loop {
            match events.next() {
                Ok(event) => {
                    let name = event.file_name().map(|n| n.to_bytes());
                    // An overflowed queue may have lost the WAL's events.
                    let overflow = event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW);
                    rung |= overflow || name == Some(self.wal.as_bytes());
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(rung),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Doorbell;
    use std::time::Duration;

    /// Rings for writes to the WAL, not for other files of the directory.
    #[test]
    fn rings_for_the_wal_only() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Doorbell::new(&dir.path().join("hafs.db-wal")).unwrap();
        assert!(!bell.wait(Duration::from_millis(10)).unwrap());
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        assert!(!bell.wait(Duration::from_millis(50)).unwrap());
        std::fs::write(dir.path().join("hafs.db-wal"), b"x").unwrap();
        assert!(bell.wait(Duration::from_millis(1000)).unwrap());
        assert!(!bell.wait(Duration::from_millis(10)).unwrap());
    }
}
