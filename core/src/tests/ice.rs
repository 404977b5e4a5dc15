//! The participant with STUN/TURN servers, in virtual time: relay-only meshes through an
//! in-memory TURN server, trickled candidates, servers that fail in every way, leaving

use std::net::SocketAddr;
use std::time::Duration;

use super::{perfect, Mesh};
use crate::ice::fake::{FakeTurn, Mode};
use crate::ice::{CandidateType, IceServer, IceServerProblem, IceTransportPolicy, ServerError};
use crate::{Config, DataMessage, Event};

const TURN: &str = "127.0.0.200:3478";

fn turn_addr() -> SocketAddr {
    TURN.parse().unwrap()
}

fn config(policy: IceTransportPolicy, servers: Vec<IceServer>) -> Config {
    Config {
        ice_servers: servers,
        ice_policy: policy,
        ..Config::default()
    }
}

fn turn_server(password: &str) -> IceServer {
    IceServer::with_credentials(format!("turn:{TURN}?transport=udp"), "user", password)
}

/// `n` participants with `config`, a fake TURN server; not joined yet
fn mesh(n: usize, config: Config, server: FakeTurn) -> Mesh {
    let mut m = Mesh::new(vec![config; n], perfect(5));
    m.turn = Some(server);
    m
}

fn fake() -> FakeTurn {
    FakeTurn::new(turn_addr(), "user", "pass")
}

/// Every candidate participant `i` signaled (SDP lines and trickled ones), in order; `""`
/// is an end-of-candidates
fn signaled_candidates(m: &Mesh, i: usize) -> Vec<String> {
    let mut out = Vec::new();
    for text in &m.sent[i] {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let params = &v["params"];
        match v["method"].as_str() {
            Some("peer.offer" | "peer.answer") => {
                let sdp = params["sdp"].as_str().unwrap();
                out.extend(
                    sdp.lines()
                        .filter(|l| l.starts_with("a=candidate:"))
                        .map(|l| l.trim_start_matches("a=").to_owned()),
                );
            }
            Some("peer.ice_candidate") => {
                out.push(params["candidate"].as_str().unwrap().to_owned())
            }
            _ => {}
        }
    }
    out
}

fn candidate_type(line: &str) -> &str {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "typ");
    words.next().unwrap_or("")
}

fn ice_failures(m: &Mesh, i: usize) -> Vec<(String, IceServerProblem)> {
    m.events[i]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::IceServerFailed { server, problem } => Some((server.clone(), problem.clone())),
            _ => None,
        })
        .collect()
}

fn received(m: &Mesh, at: usize) -> Vec<(String, String)> {
    m.events[at]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::DataReceived {
                peer,
                message: DataMessage::Text(t),
                ..
            } => Some((peer.to_string(), t.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn relay_only_offers_only_relayed_candidates_and_connects_through_turn() {
    let cfg = config(IceTransportPolicy::Relay, vec![turn_server("pass")]);
    let mut m = mesh(2, cfg, fake());
    m.connect_all();
    for i in 0..2 {
        let cands: Vec<String> = signaled_candidates(&m, i)
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect();
        assert!(!cands.is_empty(), "participant {i} signaled no candidate");
        assert!(
            cands.iter().all(|c| candidate_type(c) == "relay"),
            "only relayed candidates under the relay policy: {cands:?}"
        );
        let stats = m.parts[i].ice_stats();
        assert_eq!(stats.local_candidates.len(), 1, "{stats:?}");
        assert_eq!(stats.local_candidates[0].0, CandidateType::Relay);
        assert_eq!(stats.server_failures, 0);
        assert!(!stats.gathering);
    }
    assert_eq!(
        m.direct, 0,
        "no datagram went straight between the participants"
    );
    let relayed_before = m.turn.as_ref().unwrap().relayed;
    assert!(relayed_before > 0);

    // Data flows through the relay; stats name the pair relay/relay.
    m.with(0, |p, _| {
        p.send_data(&Mesh::id(1), DataMessage::Text("through turn".into()))
    })
    .unwrap();
    m.run_for(Duration::from_secs(2));
    assert_eq!(received(&m, 1), [("p0".to_string(), "through turn".into())]);
    assert!(m.turn.as_ref().unwrap().relayed > relayed_before);
    for i in 0..2 {
        let pair = m.parts[i]
            .peer_stats(&Mesh::id(1 - i))
            .unwrap()
            .candidate_pair
            .expect("a selected pair");
        assert_eq!(
            (pair.local_type, pair.remote_type),
            (CandidateType::Relay, CandidateType::Relay),
            "{pair:?}"
        );
        assert_eq!(pair.local.ip(), turn_addr().ip());
        assert_eq!(pair.remote.ip(), turn_addr().ip());
        let gather = m.parts[i].ice_stats().gather;
        assert!(
            gather.relayed_in > 0 && gather.relayed_out > 0,
            "{gather:?}"
        );
    }
}

#[test]
fn relayed_datagrams_reach_the_right_peer() {
    let cfg = config(IceTransportPolicy::Relay, vec![turn_server("pass")]);
    let mut m = mesh(3, cfg, fake());
    m.connect_all();
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                let text = format!("{from}->{to}");
                m.with(from, |p, _| {
                    p.send_data(&Mesh::id(to), DataMessage::Text(text))
                })
                .unwrap();
            }
        }
    }
    m.run_for(Duration::from_secs(2));
    for to in 0..3 {
        let mut got = received(&m, to);
        got.sort();
        let want: Vec<(String, String)> = (0..3)
            .filter(|from| *from != to)
            .map(|from| (format!("p{from}"), format!("{from}->{to}")))
            .collect();
        assert_eq!(got, want, "at p{to}");
    }
    assert_eq!(m.direct, 0);
    // Three allocations, one per participant.
    assert_eq!(m.turn.as_ref().unwrap().allocations(), 3);
}

#[test]
fn announced_servers_trickle_their_candidates_before_end_of_candidates() {
    // No configured server: the signaling server hands one out with the announce result, so
    // the newcomer offers before its relayed candidate exists and trickles it.
    let mut m = mesh(2, config(IceTransportPolicy::All, Vec::new()), fake());
    m.announce_extra = Some(serde_json::json!({
        "ice_servers": [{"urls": [format!("turn:{TURN}")], "username": "user", "credential": "pass"}]
    }));
    m.connect_all();
    // p1 joined second and offered to p0.
    let cands = signaled_candidates(&m, 1);
    let types: Vec<&str> = cands
        .iter()
        .map(|c| {
            if c.is_empty() {
                "end"
            } else {
                candidate_type(c)
            }
        })
        .collect();
    assert_eq!(types, ["host", "relay", "end"], "{cands:?}");
    let offer_at = m.sent[1]
        .iter()
        .position(|t| t.contains("\"peer.offer\""))
        .unwrap();
    let relay_at = m.sent[1]
        .iter()
        .position(|t| t.contains("typ relay"))
        .unwrap();
    assert!(
        relay_at > offer_at,
        "the relayed candidate was trickled after the offer"
    );
    // p0 had finished gathering when the offer came: its answer carries both, and its
    // end-of-candidates follows at once.
    let types: Vec<String> = signaled_candidates(&m, 0)
        .iter()
        .map(|c| candidate_type(c).to_owned())
        .collect();
    assert_eq!(types, ["host", "relay", ""]);
    // Both allocations exist; with host candidates on loopback, ICE picks the direct pair
    // (str0m reports it once a second).
    assert_eq!(m.turn.as_ref().unwrap().allocations(), 2);
    m.run_for(Duration::from_millis(1500));
    let pair = m.parts[1]
        .peer_stats(&Mesh::id(0))
        .unwrap()
        .candidate_pair
        .unwrap();
    assert_eq!(pair.local_type, CandidateType::Host);
    assert_eq!(pair.remote_type, CandidateType::Host);
}

/// Two participants with every candidate and one bad server: they connect over host
/// candidates, the server's problem is an event, and its traffic stays bounded
fn bad_server(server: FakeTurn, password: &str) -> Mesh {
    let cfg = config(IceTransportPolicy::All, vec![turn_server(password)]);
    let mut m = mesh(2, cfg, server);
    m.connect_all();
    // Long enough for every retransmission schedule to end (39.5 s).
    m.run_for(Duration::from_secs(60));
    let turn = m.turn.as_ref().unwrap();
    assert!(
        turn.received <= 2 * 10,
        "no tight retry loop: {} datagrams to the server",
        turn.received
    );
    for i in 0..2 {
        assert!(m.parts[i].is_connected(&Mesh::id(1 - i)), "host pair works");
        assert!(m.parts[i]
            .ice_stats()
            .local_candidates
            .iter()
            .all(|c| c.0 == CandidateType::Host));
    }
    m
}

#[test]
fn wrong_credentials_are_an_event_and_host_candidates_carry_on() {
    let m = bad_server(fake(), "wrong");
    for i in 0..2 {
        assert_eq!(
            ice_failures(&m, i),
            [(
                format!("turn:{TURN}?transport=udp"),
                IceServerProblem::Failed(ServerError::Unauthorized)
            )]
        );
        assert_eq!(m.parts[i].ice_stats().server_failures, 1);
    }
}

#[test]
fn refused_allocations_are_typed_events() {
    for (code, reason) in [
        (486, ServerError::QuotaReached),
        (508, ServerError::InsufficientCapacity),
    ] {
        let mut server = fake();
        server.mode = Mode::Refuse(code);
        let m = bad_server(server, "pass");
        for i in 0..2 {
            assert_eq!(
                ice_failures(&m, i)
                    .into_iter()
                    .map(|f| f.1)
                    .collect::<Vec<_>>(),
                [IceServerProblem::Failed(reason.clone())]
            );
        }
    }
}

#[test]
fn a_garbage_answering_server_is_reported_once_then_times_out() {
    let mut server = fake();
    server.mode = Mode::Garbage;
    let m = bad_server(server, "pass");
    for i in 0..2 {
        let problems: Vec<IceServerProblem> =
            ice_failures(&m, i).into_iter().map(|f| f.1).collect();
        assert!(
            matches!(
                problems[..],
                [
                    IceServerProblem::Misbehaved(_),
                    IceServerProblem::Failed(ServerError::Timeout)
                ]
            ),
            "{problems:?}"
        );
        assert!(m.parts[i].ice_stats().gather.malformed >= 1);
    }
}

#[test]
fn a_silent_server_times_out_without_delaying_the_connection() {
    let mut server = fake();
    server.mode = Mode::Silent;
    let cfg = config(IceTransportPolicy::All, vec![turn_server("pass")]);
    let mut m = mesh(2, cfg, server);
    let start = m.now;
    m.connect_all();
    assert!(
        m.now - start < Duration::from_secs(2),
        "host candidates connect while the server is asked"
    );
    // The offerer's end-of-candidates waits for the server's answer or its timeout.
    assert!(!signaled_candidates(&m, 1).contains(&String::new()));
    m.run_for(Duration::from_secs(45));
    assert!(signaled_candidates(&m, 1).contains(&String::new()));
    assert_eq!(
        ice_failures(&m, 1)
            .into_iter()
            .map(|f| f.1)
            .collect::<Vec<_>>(),
        [IceServerProblem::Failed(ServerError::Timeout)]
    );
}

#[test]
fn a_server_vanishing_mid_call_loses_the_relay_and_the_direct_path_carries_on() {
    let cfg = config(IceTransportPolicy::All, vec![turn_server("pass")]);
    let mut m = mesh(2, cfg, fake().with_lifetime(120));
    m.connect_all();
    assert_eq!(m.parts[0].ice_stats().local_candidates.len(), 2);
    m.turn.as_mut().unwrap().mode = Mode::Silent;
    // The refresh at 90 s goes unanswered (39.5 s of retransmissions).
    m.run_for(Duration::from_secs(135));
    for i in 0..2 {
        let problems: Vec<IceServerProblem> =
            ice_failures(&m, i).into_iter().map(|f| f.1).collect();
        assert_eq!(
            problems,
            [IceServerProblem::RelayLost(ServerError::Timeout)]
        );
        let stats = m.parts[i].ice_stats();
        assert_eq!(stats.relays_lost, 1);
        assert_eq!(
            stats.local_candidates.len(),
            1,
            "the relayed candidate is gone"
        );
    }
    m.with(0, |p, _| {
        p.send_data(&Mesh::id(1), DataMessage::Text("still here".into()))
    })
    .unwrap();
    m.run_for(Duration::from_secs(1));
    assert_eq!(received(&m, 1), [("p0".to_string(), "still here".into())]);
}

#[test]
fn a_relay_only_call_whose_server_vanishes_is_reported_and_recovered_without_hammering() {
    let cfg = config(IceTransportPolicy::Relay, vec![turn_server("pass")]);
    let mut m = mesh(2, cfg, fake().with_lifetime(120));
    m.connect_all();
    m.turn.as_mut().unwrap().mode = Mode::Silent;
    m.run_for(Duration::from_secs(120));
    for i in 0..2 {
        // No path is left: the peer is down and recovery works on it (ICE restarts while
        // the path is merely down; the server says when a peer has really gone).
        let reconnecting = m.events[i]
            .iter()
            .any(|(_, e)| matches!(e, Event::PeerReconnecting { .. }));
        assert!(
            reconnecting,
            "no path is left: the peer is reconnecting ({i})"
        );
        assert!(ice_failures(&m, i)
            .iter()
            .any(|f| matches!(f.1, IceServerProblem::RelayLost(_))));
    }
    let turn = m.turn.as_ref().unwrap();
    let before = turn.received;
    m.run_for(Duration::from_secs(60));
    let after = m.turn.as_ref().unwrap().received;
    assert!(
        after - before <= 2,
        "nothing keeps asking the vanished server"
    );
}

#[test]
fn leaving_releases_the_allocations() {
    let cfg = config(IceTransportPolicy::Relay, vec![turn_server("pass")]);
    let mut m = mesh(2, cfg, fake());
    m.connect_all();
    assert_eq!(m.turn.as_ref().unwrap().allocations(), 2);
    assert!(!m.parts[0].is_transport_closed());
    m.with(0, |p, _| p.leave());
    m.run_for(Duration::from_millis(100));
    assert!(m.parts[0].is_transport_closed());
    let turn = m.turn.as_ref().unwrap();
    assert_eq!((turn.released, turn.allocations()), (1, 1));

    // A vanished server: leaving gives up on the release after the grace, not before.
    m.turn.as_mut().unwrap().mode = Mode::Silent;
    m.with(1, |p, _| p.leave());
    m.run_for(Duration::from_millis(1500));
    assert!(!m.parts[1].is_transport_closed());
    m.run_for(Duration::from_millis(600));
    assert!(m.parts[1].is_transport_closed());
}

#[test]
fn without_servers_the_transport_closes_at_once() {
    let mut m = Mesh::new(vec![Config::default(); 2], perfect(5));
    m.connect_all();
    m.with(0, |p, _| p.leave());
    assert!(m.parts[0].is_transport_closed());
    // End-of-candidates went out right after the offer and the answer.
    for i in 0..2 {
        assert_eq!(
            signaled_candidates(&m, i).last().map(String::as_str),
            Some("")
        );
    }
}

#[test]
fn server_names_are_resolved_by_the_driver() {
    let named = IceServer::with_credentials("turn:turn.example.test:3478", "user", "pass");
    let cfg = config(IceTransportPolicy::Relay, vec![named]);
    let mut m = mesh(2, cfg, fake());
    let asked = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = asked.clone();
    m.resolver = Some(Box::new(move |ep| {
        log.borrow_mut()
            .push(ep.lookup().map(|(h, p)| (h.to_owned(), p)));
        Ok(vec!["[::1]:3478".parse().unwrap(), turn_addr()])
    }));
    m.connect_all();
    // Once per participant; the IPv4 address is taken (the sockets are IPv4).
    let want = Some(("turn.example.test".to_owned(), 3478));
    assert_eq!(*asked.borrow(), [want.clone(), want]);
    m.run_for(Duration::from_millis(1500));
    let pair = m.parts[0]
        .peer_stats(&Mesh::id(1))
        .unwrap()
        .candidate_pair
        .unwrap();
    assert_eq!(pair.local_type, CandidateType::Relay);

    // A name that does not resolve is an event; host candidates carry on.
    let named = IceServer::with_credentials("turn:nowhere.test", "user", "pass");
    let mut m = mesh(2, config(IceTransportPolicy::All, vec![named]), fake());
    m.resolver = Some(Box::new(|_| Err("no such host".into())));
    m.connect_all();
    assert_eq!(
        ice_failures(&m, 0),
        [(
            "turn:nowhere.test:3478?transport=udp".to_owned(),
            IceServerProblem::Unresolvable("no such host".into())
        )]
    );
}

#[test]
fn bad_urls_are_events_not_errors() {
    let servers = vec![
        IceServer::new("turns:secure.test"),
        IceServer::new("turn:127.0.0.200"),
        IceServer::new("http://nope"),
    ];
    let mut m = Mesh::new(
        vec![config(IceTransportPolicy::All, servers); 2],
        perfect(5),
    );
    m.connect_all();
    let problems: Vec<IceServerProblem> = ice_failures(&m, 0).into_iter().map(|f| f.1).collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems
        .iter()
        .all(|p| matches!(p, IceServerProblem::BadUrl(_))));
}
