//! Several sessions per process: 100 sessions created and terminated one after another
//! leave threads, tasks and memory where they were, and each ends within a second

use std::time::{Duration, Instant};

use meshrtc::DataMessage;
use meshrtc_tokio::Event;

use crate::util::*;

/// Resident memory of this process in bytes (`/proc/self/statm`, second field, in pages of
/// 4 KiB, the page size of every Linux target we run on)
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Threads of this process
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Tasks alive on this test's runtime
fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Reads a resident peer's events until `peer` left (so they do not pile up)
async fn until_left(events: &mut meshrtc_tokio::Events, peer: &meshrtc::signal::PeerId) {
    wait_for(events, Duration::from_secs(10), |e| match e {
        Event::Mesh(meshrtc::Event::PeerLeft { peer: p, .. }) if p == peer => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_sessions_come_and_go_leaving_memory_threads_and_tasks_flat() {
    const CYCLES: usize = 100;
    const WARMUP: usize = 10;
    let run = async {
        let server = server().await;
        let url = server.url();
        // A resident peer, so that each guest session has a real peer connection (str0m
        // state, DTLS, SCTP, a data channel) to release.
        let (host, mut host_events) = join(&url, "churn", "host").await;
        let mut baseline = None;
        let mut leave_times = Vec::with_capacity(CYCLES);
        for k in 0..CYCLES {
            let guest = pid(&format!("guest{k}"));
            let (g, mut g_events) = join(&url, "churn", guest.as_str()).await;
            assert_eq!(
                wait_for(&mut g_events, Duration::from_secs(10), connected).await,
                pid("host")
            );
            g.send_data(&pid("host"), DataMessage::Text(format!("hello {k}")))
                .await
                .unwrap();
            wait_for(&mut host_events, Duration::from_secs(10), |e| match e {
                Event::Mesh(meshrtc::Event::DataReceived { peer, .. }) if *peer == guest => {
                    Some(())
                }
                _ => None,
            })
            .await;
            let t = Instant::now();
            g.leave().await.unwrap();
            leave_times.push(t.elapsed());
            // The event stream ends with the session.
            tokio::time::timeout(Duration::from_secs(1), async {
                while g_events.recv().await.is_some() {}
            })
            .await
            .expect("the guest's events end within a second of leaving");
            until_left(&mut host_events, &guest).await;
            if k + 1 == WARMUP {
                settle(&server).await;
                baseline = Some((rss_bytes(), threads(), tasks()));
            }
        }
        settle(&server).await;
        let (rss0, threads0, tasks0) = baseline.unwrap();
        // Threads and tasks of the last session may take a moment to go.
        for _ in 0..20 {
            if threads() <= threads0 && tasks() <= tasks0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (rss1, threads1, tasks1) = (rss_bytes(), threads(), tasks());
        let max_leave = leave_times.iter().max().unwrap();
        let mut sorted = leave_times.clone();
        sorted.sort();
        println!(
            "teardown: {CYCLES} cycles; leave p50 {:?}, max {max_leave:?}; RSS after {WARMUP} \
             cycles {:.1} MiB, after {CYCLES} {:.1} MiB ({:+.1} MiB); threads {threads0} -> \
             {threads1}; runtime tasks {tasks0} -> {tasks1}",
            sorted[CYCLES / 2],
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0,
            (rss1 as f64 - rss0 as f64) / 1048576.0,
        );
        assert!(
            *max_leave < Duration::from_secs(1),
            "a session took {max_leave:?} to end"
        );
        assert_eq!(threads1, threads0, "driver threads left behind");
        assert_eq!(tasks1, tasks0, "tasks left behind");
        // 90 sessions that leaked even 100 KiB each would add 9 MiB.
        assert!(
            rss1 < rss0 + 6 * 1024 * 1024,
            "RSS grew from {rss0} to {rss1} bytes over {} cycles",
            CYCLES - WARMUP
        );
        host.leave().await.unwrap();
        counts_until(&server, Duration::from_secs(5), |c| c.connections == 0).await;
    };
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("100 cycles within 3 minutes");
}

/// Waits until the server has only the host left and the guest's driver thread is gone
async fn settle(server: &meshrtc_tokio::SignalServer) {
    counts_until(server, Duration::from_secs(5), |c| c.connections == 1).await;
    // A driver thread exits right after its `leave` reply; give it a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
}
