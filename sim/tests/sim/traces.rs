//! Trace replay: Mahimahi capacity traces and meshrtc packet traces, generated here (and a
//! real trace from ../shared/traces when it is there)

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshrtc_sim::link::DropReason;
use meshrtc_sim::{
    CapacityTrace, Link, LinkConfig, PacketTrace, QueueLimit, Rate, Scenario, Verdict,
};

use crate::util::{real_trace, scratch};

fn trace_link(trace: CapacityTrace, queue: QueueLimit) -> Link {
    Link::new(
        LinkConfig {
            rate: Rate::Trace(Arc::new(trace)),
            queue,
            ..LinkConfig::default()
        },
        1,
        Duration::ZERO,
    )
    .unwrap()
}

/// Offers `n` packets of `size` bytes, `spacing` apart; returns the delivery times
fn deliveries(link: &mut Link, n: u32, spacing: Duration, size: usize) -> Vec<Duration> {
    (0..n)
        .filter_map(|i| match link.handle_packet(spacing * i, size).verdict {
            Verdict::Deliver(t) => Some(t),
            Verdict::Drop(_) => None,
        })
        .collect()
}

#[test]
fn a_capacity_trace_releases_packets_only_at_its_opportunities() {
    // Four opportunities every 10 ms (two at ms 2, one at 5, one at 10): 4.8 Mbit/s.
    let trace = CapacityTrace::parse("2\n2\n5\n10\n", Path::new("gen")).unwrap();
    assert!((trace.mean_bits_per_sec() - 4_800_000.0).abs() < 1e-6);
    let mut l = trace_link(trace.clone(), QueueLimit::Unlimited);
    // 1500-byte packets at 12 Mbit/s for one second: always backlogged.
    let got = deliveries(&mut l, 1000, Duration::from_millis(1), 1500);
    let first_second: Vec<&Duration> = got.iter().filter(|t| t.as_millis() <= 1000).collect();
    assert_eq!(first_second.len(), 400, "4 per 10 ms");
    for t in &got {
        let ms = t.as_nanos() as u64;
        assert_eq!(ms % 1_000_000, 0, "on a millisecond: {t:?}");
        assert!([2, 5, 0].contains(&((ms / 1_000_000) % 10)), "{t:?}");
    }
    // Two packets share millisecond 2 of each period.
    assert_eq!(got[0], Duration::from_millis(2));
    assert_eq!(got[1], Duration::from_millis(2));
    assert_eq!(got[2], Duration::from_millis(5));
    assert_eq!(got[3], Duration::from_millis(10));
    assert_eq!(got[4], Duration::from_millis(12));

    // Smaller packets share an opportunity's 1500 bytes: three 500-byte packets each.
    let mut l = trace_link(trace, QueueLimit::Unlimited);
    let got = deliveries(&mut l, 3000, Duration::from_micros(300), 500);
    let first_second = got.iter().filter(|t| t.as_millis() <= 1000).count();
    assert_eq!(first_second, 1200);
}

#[test]
fn a_variable_trace_queues_and_drops_in_its_slow_phase() {
    // 500 ms at one opportunity per millisecond (12 Mbit/s), then 500 ms at one per 10 ms
    // (1.2 Mbit/s); repeating every second.
    let mut offsets: Vec<u64> = (1..=500).collect();
    offsets.extend((51..=100).map(|k| k * 10));
    let trace = CapacityTrace::from_offsets(offsets).unwrap();
    let mut l = trace_link(trace, QueueLimit::Packets(50));
    // 6 Mbit/s offered: fits the fast phase, overflows the slow one.
    let n = 1500; // three seconds
    let mut delivered = Vec::new();
    let mut drops = Vec::new();
    for i in 0..n {
        let at = Duration::from_millis(2) * i;
        match l.handle_packet(at, 1500).verdict {
            Verdict::Deliver(t) => delivered.push((at, t)),
            Verdict::Drop(r) => {
                assert_eq!(r, DropReason::Queue);
                drops.push(at)
            }
        }
    }
    let phase = |t: Duration| (t.as_millis() % 1000) < 500;
    // Nothing is dropped while the link is fast (its queue drains within ~55 ms of the
    // phase change); everything dropped is offered in the slow phase.
    assert!(!drops.is_empty());
    assert!(drops.iter().all(|&t| !phase(t)), "{drops:?}");
    // In the slow phase the link sends one packet per 10 ms exactly.
    let slow: Vec<Duration> = delivered
        .iter()
        .map(|&(_, t)| t)
        .filter(|&t| t >= Duration::from_millis(1510) && t < Duration::from_millis(2000))
        .collect();
    assert_eq!(slow.len(), 49);
    // The queue fills about 125 ms into the slow phase; its 50 packets then wait for the
    // rest of the slow phase (37 opportunities) and 13 fast ones: about 400 ms at worst.
    let worst = delivered.iter().map(|&(a, t)| t - a).max().unwrap();
    assert!(worst <= Duration::from_millis(420), "{worst:?}");
    assert!(worst >= Duration::from_millis(380), "{worst:?}");
}

#[test]
fn a_packet_trace_gives_each_packet_its_delay_or_loss() {
    let trace = PacketTrace::parse(
        "# meshrtc packet trace v1\n10\n20.5\nlost\n30\n",
        Path::new("gen"),
    )
    .unwrap();
    let mut l = Link::new(
        LinkConfig {
            delay_trace: Some(Arc::new(trace)),
            keep_order: false,
            ..LinkConfig::default()
        },
        1,
        Duration::ZERO,
    )
    .unwrap();
    let got: Vec<Verdict> = (0..8)
        .map(|i| l.handle_packet(Duration::from_secs(i), 100).verdict)
        .collect();
    let at = |s: u64, ms: f64| {
        Verdict::Deliver(Duration::from_secs(s) + Duration::from_secs_f64(ms / 1000.0))
    };
    assert_eq!(
        got,
        vec![
            at(0, 10.0),
            at(1, 20.5),
            Verdict::Drop(DropReason::Trace),
            at(3, 30.0),
            at(4, 10.0),
            at(5, 20.5),
            Verdict::Drop(DropReason::Trace),
            at(7, 30.0),
        ]
    );
    assert_eq!(l.stats().trace_lost, 2);
}

#[test]
fn scenario_traces_are_read_relative_to_the_scenario_file() {
    let dir = scratch("trace-scenario");
    std::fs::create_dir_all(dir.join("traces")).unwrap();
    // 2 Mbit/s: one opportunity every 6 ms.
    let cap: String = (1..=1000).map(|k| format!("{}\n", k * 6)).collect();
    std::fs::write(dir.join("traces/uplink.mahi"), cap).unwrap();
    // Every packet 40 ms, one in 50 lost.
    let mut pk = String::from("# meshrtc packet trace v1\n");
    for i in 0..50 {
        pk.push_str(if i == 49 { "lost\n" } else { "40\n" });
    }
    std::fs::write(dir.join("traces/path.delays"), pk).unwrap();
    let scenario = r#"
        seed = 3
        duration_s = 12
        [[hosts]]
        name = "a"
        [[hosts]]
        name = "b"
        [link]
        latency_ms = 5
        [[links]]
        from = "a"
        to = "b"
        link = { capacity_trace = "traces/uplink.mahi", queue_bytes = 60000 }
        [[links]]
        from = "b"
        to = "a"
        link = { latency_ms = 0, delay_trace = "traces/path.delays" }
        [[traffic]]
        from = "*"
        to = "*"
        rate_hz = 50
        size_bytes = 1000
        stop_s = 10
    "#;
    let path = dir.join("cell.toml");
    std::fs::write(&path, scenario).unwrap();
    let s = Scenario::from_path(&path).unwrap();
    let out = s.run(None).unwrap();
    let r = &out.report;
    assert!(r.pairs.iter().all(|p| p.connected));
    let ab = &r.pairs[0];
    let ba = &r.pairs[1];
    assert_eq!((ab.from.as_str(), ba.from.as_str()), ("a", "b"));
    // b → a: packet trace loss shows on the link; the delay floor is the trace's 40 ms.
    assert!(ba.link.trace_lost > 0);
    let d = ba.streams[0].delay_ms.as_ref().unwrap();
    assert!(d.min >= 40.0 && d.p50 >= 40.0 && d.p50 < 45.0, "{d:?}");
    // a → b: paced by the capacity trace (≤ 6 ms per 1500 bytes, plus 5 ms latency).
    let d = ab.streams[0].delay_ms.as_ref().unwrap();
    assert!(d.min >= 5.0 && d.p50 < 20.0, "{d:?}");
    assert_eq!(ab.streams[0].lost, 0);
    // A trace that is missing is an error naming it.
    let bad = scenario.replace("uplink.mahi", "missing.mahi");
    std::fs::write(&path, bad).unwrap();
    let e = Scenario::from_path(&path).unwrap_err().to_string();
    assert!(e.contains("missing.mahi"), "{e}");
}

#[test]
fn a_real_lte_trace_replays_at_its_capacity_when_present() {
    let Some(path) = real_trace("Verizon-LTE-short.up") else {
        eprintln!("skipped: ../shared/traces/Verizon-LTE-short.up is not here");
        return;
    };
    let trace = CapacityTrace::from_path(&path).unwrap();
    assert_eq!(trace.period(), Duration::from_secs(140));
    let opportunities = trace.len();
    let mean = trace.mean_bits_per_sec();
    assert!(mean > 1e6 && mean < 50e6, "{mean}");
    // Offer 48 Mbit/s of full-size packets for one period: the link delivers (almost)
    // exactly one packet per opportunity.
    let mut l = trace_link(trace, QueueLimit::Unlimited);
    let got = deliveries(&mut l, 560_000, Duration::from_micros(250), 1500);
    let in_period = got
        .iter()
        .filter(|t| **t <= Duration::from_secs(140))
        .count();
    let used = in_period as f64 / opportunities as f64;
    assert!(used > 0.99 && used <= 1.0, "used {used} of {opportunities}");
}
