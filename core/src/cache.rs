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
//! Names without `-o default_permissions` ([`NameGrants`]): the kernel then
//! checks no search permission itself, so a cached name would let anyone
//! walk through a directory only some may search. A name is cached only in
//! a directory *everyone* may search (`--x` for owner, group and others;
//! hafs enforces mode bits only), where every caller's LOOKUP would have
//! succeeded anyway. Two local changes can make such a name wrong before
//! its TTL ends, and both wait for the names they affect to expire before
//! they reply: a chmod that takes a search bit away from a directory waits
//! out the names cached under it, and a rename that moves something into
//! (or out of) a directory not everyone may search waits out every name
//! cached (the kernel moves the cached name with its TTL). Changes by other
//! clients are covered by the lease, as for attributes.
//!
//! The one exception, written down rather than hidden: a mount evicted
//! while it held the lease (an operator's `hafs evict` of a live mount)
//! may answer `stat` from its kernel cache for up to one TTL after the
//! eviction. Reads and writes of data, and every lookup after the TTL,
//! fail as for any fenced client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::Clock;
use crate::error::{FsError, FsResult};
use crate::keys::Keys;
use crate::kv::{Database, RangeOptions, Transaction};
use crate::limits::SETTLE_AFTER;
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
    /// Bumped at each opening: a ticket from an earlier opening is void.
    generation: u64,
    in_flight: u64,
    /// Monotonic time the last cached reply was handed to the kernel.
    last_end: Duration,
}

/// Taken before an operation reads the database. Its reply may carry TTLs
/// only if the gate was already open then (and has stayed open): a read
/// that began before the lease was taken may predate another client's last
/// change.
#[derive(Debug, Clone, Copy)]
pub struct CacheTicket {
    generation: Option<u64>,
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

    /// Take before the operation whose reply may be cached starts.
    pub fn ticket(&self) -> CacheTicket {
        let state = self.state.lock();
        CacheTicket {
            generation: state.open.then_some(state.generation),
        }
    }

    /// The TTLs for a reply about to be sent: zero unless the gate is open
    /// and was open, in the same generation, when `ticket` was taken.
    pub fn enter(&self, ticket: CacheTicket) -> CacheGuard<'_> {
        let mut state = self.state.lock();
        if state.open && ticket.generation == Some(state.generation) {
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
        let mut state = self.state.lock();
        state.open = true;
        state.generation += 1;
    }

    /// Close the gate and return once nothing the kernel was told to cache
    /// is still believed.
    pub async fn close(&self) {
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

/// The lease value: the holder's session expiry and longest TTL.
fn encode_lease(expiry: Duration, ttl: Duration) -> Vec<u8> {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let mut out = ns(expiry).to_le_bytes().to_vec();
    out.extend(ns(ttl).to_le_bytes());
    out
}

fn decode_lease(value: &[u8]) -> FsResult<(Duration, Duration)> {
    let bad = || FsError::Corrupted("cache lease value".into());
    let (expiry, ttl) = value.split_first_chunk::<8>().ok_or_else(bad)?;
    let ttl = <[u8; 8]>::try_from(ttl).map_err(|_| bad())?;
    Ok((
        Duration::from_nanos(u64::from_le_bytes(*expiry)),
        Duration::from_nanos(u64::from_le_bytes(ttl)),
    ))
}

/// Take the lease if `me` is the only attached client. Returns whether
/// the lease is held; `false` also means no earlier attempt of this call
/// left it written.
async fn try_take(db: &Database, keys: &Keys, me: &str, value: &[u8]) -> FsResult<bool> {
    db.run(|txn, maybe_committed| async move {
        if not_alone(&txn, keys, me).await? {
            if maybe_committed {
                txn.clear(&keys.cache_lease(me));
            }
            return Ok(false);
        }
        txn.set(&keys.cache_lease(me), value);
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

/// A lease held by another client.
#[derive(Debug)]
struct Holder {
    client: String,
    attached: bool,
    expiry: Duration,
    ttl: Duration,
}

async fn holders(db: &Database, keys: &Keys, me: &str) -> FsResult<Vec<Holder>> {
    db.read(|txn| async move {
        ensure_attached(&txn, keys, me).await?;
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
            let (expiry, ttl) = decode_lease(value)?;
            let attached = txn.get(&keys.session(&client)).await?.is_some();
            out.push(Holder {
                client,
                attached,
                expiry,
                ttl,
            });
        }
        Ok(out)
    })
    .await
}

/// Wait until no attached client other than `me` holds a cache lease, so
/// that `me`'s changes are seen at once by every mount. Holders revoke
/// within a poll plus their TTL; a holder whose heartbeat stands still for
/// its expiry is evicted, and its TTL then waited out (its kernel may have
/// cached a reply sent just before). `me` heartbeats while it waits.
pub async fn wait_for_holders(db: &Database, keys: &Keys, me: &str) -> FsResult<()> {
    let clock = db.clock().clone();
    let mut tracker = ExpiryTracker::default();
    let mut announced = false;
    let mut last_beat = clock.monotonic();
    loop {
        // Only attached holders can still be caching; a detached one's
        // lease goes with its other keys (`session::gc_client`).
        let live: Vec<_> = holders(db, keys, me)
            .await?
            .into_iter()
            .filter(|h| h.attached)
            .collect();
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
                    clock.sleep(holder.ttl + REVOKE_MARGIN).await;
                }
            }
        }
        if clock.monotonic().saturating_sub(last_beat) >= Duration::from_secs(1) {
            crate::session::heartbeat(db, keys, me).await?;
            last_beat = clock.monotonic();
        }
        clock.sleep(LEASE_POLL).await;
    }
}

impl crate::fs::Fs {
    /// Hold the cache lease whenever this client is the only one attached,
    /// opening `gate` while it is held and closing it (and waiting out the
    /// TTLs) before giving it up. `expiry` is this client's session expiry.
    /// Returns only when this client is fenced.
    ///
    /// A lease write whose outcome is unknown may still land until the
    /// transaction age limit has passed ([`SETTLE_AFTER`]), so: the gate opens
    /// only after a take that committed and began at least `SETTLE_AFTER` after
    /// the last give-up began (a late give-up must not remove the lease
    /// from under an open gate), and the lease counts as gone only after a
    /// give-up that began at least `SETTLE_AFTER` after the last take began (a
    /// late take would leave a lease that new clients wait on forever).
    pub async fn keep_cache_lease(&self, gate: Arc<CacheGate>, expiry: Duration) -> FsError {
        let clock = self.db().clock().clone();
        let (db, keys, me) = (self.db(), self.keys(), self.client());
        let value = encode_lease(expiry, gate.ttls.longest());
        let settled =
            |since: Option<Duration>| since.is_none_or(|t| clock.monotonic() >= t + SETTLE_AFTER);
        // The lease key may exist / surely exists (the gate may open).
        let (mut maybe_held, mut surely_held) = (false, false);
        let (mut last_take, mut last_give_up) = (None, None);
        loop {
            let alone = match others_attached(db, keys, me).await {
                Err(FsError::Fenced) => {
                    gate.close().await;
                    return FsError::Fenced;
                }
                Err(e) => {
                    // Unsure who is attached: stop caching until sure.
                    tracing::warn!(error = %e, "cache lease check failed; caching off until it works");
                    false
                }
                Ok(others) => !others,
            };
            if !alone {
                if gate.is_open() {
                    gate.close().await;
                    tracing::info!("kernel caching off: this mount is no longer the only client");
                }
                surely_held = false;
                if maybe_held {
                    let began = clock.monotonic();
                    last_give_up = Some(began);
                    match give_up(db, keys, me).await {
                        Ok(()) => {
                            if last_take.is_none_or(|t| began >= t + SETTLE_AFTER) {
                                maybe_held = false;
                            }
                        }
                        Err(FsError::Fenced) => return FsError::Fenced,
                        Err(e) => {
                            tracing::warn!(error = %e, "giving up the cache lease failed; retrying")
                        }
                    }
                }
            } else {
                if !surely_held && settled(last_give_up) {
                    last_take = Some(clock.monotonic());
                    let before = maybe_held;
                    maybe_held = true;
                    match try_take(db, keys, me, &value).await {
                        Ok(true) => surely_held = true,
                        Ok(false) => maybe_held = before,
                        Err(FsError::Fenced) => return FsError::Fenced,
                        Err(e) => {
                            tracing::warn!(error = %e, "taking the cache lease failed; retrying")
                        }
                    }
                }
                if surely_held && !gate.is_open() {
                    gate.open();
                    tracing::info!("kernel caching on: this mount is the only client");
                }
            }
            clock.sleep(LEASE_POLL).await;
        }
    }
}

/// Whether everyone may search a directory with mode `mode`: owner, group
/// and others each have the search bit (hafs checks mode bits only).
pub fn everyone_may_search(mode: u32) -> bool {
    mode & 0o111 == 0o111
}

/// The names handed to a kernel that checks no search permission itself
/// (see the module docs), so that a change taking search permission away
/// can wait until none of them is believed.
#[derive(Debug)]
pub struct NameGrants {
    clock: Arc<dyn Clock>,
    state: Mutex<NameState>,
}

#[derive(Debug)]
struct NameState {
    /// Bumped by every revocation: a grant whose ticket is older is void
    /// (its lookup may have read the directory before the change).
    epoch: u64,
    /// Directory → monotonic time after which no name granted in it is
    /// believed by the kernel.
    under: HashMap<u64, Duration>,
    /// Prune `under` when it grows past this.
    prune_at: usize,
}

impl NameState {
    /// Forget directories whose names have all expired, and the memory
    /// they took (a big `find` leaves many).
    fn prune(&mut self, now: Duration) {
        self.under.retain(|_, until| *until > now);
        self.under.shrink_to(2 * self.under.len());
        self.prune_at = NAME_GRANTS_PRUNE_MIN.max(2 * self.under.len());
    }
}

/// Whether the directories of a rename held names the kernel may still
/// believe ([`NameGrants::moved`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveNames {
    pub from: bool,
    pub to: bool,
}

/// Taken before a lookup reads the database; see [`NameGrants::grant`].
#[derive(Debug, Clone, Copy)]
pub struct NameTicket(u64);

/// Entries in `NameGrants::under` kept before expired ones are pruned.
const NAME_GRANTS_PRUNE_MIN: usize = 65_536;

impl NameGrants {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        NameGrants {
            clock,
            state: Mutex::new(NameState {
                epoch: 0,
                under: HashMap::new(),
                prune_at: NAME_GRANTS_PRUNE_MIN,
            }),
        }
    }

    pub fn ticket(&self) -> NameTicket {
        NameTicket(self.state.lock().epoch)
    }

    /// The TTL a name in `dir` (which everyone may search, as the lookup
    /// read it) may carry: `ttl`, recorded, unless a revocation began since
    /// `ticket` was taken — then zero.
    pub fn grant(&self, ticket: NameTicket, dir: u64, ttl: Duration) -> Duration {
        if ttl.is_zero() {
            return ttl;
        }
        let now = self.clock.monotonic();
        let mut state = self.state.lock();
        if state.epoch != ticket.0 {
            return Duration::ZERO;
        }
        // The kernel starts the TTL when it takes the reply, a little later.
        let until = now + ttl + REVOKE_MARGIN;
        let entry = state.under.entry(dir).or_default();
        *entry = (*entry).max(until);
        if state.under.len() > state.prune_at {
            state.prune(now);
        }
        ttl
    }

    /// Return once no name granted in `dir` is believed (after a change
    /// that took search permission on `dir` away, before replying to it).
    pub async fn revoke_in(&self, dir: u64) {
        let until = {
            let mut state = self.state.lock();
            state.epoch += 1;
            state.under.get(&dir).copied()
        };
        if let Some(until) = until {
            self.wait_until(until).await;
        }
    }

    /// A rename from directory `from` into `to`: the kernel moves the
    /// cached name with its TTL (under an exchange, both names), so from
    /// now on names granted in either count as granted in both — a later
    /// [`NameGrants::revoke_in`] of either waits for them. Voids lookups in
    /// flight, which may have read the name where it was. Returns which of
    /// the two had names that may still be believed before the rename: a
    /// name moved out of a directory with none is not cached.
    pub fn moved(&self, from: u64, to: u64) -> LiveNames {
        let now = self.clock.monotonic();
        let mut state = self.state.lock();
        state.epoch += 1;
        let live = |dir: u64| state.under.get(&dir).copied().filter(|until| *until > now);
        let (in_from, in_to) = (live(from), live(to));
        if let Some(until) = in_from.max(in_to) {
            state.under.insert(from, until);
            state.under.insert(to, until);
        }
        LiveNames {
            from: in_from.is_some(),
            to: in_to.is_some(),
        }
    }

    async fn wait_until(&self, until: Duration) {
        let now = self.clock.monotonic();
        if until > now {
            self.clock.sleep(until - now).await;
        }
    }
}
