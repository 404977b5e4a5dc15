//! Deterministic test sources and quality metrics
//!
//! [`Tone`] and [`TestPattern`] feed the CLI's `--audio tone` / `--video testsrc` and the
//! tests ([`SensorNoise`] makes the pattern cost what camera video does); [`tone_snr_db`] and
//! [`psnr`] measure what came out of a codec round trip.

use std::f64::consts::TAU;

use super::{I420Frame, PcmFrame};

/// A sine tone generator (440 Hz by default) with continuous phase across calls
#[derive(Debug, Clone)]
pub struct Tone {
    sample_rate: u32,
    channels: u16,
    frequency: f64,
    amplitude: f64,
    phase: f64,
}

impl Tone {
    /// Default frequency in Hz
    pub const FREQUENCY: f64 = 440.0;

    /// Default peak amplitude: a quarter of full scale (-12 dBFS)
    pub const AMPLITUDE: i16 = 8192;

    /// A 440 Hz tone at -12 dBFS, the same on every channel
    ///
    /// `sample_rate` and `channels` must be non-zero.
    pub fn new(sample_rate: u32, channels: u16) -> Self {
        Self {
            sample_rate: sample_rate.max(1),
            channels: channels.max(1),
            frequency: Self::FREQUENCY,
            amplitude: f64::from(Self::AMPLITUDE),
            phase: 0.0,
        }
    }

    /// The same generator at another frequency, in Hz
    pub fn with_frequency(mut self, hz: f64) -> Self {
        self.frequency = hz;
        self
    }

    /// The same generator at another peak amplitude
    pub fn with_amplitude(mut self, amplitude: i16) -> Self {
        self.amplitude = f64::from(amplitude);
        self
    }

    /// Fills `out` with interleaved samples; a trailing partial sample group is left alone
    pub fn fill(&mut self, out: &mut [i16]) {
        let step = TAU * self.frequency / f64::from(self.sample_rate);
        for group in out.chunks_exact_mut(usize::from(self.channels)) {
            // Saturating float-to-int cast; the amplitude is within i16 anyway.
            let s = (self.amplitude * self.phase.sin()).round() as i16;
            group.fill(s);
            self.phase = (self.phase + step) % TAU;
        }
    }

    /// The next `samples_per_channel` samples, interleaved
    pub fn next_samples(&mut self, samples_per_channel: usize) -> Vec<i16> {
        let mut out = vec![0; samples_per_channel * usize::from(self.channels)];
        self.fill(&mut out);
        out
    }

    /// The next `samples_per_channel` samples as a frame
    pub fn next_frame(&mut self, samples_per_channel: usize) -> PcmFrame {
        PcmFrame {
            samples: self.next_samples(samples_per_channel),
            channels: self.channels,
            sample_rate: self.sample_rate,
        }
    }
}

/// Signal-to-noise ratio of the `freq` component of one channel of audio, in dB
///
/// Fits `a sin + b cos` at `freq` by least squares (so any phase and delay are fine), then
/// compares the power of the fit with the power of everything else. Skip a codec's start-up
/// before measuring. Returns `f64::INFINITY` for a pure tone and `f64::NEG_INFINITY` when
/// there is no tone (or no samples).
pub fn tone_snr_db(samples: &[i16], sample_rate: u32, freq: f64) -> f64 {
    let step = TAU * freq / f64::from(sample_rate.max(1));
    // Normal equations of the two-column least-squares fit.
    let (mut ss, mut sc, mut cc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (n, &y) in samples.iter().enumerate() {
        let (s, c) = (step * n as f64).sin_cos();
        let y = f64::from(y);
        ss += s * s;
        sc += s * c;
        cc += c * c;
        ys += y * s;
        yc += y * c;
    }
    let det = ss * cc - sc * sc;
    if samples.is_empty() || det.abs() < 1e-9 {
        return f64::NEG_INFINITY;
    }
    let a = (ys * cc - yc * sc) / det;
    let b = (yc * ss - ys * sc) / det;
    let (mut signal, mut noise) = (0.0, 0.0);
    for (n, &y) in samples.iter().enumerate() {
        let (s, c) = (step * n as f64).sin_cos();
        let fit = a * s + b * c;
        signal += fit * fit;
        noise += (f64::from(y) - fit).powi(2);
    }
    if signal == 0.0 {
        return f64::NEG_INFINITY;
    }
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (signal / noise).log10()
}

/// Peak signal-to-noise ratio between two I420 frames, in dB, over all three planes
///
/// `10 log10(255² / MSE)` with the mean taken over every Y, U and V sample (libyuv's
/// `I420Psnr`). Identical frames give `f64::INFINITY`; frames of different sizes give 0.
pub fn psnr(a: &I420Frame, b: &I420Frame) -> f64 {
    if a.width != b.width
        || a.height != b.height
        || a.y.len() != b.y.len()
        || a.u.len() != b.u.len()
        || a.v.len() != b.v.len()
    {
        return 0.0;
    }
    let sse = |p: &[u8], q: &[u8]| -> u64 {
        p.iter()
            .zip(q)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)).pow(2))
            .sum()
    };
    let total = sse(&a.y, &b.y) + sse(&a.u, &b.u) + sse(&a.v, &b.v);
    let count = (a.y.len() + a.u.len() + a.v.len()) as f64;
    if total == 0 {
        return f64::INFINITY;
    }
    let mse = total as f64 / count;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// Noise like a camera sensor's, added to test frames: ±`luma` levels on Y and ±`chroma` on
/// U and V, from a fixed xorshift sequence (the same frames on every run). It costs an
/// encoder far more bits than the clean pattern, as camera video does.
#[derive(Debug, Clone)]
pub struct SensorNoise {
    state: u64,
}

impl Default for SensorNoise {
    fn default() -> Self {
        Self {
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl SensorNoise {
    /// Adds noise to `frame`, Y first, then U and V (none drawn for a `chroma` of 0)
    pub fn apply(&mut self, frame: &mut I420Frame, luma: u8, chroma: u8) {
        for p in frame.y.iter_mut() {
            *p = (i32::from(*p) + self.next(luma)).clamp(0, 255) as u8;
        }
        if chroma > 0 {
            for p in frame.u.iter_mut().chain(frame.v.iter_mut()) {
                *p = (i32::from(*p) + self.next(chroma)).clamp(0, 255) as u8;
            }
        }
    }

    /// A value in `-amp..=amp`
    fn next(&mut self, amp: u8) -> i32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % (2 * u64::from(amp) + 1)) as i32 - i32::from(amp)
    }
}

/// A moving I420 test pattern
///
/// Top two thirds: seven 75 % colour bars with a white box bouncing across them. Bottom third:
/// a drifting zone-plate texture (detail for the encoder to work on) and the frame counter as
/// 16 black/white blocks, most significant bit first. Every frame is a pure function of its
/// index, so a test can regenerate what was sent.
#[derive(Debug, Clone)]
pub struct TestPattern {
    width: u32,
    height: u32,
    index: u64,
}

/// 75 % colour bars in BT.601 limited-range YCbCr: white, yellow, cyan, green, magenta, red, blue
const BARS: [[u8; 3]; 7] = [
    [180, 128, 128],
    [162, 44, 142],
    [131, 156, 44],
    [112, 72, 58],
    [84, 184, 198],
    [65, 100, 212],
    [35, 212, 114],
];

impl TestPattern {
    /// A pattern of `width` x `height` pixels, starting at frame 0
    ///
    /// Sizes are clamped to at least 2 x 2; use even sizes for the encoders.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width: width.max(2),
            height: height.max(2),
            index: 0,
        }
    }

    /// Width in pixels
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Index of the frame [`next_frame`](Self::next_frame) returns next
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The next frame; advances the index
    pub fn next_frame(&mut self) -> I420Frame {
        let frame = self.frame(self.index);
        self.index += 1;
        frame
    }

    /// Frame number `index`, without advancing
    ///
    /// Built a row at a time (the box and the layout are worked out once per frame, the
    /// zone plate's cosine comes from a table): a 640x360 frame costs a fraction of a
    /// millisecond, small beside encoding it.
    pub fn frame(&self, index: u64) -> I420Frame {
        let (w, h) = (self.width, self.height);
        let mut frame = I420Frame::black(w, h);
        let cw = frame.chroma_width() as usize;
        let layout = Layout::new(w, h, index);
        let zone = zone_luma();
        let bars: Vec<[u8; 3]> = (0..w)
            .map(|x| BARS[(x as usize * BARS.len() / w as usize).min(BARS.len() - 1)])
            .collect();
        let mut row = vec![[0u8; 3]; w as usize];
        for y in 0..h {
            layout.row(index, y, &bars, &zone, &mut row);
            let luma = &mut frame.y[(y * w) as usize..((y + 1) * w) as usize];
            for (l, p) in luma.iter_mut().zip(&row) {
                *l = p[0];
            }
            if y % 2 == 0 {
                let c = (y / 2) as usize * cw;
                for (i, p) in row.iter().step_by(2).enumerate() {
                    frame.u[c + i] = p[1];
                    frame.v[c + i] = p[2];
                }
            }
        }
        frame
    }

    /// One pixel of frame `index`, worked out on its own (the pattern's definition, which
    /// [`frame`](Self::frame) must reproduce)
    #[cfg(test)]
    fn pixel(&self, index: u64, x: u32, y: u32) -> [u8; 3] {
        let (w, h) = (self.width, self.height);
        let bars_h = h * 2 / 3;
        let counter_h = (h / 24).max(1);
        if y >= h - counter_h {
            let bit = 15 - (x * 16 / w).min(15);
            let on = (index >> bit) & 1 == 1;
            return if on { [235, 128, 128] } else { [16, 128, 128] };
        }
        let side = (h / 5).max(2);
        let speed = u64::from((w / 160).max(1)) * 2;
        let bx = bounce(index * speed, w.saturating_sub(side));
        let by = bounce(index * speed / 2, bars_h.saturating_sub(side));
        if (bx..bx + side).contains(&x) && (by..by + side).contains(&y) {
            let edge = x - bx < 2 || y - by < 2 || bx + side - x <= 2 || by + side - y <= 2;
            return if edge {
                [16, 128, 128]
            } else {
                [235, 128, 128]
            };
        }
        if y < bars_h {
            return BARS[(x as usize * BARS.len() / w as usize).min(BARS.len() - 1)];
        }
        let (dx, dy) = (
            i64::from(x) - i64::from(w / 2) - index as i64 * 2,
            i64::from(y) - i64::from(h),
        );
        let r2 = (dx * dx + dy * dy) as u64 * 1024 / u64::from(w.max(1) * 4);
        let phase = (r2 % 256) as f64 / 256.0 * TAU;
        let luma = 126.0 + 90.0 * phase.cos();
        let cb = 128 + ((x / 8 + index as u32) % 32) as i32 - 16;
        [luma as u8, cb as u8, 128]
    }
}

/// Where the parts of one frame of the pattern lie
struct Layout {
    w: u32,
    h: u32,
    /// The colour bars take the rows above this
    bars_h: u32,
    /// The frame counter takes this many rows at the bottom
    counter_h: u32,
    /// The bouncing box: its side and top-left corner
    side: u32,
    bx: u32,
    by: u32,
}

impl Layout {
    fn new(w: u32, h: u32, index: u64) -> Self {
        let bars_h = h * 2 / 3;
        // Frame counter: 16 blocks along the bottom edge.
        let counter_h = (h / 24).max(1);
        // Bouncing box, 1/5 of the height, over the bars.
        let side = (h / 5).max(2);
        let speed = u64::from((w / 160).max(1)) * 2;
        let bx = bounce(index * speed, w.saturating_sub(side));
        let by = bounce(index * speed / 2, bars_h.saturating_sub(side));
        Self {
            w,
            h,
            bars_h,
            counter_h,
            side,
            bx,
            by,
        }
    }

    /// The box's pixel at (x, y), if the box covers it
    fn box_pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        let (bx, by, side) = (self.bx, self.by, self.side);
        if !((bx..bx + side).contains(&x) && (by..by + side).contains(&y)) {
            return None;
        }
        let edge = x - bx < 2 || y - by < 2 || bx + side - x <= 2 || by + side - y <= 2;
        Some(if edge {
            [16, 128, 128]
        } else {
            [235, 128, 128]
        })
    }

    /// Row `y` of frame `index` into `row` (`w` pixels)
    fn row(&self, index: u64, y: u32, bars: &[[u8; 3]], zone: &[u8; 256], row: &mut [[u8; 3]]) {
        let w = self.w;
        if y >= self.h - self.counter_h {
            for (x, p) in (0..w).zip(row.iter_mut()) {
                *p = counter_pixel(index, x, w);
            }
            return;
        }
        if y < self.bars_h {
            row.copy_from_slice(bars);
        } else {
            for (x, p) in (0..w).zip(row.iter_mut()) {
                *p = zone_pixel(index, x, y, w, self.h, zone);
            }
        }
        if (self.by..self.by + self.side).contains(&y) {
            for x in self.bx..(self.bx + self.side).min(w) {
                if let Some(p) = self.box_pixel(x, y) {
                    row[x as usize] = p;
                }
            }
        }
    }
}

/// The frame counter's pixel in column `x`: frame `index` in binary, 16 blocks
fn counter_pixel(index: u64, x: u32, w: u32) -> [u8; 3] {
    let bit = 15 - (x * 16 / w).min(15);
    let on = (index >> bit) & 1 == 1;
    if on {
        [235, 128, 128]
    } else {
        [16, 128, 128]
    }
}

/// Zone plate drifting right: luma follows cos(r²), scaled to the frame size
fn zone_pixel(index: u64, x: u32, y: u32, w: u32, h: u32, zone: &[u8; 256]) -> [u8; 3] {
    let (dx, dy) = (
        i64::from(x) - i64::from(w / 2) - index as i64 * 2,
        i64::from(y) - i64::from(h),
    );
    let r2 = (dx * dx + dy * dy) as u64 * 1024 / u64::from(w.max(1) * 4);
    let luma = zone[(r2 % 256) as usize];
    let cb = 128 + ((x / 8 + index as u32) % 32) as i32 - 16;
    [luma, cb as u8, 128]
}

/// The zone plate's luma for each of its 256 phases
fn zone_luma() -> [u8; 256] {
    std::array::from_fn(|k| {
        let phase = k as f64 / 256.0 * TAU;
        (126.0 + 90.0 * phase.cos()) as u8
    })
}

/// Position `t` along a back-and-forth path over `0..=span`
fn bounce(t: u64, span: u32) -> u32 {
    if span == 0 {
        return 0;
    }
    let span = u64::from(span);
    let t = t % (2 * span);
    (if t <= span { t } else { 2 * span - t }) as u32
}

/// One frame from [`TestSources`]
#[derive(Debug, Clone)]
pub enum SourceFrame {
    /// One 20 ms frame of interleaved PCM at 48 kHz
    Audio(Vec<i16>),
    /// One video frame
    Video(I420Frame),
}

/// The CLI's and tests' media sources on a schedule: a 440 Hz tone in 20 ms frames and a
/// moving test pattern at a frame rate, sans-IO
///
/// Call [`start`](Self::start) once, then at [`poll_timeout`](Self::poll_timeout) call
/// [`poll_frame`](Self::poll_frame) until it returns `None`. Each frame carries its
/// scheduled capture instant. A caller that falls more than [`MAX_LAG`] behind skips the
/// missed frames instead of sending a burst.
#[derive(Debug, Clone)]
pub struct TestSources {
    tone: Option<Tone>,
    pattern: Option<TestPattern>,
    fps: u32,
    start: Option<std::time::Instant>,
    audio_n: u64,
    video_n: u64,
}

/// How far behind schedule [`TestSources`] may fall before it skips frames
pub const MAX_LAG: std::time::Duration = std::time::Duration::from_millis(200);

impl TestSources {
    /// Sources for a tone with `audio_channels` (0 = no audio) and, with `video`, a pattern
    /// of (width, height, fps)
    pub fn new(audio_channels: u16, video: Option<(u32, u32, u32)>) -> Self {
        Self {
            tone: (audio_channels > 0).then(|| Tone::new(48_000, audio_channels)),
            pattern: video.map(|(w, h, _)| TestPattern::new(w, h)),
            fps: video.map_or(30, |(_, _, f)| f.max(1)),
            start: None,
            audio_n: 0,
            video_n: 0,
        }
    }

    /// Starts the schedule at `now`
    pub fn start(&mut self, now: std::time::Instant) {
        self.start.get_or_insert(now);
    }

    fn audio_at(&self, n: u64) -> Option<std::time::Instant> {
        self.tone.as_ref()?;
        Some(self.start? + std::time::Duration::from_millis(20 * n))
    }

    fn video_at(&self, n: u64) -> Option<std::time::Instant> {
        self.pattern.as_ref()?;
        Some(self.start? + std::time::Duration::from_nanos(n * 1_000_000_000 / self.fps as u64))
    }

    /// When the next frame is due (`None` before `start` or without sources)
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        match (self.audio_at(self.audio_n), self.video_at(self.video_n)) {
            (Some(a), Some(v)) => Some(a.min(v)),
            (a, v) => a.or(v),
        }
    }

    /// The next frame due at `now`, with its capture instant
    pub fn poll_frame(
        &mut self,
        now: std::time::Instant,
    ) -> Option<(std::time::Instant, SourceFrame)> {
        // Skip what is hopelessly late rather than bursting it out.
        while self
            .audio_at(self.audio_n)
            .is_some_and(|t| t + MAX_LAG < now)
        {
            self.audio_n += 1;
            if let Some(t) = &mut self.tone {
                t.next_samples(960);
            }
        }
        while self
            .video_at(self.video_n)
            .is_some_and(|t| t + MAX_LAG < now)
        {
            self.video_n += 1;
        }
        let a = self.audio_at(self.audio_n).filter(|t| *t <= now);
        let v = self.video_at(self.video_n).filter(|t| *t <= now);
        match (a, v) {
            (Some(a), v) if v.is_none_or(|v| a <= v) => {
                self.audio_n += 1;
                let pcm = self.tone.as_mut()?.next_samples(960);
                Some((a, SourceFrame::Audio(pcm)))
            }
            (_, Some(v)) => {
                self.video_n += 1;
                let f = self.pattern.as_mut()?.next_frame();
                Some((v, SourceFrame::Video(f)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_is_continuous_and_pure() {
        let mut tone = Tone::new(48_000, 2);
        let mut mono = Vec::new();
        for _ in 0..10 {
            // Odd chunk sizes: the phase must carry over.
            let chunk = tone.next_frame(397);
            assert_eq!(chunk.samples.len(), 794);
            mono.extend(chunk.channel(1));
        }
        let snr = tone_snr_db(&mono, 48_000, 440.0);
        // Only 16-bit rounding noise: about 6 dB per bit above the -12 dBFS level.
        assert!(snr > 80.0, "{snr}");
        assert!(mono.iter().all(|s| s.unsigned_abs() <= 8192));
        assert!(mono.iter().any(|s| s.unsigned_abs() > 8100));
    }

    #[test]
    fn snr_sees_noise_and_other_tones() {
        let clean = Tone::new(48_000, 1).next_samples(48_000);
        let other = Tone::new(48_000, 1)
            .with_frequency(1000.0)
            .next_samples(48_000);
        // Equal power of another tone: 0 dB.
        let mixed: Vec<i16> = clean
            .iter()
            .zip(&other)
            .map(|(a, b)| a / 2 + b / 2)
            .collect();
        assert!(tone_snr_db(&mixed, 48_000, 440.0).abs() < 0.5);
        // A tenth of the amplitude: 20 dB.
        let weak: Vec<i16> = clean.iter().zip(&other).map(|(a, b)| a + b / 10).collect();
        assert!((tone_snr_db(&weak, 48_000, 440.0) - 20.0).abs() < 0.5);
        // Delay does not matter.
        assert!(tone_snr_db(&clean[37..], 48_000, 440.0) > 80.0);
        assert_eq!(tone_snr_db(&[], 48_000, 440.0), f64::NEG_INFINITY);
        assert_eq!(tone_snr_db(&[0; 100], 48_000, 440.0), f64::NEG_INFINITY);
    }

    #[test]
    fn frames_match_the_pattern_pixel_by_pixel() {
        for (w, h) in [(640, 360), (160, 120), (2, 2), (33, 17), (8, 40)] {
            let p = TestPattern::new(w, h);
            for index in [0, 1, 7, 100, 1001, 65_537] {
                let f = p.frame(index);
                let cw = f.chroma_width();
                for y in 0..p.height() {
                    for x in 0..p.width() {
                        let [l, cb, cr] = p.pixel(index, x, y);
                        assert_eq!(
                            f.y[(y * p.width() + x) as usize],
                            l,
                            "{w}x{h} #{index} ({x}, {y})"
                        );
                        if x % 2 == 0 && y % 2 == 0 {
                            let c = ((y / 2) * cw + x / 2) as usize;
                            assert_eq!((f.u[c], f.v[c]), (cb, cr), "{w}x{h} #{index} ({x}, {y})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pattern_moves_and_counts() {
        let mut p = TestPattern::new(320, 180);
        let f0 = p.next_frame();
        let f1 = p.next_frame();
        f0.check().unwrap();
        assert_eq!((f0.y.len(), f0.u.len()), (320 * 180, 160 * 90));
        assert_ne!(f0, f1);
        assert_eq!(p.frame(1), f1);
        assert_eq!(p.index(), 2);
        // Counter blocks: frame 1 lights the last block only.
        let last_row = &f1.y[179 * 320..];
        assert_eq!(last_row[319], 235);
        assert_eq!(last_row[0], 16);
        // Odd sizes work too.
        TestPattern::new(33, 17).next_frame().check().unwrap();
    }

    #[test]
    fn psnr_of_known_error() {
        let a = TestPattern::new(64, 32).next_frame();
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        // Off by 1 everywhere: MSE 1, PSNR = 20 log10(255) = 48.13 dB.
        let mut c = a.clone();
        for p in c.y.iter_mut().chain(&mut c.u).chain(&mut c.v) {
            *p = if *p < 255 { *p + 1 } else { *p - 1 };
        }
        assert!((psnr(&a, &c) - 48.13).abs() < 0.01, "{}", psnr(&a, &c));
        assert_eq!(psnr(&a, &TestPattern::new(32, 32).next_frame()), 0.0);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // reason: an anchor for the schedule
    fn sources_follow_their_schedule_and_skip_when_far_behind() {
        let t0 = std::time::Instant::now();
        let mut s = TestSources::new(1, Some((64, 36, 30)));
        assert!(s.poll_timeout().is_none());
        s.start(t0);
        let mut audio = 0;
        let mut video = 0;
        let end = t0 + std::time::Duration::from_secs(1);
        while let Some(t) = s.poll_timeout().filter(|t| *t < end) {
            while let Some((cap, f)) = s.poll_frame(t) {
                assert!(cap <= t);
                match f {
                    SourceFrame::Audio(p) => {
                        assert_eq!(p.len(), 960);
                        audio += 1;
                    }
                    SourceFrame::Video(_) => video += 1,
                }
            }
        }
        assert_eq!((audio, video), (50, 30));
        // Two seconds late: frames older than MAX_LAG are skipped, not burst out.
        let late = end + std::time::Duration::from_secs(2);
        let mut burst = 0;
        while s.poll_frame(late).is_some() {
            burst += 1;
        }
        assert!(burst <= 20, "{burst}");
    }
}
