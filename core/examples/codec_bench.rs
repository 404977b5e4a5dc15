//! Codec cost: encode and decode time per frame at 720p30 and 360p30 for H.264, VP8 and VP9,
//! and per 20 ms Opus frame; the cost of a second, smaller encode; and the quality of each
//! rung of the degradation ladder per bitrate (where the thresholds of
//! `codec::degrade::DegradationConfig` come from)
//!
//! ```text
//! cargo run --release -p meshrtc --example codec_bench [-- FRAMES [SECTION...]]
//! ```
//!
//! Sections: `costs` (video encode/decode), `opus`, `second` (one encode against two),
//! `temporal` (VP8 temporal layers), `ladder` (PSNR per size and bitrate), `keyframes`
//! (periodic keyframes' size and quality against the frames between them); all by default.
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

use meshrtc::codec::scale::Scaler;
use meshrtc::codec::testsrc::{psnr, SensorNoise, TestPattern, Tone};
use meshrtc::codec::{
    video_decoder, video_encoder, AdaptiveEncoder, I420Frame, OpusConfig, OpusDecoder, OpusEncoder,
    Scale, VideoCodec, VideoEncoderConfig, VideoTarget,
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
    let sections: Vec<String> = std::env::args().skip(2).collect();
    let want = |s: &str| sections.is_empty() || sections.iter().any(|a| a == s);
    println!("codec_bench: {frames} frames per run, costs in {clock}, single-threaded codecs");
    println!();
    if want("costs") {
        costs(frames);
    }
    if want("opus") {
        for channels in [1, 2] {
            bench_opus(channels, (frames * 5).max(500));
        }
        println!();
    }
    if want("second") {
        second_encode(frames);
    }
    if want("temporal") {
        temporal(frames);
    }
    if want("keyframes") {
        keyframes(frames);
    }
    if want("ladder") {
        ladder(frames);
    }
}

/// VP8 with 1, 2 and 3 temporal layers at the same bitrate: encode cost, the base layer's
/// share of the bytes, and the quality of all layers and of the base layer alone
fn temporal(frames: u64) {
    if !VideoCodec::Vp8.is_supported() {
        return;
    }
    let (w, h) = (640, 360);
    let input = noisy_frames(w, h, frames);
    println!("temporal layers: vp8 {w}x{h} noisy source, 30 fps, 800 kbit/s");
    println!(
        "{:<7} {:>9} {:>10} {:>11} {:>10} {:>10}",
        "layers", "enc ms", "kbit/s", "base bytes", "PSNR all", "PSNR base"
    );
    for layers in [1u8, 2, 3] {
        let mut enc = video_encoder(VideoEncoderConfig {
            bitrate_bps: 800_000,
            temporal_layers: layers,
            ..VideoEncoderConfig::new(VideoCodec::Vp8, w, h)
        })
        .expect("encoder");
        let mut all = video_decoder(VideoCodec::Vp8).expect("decoder");
        let mut base = video_decoder(VideoCodec::Vp8).expect("decoder");
        let (mut cost, mut q_all, mut q_base) = (Vec::new(), Vec::new(), Vec::new());
        let (mut bytes, mut base_bytes) = (0, 0);
        for (i, frame) in input.iter().enumerate() {
            let pts = Duration::from_secs(i as u64) / 30;
            let (out, c) = measure(|| enc.encode(frame, pts).expect("encode"));
            cost.push(c);
            let Some(e) = out else { continue };
            bytes += e.data.len();
            let pic = all.decode(&e.data).expect("decode").expect("picture");
            if i >= 30 {
                q_all.push(psnr(frame, &pic));
            }
            if e.temporal_id == 0 {
                base_bytes += e.data.len();
                let pic = base.decode(&e.data).expect("decode").expect("picture");
                if i >= 30 {
                    q_base.push(psnr(frame, &pic));
                }
            }
        }
        let (m, _) = stats(&mut cost);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "{:<7} {:>7.2}ms {:>10.0} {:>10.0}% {:>10.2} {:>10.2}",
            layers,
            ms(m),
            bytes as f64 * 8.0 / (input.len() as f64 / 30.0) / 1000.0,
            base_bytes as f64 * 100.0 / bytes.max(1) as f64,
            mean(&q_all),
            mean(&q_base),
        );
    }
    println!();
}

fn costs(frames: u64) {
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
}

/// A camera-like source: the test pattern with sensor noise (a fixed pseudo-random
/// sequence, +-6 levels on luma, +-3 on chroma), which costs an encoder far more bits than
/// the clean pattern and is closer to what a camera gives
fn noisy_frames(w: u32, h: u32, frames: u64) -> Vec<I420Frame> {
    let source = TestPattern::new(w, h);
    let mut noise = SensorNoise::default();
    (0..frames)
        .map(|i| {
            let mut f = source.frame(i);
            noise.apply(&mut f, 6, 3);
            f
        })
        .collect()
}

/// One encode per frame against two (the main one and a smaller one for slow peers), as
/// `media::Encoders` does with a low encoding: the second includes downscaling its input
fn second_encode(frames: u64) {
    println!("second encode: one encode per frame vs. main + low encoding (noisy source, 30 fps)");
    println!(
        "  low ms includes downscaling its input, shown alone in (scaling); extra % = low / main;"
    );
    println!("  core % = main + low at 30 fps");
    println!(
        "{:<6} {:<16} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "codec", "main + low", "main ms", "low ms", "(scaling)", "extra %", "core %"
    );
    for (w, h, main_bps, low_w, low_h, low_bps) in [
        (640, 360, 800_000, 320, 180, 200_000),
        (1280, 720, 2_500_000, 640, 360, 600_000),
        (1280, 720, 2_500_000, 320, 180, 200_000),
    ] {
        let input = noisy_frames(w, h, frames);
        for codec in VideoCodec::ALL.into_iter().filter(|c| c.is_supported()) {
            let mut main = AdaptiveEncoder::new(VideoEncoderConfig {
                bitrate_bps: main_bps,
                ..VideoEncoderConfig::new(codec, w, h)
            })
            .expect("encoder");
            let mut low = AdaptiveEncoder::new(VideoEncoderConfig {
                bitrate_bps: low_bps,
                ..VideoEncoderConfig::new(codec, w, h)
            })
            .expect("encoder");
            let scale = Scale::new((low_w / 8) as u8, (w / 8) as u8).expect("scale");
            low.set_target(VideoTarget {
                scale,
                ..low.target()
            })
            .expect("target");
            let mut scaler = Scaler::new();
            let (mut main_cost, mut low_cost, mut scale_cost) =
                (Vec::new(), Vec::new(), Vec::new());
            // Interleaved, so that both see the same machine state.
            for (i, frame) in input.iter().enumerate() {
                let pts = Duration::from_secs(i as u64) / 30;
                main_cost.push(measure(|| main.encode(frame, pts).expect("encode")).1);
                low_cost.push(measure(|| low.encode(frame, pts).expect("encode")).1);
                scale_cost.push(measure(|| scaler.scale(frame, low_w, low_h)).1);
            }
            let (m, _) = stats(&mut main_cost);
            let (l, _) = stats(&mut low_cost);
            let (sc, _) = stats(&mut scale_cost);
            println!(
                "{:<6} {:<16} {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>8.0}% {:>8.1}%",
                codec.name(),
                format!("{h}p + {low_h}p"),
                ms(m),
                ms(l),
                ms(sc),
                ms(l) / ms(m) * 100.0,
                ms(m + l) * 30.0 / 10.0,
            );
            assert_eq!(low.stats().frame_width, low_w);
        }
    }
    println!();
}

/// Coding quality of each ladder rung per bitrate: PSNR of the decoded picture against the
/// encoder's own (downscaled) input, i.e. what the bitrate costs at that size
///
/// A rung is "starved" when this falls below a floor (blocking and smearing show; libwebrtc
/// detects the same through the encoder's QP). The degradation controller's `min_bpp` is
/// where the full size falls to that floor; the smaller rungs show how much a step down buys.
fn ladder(frames: u64) {
    let (w, h) = (640, 360);
    let clean: Vec<I420Frame> = {
        let p = TestPattern::new(w, h);
        (0..frames).map(|i| p.frame(i)).collect()
    };
    let noisy = noisy_frames(w, h, frames);
    let rungs = [(1, 1), (3, 4), (1, 2)];
    for (label, input) in [("clean", &clean), ("noisy", &noisy)] {
        println!("ladder: {w}x{h} {label} source at 30 fps, coding PSNR (dB) and bits per pixel per frame of each size");
        for codec in VideoCodec::ALL.into_iter().filter(|c| c.is_supported()) {
            print!("{:<6} {:>7}", codec.name(), "kbit/s");
            for (n, d) in rungs {
                let (sw, sh) = Scale::new(n, d).expect("scale").apply(w, h);
                print!(" {:>9} {:>6}", format!("{sw}x{sh}"), "bpp");
            }
            println!();
            for kbps in [100, 150, 250, 400, 600, 900] {
                print!("{:<6} {:>7}", "", kbps);
                for (n, d) in rungs {
                    let scale = Scale::new(n, d).expect("scale");
                    let (sw, sh) = scale.apply(w, h);
                    let mut enc = video_encoder(VideoEncoderConfig {
                        bitrate_bps: kbps * 1000,
                        ..VideoEncoderConfig::new(codec, sw, sh)
                    })
                    .expect("encoder");
                    let mut dec = video_decoder(codec).expect("decoder");
                    let mut scaler = Scaler::new();
                    let mut scores = Vec::new();
                    for (i, frame) in input.iter().enumerate() {
                        let pts = Duration::from_secs(i as u64) / 30;
                        let small = scaler.scale(frame, sw, sh);
                        let Some(e) = enc.encode(&small, pts).expect("encode") else {
                            continue;
                        };
                        let Some(out) = dec.decode(&e.data).expect("decode") else {
                            continue;
                        };
                        // Skip the first second (rate control settling).
                        if i >= 30 {
                            scores.push(psnr(&small, &out));
                        }
                    }
                    let bpp = f64::from(kbps * 1000) / (f64::from(sw * sh) * 30.0);
                    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
                    print!(" {:>9.2} {:>6.3}", mean, bpp);
                }
                println!();
            }
        }
        println!();
    }
}

/// Periodic keyframes (every 2 s) at 640x360 30 fps with sensor noise: their size in bytes
/// and in frames' worth of the target, and the coding PSNR of keyframes against the frames
/// between them (after the first second)
fn keyframes(frames: u64) {
    let (w, h) = (640, 360);
    let input = noisy_frames(w, h, frames.max(150));
    println!("keyframes: {w}x{h} noisy source at 30 fps, a keyframe every 2 s");
    println!(
        "{:<6} {:>7} {:>9} {:>8} {:>9} {:>9}",
        "codec", "kbit/s", "key bytes", "frames", "key PSNR", "rest PSNR"
    );
    for codec in [VideoCodec::Vp8, VideoCodec::Vp9]
        .into_iter()
        .filter(|c| c.is_supported())
    {
        for kbps in [300, 600, 1200] {
            let mut enc = video_encoder(VideoEncoderConfig {
                bitrate_bps: kbps * 1000,
                ..VideoEncoderConfig::new(codec, w, h)
            })
            .expect("encoder");
            let mut dec = video_decoder(codec).expect("decoder");
            let (mut key_bytes, mut key_psnr, mut rest_psnr) = (Vec::new(), Vec::new(), Vec::new());
            for (i, frame) in input.iter().enumerate() {
                let pts = Duration::from_secs(i as u64) / 30;
                let Some(e) = enc.encode(frame, pts).expect("encode") else {
                    continue;
                };
                let Some(out) = dec.decode(&e.data).expect("decode") else {
                    continue;
                };
                if i < 30 {
                    continue;
                }
                if e.keyframe {
                    key_bytes.push(e.data.len() as f64);
                    key_psnr.push(psnr(frame, &out));
                } else {
                    rest_psnr.push(psnr(frame, &out));
                }
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let per_frame = f64::from(kbps) * 1000.0 / 8.0 / 30.0;
            println!(
                "{:<6} {:>7} {:>9.0} {:>8.1} {:>9.2} {:>9.2}",
                codec.name(),
                kbps,
                mean(&key_bytes),
                mean(&key_bytes) / per_frame,
                mean(&key_psnr),
                mean(&rest_psnr)
            );
        }
    }
    println!();
}

fn bench_video(codec: VideoCodec, label: &str, bitrate: u32, input: &[I420Frame]) {
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
