//! A gatherer on a std UDP socket (`Node`) and a str0m `Rtc` on top of one (`Peer`), driven
//! the way a blocking driver would; shared by the TURN tests and `benches/relay.rs`

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use meshrtc::ice::{
    CandidateType, GatherConfig, GatherEvent, Gatherer, IceTransportPolicy, LoopbackPolicy,
    Received, RetransmitTiming, Wrap,
};
use str0m::CandidateKind;

/// A short retransmission schedule: loopback answers in microseconds
pub fn quick() -> RetransmitTiming {
    RetransmitTiming {
        initial_rto: Duration::from_millis(100),
        max_transmissions: 4,
        final_wait_factor: 4,
    }
}

/// One gatherer on one std UDP socket, driven like a (blocking) driver would
pub struct Node {
    pub g: Gatherer,
    pub sock: UdpSocket,
    pub events: Vec<GatherEvent>,
    /// Relayed datagrams unwrapped: (peer, relayed, bytes)
    pub relayed: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Datagrams not from a server: (source, bytes)
    pub direct: Vec<(SocketAddr, Vec<u8>)>,
}

impl Node {
    pub fn new(policy: IceTransportPolicy) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = sock.local_addr().expect("addr");
        Self::with_socket(sock, local, policy)
    }

    /// `base` is what the gatherer is told its address is
    pub fn with_socket(sock: UdpSocket, base: SocketAddr, policy: IceTransportPolicy) -> Self {
        let mut g = Gatherer::new(GatherConfig {
            policy,
            loopback: LoopbackPolicy::Include,
            timing: quick(),
            seed: 1,
            channels: true,
        });
        g.add_local_address(base);
        let mut n = Self {
            g,
            sock,
            events: Vec::new(),
            relayed: Vec::new(),
            direct: Vec::new(),
        };
        n.flush();
        n
    }

    pub fn flush(&mut self) {
        while let Some(d) = self.g.poll_transmit() {
            self.sock.send_to(&d.contents, d.destination).expect("send");
        }
        while let Some(e) = self.g.poll_event() {
            self.events.push(e);
        }
    }

    /// Waits at most `max` for one datagram or the gatherer's deadline
    pub fn step(&mut self, max: Duration) {
        let now = Instant::now();
        let wait = self
            .g
            .poll_timeout()
            .map_or(max, |t| t.saturating_duration_since(now).min(max))
            .max(Duration::from_millis(1));
        self.sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = [0u8; 2048];
        if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            let local = self.sock.local_addr().expect("addr");
            match self
                .g
                .handle_receive(Instant::now(), from, local, &buf[..n])
            {
                Received::Passthrough => self.direct.push((from, buf[..n].to_vec())),
                Received::Consumed => {}
                Received::Relayed {
                    source,
                    destination,
                    contents,
                } => self.relayed.push((source, destination, contents.to_vec())),
            }
        }
        self.g.handle_timeout(Instant::now());
        self.flush();
    }

    pub fn run_until(&mut self, within: Duration, mut done: impl FnMut(&Self) -> bool) {
        let end = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < end, "timed out; events: {:?}", self.events);
            self.step(Duration::from_millis(20));
        }
    }

    pub fn candidates(&self, kind: CandidateKind) -> Vec<SocketAddr> {
        self.events
            .iter()
            .filter_map(|e| match e {
                GatherEvent::Candidate(c) if c.kind() == kind => Some(c.addr()),
                _ => None,
            })
            .collect()
    }

    pub fn failures(&self) -> Vec<&GatherEvent> {
        self.events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    GatherEvent::ServerFailed { .. } | GatherEvent::ServerMisbehaved { .. }
                )
            })
            .collect()
    }

    pub fn complete(&self) -> bool {
        self.events.contains(&GatherEvent::Complete)
    }

    /// Complete, or nothing to gather from (no server)
    #[allow(dead_code)] // reason: used by benches/relay.rs, which shares this file
    pub fn complete_or_idle(&self) -> bool {
        self.complete() || self.g.poll_timeout().is_none()
    }

    pub fn relay_addr(&self) -> SocketAddr {
        let r = self.candidates(CandidateKind::Relayed);
        assert_eq!(r.len(), 1, "one relayed candidate: {:?}", self.events);
        r[0]
    }

    /// Sends `data` from our relayed address to `peer`
    pub fn send_relayed(&mut self, peer: SocketAddr, data: &[u8]) -> Wrap {
        let relayed = self.relay_addr();
        let w = self.g.wrap(Instant::now(), relayed, peer, data);
        if let Wrap::Send(d) = &w {
            self.sock.send_to(&d.contents, d.destination).expect("send");
        }
        self.flush();
        w
    }
}

/// A str0m `Rtc` on a [`Node`]: the gatherer's pattern of use, as a `Participant` will
/// follow it — every transmit from a relayed source is wrapped, every datagram goes through
/// `handle_receive` first, and the selected pair comes from str0m's stats
pub struct Peer {
    pub rtc: str0m::Rtc,
    pub node: Node,
    pub open: Option<str0m::channel::ChannelId>,
    pub got: Vec<Vec<u8>>,
    pub first_got: Option<Instant>,
    pub last_write: Option<Instant>,
    /// The selected pair (local, remote) from str0m's stats
    pub pair: Option<(SocketAddr, SocketAddr)>,
    pub deadline: Instant,
    pub pending: Option<str0m::change::SdpPendingOffer>,
    /// How long one step waits for a datagram
    pub wait: Duration,
}

impl Peer {
    /// An `Rtc` with the node's candidates (gathering is done: no trickling needed)
    pub fn new(node: Node) -> Self {
        let now = Instant::now();
        let mut rtc = str0m::Rtc::builder()
            .set_crypto_provider(std::sync::Arc::new(str0m::crypto::from_feature_flags()))
            .set_stats_interval(Some(Duration::from_millis(200)))
            .build(now);
        for c in node.g.candidates() {
            rtc.add_local_candidate(c.clone());
        }
        Self {
            rtc,
            node,
            open: None,
            got: Vec::new(),
            first_got: None,
            last_write: None,
            pair: None,
            deadline: now,
            pending: None,
            wait: Duration::from_millis(2),
        }
    }

    pub fn offer(&mut self) -> str0m::change::SdpOffer {
        let mut change = self.rtc.sdp_api();
        change.add_channel("relay".into());
        let (offer, pending) = change.apply().unwrap();
        self.pending = Some(pending);
        offer
    }

    /// Tells the gatherer the remote candidates of a description (so channels are bound
    /// before str0m's first checks), as a participant does with trickled candidates
    pub fn learn_remote(&mut self, sdp: &str) {
        for line in sdp.lines() {
            if let Some(c) = line.trim().strip_prefix("a=") {
                if let Ok(c) = str0m::Candidate::from_sdp_string(c) {
                    self.node.g.add_remote_candidate(Instant::now(), c.addr());
                }
            }
        }
        self.node.flush();
    }

    pub fn accept(&mut self, answer: str0m::change::SdpAnswer) {
        let pending = self.pending.take().expect("an offer was made");
        self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    }

    pub fn done(&self) -> bool {
        self.pair.is_some()
            && self
                .first_got
                .is_some_and(|t| t.elapsed() > Duration::from_millis(500))
    }

    /// Drains str0m, greets the peer every 50 ms, takes one datagram, fires deadlines
    pub fn step(&mut self, greeting: &[u8]) {
        use str0m::net::{Protocol, Receive};
        use str0m::{Event, Input, Output};
        let n = &mut self.node;
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(t) => {
                    self.deadline = t;
                    break;
                }
                Output::Transmit(t) => {
                    match n
                        .g
                        .wrap(Instant::now(), t.source, t.destination, &t.contents)
                    {
                        Wrap::NotRelayed => {
                            n.sock.send_to(&t.contents, t.destination).unwrap();
                        }
                        Wrap::Send(d) => {
                            n.sock.send_to(&d.contents, d.destination).unwrap();
                        }
                        Wrap::Queued | Wrap::Dropped(_) => {}
                    }
                    n.flush();
                }
                Output::Event(Event::ChannelOpen(id, _)) => self.open = Some(id),
                Output::Event(Event::ChannelData(d)) => {
                    self.got.push(d.data);
                    self.first_got.get_or_insert_with(Instant::now);
                }
                Output::Event(Event::PeerStats(s)) => {
                    if let Some(p) = s.selected_candidate_pair {
                        self.pair = Some((p.local.addr, p.remote.addr));
                    }
                }
                Output::Event(_) => {}
            }
        }
        if let Some(id) = self.open {
            let due = self
                .last_write
                .is_none_or(|t| t.elapsed() > Duration::from_millis(50));
            if due {
                if let Some(mut ch) = self.rtc.channel(id) {
                    let _ = ch.write(true, greeting);
                    self.last_write = Some(Instant::now());
                }
            }
        }
        let mut buf = [0u8; 2048];
        n.sock.set_read_timeout(Some(self.wait)).unwrap();
        let now = Instant::now();
        if let Ok((len, from)) = n.sock.recv_from(&mut buf) {
            let local = n.sock.local_addr().unwrap();
            let (source, destination, contents) =
                match n.g.handle_receive(now, from, local, &buf[..len]) {
                    Received::Relayed {
                        source,
                        destination,
                        contents,
                    } => (source, destination, contents),
                    Received::Passthrough => (from, local, &buf[..len]),
                    Received::Consumed => (from, local, &[][..]),
                };
            if !contents.is_empty() {
                if let Ok(r) = Receive::new(Protocol::Udp, source, destination, contents) {
                    let input = Input::Receive(now, r);
                    if self.rtc.accepts(&input) {
                        self.rtc.handle_input(input).unwrap();
                    }
                }
            }
        }
        n.g.handle_timeout(now);
        n.flush();
        if now >= self.deadline {
            self.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
    }

    /// The selected pair's types, as cli.md's `candidate_pair` names them
    pub fn pair_types(
        &self,
        remote_signaled: &[str0m::Candidate],
    ) -> (CandidateType, CandidateType) {
        let (local, remote) = self.pair.expect("a selected pair");
        (
            self.node.g.local_type(local),
            CandidateType::of_remote(remote, remote_signaled),
        )
    }
}
