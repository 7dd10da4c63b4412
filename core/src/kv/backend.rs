//! The seam between the transaction facade and a storage engine.
//!
//! A backend only has to do three things: give a consistent snapshot at a
//! read version, answer point and range reads from it, and commit a batch of
//! mutations if none of the batch's read conflict ranges was written after
//! the read version. Read-your-writes, limits, conflict-range bookkeeping and
//! retries live above this seam (in [`super::Transaction`] and
//! [`super::Database::run`]), so every backend gets them identically.

use std::fmt::Debug;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{KeyRange, KeyValue, KvResult, Version};

/// A storage engine with FoundationDB's transaction semantics.
#[async_trait]
pub trait Backend: Send + Sync + Debug {
    /// Short name for logs and errors: "mem", "sqlite", "fdb".
    fn name(&self) -> &'static str;

    /// Whether every operation completes on this host without a network
    /// round trip (SQLite, memory): then a caller may run a transaction on
    /// its own thread to the end rather than as one task among many (the
    /// FUSE adapter does; for FoundationDB it spawns tasks instead).
    fn is_local(&self) -> bool {
        false
    }

    /// Whether the store splits its key space by range across servers
    /// (FoundationDB), so that keys written together should be spread out
    /// rather than side by side. Decides a new filesystem's inode layout
    /// (`crate::keys::InodeLayout`).
    fn spreads_key_ranges(&self) -> bool {
        false
    }

    /// Whether a commit can end with its outcome unknown in the course of
    /// normal operation (`CommitUnknownResult` or `TimedOut` from a network,
    /// a timeout, an injected fault), so that a writer must leave a marker
    /// in the commit to recognise it on retry (`crate::fs`'s idempotency
    /// markers). `false` for a store where that happens only on a local I/O
    /// error (SQLite): the filesystem then reports that error instead of
    /// retrying, and writes no markers. Wrappers that inject ambiguous
    /// commits must say `true`.
    fn ambiguous_commits(&self) -> bool {
        true
    }

    /// Start a transaction: fix its read version. Every read of the returned
    /// snapshot sees exactly the commits with version ≤ that read version.
    async fn begin(&self) -> KvResult<Box<dyn BackendTxn>>;

    /// Make every commit acknowledged so far survive power loss: what
    /// `fsync` asks of a filesystem. Nothing to do where an acknowledged
    /// commit is durable already (FoundationDB, durable SQLite) or never
    /// is (memory).
    async fn sync(&self) -> KvResult<()> {
        Ok(())
    }
}

/// One transaction's view of a backend.
#[async_trait]
pub trait BackendTxn: Send + Sync + Debug {
    /// The read version fixed by `begin`.
    fn read_version(&self) -> Version;

    /// The value of `key` at the read version.
    ///
    /// No conflict bookkeeping happens here: the facade passes the ranges to
    /// check in [`CommitRequest::read_conflicts`].
    async fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>>;

    /// Up to `limit` pairs (0 = no limit) with `begin <= key < end` at the
    /// read version, ascending, or descending if `reverse`. `more` is true
    /// when pairs in the range were left out because of the limit.
    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> KvResult<(Vec<KeyValue>, bool)>;

    /// Atomically: if no range in `request.read_conflicts` was written by a
    /// commit with a version above the read version, apply the mutations in
    /// order under a new version, record `request.write_conflicts` as written
    /// at that version, and arm the watches. Otherwise apply nothing and
    /// return `NotCommitted` (or `TransactionTooOld` if the backend no longer
    /// keeps enough history to decide).
    ///
    /// A request without mutations and write conflicts is read-only: it
    /// commits nothing, arms its watches and returns the read version.
    async fn commit(&self, request: CommitRequest) -> KvResult<Version>;
}

/// One mutation, applied in order at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Clear {
        key: Vec<u8>,
    },
    ClearRange {
        begin: Vec<u8>,
        end: Vec<u8>,
    },
    /// FoundationDB's ADD: the stored value, read as a little-endian integer
    /// zero-extended or truncated to 8 bytes (absent = 0), plus `delta`,
    /// wrapping, stored as 8 bytes.
    Add {
        key: Vec<u8>,
        delta: i64,
    },
}

/// Everything a backend needs to commit a transaction.
#[derive(Debug, Default)]
pub struct CommitRequest {
    pub mutations: Vec<Mutation>,
    /// Sorted, non-overlapping ranges read without snapshot (plus explicit
    /// read conflict ranges).
    pub read_conflicts: Vec<KeyRange>,
    /// Sorted, non-overlapping ranges this commit writes (the mutations'
    /// ranges plus explicit write conflict ranges).
    pub write_conflicts: Vec<KeyRange>,
    pub watches: Vec<WatchRequest>,
    /// The caller does not need this commit to survive power loss (see
    /// [`crate::kv::Transaction::relax_durability`]).
    pub relaxed: bool,
}

impl CommitRequest {
    /// True when committing would change nothing and conflict with nothing.
    pub fn is_read_only(&self) -> bool {
        self.mutations.is_empty() && self.write_conflicts.is_empty()
    }
}

/// A watch to arm at commit: fire `fired` once the stored value of `key`
/// differs from `expected` (the value this transaction saw, its own writes
/// included). If the commit fails the backend drops the sender, and the
/// watch resolves with the commit's error.
#[derive(Debug)]
pub struct WatchRequest {
    pub key: Vec<u8>,
    pub expected: Option<Vec<u8>>,
    pub fired: oneshot::Sender<KvResult<()>>,
}

/// Armed watches on one key: the value each expects, and how to fire it.
pub type Waiters = Vec<(Option<Vec<u8>>, oneshot::Sender<KvResult<()>>)>;

/// Apply FoundationDB's ADD to an existing value.
pub fn apply_add(existing: Option<&[u8]>, delta: i64) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    if let Some(existing) = existing {
        let n = existing.len().min(8);
        bytes[..n].copy_from_slice(&existing[..n]);
    }
    i64::from_le_bytes(bytes).wrapping_add(delta).to_le_bytes()
}
