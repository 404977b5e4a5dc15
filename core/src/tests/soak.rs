//! Soak: ten participants in a full mesh with Opus audio and VP8 video for 30 virtual
//! minutes; memory must stay flat and quality must not degrade
//!
//! The full soak is `#[ignore]`d (it takes minutes of wall time per virtual minute on a
//! loaded machine; a 30-second version runs with every test run); run it with
//! `cargo test --release -p meshrtc --lib soak -- --ignored --nocapture`
//! (`MESHRTC_SOAK_MINUTES` changes the length). It prints, per virtual minute, the
//! process's resident memory and what every receiver played; it asserts that RSS at the end
//! is within 5 % (+4 MiB) of RSS at 10 minutes, and that the last minute's audio and video
//! are as good as the second's.

use std::time::Duration;

use crate::codec::testsrc::{TestPattern, Tone};
use crate::codec::VideoCodec;
use crate::media::VideoPayload;
use crate::signal::Capabilities;
use crate::tests::{perfect, Mesh};
use crate::{Config, Event};

const PEERS: usize = 10;

/// Resident set size of this process, KiB (Linux; 0 elsewhere)
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What the receivers played in one reporting period, summed over all 90 directed pairs
#[derive(Debug, Default, Clone, Copy)]
struct Minute {
    audio_chunks: u64,
    concealed_chunks: u64,
    video_frames: u64,
    breakages: u64,
}

/// The full soak: 30 virtual minutes (or `MESHRTC_SOAK_MINUTES`), reported per minute
#[test]
#[ignore = "a 30-minute virtual soak: minutes of wall time per virtual minute"]
fn soak_ten_peers_audio_video_memory_flat_quality_steady() {
    let minutes: u64 = std::env::var("MESHRTC_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    soak(minutes, 60);
}

/// The short version every test run does: the same room for 30 virtual seconds, reported
/// every 10, every pair playing all its audio and (after start-up) all its video
#[test]
fn soak_short_ten_peers_audio_video_thirty_seconds() {
    let report = soak(3, 10);
    // Bounded memory, whatever the machine: ten participants with 90 decoders.
    let rss = report.last().unwrap().1;
    assert!(rss < 1024 * 1024, "rss {rss} KiB");
}

/// Runs the room for `periods` periods of `period_s` virtual seconds; asserts quality every
/// period, the last as good as the second, and memory flat from the tenth period on
/// (RSS at the end within 5 % + 4 MiB of RSS then); returns (period, RSS KiB, what was
/// played) per period
fn soak(periods: u64, period_s: u64) -> Vec<(u64, u64, Minute)> {
    let configs = (0..PEERS)
        .map(|_| {
            let mut c = Config {
                capabilities: Capabilities {
                    audio: true,
                    video: true,
                    data: true,
                },
                ..Config::default()
            };
            c.media.video_codecs = vec![VideoCodec::Vp8];
            c.media.video.width = 160;
            c.media.video.height = 120;
            c.media.video.fps = 10;
            c.media.video.bitrate_bps = 100_000;
            c
        })
        .collect();
    let mut m = Mesh::new(configs, perfect(20));
    m.connect_all();
    let mut tones: Vec<Tone> = (0..PEERS).map(|_| Tone::new(48_000, 1)).collect();
    let mut patterns: Vec<TestPattern> = (0..PEERS).map(|_| TestPattern::new(160, 120)).collect();
    #[allow(clippy::disallowed_methods)] // reason: wall time of the soak, for the report
    let wall = std::time::Instant::now();
    let mut report: Vec<(u64, u64, Minute)> = Vec::new();
    let mut minute = Minute::default();
    // 20 ms steps: audio every step, video every fifth (10 fps).
    let steps_per_period = period_s * 50;
    for step in 0..(periods * steps_per_period) {
        for (i, tone) in tones.iter_mut().enumerate() {
            let pcm = tone.next_samples(960);
            m.with(i, |p, now| p.send_audio(now, &pcm)).unwrap();
        }
        if step % 5 == 0 {
            for (i, pat) in patterns.iter_mut().enumerate() {
                let f = pat.next_frame();
                m.with(i, |p, now| p.send_video(now, &f)).unwrap();
            }
        }
        m.run_for(Duration::from_millis(20));
        // Count and forget the events (the harness must not grow either).
        for events in &mut m.events {
            for (_, e) in events.drain(..) {
                match e {
                    Event::AudioPlayout { chunk, .. } => {
                        minute.audio_chunks += 1;
                        minute.concealed_chunks += u64::from(chunk.concealed);
                    }
                    Event::VideoFrame {
                        payload: VideoPayload::Decoded(_),
                        ..
                    } => minute.video_frames += 1,
                    Event::PeerFailed { .. }
                    | Event::PeerReconnecting { .. }
                    | Event::PeerLeft { .. } => minute.breakages += 1,
                    _ => {}
                }
            }
        }
        if (step + 1) % steps_per_period == 0 {
            let at = (step + 1) / steps_per_period;
            let rss = rss_kib();
            println!(
                "{:>5} s: rss {:>7.1} MiB, audio chunks {:>6} ({} concealed), video frames {:>5}, breakages {}, wall {:.0} s",
                at * period_s,
                rss as f64 / 1024.0,
                minute.audio_chunks,
                minute.concealed_chunks,
                minute.video_frames,
                minute.breakages,
                wall.elapsed().as_secs_f64()
            );
            report.push((at, rss, minute));
            minute = Minute::default();
        }
    }
    let pairs = (PEERS * (PEERS - 1)) as u64;
    for (at, _, q) in &report {
        assert_eq!(q.breakages, 0, "period {at}: a connection broke");
        // 100 chunks (10 ms) and 10 frames per pair per second; allow a little at the edges.
        assert!(
            q.audio_chunks >= pairs * (100 * period_s - 100),
            "period {at}: {q:?}"
        );
        assert!(
            q.concealed_chunks * 100 <= q.audio_chunks,
            "period {at}: {q:?}"
        );
        if *at > 1 {
            assert!(
                q.video_frames >= pairs * (10 * period_s - 10),
                "period {at}: {q:?}"
            );
        }
    }
    if periods >= 3 {
        let second = report[1].2;
        let last = report.last().unwrap().2;
        assert!(
            last.audio_chunks - last.concealed_chunks + pairs * period_s
                >= second.audio_chunks - second.concealed_chunks
        );
        assert!(last.video_frames + pairs * period_s / 10 >= second.video_frames);
    }
    if periods >= 10 {
        let at10 = report[9].1;
        let end = report.last().unwrap().1;
        println!(
            "rss after 1, 10, {periods} periods of {period_s} s: {:.1}, {:.1}, {:.1} MiB",
            report[0].1 as f64 / 1024.0,
            at10 as f64 / 1024.0,
            end as f64 / 1024.0
        );
        assert!(
            end <= at10 + at10 / 20 + 4 * 1024,
            "memory grew from {at10} KiB after 10 periods to {end} KiB"
        );
    }
    report
}
