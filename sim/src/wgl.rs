//! A Wing–Gong–Lowe linearizability checker.
//!
//! A history is a set of operations, each with the logical time it was
//! invoked, the time it returned (`None`: it never did, or it failed in a
//! way that leaves its effect unknown) and its result. The history is
//! linearizable if some order of the operations respects real time (an
//! operation that returned before another was invoked comes first), is
//! legal for the sequential [`Spec`], and includes every operation that
//! returned; operations with unknown outcome may be included anywhere after
//! their invocation, or left out.
//!
//! The search linearizes, one at a time, any operation invoked before the
//! earliest return among the operations still left, and backtracks; states
//! already explored (set of linearized operations, spec state) are cached,
//! which keeps the search polynomial on the mostly-sequential histories a
//! lock produces. Histories are checked per object (P-compositionality):
//! the caller partitions them, e.g. per inode.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Spec: Clone + Eq + Hash + Debug {
    type Op: Debug;
    type Ret: Debug;
    /// The state after `op` returned `ret` (`None`: outcome unknown), or
    /// `None` if that is not a legal step from this state.
    fn step(&self, op: &Self::Op, ret: Option<&Self::Ret>) -> Option<Self>;
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation<Op, Ret> {
    pub call: u64,
    /// When it returned; `None` if its outcome is unknown.
    pub returned: Option<u64>,
    pub op: Op,
    pub ret: Option<Ret>,
}

/// States the search may cache before giving up as inconclusive.
pub const STATES_MAX: usize = 2_000_000;

/// Whether `ops`, run against `init`, are linearizable.
pub fn linearizable<S: Spec>(init: &S, ops: &[Operation<S::Op, S::Ret>]) -> bool {
    check(init, ops, usize::MAX).expect("unbounded search always decides")
}

/// [`linearizable`] with a bound on the states explored: `None` when the
/// bound was hit before an answer (many operations of unknown outcome can
/// make the search exponential).
pub fn check<S: Spec>(
    init: &S,
    ops: &[Operation<S::Op, S::Ret>],
    states_max: usize,
) -> Option<bool> {
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| ops[i].call);
    let ops: Vec<&Operation<S::Op, S::Ret>> = order.iter().map(|&i| &ops[i]).collect();
    let completed = ops.iter().filter(|o| o.returned.is_some()).count();
    let mut search = Search {
        ops: &ops,
        done: vec![false; ops.len()],
        cache: HashSet::new(),
        states_max,
        gave_up: false,
    };
    let found = search.run(init.clone(), completed);
    if found {
        Some(true)
    } else if search.gave_up {
        None
    } else {
        Some(false)
    }
}

/// The earliest logical time by which `ops` stop being linearizable: the
/// history cut there (later calls dropped, later returns unknown) already
/// fails. `None` if the whole history is linearizable.
pub fn first_violation<S: Spec>(init: &S, ops: &[Operation<S::Op, S::Ret>]) -> Option<u64>
where
    S::Op: Clone,
    S::Ret: Clone,
{
    let cut = |t: u64| -> Vec<Operation<S::Op, S::Ret>> {
        ops.iter()
            .filter(|o| o.call <= t)
            .map(|o| {
                let mut o = o.clone();
                if o.returned.is_some_and(|r| r > t) {
                    o.returned = None;
                    o.ret = None;
                }
                o
            })
            .collect()
    };
    let mut times: Vec<u64> = ops
        .iter()
        .flat_map(|o| std::iter::once(o.call).chain(o.returned))
        .collect();
    times.sort_unstable();
    times.dedup();
    if check(init, ops, STATES_MAX) != Some(false) {
        return None;
    }
    // Failing is monotone in the cut: find the first failing time.
    let (mut lo, mut hi) = (0, times.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if check(init, &cut(times[mid]), STATES_MAX) != Some(false) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(times[lo])
}

struct Search<'a, S: Spec> {
    ops: &'a [&'a Operation<S::Op, S::Ret>],
    done: Vec<bool>,
    cache: HashSet<(Vec<u64>, S)>,
    states_max: usize,
    gave_up: bool,
}

impl<S: Spec> Search<'_, S> {
    fn bits(&self) -> Vec<u64> {
        let mut bits = vec![0u64; self.done.len().div_ceil(64)];
        for (i, &d) in self.done.iter().enumerate() {
            if d {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    fn run(&mut self, state: S, remaining: usize) -> bool {
        if remaining == 0 {
            return true;
        }
        // Every operation linearized next must have been invoked before the
        // earliest return among those left.
        let horizon = self
            .ops
            .iter()
            .zip(&self.done)
            .filter(|(_, &d)| !d)
            .filter_map(|(o, _)| o.returned)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            if op.call > horizon {
                break;
            }
            if self.done[i] {
                continue;
            }
            let Some(next) = state.step(&op.op, op.ret.as_ref()) else {
                continue;
            };
            if self.cache.len() >= self.states_max {
                self.gave_up = true;
                return false;
            }
            self.done[i] = true;
            let fresh = self.cache.insert((self.bits(), next.clone()));
            let left = remaining - usize::from(op.returned.is_some());
            if fresh && self.run(next, left) {
                return true;
            }
            self.done[i] = false;
        }
        false
    }
}

/// The lock table of one inode: who holds its exclusive lock.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LockTable {
    pub holder: Option<(String, u64)>,
}

/// Operations on one inode's exclusive lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOp {
    /// (client, owner) takes the lock (waiting as long as it must).
    Lock(String, u64),
    /// (client, owner) releases it.
    Unlock(String, u64),
    /// The client is evicted: whatever it held is released.
    Evict(String),
}

impl Spec for LockTable {
    type Op = LockOp;
    type Ret = ();

    fn step(&self, op: &LockOp, _ret: Option<&()>) -> Option<LockTable> {
        match op {
            // Free, or already held by this owner (POSIX: relocking is fine).
            LockOp::Lock(client, owner) => {
                let me = (client.clone(), *owner);
                let free = self.holder.is_none() || self.holder.as_ref() == Some(&me);
                free.then_some(LockTable { holder: Some(me) })
            }
            // Unlocking what one does not hold succeeds and changes nothing.
            LockOp::Unlock(client, owner) => {
                Some(if self.holder.as_ref() == Some(&(client.clone(), *owner)) {
                    LockTable::default()
                } else {
                    self.clone()
                })
            }
            LockOp::Evict(client) => Some(match &self.holder {
                Some((holder, _)) if holder == client => LockTable::default(),
                _ => self.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, returned: Option<u64>, op: LockOp) -> Operation<LockOp, ()> {
        Operation {
            call,
            returned,
            op,
            ret: returned.map(|_| ()),
        }
    }

    fn lock(c: &str) -> LockOp {
        LockOp::Lock(c.into(), 1)
    }
    fn unlock(c: &str) -> LockOp {
        LockOp::Unlock(c.into(), 1)
    }

    #[test]
    fn sequential_locking_is_linearizable() {
        let h = [
            op(1, Some(2), lock("a")),
            op(3, Some(4), unlock("a")),
            op(5, Some(6), lock("b")),
        ];
        assert!(linearizable(&LockTable::default(), &h));
    }

    #[test]
    fn two_holders_at_once_are_not() {
        let h = [op(1, Some(2), lock("a")), op(3, Some(4), lock("b"))];
        assert!(!linearizable(&LockTable::default(), &h));
    }

    #[test]
    fn overlapping_calls_may_reorder() {
        // b's lock overlaps a's unlock: fine if the unlock comes first.
        let h = [
            op(1, Some(2), lock("a")),
            op(3, Some(6), unlock("a")),
            op(4, Some(5), lock("b")),
        ];
        assert!(linearizable(&LockTable::default(), &h));
    }

    #[test]
    fn eviction_frees_the_lock_and_unknown_outcomes_may_vanish() {
        let h = [
            op(1, Some(2), lock("a")),
            op(3, Some(4), LockOp::Evict("a".into())),
            op(5, Some(6), lock("b")),
            // a's unlock after its eviction: its outcome is unknown.
            op(7, None, unlock("a")),
        ];
        assert!(linearizable(&LockTable::default(), &h));
        // But b taking the lock while a still holds it is not.
        let bad = [
            op(1, Some(2), lock("a")),
            op(3, Some(4), lock("b")),
            op(5, Some(6), LockOp::Evict("a".into())),
        ];
        assert!(!linearizable(&LockTable::default(), &bad));
    }

    #[test]
    fn a_pending_lock_may_have_taken_effect() {
        let h = [op(1, None, lock("a")), op(2, Some(3), lock("b"))];
        assert!(linearizable(&LockTable::default(), &h));
        let h = [
            op(1, None, lock("a")),
            op(2, Some(3), unlock("a")),
            op(4, Some(5), lock("b")),
        ];
        assert!(linearizable(&LockTable::default(), &h));
    }
}
