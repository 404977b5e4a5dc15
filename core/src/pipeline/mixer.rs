//! Audio mixing: the mix of all remote peers for local playout, and N−1 mixes (for each
//! peer, everyone else), with per-input gain and a soft limiter
//!
//! [`Mixer`] is the signal processing, with no notion of time: inputs are pushed into
//! per-input FIFOs in any block sizes and [`Mixer::mix`] takes one output frame from each.
//! [`MixerStage`] runs it as a pipeline [`Stage`] on the session's clock: one mix per
//! `frame` period, starting when the first audio arrives.
//!
//! The FIFOs absorb the different phases of the peers' playout ticks: an input whose FIFO
//! holds less than a frame at a tick contributes silence for that frame and keeps what it has
//! (an underrun, counted), which leaves it a frame ahead from then on; one that grows beyond
//! `max_buffer` loses its oldest samples (an overflow, counted). The N−1 mixes cost O(N) per
//! sample, not O(N²): each is the sum of everything minus that peer's own contribution.
//!
//! Every output goes through its own [`Limiter`]: below the knee the signal passes
//! unchanged; above it the gain comes down smoothly (a peak envelope with hold and release,
//! mapped through a tanh curve), so the output never exceeds the ceiling and is never
//! hard-clipped.

use std::time::{Duration, Instant};

use crate::signal::PeerId;

use super::{
    resample::to_i16, AudioIn, Destination, Emit, PipelineError, Source, Stage, TrackId, Work,
    AUDIO_RATE,
};

/// Settings of a [`Limiter`]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// Peak level (full scale 1.0) below which the signal passes unchanged
    pub knee: f32,
    /// Peak level the output never exceeds (below 1.0, so never clipped)
    pub ceiling: f32,
    /// How long a peak holds the gain down before it recovers
    pub hold: Duration,
    /// Time constant of the gain's recovery after the hold
    pub release: Duration,
}

impl Default for LimiterConfig {
    /// Knee at -4.4 dBFS, ceiling at -0.18 dBFS, 10 ms hold, 150 ms release
    fn default() -> Self {
        Self {
            knee: 0.6,
            ceiling: 0.98,
            hold: Duration::from_millis(10),
            release: Duration::from_millis(150),
        }
    }
}

/// A soft-knee peak limiter for 48 kHz interleaved audio (channels linked)
#[derive(Debug, Clone)]
pub struct Limiter {
    knee: f32,
    range: f32,
    hold: u32,
    release: f32,
    env: f32,
    held: u32,
    /// Samples (per channel) whose gain was below 1
    limited: u64,
}

impl Limiter {
    /// A limiter with these settings (`0 < knee < ceiling <= 1`)
    pub fn new(config: LimiterConfig) -> Result<Self, PipelineError> {
        if !(config.knee > 0.0 && config.knee < config.ceiling && config.ceiling <= 1.0) {
            return Err(PipelineError::InvalidConfig(format!(
                "limiter needs 0 < knee ({}) < ceiling ({}) <= 1",
                config.knee, config.ceiling
            )));
        }
        let rate = AUDIO_RATE as f32;
        let release_samples = (config.release.as_secs_f32() * rate).max(1.0);
        Ok(Self {
            knee: config.knee,
            range: config.ceiling - config.knee,
            hold: (config.hold.as_secs_f32() * rate) as u32,
            release: (-1.0 / release_samples).exp(),
            env: 0.0,
            held: 0,
            limited: 0,
        })
    }

    /// Limits interleaved `input` (full scale ±1.0) into 16-bit `out` (same length)
    pub fn process(&mut self, input: &[f32], channels: usize, out: &mut [i16]) {
        for (x, y) in input
            .chunks_exact(channels)
            .zip(out.chunks_exact_mut(channels))
        {
            let peak = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if peak >= self.env {
                self.env = peak;
                self.held = self.hold;
            } else if self.held > 0 {
                self.held -= 1;
            } else {
                self.env = (self.env * self.release).max(peak);
            }
            let gain = if self.env <= self.knee {
                1.0
            } else {
                self.limited += 1;
                // The envelope's level mapped onto a curve that approaches the ceiling;
                // since env >= |x|, |x * gain| <= curve(env) <= ceiling.
                let over = (self.env - self.knee) / self.range;
                (self.knee + self.range * soft_saturate(over)) / self.env
            };
            for (xv, yv) in x.iter().zip(y.iter_mut()) {
                *yv = to_i16(xv * gain);
            }
        }
    }

    /// Samples (per channel) processed with the gain below 1
    pub const fn limited_samples(&self) -> u64 {
        self.limited
    }
}

/// A tanh-like curve: `x` near 0, rising monotonically to exactly 1 at 3 and beyond
/// (a Padé approximant of tanh, without the library call)
fn soft_saturate(x: f32) -> f32 {
    if x >= 3.0 {
        1.0
    } else {
        // Mathematically at most 1 (the derivative is 9 (x² - 9)² / (27 + 9x²)²); min()
        // keeps rounding from overshooting.
        (x * (27.0 + x * x) / (27.0 + 9.0 * x * x)).min(1.0)
    }
}

/// Settings of a [`Mixer`]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixerConfig {
    /// Output channels, 1 or 2 (inputs are converted: mono copied, stereo averaged)
    pub channels: u16,
    /// Output frame length (and, in [`MixerStage`], the tick period)
    pub frame: Duration,
    /// Most audio held per input; beyond it the oldest is dropped
    pub max_buffer: Duration,
    /// Every output's limiter
    pub limiter: LimiterConfig,
}

impl Default for MixerConfig {
    /// Mono, 10 ms frames, 80 ms per input at most
    fn default() -> Self {
        Self {
            channels: 1,
            frame: Duration::from_millis(10),
            max_buffer: Duration::from_millis(80),
            limiter: LimiterConfig::default(),
        }
    }
}

/// Counters of one mixer input
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixInputStats {
    /// Samples (per channel) pushed
    pub samples_in: u64,
    /// Frames for which the input had too little buffered and contributed silence
    pub underruns: u64,
    /// Samples (per channel) dropped because the input's buffer was full
    pub overflow_samples: u64,
    /// Frames mixed in
    pub frames_mixed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Local,
    Peer(PeerId),
}

impl Key {
    fn is(&self, source: Source<'_>) -> bool {
        match (self, source) {
            (Self::Local, Source::Local) => true,
            (Self::Peer(a), Source::Peer(b)) => a == b,
            _ => false,
        }
    }
}

/// A fixed-capacity ring of interleaved samples
#[derive(Debug)]
struct Fifo {
    buf: Vec<i16>,
    head: usize,
    len: usize,
}

impl Fifo {
    fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            head: 0,
            len: 0,
        }
    }

    /// Appends; returns whether the oldest sample was dropped to make room
    fn push(&mut self, v: i16) -> bool {
        let cap = self.buf.len();
        let dropped = self.len == cap;
        if dropped {
            self.head = (self.head + 1) % cap;
            self.len -= 1;
        }
        self.buf[(self.head + self.len) % cap] = v;
        self.len += 1;
        dropped
    }

    /// Appends a slice in at most two copies; returns how many samples were dropped from
    /// the front to make room
    fn push_slice(&mut self, s: &[i16]) -> usize {
        let cap = self.buf.len();
        if s.len() >= cap {
            let dropped = self.len + s.len() - cap;
            self.buf.copy_from_slice(&s[s.len() - cap..]);
            self.head = 0;
            self.len = cap;
            return dropped;
        }
        let dropped = (self.len + s.len()).saturating_sub(cap);
        self.discard(dropped);
        let tail = (self.head + self.len) % cap;
        let first = s.len().min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&s[..first]);
        self.buf[..s.len() - first].copy_from_slice(&s[first..]);
        self.len += s.len();
        dropped
    }

    /// Moves `out.len()` samples out, times `gain`, as floats
    fn pop_into(&mut self, out: &mut [f32], gain: f32) {
        let cap = self.buf.len();
        let n = out.len();
        let first = n.min(cap - self.head);
        let scale = gain * (1.0 / 32768.0);
        for (o, &s) in out[..first]
            .iter_mut()
            .zip(&self.buf[self.head..self.head + first])
        {
            *o = f32::from(s) * scale;
        }
        for (o, &s) in out[first..].iter_mut().zip(&self.buf[..n - first]) {
            *o = f32::from(s) * scale;
        }
        self.head = (self.head + n) % cap;
        self.len -= n;
    }

    fn discard(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % self.buf.len();
        self.len -= n;
    }
}

#[derive(Debug)]
struct Input {
    key: Key,
    gain: f32,
    fifo: Fifo,
    /// This frame's contribution, gain applied
    frame: Vec<f32>,
    /// Whether it contributed to the last frame
    flowing: bool,
    /// The N−1 mix for this peer (unused for the local input)
    minus: Vec<i16>,
    limiter: Limiter,
    /// Mean square of the last frame's contribution (full scale 1.0)
    power: f32,
    stats: MixInputStats,
}

/// Mixes inputs into the local playout mix and per-peer N−1 mixes; see the [module
/// docs](self)
#[derive(Debug)]
pub struct Mixer {
    config: MixerConfig,
    /// Samples per frame, all channels
    frame_len: usize,
    inputs: Vec<Input>,
    /// Sum of the remote inputs (the local playout mix before limiting)
    remote: Vec<f32>,
    /// Scratch: everything minus one peer
    scratch: Vec<f32>,
    local: Vec<i16>,
    local_limiter: Limiter,
    /// Whether the last `mix` produced N−1 mixes
    has_minus: bool,
    /// Inputs that contributed a frame to the last `mix` (or had one for a `skip`)
    contributed: usize,
}

impl Mixer {
    /// A mixer with no inputs
    pub fn new(config: MixerConfig) -> Result<Self, PipelineError> {
        if !(1..=2).contains(&config.channels) {
            return Err(PipelineError::InvalidConfig(format!(
                "mixer output has {} channels, not 1 or 2",
                config.channels
            )));
        }
        let per_channel = samples_in(config.frame);
        if per_channel == 0 || config.frame > Duration::from_millis(120) {
            return Err(PipelineError::InvalidConfig(format!(
                "mixer frame of {:?} is outside 1..=120 ms",
                config.frame
            )));
        }
        if config.max_buffer < 2 * config.frame {
            return Err(PipelineError::InvalidConfig(
                "mixer max_buffer must hold at least two frames".into(),
            ));
        }
        let frame_len = per_channel * usize::from(config.channels);
        Ok(Self {
            local_limiter: Limiter::new(config.limiter)?,
            config,
            frame_len,
            inputs: Vec::new(),
            remote: vec![0.0; frame_len],
            scratch: vec![0.0; frame_len],
            local: vec![0; frame_len],
            has_minus: false,
            contributed: 0,
        })
    }

    /// The settings
    pub const fn config(&self) -> &MixerConfig {
        &self.config
    }

    /// Samples per output frame, all channels interleaved
    pub const fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Adds an input (done on first push or gain anyway); a peer added here gets an N−1 mix
    /// even before it sends anything
    pub fn add_input(&mut self, source: Source<'_>) {
        self.input_index(source);
    }

    /// Removes an input and its buffered audio
    pub fn remove_input(&mut self, source: Source<'_>) {
        self.inputs.retain(|i| !i.key.is(source));
    }

    /// Sets an input's linear gain (1.0 unchanged, 0.5 is -6 dB)
    pub fn set_gain(&mut self, source: Source<'_>, gain: f32) {
        let i = self.input_index(source);
        self.inputs[i].gain = if gain.is_finite() { gain.max(0.0) } else { 0.0 };
    }

    /// An input's counters
    pub fn input_stats(&self, source: Source<'_>) -> Option<MixInputStats> {
        self.inputs
            .iter()
            .find(|i| i.key.is(source))
            .map(|i| i.stats)
    }

    /// An input's level in the last frame, dBFS (RMS of a full-scale sine = 0 dB), gain
    /// applied; `-inf` for silence
    pub fn level_db(&self, source: Source<'_>) -> Option<f32> {
        self.inputs
            .iter()
            .find(|i| i.key.is(source))
            .map(|i| 10.0 * (2.0 * i.power).log10())
    }

    /// Samples currently buffered for an input, per channel
    pub fn buffered(&self, source: Source<'_>) -> Option<usize> {
        let ch = usize::from(self.config.channels);
        self.inputs
            .iter()
            .find(|i| i.key.is(source))
            .map(|i| i.fifo.len / ch)
    }

    /// Appends interleaved 48 kHz audio of `channels` (1 or 2) to an input
    pub fn push(&mut self, source: Source<'_>, audio: AudioIn<'_>) {
        let i = self.input_index(source);
        let out_ch = usize::from(self.config.channels);
        let input = &mut self.inputs[i];
        let mut dropped = 0u64;
        match (audio.channels, out_ch) {
            (1, 1) | (2, 2) => dropped = input.fifo.push_slice(audio.samples) as u64,
            (1, _) => {
                for &s in audio.samples {
                    dropped += u64::from(input.fifo.push(s));
                    dropped += u64::from(input.fifo.push(s));
                }
            }
            _ => {
                for pair in audio.samples.chunks_exact(2) {
                    let m = (i32::from(pair[0]) + i32::from(pair[1])) / 2;
                    // The mean of two i16 is an i16.
                    dropped += u64::from(input.fifo.push(m as i16));
                }
            }
        }
        input.stats.samples_in += (audio.samples.len() / audio.channels.max(1)) as u64;
        input.stats.overflow_samples += dropped / out_ch as u64;
    }

    /// Mixes one frame: the local mix of every remote input and, with `minus`, each remote
    /// peer's N−1 mix (everyone else, the local input included); returns the samples touched
    pub fn mix(&mut self, minus: bool) -> u64 {
        let n = self.frame_len;
        self.remote.fill(0.0);
        self.contributed = 0;
        let mut local_in: Option<usize> = None;
        for (k, input) in self.inputs.iter_mut().enumerate() {
            if input.fifo.len >= n {
                input.fifo.pop_into(&mut input.frame, input.gain);
                input.flowing = true;
                self.contributed += 1;
                input.stats.frames_mixed += 1;
            } else {
                if input.flowing {
                    input.stats.underruns += 1;
                }
                input.flowing = false;
                input.frame.fill(0.0);
            }
            input.power = input.frame.iter().map(|v| v * v).sum::<f32>() / n as f32;
            match input.key {
                Key::Local => local_in = Some(k),
                Key::Peer(_) => add(&mut self.remote, &input.frame),
            }
        }
        let ch = usize::from(self.config.channels);
        self.local_limiter
            .process(&self.remote, ch, &mut self.local);
        let mut work = (n * (self.inputs.len() + 1)) as u64;
        self.has_minus = minus;
        if minus {
            for k in 0..self.inputs.len() {
                if self.inputs[k].key == Key::Local {
                    continue;
                }
                self.scratch.copy_from_slice(&self.remote);
                if let Some(l) = local_in {
                    add(&mut self.scratch, &self.inputs[l].frame);
                }
                let input = &mut self.inputs[k];
                for (s, v) in self.scratch.iter_mut().zip(&input.frame) {
                    *s -= v;
                }
                input.limiter.process(&self.scratch, ch, &mut input.minus);
                work += 2 * n as u64;
            }
        }
        work / ch as u64
    }

    /// Drops one frame from every input without mixing (a skipped tick)
    pub fn skip(&mut self) {
        self.contributed = 0;
        for input in &mut self.inputs {
            self.contributed += usize::from(input.fifo.len >= self.frame_len);
            input.fifo.discard(self.frame_len);
        }
        self.local.fill(0);
        self.has_minus = false;
    }

    /// The last local playout mix: every remote input, limited
    pub fn local_mix(&self) -> &[i16] {
        &self.local
    }

    /// The last N−1 mix for `peer` (everyone but `peer`), if the last `mix` made them
    pub fn minus_mix(&self, peer: &PeerId) -> Option<&[i16]> {
        self.minus_mixes().find(|(p, _)| *p == peer).map(|(_, m)| m)
    }

    /// Every remote peer's last N−1 mix (empty if the last `mix` made none)
    pub fn minus_mixes(&self) -> impl Iterator<Item = (&PeerId, &[i16])> + '_ {
        self.inputs
            .iter()
            .filter(|_| self.has_minus)
            .filter_map(|i| match &i.key {
                Key::Peer(p) => Some((p, i.minus.as_slice())),
                Key::Local => None,
            })
    }

    /// How many inputs contributed audio to the last frame
    pub const fn contributors(&self) -> usize {
        self.contributed
    }

    fn input_index(&mut self, source: Source<'_>) -> usize {
        if let Some(i) = self.inputs.iter().position(|i| i.key.is(source)) {
            return i;
        }
        let cap = samples_in(self.config.max_buffer) * usize::from(self.config.channels);
        self.inputs.push(Input {
            key: match source {
                Source::Local => Key::Local,
                Source::Peer(p) => Key::Peer(p.clone()),
            },
            gain: 1.0,
            fifo: Fifo::new(cap.max(self.frame_len)),
            frame: vec![0.0; self.frame_len],
            flowing: false,
            minus: vec![0; self.frame_len],
            // The config was checked when the mixer was made.
            limiter: Limiter::new(self.config.limiter).expect("checked in Mixer::new"),
            power: 0.0,
            stats: MixInputStats::default(),
        });
        self.inputs.len() - 1
    }
}

fn add(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

fn samples_in(d: Duration) -> usize {
    (d.as_nanos() * u128::from(AUDIO_RATE) / 1_000_000_000) as usize
}

/// Ticks to which no input contributed before the stage stops ticking (until audio returns)
const IDLE_TICKS: u32 = 50;

/// Runs a [`Mixer`] on the session clock: one frame per `frame` period
///
/// Emits the local playout mix on `local_track` (usually a [`Routing::Local`] track) and
/// each peer's N−1 mix on `minus_track`, addressed to that peer alone
/// ([`Destination::Peer`]). Feed it audio with [`Select::Peers`] (and [`Select::All`] to mix
/// the local capture into the N−1 mixes).
///
/// [`Routing::Local`]: super::Routing::Local
/// [`Select::Peers`]: super::Select::Peers
/// [`Select::All`]: super::Select::All
#[derive(Debug)]
pub struct MixerStage {
    mixer: Mixer,
    local_track: Option<TrackId>,
    minus_track: Option<TrackId>,
    next_tick: Option<Instant>,
    idle: u32,
    /// Ticks skipped to catch up after the session stalled
    late_ticks: u64,
}

impl MixerStage {
    /// A stage mixing into `local_track` and/or `minus_track`
    pub fn new(
        config: MixerConfig,
        local_track: Option<TrackId>,
        minus_track: Option<TrackId>,
    ) -> Result<Self, PipelineError> {
        Ok(Self {
            mixer: Mixer::new(config)?,
            local_track,
            minus_track,
            next_tick: None,
            idle: 0,
            late_ticks: 0,
        })
    }

    /// The mixer (gains, levels, counters)
    pub fn mixer(&self) -> &Mixer {
        &self.mixer
    }

    /// The mixer, to change gains
    pub fn mixer_mut(&mut self) -> &mut Mixer {
        &mut self.mixer
    }

    /// Ticks skipped because the session called too late (more than four frames behind)
    pub const fn late_ticks(&self) -> u64 {
        self.late_ticks
    }

    fn advance(&mut self, now: Instant) {
        let frame = self.mixer.config.frame;
        if let Some(t) = self.next_tick.as_mut() {
            *t += frame;
            if now.saturating_duration_since(*t) > 4 * frame {
                // Far behind (the caller stalled): resume from now, not with a burst.
                let behind = now.saturating_duration_since(*t).as_nanos() / frame.as_nanos();
                self.late_ticks += behind as u64;
                *t = now;
                for _ in 0..behind.min(16) {
                    self.mixer.skip();
                }
            }
        }
        if self.mixer.contributors() > 0 {
            self.idle = 0;
        } else {
            self.idle += 1;
            if self.idle >= IDLE_TICKS {
                self.next_tick = None;
            }
        }
    }
}

impl Stage for MixerStage {
    fn name(&self) -> &str {
        "mixer"
    }

    fn handle_audio(
        &mut self,
        emit: &mut Emit<'_>,
        source: Source<'_>,
        audio: AudioIn<'_>,
    ) -> Work {
        self.mixer.push(source, audio);
        if self.next_tick.is_none() {
            self.next_tick = Some(emit.now());
            self.idle = 0;
        }
        Work::samples(audio.samples.len() as u64)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    fn handle_timeout(&mut self, emit: &mut Emit<'_>) -> Work {
        let want_minus = self.minus_track.is_some_and(|t| emit.is_wanted(t));
        let work = self.mixer.mix(want_minus);
        let ch = self.mixer.config.channels;
        if let Some(track) = self.local_track.filter(|&t| emit.is_wanted(t)) {
            let mut buf = emit.audio_buffer();
            buf.extend_from_slice(self.mixer.local_mix());
            emit.audio(track, Destination::Track, buf, ch);
        }
        if let (Some(track), true) = (self.minus_track, want_minus) {
            for (peer, mix) in self.mixer.minus_mixes() {
                if emit.is_wanted_by(track, peer) {
                    let mut buf = emit.audio_buffer();
                    buf.extend_from_slice(mix);
                    emit.audio(track, Destination::Peer(peer.clone()), buf, ch);
                }
            }
        }
        self.advance(emit.now());
        Work::samples(work)
    }

    fn skip_timeout(&mut self, now: Instant) {
        self.mixer.skip();
        self.advance(now);
    }

    fn add_peer(&mut self, peer: &PeerId) {
        self.mixer.add_input(Source::Peer(peer));
    }

    fn remove_peer(&mut self, peer: &PeerId) {
        self.mixer.remove_input(Source::Peer(peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::dsp::{goertzel_amplitude, tone_i16};

    const TONES: [f64; 5] = [300.0, 500.0, 700.0, 1100.0, 1300.0];

    fn peer(i: usize) -> PeerId {
        PeerId::new(format!("p{i}")).unwrap()
    }

    /// Feeds five peers a distinct tone each for `ms` milliseconds in 10 ms chunks, with
    /// the given amplitude, mixing after every chunk; returns the last second of every
    /// N−1 mix and of the local mix
    fn run(amplitude: f64, gains: [f32; 5], ms: usize) -> (Vec<Vec<i16>>, Vec<i16>, Mixer) {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        let peers: Vec<PeerId> = (0..5).map(peer).collect();
        for (p, g) in peers.iter().zip(gains) {
            m.set_gain(Source::Peer(p), g);
        }
        let mut minus = vec![Vec::new(); 5];
        let mut local = Vec::new();
        for c in 0..ms / 10 {
            for (i, p) in peers.iter().enumerate() {
                let chunk = tone_i16(48_000, TONES[i], amplitude, 480, c * 480);
                m.push(
                    Source::Peer(p),
                    AudioIn {
                        samples: &chunk,
                        channels: 1,
                    },
                );
            }
            m.mix(true);
            for (i, p) in peers.iter().enumerate() {
                minus[i].extend_from_slice(m.minus_mix(p).unwrap());
            }
            local.extend_from_slice(m.local_mix());
        }
        let keep = 48_000;
        for v in &mut minus {
            v.drain(..v.len() - keep);
        }
        local.drain(..local.len() - keep);
        (minus, local, m)
    }

    fn db(x: f64) -> f64 {
        20.0 * x.log10()
    }

    #[test]
    fn each_minus_mix_holds_exactly_the_other_four_at_their_levels() {
        let amplitude = 0.12;
        let (minus, local, m) = run(amplitude, [1.0, 1.0, 0.5, 1.0, 1.0], 1500);
        for (i, mix) in minus.iter().enumerate() {
            for (j, &f) in TONES.iter().enumerate() {
                let a = goertzel_amplitude(mix, 48_000, f);
                let gain = if j == 2 { 0.5 } else { 1.0 };
                if i == j {
                    // Its own tone is absent (only leakage from the others' windows).
                    assert!(
                        db(a / amplitude) < -60.0,
                        "mix for p{i}: own tone at {} dB",
                        db(a / amplitude)
                    );
                } else {
                    let err = db(a / (amplitude * gain));
                    assert!(err.abs() < 1.0, "mix for p{i}: tone {f} off by {err} dB");
                    // With the limiter idle the level is exact.
                    assert!(err.abs() < 0.05, "mix for p{i}: tone {f} off by {err} dB");
                }
            }
            // No foreign peaks: the other four tones carry (almost) all the power.
            let total: f64 = mix
                .iter()
                .map(|&s| (f64::from(s) / 32768.0).powi(2))
                .sum::<f64>()
                / mix.len() as f64;
            let tones: f64 = (0..5)
                .filter(|&j| j != i)
                .map(|j| {
                    let g = if j == 2 { 0.5 } else { 1.0 };
                    (amplitude * g).powi(2) / 2.0
                })
                .sum();
            assert!((10.0 * (total / tones).log10()).abs() < 0.05);
            assert!(mix.iter().all(|&s| s.unsigned_abs() < 32767));
        }
        for (j, &f) in TONES.iter().enumerate() {
            let gain = if j == 2 { 0.5 } else { 1.0 };
            let a = goertzel_amplitude(&local, 48_000, f);
            assert!(db(a / (amplitude * gain)).abs() < 0.1);
        }
        let s = m.input_stats(Source::Peer(&peer(0))).unwrap();
        assert_eq!((s.underruns, s.overflow_samples), (0, 0));
    }

    #[test]
    fn loud_mixes_are_limited_softly_never_clipped() {
        // Five tones at -6 dBFS each: the sum of four peaks near 2.0 full scale.
        let amplitude = 0.5;
        let (minus, local, _) = run(amplitude, [1.0; 5], 1500);
        let ceiling = LimiterConfig::default().ceiling;
        for (i, mix) in minus.iter().enumerate().chain([(5, &local)]) {
            let peak = mix.iter().map(|s| s.unsigned_abs()).max().unwrap();
            // Within rounding (half a step) of the ceiling.
            assert!(
                f32::from(peak) <= ceiling * 32768.0 + 0.5,
                "mix {i}: peak {peak} above the ceiling"
            );
            assert!(peak < 32767, "mix {i} clipped");
            let levels: Vec<f64> = TONES
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &f)| db(goertzel_amplitude(mix, 48_000, f)))
                .collect();
            // The limiter lowers all tones together: they stay within 1 dB of each other,
            // and still clearly above everything else.
            let (lo, hi) = levels
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &l| (a.min(l), b.max(l)));
            assert!(hi - lo < 1.0, "mix {i}: tone levels spread {lo}..{hi} dB");
            if i < 5 {
                let own = db(goertzel_amplitude(mix, 48_000, TONES[i]));
                assert!(own < lo - 30.0, "mix {i}: own tone at {own} dB vs {lo} dB");
            }
        }
    }

    #[test]
    fn soft_curve_is_monotonic_and_bounded() {
        let mut last = 0.0;
        for i in 1..=4000 {
            let y = soft_saturate(i as f32 * 0.001);
            // Monotonic up to rounding where the curve flattens out.
            assert!(y >= last - 1e-6 && y <= 1.0, "{i}: {y} after {last}");
            last = y;
        }
        assert_eq!(soft_saturate(3.0), 1.0);
        assert!((soft_saturate(0.1) - 0.1f32.tanh()).abs() < 1e-4);
    }

    #[test]
    fn limiter_passes_below_the_knee_and_never_exceeds_the_ceiling() {
        let mut l = Limiter::new(LimiterConfig::default()).unwrap();
        let quiet: Vec<f32> = (0..4800).map(|n| 0.5 * (n as f32 * 0.05).sin()).collect();
        let mut out = vec![0; quiet.len()];
        l.process(&quiet, 1, &mut out);
        for (x, y) in quiet.iter().zip(&out) {
            assert_eq!(*y, to_i16(*x));
        }
        assert_eq!(l.limited_samples(), 0);
        // A square wave at 4x full scale, stereo.
        let loud: Vec<f32> = (0..9600)
            .map(|n| if (n / 200) % 2 == 0 { 4.0 } else { -4.0 })
            .collect();
        let mut out = vec![0; loud.len()];
        l.process(&loud, 2, &mut out);
        let peak = out.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak <= 32113 && peak > 30_000, "peak {peak}");
        assert!(Limiter::new(LimiterConfig {
            knee: 1.0,
            ceiling: 0.5,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn buffers_absorb_phase_and_report_underruns_and_overflows() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        let a = peer(0);
        let chunk = tone_i16(48_000, 440.0, 0.2, 480, 0);
        let audio = AudioIn {
            samples: &chunk,
            channels: 1,
        };
        // Nothing yet: silence, not an underrun.
        m.add_input(Source::Peer(&a));
        m.mix(false);
        assert_eq!(m.input_stats(Source::Peer(&a)).unwrap().underruns, 0);
        m.push(Source::Peer(&a), audio);
        m.mix(false);
        assert!(m.local_mix().iter().any(|&s| s != 0));
        // A tick before the next chunk: one underrun, and the chunk is kept for later.
        m.mix(false);
        assert_eq!(m.input_stats(Source::Peer(&a)).unwrap().underruns, 1);
        assert!(m.local_mix().iter().all(|&s| s == 0));
        m.push(Source::Peer(&a), audio);
        m.push(Source::Peer(&a), audio);
        m.mix(false);
        assert_eq!(m.buffered(Source::Peer(&a)), Some(480));
        // Flooding: the buffer keeps the newest 80 ms.
        for _ in 0..20 {
            m.push(Source::Peer(&a), audio);
        }
        assert_eq!(m.buffered(Source::Peer(&a)), Some(3840));
        let s = m.input_stats(Source::Peer(&a)).unwrap();
        assert_eq!(s.overflow_samples, 480 + 20 * 480 - 3840);
        // One block larger than the buffer keeps its newest part, in order.
        let ramp: Vec<i16> = (0..5000).map(|i| i as i16).collect();
        m.push(
            Source::Peer(&a),
            AudioIn {
                samples: &ramp,
                channels: 1,
            },
        );
        assert_eq!(m.buffered(Source::Peer(&a)), Some(3840));
        m.set_gain(Source::Peer(&a), 1.0);
        m.mix(false);
        let expect: Vec<i16> = (5000 - 3840..5000 - 3840 + 480).map(|i| i as i16).collect();
        assert_eq!(m.local_mix(), &expect[..]);
    }

    #[test]
    fn stereo_mixer_takes_mono_and_stereo_inputs() {
        let mut m = Mixer::new(MixerConfig {
            channels: 2,
            ..Default::default()
        })
        .unwrap();
        let (a, b) = (peer(0), peer(1));
        let mono = vec![1000i16; 480];
        let stereo: Vec<i16> = (0..960)
            .map(|i| if i % 2 == 0 { 2000 } else { -2000 })
            .collect();
        m.push(
            Source::Peer(&a),
            AudioIn {
                samples: &mono,
                channels: 1,
            },
        );
        m.push(
            Source::Peer(&b),
            AudioIn {
                samples: &stereo,
                channels: 2,
            },
        );
        m.mix(true);
        assert_eq!(m.local_mix().len(), 960);
        assert!(m.local_mix().chunks(2).all(|f| f == [3000, -1000]));
        assert!(m
            .minus_mix(&a)
            .unwrap()
            .chunks(2)
            .all(|f| f == [2000, -2000]));
        assert!(m
            .minus_mix(&b)
            .unwrap()
            .chunks(2)
            .all(|f| f == [1000, 1000]));
    }

    #[test]
    fn local_input_goes_into_minus_mixes_only() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        let a = peer(0);
        let mic = vec![500i16; 480];
        let remote = vec![300i16; 480];
        m.push(
            Source::Local,
            AudioIn {
                samples: &mic,
                channels: 1,
            },
        );
        m.push(
            Source::Peer(&a),
            AudioIn {
                samples: &remote,
                channels: 1,
            },
        );
        m.mix(true);
        assert!(m.local_mix().iter().all(|&s| s == 300));
        assert!(m.minus_mix(&a).unwrap().iter().all(|&s| s == 500));
        assert_eq!(m.minus_mixes().count(), 1);
    }

    #[test]
    fn bad_configs_are_rejected() {
        for c in [
            MixerConfig {
                channels: 3,
                ..Default::default()
            },
            MixerConfig {
                frame: Duration::ZERO,
                ..Default::default()
            },
            MixerConfig {
                max_buffer: Duration::from_millis(15),
                ..Default::default()
            },
        ] {
            assert!(Mixer::new(c).is_err());
        }
    }
}
