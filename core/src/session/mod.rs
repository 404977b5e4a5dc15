//! A session: one [`Participant`] with everything a driver needs around it
//!
//! The participant is the mesh and its protocol; the session is what an application runs:
//! it opens and re-opens the signaling connection (with backoff), joins and re-announces,
//! takes the application's commands with back-pressure, assigns audio slots, runs test
//! media on a schedule and keeps one set of statistics. It is sans-IO like the
//! participant: drivers (tokio, blocking threads) and the simulator carry out its outputs
//! and feed it inputs, and make no protocol decision of their own.
//!
//! # Call order
//!
//! * [`Session::new`] with the configuration, the current time and the wall-clock time
//!   read together with it (capture-to-playout latency is computed on that anchor).
//! * Drain [`Session::poll_output`] until it returns [`Output::Timeout`], carrying out each
//!   output:
//!   * [`Output::Transmit`]: send the datagram;
//!   * [`Output::Signal`]: send the frame on the signaling connection;
//!   * [`Output::Connect`]: open the signaling connection; when it is up feed
//!     [`Input::SignalingUp`], when it fails [`Input::SignalingDown`];
//!   * [`Output::Disconnect`]: close the signaling connection (nothing more comes for it);
//!   * [`Output::Event`]: hand it to the application (through an [`EventSender`]).
//! * Wait for the soonest of: a datagram, a signaling frame (or the connection dropping), an
//!   application command (only while [`Session::wants_commands`]), the deadline. Feed
//!   exactly one [`Input`] with [`Session::handle_input`], or call one command method
//!   ([`send_data`](Session::send_data), [`send_audio`](Session::send_audio), ...), then
//!   drain again.
//! * Once [`Session::is_finished`] (left, or the join failed) and the drain is done, the
//!   driver releases its socket and ends.
//!
//! > Drain after every mutation, exactly as with [`Participant`].

mod queue;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

pub use queue::{event_queue, EventReceiver, EventSender};

use crate::codec::testsrc::{SourceFrame, TestSources};
use crate::codec::I420Frame;
use crate::config::Config;
use crate::error::CommandError;
use crate::event::DataMessage;
use crate::shared::Receive;
use crate::signal::{ErrorCode, PeerId, PeerInfo, RoomId, RpcError, ServerFrame};
use crate::stats::{DropCounters, PeerStats};
use crate::{Participant, Transmit};

/// Default bound of media events waiting for the application (about 2 s of audio from
/// nine peers)
pub const DEFAULT_MAX_QUEUED_MEDIA: usize = 2048;

/// Data commands a driver takes in one go; after a full core queue the session asks for
/// more commands only when this many fit, so a sender is woken once per batch, not once
/// per message
pub const COMMAND_BATCH: usize = 64;

/// The most audio streams that hold a slot at once (slots are below this)
pub const MAX_AUDIO_SLOTS: usize = 16;

/// How a session is set up (the parts every driver shares)
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The room to join
    pub room: RoomId,
    /// Our peer id; `None` lets the server assign one
    pub peer_id: Option<PeerId>,
    /// The participant's configuration (seed, capabilities, candidate policy, media, ...)
    pub participant: Config,
    /// How long connecting to the signaling server and announcing may take
    pub join_timeout: Duration,
    /// How the session waits between attempts to re-open a lost signaling connection
    pub reconnect: Backoff,
    /// Media events (audio chunks, video frames) waiting for the application before the
    /// oldest are dropped (see [`EventSender`])
    pub max_queued_media: usize,
    /// Test media to send on a schedule once joined (`meshrtc peer --audio tone --video
    /// testsrc`); `None` sends only what the application hands over
    pub test_media: Option<TestMedia>,
}

impl SessionConfig {
    /// A configuration with defaults for everything but the room
    pub fn new(room: RoomId) -> Self {
        Self {
            room,
            peer_id: None,
            participant: Config::default(),
            join_timeout: Duration::from_secs(10),
            reconnect: Backoff::default(),
            max_queued_media: DEFAULT_MAX_QUEUED_MEDIA,
            test_media: None,
        }
    }
}

/// Test media a session sends by itself: a 440 Hz tone and a moving pattern
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestMedia {
    /// Send the tone (in the participant's Opus channel count)
    pub audio: bool,
    /// Send the pattern at (width, height, fps)
    pub video: Option<(u32, u32, u32)>,
}

/// Exponential backoff with jitter
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait before the first attempt
    pub initial: Duration,
    /// The longest wait; each failed attempt doubles the wait up to this
    pub max: Duration,
    /// Each wait is drawn uniformly from `[wait × (1 − jitter), wait]`, so that clients that
    /// lost the same server do not all come back at the same instant
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s, doubling up to 30 s, with half of each wait random
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt` (0 = the first after a loss)
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        full.mul_f64(1.0 - jitter * rng.f64())
    }
}

/// What can happen to a session
#[derive(Debug)]
pub enum Input<'a> {
    /// Time has passed; no other input
    Timeout(Instant),
    /// A datagram arrived
    Receive(Instant, Receive<'a>),
    /// A frame arrived on the signaling connection
    Signal(Instant, ServerFrame),
    /// The signaling connection asked for with [`Output::Connect`] is up
    SignalingUp(Instant),
    /// The signaling connection failed to open, or dropped
    SignalingDown(Instant, String),
    /// A command from the application (the owned form of the command methods, for drivers
    /// that pass commands through a channel)
    Command(Instant, Command),
    /// The STUN/TURN server names of an [`Output::Resolve`], resolved
    Resolved(Instant, Vec<crate::ice::Resolution>),
}

impl Input<'_> {
    /// The time the input happened
    pub fn time(&self) -> Instant {
        match self {
            Self::Timeout(t)
            | Self::Receive(t, _)
            | Self::Signal(t, _)
            | Self::SignalingUp(t)
            | Self::SignalingDown(t, _)
            | Self::Command(t, _)
            | Self::Resolved(t, _) => *t,
        }
    }
}

/// An application command, owned, as it travels through a driver's channel
#[derive(Debug)]
pub enum Command {
    /// A data message to one peer
    Send(PeerId, DataMessage),
    /// A data message to every peer
    Broadcast(DataMessage),
    /// One captured audio frame (interleaved PCM, one Opus frame), captured at the instant
    Audio(Instant, Vec<i16>),
    /// One captured video frame, captured at the instant
    Video(Instant, Box<I420Frame>),
    /// One audio frame of an outgoing track to these peers (see
    /// [`Participant::send_audio_to`](crate::Participant::send_audio_to))
    AudioTo(crate::pipeline::TrackId, Instant, Vec<i16>, Vec<PeerId>),
    /// One video frame of an outgoing track to these peers (see
    /// [`Participant::send_video_to`](crate::Participant::send_video_to))
    VideoTo(
        crate::pipeline::TrackId,
        Instant,
        std::sync::Arc<I420Frame>,
        Vec<PeerId>,
    ),
    /// Pause (`false`) or resume sending a kind of media to a peer, visible in its m-line
    /// (see [`Participant::set_sending`](crate::Participant::set_sending))
    SetSending(PeerId, crate::MediaKind, bool),
    /// Give an outgoing video track m-lines of its own, so a peer can receive it next to
    /// the others (see [`Participant::add_video_track`](crate::Participant::add_video_track))
    AddVideoTrack(crate::pipeline::TrackId),
    /// Leave the room and end the session
    Leave,
}

/// What the session asks its driver to do
#[derive(Debug)]
pub enum Output {
    /// The drain is finished; feed [`Input::Timeout`] at this instant unless something else
    /// comes first
    Timeout(Instant),
    /// Send this datagram
    Transmit(Transmit),
    /// Send this frame on the signaling connection
    Signal(crate::signal::ClientFrame),
    /// Open the signaling connection, then feed [`Input::SignalingUp`] or
    /// [`Input::SignalingDown`]
    Connect,
    /// Close the signaling connection
    Disconnect,
    /// Tell the application
    Event(Event),
    /// Resolve these STUN/TURN server names (DNS is IO) and feed [`Input::Resolved`]
    Resolve(Vec<crate::ice::ServerEndpoint>),
}

/// Something that happened in a session
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The server accepted us into the room (once per session)
    Joined {
        /// Our peer id (assigned by the server if we did not choose one)
        peer_id: PeerId,
        /// The room
        room: RoomId,
        /// The peers already there (we offer to each)
        peers: Vec<PeerInfo>,
    },
    /// Joining failed; the session has ended
    JoinFailed(JoinError),
    /// An event of the mesh: a peer joined, connected, left or failed, data or media
    /// arrived, the server answered a request with an error
    Mesh(crate::Event),
    /// A remote peer's audio got a slot, before its first chunk
    AudioStreamStarted {
        /// The peer
        peer: PeerId,
        /// Its slot, below [`MAX_AUDIO_SLOTS`]; reused only after `AudioStreamEnded`
        slot: usize,
    },
    /// A remote peer left or failed; its audio slot is free (after its last chunk)
    AudioStreamEnded {
        /// The peer
        peer: PeerId,
        /// The slot it had
        slot: usize,
    },
    /// The signaling connection is gone; the session re-opens it with backoff
    ///
    /// Connected peers keep working (media and data do not need signaling); no new peer can
    /// reach us until [`Event::SignalingRestored`]. Once per loss.
    SignalingLost {
        /// Why the connection ended
        reason: String,
    },
    /// The signaling connection is back and the server accepted our re-announce
    ///
    /// Existing connections were kept; we offered to listed peers we had none with.
    SignalingRestored {
        /// The room as the server lists it (without us)
        peers: Vec<PeerInfo>,
        /// From the loss to the re-announce being accepted
        after: Duration,
        /// The server still held our place (resume): the room never saw us leave
        resumed: bool,
    },
    /// The server refused our re-announce (other than "id taken", which is retried)
    RejoinFailed {
        /// The server's error
        error: RpcError,
    },
    /// A command could not be carried out (the peer is unknown or gone, the queue full,
    /// media not enabled, a codec error, ...)
    SendFailed {
        /// The peer, for a unicast send
        peer: Option<PeerId>,
        /// Why
        error: CommandError,
    },
}

impl Event {
    /// Whether this is a media event (an audio chunk, a video frame, encoded audio), which
    /// an event queue may drop when the application does not keep up
    pub fn is_media(&self) -> bool {
        matches!(
            self,
            Self::Mesh(
                crate::Event::AudioPlayout { .. }
                    | crate::Event::VideoFrame { .. }
                    | crate::Event::EncodedAudio { .. }
            )
        )
    }
}

/// Why joining failed
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The signaling server could not be reached (the first connection failed); says where
    /// and why
    #[error("cannot connect to signaling server {0}")]
    Unreachable(String),
    /// The server refused our announce
    #[error("signaling server refused to join: {0}")]
    Rejected(RpcError),
    /// The signaling connection failed or dropped before the announce was accepted
    #[error("signaling connection lost before joining: {0}")]
    SignalingLost(String),
    /// Joining took longer than [`SessionConfig::join_timeout`]
    #[error("signaling server did not answer within {0:?}")]
    Timeout(Duration),
}

/// A snapshot of a session's counters, the same in every driver
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Every remote peer that has a connection (connecting or connected), and the last
    /// figures of those that left (at most 64)
    pub peers: BTreeMap<PeerId, PeerStats>,
    /// Input the core dropped
    pub drops: DropCounters,
    /// Whether the signaling connection is up
    pub signaling_connected: bool,
    /// Times the signaling connection was lost
    pub signaling_losses: u64,
    /// Times a re-announce was accepted after a loss
    pub signaling_restores: u64,
    /// Media events dropped because the application did not read them in time (the
    /// driver fills this in from its [`EventSender`])
    pub media_events_dropped: u64,
    /// Test-media frames that could not be sent
    pub test_media_failures: u64,
    /// The ICE transport: local candidates, STUN/TURN servers, relayed traffic
    pub ice: crate::IceStats,
}

/// The signaling connection as the session sees it
#[derive(Debug, Clone, Copy, PartialEq)]
enum Signaling {
    /// A connection is wanted: the next drain asks for one
    Wanted,
    /// [`Output::Connect`] was given; waiting for up or down
    Connecting,
    Up,
    /// Lost; a new attempt at `retry_at`
    Down {
        retry_at: Instant,
    },
    /// Closed for good (left or join failed)
    Closed,
}

/// Where the session is in its life
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first announce to be accepted (until the deadline)
    Joining {
        deadline: Instant,
    },
    Joined,
    /// Ended: left, or the join failed
    Finished,
}

/// One participant with its signaling connection, commands, test media and statistics;
/// see the [module docs](self) for the call order
///
/// # Example
///
/// A driver's loop, with the IO left out:
///
/// ```no_run
/// use std::time::{Instant, SystemTime};
/// use meshrtc::session::{Input, Output, Session, SessionConfig};
/// use meshrtc::signal::RoomId;
///
/// # fn wait_for_input(_deadline: Instant) -> Option<Input<'static>> { None }
/// let config = SessionConfig::new(RoomId::new("demo").unwrap());
/// let mut session = Session::new(config, Instant::now(), Some(SystemTime::now()));
/// while !session.is_finished() {
///     let deadline = loop {
///         match session.poll_output() {
///             Output::Timeout(t) => break t,
///             Output::Connect => { /* open the WebSocket, then feed Input::SignalingUp */ }
///             Output::Event(e) => println!("{e:?}"),
///             _other => { /* send datagrams and frames, close, resolve names */ }
///         }
///     };
///     let input = wait_for_input(deadline).unwrap_or(Input::Timeout(Instant::now()));
///     session.handle_input(input);
/// }
/// ```
pub struct Session {
    participant: Participant,
    room: RoomId,
    peer_id: Option<PeerId>,
    reconnect: Backoff,
    rng: fastrand::Rng,
    signaling: Signaling,
    phase: Phase,
    /// Failed connection attempts since the last success
    attempts: u32,
    /// When signaling was lost (for `SignalingRestored::after`)
    lost_at: Option<Instant>,
    /// A re-announce to retry (the server still held our id)
    rejoin_at: Option<Instant>,
    disconnect_pending: bool,
    /// A data command the core could not queue yet (its queue for the peer is full)
    stalled: Option<(PeerId, DataMessage)>,
    max_queued: usize,
    slots: [Option<PeerId>; MAX_AUDIO_SLOTS],
    test_media: Option<TestSources>,
    join_timeout: Duration,
    /// Whether the last audio frame failed (failures are reported once per run)
    audio_failing: bool,
    /// Session events waiting to be returned, before anything new from the participant
    pending: VecDeque<Event>,
    now: Instant,
    stats: Stats,
}

impl Session {
    /// Creates a session; its first drain asks for the signaling connection
    ///
    /// `wallclock` is the wall-clock time read together with `now`: capture-to-playout
    /// latency maps local instants to the senders' RTCP wall clocks with it. Drivers pass
    /// it; `None` (the simulator, which measures delay itself) leaves that figure
    /// unmeasured unless the participant's configuration has its own anchor.
    pub fn new(config: SessionConfig, now: Instant, wallclock: Option<SystemTime>) -> Self {
        let SessionConfig {
            room,
            peer_id,
            mut participant,
            join_timeout,
            reconnect,
            max_queued_media: _,
            test_media,
        } = config;
        if let Some(wallclock) = wallclock {
            participant.wallclock_anchor.get_or_insert((now, wallclock));
        }
        let rng = fastrand::Rng::with_seed(participant.seed ^ 0x5e55_10f0);
        let max_queued = participant.max_queued_messages.max(1);
        let channels = participant.media.opus.channels;
        let test_media = test_media.map(|m| {
            let audio = if m.audio && participant.capabilities.audio {
                channels
            } else {
                0
            };
            let video = m.video.filter(|_| participant.capabilities.video);
            TestSources::new(audio, video)
        });
        Self {
            participant: Participant::new(participant, now),
            room,
            peer_id,
            reconnect,
            rng,
            signaling: Signaling::Wanted,
            phase: Phase::Joining {
                deadline: now + join_timeout,
            },
            attempts: 0,
            lost_at: None,
            rejoin_at: None,
            disconnect_pending: false,
            stalled: None,
            max_queued,
            slots: Default::default(),
            test_media,
            join_timeout,
            audio_failing: false,
            pending: VecDeque::new(),
            now,
            stats: Stats::default(),
        }
    }

    /// The participant (the mesh): peers, statistics, local candidates
    pub fn participant(&self) -> &Participant {
        &self.participant
    }

    /// The participant, for calls the session does not wrap (e.g. adding local
    /// candidates, pass-through media); a call on it is a mutation like any other
    pub fn participant_mut(&mut self) -> &mut Participant {
        &mut self.participant
    }

    /// Our peer id, once the server accepted us
    pub fn peer_id(&self) -> Option<&PeerId> {
        self.participant.my_id()
    }

    /// The room
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// Whether the session has ended (left, or the join failed); drain once more, then
    /// release the socket
    pub fn is_finished(&self) -> bool {
        // TURN allocations are released before the socket goes (bounded by a short grace).
        self.phase == Phase::Finished
            && !self.disconnect_pending
            && self.participant.is_transport_closed()
    }

    /// Whether the server has accepted us
    pub fn is_joined(&self) -> bool {
        self.phase == Phase::Joined
    }

    /// Whether the signaling connection is up
    pub fn is_signaling_up(&self) -> bool {
        self.signaling == Signaling::Up
    }

    /// Whether the driver should take application commands now
    ///
    /// False while a data message waits for room in its peer's queue: that is the
    /// back-pressure an application sees (its sends wait in the driver's bounded channel).
    /// Commands given anyway are still carried out.
    pub fn wants_commands(&self) -> bool {
        self.stalled.is_none() && self.phase != Phase::Finished
    }

    /// A snapshot of the counters
    pub fn stats(&self) -> Stats {
        let p = &self.participant;
        let peers = p
            .peer_ids()
            .chain(p.departed_peer_ids())
            .filter_map(|id| Some((id.clone(), p.peer_stats(id)?)))
            .collect();
        Stats {
            peers,
            drops: p.drop_counters(),
            signaling_connected: self.is_signaling_up(),
            ice: p.ice_stats(),
            ..self.stats.clone()
        }
    }

    // ---- commands ----

    /// Queues a data message to one peer (see [`Participant::send_data`])
    pub fn send_data(&mut self, peer: &PeerId, message: DataMessage) -> Result<(), CommandError> {
        self.participant.send_data(peer, message)
    }

    /// Queues a data message to every peer; returns how many took it
    pub fn broadcast(&mut self, message: DataMessage) -> Result<usize, CommandError> {
        self.participant.broadcast(message)
    }

    /// Sends one captured audio frame to every peer that takes audio; returns how many
    ///
    /// The first failure after a success (or the very first) is also reported as
    /// [`Event::SendFailed`], so that an audio source that cannot be sent is noticed
    /// without an event for every frame.
    pub fn send_audio(&mut self, capture: Instant, pcm: &[i16]) -> Result<usize, CommandError> {
        let res = self.participant.send_audio(capture, pcm);
        match &res {
            Ok(_) => self.audio_failing = false,
            Err(e) if !self.audio_failing => {
                self.audio_failing = true;
                self.pending.push_back(Event::SendFailed {
                    peer: None,
                    error: e.clone(),
                });
            }
            Err(_) => {}
        }
        res
    }

    /// Sends one captured video frame to every peer that takes video; returns how many
    pub fn send_video(
        &mut self,
        capture: Instant,
        frame: &I420Frame,
    ) -> Result<usize, CommandError> {
        self.participant.send_video(capture, frame)
    }

    /// Leaves the room: `peer.disconnect`, every peer closed, the signaling connection
    /// closed; the session is finished after the next drain
    pub fn leave(&mut self) {
        if self.phase == Phase::Finished {
            return;
        }
        self.participant.leave();
        self.finish();
    }

    // ---- inputs ----

    /// Feeds one input; afterwards drain [`poll_output`](Self::poll_output)
    ///
    /// Rejected input is counted ([`Stats::drops`]) and logged at debug level; the session
    /// and every peer carry on.
    pub fn handle_input(&mut self, input: Input<'_>) {
        let now = input.time();
        self.now = self.now.max(now);
        let res = match input {
            Input::Timeout(now) => {
                self.handle_timeout(now);
                Ok(())
            }
            Input::Receive(now, recv) => self
                .participant
                .handle_input(crate::Input::Receive(now, recv)),
            Input::Signal(now, frame) => {
                if self.signaling != Signaling::Up {
                    // A frame from a connection we have already given up on.
                    return;
                }
                self.participant
                    .handle_input(crate::Input::Signal(now, frame))
            }
            Input::SignalingUp(now) => {
                self.handle_signaling_up(now);
                Ok(())
            }
            Input::SignalingDown(now, reason) => {
                self.handle_signaling_down(now, reason);
                Ok(())
            }
            Input::Command(now, command) => {
                self.handle_command(now, command);
                Ok(())
            }
            Input::Resolved(now, answers) => self
                .participant
                .handle_input(crate::Input::Resolved(now, answers)),
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "input rejected");
        }
    }

    /// Returns the next output; call until it returns [`Output::Timeout`]
    pub fn poll_output(&mut self) -> Output {
        if self.signaling == Signaling::Wanted {
            self.signaling = Signaling::Connecting;
            return Output::Connect;
        }
        self.retry_stalled();
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Output::Event(e);
            }
            match self.participant.poll_output() {
                crate::Output::Timeout(t) => {
                    if self.disconnect_pending {
                        self.disconnect_pending = false;
                        self.signaling = Signaling::Closed;
                        return Output::Disconnect;
                    }
                    return Output::Timeout(self.next_deadline(t));
                }
                crate::Output::Transmit(t) => return Output::Transmit(t),
                crate::Output::Resolve(servers) => return Output::Resolve(servers),
                crate::Output::Signal(frame) => {
                    if self.signaling == Signaling::Up {
                        return Output::Signal(frame);
                    }
                    tracing::debug!(
                        method = frame.request.method(),
                        "no signaling connection; frame dropped"
                    );
                }
                crate::Output::Event(e) => {
                    if let Some(e) = self.on_mesh_event(e) {
                        return Output::Event(e);
                    }
                }
            }
        }
    }

    fn handle_command(&mut self, now: Instant, command: Command) {
        let failed = |peer, error| Event::SendFailed { peer, error };
        let event = match command {
            Command::Send(peer, message) => {
                if self.participant.send_room(&peer) == Some(0) {
                    self.stalled = Some((peer, message));
                    return;
                }
                self.participant
                    .send_data(&peer, message)
                    .err()
                    .map(|e| failed(Some(peer), e))
            }
            Command::Broadcast(message) => self
                .participant
                .broadcast(message)
                .err()
                .map(|e| failed(None, e)),
            Command::Audio(capture, pcm) => self
                .participant
                .send_audio(capture, &pcm)
                .err()
                .map(|e| failed(None, e)),
            Command::Video(capture, frame) => self
                .participant
                .send_video(capture, &frame)
                .err()
                .map(|e| failed(None, e)),
            Command::AudioTo(track, capture, pcm, peers) => self
                .participant
                .send_audio_to(track, capture, &pcm, &peers)
                .err()
                .map(|e| failed(None, e)),
            Command::VideoTo(track, capture, frame, peers) => self
                .participant
                .send_video_to(track, capture, &frame, &peers)
                .err()
                .map(|e| failed(None, e)),
            Command::SetSending(peer, kind, sending) => self
                .participant
                .set_sending(&peer, kind, sending)
                .err()
                .map(|e| failed(Some(peer), e)),
            Command::AddVideoTrack(track) => self
                .participant
                .add_video_track(track)
                .err()
                .map(|e| failed(None, e)),
            Command::Leave => {
                self.leave();
                None
            }
        };
        if let Some(e) = event {
            tracing::debug!(?e, at = ?now, "command failed");
            self.pending.push_back(e);
        }
    }

    /// Sends a stalled message once a whole batch fits its peer's queue: taking commands
    /// one at a time as the queue drains would wake the sender for every message
    fn retry_stalled(&mut self) {
        let Some((peer, _)) = &self.stalled else {
            return;
        };
        if self
            .participant
            .send_room(peer)
            .is_some_and(|room| room < COMMAND_BATCH.min(self.max_queued))
        {
            return;
        }
        if let Some((peer, message)) = self.stalled.take() {
            if let Err(error) = self.participant.send_data(&peer, message) {
                self.pending.push_back(Event::SendFailed {
                    peer: Some(peer),
                    error,
                });
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Joining { deadline } = self.phase {
            if now >= deadline {
                self.fail_join(JoinError::Timeout(self.join_timeout));
                return;
            }
        }
        if let Signaling::Down { retry_at } = self.signaling {
            if now >= retry_at {
                self.signaling = Signaling::Wanted;
            }
        }
        if self.rejoin_at.is_some_and(|t| now >= t) {
            self.rejoin_at = None;
            if self.signaling == Signaling::Up {
                self.participant.rejoin();
            }
        }
        self.participant
            .handle_input(crate::Input::Timeout(now))
            .ok();
        self.send_test_media(now);
    }

    fn handle_signaling_up(&mut self, now: Instant) {
        if self.signaling != Signaling::Connecting {
            return;
        }
        self.signaling = Signaling::Up;
        match self.phase {
            Phase::Joining { .. } => {
                if let Err(e) = self
                    .participant
                    .join(self.room.clone(), self.peer_id.clone())
                {
                    // Only a second join can fail, and this is the first.
                    tracing::warn!(error = %e, "join refused by the participant");
                }
            }
            Phase::Joined => self.participant.rejoin(),
            Phase::Finished => {}
        }
        tracing::debug!(at = ?now, "signaling connection up");
    }

    fn handle_signaling_down(&mut self, now: Instant, reason: String) {
        let was_up = self.signaling == Signaling::Up;
        if matches!(self.signaling, Signaling::Closed | Signaling::Down { .. }) {
            return;
        }
        self.participant.signaling_lost();
        self.rejoin_at = None;
        // The connection is gone: nothing to close (the arms below may plan a new one).
        self.signaling = Signaling::Closed;
        match self.phase {
            Phase::Joining { .. } if !was_up => self.fail_join(JoinError::Unreachable(reason)),
            Phase::Joining { .. } => self.fail_join(JoinError::SignalingLost(reason)),
            Phase::Joined => {
                if was_up {
                    tracing::debug!(%reason, "signaling connection lost");
                    self.stats.signaling_losses += 1;
                    self.lost_at.get_or_insert(now);
                    self.attempts = 0;
                    self.pending.push_back(Event::SignalingLost { reason });
                }
                let wait = self.reconnect.delay(self.attempts, &mut self.rng);
                self.attempts = self.attempts.saturating_add(1);
                self.signaling = Signaling::Down {
                    retry_at: now + wait,
                };
            }
            Phase::Finished => self.signaling = Signaling::Closed,
        }
    }

    fn fail_join(&mut self, error: JoinError) {
        tracing::debug!(%error, "join failed");
        self.pending.push_back(Event::JoinFailed(error));
        self.participant.leave();
        self.finish();
    }

    /// Ends the session: the signaling connection is closed after what is queued for it
    fn finish(&mut self) {
        self.phase = Phase::Finished;
        self.stalled = None;
        self.test_media = None;
        self.rejoin_at = None;
        if matches!(self.signaling, Signaling::Up | Signaling::Connecting) {
            self.disconnect_pending = true;
        } else {
            self.signaling = Signaling::Closed;
        }
    }

    /// Turns a participant event into a session event (or swallows it)
    fn on_mesh_event(&mut self, e: crate::Event) -> Option<Event> {
        use crate::Event as E;
        match e {
            E::Announced {
                peer_id,
                room,
                peers,
                resumed,
            } => match self.phase {
                Phase::Joining { .. } => {
                    self.phase = Phase::Joined;
                    if let Some(t) = &mut self.test_media {
                        t.start(self.now);
                    }
                    Some(Event::Joined {
                        peer_id,
                        room,
                        peers,
                    })
                }
                _ => {
                    self.attempts = 0;
                    self.stats.signaling_restores += 1;
                    let after = self
                        .lost_at
                        .take()
                        .map_or(Duration::ZERO, |t| self.now.saturating_duration_since(t));
                    Some(Event::SignalingRestored {
                        peers,
                        after,
                        resumed,
                    })
                }
            },
            E::SignalError {
                method: "peer.announce",
                error,
            } => match self.phase {
                Phase::Joining { .. } => {
                    self.fail_join(JoinError::Rejected(error));
                    None
                }
                Phase::Joined if error.error_code() == Some(ErrorCode::PeerIdTaken) => {
                    // The server still holds our old connection (a server without resume,
                    // or one whose grace has not run out): try again after a while.
                    tracing::debug!("peer id still taken after reconnect; retrying");
                    let wait = self.reconnect.delay(self.attempts, &mut self.rng);
                    self.attempts = self.attempts.saturating_add(1);
                    self.rejoin_at = Some(self.now + wait);
                    None
                }
                _ => Some(Event::RejoinFailed { error }),
            },
            E::AudioPlayout { peer, chunk } => {
                let started = self.slot_of(&peer).is_none();
                let slot = self.slot_of(&peer).or_else(|| self.take_slot(&peer));
                let event = Event::Mesh(E::AudioPlayout { peer, chunk });
                match (started, slot) {
                    (true, Some(slot)) => {
                        let peer = self.slots[slot]
                            .clone()
                            .expect("just taken; panic means bug");
                        // The chunk follows its start.
                        self.pending.push_front(event);
                        Some(Event::AudioStreamStarted { peer, slot })
                    }
                    _ => Some(event),
                }
            }
            E::PeerLeft { ref peer, .. } | E::PeerFailed { ref peer, .. } => {
                if let Some(slot) = self.slot_of(peer) {
                    self.slots[slot] = None;
                    let ended = Event::AudioStreamEnded {
                        peer: peer.clone(),
                        slot,
                    };
                    self.pending.push_back(ended);
                }
                Some(Event::Mesh(e))
            }
            other => Some(Event::Mesh(other)),
        }
    }

    fn slot_of(&self, peer: &PeerId) -> Option<usize> {
        self.slots.iter().position(|s| s.as_ref() == Some(peer))
    }

    fn take_slot(&mut self, peer: &PeerId) -> Option<usize> {
        let free = self.slots.iter().position(Option::is_none)?;
        self.slots[free] = Some(peer.clone());
        Some(free)
    }

    fn send_test_media(&mut self, now: Instant) {
        while let Some((capture, frame)) = self.test_media.as_mut().and_then(|s| s.poll_frame(now))
        {
            let res = match frame {
                SourceFrame::Audio(pcm) => self.participant.send_audio(capture, &pcm),
                SourceFrame::Video(f) => self.participant.send_video(capture, &f),
            };
            if let Err(e) = res {
                self.stats.test_media_failures += 1;
                tracing::debug!(error = %e, "test media frame not sent");
            }
        }
    }

    fn next_deadline(&self, participant: Instant) -> Instant {
        let mut t = participant;
        if let Phase::Joining { deadline } = self.phase {
            t = t.min(deadline);
        }
        if let Signaling::Down { retry_at } = self.signaling {
            t = t.min(retry_at);
        }
        if let Some(at) = self.rejoin_at {
            t = t.min(at);
        }
        if let Some(at) = self.test_media.as_ref().and_then(TestSources::poll_timeout) {
            t = t.min(at);
        }
        t
    }
}
