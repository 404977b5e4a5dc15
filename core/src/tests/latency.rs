//! The latency a pipeline adds to a call, in exact virtual time
//!
//! Each test measures capture-to-playout (audio) or capture-to-render (video) of the same
//! media through a call twice, without and with pipeline stages in its path, and pairs the
//! two per burst or per frame: the difference is what the stages add (their tick waits and
//! holds, and their modelled run cost), free of the network's and the jitter buffer's share.
//! `cargo nextest run --release -p meshrtc tests::latency --no-capture` prints the figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::testsrc::TestPattern;
use crate::codec::{I420Frame, VideoCodec};
use crate::media::VideoPayload;
use crate::pipeline::blur::{Blur, BlurStage};
use crate::pipeline::composite::{CompositorConfig, CompositorStage};
use crate::pipeline::mixer::{MixerConfig, MixerStage};
use crate::pipeline::{
    Media, Pipeline, PipelineConfig, PipelineOutput, Routing, Select, StageConfig, TrackKind,
};
use crate::signal::Capabilities;
use crate::tests::{perfect, LinkFn, Mesh};
use crate::{Config, Event};

fn config(audio: bool, video: bool) -> Config {
    let mut c = Config {
        capabilities: Capabilities {
            audio,
            video,
            data: true,
        },
        ..Config::default()
    };
    c.media.video_codecs = vec![VideoCodec::Vp8];
    c.media.video.width = 160;
    c.media.video.height = 96;
    c.media.video.bitrate_bps = 400_000;
    // No bandwidth estimation, so no pacer: the tracks of the video test share one link,
    // and a pacer would queue each frame behind the other tracks' (a cost of sending more
    // tracks, not of the stages, and one that would blur the pairing).
    c.media.rate.enabled = false;
    c
}

/// 20 ms plus a per-packet jitter of 0 to 15 ms (seeded), packets may reorder
fn jittery(seed: u64) -> LinkFn {
    let mut rng = fastrand::Rng::with_seed(seed);
    Box::new(move |_, _, _| Some(Duration::from_micros(20_000 + rng.u64(0..15_000))))
}

/// (p50, p95, max) in milliseconds
fn percentiles(v: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), at(1.0))
}

fn show(what: &str, v: &[Duration]) {
    let (p50, p95, max) = percentiles(v);
    eprintln!(
        "{what:<44} p50 {p50:7.3} ms  p95 {p95:7.3} ms  max {max:7.3} ms  ({} samples)",
        v.len()
    );
}

/// Audio bursts: 40 ms of 1 kHz every 240 ms (12 Opus frames of 20 ms), the rest silence
const BURST_PERIOD: usize = 12;
const BURST_FRAMES: usize = 2;
const FRAME: usize = 960;

fn burst_frame(index: usize, phase: usize) -> Vec<i16> {
    let on = (index + BURST_PERIOD - phase) % BURST_PERIOD < BURST_FRAMES;
    (0..FRAME)
        .map(|i| {
            if on {
                let t = (index * FRAME + i) as f64 / 48_000.0;
                (10_000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
            } else {
                0
            }
        })
        .collect()
}

/// Onsets in a timed stream of audio blocks: the instant of the first loud sample after at
/// least 50 ms of quiet
fn onsets(blocks: &[(Instant, Vec<i16>)]) -> Vec<Instant> {
    let mut out = Vec::new();
    let mut last_loud: Option<Instant> = None;
    for (t, samples) in blocks {
        for (i, s) in samples.iter().enumerate() {
            if s.unsigned_abs() > 3000 {
                let at = *t + Duration::from_nanos(i as u64 * 1_000_000_000 / 48_000);
                if last_loud.is_none_or(|l| at > l + Duration::from_millis(50)) {
                    out.push(at);
                }
                last_loud = Some(at);
            }
        }
    }
    out
}

/// Latency of each onset from the latest capture before it: (capture, latency)
fn match_captures(onsets: &[Instant], captures: &[Instant]) -> Vec<(Instant, Duration)> {
    onsets
        .iter()
        .filter_map(|o| {
            let c = captures.iter().rev().find(|c| *c <= o)?;
            Some((*c, *o - *c))
        })
        .collect()
}

/// Two peers send bursts to a third, offset by half a period; the listener plays each
/// peer's chunks as they come (no pipeline) and, in parallel, the local mix of a mixer
/// stage fed those chunks (`Routing::Local`, as the `conference` example plays). The mixer
/// ticks on the first peer's chunk grid; the other peer's chunks wait for its tick.
#[test]
fn a_mixer_adds_at_most_one_chunk_to_capture_to_playout() {
    let mut m = Mesh::new(
        vec![
            config(true, false),
            config(true, false),
            config(true, false),
        ],
        jittery(11),
    );
    m.connect_all();
    let listener = 2;
    let mut captures: [Vec<Instant>; 2] = [Vec::new(), Vec::new()];
    let frames = 30_000 / 20;
    for index in 0..frames {
        for (sender, caps) in captures.iter_mut().enumerate() {
            let phase = sender * BURST_PERIOD / 2;
            let pcm = burst_frame(index, phase);
            if (index + BURST_PERIOD - phase).is_multiple_of(BURST_PERIOD) {
                caps.push(m.now);
            }
            m.with(sender, |p, now| p.send_audio(now, &pcm)).unwrap();
        }
        m.run_for(Duration::from_millis(20));
    }
    m.run_for(Duration::from_millis(500));

    // The listener's playout per sender, and the same chunks through a mixer, in order.
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let local = pipeline.add_track(TrackKind::Audio, Routing::Local);
    let mixer = pipeline.add_stage(
        MixerStage::new(MixerConfig::default(), Some(local), None).unwrap(),
        StageConfig::new(Duration::from_millis(10)).audio(Select::Peers),
    );
    for sender in 0..2 {
        pipeline.add_peer(Mesh::id(sender));
    }
    let mut direct: [Vec<(Instant, Vec<i16>)>; 2] = [Vec::new(), Vec::new()];
    let mut mixed: Vec<(Instant, Vec<i16>)> = Vec::new();
    let drain = |p: &mut Pipeline, mixed: &mut Vec<(Instant, Vec<i16>)>| {
        while let Some(o) = p.poll_output() {
            if let PipelineOutput::Media(o) = o {
                if let Media::Audio(a) = &o.media {
                    // A local track plays when it is ready (input or tick plus run cost).
                    mixed.push((o.ready, a.samples.clone()));
                }
                p.recycle(o);
            }
        }
    };
    for (_, e) in &m.events[listener] {
        let Event::AudioPlayout { peer, chunk } = e else {
            continue;
        };
        let Some(sender) = (0..2).find(|s| *peer == Mesh::id(*s)) else {
            continue;
        };
        while let Some(t) = pipeline.poll_timeout().filter(|t| *t < chunk.playout) {
            pipeline.handle_timeout(t);
            drain(&mut pipeline, &mut mixed);
        }
        direct[sender].push((chunk.playout, chunk.samples.clone()));
        pipeline.handle_audio(peer, chunk.playout, chunk).unwrap();
        drain(&mut pipeline, &mut mixed);
    }

    let mixed_onsets = onsets(&mixed);
    let all_captures: Vec<Instant> = {
        let mut v: Vec<Instant> = captures.iter().flatten().copied().collect();
        v.sort();
        v
    };
    let through_mixer = match_captures(&mixed_onsets, &all_captures);
    let mut added_all = Vec::new();
    for sender in 0..2 {
        let plain = match_captures(&onsets(&direct[sender]), &captures[sender]);
        let mixed: Vec<(Instant, Duration)> = through_mixer
            .iter()
            .filter(|(c, _)| captures[sender].contains(c))
            .copied()
            .collect();
        let mut added = Vec::new();
        for (c, with) in &mixed {
            if let Some((_, without)) = plain.iter().find(|(pc, _)| pc == c) {
                assert!(
                    with >= without,
                    "the mix played a burst before the peer's own playout did"
                );
                added.push(*with - *without);
            }
        }
        show(
            &format!("audio p{sender}: capture to playout"),
            &plain.iter().map(|p| p.1).collect::<Vec<_>>(),
        );
        show(
            &format!("audio p{sender}: capture to mixer output"),
            &mixed.iter().map(|p| p.1).collect::<Vec<_>>(),
        );
        show(&format!("audio p{sender}: added by the mixer"), &added);
        assert!(
            added.len() >= 100,
            "only {} bursts of p{sender} paired",
            added.len()
        );
        added_all.extend(added);
    }
    show("audio: added by the mixer, both peers", &added_all);
    let stats = pipeline.stage_stats(mixer).unwrap();
    assert_eq!(stats.dropped(), 0, "{stats:?}");
    // One chunk interval (the tick wait) plus the run's cost, never more.
    let (_, _, max) = percentiles(&added_all);
    assert!(max <= 10.5, "the mixer added up to {max:.3} ms");
}

/// Writes `n` (6 bits) into the top of the luma plane as six wide blocks, dark or light
fn stamp(f: &mut I420Frame, n: u32) {
    let w = f.width as usize;
    for row in 0..24 {
        for bit in 0..6 {
            let v = if n >> bit & 1 == 1 { 220 } else { 35 };
            f.y[row * w + bit * 26..row * w + bit * 26 + 26].fill(v);
        }
    }
}

/// Reads the stamp back from the block centres
fn read_stamp(f: &I420Frame) -> u32 {
    let w = f.width as usize;
    (0..6)
        .map(|bit| u32::from(f.y[12 * w + bit * 26 + 13] > 127) << bit)
        .sum()
}

/// The camera (30 frames a second, each capture up to 5 ms early or late) goes to the
/// viewer three ways at once: unprocessed on the main m-line, through a blur stage and
/// through a compositor stage (30 frames a second, the camera as its one tile) on m-lines
/// of their own. Frames are paired by a stamp in the picture.
#[test]
fn blur_adds_its_cost_and_a_compositor_at_most_one_frame_to_capture_to_render() {
    let mut m = Mesh::new(vec![config(false, true), config(false, true)], perfect(20));
    m.connect_all();
    let viewer = Mesh::id(1);
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let blurred = pipeline.add_track(TrackKind::Video, Routing::Unicast(viewer.clone()));
    let composite = pipeline.add_track(TrackKind::Video, Routing::Unicast(viewer.clone()));
    let budget = StageConfig::new(Duration::from_millis(33)).video(Select::Local);
    let blur_stage = pipeline.add_stage(BlurStage::new(Blur::new(4), blurred), budget.clone());
    let comp_config = CompositorConfig {
        width: 160,
        height: 96,
        fps: 30,
        ..CompositorConfig::default()
    };
    let comp_stage = pipeline.add_stage(
        CompositorStage::new(comp_config, composite).unwrap(),
        budget,
    );
    pipeline.add_peer(viewer.clone());
    for track in [blurred, composite] {
        m.with(0, |p, _| p.add_video_track(track)).unwrap();
    }

    let mut rng = fastrand::Rng::with_seed(5);
    let period = Duration::from_nanos(1_000_000_000 / 30);
    let mut pattern = TestPattern::new(160, 96);
    let mut captures: Vec<(u32, Instant)> = Vec::new();
    let start = m.now;
    let end = start + Duration::from_secs(20);
    let mut n = 0u32;
    let mut next_frame = start + period;
    loop {
        let t = pipeline
            .poll_timeout()
            .map_or(next_frame, |d| d.min(next_frame));
        if t > end {
            break;
        }
        if t > m.now {
            m.run_for(t - m.now);
        }
        if t == next_frame {
            let mut frame = pattern.next_frame();
            stamp(&mut frame, n % 64);
            captures.push((n % 64, m.now));
            n += 1;
            m.with(0, |p, now| p.send_video(now, &frame)).unwrap();
            pipeline.handle_local_video(m.now, Arc::new(frame)).unwrap();
            let base = start + period * (n + 1);
            let wobble = Duration::from_micros(rng.u64(0..=5_000));
            next_frame = if rng.bool() {
                base + wobble
            } else {
                base - wobble
            };
        } else {
            pipeline.handle_timeout(m.now);
        }
        while let Some(o) = pipeline.poll_output() {
            let PipelineOutput::Media(o) = o else {
                continue;
            };
            if o.ready > m.now {
                // The stage's modelled run cost passes before its output can be sent.
                m.run_for(o.ready - m.now);
            }
            if let Media::Video(v) = &o.media {
                let to: Vec<_> = pipeline.recipients(&o).cloned().collect();
                m.with(0, |p, now| p.send_video_to(o.track, now, &v.frame, &to))
                    .unwrap();
            }
            pipeline.recycle(o);
        }
    }
    m.run_for(Duration::from_millis(500));

    // Capture to render per track, by stamp (the latest capture with it before render).
    let mut latency: [Vec<(Instant, Duration)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for (t, e) in &m.events[1] {
        let Event::VideoFrame {
            track,
            payload: VideoPayload::Decoded(f),
            ..
        } = e
        else {
            continue;
        };
        let at = m.start + *t;
        let slot = match track {
            None => 0,
            Some(x) if *x == blurred => 1,
            Some(x) if *x == composite => 2,
            Some(x) => panic!("unknown track {x}"),
        };
        let s = read_stamp(f);
        if let Some((_, c)) = captures.iter().rev().find(|(k, c)| *k == s && *c <= at) {
            // A picture shown again (the compositor's next tick with no newer frame) is
            // not a later arrival of it: only its first render counts.
            if !latency[slot].iter().any(|(seen, _)| seen == c) {
                latency[slot].push((*c, at - *c));
            }
        }
    }
    let names = ["camera", "blur", "compositor"];
    for (i, l) in latency.iter().enumerate() {
        show(
            &format!("video {}: capture to render", names[i]),
            &l.iter().map(|x| x.1).collect::<Vec<_>>(),
        );
    }
    let added = |slot: usize| -> Vec<Duration> {
        latency[slot]
            .iter()
            .filter_map(|(c, with)| {
                let (_, without) = latency[0].iter().find(|(pc, _)| pc == c)?;
                assert!(with >= without, "{} frame before the camera's", names[slot]);
                Some(*with - *without)
            })
            .collect()
    };
    let (blur_added, comp_added) = (added(1), added(2));
    show("video: added by the blur stage", &blur_added);
    show("video: added by the compositor stage", &comp_added);
    for (name, stage) in [("blur", blur_stage), ("compositor", comp_stage)] {
        let s = pipeline.stage_stats(stage).unwrap();
        eprintln!(
            "{name}: {} runs, {} dropped, modelled cost max {:?}",
            s.processed,
            s.dropped(),
            s.max_cost
        );
        assert_eq!(s.dropped(), 0, "{name}: {s:?}");
    }
    assert!(
        latency[0].len() > 500 && blur_added.len() > 500 && comp_added.len() > 300,
        "{} camera, {} blurred, {} composite frames paired",
        latency[0].len(),
        blur_added.len(),
        comp_added.len()
    );
    // Blur: its run cost only (modelled: a few tens of microseconds at 160x96).
    let (_, _, blur_max) = percentiles(&blur_added);
    assert!(blur_max < 1.0, "the blur added up to {blur_max:.3} ms");
    // Compositor: each picture waits for the next output tick, one frame period at most,
    // plus its run cost.
    let (_, _, comp_max) = percentiles(&comp_added);
    assert!(
        comp_max <= period.as_secs_f64() * 1000.0 + 1.0,
        "the compositor added up to {comp_max:.3} ms"
    );
}
