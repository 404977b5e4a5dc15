//! Y4M (YUV4MPEG2) reading and writing

use std::io::{Read, Write};

use crate::codec::I420Frame;
use crate::pipeline::scale::Scaler;

use super::{read_full, FileError};

/// Largest picture a [`Y4mReader`] accepts, in pixels (4096 x 4096, as the decoders)
pub const MAX_Y4M_PIXELS: u64 = crate::codec::MAX_DECODE_PIXELS;

/// Longest header or frame-header line accepted, in bytes
const MAX_LINE: usize = 4096;

/// What a Y4M stream's header says
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Y4mInfo {
    /// Width in pixels
    pub width: u32,
    /// Height in pixels
    pub height: u32,
    /// Frame rate numerator (frames per `fps_den` seconds); 0 when not given
    pub fps_num: u32,
    /// Frame rate denominator; 0 when not given
    pub fps_den: u32,
    /// The colour space tag (`420jpeg` when not given)
    pub colorspace: String,
}

impl Y4mInfo {
    /// The frame rate in frames per second, if given
    pub fn fps(&self) -> Option<f64> {
        (self.fps_num > 0 && self.fps_den > 0)
            .then(|| f64::from(self.fps_num) / f64::from(self.fps_den))
    }
}

/// Reads a Y4M stream frame by frame as I420
///
/// Give it a buffered reader: frame headers are read a byte at a time.
#[derive(Debug)]
pub struct Y4mReader<R> {
    reader: R,
    info: Y4mInfo,
    mono: bool,
    frames: u64,
    line: Vec<u8>,
}

impl<R: Read> Y4mReader<R> {
    /// Parses the stream header
    pub fn new(mut reader: R) -> Result<Self, FileError> {
        let mut line = Vec::new();
        if !read_line(&mut reader, &mut line)? {
            return Err(FileError::Malformed("empty input".into()));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| FileError::Malformed("header is not text".into()))?;
        let mut tokens = text.split(' ');
        if tokens.next() != Some("YUV4MPEG2") {
            return Err(FileError::Malformed("no YUV4MPEG2 signature".into()));
        }
        let (mut width, mut height) = (None, None);
        let (mut fps_num, mut fps_den) = (0, 0);
        let mut colorspace = "420jpeg".to_string();
        for t in tokens.filter(|t| !t.is_empty()) {
            let (tag, value) = t.split_at(1);
            let number = || {
                value
                    .parse::<u32>()
                    .map_err(|_| FileError::Malformed(format!("bad header field {t:?}")))
            };
            match tag {
                "W" => width = Some(number()?),
                "H" => height = Some(number()?),
                "F" => {
                    let (n, d) = value
                        .split_once(':')
                        .ok_or_else(|| FileError::Malformed(format!("bad frame rate {t:?}")))?;
                    fps_num = n
                        .parse()
                        .map_err(|_| FileError::Malformed(format!("bad frame rate {t:?}")))?;
                    fps_den = d
                        .parse()
                        .map_err(|_| FileError::Malformed(format!("bad frame rate {t:?}")))?;
                }
                "C" => colorspace = value.to_string(),
                "I" if !matches!(value, "p" | "?" | "") => {
                    return Err(FileError::Unsupported(format!("interlacing {value:?}")));
                }
                // Pixel aspect, comments and unknown fields.
                _ => {}
            }
        }
        let (Some(width), Some(height)) = (width, height) else {
            return Err(FileError::Malformed("header lacks W or H".into()));
        };
        if width == 0 || height == 0 {
            return Err(FileError::Malformed(format!("{width}x{height} picture")));
        }
        if u64::from(width) * u64::from(height) > MAX_Y4M_PIXELS {
            return Err(FileError::TooLarge(format!(
                "{width}x{height} is more than {MAX_Y4M_PIXELS} pixels"
            )));
        }
        let mono = match colorspace.as_str() {
            "420jpeg" | "420paldv" | "420mpeg2" | "420" => false,
            "mono" => true,
            other => {
                return Err(FileError::Unsupported(format!(
                    "colour space {other} (only 4:2:0 and mono, 8 bit)"
                )))
            }
        };
        Ok(Self {
            reader,
            info: Y4mInfo {
                width,
                height,
                fps_num,
                fps_den,
                colorspace,
            },
            mono,
            frames: 0,
            line,
        })
    }

    /// The header
    pub const fn info(&self) -> &Y4mInfo {
        &self.info
    }

    /// Frames read so far
    pub const fn frames_read(&self) -> u64 {
        self.frames
    }

    /// Reads the next frame into `frame` (reusing its planes when the size matches); false
    /// at the end of the stream
    pub fn read_frame(&mut self, frame: &mut I420Frame) -> Result<bool, FileError> {
        if !read_line(&mut self.reader, &mut self.line)? {
            return Ok(false);
        }
        if !self.line.starts_with(b"FRAME") || self.line.get(5).is_some_and(|&b| b != b' ') {
            return Err(FileError::Malformed(format!(
                "frame {} does not start with FRAME",
                self.frames
            )));
        }
        let (w, h) = (self.info.width, self.info.height);
        if frame.width != w || frame.height != h || frame.check().is_err() {
            *frame = I420Frame::black(w, h);
        }
        let mut planes: [&mut [u8]; 3] = [&mut frame.y, &mut frame.u, &mut frame.v];
        let count = if self.mono { 1 } else { 3 };
        for plane in planes.iter_mut().take(count) {
            if read_full(&mut self.reader, plane)? < plane.len() {
                return Err(FileError::Malformed(format!(
                    "frame {} is cut short",
                    self.frames
                )));
            }
        }
        if self.mono {
            frame.u.fill(128);
            frame.v.fill(128);
        }
        self.frames += 1;
        Ok(true)
    }

    /// The next frame, newly allocated; `None` at the end of the stream
    pub fn next_frame(&mut self) -> Result<Option<I420Frame>, FileError> {
        let mut f = I420Frame::black(self.info.width, self.info.height);
        Ok(self.read_frame(&mut f)?.then_some(f))
    }

    /// The input, positioned after the last frame read
    pub fn into_inner(self) -> R {
        self.reader
    }
}

/// Reads one `\n`-terminated line (without the `\n`); false if the input ended before any
/// byte
fn read_line(r: &mut impl Read, line: &mut Vec<u8>) -> Result<bool, FileError> {
    line.clear();
    let mut b = [0u8; 1];
    loop {
        if read_full(r, &mut b)? == 0 {
            if line.is_empty() {
                return Ok(false);
            }
            return Err(FileError::Malformed("line cut short".into()));
        }
        if b[0] == b'\n' {
            return Ok(true);
        }
        if line.len() >= MAX_LINE {
            return Err(FileError::Malformed(format!(
                "header line longer than {MAX_LINE} bytes"
            )));
        }
        line.push(b[0]);
    }
}

/// Writes a 4:2:0 Y4M stream
///
/// The header goes out with the first frame. Frames of another size than the stream's are
/// scaled to it (a stream cannot change size), so a recording survives a resolution change.
#[derive(Debug)]
pub struct Y4mWriter<W> {
    writer: W,
    width: u32,
    height: u32,
    fps: (u32, u32),
    header_written: bool,
    scaler: Scaler,
    scaled: Option<I420Frame>,
    frames: u64,
}

impl<W: Write> Y4mWriter<W> {
    /// A stream of `width` x `height` at `fps_num / fps_den` frames per second
    pub fn new(
        writer: W,
        width: u32,
        height: u32,
        fps_num: u32,
        fps_den: u32,
    ) -> Result<Self, FileError> {
        if width == 0 || height == 0 || u64::from(width) * u64::from(height) > MAX_Y4M_PIXELS {
            return Err(FileError::InvalidInput(format!("{width}x{height} picture")));
        }
        if fps_num == 0 || fps_den == 0 {
            return Err(FileError::InvalidInput(format!(
                "frame rate {fps_num}:{fps_den}"
            )));
        }
        Ok(Self {
            writer,
            width,
            height,
            fps: (fps_num, fps_den),
            header_written: false,
            scaler: Scaler::new(),
            scaled: None,
            frames: 0,
        })
    }

    /// Frames written
    pub const fn frames_written(&self) -> u64 {
        self.frames
    }

    /// Appends a frame, scaled to the stream's size if it differs
    pub fn write_frame(&mut self, frame: &I420Frame) -> Result<(), FileError> {
        frame
            .check()
            .map_err(|e| FileError::InvalidInput(e.to_string()))?;
        if !self.header_written {
            let header = format!(
                "YUV4MPEG2 W{} H{} F{}:{} Ip A1:1 C420jpeg\n",
                self.width, self.height, self.fps.0, self.fps.1
            );
            self.writer.write_all(header.as_bytes())?;
            self.header_written = true;
        }
        let out = if frame.width == self.width && frame.height == self.height {
            frame
        } else {
            let scaled = self
                .scaled
                .get_or_insert_with(|| I420Frame::black(self.width, self.height));
            self.scaler.scale(frame, scaled);
            &*scaled
        };
        self.writer.write_all(b"FRAME\n")?;
        self.writer.write_all(&out.y)?;
        self.writer.write_all(&out.u)?;
        self.writer.write_all(&out.v)?;
        self.frames += 1;
        Ok(())
    }

    /// Flushes and hands back the writer
    pub fn finish(mut self) -> Result<W, FileError> {
        self.writer.flush()?;
        Ok(self.writer)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::codec::testsrc::{psnr, TestPattern};

    #[test]
    fn round_trip_is_exact() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (w, h) in [(64, 36), (33, 17), (1, 1)] {
            let frames: Vec<I420Frame> = (0..5)
                .map(|_| {
                    let mut f = I420Frame::black(w, h);
                    for p in [&mut f.y, &mut f.u, &mut f.v] {
                        p.iter_mut().for_each(|v| *v = rng.u8(..));
                    }
                    f
                })
                .collect();
            let mut wr = Y4mWriter::new(Vec::new(), w, h, 30_000, 1001).unwrap();
            for f in &frames {
                wr.write_frame(f).unwrap();
            }
            assert_eq!(wr.frames_written(), 5);
            let bytes = wr.finish().unwrap();
            let mut r = Y4mReader::new(Cursor::new(bytes)).unwrap();
            assert_eq!(
                *r.info(),
                Y4mInfo {
                    width: w,
                    height: h,
                    fps_num: 30_000,
                    fps_den: 1001,
                    colorspace: "420jpeg".into()
                }
            );
            assert!((r.info().fps().unwrap() - 29.97).abs() < 0.01);
            let mut frame = I420Frame::black(2, 2);
            for f in &frames {
                assert!(r.read_frame(&mut frame).unwrap());
                assert_eq!(&frame, f);
            }
            assert!(!r.read_frame(&mut frame).unwrap());
            assert_eq!(r.frames_read(), 5);
        }
    }

    #[test]
    fn header_variants_and_mono() {
        for (header, mono) in [
            ("YUV4MPEG2 W4 H2 F25:1", false),
            ("YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420", false),
            ("YUV4MPEG2 W4 H2 C420mpeg2 XYSCSS=420MPEG2", false),
            ("YUV4MPEG2 W4 H2  C420paldv ", false),
            ("YUV4MPEG2 W4 H2 Cmono", true),
        ] {
            let mut bytes = format!("{header}\n").into_bytes();
            bytes.extend_from_slice(b"FRAME Ixyz\n");
            bytes.extend_from_slice(&[100; 8]);
            if !mono {
                bytes.extend_from_slice(&[60, 61, 70, 71]);
            }
            let mut r = Y4mReader::new(Cursor::new(bytes)).unwrap();
            let f = r.next_frame().unwrap().unwrap();
            assert_eq!(f.y, [100; 8]);
            let (u, v): (&[u8], &[u8]) = if mono {
                (&[128, 128], &[128, 128])
            } else {
                (&[60, 61], &[70, 71])
            };
            assert_eq!((f.u.as_slice(), f.v.as_slice()), (u, v), "{header}");
            assert!(r.next_frame().unwrap().is_none());
        }
        // Interlaced pictures are refused.
        let r = Y4mReader::new(Cursor::new(b"YUV4MPEG2 W4 H2 It\n".to_vec()));
        assert!(matches!(r, Err(FileError::Unsupported(_))));
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("no newline", b"YUV4MPEG2 W4 H2".to_vec()),
            ("wrong magic", b"YUV4MPEG W4 H2\n".to_vec()),
            ("no width", b"YUV4MPEG2 H2\n".to_vec()),
            ("zero height", b"YUV4MPEG2 W4 H0\n".to_vec()),
            ("bad number", b"YUV4MPEG2 W4x H2\n".to_vec()),
            ("bad rate", b"YUV4MPEG2 W4 H2 F25\n".to_vec()),
            ("huge", b"YUV4MPEG2 W100000 H100000\n".to_vec()),
            ("4:4:4", b"YUV4MPEG2 W4 H2 C444\n".to_vec()),
            ("10 bit", b"YUV4MPEG2 W4 H2 C420p10\n".to_vec()),
            (
                "endless line",
                [b"YUV4MPEG2 ".as_slice(), &[b'X'; 10_000]].concat(),
            ),
            ("not utf8", b"YUV4MPEG2 W\xff\n".to_vec()),
        ];
        for (name, bytes) in cases {
            assert!(Y4mReader::new(Cursor::new(bytes)).is_err(), "{name}");
        }
        let header = b"YUV4MPEG2 W4 H2\n".to_vec();
        for (name, tail) in [
            ("not FRAME", b"FRAMX\n".to_vec()),
            ("FRAMEX", b"FRAMES\n".to_vec()),
            ("cut frame", [b"FRAME\n".as_slice(), &[1; 9]].concat()),
            ("cut line", b"FRA".to_vec()),
        ] {
            let mut r = Y4mReader::new(Cursor::new([header.clone(), tail].concat())).unwrap();
            assert!(r.next_frame().is_err(), "{name}");
        }
        // Garbage after a valid header never panics and never allocates past the picture.
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..300 {
            let mut b = header.clone();
            let len = rng.usize(0..80);
            b.extend((0..len).map(|_| if rng.bool() { b'\n' } else { rng.u8(..) }));
            let mut r = Y4mReader::new(Cursor::new(b)).unwrap();
            while let Ok(Some(_)) = r.next_frame() {}
        }
    }

    #[test]
    fn writer_scales_other_sizes_and_rejects_bad_frames() {
        let mut pattern = TestPattern::new(128, 72);
        let src = pattern.next_frame();
        let mut wr = Y4mWriter::new(Vec::new(), 64, 36, 30, 1).unwrap();
        wr.write_frame(&src).unwrap();
        let bad = I420Frame {
            width: 4,
            height: 4,
            y: vec![0; 15],
            u: vec![0; 4],
            v: vec![0; 4],
        };
        assert!(wr.write_frame(&bad).is_err());
        let bytes = wr.finish().unwrap();
        let f = Y4mReader::new(Cursor::new(bytes))
            .unwrap()
            .next_frame()
            .unwrap()
            .unwrap();
        assert_eq!((f.width, f.height), (64, 36));
        // The stored frame is the source scaled down, and close to it.
        let mut expect = I420Frame::black(64, 36);
        Scaler::new().scale(&src, &mut expect);
        assert_eq!(f, expect);
        let mut back = I420Frame::black(128, 72);
        Scaler::new().scale(&f, &mut back);
        // Down and up again loses the finest detail of the test pattern, no more.
        assert!(psnr(&back, &src) > 17.0, "{}", psnr(&back, &src));
        assert!(Y4mWriter::new(Vec::new(), 0, 36, 30, 1).is_err());
        assert!(Y4mWriter::new(Vec::new(), 64, 36, 0, 1).is_err());
    }
}
