//! The named scenarios in `scenarios/` parse, and each runs its first seconds with every
//! pair connected

use std::time::Duration;

use meshrtc_sim::Scenario;

use crate::util::{real_trace, scenarios_dir};

const NAMED: [&str; 14] = [
    "clean-lan",
    "mesh-10",
    "wifi-lossy",
    "cellular-trace",
    "burst-loss-10",
    "drift-1000ppm",
    "outage-10s",
    "jitter-exponential",
    "jitter-pareto",
    "jitter-normal",
    "jitter-uniform",
    "nat-cone",
    "nat-symmetric",
    "nat-mixed-5",
];

#[test]
fn every_named_scenario_parses_and_connects() {
    for name in NAMED {
        let path = scenarios_dir().join(format!("{name}.toml"));
        if name == "cellular-trace" && real_trace("Verizon-LTE-short.up").is_none() {
            let e = Scenario::from_path(&path).unwrap_err().to_string();
            assert!(e.contains("Verizon-LTE-short"), "{e}");
            eprintln!("skipped running {name}: ../shared/traces is not here");
            continue;
        }
        let mut s = Scenario::from_path(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.name.as_deref(), Some(name));
        // The first seconds are enough to connect every pair.
        s.duration_s = 4.0;
        let out = s.run(None).unwrap();
        let r = &out.report;
        assert!(!r.pairs.is_empty());
        for p in &r.pairs {
            assert!(p.connected, "{name}: {} → {} did not connect", p.from, p.to);
            assert!(p.connect_ms.is_some());
        }
        assert!(out.sim.elapsed() == Duration::from_secs(4));
    }
}
