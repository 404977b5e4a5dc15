//! The VP9 decoder with malformed payloads
//!
//! The body lives in `fuzz/targets/`, shared with the stable corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../targets/mod.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::decode::vp9(data));
