//! Cross-crate integration tests live in `tests/`.

/// The Rust blocks of `QUICKSTART.md`, compiled as doc tests (`cargo test -p meshrtc-tests
/// --doc`) so that the quick start stays true
#[cfg(doctest)]
#[doc = include_str!("../../QUICKSTART.md")]
pub struct Quickstart;
