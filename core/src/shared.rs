//! What goes into a participant and what comes out: the types of its one way in and one
//! way out, shared by every layer of the core

use std::net::SocketAddr;
use std::time::Instant;

use crate::event::Event;
use crate::ice::{Resolution, ServerEndpoint};
use crate::signal::{ClientFrame, ServerFrame};

/// A received datagram, borrowed from the caller's buffer
#[derive(Debug, Clone, Copy)]
pub struct Receive<'a> {
    /// The remote address it came from
    pub source: SocketAddr,
    /// The local address it arrived on
    pub destination: SocketAddr,
    /// The datagram's bytes
    pub contents: &'a [u8],
}

/// A datagram to send
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The local address to send from
    pub source: SocketAddr,
    /// The remote address to send to
    pub destination: SocketAddr,
    /// The datagram's bytes
    pub contents: Vec<u8>,
}

/// Everything that can happen to a participant
#[derive(Debug)]
pub enum Input<'a> {
    /// Time has passed; no other input
    Timeout(Instant),
    /// A datagram arrived
    Receive(Instant, Receive<'a>),
    /// A message arrived from the signaling server
    Signal(Instant, ServerFrame),
    /// The driver resolved the STUN/TURN server names of an [`Output::Resolve`]
    Resolved(Instant, Vec<Resolution>),
}

impl Input<'_> {
    /// The time the input happened
    pub fn time(&self) -> Instant {
        match self {
            Self::Timeout(t) | Self::Receive(t, _) | Self::Signal(t, _) | Self::Resolved(t, _) => {
                *t
            }
        }
    }
}

/// What the participant asks its driver to do
#[derive(Debug)]
pub enum Output {
    /// The drain is finished; call `handle_input(Input::Timeout(..))` at this instant
    Timeout(Instant),
    /// Send this datagram
    Transmit(Transmit),
    /// Send this message to the signaling server
    Signal(ClientFrame),
    /// Tell the application
    Event(Event),
    /// Look up these STUN/TURN servers' names (DNS is IO: the driver's) and feed the answers
    /// back as [`Input::Resolved`]; servers given by IP address never come here
    Resolve(Vec<ServerEndpoint>),
}

/// Why the participant asked for its next timeout (for diagnosing a stalled run)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutReason {
    /// Nothing is scheduled
    Idle,
    /// A peer's `Rtc` wants a timeout (with str0m's reason)
    Rtc(str0m::Reason),
    /// A peer's connect or disconnect deadline
    PeerDeadline,
    /// Audio playout or video release
    Playout,
    /// STUN/TURN: a retransmission, a refresh, releasing the allocations after leaving, or
    /// a round-trip probe of a peer's path
    Ice,
}
