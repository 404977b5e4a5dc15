//! Host clocks: exact drift, exact deadline conversion, and a mesh that connects under drift

use std::time::Duration;

use meshrtc::{DataMessage, Event};
use meshrtc_sim::{Clock, FlowConfig, HostId, HostOptions, Sim, SimConfig};

use crate::util::{await_full_mesh, config, pid};

#[test]
fn a_host_at_500_ppm_advances_exactly_500_us_per_second_faster() {
    let mut sim = Sim::new(SimConfig::default());
    let fast = sim.add_host_with(
        config(),
        HostOptions {
            clock: Clock::new(0, 500.0).unwrap(),
            nat: None,
        },
    );
    let slow = sim.add_host_with(
        config(),
        HostOptions {
            clock: Clock::new(-7_000_000_000, -2000.0).unwrap(),
            nat: None,
        },
    );
    let ideal = sim.add_host(config());
    let (f0, s0, i0) = (
        sim.local_now(fast),
        sim.local_now(slow),
        sim.local_now(ideal),
    );
    assert_eq!(s0 + Duration::from_secs(7), i0, "offset is exact");
    for k in 1..=120u32 {
        sim.run_until(Duration::from_secs(k as u64));
        let virtual_elapsed = Duration::from_secs(k as u64);
        assert_eq!(sim.local_now(ideal) - i0, virtual_elapsed);
        assert_eq!(
            sim.local_now(fast) - f0,
            virtual_elapsed + Duration::from_micros(500) * k,
            "after {k} s"
        );
        assert_eq!(
            sim.local_now(slow) - s0,
            virtual_elapsed - Duration::from_millis(2) * k,
            "after {k} s"
        );
    }
    // Between whole seconds too: 0.25 s at +500 ppm is 125 µs more.
    sim.run_for(Duration::from_millis(250));
    assert_eq!(
        sim.local_now(fast) - f0,
        Duration::from_millis(120_250) + Duration::from_micros(60_125)
    );
}

#[test]
fn the_clock_inverse_is_exact_at_every_nanosecond() {
    // Brute force over a window: the earliest virtual time reaching each local reading.
    for ppm in [-2000.0, -333.333, 1000.0, 2000.0] {
        let c = Clock::new(123_456, ppm).unwrap();
        let start = 5_000_000_000u64;
        let mut t = start;
        for local in c.local_ns(start)..c.local_ns(start) + 20_000 {
            while c.local_ns(t) < local {
                t += 1;
            }
            assert_eq!(c.virtual_at_or_after(local), t, "ppm {ppm} local {local}");
        }
    }
}

/// Two peers at +1000 and -1000 ppm, with offsets of an hour either way
fn drifting_pair(seed: u64) -> (Sim, [HostId; 2]) {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let a = sim.add_host_with(
        config(),
        HostOptions {
            clock: Clock::new(3_600_000_000_000, 1000.0).unwrap(),
            nat: None,
        },
    );
    let b = sim.add_host_with(
        config(),
        HostOptions {
            clock: Clock::new(-3_600_000_000_000, -1000.0).unwrap(),
            nat: None,
        },
    );
    sim.join(a, "room", "a");
    sim.run_for(Duration::from_millis(50));
    sim.join(b, "room", "b");
    (sim, [a, b])
}

#[test]
fn two_peers_connect_and_talk_under_1000_ppm_drift() {
    let (mut sim, hosts) = drifting_pair(21);
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    // Each side reports a plausible connect time on its own clock.
    for (h, peer) in [(hosts[0], "b"), (hosts[1], "a")] {
        let info = sim.connect_info(h, &pid(peer)).unwrap();
        let reported = info.connect_time.as_secs_f64();
        assert!(reported > 0.01 && reported < 2.0, "{reported}");
    }
    for i in 0..20 {
        sim.send(hosts[0], &pid("b"), DataMessage::Text(format!("a{i}")))
            .unwrap();
        sim.send(hosts[1], &pid("a"), DataMessage::Text(format!("b{i}")))
            .unwrap();
        sim.run_for(Duration::from_millis(100));
    }
    // Keep going for a minute of virtual time: nothing fails, keepalives keep it up.
    sim.run_for(Duration::from_secs(60));
    for (h, peer) in [(hosts[0], "b"), (hosts[1], "a")] {
        let got = sim
            .mesh_events(h)
            .filter(|(_, e)| matches!(e, Event::DataReceived { .. }))
            .count();
        assert_eq!(got, 20);
        assert!(sim.participant(h).is_connected(&pid(peer)));
        assert!(!sim
            .mesh_events(h)
            .any(|(_, e)| matches!(e, Event::PeerFailed { .. } | Event::PeerLeft { .. })));
    }
}

#[test]
fn every_deadline_is_met_at_its_exact_virtual_nanosecond() {
    let (mut sim, hosts) = drifting_pair(22);
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    // Traffic both ways keeps SCTP's and str0m's timers busy.
    for (from, to) in [(0, 1), (1, 0)] {
        sim.add_flow(FlowConfig {
            name: "data".into(),
            from: HostId(from),
            to: HostId(to),
            interval: Duration::from_millis(20),
            size: 100,
            start: sim.elapsed(),
            stop: None,
            late_after: Duration::from_millis(150),
        })
        .unwrap();
    }
    sim.run_for(Duration::from_secs(30));
    for h in hosts {
        let t = sim.timeout_stats(h);
        assert_eq!(t.early, 0, "{t:?}");
        // Nearly every deadline lies in the future when it is given and is met exactly;
        // the rest had passed already (a zero-length timeout) and were fed at once.
        assert!(t.exact >= 20, "{t:?}");
        assert!(t.overdue * 20 < t.exact, "{t:?}");
    }
}
