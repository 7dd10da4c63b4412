//! [`Database`]: a backend plus the injected clock and RNG, and the one retry
//! loop every transaction goes through.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Backend, KvError, KvResult, RetryDecision, Transaction, TxnError};
use crate::clock::Clock;
use crate::limits;

/// The runner's budget and backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOptions {
    pub attempts_max: u32,
    pub elapsed_max: Duration,
    pub backoff_first: Duration,
    pub backoff_cap: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            attempts_max: limits::RETRY_ATTEMPTS_MAX,
            elapsed_max: limits::RETRY_ELAPSED_MAX,
            backoff_first: limits::RETRY_BACKOFF_FIRST,
            backoff_cap: limits::RETRY_BACKOFF_CAP,
        }
    }
}

/// A handle on one KV store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    /// Jitter only; seeded by the caller so simulation is reproducible.
    rng: Mutex<ChaCha8Rng>,
    retry: RetryOptions,
}

impl Database {
    /// `seed` feeds the backoff jitter; production passes OS randomness,
    /// the simulator its run's seed.
    pub fn new(backend: Arc<dyn Backend>, clock: Arc<dyn Clock>, seed: u64) -> Self {
        Database::with_retry(backend, clock, seed, RetryOptions::default())
    }

    pub fn with_retry(
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        seed: u64,
        retry: RetryOptions,
    ) -> Self {
        Database {
            inner: Arc::new(Inner {
                backend,
                clock,
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
                retry,
            }),
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Make every commit acknowledged so far survive power loss
    /// ([`Backend::sync`]).
    pub async fn sync(&self) -> KvResult<()> {
        self.inner.backend.sync().await
    }

    /// Start a transaction by hand (no retries). Prefer [`Database::run`].
    pub async fn begin(&self) -> KvResult<Transaction> {
        let backend_txn = self.inner.backend.begin().await?;
        Ok(Transaction::new(backend_txn, self.inner.clock.clone()))
    }

    /// Run `body` in a transaction and commit it, retrying on retryable
    /// errors within the budget. `body` gets a fresh transaction each attempt
    /// and `maybe_committed`: true once an earlier attempt ended in
    /// `CommitUnknownResult`, so its writes may already be applied.
    ///
    /// # Warning: maybe committed
    /// After `CommitUnknownResult`, `body` runs again. Work that is not
    /// idempotent must check `maybe_committed` (or an idempotency marker it
    /// wrote in the same transaction) before repeating itself. `TimedOut` is
    /// never retried: that commit may still be applied later.
    pub async fn run<T, E, F, Fut>(&self, body: F) -> Result<T, E>
    where
        F: FnMut(Transaction, bool) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxnError,
    {
        self.run_capped(Duration::MAX, body).await
    }

    /// [`Database::run`] whose backoff between retries never exceeds `cap`
    /// (nor the database's own cap). For work whose rivals commit over and
    /// over, like two processes taking turns at one lock: a loser's backoff
    /// doubling towards 500 ms let the other side win every race meanwhile
    /// (waits of up to 0.9 s measured for a lock taken in turns across two
    /// mounts).
    pub async fn run_capped<T, E, F, Fut>(&self, cap: Duration, mut body: F) -> Result<T, E>
    where
        F: FnMut(Transaction, bool) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxnError,
    {
        let mut retry = RetryState::new(self, cap);
        loop {
            let attempt = async {
                let txn = self.begin().await?;
                let value = body(txn.clone(), retry.maybe_committed).await?;
                txn.commit().await?;
                Ok::<T, E>(value)
            };
            match attempt.await {
                Ok(value) => return Ok(value),
                Err(e) => retry.on_error(e).await?,
            }
        }
    }

    /// Run a read-only `body`: no commit (its reads already saw one
    /// consistent version), retried on retryable errors within the budget.
    pub async fn read<T, E, F, Fut>(&self, mut body: F) -> Result<T, E>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxnError,
    {
        let mut retry = RetryState::new(self, Duration::MAX);
        loop {
            let attempt = async {
                let txn = self.begin().await?;
                body(txn).await
            };
            match attempt.await {
                Ok(value) => return Ok(value),
                Err(e) => retry.on_error(e).await?,
            }
        }
    }

    fn jitter(&self, backoff: Duration) -> Duration {
        let nanos = u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.inner.rng.lock().gen_range(0..=nanos))
    }
}

/// One call's progress through the retry budget.
struct RetryState<'a> {
    db: &'a Database,
    started: Duration,
    attempts: u32,
    backoff: Duration,
    cap: Duration,
    maybe_committed: bool,
}

impl<'a> RetryState<'a> {
    /// Backoff capped at `cap` as well as at the database's own cap.
    fn new(db: &'a Database, cap: Duration) -> Self {
        let cap = db.inner.retry.backoff_cap.min(cap);
        RetryState {
            db,
            started: db.inner.clock.monotonic(),
            attempts: 0,
            backoff: db.inner.retry.backoff_first.min(cap),
            cap,
            maybe_committed: false,
        }
    }

    /// Sleep and return `Ok` to retry, or give the error back.
    async fn on_error<E: TxnError>(&mut self, error: E) -> Result<(), E> {
        let options = self.db.inner.retry;
        self.attempts += 1;
        let decision = error.as_kv().map_or(RetryDecision::Fail, KvError::retry);
        let elapsed = self.db.inner.clock.monotonic().saturating_sub(self.started);
        // A capped run's attempts come fast by design (two mounts passing
        // a lock back and forth collide again and again): a count sized for
        // backoffs that double towards the database's cap gave up after
        // ~50 ms of such collisions at a 1 ms cap, and a lock peer in a
        // two-mount fcntl ping-pong got EIO. Elapsed time bounds it alone.
        let attempts_max = if self.cap < options.backoff_cap {
            u32::MAX
        } else {
            options.attempts_max
        };
        if decision == RetryDecision::Fail
            || self.attempts >= attempts_max
            || elapsed >= options.elapsed_max
        {
            return Err(error);
        }
        if decision == RetryDecision::RetryMaybeCommitted {
            self.maybe_committed = true;
        }
        tracing::trace!(attempt = self.attempts, error = ?error.as_kv(), "retrying transaction");
        // A first conflict retries at once. `NotCommitted` means another
        // transaction committed since this one read, so a new attempt reads
        // the state that beat it and usually commits; backing off helps
        // only when many keep colliding, which the later attempts still do.
        // (The SQLite backend also answers `NotCommitted` while it switches
        // between buffering and direct commits, a rare event; a retry that
        // meets the switch still under way fails again and backs off.)
        // A sleep here cost at least a millisecond (tokio rounds timers up
        // to its 1 ms tick): two processes passing a flock back and forth
        // on one mount collided on about one hand-off in six, which put
        // p95 at 2.5 ms and p99 at 3.6 ms against a 0.3 ms median.
        if self.attempts == 1 && matches!(error.as_kv(), Some(KvError::NotCommitted)) {
            tokio::task::yield_now().await;
            return Ok(());
        }
        let pause = self.db.jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(self.cap);
        self.db.inner.clock.sleep(pause).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::Database;
    use crate::clock::{Clock, ManualClock};
    use crate::kv::mem::MemBackend;
    use crate::kv::KvError;

    /// Runs a transaction that meets `conflicts` conflicts, with backoff
    /// capped at `cap`; the clock's time at the start of each attempt.
    /// `ManualClock` moves only by sleeps, so the gaps are the backoffs.
    async fn attempt_times(conflicts: usize, cap: Duration) -> Vec<Duration> {
        let (times, result) = attempts(conflicts, cap).await;
        result.expect("run");
        times
    }

    /// [`attempt_times`], and how the run ended.
    async fn attempts(conflicts: usize, cap: Duration) -> (Vec<Duration>, Result<(), KvError>) {
        let clock = ManualClock::new();
        let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock.clone(), 11);
        let started_at = Mutex::new(Vec::new());
        let result = db
            .run_capped(cap, |txn, _| {
                let (db, clock, started_at) = (db.clone(), clock.clone(), &started_at);
                async move {
                    let attempt = {
                        let mut started_at = started_at.lock();
                        started_at.push(clock.monotonic());
                        started_at.len()
                    };
                    txn.get(b"k").await?;
                    if attempt <= conflicts {
                        // An interloper commits a write to what this attempt read.
                        db.run(|other, _| async move {
                            other.set(b"k", &[attempt as u8]);
                            Ok::<_, KvError>(())
                        })
                        .await?;
                    }
                    txn.set(b"k", b"mine");
                    Ok::<_, KvError>(())
                }
            })
            .await;
        (started_at.into_inner(), result)
    }

    /// The first conflict retries without sleeping; later ones back off.
    #[tokio::test(flavor = "current_thread")]
    async fn a_first_conflict_retries_at_once_and_later_ones_back_off() {
        let started_at = attempt_times(3, Duration::MAX).await;
        assert_eq!(started_at.len(), 4, "three conflicts, then a commit");
        assert_eq!(started_at[1], Duration::ZERO, "the first retry slept");
        assert!(
            started_at[3] > started_at[1],
            "the later retries did not back off: {started_at:?}"
        );
    }

    /// `run_capped` never pauses longer than its cap; `run`'s backoff, over
    /// the same conflicts (and the same seeded jitter), does.
    #[tokio::test(flavor = "current_thread")]
    async fn a_capped_run_never_backs_off_past_its_cap() {
        let cap = Duration::from_millis(1);
        let gaps = |times: Vec<Duration>| -> Vec<Duration> {
            times.windows(2).map(|w| w[1] - w[0]).collect()
        };
        let capped = gaps(attempt_times(8, cap).await);
        assert_eq!(capped.len(), 8);
        assert!(capped.iter().all(|g| *g <= cap), "{capped:?}");
        let free = gaps(attempt_times(8, Duration::MAX).await);
        assert!(free.iter().any(|g| *g > cap), "{free:?}");
    }

    /// A capped run outlasts the attempt count that ends an uncapped one:
    /// its budget is time (a minute), which its short pauses use slowly.
    #[tokio::test(flavor = "current_thread")]
    async fn a_capped_run_is_bounded_by_time_not_attempts() {
        let conflicts = crate::limits::RETRY_ATTEMPTS_MAX as usize + 50;
        let (times, capped) = attempts(conflicts, Duration::from_millis(1)).await;
        assert!(capped.is_ok(), "{capped:?}");
        assert_eq!(times.len(), conflicts + 1);
        let (_, free) = attempts(conflicts, Duration::MAX).await;
        assert!(matches!(free, Err(KvError::NotCommitted)), "{free:?}");
    }
}
