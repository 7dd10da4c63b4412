//! What happened in a run: every operation a client invoked, in the order
//! of a logical clock, and how it ended. Checkers read it; its hash
//! fingerprints the run (the same seed must give the same hash).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// An operation a simulated client performs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Take the exclusive lock of `ino` for `owner` (waiting).
    Lock {
        ino: u64,
        owner: u64,
    },
    Unlock {
        ino: u64,
        owner: u64,
    },
    /// `client` is evicted (by expiry or by the nemesis).
    Evict {
        client: String,
    },
    /// Append `line` to `ino`; the holder had read `seen` lines before.
    Append {
        ino: u64,
        line: String,
        seen: usize,
    },
    /// Take an exclusive byte-range lock `[start, end)` of `ino` for `owner`.
    LockRange {
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
    },
    /// Under a range lock: region `region` of `ino` held `seen`; write `seen + 1`.
    Increment {
        ino: u64,
        region: u64,
        seen: u64,
    },
    /// One operation of the model workload on filesystem `fs`.
    Model {
        fs: String,
        op: String,
    },
    /// Rename a file between directories.
    Rename {
        from: (u64, String),
        to: (u64, String),
        exchange: bool,
    },
    /// Mount (a new client id).
    Mount,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// Failed with this errno; it may still have taken effect (an earlier
    /// attempt's commit can be ambiguous), except where a checker knows
    /// better.
    Err(i32),
    /// Never returned (the client was killed, or the run ended).
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub client: String,
    pub op: Op,
    pub call: u64,
    pub returned: Option<u64>,
    pub outcome: Outcome,
}

/// The shared record of a run.
#[derive(Debug, Default)]
pub struct History {
    clock: AtomicU64,
    events: Mutex<Vec<Event>>,
    /// Violations found while the run was going (e.g. by scans).
    violations: Mutex<Vec<String>>,
}

impl History {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Record an invocation; returns its index for [`History::complete`].
    pub fn invoke(&self, client: &str, op: Op) -> usize {
        let call = self.tick();
        let mut events = self.events.lock();
        events.push(Event {
            client: client.to_string(),
            op,
            call,
            returned: None,
            outcome: Outcome::Pending,
        });
        events.len() - 1
    }

    pub fn complete(&self, index: usize, outcome: Outcome) {
        let at = self.tick();
        let mut events = self.events.lock();
        events[index].returned = Some(at);
        events[index].outcome = outcome;
    }

    pub fn violation(&self, what: String) {
        self.violations.lock().push(what);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().clone()
    }

    /// The current logical time.
    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// A fingerprint of everything recorded.
    pub fn hash(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.events.lock().hash(&mut hasher);
        hasher.finish()
    }
}
