//! `hafs bench locks`: lock ping-pong between two real mounts of one
//! filesystem. Two `hafs mount` processes (this executable) serve one new
//! SQLite database in a scratch directory; one thread per mount takes the
//! lock on the shared file, checks whose mark the first byte holds, writes
//! its own, and releases. A *hand-off* is the time from one side's release
//! to the other side holding the lock — the latency an application sees
//! when it waits for a lock another machine gives up. Reported as median,
//! p99 and rate, for `flock` and for whole-file `fcntl` locks, side by side
//! in one run.

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
    /// Metadata, config-update, flock, big-directory and I/O workloads on
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
}

pub fn run(args: &BenchArgs, relaxed: bool) -> Result<(), String> {
    match &args.what {
        BenchWhat::Locks { rounds, dir } => locks(*rounds, dir.as_deref(), relaxed),
        BenchWhat::Dir(a) => crate::bench_dir::run_dir(a),
        BenchWhat::SqliteCommits { dir, seconds, json } => {
            crate::bench_dir::sqlite_commits(dir, *seconds, *json)
        }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Flock,
    Fcntl,
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

/// One side of the ping-pong: `rounds` hand-offs from the other side.
fn side(
    file: &File,
    kind: Kind,
    me: u8,
    rounds: usize,
    released: &[AtomicU64; 2],
    finished: &AtomicU64,
    epoch: Instant,
) -> std::io::Result<Vec<Duration>> {
    let mut handoffs = Vec::with_capacity(rounds);
    let mut byte = [0u8];
    let mut done = false;
    loop {
        // Keep passing the lock until both sides have their hand-offs.
        if !done && handoffs.len() >= rounds {
            done = true;
            finished.fetch_add(1, Ordering::SeqCst);
        }
        if done && finished.load(Ordering::SeqCst) == 2 {
            return Ok(handoffs);
        }
        lock(file, kind, true)?;
        let held = epoch.elapsed();
        file.read_at(&mut byte, 0)?;
        if byte[0] != me && byte[0] != 0 && handoffs.len() < rounds {
            let other = released[usize::from(1 - me % 2)].load(Ordering::SeqCst);
            handoffs.push(held.saturating_sub(Duration::from_nanos(other)));
        }
        file.write_at(&[me], 0)?;
        released[usize::from(me % 2)].store(epoch.elapsed().as_nanos() as u64, Ordering::SeqCst);
        lock(file, kind, false)?;
    }
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
            "{:<6} {:>10} {:>10} {:>10} {:>14}",
            "lock", "median", "p99", "max", "hand-offs/s"
        );
        for kind in [Kind::Flock, Kind::Fcntl] {
            let name = format!("{kind:?}").to_lowercase();
            std::fs::write(a.path.join(&name), [0u8]).map_err(|e| format!("{name}: {e}"))?;
            let open = |m: &MountProcess| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(m.path.join(&name))
                    .map_err(|e| format!("{name}: {e}"))
            };
            let (fa, fb) = (open(&a)?, open(&b)?);
            let released = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
            let finished = Arc::new(AtomicU64::new(0));
            // A benchmark of real processes outside simulation: the OS clock.
            #[allow(clippy::disallowed_methods)]
            let epoch = Instant::now();
            let other = {
                let (released, finished) = (released.clone(), finished.clone());
                std::thread::spawn(move || side(&fb, kind, 2, rounds, &released, &finished, epoch))
            };
            let mut all = side(&fa, kind, 1, rounds, &released, &finished, epoch)
                .map_err(|e| format!("{name}: {e}"))?;
            let theirs = other
                .join()
                .map_err(|_| "a bench thread panicked".to_string())?
                .map_err(|e| format!("{name}: {e}"))?;
            let elapsed = epoch.elapsed();
            all.extend(theirs);
            all.sort();
            println!(
                "{:<6} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>14.0}",
                name,
                percentile(&all, 0.5).as_secs_f64() * 1e3,
                percentile(&all, 0.99).as_secs_f64() * 1e3,
                all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
                all.len() as f64 / elapsed.as_secs_f64()
            );
        }
        Ok(())
    })();
    if remove {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}
