//! The vp8 decoder with malformed payloads; see common/video.rs for the input layout
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshrtc::codec::VideoCodec;

#[path = "common/video.rs"]
mod video;

fuzz_target!(|data: &[u8]| video::run(VideoCodec::Vp8, data));
