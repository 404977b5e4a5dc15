//! How much data-channel data the core hands str0m at once, per peer
//!
//! str0m (through sctp-proto) keeps every unacknowledged DATA chunk in a queue that it
//! walks on each poll, so a poll costs more the more bytes are in flight. Handing it all
//! that its buffer takes (a 256 KiB message plus 64 KiB) slows a fast, short link down: on
//! loopback a third of the sender's time went into those walks. A long link, though, needs
//! that much in flight to fill its bandwidth-delay product.
//!
//! So the window is probed, the way a congestion controller probes a path: it starts at
//! [`MIN_WINDOW`]; while it is what limits the sender, it doubles, and keeps the doubling
//! only if the rate at which str0m's buffer drains (the remote acknowledging) grew with it.
//! On a long link the rate follows the window up to the path's limit; on a fast short link
//! the rate is bounded by CPU and a bigger window only costs, so the window falls back.
//! Every so often it probes again: up, and down by halves for as long as the rate holds,
//! so a changed path is followed and a window that grew during a ramp-up comes back.

use std::time::{Duration, Instant};

/// The smallest window: about 30 packets in flight, which on loopback measured best (16 KiB
/// and 64 KiB floors were slower with 1 KiB messages)
pub(crate) const MIN_WINDOW: usize = 32 * 1024;

/// A rate sample spans at least this long (a loopback round trip is far shorter, and a
/// sample of a few packets is noise)
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// A sample spans at least this many round trips, so that a changed window shows in it
const PERIOD_RTTS: u32 = 2;

/// A bigger window is kept if the rate grew by at least this factor
const GROWTH: f64 = 1.25;

/// A smaller window is kept if the rate stayed above this share of the last one
const KEEP: f64 = 0.9;

/// Periods between probes once the window has settled
const PROBE_EVERY: u32 = 16;

/// What the current sample period is finding out
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Measuring the rate of a settled window
    Steady { periods: u32 },
    /// The window was doubled from `from`, which achieved `rate`
    ProbingUp { from: usize, rate: f64 },
    /// The window was halved from `from`, which achieved `rate`
    ProbingDown { from: usize, rate: f64 },
}

/// The adaptive limit of one peer's buffered data-channel bytes
#[derive(Debug, Clone)]
pub(crate) struct SendWindow {
    max: usize,
    limit: usize,
    phase: Phase,
    /// Bytes that have left str0m's buffer (acknowledged by the remote), in total
    delivered: u64,
    /// The buffered amount after our last writes
    buffered: usize,
    /// Start of the sample period and `delivered` then
    sample: Option<(Instant, u64)>,
    /// Whether the window held a message back during this sample period
    limited: bool,
    /// Smoothed round-trip time, if known
    rtt: Option<Duration>,
}

impl SendWindow {
    /// A window that never grows past `max` (str0m's buffer size)
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            limit: MIN_WINDOW.min(max),
            phase: Phase::Steady { periods: 0 },
            delivered: 0,
            buffered: 0,
            sample: None,
            limited: false,
            rtt: None,
        }
    }

    /// Takes a round-trip time measurement (it sets how long a rate sample lasts)
    pub(crate) fn handle_rtt(&mut self, rtt: Duration) {
        self.rtt = Some(match self.rtt {
            Some(s) => (s * 7 + rtt) / 8,
            None => rtt,
        });
    }

    /// Notes str0m's buffered amount before writing at `now`; ends a sample period when due
    pub(crate) fn update(&mut self, now: Instant, buffered: usize) {
        self.delivered += self.buffered.saturating_sub(buffered) as u64;
        self.buffered = buffered;
        let Some((start, delivered_then)) = self.sample else {
            self.sample = Some((now, self.delivered));
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        let period = self
            .rtt
            .map_or(MIN_PERIOD, |r| (r * PERIOD_RTTS).max(MIN_PERIOD));
        if elapsed < period {
            return;
        }
        let rate = (self.delivered - delivered_then) as f64 / elapsed.as_secs_f64();
        self.end_period(rate);
        self.sample = Some((now, self.delivered));
        self.limited = false;
    }

    fn end_period(&mut self, rate: f64) {
        self.phase = match self.phase {
            // An application sending less than the window allows says nothing about the
            // path: wait until the window limits again.
            Phase::Steady { .. } if !self.limited => Phase::Steady { periods: 0 },
            Phase::Steady { periods } => {
                if periods == 0 && self.limit < self.max {
                    self.probe_up(rate)
                } else if periods >= PROBE_EVERY && self.limit > MIN_WINDOW {
                    let from = self.limit;
                    self.limit = (self.limit / 2).max(MIN_WINDOW);
                    Phase::ProbingDown { from, rate }
                } else if periods >= PROBE_EVERY {
                    self.probe_up(rate)
                } else {
                    Phase::Steady {
                        periods: periods + 1,
                    }
                }
            }
            Phase::ProbingUp { from, rate: before } => {
                if rate >= before * GROWTH && self.limit < self.max && self.limited {
                    self.probe_up(rate)
                } else if rate >= before * GROWTH {
                    Phase::Steady { periods: 1 }
                } else {
                    self.limit = from;
                    Phase::Steady { periods: 1 }
                }
            }
            Phase::ProbingDown { from, rate: before } => {
                if rate < before * KEEP {
                    self.limit = from;
                    Phase::Steady { periods: 1 }
                } else if self.limit > MIN_WINDOW && self.limited {
                    // Half did as well: try half of that (a window that grew while a
                    // connection ramped up comes back down in a few periods).
                    let from = self.limit;
                    self.limit = (self.limit / 2).max(MIN_WINDOW);
                    Phase::ProbingDown {
                        from,
                        rate: before.max(rate),
                    }
                } else {
                    Phase::Steady { periods: 1 }
                }
            }
        };
    }

    fn probe_up(&mut self, rate: f64) -> Phase {
        let from = self.limit;
        self.limit = (self.limit * 2).min(self.max);
        Phase::ProbingUp { from, rate }
    }

    /// Whether another message may be written now: while the buffer is below the window,
    /// whatever its size (str0m refuses what its buffer cannot hold)
    ///
    /// Letting a message overshoot keeps messages larger than the window pipelined: were a
    /// message let in only where it fits, such messages would go one at a time, each
    /// waiting for the acknowledgement of its last packet, which SCTP may delay by 200 ms.
    pub(crate) fn admits(&mut self) -> bool {
        let ok = self.buffered < self.limit;
        self.limited |= !ok;
        ok
    }

    /// Notes `len` bytes written to str0m
    pub(crate) fn wrote(&mut self, len: usize) {
        self.buffered += len;
    }

    /// The current limit in bytes
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // reason: tests anchor virtual time at a real instant
mod tests {
    use super::*;

    const MAX: usize = 320 * 1024;
    /// The model's time step: short enough that refilling once per step never limits
    const STEP: Duration = Duration::from_micros(100);

    /// A sender that always has data, over a path whose delivery rate (bytes/s) for a given
    /// window is `rate_of`; returns the window after each millisecond for `ms` milliseconds
    fn run(rtt: Duration, ms: usize, rate_of: impl Fn(usize) -> f64) -> Vec<usize> {
        let start = Instant::now();
        let mut w = SendWindow::new(MAX);
        w.handle_rtt(rtt);
        let mut buffered = 0usize;
        let mut limits = Vec::new();
        for i in 0..ms * 10 {
            let now = start + STEP * i as u32;
            // Capacity not used in a step (nothing buffered) is lost, as on a real link.
            let carried = rate_of(w.limit()) * STEP.as_secs_f64();
            buffered -= (carried as usize).min(buffered);
            w.update(now, buffered);
            while w.admits() {
                w.wrote(1024);
                buffered += 1024;
            }
            if i % 10 == 9 {
                limits.push(w.limit());
            }
        }
        limits
    }

    /// A long path: the rate is the window per round trip, up to the path's bandwidth
    fn long_path(rtt: Duration, bandwidth: f64) -> impl Fn(usize) -> f64 {
        move |w| (w as f64 / rtt.as_secs_f64()).min(bandwidth)
    }

    /// A loopback whose CPU is the bottleneck: a bigger window only slows it down
    fn cpu_bound(w: usize) -> f64 {
        60e6 - (w as f64 - MIN_WINDOW as f64) * 50.0
    }

    #[test]
    fn a_cpu_bound_loopback_keeps_the_window_at_the_floor() {
        let limits = run(Duration::from_micros(200), 2000, cpu_bound);
        let at_floor = limits.iter().filter(|&&l| l == MIN_WINDOW).count();
        assert!(at_floor * 10 >= limits.len() * 9, "{limits:?}");
        assert_eq!(*limits.last().expect("limits"), MIN_WINDOW);
    }

    #[test]
    fn a_long_path_opens_the_window_to_the_buffer_within_a_few_round_trips() {
        // 100 ms at 10 MB/s: 1 MB in flight would be needed, more than str0m buffers.
        let rtt = Duration::from_millis(100);
        let limits = run(rtt, 3000, long_path(rtt, 10e6));
        let full = limits.iter().position(|&l| l == MAX).expect("window opens");
        assert!(full <= 1000, "took {full} ms");
        assert!(limits[full..].iter().all(|&l| l >= MAX / 2), "{limits:?}");
    }

    #[test]
    fn a_medium_path_settles_where_it_is_filled() {
        // 20 ms at 5 MB/s: 100 kB in flight fill it; 64 KiB does not, 128 KiB does.
        let rtt = Duration::from_millis(20);
        let limits = run(rtt, 4000, long_path(rtt, 5e6));
        let late = &limits[2000..];
        // Probing down to 64 KiB now and then is the price of following a changing path.
        let filled = late.iter().filter(|&&l| l >= 128 * 1024).count();
        assert!(filled * 10 >= late.len() * 9, "{late:?}");
        let shrunk_back = late.iter().filter(|&&l| l <= 128 * 1024).count();
        assert!(shrunk_back * 2 >= late.len(), "{late:?}");
    }

    #[test]
    fn an_application_sending_little_leaves_the_window_alone() {
        let start = Instant::now();
        let mut w = SendWindow::new(MAX);
        for i in 0..1000u32 {
            // One 1 KiB message per millisecond, acknowledged at once.
            w.update(start + STEP * i, 0);
            assert!(w.admits());
            w.wrote(1024);
        }
        assert_eq!(w.limit(), MIN_WINDOW);
    }

    #[test]
    fn a_message_may_overshoot_the_window_but_the_next_waits() {
        let mut w = SendWindow::new(MAX);
        assert!(w.admits());
        w.wrote(256 * 1024);
        assert!(!w.admits());
        w.update(Instant::now(), MIN_WINDOW - 1);
        assert!(w.admits());
    }
}
