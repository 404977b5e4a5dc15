//! One video input, three outputs: the original to one peer, a blurred copy to another, a
//! composite to a third — and the first one gets the blurred copy too, as a second track
//!
//! The source peer's pipeline has three outgoing video tracks, each encoded on its own: a
//! pass-through of the camera (to the first viewer), the camera blurred (to the first and
//! the second viewer, on a video m-line of its own, `add_video_track`, so the first viewer
//! receives it next to the original) and a grid of the camera and every viewer's own video
//! (to the third). Each viewer writes what the source sent it on its main video m-line to
//! `meshrtc-examples/pipeline_video/<viewer>.y4m` and each separate track to
//! `<viewer>-track<N>.y4m`.
//!
//! ```sh
//! cargo run --release -p meshrtc-tokio --example pipeline_video -- --secs 10
//! ```

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meshrtc::codec::testsrc::TestPattern;
use meshrtc::codec::I420Frame;
use meshrtc::media::VideoPayload;
use meshrtc::pipeline::blur::{Blur, BlurStage};
use meshrtc::pipeline::composite::{CompositorConfig, CompositorStage};
use meshrtc::pipeline::{
    Forward, Media, Pipeline, PipelineConfig, PipelineOutput, Routing, Select, StageConfig,
    TrackId, TrackKind,
};
use meshrtc::signal::PeerId;
use meshrtc_tokio::{Event, Events, SessionHandle};

const WIDTH: u32 = 320;
const HEIGHT: u32 = 180;
const FPS: u32 = 15;
const VIEWERS: [&str; 3] = ["viewer-original", "viewer-blurred", "viewer-composite"];
/// Each viewer's own video: a flat colour (Y, U, V), sent at a few frames per second
const COLOURS: [(u8, u8, u8); 3] = [(81, 90, 240), (145, 54, 34), (41, 240, 110)];

#[tokio::main]
async fn main() {
    init_logs();
    let args = Args::parse("pipeline_video", 10);
    let server = embedded_server().await;
    println!("signaling server: {}", server.url());
    let (handle, events) = join(&server, "pipeline", "source", false, Some((WIDTH, HEIGHT))).await;
    let source = tokio::spawn(source(handle, events, args.duration));
    let mut viewers = Vec::new();
    for (name, colour) in VIEWERS.into_iter().zip(COLOURS) {
        let (handle, events) = join(&server, "pipeline", name, false, Some((WIDTH, HEIGHT))).await;
        let out = args.out.join(format!("{name}.y4m"));
        viewers.push(tokio::spawn(viewer(
            name,
            colour,
            handle,
            events,
            args.duration,
            out,
        )));
    }
    let (camera_hf, tiles) = source.await.unwrap();
    println!(
        "source: camera detail {camera_hf:.0} (mean squared neighbour difference), {tiles} tiles \
         in the composite"
    );
    let mut ok = tiles == 4;
    for (name, v) in VIEWERS.into_iter().zip(viewers) {
        let got = v.await.unwrap();
        for (track, r) in &got {
            let ratio = r.hf / camera_hf.max(1e-9);
            let on = track.map_or("main m-line".to_string(), |t| format!("{t}, own m-line"));
            println!(
                "{name}: {} frames from the source ({on}), detail {:.0} ({:.0}% of the camera)",
                r.frames,
                r.hf,
                100.0 * ratio
            );
        }
        let ratio = |t: Option<TrackId>| {
            got.get(&t)
                .filter(|r| r.frames > 0)
                .map(|r| r.hf / camera_hf.max(1e-9))
        };
        ok &= match name {
            // The camera on the main m-line and its blurred copy beside it.
            "viewer-original" => {
                ratio(None).is_some_and(|r| r > 0.7)
                    && ratio(Some(BLURRED)).is_some_and(|r| r < 0.5)
            }
            "viewer-blurred" => ratio(Some(BLURRED)).is_some_and(|r| r < 0.5),
            // The grid shows the viewers' colours beside the camera.
            _ => got
                .get(&None)
                .and_then(|r| r.last.as_ref())
                .is_some_and(|f| has_colour(f, COLOURS[0])),
        };
    }
    println!("files in {}", args.out.display());
    server.shutdown().await;
    if !ok {
        eprintln!("pipeline_video: an output is missing or not what its track should carry");
        std::process::exit(1);
    }
}

/// The blurred track's id (the pipeline numbers its tracks in order of creation)
const BLURRED: TrackId = TrackId::new(1);

/// The source: camera in, three tracks out; returns the camera's detail and the tiles in
/// the last composite
async fn source(handle: SessionHandle, mut events: Events, duration: Duration) -> (f64, usize) {
    let mut p = Pipeline::new(PipelineConfig::default());
    let budget = StageConfig::new(Duration::from_millis(30));
    let original = p.add_track(TrackKind::Video, Routing::Unicast(pid(VIEWERS[0])));
    p.add_stage(Forward::new(original), budget.clone().video(Select::Local));
    let both = [pid(VIEWERS[0]), pid(VIEWERS[1])].into_iter().collect();
    let blurred = p.add_track(TrackKind::Video, Routing::Peers(both));
    assert_eq!(blurred, BLURRED);
    // Its own m-line to each peer, so the first viewer gets it beside the original.
    handle
        .add_video_track(blurred)
        .await
        .expect("session alive");
    p.add_stage(
        BlurStage::new(Blur::new(6), blurred),
        budget.clone().video(Select::Local),
    );
    let composite = p.add_track(TrackKind::Video, Routing::Unicast(pid(VIEWERS[2])));
    let grid = CompositorConfig {
        width: WIDTH,
        height: HEIGHT,
        fps: FPS,
        ..CompositorConfig::default()
    };
    let grid_stage = p.add_stage(
        CompositorStage::new(grid, composite).expect("compositor"),
        budget.video(Select::All),
    );
    let mut camera = TestPattern::new(WIDTH, HEIGHT);
    let (mut hf, mut frames) = (0.0, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / FPS);
    let end = tokio::time::sleep(duration);
    tokio::pin!(end);
    loop {
        let wake = p
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = &mut end => break,
            _ = tick.tick() => {
                let frame = camera.next_frame();
                hf += hf_energy(&frame);
                frames += 1;
                p.handle_local_video(Instant::now(), Arc::new(frame)).expect("a valid frame");
            }
            () = tokio::time::sleep_until(wake) => p.handle_timeout(Instant::now()),
            e = events.recv() => match e {
                None => break,
                Some(Event::Mesh(meshrtc::Event::PeerConnected { peer, .. })) => {
                    println!("source: connected to {peer}");
                    p.add_peer(peer);
                }
                Some(Event::Mesh(meshrtc::Event::PeerLeft { peer, .. })) => p.remove_peer(&peer),
                Some(Event::Mesh(meshrtc::Event::VideoFrame {
                    peer,
                    payload: VideoPayload::Decoded(f),
                    ..
                })) => p.handle_video(&peer, Instant::now(), Arc::new(*f)).expect("a valid frame"),
                Some(_) => {}
            },
        }
        while let Some(o) = p.poll_output() {
            let PipelineOutput::Media(o) = o else {
                continue;
            };
            let to: Vec<PeerId> = p.recipients(&o).cloned().collect();
            if let Media::Video(v) = &o.media {
                handle
                    .send_video_to(o.track, v.capture, v.frame.clone(), to)
                    .await
                    .expect("session alive");
            }
            p.recycle(o);
        }
    }
    let tiles = p
        .stage_mut::<CompositorStage>(grid_stage)
        .map_or(0, |s| s.tiles());
    handle.leave().await.expect("leave");
    (hf / frames.max(1) as f64, tiles)
}

/// What a viewer got from the source on one of its video tracks
struct Received {
    frames: u64,
    /// Mean detail (see `hf_energy`)
    hf: f64,
    last: Option<I420Frame>,
}

/// A viewer: sends a flat colour, records what the source sends it; returns per track of
/// the source (`None`: its main video m-line) the frames, their mean detail and the last
async fn viewer(
    name: &'static str,
    colour: (u8, u8, u8),
    handle: SessionHandle,
    mut events: Events,
    duration: Duration,
    out: std::path::PathBuf,
) -> BTreeMap<Option<TrackId>, Received> {
    let mut own = I420Frame::black(WIDTH, HEIGHT);
    own.y.fill(colour.0);
    own.u.fill(colour.1);
    own.v.fill(colour.2);
    let mut got: BTreeMap<Option<TrackId>, Received> = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let end = tokio::time::sleep(duration);
    tokio::pin!(end);
    loop {
        tokio::select! {
            () = &mut end => break,
            _ = tick.tick() => {
                handle.send_video(Instant::now(), own.clone()).await.expect("session alive");
            }
            e = events.recv() => match e {
                None => break,
                Some(Event::Mesh(meshrtc::Event::VideoFrame {
                    peer,
                    track,
                    payload: VideoPayload::Decoded(f),
                    ..
                })) if peer.as_str() == "source" => {
                    let file = files.entry(track).or_insert_with(|| {
                        let path = match track {
                            None => out.clone(),
                            Some(t) => out.with_file_name(format!("{name}-{t}.y4m")),
                        };
                        y4m(&path, WIDTH, HEIGHT, FPS)
                    });
                    file.write_frame(&f).expect("write Y4M");
                    let r = got.entry(track).or_insert(Received { frames: 0, hf: 0.0, last: None });
                    r.frames += 1;
                    r.hf += hf_energy(&f);
                    r.last = Some(*f);
                }
                Some(_) => {}
            },
        }
    }
    handle.leave().await.expect("leave");
    for file in files.into_values() {
        file.finish().expect("finish Y4M");
    }
    for r in got.values_mut() {
        r.hf /= r.frames.max(1) as f64;
    }
    got
}

/// Whether a good share of the picture is close to this colour
fn has_colour(f: &I420Frame, (y, u, v): (u8, u8, u8)) -> bool {
    let (w, h) = (f.width as usize, f.height as usize);
    let cw = f.width.div_ceil(2) as usize;
    let mut hits = 0;
    for row in 0..h / 2 {
        for col in 0..w / 2 {
            let yy = f.y[(2 * row) * w + 2 * col];
            let i = row * cw + col;
            if yy.abs_diff(y) < 24 && f.u[i].abs_diff(u) < 24 && f.v[i].abs_diff(v) < 24 {
                hits += 1;
            }
        }
    }
    // A tile of a 2x2 grid is a quarter of the picture; ask for a twentieth.
    hits * 20 > (w / 2) * (h / 2)
}
