//! Media: encoding once for every peer, and per peer the receive pipeline (jitter buffer,
//! drift, decoding, video release in sync with audio)

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::Rtc;

use crate::codec::degrade::{DegradationConfig, DegradationController, QualityLimitation};
use crate::codec::{
    self, AdaptiveEncoder, AudioParams, I420Frame, OpusConfig, VideoCodec, VideoEncoderConfig,
    VideoSendStats, VideoTarget,
};
use crate::congestion::QueueGuard;
use crate::sync::jitter::{
    AudioDecode, AudioJitterBuffer, JitterConfig, JitterStats, PlayoutChunk,
};
use crate::sync::time::{local_secs, TimestampUnwrapper};
use crate::sync::{DriftConfig, DriftEstimate, DriftEstimator};

/// Opus always runs at 48 kHz on the wire
pub const AUDIO_RATE: u32 = 48_000;

/// Playout latency samples kept per peer: a minute of 10 ms chunks
const LATENCY_SAMPLES: usize = 6000;
/// Video RTP clock
pub const VIDEO_RATE: u32 = 90_000;

/// How long lip-sync remembers how late video frames were
const SYNC_WINDOW: Duration = Duration::from_secs(3);

/// Drift-estimator streams of one peer
const DRIFT_AUDIO: usize = 0;
const DRIFT_VIDEO: usize = 1;

/// What media a participant sends, and how it treats what it receives
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Opus settings for what we send
    pub opus: OpusConfig,
    /// Video codecs in order of preference (the first one both sides support is sent)
    pub video_codecs: Vec<VideoCodec>,
    /// Width, height, frame rate and bitrate of the video we send
    pub video: VideoEncoderConfig,
    /// Decode received media (false: hand encoded frames to the application)
    pub decode: bool,
    /// The audio jitter buffer's settings
    pub jitter: JitterConfig,
    /// Most time an incomplete video frame waits for retransmitted packets before it is
    /// dropped and a keyframe requested
    pub max_video_wait: Duration,
    /// Most time a decoded video frame waits for its audio to catch up
    pub max_video_hold: Duration,
    /// Fastest change of the lip-sync correction, per second
    pub max_sync_step_per_sec: Duration,
    /// Bandwidth estimation and what follows it (encoder targets, the low encoding, Opus
    /// FEC); `video.bitrate_bps` is the most video is sent at
    pub rate: crate::rate::RateConfig,
    /// Send and expect synthetic frames ([`codec::synthetic`]) instead of Opus and video:
    /// sized like the real codec's at `opus.bitrate_bps` and `video`, carrying a checked
    /// header, on the wire as Opus and VP8. For simulations, where codec work would dominate
    /// the run time; both ends must use it
    pub synthetic: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            opus: OpusConfig::default(),
            video_codecs: vec![VideoCodec::H264, VideoCodec::Vp8, VideoCodec::Vp9],
            video: VideoEncoderConfig::new(VideoCodec::H264, 640, 360),
            decode: true,
            jitter: JitterConfig::default(),
            max_video_wait: Duration::from_millis(300),
            max_video_hold: Duration::from_millis(500),
            max_sync_step_per_sec: Duration::from_millis(80),
            rate: crate::rate::RateConfig::default(),
            synthetic: false,
        }
    }
}

/// Audio receive statistics of one peer (W3C webrtc-stats names where they exist)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AudioStats {
    /// The jitter buffer's counters
    pub jitter_buffer: JitterStats,
    /// Playout latency samples from the sender's capture (ms), when a wall-clock anchor is
    /// set: those of the last minute of playout (at most 6000, in no particular order)
    pub latency_ms: Vec<f64>,
    /// RTP packets lost on the way here (str0m's receiver statistics)
    pub packets_lost_fraction: Option<f32>,
    /// Interarrival jitter (RTP units) from str0m
    pub jitter: Option<u32>,
    /// RTCP sender reports received for this stream
    pub sender_reports: u64,
    /// Longest gap between two sender reports (ms)
    pub max_sender_report_interval_ms: Option<f64>,
    /// Extra audio delay lip-sync currently adds so video can keep up (ms)
    pub sync_delay_ms: f64,
}

impl AudioStats {
    /// Adds what an earlier connection to the same peer received: counters add up, the
    /// figures of the moment are this connection's (the earlier ones while it has none)
    pub(crate) fn accumulate(&mut self, earlier: &AudioStats) {
        self.jitter_buffer.accumulate(&earlier.jitter_buffer);
        if self.latency_ms.is_empty() {
            self.latency_ms.clone_from(&earlier.latency_ms);
        }
        self.packets_lost_fraction = self.packets_lost_fraction.or(earlier.packets_lost_fraction);
        self.jitter = self.jitter.or(earlier.jitter);
        self.sender_reports += earlier.sender_reports;
        self.max_sender_report_interval_ms = max_option(
            self.max_sender_report_interval_ms,
            earlier.max_sender_report_interval_ms,
        );
    }
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Video receive statistics of one peer
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VideoStats {
    /// Encoded frames received
    pub frames_received: u64,
    /// Frames decoded
    pub frames_decoded: u64,
    /// Keyframes received
    pub keyframes: u64,
    /// Frames that failed to decode
    pub decode_errors: u64,
    /// Keyframe requests (PLI) we sent
    pub plis_sent: u64,
    /// Frames handed to the application
    pub frames_rendered: u64,
    /// Audio/video offset at render (ms, + = video late) of the last frame
    pub av_offset_ms: Option<f64>,
    /// The codec being received
    pub codec: Option<VideoCodec>,
    /// Frames dropped unrendered because too many (or too many bytes) were waiting
    pub frames_dropped_held: u64,
    /// RTCP sender reports received for this stream
    pub sender_reports: u64,
    /// Longest gap between two sender reports (ms)
    pub max_sender_report_interval_ms: Option<f64>,
}

impl VideoStats {
    /// Adds what an earlier connection to the same peer received (see
    /// [`AudioStats::accumulate`])
    pub(crate) fn accumulate(&mut self, earlier: &VideoStats) {
        self.frames_received += earlier.frames_received;
        self.frames_decoded += earlier.frames_decoded;
        self.keyframes += earlier.keyframes;
        self.decode_errors += earlier.decode_errors;
        self.plis_sent += earlier.plis_sent;
        self.frames_rendered += earlier.frames_rendered;
        self.frames_dropped_held += earlier.frames_dropped_held;
        self.sender_reports += earlier.sender_reports;
        self.av_offset_ms = self.av_offset_ms.or(earlier.av_offset_ms);
        self.codec = self.codec.or(earlier.codec);
        self.max_sender_report_interval_ms = max_option(
            self.max_sender_report_interval_ms,
            earlier.max_sender_report_interval_ms,
        );
    }
}

/// A decoded (or, in pass-through, encoded) video frame
#[derive(Debug, Clone)]
pub enum VideoPayload {
    /// Decoded I420 pixels
    Decoded(Box<I420Frame>),
    /// The encoded frame, as received
    Encoded(Arc<[u8]>),
}

/// Media a peer's pipeline hands to the participant
#[derive(Debug)]
pub(crate) enum MediaOut {
    Audio(PlayoutChunk),
    /// Encoded audio in pass-through mode
    EncodedAudio {
        media_ticks: i64,
        data: Arc<[u8]>,
    },
    Video {
        payload: VideoPayload,
        media_ticks: i64,
        keyframe: bool,
        codec: VideoCodec,
    },
    /// The remote asked for a keyframe of what we send with this codec
    KeyframeWanted(VideoCodec),
}

/// Which encoding of a codec a frame belongs to
///
/// Each codec has a main encoding and, while the participant asks for one, a second, smaller
/// and cheaper one for peers whose path cannot carry the main one. The two are independent
/// streams: a peer moved from one to the other needs a keyframe of the one it moves to
/// before its frames are useful.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// The encoding at the target the bandwidth estimate allows for most peers
    #[default]
    Main,
    /// The second encoding for slow peers
    Low,
}

/// One encoded frame of one encoding
#[derive(Debug, Clone)]
pub(crate) struct EncodedFrame {
    pub(crate) encoding: Encoding,
    pub(crate) video: codec::EncodedVideo,
}

/// Both encodings of one codec
struct CodecEncoders {
    main: AdaptiveEncoder,
    low: Option<AdaptiveEncoder>,
    /// What each encoding wrote beyond its target
    main_budget: FrameBudget,
    low_budget: FrameBudget,
}

/// How far ahead of its target an encoding may get (in time at the target) before its
/// frames are skipped
const FRAME_BUDGET_WINDOW_S: f64 = 0.25;

/// A leaky bucket of the bits an encoding wrote, drained at its target: while it holds
/// more than [`FRAME_BUDGET_WINDOW_S`] worth of the target, the encoder overshot (a
/// keyframe, a change of size, a scene change) and the next frames are skipped rather
/// than sent into a queue the path cannot drain
#[derive(Debug, Clone, Copy, Default)]
struct FrameBudget {
    bits: f64,
    at: Option<Instant>,
}

impl FrameBudget {
    /// Drains the bucket at `bps` up to `now`; true if a frame may be encoded now
    fn allows(&mut self, now: Instant, bps: u32) -> bool {
        if let Some(t) = self.at {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            self.bits = (self.bits - dt * f64::from(bps)).max(0.0);
        }
        self.at = Some(self.at.map_or(now, |t| t.max(now)));
        self.bits <= f64::from(bps) * FRAME_BUDGET_WINDOW_S
    }

    /// Counts a frame of `bytes` written
    fn add(&mut self, bytes: usize) {
        self.bits += bytes as f64 * 8.0;
    }
}

/// Participant-wide encoders: each frame is encoded once (or twice, with a low encoding),
/// whatever the number of peers
///
/// Bitrates follow [`set_video_bitrate`](Self::set_video_bitrate) (the main encoding's
/// target, e.g. from the bandwidth estimates) through a [`DegradationController`], which also
/// picks size and frame rate; [`set_video_target`](Self::set_video_target) sets a codec's
/// target directly instead. The caller measures encode time (the core reads no clock) and
/// reports it with [`handle_encode_time`](Self::handle_encode_time); frames that would queue
/// behind a busy encoder are turned down by [`should_encode`](Self::should_encode).
pub(crate) struct Encoders {
    opus: Option<codec::OpusEncoder>,
    synthetic_audio: Option<codec::synthetic::SyntheticAudioEncoder>,
    /// Audio settings asked for before the encoder existed
    audio_params: Option<AudioParams>,
    video: BTreeMap<VideoCodec, CodecEncoders>,
    audio_ticks: i64,
    video_epoch: Option<Instant>,
    /// Main-encoding bitrate set with set_video_bitrate; the controller is in charge then
    video_bitrate: Option<u32>,
    degrade: DegradationController,
    /// The low encoding's bitrate and its own controller (it has no CPU input: its encodes
    /// are reported together with the main one's)
    low: Option<(u32, DegradationController)>,
    /// What the slowest path of each group (main, low) drains of video, bit/s: the rate the
    /// frame budgets drain at (see [`set_budget_rates`](Self::set_budget_rates))
    drain: [Option<u32>; 2],
}

impl Encoders {
    pub(crate) fn new() -> Self {
        Self {
            opus: None,
            synthetic_audio: None,
            audio_params: None,
            video: BTreeMap::new(),
            audio_ticks: 0,
            video_epoch: None,
            video_bitrate: None,
            degrade: DegradationController::new(DegradationConfig::default()),
            low: None,
            drain: [None; 2],
        }
    }

    /// Sets the rates the main and the low encoding's frame budgets drain at: the video the
    /// slowest path of each group carries away (str0m's pacer sends at 1.1 times the
    /// estimate, less the audio); `None` drains at the encoding's target
    ///
    /// The frame budget is there against a queue in the pacer the path cannot drain, so it
    /// follows the path, not the encoder's target, which stays below it on purpose
    /// (headroom, hysteresis, a loss-limited estimate): on a path with room, a keyframe or
    /// an encoder overshooting a low target is no reason to skip frames.
    pub(crate) fn set_budget_rates(&mut self, main: Option<u32>, low: Option<u32>) {
        self.drain = [main, low];
    }

    /// Encodes one Opus frame; returns (rtp ticks of its first sample, payload)
    pub(crate) fn encode_audio(
        &mut self,
        config: &MediaConfig,
        pcm: &[i16],
    ) -> Result<(i64, Arc<[u8]>, usize), codec::CodecError> {
        if config.synthetic {
            if self.synthetic_audio.is_none() {
                let o = config.opus;
                self.synthetic_audio = Some(codec::synthetic::SyntheticAudioEncoder::new(
                    o.frame_ms,
                    o.channels,
                    o.bitrate_bps,
                )?);
            }
            let enc = self
                .synthetic_audio
                .as_mut()
                .expect("created above; panic means bug");
            let samples = enc.frame_samples();
            let ticks = self.audio_ticks;
            let capture = Duration::from_micros((ticks.max(0) as u64) * 1000 / 48);
            let data = enc.encode(pcm, capture)?;
            self.audio_ticks += samples as i64;
            return Ok((ticks, Arc::from(&data[..]), samples));
        }
        if self.opus.is_none() {
            let mut enc = codec::OpusEncoder::new(config.opus)?;
            if let Some(p) = self.audio_params {
                enc.set_params(p)?;
            }
            self.opus = Some(enc);
        }
        let enc = self.opus.as_mut().expect("created above; panic means bug");
        let samples = enc.frame_samples();
        let data = enc.encode(pcm)?;
        let ticks = self.audio_ticks;
        self.audio_ticks += samples as i64;
        Ok((ticks, Arc::from(&data[..]), samples))
    }

    /// Changes the Opus bitrate, FEC and expected loss, from the next frame on
    ///
    /// E.g. FEC on with the loss RTCP reports (libwebrtc turns it on from about 1 %), and
    /// the bitrate lowered last, when video is already at its floor.
    pub(crate) fn set_audio_params(
        &mut self,
        params: AudioParams,
    ) -> Result<(), codec::CodecError> {
        if let Some(enc) = &mut self.opus {
            enc.set_params(params)?;
        } else {
            // Validated now, applied when the encoder is created.
            let probe = OpusConfig {
                bitrate_bps: params.bitrate_bps,
                fec: params.fec,
                expected_loss_pct: params.expected_loss_pct,
                ..OpusConfig::default()
            };
            codec::OpusEncoder::new(probe)?;
        }
        self.audio_params = Some(params);
        Ok(())
    }

    /// The Opus settings in force (`None` before any were set or the encoder exists)
    pub(crate) fn audio_params(&self) -> Option<AudioParams> {
        self.opus
            .as_ref()
            .map(|e| AudioParams::of(e.config()))
            .or(self.audio_params)
    }

    /// Advances the audio clock for a frame encoded elsewhere (pass-through)
    pub(crate) fn advance_audio(&mut self, samples: usize) -> i64 {
        let t = self.audio_ticks;
        self.audio_ticks += samples as i64;
        t
    }

    /// Video RTP ticks for a capture instant
    pub(crate) fn video_ticks(&mut self, capture: Instant) -> i64 {
        let epoch = *self.video_epoch.get_or_insert(capture);
        (local_secs(capture, epoch) * VIDEO_RATE as f64).round() as i64
    }

    /// Sets the main encodings' target bitrate at `now`; from then on the degradation
    /// controller picks size and frame rate for it
    ///
    /// Call whenever the estimate the target comes from changes (the controller holds each
    /// level for at least a second, so calling often is fine).
    pub(crate) fn set_video_bitrate(&mut self, now: Instant, bitrate_bps: u32) {
        let bitrate_bps = bitrate_bps.clamp(MIN_VIDEO_BPS, MAX_VIDEO_BPS);
        self.video_bitrate = Some(bitrate_bps);
        self.degrade.set_target_bitrate(now, bitrate_bps);
    }

    /// Sets `codec`'s main target directly (size, frame rate and bitrate), bypassing the
    /// controller until the next [`set_video_bitrate`](Self::set_video_bitrate)
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "API for the rate adaptation and layer routing of issue 17"
        )
    )]
    pub(crate) fn set_video_target(
        &mut self,
        config: &MediaConfig,
        codec: VideoCodec,
        target: VideoTarget,
    ) -> Result<(), codec::CodecError> {
        self.video_bitrate = None;
        self.codec_encoders(config, codec)?.main.set_target(target)
    }

    /// Turns the low encoding on at `bitrate_bps` (for the slowest peers' estimate), or off
    /// with `None`
    ///
    /// The low encoding gets its own size and frame rate from the same ladder; it costs a
    /// second encode per frame (see `benches/README.md` for what that costs).
    pub(crate) fn set_low_encoding(&mut self, now: Instant, bitrate_bps: Option<u32>) {
        match bitrate_bps {
            None => {
                self.low = None;
                for e in self.video.values_mut() {
                    e.low = None;
                }
            }
            Some(bps) => {
                let bps = bps.clamp(MIN_VIDEO_BPS, MAX_VIDEO_BPS);
                let (rate, ctl) = self.low.get_or_insert_with(|| {
                    (
                        bps,
                        DegradationController::new(DegradationConfig::default()),
                    )
                });
                *rate = bps;
                ctl.set_target_bitrate(now, bps);
            }
        }
    }

    /// Whether the frame captured at `capture` should be encoded, decided at `now`
    ///
    /// `false` when the encoder is still busy with earlier frames (CPU overload): the caller
    /// drops the frame instead of queueing it, and it is counted in the send statistics.
    pub(crate) fn should_encode(&mut self, capture: Instant, now: Instant) -> bool {
        if self.degrade.should_encode(capture, now) {
            return true;
        }
        for e in self.video.values_mut() {
            e.main.note_dropped_cpu();
        }
        false
    }

    /// Reports how long encoding the frame captured at `capture` took (all its encodings),
    /// ending at `now`, measured by the caller
    pub(crate) fn handle_encode_time(&mut self, capture: Instant, took: Duration, now: Instant) {
        self.degrade.handle_encoded(capture, took, now);
    }

    /// Why the video sent is below the capture
    pub(crate) fn quality_limitation(&self, now: Instant) -> QualityLimitation {
        self.degrade.quality_limitation(now)
    }

    /// Send statistics of `codec`'s encoding
    pub(crate) fn video_send_stats(
        &self,
        codec: VideoCodec,
        encoding: Encoding,
    ) -> Option<VideoSendStats> {
        let e = self.video.get(&codec)?;
        match encoding {
            Encoding::Main => Some(e.main.stats()),
            Encoding::Low => e.low.as_ref().map(AdaptiveEncoder::stats),
        }
    }

    fn codec_encoders(
        &mut self,
        config: &MediaConfig,
        codec: VideoCodec,
    ) -> Result<&mut CodecEncoders, codec::CodecError> {
        match self.video.entry(codec) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let cfg = VideoEncoderConfig {
                    codec,
                    ..config.video
                };
                Ok(e.insert(CodecEncoders {
                    main: new_adaptive_encoder(config, cfg)?,
                    low: None,
                    main_budget: FrameBudget::default(),
                    low_budget: FrameBudget::default(),
                }))
            }
        }
    }

    /// Encodes one video frame with `codec`: the main encoding only
    pub(crate) fn encode_video(
        &mut self,
        config: &MediaConfig,
        codec: VideoCodec,
        frame: &I420Frame,
        pts: Duration,
    ) -> Result<Option<codec::EncodedVideo>, codec::CodecError> {
        let capture = self.video_epoch.map(|e| e + pts);
        let frames = self.encode_video_encodings(config, codec, frame, capture, pts)?;
        Ok(frames
            .into_iter()
            .find(|f| f.encoding == Encoding::Main)
            .map(|f| f.video))
    }

    /// Encodes one video frame with `codec`, in every encoding in use: the main one and,
    /// while it is on, the low one
    ///
    /// `capture` is the frame's capture instant (it moves the controller's clock: steps up
    /// are taken as time passes), `pts` its presentation time for the encoder. An encoding may
    /// produce nothing for a frame (frame-rate cap, rate control).
    pub(crate) fn encode_video_encodings(
        &mut self,
        config: &MediaConfig,
        codec: VideoCodec,
        frame: &I420Frame,
        capture: Option<Instant>,
        pts: Duration,
    ) -> Result<Vec<EncodedFrame>, codec::CodecError> {
        let capture_fps = config.video.fps;
        self.degrade
            .set_capture(frame.width, frame.height, capture_fps);
        if let Some(now) = capture {
            self.degrade.handle_timeout(now);
            if let Some((_, ctl)) = &mut self.low {
                ctl.handle_timeout(now);
            }
        }
        let main_target = match (self.video_bitrate, self.degrade.current()) {
            (Some(bitrate_bps), Some(level)) => Some(VideoTarget {
                bitrate_bps,
                max_fps: level.fps,
                scale: level.scale,
            }),
            _ => None,
        };
        let low_target = self.low.as_mut().and_then(|(bitrate_bps, ctl)| {
            ctl.set_capture(frame.width, frame.height, capture_fps);
            ctl.current().map(|level| VideoTarget {
                bitrate_bps: *bitrate_bps,
                max_fps: level.fps,
                scale: level.scale,
            })
        });
        let base = VideoEncoderConfig {
            codec,
            ..config.video
        };
        // Frames over an encoding's budget are skipped (only while a target is set); the
        // budget drains at what the path takes, else at the target.
        let [main_drain, low_drain] = self.drain;
        let within =
            |b: &mut FrameBudget, bps: Option<u32>, drain: Option<u32>| match (capture, bps) {
                (Some(now), Some(bps)) => b.allows(now, drain.map_or(bps, |d| d.max(bps))),
                _ => true,
            };
        let encoders = self.codec_encoders(config, codec)?;
        let mut out = Vec::with_capacity(2);
        if let Some(t) = main_target {
            encoders.main.set_target(t)?;
        }
        if within(
            &mut encoders.main_budget,
            main_target.map(|t| t.bitrate_bps),
            main_drain,
        ) {
            if let Some(video) = encoders.main.encode(frame, pts)? {
                if video.keyframe {
                    tracing::debug!(bytes = video.data.len(), "main encoding: keyframe");
                }
                encoders.main_budget.add(video.data.len());
                out.push(EncodedFrame {
                    encoding: Encoding::Main,
                    video,
                });
            }
        } else {
            tracing::trace!(?codec, "main encoding over its budget: frame skipped");
            encoders.main.note_dropped_budget();
        }
        match low_target {
            Some(t) => {
                let low = match &mut encoders.low {
                    Some(low) => low,
                    None => encoders.low.insert(new_adaptive_encoder(
                        config,
                        VideoEncoderConfig {
                            bitrate_bps: t.bitrate_bps,
                            ..base
                        },
                    )?),
                };
                low.set_target(t)?;
                let ok = within(&mut encoders.low_budget, Some(t.bitrate_bps), low_drain);
                if !ok {
                    low.note_dropped_budget();
                }
                if let Some(video) = if ok { low.encode(frame, pts)? } else { None } {
                    encoders.low_budget.add(video.data.len());
                    out.push(EncodedFrame {
                        encoding: Encoding::Low,
                        video,
                    });
                }
            }
            None => {
                encoders.low = None;
                encoders.low_budget = FrameBudget::default();
            }
        }
        Ok(out)
    }

    /// Uses `other`'s video clock (one clock for every track of a participant)
    pub(crate) fn share_video_epoch(&mut self, other: &Self) {
        if other.video_epoch.is_some() {
            self.video_epoch = other.video_epoch;
        }
    }

    /// Makes the next frame of every encoding of `codec` a keyframe
    pub(crate) fn request_keyframe(&mut self, codec: VideoCodec) {
        if let Some(e) = self.video.get_mut(&codec) {
            e.main.request_keyframe();
            if let Some(low) = &mut e.low {
                low.request_keyframe();
            }
        }
    }

    /// Makes the next frame of one encoding of `codec` a keyframe (e.g. for a peer that was
    /// moved to it, or a PLI from a peer that receives it)
    pub(crate) fn request_keyframe_of(&mut self, codec: VideoCodec, encoding: Encoding) {
        if let Some(e) = self.video.get_mut(&codec) {
            match encoding {
                Encoding::Main => e.main.request_keyframe(),
                Encoding::Low => {
                    if let Some(low) = &mut e.low {
                        low.request_keyframe();
                    }
                }
            }
        }
    }
}

/// The adaptive encoder for `cfg`: over the real codec, or the synthetic one when `config`
/// says so
fn new_adaptive_encoder(
    config: &MediaConfig,
    cfg: VideoEncoderConfig,
) -> Result<AdaptiveEncoder, codec::CodecError> {
    if config.synthetic {
        AdaptiveEncoder::with_encoder(cfg, codec::synthetic::video_encoder)
    } else {
        AdaptiveEncoder::new(cfg)
    }
}

// Lowest and highest video target Encoders accepts (the encoders' own range)
const MIN_VIDEO_BPS: u32 = crate::rate::MIN_VIDEO_BPS;
const MAX_VIDEO_BPS: u32 = 50_000_000;

/// Maps str0m's codec to ours
pub(crate) fn video_codec_of(c: Codec) -> Option<VideoCodec> {
    match c {
        Codec::H264 => Some(VideoCodec::H264),
        Codec::Vp8 => Some(VideoCodec::Vp8),
        Codec::Vp9 => Some(VideoCodec::Vp9),
        _ => None,
    }
}

/// Opus decoding for the jitter buffer
struct OpusPlayout {
    dec: Option<codec::OpusDecoder>,
    channels: usize,
}

impl AudioDecode for OpusPlayout {
    fn channels(&self) -> usize {
        self.channels
    }

    fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, String> {
        let dec = self.dec.as_mut().ok_or("opus is not available")?;
        dec.decode(payload)
            .map(|f| f.samples)
            .map_err(|e| e.to_string())
    }

    fn conceal(&mut self, samples: usize) -> Vec<i16> {
        match self.dec.as_mut().map(|d| d.conceal(samples)) {
            Some(Ok(f)) => f.samples,
            _ => vec![0; samples * self.channels],
        }
    }

    fn recover(&mut self, next: &[u8], samples: usize) -> Option<Vec<i16>> {
        if !codec::OpusDecoder::packet_has_fec(next) {
            return None;
        }
        let dec = self.dec.as_mut()?;
        dec.decode_fec(next, samples).ok().map(|f| f.samples)
    }
}

/// Synthetic frames for the jitter buffer ([`MediaConfig::synthetic`])
struct SyntheticPlayout(codec::synthetic::SyntheticAudioDecoder);

impl AudioDecode for SyntheticPlayout {
    fn channels(&self) -> usize {
        self.0.channels()
    }

    fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, String> {
        self.0.decode(payload).map_err(|e| e.to_string())
    }

    fn conceal(&mut self, samples: usize) -> Vec<i16> {
        vec![0; samples * self.0.channels()]
    }
}

/// One RTCP sender report: the sender's wall clock (seconds since the first report's, see
/// [`PeerMedia::wall_epoch`]) against its RTP time (ticks)
#[derive(Debug, Clone, Copy)]
struct SenderReport {
    wallclock: f64,
    rtp: i64,
    received: Instant,
}

/// Most decoded (or encoded) video frames held per peer waiting for their render time
const MAX_HELD_VIDEO_FRAMES: usize = 60;

/// Most bytes of video held per peer waiting for render time: a second of 1080p I420
/// (3 MB a frame) at 10 fps, or half a second of 720p at 30
const MAX_HELD_VIDEO_BYTES: usize = 32 << 20;

/// A video frame waiting for its render time
struct Pending {
    render_at: Instant,
    ideal: Option<Instant>,
    payload: VideoPayload,
    media_ticks: i64,
    keyframe: bool,
    codec: VideoCodec,
}

impl Pending {
    /// Bytes of picture (or encoded frame) held
    fn bytes(&self) -> usize {
        match &self.payload {
            VideoPayload::Decoded(f) => f.y.len() + f.u.len() + f.v.len(),
            VideoPayload::Encoded(e) => e.len(),
        }
    }
}

/// The receive (and send bookkeeping) side of media for one remote peer
pub(crate) struct PeerMedia {
    /// Where the next latency sample goes once the ring is full
    latency_next: usize,
    pub(crate) audio_mid: Option<Mid>,
    pub(crate) video_mid: Option<Mid>,
    decode: bool,
    synthetic: bool,
    playout_channels: usize,
    jitter: Option<AudioJitterBuffer>,
    audio_unwrap: TimestampUnwrapper,
    video_unwrap: TimestampUnwrapper,
    drift: DriftEstimator,
    drift_estimate: Option<DriftEstimate>,
    drift_reports: DriftEstimator,
    last_drift_update: Option<Instant>,
    sr_audio: Option<SenderReport>,
    sr_video: Option<SenderReport>,
    /// Local playout instant minus sender wall clock for the audio being played (seconds)
    audio_offset: Option<f64>,
    /// Extra audio delay lip-sync asks for (seconds), and where it is heading
    sync_delay: f64,
    sync_wanted: f64,
    last_sync_step: Option<Instant>,
    /// (arrival, how far behind its audio a video frame would be with no sync delay)
    behind: VecDeque<(Instant, f64)>,
    /// Scratch for the median of `behind` (one per video frame: kept, not reallocated)
    behind_scratch: Vec<f64>,
    decoders: BTreeMap<VideoCodec, Box<dyn codec::VideoDecoder>>,
    waiting_keyframe: bool,
    last_pli: Option<Instant>,
    video_queue: VecDeque<Pending>,
    /// Bytes held in `video_queue`
    video_queue_bytes: usize,
    max_video_hold: Duration,
    max_sync_step: f64,
    anchor: Option<(Instant, SystemTime)>,
    /// The sender's wall clock in its first sender report: report times are kept as seconds
    /// since then, so that an `f64` holds them to the nanosecond (seconds since 1970 would
    /// keep only about a quarter of a microsecond, and results would vary with the date)
    wall_epoch: Option<SystemTime>,
    /// A fixed local instant that lip-sync offsets are measured from
    origin: Option<Instant>,
    audio_stats: AudioStats,
    video_stats: VideoStats,
    /// Watches the one-way delay of what this peer sends us (rate adaptation on)
    guard: Option<QueueGuard>,
    /// Whether the guard's requests are sent (REMB), or it only tells the jitter buffer
    requests: bool,
}

impl PeerMedia {
    pub(crate) fn new(config: &MediaConfig, anchor: Option<(Instant, SystemTime)>) -> Self {
        Self {
            guard: config.rate.enabled.then(QueueGuard::default),
            requests: config.rate.receiver_requests,
            audio_mid: None,
            video_mid: None,
            decode: config.decode,
            synthetic: config.synthetic,
            playout_channels: config.opus.channels.clamp(1, 2) as usize,
            jitter: None,
            audio_unwrap: TimestampUnwrapper::default(),
            video_unwrap: TimestampUnwrapper::default(),
            drift: DriftEstimator::new(DriftConfig::default()),
            drift_estimate: None,
            drift_reports: DriftEstimator::new(DriftConfig {
                min_samples: 5,
                min_span: Duration::from_secs(4),
                ..DriftConfig::default()
            }),
            last_drift_update: None,
            wall_epoch: None,
            sr_audio: None,
            sr_video: None,
            audio_offset: None,
            sync_delay: 0.0,
            sync_wanted: 0.0,
            last_sync_step: None,
            behind: VecDeque::new(),
            behind_scratch: Vec::new(),
            decoders: BTreeMap::new(),
            waiting_keyframe: false,
            last_pli: None,
            video_queue: VecDeque::new(),
            video_queue_bytes: 0,
            max_video_hold: config.max_video_hold,
            max_sync_step: config.max_sync_step_per_sec.as_secs_f64(),
            anchor,
            origin: None,
            audio_stats: AudioStats::default(),
            latency_next: 0,
            video_stats: VideoStats::default(),
        }
    }

    /// The estimated drift of the sender's clock, in ppm
    ///
    /// `None` until the estimate is larger than its uncertainty (it could be noise).
    pub(crate) fn drift_ppm(&self) -> Option<f64> {
        self.drift_estimate.and_then(|e| e.significant_ppm())
    }

    /// The drift estimate whether or not it is told apart from zero, in ppm (with a finite
    /// uncertainty)
    pub(crate) fn drift_estimate_ppm(&self) -> Option<f64> {
        self.drift_estimate
            .filter(|e| e.uncertainty_ppm().is_finite())
            .map(|e| e.ppm)
    }

    /// Half the 95% interval of the drift estimate, in ppm
    pub(crate) fn drift_uncertainty_ppm(&self) -> Option<f64> {
        self.drift_estimate
            .map(|e| e.uncertainty_ppm())
            .filter(|u| u.is_finite())
    }

    /// The drift of the sender's wall clock estimated from its sender reports, in ppm (`None`
    /// until larger than its uncertainty)
    pub(crate) fn report_drift_ppm(&self) -> Option<f64> {
        self.drift_reports
            .estimate()
            .and_then(|e| e.significant_ppm())
    }

    pub(crate) fn audio_stats(&self) -> AudioStats {
        let mut s = self.audio_stats.clone();
        s.sync_delay_ms = self.sync_delay * 1000.0;
        if let Some(jb) = &self.jitter {
            s.jitter_buffer = jb.stats();
        }
        s
    }

    pub(crate) fn video_stats(&self) -> VideoStats {
        self.video_stats.clone()
    }

    pub(crate) fn set_mid(&mut self, kind: MediaKind, mid: Mid) {
        match kind {
            MediaKind::Audio => self.audio_mid = Some(mid),
            MediaKind::Video => self.video_mid = Some(mid),
        }
    }

    /// Handles one received frame from str0m
    pub(crate) fn handle_media_data(
        &mut self,
        rtc: &mut Rtc,
        jitter_config: &JitterConfig,
        data: MediaData,
        out: &mut Vec<MediaOut>,
    ) {
        let now = data.network_time;
        if data.data.is_empty() {
            // Padding: RTP packets with no payload, which browsers send on the audio stream
            // to probe bandwidth, carry the timestamp of an earlier frame. Neither a frame
            // nor a delay sample (as a frame it would replace the real one when it overtakes
            // it, and decode to nothing).
            return;
        }
        self.origin.get_or_insert(now);
        if Some(data.mid) == self.audio_mid {
            let ticks = self.audio_unwrap.unwrap(data.time.numer() as u32);
            let mut drained = false;
            if let Some(g) = &mut self.guard {
                g.handle_audio(now, ticks as f64 / AUDIO_RATE as f64);
                drained = g.take_drained();
            }
            if drained {
                if let Some(jb) = &mut self.jitter {
                    jb.path_queue_drained(now);
                }
                // What video lagged by while the queue lasted (frames lost in it, the
                // keyframe that repaired them) describes a path that is gone.
                self.behind.clear();
            }
            self.drift
                .handle_sample(DRIFT_AUDIO, now, ticks as f64 / AUDIO_RATE as f64);
            self.update_drift(now);
            if !self.decode {
                out.push(MediaOut::EncodedAudio {
                    media_ticks: ticks,
                    data: data.data,
                });
                return;
            }
            // Decode to the channel count we play out, whatever the sender encoded.
            let channels = self.playout_channels;
            let synthetic = self.synthetic;
            let jb = self.jitter.get_or_insert_with(|| {
                let dec: Box<dyn AudioDecode> = if synthetic {
                    Box::new(SyntheticPlayout(
                        codec::synthetic::SyntheticAudioDecoder::new(channels as u16),
                    ))
                } else {
                    let dec = codec::OpusDecoder::new(channels as u16).ok();
                    Box::new(OpusPlayout { dec, channels })
                };
                AudioJitterBuffer::new(*jitter_config, dec)
            });
            jb.handle_frame(now, ticks, data.data);
        } else if Some(data.mid) == self.video_mid {
            let ticks = self.video_unwrap.unwrap(data.time.numer() as u32);
            self.drift
                .handle_sample(DRIFT_VIDEO, now, ticks as f64 / VIDEO_RATE as f64);
            self.update_drift(now);
            let Some(codec) = video_codec_of(data.params.spec().codec) else {
                return;
            };
            self.video_stats.frames_received += 1;
            tracing::trace!(
                ticks,
                contiguous = data.contiguous,
                bytes = data.data.len(),
                "video frame received"
            );
            self.video_stats.codec = Some(codec);
            let keyframe = is_keyframe(codec, &data.data);
            if keyframe {
                self.video_stats.keyframes += 1;
                self.waiting_keyframe = false;
            }
            if !data.contiguous && !keyframe {
                // Packets were lost: the decoder cannot continue without a keyframe.
                tracing::trace!(waiting = self.waiting_keyframe, "video frame after a loss");
                self.waiting_keyframe = true;
                self.request_keyframe(rtc, now);
            }
            let payload = if self.decode {
                if self.waiting_keyframe {
                    // Keep asking (rate-limited): the request or the keyframe may be lost.
                    self.request_keyframe(rtc, now);
                    return;
                }
                let dec = match self.decoders.get_mut(&codec) {
                    Some(d) => d,
                    None => match new_video_decoder(self.synthetic, codec) {
                        Ok(d) => self.decoders.entry(codec).or_insert(d),
                        Err(_) => return,
                    },
                };
                match dec.decode(&data.data) {
                    Ok(Some(frame)) => {
                        self.video_stats.frames_decoded += 1;
                        VideoPayload::Decoded(Box::new(frame))
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "video decode failed; asking for a keyframe");
                        self.video_stats.decode_errors += 1;
                        self.waiting_keyframe = true;
                        self.request_keyframe(rtc, now);
                        return;
                    }
                }
            } else {
                VideoPayload::Encoded(data.data)
            };
            let ideal = self.ideal_render(ticks);
            let mut render_at = ideal.unwrap_or(now).max(now);
            if let Some(ideal) = ideal {
                // How far this frame is behind its audio (negative: ahead). Audio should wait
                // for what video *usually* needs — the median over the last seconds — not for
                // one slow keyframe, nor for the seconds in which the sender's pacer holds
                // video back after its estimate fell (audio is not paced). With the 90th
                // percentile, audio followed such lags: in the capacity step's low phase
                // seed 21 bob→alice had 20.9 % of its audio late (now none) and seed 14
                // alice→bob 31.2 % (now 24.7 %); the other 45 of 48 directions did not
                // change. Nor for a queue on the path: while one lasts
                // (the receiver's guard sees it in the audio's one-way delay) video lags by
                // the frames lost in it and the keyframe that repairs them, and audio held
                // back for that stayed late for seconds after the queue had drained
                // (up to 260 ms more, 2–7 s after a capacity drop in the simulator).
                let queue = self.guard.as_ref().is_some_and(QueueGuard::congested);
                if !queue {
                    let behind = local_secs(now, ideal);
                    self.behind.push_back((now, behind + self.sync_delay));
                }
                while self
                    .behind
                    .front()
                    .is_some_and(|(t, _)| *t + SYNC_WINDOW < now)
                {
                    self.behind.pop_front();
                }
                if !self.behind.is_empty() {
                    let v = &mut self.behind_scratch;
                    v.clear();
                    v.extend(self.behind.iter().map(|b| b.1));
                    let mid = v.len() / 2;
                    let (_, &mut q, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
                    self.sync_wanted = if q > 0.0 { (q + 0.005).min(1.0) } else { 0.0 };
                }
                render_at = render_at.min(now + self.max_video_hold);
            }
            self.video_queue.push_back(Pending {
                render_at,
                ideal,
                payload,
                media_ticks: ticks,
                keyframe,
                codec,
            });
            // Bounded in frames and bytes: a stalled audio clock must not hold video forever,
            // and a peer sending large pictures must not hold much memory here.
            self.video_queue_bytes += self.video_queue.back().map_or(0, Pending::bytes);
            while self.video_queue.len() > MAX_HELD_VIDEO_FRAMES
                || self.video_queue_bytes > MAX_HELD_VIDEO_BYTES
            {
                let Some(old) = self.video_queue.pop_front() else {
                    break;
                };
                self.video_queue_bytes -= old.bytes();
                self.video_stats.frames_dropped_held += 1;
            }
        }
    }

    /// When the sender's wall clock says frame `ticks` should show, on our clock
    fn ideal_render(&self, video_ticks: i64) -> Option<Instant> {
        let sr = self.sr_video?;
        let offset = self.audio_offset?;
        let wall = sr.wallclock + (video_ticks - sr.rtp) as f64 / VIDEO_RATE as f64;
        Some(crate::sync::time::local_offset(self.origin?, wall + offset))
    }

    /// A frame of `mid` could not be depacketized: for video, wait for a keyframe
    pub(crate) fn handle_malformed(&mut self, rtc: &mut Rtc, mid: Mid, now: Instant) {
        if Some(mid) == self.video_mid {
            self.video_stats.decode_errors += 1;
            self.waiting_keyframe = true;
            self.request_keyframe(rtc, now);
        }
    }

    fn request_keyframe(&mut self, rtc: &mut Rtc, now: Instant) {
        if self
            .last_pli
            .is_some_and(|t| now < t + Duration::from_millis(200))
        {
            return;
        }
        let Some(mid) = self.video_mid else {
            return;
        };
        if let Some(mut w) = rtc.writer(mid) {
            if w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                self.video_stats.plis_sent += 1;
                self.last_pli = Some(now);
            }
        }
    }

    fn update_drift(&mut self, now: Instant) {
        if self
            .last_drift_update
            .is_some_and(|t| now < t + Duration::from_secs(1))
        {
            return;
        }
        self.last_drift_update = Some(now);
        if let Some(e) = self.drift.estimate() {
            self.drift_estimate = Some(e);
            // Playout follows only a drift told apart from zero: an estimate whose interval
            // spans zero (a short window with lagging video, say) is as likely noise.
            if let Some(jb) = &mut self.jitter {
                jb.set_drift_ppm(e.significant_ppm().unwrap_or(0.0));
            }
        }
    }

    /// Records a sender report for `mid`, received at local `received`
    pub(crate) fn handle_sender_report(
        &mut self,
        mid: Mid,
        received: Instant,
        ntp: SystemTime,
        rtp: u32,
    ) {
        let epoch = *self.wall_epoch.get_or_insert(ntp);
        let wall = secs_since(epoch, ntp);
        let (unwrap, slot, count, max_gap) = if Some(mid) == self.audio_mid {
            (
                &self.audio_unwrap,
                &mut self.sr_audio,
                &mut self.audio_stats.sender_reports,
                &mut self.audio_stats.max_sender_report_interval_ms,
            )
        } else if Some(mid) == self.video_mid {
            (
                &self.video_unwrap,
                &mut self.sr_video,
                &mut self.video_stats.sender_reports,
                &mut self.video_stats.max_sender_report_interval_ms,
            )
        } else {
            return;
        };
        // Place the report's 32-bit RTP time next to the stream's unwrapped time.
        let rtp = unwrap.clone().unwrap(rtp);
        // Reports give a second, independent view of the sender's clock (its wall clock
        // rather than its media clock): estimated apart, since a handful of samples pooled
        // with thousands of packets would only add noise.
        self.drift_reports.handle_sample(0, received, wall);
        if let Some(prev) = slot {
            let gap = local_secs(received, prev.received) * 1000.0;
            *max_gap = Some(max_gap.map_or(gap, |m: f64| m.max(gap)));
        }
        *count += 1;
        *slot = Some(SenderReport {
            wallclock: wall,
            rtp,
            received,
        });
    }

    pub(crate) fn handle_ingress_stats(&mut self, mid: Mid, loss: Option<f32>, jitter: u32) {
        if Some(mid) == self.audio_mid {
            self.audio_stats.packets_lost_fraction = loss;
            self.audio_stats.jitter = Some(jitter);
        }
    }

    /// The next instant media needs a timeout
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let a = self.jitter.as_ref().and_then(|j| j.poll_timeout());
        let v = self.video_queue.iter().map(|p| p.render_at).min();
        match (a, v) {
            (Some(a), Some(v)) => Some(a.min(v)),
            (a, v) => a.or(v),
        }
    }

    /// Plays out audio and releases video due at `now`
    /// A datagram of `len` bytes arrived from this peer (what arrives is what the path
    /// carries while it has a queue)
    pub(crate) fn handle_datagram(&mut self, now: Instant, len: usize) {
        if let Some(g) = &mut self.guard {
            g.handle_bytes(now, len);
        }
    }

    /// The bitrate to ask this peer for in a REMB now, when our side of its path has a queue
    /// (see [`congestion`](crate::congestion))
    pub(crate) fn poll_rate_request(&mut self, now: Instant) -> Option<u32> {
        let request = self.guard.as_mut()?.poll_request(now);
        request.filter(|_| self.requests)
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut Vec<MediaOut>) {
        self.step_sync(now);
        if let Some(jb) = &mut self.jitter {
            jb.set_sync_delay(Duration::from_secs_f64(self.sync_delay));
            jb.handle_timeout(now);
            while let Some(chunk) = jb.poll_chunk() {
                if let Some(sr) = self.sr_audio {
                    let wall =
                        sr.wallclock + (chunk.media_ticks - sr.rtp) as f64 / AUDIO_RATE as f64;
                    if let Some(origin) = self.origin {
                        self.audio_offset = Some(local_secs(chunk.playout, origin) - wall);
                    }
                    if let (Some((anchor_local, anchor_sys)), Some(epoch), false) =
                        (self.anchor, self.wall_epoch, chunk.concealed)
                    {
                        let anchor_wall = secs_since(epoch, anchor_sys);
                        // Both wall clocks share one time base (exact on one machine).
                        let local_wall = anchor_wall + local_secs(chunk.playout, anchor_local);
                        // The last minute's samples: a ring, so memory stays flat.
                        let sample = (local_wall - wall) * 1000.0;
                        let samples = &mut self.audio_stats.latency_ms;
                        if samples.len() < LATENCY_SAMPLES {
                            samples.push(sample);
                        } else {
                            samples[self.latency_next % LATENCY_SAMPLES] = sample;
                        }
                        self.latency_next = (self.latency_next + 1) % LATENCY_SAMPLES;
                    }
                }
                out.push(MediaOut::Audio(chunk));
            }
        }
        while let Some(i) = self.video_queue.iter().position(|p| p.render_at <= now) {
            let p = self
                .video_queue
                .remove(i)
                .expect("found above; panic means bug");
            self.video_queue_bytes -= p.bytes();
            self.video_stats.frames_rendered += 1;
            tracing::trace!(
                ticks = p.media_ticks,
                keyframe = p.keyframe,
                "video frame rendered"
            );
            if let Some(ideal) = p.ideal {
                self.video_stats.av_offset_ms = Some(local_secs(now, ideal) * 1000.0);
            }
            out.push(MediaOut::Video {
                payload: p.payload,
                media_ticks: p.media_ticks,
                keyframe: p.keyframe,
                codec: p.codec,
            });
        }
    }

    /// Moves the lip-sync delay toward what video needs, no faster than the limit
    fn step_sync(&mut self, now: Instant) {
        let Some(last) = self.last_sync_step.replace(now) else {
            return;
        };
        let dt = local_secs(now, last).max(0.0);
        let max = self.max_sync_step * dt;
        let diff = self.sync_wanted - self.sync_delay;
        self.sync_delay += diff.clamp(-max, max);
    }
}

/// The real decoder for `codec`, or the synthetic one
fn new_video_decoder(
    synthetic: bool,
    codec: VideoCodec,
) -> Result<Box<dyn codec::VideoDecoder>, codec::CodecError> {
    if synthetic {
        Ok(Box::new(codec::synthetic::SyntheticVideoDecoder::new()))
    } else {
        codec::video_decoder(codec)
    }
}

/// Whether an encoded frame starts with a keyframe
pub(crate) fn is_keyframe(codec: VideoCodec, data: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => h264_annexb_has_idr(data),
        // VP8 payload header: bit 0 of the first byte is 0 for a keyframe.
        VideoCodec::Vp8 => data.first().is_some_and(|b| b & 0x01 == 0),
        // VP9 uncompressed header: frame_marker(2) profile(2) [reserved] show_existing(1)
        // frame_type(1), with frame_type 0 = keyframe.
        VideoCodec::Vp9 => vp9_is_keyframe(data),
    }
}

/// Whether an Annex-B H.264 access unit holds an IDR slice (NAL type 5)
fn h264_annexb_has_idr(data: &[u8]) -> bool {
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if data[i + 3] & 0x1f == 5 {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

fn vp9_is_keyframe(data: &[u8]) -> bool {
    let Some(&b) = data.first() else {
        return false;
    };
    if b >> 6 != 0b10 {
        return false;
    }
    let profile = ((b >> 5) & 1) | (((b >> 4) & 1) << 1);
    let mut bit = 4;
    if profile == 3 {
        bit -= 1;
    }
    let show_existing = (b >> (bit - 1)) & 1;
    if show_existing == 1 {
        return false;
    }
    let frame_type = (b >> (bit - 2)) & 1;
    frame_type == 0
}

/// Seconds from `epoch` to `t`, negative if `t` is earlier
fn secs_since(epoch: SystemTime, t: SystemTime) -> f64 {
    match t.duration_since(epoch) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod encoder_tests {
    #![allow(clippy::disallowed_methods)] // reason: an arbitrary origin for virtual time

    use super::*;
    use crate::codec::testsrc::{TestPattern, Tone};
    use crate::codec::{video_decoder, Scale};

    const PERIOD: Duration = Duration::from_nanos(1_000_000_000 / 30);

    fn config(codec: VideoCodec) -> MediaConfig {
        MediaConfig {
            video: VideoEncoderConfig::new(codec, 640, 360),
            ..MediaConfig::default()
        }
    }

    /// Runs `frames` frames from frame `from` (frame 0 captured at `t0`), returning the
    /// frames each encoding produced
    fn run(
        enc: &mut Encoders,
        config: &MediaConfig,
        codec: VideoCodec,
        from: u32,
        frames: u32,
    ) -> Vec<(u32, EncodedFrame)> {
        let src = TestPattern::new(640, 360);
        let mut out = Vec::new();
        let t0 = enc.video_epoch.unwrap_or_else(Instant::now);
        for i in from..from + frames {
            let f = src.frame(u64::from(i));
            let capture = t0 + PERIOD * i;
            let ticks = enc.video_ticks(capture);
            assert_eq!(ticks, i64::from(i) * 3000);
            for e in enc
                .encode_video_encodings(config, codec, &f, Some(capture), PERIOD * i)
                .unwrap()
            {
                out.push((i, e));
            }
        }
        out
    }

    #[test]
    fn the_frame_budget_follows_the_path_not_the_target() {
        let Some(codec) = VideoCodec::ALL.into_iter().find(|c| c.is_supported()) else {
            return;
        };
        let config = config(codec);
        let skipped = |drain: Option<u32>| {
            let mut enc = Encoders::new();
            enc.video_epoch = Some(Instant::now());
            // A target far below what the first keyframe takes.
            enc.set_video_bitrate(enc.video_epoch.unwrap(), 60_000);
            enc.set_budget_rates(drain, None);
            run(&mut enc, &config, codec, 0, 60);
            enc.video_send_stats(codec, Encoding::Main)
                .unwrap()
                .frames_dropped_budget
        };
        // Draining at the target: the keyframe alone is more than 250 ms of it.
        assert!(skipped(None) > 0);
        // A path that carries 2 Mbit/s of video has room for the keyframe: nothing skipped.
        assert_eq!(skipped(Some(2_000_000)), 0);
    }

    #[test]
    fn the_bitrate_picks_the_size_and_the_low_encoding_is_smaller() {
        let Some(codec) = VideoCodec::ALL.into_iter().find(|c| c.is_supported()) else {
            return;
        };
        let config = config(codec);
        let t0 = Instant::now();
        let mut enc = Encoders::new();
        enc.video_ticks(t0);
        enc.set_video_bitrate(t0, 1_500_000);
        run(&mut enc, &config, codec, 0, 30);
        let s = enc.video_send_stats(codec, Encoding::Main).unwrap();
        assert_eq!((s.frame_width, s.frame_height), (640, 360));

        // The estimate falls: the size follows at once, with a keyframe.
        enc.set_video_bitrate(t0 + Duration::from_secs(1), 200_000);
        let frames = run(&mut enc, &config, codec, 30, 30);
        let first = &frames[0].1;
        assert!(first.video.keyframe);
        let s = enc.video_send_stats(codec, Encoding::Main).unwrap();
        assert!(s.frame_width < 640, "{s:?}");
        assert_eq!(
            enc.quality_limitation(t0 + Duration::from_secs(2)),
            QualityLimitation::Bandwidth
        );

        // A low encoding for a slow peer: a second, smaller stream, decodable on its own.
        enc.set_video_bitrate(t0 + Duration::from_secs(2), 1_500_000);
        enc.set_low_encoding(t0 + Duration::from_secs(2), Some(150_000));
        let frames = run(&mut enc, &config, codec, 60, 180);
        let mut dec = video_decoder(codec).unwrap();
        let mut low = 0;
        for (_, f) in frames.iter().filter(|(_, f)| f.encoding == Encoding::Low) {
            let pic = dec.decode(&f.video.data).unwrap().unwrap();
            assert!(pic.width <= 320, "{}x{}", pic.width, pic.height);
            low += 1;
        }
        assert!(low >= 20, "{low} low frames");
        let main = enc.video_send_stats(codec, Encoding::Main).unwrap();
        let low = enc.video_send_stats(codec, Encoding::Low).unwrap();
        assert!(low.frame_width < main.frame_width, "{low:?} {main:?}");
        assert!(low.bytes_sent * 3 < main.bytes_sent, "{low:?} {main:?}");

        // The main encoding went back up in one step, two seconds after the recovery.
        assert_eq!((main.frame_width, main.frame_height), (640, 360));
        assert_eq!(main.resolution_changes, 2);

        // Keyframes on demand for one encoding only.
        enc.request_keyframe_of(codec, Encoding::Low);
        let frames = run(&mut enc, &config, codec, 240, 1);
        let keys: Vec<(Encoding, bool)> = frames
            .iter()
            .map(|(_, f)| (f.encoding, f.video.keyframe))
            .collect();
        assert!(keys.contains(&(Encoding::Low, true)), "{keys:?}");
        assert!(keys.contains(&(Encoding::Main, false)), "{keys:?}");

        enc.set_low_encoding(t0 + Duration::from_secs(8), None);
        let frames = run(&mut enc, &config, codec, 241, 5);
        assert!(frames.iter().all(|(_, f)| f.encoding == Encoding::Main));
        assert!(enc.video_send_stats(codec, Encoding::Low).is_none());
    }

    #[test]
    fn a_direct_target_overrides_the_controller() {
        let Some(codec) = VideoCodec::ALL.into_iter().find(|c| c.is_supported()) else {
            return;
        };
        let config = config(codec);
        let mut enc = Encoders::new();
        enc.video_ticks(Instant::now());
        enc.set_video_bitrate(Instant::now(), 100_000);
        let target = VideoTarget {
            bitrate_bps: 400_000,
            max_fps: 10,
            scale: Scale::new(1, 2).unwrap(),
        };
        enc.set_video_target(&config, codec, target).unwrap();
        run(&mut enc, &config, codec, 0, 30);
        let s = enc.video_send_stats(codec, Encoding::Main).unwrap();
        assert_eq!(
            (s.frame_width, s.frame_height, s.frames_sent),
            (320, 180, 10)
        );
    }

    #[test]
    fn busy_encoders_drop_frames_and_say_cpu() {
        let Some(codec) = VideoCodec::ALL.into_iter().find(|c| c.is_supported()) else {
            return;
        };
        let config = config(codec);
        let mut enc = Encoders::new();
        let t0 = Instant::now();
        let src = TestPattern::new(640, 360);
        let mut encoded = 0;
        for i in 0..30u32 {
            let capture = t0 + PERIOD * i;
            if !enc.should_encode(capture, capture) {
                continue;
            }
            let frame = src.frame(u64::from(i));
            enc.encode_video_encodings(&config, codec, &frame, Some(capture), PERIOD * i)
                .unwrap();
            encoded += 1;
            // As if each encode took 70 ms.
            let took = Duration::from_millis(70);
            enc.handle_encode_time(capture, took, capture + took);
        }
        assert!((10..=16).contains(&encoded), "{encoded}");
        let s = enc.video_send_stats(codec, Encoding::Main).unwrap();
        assert_eq!(s.frames_dropped_cpu, 30 - encoded);
        assert_eq!(
            enc.quality_limitation(t0 + PERIOD * 30),
            QualityLimitation::Cpu
        );
    }

    #[test]
    fn audio_params_apply_before_and_after_the_encoder_exists() {
        if !cfg!(feature = "opus") {
            return;
        }
        let config = MediaConfig::default();
        let mut enc = Encoders::new();
        let p = AudioParams {
            bitrate_bps: 12_000,
            fec: true,
            expected_loss_pct: 20,
        };
        enc.set_audio_params(p).unwrap();
        let mut tone = Tone::new(48_000, 1);
        let (_, small, _) = enc.encode_audio(&config, &tone.next_samples(960)).unwrap();
        assert_eq!(enc.audio_params(), Some(p));
        enc.set_audio_params(AudioParams {
            bitrate_bps: 64_000,
            ..p
        })
        .unwrap();
        let mut big = 0;
        for _ in 0..10 {
            big = enc
                .encode_audio(&config, &tone.next_samples(960))
                .unwrap()
                .1
                .len();
        }
        assert!(big > small.len() * 2, "{} -> {big}", small.len());
        assert!(matches!(
            enc.set_audio_params(AudioParams {
                bitrate_bps: 1,
                ..p
            }),
            Err(codec::CodecError::InvalidConfig(_))
        ));
    }
}
