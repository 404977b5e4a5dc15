//! Pipeline tests: routing, mute and pause, budgets, bounded queues, and the built-in stages
//! run through a pipeline on a virtual clock

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::blur::{Blur, BlurStage};
use super::composite::{CompositorConfig, CompositorStage};
use super::dsp::{goertzel_amplitude, tone_i16};
use super::mixer::{MixerConfig, MixerStage};
use super::*;
use crate::codec::I420Frame;

/// A deterministic meter: a fixed cost per stage, whatever the work
struct StageCosts(Vec<Duration>);

impl CostMeter for StageCosts {
    fn finish(&mut self, stage: StageId, _work: Work) -> Duration {
        self.0[stage.index() as usize]
    }
}

/// An anchor for virtual time
#[allow(clippy::disallowed_methods)] // reason: tests anchor virtual time at a real instant
fn epoch() -> Instant {
    Instant::now()
}

/// Media outputs with their recipients
type Sent = Vec<(Outgoing, Vec<PeerId>)>;
/// Track state changes
type States = Vec<(TrackId, PeerId, bool)>;

fn peer(name: &str) -> PeerId {
    PeerId::new(name).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn solid(w: u32, h: u32, c: (u8, u8, u8)) -> Arc<I420Frame> {
    let mut f = I420Frame::black(w, h);
    f.y.fill(c.0);
    f.u.fill(c.1);
    f.v.fill(c.2);
    Arc::new(f)
}

/// Drains a pipeline: media with its recipients, and state changes
fn drain(p: &mut Pipeline) -> (Sent, States) {
    let (mut media, mut states) = (Vec::new(), Vec::new());
    while let Some(out) = p.poll_output() {
        match out {
            PipelineOutput::Media(m) => {
                let to = p.recipients(&m).cloned().collect();
                media.push((m, to));
            }
            PipelineOutput::TrackState {
                track,
                peer,
                sending,
            } => states.push((track, peer, sending)),
        }
    }
    (media, states)
}

fn forward_audio_pipeline() -> (Pipeline, TrackId, [PeerId; 3]) {
    let mut p = Pipeline::new(PipelineConfig::default());
    let peers = [peer("a"), peer("b"), peer("c")];
    let t = p.add_track(TrackKind::Audio, Routing::Broadcast);
    p.add_stage(
        Forward::new(t),
        StageConfig::new(ms(5)).audio(Select::Local),
    );
    for q in &peers {
        p.add_peer(q.clone());
    }
    (p, t, peers)
}

#[test]
fn unicast_set_and_broadcast_tracks_reach_exactly_their_peers() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let (a, b, c) = (peer("a"), peer("b"), peer("c"));
    let original = p.add_track(TrackKind::Video, Routing::Unicast(b.clone()));
    let blurred = p.add_track(
        TrackKind::Video,
        Routing::Peers([a.clone(), c.clone()].into()),
    );
    let everyone = p.add_track(TrackKind::Video, Routing::Broadcast);
    let local = p.add_track(TrackKind::Video, Routing::Local);
    p.add_stage(
        Forward::new(original),
        StageConfig::new(ms(5)).video(Select::Local),
    );
    p.add_stage(
        BlurStage::new(Blur::new(2), blurred),
        StageConfig::new(ms(20)).video(Select::Local),
    );
    p.add_stage(
        Forward::new(everyone),
        StageConfig::new(ms(5)).video(Select::Local),
    );
    p.add_stage(
        Forward::new(local),
        StageConfig::new(ms(5)).video(Select::Peers),
    );
    for q in [&a, &b, &c] {
        p.add_peer(q.clone());
    }
    let (_, states) = drain(&mut p);
    // Each peer learns of the tracks it gets, and only those.
    let mut expect = vec![
        (original, b.clone(), true),
        (blurred, a.clone(), true),
        (blurred, c.clone(), true),
        (everyone, a.clone(), true),
        (everyone, b.clone(), true),
        (everyone, c.clone(), true),
    ];
    let mut got = states.clone();
    got.sort();
    expect.sort();
    assert_eq!(got, expect);
    assert_eq!(p.sending_to(&b).collect::<Vec<_>>(), [original, everyone]);

    let t0 = epoch();
    p.handle_local_video(t0, solid(64, 36, (50, 60, 70)))
        .unwrap();
    p.handle_video(&a, t0, solid(32, 18, (90, 90, 90))).unwrap();
    let (media, _) = drain(&mut p);
    let by_track: BTreeMap<TrackId, Vec<PeerId>> =
        media.iter().map(|(m, to)| (m.track, to.clone())).collect();
    assert_eq!(by_track[&original], std::slice::from_ref(&b));
    assert_eq!(by_track[&blurred], [a.clone(), c.clone()]);
    assert_eq!(by_track[&everyone], [a.clone(), b.clone(), c.clone()]);
    assert!(by_track[&local].is_empty() && p.is_local(local));
    // The original is shared, not copied; the blurred copy is a new picture.
    let frame = |t: TrackId| match &media.iter().find(|(m, _)| m.track == t).unwrap().0.media {
        Media::Video(v) => v.frame.clone(),
        Media::Audio(_) => unreachable!(),
    };
    assert!(Arc::ptr_eq(&frame(original), &frame(everyone)));
    assert!(!Arc::ptr_eq(&frame(original), &frame(blurred)));

    // Rerouting the unicast track to c moves it.
    p.set_routing(original, Routing::Unicast(c.clone()))
        .unwrap();
    let (_, states) = drain(&mut p);
    assert_eq!(
        states,
        [(original, b.clone(), false), (original, c.clone(), true)]
    );
    p.handle_local_video(t0 + ms(33), solid(64, 36, (1, 2, 3)))
        .unwrap();
    let (media, _) = drain(&mut p);
    let to: Vec<_> = media
        .iter()
        .filter(|(m, _)| m.track == original)
        .map(|(_, to)| to.clone())
        .collect();
    assert_eq!(to, [[c.clone()]]);
}

#[test]
fn muted_track_stops_and_resumes() {
    let (mut p, t, [a, b, c]) = forward_audio_pipeline();
    drain(&mut p);
    let chunk = vec![100i16; 480];
    let mut now = epoch();
    let mut send = |p: &mut Pipeline| {
        now += ms(10);
        p.handle_local_audio(now, &chunk, 1).unwrap();
        drain(p)
    };
    let (media, _) = send(&mut p);
    assert_eq!(media[0].1, [a.clone(), b.clone(), c.clone()]);

    p.set_muted(t, &b, true).unwrap();
    let (media, states) = send(&mut p);
    assert_eq!(states, [(t, b.clone(), false)]);
    assert!(!p.is_sending(t, &b));
    // What the m-line of that kind towards b should say.
    assert!(!p.sends_kind_to(TrackKind::Audio, &b));
    assert!(p.sends_kind_to(TrackKind::Audio, &a));
    assert_eq!(media[0].1, [a.clone(), c.clone()]);

    p.set_muted(t, &b, false).unwrap();
    let (media, states) = send(&mut p);
    assert_eq!(states, [(t, b.clone(), true)]);
    assert_eq!(media[0].1, [a.clone(), b.clone(), c.clone()]);

    // Paused for everyone: nothing is produced at all, and everyone is told.
    p.set_paused(t, true).unwrap();
    let suppressed = p.stats().outputs_suppressed;
    let (media, states) = send(&mut p);
    assert!(media.is_empty());
    assert_eq!(states.len(), 3);
    assert!(states.iter().all(|s| !s.2));
    // Forward skips the work for an unwanted track (nothing to suppress).
    assert_eq!(p.stats().outputs_suppressed, suppressed);
    p.set_paused(t, false).unwrap();
    let (media, states) = send(&mut p);
    assert_eq!(media.len(), 1);
    assert!(states.iter().all(|s| s.2) && states.len() == 3);

    // A peer that leaves takes its mute state with it; a new one gets the track.
    p.set_muted(t, &c, true).unwrap();
    p.remove_peer(&c);
    drain(&mut p);
    p.add_peer(c.clone());
    let (media, states) = send(&mut p);
    assert_eq!(states, [(t, c.clone(), true)]);
    assert_eq!(media[0].1.len(), 3);
}

#[test]
fn slow_stage_drops_counted_frames_and_latency_stays_flat() {
    // A blur that costs 50 ms per frame on a 20 ms budget, fed 30 frames per second for
    // 10 s; and the same stage within budget (15 ms).
    for (cost, budget) in [(ms(50), ms(20)), (ms(15), ms(20))] {
        let mut p =
            Pipeline::with_meter(PipelineConfig::default(), Box::new(StageCosts(vec![cost])));
        let t = p.add_track(TrackKind::Video, Routing::Broadcast);
        let s = p.add_stage(
            BlurStage::new(Blur::new(1), t),
            StageConfig::new(budget).video(Select::Local),
        );
        p.add_peer(peer("a"));
        let t0 = epoch();
        let frame = solid(16, 16, (100, 100, 100));
        let mut latencies = Vec::new();
        for i in 0..300u32 {
            let now = t0 + Duration::from_micros(33_333) * i;
            p.handle_local_video(now, frame.clone()).unwrap();
            let (media, _) = drain(&mut p);
            for (m, _) in media {
                let Media::Video(v) = &m.media else {
                    unreachable!()
                };
                latencies.push(m.ready - v.capture);
            }
        }
        let st = p.stage_stats(s).unwrap();
        println!("cost {cost:?} budget {budget:?}: {st:?}");
        assert_eq!(st.offered, 300);
        assert_eq!(st.processed + st.dropped(), 300);
        assert_eq!(latencies.len() as u64, st.processed);
        // Latency is the cost of one run, first second and last alike: nothing queues.
        assert!(latencies.iter().all(|&l| l == cost), "{latencies:?}");
        if cost > budget {
            // About budget / cost of the frames run; the rest dropped and counted.
            let share = st.processed as f64 / 300.0;
            assert!((share - 0.4).abs() < 0.02, "share {share}");
            assert_eq!(st.dropped_over_budget, st.dropped());
            assert!(st.cost <= budget * 300 + cost);
        } else {
            assert_eq!(st.dropped(), 0);
        }
    }
}

#[test]
fn without_a_budget_that_binds_latency_would_grow() {
    // The same slow stage with a budget far above its cost never drops for lack of credit,
    // so frames queue behind each other until the backlog exceeds the budget: latency grows
    // for a second. This is what the budget prevents (see the test above).
    let cost = ms(50);
    let mut p = Pipeline::with_meter(PipelineConfig::default(), Box::new(StageCosts(vec![cost])));
    let t = p.add_track(TrackKind::Video, Routing::Broadcast);
    let s = p.add_stage(
        BlurStage::new(Blur::new(1), t),
        StageConfig::new(Duration::from_secs(1)).video(Select::Local),
    );
    p.add_peer(peer("a"));
    let t0 = epoch();
    for i in 0..300u32 {
        p.handle_local_video(
            t0 + Duration::from_micros(33_333) * i,
            solid(8, 8, (1, 1, 1)),
        )
        .unwrap();
        drain(&mut p);
    }
    let st = p.stage_stats(s).unwrap();
    assert!(st.max_latency > Duration::from_secs(1), "{st:?}");
    // Even so, the backlog rule caps it at about budget + cost.
    assert!(st.max_latency <= Duration::from_secs(1) + cost);
    assert!(st.dropped_busy > 0);
}

#[test]
fn output_queue_is_bounded_and_drops_oldest() {
    let mut p = Pipeline::new(PipelineConfig {
        max_outputs: 4,
        ..Default::default()
    });
    let t = p.add_track(TrackKind::Audio, Routing::Local);
    p.add_stage(
        Forward::new(t),
        StageConfig::new(ms(5)).audio(Select::Local),
    );
    let t0 = epoch();
    for i in 0..10u8 {
        p.handle_local_audio(t0 + ms(u64::from(i) * 10), &[i16::from(i); 480], 1)
            .unwrap();
    }
    let (media, _) = drain(&mut p);
    assert_eq!(media.len(), 4);
    assert_eq!(p.stats().outputs_dropped, 6);
    // The newest survive, in order.
    let firsts: Vec<i16> = media
        .iter()
        .map(|(m, _)| match &m.media {
            Media::Audio(a) => a.samples[0],
            Media::Video(_) => unreachable!(),
        })
        .collect();
    assert_eq!(firsts, [6, 7, 8, 9]);
}

#[test]
fn recycled_buffers_make_the_steady_state_allocation_free() {
    let (mut p, _, _) = forward_audio_pipeline();
    let t0 = epoch();
    for i in 0..100 {
        p.handle_local_audio(t0 + ms(i * 10), &[1; 480], 1).unwrap();
        while let Some(out) = p.poll_output() {
            if let PipelineOutput::Media(m) = out {
                p.recycle(m);
            }
        }
    }
    assert_eq!(p.stats().audio_allocations, 1);
}

#[test]
fn mixer_stage_sends_each_peer_the_other_four_on_the_session_clock() {
    const TONES: [f64; 5] = [300.0, 500.0, 700.0, 1100.0, 1300.0];
    let mut p = Pipeline::new(PipelineConfig::default());
    let peers: Vec<PeerId> = (0..5).map(|i| peer(&format!("p{i}"))).collect();
    let playout = p.add_track(TrackKind::Audio, Routing::Local);
    let minus = p.add_track(TrackKind::Audio, Routing::Broadcast);
    let mixer = MixerStage::new(MixerConfig::default(), Some(playout), Some(minus)).unwrap();
    let s = p.add_stage(mixer, StageConfig::new(ms(2)).audio(Select::Peers));
    for q in &peers {
        p.add_peer(q.clone());
    }
    p.stage_mut::<MixerStage>(s)
        .unwrap()
        .mixer_mut()
        .set_gain(Source::Peer(&peers[4]), 0.5);
    // Each peer's playout ticks have their own phase (0..4 ms), and the session's timers
    // fire a little late now and then.
    let t0 = epoch();
    let mut events: Vec<(Instant, usize)> = Vec::new();
    for c in 0..150u64 {
        for i in 0..5 {
            let jitter = if (c + i as u64).is_multiple_of(7) {
                300
            } else {
                0
            };
            let at = t0 + ms(c * 10 + i as u64) + Duration::from_micros(jitter);
            events.push((at, i));
        }
    }
    events.sort();
    let mut chunk_no = [0usize; 5];
    let mut mixes: BTreeMap<PeerId, Vec<i16>> = BTreeMap::new();
    let mut local = Vec::new();
    let mut capture_gap = Vec::new();
    for (at, i) in events {
        // Timeouts first, as a driver's timer would fire them.
        while let Some(t) = p.poll_timeout().filter(|&t| t <= at) {
            p.handle_timeout(t);
        }
        let chunk = PlayoutChunk {
            samples: tone_i16(48_000, TONES[i], 0.12, 480, chunk_no[i] * 480),
            channels: 1,
            media_ticks: (chunk_no[i] * 480) as i64,
            playout: at,
            concealed: false,
        };
        chunk_no[i] += 1;
        p.handle_audio(&peers[i], at, &chunk).unwrap();
        let (media, _) = drain(&mut p);
        for (m, to) in media {
            let Media::Audio(a) = m.media else {
                unreachable!()
            };
            capture_gap.push(a.capture);
            if m.track == playout {
                local.extend_from_slice(&a.samples);
            } else {
                // An N−1 mix goes to its own peer and nobody else.
                let Destination::Peer(dest) = m.to else {
                    panic!("an N-1 mix for every peer")
                };
                assert_eq!(to, std::slice::from_ref(&dest));
                mixes.entry(dest).or_default().extend_from_slice(&a.samples);
            }
        }
    }
    let st = p.stage_stats(s).unwrap();
    assert_eq!(st.dropped(), 0);
    // One mix per 10 ms: 150 ticks (plus the audio inputs) ran.
    assert_eq!(st.processed, 150 * 5 + 150);
    let mixer = p.stage_mut::<MixerStage>(s).unwrap().mixer();
    for q in &peers {
        let stats = mixer.input_stats(Source::Peer(q)).unwrap();
        assert!(stats.underruns <= 1, "{q}: {stats:?}");
        assert_eq!(stats.overflow_samples, 0);
    }
    for (i, q) in peers.iter().enumerate() {
        let mix = &mixes[q];
        assert_eq!(mix.len(), 150 * 480);
        let tail = &mix[mix.len() - 48_000..];
        for (j, &f) in TONES.iter().enumerate() {
            let a = goertzel_amplitude(tail, 48_000, f);
            let expect = if j == 4 { 0.06 } else { 0.12 };
            let db = 20.0 * (a / expect).log10();
            if i == j {
                assert!(db < -60.0, "{q}: own tone at {db} dB");
            } else {
                assert!(db.abs() < 1.0, "{q}: tone {f} Hz at {db} dB");
            }
        }
    }
    assert_eq!(local.len(), 150 * 480);
    let tail = &local[local.len() - 48_000..];
    for (j, &f) in TONES.iter().enumerate() {
        let expect = if j == 4 { 0.06 } else { 0.12 };
        let db = 20.0 * (goertzel_amplitude(tail, 48_000, f) / expect).log10();
        assert!(db.abs() < 1.0, "local mix: tone {f} Hz at {db} dB");
    }
    // A peer that leaves gets no more mixes, and leaves the others' mixes.
    p.remove_peer(&peers[0]);
    assert!(p
        .stage_mut::<MixerStage>(s)
        .unwrap()
        .mixer()
        .input_stats(Source::Peer(&peers[0]))
        .is_none());
}

#[test]
fn mixer_stage_stops_ticking_when_audio_stops() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let playout = p.add_track(TrackKind::Audio, Routing::Local);
    let mixer = MixerStage::new(MixerConfig::default(), Some(playout), None).unwrap();
    p.add_stage(mixer, StageConfig::new(ms(2)).audio(Select::Peers));
    let a = peer("a");
    p.add_peer(a.clone());
    assert_eq!(p.poll_timeout(), None);
    let t0 = epoch();
    let chunk = PlayoutChunk {
        samples: vec![0; 480],
        channels: 1,
        media_ticks: 0,
        playout: t0,
        concealed: false,
    };
    p.handle_audio(&a, t0, &chunk).unwrap();
    assert_eq!(p.poll_timeout(), Some(t0 + ms(10)));
    let mut ticks = 0;
    while let Some(t) = p.poll_timeout() {
        p.handle_timeout(t);
        ticks += 1;
        assert!(ticks < 100, "never stops");
    }
    // Half a second of silence, then it sleeps until audio comes back.
    assert_eq!(ticks, 50);
}

#[test]
fn compositor_stage_shows_every_peer_at_its_rate() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let t = p.add_track(TrackKind::Video, Routing::Broadcast);
    let s = p.add_stage(
        CompositorStage::new(
            CompositorConfig {
                fps: 15,
                ..Default::default()
            },
            t,
        )
        .unwrap(),
        StageConfig::new(ms(30)).video(Select::Peers),
    );
    let peers = [peer("a"), peer("b"), peer("c"), peer("d")];
    let viewer = peer("viewer");
    p.add_peer(viewer.clone());
    let colours = [(81, 90, 240), (145, 54, 34), (41, 240, 110), (170, 166, 16)];
    let sizes = [(320, 240), (1280, 720), (160, 90), (640, 360)];
    let t0 = epoch();
    let mut frames = Vec::new();
    // Two seconds of 30 fps from each peer; 15 fps out.
    for k in 0..60u32 {
        let now = t0 + Duration::from_micros(33_333) * k;
        while let Some(d) = p.poll_timeout().filter(|&d| d <= now) {
            p.handle_timeout(d);
        }
        for (i, q) in peers.iter().enumerate() {
            let (w, h) = sizes[i];
            p.handle_video(q, now, solid(w, h, colours[i])).unwrap();
        }
        for (m, to) in drain(&mut p).0 {
            assert_eq!(to, std::slice::from_ref(&viewer));
            if let Media::Video(v) = m.media {
                frames.push(v.frame);
            }
        }
    }
    assert!((29..=31).contains(&frames.len()), "{} frames", frames.len());
    let last = frames.last().unwrap();
    assert_eq!((last.width, last.height), (640, 360));
    let stage = p.stage_mut::<CompositorStage>(s).unwrap();
    assert_eq!(stage.tiles(), 4);
    let comp = stage.compositor().clone();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let r = comp.tile(i, 4, w, h);
        let centre = ((r.y + r.height / 2) * 640 + r.x + r.width / 2) as usize;
        assert_eq!(last.y[centre], colours[i].0, "tile {i}");
    }
    p.remove_peer(&peers[1]);
    assert_eq!(p.stage_mut::<CompositorStage>(s).unwrap().tiles(), 3);
}

#[test]
fn blur_stage_output_has_far_less_detail() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let t = p.add_track(TrackKind::Video, Routing::Broadcast);
    p.add_stage(
        BlurStage::new(Blur::new(3), t),
        StageConfig::new(ms(20)).video(Select::Local),
    );
    // No peer yet: the track goes nowhere and the stage does no work.
    let mut rng = fastrand::Rng::with_seed(1);
    let mut f = I420Frame::black(64, 64);
    f.y.iter_mut().for_each(|v| *v = rng.u8(..));
    let f = Arc::new(f);
    p.handle_local_video(epoch(), f.clone()).unwrap();
    assert!(drain(&mut p).0.is_empty());
    p.add_peer(peer("a"));
    p.handle_local_video(epoch(), f.clone()).unwrap();
    let (media, _) = drain(&mut p);
    let Media::Video(v) = &media[0].0.media else {
        unreachable!()
    };
    let hf = |y: &[u8]| -> f64 {
        y.windows(2)
            .map(|w| (f64::from(w[0]) - f64::from(w[1])).powi(2))
            .sum::<f64>()
    };
    assert!(hf(&v.frame.y) < hf(&f.y) * 0.02);
}

#[test]
fn misuse_is_reported() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let ghost = TrackId(99);
    let a = peer("a");
    assert!(matches!(
        p.set_muted(ghost, &a, true),
        Err(PipelineError::UnknownTrack(_))
    ));
    assert!(p.set_paused(ghost, true).is_err());
    assert!(p.set_routing(ghost, Routing::Broadcast).is_err());
    assert!(p.remove_track(ghost).is_err());
    assert!(p
        .set_stage_config(StageId(3), StageConfig::new(ms(1)))
        .is_err());
    let now = epoch();
    assert!(p.handle_local_audio(now, &[0; 480], 3).is_err());
    assert!(p.handle_local_audio(now, &[0; 481], 2).is_err());
    let bad = I420Frame {
        width: 10,
        height: 10,
        y: vec![0; 10],
        u: vec![],
        v: vec![],
    };
    assert!(p.handle_local_video(now, Arc::new(bad)).is_err());
    // Audio emitted on a video track is discarded and counted, not sent.
    let v = p.add_track(TrackKind::Video, Routing::Local);
    p.add_stage(
        Forward::new(v),
        StageConfig::new(ms(1)).audio(Select::Local),
    );
    p.handle_local_audio(now, &[0; 480], 1).unwrap();
    assert!(drain(&mut p).0.is_empty());
    assert_eq!(p.stats().outputs_suppressed, 1);
    assert!(p.stage_mut::<MixerStage>(StageId(0)).is_none());
}

#[test]
fn removing_a_track_discards_its_queue_and_tells_its_peers() {
    let (mut p, t, peers) = forward_audio_pipeline();
    drain(&mut p);
    p.handle_local_audio(epoch(), &[1; 480], 1).unwrap();
    p.remove_track(t).unwrap();
    let (media, states) = drain(&mut p);
    assert!(media.is_empty());
    assert_eq!(states.len(), peers.len());
    assert!(states.iter().all(|(tr, _, sending)| *tr == t && !sending));
    assert!(p.track(t).is_none());
}

#[test]
fn pipeline_is_send() {
    fn is_send<T: Send>() {}
    is_send::<Pipeline>();
}
