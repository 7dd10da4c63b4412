//! The cache lease: kernel caching while a mount is the filesystem's only
//! client, and its revocation when another client attaches.
//!
//! Every mount sees every committed change at once, so by default the
//! kernel caches nothing: each `stat` is a round trip and a transaction.
//! But while a mount is the *only* attached client, every change passes
//! through it, and the kernel updates or drops what it cached on each of
//! them as it does for any FUSE filesystem — so caching is safe, and a
//! stat costs no round trip at all. The lease makes "only client" a fact
//! that other clients wait on, like an NFS delegation for the whole
//! filesystem:
//!
//! - A mount *takes* the lease in a transaction that reads the whole
//!   registration range (not as a snapshot) and finds only itself, and
//!   writes `("hafs", FS, "cachelease", CLIENT)`. Only then does its
//!   [`CacheGate`] open, letting replies carry nonzero TTLs.
//! - A client that attaches ([`crate::fs::Fs::open_client`]) waits in
//!   [`wait_for_holders`] until no other *attached* client holds a lease.
//!   Serializability makes the two meet: either the taker saw the new
//!   registration (and took nothing), or the newcomer's read, which
//!   follows its registration, sees the lease.
//! - The holder polls the registrations ([`LEASE_POLL`]); on seeing another
//!   client it closes its gate (new replies carry TTL 0), waits for cached
//!   replies in flight, then waits out the longest TTL (plus
//!   [`REVOKE_MARGIN`]) after the last of them, and only then clears its
//!   lease. By then nothing the kernel cached is still believed, so the
//!   newcomer's first write is seen by the holder's next lookup.
//! - A holder whose heartbeat stopped is evicted by the waiting newcomer
//!   after the holder's own expiry (stored in the lease); eviction clears
//!   the lease with the rest of the client's keys.
//!
//! The one exception, written down rather than hidden: a mount evicted
//! while it held the lease (an operator's `hafs evict` of a live mount)
//! may answer `stat` from its kernel cache for up to one TTL after the
//! eviction. Reads and writes of data, and every lookup after the TTL,
//! fail as for any fenced client.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::Clock;
use crate::error::{FsError, FsResult};
use crate::keys::Keys;
use crate::kv::{Database, RangeOptions, Transaction};
use crate::session::{ensure_attached, evict_if_stale, ExpiryTracker};

/// How often a holder looks for other clients, and a waiter for holders.
pub const LEASE_POLL: Duration = Duration::from_millis(100);
/// Waited past the longest TTL before a lease is given up. The kernel
/// starts an entry's TTL when the requesting thread runs again after the
/// reply, which a loaded machine can delay.
pub const REVOKE_MARGIN: Duration = Duration::from_millis(250);

/// The time-to-live values a lease holder hands the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheTtls {
    /// For attributes (GETATTR, SETATTR and entry replies).
    pub attr: Duration,
    /// For name lookups, positive and negative.
    pub entry: Duration,
}

impl CacheTtls {
    pub fn longest(&self) -> Duration {
        self.attr.max(self.entry)
    }
}

/// Whether replies may carry nonzero TTLs right now, and which replies
/// that did are still on their way to the kernel.
#[derive(Debug)]
pub struct CacheGate {
    ttls: CacheTtls,
    clock: Arc<dyn Clock>,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    in_flight: u64,
    /// Monotonic time the last cached reply was handed to the kernel.
    last_end: Duration,
}

/// The TTLs for one reply; hold it until the reply is sent.
#[derive(Debug)]
pub struct CacheGuard<'a> {
    gate: &'a CacheGate,
    ttls: CacheTtls,
    counted: bool,
}

impl CacheGuard<'_> {
    pub fn attr_ttl(&self) -> Duration {
        self.ttls.attr
    }

    pub fn entry_ttl(&self) -> Duration {
        self.ttls.entry
    }
}

impl Drop for CacheGuard<'_> {
    fn drop(&mut self) {
        if self.counted {
            let now = self.gate.clock.monotonic();
            let mut state = self.gate.state.lock();
            state.in_flight -= 1;
            state.last_end = state.last_end.max(now);
        }
    }
}

impl CacheGate {
    /// A closed gate that will hand out `ttls` while open.
    pub fn new(ttls: CacheTtls, clock: Arc<dyn Clock>) -> Arc<CacheGate> {
        Arc::new(CacheGate {
            ttls,
            clock,
            state: Mutex::new(GateState::default()),
        })
    }

    /// Whether there is anything to cache at all.
    pub fn enabled(&self) -> bool {
        self.ttls.longest() > Duration::ZERO
    }

    pub fn is_open(&self) -> bool {
        self.state.lock().open
    }

    /// The TTLs for a reply about to be sent: zero unless the gate is open.
    pub fn enter(&self) -> CacheGuard<'_> {
        let mut state = self.state.lock();
        if state.open {
            state.in_flight += 1;
            CacheGuard {
                gate: self,
                ttls: self.ttls,
                counted: true,
            }
        } else {
            CacheGuard {
                gate: self,
                ttls: CacheTtls::default(),
                counted: false,
            }
        }
    }

    fn open(&self) {
        self.state.lock().open = true;
    }

    /// Close the gate and return once nothing the kernel was told to cache
    /// is still believed.
    async fn close(&self) {
        self.state.lock().open = false;
        while self.state.lock().in_flight > 0 {
            self.clock.sleep(Duration::from_millis(1)).await;
        }
        let last_end = self.state.lock().last_end;
        let deadline = last_end + self.ttls.longest() + REVOKE_MARGIN;
        self.wait_until(deadline).await;
    }

    async fn wait_until(&self, deadline: Duration) {
        let now = self.clock.monotonic();
        if deadline > now {
            self.clock.sleep(deadline - now).await;
        }
    }
}

/// Whether any client other than `me` is attached.
async fn others_attached(db: &Database, keys: &Keys, me: &str) -> FsResult<bool> {
    db.read(|txn| async move { not_alone(&txn, keys, me).await })
        .await
}

/// Whether a client other than `me` is attached, read with a conflict
/// range over every registration; `Fenced` if `me` is not attached.
async fn not_alone(txn: &Transaction, keys: &Keys, me: &str) -> FsResult<bool> {
    ensure_attached(txn, keys, me).await?;
    let (begin, end) = keys.sessions();
    let options = RangeOptions {
        limit: 2,
        ..RangeOptions::default()
    };
    Ok(txn.get_range(&begin, &end, options).await?.kvs.len() > 1)
}

/// Take the lease if `me` is the only attached client; `expiry` is how
/// long a waiter lets this client's heartbeat stand still before evicting
/// it. Returns whether the lease is held.
async fn try_take(db: &Database, keys: &Keys, me: &str, expiry: Duration) -> FsResult<bool> {
    db.run(|txn, _| async move {
        if not_alone(&txn, keys, me).await? {
            return Ok(false);
        }
        let expiry_ns = u64::try_from(expiry.as_nanos()).unwrap_or(u64::MAX);
        txn.set(&keys.cache_lease(me), &expiry_ns.to_le_bytes());
        Ok(true)
    })
    .await
}

async fn give_up(db: &Database, keys: &Keys, me: &str) -> FsResult<()> {
    db.run(|txn, _| async move {
        txn.clear(&keys.cache_lease(me));
        Ok::<_, FsError>(())
    })
    .await
}

/// A lease held by another client: its id and its expiry.
#[derive(Debug)]
struct Holder {
    client: String,
    attached: bool,
    expiry: Duration,
}

async fn holders(db: &Database, keys: &Keys, me: &str) -> FsResult<Vec<Holder>> {
    db.read(|txn| async move {
        let (begin, end) = keys.cache_leases();
        let all = txn.get_range(&begin, &end, RangeOptions::default()).await?;
        let mut out = Vec::new();
        for (key, value) in &all.kvs {
            let client = keys
                .cache_lease_client(key)
                .ok_or_else(|| FsError::Corrupted("cache lease key".into()))?;
            if client == me {
                continue;
            }
            let expiry_ns = <[u8; 8]>::try_from(value.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| FsError::Corrupted("cache lease value".into()))?;
            let attached = txn.get(&keys.session(&client)).await?.is_some();
            out.push(Holder {
                client,
                attached,
                expiry: Duration::from_nanos(expiry_ns),
            });
        }
        Ok(out)
    })
    .await
}

/// Wait until no attached client other than `me` holds a cache lease, so
/// that `me`'s changes are seen at once by every mount. Holders revoke
/// within a poll plus their TTL; a holder whose heartbeat stands still for
/// its expiry is evicted. Leases left by detached clients are cleared.
pub async fn wait_for_holders(db: &Database, keys: &Keys, me: &str) -> FsResult<()> {
    let clock = db.clock().clone();
    let mut tracker = ExpiryTracker::default();
    let mut announced = false;
    loop {
        let found = holders(db, keys, me).await?;
        let (live, left): (Vec<_>, Vec<_>) = found.into_iter().partition(|h| h.attached);
        for holder in left {
            // Eviction clears the lease too; this is for a crash between.
            db.run(|txn, _| {
                let client = holder.client.clone();
                async move {
                    if txn.get(&keys.session(&client)).await?.is_none() {
                        txn.clear(&keys.cache_lease(&client));
                    }
                    Ok::<_, FsError>(())
                }
            })
            .await?;
        }
        if live.is_empty() {
            return Ok(());
        }
        if !announced {
            announced = true;
            tracing::info!(
                holders = ?live.iter().map(|h| &h.client).collect::<Vec<_>>(),
                "waiting for the kernel caches of a mount that was the only client to expire"
            );
        }
        // Each holder is judged by its own expiry, and only holders are
        // evicted here (the mount's own sweep judges everyone else later).
        for holder in &live {
            let stale = tracker
                .expired(db, keys, clock.as_ref(), holder.expiry, Some(me))
                .await?;
            if let Some((_, beat)) = stale.into_iter().find(|(c, _)| *c == holder.client) {
                if evict_if_stale(db, keys, &holder.client, beat).await? {
                    tracing::warn!(client = %holder.client, "evicted a cache lease holder whose heartbeat stopped");
                }
            }
        }
        clock.sleep(LEASE_POLL).await;
    }
}

impl crate::fs::Fs {
    /// Hold the cache lease whenever this client is the only one attached,
    /// opening `gate` while it is held and closing it (and waiting out the
    /// TTLs) before giving it up. `expiry` is this client's session expiry.
    /// Returns only when this client is fenced.
    pub async fn keep_cache_lease(&self, gate: Arc<CacheGate>, expiry: Duration) -> FsError {
        let clock = self.db().clock().clone();
        let (db, keys, me) = (self.db(), self.keys(), self.client());
        let mut held = false;
        loop {
            match others_attached(db, keys, me).await {
                Err(FsError::Fenced) => {
                    gate.close().await;
                    return FsError::Fenced;
                }
                Err(e) => {
                    // Unsure who is attached: stop caching until sure.
                    tracing::warn!(error = %e, "cache lease check failed; caching off until it works");
                    gate.close().await;
                }
                Ok(true) => {
                    if gate.is_open() {
                        gate.close().await;
                        tracing::info!("another client attached: kernel caching off");
                    }
                    if held {
                        match give_up(db, keys, me).await {
                            Ok(()) => held = false,
                            Err(e) => {
                                tracing::warn!(error = %e, "giving up the cache lease failed; retrying")
                            }
                        }
                    }
                }
                Ok(false) => {
                    if !held {
                        match try_take(db, keys, me, expiry).await {
                            Ok(taken) => held = taken,
                            Err(FsError::Fenced) => return FsError::Fenced,
                            Err(e) => {
                                tracing::warn!(error = %e, "taking the cache lease failed; retrying")
                            }
                        }
                    }
                    if held && !gate.is_open() {
                        gate.open();
                        tracing::info!("the only client of the filesystem: kernel caching on");
                    }
                }
            }
            clock.sleep(LEASE_POLL).await;
        }
    }
}
