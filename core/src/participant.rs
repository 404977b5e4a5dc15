//! One local participant in one room: the mesh of `Rtc`s and the signaling state

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::config::{CryptoProvider, DtlsCert};
use str0m::net::Protocol;
use str0m::Candidate;

use crate::codec::{I420Frame, VideoCodec};
use crate::media::{Encoders, MediaConfig, MediaOut, VideoPayload};
use crate::peer::{Peer, PeerOutput, Role};
use crate::signal::{
    AnnounceResult, Capabilities, ClientFrame, LeftReason, Notification, PeerId, PeerInfo, Request,
    RequestId, RoomId, RpcError, ServerFrame,
};
use crate::stats::{DropCounters, PeerStats};
use crate::sync::PlayoutChunk;
use crate::Error;

/// The largest data message accepted by [`Participant::send_data`] (Chromium's default
/// `max-message-size`)
pub const MAX_DATA_MESSAGE: usize = 256 * 1024;

/// Configuration of one [`Participant`]
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed for every random choice the core makes (ICE credentials, ordering)
    pub seed: u64,
    /// What this participant sends and receives
    pub capabilities: Capabilities,
    /// Application metadata announced to the room
    pub metadata: serde_json::Value,
    /// Label of the data channel the offerer opens
    pub channel_label: String,
    /// How long a peer may take from offer to connected before it is failed
    pub connect_timeout: Duration,
    /// How long ICE may stay disconnected before the peer is failed
    pub disconnect_timeout: Duration,
    /// Messages queued per peer while its channel is not writable, before
    /// [`Error::SendQueueFull`]
    pub max_queued_messages: usize,
    /// Which remote candidates are used
    pub candidate_policy: CandidatePolicy,
    /// Codecs, jitter buffer and lip-sync settings
    pub media: MediaConfig,
    /// A local instant and the wall-clock time at that instant, as str0m maps them for
    /// RTCP (the driver takes both together at start-up). Needed only for capture-to-playout
    /// latency figures; `None` leaves them unmeasured.
    pub wallclock_anchor: Option<(Instant, std::time::SystemTime)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 0,
            capabilities: Capabilities {
                audio: false,
                video: false,
                data: true,
            },
            metadata: serde_json::Value::Object(Default::default()),
            channel_label: "meshrtc".into(),
            connect_timeout: Duration::from_secs(15),
            disconnect_timeout: Duration::from_secs(10),
            max_queued_messages: 4096,
            candidate_policy: CandidatePolicy::Any,
            media: MediaConfig::default(),
            wallclock_anchor: None,
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
}

impl Input<'_> {
    /// The time the input happened
    pub fn time(&self) -> Instant {
        match self {
            Self::Timeout(t) | Self::Receive(t, _) | Self::Signal(t, _) => *t,
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
}

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
}

/// Why a peer failed
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// It did not connect within [`Config::connect_timeout`]
    ConnectTimeout,
    /// ICE stayed disconnected for [`Config::disconnect_timeout`]
    Disconnected,
    /// Its offer or answer was unusable
    BadSdp(String),
    /// str0m reported an error for this peer
    Transport(String),
}

/// Why a peer left
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The server said it left (with the server's reason)
    Signaled(LeftReason),
    /// Its DTLS/SCTP association was closed by the remote side
    Closed,
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
    /// A peer failed; its state is gone
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
    /// The signaling server answered one of our requests with an error
    SignalError {
        /// The method of the request
        method: &'static str,
        /// The server's error
        error: RpcError,
    },
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
}

#[derive(Debug, PartialEq, Eq)]
enum RoomState {
    Idle,
    Announcing { room: RoomId },
    Joined { room: RoomId, me: PeerId },
    Left,
}

/// One local participant in one room: a mesh of one `str0m::Rtc` per remote peer
///
/// > After every mutation — [`handle_input`](Self::handle_input) or any command such as
/// > [`join`](Self::join) or [`send_data`](Self::send_data) — drain
/// > [`poll_output`](Self::poll_output) until it returns [`Output::Timeout`].
///
/// The participant never reads a clock and does no IO: time arrives with every input,
/// datagrams and signaling messages leave as outputs.
pub struct Participant {
    config: Config,
    rng: fastrand::Rng,
    crypto: Arc<CryptoProvider>,
    dtls_cert: DtlsCert,
    state: RoomState,
    local_candidates: Vec<Candidate>,
    /// Peers announced to us (joined, or listed at announce) that have no `Rtc` yet
    known: BTreeMap<PeerId, Known>,
    peers: BTreeMap<PeerId, Peer>,
    next_request: i64,
    pending_requests: BTreeMap<i64, &'static str>,
    outputs: VecDeque<Output>,
    /// Peers given data since they were last drained: drained at the next `poll_output`,
    /// so a burst of sends reaches str0m in one write-then-poll round
    unflushed: BTreeSet<PeerId>,
    last_now: Instant,
    last_timeout_reason: TimeoutReason,
    drops: DropCounters,
    encoders: Encoders,
    /// Datagrams no peer accepted yet, retried for a short while
    strays: VecDeque<Stray>,
    /// Last statistics of peers that went away
    departed: BTreeMap<PeerId, PeerStats>,
}

/// How many departed peers' statistics are kept
const MAX_DEPARTED: usize = 64;

/// A datagram no peer accepted when it arrived
struct Stray {
    at: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

/// How many unroutable datagrams are held for a retry, at most
const MAX_STRAYS: usize = 16;

/// How long an unroutable datagram is held for a retry
const STRAY_TTL: Duration = Duration::from_millis(250);

/// A peer we know is in the room, with candidates that arrived before its offer
#[derive(Debug)]
struct Known {
    info: PeerInfo,
    early_candidates: Vec<String>,
}

impl Participant {
    /// Creates a participant that is not yet in a room; `now` is the current time
    pub fn new(config: Config, now: Instant) -> Self {
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        // One certificate per participant, shared by all its peers (the fingerprint is
        // per-participant anyway).
        let dtls_cert = crypto.dtls_provider.generate_certificate().expect(
            "generating a DTLS certificate with the built-in provider cannot fail; panic means bug",
        );
        let rng = fastrand::Rng::with_seed(config.seed);
        Self {
            config,
            rng,
            crypto,
            dtls_cert,
            state: RoomState::Idle,
            local_candidates: Vec::new(),
            known: BTreeMap::new(),
            peers: BTreeMap::new(),
            next_request: 1,
            pending_requests: BTreeMap::new(),
            outputs: VecDeque::new(),
            unflushed: BTreeSet::new(),
            last_now: now,
            last_timeout_reason: TimeoutReason::Idle,
            drops: DropCounters::default(),
            encoders: Encoders::new(),
            strays: VecDeque::new(),
            departed: BTreeMap::new(),
        }
    }

    /// The configuration this participant was created with
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds a local host candidate (an address the driver has a socket bound to)
    ///
    /// Candidates added after peers exist are trickled to every peer.
    pub fn add_local_candidate(&mut self, addr: SocketAddr) -> Result<(), Error> {
        let cand = Candidate::host(addr, "udp").map_err(|e| Error::BadCandidate {
            peer: self.my_id().cloned().unwrap_or_else(local_placeholder),
            reason: e.to_string(),
        })?;
        self.local_candidates.push(cand.clone());
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        for id in ids {
            let peer = self
                .peers
                .get_mut(&id)
                .expect("key just listed; panic means bug");
            if let Some(line) = peer.add_local_candidate(cand.clone()) {
                let frame = self.request(Request::IceCandidate {
                    to: id.clone(),
                    candidate: line,
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                });
                self.outputs.push_back(Output::Signal(frame));
            }
            self.drain_peer(&id);
        }
        Ok(())
    }

    /// Asks the signaling server to join `room`, optionally with a chosen peer id
    ///
    /// Emits [`Event::Announced`] when the server accepts, then offers to every peer
    /// already in the room.
    pub fn join(&mut self, room: RoomId, peer_id: Option<PeerId>) -> Result<(), Error> {
        if !matches!(self.state, RoomState::Idle) {
            return Err(Error::AlreadyJoined);
        }
        let frame = self.request(Request::Announce {
            room: room.clone(),
            peer_id,
            capabilities: Some(self.config.capabilities),
            metadata: Some(self.config.metadata.clone()),
        });
        self.outputs.push_back(Output::Signal(frame));
        self.state = RoomState::Announcing { room };
        Ok(())
    }

    /// Leaves the room: sends `peer.disconnect` and closes every peer
    ///
    /// Each peer gets a [`Event::PeerLeft`] with [`LeaveReason::LocalLeave`].
    pub fn leave(&mut self) {
        if matches!(self.state, RoomState::Idle | RoomState::Left) {
            self.state = RoomState::Left;
            return;
        }
        let frame = self.request(Request::Disconnect);
        self.outputs.push_back(Output::Signal(frame));
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        for id in ids {
            self.close_peer(&id, PeerEnd::Left(LeaveReason::LocalLeave));
        }
        self.known.clear();
        self.state = RoomState::Left;
    }

    /// Whether [`send_data`](Self::send_data) to `peer` would be accepted now (the peer
    /// exists and its queue has room); lets a driver apply back-pressure instead of losing
    /// a message to [`Error::SendQueueFull`]
    pub fn can_send(&self, peer: &PeerId) -> bool {
        self.send_room(peer).is_some_and(|room| room > 0)
    }

    /// How many more messages [`send_data`](Self::send_data) to `peer` would accept now
    /// (`None` for an unknown peer): a driver that stops taking data at a full queue can
    /// wait for room for a whole batch, instead of waking its application for every message
    pub fn send_room(&self, peer: &PeerId) -> Option<usize> {
        let p = self.peers.get(peer)?;
        Some(
            self.config
                .max_queued_messages
                .saturating_sub(p.queued_messages()),
        )
    }

    /// Sends a data message to one peer
    ///
    /// The message is queued (in order, up to [`Config::max_queued_messages`]) and handed
    /// to the channel at the next [`poll_output`](Self::poll_output), as far as the channel
    /// is open and its send window takes it; so a burst of sends goes out together.
    pub fn send_data(&mut self, peer: &PeerId, message: DataMessage) -> Result<(), Error> {
        if message.len() > MAX_DATA_MESSAGE {
            return Err(Error::MessageTooLarge(message.len()));
        }
        if !self.config.capabilities.data {
            return Err(Error::NoDataChannel(peer.clone()));
        }
        let max = self.config.max_queued_messages;
        let p = self
            .peers
            .get_mut(peer)
            .ok_or_else(|| Error::UnknownPeer(peer.clone()))?;
        p.send(message, max)?;
        if !self.unflushed.contains(peer) {
            self.unflushed.insert(peer.clone());
        }
        Ok(())
    }

    /// Sends a data message to every peer; returns how many accepted it
    ///
    /// A peer whose queue is full is skipped (the others still get the message).
    pub fn broadcast(&mut self, message: DataMessage) -> Result<usize, Error> {
        if message.len() > MAX_DATA_MESSAGE {
            return Err(Error::MessageTooLarge(message.len()));
        }
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        let mut sent = 0;
        for id in ids {
            match self.send_data(&id, message.clone()) {
                Ok(()) => sent += 1,
                Err(Error::SendQueueFull(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Sends one frame of captured audio (interleaved PCM, exactly one Opus frame of
    /// [`MediaConfig::opus`]) to every connected peer that takes audio; returns how many
    ///
    /// The frame is encoded once, whatever the number of peers. `capture` is when its first
    /// sample was captured, on the local clock.
    pub fn send_audio(&mut self, capture: Instant, pcm: &[i16]) -> Result<usize, Error> {
        if !self.config.capabilities.audio {
            return Err(Error::MediaNotEnabled("audio"));
        }
        let (ticks, data, _) = self.encoders.encode_audio(&self.config.media, pcm)?;
        Ok(self.write_audio(capture, ticks, data))
    }

    /// Sends an already encoded Opus frame of `samples` per channel (pass-through)
    pub fn send_encoded_audio(
        &mut self,
        capture: Instant,
        data: bytes::Bytes,
        samples: usize,
    ) -> Result<usize, Error> {
        if !self.config.capabilities.audio {
            return Err(Error::MediaNotEnabled("audio"));
        }
        let ticks = self.encoders.advance_audio(samples);
        Ok(self.write_audio(capture, ticks, Arc::from(&data[..])))
    }

    fn write_audio(&mut self, capture: Instant, ticks: i64, data: Arc<[u8]>) -> usize {
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        let mut sent = 0;
        for id in ids {
            let peer = self
                .peers
                .get_mut(&id)
                .expect("listed above; panic means bug");
            // One allocation for the payload, shared by every peer.
            sent += peer.write_audio(capture, ticks, data.clone()) as usize;
            self.drain_peer(&id);
        }
        sent
    }

    /// Sends one captured video frame to every connected peer that takes video; returns how
    /// many
    ///
    /// The frame is encoded once per codec in use (peers that negotiated the same codec
    /// share one encoding).
    pub fn send_video(&mut self, capture: Instant, frame: &I420Frame) -> Result<usize, Error> {
        if !self.config.capabilities.video {
            return Err(Error::MediaNotEnabled("video"));
        }
        frame.check()?;
        let ticks = self.encoders.video_ticks(capture);
        let pts = Duration::from_micros((ticks.max(0) as u64 * 1000) / 90);
        let mut by_codec: BTreeMap<VideoCodec, Vec<PeerId>> = BTreeMap::new();
        for (id, peer) in self.peers.iter_mut() {
            if peer.can_send_media() {
                if let Some(c) = peer.video_send_codec() {
                    by_codec.entry(c).or_default().push(id.clone());
                }
            }
        }
        let mut sent = 0;
        for (codec, ids) in by_codec {
            let Some(enc) = self
                .encoders
                .encode_video(&self.config.media, codec, frame, pts)?
            else {
                continue;
            };
            let data: Arc<[u8]> = Arc::from(&enc.data[..]);
            for id in ids {
                let peer = self
                    .peers
                    .get_mut(&id)
                    .expect("listed above; panic means bug");
                sent += peer.write_video(codec, capture, ticks, data.clone()) as usize;
                self.drain_peer(&id);
            }
        }
        Ok(sent)
    }

    /// Sends an already encoded video frame in `codec` (pass-through) to every peer that
    /// receives that codec from us; returns how many
    pub fn send_encoded_video(
        &mut self,
        capture: Instant,
        codec: VideoCodec,
        data: bytes::Bytes,
    ) -> Result<usize, Error> {
        if !self.config.capabilities.video {
            return Err(Error::MediaNotEnabled("video"));
        }
        let ticks = self.encoders.video_ticks(capture);
        let data: Arc<[u8]> = Arc::from(&data[..]);
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        let mut sent = 0;
        for id in ids {
            let peer = self
                .peers
                .get_mut(&id)
                .expect("listed above; panic means bug");
            sent += peer.write_video(codec, capture, ticks, data.clone()) as usize;
            self.drain_peer(&id);
        }
        Ok(sent)
    }

    /// Asks every peer's encoder for a keyframe in its next video frame
    pub fn request_keyframe(&mut self) {
        for c in [VideoCodec::H264, VideoCodec::Vp8, VideoCodec::Vp9] {
            self.encoders.request_keyframe(c);
        }
    }

    /// Feeds one input; afterwards drain [`poll_output`](Self::poll_output)
    ///
    /// An error describes input that was rejected (dropped and counted, or a peer that was
    /// failed because of it); the participant and every other peer carry on.
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<(), Error> {
        let now = input.time();
        self.last_now = self.last_now.max(now);
        match input {
            Input::Timeout(now) => {
                self.handle_timeout(now);
                Ok(())
            }
            Input::Receive(now, recv) => self.handle_receive(now, recv),
            Input::Signal(now, frame) => self.handle_signal(now, frame),
        }
    }

    /// Returns the next output; call until it returns [`Output::Timeout`]
    pub fn poll_output(&mut self) -> Output {
        while let Some(id) = self.unflushed.pop_first() {
            self.drain_peer(&id);
        }
        if let Some(o) = self.outputs.pop_front() {
            return o;
        }
        let (at, reason) = self.next_deadline();
        self.last_timeout_reason = reason;
        Output::Timeout(at)
    }

    /// Why the last [`Output::Timeout`] was scheduled
    pub fn last_timeout_reason(&self) -> TimeoutReason {
        self.last_timeout_reason
    }

    /// Our peer id, once announced
    pub fn my_id(&self) -> Option<&PeerId> {
        match &self.state {
            RoomState::Joined { me, .. } => Some(me),
            _ => None,
        }
    }

    /// The room, once joined or while joining
    pub fn room(&self) -> Option<&RoomId> {
        match &self.state {
            RoomState::Announcing { room } | RoomState::Joined { room, .. } => Some(room),
            _ => None,
        }
    }

    /// Remote peers that currently have an `Rtc` (connecting or connected), in id order
    pub fn peer_ids(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }

    /// How many `str0m::Rtc` instances are alive (one per remote peer)
    pub fn live_rtc_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether the data channel to `peer` is open
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(Peer::is_connected)
    }

    /// Statistics for one peer: a connected one, or the last figures of one that left
    pub fn peer_stats(&self, peer: &PeerId) -> Option<PeerStats> {
        self.peers
            .get(peer)
            .map(Peer::stats)
            .or_else(|| self.departed.get(peer).cloned())
    }

    /// Peers that left or failed and whose last statistics are kept (at most 64, oldest
    /// forgotten first), in id order
    pub fn departed_peer_ids(&self) -> impl Iterator<Item = &PeerId> {
        self.departed
            .keys()
            .filter(|id| !self.peers.contains_key(*id))
    }

    /// Counters of input that was dropped
    pub fn drop_counters(&self) -> DropCounters {
        self.drops
    }

    // ---- inputs ----

    fn handle_timeout(&mut self, now: Instant) {
        self.retry_strays(now);
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if peer.next_timeout(&self.config).0 > now {
                continue;
            }
            let res = peer.handle_timeout(now);
            // A failure here is already reported as `Event::PeerFailed`.
            let _ = self.after_peer_input(&id, res);
            self.check_deadlines(&id, now);
        }
    }

    fn handle_receive(&mut self, now: Instant, recv: Receive<'_>) -> Result<(), Error> {
        if !self.config.candidate_policy.allows(recv.source) {
            // The policy limits which addresses we talk to, whatever a remote's ICE checks
            // would otherwise teach str0m (peer-reflexive candidates).
            self.drops.unroutable_datagrams += 1;
            return Err(Error::UnroutableDatagram(recv.source));
        }
        let res = self.route(now, recv);
        if matches!(res, Err(Error::UnroutableDatagram(_))) {
            self.drops.unroutable_datagrams += 1;
            // A connectivity check or DTLS hello can arrive a moment before the candidate
            // or pair that makes it routable: keep a few for a short while and retry.
            if self.strays.len() >= MAX_STRAYS {
                self.strays.pop_front();
            }
            self.strays.push_back(Stray {
                at: now,
                source: recv.source,
                destination: recv.destination,
                contents: recv.contents.to_vec(),
            });
        } else {
            self.retry_strays(now);
        }
        res
    }

    /// Feeds held datagrams that some peer now accepts; forgets old ones
    fn retry_strays(&mut self, now: Instant) {
        if self.strays.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.strays);
        for stray in held {
            if now >= stray.at + STRAY_TTL {
                continue;
            }
            let recv = Receive {
                source: stray.source,
                destination: stray.destination,
                contents: &stray.contents,
            };
            if self.route(now, recv).is_err() {
                self.strays.push_back(stray);
            } else {
                tracing::debug!(source = %stray.source, "held datagram delivered");
            }
        }
    }

    fn route(&mut self, now: Instant, recv: Receive<'_>) -> Result<(), Error> {
        let parsed =
            str0m::net::Receive::new(Protocol::Udp, recv.source, recv.destination, recv.contents);
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.drops.malformed_datagrams += 1;
                return Err(Error::MalformedDatagram {
                    source_addr: recv.source,
                    reason: e.to_string(),
                });
            }
        };
        let input = str0m::Input::Receive(now, parsed);
        let target = self
            .peers
            .iter()
            .find(|(_, p)| p.accepts(&input))
            .map(|(id, _)| id.clone());
        let Some(id) = target else {
            return Err(Error::UnroutableDatagram(recv.source));
        };
        let peer = self
            .peers
            .get_mut(&id)
            .expect("found above; panic means bug");
        let res = peer.handle_receive(input);
        self.after_peer_input(&id, res)
    }

    fn handle_signal(&mut self, now: Instant, frame: ServerFrame) -> Result<(), Error> {
        match frame {
            ServerFrame::Response { id, result } => self.handle_response(now, id, result),
            ServerFrame::Notification(n) => self.handle_notification(now, n),
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        id: Option<RequestId>,
        result: Result<serde_json::Value, RpcError>,
    ) -> Result<(), Error> {
        let Some(RequestId::Number(n)) = id else {
            if let Err(error) = result {
                // An error about a frame whose id the server could not read.
                self.outputs.push_back(Output::Event(Event::SignalError {
                    method: "unknown",
                    error,
                }));
                return Ok(());
            }
            self.drops.bad_signals += 1;
            return Err(Error::UnexpectedSignal(format!(
                "response to unknown request {id:?}"
            )));
        };
        let Some(method) = self.pending_requests.remove(&n) else {
            self.drops.bad_signals += 1;
            return Err(Error::UnexpectedSignal(format!(
                "response to unknown request {n}"
            )));
        };
        let value = match result {
            Ok(v) => v,
            Err(error) => {
                if method == "peer.announce" {
                    self.state = RoomState::Idle;
                }
                self.outputs
                    .push_back(Output::Event(Event::SignalError { method, error }));
                return Ok(());
            }
        };
        if method != "peer.announce" {
            return Ok(());
        }
        let announced = AnnounceResult::from_value(&value).map_err(|e| {
            self.drops.bad_signals += 1;
            Error::UnexpectedSignal(format!("bad announce result: {}", e.message))
        })?;
        if !matches!(self.state, RoomState::Announcing { .. }) {
            self.drops.bad_signals += 1;
            return Err(Error::UnexpectedSignal(
                "announce result while not announcing".into(),
            ));
        }
        self.state = RoomState::Joined {
            room: announced.room.clone(),
            me: announced.peer_id.clone(),
        };
        self.outputs.push_back(Output::Event(Event::Announced {
            peer_id: announced.peer_id.clone(),
            room: announced.room.clone(),
            peers: announced.peers.clone(),
        }));
        for info in announced.peers {
            if info.peer_id == announced.peer_id || self.peers.contains_key(&info.peer_id) {
                continue;
            }
            self.start_offer(now, info);
        }
        Ok(())
    }

    fn handle_notification(&mut self, now: Instant, n: Notification) -> Result<(), Error> {
        if !matches!(self.state, RoomState::Joined { .. }) {
            self.drops.bad_signals += 1;
            return Err(Error::UnexpectedSignal(
                "notification before announce completed".into(),
            ));
        }
        match n {
            Notification::Joined(info) => {
                if !self.peers.contains_key(&info.peer_id) {
                    self.known.insert(
                        info.peer_id.clone(),
                        Known {
                            info: info.clone(),
                            early_candidates: Vec::new(),
                        },
                    );
                }
                self.outputs
                    .push_back(Output::Event(Event::PeerJoined(info)));
                Ok(())
            }
            Notification::Left { peer_id, reason } => {
                self.known.remove(&peer_id);
                self.close_peer(&peer_id, PeerEnd::Left(LeaveReason::Signaled(reason)));
                Ok(())
            }
            Notification::Offer { from, sdp } => self.handle_offer(now, from, sdp),
            Notification::Answer { from, sdp } => {
                let Some(peer) = self.peers.get_mut(&from) else {
                    self.drops.bad_signals += 1;
                    return Err(Error::UnknownPeer(from));
                };
                let res = peer.accept_answer(&sdp);
                match res {
                    Ok(()) => {
                        self.drain_peer(&from);
                        Ok(())
                    }
                    Err(reason) => self.fail_bad_sdp(&from, reason),
                }
            }
            Notification::IceCandidate {
                from, candidate, ..
            } => self.handle_candidate(from, candidate),
        }
    }

    fn handle_offer(&mut self, now: Instant, from: PeerId, sdp: String) -> Result<(), Error> {
        if let Some(peer) = self.peers.get_mut(&from) {
            // Renegotiation on an existing connection.
            let res = peer.accept_offer(&sdp);
            return match res {
                Ok(answer) => {
                    let frame = self.request(Request::Answer {
                        to: from.clone(),
                        sdp: answer,
                    });
                    self.outputs.push_back(Output::Signal(frame));
                    self.drain_peer(&from);
                    Ok(())
                }
                Err(reason) => self.fail_bad_sdp(&from, reason),
            };
        }
        let Some(known) = self.known.remove(&from) else {
            self.drops.bad_signals += 1;
            return Err(Error::UnknownPeer(from));
        };
        let mut peer = self.new_peer(now, known.info, Role::Answerer);
        let answer = match peer.accept_offer(&sdp) {
            Ok(a) => a,
            Err(reason) => {
                self.drops.bad_signals += 1;
                self.outputs.push_back(Output::Event(Event::PeerFailed {
                    peer: from.clone(),
                    reason: FailReason::BadSdp(reason.clone()),
                }));
                return Err(Error::BadSdp { peer: from, reason });
            }
        };
        let frame = self.request(Request::Answer {
            to: from.clone(),
            sdp: answer,
        });
        self.outputs.push_back(Output::Signal(frame));
        self.send_end_of_candidates(&from);
        let policy = self.config.candidate_policy;
        for c in known.early_candidates {
            // Early candidates were syntax-checked on arrival.
            let _ = peer.add_remote_candidate(&c, policy);
        }
        self.peers.insert(from.clone(), peer);
        self.drain_peer(&from);
        Ok(())
    }

    fn handle_candidate(&mut self, from: PeerId, candidate: String) -> Result<(), Error> {
        let policy = self.config.candidate_policy;
        if let Some(peer) = self.peers.get_mut(&from) {
            let res = peer.add_remote_candidate(&candidate, policy);
            self.drain_peer(&from);
            // A check that arrived before this candidate may be routable now.
            self.retry_strays(self.last_now);
            return res.map_err(|reason| {
                self.drops.bad_candidates += 1;
                Error::BadCandidate { peer: from, reason }
            });
        }
        if let Some(known) = self.known.get_mut(&from) {
            if let Err(reason) = crate::peer::parse_candidate(&candidate) {
                self.drops.bad_candidates += 1;
                return Err(Error::BadCandidate { peer: from, reason });
            }
            // Bounded: a peer cannot grow our memory without limit before its offer.
            if known.early_candidates.len() < 64 {
                known.early_candidates.push(candidate);
            }
            return Ok(());
        }
        self.drops.bad_signals += 1;
        Err(Error::UnknownPeer(from))
    }

    // ---- peers ----

    fn new_peer(&mut self, now: Instant, info: PeerInfo, role: Role) -> Peer {
        let ufrag = random_token(&mut self.rng, 8);
        let pass = random_token(&mut self.rng, 24);
        let mut peer = Peer::new(
            now,
            info,
            role,
            &self.config,
            self.crypto.clone(),
            self.dtls_cert.clone(),
            str0m::IceCreds { ufrag, pass },
        );
        for c in &self.local_candidates {
            peer.add_local_candidate(c.clone());
        }
        peer
    }

    fn start_offer(&mut self, now: Instant, info: PeerInfo) {
        let id = info.peer_id.clone();
        let early = self.known.remove(&id);
        let mut peer = self.new_peer(now, info, Role::Offerer);
        let offer = peer.create_offer(&self.config);
        let frame = self.request(Request::Offer {
            to: id.clone(),
            sdp: offer,
        });
        self.outputs.push_back(Output::Signal(frame));
        if let Some(known) = early {
            for c in known.early_candidates {
                peer.queue_remote_candidate(c);
            }
        }
        self.peers.insert(id.clone(), peer);
        self.send_end_of_candidates(&id);
        self.drain_peer(&id);
    }

    fn send_end_of_candidates(&mut self, to: &PeerId) {
        let frame = self.request(Request::IceCandidate {
            to: to.clone(),
            candidate: String::new(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        });
        self.outputs.push_back(Output::Signal(frame));
    }

    fn fail_bad_sdp(&mut self, id: &PeerId, reason: String) -> Result<(), Error> {
        self.drops.bad_signals += 1;
        self.remove_peer(id, PeerEnd::Failed(FailReason::BadSdp(reason.clone())));
        Err(Error::BadSdp {
            peer: id.clone(),
            reason,
        })
    }

    /// Drains one peer after an input and turns a str0m error into a failed peer
    fn after_peer_input(&mut self, id: &PeerId, res: Result<(), String>) -> Result<(), Error> {
        match res {
            Ok(()) => {
                self.drain_peer(id);
                Ok(())
            }
            Err(reason) => {
                self.remove_peer(id, PeerEnd::Failed(FailReason::Transport(reason.clone())));
                Err(Error::PeerFailed {
                    peer: id.clone(),
                    reason,
                })
            }
        }
    }

    fn check_deadlines(&mut self, id: &PeerId, now: Instant) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        if let Some(reason) = peer.expired(now, &self.config) {
            self.remove_peer(id, PeerEnd::Failed(reason));
        }
    }

    /// Drains one peer's `Rtc` until it returns a timeout
    fn drain_peer(&mut self, id: &PeerId) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let mut outs = Vec::new();
        let res = peer.drain(&mut outs);
        let mut end = None;
        for o in outs {
            match o {
                PeerOutput::Transmit(t) => self.outputs.push_back(Output::Transmit(t)),
                PeerOutput::Connected(connect_time) => {
                    self.outputs.push_back(Output::Event(Event::PeerConnected {
                        peer: id.clone(),
                        connect_time,
                    }))
                }
                PeerOutput::Data { label, message } => {
                    self.outputs.push_back(Output::Event(Event::DataReceived {
                        peer: id.clone(),
                        label,
                        message,
                    }))
                }
                PeerOutput::Closed => end = Some(PeerEnd::Left(LeaveReason::Closed)),
                PeerOutput::Media(m) => {
                    let event = match m {
                        MediaOut::Audio(chunk) => Event::AudioPlayout {
                            peer: id.clone(),
                            chunk,
                        },
                        MediaOut::EncodedAudio { media_ticks, data } => Event::EncodedAudio {
                            peer: id.clone(),
                            media_ticks,
                            data,
                        },
                        MediaOut::Video {
                            payload,
                            media_ticks,
                            keyframe,
                            codec,
                        } => Event::VideoFrame {
                            peer: id.clone(),
                            payload,
                            media_ticks,
                            keyframe,
                            codec,
                        },
                        MediaOut::KeyframeWanted(codec) => {
                            self.encoders.request_keyframe(codec);
                            continue;
                        }
                    };
                    self.outputs.push_back(Output::Event(event));
                }
            }
        }
        if let Err(reason) = res {
            end = Some(PeerEnd::Failed(FailReason::Transport(reason)));
        }
        if let Some(end) = end {
            self.remove_peer(id, end);
        }
    }

    /// Closes a peer's `Rtc` (its DTLS close_notify still goes out) and forgets the peer
    fn close_peer(&mut self, id: &PeerId, end: PeerEnd) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        peer.close();
        let mut outs = Vec::new();
        // The peer is going away; an error while draining its last output changes nothing.
        let _ = peer.drain(&mut outs);
        for o in outs {
            if let PeerOutput::Transmit(t) = o {
                self.outputs.push_back(Output::Transmit(t));
            }
        }
        self.remove_peer(id, end);
    }

    fn remove_peer(&mut self, id: &PeerId, end: PeerEnd) {
        let Some(peer) = self.peers.remove(id) else {
            return;
        };
        // Keep the last figures of a peer that went away (bounded), for reports.
        self.departed.insert(id.clone(), peer.stats());
        while self.departed.len() > MAX_DEPARTED {
            self.departed.pop_first();
        }
        let event = match end {
            PeerEnd::Left(reason) => Event::PeerLeft {
                peer: id.clone(),
                reason,
            },
            PeerEnd::Failed(reason) => Event::PeerFailed {
                peer: id.clone(),
                reason,
            },
        };
        tracing::debug!(peer = %id, ?event, "peer removed");
        self.outputs.push_back(Output::Event(event));
    }

    fn next_deadline(&self) -> (Instant, TimeoutReason) {
        let mut best = (self.last_now + IDLE_TIMEOUT, TimeoutReason::Idle);
        for p in self.peers.values() {
            let (t, r) = p.next_timeout(&self.config);
            if t < best.0 {
                best = (t, r);
            }
        }
        best
    }

    fn request(&mut self, request: Request) -> ClientFrame {
        let id = self.next_request;
        self.next_request += 1;
        self.pending_requests.insert(id, request.method());
        // Responses to trickled candidates are not needed for long; bound the map.
        while self.pending_requests.len() > 1024 {
            self.pending_requests.pop_first();
        }
        ClientFrame {
            id: RequestId::Number(id),
            request,
        }
    }
}

enum PeerEnd {
    Left(LeaveReason),
    Failed(FailReason),
}

fn random_token(rng: &mut fastrand::Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rng.usize(..ALPHABET.len())] as char)
        .collect()
}

fn local_placeholder() -> PeerId {
    PeerId::new("local").expect("a valid literal id; panic means bug")
}

/// The timeout reported when nothing is scheduled
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
