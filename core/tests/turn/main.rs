//! The ICE gatherer against a real coturn on 127.0.0.1, and (as root) behind Linux NAT
//!
//! Each test starts its own `turnserver` on a free port (see `coturn.rs`); without coturn
//! installed the tests skip with a message, and fail when `CI` is set.
#![allow(clippy::disallowed_methods)] // reason: these tests drive real sockets in real time

mod coturn;
mod netns;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshrtc::ice::{
    turn_rest_credentials, CandidateType, GatherConfig, GatherEvent, Gatherer, IceTransportPolicy,
    LoopbackPolicy, Received, ResolvedServer, RetransmitTiming, Scheme, ServerError, Wrap,
};
use str0m::CandidateKind;

use coturn::{Auth, Coturn};

/// A short retransmission schedule: loopback answers in microseconds
fn quick() -> RetransmitTiming {
    RetransmitTiming {
        initial_rto: Duration::from_millis(100),
        max_transmissions: 4,
        final_wait_factor: 4,
    }
}

/// One gatherer on one std UDP socket, driven like a (blocking) driver would
struct Node {
    g: Gatherer,
    sock: UdpSocket,
    events: Vec<GatherEvent>,
    /// Relayed datagrams unwrapped: (peer, relayed, bytes)
    relayed: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Datagrams not from a server: (source, bytes)
    direct: Vec<(SocketAddr, Vec<u8>)>,
}

impl Node {
    fn new(policy: IceTransportPolicy) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = sock.local_addr().expect("addr");
        Self::with_socket(sock, local, policy)
    }

    /// `base` is what the gatherer is told its address is
    fn with_socket(sock: UdpSocket, base: SocketAddr, policy: IceTransportPolicy) -> Self {
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

    fn flush(&mut self) {
        while let Some(d) = self.g.poll_transmit() {
            self.sock.send_to(&d.contents, d.destination).expect("send");
        }
        while let Some(e) = self.g.poll_event() {
            self.events.push(e);
        }
    }

    /// Waits at most `max` for one datagram or the gatherer's deadline
    fn step(&mut self, max: Duration) {
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

    fn run_until(&mut self, within: Duration, mut done: impl FnMut(&Self) -> bool) {
        let end = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < end, "timed out; events: {:?}", self.events);
            self.step(Duration::from_millis(20));
        }
    }

    fn candidates(&self, kind: CandidateKind) -> Vec<SocketAddr> {
        self.events
            .iter()
            .filter_map(|e| match e {
                GatherEvent::Candidate(c) if c.kind() == kind => Some(c.addr()),
                _ => None,
            })
            .collect()
    }

    fn failures(&self) -> Vec<&GatherEvent> {
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

    fn complete(&self) -> bool {
        self.events.contains(&GatherEvent::Complete)
    }

    fn relay_addr(&self) -> SocketAddr {
        let r = self.candidates(CandidateKind::Relayed);
        assert_eq!(r.len(), 1, "one relayed candidate: {:?}", self.events);
        r[0]
    }

    /// Sends `data` from our relayed address to `peer`
    fn send_relayed(&mut self, peer: SocketAddr, data: &[u8]) -> Wrap {
        let relayed = self.relay_addr();
        let w = self.g.wrap(Instant::now(), relayed, peer, data);
        if let Wrap::Send(d) = &w {
            self.sock.send_to(&d.contents, d.destination).expect("send");
        }
        self.flush();
        w
    }
}

fn lt() -> Auth<'static> {
    Auth::LongTerm {
        user: "alice",
        password: "s3cret",
    }
}

fn turn(server: &Coturn) -> ResolvedServer {
    ResolvedServer::turn(server.addr, "alice", "s3cret")
}

#[test]
fn srflx_from_coturn_stun() {
    if !coturn::available() {
        return;
    }
    let server = Coturn::start(lt());
    // On loopback there is no NAT: the mapped address is the socket's own, so no srflx
    // candidate is offered (it would duplicate the host candidate).
    let mut n = Node::new(IceTransportPolicy::All);
    n.g.add_server(Instant::now(), ResolvedServer::stun(server.addr))
        .unwrap();
    n.flush();
    n.run_until(Duration::from_secs(5), Node::complete);
    assert!(n.failures().is_empty(), "{:?}", n.events);
    assert!(n.candidates(CandidateKind::ServerReflexive).is_empty());
    // Told that its base is 127.0.0.2 (as if a NAT rewrote 127.0.0.2 → 127.0.0.1), the
    // gatherer offers coturn's XOR-MAPPED-ADDRESS as a srflx candidate on that base.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let real = sock.local_addr().unwrap();
    let base = SocketAddr::new([127, 0, 0, 2].into(), real.port());
    let mut n = Node::with_socket(sock, base, IceTransportPolicy::All);
    n.g.add_server(Instant::now(), ResolvedServer::stun(server.addr))
        .unwrap();
    n.flush();
    n.run_until(Duration::from_secs(5), Node::complete);
    assert_eq!(n.candidates(CandidateKind::ServerReflexive), [real]);
    assert_eq!(n.g.local_type(real), CandidateType::Srflx);
}

#[test]
fn turn_allocation_with_long_term_credentials_and_release() {
    if !coturn::available() {
        return;
    }
    let server = Coturn::start_with(lt(), &["--verbose"]);
    let mut n = Node::new(IceTransportPolicy::Relay);
    n.g.add_server(Instant::now(), turn(&server)).unwrap();
    n.flush();
    n.run_until(Duration::from_secs(5), Node::complete);
    assert!(n.failures().is_empty(), "{:?}", n.events);
    let relayed = n.relay_addr();
    assert_eq!(relayed.ip(), server.addr.ip());
    assert_ne!(relayed.port(), server.addr.port());
    // Relay policy: the relayed candidate is the only one.
    assert_eq!(
        n.events
            .iter()
            .filter(|e| matches!(e, GatherEvent::Candidate(_)))
            .count(),
        1
    );
    n.g.close(Instant::now());
    n.flush();
    n.run_until(Duration::from_secs(5), |n| {
        n.events.contains(&GatherEvent::Closed)
    });
    assert!(n.g.is_closed());
    // coturn saw the release (its verbose log names each request).
    let log = server.log();
    assert!(log.contains("username=<alice>, lifetime=0"), "{log}");
    assert!(log.contains("REFRESH processed, success"), "{log}");
}

#[test]
fn turn_allocation_with_rest_credentials() {
    if !coturn::available() {
        return;
    }
    let secret = "mint-me-credentials";
    let server = Coturn::start(Auth::Secret(secret));
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = turn_rest_credentials(secret.as_bytes(), unix + 3600, "alice");
    let mut n = Node::new(IceTransportPolicy::All);
    n.g.add_server(
        Instant::now(),
        ResolvedServer::turn(server.addr, &good.username, &good.password),
    )
    .unwrap();
    n.flush();
    n.run_until(Duration::from_secs(5), Node::complete);
    assert!(n.failures().is_empty(), "{:?}", n.events);
    n.relay_addr();

    // Expired REST credentials and a wrong secret are refused with a clear reason.
    for creds in [
        turn_rest_credentials(secret.as_bytes(), unix - 60, "alice"),
        turn_rest_credentials(b"not-the-secret", unix + 3600, "alice"),
    ] {
        let mut n = Node::new(IceTransportPolicy::All);
        n.g.add_server(
            Instant::now(),
            ResolvedServer::turn(server.addr, &creds.username, &creds.password),
        )
        .unwrap();
        n.flush();
        n.run_until(Duration::from_secs(5), Node::complete);
        assert_eq!(
            n.failures(),
            [&GatherEvent::ServerFailed {
                server: server.addr,
                scheme: Scheme::Turn,
                reason: ServerError::Unauthorized
            }]
        );
    }
}

#[test]
fn wrong_credentials_are_a_clear_error_and_other_servers_carry_on() {
    if !coturn::available() {
        return;
    }
    let server = Coturn::start(lt());
    let mut n = Node::new(IceTransportPolicy::All);
    n.g.add_server(
        Instant::now(),
        ResolvedServer::turn(server.addr, "alice", "wrong"),
    )
    .unwrap();
    n.g.add_server(Instant::now(), ResolvedServer::stun(server.addr))
        .unwrap();
    n.flush();
    let start = Instant::now();
    n.run_until(Duration::from_secs(5), Node::complete);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "refused at once, not timed out"
    );
    assert_eq!(
        n.failures(),
        [&GatherEvent::ServerFailed {
            server: server.addr,
            scheme: Scheme::Turn,
            reason: ServerError::Unauthorized
        }]
    );
    assert_eq!(n.g.poll_timeout(), None, "nothing retried");
    // The host candidate is there; the STUN binding on the same server succeeded.
    assert_eq!(n.candidates(CandidateKind::Host).len(), 1);
}

#[test]
fn two_gatherers_exchange_data_through_coturn_relays() {
    if !coturn::available() {
        return;
    }
    let server = Coturn::start(lt());
    let mut a = Node::new(IceTransportPolicy::Relay);
    let mut b = Node::new(IceTransportPolicy::Relay);
    for n in [&mut a, &mut b] {
        n.g.add_server(Instant::now(), turn(&server)).unwrap();
        n.flush();
        n.run_until(Duration::from_secs(5), Node::complete);
    }
    let (ra, rb) = (a.relay_addr(), b.relay_addr());

    // Like ICE checks: both send until both have heard the other (the first datagrams wait
    // for the permission; the peer's relay drops what arrives before its own permission).
    let end = Instant::now() + Duration::from_secs(5);
    while a.relayed.is_empty() || b.relayed.is_empty() {
        assert!(Instant::now() < end, "a: {:?}\nb: {:?}", a.events, b.events);
        a.send_relayed(rb, b"hello from a");
        b.send_relayed(ra, b"hello from b");
        for _ in 0..5 {
            a.step(Duration::from_millis(5));
            b.step(Duration::from_millis(5));
        }
    }
    // Unwrapped as if straight from the peer: source = its relayed address, destination ours.
    assert_eq!(a.relayed[0], (rb, ra, b"hello from b".to_vec()));
    assert_eq!(b.relayed[0], (ra, rb, b"hello from a".to_vec()));

    // Channels are bound by now: data goes as ChannelData (4-byte header) both ways.
    assert!(a.g.channel(ra, rb).is_some() && b.g.channel(rb, ra).is_some());
    let Wrap::Send(d) = a.g.wrap(Instant::now(), ra, rb, &[7; 100]) else {
        panic!("channel bound, sent at once")
    };
    assert_eq!(d.contents.len(), 104);
    assert!((0x40..=0x4F).contains(&d.contents[0]));
    a.sock.send_to(&d.contents, d.destination).unwrap();

    a.relayed.clear();
    b.relayed.clear();
    for i in 0..200u16 {
        a.send_relayed(rb, &i.to_be_bytes());
        b.send_relayed(ra, &i.to_be_bytes());
        a.step(Duration::from_millis(1));
        b.step(Duration::from_millis(1));
    }
    let end = Instant::now() + Duration::from_secs(2);
    while (a.relayed.len() < 200 || b.relayed.len() < 201) && Instant::now() < end {
        a.step(Duration::from_millis(5));
        b.step(Duration::from_millis(5));
    }
    // Loopback through coturn loses nothing in practice; allow a little for a busy machine.
    assert!(a.relayed.len() >= 190, "a got {}", a.relayed.len());
    assert!(b.relayed.len() >= 190, "b got {}", b.relayed.len());
    assert!(b.relayed.iter().all(|r| r.0 == ra && r.1 == rb));
    assert!(a.g.stats().relayed_out >= 200 && a.g.stats().malformed == 0);

    // A plain host socket talks to A's relayed address directly (a relay ↔ host pair).
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    let host_addr = host.local_addr().unwrap();
    a.relayed.clear();
    let end = Instant::now() + Duration::from_secs(5);
    while a.relayed.is_empty() {
        assert!(Instant::now() < end);
        a.send_relayed(host_addr, b"to host");
        host.send_to(b"from host", ra).unwrap();
        a.step(Duration::from_millis(10));
    }
    assert_eq!(a.relayed[0], (host_addr, ra, b"from host".to_vec()));
    host.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0; 64];
    let (n, from) = host.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"to host"[..], ra));

    // Releasing both allocations.
    for n in [&mut a, &mut b] {
        n.g.close(Instant::now());
        n.flush();
        n.run_until(Duration::from_secs(5), |n| n.g.is_closed());
    }
}

#[test]
fn stale_nonces_from_coturn_are_renewed() {
    if !coturn::available() {
        return;
    }
    // Nonces live one second: every later request is first answered 438.
    let server = Coturn::start_with(lt(), &["--stale-nonce=1", "--verbose"]);
    let mut a = Node::new(IceTransportPolicy::Relay);
    let mut b = Node::new(IceTransportPolicy::Relay);
    for n in [&mut a, &mut b] {
        n.g.add_server(Instant::now(), turn(&server)).unwrap();
        n.flush();
        n.run_until(Duration::from_secs(5), Node::complete);
    }
    let (ra, rb) = (a.relay_addr(), b.relay_addr());
    std::thread::sleep(Duration::from_millis(2100));
    let end = Instant::now() + Duration::from_secs(5);
    while a.relayed.is_empty() || b.relayed.is_empty() {
        assert!(Instant::now() < end, "a: {:?}\nb: {:?}", a.events, b.events);
        a.send_relayed(rb, b"a");
        b.send_relayed(ra, b"b");
        for _ in 0..5 {
            a.step(Duration::from_millis(5));
            b.step(Duration::from_millis(5));
        }
    }
    assert!(a.failures().is_empty() && b.failures().is_empty());
    let log = server.log();
    assert!(log.contains("438"), "coturn sent no stale nonce:\n{log}");
}

/// A str0m `Rtc` on a [`Node`]: the gatherer's pattern of use, as a `Participant` will
/// follow it — every transmit from a relayed source is wrapped, every datagram goes through
/// `handle_receive` first, and the selected pair comes from str0m's stats
struct Peer {
    rtc: str0m::Rtc,
    node: Node,
    open: Option<str0m::channel::ChannelId>,
    got: Vec<Vec<u8>>,
    first_got: Option<Instant>,
    last_write: Option<Instant>,
    /// The selected pair (local, remote) from str0m's stats
    pair: Option<(SocketAddr, SocketAddr)>,
    deadline: Instant,
    pending: Option<str0m::change::SdpPendingOffer>,
}

impl Peer {
    /// An `Rtc` with the node's candidates (gathering is done: no trickling needed)
    fn new(node: Node) -> Self {
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
        }
    }

    fn offer(&mut self) -> str0m::change::SdpOffer {
        let mut change = self.rtc.sdp_api();
        change.add_channel("relay".into());
        let (offer, pending) = change.apply().unwrap();
        self.pending = Some(pending);
        offer
    }

    fn accept(&mut self, answer: str0m::change::SdpAnswer) {
        let pending = self.pending.take().expect("an offer was made");
        self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    }

    fn done(&self) -> bool {
        self.pair.is_some()
            && self
                .first_got
                .is_some_and(|t| t.elapsed() > Duration::from_millis(500))
    }

    /// Drains str0m, greets the peer every 50 ms, takes one datagram, fires deadlines
    fn step(&mut self, greeting: &[u8]) {
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
        n.sock
            .set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
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
    fn pair_types(&self, remote_signaled: &[str0m::Candidate]) -> (CandidateType, CandidateType) {
        let (local, remote) = self.pair.expect("a selected pair");
        (
            self.node.g.local_type(local),
            CandidateType::of_remote(remote, remote_signaled),
        )
    }
}

/// Two raw str0m `Rtc`s with relay-only candidates connect through coturn and exchange
/// data-channel messages; the selected pair is named relay/relay
#[test]
fn str0m_peers_connect_through_coturn_relays_only() {
    if !coturn::available() {
        return;
    }
    let server = Coturn::start(lt());
    let mut peers = [0, 1].map(|_| {
        let mut n = Node::new(IceTransportPolicy::Relay);
        n.g.add_server(Instant::now(), turn(&server)).unwrap();
        n.flush();
        n.run_until(Duration::from_secs(5), Node::complete);
        Peer::new(n)
    });
    let relays = [peers[0].node.relay_addr(), peers[1].node.relay_addr()];
    let offer = peers[0].offer();
    let answer = peers[1].rtc.sdp_api().accept_offer(offer).unwrap();
    peers[0].accept(answer);

    let end = Instant::now() + Duration::from_secs(15);
    while !peers.iter().all(Peer::done) {
        assert!(
            Instant::now() < end,
            "no connection: {:?}",
            peers.each_ref().map(|p| (p.open, p.got.len()))
        );
        peers[0].step(b"hello from 0");
        peers[1].step(b"hello from 1");
    }
    assert_eq!(peers[1].got[0], b"hello from 0");
    assert_eq!(peers[0].got[0], b"hello from 1");
    for i in 0..2 {
        assert_eq!(peers[i].pair, Some((relays[i], relays[1 - i])));
        let signaled: Vec<_> = peers[1 - i].node.g.candidates().cloned().collect();
        assert_eq!(
            peers[i].pair_types(&signaled),
            (CandidateType::Relay, CandidateType::Relay)
        );
    }
}
