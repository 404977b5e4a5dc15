//! ICE candidate gathering on one UDP socket: host, STUN server-reflexive, TURN relayed
//!
//! A [`Gatherer`] serves one participant's one UDP socket, sans-IO like the rest of the core:
//! time arrives in arguments, datagrams leave through [`Gatherer::poll_transmit`], and the
//! candidates it finds leave through [`Gatherer::poll_event`] as `str0m::Candidate`s, ready
//! for `Rtc::add_local_candidate` and trickling.
//!
//! ```text
//!   socket ──datagram──> handle_receive ─┬─ Passthrough ──────────────> str0m (unchanged)
//!                                        ├─ Relayed{peer, relayed} ──> str0m (as if from peer)
//!                                        └─ Consumed (a STUN/TURN server's answer)
//!   str0m ──transmit──> wrap ─┬─ NotRelayed ─> socket (unchanged)
//!                             └─ Send(to TURN server) / Queued (until a permission exists)
//! ```
//!
//! # Method classes and call order (as in quinn's `Connection`)
//!
//! - Set-up: [`Gatherer::new`], then [`Gatherer::add_local_address`] for every address of the
//!   socket (the driver enumerates interfaces), **then** [`Gatherer::add_server`] for every
//!   resolved STUN/TURN server. A server for which no local address of its family exists
//!   fails at once ([`ServerError::NoLocalAddress`]).
//! - Inputs: [`Gatherer::handle_receive`] for **every** datagram read from the socket, before
//!   str0m sees it; [`Gatherer::route`] (or [`Gatherer::wrap`]) for every str0m transmit;
//!   [`Gatherer::add_remote_candidate`] for every remote candidate signaled;
//!   [`Gatherer::handle_timeout`] when [`Gatherer::poll_timeout`] is reached;
//!   [`Gatherer::close`] on leave.
//! - Outputs, after every input: drain [`Gatherer::poll_transmit`] (to the socket) and
//!   [`Gatherer::poll_event`], then ask [`Gatherer::poll_timeout`].
//! - Addresses are compared canonically: an IPv4-mapped IPv6 address from a dual-stack
//!   socket is the IPv4 address. Datagrams leave with plain IPv4 destinations; a driver on a
//!   dual-stack `[::]` socket maps them back when it sends.
//!
//! See `docs/ice.md` for the design and why it does not use `turn-client-proto`.
//!
//! Nothing a server sends can panic the gatherer or make it send in a loop: every request
//! retransmits on RFC 8489's backoff a bounded number of times, malformed answers are counted
//! ([`GatherStats`]) and reported once per server ([`GatherEvent::ServerMisbehaved`]), and a
//! refused permission is not asked for again before 30 s.

mod config;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod stun;
mod turn;

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use str0m::{Candidate, CandidateKind};
use thiserror::Error;
use tracing::{debug, info, warn};

pub use config::{
    Host, IceServer, IceTransportPolicy, Resolution, ResolvedServer, Scheme, ServerEndpoint,
    ServerKind, ServerUrl, TurnCredentials, UrlError, DEFAULT_PORT,
};
pub use stun::RetransmitTiming;

use stun::{Class, Message, Transaction, TransactionId, TxTimeout};
use turn::{Handled, Sent, TurnClient, TurnEvent};

/// Servers one gatherer talks to at most
pub const MAX_SERVERS: usize = 16;

/// A datagram to send or that was received, with both addresses
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The local address it leaves from
    pub source: SocketAddr,
    /// Where it goes
    pub destination: SocketAddr,
    /// The bytes
    pub contents: Vec<u8>,
}

/// Which local addresses become host candidates, by loopback-ness
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoopbackPolicy {
    /// Loopback addresses are not offered (real networks)
    #[default]
    Exclude,
    /// Loopback addresses are offered too
    Include,
    /// Only loopback addresses are offered (tests: nothing leaves the machine)
    Only,
}

/// How a [`Gatherer`] gathers
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherConfig {
    /// `All`, or `Relay` (only relayed candidates are offered; STUN servers are not asked)
    pub policy: IceTransportPolicy,
    /// Which local addresses become host candidates
    pub loopback: LoopbackPolicy,
    /// STUN retransmissions (RFC 8489 defaults: 500 ms, 7 transmissions, 16 × RTO)
    pub timing: RetransmitTiming,
    /// Seed for STUN transaction ids (ids are not secrets; the simulator needs them seeded)
    pub seed: u64,
    /// Bind a TURN channel per peer (ChannelData: 4 bytes of overhead per packet instead of
    /// 36+ for Send/Data indications); on by default
    pub channels: bool,
}

impl Default for GatherConfig {
    fn default() -> Self {
        Self {
            policy: IceTransportPolicy::All,
            loopback: LoopbackPolicy::Exclude,
            timing: RetransmitTiming::default(),
            seed: 0,
            channels: true,
        }
    }
}

/// Type of a candidate, as in stats (`host`, `srflx`, `prflx`, `relay`)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CandidateType {
    /// An address of a local interface
    Host,
    /// Our address as a STUN or TURN server saw it (behind a NAT)
    Srflx,
    /// An address learned from a connectivity check (not signaled)
    Prflx,
    /// An address on a TURN server
    Relay,
}

impl CandidateType {
    /// The stats name: `host`, `srflx`, `prflx` or `relay`
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Srflx => "srflx",
            Self::Prflx => "prflx",
            Self::Relay => "relay",
        }
    }

    /// The type of a signaled remote candidate at `addr`, `Prflx` when none was signaled
    pub fn of_remote<'a>(
        addr: SocketAddr,
        signaled: impl IntoIterator<Item = &'a Candidate>,
    ) -> Self {
        signaled
            .into_iter()
            .find(|c| c.addr() == addr)
            .map_or(Self::Prflx, |c| c.kind().into())
    }
}

impl From<CandidateKind> for CandidateType {
    fn from(k: CandidateKind) -> Self {
        match k {
            CandidateKind::Host => Self::Host,
            CandidateKind::ServerReflexive => Self::Srflx,
            CandidateKind::PeerReflexive => Self::Prflx,
            CandidateKind::Relayed => Self::Relay,
        }
    }
}

impl fmt::Display for CandidateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a STUN or TURN server could not be used (the server or the path to it is at fault,
/// or its credentials)
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No answer after every retransmission (server down, unreachable, or blocked)
    #[error("no answer")]
    Timeout,
    /// 401 although credentials were sent: wrong username or password (or expired REST
    /// credentials)
    #[error("wrong credentials (401)")]
    Unauthorized,
    /// 403: the server refuses this client or this peer address
    #[error("forbidden (403)")]
    Forbidden,
    /// 437: the server holds another allocation for this 5-tuple, or forgot ours
    #[error("allocation mismatch (437)")]
    AllocationMismatch,
    /// 486: the user has too many allocations on the server
    #[error("allocation quota reached (486)")]
    QuotaReached,
    /// 508: the server has no relay ports left
    #[error("server out of capacity (508)")]
    InsufficientCapacity,
    /// 438 (stale nonce) kept coming after fresh nonces
    #[error("stale nonce again and again (438)")]
    StaleNonce,
    /// Another error code
    #[error("error {code}: {reason}")]
    Rejected {
        /// The STUN error code
        code: u16,
        /// The server's reason phrase
        reason: String,
    },
    /// The server's answer lacked what the protocol requires
    #[error("bad response: {0}")]
    BadResponse(&'static str),
    /// No local address of the server's address family was given
    #[error("no local address of the server's family")]
    NoLocalAddress,
}

impl ServerError {
    fn from_code(code: u16, reason: &str, authenticated: bool) -> Self {
        match code {
            401 if authenticated => Self::Unauthorized,
            403 => Self::Forbidden,
            437 => Self::AllocationMismatch,
            486 => Self::QuotaReached,
            508 => Self::InsufficientCapacity,
            _ => Self::Rejected {
                code,
                reason: reason.chars().take(128).collect(),
            },
        }
    }
}

/// What went wrong with one configured or announced STUN/TURN server, as the application
/// hears of it ([`Event::IceServerFailed`](crate::Event::IceServerFailed)); host candidates
/// and the other servers carry on
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IceServerProblem {
    /// Its URL cannot be used (malformed, TLS/TCP, a TURN URL without credentials)
    #[error(transparent)]
    BadUrl(#[from] UrlError),
    /// Its name did not resolve (what the driver's resolver said)
    #[error("cannot resolve: {0}")]
    Unresolvable(String),
    /// It gave no candidate
    #[error("{0}")]
    Failed(ServerError),
    /// Its relayed candidate stopped working (the allocation was lost)
    #[error("relay lost: {0}")]
    RelayLost(ServerError),
    /// It sent something unusable (reported once per server; its requests keep waiting)
    #[error("sent something unusable: {0}")]
    Misbehaved(String),
    /// More than [`MAX_SERVERS`] servers were given; this one is not used
    #[error("too many ice servers (at most {MAX_SERVERS})")]
    TooManyServers,
}

/// Why a relayed datagram was not sent
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The allocation does not exist (yet, or any more)
    NoAllocation,
    /// The peer's address family differs from the relayed address's
    AddressFamily,
    /// The server refused a permission for this peer recently
    PermissionRefused,
    /// Too many datagrams wait for this peer's permission
    QueueFull,
    /// Too many peers on this allocation
    TooManyPeers,
    /// Larger than a TURN message can carry
    TooLarge,
}

/// What the gatherer has to say
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GatherEvent {
    /// A new local candidate: add it to every `Rtc` and trickle it
    Candidate(Candidate),
    /// A relayed candidate stopped working: its allocation was lost (invalidate it in every
    /// `Rtc` with `direct_api().invalidate_candidate`)
    CandidateLost {
        /// The relayed candidate
        candidate: Candidate,
        /// The TURN server
        server: SocketAddr,
        /// Why
        reason: ServerError,
    },
    /// A server gave no candidate; the others carry on
    ServerFailed {
        /// The server
        server: SocketAddr,
        /// STUN or TURN
        scheme: Scheme,
        /// Why
        reason: ServerError,
    },
    /// A server sent something unusable (reported once per server; counted in
    /// [`GatherStats::malformed`]); its requests keep waiting for a good answer
    ServerMisbehaved {
        /// The server
        server: SocketAddr,
        /// What was wrong
        reason: String,
    },
    /// Every server has answered or failed: signal end-of-candidates (edge-triggered, once
    /// per round of [`Gatherer::add_server`] calls)
    Complete,
    /// Every allocation was released after [`Gatherer::close`] (or its release went
    /// unanswered): the socket may close
    Closed,
}

/// Counters of what the gatherer dropped or handled
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatherStats {
    /// Unparsable or unverifiable datagrams from a server
    pub malformed: u64,
    /// Answers to no outstanding request (late retransmissions)
    pub stray: u64,
    /// Relayed datagrams received from peers
    pub relayed_in: u64,
    /// Relayed datagrams sent to peers
    pub relayed_out: u64,
    /// Relayed datagrams dropped (no permission, queue full, no allocation)
    pub relayed_dropped: u64,
}

/// What [`Gatherer::handle_receive`] made of a datagram
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received<'a> {
    /// Not from a STUN/TURN server: hand the datagram to str0m unchanged
    Passthrough,
    /// A server's datagram, consumed: drain the gatherer's outputs
    Consumed,
    /// Peer data relayed by a TURN server: hand it to str0m with these addresses
    Relayed {
        /// The peer that sent it (str0m's `source`)
        source: SocketAddr,
        /// Our relayed address it was sent to (str0m's `destination`)
        destination: SocketAddr,
        /// The peer's datagram (borrowed from the received one)
        contents: &'a [u8],
    },
}

/// What [`Gatherer::wrap`] did with a transmit
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wrap {
    /// The source is not a relayed address: send the transmit unchanged
    NotRelayed,
    /// Send this datagram to the TURN server instead
    Send(Datagram),
    /// Held until the server grants a permission; it will come out of `poll_transmit`
    Queued,
    /// Not sent (counted in [`GatherStats::relayed_dropped`])
    Dropped(DropReason),
}

#[derive(Debug)]
struct Binding {
    local: SocketAddr,
    tx: Option<Transaction>,
}

#[derive(Debug)]
enum Client {
    Stun(Binding),
    Turn(Box<TurnClient>),
}

#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    client: Client,
    misbehaved: bool,
    relayed: Option<Candidate>,
}

impl Server {
    fn is_gathering(&self) -> bool {
        match &self.client {
            Client::Stun(b) => b.tx.is_some(),
            Client::Turn(t) => t.is_allocating(),
        }
    }
}

/// Gathers candidates for one UDP socket and relays through TURN (see the module docs)
#[derive(Debug)]
pub struct Gatherer {
    config: GatherConfig,
    rng: fastrand::Rng,
    locals: Vec<SocketAddr>,
    candidates: Vec<Candidate>,
    remotes: Vec<SocketAddr>,
    servers: Vec<Server>,
    transmits: VecDeque<Datagram>,
    events: VecDeque<GatherEvent>,
    gathering: bool,
    closing: bool,
    closed_emitted: bool,
    stats: GatherStats,
}

impl Gatherer {
    /// A gatherer with no addresses and no servers yet
    pub fn new(config: GatherConfig) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            locals: Vec::new(),
            candidates: Vec::new(),
            remotes: Vec::new(),
            servers: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            gathering: false,
            closing: false,
            closed_emitted: false,
            stats: GatherStats::default(),
        }
    }

    /// Adds a local address of the socket (one per interface; port = the socket's port)
    ///
    /// Emits a host candidate unless the policy is `Relay`, the loopback policy excludes it,
    /// or it is unusable (unspecified, multicast, link-local). Returns whether it was offered.
    pub fn add_local_address(&mut self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        if self.locals.contains(&addr) || addr.port() == 0 {
            return false;
        }
        self.locals.push(addr);
        if self.config.policy == IceTransportPolicy::Relay || !self.is_offered_host(addr.ip()) {
            return false;
        }
        match Candidate::host(addr, "udp") {
            Ok(c) => {
                self.candidates.push(c.clone());
                self.events.push_back(GatherEvent::Candidate(c));
                true
            }
            Err(e) => {
                debug!(%addr, %e, "ice: host address not offered");
                false
            }
        }
    }

    /// Forgets a local address and its host candidate (the interface went away); returns
    /// whether it was known
    pub fn remove_local_address(&mut self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        let known = self.locals.contains(&addr);
        self.locals.retain(|a| *a != addr);
        self.candidates
            .retain(|c| !(c.kind() == CandidateKind::Host && canonical(c.addr()) == addr));
        known
    }

    fn is_offered_host(&self, ip: IpAddr) -> bool {
        let usable = match ip {
            IpAddr::V4(v) => !(v.is_unspecified() || v.is_multicast() || v.is_link_local()),
            IpAddr::V6(v) => !(v.is_unspecified() || v.is_multicast() || v.is_unicast_link_local()),
        };
        usable
            && match self.config.loopback {
                LoopbackPolicy::Exclude => !ip.is_loopback(),
                LoopbackPolicy::Include => true,
                LoopbackPolicy::Only => ip.is_loopback(),
            }
    }

    /// Starts using a STUN or TURN server; its first request is sent at once
    ///
    /// Call after the local addresses are added. With the `Relay` policy a STUN server is
    /// ignored. Errors only when [`MAX_SERVERS`] servers are in use; a server that cannot be
    /// used is reported as [`GatherEvent::ServerFailed`].
    pub fn add_server(&mut self, now: Instant, server: ResolvedServer) -> Result<(), GatherError> {
        if self.closing {
            return Err(GatherError::Closed);
        }
        let addr = canonical(server.addr);
        let scheme = match server.kind {
            ServerKind::Stun => Scheme::Stun,
            ServerKind::Turn(_) => Scheme::Turn,
        };
        if scheme == Scheme::Stun && self.config.policy == IceTransportPolicy::Relay {
            return Ok(());
        }
        let duplicate = self.servers.iter().any(|s| {
            s.addr == addr && matches!(s.client, Client::Stun(_)) == (scheme == Scheme::Stun)
        });
        if duplicate {
            return Ok(());
        }
        if self.servers.len() >= MAX_SERVERS {
            return Err(GatherError::TooManyServers);
        }
        self.gathering = true;
        let Some(local) = self.local_for(addr) else {
            self.events.push_back(GatherEvent::ServerFailed {
                server: addr,
                scheme,
                reason: ServerError::NoLocalAddress,
            });
            self.check_complete();
            return Ok(());
        };
        let seed = self.rng.u64(..);
        let client = match server.kind {
            ServerKind::Stun => {
                let mut tid: TransactionId = [0; 12];
                self.rng.fill(&mut tid);
                let request = stun::Builder::new(Class::Request, stun::method::BINDING, tid, 8)
                    .fingerprint()
                    .finish();
                self.transmits.push_back(Datagram {
                    source: local,
                    destination: addr,
                    contents: request.clone(),
                });
                Client::Stun(Binding {
                    local,
                    tx: Some(Transaction::new(now, tid, request, self.config.timing)),
                })
            }
            ServerKind::Turn(creds) => Client::Turn(Box::new(TurnClient::new(
                now,
                addr,
                local,
                creds,
                self.config.timing,
                self.config.channels,
                seed,
                &mut self.transmits,
            ))),
        };
        info!(server = %addr, %local, ?scheme, "ice: gathering from server");
        self.servers.push(Server {
            addr,
            client,
            misbehaved: false,
            relayed: None,
        });
        self.gathering = true;
        Ok(())
    }

    /// The local address used towards a server: same family, same loopback-ness if possible
    fn local_for(&self, server: SocketAddr) -> Option<SocketAddr> {
        let same_family = |a: &&SocketAddr| a.is_ipv4() == server.is_ipv4();
        let loopback = server.ip().is_loopback();
        self.locals
            .iter()
            .filter(same_family)
            .find(|a| a.ip().is_loopback() == loopback)
            .or_else(|| self.locals.iter().find(same_family))
            .copied()
    }

    /// Looks at a datagram read from the socket; call for every one, before str0m
    pub fn handle_receive<'a>(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &'a [u8],
    ) -> Received<'a> {
        let _ = destination;
        let source = canonical(source);
        if !self.servers.iter().any(|s| s.addr == source) {
            return Received::Passthrough;
        }
        if stun::is_channel_data(contents) {
            return self.receive_channel_data(source, contents);
        }
        let msg = match Message::parse(contents) {
            Ok(m) => m,
            Err(e) => {
                self.misbehaved(source, e.to_string());
                return Received::Consumed;
            }
        };
        for i in 0..self.servers.len() {
            if self.servers[i].addr != source {
                continue;
            }
            let handled = match &mut self.servers[i].client {
                Client::Stun(b) => {
                    match handle_binding(b, &msg) {
                        BindingResult::NotMine => continue,
                        BindingResult::Mapped(mapped) => {
                            let base = b.local;
                            self.add_srflx(mapped, base);
                        }
                        BindingResult::Failed(reason) => {
                            warn!(server = %source, %reason, "ice: stun binding failed");
                            self.events.push_back(GatherEvent::ServerFailed {
                                server: source,
                                scheme: Scheme::Stun,
                                reason,
                            });
                        }
                        BindingResult::Malformed(why) => self.misbehaved(source, why.to_owned()),
                    }
                    self.after_server(i, now);
                    return Received::Consumed;
                }
                Client::Turn(t) => t.handle_stun(now, &msg, &mut self.transmits),
            };
            match handled {
                Handled::NotMine => continue,
                Handled::Consumed => {}
                Handled::Malformed(why) => self.misbehaved(source, why.to_owned()),
                Handled::PeerData(peer, data) => {
                    self.after_server(i, now);
                    let Some(relayed) = self.servers[i].relayed.as_ref().map(|c| c.addr()) else {
                        return Received::Consumed;
                    };
                    self.stats.relayed_in += 1;
                    return Received::Relayed {
                        source: peer,
                        destination: relayed,
                        contents: data,
                    };
                }
            }
            self.after_server(i, now);
            return Received::Consumed;
        }
        self.stats.stray += 1;
        Received::Consumed
    }

    fn receive_channel_data<'a>(&mut self, source: SocketAddr, contents: &'a [u8]) -> Received<'a> {
        let Some((number, data)) = stun::parse_channel_data(contents) else {
            self.misbehaved(source, "truncated channel data".into());
            return Received::Consumed;
        };
        for s in &mut self.servers {
            if s.addr != source {
                continue;
            }
            let (Client::Turn(t), Some(relayed)) = (&mut s.client, &s.relayed) else {
                continue;
            };
            if let Some(peer) = t.channel_peer(number) {
                self.stats.relayed_in += 1;
                return Received::Relayed {
                    source: peer,
                    destination: relayed.addr(),
                    contents: data,
                };
            }
        }
        self.stats.stray += 1;
        Received::Consumed
    }

    fn misbehaved(&mut self, server: SocketAddr, reason: String) {
        self.stats.malformed += 1;
        for s in &mut self.servers {
            if s.addr == server && !s.misbehaved {
                s.misbehaved = true;
                warn!(%server, %reason, "ice: server sent something unusable");
                self.events.push_back(GatherEvent::ServerMisbehaved {
                    server,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Wraps a str0m transmit from a relayed candidate for its TURN server
    ///
    /// `source` is the transmit's source; when it is not one of our relayed addresses the
    /// answer is [`Wrap::NotRelayed`] and the transmit goes out unchanged.
    pub fn wrap(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> Wrap {
        let Some(i) = self
            .servers
            .iter()
            .position(|s| s.relayed.as_ref().is_some_and(|c| c.addr() == source))
        else {
            return Wrap::NotRelayed;
        };
        let Client::Turn(t) = &mut self.servers[i].client else {
            return Wrap::NotRelayed;
        };
        let (server, local) = (t.server, t.local);
        let result = match t.send(now, canonical(destination), contents, &mut self.transmits) {
            Sent::Now(contents) => {
                self.stats.relayed_out += 1;
                Wrap::Send(Datagram {
                    source: local,
                    destination: server,
                    contents,
                })
            }
            Sent::Queued => Wrap::Queued,
            Sent::Dropped(reason) => {
                self.stats.relayed_dropped += 1;
                Wrap::Dropped(reason)
            }
        };
        self.after_server(i, now);
        result
    }

    /// Prepares the relays for a remote candidate: call for every remote candidate signaled
    ///
    /// Binds a channel (and so installs a permission) towards `addr` on every allocation of
    /// its family — now, or when the allocation is made — before str0m's first check, as
    /// browsers do. Without it the first checks race the peer's own permission and are lost,
    /// and ICE waits for str0m's retransmissions (about 2 s more on loopback). Remembers at
    /// most 64 addresses (the oldest are forgotten).
    pub fn add_remote_candidate(&mut self, now: Instant, addr: SocketAddr) {
        let addr = canonical(addr);
        if self.remotes.contains(&addr) || self.closing {
            return;
        }
        if self.remotes.len() >= turn::MAX_PEERS {
            self.remotes.remove(0);
        }
        self.remotes.push(addr);
        for s in &mut self.servers {
            if let (Client::Turn(t), Some(_)) = (&mut s.client, &s.relayed) {
                t.prepare(now, addr, &mut self.transmits);
            }
        }
    }

    /// Routes a datagram str0m wants sent: returned unchanged (moved, not copied) when its
    /// source is not relayed, wrapped for the TURN server when it is; `None` when it is held
    /// until a permission exists (it will come out of [`Self::poll_transmit`]) or dropped
    /// (counted in [`GatherStats::relayed_dropped`])
    pub fn route(&mut self, now: Instant, datagram: Datagram) -> Option<Datagram> {
        if !self.is_relayed(datagram.source) {
            return Some(datagram);
        }
        match self.wrap(
            now,
            datagram.source,
            datagram.destination,
            &datagram.contents,
        ) {
            Wrap::NotRelayed => Some(datagram),
            Wrap::Send(d) => Some(d),
            Wrap::Queued | Wrap::Dropped(_) => None,
        }
    }

    /// Whether `addr` is one of our relayed addresses (its transmits need [`Self::wrap`])
    pub fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.servers
            .iter()
            .any(|s| s.relayed.as_ref().is_some_and(|c| c.addr() == addr))
    }

    /// The type of a local address as used in a candidate pair (`host` when unknown:
    /// str0m sends server-reflexive traffic from its host base)
    pub fn local_type(&self, addr: SocketAddr) -> CandidateType {
        if self.is_relayed(addr) {
            return CandidateType::Relay;
        }
        self.candidates
            .iter()
            .find(|c| c.addr() == addr)
            .map_or(CandidateType::Host, |c| c.kind().into())
    }

    /// Every local candidate found so far and still usable (for an `Rtc` created later)
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> + '_ {
        self.candidates.iter()
    }

    /// The next datagram to send
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    /// The next event
    pub fn poll_event(&mut self) -> Option<GatherEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due; `None` when nothing is pending
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.servers
            .iter()
            .filter_map(|s| match &s.client {
                Client::Stun(b) => b.tx.as_ref().map(|t| t.deadline()),
                Client::Turn(t) => t.poll_timeout(),
            })
            .min()
    }

    /// Advances time: retransmissions, refreshes, expiries
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.servers.len() {
            let server = self.servers[i].addr;
            match &mut self.servers[i].client {
                Client::Stun(b) => {
                    let Some(tx) = &mut b.tx else { continue };
                    match tx.handle_timeout(now) {
                        TxTimeout::Wait => {}
                        TxTimeout::Retransmit => self.transmits.push_back(Datagram {
                            source: b.local,
                            destination: server,
                            contents: tx.request.clone(),
                        }),
                        TxTimeout::TimedOut => {
                            b.tx = None;
                            warn!(%server, "ice: stun server did not answer");
                            self.events.push_back(GatherEvent::ServerFailed {
                                server,
                                scheme: Scheme::Stun,
                                reason: ServerError::Timeout,
                            });
                        }
                    }
                }
                Client::Turn(t) => t.handle_timeout(now, &mut self.transmits),
            }
            self.after_server(i, now);
        }
        self.check_complete();
    }

    /// Releases every TURN allocation (Refresh with lifetime 0) and stops gathering
    ///
    /// Keep draining and feeding received datagrams until [`GatherEvent::Closed`] (or
    /// [`Self::is_closed`]); the release is best effort, with at most three transmissions.
    pub fn close(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        self.closing = true;
        for i in 0..self.servers.len() {
            match &mut self.servers[i].client {
                Client::Stun(b) => b.tx = None,
                Client::Turn(t) => t.release(now, &mut self.transmits),
            }
            self.after_server(i, now);
        }
        self.check_closed();
    }

    /// Whether a server is still being asked for a candidate (when none is, and no server was
    /// ever added, there is no [`GatherEvent::Complete`] to wait for: the host candidates are
    /// all there is)
    pub fn is_gathering(&self) -> bool {
        self.servers.iter().any(Server::is_gathering)
    }

    /// Whether [`Self::close`] was called and every release is done
    pub fn is_closed(&self) -> bool {
        self.closing
            && self.servers.iter().all(|s| match &s.client {
                Client::Stun(_) => true,
                Client::Turn(t) => t.is_done(),
            })
    }

    /// Counters
    pub fn stats(&self) -> GatherStats {
        let dropped: u64 = self
            .servers
            .iter()
            .map(|s| match &s.client {
                Client::Turn(t) => t.dropped,
                Client::Stun(_) => 0,
            })
            .sum();
        GatherStats {
            relayed_dropped: self.stats.relayed_dropped + dropped,
            ..self.stats
        }
    }

    /// The ChannelData channel bound for a peer on a relayed address, if any
    pub fn channel(&self, relayed: SocketAddr, peer: SocketAddr) -> Option<u16> {
        self.servers
            .iter()
            .find_map(|s| match (&s.client, &s.relayed) {
                (Client::Turn(t), Some(c)) if c.addr() == relayed => t.channel_of(peer),
                _ => None,
            })
    }

    /// Turns what server `i` did into events
    fn after_server(&mut self, i: usize, now: Instant) {
        let server = self.servers[i].addr;
        match &mut self.servers[i].client {
            Client::Stun(_) => {}
            Client::Turn(t) => {
                let local = t.local;
                let events: Vec<_> = t.events.drain(..).collect();
                for e in events {
                    match e {
                        TurnEvent::Allocated { relayed, mapped } => {
                            match Candidate::relayed(relayed, local, "udp") {
                                Ok(c) => {
                                    self.servers[i].relayed = Some(c.clone());
                                    self.candidates.push(c.clone());
                                    self.events.push_back(GatherEvent::Candidate(c));
                                    if let Client::Turn(t) = &mut self.servers[i].client {
                                        for peer in &self.remotes {
                                            t.prepare(now, *peer, &mut self.transmits);
                                        }
                                    }
                                }
                                Err(e) => {
                                    warn!(%relayed, %e, "ice: relayed address unusable");
                                    self.events.push_back(GatherEvent::ServerFailed {
                                        server,
                                        scheme: Scheme::Turn,
                                        reason: ServerError::BadResponse(
                                            "unusable relayed address",
                                        ),
                                    });
                                }
                            }
                            if let Some(mapped) = mapped {
                                self.add_srflx(mapped, local);
                            }
                        }
                        TurnEvent::Failed(reason) => {
                            self.events.push_back(GatherEvent::ServerFailed {
                                server,
                                scheme: Scheme::Turn,
                                reason,
                            })
                        }
                        TurnEvent::Lost(reason) => {
                            if let Some(candidate) = self.servers[i].relayed.take() {
                                self.candidates.retain(|c| *c != candidate);
                                self.events.push_back(GatherEvent::CandidateLost {
                                    candidate,
                                    server,
                                    reason,
                                });
                            }
                        }
                        TurnEvent::Released => {
                            if let Some(candidate) = self.servers[i].relayed.take() {
                                self.candidates.retain(|c| *c != candidate);
                            }
                        }
                    }
                }
            }
        }
        self.check_complete();
        self.check_closed();
    }

    fn add_srflx(&mut self, mapped: SocketAddr, base: SocketAddr) {
        let mapped = canonical(mapped);
        if self.config.policy == IceTransportPolicy::Relay
            || mapped == base
            || self.candidates.iter().any(|c| c.addr() == mapped)
        {
            // No NAT, or already known: nothing new to offer.
            return;
        }
        match Candidate::server_reflexive(mapped, base, "udp") {
            Ok(c) => {
                info!(%mapped, %base, "ice: server-reflexive candidate");
                self.candidates.push(c.clone());
                self.events.push_back(GatherEvent::Candidate(c));
            }
            Err(e) => debug!(%mapped, %e, "ice: server-reflexive address unusable"),
        }
    }

    fn check_complete(&mut self) {
        if self.gathering && !self.servers.iter().any(Server::is_gathering) {
            self.gathering = false;
            self.events.push_back(GatherEvent::Complete);
        }
    }

    fn check_closed(&mut self) {
        if !self.closed_emitted && self.is_closed() {
            self.closed_emitted = true;
            self.events.push_back(GatherEvent::Closed);
        }
    }
}

enum BindingResult {
    NotMine,
    Mapped(SocketAddr),
    Failed(ServerError),
    Malformed(&'static str),
}

/// Handles a STUN message for a binding request
fn handle_binding(b: &mut Binding, msg: &Message<'_>) -> BindingResult {
    let Some(tx) = &b.tx else {
        return BindingResult::NotMine;
    };
    if tx.tid != msg.tid || msg.method != stun::method::BINDING {
        return BindingResult::NotMine;
    }
    match msg.class {
        Class::Success => match msg
            .xor_addr(stun::attr::XOR_MAPPED_ADDRESS)
            .or_else(|| msg.mapped_addr())
        {
            Some(mapped) => {
                b.tx = None;
                BindingResult::Mapped(mapped)
            }
            // The transaction keeps waiting for a usable answer.
            None => BindingResult::Malformed("binding success without mapped address"),
        },
        Class::Error => {
            b.tx = None;
            BindingResult::Failed(match msg.error_code() {
                Some((code, reason)) => ServerError::from_code(code, reason, false),
                None => ServerError::BadResponse("error without code"),
            })
        }
        _ => BindingResult::NotMine,
    }
}

/// Errors from the gatherer's own API (the caller is at fault)
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GatherError {
    /// More than [`MAX_SERVERS`] servers
    #[error("too many ice servers (at most {MAX_SERVERS})")]
    TooManyServers,
    /// A server was added after [`Gatherer::close`]
    #[error("the gatherer is closed")]
    Closed,
}

/// TURN REST credentials (coturn's `use-auth-secret`): username `"<expiry>:<id>"`,
/// credential `base64(HMAC-SHA1(secret, username))`
///
/// `expiry_unix` is a wall-clock time in seconds since 1970, taken by the caller (the core
/// reads no clock).
pub fn turn_rest_credentials(secret: &[u8], expiry_unix: u64, id: &str) -> TurnCredentials {
    let username = format!("{expiry_unix}:{id}");
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredentials { username, password }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests;
