//! Helpers shared by the scenario tests: a signaling server, sessions of both drivers, a
//! simulated audio callback

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::Tone;
use meshrtc::session::Backoff;
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::CandidatePolicy;
use meshrtc_blocking::{
    AudioCapture, AudioPlayout, Event, Events, PeerIndex, Session, SessionConfig, MAX_AUDIO_PEERS,
    SLOT_SAMPLES,
};
use meshrtc_tokio::SignalServer;

/// The most any wait in a test may take
pub const LIMIT: Duration = Duration::from_secs(10);

/// One 10 ms mono chunk at 48 kHz
pub const CHUNK: usize = 480;

pub fn pid(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

pub fn rid(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

fn seed(id: &str) -> u64 {
    id.bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

/// A tokio runtime for the signaling server and the tokio-driver sessions
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

pub fn server(rt: &tokio::runtime::Runtime) -> SignalServer {
    server_at(rt, "127.0.0.1:0".parse().unwrap())
}

pub fn server_at(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> SignalServer {
    rt.block_on(SignalServer::bind(addr)).unwrap()
}

fn participant(id: &str) -> meshrtc::Config {
    let mut c = meshrtc::Config {
        seed: seed(id),
        candidate_policy: CandidatePolicy::LoopbackOnly,
        ..Default::default()
    };
    c.capabilities.audio = true;
    c
}

/// A blocking-driver config for tests: loopback only, audio on, fast reconnects
pub fn blocking_config(url: &str, room: &str, id: &str) -> SessionConfig {
    let mut c = SessionConfig::new(url, rid(room));
    c.session.peer_id = Some(pid(id));
    c.session.participant = participant(id);
    c.session.reconnect = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        jitter: 0.5,
    };
    c
}

pub fn join_blocking(url: &str, room: &str, id: &str) -> Session {
    Session::join(blocking_config(url, room, id))
        .unwrap_or_else(|e| panic!("{id} could not join {room}: {e}"))
}

/// A tokio-driver session with the same settings
pub fn join_tokio(
    rt: &tokio::runtime::Runtime,
    url: &str,
    room: &str,
    id: &str,
) -> (meshrtc_tokio::SessionHandle, meshrtc_tokio::Events) {
    let mut c = SessionConfig::new(url, rid(room));
    c.session.peer_id = Some(pid(id));
    c.session.participant = participant(id);
    rt.block_on(meshrtc_tokio::Session::join(c))
        .unwrap_or_else(|e| panic!("{id} could not join {room}: {e}"))
}

/// Reads blocking-driver events until `pick` returns something; panics after [`LIMIT`]
pub fn wait_for<T>(events: &Events, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let until = Instant::now() + LIMIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Some(e) = events.recv_timeout(left) else {
            panic!("no {what} within {LIMIT:?}");
        };
        if let Some(t) = pick(&e) {
            return t;
        }
    }
}

/// Waits until `count` distinct peers connected, on a blocking session
pub fn connected(events: &Events, count: usize) -> Vec<PeerId> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let peer = wait_for(events, "PeerConnected", |e| match e {
            Event::Mesh(meshrtc::Event::PeerConnected { peer, .. }) => Some(peer.clone()),
            _ => None,
        });
        if !seen.contains(&peer) {
            seen.push(peer);
        }
    }
    seen.sort();
    seen
}

/// Reads tokio-driver events until `pick` returns something; panics after [`LIMIT`]
pub fn wait_tokio<T>(
    rt: &tokio::runtime::Runtime,
    events: &mut meshrtc_tokio::Events,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    rt.block_on(async {
        let search = async {
            loop {
                let e = events.recv().await.expect("tokio event stream ended");
                if let Some(t) = pick(&e) {
                    return t;
                }
            }
        };
        tokio::time::timeout(LIMIT, search)
            .await
            .unwrap_or_else(|_| panic!("no {what} within {LIMIT:?}"))
    })
}

/// Waits until `count` distinct peers connected, on a tokio session
pub fn connected_tokio(
    rt: &tokio::runtime::Runtime,
    events: &mut meshrtc_tokio::Events,
    count: usize,
) -> Vec<PeerId> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let peer = wait_tokio(rt, events, "PeerConnected", |e| match e {
            Event::Mesh(meshrtc::Event::PeerConnected { peer, .. }) => Some(peer.clone()),
            _ => None,
        });
        if !seen.contains(&peer) {
            seen.push(peer);
        }
    }
    seen.sort();
    seen
}

/// Audible chunks (not concealed, with the tone's energy) received per peer index
#[derive(Debug, Default, Clone)]
pub struct Heard {
    pub audible: [u64; MAX_AUDIO_PEERS],
    pub chunks: [u64; MAX_AUDIO_PEERS],
}

/// A simulated audio callback: every 10 ms, push one chunk of tone and pop everything due
pub struct AudioLoop {
    stop: Arc<AtomicBool>,
    heard: Arc<Mutex<Heard>>,
    thread: Option<JoinHandle<(AudioCapture, AudioPlayout)>>,
}

impl AudioLoop {
    pub fn start(mut capture: AudioCapture, mut playout: AudioPlayout) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let heard = Arc::new(Mutex::new(Heard::default()));
        let (s, h) = (stop.clone(), heard.clone());
        let thread = std::thread::spawn(move || {
            let mut tone = Tone::new(48_000, 1);
            let mut mic = [0i16; CHUNK];
            let mut speaker = [0i16; SLOT_SAMPLES];
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                tone.fill(&mut mic);
                let _ = capture.push(&mic, Instant::now());
                let mut local = Heard::default();
                while let Some(info) = playout.pop_into(&mut speaker) {
                    let i = info.peer.get();
                    local.chunks[i] += 1;
                    let peak = speaker[..info.samples]
                        .iter()
                        .map(|s| s.unsigned_abs())
                        .max()
                        .unwrap_or(0);
                    if !info.concealed && peak > 1000 {
                        local.audible[i] += 1;
                    }
                }
                // The test's bookkeeping, not part of what a real callback would do.
                let mut total = h.lock().unwrap();
                for i in 0..MAX_AUDIO_PEERS {
                    total.audible[i] += local.audible[i];
                    total.chunks[i] += local.chunks[i];
                }
                drop(total);
                next += Duration::from_millis(10);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (capture, playout)
        });
        Self {
            stop,
            heard,
            thread: Some(thread),
        }
    }

    pub fn heard(&self) -> Heard {
        self.heard.lock().unwrap().clone()
    }

    /// Audible chunks heard from one index
    pub fn audible(&self, index: PeerIndex) -> u64 {
        self.heard().audible[index.get()]
    }

    /// Waits until `n` more audible chunks than `from` came from `index`
    pub fn wait_audible(&self, index: PeerIndex, from: u64, n: u64, what: &str) -> u64 {
        let until = Instant::now() + LIMIT;
        loop {
            let now = self.audible(index);
            if now >= from + n {
                return now;
            }
            assert!(
                Instant::now() < until,
                "{what}: only {} of {n} audible chunks within {LIMIT:?}",
                now - from
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(mut self) -> (AudioCapture, AudioPlayout) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for AudioLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Peer index of each remote audio stream, from `AudioStreamStarted` events seen so far
#[derive(Debug, Default)]
pub struct Indices(pub BTreeMap<PeerId, PeerIndex>);

impl Indices {
    pub fn note(&mut self, e: &Event) {
        if let Event::AudioStreamStarted { peer, slot } = e {
            self.0.insert(peer.clone(), PeerIndex(*slot as u8));
        }
    }

    /// Waits (reading events) until `peer` has an index; other events go to `other`
    pub fn wait(
        &mut self,
        events: &Events,
        peer: &PeerId,
        mut other: impl FnMut(&Event),
    ) -> PeerIndex {
        if let Some(i) = self.0.get(peer) {
            return *i;
        }
        wait_for(events, "AudioStreamStarted", |e| {
            self.note(e);
            other(e);
            self.0.get(peer).copied()
        })
    }
}

/// Audible chunks of the tokio session's audio events, from `peer`
pub fn tokio_audible(e: &Event, peer: &PeerId) -> bool {
    match e {
        Event::Mesh(meshrtc::Event::AudioPlayout { peer: p, chunk }) => {
            let peak = chunk
                .samples
                .iter()
                .map(|s| s.unsigned_abs())
                .max()
                .unwrap_or(0);
            p == peer && !chunk.concealed && peak > 1000
        }
        _ => false,
    }
}

/// Reads tokio events until `n` audible chunks from `peer` arrived
pub fn tokio_hears(
    rt: &tokio::runtime::Runtime,
    events: &mut meshrtc_tokio::Events,
    peer: &PeerId,
    n: u64,
) {
    let mut got = 0;
    wait_tokio(rt, events, "audio", |e| {
        got += u64::from(tokio_audible(e, peer));
        (got >= n).then_some(())
    });
}
