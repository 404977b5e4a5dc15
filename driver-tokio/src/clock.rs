//! Where the tokio driver reads the time

use std::time::Instant;

use meshrtc::clock::Clock;

/// tokio's clock: follows `tokio::time::pause` and `advance` in tests
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}
