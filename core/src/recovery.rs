//! When and how a connection to one peer heals: ICE restarts, full reconnects, a circuit
//! breaker
//!
//! A sans-IO policy, one per remote peer. The peer tells it what happens to its path
//! (`handle_up`, `handle_down`, `handle_dead`) and whether signaling can carry an
//! offer; [`Recovery::poll_action`] says what to do now, [`Recovery::poll_timeout`] when to
//! ask again.
//!
//! * **ICE restart** (the path is gone, the DTLS and SCTP state is not): after
//!   [`RecoveryConfig::restart_grace`] of a broken path, then again while it stays broken,
//!   at intervals doubling from the grace up to [`RecoveryConfig::max_restart_interval`]
//!   (shorter than the time a restart's connectivity checks keep running, so some checks
//!   are always in flight and a repaired path is found within a check interval), each with
//!   jitter.
//! * **Full reconnect** (a new `Rtc`, DTLS and data channel): when the connection is dead
//!   (DTLS closed, SCTP aborted, the first connect never came up); attempts back off
//!   exponentially from [`RecoveryConfig::reconnect_backoff`]'s initial wait to its maximum,
//!   with jitter. While the path is merely down, only ICE restarts run: a new connection
//!   started during an outage would back its own DTLS retransmissions off and come up
//!   late. When a path comes back after [`RecoveryConfig::reconnect_after`] or more with
//!   reliable data still unconfirmed, the participant replaces the connection at once (SCTP
//!   has backed its retransmissions off to tens of seconds by then); what the old one may
//!   not have delivered is reported, never lost silently.
//! * **Circuit breaker**: after [`RecoveryConfig::breaker_failures`] full reconnects in a row
//!   that did not come up, stop for [`RecoveryConfig::breaker_cooldown`] (open), then try once
//!   (half-open): up closes it, another failure opens it again. A peer that is really gone
//!   costs a try per cool-down, until the server says it left.
//!
//! Nothing happens while signaling is down (an offer could not be delivered); what is due
//! then happens as soon as it is back.

use std::time::{Duration, Instant};

use crate::session::Backoff;

/// How a peer's connection is healed
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecoveryConfig {
    /// How long a path may be broken before the first ICE restart (default 2 s)
    pub restart_grace: Duration,
    /// The longest wait between two ICE restarts of one outage (default 15 s: str0m's
    /// checks of one restart keep going for about 19 s)
    pub max_restart_interval: Duration,
    /// An outage at least this long that ends with reliable data unconfirmed gets a new
    /// connection at once instead of waiting for SCTP's backed-off retransmission
    /// (default 5 s)
    pub reconnect_after: Duration,
    /// Waits between full reconnect attempts (default 1 s doubling to 30 s, with jitter)
    pub reconnect_backoff: Backoff,
    /// Full reconnects in a row that fail before the circuit opens (default 5)
    pub breaker_failures: u32,
    /// How long an open circuit waits before one more try (default 60 s)
    pub breaker_cooldown: Duration,
    /// How long a full reconnect may take to come up before it counts as failed
    /// (default 15 s)
    pub attempt_timeout: Duration,
    /// A connection the remote closed (DTLS close) is replaced only after this long
    /// (default 1 s): a remote that closes is leaving (the server's `peer.left` is on its
    /// way) or replacing the connection itself (its offer is on its way)
    pub closed_grace: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            restart_grace: Duration::from_secs(2),
            max_restart_interval: Duration::from_secs(15),
            reconnect_after: Duration::from_secs(5),
            reconnect_backoff: Backoff::default(),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(15),
            closed_grace: Duration::from_secs(1),
        }
    }
}

/// What to do for a peer now
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Renegotiate with new ICE credentials on the same `Rtc` (with fresh local candidates
    /// after a network change)
    IceRestart,
    /// Replace the `Rtc` and offer afresh
    Reconnect,
}

/// The circuit breaker's state, as stats report it
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CircuitState {
    /// Recovery runs normally
    #[default]
    Closed,
    /// Too many failures: nothing is tried until the cool-down ends
    Open,
    /// One try after a cool-down; its outcome closes or re-opens the circuit
    HalfOpen,
}

/// One peer's recovery policy
#[derive(Debug)]
pub(crate) struct Recovery {
    config: RecoveryConfig,
    rng: fastrand::Rng,
    /// When the path broke (None while it is up)
    down_since: Option<Instant>,
    /// The connection cannot come back by itself (a new `Rtc` is needed)
    dead: bool,
    /// ICE restarts in this outage
    restarts: u32,
    next_restart: Option<Instant>,
    /// Full reconnects in a row that did not come up
    failures: u32,
    next_reconnect: Option<Instant>,
    /// A full reconnect in progress: when it started
    attempt: Option<Instant>,
    circuit: CircuitState,
    /// The cool-down of an open circuit ends
    reopen_at: Option<Instant>,
}

impl Recovery {
    pub(crate) fn new(config: RecoveryConfig, seed: u64) -> Self {
        Self {
            config,
            rng: fastrand::Rng::with_seed(seed),
            down_since: None,
            dead: false,
            restarts: 0,
            next_restart: None,
            failures: 0,
            next_reconnect: None,
            attempt: None,
            circuit: CircuitState::Closed,
            reopen_at: None,
        }
    }

    /// The path works (ICE connected and traffic flowing); returns how long it was broken
    pub(crate) fn handle_up(&mut self, now: Instant) -> Option<Duration> {
        let was = self.down_since.take();
        self.dead = false;
        self.restarts = 0;
        self.next_restart = None;
        self.next_reconnect = None;
        self.attempt = None;
        self.failures = 0;
        self.circuit = CircuitState::Closed;
        self.reopen_at = None;
        was.map(|t| now.saturating_duration_since(t))
    }

    /// When the current outage began, if there is one
    pub(crate) fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    /// An outage that began at `since` goes on over a new connection (the old one came back
    /// but was replaced): coming up reports it, nothing is scheduled
    pub(crate) fn continue_outage(&mut self, since: Instant) {
        self.down_since = Some(since);
        self.next_restart = None;
    }

    /// The path is broken (ICE disconnected, or nothing heard for too long)
    pub(crate) fn handle_down(&mut self, now: Instant) {
        if self.down_since.is_some() {
            return;
        }
        self.down_since = Some(now);
        self.restarts = 0;
        self.next_restart = Some(now + self.config.restart_grace);
    }

    /// The local network changed (an address came or went): the path is as good as broken
    /// and an ICE restart is due at once (the caller does it now if it can: `restarted`)
    pub(crate) fn handle_network_change(&mut self, now: Instant, restarted: bool) {
        self.down_since.get_or_insert(now);
        if self.dead {
            return;
        }
        if restarted {
            self.restarts += 1;
            self.next_restart = Some(now + self.restart_interval());
        } else {
            self.next_restart = Some(now);
        }
    }

    /// The wait after a restart before the next one, if the path is still broken
    fn restart_interval(&mut self) -> Duration {
        let interval = self
            .config
            .restart_grace
            .saturating_mul(1 << self.restarts.min(16))
            .min(self.config.max_restart_interval);
        // Up to a fifth earlier, so that both sides do not restart in lockstep.
        interval.mul_f64(1.0 - 0.2 * self.rng.f64())
    }

    /// The connection cannot recover on its own (DTLS closed, SCTP gone, never came up):
    /// a full reconnect is due, at once or, when the remote closed it, after
    /// [`RecoveryConfig::closed_grace`]
    pub(crate) fn handle_dead(&mut self, now: Instant, closed_by_remote: bool) {
        self.down_since.get_or_insert(now);
        if self.dead {
            return;
        }
        self.dead = true;
        self.next_restart = None;
        if self.attempt.is_none() && self.next_reconnect.is_none() && self.reopen_at.is_none() {
            let wait = if closed_by_remote {
                self.config.closed_grace
            } else {
                Duration::ZERO
            };
            self.next_reconnect = Some(now + wait);
        }
    }

    /// The circuit breaker's state
    pub(crate) fn circuit(&self) -> CircuitState {
        self.circuit
    }

    /// What to do now, if anything; the caller does it (or cannot, and calls again later)
    ///
    /// `signaling` says whether an offer can be delivered now: nothing is due without it.
    pub(crate) fn poll_action(&mut self, now: Instant, signaling: bool) -> Option<Action> {
        self.down_since?;
        // A full reconnect that did not come up in time is a failure.
        if let Some(started) = self.attempt {
            if now >= started + self.config.attempt_timeout {
                self.attempt = None;
                self.fail(now);
            }
        }
        if let Some(at) = self.reopen_at {
            if now < at {
                return None;
            }
            self.reopen_at = None;
            self.circuit = CircuitState::HalfOpen;
            self.next_reconnect = Some(now);
        }
        if !signaling {
            return None;
        }
        if self.next_reconnect.is_some_and(|t| now >= t) {
            self.next_reconnect = None;
            self.attempt = Some(now);
            self.next_restart = None;
            return Some(Action::Reconnect);
        }
        if self.next_restart.is_some_and(|t| now >= t) {
            self.restarts += 1;
            let wait = self.restart_interval();
            self.next_restart = Some(now + wait);
            return Some(Action::IceRestart);
        }
        None
    }

    /// When [`poll_action`](Self::poll_action) may have something to do
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.down_since?;
        [
            self.next_restart,
            self.next_reconnect,
            self.reopen_at,
            self.attempt.map(|t| t + self.config.attempt_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn fail(&mut self, now: Instant) {
        self.failures += 1;
        if self.circuit == CircuitState::HalfOpen || self.failures >= self.config.breaker_failures {
            self.circuit = CircuitState::Open;
            self.reopen_at = Some(now + self.config.breaker_cooldown);
            self.next_reconnect = None;
            return;
        }
        let wait = self
            .config
            .reconnect_backoff
            .delay(self.failures - 1, &mut self.rng);
        self.next_reconnect = Some(now + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    /// Runs the policy from `from` to `to` at 10 ms steps; returns the actions with times
    fn run(
        r: &mut Recovery,
        from: Instant,
        to: Instant,
        signaling: bool,
    ) -> Vec<(Duration, Action)> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= to {
            while let Some(a) = r.poll_action(now, signaling) {
                out.push((now - from, a));
            }
            now += Duration::from_millis(10);
        }
        out
    }

    #[test]
    fn a_broken_path_gets_restarts_after_a_grace_then_spaced_up_to_the_bound() {
        let start = t0();
        let mut r = Recovery::new(RecoveryConfig::default(), 1);
        r.handle_down(start);
        let actions = run(&mut r, start, start + Duration::from_secs(29), true);
        let times: Vec<f64> = actions
            .iter()
            .map(|(t, a)| {
                assert_eq!(*a, Action::IceRestart);
                t.as_secs_f64()
            })
            .collect();
        assert!((times[0] - 2.0).abs() < 0.02, "{times:?}");
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g <= 15.0 && *g >= 3.1), "{gaps:?}");
        // Never a tight loop: a handful in 29 s.
        assert!(times.len() <= 6, "{times:?}");
    }

    #[test]
    fn a_long_outage_only_restarts_ice() {
        let start = t0();
        let mut r = Recovery::new(RecoveryConfig::default(), 2);
        r.handle_down(start);
        let actions = run(&mut r, start, start + Duration::from_secs(300), true);
        assert!(actions.iter().all(|(_, a)| *a == Action::IceRestart));
        // About one per 12-15 s once spaced out: some checks are always in flight.
        assert!(
            actions.len() >= 20 && actions.len() <= 26,
            "{}",
            actions.len()
        );
    }

    #[test]
    fn dead_connections_back_off_then_the_breaker_opens() {
        let start = t0();
        let mut r = Recovery::new(RecoveryConfig::default(), 2);
        r.handle_dead(start, false);
        let actions = run(&mut r, start, start + Duration::from_secs(400), true);
        let reconnects: Vec<f64> = actions
            .iter()
            .filter(|(_, a)| *a == Action::Reconnect)
            .map(|(t, _)| t.as_secs_f64())
            .collect();
        assert!(reconnects[0] < 0.02, "{reconnects:?}");
        // Each attempt times out after 15 s, then backs off (0.5-1 s, 1-2 s, ...).
        let gaps: Vec<f64> = reconnects.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= 15.5 && gaps[0] <= 16.0, "{gaps:?}");
        assert!(gaps[1] >= 16.0 && gaps[1] <= 17.0, "{gaps:?}");
        // After 5 failures the circuit opens for 60 s, then one half-open try, which fails
        // and opens it again.
        let fifth_fails = reconnects[4] + 15.0;
        assert!(
            (reconnects[5] - (fifth_fails + 60.0)).abs() < 0.05,
            "{reconnects:?}"
        );
        assert!(
            (reconnects[6] - (reconnects[5] + 15.0 + 60.0)).abs() < 0.05,
            "{reconnects:?}"
        );
        // No restarts on a dead connection.
        assert!(actions.iter().all(|(_, a)| *a == Action::Reconnect));
    }

    #[test]
    fn coming_up_resets_everything_and_reports_the_outage() {
        let start = t0();
        let mut r = Recovery::new(RecoveryConfig::default(), 3);
        r.handle_down(start);
        run(&mut r, start, start + Duration::from_secs(100), true);
        let after = r.handle_up(start + Duration::from_secs(100));
        assert_eq!(after, Some(Duration::from_secs(100)));
        assert_eq!(r.circuit(), CircuitState::Closed);
        assert!(r.poll_timeout().is_none());
        assert!(r
            .poll_action(start + Duration::from_secs(101), true)
            .is_none());
    }

    #[test]
    fn nothing_happens_without_signaling_and_what_is_due_happens_when_it_returns() {
        let start = t0();
        let mut r = Recovery::new(RecoveryConfig::default(), 4);
        r.handle_down(start);
        assert!(run(&mut r, start, start + Duration::from_secs(10), false).is_empty());
        let back = start + Duration::from_secs(10);
        assert_eq!(r.poll_action(back, true), Some(Action::IceRestart));
    }

    #[test]
    fn a_dead_connection_reconnects_at_once() {
        let start = t0();
        let mut r = Recovery::new(RecoveryConfig::default(), 5);
        r.handle_dead(start, false);
        assert_eq!(r.poll_action(start, true), Some(Action::Reconnect));
        assert_eq!(r.poll_action(start, true), None);
    }

    /// A connection the remote closed: it is leaving (the server's word is on its way) or
    /// offering anew; nothing is tried within the grace, a reconnect after it, and coming
    /// up (the remote's new connection) cancels it
    #[test]
    fn a_connection_the_remote_closed_waits_the_grace() {
        let start = t0();
        let config = RecoveryConfig::default();
        let mut r = Recovery::new(config, 6);
        r.handle_dead(start, true);
        let grace_end = start + config.closed_grace;
        let early = run(&mut r, start, grace_end - Duration::from_millis(10), true);
        assert!(early.is_empty(), "{early:?}");
        assert_eq!(r.poll_timeout(), Some(grace_end));
        assert_eq!(r.poll_action(grace_end, true), Some(Action::Reconnect));

        let mut r = Recovery::new(config, 7);
        r.handle_dead(start, true);
        r.handle_up(start + Duration::from_millis(300));
        let late = run(&mut r, start, start + Duration::from_secs(5), true);
        assert!(late.is_empty(), "{late:?}");
    }
}
