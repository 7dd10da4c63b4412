//! Byte-range locks (`F_SETLK`, `F_SETLKW`, `F_GETLK`) and `flock`, held
//! in the KV so every mount sees them.
//!
//! A lock belongs to (client, owner): the owner is the kernel's lock owner,
//! which is per process for POSIX locks and per open file for `flock` — so
//! one model covers both (the kernel sends `flock` as a whole-file lock and
//! FUSE does not say which kind a request is). Each owner's locks on an
//! inode are non-overlapping ranges; a request replaces the overlapped part
//! of the owner's own ranges (split, upgrade, downgrade, unlock) and merges
//! neighbours of the same mode, as Linux does.
//!
//! A request conflicts with another owner's overlapping lock unless both
//! are read locks. Waiting (`F_SETLKW`) is fair: a waiter takes a ticket
//! from the inode's queue, and a request is granted only when no held lock
//! and no *earlier* queued request conflicts with it, so a stream of short
//! holders cannot starve it. Fairness never makes an owner wait for a
//! request that itself waits, directly or through others, for that
//! owner's held locks ([`WaitGraph`]): a holder's downgrade, extension or
//! second range goes ahead of the waiters queued behind it, as on Linux
//! (where there is no queue at all). Waiters sleep on a watch of the
//! inode's `lockver` key, which every change bumps, with a slow re-check
//! as a safety net; they never poll in a tight loop. A cancelled wait
//! removes its ticket before returning `EINTR`.
//!
//! A wait that would close a cycle of owners each waiting for another's
//! held lock on the inode fails with `EDEADLK` (POSIX's answer; Linux's
//! `flock` drops the old lock first instead, which FUSE cannot tell us to
//! do — see the module's first paragraph), so two shared holders that both
//! upgrade do not hang: the second gets `EDEADLK` and keeps its lock.
//!
//! A client remembers in memory which inodes it may hold locks or queue
//! tickets on ([`LockTracker`]): only its own `setlk` creates them, so a
//! close of any other inode (every `close(2)` sends FLUSH, and the kernel
//! cannot tell whether the process ever locked) answers without a
//! transaction.
//!
//! Not done: deadlock detection across inodes — such a cycle waits until
//! one of its waits is interrupted.

use std::future::Future;
use std::time::Duration;

use crate::codec::{self, LockKind, LockValue, Waiter};
use crate::ctx::{Caller, Ctx};
use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use crate::keys::Keys;
use crate::kv::{RangeOptions, Transaction, Watch};

use super::read_attr;

/// The longest pause between retries of a lock operation's transaction. Two
/// processes taking turns at one lock commit to the same keys every few
/// hundred microseconds; with the default backoff (doubling towards
/// 500 ms) the side that lost a few races in a row slept while the other
/// took the lock again and again: a waiter on one mount waited up to 0.9 s
/// for a lock another mount's process re-took in a loop. At 1 ms the worst
/// wait was 23–29 ms, at 4 ms 28–38 ms (README, benchmarks). See
/// `Database::run_capped`.
const LOCK_BACKOFF_CAP: std::time::Duration = std::time::Duration::from_millis(1);

/// The inodes on which this client may hold a lock or a queue ticket.
///
/// Exact in the direction that matters: lock records of a client are
/// created only by its own `setlk` transactions, each of which runs between
/// [`LockTracker::enter`] and its guard's drop, so an inode absent here has
/// none of this client's records. An inode is forgotten only when an unlock
/// found the client with nothing left on it *and* no `setlk` ran since that
/// unlock's transaction began (the generation did not move) or is running.
#[derive(Debug, Default)]
pub struct LockTracker {
    state: parking_lot::Mutex<TrackerState>,
    /// Unlocks of (inode, owner) that failed (a close whose transaction
    /// gave up, as in a long outage of the store): those locks stay held
    /// until one lands. The session's housekeeping retries them
    /// ([`Fs::pay_unlock_debts`]), and the owner's next `setlk` on the
    /// inode pays its debt first. Both hold this mutex through the unlock,
    /// so the debt is never paid after a lock the owner asked for once the
    /// close had returned. (A `setlk` of the same owner running *while* the
    /// close fails, from another thread, may be granted before the debt is
    /// recorded, and lose its lock when it is paid: the two calls were
    /// concurrent, and the close's unlock wins.)
    debts: tokio::sync::Mutex<Vec<(u64, u64)>>,
    /// What `debts` holds, readable without waiting: only an owed pair's
    /// unlocks and `setlk`s take the mutex, so a payment retrying through
    /// an outage holds up nobody else's.
    owed: parking_lot::Mutex<Vec<(u64, u64)>>,
}

impl LockTracker {
    fn owes(&self, ino: u64, owner: u64) -> bool {
        self.owed.lock().contains(&(ino, owner))
    }

    /// Call with `debts` held, after changing it.
    fn mirror(&self, debts: &[(u64, u64)]) {
        *self.owed.lock() = debts.to_vec();
    }
}

#[derive(Debug, Default)]
struct TrackerState {
    inodes: std::collections::HashMap<u64, Tracked>,
    /// Source of generations for every inode. One counter for all, never
    /// reset: an inode forgotten and tracked again must not repeat a
    /// generation an unlock in flight saw before (a review found that ABA
    /// when each inode counted from zero).
    clock: u64,
}

impl TrackerState {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[derive(Debug)]
struct Tracked {
    /// `setlk` calls in progress on the inode.
    active: u32,
    /// Changed whenever a `setlk` starts tracking the inode or ends.
    generation: u64,
}

/// A `setlk` in progress; its drop (also on cancellation) ends it.
struct Entered<'a> {
    tracker: &'a LockTracker,
    ino: u64,
}

impl LockTracker {
    fn enter(&self, ino: u64) -> Entered<'_> {
        let mut state = self.state.lock();
        let generation = state.tick();
        let tracked = state.inodes.entry(ino).or_insert(Tracked {
            active: 0,
            generation,
        });
        tracked.active += 1;
        Entered { tracker: self, ino }
    }

    /// `None`: this client holds and awaits nothing on `ino`.
    fn generation(&self, ino: u64) -> Option<u64> {
        self.state.lock().inodes.get(&ino).map(|t| t.generation)
    }

    /// Forget `ino` if no `setlk` ran on it since `seen` was read.
    fn forget(&self, ino: u64, seen: u64) {
        let mut state = self.state.lock();
        if state
            .inodes
            .get(&ino)
            .is_some_and(|t| t.active == 0 && t.generation == seen)
        {
            state.inodes.remove(&ino);
        }
    }

    /// Inodes currently tracked.
    pub fn len(&self) -> usize {
        self.state.lock().inodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut state = self.tracker.state.lock();
        let generation = state.tick();
        if let Some(t) = state.inodes.get_mut(&self.ino) {
            t.active -= 1;
            t.generation = generation;
        }
    }
}

/// The end of a lock that reaches past any end of file.
pub const LOCK_END_MAX: u64 = u64::MAX;
/// A waiter re-checks at least this often even without a wake-up.
const RECHECK: Duration = Duration::from_secs(1);

/// A lock request on `[start, end)`; `kind` None unlocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    pub kind: Option<LockKind>,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

/// A conflicting lock, as `F_GETLK` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
    /// The holder's pid when it is on the asking client, else 0.
    pub pid: u32,
}

/// A held lock read from the KV.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    client: String,
    owner: u64,
    start: u64,
    value: LockValue,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    if crate::planted::active(crate::planted::Bug::PartialOverlapMissed) {
        return a.0 == b.0;
    }
    a.0 < b.1 && b.0 < a.1
}

fn clash(a: LockKind, b: LockKind) -> bool {
    a == LockKind::Write || b == LockKind::Write
}

async fn held_locks(txn: &Transaction, keys: &Keys, ino: u64) -> FsResult<Vec<Held>> {
    let (begin, end) = keys.locks(ino);
    let page = txn.get_range(&begin, &end, RangeOptions::default()).await?;
    page.kvs
        .iter()
        .map(|(key, value)| {
            let (client, owner, start) = keys
                .lock_id(ino, key)
                .ok_or_else(|| FsError::Corrupted(format!("lock key of inode {ino}")))?;
            let value = codec::decode_lock(value)?;
            Ok(Held {
                client,
                owner,
                start,
                value,
            })
        })
        .collect()
}

async fn waiters(txn: &Transaction, keys: &Keys, ino: u64) -> FsResult<Vec<(u64, Waiter)>> {
    let (begin, end) = keys.lock_waiters(ino);
    let page = txn.get_range(&begin, &end, RangeOptions::default()).await?;
    page.kvs
        .iter()
        .map(|(key, value)| {
            let ticket = keys
                .lock_waiter_ticket(ino, key)
                .ok_or_else(|| FsError::Corrupted(format!("lock waiter key of inode {ino}")))?;
            Ok((ticket, codec::decode_waiter(value)?))
        })
        .collect()
}

/// A lock owner: (client, owner).
type OwnerId<'a> = (&'a str, u64);

fn owner_of(w: &Waiter) -> OwnerId<'_> {
    (w.client.as_str(), w.owner)
}

/// Whether the held lock `h` keeps the queued request `w` waiting.
fn held_blocks(h: &Held, w: &Waiter) -> bool {
    (h.client.as_str(), h.owner) != owner_of(w)
        && overlaps((w.start, w.end), (h.start, h.value.end))
        && clash(w.kind, h.value.kind)
}

/// Whether the earlier queued request `u` keeps `w` waiting (fairness).
fn queued_blocks(u: &Waiter, w: &Waiter) -> bool {
    owner_of(u) != owner_of(w)
        && overlaps((w.start, w.end), (u.start, u.end))
        && clash(w.kind, u.kind)
}

/// Who waits for whom on one inode. A queued request waits for every other
/// owner whose held lock conflicts with it (a *held* edge) and for every
/// earlier conflicting request (a *fairness* edge); an owner that holds
/// locks and waits keeps them until its wait ends, so whoever waits for
/// that owner also waits for what the owner waits for.
struct WaitGraph<'a> {
    held: &'a [Held],
    /// In ticket order.
    queue: &'a [(u64, Waiter)],
}

impl WaitGraph<'_> {
    /// For each queued request (by index), whether it waits — directly or
    /// through others — for `me`'s held locks or queued requests, so can
    /// be granted only after `me` gives something up. With `fairness`
    /// false only held edges count: the cycles that no fairness rule can
    /// break. A fixpoint; each pass costs the queue's length times the
    /// locks of the owners reached and the requests reached so far (few:
    /// usually only `me`'s), and passes repeat only while owners are added.
    fn waiting_for(&self, me: OwnerId<'_>, fairness: bool) -> Vec<bool> {
        let mut reached: Vec<bool> = self.queue.iter().map(|(_, w)| owner_of(w) == me).collect();
        let mut owners = vec![me];
        loop {
            let mut changed = false;
            let mut owners_held: Vec<&Held> = self
                .held
                .iter()
                .filter(|h| owners.contains(&(h.client.as_str(), h.owner)))
                .collect();
            let mut reached_so_far: Vec<&Waiter> = Vec::new();
            for (i, (_, w)) in self.queue.iter().enumerate() {
                if reached[i] {
                    reached_so_far.push(w);
                    continue;
                }
                let by_held = owners_held.iter().any(|h| held_blocks(h, w));
                let by_queue = fairness && reached_so_far.iter().any(|u| queued_blocks(u, w));
                if by_held || by_queue {
                    reached[i] = true;
                    reached_so_far.push(w);
                    changed = true;
                    if !owners.contains(&owner_of(w)) {
                        owners.push(owner_of(w));
                        let id = owner_of(w);
                        owners_held.extend(
                            self.held
                                .iter()
                                .filter(|h| (h.client.as_str(), h.owner) == id),
                        );
                    }
                }
            }
            if !changed {
                return reached;
            }
        }
    }
}

/// Whether `own` locks of mode `kind` cover all of `range`.
fn covers(own: &[Held], kind: LockKind, range: (u64, u64)) -> bool {
    let mut pieces: Vec<(u64, u64)> = own
        .iter()
        .filter(|h| h.value.kind == kind)
        .map(|h| (h.start, h.value.end))
        .collect();
    pieces.sort_unstable();
    let mut reached = range.0;
    for (start, end) in pieces {
        if start > reached {
            break;
        }
        reached = reached.max(end);
        if reached >= range.1 {
            return true;
        }
    }
    false
}

/// The owner's ranges after applying `request` to `own`: the overlapped
/// parts replaced, neighbours of one mode merged.
fn replace_ranges(own: &[Held], request: &LockRequest) -> Vec<(u64, u64, LockKind, u32)> {
    let (s, e) = (request.start, request.end);
    let mut out = Vec::new();
    for h in own {
        let (hs, he, kind, pid) = (h.start, h.value.end, h.value.kind, h.value.pid);
        if he <= s || hs >= e {
            out.push((hs, he, kind, pid));
            continue;
        }
        if hs < s {
            out.push((hs, s, kind, pid));
        }
        if he > e {
            out.push((e, he, kind, pid));
        }
    }
    if let Some(kind) = request.kind {
        out.push((s, e, kind, request.pid));
    }
    out.sort_by_key(|r| r.0);
    let mut merged: Vec<(u64, u64, LockKind, u32)> = Vec::with_capacity(out.len());
    for r in out {
        match merged.last_mut() {
            Some(last) if last.1 == r.0 && last.2 == r.2 => {
                last.1 = r.1;
                last.3 = request.pid;
            }
            _ => merged.push(r),
        }
    }
    merged
}

/// Replace the owner's records on `ino` with `ranges`.
fn write_own(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    owner: u64,
    ranges: &[(u64, u64, LockKind, u32)],
) {
    let (begin, end) = ctx.keys.locks_of(ino, ctx.client, Some(owner));
    txn.clear_range(&begin, &end);
    for &(start, end, kind, pid) in ranges {
        let value = LockValue { kind, end, pid };
        txn.set(
            &ctx.keys.lock(ino, ctx.client, owner, start),
            &codec::encode_lock(&value),
        );
    }
    txn.atomic_add(&ctx.keys.lock_version(ino), 1);
}

/// Keep the client's index entry for `ino` exactly while it holds or
/// waits for something there.
fn update_index(txn: &Transaction, ctx: &Ctx<'_>, ino: u64, still_involved: bool) {
    let key = ctx.keys.client_lock(ctx.client, ino);
    if still_involved {
        txn.set(&key, &[]);
    } else {
        txn.clear(&key);
    }
}

/// `F_GETLK`: the first held lock of another owner that conflicts.
pub async fn apply_getlk(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    owner: u64,
    kind: LockKind,
    start: u64,
    end: u64,
) -> FsResult<Option<Conflict>> {
    read_attr(txn, ctx, ino).await?;
    let held = held_locks(txn, ctx.keys, ino).await?;
    Ok(held
        .into_iter()
        .find(|h| {
            !(h.client == ctx.client && h.owner == owner)
                && overlaps((start, end), (h.start, h.value.end))
                && clash(kind, h.value.kind)
        })
        .map(|h| Conflict {
            kind: h.value.kind,
            start: h.start,
            end: h.value.end,
            pid: if h.client == ctx.client {
                h.value.pid
            } else {
                0
            },
        }))
}

/// What one locking attempt did.
#[derive(Debug)]
pub enum Attempt {
    Granted,
    /// Queued under this ticket; the watch fires on the next lock change.
    Waiting(u64, Watch),
}

/// One attempt at `request` for `owner`; `ticket` is the caller's place in
/// the queue from an earlier attempt. `wait` false fails with `WouldBlock`.
pub async fn apply_setlk(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    owner: u64,
    request: &LockRequest,
    ticket: Option<u64>,
    wait: bool,
) -> FsResult<Attempt> {
    if request.start >= request.end {
        return Err(FsError::Invalid);
    }
    read_attr(txn, ctx, ino).await?;
    let held = held_locks(txn, ctx.keys, ino).await?;
    let queue = waiters(txn, ctx.keys, ino).await?;
    let mine = |client: &str, o: u64| client == ctx.client && o == owner;
    let range = (request.start, request.end);
    // This request's places in the queue: the caller's ticket, or one an
    // attempt whose commit was ambiguous already took.
    let own_queue: Vec<u64> = queue
        .iter()
        .filter(|(t, w)| {
            Some(*t) == ticket
                || (mine(&w.client, w.owner)
                    && (w.start, w.end) == range
                    && Some(w.kind) == request.kind)
        })
        .map(|(t, _)| *t)
        .collect();
    let ticket = ticket.or(own_queue.first().copied());
    let own: Vec<Held> = held
        .iter()
        .filter(|h| mine(&h.client, h.owner))
        .cloned()
        .collect();
    // Already held exactly as asked (a relock, or an earlier attempt whose
    // commit landed after it timed out): granted, whatever is queued —
    // queueing behind others for a lock one holds would deadlock.
    let already = request.kind.is_some_and(|kind| covers(&own, kind, range));
    let graph = WaitGraph {
        held: &held,
        queue: &queue,
    };
    let me = (ctx.client, owner);
    let blocked = match request.kind {
        _ if already => false,
        None => false,
        Some(kind) => {
            let blockers: Vec<&Held> = held
                .iter()
                .filter(|h| {
                    !mine(&h.client, h.owner)
                        && overlaps(range, (h.start, h.value.end))
                        && clash(kind, h.value.kind)
                })
                .collect();
            let earlier: Vec<usize> = (queue.iter().enumerate())
                .filter(|(_, (t, w))| {
                    ticket.is_none_or(|mine_t| *t < mine_t)
                        && !mine(&w.client, w.owner)
                        && overlaps(range, (w.start, w.end))
                        && clash(kind, w.kind)
                })
                .map(|(i, _)| i)
                .collect();
            // An earlier request that waits for this owner cannot go first:
            // queueing behind it would deadlock.
            let by_earlier = !earlier.is_empty() && {
                let behind_me = graph.waiting_for(me, true);
                let ignored = crate::planted::active(crate::planted::Bug::FairnessIgnoresWaitGraph);
                earlier.iter().any(|&i| !behind_me[i] || ignored)
            };
            // A new wait on a holder that itself waits for this owner's
            // held locks would never end.
            if wait && ticket.is_none() && !blockers.is_empty() && !queue.is_empty() {
                let held_only = graph.waiting_for(me, false);
                let deadlocked = blockers.iter().any(|h| {
                    queue.iter().zip(&held_only).any(|((_, w), reached)| {
                        *reached && owner_of(w) == (h.client.as_str(), h.owner)
                    })
                });
                if deadlocked {
                    return Err(FsError::Deadlock);
                }
            }
            !blockers.is_empty() || by_earlier
        }
    };
    if !blocked {
        let ranges = replace_ranges(&own, request);
        write_own(txn, ctx, ino, owner, &ranges);
        for t in &own_queue {
            txn.clear(&ctx.keys.lock_waiter(ino, *t));
        }
        let client_involved = !ranges.is_empty()
            || held
                .iter()
                .any(|h| h.client == ctx.client && h.owner != owner)
            || queue
                .iter()
                .any(|(t, w)| w.client == ctx.client && !own_queue.contains(t));
        update_index(txn, ctx, ino, client_involved);
        return Ok(Attempt::Granted);
    }
    if !wait {
        return Err(FsError::WouldBlock);
    }
    // Keep an existing place in the queue (also after an ambiguous commit).
    let ticket = match ticket {
        Some(t) => t,
        None => enqueue(txn, ctx, ino, owner, request).await?,
    };
    Ok(Attempt::Waiting(
        ticket,
        txn.watch(&ctx.keys.lock_version(ino)),
    ))
}

async fn enqueue(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    owner: u64,
    request: &LockRequest,
) -> FsResult<u64> {
    let seq_key = ctx.keys.lock_sequence(ino);
    let last = codec::decode_counter(txn.get(&seq_key).await?.as_deref())?;
    let ticket = last as u64 + 1;
    txn.set(&seq_key, &(ticket as i64).to_le_bytes());
    let kind = request.kind.ok_or(FsError::Invalid)?;
    let waiter = Waiter {
        client: ctx.client.to_string(),
        owner,
        kind,
        start: request.start,
        end: request.end,
        pid: request.pid,
    };
    txn.set(
        &ctx.keys.lock_waiter(ino, ticket),
        &codec::encode_waiter(&waiter),
    );
    update_index(txn, ctx, ino, true);
    Ok(ticket)
}

/// Leave the queue (a cancelled wait).
pub async fn apply_dequeue(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    ticket: u64,
) -> FsResult<()> {
    txn.clear(&ctx.keys.lock_waiter(ino, ticket));
    txn.atomic_add(&ctx.keys.lock_version(ino), 1);
    let held = held_locks(txn, ctx.keys, ino).await?;
    let queue = waiters(txn, ctx.keys, ino).await?;
    let involved = held.iter().any(|h| h.client == ctx.client)
        || queue
            .iter()
            .any(|(t, w)| w.client == ctx.client && *t != ticket);
    update_index(txn, ctx, ino, involved);
    Ok(())
}

/// Release every lock and waiter of `owner` on `ino` (close, flush).
/// Returns whether this client still holds or awaits a lock on `ino`
/// through another owner.
pub async fn apply_unlock_owner(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    owner: u64,
) -> FsResult<bool> {
    let held = held_locks(txn, ctx.keys, ino).await?;
    let queue = waiters(txn, ctx.keys, ino).await?;
    let mine = |client: &str, o: u64| client == ctx.client && o == owner;
    let involved = held
        .iter()
        .any(|h| h.client == ctx.client && h.owner != owner)
        || queue
            .iter()
            .any(|(_, w)| w.client == ctx.client && w.owner != owner);
    if !held.iter().any(|h| mine(&h.client, h.owner))
        && !queue.iter().any(|(_, w)| mine(&w.client, w.owner))
    {
        return Ok(involved);
    }
    write_own(txn, ctx, ino, owner, &[]);
    for (t, w) in &queue {
        if mine(&w.client, w.owner) {
            txn.clear(&ctx.keys.lock_waiter(ino, *t));
        }
    }
    update_index(txn, ctx, ino, involved);
    Ok(involved)
}

/// Drop every lock and waiter of an evicted `client` on `ino`.
pub async fn drop_client_locks(
    txn: &Transaction,
    keys: &Keys,
    ino: u64,
    client: &str,
) -> FsResult<()> {
    let (begin, end) = keys.locks_of(ino, client, None);
    txn.clear_range(&begin, &end);
    for (t, w) in waiters(txn, keys, ino).await? {
        if w.client == client {
            txn.clear(&keys.lock_waiter(ino, t));
        }
    }
    txn.atomic_add(&keys.lock_version(ino), 1);
    Ok(())
}

impl Fs {
    /// `F_GETLK`.
    pub async fn getlk(
        &self,
        caller: &Caller,
        ino: u64,
        owner: u64,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> FsResult<Option<Conflict>> {
        self.query(caller, |txn, ctx| async move {
            apply_getlk(&txn, &ctx, ino, owner, kind, start, end).await
        })
        .await
    }

    /// `F_SETLK` (`wait` false: `EAGAIN` on conflict) and `F_SETLKW`
    /// (`wait` true). A wait ends with `EINTR` when `cancel` resolves first,
    /// leaving no lock and no place in the queue behind.
    pub async fn setlk(
        &self,
        caller: &Caller,
        ino: u64,
        owner: u64,
        request: LockRequest,
        wait: bool,
        cancel: impl Future<Output = ()>,
    ) -> FsResult<()> {
        let request = &request;
        let _entered = self.lock_tracker().enter(ino);
        let tracker = self.lock_tracker();
        if tracker.owes(ino, owner) {
            let mut debts = tracker.debts.lock().await;
            if let Some(at) = debts.iter().position(|&d| d == (ino, owner)) {
                self.unlock_owner_once(caller, ino, owner).await?;
                debts.swap_remove(at);
                tracker.mirror(&debts);
            }
        }
        let mut ticket: Option<u64> = None;
        let mut cancel = std::pin::pin!(cancel);
        loop {
            let attempt = self
                .run_fenced_capped(caller, LOCK_BACKOFF_CAP, |txn, ctx| async move {
                    txn.relax_durability(); // see `Fs::unlock_owner`
                    apply_setlk(&txn, &ctx, ino, owner, request, ticket, wait).await
                })
                .await;
            let watch = match attempt {
                Ok(Attempt::Granted) => return Ok(()),
                Ok(Attempt::Waiting(t, watch)) => {
                    ticket = Some(t);
                    watch
                }
                Err(e) => {
                    if let Some(t) = ticket {
                        self.leave_queue(caller, ino, t).await;
                    }
                    return Err(e);
                }
            };
            let clock = self.db().clock().clone();
            // BUGGIFY: lose the wake-up; only the slow re-check remains.
            let lose_wakeup = crate::buggify!();
            let woken = async {
                // `biased`: tokio's select! otherwise polls in an order drawn
                // from an RNG the simulator does not control.
                tokio::select! {
                    biased;
                    _ = watch.changed(), if !lose_wakeup => {}
                    _ = clock.sleep(RECHECK) => {}
                }
            };
            tokio::select! {
                biased;
                _ = woken => {}
                _ = &mut cancel => {
                    if let Some(t) = ticket {
                        self.leave_queue(caller, ino, t).await;
                    }
                    return Err(FsError::Interrupted);
                }
            }
        }
    }

    /// Give up a place in the queue. This must not fail quietly: an
    /// orphaned ticket would block every later request behind it (the
    /// simulator found that). So it retries until it sticks; only an
    /// evicted client stops, and its eviction clears the ticket anyway.
    async fn leave_queue(&self, caller: &Caller, ino: u64, ticket: u64) {
        loop {
            let left = self
                .run_fenced_capped(caller, LOCK_BACKOFF_CAP, |txn, ctx| async move {
                    txn.relax_durability(); // see `Fs::unlock_owner`
                    apply_dequeue(&txn, &ctx, ino, ticket).await
                })
                .await;
            match left {
                Ok(()) | Err(FsError::Fenced) => return,
                Err(e) => {
                    tracing::warn!(error = %e, ino, "leaving a lock queue failed; retrying");
                    self.db().clock().sleep(RECHECK).await;
                }
            }
        }
    }

    /// Release every lock `owner` holds on `ino` (`flush`, `flock` release).
    /// Without a transaction when this client never locked `ino` (see
    /// [`LockTracker`]). Should the unlock fail, it is owed: retried until
    /// it lands (see `LockTracker::debts`), and the error returned.
    pub async fn unlock_owner(&self, caller: &Caller, ino: u64, owner: u64) -> FsResult<()> {
        let tracker = self.lock_tracker();
        // Hold the debts while unlocking only when this pair is owed, so
        // that a payment of this very debt cannot race this unlock.
        let mut debts = if tracker.owes(ino, owner) {
            Some(tracker.debts.lock().await)
        } else {
            None
        };
        let result = self.unlock_owner_once(caller, ino, owner).await;
        let owed = match &result {
            Ok(()) | Err(FsError::Fenced) => false,
            Err(e) => {
                tracing::warn!(error = %e, ino, owner, "unlock failed; retrying in the background");
                true
            }
        };
        if owed && debts.is_none() {
            debts = Some(tracker.debts.lock().await);
        }
        if let Some(debts) = debts.as_deref_mut() {
            debts.retain(|&d| d != (ino, owner));
            if owed {
                debts.push((ino, owner));
            }
            tracker.mirror(debts);
        }
        result
    }

    /// Retry every owed unlock once (the session's housekeeping calls this
    /// each period). Returns how many are still owed.
    pub async fn pay_unlock_debts(&self) -> usize {
        let tracker = self.lock_tracker();
        if tracker.owed.lock().is_empty() {
            return 0;
        }
        let mut debts = tracker.debts.lock().await;
        let mut left = Vec::new();
        for &(ino, owner) in debts.iter() {
            match self.unlock_owner_once(&Caller::root(), ino, owner).await {
                Ok(()) | Err(FsError::Fenced) => {}
                Err(_) => left.push((ino, owner)),
            }
        }
        *debts = left;
        tracker.mirror(&debts);
        debts.len()
    }

    async fn unlock_owner_once(&self, caller: &Caller, ino: u64, owner: u64) -> FsResult<()> {
        if crate::planted::active(crate::planted::Bug::UnlockInMemoryOnly) {
            return Ok(());
        }
        let Some(seen) = self.lock_tracker().generation(ino) else {
            return if self.is_fenced() {
                Err(FsError::Fenced)
            } else {
                Ok(())
            };
        };
        // Lock state need not survive power loss: every holder and waiter
        // is a process, and a power loss ends them all (on FoundationDB,
        // which is durable anyway, this changes nothing). A lost grant or
        // unlock leaves at worst a dead client's lock, cleared when its
        // session expires, as after a crash; a durable commit that follows
        // (data written under the lock) makes the lock commit durable too.
        let involved = self
            .run_fenced_capped(caller, LOCK_BACKOFF_CAP, |txn, ctx| async move {
                txn.relax_durability();
                apply_unlock_owner(&txn, &ctx, ino, owner).await
            })
            .await?;
        if !involved {
            self.lock_tracker().forget(ino, seen);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::LockTracker;

    /// An unlock may forget an inode only if no `setlk` started, ran or
    /// ended on it since the unlock read its generation.
    #[test]
    fn the_tracker_forgets_only_what_no_setlk_touched() {
        let tracker = LockTracker::default();
        drop(tracker.enter(7));
        let seen = tracker.generation(7).expect("tracked");
        let running = tracker.enter(7);
        tracker.forget(7, seen);
        assert_eq!(tracker.len(), 1, "a setlk in flight");
        drop(running);
        tracker.forget(7, seen);
        assert_eq!(tracker.len(), 1, "a setlk ended after the unlock began");
        let seen = tracker.generation(7).expect("tracked");
        tracker.forget(7, seen);
        assert!(tracker.is_empty());
    }

    /// Two unlocks in flight: the first forgets the inode, a new `setlk`
    /// tracks it again and ends; the second unlock's stale generation must
    /// not match the new entry's.
    #[test]
    fn a_forgotten_inode_tracked_again_never_repeats_a_generation() {
        let tracker = LockTracker::default();
        drop(tracker.enter(7));
        let first = tracker.generation(7).expect("tracked");
        let second = tracker.generation(7).expect("tracked");
        tracker.forget(7, first);
        assert!(tracker.is_empty());
        drop(tracker.enter(7));
        tracker.forget(7, second);
        assert_eq!(tracker.len(), 1, "the new setlk's lock was forgotten");
    }
}
