//! Two OS processes increment the same counters in one SQLite file through
//! the KV layer's read-modify-write transactions. Guards against lost
//! updates across processes (a conflict check that only sees its own
//! process's commits) and against `SQLITE_BUSY` leaking out of the runner.
//!
//! The test re-executes its own binary as the two workers (selected by an
//! environment variable), so both really are separate processes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hafs_core::clock::TokioClock;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{Database, KvError};

const WORKER_ENV: &str = "HAFS_TEST_TWO_PROCESS_DB";
const INCREMENTS: u64 = 400;
const COUNTERS: u64 = 3;

fn counter_key(i: u64) -> Vec<u8> {
    format!("counter/{i}").into_bytes()
}

fn decode(value: Option<Vec<u8>>) -> u64 {
    value.map_or(0, |v| {
        u64::from_le_bytes(v.try_into().expect("counter is 8 bytes"))
    })
}

const DURABILITY_ENV: &str = "HAFS_TEST_DURABILITY";

/// The durability a worker process was started with.
fn worker_durability() -> Durability {
    match std::env::var(DURABILITY_ENV).as_deref() {
        Ok("durable") => Durability::Durable,
        _ => Durability::Relaxed,
    }
}

fn open(path: &Path, seed: u64, durability: Durability) -> Database {
    let clock = TokioClock::new();
    let options = SqliteOptions {
        durability,
        ..SqliteOptions::default()
    };
    let backend = SqliteBackend::open(path, options, clock.clone()).expect("open sqlite");
    Database::new(Arc::new(backend), clock, seed)
}

/// One worker: two tasks (so durable commits also meet in one group
/// commit); every increment reads a counter and the total, writes both.
async fn work(path: &Path, seed: u64) -> Result<(), KvError> {
    let db = open(path, seed, worker_durability());
    let tasks: Vec<_> = (0..2u64)
        .map(|task| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in (task..INCREMENTS).step_by(2) {
                    let key = counter_key((i + seed) % COUNTERS);
                    db.run(|txn, _maybe_committed| {
                        let key = key.clone();
                        async move {
                            let n = decode(txn.get(&key).await?);
                            let total = decode(txn.get(b"total").await?);
                            txn.set(&key, &(n + 1).to_le_bytes());
                            txn.set(b"total", &(total + 1).to_le_bytes());
                            Ok::<_, KvError>(())
                        }
                    })
                    .await?;
                }
                Ok::<_, KvError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| KvError::Backend(e.to_string()))??;
    }
    Ok(())
}

#[test]
fn two_processes_lose_no_increment() {
    if let Ok(path) = std::env::var(WORKER_ENV) {
        // We are a worker.
        let seed: u64 = std::env::var("HAFS_TEST_WORKER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime
            .block_on(work(Path::new(&path), seed))
            .expect("worker transaction failed");
        return;
    }
    for (durability, name) in [
        (Durability::Relaxed, "relaxed"),
        (Durability::Durable, "durable"),
    ] {
        two_processes_increment(durability, name);
    }
}

fn two_processes_increment(durability: Durability, name: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hafs.db");
    drop(open(&path, 0, durability)); // create the schema before racing
    let exe = std::env::current_exe().expect("current exe");
    let workers: Vec<_> = (1..=2)
        .map(|seed| {
            Command::new(&exe)
                .args(["two_processes_lose_no_increment", "--exact", "--nocapture"])
                .env(WORKER_ENV, &path)
                .env(DURABILITY_ENV, name)
                .env("HAFS_TEST_WORKER_SEED", seed.to_string())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    for mut worker in workers {
        let status = worker.wait().expect("wait worker");
        assert!(status.success(), "{name} worker failed: {status}");
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (total, sum) = runtime.block_on(async {
        let db = open(&path, 9, durability);
        db.read(|txn| async move {
            let total = decode(txn.get(b"total").await?);
            let mut sum = 0;
            for i in 0..COUNTERS {
                sum += decode(txn.get(&counter_key(i)).await?);
            }
            Ok::<_, KvError>((total, sum))
        })
        .await
        .expect("read counters")
    });
    assert_eq!(total, 2 * INCREMENTS, "{name}: lost updates on the total");
    assert_eq!(sum, 2 * INCREMENTS, "{name}: lost updates on the counters");
}

const WATCHER_ENV: &str = "HAFS_TEST_WATCH_DB";
/// The watcher's `data_version` poll, in seconds (default: the backend's).
const WATCH_POLL_ENV: &str = "HAFS_TEST_WATCH_POLL_S";

/// The watcher process: arm a watch on `key`, say so, wait for it to fire.
async fn watch_once(path: &Path) -> Result<(), KvError> {
    let clock = TokioClock::new();
    let mut options = SqliteOptions {
        durability: Durability::Relaxed,
        ..SqliteOptions::default()
    };
    if let Some(secs) = std::env::var(WATCH_POLL_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options.watch_poll = Duration::from_secs(secs);
    }
    let backend = SqliteBackend::open(path, options, clock.clone()).expect("open sqlite");
    let db = Database::new(Arc::new(backend), clock, 3);
    let txn = db.begin().await?;
    let watch = txn.watch(b"key");
    txn.commit().await?;
    // Let the watcher thread finish its first look (made at once when a
    // watch is armed) before the other process writes, so the change can
    // only be found by `data_version`, the path under test.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("armed");
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .map_err(|_| KvError::TimedOut)?
}

/// A watch fires for a commit made by another process (found through
/// `PRAGMA data_version`, not through an in-process notification).
#[test]
fn watch_sees_a_commit_of_another_process() {
    watch_across_processes("watch_sees_a_commit_of_another_process", None);
}

/// The same with a poll of an hour: the WAL doorbell must wake the watcher
/// (without it the watch waited for the poll and timed out after 10 s).
#[test]
fn the_wal_doorbell_wakes_a_watch_without_polling() {
    watch_across_processes("the_wal_doorbell_wakes_a_watch_without_polling", Some(3600));
}

fn watch_across_processes(test: &str, poll_secs: Option<u64>) {
    if let Ok(path) = std::env::var(WATCHER_ENV) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime
            .block_on(watch_once(Path::new(&path)))
            .expect("watch did not fire");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hafs.db");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(async { open(&path, 4, Durability::Relaxed) });
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command
        .args([test, "--exact", "--nocapture"])
        .env(WATCHER_ENV, &path)
        .stdout(Stdio::piped());
    if let Some(secs) = poll_secs {
        command.env(WATCH_POLL_ENV, secs.to_string());
    }
    let mut child = command.spawn().expect("spawn watcher");
    let stdout = child.stdout.take().expect("stdout");
    // Keep reading the child's stdout to its end: closing the pipe early
    // would kill the child's test harness with EPIPE.
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let armed = lines.any(|line| line.contains("armed"));
    assert!(armed, "watcher never armed its watch");
    runtime
        .block_on(db.run(|txn, _| async move {
            txn.set(b"key", b"changed");
            Ok::<_, KvError>(())
        }))
        .expect("write");
    lines.for_each(drop);
    let status = child.wait().expect("wait watcher");
    assert!(status.success(), "watcher failed: {status}");
}
