//! Real mounts: two `hafs-fuse` processes on one SQLite database (two
//! clients of one filesystem), driven through the kernel with std::fs,
//! shell tools and worker processes. Needs root and /dev/fuse; skipped with
//! a message otherwise.

// Real processes on real mounts: the OS clock is the only clock here.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod support;
use hafs_core::kv::synclog;
use hafs_core::kv::Mutation;
use hafs_core::pagecache::unwritten_pages;
use support::{errno, fuse_available, Mount};

fn mount(db: &Path, path: &Path) -> Mount {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hafs-fuse"));
    cmd.arg("--kv")
        .arg(format!("sqlite://{}", db.display()))
        .arg("--mkfs");
    Mount::start(cmd, path)
}

fn relaxed_mount(db: &Path, path: &Path) -> Mount {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hafs-fuse"));
    cmd.arg("--kv")
        .arg(format!("sqlite://{}", db.display()))
        .args(["--mkfs", "--relaxed-durability"]);
    Mount::start(cmd, path)
}

fn two_mounts(dir: &Path) -> (Mount, Mount) {
    let db = dir.join("hafs.db");
    let a = mount(&db, &dir.join("a"));
    let b = mount(&db, &dir.join("b"));
    (a, b)
}

#[test]
fn two_mounts_see_one_filesystem() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_mounts(tmp.path());
    std::fs::write(a.p("hello"), b"written through a").unwrap();
    assert_eq!(std::fs::read(b.p("hello")).unwrap(), b"written through a");
    std::fs::create_dir(a.p("dir")).unwrap();
    std::fs::rename(b.p("hello"), b.p("dir/moved")).unwrap();
    assert_eq!(
        std::fs::read(a.p("dir/moved")).unwrap(),
        b"written through a"
    );
    std::os::unix::fs::symlink("moved", a.p("dir/link")).unwrap();
    assert_eq!(
        std::fs::read_link(b.p("dir/link")).unwrap(),
        Path::new("moved")
    );
    assert_eq!(
        std::fs::read(b.p("dir/link")).unwrap(),
        b"written through a"
    );
    std::fs::hard_link(a.p("dir/moved"), a.p("hard")).unwrap();
    assert_eq!(std::fs::metadata(b.p("hard")).unwrap().nlink(), 2);
    std::fs::set_permissions(a.p("hard"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        std::fs::metadata(b.p("dir/moved")).unwrap().mode() & 0o7777,
        0o600
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(b.p("hard"))
        .unwrap();
    f.set_len(7).unwrap();
    assert_eq!(std::fs::read(a.p("hard")).unwrap(), b"written");
    // Errors are the errno Linux gives.
    assert_eq!(errno(std::fs::read(a.p("missing"))), libc::ENOENT);
    assert_eq!(errno(std::fs::create_dir(b.p("dir"))), libc::EEXIST);
    assert_eq!(errno(std::fs::remove_dir(a.p("dir"))), libc::ENOTEMPTY);
    assert_eq!(errno(std::fs::write(a.p("dir"), b"x")), libc::EISDIR);
    assert_eq!(errno(std::fs::read_dir(a.p("hard/x"))), libc::ENOTDIR);
    // An unlinked file stays readable through an open handle on the other mount.
    let mut open = std::fs::File::open(b.p("hard")).unwrap();
    std::fs::remove_file(a.p("hard")).unwrap();
    std::fs::remove_file(a.p("dir/moved")).unwrap();
    let mut text = String::new();
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "written");
    drop(open);
    let names: Vec<_> = std::fs::read_dir(b.p("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["link"]);
}

/// A reader looping through b during 1,000 write-temp-then-rename updates
/// through a never sees a missing or partial file.
#[test]
fn atomic_updates_are_never_seen_half_done() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_mounts(tmp.path());
    let version = |n: usize| format!("{n:08}\n").repeat(1000);
    std::fs::write(a.p("config"), version(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, stop) = (b.p("config"), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut file =
                    std::fs::File::open(&path).expect("config missing during an update (open)");
                let mut text = String::new();
                file.read_to_string(&mut text)
                    .expect("reading an open config failed");
                let first = &text[..9];
                assert_eq!(text, first.repeat(1000), "partial or mixed file seen");
                reads += 1;
            }
            reads
        })
    };
    for n in 1..=1000 {
        let tmp_path = a.p("config.tmp");
        let mut f = std::fs::File::create(&tmp_path).unwrap();
        f.write_all(version(n).as_bytes()).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::rename(&tmp_path, a.p("config")).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw a bad file");
    assert!(reads > 10, "the reader barely ran ({reads} reads)");
    assert_eq!(
        std::fs::read_to_string(b.p("config")).unwrap(),
        version(1000)
    );
}

const WORKER_ENV: &str = "HAFS_TEST_LOCK_WORKER";

/// Worker process: increment the counter file N times under a lock.
#[test]
fn lock_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let (path, kind, n) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let n: usize = n.parse().unwrap();
    for _ in 0..n {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        lock(&f, kind, true);
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        let v: u64 = text.trim().parse().unwrap_or(0);
        f.set_len(0).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all((v + 1).to_string().as_bytes()).unwrap();
        lock(&f, kind, false);
    }
}

#[allow(unsafe_code)] // fcntl(2) has no safe std wrapper
fn lock(f: &std::fs::File, kind: &str, take: bool) {
    use std::os::fd::AsRawFd;
    if kind == "flock" {
        let op = if take { libc::LOCK_EX } else { libc::LOCK_UN };
        flock(f, op).unwrap_or_else(|e| panic!("flock failed: {e}"));
        return;
    }
    // SAFETY: zeroed flock is a valid "whole file" lock description.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if take { libc::F_WRLCK } else { libc::F_UNLCK } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: fd is valid and fl outlives the call.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLKW, &fl) };
    assert_eq!(rc, 0, "{kind} failed: {}", std::io::Error::last_os_error());
}

/// 4 processes on 2 mounts each increment a counter 500 times under flock,
/// then again under fcntl; the count is exact.
#[test]
fn locks_exclude_across_mounts() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_mounts(tmp.path());
    for kind in ["flock", "fcntl"] {
        std::fs::write(a.p(kind), b"0").unwrap();
        let started = Instant::now();
        let workers: Vec<Child> = (0..4)
            .map(|i| {
                let mount = if i % 2 == 0 { &a } else { &b };
                let spec = format!("{}|{kind}|500", mount.p(kind).display());
                Command::new(std::env::current_exe().unwrap())
                    .args(["lock_worker", "--exact", "--nocapture"])
                    .env(WORKER_ENV, spec)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut w in workers {
            assert!(w.wait().unwrap().success(), "a {kind} worker failed");
        }
        let count = std::fs::read_to_string(b.p(kind)).unwrap();
        assert_eq!(count, "2000", "{kind}: lost increments");
        eprintln!(
            "{kind}: 2000 locked increments in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}

#[allow(unsafe_code)] // flock(2) has no safe std wrapper
fn flock(f: &std::fs::File, op: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fd is a valid open descriptor for the call's duration.
    match unsafe { libc::flock(f.as_raw_fd(), op) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// `flock(op)` on another thread, answered within 5 s or reported as stuck;
/// gives the file back.
fn flock_soon(f: std::fs::File, op: i32) -> (std::fs::File, std::io::Result<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got = flock(&f, op);
        let _ = tx.send((f, got));
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("flock({op}) still waiting after 5 s"))
}

/// Wait until a shared `flock` through `mount` is refused: an exclusive
/// request is queued (waiters are served in order).
fn until_an_exclusive_waiter_is_queued(path: &Path) {
    let started = Instant::now();
    loop {
        let probe = std::fs::File::open(path).unwrap();
        if flock(&probe, libc::LOCK_SH | libc::LOCK_NB).is_err() {
            return;
        }
        assert!(started.elapsed().as_secs() < 10, "no waiter queued");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `flock` conversions with a waiter on the other mount that waits for
/// them. A holder's downgrade and upgrade go ahead at once, as on ext4 (a
/// version that queued them behind the waiter hung the upgrade forever).
/// Two shared holders that both upgrade: the second gets EDEADLK and keeps
/// its shared lock, instead of both hanging.
#[test]
fn flock_conversions_never_wait_for_their_own_waiters() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_mounts(tmp.path());
    std::fs::write(a.p("f"), b"").unwrap();
    let holder = std::fs::File::open(a.p("f")).unwrap();
    flock(&holder, libc::LOCK_EX).unwrap();
    let waiter = {
        let path = b.p("f");
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            flock(&f, libc::LOCK_EX).map(|()| f)
        })
    };
    until_an_exclusive_waiter_is_queued(&a.p("f"));
    let (holder, got) = flock_soon(holder, libc::LOCK_SH);
    got.expect("downgrade with a waiter queued");
    let (holder, got) = flock_soon(holder, libc::LOCK_EX);
    got.expect("upgrade with a waiter queued");
    assert!(!waiter.is_finished(), "the waiter got a held lock");
    drop(holder);
    let waiter_file = waiter.join().unwrap().expect("the waiter's lock");
    drop(waiter_file);

    let first = std::fs::File::open(a.p("f")).unwrap();
    let second = std::fs::File::open(b.p("f")).unwrap();
    flock(&first, libc::LOCK_SH).unwrap();
    flock(&second, libc::LOCK_SH).unwrap();
    let first_upgrade = std::thread::spawn(move || flock(&first, libc::LOCK_EX).map(|()| first));
    until_an_exclusive_waiter_is_queued(&b.p("f"));
    let (second, got) = flock_soon(second, libc::LOCK_EX);
    let err = got.expect_err("both upgrades granted");
    assert_eq!(err.raw_os_error(), Some(libc::EDEADLK), "{err}");
    assert!(
        !first_upgrade.is_finished(),
        "the first upgrade ignored a shared lock"
    );
    drop(second);
    let first = first_upgrade.join().unwrap().expect("the first upgrade");
    drop(first);
}

#[allow(unsafe_code)] // fcntl(2) has no safe std wrapper
fn ofd_lock(f: &std::fs::File, kind: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is a valid whole-file description (l_pid must
    // be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: fd is valid and fl outlives the call.
    match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// An open-file-description lock (`F_OFD_SETLK`, used by QEMU and others)
/// belongs to the open file: another descriptor's close leaves it, the
/// open file's last close ends it. FUSE tells the daemon neither (no
/// FLUSH carries that owner); a build that relied on FLUSH and flock's
/// RELEASE kept such a lock until unmount.
#[test]
fn ofd_locks_end_with_their_open_file() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_mounts(tmp.path());
    std::fs::write(a.p("f"), b"").unwrap();
    let rw = |path: std::path::PathBuf| {
        let mut open = std::fs::OpenOptions::new();
        open.read(true).write(true).open(path).unwrap()
    };
    let holder = rw(a.p("f"));
    ofd_lock(&holder, libc::F_WRLCK).unwrap();
    drop(rw(a.p("f")));
    let other = rw(b.p("f"));
    let err = ofd_lock(&other, libc::F_WRLCK).expect_err("another close ended the OFD lock");
    assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "{err}");
    drop(holder);
    // RELEASE reaches the daemon after close(2) returned.
    let started = Instant::now();
    while let Err(e) = ofd_lock(&other, libc::F_WRLCK) {
        assert!(
            started.elapsed().as_secs() < 5,
            "the OFD lock outlived its open file: {e}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Run `args` as the unprivileged user nobody; its exit status and stderr.
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), err)
}

/// What an unprivileged user meets on a mount (without
/// `default_permissions`, hafs decides): each case was wrong once.
/// - a directory it may read but not search lists (`..` was looked up
///   with a search check, so the listing failed with EACCES), and one it
///   may search but not read does not open (it did, failing at readdir);
/// - truncating a set-user-ID file it may write works and clears the bit
///   (the kernel sends that mode change as the writer; it was EPERM);
/// - `touch -a` of a file it may write but does not own is EPERM, as on
///   Linux (only both times to now is a writer's touch).
#[test]
fn an_unprivileged_user_meets_linux_rules() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hafs-fuse"));
    cmd.arg("--kv")
        .arg(format!("sqlite://{}", tmp.path().join("hafs.db").display()))
        .args(["--mkfs", "-o", "allow_other"]);
    let m = Mount::start(cmd, &tmp.path().join("m"));
    let path = |rel: &str| m.p(rel).display().to_string();
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/a"), b"").unwrap();
    std::fs::set_permissions(m.p("d"), std::fs::Permissions::from_mode(0o444)).unwrap();
    let (listed, err) = as_nobody(&["ls", &path("d")]);
    assert!(listed, "ls of a readable, unsearchable directory: {err}");
    std::fs::set_permissions(m.p("d"), std::fs::Permissions::from_mode(0o311)).unwrap();
    let (opened, err) = as_nobody(&["/bin/sh", "-c", "exec 3<\"$1\"", "sh", &path("d")]);
    assert!(!opened, "opened a directory without read permission");
    assert!(err.contains("Permission denied"), "{err}");

    std::fs::write(m.p("suid"), b"contents").unwrap();
    std::fs::set_permissions(m.p("suid"), std::fs::Permissions::from_mode(0o4766)).unwrap();
    let (truncated, err) = as_nobody(&["truncate", "-s", "0", &path("suid")]);
    assert!(
        truncated,
        "a writer's truncate of a set-user-ID file: {err}"
    );
    let meta = std::fs::metadata(m.p("suid")).unwrap();
    assert_eq!((meta.len(), meta.mode() & 0o7777), (0, 0o766));
    // Set-group-ID without group execute, group root: nobody is outside
    // the group, so each change drops it (Linux 6.2 on), which the kernel
    // leaves to hafs for writes and fallocate.
    for change in [
        vec!["sh", "-c", "echo x >>\"$0\""],
        vec!["truncate", "-s", "0"],
        vec!["fallocate", "-n", "-l", "4096"],
    ] {
        std::fs::write(m.p("sgid"), b"contents").unwrap();
        std::fs::set_permissions(m.p("sgid"), std::fs::Permissions::from_mode(0o2666)).unwrap();
        let mut args = change.clone();
        let target = path("sgid");
        args.push(&target);
        let (changed, err) = as_nobody(&args);
        assert!(changed, "{change:?}: {err}");
        let mode = std::fs::metadata(m.p("sgid")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o666, "{change:?} kept set-group-ID");
    }
    // nobody's own file in group root: its chgrp to its own group drops
    // set-group-ID too (chown_common, Linux 6.2 on).
    std::fs::write(m.p("mine"), b"").unwrap();
    std::os::unix::fs::chown(m.p("mine"), Some(65534), Some(0)).unwrap();
    std::fs::set_permissions(m.p("mine"), std::fs::Permissions::from_mode(0o2666)).unwrap();
    let (changed, err) = as_nobody(&["chgrp", "65534", &path("mine")]);
    assert!(changed, "chgrp of its own file: {err}");
    let meta = std::fs::metadata(m.p("mine")).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (65534, 0o666));

    std::fs::write(m.p("shared"), b"").unwrap();
    std::fs::set_permissions(m.p("shared"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let (touched, _) = as_nobody(&["touch", "-c", &path("shared")]);
    assert!(touched, "a writer's touch (both times to now)");
    let (touched, err) = as_nobody(&["touch", "-a", &path("shared")]);
    assert!(
        !touched,
        "touch -a by a writer who is not the owner succeeded"
    );
    assert!(err.contains("not permitted"), "{err}");
}

/// Times beyond what nanoseconds in an i64 hold are clamped (the kernel
/// does so for filesystems with a narrower range), not wrapped; and
/// `fcntl(F_SETFL)` turning O_APPEND off makes a positioned write land at
/// its offset.
#[test]
fn far_times_clamp_and_o_append_follows_setfl() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = mount(&tmp.path().join("hafs.db"), &tmp.path().join("m"));
    std::fs::write(m.p("f"), b"abc").unwrap();
    let status = Command::new("touch")
        .args(["-m", "-d", "2300-01-01"])
        .arg(m.p("f"))
        .status()
        .unwrap();
    assert!(status.success());
    let mtime = std::fs::metadata(m.p("f")).unwrap().mtime();
    assert_eq!(mtime, i64::MAX / 1_000_000_000, "2300 became {mtime}");

    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("f"))
        .unwrap();
    set_flags(&f, 0);
    std::os::unix::fs::FileExt::write_at(&f, b"X", 0).unwrap();
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"Xbc");
}

#[allow(unsafe_code)] // fcntl(2) has no safe std wrapper
fn set_flags(f: &std::fs::File, flags: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: fd is a valid open descriptor for the call's duration.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// A second mount attaches within seconds while the first, alone and
/// caching, renames a file every 50 ms (write-temp-then-rename in a loop).
/// Each rename used to push back the moment the holder took stock of what
/// its kernel cached, so the newcomer waited as long as the renames went
/// on (15.7 s for a 15 s loop, against 0.34 s now).
#[test]
fn a_newcomer_attaches_while_the_holder_keeps_renaming() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("hafs.db");
    let a = mount(&db, &tmp.path().join("a"));
    std::fs::write(a.p("t"), b"0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let renamer = {
        let (stop, tmp_path, target) = (stop.clone(), a.p("t.tmp"), a.p("t"));
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs() < 30 {
                std::fs::write(&tmp_path, b"x").unwrap();
                std::fs::rename(&tmp_path, &target).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = Instant::now();
    let b = mount(&db, &tmp.path().join("b"));
    std::fs::metadata(b.p("t")).unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    renamer.join().unwrap();
    assert!(took.as_secs() < 10, "the second mount waited {took:?}");
}

/// SIGTERM while a process still has a file open on the mount (and holds
/// a lock there): the mount is detached from the tree at once, but the
/// hafs process serves that user until it closes the file, keeping its
/// lock; only then does it detach its client and exit 0. (It used to
/// detach the client under the user, releasing its lock, and exit,
/// leaving a dead mount.)
#[test]
fn a_busy_mount_serves_its_last_user_after_sigterm() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("hafs.db");
    let mut a = mount(&db, &tmp.path().join("a"));
    std::fs::write(a.p("f"), b"kept").unwrap();
    let user = std::fs::File::open(a.p("f")).unwrap();
    flock(&user, libc::LOCK_EX).unwrap();
    a.signal("TERM");
    let started = Instant::now();
    while support::is_mounted(&a.path) {
        assert!(started.elapsed().as_secs() < 10, "still in the tree");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "exited under its user"
    );
    let mut text = String::new();
    (&user).read_to_string(&mut text).unwrap();
    assert_eq!(text, "kept");
    let b = mount(&db, &tmp.path().join("b"));
    let other = std::fs::File::open(b.p("f")).unwrap();
    let err =
        flock(&other, libc::LOCK_EX | libc::LOCK_NB).expect_err("the user's lock was dropped");
    assert_eq!(err.raw_os_error(), Some(libc::EWOULDBLOCK));
    drop(user);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed().as_secs() < 10,
            "did not exit after its last user"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    flock(&other, libc::LOCK_EX | libc::LOCK_NB).expect("the lock came free with the close");
}

/// mkdir -p / rm -rf of a 10,000-entry tree, and tar x of this project's
/// sources compared with diff -r.
#[test]
fn big_trees_and_tar_round_trip() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = relaxed_mount(&tmp.path().join("hafs.db"), &tmp.path().join("a"));
    let sh = |script: &str| {
        let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
        assert!(status.success(), "failed: {script}");
    };
    let root = a.path.display();
    // 100 directories of 99 files: 10,000 entries.
    sh(&format!(
        "cd {root} && for d in $(seq 100); do mkdir -p tree/d$d && (cd tree/d$d && touch $(seq -f f%g 99)); done"
    ));
    let count = Command::new("sh")
        .arg("-c")
        .arg(format!("find {root}/tree | wc -l"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "10001");
    sh(&format!("rm -rf {root}/tree"));
    assert!(!a.p("tree").exists());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    sh(&format!(
        "cd {} && tar cf {}/src.tar --exclude=./target --exclude=./.git . && mkdir {root}/copy && tar xf {}/src.tar -C {root}/copy && diff -r --no-dereference -x target -x .git {}/copy {}",
        src.display(),
        tmp.path().display(),
        tmp.path().display(),
        root,
        src.display()
    ));
}

/// On a relaxed mount commits are not fsynced one by one, but `fsync`
/// still means what it says. Alone on its database, the mount keeps
/// changes in memory and `fsync` appends them to the sync log: when it
/// returns, the log holds the file's bytes and has no page left unwritten
/// — unless they are too many for a record (over 64 KiB): those go to
/// SQLite, and `fsync` returns with the WAL synced.
/// Once a second mount shares the database, `fsync` syncs SQLite's WAL
/// always: it returns with no WAL page holding the file's writes left
/// unwritten. (The database lives on disk, under the target directory: on
/// tmpfs every page stays dirty.)
#[test]
fn fsync_on_a_relaxed_mount_syncs_the_log_or_the_wal() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let db = tmp.path().join("hafs.db");
    let m = relaxed_mount(&db, &tmp.path().join("m"));
    let log = tmp.path().join("hafs.db-synclog");
    let wal = tmp.path().join("hafs.db-wal");
    std::fs::write(m.p("first"), b"x").unwrap();
    if unwritten_pages(&wal).is_none() {
        eprintln!("skipped: no cachestat(2) on this kernel");
        return;
    }
    let mut f = std::fs::File::create(m.p("logged")).unwrap();
    f.write_all(&vec![7u8; 32 << 10]).unwrap();
    f.sync_all().unwrap();
    assert_eq!(unwritten_pages(&log), Some(0), "the sync log, synced");
    let (_, commits) = synclog::read_active(&log).unwrap().expect("an active log");
    let logged: usize = commits
        .iter()
        .flat_map(|c| &c.mutations)
        .map(|m| match m {
            Mutation::Set { value, .. } => value.len(),
            _ => 0,
        })
        .sum();
    assert!(logged >= 32 << 10, "the log holds the file: {logged} bytes");
    let mut f = std::fs::File::create(m.p("big")).unwrap();
    f.write_all(&vec![7u8; 256 << 10]).unwrap();
    f.sync_all().unwrap();
    let after = unwritten_pages(&wal).unwrap_or(0);
    assert!(
        after <= 8,
        "a big fsync returned with {after} WAL pages unwritten"
    );

    // Shared: every commit goes straight to SQLite's WAL. The mounts'
    // checkpoints sync the WAL too, now and then: test an fsync that comes
    // while the write (64 pages and more in the WAL) is still unwritten.
    // Afterwards only background commits (heartbeats, a close), a page or
    // two each, may be dirty again.
    let other = relaxed_mount(&db, &tmp.path().join("other"));
    for attempt in 0..20 {
        let mut f = std::fs::File::create(m.p(&format!("f{attempt}"))).unwrap();
        f.write_all(&vec![7u8; 256 << 10]).unwrap();
        let before = unwritten_pages(&wal).unwrap_or(0);
        if before < 64 {
            continue;
        }
        f.sync_all().unwrap();
        let after = unwritten_pages(&wal).unwrap_or(0);
        assert!(
            after <= 8,
            "fsync returned with {after} WAL pages unwritten ({before} before)"
        );
        drop(other);
        return;
    }
    eprintln!("skipped: the WAL's pages never stayed dirty (not a page-cache filesystem?)");
}

/// A tmpfs of `size`, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {}", path.display());
        SmallDisk(path.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The database's disk fills up: the writer gets ENOSPC while the disk can
/// still take everything acknowledged — an fsync of it succeeds, the rest
/// of the filesystem keeps working, space freed by deleting is used again,
/// and a remount has every byte. Both for a mount alone on its database
/// (which acknowledges writes before SQLite has them: before, its flush
/// failed for good, EIO for every operation until a remount, acknowledged
/// writes lost) and for one committing straight to SQLite (before, the WAL
/// took the room its checkpoint needed, and not even a delete committed
/// again).
#[test]
fn a_full_disk_gives_enospc_and_loses_nothing() {
    if !fuse_available() {
        return;
    }
    for flags in [&["--relaxed-durability"][..], &["--no-write-behind"]] {
        fill_the_disk(flags);
    }
}

fn fill_the_disk(flags: &[&str]) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = SmallDisk::mount(&tmp.path().join("disk"), "48m");
    let db = disk.0.join("hafs.db");
    let mount = |path: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hafs-fuse"));
        cmd.arg("--kv")
            .arg(format!("sqlite://{}", db.display()))
            .arg("--mkfs")
            .args(flags);
        Mount::start(cmd, path)
    };
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut written = 0usize;
    {
        let m = mount(&tmp.path().join("m"));
        std::fs::write(m.p("keep"), b"kept").unwrap();
        let mut big = std::fs::File::create(m.p("big")).unwrap();
        let refused = loop {
            match big.write_all(&data) {
                Ok(()) => written += data.len(),
                Err(e) => break e,
            }
            assert!(written < 100 << 20, "{flags:?}: 48 MB took {written} bytes");
        };
        assert_eq!(
            refused.raw_os_error(),
            Some(libc::ENOSPC),
            "{flags:?}: {refused}"
        );
        assert!(
            written >= 4 << 20,
            "{flags:?}: only {written} bytes before ENOSPC"
        );
        big.sync_all().expect("what was acknowledged fits");
        drop(big);
        assert_eq!(std::fs::read(m.p("keep")).unwrap(), b"kept");
        std::fs::write(m.p("small"), b"metadata and small files still go").unwrap();
        std::fs::remove_file(m.p("big")).unwrap();
        // The deleted file's pages are reused (after its unlink grace and
        // the checkpointer's next count of SQLite's free pages).
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while let Err(e) = std::fs::write(m.p("again"), data.repeat(4)) {
            assert!(
                e.raw_os_error() == Some(libc::ENOSPC) && Instant::now() < deadline,
                "{flags:?}: the freed space is not used again: {e} ({e:?})"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    let m = mount(&tmp.path().join("m"));
    assert_eq!(std::fs::read(m.p("keep")).unwrap(), b"kept");
    assert_eq!(
        std::fs::read(m.p("small")).unwrap(),
        b"metadata and small files still go"
    );
    assert_eq!(std::fs::read(m.p("again")).unwrap(), data.repeat(4));
    assert!(!m.p("big").exists());
    drop(m);
    drop(disk);
}
