//! Trace files: Mahimahi capacity traces and meshrtc per-packet delay/loss traces
//!
//! # Mahimahi capacity trace
//!
//! One integer per line: a millisecond (from the start of the trace) at which one
//! 1500-byte packet may cross the link; several equal lines give several opportunities in that
//! millisecond. Lines are non-decreasing. The trace repeats with a period equal to its last
//! value. See [`CapacityTrace`].
//!
//! # meshrtc packet trace (`v1`)
//!
//! One line per packet offered to the link, in order: the packet's one-way delay in
//! milliseconds (a non-negative decimal number such as `23` or `41.25`), or the word `lost`.
//! Blank lines and lines starting with `#` are ignored. The trace repeats when it ends. See
//! [`PacketTrace`].
//!
//! ```text
//! # meshrtc packet trace v1
//! 20.5
//! 21
//! lost
//! 35.125
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;

/// Bytes one Mahimahi delivery opportunity carries
pub const MAHIMAHI_PACKET_BYTES: u32 = 1500;

const NANOS_PER_MS: u64 = 1_000_000;

/// A Mahimahi capacity trace: delivery opportunities of [`MAHIMAHI_PACKET_BYTES`] each
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityTrace {
    /// Opportunity times in milliseconds, non-decreasing
    offsets_ms: Vec<u64>,
    /// The trace repeats after this many milliseconds (its last value)
    period_ms: u64,
}

impl CapacityTrace {
    /// Parses the text of a trace file; `path` only names the source in errors
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut offsets = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| Error::Trace {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let v: u64 = line
                .parse()
                .map_err(|_| bad(format!("expected a millisecond count, found {line:?}")))?;
            if offsets.last().is_some_and(|&last| v < last) {
                return Err(bad(format!("{v} is earlier than the line before")));
            }
            offsets.push(v);
        }
        Self::from_offsets(offsets).map_err(|e| match e {
            Error::Config(reason) => Error::Trace {
                path: path.to_path_buf(),
                line: 0,
                reason,
            },
            e => e,
        })
    }

    /// Reads and parses a trace file
    pub fn from_path(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// A trace from opportunity times in milliseconds (non-decreasing, last one positive)
    pub fn from_offsets(offsets_ms: Vec<u64>) -> Result<Self, Error> {
        if offsets_ms.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::Config("capacity trace is not sorted".into()));
        }
        let Some(&period_ms) = offsets_ms.last() else {
            return Err(Error::Config("capacity trace is empty".into()));
        };
        if period_ms == 0 {
            return Err(Error::Config(
                "capacity trace must end after millisecond 0".into(),
            ));
        }
        Ok(Self {
            offsets_ms,
            period_ms,
        })
    }

    /// A trace that gives a constant rate of about `bits_per_sec` (for tests and examples)
    ///
    /// One second of opportunities, spread evenly.
    pub fn constant(bits_per_sec: u64) -> Result<Self, Error> {
        let per_sec = bits_per_sec / (8 * MAHIMAHI_PACKET_BYTES as u64);
        if per_sec == 0 {
            return Err(Error::Config("rate below one packet per second".into()));
        }
        let offsets = (1..=per_sec).map(|k| k * 1000 / per_sec).collect();
        Self::from_offsets(offsets)
    }

    /// A synthetic cellular (LTE-like) trace of `period`, seeded: the capacity's logarithm
    /// wanders around `mean_bits_per_sec` (an AR(1) process updated every 100 ms, so the
    /// rate changes by several times within seconds), with fades to a few percent of the
    /// mean for 0.2-1 s (about one every 10 s), and opportunities that come in bursts every
    /// 1-4 ms as a cell's scheduler grants them
    ///
    /// Its statistics resemble the published Mahimahi LTE traces (which are GPL data and not
    /// part of this project); the same seed gives the same trace.
    pub fn cellular(seed: u64, period: Duration, mean_bits_per_sec: u64) -> Result<Self, Error> {
        const SLOT_MS: u64 = 100;
        const ALPHA: f64 = 0.9;
        const SIGMA: f64 = 0.6;
        let period_ms = period.as_millis() as u64;
        if period_ms < SLOT_MS || mean_bits_per_sec < 8 * MAHIMAHI_PACKET_BYTES as u64 {
            return Err(Error::Config(
                "cellular trace: period below 100 ms or mean below one packet per second".into(),
            ));
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut normal = move || {
            // Box-Muller
            let (u, v) = (rng.f64().max(1e-12), rng.f64());
            (
                (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos(),
                rng.f64(),
            )
        };
        let mean = mean_bits_per_sec as f64;
        let packet_bits = (MAHIMAHI_PACKET_BYTES * 8) as f64;
        let mut x = 0.0f64;
        let mut fade_until = 0u64;
        let mut credit = 0.0f64;
        let mut next_grant = 0u64;
        let mut offsets = Vec::new();
        let mut rate = mean;
        for ms in 0..period_ms {
            if ms % SLOT_MS == 0 {
                let (n, u) = normal();
                x = ALPHA * x + (1.0 - ALPHA * ALPHA).sqrt() * SIGMA * n;
                if ms >= fade_until && u < 0.01 {
                    fade_until = ms + 200 + (u * 80_000.0) as u64;
                }
                rate = if ms < fade_until {
                    0.03 * mean
                } else {
                    (mean * (x - SIGMA * SIGMA / 2.0).exp()).clamp(0.05 * mean, 4.0 * mean)
                };
            }
            credit += rate / 1000.0 / packet_bits;
            if ms >= next_grant {
                let (_, u) = normal();
                next_grant = ms + 1 + (u * 4.0) as u64;
                while credit >= 1.0 {
                    offsets.push(ms.max(1));
                    credit -= 1.0;
                }
            }
        }
        offsets.push(period_ms);
        Self::from_offsets(offsets)
    }

    /// How long until the trace repeats
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// Opportunities in one period
    pub fn len(&self) -> usize {
        self.offsets_ms.len()
    }

    /// Whether the trace has no opportunity (never true for a parsed trace)
    pub fn is_empty(&self) -> bool {
        self.offsets_ms.is_empty()
    }

    /// The mean capacity over one period, in bits per second
    pub fn mean_bits_per_sec(&self) -> f64 {
        self.len() as f64 * MAHIMAHI_PACKET_BYTES as f64 * 8.0 / (self.period_ms as f64 / 1000.0)
    }

    /// The time (nanoseconds from the trace start) of opportunity `k`, counted across repeats
    pub(crate) fn time_ns(&self, k: u64) -> u64 {
        let n = self.offsets_ms.len() as u64;
        let cycle = k / n;
        let i = (k % n) as usize;
        (cycle * self.period_ms + self.offsets_ms[i]).saturating_mul(NANOS_PER_MS)
    }

    /// The first opportunity at or after `rel_ns` (nanoseconds from the trace start)
    pub(crate) fn first_at_or_after(&self, rel_ns: u64) -> u64 {
        let n = self.offsets_ms.len() as u64;
        let period_ns = self.period_ms * NANOS_PER_MS;
        let cycle = rel_ns / period_ns;
        let within = rel_ns - cycle * period_ns;
        let i = self
            .offsets_ms
            .partition_point(|&off| off * NANOS_PER_MS < within) as u64;
        if i == n {
            (cycle + 1) * n
        } else {
            cycle * n + i
        }
    }
}

/// A meshrtc per-packet trace: for each packet offered to a link, its delay or its loss
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketTrace {
    /// `Some(delay in ns)` or `None` for a lost packet
    entries: Vec<Option<u64>>,
}

impl PacketTrace {
    /// Parses the text of a trace file; `path` only names the source in errors
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.eq_ignore_ascii_case("lost") {
                entries.push(None);
                continue;
            }
            let ms: f64 = line
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| Error::Trace {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("expected a delay in milliseconds or \"lost\", found {line:?}"),
                })?;
            entries.push(Some((ms * NANOS_PER_MS as f64).round() as u64));
        }
        if entries.is_empty() {
            return Err(Error::Trace {
                path: path.to_path_buf(),
                line: 0,
                reason: "packet trace has no packet".into(),
            });
        }
        Ok(Self { entries })
    }

    /// Reads and parses a trace file
    pub fn from_path(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// A trace from entries: `Some(delay)` or `None` for a lost packet
    pub fn from_entries(entries: Vec<Option<Duration>>) -> Result<Self, Error> {
        if entries.is_empty() {
            return Err(Error::Config("packet trace has no packet".into()));
        }
        Ok(Self {
            entries: entries
                .into_iter()
                .map(|e| e.map(|d| d.as_nanos() as u64))
                .collect(),
        })
    }

    /// Packets in one repetition
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the trace is empty (never true for a parsed trace)
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The fate of the `i`-th packet (counted from 0, across repetitions): its delay in
    /// nanoseconds, or `None` if lost
    pub(crate) fn entry(&self, i: u64) -> Option<u64> {
        self.entries[(i % self.entries.len() as u64) as usize]
    }
}

/// Where a trace named in a scenario is looked up: relative to the scenario file's folder
pub(crate) fn resolve(base: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mahimahi_parse_and_index() {
        let t = CapacityTrace::parse("1\n1\n3\n\n5\n", Path::new("t")).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t.period(), Duration::from_millis(5));
        assert_eq!(t.time_ns(0), 1_000_000);
        assert_eq!(t.time_ns(3), 5_000_000);
        assert_eq!(t.time_ns(4), 6_000_000);
        assert_eq!(t.first_at_or_after(0), 0);
        assert_eq!(t.first_at_or_after(1_000_000), 0);
        assert_eq!(t.first_at_or_after(1_000_001), 2);
        assert_eq!(t.first_at_or_after(4_000_000), 3);
        assert_eq!(t.first_at_or_after(5_000_001), 4);
        assert!((t.mean_bits_per_sec() - 4.0 * 1500.0 * 8.0 / 0.005).abs() < 1e-6);
    }

    #[test]
    fn mahimahi_rejects_bad_lines() {
        let e = CapacityTrace::parse("1\nx\n", Path::new("t")).unwrap_err();
        assert!(e.to_string().contains("t:2"), "{e}");
        assert!(CapacityTrace::parse("5\n3\n", Path::new("t")).is_err());
        assert!(CapacityTrace::parse("", Path::new("t")).is_err());
        assert!(CapacityTrace::parse("0\n0\n", Path::new("t")).is_err());
    }

    #[test]
    fn packet_trace_parse() {
        let t = PacketTrace::parse("# v1\n20.5\nlost\n\n3\n", Path::new("p")).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.entry(0), Some(20_500_000));
        assert_eq!(t.entry(1), None);
        assert_eq!(t.entry(5), Some(3_000_000));
        assert!(PacketTrace::parse("-1\n", Path::new("p")).is_err());
        assert!(PacketTrace::parse("# nothing\n", Path::new("p")).is_err());
    }
}
