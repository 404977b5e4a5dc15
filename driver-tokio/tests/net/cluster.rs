//! Signaling nodes that share rooms through a real `redis-server`
//!
//! Each test starts its own `redis-server` on 127.0.0.1 and a free port, persistence off.
//! Without `redis-server` installed the tests skip with a message, unless `CI` is set, where
//! they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshrtc::signal::{Capabilities, NodeId, PeerId};
use meshrtc::{DataMessage, LeaveReason};
use meshrtc_tokio::echo::Echo;
use meshrtc_tokio::{
    Event, Events, RedisConfig, Session, SessionHandle, SignalServer, SignalServerConfig,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::util::*;

/// A `redis-server` of this test's own, killed when dropped
pub struct Redis {
    child: Option<Child>,
    port: u16,
    /// `redis://127.0.0.1:PORT`
    pub url: String,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Redis {
    /// Starts one; `None` (after saying why) when `redis-server` is missing and `CI` unset
    pub fn start() -> Option<Self> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is missing (scripts/setup.sh installs it) and CI is set"
            );
            eprintln!("SKIPPED: redis-server not installed (run scripts/setup.sh)");
            return None;
        }
        let port = free_port();
        let mut redis = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        redis.spawn();
        Some(redis)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pings(&self) -> bool {
        self.command(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one command in RESP and returns the raw reply (first read)
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// An integer reply (`HLEN`, ...)
    pub fn int(&self, args: &[&str]) -> Option<i64> {
        let r = self.command(args)?;
        r.strip_prefix(':')?.trim().parse().ok()
    }

    /// Kills it at once (SIGKILL: nothing is saved, persistence is off anyway)
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and starts an empty one on the same port
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

macro_rules! redis_or_skip {
    () => {
        match Redis::start() {
            Some(r) => r,
            None => return,
        }
    };
}

/// A node sharing `redis`'s rooms, with a test's room limit
async fn node(redis: &Redis, name: &str, max_peers: usize) -> SignalServer {
    let mut config = SignalServerConfig::default();
    config.rooms.max_peers_per_room = max_peers;
    config.redis = Some(RedisConfig::new(
        redis.url.clone(),
        NodeId::new(name).unwrap(),
    ));
    server_with(config).await
}

async fn nodes(redis: &Redis, n: usize, max_peers: usize) -> Vec<SignalServer> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(node(redis, &format!("n{i}"), max_peers).await);
    }
    out
}

/// What one mesh peer saw, shared with the test while it runs
#[derive(Debug, Default)]
struct Seen {
    connected: BTreeSet<PeerId>,
    echoed_back: BTreeSet<PeerId>,
    texts: Vec<String>,
    /// Decoded (not concealed) 10 ms audio chunks per peer
    audio: BTreeMap<PeerId, u64>,
    /// Longest wait between two audio chunks of a peer (once it started)
    audio_gap: BTreeMap<PeerId, Duration>,
    last_audio: BTreeMap<PeerId, Instant>,
    left: Vec<(PeerId, LeaveReason)>,
    failures: Vec<String>,
    lost: u32,
    /// When signaling came back, and whether the server still held our place
    restored: Vec<(Instant, bool)>,
}

type Shared = Arc<Mutex<Seen>>;

fn audio_config(url: &str, room: &str, id: &str, audio: bool) -> meshrtc_tokio::SessionConfig {
    let mut c = config(url, room, id);
    c.session.participant.capabilities = Capabilities {
        audio,
        video: false,
        data: true,
    };
    if audio {
        c.session.test_media = Some(meshrtc::session::TestMedia {
            audio: true,
            video: None,
        });
    }
    // Come back quickly after a node dies.
    c.session.reconnect.initial = Duration::from_millis(200);
    c.session.reconnect.max = Duration::from_secs(1);
    c
}

/// Runs one peer: echoes, says hello to each peer it connects to, counts audio
async fn mesh_peer(
    handle: SessionHandle,
    mut events: Events,
    tag: String,
    seen: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let me = handle.peer_id().clone();
    let mut echo = Echo::new(me.clone());
    let hello = |to: &PeerId| format!("hello {tag} {me} -> {to}");
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.changed() => break,
        };
        let Some(event) = event else {
            seen.lock()
                .unwrap()
                .failures
                .push("event stream ended".into());
            break;
        };
        let now = Instant::now();
        match &event {
            Event::Mesh(meshrtc::Event::PeerConnected { peer, .. }) => {
                seen.lock().unwrap().connected.insert(peer.clone());
                let _ = handle.send_data(peer, DataMessage::Text(hello(peer))).await;
            }
            Event::Mesh(meshrtc::Event::DataReceived {
                peer,
                message: DataMessage::Text(t),
                ..
            }) => {
                let mut s = seen.lock().unwrap();
                s.texts.push(t.clone());
                if *t == hello(peer) {
                    s.echoed_back.insert(peer.clone());
                    continue;
                }
            }
            Event::Mesh(meshrtc::Event::AudioPlayout { peer, chunk }) if !chunk.concealed => {
                let mut s = seen.lock().unwrap();
                *s.audio.entry(peer.clone()).or_default() += 1;
                if let Some(last) = s.last_audio.insert(peer.clone(), now) {
                    let gap = now - last;
                    let max = s.audio_gap.entry(peer.clone()).or_default();
                    *max = (*max).max(gap);
                }
            }
            Event::Mesh(meshrtc::Event::PeerLeft { peer, reason }) => {
                seen.lock().unwrap().left.push((peer.clone(), *reason));
            }
            Event::Mesh(meshrtc::Event::PeerFailed { peer, reason }) => {
                let f = format!("{peer} failed: {reason:?}");
                seen.lock().unwrap().failures.push(f);
            }
            Event::SignalingLost { .. } => seen.lock().unwrap().lost += 1,
            Event::SignalingRestored { resumed, .. } => {
                seen.lock().unwrap().restored.push((now, *resumed));
            }
            Event::RejoinFailed { error } => {
                let f = format!("rejoin failed: {error:?}");
                seen.lock().unwrap().failures.push(f);
            }
            _ => {}
        }
        if let Event::Mesh(event) = &event {
            for (peer, msg) in echo.handle_event(now, event) {
                let _ = handle.send_data(&peer, msg).await;
            }
        }
    }
    let _ = handle.leave().await;
}

struct Mesh {
    peers: Vec<(String, PeerId, Shared)>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Mesh {
    fn new() -> Self {
        Self {
            peers: Vec::new(),
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    async fn add(&mut self, url: &str, room: &str, id: &str, audio: bool) {
        let (handle, events) = Session::join(audio_config(url, room, id, audio))
            .await
            .unwrap_or_else(|e| panic!("{id} could not join {room} at {url}: {e}"));
        let seen = Shared::default();
        self.tasks.push(tokio::spawn(mesh_peer(
            handle,
            events,
            room.to_string(),
            seen.clone(),
            self.stop.subscribe(),
        )));
        self.peers.push((room.to_string(), pid(id), seen));
    }

    /// The other peers of `room` than `me`
    fn others(&self, room: &str, me: &PeerId) -> BTreeSet<PeerId> {
        self.peers
            .iter()
            .filter(|(r, p, _)| r == room && p != me)
            .map(|(_, p, _)| p.clone())
            .collect()
    }

    /// Waits until every peer had its hello echoed by every other of its room and (when
    /// `audio_chunks` > 0) decoded that much audio from each
    async fn wait_complete(&self, limit: Duration, audio_chunks: u64) {
        let deadline = Instant::now() + limit;
        loop {
            let missing: Vec<String> = self
                .peers
                .iter()
                .filter_map(|(room, me, seen)| {
                    let others = self.others(room, me);
                    let s = seen.lock().unwrap();
                    let audio_ok = audio_chunks == 0
                        || others
                            .iter()
                            .all(|p| s.audio.get(p).copied().unwrap_or(0) >= audio_chunks);
                    (s.echoed_back != others || !audio_ok).then(|| {
                        format!(
                            "{room}/{me}: echoed {:?} audio {:?}",
                            s.echoed_back, s.audio
                        )
                    })
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mesh not complete within {limit:?}: {missing:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Audio chunks decoded per (listener, speaker)
    fn audio_counts(&self) -> BTreeMap<(PeerId, PeerId), u64> {
        let mut out = BTreeMap::new();
        for (_, me, seen) in &self.peers {
            for (p, n) in &seen.lock().unwrap().audio {
                out.insert((me.clone(), p.clone()), *n);
            }
        }
        out
    }

    async fn stop(self) -> Vec<(String, PeerId, Shared)> {
        // Peers leaving now, one after the other, is the end of the test, not a finding.
        let left_before: Vec<usize> = self
            .peers
            .iter()
            .map(|(_, _, s)| s.lock().unwrap().left.len())
            .collect();
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await.unwrap();
        }
        for ((_, _, s), n) in self.peers.iter().zip(left_before) {
            s.lock().unwrap().left.truncate(n);
        }
        self.peers
    }
}

fn check_mesh(peers: &[(String, PeerId, Shared)]) {
    for (room, me, seen) in peers {
        let s = seen.lock().unwrap();
        let others: BTreeSet<PeerId> = peers
            .iter()
            .filter(|(r, p, _)| r == room && p != me)
            .map(|(_, p, _)| p.clone())
            .collect();
        assert!(s.failures.is_empty(), "{room}/{me}: {:?}", s.failures);
        assert!(
            s.left.is_empty(),
            "{room}/{me} saw peers leave: {:?}",
            s.left
        );
        assert_eq!(s.connected, others, "{room}/{me} connected to");
        for t in &s.texts {
            if t.starts_with("hello") {
                assert!(
                    t.starts_with(&format!("hello {room} ")),
                    "{room}/{me} got {t}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ten_peers_on_three_nodes_form_a_full_mesh_with_data_and_audio() {
    let redis = redis_or_skip!();
    bounded(async {
        let nodes = nodes(&redis, 3, 10).await;
        let started = Instant::now();
        let mut mesh = Mesh::new();
        for i in 0..10 {
            let url = nodes[i % 3].url();
            mesh.add(&url, "ten", &format!("p{i}"), true).await;
        }
        // 30 chunks: 300 ms of decoded audio from every other peer.
        mesh.wait_complete(Duration::from_secs(30), 30).await;
        eprintln!(
            "10 peers on 3 nodes: full mesh, data and audio in {:?}",
            started.elapsed()
        );
        let peers = mesh.stop().await;
        check_mesh(&peers);
        for n in &nodes {
            counts_until(n, Duration::from_secs(5), |c| c.rooms == 0 && c.peers == 0).await;
        }
        // The nodes release their places in Redis a pipeline after their own counts drop.
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis.int(&["EXISTS", "meshrtc:room:ten"]) != Some(0) {
            assert!(
                Instant::now() < deadline,
                "room still in Redis 5 s after everyone left"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_rooms_on_the_same_nodes_never_mix() {
    let redis = redis_or_skip!();
    bounded(async {
        let nodes = nodes(&redis, 3, 10).await;
        let mut mesh = Mesh::new();
        for (r, room) in ["red", "blue"].into_iter().enumerate() {
            for i in 0..3 {
                // The same ids in both rooms, each on another node than its twin.
                let url = nodes[(i + r) % 3].url();
                mesh.add(&url, room, &format!("p{i}"), false).await;
            }
        }
        mesh.wait_complete(Duration::from_secs(20), 0).await;
        let peers = mesh.stop().await;
        check_mesh(&peers);
        for (_, _, seen) in &peers {
            assert!(!seen.lock().unwrap().texts.is_empty());
        }
    })
    .await;
}

/// A raw client on `server`
async fn raw(server: &SignalServer) -> Raw {
    Raw::connect(server).await
}

/// Reads frames until one answers request `id`
async fn response(c: &mut Raw, id: i64) -> Value {
    loop {
        let v = c.expect().await;
        if v["id"] == json!(id) {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_relays_notifications_and_errors_across_nodes() {
    let redis = redis_or_skip!();
    bounded(async {
        let nodes = nodes(&redis, 3, 3).await;
        let mut alice = raw(&nodes[0]).await;
        let r = alice.announce(1, "x", Some("alice")).await;
        assert_eq!(r["peers"], json!([]), "{r}");
        let mut bob = raw(&nodes[1]).await;
        let r = bob.announce(1, "x", Some("bob")).await;
        assert_eq!(r["peers"][0]["peer_id"], "alice", "{r}");
        let v = alice.expect().await;
        assert_eq!(v["method"], "peer.joined", "{v}");
        assert_eq!(v["params"]["peer_id"], "bob", "{v}");

        // Offer, answer and candidates cross nodes verbatim, with `from`.
        bob.request(
            2,
            "peer.offer",
            json!({"to": "alice", "sdp": "v=0 bob\r\n"}),
        )
        .await;
        assert_eq!(response(&mut bob, 2).await["result"], json!({}));
        let v = alice.expect().await;
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "method": "peer.offer",
                   "params": {"from": "bob", "sdp": "v=0 bob\r\n"}})
        );
        alice
            .request(2, "peer.answer", json!({"to": "bob", "sdp": "v=0 alice"}))
            .await;
        assert_eq!(response(&mut alice, 2).await["result"], json!({}));
        let v = bob.expect().await;
        assert_eq!(v["method"], "peer.answer", "{v}");
        assert_eq!(v["params"]["from"], "alice", "{v}");
        let cand = json!({"to": "bob", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                          "sdp_mid": "0", "sdp_m_line_index": 0});
        alice.request(3, "peer.ice_candidate", cand).await;
        assert_eq!(response(&mut alice, 3).await["result"], json!({}));
        let v = bob.expect().await;
        assert_eq!(
            v["params"]["candidate"],
            "candidate:1 1 udp 1 127.0.0.1 9 typ host"
        );
        assert_eq!(v["params"]["sdp_m_line_index"], 0);

        // Errors hold room-wide: id taken on a third node, unknown target, room full.
        let mut other = raw(&nodes[2]).await;
        other
            .request(1, "peer.announce", json!({"room": "x", "peer_id": "alice"}))
            .await;
        other.expect_error(-32002, json!(1)).await;
        other
            .request(2, "peer.offer", json!({"to": "bob", "sdp": "x"}))
            .await;
        other.expect_error(-32000, json!(2)).await;
        let r = other.announce(3, "x", Some("carol")).await;
        let listed: Vec<&str> = r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, ["alice", "bob"]);
        other
            .request(4, "peer.offer", json!({"to": "dave", "sdp": "x"}))
            .await;
        other.expect_error(-32003, json!(4)).await;
        let mut dave = raw(&nodes[1]).await;
        dave.request(1, "peer.announce", json!({"room": "x", "peer_id": "dave"}))
            .await;
        dave.expect_error(-32001, json!(1)).await;
        for c in [&mut alice, &mut bob] {
            let v = c.expect().await;
            assert_eq!(v["method"], "peer.joined", "{v}");
            assert_eq!(v["params"]["peer_id"], "carol", "{v}");
        }
        // Another room with the same ids is another room.
        let r = dave.announce(2, "y", Some("alice")).await;
        assert_eq!(r["peers"], json!([]), "{r}");

        // A clean leave on one node is `peer.left` with reason disconnect on the others.
        bob.request(9, "peer.disconnect", json!({})).await;
        assert_eq!(response(&mut bob, 9).await["result"], json!({}));
        for c in [&mut alice, &mut other] {
            let v = c.expect().await;
            assert_eq!(
                v["params"],
                json!({"peer_id": "bob", "reason": "disconnect"}),
                "{v}"
            );
        }
        // Its place is free again, on any node.
        let mut bob2 = raw(&nodes[2]).await;
        let r = bob2.announce(1, "x", Some("bob")).await;
        assert_eq!(r["peers"].as_array().unwrap().len(), 2, "{r}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_room_limit_and_ids_hold_when_nodes_announce_at_once() {
    let redis = redis_or_skip!();
    bounded(async {
        const LIMIT: usize = 4;
        const TRIES: usize = 30;
        let nodes = nodes(&redis, 3, LIMIT).await;
        for attempt in 0..TRIES {
            // Nine clients, three per node, announce into one fresh room at the same moment;
            // every other try they all ask for the same id.
            let room = format!("race{attempt}");
            let same_id = attempt % 2 == 1;
            let mut clients = Vec::new();
            for i in 0..9 {
                clients.push(raw(&nodes[i % 3]).await);
            }
            let sends = clients.iter_mut().enumerate().map(|(i, c)| {
                let id = if same_id {
                    "same".to_string()
                } else {
                    format!("p{i}")
                };
                let room = room.clone();
                async move {
                    c.request(1, "peer.announce", json!({"room": room, "peer_id": id}))
                        .await;
                }
            });
            futures_util::future::join_all(sends).await;
            let mut won = Vec::new();
            let mut listed = Vec::new();
            for c in &mut clients {
                let v = response(c, 1).await;
                if let Some(r) = v.get("result") {
                    won.push(r["peer_id"].as_str().unwrap().to_string());
                    listed.push(r["peers"].as_array().unwrap().len());
                } else {
                    let want = if same_id { -32002 } else { -32001 };
                    assert_eq!(v["error"]["code"], json!(want), "{room}: {v}");
                }
            }
            let expect = if same_id { 1 } else { LIMIT };
            assert_eq!(won.len(), expect, "{room}: winners {won:?}");
            // The winners were seated one after the other: each saw the ones before it.
            listed.sort_unstable();
            assert_eq!(listed, (0..expect).collect::<Vec<_>>(), "{room}");
            let stored = redis.int(&["HLEN", &format!("meshrtc:room:{room}")]);
            assert_eq!(stored, Some(expect as i64), "{room} in redis");
            for c in &mut clients {
                c.request(2, "peer.disconnect", json!({})).await;
            }
        }
    })
    .await;
}

/// The next text frame, without a time limit of its own
async fn next_text(c: &mut Raw) -> Value {
    use futures_util::StreamExt;
    loop {
        match c.ws.next().await {
            Some(Ok(async_tungstenite::tungstenite::Message::Text(t))) => {
                return serde_json::from_str(&t).unwrap()
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// A TCP proxy standing for a load balancer: each connection goes to the next backend in
/// turn that accepts it
struct Balancer {
    addr: SocketAddr,
    /// Backend index of each connection, in order
    routed: Arc<Mutex<Vec<usize>>>,
}

impl Balancer {
    async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routed = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let log = routed.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let backends = backends.clone();
                let next = next.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let start = next.fetch_add(1, Ordering::SeqCst);
                    for k in 0..backends.len() {
                        let i = (start + k) % backends.len();
                        if let Ok(mut server) = TcpStream::connect(backends[i]).await {
                            log.lock().unwrap().push(i);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, routed }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

/// A `meshrtc signal` node process, killed when dropped
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(redis: &Redis, name: &str, ttl_s: u64) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshrtc"))
            .env_remove("RUST_LOG")
            .args(["signal", "--listen", "127.0.0.1:0", "--redis", &redis.url])
            .args(["--node-id", name, "--node-ttl", &ttl_s.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ws://")
            .and_then(|a| a.strip_suffix('/'))
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    /// SIGKILL: the node dies without a word to anybody
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_death_clients_resume_on_another_node_and_media_goes_on() {
    let redis = redis_or_skip!();
    bounded(async {
        // Dead nodes are reaped after 4 s here (10 s by default).
        const TTL_S: u64 = 4;
        let mut procs: Vec<NodeProcess> = (0..3)
            .map(|i| NodeProcess::start(&redis, &format!("n{i}"), TTL_S))
            .collect();
        let lb = Balancer::start(procs.iter().map(|p| p.addr).collect()).await;
        let mut mesh = Mesh::new();
        for i in 0..6 {
            mesh.add(&lb.url(), "live", &format!("p{i}"), true).await;
        }
        mesh.wait_complete(Duration::from_secs(25), 20).await;
        // The balancer took turns: the peers on node 1 are the ones routed there.
        let routed = lb.routed.lock().unwrap().clone();
        let on_dead: BTreeSet<PeerId> = routed
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == 1)
            .map(|(i, _)| pid(&format!("p{i}")))
            .collect();
        assert_eq!(on_dead.len(), 2, "routing {routed:?}");
        // A client of node 1 that will not come back: the others must hear it left. A raw
        // watcher on node 0 sees what the room is told.
        let mut watcher = Raw::connect_addr(procs[0].addr, "/").await.unwrap();
        let r = watcher.announce(1, "live", Some("watcher")).await;
        assert_eq!(r["peers"].as_array().unwrap().len(), 6, "{r}");
        let mut ghost = Raw::connect_addr(procs[1].addr, "/").await.unwrap();
        ghost.announce(1, "live", Some("ghost")).await;
        let v = watcher.expect().await;
        assert_eq!(v["params"]["peer_id"], "ghost", "{v}");
        tokio::time::sleep(Duration::from_millis(300)).await;

        let before = mesh.audio_counts();
        let killed = Instant::now();
        procs[1].kill();
        drop(ghost);
        // Every client of the dead node resumes on another node.
        let deadline = killed + Duration::from_secs(u64::from(TTL_S as u32));
        let mut resumed_after = Duration::ZERO;
        loop {
            let done = mesh
                .peers
                .iter()
                .filter(|(_, p, _)| on_dead.contains(p))
                .all(|(_, _, s)| !s.lock().unwrap().restored.is_empty());
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "not resumed within {TTL_S} s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (_, p, s) in &mesh.peers {
            let s = s.lock().unwrap();
            if on_dead.contains(p) {
                let (at, resumed) = s.restored[0];
                assert!(resumed, "{p} was not resumed: {:?}", s.restored);
                resumed_after = resumed_after.max(at - killed);
            } else {
                assert_eq!(s.lost, 0, "{p} lost signaling");
            }
        }
        eprintln!("node killed: its clients resumed elsewhere within {resumed_after:?}");
        // The ghost is reaped: `peer.left` (timeout) within the node ttl and two refreshes,
        // and nothing else reaches the watcher: the resumed peers never left.
        let bound = Duration::from_secs(TTL_S) + Duration::from_secs(TTL_S) / 5 * 2;
        let left = async {
            loop {
                // Resumed peers offer to the watcher, which they have no connection with.
                let v = next_text(&mut watcher).await;
                if v["method"] == "peer.left" {
                    return v;
                }
                assert_ne!(v["method"], "peer.joined", "{v}");
            }
        };
        let v = tokio::time::timeout(bound + Duration::from_secs(2), left)
            .await
            .expect("ghost not reaped in time");
        assert_eq!(
            v["params"],
            json!({"peer_id": "ghost", "reason": "timeout"}),
            "{v}"
        );
        eprintln!(
            "the dead node's silent client was reported left after {:?}",
            killed.elapsed()
        );
        // Media never stopped: every pair got audio on after the kill, and nobody left.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = mesh.audio_counts();
        for (pair, n) in &before {
            assert!(
                after[pair] > *n + 20,
                "{pair:?}: audio stalled ({n} -> {})",
                after[pair]
            );
        }
        let peers = mesh.stop().await;
        let mut worst = Duration::ZERO;
        for (_, me, seen) in &peers {
            let s = seen.lock().unwrap();
            // The raw clients never answer offers: nothing about them counts.
            let failures: Vec<_> = s
                .failures
                .iter()
                .filter(|f| !f.starts_with("watcher") && !f.starts_with("ghost"))
                .collect();
            assert!(failures.is_empty(), "{me}: {failures:?}");
            let left: Vec<_> = s
                .left
                .iter()
                .filter(|(p, _)| p.as_str() != "ghost" && p.as_str() != "watcher")
                .collect();
            assert!(left.is_empty(), "{me} saw {left:?} leave");
            worst = worst.max(s.audio_gap.values().copied().max().unwrap_or_default());
        }
        eprintln!("longest audio gap of any pair across the node's death: {worst:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_redis_restart_nodes_reconnect_and_rooms_recover() {
    let mut redis = redis_or_skip!();
    bounded(async {
        let nodes = nodes(&redis, 3, 10).await;
        let mut members = Vec::new();
        for i in 0..6 {
            let mut c = raw(&nodes[i % 3]).await;
            let id = format!("m{i}");
            let r = c.announce(1, "keep", Some(&id)).await;
            assert_eq!(r["peers"].as_array().unwrap().len(), i, "{r}");
            members.push(c);
        }
        // Each hears the later ones join.
        for (i, c) in members.iter_mut().enumerate() {
            for j in i + 1..6 {
                let v = c.expect().await;
                assert_eq!(v["params"]["peer_id"], format!("m{j}"), "{v}");
            }
        }
        redis.restart();
        assert_eq!(redis.int(&["EXISTS", "meshrtc:room:keep"]), Some(0));
        // The nodes put the room back.
        let deadline = Instant::now() + Duration::from_secs(15);
        while redis.int(&["HLEN", "meshrtc:room:keep"]) != Some(6) {
            assert!(Instant::now() < deadline, "room not restored in redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A newcomer on any node sees everybody and reaches everybody.
        let mut late = raw(&nodes[1]).await;
        let r = late.announce(1, "keep", Some("late")).await;
        assert_eq!(r["peers"].as_array().unwrap().len(), 6, "{r}");
        for i in 0..6 {
            let to = format!("m{i}");
            late.request(
                2 + i as i64,
                "peer.offer",
                json!({"to": to, "sdp": "v=0 late"}),
            )
            .await;
            assert_eq!(response(&mut late, 2 + i as i64).await["result"], json!({}));
        }
        for c in &mut members {
            // Nothing about the outage: no `peer.left`, only the newcomer and its offer.
            let v = c.expect().await;
            assert_eq!(v["method"], "peer.joined", "{v}");
            assert_eq!(v["params"]["peer_id"], "late", "{v}");
            let v = c.expect().await;
            assert_eq!(v["method"], "peer.offer", "{v}");
            assert_eq!(v["params"]["from"], "late", "{v}");
        }
        // And the members still reach each other across nodes.
        members[0]
            .request(9, "peer.offer", json!({"to": "m1", "sdp": "v=0 again"}))
            .await;
        assert_eq!(response(&mut members[0], 9).await["result"], json!({}));
        let v = members[1].expect().await;
        assert_eq!(v["params"]["from"], "m0", "{v}");
    })
    .await;
}
