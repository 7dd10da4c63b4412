//! Huge directories on the `sqlite` backend: 100,000 entries in one
//! directory. Guards against any operation that loads a whole directory:
//! the KV reads of a lookup must not grow with the directory, and readdir
//! must page through every entry exactly once — also while other entries
//! are added and removed concurrently.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use hafs_core::clock::TokioClock;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{Backend, BackendTxn, CommitRequest, Database, KeyValue, KvResult, Version};
use hafs_core::perm;

const ENTRIES: u64 = 100_000;

/// Counts the KV reads that reach the backend.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Backend>,
    reads: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingTxn {
    inner: Box<dyn BackendTxn>,
    reads: Arc<AtomicU64>,
}

#[async_trait]
impl Backend for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    async fn begin(&self) -> KvResult<Box<dyn BackendTxn>> {
        Ok(Box::new(CountingTxn {
            inner: self.inner.begin().await?,
            reads: self.reads.clone(),
        }))
    }
}

#[async_trait]
impl BackendTxn for CountingTxn {
    fn read_version(&self) -> Version {
        self.inner.read_version()
    }
    async fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> KvResult<(Vec<KeyValue>, bool)> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(begin, end, limit, reverse).await
    }
    async fn commit(&self, request: CommitRequest) -> KvResult<Version> {
        self.inner.commit(request).await
    }
}

fn name(i: u64) -> Vec<u8> {
    format!("entry-{i:07}").into_bytes()
}

/// Lookup cost, in backend reads, of an existing and a missing name.
async fn lookup_reads(fs: &Fs, reads: &AtomicU64, dir: u64, n: &[u8]) -> u64 {
    let before = reads.load(Ordering::Relaxed);
    let _ = fs.lookup(&Caller::root(), dir, n).await;
    reads.load(Ordering::Relaxed) - before
}

async fn list_all(fs: &Fs, dir: u64, page: usize) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let got = fs
            .readdir(&Caller::root(), dir, cursor.as_deref(), page)
            .await
            .unwrap();
        names.extend(got.entries.iter().map(|(n, _)| n.clone()));
        cursor = names.last().cloned();
        if !got.more {
            return names;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = TokioClock::new();
    let options = SqliteOptions {
        durability: Durability::Relaxed,
        ..SqliteOptions::default()
    };
    let sqlite = SqliteBackend::open(&tmp.path().join("hafs.db"), options, clock.clone()).unwrap();
    let reads = Arc::new(AtomicU64::new(0));
    let backend = Arc::new(Counting {
        inner: Arc::new(sqlite),
        reads: reads.clone(),
    });
    let db = Database::new(backend, clock, 11);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let fs = Arc::new(
        Fs::open(db, "fs", "c1", FsOptions::default())
            .await
            .unwrap(),
    );
    let root = Caller::root();
    let dir = fs.mkdir(&root, ROOT_INO, b"big", 0o755).await.unwrap().ino;

    let small_hit = {
        fs.create(&root, dir, &name(0), 0o644, true, perm::WRITE)
            .await
            .unwrap();
        lookup_reads(&fs, &reads, dir, &name(0)).await
    };
    let small_miss = lookup_reads(&fs, &reads, dir, b"absent").await;

    // Fill from several tasks at once.
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let fs = fs.clone();
            tokio::spawn(async move {
                for i in (1..ENTRIES).filter(|i| i % 4 == t) {
                    fs.create(&Caller::root(), dir, &name(i), 0o644, true, perm::WRITE)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    assert_eq!(
        lookup_reads(&fs, &reads, dir, &name(ENTRIES / 2)).await,
        small_hit
    );
    assert_eq!(lookup_reads(&fs, &reads, dir, b"absent").await, small_miss);

    let listed = list_all(&fs, dir, 1000).await;
    assert_eq!(listed.len() as u64, ENTRIES);
    let unique: BTreeSet<_> = listed.iter().collect();
    assert_eq!(unique.len() as u64, ENTRIES, "an entry was listed twice");
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "listing out of order"
    );

    // List again while another client churns: it adds and removes names
    // between existing ones and removes and re-adds every 97th entry.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (fs, stop) = (fs.clone(), stop.clone());
        tokio::spawn(async move {
            let root = Caller::root();
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = (k * 7919) % ENTRIES;
                let mut extra = name(i);
                extra.push(b'x');
                fs.create(&root, dir, &extra, 0o644, true, perm::WRITE)
                    .await
                    .unwrap();
                fs.unlink(&root, dir, &extra).await.unwrap();
                let victim = name((k * 97) % ENTRIES);
                fs.unlink(&root, dir, &victim).await.unwrap();
                fs.create(&root, dir, &victim, 0o644, true, perm::WRITE)
                    .await
                    .unwrap();
                k += 1;
            }
            k
        })
    };
    let listed = list_all(&fs, dir, 1000).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.await.unwrap();
    assert!(rounds > 10, "the churn barely ran ({rounds} rounds)");
    let unique: BTreeSet<_> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "an entry was listed twice");
    let touched: BTreeSet<u64> = (0..rounds).map(|k| (k * 97) % ENTRIES).collect();
    for i in (0..ENTRIES).filter(|i| !touched.contains(i)) {
        assert!(
            unique.contains(&name(i)),
            "entry {i} was present throughout but not listed"
        );
    }
}
