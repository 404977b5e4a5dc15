//! What a participant tells its application

use std::sync::Arc;
use std::time::Duration;

use crate::codec::VideoCodec;
use crate::config::MAX_DATA_MESSAGE;
use crate::error::{CommandError, SdpRejection, TransportError};
use crate::media::VideoPayload;
use crate::signal::{LeftReason, PeerId, PeerInfo, RoomId, RpcError};
use crate::sync::PlayoutChunk;

/// A data channel message
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMessage {
    /// UTF-8 text
    Text(String),
    /// Raw bytes
    Binary(Vec<u8>),
}

impl DataMessage {
    /// The payload's length in bytes
    pub fn len(&self) -> usize {
        match self {
            Self::Text(s) => s.len(),
            Self::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload as bytes
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(s) => s.as_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// Checks the size against [`MAX_DATA_MESSAGE`], the largest message any peer takes
    pub fn check_size(&self) -> Result<(), CommandError> {
        if self.len() > MAX_DATA_MESSAGE {
            return Err(CommandError::MessageTooLarge {
                len: self.len(),
                max: MAX_DATA_MESSAGE,
            });
        }
        Ok(())
    }
}

/// Why a peer failed
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// Its offer or answer was unusable; its state is gone
    BadSdp(SdpRejection),
    /// Recovery gave up for now: full reconnects failed
    /// [`RecoveryConfig::breaker_failures`](crate::RecoveryConfig::breaker_failures) times in a
    /// row. The peer stays a member of the room: after a cool-down one more attempt is
    /// made (and `PeerReconnected` follows if it comes back), until the server says it left.
    Unreachable {
        /// The last transport error, if the connection failed with one
        last_error: Option<TransportError>,
    },
}

/// How a connection was (or is being) healed
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectKind {
    /// An ICE restart: new credentials and candidates, the same DTLS/SCTP session
    IceRestart,
    /// A full reconnect: a new `Rtc`, DTLS handshake and data channel
    Full,
}

/// Why a peer left
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The server said it left (with the server's reason)
    Signaled(LeftReason),
    /// We left the room
    LocalLeave,
}

/// Something the application should know about; every event is edge-triggered and
/// emitted at most once per occurrence
#[derive(Debug)]
pub enum Event {
    /// The server accepted our announce; `peers` were already in the room (we offer to them)
    Announced {
        /// Our peer id (assigned by the server if we did not choose one)
        peer_id: PeerId,
        /// The room
        room: RoomId,
        /// The peers already there
        peers: Vec<PeerInfo>,
        /// The server gave us back our held place (a re-announce with its resume token
        /// within the grace): the other peers saw no `peer.left`
        resumed: bool,
    },
    /// Another peer joined the room (it will offer to us)
    PeerJoined(PeerInfo),
    /// A peer's data channel (or, without data, its DTLS) is usable
    PeerConnected {
        /// The peer
        peer: PeerId,
        /// From sending or receiving the offer to usable
        connect_time: Duration,
    },
    /// A data message arrived
    DataReceived {
        /// From whom
        peer: PeerId,
        /// The channel's label
        label: String,
        /// The message
        message: DataMessage,
    },
    /// A peer left; its state is gone
    PeerLeft {
        /// The peer
        peer: PeerId,
        /// Why
        reason: LeaveReason,
    },
    /// A peer's path broke; the core is healing it (ICE restart, or a full reconnect)
    ///
    /// Media and data to it wait meanwhile; data messages stay queued.
    PeerReconnecting {
        /// The peer
        peer: PeerId,
        /// What the core is trying
        kind: ReconnectKind,
    },
    /// A peer's connection is back
    PeerReconnected {
        /// The peer
        peer: PeerId,
        /// From the path breaking to usable again
        after: Duration,
        /// How it was healed
        kind: ReconnectKind,
    },
    /// Data messages written before a full reconnect that the old connection may not have
    /// delivered: they are not sent again (the application decides)
    DataUndelivered {
        /// The peer
        peer: PeerId,
        /// The messages, in the order they were sent
        messages: Vec<DataMessage>,
    },
    /// A peer failed (see [`FailReason`] for what remains of it)
    PeerFailed {
        /// The peer
        peer: PeerId,
        /// Why
        reason: FailReason,
    },
    /// Ten milliseconds (one chunk) of a peer's audio, due to play now
    AudioPlayout {
        /// From whom
        peer: PeerId,
        /// The decoded (or concealed) audio
        chunk: PlayoutChunk,
    },
    /// A peer's video frame, due to show now (in sync with its audio when both flow)
    VideoFrame {
        /// From whom
        peer: PeerId,
        /// Which of the peer's video tracks: `None` for its main video m-line (whichever
        /// track the peer routes to us there), `Some` for a track the peer sends on an
        /// m-line of its own, named by the peer's id for it
        /// ([`Participant::add_video_track`](crate::Participant::add_video_track))
        track: Option<crate::pipeline::TrackId>,
        /// The frame: decoded, or encoded in pass-through mode
        payload: VideoPayload,
        /// Its media time (90 kHz ticks, unwrapped)
        media_ticks: i64,
        /// Whether it is a keyframe
        keyframe: bool,
        /// The codec it arrived in
        codec: VideoCodec,
    },
    /// A peer's encoded audio frame (pass-through mode: `MediaConfig::decode` is false)
    EncodedAudio {
        /// From whom
        peer: PeerId,
        /// Its media time (48 kHz ticks, unwrapped)
        media_ticks: i64,
        /// The Opus packet
        data: Arc<[u8]>,
    },
    /// A peer started or stopped sending us a kind of media: the direction of its m-line
    /// changed (it paused or resumed that track towards us)
    RemoteMediaState {
        /// The peer
        peer: PeerId,
        /// Audio or video
        kind: crate::MediaKind,
        /// Whether it sends now
        sending: bool,
    },
    /// A STUN or TURN server could not be used or stopped working; host candidates and the
    /// other servers carry on (counted in [`IceStats`](crate::IceStats) too)
    IceServerFailed {
        /// The server: its URL (`turn:HOST:PORT?transport=udp`), with its address when that
        /// differs (a resolved name)
        server: String,
        /// What went wrong
        problem: crate::ice::IceServerProblem,
    },
    /// The signaling server answered one of our requests with an error
    SignalError {
        /// The method of the request
        method: &'static str,
        /// The server's error
        error: RpcError,
    },
}
