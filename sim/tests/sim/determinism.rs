//! Exact replay: the same scenario and seed give the same report bytes; another seed does not

use meshrtc_sim::Scenario;

use crate::util::scenarios_dir;

fn report_bytes(name: &str, seed: Option<u64>) -> (Vec<u8>, usize) {
    let mut s = Scenario::from_path(&scenarios_dir().join(format!("{name}.toml"))).unwrap();
    // Byte-exact only without bandwidth estimation: with str0m's estimation on, two runs
    // in one process differ by about one datagram in ten thousand (str0m keeps its streams
    // in hash maps whose order changes from map to map; see sim/README.md "Determinism").
    s.participant.rate_adaptation = Some(false);
    let out = s.run(seed).unwrap();
    (
        serde_json::to_vec_pretty(&out.report).unwrap(),
        out.sim.log().len(),
    )
}

#[test]
fn two_runs_of_two_scenarios_give_the_same_bytes() {
    // A lossy, jittery, rate-limited 3-peer mesh and an outage: every hazard (hash-map
    // order, DTLS lengths, OS-seeded SCTP and DTLS randomness) gets its chance.
    for name in ["wifi-lossy", "outage-10s"] {
        let (a, la) = report_bytes(name, None);
        let (b, lb) = report_bytes(name, None);
        assert!(a.len() > 1000);
        assert_eq!(la, lb, "{name}: event logs differ in length");
        assert!(a == b, "{name}: reports differ:\n{}", diff(&a, &b));
    }
}

#[test]
fn a_different_seed_gives_different_bytes() {
    let (a, _) = report_bytes("wifi-lossy", Some(1));
    let (b, _) = report_bytes("wifi-lossy", Some(2));
    assert_ne!(a, b);
    // The seed is in the report, but more than the seed changed.
    let strip = |v: &[u8]| {
        String::from_utf8_lossy(v)
            .lines()
            .filter(|l| !l.contains("\"seed\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_ne!(strip(&a), strip(&b));
}

/// The first differing lines, for a readable failure
fn diff(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    a.lines()
        .zip(b.lines())
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .take(10)
        .map(|(i, (x, y))| format!("line {}: {x} | {y}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}
