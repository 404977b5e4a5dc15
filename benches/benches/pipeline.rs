//! Costs of the media pipeline's stages
//!
//! Not a timed test: run it with `cargo bench -p meshrtc-benches --bench pipeline
//! [section...]` (sections: `mixer`, `resampler`, `blur`, `composite`, `pipeline`; none
//! means all) and read the printed table. Each figure is the median of several rounds, with
//! a baseline measured in the same run: the simple way of doing the same job (a hard-clipping
//! mixer, linear interpolation, nearest-pixel scaling) or, for the blur, copying the frame.
//! Times are CPU time of the bench thread (`CLOCK_THREAD_CPUTIME_ID`).
//!
//! * mixer: ns per sample per peer for the local mix plus every N−1 mix, N = 2, 5, 10
//! * resampler: ns per output sample per channel, common rate pairs
//! * blur: ms per 360p and 720p frame
//! * composite: ms per 640x360 composite of 4 and 9 peers (360p and 720p sources)
//! * pipeline: a 5-peer conference through `Pipeline` (mixer N−1) with a CPU-clock cost
//!   meter: cost per 10 ms tick and the latency the stage adds

use std::hint::black_box;
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::TestPattern;
use meshrtc::codec::{AudioFormat, I420Frame};
use meshrtc::pipeline::blur::Blur;
use meshrtc::pipeline::composite::{Compositor, CompositorConfig};
use meshrtc::pipeline::mixer::{Mixer, MixerConfig, MixerStage};
use meshrtc::pipeline::resample::Resampler;
use meshrtc::pipeline::scale::Scaler;
use meshrtc::pipeline::{
    AudioIn, CostMeter, Pipeline, PipelineConfig, PipelineOutput, Routing, Select, Source,
    StageConfig, StageId, TrackKind, Work,
};
use meshrtc::signal::PeerId;
use meshrtc::sync::PlayoutChunk;

/// Rounds per figure (the median is reported)
const ROUNDS: usize = 7;

fn main() {
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |section: &str| picked.is_empty() || picked.iter().any(|p| p == section);
    println!("(thread CPU time per iteration, median of {ROUNDS} rounds)");
    if wants("mixer") {
        mixer();
    }
    if wants("resampler") {
        resampler();
    }
    if wants("blur") {
        blur();
    }
    if wants("composite") {
        composite();
    }
    if wants("pipeline") {
        pipeline();
    }
}

/// Median CPU time of this thread per iteration of `f`, over `ROUNDS` rounds of `iters`
/// iterations
///
/// CPU time rather than wall time: the machine is shared, and time spent descheduled is not
/// the stage's cost.
fn measure(iters: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters.div_ceil(4) {
        f();
    }
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = thread_cpu();
            for _ in 0..iters {
                f();
            }
            (thread_cpu() - start) / iters as u32
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2]
}

/// CPU time of the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`)
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time to copy `bytes` once (the baseline)
fn memcpy(bytes: usize) -> Duration {
    let src = vec![7u8; bytes];
    let mut dst = vec![0u8; bytes];
    let iters = (200_000_000 / bytes.max(1)).clamp(10, 1_000_000);
    measure(iters, || {
        black_box(&mut dst).copy_from_slice(black_box(&src));
        black_box(&dst);
    })
}

fn tone(rate: u32, freq: f64, len: usize) -> Vec<i16> {
    (0..len)
        .map(|n| {
            (8000.0 * (std::f64::consts::TAU * freq * n as f64 / f64::from(rate)).sin()) as i16
        })
        .collect()
}

/// The baseline mixer: what one writes without a limiter or the N−1 trick, summing in i32
/// and hard-clipping, each N−1 mix summed from scratch (O(N²))
fn naive_mix(chunks: &[Vec<i16>], local: &mut [i16], minus: &mut [Vec<i16>]) {
    for (s, o) in local.iter_mut().enumerate() {
        let acc: i32 = chunks.iter().map(|c| i32::from(c[s])).sum();
        *o = acc.clamp(-32768, 32767) as i16;
    }
    for (i, m) in minus.iter_mut().enumerate() {
        for (s, o) in m.iter_mut().enumerate() {
            let acc: i32 = chunks
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, c)| i32::from(c[s]))
                .sum();
            *o = acc.clamp(-32768, 32767) as i16;
        }
    }
}

fn mixer() {
    println!(
        "== mixer: 10 ms mono frames, local mix + every N-1 mix, soft limiter; \
         baseline: i32 sums, hard clipping, N-1 mixes summed from scratch =="
    );
    for n in [2usize, 5, 10] {
        let peers: Vec<PeerId> = (0..n)
            .map(|i| PeerId::new(format!("p{i}")).expect("a valid id"))
            .collect();
        let chunks: Vec<Vec<i16>> = (0..n)
            .map(|i| tone(48_000, 200.0 + 100.0 * i as f64, 480))
            .collect();
        let mut m = Mixer::new(MixerConfig::default()).expect("default config");
        let per_tick = measure(2_000, || {
            for (p, c) in peers.iter().zip(&chunks) {
                m.push(
                    Source::Peer(p),
                    AudioIn {
                        samples: c,
                        channels: 1,
                    },
                );
            }
            black_box(m.mix(true));
        });
        let local_only = measure(2_000, || {
            for (p, c) in peers.iter().zip(&chunks) {
                m.push(
                    Source::Peer(p),
                    AudioIn {
                        samples: c,
                        channels: 1,
                    },
                );
            }
            black_box(m.mix(false));
        });
        let mut local = vec![0i16; 480];
        let mut minus = vec![vec![0i16; 480]; n];
        let base = measure(2_000, || {
            naive_mix(black_box(&chunks), &mut local, &mut minus);
            black_box((&local, &minus));
        });
        let per = |d: Duration| ns(d) / (480 * n) as f64;
        println!(
            "  {n:>2} peers: {:.2} ns/sample/peer ({:.1} us per 10 ms tick); local mix only \
             {:.2} ns/sample/peer; baseline {:.2} ns/sample/peer (ratio {:.2})",
            per(per_tick),
            ns(per_tick) / 1e3,
            per(local_only),
            per(base),
            per(per_tick) / per(base),
        );
    }
}

/// The baseline resampler: linear interpolation (cheap, aliases badly), mono f32
fn linear_resample(input: &[f32], from: u32, to: u32, out: &mut Vec<f32>) {
    out.clear();
    let step = f64::from(from) / f64::from(to);
    let n = ((input.len() - 1) as f64 / step) as usize;
    for k in 0..n {
        let pos = k as f64 * step;
        let i = pos as usize;
        let f = (pos - i as f64) as f32;
        out.push(input[i] * (1.0 - f) + input[i + 1] * f);
    }
}

fn resampler() {
    println!(
        "== resampler: windowed sinc, ns per output sample per channel; \
         baseline: linear interpolation =="
    );
    for (from, to, channels) in [
        (44_100, 48_000, 1),
        (44_100, 48_000, 2),
        (48_000, 44_100, 2),
        (16_000, 48_000, 1),
        (8_000, 48_000, 1),
        (96_000, 48_000, 2),
        (48_000, 48_000, 2),
    ] {
        let fmt = |sample_rate, channels| AudioFormat {
            sample_rate,
            channels,
        };
        let mut r = Resampler::new(fmt(from, channels), fmt(to, channels)).expect("valid rates");
        // 10 ms blocks of input.
        let input = tone(from, 1000.0, (from / 100) as usize * usize::from(channels));
        let mut out = Vec::with_capacity(4096);
        let per_block = measure(2_000, || {
            out.clear();
            r.process(black_box(&input), &mut out);
            black_box(&out);
        });
        let mono: Vec<f32> = tone(from, 1000.0, (from / 100) as usize + 1)
            .iter()
            .map(|&v| f32::from(v) / 32768.0)
            .collect();
        let mut lin = Vec::with_capacity(4096);
        let base = measure(2_000, || {
            linear_resample(black_box(&mono), from, to, &mut lin);
            black_box(&lin);
        });
        let produced = f64::from(to / 100);
        let per = ns(per_block) / produced / f64::from(channels);
        let per_base = ns(base) / produced;
        println!(
            "  {from:>6} -> {to:>6} Hz x{channels}: {per:.2} ns/sample ({} taps), {:.1} us per \
             10 ms; baseline {per_base:.2} ns/sample (ratio {:.1})",
            r.taps(),
            ns(per_block) / 1e3,
            per / per_base
        );
    }
}

fn frames(w: u32, h: u32, n: usize) -> Vec<I420Frame> {
    let mut p = TestPattern::new(w, h);
    (0..n).map(|_| p.next_frame()).collect()
}

fn blur() {
    println!("== blur: separable box, 2 passes, all planes ==");
    for (w, h, radius) in [(640, 360, 4), (640, 360, 12), (1280, 720, 8)] {
        let src = frames(w, h, 1).remove(0);
        let mut dst = I420Frame::black(w, h);
        let mut b = Blur::new(radius);
        let t = measure(100, || {
            black_box(b.apply(black_box(&src), &mut dst));
        });
        let base = memcpy(src.y.len() + src.u.len() + src.v.len());
        println!(
            "  {w}x{h} radius {radius}: {:.3} ms/frame (baseline memcpy {:.3} ms, ratio {:.1}x)",
            ms(t),
            ms(base),
            ms(t) / ms(base)
        );
    }
}

/// The baseline compositor: the same tiles, scaled by picking the nearest pixel (fast,
/// aliases)
fn nearest_compose(c: &Compositor, srcs: &[I420Frame], out: &mut I420Frame) {
    let n = srcs.len();
    out.y.fill(16);
    out.u.fill(128);
    out.v.fill(128);
    for (i, f) in srcs.iter().enumerate() {
        let r = c.tile(i, n, f.width, f.height);
        let planes = [
            (&f.y, f.width, f.height, &mut out.y, out.width, 1),
            (
                &f.u,
                f.chroma_width(),
                f.chroma_height(),
                &mut out.u,
                out.width / 2,
                2,
            ),
            (
                &f.v,
                f.chroma_width(),
                f.chroma_height(),
                &mut out.v,
                out.width / 2,
                2,
            ),
        ];
        for (src, sw, sh, dst, stride, sub) in planes {
            let (x0, y0, w, h) = (r.x / sub, r.y / sub, r.width / sub, r.height / sub);
            for y in 0..h {
                let sy = (y * sh / h) as usize;
                let drow = &mut dst[((y0 + y) * stride + x0) as usize..][..w as usize];
                for (x, d) in drow.iter_mut().enumerate() {
                    *d = src[sy * sw as usize + (x as u32 * sw / w) as usize];
                }
            }
        }
    }
}

fn composite() {
    println!(
        "== composite: grid into 640x360, antialiased bilinear scaler; \
         baseline: nearest-pixel scaling =="
    );
    for (n, w, h) in [(4, 640, 360), (4, 1280, 720), (9, 640, 360)] {
        let srcs = frames(w, h, n);
        let mut c = Compositor::new(CompositorConfig::default()).expect("default config");
        let mut out = I420Frame::black(640, 360);
        let t = measure(100, || {
            black_box(c.compose(srcs.iter(), &mut out));
        });
        let base = measure(100, || {
            nearest_compose(&c, black_box(&srcs), &mut out);
            black_box(&out);
        });
        println!(
            "  {n} peers at {w}x{h}: {:.3} ms/frame; baseline {:.3} ms (ratio {:.1})",
            ms(t),
            ms(base),
            ms(t) / ms(base)
        );
    }
    let src = frames(1280, 720, 1).remove(0);
    let mut dst = I420Frame::black(640, 360);
    let mut s = Scaler::new();
    let t = measure(100, || {
        black_box(s.scale(&src, &mut dst));
    });
    println!("  scale 1280x720 -> 640x360 alone: {:.3} ms/frame", ms(t));
}

/// A cost meter on the thread's CPU clock: what a driver would supply
struct CpuClock(Option<Duration>);

impl CostMeter for CpuClock {
    fn start(&mut self, _stage: StageId) {
        self.0 = Some(thread_cpu());
    }

    fn finish(&mut self, _stage: StageId, _work: Work) -> Duration {
        self.0.take().map_or(Duration::ZERO, |s| thread_cpu() - s)
    }
}

fn pipeline() {
    println!("== pipeline: 5-peer conference, mixer stage (local + N-1 mixes), 10 s ==");
    let mut p = Pipeline::with_meter(PipelineConfig::default(), Box::new(CpuClock(None)));
    let playout = p.add_track(TrackKind::Audio, Routing::Local);
    let minus = p.add_track(TrackKind::Audio, Routing::Broadcast);
    let stage = p.add_stage(
        MixerStage::new(MixerConfig::default(), Some(playout), Some(minus)).expect("config"),
        StageConfig::new(Duration::from_millis(2)).audio(Select::Peers),
    );
    let peers: Vec<PeerId> = (0..5)
        .map(|i| PeerId::new(format!("p{i}")).expect("a valid id"))
        .collect();
    for q in &peers {
        p.add_peer(q.clone());
    }
    let t0 = Instant::now();
    let mut chunk = PlayoutChunk {
        samples: tone(48_000, 440.0, 480),
        channels: 1,
        media_ticks: 0,
        playout: t0,
        concealed: false,
    };
    let mut delays = Vec::new();
    let wall = Instant::now();
    // Virtual session time: peer i's chunks play at a phase of i * 2 ms.
    for tick in 0..1000u64 {
        for (i, q) in peers.iter().enumerate() {
            let at = t0 + Duration::from_millis(tick * 10 + 2 * i as u64);
            while let Some(t) = p.poll_timeout().filter(|&t| t <= at) {
                p.handle_timeout(t);
            }
            chunk.playout = at;
            p.handle_audio(q, at, &chunk).expect("valid chunk");
            while let Some(out) = p.poll_output() {
                if let PipelineOutput::Media(m) = out {
                    delays.push(m.ready.saturating_duration_since(m.media.capture()));
                    p.recycle(m);
                }
            }
        }
    }
    let elapsed = wall.elapsed();
    let st = p.stage_stats(stage).expect("the stage");
    delays.sort();
    println!(
        "  {} runs, {} dropped; mean cost {:.1} us per run, max {:.1} us; \
         {:.2} % of one core for the room; stage latency p50 {:.1} us, max {:.1} us",
        st.processed,
        st.dropped(),
        ns(st.cost) / 1e3 / st.processed as f64,
        ns(st.max_cost) / 1e3,
        100.0 * st.cost.as_secs_f64() / 10.0,
        ns(delays[delays.len() / 2]) / 1e3,
        ns(st.max_latency) / 1e3,
    );
    println!(
        "  (plus the mixer's buffering: each peer's chunk waits until the next 10 ms tick, \
         at most 10 ms; wall time for 10 s of audio {:.1} ms)",
        ms(elapsed)
    );
}
