//! Load on the signaling server: thousands of WebSocket connections on one server while
//! hostile clients flood it, and an honest client's announce round trip
//!
//! Not a timed test: `cargo bench -p meshrtc-benches --bench signal_load [-- --conns 4000
//! --secs 20 --attackers 60]` and read the printed table. Everything runs in this process
//! on loopback; the server has its own runtime thread (one worker), the clients another.
//!
//! Phases of `--secs` each, measured by the same honest client (every 20 ms a fresh
//! connection from its own address, `peer.announce` into a room with one resident, timed from
//! sending the request to its result):
//!
//! 1. `idle`: the server holds `--conns` announced connections in rooms of 8 (spread over
//!    127.0.0.0/16 source addresses so that the per-address cap is the default one); each
//!    reads what it is sent.
//! 2. `attack`: the same, plus `--attackers` hostile clients in four kinds, each restarting
//!    when the server drops it: flooders that relay 16 KB offers to an idle peer as fast as
//!    their socket takes them and never read; garbage senders (junk text, binary and 60 KB
//!    frames, reading what comes back); slow readers that announce in a room with a chatty
//!    honest pair and stop reading; churners that connect, announce and vanish.
//!
//! Reported: connections held, the honest round trip (p50/p99, and the ratio attack/idle
//! of like-for-like medians), what happened to the attackers (refused, dropped) and whether
//! any honest connection was lost, and the server process's resident memory per connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tokio::{client_async_with_config, TokioAdapter};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use meshrtc::signal::server::ServerConfig;
use meshrtc_tokio::{SignalServer, SignalServerConfig};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// Rooms the idle connections fill
static ROOMS: AtomicUsize = AtomicUsize::new(1);

#[derive(Debug, Clone)]
struct Args {
    conns: usize,
    secs: u64,
    attackers: usize,
}

fn args() -> Args {
    let mut a = Args {
        conns: 4000,
        secs: 20,
        attackers: 60,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match (argv[i].as_str(), value) {
            ("--conns", Some(v)) => a.conns = v,
            ("--secs", Some(v)) => a.secs = v.max(2) as u64,
            ("--attackers", Some(v)) => a.attackers = v,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Raises the open-file limit to its hard maximum; returns it
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// Resident set size of this process, in bytes
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Source address number `n` in 127.0.0.0/16 (avoiding .0 and .255 host bytes)
fn source(n: usize) -> IpAddr {
    let n = n % (250 * 250);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        2 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}

async fn connect(server: SocketAddr, from: IpAddr) -> Option<Ws> {
    connect_with(server, from, 0).await
}

/// As [`connect`], with a small socket receive buffer when `rcvbuf` is not zero
async fn connect_with(server: SocketAddr, from: IpAddr, rcvbuf: u32) -> Option<Ws> {
    let socket = TcpSocket::new_v4().ok()?;
    if rcvbuf > 0 {
        socket.set_recv_buffer_size(rcvbuf).ok()?;
    }
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
        .await
        .ok()?
        .ok()?;
    let url = format!("ws://{server}/");
    // Small buffers, like the server's: the memory figure counts both ends.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        client_async_with_config(url, tcp, Some(config)),
    )
    .await
    .ok()?
    .ok()?;
    Some(ws)
}

fn announce(id: i64, room: &str, peer: &str) -> Message {
    Message::text(
        json!({"jsonrpc": "2.0", "id": id, "method": "peer.announce",
               "params": {"room": room, "peer_id": peer}})
        .to_string(),
    )
}

/// Reads until the response to `id`; `None` if the connection ends first
async fn response(ws: &mut Ws, id: i64) -> Option<Value> {
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).ok()?;
            if v["id"] == json!(id) {
                return Some(v);
            }
        }
    }
    None
}

/// What the clients saw
#[derive(Default)]
struct Tally {
    idle_up: AtomicU64,
    idle_lost: AtomicU64,
    flood_sent: AtomicU64,
    /// The server closed a flooder's connection
    flood_closed: AtomicU64,
    /// A flooder's send blocked for 2 s (the server stopped reading it) and it gave up
    flood_blocked: AtomicU64,
    chatter_refused: AtomicU64,
    chatter_ok: AtomicU64,
    chatter_lost: AtomicU64,
}

/// An idle, honest peer: announces, then reads everything until the bench ends
async fn idle_peer(server: SocketAddr, n: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let Some(mut ws) = connect(server, source(n)).await else {
        tally.idle_lost.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let room = format!("idle{}", n / 8);
    if ws.send(announce(1, &room, &format!("i{n}"))).await.is_err()
        || response(&mut ws, 1)
            .await
            .is_none_or(|v| v.get("result").is_none())
    {
        tally.idle_lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    tally.idle_up.fetch_add(1, Ordering::Relaxed);
    while let Some(Ok(_)) = ws.next().await {}
    if !stop.load(Ordering::Relaxed) {
        tally.idle_lost.fetch_add(1, Ordering::Relaxed);
    }
}

/// The honest client: for `secs`, every 20 ms a fresh connection announcing into a room with
/// a resident; returns the announce round trips in milliseconds
async fn honest_rounds(server: SocketAddr, secs: u64, phase: &str) -> Vec<f64> {
    let from = IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1));
    let mut resident = connect(server, from).await.expect("resident connects");
    let room = format!("honest-{phase}");
    resident.send(announce(1, &room, "resident")).await.unwrap();
    response(&mut resident, 1)
        .await
        .expect("resident announced");
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = resident.next().await {} });
    let mut rtt = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0.. {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let Some(mut ws) = connect(server, from).await else {
            continue;
        };
        let sent = Instant::now();
        if ws.send(announce(7, &room, &format!("h{i}"))).await.is_err() {
            continue;
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), response(&mut ws, 7)).await;
        if let Ok(Some(v)) = answer {
            assert!(v.get("result").is_some(), "honest announce refused: {v}");
            rtt.push(sent.elapsed().as_secs_f64() * 1e3);
        }
        let _ = ws
            .send(Message::text(
                r#"{"jsonrpc":"2.0","id":8,"method":"peer.disconnect"}"#,
            ))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), response(&mut ws, 8)).await;
    }
    reader.abort();
    rtt
}

/// Floods an idle peer with offers and never reads; starts again when dropped
async fn flooder(server: SocketAddr, k: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let sdp = "f".repeat(16_000);
    let mut incarnation = 0;
    while !stop.load(Ordering::Relaxed) {
        incarnation += 1;
        let Some(mut ws) = connect(server, source(60_000 + k)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Into a room with idle peers, as a member: the victims are i{10k}.. of that room.
        let room = format!(
            "idle{}",
            (k * 7 + incarnation) % ROOMS.load(Ordering::Relaxed).max(1)
        );
        let me = format!("flood{k}-{incarnation}");
        if ws.send(announce(1, &room, &me)).await.is_err() {
            continue;
        }
        let Some(v) = response(&mut ws, 1).await else {
            continue;
        };
        let Some(victim) = v["result"]["peers"][0]["peer_id"]
            .as_str()
            .map(str::to_string)
        else {
            // The room is full: try another one next time.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut id = 10;
        loop {
            id += 1;
            let frame = json!({"jsonrpc": "2.0", "id": id, "method": "peer.offer",
                               "params": {"to": victim, "sdp": sdp}});
            let send = ws.send(Message::text(frame.to_string()));
            match tokio::time::timeout(Duration::from_secs(2), send).await {
                Ok(Ok(())) => {
                    tally.flood_sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(_)) => {
                    tally.flood_closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    tally.flood_blocked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}

/// Sends junk of every kind as fast as it can, reading (and dropping) the answers
async fn garbage(server: SocketAddr, k: usize, stop: Arc<AtomicBool>) {
    let mut rng = fastrand::Rng::with_seed(k as u64);
    while !stop.load(Ordering::Relaxed) {
        let Some(ws) = connect(server, source(61_000 + k)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        for round in 0u32.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let msg = match round % 4 {
                0 => Message::text(
                    (0..rng.usize(1..300))
                        .map(|_| rng.char(..))
                        .collect::<String>(),
                ),
                1 => Message::binary(
                    (0..rng.usize(1..4000))
                        .map(|_| rng.u8(..))
                        .collect::<Vec<u8>>(),
                ),
                2 => Message::text("z".repeat(60 * 1024)),
                _ => Message::text(
                    r#"{"jsonrpc":"2.0","id":1,"method":"peer.offer","params":{"to":"x","sdp":"y"}}"#,
                ),
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        reader.abort();
    }
}

/// Announces next to a chatty honest pair and never reads
async fn slow_reader(server: SocketAddr, k: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let room = format!("chat{k}");
    // The honest pair: `talker` sends an offer every 100 ms to the newest slow reader (or to
    // `listener` when none is in the room); `listener` reads.
    let Some(mut talker) = connect(server, source(62_000 + 2 * k)).await else {
        return;
    };
    let Some(mut listener) = connect(server, source(62_001 + 2 * k)).await else {
        return;
    };
    talker.send(announce(1, &room, "talker")).await.unwrap();
    response(&mut talker, 1).await.unwrap();
    listener.send(announce(1, &room, "listener")).await.unwrap();
    response(&mut listener, 1).await.unwrap();
    let listen = tokio::spawn(async move { while let Some(Ok(_)) = listener.next().await {} });
    let stop2 = stop.clone();
    let slow = tokio::spawn(async move {
        let mut n = 0;
        while !stop2.load(Ordering::Relaxed) {
            n += 1;
            // A small receive buffer: the server's writes to it stall soon.
            if let Some(mut ws) = connect_with(server, source(63_000 + k), 4096).await {
                let _ = ws
                    .send(announce(1, &format!("chat{k}"), &format!("slow{n}")))
                    .await;
                // Never read; wait to be dropped (the writes to us stall).
                let mut tick = 0;
                while !stop2.load(Ordering::Relaxed) && tick < 600 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tick += 1;
                }
                drop(ws);
            }
        }
    });
    // 2 KB every 100 ms: a busy but honest renegotiation rate, under the relay budget.
    let sdp = "t".repeat(2_000);
    let mut id = 10;
    let mut peers_seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        id += 1;
        // Whoever else is in the room (slow readers come and go) gets an offer.
        let target = peers_seen
            .last()
            .cloned()
            .unwrap_or_else(|| "listener".to_string());
        let frame = json!({"jsonrpc": "2.0", "id": id, "method": "peer.offer",
                           "params": {"to": target, "sdp": sdp}});
        if talker.send(Message::text(frame.to_string())).await.is_err() {
            tally.chatter_lost.fetch_add(1, Ordering::Relaxed);
            break;
        }
        loop {
            let t = match talker.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                _ => {
                    tally.chatter_lost.fetch_add(1, Ordering::Relaxed);
                    slow.abort();
                    listen.abort();
                    return;
                }
            };
            let v: Value = serde_json::from_str(&t).unwrap_or_default();
            match v["method"].as_str() {
                Some("peer.joined") => {
                    if let Some(p) = v["params"]["peer_id"].as_str() {
                        peers_seen.push(p.to_string());
                    }
                }
                Some("peer.left") => {
                    let gone = v["params"]["peer_id"].as_str().unwrap_or("");
                    peers_seen.retain(|p| p != gone);
                }
                _ => {}
            }
            if v["id"] == json!(id) {
                if v.get("error").is_some() {
                    tally.chatter_refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.chatter_ok.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
    slow.abort();
    listen.abort();
}

/// Connects, announces and vanishes, over and over
async fn churner(server: SocketAddr, k: usize, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if let Some(mut ws) = connect(server, source(64_000 + k)).await {
            let _ = ws
                .send(announce(
                    1,
                    &format!("churn{}", k % 5),
                    &format!("c{k}-{n}"),
                ))
                .await;
            let _ = tokio::time::timeout(Duration::from_millis(200), response(&mut ws, 1)).await;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

fn summary(label: &str, rtt: &mut [f64]) -> f64 {
    rtt.sort_by(f64::total_cmp);
    let p50 = percentile(rtt, 0.5);
    println!(
        "{label:<44} n={:<4} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        rtt.len(),
        p50,
        percentile(rtt, 0.99),
        rtt.last().copied().unwrap_or(f64::NAN)
    );
    p50
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn main() {
    let args = args();
    let nofile = raise_nofile();
    println!("== signaling server under load ==");
    println!(
        "{} idle connections, {} attackers, phases of {} s; open files limit {nofile}",
        args.conns, args.attackers, args.secs
    );
    ROOMS.store(args.conns.div_ceil(8), Ordering::Relaxed);
    if (nofile as usize) < args.conns * 2 + 1000 {
        println!(
            "warning: the open files limit is low for {} connections (two ends each)",
            args.conns
        );
    }

    // The server: its own thread and runtime, one worker.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let conns = args.conns;
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let config = SignalServerConfig {
                rooms: ServerConfig::default(),
                max_connections: conns + 2000,
                ..SignalServerConfig::default()
            };
            let server = SignalServer::bind_with("127.0.0.1:0".parse().unwrap(), config)
                .await
                .expect("server binds");
            addr_tx.send(server.local_addr()).unwrap();
            let server = Arc::new(server);
            let (q_tx, mut q_rx) =
                tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<(String, usize)>>(4);
            let s2 = server.clone();
            tokio::spawn(async move {
                while let Some(reply) = q_rx.recv().await {
                    let text = s2.metrics_text().await.unwrap_or_default();
                    let held = s2.counts().await.map(|c| c.connections).unwrap_or(0);
                    let _ = reply.send((text, held));
                }
            });
            QUERY.set(q_tx).ok();
            let _ = end_rx.await;
        });
    });
    let server = addr_rx.recv().expect("server address");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async move {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let rss0 = rss();
        let opened = Instant::now();
        let mut idle = Vec::with_capacity(args.conns);
        for n in 0..args.conns {
            idle.push(tokio::spawn(idle_peer(server, n, tally.clone(), stop.clone())));
            if n % 200 == 199 {
                // Let the handshakes of this batch through before the next.
                while tally.idle_up.load(Ordering::Relaxed) + tally.idle_lost.load(Ordering::Relaxed)
                    < n as u64 + 1 - 100
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        while tally.idle_up.load(Ordering::Relaxed) + tally.idle_lost.load(Ordering::Relaxed)
            < args.conns as u64
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, held) = query().await;
        let rss1 = rss();
        println!(
            "opened {} announced connections in {:.1} s ({} failed); server holds {held}",
            tally.idle_up.load(Ordering::Relaxed),
            opened.elapsed().as_secs_f64(),
            tally.idle_lost.load(Ordering::Relaxed)
        );
        println!(
            "process RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per connection (client and server ends together)",
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0,
            (rss1.saturating_sub(rss0)) as f64 / 1024.0 / args.conns.max(1) as f64
        );

        let mut idle_rtt = honest_rounds(server, args.secs, "idle").await;
        let idle_p50 = summary("honest announce, idle connections only", &mut idle_rtt);

        // The attack.
        let per_kind = (args.attackers / 4).max(1);
        let mut attackers = Vec::new();
        for k in 0..per_kind {
            attackers.push(tokio::spawn(flooder(server, k, tally.clone(), stop.clone())));
            attackers.push(tokio::spawn(garbage(server, k, stop.clone())));
            attackers.push(tokio::spawn(slow_reader(server, k, tally.clone(), stop.clone())));
            attackers.push(tokio::spawn(churner(server, k, stop.clone())));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let attack_started = Instant::now();
        let mut attack_rtt = honest_rounds(server, args.secs, "attack").await;
        let attack_secs = attack_started.elapsed().as_secs_f64();
        let attack_p50 = summary("honest announce, under attack", &mut attack_rtt);
        println!("ratio of medians, attack / idle: {:.2}", attack_p50 / idle_p50);
        let (metrics, held) = query().await;
        stop.store(true, Ordering::Relaxed);
        println!("under attack ({attack_secs:.0} s): server held {held} connections");
        println!(
            "  idle honest connections lost: {} of {}",
            tally.idle_lost.load(Ordering::Relaxed),
            args.conns
        );
        println!(
            "  chatty honest pairs next to slow readers: {} offers answered {{}}, {} refused (-32005), {} pairs lost",
            tally.chatter_ok.load(Ordering::Relaxed),
            tally.chatter_refused.load(Ordering::Relaxed),
            tally.chatter_lost.load(Ordering::Relaxed)
        );
        println!(
            "  flooders: {} offers written to their sockets; {} connections closed by the server, {} given up after the server stopped reading them for 2 s",
            tally.flood_sent.load(Ordering::Relaxed),
            tally.flood_closed.load(Ordering::Relaxed),
            tally.flood_blocked.load(Ordering::Relaxed)
        );
        for series in [
            "meshrtc_signal_rate_limited_total",
            "meshrtc_signal_relays_refused_total",
            r#"meshrtc_signal_evicted_total{reason="unread_queue"}"#,
            r#"meshrtc_signal_evicted_total{reason="write_stall"}"#,
            r#"meshrtc_signal_evicted_total{reason="no_announce"}"#,
            r#"meshrtc_signal_errors_total{code="-32004"}"#,
            r#"meshrtc_signal_errors_total{code="-32700"}"#,
            r#"meshrtc_signal_frames_total{direction="in"}"#,
            r#"meshrtc_signal_bytes_total{direction="in"}"#,
        ] {
            println!("  {series} {}", metric(&metrics, series));
        }
        for a in attackers {
            a.abort();
        }
        for i in idle {
            i.abort();
        }
    });
    let _ = end_tx.send(());
    let _ = server_thread.join();
}

type Query = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<(String, usize)>>;
static QUERY: std::sync::OnceLock<Query> = std::sync::OnceLock::new();

/// The server's metrics text and held connections, asked of its own runtime
async fn query() -> (String, usize) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let q = QUERY.get().expect("server started");
    if q.send(tx).await.is_err() {
        return (String::new(), 0);
    }
    rx.await.unwrap_or_default()
}
