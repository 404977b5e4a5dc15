//! A receiver's early warning of a queue on the path: REMB when one-way delay climbs
//!
//! str0m's send-side estimator (GoogCC's trendline on TWCC feedback) notices a capacity drop
//! late when the feedback itself is delayed or lost: in the simulator's capacity step
//! (4 → 0.5 Mbit/s both ways, a 60 kB queue) its estimate went on *rising* for 1.75 s after
//! the drop while the queue held 600 ms. The receiver sees the queue at once: every audio
//! packet's one-way delay (arrival minus media time, up to a constant clock offset) climbs
//! with it. [`QueueGuard`] watches that and, while the queue is there, asks the sender for
//! less with an RTCP REMB (receiver estimated maximum bitrate, which str0m sends and turns
//! into `Event::EgressBitrateEstimate(BweKind::Remb)` at the other end, and which libwebrtc
//! understands too).
//!
//! - **Queue delay**: the least one-way delay of the last [`BIN`] (100 ms, five audio packets)
//!   minus the least of the last [`BASE_WINDOW`] (10 s). Taking the least of a bin keeps a
//!   single late packet (jitter) from looking like a queue; a queue delays every packet.
//! - **Enter / leave**: congested after three bins in a row with more than [`ENTER`] (80 ms)
//!   of queue delay, until it falls below [`LEAVE`] (30 ms) or three bins in a row are at or
//!   below 80 ms. Gaussian jitter of σ = 20 ms puts a bin's minimum more than 80 ms above the
//!   window's lowest bin only in about one bin in a thousand, and three in a row practically
//!   never (the unit test runs two minutes of it).
//! - **What to ask for**: while congested, every [`INTERVAL`] (200 ms), what arrived over
//!   the last [`RATE_WINDOW`] (500 ms: every datagram from the peer, with its IP and UDP
//!   headers) — the bottleneck's rate while it has a queue — times `1 − delay / 0.5 s`
//!   (within 0.5–0.85), so that the queue drains in about half a second; but never less
//!   than a quarter of what arrived over the last 3 s ([`LONG_WINDOW`]: a cellular fade is
//!   not the path's rate).
//!
//! The sender applies the lowest fresh request at once and lets it grow back slowly
//! ([`RemoteCap`]); see [`rate`](crate::rate).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sync::time::local_secs;

/// Width of the bins whose least delay is taken
const BIN: f64 = 0.1;
/// How long the lowest delay (the path without a queue) is remembered
const BASE_WINDOW: f64 = 10.0;
/// Queue delay from which the path counts as congested (seconds)
const ENTER: f64 = 0.08;
/// ... and below which it no longer does
const LEAVE: f64 = 0.03;
/// Consecutive bins above [`ENTER`] that make a queue (and at or below it that end one)
const BINS_TO_ENTER: u32 = 3;
/// Least time between two requests
const INTERVAL: Duration = Duration::from_millis(200);
/// Span over which the received rate is measured
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// A request never asks for less than [`LONG_SHARE`] of what arrived over this span: on a cellular
/// path the capacity fades to nearly nothing for up to a second, and what arrives in the
/// last half second then says nothing about what the path carries once the fade is over
/// (asked for 43 kbit/s, a sender took 15 s to grow back and sent no video meanwhile)
const LONG_WINDOW: Duration = Duration::from_secs(3);
/// ... a quarter: after a capacity step the last 3 s still hold the old rate, and half of
/// it was above the new capacity (low-phase audio 7–10 % late instead of 0)
const LONG_SHARE: f64 = 0.25;
/// Bytes of IPv4 and UDP headers per datagram
const IP_UDP_HEADERS: u64 = 28;

/// Watches one remote sender's one-way delay and says when to ask it for less
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueGuard {
    origin: Option<Instant>,
    /// (bin index, least transit in it), oldest first, over the last [`BASE_WINDOW`]
    bins: VecDeque<(i64, f64)>,
    /// (arrival, wire bytes) of everything received over the last [`LONG_WINDOW`]
    received: VecDeque<(Instant, u64)>,
    received_bytes: u64,
    /// Consecutive complete bins above [`ENTER`], and at or below it
    above: u32,
    below: u32,
    congested: bool,
    /// The queue drained since [`Self::take_drained`] was last asked
    drained: bool,
    last_request: Option<Instant>,
}

impl QueueGuard {
    /// An audio frame of media time `media_secs` (the sender's clock) arrived at `arrival`
    pub(crate) fn handle_audio(&mut self, arrival: Instant, media_secs: f64) {
        let origin = *self.origin.get_or_insert(arrival);
        let at = local_secs(arrival, origin);
        let transit = at - media_secs;
        let bin = (at / BIN).floor() as i64;
        match self.bins.back_mut() {
            Some((b, least)) if *b == bin => *least = least.min(transit),
            Some((b, _)) if *b > bin => {} // arrival times never go back; ignore if they do
            _ => {
                self.bins.push_back((bin, transit));
                self.on_bin_closed();
            }
        }
        let keep = (BASE_WINDOW / BIN) as i64;
        while self.bins.front().is_some_and(|(b, _)| *b < bin - keep) {
            self.bins.pop_front();
        }
    }

    /// A datagram of `len` bytes (anything from the peer) arrived at `arrival`
    pub(crate) fn handle_bytes(&mut self, arrival: Instant, len: usize) {
        let bytes = len as u64 + IP_UDP_HEADERS;
        self.received.push_back((arrival, bytes));
        self.received_bytes += bytes;
        self.forget_received(arrival);
    }

    fn forget_received(&mut self, now: Instant) {
        while let Some(&(t, b)) = self.received.front() {
            if t + LONG_WINDOW < now {
                self.received.pop_front();
                self.received_bytes -= b;
            } else {
                break;
            }
        }
    }

    /// The queue delay the last complete bin shows (seconds), if there is one
    fn queue_delay(&self) -> Option<f64> {
        let n = self.bins.len();
        if n < 2 {
            return None;
        }
        // The last bin is still filling: judge the one before it.
        let (_, recent) = self.bins[n - 2];
        let base = self
            .bins
            .iter()
            .take(n - 1)
            .map(|b| b.1)
            .fold(f64::INFINITY, f64::min);
        Some(recent - base)
    }

    fn on_bin_closed(&mut self) {
        let Some(q) = self.queue_delay() else {
            return;
        };
        if q > ENTER {
            self.above += 1;
            self.below = 0;
            if self.above >= BINS_TO_ENTER && !self.congested {
                tracing::debug!(queue_ms = q * 1000.0, "queue on the path: asking for less");
                self.congested = true;
            }
        } else {
            self.above = 0;
            self.below += 1;
            if self.congested && (q < LEAVE || self.below >= BINS_TO_ENTER) {
                self.congested = false;
                self.drained = true;
            }
        }
    }

    /// The bitrate to ask the sender for now (bit/s), if one is due
    pub(crate) fn poll_request(&mut self, now: Instant) -> Option<u32> {
        self.forget_received(now);
        // No audio for a while: nothing to judge by.
        let fresh = self.origin.is_some_and(|o| {
            self.bins
                .back()
                .is_some_and(|(b, _)| local_secs(now, o) < (*b + 3) as f64 * BIN)
        });
        if !fresh {
            self.congested = false;
            self.above = 0;
        }
        if !self.congested
            || self
                .last_request
                .is_some_and(|t| now.saturating_duration_since(t) < INTERVAL)
        {
            return None;
        }
        let q = self.queue_delay()?;
        let recent: u64 = self
            .received
            .iter()
            .rev()
            .take_while(|(t, _)| *t + RATE_WINDOW >= now)
            .map(|(_, b)| b)
            .sum();
        let rate = recent as f64 * 8.0 / RATE_WINDOW.as_secs_f64();
        let long = self.received_bytes as f64 * 8.0 / LONG_WINDOW.as_secs_f64();
        let share = (1.0 - q / 0.5).clamp(0.5, 0.85);
        self.last_request = Some(now);
        Some((rate * share).max(long * LONG_SHARE).max(1.0) as u32)
    }

    /// Whether the path has a queue now
    pub(crate) fn congested(&self) -> bool {
        self.congested
    }

    /// Whether a queue the guard saw has drained since it was last asked
    pub(crate) fn take_drained(&mut self) -> bool {
        std::mem::take(&mut self.drained)
    }
}

/// How long a request applies as it is before it starts to grow back
const CAP_HOLD: Duration = Duration::from_millis(500);
/// How fast it grows back after that, per second (multiplicative)
const CAP_GROWTH: f64 = 0.15;

/// The sender's side: the receiver's last request, as a limit on the path's estimate
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RemoteCap {
    bps: u32,
    at: Instant,
}

impl RemoteCap {
    /// A request of `bps` received at `at`; a later one replaces an earlier one
    pub(crate) fn new(bps: u32, at: Instant) -> Self {
        Self { bps, at }
    }

    /// The limit at `now`: the request for [`CAP_HOLD`], then growing by [`CAP_GROWTH`]
    /// per second (the receiver asks again while its queue is there)
    pub(crate) fn limit(&self, now: Instant) -> u32 {
        let age = now.saturating_duration_since(self.at);
        let grow = age.saturating_sub(CAP_HOLD).as_secs_f64();
        (f64::from(self.bps) * (1.0 + CAP_GROWTH).powf(grow)).min(f64::from(u32::MAX)) as u32
    }

    /// Whether the request is recent enough to stand as it is
    pub(crate) fn holding(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < CAP_HOLD
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // reason: an arbitrary origin for virtual time

    use super::*;

    /// Feeds 20 ms audio frames (and 1000-byte video frames at 30 fps) whose one-way delay
    /// is `delay(t)`; returns the requests made, with their times
    fn run(secs: f64, delay: impl Fn(f64) -> f64) -> Vec<(f64, u32)> {
        let t0 = Instant::now();
        let mut g = QueueGuard::default();
        let mut out = Vec::new();
        let mut events: Vec<(f64, Option<f64>, usize)> = Vec::new();
        let mut i = 0;
        while (i as f64) * 0.02 < secs {
            let m = i as f64 * 0.02;
            events.push((m + delay(m), Some(m), 80));
            i += 1;
        }
        let mut j = 0;
        while (j as f64) / 30.0 < secs {
            let m = j as f64 / 30.0;
            events.push((m + delay(m), None, 1000));
            j += 1;
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut next_poll = 0.0;
        for (at, media, bytes) in events {
            while next_poll <= at {
                if let Some(bps) = g.poll_request(t0 + Duration::from_secs_f64(next_poll)) {
                    out.push((next_poll, bps));
                }
                next_poll += 0.01;
            }
            let arrival = t0 + Duration::from_secs_f64(at);
            if let Some(m) = media {
                g.handle_audio(arrival, m);
            }
            g.handle_bytes(arrival, bytes);
        }
        out
    }

    #[test]
    fn a_growing_queue_is_reported_within_600_ms_with_what_arrives() {
        // From 5 s the path queues: delay grows by 0.6 s per second (sending 1.6× capacity).
        let reqs = run(8.0, |t| 0.03 + if t > 5.0 { (t - 5.0) * 0.6 } else { 0.0 });
        let first = reqs.first().expect("a request");
        assert!(
            (5.0..5.6).contains(&first.0),
            "first request at {} s",
            first.0
        );
        // Sent: 50 × 108 + 30 × 1028 bytes per second with IP/UDP headers, 290 kbit/s; the
        // queue spreads it to 1/1.6 of that, 181 kbit/s arriving. Once the last half second
        // is all queued, the requests ask for 50–85 % of what arrives.
        let arriving = 290_000.0 / 1.6;
        for (t, bps) in reqs.iter().filter(|(t, _)| *t > 6.0) {
            let share = f64::from(*bps) / arriving;
            assert!((0.45..0.9).contains(&share), "at {t} s: {share}");
        }
        // Asked again while the queue is there, not more often than every 200 ms.
        assert!(reqs.len() >= 10, "{reqs:?}");
        assert!(reqs.windows(2).all(|w| w[1].0 - w[0].0 >= 0.199));
    }

    #[test]
    fn jitter_without_a_queue_asks_for_nothing() {
        // Gaussian-like jitter (σ ≈ 20 ms) from a deterministic sequence, and rare spikes.
        let mut x: u64 = 7;
        let noise: Vec<f64> = (0..40_000)
            .map(|_| {
                // Sum of 12 uniforms: about normal.
                let mut s = 0.0;
                for _ in 0..12 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    s += (x >> 11) as f64 / (1u64 << 53) as f64;
                }
                (s - 6.0) * 0.02
            })
            .collect();
        let reqs = run(120.0, |t| {
            let i = (t * 333.0) as usize % noise.len();
            let spike = if (t * 50.0).round() as i64 % 1500 == 0 {
                0.3
            } else {
                0.0
            };
            0.2 + noise[i] + spike
        });
        assert!(reqs.is_empty(), "{reqs:?}");
    }

    #[test]
    fn a_queue_that_drains_stops_the_requests() {
        let reqs = run(10.0, |t| {
            0.03 + if (5.0..6.0).contains(&t) {
                (t - 5.0) * 0.4
            } else if (6.0..6.8).contains(&t) {
                0.4 - (t - 6.0) * 0.5
            } else {
                0.0
            }
        });
        assert!(!reqs.is_empty());
        let last = reqs.last().unwrap().0;
        assert!(last < 7.0, "still asking at {last} s: {reqs:?}");
    }

    #[test]
    fn a_cap_holds_then_grows_back() {
        let t0 = Instant::now();
        let c = RemoteCap::new(400_000, t0);
        assert_eq!(c.limit(t0 + Duration::from_millis(400)), 400_000);
        assert!(c.holding(t0 + Duration::from_millis(400)));
        let later = c.limit(t0 + Duration::from_millis(1500));
        assert!((455_000..=465_000).contains(&later), "{later}");
        assert!(!c.holding(t0 + Duration::from_millis(1500)));
    }
}
