//! Where the blocking driver reads the time

use std::time::Instant;

use meshrtc::clock::Clock;

/// The operating system's monotonic clock
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
