//! Measurement helpers for the pipeline's tests: tone generation, least-squares tone fits
//! (level and THD+N) and Goertzel spectra

use std::f64::consts::TAU;

/// `len` samples of a sine at `freq` Hz and peak `amplitude` (full scale 1.0)
pub(crate) fn tone_f32(rate: u32, freq: f64, amplitude: f64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|n| (amplitude * (TAU * freq * n as f64 / f64::from(rate)).sin()) as f32)
        .collect()
}

/// The same as 16-bit samples
pub(crate) fn tone_i16(rate: u32, freq: f64, amplitude: f64, len: usize, start: usize) -> Vec<i16> {
    (start..start + len)
        .map(|n| {
            (32768.0 * amplitude * (TAU * freq * n as f64 / f64::from(rate)).sin()).round() as i16
        })
        .collect()
}

/// A fitted tone
#[derive(Debug, Clone, Copy)]
pub(crate) struct ToneFit {
    /// Peak amplitude of the fitted sine (same units as the input)
    pub amplitude: f64,
    /// Power of everything else relative to the tone, in dB (THD+N)
    pub thd_n_db: f64,
}

/// Fits `a sin + b cos + c` at `freq` by least squares
pub(crate) fn fit_tone(x: &[f32], rate: u32, freq: f64) -> ToneFit {
    let w = TAU * freq / f64::from(rate);
    // Normal equations of the three-column fit, solved by Cramer's rule.
    let mut m = [[0.0f64; 3]; 3];
    let mut v = [0.0f64; 3];
    for (n, &y) in x.iter().enumerate() {
        let (s, c) = (w * n as f64).sin_cos();
        let row = [s, c, 1.0];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += row[i] * row[j];
            }
            v[i] += row[i] * f64::from(y);
        }
    }
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(&m);
    let mut coef = [0.0; 3];
    for (k, c) in coef.iter_mut().enumerate() {
        let mut mk = m;
        for i in 0..3 {
            mk[i][k] = v[i];
        }
        *c = det(&mk) / d;
    }
    let (mut sig, mut res) = (0.0, 0.0);
    for (n, &y) in x.iter().enumerate() {
        let (s, c) = (w * n as f64).sin_cos();
        let fit = coef[0] * s + coef[1] * c;
        sig += fit * fit;
        res += (f64::from(y) - fit - coef[2]).powi(2);
    }
    ToneFit {
        amplitude: coef[0].hypot(coef[1]),
        thd_n_db: 10.0 * (res.max(1e-30) / sig.max(1e-30)).log10(),
    }
}

/// Amplitude (peak, full scale 1.0) of the `freq` component of 16-bit samples, by
/// Goertzel's algorithm over a Hann window (exact for tones on a DFT bin; a little low
/// otherwise)
pub(crate) fn goertzel_amplitude(x: &[i16], rate: u32, freq: f64) -> f64 {
    let n = x.len();
    let w = TAU * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut wsum = 0.0;
    for (i, &v) in x.iter().enumerate() {
        let win = 0.5 - 0.5 * (TAU * i as f64 / n as f64).cos();
        wsum += win;
        let s0 = f64::from(v) / 32768.0 * win + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.max(0.0).sqrt() / wsum
}
