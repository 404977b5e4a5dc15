//! Helpers shared by the scenario tests

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::CandidatePolicy;
use meshrtc_tokio::{
    Event, Events, Session, SessionConfig, SessionHandle, SignalServer, SignalServerConfig,
};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// The most any one test may take
pub const TEST_LIMIT: Duration = Duration::from_secs(40);

/// Runs `f` and fails the test if it takes longer than [`TEST_LIMIT`]
pub async fn bounded<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(TEST_LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {TEST_LIMIT:?}"),
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn server() -> SignalServer {
    SignalServer::bind(loopback()).await.unwrap()
}

pub async fn server_with(config: SignalServerConfig) -> SignalServer {
    SignalServer::bind_with(loopback(), config).await.unwrap()
}

pub fn pid(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

pub fn rid(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

/// A session config for tests: loopback only, seeded from the peer id
pub fn config(url: &str, room: &str, id: &str) -> SessionConfig {
    let mut c = SessionConfig::new(url, rid(room));
    c.session.peer_id = Some(pid(id));
    c.session.participant.seed = id
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    c.session.participant.candidate_policy = CandidatePolicy::LoopbackOnly;
    c
}

pub async fn join(url: &str, room: &str, id: &str) -> (SessionHandle, Events) {
    Session::join(config(url, room, id))
        .await
        .unwrap_or_else(|e| panic!("{id} could not join {room}: {e}"))
}

/// Reads events until `pick` returns something; panics after `limit`
pub async fn wait_for<T>(
    events: &mut Events,
    limit: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let search = async {
        loop {
            let Some(e) = events.recv().await else {
                panic!("event stream ended while waiting");
            };
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    };
    tokio::time::timeout(limit, search)
        .await
        .expect("expected event did not arrive in time")
}

/// The peer of a `PeerConnected` event
pub fn connected(e: &Event) -> Option<PeerId> {
    match e {
        Event::Mesh(meshrtc::Event::PeerConnected { peer, .. }) => Some(peer.clone()),
        _ => None,
    }
}

/// A raw WebSocket client speaking JSON by hand, for the server tests
pub struct Raw {
    pub ws: WebSocketStream<TokioAdapter<TcpStream>>,
}

impl Raw {
    pub async fn connect(server: &SignalServer) -> Self {
        Self::connect_path(server, "/").await.unwrap()
    }

    pub async fn connect_path(server: &SignalServer, path: &str) -> Result<Self, String> {
        Self::connect_addr(server.local_addr(), path).await
    }

    pub async fn connect_addr(addr: SocketAddr, path: &str) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let url = format!("ws://{addr}{path}");
        let (ws, _) = async_tungstenite::tokio::client_async(url, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { ws })
    }

    pub async fn text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    pub async fn binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::binary(data)).await.unwrap();
    }

    pub async fn request(&mut self, id: i64, method: &str, params: Value) {
        let frame = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.text(frame.to_string()).await;
    }

    /// The next JSON frame; `None` if the connection closed
    pub async fn recv(&mut self) -> Option<Value> {
        let next = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("no frame from the server within 5 s")
    }

    pub async fn expect(&mut self) -> Value {
        self.recv().await.expect("connection closed")
    }

    /// Announces and returns the result
    pub async fn announce(&mut self, id: i64, room: &str, peer: Option<&str>) -> Value {
        let mut params = json!({"room": room});
        if let Some(p) = peer {
            params["peer_id"] = json!(p);
        }
        self.request(id, "peer.announce", params).await;
        let v = self.expect().await;
        assert_eq!(v["id"], json!(id), "{v}");
        v["result"].clone()
    }

    /// Reads the next frame and checks it is error `code` for request `id`
    pub async fn expect_error(&mut self, code: i64, id: Value) {
        let v = self.expect().await;
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        assert_eq!(v["error"]["code"], json!(code), "{v}");
        assert_eq!(v["id"], id, "{v}");
        assert!(v.get("result").is_none(), "{v}");
    }
}

/// Polls the server's counts until `done` holds; panics after `limit`
pub async fn counts_until(
    server: &SignalServer,
    limit: Duration,
    done: impl Fn(&meshrtc_tokio::ServerCounts) -> bool,
) -> meshrtc_tokio::ServerCounts {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let c = server.counts().await.unwrap();
        if done(&c) {
            return c;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("server counts did not settle: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
