//! Timeline events: outages and repair, link changes with a duration, cut-off hosts,
//! late joins and leaves

use std::path::Path;
use std::time::Duration;

use meshrtc::Event;
use meshrtc_sim::{Action, FlowConfig, FlowId, LinkConfig, Scenario, Sim, SimConfig};

use crate::util::{await_full_mesh, config, pid};

fn flow(name: &str, from: usize, to: usize, stop: Duration) -> FlowConfig {
    FlowConfig {
        name: name.into(),
        from: meshrtc_sim::HostId(from),
        to: meshrtc_sim::HostId(to),
        interval: Duration::from_millis(20),
        size: 160,
        start: Duration::ZERO,
        stop: Some(stop),
        late_after: Duration::from_millis(150),
    }
}

#[test]
fn a_10s_outage_stops_traffic_which_resumes_with_nothing_lost_silently() {
    let mut sim = Sim::new(SimConfig {
        seed: 31,
        default_link: LinkConfig::with_latency(Duration::from_millis(20)),
        ..SimConfig::default()
    });
    // The participants' default timeouts: the connection must survive the outage.
    let a = sim.add_host(config());
    let b = sim.add_host(config());
    sim.join(a, "room", "a");
    sim.run_for(Duration::from_millis(50));
    sim.join(b, "room", "b");
    await_full_mesh(&mut sim, &[a, b], Duration::from_secs(5));
    let stop = Duration::from_secs(35);
    let flows = [
        sim.add_flow(flow("data", 0, 1, stop)).unwrap(),
        sim.add_flow(flow("data", 1, 0, stop)).unwrap(),
    ];
    let (down, up) = (Duration::from_secs(10), Duration::from_secs(20));
    for (x, y) in [(a, b), (b, a)] {
        sim.schedule(down, Action::LinkDown { from: x, to: y });
        sim.schedule(up, Action::LinkUp { from: x, to: y });
    }
    sim.run_until(Duration::from_secs(45));

    for f in flows {
        let st = sim.flow_stats(f);
        // Reliable channel: every message arrives or, if the connection that carried it
        // had to be replaced after the outage, is reported undelivered; never both lost
        // and unreported, never twice.
        assert!(st.sent > 1700, "{}", st.sent);
        assert!(
            st.received + st.undelivered >= st.sent,
            "sent {} received {} undelivered {}",
            st.sent,
            st.received,
            st.undelivered
        );
        assert_eq!(st.duplicates, 0);
        let arrivals: Vec<Duration> = st.samples.iter().map(|x| x.sent_at + x.delay).collect();
        // Nothing arrives while the path is down (a message already on the wire at 10 s
        // may land within its 20 ms latency).
        let during = arrivals
            .iter()
            .filter(|&&t| t > down + Duration::from_millis(25) && t < up)
            .count();
        assert_eq!(during, 0, "arrivals during the outage");
        // Data flows again within 5 s of the repair.
        let first_after = arrivals.iter().filter(|&&t| t >= up).min().copied();
        assert!(
            first_after.is_some_and(|t| t < up + Duration::from_secs(5)),
            "{first_after:?}"
        );
        // The gap in arrivals spans the outage.
        let gap = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(gap >= Duration::from_secs(10), "{gap:?}");
        // And it recovers: five seconds after the repair the delay is the path's again.
        assert!(st
            .samples
            .iter()
            .filter(|x| x.sent_at >= Duration::from_secs(25))
            .all(|x| x.delay < Duration::from_millis(25)));
    }
    for (x, y) in [(a, b), (b, a)] {
        assert!(sim.link_stats(x, y).outage_dropped > 0);
        assert!(!sim
            .mesh_events(x)
            .any(|(_, e)| matches!(e, Event::PeerFailed { .. })));
        assert!(sim
            .participant(x)
            .is_connected(&pid(if x == a { "b" } else { "a" })));
    }
}

fn two_peers(duration_s: u32) -> String {
    format!(
        r#"
    seed = 5
    duration_s = {duration_s}
    [[hosts]]
    name = "a"
    [[hosts]]
    name = "b"
    [link]
    latency_ms = 20
"#
    )
}

fn scenario(text: &str) -> Scenario {
    Scenario::parse(text, Path::new("inline.toml")).unwrap()
}

#[test]
fn a_loss_burst_with_a_duration_applies_then_reverts() {
    let s = scenario(&format!(
        r#"{}
        [[timeline]]
        at_s = 5
        action = "set-link"
        from = "a"
        to = "b"
        both_ways = true
        duration_s = 2
        link = {{ loss = {{ model = "random", rate = 0.5 }} }}
        [[traffic]]
        from = "*"
        to = "*"
        rate_hz = 50
        stop_s = 15
        "#,
        two_peers(20)
    ));
    let mut p = s.prepare(None).unwrap();
    let (a, b) = (meshrtc_sim::HostId(0), meshrtc_sim::HostId(1));
    p.sim.run_until(Duration::from_millis(4990));
    assert_eq!(p.sim.link_stats(a, b).lost, 0);
    p.sim.run_until(Duration::from_millis(7010));
    let in_burst = p.sim.link_stats(a, b).lost;
    assert!(in_burst > 20, "{in_burst}");
    assert_eq!(
        p.sim.link_config(a, b),
        &LinkConfig::with_latency(Duration::from_millis(20))
    );
    p.sim.run_until(Duration::from_secs(20));
    assert_eq!(
        p.sim.link_stats(a, b).lost,
        in_burst,
        "no loss after the burst"
    );
    // The reliable channel recovers every message.
    let st = p.sim.flow_stats(FlowId(0));
    assert_eq!(st.received, st.sent);
}

#[test]
fn a_rate_drop_fills_the_queue_and_recovers() {
    let s = scenario(&format!(
        r#"{}
        [[timeline]]
        at_s = 5
        action = "set-link"
        from = "a"
        to = "b"
        duration_s = 5
        link = {{ rate_kbps = 64, queue_bytes = 4000 }}
        [[traffic]]
        from = "a"
        to = "b"
        rate_hz = 50
        size_bytes = 400
        stop_s = 25
        "#,
        two_peers(30)
    ));
    let out = s.run(None).unwrap();
    let st = out.sim.flow_stats(FlowId(0));
    let median_delay = |from: f64, to: f64| {
        let mut d: Vec<Duration> = st
            .samples
            .iter()
            .filter(|x| x.sent_at.as_secs_f64() >= from && x.sent_at.as_secs_f64() < to)
            .map(|x| x.delay)
            .collect();
        d.sort();
        d[d.len() / 2]
    };
    assert!(median_delay(2.0, 5.0) < Duration::from_millis(25));
    assert!(median_delay(6.0, 10.0) > Duration::from_millis(300));
    assert!(median_delay(20.0, 25.0) < Duration::from_millis(25));
    let link = out
        .sim
        .link_stats(meshrtc_sim::HostId(0), meshrtc_sim::HostId(1));
    assert!(link.queue_dropped > 0, "{link:?}");
    assert_eq!(st.received, st.sent);
}

#[test]
fn a_cut_off_host_joins_only_once_reconnected() {
    let mut sim = Sim::new(SimConfig {
        seed: 33,
        ..SimConfig::default()
    });
    let hosts: Vec<_> = (0..3).map(|_| sim.add_host(config())).collect();
    sim.join(hosts[0], "room", "p0");
    sim.join(hosts[1], "room", "p1");
    sim.apply(Action::Isolate(hosts[2])).unwrap();
    sim.schedule(
        Duration::from_millis(500),
        Action::Join {
            host: hosts[2],
            room: "room".into(),
            peer_id: "p2".into(),
        },
    );
    sim.schedule(Duration::from_secs(3), Action::Reconnect(hosts[2]));
    sim.run_until(Duration::from_millis(2990));
    assert!(sim.events(hosts[2]).is_empty(), "{:?}", sim.log());
    let t = await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    assert!(t > Duration::from_secs(3));
    let announced = sim
        .events(hosts[2])
        .iter()
        .find(|(_, e)| matches!(e, meshrtc::session::Event::Joined { .. }))
        .unwrap()
        .0;
    assert!(announced >= Duration::from_secs(3));

    // Cut it off again while connected: its traffic stops, then flows again.
    let f = sim
        .add_flow(flow("data", 0, 2, Duration::from_secs(30)))
        .unwrap();
    sim.schedule(Duration::from_secs(10), Action::Isolate(hosts[2]));
    sim.schedule(Duration::from_secs(13), Action::Reconnect(hosts[2]));
    sim.run_until(Duration::from_secs(35));
    let st = sim.flow_stats(f);
    assert_eq!(st.received, st.sent);
    let arrivals: Vec<Duration> = st.samples.iter().map(|x| x.sent_at + x.delay).collect();
    let gap = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(gap >= Duration::from_secs(3), "{gap:?}");
}

#[test]
fn peers_join_late_leave_and_rejoin() {
    let s = scenario(
        r#"
        seed = 6
        duration_s = 14
        [[hosts]]
        name = "p"
        count = 2
        [[hosts]]
        name = "late"
        join = false
        [link]
        latency_ms = 10
        [[timeline]]
        at_s = 2
        action = "join"
        host = "late"
        [[timeline]]
        at_s = 5
        action = "leave"
        host = "late"
        [[timeline]]
        at_s = 8
        action = "join"
        host = "late"
        "#,
    );
    let out = s.run(None).unwrap();
    let sim = &out.sim;
    let p0 = meshrtc_sim::HostId(0);
    let connects: Vec<Duration> = sim
        .mesh_events(p0)
        .filter_map(|(t, e)| match e {
            Event::PeerConnected { peer, .. } if peer.as_str() == "late" => Some(*t),
            _ => None,
        })
        .collect();
    assert_eq!(connects.len(), 2, "{:?}", sim.log());
    assert!(connects[0] > Duration::from_secs(2) && connects[0] < Duration::from_secs(3));
    assert!(connects[1] > Duration::from_secs(8) && connects[1] < Duration::from_secs(9));
    let left = sim
        .mesh_events(p0)
        .filter(|(t, e)| {
            matches!(e, Event::PeerLeft { peer, .. } if peer.as_str() == "late")
                && **t > Duration::from_secs(5)
                && **t < Duration::from_secs(6)
        })
        .count();
    assert_eq!(left, 1);
    // At the end all three are connected, and the report says so.
    assert!(out.report.pairs.iter().all(|p| p.connected));
    assert_eq!(sim.relay().connection_count(), 3);
}
