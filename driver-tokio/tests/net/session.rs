//! The session API: leaving, dropping, losing signaling, errors, stats, back-pressure, clocks

use std::time::{Duration, Instant};

use meshrtc::clock::{Clock, SharedClock};
use meshrtc::session::JoinError;
use meshrtc::signal::ErrorCode;
use meshrtc::{DataMessage, LeaveReason};
use meshrtc_tokio::{Error, Event, Events, Session, SessionHandle};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(15);

async fn pair(url: &str, room: &str) -> ((SessionHandle, Events), (SessionHandle, Events)) {
    let (a, mut a_events) = join(url, room, "alice").await;
    let (b, mut b_events) = join(url, room, "bob").await;
    assert_eq!(wait_for(&mut a_events, LIMIT, connected).await, pid("bob"));
    assert_eq!(
        wait_for(&mut b_events, LIMIT, connected).await,
        pid("alice")
    );
    ((a, a_events), (b, b_events))
}

fn data_from(e: &Event) -> Option<(meshrtc::signal::PeerId, DataMessage)> {
    match e {
        Event::Mesh(meshrtc::Event::DataReceived { peer, message, .. }) => {
            Some((peer.clone(), message.clone()))
        }
        _ => None,
    }
}

fn left(e: &Event) -> Option<(meshrtc::signal::PeerId, LeaveReason)> {
    match e {
        Event::Mesh(meshrtc::Event::PeerLeft { peer, reason }) => Some((peer.clone(), *reason)),
        _ => None,
    }
}

async fn stream_ends(events: &mut Events) {
    tokio::time::timeout(LIMIT, async { while events.recv().await.is_some() {} })
        .await
        .expect("the event stream ends when the session ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_releases_the_socket_and_tells_the_room() {
    bounded(async {
        let server = server().await;
        let ((a, mut a_events), (_b, mut b_events)) = pair(&server.url(), "leave").await;
        let addr = a.local_addr();
        a.leave().await.unwrap();
        // The socket is closed by the time leave returns.
        std::net::UdpSocket::bind(addr).expect("the session's port is free again");
        let (peer, _) = wait_for(&mut b_events, LIMIT, left).await;
        assert_eq!(peer, pid("alice"));
        stream_ends(&mut a_events).await;
        counts_until(&server, LIMIT, |c| c.rooms == 1 && c.connections == 1).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_leaves() {
    bounded(async {
        let server = server().await;
        let ((a, mut a_events), (_b, mut b_events)) = pair(&server.url(), "drop").await;
        drop(a);
        let (peer, _) = wait_for(&mut b_events, LIMIT, left).await;
        assert_eq!(peer, pid("alice"));
        stream_ends(&mut a_events).await;
        counts_until(&server, LIMIT, |c| c.connections == 1).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_signaling_is_an_event_and_peers_keep_talking() {
    bounded(async {
        let server = server().await;
        let ((a, mut a_events), (b, mut b_events)) = pair(&server.url(), "lost").await;
        server.shutdown().await;
        for events in [&mut a_events, &mut b_events] {
            wait_for(events, LIMIT, |e| {
                matches!(e, Event::SignalingLost { .. }).then_some(())
            })
            .await;
        }
        assert!(!a.stats().await.unwrap().signaling_connected);
        a.send_data(&pid("bob"), DataMessage::Binary(vec![1, 2, 3]))
            .await
            .unwrap();
        let (from, msg) = wait_for(&mut b_events, LIMIT, data_from).await;
        assert_eq!(
            (from, msg),
            (pid("alice"), DataMessage::Binary(vec![1, 2, 3]))
        );
        a.leave().await.unwrap();
        b.leave().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_errors_are_typed() {
    bounded(async {
        let server = server().await;
        let url = server.url();

        let err = Session::join(config("http://127.0.0.1:1/", "r", "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BadUrl { .. }), "{err}");

        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("ws://{}/", free.local_addr().unwrap());
        drop(free);
        let err = Session::join(config(&closed, "r", "x")).await.unwrap_err();
        assert!(
            matches!(err, Error::Join(JoinError::Unreachable(_))),
            "{err}"
        );

        // The wildcard serves every interface; a multicast address is no host candidate.
        let mut c = config(&url, "r", "wild");
        c.bind = "0.0.0.0:0".parse().unwrap();
        let (wild, _events) = Session::join(c).await.expect("the wildcard binds");
        assert!(wild.local_addr().ip().is_unspecified());
        wild.leave().await.unwrap();
        let mut c = config(&url, "r", "x");
        c.bind = "224.0.0.1:0".parse().unwrap();
        let err = Session::join(c).await.unwrap_err();
        assert!(matches!(err, Error::BadBindAddress(_)), "{err}");

        let (_x, _x_events) = join(&url, "r", "x").await;
        let err = Session::join(config(&url, "r", "x")).await.unwrap_err();
        let Error::Join(JoinError::Rejected(rpc)) = &err else {
            panic!("expected a rejection, got {err}");
        };
        assert_eq!(rpc.error_code(), Some(ErrorCode::PeerIdTaken));

        // The refused session left nothing behind on the server.
        counts_until(&server, LIMIT, |c| c.connections == 1).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_peer_is_reported_not_fatal() {
    bounded(async {
        let server = server().await;
        let (a, mut a_events) = join(&server.url(), "r", "alice").await;
        a.send_data(&pid("nobody"), DataMessage::Text("?".into()))
            .await
            .unwrap();
        let failed = wait_for(&mut a_events, LIMIT, |e| match e {
            Event::SendFailed { peer, .. } => Some(peer.clone()),
            _ => None,
        })
        .await;
        assert_eq!(failed, Some(pid("nobody")));
        assert!(a.stats().await.unwrap().peers.is_empty());
        let too_big = DataMessage::Binary(vec![0; meshrtc::MAX_DATA_MESSAGE + 1]);
        assert!(a.send_data(&pid("nobody"), too_big).await.is_err());
        a.leave().await.unwrap();
    })
    .await;
}

/// Alice sends `count` numbered 1 KiB messages to Bob with her core's send queue limited to
/// `max_queued` messages and her command channel to `command_queue`; Bob must get them all,
/// in order
async fn bulk(room: &str, count: usize, max_queued: usize, command_queue: usize) {
    let server = server().await;
    let url = server.url();
    let mut config = config(&url, room, "alice");
    config.session.participant.max_queued_messages = max_queued;
    config.command_queue = command_queue;
    let (a, mut a_events) = Session::join(config).await.unwrap();
    let (b, mut b_events) = join(&url, room, "bob").await;
    wait_for(&mut a_events, LIMIT, connected).await;
    wait_for(&mut b_events, LIMIT, connected).await;
    let started = Instant::now();
    let sender = tokio::spawn({
        let a = a.clone();
        async move {
            for i in 0..count {
                let mut payload = vec![(i % 251) as u8; 1024];
                payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
                a.send_data(&pid("bob"), DataMessage::Binary(payload))
                    .await
                    .unwrap();
            }
        }
    });
    for i in 0..count {
        let (_, msg) = wait_for(&mut b_events, LIMIT, data_from).await;
        let DataMessage::Binary(bytes) = msg else {
            panic!("binary expected");
        };
        assert_eq!(bytes.len(), 1024);
        assert_eq!(u64::from_be_bytes(bytes[..8].try_into().unwrap()), i as u64);
    }
    sender.await.unwrap();
    eprintln!("{count} x 1 KiB in {:?}", started.elapsed());
    let a_stats = a.stats().await.unwrap();
    let b_stats = b.stats().await.unwrap();
    assert_eq!(a_stats.peers[&pid("bob")].messages_sent, count as u64);
    assert_eq!(b_stats.peers[&pid("alice")].messages_received, count as u64);
    assert!(a_stats.peers[&pid("bob")].connected);
    // Nothing was refused for a full queue: the sender waited instead.
    while let Some(e) = a_events.try_recv() {
        assert!(!matches!(e, Event::SendFailed { .. }), "{e:?}");
    }
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_arrives_complete_and_in_order() {
    bounded(bulk("bulk", 5000, 4096, 1024)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_send_queue_makes_the_sender_wait_and_loses_nothing() {
    // Queues far smaller than the run: the driver stops taking commands while the core's
    // queue is full and resumes as it drains, again and again.
    bounded(bulk("tiny-queues", 3000, 16, 4)).await;
    bounded(bulk("batch-sized-queue", 3000, 64, 64)).await;
}

/// A clock an hour ahead of tokio's
struct Shifted;

impl Clock for Shifted {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std() + Duration::from_secs(3600)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_on_any_clock() {
    bounded(async {
        let server = server().await;
        let url = server.url();
        let mut c = config(&url, "clock", "alice");
        c.clock = Some(SharedClock::new(Shifted));
        let (a, mut a_events) = Session::join(c).await.unwrap();
        let (b, mut b_events) = join(&url, "clock", "bob").await;
        assert_eq!(wait_for(&mut a_events, LIMIT, connected).await, pid("bob"));
        assert_eq!(
            wait_for(&mut b_events, LIMIT, connected).await,
            pid("alice")
        );
        b.send_data(&pid("alice"), DataMessage::Text("tick".into()))
            .await
            .unwrap();
        let (_, msg) = wait_for(&mut a_events, LIMIT, data_from).await;
        assert_eq!(msg, DataMessage::Text("tick".into()));
        a.leave().await.unwrap();
        b.leave().await.unwrap();
    })
    .await;
}
