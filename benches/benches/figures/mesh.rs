//! A 10-peer mesh with real media, and the simulator's speed with real and synthetic codecs
//!
//! Both run scenarios of `meshrtc-sim` in this process (virtual time, every host's
//! `Participant` in this one thread).
//!
//! * `mesh`: ten peers, each sending Opus and 360p30 VP8 (500 kbit/s) to the nine others
//!   for `MESH_CALL` of virtual time over clean 20 ms paths. The process CPU time of the
//!   whole run (signaling, ten participants, links, measurement: everything) is set against
//!   the codec work alone, measured in the same round: the same test pattern and tone
//!   encoded with the same settings and decoded, per frame, times the frames the run really
//!   encoded and decoded (from its report). The ratio is the cost of everything that is not
//!   codec work, for the whole mesh and so for one peer (each peer does a tenth of it: one
//!   encode and nine decodes per frame). Also: the resident set the run added per remote
//!   peer (90 of them), and the cost of a 720p30 H.264 encode.
//! * `sim`: virtual seconds per wall second of `clean-lan` (2 peers, audio and 320x240
//!   video both ways) and `mesh-10` (10 peers, audio and video), each with its real codecs
//!   and with `codec = "synthetic"`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::{TestPattern, Tone};
use meshrtc::codec::{
    video_decoder, video_encoder, OpusConfig, OpusDecoder, OpusEncoder, VideoCodec,
    VideoEncoderConfig,
};
use meshrtc_sim::scenario::{CodecSpec, Scenario};
use serde_json::Value;

use crate::Spread;

/// Virtual length of the measured mesh call
const MESH_CALL_S: f64 = 4.0;
/// The mesh's video
const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;
const FPS: u32 = 30;
const VIDEO_KBPS: u32 = 500;

fn mesh_scenario() -> String {
    format!(
        r#"
name = "bench-mesh-10-360p"
seed = 1
duration_s = {MESH_CALL_S}

[[hosts]]
name = "p"
count = 10
stagger_ms = 20

[link]
latency_ms = 20
rate_kbps = 1000000
queue_bytes = 10000000

[[media]]
kind = "audio"
from = "*"

[[media]]
kind = "video"
codec = "vp8"
from = "*"
width = {WIDTH}
height = {HEIGHT}
fps = {FPS}
bitrate_kbps = {VIDEO_KBPS}
"#
    )
}

/// CPU seconds used by this process so far (user and system, every thread)
fn process_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Frames encoded and decoded in a run: (video encodes, video decodes, audio encodes,
/// audio decodes)
fn codec_counts(report: &Value) -> (u64, u64, u64, u64) {
    let mut enc_video = std::collections::BTreeMap::<String, u64>::new();
    let mut enc_audio = std::collections::BTreeMap::<String, u64>::new();
    let (mut dec_video, mut dec_audio) = (0, 0);
    let pairs = report["pairs"].as_array().expect("pairs");
    for p in pairs {
        let from = p["from"].as_str().expect("from").to_string();
        for m in p["media"].as_array().expect("media") {
            let sent = m["sent"].as_u64().unwrap_or(0);
            let (enc, kind) = match m["kind"].as_str() {
                Some("video") => (&mut enc_video, "video"),
                _ => (&mut enc_audio, "audio"),
            };
            // A frame is encoded once for all peers: the most any peer was sent.
            let e = enc.entry(from.clone()).or_default();
            *e = (*e).max(sent);
            let decoded = m["receiver"][kind]["frames_decoded"].as_u64().unwrap_or(0);
            if kind == "video" {
                dec_video += decoded;
            } else {
                dec_audio += decoded;
            }
        }
    }
    (
        enc_video.values().sum(),
        dec_video,
        enc_audio.values().sum(),
        dec_audio,
    )
}

/// Seconds per frame of the codec work alone: (VP8 360p encode, decode; Opus encode, decode)
fn codec_costs() -> (f64, f64, f64, f64) {
    let cfg = VideoEncoderConfig {
        fps: FPS,
        bitrate_bps: VIDEO_KBPS * 1000,
        ..VideoEncoderConfig::new(VideoCodec::Vp8, WIDTH, HEIGHT)
    };
    let n = 2 * FPS as usize;
    let pattern = TestPattern::new(WIDTH, HEIGHT);
    let pictures: Vec<_> = (0..n as u64).map(|i| pattern.frame(i)).collect();
    let mut enc = video_encoder(cfg).expect("a VP8 encoder");
    let t = process_cpu();
    let frames: Vec<_> = pictures
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            enc.encode(p, Duration::from_secs(1) * i as u32 / FPS)
                .expect("encoded")
        })
        .collect();
    let venc = (process_cpu() - t) / n as f64;
    let mut dec = video_decoder(VideoCodec::Vp8).expect("a VP8 decoder");
    let t = process_cpu();
    for f in &frames {
        std::hint::black_box(dec.decode(&f.data).expect("decoded"));
    }
    let vdec = (process_cpu() - t) / frames.len() as f64;

    let mut tone = Tone::new(48_000, 1);
    let mut enc = OpusEncoder::new(OpusConfig::default()).expect("an Opus encoder");
    let samples = enc.frame_samples();
    let pcm: Vec<_> = (0..250).map(|_| tone.next_samples(samples)).collect();
    let t = process_cpu();
    let packets: Vec<_> = pcm.iter().map(|p| enc.encode(p).expect("encoded")).collect();
    let aenc = (process_cpu() - t) / packets.len() as f64;
    let mut dec = OpusDecoder::new(1).expect("an Opus decoder");
    let t = process_cpu();
    for p in &packets {
        std::hint::black_box(dec.decode(p).expect("decoded"));
    }
    let adec = (process_cpu() - t) / packets.len() as f64;
    (venc, vdec, aenc, adec)
}

/// Resident set size of this process in KiB
fn rss_kib() -> u64 {
    crate::rss_kib()
}

/// The 10-peer mesh with real media: CPU against the codec work alone, memory per remote
/// peer, and the cost of a 720p30 H.264 encode
pub fn mesh(rounds: usize) {
    println!(
        "== 10-peer mesh, Opus + {WIDTH}x{HEIGHT} {FPS} fps VP8 ({VIDEO_KBPS} kbit/s) from \
         every peer, {MESH_CALL_S} s virtual, in the simulator; median (min-max) of {rounds} \
         rounds =="
    );
    let scenario =
        Scenario::parse(&mesh_scenario(), Path::new("bench-mesh.toml")).expect("a scenario");
    let mut ratio = Vec::new();
    let mut per_peer_cpu = Vec::new();
    let mut codec_per_peer = Vec::new();
    let mut memory = Vec::new();
    let mut costs = Vec::new();
    let mut counts = (0, 0, 0, 0);
    for _ in 0..rounds {
        let rss = rss_kib();
        let cpu = process_cpu();
        let outcome = scenario.run(None).expect("the mesh ran");
        let used = process_cpu() - cpu;
        memory.push((rss_kib().saturating_sub(rss)) as f64 / 90.0 / 1024.0);
        let report = serde_json::to_value(&outcome.report).expect("a report");
        drop(outcome);
        counts = codec_counts(&report);
        let c = codec_costs();
        let (venc, vdec, aenc, adec) = counts;
        let codec = venc as f64 * c.0 + vdec as f64 * c.1 + aenc as f64 * c.2 + adec as f64 * c.3;
        ratio.push(used / codec);
        // Per peer and per second of call: a tenth of the mesh.
        per_peer_cpu.push(used / 10.0 / MESH_CALL_S * 100.0);
        codec_per_peer.push(codec / 10.0 / MESH_CALL_S * 100.0);
        costs.push(c);
    }
    let (venc, vdec, aenc, adec) = counts;
    let r = Spread::of(&mut ratio);
    println!(
        "  whole run CPU / codec work alone  {r} (goal <= 1.15; one peer's share is the same)"
    );
    println!(
        "  one peer, % of a core             {} (run); {} (codec work alone: one encode and \
         nine decodes of each kind)",
        Spread::of(&mut per_peer_cpu),
        Spread::of(&mut codec_per_peer)
    );
    let mut c = costs.clone();
    let med = |f: fn(&(f64, f64, f64, f64)) -> f64, c: &mut Vec<(f64, f64, f64, f64)>| {
        let mut v: Vec<f64> = c.iter().map(|x| f(x) * 1e3).collect();
        Spread::of(&mut v)
    };
    println!(
        "  codec work per frame (ms)         VP8 {WIDTH}x{HEIGHT} encode {}, decode {}; Opus \
         20 ms encode {}, decode {}",
        med(|x| x.0, &mut c),
        med(|x| x.1, &mut c),
        med(|x| x.2, &mut c),
        med(|x| x.3, &mut c),
    );
    println!(
        "  frames in the last run            video {venc} encoded, {vdec} decoded; audio \
         {aenc} encoded, {adec} decoded"
    );
    println!(
        "  resident set added per remote peer {} MB (the run's growth over 90 remote peers, \
         senders' encoders included; first round counts allocations the later reuse)",
        Spread::of(&mut memory)
    );
    h264_720p();
}

/// Milliseconds per 720p30 H.264 frame (2.5 Mbit/s, the moving test pattern)
fn h264_720p() {
    let cfg = VideoEncoderConfig {
        bitrate_bps: 2_500_000,
        ..VideoEncoderConfig::new(VideoCodec::H264, 1280, 720)
    };
    let Ok(mut enc) = video_encoder(cfg) else {
        println!("  720p30 H.264 encode: H.264 is not compiled in");
        return;
    };
    let pattern = TestPattern::new(1280, 720);
    let pictures: Vec<_> = (0..90).map(|i| pattern.frame(i)).collect();
    let t = process_cpu();
    for (i, p) in pictures.iter().enumerate() {
        std::hint::black_box(
            enc.encode(p, Duration::from_secs(1) * i as u32 / 30)
                .expect("encoded"),
        );
    }
    let ms = (process_cpu() - t) / pictures.len() as f64 * 1e3;
    println!(
        "  720p30 H.264 encode (2.5 Mbit/s)  {ms:.2} ms per frame, {:.0}% of a core at 30 fps",
        ms * 30.0 / 10.0
    );
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// Simulated seconds per wall second, real codecs against synthetic ones
pub fn sim_speed(rounds: usize) {
    println!(
        "== simulator speed (virtual seconds per wall second), real codecs against \
         codec = \"synthetic\"; median (min-max) of {rounds} interleaved rounds =="
    );
    for (file, seconds) in [("clean-lan.toml", 20.0), ("mesh-10.toml", 10.0)] {
        let path = scenarios_dir().join(file);
        let mut real = Scenario::from_path(&path).expect("a scenario");
        real.duration_s = seconds;
        let mut synthetic = real.clone();
        for m in &mut synthetic.media {
            m.codec = Some(CodecSpec::Synthetic);
        }
        let mut data_only = real.clone();
        data_only.media.clear();
        let mut speeds = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (s, out) in [&data_only, &real, &synthetic].into_iter().zip(&mut speeds) {
                let started = Instant::now();
                let outcome = s.run(None).expect("the scenario ran");
                out.push(seconds / started.elapsed().as_secs_f64());
                drop(outcome);
            }
        }
        let [d, r, y] = &mut speeds;
        let (d, r, y) = (Spread::of(d), Spread::of(r), Spread::of(y));
        println!(
            "  {file} ({seconds} s): data only {d}x; with media: real codecs {r}x, synthetic \
             {y}x ({:.0}x faster)",
            y.median / r.median
        );
    }
}
