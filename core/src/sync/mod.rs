//! Playout timing: RTP time unwrapping, adaptive jitter buffering, clock-drift estimation
//! and audio/video sync
//!
//! Everything here is fed only from timestamped inputs and never reads a clock.

pub(crate) mod delay;
pub mod drift;
pub mod jitter;
pub mod time;

pub use drift::{DriftConfig, DriftEstimate, DriftEstimator, DriftMethod};
pub use jitter::{AudioDecode, AudioJitterBuffer, JitterConfig, JitterStats, PlayoutChunk};
pub use time::{MediaTime, SenderWallclock, SeqUnwrapper, TimestampUnwrapper};

/// A standard normal sample (Box-Muller), for tests
#[cfg(test)]
pub(crate) fn gaussian(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
