//! Downscaling of I420 frames, for sending video smaller than it was captured
//!
//! An area ("box") filter: each output sample is the mean of the input area it covers, with
//! fractional weights at the edges, applied separably (rows, then columns) in fixed point.
//! For the integer ratios (2:1, 4:1) that is the plain box average; for 4:3 or 8:3 it is the
//! exact area mean, which aliases less than bilinear sampling at these ratios. Upscaling is
//! not what it is for (it degenerates to nearest-neighbour), but works.

use super::I420Frame;

/// Fixed-point weights sum to `1 << WEIGHT_BITS`
const WEIGHT_BITS: u32 = 12;

/// Bits of fraction kept between the horizontal and the vertical pass
const MID_BITS: u32 = 4;

/// The taps of one output sample along one axis: the first input index and the weights
#[derive(Debug, Clone, Default)]
struct Taps {
    /// First input index of each output sample
    start: Vec<u32>,
    /// Weights of each output sample, `width` of them per sample (zero-padded)
    weights: Vec<u16>,
    /// Taps per output sample
    width: usize,
}

impl Taps {
    /// Area-filter taps for scaling `from` samples to `to`
    fn new(from: u32, to: u32) -> Self {
        let (from, to) = (u64::from(from.max(1)), u64::from(to.max(1)));
        // In units of 1/to of an input sample, output sample `d` covers [d*from, (d+1)*from).
        let width = from.div_ceil(to) as usize + 1;
        let mut taps = Self {
            start: Vec::with_capacity(to as usize),
            weights: vec![0; to as usize * width],
            width,
        };
        let unit = 1u64 << WEIGHT_BITS;
        for d in 0..to {
            let (lo, hi) = (d * from, (d + 1) * from);
            let first = lo / to;
            taps.start.push(first as u32);
            let row = &mut taps.weights[d as usize * width..][..width];
            let mut total = 0;
            let (mut biggest, mut biggest_w) = (0, 0);
            for (k, w) in row.iter_mut().enumerate() {
                let i = first + k as u64;
                if i >= from {
                    break;
                }
                let overlap = hi.min((i + 1) * to).saturating_sub(lo.max(i * to));
                // Rounded share of `unit`; the rounding error goes to the biggest tap below.
                *w = ((overlap * unit + from / 2) / from) as u16;
                total += u64::from(*w);
                if *w > biggest_w {
                    (biggest, biggest_w) = (k, *w);
                }
            }
            let fix = unit as i64 - total as i64;
            row[biggest] = (i64::from(row[biggest]) + fix) as u16;
        }
        taps
    }

    fn row(&self, d: usize) -> (usize, &[u16]) {
        (
            self.start[d] as usize,
            &self.weights[d * self.width..][..self.width],
        )
    }
}

/// Reusable state for scaling frames of one size to another
///
/// Keeps the filter taps and the intermediate buffer, so scaling a stream allocates only
/// when the sizes change.
#[derive(Debug, Clone, Default)]
pub struct Scaler {
    key: (u32, u32, u32, u32),
    luma: (Taps, Taps),
    chroma: (Taps, Taps),
    mid: Vec<u16>,
    acc: Vec<u32>,
}

impl Scaler {
    /// A scaler; sizes are taken from the frames it is given
    pub fn new() -> Self {
        Self::default()
    }

    /// Scales `src` to `width` x `height` into `out`, reusing `out`'s buffers
    ///
    /// `src` must be a consistent frame ([`I420Frame::check`]); `width` and `height` are at
    /// least 1.
    pub fn scale_into(&mut self, src: &I420Frame, width: u32, height: u32, out: &mut I420Frame) {
        let (width, height) = (width.max(1), height.max(1));
        let key = (src.width, src.height, width, height);
        if self.key != key || self.luma.0.start.is_empty() {
            self.key = key;
            self.luma = (Taps::new(src.width, width), Taps::new(src.height, height));
            self.chroma = (
                Taps::new(src.chroma_width(), width.div_ceil(2)),
                Taps::new(src.chroma_height(), height.div_ceil(2)),
            );
        }
        out.width = width;
        out.height = height;
        let (cw, ch) = (out.chroma_width() as usize, out.chroma_height() as usize);
        out.y.resize(width as usize * height as usize, 0);
        out.u.resize(cw * ch, 0);
        out.v.resize(cw * ch, 0);
        let (sw, scw) = (src.width as usize, src.chroma_width() as usize);
        let bufs = (&mut self.mid, &mut self.acc);
        scale_plane(&src.y, sw, &self.luma, bufs, &mut out.y);
        let bufs = (&mut self.mid, &mut self.acc);
        scale_plane(&src.u, scw, &self.chroma, bufs, &mut out.u);
        let bufs = (&mut self.mid, &mut self.acc);
        scale_plane(&src.v, scw, &self.chroma, bufs, &mut out.v);
    }

    /// Scales `src` to `width` x `height` into a new frame
    pub fn scale(&mut self, src: &I420Frame, width: u32, height: u32) -> I420Frame {
        let mut out = I420Frame {
            width: 0,
            height: 0,
            y: Vec::new(),
            u: Vec::new(),
            v: Vec::new(),
        };
        self.scale_into(src, width, height, &mut out);
        out
    }
}

/// Scales one plane of `src_width` columns: horizontal pass into `mid`, vertical into `dst`
fn scale_plane(
    src: &[u8],
    src_width: usize,
    (h, v): &(Taps, Taps),
    (mid, acc): (&mut Vec<u16>, &mut Vec<u32>),
    dst: &mut [u8],
) {
    let dst_width = h.start.len();
    let src_rows = src.len() / src_width.max(1);
    let dst_rows = v.start.len();
    if src_width == 2 * dst_width && src_rows == 2 * dst_rows {
        halve(src, src_width, dst);
    } else if src_width == 4 * dst_width && src_rows == 4 * dst_rows {
        // Twice 2:1: the 4x4 mean up to rounding, several times faster than the taps.
        let mut half = vec![0u8; (src_width / 2) * (src_rows / 2)];
        halve(src, src_width, &mut half);
        halve(&half, src_width / 2, dst);
    } else {
        filter(src, src_width, (h, v), (mid, acc), dst);
    }
}

/// The general case of [`scale_plane`]
fn filter(
    src: &[u8],
    src_width: usize,
    (h, v): (&Taps, &Taps),
    (mid, acc): (&mut Vec<u16>, &mut Vec<u32>),
    dst: &mut [u8],
) {
    let dst_width = h.start.len();
    let src_rows = src.len() / src_width.max(1);
    mid.clear();
    mid.resize(dst_width * src_rows, 0);
    let shift = WEIGHT_BITS - MID_BITS;
    for (row, out) in src
        .chunks_exact(src_width)
        .zip(mid.chunks_exact_mut(dst_width))
    {
        for (d, o) in out.iter_mut().enumerate() {
            let (first, weights) = h.row(d);
            let acc: u32 = weights
                .iter()
                .zip(&row[first..])
                .map(|(&w, &p)| u32::from(w) * u32::from(p))
                .sum();
            *o = ((acc + (1 << (shift - 1))) >> shift) as u16;
        }
    }
    let total = WEIGHT_BITS + MID_BITS;
    for (d, out) in dst.chunks_exact_mut(dst_width).enumerate() {
        let (first, weights) = v.row(d);
        // Columns in the inner loop: contiguous rows of `mid`, which the compiler vectorises.
        acc.clear();
        acc.resize(dst_width, 0);
        for (k, &w) in weights.iter().enumerate() {
            if w == 0 || first + k >= src_rows {
                continue;
            }
            let line = &mid[(first + k) * dst_width..][..dst_width];
            for (a, &m) in acc.iter_mut().zip(line) {
                *a += u32::from(w) * u32::from(m);
            }
        }
        for (o, a) in out.iter_mut().zip(acc.iter()) {
            *o = ((a + (1 << (total - 1))) >> total).min(255) as u8;
        }
    }
}

/// The 2:1 case of the area filter: each output sample is the rounded mean of a 2x2 block
fn halve(src: &[u8], src_width: usize, dst: &mut [u8]) {
    let dst_width = src_width / 2;
    for (rows, out) in src
        .chunks_exact(2 * src_width)
        .zip(dst.chunks_exact_mut(dst_width))
    {
        let (top, bottom) = rows.split_at(src_width);
        for ((o, t), b) in out
            .iter_mut()
            .zip(top.chunks_exact(2))
            .zip(bottom.chunks_exact(2))
        {
            let sum = u16::from(t[0]) + u16::from(t[1]) + u16::from(b[0]) + u16::from(b[1]);
            *o = ((sum + 2) >> 2) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testsrc::{psnr, TestPattern};

    #[test]
    fn taps_cover_the_input_once() {
        for (from, to) in [
            (640, 480),
            (640, 320),
            (640, 160),
            (360, 270),
            (90, 45),
            (7, 3),
        ] {
            let taps = Taps::new(from, to);
            let mut coverage = vec![0u64; from as usize];
            for d in 0..to as usize {
                let (first, w) = taps.row(d);
                assert_eq!(
                    w.iter().map(|&w| u64::from(w)).sum::<u64>(),
                    1 << WEIGHT_BITS,
                    "{from}->{to} sample {d}"
                );
                for (k, &w) in w.iter().enumerate() {
                    if w > 0 {
                        coverage[first + k] += u64::from(w);
                    }
                }
            }
            // Every input sample contributes in total to/from of an output sample.
            let expect = (1u64 << WEIGHT_BITS) * u64::from(to) / u64::from(from);
            for c in coverage {
                assert!(c.abs_diff(expect) <= 3, "{from}->{to}: {c} vs {expect}");
            }
        }
    }

    #[test]
    fn flat_stays_flat_and_halving_is_a_box_average() {
        let mut s = Scaler::new();
        let flat = I420Frame::black(64, 36);
        let out = s.scale(&flat, 48, 26);
        out.check().unwrap();
        assert!(out.y.iter().all(|&p| p == 16) && out.u.iter().all(|&p| p == 128));

        let mut f = I420Frame::black(4, 2);
        f.y = vec![0, 10, 20, 30, 40, 50, 60, 71];
        let out = s.scale(&f, 2, 1);
        // (0+10+40+50)/4 = 25, (20+30+60+71)/4 = 45.25
        assert_eq!(out.y, [25, 45]);
        // The 2:1 fast path and the general filter agree.
        let big = TestPattern::new(64, 36).frame(3);
        let fast = s.scale(&big, 32, 18);
        let (h, v) = (Taps::new(64, 32), Taps::new(36, 18));
        let mut general = vec![0; 32 * 18];
        filter(
            &big.y,
            64,
            (&h, &v),
            (&mut Vec::new(), &mut Vec::new()),
            &mut general,
        );
        for (a, b) in fast.y.iter().zip(&general) {
            assert!(a.abs_diff(*b) <= 1, "{a} vs {b}");
        }
        // And the 4:1 one.
        let fast = s.scale(&big, 16, 8);
        let (h, v) = (Taps::new(64, 16), Taps::new(36, 9));
        let mut general = vec![0; 16 * 9];
        filter(
            &big.y,
            64,
            (&h, &v),
            (&mut Vec::new(), &mut Vec::new()),
            &mut general,
        );
        assert_eq!(fast.height, 8);
        let fast = s.scale(&big, 16, 9);
        for (a, b) in fast.y.iter().zip(&general) {
            assert!(a.abs_diff(*b) <= 1, "{a} vs {b}");
        }
    }

    #[test]
    fn a_ramp_lands_on_the_box_centres() {
        // The area mean of a linear ramp is its value at the centre of the area.
        let (w, h) = (640u32, 360u32);
        let mut f = I420Frame::black(w, h);
        for y in 0..h {
            for x in 0..w {
                f.y[(y * w + x) as usize] = ((x + y) / 4) as u8;
            }
        }
        let mut s = Scaler::new();
        for (dw, dh) in [(480, 270), (320, 180), (240, 134), (160, 90)] {
            let out = s.scale(&f, dw, dh);
            out.check().unwrap();
            let (rx, ry) = (f64::from(w) / f64::from(dw), f64::from(h) / f64::from(dh));
            let mut worst = 0.0f64;
            for y in 0..dh {
                for x in 0..dw {
                    let cx = (f64::from(x) + 0.5) * rx - 0.5;
                    let cy = (f64::from(y) + 0.5) * ry - 0.5;
                    // The source was floored to integers: compare against the same.
                    let want = (cx + cy) / 4.0 - 0.375;
                    let got = f64::from(out.y[(y * dw + x) as usize]);
                    worst = worst.max((got - want).abs());
                }
            }
            assert!(worst <= 1.0, "{dw}x{dh}: off by {worst:.2}");
        }
    }

    #[test]
    fn averaging_beats_point_sampling_on_detail() {
        // Halved and scaled back up by pixel repetition, the test pattern (whose zone plate
        // is all fine detail) comes back closer from the area filter than from dropping
        // every other pixel, which aliases.
        let big = TestPattern::new(640, 360).frame(5);
        let area = Scaler::new().scale(&big, 320, 180);
        let back = |pick: &dyn Fn(usize, usize) -> u8| {
            let mut f = big.clone();
            for y in 0..360 {
                for x in 0..640 {
                    f.y[y * 640 + x] = pick(x / 2, y / 2);
                }
            }
            psnr(&big, &f)
        };
        let filtered = back(&|x, y| area.y[y * 320 + x]);
        let sampled = back(&|x, y| big.y[y * 2 * 640 + x * 2]);
        assert!(filtered > sampled + 1.0, "{filtered:.1} vs {sampled:.1} dB");
    }
}
