//! The participant's one UDP socket: host, server-reflexive and relayed candidates,
//! demultiplexing STUN/TURN server traffic, wrapping relayed sends
//!
//! [`Transport`] is the glue between a [`Participant`](crate::Participant) and its
//! [`Gatherer`]. The participant calls it at a few places and carries out what it asks
//! ([`Action`]); everything ICE-server related is decided here:
//!
//! ```text
//!  driver: add_local_candidate ──> add_local_address ──> host candidates (policy, loopback)
//!  join ──> configured ice_servers ─┬─ literal IP ──> Gatherer::add_server
//!  announce result "ice_servers" ───┘─ name ──> Action::Resolve ──> driver ──> resolved()
//!  socket ──> receive ─┬─ a server's answer: consumed
//!                      ├─ relayed peer data: unwrapped, as if from the peer ──> str0m
//!                      └─ anything else: unchanged ──> str0m
//!  str0m transmit ──> route ──> unchanged, or wrapped for the TURN server (or held)
//!  leave ──> close ──> allocations released (at most CLOSE_GRACE) ──> is_closed
//! ```
//!
//! Gathering is complete when every server answered or failed and no name is being
//! resolved; peers created before that get their end-of-candidates then
//! ([`Action::EndOfCandidates`]), later ones at once.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::Candidate;

use crate::config::{CandidatePolicy, Config};
use crate::error::CommandError;
use crate::event::Event;
use crate::ice::{
    CandidateType, GatherConfig, GatherError, GatherEvent, Gatherer, IceServer, IceServerProblem,
    IceTransportPolicy, LoopbackPolicy, Received, Resolution, Scheme, ServerEndpoint, MAX_SERVERS,
};
use crate::shared::{Receive, Transmit};
use crate::signal::PeerId;
use crate::stats::{CandidatePair, IceStats};

/// How long leaving waits for TURN allocations to be released before the socket may close
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Remote candidate addresses whose signaled types are remembered (to name selected pairs)
const MAX_REMOTE_TYPES: usize = 256;

/// What the transport asks its participant to do
#[derive(Debug)]
pub(crate) enum Action {
    /// Send this datagram
    Transmit(Transmit),
    /// A new local candidate: add it to every peer's `Rtc` and trickle it
    Candidate(Candidate),
    /// Gathering is complete: send end-of-candidates to these peers
    EndOfCandidates(Vec<PeerId>),
    /// A local candidate stopped working: invalidate it in every `Rtc`
    CandidateLost(Candidate),
    /// Tell the application
    Event(Event),
    /// Ask the driver to resolve these servers' names
    Resolve(Vec<ServerEndpoint>),
}

/// Where leaving stands
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// `close` was called; the release starts at the next call that brings the time
    Asked,
    /// Releasing until the deadline
    Releasing {
        deadline: Instant,
    },
    Closed,
}

/// The participant's ICE transport (see the module docs)
#[derive(Debug)]
pub(crate) struct Transport {
    gatherer: Gatherer,
    policy: IceTransportPolicy,
    candidate_policy: CandidatePolicy,
    /// Configured servers, asked when joining
    configured: Vec<IceServer>,
    /// `join` happened; the configured servers are added at the next call with a time
    start_pending: bool,
    started: bool,
    /// Every server and resolution answered (or failed)
    complete: bool,
    /// Names handed to the driver, not answered yet
    resolving: Vec<ServerEndpoint>,
    /// Server addresses in use with what to call them in events
    names: Vec<(SocketAddr, Scheme, String)>,
    locals: Vec<SocketAddr>,
    /// Signaled remote candidates' types, oldest first
    remote_types: VecDeque<(SocketAddr, CandidateType)>,
    /// Peers created while gathering: they get end-of-candidates when it completes
    awaiting_end: BTreeSet<PeerId>,
    actions: VecDeque<Action>,
    closing: Closing,
    /// The latest time any call brought
    now: Instant,
    server_failures: u64,
    relays_lost: u64,
}

impl Transport {
    pub(crate) fn new(config: &Config, now: Instant) -> Self {
        let loopback = match config.candidate_policy {
            CandidatePolicy::LoopbackOnly => LoopbackPolicy::Only,
            // An address the driver gives is offered, loopback or not: drivers that bind the
            // wildcard leave loopback interfaces out themselves, as browsers do.
            CandidatePolicy::Any => LoopbackPolicy::Include,
        };
        let gatherer = Gatherer::new(GatherConfig {
            policy: config.ice_policy,
            loopback,
            // STUN transaction ids are not secrets: seeded, so a simulation replays.
            seed: config.seed ^ 0x1ce5_7a7e,
            ..GatherConfig::default()
        });
        Self {
            gatherer,
            policy: config.ice_policy,
            candidate_policy: config.candidate_policy,
            configured: config.ice_servers.clone(),
            start_pending: false,
            started: false,
            complete: false,
            resolving: Vec::new(),
            names: Vec::new(),
            locals: Vec::new(),
            remote_types: VecDeque::new(),
            awaiting_end: BTreeSet::new(),
            actions: VecDeque::new(),
            closing: Closing::Open,
            now,
            server_failures: 0,
            relays_lost: 0,
        }
    }

    /// A local address of the socket (one per interface; the socket's port): a host
    /// candidate unless the policies leave it out
    pub(crate) fn add_local_address(&mut self, addr: SocketAddr) -> Result<(), CommandError> {
        let ip = addr.ip();
        if ip.is_unspecified() || ip.is_multicast() || addr.port() == 0 {
            return Err(CommandError::BadLocalAddress {
                addr,
                detail: "not a specific unicast address with a port".into(),
            });
        }
        if !self.locals.contains(&addr) {
            self.locals.push(addr);
        }
        // Whether it is offered is the policies' business; either way its traffic to STUN
        // and TURN servers can leave from it.
        self.gatherer.add_local_address(addr);
        Ok(())
    }

    /// A local address went away (the host moved): its host candidate is no longer offered
    /// to peers created or restarted from now on
    ///
    /// Server-reflexive and relayed candidates learned through it are kept until their
    /// servers stop answering (gathering again for a new network is not done yet).
    pub(crate) fn remove_local_address(&mut self, addr: SocketAddr) {
        self.locals.retain(|a| *a != addr);
        self.gatherer.remove_local_address(addr);
    }

    /// Joining: the configured servers are asked at the next call that brings the time
    pub(crate) fn start(&mut self) {
        if self.started || self.closing != Closing::Open {
            return;
        }
        if self.configured.is_empty() {
            // Nothing to ask: the host candidates are all there is (until an announce
            // result names servers).
            self.started = true;
            if self.policy == IceTransportPolicy::Relay {
                tracing::warn!("relay-only ice policy without configured turn servers");
            }
        } else {
            self.start_pending = true;
        }
    }

    /// Leaving: releases every TURN allocation (best effort, at most [`CLOSE_GRACE`])
    pub(crate) fn close(&mut self) {
        if self.closing != Closing::Open {
            return;
        }
        self.start_pending = false;
        self.resolving.clear();
        self.closing = if self.names.is_empty() {
            // No server was ever used: nothing to release.
            Closing::Closed
        } else {
            Closing::Asked
        };
    }

    /// Whether leaving is done: allocations released, or the grace ran out (the socket may
    /// close)
    pub(crate) fn is_closed(&self) -> bool {
        self.closing == Closing::Closed
    }

    /// Catches up with what waited for a time: starting, closing, the release deadline
    fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.start_pending {
            self.start_pending = false;
            self.started = true;
            let servers = std::mem::take(&mut self.configured);
            self.add_ice_servers(now, &servers);
        }
        match self.closing {
            Closing::Asked => {
                self.gatherer.close(now);
                self.closing = Closing::Releasing {
                    deadline: now + CLOSE_GRACE,
                };
            }
            Closing::Releasing { deadline } if now >= deadline => {
                tracing::debug!("ice: turn allocations not confirmed released; closing anyway");
                self.closing = Closing::Closed;
            }
            _ => {}
        }
    }

    /// Adds servers (configured ones, or those of an announce result): literal addresses
    /// at once, names through the driver
    pub(crate) fn add_ice_servers(&mut self, now: Instant, servers: &[IceServer]) {
        self.tick(now);
        if self.closing != Closing::Open {
            return;
        }
        let mut lookups = Vec::new();
        for server in servers.iter().take(MAX_SERVERS) {
            let endpoints = match server.endpoints() {
                Ok(e) => e,
                Err(e) => {
                    self.fail(server.urls.join(" "), IceServerProblem::BadUrl(e));
                    continue;
                }
            };
            for ep in endpoints {
                match ep.url.socket_addr() {
                    Some(addr) => {
                        let name = ep.url.to_string();
                        self.add_server(now, &ep, addr, name);
                    }
                    None => {
                        let known = self.resolving.contains(&ep) || lookups.contains(&ep);
                        if !known && self.resolving.len() + lookups.len() < MAX_SERVERS {
                            lookups.push(ep);
                        }
                    }
                }
            }
        }
        if !lookups.is_empty() {
            self.complete = false;
            self.resolving.extend(lookups.iter().cloned());
            self.actions.push_back(Action::Resolve(lookups));
        }
    }

    /// The `ice_servers` of an announce result (signaling contract, version 2), at most
    /// [`MAX_SERVERS`] of them
    pub(crate) fn add_announced_servers(&mut self, now: Instant, servers: &[IceServer]) {
        let n = servers.len().min(MAX_SERVERS);
        self.add_ice_servers(now, &servers[..n]);
    }

    /// The driver's answers to an [`Action::Resolve`]
    pub(crate) fn resolved(&mut self, now: Instant, answers: Vec<Resolution>) {
        self.tick(now);
        for answer in answers {
            let Some(i) = self.resolving.iter().position(|e| *e == answer.endpoint) else {
                // Not asked for (or asked before leaving): ignored.
                continue;
            };
            let ep = self.resolving.swap_remove(i);
            match answer.addrs {
                Ok(addrs) => {
                    // The first address of a family the socket has; else the first (which
                    // then fails clearly for want of a local address).
                    let pick = addrs
                        .iter()
                        .find(|a| self.locals.iter().any(|l| l.is_ipv4() == a.is_ipv4()))
                        .or(addrs.first())
                        .copied();
                    match pick {
                        Some(addr) => {
                            let addr = SocketAddr::new(addr.ip().to_canonical(), ep.url.port);
                            let name = format!("{} ({addr})", ep.url);
                            self.add_server(now, &ep, addr, name);
                        }
                        None => self.fail(
                            ep.url.to_string(),
                            IceServerProblem::Unresolvable("no address".into()),
                        ),
                    }
                }
                Err(why) => {
                    let why: String = why.chars().take(200).collect();
                    self.fail(ep.url.to_string(), IceServerProblem::Unresolvable(why));
                }
            }
        }
    }

    fn add_server(&mut self, now: Instant, ep: &ServerEndpoint, addr: SocketAddr, name: String) {
        let resolved = ep.resolved(addr);
        match self.gatherer.add_server(now, resolved) {
            Ok(()) => {
                let scheme = ep.url.scheme;
                let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                let known = self
                    .names
                    .iter()
                    .any(|(a, s, _)| *a == addr && *s == scheme);
                if !known && self.names.len() < 2 * MAX_SERVERS {
                    self.names.push((addr, scheme, name));
                }
                if self.gatherer.is_gathering() {
                    self.complete = false;
                }
            }
            Err(GatherError::TooManyServers) => self.fail(name, IceServerProblem::TooManyServers),
            // Leaving: nothing more to gather.
            Err(_) => {}
        }
    }

    fn fail(&mut self, server: String, problem: IceServerProblem) {
        self.server_failures += 1;
        tracing::warn!(%server, %problem, "ice server failed");
        self.actions
            .push_back(Action::Event(Event::IceServerFailed { server, problem }));
    }

    fn name_of(&self, addr: SocketAddr, scheme: Scheme) -> String {
        self.names
            .iter()
            .find(|(a, s, _)| *a == addr && *s == scheme)
            .map_or_else(|| addr.to_string(), |(_, _, n)| n.clone())
    }

    /// A datagram from the socket: `None` when it was a STUN/TURN server's (consumed), else
    /// what str0m gets (unwrapped when a TURN server relayed it)
    pub(crate) fn receive<'a>(&mut self, now: Instant, recv: Receive<'a>) -> Option<Receive<'a>> {
        self.now = self.now.max(now);
        match self
            .gatherer
            .handle_receive(now, recv.source, recv.destination, recv.contents)
        {
            Received::Passthrough => Some(recv),
            Received::Consumed => None,
            Received::Relayed {
                source,
                destination,
                contents,
            } => Some(Receive {
                source,
                destination,
                contents,
            }),
        }
    }

    /// A datagram str0m wants sent: unchanged (moved), or wrapped for its TURN server when it
    /// leaves from a relayed candidate; `None` when held for a permission (it comes out as
    /// an [`Action::Transmit`] later) or dropped (counted)
    pub(crate) fn route(&mut self, now: Instant, t: Transmit) -> Option<Transmit> {
        self.now = self.now.max(now);
        let d = crate::ice::Datagram {
            source: t.source,
            destination: t.destination,
            contents: t.contents,
        };
        self.gatherer.route(now, d).map(|d| Transmit {
            source: d.source,
            destination: d.destination,
            contents: d.contents,
        })
    }

    /// A remote candidate line (trickled, or early): TURN channels towards it are bound at
    /// once, so that the first connectivity checks through a relay are not lost
    pub(crate) fn add_remote_line(&mut self, now: Instant, line: &str) {
        if let Ok(Some(c)) = crate::peer::parse_candidate(line) {
            self.add_remote_candidate(now, &c);
        }
    }

    /// The candidates of a remote description (`a=candidate` lines)
    pub(crate) fn add_remote_description(&mut self, now: Instant, sdp: &str) {
        for line in sdp.lines().filter(|l| l.starts_with("a=candidate:")) {
            self.add_remote_line(now, line);
        }
    }

    fn add_remote_candidate(&mut self, now: Instant, c: &Candidate) {
        self.now = self.now.max(now);
        let addr = SocketAddr::new(c.addr().ip().to_canonical(), c.addr().port());
        if !self.candidate_policy.allows(addr) {
            return;
        }
        if !self.remote_types.iter().any(|(a, _)| *a == addr) {
            if self.remote_types.len() >= MAX_REMOTE_TYPES {
                self.remote_types.pop_front();
            }
            self.remote_types.push_back((addr, c.kind().into()));
        }
        if self.closing == Closing::Open {
            self.gatherer.add_remote_candidate(now, addr);
        }
    }

    /// Every local candidate found so far (for an `Rtc` created now)
    pub(crate) fn candidates(&self) -> impl Iterator<Item = &Candidate> + '_ {
        self.gatherer.candidates()
    }

    /// Whether a peer created now gets its end-of-candidates at once; if not, it gets it
    /// with [`Action::EndOfCandidates`] when gathering completes
    pub(crate) fn end_of_candidates_now(&mut self, peer: &PeerId) -> bool {
        if self.complete || self.closing != Closing::Open {
            return true;
        }
        self.awaiting_end.insert(peer.clone());
        false
    }

    /// The selected pair between two addresses, with their candidate types
    pub(crate) fn pair(&self, local: SocketAddr, remote: SocketAddr) -> CandidatePair {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let remote_type = self
            .remote_types
            .iter()
            .find(|(a, _)| *a == canonical(remote))
            .map_or(CandidateType::Prflx, |(_, t)| *t);
        CandidatePair {
            local,
            remote,
            local_type: self.gatherer.local_type(canonical(local)),
            remote_type,
        }
    }

    /// The next thing to do; `None` when there is nothing
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.pump();
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] is due
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.start_pending || self.closing == Closing::Asked {
            return Some(self.now);
        }
        let release = match self.closing {
            Closing::Releasing { deadline } => Some(deadline),
            _ => None,
        };
        let gatherer = match self.closing {
            Closing::Closed => None,
            _ => self.gatherer.poll_timeout(),
        };
        match (gatherer, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: retransmissions, refreshes, starting and closing
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        if self.closing != Closing::Closed && self.gatherer.poll_timeout().is_some_and(|t| t <= now)
        {
            self.gatherer.handle_timeout(now);
        }
    }

    /// Moves the gatherer's outputs into actions
    fn pump(&mut self) {
        while let Some(d) = self.gatherer.poll_transmit() {
            self.actions.push_back(Action::Transmit(Transmit {
                source: d.source,
                destination: d.destination,
                contents: d.contents,
            }));
        }
        while let Some(e) = self.gatherer.poll_event() {
            match e {
                GatherEvent::Candidate(c) => {
                    tracing::debug!(candidate = %c.to_sdp_string(), "ice: local candidate");
                    self.actions.push_back(Action::Candidate(c));
                }
                GatherEvent::CandidateLost {
                    candidate,
                    server,
                    reason,
                } => {
                    self.relays_lost += 1;
                    let name = self.name_of(server, Scheme::Turn);
                    tracing::warn!(server = %name, %reason, "ice: relayed candidate lost");
                    self.actions.push_back(Action::CandidateLost(candidate));
                    self.actions
                        .push_back(Action::Event(Event::IceServerFailed {
                            server: name,
                            problem: IceServerProblem::RelayLost(reason),
                        }));
                }
                GatherEvent::ServerFailed {
                    server,
                    scheme,
                    reason,
                } => {
                    let name = self.name_of(server, scheme);
                    self.fail(name, IceServerProblem::Failed(reason));
                }
                GatherEvent::ServerMisbehaved { server, reason } => {
                    let scheme = self
                        .names
                        .iter()
                        .find(|(a, _, _)| *a == server)
                        .map_or(Scheme::Stun, |(_, s, _)| *s);
                    let name = self.name_of(server, scheme);
                    tracing::warn!(server = %name, %reason, "ice: server misbehaved");
                    self.actions
                        .push_back(Action::Event(Event::IceServerFailed {
                            server: name,
                            problem: IceServerProblem::Misbehaved(reason),
                        }));
                }
                // Completion and closing are read from the gatherer's state below.
                _ => {}
            }
        }
        if !self.complete
            && self.started
            && self.resolving.is_empty()
            && !self.gatherer.is_gathering()
        {
            self.complete = true;
            let peers: Vec<PeerId> = std::mem::take(&mut self.awaiting_end).into_iter().collect();
            tracing::debug!(
                candidates = self.gatherer.candidates().count(),
                "ice: gathering complete"
            );
            if !peers.is_empty() {
                self.actions.push_back(Action::EndOfCandidates(peers));
            }
        }
        if matches!(self.closing, Closing::Releasing { .. }) && self.gatherer.is_closed() {
            self.closing = Closing::Closed;
        }
    }

    /// Counters and candidates
    pub(crate) fn stats(&self) -> IceStats {
        IceStats {
            local_candidates: self
                .gatherer
                .candidates()
                .map(|c| (c.kind().into(), c.addr()))
                .collect(),
            servers: self.names.len(),
            server_failures: self.server_failures,
            relays_lost: self.relays_lost,
            gathering: self.started && !self.complete,
            gather: self.gatherer.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_must_be_specific() {
        #[allow(clippy::disallowed_methods)] // reason: a test's time anchor
        let now = Instant::now();
        let mut t = Transport::new(&Config::default(), now);
        for bad in ["0.0.0.0:5000", "[::]:5000", "127.0.0.1:0", "224.0.0.1:5000"] {
            assert!(t.add_local_address(bad.parse().unwrap()).is_err(), "{bad}");
        }
        t.add_local_address("192.0.2.7:5000".parse().unwrap())
            .unwrap();
        assert_eq!(t.candidates().count(), 1);
    }
}
