//! Injected time. Core logic reads time only through a [`Clock`], so the
//! simulator can drive it and tests can step it by hand.
//!
//! [`TokioClock`] is the production clock: monotonic time from
//! `tokio::time::Instant` (virtual under madsim) and wall time from the
//! system. [`ManualClock`] only moves when told to.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

/// A source of time.
#[async_trait]
pub trait Clock: Send + Sync + Debug {
    /// Monotonic time since an arbitrary origin fixed for this clock.
    fn monotonic(&self) -> Duration;
    /// Wall-clock time in nanoseconds since the Unix epoch, for timestamps
    /// shown to people (file times). Never compared across hosts.
    fn wall_ns(&self) -> i64;
    /// Sleep for `duration` of this clock's time.
    async fn sleep(&self, duration: Duration);
}

/// The production clock (and the simulated one under madsim, whose tokio
/// shim virtualises `Instant` and `sleep`).
#[derive(Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    // The clock module is where time is read; under madsim this Instant is
    // the simulator's virtual one.
    #[allow(clippy::disallowed_methods)]
    pub fn new() -> Arc<Self> {
        Arc::new(TokioClock {
            origin: tokio::time::Instant::now(),
        })
    }
}

#[async_trait]
impl Clock for TokioClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall_ns(&self) -> i64 {
        #[allow(clippy::disallowed_methods)] // the one place wall time is read
        let now = std::time::SystemTime::now();
        match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A clock that moves only when [`ManualClock::advance`] is called, or when
/// someone sleeps on it: a sleep jumps time forward by its duration and
/// returns at once, so tests that back off or time out never wait for real.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Duration>,
    wall_origin_ns: i64,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ManualClock {
            now: Mutex::new(Duration::ZERO),
            wall_origin_ns: 1_700_000_000_000_000_000,
        })
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        *self.now.lock()
    }

    fn wall_ns(&self) -> i64 {
        let elapsed = i64::try_from(self.monotonic().as_nanos()).unwrap_or(i64::MAX);
        self.wall_origin_ns.saturating_add(elapsed)
    }

    async fn sleep(&self, duration: Duration) {
        self.advance(duration);
        tokio::task::yield_now().await;
    }
}
