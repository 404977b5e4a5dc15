//! WAV (RIFF WAVE) reading and writing

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::codec::AudioFormat;
use crate::pipeline::resample::{to_i16, Resampler, MAX_CHANNELS, RATE_RANGE};
use crate::pipeline::AUDIO_RATE;

use super::{read_full, FileError};

/// How samples are stored in a WAV file
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// Unsigned 8-bit integer
    U8,
    /// Signed 16-bit integer
    I16,
    /// Signed 24-bit integer
    I24,
    /// Signed 32-bit integer
    I32,
    /// 32-bit float
    F32,
    /// 64-bit float
    F64,
}

impl SampleFormat {
    /// Bytes per sample
    pub const fn bytes(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::I16 => 2,
            Self::I24 => 3,
            Self::I32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Self::U8 => (f32::from(b[0]) - 128.0) / 128.0,
            Self::I16 => f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0,
            Self::I24 => (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 8_388_608.0,
            Self::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0,
            Self::F32 => {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if v.is_finite() {
                    v
                } else {
                    0.0
                }
            }
            Self::F64 => {
                let v = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if v.is_finite() {
                    v as f32
                } else {
                    0.0
                }
            }
        }
    }
}

/// What a WAV file's header says
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// Samples per second per channel
    pub sample_rate: u32,
    /// Channels
    pub channels: u16,
    /// Sample storage
    pub format: SampleFormat,
    /// Bytes of sample data declared, when declared (streamed files leave it open)
    pub data_len: Option<u64>,
}

/// Bytes read from the input at a time
const BLOCK: usize = 16 * 1024;
/// Most chunks skipped before the data chunk
const MAX_CHUNKS: usize = 1024;

/// Reads a WAV file as 48 kHz 16-bit samples, mono or stereo
///
/// [`read`](Self::read) fills a buffer with interleaved samples; it returns 0 at the end of
/// the data. Memory use is bounded (a block of input and the resampler's state) whatever the
/// header declares. A data chunk cut short by the end of the input ends the stream early
/// ([`is_truncated`](Self::is_truncated)).
#[derive(Debug)]
pub struct WavReader<R> {
    reader: R,
    info: WavInfo,
    /// Declared data bytes not yet read (None: until the input ends)
    remaining: Option<u64>,
    block_align: usize,
    resampler: Resampler,
    raw: Vec<u8>,
    /// Bytes of `raw` filled (a partial frame may be carried over)
    filled: usize,
    decoded: Vec<f32>,
    pending: Vec<f32>,
    /// Samples of `pending` already handed out
    taken: usize,
    ended: bool,
    truncated: bool,
}

impl<R: Read> WavReader<R> {
    /// Parses the header of `reader`; output will have `channels` (1 or 2) at 48 kHz
    pub fn new(mut reader: R, channels: u16) -> Result<Self, FileError> {
        if !(1..=2).contains(&channels) {
            return Err(FileError::InvalidInput(format!(
                "output of {channels} channels, not 1 or 2"
            )));
        }
        let (info, remaining) = parse_header(&mut reader)?;
        let block_align = info.format.bytes() * usize::from(info.channels);
        let from = AudioFormat {
            sample_rate: info.sample_rate,
            channels: info.channels,
        };
        let to = AudioFormat {
            sample_rate: AUDIO_RATE,
            channels,
        };
        let resampler = Resampler::new(from, to)
            .map_err(|e| FileError::Unsupported(format!("cannot convert: {e}")))?;
        Ok(Self {
            reader,
            info,
            remaining,
            block_align,
            resampler,
            raw: vec![0; BLOCK - BLOCK % block_align],
            filled: 0,
            decoded: Vec::new(),
            pending: Vec::new(),
            taken: 0,
            ended: false,
            truncated: false,
        })
    }

    /// The header's description of the stored audio
    pub const fn info(&self) -> WavInfo {
        self.info
    }

    /// Channels handed out (1 or 2)
    pub const fn channels(&self) -> u16 {
        self.resampler.to().channels
    }

    /// Whether the input ended before the data chunk's declared length
    pub const fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Fills `out` with interleaved 48 kHz samples; returns how many were written (a whole
    /// number of frames), 0 at the end
    pub fn read(&mut self, out: &mut [i16]) -> Result<usize, FileError> {
        let ch = usize::from(self.channels());
        let want = out.len() - out.len() % ch;
        let mut n = 0;
        while n < want {
            if self.taken == self.pending.len() {
                self.pending.clear();
                self.taken = 0;
                if self.ended {
                    break;
                }
                // Each refill reads input or ends the stream, so this loop progresses.
                self.refill()?;
                continue;
            }
            let k = (want - n).min(self.pending.len() - self.taken);
            for (o, &v) in out[n..n + k]
                .iter_mut()
                .zip(&self.pending[self.taken..self.taken + k])
            {
                *o = to_i16(v);
            }
            n += k;
            self.taken += k;
        }
        Ok(n)
    }

    /// Reads everything left, at most `max_samples` (interleaved), into a vector
    pub fn read_to_end(&mut self, max_samples: usize) -> Result<Vec<i16>, FileError> {
        let mut all = Vec::new();
        let mut buf = vec![0; 4800];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(all);
            }
            if all.len() + n > max_samples {
                return Err(FileError::TooLarge(format!(
                    "more than {max_samples} samples"
                )));
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    /// The input, positioned somewhere in or after the data
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Reads and converts one block into `pending` (which may stay empty while the
    /// resampler fills its window)
    fn refill(&mut self) -> Result<(), FileError> {
        let space = self.raw.len() - self.filled;
        let want = match self.remaining {
            Some(r) => space.min(usize::try_from(r).unwrap_or(usize::MAX)),
            None => space,
        };
        let got = read_full(
            &mut self.reader,
            &mut self.raw[self.filled..self.filled + want],
        )?;
        if let Some(r) = self.remaining.as_mut() {
            *r -= got as u64;
        }
        let input_ended = got < want || self.remaining == Some(0);
        if got < want && self.remaining.is_some_and(|r| r > 0) {
            self.truncated = true;
        }
        self.filled += got;
        let whole = self.filled - self.filled % self.block_align;
        let bytes = self.info.format.bytes();
        self.decoded.clear();
        self.decoded.extend(
            self.raw[..whole]
                .chunks_exact(bytes)
                .map(|b| self.info.format.decode(b)),
        );
        self.raw.copy_within(whole..self.filled, 0);
        self.filled -= whole;
        self.resampler.process_f32(&self.decoded, &mut self.pending);
        if input_ended {
            // A trailing partial frame is dropped.
            self.resampler.flush_f32(&mut self.pending);
            self.ended = true;
        }
        Ok(())
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The GUID tail shared by the PCM and float `WAVE_FORMAT_EXTENSIBLE` subformats
const GUID_TAIL: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

fn parse_header(r: &mut impl Read) -> Result<(WavInfo, Option<u64>), FileError> {
    let mut riff = [0u8; 12];
    if read_full(r, &mut riff)? < 12 {
        return Err(FileError::Malformed("shorter than a RIFF header".into()));
    }
    if &riff[..4] != b"RIFF" || &riff[8..] != b"WAVE" {
        return Err(match &riff[..4] {
            b"RF64" | b"BW64" => FileError::Unsupported("RF64 wave files".into()),
            _ => FileError::Malformed("not a RIFF WAVE file".into()),
        });
    }
    let mut fmt: Option<WavInfo> = None;
    for _ in 0..MAX_CHUNKS {
        let mut head = [0u8; 8];
        if read_full(r, &mut head)? < 8 {
            return Err(FileError::Malformed(
                "no data chunk before the end of the file".into(),
            ));
        }
        let size = u64::from(u32_at(&head, 4));
        match &head[..4] {
            b"fmt " => {
                if size < 16 {
                    return Err(FileError::Malformed(format!("fmt chunk of {size} bytes")));
                }
                let mut body = [0u8; 40];
                let n = size.min(40) as usize;
                if read_full(r, &mut body[..n])? < n {
                    return Err(FileError::Malformed("fmt chunk cut short".into()));
                }
                skip(r, size - n as u64 + (size & 1))?;
                fmt = Some(parse_fmt(&body[..n])?);
            }
            b"data" => {
                let Some(info) = fmt else {
                    return Err(FileError::Malformed(
                        "data chunk before the fmt chunk".into(),
                    ));
                };
                // Streaming writers leave the size open (0 or all ones).
                let declared = (size != 0 && size != 0xFFFF_FFFF).then_some(size);
                return Ok((
                    WavInfo {
                        data_len: declared,
                        ..info
                    },
                    declared,
                ));
            }
            _ => skip(r, size + (size & 1))?,
        }
    }
    Err(FileError::Malformed(format!(
        "more than {MAX_CHUNKS} chunks before the data"
    )))
}

fn parse_fmt(b: &[u8]) -> Result<WavInfo, FileError> {
    let mut tag = u16_at(b, 0);
    let channels = u16_at(b, 2);
    let sample_rate = u32_at(b, 4);
    let block_align = u16_at(b, 12);
    let bits = u16_at(b, 14);
    if tag == 0xFFFE {
        if b.len() < 40 || u16_at(b, 16) < 22 {
            return Err(FileError::Malformed("short WAVE_FORMAT_EXTENSIBLE".into()));
        }
        if b[26..40] != GUID_TAIL {
            return Err(FileError::Unsupported(
                "unknown extensible subformat".into(),
            ));
        }
        tag = u16_at(b, 24);
    }
    let format = match (tag, bits) {
        (1, 8) => SampleFormat::U8,
        (1, 16) => SampleFormat::I16,
        (1, 24) => SampleFormat::I24,
        (1, 32) => SampleFormat::I32,
        (3, 32) => SampleFormat::F32,
        (3, 64) => SampleFormat::F64,
        (1 | 3, _) => {
            return Err(FileError::Unsupported(format!(
                "{bits}-bit {} samples",
                if tag == 1 { "integer" } else { "float" }
            )))
        }
        _ => {
            return Err(FileError::Unsupported(format!(
                "format tag {tag:#06x} (only PCM and IEEE float)"
            )))
        }
    };
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(FileError::Unsupported(format!("{channels} channels")));
    }
    if !RATE_RANGE.contains(&sample_rate) {
        return Err(FileError::Unsupported(format!("{sample_rate} Hz")));
    }
    if usize::from(block_align) != format.bytes() * usize::from(channels) {
        return Err(FileError::Malformed(format!(
            "block align {block_align} for {channels} channels of {bits} bits"
        )));
    }
    Ok(WavInfo {
        sample_rate,
        channels,
        format,
        data_len: None,
    })
}

/// Skips `n` bytes by reading them (the input need not seek); fails at the end of input
fn skip(r: &mut impl Read, n: u64) -> Result<(), FileError> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(FileError::Malformed(
            "a chunk runs past the end of the file".into(),
        ));
    }
    Ok(())
}

/// Writes 48 kHz 16-bit PCM WAV
///
/// The header is written first with open sizes; [`finish`](Self::finish) fills them in
/// (so the writer needs [`Seek`]). A writer dropped without `finish` still tries to fill
/// them in, ignoring errors; readers that accept streamed WAV (including [`WavReader`]) read
/// an unfinished file anyway.
#[derive(Debug)]
pub struct WavWriter<W: Write + Seek> {
    writer: Option<W>,
    channels: u16,
    data_bytes: u64,
    buf: Vec<u8>,
}

/// Largest data chunk a RIFF size field can describe
const MAX_DATA: u64 = 0xFFFF_FFFF - 36;

impl<W: Write + Seek> WavWriter<W> {
    /// Starts a file of `channels` (1 or 2) at 48 kHz, 16-bit
    pub fn new(mut writer: W, channels: u16) -> Result<Self, FileError> {
        if !(1..=2).contains(&channels) {
            return Err(FileError::InvalidInput(format!(
                "{channels} channels, not 1 or 2"
            )));
        }
        let block = 2 * channels;
        let mut h = Vec::with_capacity(44);
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&AUDIO_RATE.to_le_bytes());
        h.extend_from_slice(&(AUDIO_RATE * u32::from(block)).to_le_bytes());
        h.extend_from_slice(&block.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&0u32.to_le_bytes());
        writer.write_all(&h)?;
        Ok(Self {
            writer: Some(writer),
            channels,
            data_bytes: 0,
            buf: Vec::new(),
        })
    }

    /// Channels per frame
    pub const fn channels(&self) -> u16 {
        self.channels
    }

    /// Samples per channel written so far
    pub fn frames_written(&self) -> u64 {
        self.data_bytes / (2 * u64::from(self.channels))
    }

    /// Appends interleaved samples (a whole number of frames)
    pub fn write(&mut self, samples: &[i16]) -> Result<(), FileError> {
        if !samples.len().is_multiple_of(usize::from(self.channels)) {
            return Err(FileError::InvalidInput(format!(
                "{} samples are not whole frames of {} channels",
                samples.len(),
                self.channels
            )));
        }
        let bytes = 2 * samples.len() as u64;
        if self.data_bytes + bytes > MAX_DATA {
            return Err(FileError::InvalidInput(
                "a WAV file holds at most 4 GiB of samples".into(),
            ));
        }
        self.buf.clear();
        for s in samples {
            self.buf.extend_from_slice(&s.to_le_bytes());
        }
        // `writer` is only None after `finish`, which consumes self.
        let w = self
            .writer
            .as_mut()
            .expect("present until finish; panic means bug");
        w.write_all(&self.buf)?;
        self.data_bytes += bytes;
        Ok(())
    }

    /// Fills in the header's sizes and hands back the writer
    pub fn finish(mut self) -> Result<W, FileError> {
        let mut w = self
            .writer
            .take()
            .expect("present until finish; panic means bug");
        patch_sizes(&mut w, self.data_bytes)?;
        Ok(w)
    }
}

fn patch_sizes<W: Write + Seek>(w: &mut W, data: u64) -> io::Result<()> {
    let end = w.stream_position()?;
    let start = end - data - 44;
    // data <= MAX_DATA, so both sizes fit in u32.
    w.seek(SeekFrom::Start(start + 4))?;
    w.write_all(&((36 + data) as u32).to_le_bytes())?;
    w.seek(SeekFrom::Start(start + 40))?;
    w.write_all(&(data as u32).to_le_bytes())?;
    w.seek(SeekFrom::Start(end))?;
    w.flush()
}

impl<W: Write + Seek> Drop for WavWriter<W> {
    fn drop(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            let _ = patch_sizes(w, self.data_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::pipeline::dsp::fit_tone;

    /// A WAV file in any format, built by hand (`extensible` uses WAVE_FORMAT_EXTENSIBLE)
    fn wav_bytes(
        rate: u32,
        channels: u16,
        format: SampleFormat,
        extensible: bool,
        frames: &[Vec<f64>],
    ) -> Vec<u8> {
        let (tag, bits) = match format {
            SampleFormat::F32 => (3u16, 32u16),
            SampleFormat::F64 => (3, 64),
            f => (1, 8 * f.bytes() as u16),
        };
        let block = channels * bits / 8;
        let mut data = Vec::new();
        for frame in frames {
            for &v in frame {
                match format {
                    SampleFormat::U8 => data.push((v * 127.0 + 128.0).round() as u8),
                    SampleFormat::I16 => {
                        data.extend_from_slice(&((v * 32767.0).round() as i16).to_le_bytes())
                    }
                    SampleFormat::I24 => {
                        let s = (v * 8_388_607.0).round() as i32;
                        data.extend_from_slice(&s.to_le_bytes()[..3]);
                    }
                    SampleFormat::I32 => data
                        .extend_from_slice(&((v * 2_147_483_647.0).round() as i32).to_le_bytes()),
                    SampleFormat::F32 => data.extend_from_slice(&(v as f32).to_le_bytes()),
                    SampleFormat::F64 => data.extend_from_slice(&v.to_le_bytes()),
                }
            }
        }
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&(if extensible { 0xFFFE } else { tag }).to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        fmt.extend_from_slice(&block.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        if extensible {
            fmt.extend_from_slice(&22u16.to_le_bytes());
            fmt.extend_from_slice(&bits.to_le_bytes());
            fmt.extend_from_slice(&0u32.to_le_bytes());
            fmt.extend_from_slice(&tag.to_le_bytes());
            fmt.extend_from_slice(&GUID_TAIL);
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(b"WAVE");
        // An unknown chunk with an odd size (padded) before fmt.
        out.extend_from_slice(b"LIST");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&[1, 2, 3, 0]);
        out.extend_from_slice(b"fmt ");
        out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        out.extend_from_slice(&fmt);
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        let riff = (out.len() - 8) as u32;
        out[4..8].copy_from_slice(&riff.to_le_bytes());
        out
    }

    fn tone_frames(rate: u32, channels: u16, freq: f64, amp: f64, secs: f64) -> Vec<Vec<f64>> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| {
                let v = amp * (std::f64::consts::TAU * freq * i as f64 / f64::from(rate)).sin();
                // Channel k carries the tone at 1/(k+1) of the level, so mixing is visible.
                (0..channels).map(|k| v / f64::from(k + 1)).collect()
            })
            .collect()
    }

    #[test]
    fn round_trip_48k_16_bit_is_exact() {
        for channels in [1, 2] {
            let samples: Vec<i16> = (0..48_000 * usize::from(channels))
                .map(|i| ((i * 7919) % 65_536) as i32 as i16)
                .collect();
            let mut w = WavWriter::new(Cursor::new(Vec::new()), channels).unwrap();
            for block in samples.chunks(960 * usize::from(channels)) {
                w.write(block).unwrap();
            }
            assert_eq!(w.frames_written(), 48_000);
            let bytes = w.finish().unwrap().into_inner();
            assert_eq!(bytes.len(), 44 + samples.len() * 2);
            let mut r = WavReader::new(Cursor::new(bytes), channels).unwrap();
            assert_eq!(
                r.info(),
                WavInfo {
                    sample_rate: 48_000,
                    channels,
                    format: SampleFormat::I16,
                    data_len: Some(samples.len() as u64 * 2)
                }
            );
            let back = r.read_to_end(usize::MAX).unwrap();
            assert_eq!(back, samples);
            assert!(!r.is_truncated());
        }
    }

    #[test]
    fn every_sample_format_and_common_rate_reads_as_48k() {
        let formats = [
            SampleFormat::U8,
            SampleFormat::I16,
            SampleFormat::I24,
            SampleFormat::I32,
            SampleFormat::F32,
            SampleFormat::F64,
        ];
        let cases = [
            (8_000, 1),
            (11_025, 2),
            (16_000, 1),
            (22_050, 2),
            (32_000, 1),
            (44_100, 2),
            (48_000, 6),
            (88_200, 1),
            (96_000, 2),
        ];
        for (k, &(rate, channels)) in cases.iter().enumerate() {
            let format = formats[k % formats.len()];
            let extensible = k % 2 == 1;
            let bytes = wav_bytes(
                rate,
                channels,
                format,
                extensible,
                &tone_frames(rate, channels, 1000.0, 0.5, 0.5),
            );
            let mut r = WavReader::new(Cursor::new(bytes), 1).unwrap();
            assert_eq!(r.info().sample_rate, rate);
            assert_eq!(r.info().format, format);
            let out = r.read_to_end(1 << 20).unwrap();
            // Half a second at 48 kHz: output up to the time of the last input sample.
            let input = (f64::from(rate) * 0.5) as u64;
            assert_eq!(
                out.len() as u64,
                (input * 48_000).div_ceil(u64::from(rate)),
                "{rate}"
            );
            let x: Vec<f32> = out[4_000..20_000]
                .iter()
                .map(|&s| f32::from(s) / 32768.0)
                .collect();
            let fit = fit_tone(&x, 48_000, 1000.0);
            // Mono output is the mean of the channels (1, 1/2, 1/3, ...).
            let expect =
                0.5 * (1..=channels).map(|c| 1.0 / f64::from(c)).sum::<f64>() / f64::from(channels);
            let db = 20.0 * (fit.amplitude / expect).log10();
            let floor = if format == SampleFormat::U8 {
                -35.0
            } else {
                -70.0
            };
            println!(
                "{rate} Hz {channels} ch {format:?}: level {db:+.3} dB, THD+N {:.1} dB",
                fit.thd_n_db
            );
            assert!(db.abs() < 0.1, "{rate} Hz {format:?}: {db} dB");
            assert!(
                fit.thd_n_db < floor,
                "{rate} Hz {format:?}: {}",
                fit.thd_n_db
            );
        }
    }

    #[test]
    fn small_reads_and_stereo_output_work() {
        let bytes = wav_bytes(
            44_100,
            2,
            SampleFormat::I16,
            false,
            &tone_frames(44_100, 2, 440.0, 0.3, 0.2),
        );
        let mut r = WavReader::new(Cursor::new(bytes), 2).unwrap();
        let mut all = Vec::new();
        let mut buf = [0i16; 7];
        loop {
            let n = r.read(&mut buf).unwrap();
            // Whole stereo frames only.
            assert_eq!(n % 2, 0);
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        assert!((all.len() as i64 - 2 * 9_600).abs() <= 2);
        let left: Vec<f32> = all
            .iter()
            .step_by(2)
            .map(|&s| f32::from(s) / 32768.0)
            .collect();
        let right: Vec<f32> = all[1..]
            .iter()
            .step_by(2)
            .map(|&s| f32::from(s) / 32768.0)
            .collect();
        assert!((fit_tone(&left[500..9000], 48_000, 440.0).amplitude - 0.3).abs() < 0.002);
        assert!((fit_tone(&right[500..9000], 48_000, 440.0).amplitude - 0.15).abs() < 0.002);
    }

    #[test]
    fn streamed_and_truncated_files_read_what_is_there() {
        let mut bytes = wav_bytes(
            48_000,
            1,
            SampleFormat::I16,
            false,
            &tone_frames(48_000, 1, 440.0, 0.3, 0.1),
        );
        let data_at = bytes.len() - 9_600 - 4;
        // Streamed: size left open.
        let mut streamed = bytes.clone();
        streamed[data_at..data_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = WavReader::new(Cursor::new(streamed), 1).unwrap();
        assert_eq!(r.info().data_len, None);
        assert_eq!(r.read_to_end(usize::MAX).unwrap().len(), 4_800);
        // Truncated: declares 4 GB, holds 9 601 bytes (an odd trailing byte is dropped).
        bytes[data_at..data_at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        bytes.push(7);
        let mut r = WavReader::new(Cursor::new(bytes), 1).unwrap();
        assert_eq!(r.read_to_end(usize::MAX).unwrap().len(), 4_800);
        assert!(r.is_truncated());
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let good = wav_bytes(
            44_100,
            2,
            SampleFormat::I24,
            true,
            &tone_frames(44_100, 2, 440.0, 0.3, 0.01),
        );
        let fmt_at = good.windows(4).position(|w| w == b"fmt ").unwrap();
        let set = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("not riff", b"RIFX\0\0\0\0WAVE".to_vec()),
            ("rf64", set(&|b| b[..4].copy_from_slice(b"RF64"))),
            ("header only", good[..12].to_vec()),
            ("cut in fmt", good[..fmt_at + 20].to_vec()),
            ("no data", good[..fmt_at + 8 + 40].to_vec()),
            ("fmt too short", set(&|b| b[fmt_at + 4] = 12)),
            ("zero channels", set(&|b| b[fmt_at + 10] = 0)),
            ("zero rate", set(&|b| b[fmt_at + 12..fmt_at + 16].fill(0))),
            ("huge rate", set(&|b| b[fmt_at + 15] = 0x7F)),
            ("bad block align", set(&|b| b[fmt_at + 20] = 5)),
            ("12-bit", set(&|b| b[fmt_at + 22] = 12)),
            ("adpcm subformat", set(&|b| b[fmt_at + 32] = 2)),
            ("bad guid", set(&|b| b[fmt_at + 40] = 0x55)),
            ("mp3 tag", set(&|b| b[fmt_at + 8] = 0x55)),
            (
                "data first",
                set(&|b| b[fmt_at..fmt_at + 4].copy_from_slice(b"data")),
            ),
            // A chunk declaring 4 GB is skipped by reading, and the input ends.
            (
                "huge chunk",
                set(&|b| b[fmt_at - 8..fmt_at - 4].copy_from_slice(&u32::MAX.to_le_bytes())),
            ),
        ];
        for (name, bytes) in cases {
            match WavReader::new(Cursor::new(bytes), 1) {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => println!("{name}: {e}"),
            }
        }
        assert!(WavReader::new(Cursor::new(good.clone()), 3).is_err());
        // Random garbage after a valid RIFF header never panics.
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..500 {
            let mut b = good[..fmt_at].to_vec();
            let len = rng.usize(0..120);
            b.extend((0..len).map(|_| rng.u8(..)));
            if rng.bool() {
                b.extend_from_slice(&good[fmt_at..]);
            }
            if let Ok(mut r) = WavReader::new(Cursor::new(b), 2) {
                let _ = r.read_to_end(1 << 22);
            }
        }
    }

    #[test]
    fn writer_rejects_bad_input_and_finishes_on_drop() {
        assert!(WavWriter::new(Cursor::new(Vec::new()), 0).is_err());
        let mut w = WavWriter::new(Cursor::new(Vec::new()), 2).unwrap();
        assert!(w.write(&[1, 2, 3]).is_err());
        let mut buf = Cursor::new(Vec::new());
        {
            let mut w = WavWriter::new(&mut buf, 1).unwrap();
            w.write(&[5; 100]).unwrap();
        }
        let bytes = buf.into_inner();
        assert_eq!(u32_at(&bytes, 40), 200);
        assert_eq!(u32_at(&bytes, 4), 236);
    }
}
