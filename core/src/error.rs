//! [`FsError`]: every way a filesystem operation fails, each with the errno a
//! local Linux filesystem would return. Rich inside (`Corrupted` says what
//! failed to decode, `Kv` carries the KV error), one number at the edge.

use thiserror::Error;

use crate::kv::{KvError, TxnError};

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    Perm,
    #[error("invalid argument")]
    Invalid,
    #[error("file name too long")]
    NameTooLong,
    #[error("no data available (no such attribute)")]
    NoData,
    #[error("result too large for the buffer")]
    Range,
    #[error("argument list too long (value too large)")]
    TooBig,
    #[error("cross-device link (another subvolume)")]
    CrossDevice,
    #[error("file too large")]
    FileTooBig,
    #[error("too many links")]
    TooManyLinks,
    /// An inode looked up earlier is gone (another client removed it).
    #[error("stale file handle")]
    Stale,
    #[error("resource temporarily unavailable (lock held)")]
    WouldBlock,
    #[error("interrupted")]
    Interrupted,
    /// A lock wait that would close a cycle of owners waiting on each
    /// other's held locks.
    #[error("resource deadlock avoided")]
    Deadlock,
    #[error("no such device (operation needs a regular file)")]
    NoDevice,
    #[error("operation not supported")]
    NotSupported,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("filesystem {0:?} is not formatted")]
    NotFormatted(String),
    #[error("filesystem {0:?} already exists")]
    AlreadyFormatted(String),
    #[error("filesystem busy: {0}")]
    Busy(String),
    /// This client was evicted; it must remount.
    #[error("client evicted (fenced): remount to continue")]
    Fenced,
    /// Stored bytes that do not decode: a bug or on-disk damage.
    #[error("corrupted filesystem data: {0}")]
    Corrupted(String),
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl TxnError for FsError {
    fn as_kv(&self) -> Option<&KvError> {
        match self {
            FsError::Kv(e) => Some(e),
            _ => None,
        }
    }
}

impl FsError {
    /// The errno a local Linux filesystem would return.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Access => libc::EACCES,
            FsError::Perm => libc::EPERM,
            FsError::Invalid => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NoData => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooBig => libc::E2BIG,
            FsError::CrossDevice => libc::EXDEV,
            FsError::FileTooBig => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::Stale => libc::ESTALE,
            FsError::WouldBlock => libc::EAGAIN,
            FsError::Interrupted => libc::EINTR,
            FsError::Deadlock => libc::EDEADLK,
            FsError::NoDevice => libc::ENODEV,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotFormatted(_) => libc::ENODEV,
            FsError::AlreadyFormatted(_) => libc::EEXIST,
            FsError::Busy(_) => libc::EBUSY,
            FsError::Fenced | FsError::Corrupted(_) => libc::EIO,
            FsError::Kv(e) => match e {
                KvError::TimedOut => libc::ETIMEDOUT,
                KvError::NoSpace(_) => libc::ENOSPC,
                KvError::TransactionTooLarge { .. }
                | KvError::KeyTooLarge { .. }
                | KvError::ValueTooLarge { .. } => libc::EFBIG,
                KvError::NotCommitted
                | KvError::CommitUnknownResult
                | KvError::TransactionTooOld
                | KvError::InvalidArgument(_)
                | KvError::UsedAfterCommit
                | KvError::Cancelled
                | KvError::Unavailable(_)
                | KvError::Backend(_) => libc::EIO,
            },
        }
    }
}
