//! Where the driver reads the time

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// A source of "now" for a driver
///
/// The driver reads the clock once per wake-up and hands that instant to the core. Tests can
/// supply their own clock to run a session on shifted or scaled time (quinn's
/// `Runtime::now`: "allows simulating the flow of time for testing"). The driver sleeps for
/// `deadline - now()` of tokio's timer, so a clock needs no relation to tokio's.
pub trait Clock: Send + Sync + 'static {
    /// The current instant
    fn now(&self) -> Instant;
}

/// Tokio's clock: the real monotonic clock, or tokio's paused test clock when paused
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A shared, clonable clock handle
#[derive(Clone)]
pub struct SharedClock(pub Arc<dyn Clock>);

impl SharedClock {
    /// Wraps a clock
    pub fn new(clock: impl Clock) -> Self {
        Self(Arc::new(clock))
    }

    /// The current instant of the wrapped clock
    pub fn now(&self) -> Instant {
        self.0.now()
    }
}

impl Default for SharedClock {
    fn default() -> Self {
        Self::new(TokioClock)
    }
}

impl fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedClock")
    }
}
