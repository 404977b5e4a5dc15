//! Media end to end: encode → packetize → str0m → depacketize → decode, in virtual time

use std::time::Duration;

use crate::codec::testsrc::{psnr, tone_snr_db, TestPattern, Tone};
use crate::codec::VideoCodec;
use crate::media::VideoPayload;
use crate::signal::Capabilities;
use crate::tests::{perfect, LinkFn, Mesh};
use crate::{Config, Event};

fn av_config(audio: bool, video: bool, codecs: &[VideoCodec]) -> Config {
    let mut c = Config {
        capabilities: Capabilities {
            audio,
            video,
            data: true,
        },
        ..Config::default()
    };
    c.media.video_codecs = codecs.to_vec();
    c.media.video.width = 320;
    c.media.video.height = 180;
    c.media.video.bitrate_bps = 600_000;
    c
}

/// Sends a tone from every participant and a test pattern at 30 fps for `secs`
fn stream(m: &mut Mesh, secs: u64, audio: bool, video: bool) {
    let n = m.parts.len();
    let mut tones: Vec<Tone> = (0..n).map(|_| Tone::new(48_000, 1)).collect();
    let mut patterns: Vec<TestPattern> = (0..n).map(|_| TestPattern::new(320, 180)).collect();
    // 10 ms steps: audio every 20 ms, video every 33.3 ms (frame k at k*100/3 ms).
    let mut frame_k = 0u64;
    for step in 0..(secs * 100) {
        let t_ms = step * 10;
        if audio && step % 2 == 0 {
            for (i, tone) in tones.iter_mut().enumerate() {
                let pcm = tone.next_samples(960);
                m.with(i, |p, now| p.send_audio(now, &pcm)).unwrap();
            }
        }
        if video && frame_k * 100 / 3 <= t_ms {
            for (i, pat) in patterns.iter_mut().enumerate() {
                let f = pat.next_frame();
                m.with(i, |p, now| p.send_video(now, &f)).unwrap();
            }
            frame_k += 1;
        }
        m.run_for(Duration::from_millis(10));
    }
}

fn audio_from(m: &Mesh, at: usize, from: usize) -> (Vec<i16>, usize) {
    let mut pcm = Vec::new();
    let mut concealed = 0;
    for (_, e) in &m.events[at] {
        if let Event::AudioPlayout { peer, chunk } = e {
            if *peer == Mesh::id(from) {
                pcm.extend_from_slice(&chunk.samples);
                concealed += chunk.concealed as usize;
            }
        }
    }
    (pcm, concealed)
}

/// Decoded frames `at` got from `from`: (virtual time, media ticks, frame, codec)
fn video_from(
    m: &Mesh,
    at: usize,
    from: usize,
) -> Vec<(Duration, i64, crate::codec::I420Frame, VideoCodec)> {
    m.events[at]
        .iter()
        .filter_map(|(t, e)| match e {
            Event::VideoFrame {
                peer,
                payload: VideoPayload::Decoded(f),
                media_ticks,
                codec,
                ..
            } if *peer == Mesh::id(from) => Some((*t, *media_ticks, (**f).clone(), *codec)),
            _ => None,
        })
        .collect()
}

#[test]
fn opus_tone_arrives_with_high_snr() {
    let mut m = Mesh::new(
        vec![av_config(true, false, &[]), av_config(true, false, &[])],
        perfect(20),
    );
    m.connect_all();
    stream(&mut m, 4, true, false);
    for (at, from) in [(1, 0), (0, 1)] {
        let (pcm, concealed) = audio_from(&m, at, from);
        // Four seconds sent; playout covers nearly all of it.
        assert!(pcm.len() >= 48_000 * 3, "{} samples", pcm.len());
        // Skip the start (codec and buffer warm-up), measure the rest.
        let snr = tone_snr_db(&pcm[24_000..], 48_000, 440.0);
        assert!(snr > 20.0, "snr {snr} dB");
        assert!(
            concealed <= 3,
            "{concealed} concealed chunks on a perfect link"
        );
    }
    let st = m.parts[1].peer_stats(&Mesh::id(0)).unwrap();
    let a = st.audio.unwrap();
    assert_eq!(a.jitter_buffer.frames_late, 0);
    assert!(a.jitter_buffer.frames_decoded >= 190, "{a:?}");
}

fn video_round_trip(codec: VideoCodec) {
    let mut m = Mesh::new(
        vec![
            av_config(false, true, &[codec]),
            av_config(false, true, &[codec]),
        ],
        perfect(20),
    );
    m.connect_all();
    stream(&mut m, 3, false, true);
    let frames = video_from(&m, 1, 0);
    // 90 frames sent in 3 s at 30 fps.
    assert!(frames.len() >= 80, "{codec:?}: {} frames", frames.len());
    let pattern = TestPattern::new(320, 180);
    let mut worst = f64::INFINITY;
    for (_, ticks, f, c) in &frames {
        assert_eq!(*c, codec);
        let index = ((*ticks as f64) / 3000.0).round() as u64;
        worst = worst.min(psnr(f, &pattern.frame(index)));
    }
    assert!(worst > 28.0, "{codec:?}: worst psnr {worst}");
    // Frames arrive at the frame rate: 30 per second, give or take one.
    let last_sec = frames
        .iter()
        .filter(|(t, ..)| {
            *t >= m.elapsed() - Duration::from_secs(2) && *t < m.elapsed() - Duration::from_secs(1)
        })
        .count();
    assert!((29..=31).contains(&last_sec), "{codec:?}: {last_sec} fps");
    let vs = m.parts[1].peer_stats(&Mesh::id(0)).unwrap().video.unwrap();
    assert!(vs.keyframes >= 1);
}

/// The media counters agree end to end on a perfect link: what one side wrote the other
/// read, byte for byte and frame for frame; packets are at least frames; the received
/// bitrate of the last second matches the bytes counted
#[test]
fn media_counters_match_at_both_ends() {
    use crate::MediaKind::{Audio, Video};
    let mut m = Mesh::new(
        vec![
            av_config(true, true, &[VideoCodec::Vp8]),
            av_config(true, true, &[VideoCodec::Vp8]),
        ],
        perfect(20),
    );
    m.connect_all();
    stream(&mut m, 3, true, true);
    let streaming = m.parts[1].peer_stats(&Mesh::id(0)).unwrap().media_traffic;
    // Let everything in flight arrive and the senders' packet counts be reported.
    m.run_for(Duration::from_millis(1500));
    for (at, from) in [(1, 0), (0, 1)] {
        let sent = m.parts[from]
            .peer_stats(&Mesh::id(at))
            .unwrap()
            .media_traffic;
        let got = m.parts[at]
            .peer_stats(&Mesh::id(from))
            .unwrap()
            .media_traffic;
        for kind in [Audio, Video] {
            let (s, r) = (sent.count(kind, true), got.count(kind, false));
            assert!(s.frames > 0 && s.bytes > 0, "{kind}: {s:?}");
            assert_eq!((s.bytes, s.frames), (r.bytes, r.frames), "{kind}");
            assert!(r.packets >= r.frames, "{kind}: {r:?}");
            // No loss, so no retransmission: every packet sent arrived.
            assert_eq!(s.packets, r.packets, "{kind}");
        }
        // 3 s of 20 ms audio frames, one packet each; VP8 key frames take several.
        assert!(got.audio_received.frames >= 140, "{got:?}");
        assert_eq!(got.audio_received.packets, got.audio_received.frames);
        assert!(got.video_received.packets > got.video_received.frames);
    }
    // While streaming, the last second's audio bitrate is the average one (steady Opus),
    // and video flowed too.
    let audio = streaming.audio_received;
    let average = audio.bytes as f64 * 8.0 / 3.0;
    let last = streaming
        .audio_received_bps
        .expect("a whole second is over") as f64;
    assert!(
        last > average * 0.7 && last < average * 1.5,
        "{last} b/s in the last second, {average} b/s on average"
    );
    assert!(streaming.video_received_bps.is_some_and(|b| b > 0));
    // 3 s without media: the last whole second had none.
    m.run_for(Duration::from_millis(1500));
    let quiet = m.parts[1].peer_stats(&Mesh::id(0)).unwrap().media_traffic;
    assert_eq!(quiet.audio_received_bps, Some(0));
}

#[test]
fn h264_round_trip() {
    video_round_trip(VideoCodec::H264);
}

#[test]
fn vp8_round_trip() {
    video_round_trip(VideoCodec::Vp8);
}

#[test]
fn vp9_round_trip() {
    video_round_trip(VideoCodec::Vp9);
}

#[test]
fn codec_negotiation_matrix() {
    use VideoCodec::*;
    // (offerer's preference, answerer's preference, what p0 receives, what p1 receives)
    let cases: [(&[VideoCodec], &[VideoCodec], VideoCodec, VideoCodec); 3] = [
        (&[Vp8], &[H264, Vp8, Vp9], Vp8, Vp8),
        (&[Vp9, Vp8], &[Vp8, Vp9], Vp8, Vp9),
        (&[H264, Vp8, Vp9], &[Vp9], Vp9, Vp9),
    ];
    for (a, b, p0_gets, p1_gets) in cases {
        // p1 joins second, so p1 offers with its preference b.
        let mut m = Mesh::new(
            vec![av_config(false, true, a), av_config(false, true, b)],
            perfect(10),
        );
        m.connect_all();
        stream(&mut m, 1, false, true);
        let got0 = video_from(&m, 0, 1);
        let got1 = video_from(&m, 1, 0);
        assert!(!got0.is_empty() && !got1.is_empty(), "{a:?} / {b:?}");
        assert!(
            got0.iter().all(|f| f.3 == p0_gets),
            "{a:?}/{b:?}: p0 got {:?}",
            got0[0].3
        );
        assert!(
            got1.iter().all(|f| f.3 == p1_gets),
            "{a:?}/{b:?}: p1 got {:?}",
            got1[0].3
        );
    }
}

#[test]
fn peer_without_video_still_connects_and_gets_audio() {
    let mut m = Mesh::new(
        vec![
            av_config(true, true, &[VideoCodec::H264]),
            av_config(true, false, &[]),
        ],
        perfect(10),
    );
    m.connect_all();
    stream(&mut m, 2, true, false);
    let sent = m
        .with(0, |p, now| {
            p.send_video(now, &TestPattern::new(320, 180).next_frame())
        })
        .unwrap();
    assert_eq!(sent, 0, "no video goes to a peer without video");
    assert!(video_from(&m, 1, 0).is_empty());
    let (pcm, _) = audio_from(&m, 1, 0);
    assert!(pcm.len() > 48_000);
    // The peer without video cannot send it either.
    assert!(m
        .with(1, |p, now| p
            .send_video(now, &TestPattern::new(320, 180).next_frame()))
        .is_err());
}

fn lossy(rate: f64, seed: u64, after: u64) -> LinkFn {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut count = 0u64;
    Box::new(move |_, _, _| {
        count += 1;
        // Let the handshake through untouched: lose only once media flows.
        if count > after && rng.f64() < rate {
            None
        } else {
            Some(Duration::from_millis(20))
        }
    })
}

#[test]
fn five_percent_loss_audio_conceals_and_video_recovers() {
    let mut m = Mesh::new(
        vec![
            av_config(true, true, &[VideoCodec::Vp8]),
            av_config(true, true, &[VideoCodec::Vp8]),
        ],
        lossy(0.05, 3, 400),
    );
    m.connect_all();
    stream(&mut m, 10, true, true);
    let st = m.parts[1].peer_stats(&Mesh::id(0)).unwrap();
    let a = st.audio.unwrap();
    let v = st.video.unwrap();
    // Audio keeps flowing: nearly 10 s of playout, with concealment counted.
    let (pcm, _) = audio_from(&m, 1, 0);
    assert!(pcm.len() >= 48_000 * 9, "{}", pcm.len());
    assert!(a.jitter_buffer.concealed_samples > 0, "{a:?}");
    // Video: keyframe requests went out and decoding never stalls longer than one
    // keyframe interval (2 s).
    let frames = video_from(&m, 1, 0);
    assert!(frames.len() > 150, "{} frames, {v:?}", frames.len());
    let mut worst_gap = Duration::ZERO;
    for w in frames.windows(2) {
        worst_gap = worst_gap.max(w[1].0 - w[0].0);
    }
    eprintln!("5% loss: worst gap between decoded frames {worst_gap:?}, {v:?}");
    assert!(
        worst_gap <= Duration::from_secs(2),
        "gap {worst_gap:?} {v:?}"
    );
}

#[test]
fn malformed_encoded_frames_do_not_break_the_decoder_path() {
    for codec in [VideoCodec::H264, VideoCodec::Vp8, VideoCodec::Vp9] {
        let mut m = Mesh::new(
            vec![
                av_config(false, true, &[codec]),
                av_config(false, true, &[codec]),
            ],
            perfect(10),
        );
        m.connect_all();
        stream(&mut m, 1, false, true);
        let garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 3],
            vec![0, 0, 0, 1, 0x65, 0xff, 0xff],
            (0..1500).map(|i| (i * 7 % 251) as u8).collect(),
            vec![0x82, 0x49, 0x83, 0x42, 0x00],
        ];
        for g in garbage {
            m.with(0, |p, now| {
                p.send_encoded_video(now, codec, bytes::Bytes::from(g))
            })
            .unwrap();
            m.run_for(Duration::from_millis(33));
        }
        let before = video_from(&m, 1, 0).len();
        stream(&mut m, 3, false, true);
        let after = video_from(&m, 1, 0).len();
        // Hostile frames never cost the connection.
        for (_, e) in m.events[1].iter().chain(m.events[0].iter()) {
            assert!(
                !matches!(e, Event::PeerFailed { .. } | Event::PeerLeft { .. }),
                "{e:?}"
            );
        }
        let vs = m.parts[1].peer_stats(&Mesh::id(0)).map(|s| s.video);
        assert!(after > before + 40, "{codec:?}: {before} -> {after} {vs:?}");
    }
}
