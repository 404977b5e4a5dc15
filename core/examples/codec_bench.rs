//! Codec cost: encode and decode time per frame at 720p30 and 360p30 for H.264, VP8 and VP9,
//! and per 20 ms Opus frame
//!
//! ```text
//! cargo run --release -p meshrtc --example codec_bench [-- FRAMES]
//! ```
//!
//! Times are CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`, so builds running
//! alongside do not inflate them; wall time if that clock is missing). "Core %" is
//! the mean cost times the frame rate: the share of one core the codec needs in real time.
//! All codecs here run single-threaded. Input is the synthetic test pattern, which is easier
//! to compress than camera video, so expect real content to cost somewhat more.
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures time; the no-clock rule is for the sans-IO core"
)]

use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::{psnr, TestPattern, Tone};
use meshrtc::codec::{
    video_decoder, video_encoder, OpusConfig, OpusDecoder, OpusEncoder, VideoCodec,
    VideoEncoderConfig,
};

fn main() {
    let frames: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(150);
    let clock = if thread_cpu().is_some() {
        "thread CPU time"
    } else {
        "wall time"
    };
    println!("codec_bench: {frames} frames per run, costs in {clock}, single-threaded codecs");
    println!();
    println!(
        "{:<6} {:<7} {:>9} | {:>9} {:>9} {:>7} | {:>9} {:>9} {:>7} | {:>8}",
        "codec",
        "size",
        "kbit/s",
        "enc mean",
        "enc p95",
        "core %",
        "dec mean",
        "dec p95",
        "core %",
        "PSNR dB"
    );
    for (label, w, h, bitrate) in [
        ("720p30", 1280, 720, 2_500_000),
        ("360p30", 640, 360, 800_000),
    ] {
        let source = TestPattern::new(w, h);
        let input: Vec<_> = (0..frames).map(|i| source.frame(i)).collect();
        for codec in VideoCodec::ALL.into_iter().filter(|c| c.is_supported()) {
            bench_video(codec, label, bitrate, &input);
        }
    }
    println!();
    for channels in [1, 2] {
        bench_opus(channels, (frames * 5).max(500));
    }
}

fn bench_video(codec: VideoCodec, label: &str, bitrate: u32, input: &[meshrtc::codec::I420Frame]) {
    let (w, h) = (input[0].width, input[0].height);
    let cfg = VideoEncoderConfig {
        bitrate_bps: bitrate,
        ..VideoEncoderConfig::new(codec, w, h)
    };
    let mut enc = video_encoder(cfg).expect("encoder");
    let mut encoded = Vec::new();
    let mut enc_cost = Vec::new();
    for (i, frame) in input.iter().enumerate() {
        let pts = Duration::from_secs(i as u64) / cfg.fps;
        let (out, cost) = measure(|| enc.encode(frame, pts).expect("encode"));
        enc_cost.push(cost);
        if let Some(out) = out {
            encoded.push((i, out));
        }
    }
    let bytes: usize = encoded.iter().map(|(_, e)| e.data.len()).sum();
    let seconds = input.len() as f64 / f64::from(cfg.fps);

    let mut dec = video_decoder(codec).expect("decoder");
    let mut dec_cost = Vec::new();
    let mut quality = Vec::new();
    for (i, e) in &encoded {
        let (out, cost) = measure(|| dec.decode(&e.data).expect("decode"));
        dec_cost.push(cost);
        if let Some(out) = out {
            quality.push(psnr(&input[*i], &out));
        }
    }
    let (em, ep) = stats(&mut enc_cost);
    let (dm, dp) = stats(&mut dec_cost);
    let fps = f64::from(cfg.fps);
    println!(
        "{:<6} {:<7} {:>9.0} | {:>7.2}ms {:>7.2}ms {:>6.1}% | {:>7.2}ms {:>7.2}ms {:>6.1}% | {:>8.2}",
        codec.name(),
        label,
        bytes as f64 * 8.0 / seconds / 1000.0,
        ms(em),
        ms(ep),
        ms(em) * fps / 10.0,
        ms(dm),
        ms(dp),
        ms(dm) * fps / 10.0,
        quality.iter().sum::<f64>() / quality.len().max(1) as f64,
    );
}

fn bench_opus(channels: u16, frames: u64) {
    let cfg = OpusConfig {
        channels,
        bitrate_bps: 32_000 * u32::from(channels),
        ..OpusConfig::default()
    };
    let mut enc = OpusEncoder::new(cfg).expect("opus encoder");
    let mut dec = OpusDecoder::new(channels).expect("opus decoder");
    let mut tone = Tone::new(48_000, channels);
    let (mut enc_cost, mut dec_cost) = (Vec::new(), Vec::new());
    for _ in 0..frames {
        let pcm = tone.next_samples(enc.frame_samples());
        let (packet, cost) = measure(|| enc.encode(&pcm).expect("opus encode"));
        enc_cost.push(cost);
        let (_, cost) = measure(|| dec.decode(&packet).expect("opus decode"));
        dec_cost.push(cost);
    }
    let (em, ep) = stats(&mut enc_cost);
    let (dm, dp) = stats(&mut dec_cost);
    // 50 frames a second.
    println!(
        "opus {} 20 ms @ {} kbit/s: encode mean {:.1} us, p95 {:.1} us ({:.2}% of a core); \
         decode mean {:.1} us, p95 {:.1} us ({:.2}%)",
        if channels == 1 { "mono  " } else { "stereo" },
        cfg.bitrate_bps / 1000,
        us(em),
        us(ep),
        us(em) * 50.0 / 10_000.0,
        us(dm),
        us(dp),
        us(dm) * 50.0 / 10_000.0,
    );
}

/// Runs `f`, returning its result and its cost (thread CPU time, or wall time as a fallback)
fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let out = f();
    let cost = match (cpu0, thread_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => wall0.elapsed(),
    };
    (out, cost)
}

/// CPU time of the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`)
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Mean and 95th percentile
fn stats(costs: &mut [Duration]) -> (Duration, Duration) {
    if costs.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    costs.sort();
    let mean = costs.iter().sum::<Duration>() / costs.len() as u32;
    let p95 = costs[(costs.len() * 95 / 100).min(costs.len() - 1)];
    (mean, p95)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
