//! The signaling server: WebSocket transport around the sans-IO [`Server`]
//!
//! One task owns the [`Server`]; one task per connection moves frames between its WebSocket
//! and the logic task over channels. The connection tasks only do transport work: the
//! handshake (paths `/` and `/rpc`), pings, the idle timeout and a hard cap on frame size
//! far above the protocol's limit, so that the logic itself answers oversize frames with
//! `-32004` and the connection stays open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use meshrtc::signal::server::{ConnId, Server, ServerConfig, ServerOutput};
use meshrtc::signal::LeftReason;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::ServerError;

type Result<T> = std::result::Result<T, ServerError>;

/// Frames queued from connection tasks to the logic task
///
/// Bounded so that a flooding client is slowed down at its own socket instead of growing
/// the server's memory.
const SERVER_QUEUE: usize = 4096;

/// How long a closing connection waits for the client's close frame
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a [`SignalServer`] behaves
#[derive(Debug, Clone)]
pub struct SignalServerConfig {
    /// Room size, frame limit, rate limit and seed of the server logic
    pub rooms: ServerConfig,
    /// How often the server pings each connection (contract: 15 s)
    pub ping_interval: Duration,
    /// A connection silent for this long is dropped as `timeout` (contract: 45 s)
    pub idle_timeout: Duration,
    /// Largest WebSocket message the transport reads before closing the connection
    ///
    /// Must be well above [`ServerConfig::max_frame_bytes`] so that oversize frames reach
    /// the logic, which answers them with `-32004` (default 1 MiB).
    pub max_ws_message: usize,
    /// How long the WebSocket handshake may take
    pub handshake_timeout: Duration,
    /// Frames queued for one connection before it counts as too slow and is dropped
    pub outbound_queue: usize,
}

impl Default for SignalServerConfig {
    fn default() -> Self {
        Self {
            rooms: ServerConfig::default(),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            max_ws_message: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            outbound_queue: 1024,
        }
    }
}

/// Live counts of a running server
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCounts {
    /// Rooms with at least one peer
    pub rooms: usize,
    /// Connections the logic knows (announced or not)
    pub connections: usize,
    /// Connection tasks still running (including ones in their handshake)
    pub tasks: usize,
}

/// A running signaling server
///
/// Dropping it stops the server (like [`shutdown`](Self::shutdown), without waiting).
#[derive(Debug)]
pub struct SignalServer {
    local_addr: SocketAddr,
    logic: mpsc::Sender<ServerInput>,
    stop: watch::Sender<bool>,
    tasks: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl SignalServer {
    /// Listens on `addr` with the default configuration
    ///
    /// `127.0.0.1:0` picks a free port; see [`local_addr`](Self::local_addr).
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        Self::bind_with(addr, SignalServerConfig::default()).await
    }

    /// Listens on `addr` with `config`; must be called inside a tokio runtime
    pub async fn bind_with(addr: SocketAddr, config: SignalServerConfig) -> Result<Self> {
        let listen_err = |source| ServerError::Listen { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
        let local_addr = listener.local_addr().map_err(listen_err)?;
        let (server_tx, server_rx) = mpsc::channel(SERVER_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let tasks = Arc::new(AtomicUsize::new(0));
        let logic = Server::new(config.rooms.clone());
        tokio::spawn(run_server(logic, server_rx));
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::new(config),
            server_tx.clone(),
            stop_rx,
            tasks.clone(),
        ));
        tracing::debug!(%local_addr, "signaling server listening");
        Ok(Self {
            local_addr,
            logic: server_tx,
            stop,
            tasks,
            accept,
        })
    }

    /// The bound address
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL clients connect to, `ws://ADDR/`
    pub fn url(&self) -> String {
        format!("ws://{}/", self.local_addr)
    }

    /// Rooms, logic connections and connection tasks right now
    pub async fn counts(&self) -> Result<ServerCounts> {
        let (tx, rx) = oneshot::channel();
        self.logic
            .send(ServerInput::Counts(tx))
            .await
            .map_err(|_| ServerError::Stopped)?;
        let (rooms, connections) = rx.await.map_err(|_| ServerError::Stopped)?;
        Ok(ServerCounts {
            rooms,
            connections,
            tasks: self.tasks.load(Ordering::SeqCst),
        })
    }

    /// Stops accepting, closes every connection and waits (up to a few seconds) for the
    /// connection tasks and the logic task to end
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.accept).await;
        let wait = async {
            while self.tasks.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE * 3, wait).await;
        // The logic task ends once the last sender (ours, dropped now) is gone.
    }
}

impl Drop for SignalServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// What connection tasks tell the logic task
#[derive(Debug)]
enum ServerInput {
    Connect {
        conn: ConnId,
        out: mpsc::Sender<ConnOutput>,
    },
    Text {
        conn: ConnId,
        text: String,
    },
    Binary {
        conn: ConnId,
        len: usize,
    },
    Disconnect {
        conn: ConnId,
        reason: LeftReason,
    },
    Counts(oneshot::Sender<(usize, usize)>),
}

/// What the logic task tells one connection task
#[derive(Debug)]
enum ConnOutput {
    Text(String),
    Close,
}

/// The one task that owns the logic
async fn run_server(mut logic: Server, mut rx: mpsc::Receiver<ServerInput>) {
    let mut conns: HashMap<ConnId, mpsc::Sender<ConnOutput>> = HashMap::new();
    while let Some(input) = rx.recv().await {
        let now = tokio::time::Instant::now().into_std();
        match input {
            ServerInput::Connect { conn, out } => {
                conns.insert(conn, out);
                logic.handle_connect(now, conn);
            }
            ServerInput::Text { conn, text } => logic.handle_text(now, conn, &text),
            ServerInput::Binary { conn, len } => logic.handle_binary(now, conn, len),
            ServerInput::Disconnect { conn, reason } => {
                conns.remove(&conn);
                logic.handle_disconnect(now, conn, reason);
            }
            ServerInput::Counts(reply) => {
                let _ = reply.send((logic.room_count(), logic.connection_count()));
            }
        }
        // Drain; a connection whose queue is full is too slow to keep up and is dropped,
        // which may produce more output (peer.left), so loop until nothing is left.
        loop {
            let mut too_slow = Vec::new();
            while let Some(output) = logic.poll_output() {
                match output {
                    ServerOutput::Send { conn, text } => {
                        let Some(tx) = conns.get(&conn) else {
                            continue;
                        };
                        if tx.try_send(ConnOutput::Text(text)).is_err() {
                            too_slow.push(conn);
                        }
                    }
                    ServerOutput::Close { conn } => {
                        // Dropping the sender also ends the connection if its queue is full.
                        if let Some(tx) = conns.remove(&conn) {
                            let _ = tx.try_send(ConnOutput::Close);
                        }
                    }
                }
            }
            if too_slow.is_empty() {
                break;
            }
            for conn in too_slow {
                if conns.remove(&conn).is_some() {
                    tracing::debug!(?conn, "connection too slow to read; dropped");
                    logic.handle_disconnect(now, conn, LeftReason::Kicked);
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<SignalServerConfig>,
    logic: mpsc::Sender<ServerInput>,
    mut stop: watch::Receiver<bool>,
    tasks: Arc<AtomicUsize>,
) {
    let mut next_conn = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                next_conn += 1;
                let conn = ConnId(next_conn);
                let task = TaskGuard::new(tasks.clone());
                tokio::spawn(serve(
                    tcp,
                    remote,
                    conn,
                    config.clone(),
                    logic.clone(),
                    stop.clone(),
                    task,
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts a live connection task from creation to drop
struct TaskGuard(Arc<AtomicUsize>);

impl TaskGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts only the contract's paths
#[allow(
    clippy::result_large_err,
    reason = "the callback signature is tungstenite's"
)]
fn check_path(
    request: &Request,
    response: Response,
) -> std::result::Result<Response, ErrorResponse> {
    match request.uri().path() {
        "/" | "/rpc" => Ok(response),
        _ => {
            let mut refusal = ErrorResponse::new(Some("not found: use / or /rpc".into()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    }
}

/// One connection: handshake, then frames both ways until either side ends it
async fn serve(
    tcp: TcpStream,
    remote: SocketAddr,
    conn: ConnId,
    config: Arc<SignalServerConfig>,
    logic: mpsc::Sender<ServerInput>,
    mut stop: watch::Receiver<bool>,
    _task: TaskGuard,
) {
    let _ = tcp.set_nodelay(true);
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_ws_message))
        .max_frame_size(Some(config.max_ws_message));
    let handshake =
        async_tungstenite::tokio::accept_hdr_async_with_config(tcp, check_path, Some(ws_config));
    let mut ws = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%remote, %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "websocket handshake timed out");
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel(config.outbound_queue.max(1));
    if logic
        .send(ServerInput::Connect { conn, out: out_tx })
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(%remote, ?conn, "connection open");

    let mut ping = tokio::time::interval(config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of an interval is immediate.
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            msg = ws.next() => {
                let input = match msg {
                    Some(Ok(Message::Text(text))) => ServerInput::Text { conn, text: text.as_str().to_owned() },
                    Some(Ok(Message::Binary(data))) => ServerInput::Binary { conn, len: data.len() },
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        last_heard = tokio::time::Instant::now();
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => break Some(LeftReason::Disconnect),
                    Some(Err(WsError::Capacity(e))) => {
                        tracing::debug!(?conn, %e, "frame above the transport's hard cap; closing");
                        let frame = CloseFrame { code: CloseCode::Size, reason: "message too large".into() };
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
                        break Some(LeftReason::Disconnect);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(?conn, %e, "connection error");
                        break Some(LeftReason::Disconnect);
                    }
                };
                last_heard = tokio::time::Instant::now();
                if logic.send(input).await.is_err() {
                    break None;
                }
            }
            out = out_rx.recv() => match out {
                Some(ConnOutput::Text(text)) => {
                    if let Err(e) = ws.send(Message::text(text)).await {
                        tracing::debug!(?conn, %e, "send failed");
                        break Some(LeftReason::Disconnect);
                    }
                }
                // The logic has forgotten this connection (peer.disconnect, or too slow).
                Some(ConnOutput::Close) | None => {
                    close_gracefully(&mut ws).await;
                    break None;
                }
            },
            _ = ping.tick() => {
                if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break Some(LeftReason::Disconnect);
                }
            }
            () = tokio::time::sleep_until(last_heard + config.idle_timeout) => {
                tracing::debug!(?conn, "no answer to pings; dropping");
                break Some(LeftReason::Timeout);
            }
            _ = stop.changed() => {
                // The server is going away: no peer.left for anyone, the peers' media
                // connections outlive their signaling.
                close_gracefully(&mut ws).await;
                break None;
            }
        }
    };
    if let Some(reason) = reason {
        // Harmless when the logic already forgot the connection.
        let _ = logic.send(ServerInput::Disconnect { conn, reason }).await;
    }
    tracing::debug!(?conn, ?reason, "connection closed");
}

async fn close_gracefully(ws: &mut WebSocketStream<TokioAdapter<TcpStream>>) {
    let finish = async {
        if ws.close(None).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, finish).await;
}
