//! Tests that reach into the core: a small in-memory mesh harness in virtual time

#[cfg(all(feature = "opus", feature = "h264", feature = "vpx"))]
mod media;
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
}

enum Pending {
    Datagram(usize, Transmit),
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

    fn push(&mut self, after: Duration, p: Pending) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), p);
    }

    fn drain(&mut self, i: usize) {
        loop {
            match self.parts[i].poll_output() {
                Output::Timeout(t) => {
                    self.deadlines[i] = t.max(self.now);
                    return;
                }
                Output::Transmit(t) => {
                    let Some(to) = self.addrs.iter().position(|a| *a == t.destination) else {
                        continue;
                    };
                    if let Some(d) = (self.link)(i, to, &t) {
                        self.push(d, Pending::Datagram(to, t));
                    }
                }
                Output::Signal(f) => {
                    self.push(Duration::from_millis(5), Pending::ToServer(i, f.to_json()))
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
