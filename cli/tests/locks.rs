//! Locks and sessions on real mounts, driven by real processes: byte-range
//! locks across two mounts, two `sqlite3` shells sharing one database,
//! fencing of a SIGSTOPped lock holder (evicted by `hafs evict` and by
//! expiry), recovery after `kill -9` of a mount, and the cache lease of a
//! mount that was alone when a second one arrives, and the names it caches
//! without default_permissions. Mounts are `hafs
//! mount` processes on one SQLite database; a worker process (this test
//! binary re-run with `HAFS_TEST_WORKER` set) holds locks and writes on
//! command. Needs root and /dev/fuse (see `support`).

// Real processes on real mounts: the OS clock is the only clock here.
#![allow(clippy::disallowed_methods)]
// flock(2) and fcntl(2) locks have no safe std wrapper.
#![allow(unsafe_code)]

#[path = "../../fuse/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{fuse_available, Mount};

const HAFS: &str = env!("CARGO_BIN_EXE_hafs");

/// One filesystem in one SQLite file, mounted as many times as asked.
struct Cluster {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    kv: String,
}

impl Cluster {
    fn new() -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let kv = format!("sqlite://{}", dir.join("hafs.db").display());
        let cluster = Cluster { _tmp: tmp, dir, kv };
        cluster.hafs(&["mkfs"]);
        cluster
    }

    fn mount(&self, name: &str, flags: &[&str]) -> Mount {
        let mut cmd = Command::new(HAFS);
        cmd.args(["--kv", &self.kv, "mount", "--description", name])
            .args(flags);
        Mount::start(cmd, &self.dir.join(name))
    }

    /// Run `hafs ARGS` against this cluster's database; must succeed.
    fn hafs(&self, args: &[&str]) -> String {
        let out: Output = Command::new(HAFS)
            .args(["--kv", &self.kv])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hafs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The client id of the mount process `pid`, if it is attached.
    fn client_of(&self, pid: u32) -> Option<String> {
        self.hafs(&["list-clients"])
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.get(2) == Some(&pid.to_string().as_str()))
            .map(|cols| cols[0].to_string())
    }
}

// ---- lock calls -------------------------------------------------------

fn flock_struct(typ: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value; the fields are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// fcntl F_SETLK / F_SETLKW; Err(errno).
fn setlk(f: &std::fs::File, typ: i32, start: i64, len: i64, wait: bool) -> Result<(), i32> {
    let fl = flock_struct(typ, start, len);
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    // SAFETY: the fd is open for the call and `fl` outlives it.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// fcntl F_GETLK: the conflicting lock as (type, start, len, pid), if any.
fn getlk(f: &std::fs::File, typ: i32, start: i64, len: i64) -> Option<(i32, i64, i64, i32)> {
    let mut fl = flock_struct(typ, start, len);
    // SAFETY: the fd is open for the call and `fl` outlives it.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_GETLK: {}", std::io::Error::last_os_error());
    (i32::from(fl.l_type) != libc::F_UNLCK).then_some((
        i32::from(fl.l_type),
        fl.l_start,
        fl.l_len,
        fl.l_pid,
    ))
}

fn flock(f: &std::fs::File, op: i32) -> Result<(), i32> {
    // SAFETY: the fd is open for the call.
    let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn open_rw(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

// ---- the worker process -----------------------------------------------

const WORKER_ENV: &str = "HAFS_TEST_WORKER";

/// A process that opens one file and obeys line commands on stdin:
/// `lock r|w|u START LEN`, `lockw …` (waiting), `flock`, `append TEXT`,
/// `read`; it answers `ok`, `err ERRNO` or the data read.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(path: &Path) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["worker", "--exact", "--nocapture", "--quiet"])
            .env(WORKER_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut w = Worker {
            child,
            stdin,
            stdout,
        };
        assert_eq!(w.ask("hello"), "ok");
        w
    }

    fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.answer()
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn answer(&mut self) -> String {
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the worker died"
            );
            // The test harness prints its own lines; answers are tagged.
            if let Some(answer) = line.trim_end().strip_prefix("@ ") {
                return answer.to_string();
            }
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reply(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("err {e}"),
    }
}

fn lock_type(word: &str) -> i32 {
    match word {
        "r" => libc::F_RDLCK,
        "w" => libc::F_WRLCK,
        _ => libc::F_UNLCK,
    }
}

#[test]
fn worker() {
    let Some(path) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    let mut file = open_rw(Path::new(&path));
    // Catch SIGUSR1 without SA_RESTART, so an interrupted lock wait returns
    // EINTR (with SA_RESTART the kernel restarts it, as for local files).
    extern "C" fn caught(_: libc::c_int) {}
    // SAFETY: an all-zero sigaction is valid; the handler is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = caught as *const () as usize;
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    let io = |r: std::io::Result<()>| reply(r.map_err(|e| e.raw_os_error().unwrap_or(0)));
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["hello"] => "ok".to_string(),
            // SAFETY: gettid has no arguments and cannot fail.
            ["tid"] => unsafe { libc::gettid() }.to_string(),
            [cmd @ ("lock" | "lockw"), typ, start, len] => reply(setlk(
                &file,
                lock_type(typ),
                start.parse().unwrap(),
                len.parse().unwrap(),
                *cmd == "lockw",
            )),
            ["flock"] => reply(flock(&file, libc::LOCK_EX)),
            ["append", text] => io(file
                .seek(SeekFrom::End(0))
                .and_then(|_| file.write_all(format!("{text}\n").as_bytes()))
                .and_then(|_| file.sync_all())),
            ["read"] => {
                let mut text = String::new();
                match file
                    .seek(SeekFrom::Start(0))
                    .and_then(|_| file.read_to_string(&mut text))
                {
                    Ok(_) => text.replace('\n', "|"),
                    Err(e) => format!("err {}", e.raw_os_error().unwrap_or(0)),
                }
            }
            other => panic!("unknown worker command {other:?}"),
        };
        println!("@ {answer}");
    }
}

// ---- tests ------------------------------------------------------------

/// Two mounts hold disjoint ranges of one file at once; an overlapping
/// request fails (F_SETLK) or waits (F_SETLKW) until the holder releases;
/// F_GETLK shows the holder, with its pid when it is on the asking mount.
#[test]
fn byte_range_locks_across_mounts() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let (a, b) = (cluster.mount("a", &[]), cluster.mount("b", &[]));
    std::fs::write(a.p("f"), vec![b'.'; 300]).unwrap();
    let fa = open_rw(&a.p("f"));
    let fb = open_rw(&b.p("f"));
    setlk(&fa, libc::F_WRLCK, 0, 100, false).unwrap();
    setlk(&fb, libc::F_WRLCK, 100, 100, false).expect("a disjoint range on the other mount");
    assert_eq!(setlk(&fb, libc::F_WRLCK, 50, 100, false), Err(libc::EAGAIN));
    assert_eq!(setlk(&fb, libc::F_RDLCK, 99, 1, false), Err(libc::EAGAIN));
    let (typ, start, len, pid) = getlk(&fb, libc::F_RDLCK, 50, 100).expect("a's lock shows");
    assert_eq!((typ, start, len), (libc::F_WRLCK, 0, 100));
    assert_eq!(pid, 0, "the holder is on another client: no pid");
    assert_eq!(
        getlk(&fb, libc::F_WRLCK, 200, 0),
        None,
        "nothing held past 200"
    );
    // A process on mount a holds [200, 300): its pid shows to a's asker.
    let mut w = Worker::start(&a.p("f"));
    assert_eq!(w.ask("lock r 200 100"), "ok");
    let held = getlk(&fa, libc::F_WRLCK, 250, 1).expect("the worker's lock shows");
    assert_eq!(held, (libc::F_RDLCK, 200, 100, w.pid()));
    assert_eq!(
        setlk(&fb, libc::F_RDLCK, 200, 100, false),
        Ok(()),
        "read locks share"
    );
    // F_SETLKW on b waits for a's [0, 100) to go.
    let released = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (fb, released) = (fb.try_clone().unwrap(), released.clone());
        std::thread::spawn(move || {
            setlk(&fb, libc::F_WRLCK, 0, 150, true).unwrap();
            assert!(
                released.load(Ordering::SeqCst),
                "F_SETLKW returned while a held the range"
            );
            fb // closing any descriptor would drop all of b's POSIX locks
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiter.is_finished(), "F_SETLKW did not wait");
    released.store(true, Ordering::SeqCst);
    setlk(&fa, libc::F_UNLCK, 0, 100, false).unwrap();
    let fb2 = waiter.join().expect("the waiter failed");
    let (typ, start, len, _) = getlk(&fa, libc::F_RDLCK, 0, 0).expect("b's lock shows");
    assert_eq!(
        (typ, start, len),
        (libc::F_WRLCK, 0, 200),
        "b's [0,150) and [100,200) merged"
    );
    // The worker's exit releases its lock; then b can take the rest.
    drop(w);
    setlk(&fb, libc::F_WRLCK, 200, 100, true).unwrap();
    // Closing any of a process's descriptors of a file drops all its POSIX
    // locks on it (POSIX's rule, which sqlite works around).
    drop(fb2);
    assert_eq!(getlk(&fa, libc::F_WRLCK, 0, 0), None);
}

/// A process waiting for a lock held on another mount: a caught signal
/// ends the wait with EINTR, SIGKILL ends the process promptly, and neither
/// leaves a lock or a queued request behind.
#[test]
fn a_signal_ends_a_lock_wait() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let (a, b) = (cluster.mount("a", &[]), cluster.mount("b", &[]));
    std::fs::write(a.p("f"), b"").unwrap();
    let fa = open_rw(&a.p("f"));
    for (kind, take) in [("fcntl", "lockw w 0 0"), ("flock", "flock")] {
        let hold = |on: bool| {
            if kind == "flock" {
                flock(&fa, if on { libc::LOCK_EX } else { libc::LOCK_UN })
            } else {
                setlk(
                    &fa,
                    if on { libc::F_WRLCK } else { libc::F_UNLCK },
                    0,
                    0,
                    false,
                )
            }
        };
        hold(true).unwrap();
        // A caught signal: EINTR.
        let mut waiter = Worker::start(&b.p("f"));
        let tid = waiter.ask("tid");
        waiter.send(take);
        std::thread::sleep(Duration::from_millis(500));
        // To the waiting thread itself: a process-wide signal may go to any
        // thread of the worker (as on a local filesystem, where another
        // thread taking it leaves the wait alone).
        let tid: i32 = tid.parse().unwrap();
        let sent = Instant::now();
        // SAFETY: tgkill takes plain integers; a wrong id only fails the call.
        let rc = unsafe { libc::syscall(libc::SYS_tgkill, waiter.pid(), tid, libc::SIGUSR1) };
        assert_eq!(rc, 0, "tgkill: {}", std::io::Error::last_os_error());
        assert_eq!(waiter.answer(), format!("err {}", libc::EINTR), "{kind}");
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "{kind}: EINTR took {:?}",
            sent.elapsed()
        );
        // SIGKILL: the waiter dies (it used to hang, unkillable, until granted).
        let mut victim = Worker::start(&b.p("f"));
        victim.send(take);
        std::thread::sleep(Duration::from_millis(500));
        let sent = Instant::now();
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "{kind}: kill -9 took {:?}",
            sent.elapsed()
        );
        // Nothing left behind: once a releases, b takes the lock at once.
        hold(false).unwrap();
        let fb = open_rw(&b.p("f"));
        let taken = if kind == "flock" {
            flock(&fb, libc::LOCK_EX | libc::LOCK_NB)
        } else {
            setlk(&fb, libc::F_WRLCK, 0, 0, false)
        };
        assert_eq!(taken, Ok(()), "{kind}: the dead waiters left a lock behind");
        drop(fb);
        drop(waiter);
    }
}

/// Two sqlite3 shells, one per mount, each insert 1,000 rows into one
/// database in the default rollback-journal mode with normal locking.
#[test]
fn sqlite_shares_a_database_across_mounts() {
    if !fuse_available() {
        return;
    }
    assert!(
        Command::new("sqlite3").arg("-version").output().is_ok(),
        "the sqlite3 shell is missing: apt-get install sqlite3"
    );
    let cluster = Cluster::new();
    let (a, b) = (cluster.mount("a", &[]), cluster.mount("b", &[]));
    let sqlite = |db: &Path, script: String| {
        let mut child = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || stdin.write_all(script.as_bytes()).unwrap());
        child
    };
    let finish = |child: Child| {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "sqlite3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    finish(sqlite(
        &a.p("app.db"),
        "CREATE TABLE t(who TEXT, n INTEGER, UNIQUE(who, n));".into(),
    ));
    let started = Instant::now();
    let inserts = |who: &str| {
        let mut s = String::from(".bail on\n.timeout 60000\nPRAGMA journal_mode;\n");
        for n in 0..1000 {
            s.push_str(&format!("INSERT INTO t VALUES('{who}', {n});\n"));
        }
        s
    };
    let pa = sqlite(&a.p("app.db"), inserts("a"));
    let pb = sqlite(&b.p("app.db"), inserts("b"));
    assert_eq!(finish(pa).trim(), "delete", "rollback-journal mode");
    assert_eq!(finish(pb).trim(), "delete");
    eprintln!(
        "2 x 1,000 autocommit inserts across two mounts: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let check = finish(sqlite(
        &b.p("app.db"),
        "PRAGMA integrity_check;\nSELECT who, count(*), sum(n) FROM t GROUP BY who;\n".into(),
    ));
    assert_eq!(check, "ok\na|1000|499500\nb|1000|499500\n");
}

/// A lock holder's mount is SIGSTOPped and evicted; another mount takes the
/// lock and writes; after SIGCONT the holder's writes and reads fail with
/// EIO and the file holds nothing it wrote after the eviction.
fn fencing(by_expiry: bool) {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let flags: &[&str] = if by_expiry {
        &["--heartbeat", "1", "--expiry", "3"]
    } else {
        &[]
    };
    let (a, b) = (cluster.mount("a", flags), cluster.mount("b", flags));
    let mut holder = Worker::start(&a.p("f"));
    assert_eq!(holder.ask("flock"), "ok");
    assert_eq!(holder.ask("append a-before"), "ok");
    let client = cluster.client_of(a.pid()).expect("mount a is a client");
    let listed: serde_json::Value =
        serde_json::from_str(&cluster.hafs(&["list-clients", "--json"])).expect("valid JSON");
    let row = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == client.as_str()))
        .expect("a's row in --json");
    assert_eq!(
        (row["description"].as_str(), row["pid"].as_u64()),
        (Some("a"), Some(u64::from(a.pid())))
    );
    assert_eq!(row["locked_inodes"], 1, "a holds one lock");
    let published = if by_expiry {
        3_000_000_000u64
    } else {
        30_000_000_000
    };
    assert_eq!(row["expiry_ns"], published, "a publishes its --expiry");
    a.signal("STOP");
    if by_expiry {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.client_of(a.pid()).is_some() {
            assert!(
                Instant::now() < deadline,
                "b never evicted the stopped mount"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    } else {
        let out = cluster.hafs(&["evict", &client]);
        assert!(out.contains("evicted"), "hafs evict said: {out}");
        assert_eq!(cluster.client_of(a.pid()), None);
    }
    let mut fb = open_rw(&b.p("f"));
    flock(&fb, libc::LOCK_EX).expect("the evicted holder's lock was released");
    fb.seek(SeekFrom::End(0)).unwrap();
    fb.write_all(b"b-took-over\n").unwrap();
    a.signal("CONT");
    assert_eq!(holder.ask("append a-after"), format!("err {}", libc::EIO));
    assert_eq!(holder.ask("read"), format!("err {}", libc::EIO));
    assert_eq!(
        std::fs::read_to_string(b.p("f")).unwrap(),
        "a-before\nb-took-over\n"
    );
    assert_eq!(
        support::errno(std::fs::metadata(a.p("f"))),
        libc::EIO,
        "every operation on the fenced mount fails"
    );
}

#[test]
fn an_evicted_holder_is_fenced_out() {
    fencing(false);
}

#[test]
fn an_expired_holder_is_fenced_out() {
    fencing(true);
}

/// Mounts may run with different `--expiry`: one with a short expiry
/// judges a longer one by that one's own (published) expiry, so a pause
/// the long one's expiry allows keeps its lock.
#[test]
fn a_mount_is_judged_by_its_own_expiry_not_the_judges() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let a = cluster.mount("a", &["--heartbeat", "1", "--expiry", "8"]);
    let b = cluster.mount("b", &["--heartbeat", "1", "--expiry", "3"]);
    let mut holder = Worker::start(&a.p("f"));
    assert_eq!(holder.ask("flock"), "ok");
    // Stopped past b's expiry, well within a's: still attached after.
    a.signal("STOP");
    std::thread::sleep(Duration::from_secs(5));
    let attached = cluster.client_of(a.pid()).is_some();
    a.signal("CONT");
    assert!(attached, "b evicted a by b's own 3 s expiry");
    let fb = open_rw(&b.p("f"));
    assert_eq!(
        flock(&fb, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    assert_eq!(holder.ask("append still-mine"), "ok");
    // Stopped past a's own expiry: evicted, and its lock goes to b.
    a.signal("STOP");
    let stopped = Instant::now();
    flock(&fb, libc::LOCK_EX).unwrap();
    let waited = stopped.elapsed();
    a.signal("CONT");
    assert!(
        waited >= Duration::from_secs(7),
        "a's lock was broken after {waited:?}, within its 8 s expiry"
    );
    drop((holder, fb));
    drop((a, b));
}

/// `kill -9` of a mount holding a lock: the lock comes free within the
/// expiry (plus a heartbeat for the sweep), and fsck finds nothing wrong.
#[test]
fn a_killed_mount_loses_its_locks_and_leaves_fsck_clean() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let flags = ["--heartbeat", "1", "--expiry", "3"];
    let (a, b) = (cluster.mount("a", &flags), cluster.mount("b", &flags));
    let mut holder = Worker::start(&a.p("f"));
    assert_eq!(holder.ask("lock w 0 0"), "ok");
    assert_eq!(holder.ask("append locked"), "ok");
    let fb = open_rw(&b.p("f"));
    assert_eq!(setlk(&fb, libc::F_WRLCK, 0, 0, false), Err(libc::EAGAIN));
    a.signal("KILL");
    let killed = Instant::now();
    drop(holder);
    drop(a); // reaps the process and lazily unmounts, as an admin would
    setlk(&fb, libc::F_WRLCK, 0, 0, true).unwrap();
    let waited = killed.elapsed();
    eprintln!(
        "lock of a kill -9ed mount free after {:.1}s (expiry 3s)",
        waited.as_secs_f64()
    );
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
    setlk(&fb, libc::F_UNLCK, 0, 0, false).unwrap();
    // After umount -l, a new mount on the same mount point recovers.
    let again = cluster.mount("a", &flags);
    assert_eq!(std::fs::read_to_string(again.p("f")).unwrap(), "locked\n");
    drop(again);
    drop(fb);
    drop(b);
    let report = cluster.hafs(&["fsck"]);
    assert!(report.contains("clean"), "fsck: {report}");
}

/// FUSE does not say whether a lock request came from flock(2) or fcntl(2)
/// (fuser drops `lk_flags`): the kernel sends flock as a whole-file write
/// or read lock owned by the open file. So on hafs the two kinds share one
/// lock space — stricter than a local filesystem, where they are
/// independent. This pins down exactly what users see.
#[test]
fn flock_and_fcntl_share_one_lock_space() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let (a, b) = (cluster.mount("a", &[]), cluster.mount("b", &[]));
    std::fs::write(a.p("f"), b"x").unwrap();
    let fa = open_rw(&a.p("f"));
    let fb = open_rw(&b.p("f"));
    flock(&fa, libc::LOCK_EX).unwrap();
    assert_eq!(setlk(&fb, libc::F_WRLCK, 0, 0, false), Err(libc::EAGAIN));
    assert_eq!(
        setlk(&fb, libc::F_RDLCK, 5, 1, false),
        Err(libc::EAGAIN),
        "flock covers every byte"
    );
    let (typ, start, len, _) = getlk(&fb, libc::F_RDLCK, 0, 0).expect("the flock shows to F_GETLK");
    assert_eq!((typ, start, len), (libc::F_WRLCK, 0, 0));
    flock(&fa, libc::LOCK_UN).unwrap();
    // A shared flock and fcntl read locks coexist; a write lock does not.
    flock(&fa, libc::LOCK_SH).unwrap();
    assert_eq!(setlk(&fb, libc::F_RDLCK, 0, 0, false), Ok(()));
    assert_eq!(
        flock(&fb, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
}

/// `umount` from outside (and SIGINT) end the mount process cleanly and
/// detach its client, so it holds nothing and is not left to expire.
#[test]
fn external_umount_and_sigint_detach_the_client() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let mut a = cluster.mount("a", &[]);
    let b = cluster.mount("b", &[]);
    std::fs::write(a.p("f"), b"x").unwrap();
    assert!(cluster.client_of(a.pid()).is_some());
    let status = Command::new("umount").arg(&a.path).status().unwrap();
    assert!(status.success(), "umount failed");
    let exited = a.child.wait().unwrap();
    assert!(
        exited.success(),
        "hafs mount exited with {exited} after umount"
    );
    assert_eq!(
        cluster.client_of(a.pid()),
        None,
        "umount left the client attached"
    );
    b.signal("INT");
    let mut b = b;
    assert!(
        b.child.wait().unwrap().success(),
        "hafs mount failed on SIGINT"
    );
    assert_eq!(
        cluster.client_of(b.pid()),
        None,
        "SIGINT left the client attached"
    );
    assert!(!support::is_mounted(&b.path));
}

/// The `list-clients --json` row of the mount process `pid`, if attached.
fn client_row(cluster: &Cluster, pid: u32) -> Option<serde_json::Value> {
    let out = cluster.hafs(&["list-clients", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .cloned()
}

/// Whether the mount process `pid` holds the cache lease, by `list-clients`.
fn caches(cluster: &Cluster, pid: u32) -> bool {
    client_row(cluster, pid).is_some_and(|r| r["cache_lease"] == true)
}

fn until(what: &str, cond: impl Fn() -> bool) {
    // Taking the lease back waits out two transaction age limits (cache.rs).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cache lease on real mounts: a mount alone holds it (its kernel
/// caches attributes and, with default_permissions, names — positive and
/// negative); a second mount appears only once those caches expired, so
/// every change made through the second mount is seen through the first at
/// once — a chmod, an unlink, a create of a name the first just found
/// absent. Without the wait, the first mount would show the old mode, the
/// unlinked file and no new file for up to the 1 s TTL. When the second
/// mount leaves, the first takes the lease back.
#[test]
fn a_second_mount_sees_changes_at_once_after_the_first_cached() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let a = cluster.mount("a", &["-o", "default_permissions"]);
    until("a to take the lease", || caches(&cluster, a.pid()));
    std::fs::write(a.p("f"), b"x").unwrap();
    std::fs::write(a.p("gone"), b"x").unwrap();
    // Fill a's kernel caches: attributes, names, and an absent name.
    let before = std::fs::metadata(a.p("f")).unwrap();
    assert_eq!(before.mode() & 0o777, 0o644);
    assert!(a.p("gone").exists());
    assert!(!a.p("new").exists());
    let b = cluster.mount("b", &[]);
    assert!(!caches(&cluster, a.pid()), "a still holds the lease");
    std::fs::set_permissions(b.p("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(b.p("gone")).unwrap();
    std::fs::write(b.p("new"), b"y").unwrap();
    assert_eq!(std::fs::metadata(a.p("f")).unwrap().mode() & 0o777, 0o600);
    assert!(!a.p("gone").exists(), "a still sees the unlinked file");
    assert_eq!(std::fs::read(a.p("new")).unwrap(), b"y");
    // Neither caches while both are mounted.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!caches(&cluster, a.pid()) && !caches(&cluster, b.pid()));
    drop(b);
    until("a to take the lease back", || caches(&cluster, a.pid()));
}

/// Whether user `nobody` can stat `path` (through `setpriv`).
fn nobody_sees(path: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "stat"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("setpriv (util-linux)")
        .success()
}

/// Without default_permissions the kernel walks a cached name with no
/// search-permission check, so a mount caches names only in directories
/// everyone may search — and a chmod that takes search away, or a rename
/// into a directory not everyone may search, waits out the names cached
/// before it returns, also for names mkdir, symlink and link made (but a
/// rename out of a private directory into a public one does not). Right
/// after either, another user is refused: without
/// the wait, `nobody` would still reach `D/f` and `R/x` through the names
/// its earlier stats cached (and the chmod and rename would take
/// milliseconds, not a TTL).
#[test]
fn names_cached_without_default_permissions_never_outlive_search_permission() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    std::fs::set_permissions(&cluster.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = cluster.mount("a", &["-o", "allow_other"]);
    until("a to take the lease", || caches(&cluster, a.pid()));
    let mode = |m| std::fs::Permissions::from_mode(m);
    std::fs::set_permissions(&a.path, mode(0o755)).unwrap();
    for (dir, m) in [("D", 0o755), ("P", 0o755), ("R", 0o700)] {
        std::fs::create_dir(a.p(dir)).unwrap();
        std::fs::set_permissions(a.p(dir), mode(m)).unwrap();
    }
    std::fs::write(a.p("D/f"), b"x").unwrap();
    std::fs::write(a.p("P/x"), b"x").unwrap();
    assert!(nobody_sees(&a.p("D/f")) && nobody_sees(&a.p("P/x")));

    let started = Instant::now();
    std::fs::set_permissions(a.p("D"), mode(0o700)).unwrap();
    let chmod_took = started.elapsed();
    assert!(
        !nobody_sees(&a.p("D/f")),
        "nobody walked into D after chmod 700"
    );
    assert!(
        chmod_took > Duration::from_millis(500),
        "chmod waited for no cached name"
    );

    std::fs::rename(a.p("P/x"), a.p("R/x")).unwrap();
    assert!(
        !nobody_sees(&a.p("R/x")),
        "nobody walked into R through a moved name"
    );
    // Where everyone may search, nothing waits.
    std::fs::write(a.p("P/y"), b"y").unwrap();
    assert!(nobody_sees(&a.p("P/y")));
    let started = Instant::now();
    std::fs::rename(a.p("P/y"), a.p("P/z")).unwrap();
    std::fs::set_permissions(a.p("P"), mode(0o711)).unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(nobody_sees(&a.p("P/z")));
    // Nor where no moved name can be cached (both directories private),
    // though names are cached elsewhere (P/z, just now).
    std::fs::create_dir(a.p("R2")).unwrap();
    std::fs::set_permissions(a.p("R2"), mode(0o700)).unwrap();
    std::fs::write(a.p("R/q"), b"q").unwrap();
    let started = Instant::now();
    std::fs::rename(a.p("R/q"), a.p("R2/q")).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a rename between private directories waited for names elsewhere"
    );
    // Nor out of a private directory into one everyone may search, where
    // names are cached (P/z): the name that moved came from where none is
    // (a temporary file written in a private directory, renamed into place).
    std::fs::write(a.p("R/t"), b"t").unwrap();
    assert!(nobody_sees(&a.p("P/z")));
    let started = Instant::now();
    std::fs::rename(a.p("R/t"), a.p("P/t")).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a rename out of a private directory waited for names in the public one"
    );
    assert!(nobody_sees(&a.p("P/t")));

    // Names that mkdir, symlink and link made are cached as they reply:
    // the chmod waits for those too. (The kernel looks each name up just
    // before making it, and that LOOKUP's grant alone ends about as late,
    // so this cannot tell the reply's own grant from it; what it checks is
    // that no name made here stays walkable.)
    std::fs::create_dir(a.p("M")).unwrap();
    std::fs::set_permissions(a.p("M"), mode(0o755)).unwrap();
    std::fs::create_dir(a.p("M/s")).unwrap();
    std::os::unix::fs::symlink("s", a.p("M/l")).unwrap();
    std::fs::hard_link(a.p("P/z"), a.p("M/h")).unwrap();
    let started = Instant::now();
    std::fs::set_permissions(a.p("M"), mode(0o700)).unwrap();
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "chmod did not wait for the names mkdir, symlink and link made"
    );
    for made in ["M/s", "M/l", "M/h"] {
        assert!(!nobody_sees(&a.p(made)), "nobody walked to {made}");
    }
}

/// `hafs bench dir`'s lock ping-pong: this process is one side, a `hafs
/// bench lock-peer` process the other, on one mount and across two. Both
/// lock kinds pass back and forth (an `fcntl` lock can only pass between
/// processes), the peer's hand-offs come back, neither side ever holds the
/// lock while the other does, and each reads what the other wrote under it.
#[test]
fn bench_passes_flock_and_fcntl_between_two_processes() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let (a, b) = (cluster.mount("a", &[]), cluster.mount("b", &[]));
    for other in [None, Some(&b.path)] {
        let mut cmd = Command::new(HAFS);
        cmd.args(["bench", "dir"]).arg(&a.path).args([
            "--only",
            "lock",
            "--handoffs",
            "30",
            "--json",
        ]);
        if let Some(other) = other {
            cmd.arg("--other-mount").arg(other);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for kind in ["flock", "fcntl"] {
            let median = m[format!("lock.{kind}_handoff_median")].as_f64();
            let p99 = m[format!("lock.{kind}_handoff_p99")].as_f64();
            let (median, p99) = (median.unwrap(), p99.unwrap());
            // A hand-off crosses the FUSE daemon at least twice.
            assert!(median > 0.0 && p99 >= median, "{kind}: {m}");
            let count = |what: &str| m[format!("lock.{kind}_{what}")].as_f64();
            // Both sides' hand-offs: the peer process's came back too.
            assert_eq!(count("handoffs"), Some(60.0), "{m}");
            assert_eq!(count("overlaps"), Some(0.0), "{m}");
            assert_eq!(count("stale_reads"), Some(0.0), "{m}");
        }
    }
    assert!(
        std::fs::read_dir(a.p("")).unwrap().next().is_none(),
        "the bench removes what it made"
    );
}

/// The open records of a mount's client, by `list-clients`.
fn open_inodes(cluster: &Cluster, pid: u32) -> u64 {
    client_row(cluster, pid)
        .and_then(|r| r["open_inodes"].as_u64())
        .unwrap_or(0)
}

/// A mount alone opens files without recording them (the cache lease
/// covers them, `hafs_core::ops::open`). A file it still holds open when a
/// second mount arrives was recorded before the second got in: when the
/// second unlinks it, neither the second's sweeps nor `hafs gc` free it past
/// its grace, and it reads whole through the first's handle until closed.
#[test]
fn a_file_opened_by_a_lone_mount_outlives_another_mounts_unlink() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let flags = ["--unlink-grace", "0.1", "--heartbeat", "1"];
    let a = cluster.mount("a", &flags);
    until("a to take the lease", || caches(&cluster, a.pid()));
    // The lease is stored a moment before the mount acts on it.
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(a.p("f"), b"precious").unwrap();
    let mut held = std::fs::File::open(a.p("f")).unwrap();
    assert_eq!(
        open_inodes(&cluster, a.pid()),
        0,
        "recorded under the lease"
    );
    let b = cluster.mount("b", &flags);
    assert!(!caches(&cluster, a.pid()));
    assert_eq!(
        open_inodes(&cluster, a.pid()),
        1,
        "recorded before b got in"
    );
    std::fs::remove_file(b.p("f")).unwrap();
    // Past the grace, through two of b's heartbeats (each sweeps) and a gc.
    std::thread::sleep(Duration::from_millis(2500));
    cluster.hafs(&["gc"]);
    let mut text = String::new();
    held.seek(SeekFrom::Start(0)).unwrap();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "precious");
    drop(held);
    until("a's close to clear its record", || {
        open_inodes(&cluster, a.pid()) == 0
    });
    let out = cluster.hafs(&["fsck"]);
    assert!(!out.contains("violation"), "{out}");
    drop(b);
}

/// `pread` of the whole small file `f`.
fn read_all(f: &std::fs::File) -> String {
    let mut buf = vec![0u8; 64];
    let n = f.read_at(&mut buf, 0).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Overwrite the file open as `w` in place with `text` (same size) and set
/// its mtime back to what it was, as `touch -r` after an edit would: the
/// kernel's own check (size or mtime changed) cannot see this change.
fn rewrite_keeping_mtime(w: &std::fs::File, text: &str) {
    let before = w.metadata().unwrap().modified().unwrap();
    w.write_at(text.as_bytes(), 0).unwrap();
    w.set_modified(before).unwrap();
    assert_eq!(w.metadata().unwrap().modified().unwrap(), before);
}

fn open_w(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().write(true).open(path).unwrap()
}

/// Under the cache lease a read-only descriptor of a small file is served
/// from the kernel's page cache (cachestat shows its pages). Those pages
/// never outlive a change: a write through another descriptor of the same
/// mount (the kernel drops the pages it overwrites, and the changed mtime
/// drops the rest); that write with the mtime set back; the same done by a
/// second mount after the lease is revoked, before and after the first
/// mount read the file again; and, once the second mount leaves and the
/// first takes the lease back, through the old descriptor and through a
/// new open of another file changed meanwhile. Each change keeps the size,
/// and those with the mtime set back keep that too, so the kernel's own
/// check (size or mtime changed) cannot see them. The mount's own drops
/// catch them (each checked by removing it): without the drop at the first
/// GETATTR after the lease the first mount reads "v3" where "v4" was
/// written, without the one when the ctime moved "v5" where "v6" was,
/// without the one at the first GETATTR in a lease "v6+" where "v7+" was
/// (as it does when a LOOKUP in the lease may cache the attributes of a
/// file whose pages were not dropped yet). The drop at a file's first
/// cached open in a lease (its second open: the first is direct I/O)
/// cannot be shown on Linux 6.18 either: the first open, without
/// `FOPEN_KEEP_CACHE`, makes the kernel drop the pages itself (it did show
/// — "g1" where "g2" was — while the first open was the cached one; it
/// stays for two opens racing). A drop makes the kernel set
/// aside the attributes of the GETATTR it answers, size included: without
/// handing it the size another way, an append reads "v6" for "v6+".
/// The SETATTR drop is not what passes the "v3" step on Linux 6.18, whose
/// direct writes drop the pages they overwrite.
#[test]
fn cached_pages_never_outlive_a_change() {
    if !fuse_available() {
        return;
    }
    let cluster = Cluster::new();
    let a = cluster.mount("a", &[]);
    until("a to take the lease", || caches(&cluster, a.pid()));
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(a.p("f"), "v1").unwrap();
    std::fs::write(a.p("g"), "g1").unwrap();
    std::fs::write(a.p("probe"), "p").unwrap();
    // The second open of a file in a lease is the first through the page
    // cache.
    for second in [false, true] {
        let g = std::fs::File::open(a.p("g")).unwrap();
        assert_eq!(read_all(&g), "g1");
        if second {
            let pages = hafs_core::pagecache::cached_pages(&g);
            assert!(
                pages.is_none_or(|n| n > 0),
                "g's second open cached nothing"
            );
        }
    }
    // Past the TTLs: closing the gate will not drop g's name, so its inode
    // (and its pages) stays in a's kernel.
    std::thread::sleep(Duration::from_millis(1500));
    let once = std::fs::File::open(a.p("f")).unwrap();
    assert_eq!(read_all(&once), "v1");
    if hafs_core::pagecache::cached_pages(&once).is_some_and(|n| n > 0) {
        panic!("a file's first open in a lease cached pages");
    }
    drop(once);
    let held = std::fs::File::open(a.p("f")).unwrap();
    assert_eq!(read_all(&held), "v1");
    let Some(pages) = hafs_core::pagecache::cached_pages(&held) else {
        eprintln!("skipped: no cachestat(2) on this kernel");
        return;
    };
    assert!(pages > 0, "a read under the lease left no page cached");
    // Opened before the reads below: an open without FOPEN_KEEP_CACHE (a
    // writer's) drops the pages itself.
    let w = open_w(&a.p("f"));
    assert_eq!(read_all(&held), "v1");
    w.write_all_at(b"v2", 0).unwrap();
    assert_eq!(read_all(&held), "v2", "a write through the same mount");
    rewrite_keeping_mtime(&w, "v3");
    assert_eq!(read_all(&held), "v3", "a write, then the mtime set back");
    drop(w);
    let b = cluster.mount("b", &[]);
    assert!(!caches(&cluster, a.pid()));
    let w = open_w(&b.p("f"));
    rewrite_keeping_mtime(&w, "v4");
    assert_eq!(read_all(&held), "v4", "another mount's change");
    w.write_all_at(b"v5", 0).unwrap();
    assert_eq!(read_all(&held), "v5", "another mount's plain write");
    rewrite_keeping_mtime(&w, "v6");
    assert_eq!(
        read_all(&held),
        "v6",
        "another mount's change, pages cached"
    );
    w.write_all_at(b"v6+", 0).unwrap();
    assert_eq!(read_all(&held), "v6+", "another mount's append");
    // A drop makes the kernel set the reply of the GETATTR it answers
    // aside (its attributes may predate the drop): let it take the current
    // mtime and read again, so that it holds pages under current
    // attributes and only hafs can see the next change.
    held.metadata().unwrap();
    assert_eq!(read_all(&held), "v6+");
    assert!(hafs_core::pagecache::cached_pages(&held).unwrap() > 0);
    rewrite_keeping_mtime(&w, "v7+");
    rewrite_keeping_mtime(&open_w(&b.p("g")), "g2");
    drop(w);
    drop(b);
    until("a to take the lease back", || caches(&cluster, a.pid()));
    // Its gate opens a settle period after it took the lease: until then
    // the checks without the lease apply.
    until("a to cache pages again", || {
        let probe = std::fs::File::open(a.p("probe")).unwrap();
        read_all(&probe);
        hafs_core::pagecache::cached_pages(&probe) != Some(0)
    });
    // A LOOKUP refreshes the attributes before the read could ask.
    assert_eq!(std::fs::metadata(a.p("f")).unwrap().len(), 3);
    assert_eq!(read_all(&held), "v7+", "an old descriptor, the lease back");
    for second in [false, true] {
        let g = std::fs::File::open(a.p("g")).unwrap();
        assert_eq!(read_all(&g), "g2", "a new open, the lease back");
        if second {
            assert!(hafs_core::pagecache::cached_pages(&g).unwrap() > 0);
        }
    }
    drop(held);
}
