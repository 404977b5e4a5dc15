//! H.264 constrained baseline through OpenH264 (built from source by the `openh264` crate)

// reason: run-time bitrate and frame-rate changes need OpenH264's SetOption, which the
// `openh264` crate exposes only as its raw API. The two unsafe blocks are in
// Encoder::set_option and Encoder::set_rates, each with its SAFETY argument.
#![allow(unsafe_code)]

use std::time::Duration;

use bytes::Bytes;
use openh264::decoder::{Decoder as OhDecoder, DecoderConfig};
use openh264::encoder::{
    BitRate, Complexity, Encoder as OhEncoder, EncoderConfig, FrameRate, FrameType,
    IntraFramePeriod, Profile, RateControlMode, UsageType,
};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::{OpenH264API, Timestamp};
use openh264_sys2 as sys;

use super::{
    check_decode_size, check_rates, check_size, headers, CodecError, EncodedVideo, I420Frame,
    KeyframeSchedule, VideoCodec, VideoDecoder, VideoEncoder, VideoEncoderConfig,
    MAX_DECODE_PIXELS,
};

/// H.264 encoder: constrained baseline, one slice per frame, Annex-B output
///
/// Baseline in OpenH264 means CAVLC, no B-frames and no interlacing, which is what browsers
/// negotiate as constrained baseline (`profile-level-id=42e0xx`). SPS and PPS precede every
/// IDR. Keyframes come from [`KeyframeSchedule`]; OpenH264's own intra period is off.
///
/// Bitrate and frame rate change in place through OpenH264's `SetOption`; a size change
/// creates the encoder afresh (the `openh264` crate would otherwise re-initialise it with the
/// bitrate it was created with), and starts with the IDR a size change needs anyway.
pub(super) struct Encoder {
    inner: OhEncoder,
    cfg: VideoEncoderConfig,
    keyframes: KeyframeSchedule,
    /// Whether `inner` has encoded a frame: the crate initialises OpenH264 on the first
    /// frame, and OpenH264 takes options only after that
    initialised: bool,
}

/// Creates an OpenH264 encoder for `cfg` (initialised lazily, on its first frame)
fn create(cfg: &VideoEncoderConfig) -> Result<OhEncoder, CodecError> {
    let oh = EncoderConfig::new()
        .usage_type(UsageType::CameraVideoRealTime)
        .profile(Profile::Baseline)
        .rate_control_mode(RateControlMode::Bitrate)
        .bitrate(BitRate::from_bps(cfg.bitrate_bps))
        .max_frame_rate(FrameRate::from_hz(cfg.fps as f32))
        // OpenH264 holds the bitrate only if it may skip frames (it warns otherwise);
        // libwebrtc enables this too. A skipped frame encodes to `None`.
        .skip_frames(true)
        .complexity(Complexity::Low)
        // Single slice, so threads would not help; one encode serves every peer anyway.
        .num_threads(1)
        // Periodic IDRs are ours to place (KeyframeSchedule), on pts rather than frame count.
        .intra_frame_period(IntraFramePeriod::from_num_frames(0));
    OhEncoder::with_api_config(OpenH264API::from_source(), oh)
        .map_err(|e| CodecError::Library(format!("openh264 encoder: {e}")))
}

impl Encoder {
    pub(super) fn new(cfg: VideoEncoderConfig) -> Result<Self, CodecError> {
        Ok(Self {
            inner: create(&cfg)?,
            keyframes: KeyframeSchedule::new(&cfg),
            cfg,
            initialised: false,
        })
    }

    /// Sets an OpenH264 option on the initialised encoder
    ///
    /// # Safety
    ///
    /// `value` must be the type OpenH264 expects for `option`.
    unsafe fn set_option<T>(
        &mut self,
        option: sys::ENCODER_OPTION,
        value: &mut T,
    ) -> Result<(), CodecError> {
        // SAFETY: the encoder is initialised (callers check `initialised`), and the caller
        // guarantees `value`'s type; OpenH264 reads it during the call only. The options set
        // here (bitrates, frame rate) are ones the crate does not rely on: it re-reads its
        // own config only when re-initialising on a size change, which we never let it do.
        let rc = unsafe {
            self.inner
                .raw_api()
                .set_option(option, std::ptr::from_mut(value).cast())
        };
        if rc != 0 {
            return Err(CodecError::Library(format!(
                "openh264 SetOption({option}) failed: {rc}"
            )));
        }
        Ok(())
    }
}

impl VideoEncoder for Encoder {
    fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
    ) -> Result<Option<EncodedVideo>, CodecError> {
        self.cfg.check_frame(frame)?;
        if self.keyframes.is_due(pts) {
            self.inner.force_intra_frame();
        }
        let (w, h) = (frame.width as usize, frame.height as usize);
        // check_frame guarantees even dimensions and exact plane sizes, which YUVSlices asserts.
        let source = YUVSlices::new((&frame.y, &frame.u, &frame.v), (w, h), (w, w / 2, w / 2));
        let millis = u64::try_from(pts.as_millis()).unwrap_or(u64::MAX);
        let stream = self
            .inner
            .encode_at(&source, Timestamp::from_millis(millis))
            .map_err(|e| CodecError::Library(format!("openh264 encode: {e}")))?;
        self.initialised = true;
        let keyframe = match stream.frame_type() {
            FrameType::IDR => true,
            FrameType::I | FrameType::P | FrameType::IPMixed => false,
            FrameType::Skip | FrameType::Invalid => return Ok(None),
        };
        let mut len = 0;
        for layer in (0..stream.num_layers()).filter_map(|l| stream.layer(l)) {
            len += (0..layer.nal_count())
                .filter_map(|n| layer.nal_unit(n).map(<[u8]>::len))
                .sum::<usize>();
        }
        let mut data = Vec::with_capacity(len);
        stream.write_vec(&mut data);
        if data.is_empty() {
            return Ok(None);
        }
        self.keyframes.handle_output(pts, keyframe);
        Ok(Some(EncodedVideo {
            data: Bytes::from(data),
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
        check_rates(bitrate_bps, fps)?;
        let mut cfg = self.cfg;
        cfg.bitrate_bps = bitrate_bps;
        cfg.fps = fps;
        if self.initialised {
            // Range-checked above, so the casts are lossless.
            let rate = |layer| sys::SBitrateInfo {
                iLayer: layer,
                iBitrate: bitrate_bps as i32,
            };
            let mut fps_f = fps as f32;
            // SAFETY: ENCODER_OPTION_{MAX_,}BITRATE take an SBitrateInfo and
            // ENCODER_OPTION_FRAME_RATE a float. OpenH264 refuses a layer maximum below the
            // layer's target, so a raise lifts the maximums (the layer's and the total) to
            // the new target first; a cut lowers only the target, as libwebrtc does.
            unsafe {
                if bitrate_bps > self.cfg.bitrate_bps {
                    self.set_option(
                        sys::ENCODER_OPTION_MAX_BITRATE,
                        &mut rate(sys::SPATIAL_LAYER_0),
                    )?;
                    self.set_option(
                        sys::ENCODER_OPTION_MAX_BITRATE,
                        &mut rate(sys::SPATIAL_LAYER_ALL),
                    )?;
                }
                self.set_option(
                    sys::ENCODER_OPTION_BITRATE,
                    &mut rate(sys::SPATIAL_LAYER_ALL),
                )?;
                self.set_option(sys::ENCODER_OPTION_FRAME_RATE, &mut fps_f)?;
            }
        } else {
            // Nothing encoded yet: the new encoder starts with the new rates.
            self.inner = create(&cfg)?;
        }
        self.cfg = cfg;
        self.keyframes.set_fps(fps);
        Ok(())
    }

    fn set_size(&mut self, width: u32, height: u32) -> Result<(), CodecError> {
        check_size(width, height)?;
        if (width, height) == (self.cfg.width, self.cfg.height) {
            return Ok(());
        }
        let mut cfg = self.cfg;
        cfg.width = width;
        cfg.height = height;
        self.inner = create(&cfg)?;
        self.initialised = false;
        self.cfg = cfg;
        // A fresh encoder starts with an IDR anyway; record it as requested so that the
        // schedule counts the interval from there.
        self.keyframes.request();
        Ok(())
    }
}

/// H.264 decoder taking one Annex-B access unit per call
pub(super) struct Decoder {
    inner: OhDecoder,
}

impl Decoder {
    pub(super) fn new() -> Result<Self, CodecError> {
        let inner = OhDecoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())
            .map_err(|e| CodecError::Library(format!("openh264 decoder: {e}")))?;
        Ok(Self { inner })
    }
}

impl VideoDecoder for Decoder {
    fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError> {
        if data.is_empty() || i32::try_from(data.len()).is_err() {
            return Err(CodecError::Decode(format!(
                "h264 access unit of {} bytes",
                data.len()
            )));
        }
        // Sizes first: OpenH264 allocates for whatever an SPS declares.
        for size in headers::h264_sps_sizes(data).map_err(CodecError::Decode)? {
            check_decode_size(VideoCodec::H264, size)?;
        }
        // The whole access unit in one call: OpenH264 splits the NAL units itself, and a
        // picture made of several slices (as browsers send) is only complete at the end.
        let yuv = match self.inner.decode(data) {
            Ok(Some(yuv)) => yuv,
            Ok(None) => return Ok(None),
            Err(e) => return Err(CodecError::Decode(format!("h264: {e}"))),
        };
        let (w, h) = yuv.dimensions();
        let (sy, su, sv) = yuv.strides();
        if w == 0 || h == 0 || (w as u64) * (h as u64) > MAX_DECODE_PIXELS {
            return Err(CodecError::Decode(format!("h264 picture of {w}x{h}")));
        }
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut frame = I420Frame {
            width: w as u32,
            height: h as u32,
            y: Vec::with_capacity(w * h),
            u: Vec::with_capacity(cw * ch),
            v: Vec::with_capacity(cw * ch),
        };
        let planes = [
            (yuv.y(), sy, w, h, &mut frame.y),
            (yuv.u(), su, cw, ch, &mut frame.u),
            (yuv.v(), sv, cw, ch, &mut frame.v),
        ];
        for (src, stride, width, rows, dst) in planes {
            for row in 0..rows {
                let line = src
                    .get(row * stride..row * stride + width)
                    .ok_or_else(|| CodecError::Decode("h264 picture plane too short".into()))?;
                dst.extend_from_slice(line);
            }
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testsrc::TestPattern;

    /// NAL unit types in an Annex-B buffer
    fn nal_types(data: &[u8]) -> Vec<u8> {
        openh264::nal_units(data)
            .filter_map(|nal| {
                let start = nal.iter().position(|&b| b == 1)? + 1;
                nal.get(start).map(|b| b & 0x1f)
            })
            .collect()
    }

    #[test]
    fn keyframes_are_annex_b_with_constrained_baseline_sps() {
        let cfg = VideoEncoderConfig::new(VideoCodec::H264, 320, 180);
        let mut enc = Encoder::new(cfg).unwrap();
        let mut src = TestPattern::new(320, 180);
        let first = enc
            .encode(&src.next_frame(), Duration::ZERO)
            .unwrap()
            .unwrap();
        assert!(first.keyframe);
        assert!(first.data.starts_with(&[0, 0, 0, 1]) || first.data.starts_with(&[0, 0, 1]));
        assert_eq!(nal_types(&first.data), [7, 8, 5], "SPS, PPS, IDR");
        // SPS: profile_idc 66 (baseline) with constraint_set1_flag: constrained baseline.
        let sps = openh264::nal_units(&first.data).next().unwrap();
        let at = sps.iter().position(|&b| b == 1).unwrap() + 2;
        assert_eq!(sps[at], 66, "profile_idc");
        assert_ne!(sps[at + 1] & 0x40, 0, "constraint_set1_flag");

        let next = enc
            .encode(&src.next_frame(), Duration::from_millis(33))
            .unwrap()
            .unwrap();
        assert!(!next.keyframe);
        assert_eq!(nal_types(&next.data), [1], "one non-IDR slice");
    }
}
