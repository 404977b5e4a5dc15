//! Connecting, exchanging data, leaving, determinism

use std::time::Duration;

use meshrtc::{DataMessage, Event, LeaveReason};
use meshrtc_sim::LogEntry;

use crate::util::*;

#[test]
fn two_peers_connect_and_exchange_data_both_ways() {
    let (mut sim, hosts) = mesh(1, 2, "room");
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));

    // Connect time is reported and plausible: a few signaling and link round trips.
    for &h in &hosts {
        let ct = sim.mesh_events(h).find_map(|(_, e)| match e {
            Event::PeerConnected { connect_time, .. } => Some(*connect_time),
            _ => None,
        });
        let ct = ct.expect("a connect event");
        eprintln!("2-peer connect time (virtual, 10 ms links, 5 ms to the server): {ct:?}");
        assert!(
            ct > Duration::from_millis(10) && ct < Duration::from_secs(2),
            "{ct:?}"
        );
        let stats = sim
            .participant(h)
            .peer_stats(&pid(if h == hosts[0] { "p1" } else { "p0" }));
        assert_eq!(stats.unwrap().connect_time, Some(ct));
    }

    sim.send(
        hosts[0],
        &pid("p1"),
        DataMessage::Text("hello from p0".into()),
    )
    .unwrap();
    sim.send(
        hosts[1],
        &pid("p0"),
        DataMessage::Binary(vec![1, 2, 3, 255]),
    )
    .unwrap();
    sim.run_for(Duration::from_millis(200));

    assert_eq!(
        received_texts(&sim, hosts[1]),
        vec![(pid("p0"), "hello from p0".to_string())]
    );
    let bin: Vec<_> = sim
        .mesh_events(hosts[0])
        .filter_map(|(_, e)| match e {
            Event::DataReceived {
                peer,
                label,
                message: DataMessage::Binary(b),
            } => Some((peer.clone(), label.clone(), b.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        bin,
        vec![(pid("p1"), "meshrtc".to_string(), vec![1, 2, 3, 255])]
    );
}

#[test]
fn messages_sent_before_connect_are_queued_and_arrive_in_order() {
    let (mut sim, hosts) = mesh(2, 2, "room");
    // p1 has just offered; its channel is not open yet.
    for i in 0..50 {
        sim.send(hosts[1], &pid("p0"), DataMessage::Text(format!("m{i}")))
            .unwrap();
    }
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    sim.run_for(Duration::from_millis(500));
    let got: Vec<String> = received_texts(&sim, hosts[0])
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn four_peers_full_mesh_everyone_to_everyone() {
    let (mut sim, hosts) = mesh(3, 4, "room");
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    for (i, &h) in hosts.iter().enumerate() {
        for j in 0..hosts.len() {
            if i != j {
                sim.send(h, &pid(&name(j)), DataMessage::Text(format!("{i}->{j}")))
                    .unwrap();
            }
        }
    }
    sim.run_for(Duration::from_millis(500));
    for (j, &h) in hosts.iter().enumerate() {
        let mut got: Vec<String> = received_texts(&sim, h)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..hosts.len())
            .filter(|&i| i != j)
            .map(|i| format!("{i}->{j}"))
            .collect();
        want.sort();
        assert_eq!(got, want, "host {j}");
    }
}

#[test]
fn ten_peers_45_connections_and_broadcast_reaches_all() {
    let (mut sim, hosts) = mesh(4, 10, "room");
    let t = await_full_mesh(&mut sim, &hosts, Duration::from_secs(10));
    let connections: usize = hosts
        .iter()
        .map(|&h| sim.participant(h).live_rtc_count())
        .sum::<usize>()
        / 2;
    assert_eq!(connections, 45);
    eprintln!("10-peer mesh connected at virtual {t:?}");
    for (i, &h) in hosts.iter().enumerate() {
        let n = sim
            .broadcast(h, DataMessage::Text(format!("from {i}")))
            .unwrap();
        assert_eq!(n, 9);
    }
    sim.run_for(Duration::from_millis(500));
    for (j, &h) in hosts.iter().enumerate() {
        let got = received_texts(&sim, h);
        assert_eq!(got.len(), 9, "host {j} got {got:?}");
        for (from, text) in got {
            assert_eq!(text, format!("from {}", &from.as_str()[1..]));
        }
    }
}

#[test]
fn leaving_peer_is_dropped_by_the_others() {
    let (mut sim, hosts) = mesh(5, 3, "room");
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    sim.leave(hosts[2]);
    sim.run_for(Duration::from_secs(1));
    for &h in &hosts[..2] {
        let left: Vec<_> = sim
            .mesh_events(h)
            .filter_map(|(_, e)| match e {
                Event::PeerLeft { peer, reason } => Some((peer.clone(), *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].0, pid("p2"));
        assert_eq!(sim.participant(h).live_rtc_count(), 1);
    }
    assert_eq!(sim.participant(hosts[2]).live_rtc_count(), 0);
    assert!(sim.mesh_events(hosts[2]).any(|(_, e)| matches!(
        e,
        Event::PeerLeft {
            reason: LeaveReason::LocalLeave,
            ..
        }
    )));
    // The two that stayed still talk.
    sim.send(hosts[0], &pid("p1"), DataMessage::Text("still here".into()))
        .unwrap();
    sim.run_for(Duration::from_millis(200));
    assert!(received_texts(&sim, hosts[1])
        .iter()
        .any(|(_, t)| t == "still here"));
}

#[test]
fn hundred_join_leave_cycles_leave_no_state_behind() {
    let (mut sim, hosts) = mesh(6, 2, "room");
    await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
    for cycle in 0..100 {
        let h = sim.add_host(config());
        sim.join(h, "room", &format!("guest{cycle}"));
        let ok = sim.run_until_cond(Duration::from_secs(5), |s| {
            s.participant(hosts[0])
                .is_connected(&pid(&format!("guest{cycle}")))
                && s.participant(h).peer_ids().count() == 2
        });
        assert!(ok, "guest {cycle} did not connect");
        sim.leave(h);
        sim.run_for(Duration::from_millis(100));
        assert_eq!(
            sim.participant(hosts[0]).live_rtc_count(),
            1,
            "cycle {cycle}"
        );
        assert_eq!(
            sim.participant(hosts[1]).live_rtc_count(),
            1,
            "cycle {cycle}"
        );
        assert_eq!(sim.participant(h).live_rtc_count(), 0);
    }
    assert_eq!(sim.relay().connection_count(), 2);
    assert_eq!(sim.relay().room_count(), 1);
}

#[test]
fn same_seed_gives_the_same_event_log() {
    fn run(seed: u64) -> Vec<LogEntry> {
        let (mut sim, hosts) = mesh(seed, 4, "room");
        await_full_mesh(&mut sim, &hosts, Duration::from_secs(5));
        for &h in &hosts {
            sim.broadcast(h, DataMessage::Text("x".into())).unwrap();
        }
        sim.run_for(Duration::from_secs(2));
        sim.log().to_vec()
    }
    let a = run(7);
    let b = run(7);
    assert!(a.len() > 20);
    assert_eq!(a, b);
}
