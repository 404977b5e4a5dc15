//! The simulation: hosts, links, the signaling server, flows and the scheduler

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use meshrtc::session::{Event, Input, Output, Session, SessionConfig};
use meshrtc::signal::server::{ConnId, Server, ServerConfig, ServerOutput};
use meshrtc::signal::{ClientFrame, LeftReason, PeerId, RoomId, ServerFrame};
use meshrtc::{CommandError, Config, DataMessage, Participant, PeerStats, Receive, Transmit};

use crate::clock::{Anchor, Clock};
use crate::cross::{Admitted, CrossStats, CrossTrafficConfig, Shared, SharedBottleneckConfig};
use crate::link::{charged_size, mix, Link, LinkConfig, LinkStats, Verdict};
use crate::media::{
    Generator, MediaSource, MediaStats, MediaStream, MediaStreamConfig, MediaStreamId,
    PatternCache, SentFrame, AUDIO_RATE,
};
use crate::nat::{
    nat_ip, Nat, NatConfig, NatStats, ServerDatagram, ServerHost, ServerId, ServerStats,
    TurnServerSpec,
};
use crate::rates::{RateLog, RateSample};
use crate::Error;

/// Index of a host in the simulation
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

/// Index of a flow in the simulation
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId(pub usize);

/// Configuration of a simulation
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed for links, participants, the signaling server and str0m's thread-local generator
    pub seed: u64,
    /// One-way delay between a host and the signaling server
    pub signal_latency: Duration,
    /// The link used between two hosts unless [`Sim::set_link`] says otherwise
    pub default_link: LinkConfig,
    /// How often every participant's per-peer statistics are sampled (the last sample of a
    /// peer is kept after it goes away)
    pub stats_interval: Duration,
    /// How often every directed pair's rates are sampled ([`Sim::rate_samples`]; zero: never)
    pub rate_interval: Duration,
    /// How long the signaling server holds a dropped peer's place for its resume (zero, the
    /// default: the room hears `peer.left` at once, as signaling version 1)
    pub resume_grace: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            signal_latency: Duration::from_millis(5),
            default_link: LinkConfig::with_latency(Duration::from_millis(10)),
            stats_interval: Duration::from_secs(1),
            rate_interval: Duration::from_millis(250),
            resume_grace: Duration::ZERO,
        }
    }
}

/// How a host is set up
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostOptions {
    /// The host's clock
    pub clock: Clock,
    /// The NAT in front of the host (`None`: its address is public)
    pub nat: Option<NatConfig>,
}

/// Node number of the first STUN/TURN server in link keys (hosts are numbered from 0)
const SERVER_NODE: usize = 1 << 24;

/// One line of the simulation's event log
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Virtual time since the start
    pub at: Duration,
    /// The host the event happened on
    pub host: HostId,
    /// A stable description of the event (kind and peer)
    pub what: String,
}

/// A change the timeline applies at a given virtual time ([`Sim::schedule`])
#[derive(Debug, Clone)]
pub enum Action {
    /// Replace the configuration of the link `from → to`
    SetLink {
        /// Sending host
        from: HostId,
        /// Receiving host
        to: HostId,
        /// The new configuration
        config: LinkConfig,
    },
    /// Cut the link `from → to`: packets entering it or arriving on it are dropped
    LinkDown {
        /// Sending host
        from: HostId,
        /// Receiving host
        to: HostId,
    },
    /// Repair the link `from → to`
    LinkUp {
        /// Sending host
        from: HostId,
        /// Receiving host
        to: HostId,
    },
    /// Cut a host off: every link to and from it is down and its signaling frames are held
    /// (as TCP would) until [`Action::Reconnect`]
    Isolate(HostId),
    /// Repair a host cut off by [`Action::Isolate`]; held signaling frames go out now
    Reconnect(HostId),
    /// Join the room (a host that left gets a fresh participant and signaling connection)
    Join {
        /// The host
        host: HostId,
        /// The room
        room: String,
        /// The peer id to ask for
        peer_id: String,
    },
    /// Leave the room
    Leave(HostId),
    /// Restart the signaling server: every connection drops and the server forgets every
    /// room (clients reconnect and announce afresh)
    RestartServer,
    /// Cut a host's signaling only (its media paths stay): its connection drops and new
    /// ones are refused until [`Action::RestoreSignaling`]
    CutSignaling(HostId),
    /// Let a host reach the signaling server again
    RestoreSignaling(HostId),
    /// Give a host a new address (a move between networks): its old address stops working
    /// and its session is told of the change
    MoveHost(HostId),
}

/// A stream of fixed-size data messages at a fixed rate, measured end to end
///
/// Each message carries its flow, a sequence number and its virtual send time; the receiver's
/// side of the simulation reads them to measure one-way delay, loss and lateness. A tick
/// at which the sender has no open channel to the receiver sends nothing (it is counted as
/// `not_connected`).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowConfig {
    /// The stream's name in reports (for example `data`)
    pub name: String,
    /// Sending host
    pub from: HostId,
    /// Receiving host
    pub to: HostId,
    /// Time between messages
    pub interval: Duration,
    /// Message size in bytes (at least [`FLOW_HEADER_BYTES`])
    pub size: usize,
    /// First tick
    pub start: Duration,
    /// No tick at or after this time (`None`: until the run ends)
    pub stop: Option<Duration>,
    /// A message is late if its one-way delay exceeds this
    pub late_after: Duration,
}

/// Bytes of a flow message's header (magic, flow, sequence number, send time)
pub const FLOW_HEADER_BYTES: usize = 24;

const FLOW_MAGIC: &[u8; 4] = b"MSIM";

/// Timeouts fed to one host at one instant before its deadline is nudged 1 ms forward
const MAX_REFEEDS: u32 = 16;

/// One received flow message
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelaySample {
    /// Its sequence number
    pub seq: u64,
    /// When it was sent (virtual time)
    pub sent_at: Duration,
    /// Its one-way delay (virtual time)
    pub delay: Duration,
}

/// What a flow measured
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowStats {
    /// Messages the sender's participant accepted
    pub sent: u64,
    /// Ticks skipped because the channel to the receiver was not open
    pub not_connected: u64,
    /// Messages the participant refused (send queue full)
    pub send_failed: u64,
    /// Distinct messages received
    pub received: u64,
    /// Messages received more than once
    pub duplicates: u64,
    /// Messages received after one with a higher sequence number
    pub out_of_order: u64,
    /// Messages a full reconnect reported as possibly undelivered (`DataUndelivered`): not
    /// lost silently, the application was told
    pub undelivered: u64,
    /// Send time of every accepted message, by sequence number
    pub sent_at: Vec<Duration>,
    /// Every received message, in arrival order
    pub samples: Vec<DelaySample>,
    received_seqs: BTreeSet<u64>,
    max_seq: Option<u64>,
}

struct Flow {
    config: FlowConfig,
    stats: FlowStats,
}

/// How a host's deadlines were met: the check that local deadlines map back to virtual time
/// exactly
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeoutStats {
    /// Timeouts fed at the first virtual nanosecond at which the host's clock reached the
    /// participant's deadline
    pub exact: u64,
    /// Timeouts fed later than that because the deadline had already passed when it was
    /// given (or a deadline that would spin was pushed back)
    pub overdue: u64,
    /// Timeouts fed before the deadline (never, unless the clock conversion is wrong)
    pub early: u64,
}

/// When a host first connected to a peer
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectInfo {
    /// Virtual time of the `PeerConnected` event
    pub at: Duration,
    /// The connect time the participant reported (its local clock)
    pub connect_time: Duration,
}

struct Host {
    core: Core,
    config: Config,
    clock: Clock,
    addr: SocketAddr,
    /// The current signaling connection, while the session has one (or is opening one)
    conn: Option<ConnId>,
    /// Signaling is cut ([`Action::CutSignaling`]): connections are refused
    signal_cut: bool,
    peer_id: Option<PeerId>,
    joined_once: bool,
    incarnation: u64,
    /// Virtual deadline of the participant and the generation of its heap entry
    deadline: u64,
    deadline_gen: u64,
    /// The participant's deadline on its own clock, and whether `deadline` is its exact
    /// virtual image
    deadline_local: i128,
    deadline_exact: bool,
    last_timeout_fed: Option<u64>,
    /// Timeouts fed at `last_timeout_fed` beyond the first
    refeeds: u32,
    timeouts: TimeoutStats,
    events: Vec<(Duration, Event)>,
    errors: Vec<(Duration, String)>,
    isolated: bool,
    held: Vec<SignalHop>,
    connects: BTreeMap<PeerId, ConnectInfo>,
    last_stats: BTreeMap<PeerId, PeerStats>,
    /// The NAT in front of the host
    nat: Option<Nat>,
    /// The media streams this host sends, by kind
    audio_stream: Option<usize>,
    video_stream: Option<usize>,
    /// For each peer whose media plays here: the incarnation of its participant that sent
    /// it (fixed at its first playout, forgotten when the peer leaves)
    media_epoch: BTreeMap<PeerId, u64>,
}

/// What a host runs: a participant that has not joined yet, or its session
enum Core {
    Idle(Box<Participant>),
    Running(Box<Session>),
}

impl Core {
    fn participant(&self) -> &Participant {
        match self {
            Self::Idle(p) => p,
            Self::Running(s) => s.participant(),
        }
    }

    fn session(&mut self) -> Option<&mut Session> {
        match self {
            Self::Idle(_) => None,
            Self::Running(s) => Some(s),
        }
    }
}

#[derive(Debug)]
enum SignalHop {
    /// A new connection reaches the server (and the client learns it is up)
    Open(ConnId),
    /// The server closed a connection; the client learns it
    Closed(ConnId),
    ToServer(ConnId, String),
    ToClient(ConnId, String),
    Disconnect(ConnId),
}

/// What the scheduler does next; the derived order breaks ties at one instant
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// A timeline action, in scheduling order
    Action(u64),
    /// A signaling hop, in sending order
    Signal(u64),
    /// A datagram arriving, by link and then by the order it entered the link
    Deliver { from: usize, to: usize, seq: u64 },
    /// A flow's tick
    Flow(usize),
    /// A media stream's capture
    Media(usize),
    /// A cross-traffic flow's packet
    Cross(usize),
    /// A host's deadline (stale generations are skipped)
    Host { idx: usize, generation: u64 },
    /// A STUN/TURN server's deadline (skipped unless it is still the server's next one)
    TurnServer(usize),
    /// Sample every participant's statistics
    Stats,
    /// Sample every pair's rates
    Rates,
    /// The signaling server's deadline (stale generations are skipped)
    Server(u64),
}

/// What a scheduled item carries; boxed, so the heap moves small entries
enum Payload {
    None,
    Action(Box<Action>),
    Signal(Box<SignalHop>),
    Datagram(Box<(Transmit, usize)>),
}

struct Scheduled {
    at: u64,
    due: Due,
    payload: Payload,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.due).cmp(&(other.at, other.due))
    }
}

/// A deterministic simulation of many participants over impaired links
///
/// Everything runs on the calling thread in virtual time. The scheduler always takes the
/// earliest pending item; at one instant it goes timeline actions → signaling hops (in
/// sending order) → datagrams (by `(from, to)` and then the order they entered that link)
/// → flow ticks → media captures → host deadlines (by host) → statistics samples. Given the same
/// configuration and seed the run is the same, whatever order str0m's hash maps emit things
/// in within one instant, and however long DTLS handshake packets happen to be
/// ([`charged_size`]).
///
/// `Sim::new` seeds the thread-local `fastrand` generator that str0m draws from, so run one
/// simulation per thread at a time.
pub struct Sim {
    config: SimConfig,
    anchor: Anchor,
    now: u64,
    hosts: Vec<Host>,
    by_addr: BTreeMap<SocketAddr, usize>,
    conn_host: BTreeMap<ConnId, usize>,
    next_conn: u64,
    relay: Server,
    links: BTreeMap<(usize, usize), Link>,
    link_seq: BTreeMap<(usize, usize), u64>,
    link_configs: BTreeMap<(usize, usize), LinkConfig>,
    cut: BTreeSet<(usize, usize)>,
    flows: Vec<Flow>,
    media: Vec<MediaStream>,
    patterns: PatternCache,
    shared: Shared,
    rates: RateLog,
    by_peer: BTreeMap<PeerId, usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    log: Vec<LogEntry>,
    server_restarts: u64,
    /// When the server's deadline is scheduled, and its generation
    server_timer: Option<u64>,
    server_gen: u64,
    moves: u64,
    /// Public STUN/TURN servers; node `SERVER_NODE + i` in link keys
    servers: Vec<ServerHost>,
    /// Server deadlines in the queue, `(server, at)`
    server_wakes: BTreeSet<(usize, u64)>,
    /// Public IP → server, and NAT public IP → host behind it
    server_ips: BTreeMap<std::net::IpAddr, usize>,
    nat_ips: BTreeMap<std::net::IpAddr, usize>,
}

impl Sim {
    /// Creates an empty simulation
    ///
    /// # Panics
    ///
    /// If `config.default_link` is not valid ([`LinkConfig::validate`]): check it first.
    pub fn new(config: SimConfig) -> Self {
        if let Err(e) = config.default_link.validate() {
            panic!("SimConfig::default_link is not valid: {e}");
        }
        // str0m draws some randomness from the thread-local generator: seed it here so the
        // run depends only on the seed.
        fastrand::seed(config.seed);
        let relay = Server::new(server_config(&config, config.seed));
        let mut sim = Self {
            anchor: Anchor::new(),
            now: 0,
            hosts: Vec::new(),
            by_addr: BTreeMap::new(),
            conn_host: BTreeMap::new(),
            next_conn: 0,
            relay,
            links: BTreeMap::new(),
            link_seq: BTreeMap::new(),
            link_configs: BTreeMap::new(),
            cut: BTreeSet::new(),
            flows: Vec::new(),
            media: Vec::new(),
            patterns: PatternCache::default(),
            shared: Shared::default(),
            rates: RateLog::default(),
            by_peer: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            log: Vec::new(),
            server_restarts: 0,
            server_timer: None,
            server_gen: 0,
            moves: 0,
            servers: Vec::new(),
            server_wakes: BTreeSet::new(),
            server_ips: BTreeMap::new(),
            nat_ips: BTreeMap::new(),
            config,
        };
        if !sim.config.stats_interval.is_zero() {
            let at = sim.config.stats_interval.as_nanos() as u64;
            sim.push(at, Due::Stats, Payload::None);
        }
        if !sim.config.rate_interval.is_zero() {
            let at = sim.config.rate_interval.as_nanos() as u64;
            sim.push(at, Due::Rates, Payload::None);
        }
        sim
    }

    /// The configuration the simulation was created with
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Virtual time since the start
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// The current virtual instant (the signaling server's clock, which has no drift)
    pub fn now(&self) -> Instant {
        self.anchor.instant(self.now as i128)
    }

    /// The host's local clock reading now, as its participant sees it
    pub fn local_now(&self, host: HostId) -> Instant {
        self.local_instant(host.0)
    }

    /// The host's clock
    pub fn clock(&self, host: HostId) -> Clock {
        self.hosts[host.0].clock
    }

    /// Adds a host with an ideal clock; see [`add_host_with`](Self::add_host_with)
    pub fn add_host(&mut self, config: Config) -> HostId {
        self.add_host_with(config, HostOptions::default())
    }

    /// Adds a host running a participant with `config` (its seed is derived from the
    /// simulation's seed and the host's index) and connects it to the signaling server
    pub fn add_host_with(&mut self, config: Config, options: HostOptions) -> HostId {
        let idx = self.hosts.len();
        let ip = Ipv4Addr::new(127, 0, (idx / 250) as u8 + 1, (idx % 250) as u8 + 1);
        let addr = SocketAddr::from((ip, 5000));
        let local = self.anchor.instant(options.clock.local_ns(self.now));
        let participant = new_participant(&config, self.participant_seed(idx, 0), addr, local);
        self.hosts.push(Host {
            core: Core::Idle(Box::new(participant)),
            config,
            clock: options.clock,
            addr,
            conn: None,
            signal_cut: false,
            peer_id: None,
            joined_once: false,
            incarnation: 0,
            deadline: u64::MAX,
            deadline_gen: 0,
            deadline_local: 0,
            deadline_exact: false,
            refeeds: 0,
            last_timeout_fed: None,
            timeouts: TimeoutStats::default(),
            events: Vec::new(),
            errors: Vec::new(),
            isolated: false,
            held: Vec::new(),
            connects: BTreeMap::new(),
            last_stats: BTreeMap::new(),
            nat: None,
            audio_stream: None,
            video_stream: None,
            media_epoch: BTreeMap::new(),
        });
        match options.nat {
            Some(nat) => {
                // The private address is reachable from nowhere: only through the NAT.
                let public = nat_ip(self.nat_ips.len());
                let seed = mix(self.config.seed, 0x7a70_0000 + idx as u64);
                self.nat_ips.insert(public, idx);
                self.hosts[idx].nat = Some(Nat::new(nat, public, seed));
            }
            None => {
                self.by_addr.insert(addr, idx);
            }
        }
        HostId(idx)
    }

    /// Adds a public STUN/TURN server host at `127.250.0.n:3478` (n = 1, 2, …), running the
    /// sans-IO `turn-server-proto` server in virtual time; participants name it in
    /// `Config::ice_servers` as `stun:` or `turn:` + [`server_addr`](Self::server_addr)
    ///
    /// Links to and from it are the default link unless
    /// [`set_server_link`](Self::set_server_link) says otherwise.
    pub fn add_turn_server(&mut self, spec: &TurnServerSpec) -> ServerId {
        let i = self.servers.len();
        let ip = Ipv4Addr::new(127, 250, (i / 250) as u8, (i % 250) as u8 + 1);
        let addr = SocketAddr::from((ip, 3478));
        self.servers.push(ServerHost::new(addr, spec));
        self.server_ips.insert(addr.ip(), i);
        // From one of its relayed addresses to another: inside the server, no link.
        let node = SERVER_NODE + i;
        self.link_configs
            .insert((node, node), LinkConfig::with_latency(Duration::ZERO));
        ServerId(i)
    }

    /// The address a STUN/TURN server listens on
    pub fn server_addr(&self, server: ServerId) -> SocketAddr {
        self.servers[server.0].addr
    }

    /// What a STUN/TURN server did so far
    pub fn server_stats(&self, server: ServerId) -> ServerStats {
        self.servers[server.0].stats
    }

    /// Sets the links between a host and a STUN/TURN server (both directions), now
    pub fn set_server_link(
        &mut self,
        host: HostId,
        server: ServerId,
        config: LinkConfig,
    ) -> Result<(), Error> {
        config.validate()?;
        let now = self.elapsed();
        let node = SERVER_NODE + server.0;
        for key in [(host.0, node), (node, host.0)] {
            if let Some(link) = self.links.get_mut(&key) {
                link.set_config(config.clone(), now)?;
            }
            self.link_configs.insert(key, config.clone());
        }
        Ok(())
    }

    /// What the NAT in front of a host did so far (`None`: the host has no NAT)
    pub fn nat_stats(&self, host: HostId) -> Option<NatStats> {
        self.hosts[host.0].nat.as_ref().map(|n| n.stats)
    }

    /// The public IP of the NAT in front of a host
    pub fn nat_public_ip(&self, host: HostId) -> Option<std::net::IpAddr> {
        self.hosts[host.0].nat.as_ref().map(|n| n.public_ip)
    }

    fn participant_seed(&self, idx: usize, incarnation: u64) -> u64 {
        mix(mix(self.config.seed, 0x5eed_0000 + idx as u64), incarnation)
    }

    /// Opens a signaling connection for the host: it reaches the server one signaling
    /// latency later (held while the host is cut off, as TCP would)
    fn connect_signaling(&mut self, idx: usize) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conn_host.insert(conn, idx);
        self.hosts[idx].conn = Some(conn);
        let at = self.now + self.config.signal_latency.as_nanos() as u64;
        self.push_signal(at, SignalHop::Open(conn));
    }

    /// Sets the link from `from` to `to` (one direction), now
    pub fn set_link(&mut self, from: HostId, to: HostId, config: LinkConfig) -> Result<(), Error> {
        config.validate()?;
        let now = self.elapsed();
        if let Some(link) = self.links.get_mut(&(from.0, to.0)) {
            link.set_config(config.clone(), now)?;
        }
        self.link_configs.insert((from.0, to.0), config);
        Ok(())
    }

    /// The link configuration from `from` to `to`
    pub fn link_config(&self, from: HostId, to: HostId) -> &LinkConfig {
        self.link_configs
            .get(&(from.0, to.0))
            .unwrap_or(&self.config.default_link)
    }

    /// The counters of the link from `from` to `to` (zero if it never carried a packet)
    pub fn link_stats(&self, from: HostId, to: HostId) -> LinkStats {
        self.links
            .get(&(from.0, to.0))
            .map(|l| *l.stats())
            .unwrap_or_default()
    }

    /// How long the last packet from `from` to `to` waited in the link's bottleneck queue
    pub fn link_queue_wait(&self, from: HostId, to: HostId) -> Duration {
        self.links
            .get(&(from.0, to.0))
            .map_or(Duration::ZERO, |l| l.queue_wait())
    }

    /// The host's datagram address
    pub fn addr(&self, host: HostId) -> SocketAddr {
        self.hosts[host.0].addr
    }

    /// The host's participant (a fresh one until the host joins)
    pub fn participant(&self, host: HostId) -> &Participant {
        self.hosts[host.0].core.participant()
    }

    /// The host's session, once it joined
    pub fn session(&self, host: HostId) -> Option<&Session> {
        match &self.hosts[host.0].core {
            Core::Idle(_) => None,
            Core::Running(s) => Some(s),
        }
    }

    /// The peer id the host asked for when it joined
    pub fn peer_id(&self, host: HostId) -> Option<&PeerId> {
        self.hosts[host.0].peer_id.as_ref()
    }

    /// The signaling server's state
    pub fn relay(&self) -> &Server {
        &self.relay
    }

    /// Schedules `action` at virtual time `at` (now if `at` has passed)
    pub fn schedule(&mut self, at: Duration, action: Action) {
        self.seq += 1;
        let at = (at.as_nanos() as u64).max(self.now);
        self.push(at, Due::Action(self.seq), Payload::Action(Box::new(action)));
    }

    /// Applies `action` now
    pub fn apply(&mut self, action: Action) -> Result<(), Error> {
        tracing::debug!(at = ?self.elapsed(), ?action, "timeline");
        match action {
            Action::SetLink { from, to, config } => self.set_link(from, to, config)?,
            Action::LinkDown { from, to } => {
                self.cut.insert((from.0, to.0));
                self.refresh_links();
            }
            Action::LinkUp { from, to } => {
                self.cut.remove(&(from.0, to.0));
                self.refresh_links();
            }
            Action::Isolate(h) => {
                self.hosts[h.0].isolated = true;
                self.refresh_links();
            }
            Action::Reconnect(h) => {
                self.hosts[h.0].isolated = false;
                self.refresh_links();
                let held = std::mem::take(&mut self.hosts[h.0].held);
                let at = self.now + self.config.signal_latency.as_nanos() as u64;
                for hop in held {
                    self.push_signal(at, hop);
                }
            }
            Action::Join {
                host,
                room,
                peer_id,
            } => self.join(host, &room, &peer_id),
            Action::Leave(h) => self.leave(h),
            Action::RestartServer => self.restart_server(),
            Action::CutSignaling(h) => {
                self.hosts[h.0].signal_cut = true;
                self.drop_signaling(h);
            }
            Action::RestoreSignaling(h) => self.hosts[h.0].signal_cut = false,
            Action::MoveHost(h) => self.move_host(h.0),
        }
        Ok(())
    }

    fn path_up(&self, from: usize, to: usize) -> bool {
        // Servers are never cut off; links to them can be.
        let isolated = |n: usize| n < SERVER_NODE && self.hosts[n].isolated;
        !self.cut.contains(&(from, to)) && !isolated(from) && !isolated(to)
    }

    fn refresh_links(&mut self) {
        let keys: Vec<(usize, usize)> = self.links.keys().copied().collect();
        for (a, b) in keys {
            let up = self.path_up(a, b);
            if let Some(l) = self.links.get_mut(&(a, b)) {
                l.set_up(up);
            }
        }
    }

    /// Joins `room` on `host` with the given peer id
    ///
    /// A host that already joined once gets a fresh session (same configuration and clock,
    /// a new seed) and a new signaling connection; if it is still in a room it leaves
    /// first.
    ///
    /// # Panics
    ///
    /// If `room` or `peer_id` is not a valid id ([`RoomId::new`], [`PeerId::new`]).
    pub fn join(&mut self, host: HostId, room: &str, peer_id: &str) {
        let idx = host.0;
        if self.hosts[idx].joined_once {
            if self.hosts[idx].core.participant().room().is_some() {
                self.leave(host);
            }
            self.restart_host(idx);
        }
        let room = RoomId::new(room).expect("room ids are checked by the caller");
        let id = PeerId::new(peer_id).expect("peer ids are checked by the caller");
        self.by_peer.insert(id.clone(), idx);
        let seed = self.participant_seed(idx, self.hosts[idx].incarnation);
        let local = self.local_instant(idx);
        let h = &mut self.hosts[idx];
        h.peer_id = Some(id.clone());
        h.joined_once = true;
        let mut config = SessionConfig::new(room);
        config.peer_id = Some(id);
        config.participant = participant_config(&h.config, seed);
        let mut session = Session::new(config, local, None);
        session
            .participant_mut()
            .add_local_candidate(h.addr)
            .expect("a loopback host candidate is valid; panic means bug");
        h.core = Core::Running(Box::new(session));
        self.drain_host(idx);
    }

    fn restart_host(&mut self, idx: usize) {
        // The old connection goes away (a no-op for the server if it already closed it).
        if let Some(old) = self.hosts[idx].conn.take() {
            self.push_signal(self.now, SignalHop::Disconnect(old));
        }
        let incarnation = self.hosts[idx].incarnation + 1;
        let h = &mut self.hosts[idx];
        h.incarnation = incarnation;
        h.last_timeout_fed = None;
        h.media_epoch.clear();
    }

    /// Leaves the room on `host` (sends `peer.disconnect`, closes every peer)
    pub fn leave(&mut self, host: HostId) {
        self.snapshot_stats(host.0);
        if let Some(s) = self.hosts[host.0].core.session() {
            s.leave();
        }
        self.drain_host(host.0);
    }

    /// Runs an application command on `host`'s session at the current time (given in the
    /// host's local clock), then drains it, e.g. to send media:
    /// `sim.with(host, |s, now| s.send_audio(now, &pcm))`
    ///
    /// # Panics
    ///
    /// If the host has not joined.
    pub fn with<R>(&mut self, host: HostId, f: impl FnOnce(&mut Session, Instant) -> R) -> R {
        let now = self.local_instant(host.0);
        let session = self.hosts[host.0]
            .core
            .session()
            .expect("Sim::with needs a host that has joined");
        let r = f(session, now);
        self.drain_host(host.0);
        r
    }

    /// Sends a data message from `host` to `to`
    pub fn send(
        &mut self,
        host: HostId,
        to: &PeerId,
        message: DataMessage,
    ) -> Result<(), CommandError> {
        let res = match self.hosts[host.0].core.session() {
            Some(s) => s.send_data(to, message),
            None => Err(CommandError::NotJoined),
        };
        self.drain_host(host.0);
        res
    }

    /// Broadcasts a data message from `host`; returns how many peers accepted it
    pub fn broadcast(&mut self, host: HostId, message: DataMessage) -> Result<usize, CommandError> {
        let res = match self.hosts[host.0].core.session() {
            Some(s) => s.broadcast(message),
            None => Err(CommandError::NotJoined),
        };
        self.drain_host(host.0);
        res
    }

    /// Delivers a datagram to `host` as if it came from `source`, now
    ///
    /// Goes to the participant directly, so that what it makes of the datagram can be
    /// checked; a routine drop (stray, malformed) is `Ok` and counted.
    ///
    /// # Panics
    ///
    /// If the host has not joined.
    pub fn inject_datagram(
        &mut self,
        host: HostId,
        source: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), meshrtc::InputError> {
        let local = self.local_instant(host.0);
        let h = &mut self.hosts[host.0];
        let recv = Receive {
            source,
            destination: h.addr,
            contents: bytes,
        };
        let session = h
            .core
            .session()
            .expect("inject_datagram needs a joined host");
        let res = session
            .participant_mut()
            .handle_input(meshrtc::Input::Receive(local, recv));
        self.drain_host(host.0);
        res
    }

    /// Delivers a signaling frame to `host` as if the server sent it, now (to the
    /// participant directly, as [`inject_datagram`](Self::inject_datagram) does)
    ///
    /// # Panics
    ///
    /// If the host has not joined.
    pub fn inject_signal(
        &mut self,
        host: HostId,
        frame: ServerFrame,
    ) -> Result<(), meshrtc::InputError> {
        let local = self.local_instant(host.0);
        let session = self.hosts[host.0]
            .core
            .session()
            .expect("inject_signal needs a joined host");
        let res = session
            .participant_mut()
            .handle_input(meshrtc::Input::Signal(local, frame));
        self.drain_host(host.0);
        res
    }

    /// Events the host's session emitted, with their virtual times
    ///
    /// Flow messages ([`add_flow`](Self::add_flow)) and the playout of media streams
    /// ([`add_media_stream`](Self::add_media_stream)) are measured, not kept here.
    pub fn events(&self, host: HostId) -> &[(Duration, Event)] {
        &self.hosts[host.0].events
    }

    /// The mesh events among [`events`](Self::events) (peers joining, connecting, leaving,
    /// data, media that no stream measured), with their virtual times
    pub fn mesh_events(
        &self,
        host: HostId,
    ) -> impl Iterator<Item = (&Duration, &meshrtc::Event)> + '_ {
        self.hosts[host.0]
            .events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Mesh(m) => Some((t, m)),
                _ => None,
            })
    }

    /// Takes (and clears) the host's events
    pub fn take_events(&mut self, host: HostId) -> Vec<(Duration, Event)> {
        std::mem::take(&mut self.hosts[host.0].events)
    }

    /// Frames from the signaling server the host could not parse
    pub fn errors(&self, host: HostId) -> &[(Duration, String)] {
        &self.hosts[host.0].errors
    }

    /// How the host's deadlines were met so far
    pub fn timeout_stats(&self, host: HostId) -> TimeoutStats {
        self.hosts[host.0].timeouts
    }

    /// When the host first connected to `peer`
    pub fn connect_info(&self, host: HostId, peer: &PeerId) -> Option<ConnectInfo> {
        self.hosts[host.0].connects.get(peer).copied()
    }

    /// The host's statistics for `peer`: live if the peer is there, else the last sample
    pub fn peer_stats(&self, host: HostId, peer: &PeerId) -> Option<PeerStats> {
        let h = &self.hosts[host.0];
        h.core
            .participant()
            .peer_stats(peer)
            .or_else(|| h.last_stats.get(peer).cloned())
    }

    /// The log of every event on every host: kind, peer and virtual time
    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// Number of hosts
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Adds a flow of measured data messages
    pub fn add_flow(&mut self, config: FlowConfig) -> Result<FlowId, Error> {
        if config.interval.is_zero() {
            return Err(Error::Config(format!(
                "flow {}: interval must be above zero",
                config.name
            )));
        }
        if config.size < FLOW_HEADER_BYTES || config.size > meshrtc::MAX_DATA_MESSAGE {
            return Err(Error::Config(format!(
                "flow {}: size must be within {FLOW_HEADER_BYTES}..={}",
                config.name,
                meshrtc::MAX_DATA_MESSAGE
            )));
        }
        if config.from == config.to
            || config.from.0 >= self.hosts.len()
            || config.to.0 >= self.hosts.len()
        {
            return Err(Error::Config(format!(
                "flow {}: needs two distinct existing hosts",
                config.name
            )));
        }
        let idx = self.flows.len();
        let start = (config.start.as_nanos() as u64).max(self.now);
        self.flows.push(Flow {
            config,
            stats: FlowStats::default(),
        });
        self.push(start, Due::Flow(idx), Payload::None);
        Ok(FlowId(idx))
    }

    /// A flow's configuration
    pub fn flow_config(&self, id: FlowId) -> &FlowConfig {
        &self.flows[id.0].config
    }

    /// What a flow measured so far
    pub fn flow_stats(&self, id: FlowId) -> &FlowStats {
        &self.flows[id.0].stats
    }

    /// Number of flows
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Adds a media stream: test sources captured on the sending host's clock and sent to
    /// every peer it is connected to; what each receiver plays is measured (and those
    /// playout events are not kept in [`events`](Self::events))
    ///
    /// The host's participant `Config` decides the codec and its settings: `capabilities`
    /// must include the kind, audio frames must match `media.opus` (frame length and
    /// channels), video goes out in the first of `media.video_codecs` the peer accepted.
    /// A host has at most one stream of each kind. Every receiver needs the capability too.
    pub fn add_media_stream(&mut self, config: MediaStreamConfig) -> Result<MediaStreamId, Error> {
        let bad = |what: String| Err(Error::Config(format!("media {}: {what}", config.name)));
        let Some(h) = self.hosts.get(config.from.0) else {
            return bad("no such host".into());
        };
        let media = &h.config.media;
        match config.source {
            MediaSource::Audio { frame, channels } => {
                if !h.config.capabilities.audio {
                    return bad("the sender's capabilities have no audio".into());
                }
                if h.audio_stream.is_some() {
                    return bad("the host already sends an audio stream".into());
                }
                if frame != Duration::from_millis(u64::from(media.opus.frame_ms))
                    || channels != media.opus.channels
                {
                    return bad(format!(
                        "frames of {frame:?} x {channels} channels do not match the sender's \
                         opus config ({} ms x {})",
                        media.opus.frame_ms, media.opus.channels
                    ));
                }
                // Fails here, not at the first frame, on settings the codec refuses.
                meshrtc::codec::OpusEncoder::new(media.opus)
                    .map_err(|e| Error::Config(format!("media {}: {e}", config.name)))?;
            }
            MediaSource::Video { width, height, fps } => {
                if !h.config.capabilities.video {
                    return bad("the sender's capabilities have no video".into());
                }
                if h.video_stream.is_some() {
                    return bad("the host already sends a video stream".into());
                }
                let Some(&codec) = media.video_codecs.first() else {
                    return bad("the sender offers no video codec".into());
                };
                if !(1..=120).contains(&fps) {
                    return bad(format!("fps {fps} is not in 1..=120"));
                }
                let cfg = meshrtc::codec::VideoEncoderConfig {
                    codec,
                    width,
                    height,
                    ..media.video
                };
                let check = if media.synthetic {
                    meshrtc::codec::synthetic::SyntheticVideoEncoder::new(cfg).map(|_| ())
                } else {
                    meshrtc::codec::video_encoder(cfg).map(|_| ())
                };
                check.map_err(|e| Error::Config(format!("media {}: {e}", config.name)))?;
            }
        }
        if config.stop.is_some_and(|s| s <= config.start) {
            return bad("stop must be after start".into());
        }
        let idx = self.media.len();
        let from = config.from.0;
        let start = (config.start.as_nanos() as u64).max(self.now);
        let local_start = self.hosts[from].clock.local_ns(start);
        match config.source {
            MediaSource::Audio { .. } => self.hosts[from].audio_stream = Some(idx),
            MediaSource::Video { .. } => self.hosts[from].video_stream = Some(idx),
        }
        let synthetic = self.hosts[from].config.media.synthetic;
        self.media
            .push(MediaStream::new(config, local_start, synthetic));
        self.push(start, Due::Media(idx), Payload::None);
        Ok(MediaStreamId(idx))
    }

    /// A media stream's configuration
    pub fn media_stream_config(&self, id: MediaStreamId) -> &MediaStreamConfig {
        &self.media[id.0].config
    }

    /// What `receiver` played of a media stream so far (`None` if it never was sent or
    /// played anything of it)
    pub fn media_stats(&self, id: MediaStreamId, receiver: HostId) -> Option<&MediaStats> {
        self.media[id.0].receivers.get(&receiver.0)
    }

    /// Frames of a stream sent to `receiver` and not played: `(lost, pending)`; pending
    /// ones were captured within the stream's lateness limit before `end`
    pub fn media_unplayed(&self, id: MediaStreamId, receiver: HostId, end: Duration) -> (u64, u64) {
        let m = &self.media[id.0];
        m.receivers
            .get(&receiver.0)
            .map_or((0, 0), |r| r.unplayed(&m.epochs, m.config.late_after, end))
    }

    /// Frames of a stream its sender's participant refused (codec errors)
    pub fn media_send_failed(&self, id: MediaStreamId) -> u64 {
        self.media[id.0].send_failed
    }

    /// Number of media streams
    pub fn media_stream_count(&self) -> usize {
        self.media.len()
    }

    /// Adds a queue that the links it lists share (before their own stages)
    pub fn add_shared_bottleneck(
        &mut self,
        config: SharedBottleneckConfig,
    ) -> Result<usize, Error> {
        self.shared.add_bottleneck(config, self.hosts.len())
    }

    /// Adds a cross-traffic flow into a shared bottleneck
    pub fn add_cross_traffic(&mut self, config: CrossTrafficConfig) -> Result<usize, Error> {
        let i = self.shared.add_flow(config)?;
        let start = (self.shared.flow_start(i).as_nanos() as u64).max(self.now);
        self.push(start, Due::Cross(i), Payload::None);
        Ok(i)
    }

    /// What cross-traffic flow `i` got through so far
    pub fn cross_stats(&self, i: usize) -> &CrossStats {
        self.shared.flow_stats(i)
    }

    /// Cross-traffic flow `i`'s configuration
    pub fn cross_config(&self, i: usize) -> &CrossTrafficConfig {
        self.shared.flow_config(i)
    }

    /// Number of cross-traffic flows
    pub fn cross_count(&self) -> usize {
        self.shared.flow_count()
    }

    /// The shared bottlenecks, in the order they were added
    pub fn shared_bottlenecks(&self) -> impl Iterator<Item = &SharedBottleneckConfig> {
        self.shared.bottleneck_configs()
    }

    /// The rates of the pair `from → to` sampled so far, every [`SimConfig::rate_interval`]
    pub fn rate_samples(&self, from: HostId, to: HostId) -> &[RateSample] {
        self.rates.samples((from.0, to.0))
    }

    fn sample_rates(&mut self) {
        let at = self.elapsed();
        let interval = self.config.rate_interval;
        for a in 0..self.hosts.len() {
            for b in 0..self.hosts.len() {
                if a == b {
                    continue;
                }
                let link = self
                    .links
                    .get(&(a, b))
                    .map(|l| (l.stats(), &l.config().rate));
                let sender = self.hosts[b]
                    .peer_id
                    .as_ref()
                    .and_then(|p| self.hosts[a].core.participant().peer_stats(p));
                self.rates
                    .record((a, b), at, interval, link, sender.as_ref());
            }
        }
    }

    /// The participant configuration the host was added with
    pub fn host_config(&self, host: HostId) -> &Config {
        &self.hosts[host.0].config
    }

    /// Runs until virtual time `at` (since the start)
    pub fn run_until(&mut self, at: Duration) {
        let end = at.as_nanos() as u64;
        while self.step(end) {}
        self.now = self.now.max(end);
    }

    /// Runs for `d` of virtual time
    pub fn run_for(&mut self, d: Duration) {
        let at = self.elapsed() + d;
        self.run_until(at);
    }

    /// Runs until `done` holds or `limit` of virtual time has passed; true if it held
    pub fn run_until_cond(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit.as_nanos() as u64;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(end) {
                self.now = self.now.max(end);
                return done(self);
            }
        }
    }

    fn push(&mut self, at: u64, due: Due, payload: Payload) {
        self.queue.push(Reverse(Scheduled { at, due, payload }));
    }

    fn push_signal(&mut self, at: u64, hop: SignalHop) {
        self.seq += 1;
        self.push(at, Due::Signal(self.seq), Payload::Signal(Box::new(hop)));
    }

    /// Processes the earliest item if it is not later than `end`; false if there was none
    fn step(&mut self, end: u64) -> bool {
        let Some(Reverse(next)) = self.queue.peek() else {
            return false;
        };
        if next.at > end {
            return false;
        }
        let Reverse(Scheduled { at, due, payload }) =
            self.queue.pop().expect("peeked above; panic means bug");
        self.now = self.now.max(at);
        match (due, payload) {
            (Due::Action(_), Payload::Action(a)) => {
                if let Err(e) = self.apply(*a) {
                    tracing::warn!(error = %e, "timeline action failed");
                }
            }
            (Due::Signal(_), Payload::Signal(hop)) => self.step_signal(*hop),
            (Due::Deliver { from, to, .. }, Payload::Datagram(d)) => {
                let (t, charged) = *d;
                self.step_deliver(from, to, t, charged)
            }
            (Due::Flow(i), _) => self.step_flow(i),
            (Due::Media(i), _) => self.step_media(i),
            (Due::Cross(i), _) => {
                if let Some(next) = self.shared.step_flow(i, self.now) {
                    self.push(next, Due::Cross(i), Payload::None);
                }
            }
            (Due::Rates, _) => {
                self.sample_rates();
                let next = self.now + self.config.rate_interval.as_nanos() as u64;
                self.push(next, Due::Rates, Payload::None);
            }
            (Due::Host { idx, generation }, _) => {
                if self.hosts[idx].deadline_gen == generation {
                    self.step_host(idx);
                }
            }
            (Due::TurnServer(i), _) => {
                self.server_wakes.remove(&(i, at));
                if self.servers[i].wake == Some(at) {
                    let out = self.servers[i].timeout(at);
                    self.server_out(i, out);
                }
            }
            (Due::Server(generation), _) => {
                if self.server_gen == generation {
                    self.server_timer = None;
                    let now = self.now();
                    self.relay.handle_timeout(now);
                    self.drain_server();
                }
            }
            (Due::Stats, _) => {
                for i in 0..self.hosts.len() {
                    self.snapshot_stats(i);
                }
                let next = self.now + self.config.stats_interval.as_nanos() as u64;
                self.push(next, Due::Stats, Payload::None);
            }
            (due, _) => unreachable!("{due:?} scheduled without its payload; panic means bug"),
        }
        true
    }

    fn step_signal(&mut self, hop: SignalHop) {
        let conn = match &hop {
            SignalHop::Open(c)
            | SignalHop::Closed(c)
            | SignalHop::ToServer(c, _)
            | SignalHop::ToClient(c, _)
            | SignalHop::Disconnect(c) => *c,
        };
        let host = self.conn_host.get(&conn).copied();
        // A cut-off host's frames wait, as TCP would, until it is reconnected.
        if let (Some(h), false) = (host, matches!(hop, SignalHop::Disconnect(_))) {
            if self.hosts[h].isolated {
                self.hosts[h].held.push(hop);
                return;
            }
        }
        let now = self.now();
        match hop {
            SignalHop::Open(conn) => {
                let Some(idx) = host else {
                    return;
                };
                if self.hosts[idx].conn != Some(conn) {
                    // A connection the host has since given up on.
                    return;
                }
                if self.hosts[idx].signal_cut {
                    self.hosts[idx].conn = None;
                    let reason = "connection refused".to_string();
                    self.feed(idx, |now| Input::SignalingDown(now, reason));
                    return;
                }
                self.relay.handle_connect(now, conn);
                self.drain_server();
                self.feed(idx, Input::SignalingUp);
            }
            SignalHop::Closed(conn) => {
                let Some(idx) = host else {
                    return;
                };
                if self.hosts[idx].conn != Some(conn) {
                    return;
                }
                self.hosts[idx].conn = None;
                let reason = "closed by the server".to_string();
                self.feed(idx, |now| Input::SignalingDown(now, reason));
            }
            SignalHop::ToServer(conn, text) => {
                self.relay.handle_text(now, conn, &text);
                self.drain_server();
            }
            SignalHop::Disconnect(conn) => {
                self.relay
                    .handle_disconnect(now, conn, LeftReason::Disconnect);
                self.drain_server();
            }
            SignalHop::ToClient(conn, text) => {
                // Delivered: no longer waiting on the server's side of the connection.
                self.relay.handle_written(now, conn, 1);
                let Some(idx) = host else {
                    return;
                };
                if self.hosts[idx].conn != Some(conn) {
                    // For a connection the host has since replaced.
                    return;
                }
                match ServerFrame::parse(&text) {
                    Ok(frame) => self.feed(idx, |now| Input::Signal(now, frame)),
                    Err(e) => {
                        let at = self.elapsed();
                        self.hosts[idx].errors.push((at, format!("bad frame: {e}")));
                    }
                }
            }
        }
    }

    /// Feeds one input to the host's session at its local time, then drains it
    fn feed(&mut self, idx: usize, input: impl FnOnce(Instant) -> Input<'static>) {
        let at = self.now as f64 / 1e9;
        let _span = tracing::debug_span!("host", host = idx, t = at).entered();
        let local = self.local_instant(idx);
        if let Some(s) = self.hosts[idx].core.session() {
            s.handle_input(input(local));
        }
        self.drain_host(idx);
    }

    fn step_deliver(&mut self, from: usize, to: usize, mut t: Transmit, charged: usize) {
        let at = self.now as f64 / 1e9;
        let _span = tracing::debug_span!("host", host = to, t = at).entered();
        let link = self
            .links
            .get_mut(&(from, to))
            .expect("a scheduled datagram's link exists; panic means bug");
        if !link.is_up() {
            link.note_outage_in_flight();
            return;
        }
        link.note_delivered(charged);
        if to >= SERVER_NODE {
            let i = to - SERVER_NODE;
            let out = self.servers[i].receive(self.now, t.source, t.destination, &t.contents);
            self.server_out(i, out);
            return;
        }
        // Through the host's NAT: a live mapping whose filter lets the datagram in.
        if let Some(nat) = &mut self.hosts[to].nat {
            if t.destination.ip() == nat.public_ip {
                match nat.inbound(self.now, t.source, t.destination.port()) {
                    Some(private) => t.destination = private,
                    None => {
                        tracing::trace!(source = %t.source, dest = %t.destination, "nat dropped");
                        return;
                    }
                }
            }
        }
        let local = self.local_instant(to);
        let recv = Receive {
            source: t.source,
            destination: t.destination,
            contents: &t.contents,
        };
        if let Some(s) = self.hosts[to].core.session() {
            s.handle_input(Input::Receive(local, recv));
        }
        self.drain_host(to);
    }

    fn step_host(&mut self, idx: usize) {
        let now = self.now;
        let h = &mut self.hosts[idx];
        let local_ns = h.clock.local_ns(now);
        if local_ns < h.deadline_local {
            h.timeouts.early += 1;
        } else if h.deadline_exact && (now == 0 || h.clock.local_ns(now - 1) < h.deadline_local) {
            h.timeouts.exact += 1;
        } else {
            h.timeouts.overdue += 1;
        }
        h.deadline = u64::MAX;
        if h.last_timeout_fed == Some(now) {
            h.refeeds += 1;
        } else {
            h.refeeds = 0;
        }
        h.last_timeout_fed = Some(now);
        self.feed(idx, Input::Timeout);
    }

    fn step_flow(&mut self, i: usize) {
        let flow = &self.flows[i];
        let (from, to) = (flow.config.from.0, flow.config.to.0);
        if flow
            .config
            .stop
            .is_some_and(|s| self.now >= s.as_nanos() as u64)
        {
            return;
        }
        let interval = flow.config.interval.as_nanos() as u64;
        let size = flow.config.size;
        let target = self.hosts[to].peer_id.clone();
        let open = target
            .as_ref()
            .is_some_and(|p| self.hosts[from].core.participant().is_connected(p));
        match target {
            Some(peer) if open => {
                let seq = self.flows[i].stats.sent_at.len() as u64;
                let mut msg = Vec::with_capacity(size);
                msg.extend_from_slice(FLOW_MAGIC);
                msg.extend_from_slice(&(i as u32).to_le_bytes());
                msg.extend_from_slice(&seq.to_le_bytes());
                msg.extend_from_slice(&self.now.to_le_bytes());
                msg.resize(size, 0);
                let res = match self.hosts[from].core.session() {
                    Some(s) => s.send_data(&peer, DataMessage::Binary(msg)),
                    None => Err(CommandError::NotJoined),
                };
                let stats = &mut self.flows[i].stats;
                match res {
                    Ok(()) => {
                        stats.sent += 1;
                        stats.sent_at.push(Duration::from_nanos(self.now));
                    }
                    Err(CommandError::SendQueueFull(_)) => stats.send_failed += 1,
                    Err(_) => stats.not_connected += 1,
                }
                self.drain_host(from);
            }
            _ => self.flows[i].stats.not_connected += 1,
        }
        let next = self.now + interval;
        self.push(next, Due::Flow(i), Payload::None);
    }

    /// Counts a flow message a full reconnect reported as possibly undelivered
    fn record_undelivered(&mut self, bytes: &[u8]) {
        if bytes.len() < FLOW_HEADER_BYTES || &bytes[..4] != FLOW_MAGIC {
            return;
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[4..8]);
        if let Some(f) = self.flows.get_mut(u32::from_le_bytes(b) as usize) {
            f.stats.undelivered += 1;
        }
    }

    /// Records a flow message received on `host`; false if `bytes` is not one
    fn record_flow_message(&mut self, host: usize, bytes: &[u8]) -> bool {
        if bytes.len() < FLOW_HEADER_BYTES || &bytes[..4] != FLOW_MAGIC {
            return false;
        }
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&bytes[r]);
            u64::from_le_bytes(b)
        };
        let flow = word(4..8) as usize;
        let seq = word(8..16);
        let sent = word(16..24);
        let Some(f) = self.flows.get_mut(flow) else {
            return false;
        };
        if f.config.to.0 != host || sent > self.now {
            return false;
        }
        let stats = &mut f.stats;
        if !stats.received_seqs.insert(seq) {
            stats.duplicates += 1;
            return true;
        }
        if stats.max_seq.is_some_and(|m| seq < m) {
            stats.out_of_order += 1;
        }
        stats.max_seq = Some(stats.max_seq.map_or(seq, |m| m.max(seq)));
        stats.received += 1;
        stats.samples.push(DelaySample {
            seq,
            sent_at: Duration::from_nanos(sent),
            delay: Duration::from_nanos(self.now - sent),
        });
        true
    }

    /// One capture of a media stream: sent if the sender is connected to anyone
    fn step_media(&mut self, i: usize) {
        let (from, source, k) = {
            let m = &self.media[i];
            (m.config.from.0, m.config.source, m.tick)
        };
        if self.media[i]
            .config
            .stop
            .is_some_and(|s| self.now >= s.as_nanos() as u64)
        {
            return;
        }
        let local = self.media[i].local_start + source.offset_ns(k);
        let mut targets = Vec::new();
        for j in 0..self.hosts.len() {
            if j == from {
                continue;
            }
            let open = self.hosts[j]
                .peer_id
                .as_ref()
                .is_some_and(|p| self.hosts[from].core.participant().is_connected(p));
            if open {
                targets.push(j);
            } else {
                self.media[i].receivers.entry(j).or_default().not_connected += 1;
            }
        }
        if !targets.is_empty() {
            // Log lines of the sending host say who and when, as those of its inputs do.
            let at = self.now as f64 / 1e9;
            let _span = tracing::debug_span!("host", host = from, t = at).entered();
            let capture = self.anchor.instant(local);
            let incarnation = self.hosts[from].incarnation;
            let m = &mut self.media[i];
            let res = match &mut m.generator {
                Generator::Silence(pcm) => match self.hosts[from].core.session() {
                    Some(s) => s.send_audio(capture, pcm),
                    None => Err(CommandError::NotJoined),
                },
                Generator::Tone { tone, samples } => {
                    let pcm = tone.next_samples(*samples);
                    match self.hosts[from].core.session() {
                        Some(s) => s.send_audio(capture, &pcm),
                        None => Err(CommandError::NotJoined),
                    }
                }
                &mut Generator::Pattern { width, height } => {
                    // The participant's video ticks count from the first frame it is
                    // given, whether or not that frame encodes: so does the origin here.
                    let (_, epoch) = m.epoch_mut(incarnation);
                    epoch.video_origin.get_or_insert(capture);
                    // Synthetic frames ignore the pixels: skip drawing the pattern.
                    let f = if self.hosts[from].config.media.synthetic {
                        self.patterns.black(width, height)
                    } else {
                        self.patterns.frame(width, height, k)
                    };
                    match self.hosts[from].core.session() {
                        Some(s) => s.send_video(capture, &f),
                        None => Err(CommandError::NotJoined),
                    }
                }
            };
            let captured_at = Duration::from_nanos(self.now);
            let m = &mut self.media[i];
            match res {
                Ok(_) => {
                    let (e, epoch) = m.epoch_mut(incarnation);
                    let frame = epoch.frames.len() as u32;
                    epoch.frames.push(SentFrame {
                        captured_at,
                        local_ns: local,
                    });
                    if let Some(origin) = epoch.video_origin {
                        let ticks = (meshrtc::sync::time::local_secs(capture, origin)
                            * f64::from(meshrtc::media::VIDEO_RATE))
                        .round() as i64;
                        epoch.by_ticks.insert(ticks, frame);
                    }
                    for j in targets {
                        m.receivers.entry(j).or_default().note_sent(e, frame);
                    }
                }
                Err(err) => {
                    tracing::debug!(stream = %m.config.name, error = %err, "media frame refused");
                    m.send_failed += 1;
                }
            }
            self.drain_host(from);
        }
        let m = &mut self.media[i];
        m.tick += 1;
        let next_local = m.local_start + source.offset_ns(m.tick);
        let at = self.hosts[from]
            .clock
            .virtual_at_or_after(next_local)
            .max(self.now);
        self.push(at, Due::Media(i), Payload::None);
    }

    /// The sender host, its stream of `kind` and the epoch of the media `receiver` plays
    /// from `peer`; `None` if no stream measures it
    fn media_source(
        &mut self,
        receiver: usize,
        peer: &PeerId,
        audio: bool,
    ) -> Option<(usize, usize, Option<usize>)> {
        let sender = *self.by_peer.get(peer)?;
        let stream = if audio {
            self.hosts[sender].audio_stream?
        } else {
            self.hosts[sender].video_stream?
        };
        let current = self.hosts[sender].incarnation;
        let incarnation = *self.hosts[receiver]
            .media_epoch
            .entry(peer.clone())
            .or_insert(current);
        let epoch = self.media[stream].epoch_of(incarnation);
        Some((sender, stream, epoch))
    }

    /// Measures an audio chunk `receiver` plays from `peer`; false if no stream measures it
    fn record_audio(
        &mut self,
        receiver: usize,
        peer: &PeerId,
        chunk: &meshrtc::sync::PlayoutChunk,
    ) -> bool {
        let Some((sender, stream, epoch)) = self.media_source(receiver, peer, true) else {
            return false;
        };
        let now = Duration::from_nanos(self.now);
        let clock = self.hosts[sender].clock;
        let max_decelerate = self.hosts[receiver].config.media.jitter.max_decelerate;
        let m = &mut self.media[stream];
        let n = m.config.source.frame_ticks().max(1);
        let late_after = m.config.late_after;
        let rx = m.receivers.entry(receiver).or_default();
        if chunk.concealed {
            rx.concealed_chunks += 1;
            return true;
        }
        rx.note_playout(now);
        let Some(e) = epoch else {
            rx.unmatched += 1;
            return true;
        };
        let frames = &m.epochs[e].frames;
        let first = chunk.media_ticks.div_euclid(n);
        let Some(f0) = usize::try_from(first).ok().and_then(|i| frames.get(i)) else {
            rx.unmatched += 1;
            return true;
        };
        // The capture of the chunk's first sample, on the sender's clock, in virtual time.
        let within = i128::from(chunk.media_ticks - first * n) * 1_000_000_000 / AUDIO_RATE;
        let captured = Duration::from_nanos(clock.virtual_at_or_after(f0.local_ns + within));
        let delay = now.saturating_sub(captured);
        let emitted = chunk.samples.len() / chunk.channels.max(1);
        let covered = ((emitted as f64 * (1.0 - max_decelerate)).floor() as i64).max(1);
        let last = (chunk.media_ticks + covered - 1).div_euclid(n);
        for j in first..=last {
            let Some(f) = usize::try_from(j).ok().and_then(|i| frames.get(i)) else {
                break;
            };
            let frame = j as u32;
            // Consecutive chunks overlap frames: only the first playout counts.
            if !rx.is_played(e, frame) {
                rx.note_played(e, frame, f.captured_at, delay, late_after);
            }
        }
        true
    }

    /// Measures a video frame `receiver` renders from `peer`; false if no stream measures it
    fn record_video(&mut self, receiver: usize, peer: &PeerId, media_ticks: i64) -> bool {
        let Some((_, stream, epoch)) = self.media_source(receiver, peer, false) else {
            return false;
        };
        let now = Duration::from_nanos(self.now);
        let m = &mut self.media[stream];
        let late_after = m.config.late_after;
        let rx = m.receivers.entry(receiver).or_default();
        rx.note_playout(now);
        let Some(e) = epoch else {
            rx.unmatched += 1;
            return true;
        };
        let ep = &m.epochs[e];
        // Exact, unless a capture instant was rounded differently: then the nearest.
        let found = ep.by_ticks.get(&media_ticks).copied().or_else(|| {
            ep.by_ticks
                .range(media_ticks.saturating_sub(2)..=media_ticks.saturating_add(2))
                .min_by_key(|(t, _)| (**t - media_ticks).abs())
                .map(|(_, f)| *f)
        });
        let Some(frame) = found else {
            rx.unmatched += 1;
            return true;
        };
        let captured = ep.frames[frame as usize].captured_at;
        rx.note_played(e, frame, captured, now.saturating_sub(captured), late_after);
        true
    }

    fn snapshot_stats(&mut self, idx: usize) {
        let h = &mut self.hosts[idx];
        let p = h.core.participant();
        for id in p.peer_ids() {
            if let Some(s) = p.peer_stats(id) {
                h.last_stats.insert(id.clone(), s);
            }
        }
    }

    fn local_instant(&self, idx: usize) -> Instant {
        self.anchor
            .instant(self.hosts[idx].clock.local_ns(self.now))
    }

    fn drain_host(&mut self, idx: usize) {
        let now = self.now;
        loop {
            let Some(session) = self.hosts[idx].core.session() else {
                return;
            };
            let out = session.poll_output();
            match out {
                Output::Timeout(t) => {
                    let h = &mut self.hosts[idx];
                    let local = self.anchor.local_ns(t);
                    let exact = h.clock.virtual_at_or_after(local);
                    // A deadline that is not in the future after a timeout was fed at this
                    // instant: feed another at the same instant, since str0m's pacer may
                    // release one queued packet per timeout, in an order that depends on its
                    // hash maps; each packet then leaves at the same instant whatever that
                    // order. Only a participant that keeps asking is nudged forward, so that
                    // it cannot spin.
                    let at = if exact <= now && h.last_timeout_fed == Some(now) {
                        if h.refeeds < MAX_REFEEDS {
                            now
                        } else {
                            now + 1_000_000
                        }
                    } else {
                        exact.max(now)
                    };
                    h.deadline_local = local;
                    h.deadline_exact = at == exact;
                    if at != h.deadline {
                        h.deadline = at;
                        h.deadline_gen += 1;
                        let generation = h.deadline_gen;
                        self.push(at, Due::Host { idx, generation }, Payload::None);
                    }
                    return;
                }
                Output::Transmit(t) => self.transmit(idx, t),
                Output::Signal(frame) => self.signal_to_server(idx, &frame),
                Output::Connect => self.connect_signaling(idx),
                Output::Disconnect => {
                    if let Some(conn) = self.hosts[idx].conn.take() {
                        let at = self.now + self.config.signal_latency.as_nanos() as u64;
                        self.push_signal(at, SignalHop::Disconnect(conn));
                    }
                }
                Output::Event(e) => self.on_event(idx, e),
                Output::Resolve(endpoints) => {
                    // No DNS in the simulator: servers are given by address; a name fails
                    // at once (the session reports it).
                    let answers = endpoints
                        .into_iter()
                        .map(|endpoint| meshrtc::ice::Resolution {
                            endpoint,
                            addrs: Err("the simulator has no DNS".into()),
                        })
                        .collect();
                    let local = self.local_instant(idx);
                    if let Some(s) = self.hosts[idx].core.session() {
                        s.handle_input(Input::Resolved(local, answers));
                    }
                }
            }
        }
    }

    fn on_event(&mut self, idx: usize, e: Event) {
        use meshrtc::Event as M;
        let at = self.elapsed();
        // Measured flow messages and media playouts are counted, not kept.
        match &e {
            Event::Mesh(M::DataReceived {
                message: DataMessage::Binary(b),
                ..
            }) if self.record_flow_message(idx, b) => return,
            Event::Mesh(M::AudioPlayout { peer, chunk }) if self.record_audio(idx, peer, chunk) => {
                return
            }
            Event::Mesh(M::VideoFrame {
                peer, media_ticks, ..
            }) if self.record_video(idx, peer, *media_ticks) => return,
            Event::Mesh(M::PeerLeft { peer, .. } | M::PeerFailed { peer, .. }) => {
                self.hosts[idx].media_epoch.remove(peer);
            }
            Event::Mesh(M::DataUndelivered { messages, .. }) => {
                for m in messages {
                    self.record_undelivered(m.as_bytes());
                }
            }
            _ => {}
        }
        if let Event::Mesh(M::PeerConnected { peer, connect_time }) = &e {
            self.hosts[idx]
                .connects
                .entry(peer.clone())
                .or_insert(ConnectInfo {
                    at,
                    connect_time: *connect_time,
                });
        }
        if let Some(what) = describe(&e) {
            self.log.push(LogEntry {
                at,
                host: HostId(idx),
                what,
            });
        }
        self.hosts[idx].events.push((at, e));
    }

    fn transmit(&mut self, from: usize, mut t: Transmit) {
        if t.source != self.hosts[from].addr {
            tracing::trace!(source = %t.source, "datagram from an address the host left");
            return;
        }
        if let Some(nat) = &mut self.hosts[from].nat {
            t.source = nat.outbound(self.now, t.source, t.destination);
        }
        self.send_datagram(from, t);
    }

    /// What a server sends, then its next deadline
    fn server_out(&mut self, i: usize, out: Vec<ServerDatagram>) {
        for (source, destination, contents) in out {
            let t = Transmit {
                source,
                destination,
                contents,
            };
            self.send_datagram(SERVER_NODE + i, t);
        }
        if let Some(at) = self.servers[i].wake {
            if self.server_wakes.insert((i, at)) {
                self.push(at, Due::TurnServer(i), Payload::None);
            }
        }
    }

    /// The node a public address belongs to: a server, a host's NAT or a public host
    fn node_of(&self, addr: SocketAddr) -> Option<usize> {
        if let Some(&i) = self.server_ips.get(&addr.ip()) {
            return Some(SERVER_NODE + i);
        }
        if let Some(&h) = self.nat_ips.get(&addr.ip()) {
            return Some(h);
        }
        self.by_addr.get(&addr).copied()
    }

    /// Puts a datagram leaving node `from` (a host, already through its NAT, or a server)
    /// on the link to the node its destination belongs to
    fn send_datagram(&mut self, from: usize, t: Transmit) {
        let Some(to) = self.node_of(t.destination) else {
            tracing::trace!(dest = %t.destination, "datagram to no host dropped");
            return;
        };
        let now = self.elapsed();
        let key = (from, to);
        if !self.links.contains_key(&key) {
            let cfg = self
                .link_configs
                .get(&key)
                .unwrap_or(&self.config.default_link)
                .clone();
            let seed = mix(mix(self.config.seed, 0x11e4_0000 + from as u64), to as u64);
            let mut link = Link::new(cfg, seed, now)
                .expect("link configurations are validated when set; panic means bug");
            link.set_up(self.path_up(from, to));
            self.links.insert(key, link);
        }
        let charged = charged_size(&t.contents);
        // A shared bottleneck comes first: the packet enters its link when it has left.
        let now = match self.shared.admit(key, self.now, charged) {
            Admitted::NotShared => now,
            Admitted::Leaves(at) => Duration::from_nanos(at),
            Admitted::Dropped => {
                if let Some(link) = self.links.get_mut(&key) {
                    link.note_shared_queue_drop(charged);
                }
                return;
            }
        };
        let link = self
            .links
            .get_mut(&key)
            .expect("inserted above; panic means bug");
        let fate = link.handle_packet(now, charged);
        let times: Vec<Duration> = fate
            .verdicts()
            .filter_map(|v| match v {
                Verdict::Deliver(at) => Some(at),
                Verdict::Drop(_) => None,
            })
            .collect();
        let mut t = Some(t);
        let n = times.len();
        for (i, at) in times.into_iter().enumerate() {
            let payload = if i + 1 == n {
                t.take()
                    .expect("taken only for the last copy; panic means bug")
            } else {
                t.clone()
                    .expect("taken only for the last copy; panic means bug")
            };
            let seq = self.link_seq.entry(key).or_insert(0);
            *seq += 1;
            let due = Due::Deliver {
                from,
                to,
                seq: *seq,
            };
            self.push(
                at.as_nanos() as u64,
                due,
                Payload::Datagram(Box::new((payload, charged))),
            );
        }
    }

    fn signal_to_server(&mut self, idx: usize, frame: &ClientFrame) {
        let Some(conn) = self.hosts[idx].conn else {
            return;
        };
        let at = self.now + self.config.signal_latency.as_nanos() as u64;
        self.push_signal(at, SignalHop::ToServer(conn, frame.to_json()));
    }

    fn drain_server(&mut self) {
        while let Some(o) = self.relay.poll_output() {
            match o {
                ServerOutput::Send { conn, text } => {
                    let at = self.now + self.config.signal_latency.as_nanos() as u64;
                    self.push_signal(at, SignalHop::ToClient(conn, text));
                }
                ServerOutput::Close { conn } => {
                    // The client sees its connection drop one signaling latency later.
                    let at = self.now + self.config.signal_latency.as_nanos() as u64;
                    self.push_signal(at, SignalHop::Closed(conn));
                }
            }
        }
        // The server's next deadline (resume graces), scheduled once.
        let next = self
            .relay
            .poll_timeout()
            .map(|t| (self.anchor.local_ns(t).max(0) as u64).max(self.now));
        if next.is_some() && next != self.server_timer {
            self.server_timer = next;
            self.server_gen += 1;
            let generation = self.server_gen;
            self.push(
                next.unwrap_or(self.now),
                Due::Server(generation),
                Payload::None,
            );
        }
    }

    /// Restarts the signaling server: every client's connection drops, and the new server
    /// knows no room
    fn restart_server(&mut self) {
        self.server_restarts += 1;
        let seed = mix(self.config.seed, 0x5e4e_0000 + self.server_restarts);
        self.relay = Server::new(server_config(&self.config, seed));
        // The old server's timer goes with it.
        self.server_timer = None;
        for idx in 0..self.hosts.len() {
            if let Some(conn) = self.hosts[idx].conn.take() {
                self.conn_host.remove(&conn);
                let reason = "server restarted".to_string();
                self.feed(idx, |now| Input::SignalingDown(now, reason));
            }
        }
    }

    /// Moves a host to a new address: datagrams to or from the old one go nowhere
    fn move_host(&mut self, idx: usize) {
        self.moves += 1;
        let n = self.moves;
        let ip = Ipv4Addr::new(
            127,
            100 + (n / 250 / 250) as u8,
            (n / 250 % 250) as u8,
            (n % 250) as u8 + 1,
        );
        let new = SocketAddr::from((ip, 5000));
        let old = std::mem::replace(&mut self.hosts[idx].addr, new);
        self.by_addr.remove(&old);
        if self.hosts[idx].nat.is_none() {
            self.by_addr.insert(new, idx);
        }
        let local = self.local_instant(idx);
        if let Some(s) = self.hosts[idx].core.session() {
            let p = s.participant_mut();
            p.remove_local_candidate(old);
            p.add_local_candidate(new)
                .expect("a loopback host candidate is valid; panic means bug");
            p.handle_network_change(local);
        }
        self.drain_host(idx);
    }

    /// Drops the host's signaling connection, as if its WebSocket died: the server and the
    /// host's session both see it go (the session then reconnects with backoff)
    pub fn drop_signaling(&mut self, host: HostId) {
        let Some(conn) = self.hosts[host.0].conn.take() else {
            return;
        };
        self.push_signal(self.now, SignalHop::Disconnect(conn));
        let reason = "connection dropped".to_string();
        self.feed(host.0, |now| Input::SignalingDown(now, reason));
    }
}

/// The signaling server's configuration for a run
fn server_config(config: &SimConfig, seed: u64) -> ServerConfig {
    ServerConfig {
        seed: Some(seed),
        resume_grace: config.resume_grace,
        // Hosts may join long after they connect.
        announce_timeout: Duration::ZERO,
        ..ServerConfig::default()
    }
}

/// A host's participant configuration with its seeds (secrets too: a run replays exactly)
fn participant_config(config: &Config, seed: u64) -> Config {
    let mut config = config.clone();
    config.seed = seed;
    config.secret_seed = Some(seed);
    config
}

fn new_participant(config: &Config, seed: u64, addr: SocketAddr, now: Instant) -> Participant {
    let mut participant = Participant::new(participant_config(config, seed), now);
    participant
        .add_local_candidate(addr)
        .expect("a loopback host candidate is valid; panic means bug");
    participant
}

/// A stable, run-independent description of an event; `None` for media events, which are
/// too frequent to log
fn describe(e: &Event) -> Option<String> {
    use meshrtc::Event as M;
    Some(match e {
        Event::Joined { peer_id, peers, .. } => {
            format!("announced {peer_id} peers={}", peers.len())
        }
        Event::JoinFailed(error) => format!("join-failed {error}"),
        Event::SignalingLost { .. } => "signaling-lost".into(),
        Event::SignalingRestored { peers, .. } => {
            format!("signaling-restored peers={}", peers.len())
        }
        Event::RejoinFailed { error } => format!("rejoin-failed {}", error.code),
        Event::SendFailed { peer, error } => format!("send-failed {peer:?} {error}"),
        Event::AudioStreamStarted { .. } | Event::AudioStreamEnded { .. } => return None,
        Event::Mesh(m) => match m {
            M::Announced { peer_id, peers, .. } => {
                format!("announced {peer_id} peers={}", peers.len())
            }
            M::PeerJoined(info) => format!("joined {}", info.peer_id),
            M::PeerConnected { peer, .. } => format!("connected {peer}"),
            M::DataReceived { peer, message, .. } => format!("data {peer} {}B", message.len()),
            M::PeerLeft { peer, reason } => format!("left {peer} {reason:?}"),
            M::PeerFailed { peer, reason } => format!("failed {peer} {reason:?}"),
            M::SignalError { method, error } => format!("signal-error {method} {}", error.code),
            M::IceServerFailed { server, problem } => {
                format!("ice-server-failed {server} {problem}")
            }
            M::PeerReconnecting { peer, kind } => format!("reconnecting {peer} {kind:?}"),
            M::PeerReconnected { peer, after, kind } => {
                format!(
                    "reconnected {peer} {kind:?} after {:.3}s",
                    after.as_secs_f64()
                )
            }
            M::DataUndelivered { peer, messages } => {
                format!("undelivered {peer} {}", messages.len())
            }
            M::RemoteMediaState {
                peer,
                kind,
                sending,
            } => format!("remote-media {peer} {kind} {sending}"),
            M::AudioPlayout { .. } | M::VideoFrame { .. } | M::EncodedAudio { .. } => return None,
        },
        _ => return None,
    })
}
