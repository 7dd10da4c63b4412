//! A backend wrapper between one client and the KV: a network. It adds a
//! small random latency to every begin and commit (a real database is a
//! round trip away, and without it the in-memory KV would answer without
//! ever letting another client run in between), and it can cut the client
//! off and heal it: while cut, every call fails with `Unavailable` (the
//! runner retries it until its budget runs out) and nothing reaches the
//! database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use hafs_core::kv::{Backend, BackendTxn, CommitRequest, KeyValue, KvError, KvResult, Version};

/// The switch shared by a client's backend and the nemesis.
#[derive(Debug, Clone, Default)]
pub struct Cut(Arc<AtomicBool>);

impl Cut {
    pub fn set(&self, cut: bool) {
        self.0.store(cut, Ordering::Relaxed);
    }

    pub fn is_cut(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn check(&self) -> KvResult<()> {
        if self.is_cut() {
            Err(KvError::Unavailable("partitioned from the database".into()))
        } else {
            Ok(())
        }
    }
}

#[derive(Debug)]
pub struct CutBackend {
    pub inner: Arc<dyn Backend>,
    pub cut: Cut,
    pub clock: Arc<dyn hafs_core::clock::Clock>,
    /// Longest round trip added to begins and commits.
    pub latency: std::time::Duration,
}

/// A random share of `max`, from the simulator's seeded RNG.
async fn round_trip(clock: &dyn hafs_core::clock::Clock, max: std::time::Duration) {
    if max.is_zero() {
        return;
    }
    #[cfg(madsim)]
    let micros = madsim::rand::random::<u64>() % (max.as_micros() as u64 + 1);
    #[cfg(not(madsim))]
    let micros = max.as_micros() as u64 / 2;
    clock.sleep(std::time::Duration::from_micros(micros)).await;
}

#[async_trait]
impl Backend for CutBackend {
    fn name(&self) -> &'static str {
        "cut"
    }

    fn spreads_key_ranges(&self) -> bool {
        self.inner.spreads_key_ranges()
    }

    async fn begin(&self) -> KvResult<Box<dyn BackendTxn>> {
        round_trip(self.clock.as_ref(), self.latency).await;
        self.cut.check()?;
        Ok(Box::new(CutTxn {
            inner: self.inner.begin().await?,
            cut: self.cut.clone(),
            clock: self.clock.clone(),
            latency: self.latency,
        }))
    }

    async fn sync(&self) -> KvResult<()> {
        self.inner.sync().await
    }
}

#[derive(Debug)]
struct CutTxn {
    inner: Box<dyn BackendTxn>,
    cut: Cut,
    clock: Arc<dyn hafs_core::clock::Clock>,
    latency: std::time::Duration,
}

#[async_trait]
impl BackendTxn for CutTxn {
    fn read_version(&self) -> Version {
        self.inner.read_version()
    }

    async fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.cut.check()?;
        self.inner.get(key).await
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> KvResult<(Vec<KeyValue>, bool)> {
        self.cut.check()?;
        self.inner.get_range(begin, end, limit, reverse).await
    }

    async fn commit(&self, request: CommitRequest) -> KvResult<Version> {
        round_trip(self.clock.as_ref(), self.latency).await;
        self.cut.check()?;
        self.inner.commit(request).await
    }
}
