//! The `meshrtc` command of `contracts/cli.md`: `signal`, `token`, `peer` and `demo`

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand, ValueEnum};
use meshrtc::signal::{PeerId, RoomId};

mod demo;
mod media;
mod metrics;
mod peer;
mod signal;

/// meshrtc: a WebRTC full mesh for small rooms
#[derive(Debug, Parser)]
#[command(name = "meshrtc", version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr: text, or json (one JSON object a line); RUST_LOG sets the level
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format)
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the signaling server (JSON-RPC 2.0 over WebSocket)
    Signal(SignalArgs),
    /// Print a room token (JWT, HS256) for a server started with --token-secret-file
    Token(TokenArgs),
    /// Join a room and connect to every other peer in it
    Peer(PeerArgs),
    /// Start a signaling server and N peers on loopback, full mesh, and report per pair
    Demo(DemoArgs),
}

/// Arguments of `meshrtc signal`
#[derive(Debug, clap::Args)]
struct SignalArgs {
    /// Address to listen on; port 0 picks a free port
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Peers a room holds before announces get "room full"
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    max_peers_per_room: u32,
    /// Seconds a dropped connection's place is held for a resume (0: tell the room at once)
    #[arg(long, value_name = "SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    resume_grace: u64,
    /// Require room tokens (JWT, HS256) signed with the secret in this file
    #[arg(long, value_name = "FILE")]
    token_secret_file: Option<PathBuf>,
    /// Allow WebSockets from this browser origin only (repeatable; no Origin is always allowed)
    #[arg(long, value_name = "URL")]
    allow_origin: Vec<String>,
    /// Hand this STUN/TURN server to every peer (repeatable): stun:HOST:PORT, turn:HOST:PORT[?transport=udp]
    #[arg(long, value_name = "URL", value_parser = signal::parse_ice_server)]
    ice_server: Vec<String>,
    /// Mint time-limited TURN credentials (coturn use-auth-secret) with the secret in this file
    #[arg(long, value_name = "FILE")]
    turn_secret_file: Option<PathBuf>,
    /// Seconds minted TURN credentials stay valid
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    turn_ttl: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Connections held at once
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Connections held at once from one source address (IPv6: one /64)
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_ip: u64,
    /// Share rooms with the other nodes using this Redis (redis://HOST:PORT[/DB])
    #[arg(long, value_name = "URL", requires = "node_id", value_parser = signal::parse_redis_url)]
    redis: Option<String>,
    /// This node's name among the nodes sharing the Redis (1-64 of [A-Za-z0-9_.-])
    #[arg(long, value_name = "N", requires = "redis", value_parser = signal::parse_node_id)]
    node_id: Option<meshrtc::signal::NodeId>,
    /// Seconds after which a silent node counts as dead and its peers as left
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    node_ttl: u64,
}

/// Arguments of `meshrtc token`
#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// File holding the secret the signaling server checks tokens with
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
    /// Room the token admits to
    #[arg(long, value_parser = parse_room)]
    room: RoomId,
    /// Peer id the token grants (any id when absent)
    #[arg(long, value_parser = parse_peer_id)]
    id: Option<PeerId>,
    /// Seconds the token stays valid
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    ttl: u64,
}

/// Arguments of `meshrtc peer`
#[derive(Debug, clap::Args)]
struct PeerArgs {
    /// Signaling server URL
    #[arg(long, value_name = "URL", value_parser = parse_signal_url)]
    signal: String,
    /// Room to join (1-64 characters of [A-Za-z0-9_.-])
    #[arg(long, value_parser = parse_room)]
    room: RoomId,
    /// Our peer id (assigned by the server when absent)
    #[arg(long, value_parser = parse_peer_id)]
    id: Option<PeerId>,
    /// Audio to send
    #[arg(long, value_enum, default_value_t = AudioMode::None)]
    audio: AudioMode,
    /// Video to send
    #[arg(long, value_enum, default_value_t = VideoMode::None)]
    video: VideoMode,
    /// Video codec to send and accept (default: H.264, VP8 and VP9, in that preference)
    #[arg(long, value_enum)]
    video_codec: Option<VideoCodec>,
    /// Data channel behaviour
    #[arg(long, value_enum, default_value_t = DataMode::Echo)]
    data: DataMode,
    /// Seconds to stay in the room before leaving
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    duration: Duration,
    /// Write per-peer statistics as JSON to this file when leaving
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Local address for the UDP socket and the only host candidate (IP or IP:PORT); without
    /// it the socket serves every interface and each usable address (IPv4 and IPv6, not
    /// loopback) is a host candidate. A loopback address keeps all traffic on this machine
    #[arg(long, value_name = "ADDR", value_parser = parse_bind)]
    bind: Option<SocketAddr>,
    /// A STUN or TURN server, `stun:HOST[:PORT]` or `turn:HOST[:PORT][?transport=udp]`
    /// (repeatable); the signaling server may hand out more
    #[arg(long = "ice-server", value_name = "URL", value_parser = parse_ice_url)]
    ice_servers: Vec<String>,
    /// Username for the --ice-server TURN servers
    #[arg(long, value_name = "U", requires = "ice_credential")]
    ice_username: Option<String>,
    /// Password for the --ice-server TURN servers (better: minted by the signaling server)
    #[arg(long, value_name = "C", requires = "ice_username")]
    ice_credential: Option<String>,
    /// Which local candidates to offer: all, or relay (TURN relayed candidates only)
    #[arg(long, value_name = "POLICY", default_value = "all", value_parser = parse_ice_policy)]
    ice_policy: meshrtc::ice::IceTransportPolicy,
    /// Video width in pixels
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Video height in pixels
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Video frames per second
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seed for the core's random choices (random when absent)
    #[arg(long)]
    seed: Option<u64>,
    /// Send this WAV file as audio, looped (PCM or float, any common rate and channel
    /// count; resampled to 48 kHz)
    #[arg(long, value_name = "FILE")]
    audio_file: Option<PathBuf>,
    /// Send this Y4M file as video, looped (4:2:0 or mono; its size and frame rate replace
    /// --width/--height/--fps)
    #[arg(long, value_name = "FILE")]
    video_file: Option<PathBuf>,
    /// Write what was played out per remote peer: DIR/<peer>.wav (48 kHz PCM after the
    /// jitter buffer) and DIR/<peer>.y4m (decoded video, as rendered)
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Serve Prometheus metrics (per remote peer) at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Follow each path's bandwidth estimate with the video bitrate, frame rate and size
    /// (off by default, as in the core: see docs/rate/README.md)
    #[arg(long)]
    rate_adaptation: bool,
}

/// Arguments of `meshrtc demo`
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Number of peers (2-10)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=10))]
    peers: u8,
    /// Seconds to run once every peer has joined
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    duration: Duration,
    /// Also send video
    #[arg(long)]
    video: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AudioMode {
    /// A 440 Hz Opus tone
    Tone,
    /// No audio
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VideoMode {
    /// A moving test pattern
    Testsrc,
    /// No video
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VideoCodec {
    /// H.264
    H264,
    /// VP8
    Vp8,
    /// VP9
    Vp9,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DataMode {
    /// Ping every connected peer once a second and echo what arrives
    Echo,
    /// Open no data channel
    None,
}

fn parse_signal_url(s: &str) -> Result<String, String> {
    meshrtc_tokio::SignalUrl::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_room(s: &str) -> Result<RoomId, String> {
    RoomId::new(s).map_err(|e| e.to_string())
}

fn parse_peer_id(s: &str) -> Result<PeerId, String> {
    PeerId::new(s).map_err(|e| e.to_string())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e6 {
        return Err("must be a positive number of seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 0),
        Err(_) => s
            .parse::<SocketAddr>()
            .map_err(|_| "not an IP address or IP:PORT".to_string())?,
    };
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(
            "must be a specific unicast address (it is the host candidate; leave --bind out for every interface)"
                .into(),
        );
    }
    Ok(addr)
}

fn parse_ice_url(s: &str) -> Result<String, String> {
    meshrtc::ice::ServerUrl::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_ice_policy(s: &str) -> Result<meshrtc::ice::IceTransportPolicy, String> {
    s.parse().map_err(|e: meshrtc::ice::UrlError| e.to_string())
}

/// Renders a clap error as one line: the first line, plus the indented lines that
/// complete it when it ends with a colon
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines();
    let mut line = lines
        .next()
        .unwrap_or("error: bad arguments")
        .trim()
        .to_string();
    if line.ends_with(':') {
        for more in lines.take_while(|l| l.starts_with("  ")) {
            line.push(' ');
            line.push_str(more.trim());
        }
    }
    format!("{line} (see --help)")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | ErrorKind::MissingSubcommand => {
                    eprintln!(
                        "error: a subcommand is required: signal, token, peer or demo (see --help)"
                    );
                    ExitCode::from(2)
                }
                _ => {
                    eprintln!("{}", one_line(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Signal(args) => signal::run(args).await,
            Command::Peer(args) => peer::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Token(args) => signal::token(args),
        }
    });
    // Driver threads and server tasks end on their own; do not wait for stragglers.
    runtime.shutdown_timeout(Duration::from_millis(500));
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, as text or JSON lines; `RUST_LOG` sets the filter (default: warnings
/// only). Colours only on a terminal, not in a file or pipe.
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `127.0.0.1` with port 0
fn loopback_any_port() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

/// Milliseconds with three decimals, for JSON and tables
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
