//! A meshrtc peer on the blocking driver (`meshrtc-blocking`), run in this process
//!
//! It behaves like `meshrtc peer --data echo --audio tone --video testsrc` (the tokio
//! driver's CLI): the core's [`Echo`] on the data channel, a 440 Hz tone pushed through the
//! real-time capture ring by a simulated 10 ms audio callback (which also drains the
//! playout ring), and a test pattern sent with `SessionHandle::send_video`. When stopped it
//! returns the same stats JSON as `meshrtc peer --stats-json`, so the checks of the other
//! cases apply unchanged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::{TestPattern, Tone};
use meshrtc::codec::{VideoCodec, VideoEncoderConfig};
use meshrtc::signal::{Capabilities, PeerId, RoomId};
use meshrtc::CandidatePolicy;
use meshrtc_blocking::{Event, Session, SessionConfig};
use meshrtc_tokio::echo::{Echo, StatsFile, PING_INTERVAL};
use serde_json::Value;

/// The simulated audio callback's period
const CALLBACK: Duration = Duration::from_millis(10);
/// Samples per callback: 10 ms of 48 kHz mono (the default Opus configuration)
const CHUNK: usize = 480;

/// What the blocking peer sends
pub struct BlockingMedia {
    pub codec: VideoCodec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// A running blocking-driver peer
pub struct BlockingPeer {
    id: String,
    stop: Arc<AtomicBool>,
    /// Chunks the callback popped from the playout ring (any peer)
    played: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<Value, String>>>,
}

impl BlockingPeer {
    /// Joins `room` on the server at `signal_url` as `id` (blocks until the server accepted
    /// the announce), then runs the echo and the media until [`BlockingPeer::finish`]
    pub fn start(
        signal_url: &str,
        room: &str,
        id: &str,
        media: BlockingMedia,
    ) -> Result<Self, String> {
        // `RUST_LOG=meshrtc_blocking=debug` shows this peer's signaling frames.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
        let room_id = RoomId::new(room).map_err(|e| format!("room {room}: {e}"))?;
        let peer_id = PeerId::new(id).map_err(|e| format!("peer id {id}: {e}"))?;
        let mut config = SessionConfig::new(signal_url, room_id.clone());
        config.session.peer_id = Some(peer_id.clone());
        config.session.participant.seed = 0x5eed_b10c;
        config.session.participant.candidate_policy = CandidatePolicy::LoopbackOnly;
        config.session.participant.capabilities = Capabilities {
            audio: true,
            video: true,
            data: true,
        };
        config.session.participant.media.video_codecs = vec![media.codec];
        let mut video = VideoEncoderConfig::new(media.codec, media.width, media.height);
        video.fps = media.fps;
        video.bitrate_bps = 500_000;
        config.session.participant.media.video = video;
        let session = Session::join(config).map_err(|e| format!("blocking {id}: join: {e}"))?;

        let stop = Arc::new(AtomicBool::new(false));
        let played = Arc::new(AtomicU64::new(0));
        let Session {
            handle,
            events,
            mut capture,
            mut playout,
        } = session;

        // The audio callback: real-time calls only.
        let callback = {
            let stop = Arc::clone(&stop);
            let played = Arc::clone(&played);
            thread::Builder::new()
                .name(format!("cb-{id}"))
                .spawn(move || {
                    let mut tone = Tone::new(48_000, 1).with_frequency(440.0);
                    let mut mic = [0i16; CHUNK];
                    let mut speaker = [0i16; meshrtc_blocking::SLOT_SAMPLES];
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) && !capture.is_closed() {
                        tone.fill(&mut mic);
                        let _ = capture.push(&mic, Instant::now());
                        while playout.pop_into(&mut speaker).is_some() {
                            played.fetch_add(1, Ordering::Relaxed);
                        }
                        next += CALLBACK;
                        thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                })
                .map_err(|e| format!("spawn the callback thread: {e}"))?
        };

        // The application thread: echo, video, stats.
        let stop_app = Arc::clone(&stop);
        let tag = id.to_string();
        let thread = thread::Builder::new()
            .name(format!("app-{id}"))
            .spawn(move || {
                let mut echo = Echo::new(peer_id.clone());
                let mut pattern = TestPattern::new(media.width, media.height);
                let frame_every = Duration::from_secs(1) / media.fps.max(1);
                let start = Instant::now();
                let mut next_frame = start;
                let mut next_ping = start + PING_INTERVAL;
                while !stop_app.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= next_frame {
                        // Errors (no peer yet) come back as `Event::SendFailed`.
                        let _ = handle.send_video(now, pattern.next_frame());
                        next_frame += frame_every;
                    }
                    if now >= next_ping {
                        if let Ok(stats) = handle.stats() {
                            echo.record_stats(&stats.peers);
                        }
                        for (peer, msg) in echo.tick(now) {
                            let _ = handle.send_data(&peer, msg);
                        }
                        next_ping += PING_INTERVAL;
                    }
                    let wait = next_frame.min(next_ping).saturating_duration_since(now);
                    if let Some(Event::Mesh(event)) = events.recv_timeout(wait) {
                        for (peer, msg) in echo.handle_event(Instant::now(), &event) {
                            let _ = handle.send_data(&peer, msg);
                        }
                    }
                }
                let media = match handle.stats() {
                    Ok(stats) => {
                        echo.record_stats(&stats.peers);
                        stats.peers
                    }
                    Err(_) => BTreeMap::new(),
                };
                handle
                    .leave()
                    .map_err(|e| format!("blocking {tag}: leave: {e}"))?;
                let _ = callback.join();
                let file =
                    StatsFile::new(&peer_id, room_id.to_string(), &echo.report(), &media, true);
                serde_json::to_value(file).map_err(|e| e.to_string())
            })
            .map_err(|e| format!("spawn the app thread: {e}"))?;
        Ok(Self {
            id: id.to_string(),
            stop,
            played,
            thread: Some(thread),
        })
    }

    /// Audio chunks the callback has played out so far
    pub fn chunks_played(&self) -> u64 {
        self.played.load(Ordering::Relaxed)
    }

    /// Leaves the room and returns the stats JSON
    pub fn finish(mut self) -> Result<Value, String> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("finish runs once");
        thread
            .join()
            .map_err(|_| format!("blocking {}: the app thread panicked", self.id))?
    }
}

impl Drop for BlockingPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
