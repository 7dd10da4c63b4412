//! The KV conformance suite, run against every backend (one line each at
//! the bottom): FoundationDB's contract as `hafs_core::kv` states it.
//!
//! Guards against backends (and the shared transaction facade and runner)
//! that: lose or resurrect writes; mishandle empty values or keys with 0x00
//! and 0xff bytes; break read-your-writes, snapshot isolation at the read
//! version, exclusive range ends, limits, `more` or reverse order; miss
//! conflicts (lost updates, phantoms, deletions, explicit conflict ranges)
//! or invent them (blind writes, snapshot reads, writes beyond a limited
//! read, read-only commits); lose atomic adds or get FoundationDB's ADD
//! widths wrong; fire watches wrongly or never; skip the size and age
//! limits or apply part of a failed transaction; retry what must not be
//! retried or hide an ambiguous commit from the body.

#[macro_use]
mod conformance;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use conformance::{Factory, SEED};
use hafs_core::clock::Clock;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions};
use hafs_core::kv::Database;
use tempfile::TempDir;

/// The in-memory backend.
#[derive(Debug)]
struct MemFactory;

#[async_trait]
impl Factory for MemFactory {
    fn name(&self) -> &str {
        "mem"
    }

    fn prefix(&self) -> Vec<u8> {
        b"conformance/".to_vec()
    }

    async fn open(&self, clock: Arc<dyn Clock>) -> Database {
        Database::new(Arc::new(MemBackend::new(clock.clone())), clock, SEED)
    }
}

/// The SQLite backend; every database is a new file in a temporary
/// directory owned by the factory (one per test). `new`: durable, every
/// commit straight to SQLite (as when several processes share the file);
/// the write-behind ones keep commits in a memtable written out behind
/// them (the backend has its file alone), durable ones acknowledged once
/// the sync log holding them is synced.
#[derive(Debug)]
struct SqliteFactory {
    dir: TempDir,
    opened: AtomicU32,
    options: SqliteOptions,
}

impl SqliteFactory {
    fn new() -> Self {
        SqliteFactory {
            dir: tempfile::tempdir().expect("temporary directory"),
            opened: AtomicU32::new(0),
            options: SqliteOptions {
                write_behind: false,
                ..SqliteOptions::default()
            },
        }
    }

    fn write_behind(durability: Durability) -> Self {
        SqliteFactory {
            options: SqliteOptions {
                durability,
                write_behind: true,
                ..SqliteOptions::default()
            },
            ..SqliteFactory::new()
        }
    }

    fn path(&self) -> std::path::PathBuf {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("kv-{n}.sqlite"))
    }
}

#[async_trait]
impl Factory for SqliteFactory {
    fn name(&self) -> &str {
        match (self.options.write_behind, self.options.durability) {
            (false, _) => "sqlite",
            (true, Durability::Relaxed) => "sqlite-write-behind",
            (true, Durability::Durable) => "sqlite-durable-write-behind",
        }
    }

    fn prefix(&self) -> Vec<u8> {
        b"conformance/".to_vec()
    }

    async fn open(&self, clock: Arc<dyn Clock>) -> Database {
        let path = self.path();
        let backend = open_sqlite(&path, self.options, clock.clone());
        Database::new(Arc::new(backend), clock, SEED)
    }
}

fn open_sqlite(path: &Path, options: SqliteOptions, clock: Arc<dyn Clock>) -> SqliteBackend {
    SqliteBackend::open(path, options, clock)
        .unwrap_or_else(|e| panic!("open sqlite database {}: {e}", path.display()))
}

/// FoundationDB, a shared cluster: each factory works under a key prefix of
/// its own, cleared before every database it hands out.
#[cfg(feature = "fdb")]
mod fdb_factory {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use hafs_core::clock::Clock;
    use hafs_core::kv::fdb::FdbBackend;
    use hafs_core::kv::{prefix_end, Database, KvError};

    use crate::conformance::{Factory, SEED};

    const CLUSTER_ENV: &str = "HAFS_TEST_FDB_CLUSTER_FILE";

    #[derive(Debug)]
    pub struct FdbFactory {
        cluster_file: Option<PathBuf>,
        prefix: Vec<u8>,
    }

    impl FdbFactory {
        pub fn from_env() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            FdbFactory {
                cluster_file: std::env::var_os(CLUSTER_ENV).map(PathBuf::from),
                prefix: format!("hafs-test/conformance/{}/{n}/", std::process::id()).into_bytes(),
            }
        }
    }

    #[async_trait]
    impl Factory for FdbFactory {
        fn name(&self) -> &str {
            "fdb"
        }

        fn skip_reason(&self) -> Option<String> {
            self.cluster_file
                .is_none()
                .then(|| format!("{CLUSTER_ENV} not set"))
        }

        fn prefix(&self) -> Vec<u8> {
            self.prefix.clone()
        }

        async fn open(&self, clock: Arc<dyn Clock>) -> Database {
            let path = self
                .cluster_file
                .as_deref()
                .expect("checked by skip_reason");
            let backend = FdbBackend::open(Some(path))
                .unwrap_or_else(|e| panic!("open FoundationDB {}: {e}", path.display()));
            let db = Database::new(Arc::new(backend), clock, SEED);
            let (begin, end) = (
                self.prefix.clone(),
                prefix_end(&self.prefix).expect("prefix has a byte below 0xff"),
            );
            db.run(|txn, _| {
                let (begin, end) = (begin.clone(), end.clone());
                async move {
                    txn.clear_range(&begin, &end);
                    Ok::<_, KvError>(())
                }
            })
            .await
            .expect("clear the test prefix");
            db
        }
    }
}

conformance_tests!(mem, MemFactory);
conformance_tests!(sqlite, SqliteFactory::new());
conformance_tests!(
    sqlite_write_behind,
    SqliteFactory::write_behind(Durability::Relaxed)
);
conformance_tests!(
    sqlite_durable_write_behind,
    SqliteFactory::write_behind(Durability::Durable)
);
#[cfg(feature = "fdb")]
conformance_tests!(fdb, fdb_factory::FdbFactory::from_env());

#[cfg(not(feature = "fdb"))]
#[test]
fn fdb_conformance_skipped() {
    println!("fdb conformance: skipped (built without feature fdb)");
}
