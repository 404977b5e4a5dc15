//! Hostile and malformed input is contained: a clear error, a counter, nothing else breaks

use std::time::Duration;

use meshrtc::signal::{Notification, ServerFrame};
use meshrtc::{DataMessage, Event, InputError};

use crate::util::*;

/// Checks that p0 and p1 still exchange a message both ways
fn still_works(sim: &mut meshrtc_sim::Sim, hosts: &[meshrtc_sim::HostId], tag: &str) {
    sim.send(hosts[0], &pid("p1"), DataMessage::Text(format!("{tag}-a")))
        .unwrap();
    sim.send(hosts[1], &pid("p0"), DataMessage::Text(format!("{tag}-b")))
        .unwrap();
    sim.run_for(Duration::from_millis(200));
    assert!(received_texts(sim, hosts[1])
        .iter()
        .any(|(_, t)| *t == format!("{tag}-a")));
    assert!(received_texts(sim, hosts[0])
        .iter()
        .any(|(_, t)| *t == format!("{tag}-b")));
}

#[test]
fn garbage_datagrams_are_dropped_and_counted() {
    let (mut sim, hosts) = mesh(11, 2, "room");
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    let p1 = sim.addr(hosts[1]);
    let mut rng = 0x1234_5678_u64;
    for len in 0..300usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        // From the real peer's address: the datagram reaches its Rtc or is dropped and
        // counted; either way it is no error of anyone's but the sender's, and no peer fails.
        let res = sim.inject_datagram(hosts[0], p1, &bytes);
        assert!(res.is_ok(), "{res:?}");
    }
    let drops = sim.participant(hosts[0]).drop_counters();
    assert!(drops.malformed_datagrams > 100, "{drops:?}");
    still_works(&mut sim, &hosts, "after-garbage");
}

#[test]
fn datagram_from_unknown_address_is_dropped_and_counted() {
    let (mut sim, hosts) = mesh(12, 2, "room");
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    let stranger = "127.0.0.99:4000".parse().unwrap();
    // A DTLS-looking record and an RTP-looking packet from a stranger: well-formed enough
    // to parse, but no peer accepts them.
    let mut dtls = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16];
    dtls.extend_from_slice(&[1; 16]);
    let mut rtp = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
    rtp.extend_from_slice(&[0; 20]);
    let before = sim.participant(hosts[0]).drop_counters();
    for bytes in [&dtls, &rtp] {
        sim.inject_datagram(hosts[0], stranger, bytes).unwrap();
    }
    let after = sim.participant(hosts[0]).drop_counters();
    assert_eq!(
        after.unroutable_datagrams - before.unroutable_datagrams,
        2,
        "{after:?}"
    );
    // A STUN request without integrity from a stranger is dropped too.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    sim.inject_datagram(hosts[0], stranger, &stun).unwrap();
    let last = sim.participant(hosts[0]).drop_counters();
    assert_eq!(
        last.unroutable_datagrams + last.malformed_datagrams,
        after.unroutable_datagrams + after.malformed_datagrams + 1,
        "{last:?}"
    );
    still_works(&mut sim, &hosts, "after-stranger");
}

#[test]
fn malformed_sdp_in_an_offer_fails_only_that_peer() {
    let (mut sim, hosts) = mesh(13, 2, "room");
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    // A third peer is announced, then sends a hostile offer.
    let joined = ServerFrame::parse(
        r#"{"jsonrpc":"2.0","method":"peer.joined","params":{"peer_id":"evil","capabilities":{"audio":false,"video":false,"data":true},"metadata":{}}}"#,
    )
    .unwrap();
    sim.inject_signal(hosts[0], joined).unwrap();
    for sdp in ["", "v=0\r\nthis is not sdp", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 300000000000\r\n"] {
        let offer = ServerFrame::Notification(Notification::Offer {
            from: pid("evil"),
            sdp: sdp.into(),
        });
        // The first fails the peer; the later ones name a peer that is gone.
        let err = sim.inject_signal(hosts[0], offer).unwrap_err();
        assert!(
            matches!(err, InputError::BadSdp { .. } | InputError::UnknownPeer(_)),
            "{err}"
        );
    }
    assert!(sim.participant(hosts[0]).drop_counters().bad_signals >= 1);
    assert_eq!(sim.participant(hosts[0]).live_rtc_count(), 1);
    assert!(sim
        .mesh_events(hosts[0])
        .any(|(_, e)| matches!(e, Event::PeerFailed { peer, .. } if peer.as_str() == "evil")));
    still_works(&mut sim, &hosts, "after-bad-sdp");
}

#[test]
fn candidate_for_unknown_peer_and_bad_candidates_are_rejected() {
    let (mut sim, hosts) = mesh(14, 2, "room");
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    let cand = |from: &str, c: &str| {
        ServerFrame::Notification(Notification::IceCandidate {
            from: pid(from),
            candidate: c.into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        })
    };
    let err = sim
        .inject_signal(
            hosts[0],
            cand(
                "ghost",
                "candidate:1 1 udp 2113937151 127.0.0.1 9999 typ host",
            ),
        )
        .unwrap_err();
    assert!(
        matches!(err, InputError::UnknownPeer(ref p) if p.as_str() == "ghost"),
        "{err}"
    );
    let err = sim
        .inject_signal(hosts[0], cand("p1", "candidate:garbage"))
        .unwrap_err();
    assert!(matches!(err, InputError::BadCandidate { .. }), "{err}");
    // A non-loopback candidate is filtered by the test policy, not an error.
    sim.inject_signal(
        hosts[0],
        cand("p1", "candidate:1 1 udp 2113937151 192.0.2.1 9999 typ host"),
    )
    .unwrap();
    assert_eq!(
        sim.participant(hosts[0])
            .peer_stats(&pid("p1"))
            .unwrap()
            .candidates_filtered,
        1
    );
    // An answer from a peer we never offered to.
    let answer = ServerFrame::Notification(Notification::Answer {
        from: pid("nobody"),
        sdp: "v=0".into(),
    });
    assert!(sim.inject_signal(hosts[0], answer).is_err());
    still_works(&mut sim, &hosts, "after-bad-candidates");
}
