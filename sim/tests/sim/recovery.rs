//! Connections that heal: path outages, a host cut off, a restarted signaling server, a
//! host's signaling cut while its media flows, an address change, and a full room where
//! three peers drop and return — in virtual time, over seeds
//!
//! For every case and seed: audio and data resume within 5 s of the repair on every pair
//! the fault touched (and never stop where only signaling was hit), no reliable message is
//! lost or duplicated (a message a full reconnect could not vouch for is reported to the
//! application, not lost silently), and the room is a full mesh again at the end.
//!
//! CI runs a few seeds per case; `cargo test --release -p meshrtc-sim --test sim
//! recovery_sweep -- --ignored --nocapture` runs 100 and prints the resume times.

use std::time::Duration;

use meshrtc_sim::scenario::Outcome;
use meshrtc_sim::{HostId, Scenario};

use crate::util::scenarios_dir;

/// A fault and when each touched host was whole again
struct Case {
    scenario: &'static str,
    /// (host name, repair time): pairs with this host must resume within the bound after
    repairs: &'static [(&'static str, f64)],
    /// Only signaling was hit: media and data must never stop
    signaling_only: bool,
}

const CASES: &[Case] = &[
    Case {
        scenario: "recovery-outage-5s",
        repairs: &[("alice", 15.0), ("bob", 15.0)],
        signaling_only: false,
    },
    Case {
        scenario: "recovery-outage-15s",
        repairs: &[("alice", 25.0), ("bob", 25.0)],
        signaling_only: false,
    },
    Case {
        scenario: "recovery-outage-30s",
        repairs: &[("alice", 40.0), ("bob", 40.0)],
        signaling_only: false,
    },
    Case {
        scenario: "recovery-outage-60s",
        repairs: &[("alice", 70.0), ("bob", 70.0)],
        signaling_only: false,
    },
    Case {
        scenario: "recovery-isolate-30s",
        repairs: &[("bob", 40.0)],
        signaling_only: false,
    },
    Case {
        scenario: "recovery-server-restart",
        repairs: &[],
        signaling_only: true,
    },
    Case {
        scenario: "recovery-signaling-cut-60s",
        repairs: &[],
        signaling_only: true,
    },
    Case {
        scenario: "recovery-move-host",
        repairs: &[("bob", 10.0)],
        signaling_only: false,
    },
    Case {
        scenario: "recovery-mesh-10-drops",
        repairs: &[("p2", 25.0), ("p5", 50.0), ("p8", 75.0)],
        signaling_only: false,
    },
];

/// How long after a repair audio and data must flow again
const RESUME_WITHIN: Duration = Duration::from_secs(5);

/// The longest pause a pair untouched by the fault may see
const NEVER_STOPS: Duration = Duration::from_millis(500);

/// What one run showed
#[derive(Debug, Default)]
struct Result {
    /// Repair to the first audio played, per touched directed pair
    audio_resume: Vec<Duration>,
    /// Repair to the first data message arrived, per touched flow
    data_resume: Vec<Duration>,
    problems: Vec<String>,
}

fn run(case: &Case, seed: u64) -> Result {
    let path = scenarios_dir().join(format!("{}.toml", case.scenario));
    let s = Scenario::from_path(&path).unwrap_or_else(|e| panic!("{}: {e}", case.scenario));
    let out = s.run(Some(seed)).unwrap();
    check(case, &out)
}

fn check(case: &Case, out: &Outcome) -> Result {
    let sim = &out.sim;
    let mut r = Result::default();
    let name_of = |h: HostId| out.report.hosts[h.0].name.clone();
    let repair_of = |a: HostId, b: HostId| {
        case.repairs
            .iter()
            .filter(|(n, _)| *n == name_of(a) || *n == name_of(b))
            .map(|(_, t)| Duration::from_secs_f64(*t))
            .max()
    };
    let end = sim.elapsed();
    // Data: nothing lost or duplicated; resumes after the repair.
    for i in 0..sim.flow_count() {
        let id = meshrtc_sim::FlowId(i);
        let cfg = sim.flow_config(id);
        let st = sim.flow_stats(id);
        let tag = format!(
            "flow {} {}→{}",
            cfg.name,
            name_of(cfg.from),
            name_of(cfg.to)
        );
        // Every message arrived or was reported (one reported may have arrived too: the
        // old connection could not say).
        if st.received + st.undelivered < st.sent || st.received > st.sent {
            r.problems.push(format!(
                "{tag}: sent {} received {} undelivered {}",
                st.sent, st.received, st.undelivered
            ));
        }
        if st.duplicates > 0 {
            r.problems
                .push(format!("{tag}: {} duplicates", st.duplicates));
        }
        let arrivals: Vec<Duration> = st.samples.iter().map(|x| x.sent_at + x.delay).collect();
        match repair_of(cfg.from, cfg.to) {
            Some(repair) => match arrivals.iter().find(|t| **t >= repair) {
                Some(t) => r.data_resume.push(*t - repair),
                None => r.problems.push(format!("{tag}: nothing after the repair")),
            },
            None => {
                let until = cfg.stop.map_or(end, |s| s.min(end));
                let gap = longest_gap(&arrivals, until);
                if gap > NEVER_STOPS {
                    r.problems.push(format!("{tag}: stopped for {gap:?}"));
                }
            }
        }
    }
    // Audio: resumes after the repair; never stops where the fault did not touch.
    for i in 0..sim.media_stream_count() {
        let id = meshrtc_sim::MediaStreamId(i);
        let cfg = sim.media_stream_config(id);
        for rx in 0..sim.host_count() {
            let rx = HostId(rx);
            if rx == cfg.from {
                continue;
            }
            let Some(st) = sim.media_stats(id, rx) else {
                r.problems.push(format!(
                    "audio {}→{}: nothing",
                    name_of(cfg.from),
                    name_of(rx)
                ));
                continue;
            };
            let tag = format!("audio {}→{}", name_of(cfg.from), name_of(rx));
            let mut plays: Vec<Duration> =
                st.samples.iter().map(|x| x.captured_at + x.delay).collect();
            plays.sort();
            match repair_of(cfg.from, rx) {
                Some(repair) => match plays.iter().find(|t| **t >= repair) {
                    Some(t) => r.audio_resume.push(*t - repair),
                    None => r.problems.push(format!("{tag}: nothing after the repair")),
                },
                None => {
                    // Until the stream stops (or the scenario ends).
                    let until = cfg.stop.map_or(end, |s| s.min(end));
                    let gap = longest_gap(&plays, until.saturating_sub(Duration::from_secs(1)));
                    if gap > NEVER_STOPS {
                        r.problems.push(format!("{tag}: stopped for {gap:?}"));
                    }
                }
            }
        }
    }
    for (what, v) in [("audio", &r.audio_resume), ("data", &r.data_resume)] {
        if let Some(worst) = v.iter().max() {
            if *worst > RESUME_WITHIN {
                r.problems
                    .push(format!("{what} resumed {worst:?} after the repair"));
            }
        }
    }
    // A full mesh again.
    for p in &out.report.pairs {
        if !p.connected {
            r.problems
                .push(format!("{} → {} not connected at the end", p.from, p.to));
        }
    }
    if case.signaling_only && (!r.audio_resume.is_empty() || !r.data_resume.is_empty()) {
        r.problems.push("a signaling-only case had repairs".into());
    }
    r
}

/// The longest time without an arrival between the first one and `until`
fn longest_gap(times: &[Duration], until: Duration) -> Duration {
    let mut sorted: Vec<Duration> = times.to_vec();
    sorted.sort();
    let mut gap = Duration::ZERO;
    for w in sorted.windows(2) {
        gap = gap.max(w[1] - w[0]);
    }
    if let Some(last) = sorted.last() {
        gap = gap.max(until.saturating_sub(*last));
    }
    gap
}

fn assert_case(case: &Case, seeds: impl IntoIterator<Item = u64>) {
    for seed in seeds {
        let r = run(case, seed);
        assert!(
            r.problems.is_empty(),
            "{} seed {seed}: {:#?}",
            case.scenario,
            r.problems
        );
    }
}

fn case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.scenario == name)
        .expect("a listed case")
}

#[test]
fn short_and_long_path_outages_heal() {
    for name in [
        "recovery-outage-5s",
        "recovery-outage-15s",
        "recovery-outage-30s",
        "recovery-outage-60s",
    ] {
        assert_case(case(name), [1, 2]);
    }
}

#[test]
fn a_host_cut_off_from_everything_comes_back() {
    assert_case(case("recovery-isolate-30s"), [1, 2]);
}

#[test]
fn a_restarted_signaling_server_does_not_stop_media() {
    assert_case(case("recovery-server-restart"), [1, 2]);
}

#[test]
fn a_host_without_signaling_keeps_its_media() {
    assert_case(case("recovery-signaling-cut-60s"), [1]);
}

#[test]
fn a_host_that_changes_its_address_comes_back_at_once() {
    assert_case(case("recovery-move-host"), [1, 2]);
}

#[test]
fn a_full_room_heals_after_three_peers_drop_at_different_times() {
    assert_case(case("recovery-mesh-10-drops"), [1]);
}

/// 100 seeds per case; prints repair-to-resume p50/p95/max
#[test]
#[ignore = "a sweep: run with --release --ignored --nocapture"]
fn recovery_sweep() {
    let seeds: u64 = std::env::var("SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    // SEED_FROM runs seeds SEED_FROM.. (to split a sweep); CASE keeps scenarios whose
    // name contains it.
    let from: u64 = std::env::var("SEED_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let only = std::env::var("CASE").unwrap_or_default();
    println!("| scenario | seeds | audio resume p50 / p95 / max | data resume p50 / p95 / max | failed seeds |");
    println!("|---|---|---|---|---|");
    for case in CASES.iter().filter(|c| c.scenario.contains(&only)) {
        let mut audio = Vec::new();
        let mut data = Vec::new();
        let mut failed = Vec::new();
        for seed in from..from + seeds {
            let r = run(case, seed);
            if !r.problems.is_empty() {
                eprintln!("{} seed {seed}: {:?}", case.scenario, r.problems);
                failed.push(seed);
            }
            audio.extend(r.audio_resume);
            data.extend(r.data_resume);
        }
        println!(
            "| {} | {seeds} | {} | {} | {failed:?} |",
            case.scenario,
            percentiles(&mut audio),
            percentiles(&mut data)
        );
    }
}

fn percentiles(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "never stopped".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    format!("{:.2} / {:.2} / {:.2} s", at(0.5), at(0.95), at(1.0))
}

/// Four peers handshaking over a bad path from the first packet: 15 % loss, 5 % of packets
/// duplicated, 10 % reordered, exponential jitter
///
/// 45 s, not 30: SCTP's own 4-way handshake retransmits after 3, 6 and 12 s, and in 4 of 12
/// runs of seed 4 one pair's data channel opened only after about 30 s (runs of one seed
/// differ: DTLS and SCTP draw from the OS). SNAP (`a=sctp-init`, str0m's
/// `set_snap_enabled`) takes that handshake out (seeds 1–6, four runs each: connect median
/// 2.91 → 1.37 s) but puts OS-random SCTP parameters into the SDP, and runs of one seed no
/// longer replay exactly (`determinism`); not taken.
const BAD_PATH: &str = r#"
name = "bad-path-handshakes"
seed = 1
duration_s = 45

[[hosts]]
name = "p"
count = 4
stagger_ms = 200

[link]
latency_ms = 40
jitter = { shape = "exponential", mean_ms = 15 }
duplicate = 0.05
reorder = 0.1
reorder_delay_ms = 30
loss = { model = "random", rate = 0.15 }
"#;

/// A connection whose DTLS handshake refused a datagram is made again 2 s later (a stale or
/// forged record can leave the handshake unable to finish). Loss, duplicates and
/// reordering must never look like that: over a bad path every pair connects and DTLS
/// refuses nothing, so a slow but sound handshake is never cut short.
#[test]
fn handshakes_over_a_bad_path_connect_and_dtls_refuses_nothing() {
    for seed in 1..=6 {
        let out = Scenario::parse(BAD_PATH, std::path::Path::new("bad-path.toml"))
            .expect("scenario")
            .run(Some(seed))
            .expect("run");
        let sim = &out.sim;
        let n = out.report.hosts.len();
        for a in (0..n).map(HostId) {
            for b in (0..n).map(HostId).filter(|b| *b != a) {
                let peer = sim.peer_id(b).expect("joined").clone();
                assert!(
                    sim.connect_info(a, &peer).is_some(),
                    "seed {seed}: {a:?} never connected to {b:?}"
                );
                let refused = sim.peer_stats(a, &peer).map_or(0, |s| s.dtls_rejected);
                assert_eq!(refused, 0, "seed {seed}: {a:?} from {b:?}");
            }
        }
    }
}
