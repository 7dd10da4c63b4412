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

/// Whether `ops`, run against `init`, are linearizable.
pub fn linearizable<S: Spec>(init: &S, ops: &[Operation<S::Op, S::Ret>]) -> bool {
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| ops[i].call);
    let ops: Vec<&Operation<S::Op, S::Ret>> = order.iter().map(|&i| &ops[i]).collect();
    let completed = ops.iter().filter(|o| o.returned.is_some()).count();
    let mut search = Search {
        ops: &ops,
        done: vec![false; ops.len()],
        cache: HashSet::new(),
    };
    search.run(init.clone(), completed)
}

struct Search<'a, S: Spec> {
    ops: &'a [&'a Operation<S::Op, S::Ret>],
    done: Vec<bool>,
    cache: HashSet<(Vec<u64>, S)>,
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
            LockOp::Lock(client, owner) => self.holder.is_none().then(|| LockTable {
                holder: Some((client.clone(), *owner)),
            }),
            LockOp::Unlock(client, owner) => (self.holder.as_ref()
                == Some(&(client.clone(), *owner)))
            .then(LockTable::default),
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
        // But an acknowledged unlock by the evicted a is not.
        let mut bad = h.to_vec();
        bad[3] = op(7, Some(8), unlock("a"));
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
