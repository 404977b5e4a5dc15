//! Choosing the size and frame rate to send, and when to drop a frame: a sans-IO
//! degradation controller in the manner of libwebrtc's `degradationPreference = "balanced"`
//!
//! Input: the capture size and rate ([`DegradationController::set_capture`]), the target
//! bitrate whenever it changes ([`set_target_bitrate`]), and for every frame whether it is
//! worth encoding ([`should_encode`]) and, after encoding, how long that took
//! ([`handle_encoded`]; the caller measures it, the core reads no clock). Output: the
//! [`Level`] to send at ([`current`]) and the [`QualityLimitation`] to report.
//!
//! **Bandwidth.** The levels form a ladder: first the size steps down (3/4, 1/2, 3/8, 1/4 of
//! the capture size, each about 0.56 times the pixels of the one before) while it stays at or
//! above [`DegradationConfig::min_pixels`], then the frame rate steps down (2/3, 1/2, 1/3 and
//! 1/4 of the capture rate, not below [`DegradationConfig::min_fps`]). A level is good for a
//! bitrate when it gets at least `min_bpp` bits per pixel per frame. When the current level
//! falls below that, the controller goes at once to the best level that has it; it steps back
//! up one level at a time, when the better level would get `up_bpp` (higher, for hysteresis)
//! and has done so for [`DegradationConfig::up_delay`]. No change comes within
//! [`DegradationConfig::min_interval`] of the last one.
//!
//! **CPU.** The mean encode time, as a share of the frame interval at the current level, is
//! the encoder's usage. Above `cpu_overuse` the controller steps down one level (by the same
//! ladder); below `cpu_underuse` it gives a CPU step back. Per frame, when the previous
//! encodes still have the encoder busy for more than half a frame interval past the time
//! this frame would be handed over without a queue (its capture time plus the least recent
//! delay between capture and handover), the frame is dropped rather than queued behind
//! them.
//!
//! The thresholds' defaults come from measurements of this crate's encoders; see
//! [`DegradationConfig::default`].
//!
//! [`set_target_bitrate`]: DegradationController::set_target_bitrate
//! [`should_encode`]: DegradationController::should_encode
//! [`handle_encoded`]: DegradationController::handle_encoded
//! [`current`]: DegradationController::current

use std::time::{Duration, Instant};

use super::Scale;
use crate::extreme::WindowMin;

/// How far back [`DegradationController::should_encode`] looks for the least delay between
/// a frame's capture and its handover to the encoder
pub const HANDOVER_WINDOW: Duration = Duration::from_secs(2);

/// Why the video sent is below what was captured (W3C `qualityLimitationReason`)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QualityLimitation {
    /// Sent as captured
    #[default]
    None,
    /// Smaller or slower because the bitrate is too low for the capture
    Bandwidth,
    /// Smaller, slower or frames dropped because encoding cannot keep up
    Cpu,
}

impl QualityLimitation {
    /// The W3C name: `"none"`, `"bandwidth"` or `"cpu"`
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bandwidth => "bandwidth",
            Self::Cpu => "cpu",
        }
    }
}

/// Thresholds of a [`DegradationController`]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DegradationConfig {
    /// Below this many bits per pixel per frame a level is too expensive: step down
    pub min_bpp: f64,
    /// A better level is taken once it would get at least this many bits per pixel per
    /// frame (above `min_bpp`, so that a step up is not undone at once)
    pub up_bpp: f64,
    /// Smallest picture the size steps go down to, in pixels; below it the frame rate steps
    pub min_pixels: u32,
    /// Lowest frame rate the frame-rate steps go down to
    pub min_fps: u32,
    /// Least time between two changes of level
    pub min_interval: Duration,
    /// How long the conditions for a step up must hold before it is taken
    pub up_delay: Duration,
    /// Mean encode time, as a share of the frame interval, above which the encoder is
    /// overloaded
    pub cpu_overuse: f64,
    /// ... and below which a CPU step may be given back
    pub cpu_underuse: f64,
}

impl Default for DegradationConfig {
    /// Thresholds measured on this crate's encoders (`cargo run --release -p meshrtc
    /// --example codec_bench -- 120 ladder`), on a test pattern with and without sensor
    /// noise:
    ///
    /// Below some bitrate an encoder is starved: its quantizer sits at the maximum, the
    /// quality stops falling with the bitrate and the bitrate is no longer held (libwebrtc's
    /// quality scaler detects this through the QP). At 640x360, 30 fps, the coding PSNR
    /// (decoded against the encoder's input) stays flat at 28.9 dB (VP8, 100-250 kbit/s),
    /// 28.3-28.6 (H.264, 100-150) and 32.0-32.1 (VP9, noisy, 100-250); the first bitrate
    /// measured above the plateau is 400 kbit/s for VP8 and VP9 (0.058 bits per pixel per
    /// frame: 30.5 / 33.3 dB noisy, 32.1 / 35.0 clean) and 250 kbit/s for H.264 (0.036).
    /// `min_bpp` = 0.06 steps down just above the starved region of VP8 and VP9 (H.264 would
    /// hold on a little longer). At 320x180 the same 0.06 is 104 kbit/s, where VP8 is at its
    /// plateau again (30.2 dB): there the ladder takes frame rate instead.
    ///
    /// `up_bpp` = 0.1: one size step has 0.56 times the pixels, so right after a step down at
    /// 0.06 the smaller size gets 0.107; requiring 0.1 at the bigger size before going back
    /// up keeps a step up from being undone by the next estimate.
    ///
    /// CPU thresholds as libwebrtc's overuse detector (85 % / 42 % of the frame interval),
    /// rounded.
    fn default() -> Self {
        Self {
            min_bpp: 0.06,
            up_bpp: 0.1,
            min_pixels: 320 * 180,
            min_fps: 5,
            min_interval: Duration::from_secs(1),
            up_delay: Duration::from_secs(2),
            cpu_overuse: 0.85,
            cpu_underuse: 0.4,
        }
    }
}

/// One rung of the ladder: what to send
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Size relative to the capture
    pub scale: Scale,
    /// Frame rate
    pub fps: u32,
    /// Width sent
    pub width: u32,
    /// Height sent
    pub height: u32,
}

impl Level {
    fn pixels(&self) -> f64 {
        f64::from(self.width) * f64::from(self.height)
    }

    /// Bits per pixel per frame this level gets at `bitrate_bps`
    pub fn bpp(&self, bitrate_bps: u32) -> f64 {
        f64::from(bitrate_bps) / (self.pixels() * f64::from(self.fps.max(1)))
    }
}

/// Size steps, as fractions of the capture size
const SCALES: [(u8, u8); 5] = [(1, 1), (3, 4), (1, 2), (3, 8), (1, 4)];

/// Frame-rate steps, as fractions of the capture rate
const RATES: [(u32, u32); 4] = [(2, 3), (1, 2), (1, 3), (1, 4)];

/// Builds the ladder for a capture, best level first
fn ladder(cfg: &DegradationConfig, width: u32, height: u32, fps: u32) -> Vec<Level> {
    let mut levels = Vec::new();
    for (num, den) in SCALES {
        let scale = Scale::new(num, den).expect("constant fractions; panic means bug");
        let (w, h) = scale.apply(width, height);
        if !levels.is_empty() && u64::from(w) * u64::from(h) < u64::from(cfg.min_pixels) {
            break;
        }
        levels.push(Level {
            scale,
            fps,
            width: w,
            height: h,
        });
    }
    let smallest = *levels.last().expect("the capture size is always a level");
    for (num, den) in RATES {
        let f = fps * num / den;
        if f < cfg.min_fps.max(1) || f >= levels.last().map_or(fps, |l| l.fps) {
            continue;
        }
        levels.push(Level { fps: f, ..smallest });
    }
    levels
}

/// The degradation controller; see the [module docs](self)
#[derive(Debug, Clone)]
pub struct DegradationController {
    cfg: DegradationConfig,
    capture: Option<(u32, u32, u32)>,
    levels: Vec<Level>,
    bitrate_bps: Option<u32>,
    /// Levels down for bandwidth and for CPU; the one in force is the lower of the two
    bw_level: usize,
    cpu_level: usize,
    last_change: Option<Instant>,
    /// Since when a bandwidth step up has been possible
    up_since: Option<Instant>,
    /// Mean encode time (exponentially weighted), seconds
    encode_mean: Option<f64>,
    /// Since when the usage has been above overuse / below underuse
    overuse_since: Option<Instant>,
    underuse_since: Option<Instant>,
    /// Until when the encoder is busy with frames handed to it (handover time plus the
    /// encode times reported since)
    busy_until: Option<Instant>,
    /// The least handover delay (`now - capture`) of the last [`HANDOVER_WINDOW`]
    handover: WindowMin<Duration>,
    last_cpu_drop: Option<Instant>,
    frames_dropped: u64,
    /// The latest time seen, for re-evaluating when the capture changes
    last_now: Option<Instant>,
}

impl DegradationController {
    /// A controller; nothing is degraded until it knows the capture and a bitrate
    pub fn new(cfg: DegradationConfig) -> Self {
        Self {
            cfg,
            capture: None,
            levels: Vec::new(),
            bitrate_bps: None,
            bw_level: 0,
            cpu_level: 0,
            last_change: None,
            up_since: None,
            encode_mean: None,
            overuse_since: None,
            underuse_since: None,
            busy_until: None,
            handover: WindowMin::default(),
            last_cpu_drop: None,
            frames_dropped: 0,
            last_now: None,
        }
    }

    /// Sets the capture size and frame rate; a change rebuilds the ladder (keeping the number
    /// of steps down)
    pub fn set_capture(&mut self, width: u32, height: u32, fps: u32) {
        let capture = (width.max(2), height.max(2), fps.clamp(1, 120));
        if self.capture == Some(capture) {
            return;
        }
        self.capture = Some(capture);
        self.levels = ladder(&self.cfg, capture.0, capture.1, capture.2);
        let last = self.levels.len() - 1;
        self.bw_level = self.bw_level.min(last);
        self.cpu_level = self.cpu_level.min(last);
        if let Some(now) = self.last_now {
            self.update(now);
        }
    }

    /// Sets the target bitrate at `now`
    pub fn set_target_bitrate(&mut self, now: Instant, bitrate_bps: u32) {
        self.bitrate_bps = Some(bitrate_bps);
        self.update(now);
    }

    /// Lets time pass: steps up are taken when their delay is over (call at every frame,
    /// or at least every few hundred milliseconds)
    pub fn handle_timeout(&mut self, now: Instant) {
        self.update(now);
    }

    /// The level to send at
    ///
    /// The capture at full rate until [`set_capture`](Self::set_capture) was called.
    pub fn current(&self) -> Option<Level> {
        self.levels.get(self.level()).copied()
    }

    fn level(&self) -> usize {
        self.bw_level.max(self.cpu_level)
    }

    /// Whether the frame captured at `capture` should be encoded, decided at `now` (the
    /// time it would be handed to the encoder)
    ///
    /// `false` when the encoder is still busy with earlier frames for more than half a frame
    /// interval past the time this frame would be handed over if nothing queued: its capture
    /// time plus the least handover delay (`now - capture`) of the last
    /// [`HANDOVER_WINDOW`]. A constant delay between capture and handover (a camera
    /// pipeline, video stamped earlier than audio) is no CPU overload; only time the encoder
    /// itself is behind counts. Such a frame is dropped rather than queued, and counted.
    pub fn should_encode(&mut self, capture: Instant, now: Instant) -> bool {
        self.update(now.max(capture));
        let lag = now.saturating_duration_since(capture);
        let floor = self.handover.push(now.max(capture), lag, HANDOVER_WINDOW);
        let slack = self.frame_interval() / 2;
        if self.busy_until.is_some_and(|b| b > capture + floor + slack) {
            self.frames_dropped += 1;
            self.last_cpu_drop = Some(now.max(capture));
            return false;
        }
        true
    }

    /// Records that the frame captured at `capture` took `encode_time` to encode, ending at
    /// `now`
    pub fn handle_encoded(&mut self, capture: Instant, encode_time: Duration, now: Instant) {
        // It started when the encoder was free, or when it was handed over.
        let handed = now.checked_sub(encode_time).unwrap_or(now).max(capture);
        let start = self.busy_until.map_or(handed, |b| b.max(handed));
        self.busy_until = Some(start + encode_time);
        let t = encode_time.as_secs_f64();
        // About a second of frames.
        let alpha = 1.0 / f64::from(self.current().map_or(30, |l| l.fps).max(1));
        self.encode_mean = Some(match self.encode_mean {
            None => t,
            Some(m) => m + alpha * (t - m),
        });
        self.update(now.max(capture));
    }

    /// Frames [`should_encode`](Self::should_encode) turned down so far
    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped
    }

    /// Mean encode time as a share of the current frame interval, once known
    pub fn encode_usage(&self) -> Option<f64> {
        Some(self.encode_mean? / self.frame_interval().as_secs_f64())
    }

    /// Why the video sent is below the capture, as of `now`
    ///
    /// CPU when CPU steps are in force or a frame was dropped for CPU in the last second,
    /// bandwidth when bandwidth steps are, none otherwise.
    pub fn quality_limitation(&self, now: Instant) -> QualityLimitation {
        let recent_drop = self
            .last_cpu_drop
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        if (self.cpu_level > 0 && self.cpu_level >= self.bw_level) || recent_drop {
            QualityLimitation::Cpu
        } else if self.bw_level > 0 {
            QualityLimitation::Bandwidth
        } else {
            QualityLimitation::None
        }
    }

    fn frame_interval(&self) -> Duration {
        let fps = self
            .current()
            .map_or_else(|| self.capture.map_or(30, |c| c.2), |l| l.fps);
        Duration::from_secs(1) / fps.max(1)
    }

    /// Re-evaluates the level at `now`
    fn update(&mut self, now: Instant) {
        let now = self.last_now.map_or(now, |t| t.max(now));
        self.last_now = Some(now);
        if self.levels.is_empty() {
            return;
        }
        let last = self.levels.len() - 1;
        let settled = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.min_interval);

        // CPU usage, at the level in force.
        let usage = self.encode_usage();
        let over = usage.is_some_and(|u| u > self.cfg.cpu_overuse);
        let under = usage.is_some_and(|u| u < self.cfg.cpu_underuse);
        if over {
            self.overuse_since.get_or_insert(now);
        } else {
            self.overuse_since = None;
        }
        if under {
            self.underuse_since.get_or_insert(now);
        } else {
            self.underuse_since = None;
        }

        // Bandwidth: the best level the bitrate affords, and whether one step up is due.
        let (mut bw_want, mut up_ok) = (self.bw_level, false);
        if let Some(bitrate) = self.bitrate_bps {
            let current = self.levels[self.bw_level];
            if current.bpp(bitrate) < self.cfg.min_bpp {
                bw_want = (self.bw_level..=last)
                    .find(|&i| self.levels[i].bpp(bitrate) >= self.cfg.min_bpp)
                    .unwrap_or(last);
            } else if self.bw_level > 0 {
                up_ok = self.levels[self.bw_level - 1].bpp(bitrate) >= self.cfg.up_bpp;
            }
        }
        if up_ok {
            self.up_since.get_or_insert(now);
        } else {
            self.up_since = None;
        }
        if !settled {
            return;
        }
        let held = |since: Option<Instant>, d: Duration| {
            since.is_some_and(|s| now.saturating_duration_since(s) >= d)
        };
        let before = self.level();
        if bw_want > self.bw_level {
            self.bw_level = bw_want;
        } else if held(self.overuse_since, self.cfg.min_interval) && self.level() < last {
            // Overloaded for a second: one step below whatever is in force.
            self.cpu_level = self.level() + 1;
            self.overuse_since = None;
            // The mean was measured at the old level; start afresh at the new one.
            self.encode_mean = None;
        } else if self.cpu_level > 0 && held(self.underuse_since, self.cfg.up_delay) {
            self.cpu_level -= 1;
            self.underuse_since = None;
            self.encode_mean = None;
        } else if held(self.up_since, self.cfg.up_delay) {
            // Up to the best level the bitrate affords with margin, in one step: after a
            // fall and a recovery the path is back long before several steps were taken.
            let bitrate = self.bitrate_bps.unwrap_or(0);
            self.bw_level = (0..self.bw_level)
                .find(|&i| self.levels[i].bpp(bitrate) >= self.cfg.up_bpp)
                .unwrap_or(self.bw_level - 1);
            self.up_since = None;
        }
        if self.level() != before {
            self.last_change = Some(now);
            if let Some(l) = self.current() {
                tracing::debug!(
                    width = l.width,
                    height = l.height,
                    fps = l.fps,
                    bitrate = self.bitrate_bps,
                    cpu = self.cpu_level > 0,
                    "degradation: level"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // reason: an arbitrary origin for virtual time

    use super::*;

    fn ctl(w: u32, h: u32, fps: u32) -> (DegradationController, Instant) {
        let mut c = DegradationController::new(DegradationConfig::default());
        c.set_capture(w, h, fps);
        (c, Instant::now())
    }

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn ladder_steps_size_then_rate() {
        let cfg = DegradationConfig::default();
        let l = ladder(&cfg, 640, 360, 30);
        let shape: Vec<(u32, u32, u32)> = l.iter().map(|l| (l.width, l.height, l.fps)).collect();
        assert_eq!(
            shape,
            [
                (640, 360, 30),
                (480, 270, 30),
                (320, 180, 30),
                (320, 180, 20),
                (320, 180, 15),
                (320, 180, 10),
                (320, 180, 7),
            ]
        );
        let l = ladder(&cfg, 1280, 720, 30);
        assert_eq!((l[4].width, l[4].height, l[4].fps), (320, 180, 30));
        // A capture already at the floor only steps its rate.
        let l = ladder(&cfg, 160, 90, 15);
        assert_eq!(l.iter().map(|l| l.fps).collect::<Vec<_>>(), [15, 10, 7, 5]);
    }

    #[test]
    fn a_bitrate_drop_steps_down_at_once_and_recovery_steps_up_after_a_delay() {
        let (mut c, t0) = ctl(640, 360, 30);
        c.set_target_bitrate(t0, 1_200_000);
        assert_eq!(c.current().unwrap().width, 640);
        assert_eq!(c.quality_limitation(t0), QualityLimitation::None);

        // 640x360@30 at 300 kbit/s gets 0.043 bits per pixel; 480x270 gets 0.077.
        c.set_target_bitrate(secs(t0, 5.0), 300_000);
        let l = c.current().unwrap();
        assert_eq!((l.width, l.fps), (480, 30), "{l:?}");
        assert_eq!(
            c.quality_limitation(secs(t0, 5.0)),
            QualityLimitation::Bandwidth
        );

        // Lower still within a second: no change before the interval is over.
        c.set_target_bitrate(secs(t0, 5.5), 100_000);
        assert_eq!(c.current().unwrap(), l);
        c.set_target_bitrate(secs(t0, 6.0), 100_000);
        // Two levels at once: 320x180@30 would get 0.058, @20 gets 0.087.
        let low = c.current().unwrap();
        assert_eq!((low.width, low.fps), (320, 20), "{low:?}");

        // Recovery: after the up delay, to the best level with margin in one step.
        let mut t = 6.0;
        let mut steps = vec![(low.width, low.fps)];
        while t < 30.0 {
            t += 0.1;
            c.set_target_bitrate(secs(t0, t), 2_000_000);
            let l = c.current().unwrap();
            if steps.last() != Some(&(l.width, l.fps)) {
                steps.push((l.width, l.fps));
            }
        }
        assert_eq!(steps, [(320, 20), (640, 30)]);
        assert_eq!(c.quality_limitation(secs(t0, t)), QualityLimitation::None);
        // A partial recovery goes as far as the bitrate affords: at 500 kbit/s 480x270@30
        // gets 0.129 bits per pixel, 640x360@30 only 0.072.
        let (mut c, t0) = ctl(640, 360, 30);
        c.set_target_bitrate(t0, 100_000);
        let mut t = 0.0;
        while t < 10.0 {
            t += 0.1;
            c.set_target_bitrate(secs(t0, t), 500_000);
        }
        assert_eq!(c.current().unwrap().width, 480);
    }

    #[test]
    fn hysteresis_holds_between_the_thresholds() {
        let (mut c, t0) = ctl(640, 360, 30);
        // 640x360@30 needs 415 kbit/s for 0.06 bits per pixel: 400 kbit/s steps down.
        c.set_target_bitrate(t0, 400_000);
        assert_eq!(c.current().unwrap().width, 480);
        // Back up to 640x360 takes 0.1 bits per pixel there, 691 kbit/s: anything between
        // leaves the level alone, however long it lasts.
        for i in 1..100 {
            let rate = if i % 2 == 0 { 420_000 } else { 680_000 };
            c.set_target_bitrate(secs(t0, f64::from(i) * 0.1), rate);
        }
        assert_eq!(c.current().unwrap().width, 480);
        c.set_target_bitrate(secs(t0, 10.0), 700_000);
        c.set_target_bitrate(secs(t0, 12.0), 700_000);
        assert_eq!(c.current().unwrap().width, 640);
    }

    #[test]
    fn slow_encodes_drop_frames_then_step_down() {
        let (mut c, t0) = ctl(640, 360, 30);
        c.set_target_bitrate(t0, 2_000_000);
        let period = Duration::from_secs(1) / 30;
        let mut sent = 0;
        let mut first_drop = None;
        for i in 0..120u32 {
            let cap = t0 + period * i;
            if c.should_encode(cap, cap) {
                sent += 1;
                // 45 ms per frame against 33 ms of frame interval.
                c.handle_encoded(
                    cap,
                    Duration::from_millis(45),
                    cap + Duration::from_millis(45),
                );
            } else {
                first_drop.get_or_insert(i);
            }
        }
        assert!(first_drop.unwrap() < 5, "{first_drop:?}");
        // The encoder is busy 45 ms per frame: it can take about 22 of 30 frames a second,
        // and the latency never builds up.
        assert!((60..100).contains(&sent), "{sent}");
        assert_eq!(
            c.quality_limitation(t0 + period * 120),
            QualityLimitation::Cpu
        );
        // Overloaded for over a second: stepped down (the bitrate alone would not).
        assert!(c.current().unwrap().width < 640);
        assert!(c.frames_dropped() > 0);
    }

    #[test]
    fn cpu_steps_are_given_back_when_encoding_gets_cheap() {
        let (mut c, t0) = ctl(640, 360, 30);
        c.set_target_bitrate(t0, 2_000_000);
        let period = Duration::from_secs(1) / 30;
        let mut t = t0;
        let mut run = |c: &mut DegradationController, frames: u32, cost: u64| {
            for _ in 0..frames {
                t += period;
                if c.should_encode(t, t) {
                    c.handle_encoded(t, Duration::from_millis(cost), t);
                }
            }
        };
        run(&mut c, 60, 31);
        let down = c.current().unwrap();
        assert!(down.width < 640, "{down:?}");
        run(&mut c, 300, 5);
        assert_eq!(c.current().unwrap().width, 640);
        assert_eq!(c.quality_limitation(t), QualityLimitation::None);
    }

    #[test]
    fn a_constant_delay_before_handover_is_no_overload() {
        // Frames handed over 150 ms after their capture (a camera pipeline slower than the
        // microphone's), encoded in 10 ms: nothing is dropped, with or without encode times.
        for timed in [false, true] {
            let (mut c, t0) = ctl(640, 360, 30);
            let period = Duration::from_secs(1) / 30;
            for i in 0..300u32 {
                let cap = t0 + period * i;
                let now = cap + Duration::from_millis(150 + u64::from(i % 7));
                assert!(c.should_encode(cap, now), "frame {i} (timed: {timed})");
                if timed {
                    let took = Duration::from_millis(10);
                    c.handle_encoded(cap, took, now + took);
                }
            }
            assert_eq!(c.frames_dropped(), 0);
            assert_ne!(
                c.quality_limitation(t0 + period * 300),
                QualityLimitation::Cpu
            );
        }
        // The same delay with 45 ms encodes at 30 fps still drops frames.
        let (mut c, t0) = ctl(640, 360, 30);
        let period = Duration::from_secs(1) / 30;
        let mut free = t0;
        let mut sent = 0;
        for i in 0..120u32 {
            let cap = t0 + period * i;
            let now = (cap + Duration::from_millis(150)).max(free);
            if c.should_encode(cap, now) {
                sent += 1;
                let took = Duration::from_millis(45);
                c.handle_encoded(cap, took, now + took);
                free = now + took;
            }
        }
        assert!((60..100).contains(&sent), "{sent}");
    }

    #[test]
    fn on_time_encodes_never_drop() {
        let (mut c, t0) = ctl(640, 360, 30);
        let period = Duration::from_secs(1) / 30;
        for i in 0..300u32 {
            let cap = t0 + period * i;
            // Handed over up to 10 ms late, encoded in 20 ms.
            let now = cap + Duration::from_millis(u64::from(i % 11));
            assert!(c.should_encode(cap, now), "frame {i}");
            c.handle_encoded(
                cap,
                Duration::from_millis(20),
                now + Duration::from_millis(20),
            );
        }
        assert_eq!(c.frames_dropped(), 0);
        assert_eq!(c.current().unwrap().width, 640);
    }
}
