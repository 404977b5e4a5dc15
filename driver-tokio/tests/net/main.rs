//! Scenario tests of the tokio driver, the signaling server and the `meshrtc` binary
//!
//! Everything runs on loopback (127.0.0.1) and every test is bounded in time.

mod attacks;
mod cli;
mod mesh;
mod metrics;
mod server;
mod session;
mod util;
