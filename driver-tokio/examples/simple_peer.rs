//! A 1:1 video call whose outgoing video is blurred
//!
//! Two peers, alice and bob, join a room on a signaling server embedded in this process.
//! Each sends a tone and a moving test pattern; its video goes through a pipeline with a
//! blur stage before it is encoded. Each writes what it received to
//! `meshrtc-examples/simple_peer/<name>-received.y4m` (any video player: `ffplay`, `mpv`,
//! VLC) and `<name>-received.wav`, and prints how much of the picture's fine detail
//! survived the blur.
//!
//! ```sh
//! cargo run --release -p meshrtc-tokio --example simple_peer -- --secs 10
//! ```

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meshrtc::codec::testsrc::{TestPattern, Tone};
use meshrtc::media::VideoPayload;
use meshrtc::pipeline::blur::{Blur, BlurStage};
use meshrtc::pipeline::{
    Media, Pipeline, PipelineConfig, PipelineOutput, Routing, Select, StageConfig, TrackKind,
};
use meshrtc::signal::PeerId;
use meshrtc_tokio::{Event, Events, SessionHandle};

const WIDTH: u32 = 320;
const HEIGHT: u32 = 180;
const FPS: u32 = 15;

/// What one peer did
struct Report {
    name: &'static str,
    frames_sent: u64,
    camera_frames: u64,
    frames_received: u64,
    hf_camera: f64,
    hf_received: f64,
    audio_secs: f64,
}

#[tokio::main]
async fn main() {
    init_logs();
    let args = Args::parse("simple_peer", 10);
    let server = embedded_server().await;
    println!("signaling server: {}", server.url());
    let (alice, alice_events) = join(&server, "simple", "alice", true, Some((WIDTH, HEIGHT))).await;
    let (bob, bob_events) = join(&server, "simple", "bob", true, Some((WIDTH, HEIGHT))).await;
    let out = args.out.clone();
    let a = tokio::spawn(peer(
        "alice",
        pid("bob"),
        440.0,
        alice,
        alice_events,
        args.duration,
        out,
    ));
    let out = args.out.clone();
    let b = tokio::spawn(peer(
        "bob",
        pid("alice"),
        660.0,
        bob,
        bob_events,
        args.duration,
        out,
    ));
    let mut ok = true;
    for r in [a.await.unwrap(), b.await.unwrap()] {
        println!(
            "{}: sent {} blurred frames, received {} frames and {:.1} s of audio; fine \
             detail (mean squared neighbour difference) of the camera {:.0}, of what arrived {:.0} \
             ({:.0}%)",
            r.name,
            r.frames_sent,
            r.frames_received,
            r.audio_secs,
            r.hf_camera,
            r.hf_received,
            100.0 * r.hf_received / r.hf_camera.max(1e-9),
        );
        ok &= r.frames_received > 0 && r.audio_secs > 0.0 && r.hf_received < 0.5 * r.hf_camera;
    }
    println!("files in {}", args.out.display());
    server.shutdown().await;
    if !ok {
        eprintln!("simple_peer: no media arrived, or the video was not blurred");
        std::process::exit(1);
    }
}

async fn peer(
    name: &'static str,
    remote: PeerId,
    tone_hz: f64,
    handle: SessionHandle,
    mut events: Events,
    duration: Duration,
    out: std::path::PathBuf,
) -> Report {
    let mut y4m = y4m(
        &out.join(format!("{name}-received.y4m")),
        WIDTH,
        HEIGHT,
        FPS,
    );
    let mut wav = wav(&out.join(format!("{name}-received.wav")));
    // The pipeline: the camera, blurred, to every peer.
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let track = pipeline.add_track(TrackKind::Video, Routing::Broadcast);
    pipeline.add_stage(
        BlurStage::new(Blur::new(6), track),
        StageConfig::new(Duration::from_millis(30)).video(Select::Local),
    );
    let mut tone = Tone::new(48_000, 1).with_frequency(tone_hz);
    let mut pattern = TestPattern::new(WIDTH, HEIGHT);
    let mut report = Report {
        name,
        frames_sent: 0,
        camera_frames: 0,
        frames_received: 0,
        hf_camera: 0.0,
        hf_received: 0.0,
        audio_secs: 0.0,
    };
    let mut audio = tokio::time::interval(Duration::from_millis(20));
    let mut video = tokio::time::interval(Duration::from_secs(1) / FPS);
    let end = tokio::time::sleep(duration);
    tokio::pin!(end);
    let mut connected = false;
    loop {
        tokio::select! {
            () = &mut end => break,
            _ = audio.tick(), if connected => {
                let pcm = tone.next_samples(960);
                handle.send_audio(Instant::now(), pcm).await.expect("session alive");
            }
            _ = video.tick(), if connected => {
                let frame = pattern.next_frame();
                report.hf_camera += hf_energy(&frame);
                report.camera_frames += 1;
                pipeline.handle_local_video(Instant::now(), Arc::new(frame)).expect("a valid frame");
                while let Some(o) = pipeline.poll_output() {
                    let PipelineOutput::Media(o) = o else { continue };
                    let to: Vec<PeerId> = pipeline.recipients(&o).cloned().collect();
                    if let Media::Video(v) = &o.media {
                        handle
                            .send_video_to(o.track, v.capture, v.frame.clone(), to)
                            .await
                            .expect("session alive");
                        report.frames_sent += 1;
                    }
                    pipeline.recycle(o);
                }
            }
            e = events.recv() => match e {
                None => break,
                Some(Event::Mesh(meshrtc::Event::PeerConnected { peer, .. })) if peer == remote => {
                    println!("{name}: connected to {peer}");
                    pipeline.add_peer(peer);
                    connected = true;
                }
                Some(Event::Mesh(meshrtc::Event::VideoFrame { payload: VideoPayload::Decoded(f), .. })) => {
                    report.frames_received += 1;
                    report.hf_received += hf_energy(&f);
                    y4m.write_frame(&f).expect("write Y4M");
                }
                Some(Event::Mesh(meshrtc::Event::AudioPlayout { chunk, .. })) => {
                    report.audio_secs += chunk.samples.len() as f64 / 48_000.0;
                    wav.write(&chunk.samples).expect("write WAV");
                }
                Some(_) => {}
            },
        }
    }
    handle.leave().await.expect("leave");
    y4m.finish().expect("finish Y4M");
    wav.finish().expect("finish WAV");
    report.hf_camera /= report.camera_frames.max(1) as f64;
    report.hf_received /= report.frames_received.max(1) as f64;
    report
}
