//! Shared driver of the video decoder targets
//!
//! Input layout: byte 0 is a mode, the rest are frames, each prefixed by its length (2 bytes,
//! little endian; the last frame takes what is left), at most 16 frames.
//!
//! Mode bits: 1 = decode a real keyframe first (so that inter-frame paths are reachable),
//! 2 = afterwards decode real inter frames (recovery after garbage), 4 = each fuzzed frame
//! is XORed onto a real inter frame rather than used as is (reaches deeper into the codec
//! library, whose C code has no coverage instrumentation here).

use std::sync::OnceLock;

use meshrtc::codec::testsrc::TestPattern;
use meshrtc::codec::{
    video_decoder, video_encoder, CodecError, I420Frame, VideoCodec, VideoEncoderConfig,
    MAX_DECODE_PIXELS, MAX_DECODE_SIDE,
};

/// A keyframe and three inter frames of 160x90, encoded once per process
fn seeds(codec: VideoCodec) -> &'static [Vec<u8>] {
    static SEEDS: [OnceLock<Vec<Vec<u8>>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match codec {
        VideoCodec::H264 => 0,
        VideoCodec::Vp8 => 1,
        VideoCodec::Vp9 => 2,
    };
    SEEDS[slot].get_or_init(|| {
        let mut enc = video_encoder(VideoEncoderConfig::new(codec, 160, 90)).expect("encoder");
        let src = TestPattern::new(160, 90);
        (0..4u64)
            .filter_map(|i| {
                enc.encode(&src.frame(i), std::time::Duration::from_millis(33 * i))
                    .expect("encode")
                    .map(|e| e.data.to_vec())
            })
            .collect()
    })
}

fn check(codec: VideoCodec, out: Result<Option<I420Frame>, CodecError>) {
    match out {
        Ok(Some(f)) => {
            f.check().expect("decoded frame is consistent");
            assert!(
                f.width > 0
                    && f.height > 0
                    && f.width <= MAX_DECODE_SIDE
                    && f.height <= MAX_DECODE_SIDE
            );
            assert!(u64::from(f.width) * u64::from(f.height) <= MAX_DECODE_PIXELS);
        }
        Ok(None) => {}
        // Malformed input must come back as a decode error, nothing else.
        Err(CodecError::Decode(_)) => {}
        Err(e) => panic!("{}: unexpected error kind: {e}", codec.name()),
    }
}

pub fn run(codec: VideoCodec, data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let seeds = seeds(codec);
    let mut dec = video_decoder(codec).expect("decoder");
    if mode & 1 != 0 {
        check(codec, dec.decode(&seeds[0]));
    }
    for _ in 0..16 {
        if rest.is_empty() {
            break;
        }
        let frame = if rest.len() >= 2 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let body = &rest[2..];
            let len = len.min(body.len());
            let (frame, tail) = body.split_at(len);
            rest = tail;
            frame
        } else {
            std::mem::take(&mut rest)
        };
        if mode & 4 != 0 {
            let mut patched = seeds[1].clone();
            for (i, b) in frame.iter().enumerate() {
                let n = patched.len();
                patched[i % n] ^= b;
            }
            check(codec, dec.decode(&patched));
        } else {
            check(codec, dec.decode(frame));
        }
    }
    if mode & 2 != 0 {
        for s in &seeds[1..] {
            check(codec, dec.decode(s));
        }
    }
}
