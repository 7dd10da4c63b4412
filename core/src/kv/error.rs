//! The KV layer's error classes: FoundationDB's, so retry decisions made here
//! are the ones FoundationDB's own client would make.

use thiserror::Error;

/// Result of a KV operation.
pub type KvResult<T> = Result<T, KvError>;

/// An error from a transaction or a backend.
///
/// The classes follow FoundationDB. [`KvError::retry`] says what the runner
/// may do with each one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KvError {
    /// A key or range this transaction read (without snapshot) was written by
    /// a transaction that committed after this one's read version. Nothing
    /// was applied. Retry.
    #[error("transaction not committed due to conflict with another transaction")]
    NotCommitted,
    /// The commit may or may not have been applied. Retry only work that is
    /// idempotent (or guarded by an idempotency marker).
    #[error("transaction may or may not have committed")]
    CommitUnknownResult,
    /// More than five seconds passed since the read version, or the backend
    /// no longer keeps the history needed to check this transaction. Nothing
    /// was applied. Retry.
    #[error("transaction is too old to perform reads or be committed")]
    TransactionTooOld,
    /// The operation did not finish in time. A commit that timed out may
    /// still be applied later, so this is not retried blindly.
    #[error("operation timed out; a commit may still be applied later")]
    TimedOut,
    /// A key is longer than [`crate::limits::KEY_BYTES_MAX`].
    #[error("key too large: {bytes} bytes (max {max})", max = crate::limits::KEY_BYTES_MAX)]
    KeyTooLarge { bytes: usize },
    /// A value is longer than [`crate::limits::VALUE_BYTES_MAX`].
    #[error("value too large: {bytes} bytes (max {max})", max = crate::limits::VALUE_BYTES_MAX)]
    ValueTooLarge { bytes: usize },
    /// The transaction's mutations exceed [`crate::limits::TRANSACTION_BYTES_MAX`].
    #[error("transaction too large: {bytes} bytes (max {max})", max = crate::limits::TRANSACTION_BYTES_MAX)]
    TransactionTooLarge { bytes: usize },
    /// A range with `begin > end`, or another malformed request.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The transaction was already committed or its commit already failed.
    #[error("transaction used after commit")]
    UsedAfterCommit,
    /// A watch whose transaction did not commit, or whose backend shut down.
    #[error("operation cancelled")]
    Cancelled,
    /// The backend cannot be reached. Nothing was applied (an ambiguous
    /// failure during commit is reported as `CommitUnknownResult`). Retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database's disk is full: nothing was applied. Not retried (ENOSPC
    /// at the FUSE edge).
    #[error("no space left for the database: {0}")]
    NoSpace(String),
    /// Stored bytes the backend cannot interpret, or a backend failure that is
    /// not transient (I/O error, permission denied). Not retried.
    #[error("database error: {0}")]
    Backend(String),
}

/// What the retry runner does with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Nothing was applied: retry.
    Retry,
    /// The commit may have been applied: retry, telling the closure.
    RetryMaybeCommitted,
    /// Surface the error to the caller.
    Fail,
}

impl KvError {
    /// The runner's classification of this error.
    pub fn retry(&self) -> RetryDecision {
        match self {
            KvError::NotCommitted | KvError::TransactionTooOld | KvError::Unavailable(_) => {
                RetryDecision::Retry
            }
            KvError::CommitUnknownResult => RetryDecision::RetryMaybeCommitted,
            KvError::TimedOut
            | KvError::KeyTooLarge { .. }
            | KvError::ValueTooLarge { .. }
            | KvError::TransactionTooLarge { .. }
            | KvError::InvalidArgument(_)
            | KvError::UsedAfterCommit
            | KvError::Cancelled
            | KvError::NoSpace(_)
            | KvError::Backend(_) => RetryDecision::Fail,
        }
    }
}

/// An error type a [`crate::kv::Database::run`] closure may return: it can be
/// built from a [`KvError`] and may carry one, which the runner classifies.
pub trait TxnError: From<KvError> {
    /// The KV error inside, if this error is one.
    fn as_kv(&self) -> Option<&KvError>;
}

impl TxnError for KvError {
    fn as_kv(&self) -> Option<&KvError> {
        Some(self)
    }
}
