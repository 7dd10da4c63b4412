//! Group commit on the durable SQLite backend: concurrent commits of one
//! process share SQLite transactions (fsyncs), and still conflict with each
//! other exactly as if committed one by one — a batch that checked its
//! commits only against the state before the batch would lose increments
//! here. Some commits are relaxed (no fsync), so batches also switch
//! SQLite's synchronous mode back and forth.

use std::sync::Arc;

use hafs_core::clock::TokioClock;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::{Database, KvError};

const TASKS: u64 = 8;
const INCREMENTS: u64 = 60;

fn decode(value: Option<Vec<u8>>) -> u64 {
    value.map_or(0, |v| {
        u64::from_le_bytes(v.try_into().expect("counter is 8 bytes"))
    })
}

#[test]
fn concurrent_durable_commits_share_fsyncs_and_lose_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = runtime.block_on(async { TokioClock::new() });
    let options = SqliteOptions {
        durability: Durability::Durable,
        ..SqliteOptions::default()
    };
    let backend = Arc::new(
        SqliteBackend::open(&dir.path().join("hafs.db"), options, clock.clone()).expect("open"),
    );
    let db = Database::new(backend.clone(), clock, 7);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let db = db.clone();
                tokio::spawn(async move {
                    let own = format!("own/{t}").into_bytes();
                    for round in 0..2 * INCREMENTS {
                        // First a shared counter (conflicts between batch-mates)
                        // and one of the task's own; then only the own one
                        // (no conflicts, so commits can share a batch).
                        let with_shared = round < INCREMENTS;
                        // Every third commit needs no fsync: batches switch
                        // between synchronous modes.
                        let relaxed = round % 3 == t % 3;
                        db.run(|txn, _| {
                            let own = own.clone();
                            async move {
                                if relaxed {
                                    txn.relax_durability();
                                }
                                if with_shared {
                                    let shared = decode(txn.get(b"shared").await?);
                                    txn.set(b"shared", &(shared + 1).to_le_bytes());
                                }
                                let mine = decode(txn.get(&own).await?);
                                txn.set(&own, &(mine + 1).to_le_bytes());
                                Ok::<_, KvError>(())
                            }
                        })
                        .await
                        .expect("increment");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        let (shared, own) = db
            .read(|txn| async move {
                let shared = decode(txn.get(b"shared").await?);
                let mut own = Vec::new();
                for t in 0..TASKS {
                    own.push(decode(txn.get(format!("own/{t}").as_bytes()).await?));
                }
                Ok::<_, KvError>((shared, own))
            })
            .await
            .expect("read");
        assert_eq!(
            shared,
            TASKS * INCREMENTS,
            "lost increments of the shared counter"
        );
        assert!(
            own.iter().all(|&n| n == 2 * INCREMENTS),
            "own counters: {own:?}"
        );
    });
    let (commits, batches) = backend.group_commit_stats();
    assert_eq!(
        commits,
        2 * TASKS * INCREMENTS,
        "every acknowledged commit counted once"
    );
    println!("{commits} durable commits in {batches} SQLite transactions");
    assert!(
        batches < commits,
        "no two commits ever shared a transaction ({batches} batches)"
    );
}
