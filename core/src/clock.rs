//! The drivers' source of "now"
//!
//! The core itself never reads a clock: time arrives in its inputs. A driver reads a
//! [`Clock`] once per wake-up and hands that instant to the core. This trait (and its shared
//! handle) lives here so that every driver uses the same one; each driver supplies its own
//! implementation (the tokio driver's follows tokio's test clock, the blocking driver's the
//! operating system's). Tests can supply their own to run a session on shifted or scaled
//! time (quinn's `Runtime::now`: "allows simulating the flow of time for testing").

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// A source of "now" for a driver
pub trait Clock: Send + Sync + 'static {
    /// The current instant
    fn now(&self) -> Instant;
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

impl fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedClock")
    }
}
