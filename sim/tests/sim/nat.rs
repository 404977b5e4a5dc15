//! NAT traversal in virtual time: peers behind port-restricted cone NATs connect directly
//! through server-reflexive candidates, peers behind symmetric NATs through TURN, and a
//! 5-peer room mixes both (`scenarios/nat-*.toml`, a `turn-server-proto` server host)

use std::time::Duration;

use meshrtc::ice::{CandidateType, IceServer};
use meshrtc_sim::{HostOptions, NatConfig, Scenario, Sim, SimConfig, TurnServerSpec};

use crate::util::{config, pid, scenarios_dir};

/// The NAT a scenario host sits behind, by its name
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behind {
    Cone,
    Symmetric,
}

fn behind(scenario: &str, host: &str) -> Behind {
    match scenario {
        "nat-cone" => Behind::Cone,
        "nat-symmetric" => Behind::Symmetric,
        _ if host.starts_with("sym") => Behind::Symmetric,
        _ => Behind::Cone,
    }
}

/// Runs a named NAT scenario with `seed`; `Err` says what went wrong: a pair that did not
/// connect, data that did not arrive, or a path of the wrong kind (a relay between two cone
/// NATs, a direct path through a symmetric NAT)
fn check(name: &str, seed: u64) -> Result<(), String> {
    let s = Scenario::from_path(&scenarios_dir().join(format!("{name}.toml")))
        .map_err(|e| format!("{name}: {e}"))?;
    let out = s.run(Some(seed)).map_err(|e| format!("{name}: {e}"))?;
    let r = &out.report;
    let expected = {
        let n = s.hosts.iter().map(|h| h.count.unwrap_or(1)).sum::<usize>();
        n * (n - 1)
    };
    if r.pairs.len() != expected {
        return Err(format!("{} pairs, expected {expected}", r.pairs.len()));
    }
    for p in &r.pairs {
        let what = format!("{name} seed {seed}: {} → {}", p.from, p.to);
        if !p.connected {
            return Err(format!("{what} did not connect"));
        }
        for st in &p.streams {
            if st.received == 0 || st.lost > 0 {
                return Err(format!(
                    "{what}: {} of {} data messages, {} lost",
                    st.received, st.sent, st.lost
                ));
            }
        }
        let pair = p
            .peer
            .as_ref()
            .and_then(|s| s.candidate_pair.clone())
            .ok_or_else(|| format!("{what}: no candidate pair in the stats"))?;
        let reverse = r
            .pairs
            .iter()
            .find(|q| q.from == p.to && q.to == p.from)
            .and_then(|q| q.peer.as_ref())
            .and_then(|s| s.candidate_pair.clone())
            .ok_or_else(|| format!("{what}: no reverse candidate pair"))?;
        let relayed = pair.starts_with("relay/") || reverse.starts_with("relay/");
        let both_cone =
            behind(name, &p.from) == Behind::Cone && behind(name, &p.to) == Behind::Cone;
        if both_cone {
            // Direct through both NATs: our host base to their server-reflexive (or the
            // peer-reflexive address their checks came from).
            if !(pair == "host/srflx" || pair == "host/prflx") {
                return Err(format!("{what}: cone to cone went {pair}, not direct"));
            }
        } else if !relayed {
            return Err(format!(
                "{what}: through a symmetric NAT without a relay ({pair} / {reverse})"
            ));
        }
    }
    Ok(())
}

const NAT_SCENARIOS: [&str; 3] = ["nat-cone", "nat-symmetric", "nat-mixed-5"];

#[test]
fn nat_scenarios_connect_over_seeds() {
    for name in NAT_SCENARIOS {
        for seed in 1..=3 {
            check(name, seed).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// The success rate of every NAT scenario over 50 seeds (the goal is 100%); a sweep, not a
/// CI test: `cargo test --release -p meshrtc-sim --test sim nat_sweep -- --ignored --nocapture`
#[test]
#[ignore]
fn nat_sweep_50_seeds() {
    for name in NAT_SCENARIOS {
        let mut ok = 0;
        for seed in 1..=50 {
            match check(name, seed) {
                Ok(()) => ok += 1,
                Err(e) => println!("FAIL {e}"),
            }
        }
        println!("{name}: {ok}/50 seeds connected every pair the right way");
    }
}

/// Two NATed hosts that use one STUN server (no TURN); true if they connected within 15 s
fn stun_only(nat: NatConfig, seed: u64) -> (bool, Option<String>, u64) {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let server = sim.add_turn_server(&TurnServerSpec::default());
    let mut c = config();
    c.ice_servers = vec![IceServer::new(format!("stun:{}", sim.server_addr(server)))];
    let opts = HostOptions {
        nat: Some(nat),
        ..HostOptions::default()
    };
    let a = sim.add_host_with(c.clone(), opts);
    let b = sim.add_host_with(c, opts);
    sim.join(a, "room", "alice");
    sim.join(b, "room", "bob");
    let connected = sim.run_until_cond(Duration::from_secs(15), |s| {
        s.participant(a).is_connected(&pid("bob")) && s.participant(b).is_connected(&pid("alice"))
    });
    // The selected pair shows in the stats within a second.
    sim.run_for(Duration::from_secs(2));
    let pair = sim
        .peer_stats(a, &pid("bob"))
        .and_then(|s| s.candidate_pair)
        .map(|p| format!("{}/{}", p.local_type.as_str(), p.remote_type.as_str()));
    let filtered = sim.nat_stats(a).unwrap().filtered + sim.nat_stats(b).unwrap().filtered;
    (connected, pair, filtered)
}

#[test]
fn stun_alone_is_enough_behind_cone_nats() {
    let (connected, pair, _) = stun_only(NatConfig::port_restricted_cone(), 4);
    assert!(connected, "cone NATs with STUN did not connect");
    let pair = pair.expect("a selected pair once connected");
    assert_ne!(pair.split('/').next(), Some(CandidateType::Relay.as_str()));
}

#[test]
fn symmetric_nats_defeat_stun_alone() {
    // The control for the TURN scenario: without a relay there is no path, and the NATs
    // show why (checks from unexpected ports filtered out).
    let (connected, _, filtered) = stun_only(NatConfig::symmetric(), 4);
    assert!(
        !connected,
        "symmetric NATs connected without TURN: the NAT model is wrong"
    );
    assert!(filtered > 0, "the NATs filtered nothing");
}

#[test]
fn nat_scenario_replays_exactly() {
    let s = Scenario::from_path(&scenarios_dir().join("nat-symmetric.toml")).unwrap();
    let a = s.run(Some(9)).unwrap();
    let b = s.run(Some(9)).unwrap();
    assert_eq!(a.sim.log(), b.sim.log());
    assert_eq!(
        serde_json::to_string(&a.report).unwrap(),
        serde_json::to_string(&b.report).unwrap()
    );
}

#[test]
fn consent_checks_keep_nat_mappings_alive_through_idle_periods() {
    // A 15 s mapping timeout and 40 s without data: only ICE's own traffic (consent checks)
    // keeps the mappings; a message after the idle period must still arrive, on the same
    // mappings.
    let mut sim = Sim::new(SimConfig {
        seed: 3,
        ..SimConfig::default()
    });
    let server = sim.add_turn_server(&TurnServerSpec::default());
    let mut c = config();
    c.ice_servers = vec![IceServer::new(format!("stun:{}", sim.server_addr(server)))];
    let mut nat = NatConfig::port_restricted_cone();
    nat.timeout = Duration::from_secs(15);
    let opts = HostOptions {
        nat: Some(nat),
        ..HostOptions::default()
    };
    let a = sim.add_host_with(c.clone(), opts);
    let b = sim.add_host_with(c, opts);
    sim.join(a, "room", "alice");
    sim.join(b, "room", "bob");
    assert!(sim.run_until_cond(Duration::from_secs(10), |s| {
        s.participant(a).is_connected(&pid("bob"))
    }));
    sim.run_for(Duration::from_secs(40));
    sim.send(
        a,
        &pid("bob"),
        meshrtc::DataMessage::Text("after the idle".into()),
    )
    .unwrap();
    sim.run_for(Duration::from_secs(1));
    let got = sim.mesh_events(b).any(|(_, e)| {
        matches!(e, meshrtc::Event::DataReceived { message: meshrtc::DataMessage::Text(t), .. } if t == "after the idle")
    });
    assert!(got, "the message after 40 s idle did not arrive");
    for h in [a, b] {
        let n = sim.nat_stats(h).unwrap();
        assert_eq!(n.expired, 0, "a mapping timed out: {n:?}");
    }
}

#[test]
fn bad_nat_and_server_keys_are_clear_errors() {
    let base = "duration_s = 1\n[[servers]]\nname = \"turn\"\n";
    for (host, expect) in [
        ("nat = \"carrier-grade\"", "unknown variant"),
        ("ice_servers = [\"nope\"]", "no server named \"nope\""),
        ("nat_timeout_s = 30", "need a nat"),
        ("nat = \"symmetric\"\nnat_timeout_s = 0", "nat_timeout_s"),
        ("ice_policy = \"relay\"", "relay needs ice_servers"),
    ] {
        let text = format!("{base}[[hosts]]\nname = \"a\"\n{host}\n");
        let err = Scenario::parse(&text, std::path::Path::new("bad.toml"))
            .and_then(|s| s.prepare(None).map(|_| ()))
            .expect_err(host)
            .to_string();
        assert!(err.contains(expect), "{host}: {err}");
    }
    let twice = "duration_s = 1\n[[servers]]\nname = \"t\"\n[[servers]]\nname = \"t\"\n\
                 [[hosts]]\nname = \"a\"\n";
    let err = Scenario::parse(twice, std::path::Path::new("bad.toml"))
        .and_then(|s| s.prepare(None).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("defined twice"), "{err}");
}
