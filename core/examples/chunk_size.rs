//! Measures what the chunk size costs, to choose the default: for each
//! candidate, sequential 1 MiB writes and reads of a 64 MiB file, 4 KiB
//! random reads and 4 KiB random overwrites on the sqlite backend (relaxed
//! durability, so the fsync does not hide the difference). Values must stay
//! under the KV's 100,000-byte limit, so 64 KiB is the largest power of two.
//!
//! `cargo run --release -p hafs-core --example chunk_size`
use std::sync::Arc;
use std::time::{Duration, Instant};

use hafs_core::clock::TokioClock;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::Database;
use hafs_core::ops::write::WriteAt;
use hafs_core::perm;
use rand::{Rng, SeedableRng};

const FILE: u64 = 64 << 20;
const IO: usize = 1 << 20;
const SMALL: usize = 4096;
const RANDOM_OPS: usize = 2000;

#[allow(clippy::disallowed_methods)] // wall-clock timing is the point here
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!("chunk     seq-write MiB/s  seq-read MiB/s  4k-read IOPS  4k-write IOPS");
    for chunk in [4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 96_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = runtime.block_on(setup(dir.path(), chunk));
        let root = Caller::root();
        let ino = runtime.block_on(async {
            let f = fs
                .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
                .await;
            f.expect("create").ino
        });
        let block = vec![0x5au8; IO];
        let (_, write) = timed(|| {
            runtime.block_on(async {
                for i in 0..FILE / IO as u64 {
                    let at = WriteAt::Offset(i * IO as u64);
                    fs.write(&root, ino, at, &block).await.expect("write");
                }
            })
        });
        let (_, read) = timed(|| {
            runtime.block_on(async {
                for i in 0..FILE / IO as u64 {
                    let got = fs.read(&root, ino, i * IO as u64, IO as u32).await;
                    assert_eq!(got.expect("read").len(), IO);
                }
            })
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let offsets: Vec<u64> = (0..RANDOM_OPS)
            .map(|_| rng.gen_range(0..FILE / SMALL as u64) * SMALL as u64)
            .collect();
        let (_, rread) = timed(|| {
            runtime.block_on(async {
                for &at in &offsets {
                    fs.read(&root, ino, at, SMALL as u32).await.expect("read");
                }
            })
        });
        let small = vec![0x33u8; SMALL];
        let (_, rwrite) = timed(|| {
            runtime.block_on(async {
                for &at in &offsets {
                    let at = WriteAt::Offset(at);
                    fs.write(&root, ino, at, &small).await.expect("write");
                }
            })
        });
        let mib = FILE as f64 / (1 << 20) as f64;
        println!(
            "{:>6}  {:>15.0}  {:>14.0}  {:>12.0}  {:>13.0}",
            chunk,
            mib / write.as_secs_f64(),
            mib / read.as_secs_f64(),
            RANDOM_OPS as f64 / rread.as_secs_f64(),
            RANDOM_OPS as f64 / rwrite.as_secs_f64(),
        );
    }
}

async fn setup(dir: &std::path::Path, chunk: u64) -> Fs {
    let clock = TokioClock::new();
    let options = SqliteOptions {
        durability: Durability::Relaxed,
        ..SqliteOptions::default()
    };
    let sqlite = SqliteBackend::open(&dir.join("c.db"), options, clock.clone()).expect("open");
    let db = Database::new(Arc::new(sqlite), clock, 1);
    let options = MkfsOptions {
        chunk_size: chunk,
        ..MkfsOptions::default()
    };
    mkfs(&db, "fs", options).await.expect("mkfs");
    let options = FsOptions {
        atime: hafs_core::ctx::AtimeMode::Noatime,
        ..FsOptions::default()
    };
    Fs::open(db, "fs", "bench", options).await.expect("open")
}
