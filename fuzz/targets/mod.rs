//! The bodies of every fuzz target, one `run(&[u8])` each, shared by the cargo-fuzz
//! binaries (`fuzz/fuzz_targets/`) and the stable corpus replay test (`tests/tests/fuzz_corpus.rs`),
//! which runs every file of `fuzz/seeds/<target>/` through the same function on every test run

#![allow(dead_code)]

pub mod client_frame;
pub mod decode;
pub mod harness;
pub mod jitter;
pub mod participant;
pub mod room_token;
pub mod sdp;
pub mod server_frame;
pub mod server_machine;
pub mod video;

/// A target's body: one input in, no output (a panic is a finding)
pub type Target = fn(&[u8]);

/// Every target by name (the name of its binary and of its seed directory)
pub const ALL: &[(&str, Target)] = &[
    ("client_frame", client_frame::run),
    ("server_frame", server_frame::run),
    ("room_token", room_token::run),
    ("server_machine", server_machine::run),
    ("decode_opus", decode::opus),
    ("decode_h264", decode::h264),
    ("decode_vp8", decode::vp8),
    ("decode_vp9", decode::vp9),
    ("participant", participant::run),
    ("sdp", sdp::run),
    ("jitter", jitter::run),
];
