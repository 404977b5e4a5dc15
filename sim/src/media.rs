//! Media streams: test sources captured on each sender's local clock, and what every
//! receiver played of them
//!
//! A stream belongs to one sending host and goes to every peer that host is connected to
//! (the core encodes once and writes to each peer). Frame `k` is captured when the sender's
//! *local* clock reads `local(start) + k · period`, so a drifting host captures at its own
//! pace, as a real device would. Receivers' `AudioPlayout` and `VideoFrame` events are
//! mapped back to the frame they came from through their RTP ticks, and the one-way
//! capture-to-playout delay is measured in virtual (true) time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::{TestPattern, Tone};

use crate::sim::HostId;

/// Opus's RTP clock (the core's audio ticks), samples per second
pub(crate) const AUDIO_RATE: i128 = 48_000;

/// What a media stream captures
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaSource {
    /// A 440 Hz tone in Opus frames of `frame` (the sender's `MediaConfig::opus.frame_ms`)
    /// with `channels` (its `opus.channels`)
    Audio {
        /// Frame duration: 10, 20, 40 or 60 ms
        frame: Duration,
        /// 1 or 2
        channels: u16,
    },
    /// A moving test pattern ([`TestPattern`]) at `fps` frames per second
    Video {
        /// Width in pixels (even)
        width: u32,
        /// Height in pixels (even)
        height: u32,
        /// Frames per second, 1..=120
        fps: u32,
    },
}

impl MediaSource {
    /// `"audio"` or `"video"`
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Audio { .. } => "audio",
            Self::Video { .. } => "video",
        }
    }

    /// Local-clock offset of frame `k` from the stream's start, nanoseconds
    pub(crate) fn offset_ns(&self, k: u64) -> i128 {
        match *self {
            Self::Audio { frame, .. } => k as i128 * frame.as_nanos() as i128,
            Self::Video { fps, .. } => k as i128 * 1_000_000_000 / fps.max(1) as i128,
        }
    }

    /// Audio ticks (48 kHz) per frame; 0 for video
    pub(crate) fn frame_ticks(&self) -> i64 {
        match *self {
            Self::Audio { frame, .. } => {
                (frame.as_nanos() as i128 * AUDIO_RATE / 1_000_000_000) as i64
            }
            Self::Video { .. } => 0,
        }
    }
}

/// A media stream sent by one host to every peer it is connected to
#[derive(Debug, Clone, PartialEq)]
pub struct MediaStreamConfig {
    /// The stream's name in reports (for example `voice`)
    pub name: String,
    /// Sending host; its participant's `Config` must have the capability and codec settings
    pub from: HostId,
    /// What it captures
    pub source: MediaSource,
    /// Virtual time of the first capture (later captures follow the sender's local clock)
    pub start: Duration,
    /// No capture at or after this virtual time (`None`: until the run ends)
    pub stop: Option<Duration>,
    /// A frame played more than this after its capture is late
    pub late_after: Duration,
}

/// Index of a media stream in the simulation
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MediaStreamId(pub usize);

/// The first playout of one frame at one receiver
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaSample {
    /// Which incarnation of the sender's participant sent it (0, then 1 after a rejoin …)
    pub epoch: usize,
    /// The frame's index among those the sender handed to its participant in that epoch
    pub frame: u32,
    /// When it was captured (virtual time)
    pub captured_at: Duration,
    /// Capture to playout (audio: from the capture of the first sample of the playout chunk
    /// the frame first played in; video: from the frame's capture), virtual time
    pub delay: Duration,
}

/// What one receiver got of a media stream
///
/// Audio frames count as played once a non-concealed 10 ms playout chunk covers part of
/// them: a chunk starting at tick `m` that emitted `n` samples certainly consumed
/// `[m, m + n·(1 − max_decelerate))`, since the jitter buffer consumes at least that much
/// media per chunk. Video frames count as played when their `VideoFrame` event is emitted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaStats {
    /// Frames the sender handed to its participant while connected to this receiver (plus
    /// any frame played here that was written before the data channel opened)
    pub sent: u64,
    /// Captures skipped, or sent to others only, because this receiver was not connected
    pub not_connected: u64,
    /// Distinct frames played out (audio) or rendered (video)
    pub played: u64,
    /// Played frames whose delay exceeded the lateness limit
    pub late: u64,
    /// Video frames rendered again
    pub duplicates: u64,
    /// Video frames rendered after a later frame
    pub out_of_order: u64,
    /// Audio playout chunks that were (partly) concealment
    pub concealed_chunks: u64,
    /// Playout events that matched no sent frame (should stay 0)
    pub unmatched: u64,
    /// The longest time between two consecutive playouts (non-concealed audio chunks or
    /// rendered video frames)
    pub longest_gap: Option<Duration>,
    /// The first playout of every frame, in playout order
    pub samples: Vec<MediaSample>,
    last_play: Option<Duration>,
    last_frame: Option<(usize, u32)>,
    /// Per epoch, per frame: bit 0 sent, bit 1 played
    marks: Vec<Vec<u8>>,
}

const SENT: u8 = 1;
const PLAYED: u8 = 2;

impl MediaStats {
    fn mark(&mut self, epoch: usize, frame: u32) -> &mut u8 {
        if self.marks.len() <= epoch {
            self.marks.resize_with(epoch + 1, Vec::new);
        }
        let m = &mut self.marks[epoch];
        let i = frame as usize;
        if m.len() <= i {
            m.resize(i + 1, 0);
        }
        &mut m[i]
    }

    /// Whether frame `frame` of `epoch` was played here
    pub fn is_played(&self, epoch: usize, frame: u32) -> bool {
        self.marks
            .get(epoch)
            .and_then(|m| m.get(frame as usize))
            .is_some_and(|m| m & PLAYED != 0)
    }

    pub(crate) fn note_sent(&mut self, epoch: usize, frame: u32) {
        let m = self.mark(epoch, frame);
        if *m & SENT == 0 {
            *m |= SENT;
            self.sent += 1;
        }
    }

    /// Records a playout event at `now` (a gap is measured even when no new frame played)
    pub(crate) fn note_playout(&mut self, now: Duration) {
        if let Some(last) = self.last_play {
            let gap = now.saturating_sub(last);
            self.longest_gap = Some(self.longest_gap.map_or(gap, |g| g.max(gap)));
        }
        self.last_play = Some(now);
    }

    /// Records frame `frame` of `epoch` as played with `delay`; false if it already was
    pub(crate) fn note_played(
        &mut self,
        epoch: usize,
        frame: u32,
        captured_at: Duration,
        delay: Duration,
        late_after: Duration,
    ) -> bool {
        let m = self.mark(epoch, frame);
        if *m & PLAYED != 0 {
            self.duplicates += 1;
            return false;
        }
        let was_sent = *m & SENT != 0;
        *m |= PLAYED | SENT;
        if !was_sent {
            self.sent += 1;
        }
        self.played += 1;
        if delay > late_after {
            self.late += 1;
        }
        if self.last_frame.is_some_and(|l| (epoch, frame) < l) {
            self.out_of_order += 1;
        }
        self.last_frame = Some(
            self.last_frame
                .map_or((epoch, frame), |l| l.max((epoch, frame))),
        );
        self.samples.push(MediaSample {
            epoch,
            frame,
            captured_at,
            delay,
        });
        true
    }

    /// Frames sent here and never played: `(lost, pending)`, where pending ones were
    /// captured within `late_after` of `end`
    pub(crate) fn unplayed(
        &self,
        epochs: &[Epoch],
        late_after: Duration,
        end: Duration,
    ) -> (u64, u64) {
        let (mut lost, mut pending) = (0, 0);
        for (e, marks) in self.marks.iter().enumerate() {
            for (i, &m) in marks.iter().enumerate() {
                if m & SENT == 0 || m & PLAYED != 0 {
                    continue;
                }
                let captured = epochs
                    .get(e)
                    .and_then(|ep| ep.frames.get(i))
                    .map_or(Duration::ZERO, |f| f.captured_at);
                if captured + late_after < end {
                    lost += 1;
                } else {
                    pending += 1;
                }
            }
        }
        (lost, pending)
    }
}

/// One frame handed to the sender's participant
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentFrame {
    /// Virtual capture time
    pub(crate) captured_at: Duration,
    /// Capture time on the sender's clock, nanoseconds
    pub(crate) local_ns: i128,
}

/// The frames one incarnation of the sender's participant sent (its RTP ticks start afresh)
#[derive(Debug, Default)]
pub(crate) struct Epoch {
    pub(crate) incarnation: u64,
    pub(crate) frames: Vec<SentFrame>,
    /// Video: the first capture instant the participant saw (its RTP tick origin)
    pub(crate) video_origin: Option<Instant>,
    /// Video: RTP ticks → frame index
    pub(crate) by_ticks: BTreeMap<i64, u32>,
}

/// The test source of a stream
pub(crate) enum Generator {
    /// A tone, `samples` per channel per frame
    Tone { tone: Tone, samples: usize },
    /// Silence, one frame's worth (synthetic audio ignores the samples)
    Silence(Vec<i16>),
    /// A test pattern of this size
    Pattern { width: u32, height: u32 },
}

/// A stream's state: schedule, source, what was sent and what each receiver played
pub(crate) struct MediaStream {
    pub(crate) config: MediaStreamConfig,
    /// The sender's local reading at `start`
    pub(crate) local_start: i128,
    /// Index of the next capture on the schedule
    pub(crate) tick: u64,
    pub(crate) generator: Generator,
    pub(crate) epochs: Vec<Epoch>,
    /// By receiving host
    pub(crate) receivers: BTreeMap<usize, MediaStats>,
    /// Frames the participant refused (codec error)
    pub(crate) send_failed: u64,
}

impl MediaStream {
    /// A stream; `synthetic`: the sender's frames are synthetic, so no signal is generated
    pub(crate) fn new(config: MediaStreamConfig, local_start: i128, synthetic: bool) -> Self {
        let generator = match config.source {
            MediaSource::Audio { channels, .. } if synthetic => Generator::Silence(vec![
                    0;
                    config.source.frame_ticks() as usize
                        * usize::from(channels)
                ]),
            MediaSource::Audio { channels, .. } => Generator::Tone {
                tone: Tone::new(AUDIO_RATE as u32, channels),
                samples: config.source.frame_ticks() as usize,
            },
            MediaSource::Video { width, height, .. } => Generator::Pattern { width, height },
        };
        Self {
            config,
            local_start,
            tick: 0,
            generator,
            epochs: Vec::new(),
            receivers: BTreeMap::new(),
            send_failed: 0,
        }
    }

    /// The epoch of the sender's `incarnation`, created if new
    pub(crate) fn epoch_mut(&mut self, incarnation: u64) -> (usize, &mut Epoch) {
        if self
            .epochs
            .last()
            .is_none_or(|e| e.incarnation != incarnation)
        {
            self.epochs.push(Epoch {
                incarnation,
                ..Epoch::default()
            });
        }
        let i = self.epochs.len() - 1;
        (i, &mut self.epochs[i])
    }

    pub(crate) fn epoch_of(&self, incarnation: u64) -> Option<usize> {
        self.epochs
            .iter()
            .rposition(|e| e.incarnation == incarnation)
    }
}

/// Test-pattern frames shared by every stream of one size (a pattern frame is a pure
/// function of its index, and generating one costs about as much as encoding it)
#[derive(Default)]
pub(crate) struct PatternCache {
    frames: BTreeMap<(u32, u32), BTreeMap<u64, std::sync::Arc<meshrtc::codec::I420Frame>>>,
    /// One black frame per size, for synthetic video (which ignores the pixels)
    black: BTreeMap<(u32, u32), std::sync::Arc<meshrtc::codec::I420Frame>>,
}

/// Pattern frames kept per size
const PATTERN_CACHE: usize = 64;

impl PatternCache {
    /// A black frame of this size
    pub(crate) fn black(
        &mut self,
        width: u32,
        height: u32,
    ) -> std::sync::Arc<meshrtc::codec::I420Frame> {
        self.black
            .entry((width, height))
            .or_insert_with(|| std::sync::Arc::new(meshrtc::codec::I420Frame::black(width, height)))
            .clone()
    }

    pub(crate) fn frame(
        &mut self,
        width: u32,
        height: u32,
        index: u64,
    ) -> std::sync::Arc<meshrtc::codec::I420Frame> {
        let by_index = self.frames.entry((width, height)).or_default();
        if let Some(f) = by_index.get(&index) {
            return f.clone();
        }
        let f = std::sync::Arc::new(TestPattern::new(width, height).frame(index));
        by_index.insert(index, f.clone());
        while by_index.len() > PATTERN_CACHE {
            by_index.pop_first();
        }
        f
    }
}
