//! Relayed traffic: extra bytes and CPU per packet of TURN wrapping and unwrapping
//!
//! Not a timed test: run it with `cargo bench -p meshrtc-benches --bench relay
//! [session|connect|packet]` (none: all) and read the tables.
//!
//! `session`: the real thing — two `meshrtc-tokio` sessions (core session and participant,
//! UDP sockets, an in-process signaling server) on loopback join a room and connect, 20 runs
//! with host candidates only and 20 with `ice_policy: Relay` through coturn; p50/p95 of the
//! core's connect time (offer to data channel open) and of the wall time from the second
//! join to both connected, and of leaving (which waits for the TURN release).
//!
//! `connect`: two str0m `Rtc`s on loopback connect (offer to data channel open on both
//! sides), 20 runs host-only and 20 runs relay-only through coturn, p50/p95; set-up is the
//! time before the offer: gathering (the TURN allocation, for relays) and creating the `Rtc`s
//! (DTLS certificates). Same loop, same process, like for
//! like (the `Peer` harness of the core's TURN tests; the meshrtc `Participant` figure comes
//! when the gatherer is integrated).
//!
//! `packet`: it starts a real coturn on 127.0.0.1 (skips with a message without one), makes two
//! allocations with `meshrtc::ice::Gatherer` — one that binds channels (ChannelData), one
//! that does not (Send and Data indications) — and records the datagrams coturn really
//! delivers. Then, in this thread and without sockets, it times per packet:
//!
//! * `wrap`: a str0m transmit from the relayed candidate → the datagram for the server;
//! * `unwrap`: a datagram from the server → the peer's datagram for str0m (borrowed);
//! * baselines in the same run: copying the payload into a new datagram (what sending a
//!   direct transmit costs at least), and `handle_receive` of a direct datagram (what every
//!   non-relayed datagram pays for the demultiplexing).
#![allow(clippy::disallowed_methods)] // reason: a benchmark measures real time

#[path = "../../core/tests/turn/coturn.rs"]
#[allow(dead_code)] // reason: shared with the core's TURN tests; not every helper is used here
mod coturn;
#[path = "../../core/tests/turn/harness.rs"]
#[allow(dead_code)] // reason: shared with the core's TURN tests; not every helper is used here
mod harness;

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use meshrtc::ice::{
    GatherConfig, GatherEvent, Gatherer, IceTransportPolicy, LoopbackPolicy, Received,
    ResolvedServer, Wrap,
};

/// Packets per timed round; each figure is the fastest of [`ROUNDS`] rounds (the machine
/// is shared: the minimum is the least disturbed)
const ITERATIONS: u32 = 50_000;
const ROUNDS: usize = 9;

struct Relay {
    g: Gatherer,
    sock: UdpSocket,
    relayed: SocketAddr,
}

impl Relay {
    fn allocate(server: SocketAddr, channels: bool) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let mut g = Gatherer::new(GatherConfig {
            policy: IceTransportPolicy::Relay,
            loopback: LoopbackPolicy::Include,
            channels,
            ..GatherConfig::default()
        });
        g.add_local_address(sock.local_addr().expect("addr"));
        g.add_server(
            Instant::now(),
            ResolvedServer::turn(server, "bench", "bench"),
        )
        .expect("server");
        let mut r = Self {
            g,
            sock,
            relayed: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let end = Instant::now() + Duration::from_secs(5);
        while r.relayed.port() == 0 {
            assert!(Instant::now() < end, "no allocation from coturn");
            r.pump();
            while let Some(e) = r.g.poll_event() {
                match e {
                    GatherEvent::Candidate(c) => r.relayed = c.addr(),
                    GatherEvent::Complete => {}
                    other => panic!("coturn: {other:?}"),
                }
            }
        }
        r
    }

    fn flush(&mut self) {
        while let Some(d) = self.g.poll_transmit() {
            self.sock.send_to(&d.contents, d.destination).expect("send");
        }
    }

    /// One round: send what is queued, take one datagram; returns it when it was relayed data
    fn pump(&mut self) -> Option<Vec<u8>> {
        self.flush();
        let mut buf = [0u8; 2048];
        let mut raw = None;
        if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            let local = self.sock.local_addr().expect("addr");
            if let Received::Relayed { .. } =
                self.g
                    .handle_receive(Instant::now(), from, local, &buf[..n])
            {
                raw = Some(buf[..n].to_vec());
            }
        }
        self.g.handle_timeout(Instant::now());
        self.flush();
        raw
    }

    /// Sends `payload` to `peer` until wrapping sends at once; then records what the peer
    /// sent back as coturn delivered it (ChannelData or a Data indication)
    fn settle(&mut self, peer: &UdpSocket, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let peer_addr = peer.local_addr().expect("addr");
        let end = Instant::now() + Duration::from_secs(5);
        let mut wrapped = None;
        let mut delivered = None;
        while wrapped.is_none() || delivered.is_none() {
            assert!(Instant::now() < end, "relay did not settle");
            if let Wrap::Send(d) = self
                .g
                .wrap(Instant::now(), self.relayed, peer_addr, payload)
            {
                self.sock.send_to(&d.contents, d.destination).expect("send");
                wrapped = Some(d.contents);
            }
            peer.send_to(payload, self.relayed).expect("send");
            if let Some(raw) = self.pump() {
                delivered = Some(raw);
            }
        }
        // The first datagrams may have gone before the channel was bound; take fresh ones.
        for _ in 0..20 {
            peer.send_to(payload, self.relayed).expect("send");
            if let Some(raw) = self.pump() {
                delivered = Some(raw);
            }
        }
        let Wrap::Send(d) = self
            .g
            .wrap(Instant::now(), self.relayed, peer_addr, payload)
        else {
            panic!("settled relay sends at once")
        };
        (d.contents, delivered.expect("delivered"))
    }
}

/// Nanoseconds per call of `f`: the fastest of [`ROUNDS`] rounds after a warm-up
fn time(mut f: impl FnMut()) -> f64 {
    for _ in 0..ITERATIONS / 10 {
        f();
    }
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..ITERATIONS {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument picks sections by name.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |section: &str| picked.is_empty() || picked.iter().any(|p| p == section);
    if !coturn::available() {
        return;
    }
    let server = coturn::Coturn::start(coturn::Auth::LongTerm {
        user: "bench",
        password: "bench",
    });
    if wants("session") {
        session(&server);
    }
    if wants("connect") {
        connect(&server);
    }
    if wants("packet") {
        per_packet(&server);
    }
}

/// Set-up (gathering, `Rtc`s) and offer to channel open on both sides, in milliseconds
fn connect_once(relay: Option<&coturn::Coturn>, eager: bool) -> (f64, f64) {
    let t0 = Instant::now();
    let mut peers = [0, 1].map(|_| {
        let mut n = match relay {
            None => harness::Node::new(IceTransportPolicy::All),
            Some(server) => {
                let mut n = harness::Node::new(IceTransportPolicy::Relay);
                n.g.add_server(
                    Instant::now(),
                    ResolvedServer::turn(server.addr, "bench", "bench"),
                )
                .expect("server");
                n
            }
        };
        n.flush();
        n.run_until(Duration::from_secs(5), harness::Node::complete_or_idle);
        let mut p = harness::Peer::new(n);
        p.wait = Duration::from_micros(100);
        p
    });
    let gathered = t0.elapsed();
    let t1 = Instant::now();
    let offer = peers[0].offer();
    if eager {
        peers[1].learn_remote(&offer.to_sdp_string());
    }
    let answer = peers[1].rtc.sdp_api().accept_offer(offer).expect("answer");
    if eager {
        peers[0].learn_remote(&answer.to_sdp_string());
    }
    peers[0].accept(answer);
    while peers.iter().any(|p| p.open.is_none()) {
        assert!(t1.elapsed() < Duration::from_secs(10), "no connection");
        peers[0].step(b"x");
        peers[1].step(b"x");
    }
    let connected = t1.elapsed();
    if relay.is_some() {
        for p in &mut peers {
            p.node.g.close(Instant::now());
            p.node.flush();
        }
    }
    (ms(gathered), ms(connected))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn connect(server: &coturn::Coturn) {
    const RUNS: usize = 20;
    println!("== connect time on loopback, str0m pair, {RUNS} runs each (ms) ==");
    println!(
        "{:<34} {:>8} {:>8} {:>14} {:>14}",
        "candidates", "p50", "p95", "set-up p50", "set-up p95"
    );
    for (name, relay, eager) in [
        ("host only", None, true),
        ("relay only (coturn)", Some(server), true),
        ("relay only, no early channels", Some(server), false),
    ] {
        let (mut gather, mut conn): (Vec<f64>, Vec<f64>) =
            (0..RUNS).map(|_| connect_once(relay, eager)).unzip();
        println!(
            "{name:<34} {:>8.1} {:>8.1} {:>14.2} {:>14.2}",
            percentile(&mut conn, 0.5),
            percentile(&mut conn, 0.95),
            percentile(&mut gather, 0.5),
            percentile(&mut gather, 0.95)
        );
    }
}

/// Two meshrtc sessions on loopback, relay-only through `server` or host-only: (core connect
/// ms, wall ms from the second join to both connected, wall ms of both leaves)
async fn session_once(url: &str, room: &str, relay: Option<SocketAddr>) -> (f64, f64, f64) {
    use meshrtc::signal::{PeerId, RoomId};
    use meshrtc_tokio::{Event, Events, Session, SessionConfig};
    let config = |id: &str, seed| {
        let mut c = SessionConfig::new(url, RoomId::new(room).expect("a room"));
        c.session.peer_id = Some(PeerId::new(id).expect("an id"));
        c.session.participant.seed = seed;
        c.session.participant.candidate_policy = meshrtc::CandidatePolicy::LoopbackOnly;
        if let Some(server) = relay {
            c.session.participant.ice_servers = vec![meshrtc::ice::IceServer::with_credentials(
                format!("turn:{server}"),
                "bench",
                "bench",
            )];
            c.session.participant.ice_policy = IceTransportPolicy::Relay;
        }
        c
    };
    async fn connected(events: &mut Events) -> f64 {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
                .await
                .expect("connected in time")
                .expect("session alive");
            match e {
                Event::Mesh(meshrtc::Event::PeerConnected { connect_time, .. }) => {
                    return ms(connect_time)
                }
                Event::Mesh(meshrtc::Event::IceServerFailed { server, problem }) => {
                    panic!("{server}: {problem}")
                }
                _ => {}
            }
        }
    }
    let (a, mut a_events) = Session::join(config("alice", 1)).await.expect("joined");
    let started = Instant::now();
    let (b, mut b_events) = Session::join(config("bob", 2)).await.expect("joined");
    let (ca, cb) = tokio::join!(connected(&mut a_events), connected(&mut b_events));
    let wall = ms(started.elapsed());
    if relay.is_some() {
        // Relay-only: the sessions offered relayed candidates and nothing else, so the
        // connection that just opened runs through coturn.
        for s in [&a, &b] {
            let ice = s.stats().await.expect("stats").ice;
            assert!(
                !ice.local_candidates.is_empty()
                    && ice
                        .local_candidates
                        .iter()
                        .all(|(t, _)| *t == meshrtc::ice::CandidateType::Relay),
                "relay-only session offered {:?}",
                ice.local_candidates
            );
        }
    }
    let left = Instant::now();
    let (ra, rb) = tokio::join!(a.leave(), b.leave());
    ra.expect("left");
    rb.expect("left");
    (ca.max(cb), wall, ms(left.elapsed()))
}

fn session(server: &coturn::Coturn) {
    const RUNS: usize = 20;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    println!("== connect time on loopback, two meshrtc-tokio sessions, {RUNS} runs each (ms) ==");
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "candidates", "core p50", "core p95", "wall p50", "wall p95", "leave p50", "leave p95"
    );
    runtime.block_on(async {
        let signal = meshrtc_tokio::SignalServer::bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("a signaling server");
        let url = signal.url();
        for (name, relay) in [
            ("host only", None),
            ("relay only (coturn)", Some(server.addr)),
        ] {
            let mut core = Vec::new();
            let mut wall = Vec::new();
            let mut leave = Vec::new();
            for run in 0..RUNS {
                let room = format!("{}{run}", if relay.is_some() { "relay" } else { "host" });
                let (c, w, l) = session_once(&url, &room, relay).await;
                core.push(c);
                wall.push(w);
                leave.push(l);
            }
            println!(
                "{name:<24} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>12.1}",
                percentile(&mut core, 0.5),
                percentile(&mut core, 0.95),
                percentile(&mut wall, 0.5),
                percentile(&mut wall, 0.95),
                percentile(&mut leave, 0.5),
                percentile(&mut leave, 0.95)
            );
        }
    });
    println!(
        "(core: offer sent or received to data channel open, the larger of the two peers; wall: \
         from the second join to both connected; leave: both sessions leaving, TURN releases \
         included)"
    );
}

fn per_packet(server: &coturn::Coturn) {
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let peer_addr = peer.local_addr().expect("addr");
    let mut with_channel = Relay::allocate(server.addr, true);
    let mut without = Relay::allocate(server.addr, false);

    println!(
        "== relayed traffic through coturn (fastest of {ROUNDS} rounds of {ITERATIONS} packets, one thread) =="
    );
    println!(
        "{:>8}  {:<28} {:>10} {:>10} {:>14}",
        "payload", "path", "extra B", "ns/packet", "vs baseline"
    );
    for size in [100usize, 1200] {
        let payload = vec![0x80u8; size];
        let (chan_out, chan_in) = with_channel.settle(&peer, &payload);
        let (ind_out, ind_in) = without.settle(&peer, &payload);
        assert!((0x40..=0x4F).contains(&chan_out[0]) && (0x40..=0x4F).contains(&chan_in[0]));
        assert!(
            ind_out[0] < 4 && ind_in[0] < 4,
            "Send/Data indications are STUN"
        );

        let copy = time(|| {
            black_box(black_box(&payload[..]).to_vec());
        });
        let local = with_channel.sock.local_addr().expect("addr");
        let now = Instant::now();
        let g = &mut with_channel.g;
        let direct = time(|| {
            black_box(g.handle_receive(now, peer_addr, local, black_box(&payload)));
        });
        let (relayed_c, relayed_i) = (with_channel.relayed, without.relayed);
        let wrap_chan = time(|| {
            black_box(
                with_channel
                    .g
                    .wrap(now, relayed_c, peer_addr, black_box(&payload)),
            );
        });
        let wrap_ind = time(|| {
            black_box(
                without
                    .g
                    .wrap(now, relayed_i, peer_addr, black_box(&payload)),
            );
        });
        let unwrap_chan = time(|| {
            let r = with_channel
                .g
                .handle_receive(now, server.addr, local, black_box(&chan_in));
            assert!(matches!(r, Received::Relayed { .. }));
        });
        let local_i = without.sock.local_addr().expect("addr");
        let unwrap_ind = time(|| {
            let r = without
                .g
                .handle_receive(now, server.addr, local_i, black_box(&ind_in));
            assert!(matches!(r, Received::Relayed { .. }));
        });
        let rows = [
            ("out: copy (baseline)", 0, copy, copy),
            (
                "out: wrap ChannelData",
                chan_out.len() - size,
                wrap_chan,
                copy,
            ),
            (
                "out: wrap Send indication",
                ind_out.len() - size,
                wrap_ind,
                copy,
            ),
            ("in: direct (baseline)", 0, direct, direct),
            (
                "in: unwrap ChannelData",
                chan_in.len() - size,
                unwrap_chan,
                direct,
            ),
            (
                "in: unwrap Data indication",
                ind_in.len() - size,
                unwrap_ind,
                direct,
            ),
        ];
        for (name, extra, ns, base) in rows {
            println!(
                "{size:>8}  {name:<28} {extra:>10} {ns:>10.1} {:>13.2}x",
                ns / base
            );
        }
    }
    println!(
        "(extra B: bytes on the wire beyond the payload, as meshrtc sends and coturn delivers \
         them, IPv4 peers; coturn's Data indications carry a 24-byte SOFTWARE attribute)"
    );
}
