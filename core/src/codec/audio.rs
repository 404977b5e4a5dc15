//! Opus audio: the PCM types, the encoder and the decoder

use std::time::Duration;

use bytes::Bytes;

use super::CodecError;

/// Sample rate of all Opus PCM in this module, in Hz
const OPUS_RATE: u32 = 48_000;

/// Samples per channel in 2.5 ms at 48 kHz, the granularity of Opus frame sizes
const OPUS_GRANULE: usize = 120;

/// Samples per channel in 120 ms at 48 kHz, the longest Opus packet
const OPUS_MAX_SAMPLES: usize = 5_760;

/// Largest encoded packet we ask libopus for (the format's own limit is 1275 bytes per frame,
/// three frames for 60 ms)
const MAX_PACKET: usize = 4_000;

/// The shape of raw audio: sample rate and channel count
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioFormat {
    /// Samples per second per channel; 48 000 for Opus
    pub sample_rate: u32,
    /// Channel count: 1 (mono) or 2 (stereo)
    pub channels: u16,
}

impl AudioFormat {
    /// Samples per channel in `duration`, rounded down
    pub fn samples_per_channel(&self, duration: Duration) -> usize {
        (duration.as_nanos() * u128::from(self.sample_rate) / 1_000_000_000) as usize
    }
}

/// Decoded audio: interleaved signed 16-bit samples
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcmFrame {
    /// Interleaved samples (`L R L R ...` for stereo)
    pub samples: Vec<i16>,
    /// Channel count: 1 or 2
    pub channels: u16,
    /// Samples per second per channel
    pub sample_rate: u32,
}

impl PcmFrame {
    /// Sample rate and channel count
    pub const fn format(&self) -> AudioFormat {
        AudioFormat {
            sample_rate: self.sample_rate,
            channels: self.channels,
        }
    }

    /// Number of samples in each channel
    pub fn samples_per_channel(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// Playing time of the frame
    pub fn duration(&self) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(
            self.samples_per_channel() as u64 * 1_000_000_000 / u64::from(self.sample_rate),
        )
    }

    /// The samples of one channel (0 is left), de-interleaved; empty if there is no such channel
    pub fn channel(&self, index: u16) -> Vec<i16> {
        if index >= self.channels {
            return Vec::new();
        }
        self.samples
            .iter()
            .skip(usize::from(index))
            .step_by(usize::from(self.channels))
            .copied()
            .collect()
    }
}

/// Configuration of an [`OpusEncoder`]; always 48 kHz
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusConfig {
    /// 1 (mono, tuned for voice) or 2 (stereo, tuned for general audio)
    pub channels: u16,
    /// Frame duration in ms: 10, 20, 40 or 60
    pub frame_ms: u32,
    /// Target bitrate in bit/s, 6 000..=510 000
    pub bitrate_bps: u32,
    /// In-band forward error correction: each packet also carries a coarse copy of the
    /// previous frame (needs `expected_loss_pct > 0` to take effect)
    pub fec: bool,
    /// Discontinuous transmission: during silence the encoder emits packets of at most two
    /// bytes (which the sender may skip), with a comfort-noise update every 400 ms
    pub dtx: bool,
    /// Expected packet loss in percent, 0..=100; tunes FEC strength
    pub expected_loss_pct: u8,
}

impl Default for OpusConfig {
    /// Mono, 20 ms, 32 kbit/s, FEC on for 5 % expected loss, no DTX
    fn default() -> Self {
        Self {
            channels: 1,
            frame_ms: 20,
            bitrate_bps: 32_000,
            fec: true,
            dtx: false,
            expected_loss_pct: 5,
        }
    }
}

impl OpusConfig {
    fn check(&self) -> Result<(), CodecError> {
        let bad = |what: String| Err(CodecError::InvalidConfig(what));
        if !matches!(self.channels, 1 | 2) {
            return bad(format!("opus channels {} is not 1 or 2", self.channels));
        }
        if !matches!(self.frame_ms, 10 | 20 | 40 | 60) {
            return bad(format!(
                "opus frame of {} ms is not 10, 20, 40 or 60",
                self.frame_ms
            ));
        }
        if !(6_000..=510_000).contains(&self.bitrate_bps) {
            return bad(format!(
                "opus bitrate {} bit/s is not in 6000..=510000",
                self.bitrate_bps
            ));
        }
        if self.expected_loss_pct > 100 {
            return bad(format!(
                "expected loss {} % is above 100",
                self.expected_loss_pct
            ));
        }
        Ok(())
    }
}

/// The settings of an [`OpusEncoder`] that may change while it runs
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioParams {
    /// Target bitrate in bit/s, 6 000..=510 000
    pub bitrate_bps: u32,
    /// In-band forward error correction (takes effect with `expected_loss_pct > 0`)
    pub fec: bool,
    /// Expected packet loss in percent, 0..=100; the more, the more bits go to FEC
    pub expected_loss_pct: u8,
}

impl AudioParams {
    /// These settings with FEC and expected loss following a measured loss fraction
    /// (0.0..=1.0, e.g. RTCP's `fraction_lost`)
    ///
    /// FEC turns on from 2 % loss and off again below 1 % (hysteresis, so that it does not
    /// flap on noise); the expected loss is the measured one rounded up, at most 30 % (above
    /// that libopus spends most of the bitrate on FEC and little on the audio itself).
    pub fn following_loss(self, loss: f32) -> Self {
        // Less a hair, so that 0.2 (20.000000298 as an f32) is 20 %.
        let pct = (f64::from(loss.clamp(0.0, 1.0)) * 100.0 - 1e-4).ceil() as u8;
        let fec = if self.fec { pct >= 1 } else { pct >= 2 };
        Self {
            fec,
            expected_loss_pct: if fec { pct.min(30) } else { 0 },
            ..self
        }
    }

    /// The run-time settings of `cfg`
    pub const fn of(cfg: &OpusConfig) -> Self {
        Self {
            bitrate_bps: cfg.bitrate_bps,
            fec: cfg.fec,
            expected_loss_pct: cfg.expected_loss_pct,
        }
    }
}

/// An Opus encoder at 48 kHz
pub struct OpusEncoder {
    inner: imp::Encoder,
    cfg: OpusConfig,
    frame_samples: usize,
    /// Encoder output, copied into an exactly sized `Bytes` per packet
    scratch: Vec<u8>,
}

impl OpusEncoder {
    /// Creates an encoder
    ///
    /// Fails with [`CodecError::InvalidConfig`] for out-of-range settings and
    /// [`CodecError::Unsupported`] when the `opus` feature is off.
    pub fn new(cfg: OpusConfig) -> Result<Self, CodecError> {
        cfg.check()?;
        Ok(Self {
            inner: imp::Encoder::new(&cfg)?,
            frame_samples: OPUS_RATE as usize / 1000 * cfg.frame_ms as usize,
            cfg,
            scratch: vec![0; MAX_PACKET],
        })
    }

    /// Encodes exactly one frame: `frame_samples() * channels` interleaved samples
    ///
    /// Returns one Opus packet, the RTP payload as is.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Bytes, CodecError> {
        let want = self.frame_samples * usize::from(self.cfg.channels);
        if pcm.len() != want {
            return Err(CodecError::InvalidInput(format!(
                "opus frame needs {want} samples, got {}",
                pcm.len()
            )));
        }
        let len = self.inner.encode(pcm, &mut self.scratch)?;
        Ok(Bytes::copy_from_slice(&self.scratch[..len]))
    }

    /// Samples per channel in one frame (960 for 20 ms)
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// The current configuration: as created, with the changes made since
    pub fn config(&self) -> &OpusConfig {
        &self.cfg
    }

    /// Changes bitrate, FEC and expected loss, from the next frame on
    ///
    /// Out-of-range values give [`CodecError::InvalidConfig`] and change nothing.
    pub fn set_params(&mut self, params: AudioParams) -> Result<(), CodecError> {
        let cfg = OpusConfig {
            bitrate_bps: params.bitrate_bps,
            fec: params.fec,
            expected_loss_pct: params.expected_loss_pct,
            ..self.cfg
        };
        cfg.check()?;
        self.inner.set_params(&cfg)?;
        self.cfg = cfg;
        Ok(())
    }
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// An Opus decoder at 48 kHz
///
/// Decodes packets of any frame size and channel layout into the decoder's channel count.
pub struct OpusDecoder {
    inner: imp::Decoder,
    channels: u16,
}

impl OpusDecoder {
    /// Creates a decoder producing `channels` (1 or 2) channels
    ///
    /// Fails with [`CodecError::InvalidConfig`] for another channel count and
    /// [`CodecError::Unsupported`] when the `opus` feature is off.
    pub fn new(channels: u16) -> Result<Self, CodecError> {
        if !matches!(channels, 1 | 2) {
            return Err(CodecError::InvalidConfig(format!(
                "opus channels {channels} is not 1 or 2"
            )));
        }
        Ok(Self {
            inner: imp::Decoder::new(channels)?,
            channels,
        })
    }

    /// Decodes one packet
    ///
    /// A malformed packet (including an empty one) gives [`CodecError::Decode`]; for a lost
    /// packet call [`conceal`](Self::conceal) or [`decode_fec`](Self::decode_fec) instead.
    pub fn decode(&mut self, packet: &[u8]) -> Result<PcmFrame, CodecError> {
        if packet.is_empty() {
            return Err(CodecError::Decode("empty opus packet".into()));
        }
        let samples = Self::packet_samples(packet)?;
        self.run(packet, samples, false)
    }

    /// Packet loss concealment: synthesises `samples_per_channel` samples to stand in for a
    /// lost packet
    ///
    /// `samples_per_channel` is the lost packet's duration: a multiple of 120 (2.5 ms), at most
    /// 5760 (120 ms); [`CodecError::InvalidInput`] otherwise.
    pub fn conceal(&mut self, samples_per_channel: usize) -> Result<PcmFrame, CodecError> {
        check_plc_samples(samples_per_channel)?;
        self.run(&[], samples_per_channel, false)
    }

    /// Recovers a lost packet from the FEC data in the packet that followed it
    ///
    /// `samples` is the lost packet's duration per channel, as for [`conceal`](Self::conceal).
    /// If `next_packet` carries no FEC data this falls back to concealment. Decode
    /// `next_packet` itself afterwards as usual.
    pub fn decode_fec(
        &mut self,
        next_packet: &[u8],
        samples: usize,
    ) -> Result<PcmFrame, CodecError> {
        check_plc_samples(samples)?;
        if next_packet.is_empty() {
            return Err(CodecError::Decode("empty opus packet".into()));
        }
        self.run(next_packet, samples, true)
    }

    /// Whether a packet carries in-band FEC for the packet before it (an LBRR frame), so that
    /// [`decode_fec`](Self::decode_fec) recovers that packet rather than concealing it
    ///
    /// Only SILK and hybrid packets can (RFC 6716, 4.2.4); false for anything unparsable.
    pub fn packet_has_fec(packet: &[u8]) -> bool {
        imp::packet_has_fec(packet)
    }

    /// Duration of an Opus packet in samples per channel at 48 kHz, read from its header
    pub fn packet_samples(packet: &[u8]) -> Result<usize, CodecError> {
        let samples = imp::packet_samples(packet)?;
        if samples == 0 || samples > OPUS_MAX_SAMPLES {
            return Err(CodecError::Decode(format!(
                "opus packet of {samples} samples"
            )));
        }
        Ok(samples)
    }

    /// Channel count of the decoded audio
    pub fn channels(&self) -> u16 {
        self.channels
    }

    fn run(&mut self, packet: &[u8], samples: usize, fec: bool) -> Result<PcmFrame, CodecError> {
        let mut out = vec![0; samples * usize::from(self.channels)];
        let got = self.inner.decode(packet, &mut out, fec)?;
        out.truncate(got * usize::from(self.channels));
        Ok(PcmFrame {
            samples: out,
            channels: self.channels,
            sample_rate: OPUS_RATE,
        })
    }
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

fn check_plc_samples(samples: usize) -> Result<(), CodecError> {
    if samples == 0 || !samples.is_multiple_of(OPUS_GRANULE) || samples > OPUS_MAX_SAMPLES {
        return Err(CodecError::InvalidInput(format!(
            "{samples} samples is not a multiple of 2.5 ms up to 120 ms"
        )));
    }
    Ok(())
}

#[cfg(feature = "opus")]
mod imp {
    use opus::{Application, Bitrate, Channels};

    use super::{OpusConfig, OPUS_RATE};
    use crate::codec::CodecError;

    pub(super) struct Encoder(opus::Encoder);

    impl Encoder {
        pub(super) fn new(cfg: &OpusConfig) -> Result<Self, CodecError> {
            let lib = |e: opus::Error| CodecError::Library(e.to_string());
            // As libwebrtc does: voice tuning for mono, general audio for stereo.
            let (channels, app) = match cfg.channels {
                1 => (Channels::Mono, Application::Voip),
                _ => (Channels::Stereo, Application::Audio),
            };
            let enc = opus::Encoder::new(OPUS_RATE, channels, app).map_err(lib)?;
            let mut this = Self(enc);
            this.set_params(cfg)?;
            this.0.set_dtx(cfg.dtx).map_err(lib)?;
            Ok(this)
        }

        /// Applies bitrate, FEC and expected loss (all ctls libopus takes at any time)
        pub(super) fn set_params(&mut self, cfg: &OpusConfig) -> Result<(), CodecError> {
            let lib = |e: opus::Error| CodecError::Library(e.to_string());
            // Range-checked by OpusConfig::check, so the casts are lossless.
            self.0
                .set_bitrate(Bitrate::Bits(cfg.bitrate_bps as i32))
                .map_err(lib)?;
            self.0.set_inband_fec(cfg.fec).map_err(lib)?;
            self.0
                .set_packet_loss_perc(i32::from(cfg.expected_loss_pct))
                .map_err(lib)
        }

        pub(super) fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
            self.0
                .encode(pcm, out)
                .map_err(|e| CodecError::Library(e.to_string()))
        }
    }

    pub(super) struct Decoder(opus::Decoder);

    impl Decoder {
        pub(super) fn new(channels: u16) -> Result<Self, CodecError> {
            let channels = if channels == 1 {
                Channels::Mono
            } else {
                Channels::Stereo
            };
            opus::Decoder::new(OPUS_RATE, channels)
                .map(Self)
                .map_err(|e| CodecError::Library(e.to_string()))
        }

        pub(super) fn decode(
            &mut self,
            packet: &[u8],
            out: &mut [i16],
            fec: bool,
        ) -> Result<usize, CodecError> {
            self.0
                .decode(packet, out, fec)
                .map_err(|e| CodecError::Decode(e.to_string()))
        }
    }

    pub(super) fn packet_samples(packet: &[u8]) -> Result<usize, CodecError> {
        opus::packet::get_nb_samples(packet, OPUS_RATE)
            .map_err(|e| CodecError::Decode(e.to_string()))
    }

    pub(super) fn packet_has_fec(packet: &[u8]) -> bool {
        let Some(&toc) = packet.first() else {
            return false;
        };
        // Configurations 16..=31 are CELT only: no SILK layer, no LBRR.
        if toc >> 3 >= 16 {
            return false;
        }
        let Ok(per_frame) = opus::packet::get_samples_per_frame(packet, OPUS_RATE) else {
            return false;
        };
        let Ok(parsed) = opus::packet::parse(packet) else {
            return false;
        };
        let Some(first) = parsed.frames.first().and_then(|f| f.first()) else {
            return false;
        };
        // The SILK layer starts with one VAD flag per 20 ms SILK frame and then the LBRR flag,
        // per channel, each coded with probability one half: the leading bits of the frame.
        let silk_frames = (per_frame / 960).max(1) as u32;
        let mono = (first >> (7 - silk_frames)) & 1 == 1;
        let stereo = toc & 0x04 != 0 && (first >> (6 - 2 * silk_frames)) & 1 == 1;
        mono || stereo
    }
}

#[cfg(not(feature = "opus"))]
mod imp {
    use super::OpusConfig;
    use crate::codec::CodecError;

    const OFF: CodecError = CodecError::Unsupported("opus");

    pub(super) enum Encoder {}

    impl Encoder {
        pub(super) fn new(_: &OpusConfig) -> Result<Self, CodecError> {
            Err(OFF)
        }

        pub(super) fn encode(&mut self, _: &[i16], _: &mut [u8]) -> Result<usize, CodecError> {
            match *self {}
        }

        pub(super) fn set_params(&mut self, _: &OpusConfig) -> Result<(), CodecError> {
            match *self {}
        }
    }

    pub(super) enum Decoder {}

    impl Decoder {
        pub(super) fn new(_: u16) -> Result<Self, CodecError> {
            Err(OFF)
        }

        pub(super) fn decode(
            &mut self,
            _: &[u8],
            _: &mut [i16],
            _: bool,
        ) -> Result<usize, CodecError> {
            match *self {}
        }
    }

    pub(super) fn packet_samples(_: &[u8]) -> Result<usize, CodecError> {
        Err(OFF)
    }

    pub(super) fn packet_has_fec(_: &[u8]) -> bool {
        false
    }
}

#[cfg(all(test, not(feature = "opus")))]
mod tests_without_opus {
    use super::*;

    #[test]
    fn constructors_say_unsupported() {
        let e = OpusEncoder::new(OpusConfig::default()).unwrap_err();
        assert!(matches!(e, CodecError::Unsupported("opus")), "{e}");
        let e = OpusDecoder::new(1).unwrap_err();
        assert!(matches!(e, CodecError::Unsupported("opus")), "{e}");
    }
}

#[cfg(all(test, feature = "opus"))]
mod tests {
    use quickcheck::{QuickCheck, TestResult};

    use super::*;
    use crate::codec::testsrc::{tone_snr_db, Tone};

    /// Lowest SNR of the 440 Hz tone after a mono Opus round trip (32 kbit/s), in dB
    ///
    /// Measured with the tone at -12 dBFS, first 200 ms skipped: 25.3 (10 ms frames),
    /// 25.7 (20 ms), 25.7 (40 ms), 47.1 (60 ms). Mono uses the VoIP tuning (SILK, which
    /// shapes its noise perceptually rather than matching the waveform), hence the gap.
    const MIN_MONO_SNR_DB: f64 = 20.0;

    /// Lowest SNR of the tone after a stereo Opus round trip (64 kbit/s), in dB
    ///
    /// Measured as above: 42.0 (10 ms), 44.3 (20 ms), 42.8 (40 ms), 42.7 (60 ms), both
    /// channels alike.
    const MIN_STEREO_SNR_DB: f64 = 35.0;

    fn round_trip(channels: u16, frame_ms: u32) -> Vec<f64> {
        let cfg = OpusConfig {
            channels,
            frame_ms,
            bitrate_bps: 32_000 * u32::from(channels),
            fec: false,
            dtx: false,
            expected_loss_pct: 0,
        };
        let mut enc = OpusEncoder::new(cfg).unwrap();
        let mut dec = OpusDecoder::new(channels).unwrap();
        let mut tone = Tone::new(OPUS_RATE, channels);
        let n = enc.frame_samples();
        assert_eq!(n, 48 * frame_ms as usize);
        let mut decoded = PcmFrame {
            samples: Vec::new(),
            channels,
            sample_rate: OPUS_RATE,
        };
        // 1.2 s of audio.
        for _ in 0..(1200 / frame_ms) {
            let pcm = tone.next_samples(n);
            let packet = enc.encode(&pcm).unwrap();
            assert!(packet.len() > 2 && packet.len() < 1500, "{}", packet.len());
            let frame = dec.decode(&packet).unwrap();
            assert_eq!(frame.samples_per_channel(), n);
            assert_eq!(frame.channels, channels);
            decoded.samples.extend_from_slice(&frame.samples);
        }
        // Skip the codec's start-up (look-ahead delay and fade-in).
        let skip = 48 * 200;
        (0..channels)
            .map(|c| tone_snr_db(&decoded.channel(c)[skip..], OPUS_RATE, 440.0))
            .collect()
    }

    #[test]
    fn round_trip_snr() {
        for channels in [1, 2] {
            for frame_ms in [10, 20, 40, 60] {
                let snr = round_trip(channels, frame_ms);
                eprintln!("opus {channels} ch {frame_ms} ms: SNR {snr:.1?} dB");
                let min = if channels == 1 {
                    MIN_MONO_SNR_DB
                } else {
                    MIN_STEREO_SNR_DB
                };
                for s in snr {
                    assert!(s > min, "{channels} ch {frame_ms} ms: {s:.1} dB");
                }
            }
        }
    }

    #[test]
    fn concealment_fills_the_gap() {
        for channels in [1, 2] {
            let mut enc = OpusEncoder::new(OpusConfig {
                channels,
                ..OpusConfig::default()
            })
            .unwrap();
            let mut dec = OpusDecoder::new(channels).unwrap();
            let mut tone = Tone::new(OPUS_RATE, channels);
            for _ in 0..5 {
                let packet = enc.encode(&tone.next_samples(960)).unwrap();
                dec.decode(&packet).unwrap();
            }
            let plc = dec.conceal(960).unwrap();
            assert_eq!(plc.samples.len(), 960 * usize::from(channels));
            assert_eq!(plc.duration(), Duration::from_millis(20));
            // Concealment continues the tone rather than going silent.
            assert!(plc.samples.iter().any(|&s| s.unsigned_abs() > 1000));
            assert_eq!(dec.conceal(120).unwrap().samples_per_channel(), 120);
            assert_eq!(dec.conceal(5760).unwrap().samples_per_channel(), 5760);
            for bad in [0, 100, 5880] {
                assert!(matches!(dec.conceal(bad), Err(CodecError::InvalidInput(_))));
            }
        }
    }

    #[test]
    fn fec_recovers_a_lost_packet() {
        let mut enc = OpusEncoder::new(OpusConfig {
            fec: true,
            expected_loss_pct: 20,
            ..OpusConfig::default()
        })
        .unwrap();
        let mut dec = OpusDecoder::new(1).unwrap();
        let mut tone = Tone::new(OPUS_RATE, 1);
        let packets: Vec<Bytes> = (0..20)
            .map(|_| enc.encode(&tone.next_samples(960)).unwrap())
            .collect();
        for p in &packets[..10] {
            dec.decode(p).unwrap();
        }
        // Packet 10 is lost; recover it from packet 11.
        let recovered = dec.decode_fec(&packets[11], 960).unwrap();
        assert_eq!(recovered.samples.len(), 960);
        let next = dec.decode(&packets[11]).unwrap();
        assert_eq!(next.samples.len(), 960);
        let mut joined = recovered.samples;
        joined.extend_from_slice(&next.samples);
        assert!(tone_snr_db(&joined, OPUS_RATE, 440.0) > 5.0);
    }

    #[test]
    fn params_follow_loss_with_hysteresis() {
        let base = AudioParams {
            bitrate_bps: 32_000,
            fec: false,
            expected_loss_pct: 0,
        };
        let p = base.following_loss(0.005);
        assert!(!p.fec && p.expected_loss_pct == 0);
        let p = base.following_loss(0.03);
        assert!(p.fec && p.expected_loss_pct == 3);
        // On at 1 %: stays on; off only below it.
        assert!(p.following_loss(0.01).fec);
        assert!(!p.following_loss(0.0).fec);
        assert_eq!(base.following_loss(0.9).expected_loss_pct, 30);
        assert_eq!(base.following_loss(f32::NAN).expected_loss_pct, 0);

        // Applied to a running encoder that had FEC off: a lost packet now comes back from
        // the one after it.
        let mut enc = OpusEncoder::new(OpusConfig {
            fec: false,
            expected_loss_pct: 0,
            ..OpusConfig::default()
        })
        .unwrap();
        enc.set_params(AudioParams::of(enc.config()).following_loss(0.2))
            .unwrap();
        assert!(enc.config().fec && enc.config().expected_loss_pct == 20);
        let mut tone = Tone::new(OPUS_RATE, 1);
        let packets: Vec<Bytes> = (0..12)
            .map(|_| enc.encode(&tone.next_samples(960)).unwrap())
            .collect();
        let mut dec = OpusDecoder::new(1).unwrap();
        for p in &packets[..10] {
            dec.decode(p).unwrap();
        }
        let recovered = dec.decode_fec(&packets[11], 960).unwrap();
        assert!(recovered.samples.iter().any(|&s| s.unsigned_abs() > 1000));
    }

    #[test]
    fn dtx_shrinks_silence() {
        let mut enc = OpusEncoder::new(OpusConfig {
            dtx: true,
            ..OpusConfig::default()
        })
        .unwrap();
        let sizes: Vec<usize> = (0..50)
            .map(|_| enc.encode(&[0; 960]).unwrap().len())
            .collect();
        // After a short hangover, silence costs a byte a frame, with a comfort-noise
        // update (about 20 bytes) every 400 ms.
        let tiny = sizes[20..].iter().filter(|&&s| s <= 2).count();
        assert!(tiny >= 25, "{sizes:?}");
    }

    #[test]
    fn misuse_is_reported() {
        let bad =
            |cfg: OpusConfig| matches!(OpusEncoder::new(cfg), Err(CodecError::InvalidConfig(_)));
        let base = OpusConfig::default();
        assert!(bad(OpusConfig {
            channels: 3,
            ..base
        }));
        assert!(bad(OpusConfig {
            frame_ms: 30,
            ..base
        }));
        assert!(bad(OpusConfig {
            bitrate_bps: 1_000,
            ..base
        }));
        assert!(bad(OpusConfig {
            expected_loss_pct: 101,
            ..base
        }));
        assert!(matches!(
            OpusDecoder::new(0),
            Err(CodecError::InvalidConfig(_))
        ));

        let mut enc = OpusEncoder::new(base).unwrap();
        assert!(matches!(
            enc.encode(&[0; 959]),
            Err(CodecError::InvalidInput(_))
        ));
        let mut dec = OpusDecoder::new(2).unwrap();
        assert!(matches!(dec.decode(&[]), Err(CodecError::Decode(_))));
        assert!(matches!(
            dec.decode_fec(&[], 960),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn mono_packets_decode_as_stereo() {
        let mut enc = OpusEncoder::new(OpusConfig::default()).unwrap();
        let mut dec = OpusDecoder::new(2).unwrap();
        let packet = enc
            .encode(&Tone::new(OPUS_RATE, 1).next_samples(960))
            .unwrap();
        assert_eq!(OpusDecoder::packet_samples(&packet).unwrap(), 960);
        assert_eq!(dec.decode(&packet).unwrap().samples.len(), 1920);
    }

    #[test]
    fn garbage_never_panics() {
        fn prop(channels: bool, packets: Vec<Vec<u8>>) -> TestResult {
            let mut dec = OpusDecoder::new(if channels { 2 } else { 1 }).unwrap();
            for p in packets {
                let _ = dec.decode(&p);
                let _ = dec.decode_fec(&p, 960);
            }
            TestResult::passed()
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(bool, Vec<Vec<u8>>) -> TestResult);

        // Truncations of a real packet.
        let mut enc = OpusEncoder::new(OpusConfig::default()).unwrap();
        let packet = enc
            .encode(&Tone::new(OPUS_RATE, 1).next_samples(960))
            .unwrap();
        let mut dec = OpusDecoder::new(1).unwrap();
        for len in 0..packet.len() {
            let _ = dec.decode(&packet[..len]);
        }
    }
}
