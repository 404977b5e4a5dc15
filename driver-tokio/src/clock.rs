//! Where the tokio driver reads the time

use std::time::Instant;

pub use meshrtc::clock::{Clock, SharedClock};

/// Tokio's clock: the real monotonic clock, or tokio's paused test clock when paused
///
/// The driver sleeps for `deadline - now()` on tokio's timer, so another [`Clock`] needs no
/// relation to tokio's.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}
