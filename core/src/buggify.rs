//! BUGGIFY, two-level as in FoundationDB: under the simulator each point
//! (a source location) is enabled for the whole run with probability 0.25
//! the first time it is reached, and an enabled point fires with
//! probability 0.25 each time. Points make rare paths common — an extra
//! retry, a delayed commit, a missed wake-up — without changing what a
//! correct implementation returns.
//!
//! Normal builds compile every point to `false`. Randomness comes from
//! madsim's seeded generator, so a run stays reproducible from its seed.

/// Whether this point fires now (always false outside the simulator).
#[macro_export]
macro_rules! buggify {
    () => {
        $crate::buggify::fire(concat!(file!(), ":", line!()))
    };
}

#[cfg(madsim)]
mod sim {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use parking_lot::Mutex;

    static ENABLED: AtomicBool = AtomicBool::new(false);
    static FIRED: AtomicU64 = AtomicU64::new(0);
    static POINTS: Mutex<BTreeMap<&'static str, bool>> = Mutex::new(BTreeMap::new());

    /// Start a run: forget which points were enabled, and turn BUGGIFY on
    /// or off for it.
    pub fn reset(enabled: bool) {
        POINTS.lock().clear();
        FIRED.store(0, Ordering::Relaxed);
        ENABLED.store(enabled, Ordering::Relaxed);
    }

    /// How many times points fired in this run.
    pub fn fired() -> u64 {
        FIRED.load(Ordering::Relaxed)
    }

    pub fn fire(point: &'static str) -> bool {
        if !ENABLED.load(Ordering::Relaxed) {
            return false;
        }
        let enabled = *POINTS
            .lock()
            .entry(point)
            .or_insert_with(|| madsim::rand::random::<f64>() < 0.25);
        let fired = enabled && madsim::rand::random::<f64>() < 0.25;
        if fired {
            FIRED.fetch_add(1, Ordering::Relaxed);
        }
        fired
    }
}

#[cfg(madsim)]
pub use sim::{fire, fired, reset};

#[cfg(not(madsim))]
#[inline(always)]
pub fn fire(_point: &'static str) -> bool {
    false
}
