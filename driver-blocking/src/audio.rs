//! The real-time audio path: wait-free rings between an audio callback and the core thread
//!
//! Two single-producer single-consumer rings ([`rtrb`]) of fixed-size slots, allocated once
//! when the session starts:
//!
//! * capture: the audio callback pushes PCM chunks with [`AudioCapture::push`]; the core
//!   thread pops them, cuts them into Opus frames and calls `Participant::send_audio`.
//! * playout: the core thread copies every `Event::AudioPlayout` chunk into a slot; the audio
//!   callback pops them with [`AudioPlayout::pop_with`] or [`AudioPlayout::pop_into`].
//!
//! # Real-time safety
//!
//! These calls never block, never allocate or free, take no lock and make no system call;
//! each is a bounded number of atomic loads and stores plus a copy of at most one slot
//! ([`SLOT_SAMPLES`] samples). They are the only calls meant for an audio callback:
//!
//! | call | side |
//! |---|---|
//! | [`AudioCapture::push`] | capture (app → core) |
//! | [`AudioCapture::free_slots`], [`AudioCapture::is_closed`] | capture |
//! | [`AudioPlayout::pop_with`], [`AudioPlayout::pop_into`] | playout (core → app) |
//! | [`AudioPlayout::available`], [`AudioPlayout::is_closed`] | playout |
//! | [`RtCounters::snapshot`] (via `AudioCapture::counters`/`AudioPlayout::counters`) | either |
//!
//! Everything else in this crate (joining, data messages, statistics, events, leaving) may
//! block or allocate and belongs on an ordinary thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshrtc::signal::PeerId;
use meshrtc::sync::PlayoutChunk;
use rtrb::{Consumer, Producer, RingBuffer};

/// Samples (interleaved, all channels) one slot holds: 20 ms of 48 kHz stereo
///
/// A capture chunk may be any length up to this; a playout chunk is the core's 10 ms.
pub const SLOT_SAMPLES: usize = 960 * 2;

/// Remote peers whose audio can be told apart on the real-time side at once
///
/// A room holds at most 10 peers (9 remote); the spare indices let a peer that left and one
/// that joined overlap without waiting.
pub const MAX_AUDIO_PEERS: usize = meshrtc::session::MAX_AUDIO_SLOTS;

/// Opus runs at 48 kHz
const SAMPLE_RATE: u64 = 48_000;

/// A small index naming one remote peer's audio stream on the real-time side
///
/// Indices are below [`MAX_AUDIO_PEERS`], so a mixer can keep per-peer state in a fixed
/// array. The mapping to a [`PeerId`] is announced (off the real-time path) by
/// `Event::AudioStreamStarted` and `Event::AudioStreamEnded` (their `slot` is the index). An index is reused only
/// after its previous peer ended; chunks come out in order, so every chunk of the old
/// peer is popped before the first chunk of the new one, which has
/// [`PlayoutInfo::starts_stream`] set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerIndex(pub u8);

impl PeerIndex {
    /// The index as a `usize`, for indexing arrays
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// Why [`AudioCapture::push`] refused a chunk
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Every capture slot is in use: the core thread is behind; the chunk was dropped
    #[error("the capture queue is full")]
    Full,
    /// The chunk holds more than [`SLOT_SAMPLES`] samples
    #[error("a chunk of {0} samples does not fit a slot")]
    TooLarge(usize),
    /// The session has ended; nobody reads the queue any more
    #[error("the session has ended")]
    Closed,
}

/// Counters of the real-time path, shared by both sides and the core thread
#[derive(Debug, Default)]
pub struct RtCounters {
    capture_pushed: AtomicU64,
    capture_full: AtomicU64,
    playout_pushed: AtomicU64,
    playout_full: AtomicU64,
    playout_no_index: AtomicU64,
    loop_turns: AtomicU64,
}

/// A copy of the [`RtCounters`]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtCounts {
    /// Capture chunks accepted by [`AudioCapture::push`]
    pub capture_pushed: u64,
    /// Capture chunks refused because the ring was full
    pub capture_full: u64,
    /// Playout chunks the core thread put in the ring
    pub playout_pushed: u64,
    /// Playout chunks dropped because the ring was full (the callback did not pop in time)
    pub playout_full: u64,
    /// Playout chunks dropped because their peer had no [`PeerIndex`]
    pub playout_no_index: u64,
    /// Turns of the core thread's loop so far (each is one wait)
    pub loop_turns: u64,
}

impl RtCounters {
    /// Reads every counter (relaxed atomic loads; real-time safe)
    pub fn snapshot(&self) -> RtCounts {
        RtCounts {
            capture_pushed: self.capture_pushed.load(Ordering::Relaxed),
            capture_full: self.capture_full.load(Ordering::Relaxed),
            playout_pushed: self.playout_pushed.load(Ordering::Relaxed),
            playout_full: self.playout_full.load(Ordering::Relaxed),
            playout_no_index: self.playout_no_index.load(Ordering::Relaxed),
            loop_turns: self.loop_turns.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One capture chunk in the ring
///
/// `Default` lets the producer fill a slot in place (no slot-sized copy on the callback's
/// stack); `capture` is always set before the slot is committed.
struct CaptureSlot {
    capture: Option<Instant>,
    len: usize,
    samples: [i16; SLOT_SAMPLES],
}

impl Default for CaptureSlot {
    fn default() -> Self {
        Self {
            capture: None,
            len: 0,
            samples: [0; SLOT_SAMPLES],
        }
    }
}

/// What a popped playout chunk is
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlayoutInfo {
    /// Whose audio it is
    pub peer: PeerIndex,
    /// Interleaved samples in the chunk (all channels)
    pub samples: usize,
    /// Channels interleaved
    pub channels: u16,
    /// Media time (48 kHz ticks, unwrapped) of the first sample
    pub media_ticks: i64,
    /// The local instant the core scheduled this chunk to play
    pub playout: Instant,
    /// Whether any of it is concealment (loss or late packets)
    pub concealed: bool,
    /// The first chunk of this peer under this index (reset any per-index state)
    pub starts_stream: bool,
}

/// One playout chunk in the ring
struct PlayoutSlot {
    info: PlayoutInfo,
    samples: [i16; SLOT_SAMPLES],
}

/// The application's end of the capture ring: push PCM from the audio callback
///
/// Chunks are interleaved 48 kHz PCM with the channel count of `MediaConfig::opus` and any
/// length up to [`SLOT_SAMPLES`]; the core thread joins them into Opus frames. Push chunks
/// of the same length at a steady cadence (e.g. 10 ms from a 10 ms callback). The core
/// thread picks chunks up within [`MAX_WAIT`](crate::MAX_WAIT).
pub struct AudioCapture {
    producer: Producer<CaptureSlot>,
    counters: Arc<RtCounters>,
}

impl AudioCapture {
    /// The shared counters, for the handle (read off the real-time path)
    pub(crate) fn counters_handle(&self) -> Arc<RtCounters> {
        self.counters.clone()
    }

    /// Queues one chunk of captured PCM; `capture` is when its first sample was captured
    ///
    /// Real-time safe: wait-free, no allocation, no lock, no system call. An empty chunk is
    /// accepted and ignored.
    pub fn push(&mut self, pcm: &[i16], capture: Instant) -> Result<(), PushError> {
        if pcm.len() > SLOT_SAMPLES {
            return Err(PushError::TooLarge(pcm.len()));
        }
        if pcm.is_empty() {
            return Ok(());
        }
        if self.producer.is_abandoned() {
            return Err(PushError::Closed);
        }
        let Ok(mut chunk) = self.producer.write_chunk(1) else {
            bump(&self.counters.capture_full);
            return Err(PushError::Full);
        };
        let (first, _) = chunk.as_mut_slices();
        // `write_chunk(1)` succeeded, so the first slice holds exactly one slot.
        let slot = &mut first[0];
        slot.capture = Some(capture);
        slot.len = pcm.len();
        slot.samples[..pcm.len()].copy_from_slice(pcm);
        chunk.commit_all();
        bump(&self.counters.capture_pushed);
        Ok(())
    }

    /// Slots free right now (real-time safe)
    pub fn free_slots(&self) -> usize {
        self.producer.slots()
    }

    /// Whether the session has ended (real-time safe)
    pub fn is_closed(&self) -> bool {
        self.producer.is_abandoned()
    }

    /// The counters of the real-time path
    pub fn counters(&self) -> &RtCounters {
        &self.counters
    }
}

impl std::fmt::Debug for AudioCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioCapture")
            .field("free_slots", &self.free_slots())
            .finish()
    }
}

/// The application's end of the playout ring: pop decoded audio in the audio callback
///
/// Each chunk is 10 ms of one remote peer's audio, in the order the core released it (due
/// now, so pop everything available each callback and mix by [`PlayoutInfo::peer`]).
pub struct AudioPlayout {
    consumer: Consumer<PlayoutSlot>,
    counters: Arc<RtCounters>,
}

impl AudioPlayout {
    /// Pops the oldest chunk and lends its samples to `f`; `None` when the ring is empty
    ///
    /// Real-time safe: wait-free, no allocation, no lock, no system call (as long as `f`
    /// is).
    pub fn pop_with<R>(&mut self, f: impl FnOnce(&PlayoutInfo, &[i16]) -> R) -> Option<R> {
        let chunk = self.consumer.read_chunk(1).ok()?;
        let (first, _) = chunk.as_slices();
        // `read_chunk(1)` succeeded, so the first slice holds exactly one slot.
        let slot = &first[0];
        let out = f(&slot.info, &slot.samples[..slot.info.samples]);
        chunk.commit_all();
        Some(out)
    }

    /// Pops the oldest chunk into `out`; `None` when the ring is empty
    ///
    /// Copies `min(out.len(), info.samples)` samples; give at least [`SLOT_SAMPLES`] to
    /// never cut a chunk short. Real-time safe.
    pub fn pop_into(&mut self, out: &mut [i16]) -> Option<PlayoutInfo> {
        self.pop_with(|info, samples| {
            let n = samples.len().min(out.len());
            out[..n].copy_from_slice(&samples[..n]);
            *info
        })
    }

    /// Chunks waiting right now (real-time safe)
    pub fn available(&self) -> usize {
        self.consumer.slots()
    }

    /// Whether the session has ended (real-time safe); chunks already queued can still be
    /// popped
    pub fn is_closed(&self) -> bool {
        self.consumer.is_abandoned()
    }

    /// The counters of the real-time path
    pub fn counters(&self) -> &RtCounters {
        &self.counters
    }
}

impl std::fmt::Debug for AudioPlayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioPlayout")
            .field("available", &self.available())
            .finish()
    }
}

/// Creates both rings; the application's ends and the core thread's ends
pub(crate) fn rings(
    capture_slots: usize,
    playout_slots: usize,
    frame_samples: usize,
    channels: u16,
) -> (AudioCapture, AudioPlayout, CaptureSource, PlayoutSink) {
    let counters = Arc::new(RtCounters::default());
    let (cap_tx, cap_rx) = RingBuffer::new(capture_slots.max(1));
    let (play_tx, play_rx) = RingBuffer::new(playout_slots.max(1));
    let capture = AudioCapture {
        producer: cap_tx,
        counters: counters.clone(),
    };
    let playout = AudioPlayout {
        consumer: play_rx,
        counters: counters.clone(),
    };
    let source = CaptureSource {
        consumer: cap_rx,
        pending: Vec::with_capacity(frame_samples + SLOT_SAMPLES),
        pending_start: None,
        frame_samples,
        channels: u64::from(channels.max(1)),
        handed_out: false,
    };
    let sink = PlayoutSink {
        producer: play_tx,
        peers: Default::default(),
        counters,
    };
    (capture, playout, source, sink)
}

/// The core thread's end of the capture ring: joins chunks into Opus frames
pub(crate) struct CaptureSource {
    consumer: Consumer<CaptureSlot>,
    /// Samples popped but not yet handed out as a whole frame
    pending: Vec<i16>,
    /// Capture instant of `pending[0]`
    pending_start: Option<Instant>,
    frame_samples: usize,
    channels: u64,
    /// The first frame of `pending` was handed out and is to be dropped on the next call
    handed_out: bool,
}

impl CaptureSource {
    /// The next whole Opus frame and the capture instant of its first sample, popping as
    /// many chunks as it takes; `None` when the ring runs dry first
    pub(crate) fn next_frame(&mut self) -> Option<(Instant, &[i16])> {
        if self.handed_out {
            self.handed_out = false;
            self.pending.drain(..self.frame_samples);
            let per_channel = (self.frame_samples as u64) / self.channels;
            let advance = Duration::from_nanos(per_channel * 1_000_000_000 / SAMPLE_RATE);
            self.pending_start = self.pending_start.map(|t| t + advance);
        }
        while self.pending.len() < self.frame_samples {
            let slot = self.consumer.pop().ok()?;
            if self.pending.is_empty() {
                self.pending_start = slot.capture;
            }
            self.pending.extend_from_slice(&slot.samples[..slot.len]);
        }
        self.handed_out = true;
        // Set whenever `pending` is non-empty, and it holds a whole frame here.
        let start = self
            .pending_start
            .expect("pending is not empty; panic means bug");
        Some((start, &self.pending[..self.frame_samples]))
    }
}

/// The core thread's end of the playout ring: copies chunks into slots
///
/// Slots are the core session's (`Event::AudioStreamStarted`/`Ended`); the sink only
/// remembers which peer holds which, and which stream has not had its first chunk yet.
pub(crate) struct PlayoutSink {
    producer: Producer<PlayoutSlot>,
    /// Which peer holds each index, and whether its first chunk is still to come
    peers: [Option<(PeerId, bool)>; MAX_AUDIO_PEERS],
    counters: Arc<RtCounters>,
}

impl PlayoutSink {
    /// A peer's audio stream got `slot`
    pub(crate) fn start(&mut self, peer: &PeerId, slot: usize) {
        if let Some(s) = self.peers.get_mut(slot) {
            *s = Some((peer.clone(), true));
        }
    }

    /// A peer's audio stream ended; its slot is free
    pub(crate) fn end(&mut self, slot: usize) {
        if let Some(s) = self.peers.get_mut(slot) {
            *s = None;
        }
    }

    /// Counts one turn of the core thread's loop
    pub(crate) fn count_turn(&self) {
        bump(&self.counters.loop_turns);
    }

    /// Queues one playout chunk for the application
    pub(crate) fn deliver(&mut self, peer: &PeerId, chunk: &PlayoutChunk) {
        let Some(index) = self
            .peers
            .iter()
            .position(|s| s.as_ref().is_some_and(|(p, _)| p == peer))
        else {
            bump(&self.counters.playout_no_index);
            return;
        };
        let entry = self.peers[index]
            .as_mut()
            .expect("found above; panic means bug");
        let channels = u16::try_from(chunk.channels).unwrap_or(u16::MAX);
        for (i, part) in chunk.samples.chunks(SLOT_SAMPLES).enumerate() {
            let mut slot = PlayoutSlot {
                info: PlayoutInfo {
                    peer: PeerIndex(index as u8),
                    samples: part.len(),
                    channels,
                    media_ticks: chunk.media_ticks
                        + (i * SLOT_SAMPLES / chunk.channels.max(1)) as i64,
                    playout: chunk.playout,
                    concealed: chunk.concealed,
                    starts_stream: entry.1,
                },
                samples: [0; SLOT_SAMPLES],
            };
            slot.samples[..part.len()].copy_from_slice(part);
            match self.producer.push(slot) {
                Ok(()) => {
                    entry.1 = false;
                    bump(&self.counters.playout_pushed);
                }
                Err(_) => bump(&self.counters.playout_full),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_chunks_become_whole_frames() {
        let (mut cap, _play, mut src, _sink) = rings(8, 8, 960, 1);
        let t0 = Instant::now();
        let chunk: Vec<i16> = (0..480).map(|i| i as i16).collect();
        cap.push(&chunk, t0).unwrap();
        assert!(src.next_frame().is_none(), "half a frame is not a frame");
        cap.push(&chunk, t0 + Duration::from_millis(10)).unwrap();
        let (t, frame) = src.next_frame().unwrap();
        assert_eq!(t, t0);
        assert_eq!(frame.len(), 960);
        assert_eq!(frame[480], 0);
        assert!(src.next_frame().is_none());
    }

    #[test]
    fn uneven_chunks_keep_their_capture_time() {
        // 15 ms chunks into 20 ms frames: the second frame starts 5 ms into the second chunk.
        let (mut cap, _play, mut src, _sink) = rings(8, 8, 960, 1);
        let t0 = Instant::now();
        for i in 0..4u64 {
            cap.push(&[1; 720], t0 + Duration::from_millis(15 * i))
                .unwrap();
        }
        let (t1, _) = src.next_frame().unwrap();
        assert_eq!(t1, t0);
        let (t2, _) = src.next_frame().unwrap();
        assert_eq!(t2, t0 + Duration::from_millis(20));
        let (t3, _) = src.next_frame().unwrap();
        assert_eq!(t3, t0 + Duration::from_millis(40));
        assert!(src.next_frame().is_none());
    }

    #[test]
    fn push_refuses_when_full_or_too_large() {
        let (mut cap, _play, _src, _sink) = rings(2, 2, 960, 1);
        let now = Instant::now();
        assert_eq!(
            cap.push(&[0; SLOT_SAMPLES + 1], now),
            Err(PushError::TooLarge(SLOT_SAMPLES + 1))
        );
        cap.push(&[0; 10], now).unwrap();
        cap.push(&[0; 10], now).unwrap();
        assert_eq!(cap.push(&[0; 10], now), Err(PushError::Full));
        let c = cap.counters().snapshot();
        assert_eq!((c.capture_pushed, c.capture_full), (2, 1));
    }

    #[test]
    fn push_after_the_core_is_gone_says_closed() {
        let (mut cap, _play, src, _sink) = rings(2, 2, 960, 1);
        drop(src);
        assert!(cap.is_closed());
        assert_eq!(cap.push(&[0; 10], Instant::now()), Err(PushError::Closed));
    }

    #[test]
    fn playout_names_peers_by_their_slots() {
        let (_cap, mut play, _src, mut sink) = rings(2, 8, 960, 1);
        let a = PeerId::new("a").unwrap();
        let b = PeerId::new("b").unwrap();
        let c = PeerId::new("c").unwrap();
        let chunk = |v: i16| PlayoutChunk {
            samples: vec![v; 480],
            channels: 1,
            media_ticks: 0,
            playout: Instant::now(),
            concealed: false,
        };
        sink.start(&a, 0);
        sink.deliver(&a, &chunk(1));
        sink.start(&b, 1);
        sink.deliver(&b, &chunk(2));
        sink.deliver(&a, &chunk(3));
        sink.end(0);
        // A chunk of a peer without a slot is counted, not played.
        sink.deliver(&a, &chunk(9));
        sink.start(&c, 0);
        sink.deliver(&c, &chunk(4));

        let mut out = [0i16; SLOT_SAMPLES];
        let got: Vec<(u8, i16, bool)> = std::iter::from_fn(|| {
            play.pop_into(&mut out)
                .map(|i| (i.peer.0, out[0], i.starts_stream))
        })
        .collect();
        assert_eq!(
            got,
            vec![(0, 1, true), (1, 2, true), (0, 3, false), (0, 4, true)]
        );
        assert_eq!(play.counters().snapshot().playout_no_index, 1);
    }

    #[test]
    fn playout_drops_and_counts_when_full() {
        let (_cap, mut play, _src, mut sink) = rings(2, 1, 960, 1);
        let a = PeerId::new("a").unwrap();
        sink.start(&a, 0);
        let chunk = PlayoutChunk {
            samples: vec![7; 480],
            channels: 1,
            media_ticks: 0,
            playout: Instant::now(),
            concealed: false,
        };
        sink.deliver(&a, &chunk);
        sink.deliver(&a, &chunk);
        let c = play.counters().snapshot();
        assert_eq!((c.playout_pushed, c.playout_full), (1, 1));
        assert_eq!(play.pop_with(|i, s| (i.samples, s[0])), Some((480, 7)));
        assert!(play.pop_with(|_, _| ()).is_none());
    }
}
