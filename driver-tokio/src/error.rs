//! The crate's error type, grouped by who is at fault

use std::io;
use std::net::SocketAddr;

use meshrtc::signal::RpcError;

/// Errors of the tokio driver, the signaling client and the signaling server
///
/// Variants are grouped by who is at fault: the remote side (the signaling server refused
/// us or went away), local resources (sockets, threads) and misuse of the API. Errors the
/// core reports about one input never end a session; they are logged and counted by the
/// core and the session goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- the remote side is at fault ----
    /// The signaling server could not be reached or the WebSocket handshake failed
    #[error("cannot connect to signaling server {url}: {reason}")]
    SignalConnect {
        /// The URL we tried
        url: String,
        /// What went wrong
        reason: String,
    },
    /// The signaling server answered `peer.announce` with an error
    #[error("signaling server refused to join: {0}")]
    Rejected(RpcError),
    /// The signaling connection closed (before the server answered `peer.announce`, when
    /// returned by `Session::join`)
    #[error("signaling connection lost: {0}")]
    SignalLost(String),
    /// The server did not answer `peer.announce` in time
    #[error("signaling server did not answer within {0:?}")]
    JoinTimeout(std::time::Duration),

    // ---- local resources ----
    /// A UDP socket could not be bound or configured
    #[error("cannot bind udp socket on {addr}: {source}")]
    Bind {
        /// The address we tried
        addr: SocketAddr,
        /// The OS error
        source: io::Error,
    },
    /// The signaling server could not listen on its address
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address we tried
        addr: SocketAddr,
        /// The OS error
        source: io::Error,
    },
    /// The driver thread or its runtime could not be started
    #[error("cannot start the driver: {0}")]
    Spawn(io::Error),
    /// The session's driver task has ended (left, dropped or failed)
    #[error("the session has ended")]
    SessionEnded,
    /// The server's task has ended
    #[error("the signaling server has stopped")]
    ServerStopped,

    // ---- misuse of the API ----
    /// The signaling URL is not a `ws://host:port/path` URL
    #[error("bad signaling url {url:?}: {reason}")]
    BadUrl {
        /// The URL given
        url: String,
        /// Why it was refused
        reason: String,
    },
    /// The bind address cannot be a host candidate (unspecified or multicast)
    #[error("bind address {0} cannot be a host candidate: give a specific unicast address")]
    BadBindAddress(SocketAddr),
    /// The core refused a command (message too large, no data channel, ...)
    #[error(transparent)]
    Core(#[from] meshrtc::Error),
}

/// The crate's result type
pub type Result<T, E = Error> = std::result::Result<T, E>;
