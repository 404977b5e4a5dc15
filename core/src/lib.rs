//! meshrtc: a sans-IO WebRTC mesh for small rooms, built on [`str0m`]
//!
//! A [`Participant`] is one local peer in one room. It holds one `str0m::Rtc` per remote
//! peer, speaks the JSON-RPC signaling protocol ([`signal`]) and never touches a socket, a
//! clock or a thread: time and data arrive as [`Input`]s, and everything it wants done
//! leaves as an [`Output`].
//!
//! > After every mutation — [`Participant::handle_input`] or a command such as
//! > [`Participant::join`] or [`Participant::send_data`] — drain
//! > [`Participant::poll_output`] until it returns [`Output::Timeout`]. Internally each
//! > owned `Rtc` is drained the same way after each of its mutations.
//!
//! The signaling server's logic is here too, as the sans-IO [`signal::server::Server`], so that the
//! WebSocket server and the simulator share it.
//!
//! # Run loop
//!
//! ```no_run
//! use std::time::Instant;
//! use meshrtc::{Config, Input, Output, Participant, Receive};
//! use meshrtc::signal::RoomId;
//!
//! # fn recv_datagram_or_signal(_deadline: Instant) -> Option<(Vec<u8>, std::net::SocketAddr)> { None }
//! # fn send_datagram(_t: meshrtc::Transmit) {}
//! # fn send_signal(_f: meshrtc::signal::ClientFrame) {}
//! let local: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
//! let mut p = Participant::new(Config::default(), Instant::now());
//! p.add_local_candidate(local).unwrap();
//! p.join(RoomId::new("demo").unwrap(), None).unwrap();
//! loop {
//!     // Drain after every mutation.
//!     let deadline = loop {
//!         match p.poll_output() {
//!             Output::Timeout(t) => break t,
//!             Output::Transmit(t) => send_datagram(t),
//!             Output::Signal(frame) => send_signal(frame),
//!             Output::Event(e) => println!("{e:?}"),
//!             // STUN/TURN server names to look up (none here: no ice_servers configured)
//!             Output::Resolve(_) => {}
//!         }
//!     };
//!     // Wait for a datagram, a signaling frame or the deadline; feed exactly one input.
//!     let input = match recv_datagram_or_signal(deadline) {
//!         Some((buf, source)) => {
//!             let recv = Receive { source, destination: local, contents: &buf };
//!             // Errors describe rejected input; the participant carries on.
//!             let _ = p.handle_input(Input::Receive(Instant::now(), recv));
//!             continue;
//!         }
//!         None => Input::Timeout(Instant::now()),
//!     };
//!     let _ = p.handle_input(input);
//! }
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod adapt;
pub mod clock;
pub mod codec;
mod compete;
mod config;
mod congestion;
mod error;
mod event;
mod extreme;
pub mod ice;
pub mod media;
mod participant;
mod peer;
pub mod pipeline;
mod pushback;
pub mod rate;
mod recovery;
pub mod session;
mod shared;
pub mod signal;
mod stats;
pub mod sync;
mod tracks;
mod transport;
mod window;

pub use config::{CandidatePolicy, Config, MediaKind, MAX_DATA_MESSAGE};
pub use error::{
    CommandError, InputError, SdpRejection, SignalProblem, TransportError, TransportLayer,
};
pub use event::{DataMessage, Event, FailReason, LeaveReason, ReconnectKind};
pub use participant::Participant;
pub use recovery::{CircuitState, RecoveryConfig};
pub use shared::{Input, Output, Receive, TimeoutReason, Transmit};
pub use stats::{CandidatePair, DropCounters, IceStats, MediaCount, MediaTraffic, PeerStats};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod static_checks {
    use super::*;

    fn is_send<T: Send>() {}

    #[test]
    fn participant_is_send() {
        is_send::<Participant>();
    }

    #[test]
    fn event_is_reasonably_sized() {
        assert!(size_of::<Event>() <= 160);
    }
}
