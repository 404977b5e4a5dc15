//! Media pipelines: stages over decoded media, producing outgoing tracks, routed per peer
//!
//! A [`Pipeline`] takes the decoded media of a session — each remote peer's audio as the
//! jitter buffer plays it out (10 ms [`PlayoutChunk`]s at 48 kHz, de-jittered and
//! drift-corrected) and its video as it is rendered (lip-synced [`I420Frame`]s), plus the
//! local capture — runs it through [`Stage`]s, and hands back media for outgoing tracks.
//! Like the rest of the core it is sans-IO: it never reads a clock, sleeps or spawns; time
//! arrives with every input as a local [`Instant`].
//!
//! # Tracks and routing
//!
//! An outgoing track ([`TrackId`], made by [`Pipeline::add_track`]) has a [`TrackKind`] and a
//! [`Routing`]: all peers ([`Routing::Broadcast`]), one ([`Routing::Unicast`]), a set
//! ([`Routing::Peers`]) or none, for local playout and display ([`Routing::Local`]). There may
//! be several tracks per kind (an original and a processed video, say; for one peer to
//! receive several video tracks at once, give each an m-line of its own with
//! [`Participant::add_video_track`](crate::Participant::add_video_track)). A track can be
//! paused for everyone ([`Pipeline::set_paused`]) or muted towards one peer
//! ([`Pipeline::set_muted`]); whether a track is being sent to a peer
//! ([`Pipeline::is_sending`]) is what the remote should see as the direction of its m-line,
//! and every change of it is reported as [`PipelineOutput::TrackState`].
//!
//! A stage may address one frame to a single peer ([`Destination::Peer`]), for media whose
//! content differs per peer, such as the mixer's N−1 mixes; it still goes only where the
//! track's routing and mute state allow. [`Pipeline::recipients`] resolves an output to the
//! peers that should get it.
//!
//! # Budgets: late stages drop, they do not queue
//!
//! Each stage has a per-frame time budget ([`StageConfig::budget`]). After each run the
//! pipeline asks its [`CostMeter`] what the run cost: by default a deterministic price of
//! the [`Work`] the stage reports (samples and pixels touched, [`WorkUnitCost`]); a driver
//! may supply a meter that reads a CPU clock. Every input offered to a stage earns it one
//! budget of credit (at most one in hand) and every run spends its cost; a stage with no
//! credit left, or whose modelled backlog already exceeds its budget, is not run and the
//! input is counted as dropped ([`StageStats`]). So a stage slower than its budget loses a
//! share of its frames, uses no more than its budget per frame on average, and adds a
//! latency that stays bounded instead of growing with a queue. The only queue, the outputs
//! waiting for [`Pipeline::poll_output`], is bounded too ([`PipelineConfig::max_outputs`]):
//! when it is full the oldest media output is dropped and counted.
//!
//! # Where the work runs
//!
//! Stages run inside the call that feeds them, on the caller's thread: a session that owns
//! a pipeline runs it on its network loop, and the budgets above are what keep a slow
//! stage from taking that loop over (a stage gets at most its budget per frame on average,
//! and one run's cost is the longest it can hold the loop). A driver that wants heavy video
//! stages off the network thread can own the pipeline on a thread of its own (`Pipeline`
//! is `Send`) and feed it through bounded channels; the API is the same.
//!
//! # Call order
//!
//! The methods fall into classes, as in quinn-proto's `Connection`:
//!
//! - **Set-up**: [`add_track`](Pipeline::add_track), [`add_stage`](Pipeline::add_stage),
//!   [`set_routing`](Pipeline::set_routing), [`set_muted`](Pipeline::set_muted),
//!   [`set_paused`](Pipeline::set_paused), [`stage_mut`](Pipeline::stage_mut); any time.
//! - **Peers**: [`add_peer`](Pipeline::add_peer) when a peer connects (its media may flow),
//!   [`remove_peer`](Pipeline::remove_peer) when it leaves or fails.
//! - **Inputs**: [`handle_audio`](Pipeline::handle_audio),
//!   [`handle_video`](Pipeline::handle_video), [`handle_local_audio`](Pipeline::handle_local_audio),
//!   [`handle_local_video`](Pipeline::handle_local_video) as media is played out, rendered or
//!   captured, and [`handle_timeout`](Pipeline::handle_timeout) when the instant from
//!   [`poll_timeout`](Pipeline::poll_timeout) is reached (stages with a clock of their own:
//!   the mixer's and the compositor's output ticks). Each input also runs any timeouts that
//!   are due.
//! - **Outputs**: after every call of the other classes, drain
//!   [`poll_output`](Pipeline::poll_output) until it returns `None`, send each
//!   [`Outgoing`] to its [`recipients`](Pipeline::recipients) (or play it, for a local
//!   track), then re-arm the timer with [`poll_timeout`](Pipeline::poll_timeout). Return
//!   spent buffers with [`recycle`](Pipeline::recycle) to keep the steady state free of
//!   allocation.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use meshrtc::codec::I420Frame;
//! use meshrtc::pipeline::{
//!     blur::{Blur, BlurStage}, Pipeline, PipelineConfig, PipelineOutput, Routing, Select,
//!     StageConfig, TrackKind,
//! };
//! use meshrtc::signal::PeerId;
//!
//! let mut p = Pipeline::new(PipelineConfig::default());
//! let alice = PeerId::new("alice").unwrap();
//! // The camera, blurred, to alice only.
//! let track = p.add_track(TrackKind::Video, Routing::Unicast(alice.clone()));
//! p.add_stage(
//!     BlurStage::new(Blur::new(4), track),
//!     StageConfig::new(Duration::from_millis(20)).video(Select::Local),
//! );
//! p.add_peer(alice.clone());
//! let now = Instant::now();
//! p.handle_local_video(now, Arc::new(I420Frame::black(64, 36))).unwrap();
//! while let Some(out) = p.poll_output() {
//!     match out {
//!         PipelineOutput::Media(media) => {
//!             let to: Vec<&PeerId> = p.recipients(&media).collect();
//!             assert_eq!(to, [&alice]);
//!             p.recycle(media);
//!         }
//!         PipelineOutput::TrackState { .. } => {}
//!     }
//! }
//! ```
//!
//! # Built-in stages and media files
//!
//! [`mixer`] (the local mix and N−1 mixes, per-peer gain, soft limiter), [`resample`] (any
//! rate and channel count), [`blur`] (separable box blur on all three planes), [`composite`]
//! (a grid of the peers' video in one frame, with the scaler in [`scale`]) and
//! [`Forward`] (a source passed through unchanged). [`files`] reads and writes WAV and Y4M
//! on `std::io` readers and writers.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::I420Frame;
use crate::signal::PeerId;
use crate::sync::PlayoutChunk;

pub mod blur;
pub mod composite;
pub mod files;
pub mod mixer;
pub mod resample;
pub mod scale;

#[cfg(test)]
pub(crate) mod dsp;
#[cfg(test)]
mod tests;

/// Sample rate of all audio inside a pipeline, in Hz (Opus's rate)
pub const AUDIO_RATE: u32 = 48_000;

/// Errors from pipeline set-up and inputs
///
/// All of them are the caller's: media from the network reaches the pipeline decoded and
/// checked already.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// No track with this id (never added, or removed)
    #[error("unknown track {0}")]
    UnknownTrack(TrackId),
    /// No stage with this id
    #[error("unknown stage {0:?}")]
    UnknownStage(StageId),
    /// A configuration value is out of range
    #[error("invalid pipeline config: {0}")]
    InvalidConfig(String),
    /// Media handed in does not have the shape it claims
    #[error("invalid media input: {0}")]
    InvalidInput(String),
}

/// Identifier of an outgoing track of one [`Pipeline`]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(u32);

impl TrackId {
    /// A track id chosen by hand, for sending with
    /// [`Participant::send_audio_to`](crate::Participant::send_audio_to) without a
    /// pipeline (a pipeline numbers its own tracks from 0 in order of creation)
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// The number behind the id, unique within its pipeline (in order of creation)
    pub const fn index(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "track{}", self.0)
    }
}

/// What a track carries
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// 48 kHz PCM
    Audio,
    /// I420 frames
    Video,
}

/// Where an outgoing track goes
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Nowhere on the network: local playout or display (the application takes it)
    Local,
    /// Every peer
    Broadcast,
    /// One peer
    Unicast(PeerId),
    /// These peers
    Peers(BTreeSet<PeerId>),
}

impl Routing {
    fn includes(&self, peer: &PeerId) -> bool {
        match self {
            Self::Local => false,
            Self::Broadcast => true,
            Self::Unicast(p) => p == peer,
            Self::Peers(set) => set.contains(peer),
        }
    }
}

/// Whom one output frame is for, within its track's routing
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Every recipient of the track
    Track,
    /// Only this peer (if the track goes to it): content made for one peer, like an N−1 mix
    Peer(PeerId),
}

/// Where an input came from
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// The local capture (microphone, camera, file)
    Local,
    /// A remote peer's decoded media
    Peer(&'a PeerId),
}

/// Which inputs a stage takes, per kind
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Select {
    /// None
    #[default]
    Nothing,
    /// The local capture only
    Local,
    /// Every remote peer
    Peers,
    /// One remote peer
    Peer(PeerId),
    /// The local capture and every remote peer
    All,
}

impl Select {
    /// Whether input from `source` is selected
    pub fn matches(&self, source: Source<'_>) -> bool {
        match (self, source) {
            (Self::Nothing, _) => false,
            (Self::All, _) => true,
            (Self::Local, Source::Local) => true,
            (Self::Peers, Source::Peer(_)) => true,
            (Self::Peer(want), Source::Peer(p)) => want == p,
            _ => false,
        }
    }
}

/// One block of 48 kHz audio handed to a stage
#[derive(Debug, Clone, Copy)]
pub struct AudioIn<'a> {
    /// Interleaved samples
    pub samples: &'a [i16],
    /// Channels interleaved (1 or 2)
    pub channels: usize,
}

/// Audio leaving a pipeline: 48 kHz interleaved PCM
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    /// Interleaved samples
    pub samples: Vec<i16>,
    /// Channels interleaved (1 or 2)
    pub channels: u16,
    /// The local instant the frame's first sample stands for (when the input or tick that
    /// made it happened)
    pub capture: Instant,
}

/// Video leaving a pipeline
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// The picture, shared with other tracks where it is the same
    pub frame: Arc<I420Frame>,
    /// The local instant the picture stands for
    pub capture: Instant,
}

/// An outgoing frame's media
#[derive(Debug, Clone)]
pub enum Media {
    /// Audio
    Audio(AudioFrame),
    /// Video
    Video(VideoFrame),
}

impl Media {
    /// The local instant the media stands for
    pub const fn capture(&self) -> Instant {
        match self {
            Self::Audio(a) => a.capture,
            Self::Video(v) => v.capture,
        }
    }
}

/// One frame for an outgoing track
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The track
    pub track: TrackId,
    /// All of the track's recipients, or one of them
    pub to: Destination,
    /// The frame
    pub media: Media,
    /// The stage that made it
    pub stage: StageId,
    /// When the stage's run that made it finished, in the pipeline's cost model
    /// (the input's instant plus any backlog plus the run's cost)
    pub ready: Instant,
}

/// What [`Pipeline::poll_output`] hands back
#[derive(Debug, Clone)]
pub enum PipelineOutput {
    /// A frame to send (or, for a [`Routing::Local`] track, to play or show)
    Media(Outgoing),
    /// Whether `track` is sent to `peer` changed (routing, mute, pause, or the peer or
    /// track came or went): the remote should see it as the m-line's direction
    /// ([`Pipeline::sends_kind_to`] then
    /// [`Participant::set_sending`](crate::Participant::set_sending))
    TrackState {
        /// The track
        track: TrackId,
        /// The peer
        peer: PeerId,
        /// Whether the track is now sent to the peer
        sending: bool,
    },
}

/// Identifier of a stage within its pipeline
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageId(u32);

impl StageId {
    /// The stage's position in the pipeline (stages run in order of addition)
    pub const fn index(self) -> u32 {
        self.0
    }
}

/// How a stage is scheduled and what it is fed
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageConfig {
    /// Time the stage may spend per input frame or tick, on average (zero never runs it)
    pub budget: Duration,
    /// Audio inputs it takes
    pub audio: Select,
    /// Video inputs it takes
    pub video: Select,
}

impl StageConfig {
    /// A stage with this budget that takes no inputs yet
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            audio: Select::Nothing,
            video: Select::Nothing,
        }
    }

    /// The same, taking these audio inputs
    pub fn audio(mut self, select: Select) -> Self {
        self.audio = select;
        self
    }

    /// The same, taking these video inputs
    pub fn video(mut self, select: Select) -> Self {
        self.video = select;
        self
    }
}

/// Counters of one stage
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Inputs and ticks offered to the stage
    pub offered: u64,
    /// Runs (inputs and ticks processed)
    pub processed: u64,
    /// Offers dropped because the stage had used up its budget
    pub dropped_over_budget: u64,
    /// Offers dropped because the stage's modelled backlog exceeded its budget
    pub dropped_busy: u64,
    /// Runs that cost more than the budget
    pub over_budget_runs: u64,
    /// Total cost of all runs
    pub cost: Duration,
    /// Most expensive run
    pub max_cost: Duration,
    /// Input-to-ready latency of the last run (backlog plus cost)
    pub last_latency: Duration,
    /// Largest input-to-ready latency of any run
    pub max_latency: Duration,
}

impl StageStats {
    /// Offers not processed
    pub const fn dropped(&self) -> u64 {
        self.dropped_over_budget + self.dropped_busy
    }
}

/// Counters of a whole pipeline
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Media outputs queued for [`Pipeline::poll_output`]
    pub outputs: u64,
    /// Media outputs dropped, oldest first, because the output queue was full
    pub outputs_dropped: u64,
    /// Media outputs discarded at once because their track went nowhere (paused, every
    /// recipient muted or absent, or an unknown track)
    pub outputs_suppressed: u64,
    /// Audio buffers allocated because the pool was empty
    pub audio_allocations: u64,
    /// Video frames allocated because the pool had none of the right size
    pub video_allocations: u64,
}

/// The deterministic amount of work one stage run did, priced by a [`CostMeter`]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Audio samples touched (per channel per input: a mix of 4 peers over 480 samples is
    /// 1920)
    pub samples: u64,
    /// Pixels touched (luma and chroma, per pass)
    pub pixels: u64,
}

impl Work {
    /// No work
    pub const NONE: Self = Self {
        samples: 0,
        pixels: 0,
    };

    /// `n` samples of audio work
    pub const fn samples(n: u64) -> Self {
        Self {
            samples: n,
            pixels: 0,
        }
    }

    /// `n` pixels of video work
    pub const fn pixels(n: u64) -> Self {
        Self {
            samples: 0,
            pixels: n,
        }
    }
}

/// Tells the pipeline what each stage run cost
///
/// The default, [`WorkUnitCost`], prices the [`Work`] a stage reports, so a run is
/// deterministic (tests, the simulator). A driver that wants real costs can implement
/// `start` and `finish` with a CPU clock; the pipeline calls `start` right before a stage
/// runs and `finish` right after.
pub trait CostMeter: Send {
    /// A stage is about to run
    fn start(&mut self, stage: StageId) {
        let _ = stage;
    }

    /// The stage has run and reported `work`: what did the run cost?
    fn finish(&mut self, stage: StageId, work: Work) -> Duration;
}

/// Prices [`Work`] at fixed rates: deterministic costs
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkUnitCost {
    /// Nanoseconds per audio sample
    pub ns_per_sample: f64,
    /// Nanoseconds per pixel
    pub ns_per_pixel: f64,
}

impl Default for WorkUnitCost {
    /// 2 ns per sample and 1 ns per pixel: the order of what `cargo bench -p
    /// meshrtc-benches --bench pipeline` measures for the built-in stages on one x86-64 core
    /// (within a factor of three either way, depending on the stage)
    fn default() -> Self {
        Self {
            ns_per_sample: 2.0,
            ns_per_pixel: 1.0,
        }
    }
}

impl CostMeter for WorkUnitCost {
    fn finish(&mut self, _stage: StageId, work: Work) -> Duration {
        let ns = work.samples as f64 * self.ns_per_sample + work.pixels as f64 * self.ns_per_pixel;
        Duration::from_nanos(ns.max(0.0) as u64)
    }
}

/// A processing step of a [`Pipeline`]
///
/// Every method has a do-nothing default; a stage implements the ones it needs. The
/// `handle_*` methods return the [`Work`] they did, for the [`CostMeter`]. A stage with a
/// clock of its own (an output tick) returns its next deadline from `poll_timeout`; when the
/// pipeline skips a tick for lack of budget it calls `skip_timeout`, which must move the
/// deadline on just as `handle_timeout` would.
pub trait Stage: Send {
    /// A short name, for logs
    fn name(&self) -> &str;

    /// A block of 48 kHz audio from `source` (one 10 ms playout chunk from a peer)
    fn handle_audio(
        &mut self,
        emit: &mut Emit<'_>,
        source: Source<'_>,
        audio: AudioIn<'_>,
    ) -> Work {
        let _ = (emit, source, audio);
        Work::NONE
    }

    /// A video frame from `source`, due to be shown now
    fn handle_video(
        &mut self,
        emit: &mut Emit<'_>,
        source: Source<'_>,
        frame: &Arc<I420Frame>,
    ) -> Work {
        let _ = (emit, source, frame);
        Work::NONE
    }

    /// When the stage next wants [`handle_timeout`](Self::handle_timeout)
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The deadline from `poll_timeout` is reached (`emit.now()` is the time of the call, at
    /// or after the deadline)
    fn handle_timeout(&mut self, emit: &mut Emit<'_>) -> Work {
        let _ = emit;
        Work::NONE
    }

    /// The deadline is reached but the stage has no budget: move on without the work
    fn skip_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// A peer connected
    fn add_peer(&mut self, peer: &PeerId) {
        let _ = peer;
    }

    /// A peer left: forget its state
    fn remove_peer(&mut self, peer: &PeerId) {
        let _ = peer;
    }
}

/// A stage that can be looked up by type again ([`Pipeline::stage_mut`])
trait AnyStage: Stage {
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Stage + 'static> AnyStage for T {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// What a running stage emits through: outgoing frames, pooled buffers, routing queries
pub struct Emit<'a> {
    now: Instant,
    stage: StageId,
    routes: &'a Routes,
    outbox: &'a mut Outbox,
    emitted: usize,
}

impl Emit<'_> {
    /// The instant of the input or tick being handled
    pub const fn now(&self) -> Instant {
        self.now
    }

    /// Whether anything emitted on `track` would go anywhere (it is local, or sent to at
    /// least one peer): a stage may skip work for unwanted tracks
    pub fn is_wanted(&self, track: TrackId) -> bool {
        self.routes.is_wanted(track, None)
    }

    /// Whether a frame on `track` for `peer` alone would be sent
    pub fn is_wanted_by(&self, track: TrackId, peer: &PeerId) -> bool {
        self.routes.is_wanted(track, Some(peer))
    }

    /// An empty audio buffer from the pool (allocated if the pool is empty)
    pub fn audio_buffer(&mut self) -> Vec<i16> {
        match self.outbox.audio_pool.pop() {
            Some(b) => b,
            None => {
                self.outbox.stats.audio_allocations += 1;
                Vec::with_capacity(2 * 480)
            }
        }
    }

    /// A `width` x `height` frame from the pool, contents unspecified (allocated if the pool
    /// holds none of that size)
    pub fn video_frame(&mut self, width: u32, height: u32) -> I420Frame {
        let pool = &mut self.outbox.video_pool;
        if let Some(i) = pool
            .iter()
            .position(|f| f.width == width && f.height == height)
        {
            return pool.swap_remove(i);
        }
        self.outbox.stats.video_allocations += 1;
        I420Frame::black(width, height)
    }

    /// Queues 48 kHz audio for `track`
    pub fn audio(&mut self, track: TrackId, to: Destination, samples: Vec<i16>, channels: u16) {
        let media = Media::Audio(AudioFrame {
            samples,
            channels,
            capture: self.now,
        });
        self.push(track, to, media);
    }

    /// Queues a video frame for `track`
    pub fn video(&mut self, track: TrackId, to: Destination, frame: Arc<I420Frame>) {
        let media = Media::Video(VideoFrame {
            frame,
            capture: self.now,
        });
        self.push(track, to, media);
    }

    fn push(&mut self, track: TrackId, to: Destination, media: Media) {
        let peer = match &to {
            Destination::Track => None,
            Destination::Peer(p) => Some(p),
        };
        let kind_ok = self.routes.tracks.get(&track).is_some_and(|t| {
            matches!(
                (&media, t.kind),
                (Media::Audio(_), TrackKind::Audio) | (Media::Video(_), TrackKind::Video)
            )
        });
        if !kind_ok || !self.routes.is_wanted(track, peer) {
            self.outbox.stats.outputs_suppressed += 1;
            self.outbox.reclaim(media);
            return;
        }
        self.outbox.push(Outgoing {
            track,
            to,
            media,
            stage: self.stage,
            ready: self.now,
        });
        self.emitted += 1;
    }
}

/// Settings of a [`Pipeline`]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Media outputs held for [`Pipeline::poll_output`] at most; beyond, the oldest is
    /// dropped and counted
    pub max_outputs: usize,
    /// Spare audio buffers kept for reuse
    pub audio_pool: usize,
    /// Spare video frames kept for reuse
    pub video_pool: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_outputs: 256,
            audio_pool: 64,
            video_pool: 8,
        }
    }
}

#[derive(Debug)]
struct Track {
    kind: TrackKind,
    routing: Routing,
    muted: BTreeSet<PeerId>,
    paused: bool,
}

/// The routing state: tracks and connected peers
#[derive(Debug, Default)]
struct Routes {
    tracks: BTreeMap<TrackId, Track>,
    peers: BTreeSet<PeerId>,
}

impl Routes {
    fn is_sending(&self, track: TrackId, peer: &PeerId) -> bool {
        self.tracks.get(&track).is_some_and(|t| {
            !t.paused
                && t.routing.includes(peer)
                && !t.muted.contains(peer)
                && self.peers.contains(peer)
        })
    }

    fn is_wanted(&self, track: TrackId, peer: Option<&PeerId>) -> bool {
        let Some(t) = self.tracks.get(&track) else {
            return false;
        };
        if t.routing == Routing::Local {
            return !t.paused;
        }
        match peer {
            Some(p) => self.is_sending(track, p),
            None => self.peers.iter().any(|p| self.is_sending(track, p)),
        }
    }

    /// (track, peer) pairs being sent, for change detection
    fn sending_set(&self) -> BTreeSet<(TrackId, PeerId)> {
        let mut set = BTreeSet::new();
        for &id in self.tracks.keys() {
            for p in &self.peers {
                if self.is_sending(id, p) {
                    set.insert((id, p.clone()));
                }
            }
        }
        set
    }
}

#[derive(Debug)]
struct Outbox {
    queue: VecDeque<Outgoing>,
    max: usize,
    audio_pool: Vec<Vec<i16>>,
    video_pool: Vec<I420Frame>,
    audio_pool_max: usize,
    video_pool_max: usize,
    stats: PipelineStats,
}

impl Outbox {
    fn push(&mut self, out: Outgoing) {
        if self.queue.len() >= self.max {
            if let Some(old) = self.queue.pop_front() {
                self.stats.outputs_dropped += 1;
                self.reclaim(old.media);
            }
        }
        self.stats.outputs += 1;
        self.queue.push_back(out);
    }

    fn reclaim(&mut self, media: Media) {
        match media {
            Media::Audio(a) => {
                if self.audio_pool.len() < self.audio_pool_max {
                    let mut s = a.samples;
                    s.clear();
                    self.audio_pool.push(s);
                }
            }
            Media::Video(v) => {
                if self.video_pool.len() < self.video_pool_max {
                    if let Ok(f) = Arc::try_unwrap(v.frame) {
                        self.video_pool.push(f);
                    }
                }
            }
        }
    }
}

/// The admission model of one stage: budget credit and a modelled backlog
#[derive(Debug)]
struct Governor {
    budget: Duration,
    /// Credit in nanoseconds; negative after runs that cost more than the budget
    credit: i128,
    busy_until: Option<Instant>,
}

impl Governor {
    fn new(budget: Duration) -> Self {
        Self {
            budget,
            credit: 0,
            busy_until: None,
        }
    }

    /// Offers one input at `now`: whether to run it, counting the offer
    fn admit(&mut self, now: Instant, stats: &mut StageStats) -> bool {
        stats.offered += 1;
        let budget = self.budget.as_nanos() as i128;
        self.credit = (self.credit + budget).min(budget);
        if self.credit <= 0 {
            stats.dropped_over_budget += 1;
            return false;
        }
        if let Some(busy) = self.busy_until {
            if busy.saturating_duration_since(now) > self.budget {
                stats.dropped_busy += 1;
                return false;
            }
        }
        true
    }

    /// Accounts a run at `now` that cost `cost`; returns when it was ready
    fn ran(&mut self, now: Instant, cost: Duration, stats: &mut StageStats) -> Instant {
        self.credit -= cost.as_nanos() as i128;
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let ready = start + cost;
        self.busy_until = Some(ready);
        let latency = ready - now;
        stats.processed += 1;
        stats.cost += cost;
        stats.max_cost = stats.max_cost.max(cost);
        stats.over_budget_runs += u64::from(cost > self.budget);
        stats.last_latency = latency;
        stats.max_latency = stats.max_latency.max(latency);
        ready
    }
}

struct Slot {
    stage: Box<dyn AnyStage>,
    config: StageConfig,
    governor: Governor,
    stats: StageStats,
}

/// Most timeouts one stage may run per call (a stage that does not move its deadline on
/// cannot spin the caller)
const MAX_TICKS_PER_CALL: usize = 64;

/// Stages over decoded media, producing routed outgoing tracks; see the [module
/// docs](self) for the call order
pub struct Pipeline {
    config: PipelineConfig,
    routes: Routes,
    stages: Vec<Slot>,
    outbox: Outbox,
    states: VecDeque<PipelineOutput>,
    meter: Box<dyn CostMeter>,
    next_track: u32,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("tracks", &self.routes.tracks)
            .field("peers", &self.routes.peers)
            .field(
                "stages",
                &self
                    .stages
                    .iter()
                    .map(|s| s.stage.name())
                    .collect::<Vec<_>>(),
            )
            .field("queued", &self.outbox.queue.len())
            .finish()
    }
}

impl Pipeline {
    /// An empty pipeline that prices work with [`WorkUnitCost::default`]
    pub fn new(config: PipelineConfig) -> Self {
        Self::with_meter(config, Box::new(WorkUnitCost::default()))
    }

    /// An empty pipeline with the given cost meter
    pub fn with_meter(config: PipelineConfig, meter: Box<dyn CostMeter>) -> Self {
        Self {
            config,
            routes: Routes::default(),
            stages: Vec::new(),
            outbox: Outbox {
                queue: VecDeque::with_capacity(config.max_outputs.min(1024)),
                max: config.max_outputs.max(1),
                audio_pool: Vec::new(),
                video_pool: Vec::new(),
                audio_pool_max: config.audio_pool,
                video_pool_max: config.video_pool,
                stats: PipelineStats::default(),
            },
            states: VecDeque::new(),
            meter,
            next_track: 0,
        }
    }

    /// The settings
    pub const fn config(&self) -> &PipelineConfig {
        &self.config
    }

    // ---- set-up ----

    /// Adds an outgoing track
    pub fn add_track(&mut self, kind: TrackKind, routing: Routing) -> TrackId {
        let id = TrackId(self.next_track);
        self.next_track += 1;
        self.change_routes(|r| {
            r.tracks.insert(
                id,
                Track {
                    kind,
                    routing,
                    muted: BTreeSet::new(),
                    paused: false,
                },
            );
        });
        id
    }

    /// Removes a track; its queued frames are discarded
    pub fn remove_track(&mut self, track: TrackId) -> Result<(), PipelineError> {
        self.check_track(track)?;
        self.change_routes(|r| {
            r.tracks.remove(&track);
        });
        let queue = std::mem::take(&mut self.outbox.queue);
        for out in queue {
            if out.track == track {
                self.outbox.reclaim(out.media);
            } else {
                self.outbox.queue.push_back(out);
            }
        }
        Ok(())
    }

    /// Changes where a track goes
    pub fn set_routing(&mut self, track: TrackId, routing: Routing) -> Result<(), PipelineError> {
        self.check_track(track)?;
        self.change_routes(|r| {
            if let Some(t) = r.tracks.get_mut(&track) {
                t.routing = routing;
            }
        });
        Ok(())
    }

    /// Mutes or unmutes a track towards one peer (remembered if the peer is not connected)
    pub fn set_muted(
        &mut self,
        track: TrackId,
        peer: &PeerId,
        muted: bool,
    ) -> Result<(), PipelineError> {
        self.check_track(track)?;
        self.change_routes(|r| {
            if let Some(t) = r.tracks.get_mut(&track) {
                if muted {
                    t.muted.insert(peer.clone());
                } else {
                    t.muted.remove(peer);
                }
            }
        });
        Ok(())
    }

    /// Pauses or resumes a track for every peer (and, for a local track, locally)
    pub fn set_paused(&mut self, track: TrackId, paused: bool) -> Result<(), PipelineError> {
        self.check_track(track)?;
        self.change_routes(|r| {
            if let Some(t) = r.tracks.get_mut(&track) {
                t.paused = paused;
            }
        });
        Ok(())
    }

    /// The kind and routing of a track
    pub fn track(&self, track: TrackId) -> Option<(TrackKind, &Routing)> {
        self.routes.tracks.get(&track).map(|t| (t.kind, &t.routing))
    }

    /// All tracks, in order of creation
    pub fn tracks(&self) -> impl Iterator<Item = (TrackId, TrackKind)> + '_ {
        self.routes.tracks.iter().map(|(&id, t)| (id, t.kind))
    }

    /// Whether `track` is sent to `peer` now: routed there, not muted for it, not paused,
    /// and the peer connected
    pub fn is_sending(&self, track: TrackId, peer: &PeerId) -> bool {
        self.routes.is_sending(track, peer)
    }

    /// Whether any track of `kind` is sent to `peer` now: what to hand
    /// [`Participant::set_sending`](crate::Participant::set_sending) when a
    /// [`PipelineOutput::TrackState`] for that peer arrives, so that the remote sees the
    /// m-line of that kind paused while nothing of it goes there
    pub fn sends_kind_to(&self, kind: TrackKind, peer: &PeerId) -> bool {
        self.routes
            .tracks
            .iter()
            .any(|(&id, t)| t.kind == kind && self.routes.is_sending(id, peer))
    }

    /// The tracks sent to `peer` now, for setting up a newly connected peer's m-lines
    pub fn sending_to<'a>(&'a self, peer: &'a PeerId) -> impl Iterator<Item = TrackId> + 'a {
        self.routes
            .tracks
            .keys()
            .copied()
            .filter(move |&t| self.routes.is_sending(t, peer))
    }

    /// Adds a stage; stages run in the order they were added
    pub fn add_stage<S: Stage + 'static>(&mut self, stage: S, config: StageConfig) -> StageId {
        let id = StageId(self.stages.len() as u32);
        let mut stage: Box<dyn AnyStage> = Box::new(stage);
        for p in &self.routes.peers {
            stage.add_peer(p);
        }
        self.stages.push(Slot {
            stage,
            governor: Governor::new(config.budget),
            config,
            stats: StageStats::default(),
        });
        id
    }

    /// The stage `id`, if it is a `S` (to change its settings)
    pub fn stage_mut<S: Stage + 'static>(&mut self, id: StageId) -> Option<&mut S> {
        self.stages
            .get_mut(id.0 as usize)?
            .stage
            .as_any_mut()
            .downcast_mut::<S>()
    }

    /// Changes a stage's budget and inputs
    pub fn set_stage_config(
        &mut self,
        id: StageId,
        config: StageConfig,
    ) -> Result<(), PipelineError> {
        let slot = self
            .stages
            .get_mut(id.0 as usize)
            .ok_or(PipelineError::UnknownStage(id))?;
        slot.governor.budget = config.budget;
        slot.config = config;
        Ok(())
    }

    /// A stage's counters
    pub fn stage_stats(&self, id: StageId) -> Option<StageStats> {
        self.stages.get(id.0 as usize).map(|s| s.stats)
    }

    /// The pipeline's counters
    pub const fn stats(&self) -> PipelineStats {
        self.outbox.stats
    }

    // ---- peers ----

    /// A peer connected: tracks routed to it start ([`PipelineOutput::TrackState`])
    pub fn add_peer(&mut self, peer: PeerId) {
        for s in &mut self.stages {
            s.stage.add_peer(&peer);
        }
        self.change_routes(|r| {
            r.peers.insert(peer);
        });
    }

    /// A peer left or failed: stages forget it; no state event is emitted for it
    pub fn remove_peer(&mut self, peer: &PeerId) {
        for s in &mut self.stages {
            s.stage.remove_peer(peer);
        }
        self.routes.peers.remove(peer);
        for t in self.routes.tracks.values_mut() {
            t.muted.remove(peer);
        }
        let queue = std::mem::take(&mut self.outbox.queue);
        for out in queue {
            if out.to == Destination::Peer(peer.clone()) {
                self.outbox.reclaim(out.media);
            } else {
                self.outbox.queue.push_back(out);
            }
        }
        self.states
            .retain(|s| !matches!(s, PipelineOutput::TrackState { peer: p, .. } if p == peer));
    }

    // ---- inputs ----

    /// One playout chunk of a peer's audio, played out at `now`
    pub fn handle_audio(
        &mut self,
        peer: &PeerId,
        now: Instant,
        chunk: &PlayoutChunk,
    ) -> Result<(), PipelineError> {
        self.audio_in(Source::Peer(peer), now, &chunk.samples, chunk.channels)
    }

    /// Captured local audio: 48 kHz, interleaved, `channels` 1 or 2 (any block length;
    /// 10 ms suits the mixer)
    pub fn handle_local_audio(
        &mut self,
        now: Instant,
        samples: &[i16],
        channels: usize,
    ) -> Result<(), PipelineError> {
        self.audio_in(Source::Local, now, samples, channels)
    }

    /// One of a peer's video frames, rendered at `now`
    pub fn handle_video(
        &mut self,
        peer: &PeerId,
        now: Instant,
        frame: Arc<I420Frame>,
    ) -> Result<(), PipelineError> {
        self.video_in(Source::Peer(peer), now, frame)
    }

    /// A captured local video frame
    pub fn handle_local_video(
        &mut self,
        now: Instant,
        frame: Arc<I420Frame>,
    ) -> Result<(), PipelineError> {
        self.video_in(Source::Local, now, frame)
    }

    /// Runs the stage timeouts due at `now`
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.stages.len() {
            self.run_timeouts(i, now);
        }
    }

    fn audio_in(
        &mut self,
        source: Source<'_>,
        now: Instant,
        samples: &[i16],
        channels: usize,
    ) -> Result<(), PipelineError> {
        if !(1..=2).contains(&channels) || !samples.len().is_multiple_of(channels) {
            return Err(PipelineError::InvalidInput(format!(
                "{} samples do not make whole frames of {channels} channels (1 or 2)",
                samples.len()
            )));
        }
        let audio = AudioIn { samples, channels };
        for i in 0..self.stages.len() {
            if self.stages[i].config.audio.matches(source) {
                self.run(i, now, |stage, emit| {
                    stage.handle_audio(emit, source, audio)
                });
            }
            self.run_timeouts(i, now);
        }
        Ok(())
    }

    fn video_in(
        &mut self,
        source: Source<'_>,
        now: Instant,
        frame: Arc<I420Frame>,
    ) -> Result<(), PipelineError> {
        frame
            .check()
            .map_err(|e| PipelineError::InvalidInput(e.to_string()))?;
        for i in 0..self.stages.len() {
            if self.stages[i].config.video.matches(source) {
                self.run(i, now, |stage, emit| {
                    stage.handle_video(emit, source, &frame)
                });
            }
            self.run_timeouts(i, now);
        }
        Ok(())
    }

    fn run_timeouts(&mut self, i: usize, now: Instant) {
        for _ in 0..MAX_TICKS_PER_CALL {
            match self.stages[i].stage.poll_timeout() {
                Some(t) if t <= now => {
                    // The run happens now, however late: the stage sees how late it is and
                    // may skip ahead rather than burst.
                    if !self.run(i, now, |stage, emit| stage.handle_timeout(emit)) {
                        self.stages[i].stage.skip_timeout(now);
                    }
                }
                _ => return,
            }
        }
    }

    /// Offers one run to stage `i`; returns whether it ran
    fn run(
        &mut self,
        i: usize,
        now: Instant,
        f: impl FnOnce(&mut dyn AnyStage, &mut Emit<'_>) -> Work,
    ) -> bool {
        let id = StageId(i as u32);
        let slot = &mut self.stages[i];
        if !slot.governor.admit(now, &mut slot.stats) {
            return false;
        }
        self.meter.start(id);
        let mut emit = Emit {
            now,
            stage: id,
            routes: &self.routes,
            outbox: &mut self.outbox,
            emitted: 0,
        };
        let work = f(slot.stage.as_mut(), &mut emit);
        let emitted = emit.emitted;
        let cost = self.meter.finish(id, work);
        let ready = slot.governor.ran(now, cost, &mut slot.stats);
        // This run's outputs are the newest ones still queued (older ones may have been
        // dropped from the front, never these from the back).
        let n = self.outbox.queue.len();
        for out in self.outbox.queue.range_mut(n.saturating_sub(emitted)..) {
            out.ready = ready;
        }
        true
    }

    // ---- outputs ----

    /// The next output: track state changes first, then media in order
    pub fn poll_output(&mut self) -> Option<PipelineOutput> {
        if let Some(s) = self.states.pop_front() {
            return Some(s);
        }
        self.outbox.queue.pop_front().map(PipelineOutput::Media)
    }

    /// The earliest stage deadline
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.stages
            .iter()
            .filter_map(|s| s.stage.poll_timeout())
            .min()
    }

    /// The peers `out` should be sent to now (none for a local track)
    pub fn recipients<'a>(&'a self, out: &'a Outgoing) -> impl Iterator<Item = &'a PeerId> + 'a {
        self.routes.peers.iter().filter(move |p| {
            (match &out.to {
                Destination::Track => true,
                Destination::Peer(only) => only == *p,
            }) && self.routes.is_sending(out.track, p)
        })
    }

    /// Whether `track` is a local track (played or shown here, sent to nobody)
    pub fn is_local(&self, track: TrackId) -> bool {
        self.routes
            .tracks
            .get(&track)
            .is_some_and(|t| t.routing == Routing::Local)
    }

    /// Hands a spent output's buffers back for reuse
    pub fn recycle(&mut self, out: Outgoing) {
        self.outbox.reclaim(out.media);
    }

    fn check_track(&self, track: TrackId) -> Result<(), PipelineError> {
        if self.routes.tracks.contains_key(&track) {
            Ok(())
        } else {
            Err(PipelineError::UnknownTrack(track))
        }
    }

    /// Applies a routing change and queues a state output for every (track, peer) whose
    /// sending state changed
    fn change_routes(&mut self, f: impl FnOnce(&mut Routes)) {
        let before = self.routes.sending_set();
        f(&mut self.routes);
        let after = self.routes.sending_set();
        for (track, peer) in before.symmetric_difference(&after) {
            self.states.push_back(PipelineOutput::TrackState {
                track: *track,
                peer: peer.clone(),
                sending: after.contains(&(*track, peer.clone())),
            });
        }
    }
}

/// A stage that passes one source's media through unchanged to a track
///
/// Video frames are shared, not copied; audio is copied into a pooled buffer.
#[derive(Debug)]
pub struct Forward {
    track: TrackId,
}

impl Forward {
    /// Forwards whatever the stage's [`StageConfig`] selects to `track`
    pub const fn new(track: TrackId) -> Self {
        Self { track }
    }
}

impl Stage for Forward {
    fn name(&self) -> &str {
        "forward"
    }

    fn handle_audio(
        &mut self,
        emit: &mut Emit<'_>,
        _source: Source<'_>,
        audio: AudioIn<'_>,
    ) -> Work {
        if !emit.is_wanted(self.track) {
            return Work::NONE;
        }
        let mut buf = emit.audio_buffer();
        buf.extend_from_slice(audio.samples);
        emit.audio(self.track, Destination::Track, buf, audio.channels as u16);
        Work::samples(audio.samples.len() as u64)
    }

    fn handle_video(
        &mut self,
        emit: &mut Emit<'_>,
        _source: Source<'_>,
        frame: &Arc<I420Frame>,
    ) -> Work {
        emit.video(self.track, Destination::Track, frame.clone());
        Work::NONE
    }
}
