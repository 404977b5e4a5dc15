//! Video blur: a separable box blur on all three planes of an I420 frame
//!
//! Each pass is a horizontal (prefix-sum) then a vertical (running-sum) box filter, constant
//! cost per pixel whatever the radius, with edges extended; two or three passes approach a
//! Gaussian. Chroma planes, at half resolution, use half the radius (at least 1). Scratch
//! buffers are kept between frames, so blurring frames of one size does not allocate.

use std::sync::Arc;

use crate::codec::I420Frame;

use super::{Destination, Emit, Source, Stage, TrackId, Work};

/// Largest radius accepted (larger values are clamped)
pub const MAX_RADIUS: u32 = 64;

/// A separable box blur for I420 frames
#[derive(Debug, Clone)]
pub struct Blur {
    radius: u32,
    passes: u32,
    scratch: Vec<u8>,
    sums: Vec<u16>,
    prefix: Vec<u16>,
}

impl Blur {
    /// A two-pass blur of `radius` luma pixels (clamped to [`MAX_RADIUS`]; 0 copies)
    pub fn new(radius: u32) -> Self {
        Self {
            radius: radius.min(MAX_RADIUS),
            passes: 2,
            scratch: Vec::new(),
            sums: Vec::new(),
            prefix: Vec::new(),
        }
    }

    /// The same blur with `passes` passes (1 is a plain box, 3 is close to a Gaussian;
    /// clamped to 1..=4)
    pub fn with_passes(mut self, passes: u32) -> Self {
        self.passes = passes.clamp(1, 4);
        self
    }

    /// The luma radius
    pub const fn radius(&self) -> u32 {
        self.radius
    }

    /// Blurs `src` into `dst` (resized to match if needed); returns the pixels processed
    pub fn apply(&mut self, src: &I420Frame, dst: &mut I420Frame) -> u64 {
        if dst.width != src.width || dst.height != src.height {
            *dst = I420Frame::black(src.width, src.height);
        }
        let (w, h) = (src.width as usize, src.height as usize);
        let (cw, ch) = (src.chroma_width() as usize, src.chroma_height() as usize);
        let rc = self.chroma_radius();
        let mut work = self.plane(&src.y, &mut dst.y, w, h, self.radius);
        work += self.plane(&src.u, &mut dst.u, cw, ch, rc);
        work += self.plane(&src.v, &mut dst.v, cw, ch, rc);
        work
    }

    /// Blurs `frame` in place; returns the pixels processed
    pub fn apply_in_place(&mut self, frame: &mut I420Frame) -> u64 {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (cw, ch) = (
            frame.chroma_width() as usize,
            frame.chroma_height() as usize,
        );
        let rc = self.chroma_radius();
        let mut work = self.plane_in_place(&mut frame.y, w, h, self.radius);
        work += self.plane_in_place(&mut frame.u, cw, ch, rc);
        work += self.plane_in_place(&mut frame.v, cw, ch, rc);
        work
    }

    fn chroma_radius(&self) -> u32 {
        if self.radius == 0 {
            0
        } else {
            (self.radius / 2).max(1)
        }
    }

    fn plane(&mut self, src: &[u8], dst: &mut [u8], w: usize, h: usize, r: u32) -> u64 {
        if r == 0 || w == 0 || h == 0 {
            dst.copy_from_slice(src);
            return (w * h) as u64;
        }
        self.scratch.resize(w * h, 0);
        horizontal(src, &mut self.scratch, w, r, &mut self.prefix);
        vertical(&self.scratch, dst, w, h, r, &mut self.sums);
        let first = 2 * (w * h) as u64;
        first + self.plane_in_place_passes(dst, w, h, r, self.passes - 1)
    }

    fn plane_in_place(&mut self, buf: &mut [u8], w: usize, h: usize, r: u32) -> u64 {
        if r == 0 || w == 0 || h == 0 {
            return 0;
        }
        self.plane_in_place_passes(buf, w, h, r, self.passes)
    }

    fn plane_in_place_passes(
        &mut self,
        buf: &mut [u8],
        w: usize,
        h: usize,
        r: u32,
        passes: u32,
    ) -> u64 {
        self.scratch.resize(w * h, 0);
        for _ in 0..passes {
            horizontal(buf, &mut self.scratch, w, r, &mut self.prefix);
            vertical(&self.scratch, buf, w, h, r, &mut self.sums);
        }
        2 * u64::from(passes) * (w * h) as u64
    }
}

/// The box width's reciprocal in 0.16 fixed point, and half the width for rounding
///
/// Sums stay within 16 bits (at most 255 * 129), so the averages are 16-bit multiplies
/// keeping the high half, which vectorise on every x86-64 (`pmulhuw`).
fn reciprocal(r: u32) -> (u16, u16) {
    let d = 2 * r + 1;
    ((((1u32 << 16) + d / 2) / d) as u16, (d / 2) as u16)
}

fn average(sum: u16, (inv, half): (u16, u16)) -> u8 {
    // (sum + half) <= 255 * 129 + 64 < 2^16, and the result is below 256 (see the tests).
    ((u32::from(sum + half) * u32::from(inv)) >> 16).min(255) as u8
}

/// One horizontal box pass, edges extended
///
/// A running sum along a row is a chain of dependent steps; instead each row gets a prefix
/// sum (one addition per pixel, in wrapping 16-bit arithmetic: the differences that matter
/// are below 2^16) and the window sums are differences of it, a loop that vectorises.
fn horizontal(src: &[u8], dst: &mut [u8], w: usize, r: u32, prefix: &mut Vec<u16>) {
    let inv = reciprocal(r);
    let r = r as usize;
    prefix.resize(w + 2 * r + 1, 0);
    for (row, out) in src.chunks_exact(w).zip(dst.chunks_exact_mut(w)) {
        let (first, last) = (u16::from(row[0]), u16::from(row[w - 1]));
        let mut acc = 0u16;
        prefix[0] = 0;
        let (left, rest) = prefix[1..].split_at_mut(r);
        let (middle, right) = rest.split_at_mut(w);
        for p in left {
            acc = acc.wrapping_add(first);
            *p = acc;
        }
        for (p, &v) in middle.iter_mut().zip(row) {
            acc = acc.wrapping_add(u16::from(v));
            *p = acc;
        }
        for p in right {
            acc = acc.wrapping_add(last);
            *p = acc;
        }
        // Output x covers the padded samples x..=x + 2r.
        for ((o, &hi), &lo) in out.iter_mut().zip(&prefix[2 * r + 1..]).zip(&prefix[..w]) {
            *o = average(hi.wrapping_sub(lo), inv);
        }
    }
}

/// One vertical box pass with a running sum per column (row-major, cache friendly)
fn vertical(src: &[u8], dst: &mut [u8], w: usize, h: usize, r: u32, sums: &mut Vec<u16>) {
    let inv = reciprocal(r);
    let r = r as usize;
    let last = h - 1;
    let row = |y: usize| &src[y * w..(y + 1) * w];
    sums.clear();
    sums.extend(row(0).iter().map(|&v| (r as u16 + 1) * u16::from(v)));
    for i in 1..=r {
        for (s, &v) in sums.iter_mut().zip(row(i.min(last))) {
            *s += u16::from(v);
        }
    }
    for (y, out) in dst.chunks_exact_mut(w).enumerate() {
        let add = row((y + r + 1).min(last));
        let sub = row(y.saturating_sub(r));
        for (((o, s), &a), &b) in out.iter_mut().zip(sums.iter_mut()).zip(add).zip(sub) {
            *o = average(*s, inv);
            *s = *s + u16::from(a) - u16::from(b);
        }
    }
}

/// Blurs the selected video into a track, frame by frame
#[derive(Debug)]
pub struct BlurStage {
    blur: Blur,
    track: TrackId,
}

impl BlurStage {
    /// Blurs what the stage's config selects with `blur`, onto `track`
    pub const fn new(blur: Blur, track: TrackId) -> Self {
        Self { blur, track }
    }

    /// The blur, to change it
    pub fn blur_mut(&mut self) -> &mut Blur {
        &mut self.blur
    }
}

impl Stage for BlurStage {
    fn name(&self) -> &str {
        "blur"
    }

    fn handle_video(
        &mut self,
        emit: &mut Emit<'_>,
        _source: Source<'_>,
        frame: &Arc<I420Frame>,
    ) -> Work {
        if !emit.is_wanted(self.track) {
            return Work::NONE;
        }
        let mut out = emit.video_frame(frame.width, frame.height);
        let work = self.blur.apply(frame, &mut out);
        emit.video(self.track, Destination::Track, Arc::new(out));
        Work::pixels(work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sum of squared differences between neighbours, per pixel (high-frequency energy)
    fn hf_energy(p: &[u8], w: usize, h: usize) -> f64 {
        let mut e = 0.0;
        for y in 0..h {
            for x in 0..w {
                let v = f64::from(p[y * w + x]);
                if x + 1 < w {
                    e += (f64::from(p[y * w + x + 1]) - v).powi(2);
                }
                if y + 1 < h {
                    e += (f64::from(p[(y + 1) * w + x]) - v).powi(2);
                }
            }
        }
        e / (w * h) as f64
    }

    fn noise_frame(w: u32, h: u32, seed: u64) -> I420Frame {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut f = I420Frame::black(w, h);
        for p in [&mut f.y, &mut f.u, &mut f.v] {
            for v in p.iter_mut() {
                *v = rng.u8(..);
            }
        }
        f
    }

    fn mean(p: &[u8]) -> f64 {
        p.iter().map(|&v| f64::from(v)).sum::<f64>() / p.len() as f64
    }

    #[test]
    fn high_frequency_energy_drops_on_every_plane() {
        let src = noise_frame(640, 360, 1);
        let mut dst = I420Frame::black(2, 2);
        let mut blur = Blur::new(4);
        blur.apply(&src, &mut dst);
        assert_eq!((dst.width, dst.height), (640, 360));
        for (name, a, b, w, h) in [
            ("y", &src.y, &dst.y, 640, 360),
            ("u", &src.u, &dst.u, 320, 180),
            ("v", &src.v, &dst.v, 320, 180),
        ] {
            let (ea, eb) = (hf_energy(a, w, h), hf_energy(b, w, h));
            println!(
                "{name}: high-frequency energy {ea:.0} -> {eb:.2} ({:.4})",
                eb / ea
            );
            assert!(eb < ea * 0.01, "{name}: {ea} -> {eb}");
            // Blurring keeps the average brightness and colour.
            assert!((mean(a) - mean(b)).abs() < 1.0);
        }
    }

    #[test]
    fn flat_frames_stay_flat_and_edges_are_smoothed() {
        let mut f = I420Frame::black(64, 48);
        f.y.fill(200);
        f.u.fill(90);
        let before = f.clone();
        Blur::new(5).apply_in_place(&mut f);
        assert_eq!(f, before);
        // A vertical edge becomes a ramp of width about 2 * radius * passes.
        let mut f = I420Frame::black(64, 8);
        for row in f.y.chunks_exact_mut(64) {
            row[32..].fill(235);
        }
        let mut out = I420Frame::black(64, 8);
        Blur::new(3).with_passes(1).apply(&f, &mut out);
        let row = &out.y[..64];
        assert_eq!(row[28], 16);
        assert_eq!(row[35], 235);
        assert!(row[30] > 16 && row[30] < 235);
        assert!(row.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn small_and_odd_frames_do_not_panic() {
        for (w, h) in [(1, 1), (2, 1), (3, 5), (7, 3), (161, 91)] {
            let src = noise_frame(w, h, u64::from(w * h));
            let mut out = I420Frame::black(w, h);
            for r in [0, 1, 3, MAX_RADIUS + 10] {
                Blur::new(r).apply(&src, &mut out);
                out.check().unwrap();
                let mut inplace = src.clone();
                Blur::new(r).apply_in_place(&mut inplace);
                assert_eq!(inplace, out, "{w}x{h} r{r}");
            }
        }
    }

    #[test]
    fn averages_are_exact_for_flat_input_at_every_radius() {
        for r in 1..=MAX_RADIUS {
            let inv = reciprocal(r);
            let d = 2 * r as u16 + 1;
            for v in 0..=255u16 {
                assert_eq!(u16::from(average(v * d, inv)), v, "r {r} v {v}");
            }
        }
    }

    #[test]
    fn radius_zero_copies() {
        let src = noise_frame(32, 18, 9);
        let mut out = I420Frame::black(32, 18);
        Blur::new(0).apply(&src, &mut out);
        assert_eq!(out, src);
    }
}
