//! The three clocks, kept apart: local time, media time and the sender's wall clock

use std::time::{Duration, Instant};

/// A media timestamp unwrapped to 64 bits, with its clock rate (e.g. 48 000 for Opus)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaTime {
    /// Ticks of the media clock since an arbitrary origin (may be negative after unwrapping
    /// backwards across the first wrap)
    pub ticks: i64,
    /// Ticks per second
    pub rate: u32,
}

impl MediaTime {
    /// A media time of `ticks` at `rate` ticks per second
    pub fn new(ticks: i64, rate: u32) -> Self {
        Self { ticks, rate }
    }

    /// The media time in seconds since its origin
    pub fn as_secs_f64(self) -> f64 {
        self.ticks as f64 / self.rate as f64
    }

    /// Signed seconds from `earlier` to `self` (same clock rate expected)
    pub fn secs_since(self, earlier: MediaTime) -> f64 {
        debug_assert_eq!(self.rate, earlier.rate);
        (self.ticks - earlier.ticks) as f64 / self.rate as f64
    }
}

/// A time on the sender's wall clock, from an RTCP sender report (NTP), in seconds
///
/// Only differences of these are meaningful: str0m anchors NTP to its own process clock.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct SenderWallclock(pub f64);

impl SenderWallclock {
    /// Seconds from `earlier` to `self`
    pub fn secs_since(self, earlier: SenderWallclock) -> f64 {
        self.0 - earlier.0
    }
}

/// Signed seconds from `earlier` to `later` on the local clock
pub fn local_secs(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64()
    } else {
        -(earlier - later).as_secs_f64()
    }
}

/// `base` moved by a signed number of seconds, saturating at `base` for absurd values
pub fn local_offset(base: Instant, secs: f64) -> Instant {
    if !secs.is_finite() {
        return base;
    }
    let d = Duration::from_secs_f64(secs.abs().min(1.0e6));
    if secs >= 0.0 {
        base + d
    } else {
        base.checked_sub(d).unwrap_or(base)
    }
}

/// Extends 16-bit RTP sequence numbers to 64 bits, across wraps in both directions
///
/// Each value is placed as close as possible to the previous one, so reordering across a
/// wrap (65535, 0, 65534, 1) unwraps to (65535, 65536, 65534, 65537).
#[derive(Debug, Clone, Default)]
pub struct SeqUnwrapper {
    last: Option<i64>,
}

impl SeqUnwrapper {
    /// Unwraps one sequence number
    pub fn unwrap(&mut self, seq: u16) -> i64 {
        let ext = match self.last {
            None => seq as i64,
            Some(last) => {
                let delta = seq.wrapping_sub(last as u16) as i16 as i64;
                last + delta
            }
        };
        // Only move the reference forward, so a late packet does not drag it back.
        self.last = Some(self.last.map_or(ext, |l| l.max(ext)));
        ext
    }
}

/// Extends 32-bit RTP timestamps to 64 bits, across wraps in both directions
#[derive(Debug, Clone, Default)]
pub struct TimestampUnwrapper {
    last: Option<i64>,
}

impl TimestampUnwrapper {
    /// Unwraps one timestamp
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let ext = match self.last {
            None => ts as i64,
            Some(last) => {
                let delta = ts.wrapping_sub(last as u32) as i32 as i64;
                last + delta
            }
        };
        self.last = Some(self.last.map_or(ext, |l| l.max(ext)));
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_unwraps_forward_across_wrap() {
        let mut u = SeqUnwrapper::default();
        let got: Vec<i64> = [65533u16, 65534, 65535, 0, 1, 2]
            .iter()
            .map(|&s| u.unwrap(s))
            .collect();
        assert_eq!(got, vec![65533, 65534, 65535, 65536, 65537, 65538]);
    }

    #[test]
    fn seq_reordering_across_wrap() {
        let mut u = SeqUnwrapper::default();
        let got: Vec<i64> = [65535u16, 0, 65534, 1, 65533, 2]
            .iter()
            .map(|&s| u.unwrap(s))
            .collect();
        assert_eq!(got, vec![65535, 65536, 65534, 65537, 65533, 65538]);
    }

    #[test]
    fn seq_unwraps_backwards_below_zero() {
        let mut u = SeqUnwrapper::default();
        assert_eq!(u.unwrap(1), 1);
        assert_eq!(u.unwrap(0), 0);
        assert_eq!(u.unwrap(65535), -1);
        assert_eq!(u.unwrap(2), 2);
    }

    #[test]
    fn timestamps_unwrap_through_many_wraps() {
        let mut u = TimestampUnwrapper::default();
        let mut ts: u32 = u32::MAX - 5000;
        let start = u.unwrap(ts);
        for i in 1..=300_000i64 {
            ts = ts.wrapping_add(960 * 16);
            assert_eq!(u.unwrap(ts), start + i * 960 * 16);
        }
    }

    #[test]
    fn timestamp_reordering_across_wrap() {
        let mut u = TimestampUnwrapper::default();
        let a = u.unwrap(u32::MAX - 959);
        let c = u.unwrap(960);
        let b = u.unwrap(0);
        assert_eq!(b - a, 960);
        assert_eq!(c - a, 1920);
    }

    #[test]
    fn quickcheck_any_walk_unwraps_exactly() {
        fn prop(start: u32, steps: Vec<i16>) -> bool {
            let mut u = TimestampUnwrapper::default();
            let mut truth = start as i64;
            let first = u.unwrap(start);
            if first != truth {
                return false;
            }
            for s in steps {
                truth += s as i64;
                if u.unwrap(truth as u32) != truth {
                    return false;
                }
            }
            true
        }
        quickcheck::quickcheck(prop as fn(u32, Vec<i16>) -> bool);
    }
}
