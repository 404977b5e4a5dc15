//! Media streams in the simulator: real Opus, VP8 and H.264 over simulated links, each
//! frame followed from its capture on the sender's (drifting) clock to its playout

use std::path::Path;
use std::time::Duration;

use meshrtc_sim::report::MediaReport;
use meshrtc_sim::scenario::Outcome;
use meshrtc_sim::{
    Clock, Error, HostId, HostOptions, MediaSource, MediaStreamConfig, Report, Scenario, Sim,
    SimConfig,
};

use crate::util::config;

/// Two hosts, `alice` and `bob`, with `link` and `media` (TOML) appended
fn two_peers(duration_s: u32, link: &str, media: &str) -> String {
    format!(
        "name = \"media\"\nseed = 1\nduration_s = {duration_s}\n\
         [[hosts]]\nname = \"alice\"\n[[hosts]]\nname = \"bob\"\n{link}\n{media}"
    )
}

/// Audio (Opus, 20 ms) and small VP8 video from every host
const AUDIO_AND_VIDEO: &str = r#"
[[media]]
kind = "audio"
from = "*"

[[media]]
kind = "video"
codec = "vp8"
from = "*"
width = 160
height = 120
fps = 15
"#;

fn run(text: &str, seed: Option<u64>) -> Outcome {
    let s = Scenario::parse(text, Path::new("media-test.toml"))
        .unwrap_or_else(|e| panic!("scenario rejected: {e}"));
    s.run(seed).unwrap()
}

/// Every (from, to, media report) in the report
fn media(r: &Report) -> Vec<(&str, &str, &MediaReport)> {
    r.pairs
        .iter()
        .flat_map(|p| p.media.iter().map(|m| (p.from.as_str(), p.to.as_str(), m)))
        .collect()
}

fn p50(m: &MediaReport) -> f64 {
    m.delay_ms.as_ref().expect("frames played").p50
}

#[test]
fn clean_link_plays_audio_and_video_both_ways() {
    // A 20 ms path with 1 ms of jitter. Audio's capture-to-playout delay is the path plus
    // the jitter buffer's 20 ms minimum target plus at most a chunk: p50 within 20..60 ms.
    // Video is held to play in sync with audio, so the same bound holds for it.
    let text = two_peers(
        8,
        "[link]\nlatency_ms = 20\njitter = { shape = \"normal\", std_ms = 1 }",
        AUDIO_AND_VIDEO,
    );
    let out = run(&text, None);
    let all = media(&out.report);
    assert_eq!(all.len(), 4, "audio and video in both directions");
    for (from, to, m) in all {
        let what = format!("{from}→{to} {}", m.name);
        assert_eq!(m.lost, 0, "{what}: {m:?}");
        assert_eq!(m.unmatched, 0, "{what}: every playout matches a capture");
        assert_eq!(m.late, 0, "{what}");
        assert_eq!(m.send_failed, 0, "{what}");
        assert_eq!(m.duplicates + m.out_of_order, 0, "{what}");
        // Only the last frames, still in flight or in the buffer at the end, are unplayed.
        assert_eq!(m.played + m.pending, m.sent, "{what}");
        assert!(m.pending <= 5, "{what}: {} pending", m.pending);
        let d = m.delay_ms.as_ref().unwrap();
        assert!(d.min >= 15.0, "{what}: faster than the path: {d:?}");
        assert!((20.0..60.0).contains(&d.p50), "{what}: {d:?}");
        assert!(d.p99 < 80.0, "{what}: {d:?}");
        let rx = m.receiver.as_ref().expect("receiver statistics");
        match m.kind.as_str() {
            "audio" => {
                // 8 s of 20 ms frames, less the time to connect.
                assert!(m.sent > 330, "{what}: {} sent", m.sent);
                assert_eq!(m.concealed_chunks, 0, "{what}");
                let a = rx.audio.as_ref().unwrap();
                assert_eq!(a.frames_lost, 0, "{what}");
                assert!(a.frames_decoded >= m.played, "{what}");
                // Sends 10 ms chunks: the longest silence is one chunk.
                assert!(m.longest_gap_ms.unwrap() < 15.0, "{what}");
            }
            "video" => {
                assert_eq!(m.codec, "vp8");
                assert!(m.sent > 100, "{what}: {} sent", m.sent);
                let v = rx.video.as_ref().unwrap();
                assert_eq!(v.codec.as_deref(), Some("vp8"));
                assert_eq!(v.decode_errors, 0, "{what}");
                assert_eq!(v.frames_rendered, m.played, "{what}");
                // 15 fps: a frame every 67 ms.
                assert!(m.longest_gap_ms.unwrap() < 150.0, "{what}");
            }
            k => panic!("kind {k}"),
        }
    }
}

#[test]
fn random_loss_is_concealed_for_audio_and_video_recovers() {
    // 5 % random loss both ways on every packet. Audio has no retransmission: Opus FEC
    // and concealment cover the holes. Video retransmits (NACK/RTX) and asks for a keyframe
    // (PLI) when a frame cannot be completed.
    let text = two_peers(
        14,
        "[link]\nlatency_ms = 20\njitter = { shape = \"normal\", std_ms = 1 }\n\
         loss = { model = \"random\", rate = 0.05 }",
        AUDIO_AND_VIDEO,
    );
    let out = run(&text, Some(3));
    for (from, to, m) in media(&out.report) {
        let what = format!("{from}→{to} {}", m.name);
        assert!(
            m.link_loss_seen(&out.report, from, to),
            "{what}: no loss on the link"
        );
        assert_eq!(m.unmatched, 0, "{what}");
        let played = m.played as f64 / m.sent as f64;
        let rx = m.receiver.as_ref().unwrap();
        match m.kind.as_str() {
            "audio" => {
                // Most frames play; the lost ones were concealed.
                assert!(played > 0.9, "{what}: played {played:.3} of {}", m.sent);
                assert!(m.lost > 0, "{what}: 5 % loss and nothing lost?");
                assert!(m.concealed_chunks > 0, "{what}");
                let a = rx.audio.as_ref().unwrap();
                assert!(a.concealed_ms > 0.0, "{what}: {a:?}");
                assert!(p50(m) < 100.0, "{what}: {:?}", m.delay_ms);
            }
            "video" => {
                // Retransmission (NACK/RTX) repairs most losses; the rest wait for a
                // keyframe.
                assert!(played > 0.8, "{what}: played {played:.3} of {}", m.sent);
                // It keeps rendering after losses: frames in every 2 s window from the
                // connection (ICE and DTLS suffer the loss too) to the end.
                let pair = out
                    .report
                    .pairs
                    .iter()
                    .find(|p| p.from == from && p.to == to)
                    .unwrap();
                let connected = pair.connected_at_s.expect("connected").ceil() as u64;
                let st = out
                    .sim
                    .media_stats(stream_of(&out.sim, from, "video"), host(&out, to))
                    .unwrap();
                let mut lo = connected;
                while lo + 2 <= 14 {
                    let (a, b) = (Duration::from_secs(lo), Duration::from_secs(lo + 2));
                    let n = st
                        .samples
                        .iter()
                        .filter(|x| (a..b).contains(&(x.captured_at + x.delay)))
                        .count();
                    // 30 frames are due in 2 s at 15 fps.
                    assert!(n >= 15, "{what}: {n} frames rendered in {a:?}..{b:?}");
                    lo += 2;
                }
                assert!(lo > connected + 4, "{what}: connected too late to judge");
                let v = rx.video.as_ref().unwrap();
                assert_eq!(v.frames_rendered, m.played, "{what}");
            }
            k => panic!("kind {k}"),
        }
    }
}

/// Whether the link from `from` to `to` lost anything
trait LinkLoss {
    fn link_loss_seen(&self, r: &Report, from: &str, to: &str) -> bool;
}

impl LinkLoss for MediaReport {
    fn link_loss_seen(&self, r: &Report, from: &str, to: &str) -> bool {
        r.pairs
            .iter()
            .any(|p| p.from == from && p.to == to && p.link.lost > 0)
    }
}

fn host(out: &Outcome, name: &str) -> HostId {
    HostId(
        out.report
            .hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap(),
    )
}

fn stream_of(sim: &Sim, from: &str, name: &str) -> meshrtc_sim::MediaStreamId {
    (0..sim.media_stream_count())
        .map(meshrtc_sim::MediaStreamId)
        .find(|&id| {
            let c = sim.media_stream_config(id);
            c.name == name && sim.peer_id(c.from).is_some_and(|p| p.as_str() == from)
        })
        .unwrap()
}

#[test]
fn media_runs_replay_exactly() {
    // Jitter, loss and both codecs: a different seed changes losses and delays.
    let text = two_peers(
        5,
        "[link]\nlatency_ms = 15\njitter = { shape = \"exponential\", mean_ms = 4 }\n\
         loss = { model = \"gilbert-elliott\", p = 0.02, r = 0.5 }",
        AUDIO_AND_VIDEO,
    );
    let bytes = |seed| serde_json::to_vec_pretty(&run(&text, Some(seed)).report).unwrap();
    let a = bytes(5);
    let b = bytes(5);
    assert!(a.len() > 2000);
    assert!(
        String::from_utf8_lossy(&a).contains("\"played\""),
        "the report carries media"
    );
    assert!(a == b, "same seed, different reports");
    let c = bytes(6);
    assert_ne!(a, c, "another seed, the same report");
}

/// Mono Opus in 20 ms frames from `from`, for the whole run, late after 150 ms
fn voice(from: HostId) -> MediaStreamConfig {
    MediaStreamConfig {
        name: "voice".into(),
        from,
        source: MediaSource::Audio {
            frame: Duration::from_millis(20),
            channels: 1,
        },
        start: Duration::ZERO,
        stop: None,
        late_after: Duration::from_millis(150),
    }
}

#[test]
fn bad_media_config_is_rejected_with_a_clear_error() {
    let base = |media: &str| two_peers(5, "", media);
    let cases = [
        (
            "[[media]]\nkind = \"audio\"\nfrom = \"alice\"\nwidth = 320",
            "width does not apply to audio",
        ),
        (
            "[[media]]\nkind = \"video\"\nfrom = \"alice\"\ncodec = \"opus\"",
            "opus is not a video codec",
        ),
        (
            "[[media]]\nkind = \"audio\"\nfrom = \"alice\"\ncodec = \"vp8\"",
            "vp8 is not an audio codec",
        ),
        (
            "[[media]]\nkind = \"audio\"\nfrom = \"alice\"\n\
             [[media]]\nkind = \"audio\"\nname = \"second\"\nfrom = \"*\"",
            "sends two audio streams",
        ),
        (
            "[[media]]\nkind = \"audio\"\nfrom = \"alice\"\nframe_ms = 15",
            "opus frame of 15 ms",
        ),
        (
            "[[media]]\nkind = \"video\"\nfrom = \"alice\"\nwidth = 161",
            "161x240",
        ),
        (
            "[[media]]\nkind = \"video\"\nfrom = \"alice\"\nfps = 0",
            "fps 0",
        ),
        (
            "[[media]]\nkind = \"audio\"\nfrom = \"alice\"\nstart_s = 3\nstop_s = 2",
            "stop_s 2 is not after start_s 3",
        ),
        ("[[media]]\nkind = \"audio\"\nfrom = \"carol\"", "carol"),
        ("[[media]]\nkind = \"speech\"\nfrom = \"alice\"", "speech"),
        (
            "[[media]]\nkind = \"audio\"\nfrom = \"alice\"\nbitrate_kbps = -3",
            "bitrate_kbps",
        ),
    ];
    for (media, want) in cases {
        let e = Scenario::parse(&base(media), Path::new("bad.toml"))
            .err()
            .unwrap_or_else(|| panic!("accepted: {media}"));
        let msg = e.to_string();
        assert!(
            matches!(e, Error::Scenario { .. }),
            "{media}: not a scenario error: {e:?}"
        );
        assert!(msg.starts_with("bad.toml: "), "{msg}");
        assert!(msg.contains(want), "{media}: {msg:?} lacks {want:?}");
        assert!(!msg.contains('\n'), "one line: {msg:?}");
    }

    // From code: the sender must have the capability, and its Opus settings must match.
    let mut sim = Sim::new(SimConfig::default());
    let mut with_audio = config();
    with_audio.capabilities.audio = true;
    let a = sim.add_host(with_audio);
    let audio = voice(a);
    // The test configuration has no media capabilities; the sender gets audio.
    let b = sim.add_host(config());
    assert!(!sim.host_config(b).capabilities.audio);
    // Each refused with an `Error::Config` that says why.
    let refused = |sim: &mut Sim, stream: MediaStreamConfig, why: &str| {
        let e = sim.add_media_stream(stream).unwrap_err();
        assert!(matches!(&e, Error::Config(m) if m.contains(why)), "{e:?}");
    };
    refused(
        &mut sim,
        MediaStreamConfig {
            from: b,
            ..audio.clone()
        },
        "no audio",
    );
    refused(
        &mut sim,
        MediaStreamConfig {
            source: MediaSource::Audio {
                frame: Duration::from_millis(40),
                channels: 1,
            },
            ..audio.clone()
        },
        "opus config",
    );
    refused(
        &mut sim,
        MediaStreamConfig {
            from: HostId(9),
            ..audio.clone()
        },
        "no such host",
    );
    sim.add_media_stream(audio.clone()).unwrap();
    refused(&mut sim, audio, "already sends");
}

#[test]
fn a_sender_at_1000_ppm_plays_without_growing_delay() {
    // The sender's clock runs 1000 ppm fast: it captures 1000 ppm more audio per true second
    // than the receiver plays. Without drift compensation the receiver's buffer (and the
    // delay) would grow by 1 ms every second, 55 ms over this run; the jitter buffer
    // estimates the drift and plays slightly faster instead.
    let mut sim = Sim::new(SimConfig {
        seed: 11,
        default_link: meshrtc_sim::LinkConfig {
            jitter: meshrtc_sim::Jitter::Normal {
                std_dev: Duration::from_millis(2),
            },
            ..meshrtc_sim::LinkConfig::with_latency(Duration::from_millis(25))
        },
        ..SimConfig::default()
    });
    let mut cfg = config();
    cfg.capabilities.audio = true;
    let fast = sim.add_host_with(
        cfg.clone(),
        HostOptions {
            clock: Clock::new(3_600_000_000_000, 1000.0).unwrap(),
            nat: None,
        },
    );
    let slow = sim.add_host(cfg);
    let voice = sim.add_media_stream(voice(fast)).unwrap();
    sim.join(fast, "room", "fast");
    sim.join(slow, "room", "slow");
    let end = Duration::from_secs(60);
    sim.run_until(end);

    let st = sim.media_stats(voice, slow).unwrap();
    let (lost, pending) = sim.media_unplayed(voice, slow, end);
    assert_eq!(lost, 0, "{st:?}");
    assert_eq!(st.unmatched, 0);
    assert_eq!(st.played + pending, st.sent);
    assert!(st.sent > 2900, "{}", st.sent);
    let window = |lo: u64, hi: u64| -> Vec<f64> {
        let (lo, hi) = (Duration::from_secs(lo), Duration::from_secs(hi));
        st.samples
            .iter()
            .filter(|x| (lo..hi).contains(&x.captured_at))
            .map(|x| x.delay.as_secs_f64() * 1000.0)
            .collect()
    };
    let all = window(0, 60);
    let p99 = crate::util::quantile(&all, 0.99);
    assert!(p99 < 80.0, "delay p99 {p99:.1} ms");
    // Early and late delay agree within a few milliseconds: no growth.
    let early = crate::util::quantile(&window(5, 15), 0.5);
    let late = crate::util::quantile(&window(50, 60), 0.5);
    assert!(
        (late - early).abs() < 8.0,
        "median delay went from {early:.1} to {late:.1} ms"
    );
    let peer = sim.peer_id(fast).unwrap().clone();
    let stats = sim.peer_stats(slow, &peer).unwrap();
    // The truth: (1 + 1000e-6) / 1 - 1 = 1000 ppm.
    let est = stats.clock_drift_ppm.expect("drift estimated");
    assert!((est - 1000.0).abs() < 50.0, "estimated {est} ppm");
    // The sender reports' view of the same clock (its wall clock, not its media clock).
    let est = stats
        .report_clock_drift_ppm
        .expect("drift from sender reports");
    assert!((est - 1000.0).abs() < 50.0, "from sender reports {est} ppm");
    // Compensation removed about 1 ms of audio per second of the run.
    let removed = stats
        .audio
        .as_ref()
        .unwrap()
        .jitter_buffer
        .removed_samples_for_acceleration as f64
        / 48.0;
    assert!((35.0..90.0).contains(&removed), "removed {removed:.1} ms");
}
