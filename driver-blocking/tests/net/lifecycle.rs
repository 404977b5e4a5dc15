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

/// A clean leave while frames from the server keep coming (in a room, a peer that saw our
/// DTLS close offers again at once): the room hears `peer.left` with reason `"disconnect"`
/// at once, never `"timeout"` after the resume grace
///
/// The blocking driver once closed its WebSocket without the queued `peer.disconnect` when
/// a server frame arrived just after its core thread had ended, so the server held its
/// place (the Chromium three-party room saw it 2 runs in 3). Here a bare client in the
/// room sends the leaver a relayed candidate every millisecond around each leave, which
/// made the old driver lose its `peer.disconnect` in nearly every round.
#[test]
fn a_leave_while_frames_arrive_is_told_to_the_room_at_once() {
    use std::net::TcpStream;
    use tungstenite::stream::MaybeTlsStream;
    use tungstenite::{Message, WebSocket};

    type Ws = WebSocket<MaybeTlsStream<TcpStream>>;
    const ROUNDS: usize = 6;

    let rt = runtime();
    let mut config = meshrtc_tokio::SignalServerConfig::default();
    // Let the flood through: the limits are not what this test is about.
    let rooms = &mut config.rooms;
    rooms.rate_limit_per_sec = 100_000;
    rooms.rate_limit_burst = 100_000;
    rooms.rate_limit_bytes_per_sec = 100 << 20;
    rooms.rate_limit_bytes_burst = 100 << 20;
    rooms.relay_bytes_per_sec = 100 << 20;
    rooms.relay_bytes_burst = 100 << 20;
    config.read_frames_per_sec = 1_000_000;
    config.read_bytes_per_sec = 1 << 30;
    let server = rt
        .block_on(meshrtc_tokio::SignalServer::bind_with(
            "127.0.0.1:0".parse().unwrap(),
            config,
        ))
        .unwrap();
    let url = server.url();

    let (mut ws, _) = tungstenite::connect(url.as_str()).unwrap();
    fn send(ws: &mut Ws, id: u64, method: &str, params: serde_json::Value) {
        let frame =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        ws.send(Message::text(frame.to_string())).unwrap();
    }
    /// The next text frame, if one comes within the socket's read timeout
    fn next(ws: &mut Ws) -> Option<serde_json::Value> {
        match ws.read() {
            Ok(Message::Text(t)) => Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("flooder: {e}"),
        }
    }
    send(
        &mut ws,
        1,
        "peer.announce",
        serde_json::json!({"room": "flood", "peer_id": "flooder"}),
    );
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
    }
    let mut id = 2;
    for round in 0..ROUNDS {
        let name = format!("leaver{round}");
        let session = join_blocking(&url, "flood", &name);
        // The leaver offered to us (we are in its announce result); we never answer. Its
        // candidate policy (loopback only) drops these candidates at once.
        let leaving = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            session.handle.leave().unwrap();
        });
        let until = std::time::Instant::now() + LIMIT;
        let reason = loop {
            assert!(
                std::time::Instant::now() < until,
                "{name}: no peer.left within {LIMIT:?}"
            );
            let params = serde_json::json!({
                "to": name,
                "candidate": "candidate:1 1 udp 2130706431 192.0.2.1 9 typ host",
                "sdp_mid": "0",
                "sdp_m_line_index": 0,
            });
            send(&mut ws, id, "peer.ice_candidate", params);
            id += 1;
            let Some(frame) = next(&mut ws) else { continue };
            if frame["method"] == "peer.left" && frame["params"]["peer_id"] == name.as_str() {
                break frame["params"]["reason"].clone();
            }
        };
        leaving.join().unwrap();
        assert_eq!(reason, "disconnect", "{name} (round {round})");
    }
}
