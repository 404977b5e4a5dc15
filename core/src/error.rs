//! The crate's errors, one type per party at fault
//!
//! * [`InputError`]: the remote side (a peer or the signaling server) sent something that
//!   could not be used. Never fatal: the input was dropped and counted, or the one peer it
//!   concerned was failed; every other peer carries on. Routine drops — a stray datagram, a
//!   malformed one — are only counted ([`DropCounters`](crate::DropCounters)), never
//!   returned.
//! * [`CommandError`]: the application asked for something that cannot be done now (misuse:
//!   wrong call order, a peer that does not exist, a message too large), or a local resource
//!   ran out (a full queue, a codec failure).

use std::net::SocketAddr;

use thiserror::Error;

use crate::codec::CodecError;
use crate::config::MediaKind;
use crate::signal::PeerId;

/// Input from the remote side that could not be used; returned by
/// [`Participant::handle_input`](crate::Participant::handle_input)
///
/// The participant is never left in a broken state: keep draining and feeding inputs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InputError {
    /// A peer's offer or answer was refused; that peer was failed
    #[error("bad sdp from {peer}: {reason}")]
    BadSdp {
        /// The peer that sent it
        peer: PeerId,
        /// Why it was refused
        reason: SdpRejection,
    },
    /// A trickled ICE candidate could not be parsed
    #[error("bad ice candidate from {peer}: {detail}")]
    BadCandidate {
        /// The peer that sent it
        peer: PeerId,
        /// What the parser said
        detail: String,
    },
    /// A signaling message named a peer this participant does not know
    #[error("signaling message about unknown peer {0}")]
    UnknownPeer(PeerId),
    /// A signaling message arrived that the protocol does not allow here
    #[error("unexpected signaling message: {0}")]
    UnexpectedSignal(SignalProblem),
    /// str0m refused input for one peer; that peer was failed
    #[error("peer {peer} failed: {reason}")]
    PeerFailed {
        /// The peer
        peer: PeerId,
        /// What went wrong
        reason: TransportError,
    },
}

/// Why an offer or answer was refused
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SdpRejection {
    /// It is not SDP that can be parsed
    #[error("unparsable: {0}")]
    Unparsable(String),
    /// It parsed, but does not fit the session (str0m refused it)
    #[error("not acceptable: {0}")]
    Unacceptable(String),
    /// An answer arrived while no offer of ours was outstanding
    #[error("answer without an offer")]
    UnexpectedAnswer,
    /// An answer from another connection of that peer than the one we offered on (one
    /// it has since replaced, delivered late)
    #[error("answer from another connection (stale)")]
    StaleAnswer,
}

/// Why a signaling message was not used
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignalProblem {
    /// A response to a request we never sent (or whose id we cannot read)
    #[error("response to an unknown request")]
    UnknownResponse,
    /// The result of `peer.announce` did not have the contract's shape
    #[error("malformed announce result")]
    BadAnnounceResult,
    /// An announce result arrived while we were not announcing
    #[error("announce result while not announcing")]
    UnexpectedAnnounceResult,
    /// A notification arrived before our announce was accepted
    #[error("notification before the announce was accepted")]
    NotJoinedYet,
}

/// A connection that str0m gave up on: which layer and what it said
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{layer:?}: {detail}")]
pub struct TransportError {
    /// The layer that failed
    pub layer: TransportLayer,
    /// str0m's description
    pub detail: String,
}

/// The protocol layer a [`TransportError`] comes from
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportLayer {
    /// ICE (connectivity checks)
    Ice,
    /// DTLS (the handshake or an alert)
    Dtls,
    /// SCTP (data channels)
    Sctp,
    /// RTP/RTCP/SRTP
    Rtp,
    /// Network packet parsing
    Net,
    /// Anything else str0m reports
    Other,
}

impl TransportError {
    /// str0m panicked while handling this peer's input
    pub(crate) fn panicked(detail: String) -> Self {
        Self {
            layer: TransportLayer::Other,
            detail: format!("str0m panicked: {detail}"),
        }
    }

    pub(crate) fn from_rtc(e: &str0m::RtcError) -> Self {
        use str0m::RtcError as E;
        let layer = match e {
            E::Ice(_) => TransportLayer::Ice,
            E::Dtls(_) => TransportLayer::Dtls,
            E::Sctp(_) => TransportLayer::Sctp,
            E::Rtp(_) | E::Packet(..) => TransportLayer::Rtp,
            E::Net(_) => TransportLayer::Net,
            _ => TransportLayer::Other,
        };
        Self {
            layer,
            detail: e.to_string(),
        }
    }
}

/// A command the application gave that cannot be carried out; returned by the
/// participant's and the session's command methods
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    // ---- misuse of the API ----
    /// A command that needs a room was given before joining or after leaving
    #[error("not in a room")]
    NotJoined,
    /// `join` was called twice
    #[error("already joined a room")]
    AlreadyJoined,
    /// The named peer is not in the room (or has gone)
    #[error("no peer {0}")]
    UnknownPeer(PeerId),
    /// A data message is larger than the limit (ours, or the one the peer advertised)
    #[error("data message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// The message's size
        len: usize,
        /// The largest size allowed
        max: usize,
    },
    /// Media of this kind is not in the participant's capabilities
    #[error("{0} is not enabled in the capabilities")]
    MediaNotEnabled(MediaKind),
    /// The named peer has no data channel (the data capability is off)
    #[error("no data channel to {0}")]
    NoDataChannel(PeerId),
    /// A local address cannot be a candidate
    #[error("{addr} cannot be a local candidate: {detail}")]
    BadLocalAddress {
        /// The address
        addr: SocketAddr,
        /// Why
        detail: String,
    },

    // ---- local resources ----
    /// The outgoing queue for a peer is full; the message was not accepted
    #[error("send queue to {0} is full")]
    SendQueueFull(PeerId),
    /// A codec failed (or is not built in), or a frame handed to it was invalid
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}
