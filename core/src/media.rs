//! Media: encoding once for every peer, and per peer the receive pipeline (jitter buffer,
//! drift, decoding, video release in sync with audio)

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::Rtc;

use crate::codec::{self, I420Frame, OpusConfig, VideoCodec, VideoEncoderConfig};
use crate::sync::jitter::{
    AudioDecode, AudioJitterBuffer, JitterConfig, JitterStats, PlayoutChunk,
};
use crate::sync::time::{local_secs, TimestampUnwrapper};
use crate::sync::{DriftConfig, DriftEstimate, DriftEstimator};

/// Opus always runs at 48 kHz on the wire
pub const AUDIO_RATE: u32 = 48_000;
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
            synthetic: false,
        }
    }
}

/// Audio receive statistics of one peer (W3C webrtc-stats names where they exist)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AudioStats {
    /// The jitter buffer's counters
    pub jitter_buffer: JitterStats,
    /// Playout latency samples from the sender's capture (ms), when a wall-clock anchor is set
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
    /// RTCP sender reports received for this stream
    pub sender_reports: u64,
    /// Longest gap between two sender reports (ms)
    pub max_sender_report_interval_ms: Option<f64>,
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

/// Participant-wide encoders: each frame is encoded once, whatever the number of peers
pub(crate) struct Encoders {
    opus: Option<codec::OpusEncoder>,
    synthetic_audio: Option<codec::synthetic::SyntheticAudioEncoder>,
    video: BTreeMap<VideoCodec, Box<dyn codec::VideoEncoder>>,
    audio_ticks: i64,
    video_epoch: Option<Instant>,
}

impl Encoders {
    pub(crate) fn new() -> Self {
        Self {
            opus: None,
            synthetic_audio: None,
            video: BTreeMap::new(),
            audio_ticks: 0,
            video_epoch: None,
        }
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
            self.opus = Some(codec::OpusEncoder::new(config.opus)?);
        }
        let enc = self.opus.as_mut().expect("created above; panic means bug");
        let samples = enc.frame_samples();
        let data = enc.encode(pcm)?;
        let ticks = self.audio_ticks;
        self.audio_ticks += samples as i64;
        Ok((ticks, Arc::from(&data[..]), samples))
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

    /// Encodes one video frame with `codec`
    pub(crate) fn encode_video(
        &mut self,
        config: &MediaConfig,
        codec: VideoCodec,
        frame: &I420Frame,
        pts: Duration,
    ) -> Result<Option<codec::EncodedVideo>, codec::CodecError> {
        let enc = match self.video.entry(codec) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let mut cfg = config.video;
                cfg.codec = codec;
                cfg.width = frame.width;
                cfg.height = frame.height;
                e.insert(new_video_encoder(config, cfg)?)
            }
        };
        if enc.config().width != frame.width || enc.config().height != frame.height {
            let mut cfg = *enc.config();
            cfg.width = frame.width;
            cfg.height = frame.height;
            *enc = new_video_encoder(config, cfg)?;
        }
        enc.encode(frame, pts)
    }

    pub(crate) fn request_keyframe(&mut self, codec: VideoCodec) {
        if let Some(e) = self.video.get_mut(&codec) {
            e.request_keyframe();
        }
    }
}

/// The real encoder for `cfg`, or the synthetic one when `config` says so
fn new_video_encoder(
    config: &MediaConfig,
    cfg: VideoEncoderConfig,
) -> Result<Box<dyn codec::VideoEncoder>, codec::CodecError> {
    if config.synthetic {
        Ok(Box::new(codec::synthetic::SyntheticVideoEncoder::new(cfg)?))
    } else {
        codec::video_encoder(cfg)
    }
}

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

/// A video frame waiting for its render time
struct Pending {
    render_at: Instant,
    ideal: Option<Instant>,
    payload: VideoPayload,
    media_ticks: i64,
    keyframe: bool,
    codec: VideoCodec,
}

/// The receive (and send bookkeeping) side of media for one remote peer
pub(crate) struct PeerMedia {
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
    decoders: BTreeMap<VideoCodec, Box<dyn codec::VideoDecoder>>,
    waiting_keyframe: bool,
    last_pli: Option<Instant>,
    video_queue: VecDeque<Pending>,
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
}

impl PeerMedia {
    pub(crate) fn new(config: &MediaConfig, anchor: Option<(Instant, SystemTime)>) -> Self {
        Self {
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
            decoders: BTreeMap::new(),
            waiting_keyframe: false,
            last_pli: None,
            video_queue: VecDeque::new(),
            max_video_hold: config.max_video_hold,
            max_sync_step: config.max_sync_step_per_sec.as_secs_f64(),
            anchor,
            origin: None,
            audio_stats: AudioStats::default(),
            video_stats: VideoStats::default(),
        }
    }

    /// The estimated drift of the sender's clock, in ppm
    ///
    /// `None` until the estimate is larger than its uncertainty (it could be noise).
    pub(crate) fn drift_ppm(&self) -> Option<f64> {
        self.drift_estimate.and_then(|e| e.significant_ppm())
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
            self.video_stats.codec = Some(codec);
            let keyframe = is_keyframe(codec, &data.data);
            if keyframe {
                self.video_stats.keyframes += 1;
                self.waiting_keyframe = false;
            }
            if !data.contiguous && !keyframe {
                // Packets were lost: the decoder cannot continue without a keyframe.
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
                // for what video *usually* needs — a high quantile over the last seconds —
                // not for one slow keyframe.
                let behind = local_secs(now, ideal);
                self.behind.push_back((now, behind + self.sync_delay));
                while self
                    .behind
                    .front()
                    .is_some_and(|(t, _)| *t + SYNC_WINDOW < now)
                {
                    self.behind.pop_front();
                }
                let mut v: Vec<f64> = self.behind.iter().map(|b| b.1).collect();
                v.sort_by(f64::total_cmp);
                let q = v[((v.len() - 1) as f64 * 0.9).round() as usize];
                self.sync_wanted = if q > 0.0 { (q + 0.005).min(1.0) } else { 0.0 };
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
            // Bounded: a stalled audio clock must not hold video forever.
            while self.video_queue.len() > 60 {
                self.video_queue.pop_front();
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
            if let Some(jb) = &mut self.jitter {
                jb.set_drift_ppm(e.ppm);
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
                        if self.audio_stats.latency_ms.len() < 100_000 {
                            self.audio_stats
                                .latency_ms
                                .push((local_wall - wall) * 1000.0);
                        }
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
            self.video_stats.frames_rendered += 1;
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
