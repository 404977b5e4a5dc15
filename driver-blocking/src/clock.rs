//! Where the blocking driver reads the time

use std::time::Instant;

pub use meshrtc::clock::{Clock, SharedClock};

/// The operating system's monotonic clock
///
/// The socket's read timeout is `deadline - now()` in real time, so another [`Clock`] should
/// advance at roughly real speed.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
