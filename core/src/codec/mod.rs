//! Audio and video codecs: Opus, H.264 (OpenH264), VP8 and VP9 (libvpx)
//!
//! Pure computation: no sockets, clocks or threads of our own. Raw media goes in as
//! [`PcmFrame`]-sized sample slices and [`I420Frame`]s, encoded media comes out as
//! [`bytes::Bytes`] ready for str0m's frame-mode packetizers (H.264 as Annex-B, VP8/VP9 as
//! one frame per buffer), and the decoders take those buffers back.
//!
//! Each codec sits behind a cargo feature, all on by default: `opus`, `h264` and `vpx` (VP8
//! and VP9). With a feature off the types still exist, but their constructors return
//! [`CodecError::Unsupported`]; [`VideoCodec::is_supported`] tells which codecs were compiled
//! in, for negotiation.
//!
//! Decoders take bytes from the network, so they never panic on malformed or truncated input:
//! they return [`CodecError::Decode`] (or `Ok(None)` when the input holds no picture yet).
//!
//! `testsrc` (public with the `testing` feature) has deterministic test sources (a 440 Hz tone and a moving test pattern) and the
//! quality metrics used by the tests; [`synthetic`] has stand-in codecs for simulations
//! (frames of realistic size and timing carrying only a checked header).

use std::time::Duration;

use bytes::Bytes;

mod adaptive;
mod audio;
pub mod degrade;
#[cfg(feature = "h264")]
mod h264;
#[cfg_attr(
    not(any(feature = "h264", feature = "vpx")),
    allow(dead_code, reason = "used by the video decoders only")
)]
pub(crate) mod headers;
pub mod scale;
pub mod synthetic;
#[cfg(feature = "testing")]
pub mod testsrc;
#[cfg(not(feature = "testing"))]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod testsrc;
#[cfg(feature = "vpx")]
mod vpx;

pub use adaptive::{AdaptiveEncoder, MakeEncoder, Scale, VideoSendStats, VideoTarget};
pub use audio::{AudioFormat, AudioParams, OpusConfig, OpusDecoder, OpusEncoder, PcmFrame};

/// Largest decoded picture the video decoders accept, in pixels (4096 x 4096)
///
/// Bigger pictures give [`CodecError::Decode`]. The check runs on the bitstream's own
/// headers before the codec library sees the data (VP8 keyframe header, VP9 uncompressed
/// header of every frame including inter frames that change size, H.264 SPS), so hostile
/// input cannot make us allocate gigabytes; decoded pictures are checked again.
pub const MAX_DECODE_PIXELS: u64 = 4096 * 4096;

/// Longest side of a decoded picture the video decoders accept, in pixels
pub const MAX_DECODE_SIDE: u32 = 16_384;

/// Checks a declared picture size against [`MAX_DECODE_PIXELS`] and [`MAX_DECODE_SIDE`]
#[cfg_attr(
    not(any(feature = "h264", feature = "vpx")),
    allow(dead_code, reason = "used by the video decoders only")
)]
fn check_decode_size(codec: VideoCodec, (w, h): (u32, u32)) -> Result<(), CodecError> {
    if w == 0
        || h == 0
        || w > MAX_DECODE_SIDE
        || h > MAX_DECODE_SIDE
        || u64::from(w) * u64::from(h) > MAX_DECODE_PIXELS
    {
        return Err(CodecError::Decode(format!(
            "{} picture of {w}x{h} is over the limit",
            codec.name()
        )));
    }
    Ok(())
}

/// Errors from encoders and decoders
///
/// Grouped by who is at fault: the remote peer (malformed input), the local codec library,
/// or the caller (misuse of this API).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    // The remote peer's fault.
    /// Encoded input could not be decoded: malformed, truncated, or missing its references
    ///
    /// The decoder stays usable; video decoders recover at the next keyframe.
    #[error("decode failed: {0}")]
    Decode(String),

    // Local resources.
    /// The codec library failed to create a codec or to encode a frame
    #[error("codec library failed: {0}")]
    Library(String),

    // API misuse.
    /// The codec was not compiled in: its cargo feature (`opus`, `h264` or `vpx`) is off
    #[error("{0} support is not compiled in")]
    Unsupported(&'static str),
    /// A configuration value is out of range
    #[error("invalid codec config: {0}")]
    InvalidConfig(String),
    /// Raw input (samples or a frame) does not match the codec's configuration
    #[error("invalid codec input: {0}")]
    InvalidInput(String),
}

/// A video codec
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VideoCodec {
    /// H.264 constrained baseline, Annex-B byte stream
    H264,
    /// VP8
    Vp8,
    /// VP9 (profile 0)
    Vp9,
}

impl VideoCodec {
    /// All codecs, in the default preference order (H.264, then VP8, then VP9)
    pub const ALL: [Self; 3] = [Self::H264, Self::Vp8, Self::Vp9];

    /// Whether this codec was compiled in (its cargo feature is on)
    pub const fn is_supported(self) -> bool {
        match self {
            Self::H264 => cfg!(feature = "h264"),
            Self::Vp8 | Self::Vp9 => cfg!(feature = "vpx"),
        }
    }

    /// Lowercase name, as used in feature names and messages (`"h264"`, `"vp8"`, `"vp9"`)
    pub const fn name(self) -> &'static str {
        match self {
            Self::H264 => "h264",
            Self::Vp8 => "vp8",
            Self::Vp9 => "vp9",
        }
    }
}

/// A raw picture in I420 (YUV 4:2:0, 8 bit), planes tightly packed
///
/// `y` holds `width * height` bytes; `u` and `v` hold `chroma_width() * chroma_height()`
/// bytes each, where chroma dimensions round up. Encoders take even dimensions only.
#[derive(Clone, PartialEq, Eq)]
pub struct I420Frame {
    /// Width in pixels
    pub width: u32,
    /// Height in pixels
    pub height: u32,
    /// Luma plane, `width * height` bytes, row by row
    pub y: Vec<u8>,
    /// Cb plane, `chroma_width() * chroma_height()` bytes
    pub u: Vec<u8>,
    /// Cr plane, `chroma_width() * chroma_height()` bytes
    pub v: Vec<u8>,
}

impl I420Frame {
    /// A black frame of the given size
    pub fn black(width: u32, height: u32) -> Self {
        let luma = width as usize * height as usize;
        let chroma = width.div_ceil(2) as usize * height.div_ceil(2) as usize;
        Self {
            width,
            height,
            y: vec![16; luma],
            u: vec![128; chroma],
            v: vec![128; chroma],
        }
    }

    /// Width of the chroma planes: `width / 2`, rounded up
    pub const fn chroma_width(&self) -> u32 {
        self.width.div_ceil(2)
    }

    /// Height of the chroma planes: `height / 2`, rounded up
    pub const fn chroma_height(&self) -> u32 {
        self.height.div_ceil(2)
    }

    /// Checks that the plane lengths match the dimensions
    pub fn check(&self) -> Result<(), CodecError> {
        let luma = self.width as usize * self.height as usize;
        let chroma = self.chroma_width() as usize * self.chroma_height() as usize;
        if self.y.len() != luma || self.u.len() != chroma || self.v.len() != chroma {
            return Err(CodecError::InvalidInput(format!(
                "{}x{} frame needs planes of {luma}/{chroma}/{chroma} bytes, got {}/{}/{}",
                self.width,
                self.height,
                self.y.len(),
                self.u.len(),
                self.v.len()
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for I420Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The planes are megabytes of pixels; print the shape only.
        f.debug_struct("I420Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("y", &self.y.len())
            .field("u", &self.u.len())
            .field("v", &self.v.len())
            .finish()
    }
}

/// Configuration of a video encoder
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoEncoderConfig {
    /// The codec
    pub codec: VideoCodec,
    /// Frame width in pixels; even, at most 4096
    pub width: u32,
    /// Frame height in pixels; even, at most 4096
    pub height: u32,
    /// Nominal frame rate, 1..=120; frames may still arrive at any pace (see `pts`)
    pub fps: u32,
    /// Target bitrate in bit/s, 50 kbit/s..=50 Mbit/s (500 kbit/s..5 Mbit/s is the useful range)
    pub bitrate_bps: u32,
    /// Time between periodic keyframes, measured on the frames' presentation times
    pub keyframe_interval: Duration,
    /// Temporal layers, 1..=3 (more than 1: VP8 only). With 2, every other frame is in
    /// layer 0 and decodes without the others (half the frame rate, about 60 % of the bits);
    /// with 3, every fourth frame (a quarter of the rate, about 40 % of the bits) is. See
    /// [`EncodedVideo::temporal_id`].
    pub temporal_layers: u8,
}

impl VideoEncoderConfig {
    /// A config for `codec` at `width` x `height`, 30 fps, 1 Mbit/s, a keyframe every 2 s
    pub const fn new(codec: VideoCodec, width: u32, height: u32) -> Self {
        Self {
            codec,
            width,
            height,
            fps: 30,
            bitrate_bps: 1_000_000,
            keyframe_interval: Duration::from_secs(2),
            temporal_layers: 1,
        }
    }

    fn check(&self) -> Result<(), CodecError> {
        check_size(self.width, self.height)?;
        check_rates(self.bitrate_bps, self.fps)?;
        if self.keyframe_interval.is_zero() {
            return Err(CodecError::InvalidConfig(
                "keyframe interval is zero".into(),
            ));
        }
        match (self.temporal_layers, self.codec) {
            (1, _) | (2 | 3, VideoCodec::Vp8) => Ok(()),
            (n, codec) => Err(CodecError::InvalidConfig(format!(
                "{n} temporal layers with {}",
                codec.name()
            ))),
        }
    }

    /// Nominal time between frames
    fn frame_period(&self) -> Duration {
        Duration::from_secs(1) / self.fps
    }

    #[cfg_attr(
        not(any(feature = "h264", feature = "vpx")),
        allow(dead_code, reason = "used by the video encoders only")
    )]
    fn check_frame(&self, frame: &I420Frame) -> Result<(), CodecError> {
        if frame.width != self.width || frame.height != self.height {
            return Err(CodecError::InvalidInput(format!(
                "frame is {}x{}, encoder is configured for {}x{}",
                frame.width, frame.height, self.width, self.height
            )));
        }
        frame.check()
    }
}

/// Checks an encoder frame size: even, non-zero, at most 4096
fn check_size(width: u32, height: u32) -> Result<(), CodecError> {
    if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(CodecError::InvalidConfig(format!(
            "frame size {width}x{height} is not even and non-zero"
        )));
    }
    if width > 4096 || height > 4096 {
        return Err(CodecError::InvalidConfig(format!(
            "frame size {width}x{height} is above 4096"
        )));
    }
    Ok(())
}

/// Checks an encoder's bitrate (50 kbit/s..=50 Mbit/s) and frame rate (1..=120)
fn check_rates(bitrate_bps: u32, fps: u32) -> Result<(), CodecError> {
    if !(1..=120).contains(&fps) {
        return Err(CodecError::InvalidConfig(format!(
            "fps {fps} is not in 1..=120"
        )));
    }
    if !(50_000..=50_000_000).contains(&bitrate_bps) {
        return Err(CodecError::InvalidConfig(format!(
            "bitrate {bitrate_bps} bit/s is not in 50k..=50M"
        )));
    }
    Ok(())
}

/// One encoded video frame
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedVideo {
    /// The frame: Annex-B NAL units for H.264, one (super)frame for VP8/VP9
    pub data: Bytes,
    /// Whether this is a keyframe (an IDR for H.264), decodable without earlier frames
    pub keyframe: bool,
    /// Temporal layer (0 without temporal layers): frames of layer `n` reference only
    /// frames of layers `0..=n`, so a receiver given only the frames up to some layer
    /// decodes them all
    pub temporal_id: u8,
}

/// A video encoder; see [`video_encoder`]
///
/// Keyframes come with the first frame, whenever `keyframe_interval` has passed on the
/// frames' `pts` since the last one, and on the frame after [`request_keyframe`].
///
/// [`request_keyframe`]: VideoEncoder::request_keyframe
pub trait VideoEncoder: Send {
    /// Encodes one frame presented at `pts`
    ///
    /// `frame` must have the configured size ([`CodecError::InvalidInput`] otherwise). `pts`
    /// is the capture time relative to any fixed origin and should increase. Returns `None`
    /// when the encoder produced nothing for this frame: H.264 may skip a frame to hold the
    /// bitrate; VP8/VP9 never drop.
    fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
    ) -> Result<Option<EncodedVideo>, CodecError>;

    /// Makes the next encoded frame a keyframe, e.g. on a PLI or FIR
    ///
    /// Level triggered: the request stays pending until a keyframe is produced.
    fn request_keyframe(&mut self);

    /// The current configuration: as created, with the changes made since
    fn config(&self) -> &VideoEncoderConfig;

    /// Changes the target bitrate and the nominal frame rate, from the next frame on
    ///
    /// In place, without a keyframe: libvpx through `vpx_codec_enc_config_set`, OpenH264
    /// through `SetOption`. Ranges as in [`VideoEncoderConfig`]; [`CodecError::InvalidConfig`]
    /// otherwise, and the encoder keeps its old rates.
    fn set_rates(&mut self, bitrate_bps: u32, fps: u32) -> Result<(), CodecError>;

    /// Changes the frame size; the next frame must have the new size and is a keyframe
    ///
    /// In place where the library allows it (libvpx, when not growing past the size the
    /// encoder was created with for VP8), otherwise the encoder is created afresh with the
    /// current settings. Sizes as in [`VideoEncoderConfig`].
    fn set_size(&mut self, width: u32, height: u32) -> Result<(), CodecError>;
}

/// A video decoder; see [`video_decoder`]
pub trait VideoDecoder: Send {
    /// Decodes one encoded frame, as produced by the matching [`VideoEncoder`]
    ///
    /// H.264 input is one access unit in Annex-B form (parameter sets may ride along).
    /// Returns `Ok(None)` when the input completed no picture (e.g. parameter sets only) and
    /// [`CodecError::Decode`] for malformed or undecodable input, after which the caller
    /// should ask the sender for a keyframe. Never panics on any input.
    fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError>;
}

/// Creates an encoder for `cfg.codec`
///
/// Fails with [`CodecError::InvalidConfig`] for out-of-range settings and
/// [`CodecError::Unsupported`] when the codec's feature is off.
pub fn video_encoder(cfg: VideoEncoderConfig) -> Result<Box<dyn VideoEncoder>, CodecError> {
    cfg.check()?;
    match cfg.codec {
        #[cfg(feature = "h264")]
        VideoCodec::H264 => Ok(Box::new(h264::Encoder::new(cfg)?)),
        #[cfg(feature = "vpx")]
        VideoCodec::Vp8 | VideoCodec::Vp9 => Ok(Box::new(vpx::Encoder::new(cfg)?)),
        #[allow(unreachable_patterns, reason = "reached when a codec feature is off")]
        codec => Err(CodecError::Unsupported(codec.name())),
    }
}

/// Creates a decoder for `codec`
///
/// Fails with [`CodecError::Unsupported`] when the codec's feature is off.
pub fn video_decoder(codec: VideoCodec) -> Result<Box<dyn VideoDecoder>, CodecError> {
    match codec {
        #[cfg(feature = "h264")]
        VideoCodec::H264 => Ok(Box::new(h264::Decoder::new()?)),
        #[cfg(feature = "vpx")]
        VideoCodec::Vp8 | VideoCodec::Vp9 => Ok(Box::new(vpx::Decoder::new(codec)?)),
        #[allow(unreachable_patterns, reason = "reached when a codec feature is off")]
        codec => Err(CodecError::Unsupported(codec.name())),
    }
}

/// When to force keyframes, shared by all video encoders
///
/// Works on the frames' `pts`, so it holds at any frame rate. A keyframe is due on the first
/// frame, after a request, when `interval` (less half a frame period, so that a 2 s interval
/// at 30 fps lands on frame 60 despite rounding) has passed since the last keyframe, or when
/// `pts` went backwards.
#[cfg_attr(
    not(any(feature = "h264", feature = "vpx")),
    allow(dead_code, reason = "used by the video encoders only")
)]
#[derive(Debug)]
struct KeyframeSchedule {
    interval: Duration,
    slack: Duration,
    last: Option<Duration>,
    requested: bool,
}

#[cfg_attr(
    not(any(feature = "h264", feature = "vpx")),
    allow(dead_code, reason = "used by the video encoders only")
)]
impl KeyframeSchedule {
    fn new(cfg: &VideoEncoderConfig) -> Self {
        Self {
            interval: cfg.keyframe_interval,
            slack: cfg.frame_period() / 2,
            last: None,
            requested: false,
        }
    }

    fn request(&mut self) {
        self.requested = true;
    }

    /// Follows a change of the nominal frame rate
    fn set_fps(&mut self, fps: u32) {
        self.slack = Duration::from_secs(1) / fps.max(1) / 2;
    }

    fn is_due(&self, pts: Duration) -> bool {
        let Some(last) = self.last else {
            return true;
        };
        // A pts before the last keyframe means the sender's clock restarted: start afresh.
        match pts.checked_sub(last) {
            None => true,
            Some(since) => self.requested || since + self.slack >= self.interval,
        }
    }

    /// Records an encoder output; only a produced keyframe clears a pending request
    fn handle_output(&mut self, pts: Duration, keyframe: bool) {
        if keyframe {
            self.last = Some(pts);
            self.requested = false;
        }
    }
}

#[cfg(test)]
mod tests;
