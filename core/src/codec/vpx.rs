//! VP8 and VP9 through the system libvpx (`env-libvpx-sys`)
//!
//! The encoder drives libvpx directly rather than through `vpx-encode`: that crate fixes
//! `cpu-used` (6, VP9 only), eight threads and per-frame flags of 0, so it can neither force a
//! keyframe nor select the real-time settings below.
//!
//! Real-time settings, after libwebrtc's: one pass, CBR, no look-ahead (`lag_in_frames` 0),
//! `VPX_DL_REALTIME`, no frame dropping, keyframes only when we force them. VP8 runs at
//! `cpu-used` -6; VP9 at speed 7 (8 from 720p up) with row multithreading, cyclic-refresh AQ
//! and two tile columns from 1280 pixels wide.

// reason: libvpx is a C library. This module is core's only FFI boundary: all unsafe code
// lives here, each block with its SAFETY argument, behind a safe VideoEncoder/VideoDecoder.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_long, c_uint, c_ulong, CStr};
use std::mem::MaybeUninit;
use std::ptr;
use std::time::Duration;

use bytes::Bytes;
use vpx_sys::vp8e_enc_control_id::{
    VP8E_SET_CPUUSED, VP8E_SET_MAX_INTRA_BITRATE_PCT, VP8E_SET_NOISE_SENSITIVITY,
    VP8E_SET_STATIC_THRESHOLD, VP8E_SET_TEMPORAL_LAYER_ID, VP8E_SET_TOKEN_PARTITIONS,
    VP9E_SET_AQ_MODE, VP9E_SET_NOISE_SENSITIVITY, VP9E_SET_ROW_MT, VP9E_SET_TILE_COLUMNS,
};
use vpx_sys::{
    vpx_codec_control_, vpx_codec_ctx_t, vpx_codec_cx_pkt_kind, vpx_codec_dec_cfg_t,
    vpx_codec_dec_init_ver, vpx_codec_decode, vpx_codec_destroy, vpx_codec_enc_cfg_t,
    vpx_codec_enc_config_default, vpx_codec_enc_config_set, vpx_codec_enc_init_ver,
    vpx_codec_encode, vpx_codec_err_t, vpx_codec_error, vpx_codec_error_detail,
    vpx_codec_get_cx_data, vpx_codec_get_frame, vpx_codec_iface_t, vpx_codec_iter_t,
    vpx_codec_vp8_cx, vpx_codec_vp8_dx, vpx_codec_vp9_cx, vpx_codec_vp9_dx, vpx_enc_pass,
    vpx_image_t, vpx_img_fmt, vpx_img_wrap, vpx_kf_mode, vpx_rc_mode, VP8_EFLAG_NO_REF_ARF,
    VP8_EFLAG_NO_REF_GF, VP8_EFLAG_NO_UPD_ARF, VP8_EFLAG_NO_UPD_ENTROPY, VP8_EFLAG_NO_UPD_GF,
    VP8_EFLAG_NO_UPD_LAST, VPX_DECODER_ABI_VERSION, VPX_DL_REALTIME, VPX_EFLAG_FORCE_KF,
    VPX_ENCODER_ABI_VERSION, VPX_FRAME_IS_KEY,
};

use super::headers::{self, Vp9Refs};
use super::{
    check_decode_size, check_rates, check_size, CodecError, EncodedVideo, I420Frame,
    KeyframeSchedule, VideoCodec, VideoDecoder, VideoEncoder, VideoEncoderConfig,
    MAX_DECODE_PIXELS,
};

/// Timebase of the pts we hand libvpx: the 90 kHz RTP video clock
const TIMEBASE_HZ: u64 = 90_000;

/// Largest keyframe, in percent of the per-frame target: three frames' worth
///
/// libwebrtc's formula (optimal buffer 600 ms × 0.5 × fps / 10) gives 900 % at 30 fps, a
/// 28 kB keyframe at 640x360 and 1.2 Mbit/s. str0m's pacer lets 40 ms of its rate out at
/// once, so such a keyframe reaches the path in bursts of about 10 kB; on the capacity step
/// of the simulator the periodic keyframes and the one of a step up in size set off
/// str0m's overuse detection, and its estimate fell to 0.85 of what was acknowledged (2.8
/// → 0.24 Mbit/s seen) just after the path had come back. At 300 % (libwebrtc's least)
/// the keyframe is 16 kB and 5 dB worse than the frames around it, whose mean PSNR moves
/// by 0.2 dB (`codec_bench keyframes`); the capacity step recovers
/// to 70 % of its rate in 33 of 48 directions instead of 23 (`docs/rate/README.md`).
const MAX_INTRA_PCT: c_int = 300;

/// A libvpx codec context, destroyed on drop
///
/// Boxed so it never moves after init: libvpx's API expects a context to stay where it was
/// initialised.
/// Only ever holds an initialised context (construction goes through [`Context::init`]).
struct Context(Box<vpx_codec_ctx_t>);

impl Context {
    /// Initialises a context with `init`, which gets a zeroed context to fill in
    fn init(
        what: &str,
        init: impl FnOnce(*mut vpx_codec_ctx_t) -> vpx_codec_err_t,
    ) -> Result<Self, CodecError> {
        // SAFETY: vpx_codec_ctx_t is a C struct of pointers, integers, a union of pointers
        // and a codec error enum whose 0 is VPX_CODEC_OK, so all-zero bytes are a valid value
        // (and the state libvpx expects before init).
        let mut ctx = Box::new(unsafe { MaybeUninit::<vpx_codec_ctx_t>::zeroed().assume_init() });
        let err = init(&mut *ctx);
        if err != vpx_codec_err_t::VPX_CODEC_OK {
            // A failed init leaves nothing to destroy; `ctx` is dropped as plain memory.
            return Err(CodecError::Library(format!(
                "{what}: {}",
                error_string(&mut ctx, err)
            )));
        }
        Ok(Self(ctx))
    }

    fn as_mut_ptr(&mut self) -> *mut vpx_codec_ctx_t {
        &mut *self.0
    }

    /// Turns a libvpx status into a result, with libvpx's own message
    fn check(&mut self, err: vpx_codec_err_t, what: &str) -> Result<(), String> {
        if err == vpx_codec_err_t::VPX_CODEC_OK {
            return Ok(());
        }
        Err(format!("{what}: {}", error_string(&mut self.0, err)))
    }

    /// Sets an encoder control taking an int
    fn control(
        &mut self,
        id: vpx_sys::vp8e_enc_control_id,
        value: c_int,
    ) -> Result<(), CodecError> {
        // SAFETY: the context is an initialised encoder (controls are only set on those), and
        // every control used here takes a single int (or unsigned int, same size) argument.
        let err = unsafe { vpx_codec_control_(self.as_mut_ptr(), id as c_int, value) };
        self.check(err, &format!("control {id:?}"))
            .map_err(CodecError::Library)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context was initialised by Context::init and is destroyed exactly once,
        // here; nothing borrowed from it outlives `self`.
        unsafe {
            vpx_codec_destroy(self.as_mut_ptr());
        }
    }
}

/// libvpx's message for the last error on `ctx`, with its detail when there is one
fn error_string(ctx: &mut vpx_codec_ctx_t, err: vpx_codec_err_t) -> String {
    // SAFETY: vpx_codec_error and vpx_codec_error_detail accept any context, initialised or
    // not, and return NULL or a NUL-terminated string owned by libvpx that stays valid until
    // the next call on this context; we copy it out before returning.
    unsafe {
        let text = |p: *const std::ffi::c_char| {
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        };
        let main = text(vpx_codec_error(ctx)).unwrap_or_else(|| format!("{err:?}"));
        match text(vpx_codec_error_detail(ctx)) {
            Some(detail) => format!("{main} ({detail})"),
            None => main,
        }
    }
}

/// VP8/VP9 encoder
pub(super) struct Encoder {
    ctx: Context,
    /// The libvpx configuration in force, changed in place by set_rates and set_size
    enc: vpx_codec_enc_cfg_t,
    cfg: VideoEncoderConfig,
    keyframes: KeyframeSchedule,
    /// Ticks per frame at the nominal rate
    duration: c_ulong,
    /// The last frame's pts as handed to libvpx and as captured, in ticks
    last_pts: Option<(i64, i64)>,
    /// Position in the temporal layer pattern of the next frame
    layer_index: usize,
}

/// VP8 temporal layer patterns: per frame of the period, its layer and encode flags
///
/// After libvpx's `vpx_temporal_svc_encoder` example and libwebrtc's. Layer 0 frames
/// reference and update only LAST; upper layers never update LAST nor the entropy
/// contexts, so layer 0 decodes alone. With three layers the layer-1 frame updates GOLDEN,
/// which only the following layer-2 frame references.
fn vp8_layer_pattern(layers: u8) -> &'static [(u8, u32)] {
    const NO_REF_GF: u32 = VP8_EFLAG_NO_REF_GF;
    const NO_REF_ARF: u32 = VP8_EFLAG_NO_REF_ARF;
    const NO_UPD_LAST: u32 = VP8_EFLAG_NO_UPD_LAST;
    const NO_UPD_GF: u32 = VP8_EFLAG_NO_UPD_GF;
    const NO_UPD_ARF: u32 = VP8_EFLAG_NO_UPD_ARF;
    const NO_UPD_ENTROPY: u32 = VP8_EFLAG_NO_UPD_ENTROPY;
    const BASE: u32 = NO_REF_GF | NO_REF_ARF | NO_UPD_GF | NO_UPD_ARF;
    const TOP: u32 = NO_REF_GF | NO_REF_ARF | NO_UPD_LAST | NO_UPD_GF | NO_UPD_ARF | NO_UPD_ENTROPY;
    match layers {
        2 => &[(0, BASE), (1, TOP)],
        3 => &[
            (0, BASE),
            (2, TOP),
            (
                1,
                NO_REF_GF | NO_REF_ARF | NO_UPD_LAST | NO_UPD_ARF | NO_UPD_ENTROPY,
            ),
            (
                2,
                NO_REF_ARF | NO_UPD_LAST | NO_UPD_GF | NO_UPD_ARF | NO_UPD_ENTROPY,
            ),
        ],
        _ => &[(0, 0)],
    }
}

/// Share of the bitrate up to and including each temporal layer (libwebrtc's split)
fn layer_shares(layers: u8) -> &'static [u32] {
    match layers {
        2 => &[60, 100],
        3 => &[40, 60, 100],
        _ => &[100],
    }
}

// SAFETY: a libvpx encoder context is plain heap state with no thread affinity (no TLS, no
// thread handles it expects to join from a given thread); we only touch it through
// `&mut self`, so moving the owner to another thread is sound. `enc` is plain data.
unsafe impl Send for Encoder {}

impl Encoder {
    pub(super) fn new(cfg: VideoEncoderConfig) -> Result<Self, CodecError> {
        let vp9 = is_vp9(cfg.codec)?;
        let iface = encoder_iface(vp9);
        let mut enc = MaybeUninit::<vpx_codec_enc_cfg_t>::uninit();
        // SAFETY: `iface` is a valid encoder interface and `enc` points to writable memory
        // of the right type, which the call fills in completely on success.
        let err = unsafe { vpx_codec_enc_config_default(iface, enc.as_mut_ptr(), 0) };
        if err != vpx_codec_err_t::VPX_CODEC_OK {
            return Err(CodecError::Library(format!("vpx default config: {err:?}")));
        }
        // SAFETY: initialised by the successful call above.
        let mut enc = unsafe { enc.assume_init() };

        enc.g_w = cfg.width;
        enc.g_h = cfg.height;
        enc.g_timebase.num = 1;
        enc.g_timebase.den = TIMEBASE_HZ as c_int;
        enc.g_threads = 1;
        enc.g_error_resilient = 0;
        enc.g_pass = vpx_enc_pass::VPX_RC_ONE_PASS;
        enc.g_lag_in_frames = 0;
        enc.rc_end_usage = vpx_rc_mode::VPX_CBR;
        enc.rc_target_bitrate = (cfg.bitrate_bps / 1000).max(1);
        enc.rc_dropframe_thresh = 0;
        enc.rc_resize_allowed = 0;
        enc.rc_min_quantizer = 2;
        enc.rc_max_quantizer = if vp9 { 52 } else { 56 };
        enc.rc_undershoot_pct = if vp9 { 50 } else { 100 };
        enc.rc_overshoot_pct = if vp9 { 50 } else { 15 };
        enc.rc_buf_initial_sz = 500;
        enc.rc_buf_optimal_sz = 600;
        enc.rc_buf_sz = 1000;
        // Keyframes are forced by KeyframeSchedule on pts; libvpx places none of its own.
        enc.kf_mode = vpx_kf_mode::VPX_KF_DISABLED;
        enc.kf_min_dist = 0;
        enc.kf_max_dist = c_uint::MAX;
        if cfg.temporal_layers > 1 {
            let pattern = vp8_layer_pattern(cfg.temporal_layers);
            let layers = usize::from(cfg.temporal_layers);
            enc.ts_number_layers = c_uint::from(cfg.temporal_layers);
            enc.ts_periodicity = pattern.len() as c_uint;
            for (i, (layer, _)) in pattern.iter().enumerate() {
                enc.ts_layer_id[i] = c_uint::from(*layer);
            }
            for l in 0..layers {
                // Layer l runs at 1 / 2^(layers - 1 - l) of the frame rate.
                enc.ts_rate_decimator[l] = 1 << (layers - 1 - l);
            }
            set_layer_rates(&mut enc, cfg.temporal_layers);
        }

        let mut ctx = Context::init("vpx encoder init", |ctx| {
            // SAFETY: `ctx` is a zeroed context owned by Context::init, `iface` a valid
            // encoder interface and `enc` a complete config; libvpx copies the config.
            unsafe { vpx_codec_enc_init_ver(ctx, iface, &enc, 0, VPX_ENCODER_ABI_VERSION as c_int) }
        })?;

        ctx.control(VP8E_SET_STATIC_THRESHOLD, 1)?;
        if vp9 {
            ctx.control(VP9E_SET_ROW_MT, 1)?;
            // Cyclic refresh: the real-time AQ mode.
            ctx.control(VP9E_SET_AQ_MODE, 3)?;
            ctx.control(VP9E_SET_NOISE_SENSITIVITY, 0)?;
        } else {
            ctx.control(VP8E_SET_CPUUSED, -6)?;
            ctx.control(VP8E_SET_NOISE_SENSITIVITY, 0)?;
            // One token partition: a single buffer per frame, as the RTP payloader expects.
            ctx.control(VP8E_SET_TOKEN_PARTITIONS, 0)?;
        }
        let mut this = Self {
            ctx,
            enc,
            duration: nominal_duration(cfg.fps),
            keyframes: KeyframeSchedule::new(&cfg),
            cfg,
            last_pts: None,
            layer_index: 0,
        };
        this.size_controls()?;
        this.rate_controls()?;
        Ok(this)
    }

    /// Controls that follow the frame size (VP9 speed and tiles)
    fn size_controls(&mut self) -> Result<(), CodecError> {
        if self.cfg.codec == VideoCodec::Vp9 {
            let (w, h) = (self.cfg.width, self.cfg.height);
            let big = u64::from(w) * u64::from(h) >= 1280 * 720;
            self.ctx
                .control(VP8E_SET_CPUUSED, if big { 8 } else { 7 })?;
            self.ctx
                .control(VP9E_SET_TILE_COLUMNS, c_int::from(w >= 1280))?;
        }
        Ok(())
    }

    /// The keyframe cap ([`MAX_INTRA_PCT`]; libvpx applies it to the per-frame target,
    /// which follows the frame rate), set again whenever the rate changes
    fn rate_controls(&mut self) -> Result<(), CodecError> {
        self.ctx
            .control(VP8E_SET_MAX_INTRA_BITRATE_PCT, MAX_INTRA_PCT)
    }

    /// Hands the changed `enc` to libvpx
    fn apply_config(&mut self) -> Result<(), String> {
        // SAFETY: initialised encoder context and a complete config, which libvpx copies.
        let err = unsafe { vpx_codec_enc_config_set(self.ctx.as_mut_ptr(), &self.enc) };
        self.ctx.check(err, "vpx config set")
    }

    /// The pts and duration libvpx gets for a frame captured at `pts`, in timebase ticks
    ///
    /// Every frame lasts the nominal interval, and the pts advances by the time since the
    /// previous frame, at least one tick (libvpx requires it to increase) and at most two
    /// nominal intervals. libvpx times a frame from the end (pts plus duration) of the one
    /// before, so this tells it the real frame rate. Giving each frame the time since the
    /// previous one as its duration instead made every other frame of a 30 fps capture
    /// encoded at 20 fps (33 and 67 ms apart in turn) end where its predecessor had: libvpx
    /// budgeted as if at 10 fps and sent 1.35–2.7 times its target. The cap keeps frames
    /// skipped for a full bitrate budget from being paid back in one frame (a 10 kB inter
    /// frame at 50 kbit/s after 1.6 s of skips, itself skipped in turn: seconds of frozen
    /// video on a cellular path).
    fn ticks(&mut self, pts: Duration) -> (i64, c_ulong) {
        let input = (pts.as_nanos() * u128::from(TIMEBASE_HZ) / 1_000_000_000)
            .min(i64::MAX as u128 / 4) as i64;
        let out = match self.last_pts {
            Some((last_out, last_in)) => {
                let cap = (2 * self.duration).min(TIMEBASE_HZ as c_ulong) as i64;
                last_out + (input - last_in).clamp(1, cap)
            }
            None => input,
        };
        self.last_pts = Some((out, input));
        (out, self.duration)
    }
}

impl VideoEncoder for Encoder {
    fn encode(
        &mut self,
        frame: &I420Frame,
        pts: Duration,
    ) -> Result<Option<EncodedVideo>, CodecError> {
        self.cfg.check_frame(frame)?;
        let force = self.keyframes.is_due(pts);
        let (ticks, duration) = self.ticks(pts);

        let (w, h) = (frame.width, frame.height);
        let mut img = MaybeUninit::<vpx_image_t>::uninit();
        // SAFETY: vpx_img_wrap only fills in the image descriptor (it neither reads nor
        // writes the pixels, nor allocates since img_data is non-NULL) and returns NULL on
        // bad arguments.
        let wrapped = unsafe {
            vpx_img_wrap(
                img.as_mut_ptr(),
                vpx_img_fmt::VPX_IMG_FMT_I420,
                w,
                h,
                1,
                frame.y.as_ptr().cast_mut(),
            )
        };
        if wrapped.is_null() {
            return Err(CodecError::Library("vpx_img_wrap failed".into()));
        }
        // SAFETY: vpx_img_wrap succeeded, so it initialised the whole descriptor.
        let mut img = unsafe { img.assume_init() };
        // Point the chroma planes at our separate buffers (check_frame verified their sizes
        // for these even dimensions).
        img.planes[1] = frame.u.as_ptr().cast_mut();
        img.planes[2] = frame.v.as_ptr().cast_mut();
        img.stride = [w as c_int, (w / 2) as c_int, (w / 2) as c_int, 0];

        if force {
            // A keyframe restarts the layer pattern.
            self.layer_index = 0;
        }
        let pattern = vp8_layer_pattern(self.cfg.temporal_layers);
        let (layer, layer_flags) = pattern[self.layer_index % pattern.len()];
        if self.cfg.temporal_layers > 1 {
            self.ctx
                .control(VP8E_SET_TEMPORAL_LAYER_ID, c_int::from(layer))?;
        }
        let flags = if force {
            VPX_EFLAG_FORCE_KF as c_long
        } else {
            c_long::from(layer_flags)
        };
        // SAFETY: the context is an initialised encoder; `img` describes three planes that
        // `frame` keeps alive and unchanged for the duration of the call, and libvpx only
        // reads them (copying into its own buffers) during it.
        let err = unsafe {
            vpx_codec_encode(
                self.ctx.as_mut_ptr(),
                &img,
                ticks,
                duration,
                flags,
                VPX_DL_REALTIME as _,
            )
        };
        self.ctx
            .check(err, "vpx encode")
            .map_err(CodecError::Library)?;

        let mut data = Vec::new();
        let mut keyframe = false;
        let mut iter: vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: initialised encoder context and an iterator that started NULL.
            let pkt = unsafe { vpx_codec_get_cx_data(self.ctx.as_mut_ptr(), &mut iter) };
            if pkt.is_null() {
                break;
            }
            // SAFETY: a non-NULL packet is valid until the next call on the context.
            let pkt = unsafe { &*pkt };
            if pkt.kind != vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                continue;
            }
            // SAFETY: for VPX_CODEC_CX_FRAME_PKT the `frame` member of the union is the
            // active one.
            let f = unsafe { pkt.data.frame };
            if !f.buf.is_null() && f.sz > 0 {
                // SAFETY: libvpx guarantees `buf` points to `sz` readable bytes for the
                // lifetime of the packet; we copy them out at once.
                data.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(f.buf.cast::<u8>(), f.sz)
                });
            }
            keyframe |= f.flags & VPX_FRAME_IS_KEY != 0;
        }
        if data.is_empty() {
            return Ok(None);
        }
        self.layer_index = (self.layer_index + 1) % pattern.len();
        self.keyframes.handle_output(pts, keyframe);
        Ok(Some(EncodedVideo {
            data: Bytes::from(data),
            keyframe,
            temporal_id: if keyframe { 0 } else { layer },
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
        let old = self.enc.rc_target_bitrate;
        let old_layers = self.enc.ts_target_bitrate;
        self.enc.rc_target_bitrate = (bitrate_bps / 1000).max(1);
        set_layer_rates(&mut self.enc, self.cfg.temporal_layers);
        if let Err(e) = self.apply_config() {
            self.enc.rc_target_bitrate = old;
            self.enc.ts_target_bitrate = old_layers;
            return Err(CodecError::Library(e));
        }
        self.cfg.bitrate_bps = bitrate_bps;
        if fps != self.cfg.fps {
            self.cfg.fps = fps;
            self.duration = nominal_duration(fps);
            self.keyframes.set_fps(fps);
            self.rate_controls()?;
        }
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
        // A new encoder for every size: the next frame is a keyframe anyway, and a resize in
        // place keeps the rate control's buffer, which holds bits counted at the old bitrate.
        // Sizes go down when the bitrate has fallen, and the banked bits were then spent at
        // once: 12–18 kB inter frames right after a 6 kB keyframe at 245 kbit/s (simulator,
        // capacity step), a second of the new bitrate in one frame. Growing in place is no
        // option either: VP8 refuses it, and libvpx 1.12's VP9 accepts it but corrupts its
        // heap on the frame after (glibc's "corrupted size vs. prev_size").
        *self = Self::new(cfg)?;
        Ok(())
    }
}

/// Splits `enc.rc_target_bitrate` over the temporal layers (cumulative, in kbit/s)
fn set_layer_rates(enc: &mut vpx_codec_enc_cfg_t, layers: u8) {
    if layers > 1 {
        for (l, share) in layer_shares(layers).iter().enumerate() {
            enc.ts_target_bitrate[l] = (enc.rc_target_bitrate * share / 100).max(1);
        }
    }
}

/// Ticks of the 90 kHz timebase per frame at `fps`
fn nominal_duration(fps: u32) -> c_ulong {
    (TIMEBASE_HZ / u64::from(fps.max(1))).max(1) as c_ulong
}

fn is_vp9(codec: VideoCodec) -> Result<bool, CodecError> {
    match codec {
        VideoCodec::Vp8 => Ok(false),
        VideoCodec::Vp9 => Ok(true),
        VideoCodec::H264 => Err(CodecError::InvalidConfig("libvpx does not do h264".into())),
    }
}

fn encoder_iface(vp9: bool) -> *const vpx_codec_iface_t {
    // SAFETY: these return pointers to libvpx's static interface tables.
    unsafe {
        if vp9 {
            vpx_codec_vp9_cx()
        } else {
            vpx_codec_vp8_cx()
        }
    }
}

/// VP8/VP9 decoder
pub(super) struct Decoder {
    ctx: Context,
    codec: VideoCodec,
    /// VP9 reference slot sizes, for the sizes inter frames take from them
    refs: Vp9Refs,
}

// SAFETY: as for Encoder: the context has no thread affinity and is only used through
// `&mut self`.
unsafe impl Send for Decoder {}

impl Decoder {
    pub(super) fn new(codec: VideoCodec) -> Result<Self, CodecError> {
        // SAFETY: these return pointers to libvpx's static interface tables.
        let iface: *const vpx_codec_iface_t = unsafe {
            match codec {
                VideoCodec::Vp8 => vpx_codec_vp8_dx(),
                VideoCodec::Vp9 => vpx_codec_vp9_dx(),
                VideoCodec::H264 => {
                    return Err(CodecError::InvalidConfig("libvpx does not do h264".into()))
                }
            }
        };
        let cfg = vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        };
        let ctx = Context::init("vpx decoder init", |ctx| {
            // SAFETY: `ctx` is a zeroed context owned by Context::init, `iface` a valid
            // decoder interface; libvpx copies `cfg`.
            unsafe { vpx_codec_dec_init_ver(ctx, iface, &cfg, 0, VPX_DECODER_ABI_VERSION as c_int) }
        })?;
        Ok(Self {
            ctx,
            codec,
            refs: Vp9Refs::default(),
        })
    }

    /// Checks the sizes the frame declares, before libvpx sees it; returns the VP9
    /// reference slots as they will be if libvpx accepts the frame
    fn check_sizes(&self, data: &[u8]) -> Result<Option<Vp9Refs>, CodecError> {
        let decode = CodecError::Decode;
        match self.codec {
            VideoCodec::Vp9 => {
                let mut refs = self.refs.clone();
                for frame in headers::vp9_frames(data).map_err(decode)? {
                    let info = refs.parse(frame).map_err(decode)?;
                    // No size: show_existing_frame, or an inter frame taking the size of a
                    // slot we lost track of, which holds a size checked when it came.
                    if let Some(size) = info.size {
                        check_decode_size(self.codec, size)?;
                    }
                    if info.outgrows_refs() {
                        return Err(CodecError::Decode(format!(
                            "vp9 inter frame of {:?} is over twice its references {:?}",
                            info.size, info.ref_sizes
                        )));
                    }
                    refs.update(&info);
                }
                Ok(Some(refs))
            }
            _ => {
                if let Some(size) = headers::vp8_size(data).map_err(decode)? {
                    check_decode_size(self.codec, size)?;
                }
                Ok(None)
            }
        }
    }
}

impl VideoDecoder for Decoder {
    fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, CodecError> {
        let name = self.codec.name();
        let len = match c_uint::try_from(data.len()) {
            Ok(0) | Err(_) => {
                return Err(CodecError::Decode(format!(
                    "{name} frame of {} bytes",
                    data.len()
                )))
            }
            Ok(len) => len,
        };
        let refs = self.check_sizes(data)?;
        // SAFETY: initialised decoder context; `data` is valid for `len` bytes during the
        // call and libvpx does not keep the pointer.
        let err = unsafe {
            vpx_codec_decode(
                self.ctx.as_mut_ptr(),
                data.as_ptr(),
                len,
                ptr::null_mut(),
                0,
            )
        };
        if let Err(e) = self.ctx.check(err, name) {
            // libvpx may have refreshed some slots before failing: forget them all.
            self.refs.clear();
            return Err(CodecError::Decode(e));
        }
        if let Some(refs) = refs {
            self.refs = refs;
        }

        let mut picture = None;
        let mut iter: vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: initialised decoder context and an iterator that started NULL.
            let img = unsafe { vpx_codec_get_frame(self.ctx.as_mut_ptr(), &mut iter) };
            if img.is_null() {
                break;
            }
            // SAFETY: a non-NULL image is valid until the next decode call on the context;
            // copy_image copies it out at once.
            picture = Some(copy_image(unsafe { &*img }, name)?);
        }
        Ok(picture)
    }
}

/// Copies a decoded libvpx image into a tightly packed [`I420Frame`]
fn copy_image(img: &vpx_image_t, name: &str) -> Result<I420Frame, CodecError> {
    if img.fmt != vpx_img_fmt::VPX_IMG_FMT_I420 {
        // E.g. VP9 profile 1-3 (4:4:4, high bit depth), which we do not negotiate.
        return Err(CodecError::Decode(format!(
            "{name} picture format {:?} is not 8-bit I420",
            img.fmt
        )));
    }
    let (w, h) = (img.d_w, img.d_h);
    if w == 0 || h == 0 || u64::from(w) * u64::from(h) > MAX_DECODE_PIXELS {
        return Err(CodecError::Decode(format!("{name} picture of {w}x{h}")));
    }
    let mut frame = I420Frame {
        width: w,
        height: h,
        y: Vec::new(),
        u: Vec::new(),
        v: Vec::new(),
    };
    let (cw, ch) = (
        frame.chroma_width() as usize,
        frame.chroma_height() as usize,
    );
    let planes = [(0, w as usize, h as usize), (1, cw, ch), (2, cw, ch)];
    for (index, width, rows) in planes {
        let base = img.planes[index];
        let stride = img.stride[index];
        if base.is_null() || stride < 0 || (stride as usize) < width {
            return Err(CodecError::Decode(format!(
                "{name} picture plane {index} unusable"
            )));
        }
        let dst = match index {
            0 => &mut frame.y,
            1 => &mut frame.u,
            _ => &mut frame.v,
        };
        dst.reserve_exact(width * rows);
        for row in 0..rows {
            // SAFETY: an I420 libvpx image of d_w x d_h has `rows` rows of at least `width`
            // bytes in each plane, `stride` bytes apart (checked non-negative and >= width).
            let line =
                unsafe { std::slice::from_raw_parts(base.add(row * stride as usize), width) };
            dst.extend_from_slice(line);
        }
    }
    Ok(frame)
}
