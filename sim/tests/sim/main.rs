//! meshrtc-sim: every impairment measured against its configuration, clocks, the timeline,
//! trace replay, exact replay, the named scenarios and the command line (virtual time, no
//! sockets)

mod cli;
mod clocks;
mod determinism;
mod impairments;
mod measures;
mod media;
mod nat;
mod playout;
mod rate;
mod recovery;
mod scenarios;
mod throughput;
mod timeline;
mod traces;
mod util;
