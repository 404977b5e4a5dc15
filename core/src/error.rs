//! The crate's error type, grouped by who is at fault

use std::net::SocketAddr;

use thiserror::Error;

use crate::signal::PeerId;

/// Errors returned by [`Participant`](crate::Participant)
///
/// Variants are grouped by who is at fault: the remote side (malformed or unexpected
/// input, which is dropped and counted and never affects any other peer), local resources,
/// or misuse of the API. An error from `handle_input` never leaves the participant in a
/// broken state: keep calling `poll_output` and feeding inputs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    // ---- the remote side is at fault ----
    /// A datagram could not be parsed as STUN, DTLS, RTP or RTCP
    #[error("malformed datagram from {source_addr}: {reason}")]
    MalformedDatagram {
        /// Where it came from
        source_addr: SocketAddr,
        /// Why it was rejected
        reason: String,
    },
    /// A datagram matched no remote peer
    #[error("datagram from {0} matches no peer")]
    UnroutableDatagram(SocketAddr),
    /// An offer or answer carried SDP that could not be parsed or applied
    #[error("bad sdp from {peer}: {reason}")]
    BadSdp {
        /// The peer that sent it
        peer: PeerId,
        /// Why it was rejected
        reason: String,
    },
    /// An ICE candidate could not be parsed
    #[error("bad ice candidate from {peer}: {reason}")]
    BadCandidate {
        /// The peer that sent it
        peer: PeerId,
        /// Why it was rejected
        reason: String,
    },
    /// A signaling message named a peer this participant does not know
    #[error("unknown peer {0}")]
    UnknownPeer(PeerId),
    /// A signaling message arrived that the protocol does not allow here
    #[error("unexpected signaling message: {0}")]
    UnexpectedSignal(String),
    /// str0m rejected input for one peer; that peer was failed, the others go on
    #[error("peer {peer} failed: {reason}")]
    PeerFailed {
        /// The peer
        peer: PeerId,
        /// What str0m said
        reason: String,
    },

    // ---- local resources ----
    /// The outgoing queue for a peer is full; the message was not accepted
    #[error("send queue to {0} is full")]
    SendQueueFull(PeerId),

    /// A codec failed (or is not built in)
    #[error("codec: {0}")]
    Codec(#[from] crate::codec::CodecError),

    // ---- misuse of the API ----
    /// Media of this kind is not in the participant's capabilities
    #[error("{0} is not enabled in the capabilities")]
    MediaNotEnabled(&'static str),
    /// A data message is larger than [`MAX_DATA_MESSAGE`](crate::MAX_DATA_MESSAGE)
    #[error("data message of {0} bytes exceeds the limit")]
    MessageTooLarge(usize),
    /// A command that needs a room was called before joining or after leaving
    #[error("not in a room")]
    NotJoined,
    /// `join` was called twice
    #[error("already joined a room")]
    AlreadyJoined,
    /// The named peer has no data channel (data capability off)
    #[error("no data channel to {0}")]
    NoDataChannel(PeerId),
}

impl Error {
    /// Whether the remote side caused this error (it was dropped and counted)
    pub fn is_remote_fault(&self) -> bool {
        matches!(
            self,
            Self::MalformedDatagram { .. }
                | Self::UnroutableDatagram(_)
                | Self::BadSdp { .. }
                | Self::BadCandidate { .. }
                | Self::UnknownPeer(_)
                | Self::UnexpectedSignal(_)
                | Self::PeerFailed { .. }
        )
    }
}
