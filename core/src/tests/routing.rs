//! Routing of outgoing tracks end to end: unicast and per-peer tracks, and paused sending
//! that the remote sees in its m-line direction

use std::time::Duration;

use crate::codec::testsrc::{tone_snr_db, TestPattern, Tone};
use crate::codec::{I420Frame, VideoCodec};
use crate::media::VideoPayload;
use crate::pipeline::TrackId;
use crate::signal::Capabilities;
use crate::tests::{perfect, Mesh};
use crate::{Config, Event, MediaKind};

fn av_config() -> Config {
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
    c.media.video.height = 96;
    c.media.video.bitrate_bps = 300_000;
    c
}

/// Audio chunks `at` played from `from` in [t0, t1), and how many were concealed
fn chunks_from(
    m: &Mesh,
    at: usize,
    from: usize,
    t0: Duration,
    t1: Duration,
) -> (Vec<i16>, usize, usize) {
    let mut pcm = Vec::new();
    let (mut n, mut concealed) = (0, 0);
    for (t, e) in &m.events[at] {
        if let Event::AudioPlayout { peer, chunk } = e {
            if *peer == Mesh::id(from) && *t >= t0 && *t < t1 {
                n += 1;
                if chunk.concealed {
                    concealed += 1;
                } else {
                    pcm.extend_from_slice(&chunk.samples);
                }
            }
        }
    }
    (pcm, n, concealed)
}

/// Decoded video frames `at` got from `from`
fn frames_from(m: &Mesh, at: usize, from: usize) -> Vec<I420Frame> {
    m.events[at]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::VideoFrame {
                peer,
                payload: VideoPayload::Decoded(f),
                ..
            } if *peer == Mesh::id(from) => Some((**f).clone()),
            _ => None,
        })
        .collect()
}

/// Variance of the luma plane: a test pattern has plenty, a flat grey frame none
fn luma_variance(f: &I420Frame) -> f64 {
    let y = &f.y;
    let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / y.len() as f64;
    y.iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / y.len() as f64
}

#[test]
fn unicast_tracks_reach_only_their_peer() {
    let mut m = Mesh::new(vec![av_config(), av_config(), av_config()], perfect(10));
    m.connect_all();
    let (p1, p2) = (Mesh::id(1), Mesh::id(2));
    // Track 0: a tone to p1 only. Track 1: the pattern to p1; track 2: flat grey to p2.
    let (tone_track, pattern_track, grey_track) =
        (TrackId::new(0), TrackId::new(1), TrackId::new(2));
    let mut tone = Tone::new(48_000, 1).with_frequency(440.0);
    let mut pattern = TestPattern::new(160, 96);
    let mut grey = I420Frame::black(160, 96);
    grey.y.fill(128);
    let start = m.elapsed();
    for step in 0..300u64 {
        if step % 2 == 0 {
            let pcm = tone.next_samples(960);
            let sent = m
                .with(0, |p, now| p.send_audio_to(tone_track, now, &pcm, [&p1]))
                .unwrap();
            assert_eq!(sent, 1);
        }
        if step % 3 == 0 {
            let f = pattern.next_frame();
            m.with(0, |p, now| p.send_video_to(pattern_track, now, &f, [&p1]))
                .unwrap();
            m.with(0, |p, now| p.send_video_to(grey_track, now, &grey, [&p2]))
                .unwrap();
        }
        m.run_for(Duration::from_millis(10));
    }
    let end = m.elapsed();
    // Audio: p1 hears the tone, p2 hears nothing from p0 at all.
    let (pcm, _, _) = chunks_from(&m, 1, 0, start, end);
    assert!(pcm.len() > 48_000 * 2, "{} samples at p1", pcm.len());
    let snr = tone_snr_db(&pcm[24_000..], 48_000, 440.0);
    assert!(snr > 20.0, "snr {snr} dB");
    let (_, n2, _) = chunks_from(&m, 2, 0, start, end);
    assert_eq!(n2, 0, "p2 played audio of a track unicast to p1");
    // Video: two tracks of one kind, each to its own peer, each with its own content.
    let at1 = frames_from(&m, 1, 0);
    let at2 = frames_from(&m, 2, 0);
    assert!(
        at1.len() > 50 && at2.len() > 50,
        "{} and {} frames",
        at1.len(),
        at2.len()
    );
    let v1 = luma_variance(at1.last().unwrap());
    let v2 = luma_variance(at2.last().unwrap());
    assert!(v1 > 500.0, "p1 should see the pattern (variance {v1})");
    assert!(v2 < 20.0, "p2 should see flat grey (variance {v2})");
    // Nothing of p0's reached p0's other peers through the default track.
    assert!(frames_from(&m, 1, 2).is_empty() && frames_from(&m, 2, 1).is_empty());
}

#[test]
fn paused_track_stops_and_resumes_and_the_remote_sees_it() {
    let mut m = Mesh::new(vec![av_config(), av_config()], perfect(10));
    m.connect_all();
    let p1 = Mesh::id(1);
    let mut tone = Tone::new(48_000, 1).with_frequency(440.0);
    let ms = Duration::from_millis;
    let mut marks = Vec::new();
    for step in 0..600u64 {
        if step == 200 {
            m.with(0, |p, _| p.set_sending(&p1, MediaKind::Audio, false))
                .unwrap();
            marks.push(m.elapsed());
        }
        if step == 400 {
            m.with(0, |p, _| p.set_sending(&p1, MediaKind::Audio, true))
                .unwrap();
            marks.push(m.elapsed());
        }
        if step % 2 == 0 {
            let pcm = tone.next_samples(960);
            m.with(0, |p, now| p.send_audio(now, &pcm)).unwrap();
        }
        m.run_for(ms(10));
        if step == 300 {
            assert!(!m.parts[1].is_remote_sending(&Mesh::id(0), MediaKind::Audio));
            assert!(!m.parts[0].is_sending(&p1, MediaKind::Audio));
        }
    }
    let end = m.elapsed();
    let (pause, resume) = (marks[0], marks[1]);
    // The offer that paused it said so in the m-line.
    assert!(
        m.sent[0].iter().any(|f| f.contains("a=recvonly")),
        "no recvonly offer from p0"
    );
    // p1 was told, both ways, in order.
    let states: Vec<(Duration, bool)> = m.events[1]
        .iter()
        .filter_map(|(t, e)| match e {
            Event::RemoteMediaState {
                peer,
                kind: MediaKind::Audio,
                sending,
            } if *peer == Mesh::id(0) => Some((*t, *sending)),
            _ => None,
        })
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(!states[0].1 && states[0].0 >= pause && states[0].0 < pause + ms(200));
    assert!(states[1].1 && states[1].0 >= resume && states[1].0 < resume + ms(200));
    // Before: the tone. While paused (after what was in flight and buffered): no real
    // audio. After resuming: the tone again within half a second.
    let (before, _, _) = chunks_from(&m, 1, 0, pause - ms(1000), pause);
    assert!(tone_snr_db(&before, 48_000, 440.0) > 20.0);
    let (paused, _, _) = chunks_from(&m, 1, 0, pause + ms(300), resume);
    assert!(
        paused.is_empty(),
        "{} samples played while paused",
        paused.len()
    );
    let (after, _, _) = chunks_from(&m, 1, 0, resume + ms(500), end);
    assert!(
        after.len() >= 48_000,
        "{} samples after resuming",
        after.len()
    );
    let snr = tone_snr_db(&after, 48_000, 440.0);
    assert!(snr > 20.0, "snr after resuming {snr} dB");
}

/// Mean squared difference of horizontally neighbouring luma pixels: fine detail
fn hf_energy(f: &I420Frame) -> f64 {
    let w = f.width as usize;
    let mut sum = 0.0;
    for row in f.y.chunks_exact(w) {
        for p in row.windows(2) {
            sum += (f64::from(p[1]) - f64::from(p[0])).powi(2);
        }
    }
    sum / ((w - 1) * f.height as usize) as f64
}

#[test]
fn blurred_track_arrives_with_far_less_detail_than_the_camera() {
    use crate::pipeline::blur::{Blur, BlurStage};
    use crate::pipeline::{
        Media, Pipeline, PipelineConfig, PipelineOutput, Routing, Select, StageConfig, TrackKind,
    };
    use std::sync::Arc;

    let mut m = Mesh::new(vec![av_config(), av_config()], perfect(10));
    m.connect_all();
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let track = pipeline.add_track(TrackKind::Video, Routing::Broadcast);
    pipeline.add_stage(
        BlurStage::new(Blur::new(4), track),
        StageConfig::new(Duration::from_millis(20)).video(Select::Local),
    );
    pipeline.add_peer(Mesh::id(1));
    let mut pattern = TestPattern::new(160, 96);
    let mut camera_hf = Vec::new();
    for step in 0..150u64 {
        if step % 3 == 0 {
            let frame = pattern.next_frame();
            camera_hf.push(hf_energy(&frame));
            let now = m.now;
            pipeline.handle_local_video(now, Arc::new(frame)).unwrap();
            while let Some(o) = pipeline.poll_output() {
                let PipelineOutput::Media(o) = o else {
                    continue;
                };
                let to: Vec<_> = pipeline.recipients(&o).cloned().collect();
                if let Media::Video(v) = &o.media {
                    let sent = m
                        .with(0, |p, now| p.send_video_to(o.track, now, &v.frame, &to))
                        .unwrap();
                    assert_eq!(sent, 1);
                }
                pipeline.recycle(o);
            }
        }
        m.run_for(Duration::from_millis(10));
    }
    let got = frames_from(&m, 1, 0);
    assert!(got.len() > 30, "{} frames", got.len());
    let camera = camera_hf.iter().sum::<f64>() / camera_hf.len() as f64;
    let received = got.iter().map(hf_energy).sum::<f64>() / got.len() as f64;
    assert!(
        received < 0.2 * camera,
        "received detail {received:.1} against the camera's {camera:.1}"
    );
    // Still the picture, not a blank: the blur keeps the coarse structure.
    assert!(luma_variance(got.last().unwrap()) > 200.0);
}

/// Decoded frames `at` got from `from` on one of its video tracks (`None`: the main one)
fn track_frames(m: &Mesh, at: usize, from: usize, track: Option<TrackId>) -> Vec<I420Frame> {
    m.events[at]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::VideoFrame {
                peer,
                track: t,
                payload: VideoPayload::Decoded(f),
                ..
            } if *peer == Mesh::id(from) && *t == track => Some((**f).clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn one_peer_receives_the_camera_and_its_blurred_copy_as_separate_tracks() {
    use crate::pipeline::blur::Blur;

    let mut m = Mesh::new(vec![av_config(), av_config(), av_config()], perfect(10));
    m.connect_all();
    let (p1, p2) = (Mesh::id(1), Mesh::id(2));
    // The camera on the main m-line to everyone; to p1 also its blurred copy and a flat
    // grey picture, each on an m-line of its own.
    let (blurred, grey_track) = (TrackId::new(5), TrackId::new(6));
    m.with(0, |p, _| p.add_video_track(blurred)).unwrap();
    m.with(0, |p, _| p.add_video_track(grey_track)).unwrap();
    let mut pattern = TestPattern::new(160, 96);
    let mut blur = Blur::new(4);
    let mut soft = I420Frame::black(160, 96);
    let mut grey = I420Frame::black(160, 96);
    grey.y.fill(128);
    let mut camera_hf = Vec::new();
    for step in 0..300u64 {
        if step % 3 == 0 {
            let frame = pattern.next_frame();
            camera_hf.push(hf_energy(&frame));
            blur.apply(&frame, &mut soft);
            m.with(0, |p, now| p.send_video(now, &frame)).unwrap();
            m.with(0, |p, now| p.send_video_to(blurred, now, &soft, [&p1]))
                .unwrap();
            m.with(0, |p, now| p.send_video_to(grey_track, now, &grey, [&p1]))
                .unwrap();
        }
        m.run_for(Duration::from_millis(10));
    }
    // The m-lines were added by renegotiation, one offer per peer (both tracks in it).
    let offers = m.sent[0]
        .iter()
        .filter(|f| f.contains("mrtc-track5") && f.contains("mrtc-track6"))
        .count();
    assert!(offers >= 1, "no offer named both tracks");
    let main = track_frames(&m, 1, 0, None);
    let soft_got = track_frames(&m, 1, 0, Some(blurred));
    let grey_got = track_frames(&m, 1, 0, Some(grey_track));
    assert!(
        main.len() > 60 && soft_got.len() > 60 && grey_got.len() > 60,
        "{} main, {} blurred, {} grey frames",
        main.len(),
        soft_got.len(),
        grey_got.len()
    );
    let camera = camera_hf.iter().sum::<f64>() / camera_hf.len() as f64;
    let mean_hf = |fs: &[I420Frame]| fs.iter().map(hf_energy).sum::<f64>() / fs.len() as f64;
    let (main_hf, soft_hf) = (mean_hf(&main), mean_hf(&soft_got));
    eprintln!(
        "p1 from p0: {} main frames (detail {main_hf:.1}, camera {camera:.1}), {} blurred \
         (detail {soft_hf:.1}), {} grey",
        main.len(),
        soft_got.len(),
        grey_got.len()
    );
    // The camera's detail arrives on the main track, the blurred copy keeps little of it.
    assert!(
        main_hf > 0.5 * camera,
        "main {main_hf:.1} vs camera {camera:.1}"
    );
    assert!(
        soft_hf < 0.2 * main_hf,
        "blurred {soft_hf:.1} vs main {main_hf:.1}"
    );
    assert!(luma_variance(soft_got.last().unwrap()) > 200.0);
    assert!(luma_variance(grey_got.last().unwrap()) < 20.0);
    // The per-peer counters take the separate tracks in as video, and both ends agree.
    let sent = m.parts[0].peer_stats(&p1).unwrap().media_traffic.video_sent;
    let got = m.parts[1]
        .peer_stats(&Mesh::id(0))
        .unwrap()
        .media_traffic
        .video_received;
    assert_eq!(sent.frames, got.frames, "{sent:?} vs {got:?}");
    assert_eq!(sent.bytes, got.bytes);
    assert!(got.frames as usize >= main.len() + soft_got.len() + grey_got.len());
    // p2 got the camera only: the separate tracks went to p1 alone.
    assert!(track_frames(&m, 2, 0, None).len() > 60);
    assert!(m.events[2]
        .iter()
        .all(|(_, e)| !matches!(e, Event::VideoFrame { track: Some(_), .. })));
    let _ = p2;
}

#[test]
fn separate_tracks_pause_with_video_and_resume_with_a_keyframe() {
    let mut m = Mesh::new(vec![av_config(), av_config()], perfect(10));
    m.connect_all();
    let p1 = Mesh::id(1);
    let track = TrackId::new(1);
    m.with(0, |p, _| p.add_video_track(track)).unwrap();
    let mut pattern = TestPattern::new(160, 96);
    let ms = Duration::from_millis;
    let mut marks = Vec::new();
    for step in 0..450u64 {
        if step == 150 || step == 300 {
            let on = step == 300;
            m.with(0, |p, _| p.set_sending(&p1, MediaKind::Video, on))
                .unwrap();
            marks.push(m.elapsed());
        }
        if step % 3 == 0 {
            let f = pattern.next_frame();
            m.with(0, |p, now| p.send_video_to(track, now, &f, [&p1]))
                .unwrap();
        }
        m.run_for(ms(10));
    }
    let times: Vec<Duration> = m.events[1]
        .iter()
        .filter_map(|(t, e)| match e {
            Event::VideoFrame {
                track: Some(_),
                payload: VideoPayload::Decoded(_),
                ..
            } => Some(*t),
            _ => None,
        })
        .collect();
    let (pause, resume) = (marks[0], marks[1]);
    let before = times.iter().filter(|t| **t < pause).count();
    let during = times
        .iter()
        .filter(|t| **t > pause + ms(300) && **t < resume)
        .count();
    let after = times.iter().filter(|t| **t > resume + ms(500)).count();
    assert!(before > 20, "{before} frames before the pause");
    assert_eq!(during, 0, "frames of the separate track while paused");
    assert!(after > 20, "{after} frames after resuming");
}

#[test]
fn both_sides_adding_separate_tracks_at_once_each_get_the_other() {
    // Glare: both offer their new m-lines at the same instant; perfect negotiation keeps
    // one offer, and the side whose offer was dropped offers its tracks again after.
    let mut m = Mesh::new(vec![av_config(), av_config()], perfect(10));
    m.connect_all();
    let track = TrackId::new(2);
    for i in 0..2 {
        m.with(i, |p, _| p.add_video_track(track)).unwrap();
    }
    let mut pattern = TestPattern::new(160, 96);
    for step in 0..200u64 {
        if step % 3 == 0 {
            let f = pattern.next_frame();
            for (i, j) in [(0, 1), (1, 0)] {
                let to = Mesh::id(j);
                m.with(i, |p, now| p.send_video_to(track, now, &f, [&to]))
                    .unwrap();
            }
        }
        m.run_for(Duration::from_millis(10));
    }
    for (at, from) in [(1, 0), (0, 1)] {
        let got = track_frames(&m, at, from, Some(track));
        assert!(
            got.len() > 30,
            "p{at} got {} frames of p{from}'s track",
            got.len()
        );
    }
}
