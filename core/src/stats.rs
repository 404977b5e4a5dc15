//! Counters the core keeps per peer and per participant

use std::net::SocketAddr;
use std::time::Duration;

use crate::ice::{CandidateType, GatherStats};

/// Statistics for one remote peer
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerStats {
    /// Whether we sent the offer on this connection
    pub is_offerer: bool,
    /// Whether the peer's data channel (or DTLS, without data) is usable
    pub connected: bool,
    /// From sending or receiving the offer to connected
    pub connect_time: Option<Duration>,
    /// Round-trip time from RTCP/STUN, when measured
    pub rtt: Option<Duration>,
    /// Data messages written to the channel
    pub messages_sent: u64,
    /// Data messages received
    pub messages_received: u64,
    /// Data payload bytes written
    pub bytes_sent: u64,
    /// Data payload bytes received
    pub bytes_received: u64,
    /// Datagrams this peer's `Rtc` accepted
    pub datagrams_received: u64,
    /// Datagrams this peer's `Rtc` emitted
    pub datagrams_sent: u64,
    /// Media frames from this peer that could not be depacketized (dropped)
    pub malformed_media: u64,
    /// Remote candidates ignored by the candidate policy
    pub candidates_filtered: u64,
    /// Datagrams from this peer's address that DTLS refused (unauthenticated alerts during
    /// the handshake, garbage): dropped, never fatal
    pub dtls_rejected: u64,
    /// ICE restarts and full reconnects with this peer
    pub reconnects: u64,
    /// The recovery's circuit breaker
    pub circuit: crate::recovery::CircuitState,
    /// Messages waiting for the channel to open or drain
    pub queued_messages: usize,
    /// Estimated drift of the peer's clock relative to ours (ppm, + = theirs fast), from its
    /// media's arrival times; `None` while the estimate is smaller than its uncertainty
    pub clock_drift_ppm: Option<f64>,
    /// Half the 95% interval of that estimate (ppm): the drift lies within
    /// `estimate ± this`; there whenever an estimate is
    pub clock_drift_uncertainty_ppm: Option<f64>,
    /// The same drift estimated from RTCP sender reports (the sender's wall clock), ppm;
    /// `None` while smaller than its uncertainty
    pub report_clock_drift_ppm: Option<f64>,
    /// Audio receive statistics, when audio was negotiated
    pub audio: Option<crate::media::AudioStats>,
    /// Video receive statistics, when video was negotiated
    pub video: Option<crate::media::VideoStats>,
    /// What we send this peer: bandwidth estimate, video target, audio and video rates
    pub bitrate: Option<crate::rate::BitrateStats>,
    /// The video we send this peer, once it takes video from us
    pub video_sent: Option<crate::rate::VideoSendPeerStats>,
    /// The candidate pair ICE selected (from str0m's statistics, every second), once there is
    /// one
    pub candidate_pair: Option<CandidatePair>,
}

/// The candidate pair a connection uses (W3C `RTCIceCandidatePairStats`, in short)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidatePair {
    /// The address we send from: our host address (also for a server-reflexive candidate,
    /// whose traffic leaves from its host base) or our relayed address on a TURN server
    pub local: SocketAddr,
    /// The remote address we send to
    pub remote: SocketAddr,
    /// `host` or `relay` (see [`local`](Self::local))
    pub local_type: CandidateType,
    /// The type the remote signaled for that address; `prflx` when it signaled none (learnt
    /// from its connectivity checks)
    pub remote_type: CandidateType,
}

impl CandidatePair {
    /// A pair whose types are not known yet (`host`, `prflx`)
    pub(crate) fn unnamed(local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            local,
            remote,
            local_type: CandidateType::Host,
            remote_type: CandidateType::Prflx,
        }
    }
}

/// What the participant's ICE transport did: its candidates, its STUN/TURN servers and the
/// traffic it relayed
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceStats {
    /// Our local candidates in use, in the order they were found
    pub local_candidates: Vec<(CandidateType, SocketAddr)>,
    /// STUN/TURN servers in use (asked, answered or still trying)
    pub servers: usize,
    /// Servers that gave no candidate, had a bad URL or did not resolve
    pub server_failures: u64,
    /// Relayed candidates lost after they were found
    pub relays_lost: u64,
    /// Whether candidates are still being gathered
    pub gathering: bool,
    /// The gatherer's counters (malformed server datagrams, relayed traffic)
    pub gather: GatherStats,
}

/// Input the participant dropped, by kind
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Datagrams that were not STUN, DTLS, RTP or RTCP
    pub malformed_datagrams: u64,
    /// Datagrams that matched no peer
    pub unroutable_datagrams: u64,
    /// Signaling messages that were unexpected, named unknown peers or carried bad SDP
    pub bad_signals: u64,
    /// Candidates that could not be parsed
    pub bad_candidates: u64,
}
