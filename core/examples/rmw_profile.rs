//! Profiling aid: N single-key read-modify-write transactions on the sqlite
//! backend. `cargo run --release -p hafs-core --example rmw_profile -- N relaxed|durable`
use std::sync::Arc;
use std::time::Instant;

use hafs_core::clock::TokioClock;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{Database, KvError};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let durability = match args.get(2).map(String::as_str) {
        Some("durable") => Durability::Durable,
        _ => Durability::Relaxed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    runtime.block_on(async {
        let clock = TokioClock::new();
        let options = SqliteOptions {
            durability,
            ..SqliteOptions::default()
        };
        let backend =
            SqliteBackend::open(&dir.path().join("p.db"), options, clock.clone()).expect("open");
        let db = Database::new(Arc::new(backend), clock, 1);
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        for _ in 0..n {
            db.run(|txn, _| async move {
                let v = txn.get(b"k").await?;
                let next = v.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8]))) + 1;
                txn.set(b"k", &next.to_le_bytes());
                Ok::<_, KvError>(())
            })
            .await
            .expect("txn");
        }
        let elapsed = start.elapsed();
        println!(
            "{n} rmw in {elapsed:?}: {:.1} us/txn",
            elapsed.as_secs_f64() * 1e6 / n as f64
        );
    });
}
