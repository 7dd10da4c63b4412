//! A backend wrapper that cuts one client off from the KV and heals it: a
//! network partition between that client and the database. While cut,
//! every call fails with `Unavailable` (the runner retries it until its
//! budget runs out) and nothing reaches the database.

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
}

#[async_trait]
impl Backend for CutBackend {
    fn name(&self) -> &'static str {
        "cut"
    }

    async fn begin(&self) -> KvResult<Box<dyn BackendTxn>> {
        self.cut.check()?;
        Ok(Box::new(CutTxn {
            inner: self.inner.begin().await?,
            cut: self.cut.clone(),
        }))
    }
}

#[derive(Debug)]
struct CutTxn {
    inner: Box<dyn BackendTxn>,
    cut: Cut,
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
        self.cut.check()?;
        self.inner.commit(request).await
    }
}
