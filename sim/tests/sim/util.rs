//! Helpers shared by the simulator tests

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshrtc::signal::PeerId;
use meshrtc::{CandidatePolicy, Config};
use meshrtc_sim::{HostId, Sim};

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

/// A fresh, empty folder for one test's files
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("meshrtc-sim-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The repository's `scenarios/` folder
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// A real Mahimahi trace from `../shared/traces/` beside the repository, if it is there
pub fn real_trace(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/traces")
        .join(name);
    p.is_file().then_some(p)
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

/// Mean of values
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Nearest-rank quantile of values
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Lag-1 autocorrelation of values
pub fn lag1_correlation(v: &[f64]) -> f64 {
    let m = mean(v);
    let var: f64 = v.iter().map(|x| (x - m) * (x - m)).sum();
    let cov: f64 = v.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum();
    cov / var
}
