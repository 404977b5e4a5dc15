//! The decoders with malformed payloads: Opus here, the video codecs in `video.rs`
//!
//! Opus
//!
//! Input: byte 0 picks the channel count (bit 0) and, per packet, whether to decode, recover
//! with FEC or conceal (bits 1-2 select among them for the first packet, then rotate);
//! byte 1 a concealment length; the rest are packets, each prefixed by a 1-byte length.

use meshrtc::codec::{CodecError, OpusDecoder, VideoCodec};

use super::video;

/// The Opus decoder
pub fn opus(data: &[u8]) {
    let [mode, plc, rest @ ..] = data else {
        return;
    };
    let channels = if mode & 1 == 0 { 1 } else { 2 };
    let mut dec = OpusDecoder::new(channels).expect("decoder");
    let mut rest = rest;
    let mut op = (mode >> 1) & 3;
    // Up to 120 ms in 2.5 ms steps, or (for some values) an invalid length.
    let plc_samples = usize::from(*plc) * 120 / 4;
    for _ in 0..32 {
        let Some((&len, tail)) = rest.split_first() else {
            break;
        };
        let len = usize::from(len).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        let out = match op % 3 {
            0 => dec.decode(packet),
            1 => dec.decode_fec(packet, plc_samples),
            _ => dec.conceal(plc_samples),
        };
        match out {
            Ok(pcm) => {
                assert_eq!(pcm.channels, channels);
                assert_eq!(pcm.samples.len() % usize::from(channels), 0);
                assert!(pcm.samples_per_channel() <= 5760);
            }
            Err(CodecError::Decode(_) | CodecError::InvalidInput(_)) => {}
            Err(e) => panic!("unexpected error kind: {e}"),
        }
        let _ = OpusDecoder::packet_samples(packet);
        op = op.wrapping_add(1);
    }
}

/// The H.264 decoder
pub fn h264(data: &[u8]) {
    video::run(VideoCodec::H264, data);
}

/// The VP8 decoder
pub fn vp8(data: &[u8]) {
    video::run(VideoCodec::Vp8, data);
}

/// The VP9 decoder
pub fn vp9(data: &[u8]) {
    video::run(VideoCodec::Vp9, data);
}
