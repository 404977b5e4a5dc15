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
//! [`testsrc`] has deterministic test sources (a 440 Hz tone and a moving test pattern) and the
//! quality metrics used by the tests; [`synthetic`] has stand-in codecs for simulations
//! (frames of realistic size and timing carrying only a checked header).

use std::time::Duration;

use bytes::Bytes;

mod audio;
#[cfg(feature = "h264")]
mod h264;
pub mod synthetic;
pub mod testsrc;
#[cfg(feature = "vpx")]
mod vpx;

pub use audio::{AudioFormat, OpusConfig, OpusDecoder, OpusEncoder, PcmFrame};

/// Largest decoded picture the video decoders accept, in pixels (4096 x 4096)
///
/// Bigger pictures give [`CodecError::Decode`]. For VP8/VP9 the check runs on the frame
/// header, before libvpx allocates, so a hostile keyframe cannot make us allocate gigabytes;
/// OpenH264 enforces its own limit (level 5.2) and we check its output.
pub const MAX_DECODE_PIXELS: u64 = 4096 * 4096;

/// Errors from encoders and decoders
///
/// Grouped by who is at fault: the remote peer (malformed input), the local codec library,
/// or the caller (misuse of this API).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
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
        }
    }

    fn check(&self) -> Result<(), CodecError> {
        let bad = |what: String| Err(CodecError::InvalidConfig(what));
        if self.width == 0 || self.height == 0 || self.width % 2 != 0 || self.height % 2 != 0 {
            return bad(format!(
                "frame size {}x{} is not even and non-zero",
                self.width, self.height
            ));
        }
        if self.width > 4096 || self.height > 4096 {
            return bad(format!(
                "frame size {}x{} is above 4096",
                self.width, self.height
            ));
        }
        if !(1..=120).contains(&self.fps) {
            return bad(format!("fps {} is not in 1..=120", self.fps));
        }
        if !(50_000..=50_000_000).contains(&self.bitrate_bps) {
            return bad(format!(
                "bitrate {} bit/s is not in 50k..=50M",
                self.bitrate_bps
            ));
        }
        if self.keyframe_interval.is_zero() {
            return bad("keyframe interval is zero".into());
        }
        Ok(())
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

/// One encoded video frame
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedVideo {
    /// The frame: Annex-B NAL units for H.264, one (super)frame for VP8/VP9
    pub data: Bytes,
    /// Whether this is a keyframe (an IDR for H.264), decodable without earlier frames
    pub keyframe: bool,
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

    /// The configuration this encoder was created with
    fn config(&self) -> &VideoEncoderConfig;
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
