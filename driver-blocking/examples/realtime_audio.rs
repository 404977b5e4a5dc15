//! A simulated real-time audio thread on the blocking driver
//!
//! ```text
//! cargo run -p meshrtc-blocking --example realtime_audio                  # two peers, in-process server
//! cargo run -p meshrtc-blocking --example realtime_audio -- --server ws://HOST:PORT/ --room demo --id me
//! ```
//!
//! Without `--server`, a signaling server (the tokio driver's) starts in this process and two
//! peers, `alice` and `bob`, call each other. Each peer has an "audio callback" thread that
//! wakes every 10 ms, pushes 10 ms of a tone (alice 440 Hz, bob 660 Hz) and pops every chunk
//! that is due, as a sound card's callback would. The callback does nothing but push and pop:
//! no allocation, no lock, no system call other than its own sleep (a real callback would be
//! woken by the sound card instead). Once a second each peer prints what its callback heard.
//!
//! Options: `--seconds N` (default 5), `--room NAME`, `--id NAME` (with `--server`), `--poll`
//! (the core thread waits with `poll(2)` instead of a socket read timeout: `WaitMode::Poll`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::Tone;
use meshrtc::signal::{PeerId, RoomId};
use meshrtc_blocking::{
    AudioCapture, AudioPlayout, Event, RealtimeConfig, Session, SessionConfig, WaitMode,
    MAX_AUDIO_PEERS, SLOT_SAMPLES,
};

/// The callback period
const PERIOD: Duration = Duration::from_millis(10);

/// 10 ms of mono 48 kHz audio
const CHUNK: usize = 480;

struct Args {
    server: Option<String>,
    room: String,
    id: String,
    seconds: u64,
    wait: WaitMode,
}

fn args() -> Args {
    let mut a = Args {
        server: None,
        room: "realtime".into(),
        id: "me".into(),
        seconds: 5,
        wait: WaitMode::ReadTimeout,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => a.server = Some(value()),
            "--room" => a.room = value(),
            "--id" => a.id = value(),
            "--seconds" => a.seconds = value().parse().expect("--seconds takes a number"),
            "--poll" => a.wait = WaitMode::Poll,
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// What a callback counts, readable from other threads (relaxed atomics: real-time safe)
#[derive(Default)]
struct Meter {
    callbacks: AtomicU64,
    pushed: AtomicU64,
    refused: AtomicU64,
    chunks: [AtomicU64; MAX_AUDIO_PEERS],
    concealed: [AtomicU64; MAX_AUDIO_PEERS],
    peak: [AtomicU64; MAX_AUDIO_PEERS],
    /// Longest time spent inside one callback, in nanoseconds
    worst_ns: AtomicU64,
}

/// The simulated audio callback thread
fn callback_thread(
    name: String,
    hz: f64,
    mut capture: AudioCapture,
    mut playout: AudioPlayout,
    meter: Arc<Meter>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("cb-{name}"))
        .spawn(move || {
            // Everything the callback needs is allocated here, before it starts.
            let mut tone = Tone::new(48_000, 1).with_frequency(hz);
            let mut mic = [0i16; CHUNK];
            let mut speaker = [0i16; SLOT_SAMPLES];
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                // ---- the callback body: real-time safe calls only ----
                tone.fill(&mut mic);
                match capture.push(&mic, start) {
                    Ok(()) => meter.pushed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => meter.refused.fetch_add(1, Ordering::Relaxed),
                };
                while let Some(info) = playout.pop_into(&mut speaker) {
                    let i = info.peer.get();
                    meter.chunks[i].fetch_add(1, Ordering::Relaxed);
                    if info.concealed {
                        meter.concealed[i].fetch_add(1, Ordering::Relaxed);
                    }
                    let peak = speaker[..info.samples]
                        .iter()
                        .map(|s| u64::from(s.unsigned_abs()))
                        .max()
                        .unwrap_or(0);
                    meter.peak[i].fetch_max(peak, Ordering::Relaxed);
                    // A real callback mixes speaker[..info.samples] into the device buffer.
                }
                meter.callbacks.fetch_add(1, Ordering::Relaxed);
                let took = start.elapsed().as_nanos() as u64;
                meter.worst_ns.fetch_max(took, Ordering::Relaxed);
                // ---- end of the callback body ----
                next += PERIOD;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
        .expect("spawn the callback thread")
}

/// One peer: a session, its callback thread, and its event printer
struct Peer {
    name: String,
    session_events: meshrtc_blocking::Events,
    handle: meshrtc_blocking::SessionHandle,
    meter: Arc<Meter>,
    callback: JoinHandle<()>,
    names: [Option<PeerId>; MAX_AUDIO_PEERS],
}

fn start_peer(args: &Args, url: &str, id: &str, hz: f64, stop: &Arc<AtomicBool>) -> Peer {
    let room = args.room.as_str();
    let mut config = SessionConfig::new(url, RoomId::new(room).expect("a valid room"));
    config.session.peer_id = Some(PeerId::new(id).expect("a valid peer id"));
    config.session.participant.capabilities.audio = true;
    config.session.participant.seed = id.bytes().map(u64::from).sum();
    let rt = RealtimeConfig {
        wait: args.wait,
        ..RealtimeConfig::default()
    };
    let Session {
        handle,
        events,
        capture,
        playout,
    } = Session::join_with(config, rt).unwrap_or_else(|e| panic!("{id} cannot join: {e}"));
    println!(
        "{id}: joined {room} as {} on {}",
        handle.peer_id(),
        handle.local_addr()
    );
    let meter = Arc::new(Meter::default());
    let callback = callback_thread(id.into(), hz, capture, playout, meter.clone(), stop.clone());
    Peer {
        name: id.into(),
        session_events: events,
        handle,
        meter,
        callback,
        names: Default::default(),
    }
}

impl Peer {
    fn read_events(&mut self) {
        while let Some(e) = self.session_events.try_recv() {
            match e {
                Event::AudioStreamStarted { peer, slot } => {
                    println!("{}: audio from {peer} on index {slot}", self.name);
                    self.names[slot] = Some(peer);
                }
                Event::AudioStreamEnded { peer, slot } => {
                    println!("{}: audio from {peer} ended", self.name);
                    self.names[slot] = None;
                }
                Event::Mesh(meshrtc::Event::PeerConnected { peer, connect_time }) => {
                    println!("{}: connected to {peer} in {connect_time:?}", self.name);
                }
                Event::SignalingLost { reason } => {
                    println!("{}: signaling lost ({reason}); media goes on", self.name);
                }
                Event::SignalingRestored { .. } => println!("{}: signaling restored", self.name),
                _ => {}
            }
        }
    }

    fn report(&mut self, last: &mut [u64; MAX_AUDIO_PEERS]) {
        self.read_events();
        let m = &self.meter;
        let mut line = format!(
            "{}: {} callbacks, {} chunks pushed ({} refused), worst callback {:.1} µs",
            self.name,
            m.callbacks.load(Ordering::Relaxed),
            m.pushed.load(Ordering::Relaxed),
            m.refused.load(Ordering::Relaxed),
            m.worst_ns.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        for (i, name) in self.names.iter().enumerate() {
            let Some(name) = name else { continue };
            let chunks = m.chunks[i].load(Ordering::Relaxed);
            line += &format!(
                "; from {name}: {} chunks this second, {} concealed in all, peak {}",
                chunks - last[i],
                m.concealed[i].load(Ordering::Relaxed),
                m.peak[i].load(Ordering::Relaxed),
            );
            last[i] = chunks;
        }
        println!("{line}");
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = args();
    let stop = Arc::new(AtomicBool::new(false));
    // The in-process server lives on a small tokio runtime; the peers need none.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let (server, url) = match &args.server {
        Some(url) => (None, url.clone()),
        None => {
            let server = runtime
                .block_on(meshrtc_tokio::SignalServer::bind(
                    "127.0.0.1:0".parse().expect("an address"),
                ))
                .expect("start the signaling server");
            let url = server.url();
            println!("signaling server on {url}");
            (Some(server), url)
        }
    };
    let mut peers = if server.is_some() {
        vec![
            start_peer(&args, &url, "alice", 440.0, &stop),
            start_peer(&args, &url, "bob", 660.0, &stop),
        ]
    } else {
        vec![start_peer(&args, &url, &args.id, 440.0, &stop)]
    };
    let mut last = vec![[0u64; MAX_AUDIO_PEERS]; peers.len()];
    for _ in 0..args.seconds {
        std::thread::sleep(Duration::from_secs(1));
        for (peer, last) in peers.iter_mut().zip(&mut last) {
            peer.report(last);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for peer in peers {
        peer.callback.join().expect("the callback thread ended");
        println!("{}: {:?}", peer.name, peer.handle.rt_counts());
        peer.handle.leave().expect("leave");
    }
    drop(server);
}
