//! The signaling server under attack over real sockets: each test is an attack, and checks
//! that the attacker is the one who loses while honest peers carry on

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use meshrtc::signal::server::ServerConfig;
use meshrtc_tokio::SignalServerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::util::*;

/// Version 1 resume (none), so that a dropped peer is reported at once
fn v1(rooms: ServerConfig) -> ServerConfig {
    ServerConfig {
        resume_grace: Duration::ZERO,
        ..rooms
    }
}

/// A WebSocket client whose socket takes in only a few KiB until read, from `local`
async fn tight_client(addr: SocketAddr, local: IpAddr, rcvbuf: u32) -> Result<Raw, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if rcvbuf > 0 {
        socket
            .set_recv_buffer_size(rcvbuf)
            .map_err(|e| e.to_string())?;
    }
    socket
        .bind(SocketAddr::new(local, 0))
        .map_err(|e| e.to_string())?;
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}/");
    let (ws, _) = async_tungstenite::tokio::client_async(url, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Raw { ws })
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// Reads frames until one satisfies `pick`, for at most `limit`
async fn until<T>(c: &mut Raw, limit: Duration, mut pick: impl FnMut(&Value) -> Option<T>) -> T {
    let search = async {
        loop {
            let v = c.expect().await;
            if let Some(t) = pick(&v) {
                return t;
            }
        }
    };
    tokio::time::timeout(limit, search)
        .await
        .expect("expected frame did not arrive in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_not_its_senders() {
    bounded(async {
        // Generous relay limits so that one sender can fill the reader's socket buffers.
        let config = SignalServerConfig {
            rooms: v1(ServerConfig {
                relay_bytes_burst: u32::MAX,
                relay_bytes_per_sec: u32::MAX,
                rate_limit_bytes_burst: u32::MAX,
                rate_limit_bytes_per_sec: u32::MAX,
                rate_limit_burst: 100_000,
                max_relay_share: 64 * 1024 * 1024,
                max_queue_bytes: 64 * 1024 * 1024,
                max_queue_frames: 100_000,
                ..ServerConfig::default()
            }),
            read_bytes_per_sec: u32::MAX,
            read_frames_per_sec: u32::MAX,
            write_timeout: Duration::from_millis(500),
            ping_interval: Duration::from_millis(200),
            ..SignalServerConfig::default()
        };
        let server = server_with(config).await;
        let mut sleepy = tight_client(server.local_addr(), localhost(), 4096)
            .await
            .unwrap();
        sleepy.announce(1, "r", Some("sleepy")).await;
        let mut sender = Raw::connect(&server).await;
        sender.announce(1, "r", Some("sender")).await;
        let mut carol = Raw::connect(&server).await;
        carol.announce(1, "r", Some("carol")).await;
        until(&mut sender, Duration::from_secs(5), |v| {
            (v["params"]["peer_id"] == "carol").then_some(())
        })
        .await;
        // Sleepy never reads again. The sender sends it 60 KB offers until the server
        // drops sleepy: the sender sees peer.left, and is not dropped itself.
        let sdp = "o".repeat(60_000);
        let started = Instant::now();
        let mut id = 10;
        let left = loop {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "sleepy never dropped"
            );
            sender
                .request(id, "peer.offer", json!({"to": "sleepy", "sdp": sdp}))
                .await;
            id += 1;
            let v = sender.expect().await;
            if v["method"] == "peer.left" {
                break v;
            }
        };
        assert_eq!(
            left["params"],
            json!({"peer_id": "sleepy", "reason": "kicked"}),
            "{left}"
        );
        // Carol heard the same, and both honest peers still talk.
        let v = until(&mut carol, Duration::from_secs(5), |v| {
            (v["method"] == "peer.left").then(|| v.clone())
        })
        .await;
        assert_eq!(v["params"]["peer_id"], "sleepy");
        carol
            .request(2, "peer.offer", json!({"to": "sender", "sdp": "v=0 still"}))
            .await;
        assert_eq!(carol.expect().await["result"], json!({}));
        let got = until(&mut sender, Duration::from_secs(5), |v| {
            (v["method"] == "peer.offer").then(|| v["params"]["sdp"].clone())
        })
        .await;
        assert_eq!(got, "v=0 still");
        let metrics = server.metrics_text().await.unwrap();
        assert!(
            metrics.contains(r#"meshrtc_signal_evicted_total{reason="write_stall"} 1"#),
            "{metrics}"
        );
        counts_until(&server, Duration::from_secs(5), |c| {
            c.connections == 2 && c.tasks == 2
        })
        .await;
        drop(sleepy);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_another_cannot_get_it_kicked() {
    bounded(async {
        let server = server_with(SignalServerConfig {
            rooms: v1(ServerConfig::default()),
            ..SignalServerConfig::default()
        })
        .await;
        let mut victim = Raw::connect(&server).await;
        victim.announce(1, "r", Some("victim")).await;
        let mut carol = Raw::connect(&server).await;
        carol.announce(1, "r", Some("carol")).await;
        let mut mallory = Raw::connect(&server).await;
        mallory.announce(1, "r", Some("mallory")).await;
        // The victim reads everything it is sent, in its own task, and counts offers.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(v) = victim.recv().await {
                let _ = tx.send(v);
            }
        });
        // Mallory floods: 100 offers of 20 KB as fast as the socket takes them (2 MB; the
        // server reads them at a few times its byte rate limit).
        const FLOOD: usize = 100;
        let flood = tokio::spawn(async move {
            let sdp = "m".repeat(20_000);
            let (mut sink, mut stream) = mallory.ws.split();
            let counter = tokio::spawn(async move {
                let mut codes = Vec::new();
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(t) = msg else { continue };
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v.get("id").is_some() {
                        codes.push(v["error"]["code"].as_i64().unwrap_or(0));
                        if codes.len() == FLOOD {
                            break;
                        }
                    }
                }
                codes
            });
            for id in 0..FLOOD {
                let frame = json!({"jsonrpc": "2.0", "id": id, "method": "peer.offer",
                                   "params": {"to": "victim", "sdp": sdp}});
                sink.send(Message::text(frame.to_string())).await.unwrap();
            }
            counter.await.unwrap()
        });
        // Meanwhile carol's offers reach the victim, each within a second.
        for i in 0..5 {
            let sdp = format!("v=0 carol {i}");
            carol
                .request(100 + i, "peer.offer", json!({"to": "victim", "sdp": sdp}))
                .await;
            let sent = Instant::now();
            let arrived = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let v = rx.recv().await.expect("victim connection closed");
                    if v["params"]["sdp"] == sdp {
                        return;
                    }
                    assert_ne!(v["method"], "peer.left", "{v}");
                }
            })
            .await;
            assert!(
                arrived.is_ok(),
                "carol's offer {i} did not reach the victim"
            );
            assert!(
                sent.elapsed() < Duration::from_secs(1),
                "{:?}",
                sent.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let codes = flood.await.unwrap();
        let ok = codes.iter().filter(|&&c| c == 0).count();
        let limited = codes.iter().filter(|&&c| c == -32005).count();
        assert_eq!(ok + limited, FLOOD, "{codes:?}");
        assert!(
            limited * 4 > FLOOD * 3,
            "most of the flood is refused: {ok} relayed"
        );
        // Nobody was dropped.
        let c = server.counts().await.unwrap();
        assert_eq!((c.peers, c.connections), (3, 3));
        reader.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_hold_per_address_and_in_total() {
    bounded(async {
        let server = server_with(SignalServerConfig {
            max_connections: 5,
            max_connections_per_ip: 3,
            ..SignalServerConfig::default()
        })
        .await;
        let addr = server.local_addr();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(tight_client(addr, ip("127.0.0.1"), 0).await.unwrap());
        }
        let refused = tight_client(addr, ip("127.0.0.1"), 0).await;
        assert!(refused.is_err(), "a fourth from one address is refused");
        for _ in 0..2 {
            held.push(tight_client(addr, ip("127.0.0.2"), 0).await.unwrap());
        }
        assert!(
            tight_client(addr, ip("127.0.0.3"), 0).await.is_err(),
            "total cap"
        );
        // The held connections work, and a closed one frees its place.
        held[0].announce(1, "r", None).await;
        drop(held.remove(1));
        counts_until(&server, Duration::from_secs(5), |c| c.tasks == 4).await;
        let mut again = tight_client(addr, ip("127.0.0.1"), 0).await.unwrap();
        again.announce(1, "r", None).await;
        let metrics = server.metrics_text().await.unwrap();
        assert!(
            metrics.contains(r#"meshrtc_signal_refused_total{reason="max_connections_per_ip"} 1"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"meshrtc_signal_refused_total{reason="max_connections"} 1"#),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_announce_are_closed() {
    bounded(async {
        let server = server_with(SignalServerConfig {
            rooms: ServerConfig {
                announce_timeout: Duration::from_millis(300),
                ..ServerConfig::default()
            },
            ..SignalServerConfig::default()
        })
        .await;
        let mut idle = Raw::connect(&server).await;
        let mut fails = Raw::connect(&server).await;
        let mut member = Raw::connect(&server).await;
        member.announce(1, "r", Some("m")).await;
        fails
            .request(1, "peer.announce", json!({"room": "bad room"}))
            .await;
        fails.expect_error(-32602, json!(1)).await;
        let t = Instant::now();
        assert_eq!(idle.recv().await, None);
        assert_eq!(fails.recv().await, None);
        assert!(t.elapsed() < Duration::from_secs(2));
        member
            .request(2, "peer.offer", json!({"to": "m", "sdp": "x"}))
            .await;
        assert_eq!(member.expect().await["result"], json!({}));
        counts_until(&server, Duration::from_secs(5), |c| {
            c.connections == 1 && c.tasks == 1
        })
        .await;
    })
    .await;
}

/// Sends `request` as raw HTTP and returns the status line and the whole response
async fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allowlist_get_403() {
    bounded(async {
        let server = server_with(SignalServerConfig {
            allowed_origins: vec!["https://app.example".into(), "http://localhost:8080/".into()],
            ..SignalServerConfig::default()
        })
        .await;
        let addr = server.local_addr();
        let upgrade = |origin: Option<&str>| {
            let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
            format!(
                "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
            )
        };
        let status = |s: String| s.split(' ').nth(1).unwrap_or("").to_string();
        let (evil, text) = http(addr, &upgrade(Some("https://evil.example"))).await;
        assert_eq!(status(evil), "403", "{text}");
        // Listed origins (compared without case or trailing slash) and no origin are let in.
        for origin in [Some("https://APP.example"), Some("http://localhost:8080"), None] {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(upgrade(origin).as_bytes()).await.unwrap();
            let mut buf = [0u8; 12];
            tcp.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"HTTP/1.1 101", "{origin:?}");
        }
        let metrics = server.metrics_text().await.unwrap();
        assert!(metrics.contains(r#"meshrtc_signal_refused_total{reason="origin"} 1"#));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_answers_plain_http() {
    bounded(async {
        let server = server().await;
        let addr = server.local_addr();
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let (status, text) = http(addr, &get("/healthz")).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(text.ends_with("\r\n\r\nok\n"), "{text}");
        // The page, whatever the query: it reads room and id itself.
        let (status, page) = http(addr, &get("/?room=demo&id=alice")).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(page.contains("Content-Type: text/html; charset=utf-8"));
        assert!(page.contains("new URLSearchParams(location.search)"));
        let (_, plain) = http(addr, &get("/")).await;
        assert_eq!(plain, page);
        let (status, head) = http(addr, &format!("HEAD / HTTP/1.1\r\nHost: {addr}\r\n\r\n")).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(head.ends_with("\r\n\r\n"), "no body for HEAD");
        assert_eq!(
            http(addr, &get("/rpc")).await.0,
            "HTTP/1.1 426 Upgrade Required"
        );
        assert_eq!(http(addr, &get("/nope")).await.0, "HTTP/1.1 404 Not Found");
        let post = format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(http(addr, &post).await.0, "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(
            http(addr, "garbage\r\n\r\n").await.0,
            "HTTP/1.1 400 Bad Request"
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        assert_eq!(
            http(addr, &huge).await.0,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // And WebSockets still work next to it.
        let mut c = Raw::connect(&server).await;
        c.announce(1, "r", None).await;
        counts_until(&server, Duration::from_secs(5), |c| c.tasks == 1).await;
    })
    .await;
}
