//! Where the driver reads the time

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// A source of "now" for the core thread
///
/// The core thread reads the clock once per wake-up and hands that instant to the core, so
/// tests can run a session on shifted or scaled time (quinn's `Runtime::now`). The socket's
/// read timeout is `deadline - now()` in real time, so a clock should advance at roughly
/// real speed.
pub trait Clock: Send + Sync + 'static {
    /// The current instant
    fn now(&self) -> Instant;
}

/// The operating system's monotonic clock
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
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
        Self::new(SystemClock)
    }
}

impl fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedClock")
    }
}
