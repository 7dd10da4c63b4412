//! Every size and time limit of the KV layer, in one place, units last.
//!
//! These are FoundationDB's documented limits. Every backend enforces them
//! (the [`crate::kv::Transaction`] facade checks them before a backend sees a
//! mutation), so code that fits the embedded SQLite backend also fits a
//! FoundationDB cluster.

use std::time::Duration;

/// Largest key accepted by `set`, `clear`, `atomic_add` and conflict ranges.
pub const KEY_BYTES_MAX: usize = 10_000;
/// Largest value accepted by `set`.
pub const VALUE_BYTES_MAX: usize = 100_000;
/// Largest sum of bytes one transaction may commit: its mutations' keys and
/// values, and the begin and end keys of its read and write conflict
/// ranges (FoundationDB's "affected data"; the reads' values do not count).
pub const TRANSACTION_BYTES_MAX: usize = 10_000_000;
/// A transaction may read for this long after it got its read version;
/// afterwards every operation fails with `transaction_too_old`.
pub const TRANSACTION_AGE_MAX: Duration = Duration::from_secs(5);
/// After a commit whose outcome is unknown, wait this long before relying
/// on it having landed or not: past the age limit it can no longer land
/// (the margin is for clock granularity).
pub const SETTLE_AFTER: Duration = Duration::from_millis(5_100);
const _: () = assert!(SETTLE_AFTER.as_millis() > TRANSACTION_AGE_MAX.as_millis());

/// Default retry budget of the runner: attempts and total elapsed time.
pub const RETRY_ATTEMPTS_MAX: u32 = 100;
pub const RETRY_ELAPSED_MAX: Duration = Duration::from_secs(60);
/// Backoff between retries: doubles from the first value up to the cap, with
/// full jitter (a uniform draw in `[0, backoff]`).
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(2);
pub const RETRY_BACKOFF_CAP: Duration = Duration::from_millis(500);

const _: () = assert!(KEY_BYTES_MAX < VALUE_BYTES_MAX);
const _: () = assert!(VALUE_BYTES_MAX + KEY_BYTES_MAX < TRANSACTION_BYTES_MAX);
const _: () = assert!(RETRY_BACKOFF_FIRST.as_nanos() < RETRY_BACKOFF_CAP.as_nanos());
