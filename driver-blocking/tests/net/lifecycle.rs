//! Joining, leaving and dropping

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use meshrtc::session::JoinError;
use meshrtc::signal::{AnnounceResult, ClientFrame, ErrorCode, Request, ServerFrame};
use meshrtc::LeaveReason;
use meshrtc_blocking::{Error, Event, Session};

use crate::util::*;

fn left(e: &Event, who: &meshrtc::signal::PeerId) -> Option<LeaveReason> {
    match e {
        Event::Mesh(meshrtc::Event::PeerLeft { peer, reason }) if peer == who => Some(*reason),
        _ => None,
    }
}

/// `leave()` sends `peer.disconnect`, closes the peers, ends both threads and frees the
/// socket; dropping the handle does the same
#[test]
fn leave_and_drop_disconnect_and_release_the_socket() {
    let rt = runtime();
    let server = server(&rt);
    let url = server.url();
    let (t, mut t_events) = join_tokio(&rt, &url, "bye", "watcher");

    for (id, by_drop) in [("leaver", false), ("dropper", true)] {
        let who = pid(id);
        let Session {
            handle,
            events,
            capture,
            playout,
        } = join_blocking(&url, "bye", id);
        connected(&events, 1);
        connected_tokio(&rt, &mut t_events, 1);
        let addr = handle.local_addr();
        if by_drop {
            drop(handle);
        } else {
            handle.leave().unwrap();
        }
        // The threads have ended: the rings are abandoned, the event stream ends, the
        // socket is free.
        assert!(capture.is_closed() && playout.is_closed());
        while events.recv().is_some() {}
        UdpSocket::bind(addr).expect("the socket was released");
        let reason = wait_tokio(&rt, &mut t_events, "PeerLeft", |e| left(e, &who));
        assert!(matches!(reason, LeaveReason::Signaled(_)), "{reason:?}");
    }
    // Both left the server too (only the watcher's connection remains).
    let until = std::time::Instant::now() + LIMIT;
    while rt.block_on(server.counts()).unwrap().connections != 1 {
        assert!(std::time::Instant::now() < until, "connections not closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(t.leave()).unwrap();
}

#[test]
fn join_errors_are_typed() {
    let rt = runtime();
    let server = server(&rt);
    let url = server.url();

    let bad = Session::join(blocking_config("http://x/", "r", "e1"));
    assert!(matches!(bad, Err(Error::BadUrl { .. })), "{bad:?}");

    let mut c = blocking_config(&url, "r", "e2");
    c.bind = "0.0.0.0:0".parse().unwrap();
    let unspecified = Session::join(c);
    assert!(
        matches!(unspecified, Err(Error::BadBindAddress(_))),
        "{unspecified:?}"
    );

    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nobody = Session::join(blocking_config(
        &format!("ws://127.0.0.1:{}/", closed.port()),
        "r",
        "e3",
    ));
    assert!(
        matches!(nobody, Err(Error::Join(JoinError::Unreachable(_)))),
        "{nobody:?}"
    );

    let first = join_blocking(&url, "r", "same");
    let second = Session::join(blocking_config(&url, "r", "same"));
    match second {
        Err(Error::Join(JoinError::Rejected(e))) => {
            assert_eq!(e.error_code(), Some(ErrorCode::PeerIdTaken))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The refused session's threads are gone; the first one is unaffected.
    assert!(first.handle.stats().unwrap().signaling_connected);
    assert!(matches!(
        first.events.try_recv(),
        None | Some(Event::Joined { .. } | Event::Mesh(_))
    ));
    first.handle.leave().unwrap();
}

/// Against a bare WebSocket server that records what it gets: the first frame is
/// `peer.announce` with our id and room, and `leave()` sends `peer.disconnect`
#[test]
fn the_wire_sees_announce_then_disconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(LIMIT)).unwrap();
        let mut ws = tungstenite::accept(tcp).unwrap();
        let mut methods = Vec::new();
        loop {
            let text = match ws.read() {
                Ok(tungstenite::Message::Text(t)) => t,
                Ok(_) => continue,
                Err(_) => return methods,
            };
            let frame = ClientFrame::parse(text.as_str()).expect("a valid client frame");
            methods.push(frame.request.method());
            let result = match &frame.request {
                Request::Announce { room, peer_id, .. } => {
                    assert_eq!(room.as_str(), "wire");
                    assert_eq!(peer_id.as_ref().map(|p| p.as_str()), Some("wired"));
                    AnnounceResult::new(peer_id.clone().unwrap(), room.clone(), Vec::new())
                        .to_value()
                }
                _ => serde_json::json!({}),
            };
            let reply = ServerFrame::response_ok(frame.id.clone(), result);
            ws.send(tungstenite::Message::text(reply.to_json()))
                .unwrap();
            if frame.request == Request::Disconnect {
                let _ = ws.close(None);
                while ws.read().is_ok() {}
                return methods;
            }
        }
    });
    let session = join_blocking(&url, "wire", "wired");
    assert_eq!(session.handle.peer_id().as_str(), "wired");
    session.handle.leave().unwrap();
    let methods = server.join().unwrap();
    assert_eq!(methods, vec!["peer.announce", "peer.disconnect"]);
}
