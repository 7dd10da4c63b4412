//! Write-behind on a SQLite backend that has its file alone: what another
//! opener sees, what a switch does to transactions in flight, what `sync`
//! and a clean close write out, and what a killed process loses (a suffix
//! of its commits, never part of one; no acknowledged commit of a durable
//! backend).
//!
//! Two backends in one process exclude each other through the lock file as
//! two processes do (OFD locks belong to the open file), so most of this
//! runs in one test process; the crash test re-executes its own binary.
#![allow(clippy::disallowed_methods)] // real time: real threads and processes

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hafs_core::clock::TokioClock;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{Database, KvError};

fn open(path: &Path, durability: Durability) -> (Arc<SqliteBackend>, Database) {
    let options = SqliteOptions {
        durability,
        ..SqliteOptions::default()
    };
    open_with(path, options)
}

/// A backend whose flusher never writes to SQLite on its own (only a sync
/// through SQLite, a hand-over or a close do).
fn open_never_flushing(path: &Path, durability: Durability) -> (Arc<SqliteBackend>, Database) {
    let options = SqliteOptions {
        durability,
        flush_interval: Duration::from_secs(3600),
        ..SqliteOptions::default()
    };
    open_with(path, options)
}

fn open_with(path: &Path, options: SqliteOptions) -> (Arc<SqliteBackend>, Database) {
    let clock = TokioClock::new();
    let backend = Arc::new(SqliteBackend::open(path, options, clock.clone()).expect("open"));
    let db = Database::new(backend.clone(), clock, 11);
    (backend, db)
}

fn decode(value: Option<Vec<u8>>) -> u64 {
    value.map_or(0, |v| u64::from_le_bytes(v.try_into().expect("8 bytes")))
}

async fn increment(db: &Database, key: &[u8]) {
    db.run(|txn, _| async move {
        let n = decode(txn.get(key).await?);
        txn.set(key, &(n + 1).to_le_bytes());
        Ok::<_, KvError>(())
    })
    .await
    .expect("increment");
}

async fn read(db: &Database, key: &[u8]) -> Option<Vec<u8>> {
    db.run(|txn, _| async move { txn.get(key).await })
        .await
        .expect("read")
}

/// What SQLite itself holds for `key`, read past the backend.
fn stored(path: &Path, key: &[u8]) -> Option<Vec<u8>> {
    let conn = rusqlite::Connection::open(path).expect("raw open");
    conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .ok()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A relaxed backend alone buffers; a second opener gets every commit the
/// first acknowledged, both then commit straight to SQLite with conflicts
/// checked across them, and the first buffers again once alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_sees_every_acknowledged_commit_then_both_share() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let (a_backend, a) = open(&path, Durability::Relaxed);
    assert!(a_backend.write_behind_active(), "alone: buffered");
    for i in 0..100u32 {
        let key = format!("k/{i:03}");
        a.run(|txn, _| {
            let key = key.clone();
            async move {
                txn.set(key.as_bytes(), &i.to_le_bytes());
                Ok::<_, KvError>(())
            }
        })
        .await
        .unwrap();
    }
    let opened = Instant::now();
    let path_b = path.clone();
    let (b_backend, b) = tokio::task::spawn_blocking(move || open(&path_b, Durability::Durable))
        .await
        .unwrap();
    println!("hand-over took {:?}", opened.elapsed());
    assert!(!a_backend.write_behind_active(), "a shares now");
    assert!(!b_backend.write_behind_active());
    let listed = b
        .run(|txn, _| async move {
            txn.get_range(b"k/", b"k0", Default::default())
                .await
                .map(|r| r.kvs)
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 100, "b sees every commit a acknowledged");
    assert_eq!(listed[42].1, 42u32.to_le_bytes().to_vec());

    // Both increment one counter at once: every increment lands.
    let tasks: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|db| {
            tokio::spawn(async move {
                for _ in 0..150 {
                    increment(&db, b"counter").await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(decode(read(&a, b"counter").await), 300);
    assert_eq!(decode(read(&b, b"counter").await), 300);

    drop(b);
    drop(b_backend);
    wait_until("a buffers again once alone", || {
        a_backend.write_behind_active()
    })
    .await;
    for _ in 0..50 {
        increment(&a, b"counter").await;
    }
    assert_eq!(decode(read(&a, b"counter").await), 350);
    // Closing writes out what the memtable holds.
    drop(a);
    drop(a_backend);
    assert_eq!(decode(stored(&path, b"counter")), 350);
    let (_, c) = open(&path, Durability::Relaxed);
    assert_eq!(decode(read(&c, b"counter").await), 350);
    assert_eq!(read(&c, b"k/099").await, Some(99u32.to_le_bytes().to_vec()));
}

/// A transaction that began buffered cannot commit after a hand-over (its
/// reads came from the memtable); the runner retries it, straight to SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_before_a_hand_over_retries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let (a_backend, a) = open(&path, Durability::Relaxed);
    increment(&a, b"n").await;
    let txn = a.begin().await.unwrap();
    let n = decode(txn.get(b"n").await.unwrap());
    txn.set(b"n", &(n + 1).to_le_bytes());
    let path_b = path.clone();
    let (_b_backend, b) = tokio::task::spawn_blocking(move || open(&path_b, Durability::Relaxed))
        .await
        .unwrap();
    assert!(!a_backend.write_behind_active());
    assert_eq!(txn.commit().await, Err(KvError::NotCommitted));
    increment(&a, b"n").await;
    assert_eq!(decode(read(&b, b"n").await), 2);
}

/// `sync` makes every acknowledged commit durable through the sync log,
/// before any of it reaches SQLite: a copy of the files taken right after
/// (the backend still open, as at a power loss) opens with all of it,
/// range clears in commit order with later writes; then so does the
/// original once closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_makes_buffered_commits_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let (backend, db) = open_never_flushing(&path, Durability::Relaxed);
    assert!(backend.write_behind_active());
    for _ in 0..20 {
        increment(&db, b"n").await;
    }
    db.sync().await.unwrap();
    assert_eq!(stored(&path, b"n"), None, "in the log only");
    // Range clears reach SQLite too, in commit order with later writes.
    db.run(|txn, _| async move {
        txn.set(b"r/1", b"x");
        txn.set(b"r/2", b"y");
        Ok::<_, KvError>(())
    })
    .await
    .unwrap();
    db.run(|txn, _| async move {
        txn.clear_range(b"r/", b"r0");
        txn.set(b"r/2", b"z");
        Ok::<_, KvError>(())
    })
    .await
    .unwrap();
    db.sync().await.unwrap();
    increment(&db, b"unsynced").await;
    let image = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal", "-synclog"] {
        std::fs::copy(
            dir.path().join(format!("kv.db{suffix}")),
            image.path().join(format!("kv.db{suffix}")),
        )
        .unwrap();
    }
    let copy = image.path().join("kv.db");
    let (_, restored) = open(&copy, Durability::Durable);
    assert_eq!(decode(read(&restored, b"n").await), 20);
    assert_eq!(read(&restored, b"r/1").await, None);
    assert_eq!(read(&restored, b"r/2").await, Some(b"z".to_vec()));
    assert_eq!(read(&restored, b"unsynced").await, None, "never synced");
    drop(restored);
    // Replayed into SQLite, the log is retired: the copy stands alone.
    std::fs::remove_file(image.path().join("kv.db-synclog")).unwrap();
    assert_eq!(decode(stored(&copy, b"n")), 20);
    drop(db);
    drop(backend);
    assert_eq!(decode(stored(&path, b"unsynced")), 1, "a close writes out");
}

/// Run this test binary's `test` as a worker process on the database at
/// `path` (named in `env`), its stdin and stdout piped.
fn worker(test: &str, env: &str, path: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(env, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

const CRASH_ENV: &str = "HAFS_TEST_WRITE_BEHIND_CRASH_DB";

/// The crash worker syncs after this commit: what survives includes it.
const SYNCED: u64 = 1_000;

/// Commit `n` and key `done/<n>`, in one transaction.
async fn commit_numbered(db: &Database, n: u64) {
    db.run(|txn, _| async move {
        txn.set(b"n", &n.to_le_bytes());
        txn.set(format!("done/{n:08}").as_bytes(), b"");
        Ok::<_, KvError>(())
    })
    .await
    .unwrap();
}

/// Read the numbers `child` prints until one reaches `until`, then kill
/// it; the last number read.
fn kill_at(child: &mut std::process::Child, until: u64) -> u64 {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = 0u64;
    while last < until {
        match lines.next() {
            Some(Ok(line)) => {
                if let Ok(n) = line.trim().parse() {
                    last = n;
                }
            }
            _ => panic!("the worker stopped early"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    last
}

/// Run `test`'s worker on a new database, kill it once it printed `until`,
/// reopen: the last number it printed, the `n` SQLite itself held, and the
/// `n` that survived (`survivors`).
fn killed_at(test: &str, env: &str, until: u64) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let mut child = worker(test, env, &path);
    let printed = kill_at(&mut child, until);
    let in_sqlite = decode(stored(&path, b"n"));
    (printed, in_sqlite, survivors(&path))
}

/// Reopen the database of a killed worker: the `n` that survived, checked
/// to come with exactly the keys `done/1..=n` (whole commits, no hole, no
/// later one).
fn survivors(path: &Path) -> u64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_, db) = open(path, Durability::Durable);
        let n = decode(read(&db, b"n").await);
        let done = db
            .run(|txn, _| async move {
                txn.get_range(b"done/", b"done0", Default::default())
                    .await
                    .map(|r| r.kvs)
            })
            .await
            .unwrap();
        assert_eq!(
            done.len() as u64,
            n,
            "every surviving commit whole, no later one"
        );
        assert_eq!(
            done.last().map(|(k, _)| k.clone()),
            (n > 0).then(|| format!("done/{n:08}").into_bytes())
        );
        n
    })
}

/// A worker that commits `n` and `done/<n>` for n = 1, 2, ..., printing
/// each acknowledged `n`; after commit `SYNCED` it calls `sync`.
fn crash_worker(path: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (backend, db) = open(path, Durability::Relaxed);
        assert!(backend.write_behind_active());
        for n in 1u64.. {
            commit_numbered(&db, n).await;
            if n == SYNCED {
                db.sync().await.unwrap();
            }
            println!("{n}");
        }
    });
}

/// `kill -9` of a buffering process loses only acknowledged commits after
/// its last flush, whole ones from the end: what survives is exactly the
/// first `n` commits, and at least every commit `sync` covered. (How many
/// are lost depends on how soon the flusher ran: milliseconds' worth when
/// it gets a CPU, more on a starved machine — so not asserted.)
#[test]
fn a_killed_process_loses_a_suffix_of_whole_commits() {
    if let Ok(path) = std::env::var(CRASH_ENV) {
        crash_worker(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let mut child = worker(
        "a_killed_process_loses_a_suffix_of_whole_commits",
        CRASH_ENV,
        &path,
    );
    let acknowledged = kill_at(&mut child, 3_000);
    let n = survivors(&path);
    println!("acknowledged {acknowledged}+, survived {n}");
    assert!(n >= SYNCED, "what sync covered survives: {n}");
}

const LOGGED_ENV: &str = "HAFS_TEST_WRITE_BEHIND_LOGGED_DB";

/// A worker that never flushes on its own: commits `n` and `done/<n>` for
/// n = 1, 2, ..., syncs after every even `n` and prints it.
fn logged_worker(path: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (backend, db) = open_never_flushing(path, Durability::Relaxed);
        assert!(backend.write_behind_active());
        for n in 1u64.. {
            commit_numbered(&db, n).await;
            if n % 2 == 0 {
                db.sync().await.unwrap();
                println!("{n}");
            }
        }
    });
}

/// Synced commits survive `kill -9` when they are in the sync log only:
/// the next opener applies them. Past 2,000 syncs the log is full once and
/// starts over (that sync goes through SQLite). The flusher never runs, so
/// what survives is exactly a synced prefix: the last even `n` or later.
#[test]
fn synced_commits_survive_a_kill_from_the_sync_log() {
    if let Ok(path) = std::env::var(LOGGED_ENV) {
        logged_worker(Path::new(&path));
        return;
    }
    let (synced, in_sqlite, n) = killed_at(
        "synced_commits_survive_a_kill_from_the_sync_log",
        LOGGED_ENV,
        5_000,
    );
    println!("synced {synced}+, in SQLite before reopening {in_sqlite}, survived {n}");
    assert!(
        in_sqlite < synced,
        "the log had more than SQLite: {in_sqlite}"
    );
    assert!(
        in_sqlite >= 4_000,
        "the full log's sync went through SQLite"
    );
    assert!(n >= synced, "every synced commit survives: {n}");
    assert_eq!(n % 2, 0, "nothing unsynced: {n}");
}

const DURABLE_ENV: &str = "HAFS_TEST_WRITE_BEHIND_DURABLE_DB";

/// A durable backend alone (buffering) whose flusher never writes to SQLite
/// on its own: commits `n` and `done/<n>` for n = 1, 2, ..., printing each
/// acknowledged `n`.
fn durable_worker(path: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (backend, db) = open_never_flushing(path, Durability::Durable);
        assert!(backend.write_behind_active());
        for n in 1u64.. {
            commit_numbered(&db, n).await;
            println!("{n}");
        }
    });
}

/// A durable backend that buffers acknowledges each commit once the sync
/// log holding it is synced: `kill -9` loses none of them, though SQLite
/// itself lagged behind (the next opener applies the rest from the log).
#[test]
fn a_killed_durable_process_loses_no_acknowledged_commit() {
    if let Ok(path) = std::env::var(DURABLE_ENV) {
        durable_worker(Path::new(&path));
        return;
    }
    let (acknowledged, in_sqlite, n) = killed_at(
        "a_killed_durable_process_loses_no_acknowledged_commit",
        DURABLE_ENV,
        3_000,
    );
    println!("acknowledged {acknowledged}+, in SQLite before reopening {in_sqlite}, survived {n}");
    // SQLite itself gets the commits only when the log is full (every
    // 2,047 records): what it lacked came from the log.
    assert!(n > in_sqlite, "the log had more than SQLite: {in_sqlite}");
    assert!(n >= acknowledged, "every acknowledged commit survives: {n}");
}

const STOPPED_ENV: &str = "HAFS_TEST_WRITE_BEHIND_STOPPED_DB";

/// A child that has the database to itself: one increment made durable,
/// then one more increment per line on stdin, answering `ok` or `err`.
fn stopped_worker(path: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (backend, db) = open(path, Durability::Relaxed);
        assert!(backend.write_behind_active());
        increment(&db, b"n").await;
        db.sync().await.unwrap();
        // Stopped while its flusher holds SQLite's write lock (a flush of
        // that increment), it would keep every opener out for good —
        // SQLite's locks go only with the process — and the breaker's open
        // would fail after its `lock_wait` (seen in CI, back when it waited
        // 21 minutes): wait for the write first.
        wait_until("the increment written to SQLite", || {
            stored(path, b"n").is_some()
        })
        .await;
        answer_increments(&db).await;
    });
}

/// Print `ready`, then increment `n` once per line on stdin, answering `ok`
/// or `err <why>`.
async fn answer_increments(db: &Database) {
    println!("ready");
    for _ in std::io::stdin().lock().lines() {
        let result = db
            .run(|txn, _| async move {
                let n = decode(txn.get(b"n").await?);
                txn.set(b"n", &(n + 1).to_le_bytes());
                Ok::<_, KvError>(())
            })
            .await;
        match result {
            Ok(()) => println!("ok"),
            Err(e) => println!("err {e}"),
        }
    }
}

/// A worker child running `answer_increments`, stopped and resumed at will.
struct Answering {
    child: std::process::Child,
    to_child: std::process::ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Answering {
    /// Start `test`'s worker on `path` and wait for its `ready`.
    fn start(test: &str, env: &str, path: &Path) -> Answering {
        let mut child = worker(test, env, path);
        let to_child = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this = Answering {
            child,
            to_child,
            lines,
        };
        assert_eq!(this.answer(), "ready");
        this
    }

    fn answer(&mut self) -> String {
        loop {
            let line = self.lines.next().expect("the worker answers").unwrap();
            if line == "ready" || line == "ok" || line.starts_with("err") {
                return line;
            }
        }
    }

    /// One increment, answered.
    fn increment(&mut self) -> String {
        use std::io::Write;
        writeln!(self.to_child, "inc").unwrap();
        self.answer()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    fn kill(mut self) {
        drop(self.to_child);
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A lone holder that stops answering (SIGSTOP) keeps a newcomer out only
/// for the newcomer's wait: then the newcomer fences it out and opens.
/// Resumed, the holder loses what it buffered since (like a crash) and
/// fails from its next flush on; nobody becomes exclusive while the
/// breaker, which has no presence, is open.
#[test]
fn a_stopped_holder_is_fenced_out_after_the_wait() {
    if let Ok(path) = std::env::var(STOPPED_ENV) {
        stopped_worker(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let mut child = Answering::start(
        "a_stopped_holder_is_fenced_out_after_the_wait",
        STOPPED_ENV,
        &path,
    );
    child.signal("STOP");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = SqliteOptions {
        durability: Durability::Relaxed,
        join_wait: Duration::from_millis(300),
        ..SqliteOptions::default()
    };
    let started = Instant::now();
    let breaker = Arc::new(
        SqliteBackend::open(&path, options, TokioClock::new()).expect("breaks in after the wait"),
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!breaker.write_behind_active(), "a breaker has no presence");
    let db = Database::new(breaker.clone(), TokioClock::new(), 3);
    runtime.block_on(async {
        assert_eq!(decode(read(&db, b"n").await), 1, "the synced increment");
        increment(&db, b"n").await;
    });
    child.signal("CONT");
    // Acknowledged from memory until the holder's next flush finds itself
    // fenced (and loses them); from then on every transaction fails.
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = child.increment();
        let failed = a.starts_with("err");
        answers.push(a);
        if failed || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = answers.last().unwrap();
    assert!(
        last.starts_with("err") && last.contains("took the database over"),
        "{answers:?}"
    );
    runtime.block_on(async {
        assert_eq!(
            decode(read(&db, b"n").await),
            2,
            "nothing of the fenced holder's"
        );
    });
    child.kill();
    // The holder is gone, the breaker still open: nobody may buffer yet.
    let options = SqliteOptions {
        durability: Durability::Relaxed,
        ..SqliteOptions::default()
    };
    let later = SqliteBackend::open(&path, options, TokioClock::new()).unwrap();
    assert!(!later.write_behind_active());
    drop(later);
    drop(db);
    drop(breaker);
    runtime.block_on(async {
        let (alone, db) = open(&path, Durability::Relaxed);
        // The breaker's threads let go of the lock file as they exit.
        wait_until("alone again: buffering", || alone.write_behind_active()).await;
        assert_eq!(decode(read(&db, b"n").await), 2);
        // Its sync log is its own: the break-in's mark is gone.
        increment(&db, b"n").await;
        db.sync().await.expect("a sync of the next holder");
        assert_eq!(decode(read(&db, b"n").await), 3);
    });
}

const LOCKED_ENV: &str = "HAFS_TEST_WRITE_BEHIND_LOCKED_DB";

/// A child holding SQLite's write lock, as a holder stopped in the middle
/// of a flush does: `BEGIN IMMEDIATE` on a plain connection, `ready`, then
/// nothing until its stdin closes.
fn locked_worker(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    println!("ready");
    for _ in std::io::stdin().lock().lines() {}
}

/// Nobody can break SQLite's write lock: an opener waits `lock_wait` for it,
/// then fails with an error that names the process holding it, and opens
/// once that process is gone, with nothing lost.
#[test]
fn an_open_gives_up_on_a_write_lock_held_for_good_and_names_its_holder() {
    if let Ok(path) = std::env::var(LOCKED_ENV) {
        locked_worker(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_, db) = open(&path, Durability::Durable);
        increment(&db, b"n").await;
    });
    let child = Answering::start(
        "an_open_gives_up_on_a_write_lock_held_for_good_and_names_its_holder",
        LOCKED_ENV,
        &path,
    );
    let options = SqliteOptions {
        lock_wait: Duration::from_secs(1),
        ..SqliteOptions::default()
    };
    let (done, result) = std::sync::mpsc::channel();
    let opener = path.clone();
    let started = Instant::now();
    std::thread::spawn(move || {
        let opened = SqliteBackend::open(&opener, options, TokioClock::new());
        done.send(opened.map(drop).map_err(|e| e.to_string()))
            .unwrap();
    });
    let opened = result
        .recv_timeout(Duration::from_secs(30))
        .expect("the open gives up within seconds");
    let waited = started.elapsed();
    let error = opened.expect_err("no open while another process writes");
    let holder = format!(
        "process {} has held the database's write lock for 1 s",
        child.child.id()
    );
    assert!(error.contains(&holder), "{error}");
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    child.kill();
    runtime.block_on(async {
        let (_, db) = open(&path, Durability::Durable);
        assert_eq!(decode(read(&db, b"n").await), 1);
    });
}

const STOPPED_DURABLE_ENV: &str = "HAFS_TEST_WRITE_BEHIND_STOPPED_DURABLE_DB";

/// How many increments the stopped durable holder acknowledges first.
const DURABLE_INCREMENTS: u64 = 50;

/// A durable child that has the database to itself and never flushes on
/// its own: `DURABLE_INCREMENTS` increments (durable in the sync log only),
/// then one more per line on stdin, answering `ok` or `err`.
fn stopped_durable_worker(path: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (backend, db) = open_never_flushing(path, Durability::Durable);
        assert!(backend.write_behind_active());
        for _ in 0..DURABLE_INCREMENTS {
            increment(&db, b"n").await;
        }
        answer_increments(&db).await;
    });
}

/// A stopped durable holder's acknowledged commits live in its sync log
/// (SQLite has none of them): the breaker applies them, and the holder,
/// resumed, has its very next commit refused — its sync finds itself
/// fenced out — rather than acknowledged into a history nobody reads.
#[test]
fn a_breaker_keeps_every_commit_a_stopped_durable_holder_acknowledged() {
    if let Ok(path) = std::env::var(STOPPED_DURABLE_ENV) {
        stopped_durable_worker(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let mut child = Answering::start(
        "a_breaker_keeps_every_commit_a_stopped_durable_holder_acknowledged",
        STOPPED_DURABLE_ENV,
        &path,
    );
    assert_eq!(stored(&path, b"n"), None, "in the sync log only");
    child.signal("STOP");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = SqliteOptions {
        join_wait: Duration::from_millis(300),
        ..SqliteOptions::default()
    };
    let breaker = Arc::new(
        SqliteBackend::open(&path, options, TokioClock::new()).expect("breaks in after the wait"),
    );
    let db = Database::new(breaker.clone(), TokioClock::new(), 3);
    runtime.block_on(async {
        assert_eq!(
            decode(read(&db, b"n").await),
            DURABLE_INCREMENTS,
            "every acknowledged increment"
        );
    });
    child.signal("CONT");
    let resumed = child.increment();
    assert!(
        resumed.starts_with("err") && resumed.contains("took the database over"),
        "{resumed}"
    );
    runtime.block_on(async {
        assert_eq!(decode(read(&db, b"n").await), DURABLE_INCREMENTS);
    });
    child.kill();
}

/// The lock file is named after the resolved path, as SQLite names its
/// WAL: an opener through a symlink is a newcomer like any other, and the
/// lone holder hands the file over to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opener_through_a_symlink_is_a_newcomer_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let (a_backend, a) = open(&path, Durability::Relaxed);
    increment(&a, b"n").await;
    let linked = dir.path().join("linked.db");
    std::os::unix::fs::symlink("kv.db", &linked).unwrap();
    let (b_backend, b) = tokio::task::spawn_blocking(move || open(&linked, Durability::Relaxed))
        .await
        .unwrap();
    assert!(!a_backend.write_behind_active(), "a handed over");
    assert!(!b_backend.write_behind_active(), "a is still there");
    assert_eq!(decode(read(&b, b"n").await), 1, "b sees a's commit");
    increment(&b, b"n").await;
    assert_eq!(decode(read(&a, b"n").await), 2, "a sees b's");
}

/// A tmpfs of `size`, unmounted when dropped; `None` where mounting needs a
/// root this process lacks (then the test is skipped — unless
/// `HAFS_REQUIRE_FUSE` is set, as CI sets it for the real-mount tests).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("HAFS_REQUIRE_FUSE").is_none(),
                "cannot mount a tmpfs (not root?)"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(SmallDisk(path.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn put(db: &Database, key: &[u8], value: &[u8]) -> Result<(), KvError> {
    db.run(|txn, _| async move {
        txn.set(key, value);
        Ok::<_, KvError>(())
    })
    .await
}

/// What SQLite holds for `key`, failing loudly (not `None`) on any error.
fn stored_strict(path: &Path, key: &[u8]) -> Option<Vec<u8>> {
    use rusqlite::OptionalExtension;
    let conn = rusqlite::Connection::open(path).expect("raw open");
    conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .expect("raw read")
}

/// Fill the disk holding `dir` with a file; returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &[1u8; 64 << 10]).is_ok() {}
    filler
}

/// Another program fills the disk while a lone backend holds acknowledged
/// commits it has not written to SQLite. Its flush (on its own timer: no
/// sync asked for) finds the disk full and keeps them; big commits are
/// refused, tiny ones (a heartbeat) still go; once there is room the
/// flusher's retry writes everything out by itself. A sync that needs
/// SQLite on a full disk answers NoSpace (ENOSPC) and keeps the commits
/// too. Before, the flush failed the backend for good and they were lost.
#[test]
fn a_disk_filled_by_another_program_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "32m") else {
        return;
    };
    let path = disk.0.join("kv.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let options = SqliteOptions {
            durability: Durability::Relaxed,
            flush_interval: Duration::from_millis(500),
            ..SqliteOptions::default()
        };
        let (backend, db) = open_with(&path, options);
        assert!(backend.write_behind_active());
        let value = vec![7u8; 16 << 10];
        for i in 0..64u32 {
            put(&db, format!("v{i:02}").as_bytes(), &value)
                .await
                .expect("room for it");
        }
        // The other program, before the flush is due.
        let filler = fill(&disk.0);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(
            stored_strict(&path, b"v63"),
            None,
            "the flush found no room"
        );
        let big = put(&db, b"big", &value).await;
        assert!(matches!(big, Err(KvError::NoSpace(_))), "{big:?}");
        std::fs::remove_file(&filler).unwrap();
        // No commit, no sync since the failed flush: only its retry writes.
        wait_until("the flusher's retry wrote everything", || {
            stored_strict(&path, b"v63").is_some()
        })
        .await;
        put(&db, b"big", &value).await.expect("room again");

        // A sync through SQLite (a record too big for the sync log) on a
        // full disk.
        for i in 0..64u32 {
            put(&db, format!("w{i:02}").as_bytes(), &value)
                .await
                .expect("room for it");
        }
        let filler = fill(&disk.0);
        let synced = db.sync().await;
        assert!(matches!(synced, Err(KvError::NoSpace(_))), "{synced:?}");
        put(&db, b"beat", &1u64.to_le_bytes())
            .await
            .expect("a heartbeat is never refused");
        std::fs::remove_file(&filler).unwrap();
        db.sync().await.expect("a sync with room");
        assert!(stored_strict(&path, b"w63").is_some() && stored_strict(&path, b"beat").is_some());
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_, db) = open(&path, Durability::Relaxed);
        for key in ["v00", "v63", "w00", "w63", "big"] {
            assert_eq!(
                read(&db, key.as_bytes()).await.as_deref(),
                Some(&[7u8; 16 << 10][..]),
                "{key}"
            );
        }
    });
    drop(disk);
}
