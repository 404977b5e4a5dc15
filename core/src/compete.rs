//! Holding a share against loss-based flows: a loss-driven rate while a queue stands
//!
//! str0m's estimator (GoogCC's trendline) backs off whenever queueing delay grows. Against a
//! loss-based flow (TCP Reno or Cubic: a download beside the call) that is a losing game:
//! such a flow fills the bottleneck's queue until it overflows, whatever we send, so every
//! rise of its window reads as our overuse and the estimate sinks to the floor (the
//! simulator's `rate-competing-flows`: two calls held 121 and 122 kbit/s of a 3 Mbit/s link
//! beside one AIMD flow at 2758). libwebrtc has the same weakness; its adaptive threshold
//! only softens it.
//!
//! [`Competition`] notices such a flow by what it leaves behind and then lets loss, not
//! delay, set the rate, as the loss-based flow does:
//!
//! - **At our floor**: str0m's estimate has been at most [`AT_FLOOR`] times the estimate at
//!   which every target is at its floor, for [`AT_FLOOR_FOR`] (5 s). We have backed off as
//!   far as we can.
//! - **...and still a standing queue**: our round-trip probes (see
//!   [`pushback`](crate::pushback)) show a queue of [`ENTER_QUEUE`] (40 ms) or more on
//!   average over the last [`SPAN`] (10 s), measured from the lowest one-second median
//!   round trip of the last five minutes. A queue of ours would have drained with our
//!   backing off; one that stands while we send next to nothing is another flow's. (After
//!   the capacity step's drop our estimate stays well above the floor.)
//! - **Rate**: from str0m's estimate, driven by the loss the peer reports (the mean of its
//!   reports over the last [`LOSS_WINDOW`]), as a loss-based flow's is: below [`LOSS_LOW`]
//!   (1 %) the target grows by 8 % plus [`GROWTH_ADD`] per second (a TCP flow's window grows
//!   by a packet per round trip, about 1 Mbit/s per second at 100 ms), to at most 1.5 times
//!   what we sent over the last second; up to [`LOSS_HIGH`]
//!   (3 %) it holds; above, it is cut to [`CUT`] (0.7, Cubic's) of itself, at most once per
//!   [`CUT_EVERY`] (the reports of a cut take that long to come in). Never below our floor.
//!   While competing, this target *is* the path's estimate: str0m's, the receiver's requests
//!   and our pushback all see the other flow's queue as ours. Tried and dropped: GoogCC's
//!   loss bands (hold up to 10 %, then −loss/2 per second): the two calls took 1.2 and
//!   0.9 Mbit/s but lost 5–10 % of their packets, and video froze; the TCP throughput
//!   equation (RFC 5348) fed the fraction of packets lost settled at 200 kbit/s against the
//!   AIMD flow's 1.7 Mbit/s.
//! - **Enforcing it**: str0m paces media at 1.1 × its own estimate, so a target above that
//!   would wait in str0m's pacer, and one below would not hold the pacer back. While str0m's
//!   estimate is more than a tenth off the target, the estimator is reset to the target, at
//!   most once per [`RESET_EVERY`] (300 ms; str0m 0.24 has no other way to set its
//!   estimate). Each reset starts str0m's initial probes again, at up to twice the desired
//!   bitrate: while competing, the desired bitrate is at most the target. (Resets once a
//!   second with the desired bitrate left alone: str0m's own estimate fell between resets
//!   and held video in its pacer, and probes at up to 4.8 Mbit/s went into the full queue;
//!   over seeds 4–10 audio p50 was 177–660 ms against 173–202 now, video p95 412–1224 ms
//!   against 294–1083.)
//! - **Checking it**: if the queue of the last [`RECENT`] grows [`OWN_QUEUE`] (100 ms) above
//!   the one we began at, it grows with our rate: it was ours after all (a path narrower
//!   than our floor, a cellular fade). We stop, put str0m's estimator back where it was, and
//!   do not try again for 30 s, doubling up to five minutes. A full drop-tail queue is
//!   bounded by its size, which the loss-based flow kept full already.
//! - **Leaving**: once the standing queue is below [`LEAVE_QUEUE`] (the other flow is gone)
//!   or our probes stop, str0m's estimate alone is the path's again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The span over which a queue must have stood
pub(crate) const SPAN: Duration = Duration::from_secs(10);
/// The span over which a queue that grows with our rate is seen
pub(crate) const RECENT: Duration = Duration::from_secs(3);
/// str0m's estimate counts as at our floor up to this multiple of it ...
const AT_FLOOR: f64 = 1.5;
/// ... and must have been there this long before we compete
const AT_FLOOR_FOR: Duration = Duration::from_secs(5);
/// A queue this much above the one we began to compete at grew with our rate: ours
const OWN_QUEUE: Duration = Duration::from_millis(100);
/// How long competing waits after finding the queue to be ours, at first ...
const FIRST_HOLD_OFF: Duration = Duration::from_secs(30);
/// ... and at most (it doubles each time)
const LAST_HOLD_OFF: Duration = Duration::from_secs(300);
/// Standing queue from which a loss-based flow is taken to share the path
const ENTER_QUEUE: Duration = Duration::from_millis(40);
/// ... and below which it is gone
const LEAVE_QUEUE: Duration = Duration::from_millis(20);
/// Span of the loss reports that count
const LOSS_WINDOW: Duration = Duration::from_secs(2);
/// Below this loss the target grows ...
const LOSS_LOW: f64 = 0.01;
/// ... above this it falls (GoogCC's loss-based bands)
const LOSS_HIGH: f64 = 0.03;
/// Growth of the target per second: this share of it ...
const GROWTH: f64 = 0.08;
/// ... plus this much (bit/s): GoogCC's 8 % alone took 15 s from 100 kbit/s to a third of
/// 3 Mbit/s
const GROWTH_ADD: f64 = 100_000.0;
/// The target grows to at most this multiple of what was sent
const SENT_CAP: f64 = 1.5;
/// Above [`LOSS_HIGH`] the target is cut to this share of itself (TCP Cubic's) ...
const CUT: f64 = 0.7;
/// ... at most this often: the loss reports of one cut must have come in
const CUT_EVERY: Duration = Duration::from_secs(2);
/// Least time between two resets of str0m's estimator
const RESET_EVERY: Duration = Duration::from_millis(300);
/// str0m's estimate is reset when below this share of the target (or above its inverse)
const RESET_BELOW: f64 = 0.9;

/// Whether a loss-based flow shares one peer's path, and the rate we hold against it
#[derive(Debug, Clone, Default)]
pub(crate) struct Competition {
    /// Loss the peer reported (fraction of our packets) and when, over [`SPAN`]
    losses: VecDeque<(Instant, f32)>,
    /// While competing: the target (bit/s) and when it was last updated
    target: Option<(f64, Instant)>,
    /// When str0m's estimator was last reset
    last_reset: Option<Instant>,
    /// Since when str0m's estimate has been at our floor (not competing)
    low_since: Option<Instant>,
    /// The standing queue and str0m's estimate when we began to compete
    entry: (Duration, u32),
    /// When the target was last cut for loss
    last_cut: Option<Instant>,
    /// str0m's estimate to restore at once (the queue was ours after all)
    restore: Option<u32>,
    /// No competing before this (the last try found the queue to be ours), and how long
    /// that hold-off was
    hold_off: Option<Instant>,
    backoff: Duration,
}

/// What one peer's path shows at one moment
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathView {
    /// The queue that stood over the last [`SPAN`] (see
    /// [`Pushback::standing_queue`](crate::pushback::Pushback::standing_queue))
    pub(crate) standing: Option<Duration>,
    /// ... and over the last [`RECENT`]
    pub(crate) recent: Option<Duration>,
    /// str0m's estimate, bit/s
    pub(crate) estimate: Option<u32>,
    /// What we sent the peer over the last second, bit/s
    pub(crate) sent: Option<u32>,
    /// The estimate at which every target is at its floor, bit/s
    pub(crate) floor: u32,
}

impl Competition {
    /// The peer reported `fraction` of our packets lost (an RTCP receiver report)
    pub(crate) fn note_loss(&mut self, now: Instant, fraction: f32) {
        self.forget_losses(now);
        self.losses.push_back((now, fraction.clamp(0.0, 1.0)));
    }

    fn forget_losses(&mut self, now: Instant) {
        while self
            .losses
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > SPAN)
        {
            self.losses.pop_front();
        }
    }

    /// The mean of the loss reports of the last [`LOSS_WINDOW`]
    fn loss(&self, now: Instant) -> Option<f64> {
        let recent = self
            .losses
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= LOSS_WINDOW);
        let (n, sum) = recent.fold((0, 0.0), |(n, sum), (_, l)| (n + 1, sum + f64::from(*l)));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// Re-decides at `now` from what the path shows (see [`PathView`])
    pub(crate) fn update(&mut self, now: Instant, path: PathView) {
        self.forget_losses(now);
        let loss = self.loss(now);
        let PathView {
            standing,
            recent,
            estimate,
            sent,
            floor,
        } = path;
        let (Some(standing), Some(estimate)) = (standing, estimate) else {
            self.leave("no round trips");
            self.low_since = None;
            return;
        };
        match self.target {
            None => {
                let low = f64::from(estimate) <= f64::from(floor) * AT_FLOOR;
                self.low_since = if low {
                    self.low_since.or(Some(now))
                } else {
                    None
                };
                let held_low = self
                    .low_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= AT_FLOOR_FOR);
                let held_off = self.hold_off.is_some_and(|t| now < t);
                if standing >= ENTER_QUEUE && held_low && !held_off {
                    tracing::debug!(
                        standing_ms = standing.as_millis(),
                        loss = format!("{:.3}", loss.unwrap_or(0.0)),
                        estimate,
                        "rate: a queue stands while we send at our floor: competing"
                    );
                    self.target = Some((f64::from(estimate), now));
                    self.entry = (standing, estimate);
                    self.last_cut = None;
                }
            }
            Some(_) if standing < LEAVE_QUEUE => {
                self.leave("the queue drained");
                self.backoff = Duration::ZERO;
            }
            Some(_) if recent.is_some_and(|r| r > self.entry.0 + OWN_QUEUE) => {
                // The queue grew with our rate: it was ours (a path narrower than our floor
                // that filled as we sent more), not another flow's. str0m's estimator goes
                // back to where it was at once.
                self.backoff = (self.backoff * 2).clamp(FIRST_HOLD_OFF, LAST_HOLD_OFF);
                self.hold_off = Some(now + self.backoff);
                self.low_since = None;
                self.restore = Some(self.entry.1);
                self.leave("the queue grew with our rate");
            }
            Some((target, at)) => {
                let dt = now.saturating_duration_since(at).as_secs_f64().min(1.0);
                let l = loss.unwrap_or(0.0);
                let cut_due = self
                    .last_cut
                    .is_none_or(|t| now.saturating_duration_since(t) >= CUT_EVERY);
                let next = if l < LOSS_LOW {
                    // Not beyond what we can show the path carries (GoogCC caps its
                    // increases at 1.5 × what was acknowledged): a target our encoders do
                    // not reach says nothing, and on a path that was ours after all it
                    // would be a burst waiting to happen.
                    let cap = f64::from(sent.unwrap_or(0)) * SENT_CAP + 10_000.0;
                    (target + (target * GROWTH + GROWTH_ADD) * dt).min(cap.max(target))
                } else if l <= LOSS_HIGH || !cut_due {
                    target
                } else {
                    self.last_cut = Some(now);
                    target * CUT
                };
                let next = next.max(f64::from(floor));
                tracing::trace!(
                    target = next as u32,
                    loss = format!("{l:.3}"),
                    standing_ms = standing.as_millis(),
                    "rate: competing"
                );
                self.target = Some((next, now));
            }
        }
    }

    fn leave(&mut self, why: &str) {
        if self.target.take().is_some() {
            tracing::debug!(why, "rate: no longer competing");
        }
    }

    /// While competing, the rate held (bit/s)
    pub(crate) fn target(&self) -> Option<u32> {
        self.target.map(|(t, _)| t.min(f64::from(u32::MAX)) as u32)
    }

    /// The bitrate to reset str0m's estimator to at `now`: the estimate it had when we began,
    /// at once, after finding the queue to be ours; while competing, the target, when its
    /// `estimate` is more than a tenth off it and the last reset is [`RESET_EVERY`] old
    pub(crate) fn reset_due(&mut self, now: Instant, estimate: Option<u32>) -> Option<u32> {
        if let Some(bps) = self.restore.take() {
            self.last_reset = Some(now);
            return Some(bps);
        }
        let target = self.target()?;
        let lags = estimate.is_none_or(|e| {
            let ratio = f64::from(e) / f64::from(target.max(1));
            !(RESET_BELOW..=1.0 / RESET_BELOW).contains(&ratio)
        });
        let due = self
            .last_reset
            .is_none_or(|t| now.saturating_duration_since(t) >= RESET_EVERY);
        (lags && due).then(|| {
            self.last_reset = Some(now);
            target
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // reason: an arbitrary origin for virtual time

    use super::*;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    /// A path at 140 ms with a standing queue of `standing` ms (the same over the recent
    /// span unless `recent` says otherwise) and str0m's estimate at `estimate`; our floor
    /// is 100 kbit/s
    fn view(standing: u64, recent: u64, estimate: u32) -> PathView {
        PathView {
            standing: ms(standing),
            recent: ms(recent),
            estimate: Some(estimate),
            sent: None,
            floor: 100_000,
        }
    }

    /// Runs `c` from `from` to `to` seconds every 250 ms with `loss` reported and the path
    /// `view(t)`; returns the resets asked for
    fn run(
        c: &mut Competition,
        t0: Instant,
        (from, to): (f64, f64),
        loss: f32,
        view: impl Fn(f64) -> PathView,
    ) -> Vec<(f64, u32)> {
        let mut resets = Vec::new();
        let mut s = from;
        while s < to {
            let now = t0 + Duration::from_secs_f64(s);
            c.note_loss(now, loss);
            let mut v = view(s);
            // We send what the target allows (its usable share), unless told otherwise.
            v.sent = v
                .sent
                .or_else(|| Some((f64::from(c.target().or(v.estimate)?) * 0.85) as u32));
            c.update(now, v);
            if let Some(r) = c.reset_due(now, v.estimate) {
                resets.push((s, r));
            }
            s += 0.25;
        }
        resets
    }

    #[test]
    fn a_standing_queue_while_we_send_above_our_floor_is_ours() {
        // A capacity drop: str0m's estimate at twice our floor, the queue slow to drain.
        let t0 = Instant::now();
        let mut c = Competition::default();
        let resets = run(&mut c, t0, (0.0, 60.0), 0.02, |_| view(120, 120, 200_000));
        assert_eq!((resets, c.target()), (vec![], None));
    }

    #[test]
    fn a_queue_that_stands_while_we_are_at_our_floor_is_competed_for_and_left_when_it_drains() {
        let t0 = Instant::now();
        let mut c = Competition::default();
        // str0m's estimate sits at 120 kbit/s under an 80 ms queue; 0.5 % of our packets
        // lost.
        let resets = run(&mut c, t0, (0.0, 10.0), 0.005, |_| view(80, 80, 120_000));
        // After 5 s at the floor the target grows by 8 % and 100 kbit/s a second; str0m's
        // estimator is reset to it at most every 300 ms.
        let (first, _) = resets[0];
        assert!((5.0..6.5).contains(&first), "{resets:?}");
        assert!(
            resets.windows(2).all(|w| w[1].0 - w[0].0 >= 0.3),
            "{resets:?}"
        );
        let at_10 = c.target().unwrap();
        assert!((650_000..850_000).contains(&at_10), "{resets:?}");
        // 2 % lost: it holds (once the reports of the last 2 s say so).
        run(&mut c, t0, (10.0, 12.0), 0.02, |_| view(80, 80, 120_000));
        let held = c.target().unwrap();
        run(&mut c, t0, (12.0, 15.0), 0.02, |_| view(80, 80, 120_000));
        assert_eq!(c.target(), Some(held));
        // 20 % lost: cut to 0.7 at once, and not again until that cut's reports are in.
        run(&mut c, t0, (15.0, 16.75), 0.2, |_| view(80, 80, 120_000));
        let cut = c.target().unwrap();
        assert_eq!(cut, (f64::from(held) * CUT) as u32);
        run(&mut c, t0, (16.75, 17.5), 0.2, |_| view(80, 80, 120_000));
        assert!(c.target().unwrap() < cut, "{:?}", c.target());
        // str0m's estimator, reset to the held target before, follows it down.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(c.reset_due(later, Some(held)), c.target());
        // The other flow leaves: the queue drains, str0m's estimate is the path's again.
        run(&mut c, t0, (30.0, 30.5), 0.0, |_| view(10, 10, 120_000));
        assert_eq!(c.target(), None);
        assert_eq!(
            c.reset_due(t0 + Duration::from_secs(40), Some(120_000)),
            None
        );
    }

    #[test]
    fn a_queue_that_grows_with_our_rate_ends_the_competing_for_a_while() {
        let t0 = Instant::now();
        let mut c = Competition::default();
        // A path narrower than it looked: once we send more, its queue grows by 50 ms a
        // second.
        let grows = |t: f64| view(80, 80 + (((t - 12.0).max(0.0)) * 50.0) as u64, 120_000);
        let resets = run(&mut c, t0, (0.0, 20.0), 0.0, grows);
        assert_eq!(c.target(), None);
        let last = resets.last().unwrap().0;
        assert!((12.0..15.0).contains(&last), "{resets:?}");
        // Held off for 30 s, though the queue stands again.
        let resets = run(&mut c, t0, (20.0, 50.0), 0.0, |_| view(80, 80, 120_000));
        assert!(resets.iter().all(|(t, _)| *t >= 44.0), "{resets:?}");
        assert!(!resets.is_empty());
    }

    #[test]
    fn the_target_does_not_run_away_from_what_we_send() {
        // Encoders stuck at 150 kbit/s: the target stops at 1.5 times that.
        let t0 = Instant::now();
        let mut c = Competition::default();
        let stuck = |_| PathView {
            sent: Some(150_000),
            ..view(80, 80, 120_000)
        };
        run(&mut c, t0, (0.0, 30.0), 0.0, stuck);
        assert_eq!(c.target(), Some(235_000));
    }

    #[test]
    fn never_below_our_floor() {
        let t0 = Instant::now();
        let mut c = Competition::default();
        run(&mut c, t0, (0.0, 30.0), 0.5, |_| view(200, 200, 140_000));
        assert_eq!(c.target(), Some(100_000));
    }
}
