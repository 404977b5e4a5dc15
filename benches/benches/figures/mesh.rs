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
const MESH_CALL_S: f64 = 10.0;
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

/// Seconds per frame of the codec work alone, as the mesh does it: ten encoders and ninety
/// decoders (nine per encoder's stream), frame by frame in turn, so their state competes for
/// the caches as it does in the run: (VP8 360p encode, decode; Opus encode, decode)
fn codec_costs_mesh() -> (f64, f64, f64, f64) {
    const PEERS: usize = 10;
    let cfg = VideoEncoderConfig {
        fps: FPS,
        bitrate_bps: VIDEO_KBPS * 1000,
        ..VideoEncoderConfig::new(VideoCodec::Vp8, WIDTH, HEIGHT)
    };
    let n = 2 * FPS as usize;
    let pattern = TestPattern::new(WIDTH, HEIGHT);
    let pictures: Vec<_> = (0..n as u64).map(|i| pattern.frame(i)).collect();
    let mut encs: Vec<_> = (0..PEERS)
        .map(|_| video_encoder(cfg).expect("a VP8 encoder"))
        .collect();
    let mut decs: Vec<_> = (0..PEERS * (PEERS - 1))
        .map(|_| video_decoder(VideoCodec::Vp8).expect("a VP8 decoder"))
        .collect();
    let (mut t_enc, mut t_dec, mut n_enc, mut n_dec) = (0.0, 0.0, 0, 0);
    for (i, p) in pictures.iter().enumerate() {
        for (e, enc) in encs.iter_mut().enumerate() {
            let t = process_cpu();
            let f = enc
                .encode(p, Duration::from_secs(1) * i as u32 / FPS)
                .expect("encoded");
            t_enc += process_cpu() - t;
            n_enc += 1;
            let Some(f) = f else { continue };
            let t = process_cpu();
            for d in &mut decs[e * (PEERS - 1)..(e + 1) * (PEERS - 1)] {
                std::hint::black_box(d.decode(&f.data).expect("decoded"));
            }
            t_dec += process_cpu() - t;
            n_dec += PEERS - 1;
        }
    }
    let mut tone = Tone::new(48_000, 1);
    let mut encs: Vec<_> = (0..PEERS)
        .map(|_| OpusEncoder::new(OpusConfig::default()).expect("an Opus encoder"))
        .collect();
    let mut decs: Vec<_> = (0..PEERS * (PEERS - 1))
        .map(|_| OpusDecoder::new(1).expect("an Opus decoder"))
        .collect();
    let samples = encs[0].frame_samples();
    let (mut a_enc, mut a_dec, mut m_enc, mut m_dec) = (0.0, 0.0, 0, 0);
    for _ in 0..100 {
        let pcm = tone.next_samples(samples);
        for (e, enc) in encs.iter_mut().enumerate() {
            let t = process_cpu();
            let packet = enc.encode(&pcm).expect("encoded");
            a_enc += process_cpu() - t;
            m_enc += 1;
            let t = process_cpu();
            for d in &mut decs[e * (PEERS - 1)..(e + 1) * (PEERS - 1)] {
                std::hint::black_box(d.decode(&packet).expect("decoded"));
            }
            a_dec += process_cpu() - t;
            m_dec += PEERS - 1;
        }
    }
    (
        t_enc / n_enc as f64,
        t_dec / n_dec as f64,
        a_enc / m_enc as f64,
        a_dec / m_dec as f64,
    )
}

/// Seconds per frame of the codec work alone, one encoder and one decoder with the caches
/// to themselves: (VP8 360p encode, decode; Opus encode, decode)
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
    let packets: Vec<_> = pcm
        .iter()
        .map(|p| enc.encode(p).expect("encoded"))
        .collect();
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
    let mut synthetic = scenario.clone();
    for m in &mut synthetic.media {
        m.codec = Some(CodecSpec::Synthetic);
    }
    let mut ratio = Vec::new();
    let mut ratio_mesh = Vec::new();
    let mut per_peer_cpu = Vec::new();
    let mut codec_per_peer = Vec::new();
    let mut codec_mesh_per_peer = Vec::new();
    let mut rest_per_peer = Vec::new();
    let mut first_memory = None;
    let mut costs = Vec::new();
    let mut counts = (0, 0, 0, 0);
    for _ in 0..rounds {
        let rss = rss_kib();
        let cpu = process_cpu();
        let outcome = scenario.run(None).expect("the mesh ran");
        let used = process_cpu() - cpu;
        // The first run's growth: later runs reuse what the allocator kept.
        first_memory.get_or_insert((rss_kib().saturating_sub(rss)) as f64 / 90.0 / 1024.0);
        let report = serde_json::to_value(&outcome.report).expect("a report");
        drop(outcome);
        counts = codec_counts(&report);
        let (venc, vdec, aenc, adec) = counts;
        let work = |c: (f64, f64, f64, f64)| {
            venc as f64 * c.0 + vdec as f64 * c.1 + aenc as f64 * c.2 + adec as f64 * c.3
        };
        let c = codec_costs();
        let codec = work(c);
        let codec_mesh = work(codec_costs_mesh());
        let cpu = process_cpu();
        drop(synthetic.run(None).expect("the synthetic mesh ran"));
        let rest = process_cpu() - cpu;
        ratio.push(used / codec);
        ratio_mesh.push(used / codec_mesh);
        // Per peer and per second of call: a tenth of the mesh.
        let share = |t: f64| t / 10.0 / MESH_CALL_S * 100.0;
        per_peer_cpu.push(share(used));
        codec_per_peer.push(share(codec));
        codec_mesh_per_peer.push(share(codec_mesh));
        rest_per_peer.push(share(rest));
        costs.push(c);
    }
    let (venc, vdec, aenc, adec) = counts;
    println!(
        "  whole run CPU / codec work alone  {} against 10 encoders and 90 decoders taking \
         turns as in the run; {} against one of each with the caches to itself (goal <= 1.15)",
        Spread::of(&mut ratio_mesh),
        Spread::of(&mut ratio)
    );
    println!(
        "  one peer, % of a core             {} (run); its codec work alone (one encode and \
         nine decodes of each kind) {} taking turns, {} with the caches to itself; {} (the \
         same run with synthetic codecs: everything but codec work, simulator included)",
        Spread::of(&mut per_peer_cpu),
        Spread::of(&mut codec_mesh_per_peer),
        Spread::of(&mut codec_per_peer),
        Spread::of(&mut rest_per_peer)
    );
    let med = |f: fn(&(f64, f64, f64, f64)) -> f64, scale: f64| {
        let mut v: Vec<f64> = costs.iter().map(|x| f(x) * scale).collect();
        Spread::of(&mut v)
    };
    println!(
        "  codec work per frame              VP8 {WIDTH}x{HEIGHT} encode {} ms, decode {} ms; \
         Opus 20 ms encode {} us, decode {} us",
        med(|x| x.0, 1e3),
        med(|x| x.1, 1e3),
        med(|x| x.2, 1e6),
        med(|x| x.3, 1e6),
    );
    println!(
        "  frames in the last run            video {venc} encoded, {vdec} decoded; audio \
         {aenc} encoded, {adec} decoded"
    );
    println!(
        "  resident set added per remote peer {:.1} MB (the first run's growth over its 90 \
         remote peers; the senders' encoders and the simulator's records included)",
        first_memory.unwrap_or_default()
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
        "== simulator speed (virtual seconds per wall second; in brackets per CPU second of the \
         thread), real codecs against codec = \"synthetic\"; median (min-max) of {rounds} \
         interleaved rounds =="
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
        let mut cpu_speeds = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for ((s, out), cpu_out) in [&data_only, &real, &synthetic]
                .into_iter()
                .zip(&mut speeds)
                .zip(&mut cpu_speeds)
            {
                let started = Instant::now();
                let cpu = crate::thread_cpu();
                let outcome = s.run(None).expect("the scenario ran");
                cpu_out.push(seconds / (crate::thread_cpu() - cpu));
                out.push(seconds / started.elapsed().as_secs_f64());
                drop(outcome);
            }
        }
        let [d, r, y] = &mut speeds;
        let (d, r, y) = (Spread::of(d), Spread::of(r), Spread::of(y));
        let [dc, rc, yc] = &mut cpu_speeds;
        let (dc, rc, yc) = (Spread::of(dc), Spread::of(rc), Spread::of(yc));
        println!(
            "  {file} ({seconds} s): data only {d}x [{dc}x]; with media: real codecs {r}x \
             [{rc}x], synthetic {y}x [{yc}x] ({:.0}x faster)",
            y.median / r.median
        );
    }
}
