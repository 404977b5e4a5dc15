//! Adaptive audio jitter buffer
//!
//! Encoded frames go in as they arrive ([`AudioJitterBuffer::handle_frame`]); decoded PCM
//! comes out in fixed chunks on a playout clock that the buffer schedules itself
//! ([`poll_timeout`](AudioJitterBuffer::poll_timeout) /
//! [`handle_timeout`](AudioJitterBuffer::handle_timeout) /
//! [`poll_chunk`](AudioJitterBuffer::poll_chunk)). Call order per playout tick:
//! `handle_timeout(now)`, then `poll_chunk()` until `None`.
//!
//! How the delay is chosen:
//!
//! - Each frame's *transit* is its arrival time minus its media time (drift-corrected with the
//!   current clock-drift estimate). Playout plays media time `m` at local time `m + S`; the
//!   *set point* `S` is chosen from the transits of the last 20 s so that the expected
//!   concealment is small and cheap in delay (see `sync::delay`: a cost of delay plus
//!   priced concealment, a concealment budget, and a fast rise when several recent bursts
//!   exceed the choice). The *target delay* reported is `S` minus the mean transit: what a
//!   frame of typical delay waits. It is clamped to the configured range.
//! - The playout clock runs at the local rate. Each chunk consumes a little more or a little
//!   less media than it emits (acceleration / deceleration, cross-faded), steering the actual
//!   delay toward the set point without jumps, and compensating the estimated clock drift
//!   evenly rather than in bursts.
//! - A frame that is missing when it is due is waited for: playout conceals without advancing
//!   (the delay grows by exactly the wait), so a late frame still plays. It waits at most as
//!   long as the missing stretch up to the next frame that is there: by then skipping the
//!   stretch costs no more concealment than waiting did, so the stretch is skipped and counted
//!   lost. With nothing later received, playout keeps waiting.
//! - Frames that arrive after their position was played are dropped and counted late; their
//!   transit still counts toward the delay choice (late frames say the most about it).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::delay::{DelayEstimator, DelaySettings};
use crate::sync::time::local_secs;

/// Decodes (and conceals) one stream's audio for the jitter buffer
pub trait AudioDecode: Send {
    /// Interleaved channels in the output
    fn channels(&self) -> usize;
    /// Decodes one encoded frame to interleaved PCM; its length defines the frame's duration
    fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, String>;
    /// Synthesises `samples` per channel of concealment (packet loss concealment)
    fn conceal(&mut self, samples: usize) -> Vec<i16>;
    /// Recovers the `samples` per channel just before the frame `next` from the redundancy
    /// `next` carries (Opus in-band FEC); `None` when it carries none
    fn recover(&mut self, next: &[u8], samples: usize) -> Option<Vec<i16>> {
        let _ = (next, samples);
        None
    }
}

/// Configuration of an [`AudioJitterBuffer`]
#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// Media clock rate (samples per second per channel)
    pub rate: u32,
    /// Smallest target delay
    pub min_delay: Duration,
    /// Largest target delay
    pub max_delay: Duration,
    /// How long the transits behind the delay choice are remembered (a drop in jitter is
    /// forgotten completely after this long)
    pub window: Duration,
    /// How far back the buffer looks for a rise in jitter (two bursts later than the set point
    /// within this span raise it at once)
    pub fast_window: Duration,
    /// What one percent of concealed audio is worth in delay: the set point minimises delay
    /// plus the expected concealment priced at this rate (higher: more delay, less
    /// concealment)
    pub delay_per_concealed_percent: Duration,
    /// Playout chunk length
    pub chunk: Duration,
    /// Most media a chunk may skip to speed up, as a fraction of the chunk
    pub max_accelerate: f64,
    /// Most media a chunk may skip when playout runs more than [`Self::fast_accelerate_above`]
    /// over the set point (a queue on the path has drained and left a backlog: catch up in
    /// about a second, not over many)
    pub max_fast_accelerate: f64,
    /// How far above the set point playout must run for fast acceleration
    pub fast_accelerate_above: Duration,
    /// Most media a chunk may repeat to slow down, as a fraction of the chunk
    pub max_decelerate: f64,
    /// How far the delay may be off target before it is steered
    pub hysteresis: Duration,
    /// Frames held at most (older excess is dropped)
    pub max_frames: usize,
    /// With nothing received for this long, playout pauses until the next frame
    pub idle_pause: Duration,
    /// After waiting this long for a late frame (or restarting after a pause), when playout
    /// would run more than this above the set point, the frames that piled up are dropped
    /// until it is back near it (instead of accelerating for seconds)
    pub catch_up_after: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            rate: 48_000,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            window: Duration::from_secs(20),
            fast_window: Duration::from_secs(2),
            delay_per_concealed_percent: Duration::from_millis(140),
            chunk: Duration::from_millis(10),
            max_accelerate: 0.10,
            max_fast_accelerate: 0.5,
            fast_accelerate_above: Duration::from_millis(80),
            max_decelerate: 0.25,
            hysteresis: Duration::from_millis(2),
            max_frames: 200,
            idle_pause: Duration::from_millis(600),
            catch_up_after: Duration::from_millis(100),
        }
    }
}

/// Counters of one audio jitter buffer (W3C `RTCInboundRtpStreamStats` names where they exist)
///
/// As in W3C webrtc-stats (and libwebrtc's NetEq), a sample *exits* the jitter buffer when
/// its frame is decoded, at the start of the playout chunk that first needs it:
/// `jitter_buffer_delay / jitter_buffer_emitted_count` is the mean time from a frame's arrival
/// to its decoding. `playout_delay / total_samples_received` runs to each sample's playout
/// instead (later by the time decoded audio waits for its chunk, about half a frame).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    /// Sum over decoded samples of the time from their frame's arrival to its decoding, in
    /// seconds (W3C `jitterBufferDelay`)
    pub jitter_buffer_delay: f64,
    /// Sum over decoded samples of the target delay when they were decoded, in seconds (W3C
    /// `jitterBufferTargetDelay`)
    pub jitter_buffer_target_delay: f64,
    /// Samples (per channel) decoded (W3C `jitterBufferEmittedCount`)
    pub jitter_buffer_emitted_count: u64,
    /// Sum over played samples (not concealment) of the time from their frame's arrival to
    /// the start of the chunk they play in, in seconds
    pub playout_delay: f64,
    /// Samples (per channel) played out, concealment included (W3C `totalSamplesReceived`)
    pub total_samples_received: u64,
    /// Samples (per channel) synthesised by concealment (W3C `concealedSamples`)
    pub concealed_samples: u64,
    /// Samples (per channel) inserted to slow down
    pub inserted_samples_for_deceleration: u64,
    /// Samples (per channel) removed to speed up
    pub removed_samples_for_acceleration: u64,
    /// Frames received
    pub frames_received: u64,
    /// Frames decoded
    pub frames_decoded: u64,
    /// Frames that arrived after their time had been played
    pub frames_late: u64,
    /// Frames never received by the time they were due (concealed instead)
    pub frames_lost: u64,
    /// Frames dropped because the buffer was full or they were duplicates
    pub frames_discarded: u64,
    /// Frames that failed to decode
    pub decode_errors: u64,
    /// Frames missing when due that were decoded from the redundancy of the frame after them
    /// (Opus in-band FEC) instead of being concealed
    pub frames_recovered: u64,
    /// Current target delay in seconds
    pub target_delay: f64,
}

impl JitterStats {
    /// Adds an earlier buffer's counters (the same peer over an earlier connection); the
    /// target delay stays this buffer's unless it has received nothing yet
    pub fn accumulate(&mut self, earlier: &JitterStats) {
        if self.frames_received == 0 {
            self.target_delay = earlier.target_delay;
        }
        self.jitter_buffer_delay += earlier.jitter_buffer_delay;
        self.jitter_buffer_target_delay += earlier.jitter_buffer_target_delay;
        self.jitter_buffer_emitted_count += earlier.jitter_buffer_emitted_count;
        self.playout_delay += earlier.playout_delay;
        self.total_samples_received += earlier.total_samples_received;
        self.concealed_samples += earlier.concealed_samples;
        self.inserted_samples_for_deceleration += earlier.inserted_samples_for_deceleration;
        self.removed_samples_for_acceleration += earlier.removed_samples_for_acceleration;
        self.frames_received += earlier.frames_received;
        self.frames_decoded += earlier.frames_decoded;
        self.frames_late += earlier.frames_late;
        self.frames_lost += earlier.frames_lost;
        self.frames_discarded += earlier.frames_discarded;
        self.decode_errors += earlier.decode_errors;
        self.frames_recovered += earlier.frames_recovered;
    }
}

impl JitterStats {
    /// Mean time from arrival to decoding per decoded sample (W3C `jitterBufferDelay /
    /// jitterBufferEmittedCount`)
    pub fn mean_delay(&self) -> Option<Duration> {
        (self.jitter_buffer_emitted_count > 0).then(|| {
            Duration::from_secs_f64(
                self.jitter_buffer_delay / self.jitter_buffer_emitted_count as f64,
            )
        })
    }

    /// Mean time from arrival to playout per played sample, counting concealment as zero
    /// (`playout_delay / total_samples_received`)
    pub fn mean_playout_delay(&self) -> Option<Duration> {
        (self.total_samples_received > 0).then(|| {
            Duration::from_secs_f64(self.playout_delay / self.total_samples_received as f64)
        })
    }

    /// Share of the played audio that was concealment (W3C `concealedSamples /
    /// totalSamplesReceived`)
    pub fn concealed_fraction(&self) -> Option<f64> {
        (self.total_samples_received > 0)
            .then(|| self.concealed_samples as f64 / self.total_samples_received as f64)
    }
}

/// One chunk of decoded audio, ready to play now
#[derive(Debug, Clone, PartialEq)]
pub struct PlayoutChunk {
    /// Interleaved PCM
    pub samples: Vec<i16>,
    /// Channels interleaved in `samples`
    pub channels: usize,
    /// Media time (ticks) of the first sample
    pub media_ticks: i64,
    /// The local time this chunk plays out
    pub playout: Instant,
    /// Whether any of it was concealment
    pub concealed: bool,
}

#[derive(Debug)]
struct Frame {
    payload: Arc<[u8]>,
    arrival: Instant,
}

/// Decoded PCM waiting to be played, in runs from one frame (or one stretch of concealment)
#[derive(Debug, Default)]
struct SyncBuffer {
    samples: VecDeque<i16>,
    runs: VecDeque<Run>,
}

/// A stretch of the sync buffer
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Samples per channel
    len: usize,
    /// Arrival of the frame it was decoded from (`None`: concealment)
    arrival: Option<Instant>,
    /// Media tick of its first sample (for concealment while waiting: where playout waits)
    media: i64,
    /// Whether playing it moves through the media (false while waiting for a late frame)
    advances: bool,
}

#[derive(Debug)]
struct Playout {
    /// Media tick of the next sample to decode into the sync buffer
    decode_pos: i64,
    /// Local time of the next chunk
    next_tick: Instant,
    /// Fractional media samples owed to drift compensation
    drift_debt: f64,
    /// No chunk played yet since playout (re)started
    fresh: bool,
}

/// An adaptive jitter buffer for one audio stream
pub struct AudioJitterBuffer {
    config: JitterConfig,
    decoder: Box<dyn AudioDecode>,
    channels: usize,
    frames: BTreeMap<i64, Frame>,
    origin: Option<(Instant, i64)>,
    /// Chooses the set point from recent transits
    estimator: DelayEstimator,
    /// Target buffer delay (what a frame of typical transit waits)
    target: Duration,
    /// The transit (seconds) at which playout should run: media time `m` plays at `m + setpoint`
    setpoint: f64,
    /// Extra delay asked for by audio/video sync (seconds)
    sync_delay: f64,
    drift_ppm: f64,
    playout: Option<Playout>,
    sync: SyncBuffer,
    /// The media position playout is waiting at (a missing frame) and how many samples per
    /// channel of concealment it has waited there
    waiting: Option<(i64, usize)>,
    /// Samples per channel of the last decoded frame
    frame_samples: usize,
    last_arrival: Option<Instant>,
    chunks: VecDeque<PlayoutChunk>,
    stats: JitterStats,
}

impl AudioJitterBuffer {
    /// Creates an empty buffer that decodes with `decoder`
    pub fn new(config: JitterConfig, decoder: Box<dyn AudioDecode>) -> Self {
        let channels = decoder.channels().max(1);
        let target = config
            .min_delay
            .max(Duration::from_millis(40))
            .min(config.max_delay);
        let estimator = DelayEstimator::new(DelaySettings {
            window: config.window.as_secs_f64(),
            fast_window: config.fast_window.as_secs_f64(),
            price: config.delay_per_concealed_percent.as_secs_f64() * 100.0,
        });
        Self {
            config,
            decoder,
            channels,
            frames: BTreeMap::new(),
            origin: None,
            estimator,
            target,
            setpoint: target.as_secs_f64(),
            sync_delay: 0.0,
            drift_ppm: 0.0,
            playout: None,
            sync: SyncBuffer::default(),
            waiting: None,
            frame_samples: (config.rate / 50) as usize,
            last_arrival: None,
            chunks: VecDeque::new(),
            stats: JitterStats::default(),
        }
    }

    /// Counters so far
    pub fn stats(&self) -> JitterStats {
        let mut s = self.stats;
        s.target_delay = self.target.as_secs_f64();
        s
    }

    /// The current target delay
    pub fn target_delay(&self) -> Duration {
        self.target
    }

    /// Tells the buffer the sender's clock rate relative to ours (from the drift estimator)
    pub fn set_drift_ppm(&mut self, ppm: f64) {
        if ppm.is_finite() {
            self.drift_ppm = ppm.clamp(-5000.0, 5000.0);
            self.estimator.set_scale(1.0 - self.drift_ppm * 1e-6);
            self.update_target();
        }
    }

    /// The path had a queue that drained at `at` (the receiver's queue guard saw it): the
    /// delay choice forgets what arrived before half a second after the drain
    pub fn path_queue_drained(&mut self, at: Instant) {
        if let Some((origin_local, _)) = self.origin {
            self.estimator.queue_drained(local_secs(at, origin_local));
        }
    }

    /// Adds delay on top of the target (lip-sync waiting for slower video)
    pub fn set_sync_delay(&mut self, extra: Duration) {
        self.sync_delay = extra.as_secs_f64().min(1.0);
    }

    /// Adds a received frame: `media_ticks` is its unwrapped media time
    pub fn handle_frame(&mut self, arrival: Instant, media_ticks: i64, payload: Arc<[u8]>) {
        self.stats.frames_received += 1;
        self.last_arrival = Some(arrival);
        let (origin_local, origin_media) = *self.origin.get_or_insert((arrival, media_ticks));

        // Delay statistics, for every frame including late ones (they say the most).
        let a = local_secs(arrival, origin_local);
        let m = (media_ticks - origin_media) as f64 / self.config.rate as f64;
        self.estimator.add(a, m);
        self.update_target();
        tracing::trace!(
            transit_ms = (a - m * self.estimator.scale()) * 1e3,
            set_point_ms = self.setpoint * 1e3,
            sync_delay_ms = self.sync_delay * 1e3,
            "audio frame"
        );

        match &self.playout {
            Some(p) if media_ticks < p.decode_pos => {
                self.stats.frames_late += 1;
                return;
            }
            None => {
                // Playout starts one target delay after the first frame (at least the
                // initial 40 ms while nothing is known about the path).
                let start = self.target.max(
                    Duration::from_millis(40)
                        .max(self.config.min_delay)
                        .min(self.config.max_delay),
                );
                self.playout = Some(Playout {
                    decode_pos: media_ticks,
                    next_tick: arrival + start,
                    drift_debt: 0.0,
                    fresh: true,
                });
                self.waiting = None;
            }
            _ => {}
        }
        if self.frames.contains_key(&media_ticks) {
            self.stats.frames_discarded += 1;
            return;
        }
        self.frames.insert(media_ticks, Frame { payload, arrival });
        while self.frames.len() > self.config.max_frames {
            self.frames.pop_first();
            self.stats.frames_discarded += 1;
        }
    }

    /// Takes the estimator's set point: the target wait is the set point above the mean
    /// transit, clamped to the configured range (the set point moves with the clamp)
    fn update_target(&mut self) {
        let (Some(point), Some(mean), Some(fastest)) = (
            self.estimator.set_point(),
            self.estimator.mean(),
            self.estimator.fastest(),
        ) else {
            return;
        };
        // A frame must be there when the chunk holding its first sample starts, up to one
        // chunk before that sample plays; and a wait for a late frame conceals whole chunks.
        // One chunk of margin makes the estimator's expected concealment the real one.
        let point = point + self.config.chunk.as_secs_f64();
        // At least `min_delay` above the fastest frame (a few very slow frames must not lift
        // the floor), at most `max_delay` above the mean.
        let lo = fastest + self.config.min_delay.as_secs_f64();
        let hi = (mean + self.config.max_delay.as_secs_f64()).max(lo);
        self.setpoint = point.clamp(lo, hi);
        self.target = Duration::from_secs_f64((self.setpoint - mean).max(0.0));
    }

    /// When the next chunk is due (None while nothing has arrived or playout is paused)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.playout.as_ref().map(|p| p.next_tick)
    }

    /// Produces every chunk due at `now`; collect them with [`poll_chunk`](Self::poll_chunk)
    pub fn handle_timeout(&mut self, now: Instant) {
        // Called late (a stalled caller, a suspended machine): chunks for the missed time
        // could not be played anyway. Past half a second behind, playout restarts at the
        // last tick before `now`, from the newest part of what is buffered, instead of
        // producing the backlog (which would also wake the caller again at once).
        let chunk = self.config.chunk;
        if let Some(p) = self.playout.as_mut() {
            let behind = now.saturating_duration_since(p.next_tick);
            if !chunk.is_zero() && behind > chunk * 50 {
                // Whole chunks, so the tick grid keeps its phase; never past `now`.
                let missed = behind.as_nanos() / chunk.as_nanos() * chunk.as_nanos();
                p.next_tick += Duration::from_nanos(u64::try_from(missed).unwrap_or(u64::MAX));
                p.fresh = true;
            }
        }
        // Bounded: at most a hundred chunks per call.
        for _ in 0..100 {
            let Some(p) = &self.playout else {
                return;
            };
            if p.next_tick > now {
                return;
            }
            if self
                .last_arrival
                .is_some_and(|a| now >= a + self.config.idle_pause)
                && self.frames.is_empty()
            {
                // The sender went quiet: pause until the next frame, then start afresh.
                self.playout = None;
                self.sync = SyncBuffer::default();
                return;
            }
            let tick = p.next_tick;
            self.emit_chunk(tick);
        }
    }

    /// The next chunk produced by [`handle_timeout`](Self::handle_timeout)
    pub fn poll_chunk(&mut self) -> Option<PlayoutChunk> {
        self.chunks.pop_front()
    }

    /// The transit at which the sample at `media` plays if it plays at `now`
    fn current_delay(&self, now: Instant, media: i64) -> Option<f64> {
        let (origin_local, origin_media) = self.origin?;
        let m = (media - origin_media) as f64 / self.config.rate as f64;
        Some(local_secs(now, origin_local) - m * self.estimator.scale())
    }

    fn emit_chunk(&mut self, tick: Instant) {
        let rate = self.config.rate as f64;
        let out = (self.config.chunk.as_secs_f64() * rate).round() as usize;
        let ch = self.channels;
        let buffered = (self.sync.samples.len() / ch) as i64;
        let p = self
            .playout
            .as_mut()
            .expect("checked by the caller; panic means bug");
        let play_pos = p.decode_pos - buffered;

        // Drift: a fast sender produces more media per local second; consume it evenly.
        p.drift_debt += out as f64 * self.drift_ppm * 1e-6;
        let drift_adj = p.drift_debt.trunc();
        p.drift_debt -= drift_adj;

        // Steering toward the target delay (which includes one chunk of decode lead). The
        // set point sits one hysteresis above the target so that the dead band never dips
        // below it.
        let mut adj = drift_adj;
        let mut accelerate = self.config.max_accelerate;
        if let Some(delay) = self.current_delay(tick, play_pos) {
            let hyst = self.config.hysteresis.as_secs_f64();
            let err = delay - (self.setpoint + self.sync_delay + hyst);
            if err.abs() > hyst {
                // Close a quarter of the error per chunk, within the rate limits.
                adj += (err * rate / 4.0).round();
            }
            if err > self.config.fast_accelerate_above.as_secs_f64() {
                accelerate = accelerate.max(self.config.max_fast_accelerate);
            }
        }
        let max_acc = (out as f64 * accelerate).floor();
        let max_dec = (out as f64 * self.config.max_decelerate).floor();
        let adj = adj.clamp(-max_dec, max_acc) as i64;
        let consume = (out as i64 + adj).max(1) as usize;

        if std::mem::take(
            &mut self
                .playout
                .as_mut()
                .expect("playing; panic means bug")
                .fresh,
        ) {
            // Playout (re)starts at the first frame that arrived; after an outage on a FIFO
            // path, a whole backlog arrives at once behind it: start from the newest part.
            self.catch_up(tick);
        }
        let concealed_before = self.stats.concealed_samples;
        let mut concealed = self.fill(consume, tick);
        if self.stats.concealed_samples > concealed_before {
            tracing::trace!(
                concealed_ms =
                    (self.stats.concealed_samples - concealed_before) as f64 * 1e3 / rate,
                playing_ms = self.current_delay(tick, play_pos).unwrap_or(f64::NAN) * 1e3,
                set_point_ms = self.setpoint * 1e3,
                "audio concealed"
            );
        }
        // The media time of the chunk's first sample (a gap skipped at the start of the
        // chunk moves it past `play_pos`).
        let media_ticks = self.sync.runs.front().map_or(play_pos, |r| r.media);
        // `fill` buffered at least `consume` samples per channel. Copied a slice at a time,
        // not sample by sample through `drain`.
        let n = consume * ch;
        let mut take: Vec<i16> = Vec::with_capacity(n);
        let (front, back) = self.sync.samples.as_slices();
        let from_front = n.min(front.len());
        take.extend_from_slice(&front[..from_front]);
        take.extend_from_slice(&back[..n - from_front]);
        self.sync.samples.drain(..n);
        // Attribute delay to the frames the consumed samples came from.
        let mut left = consume;
        let mut delay_sum = 0.0;
        while left > 0 {
            let Some(run) = self.sync.runs.front_mut() else {
                break;
            };
            let n = run.len.min(left);
            match run.arrival {
                Some(arrival) => delay_sum += n as f64 * local_secs(tick, arrival).max(0.0),
                None => concealed = true,
            }
            run.len -= n;
            if run.advances {
                run.media += n as i64;
            }
            left -= n;
            if run.len == 0 {
                self.sync.runs.pop_front();
            }
        }
        let samples = if consume > out {
            self.stats.removed_samples_for_acceleration += (consume - out) as u64;
            shorten(&take, ch, out)
        } else if consume < out {
            self.stats.inserted_samples_for_deceleration += (out - consume) as u64;
            lengthen(&take, ch, out)
        } else {
            std::mem::take(&mut take)
        };
        self.stats.playout_delay += delay_sum * out as f64 / consume as f64;
        self.stats.total_samples_received += out as u64;

        let p = self
            .playout
            .as_mut()
            .expect("still playing; panic means bug");
        p.next_tick = tick + self.config.chunk;
        self.chunks.push_back(PlayoutChunk {
            samples,
            channels: ch,
            media_ticks,
            playout: tick,
            concealed,
        });
    }

    /// Decodes (or conceals) until at least `need` samples per channel are buffered for the
    /// chunk that plays at `tick`; returns whether it concealed
    fn fill(&mut self, need: usize, tick: Instant) -> bool {
        let ch = self.channels;
        let mut concealed = false;
        let rate = self.config.rate as i64;
        while self.sync.samples.len() / ch < need {
            let pos = self
                .playout
                .as_ref()
                .expect("playing; panic means bug")
                .decode_pos;
            // Drop anything that now lies entirely before the decode position.
            while let Some((&k, _)) = self.frames.first_key_value() {
                if k < pos {
                    self.frames.pop_first();
                    self.stats.frames_late += 1;
                } else {
                    break;
                }
            }
            match self.frames.first_key_value().map(|(&k, _)| k) {
                Some(k) if k == pos => {
                    let long_wait = self.catch_up_samples();
                    if self
                        .waiting
                        .take()
                        .is_some_and(|w| w.0 == pos && w.1 >= long_wait)
                        && self.catch_up(tick)
                    {
                        // Stale frames were dropped: start again from the one now first.
                        continue;
                    }
                    let frame = self.frames.pop_first().expect("peeked; panic means bug").1;
                    match self.decoder.decode(&frame.payload) {
                        Ok(pcm) if !pcm.is_empty() => {
                            self.stats.frames_decoded += 1;
                            let n = pcm.len() / ch;
                            // The frame exits the jitter buffer now (W3C).
                            self.stats.jitter_buffer_delay +=
                                n as f64 * local_secs(tick, frame.arrival).max(0.0);
                            self.stats.jitter_buffer_target_delay +=
                                n as f64 * self.target.as_secs_f64();
                            self.stats.jitter_buffer_emitted_count += n as u64;
                            self.sync.samples.extend(pcm);
                            self.sync.runs.push_back(Run {
                                len: n,
                                arrival: Some(frame.arrival),
                                media: pos,
                                advances: true,
                            });
                            self.playout
                                .as_mut()
                                .expect("playing; panic means bug")
                                .decode_pos += n as i64;
                            self.frame_samples = n;
                        }
                        _ => {
                            self.stats.decode_errors += 1;
                            // Conceal a typical frame's worth in place of the broken one.
                            let n = (rate / 50) as usize;
                            self.conceal(n, true);
                            concealed = true;
                        }
                    }
                }
                Some(next) if self.recover(pos, next, tick) => {
                    // A missing frame, decoded from the redundancy of the one after it.
                }
                Some(next) => {
                    // A gap before a later frame. Wait for it (conceal without advancing) as
                    // long as waiting costs less concealment than skipping the gap would:
                    // then a frame that is merely late still plays. After that, skip the gap:
                    // the missing media is lost.
                    let gap = (next - pos) as usize;
                    let waited = self.waiting.filter(|w| w.0 == pos).map_or(0, |w| w.1);
                    let limit = gap.min(self.max_wait_samples());
                    if waited < limit {
                        let n = (need - self.sync.samples.len() / ch).min(limit - waited);
                        self.conceal(n, false);
                        self.waiting = Some((pos, waited + n));
                        concealed = true;
                    } else {
                        self.stats.frames_lost += gap.div_ceil(self.frame_samples.max(1)) as u64;
                        self.playout
                            .as_mut()
                            .expect("playing; panic means bug")
                            .decode_pos = next;
                        self.waiting = None;
                    }
                }
                None => {
                    // Nothing later has arrived: wait (expand without advancing).
                    let missing = need - self.sync.samples.len() / ch;
                    let waited = self.waiting.filter(|w| w.0 == pos).map_or(0, |w| w.1);
                    self.conceal(missing, false);
                    self.waiting = Some((pos, waited + missing));
                    concealed = true;
                }
            }
        }
        concealed
    }

    /// Decodes the missing stretch `pos..next` from the redundancy of the frame at `next`, if
    /// the stretch is one frame and that frame carries it (Opus in-band FEC): a late frame's
    /// slot is then filled at once, without concealment or waiting. Returns whether it did.
    fn recover(&mut self, pos: i64, next: i64, tick: Instant) -> bool {
        let gap = (next - pos) as usize;
        if gap != self.frame_samples {
            return false;
        }
        let Some(frame) = self.frames.get(&next) else {
            return false;
        };
        let (payload, arrival) = (frame.payload.clone(), frame.arrival);
        let ch = self.channels;
        let Some(mut pcm) = self.decoder.recover(&payload, gap) else {
            return false;
        };
        pcm.resize(gap * ch, 0);
        self.stats.frames_recovered += 1;
        self.stats.jitter_buffer_delay += gap as f64 * local_secs(tick, arrival).max(0.0);
        self.stats.jitter_buffer_target_delay += gap as f64 * self.target.as_secs_f64();
        self.stats.jitter_buffer_emitted_count += gap as u64;
        self.sync.samples.extend(pcm);
        self.sync.runs.push_back(Run {
            len: gap,
            arrival: Some(arrival),
            media: pos,
            advances: true,
        });
        self.playout
            .as_mut()
            .expect("playing; panic means bug")
            .decode_pos = next;
        self.waiting = None;
        true
    }

    /// The longest wait for a missing frame before the gap is skipped (samples per channel):
    /// the largest target delay, so that a long gap in the media is not played as silence
    fn max_wait_samples(&self) -> usize {
        (self.config.max_delay.as_secs_f64() * self.config.rate as f64) as usize
    }

    /// After a long wait, the frames that piled up behind the late one would hold playout
    /// far above the set point for seconds (acceleration removes a tenth of real time): drop
    /// the oldest until playing the next one puts playout back near the set point. Returns
    /// whether any was dropped.
    fn catch_up(&mut self, tick: Instant) -> bool {
        let buffered = (self.sync.samples.len() / self.channels) as i64;
        let aim = self.setpoint + self.sync_delay + 2.0 * self.config.hysteresis.as_secs_f64();
        if self
            .frames
            .first_key_value()
            .and_then(|(&k, _)| self.current_delay(tick, k - buffered))
            .is_none_or(|d| d < aim + self.config.catch_up_after.as_secs_f64())
        {
            return false;
        }
        let mut dropped = false;
        while self.frames.len() > 1 {
            let Some((&k, _)) = self.frames.first_key_value() else {
                break;
            };
            match self.current_delay(tick, k - buffered) {
                Some(d) if d > aim => {}
                _ => break,
            }
            self.frames.pop_first();
            self.stats.frames_discarded += 1;
            dropped = true;
            let next = *self
                .frames
                .first_key_value()
                .expect("more than one; panic means bug")
                .0;
            self.playout
                .as_mut()
                .expect("playing; panic means bug")
                .decode_pos = next;
        }
        dropped
    }

    /// How long a wait for a late frame must have been before stale frames are dropped
    fn catch_up_samples(&self) -> usize {
        (self.config.catch_up_after.as_secs_f64() * self.config.rate as f64) as usize
    }

    fn conceal(&mut self, n: usize, advance: bool) {
        let pcm = self.decoder.conceal(n);
        let ch = self.channels;
        let mut pcm = pcm;
        pcm.resize(n * ch, 0);
        self.sync.samples.extend(pcm);
        let media = self.playout.as_ref().map_or(0, |p| p.decode_pos);
        self.sync.runs.push_back(Run {
            len: n,
            arrival: None,
            media,
            advances: advance,
        });
        self.stats.concealed_samples += n as u64;
        if advance {
            if let Some(p) = self.playout.as_mut() {
                p.decode_pos += n as i64;
            }
        }
    }
}

/// Shortens interleaved PCM to `out` samples per channel by cutting a segment from the
/// middle with a linear cross-fade across the cut
fn shorten(pcm: &[i16], ch: usize, out: usize) -> Vec<i16> {
    let n = pcm.len() / ch;
    let cut = n - out;
    let fade = cut.min(out / 2).max(1);
    let start = (out - fade) / 2;
    let mut res = Vec::with_capacity(out * ch);
    res.extend_from_slice(&pcm[..start * ch]);
    for i in 0..fade {
        let w = (i as f32 + 0.5) / fade as f32;
        for c in 0..ch {
            let a = pcm[(start + i) * ch + c] as f32;
            let b = pcm[(start + cut + i) * ch + c] as f32;
            res.push((a * (1.0 - w) + b * w) as i16);
        }
    }
    res.extend_from_slice(&pcm[(start + cut + fade) * ch..]);
    debug_assert_eq!(res.len(), out * ch);
    res
}

/// Lengthens interleaved PCM to `out` samples per channel by repeating a segment from the
/// middle with a linear cross-fade into the repeat
fn lengthen(pcm: &[i16], ch: usize, out: usize) -> Vec<i16> {
    let n = pcm.len() / ch;
    if n == 0 {
        return vec![0; out * ch];
    }
    let mut cur: Vec<i16> = pcm.to_vec();
    // Repeat segments of at most half the input until long enough.
    while cur.len() / ch < out {
        let len = cur.len() / ch;
        let extra = (out - len).min(len / 2).max(1).min(len);
        let start = (len - extra) / 2;
        let mut res = Vec::with_capacity((len + extra) * ch);
        res.extend_from_slice(&cur[..(start + extra) * ch]);
        // The repeat fades from the segment's end back into its start.
        for i in 0..extra {
            let w = (i as f32 + 0.5) / extra as f32;
            for c in 0..ch {
                let a = cur[(start + extra - 1).min(len - 1) * ch + c] as f32;
                let b = cur[(start + i) * ch + c] as f32;
                res.push((a * (1.0 - w) + b * w) as i16);
            }
        }
        res.extend_from_slice(&cur[(start + extra) * ch..]);
        cur = res;
    }
    cur.truncate(out * ch);
    cur
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // reason: tests anchor virtual time at a real instant
mod tests {
    use super::*;

    /// A decoder whose "payload" is the frame's first media tick; it writes a ramp so that
    /// continuity can be checked, and counts concealment as zeros
    struct Ramp;

    impl AudioDecode for Ramp {
        fn channels(&self) -> usize {
            1
        }
        fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, String> {
            let start = i64::from_le_bytes(payload.try_into().map_err(|_| "bad")?);
            Ok((0..960)
                .map(|i| ((start + i) % 10_000) as i16 + 1)
                .collect())
        }
        fn conceal(&mut self, samples: usize) -> Vec<i16> {
            vec![0; samples]
        }
    }

    fn payload(ticks: i64) -> Arc<[u8]> {
        Arc::from(ticks.to_le_bytes().to_vec())
    }

    /// Sends 20 ms frames for `secs`, each arriving after `20 ms + extra()`; returns stats
    /// and the number of chunks emitted
    fn run(secs: f64, mut extra: impl FnMut(usize) -> f64) -> (AudioJitterBuffer, usize) {
        let base = Instant::now();
        let mut jb = AudioJitterBuffer::new(JitterConfig::default(), Box::new(Ramp));
        let n = (secs * 50.0) as usize;
        let mut arrivals: Vec<(Instant, i64)> = (0..n)
            .map(|i| {
                let t = i as f64 * 0.02 + 0.02 + extra(i).max(0.0);
                (base + Duration::from_secs_f64(t), i as i64 * 960)
            })
            .collect();
        arrivals.sort_by_key(|a| a.0);
        let mut chunks = 0;
        let mut next = 0;
        let end = base + Duration::from_secs_f64(secs + 1.0);
        loop {
            let t_arr = arrivals.get(next).map(|a| a.0);
            let t_tick = jb.poll_timeout();
            let t = match (t_arr, t_tick) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if t > end {
                break;
            }
            if Some(t) == t_arr {
                let (a, m) = arrivals[next];
                jb.handle_frame(a, m, payload(m));
                next += 1;
            } else {
                jb.handle_timeout(t);
                while jb.poll_chunk().is_some() {
                    chunks += 1;
                }
            }
        }
        (jb, chunks)
    }

    #[test]
    fn steady_stream_plays_at_min_delay_without_loss() {
        let (jb, chunks) = run(10.0, |_| 0.0);
        let s = jb.stats();
        assert_eq!(s.frames_late, 0);
        assert_eq!(s.frames_lost, 0);
        assert!(chunks >= 990, "{chunks}");
        let d = s.mean_delay().unwrap();
        // Each 20 ms frame waits on average half a frame plus the target.
        assert!(d < Duration::from_millis(45), "{d:?} {s:?}");
        assert_eq!(jb.target_delay(), Duration::from_millis(20));
    }

    #[test]
    fn a_caller_that_stalls_gets_no_backlog_and_a_timeout_after_now() {
        let base = Instant::now();
        let mut jb = AudioJitterBuffer::new(JitterConfig::default(), Box::new(Ramp));
        let at = |ms: u64| base + Duration::from_millis(ms);
        for i in 0..50i64 {
            jb.handle_frame(at(20 + i as u64 * 20), i * 960, payload(i * 960));
            jb.handle_timeout(at(20 + i as u64 * 20));
            while jb.poll_chunk().is_some() {}
        }
        // The caller comes back 10 s late, frames still arriving: one chunk, not a thousand.
        let late = at(1_000 + 10_000);
        jb.handle_frame(late, 50 * 960, payload(50 * 960));
        jb.handle_timeout(late);
        let mut n = 0;
        while let Some(c) = jb.poll_chunk() {
            assert!(c.playout <= late);
            n += 1;
        }
        assert!(n <= 2, "{n} chunks after a stall");
        let next = jb.poll_timeout().expect("still playing");
        assert!(next > late, "next timeout {next:?} not after {late:?}");
    }

    #[test]
    fn gaussian_jitter_keeps_late_loss_low() {
        let mut rng = fastrand::Rng::with_seed(9);
        let (jb, _) = run(60.0, |_| 0.05 + 0.010 * crate::sync::gaussian(&mut rng));
        let s = jb.stats();
        let late = s.frames_late as f64 / s.frames_received as f64;
        assert!(late <= 0.005, "late {late} {s:?}");
        let d = s.mean_delay().unwrap();
        assert!(d <= Duration::from_millis(60), "{d:?}");
    }

    #[test]
    fn delay_and_late_loss_meet_the_budget_for_each_sigma() {
        // The budget: mean buffer delay at most 60 / 100 / 175 ms for
        // sigma = 10 / 20 / 40 ms with at most 0.5% late loss.
        for (sigma, budget_ms) in [(0.010, 60), (0.020, 100), (0.040, 175)] {
            for seed in 1..=3 {
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut extra = Vec::new();
                let (jb, _) = run(60.0, |_| {
                    let x = 0.2 + sigma * crate::sync::gaussian(&mut rng);
                    extra.push(x.max(0.0));
                    x
                });
                let s = jb.stats();
                let late = s.frames_late as f64 / s.frames_received as f64;
                let d = s.mean_delay().unwrap();
                // The oracle: the one fixed playout delay that loses the same fraction late,
                // and the mean time a frame would wait in it (plus half a 20 ms frame, as
                // ours counts per sample).
                extra.sort_by(f64::total_cmp);
                let k = ((1.0 - late) * (extra.len() - 1) as f64).round() as usize;
                let mean = extra.iter().sum::<f64>() / extra.len() as f64;
                eprintln!(
                    "sigma {sigma} seed {seed}: late {late:.4} mean buffer delay {:.1} ms, \
                     best fixed delay at that loss waits {:.1} ms",
                    d.as_secs_f64() * 1000.0,
                    (extra[k] - mean + 0.010) * 1000.0
                );
                assert!(late <= 0.005, "sigma {sigma}: late {late} {s:?}");
                assert!(
                    d <= Duration::from_millis(budget_ms),
                    "sigma {sigma}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_step_up_recovers_within_two_seconds_and_step_down_within_thirty() {
        let mut rng = fastrand::Rng::with_seed(21);
        // 30 s at sigma 5 ms, 40 s at 40 ms, 60 s at 5 ms again.
        let sigma = |i: usize| {
            if (1500..3500).contains(&i) {
                0.040
            } else {
                0.005
            }
        };
        let base = Instant::now();
        let mut jb = AudioJitterBuffer::new(JitterConfig::default(), Box::new(Ramp));
        let n = 6500;
        let mut arrivals: Vec<(Instant, i64)> = (0..n)
            .map(|i| {
                let t = i as f64 * 0.02 + 0.2 + sigma(i) * crate::sync::gaussian(&mut rng);
                (base + Duration::from_secs_f64(t), i as i64 * 960)
            })
            .collect();
        arrivals.sort_by_key(|a| a.0);
        let mut late_at: Vec<f64> = Vec::new();
        let mut delay_at: Vec<(f64, f64)> = Vec::new();
        let mut next = 0;
        let mut last_late = 0;
        loop {
            let t_arr = arrivals.get(next).map(|a| a.0);
            let Some(t_tick) = jb.poll_timeout() else {
                let (a, m) = arrivals[next];
                jb.handle_frame(a, m, payload(m));
                next += 1;
                continue;
            };
            let t = t_arr.map_or(t_tick, |a| a.min(t_tick));
            if Some(t) == t_arr {
                let (a, m) = arrivals[next];
                jb.handle_frame(a, m, payload(m));
                next += 1;
                let late = jb.stats().frames_late;
                if late > last_late {
                    late_at.push(local_secs(a, base));
                    last_late = late;
                }
                if next == arrivals.len() {
                    break;
                }
            } else {
                jb.handle_timeout(t);
                while let Some(c) = jb.poll_chunk() {
                    let media = c.media_ticks as f64 / 48_000.0;
                    delay_at.push((
                        local_secs(c.playout, base),
                        local_secs(c.playout, base) - media,
                    ));
                }
            }
        }
        // Step up at 30 s: from 32 s on, late loss under 1% (counted over 10 s windows,
        // 500 frames each; a single second holds only 50 frames).
        for start in [32, 42, 52, 60] {
            let late = late_at
                .iter()
                .filter(|&&t| t >= start as f64 && t < start as f64 + 10.0)
                .count();
            assert!(late <= 5, "from {start} s: {late} of 500 late");
        }
        // Step down at 70 s: by 100 s the delay is within 20 ms of what sigma 5 ms needs.
        let need: f64 = delay_at
            .iter()
            .filter(|(t, _)| (20.0..30.0).contains(t))
            .map(|d| d.1)
            .sum::<f64>()
            / delay_at
                .iter()
                .filter(|(t, _)| (20.0..30.0).contains(t))
                .count() as f64;
        let after: Vec<f64> = delay_at
            .iter()
            .filter(|(t, _)| (100.0..110.0).contains(t))
            .map(|d| d.1)
            .collect();
        let after = after.iter().sum::<f64>() / after.len() as f64;
        assert!((after - need).abs() <= 0.020, "before {need} after {after}");
    }

    #[test]
    fn reordered_frames_play_in_order() {
        // Every 5th frame arrives 30 ms late (after its successor).
        let (jb, _) = run(5.0, |i| if i % 5 == 0 { 0.030 } else { 0.0 });
        let s = jb.stats();
        assert_eq!(s.frames_lost, 0, "{s:?}");
        assert!(
            s.frames_late as f64 <= 0.05 * s.frames_received as f64,
            "{s:?}"
        );
    }

    #[test]
    fn missing_frames_are_concealed() {
        let base = Instant::now();
        let mut jb = AudioJitterBuffer::new(JitterConfig::default(), Box::new(Ramp));
        let mut concealed_chunks = 0;
        for i in 0..100i64 {
            let t = base + Duration::from_millis(20 * i as u64);
            if i % 10 != 5 {
                jb.handle_frame(t, i * 960, payload(i * 960));
            }
            jb.handle_timeout(t);
            while let Some(c) = jb.poll_chunk() {
                assert_eq!(c.samples.len(), 480);
                concealed_chunks += c.concealed as usize;
            }
        }
        let s = jb.stats();
        assert!(s.concealed_samples >= 9 * 960, "{s:?}");
        assert!(concealed_chunks >= 9, "{concealed_chunks}");
    }

    /// `Ramp` that can also recover a frame from the next one's (pretend) FEC
    struct RampFec;

    impl AudioDecode for RampFec {
        fn channels(&self) -> usize {
            1
        }
        fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, String> {
            Ramp.decode(payload)
        }
        fn conceal(&mut self, samples: usize) -> Vec<i16> {
            vec![0; samples]
        }
        fn recover(&mut self, next: &[u8], samples: usize) -> Option<Vec<i16>> {
            let next = i64::from_le_bytes(next.try_into().ok()?);
            Some(
                (0..samples as i64)
                    .map(|i| ((next - samples as i64 + i) % 10_000) as i16 + 1)
                    .collect(),
            )
        }
    }

    /// Feeds `(arrival seconds, frame index)` of 20 ms frames in arrival order and plays
    /// until `until` seconds; returns the buffer and every chunk
    fn play(
        decoder: Box<dyn AudioDecode>,
        mut arrivals: Vec<(f64, i64)>,
        until: f64,
    ) -> (AudioJitterBuffer, Vec<PlayoutChunk>) {
        let base = Instant::now();
        let at = |s: f64| base + Duration::from_secs_f64(s);
        let mut jb = AudioJitterBuffer::new(JitterConfig::default(), decoder);
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut chunks = Vec::new();
        let mut next = 0;
        loop {
            let t_arr = arrivals.get(next).map(|a| at(a.0));
            let t = match (t_arr, jb.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if t > at(until) {
                break;
            }
            if Some(t) == t_arr {
                let i = arrivals[next].1;
                jb.handle_frame(t, i * 960, payload(i * 960));
                next += 1;
            } else {
                jb.handle_timeout(t);
                while let Some(c) = jb.poll_chunk() {
                    chunks.push(c);
                }
            }
        }
        (jb, chunks)
    }

    /// 20 ms frames 0..n sent every 20 ms over a 30 ms path, with `late(i)` added
    fn path(n: i64, late: impl Fn(i64) -> f64) -> Vec<(f64, i64)> {
        (0..n)
            .map(|i| (i as f64 * 0.02 + 0.03 + late(i), i))
            .collect()
    }

    #[test]
    fn a_frame_late_by_less_than_a_frame_is_waited_for_and_played() {
        // Frame 250 comes 26 ms after the others' pace, at most 16 ms after its slot (the
        // buffer runs 20 ms behind the path, less up to a chunk for where the frame starts
        // within its chunk); its successor is on time. Playout waits for it (two chunks of
        // concealment at most, as the wait is in whole chunks), then plays it.
        let (jb, _) = play(
            Box::new(Ramp),
            path(500, |i| if i == 250 { 0.026 } else { 0.0 }),
            10.0,
        );
        let s = jb.stats();
        assert_eq!((s.frames_late, s.frames_lost), (0, 0), "{s:?}");
        // All but the last frame or two, still buffered at the end, were decoded.
        assert!(s.frames_decoded + 2 >= s.frames_received, "{s:?}");
        assert!(
            s.concealed_samples > 0 && s.concealed_samples <= 2 * 480,
            "{s:?}"
        );
    }

    #[test]
    fn a_frame_later_than_its_gap_is_skipped_after_one_frame_of_waiting() {
        // Frame 250 is 80 ms late: playout waits 20 ms (its own length), skips it and counts
        // it lost, then counts it late when it comes.
        let (jb, _) = play(
            Box::new(Ramp),
            path(500, |i| if i == 250 { 0.080 } else { 0.0 }),
            10.0,
        );
        let s = jb.stats();
        assert_eq!((s.frames_late, s.frames_lost), (1, 1), "{s:?}");
        assert!(s.concealed_samples <= 960 + 480, "{s:?}");
    }

    #[test]
    fn fec_fills_a_late_frames_slot_without_concealment() {
        let (jb, chunks) = play(
            Box::new(RampFec),
            path(500, |i| if i == 250 { 0.080 } else { 0.0 }),
            10.0,
        );
        let s = jb.stats();
        assert_eq!(s.frames_recovered, 1, "{s:?}");
        assert_eq!((s.concealed_samples, s.frames_lost), (0, 0), "{s:?}");
        assert_eq!(s.frames_late, 1, "the primary still comes, late: {s:?}");
        // The recovered audio is the missing stretch, in place: the ramp continues.
        let samples: Vec<i16> = chunks.iter().flat_map(|c| c.samples.clone()).collect();
        assert!(chunks.iter().all(|c| !c.concealed));
        assert!(samples.iter().all(|&v| v != 0));
    }

    #[test]
    fn after_a_long_stall_on_a_fifo_path_playout_drops_the_backlog() {
        // At 24 s the path stalls for 1.5 s, then delivers everything it held at once (FIFO).
        // Playout waits, then drops the stale part of the backlog instead of playing 1.5 s
        // late for the next 15 s (acceleration removes only a tenth of real time).
        let stall = |i: i64| {
            let sent = i as f64 * 0.02;
            if (24.0..25.5).contains(&sent) {
                25.5 - sent
            } else {
                0.0
            }
        };
        let (jb, chunks) = play(Box::new(Ramp), path(1500, stall), 30.0);
        let s = jb.stats();
        assert!(s.frames_discarded > 40, "{s:?}");
        // One second after the backlog arrived, playout is back near the path's delay.
        let late = chunks
            .iter()
            .filter(|c| !c.concealed)
            .filter(|c| {
                let t = (c.playout - chunks[0].playout).as_secs_f64();
                (26.6..30.0).contains(&t)
            })
            .map(|c| {
                let play = (c.playout - chunks[0].playout).as_secs_f64();
                play - c.media_ticks as f64 / 48_000.0
            })
            .fold(0.0f64, f64::max);
        assert!(
            late < 0.2,
            "playout still {late} s behind the first chunk's pace"
        );
    }

    #[test]
    fn shorten_and_lengthen_keep_length_and_endpoints() {
        let pcm: Vec<i16> = (0..528).map(|i| i as i16).collect();
        let s = shorten(&pcm, 1, 480);
        assert_eq!(s.len(), 480);
        assert_eq!(s[0], 0);
        assert_eq!(*s.last().unwrap(), 527);
        let pcm: Vec<i16> = (0..360).map(|i| i as i16).collect();
        let l = lengthen(&pcm, 1, 480);
        assert_eq!(l.len(), 480);
        assert_eq!(l[0], 0);
        assert_eq!(*l.last().unwrap(), 359);
        // Stereo keeps channels apart.
        let st: Vec<i16> = (0..400).flat_map(|i| [i as i16, -(i as i16)]).collect();
        let l = lengthen(&st, 2, 480);
        assert!(l.chunks(2).all(|f| f[0] == -f[1]));
        let s = shorten(&st, 2, 300);
        assert!(s.chunks(2).all(|f| (f[0] as i32 + f[1] as i32).abs() <= 1));
    }
}
