//! The signaling server: WebSocket and HTTP transport around the sans-IO [`Server`]
//!
//! One task owns the [`Server`] and its timer; every connection has a reader task and a
//! writer task that only do transport work, so that a client that stops reading cannot stop
//! its pings, its idle timeout or anybody else:
//!
//! * the port answers plain HTTP too: `GET /` serves the browser page (embedded in the
//!   binary), `GET /healthz` answers 200, and a WebSocket upgrade on `/` or `/rpc` whose
//!   `Origin` passes the allowlist becomes a signaling connection;
//! * connections are capped in total and per source address (IPv6 per /64) before any
//!   handshake; the logic closes connections that do not announce in time;
//! * the reader paces what a client sends at a few times the logic's rate limits, so a
//!   flooder is slowed at its own socket, and drops a connection silent for `idle_timeout`;
//! * the writer sends what the logic queued and pings; a write that makes no progress for
//!   `write_timeout` drops that connection (the slow reader), and it reports written frames
//!   back so that the logic refuses relays to, or drops, a connection that does not read;
//! * a frame above the transport's hard cap closes the connection; anything above the
//!   protocol's 64 KiB but below that cap reaches the logic, which answers `-32004`.
//!
//! With `metrics_addr` set, a second listener serves Prometheus text at `/metrics`. With
//! `redis` set, the server is one node of several sharing rooms through Redis (see
//! [`RedisConfig`]); without it, nothing about Redis runs.

mod cluster;
mod http;
mod metrics;

pub use self::cluster::RedisConfig;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_util::{SinkExt, StreamExt};
use meshrtc::signal::server::{
    ClaimOutcome, ClusterEvent, ClusterMember, ConnId, Place, Server, ServerConfig, ServerOutput,
    Timestamp,
};
use meshrtc::signal::{LeftReason, RoomId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::http::{normalize_origin, ConnStream, Head, Progress, Response};
use self::metrics::{DriverCounters, Snapshot};
use crate::error::ServerError;

type Result<T> = std::result::Result<T, ServerError>;

/// The browser page `GET /` serves
const PAGE: &str = include_str!("page/index.html");

/// Inputs queued from connection tasks to the logic task
///
/// Bounded so that flooding clients are slowed down at their own sockets instead of
/// growing the server's memory.
const SERVER_QUEUE: usize = 4096;

/// How long a closing connection waits for the client's close frame
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames the writer sends before it flushes and reports them written
const WRITE_BATCH: usize = 64;

type Ws = WebSocketSender<TokioAdapter<ConnStream>>;
type WsRx = WebSocketReceiver<TokioAdapter<ConnStream>>;

/// How a [`SignalServer`] behaves
///
/// The defaults suit a public server holding thousands of connections; every limit that
/// a client's behaviour runs into is here or in [`ServerConfig`].
#[derive(Debug, Clone)]
pub struct SignalServerConfig {
    /// Rooms, limits, resume, secrets and ICE servers of the server logic
    pub rooms: ServerConfig,
    /// How often the server pings each connection (contract: 15 s)
    pub ping_interval: Duration,
    /// A connection silent for this long is dropped as `timeout` (contract: 45 s)
    pub idle_timeout: Duration,
    /// Largest WebSocket message the transport reads before closing the connection
    ///
    /// Above [`ServerConfig::max_frame_bytes`], so that oversize frames up to it reach the
    /// logic, which answers them with `-32004`; it also bounds what a client can make the
    /// server buffer (default 256 KiB).
    pub max_ws_message: usize,
    /// How long the HTTP request head and WebSocket handshake may take (default 10 s)
    pub handshake_timeout: Duration,
    /// A write that makes no progress for this long drops its connection (default 10 s):
    /// the client does not read
    pub write_timeout: Duration,
    /// Connections held at once; more are answered 503 and closed (default 10 000)
    pub max_connections: usize,
    /// Connections held at once from one source address (IPv6: one /64) (default 256)
    pub max_connections_per_ip: usize,
    /// Frames per second the reader passes to the logic before it stops reading the
    /// socket for a while (default 4 × the logic's frame rate limit): floods slow down at
    /// the flooder's socket while the logic still sees enough to answer `-32005`
    pub read_frames_per_sec: u32,
    /// Bytes per second the reader passes to the logic, as `read_frames_per_sec`
    /// (default 4 × the logic's byte rate limit)
    pub read_bytes_per_sec: u32,
    /// Origins allowed to open a WebSocket (e.g. `https://app.example`); a handshake whose
    /// `Origin` is present and not listed gets 403. Empty (the default) allows any; clients
    /// without `Origin` (non-browsers) are always allowed. The server's own page needs its
    /// origin listed too.
    pub allowed_origins: Vec<String>,
    /// Where to serve Prometheus text at `/metrics` (default: nowhere)
    pub metrics_addr: Option<SocketAddr>,
    /// Share rooms with other nodes through this Redis (default: none, the server holds
    /// its rooms alone); sets `rooms.node`
    pub redis: Option<RedisConfig>,
}

impl Default for SignalServerConfig {
    fn default() -> Self {
        let rooms = ServerConfig::default();
        Self {
            read_frames_per_sec: rooms.rate_limit_per_sec.saturating_mul(4),
            read_bytes_per_sec: rooms.rate_limit_bytes_per_sec.saturating_mul(4),
            rooms,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            max_ws_message: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            allowed_origins: Vec::new(),
            metrics_addr: None,
            redis: None,
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
    /// Peers in rooms, held places included
    pub peers: usize,
    /// Places held for a dropped connection
    pub held: usize,
}

/// A running signaling server
///
/// Dropping it stops the server (like [`shutdown`](Self::shutdown), without waiting).
#[derive(Debug)]
pub struct SignalServer {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

/// What the accept loop, the connection tasks and the handle share
#[derive(Debug)]
struct Shared {
    config: SignalServerConfig,
    /// Normalized `allowed_origins`
    origins: Vec<String>,
    logic: mpsc::Sender<ServerInput>,
    tasks: AtomicUsize,
    limits: Mutex<ConnLimits>,
    counters: DriverCounters,
}

impl SignalServer {
    /// Listens on `addr` with the default configuration
    ///
    /// `127.0.0.1:0` picks a free port; see [`local_addr`](Self::local_addr).
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        Self::bind_with(addr, SignalServerConfig::default()).await
    }

    /// Listens on `addr` (and `config.metrics_addr`) with `config`; must be called inside a
    /// tokio runtime
    ///
    /// With `config.redis`, Redis must answer now (later outages are waited out).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use meshrtc_tokio::{SignalServer, SignalServerConfig};
    ///
    /// # async fn run() -> Result<(), meshrtc_tokio::ServerError> {
    /// let config = SignalServerConfig {
    ///     metrics_addr: Some("127.0.0.1:9090".parse().unwrap()),
    ///     ..SignalServerConfig::default()
    /// };
    /// let server = SignalServer::bind_with("0.0.0.0:8787".parse().unwrap(), config).await?;
    /// // Peers connect to the WebSocket; browsers open the page at the same address.
    /// println!("{} and http://{}/", server.url(), server.local_addr());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn bind_with(addr: SocketAddr, mut config: SignalServerConfig) -> Result<Self> {
        if let Some(redis) = &config.redis {
            config.rooms.node = Some(redis.node.clone());
        }
        let listen_err = |addr| move |source| ServerError::Listen { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(listen_err(addr))?;
        let local_addr = listener.local_addr().map_err(listen_err(addr))?;
        let metrics = match config.metrics_addr {
            Some(at) => {
                let l = TcpListener::bind(at).await.map_err(listen_err(at))?;
                let bound = l.local_addr().map_err(listen_err(at))?;
                Some((l, bound))
            }
            None => None,
        };
        let (logic_tx, logic_rx) = mpsc::channel(SERVER_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            origins: config
                .allowed_origins
                .iter()
                .map(|o| normalize_origin(o))
                .collect(),
            config,
            logic: logic_tx,
            tasks: AtomicUsize::new(0),
            limits: Mutex::new(ConnLimits::default()),
            counters: DriverCounters::default(),
        });
        let cluster = match &shared.config.redis {
            Some(redis) => Some(
                cluster::start(
                    redis,
                    &shared.config.rooms,
                    shared.logic.clone(),
                    stop_rx.clone(),
                )
                .await?,
            ),
            None => None,
        };
        tokio::spawn(run_logic(
            Server::new(shared.config.rooms.clone()),
            logic_rx,
            cluster,
        ));
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx.clone()));
        let metrics_addr = metrics.map(|(l, bound)| {
            tokio::spawn(serve_metrics(l, shared.clone(), stop_rx));
            bound
        });
        tracing::debug!(%local_addr, ?metrics_addr, "signaling server listening");
        Ok(Self {
            local_addr,
            metrics_addr,
            shared,
            stop,
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

    /// Where `/metrics` is served, when `metrics_addr` was configured
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Rooms, logic connections and connection tasks right now
    pub async fn counts(&self) -> Result<ServerCounts> {
        let s = self.shared.snapshot().await?;
        Ok(ServerCounts {
            rooms: s.rooms,
            connections: s.connections,
            tasks: self.shared.tasks.load(Ordering::SeqCst),
            peers: s.peers,
            held: s.held,
        })
    }

    /// The metrics as Prometheus text (format 0.0.4), as `/metrics` serves them
    pub async fn metrics_text(&self) -> Result<String> {
        self.shared.metrics_text().await
    }

    /// Stops accepting, closes every connection and waits (up to a few seconds) for the
    /// connection tasks and the logic task to end
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.accept).await;
        let wait = async {
            while self.shared.tasks.load(Ordering::SeqCst) > 0 {
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

impl Shared {
    async fn snapshot(&self) -> Result<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.logic
            .send(ServerInput::Snapshot(tx))
            .await
            .map_err(|_| ServerError::Stopped)?;
        rx.await.map_err(|_| ServerError::Stopped)
    }

    async fn metrics_text(&self) -> Result<String> {
        let snapshot = self.snapshot().await?;
        let tasks = self.tasks.load(Ordering::SeqCst);
        Ok(metrics::render(&snapshot, &self.counters, tasks))
    }

    fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.origins.is_empty() => true,
            Some(o) => self.origins.contains(&normalize_origin(o)),
        }
    }
}

/// What connection tasks tell the logic task
#[derive(Debug)]
enum ServerInput {
    Connect {
        conn: ConnId,
        out: mpsc::UnboundedSender<ConnOutput>,
    },
    Text {
        conn: ConnId,
        text: String,
    },
    Binary {
        conn: ConnId,
        len: usize,
    },
    Written {
        conn: ConnId,
        frames: usize,
    },
    Disconnect {
        conn: ConnId,
        reason: LeftReason,
    },
    Snapshot(oneshot::Sender<Snapshot>),
    /// The room store decided about a claim
    Claimed {
        conn: ConnId,
        outcome: ClaimOutcome,
    },
    /// Another node told us something
    Cluster(ClusterEvent),
    /// The room store's members of a room
    Listing {
        room: RoomId,
        members: Vec<ClusterMember>,
    },
    /// This node's places and rooms, for the room store
    Places(oneshot::Sender<(Vec<Place>, Vec<RoomId>)>),
}

/// What the logic task tells one connection's writer
///
/// Unbounded: the logic itself bounds what waits unwritten per connection
/// ([`ServerConfig::max_queue_bytes`]).
#[derive(Debug)]
enum ConnOutput {
    Text(String),
    Close,
}

/// Both clocks now, as the logic takes them
fn timestamp() -> Timestamp {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::new(tokio::time::Instant::now().into_std(), unix)
}

/// Sleeps until `deadline`, or forever without one
async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The one task that owns the logic: feeds it inputs and its timer, delivers its outputs
async fn run_logic(
    mut logic: Server,
    mut rx: mpsc::Receiver<ServerInput>,
    cluster: Option<cluster::Cluster>,
) {
    let mut conns: HashMap<ConnId, mpsc::UnboundedSender<ConnOutput>> = HashMap::new();
    loop {
        let deadline = logic.poll_timeout();
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break };
                let now = timestamp();
                match input {
                    ServerInput::Connect { conn, out } => {
                        conns.insert(conn, out);
                        logic.handle_connect(now, conn);
                    }
                    ServerInput::Text { conn, text } => logic.handle_text(now, conn, &text),
                    ServerInput::Binary { conn, len } => logic.handle_binary(now, conn, len),
                    ServerInput::Written { conn, frames } => {
                        logic.handle_written(now, conn, frames);
                    }
                    ServerInput::Disconnect { conn, reason } => {
                        conns.remove(&conn);
                        logic.handle_disconnect(now, conn, reason);
                    }
                    ServerInput::Snapshot(reply) => {
                        let _ = reply.send(Snapshot {
                            rooms: logic.room_count(),
                            peers: logic.peer_count(),
                            held: logic.held_count(),
                            connections: logic.connection_count(),
                            stats: logic.stats().clone(),
                        });
                    }
                    ServerInput::Claimed { conn, outcome } => {
                        logic.handle_claim(now, conn, outcome);
                    }
                    ServerInput::Cluster(event) => logic.handle_cluster_event(now, event),
                    ServerInput::Listing { room, members } => {
                        logic.handle_room_listing(now, &room, members);
                    }
                    ServerInput::Places(reply) => {
                        let _ = reply.send((logic.places(), logic.node_rooms()));
                    }
                }
            }
            () = sleep_until_opt(deadline) => logic.handle_timeout(timestamp()),
        }
        while let Some(output) = logic.poll_output() {
            match output {
                ServerOutput::Send { conn, text } => {
                    if let Some(tx) = conns.get(&conn) {
                        let _ = tx.send(ConnOutput::Text(text));
                    }
                }
                ServerOutput::Close { conn } => {
                    if let Some(tx) = conns.remove(&conn) {
                        let _ = tx.send(ConnOutput::Close);
                    }
                }
            }
        }
        while let Some(out) = logic.poll_cluster() {
            match &cluster {
                Some(c) => c.push(out),
                None => tracing::error!("the logic asked for a room store it does not have"),
            }
        }
    }
}

/// Connections held, in total and per source address
#[derive(Debug, Default)]
struct ConnLimits {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The source address a per-address cap counts: IPv4 as is, IPv6 by its /64 (one host
/// usually has a whole /64), IPv4-mapped IPv6 as IPv4
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// A connection counted against the caps until dropped
struct Admission {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Admission {
    /// Counts a connection from `ip`, or says which cap it would pass
    fn try_new(shared: &Arc<Shared>, ip: IpAddr) -> std::result::Result<Self, &'static str> {
        let ip = ip_key(ip);
        let cfg = &shared.config;
        let mut limits = shared.limits.lock().expect("limits lock");
        if limits.total >= cfg.max_connections {
            DriverCounters::bump(&shared.counters.refused_total);
            return Err("max_connections");
        }
        let here = limits.per_ip.entry(ip).or_default();
        if *here >= cfg.max_connections_per_ip {
            DriverCounters::bump(&shared.counters.refused_ip);
            return Err("max_connections_per_ip");
        }
        *here += 1;
        limits.total += 1;
        shared.tasks.fetch_add(1, Ordering::SeqCst);
        Ok(Self {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut limits = self.shared.limits.lock().expect("limits lock");
        limits.total -= 1;
        if let Some(n) = limits.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                limits.per_ip.remove(&self.ip);
            }
        }
        self.shared.tasks.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut next_conn = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                DriverCounters::bump(&shared.counters.accepted);
                let admission = match Admission::try_new(&shared, remote.ip()) {
                    Ok(a) => a,
                    Err(cap) => {
                        tracing::debug!(%remote, cap, "connection refused");
                        // Best effort, without waiting: the socket is dropped right after.
                        let _ = tcp.try_write(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        continue;
                    }
                };
                next_conn += 1;
                let conn = ConnId(next_conn);
                tokio::spawn(serve(
                    tcp,
                    remote,
                    conn,
                    shared.clone(),
                    stop.clone(),
                    admission,
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

/// One TCP connection: its request head, then a plain HTTP answer or a WebSocket
async fn serve(
    tcp: TcpStream,
    remote: SocketAddr,
    conn: ConnId,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    _admission: Admission,
) {
    let _ = tcp.set_nodelay(true);
    let cfg = &shared.config;
    let progress = Progress::new();
    let mut stream = ConnStream::new(tcp, progress.clone());
    let head = match tokio::time::timeout(cfg.handshake_timeout, stream.read_head()).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%remote, %e, "bad request head");
            DriverCounters::bump(&shared.counters.bad_requests);
            let status = if e.to_string().contains("too large") {
                Response::text(
                    431,
                    "Request Header Fields Too Large",
                    "request head too large\n",
                )
            } else {
                Response::text(400, "Bad Request", "bad request\n")
            };
            stream.respond(&status, false).await;
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "request head not received in time");
            DriverCounters::bump(&shared.counters.bad_requests);
            return;
        }
    };
    if !head.upgrade {
        DriverCounters::bump(&shared.counters.http_requests);
        return serve_http(&mut stream, &head).await;
    }
    if head.path != "/" && head.path != "/rpc" {
        let r = Response::text(404, "Not Found", "not found: use / or /rpc\n");
        return stream.respond(&r, false).await;
    }
    if !shared.origin_allowed(head.origin.as_deref()) {
        tracing::debug!(%remote, origin = ?head.origin, "origin not allowed");
        DriverCounters::bump(&shared.counters.refused_origin);
        let r = Response::text(403, "Forbidden", "origin not allowed\n");
        return stream.respond(&r, false).await;
    }
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(cfg.max_ws_message))
        .max_frame_size(Some(cfg.max_ws_message))
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024);
    // Path and origin were checked on the head above.
    let handshake = async_tungstenite::tokio::accept_async_with_config(stream, Some(ws_config));
    let ws = match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%remote, %e, "websocket handshake failed");
            DriverCounters::bump(&shared.counters.bad_requests);
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "websocket handshake timed out");
            DriverCounters::bump(&shared.counters.bad_requests);
            return;
        }
    };
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    if shared
        .logic
        .send(ServerInput::Connect { conn, out: out_tx })
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(%remote, ?conn, "connection open");
    let (sink, stream) = ws.split();
    let writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        conn,
        shared.clone(),
        progress,
        stop.clone(),
    ));
    let reason = read_loop(stream, conn, &shared, writer).await;
    if let Some(reason) = reason {
        // Harmless when the logic already forgot the connection.
        let _ = shared
            .logic
            .send(ServerInput::Disconnect { conn, reason })
            .await;
    }
    tracing::debug!(?conn, ?reason, "connection closed");
}

/// Answers a plain HTTP request: the page, the health check, or why not
async fn serve_http(stream: &mut ConnStream, head: &Head) {
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        let r = Response {
            headers: &[("Allow", "GET, HEAD")],
            ..Response::text(405, "Method Not Allowed", "use GET\n")
        };
        return stream.respond(&r, false).await;
    }
    let r = match head.path.as_str() {
        "/" | "/index.html" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/html; charset=utf-8",
            headers: &[],
            body: PAGE.as_bytes(),
        },
        "/healthz" => Response::text(200, "OK", "ok\n"),
        "/rpc" => Response {
            headers: &[("Upgrade", "websocket")],
            ..Response::text(426, "Upgrade Required", "this is a WebSocket endpoint\n")
        },
        _ => Response::text(404, "Not Found", "not found\n"),
    };
    stream.respond(&r, head_only).await
}

/// Why a writer ended
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteEnd {
    /// The logic closed the connection (it already forgot it)
    Closed,
    /// The server is stopping
    Stopped,
    /// A write made no progress for `write_timeout`: the client does not read
    Stalled,
    /// The socket failed
    Failed,
}

/// Runs `fut` (a write), giving up when the socket accepts no byte for `timeout`
async fn unless_stalled<F: std::future::Future>(
    fut: F,
    progress: &Progress,
    timeout: Duration,
) -> Option<F::Output> {
    let start = std::time::Instant::now();
    tokio::pin!(fut);
    loop {
        let last = progress.last().max(start);
        tokio::select! {
            out = &mut fut => return Some(out),
            () = tokio::time::sleep_until((last + timeout).into()) => {
                if progress.last().max(start) + timeout <= std::time::Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// Sends what the logic queued for one connection, and its pings
async fn write_loop(
    mut sink: Ws,
    mut out_rx: mpsc::UnboundedReceiver<ConnOutput>,
    conn: ConnId,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> WriteEnd {
    let cfg = &shared.config;
    let mut ping = tokio::time::interval(cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of an interval is immediate.
    ping.tick().await;
    loop {
        let first = tokio::select! {
            out = out_rx.recv() => out,
            _ = ping.tick() => {
                let send = sink.send(Message::Ping(Vec::new().into()));
                match unless_stalled(send, &progress, cfg.write_timeout).await {
                    Some(Ok(())) => continue,
                    Some(Err(_)) => return WriteEnd::Failed,
                    None => return stalled(conn, &shared),
                }
            }
            _ = stop.changed() => {
                close_gracefully(&mut sink).await;
                return WriteEnd::Stopped;
            }
        };
        let Some(ConnOutput::Text(text)) = first else {
            // The logic has forgotten this connection: peer.disconnect, evicted, replaced.
            close_gracefully(&mut sink).await;
            return WriteEnd::Closed;
        };
        let mut batch = vec![text];
        let mut close_after = false;
        while batch.len() < WRITE_BATCH {
            match out_rx.try_recv() {
                Ok(ConnOutput::Text(t)) => batch.push(t),
                Ok(ConnOutput::Close) => {
                    close_after = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let frames = batch.len();
        let write = async {
            for text in batch {
                sink.feed(Message::text(text)).await?;
            }
            sink.flush().await
        };
        match unless_stalled(write, &progress, cfg.write_timeout).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::debug!(?conn, %e, "send failed");
                return WriteEnd::Failed;
            }
            None => return stalled(conn, &shared),
        }
        let written = ServerInput::Written { conn, frames };
        if shared.logic.send(written).await.is_err() {
            return WriteEnd::Stopped;
        }
        if close_after {
            close_gracefully(&mut sink).await;
            return WriteEnd::Closed;
        }
    }
}

fn stalled(conn: ConnId, shared: &Shared) -> WriteEnd {
    tracing::debug!(?conn, "writes stalled: the client does not read; dropping");
    DriverCounters::bump(&shared.counters.write_stalls);
    WriteEnd::Stalled
}

/// Sends a close frame, waiting a little for it to go out
async fn close_gracefully(sink: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close(None)).await;
}

/// A token bucket that delays instead of refusing: how long to stop reading
#[derive(Debug)]
struct Pace {
    per_sec: f64,
    burst: f64,
    level: f64,
    last: tokio::time::Instant,
}

impl Pace {
    fn new(per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_sec: f64::from(per_sec.max(1)),
            burst,
            level: burst,
            last: tokio::time::Instant::now(),
        }
    }

    /// Spends `n`; returns how long to wait until the bucket is no longer in debt
    fn spend(&mut self, n: f64) -> Duration {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.level = (self.level + refill).min(self.burst) - n;
        self.last = now;
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.per_sec)
        }
    }
}

/// Reads frames and hands them to the logic until the connection ends (the writer ends it
/// when the logic closes it or the server stops); returns what to tell the logic (`None`:
/// nothing, it already forgot the connection)
async fn read_loop(
    mut stream: WsRx,
    conn: ConnId,
    shared: &Shared,
    mut writer: JoinHandle<WriteEnd>,
) -> Option<LeftReason> {
    let cfg = &shared.config;
    let mut frames = Pace::new(
        cfg.read_frames_per_sec,
        cfg.rooms.rate_limit_burst.saturating_mul(2),
    );
    let mut bytes = Pace::new(
        cfg.read_bytes_per_sec,
        cfg.rooms.rate_limit_bytes_burst.saturating_mul(2),
    );
    let mut last_heard = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            msg = stream.next() => {
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
                        writer.abort();
                        break Some(LeftReason::Disconnect);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(?conn, %e, "connection error");
                        break Some(LeftReason::Disconnect);
                    }
                };
                last_heard = tokio::time::Instant::now();
                let len = match &input {
                    ServerInput::Text { text, .. } => text.len(),
                    ServerInput::Binary { len, .. } => *len,
                    _ => 0,
                };
                if shared.logic.send(input).await.is_err() {
                    break None;
                }
                let wait = frames.spend(1.0).max(bytes.spend(len as f64));
                if !wait.is_zero() {
                    // Stop reading for a while: TCP pushes back on the flooder.
                    tokio::time::sleep(wait).await;
                }
            }
            () = tokio::time::sleep_until(last_heard + cfg.idle_timeout) => {
                tracing::debug!(?conn, "no answer to pings; dropping");
                DriverCounters::bump(&shared.counters.idle_timeouts);
                break Some(LeftReason::Timeout);
            }
            end = &mut writer => {
                return match end {
                    Ok(WriteEnd::Closed | WriteEnd::Stopped) => {
                        // Give the client a moment to answer our close frame.
                        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
                        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
                        None
                    }
                    Ok(WriteEnd::Stalled) => Some(LeftReason::Kicked),
                    Ok(WriteEnd::Failed) | Err(_) => Some(LeftReason::Disconnect),
                };
            }
        }
    };
    writer.abort();
    reason
}

/// Scrapes served at once on the metrics listener; more are closed unanswered
const METRICS_CONCURRENCY: usize = 16;

/// Serves `GET /metrics` on the metrics listener
async fn serve_metrics(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONCURRENCY));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut stream = ConnStream::new(tcp, Progress::new());
            let head = tokio::time::timeout(Duration::from_secs(5), stream.read_head()).await;
            let Ok(Ok(Some(head))) = head else {
                return;
            };
            if head.path != "/metrics" || (head.method != "GET" && head.method != "HEAD") {
                let r = Response::text(404, "Not Found", "metrics are at /metrics\n");
                return stream.respond(&r, false).await;
            }
            let Ok(text) = shared.metrics_text().await else {
                let r = Response::text(503, "Service Unavailable", "server stopping\n");
                return stream.respond(&r, false).await;
            };
            let r = Response {
                status: 200,
                reason: "OK",
                content_type: metrics::CONTENT_TYPE,
                headers: &[],
                body: text.as_bytes(),
            };
            stream.respond(&r, head.method == "HEAD").await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_page_reads_its_room_from_the_query() {
        assert!(PAGE.contains("location.search"));
        assert!(PAGE.contains("\"room\""));
    }
}
