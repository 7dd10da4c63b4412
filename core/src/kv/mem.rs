//! `mem`: an in-memory multi-version store with real conflict detection.
//!
//! It keeps every key's recent versions, so each transaction reads exactly
//! the state at its read version, and a log of each recent commit's write
//! conflict ranges, against which a committing transaction's read conflict
//! ranges are checked — FoundationDB's resolver in miniature. History older
//! than the five-second window (plus a margin) is folded away; a transaction
//! whose read version falls before the kept history gets
//! `TransactionTooOld`. Everything is ordered (`BTreeMap`, `VecDeque`) and
//! timed by the injected clock, so runs are deterministic. Faults are
//! injected by wrapping it (see [`super::fault`]).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::backend::{
    apply_add, Backend, BackendTxn, CommitRequest, Mutation, Waiters, WatchRequest,
};
use super::{KeyRange, KeyValue, KvError, KvResult, Version};
use crate::clock::Clock;
use crate::limits::TRANSACTION_AGE_MAX;

/// History is kept this much longer than a transaction may live.
const HISTORY_MARGIN: Duration = Duration::from_secs(1);

/// One key's versions, ascending; `None` is a deletion.
type History = Vec<(Version, Option<Vec<u8>>)>;

/// The in-memory backend. Clones share the same store.
#[derive(Debug, Clone)]
pub struct MemBackend {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct State {
    version: Version,
    /// Per key, its versions ascending; `None` is a deletion.
    data: BTreeMap<Vec<u8>, History>,
    /// Recent commits: version, commit time, write conflict ranges.
    log: VecDeque<(Version, Duration, Vec<KeyRange>)>,
    /// Reads at versions below this are no longer exact.
    horizon: Version,
    /// Keys written, in version order, whose history awaits folding.
    to_fold: VecDeque<(Version, Vec<u8>)>,
    watches: BTreeMap<Vec<u8>, Waiters>,
}

impl MemBackend {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemBackend {
            state: Arc::new(Mutex::new(State::default())),
            clock,
        }
    }

    /// Every current key and value (for tests and checkers).
    pub fn dump(&self) -> Vec<KeyValue> {
        let state = self.state.lock();
        let version = state.version;
        state
            .data
            .iter()
            .filter_map(|(k, h)| value_at(h, version).map(|v| (k.clone(), v.to_vec())))
            .collect()
    }

    /// The latest commit version.
    pub fn version(&self) -> Version {
        self.state.lock().version
    }
}

#[async_trait]
impl Backend for MemBackend {
    fn name(&self) -> &'static str {
        "mem"
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn begin(&self) -> KvResult<Box<dyn BackendTxn>> {
        let read_version = self.state.lock().version;
        Ok(Box::new(MemTxn {
            backend: self.clone(),
            read_version,
            started: self.clock.monotonic(),
        }))
    }
}

#[derive(Debug)]
struct MemTxn {
    backend: MemBackend,
    read_version: Version,
    /// When the read version was taken: a commit arriving more than the age
    /// limit later is refused, as FoundationDB's resolvers refuse one (this
    /// is what bounds how late a timed-out commit can still land).
    started: std::time::Duration,
}

fn value_at(history: &[(Version, Option<Vec<u8>>)], version: Version) -> Option<&[u8]> {
    let newer = history.partition_point(|(v, _)| *v <= version);
    newer.checked_sub(1).and_then(|i| history[i].1.as_deref())
}

impl MemTxn {
    fn check_horizon(&self, state: &State) -> KvResult<()> {
        if self.read_version < state.horizon {
            return Err(KvError::TransactionTooOld);
        }
        Ok(())
    }
}

#[async_trait]
impl BackendTxn for MemTxn {
    fn read_version(&self) -> Version {
        self.read_version
    }

    async fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        let state = self.backend.state.lock();
        self.check_horizon(&state)?;
        Ok(state
            .data
            .get(key)
            .and_then(|h| value_at(h, self.read_version))
            .map(<[u8]>::to_vec))
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> KvResult<(Vec<KeyValue>, bool)> {
        let state = self.backend.state.lock();
        self.check_horizon(&state)?;
        if begin >= end {
            return Ok((Vec::new(), false));
        }
        let range = state
            .data
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
        let live = |(k, h): (&Vec<u8>, &History)| {
            value_at(h, self.read_version).map(|v| (k.clone(), v.to_vec()))
        };
        let mut out = Vec::new();
        let mut more = false;
        let mut push = |kv: KeyValue| {
            if limit != 0 && out.len() == limit {
                more = true;
                return false;
            }
            out.push(kv);
            true
        };
        if reverse {
            for kv in range.rev().filter_map(live) {
                if !push(kv) {
                    break;
                }
            }
        } else {
            for kv in range.filter_map(live) {
                if !push(kv) {
                    break;
                }
            }
        }
        Ok((out, more))
    }

    async fn commit(&self, request: CommitRequest) -> KvResult<Version> {
        let now = self.backend.clock.monotonic();
        let mut state = self.backend.state.lock();
        self.check_horizon(&state)?;
        if now.saturating_sub(self.started) > TRANSACTION_AGE_MAX && !request.is_read_only() {
            return Err(KvError::TransactionTooOld);
        }
        if request.is_read_only() {
            arm_watches(&mut state, request.watches);
            return Ok(self.read_version);
        }
        let conflicted = state
            .log
            .iter()
            .rev()
            .take_while(|(v, _, _)| *v > self.read_version)
            .any(|(_, _, writes)| overlaps(writes, &request.read_conflicts));
        if conflicted {
            return Err(KvError::NotCommitted);
        }
        state.version += 1;
        let version = state.version;
        let mut touched = Vec::new();
        for mutation in request.mutations {
            apply(&mut state, version, mutation, &mut touched);
        }
        state.log.push_back((version, now, request.write_conflicts));
        fire_watches(&mut state, &touched);
        arm_watches(&mut state, request.watches);
        fold_history(&mut state, now, touched);
        Ok(version)
    }
}

/// True if any range of `a` intersects any range of `b` (both sorted).
fn overlaps(a: &[KeyRange], b: &[KeyRange]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].intersects(&b[j]) {
            return true;
        }
        if a[i].end <= b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

fn write(state: &mut State, version: Version, key: Vec<u8>, value: Option<Vec<u8>>) {
    let history = state.data.entry(key).or_default();
    match history.last_mut() {
        Some((v, slot)) if *v == version => *slot = value,
        _ => history.push((version, value)),
    }
}

fn apply(state: &mut State, version: Version, mutation: Mutation, touched: &mut Vec<Vec<u8>>) {
    match mutation {
        Mutation::Set { key, value } => {
            touched.push(key.clone());
            write(state, version, key, Some(value));
        }
        Mutation::Clear { key } => {
            if value_at_latest(state, &key).is_some() {
                touched.push(key.clone());
                write(state, version, key, None);
            }
        }
        Mutation::ClearRange { begin, end } => {
            let live: Vec<Vec<u8>> = state
                .data
                .range::<[u8], _>((Bound::Included(&begin[..]), Bound::Excluded(&end[..])))
                .filter(|(_, h)| h.last().is_some_and(|(_, v)| v.is_some()))
                .map(|(k, _)| k.clone())
                .collect();
            for key in live {
                touched.push(key.clone());
                write(state, version, key, None);
            }
        }
        Mutation::Add { key, delta } => {
            let sum = apply_add(value_at_latest(state, &key), delta).to_vec();
            touched.push(key.clone());
            write(state, version, key, Some(sum));
        }
    }
}

fn value_at_latest<'a>(state: &'a State, key: &[u8]) -> Option<&'a [u8]> {
    state
        .data
        .get(key)
        .and_then(|h| h.last())
        .and_then(|(_, v)| v.as_deref())
}

fn fire_watches(state: &mut State, touched: &[Vec<u8>]) {
    for key in touched {
        let Some(waiting) = state.watches.remove(key) else {
            continue;
        };
        let current = value_at_latest(state, key).map(<[u8]>::to_vec);
        let still: Vec<_> = waiting
            .into_iter()
            .filter_map(|(expected, fired)| {
                if fired.is_closed() {
                    None
                } else if expected != current {
                    let _ = fired.send(Ok(()));
                    None
                } else {
                    Some((expected, fired))
                }
            })
            .collect();
        if !still.is_empty() {
            state.watches.insert(key.clone(), still);
        }
    }
}

fn arm_watches(state: &mut State, watches: Vec<WatchRequest>) {
    for WatchRequest {
        key,
        expected,
        fired,
    } in watches
    {
        if value_at_latest(state, &key) != expected.as_deref() {
            let _ = fired.send(Ok(()));
        } else {
            state
                .watches
                .entry(key)
                .or_default()
                .push((expected, fired));
        }
    }
}

/// Drop history no transaction may read any more: conflict-log entries and
/// key versions older than the newest commit made before the window.
fn fold_history(state: &mut State, now: Duration, touched: Vec<Vec<u8>>) {
    let version = state.version;
    state
        .to_fold
        .extend(touched.into_iter().map(|key| (version, key)));
    let window = TRANSACTION_AGE_MAX + HISTORY_MARGIN;
    while let Some((v, at, _)) = state.log.front() {
        if now.saturating_sub(*at) <= window || state.log.len() == 1 {
            break;
        }
        // Commits up to `v` are older than any live transaction's read
        // version could be: a transaction reading below `v` is too old.
        state.horizon = *v;
        state.log.pop_front();
    }
    let horizon = state.horizon;
    while state.to_fold.front().is_some_and(|(v, _)| *v <= horizon) {
        let Some((_, key)) = state.to_fold.pop_front() else {
            break;
        };
        let Some(history) = state.data.get_mut(&key) else {
            continue;
        };
        let keep_from = history
            .partition_point(|(v, _)| *v <= horizon)
            .saturating_sub(1);
        history.drain(..keep_from);
        if history.len() == 1 && history[0].1.is_none() {
            state.data.remove(&key);
        }
    }
}
