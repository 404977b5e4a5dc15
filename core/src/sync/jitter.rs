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
//!   current clock-drift estimate). The *relative delay* of a frame is its transit minus the
//!   smallest transit of the recent past (the fastest recent packet).
//! - Relative delays go into a histogram that forgets old entries exponentially. The target
//!   delay is a high quantile of it, clamped to the configured range.
//! - The playout clock runs at the local rate. Each chunk consumes a little more or a little
//!   less media than it emits (acceleration / deceleration, cross-faded), steering the actual
//!   delay toward the target without jumps, and compensating the estimated clock drift
//!   evenly rather than in bursts.
//! - A frame that is missing when it is due is concealed. If nothing later has arrived the
//!   playout position waits (the delay grows by exactly the lateness), so a late frame can
//!   still be played; if later frames are there, the missing one counts as lost.
//! - Frames that arrive after their position was played are dropped and counted late.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::time::local_secs;

/// Decodes (and conceals) one stream's audio for the jitter buffer
pub trait AudioDecode: Send {
    /// Interleaved channels in the output
    fn channels(&self) -> usize;
    /// Decodes one encoded frame to interleaved PCM; its length defines the frame's duration
    fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, String>;
    /// Synthesises `samples` per channel of concealment (packet loss concealment)
    fn conceal(&mut self, samples: usize) -> Vec<i16>;
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
    /// Quantile of relative delay the target covers
    pub quantile: f64,
    /// Per-frame forgetting factor of the slow delay histogram (the steady-state target)
    pub forget: f64,
    /// Per-frame forgetting factor of the fast delay histogram (reacts to jitter rising)
    pub forget_fast: f64,
    /// Playout chunk length
    pub chunk: Duration,
    /// Most media a chunk may skip to speed up, as a fraction of the chunk
    pub max_accelerate: f64,
    /// Most media a chunk may repeat to slow down, as a fraction of the chunk
    pub max_decelerate: f64,
    /// How far the delay may be off target before it is steered
    pub hysteresis: Duration,
    /// How long the "fastest recent packet" is remembered
    pub fastest_window: Duration,
    /// Frames held at most (older excess is dropped)
    pub max_frames: usize,
    /// With nothing received for this long, playout pauses until the next frame
    pub idle_pause: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            rate: 48_000,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            quantile: 0.998,
            forget: 0.995,
            forget_fast: 0.98,
            chunk: Duration::from_millis(10),
            max_accelerate: 0.10,
            max_decelerate: 0.25,
            hysteresis: Duration::from_millis(2),
            fastest_window: Duration::from_secs(10),
            max_frames: 200,
            idle_pause: Duration::from_millis(600),
        }
    }
}

/// W3C-style counters of one audio jitter buffer
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    /// Sum over emitted samples of the time from arrival to playout, in seconds
    pub jitter_buffer_delay: f64,
    /// Sum over emitted samples of the target delay at the time, in seconds
    pub jitter_buffer_target_delay: f64,
    /// Samples (per channel) emitted
    pub jitter_buffer_emitted_count: u64,
    /// Samples (per channel) synthesised by concealment
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
    /// Current target delay in seconds
    pub target_delay: f64,
}

impl JitterStats {
    /// Mean buffer delay per emitted sample (W3C `jitterBufferDelay / jitterBufferEmittedCount`)
    pub fn mean_delay(&self) -> Option<Duration> {
        (self.jitter_buffer_emitted_count > 0).then(|| {
            Duration::from_secs_f64(
                self.jitter_buffer_delay / self.jitter_buffer_emitted_count as f64,
            )
        })
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

/// Decoded PCM waiting to be played, with the arrival time of the frame each run came from
#[derive(Debug, Default)]
struct SyncBuffer {
    samples: VecDeque<i16>,
    /// (samples per channel, arrival time or None for concealment)
    runs: VecDeque<(usize, Option<Instant>)>,
}

#[derive(Debug)]
struct Playout {
    /// Media tick of the next sample to decode into the sync buffer
    decode_pos: i64,
    /// Local time of the next chunk
    next_tick: Instant,
    /// Fractional media samples owed to drift compensation
    drift_debt: f64,
}

/// An adaptive jitter buffer for one audio stream
pub struct AudioJitterBuffer {
    config: JitterConfig,
    decoder: Box<dyn AudioDecode>,
    channels: usize,
    frames: BTreeMap<i64, Frame>,
    /// (arrival secs since origin, media secs since origin) of recent frames
    recent: VecDeque<(f64, f64)>,
    origin: Option<(Instant, i64)>,
    /// Forgetting histograms of relative delay, 1 ms buckets: slow and fast
    hist: Vec<f64>,
    hist_fast: Vec<f64>,
    /// Forgetting mean of relative delay (seconds)
    mean_rel: f64,
    /// Target buffer delay (what a frame of typical relative delay waits)
    target: Duration,
    /// Where playout sits relative to the fastest recent path (seconds)
    setpoint: f64,
    /// The fastest recent transit the relative delays are measured against
    fastest: Option<f64>,
    /// Extra delay asked for by audio/video sync (seconds)
    sync_delay: f64,
    drift_ppm: f64,
    playout: Option<Playout>,
    sync: SyncBuffer,
    last_arrival: Option<Instant>,
    chunks: VecDeque<PlayoutChunk>,
    stats: JitterStats,
}

const HIST_BUCKETS: usize = 2000;

impl AudioJitterBuffer {
    /// Creates an empty buffer that decodes with `decoder`
    pub fn new(config: JitterConfig, decoder: Box<dyn AudioDecode>) -> Self {
        let channels = decoder.channels().max(1);
        let target = config
            .min_delay
            .max(Duration::from_millis(40))
            .min(config.max_delay);
        Self {
            config,
            decoder,
            channels,
            frames: BTreeMap::new(),
            recent: VecDeque::new(),
            origin: None,
            hist: vec![0.0; HIST_BUCKETS],
            hist_fast: vec![0.0; HIST_BUCKETS],
            mean_rel: 0.0,
            target,
            setpoint: target.as_secs_f64(),
            fastest: None,
            sync_delay: 0.0,
            drift_ppm: 0.0,
            playout: None,
            sync: SyncBuffer::default(),
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
        self.recent.push_back((a, m));
        let horizon = a - self.config.fastest_window.as_secs_f64();
        while self.recent.front().is_some_and(|&(t, _)| t < horizon) {
            self.recent.pop_front();
        }
        let scale = 1.0 - self.drift_ppm * 1e-6;
        let fastest = self
            .recent
            .iter()
            .map(|&(a, m)| a - m * scale)
            .fold(f64::INFINITY, f64::min);
        if let Some(prev) = self.fastest.replace(fastest) {
            // The reference moved (a faster packet arrived, or the fastest one left the
            // window): re-reference everything measured against it, so history stays
            // comparable with what comes next.
            self.rebase(fastest - prev);
        }
        let rel = (a - m * scale) - fastest;
        self.add_to_histogram(rel);

        match &self.playout {
            Some(p) if media_ticks < p.decode_pos => {
                self.stats.frames_late += 1;
                return;
            }
            None => {
                // Playout starts one target delay after the first frame.
                self.playout = Some(Playout {
                    decode_pos: media_ticks,
                    next_tick: arrival + self.target,

                    drift_debt: 0.0,
                });
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

    /// Moves the reference of relative delay later by `delta` seconds
    fn rebase(&mut self, delta: f64) {
        let bins = (delta * 1000.0).round() as i64;
        if bins == 0 {
            return;
        }
        shift_histogram(&mut self.hist, bins);
        shift_histogram(&mut self.hist_fast, bins);
        let d = bins as f64 / 1000.0;
        self.mean_rel -= d;
        self.setpoint -= d;
    }

    fn add_to_histogram(&mut self, rel: f64) {
        let q_slow = add_and_quantile(
            &mut self.hist,
            self.config.forget,
            rel,
            self.config.quantile,
        );
        let q_fast = add_and_quantile(
            &mut self.hist_fast,
            self.config.forget_fast,
            rel,
            self.config.quantile,
        );
        let first = self.stats.frames_received == 1;
        let f = self.config.forget;
        self.mean_rel = if first {
            rel
        } else {
            f * self.mean_rel + (1.0 - f) * rel
        };
        // The quantile covers the slow frames; a frame of typical delay then waits the
        // difference. That wait is the target buffer delay, clamped to the configured range.
        let q = q_slow.max(q_fast);
        // A frame is decoded at the tick whose chunk reaches its first sample, up to one
        // chunk before that sample plays: the wait covers that too.
        let wait = (q - self.mean_rel).max(0.0) + self.config.chunk.as_secs_f64();
        let lo = self.config.min_delay.as_secs_f64();
        let hi = self.config.max_delay.as_secs_f64();
        let wait = wait.clamp(lo, hi);
        self.target = Duration::from_secs_f64(wait);
        self.setpoint = self.mean_rel.max(0.0) + wait;
    }

    /// When the next chunk is due (None while nothing has arrived or playout is paused)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.playout.as_ref().map(|p| p.next_tick)
    }

    /// Produces every chunk due at `now`; collect them with [`poll_chunk`](Self::poll_chunk)
    pub fn handle_timeout(&mut self, now: Instant) {
        // Bounded: at most one second of chunks per call, even after a long gap.
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

    /// How late we play relative to the fastest recent path, for the sample at `media`
    fn current_delay(&self, now: Instant, media: i64) -> Option<f64> {
        let (origin_local, origin_media) = self.origin?;
        let scale = 1.0 - self.drift_ppm * 1e-6;
        let fastest = self
            .recent
            .iter()
            .map(|&(a, m)| a - m * scale)
            .fold(f64::INFINITY, f64::min);
        if !fastest.is_finite() {
            return None;
        }
        let m = (media - origin_media) as f64 / self.config.rate as f64;
        Some(local_secs(now, origin_local) - (m * scale + fastest))
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
        if let Some(delay) = self.current_delay(tick, play_pos) {
            let hyst = self.config.hysteresis.as_secs_f64();
            let err = delay - (self.setpoint + self.sync_delay + hyst);
            if err.abs() > hyst {
                // Close a quarter of the error per chunk, within the rate limits.
                adj += (err * rate / 4.0).round();
            }
        }
        let max_acc = (out as f64 * self.config.max_accelerate).floor();
        let max_dec = (out as f64 * self.config.max_decelerate).floor();
        let adj = adj.clamp(-max_dec, max_acc) as i64;
        let consume = (out as i64 + adj).max(1) as usize;

        let mut concealed = self.fill(consume);
        let media_ticks = play_pos;
        let mut take: Vec<i16> = self.sync.samples.drain(..consume * ch).collect();
        // Attribute delay to the frames the consumed samples came from.
        let mut left = consume;
        let mut delay_sum = 0.0;
        while left > 0 {
            let Some(run) = self.sync.runs.front_mut() else {
                break;
            };
            let n = run.0.min(left);
            match run.1 {
                Some(arrival) => delay_sum += n as f64 * local_secs(tick, arrival).max(0.0),
                None => concealed = true,
            }
            run.0 -= n;
            left -= n;
            if run.0 == 0 {
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
        self.stats.jitter_buffer_delay += delay_sum * out as f64 / consume as f64;
        self.stats.jitter_buffer_target_delay += self.target.as_secs_f64() * out as f64;
        self.stats.jitter_buffer_emitted_count += out as u64;

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

    /// Decodes (or conceals) until at least `need` samples per channel are buffered;
    /// returns whether it concealed
    fn fill(&mut self, need: usize) -> bool {
        let ch = self.channels;
        let mut concealed = false;
        let rate = self.config.rate as i64;
        while self.sync.samples.len() / ch < need {
            let p = self.playout.as_mut().expect("playing; panic means bug");
            let pos = p.decode_pos;
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
                    let frame = self.frames.pop_first().expect("peeked; panic means bug").1;
                    match self.decoder.decode(&frame.payload) {
                        Ok(pcm) if !pcm.is_empty() => {
                            self.stats.frames_decoded += 1;
                            let n = pcm.len() / ch;
                            self.sync.samples.extend(pcm);
                            self.sync.runs.push_back((n, Some(frame.arrival)));
                            p.decode_pos += n as i64;
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
                Some(next) => {
                    // A gap before a later frame: the missing media is lost; conceal it.
                    let gap = ((next - pos) as usize).min(need.max(1) * 4);
                    self.stats.frames_lost += 1;
                    self.conceal(gap, true);
                    concealed = true;
                }
                None => {
                    // Nothing later has arrived: wait (expand without advancing).
                    let missing = need - self.sync.samples.len() / ch;
                    self.conceal(missing, false);
                    concealed = true;
                }
            }
        }
        concealed
    }

    fn conceal(&mut self, n: usize, advance: bool) {
        let pcm = self.decoder.conceal(n);
        let ch = self.channels;
        let mut pcm = pcm;
        pcm.resize(n * ch, 0);
        self.sync.samples.extend(pcm);
        self.sync.runs.push_back((n, None));
        self.stats.concealed_samples += n as u64;
        if advance {
            if let Some(p) = self.playout.as_mut() {
                p.decode_pos += n as i64;
            }
        }
    }
}

/// Moves histogram mass `bins` buckets down (or up, if negative), piling what falls off
/// either end into the end bucket
fn shift_histogram(hist: &mut [f64], bins: i64) {
    let n = hist.len() as i64;
    let mut out = vec![0.0; hist.len()];
    for (i, &v) in hist.iter().enumerate() {
        let j = (i as i64 - bins).clamp(0, n - 1) as usize;
        out[j] += v;
    }
    hist.copy_from_slice(&out);
}

/// Adds `x` (seconds) to a forgetting histogram of 1 ms buckets and returns its `q` quantile
/// (seconds, the upper edge of the bucket)
fn add_and_quantile(hist: &mut [f64], forget: f64, x: f64, q: f64) -> f64 {
    for b in hist.iter_mut() {
        *b *= forget;
    }
    let n = hist.len();
    let i = ((x * 1000.0).max(0.0) as usize).min(n - 1);
    hist[i] += 1.0 - forget;
    let total: f64 = hist.iter().sum();
    let want = total * q;
    let mut acc = 0.0;
    for (i, b) in hist.iter().enumerate() {
        acc += b;
        if acc >= want {
            return (i + 1) as f64 / 1000.0;
        }
    }
    n as f64 / 1000.0
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
