//! CPU cost of a second, low encode (rate adaptation, issue 17)
//!
//! Not a timed test: run it with `cargo bench -p meshrtc-benches --bench encode` and read
//! the printed table. A 640x360, 30 fps test pattern is encoded for 300 frames by the main
//! encoding alone (the baseline, at 1.2 Mbit/s) and by the main encoding plus a low one
//! (what a slow peer gets: 320x180 at 15 fps, 200 kbit/s, and 320x180 at 30 fps, 300
//! kbit/s), for VP8, VP9 and H.264. Each figure is the median of several rounds of CPU
//! time of the bench thread (`CLOCK_THREAD_CPUTIME_ID`); the ratio to the baseline of the
//! same run is what to read.

use std::hint::black_box;
use std::time::Duration;

use meshrtc::codec::testsrc::TestPattern;
use meshrtc::codec::{
    AdaptiveEncoder, I420Frame, Scale, VideoCodec, VideoEncoderConfig, VideoTarget,
};

/// Rounds per figure (the median is reported)
const ROUNDS: usize = 5;
/// Frames per round
const FRAMES: u64 = 300;

fn main() {
    println!(
        "{:<6} {:>16} {:>22} {:>22}",
        "codec", "main ms/frame", "+ low 180p15 ms (x)", "+ low 180p30 ms (x)"
    );
    let frames: Vec<I420Frame> = {
        let p = TestPattern::new(640, 360);
        (0..FRAMES).map(|i| p.frame(i)).collect()
    };
    for codec in [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264] {
        if !codec.is_supported() {
            println!("{:<6} not built", codec.name());
            continue;
        }
        let main = median(|| round(codec, &frames, None));
        let low15 = median(|| round(codec, &frames, Some((15, 200_000))));
        let low30 = median(|| round(codec, &frames, Some((30, 300_000))));
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / FRAMES as f64;
        println!(
            "{:<6} {:>16.3} {:>15.3} ({:.2}) {:>15.3} ({:.2})",
            codec.name(),
            per(main),
            per(low15),
            low15.as_secs_f64() / main.as_secs_f64(),
            per(low30),
            low30.as_secs_f64() / main.as_secs_f64(),
        );
    }
}

/// CPU time to encode `frames` with the main encoding and, with `low` (fps, bit/s), a
/// second 320x180 one
fn round(codec: VideoCodec, frames: &[I420Frame], low: Option<(u32, u32)>) -> Duration {
    let cfg = VideoEncoderConfig {
        bitrate_bps: 1_200_000,
        ..VideoEncoderConfig::new(codec, 640, 360)
    };
    let mut main = AdaptiveEncoder::new(cfg).expect("a valid configuration");
    let mut second = low.map(|(fps, bps)| {
        let mut e = AdaptiveEncoder::new(VideoEncoderConfig {
            bitrate_bps: bps,
            ..cfg
        })
        .expect("a valid configuration");
        e.set_target(VideoTarget {
            bitrate_bps: bps,
            max_fps: fps,
            scale: Scale::new(1, 2).expect("a valid scale"),
        })
        .expect("a valid target");
        e
    });
    let start = thread_cpu();
    for (i, f) in frames.iter().enumerate() {
        let pts = Duration::from_micros(i as u64 * 33_333);
        black_box(main.encode(f, pts).expect("encodes"));
        if let Some(e) = &mut second {
            black_box(e.encode(f, pts).expect("encodes"));
        }
    }
    thread_cpu() - start
}

fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let mut rounds: Vec<Duration> = (0..ROUNDS).map(|_| f()).collect();
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
