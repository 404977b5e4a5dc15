//! Picture scaling: a separable, antialiased bilinear (triangle filter) scaler for I420
//!
//! Upscaling interpolates between the two nearest pixels; downscaling widens the triangle to
//! the scale factor, so every source pixel contributes (no aliasing from skipped pixels).
//! Filter weights are 14-bit fixed point, computed once per size pair and kept, as is the
//! intermediate buffer: scaling frames of unchanging sizes does not allocate.

use crate::codec::I420Frame;

/// A rectangle of a picture, in luma pixels
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left edge
    pub x: u32,
    /// Top edge
    pub y: u32,
    /// Width
    pub width: u32,
    /// Height
    pub height: u32,
}

const SHIFT: u32 = 14;
const ONE: i32 = 1 << SHIFT;

/// Filter taps along one axis: for each output pixel, the first source pixel and `taps`
/// weights
#[derive(Debug, Clone, Default)]
struct Axis {
    src: usize,
    dst: usize,
    taps: usize,
    starts: Vec<usize>,
    weights: Vec<i32>,
}

impl Axis {
    fn new(src: usize, dst: usize) -> Self {
        let scale = src as f64 / dst as f64;
        let support = scale.max(1.0);
        let taps = (2.0 * support).ceil() as usize + 1;
        let mut starts = Vec::with_capacity(dst);
        let mut weights = vec![0; dst * taps];
        let mut w = vec![0.0f64; taps];
        for i in 0..dst {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0) as usize).min(src - 1);
            let lo = lo.min(src.saturating_sub(taps));
            let mut total = 0.0;
            for (k, wk) in w.iter_mut().enumerate() {
                let x = lo + k;
                *wk = if x < src {
                    let d = ((x as f64 + 0.5 - center) / support).abs();
                    (1.0 - d).max(0.0)
                } else {
                    0.0
                };
                total += *wk;
            }
            if total <= 0.0 {
                // Cannot happen (the nearest pixel is always within the support); fall back
                // to it anyway.
                w.fill(0.0);
                let nearest = (center as usize).min(src - 1) - lo;
                w[nearest.min(taps - 1)] = 1.0;
                total = 1.0;
            }
            // Quantise so that each row of weights sums to exactly ONE.
            let row = &mut weights[i * taps..(i + 1) * taps];
            let mut acc = 0.0;
            let mut prev = 0i32;
            for (r, wk) in row.iter_mut().zip(&w) {
                acc += wk / total;
                let q = (acc * f64::from(ONE)).round() as i32;
                *r = q - prev;
                prev = q;
            }
            starts.push(lo);
        }
        Self {
            src,
            dst,
            taps,
            starts,
            weights,
        }
    }
}

/// Scales one plane; keeps its filters and intermediate buffer between calls
#[derive(Debug, Clone, Default)]
struct PlaneScaler {
    h: Axis,
    v: Axis,
    tmp: Vec<u8>,
}

impl PlaneScaler {
    /// Scales `src` (`sw` x `sh`, tightly packed) into the `dw` x `dh` rectangle at
    /// (`dx`, `dy`) of `dst`, whose rows are `stride` bytes
    ///
    /// The vertical pass (vectorisable, whole rows at a time) runs on the larger side of the
    /// scaling and the horizontal pass (a gather per pixel) on the smaller: shrinking rows
    /// first when the height shrinks, widening them last when it grows.
    fn scale(
        &mut self,
        src: &[u8],
        (sw, sh): (usize, usize),
        dst: &mut [u8],
        stride: usize,
        (dx, dy, dw, dh): (usize, usize, usize, usize),
    ) {
        if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
            return;
        }
        if self.h.src != sw || self.h.dst != dw {
            self.h = Axis::new(sw, dw);
        }
        if self.v.src != sh || self.v.dst != dh {
            self.v = Axis::new(sh, dh);
        }
        let out_row = |y: usize| (dy + y) * stride + dx;
        if dh < sh {
            // Rows first: src (sw x sh) -> tmp (sw x dh) -> dst (dw x dh).
            self.tmp.resize(sw * dh, 0);
            for (y, row) in self.tmp.chunks_exact_mut(sw).enumerate() {
                vertical_row(src, sw, sh, &self.v, y, row);
            }
            for (y, row) in self.tmp.chunks_exact(sw).enumerate() {
                horizontal_row(row, &self.h, &mut dst[out_row(y)..out_row(y) + dw]);
            }
        } else {
            // Columns first: src (sw x sh) -> tmp (dw x sh) -> dst (dw x dh).
            self.tmp.resize(dw * sh, 0);
            for (row, out) in src.chunks_exact(sw).zip(self.tmp.chunks_exact_mut(dw)) {
                horizontal_row(row, &self.h, out);
            }
            for y in 0..dh {
                vertical_row(
                    &self.tmp,
                    dw,
                    sh,
                    &self.v,
                    y,
                    &mut dst[out_row(y)..out_row(y) + dw],
                );
            }
        }
    }
}

/// One output row of a horizontal pass
fn horizontal_row(row: &[u8], h: &Axis, out: &mut [u8]) {
    // Fixed tap counts unroll (and lose their bounds checks); they cover scale factors
    // down to 1/3.
    if row.len() >= h.taps {
        match h.taps {
            2 => return horizontal_row_n::<2>(row, h, out),
            3 => return horizontal_row_n::<3>(row, h, out),
            4 => return horizontal_row_n::<4>(row, h, out),
            5 => return horizontal_row_n::<5>(row, h, out),
            6 => return horizontal_row_n::<6>(row, h, out),
            7 => return horizontal_row_n::<7>(row, h, out),
            _ => {}
        }
    }
    let sw = row.len();
    for ((o, &start), wts) in out
        .iter_mut()
        .zip(&h.starts)
        .zip(h.weights.chunks_exact(h.taps))
    {
        let px = &row[start..(start + h.taps).min(sw)];
        let mut acc = ONE / 2;
        for (&p, &w) in px.iter().zip(wts) {
            acc += i32::from(p) * w;
        }
        *o = (acc >> SHIFT).clamp(0, 255) as u8;
    }
}

/// [`horizontal_row`] for `N` taps, when every window lies inside the row
fn horizontal_row_n<const N: usize>(row: &[u8], h: &Axis, out: &mut [u8]) {
    for ((o, &start), wts) in out.iter_mut().zip(&h.starts).zip(h.weights.chunks_exact(N)) {
        // Axis::new keeps every window inside the source when it has at least N pixels.
        let Some(px) = row.get(start..start + N) else {
            continue;
        };
        let mut acc = ONE / 2;
        for k in 0..N {
            acc += i32::from(px[k]) * wts[k];
        }
        *o = (acc >> SHIFT).clamp(0, 255) as u8;
    }
}

/// Output row `y` of a vertical pass over `src` (`width` x `height`)
fn vertical_row(src: &[u8], width: usize, height: usize, v: &Axis, y: usize, out: &mut [u8]) {
    let start = v.starts[y];
    let rows = (start + v.taps).min(height) - start;
    let wts = &v.weights[y * v.taps..y * v.taps + rows];
    let row = |k: usize| &src[(start + k) * width..(start + k + 1) * width];
    if wts.iter().filter(|&&w| w != 0).count() == 1 {
        // One row with all the weight (equal heights, or a row right on the grid).
        let k = wts.iter().position(|&w| w != 0).unwrap_or(0);
        out.copy_from_slice(row(k));
        return;
    }
    let mut acc = [0i32; 64];
    for (x0, chunk) in out.chunks_mut(64).enumerate() {
        let n = chunk.len();
        let acc = &mut acc[..n];
        acc.fill(ONE / 2);
        for (k, &w) in wts.iter().enumerate() {
            if w == 0 {
                continue;
            }
            for (a, &p) in acc.iter_mut().zip(&row(k)[x0 * 64..x0 * 64 + n]) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in chunk.iter_mut().zip(acc.iter()) {
            *o = (a >> SHIFT).clamp(0, 255) as u8;
        }
    }
}

/// Scales I420 frames, keeping filters and buffers between calls of the same sizes
#[derive(Debug, Clone, Default)]
pub struct Scaler {
    luma: PlaneScaler,
    chroma: PlaneScaler,
}

impl Scaler {
    /// A scaler with nothing cached yet
    pub fn new() -> Self {
        Self::default()
    }

    /// Scales `src` to fill `dst` (whose size is the target); returns the pixels written
    pub fn scale(&mut self, src: &I420Frame, dst: &mut I420Frame) -> u64 {
        let rect = Rect {
            x: 0,
            y: 0,
            width: dst.width,
            height: dst.height,
        };
        self.scale_into(src, dst, rect)
    }

    /// Scales `src` into `rect` of `dst`, leaving the rest of `dst` alone; returns the
    /// pixels written
    ///
    /// The rectangle is clipped to `dst`; an odd left or top edge is moved left or up by
    /// one so that chroma lines up, an odd width or height loses its last column or row
    /// (unless it reaches the edge of an odd-sized `dst`).
    pub fn scale_into(&mut self, src: &I420Frame, dst: &mut I420Frame, rect: Rect) -> u64 {
        if src.check().is_err() || dst.check().is_err() || src.width == 0 || src.height == 0 {
            return 0;
        }
        let x = (rect.x.min(dst.width)) & !1;
        let y = (rect.y.min(dst.height)) & !1;
        let mut w = rect.width.min(dst.width - x);
        let mut h = rect.height.min(dst.height - y);
        if x + w < dst.width {
            w &= !1;
        }
        if y + h < dst.height {
            h &= !1;
        }
        if w == 0 || h == 0 {
            return 0;
        }
        let (sw, sh) = (src.width as usize, src.height as usize);
        let stride = dst.width as usize;
        self.luma.scale(
            &src.y,
            (sw, sh),
            &mut dst.y,
            stride,
            (x as usize, y as usize, w as usize, h as usize),
        );
        let (scw, sch) = (src.chroma_width() as usize, src.chroma_height() as usize);
        let cstride = dst.chroma_width() as usize;
        let crect = (
            x as usize / 2,
            y as usize / 2,
            w.div_ceil(2) as usize,
            h.div_ceil(2) as usize,
        );
        let mut u = std::mem::take(&mut self.chroma);
        u.scale(&src.u, (scw, sch), &mut dst.u, cstride, crect);
        // The same filters serve both chroma planes.
        u.scale(&src.v, (scw, sch), &mut dst.v, cstride, crect);
        self.chroma = u;
        u64::from(w) * u64::from(h) * 3 / 2
    }
}

/// Fills `rect` of `frame` with one colour (clipped like [`Scaler::scale_into`])
pub fn fill_rect(frame: &mut I420Frame, rect: Rect, (y, u, v): (u8, u8, u8)) {
    let x0 = rect.x.min(frame.width) as usize;
    let y0 = rect.y.min(frame.height) as usize;
    let x1 = (rect.x.saturating_add(rect.width)).min(frame.width) as usize;
    let y1 = (rect.y.saturating_add(rect.height)).min(frame.height) as usize;
    let w = frame.width as usize;
    for row in y0..y1 {
        frame.y[row * w + x0..row * w + x1].fill(y);
    }
    let cw = frame.chroma_width() as usize;
    let (cx0, cy0, cx1, cy1) = (x0 / 2, y0 / 2, x1.div_ceil(2), y1.div_ceil(2));
    for row in cy0..cy1 {
        frame.u[row * cw + cx0..row * cw + cx1].fill(u);
        frame.v[row * cw + cx0..row * cw + cx1].fill(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, c: (u8, u8, u8)) -> I420Frame {
        let mut f = I420Frame::black(w, h);
        f.y.fill(c.0);
        f.u.fill(c.1);
        f.v.fill(c.2);
        f
    }

    #[test]
    fn weights_sum_to_one_and_solid_colours_survive() {
        for (s, d) in [
            (1, 1),
            (1, 7),
            (7, 1),
            (640, 213),
            (213, 640),
            (1920, 160),
            (3, 2),
        ] {
            let a = Axis::new(s, d);
            for row in a.weights.chunks_exact(a.taps) {
                assert_eq!(row.iter().sum::<i32>(), ONE, "{s}->{d}");
            }
            for &st in &a.starts {
                assert!(st < s);
            }
        }
        let mut sc = Scaler::new();
        for (sw, sh, dw, dh) in [
            (640, 360, 320, 180),
            (161, 91, 640, 360),
            (1920, 1080, 214, 120),
        ] {
            let src = solid(sw, sh, (120, 60, 200));
            let mut dst = I420Frame::black(dw, dh);
            sc.scale(&src, &mut dst);
            assert!(dst.y.iter().all(|&v| v == 120));
            assert!(dst.u.iter().all(|&v| v == 60));
            assert!(dst.v.iter().all(|&v| v == 200));
        }
    }

    #[test]
    fn downscaling_averages_instead_of_aliasing() {
        // A one-pixel checkerboard scaled by 1/4 must come out flat grey, not a pattern.
        let mut src = I420Frame::black(256, 256);
        for (i, v) in src.y.iter_mut().enumerate() {
            *v = if (i % 256 + i / 256) % 2 == 0 {
                16
            } else {
                235
            };
        }
        let mut dst = I420Frame::black(64, 64);
        Scaler::new().scale(&src, &mut dst);
        // The border, where the filter is cut short, is a little off.
        for y in 1..63 {
            for x in 1..63 {
                let v = dst.y[y * 64 + x];
                assert!((i32::from(v) - 126).abs() <= 2, "{v} at {x},{y}");
            }
        }
    }

    #[test]
    fn upscaling_interpolates_and_keeps_edges_in_place() {
        // Left half dark, right half bright, doubled: the edge stays in the middle.
        let mut src = I420Frame::black(8, 2);
        for row in src.y.chunks_exact_mut(8) {
            row[4..].fill(200);
        }
        let mut dst = I420Frame::black(16, 4);
        Scaler::new().scale(&src, &mut dst);
        let row = &dst.y[..16];
        assert_eq!(&row[..6], &[16; 6]);
        assert_eq!(&row[10..], &[200; 6]);
        assert!(row[7] > 16 && row[7] < 200 && row[8] > 16 && row[8] < 200);
        assert!(row.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn scale_into_writes_only_its_rectangle() {
        let src = solid(100, 50, (200, 10, 240));
        let mut dst = solid(64, 36, (16, 128, 128));
        let n = Scaler::new().scale_into(
            &src,
            &mut dst,
            Rect {
                x: 9,
                y: 10,
                width: 21,
                height: 100,
            },
        );
        // Moved to x 8, width 20 (even), height clipped to 26.
        assert_eq!(n, 20 * 26 * 3 / 2);
        for y in 0..36 {
            for x in 0..64 {
                let inside = (8..28).contains(&x) && (10..36).contains(&y);
                assert_eq!(dst.y[y * 64 + x], if inside { 200 } else { 16 }, "{x},{y}");
            }
        }
        assert_eq!(dst.u[5 * 32 + 4], 10);
        assert_eq!(dst.u[5 * 32 + 3], 128);
        // Degenerate input does nothing rather than panic.
        let bad = I420Frame {
            width: 4,
            height: 4,
            y: vec![0; 3],
            u: vec![],
            v: vec![],
        };
        assert_eq!(Scaler::new().scale(&bad, &mut dst), 0);
        let empty = I420Frame::black(0, 0);
        assert_eq!(Scaler::new().scale(&empty, &mut dst), 0);
        let mut tiny = I420Frame::black(1, 1);
        Scaler::new().scale(&src, &mut tiny);
        assert_eq!(tiny.y, [200]);
    }
}
