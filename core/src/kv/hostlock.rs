//! Which processes have an SQLite database open: a lock file next to it
//! (`<database>-lock`) with two open-file-description locks, so a relaxed
//! backend can tell when it is alone (and may keep commits in memory, see
//! [`super::sqlite`]) and a newcomer can ask it to hand the database over.
//!
//! - Byte 0, **presence**: every open backend holds it shared; a backend
//!   alone may upgrade to exclusive.
//! - Byte 1, **knock**: a newcomer holds it shared while it waits for
//!   presence; the exclusive holder polls for it, writes out what it holds
//!   in memory and downgrades to shared.
//!
//! - Byte 2, **breaker**: held shared by a backend that gave up waiting for
//!   an exclusive holder that does not answer (stopped) and opened without
//!   presence; while anyone holds it, nobody may become exclusive.
//!
//! OFD locks (`F_OFD_SETLK`) belong to the open file, not the process: two
//! backends in one process exclude each other as two processes do, closing
//! some other descriptor of the file drops nothing (unlike POSIX record
//! locks), and the kernel drops them when the holder dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PRESENCE: i64 = 0;
const KNOCK: i64 = 1;
const BREAKER: i64 = 2;

#[derive(Debug)]
pub struct HostLock {
    file: File,
    /// Opened without presence, past a holder that did not answer.
    broke_in: bool,
}

/// The lock file's name for the database at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-lock");
    PathBuf::from(name)
}

impl HostLock {
    /// Open the lock file and take presence, knocking until an exclusive
    /// holder hands over. After `wait` (a holder that is stopped or hung
    /// does not answer), break in: hold the breaker byte instead of
    /// presence ([`HostLock::broke_in`]); the caller must then fence the
    /// holder out of the database before using it.
    pub fn join(db: &Path, wait: Duration) -> io::Result<HostLock> {
        let path = lock_path(db);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut lock = HostLock {
            file,
            broke_in: false,
        };
        if lock.set(PRESENCE, libc::F_RDLCK)? {
            return Ok(lock);
        }
        lock.set(KNOCK, libc::F_RDLCK)?;
        // Time counted in pauses slept (this crate reads no OS clock).
        let mut waited = Duration::ZERO;
        let mut pause = Duration::from_micros(200);
        let joined = loop {
            if lock.set(PRESENCE, libc::F_RDLCK)? {
                break Ok(());
            }
            if waited >= wait {
                if lock.set(BREAKER, libc::F_RDLCK)? {
                    lock.broke_in = true;
                    break Ok(());
                }
                break Err(io::Error::other("cannot take the lock file's breaker byte"));
            }
            std::thread::sleep(pause);
            waited += pause;
            pause = (pause * 2).min(Duration::from_millis(5));
        };
        lock.set(KNOCK, libc::F_UNLCK)?;
        joined.map(|()| lock)
    }

    /// Whether this opener broke in past a holder that did not answer.
    pub fn broke_in(&self) -> bool {
        self.broke_in
    }

    /// Become the only holder if nobody else has the database open, nobody
    /// is knocking and nobody broke in (a breaker has no presence to
    /// conflict with). Never blocks.
    pub fn try_exclusive(&self) -> io::Result<bool> {
        if self.broke_in || self.held_by_others(KNOCK)? || self.held_by_others(BREAKER)? {
            return Ok(false);
        }
        self.set(PRESENCE, libc::F_WRLCK)
    }

    /// Hand over: back to a shared presence (atomic; never blocks, since
    /// only this holder has the byte).
    pub fn share(&self) -> io::Result<()> {
        if self.set(PRESENCE, libc::F_RDLCK)? {
            Ok(())
        } else {
            Err(io::Error::other("cannot downgrade the presence lock"))
        }
    }

    /// Whether some opener broke in (and so has no presence).
    pub fn breaker_present(&self) -> io::Result<bool> {
        self.held_by_others(BREAKER)
    }

    /// Whether a newcomer is waiting for the database.
    pub fn knocked(&self) -> io::Result<bool> {
        self.held_by_others(KNOCK)
    }

    /// Whether another open file holds a lock on byte `at`.
    #[allow(unsafe_code)] // fcntl(2) OFD locks have no safe std wrapper
    fn held_by_others(&self, at: i64) -> io::Result<bool> {
        let mut fl = flock_for(at, libc::F_WRLCK);
        // SAFETY: a valid descriptor and a valid, initialised flock struct.
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(i32::from(fl.l_type) != libc::F_UNLCK)
    }

    /// Set byte `at` to `kind` without waiting: false if another holder's
    /// lock conflicts.
    #[allow(unsafe_code)] // fcntl(2) OFD locks have no safe std wrapper
    fn set(&self, at: i64, kind: i32) -> io::Result<bool> {
        let fl = flock_for(at, kind);
        // SAFETY: a valid descriptor and a valid, initialised flock struct.
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(e),
        }
    }
}

#[allow(unsafe_code)] // a zeroed libc::flock
fn flock_for(at: i64, kind: i32) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value (and OFD locks
    // require l_pid = 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at as libc::off_t;
    fl.l_len = 1;
    fl
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests may read the OS clock
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn alone_a_holder_may_be_exclusive_and_a_newcomer_makes_it_share() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let a = HostLock::join(&db, Duration::from_secs(1)).unwrap();
        assert!(a.try_exclusive().unwrap(), "alone");
        assert!(!a.knocked().unwrap());
        let handed = std::thread::scope(|s| {
            let newcomer = s.spawn(|| HostLock::join(&db, Duration::from_secs(5)));
            // The holder sees the knock, then shares.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !a.knocked().unwrap() {
                assert!(Instant::now() < deadline, "no knock seen");
                std::thread::sleep(Duration::from_millis(1));
            }
            a.share().unwrap();
            newcomer.join().unwrap()
        });
        let b = handed.expect("the newcomer got in once the holder shared");
        assert!(!a.try_exclusive().unwrap(), "b is present");
        assert!(!b.try_exclusive().unwrap(), "a is present");
        drop(b);
        assert!(a.try_exclusive().unwrap(), "alone again");
    }

    #[test]
    fn past_a_holder_that_never_shares_a_newcomer_breaks_in() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let a = HostLock::join(&db, Duration::from_secs(1)).unwrap();
        assert!(a.try_exclusive().unwrap());
        let b = HostLock::join(&db, Duration::from_millis(100)).unwrap();
        assert!(b.broke_in());
        assert!(!a.knocked().unwrap(), "the knock is withdrawn");
        // While the breaker lives, nobody becomes exclusive: not the old
        // holder once it shares, not a later opener once it is gone.
        a.share().unwrap();
        assert!(!a.try_exclusive().unwrap());
        drop(a);
        let c = HostLock::join(&db, Duration::from_secs(1)).unwrap();
        assert!(!c.broke_in());
        assert!(
            !c.try_exclusive().unwrap(),
            "b broke in and has no presence"
        );
        assert!(!b.try_exclusive().unwrap());
        drop(b);
        assert!(c.try_exclusive().unwrap(), "alone at last");
    }
}
