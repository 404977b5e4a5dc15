//! Routing from the blocking driver: per-peer audio and video tracks, visible pause and
//! resume, the same commands the tokio driver has

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::{TestPattern, Tone};
use meshrtc::codec::VideoCodec;
use meshrtc::media::VideoPayload;
use meshrtc::pipeline::TrackId;
use meshrtc::signal::PeerId;
use meshrtc::MediaKind;
use meshrtc_blocking::{Event, Session, SessionConfig};

use crate::util::*;

fn av(url: &str, id: &str) -> SessionConfig {
    let mut c = blocking_config(url, "route", id);
    let p = &mut c.session.participant;
    p.capabilities.video = true;
    p.media.video_codecs = vec![VideoCodec::Vp8];
    p.media.video.width = 160;
    p.media.video.height = 96;
    p.media.video.bitrate_bps = 300_000;
    c
}

/// What a tokio peer got from `from`, reading events until `until` holds or for `most`
#[derive(Debug, Default)]
struct Got {
    audible: u64,
    /// Frames on the main video m-line
    frames: u64,
    /// Frames of the separate track (its own m-line)
    track_frames: u64,
    states: Vec<(MediaKind, bool)>,
}

fn collect(
    rt: &tokio::runtime::Runtime,
    events: &mut meshrtc_tokio::Events,
    from: &PeerId,
    most: Duration,
    until: impl Fn(&Got) -> bool,
) -> Got {
    let mut got = Got::default();
    let end = Instant::now() + most;
    rt.block_on(async {
        while !until(&got) && Instant::now() < end {
            let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), events.recv()).await
            else {
                continue;
            };
            got.audible += u64::from(tokio_audible(&e, from));
            match e {
                Event::Mesh(meshrtc::Event::VideoFrame {
                    peer,
                    track,
                    payload: VideoPayload::Decoded(_),
                    ..
                }) if &peer == from => match track {
                    None => got.frames += 1,
                    Some(t) if t == BLURRED => got.track_frames += 1,
                    Some(t) => panic!("frame of unknown track {t}"),
                },
                Event::Mesh(meshrtc::Event::RemoteMediaState {
                    peer,
                    kind,
                    sending,
                }) if &peer == from => got.states.push((kind, sending)),
                _ => {}
            }
        }
    });
    got
}

/// The separate video track (an m-line of its own) the blocking peer sends to `c`
const BLURRED: TrackId = TrackId::new(2);

/// The blocking peer sends a tone track to `b` only, and to `c` only a video track and,
/// on an m-line of its own, a blurred copy (each its own encoder, from an ordinary thread);
/// then it pauses audio to `b` and resumes it: `b` sees the m-line direction change both
/// ways and hears the tone again
#[test]
fn blocking_driver_routes_tracks_per_peer_and_pauses_visibly() {
    let rt = runtime();
    let server = server(&rt);
    let url = server.url();
    let (src, b, c) = (pid("src"), pid("b"), pid("c"));

    let Session { handle, events, .. } = Session::join(av(&url, "src")).unwrap();
    let (_b_handle, mut b_events) = rt
        .block_on(meshrtc_tokio::Session::join(av(&url, "b")))
        .unwrap();
    let (_c_handle, mut c_events) = rt
        .block_on(meshrtc_tokio::Session::join(av(&url, "c")))
        .unwrap();
    assert_eq!(connected(&events, 2), vec![b.clone(), c.clone()]);
    connected_tokio(&rt, &mut b_events, 2);
    connected_tokio(&rt, &mut c_events, 2);

    handle.add_video_track(BLURRED).unwrap();
    let handle = Arc::new(handle);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (handle, stop, b, c) = (handle.clone(), stop.clone(), b.clone(), c.clone());
        std::thread::spawn(move || {
            let mut tone = Tone::new(48_000, 1);
            let mut pattern = TestPattern::new(160, 96);
            let mut blur = meshrtc::pipeline::blur::Blur::new(4);
            let mut next = Instant::now();
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                handle
                    .send_audio_to(
                        TrackId::new(0),
                        now,
                        tone.next_samples(960),
                        vec![b.clone()],
                    )
                    .unwrap();
                if step.is_multiple_of(2) {
                    let frame = pattern.next_frame();
                    let mut soft = meshrtc::codec::I420Frame::black(160, 96);
                    blur.apply(&frame, &mut soft);
                    handle
                        .send_video_to(TrackId::new(1), now, Arc::new(frame), vec![c.clone()])
                        .unwrap();
                    handle
                        .send_video_to(BLURRED, now, Arc::new(soft), vec![c.clone()])
                        .unwrap();
                }
                step += 1;
                next += Duration::from_millis(20);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };

    // b hears the audio track and sees no video; c sees the video track and hears nothing.
    let at_b = collect(&rt, &mut b_events, &src, LIMIT, |g| g.audible >= 50);
    assert!(at_b.audible >= 50, "b heard {at_b:?}");
    let at_c = collect(&rt, &mut c_events, &src, LIMIT, |g| {
        g.frames >= 20 && g.track_frames >= 20
    });
    assert!(
        at_c.frames >= 20 && at_c.track_frames >= 20,
        "c saw {at_c:?}"
    );
    let at_b = collect(&rt, &mut b_events, &src, LIMIT, |g| g.audible >= 25);
    assert_eq!(
        at_b.frames + at_b.track_frames,
        0,
        "b got video of tracks unicast to c"
    );
    let at_c = collect(&rt, &mut c_events, &src, LIMIT, |g| g.frames >= 10);
    assert_eq!(at_c.audible, 0, "c heard audio of a track unicast to b");

    // Paused: b is told through its m-line, and the tone stops.
    handle.set_sending(&b, MediaKind::Audio, false).unwrap();
    let paused = collect(&rt, &mut b_events, &src, LIMIT, |g| !g.states.is_empty());
    assert_eq!(paused.states, vec![(MediaKind::Audio, false)]);
    // What was in flight and buffered plays out; then nothing for half a second.
    collect(&rt, &mut b_events, &src, Duration::from_millis(400), |_| {
        false
    });
    let quiet = collect(&rt, &mut b_events, &src, Duration::from_millis(500), |_| {
        false
    });
    assert_eq!(
        quiet.audible, 0,
        "b heard {} chunks while paused",
        quiet.audible
    );

    // Resumed: told again, and the tone is back.
    handle.set_sending(&b, MediaKind::Audio, true).unwrap();
    let resumed = collect(&rt, &mut b_events, &src, LIMIT, |g| {
        !g.states.is_empty() && g.audible >= 25
    });
    assert_eq!(resumed.states, vec![(MediaKind::Audio, true)]);
    assert!(resumed.audible >= 25, "after resuming b heard {resumed:?}");

    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    drop(events);
    Arc::try_unwrap(handle).unwrap().leave().unwrap();
}
