//! The gatherer against scripted STUN/TURN servers, in virtual time
#![allow(clippy::disallowed_methods)] // reason: tests anchor virtual time at a real instant

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stun::{attr, method, Builder, Class, Message};
use super::*;

const REALM: &str = "meshrtc.test";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn fast_timing() -> RetransmitTiming {
    RetransmitTiming::default()
}

/// A gatherer on 127.0.0.1:5000 (+ 192.0.2.10:5000), and a clock
struct H {
    g: Gatherer,
    now: Instant,
    local: SocketAddr,
}

impl H {
    fn new(policy: IceTransportPolicy) -> Self {
        let mut g = Gatherer::new(GatherConfig {
            policy,
            loopback: LoopbackPolicy::Include,
            timing: fast_timing(),
            seed: 7,
            channels: true,
        });
        g.add_local_address(addr("127.0.0.1:5000"));
        g.add_local_address(addr("192.0.2.10:5000"));
        let mut h = Self {
            g,
            now: Instant::now(),
            local: addr("127.0.0.1:5000"),
        };
        h.events();
        h
    }

    fn sent(&mut self) -> Vec<Datagram> {
        std::iter::from_fn(|| self.g.poll_transmit()).collect()
    }

    fn one_sent(&mut self) -> Datagram {
        let mut s = self.sent();
        assert_eq!(s.len(), 1, "expected one datagram, got {s:?}");
        s.pop().unwrap()
    }

    fn events(&mut self) -> Vec<GatherEvent> {
        std::iter::from_fn(|| self.g.poll_event()).collect()
    }

    fn server_says(&mut self, server: SocketAddr, bytes: &[u8]) -> Received<'static> {
        // Leak so the borrowed Relayed contents can be inspected freely in tests.
        let bytes: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
        self.g.handle_receive(self.now, server, self.local, bytes)
    }

    /// Advances virtual time by `d`, firing every deadline on the way
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.g.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.g.handle_timeout(self.now);
        }
        self.now = end;
        self.g.handle_timeout(self.now);
    }

    /// Advances and collects everything sent on the way
    fn advance_collect(&mut self, d: Duration) -> Vec<(Duration, Datagram)> {
        let start = self.now;
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(t) = self.g.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.g.handle_timeout(self.now);
            for s in self.sent() {
                out.push((self.now - start, s));
            }
        }
        self.now = end;
        out
    }
}

fn parse(d: &Datagram) -> Message<'_> {
    Message::parse(&d.contents).expect("gatherer sends valid stun")
}

fn key() -> [u8; 16] {
    stun::long_term_key("user", REALM, "pass")
}

fn reply(req: &Message<'_>, class: Class, signed: bool, f: impl FnOnce(&mut Builder)) -> Vec<u8> {
    let mut b = Builder::new(class, req.method, req.tid, 64);
    f(&mut b);
    if signed {
        b.integrity(&key());
    }
    b.fingerprint().finish()
}

fn challenge(req: &Message<'_>, nonce: &str) -> Vec<u8> {
    reply(req, Class::Error, false, |b| {
        b.error_code(401, "Unauthorized")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes());
    })
}

fn error(req: &Message<'_>, code: u16, signed: bool) -> Vec<u8> {
    reply(req, Class::Error, signed, |b| {
        b.error_code(code, "Nope");
    })
}

fn ok(req: &Message<'_>) -> Vec<u8> {
    reply(req, Class::Success, true, |_| {})
}

const TURN: &str = "198.51.100.1:3478";
const STUN: &str = "198.51.100.2:3478";
const RELAYED: &str = "198.51.100.1:40000";
const MAPPED: &str = "203.0.113.7:6000";
const PEER: &str = "203.0.113.99:7000";

/// A harness with an allocation made on TURN (after a 401 challenge)
fn allocated() -> H {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
        .unwrap();
    let d = h.one_sent();
    assert_eq!(d.destination, addr(TURN));
    assert_eq!(
        d.source,
        addr("192.0.2.10:5000"),
        "non-loopback local for a public server"
    );
    let req = parse(&d);
    assert_eq!((req.class, req.method), (Class::Request, method::ALLOCATE));
    assert!(!req.has_integrity());
    assert_eq!(
        h.server_says(addr(TURN), &challenge(&req, "n1")),
        Received::Consumed
    );
    let d = h.one_sent();
    let req = parse(&d);
    assert_eq!(req.attr(attr::USERNAME), Some(&b"user"[..]));
    assert_eq!(req.attr(attr::REALM), Some(REALM.as_bytes()));
    assert_eq!(req.attr(attr::NONCE), Some(&b"n1"[..]));
    assert!(req.verify_integrity(&key()));
    let resp = reply(&req, Class::Success, true, |b| {
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, addr(RELAYED))
            .xor_addr(attr::XOR_MAPPED_ADDRESS, addr(MAPPED))
            .u32(attr::LIFETIME, 600);
    });
    assert_eq!(h.server_says(addr(TURN), &resp), Received::Consumed);
    let ev = h.events();
    let cands: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            GatherEvent::Candidate(c) => Some((c.kind(), c.addr())),
            _ => None,
        })
        .collect();
    assert_eq!(
        cands,
        [
            (CandidateKind::Relayed, addr(RELAYED)),
            (CandidateKind::ServerReflexive, addr(MAPPED))
        ]
    );
    assert_eq!(ev.last(), Some(&GatherEvent::Complete));
    assert!(h.g.is_relayed(addr(RELAYED)));
    assert_eq!(h.g.local_type(addr(RELAYED)), CandidateType::Relay);
    assert_eq!(h.g.local_type(addr(MAPPED)), CandidateType::Srflx);
    assert_eq!(h.g.local_type(addr("127.0.0.1:5000")), CandidateType::Host);
    // Host (2), relay and srflx, for an Rtc created later.
    assert_eq!(h.g.candidates().count(), 4);
    h
}

#[test]
fn host_candidates_follow_the_policies() {
    let hosts = |policy, loopback| {
        let mut g = Gatherer::new(GatherConfig {
            policy,
            loopback,
            ..Default::default()
        });
        for a in [
            "127.0.0.1:5000",
            "192.0.2.10:5000",
            "[::1]:5000",
            "[2001:db8::1]:5000",
            "[fe80::1]:5000",
            "169.254.1.1:5000",
            "0.0.0.0:5000",
            "[::ffff:192.0.2.10]:5000", // the same as 192.0.2.10 seen through a dual-stack socket
        ] {
            g.add_local_address(addr(a));
        }
        std::iter::from_fn(|| g.poll_event())
            .map(|e| match e {
                GatherEvent::Candidate(c) => {
                    assert_eq!(c.kind(), CandidateKind::Host);
                    c.addr().to_string()
                }
                e => panic!("unexpected {e:?}"),
            })
            .collect::<Vec<_>>()
    };
    use IceTransportPolicy::*;
    use LoopbackPolicy::*;
    assert_eq!(
        hosts(All, Exclude),
        ["192.0.2.10:5000", "[2001:db8::1]:5000"]
    );
    assert_eq!(hosts(All, Only), ["127.0.0.1:5000", "[::1]:5000"]);
    assert_eq!(hosts(All, Include).len(), 4);
    assert!(hosts(Relay, Include).is_empty());
}

#[test]
fn srflx_from_stun_binding() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::stun(addr(STUN)))
        .unwrap();
    let d = h.one_sent();
    let req = parse(&d);
    assert_eq!((req.class, req.method), (Class::Request, method::BINDING));
    // Someone else's datagram is not the gatherer's business.
    assert_eq!(
        h.g.handle_receive(h.now, addr(PEER), h.local, &d.contents),
        Received::Passthrough
    );
    let resp = reply(&req, Class::Success, false, |b| {
        b.xor_addr(attr::XOR_MAPPED_ADDRESS, addr(MAPPED));
    });
    assert_eq!(h.server_says(addr(STUN), &resp), Received::Consumed);
    let ev = h.events();
    let GatherEvent::Candidate(c) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(c.kind(), CandidateKind::ServerReflexive);
    assert_eq!(c.addr(), addr(MAPPED));
    assert_eq!(c.local(), addr("192.0.2.10:5000"));
    assert_eq!(ev[1], GatherEvent::Complete);
    assert_eq!(h.g.poll_timeout(), None, "nothing left to do");
    // A late duplicate answer is consumed and counted, not re-reported.
    assert_eq!(h.server_says(addr(STUN), &resp), Received::Consumed);
    assert!(h.events().is_empty());
    assert_eq!(h.g.stats().stray, 1);
}

#[test]
fn stun_retransmits_with_backoff_then_gives_up() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::stun(addr(STUN)))
        .unwrap();
    let first = h.one_sent();
    let sent = h.advance_collect(Duration::from_secs(120));
    let at: Vec<u128> = sent.iter().map(|(t, _)| t.as_millis()).collect();
    assert_eq!(at, [500, 1500, 3500, 7500, 15500, 31500]);
    assert!(sent.iter().all(|(_, d)| d.contents == first.contents));
    let ev = h.events();
    assert_eq!(
        ev,
        [
            GatherEvent::ServerFailed {
                server: addr(STUN),
                scheme: Scheme::Stun,
                reason: ServerError::Timeout
            },
            GatherEvent::Complete
        ]
    );
    assert_eq!(h.g.poll_timeout(), None);
}

#[test]
fn stun_garbage_is_reported_once_and_a_good_answer_still_counts() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::stun(addr(STUN)))
        .unwrap();
    let d = h.one_sent();
    let req = parse(&d);
    for junk in [
        &b"hello"[..],
        &[0; 20],
        &[0x40, 0, 0, 9, 1],
        &d.contents[..24],
    ] {
        assert_eq!(h.server_says(addr(STUN), junk), Received::Consumed);
    }
    let ev = h.events();
    assert!(
        matches!(&ev[..], [GatherEvent::ServerMisbehaved { .. }]),
        "{ev:?}"
    );
    assert_eq!(h.g.stats().malformed, 4);
    // A success without a mapped address is garbage too; the request keeps waiting.
    let empty = reply(&req, Class::Success, false, |_| {});
    h.server_says(addr(STUN), &empty);
    assert!(h.events().is_empty());
    assert!(h.g.poll_timeout().is_some());
    let resp = reply(&req, Class::Success, false, |b| {
        b.xor_addr(attr::XOR_MAPPED_ADDRESS, addr(MAPPED));
    });
    h.server_says(addr(STUN), &resp);
    assert!(matches!(h.events()[0], GatherEvent::Candidate(_)));
}

#[test]
fn stun_error_and_no_nat() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::stun(addr(STUN)))
        .unwrap();
    let d = h.one_sent();
    h.server_says(addr(STUN), &error(&parse(&d), 500, false));
    assert!(matches!(
        &h.events()[0],
        GatherEvent::ServerFailed {
            reason: ServerError::Rejected { code: 500, .. },
            ..
        }
    ));
    // A mapped address equal to the base (no NAT) adds nothing.
    let other = addr("198.51.100.3:3478");
    h.g.add_server(h.now, ResolvedServer::stun(other)).unwrap();
    let d = h.one_sent();
    let resp = reply(&parse(&d), Class::Success, false, |b| {
        b.xor_addr(attr::XOR_MAPPED_ADDRESS, addr("192.0.2.10:5000"));
    });
    h.server_says(other, &resp);
    assert_eq!(h.events(), [GatherEvent::Complete]);
}

#[test]
fn relay_policy_skips_stun_and_hosts() {
    let mut h = H::new(IceTransportPolicy::Relay);
    h.g.add_server(h.now, ResolvedServer::stun(addr(STUN)))
        .unwrap();
    assert!(h.sent().is_empty());
    h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
        .unwrap();
    let d = h.one_sent();
    h.server_says(addr(TURN), &challenge(&parse(&d), "n1"));
    let d = h.one_sent();
    let resp = reply(&parse(&d), Class::Success, true, |b| {
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, addr(RELAYED))
            .xor_addr(attr::XOR_MAPPED_ADDRESS, addr(MAPPED));
    });
    h.server_says(addr(TURN), &resp);
    let ev = h.events();
    assert!(
        matches!(&ev[..], [GatherEvent::Candidate(c), GatherEvent::Complete] if c.kind() == CandidateKind::Relayed),
        "{ev:?}"
    );
}

#[test]
fn turn_allocates_with_long_term_credentials() {
    let h = allocated();
    // The refresh is due a minute before the 600 s lifetime ends.
    assert_eq!(h.g.poll_timeout(), Some(h.now + Duration::from_secs(540)));
}

#[test]
fn turn_wrong_credentials_fail_clearly_and_stop() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "wrong"))
        .unwrap();
    let d = h.one_sent();
    h.server_says(addr(TURN), &challenge(&parse(&d), "n1"));
    let d = h.one_sent();
    assert!(!parse(&d).verify_integrity(&key()));
    h.server_says(addr(TURN), &challenge(&parse(&d), "n2"));
    assert_eq!(
        h.events(),
        [
            GatherEvent::ServerFailed {
                server: addr(TURN),
                scheme: Scheme::Turn,
                reason: ServerError::Unauthorized
            },
            GatherEvent::Complete
        ]
    );
    assert!(h.sent().is_empty());
    assert_eq!(h.g.poll_timeout(), None, "no retry loop");
}

#[test]
fn turn_refusals_are_typed_and_other_servers_carry_on() {
    for (code, want) in [
        (486, ServerError::QuotaReached),
        (508, ServerError::InsufficientCapacity),
        (403, ServerError::Forbidden),
        (
            599,
            ServerError::Rejected {
                code: 599,
                reason: "Nope".into(),
            },
        ),
    ] {
        let mut h = H::new(IceTransportPolicy::All);
        h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
            .unwrap();
        h.g.add_server(h.now, ResolvedServer::stun(addr(STUN)))
            .unwrap();
        let sent = h.sent();
        let (turn_req, stun_req) = (parse(&sent[0]), parse(&sent[1]));
        h.server_says(addr(TURN), &challenge(&turn_req, "n1"));
        let d = h.one_sent();
        h.server_says(addr(TURN), &error(&parse(&d), code, true));
        assert_eq!(
            h.events(),
            [GatherEvent::ServerFailed {
                server: addr(TURN),
                scheme: Scheme::Turn,
                reason: want
            }]
        );
        let resp = reply(&stun_req, Class::Success, false, |b| {
            b.xor_addr(attr::XOR_MAPPED_ADDRESS, addr(MAPPED));
        });
        h.server_says(addr(STUN), &resp);
        let ev = h.events();
        assert!(
            matches!(&ev[..], [GatherEvent::Candidate(_), GatherEvent::Complete]),
            "{ev:?}"
        );
    }
}

#[test]
fn turn_stale_nonce_is_retried_with_the_new_nonce_a_few_times() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
        .unwrap();
    let d = h.one_sent();
    h.server_says(addr(TURN), &challenge(&parse(&d), "n1"));
    for i in 2..=4 {
        let d = h.one_sent();
        let stale = reply(&parse(&d), Class::Error, false, |b| {
            b.error_code(438, "Stale Nonce")
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, format!("n{i}").as_bytes());
        });
        h.server_says(addr(TURN), &stale);
        assert!(h.events().is_empty());
    }
    let d = h.one_sent();
    assert_eq!(parse(&d).attr(attr::NONCE), Some(&b"n4"[..]));
    assert!(parse(&d).verify_integrity(&key()));
    // A fourth stale nonce in a row: the server is looping; give up.
    let stale = reply(&parse(&d), Class::Error, false, |b| {
        b.error_code(438, "Stale Nonce").attr(attr::NONCE, b"n5");
    });
    h.server_says(addr(TURN), &stale);
    assert!(matches!(
        &h.events()[0],
        GatherEvent::ServerFailed {
            reason: ServerError::StaleNonce,
            ..
        }
    ));
    assert!(h.sent().is_empty());
}

#[test]
fn turn_server_that_vanishes_before_allocating() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
        .unwrap();
    h.one_sent();
    let sent = h.advance_collect(Duration::from_secs(300));
    assert_eq!(sent.len(), 6, "7 transmissions in all, then silence");
    assert!(matches!(
        &h.events()[0],
        GatherEvent::ServerFailed {
            reason: ServerError::Timeout,
            ..
        }
    ));
    assert_eq!(h.g.poll_timeout(), None);
}

#[test]
fn turn_refreshes_and_survives_a_stale_nonce_then_loses_a_vanished_server() {
    let mut h = allocated();
    let sent = h.advance_collect(Duration::from_secs(540));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, Duration::from_secs(540));
    let req = parse(&sent[0].1);
    assert_eq!(req.method, method::REFRESH);
    assert_eq!(req.u32(attr::LIFETIME), Some(600));
    let stale = reply(&req, Class::Error, false, |b| {
        b.error_code(438, "Stale Nonce").attr(attr::NONCE, b"n9");
    });
    h.server_says(addr(TURN), &stale);
    let d = h.one_sent();
    let req = parse(&d);
    assert_eq!(req.attr(attr::NONCE), Some(&b"n9"[..]));
    let resp = reply(&req, Class::Success, true, |b| {
        b.u32(attr::LIFETIME, 300);
    });
    h.server_says(addr(TURN), &resp);
    // A 300 s lifetime is refreshed 60 s before its end.
    assert_eq!(h.g.poll_timeout(), Some(h.now + Duration::from_secs(240)));
    // Now the server vanishes: the refresh retransmits, then the candidate is lost.
    let sent = h.advance_collect(Duration::from_secs(600));
    assert_eq!(sent.len(), 7);
    let ev = h.events();
    assert!(
        matches!(&ev[..], [GatherEvent::CandidateLost { candidate, reason: ServerError::Timeout, .. }] if candidate.addr() == addr(RELAYED)),
        "{ev:?}"
    );
    assert!(!h.g.is_relayed(addr(RELAYED)));
    assert!(h.g.candidates().all(|c| c.addr() != addr(RELAYED)));
    assert_eq!(
        h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"x"),
        Wrap::NotRelayed
    );
    assert_eq!(h.g.poll_timeout(), None);
}

#[test]
fn turn_refresh_refused_loses_the_candidate() {
    let mut h = allocated();
    let sent = h.advance_collect(Duration::from_secs(540));
    let req = parse(&sent[0].1);
    h.server_says(addr(TURN), &error(&req, 437, true));
    assert!(matches!(
        &h.events()[0],
        GatherEvent::CandidateLost {
            reason: ServerError::AllocationMismatch,
            ..
        }
    ));
}

/// Binds a channel to PEER by sending one datagram; returns the channel number
fn bind_channel(h: &mut H) -> u16 {
    assert_eq!(
        h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"first"),
        Wrap::Queued
    );
    let d = h.one_sent();
    let req = parse(&d);
    assert_eq!(req.method, method::CHANNEL_BIND);
    assert_eq!(req.xor_addr(attr::XOR_PEER_ADDRESS), Some(addr(PEER)));
    let number = (req.u32(attr::CHANNEL_NUMBER).unwrap() >> 16) as u16;
    assert!((0x4000..=0x4FFF).contains(&number));
    h.server_says(addr(TURN), &ok(&req));
    // The queued datagram leaves as ChannelData.
    let d = h.one_sent();
    assert_eq!(d.destination, addr(TURN));
    assert_eq!(
        stun::parse_channel_data(&d.contents),
        Some((number, &b"first"[..]))
    );
    number
}

#[test]
fn relayed_data_uses_a_channel_both_ways() {
    let mut h = allocated();
    let number = bind_channel(&mut h);
    assert_eq!(h.g.channel(addr(RELAYED), addr(PEER)), Some(number));
    let Wrap::Send(d) = h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"hello") else {
        panic!()
    };
    assert_eq!(d.contents, stun::channel_data(number, b"hello"));
    assert_eq!(d.source, addr("192.0.2.10:5000"));
    // Host traffic is not touched.
    assert_eq!(
        h.g.wrap(h.now, addr("192.0.2.10:5000"), addr(PEER), b"x"),
        Wrap::NotRelayed
    );
    // In: ChannelData and Data indications both unwrap to (peer → relayed).
    let got = h.server_says(addr(TURN), &stun::channel_data(number, b"pong"));
    assert_eq!(
        got,
        Received::Relayed {
            source: addr(PEER),
            destination: addr(RELAYED),
            contents: b"pong"
        }
    );
    let ind = Builder::new(Class::Indication, method::DATA, [9; 12], 0)
        .xor_addr(attr::XOR_PEER_ADDRESS, addr(PEER))
        .attr(attr::DATA, b"pong2")
        .finish();
    assert_eq!(
        h.server_says(addr(TURN), &ind),
        Received::Relayed {
            source: addr(PEER),
            destination: addr(RELAYED),
            contents: b"pong2"
        }
    );
    // An unknown channel is consumed, not passed on.
    assert_eq!(
        h.server_says(addr(TURN), &stun::channel_data(0x4FFE, b"?")),
        Received::Consumed
    );
    assert_eq!(h.g.stats().relayed_in, 2);
}

#[test]
fn refused_channel_falls_back_to_permission_and_send_indications() {
    let mut h = allocated();
    assert_eq!(
        h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"a"),
        Wrap::Queued
    );
    assert_eq!(
        h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"b"),
        Wrap::Queued
    );
    let d = h.one_sent();
    h.server_says(addr(TURN), &error(&parse(&d), 400, true));
    let d = h.one_sent();
    let req = parse(&d);
    assert_eq!(req.method, method::CREATE_PERMISSION);
    assert_eq!(
        req.xor_addr(attr::XOR_PEER_ADDRESS).map(|a| a.ip()),
        Some(addr(PEER).ip())
    );
    h.server_says(addr(TURN), &ok(&req));
    let out = h.sent();
    assert_eq!(out.len(), 2);
    for (d, want) in out.iter().zip([b"a", b"b"]) {
        let m = parse(d);
        assert_eq!((m.class, m.method), (Class::Indication, method::SEND));
        assert_eq!(m.xor_addr(attr::XOR_PEER_ADDRESS), Some(addr(PEER)));
        assert_eq!(m.attr(attr::DATA), Some(&want[..]));
    }
    let Wrap::Send(d) = h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"c") else {
        panic!()
    };
    assert_eq!(parse(&d).method, method::SEND);
    assert!(
        h.sent().is_empty(),
        "no new channel bind before the retry time"
    );
}

#[test]
fn refused_permission_is_not_asked_again_for_30_s() {
    let mut h = allocated();
    h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"a");
    let d = h.one_sent();
    h.server_says(addr(TURN), &error(&parse(&d), 403, true));
    let d = h.one_sent();
    h.server_says(addr(TURN), &error(&parse(&d), 403, true));
    assert!(h.sent().is_empty());
    for _ in 0..100 {
        assert_eq!(
            h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"x"),
            Wrap::Dropped(DropReason::PermissionRefused)
        );
    }
    assert!(h.sent().is_empty(), "no request per packet");
    assert_eq!(h.g.stats().relayed_dropped, 101);
    h.advance(Duration::from_secs(31));
    assert_eq!(
        h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"x"),
        Wrap::Queued
    );
    let d = h.one_sent();
    assert_eq!(parse(&d).method, method::CHANNEL_BIND);
}

#[test]
fn queue_for_a_pending_permission_is_bounded() {
    let mut h = allocated();
    for i in 0..100 {
        let w = h.g.wrap(h.now, addr(RELAYED), addr(PEER), &[i; 100]);
        if i < turn::MAX_QUEUED as u8 {
            assert_eq!(w, Wrap::Queued);
        } else {
            assert_eq!(w, Wrap::Dropped(DropReason::QueueFull));
        }
    }
    assert_eq!(h.sent().len(), 1, "one channel bind");
    // Too many peers are refused too, without a request per peer beyond the limit.
    for port in 0..200u16 {
        h.g.wrap(
            h.now,
            addr(RELAYED),
            SocketAddr::new(addr(PEER).ip(), 1000 + port),
            b"x",
        );
    }
    assert!(h.sent().len() <= turn::MAX_PEERS);
}

#[test]
fn permissions_and_channels_are_refreshed_while_used_and_expire_when_not() {
    let mut h = allocated();
    let number = bind_channel(&mut h);
    // Keep using the channel: the permission is refreshed at 240 s, the channel at 540 s
    // (the allocation's own refresh is due at 540 s too).
    let start = h.now;
    let requests = run_answering(&mut h, start, 600, true);
    let methods: Vec<_> = requests.iter().map(|r| r.1).collect();
    assert_eq!(
        methods,
        [
            method::CREATE_PERMISSION, // 240 s
            method::CREATE_PERMISSION, // 480 s
            method::REFRESH,           // 540 s (the allocation)
            method::CHANNEL_BIND,      // 540 s
        ],
        "{requests:?}"
    );
    assert_eq!(requests[0].0, 240);
    assert_eq!(requests[3].0, 540);
    assert_eq!(h.g.channel(addr(RELAYED), addr(PEER)), Some(number));
    // Unused from now on: the refreshes covering the last use still happen once, then only
    // the allocation is refreshed, and the channel expires.
    let requests = run_answering(&mut h, start, 1800, false);
    let late: Vec<_> = requests.iter().filter(|r| r.1 != method::REFRESH).collect();
    assert_eq!(
        late,
        // 780 = 540 + 240: the channel bind at 540 s refreshed the permission too.
        [
            &(780, method::CREATE_PERMISSION),
            &(1080, method::CHANNEL_BIND)
        ],
        "{requests:?}"
    );
    assert_eq!(h.g.channel(addr(RELAYED), addr(PEER)), None);
}

/// Runs for `secs`, sending to PEER every 10 s when `use_it`, answering every request at once
fn run_answering(h: &mut H, start: Instant, secs: u64, use_it: bool) -> Vec<(u64, u16)> {
    let mut requests = Vec::new();
    for _ in 0..secs / 10 {
        if use_it {
            h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"x");
            h.sent();
        }
        let end = h.now + Duration::from_secs(10);
        while let Some(t) = h.g.poll_timeout().filter(|t| *t <= end) {
            h.now = t;
            h.g.handle_timeout(t);
            for d in h.sent() {
                let m = parse(&d);
                requests.push(((h.now - start).as_secs(), m.method));
                h.server_says(addr(TURN), &ok(&m));
            }
        }
        h.now = end;
    }
    requests
}

#[test]
fn close_releases_the_allocation() {
    let mut h = allocated();
    h.g.close(h.now);
    let d = h.one_sent();
    let req = parse(&d);
    assert_eq!(req.method, method::REFRESH);
    assert_eq!(req.u32(attr::LIFETIME), Some(0));
    assert!(req.verify_integrity(&key()));
    assert!(!h.g.is_closed());
    h.server_says(addr(TURN), &ok(&req));
    assert!(h.g.is_closed());
    assert_eq!(h.events(), [GatherEvent::Closed]);
    assert_eq!(h.g.poll_timeout(), None);
}

#[test]
fn close_with_a_vanished_server_gives_up_quickly() {
    let mut h = allocated();
    h.g.close(h.now);
    h.one_sent();
    let sent = h.advance_collect(Duration::from_secs(30));
    assert_eq!(sent.len(), 2, "three transmissions in all");
    assert!(h.g.is_closed());
    assert_eq!(h.events(), [GatherEvent::Closed]);
}

#[test]
fn server_without_a_local_address_of_its_family_fails_at_once() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::stun(addr("[2001:db8::3]:3478")))
        .unwrap();
    assert!(h.sent().is_empty());
    assert!(matches!(
        &h.events()[..],
        [
            GatherEvent::ServerFailed {
                reason: ServerError::NoLocalAddress,
                ..
            },
            GatherEvent::Complete
        ]
    ));
}

#[test]
fn forged_success_without_integrity_is_ignored() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
        .unwrap();
    let d = h.one_sent();
    h.server_says(addr(TURN), &challenge(&parse(&d), "n1"));
    let d = h.one_sent();
    let forged = reply(&parse(&d), Class::Success, false, |b| {
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, addr("6.6.6.6:6666"));
    });
    assert_eq!(h.server_says(addr(TURN), &forged), Received::Consumed);
    assert!(matches!(
        &h.events()[..],
        [GatherEvent::ServerMisbehaved { .. }]
    ));
    assert!(!h.g.is_relayed(addr("6.6.6.6:6666")));
}

#[test]
fn random_garbage_from_servers_in_every_state_never_panics_or_floods() {
    let mut rng = fastrand::Rng::with_seed(3);
    for round in 0..20 {
        let mut h = if round % 2 == 0 {
            allocated()
        } else {
            let mut h = H::new(IceTransportPolicy::All);
            h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
                .unwrap();
            h
        };
        if round % 4 == 0 {
            bind_channel(&mut h);
        }
        h.g.add_server(h.now, ResolvedServer::stun(addr(STUN)))
            .unwrap();
        h.sent();
        for _ in 0..500 {
            let len = rng.usize(0..200);
            let mut v: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if len >= 20 && rng.bool() {
                v[0] &= 1;
                v[2..4].copy_from_slice(&((len - 20) as u16 & !3).to_be_bytes());
                v[4..8].copy_from_slice(&stun::MAGIC.to_be_bytes());
            }
            let from = if rng.bool() { addr(TURN) } else { addr(STUN) };
            let r = h.server_says(from, &v);
            assert!(!matches!(r, Received::Passthrough));
        }
        // Garbage causes no datagrams of its own.
        assert!(h.sent().is_empty());
        let misbehaved = h
            .events()
            .iter()
            .filter(|e| matches!(e, GatherEvent::ServerMisbehaved { .. }))
            .count();
        assert!(misbehaved <= 2);
        h.advance(Duration::from_secs(3600));
    }
}

#[test]
fn ipv6_turn_and_mapped_clients() {
    let mut g = Gatherer::new(GatherConfig::default());
    g.add_local_address(addr("[2001:db8::10]:5000"));
    let now = Instant::now();
    let server = addr("[2001:db8::1]:3478");
    g.add_server(now, ResolvedServer::turn(server, "user", "pass"))
        .unwrap();
    let _host = g.poll_event();
    let d = g.poll_transmit().unwrap();
    assert_eq!(d.source, addr("[2001:db8::10]:5000"));
    g.handle_receive(now, server, d.source, &challenge(&parse(&d), "n"));
    let d = g.poll_transmit().unwrap();
    let resp = reply(&parse(&d), Class::Success, true, |b| {
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, addr("[2001:db8::1]:49000"));
    });
    // Through a dual-stack socket the source might be written differently; IPv6 stays IPv6.
    g.handle_receive(now, server, d.source, &resp);
    let c = std::iter::from_fn(|| g.poll_event())
        .find_map(|e| match e {
            GatherEvent::Candidate(c) => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(c.addr(), addr("[2001:db8::1]:49000"));
    // An IPv4 peer cannot be reached from an IPv6 relay.
    assert_eq!(
        g.wrap(now, c.addr(), addr(PEER), b"x"),
        Wrap::Dropped(DropReason::AddressFamily)
    );
}

#[test]
fn rest_credentials_match_coturn() {
    let c = turn_rest_credentials(b"secret", 1_700_000_000, "alice");
    assert_eq!(c.username, "1700000000:alice");
    // python3: base64(hmac.new(b"secret", b"1700000000:alice", sha1).digest())
    assert_eq!(c.password, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
}

#[test]
fn candidate_types_for_stats() {
    let remote = [
        Candidate::host(addr("192.0.2.1:1"), "udp").unwrap(),
        Candidate::relayed(addr("198.51.100.1:2"), addr("192.0.2.1:1"), "udp").unwrap(),
    ];
    assert_eq!(
        CandidateType::of_remote(addr("192.0.2.1:1"), &remote),
        CandidateType::Host
    );
    assert_eq!(
        CandidateType::of_remote(addr("198.51.100.1:2"), &remote).as_str(),
        "relay"
    );
    assert_eq!(
        CandidateType::of_remote(addr("10.0.0.1:3"), &remote).to_string(),
        "prflx"
    );
}

#[test]
fn without_channels_data_goes_as_send_indications() {
    let mut h = H::new(IceTransportPolicy::All);
    h.g.config.channels = false;
    // Same set-up as `allocated`, condensed.
    h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
        .unwrap();
    let d = h.one_sent();
    h.server_says(addr(TURN), &challenge(&parse(&d), "n1"));
    let d = h.one_sent();
    let resp = reply(&parse(&d), Class::Success, true, |b| {
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, addr(RELAYED));
    });
    h.server_says(addr(TURN), &resp);
    assert_eq!(
        h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"a"),
        Wrap::Queued
    );
    let d = h.one_sent();
    assert_eq!(parse(&d).method, method::CREATE_PERMISSION);
    h.server_says(addr(TURN), &ok(&parse(&d)));
    assert_eq!(parse(&h.one_sent()).method, method::SEND);
    let Wrap::Send(d) = h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"b") else {
        panic!()
    };
    // 20 (header) + 12 (XOR-PEER-ADDRESS, IPv4) + 4 (DATA header) + 1 + 3 (padding)
    assert_eq!(d.contents.len(), 40);
    assert!(h.sent().is_empty());
}

#[test]
fn remote_candidates_get_channels_ahead_of_data() {
    // Known before the allocation exists: bound as soon as it does.
    let mut h = H::new(IceTransportPolicy::All);
    h.g.add_remote_candidate(h.now, addr(PEER));
    h.g.add_remote_candidate(h.now, addr("[2001:db8::9]:1")); // another family: ignored
    h.g.add_server(h.now, ResolvedServer::turn(addr(TURN), "user", "pass"))
        .unwrap();
    let d = h.one_sent();
    h.server_says(addr(TURN), &challenge(&parse(&d), "n1"));
    let d = h.one_sent();
    let resp = reply(&parse(&d), Class::Success, true, |b| {
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, addr(RELAYED));
    });
    h.server_says(addr(TURN), &resp);
    let d = h.one_sent();
    let req = parse(&d);
    assert_eq!(req.method, method::CHANNEL_BIND);
    assert_eq!(req.xor_addr(attr::XOR_PEER_ADDRESS), Some(addr(PEER)));
    h.server_says(addr(TURN), &ok(&req));
    // The first data goes out at once, as ChannelData.
    let Wrap::Send(d) = h.g.wrap(h.now, addr(RELAYED), addr(PEER), b"check") else {
        panic!("bound ahead of the data")
    };
    assert!(stun::is_channel_data(&d.contents));
    // Learned after the allocation: bound at once; a repeat changes nothing.
    let other = addr("203.0.113.50:9");
    h.g.add_remote_candidate(h.now, other);
    assert_eq!(parse(&h.one_sent()).method, method::CHANNEL_BIND);
    h.g.add_remote_candidate(h.now, other);
    h.g.add_remote_candidate(h.now, addr(PEER));
    assert!(h.sent().is_empty());
}

#[test]
fn gatherer_is_send_and_events_are_small() {
    fn is_send<T: Send>() {}
    is_send::<Gatherer>();
    assert!(
        size_of::<GatherEvent>() <= 320,
        "{}",
        size_of::<GatherEvent>()
    );
    let mut h = H::new(IceTransportPolicy::All);
    assert!(!h.g.is_gathering());
    h.g.add_server(h.now, ResolvedServer::stun(addr(STUN)))
        .unwrap();
    assert!(h.g.is_gathering());
}

#[test]
fn route_moves_direct_datagrams_and_wraps_relayed_ones() {
    let mut h = allocated();
    let direct = Datagram {
        source: addr("192.0.2.10:5000"),
        destination: addr(PEER),
        contents: b"direct".to_vec(),
    };
    assert_eq!(h.g.route(h.now, direct.clone()), Some(direct));
    let relayed = Datagram {
        source: addr(RELAYED),
        destination: addr(PEER),
        contents: b"relayed".to_vec(),
    };
    assert_eq!(
        h.g.route(h.now, relayed.clone()),
        None,
        "held for the channel"
    );
    let bind = parse(&h.one_sent()).tid;
    let req = Builder::new(Class::Request, method::CHANNEL_BIND, bind, 0).finish();
    h.server_says(addr(TURN), &ok(&Message::parse(&req).unwrap()));
    assert_eq!(h.sent().len(), 1, "the held datagram");
    let d = h.g.route(h.now, relayed).unwrap();
    assert_eq!(d.destination, addr(TURN));
    assert!(stun::is_channel_data(&d.contents));
}
