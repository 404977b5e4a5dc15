//! Four peers, two on each driver, in one room

use std::collections::BTreeSet;

use meshrtc::DataMessage;
use meshrtc_blocking::Event;

use crate::util::*;

/// Blocking and tokio peers join alternately; every pair connects, every data message
/// arrives, and the blocking peers' audio reaches all three others
#[test]
fn four_peers_mixing_drivers_full_mesh() {
    let rt = runtime();
    let server = server(&rt);
    let url = server.url();
    let ids = ["m1b", "m2t", "m3b", "m4t"].map(pid);

    let b1 = join_blocking(&url, "four", "m1b");
    let (t2, mut t2_events) = join_tokio(&rt, &url, "four", "m2t");
    let b3 = join_blocking(&url, "four", "m3b");
    let (t4, mut t4_events) = join_tokio(&rt, &url, "four", "m4t");

    let others = |me: usize| -> Vec<_> {
        let mut v: Vec<_> = ids.iter().filter(|p| **p != ids[me]).cloned().collect();
        v.sort();
        v
    };
    assert_eq!(connected(&b1.events, 3), others(0));
    assert_eq!(connected_tokio(&rt, &mut t2_events, 3), others(1));
    assert_eq!(connected(&b3.events, 3), others(2));
    assert_eq!(connected_tokio(&rt, &mut t4_events, 3), others(3));

    // Every peer sends one message to every other peer, naming sender and receiver.
    for (me, handle) in [(0, &b1.handle), (2, &b3.handle)] {
        for to in others(me) {
            let text = format!("{}->{}", ids[me], to);
            handle.send_data(&to, DataMessage::Text(text)).unwrap();
        }
    }
    for (me, handle) in [(1, &t2), (3, &t4)] {
        for to in others(me) {
            let text = format!("{}->{}", ids[me], to);
            rt.block_on(handle.send_data(&to, DataMessage::Text(text)))
                .unwrap();
        }
    }
    let expect = |me: usize| -> BTreeSet<String> {
        others(me)
            .iter()
            .map(|from| format!("{from}->{}", ids[me]))
            .collect()
    };
    let mut b1_idx = Indices::default();
    let mut b3_idx = Indices::default();
    for (me, session, idx) in [(0, &b1, &mut b1_idx), (2, &b3, &mut b3_idx)] {
        let mut got = BTreeSet::new();
        while got.len() < 3 {
            let text = wait_for(&session.events, "data", |e| {
                idx.note(e);
                match e {
                    Event::Mesh(meshrtc::Event::DataReceived {
                        message: DataMessage::Text(t),
                        ..
                    }) => Some(t.clone()),
                    _ => None,
                }
            });
            got.insert(text);
        }
        assert_eq!(got, expect(me));
    }
    for (me, events) in [(1, &mut t2_events), (3, &mut t4_events)] {
        let mut got = BTreeSet::new();
        while got.len() < 3 {
            let text = wait_tokio(&rt, events, "data", |e| match e {
                Event::Mesh(meshrtc::Event::DataReceived {
                    message: DataMessage::Text(t),
                    ..
                }) => Some(t.clone()),
                _ => None,
            });
            got.insert(text);
        }
        assert_eq!(got, expect(me));
    }

    // Audio: both blocking peers send; each of the three others hears each of them.
    let b1_audio = AudioLoop::start(b1.capture, b1.playout);
    let b3_audio = AudioLoop::start(b3.capture, b3.playout);
    let b3_at_b1 = b1_idx.wait(&b1.events, &ids[2], |_| {});
    let b1_at_b3 = b3_idx.wait(&b3.events, &ids[0], |_| {});
    b1_audio.wait_audible(b3_at_b1, 0, 30, "m1b hears m3b");
    b3_audio.wait_audible(b1_at_b3, 0, 30, "m3b hears m1b");
    for events in [&mut t2_events, &mut t4_events] {
        let (mut from_b1, mut from_b3) = (0, 0);
        wait_tokio(&rt, events, "audio from both blocking peers", |e| {
            from_b1 += u64::from(tokio_audible(e, &ids[0]));
            from_b3 += u64::from(tokio_audible(e, &ids[2]));
            (from_b1 >= 30 && from_b3 >= 30).then_some(())
        });
    }

    drop(b1_audio);
    drop(b3_audio);
    b1.handle.leave().unwrap();
    b3.handle.leave().unwrap();
    rt.block_on(t2.leave()).unwrap();
    rt.block_on(t4.leave()).unwrap();
}
