//! Send-side pushback: our own round-trip probes find a queue before the estimate does
//!
//! str0m's estimate (GoogCC on TWCC feedback) reacts to a capacity drop only once the
//! feedback reporting the queue has come back through that queue: on the Chromium
//! side-by-side (`interop/tests/chromium/rate.rs`) it held its old value for about 3 s while
//! a 60 kB queue overflowed. A meshrtc receiver asks for less at once (REMB, see
//! [`congestion`](crate::congestion)); a browser does not. libwebrtc's answer is its
//! congestion window: bytes sent without feedback above target × RTT stop the encoder within
//! a round trip. str0m does not expose its feedback accounting, so [`Pushback`] measures the
//! round trip itself:
//!
//! - **Probes**: every [`INTERVAL`] (100 ms) while video is sent with rate adaptation on, an
//!   ICE binding request on the path in use (what consent freshness sends, RFC 7675; any ICE
//!   agent answers it, a browser included). The answers are taken out before str0m sees them.
//! - **Round trip now**: the median of the last [`RECENT`] answered probes' round trips, or,
//!   when the last probes go unanswered (three or more in a row), how long the second
//!   oldest of them has waited, once the last answer was late too: a queue that grows
//!   delays every probe, so it shows before their answers come back. A lost probe, or
//!   answers that stop at once, are no queue.
//! - **Queue delay**: that minus the least round trip of the last [`BASE_WINDOW`] (30 s).
//! - **Cap**: above [`HIGH`] (150 ms) and not falling, the cap on the path's estimate drops to
//!   [`DECREASE`] (0.85) of what was sent (or of itself, if lower) per probe: about halved in
//!   half a second. Below [`LOW`] (75 ms) it grows by [`INCREASE`] (3 %) per probe, and goes
//!   once above the estimate. In between it holds (the queue drains).
//!
//! The thresholds leave room for jitter: with one-way Gaussian jitter of σ = 20 ms (the
//! simulator's `jitter-normal`), two of three probes landing 150 ms above the window's least
//! round trip practically never (the unit test runs two minutes of it, with 5 % of the
//! probes lost).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ice::stun::TransactionId;

/// Time between two probes
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
/// Answered probes whose median round trip is the current one
const RECENT: usize = 3;
/// How long the least round trip (the path without a queue) is remembered
const BASE_WINDOW: Duration = Duration::from_secs(30);
/// Width of the bins the least round trip is kept in
const BIN: Duration = Duration::from_secs(1);
/// Queue delay from which the cap falls
const HIGH: Duration = Duration::from_millis(150);
/// ... and below which it grows back
const LOW: Duration = Duration::from_millis(75);
/// A last answer this much above the least round trip: the queue has begun
const RISING: Duration = Duration::from_millis(50);
/// A queue shrinking by at least this since the last probe is draining: the cap holds
const DRAINING: Duration = Duration::from_millis(10);
/// The cap's fall per probe while the queue is high and not draining
const DECREASE: f64 = 0.85;
/// Its growth per probe once the queue is gone
const INCREASE: f64 = 1.03;
/// The cap never goes below this (bit/s): audio, the least video and their headers still
/// fit (below it video would stop altogether; a path narrower than this cannot be helped)
const FLOOR: f64 = 150_000.0;
/// How long each second's median round trip is remembered for telling a standing queue
/// (another flow's, which never drains for long) from the path: longer than
/// [`BASE_WINDOW`], which a queue standing for half a minute would become part of
const FLOOR_WINDOW: Duration = Duration::from_secs(300);
/// An unanswered probe counts as lost after this
const LOST_AFTER: Duration = Duration::from_secs(2);
/// Without answers for this long the cap goes (the probes cannot show a queue)
const FORGET_CAP_AFTER: Duration = Duration::from_secs(5);
/// Probes waiting for an answer, at most
const MAX_OUTSTANDING: usize = 32;

/// Round-trip probes of one peer's path and the cap they put on its estimate
#[derive(Debug, Clone, Default)]
pub(crate) struct Pushback {
    /// When the next probe is due (while probing)
    next: Option<Instant>,
    /// Transaction ids: a per-peer prefix and a counter
    prefix: [u8; 4],
    count: u64,
    /// Probes sent and not answered (their number, when sent), oldest first
    outstanding: VecDeque<(u64, Instant)>,
    /// Round trips of the last answered probes, newest last
    recent: VecDeque<Duration>,
    /// (bin start, least round trip in it) over [`BASE_WINDOW`], oldest first
    bins: VecDeque<(Instant, Duration)>,
    /// The round trips answered in the current second, and when it began
    second: (Option<Instant>, Vec<Duration>),
    /// (second, median round trip in it) over [`FLOOR_WINDOW`], oldest first
    medians: VecDeque<(Instant, Duration)>,
    /// The queue delay at the last probe
    last_queue: Option<Duration>,
    /// When a probe was last answered
    last_answer: Option<Instant>,
    /// The cap on the path's estimate, bit/s
    cap: Option<f64>,
    /// Probes sent and answers matched, for the stats
    pub(crate) sent: u64,
    pub(crate) answered: u64,
}

/// A probe to send: its transaction id on the path the peer's media takes
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) tid: TransactionId,
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
}

impl Pushback {
    /// Probes use transaction ids starting with `prefix` (per peer, from the seed)
    pub(crate) fn new(prefix: [u8; 4]) -> Self {
        Self {
            prefix,
            ..Self::default()
        }
    }

    /// When the next probe is due, if probing
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// Whether to probe: video goes out and rate adaptation is on. Stopping forgets the
    /// cap and what is outstanding (nothing is sent that the cap could protect).
    pub(crate) fn set_active(&mut self, now: Instant, active: bool) {
        match (active, self.next.is_some()) {
            (true, false) => self.next = Some(now),
            (false, true) => {
                self.next = None;
                self.outstanding.clear();
                self.recent.clear();
                self.cap = None;
                self.last_queue = None;
                self.last_answer = None;
            }
            _ => {}
        }
    }

    /// A probe is due at `now`: updates the cap from what the probes show (`sent`: what
    /// went to the peer over the last second, `estimate`: the path's estimate without the
    /// cap, both bit/s) and returns the next probe's transaction id when `path` (the local
    /// and remote address of the path in use) is known
    pub(crate) fn on_timeout(
        &mut self,
        now: Instant,
        sent: Option<u32>,
        estimate: Option<u32>,
        path: Option<(SocketAddr, SocketAddr)>,
    ) -> Option<Probe> {
        let next = self.next?;
        if now < next {
            return None;
        }
        self.next = Some(next.max(now - INTERVAL) + INTERVAL);
        while self
            .outstanding
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) > LOST_AFTER)
        {
            self.outstanding.pop_front();
        }
        self.update_cap(now, sent, estimate);
        let (source, destination) = path?;
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.prefix);
        tid[4..].copy_from_slice(&self.count.to_be_bytes());
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((self.count, now));
        self.count += 1;
        self.sent += 1;
        Some(Probe {
            tid,
            source,
            destination,
        })
    }

    /// Whether `tid` answers one of our probes (then it is consumed and its round trip
    /// taken)
    pub(crate) fn on_answer(&mut self, now: Instant, tid: &TransactionId) -> bool {
        if tid[..4] != self.prefix {
            return false;
        }
        let n = u64::from_be_bytes(tid[4..].try_into().expect("8 bytes"));
        let Some(i) = self.outstanding.iter().position(|(k, _)| *k == n) else {
            return false;
        };
        let (_, at) = self
            .outstanding
            .remove(i)
            .expect("found above; panic means bug");
        let rtt = now.saturating_duration_since(at);
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(rtt);
        keep_least(&mut self.bins, now, rtt, BIN, BASE_WINDOW);
        self.keep_median(now, rtt);
        self.last_answer = Some(now);
        self.answered += 1;
        true
    }

    /// Whether a STUN answer with `tid` could be ours (cheap test before the lookup)
    pub(crate) fn owns(&self, tid: &TransactionId) -> bool {
        tid[..4] == self.prefix && !self.outstanding.is_empty()
    }

    /// The queue on the path at `now` as the probes show it
    pub(crate) fn queue_delay(&self, now: Instant) -> Option<Duration> {
        // Probes nobody answers any more (the remote ignores or refuses them, or the path
        // is gone, which recovery sees to) say nothing about a queue.
        self.last_answer
            .filter(|at| now.saturating_duration_since(*at) <= LOST_AFTER)?;
        let base = self.bins.iter().map(|(_, rtt)| *rtt).min()?;
        // The median of the last three: one late answer is jitter.
        let mut recent: Vec<Duration> = self.recent.iter().copied().collect();
        recent.sort();
        let answered = recent.get(recent.len().saturating_sub(1) / 2).copied();
        // The run of unanswered probes at the tail (the last ones sent, none answered):
        // three or more mean the path holds them. The second oldest of the run says how
        // long: the oldest may be lost (with jitter, a lost probe and a late one after it
        // are common; two late ones are not).
        let waiting = self
            .outstanding
            .iter()
            .rev()
            .zip((0..self.count).rev())
            .take_while(|((k, at), want)| {
                k == want && now.saturating_duration_since(*at) <= LOST_AFTER
            })
            .count();
        // Answers that stop at once are no queue either (a queue delays them a little more
        // each time): the run counts only once the last answer came late too.
        let rising = self.recent.back().is_some_and(|last| *last > base + RISING);
        let waited = (waiting >= 3 && rising)
            .then(|| self.outstanding[self.outstanding.len() - waiting + 1].1)
            .map(|at| now.saturating_duration_since(at));
        let rtt = answered.into_iter().chain(waited).max()?;
        Some(rtt.saturating_sub(base))
    }

    /// Forgets the round trips measured (the media moved to another path)
    pub(crate) fn forget_round_trips(&mut self) {
        self.recent.clear();
        self.bins.clear();
        self.second = (None, Vec::new());
        self.medians.clear();
        self.last_queue = None;
    }

    /// Adds round trip `rtt` at `now` to the current second, closing it (its median kept
    /// over [`FLOOR_WINDOW`]) when a new one begins
    fn keep_median(&mut self, now: Instant, rtt: Duration) {
        let (start, samples) = &mut self.second;
        if let Some(at) = *start {
            if now.saturating_duration_since(at) >= BIN {
                samples.sort();
                if let Some(m) = samples.get(samples.len() / 2) {
                    self.medians.push_back((at, *m));
                }
                samples.clear();
                *start = None;
            }
        }
        if start.is_none() {
            *start = Some(now);
        }
        samples.push(rtt);
        while self
            .medians
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > FLOOR_WINDOW)
        {
            self.medians.pop_front();
        }
    }

    /// The queue that stood on the path over the last `span`: the mean over its seconds of
    /// each second's median round trip, less the least such median of the last
    /// [`FLOOR_WINDOW`]. A queue of ours drains within a second or two of our sending less;
    /// one that a loss-based flow keeps full drains only when that flow halves its window.
    /// Medians of a second, not single round trips, so that jitter reads as little queue:
    /// with σ = 20 ms of one-way jitter each way, the mean of ten medians stood up to 36 ms
    /// above the least of two minutes of them (the unit test below). A lowest tenth instead
    /// of the least would halve that, but then a loss-based flow that started a few seconds
    /// into the call sets the floor too. `None` until answers cover most of `span` and the
    /// floor is older than it (a path measured only with a queue on it has no floor to
    /// compare with).
    pub(crate) fn standing_queue(&self, now: Instant, span: Duration) -> Option<Duration> {
        let oldest = self.medians.front()?.0;
        if now.saturating_duration_since(oldest) < span
            || self
                .last_answer
                .is_none_or(|at| now.saturating_duration_since(at) > BIN * 2)
        {
            return None;
        }
        let floor = self.medians.iter().map(|(_, rtt)| *rtt).min()?;
        let since = now.checked_sub(span)?;
        // The medians are oldest first: the span's are the last ones.
        let (n, sum) = self
            .medians
            .iter()
            .rev()
            .take_while(|(t, _)| *t >= since)
            .fold((0u32, Duration::ZERO), |(n, sum), (_, rtt)| {
                (n + 1, sum + rtt.saturating_sub(floor))
            });
        let covered = n * BIN * 10 >= span * 6;
        covered.then(|| sum / n)
    }

    /// The cap on the path's estimate, bit/s
    pub(crate) fn cap(&self) -> Option<u32> {
        self.cap.map(|c| c as u32)
    }

    fn update_cap(&mut self, now: Instant, sent: Option<u32>, estimate: Option<u32>) {
        let Some(queue) = self.queue_delay(now) else {
            // No answers for a while: no cap on a path we cannot measure.
            if self
                .last_answer
                .is_none_or(|at| now.saturating_duration_since(at) > FORGET_CAP_AFTER)
            {
                self.cap = None;
            }
            return;
        };
        let draining = self.last_queue.is_some_and(|last| queue + DRAINING <= last);
        self.last_queue = Some(queue);
        if queue > HIGH && !draining {
            let from = match (self.cap, sent) {
                (Some(c), Some(s)) => c.min(f64::from(s)),
                (Some(c), None) => c,
                (None, Some(s)) => f64::from(s),
                (None, None) => return,
            };
            let cap = (from * DECREASE).max(FLOOR);
            tracing::debug!(
                queue_ms = queue.as_millis(),
                sent = sent.unwrap_or(0),
                cap = cap as u64,
                "pushback: a queue builds"
            );
            self.cap = Some(cap);
        } else if queue < LOW {
            if let Some(c) = self.cap {
                let grown = c * INCREASE;
                self.cap = match estimate {
                    Some(e) if grown >= f64::from(e) => {
                        tracing::debug!(estimate = e, "pushback: cap lifted");
                        None
                    }
                    _ => Some(grown),
                };
            }
        }
    }
}

/// Adds round trip `rtt` at `now` to `bins` of width `bin` (each holding its least) and
/// forgets the bins older than `window`
fn keep_least(
    bins: &mut VecDeque<(Instant, Duration)>,
    now: Instant,
    rtt: Duration,
    bin: Duration,
    window: Duration,
) {
    while bins
        .front()
        .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
    {
        bins.pop_front();
    }
    match bins.back_mut() {
        Some((t, least)) if now.saturating_duration_since(*t) < bin => *least = (*least).min(rtt),
        _ => bins.push_back((now, rtt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> Option<(SocketAddr, SocketAddr)> {
        Some(("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap()))
    }

    /// Runs probes every interval for `secs` from a fresh `Pushback` (`prefix`): each is
    /// answered after `rtt(t)` unless that is `None` (lost); returns it, the cap after each
    /// probe and the standing queue of the last 10 s then
    #[allow(clippy::type_complexity)] // reason: a test helper's result, read field by field
    fn run(
        prefix: u8,
        secs: f64,
        sent: u32,
        mut rtt: impl FnMut(f64) -> Option<f64>,
    ) -> (
        Pushback,
        Vec<(f64, Option<u32>)>,
        Vec<(f64, Option<Duration>)>,
    ) {
        #[allow(clippy::disallowed_methods)] // reason: anchor for virtual time
        let start = Instant::now();
        let mut p = Pushback::new([prefix; 4]);
        let mut answers: Vec<(Instant, TransactionId)> = Vec::new();
        let mut caps = Vec::new();
        let mut standing = Vec::new();
        let mut t = start;
        let end = start + Duration::from_secs_f64(secs);
        p.set_active(start, true);
        while t < end {
            answers.sort_by_key(|a| a.0);
            let due = p.poll_timeout().unwrap();
            while let Some(&(at, tid)) = answers.first().filter(|a| a.0 <= due) {
                answers.remove(0);
                assert!(p.on_answer(at, &tid));
            }
            t = due;
            if let Some(probe) = p.on_timeout(t, Some(sent), Some(4_000_000), path()) {
                let s = (t - start).as_secs_f64();
                if let Some(r) = rtt(s) {
                    answers.push((t + Duration::from_secs_f64(r), probe.tid));
                }
            }
            caps.push(((t - start).as_secs_f64(), p.cap()));
            let span = Duration::from_secs(10);
            standing.push(((t - start).as_secs_f64(), p.standing_queue(t, span)));
        }
        (p, caps, standing)
    }

    fn normal(rng: &mut fastrand::Rng) -> f64 {
        // Box-Muller
        let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    #[test]
    fn jitter_and_lost_probes_alone_never_cap() {
        let mut rng = fastrand::Rng::with_seed(5);
        // Two minutes: 50 ms round trip, each way Gaussian jitter of σ = 20 ms, 5 % of
        // probes lost.
        let (p, caps, standing) = run(1, 120.0, 1_000_000, |_| {
            if rng.f64() < 0.05 {
                return None;
            }
            let one = |rng: &mut fastrand::Rng| (0.025 + 0.02 * normal(rng)).max(0.0);
            Some(one(&mut rng) + one(&mut rng))
        });
        let capped: Vec<_> = caps.iter().filter(|(_, c)| c.is_some()).collect();
        assert!(
            capped.is_empty(),
            "capped at {:?}",
            &capped[..capped.len().min(5)]
        );
        assert!(p.answered > 1000);
        // Nor does it read as a standing queue of 40 ms (another flow's, to `compete.rs`).
        let most = standing.iter().filter_map(|(_, s)| *s).max().unwrap();
        assert!(most < Duration::from_millis(40), "{most:?}");
    }

    #[test]
    fn probes_nobody_answers_never_cap() {
        // Answered for 5 s, then never again (a remote that stops answering).
        let (_, caps, _) = run(7, 20.0, 1_000_000, |t| (t < 5.0).then_some(0.02));
        assert!(caps.iter().all(|(_, c)| c.is_none()), "{caps:?}");
    }

    #[test]
    fn a_growing_queue_caps_within_a_few_probes_and_the_cap_goes_once_it_drains() {
        // 20 ms round trip for 10 s; then a queue growing 1.4 s per second (1.2 Mbit/s into
        // 500 kbit/s) up to 1 s, held for 3 s, drained in 1 s, then none.
        let (_, caps, _) = run(9, 30.0, 1_200_000, |t| {
            let q = if t < 10.0 {
                0.0
            } else if t < 10.7 {
                (t - 10.0) * 1.4
            } else if t < 13.7 {
                0.98
            } else if t < 14.7 {
                0.98 * (14.7 - t)
            } else {
                0.0
            };
            Some(0.02 + q)
        });
        let first = caps
            .iter()
            .find(|(_, c)| c.is_some())
            .expect("never capped");
        // The queue passes 150 ms 0.11 s after it starts; it shows a round trip (and up to
        // two probes) later.
        assert!(
            first.0 > 10.2 && first.0 < 10.65,
            "first cap at {:?}",
            first
        );
        // Halved within a second of the start: below 600 kbit/s by 11 s.
        let at_11 = caps.iter().find(|(t, _)| *t >= 11.0).unwrap();
        assert!(at_11.1.unwrap() < 600_000, "{at_11:?}");
        // Never below the floor.
        assert!(caps.iter().all(|(_, c)| c.is_none_or(|c| c >= 80_000)));
        // Gone once the queue has drained and the cap grew past the estimate again.
        let last = caps.last().unwrap();
        assert_eq!(last.1, None, "{last:?}");
    }

    #[test]
    fn a_queue_kept_full_by_a_loss_based_flow_stands() {
        // 40 ms round trip for 12 s; then a TCP-like sawtooth: the queue climbs from 10 to
        // 150 ms over 3 s and falls back at once, again and again.
        let mut rng = fastrand::Rng::with_seed(3);
        let (_, _, standing) = run(11, 60.0, 100_000, |t| {
            let q = if t < 12.0 {
                0.0
            } else {
                0.01 + 0.14 * ((t - 12.0) % 3.0) / 3.0
            };
            Some(0.04 + q + 0.002 * normal(&mut rng).abs())
        });
        let at = |s: f64| standing.iter().find(|(t, _)| *t >= s).unwrap().1;
        // Not before the floor is 10 s old, and no queue in the first seconds.
        assert_eq!(at(5.0), None);
        assert!(
            at(11.0).unwrap() < Duration::from_millis(5),
            "{:?}",
            at(11.0)
        );
        // Once the span holds only the sawtooth: its mean, about 80 ms.
        for s in [23.0, 35.0, 59.0] {
            let q = at(s).unwrap();
            assert!(
                q > Duration::from_millis(60) && q < Duration::from_millis(100),
                "{s}: {q:?}"
            );
        }
    }

    #[test]
    fn another_path_forgets_the_round_trips() {
        let (mut p, _, _) = run(13, 30.0, 100_000, |_| Some(0.02));
        #[allow(clippy::disallowed_methods)] // reason: anchor for virtual time
        let now = Instant::now() + Duration::from_secs(31);
        let span = Duration::from_secs(10);
        assert_eq!(p.standing_queue(now, span), Some(Duration::ZERO));
        p.forget_round_trips();
        assert_eq!(p.standing_queue(now, span), None);
    }
}
