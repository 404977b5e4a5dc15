//! The driver's errors: the session's are shared with the blocking driver
//! ([`meshrtc_driver::Error`]); the signaling server has its own

use std::io;
use std::net::SocketAddr;

pub use meshrtc_driver::{Error, Result};

/// What the signaling server returns when it cannot start or has stopped
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listening socket could not be bound
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address
        addr: SocketAddr,
        /// The operating system's error
        source: io::Error,
    },
    /// The server has stopped
    #[error("the signaling server has stopped")]
    Stopped,
    /// Redis (the room store shared with other nodes) could not be reached at start
    #[error("cannot use redis at {0}")]
    Redis(String),
}
