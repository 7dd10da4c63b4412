//! Client sessions: registration, heartbeats, expiry, eviction and fencing.
//!
//! A mount registers `("clients", ID)` (its [`ClientInfo`]); that key's
//! presence *is* being attached. Every transaction the client makes reads it
//! without snapshot ([`ensure_attached`]), so once an eviction clears it,
//! every later transaction of that client fails with [`FsError::Fenced`] —
//! and one that read it before the eviction but commits after conflicts and
//! retries into the same answer. Nothing the client does after the eviction
//! commits.
//!
//! Liveness: a client bumps `("client", ID, "heartbeat")` every heartbeat
//! period (an atomic add: it never conflicts with the client's own work).
//! Any live client watches the others' heartbeat values on its *own*
//! monotonic clock ([`ExpiryTracker`]): a value unchanged for the expiry
//! period means the client is gone, whatever the wall clocks of the two
//! hosts say. The period is the longer of the judge's expiry and the one
//! the client published at attach (`("client", ID, "expiry")`, at most
//! [`EXPIRY_MAX`]), so mounts with different expiries never take a live
//! one for dead. The eviction re-reads the value inside its transaction, so a
//! heartbeat that lands at the last moment saves the client.
//!
//! Eviction releases the client's locks and waiters, its open records, and
//! frees the unlinked inodes only it held open, in bounded batches driven by
//! the client's index keys; a crash midway leaves the rest for the next
//! [`gc`], which finds clients with keys but no registration.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::clock::Clock;
use crate::codec::{self, ClientInfo};
use crate::error::{FsError, FsResult};
use crate::keys::Keys;
use crate::kv::{Database, RangeOptions, Transaction};
use crate::ops::open::Frees;

/// How often a client heartbeats by default.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(5);
/// How long a heartbeat may stay unchanged before the client is evicted.
pub const EXPIRY_DEFAULT: Duration = Duration::from_secs(30);
/// The longest expiry a judge honours from a client ([`ClientInfo::expiry`];
/// `hafs mount` refuses longer). A dead client's locks are held that long.
pub const EXPIRY_MAX: Duration = Duration::from_secs(3600);
/// Index keys handled per eviction transaction.
pub const GC_BATCH: usize = 64;
/// A live client looks for half-finished evictions every this many beats.
pub const GC_EVERY_BEATS: u64 = 10;

/// How [`attach`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// Registered: the client is attached.
    Yes,
    /// Not registered, and this id must never be: an earlier attempt's
    /// commit was ambiguous and its registration is not there, so it either
    /// never landed or landed and was evicted since (the client has not
    /// heartbeated yet: an expiry sweep or `hafs evict` may have taken it
    /// for dead). Registering the id again could undo that eviction; attach
    /// under a new id instead ([`crate::fs::Fs::open_client`] does).
    IdSpent,
}

/// Register `info` as an attached client. A live client with the same id
/// is `Busy`; ids must be unique per mount.
pub async fn attach(db: &Database, keys: &Keys, info: &ClientInfo) -> FsResult<Attached> {
    db.run(|txn, maybe_committed| async move {
        let key = keys.session(&info.id);
        if let Some(existing) = txn.get(&key).await? {
            if maybe_committed && existing == codec::encode_client(info) {
                return Ok(Attached::Yes);
            }
            return Err(FsError::Busy(format!(
                "client {} is already attached",
                info.id
            )));
        }
        if maybe_committed {
            // Seen in the simulation (seed 3138 of `lockset`,
            // HAFS_SIM_FIRST_SEED soak): attaching again here undid an
            // eviction, and a lock taken after it succeeded.
            return Ok(Attached::IdSpent);
        }
        txn.set(&key, &codec::encode_client(info));
        txn.atomic_add(&keys.client_heartbeat(&info.id), 0);
        txn.set(
            &keys.client_beat_time(&info.id),
            &info.mounted_ns.to_le_bytes(),
        );
        if info.expiry.is_zero() {
            // Not a leftover of an earlier client of this id whose
            // eviction stopped midway.
            txn.clear(&keys.client_expiry(&info.id));
        } else {
            txn.set(
                &keys.client_expiry(&info.id),
                &codec::encode_expiry(info.expiry),
            );
        }
        Ok(Attached::Yes)
    })
    .await
}

/// The fencing check: fails with `Fenced` unless `client` is attached. A
/// non-snapshot read, so an eviction committing first makes this
/// transaction conflict.
pub async fn ensure_attached(txn: &Transaction, keys: &Keys, client: &str) -> FsResult<()> {
    match txn.get(&keys.session(client)).await? {
        Some(_) => Ok(()),
        None => Err(FsError::Fenced),
    }
}

/// One heartbeat.
pub async fn heartbeat(db: &Database, keys: &Keys, client: &str) -> FsResult<()> {
    let now = db.clock().wall_ns();
    db.run(|txn, _| async move {
        // No fsync: after a power loss the client is gone, and a lost beat
        // only lets it expire sooner.
        txn.relax_durability();
        ensure_attached(&txn, keys, client).await?;
        txn.atomic_add(&keys.client_heartbeat(client), 1);
        txn.set(&keys.client_beat_time(client), &now.to_le_bytes());
        Ok(())
    })
    .await
}

/// A registered client and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStatus {
    pub info: ClientInfo,
    pub heartbeat: i64,
    /// Wall time of the last heartbeat as the client's host saw it.
    pub last_beat_ns: i64,
    /// Inodes on which it holds locks or waits for one.
    pub locked_inodes: u64,
    /// Inodes it has open.
    pub open_inodes: u64,
    /// Whether it holds the cache lease (`crate::cache`): it was the only
    /// client, and its kernel caches attributes.
    pub cache_lease: bool,
}

/// Every attached client of the filesystem.
pub async fn list_clients(db: &Database, keys: &Keys) -> FsResult<Vec<ClientStatus>> {
    db.read(|txn| async move {
        let (begin, end) = keys.sessions();
        let all = txn.get_range(&begin, &end, RangeOptions::default()).await?;
        let mut out = Vec::new();
        for (key, value) in &all.kvs {
            let id = keys
                .session_id(key)
                .ok_or_else(|| FsError::Corrupted("client registration key".into()))?;
            let mut info = codec::decode_client(&id, value)?;
            info.expiry = published_expiry(&txn, keys, &id).await?;
            let heartbeat = read_heartbeat(&txn, keys, &id).await?;
            let last_beat_ns =
                codec::decode_counter(txn.get(&keys.client_beat_time(&id)).await?.as_deref())?;
            let (b, e) = keys.client_locks(&id);
            let locked_inodes = txn
                .get_range(&b, &e, RangeOptions::default())
                .await?
                .kvs
                .len();
            let (b, e) = keys.client_opens(&id);
            let open_inodes = txn
                .get_range(&b, &e, RangeOptions::default())
                .await?
                .kvs
                .len();
            let cache_lease = txn.get(&keys.cache_lease(&id)).await?.is_some();
            out.push(ClientStatus {
                cache_lease,
                info,
                heartbeat,
                last_beat_ns,
                locked_inodes: locked_inodes as u64,
                open_inodes: open_inodes as u64,
            });
        }
        Ok(out)
    })
    .await
}

/// The expiry `client` published, capped at [`EXPIRY_MAX`]; zero if it
/// published none. A malformed value is logged and read as none: it must
/// not stop every expiry sweep (fsck reports it).
async fn published_expiry(txn: &Transaction, keys: &Keys, client: &str) -> FsResult<Duration> {
    let bytes = txn.get(&keys.client_expiry(client)).await?;
    Ok(match codec::decode_expiry(bytes.as_deref()) {
        Ok(own) => own.min(EXPIRY_MAX),
        Err(e) => {
            tracing::warn!(client, error = %e, "ignoring a malformed published expiry");
            Duration::ZERO
        }
    })
}

async fn read_heartbeat(txn: &Transaction, keys: &Keys, client: &str) -> FsResult<i64> {
    codec::decode_counter(txn.get(&keys.client_heartbeat(client)).await?.as_deref())
}

/// What an eviction or gc released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub clients: u64,
    pub locked_inodes: u64,
    pub open_inodes: u64,
    pub freed_inodes: u64,
    /// Unlinked inodes freed by [`sweep_unlinked`] once their grace was over.
    pub swept_inodes: u64,
}

/// Evict `client` now: fence it, then release everything it held. Returns
/// whether it was attached. Also finishes an eviction that stopped midway.
pub async fn evict(db: &Database, keys: &Keys, client: &str) -> FsResult<(bool, GcStats)> {
    let was_attached = db
        .run(|txn, maybe_committed| async move {
            let present = txn.get(&keys.session(client)).await?.is_some();
            txn.clear(&keys.session(client));
            Ok::<_, FsError>(present || maybe_committed)
        })
        .await?;
    let stats = gc_client(db, keys, client).await?;
    Ok((was_attached, stats))
}

/// How [`evict_if_stale`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// This call cleared the registration: its heartbeat still read the
    /// value observed.
    Evicted,
    /// Detached when a retry looked, after an attempt of this call whose
    /// commit was ambiguous: that attempt evicted it, or someone else did,
    /// or it detached cleanly meanwhile.
    MaybeEvicted,
    /// Already detached when this call first looked: evicted by someone
    /// else, or detached cleanly.
    Gone,
    /// Its heartbeat moved: it is alive.
    Alive,
}

impl Stale {
    /// Whether the client is detached on return.
    pub fn detached(self) -> bool {
        self != Stale::Alive
    }
}

/// Evict `client` only if its heartbeat still reads `observed` (the value
/// an [`ExpiryTracker`] saw unchanged for the expiry period), then release
/// what it held.
pub async fn evict_if_stale(
    db: &Database,
    keys: &Keys,
    client: &str,
    observed: i64,
) -> FsResult<Stale> {
    let stale = db
        .run(|txn, maybe_committed| async move {
            if txn.get(&keys.session(client)).await?.is_none() {
                return Ok::<_, FsError>(if maybe_committed {
                    Stale::MaybeEvicted
                } else {
                    Stale::Gone
                });
            }
            if read_heartbeat(&txn, keys, client).await? != observed {
                return Ok(Stale::Alive);
            }
            txn.clear(&keys.session(client));
            Ok(Stale::Evicted)
        })
        .await?;
    if stale.detached() {
        gc_client(db, keys, client).await?;
    }
    Ok(stale)
}

/// Release what a detached client still holds, in bounded transactions.
/// Refuses (`Busy`) to touch a client that is attached.
pub async fn gc_client(db: &Database, keys: &Keys, client: &str) -> FsResult<GcStats> {
    let mut stats = GcStats {
        clients: 1,
        ..GcStats::default()
    };
    loop {
        let (locked, more) = db
            .run(|txn, _| async move { release_locks_batch(&txn, keys, client).await })
            .await?;
        stats.locked_inodes += locked;
        if !more {
            break;
        }
    }
    loop {
        let (opened, freed, more) = db
            .run(|txn, _| async move {
                let now_ns = db.clock().wall_ns();
                release_opens_batch(&txn, keys, client, now_ns).await
            })
            .await?;
        stats.open_inodes += opened;
        stats.freed_inodes += freed;
        if !more {
            break;
        }
    }
    db.run(|txn, _| async move {
        refuse_if_attached(&txn, keys, client).await?;
        let (begin, end) = keys.client_range(client);
        txn.clear_range(&begin, &end);
        txn.clear(&keys.cache_lease(client));
        Ok::<_, FsError>(())
    })
    .await?;
    Ok(stats)
}

async fn refuse_if_attached(txn: &Transaction, keys: &Keys, client: &str) -> FsResult<()> {
    if txn.get(&keys.session(client)).await?.is_some() {
        return Err(FsError::Busy(format!("client {client} is attached")));
    }
    Ok(())
}

async fn index_batch(
    txn: &Transaction,
    keys: &Keys,
    client: &str,
    (begin, end): (Vec<u8>, Vec<u8>),
) -> FsResult<(Vec<(Vec<u8>, u64)>, bool)> {
    let options = RangeOptions {
        limit: GC_BATCH,
        ..RangeOptions::default()
    };
    let page = txn.get_range(&begin, &end, options).await?;
    let mut out = Vec::with_capacity(page.kvs.len());
    for (key, _) in page.kvs {
        let ino = keys
            .client_index_ino(client, &key)
            .ok_or_else(|| FsError::Corrupted(format!("index key of client {client}")))?;
        out.push((key, ino));
    }
    Ok((out, page.more))
}

async fn release_locks_batch(
    txn: &Transaction,
    keys: &Keys,
    client: &str,
) -> FsResult<(u64, bool)> {
    refuse_if_attached(txn, keys, client).await?;
    let (batch, more) = index_batch(txn, keys, client, keys.client_locks(client)).await?;
    for (index_key, ino) in &batch {
        crate::ops::lock::drop_client_locks(txn, keys, *ino, client).await?;
        txn.clear(index_key);
    }
    Ok((batch.len() as u64, more))
}

async fn release_opens_batch(
    txn: &Transaction,
    keys: &Keys,
    client: &str,
    now_ns: i64,
) -> FsResult<(u64, u64, bool)> {
    refuse_if_attached(txn, keys, client).await?;
    let (batch, more) = index_batch(txn, keys, client, keys.client_opens(client)).await?;
    let mut freed = 0;
    // The evicted client's own lease holds nothing back: its opens end now.
    let frees = Frees {
        evicting: Some(client),
        ..Frees::default()
    };
    for (index_key, ino) in &batch {
        txn.clear(index_key);
        if crate::ops::open::drop_open_record(txn, keys, *ino, client, now_ns, frees).await? {
            freed += 1;
        }
    }
    Ok((batch.len() as u64, freed, more))
}

/// Finish the eviction of every client that has keys but no registration
/// (an eviction or unmount that stopped midway).
pub async fn gc(db: &Database, keys: &Keys) -> FsResult<GcStats> {
    let mut total = GcStats::default();
    let (mut begin, end) = keys.clients_with_keys();
    loop {
        let found = db
            .read(|txn| {
                let begin = begin.clone();
                let end = end.clone();
                async move {
                    let options = RangeOptions {
                        limit: 1,
                        ..RangeOptions::default()
                    };
                    let page = txn.get_range(&begin, &end, options).await?;
                    let Some((key, _)) = page.kvs.first() else {
                        return Ok::<_, FsError>(None);
                    };
                    let client = keys
                        .client_of_key(key)
                        .ok_or_else(|| FsError::Corrupted("client key".into()))?;
                    let attached = txn.get(&keys.session(&client)).await?.is_some();
                    Ok(Some((client, attached)))
                }
            })
            .await?;
        let Some((client, attached)) = found else {
            total.swept_inodes = sweep_unlinked(db, keys).await?;
            return Ok(total);
        };
        if !attached {
            let stats = gc_client(db, keys, &client).await?;
            total.clients += 1;
            total.locked_inodes += stats.locked_inodes;
            total.open_inodes += stats.open_inodes;
            total.freed_inodes += stats.freed_inodes;
        }
        begin = keys.client_range(&client).1;
    }
}

/// Free every parked unlinked inode whose grace is over and that no client
/// has open, [`GC_BATCH`] entries per transaction. The page is read as a
/// snapshot (a concurrent unlink parking another inode does not conflict);
/// each candidate's own keys are read normally, so a racing open either
/// lands first and keeps the inode or finds it gone. Stateless, so a sweep
/// cut short is simply resumed by the next one. Returns how many it freed.
///
/// Run by a process with no client of its own: it frees nothing while any
/// client holds the cache lease (`crate::ops::open`, unrecorded opens).
pub async fn sweep_unlinked(db: &Database, keys: &Keys) -> FsResult<u64> {
    sweep_unlinked_by(db, keys, Frees::default()).await
}

/// [`sweep_unlinked`] by the process `frees` describes.
pub async fn sweep_unlinked_by(db: &Database, keys: &Keys, frees: Frees<'_>) -> FsResult<u64> {
    let (mut begin, end) = keys.unlinked_all();
    let mut freed = 0;
    loop {
        let (n, next) = db
            .run(|txn, _| {
                let (begin, end) = (begin.clone(), end.clone());
                async move {
                    let now_ns = db.clock().wall_ns();
                    let options = RangeOptions {
                        limit: GC_BATCH,
                        snapshot: true,
                        ..RangeOptions::default()
                    };
                    let page = txn.get_range(&begin, &end, options).await?;
                    let mut n = 0;
                    for (key, value) in &page.kvs {
                        let due = crate::ops::parked_until(value).is_none_or(|t| t <= now_ns);
                        let Some(ino) = keys.unlinked_ino(key) else {
                            continue; // fsck reports it
                        };
                        if !due {
                            continue;
                        }
                        let Some(bytes) = txn.get(&keys.attr(ino)).await? else {
                            continue; // fsck reports it
                        };
                        let attr = crate::codec::decode_attr(ino, &bytes)?;
                        if attr.nlink == 0
                            && crate::ops::open::free_if_unused(&txn, keys, &attr, now_ns, frees)
                                .await?
                        {
                            n += 1;
                        }
                    }
                    let next = match (page.more, page.kvs.last()) {
                        (true, Some((key, _))) => {
                            let mut after = key.clone();
                            after.push(0);
                            Some(after)
                        }
                        _ => None,
                    };
                    Ok::<_, FsError>((n, next))
                }
            })
            .await?;
        freed += n;
        match next {
            Some(after) => begin = after,
            None => return Ok(freed),
        }
    }
}

/// Judges other clients' expiry by watching their heartbeat values on this
/// client's own monotonic clock.
///
/// A client is judged by the longer of the judge's expiry and the one it
/// published ([`ClientInfo::expiry`]): a mount with a longer `--expiry`
/// beats and caches by its own, and taking it for dead at a shorter one
/// would break its locks while it lives, and evict it while its kernel
/// still caches on the belief that it is alone (`crate::cache`).
#[derive(Debug, Default)]
pub struct ExpiryTracker {
    /// client → (heartbeat value, when this tracker first saw that value)
    seen: BTreeMap<String, (i64, Duration)>,
    /// client → (its registration, the expiry it published, capped at
    /// [`EXPIRY_MAX`]): read again only when the registration changes (an
    /// id attached anew); it never changes while the client is attached.
    published: BTreeMap<String, (Vec<u8>, Duration)>,
}

impl ExpiryTracker {
    /// Look at every client once; evict those whose heartbeat has not
    /// changed for `expiry`. Returns the clients evicted (by this sweep, or
    /// perhaps by it after an ambiguous commit), not those found detached.
    pub async fn sweep(
        &mut self,
        db: &Database,
        keys: &Keys,
        clock: &dyn Clock,
        expiry: Duration,
        me: Option<&str>,
    ) -> FsResult<Vec<String>> {
        let mut evicted = Vec::new();
        for (id, value) in self.expired(db, keys, clock, expiry, me).await? {
            match evict_if_stale(db, keys, &id, value).await? {
                Stale::Evicted | Stale::MaybeEvicted => {
                    tracing::warn!(client = %id, "evicted a client whose heartbeat stopped");
                    self.seen.remove(&id);
                    evicted.push(id);
                }
                Stale::Gone => {
                    tracing::debug!(client = %id, "a stale client was detached already");
                    self.seen.remove(&id);
                }
                Stale::Alive => {}
            }
        }
        Ok(evicted)
    }

    /// The longest expiry any client published, as of the last look: a
    /// one-off watch (`hafs gc-clients`) must last this long to judge all.
    pub fn longest_published(&self) -> Duration {
        self.published
            .values()
            .map(|p| p.1)
            .max()
            .unwrap_or_default()
    }

    /// Look at every client once; return those (with the heartbeat value
    /// seen) whose heartbeat has not changed for `expiry`, or for their own
    /// published expiry if that is longer, without evicting.
    pub async fn expired(
        &mut self,
        db: &Database,
        keys: &Keys,
        clock: &dyn Clock,
        expiry: Duration,
        me: Option<&str>,
    ) -> FsResult<Vec<(String, i64)>> {
        let known = &self.published;
        let beats = db
            .read(|txn| async move {
                let (begin, end) = keys.sessions();
                let options = RangeOptions {
                    snapshot: true,
                    ..RangeOptions::default()
                };
                let all = txn.get_range(&begin, &end, options).await?;
                let mut beats = Vec::new();
                for (key, registration) in &all.kvs {
                    let id = keys
                        .session_id(key)
                        .ok_or_else(|| FsError::Corrupted("client registration key".into()))?;
                    let beat = read_heartbeat(&txn, keys, &id).await?;
                    let own = match known.get(&id) {
                        Some((seen, own)) if seen == registration => *own,
                        _ => published_expiry(&txn, keys, &id).await?,
                    };
                    beats.push((id, beat, (registration.clone(), own)));
                }
                Ok::<_, FsError>(beats)
            })
            .await?;
        let now = clock.monotonic();
        let live: BTreeSet<&String> = beats.iter().map(|(id, ..)| id).collect();
        self.seen.retain(|id, _| live.contains(id));
        let mut expired = Vec::new();
        for (id, beat, own) in &beats {
            if Some(id.as_str()) == me {
                continue;
            }
            match self.seen.get(id) {
                Some(&(value, since)) if value == *beat => {
                    let own = if crate::planted::active(crate::planted::Bug::JudgeByOwnExpiry) {
                        Duration::ZERO
                    } else {
                        own.1
                    };
                    if now.saturating_sub(since) >= expiry.max(own) {
                        expired.push((id.clone(), value));
                    }
                }
                _ => {
                    self.seen.insert(id.clone(), (*beat, now));
                }
            }
        }
        // Exactly the attached clients, as of this look.
        self.published = beats.into_iter().map(|(id, _, own)| (id, own)).collect();
        Ok(expired)
    }
}

/// How a mounted client keeps its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    pub heartbeat: Duration,
    pub expiry: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            heartbeat: HEARTBEAT_DEFAULT,
            expiry: EXPIRY_DEFAULT,
        }
    }
}

impl crate::fs::Fs {
    /// Keep this client's session: heartbeat every period and evict other
    /// clients whose heartbeat stopped. Returns only when this client has
    /// been evicted (`Fenced`); transient KV errors are logged and retried
    /// at the next period.
    ///
    /// The heartbeat runs on its own: the housekeeping beside it (session
    /// gc, the unlinked-inode sweep, evictions and their cleanup, owed
    /// unlocks) can take long on a big backlog, and a beat it held up past
    /// the expiry would get this live client evicted.
    pub async fn maintain_session(&self, options: SessionOptions) -> FsError {
        // `biased`: tokio's select! otherwise polls in an order drawn from
        // an RNG the simulator does not control.
        tokio::select! {
            biased;
            fenced = self.beat(options) => fenced,
            never = self.housekeeping(options) => match never {},
        }
    }

    async fn beat(&self, options: SessionOptions) -> FsError {
        let clock = self.db().clock().clone();
        loop {
            clock.sleep(options.heartbeat).await;
            if crate::buggify!() {
                // A missed beat, as a stalled host would miss it.
                continue;
            }
            match heartbeat(self.db(), self.keys(), self.client()).await {
                Err(FsError::Fenced) => return FsError::Fenced,
                Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying next period"),
                Ok(()) => {}
            }
        }
    }

    async fn housekeeping(&self, options: SessionOptions) -> std::convert::Infallible {
        let clock = self.db().clock().clone();
        let mut tracker = ExpiryTracker::default();
        for period in 1u64.. {
            clock.sleep(options.heartbeat).await;
            if period % GC_EVERY_BEATS == 0 {
                // Finish evictions whose evictor died midway.
                if let Err(e) = gc(self.db(), self.keys()).await {
                    tracing::warn!(error = %e, "session gc failed; retrying later");
                }
            }
            let owed = self.pay_unlock_debts().await;
            if owed > 0 {
                tracing::warn!(owed, "unlocks still failing; retrying next period");
            }
            let frees = Frees {
                here: Some((self.client(), self.open_table())),
                ..Frees::default()
            };
            if let Err(e) = sweep_unlinked_by(self.db(), self.keys(), frees).await {
                tracing::warn!(error = %e, "unlinked-inode sweep failed; retrying next period");
            }
            let swept = tracker
                .sweep(
                    self.db(),
                    self.keys(),
                    clock.as_ref(),
                    options.expiry,
                    Some(self.client()),
                )
                .await;
            if let Err(e) = swept {
                tracing::warn!(error = %e, "expiry sweep failed; retrying next period");
            }
        }
        unreachable!("the housekeeping loop never ends")
    }
}
