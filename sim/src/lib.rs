//! meshrtc-sim: many meshrtc participants in one thread, in virtual time, over impaired
//! links, with drifting clocks, a timeline of faults, trace replay and exact replay
//!
//! Every host runs one [`meshrtc::Participant`] and has its own [`Clock`]
//! (`local = offset + (1 + ppm·1e-6)·t`): the participant only ever sees its local time, and
//! its deadlines are converted back to virtual time exactly. Datagrams between hosts cross
//! one [`Link`] per direction (latency, jitter of several shapes, correlation, random and
//! Gilbert–Elliott loss, duplication, reordering, a rate limit with a drop-tail queue,
//! Mahimahi capacity traces and per-packet delay traces). Signaling frames cross an
//! in-memory copy of the signaling server ([`meshrtc::signal::server::Server`]) as JSON text, exactly
//! as they would over a WebSocket.
//!
//! A [`Sim`] is driven from code (the mesh tests do this); a [`Scenario`] file describes
//! hosts, links, clocks, a timeline, traffic, duration and seed, and produces a [`Report`]
//! (the `meshrtc-sim` binary). The same scenario and seed give the same report, byte for
//! byte.
//!
//! # Run loop
//!
//! ```no_run
//! use std::time::Duration;
//! use meshrtc::{CandidatePolicy, Config};
//! use meshrtc_sim::{Clock, HostOptions, LinkConfig, Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig { seed: 7, ..SimConfig::default() });
//! let config = Config { candidate_policy: CandidatePolicy::LoopbackOnly, ..Config::default() };
//! let a = sim.add_host(config.clone());
//! let b = sim.add_host_with(config, HostOptions { clock: Clock::new(0, 500.0).unwrap(), nat: None });
//! sim.set_link(a, b, LinkConfig::with_latency(Duration::from_millis(30))).unwrap();
//! sim.join(a, "room", "alice");
//! sim.join(b, "room", "bob");
//! sim.run_for(Duration::from_secs(5));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod clock;
pub mod cross;
mod error;
pub mod link;
pub mod media;
pub mod nat;
pub mod plot;
pub mod rates;
pub mod report;
pub mod scenario;
mod sim;
pub mod trace;

pub use clock::Clock;
pub use cross::{CrossModel, CrossStats, CrossTrafficConfig, SharedBottleneckConfig};
pub use error::Error;
pub use link::{Fate, Jitter, Link, LinkConfig, LinkStats, Loss, QueueLimit, Rate, Verdict};
pub use media::{MediaSample, MediaSource, MediaStats, MediaStreamConfig, MediaStreamId};
pub use nat::{
    NatConfig, NatFiltering, NatMapping, NatStats, ServerId, ServerStats, TurnServerSpec,
    TURN_REALM,
};
pub use rates::RateSample;
pub use report::Report;
pub use scenario::Scenario;
pub use sim::{
    Action, ConnectInfo, DelaySample, FlowConfig, FlowId, FlowStats, HostId, HostOptions, LogEntry,
    Sim, SimConfig, TimeoutStats, FLOW_HEADER_BYTES,
};
pub use trace::{CapacityTrace, PacketTrace};

#[cfg(test)]
mod static_checks {
    use super::*;

    fn is_send<T: Send>() {}

    #[test]
    fn sim_is_send() {
        is_send::<Sim>();
        is_send::<Link>();
    }
}
