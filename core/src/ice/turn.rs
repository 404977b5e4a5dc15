//! One TURN allocation over UDP (RFC 8656) as a sans-IO state machine
//!
//! ```text
//!  Allocating ──401 (realm, nonce)──> Allocating (authenticated) ──success──> Allocated
//!      │ 438: new nonce, resend             │ 401 again: wrong credentials       │ refresh
//!      └──────── error / timeout ───────────┴──> Done (ServerError)             │ release
//!                                                                 Releasing <────┘
//! ```
//!
//! In `Allocated`, sending to a peer binds a channel (which also installs the permission);
//! until the server confirms, packets wait in a short queue. When channel binding fails,
//! a plain permission is created and data goes as Send indications. Permissions and channels
//! are refreshed one minute before they expire while they are in use, and left to expire
//! when not. Failed permissions are retried no sooner than [`RETRY_AFTER`], so a server that
//! refuses a peer never sees a request per packet.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::stun::{
    self, attr, channel_data, method, Builder, Class, Message, RetransmitTiming, Transaction,
    TransactionId, TxTimeout,
};
use super::{Datagram, DropReason, ServerError, TurnCredentials};

/// Lifetime of a permission (RFC 8656 §9)
pub(crate) const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Lifetime of a channel binding (RFC 8656 §12)
pub(crate) const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Refresh permissions, channels and allocations this long before they expire
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// A refused or timed-out permission or channel is not asked for again before this
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Consecutive 438 (stale nonce) answers tolerated before giving up
pub(crate) const MAX_STALE_NONCES: u32 = 3;
/// Peers (channels, permissions) per allocation; a mesh of 10 needs a few per peer
pub(crate) const MAX_PEERS: usize = 64;
/// Datagrams held per peer while its permission is being created
pub(crate) const MAX_QUEUED: usize = 8;
/// The allocation lifetime asked for in refreshes (the server may shorten it)
const REQUESTED_LIFETIME: u32 = 600;
/// Channel numbers (RFC 8656 §12)
const CHANNEL_MIN: u16 = 0x4000;
const CHANNEL_MAX: u16 = 0x4FFF;

/// What happened to the allocation
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TurnEvent {
    /// The server allocated a relayed address; `mapped` is our server-reflexive address
    Allocated {
        relayed: SocketAddr,
        mapped: Option<SocketAddr>,
    },
    /// No allocation could be made
    Failed(ServerError),
    /// A working allocation ended (refresh refused or unanswered)
    Lost(ServerError),
    /// The allocation was released (or the release went unanswered)
    Released,
}

/// What a STUN message from the server was
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handled<'a> {
    /// Not ours (no matching transaction)
    NotMine,
    /// Consumed
    Consumed,
    /// Consumed but unusable (failed integrity, missing attributes)
    Malformed(&'static str),
    /// Peer data from a Data indication
    PeerData(SocketAddr, &'a [u8]),
}

/// The result of sending to a peer through the relay
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Send this to the server
    Now(Vec<u8>),
    /// Held until the permission exists
    Queued,
    /// Not sent
    Dropped(DropReason),
}

#[derive(Debug)]
enum State {
    Allocating,
    Allocated {
        relayed: SocketAddr,
        expires: Instant,
        refresh_at: Instant,
    },
    Releasing,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Allocate,
    Refresh(u32),
    Permission(IpAddr),
    Bind(SocketAddr, u16),
}

#[derive(Debug)]
struct Pending {
    tx: Transaction,
    purpose: Purpose,
    authenticated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Pending,
    Active {
        expires: Instant,
        refresh_at: Instant,
    },
    Failed {
        retry_at: Instant,
    },
}

impl Grant {
    fn is_active(&self) -> bool {
        matches!(self, Self::Active { .. })
    }

    /// Whether a new request may be made now
    fn may_request(&self, now: Instant) -> bool {
        matches!(self, Self::Failed { retry_at } if now >= *retry_at)
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Active {
                expires,
                refresh_at,
            } => Some((*refresh_at).min(*expires)),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Permission {
    grant: Grant,
    used: bool,
}

#[derive(Debug)]
struct Channel {
    number: u16,
    grant: Grant,
    used: bool,
}

#[derive(Debug)]
struct Auth {
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: [u8; 16],
}

/// One allocation on one TURN server, from one local address
#[derive(Debug)]
pub(crate) struct TurnClient {
    pub(crate) server: SocketAddr,
    pub(crate) local: SocketAddr,
    creds: TurnCredentials,
    auth: Option<Auth>,
    state: State,
    permissions: BTreeMap<IpAddr, Permission>,
    channels: BTreeMap<SocketAddr, Channel>,
    by_number: BTreeMap<u16, SocketAddr>,
    queues: BTreeMap<SocketAddr, VecDeque<Vec<u8>>>,
    next_channel: u16,
    pending: Vec<Pending>,
    stale_nonces: u32,
    timing: RetransmitTiming,
    use_channels: bool,
    rng: fastrand::Rng,
    pub(crate) events: VecDeque<TurnEvent>,
    /// Queued datagrams discarded (their permission was refused, or the allocation ended)
    pub(crate) dropped: u64,
}

impl TurnClient {
    /// Starts allocating: the first Allocate request goes to `out`
    #[allow(clippy::too_many_arguments)] // reason: one private constructor, called once
    pub(crate) fn new(
        now: Instant,
        server: SocketAddr,
        local: SocketAddr,
        creds: TurnCredentials,
        timing: RetransmitTiming,
        use_channels: bool,
        seed: u64,
        out: &mut VecDeque<Datagram>,
    ) -> Self {
        let mut c = Self {
            server,
            local,
            creds,
            auth: None,
            state: State::Allocating,
            permissions: BTreeMap::new(),
            channels: BTreeMap::new(),
            by_number: BTreeMap::new(),
            queues: BTreeMap::new(),
            next_channel: CHANNEL_MIN,
            pending: Vec::new(),
            stale_nonces: 0,
            timing,
            use_channels,
            rng: fastrand::Rng::with_seed(seed),
            events: VecDeque::new(),
            dropped: 0,
        };
        c.request(now, Purpose::Allocate, out);
        c
    }

    /// The relayed address while allocated
    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated { relayed, .. } => Some(relayed),
            _ => None,
        }
    }

    /// Whether nothing is left to do (failed, lost or released)
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether the allocation is still being made
    pub(crate) fn is_allocating(&self) -> bool {
        matches!(self.state, State::Allocating)
    }

    fn request(&mut self, now: Instant, purpose: Purpose, out: &mut VecDeque<Datagram>) {
        let mut tid: TransactionId = [0; 12];
        self.rng.fill(&mut tid);
        let m = match purpose {
            Purpose::Allocate => method::ALLOCATE,
            Purpose::Refresh(_) => method::REFRESH,
            Purpose::Permission(_) => method::CREATE_PERMISSION,
            Purpose::Bind(..) => method::CHANNEL_BIND,
        };
        let mut b = Builder::new(Class::Request, m, tid, 160);
        match purpose {
            // REQUESTED-TRANSPORT: UDP (17) and three reserved bytes.
            Purpose::Allocate => b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
            Purpose::Refresh(lifetime) => b.u32(attr::LIFETIME, lifetime),
            Purpose::Permission(ip) => b.xor_addr(attr::XOR_PEER_ADDRESS, SocketAddr::new(ip, 0)),
            Purpose::Bind(peer, number) => b
                .u32(attr::CHANNEL_NUMBER, u32::from(number) << 16)
                .xor_addr(attr::XOR_PEER_ADDRESS, peer),
        };
        let authenticated = self.auth.is_some();
        if let Some(auth) = &self.auth {
            b.attr(attr::USERNAME, self.creds.username.as_bytes())
                .attr(attr::REALM, &auth.realm)
                .attr(attr::NONCE, &auth.nonce)
                .integrity(&auth.key);
        }
        let request = b.fingerprint().finish();
        out.push_back(Datagram {
            source: self.local,
            destination: self.server,
            contents: request.clone(),
        });
        let timing = match purpose {
            // A release is best effort: the participant is leaving.
            Purpose::Refresh(0) => RetransmitTiming {
                max_transmissions: self.timing.max_transmissions.min(3),
                final_wait_factor: 2,
                ..self.timing
            },
            _ => self.timing,
        };
        self.pending.push(Pending {
            tx: Transaction::new(now, tid, request, timing),
            purpose,
            authenticated,
        });
    }

    /// Handles a STUN message from the server
    pub(crate) fn handle_stun<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        out: &mut VecDeque<Datagram>,
    ) -> Handled<'a> {
        if msg.class == Class::Indication && msg.method == method::DATA {
            let (Some(peer), Some(data)) =
                (msg.xor_addr(attr::XOR_PEER_ADDRESS), msg.attr(attr::DATA))
            else {
                return Handled::Malformed("data indication without peer or data");
            };
            if self.relayed().is_none() {
                return Handled::Consumed;
            }
            if let Some(p) = self.permissions.get_mut(&peer.ip()) {
                p.used = true;
            }
            return Handled::PeerData(peer, data);
        }
        if !matches!(msg.class, Class::Success | Class::Error) {
            return Handled::NotMine;
        }
        let Some(i) = self.pending.iter().position(|p| p.tx.tid == msg.tid) else {
            return Handled::NotMine;
        };
        let authenticated = self.pending[i].authenticated;
        if authenticated {
            let key = self.auth.as_ref().map(|a| a.key);
            let verified = key.is_some_and(|k| msg.verify_integrity(&k));
            // A success must prove the server knows our key; an error may be unsigned
            // (438 and 401 are), but a signature that is present must verify.
            if (msg.class == Class::Success || msg.has_integrity()) && !verified {
                return Handled::Malformed("response failed message integrity");
            }
        }
        let p = self.pending.swap_remove(i);
        if msg.class == Class::Success {
            self.stale_nonces = 0;
            return self.on_success(now, p.purpose, msg, out);
        }
        let Some((code, reason)) = msg.error_code() else {
            self.on_failure(
                now,
                p.purpose,
                ServerError::BadResponse("error without code"),
                out,
            );
            return Handled::Malformed("error response without ERROR-CODE");
        };
        match code {
            401 if !authenticated => {
                let (Some(realm), Some(nonce)) = (msg.attr(attr::REALM), msg.attr(attr::NONCE))
                else {
                    self.on_failure(
                        now,
                        p.purpose,
                        ServerError::BadResponse("401 without realm or nonce"),
                        out,
                    );
                    return Handled::Consumed;
                };
                let realm_str = String::from_utf8_lossy(realm);
                let key =
                    stun::long_term_key(&self.creds.username, &realm_str, &self.creds.password);
                self.auth = Some(Auth {
                    realm: realm.to_vec(),
                    nonce: nonce.to_vec(),
                    key,
                });
                debug!(server = %self.server, "turn: authenticating");
                self.request(now, p.purpose, out);
            }
            438 => {
                self.stale_nonces += 1;
                let nonce = msg.attr(attr::NONCE);
                match (&mut self.auth, nonce) {
                    (Some(auth), Some(nonce)) if self.stale_nonces <= MAX_STALE_NONCES => {
                        auth.nonce = nonce.to_vec();
                        if let Some(realm) = msg.attr(attr::REALM) {
                            if realm != auth.realm.as_slice() {
                                auth.realm = realm.to_vec();
                                auth.key = stun::long_term_key(
                                    &self.creds.username,
                                    &String::from_utf8_lossy(realm),
                                    &self.creds.password,
                                );
                            }
                        }
                        debug!(server = %self.server, "turn: stale nonce, resending");
                        self.request(now, p.purpose, out);
                    }
                    _ => self.on_failure(now, p.purpose, ServerError::StaleNonce, out),
                }
            }
            _ => {
                let err = ServerError::from_code(code, reason, authenticated);
                self.on_failure(now, p.purpose, err, out);
            }
        }
        Handled::Consumed
    }

    fn on_success<'a>(
        &mut self,
        now: Instant,
        purpose: Purpose,
        msg: &Message<'a>,
        out: &mut VecDeque<Datagram>,
    ) -> Handled<'a> {
        match purpose {
            Purpose::Allocate => {
                let Some(relayed) = msg.xor_addr(attr::XOR_RELAYED_ADDRESS) else {
                    self.fail(ServerError::BadResponse(
                        "allocation without relayed address",
                    ));
                    return Handled::Malformed("allocate success without XOR-RELAYED-ADDRESS");
                };
                let lifetime = msg.u32(attr::LIFETIME).unwrap_or(REQUESTED_LIFETIME);
                let mapped = msg.xor_addr(attr::XOR_MAPPED_ADDRESS);
                let (expires, refresh_at) = lifetimes(now, lifetime);
                info!(server = %self.server, %relayed, lifetime, "turn: allocated");
                self.state = State::Allocated {
                    relayed,
                    expires,
                    refresh_at,
                };
                self.events
                    .push_back(TurnEvent::Allocated { relayed, mapped });
            }
            Purpose::Refresh(0) => self.finish_release(),
            Purpose::Refresh(asked) => {
                let lifetime = msg.u32(attr::LIFETIME).unwrap_or(asked);
                if let State::Allocated {
                    expires,
                    refresh_at,
                    ..
                } = &mut self.state
                {
                    (*expires, *refresh_at) = lifetimes(now, lifetime);
                    debug!(server = %self.server, lifetime, "turn: refreshed");
                }
            }
            Purpose::Permission(ip) => {
                let p = self.permissions.entry(ip).or_insert(Permission {
                    grant: Grant::Pending,
                    used: false,
                });
                p.grant = active(now, PERMISSION_LIFETIME);
                p.used = false;
                self.flush(ip, out);
            }
            Purpose::Bind(peer, number) => {
                // A channel binding installs or refreshes the permission too.
                let p = self.permissions.entry(peer.ip()).or_insert(Permission {
                    grant: Grant::Pending,
                    used: false,
                });
                p.grant = active(now, PERMISSION_LIFETIME);
                if let Some(c) = self.channels.get_mut(&peer) {
                    if c.number == number {
                        c.grant = active(now, CHANNEL_LIFETIME);
                        c.used = false;
                    }
                }
                self.flush(peer.ip(), out);
            }
        }
        Handled::Consumed
    }

    fn on_failure(
        &mut self,
        now: Instant,
        purpose: Purpose,
        err: ServerError,
        out: &mut VecDeque<Datagram>,
    ) {
        match purpose {
            Purpose::Allocate => self.fail(err),
            Purpose::Refresh(0) => self.finish_release(),
            Purpose::Refresh(_) => {
                if self.relayed().is_some() {
                    warn!(server = %self.server, %err, "turn: allocation lost");
                    self.state = State::Done;
                    self.clear();
                    self.events.push_back(TurnEvent::Lost(err));
                }
            }
            Purpose::Permission(ip) => {
                warn!(server = %self.server, %ip, %err, "turn: permission refused");
                if let Some(p) = self.permissions.get_mut(&ip) {
                    p.grant = Grant::Failed {
                        retry_at: now + RETRY_AFTER,
                    };
                }
                let peers = peers_on(&self.queues, ip);
                for peer in peers {
                    if let Some(q) = self.queues.remove(&peer) {
                        self.dropped += q.len() as u64;
                    }
                }
            }
            Purpose::Bind(peer, number) => {
                warn!(server = %self.server, %peer, %err, "turn: channel bind refused");
                if let Some(c) = self.channels.get_mut(&peer) {
                    if c.number == number {
                        c.grant = Grant::Failed {
                            retry_at: now + RETRY_AFTER,
                        };
                    }
                }
                // Fall back to a plain permission and Send indications.
                let ip = peer.ip();
                let want = match self.permissions.get(&ip) {
                    None => true,
                    Some(p) => p.grant.may_request(now),
                };
                let queued = self.queues.contains_key(&peer);
                if want && queued {
                    self.permissions.insert(
                        ip,
                        Permission {
                            grant: Grant::Pending,
                            used: true,
                        },
                    );
                    self.request(now, Purpose::Permission(ip), out);
                } else if self
                    .permissions
                    .get(&ip)
                    .is_some_and(|p| p.grant.is_active())
                {
                    self.flush(ip, out);
                }
            }
        }
    }

    fn fail(&mut self, err: ServerError) {
        warn!(server = %self.server, %err, "turn: allocation failed");
        self.state = State::Done;
        self.clear();
        self.events.push_back(TurnEvent::Failed(err));
    }

    fn finish_release(&mut self) {
        if !matches!(self.state, State::Done) {
            self.state = State::Done;
            self.clear();
            self.events.push_back(TurnEvent::Released);
        }
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.permissions.clear();
        self.channels.clear();
        self.by_number.clear();
        for q in std::mem::take(&mut self.queues).into_values() {
            self.dropped += q.len() as u64;
        }
    }

    /// Sends queued datagrams of every peer on `ip` that now has a way out
    fn flush(&mut self, ip: IpAddr, out: &mut VecDeque<Datagram>) {
        let permitted = self
            .permissions
            .get(&ip)
            .is_some_and(|p| p.grant.is_active());
        let peers = peers_on(&self.queues, ip);
        for peer in peers {
            let channel = self
                .channels
                .get(&peer)
                .filter(|c| c.grant.is_active())
                .map(|c| c.number);
            if channel.is_none() && !permitted {
                continue;
            }
            let Some(q) = self.queues.remove(&peer) else {
                continue;
            };
            for data in q {
                let contents = match channel {
                    Some(n) => channel_data(n, &data),
                    None => self.send_indication(peer, &data),
                };
                out.push_back(Datagram {
                    source: self.local,
                    destination: self.server,
                    contents,
                });
            }
        }
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let mut tid: TransactionId = [0; 12];
        self.rng.fill(&mut tid);
        Builder::new(Class::Indication, method::SEND, tid, 28 + data.len())
            .xor_addr(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data)
            .finish()
    }

    /// Sends `data` to `peer` from the relayed address
    pub(crate) fn send(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
        out: &mut VecDeque<Datagram>,
    ) -> Sent {
        let Some(relayed) = self.relayed() else {
            return Sent::Dropped(DropReason::NoAllocation);
        };
        if peer.is_ipv4() != relayed.is_ipv4() {
            return Sent::Dropped(DropReason::AddressFamily);
        }
        if data.len() > 0xFFFF - 64 {
            return Sent::Dropped(DropReason::TooLarge);
        }
        let ip = peer.ip();
        if let Some(p) = self.permissions.get_mut(&ip) {
            p.used = true;
        }
        // The channel: bound → ChannelData; otherwise (re)start binding when allowed.
        let mut bind = None;
        let room = self.use_channels && self.channels.len() < MAX_PEERS;
        match self.channels.get_mut(&peer) {
            Some(c) if c.grant.is_active() => {
                c.used = true;
                return Sent::Now(channel_data(c.number, data));
            }
            Some(c) if c.grant.may_request(now) => {
                c.grant = Grant::Pending;
                bind = Some(c.number);
            }
            Some(_) => {}
            None if room => {
                if let Some(number) = self.free_channel() {
                    self.channels.insert(
                        peer,
                        Channel {
                            number,
                            grant: Grant::Pending,
                            used: true,
                        },
                    );
                    self.by_number.insert(number, peer);
                    bind = Some(number);
                }
            }
            None => {}
        }
        if let Some(number) = bind {
            self.request(now, Purpose::Bind(peer, number), out);
        }
        let permission = self.permissions.get(&ip).map(|p| p.grant);
        match permission {
            Some(Grant::Active { .. }) => return Sent::Now(self.send_indication(peer, data)),
            Some(Grant::Pending) => {}
            Some(g @ Grant::Failed { .. }) => {
                let channel_pending = self
                    .channels
                    .get(&peer)
                    .is_some_and(|c| c.grant == Grant::Pending);
                if !channel_pending {
                    if !g.may_request(now) {
                        return Sent::Dropped(DropReason::PermissionRefused);
                    }
                    self.permissions.insert(
                        ip,
                        Permission {
                            grant: Grant::Pending,
                            used: true,
                        },
                    );
                    self.request(now, Purpose::Permission(ip), out);
                }
            }
            None => {
                if bind.is_none()
                    && !self
                        .channels
                        .get(&peer)
                        .is_some_and(|c| c.grant == Grant::Pending)
                {
                    // No channel is coming (limit reached or refused): ask for a permission.
                    if self.permissions.len() >= MAX_PEERS {
                        return Sent::Dropped(DropReason::TooManyPeers);
                    }
                    self.permissions.insert(
                        ip,
                        Permission {
                            grant: Grant::Pending,
                            used: true,
                        },
                    );
                    self.request(now, Purpose::Permission(ip), out);
                }
            }
        }
        if !self.queues.contains_key(&peer) && self.queues.len() >= MAX_PEERS {
            return Sent::Dropped(DropReason::TooManyPeers);
        }
        let q = self.queues.entry(peer).or_default();
        if q.len() >= MAX_QUEUED {
            return Sent::Dropped(DropReason::QueueFull);
        }
        q.push_back(data.to_vec());
        Sent::Queued
    }

    fn free_channel(&mut self) -> Option<u16> {
        for _ in CHANNEL_MIN..=CHANNEL_MAX {
            let n = self.next_channel;
            self.next_channel = if n == CHANNEL_MAX { CHANNEL_MIN } else { n + 1 };
            if !self.by_number.contains_key(&n) {
                return Some(n);
            }
        }
        None
    }

    /// Binds a channel (or, without channels, installs a permission) towards a peer ahead
    /// of any data, unless one exists or the limit is reached
    pub(crate) fn prepare(&mut self, now: Instant, peer: SocketAddr, out: &mut VecDeque<Datagram>) {
        let Some(relayed) = self.relayed() else {
            return;
        };
        if peer.is_ipv4() != relayed.is_ipv4() {
            return;
        }
        if self.use_channels {
            if self.channels.contains_key(&peer) || self.channels.len() >= MAX_PEERS {
                return;
            }
            let Some(number) = self.free_channel() else {
                return;
            };
            self.channels.insert(
                peer,
                Channel {
                    number,
                    grant: Grant::Pending,
                    used: false,
                },
            );
            self.by_number.insert(number, peer);
            self.request(now, Purpose::Bind(peer, number), out);
        } else {
            let ip = peer.ip();
            if self.permissions.contains_key(&ip) || self.permissions.len() >= MAX_PEERS {
                return;
            }
            self.permissions.insert(
                ip,
                Permission {
                    grant: Grant::Pending,
                    used: false,
                },
            );
            self.request(now, Purpose::Permission(ip), out);
        }
    }

    /// The peer a ChannelData number belongs to
    pub(crate) fn channel_peer(&mut self, number: u16) -> Option<SocketAddr> {
        self.relayed()?;
        let peer = *self.by_number.get(&number)?;
        if let Some(c) = self.channels.get_mut(&peer) {
            c.used = true;
        }
        if let Some(p) = self.permissions.get_mut(&peer.ip()) {
            p.used = true;
        }
        Some(peer)
    }

    /// The channel bound to a peer, if any (for tests and figures)
    pub(crate) fn channel_of(&self, peer: SocketAddr) -> Option<u16> {
        self.channels
            .get(&peer)
            .filter(|c| c.grant.is_active())
            .map(|c| c.number)
    }

    /// Releases the allocation (Refresh with LIFETIME 0)
    pub(crate) fn release(&mut self, now: Instant, out: &mut VecDeque<Datagram>) {
        match self.state {
            State::Allocated { .. } => {
                self.pending.clear();
                self.state = State::Releasing;
                self.request(now, Purpose::Refresh(0), out);
            }
            State::Allocating => {
                // Nothing to release yet; the server lets a half-made allocation expire.
                self.state = State::Done;
                self.clear();
            }
            State::Releasing | State::Done => {}
        }
    }

    /// When [`Self::handle_timeout`] is next due
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.pending.iter().map(|p| p.tx.deadline()).min();
        let mut take = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        };
        if let State::Allocated {
            expires,
            refresh_at,
            ..
        } = self.state
        {
            take(Some(refresh_at.min(expires)));
        }
        for p in self.permissions.values() {
            take(p.grant.deadline());
        }
        for c in self.channels.values() {
            take(c.grant.deadline());
        }
        t
    }

    /// Retransmits, refreshes and expires
    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Datagram>) {
        let mut i = 0;
        while i < self.pending.len() {
            match self.pending[i].tx.handle_timeout(now) {
                TxTimeout::Wait => i += 1,
                TxTimeout::Retransmit => {
                    out.push_back(Datagram {
                        source: self.local,
                        destination: self.server,
                        contents: self.pending[i].tx.request.clone(),
                    });
                    i += 1;
                }
                TxTimeout::TimedOut => {
                    let p = self.pending.swap_remove(i);
                    self.on_failure(now, p.purpose, ServerError::Timeout, out);
                }
            }
        }
        let State::Allocated {
            expires,
            refresh_at,
            ..
        } = &mut self.state
        else {
            return;
        };
        if now >= *expires {
            warn!(server = %self.server, "turn: allocation expired");
            self.state = State::Done;
            self.clear();
            self.events.push_back(TurnEvent::Lost(ServerError::Timeout));
            return;
        }
        if now >= *refresh_at {
            // Not again until this refresh is answered (it reschedules) or the allocation expires.
            *refresh_at = *expires;
            self.request(now, Purpose::Refresh(REQUESTED_LIFETIME), out);
        }
        let mut requests = Vec::new();
        // Refusals are forgotten once they may be retried, so churning peers cannot fill
        // the maps with them.
        self.permissions
            .retain(|_, p| !matches!(p.grant, Grant::Failed { retry_at } if now >= retry_at));
        let forgotten: Vec<_> = self
            .channels
            .iter()
            .filter(|(_, c)| matches!(c.grant, Grant::Failed { retry_at } if now >= retry_at))
            .map(|(peer, c)| (*peer, c.number))
            .collect();
        for (peer, number) in forgotten {
            self.channels.remove(&peer);
            self.by_number.remove(&number);
        }
        self.permissions.retain(|ip, p| match p.grant {
            Grant::Active {
                expires,
                refresh_at,
            } => {
                if now >= expires {
                    debug!(%ip, "turn: permission expired");
                    return false;
                }
                if now >= refresh_at {
                    p.grant = Grant::Active {
                        expires,
                        refresh_at: expires,
                    };
                    if p.used {
                        p.used = false;
                        requests.push(Purpose::Permission(*ip));
                    }
                }
                true
            }
            _ => true,
        });
        let mut expired = Vec::new();
        for (peer, c) in &mut self.channels {
            if let Grant::Active {
                expires,
                refresh_at,
            } = c.grant
            {
                if now >= expires {
                    expired.push(*peer);
                } else if now >= refresh_at {
                    c.grant = Grant::Active {
                        expires,
                        refresh_at: expires,
                    };
                    if c.used {
                        c.used = false;
                        requests.push(Purpose::Bind(*peer, c.number));
                    }
                }
            }
        }
        for peer in expired {
            debug!(%peer, "turn: channel expired");
            if let Some(c) = self.channels.remove(&peer) {
                self.by_number.remove(&c.number);
            }
        }
        for purpose in requests {
            self.request(now, purpose, out);
        }
    }
}

fn lifetimes(now: Instant, lifetime: u32) -> (Instant, Instant) {
    let lifetime = Duration::from_secs(u64::from(lifetime));
    let margin = REFRESH_MARGIN.min(lifetime / 4);
    (now + lifetime, now + lifetime - margin)
}

fn active(now: Instant, lifetime: Duration) -> Grant {
    Grant::Active {
        expires: now + lifetime,
        refresh_at: now + lifetime - REFRESH_MARGIN,
    }
}

fn peers_on<V>(map: &BTreeMap<SocketAddr, V>, ip: IpAddr) -> Vec<SocketAddr> {
    map.keys().filter(|a| a.ip() == ip).copied().collect()
}
