//! `fdb`: the FoundationDB backend (cargo feature `fdb`, client API 7.3).
//!
//! It owns the process-wide FoundationDB client network (booted once, on the
//! first [`FdbBackend::open`]), one database handle per backend, and the
//! translation of the [`Backend`] seam onto native transactions: reads are
//! snapshot reads at the read version fixed by `begin`, and at commit the
//! facade's buffered mutations, its read and write conflict ranges and its
//! watches are handed to one native transaction, so FoundationDB's resolver
//! does the conflict checking. FoundationDB errors map onto [`KvError`] by
//! their numeric code in [`classify`] (conflict → `NotCommitted`, maybe
//! committed → `CommitUnknownResult`, too old, timeouts, size limits,
//! transient cluster trouble → `Unavailable`, anything else → `Backend`);
//! codes the table does not know fall back on the client library's own
//! retryable / maybe-committed predicates.
//!
//! Building needs `libclang-dev` (bindgen over the embedded 7.3 headers);
//! linking and running need `libfdb_c` from a FoundationDB 7.3 client
//! package. Point it at a cluster with `fdb:` (the default cluster file:
//! `$FDB_CLUSTER_FILE`, else `/etc/foundationdb/fdb.cluster`) or
//! `fdb:///path/to/fdb.cluster`.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{ConflictRangeType, MutationType, StreamingMode};
use foundationdb::{Database, FdbError, FdbResult, RangeOption, Transaction, TransactionCommitted};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::backend::{Backend, BackendTxn, CommitRequest, Mutation, WatchRequest};
use super::{KeyValue, KvError, KvResult, Version};

/// The client API version this backend is written against (FDB 7.3).
const API_VERSION: i32 = 730;

/// The FoundationDB backend. Clones share one database handle.
#[derive(Clone)]
pub struct FdbBackend {
    db: Arc<Database>,
    /// `None` = the default cluster file; kept for `Debug` only.
    cluster_file: Option<PathBuf>,
}

impl fmt::Debug for FdbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Database` is an opaque C handle without a `Debug` impl.
        f.debug_struct("FdbBackend")
            .field("cluster_file", &self.cluster_file)
            .finish_non_exhaustive()
    }
}

impl FdbBackend {
    /// Connect to the cluster named by `cluster_file`, or by the default
    /// cluster file (which honours `FDB_CLUSTER_FILE`) when `None`. Boots the
    /// client network on first use. Connecting is lazy: an unreachable
    /// cluster shows up as errors from the first transaction.
    pub fn open(cluster_file: Option<&Path>) -> Result<FdbBackend, KvError> {
        ensure_network()?;
        let path = cluster_file.map(cluster_file_str).transpose()?;
        let db = Database::new(path).map_err(map_fdb)?;
        Ok(FdbBackend {
            db: Arc::new(db),
            cluster_file: cluster_file.map(Path::to_path_buf),
        })
    }
}

/// `Database::new` takes a `&str` and panics on an interior NUL, so reject
/// both problems here as errors.
fn cluster_file_str(path: &Path) -> KvResult<&str> {
    let invalid = |why: &str| KvError::InvalidArgument(format!("cluster file {path:?} {why}"));
    let s = path.to_str().ok_or_else(|| invalid("is not valid UTF-8"))?;
    if s.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    Ok(s)
}

/// The client network, booted at most once per process: FoundationDB allows
/// selecting the API version and running the network only once, so a failed
/// boot is remembered rather than retried.
///
/// The `NetworkAutoStop` guard lives in this static and is never dropped
/// (statics are not dropped at exit). Dropping it stops the network for good
/// (it cannot be restarted in the same process), and backends may be opened
/// and dropped at any time, so no backend can own it. The cost: the process
/// exits without `fdb_stop_network`, which the C API calls undefined; in
/// practice the worst case is a crash during exit, after every commit has
/// already been acknowledged by the cluster, so no acknowledged data is lost.
static NETWORK: OnceLock<Result<NetworkAutoStop, KvError>> = OnceLock::new();

fn ensure_network() -> KvResult<()> {
    match NETWORK.get_or_init(boot_network) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.clone()),
    }
}

// The crate's only way to start the network thread is the unsafe `boot`;
// this is the one place in the workspace that needs `unsafe`.
#[allow(unsafe_code)]
fn boot_network() -> KvResult<NetworkAutoStop> {
    let builder = FdbApiBuilder::default()
        .set_runtime_version(API_VERSION)
        .build()
        .map_err(map_fdb)?;
    // SAFETY: `boot` requires the returned guard to be dropped before the
    // process exits (so the network thread is stopped first). We keep it in
    // `NETWORK` for the life of the process instead; see the comment there
    // for why, and what that costs. `boot` runs at most once per process:
    // `OnceLock` never re-runs a completed init, and `build` above panics on
    // a second API-version selection before `boot` could be reached.
    unsafe { builder.boot() }.map_err(map_fdb)
}

#[async_trait]
impl Backend for FdbBackend {
    fn name(&self) -> &'static str {
        "fdb"
    }

    fn spreads_key_ranges(&self) -> bool {
        true
    }

    async fn begin(&self) -> KvResult<Box<dyn BackendTxn>> {
        let txn = self.db.create_trx().map_err(map_fdb)?;
        let read_version = to_version(txn.get_read_version().await.map_err(map_fdb)?)?;
        Ok(Box::new(FdbTxn {
            txn: Mutex::new(Some(txn)),
            read_version,
        }))
    }
}

/// One native transaction. Read-your-writes stays enabled (native watches
/// require it), but nothing is written to the native transaction before
/// `commit`, so reads see exactly the snapshot at the read version.
#[derive(Debug)]
struct FdbTxn {
    /// Taken by `commit`, which consumes the native transaction.
    txn: Mutex<Option<Transaction>>,
    read_version: Version,
}

impl FdbTxn {
    /// Start an operation on the native transaction. The returned futures do
    /// not borrow it, so the lock is released before they are awaited.
    fn with_txn<T>(&self, op: impl FnOnce(&Transaction) -> T) -> KvResult<T> {
        let guard = self.txn.lock();
        let txn = guard.as_ref().ok_or(KvError::UsedAfterCommit)?;
        Ok(op(txn))
    }

    fn commit_version(&self, committed: &TransactionCommitted) -> KvResult<Version> {
        match committed.committed_version().map_err(map_fdb)? {
            // -1: the cluster found nothing to write and treated it as read-only.
            v if v < 0 => Ok(self.read_version),
            v => to_version(v),
        }
    }
}

#[async_trait]
impl BackendTxn for FdbTxn {
    fn read_version(&self) -> Version {
        self.read_version
    }

    async fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        // Snapshot: the facade passes read conflicts explicitly at commit.
        let value = self
            .with_txn(|t| t.get(key, true))?
            .await
            .map_err(map_fdb)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> KvResult<(Vec<KeyValue>, bool)> {
        if begin >= end {
            return Ok((Vec::new(), false));
        }
        // FoundationDB's own `more` flag may be set spuriously, so ask for
        // one pair beyond the limit: it exists iff pairs were left out.
        let mut option = RangeOption {
            limit: (limit != 0).then(|| limit.saturating_add(1)),
            // Every page is consumed at once; the limit still caps each page.
            mode: StreamingMode::WantAll,
            reverse,
            ..RangeOption::from((begin.to_vec(), end.to_vec()))
        };
        let mut out = Vec::new();
        for iteration in 1.. {
            let page = self
                .with_txn(|t| t.get_range(&option, iteration, true))?
                .await
                .map_err(map_fdb)?;
            out.extend(
                page.iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
            );
            // `next_range` narrows the range past the page and lowers the
            // remaining limit; `None` once the range or the limit is used up.
            match option.next_range(&page) {
                Some(next) => option = next,
                None => break,
            }
        }
        let more = limit != 0 && out.len() > limit;
        if more {
            out.truncate(limit);
        }
        Ok((out, more))
    }

    async fn commit(&self, request: CommitRequest) -> KvResult<Version> {
        let txn = self.txn.lock().take().ok_or(KvError::UsedAfterCommit)?;
        let read_only = request.is_read_only();
        stage(&txn, &request)?;
        // Armed after the mutations are staged, so each native watch compares
        // against this transaction's own view (its writes included), which is
        // what `WatchRequest::expected` holds.
        let watches: Vec<_> = request
            .watches
            .into_iter()
            .map(|WatchRequest { key, fired, .. }| (txn.watch(&key), fired))
            .collect();
        // On failure `watches` is dropped: the senders close (the facade's
        // watches resolve with an error) and the native watches are cancelled.
        let committed = txn.commit().await.map_err(|e| map_fdb(FdbError::from(e)))?;
        let version = if read_only {
            self.read_version
        } else {
            self.commit_version(&committed)?
        };
        for (watch, fired) in watches {
            tokio::spawn(deliver_watch(watch, fired));
        }
        Ok(version)
    }
}

/// Put the request's conflict ranges and mutations on the native
/// transaction, mutations in order.
///
/// Read conflicts go first. In read-your-writes mode (kept for watches) the
/// native client adds a read conflict only where the transaction has not
/// written yet (`ReadYourWritesTransaction::updateConflictMap`: a read of
/// one's own write needs no conflict, it assumes). Added after the
/// mutations, every read conflict on a key the transaction also sets or
/// clears — each read-modify-write: a lock record, a directory entry,
/// eviction's check of the session key — was dropped (only keys changed by
/// atomic adds kept theirs), and two such transactions could both commit.
fn stage(txn: &Transaction, request: &CommitRequest) -> KvResult<()> {
    for range in &request.read_conflicts {
        txn.add_conflict_range(&range.begin, &range.end, ConflictRangeType::Read)
            .map_err(map_fdb)?;
    }
    for mutation in &request.mutations {
        match mutation {
            Mutation::Set { key, value } => txn.set(key, value),
            Mutation::Clear { key } => txn.clear(key),
            Mutation::ClearRange { begin, end } => txn.clear_range(begin, end),
            Mutation::Add { key, delta } => {
                txn.atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
            }
        }
    }
    for range in &request.write_conflicts {
        txn.add_conflict_range(&range.begin, &range.end, ConflictRangeType::Write)
            .map_err(map_fdb)?;
    }
    Ok(())
}

/// Wait for a native watch and report it. If the facade's `Watch` is dropped
/// first, stop waiting: dropping the native future cancels the watch, which
/// would otherwise count against the per-connection watch limit forever.
async fn deliver_watch(
    watch: impl Future<Output = FdbResult<()>>,
    mut fired: oneshot::Sender<KvResult<()>>,
) {
    tokio::select! {
        result = watch => {
            let _ = fired.send(result.map_err(map_fdb));
        }
        () = fired.closed() => {}
    }
}

fn to_version(version: i64) -> KvResult<Version> {
    Version::try_from(version)
        .map_err(|_| KvError::Backend(format!("FoundationDB returned version {version}")))
}

/// Map a native error: the code table first, then, for codes it does not
/// know, the client library's own predicates.
fn map_fdb(error: FdbError) -> KvError {
    let message = format!("{} (fdb error {})", error.message(), error.code());
    match classify(error.code(), &message) {
        KvError::Backend(_) if error.is_maybe_committed() => KvError::CommitUnknownResult,
        KvError::Backend(message) if error.is_retryable() => KvError::Unavailable(message),
        known => known,
    }
}

// FoundationDB error codes (flow/error_definitions.h, 7.3).
const TIMED_OUT: i32 = 1004;
const TRANSACTION_TOO_OLD: i32 = 1007;
const FUTURE_VERSION: i32 = 1009;
const NOT_COMMITTED: i32 = 1020;
const COMMIT_UNKNOWN_RESULT: i32 = 1021;
const TRANSACTION_CANCELLED: i32 = 1025;
const WATCH_CANCELLED: i32 = 1029;
const TRANSACTION_TIMED_OUT: i32 = 1031;
const PROCESS_BEHIND: i32 = 1037;
const DATABASE_LOCKED: i32 = 1038;
const CLUSTER_VERSION_CHANGED: i32 = 1039;
const COMMIT_PROXY_MEMORY_LIMIT_EXCEEDED: i32 = 1042;
const BATCH_TRANSACTION_THROTTLED: i32 = 1051;
const GRV_PROXY_MEMORY_LIMIT_EXCEEDED: i32 = 1078;
const OPERATION_CANCELLED: i32 = 1101;
const TAG_THROTTLED: i32 = 1213;
const PROXY_TAG_THROTTLED: i32 = 1223;
const TRANSACTION_THROTTLED_HOT_SHARD: i32 = 1235;
const TRANSACTION_TOO_LARGE: i32 = 2101;
const KEY_TOO_LARGE: i32 = 2102;
const VALUE_TOO_LARGE: i32 = 2103;

/// The [`KvError`] class of a FoundationDB error code.
///
/// - `not_committed` → `NotCommitted`;
/// - `commit_unknown_result` and `cluster_version_changed` (the two codes
///   the client library calls maybe-committed) → `CommitUnknownResult`;
/// - `transaction_too_old` → `TransactionTooOld`;
/// - `timed_out`, `transaction_timed_out` → `TimedOut` (a commit may still
///   land, so not retried blindly);
/// - `transaction_too_large`, `key_too_large`, `value_too_large` → the
///   matching size error, with `bytes: 0` because FoundationDB does not say
///   how large (the facade checks the same limits first, with sizes);
/// - `transaction_cancelled`, `watch_cancelled`, `operation_cancelled` →
///   `Cancelled` (a dropped transaction or a watch the server gave up on);
/// - the retryable-not-committed codes (`future_version`, `process_behind`,
///   `database_locked`, proxy memory limits, throttling) → `Unavailable`:
///   nothing was applied and the cluster should recover;
/// - anything else → `Backend` (but see [`map_fdb`], which asks the client
///   library about codes missing here).
fn classify(code: i32, message: &str) -> KvError {
    match code {
        NOT_COMMITTED => KvError::NotCommitted,
        COMMIT_UNKNOWN_RESULT | CLUSTER_VERSION_CHANGED => KvError::CommitUnknownResult,
        TRANSACTION_TOO_OLD => KvError::TransactionTooOld,
        TIMED_OUT | TRANSACTION_TIMED_OUT => KvError::TimedOut,
        TRANSACTION_TOO_LARGE => KvError::TransactionTooLarge { bytes: 0 },
        KEY_TOO_LARGE => KvError::KeyTooLarge { bytes: 0 },
        VALUE_TOO_LARGE => KvError::ValueTooLarge { bytes: 0 },
        TRANSACTION_CANCELLED | WATCH_CANCELLED | OPERATION_CANCELLED => KvError::Cancelled,
        FUTURE_VERSION
        | PROCESS_BEHIND
        | DATABASE_LOCKED
        | COMMIT_PROXY_MEMORY_LIMIT_EXCEEDED
        | BATCH_TRANSACTION_THROTTLED
        | GRV_PROXY_MEMORY_LIMIT_EXCEEDED
        | TAG_THROTTLED
        | PROXY_TAG_THROTTLED
        | TRANSACTION_THROTTLED_HOT_SHARD => KvError::Unavailable(message.to_owned()),
        _ => KvError::Backend(message.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    //! `classify` is pure, but this test binary links `libfdb_c` (the crate
    //! does), so it only runs where the FoundationDB client is installed.

    use super::*;
    use crate::kv::RetryDecision;

    #[test]
    fn classify_maps_each_class() {
        let m = "msg";
        assert_eq!(classify(1020, m), KvError::NotCommitted);
        assert_eq!(classify(1021, m), KvError::CommitUnknownResult);
        assert_eq!(classify(1039, m), KvError::CommitUnknownResult);
        assert_eq!(classify(1007, m), KvError::TransactionTooOld);
        assert_eq!(classify(1004, m), KvError::TimedOut);
        assert_eq!(classify(1031, m), KvError::TimedOut);
        assert_eq!(classify(2101, m), KvError::TransactionTooLarge { bytes: 0 });
        assert_eq!(classify(2102, m), KvError::KeyTooLarge { bytes: 0 });
        assert_eq!(classify(2103, m), KvError::ValueTooLarge { bytes: 0 });
        for code in [1025, 1029, 1101] {
            assert_eq!(classify(code, m), KvError::Cancelled, "code {code}");
        }
        for code in [1009, 1037, 1038, 1042, 1051, 1078, 1213, 1223, 1235] {
            assert_eq!(
                classify(code, m),
                KvError::Unavailable(m.into()),
                "code {code}"
            );
        }
        for code in [1, 1510, 2000, 2004, 4100] {
            assert_eq!(classify(code, m), KvError::Backend(m.into()), "code {code}");
        }
    }

    #[test]
    fn classify_agrees_with_retry_decisions() {
        let decide = |code| classify(code, "").retry();
        assert_eq!(decide(1020), RetryDecision::Retry);
        assert_eq!(decide(1007), RetryDecision::Retry);
        assert_eq!(decide(1009), RetryDecision::Retry);
        assert_eq!(decide(1021), RetryDecision::RetryMaybeCommitted);
        assert_eq!(decide(1031), RetryDecision::Fail);
        assert_eq!(decide(2101), RetryDecision::Fail);
    }
}
