//! Media files on `std::io`: WAV audio and Y4M (YUV4MPEG2) video
//!
//! Sans-IO in the sense of the rest of the core: readers and writers work on any
//! [`std::io::Read`] or [`std::io::Write`] (plus [`std::io::Seek`] to finish a WAV file's
//! header) and never open files themselves. Readers treat their input as untrusted: they
//! never panic on it, report what is wrong as a [`FileError`], and never allocate by a size
//! the file declares before checking it against a fixed limit.
//!
//! - [`WavReader`]: PCM 8/16/24/32-bit integer and 32/64-bit float, plain or
//!   `WAVE_FORMAT_EXTENSIBLE`, any rate in [`RATE_RANGE`](super::resample::RATE_RANGE) and
//!   up to 32 channels; hands out 48 kHz mono or stereo 16-bit samples, resampled with
//!   [`Resampler`](super::resample::Resampler).
//! - [`WavWriter`]: 48 kHz 16-bit PCM, mono or stereo.
//! - [`Y4mReader`]: the 4:2:0 colour spaces (`420jpeg`, `420mpeg2`, `420paldv`, `420`) and
//!   `mono`, as [`I420Frame`](crate::codec::I420Frame)s. Looping is the caller's: make a new
//!   reader on a rewound input.
//! - [`Y4mWriter`]: `420jpeg`; frames of another size are scaled to the stream's size.

use std::io;

mod wav;
mod y4m;

pub use wav::{SampleFormat, WavInfo, WavReader, WavWriter};
pub use y4m::{Y4mInfo, Y4mReader, Y4mWriter, MAX_Y4M_PIXELS};

/// Errors reading or writing media files
///
/// Grouped by who is at fault: the file (malformed or unsupported content), the local IO, or
/// the caller.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    // The file's fault.
    /// The content breaks the format
    #[error("malformed file: {0}")]
    Malformed(String),
    /// The content is valid but uses a variant this reader does not handle
    #[error("unsupported file: {0}")]
    Unsupported(String),
    /// A declared size is beyond what this reader accepts
    #[error("file too large: {0}")]
    TooLarge(String),

    // Local IO.
    /// Reading or writing failed
    #[error("io: {0}")]
    Io(#[from] io::Error),

    // The caller's.
    /// Arguments out of range (channel count, frame size, a file grown past its format's
    /// limit)
    #[error("invalid argument: {0}")]
    InvalidInput(String),
}

/// Reads until `buf` is full or the input ends; returns the bytes read
fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
