//! meshrtc on tokio: UDP sockets, the WebSocket signaling server and client
//!
//! The sans-IO core ([`meshrtc::session::Session`], [`meshrtc::signal::server::Server`])
//! makes every protocol decision; this crate only moves bytes and time in and out of it.
//!
//! * [`Session`] puts one core session on a UDP socket and a signaling connection. One task
//!   owns it; it waits on the socket, the core's next deadline, the signaling WebSocket and
//!   the application's commands, feeds exactly one input and drains the outputs, then
//!   waits again.
//! * [`SignalServer`] runs the JSON-RPC signaling server of `contracts/signaling.md`: one
//!   task owns the server logic, one task per connection moves WebSocket frames.
//! * [`echo`] is the data-channel behaviour of `meshrtc peer --data echo`.
//!
//! # Example
//!
//! ```no_run
//! use meshrtc::signal::RoomId;
//! use meshrtc::DataMessage;
//! use meshrtc_tokio::{Event, Session, SessionConfig, SignalServer};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let server = SignalServer::bind("127.0.0.1:0".parse().unwrap()).await?;
//! let room = RoomId::new("demo").unwrap();
//! let (handle, mut events) = Session::join(SessionConfig::new(server.url(), room)).await?;
//! while let Some(event) = events.recv().await {
//!     if let Event::Mesh(meshrtc::Event::PeerConnected { peer, .. }) = event {
//!         handle.send_data(&peer, DataMessage::Text("hello".into())).await?;
//!     }
//! }
//! handle.leave().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod client;
mod clock;
pub mod echo;
mod error;
mod server;
mod session;
mod udp;

pub use client::{SignalClient, SignalEvent};
pub use clock::TokioClock;
pub use error::{Error, Result, ServerError};
pub use meshrtc_driver::{SessionConfig, SignalUrl, DEFAULT_COMMAND_QUEUE, DEFAULT_SOCKET_BUFFER};
pub use server::{RedisConfig, ServerCounts, SignalServer, SignalServerConfig};
pub use session::{Event, Events, Session, SessionHandle, Stats};

#[cfg(test)]
mod static_checks {
    use super::*;

    fn is_send<T: Send>() {}

    #[test]
    fn handles_are_send() {
        is_send::<SessionHandle>();
        is_send::<Events>();
        is_send::<SignalServer>();
        is_send::<Event>();
    }
}
