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
    /// The estimate itself, shown or not (ppm): with the uncertainty, for combining it with
    /// other views of the same clocks (the other direction's estimate reads about its
    /// negative)
    pub clock_drift_estimate_ppm: Option<f64>,
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
    /// Media written to and read from this connection, by kind and direction
    pub media_traffic: MediaTraffic,
}

/// Media of one kind in one direction: what the core wrote to the connection or read from it
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaCount {
    /// Encoded media bytes: the RTP payloads of the frames (no RTP headers, no
    /// retransmissions); the rate of this counter is the media bitrate
    pub bytes: u64,
    /// Encoded frames
    pub frames: u64,
    /// RTP packets: received, those the frames arrived in (by sequence number); sent, as
    /// str0m last reported them (once a second, retransmissions included)
    pub packets: u64,
}

/// The media counters of one connection, kept across its reconnects
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaTraffic {
    /// Audio written to the peer
    pub audio_sent: MediaCount,
    /// Audio read from the peer
    pub audio_received: MediaCount,
    /// Video written to the peer
    pub video_sent: MediaCount,
    /// Video read from the peer
    pub video_received: MediaCount,
    /// Received audio bitrate (payload bits per second) of the last whole second; `None`
    /// before the first second is over
    pub audio_received_bps: Option<u64>,
    /// Received video bitrate, as `audio_received_bps`
    pub video_received_bps: Option<u64>,
}

impl MediaTraffic {
    /// The counters of `kind` in one direction
    pub fn count(&self, kind: crate::MediaKind, sent: bool) -> &MediaCount {
        use crate::MediaKind::{Audio, Video};
        match (kind, sent) {
            (Audio, true) => &self.audio_sent,
            (Audio, false) => &self.audio_received,
            (Video, true) => &self.video_sent,
            (Video, false) => &self.video_received,
        }
    }

    pub(crate) fn count_mut(&mut self, kind: crate::MediaKind, sent: bool) -> &mut MediaCount {
        use crate::MediaKind::{Audio, Video};
        match (kind, sent) {
            (Audio, true) => &mut self.audio_sent,
            (Audio, false) => &mut self.audio_received,
            (Video, true) => &mut self.video_sent,
            (Video, false) => &mut self.video_received,
        }
    }
}

/// Bytes counted in whole seconds since `origin`, for a bitrate over the last whole second
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecondWindow {
    origin: std::time::Instant,
    /// The second being counted (since `origin`) and its bytes so far
    second: u64,
    bytes: u64,
    /// Bytes of the second before `second`, once one is over
    previous: Option<u64>,
}

impl SecondWindow {
    pub(crate) fn new(origin: std::time::Instant) -> Self {
        Self {
            origin,
            second: 0,
            bytes: 0,
            previous: None,
        }
    }

    fn second_of(&self, now: std::time::Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// Counts `bytes` at `now`
    pub(crate) fn add(&mut self, now: std::time::Instant, bytes: u64) {
        let second = self.second_of(now);
        if second > self.second {
            self.previous = Some(if second == self.second + 1 {
                self.bytes
            } else {
                0
            });
            self.second = second;
            self.bytes = 0;
        }
        self.bytes += bytes;
    }

    /// Bits per second of the last whole second before `now`; `None` before one is over
    pub(crate) fn bps(&self, now: std::time::Instant) -> Option<u64> {
        let second = self.second_of(now);
        let bytes = if second <= self.second {
            self.previous?
        } else if second == self.second + 1 {
            self.bytes
        } else {
            0
        };
        Some(bytes * 8)
    }
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
