//! Video compositing: a grid of several pictures, of any sizes, in one output frame
//!
//! [`Compositor`] lays `n` tiles out in a grid of `ceil(sqrt(n))` columns, fits each picture
//! into its cell keeping its aspect ratio (letterboxed on the background colour), and scales
//! it with [`Scaler`] (one per tile, so the filters of unchanging sizes are computed once).
//! [`CompositorStage`] keeps the latest frame of every selected source and composes them at a
//! fixed rate on the session's clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::I420Frame;
use crate::signal::PeerId;

use super::scale::{fill_rect, Rect, Scaler};
use super::{Destination, Emit, PipelineError, Source, Stage, TrackId, Work};

/// Settings of a [`Compositor`]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompositorConfig {
    /// Output width (even)
    pub width: u32,
    /// Output height (even)
    pub height: u32,
    /// Colour behind and between the tiles, as (Y, U, V)
    pub background: (u8, u8, u8),
    /// Output frames per second ([`CompositorStage`])
    pub fps: u32,
}

impl Default for CompositorConfig {
    /// 640x360 on black, 30 frames per second
    fn default() -> Self {
        Self {
            width: 640,
            height: 360,
            background: (16, 128, 128),
            fps: 30,
        }
    }
}

/// Largest output accepted, in pixels per side
pub const MAX_SIDE: u32 = 4096;

/// Composes pictures into a grid
#[derive(Debug, Clone)]
pub struct Compositor {
    config: CompositorConfig,
    scalers: Vec<Scaler>,
}

impl Compositor {
    /// A compositor with these settings
    pub fn new(config: CompositorConfig) -> Result<Self, PipelineError> {
        let ok_side = |s: u32| (2..=MAX_SIDE).contains(&s) && s.is_multiple_of(2);
        if !ok_side(config.width) || !ok_side(config.height) {
            return Err(PipelineError::InvalidConfig(format!(
                "composite of {}x{} is not even and within 2..={MAX_SIDE}",
                config.width, config.height
            )));
        }
        if !(1..=120).contains(&config.fps) {
            return Err(PipelineError::InvalidConfig(format!(
                "composite at {} fps is outside 1..=120",
                config.fps
            )));
        }
        Ok(Self {
            config,
            scalers: Vec::new(),
        })
    }

    /// The settings
    pub const fn config(&self) -> &CompositorConfig {
        &self.config
    }

    /// The grid cell of tile `index` of `count`
    pub fn cell(&self, index: usize, count: usize) -> Rect {
        let count = count.max(1);
        let cols = (1..).find(|c| c * c >= count).unwrap_or(1);
        let rows = count.div_ceil(cols);
        let (col, row) = (index % cols, index / cols);
        let even = |v: u64| (v as u32) & !1;
        let (w, h) = (u64::from(self.config.width), u64::from(self.config.height));
        let x0 = even(w * col as u64 / cols as u64);
        let x1 = even(w * (col as u64 + 1) / cols as u64);
        let y0 = even(h * row as u64 / rows as u64);
        let y1 = even(h * (row as u64 + 1) / rows as u64);
        Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }

    /// Where a `width` x `height` picture goes as tile `index` of `count`: its cell, shrunk
    /// to the picture's aspect ratio and centred
    pub fn tile(&self, index: usize, count: usize, width: u32, height: u32) -> Rect {
        let cell = self.cell(index, count);
        if width == 0 || height == 0 {
            return Rect {
                width: 0,
                height: 0,
                ..cell
            };
        }
        let (cw, ch) = (u64::from(cell.width), u64::from(cell.height));
        let (sw, sh) = (u64::from(width), u64::from(height));
        // Fit: the larger of the two scale factors that fits, in integers.
        let (tw, th) = if cw * sh <= ch * sw {
            (cw, (cw * sh + sw / 2) / sw)
        } else {
            ((ch * sw + sh / 2) / sh, ch)
        };
        let tw = (tw.min(cw) as u32 & !1).max(2.min(cell.width));
        let th = (th.min(ch) as u32 & !1).max(2.min(cell.height));
        Rect {
            x: cell.x + (((cell.width - tw) / 2) & !1),
            y: cell.y + (((cell.height - th) / 2) & !1),
            width: tw,
            height: th,
        }
    }

    /// Composes `tiles` into `out` (resized to the configured size if it is not); returns the
    /// pixels written
    pub fn compose<'a>(
        &mut self,
        tiles: impl ExactSizeIterator<Item = &'a I420Frame>,
        out: &mut I420Frame,
    ) -> u64 {
        let (w, h) = (self.config.width, self.config.height);
        if out.width != w || out.height != h || out.check().is_err() {
            *out = I420Frame::black(w, h);
        }
        let full = Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        fill_rect(out, full, self.config.background);
        let count = tiles.len();
        if self.scalers.len() < count {
            self.scalers.resize_with(count, Scaler::new);
        }
        let mut work = u64::from(w) * u64::from(h) * 3 / 2;
        for (i, frame) in tiles.enumerate() {
            let rect = self.tile(i, count, frame.width, frame.height);
            work += self.scalers[i].scale_into(frame, out, rect);
        }
        work
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TileKey {
    Local,
    Peer(PeerId),
}

/// Composes the latest frame of each selected source (the local capture first, then peers
/// in id order) into a track, `fps` times a second
#[derive(Debug)]
pub struct CompositorStage {
    compositor: Compositor,
    track: TrackId,
    latest: BTreeMap<TileKey, Arc<I420Frame>>,
    interval: Duration,
    next_tick: Option<Instant>,
    late_ticks: u64,
}

impl CompositorStage {
    /// Composes what the stage's config selects onto `track`
    pub fn new(config: CompositorConfig, track: TrackId) -> Result<Self, PipelineError> {
        let compositor = Compositor::new(config)?;
        Ok(Self {
            interval: Duration::from_nanos(1_000_000_000 / u64::from(config.fps)),
            compositor,
            track,
            latest: BTreeMap::new(),
            next_tick: None,
            late_ticks: 0,
        })
    }

    /// The compositor
    pub const fn compositor(&self) -> &Compositor {
        &self.compositor
    }

    /// Sources with a tile
    pub fn tiles(&self) -> usize {
        self.latest.len()
    }

    /// Output frames skipped because the session called too late
    pub const fn late_ticks(&self) -> u64 {
        self.late_ticks
    }

    fn advance(&mut self, now: Instant) {
        if let Some(t) = self.next_tick.as_mut() {
            *t += self.interval;
            if *t <= now {
                // Behind: skip the missed frames rather than burst them out.
                let behind = (now - *t).as_nanos() / self.interval.as_nanos() + 1;
                self.late_ticks += behind as u64;
                *t += self.interval * behind as u32;
            }
        }
        if self.latest.is_empty() {
            self.next_tick = None;
        }
    }
}

impl Stage for CompositorStage {
    fn name(&self) -> &str {
        "compositor"
    }

    fn handle_video(
        &mut self,
        emit: &mut Emit<'_>,
        source: Source<'_>,
        frame: &Arc<I420Frame>,
    ) -> Work {
        // A known source's frame is replaced without allocating (a linear search of at most
        // a room's worth of tiles); only a new source's key is cloned.
        let known = self.latest.iter_mut().find(|(k, _)| match (k, source) {
            (TileKey::Local, Source::Local) => true,
            (TileKey::Peer(a), Source::Peer(b)) => a == b,
            _ => false,
        });
        match known {
            Some((_, f)) => *f = frame.clone(),
            None => {
                let key = match source {
                    Source::Local => TileKey::Local,
                    Source::Peer(p) => TileKey::Peer(p.clone()),
                };
                self.latest.insert(key, frame.clone());
            }
        }
        if self.next_tick.is_none() {
            self.next_tick = Some(emit.now());
        }
        Work::NONE
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    fn handle_timeout(&mut self, emit: &mut Emit<'_>) -> Work {
        let mut work = 0;
        if emit.is_wanted(self.track) && !self.latest.is_empty() {
            let (w, h) = (self.compositor.config.width, self.compositor.config.height);
            let mut out = emit.video_frame(w, h);
            work = self
                .compositor
                .compose(self.latest.values().map(|f| &**f), &mut out);
            emit.video(self.track, Destination::Track, Arc::new(out));
        }
        self.advance(emit.now());
        Work::pixels(work)
    }

    fn skip_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    fn remove_peer(&mut self, peer: &PeerId) {
        self.latest.remove(&TileKey::Peer(peer.clone()));
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

    /// Mean (Y, U, V) over `r` shrunk by `inset` luma pixels on each side
    fn mean(f: &I420Frame, r: Rect, inset: u32) -> (f64, f64, f64) {
        let (x0, y0) = (r.x + inset, r.y + inset);
        let (x1, y1) = (r.x + r.width - inset, r.y + r.height - inset);
        let (mut y, mut u, mut v, mut n, mut nc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for yy in y0..y1 {
            for xx in x0..x1 {
                y += f64::from(f.y[(yy * f.width + xx) as usize]);
                n += 1.0;
            }
        }
        let cw = f.chroma_width();
        for yy in y0 / 2..y1 / 2 {
            for xx in x0 / 2..x1 / 2 {
                u += f64::from(f.u[(yy * cw + xx) as usize]);
                v += f64::from(f.v[(yy * cw + xx) as usize]);
                nc += 1.0;
            }
        }
        (y / n, u / nc, v / nc)
    }

    const COLOURS: [(u8, u8, u8); 5] = [
        (81, 90, 240),
        (145, 54, 34),
        (41, 240, 110),
        (170, 166, 16),
        (210, 16, 146),
    ];

    #[test]
    fn each_tile_shows_its_source_at_its_aspect_ratio() {
        let sizes = [(320, 240), (1280, 720), (160, 90), (641, 481), (96, 96)];
        let mut c = Compositor::new(CompositorConfig::default()).unwrap();
        let mut out = I420Frame::black(2, 2);
        for n in 1..=5 {
            let frames: Vec<I420Frame> = (0..n)
                .map(|i| solid(sizes[i].0, sizes[i].1, COLOURS[i]))
                .collect();
            c.compose(frames.iter(), &mut out);
            assert_eq!((out.width, out.height), (640, 360));
            out.check().unwrap();
            for (i, f) in frames.iter().enumerate() {
                let cell = c.cell(i, n);
                let tile = c.tile(i, n, f.width, f.height);
                // Inside the cell, aspect ratio kept within a pixel or two.
                assert!(tile.x >= cell.x && tile.x + tile.width <= cell.x + cell.width);
                assert!(tile.y >= cell.y && tile.y + tile.height <= cell.y + cell.height);
                assert!(tile.width == cell.width || tile.height == cell.height);
                let ar_src = f64::from(f.width) / f64::from(f.height);
                let ar_tile = f64::from(tile.width) / f64::from(tile.height);
                assert!((ar_src / ar_tile - 1.0).abs() < 0.05, "{n} tiles, #{i}");
                let (y, u, v) = mean(&out, tile, 2);
                let (ey, eu, ev) = COLOURS[i];
                assert!(
                    (y - f64::from(ey)).abs() < 0.5
                        && (u - f64::from(eu)).abs() < 0.5
                        && (v - f64::from(ev)).abs() < 0.5,
                    "{n} tiles, #{i}: ({y}, {u}, {v}) vs {:?}",
                    COLOURS[i]
                );
                // Letterbox bars are background.
                if tile.height + 8 < cell.height {
                    let bar = Rect {
                        height: tile.y - cell.y,
                        ..cell
                    };
                    assert_eq!(mean(&out, bar, 1), (16.0, 128.0, 128.0));
                }
            }
        }
    }

    #[test]
    fn grid_cells_cover_the_frame_without_overlap() {
        let c = Compositor::new(CompositorConfig::default()).unwrap();
        for n in 1..=10 {
            let mut covered = vec![0u8; 640 * 360];
            for i in 0..n {
                let r = c.cell(i, n);
                assert_eq!(r.x % 2 + r.y % 2 + r.width % 2 + r.height % 2, 0);
                for y in r.y..r.y + r.height {
                    for x in r.x..r.x + r.width {
                        covered[(y * 640 + x) as usize] += 1;
                    }
                }
            }
            assert!(covered.iter().all(|&c| c <= 1), "{n} tiles overlap");
            // Every cell is nearly a full grid cell (an incomplete last row leaves the rest
            // of that row empty).
            let cols = (1..).find(|c| c * c >= n).unwrap();
            let rows = n.div_ceil(cols);
            let area = covered.iter().filter(|&&c| c == 1).count();
            assert!(area >= n * (640 / cols - 2) * (360 / rows - 2), "{n} tiles");
        }
    }

    #[test]
    fn bad_configs_are_rejected() {
        for (w, h, fps) in [(641, 360, 30), (0, 360, 30), (640, 360, 0), (8192, 360, 30)] {
            let c = CompositorConfig {
                width: w,
                height: h,
                fps,
                ..Default::default()
            };
            assert!(Compositor::new(c).is_err());
        }
    }
}
