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
    pub async fn run<T, E, F, Fut>(&self, mut body: F) -> Result<T, E>
    where
        F: FnMut(Transaction, bool) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxnError,
    {
        let mut retry = RetryState::new(self);
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
        let mut retry = RetryState::new(self);
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
    maybe_committed: bool,
}

impl<'a> RetryState<'a> {
    fn new(db: &'a Database) -> Self {
        RetryState {
            db,
            started: db.inner.clock.monotonic(),
            attempts: 0,
            backoff: db.inner.retry.backoff_first,
            maybe_committed: false,
        }
    }

    /// Sleep and return `Ok` to retry, or give the error back.
    async fn on_error<E: TxnError>(&mut self, error: E) -> Result<(), E> {
        let options = self.db.inner.retry;
        self.attempts += 1;
        let decision = error.as_kv().map_or(RetryDecision::Fail, KvError::retry);
        let elapsed = self.db.inner.clock.monotonic().saturating_sub(self.started);
        if decision == RetryDecision::Fail
            || self.attempts >= options.attempts_max
            || elapsed >= options.elapsed_max
        {
            return Err(error);
        }
        if decision == RetryDecision::RetryMaybeCommitted {
            self.maybe_committed = true;
        }
        tracing::trace!(attempt = self.attempts, error = ?error.as_kv(), "retrying transaction");
        let pause = self.db.jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(options.backoff_cap);
        self.db.inner.clock.sleep(pause).await;
        Ok(())
    }
}
