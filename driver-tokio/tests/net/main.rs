//! Scenario tests of the tokio driver, the signaling server and the `meshrtc` binary
//!
//! Everything runs on loopback (127.0.0.1), or (`ice`, as root) in network namespaces that
//! reach no real interface, and every test is bounded in time.

mod attacks;
mod cli;
mod cluster;
#[path = "../../../core/tests/turn/coturn.rs"]
#[allow(dead_code)] // reason: shared with the core's TURN tests; not every helper is used here
mod coturn;
mod files;
mod ice;
mod mesh;
mod metrics;
#[path = "../../../core/tests/turn/nat.rs"]
mod nat;
mod server;
mod session;
mod teardown;
mod util;
