//! Choosing an audio stream's playout delay from the transits of its recent frames
//!
//! A frame's *transit* is its arrival time minus its media time (drift-corrected): the
//! network delay plus an unknown constant offset between the clocks. Playout plays media
//! time `m` at local time `m + S`; `S`, the *set point*, is a transit too, and a frame is on
//! time when its transit is at most `S` (less where its first sample falls inside the chunk
//! being produced: the jitter buffer adds one chunk of margin for that). The estimator picks
//! `S` from the frames of the last [`window`](crate::sync::JitterConfig::window) (20 s), held
//! sorted:
//!
//! - **Expected concealment, not a quantile.** With the jitter buffer's wait-then-skip policy
//!   a frame of duration `F` that arrives `x` after its slot costs `min(x, F)` of
//!   concealment: playout waits for it (concealing) until it comes or until waiting longer
//!   would cost more than skipping it. On a FIFO path, where one slow packet holds up those
//!   behind it (transits `x`, `x − F`, `x − 2F`, …), the sum over the burst is `x`: exactly
//!   the wait it causes. So `g(S) = Σ min((transit − S)⁺, F)` over the window, divided by the
//!   audio the window spans, estimates the share of audio a set point `S` conceals, whatever
//!   the shape of the jitter and whether the path reorders. Its slope counts the frames within
//!   one frame length above `S`, so it moves smoothly with `S`, where a high quantile jumps
//!   with each extreme packet.
//! - **Cost.** `S` minimises `S + λ · g(S) / audio`, where λ
//!   ([`delay_per_concealed_percent`](crate::sync::JitterConfig::delay_per_concealed_percent),
//!   140 ms per percent) prices concealment in delay. The price, not a fixed quantile, sets the
//!   coverage: on light tails (Gaussian, uniform) covering the last frames is cheap and the
//!   choice covers nearly all (about 0.05% concealed for σ = 20 ms); on long one-sided tails
//!   (exponential, Pareto), where each further frame covered costs many milliseconds, it stops
//!   earlier (about 0.2–0.3%). One rare slow burst moves the choice only if covering it is
//!   worth its price: in a 20 s window a single spike costs `1/20 000` of concealment per
//!   millisecond of set point below it, 200 ms per percent, more than λ, so it is concealed
//!   rather than waited for on every other frame.
//! - **Rises.** A sliding window forgets a drop in jitter completely after 20 s, but a rise
//!   must be followed within a second or two. When at least three *burst heads* (frames slower
//!   than the frame that arrived before them, so that the packets stuck behind one slow packet
//!   count once) of the last [`fast_window`](crate::sync::JitterConfig::fast_window) (2 s)
//!   were later than the long-window choice, the set point rises to the largest transit of
//!   those 2 s. The ordinary tail of a heavy-tailed path does not do that.
//! - **Episodes that end.** A queue that built up on the path and drained (a capacity drop
//!   the sender followed late) leaves seconds of slow transits in the window that no longer
//!   describe the path; held for 20 s they kept audio hundreds of milliseconds late after
//!   the queue was gone. When every frame of the last fast window is faster than the set
//!   point by [`EPISODE_MARGIN`] and by three times their own spread, the window restarts
//!   at the fast window's start.
//!
//! Transits are kept in 100 µs units in a sorted multiset, so adding and forgetting a frame
//! costs O(log n) and a choice costs one walk over the top of the distribution.

use std::collections::{BTreeMap, VecDeque};

/// Transit units per second (100 µs)
const UNITS: f64 = 10_000.0;

/// Step of the set-point search, in transit units (0.5 ms)
const STEP: i64 = 5;

/// Burst heads above the long-window choice within the fast window that mean jitter rose
/// (fewer are the ordinary tail: with 0.4% of frames late, three within 2 s happen by chance
/// only every few minutes, and then lift the set point for at most 2 s)
const RISE_HEADS: usize = 3;

/// How far below the set point every frame of the fast window must be for a slow episode
/// to be over (seconds)
const EPISODE_MARGIN: f64 = 0.1;

/// Frames the fast window must hold to say so
const EPISODE_MIN_FRAMES: usize = 20;

/// How long after a queue drained (as the receiver's queue guard saw it) the window restarts
/// there (seconds): long enough for a choice from the frames since (25 of 20 ms audio),
/// short enough that playout is not held at the queue's delay for long (a full fast window,
/// 2 s, kept audio 300 ms late for 2 s after a 950 ms queue, 3.6 % of a 15 s low phase)
const DRAIN_SETTLE: f64 = 0.5;

/// Settings of a [`DelayEstimator`], in seconds
#[derive(Debug, Clone, Copy)]
pub(crate) struct DelaySettings {
    pub(crate) window: f64,
    pub(crate) fast_window: f64,
    /// Seconds of delay one unit fraction (100%) of concealment is worth
    pub(crate) price: f64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    arrival: f64,
    media: f64,
    key: i64,
    /// Slower than the frame that arrived before it
    head: bool,
}

/// Picks the playout set point (a transit, seconds) from recent frames
#[derive(Debug)]
pub(crate) struct DelayEstimator {
    settings: DelaySettings,
    samples: VecDeque<Sample>,
    sorted: BTreeMap<i64, u32>,
    /// Sum of the keys in the window
    sum: i64,
    /// Media seconds per local second of the sender's clock, corrected for drift
    scale: f64,
    /// The last few media steps between consecutive frames (seconds), for the frame length
    steps: [f64; 8],
    step_index: usize,
    last_media: Option<f64>,
    /// The last choice: (set point, whether the fast rule set it)
    choice: Option<(f64, bool)>,
    /// When a queue on the path was seen to drain (arrival seconds), until the window restarts
    drained_at: Option<f64>,
}

impl DelayEstimator {
    pub(crate) fn new(settings: DelaySettings) -> Self {
        Self {
            settings,
            samples: VecDeque::new(),
            sorted: BTreeMap::new(),
            sum: 0,
            scale: 1.0,
            steps: [0.0; 8],
            step_index: 0,
            last_media: None,
            choice: None,
            drained_at: None,
        }
    }

    fn key(&self, arrival: f64, media: f64) -> i64 {
        ((arrival - media * self.scale) * UNITS).round() as i64
    }

    /// Adds a frame that arrived at `arrival` with media time `media` (both seconds since
    /// fixed origins) and chooses again
    pub(crate) fn add(&mut self, arrival: f64, media: f64) {
        if let Some(last) = self.last_media.replace(media) {
            let step = media - last;
            if step > 0.001 && step <= 0.120 {
                self.steps[self.step_index % self.steps.len()] = step;
                self.step_index += 1;
            }
        }
        let key = self.key(arrival, media);
        let head = self.samples.back().is_none_or(|p| key > p.key);
        self.samples.push_back(Sample {
            arrival,
            media,
            key,
            head,
        });
        *self.sorted.entry(key).or_insert(0) += 1;
        self.sum += key;
        let mut horizon = arrival - self.settings.window;
        if let Some(recent) = self.episode_over(arrival) {
            horizon = horizon.max(recent);
        }
        // A queue the receiver saw build and drain: once half a second of frames has come
        // since, the frames before the drain describe a path that is gone.
        if let Some(t) = self.drained_at {
            if arrival >= t + DRAIN_SETTLE {
                horizon = horizon.max(t);
                self.drained_at = None;
            }
        }
        while self.samples.front().is_some_and(|s| s.arrival < horizon) {
            let s = self.samples.pop_front().expect("checked; panic means bug");
            self.forget(s.key);
        }
        self.choose();
    }

    /// The path had a queue that has now drained (at `at`, in arrival seconds; the receiver's
    /// queue guard saw it): [`DRAIN_SETTLE`] later, the window restarts at `at`. The episode
    /// rule below does that by itself only when the frames since are far faster than the set
    /// point and evenly spread; after a capacity drop the sender's smaller video still leaves
    /// 40–60 ms bursts every few seconds, and the set point stayed 130 ms up, all audio late,
    /// until the window forgot the queue 20 s later.
    pub(crate) fn queue_drained(&mut self, at: f64) {
        self.drained_at = Some(at);
    }

    /// Whether a slow episode is over at `now`: every frame of the last fast window was far
    /// faster than the set point (by [`EPISODE_MARGIN`], and by three times their own
    /// spread), as when a queue that built up on the path has drained. The older, slower
    /// frames then describe a path that is gone: the window restarts at the fast window's
    /// start, returned. Ordinary jitter, however heavy its tail, spreads the recent frames
    /// too and never does this.
    fn episode_over(&self, now: f64) -> Option<f64> {
        let (set_point, _) = self.choice?;
        let from = now - self.settings.fast_window;
        if self.samples.front().is_none_or(|f| f.arrival >= from) {
            return None;
        }
        let (mut lo, mut hi, mut n) = (i64::MAX, i64::MIN, 0usize);
        for x in self.samples.iter().rev().take_while(|x| x.arrival >= from) {
            lo = lo.min(x.key);
            hi = hi.max(x.key);
            n += 1;
        }
        let margin = ((EPISODE_MARGIN * UNITS) as i64).max(3 * (hi - lo));
        (n >= EPISODE_MIN_FRAMES && (set_point * UNITS) as i64 > hi + margin).then_some(from)
    }

    fn forget(&mut self, key: i64) {
        if let Some(c) = self.sorted.get_mut(&key) {
            *c -= 1;
            if *c == 0 {
                self.sorted.remove(&key);
            }
        }
        self.sum -= key;
    }

    /// Sets the drift-corrected media rate (`1 − ppm·1e-6`); recomputes every transit when it
    /// changes enough to matter across the window (a tenth of a unit)
    pub(crate) fn set_scale(&mut self, scale: f64) {
        let span = self
            .samples
            .back()
            .zip(self.samples.front())
            .map_or(0.0, |(b, f)| (b.media - f.media).abs());
        if (scale - self.scale).abs() * span * UNITS < 0.1 {
            // Too small to move any transit relative to another; keep the old keys but use
            // the new rate for what comes next only if nothing is held yet.
            if self.samples.is_empty() {
                self.scale = scale;
            }
            return;
        }
        self.scale = scale;
        self.sorted.clear();
        self.sum = 0;
        let mut prev: Option<i64> = None;
        let samples = std::mem::take(&mut self.samples);
        for mut s in samples {
            s.key = self.key(s.arrival, s.media);
            s.head = prev.is_none_or(|p| s.key > p);
            prev = Some(s.key);
            *self.sorted.entry(s.key).or_insert(0) += 1;
            self.sum += s.key;
            self.samples.push_back(s);
        }
        self.choose();
    }

    /// The media rate transits are computed with
    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    /// The chosen set point (seconds of transit), if any frame is held
    pub(crate) fn set_point(&self) -> Option<f64> {
        self.choice.map(|c| c.0)
    }

    /// The mean transit of the window (seconds)
    pub(crate) fn mean(&self) -> Option<f64> {
        let n = self.samples.len();
        (n > 0).then(|| self.sum as f64 / n as f64 / UNITS)
    }

    /// The smallest transit of the window (seconds)
    pub(crate) fn fastest(&self) -> Option<f64> {
        self.sorted
            .first_key_value()
            .map(|(&k, _)| k as f64 / UNITS)
    }

    /// The typical frame length (seconds)
    fn frame(&self) -> f64 {
        let filled = self.step_index.min(self.steps.len());
        if filled == 0 {
            return 0.020;
        }
        self.steps[..filled]
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }

    fn choose(&mut self) {
        let n = self.samples.len();
        let Some((&top, _)) = self.sorted.last_key_value() else {
            self.choice = None;
            return;
        };
        let frame = ((self.frame() * UNITS).round() as i64).max(1);
        // The price of one transit unit of g (Σ min(overshoot, F)) in transit units of set
        // point: g over the audio the window spans is the concealed fraction.
        let price = self.settings.price * UNITS / (n as f64 * frame as f64);

        // Walk the set point down from the slowest transit. `active`: transits in
        // (S, S + F], contributing their overshoot; `saturated`: above S + F, contributing F.
        let mut enter = self.sorted.iter().rev().peekable();
        let mut sat = self.sorted.iter().rev().peekable();
        let (mut active_n, mut active_sum, mut saturated) = (0i64, 0i64, 0i64);
        let mut best = (top, f64::INFINITY);
        let mut s = top;
        loop {
            while let Some(&(&k, &c)) = enter.peek() {
                if k <= s {
                    break;
                }
                active_n += i64::from(c);
                active_sum += k * i64::from(c);
                enter.next();
            }
            while let Some(&(&k, &c)) = sat.peek() {
                if k <= s + frame {
                    break;
                }
                active_n -= i64::from(c);
                active_sum -= k * i64::from(c);
                saturated += i64::from(c);
                sat.next();
            }
            let g = (saturated * frame + active_sum - s * active_n) as f64;
            let cost = s as f64 + price * g;
            if cost < best.1 {
                best = (s, cost);
            } else if cost > best.1 + 40.0 * STEP as f64 {
                // Well past the minimum: the cost is convex where it matters.
                break;
            }
            if enter.peek().is_none() && saturated > 0 && active_n == 0 {
                // Below every transit by more than a frame: lower only costs more.
                break;
            }
            // With nothing within a frame above the set point the cost only falls, step by
            // step, until the next transit below enters: go straight to the last step before
            // it. (Walking there was a hang: one frame whose media time lies far in the past,
            // a transit of days, meant billions of steps; the fuzzer found it.)
            let steps = match enter.peek() {
                Some(&(&k, _)) if active_n == 0 => ((s - k) / STEP).max(1),
                _ => 1,
            };
            s -= steps * STEP;
        }
        let long = best.0;

        // A rise: several burst heads of the last seconds above the long choice.
        let horizon = self.samples.back().map_or(0.0, |b| b.arrival) - self.settings.fast_window;
        let mut heads = 0;
        let mut recent_max = i64::MIN;
        for x in self.samples.iter().rev() {
            if x.arrival < horizon {
                break;
            }
            recent_max = recent_max.max(x.key);
            if x.head && x.key > long {
                heads += 1;
            }
        }
        let (point, fast) = if heads >= RISE_HEADS {
            (recent_max, true)
        } else {
            (long, false)
        };
        self.choice = Some((point as f64 / UNITS, fast));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DelaySettings {
        DelaySettings {
            window: 20.0,
            fast_window: 2.0,
            price: 12.0,
        }
    }

    /// Feeds 20 ms frames with transit `30 ms + extra(i)`; returns the estimator
    fn feed(n: usize, mut extra: impl FnMut(usize) -> f64) -> DelayEstimator {
        let mut e = DelayEstimator::new(settings());
        for i in 0..n {
            let m = i as f64 * 0.02;
            e.add(m + 0.030 + extra(i), m);
        }
        e
    }

    #[test]
    fn a_frame_from_days_ago_is_chosen_over_at_once() {
        // One frame whose media time lies 10^7 s in the past (a sender's garbage timestamp):
        // a transit of months. The set point still comes from the other frames, and at
        // once: walking down to them in 0.5 ms steps was 2·10^10 steps (the fuzzer hung).
        for jump in [-1e7, 1e7] {
            let mut e = DelayEstimator::new(settings());
            for i in 0..500 {
                let m = i as f64 * 0.02;
                let media = if i == 250 { m + jump } else { m };
                e.add(m + 0.030, media);
            }
            let s = e.set_point().unwrap();
            assert!((s - 0.030).abs() < 0.0006, "{jump}: {s}");
        }
    }

    #[test]
    fn a_queue_seen_to_drain_is_forgotten_half_a_second_later() {
        // A path with a 50 ms burst every 2 s (which keeps the episode rule from ending an
        // episode by itself), and 3 s of a queue (200 ms) from 10 s.
        let queue = |i: usize| {
            let t = i as f64 * 0.02;
            if (10.0..13.0).contains(&t) {
                0.2
            } else if i.is_multiple_of(100) {
                0.05
            } else {
                0.0
            }
        };
        let clean = feed(900, |i| if i.is_multiple_of(100) { 0.05 } else { 0.0 })
            .set_point()
            .unwrap();
        let held = feed(900, queue).set_point().unwrap();
        assert!(held > clean + 0.02, "{held} {clean}");
        let mut e = feed(700, queue);
        e.queue_drained(700.0 * 0.02 + 0.030);
        let mut i = 700;
        while i < 900 {
            let m = i as f64 * 0.02;
            e.add(m + 0.030 + queue(i), m);
            i += 1;
            if i == 730 {
                // 0.6 s after the drain
                let s = e.set_point().unwrap();
                assert!(s < clean + 0.005, "{s} {clean}");
            }
        }
        let s = e.set_point().unwrap();
        assert!(s < clean + 0.005, "{s} {clean}");
    }

    #[test]
    fn no_jitter_sets_the_point_at_the_transit() {
        let e = feed(500, |_| 0.0);
        let s = e.set_point().unwrap();
        assert!((s - 0.030).abs() < 0.0006, "{s}");
        assert!((e.mean().unwrap() - 0.030).abs() < 1e-4);
    }

    #[test]
    fn exponential_tail_is_covered_where_the_price_says() {
        let mut rng = fastrand::Rng::with_seed(1);
        let e = feed(1000, |_| -0.020 * (1.0 - rng.f64()).ln());
        let s = e.set_point().unwrap() - 0.030;
        // The cost's slope vanishes where the frames within 20 ms above the point are
        // 20 ms / 12 s of the window: 0.632·e^(−s/20 ms) = 1/600, s = 119 ms (noisy over 1000
        // frames).
        assert!((0.085..0.135).contains(&s), "{s}");
    }

    #[test]
    fn two_slow_packets_do_not_raise_the_point_but_three_in_two_seconds_do() {
        let mut e = feed(1000, |_| 0.0);
        let before = e.set_point().unwrap();
        let mut i = 1000;
        let mut add = |e: &mut DelayEstimator, extra: f64| {
            let m = i as f64 * 0.02;
            e.add(m + 0.030 + extra, m);
            i += 1;
        };
        for extra in [0.150, 0.0, 0.0, 0.0, 0.0, 0.120] {
            add(&mut e, extra);
        }
        for _ in 0..20 {
            add(&mut e, 0.0);
        }
        assert!(
            e.set_point().unwrap() < before + 0.050,
            "{}",
            e.set_point().unwrap()
        );
        add(&mut e, 0.100);
        assert!(e.choice.unwrap().1, "fast rule did not fire");
        assert!(e.set_point().unwrap() >= before + 0.149);
    }

    #[test]
    fn a_queue_that_drained_is_forgotten_once_two_calm_seconds_pass() {
        // Calm, then a queue builds at the bottleneck over 3 s to 800 ms and drains in 1 s
        // (a capacity drop the sender followed late), then calm again.
        let transit = |t: f64| match t {
            t if (10.0..13.0).contains(&t) => (t - 10.0) / 3.0 * 0.8,
            t if (13.0..14.0).contains(&t) => (14.0 - t) * 0.8,
            _ => 0.0,
        };
        let mut e = DelayEstimator::new(settings());
        let mut high = 0.0f64;
        let mut at_17 = None;
        for i in 0..1500 {
            let m = f64::from(i) * 0.02;
            e.add(m + 0.030 + transit(m), m);
            if (12.0..14.0).contains(&m) {
                high = high.max(e.set_point().unwrap());
            }
            if at_17.is_none() && m >= 17.0 {
                at_17 = e.set_point();
            }
        }
        // The episode raised the point; two seconds after it ended the point is back at
        // the path's transit, not 20 s later.
        assert!(high > 0.3, "{high}");
        let s = at_17.unwrap();
        assert!((s - 0.030).abs() < 0.005, "{s}");
        // Exponential jitter with a heavy tail never looks like the end of an episode: the
        // point stays where the price puts it.
        let mut rng = fastrand::Rng::with_seed(2);
        let e = feed(2000, |_| -0.020 * (1.0 - rng.f64()).ln());
        let s = e.set_point().unwrap() - 0.030;
        assert!((0.085..0.135).contains(&s), "{s}");
    }

    #[test]
    fn a_burst_behind_one_slow_packet_counts_as_one_head() {
        // FIFO: one packet 100 ms late holds the next four (transits 100, 80, 60, 40, 20 ms
        // above the base); only the first is a head, so the fast rule does not fire.
        let mut e = feed(1000, |_| 0.0);
        let base = e.set_point().unwrap();
        for (j, extra) in [0.100, 0.080, 0.060, 0.040, 0.020].iter().enumerate() {
            let m = (1000 + j) as f64 * 0.02;
            e.add(m + 0.030 + extra, m);
        }
        assert!(!e.choice.unwrap().1, "fast rule fired");
        assert!(e.set_point().unwrap() < base + 0.100);
    }
}
