//! Host clocks: `local = offset + (1 + ppm·1e-6)·t`, computed exactly in integer nanoseconds

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Error;

/// The largest drift a clock may have, in parts per million
pub const MAX_DRIFT_PPM: f64 = 2000.0;

/// The largest offset (either sign) a clock may have
pub const MAX_OFFSET: Duration = Duration::from_secs(12 * 3600);

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A host's clock relative to the simulation's virtual time `t`
///
/// `local(t) = offset + t + floor(t · ppb / 1e9)`, in nanoseconds, where `ppb` is the drift
/// in parts per billion (`ppm · 1000`, rounded to an integer). Every conversion starts from the
/// absolute virtual time, so no rounding error accumulates: a host at +500 ppm reads exactly
/// 500 µs more than virtual time after each virtual second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    offset_ns: i64,
    ppb: i64,
}

impl Clock {
    /// A clock that reads virtual time exactly
    pub const IDEAL: Self = Self {
        offset_ns: 0,
        ppb: 0,
    };

    /// A clock with `offset_ns` nanoseconds of offset (either sign) and `ppm` parts per million
    /// of drift (positive: runs fast)
    ///
    /// Fails if `|ppm|` exceeds [`MAX_DRIFT_PPM`], `|offset|` exceeds [`MAX_OFFSET`], or
    /// `ppm` is not finite.
    pub fn new(offset_ns: i64, ppm: f64) -> Result<Self, Error> {
        if !ppm.is_finite() || ppm.abs() > MAX_DRIFT_PPM {
            return Err(Error::Config(format!(
                "clock drift {ppm} ppm is outside ±{MAX_DRIFT_PPM} ppm"
            )));
        }
        if offset_ns.unsigned_abs() > MAX_OFFSET.as_nanos() as u64 {
            return Err(Error::Config(format!(
                "clock offset {offset_ns} ns is outside ±{}s",
                MAX_OFFSET.as_secs()
            )));
        }
        Ok(Self {
            offset_ns,
            ppb: (ppm * 1000.0).round() as i64,
        })
    }

    /// The drift in parts per billion
    pub fn ppb(&self) -> i64 {
        self.ppb
    }

    /// The drift in parts per million
    pub fn ppm(&self) -> f64 {
        self.ppb as f64 / 1000.0
    }

    /// The offset in nanoseconds (local time at virtual time zero)
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns
    }

    /// Local time in nanoseconds at virtual time `t_ns`
    pub fn local_ns(&self, t_ns: u64) -> i128 {
        let t = t_ns as i128;
        self.offset_ns as i128 + t + (t * self.ppb as i128).div_euclid(NANOS_PER_SEC)
    }

    /// The earliest virtual time whose local time is at or after `local_ns`
    ///
    /// This is the exact inverse used for deadlines: with `t = virtual_at_or_after(l)`,
    /// `local_ns(t) >= l` and (for `t > 0`) `local_ns(t - 1) < l`. Saturates at zero and at
    /// `u64::MAX`.
    pub fn virtual_at_or_after(&self, local_ns: i128) -> u64 {
        if local_ns <= self.local_ns(0) {
            return 0;
        }
        let rel = local_ns - self.offset_ns as i128;
        // The estimate is within a nanosecond or two of the answer; walk to it.
        let mut t = (rel * NANOS_PER_SEC).div_euclid(NANOS_PER_SEC + self.ppb as i128);
        t = t.clamp(0, u64::MAX as i128);
        let mut t = t as u64;
        while t > 0 && self.local_ns(t - 1) >= local_ns {
            t -= 1;
        }
        while self.local_ns(t) < local_ns {
            if t == u64::MAX {
                return t;
            }
            t += 1;
        }
        t
    }
}

/// Maps local clock readings (nanoseconds, either sign) to `Instant`s and back
///
/// `Instant` cannot be built from a number, so every host's readings are placed on one
/// anchor: `anchor + local_ns`. The anchor lies [`MAX_OFFSET`] plus a margin after the real
/// clock at creation, so negative offsets stay representable; nothing but differences of
/// these instants is ever reported.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Anchor(Instant);

impl Anchor {
    /// The process's anchor: every simulation in one process places its readings on the
    /// same instants
    ///
    /// str0m turns instants into NTP wall-clock time (sender reports) against a moment it
    /// fixes once per process, and the core's lip-sync does arithmetic on those absolute
    /// times in `f64`, whose rounding depends on their size. With one anchor per process
    /// the same local reading always gives the same wall-clock time, so two runs in one
    /// process cannot differ by that rounding.
    pub(crate) fn new() -> Self {
        static ANCHOR: OnceLock<Instant> = OnceLock::new();
        Self(*ANCHOR.get_or_init(|| {
            // The anchor only places virtual readings on the `Instant` scale; the real time
            // it was taken at never enters a result.
            #[allow(clippy::disallowed_methods)] // reason: an anchor, never read as "now" again
            let real = Instant::now();
            real + MAX_OFFSET + Duration::from_secs(3600)
        }))
    }

    /// The instant of a local reading
    pub(crate) fn instant(&self, local_ns: i128) -> Instant {
        if local_ns >= 0 {
            self.0 + Duration::from_nanos(local_ns.min(u64::MAX as i128) as u64)
        } else {
            // Bounded by MAX_OFFSET, which the anchor's margin covers.
            self.0 - Duration::from_nanos(local_ns.unsigned_abs().min(u64::MAX as u128) as u64)
        }
    }

    /// The local reading of an instant
    pub(crate) fn local_ns(&self, at: Instant) -> i128 {
        match at.checked_duration_since(self.0) {
            Some(d) => d.as_nanos() as i128,
            None => -(self.0.duration_since(at).as_nanos() as i128),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ideal_clock_is_identity() {
        let c = Clock::IDEAL;
        for t in [0, 1, 999, 1_000_000_007, 86_400_000_000_000] {
            assert_eq!(c.local_ns(t), t as i128);
            assert_eq!(c.virtual_at_or_after(t as i128), t);
        }
    }

    #[test]
    fn inverse_is_exact_for_every_drift() {
        let mut rng = fastrand::Rng::with_seed(3);
        for ppm in [
            -2000.0, -1000.0, -0.001, 0.5, 37.25, 500.0, 1999.999, 2000.0,
        ] {
            let c = Clock::new(rng.i64(-1_000_000_000..1_000_000_000), ppm).unwrap();
            for _ in 0..2000 {
                let l = c.local_ns(0) + rng.i128(1..3_600_000_000_000);
                let t = c.virtual_at_or_after(l);
                assert!(c.local_ns(t) >= l, "{ppm} {l} {t}");
                assert!(t == 0 || c.local_ns(t - 1) < l, "{ppm} {l} {t}");
            }
        }
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(Clock::new(0, 2000.5).is_err());
        assert!(Clock::new(0, f64::NAN).is_err());
        assert!(Clock::new(i64::MAX, 0.0).is_err());
    }

    #[test]
    fn anchor_round_trips() {
        let a = Anchor::new();
        for l in [-5_000_000_000i128, -1, 0, 1, 123_456_789_012] {
            assert_eq!(a.local_ns(a.instant(l)), l);
        }
    }
}
