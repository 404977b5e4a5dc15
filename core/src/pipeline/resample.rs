//! Sample-rate and channel conversion: a streaming polyphase windowed-sinc resampler
//!
//! The ratio is kept exact as a fraction `up / down` in lowest terms (44 100 Hz to 48 000 Hz
//! is 160/147), so there is no long-term timing drift. Each output sample is a dot product of
//! `taps` input samples with one of the filter's phases: a Kaiser-windowed sinc whose cutoff
//! sits just below the Nyquist frequency of the lower of the two rates (passband flat to
//! about 0.42 of the lower rate, stopband from its Nyquist frequency, about 85 dB down).
//! Ratios with more than [`MAX_PHASES`] phases (or more phases than fit a table of 2^20
//! coefficients) use the nearest of that many.
//!
//! Channels are converted before the rate: to mono by averaging, from mono by copying, and
//! from three or more channels to stereo by averaging the even (left) and odd (right)
//! channels. Equal rates skip the filter entirely (bit-exact apart from channel mixing).
//!
//! Steady-state processing does not allocate once the internal buffers have grown to the
//! largest input seen.

use std::f64::consts::PI;

use crate::codec::AudioFormat;

use super::PipelineError;

/// Most filter phases kept; finer ratios use the nearest phase (time error below 1/8192
/// of a sample, i.e. below -90 dB for audio-band tones)
pub const MAX_PHASES: usize = 4096;

/// Lowest and highest sample rates accepted, in Hz
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// Most channels accepted on either side
pub const MAX_CHANNELS: u16 = 32;

/// Most filter coefficients kept (phases times taps)
const MAX_COEFFS: usize = 1 << 20;
/// Zero crossings of the sinc on each side of its centre, at the lower rate
const ZERO_CROSSINGS: f64 = 32.0;
/// Cutoff as a fraction of the lower rate's Nyquist frequency
const ROLLOFF: f64 = 0.916;
/// Kaiser window shape (about 85 dB stopband attenuation)
const KAISER_BETA: f64 = 8.4;

/// A streaming sample-rate and channel-count converter
///
/// Feed interleaved input with [`process`](Self::process) in any block sizes; output is
/// appended to the caller's vector. The filter is zero-phase: output sample `n` is the
/// signal at input time `n * from_rate / to_rate`, so the only latency is that the last
/// `taps / 2` input samples wait for their successors; [`flush`](Self::flush) releases
/// them at the end of a stream.
#[derive(Debug, Clone)]
pub struct Resampler {
    from: AudioFormat,
    to: AudioFormat,
    /// `None` when the rates are equal (channel conversion only)
    filter: Option<Filter>,
    /// Planar history, one per output channel
    history: Vec<Vec<f32>>,
    /// Index in each history of the first tap of the next output sample
    start: usize,
    /// Phase numerator of the next output sample, in `0..up`
    frac: u64,
    /// Scratch: one input frame's worth of converted channels
    scratch: Vec<f32>,
}

#[derive(Debug, Clone)]
struct Filter {
    up: u64,
    down: u64,
    taps: usize,
    /// Phases stored, `min(up, MAX_PHASES)`
    phases: usize,
    /// `phases * taps` coefficients, phase after phase
    coeffs: Vec<f32>,
}

impl Resampler {
    /// A converter from `from` to `to`
    ///
    /// Rates must be in [`RATE_RANGE`]; channel counts in `1..=MAX_CHANNELS`, and the output
    /// must have one channel, two, or as many as the input.
    pub fn new(from: AudioFormat, to: AudioFormat) -> Result<Self, PipelineError> {
        for f in [from, to] {
            if !RATE_RANGE.contains(&f.sample_rate) {
                return Err(PipelineError::InvalidConfig(format!(
                    "sample rate {} Hz is outside {}..={} Hz",
                    f.sample_rate,
                    RATE_RANGE.start(),
                    RATE_RANGE.end()
                )));
            }
            if f.channels == 0 || f.channels > MAX_CHANNELS {
                return Err(PipelineError::InvalidConfig(format!(
                    "{} channels is outside 1..={MAX_CHANNELS}",
                    f.channels
                )));
            }
        }
        if to.channels > 2 && to.channels != from.channels {
            return Err(PipelineError::InvalidConfig(format!(
                "cannot convert {} channels to {}",
                from.channels, to.channels
            )));
        }
        let filter = (from.sample_rate != to.sample_rate).then(|| Filter::new(from, to));
        let half = filter.as_ref().map_or(0, |f| f.taps / 2);
        let mut s = Self {
            from,
            to,
            filter,
            history: vec![Vec::new(); usize::from(to.channels)],
            start: 0,
            frac: 0,
            scratch: vec![0.0; usize::from(to.channels)],
        };
        s.prime(half);
        Ok(s)
    }

    /// The input format
    pub const fn from(&self) -> AudioFormat {
        self.from
    }

    /// The output format
    pub const fn to(&self) -> AudioFormat {
        self.to
    }

    /// Filter taps per output sample (0 when the rates are equal)
    pub fn taps(&self) -> usize {
        self.filter.as_ref().map_or(0, |f| f.taps)
    }

    /// Forgets all buffered input, as if newly created
    pub fn reset(&mut self) {
        let half = self.taps() / 2;
        self.prime(half);
    }

    fn prime(&mut self, half: usize) {
        for h in &mut self.history {
            h.clear();
            // Output sample 0 is centred on input sample 0: the taps before it see silence.
            h.resize(half.saturating_sub(1), 0.0);
        }
        self.start = 0;
        self.frac = 0;
    }

    /// Converts interleaved 16-bit input, appending interleaved output to `out`
    ///
    /// A trailing partial sample group (fewer values than channels) is ignored.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.push_input(input.iter().map(|&s| f32::from(s) * (1.0 / 32768.0)));
        self.produce(|v| out.push(to_i16(v)));
    }

    /// Converts interleaved float input (full scale ±1.0), appending to `out`
    pub fn process_f32(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.push_input(input.iter().copied());
        self.produce(|v| out.push(v));
    }

    /// Releases the input still held back at the end of a stream (as if followed by
    /// silence), then resets
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        self.flush_with(|v| out.push(to_i16(v)));
    }

    /// [`flush`](Self::flush) for float output
    pub fn flush_f32(&mut self, out: &mut Vec<f32>) {
        self.flush_with(|v| out.push(v));
    }

    fn flush_with(&mut self, emit: impl FnMut(f32)) {
        let half = self.taps() / 2;
        if half > 0 {
            // Output up to the time of the last real input sample, no further.
            let real_end = self.history[0].len();
            for h in &mut self.history {
                h.resize(h.len() + half + 1, 0.0);
            }
            self.produce_until(real_end.saturating_sub(half.saturating_sub(1)), emit);
        }
        self.reset();
    }

    /// How many output samples per channel `input_samples` per channel will give, roughly
    /// (for sizing buffers)
    pub fn output_len_hint(&self, input_samples: usize) -> usize {
        let (up, down) = self.filter.as_ref().map_or((1, 1), |f| (f.up, f.down));
        (input_samples as u64 * up).div_ceil(down) as usize + 1
    }

    fn push_input(&mut self, input: impl Iterator<Item = f32>) {
        let in_ch = usize::from(self.from.channels);
        let out_ch = usize::from(self.to.channels);
        let mut frame = [0.0f32; MAX_CHANNELS as usize];
        let mut i = 0;
        for v in input {
            frame[i] = v;
            i += 1;
            if i < in_ch {
                continue;
            }
            i = 0;
            mix_channels(&frame[..in_ch], &mut self.scratch[..out_ch]);
            for (h, &v) in self.history.iter_mut().zip(&self.scratch) {
                h.push(v);
            }
        }
    }

    fn produce(&mut self, emit: impl FnMut(f32)) {
        self.produce_until(usize::MAX, emit);
    }

    /// Emits output samples while their taps are available, stopping before a window that
    /// would start at or after `limit`
    fn produce_until(&mut self, limit: usize, mut emit: impl FnMut(f32)) {
        let len = self.history[0].len();
        match &self.filter {
            None => {
                for n in self.start..len {
                    for h in &self.history {
                        emit(h[n]);
                    }
                }
                self.start = len;
            }
            Some(f) => {
                while self.start + f.taps <= len && self.start < limit {
                    let phase = if f.phases as u64 == f.up {
                        self.frac as usize
                    } else {
                        // Nearest stored phase; the last one wraps to phase 0 of the next
                        // input sample, which the stored table does not hold, so clamp.
                        ((self.frac * f.phases as u64 + f.up / 2) / f.up).min(f.phases as u64 - 1)
                            as usize
                    };
                    let c = &f.coeffs[phase * f.taps..(phase + 1) * f.taps];
                    for h in &self.history {
                        emit(dot(&h[self.start..self.start + f.taps], c));
                    }
                    self.frac += f.down;
                    self.start += (self.frac / f.up) as usize;
                    self.frac %= f.up;
                }
            }
        }
        // Drop consumed history now and then (amortised; no allocation).
        if self.start >= 4096 && self.start * 2 >= len {
            for h in &mut self.history {
                h.drain(..self.start.min(h.len()));
            }
            self.start = 0;
        }
    }
}

impl Filter {
    fn new(from: AudioFormat, to: AudioFormat) -> Self {
        let g = gcd(u64::from(from.sample_rate), u64::from(to.sample_rate));
        let up = u64::from(to.sample_rate) / g;
        let down = u64::from(from.sample_rate) / g;
        // Cutoff in cycles per input sample, below the lower rate's Nyquist frequency.
        let ratio = (up as f64 / down as f64).min(1.0);
        let cutoff = 0.5 * ROLLOFF * ratio;
        let half_width = ZERO_CROSSINGS / (2.0 * cutoff);
        let half = half_width.ceil() as usize;
        let taps = 2 * half;
        // At most MAX_COEFFS coefficients (4 MiB), whatever rate a file declares.
        let phases = (up as usize)
            .min(MAX_PHASES)
            .min((MAX_COEFFS / taps).max(64));
        let mut coeffs = vec![0.0f32; phases * taps];
        let i0 = bessel_i0(KAISER_BETA);
        let mut tmp = vec![0.0f64; taps];
        for p in 0..phases {
            let offset = p as f64 / phases as f64;
            let row = &mut coeffs[p * taps..(p + 1) * taps];
            let mut sum = 0.0;
            for (j, c) in tmp.iter_mut().enumerate() {
                // Distance from this tap's input sample to the output instant.
                let t = offset + (half as f64 - 1.0) - j as f64;
                let x = t / half_width;
                let w = if x.abs() >= 1.0 {
                    0.0
                } else {
                    bessel_i0(KAISER_BETA * (1.0 - x * x).sqrt()) / i0
                };
                *c = 2.0 * cutoff * sinc(2.0 * cutoff * t) * w;
                sum += *c;
            }
            // Unity gain at DC for every phase (no phase-dependent ripple).
            for (r, c) in row.iter_mut().zip(&tmp) {
                *r = (c / sum) as f32;
            }
        }
        Self {
            up,
            down,
            taps,
            phases,
            coeffs,
        }
    }
}

/// Converts one input frame of channels to the output layout
fn mix_channels(input: &[f32], out: &mut [f32]) {
    match (input.len(), out.len()) {
        (a, b) if a == b => out.copy_from_slice(input),
        (1, _) => out.fill(input[0]),
        (n, 1) => out[0] = input.iter().sum::<f32>() / n as f32,
        (n, 2) => {
            let (mut l, mut r) = (0.0, 0.0);
            for (i, &v) in input.iter().enumerate() {
                if i % 2 == 0 {
                    l += v;
                } else {
                    r += v;
                }
            }
            out[0] = l / n.div_ceil(2) as f32;
            out[1] = r / (n / 2) as f32;
        }
        // Rejected by `Resampler::new`.
        _ => unreachable!("channel layout checked in Resampler::new; panic means bug"),
    }
}

/// Dot product with eight accumulators (lets the compiler vectorise)
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Rounds a ±1.0 float to a saturated 16-bit sample
pub(crate) fn to_i16(v: f32) -> i16 {
    // Round half away from zero without `f32::round` (a library call on baseline x86-64):
    // `as` truncates towards zero and saturates; NaN becomes 0.
    let y = v * 32768.0;
    (y + 0.5f32.copysign(y)) as i16
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    }
}

/// Modified Bessel function of the first kind, order 0 (power series)
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..64 {
        term *= (half / k as f64) * (half / k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

const fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::dsp::{fit_tone, tone_f32};

    fn fmt(sample_rate: u32, channels: u16) -> AudioFormat {
        AudioFormat {
            sample_rate,
            channels,
        }
    }

    /// Resamples a whole signal (mono f32), in uneven blocks to exercise the streaming
    fn run(from: u32, to: u32, input: &[f32]) -> Vec<f32> {
        let mut r = Resampler::new(fmt(from, 1), fmt(to, 1)).unwrap();
        let mut out = Vec::new();
        let mut rest = input;
        let mut block = 1;
        while !rest.is_empty() {
            let n = block.min(rest.len());
            r.process_f32(&rest[..n], &mut out);
            rest = &rest[n..];
            block = block * 3 % 997 + 1;
        }
        r.flush_f32(&mut out);
        out
    }

    #[test]
    fn tone_44k1_to_48k_keeps_frequency_and_level_with_low_distortion() {
        let input = tone_f32(44_100, 1000.0, 0.5, 44_100);
        let out = run(44_100, 48_000, &input);
        // Length follows the ratio exactly (one second in, one second out).
        assert!(
            (out.len() as i64 - 48_000).abs() <= 1,
            "{} samples",
            out.len()
        );
        // Skip the edges, where the signal starts and stops abruptly.
        let mid = &out[2_000..46_000];
        let fit = fit_tone(mid, 48_000, 1000.0);
        let level_db = 20.0 * (fit.amplitude / 0.5).log10();
        println!(
            "44.1k->48k 1 kHz: level {level_db:+.4} dB, THD+N {:.1} dB",
            fit.thd_n_db
        );
        assert!(level_db.abs() < 0.01, "level {level_db} dB");
        assert!(fit.thd_n_db < -80.0, "THD+N {} dB", fit.thd_n_db);
        // The frequency is right: a fit 0.5 Hz off explains far less of the signal.
        let off = fit_tone(mid, 48_000, 1000.5);
        assert!(off.thd_n_db > -30.0);
    }

    #[test]
    fn round_trip_48k_to_44k1_and_back() {
        let input = tone_f32(48_000, 3_000.0, 0.7, 48_000);
        let down = run(48_000, 44_100, &input);
        let back = run(44_100, 48_000, &down);
        let fit = fit_tone(&back[2_000..46_000], 48_000, 3_000.0);
        println!("48k->44.1k->48k 3 kHz: THD+N {:.1} dB", fit.thd_n_db);
        assert!((20.0 * (fit.amplitude / 0.7).log10()).abs() < 0.02);
        assert!(fit.thd_n_db < -75.0, "THD+N {} dB", fit.thd_n_db);
    }

    #[test]
    fn passband_is_flat() {
        for (from, to, freq) in [
            (44_100, 48_000, 15_000.0),
            (16_000, 48_000, 6_000.0),
            (48_000, 16_000, 6_000.0),
            (96_000, 48_000, 18_000.0),
        ] {
            let input = tone_f32(from, freq, 0.5, from as usize);
            let out = run(from, to, &input);
            let n = out.len();
            let fit = fit_tone(&out[n / 8..n * 7 / 8], to, freq);
            let db = 20.0 * (fit.amplitude / 0.5).log10();
            println!("{from}->{to} {freq} Hz: {db:+.3} dB");
            assert!(db.abs() < 0.1, "{from}->{to} {freq} Hz: {db} dB");
        }
    }

    #[test]
    fn stopband_rejects_aliases() {
        // 96 kHz -> 48 kHz: a 30 kHz tone would fold to 18 kHz.
        // 48 kHz -> 16 kHz: a 12 kHz tone would fold to 4 kHz.
        // 44.1 kHz -> 8 kHz: a 6 kHz tone would fold to 2 kHz.
        for (from, to, freq, alias) in [
            (96_000, 48_000, 30_000.0, 18_000.0),
            (48_000, 16_000, 12_000.0, 4_000.0),
            (44_100, 8_000, 6_000.0, 2_000.0),
        ] {
            let input = tone_f32(from, freq, 0.9, from as usize);
            let out = run(from, to, &input);
            let n = out.len();
            let fit = fit_tone(&out[n / 8..n * 7 / 8], to, alias);
            let atten = 20.0 * (fit.amplitude / 0.9).log10();
            println!("{from}->{to}: {freq} Hz aliases at {alias} Hz {atten:.1} dB");
            assert!(atten < -80.0, "{from}->{to}: alias at {atten} dB");
        }
    }

    #[test]
    fn transition_band_is_narrow() {
        // 96 kHz -> 48 kHz: the passband edge, and tones just above the output's Nyquist
        // frequency (24 kHz) folding back into the top of the band.
        let level = |freq: f64, at: f64| {
            let input = tone_f32(96_000, freq, 0.9, 96_000);
            let out = run(96_000, 48_000, &input);
            let n = out.len();
            20.0 * (fit_tone(&out[n / 8..n * 7 / 8], 48_000, at).amplitude / 0.9).log10()
        };
        let edge = level(19_000.0, 19_000.0);
        // The worst alias over the stopband, 24.25 kHz to 47.75 kHz in 500 Hz steps.
        let (worst_at, worst) = (0..48)
            .map(|k| {
                let f = 24_250.0 + 500.0 * f64::from(k);
                (f, level(f, 48_000.0 - f))
            })
            .fold((0.0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
        println!("96k->48k: 19 kHz {edge:+.3} dB; worst alias {worst:.1} dB (from {worst_at} Hz)");
        assert!(edge.abs() < 0.1);
        assert!(worst < -80.0, "{worst} dB from {worst_at} Hz");
    }

    #[test]
    fn equal_rates_are_exact_and_channels_convert() {
        let mut r = Resampler::new(fmt(48_000, 2), fmt(48_000, 2)).unwrap();
        let input: Vec<i16> = (0..960).map(|i| (i * 37 % 2000) as i16 - 1000).collect();
        let mut out = Vec::new();
        r.process(&input, &mut out);
        assert_eq!(out, input);

        let mut r = Resampler::new(fmt(48_000, 2), fmt(48_000, 1)).unwrap();
        let mut out = Vec::new();
        r.process(&[100, 300, -50, -150], &mut out);
        assert_eq!(out, [200, -100]);

        let mut r = Resampler::new(fmt(48_000, 1), fmt(48_000, 2)).unwrap();
        let mut out = Vec::new();
        r.process(&[7, -9], &mut out);
        assert_eq!(out, [7, 7, -9, -9]);

        // 5.1 to stereo: even channels left, odd right.
        let mut r = Resampler::new(fmt(48_000, 6), fmt(48_000, 2)).unwrap();
        let mut out = Vec::new();
        r.process(&[300, 30, 300, 30, 300, 30], &mut out);
        assert_eq!(out, [300, 30]);
    }

    #[test]
    fn stereo_channels_stay_apart() {
        let l = tone_f32(44_100, 440.0, 0.5, 22_050);
        let r = tone_f32(44_100, 2_500.0, 0.25, 22_050);
        let inter: Vec<i16> = l
            .iter()
            .zip(&r)
            .flat_map(|(&a, &b)| [to_i16(a), to_i16(b)])
            .collect();
        let mut rs = Resampler::new(fmt(44_100, 2), fmt(48_000, 2)).unwrap();
        let mut out = Vec::new();
        for block in inter.chunks(882) {
            rs.process(block, &mut out);
        }
        let left: Vec<f32> = out
            .iter()
            .step_by(2)
            .map(|&s| f32::from(s) / 32768.0)
            .collect();
        let right: Vec<f32> = out[1..]
            .iter()
            .step_by(2)
            .map(|&s| f32::from(s) / 32768.0)
            .collect();
        let fl = fit_tone(&left[1_000..20_000], 48_000, 440.0);
        let fr = fit_tone(&right[1_000..20_000], 48_000, 2_500.0);
        assert!((fl.amplitude - 0.5).abs() < 0.001, "{}", fl.amplitude);
        assert!((fr.amplitude - 0.25).abs() < 0.001, "{}", fr.amplitude);
        // 16-bit output: THD+N is bounded by quantisation (about -90 dB at these levels).
        assert!(fl.thd_n_db < -75.0 && fr.thd_n_db < -70.0);
    }

    #[test]
    fn odd_rates_use_nearest_phase() {
        // 44 056 Hz: 6 000 phases exceed MAX_PHASES.
        let input = tone_f32(44_056, 1000.0, 0.5, 44_056);
        let out = run(44_056, 48_000, &input);
        let fit = fit_tone(&out[2_000..46_000], 48_000, 1000.0);
        println!("44.056k->48k: THD+N {:.1} dB", fit.thd_n_db);
        assert!(fit.thd_n_db < -80.0);
    }

    #[test]
    fn odd_high_rates_keep_the_table_small() {
        // 767 999 Hz to 48 kHz: 48 000 phases of over a thousand taps, capped.
        let r = Resampler::new(fmt(767_999, 1), fmt(48_000, 1)).unwrap();
        let f = r.filter.as_ref().unwrap();
        assert!(f.coeffs.len() <= MAX_COEFFS, "{}", f.coeffs.len());
        let input = tone_f32(767_999, 1000.0, 0.5, 767_999 / 4);
        let out = run(767_999, 48_000, &input);
        let fit = fit_tone(&out[1_000..11_000], 48_000, 1000.0);
        assert!(fit.thd_n_db < -80.0, "{}", fit.thd_n_db);
    }

    #[test]
    fn bad_formats_are_rejected() {
        assert!(Resampler::new(fmt(0, 1), fmt(48_000, 1)).is_err());
        assert!(Resampler::new(fmt(48_000, 0), fmt(48_000, 1)).is_err());
        assert!(Resampler::new(fmt(48_000, 2), fmt(48_000, 6)).is_err());
        assert!(Resampler::new(fmt(48_000, 33), fmt(48_000, 1)).is_err());
        assert!(Resampler::new(fmt(10_000_000, 1), fmt(48_000, 1)).is_err());
    }
}
