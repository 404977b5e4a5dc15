//! Full meshes over real UDP sockets on loopback

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use meshrtc::signal::PeerId;
use meshrtc::DataMessage;
use meshrtc_tokio::echo::Echo;
use meshrtc_tokio::{Event, Events, SessionHandle};
use tokio::sync::{mpsc, watch};

use crate::util::*;

/// What one mesh peer saw
#[derive(Debug, Default)]
struct Seen {
    connected: BTreeSet<PeerId>,
    /// Peers that echoed our hello back
    echoed_back: BTreeSet<PeerId>,
    /// Every text received, for cross-room checks
    texts: Vec<String>,
    failures: Vec<String>,
}

/// Runs one mesh peer: runs the echo app, says hello to every peer that connects and
/// counts who echoed it back; reports when it heard from `expect` peers, then keeps
/// echoing for the others until `stop`
async fn mesh_peer(
    handle: SessionHandle,
    mut events: Events,
    tag: String,
    expect: usize,
    done: mpsc::UnboundedSender<PeerId>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let me = handle.peer_id().clone();
    let mut echo = Echo::new(me.clone());
    let mut seen = Seen::default();
    let mut reported = false;
    let hello = |to: &PeerId| format!("hello {tag} {me} -> {to}");
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.changed() => break,
        };
        let Some(event) = event else {
            seen.failures.push("event stream ended".into());
            break;
        };
        match &event {
            Event::Mesh(meshrtc::Event::PeerConnected { peer, .. }) => {
                seen.connected.insert(peer.clone());
                handle
                    .send_data(peer, DataMessage::Text(hello(peer)))
                    .await
                    .unwrap();
            }
            Event::Mesh(meshrtc::Event::DataReceived {
                peer,
                message: DataMessage::Text(t),
                ..
            }) => {
                seen.texts.push(t.clone());
                if *t == hello(peer) {
                    // Our own hello came back: do not echo it again.
                    seen.echoed_back.insert(peer.clone());
                    if seen.echoed_back.len() == expect && !reported {
                        reported = true;
                        let _ = done.send(me.clone());
                    }
                    continue;
                }
            }
            Event::Mesh(meshrtc::Event::PeerFailed { peer, reason }) => {
                seen.failures.push(format!("{peer} failed: {reason:?}"));
            }
            Event::SendFailed { peer, error } => {
                seen.failures
                    .push(format!("send to {peer:?} failed: {error}"));
            }
            _ => {}
        }
        if let Event::Mesh(event) = &event {
            for (peer, msg) in echo.handle_event(Instant::now(), event) {
                handle.send_data(&peer, msg).await.unwrap();
            }
        }
    }
    handle.leave().await.unwrap();
    seen
}

/// Starts `rooms` rooms of `n` peers each on one server, waits until every peer had its
/// hello echoed by every other peer of its room, and returns what each saw
async fn run_mesh(rooms: &[&str], n: usize) -> Vec<(String, PeerId, Seen)> {
    let server = server().await;
    let url = server.url();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for room in rooms {
        for i in 0..n {
            // The same ids in every room: rooms must keep them apart.
            let id = format!("p{i}");
            let (handle, events) = join(&url, room, &id).await;
            let tag = room.to_string();
            let task = tokio::spawn(mesh_peer(
                handle,
                events,
                tag,
                n - 1,
                done_tx.clone(),
                stop_rx.clone(),
            ));
            tasks.push((room.to_string(), pid(&id), task));
        }
    }
    let total = rooms.len() * n;
    for _ in 0..total {
        tokio::time::timeout(Duration::from_secs(20), done_rx.recv())
            .await
            .expect("not every peer had its hello echoed by all the others within 20 s");
    }
    eprintln!(
        "{} room(s) of {n}: every pair connected and echoed in {:?}",
        rooms.len(),
        started.elapsed()
    );
    stop_tx.send(true).unwrap();
    let mut out = Vec::new();
    for (room, id, task) in tasks {
        out.push((room, id, task.await.unwrap()));
    }
    counts_until(&server, Duration::from_secs(5), |c| {
        c.rooms == 0 && c.connections == 0
    })
    .await;
    out
}

fn check_full_mesh(results: &[(String, PeerId, Seen)], n: usize) {
    for (room, me, seen) in results {
        assert!(seen.failures.is_empty(), "{room}/{me}: {:?}", seen.failures);
        let others: BTreeSet<PeerId> = (0..n)
            .map(|i| pid(&format!("p{i}")))
            .filter(|p| p != me)
            .collect();
        assert_eq!(seen.connected, others, "{room}/{me} connected to");
        assert_eq!(seen.echoed_back, others, "{room}/{me} got echoes from");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_connect_and_echo() {
    bounded(async {
        let results = run_mesh(&["pair"], 2).await;
        check_full_mesh(&results, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_peers_full_mesh() {
    bounded(async {
        let results = run_mesh(&["four"], 4).await;
        check_full_mesh(&results, 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_peers_full_mesh() {
    bounded(async {
        let results = run_mesh(&["ten"], 10).await;
        check_full_mesh(&results, 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_never_mix() {
    bounded(async {
        let results = run_mesh(&["red", "blue"], 3).await;
        check_full_mesh(&results, 3);
        for (room, me, seen) in &results {
            assert!(!seen.texts.is_empty());
            for t in &seen.texts {
                // Hellos carry their room; pings carry no room but only come from
                // connected peers, which were checked to be this room's.
                if t.starts_with("hello") {
                    assert!(
                        t.starts_with(&format!("hello {room} ")),
                        "{room}/{me} got {t}"
                    );
                }
            }
        }
    })
    .await;
}
