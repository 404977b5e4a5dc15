//! Helpers shared by the mesh scenarios

use std::time::Duration;

use meshrtc::signal::PeerId;
use meshrtc::{CandidatePolicy, Config, DataMessage, Event};
use meshrtc_sim::{HostId, Sim, SimConfig};

/// A participant configuration for tests: loopback candidates only
pub fn config() -> Config {
    Config {
        candidate_policy: CandidatePolicy::LoopbackOnly,
        ..Config::default()
    }
}

pub fn pid(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

pub fn name(i: usize) -> String {
    format!("p{i}")
}

/// Starts `n` hosts that join `room` one after another, 50 ms apart
pub fn mesh(seed: u64, n: usize, room: &str) -> (Sim, Vec<HostId>) {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let hosts: Vec<HostId> = (0..n).map(|_| sim.add_host(config())).collect();
    for (i, &h) in hosts.iter().enumerate() {
        sim.join(h, room, &name(i));
        sim.run_for(Duration::from_millis(50));
    }
    (sim, hosts)
}

/// Runs until every host has `n - 1` connected peers, or panics after `limit`
pub fn await_full_mesh(sim: &mut Sim, hosts: &[HostId], limit: Duration) -> Duration {
    let n = hosts.len();
    let ok = sim.run_until_cond(limit, |s| {
        hosts.iter().all(|&h| {
            s.participant(h)
                .peer_ids()
                .filter(|p| s.participant(h).is_connected(p))
                .count()
                == n - 1
        })
    });
    assert!(
        ok,
        "full mesh of {n} did not connect within {limit:?}: {:?}",
        sim.log()
    );
    sim.elapsed()
}

/// Data messages `host` received, as (from, text)
pub fn received_texts(sim: &Sim, host: HostId) -> Vec<(PeerId, String)> {
    sim.mesh_events(host)
        .filter_map(|(_, e)| match e {
            Event::DataReceived {
                peer,
                message: DataMessage::Text(t),
                ..
            } => Some((peer.clone(), t.clone())),
            _ => None,
        })
        .collect()
}
