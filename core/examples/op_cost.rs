//! What one create and one unlink cost in the core, without FUSE: for the
//! in-memory store and SQLite (relaxed, so no fsync hides anything), one
//! task runs what the kernel asks for a `creat` + `close` + `unlink` — a
//! negative LOOKUP, CREATE (with its open record), RELEASE, LOOKUP, UNLINK —
//! N times, and prints microseconds per phase. The difference between the
//! two stores is what SQLite costs; run it under
//! `valgrind --tool=callgrind` for instruction counts that do not drift.
//!
//! `cargo run --release -p hafs-core --example op_cost [N] [mem|sqlite]`
use std::sync::Arc;
use std::time::{Duration, Instant};

use hafs_core::clock::{Clock, TokioClock};
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{Backend, Database};

#[allow(clippy::disallowed_methods)] // wall-clock timing is the point here
fn now() -> Instant {
    Instant::now()
}

fn per_op(took: Duration, n: usize) -> f64 {
    took.as_secs_f64() * 1e6 / n as f64
}

async fn run(backend: Arc<dyn Backend>, clock: Arc<dyn Clock>, n: usize) -> [f64; 5] {
    let db = Database::new(backend, clock, 1);
    mkfs(&db, "fs", MkfsOptions::default()).await.expect("mkfs");
    let fs = Fs::open(db, "fs", "c1", FsOptions::default())
        .await
        .expect("open");
    let root = Caller::root();
    let dir = fs.mkdir(&root, ROOT_INO, b"d", 0o755).await.expect("mkdir");
    let names: Vec<Vec<u8>> = (0..n).map(|i| format!("f{i}").into_bytes()).collect();
    let mut took = [Duration::ZERO; 5];
    let mut inos = Vec::with_capacity(n);
    for name in &names {
        let t = now();
        assert!(fs.lookup(&root, dir.ino, name).await.is_err());
        took[0] += t.elapsed();
        let t = now();
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
        let attr = fs.create_open(&root, dir.ino, name, 0o644, flags).await;
        inos.push(attr.expect("create").ino);
        took[1] += t.elapsed();
        let t = now();
        fs.release(&root, *inos.last().expect("made"))
            .await
            .expect("release");
        took[2] += t.elapsed();
    }
    for name in &names {
        let t = now();
        fs.lookup(&root, dir.ino, name).await.expect("lookup");
        took[3] += t.elapsed();
        let t = now();
        fs.unlink(&root, dir.ino, name).await.expect("unlink");
        took[4] += t.elapsed();
    }
    took.map(|d| per_op(d, n))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let only = args.next();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!("store    lookup-  create  release  lookup  unlink   (us per op, {n} files)");
    for store in ["mem", "sqlite"] {
        if only.as_deref().is_some_and(|o| o != store) {
            continue;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let clock: Arc<dyn Clock> = TokioClock::new();
        let backend: Arc<dyn Backend> = match store {
            "mem" => Arc::new(MemBackend::new(clock.clone())),
            _ => {
                let options = SqliteOptions {
                    durability: Durability::Relaxed,
                    ..SqliteOptions::default()
                };
                let path = dir.path().join("hafs.db");
                Arc::new(SqliteBackend::open(&path, options, clock.clone()).expect("sqlite"))
            }
        };
        let t = runtime.block_on(run(backend, clock, n));
        println!(
            "{store:<8} {:7.1} {:7.1} {:8.1} {:7.1} {:7.1}",
            t[0], t[1], t[2], t[3], t[4]
        );
    }
}
