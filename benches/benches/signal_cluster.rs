//! Signaling nodes sharing rooms through Redis, against one server alone
//!
//! Not a timed test: `cargo bench -p meshrtc-benches --bench signal_cluster [-- --rounds 2000
//! --secs 5 --pairs 24 --clients 40]` and read the printed table. Starts its own
//! `redis-server` (persistence off) on 127.0.0.1 and a free port; without one it says so and
//! stops. Everything else runs in this process on loopback.
//!
//! 1. **Round trips** (`--rounds` each, one at a time): `announce` is `peer.announce` into a
//!    room with one resident, from sending to the result; `relay` is a `peer.offer` to a
//!    peer that answers it at once with `peer.answer`, from sending the offer to receiving
//!    the answer. Measured on one server alone (the baseline, no Redis), on one node with
//!    both peers (the room store is asked, messages stay local) and across two nodes (the
//!    resident or the answering peer is on the other node: pub/sub both ways).
//! 2. **Throughput** (`--secs`): `--pairs` sender/receiver pairs, each sender keeping 32
//!    offers in flight; relayed notifications received per second, one server alone vs
//!    three nodes with every pair split over two of them. Relay rate limits are raised for
//!    this.
//! 3. **Node death**: `--clients` clients hold places on a node that then dies (its runtime
//!    is dropped: sockets close, Redis hears nothing more). Each client reconnects at once to
//!    a surviving node and announces with its resume token; reported: from the death to each
//!    `"resumed": true`, p50 and max, and how many resumed.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tokio::{client_async, TokioAdapter};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::{SinkExt, StreamExt};
use meshrtc::signal::server::ServerConfig;
use meshrtc::signal::NodeId;
use meshrtc_tokio::{RedisConfig, SignalServer, SignalServerConfig};
use serde_json::{json, Value};
use tokio::net::TcpStream;

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

#[derive(Debug, Clone)]
struct Args {
    rounds: usize,
    secs: u64,
    pairs: usize,
    clients: usize,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 2000,
        secs: 5,
        pairs: 24,
        clients: 40,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match (argv[i].as_str(), value) {
            ("--rounds", Some(v)) => a.rounds = v.max(10),
            ("--secs", Some(v)) => a.secs = v.max(1) as u64,
            ("--pairs", Some(v)) => a.pairs = v.max(1),
            ("--clients", Some(v)) => a.clients = v.max(1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// A `redis-server` of our own, killed when dropped
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let mut buf = [0u8; 16];
                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                let pong = c.write_all(b"PING\r\n").is_ok()
                    && c.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"));
                if pong {
                    return Some(redis);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Relay limits out of the way, for throughput
fn rooms() -> ServerConfig {
    ServerConfig {
        rate_limit_per_sec: 1_000_000,
        rate_limit_burst: 1_000_000,
        rate_limit_bytes_per_sec: u32::MAX / 2,
        rate_limit_bytes_burst: u32::MAX / 2,
        relay_bytes_per_sec: u32::MAX / 2,
        relay_bytes_burst: u32::MAX / 2,
        ..ServerConfig::default()
    }
}

async fn alone() -> SignalServer {
    let config = SignalServerConfig {
        rooms: rooms(),
        ..SignalServerConfig::default()
    };
    SignalServer::bind_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("a server")
}

async fn node(redis: &Redis, name: String) -> SignalServer {
    let config = SignalServerConfig {
        rooms: rooms(),
        redis: Some(RedisConfig::new(
            redis.url.clone(),
            NodeId::new(name).expect("a node id"),
        )),
        ..SignalServerConfig::default()
    };
    SignalServer::bind_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("a node")
}

async fn connect(addr: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, _) = client_async(format!("ws://{addr}/"), tcp)
        .await
        .expect("handshake");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Reads until the response to `id`
async fn response(ws: &mut Ws, id: i64) -> Value {
    loop {
        let v = next(ws).await;
        if v["id"] == json!(id) {
            return v;
        }
    }
}

fn rpc(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

async fn announce(ws: &mut Ws, id: i64, room: &str, peer: &str) -> Value {
    send(
        ws,
        rpc(id, "peer.announce", json!({"room": room, "peer_id": peer})),
    )
    .await;
    let v = response(ws, id).await;
    assert!(v.get("result").is_some(), "announce refused: {v}");
    v
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Announce round trips: a fresh connection on `on` announces into a room whose resident is
/// on `resident`
async fn announce_rtt(
    resident: &SignalServer,
    on: &SignalServer,
    room: &str,
    rounds: usize,
) -> Vec<Duration> {
    let mut home = connect(resident.local_addr()).await;
    announce(&mut home, 1, room, "resident").await;
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let mut ws = connect(on.local_addr()).await;
        let t = Instant::now();
        announce(&mut ws, 1, room, &format!("a{i}")).await;
        out.push(t.elapsed());
        send(&mut ws, rpc(2, "peer.disconnect", json!({}))).await;
        response(&mut ws, 2).await;
    }
    // The resident heard every newcomer come and go.
    drop(home);
    out.sort();
    out
}

/// Offer → answer round trips between a peer on `a` and one on `b`
async fn relay_rtt(a: &SignalServer, b: &SignalServer, room: &str, rounds: usize) -> Vec<Duration> {
    let mut x = connect(a.local_addr()).await;
    let mut y = connect(b.local_addr()).await;
    announce(&mut x, 1, room, "x").await;
    announce(&mut y, 1, room, "y").await;
    // x knows y once told (across nodes that takes a pub/sub hop).
    while next(&mut x).await["method"] != "peer.joined" {}
    let answerer = tokio::spawn(async move {
        let mut id = 10;
        loop {
            let v = next(&mut y).await;
            if v["method"] == "peer.offer" {
                id += 1;
                let sdp = v["params"]["sdp"].clone();
                send(
                    &mut y,
                    rpc(id, "peer.answer", json!({"to": "x", "sdp": sdp})),
                )
                .await;
                if sdp == "last" {
                    return;
                }
            }
        }
    });
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let sdp = if i + 1 == rounds {
            "last".to_string()
        } else {
            format!("v=0 {i}")
        };
        let t = Instant::now();
        send(
            &mut x,
            rpc(100 + i as i64, "peer.offer", json!({"to": "y", "sdp": sdp})),
        )
        .await;
        loop {
            let v = next(&mut x).await;
            if v["method"] == "peer.answer" {
                break;
            }
            assert!(v.get("error").is_none(), "offer refused: {v}");
        }
        out.push(t.elapsed());
    }
    answerer.await.unwrap();
    out.sort();
    out
}

/// Relayed notifications per second with `pairs` pairs, sender i on `servers[i % n]` and
/// its receiver on `servers[(i + 1) % n]`
async fn throughput(servers: &[&SignalServer], pairs: usize, secs: u64) -> f64 {
    const WINDOW: u64 = 32;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..pairs {
        let room = format!("tp{i}");
        let mut s = connect(servers[i % servers.len()].local_addr()).await;
        let mut r = connect(servers[(i + 1) % servers.len()].local_addr()).await;
        announce(&mut r, 1, &room, "r").await;
        announce(&mut s, 1, &room, "s").await;
        // The receiver reads everything; counts offers.
        let count = received.clone();
        let halt = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !halt.load(Ordering::Relaxed) {
                let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_millis(200), r.next()).await
                else {
                    continue;
                };
                if let Message::Text(t) = m {
                    if t.contains("\"peer.offer\"") {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
        // The sender keeps WINDOW offers unanswered at most.
        let halt = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut acked) = (0u64, 0u64);
            let offer = |n: u64| {
                rpc(
                    n as i64 + 10,
                    "peer.offer",
                    json!({"to": "r", "sdp": "v=0 throughput"}),
                )
            };
            while !halt.load(Ordering::Relaxed) {
                while sent - acked < WINDOW {
                    sent += 1;
                    s.feed(Message::text(offer(sent).to_string()))
                        .await
                        .expect("feed");
                }
                s.flush().await.expect("flush");
                let Ok(Some(Ok(Message::Text(t)))) =
                    tokio::time::timeout(Duration::from_millis(200), s.next()).await
                else {
                    continue;
                };
                // A response (result or error) frees a place in the window.
                if t.contains("\"result\"") || t.contains("\"error\"") {
                    acked += 1;
                }
            }
        }));
    }
    // Warm up, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = received.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let got = received.load(Ordering::Relaxed) - from;
    let rate = got as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    rate
}

/// Clients on a node that dies; returns how long each took to be resumed elsewhere
fn node_death(redis: &Redis, survivors: &[SocketAddr], clients: usize) -> Vec<Duration> {
    // The doomed node runs on a runtime of its own, dropped to kill it.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = doomed.block_on(node(redis, "doomed".into()));
    let addr = server.local_addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Clients announce on the doomed node and keep their tokens.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (kill_tx, kill_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut handles = Vec::new();
    for i in 0..clients {
        let ready = ready_tx.clone();
        let mut killed = kill_rx.clone();
        let target = survivors[i % survivors.len()];
        handles.push(rt.spawn(async move {
            let mut ws = connect(addr).await;
            let room = format!("death{}", i % 4);
            let peer = format!("c{i}");
            let r = announce(&mut ws, 1, &room, &peer).await;
            let token = r["result"]["resume"].as_str().expect("a token").to_string();
            ready.send(()).unwrap();
            // Wait for the connection to end (the node died).
            while let Some(Ok(_)) = ws.next().await {}
            let mut again = connect(target).await;
            let params = json!({"room": room, "peer_id": peer, "resume": token});
            send(&mut again, rpc(1, "peer.announce", params)).await;
            let v = response(&mut again, 1).await;
            let at = Instant::now();
            let died = killed.wait_for(Option::is_some).await.unwrap().unwrap();
            (at - died, v["result"]["resumed"] == json!(true))
        }));
    }
    for _ in 0..clients {
        ready_rx.recv().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let died = Instant::now();
    kill_tx.send(Some(died)).unwrap();
    // Every task of the node ends at once, without a word to anybody.
    doomed.shutdown_background();
    drop(server);
    let mut out = Vec::new();
    let mut resumed = 0;
    for h in handles {
        let (d, ok) = rt.block_on(h).unwrap();
        out.push(d);
        resumed += usize::from(ok);
    }
    println!("node death: {resumed} of {clients} clients resumed on a surviving node");
    out.sort();
    out
}

fn main() {
    let a = args();
    let Some(redis) = Redis::start() else {
        println!("redis-server not found or not answering (scripts/setup.sh installs it); nothing measured");
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "signal_cluster: {a:?}, {cores} cores, redis at {}",
        redis.url
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let survivors = rt.block_on(async {
        let single = alone().await;
        let n: Vec<SignalServer> =
            futures_util::future::join_all((0..3).map(|i| node(&redis, format!("n{i}")))).await;

        println!();
        println!(
            "round trips, {} each              p50 ms   p99 ms",
            a.rounds
        );
        let rows = [
            (
                "announce, one server alone",
                announce_rtt(&single, &single, "ann1", a.rounds).await,
            ),
            (
                "announce, one node (redis)",
                announce_rtt(&n[0], &n[0], "ann2", a.rounds).await,
            ),
            (
                "announce, two nodes",
                announce_rtt(&n[0], &n[1], "ann3", a.rounds).await,
            ),
            (
                "relay, one server alone",
                relay_rtt(&single, &single, "rtt1", a.rounds).await,
            ),
            (
                "relay, one node (redis)",
                relay_rtt(&n[0], &n[0], "rtt2", a.rounds).await,
            ),
            (
                "relay, two nodes",
                relay_rtt(&n[0], &n[1], "rtt3", a.rounds).await,
            ),
        ];
        for (name, d) in &rows {
            println!("  {name:<30} {:>8.3} {:>8.3}", pct(d, 0.5), pct(d, 0.99));
        }
        let base_a = pct(&rows[0].1, 0.5);
        let base_r = pct(&rows[3].1, 0.5);
        println!(
            "  two nodes / alone, p50: announce {:.1}x, relay {:.1}x",
            pct(&rows[2].1, 0.5) / base_a,
            pct(&rows[5].1, 0.5) / base_r
        );

        println!();
        println!("throughput, {} pairs, {} s", a.pairs, a.secs);
        let one = throughput(&[&single], a.pairs, a.secs).await;
        let three = throughput(&[&n[0], &n[1], &n[2]], a.pairs, a.secs).await;
        println!("  one server alone     {one:>10.0} relayed messages/s");
        println!(
            "  three nodes (redis)  {three:>10.0} relayed messages/s ({:.2}x)",
            three / one
        );
        drop(single);
        n
    });
    // The three nodes keep running on `rt` for the node-death phase.
    println!();
    let addrs: Vec<SocketAddr> = survivors.iter().map(SignalServer::local_addr).collect();
    let d = node_death(&redis, &addrs, a.clients);
    println!(
        "  from a node's death to its clients resumed elsewhere: p50 {:.1} ms, max {:.1} ms",
        pct(&d, 0.5),
        pct(&d, 1.0)
    );
    drop(survivors);
    drop(rt);
}
