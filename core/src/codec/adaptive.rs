//! A video encoder whose bitrate, frame rate and size follow a target that may change at
//! any time, fed with frames at the capture size

use std::time::Duration;

use super::scale::Scaler;
use super::{
    check_rates, video_encoder, CodecError, EncodedVideo, I420Frame, VideoEncoder,
    VideoEncoderConfig,
};

/// A downscaling factor `num / den` (at most 1) applied to the capture size
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scale {
    num: u8,
    den: u8,
}

impl Scale {
    /// The capture size
    pub const FULL: Self = Self { num: 1, den: 1 };

    /// `num / den`; `None` unless `0 < num <= den`
    pub const fn new(num: u8, den: u8) -> Option<Self> {
        if num == 0 || num > den {
            return None;
        }
        Some(Self { num, den })
    }

    /// Numerator
    pub const fn num(self) -> u8 {
        self.num
    }

    /// Denominator
    pub const fn den(self) -> u8 {
        self.den
    }

    /// The factor as a float
    pub fn factor(self) -> f64 {
        f64::from(self.num) / f64::from(self.den)
    }

    /// The scaled size of `width` x `height`: each side times the factor, rounded down to
    /// an even number, at least 2 (encoders take even sizes only)
    pub fn apply(self, width: u32, height: u32) -> (u32, u32) {
        let side = |x: u32| {
            let s = (u64::from(x) * u64::from(self.num) / u64::from(self.den)) as u32;
            (s & !1).max(2)
        };
        (side(width), side(height))
    }
}

impl Default for Scale {
    fn default() -> Self {
        Self::FULL
    }
}

/// What an [`AdaptiveEncoder`] aims for
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoTarget {
    /// Target bitrate in bit/s, 50 kbit/s..=50 Mbit/s
    pub bitrate_bps: u32,
    /// Highest frame rate sent, 1..=120; frames beyond it are dropped before encoding
    pub max_fps: u32,
    /// Size sent, relative to the capture size
    pub scale: Scale,
}

/// Send-side video statistics of one encoder (W3C `RTCOutboundRtpStreamStats` names where
/// they exist)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VideoSendStats {
    /// Width of the last frame encoded (0 before the first)
    pub frame_width: u32,
    /// Height of the last frame encoded
    pub frame_height: u32,
    /// Frames the encoder produced, i.e. handed on to be sent
    pub frames_sent: u64,
    /// Keyframes among them
    pub key_frames_sent: u64,
    /// Bytes of encoded video produced
    pub bytes_sent: u64,
    /// Captured frames dropped before encoding to hold `max_fps`
    pub frames_dropped_rate: u64,
    /// Captured frames dropped before encoding because the encoder could not keep up (CPU)
    pub frames_dropped_cpu: u64,
    /// Captured frames skipped because the encoding had written more than its target
    /// allows (after a keyframe or another overshoot), so that they do not queue on the path
    pub frames_dropped_budget: u64,
    /// Frames the encoder's rate control skipped to hold the bitrate (OpenH264 only)
    pub frames_skipped_encoder: u64,
    /// Changes of the encoded size (`qualityLimitationResolutionChanges`)
    pub resolution_changes: u64,
}

/// Creates a [`VideoEncoder`] for a configuration ([`video_encoder`] for the real codecs)
pub type MakeEncoder = fn(VideoEncoderConfig) -> Result<Box<dyn VideoEncoder>, CodecError>;

/// A video encoder fed at the capture size, sending at a [`VideoTarget`] that may change
/// at any time
///
/// Bitrate and frame-rate changes reconfigure the codec in place ([`VideoEncoder::set_rates`]);
/// a scale change downscales the input ([`Scaler`], an area filter) and resizes the codec,
/// which makes the next frame a keyframe. Frames above `max_fps` are dropped before they cost
/// anything. The encoder is created on the first frame, when the capture size is known.
pub struct AdaptiveEncoder {
    base: VideoEncoderConfig,
    target: VideoTarget,
    enc: Option<Box<dyn VideoEncoder>>,
    /// Creates the codec on the first frame
    make: MakeEncoder,
    scaler: Scaler,
    scaled: I420Frame,
    /// Earliest pts of the next frame to encode under `max_fps`
    next_due: Option<Duration>,
    /// A keyframe is wanted (made once [`MIN_KEYFRAME_INTERVAL`] has passed since the last)
    keyframe_requested: bool,
    /// Presentation time of the last keyframe made
    last_keyframe: Option<Duration>,
    stats: VideoSendStats,
}

/// Least time between two keyframes made on request (libwebrtc's sender waits 300 ms too):
/// a receiver that lost a keyframe asks again every 200 ms, and on a congested path each
/// keyframe answered at once is another burst the queue cannot take, lost in its turn
pub const MIN_KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);

impl std::fmt::Debug for AdaptiveEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveEncoder")
            .field("base", &self.base)
            .field("target", &self.target)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AdaptiveEncoder {
    /// An encoder for `cfg.codec`; `cfg.fps` is the capture rate, `cfg.bitrate_bps` the first
    /// target, the size is taken from the frames
    ///
    /// Fails as [`video_encoder`] does for out-of-range settings.
    pub fn new(cfg: VideoEncoderConfig) -> Result<Self, CodecError> {
        if !cfg.codec.is_supported() {
            return Err(CodecError::Unsupported(cfg.codec.name()));
        }
        Self::with_encoder(cfg, video_encoder)
    }

    /// As [`new`](Self::new), with the codec made by `make` (e.g. a stand-in codec)
    pub fn with_encoder(cfg: VideoEncoderConfig, make: MakeEncoder) -> Result<Self, CodecError> {
        cfg.check()?;
        Ok(Self {
            target: VideoTarget {
                bitrate_bps: cfg.bitrate_bps,
                max_fps: cfg.fps,
                scale: Scale::FULL,
            },
            base: cfg,
            enc: None,
            make,
            scaler: Scaler::new(),
            scaled: I420Frame::black(2, 2),
            next_due: None,
            keyframe_requested: false,
            last_keyframe: None,
            stats: VideoSendStats::default(),
        })
    }

    /// The target in force
    pub fn target(&self) -> VideoTarget {
        self.target
    }

    /// The capture frame rate this encoder was created with
    pub fn capture_fps(&self) -> u32 {
        self.base.fps
    }

    /// Sets a new target, effective from the next frame
    ///
    /// [`CodecError::InvalidConfig`] for an out-of-range bitrate or frame rate (nothing
    /// changes then).
    pub fn set_target(&mut self, target: VideoTarget) -> Result<(), CodecError> {
        check_rates(target.bitrate_bps, target.max_fps)?;
        let fps = target.max_fps.min(self.base.fps);
        if let Some(enc) = &mut self.enc {
            let cfg = enc.config();
            if (cfg.bitrate_bps, cfg.fps) != (target.bitrate_bps, fps) {
                enc.set_rates(target.bitrate_bps, fps)?;
            }
        }
        if target.max_fps != self.target.max_fps {
            // Start the new pace at the next frame.
            self.next_due = None;
        }
        self.target = target;
        Ok(())
    }

    /// Makes the next encoded frame a keyframe, or the first one 300 ms after the last
    /// keyframe
    pub fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    /// Counts a captured frame the caller dropped because the encoder could not keep up
    pub fn note_dropped_cpu(&mut self) {
        self.stats.frames_dropped_cpu += 1;
    }

    /// Counts a captured frame skipped because the encoding is over its bitrate budget
    pub fn note_dropped_budget(&mut self) {
        self.stats.frames_dropped_budget += 1;
    }

    /// The statistics so far
    pub fn stats(&self) -> VideoSendStats {
        self.stats
    }

    /// The size a frame of `width` x `height` is encoded at under the current target
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        self.target.scale.apply(width, height)
    }

    /// Whether a frame at `pts` would be encoded under `max_fps` (without recording it)
    pub fn wants_frame(&self, pts: Duration) -> bool {
        if self.target.max_fps >= self.base.fps {
            return true;
        }
        let interval = Duration::from_secs(1) / self.target.max_fps;
        // A quarter interval of tolerance absorbs capture jitter without drifting the rate.
        self.next_due.is_none_or(|due| pts + interval / 4 >= due)
    }

    /// Encodes a captured frame presented at `pts`, or drops it to hold `max_fps`
    ///
    /// `Ok(None)` when the frame was dropped (by the frame-rate cap or the encoder's rate
    /// control). Frames may change size at any time; odd sizes are fine (the encoded size is
    /// rounded down to even).
    pub fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
    ) -> Result<Option<EncodedVideo>, CodecError> {
        frame.check()?;
        if frame.width < 2 || frame.height < 2 {
            return Err(CodecError::InvalidInput(format!(
                "{}x{} frame is too small",
                frame.width, frame.height
            )));
        }
        if !self.wants_frame(pts) {
            self.stats.frames_dropped_rate += 1;
            return Ok(None);
        }
        if self.target.max_fps < self.base.fps {
            let interval = Duration::from_secs(1) / self.target.max_fps;
            let base = match self.next_due {
                // After a gap (or at the start) the pace restarts from this frame.
                Some(due) if pts <= due + interval => due,
                _ => pts,
            };
            self.next_due = Some(base + interval);
        }

        let (w, h) = self.output_size(frame.width, frame.height);
        let enc = match &mut self.enc {
            Some(enc) => {
                if (enc.config().width, enc.config().height) != (w, h) {
                    enc.set_size(w, h)?;
                    self.stats.resolution_changes += 1;
                }
                enc
            }
            None => {
                let cfg = VideoEncoderConfig {
                    width: w,
                    height: h,
                    bitrate_bps: self.target.bitrate_bps,
                    fps: self.target.max_fps.min(self.base.fps),
                    ..self.base
                };
                self.enc.insert((self.make)(cfg)?)
            }
        };
        let spaced = self
            .last_keyframe
            .is_none_or(|k| pts.saturating_sub(k) >= MIN_KEYFRAME_INTERVAL || pts < k);
        if self.keyframe_requested && spaced {
            self.keyframe_requested = false;
            enc.request_keyframe();
        }
        let input = if (w, h) == (frame.width, frame.height) {
            frame
        } else {
            self.scaler.scale_into(frame, w, h, &mut self.scaled);
            &self.scaled
        };
        let out = enc.encode(input, pts)?;
        match &out {
            Some(e) => {
                self.stats.frames_sent += 1;
                self.stats.key_frames_sent += u64::from(e.keyframe);
                if e.keyframe {
                    self.last_keyframe = Some(pts);
                }
                self.stats.bytes_sent += e.data.len() as u64;
                self.stats.frame_width = w;
                self.stats.frame_height = h;
            }
            None => self.stats.frames_skipped_encoder += 1,
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testsrc::{psnr, TestPattern};
    use crate::codec::{video_decoder, VideoCodec};

    fn compiled() -> impl Iterator<Item = VideoCodec> {
        VideoCodec::ALL.into_iter().filter(|c| c.is_supported())
    }

    fn pts(i: u64) -> Duration {
        Duration::from_secs(i) / 30
    }

    #[test]
    fn scale_rounds_to_even() {
        let half = Scale::new(1, 2).unwrap();
        assert_eq!(half.apply(640, 360), (320, 180));
        assert_eq!(Scale::new(3, 8).unwrap().apply(640, 360), (240, 134));
        assert_eq!(Scale::FULL.apply(33, 17), (32, 16));
        assert_eq!(Scale::new(1, 255).unwrap().apply(100, 100), (2, 2));
        assert!(Scale::new(0, 1).is_none() && Scale::new(3, 2).is_none());
    }

    /// Bytes per second of encoded output over frames `range` of a run
    fn rate(sizes: &[(u64, usize)], range: std::ops::Range<u64>) -> f64 {
        let bytes: usize = sizes
            .iter()
            .filter(|(i, _)| range.contains(i))
            .map(|(_, n)| n)
            .sum();
        bytes as f64 * 8.0 / ((range.end - range.start) as f64 / 30.0)
    }

    #[test]
    fn bitrate_follows_the_target_without_a_keyframe() {
        for codec in compiled() {
            let cfg = VideoEncoderConfig {
                bitrate_bps: 1_000_000,
                ..VideoEncoderConfig::new(codec, 640, 360)
            };
            let mut enc = AdaptiveEncoder::new(cfg).unwrap();
            let src = TestPattern::new(640, 360);
            let mut sizes = Vec::new();
            let mut keys = Vec::new();
            for i in 0..180 {
                if i == 90 {
                    let t = VideoTarget {
                        bitrate_bps: 250_000,
                        ..enc.target()
                    };
                    enc.set_target(t).unwrap();
                }
                if let Some(e) = enc.encode(&src.frame(i), pts(i)).unwrap() {
                    sizes.push((i, e.data.len()));
                    if e.keyframe {
                        keys.push(i);
                    }
                }
            }
            // Skip the start and the settling after the change.
            let (high, low) = (rate(&sizes, 30..90), rate(&sizes, 120..180));
            eprintln!("{}: {high:.0} -> {low:.0} bit/s", codec.name());
            assert!(low < 0.45 * high, "{}: {high:.0} -> {low:.0}", codec.name());
            // VP9 overshoots a target this low for 360p (its quantizer is capped at 52, as
            // in libwebrtc), the others hold it.
            assert!(low < 450_000.0, "{}: {low:.0}", codec.name());
            // The keyframe interval (2 s) is the only reason for keyframes.
            assert_eq!(keys, [0, 60, 120], "{}", codec.name());
            assert_eq!(enc.stats().resolution_changes, 0);
        }
    }

    #[test]
    fn scale_and_frame_rate_changes_apply_at_once() {
        for codec in compiled() {
            let mut enc = AdaptiveEncoder::new(VideoEncoderConfig::new(codec, 640, 360)).unwrap();
            let mut dec = video_decoder(codec).unwrap();
            let src = TestPattern::new(640, 360);
            let mut log = Vec::new();
            for i in 0..120 {
                match i {
                    30 => enc
                        .set_target(VideoTarget {
                            scale: Scale::new(1, 2).unwrap(),
                            max_fps: 15,
                            ..enc.target()
                        })
                        .unwrap(),
                    60 => enc
                        .set_target(VideoTarget {
                            scale: Scale::new(3, 4).unwrap(),
                            max_fps: 30,
                            ..enc.target()
                        })
                        .unwrap(),
                    // Back up past the size some encoders were created with... and then
                    // to the full size again.
                    90 => enc
                        .set_target(VideoTarget {
                            scale: Scale::FULL,
                            ..enc.target()
                        })
                        .unwrap(),
                    _ => {}
                }
                let Some(e) = enc.encode(&src.frame(i), pts(i)).unwrap() else {
                    continue;
                };
                let out = dec.decode(&e.data).unwrap().expect("a picture");
                let sent = Scaler::new().scale(&src.frame(i), out.width, out.height);
                let db = psnr(&sent, &out);
                assert!(db > 30.0, "{} frame {i}: {db:.1} dB", codec.name());
                log.push((i, out.width, e.keyframe));
            }
            let at = |i| log.iter().find(|l| l.0 == i).copied();
            assert_eq!(at(30), Some((30, 320, true)), "{}", codec.name());
            assert_eq!(at(60), Some((60, 480, true)), "{}", codec.name());
            assert_eq!(at(90), Some((90, 640, true)), "{}", codec.name());
            // 15 fps between frames 30 and 60: every other frame.
            let sent = log.iter().filter(|l| (30..60).contains(&l.0)).count();
            assert_eq!(sent, 15, "{}", codec.name());
            let s = enc.stats();
            assert_eq!((s.frame_width, s.frame_height), (640, 360));
            assert_eq!(s.resolution_changes, 3);
            assert_eq!(s.frames_dropped_rate, 15);
            assert_eq!(s.frames_sent as usize, log.len());
        }
    }

    #[test]
    fn growing_past_the_first_size_works() {
        for codec in compiled() {
            let mut enc = AdaptiveEncoder::new(VideoEncoderConfig::new(codec, 640, 360)).unwrap();
            let half = Scale::new(1, 2).unwrap();
            enc.set_target(VideoTarget {
                scale: half,
                ..enc.target()
            })
            .unwrap();
            let mut dec = video_decoder(codec).unwrap();
            let src = TestPattern::new(640, 360);
            for i in 0..6 {
                if i == 3 {
                    enc.set_target(VideoTarget {
                        scale: Scale::FULL,
                        ..enc.target()
                    })
                    .unwrap();
                }
                // (H.264 may skip a frame to hold the bitrate.)
                let Some(e) = enc.encode(&src.frame(i), pts(i)).unwrap() else {
                    continue;
                };
                eprintln!(
                    "{} frame {i}: {} bytes, key {}",
                    codec.name(),
                    e.data.len(),
                    e.keyframe
                );
                assert_eq!(e.keyframe, i == 0 || i == 3, "{} frame {i}", codec.name());
                let out = dec.decode(&e.data).unwrap().unwrap();
                assert_eq!(out.width, if i < 3 { 320 } else { 640 });
            }
        }
    }

    /// Sizes up and down, in place and past the first size, many times over: every frame
    /// decodes at the size it was sent at (run under `MALLOC_CHECK_=3` this also caught heap
    /// corruption in libvpx's VP9 in-place growth)
    #[test]
    fn many_size_changes_stay_sound() {
        let scales = [(1, 2), (3, 4), (1, 1), (3, 8), (1, 4), (1, 1), (1, 2)];
        for codec in compiled() {
            let mut enc = AdaptiveEncoder::new(VideoEncoderConfig::new(codec, 320, 180)).unwrap();
            let mut dec = video_decoder(codec).unwrap();
            let src = TestPattern::new(320, 180);
            for i in 0..70u64 {
                let (n, d) = scales[(i / 5) as usize % scales.len()];
                let scale = Scale::new(n, d).unwrap();
                enc.set_target(VideoTarget {
                    scale,
                    ..enc.target()
                })
                .unwrap();
                let Some(e) = enc.encode(&src.frame(i), pts(i)).unwrap() else {
                    continue;
                };
                let out = dec.decode(&e.data).unwrap().unwrap();
                assert_eq!(
                    (out.width, out.height),
                    scale.apply(320, 180),
                    "{} {i}",
                    codec.name()
                );
            }
        }
    }

    #[test]
    fn frame_rate_cap_keeps_the_average() {
        let Ok(mut enc) = AdaptiveEncoder::new(VideoEncoderConfig::new(VideoCodec::Vp8, 64, 36))
        else {
            return;
        };
        let f = TestPattern::new(64, 36).frame(0);
        for (k, (fps, want)) in [(20, 20), (10, 10), (7, 7), (15, 15), (30, 30)]
            .into_iter()
            .enumerate()
        {
            enc.set_target(VideoTarget {
                max_fps: fps,
                ..enc.target()
            })
            .unwrap();
            let before = enc.stats().frames_sent;
            for i in 0..90 {
                // 1 ms of capture jitter either way.
                let jitter = if i % 2 == 0 { 1 } else { 0 };
                enc.encode(&f, pts(k as u64 * 1000 + i) + Duration::from_millis(jitter))
                    .unwrap();
            }
            let got = (enc.stats().frames_sent - before) / 3;
            assert!(got.abs_diff(want) <= 1, "cap {fps}: {got} fps");
        }
    }

    #[test]
    fn bad_targets_change_nothing() {
        let Ok(mut enc) = AdaptiveEncoder::new(VideoEncoderConfig::new(VideoCodec::Vp8, 64, 36))
        else {
            return;
        };
        let t = enc.target();
        for bad in [
            VideoTarget {
                bitrate_bps: 10,
                ..t
            },
            VideoTarget { max_fps: 0, ..t },
        ] {
            assert!(matches!(
                enc.set_target(bad),
                Err(CodecError::InvalidConfig(_))
            ));
            assert_eq!(enc.target(), t);
        }
    }
}
