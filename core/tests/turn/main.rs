//! The ICE gatherer against a real coturn on 127.0.0.1, and (as root) behind Linux NAT
//!
//! Each test starts its own `turnserver` on a free port (see `coturn.rs`); without coturn
//! installed the tests skip with a message, and fail when `CI` is set.
#![allow(clippy::disallowed_methods)] // reason: these tests drive real sockets in real time

mod coturn;
mod harness;
mod nat;
mod netns;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshrtc::ice::{
    turn_rest_credentials, CandidateType, GatherEvent, IceTransportPolicy, ResolvedServer, Scheme,
    ServerError, Wrap,
};
use str0m::CandidateKind;

use coturn::{Auth, Coturn};
use harness::{Node, Peer};

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
    peers[1].learn_remote(&offer.to_sdp_string());
    let answer = peers[1].rtc.sdp_api().accept_offer(offer).unwrap();
    peers[0].learn_remote(&answer.to_sdp_string());
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
