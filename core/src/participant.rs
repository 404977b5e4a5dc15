//! One local participant in one room: the mesh of `Rtc`s and the signaling state

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::config::{CryptoProvider, DtlsCert};
use str0m::net::Protocol;
use str0m::Candidate;

use crate::adapt::Adaptation;
use crate::codec::{I420Frame, VideoCodec};
use crate::config::{Config, MediaKind};
use crate::error::{CommandError, InputError, SignalProblem, TransportError};
use crate::event::{DataMessage, Event, FailReason, LeaveReason, ReconnectKind};
use crate::ice::stun;
use crate::media::{Encoders, Encoding, MediaOut};
use crate::peer::{dtls_record_header, Health, Peer, PeerOutput, Role};
use crate::pipeline::TrackId;
use crate::recovery::{Action, CircuitState};
use crate::shared::{Input, Output, Receive, TimeoutReason};
use crate::signal::{
    AnnounceResult, ClientFrame, LeftReason, Notification, PeerId, PeerInfo, Request, RequestId,
    RoomId, RpcError, ServerFrame,
};
use crate::stats::{DropCounters, IceStats, PeerStats};
use crate::transport::{Action as TransportAction, Transport};

#[derive(Debug, PartialEq, Eq)]
enum RoomState {
    Idle,
    /// A `peer.announce` is out; `me` is set when this is a re-announce on a new signaling
    /// connection (the peers stay as they are meanwhile)
    Announcing {
        room: RoomId,
        me: Option<PeerId>,
    },
    Joined {
        room: RoomId,
        me: PeerId,
    },
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
    /// Where ICE credentials come from
    secrets: Secrets,
    crypto: Arc<CryptoProvider>,
    dtls_cert: DtlsCert,
    state: RoomState,
    /// The socket's candidates, STUN/TURN servers and relaying
    transport: Transport,
    /// Peers announced to us (joined, or listed at announce) that have no `Rtc` yet
    known: BTreeMap<PeerId, Known>,
    peers: BTreeMap<PeerId, Peer>,
    next_request: i64,
    pending_requests: BTreeMap<i64, &'static str>,
    /// Which peer each outstanding `peer.offer` request is for
    offer_requests: BTreeMap<i64, PeerId>,
    outputs: VecDeque<Output>,
    /// Peers given data since they were last drained: drained at the next `poll_output`,
    /// so a burst of sends reaches str0m in one write-then-poll round
    unflushed: BTreeSet<PeerId>,
    last_now: Instant,
    last_timeout_reason: TimeoutReason,
    drops: DropCounters,
    encoders: Encoders,
    /// Bandwidth estimates to encoder targets (`adapt`, `rate`)
    adaptation: Adaptation,
    /// Datagrams no peer accepted yet, retried for a short while
    strays: VecDeque<Stray>,
    /// Reused between wake-ups (no allocation per timeout or drain)
    scratch_ids: Vec<PeerId>,
    scratch_outs: Vec<PeerOutput>,
    /// Last statistics of peers that went away
    departed: BTreeMap<PeerId, PeerStats>,
    /// Whether the server has accepted our announce on the current signaling connection
    /// (an offer can reach a peer)
    signaling_up: bool,
    /// The server's resume token from the last announce result (signaling.md version 2)
    resume: Option<String>,
    /// Encoders of outgoing tracks other than the default one ([`send_audio_to`],
    /// [`send_video_to`]): each track is its own stream, encoded once for all its peers
    ///
    /// [`send_audio_to`]: Self::send_audio_to
    /// [`send_video_to`]: Self::send_video_to
    track_encoders: BTreeMap<TrackId, Encoders>,
    /// The track each peer's video m-line carried last (`None`: the default track): a
    /// peer moved to another track needs a keyframe of it
    video_track_of: BTreeMap<PeerId, Option<TrackId>>,
    /// (peer, kind) whose sending is paused ([`set_sending`](Self::set_sending)),
    /// remembered across reconnects
    paused: BTreeSet<(PeerId, MediaKind)>,
    /// Video tracks with m-lines of their own ([`add_video_track`](Self::add_video_track))
    separate_tracks: BTreeSet<TrackId>,
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

/// Whether an unroutable datagram may be a remote's first, early one: a STUN message or a
/// plaintext DTLS handshake record (epoch 0, a ClientHello). An encrypted record, SRTP or
/// SRTCP only follows a handshake with this side, so from an address no peer accepts it is
/// stale or forged (RFC 7983 demultiplexing by first byte).
fn worth_holding(contents: &[u8]) -> bool {
    stun::is_stun(contents) || matches!(dtls_record_header(contents), Some((22, 0, _)))
}

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
        let secrets = match config.secret_seed {
            Some(seed) => Secrets::Seeded(fastrand::Rng::with_seed(seed)),
            None => Secrets::Os,
        };
        let transport = Transport::new(&config, now);
        Self {
            secrets,
            adaptation: Adaptation::new(&config.media),
            config,
            crypto,
            dtls_cert,
            state: RoomState::Idle,
            transport,
            known: BTreeMap::new(),
            peers: BTreeMap::new(),
            next_request: 1,
            pending_requests: BTreeMap::new(),
            offer_requests: BTreeMap::new(),
            outputs: VecDeque::new(),
            unflushed: BTreeSet::new(),
            last_now: now,
            last_timeout_reason: TimeoutReason::Idle,
            drops: DropCounters::default(),
            encoders: Encoders::new(),
            strays: VecDeque::new(),
            scratch_ids: Vec::new(),
            scratch_outs: Vec::new(),
            departed: BTreeMap::new(),
            signaling_up: false,
            resume: None,
            track_encoders: BTreeMap::new(),
            video_track_of: BTreeMap::new(),
            paused: BTreeSet::new(),
            separate_tracks: BTreeSet::new(),
        }
    }

    /// The configuration this participant was created with
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds a local address of the socket (the bound address, or one per interface when the
    /// driver binds the wildcard; with the socket's port)
    ///
    /// It becomes a host candidate unless the policies leave it out (relay-only
    /// [`Config::ice_policy`], loopback with [`CandidatePolicy::LoopbackOnly`] or not), and
    /// STUN/TURN traffic leaves from it either way. Add every address before joining;
    /// candidates found later are trickled to every peer.
    ///
    /// [`CandidatePolicy::LoopbackOnly`]: crate::CandidatePolicy::LoopbackOnly
    pub fn add_local_candidate(&mut self, addr: SocketAddr) -> Result<(), CommandError> {
        self.transport.add_local_address(addr)?;
        self.drain_transport();
        Ok(())
    }

    /// Adds a local candidate to every peer and trickles it
    fn trickle_local_candidate(&mut self, cand: Candidate) {
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        for id in ids {
            let peer = self
                .peers
                .get_mut(&id)
                .expect("key just listed; panic means bug");
            if let Some(line) = peer.add_local_candidate(cand.clone()) {
                // str0m's mids are random tokens, not "0": the candidate names the first
                // m-line by index (BUNDLE: one transport for all).
                let frame = self.request(Request::IceCandidate {
                    to: id.clone(),
                    candidate: line,
                    sdp_mid: None,
                    sdp_m_line_index: Some(0),
                });
                self.outputs.push_back(Output::Signal(frame));
            }
            self.drain_peer(&id);
        }
    }

    /// Carries out what the transport asks (candidates, server traffic, events)
    fn drain_transport(&mut self) {
        while let Some(action) = self.transport.poll_action() {
            match action {
                TransportAction::Transmit(t) => self.outputs.push_back(Output::Transmit(t)),
                TransportAction::Candidate(c) => self.trickle_local_candidate(c),
                TransportAction::EndOfCandidates(ids) => {
                    for id in ids {
                        if self.peers.contains_key(&id) {
                            self.send_end_of_candidates(&id);
                        }
                    }
                }
                TransportAction::CandidateLost(c) => {
                    for peer in self.peers.values_mut() {
                        peer.invalidate_local_candidate(&c);
                    }
                    let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
                    for id in ids {
                        self.drain_peer(&id);
                    }
                }
                TransportAction::Event(e) => self.outputs.push_back(Output::Event(e)),
                TransportAction::Resolve(servers) => {
                    self.outputs.push_back(Output::Resolve(servers))
                }
            }
        }
    }

    /// Removes a local host candidate (an address the driver no longer has); call
    /// [`handle_network_change`](Self::handle_network_change) once the addresses are as they
    /// now are
    pub fn remove_local_candidate(&mut self, addr: SocketAddr) {
        self.transport.remove_local_address(addr);
    }

    /// The local addresses changed (an interface came or went, the host moved between
    /// networks): every peer gets an ICE restart at once with the current candidates
    pub fn handle_network_change(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        for id in &ids {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            peer.renew_candidates = true;
            // Restart now if an offer can reach the peer, else as soon as one can.
            let restarted = self.signaling_up;
            peer.recovery.handle_network_change(now, restarted);
            if restarted {
                self.ice_restart(id);
            }
        }
    }

    /// Asks the signaling server to join `room`, optionally with a chosen peer id
    ///
    /// Emits [`Event::Announced`] when the server accepts, then offers to every peer
    /// already in the room.
    pub fn join(&mut self, room: RoomId, peer_id: Option<PeerId>) -> Result<(), CommandError> {
        if !matches!(self.state, RoomState::Idle) {
            return Err(CommandError::AlreadyJoined);
        }
        self.transport.start();
        self.announce(room, peer_id, None);
        Ok(())
    }

    /// Announces again, with the same room and peer id, on a new signaling connection
    ///
    /// Peers keep their connections meanwhile (media and data do not need signaling).
    /// When the server accepts, [`Event::Announced`] lists the room again and we offer to
    /// every listed peer we have no connection with; a peer we are still connected to is
    /// left as it is. Does nothing before the first announce was accepted or after
    /// leaving.
    pub fn rejoin(&mut self) {
        let (room, me) = match &self.state {
            RoomState::Joined { room, me } | RoomState::Announcing { room, me: Some(me) } => {
                (room.clone(), me.clone())
            }
            _ => return,
        };
        self.announce(room, Some(me.clone()), Some(me));
    }

    /// Forgets the requests outstanding on a signaling connection that has gone (their
    /// answers will never come); call before announcing on a new one
    pub fn signaling_lost(&mut self) {
        self.pending_requests.clear();
        self.offer_requests.clear();
        for peer in self.peers.values_mut() {
            peer.offers_maybe_lost();
        }
        self.signaling_up = false;
        // A first announce that was lost is lost: the caller decides whether to try again.
        if let RoomState::Announcing { room, me } = &self.state {
            self.state = match me {
                Some(me) => RoomState::Joined {
                    room: room.clone(),
                    me: me.clone(),
                },
                None => RoomState::Idle,
            };
        }
    }

    fn announce(&mut self, room: RoomId, peer_id: Option<PeerId>, me: Option<PeerId>) {
        let frame = self.request(Request::Announce {
            room: room.clone(),
            peer_id,
            capabilities: Some(self.config.capabilities),
            metadata: Some(self.config.metadata.clone()),
            token: self.config.room_token.clone(),
            // Only a re-announce (we already have our id) can reclaim a held place.
            resume: me.as_ref().and(self.resume.clone()),
        });
        self.outputs.push_back(Output::Signal(frame));
        self.state = RoomState::Announcing { room, me };
    }

    /// Leaves the room: sends `peer.disconnect` and closes every peer
    ///
    /// Each peer gets a [`Event::PeerLeft`] with [`LeaveReason::LocalLeave`].
    pub fn leave(&mut self) {
        // After the peers' last datagrams (DTLS close_notify), which may need the relays.
        self.transport.close();
        if matches!(self.state, RoomState::Idle | RoomState::Left) {
            self.state = RoomState::Left;
            return;
        }
        let frame = self.request(Request::Disconnect);
        self.outputs.push_back(Output::Signal(frame));
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        for id in ids {
            self.close_peer(&id, LeaveReason::LocalLeave);
        }
        self.known.clear();
        self.state = RoomState::Left;
    }

    /// Whether [`send_data`](Self::send_data) to `peer` would be accepted now (the peer
    /// exists and its queue has room); lets a driver apply back-pressure instead of losing
    /// a message to [`CommandError::SendQueueFull`]
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
    /// A message larger than ours or the peer's advertised `max-message-size` fails with
    /// [`CommandError::MessageTooLarge`] and nothing else changes; one queued before the
    /// peer's limit was known and over it comes back as [`Event::DataUndelivered`].
    pub fn send_data(&mut self, peer: &PeerId, message: DataMessage) -> Result<(), CommandError> {
        message.check_size()?;
        if !self.config.capabilities.data {
            return Err(CommandError::NoDataChannel(peer.clone()));
        }
        let max = self.config.max_queued_messages;
        let p = self
            .peers
            .get_mut(peer)
            .ok_or_else(|| CommandError::UnknownPeer(peer.clone()))?;
        p.send(message, max)?;
        if !self.unflushed.contains(peer) {
            self.unflushed.insert(peer.clone());
        }
        Ok(())
    }

    /// Sends a data message to every peer; returns how many accepted it
    ///
    /// A peer whose queue is full, or that advertised a smaller `max-message-size`, is
    /// skipped (the others still get the message).
    pub fn broadcast(&mut self, message: DataMessage) -> Result<usize, CommandError> {
        message.check_size()?;
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        let mut sent = 0;
        for id in ids {
            match self.send_data(&id, message.clone()) {
                Ok(()) => sent += 1,
                // Our own limit was checked above: this one is the peer's.
                Err(CommandError::SendQueueFull(_) | CommandError::MessageTooLarge { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Sends one frame of captured audio (interleaved PCM, exactly one Opus frame of
    /// [`MediaConfig::opus`](crate::media::MediaConfig::opus)) to every connected peer that takes audio; returns how many
    ///
    /// The frame is encoded once, whatever the number of peers. `capture` is when its first
    /// sample was captured, on the local clock.
    pub fn send_audio(&mut self, capture: Instant, pcm: &[i16]) -> Result<usize, CommandError> {
        if !self.config.capabilities.audio {
            return Err(CommandError::MediaNotEnabled(MediaKind::Audio));
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
    ) -> Result<usize, CommandError> {
        if !self.config.capabilities.audio {
            return Err(CommandError::MediaNotEnabled(MediaKind::Audio));
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
    pub fn send_video(
        &mut self,
        capture: Instant,
        frame: &I420Frame,
    ) -> Result<usize, CommandError> {
        if !self.config.capabilities.video {
            return Err(CommandError::MediaNotEnabled(MediaKind::Video));
        }
        frame.check()?;
        let (sent, touched) = crate::adapt::send_video(
            &mut self.encoders,
            &mut self.peers,
            &self.config,
            self.last_now,
            capture,
            frame,
        )?;
        for id in touched {
            self.drain_peer(&id);
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
    ) -> Result<usize, CommandError> {
        if !self.config.capabilities.video {
            return Err(CommandError::MediaNotEnabled(MediaKind::Video));
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

    /// Sends one frame of audio of outgoing `track` to `peers` (those connected and taking
    /// audio from us); returns how many it went to
    ///
    /// Each track other than the default one ([`send_audio`](Self::send_audio)) has an Opus
    /// encoder of its own, so different content can go to different peers (an N−1 mix per
    /// peer, say: one track per peer). A peer receives one audio stream from us (one
    /// m-line per kind), so it should get one track at a time. Paused peers
    /// ([`set_sending`](Self::set_sending)) are skipped.
    pub fn send_audio_to<'a>(
        &mut self,
        track: TrackId,
        capture: Instant,
        pcm: &[i16],
        peers: impl IntoIterator<Item = &'a PeerId>,
    ) -> Result<usize, CommandError> {
        if !self.config.capabilities.audio {
            return Err(CommandError::MediaNotEnabled(MediaKind::Audio));
        }
        let ids: Vec<PeerId> = peers
            .into_iter()
            .filter(|p| self.peers.contains_key(*p))
            .cloned()
            .collect();
        let enc = self
            .track_encoders
            .entry(track)
            .or_insert_with(Encoders::new);
        // Encoded even with no recipient, so the stream's clock and state run on.
        let (ticks, data, _) = enc.encode_audio(&self.config.media, pcm)?;
        let mut sent = 0;
        for id in ids {
            if let Some(peer) = self.peers.get_mut(&id) {
                sent += peer.write_audio(capture, ticks, data.clone()) as usize;
                self.drain_peer(&id);
            }
        }
        Ok(sent)
    }

    /// Gives outgoing video `track` an m-line of its own towards each peer it is sent to,
    /// so that a peer can receive it next to our main video and our other such tracks
    ///
    /// Without this, every track shares a peer's one video m-line (the peer gets one of
    /// them at a time, as [`send_video_to`](Self::send_video_to) last chose). With it, the
    /// first frame of the track written for a peer adds a `sendonly` m-line by
    /// renegotiation (frames before its answer are not sent), and the remote reports the
    /// track's frames as [`Event::VideoFrame`] with `track: Some(track)`, decoded apart from
    /// the rest. Pausing video to a peer ([`set_sending`](Self::set_sending)) pauses these
    /// m-lines too.
    pub fn add_video_track(&mut self, track: TrackId) -> Result<(), CommandError> {
        if !self.config.capabilities.video {
            return Err(CommandError::MediaNotEnabled(MediaKind::Video));
        }
        self.separate_tracks.insert(track);
        Ok(())
    }

    /// Sends one video frame of outgoing `track` to `peers` (those connected and taking
    /// video from us); returns how many it went to
    ///
    /// Each track has encoders of its own (one per codec in use among its peers), so an
    /// original, a blurred copy and a composite can go to different peers. A peer that
    /// moves to this track from another gets a keyframe first. Paused peers are skipped.
    /// A track given its own m-lines ([`add_video_track`](Self::add_video_track)) reaches a
    /// peer next to the others instead of in their place.
    pub fn send_video_to<'a>(
        &mut self,
        track: TrackId,
        capture: Instant,
        frame: &I420Frame,
        peers: impl IntoIterator<Item = &'a PeerId>,
    ) -> Result<usize, CommandError> {
        if !self.config.capabilities.video {
            return Err(CommandError::MediaNotEnabled(MediaKind::Video));
        }
        frame.check()?;
        if self.separate_tracks.contains(&track) {
            return self.send_separate_video(track, capture, frame, peers);
        }
        let mut by_codec: BTreeMap<VideoCodec, Vec<PeerId>> = BTreeMap::new();
        let mut moved = BTreeSet::new();
        for id in peers {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            // A paused peer takes nothing (and must not make the track's peers take a
            // keyframe every frame as a peer still to be moved).
            if !peer.can_send_media() || self.paused.contains(&(id.clone(), MediaKind::Video)) {
                continue;
            }
            if let Some(c) = peer.video_send_codec() {
                by_codec.entry(c).or_default().push(id.clone());
                if self.video_track_of.get(id) != Some(&Some(track)) {
                    moved.insert(c);
                }
            }
        }
        self.send_track_video(track, capture, frame, by_codec, &moved, false)
    }

    /// Encodes `frame` once per codec on `track`'s encoders (a keyframe in the codecs of
    /// `keyframe`) and writes each encoding to its peers: on the track's own m-lines when
    /// `separate`, else on their main video (which then carries this track); returns how
    /// many peers took it
    fn send_track_video(
        &mut self,
        track: TrackId,
        capture: Instant,
        frame: &I420Frame,
        by_codec: BTreeMap<VideoCodec, Vec<PeerId>>,
        keyframe: &BTreeSet<VideoCodec>,
        separate: bool,
    ) -> Result<usize, CommandError> {
        // One video clock for every track, so a peer moved between tracks sees time go on.
        let ticks = self.encoders.video_ticks(capture);
        let pts = Duration::from_micros((ticks.max(0) as u64 * 1000) / 90);
        let enc = self
            .track_encoders
            .entry(track)
            .or_insert_with(Encoders::new);
        enc.share_video_epoch(&self.encoders);
        for &c in keyframe {
            enc.request_keyframe(c);
        }
        let mut sent = 0;
        for (codec, ids) in by_codec {
            let Some(enc) = self.track_encoders.get_mut(&track) else {
                break;
            };
            let Some(out) = enc.encode_video(&self.config.media, codec, frame, pts)? else {
                continue;
            };
            let data: Arc<[u8]> = Arc::from(&out.data[..]);
            for id in ids {
                let Some(peer) = self.peers.get_mut(&id) else {
                    continue;
                };
                let taken = if separate {
                    peer.write_track_video(track, codec, capture, ticks, data.clone())
                } else {
                    peer.write_video(codec, capture, ticks, data.clone())
                };
                if taken {
                    sent += 1;
                    if !separate {
                        self.video_track_of.insert(id.clone(), Some(track));
                    }
                }
                self.drain_peer(&id);
            }
        }
        Ok(sent)
    }

    /// [`send_video_to`](Self::send_video_to) for a track with m-lines of its own
    fn send_separate_video<'a>(
        &mut self,
        track: TrackId,
        capture: Instant,
        frame: &I420Frame,
        peers: impl IntoIterator<Item = &'a PeerId>,
    ) -> Result<usize, CommandError> {
        let mut by_codec: BTreeMap<VideoCodec, Vec<PeerId>> = BTreeMap::new();
        let mut fresh = BTreeSet::new();
        let mut offer_to = Vec::new();
        for id in peers {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            if !peer.can_send_media() || self.paused.contains(&(id.clone(), MediaKind::Video)) {
                continue;
            }
            match peer.track_send_codec(track) {
                Some(c) => {
                    by_codec.entry(c).or_default().push(id.clone());
                    if !peer.track_started(track) {
                        fresh.insert(c);
                    }
                }
                None => {
                    if peer.want_track(track) {
                        offer_to.push(id.clone());
                    }
                }
            }
        }
        let sent = self.send_track_video(track, capture, frame, by_codec, &fresh, true)?;
        // Peers without the track's m-line yet: the renegotiation that adds it.
        for id in offer_to {
            self.drain_peer(&id);
        }
        Ok(sent)
    }

    /// Forgets an outgoing track's encoders (its peers need another track's keyframe); a
    /// track with m-lines of its own stops being sent (its m-lines stay, idle)
    pub fn remove_track(&mut self, track: TrackId) {
        self.track_encoders.remove(&track);
        self.separate_tracks.remove(&track);
    }

    /// Pauses (`false`) or resumes (`true`) sending `kind` to `peer`, visibly: the m-line
    /// becomes `recvonly` (or `inactive`) while paused, and the remote gets
    /// [`Event::RemoteMediaState`]
    ///
    /// Media of that kind written for the peer meanwhile is not sent. Remembered for a peer
    /// not connected yet and across reconnects; the renegotiation waits while an offer is
    /// out or signaling is down.
    pub fn set_sending(
        &mut self,
        peer: &PeerId,
        kind: MediaKind,
        sending: bool,
    ) -> Result<(), CommandError> {
        let enabled = match kind {
            MediaKind::Audio => self.config.capabilities.audio,
            MediaKind::Video => self.config.capabilities.video,
        };
        if !enabled {
            return Err(CommandError::MediaNotEnabled(kind));
        }
        let key = (peer.clone(), kind);
        if sending {
            self.paused.remove(&key);
        } else {
            self.paused.insert(key);
        }
        if let Some(p) = self.peers.get_mut(peer) {
            p.set_send_paused(kind, !sending);
            if sending && kind == MediaKind::Video {
                // The remote's decoder lost its reference meanwhile.
                self.video_track_of.remove(peer);
                p.restart_tracks();
                self.request_keyframe();
            }
            self.drain_peer(peer);
        }
        Ok(())
    }

    /// Whether we send `kind` to `peer` (not paused with [`set_sending`](Self::set_sending))
    pub fn is_sending(&self, peer: &PeerId, kind: MediaKind) -> bool {
        !self.paused.contains(&(peer.clone(), kind))
    }

    /// Whether `peer` sends us `kind`, as its m-line direction last said (false for an
    /// unknown peer)
    pub fn is_remote_sending(&self, peer: &PeerId, kind: MediaKind) -> bool {
        self.peers.get(peer).is_some_and(|p| p.remote_sending(kind))
    }

    /// Asks every peer's encoder for a keyframe in its next video frame
    pub fn request_keyframe(&mut self) {
        for c in [VideoCodec::H264, VideoCodec::Vp8, VideoCodec::Vp9] {
            self.encoders.request_keyframe(c);
        }
    }

    /// Feeds one input; afterwards drain [`poll_output`](Self::poll_output)
    ///
    /// Routine drops (a malformed or stray datagram, one from an address the candidate
    /// policy excludes) are only counted in [`drop_counters`](Self::drop_counters). An
    /// error describes signaling input that was rejected (dropped and counted, or a peer
    /// that was failed because of it); the participant and every other peer carry on.
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<(), InputError> {
        let now = input.time();
        self.last_now = self.last_now.max(now);
        let res = match input {
            Input::Timeout(now) => {
                self.handle_timeout(now);
                Ok(())
            }
            Input::Receive(now, recv) => self.handle_receive(now, recv),
            Input::Signal(now, frame) => self.handle_signal(now, frame),
            Input::Resolved(now, answers) => {
                self.transport.resolved(now, answers);
                Ok(())
            }
        };
        // New estimates arrive while peers are drained: the encoders follow them.
        self.adaptation
            .run(self.last_now, &mut self.peers, &mut self.encoders);
        res
    }

    /// Returns the next output; call until it returns [`Output::Timeout`]
    pub fn poll_output(&mut self) -> Output {
        while let Some(id) = self.unflushed.pop_first() {
            self.drain_peer(&id);
        }
        self.drain_transport();
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
            RoomState::Announcing { room, .. } | RoomState::Joined { room, .. } => Some(room),
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
            .map(|p| self.named_stats(p))
            .or_else(|| self.departed.get(peer).cloned())
    }

    /// A peer's statistics with the candidate types of its selected pair and what we send
    /// it (rate adaptation)
    fn named_stats(&self, peer: &Peer) -> PeerStats {
        let mut s = peer.stats();
        s.candidate_pair = s
            .candidate_pair
            .map(|p| self.transport.pair(p.local, p.remote));
        self.adaptation.fill_stats(
            peer,
            &self.encoders,
            &self.config.media,
            self.last_now,
            &mut s,
        );
        s
    }

    /// What the ICE transport did: local candidates, STUN/TURN servers, relayed traffic
    pub fn ice_stats(&self) -> IceStats {
        self.transport.stats()
    }

    /// Whether the socket may close: after [`leave`](Self::leave), once every TURN
    /// allocation is released (or a short grace ran out); at once without TURN servers
    pub fn is_transport_closed(&self) -> bool {
        self.transport.is_closed()
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
        self.transport.handle_timeout(now);
        self.retry_strays(now);
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.extend(self.peers.keys().cloned());
        for id in ids.drain(..) {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            // A peer with nothing due is left alone: in a mesh every wake-up is some peer's
            // packet or playout, and timing out and draining the other `Rtc`s is most of the
            // cost of a wake-up otherwise.
            if peer.io_due(now) {
                match peer.handle_timeout(now) {
                    // Only playout was due: str0m has nothing new to say.
                    Ok(false) => self.drain_peer_with(&id, false),
                    // A failure here is already reported as `Event::PeerFailed`.
                    res => {
                        let _ = self.after_peer_input(&id, res.map(drop));
                    }
                }
            }
            self.check_peer(&id, now);
        }
        self.scratch_ids = ids;
    }

    fn handle_receive(&mut self, now: Instant, recv: Receive<'_>) -> Result<(), InputError> {
        // STUN/TURN servers' datagrams stop here; relayed ones go on as if from the peer.
        let Some(recv) = self.transport.receive(now, recv) else {
            return Ok(());
        };
        if !self.config.candidate_policy.allows(recv.source) {
            // The policy limits which addresses we talk to, whatever a remote's ICE checks
            // would otherwise teach str0m (peer-reflexive candidates).
            self.drops.unroutable_datagrams += 1;
            return Ok(());
        }
        match self.route(now, recv) {
            Routed::Delivered(res) => {
                self.retry_strays(now);
                res
            }
            Routed::Malformed(reason) => {
                self.drops.malformed_datagrams += 1;
                tracing::trace!(source = %recv.source, %reason, "malformed datagram dropped");
                Ok(())
            }
            Routed::NoPeer => {
                self.drops.unroutable_datagrams += 1;
                // A connectivity check or DTLS hello can arrive a moment before the
                // candidate or pair that makes it routable: keep a few for a short while
                // and retry. Nothing else is ever early, only stale (an earlier session
                // on a reused address) or forged, and handing it to the next connection
                // from that address could break its handshake.
                if !worth_holding(recv.contents) {
                    return Ok(());
                }
                if self.strays.len() >= MAX_STRAYS {
                    self.strays.pop_front();
                }
                self.strays.push_back(Stray {
                    at: now,
                    source: recv.source,
                    destination: recv.destination,
                    contents: recv.contents.to_vec(),
                });
                Ok(())
            }
        }
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
            match self.route(now, recv) {
                Routed::NoPeer => self.strays.push_back(stray),
                _ => tracing::debug!(source = %stray.source, "held datagram delivered"),
            }
        }
    }

    fn route(&mut self, now: Instant, recv: Receive<'_>) -> Routed {
        let len = recv.contents.len();
        // Answers to our own round-trip probes (see `pushback`) stop here.
        if let Ok(msg) = stun::Message::parse(recv.contents) {
            if matches!(msg.class, stun::Class::Success | stun::Class::Error)
                && self
                    .peers
                    .values_mut()
                    .any(|p| p.take_probe_answer(now, &msg))
            {
                return Routed::Delivered(Ok(()));
            }
        }
        // Parsing and matching run str0m on unauthenticated bytes from anyone: a panic in
        // them (see `Peer::handle_receive`) makes the datagram malformed, nothing more.
        let routed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let parsed = str0m::net::Receive::new(
                Protocol::Udp,
                recv.source,
                recv.destination,
                recv.contents,
            )
            .map_err(|e| e.to_string())?;
            let input = str0m::Input::Receive(now, parsed);
            let target = self
                .peers
                .iter()
                .find(|(_, p)| p.accepts(&input))
                .map(|(id, _)| id.clone());
            Ok((input, target))
        }));
        let (input, target) = match routed {
            Ok(Ok(routed)) => routed,
            Ok(Err(e)) => return Routed::Malformed(e),
            Err(_) => return Routed::Malformed("str0m panicked parsing it".into()),
        };
        let Some(id) = target else {
            return Routed::NoPeer;
        };
        let peer = self
            .peers
            .get_mut(&id)
            .expect("found above; panic means bug");
        if peer.refuses_early_record(recv.contents) {
            return Routed::Delivered(Ok(()));
        }
        let res = peer.handle_receive(input, len);
        Routed::Delivered(self.after_peer_input(&id, res))
    }

    fn handle_signal(&mut self, now: Instant, frame: ServerFrame) -> Result<(), InputError> {
        let res = match frame {
            ServerFrame::Response { id, result } => self.handle_response(now, id, result),
            ServerFrame::Notification(n) => self.handle_notification(now, n),
        };
        if res.is_err() {
            self.drops.bad_signals += 1;
        }
        res
    }

    fn handle_response(
        &mut self,
        now: Instant,
        id: Option<RequestId>,
        result: Result<serde_json::Value, RpcError>,
    ) -> Result<(), InputError> {
        let Some(RequestId::Number(n)) = id else {
            if let Err(error) = result {
                // An error about a frame whose id the server could not read.
                self.outputs.push_back(Output::Event(Event::SignalError {
                    method: "unknown",
                    error,
                }));
                return Ok(());
            }
            return Err(InputError::UnexpectedSignal(SignalProblem::UnknownResponse));
        };
        let Some(method) = self.pending_requests.remove(&n) else {
            return Err(InputError::UnexpectedSignal(SignalProblem::UnknownResponse));
        };
        let offered_to = self.offer_requests.remove(&n);
        let value = match result {
            Ok(v) => v,
            Err(error) => {
                if let Some(peer) = offered_to.and_then(|id| self.peers.get_mut(&id)) {
                    peer.offer_refused();
                }
                if method == "peer.announce" {
                    // A refused re-announce leaves us where we were; a refused first one
                    // leaves us outside the room.
                    self.signaling_lost_announce();
                }
                self.outputs
                    .push_back(Output::Event(Event::SignalError { method, error }));
                return Ok(());
            }
        };
        if method != "peer.announce" {
            return Ok(());
        }
        let announced = AnnounceResult::from_value(&value)
            .map_err(|_| InputError::UnexpectedSignal(SignalProblem::BadAnnounceResult))?;
        if !matches!(self.state, RoomState::Announcing { .. }) {
            return Err(InputError::UnexpectedSignal(
                SignalProblem::UnexpectedAnnounceResult,
            ));
        }
        self.state = RoomState::Joined {
            room: announced.room.clone(),
            me: announced.peer_id.clone(),
        };
        // Before offering: the servers handed out join the gathering the offers wait for.
        self.transport
            .add_announced_servers(now, &announced.ice_servers);
        if announced.resumed {
            tracing::debug!("resumed our place in the room");
        }
        self.resume = announced.resume.clone();
        self.outputs.push_back(Output::Event(Event::Announced {
            peer_id: announced.peer_id.clone(),
            room: announced.room.clone(),
            peers: announced.peers.clone(),
            resumed: announced.resumed,
        }));
        self.signaling_up = true;
        // Offer to every listed peer we have no connection with; a peer we are still
        // connected to (a re-announce after a signaling outage) is left as it is.
        for info in announced.peers {
            if info.peer_id == announced.peer_id || self.peers.contains_key(&info.peer_id) {
                continue;
            }
            self.start_offer(now, info);
        }
        // Peers whose path broke while signaling was down get their ICE restart now.
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        for id in ids {
            self.offer_direction(&id);
            self.check_peer(&id, now);
        }
        Ok(())
    }

    /// An announce was refused: a re-announce leaves us joined as before, a first one
    /// leaves us outside the room
    fn signaling_lost_announce(&mut self) {
        if let RoomState::Announcing { room, me } = &self.state {
            self.state = match me {
                Some(me) => RoomState::Joined {
                    room: room.clone(),
                    me: me.clone(),
                },
                None => RoomState::Idle,
            };
        }
    }

    fn handle_notification(&mut self, now: Instant, n: Notification) -> Result<(), InputError> {
        let joined = matches!(
            self.state,
            RoomState::Joined { .. } | RoomState::Announcing { me: Some(_), .. }
        );
        if !joined {
            return Err(InputError::UnexpectedSignal(SignalProblem::NotJoinedYet));
        }
        match n {
            Notification::Joined(info) => {
                // A peer we are connected to that announced again (after its signaling
                // came back, or a restarted server) keeps its connection.
                if let Some(peer) = self.peers.get_mut(&info.peer_id) {
                    peer.orphan = false;
                } else {
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
                let up = self
                    .peers
                    .get(&peer_id)
                    .is_some_and(|p| p.health(now, &self.config) == Health::Up);
                if reason == LeftReason::Timeout && up {
                    // Its signaling timed out but our path to it works: keep it while the
                    // path holds (it may come back to the server; if the path breaks it is
                    // gone).
                    tracing::debug!(peer = %peer_id, "left by timeout, path up: kept");
                    if let Some(p) = self.peers.get_mut(&peer_id) {
                        p.orphan = true;
                    }
                    return Ok(());
                }
                self.close_peer(&peer_id, LeaveReason::Signaled(reason));
                Ok(())
            }
            Notification::Offer { from, sdp } => {
                tracing::trace!(peer = %from, %sdp, "offer received");
                self.handle_offer(now, from, sdp)
            }
            Notification::Answer { from, sdp } => {
                tracing::trace!(peer = %from, %sdp, "answer received");
                let Some(peer) = self.peers.get_mut(&from) else {
                    return Err(InputError::UnknownPeer(from));
                };
                self.transport.add_remote_description(now, &sdp);
                match peer.accept_answer(&sdp) {
                    Ok(()) => {
                        self.drain_peer(&from);
                        Ok(())
                    }
                    // After a glare our own offer may be gone: a late answer to it changes
                    // nothing.
                    //
                    // Any other refusal is contained too: the answer may be a late one for
                    // an offer of a connection either side has replaced since (held frames
                    // of a resumed signaling connection, say). The connection stays as it
                    // was and recovery goes on (a new offer after its next interval).
                    Err(reason) => {
                        tracing::debug!(peer = %from, %reason, "answer not used");
                        Err(InputError::BadSdp { peer: from, reason })
                    }
                }
            }
            Notification::IceCandidate {
                from, candidate, ..
            } => self.handle_candidate(from, candidate),
        }
    }

    fn handle_offer(&mut self, now: Instant, from: PeerId, sdp: String) -> Result<(), InputError> {
        if self.peers.contains_key(&from) || self.known.contains_key(&from) {
            self.transport.add_remote_description(now, &sdp);
        }
        let polite = self.is_polite(&from);
        if let Some(peer) = self.peers.get_mut(&from) {
            if peer.is_retired_connection(&sdp) {
                // For a connection of ours that we have since replaced: late.
                tracing::debug!(peer = %from, "offer for a replaced connection; ignored");
                return Ok(());
            }
            if peer.is_other_connection(&sdp) {
                // A new connection from the remote: it restarted, or reconnects in full.
                if peer.has_pending_offer() && peer.is_fresh() && !polite {
                    // Both reconnect at once: the impolite side's offer wins.
                    tracing::debug!(peer = %from, "glare on a full reconnect; keeping ours");
                    return Ok(());
                }
                return self.replace_with_answerer(now, from, &sdp);
            }
            if peer.has_pending_offer() && !polite {
                // Both offered at once (perfect negotiation): the impolite side ignores the
                // polite side's offer, which answers ours instead.
                tracing::debug!(peer = %from, "glare; ignoring their offer");
                return Ok(());
            }
            // Renegotiation on an existing connection (an ICE restart, say).
            return match peer.accept_offer(&sdp) {
                Ok(answer) => {
                    let frame = self.request(Request::Answer {
                        to: from.clone(),
                        sdp: answer,
                    });
                    self.outputs.push_back(Output::Signal(frame));
                    self.drain_peer(&from);
                    Ok(())
                }
                // A late offer for a state either side has left: the connection stays as it
                // was (recovery goes on if it is broken).
                Err(reason) => {
                    tracing::debug!(peer = %from, %reason, "offer not used");
                    Err(InputError::BadSdp { peer: from, reason })
                }
            };
        }
        let Some(known) = self.known.remove(&from) else {
            return Err(InputError::UnknownPeer(from));
        };
        let mut peer = self.new_peer(now, known.info, Role::Answerer);
        let answer = match peer.accept_offer(&sdp) {
            Ok(a) => a,
            Err(reason) => {
                self.outputs.push_back(Output::Event(Event::PeerFailed {
                    peer: from.clone(),
                    reason: FailReason::BadSdp(reason.clone()),
                }));
                return Err(InputError::BadSdp { peer: from, reason });
            }
        };
        let frame = self.request(Request::Answer {
            to: from.clone(),
            sdp: answer,
        });
        self.outputs.push_back(Output::Signal(frame));
        if self.transport.end_of_candidates_now(&from) {
            self.send_end_of_candidates(&from);
        }
        let policy = self.config.candidate_policy;
        for c in known.early_candidates {
            // Early candidates were syntax-checked on arrival.
            let _ = peer.add_remote_candidate(&c, policy);
        }
        self.peers.insert(from.clone(), peer);
        self.drain_peer(&from);
        Ok(())
    }

    fn handle_candidate(&mut self, from: PeerId, candidate: String) -> Result<(), InputError> {
        let policy = self.config.candidate_policy;
        if self.peers.contains_key(&from) || self.known.contains_key(&from) {
            self.transport.add_remote_line(self.last_now, &candidate);
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            let res = peer.add_remote_candidate(&candidate, policy);
            self.drain_peer(&from);
            // A check that arrived before this candidate may be routable now.
            self.retry_strays(self.last_now);
            return res.map_err(|detail| {
                self.drops.bad_candidates += 1;
                InputError::BadCandidate { peer: from, detail }
            });
        }
        if let Some(known) = self.known.get_mut(&from) {
            if let Err(detail) = crate::peer::parse_candidate(&candidate) {
                self.drops.bad_candidates += 1;
                return Err(InputError::BadCandidate { peer: from, detail });
            }
            // Bounded: a peer cannot grow our memory without limit before its offer.
            if known.early_candidates.len() < 64 {
                known.early_candidates.push(candidate);
            }
            return Ok(());
        }
        Err(InputError::UnknownPeer(from))
    }

    /// Whether we are the polite side with `remote` (signaling.md: the peer whose id sorts
    /// greater gives way when both offer at once)
    fn is_polite(&self, remote: &PeerId) -> bool {
        self.my_id().is_some_and(|me| me.as_str() > remote.as_str())
    }

    /// Replaces a peer's connection with a new one that answers `sdp` (the remote's new
    /// connection); what the old one still had to send goes over to it
    fn replace_with_answerer(
        &mut self,
        now: Instant,
        from: PeerId,
        sdp: &str,
    ) -> Result<(), InputError> {
        let mut old = self
            .peers
            .remove(&from)
            .expect("the caller found it; panic means bug");
        let mut peer = self.new_peer(now, old.info().clone(), Role::Answerer);
        let undelivered = peer.take_over(&mut old);
        self.report_undelivered(&from, undelivered);
        let answer = match peer.accept_offer(sdp) {
            Ok(a) => a,
            Err(reason) => {
                self.outputs.push_back(Output::Event(Event::PeerFailed {
                    peer: from.clone(),
                    reason: FailReason::BadSdp(reason.clone()),
                }));
                return Err(InputError::BadSdp { peer: from, reason });
            }
        };
        tracing::debug!(peer = %from, "the remote reconnects in full; answering");
        peer.note_reconnecting(ReconnectKind::Full);
        let frame = self.request(Request::Answer {
            to: from.clone(),
            sdp: answer,
        });
        self.outputs.push_back(Output::Signal(frame));
        self.send_end_of_candidates(&from);
        self.peers.insert(from.clone(), peer);
        self.drain_peer(&from);
        Ok(())
    }

    /// Replaces a peer's connection with a new one that offers (a full reconnect)
    fn reconnect(&mut self, id: &PeerId, now: Instant) {
        let Some(mut old) = self.peers.remove(id) else {
            return;
        };
        // The old connection is dropped without a close: the remote's own recovery sees our
        // new offer (a new SDP session id) and replaces its side.
        let mut peer = self.new_peer(now, old.info().clone(), Role::Offerer);
        let undelivered = peer.take_over(&mut old);
        self.report_undelivered(id, undelivered);
        if peer.note_reconnecting(ReconnectKind::Full) {
            self.outputs
                .push_back(Output::Event(Event::PeerReconnecting {
                    peer: id.clone(),
                    kind: ReconnectKind::Full,
                }));
        }
        let offer = peer.create_offer(&self.config);
        let frame = self.request(Request::Offer {
            to: id.clone(),
            sdp: offer,
        });
        self.outputs.push_back(Output::Signal(frame));
        self.peers.insert(id.clone(), peer);
        self.send_end_of_candidates(id);
        self.drain_peer(id);
    }

    fn report_undelivered(&mut self, id: &PeerId, messages: Vec<DataMessage>) {
        if messages.is_empty() {
            return;
        }
        tracing::debug!(peer = %id, n = messages.len(), "data the old connection may not have delivered");
        self.outputs
            .push_back(Output::Event(Event::DataUndelivered {
                peer: id.clone(),
                messages,
            }));
    }

    /// Looks at one peer's health and carries out what its recovery says is due
    fn check_peer(&mut self, id: &PeerId, now: Instant) {
        let signaling = self.signaling_up;
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let health = peer.health(now, &self.config);
        if peer.orphan && health != Health::Up {
            // The server said it left; only its working path kept it.
            let reason = LeaveReason::Signaled(LeftReason::Timeout);
            self.close_peer(id, reason);
            return;
        }
        match health {
            Health::Connecting => {}
            Health::Up => {
                if let Some(after) = peer.recovery.handle_up(now) {
                    if after >= self.config.recovery.reconnect_after
                        && peer.has_unconfirmed_data()
                        && peer.connected_before(now - after)
                    {
                        // SCTP has backed its retransmissions off by now: a new connection
                        // carries the data at once (what the old one may have delivered
                        // is reported).
                        tracing::debug!(peer = %id, ?after, "path back after a long outage; new connection for the data");
                        self.reconnect(id, now);
                        if let Some(p) = self.peers.get_mut(id) {
                            p.recovery.continue_outage(now - after);
                        }
                        return;
                    }
                    let kind = peer.reconnected();
                    tracing::debug!(peer = %id, ?after, ?kind, "reconnected");
                    self.outputs
                        .push_back(Output::Event(Event::PeerReconnected {
                            peer: id.clone(),
                            after,
                            kind,
                        }));
                }
            }
            Health::Down => peer.recovery.handle_down(now),
            Health::Dead => {
                let closed = peer.closed_by_remote();
                peer.recovery.handle_dead(now, closed);
            }
        }
        let was_open = peer.recovery.circuit() == CircuitState::Open;
        let action = peer.recovery.poll_action(now, signaling);
        if !was_open && peer.recovery.circuit() == CircuitState::Open {
            let last_error = peer.last_error();
            tracing::debug!(peer = %id, "recovery gave up for now (circuit open)");
            self.outputs.push_back(Output::Event(Event::PeerFailed {
                peer: id.clone(),
                reason: FailReason::Unreachable { last_error },
            }));
        }
        match action {
            None => {}
            Some(Action::IceRestart) => self.ice_restart(id),
            Some(Action::Reconnect) => self.reconnect(id, now),
        }
    }

    /// Restarts ICE with one peer (with fresh local candidates after a network change) and
    /// sends the offer
    fn ice_restart(&mut self, id: &PeerId) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let fresh: Option<Vec<Candidate>> = std::mem::take(&mut peer.renew_candidates)
            .then(|| self.transport.candidates().cloned().collect());
        let offer = peer.ice_restart(fresh.as_deref());
        if peer.note_reconnecting(ReconnectKind::IceRestart) {
            self.outputs
                .push_back(Output::Event(Event::PeerReconnecting {
                    peer: id.clone(),
                    kind: ReconnectKind::IceRestart,
                }));
        }
        tracing::debug!(peer = %id, "ice restart");
        let frame = self.request(Request::Offer {
            to: id.clone(),
            sdp: offer,
        });
        self.outputs.push_back(Output::Signal(frame));
        self.drain_peer(id);
    }

    // ---- peers ----

    fn new_peer(&mut self, now: Instant, info: PeerInfo, role: Role) -> Peer {
        let ufrag = self.secrets.token(8);
        let pass = self.secrets.token(24);
        let mut peer = Peer::new(
            now,
            info,
            role,
            &self.config,
            self.crypto.clone(),
            self.dtls_cert.clone(),
            str0m::IceCreds { ufrag, pass },
        );
        for c in self.transport.candidates() {
            peer.add_local_candidate(c.clone());
        }
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let key = (peer.info().peer_id.clone(), kind);
            peer.set_send_paused(kind, self.paused.contains(&key));
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
        if self.transport.end_of_candidates_now(&id) {
            self.send_end_of_candidates(&id);
        }
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

    /// Drains one peer after an input and turns a str0m error into a failed peer
    fn after_peer_input(
        &mut self,
        id: &PeerId,
        res: Result<(), TransportError>,
    ) -> Result<(), InputError> {
        match res {
            Ok(()) => {
                self.drain_peer(id);
                Ok(())
            }
            Err(reason) => {
                // The connection is broken for good; recovery replaces it.
                if let Some(peer) = self.peers.get_mut(id) {
                    peer.set_broken(reason.clone());
                }
                Err(InputError::PeerFailed {
                    peer: id.clone(),
                    reason,
                })
            }
        }
    }

    /// Drains one peer's `Rtc` until it returns a timeout
    fn drain_peer(&mut self, id: &PeerId) {
        self.drain_peer_with(id, true);
    }

    /// Hands on what one peer has for us: its media's output, and what its `Rtc` has
    /// unless `rtc` is false (nothing was fed to it since it last returned a timeout)
    fn drain_peer_with(&mut self, id: &PeerId, rtc: bool) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let mut outs = std::mem::take(&mut self.scratch_outs);
        let res = if rtc {
            peer.drain(&mut outs)
        } else {
            peer.drain_media(&mut outs);
            Ok(())
        };
        for o in outs.drain(..) {
            match o {
                PeerOutput::Transmit(t) => {
                    // Wrapped for the TURN server when it leaves from a relayed candidate.
                    if let Some(t) = self.transport.route(self.last_now, t) {
                        self.outputs.push_back(Output::Transmit(t));
                    }
                }
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
                // Closed by the remote, or dead: recovery decides (the server says when the
                // peer has really left).
                PeerOutput::Closed => {}
                PeerOutput::RemoteSending(kind, sending) => {
                    self.outputs
                        .push_back(Output::Event(Event::RemoteMediaState {
                            peer: id.clone(),
                            kind,
                            sending,
                        }))
                }
                PeerOutput::Undelivered(messages) => self.report_undelivered(id, messages),
                PeerOutput::TrackKeyframeWanted(track, codec) => {
                    if let Some(enc) = self.track_encoders.get_mut(&track) {
                        enc.request_keyframe(codec);
                    }
                }
                PeerOutput::TrackMedia(track, m) => {
                    // Separate tracks are video only.
                    if let MediaOut::Video {
                        payload,
                        media_ticks,
                        keyframe,
                        codec,
                    } = m
                    {
                        self.outputs.push_back(Output::Event(Event::VideoFrame {
                            peer: id.clone(),
                            track: Some(track),
                            payload,
                            media_ticks,
                            keyframe,
                            codec,
                        }));
                    }
                }
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
                            track: None,
                            payload,
                            media_ticks,
                            keyframe,
                            codec,
                        },
                        MediaOut::KeyframeWanted(codec) => {
                            // A keyframe of the track's encoder when the peer gets a
                            // track, else of the encoding this peer gets (or moves to).
                            match self.video_track_of.get(id) {
                                Some(Some(track)) => {
                                    if let Some(enc) = self.track_encoders.get_mut(track) {
                                        enc.request_keyframe(codec);
                                    }
                                }
                                _ => {
                                    let encoding = self
                                        .peers
                                        .get(id)
                                        .map_or(Encoding::Main, |p| p.rate.route.wanted());
                                    self.encoders.request_keyframe_of(codec, encoding);
                                }
                            }
                            continue;
                        }
                    };
                    self.outputs.push_back(Output::Event(event));
                }
            }
        }
        self.scratch_outs = outs;
        if let Err(reason) = res {
            if let Some(peer) = self.peers.get_mut(id) {
                peer.set_broken(reason);
            }
            return;
        }
        self.offer_direction(id);
    }

    /// Sends the offer that brings a peer's m-line directions in line with what we send
    /// (paused or not), when one is due and signaling can carry it
    fn offer_direction(&mut self, id: &PeerId) {
        if !self.signaling_up {
            return;
        }
        let Some(offer) = self.peers.get_mut(id).and_then(Peer::direction_offer) else {
            return;
        };
        tracing::debug!(peer = %id, "renegotiating media directions");
        let frame = self.request(Request::Offer {
            to: id.clone(),
            sdp: offer,
        });
        self.outputs.push_back(Output::Signal(frame));
        // The offer changed nothing str0m has to send yet; its answer is drained as usual.
    }

    /// Closes a peer's `Rtc` (its DTLS close_notify still goes out) and forgets the peer
    fn close_peer(&mut self, id: &PeerId, reason: LeaveReason) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        peer.close();
        let mut outs = Vec::new();
        // The peer is going away; an error while draining its last output changes nothing.
        let _ = peer.drain(&mut outs);
        for o in outs {
            if let PeerOutput::Transmit(t) = o {
                if let Some(t) = self.transport.route(self.last_now, t) {
                    self.outputs.push_back(Output::Transmit(t));
                }
            }
        }
        self.remove_peer(id, reason);
    }

    fn remove_peer(&mut self, id: &PeerId, reason: LeaveReason) {
        let Some(peer) = self.peers.remove(id) else {
            return;
        };
        // Keep the last figures of a peer that went away (bounded), for reports.
        self.departed.insert(id.clone(), self.named_stats(&peer));
        self.video_track_of.remove(id);
        while self.departed.len() > MAX_DEPARTED {
            self.departed.pop_first();
        }
        let event = Event::PeerLeft {
            peer: id.clone(),
            reason,
        };
        tracing::debug!(peer = %id, ?event, "peer removed");
        self.outputs.push_back(Output::Event(event));
    }

    fn next_deadline(&self) -> (Instant, TimeoutReason) {
        let mut best = (self.last_now + IDLE_TIMEOUT, TimeoutReason::Idle);
        if let Some(t) = self.transport.poll_timeout() {
            if t < best.0 {
                best = (t, TimeoutReason::Ice);
            }
        }
        for p in self.peers.values() {
            let (t, r) = p.next_timeout(&self.config, self.signaling_up);
            if t < best.0 {
                best = (t, r);
            }
        }
        best
    }

    fn request(&mut self, request: Request) -> ClientFrame {
        match &request {
            Request::Offer { to, sdp } => tracing::trace!(peer = %to, %sdp, "offer sent"),
            Request::Answer { to, sdp } => tracing::trace!(peer = %to, %sdp, "answer sent"),
            _ => {}
        }
        let id = self.next_request;
        self.next_request += 1;
        self.pending_requests.insert(id, request.method());
        if let Request::Offer { to, .. } = &request {
            self.offer_requests.insert(id, to.clone());
        }
        // Responses to trickled candidates are not needed for long; bound the maps.
        while self.pending_requests.len() > 1024 {
            self.pending_requests.pop_first();
        }
        while self.offer_requests.len() > 256 {
            self.offer_requests.pop_first();
        }
        ClientFrame {
            id: RequestId::Number(id),
            request,
        }
    }
}

/// What became of a datagram offered to the peers
enum Routed {
    /// A peer took it (and this is what came of it)
    Delivered(Result<(), InputError>),
    /// It is not STUN, DTLS, RTP or RTCP
    Malformed(String),
    /// No peer accepts it (yet)
    NoPeer,
}

/// Where ICE credentials come from
enum Secrets {
    /// The operating system's generator (RFC 8445 asks for unpredictable credentials)
    Os,
    /// A seeded generator, for exact replay in the simulator
    Seeded(fastrand::Rng),
}

impl Secrets {
    fn token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut bytes = vec![0u8; len];
        match self {
            Self::Os => getrandom::fill(&mut bytes)
                .expect("the operating system's random generator is available; panic means bug"),
            Self::Seeded(rng) => rng.fill(&mut bytes),
        }
        // 256 is not a multiple of 62, so the symbols are slightly biased; each still
        // carries over 5.9 bits, and a 24-symbol password well over 128.
        bytes
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect()
    }
}

/// The timeout reported when nothing is scheduled
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
