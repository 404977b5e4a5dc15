//! Interop tests: the `meshrtc` binary and headless Chromium in one room, on loopback
//!
//! Black box: each test starts `meshrtc signal`, serves `interop/page/` from a small HTTP
//! server of its own on 127.0.0.1, opens the page in Debian's headless Chromium (flags in
//! [`harness::CHROMIUM_FLAGS`]) and runs `meshrtc peer` processes, then checks meshrtc's
//! `--stats-json` against the page's report (`POST /report`, from `getStats` and its own
//! counters). Nothing leaves 127.0.0.1: no STUN servers (the relay-only cases use a coturn
//! on 127.0.0.1), only loopback UDP candidates are signaled in either direction.
//!
//! Without `/usr/bin/chromium` the tests print `SKIPPED` and pass, unless `CI` is set; then
//! they fail. `MESHRTC_INTEROP_KEEP=1` keeps the scratch directories (logs, stats files).

mod blocking;
mod client;
#[path = "../../../core/tests/turn/coturn.rs"]
#[allow(dead_code)] // reason: shared with the core's TURN tests; not every helper is used here
mod coturn;
mod data;
mod figures;
mod harness;
mod http;
mod media;
mod rate;
mod relay;
mod room;
