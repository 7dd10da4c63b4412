//! Single-key read-modify-write transactions per second: the KV layer on
//! `mem` and `sqlite` (durable and relaxed) beside raw rusqlite doing the
//! same upsert at the same synchronous setting. The target (issue 2): the
//! sqlite backend reaches at least 0.7× raw rusqlite.
//!
//! A third reference, `raw_plus_log_*`, is raw rusqlite that also appends
//! one row to a second table per transaction — what any design pays that
//! gives other processes a record of each commit (the backend's conflict
//! log, which FoundationDB's cross-transaction conflict checks need): it
//! shows how much of the gap is that second page written per commit.
//!
//! Run: `cargo bench -p hafs-core --bench kv_rmw`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hafs_core::clock::TokioClock;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{Backend, Database, KvError};
use rusqlite::{params, Connection, OptionalExtension};

const KEY: &[u8] = b"bench/counter";

fn increment(value: Option<Vec<u8>>) -> [u8; 8] {
    let n = value.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
    (n + 1).to_le_bytes()
}

async fn kv_rmw(db: &Database) {
    db.run(|txn, _| async move {
        let next = increment(txn.get(KEY).await?);
        txn.set(KEY, &next);
        Ok::<_, KvError>(())
    })
    .await
    .expect("rmw transaction");
}

fn raw_connection(path: &Path, synchronous: &str) -> Connection {
    let conn = Connection::open(path).expect("open raw sqlite");
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .expect("wal");
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous};
         CREATE TABLE IF NOT EXISTS kv(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS log(version INTEGER PRIMARY KEY, writes BLOB NOT NULL);"
    ))
    .expect("raw schema");
    conn
}

fn raw_rmw(conn: &Connection, log: bool) {
    conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
    let value: Option<Vec<u8>> = conn
        .prepare_cached("SELECT value FROM kv WHERE key = ?1")
        .and_then(|mut s| s.query_row(params![KEY], |r| r.get(0)).optional())
        .expect("select");
    conn.prepare_cached(
        "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![KEY, &increment(value)[..]]))
    .expect("upsert");
    if log {
        // The same shape as the backend's conflict-log row: a version and
        // the encoded write range.
        conn.prepare_cached("INSERT INTO log(version, writes) VALUES (NULL, ?1)")
            .and_then(|mut s| s.execute(params![&[0u8; 40][..]]))
            .expect("log row");
    }
    conn.execute_batch("COMMIT").expect("commit");
}

fn sqlite_db(path: &Path, durability: Durability) -> Database {
    let clock = TokioClock::new();
    let options = SqliteOptions {
        durability,
        ..SqliteOptions::default()
    };
    let backend = SqliteBackend::open(path, options, clock.clone()).expect("open sqlite");
    Database::new(Arc::new(backend), clock, 1)
}

fn bench_rmw(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("rmw");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(30);

    let mem = {
        let clock = TokioClock::new();
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::new(clock.clone()));
        Database::new(backend, clock, 1)
    };
    group.bench_function("mem", |b| b.to_async(&runtime).iter(|| kv_rmw(&mem)));

    for (durability, synchronous, label) in [
        (Durability::Relaxed, "NORMAL", "normal"),
        (Durability::Durable, "FULL", "full"),
    ] {
        // Raw and hafs side by side at the same synchronous setting.
        let raw = raw_connection(&dir.path().join(format!("raw-{label}.db")), synchronous);
        group.bench_function(format!("raw_rusqlite_{label}"), |b| {
            b.iter(|| raw_rmw(&raw, false))
        });
        group.bench_function(format!("raw_plus_log_{label}"), |b| {
            b.iter(|| raw_rmw(&raw, true))
        });
        let db = runtime.block_on(async {
            sqlite_db(&dir.path().join(format!("hafs-{label}.db")), durability)
        });
        group.bench_function(format!("hafs_sqlite_{label}"), |b| {
            b.to_async(&runtime).iter(|| kv_rmw(&db))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_rmw);
criterion_main!(benches);
