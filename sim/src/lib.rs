//! meshrtc-sim: many meshrtc participants in one thread, in virtual time
//!
//! Every host runs one [`meshrtc::Participant`]. Datagrams between hosts cross per-direction
//! links modelled by [`str0m_netem`]; signaling frames cross an in-memory copy of the
//! signaling server ([`meshrtc::relay::Relay`]) as JSON text, exactly as they would over a
//! WebSocket. The scheduler always processes the earliest pending event; ties are broken in
//! a fixed order (signaling, then links by `(from, to)`, then hosts by index), so the same
//! configuration and seed give the same run.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use meshrtc::relay::{ConnId, Relay, RelayConfig, RelayOutput};
use meshrtc::signal::{ClientFrame, LeftReason, PeerId, RoomId, ServerFrame};
use meshrtc::{Config, DataMessage, Event, Input, Output, Participant, Receive, Transmit};
pub use str0m_netem::NetemConfig;
use str0m_netem::{Input as NetInput, Netem, Output as NetOutput};

/// Index of a host in the simulation
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

/// Configuration of a simulation
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed for links and participants
    pub seed: u64,
    /// One-way delay between a host and the signaling server
    pub signal_latency: Duration,
    /// The link used between two hosts unless [`Sim::set_link`] says otherwise
    pub default_link: NetemConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            signal_latency: Duration::from_millis(5),
            default_link: NetemConfig::new().latency(Duration::from_millis(10)),
        }
    }
}

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

#[derive(Clone)]
struct Packet(Transmit);

impl AsRef<[u8]> for Packet {
    fn as_ref(&self) -> &[u8] {
        &self.0.contents
    }
}

struct Host {
    participant: Participant,
    addr: SocketAddr,
    conn: ConnId,
    deadline: Instant,
    last_timeout_fed: Option<Instant>,
    events: Vec<(Duration, Event)>,
    errors: Vec<(Duration, String)>,
    connected: bool,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SignalHop {
    ToServer(ConnId, String),
    ToClient(usize, String),
    Disconnect(ConnId),
}

/// A deterministic simulation of many participants
pub struct Sim {
    config: SimConfig,
    epoch: Instant,
    now: Instant,
    hosts: Vec<Host>,
    by_addr: BTreeMap<SocketAddr, usize>,
    relay: Relay,
    links: BTreeMap<(usize, usize), Netem<Packet>>,
    link_configs: BTreeMap<(usize, usize), NetemConfig>,
    signals: BinaryHeap<Reverse<(Instant, u64, SignalHop)>>,
    seq: u64,
    log: Vec<LogEntry>,
}

impl Sim {
    /// Creates an empty simulation
    pub fn new(config: SimConfig) -> Self {
        // str0m draws some randomness from the thread-local generator: seed it here so the
        // run depends only on the seed.
        fastrand::seed(config.seed);
        // The epoch only anchors virtual time; every figure is a difference from it.
        #[allow(clippy::disallowed_methods)] // reason: an anchor, never read as "now" again
        let epoch = Instant::now();
        let relay = Relay::new(RelayConfig {
            seed: config.seed,
            ..RelayConfig::default()
        });
        Self {
            config,
            epoch,
            now: epoch,
            hosts: Vec::new(),
            by_addr: BTreeMap::new(),
            relay,
            links: BTreeMap::new(),
            link_configs: BTreeMap::new(),
            signals: BinaryHeap::new(),
            seq: 0,
            log: Vec::new(),
        }
    }

    /// Virtual time since the start
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// The current virtual instant
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a host running a participant with `config` (its seed is derived from the
    /// simulation's seed and the host's index) and connects it to the signaling server
    pub fn add_host(&mut self, mut config: Config) -> HostId {
        let idx = self.hosts.len();
        config.seed = self
            .config
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(idx as u64 + 1);
        let ip = Ipv4Addr::new(127, 0, (idx / 250) as u8 + 1, (idx % 250) as u8 + 1);
        let addr = SocketAddr::from((ip, 5000));
        let mut participant = Participant::new(config, self.now);
        participant
            .add_local_candidate(addr)
            .expect("a loopback host candidate is valid; panic means bug");
        let conn = ConnId(idx as u64);
        self.relay.handle_connect(self.now, conn);
        self.hosts.push(Host {
            participant,
            addr,
            conn,
            deadline: self.now,
            last_timeout_fed: None,
            events: Vec::new(),
            errors: Vec::new(),
            connected: true,
        });
        self.by_addr.insert(addr, idx);
        self.drain_relay();
        self.drain_host(idx);
        HostId(idx)
    }

    /// Sets the link from `from` to `to` (one direction)
    pub fn set_link(&mut self, from: HostId, to: HostId, config: NetemConfig) {
        self.link_configs.insert((from.0, to.0), config);
        if let Some(link) = self.links.get_mut(&(from.0, to.0)) {
            link.set_config(config);
        }
    }

    /// The host's datagram address
    pub fn addr(&self, host: HostId) -> SocketAddr {
        self.hosts[host.0].addr
    }

    /// The host's participant
    pub fn participant(&self, host: HostId) -> &Participant {
        &self.hosts[host.0].participant
    }

    /// The signaling server's state
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Joins `room` on `host` with the given peer id
    pub fn join(&mut self, host: HostId, room: &str, peer_id: &str) {
        let room = RoomId::new(room).expect("test room ids are valid");
        let id = PeerId::new(peer_id).expect("test peer ids are valid");
        let res = self.hosts[host.0].participant.join(room, Some(id));
        self.note(host.0, res.map(|_| ()));
        self.drain_host(host.0);
    }

    /// Leaves the room on `host` (sends `peer.disconnect`, closes every peer)
    pub fn leave(&mut self, host: HostId) {
        self.hosts[host.0].participant.leave();
        self.drain_host(host.0);
    }

    /// Sends a data message from `host` to `to`
    pub fn send(
        &mut self,
        host: HostId,
        to: &PeerId,
        message: DataMessage,
    ) -> Result<(), meshrtc::Error> {
        let res = self.hosts[host.0].participant.send_data(to, message);
        self.drain_host(host.0);
        res
    }

    /// Broadcasts a data message from `host`; returns how many peers accepted it
    pub fn broadcast(
        &mut self,
        host: HostId,
        message: DataMessage,
    ) -> Result<usize, meshrtc::Error> {
        let res = self.hosts[host.0].participant.broadcast(message);
        self.drain_host(host.0);
        res
    }

    /// Delivers a datagram to `host` as if it came from `source`, now
    pub fn inject_datagram(
        &mut self,
        host: HostId,
        source: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), meshrtc::Error> {
        let h = &mut self.hosts[host.0];
        let recv = Receive {
            source,
            destination: h.addr,
            contents: bytes,
        };
        let res = h.participant.handle_input(Input::Receive(self.now, recv));
        self.drain_host(host.0);
        res
    }

    /// Delivers a signaling frame to `host` as if the server sent it, now
    pub fn inject_signal(
        &mut self,
        host: HostId,
        frame: ServerFrame,
    ) -> Result<(), meshrtc::Error> {
        let res = self.hosts[host.0]
            .participant
            .handle_input(Input::Signal(self.now, frame));
        self.drain_host(host.0);
        res
    }

    /// Events the host's participant emitted, with their virtual times
    pub fn events(&self, host: HostId) -> &[(Duration, Event)] {
        &self.hosts[host.0].events
    }

    /// Takes (and clears) the host's events
    pub fn take_events(&mut self, host: HostId) -> Vec<(Duration, Event)> {
        std::mem::take(&mut self.hosts[host.0].events)
    }

    /// Errors `handle_input` returned on the host (rejected input)
    pub fn errors(&self, host: HostId) -> &[(Duration, String)] {
        &self.hosts[host.0].errors
    }

    /// The log of every event on every host: kind, peer and virtual time
    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// Number of hosts
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Runs until virtual time `at` (since the start)
    pub fn run_until(&mut self, at: Duration) {
        let end = self.epoch + at;
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
        let end = self.now + limit;
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

    /// Processes the earliest event if it is not later than `end`; false if none was
    fn step(&mut self, end: Instant) -> bool {
        #[derive(Clone, Copy)]
        enum Next {
            Signal,
            Link(usize, usize),
            Host(usize),
        }
        let mut best: Option<(Instant, Next)> = None;
        let mut consider = |t: Instant, n: Next| {
            if best.is_none_or(|(bt, _)| t < bt) {
                best = Some((t, n));
            }
        };
        if let Some(Reverse((t, _, _))) = self.signals.peek() {
            consider(*t, Next::Signal);
        }
        for (&(a, b), link) in &self.links {
            if !link.is_empty() {
                consider(link.poll_timeout(), Next::Link(a, b));
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            consider(h.deadline, Next::Host(i));
        }
        let Some((t, next)) = best else {
            return false;
        };
        if t > end {
            return false;
        }
        self.now = self.now.max(t);
        match next {
            Next::Signal => self.step_signal(),
            Next::Link(a, b) => self.step_link(a, b),
            Next::Host(i) => self.step_host(i),
        }
        true
    }

    fn step_signal(&mut self) {
        let Some(Reverse((_, _, hop))) = self.signals.pop() else {
            return;
        };
        match hop {
            SignalHop::ToServer(conn, text) => {
                self.relay.handle_text(self.now, conn, &text);
                self.drain_relay();
            }
            SignalHop::Disconnect(conn) => {
                self.relay
                    .handle_disconnect(self.now, conn, LeftReason::Disconnect);
                self.drain_relay();
            }
            SignalHop::ToClient(idx, text) => {
                let res = match ServerFrame::parse(&text) {
                    Ok(frame) => self.hosts[idx]
                        .participant
                        .handle_input(Input::Signal(self.now, frame)),
                    Err(e) => {
                        let at = self.elapsed();
                        self.hosts[idx].errors.push((at, format!("bad frame: {e}")));
                        Ok(())
                    }
                };
                self.note(idx, res);
                self.drain_host(idx);
            }
        }
    }

    fn step_link(&mut self, a: usize, b: usize) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&(a, b)) else {
            return;
        };
        link.handle_input(NetInput::Timeout(now));
        let mut packets = Vec::new();
        while let Some(o) = link.poll_output() {
            if let NetOutput::Packet(p) = o {
                packets.push(p);
            }
        }
        for Packet(t) in packets {
            let h = &mut self.hosts[b];
            let recv = Receive {
                source: t.source,
                destination: t.destination,
                contents: &t.contents,
            };
            let res = h.participant.handle_input(Input::Receive(now, recv));
            self.note(b, res);
            self.drain_host(b);
        }
    }

    fn step_host(&mut self, i: usize) {
        let now = self.now;
        let h = &mut self.hosts[i];
        h.last_timeout_fed = Some(now);
        let res = h.participant.handle_input(Input::Timeout(now));
        self.note(i, res);
        self.drain_host(i);
    }

    fn note(&mut self, idx: usize, res: Result<(), meshrtc::Error>) {
        if let Err(e) = res {
            let at = self.elapsed();
            tracing::debug!(host = idx, error = %e, "input rejected");
            self.hosts[idx].errors.push((at, e.to_string()));
        }
    }

    fn drain_host(&mut self, idx: usize) {
        let now = self.now;
        loop {
            let out = self.hosts[idx].participant.poll_output();
            match out {
                Output::Timeout(t) => {
                    let h = &mut self.hosts[idx];
                    // A deadline that is not in the future after a timeout was just fed at
                    // this instant would spin; nudge it by the smallest useful step.
                    h.deadline = if t <= now && h.last_timeout_fed == Some(now) {
                        now + Duration::from_millis(1)
                    } else {
                        t.max(now)
                    };
                    return;
                }
                Output::Transmit(t) => self.transmit(idx, t),
                Output::Signal(frame) => self.signal_to_server(idx, &frame),
                Output::Event(e) => {
                    let at = now - self.epoch;
                    let what = describe(&e);
                    self.log.push(LogEntry {
                        at,
                        host: HostId(idx),
                        what,
                    });
                    self.hosts[idx].events.push((at, e));
                }
            }
        }
    }

    fn transmit(&mut self, from: usize, t: Transmit) {
        let Some(&to) = self.by_addr.get(&t.destination) else {
            tracing::trace!(dest = %t.destination, "datagram to no host dropped");
            return;
        };
        let now = self.now;
        let seed = self.config.seed;
        let default = self.config.default_link;
        let cfg = self.link_configs.get(&(from, to)).copied();
        let link = self.links.entry((from, to)).or_insert_with(|| {
            let cfg = cfg.unwrap_or(default);
            let link_seed = seed ^ ((from as u64) << 32 | to as u64);
            Netem::new(cfg.seed(link_seed))
        });
        link.handle_input(NetInput::Packet(now, Packet(t)));
    }

    fn signal_to_server(&mut self, idx: usize, frame: &ClientFrame) {
        let h = &self.hosts[idx];
        if !h.connected {
            return;
        }
        let conn = h.conn;
        let at = self.now + self.config.signal_latency;
        let close = matches!(frame.request, meshrtc::signal::Request::Disconnect);
        self.push_signal(at, SignalHop::ToServer(conn, frame.to_json()));
        if close {
            self.hosts[idx].connected = false;
        }
    }

    fn drain_relay(&mut self) {
        while let Some(o) = self.relay.poll_output() {
            match o {
                RelayOutput::Send { conn, text } => {
                    let idx = conn.0 as usize;
                    let at = self.now + self.config.signal_latency;
                    self.push_signal(at, SignalHop::ToClient(idx, text));
                }
                RelayOutput::Close { conn } => {
                    if let Some(h) = self.hosts.get_mut(conn.0 as usize) {
                        h.connected = false;
                    }
                }
            }
        }
    }

    fn push_signal(&mut self, at: Instant, hop: SignalHop) {
        self.seq += 1;
        self.signals.push(Reverse((at, self.seq, hop)));
    }

    /// Drops the host's signaling connection, as if its WebSocket died
    pub fn drop_signaling(&mut self, host: HostId) {
        let h = &mut self.hosts[host.0];
        h.connected = false;
        let conn = h.conn;
        let at = self.now;
        self.push_signal(at, SignalHop::Disconnect(conn));
    }
}

/// A stable, run-independent description of an event
fn describe(e: &Event) -> String {
    match e {
        Event::Announced { peer_id, peers, .. } => {
            format!("announced {peer_id} peers={}", peers.len())
        }
        Event::PeerJoined(info) => format!("joined {}", info.peer_id),
        Event::PeerConnected { peer, .. } => format!("connected {peer}"),
        Event::DataReceived { peer, message, .. } => format!("data {peer} {}B", message.len()),
        Event::PeerLeft { peer, reason } => format!("left {peer} {reason:?}"),
        Event::PeerFailed { peer, reason } => format!("failed {peer} {reason:?}"),
        Event::SignalError { method, error } => format!("signal-error {method} {}", error.code),
    }
}
