//! Planted bugs: switches the simulator flips to prove its checkers catch
//! real mistakes. Each switch turns off one safety mechanism; with it on,
//! a small fixed batch of seeds must report a violation (`sim/tests`).
//! Normal builds compile every switch to `false`.

/// A known bug that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// Transactions skip the read of the client's attached key (no fencing).
    SkipFence,
    /// Unlock forgets the lock in memory and never removes its record.
    UnlockInMemoryOnly,
    /// Rename removes the old entry and adds the new one in two transactions.
    RenameInTwoTransactions,
    /// A retry after `commit_unknown_result` ignores the idempotency marker.
    SkipIdempotency,
    /// Rename does not check the destination's ancestors.
    SkipAncestorCheck,
    /// Byte ranges conflict only when they start at the same offset (a
    /// partial overlap is missed).
    PartialOverlapMissed,
    /// Queue fairness makes a holder wait for waiters that wait for it
    /// (the deadlock a review found: `ops::lock::WaitGraph` ignored).
    FairnessIgnoresWaitGraph,
    /// Expiry sweeps judge every client by the judge's own expiry, not the
    /// longer one a client published (`session::ExpiryTracker`).
    JudgeByOwnExpiry,
}

impl Bug {
    pub const ALL: [Bug; 8] = [
        Bug::SkipFence,
        Bug::UnlockInMemoryOnly,
        Bug::RenameInTwoTransactions,
        Bug::SkipIdempotency,
        Bug::SkipAncestorCheck,
        Bug::PartialOverlapMissed,
        Bug::FairnessIgnoresWaitGraph,
        Bug::JudgeByOwnExpiry,
    ];
}

#[cfg(madsim)]
mod sim {
    use parking_lot::Mutex;

    use super::Bug;

    static PLANTED: Mutex<Option<Bug>> = Mutex::new(None);

    pub fn plant(bug: Option<Bug>) {
        *PLANTED.lock() = bug;
    }

    pub fn active(bug: Bug) -> bool {
        *PLANTED.lock() == Some(bug)
    }
}

#[cfg(madsim)]
pub use sim::{active, plant};

#[cfg(not(madsim))]
#[inline(always)]
pub fn active(_bug: Bug) -> bool {
    false
}
