//! Bulk data on a reliable channel over short and long paths: the core's adaptive send
//! window must not starve a short path and must open up on a long one

use std::time::Duration;

use meshrtc::{DataMessage, Event};
use meshrtc_sim::{LinkConfig, QueueLimit, Rate, Sim, SimConfig};

use crate::util::{await_full_mesh, config, pid};

/// Alice keeps her queue to Bob topped up with `message`-byte messages for `secs` seconds
/// over a path of `latency` each way and `bits_per_sec`; returns Bob's received MB/s over
/// the second half
fn bulk(latency: Duration, bits_per_sec: u64, secs: u32, message: usize) -> f64 {
    let link = LinkConfig {
        latency,
        rate: Rate::Constant { bits_per_sec },
        // A bottleneck queue of about 100 ms at the link's rate.
        queue: QueueLimit::Bytes((bits_per_sec / 80) as usize),
        ..LinkConfig::default()
    };
    let mut sim = Sim::new(SimConfig {
        default_link: link,
        ..SimConfig::default()
    });
    let a = sim.add_host(config());
    let b = sim.add_host(config());
    sim.join(a, "bulk", "alice");
    sim.join(b, "bulk", "bob");
    await_full_mesh(&mut sim, &[a, b], Duration::from_secs(10));
    sim.take_events(b);
    let bob = pid("bob");
    let start = sim.elapsed();
    let half = start + Duration::from_secs(u64::from(secs) / 2);
    let end = start + Duration::from_secs(u64::from(secs));
    let mut bytes = 0;
    while sim.elapsed() < end {
        while sim
            .participant(a)
            .peer_stats(&bob)
            .expect("bob")
            .queued_messages
            < 8
        {
            sim.send(a, &bob, DataMessage::Binary(vec![0x5a; message]))
                .expect("queued");
        }
        sim.run_for(Duration::from_millis(1));
        for (at, e) in sim.take_events(b) {
            if let meshrtc::session::Event::Mesh(Event::DataReceived { message, .. }) = e {
                if at >= half {
                    bytes += message.len();
                }
            }
        }
    }
    bytes as f64 / (end - half).as_secs_f64() / 1e6
}

#[test]
fn a_short_fast_path_is_filled() {
    // 1 ms each way at 100 Mbit/s (12.5 MB/s): the window's floor is enough.
    for message in [1024, 16 * 1024] {
        let rate = bulk(Duration::from_millis(1), 100_000_000, 4, message);
        eprintln!("short path, {message} B messages: {rate:.2} MB/s of 12.5");
        assert!(rate > 10.0, "{message} B messages: {rate:.2} MB/s");
    }
}

#[test]
fn messages_larger_than_the_window_are_pipelined() {
    // 200 KiB messages, each bigger than the window on this path: one at a time, each would
    // wait for its last acknowledgement (delayed up to 200 ms by SCTP).
    let rate = bulk(Duration::from_millis(1), 100_000_000, 4, 200 * 1024);
    eprintln!("short path, 200 KiB messages: {rate:.2} MB/s of 12.5");
    assert!(rate > 10.0, "{rate:.2} MB/s");
}

#[test]
fn a_long_path_opens_the_window_to_str0ms_buffer() {
    // 50 ms each way at 40 Mbit/s (5 MB/s): 0.5 MB in flight would fill it, more than
    // str0m's send buffer (320 KiB) holds, so the buffer bounds the rate at 320 KiB per
    // 100 ms round trip (3.3 MB/s). The window must open all the way: stuck at its 64 KiB
    // floor, the rate would be 0.65 MB/s.
    let rate = bulk(Duration::from_millis(50), 40_000_000, 10, 16 * 1024);
    eprintln!("long path: {rate:.2} MB/s (buffer bound 3.3)");
    assert!(rate > 2.6, "{rate:.2} MB/s");
}
