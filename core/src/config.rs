//! Configuration of a participant: what it sends, which candidates it uses, its limits

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::media::MediaConfig;
use crate::recovery::RecoveryConfig;
use crate::signal::Capabilities;

/// The largest data message accepted by [`Participant::send_data`](crate::Participant::send_data) (Chromium's default
/// `max-message-size`)
pub const MAX_DATA_MESSAGE: usize = 256 * 1024;

/// Configuration of one [`Participant`](crate::Participant)
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of str0m's thread-local generator on the driving thread (drivers seed it)
    pub seed: u64,
    /// Seed for secrets (ICE credentials); `None`, the default, takes them from the
    /// operating system's generator, as RFC 8445 asks. Only a simulation that must replay
    /// exactly sets it.
    pub secret_seed: Option<u64>,
    /// What this participant sends and receives
    pub capabilities: Capabilities,
    /// Application metadata announced to the room
    pub metadata: serde_json::Value,
    /// Room token (a JWT from the server's operator, signaling.md version 2) sent with every
    /// `peer.announce`; `None` for servers without authentication
    pub room_token: Option<String>,
    /// Label of the data channel the offerer opens
    pub channel_label: String,
    /// How long a peer may take from offer to connected before a full reconnect is tried
    pub connect_timeout: Duration,
    /// How broken connections are healed: ICE restarts, full reconnects, the circuit
    /// breaker
    pub recovery: RecoveryConfig,
    /// Messages queued per peer while its channel is not writable, before
    /// [`CommandError::SendQueueFull`](crate::CommandError::SendQueueFull)
    pub max_queued_messages: usize,
    /// Which remote candidates are used; [`CandidatePolicy::LoopbackOnly`] also offers only
    /// loopback host candidates
    pub candidate_policy: CandidatePolicy,
    /// STUN and TURN servers (the W3C `RTCIceServer` shape), asked when joining; servers the
    /// signaling server hands out in the announce result are used too
    pub ice_servers: Vec<crate::ice::IceServer>,
    /// Which local candidates are offered (W3C `iceTransportPolicy`): all, or relayed only
    pub ice_policy: crate::ice::IceTransportPolicy,
    /// Codecs, jitter buffer and lip-sync settings
    pub media: MediaConfig,
    /// A local instant and the wall-clock time at that instant, as str0m maps them for
    /// RTCP (the driver takes both together at start-up). Needed only for capture-to-playout
    /// latency figures; `None` leaves them unmeasured.
    pub wallclock_anchor: Option<(Instant, std::time::SystemTime)>,
    /// The driver's clock, read only to time video encodes: an encode that takes longer
    /// than the frame interval means the CPU cannot keep up, and frames are dropped and the
    /// size or frame rate stepped down. `None` (the simulator) never measures encodes.
    pub encode_clock: Option<crate::clock::SharedClock>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 0,
            secret_seed: None,
            capabilities: Capabilities {
                audio: false,
                video: false,
                data: true,
            },
            metadata: serde_json::Value::Object(Default::default()),
            room_token: None,
            channel_label: "meshrtc".into(),
            connect_timeout: Duration::from_secs(15),
            recovery: RecoveryConfig::default(),
            max_queued_messages: 4096,
            candidate_policy: CandidatePolicy::Any,
            ice_servers: Vec::new(),
            ice_policy: crate::ice::IceTransportPolicy::All,
            media: MediaConfig::default(),
            wallclock_anchor: None,
            encode_clock: None,
        }
    }
}

/// Which remote ICE candidates a participant uses
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidatePolicy {
    /// Every candidate the remote offers
    Any,
    /// Only loopback addresses (tests: no traffic ever leaves the machine)
    LoopbackOnly,
}

impl CandidatePolicy {
    /// Whether a remote candidate at `addr` may be used
    pub fn allows(self, addr: SocketAddr) -> bool {
        match self {
            Self::Any => true,
            Self::LoopbackOnly => addr.ip().is_loopback(),
        }
    }
}

/// A kind of media
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MediaKind {
    /// Opus audio
    Audio,
    /// H.264, VP8 or VP9 video
    Video,
}

impl std::fmt::Display for MediaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Audio => "audio",
            Self::Video => "video",
        })
    }
}
