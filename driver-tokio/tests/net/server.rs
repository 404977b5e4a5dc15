//! The signaling server over real WebSockets: every error code, containment, cleanup

use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use meshrtc::signal::server::ServerConfig;
use meshrtc::DataMessage;
use meshrtc_tokio::SignalServerConfig;
use serde_json::{json, Value};

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_over_a_websocket() {
    bounded(async {
        let config = SignalServerConfig {
            rooms: ServerConfig {
                max_peers_per_room: 2,
                resume_grace: Duration::ZERO,
                ..ServerConfig::default()
            },
            ..SignalServerConfig::default()
        };
        let server = server_with(config).await;
        let mut c1 = Raw::connect(&server).await;

        // -32700: not JSON.
        c1.text("{nope").await;
        c1.expect_error(-32700, Value::Null).await;
        // -32600: not a JSON-RPC 2.0 object, a batch, a binary frame.
        c1.text(r#"{"id":1,"method":"peer.announce"}"#).await;
        c1.expect_error(-32600, json!(1)).await;
        c1.text(r#"[{"jsonrpc":"2.0","id":2,"method":"peer.announce","params":{"room":"r"}}]"#)
            .await;
        c1.expect_error(-32600, Value::Null).await;
        c1.binary(vec![1, 2, 3]).await;
        c1.expect_error(-32600, Value::Null).await;
        // -32601: unknown method.
        c1.request(3, "peer.dance", json!({})).await;
        c1.expect_error(-32601, json!(3)).await;
        // -32602: bad params (room syntax, missing field).
        c1.request(4, "peer.announce", json!({"room": "no spaces"})).await;
        c1.expect_error(-32602, json!(4)).await;
        c1.request(5, "peer.announce", json!({})).await;
        c1.expect_error(-32602, json!(5)).await;
        // -32000: anything but announce before announcing.
        c1.request(6, "peer.offer", json!({"to": "bob", "sdp": "v=0"})).await;
        c1.expect_error(-32000, json!(6)).await;

        let result = c1.announce(7, "r", Some("alice")).await;
        assert_eq!(
            (&result["peer_id"], &result["room"], &result["peers"]),
            (&json!("alice"), &json!("r"), &json!([]))
        );
        assert_eq!(result["resume_grace_s"], json!(0));
        assert_eq!(result.get("resume"), None, "no token without a grace");

        // -32002: id taken.
        let mut c2 = Raw::connect(&server).await;
        c2.request(1, "peer.announce", json!({"room": "r", "peer_id": "alice"})).await;
        c2.expect_error(-32002, json!(1)).await;
        let result = c2.announce(2, "r", Some("bob")).await;
        assert_eq!(result["peers"][0]["peer_id"], "alice");
        let joined = c1.expect().await;
        assert_eq!(joined["method"], "peer.joined");
        assert_eq!(joined["params"]["peer_id"], "bob");

        // -32001: room full (limit 2).
        let mut c3 = Raw::connect(&server).await;
        c3.request(1, "peer.announce", json!({"room": "r", "peer_id": "carol"})).await;
        c3.expect_error(-32001, json!(1)).await;

        // -32003: unknown target.
        c1.request(8, "peer.offer", json!({"to": "ghost", "sdp": "v=0"})).await;
        c1.expect_error(-32003, json!(8)).await;

        // -32004: too large, text and binary; the connection stays open.
        let sdp = "x".repeat(70 * 1024);
        c1.request(9, "peer.offer", json!({"to": "bob", "sdp": sdp})).await;
        c1.expect_error(-32004, Value::Null).await;
        c1.binary(vec![0; 65 * 1024]).await;
        c1.expect_error(-32004, Value::Null).await;
        c1.request(10, "peer.offer", json!({"to": "bob", "sdp": "v=0 small"})).await;
        assert_eq!(c1.expect().await, json!({"jsonrpc": "2.0", "id": 10, "result": {}}));
        let offer = c2.expect().await;
        assert_eq!(
            offer,
            json!({"jsonrpc": "2.0", "method": "peer.offer", "params": {"from": "alice", "sdp": "v=0 small"}})
        );

        // Beyond the transport's hard cap (1 MiB) the connection is closed; the room
        // hears that the peer left.
        c3.announce(2, "s", Some("carol")).await;
        // The server may close while the frame is still being written: ignore that error.
        let huge = Message::text("y".repeat(2 * 1024 * 1024));
        let _ = c3.ws.send(huge).await;
        assert_eq!(c3.recv().await, None, "connection closed");

        // peer.disconnect: {} then the server closes; the room hears peer.left.
        c2.request(3, "peer.disconnect", json!({})).await;
        assert_eq!(c2.expect().await["result"], json!({}));
        assert_eq!(c2.recv().await, None, "server closed the connection");
        let left = c1.expect().await;
        assert_eq!(
            left,
            json!({"jsonrpc": "2.0", "method": "peer.left", "params": {"peer_id": "bob", "reason": "disconnect"}})
        );
        drop(c1);
        counts_until(&server, Duration::from_secs(5), |c| {
            c.rooms == 0 && c.connections == 0 && c.tasks == 0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_is_rate_limited() {
    bounded(async {
        let config = SignalServerConfig {
            rooms: ServerConfig {
                rate_limit_per_sec: 10,
                rate_limit_burst: 5,
                ..ServerConfig::default()
            },
            ..SignalServerConfig::default()
        };
        let server = server_with(config).await;
        let mut c = Raw::connect(&server).await;
        for id in 0..30 {
            c.request(id, "peer.nope", json!({})).await;
        }
        let mut codes = Vec::new();
        for id in 0..30 {
            let v = c.expect().await;
            assert_eq!(
                v["id"],
                json!(id),
                "a limited request is still answered to its id"
            );
            codes.push(v["error"]["code"].as_i64().unwrap());
        }
        assert_eq!(codes[..5], [-32601; 5], "the burst is served: {codes:?}");
        assert!(codes.contains(&-32005), "{codes:?}");
        // Still open, and served again once tokens come back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.request(99, "peer.nope", json!({})).await;
        c.expect_error(-32601, json!(99)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_root_and_rpc_only() {
    bounded(async {
        let server = server().await;
        for path in ["/", "/rpc"] {
            let mut c = Raw::connect_path(&server, path).await.unwrap();
            c.announce(1, "r", None).await;
        }
        let refused = Raw::connect_path(&server, "/other").await;
        assert!(refused.is_err(), "a path other than / and /rpc is refused");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_times_out() {
    bounded(async {
        let config = SignalServerConfig {
            rooms: ServerConfig {
                resume_grace: Duration::ZERO,
                ..ServerConfig::default()
            },
            ping_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(1000),
            ..SignalServerConfig::default()
        };
        let server = server_with(config).await;
        let mut quiet = Raw::connect(&server).await;
        quiet.announce(1, "r", Some("quiet")).await;
        let mut active = Raw::connect(&server).await;
        active.announce(1, "r", Some("active")).await;
        // `quiet` is never read again, so it never answers a ping; `active` keeps reading
        // (and so answering pings) and must outlive it.
        let left = active.expect().await;
        assert_eq!(
            left["params"],
            json!({"peer_id": "quiet", "reason": "timeout"}),
            "{left}"
        );
        let c = server.counts().await.unwrap();
        assert_eq!((c.rooms, c.connections), (1, 1));
        drop(quiet);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_cycles_leave_nothing_behind() {
    bounded(async {
        // Version 1: a dropped connection leaves at once.
        let server = server_with(SignalServerConfig {
            rooms: ServerConfig {
                resume_grace: Duration::ZERO,
                ..ServerConfig::default()
            },
            ..SignalServerConfig::default()
        })
        .await;
        let mut resident = Raw::connect(&server).await;
        resident.announce(1, "home", Some("resident")).await;
        for i in 0..100 {
            let mut c = Raw::connect(&server).await;
            let room = if i % 2 == 0 { "home" } else { "cycle" };
            c.announce(1, room, None).await;
            match i % 3 {
                0 => {
                    c.request(2, "peer.disconnect", json!({})).await;
                    assert_eq!(c.expect().await["result"], json!({}));
                    assert_eq!(c.recv().await, None);
                }
                1 => {
                    // Vanish without a close frame.
                    drop(c);
                }
                _ => {
                    let _ = c.ws.close(None).await;
                }
            }
        }
        let c = counts_until(&server, Duration::from_secs(5), |c| {
            c.rooms == 1 && c.connections == 1 && c.tasks == 1
        })
        .await;
        assert_eq!(c.rooms, 1);
        // The resident heard every joiner of its room join and leave.
        let mut joined = 0;
        let mut left = 0;
        while let Ok(Some(v)) =
            tokio::time::timeout(Duration::from_millis(200), resident.recv()).await
        {
            match v["method"].as_str() {
                Some("peer.joined") => joined += 1,
                Some("peer.left") => left += 1,
                _ => panic!("unexpected {v}"),
            }
        }
        assert_eq!((joined, left), (50, 50));
        drop(resident);
        counts_until(&server, Duration::from_secs(5), |c| {
            c.rooms == 0 && c.connections == 0 && c.tasks == 0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_floods_do_not_disturb_a_pair() {
    bounded(async {
        let server = server().await;
        let url = server.url();
        // Trolls: one in the pair's room, one never announced, both sending junk.
        let mut trolls = Vec::new();
        for (i, room) in [Some("calm"), None].into_iter().enumerate() {
            let mut t = Raw::connect(&server).await;
            if let Some(room) = room {
                t.announce(1, room, Some("troll")).await;
            }
            trolls.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(i as u64);
                let (mut sink, mut stream) = futures_util::StreamExt::split(t.ws);
                // Read (and drop) whatever the server sends so our socket never clogs.
                let reader = tokio::spawn(async move {
                    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut stream).await {}
                });
                use futures_util::SinkExt;
                for round in 0..300u32 {
                    let msg = match round % 5 {
                        0 => Message::text(
                            (0..rng.usize(1..200)).map(|_| rng.char(..)).collect::<String>(),
                        ),
                        1 => Message::binary((0..rng.usize(1..5000)).map(|_| rng.u8(..)).collect::<Vec<u8>>()),
                        2 => Message::text("z".repeat(100 * 1024)),
                        3 => Message::text(
                            r#"{"jsonrpc":"2.0","id":1,"method":"peer.offer","params":{"to":"alice","sdp":"v=0 bogus"}}"#,
                        ),
                        _ => Message::text(r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"calm","peer_id":"troll"}}"#),
                    };
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                reader.abort();
            }));
        }
        let (a, mut a_events) = join(&url, "calm", "alice").await;
        let (b, mut b_events) = join(&url, "calm", "bob").await;
        let limit = Duration::from_secs(15);
        assert_eq!(wait_for(&mut a_events, limit, connected).await, pid("bob"));
        assert_eq!(wait_for(&mut b_events, limit, connected).await, pid("alice"));
        a.send_data(&pid("bob"), DataMessage::Text("still fine".into())).await.unwrap();
        let got = wait_for(&mut b_events, limit, |e| match e {
            meshrtc_tokio::Event::Mesh(meshrtc::Event::DataReceived { message, .. }) => {
                Some(message.clone())
            }
            _ => None,
        })
        .await;
        assert_eq!(got, DataMessage::Text("still fine".into()));
        for t in trolls {
            t.await.unwrap();
        }
        a.leave().await.unwrap();
        b.leave().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_and_gets_what_was_held() {
    bounded(async {
        let server = server().await;
        let mut alice = Raw::connect(&server).await;
        let result = alice.announce(1, "r", Some("alice")).await;
        let token = result["resume"].as_str().expect("a resume token").to_string();
        assert_eq!(result["resume_grace_s"], json!(20));
        let mut bob = Raw::connect(&server).await;
        bob.announce(1, "r", Some("bob")).await;
        assert_eq!(alice.expect().await["method"], "peer.joined");

        // Alice's TCP connection dies without a close frame.
        drop(alice);
        counts_until(&server, Duration::from_secs(5), |c| c.connections == 1).await;
        bob.request(2, "peer.offer", json!({"to": "alice", "sdp": "v=0 held"})).await;
        assert_eq!(bob.expect().await, json!({"jsonrpc": "2.0", "id": 2, "result": {}}));

        let mut again = Raw::connect(&server).await;
        again
            .request(1, "peer.announce", json!({"room": "r", "peer_id": "alice", "resume": token}))
            .await;
        let v = again.expect().await;
        assert_eq!(v["result"]["resumed"], json!(true), "{v}");
        assert_eq!(v["result"]["peers"][0]["peer_id"], "bob");
        assert_eq!(
            again.expect().await,
            json!({"jsonrpc": "2.0", "method": "peer.offer", "params": {"from": "bob", "sdp": "v=0 held"}})
        );
        // Bob heard of none of it.
        let quiet = tokio::time::timeout(Duration::from_millis(300), bob.recv()).await;
        assert!(quiet.is_err(), "bob got {quiet:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_place_times_out_after_the_grace() {
    bounded(async {
        let server = server_with(SignalServerConfig {
            rooms: ServerConfig {
                resume_grace: Duration::from_millis(600),
                ..ServerConfig::default()
            },
            ..SignalServerConfig::default()
        })
        .await;
        let mut alice = Raw::connect(&server).await;
        assert_eq!(
            alice.announce(1, "r", Some("alice")).await["resume_grace_s"],
            json!(1)
        );
        let mut bob = Raw::connect(&server).await;
        bob.announce(1, "r", Some("bob")).await;
        let dropped = std::time::Instant::now();
        drop(alice);
        let left = bob.expect().await;
        let waited = dropped.elapsed();
        assert_eq!(
            left["params"],
            json!({"peer_id": "alice", "reason": "timeout"}),
            "{left}"
        );
        assert!(
            waited >= Duration::from_millis(550),
            "left after {waited:?}"
        );
        counts_until(&server, Duration::from_secs(5), |c| {
            c.rooms == 1 && c.connections == 1
        })
        .await;
    })
    .await;
}
