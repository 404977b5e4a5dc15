//! Synthetic "codecs" for simulations: frames of realistic size and timing, no signal
//!
//! Encoding and decoding real audio and video is most of the cost of a simulated call, and
//! none of what the simulator measures (delay, loss, concealment, lip-sync, keyframe
//! recovery) needs the pixels or samples. These encoders write frames of the size the real
//! codec would at the configured bitrate — an Opus frame of `bitrate · frame` bytes; video
//! frames averaging `bitrate / fps`, keyframes [`KEYFRAME_RATIO`] times a delta frame — made of
//! a header that the decoders check (kind, sequence number, length, the frame's duration or
//! picture size, its capture time) and filler. The decoders give silence of the frame's
//! duration, or a 2×2 black picture; a delta frame that does not follow the last decoded
//! frame fails to decode (its reference is missing), as a real decoder's would, so keyframe
//! requests and recovery run as with real video.
//!
//! On the wire they travel as Opus and VP8 (payload types both ends negotiated; a synthetic
//! video frame's first byte has VP8's keyframe bit, so str0m's VP8 packetizer and keyframe
//! detection work unchanged). Both ends of a call must use them
//! ([`crate::media::MediaConfig::synthetic`]): a real decoder would reject the frames.

use std::time::Duration;

use bytes::Bytes;

use super::{
    CodecError, EncodedVideo, I420Frame, KeyframeSchedule, VideoDecoder, VideoEncoder,
    VideoEncoderConfig,
};

/// Bytes of the header every synthetic frame starts with
pub const HEADER_BYTES: usize = 28;

/// A keyframe is this many times the size of a delta frame
pub const KEYFRAME_RATIO: u32 = 6;

const MAGIC: &[u8; 3] = b"SYN";
const AUDIO: u8 = b'A';
const VIDEO: u8 = b'V';
/// Bit 0 of the first byte: set on delta frames (VP8's "P" bit: 0 on keyframes)
const DELTA: u8 = 0x01;

/// What a synthetic frame's header says
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticHeader {
    /// `true` for a video frame, `false` for audio
    pub video: bool,
    /// A video keyframe (audio frames are all "key")
    pub keyframe: bool,
    /// Frames encoded before this one by the same encoder
    pub sequence: u32,
    /// Audio: samples per channel; video: width
    pub a: u16,
    /// Audio: channels; video: height
    pub b: u16,
    /// The frame's capture time as the encoder saw it, microseconds
    pub capture_us: u64,
}

impl SyntheticHeader {
    /// Writes the header and `len - HEADER_BYTES` bytes of filler
    fn write(&self, len: usize) -> Bytes {
        let len = len.max(HEADER_BYTES);
        let mut out = Vec::with_capacity(len);
        out.push(if self.keyframe { 0 } else { DELTA });
        out.extend_from_slice(MAGIC);
        out.push(if self.video { VIDEO } else { AUDIO });
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.a.to_le_bytes());
        out.extend_from_slice(&self.b.to_le_bytes());
        out.extend_from_slice(&self.capture_us.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_BYTES);
        out.resize(len, self.sequence as u8);
        Bytes::from(out)
    }

    /// Reads and checks a frame's header; the error says what is wrong
    pub fn read(frame: &[u8]) -> Result<Self, CodecError> {
        let bad = |what: &str| Err(CodecError::Decode(format!("synthetic frame: {what}")));
        if frame.len() < HEADER_BYTES {
            return bad(&format!("{} bytes, shorter than its header", frame.len()));
        }
        if &frame[1..4] != MAGIC || frame[0] & !DELTA != 0 || frame[5..8] != [0; 3] {
            return bad("no synthetic header");
        }
        let video = match frame[4] {
            AUDIO => false,
            VIDEO => true,
            _ => return bad("unknown kind"),
        };
        let u32_at = |i: usize| u32::from_le_bytes(frame[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(frame[i..i + 2].try_into().expect("2 bytes"));
        if u32_at(12) as usize != frame.len() {
            return bad(&format!(
                "{} bytes where the header says {}",
                frame.len(),
                u32_at(12)
            ));
        }
        Ok(Self {
            video,
            keyframe: frame[0] & DELTA == 0,
            sequence: u32_at(8),
            a: u16_at(16),
            b: u16_at(18),
            capture_us: u64::from_le_bytes(frame[20..28].try_into().expect("8 bytes")),
        })
    }
}

/// Stands in for an Opus encoder: one frame of `bitrate · frame duration` bytes per call
#[derive(Debug)]
pub struct SyntheticAudioEncoder {
    frame_samples: usize,
    channels: u16,
    bytes: usize,
    sequence: u32,
}

impl SyntheticAudioEncoder {
    /// Frames of `frame_ms` (10, 20, 40 or 60) and `channels` at `bitrate_bps`
    pub fn new(frame_ms: u32, channels: u16, bitrate_bps: u32) -> Result<Self, CodecError> {
        if !matches!(frame_ms, 10 | 20 | 40 | 60) || !matches!(channels, 1 | 2) {
            return Err(CodecError::InvalidConfig(format!(
                "synthetic audio of {frame_ms} ms x {channels} channels"
            )));
        }
        let bytes = (u64::from(bitrate_bps) * u64::from(frame_ms) / 8000) as usize;
        Ok(Self {
            frame_samples: 48 * frame_ms as usize,
            channels,
            bytes: bytes.max(HEADER_BYTES),
            sequence: 0,
        })
    }

    /// Samples per channel in one frame
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// "Encodes" one frame of interleaved PCM (only its length is checked)
    pub fn encode(&mut self, pcm: &[i16], capture: Duration) -> Result<Bytes, CodecError> {
        let want = self.frame_samples * usize::from(self.channels);
        if pcm.len() != want {
            return Err(CodecError::InvalidInput(format!(
                "audio frame needs {want} samples, got {}",
                pcm.len()
            )));
        }
        let header = SyntheticHeader {
            video: false,
            keyframe: true,
            sequence: self.sequence,
            a: self.frame_samples as u16,
            b: self.channels,
            capture_us: capture.as_micros() as u64,
        };
        self.sequence = self.sequence.wrapping_add(1);
        Ok(header.write(self.bytes))
    }
}

/// Stands in for an Opus decoder: checks frames and gives silence of their duration
#[derive(Debug)]
pub struct SyntheticAudioDecoder {
    channels: u16,
}

impl SyntheticAudioDecoder {
    /// A decoder producing `channels` (1 or 2)
    pub fn new(channels: u16) -> Self {
        Self {
            channels: channels.clamp(1, 2),
        }
    }

    /// Channels of the decoded audio
    pub fn channels(&self) -> usize {
        usize::from(self.channels)
    }

    /// Checks one frame; returns silence of its duration, interleaved
    pub fn decode(&mut self, frame: &[u8]) -> Result<Vec<i16>, CodecError> {
        let h = SyntheticHeader::read(frame)?;
        if h.video || !matches!(h.a, 480 | 960 | 1920 | 2880) {
            return Err(CodecError::Decode(
                "synthetic frame: not an audio frame".into(),
            ));
        }
        Ok(vec![0; usize::from(h.a) * usize::from(self.channels)])
    }
}

/// Stands in for a video encoder: frame sizes follow the bitrate and frame rate, keyframes
/// as a real encoder places them ([`VideoEncoder`])
pub struct SyntheticVideoEncoder {
    cfg: VideoEncoderConfig,
    keyframes: KeyframeSchedule,
    sequence: u32,
    /// Bytes of a delta frame and of a keyframe
    delta_bytes: usize,
    key_bytes: usize,
}

/// A boxed [`SyntheticVideoEncoder`] for `cfg` (a [`MakeEncoder`](super::MakeEncoder))
pub fn video_encoder(cfg: VideoEncoderConfig) -> Result<Box<dyn VideoEncoder>, CodecError> {
    Ok(Box::new(SyntheticVideoEncoder::new(cfg)?))
}

impl SyntheticVideoEncoder {
    /// An encoder for `cfg` (its codec is what goes on the wire)
    pub fn new(cfg: VideoEncoderConfig) -> Result<Self, CodecError> {
        cfg.check()?;
        let mut enc = Self {
            keyframes: KeyframeSchedule::new(&cfg),
            cfg,
            sequence: 0,
            delta_bytes: 0,
            key_bytes: 0,
        };
        enc.size_frames();
        Ok(enc)
    }

    /// Frame sizes from the bitrate and frame rate
    fn size_frames(&mut self) {
        let cfg = &self.cfg;
        // A keyframe interval of n frames holds one keyframe (KEYFRAME_RATIO deltas' worth)
        // and n - 1 deltas, and carries bitrate · interval.
        let n = (cfg.keyframe_interval.as_secs_f64() * f64::from(cfg.fps))
            .round()
            .max(1.0);
        let interval_bytes = f64::from(cfg.bitrate_bps) / 8.0 / f64::from(cfg.fps) * n;
        let delta = (interval_bytes / (n - 1.0 + f64::from(KEYFRAME_RATIO))) as usize;
        self.delta_bytes = delta.max(HEADER_BYTES);
        self.key_bytes = (delta * KEYFRAME_RATIO as usize).max(HEADER_BYTES);
    }
}

impl VideoEncoder for SyntheticVideoEncoder {
    fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
    ) -> Result<Option<EncodedVideo>, CodecError> {
        self.cfg.check_frame(frame)?;
        let keyframe = self.keyframes.is_due(pts);
        self.keyframes.handle_output(pts, keyframe);
        let header = SyntheticHeader {
            video: true,
            keyframe,
            sequence: self.sequence,
            a: frame.width as u16,
            b: frame.height as u16,
            capture_us: pts.as_micros() as u64,
        };
        // Real frame sizes vary around the rate controller's aim: ±12%, fixed per frame.
        let spread = (u64::from(self.sequence).wrapping_mul(0x9E37_79B9) >> 7) % 25;
        let base = if keyframe {
            self.key_bytes
        } else {
            self.delta_bytes
        };
        let len = base * (88 + spread as usize) / 100;
        self.sequence = self.sequence.wrapping_add(1);
        Ok(Some(EncodedVideo {
            data: header.write(len),
            keyframe,
            temporal_id: 0,
        }))
    }

    fn request_keyframe(&mut self) {
        self.keyframes.request();
    }

    fn config(&self) -> &VideoEncoderConfig {
        &self.cfg
    }

    fn set_rates(&mut self, bitrate_bps: u32, fps: u32) -> Result<(), CodecError> {
        let cfg = VideoEncoderConfig {
            bitrate_bps,
            fps,
            ..self.cfg
        };
        cfg.check()?;
        self.cfg = cfg;
        self.size_frames();
        Ok(())
    }

    fn set_size(&mut self, width: u32, height: u32) -> Result<(), CodecError> {
        let cfg = VideoEncoderConfig {
            width,
            height,
            ..self.cfg
        };
        cfg.check()?;
        self.cfg = cfg;
        self.keyframes.request();
        Ok(())
    }
}

/// Stands in for a video decoder: checks frames and their reference chain, gives a 2×2 black
/// picture
#[derive(Debug, Default)]
pub struct SyntheticVideoDecoder {
    last: Option<u32>,
}

impl SyntheticVideoDecoder {
    /// A decoder waiting for a keyframe
    pub fn new() -> Self {
        Self::default()
    }
}

impl VideoDecoder for SyntheticVideoDecoder {
    fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError> {
        let h = SyntheticHeader::read(data)?;
        if !h.video {
            return Err(CodecError::Decode(
                "synthetic frame: not a video frame".into(),
            ));
        }
        if !h.keyframe && self.last.is_none_or(|l| l.wrapping_add(1) != h.sequence) {
            // The frame it references was never decoded.
            self.last = None;
            return Err(CodecError::Decode(format!(
                "synthetic frame {}: its reference is missing",
                h.sequence
            )));
        }
        self.last = Some(h.sequence);
        Ok(Some(I420Frame::black(2, 2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::VideoCodec;

    #[test]
    fn audio_frames_have_the_bitrates_size_and_decode_to_their_duration() {
        let mut enc = SyntheticAudioEncoder::new(20, 1, 32_000).unwrap();
        let f = enc.encode(&[0; 960], Duration::from_millis(40)).unwrap();
        assert_eq!(f.len(), 80);
        let h = SyntheticHeader::read(&f).unwrap();
        assert_eq!(
            (h.video, h.sequence, h.a, h.b, h.capture_us),
            (false, 0, 960, 1, 40_000)
        );
        let mut dec = SyntheticAudioDecoder::new(2);
        assert_eq!(dec.decode(&f).unwrap().len(), 1920);
        // Truncated, or not synthetic at all: a decode error, never a panic.
        assert!(dec.decode(&f[..60]).is_err());
        assert!(dec.decode(&[0xfc, 0xff, 0xfe]).is_err());
        assert!(enc.encode(&[0; 100], Duration::ZERO).is_err());
    }

    #[test]
    fn video_frames_follow_the_bitrate_with_larger_keyframes() {
        let mut cfg = VideoEncoderConfig::new(VideoCodec::Vp8, 320, 240);
        cfg.fps = 30;
        cfg.bitrate_bps = 300_000;
        let mut enc = SyntheticVideoEncoder::new(cfg).unwrap();
        let frame = I420Frame::black(320, 240);
        let mut total = 0;
        let mut keys = Vec::new();
        let mut deltas = Vec::new();
        for i in 0..300u64 {
            let e = enc
                .encode(&frame, Duration::from_micros(i * 1_000_000 / 30))
                .unwrap()
                .unwrap();
            total += e.data.len();
            // VP8's keyframe bit is where str0m and our receive path look for it.
            assert_eq!(e.data[0] & 1 == 0, e.keyframe);
            if e.keyframe {
                keys.push(e.data.len());
            } else {
                deltas.push(e.data.len());
            }
        }
        // A keyframe every 2 s: frames 0, 60, 120, ...; 10 s carry 300 kbit/s, within 5%.
        assert_eq!(keys.len(), 5);
        let rate = total as f64 * 8.0 / 10.0;
        assert!((rate - 300_000.0).abs() < 15_000.0, "{rate}");
        let mean_delta = deltas.iter().sum::<usize>() as f64 / deltas.len() as f64;
        assert!(keys.iter().all(|&k| k as f64 > 4.0 * mean_delta));
    }

    #[test]
    fn a_delta_frame_without_its_reference_does_not_decode() {
        let cfg = VideoEncoderConfig::new(VideoCodec::Vp8, 64, 48);
        let mut enc = SyntheticVideoEncoder::new(cfg).unwrap();
        let frame = I420Frame::black(64, 48);
        let frames: Vec<Bytes> = (0..4u64)
            .map(|i| {
                enc.encode(&frame, Duration::from_millis(i * 33))
                    .unwrap()
                    .unwrap()
                    .data
            })
            .collect();
        let mut dec = SyntheticVideoDecoder::new();
        // No keyframe yet: the first delta fails.
        assert!(dec.decode(&frames[1]).is_err());
        dec.decode(&frames[0]).unwrap().unwrap();
        dec.decode(&frames[1]).unwrap().unwrap();
        // Frame 2 lost: frame 3 cannot decode, until a keyframe comes.
        assert!(dec.decode(&frames[3]).is_err());
        enc.request_keyframe();
        let key = enc
            .encode(&frame, Duration::from_millis(200))
            .unwrap()
            .unwrap();
        assert!(key.keyframe);
        dec.decode(&key.data).unwrap().unwrap();
    }
}
