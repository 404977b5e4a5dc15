//! The audio jitter buffer fed arbitrary frames, drift and timeouts
//!
//! The body lives in `fuzz/targets/`, shared with the stable corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../targets/mod.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::jitter::run(data));
