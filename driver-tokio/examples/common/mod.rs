//! What the examples share: arguments, an embedded signaling server, joining, media files

#![allow(dead_code)] // reason: each example uses a part of this

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshrtc::codec::I420Frame;
use meshrtc::pipeline::files::{WavWriter, Y4mWriter};
use meshrtc::signal::{Capabilities, PeerId, RoomId};
use meshrtc::CandidatePolicy;
use meshrtc_tokio::{Events, Session, SessionConfig, SessionHandle, SignalServer};

/// `--secs N` (or `MESHRTC_EXAMPLE_SECS`) and `--out DIR`
pub struct Args {
    /// How long the call lasts
    pub duration: Duration,
    /// Where the files go
    pub out: PathBuf,
}

impl Args {
    /// Parses the command line; `name` names the default output folder
    pub fn parse(name: &str, default_secs: u64) -> Self {
        let mut secs = std::env::var("MESHRTC_EXAMPLE_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(default_secs as f64);
        let mut out = PathBuf::from("meshrtc-examples").join(name);
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--secs" => {
                    secs = args
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| usage(name))
                }
                "--out" => {
                    out = args
                        .next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage(name))
                }
                _ => usage(name),
            }
        }
        if !(secs > 0.0 && secs <= 3600.0) {
            usage(name);
        }
        if let Err(e) = std::fs::create_dir_all(&out) {
            eprintln!("cannot create {}: {e}", out.display());
            std::process::exit(1);
        }
        Self {
            duration: Duration::from_secs_f64(secs),
            out,
        }
    }
}

fn usage(name: &str) -> ! {
    eprintln!(
        "usage: cargo run --release -p meshrtc-tokio --example {name} -- [--secs N] [--out DIR]"
    );
    std::process::exit(2);
}

/// Logs to stderr as `RUST_LOG` says (warnings by default)
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A signaling server on a free loopback port, in this process
pub async fn embedded_server() -> SignalServer {
    SignalServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind the embedded signaling server on 127.0.0.1")
}

/// A peer id from a literal
pub fn pid(s: &str) -> PeerId {
    PeerId::new(s).expect("a valid peer id")
}

/// Joins `room` as `id` with these media, on loopback
pub async fn join(
    server: &SignalServer,
    room: &str,
    id: &str,
    audio: bool,
    video: Option<(u32, u32)>,
) -> (SessionHandle, Events) {
    let mut c = SessionConfig::new(server.url(), RoomId::new(room).expect("a valid room"));
    c.session.peer_id = Some(pid(id));
    c.session.participant.candidate_policy = CandidatePolicy::LoopbackOnly;
    c.session.participant.capabilities = Capabilities {
        audio,
        video: video.is_some(),
        data: true,
    };
    if let Some((w, h)) = video {
        let media = &mut c.session.participant.media;
        media.video.width = w;
        media.video.height = h;
        media.video.bitrate_bps = 800_000;
    }
    Session::join(c)
        .await
        .unwrap_or_else(|e| panic!("{id} could not join {room}: {e}"))
}

/// A 48 kHz mono WAV file
pub fn wav(path: &Path) -> WavWriter<BufWriter<File>> {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    WavWriter::new(BufWriter::new(f), 1).expect("a mono WAV header")
}

/// A Y4M file of `width` x `height` at `fps`
pub fn y4m(path: &Path, width: u32, height: u32, fps: u32) -> Y4mWriter<BufWriter<File>> {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    Y4mWriter::new(BufWriter::new(f), width, height, fps, 1).expect("a Y4M header")
}

/// Mean squared difference between horizontally neighbouring luma pixels: the picture's
/// high-frequency energy (sharp edges have much, a blurred picture little)
pub fn hf_energy(f: &I420Frame) -> f64 {
    let (w, h) = (f.width as usize, f.height as usize);
    let y = &f.y[..w * h];
    let mut sum = 0.0;
    for row in y.chunks_exact(w) {
        for p in row.windows(2) {
            let d = f64::from(p[1]) - f64::from(p[0]);
            sum += d * d;
        }
    }
    sum / ((w - 1) * h) as f64
}

/// Level of a block of samples in dBFS (RMS; -inf for silence)
pub fn level_dbfs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let ms = samples
        .iter()
        .map(|&s| (f64::from(s) / 32768.0).powi(2))
        .sum::<f64>()
        / samples.len() as f64;
    10.0 * ms.log10()
}

/// Amplitude (full scale 1.0) of `freq` in `samples` at 48 kHz: Goertzel over a Hann
/// window (its sidelobes fall fast, so tones a few bins away do not leak in)
pub fn tone_amplitude_hann(samples: &[i16], freq: f64) -> f64 {
    let n = samples.len() as f64;
    let w = 2.0 * std::f64::consts::PI * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for (k, &x) in samples.iter().enumerate() {
        let hann = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / n).cos();
        let s0 = hann * f64::from(x) / 32768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // The window's coherent gain is 1/2.
    4.0 * power.max(0.0).sqrt() / n
}
