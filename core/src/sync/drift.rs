//! Estimating how fast a remote sender's clock runs relative to ours
//!
//! Each sample pairs a local arrival time with the sender's own time for the same packet
//! (its media time, or the NTP time of a sender report). The one-way "transit"
//! `d = arrival - sent` then follows `d = a + b·t + noise`, and the sender's clock runs
//! `-b` fast (in ppm: `-b·1e6`).
//!
//! Two estimators of `b` run side by side, because neither is good on every network:
//!
//! - **Least squares** is the best linear unbiased estimator when the noise is symmetric
//!   (e.g. Gaussian jitter), but one-sided queueing delay and bounded (uniform) jitter make
//!   it needlessly noisy.
//! - **Lower envelope**: the edge of the lower convex hull of the samples that spans their
//!   mean time (the solution of the linear program "the highest line below every sample at
//!   the mean time"). It converges far faster when the noise has a sharp lower edge (queueing,
//!   uniform jitter, no jitter) but follows outliers when the noise has long tails on both
//!   sides (Gaussian).
//!
//! The shape of the least-squares residuals picks one: near-zero skew with Gaussian-like
//! kurtosis selects least squares, anything else the envelope.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sync::time::local_secs;

/// Which estimator produced a drift figure
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftMethod {
    /// Least squares (symmetric noise)
    LeastSquares,
    /// Lower convex envelope (one-sided or bounded noise)
    Envelope,
}

/// A drift estimate
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftEstimate {
    /// The sender's clock rate relative to ours, in parts per million (+ = sender fast)
    pub ppm: f64,
    /// The estimator chosen for this figure
    pub method: DriftMethod,
    /// Samples behind it
    pub samples: usize,
    /// Skew of the least-squares residuals
    pub skew: f64,
    /// Kurtosis of the least-squares residuals
    pub kurtosis: f64,
}

/// Configuration of a [`DriftEstimator`]
#[derive(Debug, Clone, Copy)]
pub struct DriftConfig {
    /// Samples older than this are forgotten
    pub window: Duration,
    /// Fewer samples than this give no estimate
    pub min_samples: usize,
    /// A span of sample times shorter than this gives no estimate
    pub min_span: Duration,
    /// Samples kept per stream at most (older ones are dropped first)
    pub max_samples: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            min_samples: 20,
            min_span: Duration::from_secs(2),
            max_samples: 16_384,
        }
    }
}

/// Up to this many independent streams (e.g. audio, video, sender reports) share one slope
pub const MAX_DRIFT_STREAMS: usize = 4;

#[derive(Debug, Default, Clone)]
struct Stream {
    /// (local seconds since the estimator's origin, transit seconds relative to the stream's
    /// first sample)
    samples: VecDeque<(f64, f64)>,
    /// The stream's first sample: (local arrival, sender seconds)
    first: Option<(Instant, f64)>,
}

/// Estimates a remote clock's rate from (local arrival, sender time) pairs
///
/// Call [`handle_sample`](Self::handle_sample) for each packet and
/// [`estimate`](Self::estimate) whenever a figure is needed (it costs O(samples)).
#[derive(Debug, Clone)]
pub struct DriftEstimator {
    config: DriftConfig,
    origin: Option<Instant>,
    streams: [Stream; MAX_DRIFT_STREAMS],
}

impl DriftEstimator {
    /// Creates an estimator with no samples
    pub fn new(config: DriftConfig) -> Self {
        Self {
            config,
            origin: None,
            streams: Default::default(),
        }
    }

    /// Adds a sample: the packet arrived at local `arrival` and the sender stamped it
    /// `sent_secs` seconds on its own clock (any origin, consistent within the stream)
    pub fn handle_sample(&mut self, stream: usize, arrival: Instant, sent_secs: f64) {
        if stream >= MAX_DRIFT_STREAMS || !sent_secs.is_finite() {
            return;
        }
        let origin = *self.origin.get_or_insert(arrival);
        let s = &mut self.streams[stream];
        let (first_arrival, first_sent) = *s.first.get_or_insert((arrival, sent_secs));
        let t = local_secs(arrival, origin);
        let d = local_secs(arrival, first_arrival) - (sent_secs - first_sent);
        s.samples.push_back((t, d));
        let horizon = t - self.config.window.as_secs_f64();
        while s.samples.front().is_some_and(|&(t0, _)| t0 < horizon)
            || s.samples.len() > self.config.max_samples
        {
            s.samples.pop_front();
        }
    }

    /// The number of samples held
    pub fn sample_count(&self) -> usize {
        self.streams.iter().map(|s| s.samples.len()).sum()
    }

    /// Forgets everything (e.g. after the sender restarted its clock)
    pub fn reset(&mut self) {
        *self = Self::new(self.config);
    }

    /// The current estimate, if there are enough samples
    pub fn estimate(&self) -> Option<DriftEstimate> {
        let n = self.sample_count();
        if n < self.config.min_samples {
            return None;
        }
        let span = self
            .streams
            .iter()
            .filter_map(|s| Some(s.samples.back()?.0 - s.samples.front()?.0))
            .fold(0.0f64, f64::max);
        if span < self.config.min_span.as_secs_f64() {
            return None;
        }

        // Pooled least squares: a common slope, an intercept per stream.
        let mut sxx = 0.0;
        let mut sxy = 0.0;
        let mut means = [(0.0, 0.0); MAX_DRIFT_STREAMS];
        for (i, s) in self.streams.iter().enumerate() {
            if s.samples.is_empty() {
                continue;
            }
            let k = s.samples.len() as f64;
            let (mt, md) = s
                .samples
                .iter()
                .fold((0.0, 0.0), |(a, b), &(t, d)| (a + t, b + d));
            let (mt, md) = (mt / k, md / k);
            means[i] = (mt, md);
            for &(t, d) in &s.samples {
                sxx += (t - mt) * (t - mt);
                sxy += (t - mt) * (d - md);
            }
        }
        if sxx <= 0.0 {
            return None;
        }
        let slope_ls = sxy / sxx;

        // Shape of the residuals.
        let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
        for (i, s) in self.streams.iter().enumerate() {
            let (mt, md) = means[i];
            for &(t, d) in &s.samples {
                let r = d - md - slope_ls * (t - mt);
                let r2 = r * r;
                m2 += r2;
                m3 += r2 * r;
                m4 += r2 * r2;
            }
        }
        let nf = n as f64;
        let (m2, m3, m4) = (m2 / nf, m3 / nf, m4 / nf);
        // Residuals below 50 µs are timer granularity: there is no jitter to speak of.
        let (skew, kurtosis) = if m2 > (50e-6f64).powi(2) {
            (m3 / m2.powf(1.5), m4 / (m2 * m2))
        } else {
            (0.0, 0.0)
        };
        let gaussian_like = skew.abs() < 0.5 && kurtosis > 2.4;

        let (slope, method) = if gaussian_like {
            (slope_ls, DriftMethod::LeastSquares)
        } else {
            match self.envelope_slope() {
                Some(s) => (s, DriftMethod::Envelope),
                None => (slope_ls, DriftMethod::LeastSquares),
            }
        };
        Some(DriftEstimate {
            ppm: -slope * 1e6,
            method,
            samples: n,
            skew,
            kurtosis,
        })
    }

    /// Sample-weighted mean of each stream's lower-envelope slope
    fn envelope_slope(&self) -> Option<f64> {
        let mut sum = 0.0;
        let mut weight = 0.0;
        for s in &self.streams {
            if s.samples.len() < 2 {
                continue;
            }
            if let Some(b) = lower_envelope_slope(&s.samples) {
                let w = s.samples.len() as f64;
                sum += b * w;
                weight += w;
            }
        }
        (weight > 0.0).then(|| sum / weight)
    }
}

/// Slope of the lower convex hull's edge that spans the samples' mean time
///
/// Samples must be in non-decreasing time order.
fn lower_envelope_slope(samples: &VecDeque<(f64, f64)>) -> Option<f64> {
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(64);
    let mut mean_t = 0.0;
    for &p in samples {
        mean_t += p.0;
        // Same time: keep only the lowest.
        if let Some(&last) = hull.last() {
            if p.0 <= last.0 {
                if p.1 < last.1 {
                    hull.pop();
                } else {
                    continue;
                }
            }
        }
        while hull.len() >= 2 {
            let a = hull[hull.len() - 2];
            let b = hull[hull.len() - 1];
            // Pop b if it lies on or above the segment a→p.
            let cross = (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0);
            if cross <= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    mean_t /= samples.len() as f64;
    if hull.len() < 2 {
        return None;
    }
    let i = hull
        .windows(2)
        .position(|w| w[0].0 <= mean_t && mean_t <= w[1].0)
        .unwrap_or(hull.len() - 2);
    let (a, b) = (hull[i], hull[i + 1]);
    Some((b.1 - a.1) / (b.0 - a.0))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // reason: tests anchor virtual time at a real instant
mod tests {
    use super::*;

    /// Feeds `secs` of packets every `interval_ms` from a sender whose clock runs `ppm`
    /// fast, with per-packet extra delay from `noise`
    fn run(ppm: f64, secs: f64, interval_ms: f64, mut noise: impl FnMut() -> f64) -> DriftEstimate {
        let base = Instant::now();
        let mut est = DriftEstimator::new(DriftConfig::default());
        let n = (secs * 1000.0 / interval_ms) as usize;
        for i in 0..n {
            // The sender sends every `interval` on its own clock; on ours that interval is
            // stretched by 1/(1+ppm).
            let sent = i as f64 * interval_ms / 1000.0;
            let local_send = sent / (1.0 + ppm * 1e-6);
            let arrival = local_send + 0.020 + noise();
            est.handle_sample(0, base + Duration::from_secs_f64(arrival), sent);
        }
        est.estimate().expect("enough samples")
    }

    #[test]
    fn no_jitter_is_exact() {
        for ppm in [-1000.0, -37.0, 0.0, 500.0, 2000.0] {
            let e = run(ppm, 60.0, 20.0, || 0.0);
            assert!((e.ppm - ppm).abs() < 1.0, "{ppm}: {e:?}");
        }
    }

    #[test]
    fn exponential_queueing_uses_the_envelope() {
        let mut rng = fastrand::Rng::with_seed(3);
        let e = run(1000.0, 60.0, 20.0, || -0.010 * (1.0 - rng.f64()).ln());
        assert_eq!(e.method, DriftMethod::Envelope, "{e:?}");
        assert!((e.ppm - 1000.0).abs() < 1.0, "{e:?}");
    }

    #[test]
    fn uniform_jitter_uses_the_envelope() {
        let mut rng = fastrand::Rng::with_seed(4);
        let e = run(-1000.0, 60.0, 20.0, || 0.040 * rng.f64());
        assert_eq!(e.method, DriftMethod::Envelope, "{e:?}");
        assert!((e.ppm + 1000.0).abs() < 4.0, "{e:?}");
    }

    #[test]
    fn gaussian_jitter_uses_least_squares() {
        let mut rng = fastrand::Rng::with_seed(5);
        let e = run(1000.0, 60.0, 20.0, || {
            0.050 + 0.010 * crate::sync::gaussian(&mut rng)
        });
        assert_eq!(e.method, DriftMethod::LeastSquares, "{e:?}");
        assert!((e.ppm - 1000.0).abs() < 30.0, "{e:?}");
    }

    #[test]
    fn pooled_streams_share_one_slope() {
        let base = Instant::now();
        let mut est = DriftEstimator::new(DriftConfig::default());
        for i in 0..3000 {
            let sent = i as f64 * 0.02;
            let arrival = sent / (1.0 + 300e-6) + 0.01;
            est.handle_sample(0, base + Duration::from_secs_f64(arrival), sent + 1234.0);
            est.handle_sample(
                1,
                base + Duration::from_secs_f64(arrival + 0.003),
                sent - 77.0,
            );
        }
        let e = est.estimate().unwrap();
        assert!((e.ppm - 300.0).abs() < 1.0, "{e:?}");
    }

    #[test]
    fn too_few_samples_give_nothing() {
        let base = Instant::now();
        let mut est = DriftEstimator::new(DriftConfig::default());
        est.handle_sample(0, base, 0.0);
        assert!(est.estimate().is_none());
    }
}
