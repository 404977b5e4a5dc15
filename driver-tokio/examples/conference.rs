//! Five peers in one room, each sending its own tone and playing out the mix of the other
//! four
//!
//! Every peer runs a pipeline with a mixer stage fed with the 10 ms playout chunks of each
//! remote peer; the mix (soft-limited, never clipped) is what a loudspeaker would play. Each
//! second every peer prints the level of each peer it hears; at the end each mix is written
//! to `meshrtc-examples/conference/<peer>-mix.wav` and analysed: the four other tones are
//! there, its own is not.
//!
//! ```sh
//! cargo run --release -p meshrtc-tokio --example conference -- --secs 10
//! ```

mod common;

use std::time::{Duration, Instant};

use common::*;
use meshrtc::codec::testsrc::Tone;
use meshrtc::pipeline::mixer::{MixerConfig, MixerStage};
use meshrtc::pipeline::{
    Media, Pipeline, PipelineConfig, PipelineOutput, Routing, Select, Source, StageConfig,
    TrackKind,
};
use meshrtc::signal::PeerId;
use meshrtc_tokio::{Event, Events, SessionHandle};

/// Each peer's tone, in Hz
const TONES: [f64; 5] = [300.0, 500.0, 700.0, 1100.0, 1300.0];
/// Each tone's amplitude: four of them together stay below the limiter's knee
const AMPLITUDE: i16 = 4000;

#[tokio::main]
async fn main() {
    init_logs();
    let args = Args::parse("conference", 10);
    let server = embedded_server().await;
    println!("signaling server: {}", server.url());
    let mut joined = Vec::new();
    for i in 0..TONES.len() {
        joined.push(join(&server, "conference", &format!("p{i}"), true, None).await);
    }
    // Everyone hangs up at the same moment, so each mix holds all four others to the end.
    let end = tokio::time::Instant::now() + args.duration;
    let mut tasks = Vec::new();
    for (i, (handle, events)) in joined.into_iter().enumerate() {
        let name = format!("p{i}");
        let out = args.out.join(format!("{name}-mix.wav"));
        tasks.push(tokio::spawn(peer(name, TONES[i], handle, events, end, out)));
    }
    let mut mixes = Vec::new();
    for t in tasks {
        mixes.push(t.await.unwrap());
    }
    // What each peer played out, after the first second (connecting, buffers filling) and
    // before the last 300 ms (hanging up).
    let expected = f64::from(AMPLITUDE) / 32768.0;
    let mut ok = true;
    for (i, mix) in mixes.iter().enumerate() {
        let tail = mix
            .get(48_000..mix.len().saturating_sub(14_400))
            .unwrap_or(&[]);
        let mut line = format!("p{i} mix ({:.1} s):", mix.len() as f64 / 48_000.0);
        for (j, &hz) in TONES.iter().enumerate() {
            let db = 20.0 * (tone_level(tail, hz) / expected).log10();
            line += &format!(" {hz:.0} Hz {db:+.1} dB");
            ok &= if i == j { db < -30.0 } else { db.abs() < 3.0 };
        }
        let peak = tail.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        line += &format!(", peak {:.2} of full scale", f64::from(peak) / 32768.0);
        println!("{line}");
    }
    println!("files in {}", args.out.display());
    server.shutdown().await;
    if !ok {
        eprintln!("conference: a mix is missing another peer's tone, or holds its own");
        std::process::exit(1);
    }
}

/// One peer: sends its tone, mixes what it hears, returns the mix
async fn peer(
    name: String,
    tone_hz: f64,
    handle: SessionHandle,
    mut events: Events,
    end: tokio::time::Instant,
    out: std::path::PathBuf,
) -> Vec<i16> {
    let mut wav = wav(&out);
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let playout = pipeline.add_track(TrackKind::Audio, Routing::Local);
    let mixer = MixerStage::new(MixerConfig::default(), Some(playout), None).expect("mixer");
    let stage = pipeline.add_stage(
        mixer,
        StageConfig::new(Duration::from_millis(2)).audio(Select::Peers),
    );
    let mut peers: Vec<PeerId> = Vec::new();
    let mut tone = Tone::new(48_000, 1)
        .with_frequency(tone_hz)
        .with_amplitude(AMPLITUDE);
    let mut mix = Vec::new();
    let mut audio = tokio::time::interval(Duration::from_millis(20));
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.tick().await;
    let end = tokio::time::sleep_until(end);
    tokio::pin!(end);
    loop {
        let wake = pipeline
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = &mut end => break,
            _ = audio.tick() => {
                let pcm = tone.next_samples(960);
                handle.send_audio(Instant::now(), pcm).await.expect("session alive");
            }
            () = tokio::time::sleep_until(wake) => pipeline.handle_timeout(Instant::now()),
            _ = report.tick() => {
                let Some(stage) = pipeline.stage_mut::<MixerStage>(stage) else { continue };
                let mut line = format!("{name} hears:");
                for p in &peers {
                    match stage.mixer().level_db(Source::Peer(p)) {
                        Some(db) => line += &format!(" {p} {db:.1} dB"),
                        None => line += &format!(" {p} -"),
                    }
                }
                println!("{line}");
            }
            e = events.recv() => match e {
                None => break,
                Some(Event::Mesh(meshrtc::Event::PeerConnected { peer, .. })) => {
                    peers.push(peer.clone());
                    pipeline.add_peer(peer);
                }
                Some(Event::Mesh(meshrtc::Event::PeerLeft { peer, .. })) => {
                    peers.retain(|p| *p != peer);
                    pipeline.remove_peer(&peer);
                }
                Some(Event::Mesh(meshrtc::Event::AudioPlayout { peer, chunk })) => {
                    pipeline.handle_audio(&peer, Instant::now(), &chunk).expect("a valid chunk");
                }
                Some(_) => {}
            },
        }
        while let Some(o) = pipeline.poll_output() {
            if let PipelineOutput::Media(o) = o {
                if let Media::Audio(a) = &o.media {
                    wav.write(&a.samples).expect("write WAV");
                    mix.extend_from_slice(&a.samples);
                }
                pipeline.recycle(o);
            }
        }
    }
    handle.leave().await.expect("leave");
    wav.finish().expect("finish WAV");
    mix
}

/// Amplitude of `freq` in `samples`: the median over 100 ms windows, so that the jitter
/// buffer's occasional time-stretching (a phase jump) does not count as a lower level
fn tone_level(samples: &[i16], freq: f64) -> f64 {
    let mut levels: Vec<f64> = samples
        .chunks_exact(4800)
        .map(|w| tone_amplitude_hann(w, freq))
        .collect();
    if levels.is_empty() {
        return 0.0;
    }
    levels.sort_by(f64::total_cmp);
    levels[levels.len() / 2]
}
