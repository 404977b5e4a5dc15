//! The signaling server goes away mid-session and comes back

use std::time::Duration;

use meshrtc::DataMessage;
use meshrtc_blocking::Event;

use crate::util::*;

fn is_loss_of(e: &Event, peer: &meshrtc::signal::PeerId) -> bool {
    matches!(
        e,
        Event::Mesh(
            meshrtc::Event::PeerLeft { peer: p, .. } | meshrtc::Event::PeerFailed { peer: p, .. }
        ) if p == peer
    )
}

/// Established peers keep audio and data flowing while the server is down; each driver
/// reports the loss, reconnects when the server returns, re-announces without touching its
/// connections, and a peer joining afterwards reaches both
#[test]
fn signaling_outage_keeps_media_and_reconnects() {
    let rt = runtime();
    let server = server(&rt);
    let addr = server.local_addr();
    let url = server.url();
    let (a_id, b_id, c_id) = (pid("oa"), pid("ob"), pid("oc"));

    let a = join_blocking(&url, "outage", "oa");
    let b = join_blocking(&url, "outage", "ob");
    assert_eq!(connected(&a.events, 1), vec![b_id.clone()]);
    assert_eq!(connected(&b.events, 1), vec![a_id.clone()]);
    let a_audio = AudioLoop::start(a.capture, a.playout);
    let b_audio = AudioLoop::start(b.capture, b.playout);
    let mut a_idx = Indices::default();
    let mut b_idx = Indices::default();
    let b_at_a = a_idx.wait(&a.events, &b_id, |_| {});
    let a_at_b = b_idx.wait(&b.events, &a_id, |_| {});
    a_audio.wait_audible(b_at_a, 0, 20, "a hears b before the outage");
    b_audio.wait_audible(a_at_b, 0, 20, "b hears a before the outage");

    // The server goes away.
    rt.block_on(server.shutdown());
    for (handle, events) in [(&a.handle, &a.events), (&b.handle, &b.events)] {
        wait_for(events, "SignalingLost", |e| {
            assert!(!is_loss_of(e, &a_id) && !is_loss_of(e, &b_id), "{e:?}");
            matches!(e, Event::SignalingLost { .. }).then_some(())
        });
        assert!(!handle.stats().unwrap().signaling_connected);
    }

    // Media keeps flowing without it: half a second of audio each way, and data.
    let a_before = a_audio.audible(b_at_a);
    let b_before = b_audio.audible(a_at_b);
    a_audio.wait_audible(b_at_a, a_before, 50, "a hears b during the outage");
    b_audio.wait_audible(a_at_b, b_before, 50, "b hears a during the outage");
    a.handle
        .send_data(&b_id, DataMessage::Text("still here".into()))
        .unwrap();
    let got = wait_for(&b.events, "data during the outage", |e| match e {
        Event::Mesh(meshrtc::Event::DataReceived { message, .. }) => Some(message.clone()),
        _ => None,
    });
    assert_eq!(got, DataMessage::Text("still here".into()));
    // Still down: nothing has been restored behind our back.
    std::thread::sleep(Duration::from_millis(200));

    // The server returns on the same address; both drivers reconnect and re-announce.
    let server = server_at(&rt, addr);
    for (handle, events, other) in [(&a.handle, &a.events, &b_id), (&b.handle, &b.events, &a_id)] {
        let peers = wait_for(events, "SignalingRestored", |e| {
            assert!(!is_loss_of(e, &a_id) && !is_loss_of(e, &b_id), "{e:?}");
            match e {
                Event::SignalingRestored { peers, .. } => Some(peers.clone()),
                _ => None,
            }
        });
        assert!(peers.iter().all(|p| p.peer_id == *other), "{peers:?}");
        assert!(handle.stats().unwrap().signaling_connected);
    }
    let rooms = rt.block_on(server.counts()).unwrap();
    assert_eq!((rooms.rooms, rooms.connections), (1, 2));

    // A newcomer reaches both through the new server; the old connection is untouched.
    let (c, mut c_events) = join_tokio(&rt, &server.url(), "outage", "oc");
    let mut c_peers = connected_tokio(&rt, &mut c_events, 2);
    c_peers.sort();
    assert_eq!(c_peers, vec![a_id.clone(), b_id.clone()]);
    for events in [&a.events, &b.events] {
        wait_for(events, "PeerConnected from the newcomer", |e| {
            assert!(!is_loss_of(e, &a_id) && !is_loss_of(e, &b_id), "{e:?}");
            match e {
                Event::Mesh(meshrtc::Event::PeerConnected { peer, .. }) => {
                    (*peer == c_id).then_some(())
                }
                _ => None,
            }
        });
    }
    let a_now = a_audio.audible(b_at_a);
    a_audio.wait_audible(b_at_a, a_now, 20, "a still hears b after the outage");
    tokio_hears(&rt, &mut c_events, &a_id, 20);

    drop(a_audio);
    drop(b_audio);
    rt.block_on(c.leave()).unwrap();
    a.handle.leave().unwrap();
    b.handle.leave().unwrap();
}
