//! `hafs bench locks`: lock ping-pong between two real mounts of one
//! filesystem. Two `hafs mount` processes (this executable) serve one new
//! SQLite database in a scratch directory; one thread per mount takes the
//! lock on the shared file, checks whose mark the first byte holds, writes
//! its own, and releases. A *hand-off* is the time from one side's release
//! to the other side holding the lock — the latency an application sees
//! when it waits for a lock another machine gives up. Reported as median,
//! p99 and rate, for `flock` and for whole-file `fcntl` locks, side by side
//! in one run.
//!
//! The ping-pong itself ([`side`], [`Board`]) is shared with `hafs bench
//! dir`, which runs its second side as a separate process (`hafs bench
//! lock-peer`, hidden): POSIX locks belong to a process, so only two
//! processes can pass an `fcntl` lock back and forth on one mount. The two
//! sides keep their release times on a [`Board`] in shared memory, and
//! count there each time one side holds the lock while the other does, and
//! each time a side holding the lock does not read the byte the other side
//! wrote under it — which a filesystem whose locks or data are not shared
//! (two passthrough FUSE mounts of one directory, for one) shows.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `hafs bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchWhat {
    /// Metadata, config-update, lock, big-directory and I/O workloads on
    /// any directory (hafs, bindfs, tmpfs, ...).
    Dir(crate::bench_dir::DirArgs),
    /// Raw durable SQLite commits per second in a directory.
    SqliteCommits {
        dir: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// Lock ping-pong between two mounts (flock and fcntl).
    Locks {
        /// Hand-offs measured per side and lock kind.
        #[arg(long, default_value_t = 500)]
        rounds: usize,
        /// Scratch directory for the database and the two mount points
        /// (default: a new directory under $TMPDIR, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The second side of `bench dir`'s lock ping-pong (run by it): take
    /// and pass the lock on FILE until both sides have HANDOFFS hand-offs,
    /// then print this side's hand-off times (ns), one per line.
    #[command(hide = true)]
    LockPeer {
        /// The shared [`Board`] file the first side made.
        board: PathBuf,
        /// The lock file (as this side sees it: maybe through another mount).
        file: PathBuf,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        handoffs: usize,
    },
}

pub fn run(args: &BenchArgs, relaxed: bool) -> Result<(), String> {
    match &args.what {
        BenchWhat::Locks { rounds, dir } => locks(*rounds, dir.as_deref(), relaxed),
        BenchWhat::Dir(a) => crate::bench_dir::run_dir(a),
        BenchWhat::SqliteCommits { dir, seconds, json } => {
            crate::bench_dir::sqlite_commits(dir, *seconds, *json)
        }
        BenchWhat::LockPeer {
            board,
            file,
            kind,
            handoffs,
        } => lock_peer(board, file, *kind, *handoffs),
    }
}

/// A `hafs mount` child, stopped with SIGTERM when dropped.
struct MountProcess {
    child: Child,
    path: PathBuf,
}

impl MountProcess {
    fn start(db: &Path, path: &Path, log: &Path, relaxed: bool) -> Result<MountProcess, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find hafs itself: {e}"))?;
        let log = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--kv").arg(format!("sqlite://{}", db.display()));
        if relaxed {
            cmd.arg("--relaxed-durability");
        }
        let child = cmd
            .args(["mount", "--mkfs", "--description", "hafs bench"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a mount: {e}"))?;
        let mut mount = MountProcess {
            child,
            path: path.to_path_buf(),
        };
        for _ in 0..400 {
            if hafs_fuse::mount::is_mountpoint(path) {
                return Ok(mount);
            }
            if let Ok(Some(status)) = mount.child.try_wait() {
                return Err(format!("the mount on {} exited: {status}", path.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("the mount on {} did not appear", path.display()))
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        if hafs_fuse::mount::is_mountpoint(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Flock,
    Fcntl,
}

impl Kind {
    /// The name in metrics, file names and `--kind` (clap's value name).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Flock => "flock",
            Kind::Fcntl => "fcntl",
        }
    }
}

/// Open a ping-pong's lock file for reading and writing.
pub(crate) fn open_lock_file(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Take (`true`) or drop the exclusive whole-file lock, waiting to take it.
#[allow(unsafe_code)] // flock(2)/fcntl(2) locks have no safe std API
pub(crate) fn lock(file: &File, kind: Kind, take: bool) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    let rc = match kind {
        // SAFETY: `fd` is an open descriptor for the duration of the call.
        Kind::Flock => unsafe { libc::flock(fd, if take { libc::LOCK_EX } else { libc::LOCK_UN }) },
        Kind::Fcntl => {
            // SAFETY: all-zero is a valid `flock` (whole file, SEEK_SET).
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = if take { libc::F_WRLCK } else { libc::F_UNLCK } as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            // SAFETY: `fd` is open and `fl` outlives the call.
            unsafe { libc::fcntl(fd, libc::F_SETLKW, &fl) }
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What the two sides of a ping-pong share: each side's last release time
/// (CLOCK_MONOTONIC, ns — one clock for every process on the host), how
/// many sides have all their hand-offs, and who holds the lock now.
#[repr(C)]
#[derive(Default)]
pub(crate) struct Board {
    released: [AtomicU64; 2],
    finished: AtomicU64,
    /// Whether each side holds the lock now.
    holding: [AtomicU64; 2],
    /// Set when side 2 (a process or thread) has ended.
    peer_exited: AtomicU64,
    overlaps: AtomicU64,
    /// The side that released the lock last.
    last: AtomicU64,
    /// Times a side, holding the lock the other side had released, did not
    /// read the byte that side wrote under it.
    stale_reads: AtomicU64,
}

impl Board {
    /// Side `me` just took the lock: count it if the other side holds it
    /// too (the filesystem's lock did not exclude).
    fn enter(&self, me: u8) {
        self.holding[usize::from(me % 2)].store(1, Ordering::SeqCst);
        if self.holding[usize::from(1 - me % 2)].load(Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How often a side took the lock while the other held it.
    pub(crate) fn overlaps(&self) -> u64 {
        self.overlaps.load(Ordering::SeqCst)
    }

    /// How often a side missed what the other wrote under the lock.
    pub(crate) fn stale_reads(&self) -> u64 {
        self.stale_reads.load(Ordering::SeqCst)
    }

    /// Side 2 (a process or thread) has ended: side 1 stops waiting for it.
    pub(crate) fn peer_exited(&self) {
        self.peer_exited.store(1, Ordering::SeqCst);
    }

    pub(crate) fn has_peer_exited(&self) -> bool {
        self.peer_exited.load(Ordering::SeqCst) != 0
    }

    /// Side `me` is about to release the lock, at `at` (ns).
    fn leave(&self, me: u8, at: u64) {
        self.released[usize::from(me % 2)].store(at, Ordering::SeqCst);
        self.last.store(u64::from(me), Ordering::SeqCst);
        self.holding[usize::from(me % 2)].store(0, Ordering::SeqCst);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes, unlike an
/// `Instant`'s offset from some epoch.
#[allow(unsafe_code)] // clock_gettime(2)
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Longest a side goes without a hand-off before it gives up: one whose
/// peer stopped would otherwise pass the lock to nobody for ever.
const PINGPONG_LIMIT: Duration = Duration::from_secs(120);

/// One side of the ping-pong: `rounds` hand-offs from the other side.
pub(crate) fn side(
    file: &File,
    kind: Kind,
    me: u8,
    rounds: usize,
    board: &Board,
) -> std::io::Result<Vec<Duration>> {
    let mut handoffs = Vec::with_capacity(rounds);
    let mut byte = [0u8];
    let mut done = false;
    let limit = PINGPONG_LIMIT.as_nanos() as u64;
    let mut give_up = monotonic_ns() + limit;
    loop {
        // Keep passing the lock until both sides have their hand-offs.
        if !done && handoffs.len() >= rounds {
            done = true;
            board.finished.fetch_add(1, Ordering::SeqCst);
        }
        if done && board.finished.load(Ordering::SeqCst) == 2 {
            return Ok(handoffs);
        }
        if board.has_peer_exited() {
            return Err(std::io::Error::other(format!(
                "side {me}: the other side exited ({} of {rounds} hand-offs)",
                handoffs.len()
            )));
        }
        if monotonic_ns() > give_up {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "side {me}: the other side stopped passing the lock ({} of {rounds} hand-offs)",
                    handoffs.len()
                ),
            ));
        }
        lock(file, kind, true)?;
        let held = monotonic_ns();
        board.enter(me);
        file.read_at(&mut byte, 0)?;
        // A hand-off by the board, which both sides see the same; the byte
        // the other side wrote under the lock must show too.
        let last = board.last.load(Ordering::SeqCst);
        if last != 0 && last != u64::from(me) {
            if u64::from(byte[0]) != last {
                board.stale_reads.fetch_add(1, Ordering::SeqCst);
            }
            if handoffs.len() < rounds {
                let other = board.released[usize::from(1 - me % 2)].load(Ordering::SeqCst);
                handoffs.push(Duration::from_nanos(held.saturating_sub(other)));
            }
            give_up = held + limit;
        }
        file.write_at(&[me], 0)?;
        board.leave(me, monotonic_ns());
        lock(file, kind, false)?;
    }
}

/// A [`Board`] in a small file mapped shared, so two processes use one.
pub(crate) struct SharedBoard {
    board: std::ptr::NonNull<Board>,
}

#[allow(unsafe_code)] // mmap(2) of a file both processes open
impl SharedBoard {
    /// Map `path`, creating it zeroed (an empty board) if `create`.
    pub(crate) fn map(path: &Path, create: bool) -> std::io::Result<SharedBoard> {
        let size = std::mem::size_of::<Board>();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .open(path)?;
        if create {
            file.set_len(size as u64)?;
        } else if file.metadata()?.len() < size as u64 {
            return Err(std::io::Error::other(format!(
                "{}: not a lock board",
                path.display()
            )));
        }
        // SAFETY: a fresh shared mapping of `size` bytes of an open file
        // that is at least that long; the mapping outlives the descriptor.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Zeroed bytes are a valid `Board` (atomics at 0), page-aligned.
        let board = std::ptr::NonNull::new(at.cast::<Board>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(SharedBoard { board })
    }
}

// SAFETY: the mapping holds only atomics, shared on purpose.
#[allow(unsafe_code)]
unsafe impl Send for SharedBoard {}
#[allow(unsafe_code)]
unsafe impl Sync for SharedBoard {}

impl std::ops::Deref for SharedBoard {
    type Target = Board;
    #[allow(unsafe_code)]
    fn deref(&self) -> &Board {
        // SAFETY: mapped for as long as `self` lives; only atomics inside.
        unsafe { self.board.as_ref() }
    }
}

impl Drop for SharedBoard {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this size, unmapped once.
        unsafe {
            libc::munmap(self.board.as_ptr().cast(), std::mem::size_of::<Board>());
        }
    }
}

/// `hafs bench lock-peer`: side 2 of a ping-pong started by side 1.
fn lock_peer(board: &Path, file: &Path, kind: Kind, handoffs: usize) -> Result<(), String> {
    let board = SharedBoard::map(board, false).map_err(|e| format!("{}: {e}", board.display()))?;
    let f = open_lock_file(file)?;
    let mine = side(&f, kind, 2, handoffs, &board).map_err(|e| e.to_string())?;
    for d in mine {
        println!("{}", d.as_nanos());
    }
    Ok(())
}

/// The `p` quantile of `sorted` (zero when empty).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len().max(1) as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn locks(rounds: usize, dir: Option<&Path>, relaxed: bool) -> Result<(), String> {
    if rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let (scratch, remove) = match dir {
        Some(d) => (d.to_path_buf(), false),
        None => (
            std::env::temp_dir().join(format!("hafs-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let db = scratch.join("bench.db");
    let result = (|| {
        let a = MountProcess::start(&db, &scratch.join("a"), &scratch.join("a.log"), relaxed)?;
        let b = MountProcess::start(&db, &scratch.join("b"), &scratch.join("b.log"), relaxed)?;
        println!(
            "lock ping-pong between two mounts of one SQLite filesystem ({} durability), {rounds} hand-offs per side",
            if relaxed { "relaxed" } else { "full" }
        );
        println!(
            "{:<6} {:>10} {:>10} {:>10} {:>14} {:>9} {:>12}",
            "lock", "median", "p99", "max", "hand-offs/s", "overlaps", "stale reads"
        );
        for kind in [Kind::Flock, Kind::Fcntl] {
            let name = kind.name();
            std::fs::write(a.path.join(name), [0u8]).map_err(|e| format!("{name}: {e}"))?;
            let (fa, fb) = (
                open_lock_file(&a.path.join(name))?,
                open_lock_file(&b.path.join(name))?,
            );
            let board = Arc::new(Board::default());
            // A benchmark of real processes outside simulation: the OS clock.
            #[allow(clippy::disallowed_methods)]
            let epoch = Instant::now();
            let other = {
                let board = board.clone();
                std::thread::spawn(move || {
                    let theirs = side(&fb, kind, 2, rounds, &board);
                    if theirs.is_err() {
                        board.peer_exited();
                    }
                    theirs
                })
            };
            let mut all = side(&fa, kind, 1, rounds, &board).map_err(|e| format!("{name}: {e}"))?;
            let theirs = other
                .join()
                .map_err(|_| "a bench thread panicked".to_string())?
                .map_err(|e| format!("{name}: {e}"))?;
            let elapsed = epoch.elapsed();
            all.extend(theirs);
            all.sort();
            println!(
                "{:<6} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>14.0} {:>9} {:>12}",
                name,
                percentile(&all, 0.5).as_secs_f64() * 1e3,
                percentile(&all, 0.99).as_secs_f64() * 1e3,
                all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
                all.len() as f64 / elapsed.as_secs_f64(),
                board.overlaps(),
                board.stale_reads()
            );
        }
        Ok(())
    })();
    if remove {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exclusion count: every time a side takes the lock while the
    /// other holds it, including again after the first overlap.
    #[test]
    fn the_board_counts_a_lock_held_by_both_sides() {
        let board = Board::default();
        board.enter(1);
        board.leave(1, monotonic_ns());
        board.enter(2);
        board.leave(2, monotonic_ns());
        assert_eq!(board.overlaps(), 0, "taken in turn");
        board.enter(1);
        board.enter(2);
        assert_eq!(board.overlaps(), 1);
        // Side 2 lets go and takes it again while side 1 still holds it.
        board.leave(2, monotonic_ns());
        board.enter(2);
        assert_eq!(board.overlaps(), 2, "side 1 still held it");
        board.leave(1, monotonic_ns());
        board.leave(2, monotonic_ns());
        board.enter(1);
        assert_eq!(board.overlaps(), 2, "both had let go");
    }

    /// Two threads passing a real flock in turn: hand-offs, no overlap.
    #[test]
    fn two_sides_pass_a_lock_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.path().join("lock"))
                .unwrap()
        };
        let board = Board::default();
        let (a, b) = (open(), open());
        let (one, two) = std::thread::scope(|s| {
            let two = s.spawn(|| side(&b, Kind::Flock, 2, 20, &board).unwrap());
            (
                side(&a, Kind::Flock, 1, 20, &board).unwrap(),
                two.join().unwrap(),
            )
        });
        assert_eq!((one.len(), two.len()), (20, 20));
        assert_eq!((board.overlaps(), board.stale_reads()), (0, 0));
    }

    /// A side whose peer process exited stops instead of waiting for it.
    #[test]
    fn a_side_stops_when_the_peer_exited() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("lock")).unwrap();
        let board = Board::default();
        board.peer_exited();
        let err = side(&file, Kind::Flock, 1, 5, &board).unwrap_err();
        assert!(err.to_string().contains("the other side exited"), "{err}");
    }

    /// Two mappings of one board file are one board.
    #[test]
    fn a_shared_board_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board");
        let one = SharedBoard::map(&path, true).unwrap();
        let two = SharedBoard::map(&path, false).unwrap();
        one.enter(1);
        two.enter(2);
        assert_eq!(one.overlaps(), 1);
        assert!(SharedBoard::map(&path, true).is_err(), "made once");
    }
}
