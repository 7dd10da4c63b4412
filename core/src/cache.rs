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
//!   replies and renames in flight and [`REVOKE_MARGIN`] after the last of
//!   them (the kernel applies a reply when the requesting thread runs
//!   again), then drops every name and attribute it handed out from the
//!   kernel's caches ([`KernelCache`]: FUSE's invalidation notifications)
//!   — or, where it cannot (no kernel handle, more than it tracks, a failed
//!   drop, a rename racing the drops), waits out the longest TTL after the
//!   last reply — and only then clears its lease. By then nothing the
//!   kernel cached is still believed, so the newcomer's first write is
//!   seen by the holder's next lookup. A second mount attaches in about
//!   0.3 s instead of the TTL's 1.35 s.
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
//! Data: under the lease a read-only open of a small file goes through the
//! kernel's page cache; the FUSE adapter's `open_mode` says what keeps the
//! pages right (direct writers, `FUSE_AUTO_INVAL_DATA`, drops of its own at
//! the first cached open — a file's second open — in each opening of the
//! gate, on SETATTR, and without the lease when the ctime moves).
//!
//! The one exception, written down rather than hidden: a mount evicted
//! while it held the lease (an operator's `hafs evict` of a live mount)
//! may answer `stat`, and reads of small files it opened read-only, from
//! its kernel cache for up to one TTL after the eviction (a `read` checks
//! the attributes once they expire, and that check fails; a mapping or a
//! `splice` of such a file keeps reading its pages). Writes, and every
//! lookup and `read` after the TTL, fail as for any fenced client.

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
    /// Where cached names and attributes can be dropped before their TTL
    /// ends; without it, closing waits the TTLs out.
    kernel: Mutex<Option<Arc<dyn KernelCache>>>,
}

/// The kernel's caches, which FUSE lets a daemon drop entries from
/// (`FUSE_NOTIFY_INVAL_ENTRY`, `FUSE_NOTIFY_INVAL_INODE`). Node numbers
/// are hafs's; an entry the kernel no longer holds counts as dropped.
pub trait KernelCache: Send + Sync + std::fmt::Debug {
    /// Drop the cached name `name` in directory `parent`.
    fn forget_name(&self, parent: u64, name: &[u8]) -> std::io::Result<()>;
    /// Drop the cached attributes of `ino`.
    fn forget_attrs(&self, ino: u64) -> std::io::Result<()>;
    /// Drop the cached attributes of `ino` and every page of its data. May
    /// wait for a read of it in flight: never from a thread that serves
    /// requests.
    fn forget_data(&self, ino: u64) -> std::io::Result<()>;
    /// Put `data` at `offset` of `ino` into the kernel's page cache,
    /// raising its size to the end of it if that is larger. Waits as
    /// [`KernelCache::forget_data`] may.
    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()>;
}

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    /// Bumped at each opening: a ticket from an earlier opening is void.
    generation: u64,
    in_flight: u64,
    /// Monotonic time the last cached reply was handed to the kernel.
    last_end: Duration,
    /// What replies told the kernel to cache since the gate opened, so
    /// that closing can drop it; `None` once there was too much to track
    /// (closing then waits the TTLs out).
    handed: Option<Handed>,
    /// Renames seen: one during a close's drops may have moved a name
    /// after it was dropped at its old place.
    renames: u64,
    /// Renames begun after a close, their replies not yet sent: such a
    /// reply moves a cached name the close's stock may not show where the
    /// kernel will have it, so a close that finds one waits the TTLs out.
    renames_uncounted: u64,
}

/// Names and inodes handed to the kernel with a TTL, each with the
/// monotonic time after which the kernel no longer believes it.
#[derive(Debug, Default)]
struct Handed {
    names: HashMap<(u64, Vec<u8>), Duration>,
    attrs: HashMap<u64, Duration>,
    prune_at: usize,
}

/// Records kept before expired ones are pruned.
const HANDED_PRUNE_MIN: usize = 4_096;
/// Records beyond which a gate stops tracking and closing waits out the
/// TTLs: dropping one costs a notification (a few microseconds), so past
/// this many, waiting out a TTL of a second is about as quick — and the
/// records stay a few megabytes.
const HANDED_MAX: usize = 100_000;

impl Handed {
    fn len(&self) -> usize {
        self.names.len() + self.attrs.len()
    }

    /// Make room: forget what has expired. `false`: still too much.
    fn prune(&mut self, now: Duration) -> bool {
        if self.len() < self.prune_at.clamp(HANDED_PRUNE_MIN, HANDED_MAX) {
            return true;
        }
        self.names.retain(|_, until| *until > now);
        self.attrs.retain(|_, until| *until > now);
        self.prune_at = 2 * self.len();
        self.len() < HANDED_MAX
    }
}

/// [`CacheGate::now`]: which opening of the gate it is in, or last was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateNow {
    Open(u64),
    ClosedAfter(u64),
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
    /// A rename begun while the gate was closed (`renames_uncounted`).
    uncounted_rename: bool,
    /// The gate's opening this reply belongs to, if it may be cached.
    generation: Option<u64>,
}

impl CacheGuard<'_> {
    pub fn attr_ttl(&self) -> Duration {
        self.ttls.attr
    }

    pub fn entry_ttl(&self) -> Duration {
        self.ttls.entry
    }

    /// The opening of the gate this reply falls in, if the kernel may cache
    /// what it says: everything that changes the filesystem until the gate
    /// closes passes through this mount's kernel. Replies in one opening
    /// share the number; a later opening has a larger one.
    pub fn opening(&self) -> Option<u64> {
        self.generation
    }

    /// This reply tells the kernel to cache the name `name` in `parent`
    /// (present or absent) for `ttl`.
    pub fn handing_name(&self, parent: u64, name: &[u8], ttl: Duration) {
        self.record(ttl, |handed, until| {
            let at = handed.names.entry((parent, name.to_vec())).or_default();
            *at = (*at).max(until);
        });
    }

    /// This reply tells the kernel to cache the attributes of `ino` for `ttl`.
    pub fn handing_attrs(&self, ino: u64, ttl: Duration) {
        self.record(ttl, |handed, until| {
            let at = handed.attrs.entry(ino).or_default();
            *at = (*at).max(until);
        });
    }

    fn record(&self, ttl: Duration, add: impl FnOnce(&mut Handed, Duration)) {
        if !self.counted || ttl.is_zero() {
            return;
        }
        let now = self.gate.clock.monotonic();
        let mut state = self.gate.state.lock();
        let keep = match state.handed.as_mut() {
            Some(handed) => {
                // The kernel starts the TTL when it takes the reply, a
                // little later.
                add(handed, now + ttl + REVOKE_MARGIN);
                handed.prune(now)
            }
            None => true,
        };
        if !keep {
            tracing::info!(
                "too many cached names to track; revoking the lease will wait out the TTL"
            );
            state.handed = None;
        }
    }
}

impl Drop for CacheGuard<'_> {
    fn drop(&mut self) {
        if self.uncounted_rename {
            self.gate.state.lock().renames_uncounted -= 1;
        }
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
            kernel: Mutex::new(None),
        })
    }

    /// From now on, closing drops what the kernel cached through `kernel`
    /// instead of waiting for it to expire.
    pub fn set_kernel(&self, kernel: Arc<dyn KernelCache>) {
        *self.kernel.lock() = Some(kernel);
    }

    /// Where the kernel's caches can be dropped, if anywhere.
    pub fn kernel(&self) -> Option<Arc<dyn KernelCache>> {
        self.kernel.lock().clone()
    }

    /// A rename from `from`/`name` to `to`/`new_name` (`exchange`: both
    /// ways) is about to be answered: the kernel moves a cached name with
    /// its TTL, so its record moves too. Call before replying.
    pub fn renamed(&self, from: u64, name: &[u8], to: u64, new_name: &[u8], exchange: bool) {
        let mut state = self.state.lock();
        state.renames += 1;
        let Some(handed) = state.handed.as_mut() else {
            return;
        };
        let source = handed.names.remove(&(from, name.to_vec()));
        let target = handed.names.remove(&(to, new_name.to_vec()));
        let mut put = |key: (u64, Vec<u8>), until: Option<Duration>| {
            if let Some(until) = until {
                let at = handed.names.entry(key).or_default();
                *at = (*at).max(until);
            }
        };
        put((to, new_name.to_vec()), source);
        // Without an exchange the kernel drops the target's old entry.
        if exchange {
            put((from, name.to_vec()), target);
        }
    }

    /// Whether there is anything to cache at all.
    pub fn enabled(&self) -> bool {
        self.ttls.longest() > Duration::ZERO
    }

    pub fn is_open(&self) -> bool {
        self.state.lock().open
    }

    /// Where the gate is now: open in its `n`-th opening, or closed since
    /// the `n`-th (0: never opened).
    pub fn now(&self) -> GateNow {
        let state = self.state.lock();
        if state.open {
            GateNow::Open(state.generation)
        } else {
            GateNow::ClosedAfter(state.generation)
        }
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
                uncounted_rename: false,
                generation: Some(state.generation),
            }
        } else {
            CacheGuard {
                gate: self,
                ttls: CacheTtls::default(),
                counted: false,
                uncounted_rename: false,
                generation: None,
            }
        }
    }

    /// Held by a rename from before it may change anything until its
    /// reply is sent: the kernel moves a cached name when it takes that
    /// reply, so closing lets renames finish (and the margin pass) before
    /// it takes stock of what is cached, like replies carrying TTLs. Only
    /// renames that began while the gate was open count: one that begins
    /// after the close shows in `renames` instead (which makes the close
    /// wait out the TTL), so a steady stream of renames cannot hold the
    /// close back for ever (a review found a newcomer's mount waiting as
    /// long as the holder renamed every 250 ms).
    pub fn moving(&self) -> CacheGuard<'_> {
        let mut state = self.state.lock();
        let counted = state.open;
        if counted {
            state.in_flight += 1;
        } else {
            state.renames_uncounted += 1;
        }
        CacheGuard {
            gate: self,
            ttls: CacheTtls::default(),
            counted,
            uncounted_rename: !counted,
            generation: None,
        }
    }

    fn open(&self) {
        let mut state = self.state.lock();
        state.open = true;
        state.generation += 1;
        state.handed = Some(Handed::default());
    }

    /// Close the gate and return once nothing the kernel was told to cache
    /// is still believed: after the replies in flight have been taken (the
    /// kernel starts a TTL when the requesting thread runs again, so
    /// [`REVOKE_MARGIN`] after the last), drop every name and attribute
    /// handed out since the gate opened from the kernel's caches — or, if
    /// that cannot be done (no [`KernelCache`], too much to track, a drop
    /// failed, a rename raced the drops), wait until the TTLs have passed.
    pub async fn close(&self) {
        self.state.lock().open = false;
        // Take stock only once no reply or rename is in flight and the
        // last one's margin has passed (the kernel applied them all); a
        // rename after this shows in `renames`.
        let (last_end, handed, renames, raced) = loop {
            let settled = {
                let mut state = self.state.lock();
                let settled = state.last_end + REVOKE_MARGIN;
                if state.in_flight == 0 && self.clock.monotonic() >= settled {
                    let raced = state.renames_uncounted > 0;
                    break (state.last_end, state.handed.take(), state.renames, raced);
                }
                settled
            };
            let poll = self.clock.monotonic() + Duration::from_millis(1);
            self.wait_until(settled.max(poll)).await;
        };
        // A rename begun after the close with its reply still to come
        // may move a name the kernel caches after the drops: then (as when
        // the drops fail) wait until every TTL handed out has passed; the
        // name it moves keeps its TTL.
        if !raced && self.drop_handed(handed, renames).await {
            return;
        }
        let deadline = last_end + self.ttls.longest() + REVOKE_MARGIN;
        self.wait_until(deadline).await;
    }

    /// Drop what the kernel was told to cache (`handed`, taken when
    /// `renames` renames had been seen); whether all of it is gone.
    async fn drop_handed(&self, handed: Option<Handed>, renames: u64) -> bool {
        let Some(kernel) = self.kernel.lock().clone() else {
            return false;
        };
        let Some(handed) = handed else { return false };
        let now = self.clock.monotonic();
        let names: Vec<(u64, Vec<u8>)> = handed
            .names
            .into_iter()
            .filter(|(_, until)| *until > now)
            .map(|(key, _)| key)
            .collect();
        let attrs: Vec<u64> = handed
            .attrs
            .into_iter()
            .filter(|(_, until)| *until > now)
            .map(|(ino, _)| ino)
            .collect();
        let drop_all = move || {
            let mut failed = None;
            for (parent, name) in &names {
                if let Err(e) = kernel.forget_name(*parent, name) {
                    failed = Some(e);
                }
            }
            for ino in &attrs {
                if let Err(e) = kernel.forget_attrs(*ino) {
                    failed = Some(e);
                }
            }
            failed.map_or(Ok(names.len() + attrs.len()), Err)
        };
        // A notification may wait for a request in progress on the same
        // directory (the kernel takes its lock): off the executor. (The
        // simulator has no kernel to tell, and no blocking pool.)
        #[cfg(not(madsim))]
        let dropped = tokio::task::spawn_blocking(drop_all).await;
        #[cfg(madsim)]
        let dropped = Ok::<_, std::convert::Infallible>(drop_all());
        match dropped {
            Ok(Ok(n)) if self.state.lock().renames == renames => {
                tracing::debug!(dropped = n, "kernel caches dropped");
                true
            }
            Ok(Ok(_)) => false,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "dropping the kernel's caches failed; waiting for them to expire");
                false
            }
            Err(_) => false,
        }
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
            // As for published expiries: a lease's word holds a newcomer
            // back for an hour at most.
            let expiry = expiry.min(crate::session::EXPIRY_MAX);
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
                if evict_if_stale(db, keys, &holder.client, beat)
                    .await?
                    .detached()
                {
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
        // A recording of unrecorded opens failed: until one succeeds the
        // lease must stay, so neither give it up nor take it again (a take
        // whose commit was ambiguous clears the lease when it then finds
        // another client).
        let mut recording_owed = false;
        loop {
            if recording_owed {
                match self.record_opens_for_give_up().await {
                    Ok(true) => recording_owed = false,
                    Ok(false) => {
                        clock.sleep(LEASE_POLL).await;
                        continue;
                    }
                    Err(fenced) => return fenced,
                }
            }
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
                    // Opens the lease covered get their records first
                    // (`crate::ops::open`); until they have, keep it.
                    match self.record_opens_for_give_up().await {
                        Ok(true) => {}
                        Ok(false) => {
                            recording_owed = true;
                            clock.sleep(LEASE_POLL).await;
                            continue;
                        }
                        Err(fenced) => return fenced,
                    }
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
                            // A retry of the take that found another client
                            // cleared the lease, in a commit that may still
                            // land: count it as a give-up, so the gate opens
                            // (and opens go unrecorded) only after a take
                            // it can no longer undo.
                            last_give_up = Some(clock.monotonic());
                            tracing::warn!(error = %e, "taking the cache lease failed; retrying")
                        }
                    }
                }
                if surely_held && !gate.is_open() {
                    if self.options().unlink_grace_ns > 0 {
                        self.open_table().allow_unrecorded();
                    }
                    gate.open();
                    tracing::info!("kernel caching on: this mount is the only client");
                }
            }
            clock.sleep(LEASE_POLL).await;
        }
    }
}

impl crate::fs::Fs {
    /// [`crate::fs::Fs::record_unrecorded_opens`] before the lease is given
    /// up: whether it succeeded (a failure is logged), `Err` only when this
    /// client is fenced.
    async fn record_opens_for_give_up(&self) -> FsResult<bool> {
        match self.record_unrecorded_opens().await {
            Ok(()) => Ok(true),
            Err(FsError::Fenced) => Err(FsError::Fenced),
            Err(e) => {
                tracing::warn!(error = %e, "recording open files failed; keeping the cache lease until it works");
                Ok(false)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const TTL: Duration = Duration::from_secs(1);

    /// Records what it was asked to drop; may fail, or see a rename land
    /// while it drops.
    #[derive(Debug, Default)]
    struct Kernel {
        names: Mutex<Vec<(u64, Vec<u8>)>>,
        attrs: Mutex<Vec<u64>>,
        fail: bool,
        rename_during: Mutex<Option<Arc<CacheGate>>>,
    }

    impl KernelCache for Kernel {
        fn forget_name(&self, parent: u64, name: &[u8]) -> std::io::Result<()> {
            if let Some(gate) = self.rename_during.lock().take() {
                gate.renamed(parent, name, 99, b"elsewhere", false);
            }
            self.names.lock().push((parent, name.to_vec()));
            if self.fail {
                return Err(std::io::Error::other("no kernel"));
            }
            Ok(())
        }

        fn forget_attrs(&self, ino: u64) -> std::io::Result<()> {
            self.attrs.lock().push(ino);
            Ok(())
        }

        fn forget_data(&self, ino: u64) -> std::io::Result<()> {
            self.forget_attrs(ino)
        }

        fn store(&self, _ino: u64, _offset: u64, _data: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn open_gate(clock: &Arc<ManualClock>) -> Arc<CacheGate> {
        let gate = CacheGate::new(
            CacheTtls {
                attr: TTL,
                entry: TTL,
            },
            clock.clone(),
        );
        gate.open();
        gate
    }

    /// Hand out a name in 1 ("a", renamed to "b" in 2), another in 1 that
    /// expires before the close, attributes of 5, and a reply whose ticket
    /// predates the opening (recorded nowhere); then close. Returns how
    /// long the close took.
    async fn hand_out_and_close(gate: &Arc<CacheGate>, clock: &Arc<ManualClock>) -> Duration {
        let stale = CacheTicket { generation: None };
        gate.enter(stale).handing_name(1, b"never", TTL);
        {
            let short = gate.enter(gate.ticket());
            short.handing_name(1, b"short", Duration::from_millis(1));
        }
        clock.advance(REVOKE_MARGIN + Duration::from_millis(10));
        {
            let reply = gate.enter(gate.ticket());
            reply.handing_name(1, b"a", TTL);
            reply.handing_attrs(5, TTL);
            reply.handing_attrs(6, Duration::ZERO);
        }
        {
            let _moving = gate.moving();
            gate.renamed(1, b"a", 2, b"b", false);
        }
        let start = clock.monotonic();
        gate.close().await;
        clock.monotonic() - start
    }

    #[tokio::test]
    async fn closing_drops_what_the_kernel_cached_instead_of_waiting() {
        let clock = ManualClock::new();
        let gate = open_gate(&clock);
        let kernel = Arc::new(Kernel::default());
        gate.set_kernel(kernel.clone());
        let took = hand_out_and_close(&gate, &clock).await;
        assert_eq!(took, REVOKE_MARGIN, "waited for more than the replies");
        // Where the rename put it; not the expired one, nor the stale reply's.
        assert_eq!(*kernel.names.lock(), vec![(2, b"b".to_vec())]);
        assert_eq!(*kernel.attrs.lock(), vec![5]);
    }

    #[tokio::test]
    async fn closing_waits_out_the_ttl_when_it_cannot_drop() {
        // No kernel to tell.
        let clock = ManualClock::new();
        let gate = open_gate(&clock);
        assert_eq!(hand_out_and_close(&gate, &clock).await, TTL + REVOKE_MARGIN);
        // A drop failed.
        let gate = open_gate(&clock);
        gate.set_kernel(Arc::new(Kernel {
            fail: true,
            ..Kernel::default()
        }));
        assert_eq!(hand_out_and_close(&gate, &clock).await, TTL + REVOKE_MARGIN);
        // A rename landed while the names were being dropped: it may have
        // moved one after it was dropped where it was.
        let gate = open_gate(&clock);
        let kernel = Arc::new(Kernel::default());
        *kernel.rename_during.lock() = Some(gate.clone());
        gate.set_kernel(kernel.clone());
        assert_eq!(hand_out_and_close(&gate, &clock).await, TTL + REVOKE_MARGIN);
        // Too much to track.
        let gate = open_gate(&clock);
        gate.set_kernel(Arc::new(Kernel::default()));
        {
            let reply = gate.enter(gate.ticket());
            for ino in 0..HANDED_MAX as u64 {
                reply.handing_attrs(ino, TTL);
            }
        }
        assert!(gate.state.lock().handed.is_none());
        assert_eq!(hand_out_and_close(&gate, &clock).await, TTL + REVOKE_MARGIN);
    }

    /// A rename still in flight (its reply not yet taken by the kernel)
    /// holds the close back until it is done and its margin passed.
    #[tokio::test]
    async fn closing_waits_for_a_rename_in_flight() {
        let clock = ManualClock::new();
        let gate = open_gate(&clock);
        gate.set_kernel(Arc::new(Kernel::default()));
        let moving = gate.moving();
        let closing = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.close().await })
        };
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!closing.is_finished(), "closed under a rename in flight");
        let released = clock.monotonic();
        drop(moving);
        closing.await.unwrap();
        assert!(clock.monotonic() >= released + REVOKE_MARGIN);
    }

    /// A rename that began after the close does not hold it back: the
    /// close waits for the one in flight before it, not for the next.
    #[tokio::test]
    async fn renames_that_began_after_the_close_do_not_hold_it_back() {
        let clock = ManualClock::new();
        let gate = open_gate(&clock);
        gate.set_kernel(Arc::new(Kernel::default()));
        let before = gate.moving();
        let closing = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.close().await })
        };
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!closing.is_finished(), "closed under a rename in flight");
        let after = gate.moving();
        let released = clock.monotonic();
        drop(before);
        // Real time: the close drops the kernel's caches on a blocking
        // thread, which a loaded machine may run late.
        let closed = tokio::time::timeout(Duration::from_secs(20), closing).await;
        assert!(
            closed.is_ok(),
            "a rename that began after the close held it back"
        );
        // Its reply was still to come: the close waited the TTLs out
        // instead of trusting its drops.
        assert!(clock.monotonic() >= released + TTL + REVOKE_MARGIN);
        drop(after);
    }
}
