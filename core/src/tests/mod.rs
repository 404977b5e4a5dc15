//! Tests that reach into the core: a small in-memory mesh harness in virtual time

mod hostile;
mod ice;
#[cfg(all(feature = "opus", feature = "vpx"))]
mod latency;
#[cfg(all(feature = "opus", feature = "h264", feature = "vpx"))]
mod media;
mod routing;
#[cfg(all(feature = "opus", feature = "vpx"))]
mod soak;
#[cfg(all(feature = "opus", feature = "vpx"))]
mod sync;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::signal::server::{ConnId, Server, ServerConfig, ServerOutput};
use crate::signal::{PeerId, RoomId, ServerFrame};
use crate::{CandidatePolicy, Config, Event, Input, Output, Participant, Receive, Transmit};

/// Decides the fate of a datagram: `None` drops it, `Some(d)` delivers it after `d`
pub(crate) type LinkFn = Box<dyn FnMut(usize, usize, &Transmit) -> Option<Duration>>;

/// Answers a participant's request to resolve a STUN/TURN server name
pub(crate) type ResolveFn =
    Box<dyn FnMut(&crate::ice::ServerEndpoint) -> Result<Vec<SocketAddr>, String>>;

/// N participants, one relay, links decided by a closure; earliest event first
pub(crate) struct Mesh {
    pub(crate) now: Instant,
    pub(crate) start: Instant,
    pub(crate) parts: Vec<Participant>,
    addrs: Vec<SocketAddr>,
    deadlines: Vec<Instant>,
    relay: Server,
    /// (time, seq) -> what
    queue: BTreeMap<(Instant, u64), Pending>,
    seq: u64,
    link: LinkFn,
    pub(crate) events: Vec<Vec<(Duration, Event)>>,
    /// Rewrites the signaling text participant `i` sends (an attacker or an odd client)
    pub(crate) rewrite: Option<Box<dyn FnMut(usize, String) -> String>>,
    /// Destinations of datagrams sent to addresses that are not in the mesh
    pub(crate) foreign_destinations: Vec<SocketAddr>,
    /// A STUN/TURN server in the network (1 ms from everyone), if any
    pub(crate) turn: Option<crate::ice::fake::FakeTurn>,
    /// The driver's resolver, for `Output::Resolve`
    pub(crate) resolver: Option<ResolveFn>,
    /// Merged into every announce result the signaling server sends (e.g. `ice_servers`)
    pub(crate) announce_extra: Option<serde_json::Value>,
    /// Signaling frames each participant sent, as JSON, in order
    pub(crate) sent: Vec<Vec<String>>,
    /// Datagrams sent straight from one participant to another (not through the server)
    pub(crate) direct: u64,
}

enum Pending {
    Datagram(usize, Transmit),
    ToTurn(Transmit),
    Resolved(usize, Vec<crate::ice::Resolution>),
    ToServer(usize, String),
    ToClient(usize, String),
}

impl Mesh {
    pub(crate) fn new(configs: Vec<Config>, link: LinkFn) -> Self {
        #[allow(clippy::disallowed_methods)] // reason: test anchor for virtual time
        let start = Instant::now();
        fastrand::seed(7);
        let mut m = Self {
            now: start,
            start,
            parts: Vec::new(),
            addrs: Vec::new(),
            deadlines: Vec::new(),
            relay: Server::new(ServerConfig::default()),
            queue: BTreeMap::new(),
            seq: 0,
            link,
            events: Vec::new(),
            rewrite: None,
            foreign_destinations: Vec::new(),
            turn: None,
            resolver: None,
            announce_extra: None,
            sent: Vec::new(),
            direct: 0,
        };
        for (i, mut c) in configs.into_iter().enumerate() {
            c.seed = i as u64 + 1;
            c.candidate_policy = CandidatePolicy::LoopbackOnly;
            let addr: SocketAddr = format!("127.0.0.{}:4000", i + 1).parse().unwrap();
            let mut p = Participant::new(c, start);
            p.add_local_candidate(addr).unwrap();
            m.parts.push(p);
            m.addrs.push(addr);
            m.deadlines.push(start);
            m.events.push(Vec::new());
            m.sent.push(Vec::new());
            m.relay.handle_connect(start, ConnId(i as u64));
        }
        m
    }

    pub(crate) fn id(i: usize) -> PeerId {
        PeerId::new(format!("p{i}")).unwrap()
    }

    /// Joins everyone to one room, 20 ms apart, and runs until all pairs connect
    pub(crate) fn connect_all(&mut self) {
        for i in 0..self.parts.len() {
            self.parts[i]
                .join(RoomId::new("room").unwrap(), Some(Self::id(i)))
                .unwrap();
            self.drain(i);
            self.run_for(Duration::from_millis(20));
        }
        let n = self.parts.len();
        let ok = self.run_until(Duration::from_secs(10), |m| {
            (0..n).all(|i| (0..n).all(|j| i == j || m.parts[i].is_connected(&Self::id(j))))
        });
        assert!(ok, "mesh did not connect");
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Runs a command on participant `i` at the current time, then drains it
    pub(crate) fn with<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Participant, Instant) -> R,
    ) -> R {
        let now = self.now;
        let r = f(&mut self.parts[i], now);
        self.drain(i);
        r
    }

    pub(crate) fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.step(end) {}
        self.now = end;
    }

    pub(crate) fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(end) {
                self.now = end;
                return done(self);
            }
        }
    }

    fn step(&mut self, end: Instant) -> bool {
        let q = self.queue.keys().next().map(|k| k.0);
        let (hi, ht) = self
            .deadlines
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(i, t)| (i, *t))
            .unwrap();
        let t = q.map_or(ht, |q| q.min(ht));
        if t > end {
            return false;
        }
        self.now = self.now.max(t);
        if q == Some(t) {
            let (_, p) = self.queue.pop_first().unwrap();
            match p {
                Pending::Datagram(to, tr) => {
                    let recv = Receive {
                        source: tr.source,
                        destination: tr.destination,
                        contents: &tr.contents,
                    };
                    let _ = self.parts[to].handle_input(Input::Receive(self.now, recv));
                    self.drain(to);
                }
                Pending::ToTurn(t) => {
                    let d = crate::ice::Datagram {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents,
                    };
                    let outs = self.turn.as_mut().map(|s| s.handle(&d)).unwrap_or_default();
                    for o in outs {
                        let t = Transmit {
                            source: o.source,
                            destination: o.destination,
                            contents: o.contents,
                        };
                        self.send_from_server(t);
                    }
                }
                Pending::Resolved(to, answers) => {
                    let _ = self.parts[to].handle_input(Input::Resolved(self.now, answers));
                    self.drain(to);
                }
                Pending::ToServer(from, text) => {
                    self.relay.handle_text(self.now, ConnId(from as u64), &text);
                    while let Some(o) = self.relay.poll_output() {
                        if let ServerOutput::Send { conn, text } = o {
                            self.push(
                                Duration::from_millis(5),
                                Pending::ToClient(conn.0 as usize, text),
                            );
                        }
                    }
                }
                Pending::ToClient(to, text) => {
                    let text = self.with_announce_extra(text);
                    self.relay.handle_written(self.now, ConnId(to as u64), 1);
                    let frame = ServerFrame::parse(&text).unwrap();
                    let _ = self.parts[to].handle_input(Input::Signal(self.now, frame));
                    self.drain(to);
                }
            }
        } else {
            let _ = self.parts[hi].handle_input(Input::Timeout(self.now));
            self.drain(hi);
            if self.deadlines[hi] <= self.now {
                self.deadlines[hi] = self.now + Duration::from_millis(1);
            }
        }
        true
    }

    /// A datagram from the TURN server: to a participant, or back to the server (relay to
    /// relay)
    fn send_from_server(&mut self, t: Transmit) {
        if self.turn.as_ref().is_some_and(|s| s.owns(t.destination)) {
            self.push(Duration::from_millis(1), Pending::ToTurn(t));
        } else if let Some(to) = self.addrs.iter().position(|a| *a == t.destination) {
            self.push(Duration::from_millis(1), Pending::Datagram(to, t));
        }
    }

    fn with_announce_extra(&self, text: String) -> String {
        let Some(extra) = &self.announce_extra else {
            return text;
        };
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let Some(result) = v.get_mut("result").filter(|r| r.get("peers").is_some()) else {
            return text;
        };
        if let (Some(r), Some(e)) = (result.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        v.to_string()
    }

    fn push(&mut self, after: Duration, p: Pending) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), p);
    }

    /// The address of participant `i`
    pub(crate) fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// Hands participant `to` a datagram (from anyone) now, then drains it
    pub(crate) fn inject(&mut self, to: usize, source: SocketAddr, contents: &[u8]) {
        let recv = Receive {
            source,
            destination: self.addrs[to],
            contents,
        };
        let now = self.now;
        let _ = self.parts[to].handle_input(Input::Receive(now, recv));
        self.drain(to);
    }

    pub(crate) fn drain(&mut self, i: usize) {
        loop {
            match self.parts[i].poll_output() {
                Output::Timeout(t) => {
                    self.deadlines[i] = t.max(self.now);
                    return;
                }
                Output::Transmit(t) => {
                    if self.turn.as_ref().is_some_and(|s| s.owns(t.destination)) {
                        self.push(Duration::from_millis(1), Pending::ToTurn(t));
                        continue;
                    }
                    let Some(to) = self.addrs.iter().position(|a| *a == t.destination) else {
                        self.foreign_destinations.push(t.destination);
                        continue;
                    };
                    self.direct += 1;
                    if let Some(d) = (self.link)(i, to, &t) {
                        self.push(d, Pending::Datagram(to, t));
                    }
                }
                Output::Signal(f) => {
                    let mut text = f.to_json();
                    if let Some(rewrite) = &mut self.rewrite {
                        text = rewrite(i, text);
                    }
                    self.sent[i].push(text.clone());
                    self.push(Duration::from_millis(5), Pending::ToServer(i, text))
                }
                Output::Resolve(servers) => {
                    let answers = servers
                        .into_iter()
                        .map(|endpoint| crate::ice::Resolution {
                            addrs: match &mut self.resolver {
                                Some(r) => r(&endpoint),
                                None => Err("no resolver".into()),
                            },
                            endpoint,
                        })
                        .collect();
                    self.push(Duration::from_millis(3), Pending::Resolved(i, answers));
                }
                Output::Event(e) => {
                    let at = self.elapsed();
                    self.events[i].push((at, e));
                }
            }
        }
    }
}

/// A link with a fixed delay and no loss
pub(crate) fn perfect(delay_ms: u64) -> LinkFn {
    Box::new(move |_, _, _| Some(Duration::from_millis(delay_ms)))
}
