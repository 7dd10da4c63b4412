//! A backend wrapper that injects the failures a real cluster produces:
//! extra conflicts, ambiguous commits (applied and not applied), timeouts
//! whose commit lands later, too-old transactions, unavailability and delays.
//!
//! What to inject is decided by a [`FaultPlan`]; [`RandomFaults`] draws from
//! a seeded ChaCha RNG so a run is reproducible. Every injected fault is
//! counted in [`FaultCounters`], so a test can assert that each kind
//! actually happened.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::backend::{Backend, BackendTxn, CommitRequest};
use super::{KeyValue, KvError, KvResult, Version};
use crate::clock::Clock;

/// What happens to one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFault {
    None,
    /// Fail with `NotCommitted` without applying.
    Conflict,
    /// Apply, then report `CommitUnknownResult`.
    UnknownApplied,
    /// Do not apply; report `CommitUnknownResult`.
    UnknownNotApplied,
    /// Report `TimedOut` now and attempt the commit after this delay.
    TimedOutLandsLater(Duration),
    /// Fail with `TransactionTooOld` without applying.
    TooOld,
    /// Wait this long, then commit normally.
    Delay(Duration),
}

/// What happens to one read or begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    None,
    Unavailable,
    Delay(Duration),
}

/// Decides which fault, if any, each operation gets.
pub trait FaultPlan: Send + Sync + Debug {
    fn on_commit(&self, request: &CommitRequest) -> CommitFault;
    fn on_read(&self) -> ReadFault;
}

/// How often each injected fault happened.
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub conflicts: AtomicU64,
    pub unknown_applied: AtomicU64,
    pub unknown_not_applied: AtomicU64,
    pub timed_out_landed_later: AtomicU64,
    pub too_old: AtomicU64,
    pub commit_delays: AtomicU64,
    pub unavailable: AtomicU64,
    pub read_delays: AtomicU64,
}

impl FaultCounters {
    /// Name and count of every fault kind, in a fixed order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("conflict", get(&self.conflicts)),
            ("unknown_applied", get(&self.unknown_applied)),
            ("unknown_not_applied", get(&self.unknown_not_applied)),
            ("timed_out_landed_later", get(&self.timed_out_landed_later)),
            ("too_old", get(&self.too_old)),
            ("commit_delay", get(&self.commit_delays)),
            ("unavailable", get(&self.unavailable)),
            ("read_delay", get(&self.read_delays)),
        ]
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Probabilities for [`RandomFaults`], each per operation.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultRates {
    pub conflict: f64,
    pub unknown_applied: f64,
    pub unknown_not_applied: f64,
    pub timed_out: f64,
    pub too_old: f64,
    pub commit_delay: f64,
    pub unavailable: f64,
    pub read_delay: f64,
    /// Longest injected delay (also the landing delay of timed-out commits).
    pub delay_max: Duration,
}

/// Faults drawn at random from a seeded RNG.
#[derive(Debug)]
pub struct RandomFaults {
    rates: FaultRates,
    rng: Mutex<ChaCha8Rng>,
}

impl RandomFaults {
    pub fn new(rates: FaultRates, seed: u64) -> Arc<Self> {
        Arc::new(RandomFaults {
            rates,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        })
    }

    fn delay(&self, rng: &mut ChaCha8Rng) -> Duration {
        let max = u64::try_from(self.rates.delay_max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.gen_range(0..=max))
    }
}

impl FaultPlan for RandomFaults {
    fn on_commit(&self, request: &CommitRequest) -> CommitFault {
        let r = &self.rates;
        let mut rng = self.rng.lock();
        let draw: f64 = rng.gen();
        let mut edge = 0.0;
        let mut hit = |p: f64| {
            edge += p;
            draw < edge
        };
        if request.is_read_only() {
            return CommitFault::None;
        }
        if hit(r.conflict) {
            CommitFault::Conflict
        } else if hit(r.unknown_applied) {
            CommitFault::UnknownApplied
        } else if hit(r.unknown_not_applied) {
            CommitFault::UnknownNotApplied
        } else if hit(r.timed_out) {
            CommitFault::TimedOutLandsLater(self.delay(&mut rng))
        } else if hit(r.too_old) {
            CommitFault::TooOld
        } else if hit(r.commit_delay) {
            CommitFault::Delay(self.delay(&mut rng))
        } else {
            CommitFault::None
        }
    }

    fn on_read(&self) -> ReadFault {
        let mut rng = self.rng.lock();
        let draw: f64 = rng.gen();
        if draw < self.rates.unavailable {
            ReadFault::Unavailable
        } else if draw < self.rates.unavailable + self.rates.read_delay {
            ReadFault::Delay(self.delay(&mut rng))
        } else {
            ReadFault::None
        }
    }
}

/// A backend whose operations fail as its plan says.
#[derive(Debug, Clone)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    plan: Arc<dyn FaultPlan>,
    clock: Arc<dyn Clock>,
    counters: Arc<FaultCounters>,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>, plan: Arc<dyn FaultPlan>, clock: Arc<dyn Clock>) -> Self {
        FaultyBackend {
            inner,
            plan,
            clock,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> &Arc<FaultCounters> {
        &self.counters
    }

    async fn read_fault(&self) -> KvResult<()> {
        match self.plan.on_read() {
            ReadFault::None => Ok(()),
            ReadFault::Unavailable => {
                bump(&self.counters.unavailable);
                Err(KvError::Unavailable("injected fault".into()))
            }
            ReadFault::Delay(d) => {
                bump(&self.counters.read_delays);
                self.clock.sleep(d).await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn spreads_key_ranges(&self) -> bool {
        self.inner.spreads_key_ranges()
    }

    /// Injects them, whatever the store underneath.
    fn ambiguous_commits(&self) -> bool {
        true
    }

    async fn begin(&self) -> KvResult<Box<dyn BackendTxn>> {
        self.read_fault().await?;
        Ok(Box::new(FaultyTxn {
            inner: Arc::from(self.inner.begin().await?),
            backend: self.clone(),
        }))
    }

    async fn sync(&self) -> KvResult<()> {
        self.inner.sync().await
    }
}

#[derive(Debug)]
struct FaultyTxn {
    inner: Arc<dyn BackendTxn>,
    backend: FaultyBackend,
}

#[async_trait]
impl BackendTxn for FaultyTxn {
    fn read_version(&self) -> Version {
        self.inner.read_version()
    }

    async fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.backend.read_fault().await?;
        self.inner.get(key).await
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> KvResult<(Vec<KeyValue>, bool)> {
        self.backend.read_fault().await?;
        self.inner.get_range(begin, end, limit, reverse).await
    }

    async fn commit(&self, request: CommitRequest) -> KvResult<Version> {
        let counters = &self.backend.counters;
        match self.backend.plan.on_commit(&request) {
            CommitFault::None => self.inner.commit(request).await,
            CommitFault::Conflict => {
                bump(&counters.conflicts);
                Err(KvError::NotCommitted)
            }
            CommitFault::UnknownApplied => {
                let applied = self.inner.commit(request).await;
                if applied.is_ok() {
                    bump(&counters.unknown_applied);
                    return Err(KvError::CommitUnknownResult);
                }
                applied
            }
            CommitFault::UnknownNotApplied => {
                bump(&counters.unknown_not_applied);
                Err(KvError::CommitUnknownResult)
            }
            CommitFault::TimedOutLandsLater(after) => {
                bump(&counters.timed_out_landed_later);
                let inner = self.inner.clone();
                let clock = self.backend.clock.clone();
                tokio::spawn(async move {
                    clock.sleep(after).await;
                    let _ = inner.commit(request).await;
                });
                Err(KvError::TimedOut)
            }
            CommitFault::TooOld => {
                bump(&counters.too_old);
                Err(KvError::TransactionTooOld)
            }
            CommitFault::Delay(d) => {
                bump(&counters.commit_delays);
                self.backend.clock.sleep(d).await;
                self.inner.commit(request).await
            }
        }
    }
}
