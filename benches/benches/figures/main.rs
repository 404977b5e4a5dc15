//! Figures for meshrtc: connect times, data-channel throughput, the media path, a 10-peer
//! mesh with media, the simulator's speed, memory
//!
//! Not a timed test: run it with `cargo bench -p meshrtc-benches --bench figures
//! -- [section...] [--rounds N]` (sections: `connect`, `throughput`, `media`, `sim`, `mesh`,
//! `memory`; none means all) and read the printed table. Everything runs on loopback
//! (127.0.0.1) or in memory in this process.
//!
//! * connect time of a pair (p50/p95 over 20 runs) and of a full 10-peer mesh
//! * data-channel throughput between two peers, 1 KiB and 16 KiB messages: meshrtc over
//!   loopback UDP, two raw str0m `Rtc`s wired together in memory (the protocol's ceiling on
//!   this machine) and, with `--features webrtc-rs`, two webrtc-rs peers over loopback UDP;
//!   with the ratios meshrtc/str0m and meshrtc/webrtc-rs
//! * the media path: datagrams per second through two `Participant`s against two raw str0m
//!   `Rtc`s, the same pre-encoded frames, in memory ([`media`])
//! * a 10-peer mesh with Opus and 360p30 VP8: CPU against the codec work alone, memory per
//!   remote peer, 720p30 H.264 encode cost; the simulator with real and synthetic codecs
//!   ([`mesh`])
//! * memory per idle remote peer (resident set growth per `Rtc`)

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshrtc::signal::{PeerId, RoomId};
use meshrtc::{CandidatePolicy, DataMessage};
use meshrtc_tokio::{Event, Events, Session, SessionConfig, SessionHandle, SignalServer};

mod media;
mod mesh;
#[cfg(feature = "webrtc-rs")]
mod webrtc_rs;

/// Bytes moved per throughput run
const THROUGHPUT_BYTES: usize = 64 * 1024 * 1024;

fn main() {
    // `cargo bench` passes `--bench`; any other argument picks sections by name.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
        .collect();
    let wants = |section: &str| picked.is_empty() || picked.iter().any(|p| p == section);
    // In-memory and virtual-time sections: no runtime, no sockets.
    if wants("media") {
        media::media(rounds());
    }
    if wants("sim") {
        mesh::sim_speed(rounds().min(3));
    }
    if wants("mesh") {
        mesh::mesh(rounds().min(3));
    }
    let network = ["connect", "throughput", "memory"];
    if !picked.is_empty() && !network.iter().any(|s| wants(s)) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let server = SignalServer::bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("a server");
        let url = server.url();

        if wants("connect") {
            println!("== connect time, pair on loopback (20 runs) ==");
            let mut core_ms = Vec::new();
            let mut wall_ms = Vec::new();
            for run in 0..20 {
                let (core, wall) = pair_connect(&url, &format!("pair{run}")).await;
                core_ms.push(core);
                wall_ms.push(wall);
            }
            report("offer to channel open (core)", &mut core_ms);
            report("announce to both connected (wall)", &mut wall_ms);
            let mut raw_ms: Vec<f64> = (0..20).map(|_| str0m_in_memory(1024, 0).0).collect();
            report("raw str0m in memory, offer to open", &mut raw_ms);

            println!("== connect time, full mesh of 10 (5 runs) ==");
            let mut mesh_ms = Vec::new();
            let mut mesh_core_ms = Vec::new();
            for run in 0..5 {
                let (core, wall) = mesh_connect(&url, &format!("mesh{run}"), 10).await;
                mesh_core_ms.push(core);
                mesh_ms.push(wall);
            }
            report("slowest pair, offer to open (core)", &mut mesh_core_ms);
            report(
                "first announce to all 45 pairs connected (wall)",
                &mut mesh_ms,
            );
        }
        if wants("throughput") {
            throughput(&url).await;
        }
        if wants("memory") {
            println!("== memory ==");
            memory(&url).await;
        }
        server.shutdown().await;
    });
}

/// The throughput table: one row per message size, every stack on the same bytes
async fn throughput(url: &str) {
    let rounds = rounds();
    println!(
        "== data-channel throughput, {} MiB per run, reliable ordered channel, \
         median (min-max) of {rounds} interleaved rounds ==",
        THROUGHPUT_BYTES >> 20
    );
    for size in sizes() {
        let mut ceiling = Vec::new();
        let mut mesh = Vec::new();
        let mut mesh_gap = Vec::new();
        let mut sender_cpu = Vec::new();
        let mut receiver_cpu = Vec::new();
        let mut webrtc: Vec<f64> = Vec::new();
        let mut webrtc_gap: Vec<f64> = Vec::new();
        for _ in 0..rounds {
            ceiling.push(str0m_in_memory(size, THROUGHPUT_BYTES).1);
            let drops = udp_receive_drops();
            let run = meshrtc_loopback(url, size, THROUGHPUT_BYTES).await;
            report_drops("meshrtc", drops);
            mesh.push(run.rate);
            mesh_gap.push(run.gap_ms);
            if let Some((tx, rx)) = run.cpu_us {
                sender_cpu.push(tx);
                receiver_cpu.push(rx);
            }
            #[cfg(feature = "webrtc-rs")]
            {
                let drops = udp_receive_drops();
                let (rate, gap) = webrtc_rs::loopback(size, THROUGHPUT_BYTES).await;
                report_drops("webrtc-rs", drops);
                webrtc.push(rate);
                webrtc_gap.push(gap);
            }
        }
        println!("  {:>2} KiB messages:", size / 1024);
        let c = Spread::of(&mut ceiling);
        let m = Spread::of(&mut mesh);
        println!("    raw str0m in memory   {c} MB/s");
        println!(
            "    meshrtc on loopback   {m} MB/s, longest gap {:.1} ms, {:.2}x str0m",
            Spread::of(&mut mesh_gap).max,
            m.median / c.median
        );
        if !sender_cpu.is_empty() {
            // The in-memory pair runs flat out on one thread: its CPU per message is its
            // time per message, for both sides together.
            let both = size as f64 / c.median;
            println!(
                "    CPU per message       str0m both sides {both:.1} us; meshrtc sender \
                 thread {:.1} us, receiver thread {:.1} us",
                Spread::of(&mut sender_cpu).median,
                Spread::of(&mut receiver_cpu).median
            );
        }
        if !webrtc.is_empty() {
            let w = Spread::of(&mut webrtc);
            println!(
                "    webrtc-rs on loopback {w} MB/s, longest gap {:.1} ms; meshrtc/webrtc-rs {:.2}",
                Spread::of(&mut webrtc_gap).max,
                m.median / w.median
            );
        }
    }
    println!(
        "  (gap: longest time between two deliveries; str0m: two Rtcs in one thread, in memory)"
    );
    #[cfg(not(feature = "webrtc-rs"))]
    println!(
        "  webrtc-rs figures: cargo bench -p meshrtc-benches --bench figures \
         --features webrtc-rs throughput"
    );
}

/// Throughput message sizes: `MESHRTC_BENCH_SIZES` in KiB, comma-separated (default 1,16)
fn sizes() -> Vec<usize> {
    std::env::var("MESHRTC_BENCH_SIZES")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|k| k.trim().parse::<usize>().ok())
                .map(|k| k * 1024)
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec![1024, 16 * 1024])
}

/// Throughput rounds: `--rounds N` (default 5)
fn rounds() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5)
}

/// Median, least and most of some measurements
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            median: percentile(values, 0.5),
            min: values[0],
            max: values[values.len() - 1],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:6.1} ({:.1}-{:.1})", self.median, self.min, self.max)
    }
}

/// CPU seconds the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`): the in-memory
/// and virtual-time sections run on one thread, so this is their work, whatever else the
/// machine runs (wall time on a shared machine also counts the time others had the core)
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn udp_receive_drops() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// With `MESHRTC_BENCH_VERBOSE=1`, how many datagrams were dropped since `before`
fn report_drops(stack: &str, before: Option<u64>) {
    let verbose = std::env::var_os("MESHRTC_BENCH_VERBOSE").is_some_and(|v| v != "0");
    if let (true, Some(before), Some(after)) = (verbose, before, udp_receive_drops()) {
        println!(
            "    {stack}: {} UDP datagrams dropped for a full receive buffer (system-wide)",
            after - before
        );
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, values: &mut [f64]) {
    values.sort_by(f64::total_cmp);
    println!(
        "  {what}: p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        percentile(values, 0.5),
        percentile(values, 0.95),
        values[values.len() - 1]
    );
}

fn config(url: &str, room: &str, id: &str, seed: u64) -> SessionConfig {
    let mut c = SessionConfig::new(url, RoomId::new(room).expect("a room id"));
    c.session.peer_id = Some(PeerId::new(id).expect("a peer id"));
    c.session.participant.seed = seed;
    c.session.participant.candidate_policy = CandidatePolicy::LoopbackOnly;
    c
}

fn join(
    url: &str,
    room: &str,
    id: &str,
    seed: u64,
) -> impl std::future::Future<Output = (SessionHandle, Events)> {
    let c = config(url, room, id, seed);
    async move { Session::join(c).await.expect("joined") }
}

/// Waits for `n` `PeerConnected` events; returns the largest connect time in ms
async fn connected(events: &mut Events, n: usize) -> f64 {
    let mut seen = BTreeSet::new();
    let mut slowest = Duration::ZERO;
    while seen.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("connected in time")
            .expect("session alive");
        if let Event::Mesh(meshrtc::Event::PeerConnected { peer, connect_time }) = e {
            seen.insert(peer);
            slowest = slowest.max(connect_time);
        }
    }
    slowest.as_secs_f64() * 1e3
}

async fn pair_connect(url: &str, room: &str) -> (f64, f64) {
    let (a, mut a_events) = join(url, room, "alice", 1).await;
    let started = Instant::now();
    let (b, mut b_events) = join(url, room, "bob", 2).await;
    let (ca, cb) = tokio::join!(connected(&mut a_events, 1), connected(&mut b_events, 1));
    let wall = started.elapsed().as_secs_f64() * 1e3;
    a.leave().await.expect("left");
    b.leave().await.expect("left");
    (ca.max(cb), wall)
}

async fn mesh_connect(url: &str, room: &str, n: usize) -> (f64, f64) {
    let started = Instant::now();
    let joins = (0..n).map(|i| join(url, room, &format!("p{i}"), i as u64 + 1));
    let sessions = futures_util::future::join_all(joins).await;
    let mut waits = Vec::new();
    let mut handles = Vec::new();
    for (h, mut events) in sessions {
        handles.push(h);
        waits.push(async move { connected(&mut events, n - 1).await });
    }
    let slowest = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .fold(0.0, f64::max);
    let wall = started.elapsed().as_secs_f64() * 1e3;
    for h in handles {
        h.leave().await.expect("left");
    }
    (slowest, wall)
}

/// MB/s from alice to bob over loopback UDP, and the longest gap between two arrivals
async fn meshrtc_loopback(url: &str, size: usize, total: usize) -> Run {
    let room = format!("tp{size}");
    let (a, mut a_events) = join(url, &room, "alice", 1).await;
    let (b, mut b_events) = join(url, &room, "bob", 2).await;
    connected(&mut a_events, 1).await;
    connected(&mut b_events, 1).await;
    let count = total / size;
    let bob = PeerId::new("bob").expect("a peer id");
    let cpu_before = session_cpu();
    let started = Instant::now();
    let sender = tokio::spawn({
        let a = a.clone();
        async move {
            let payload = vec![0x5a; size];
            for _ in 0..count {
                a.send_data(&bob, DataMessage::Binary(payload.clone()))
                    .await
                    .expect("sent");
            }
        }
    });
    let mut received = 0;
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    while received < count {
        let e = tokio::time::timeout(Duration::from_secs(30), b_events.recv())
            .await
            .expect("data keeps flowing")
            .expect("session alive");
        if let Event::Mesh(meshrtc::Event::DataReceived { .. }) = e {
            received += 1;
            let now = Instant::now();
            max_gap = max_gap.max(now - last);
            last = now;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = session_cpu().map(|after| {
        let before = cpu_before.unwrap_or_default();
        let per_message = |a: f64, b: f64| (a - b) / count as f64 * 1e6;
        (
            per_message(after.0, before.0),
            per_message(after.1, before.1),
        )
    });
    sender.await.expect("sender done");
    a.leave().await.expect("left");
    b.leave().await.expect("left");
    Run {
        rate: (count * size) as f64 / secs / 1e6,
        gap_ms: max_gap.as_secs_f64() * 1e3,
        cpu_us: cpu,
    }
}

/// One meshrtc throughput run
struct Run {
    /// MB/s
    rate: f64,
    /// Longest time between two deliveries
    gap_ms: f64,
    /// CPU time per message of the sending and the receiving session thread (µs)
    cpu_us: Option<(f64, f64)>,
}

/// CPU seconds used so far by the session threads `meshrtc-alice` and `meshrtc-bob` (Linux)
fn session_cpu() -> Option<(f64, f64)> {
    let ticks = |name: &str| -> Option<f64> {
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the parenthesised name: utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, s): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
            return Some((u + s) / 100.0);
        }
        None
    };
    Some((ticks("meshrtc-alice")?, ticks("meshrtc-bob")?))
}

/// MB/s between two str0m `Rtc`s in one thread, datagrams handed over in memory
///
/// Also returns the connect time (offer created to channel open, in ms); with `total` 0
/// only the connection is made.
fn str0m_in_memory(size: usize, total: usize) -> (f64, f64) {
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Input, Rtc};

    let addr_a: SocketAddr = "127.0.0.1:10000".parse().expect("an address");
    let addr_b: SocketAddr = "127.0.0.1:20000".parse().expect("an address");
    // Certificates are made ahead, as a meshrtc participant does; building the `Rtc`s is
    // part of the connect time, as it is in meshrtc.
    let crypto = std::sync::Arc::new(str0m::crypto::from_feature_flags());
    let cert = || {
        crypto
            .dtls_provider
            .generate_certificate()
            .expect("a certificate")
    };
    let (cert_a, cert_b) = (cert(), cert());
    let offered = Instant::now();
    let build = |cert| {
        Rtc::builder()
            .set_crypto_provider(crypto.clone())
            .set_dtls_cert(cert)
            .build(Instant::now())
    };
    let mut a = build(cert_a);
    let mut b = build(cert_b);
    a.add_local_candidate(Candidate::host(addr_a, "udp").expect("a candidate"));
    b.add_local_candidate(Candidate::host(addr_b, "udp").expect("a candidate"));
    let mut change = a.sdp_api();
    let cid = change.add_channel("bench".into());
    let (offer, pending) = change.apply().expect("an offer");
    let answer = b.sdp_api().accept_offer(offer).expect("an answer");
    a.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");

    let payload = vec![0x5a; size];
    let count = total / size;
    let mut sent = 0;
    let mut pump = Pump::default();
    let mut started = Instant::now();
    let mut connect_ms = None;
    while !pump.open || pump.received < count {
        if pump.open && connect_ms.is_none() {
            connect_ms = Some(offered.elapsed().as_secs_f64() * 1e3);
        }
        if pump.open && sent < count {
            if pump.started.is_none() {
                pump.started = Some(Instant::now());
                started = Instant::now();
            }
            if let Some(mut ch) = a.channel(cid) {
                while sent < count && ch.write(true, &payload).expect("write") {
                    sent += 1;
                }
            }
        }
        pump.next = None;
        pump.drain(&mut a, true);
        pump.drain(&mut b, false);
        if pump.queue.is_empty() {
            let now = Instant::now();
            if !pump.open {
                let wait = pump
                    .next
                    .map_or(Duration::ZERO, |n| n.saturating_duration_since(now));
                std::thread::sleep(wait.min(Duration::from_millis(1)));
            }
            let now = Instant::now();
            a.handle_input(Input::Timeout(now)).expect("timeout");
            b.handle_input(Input::Timeout(now)).expect("timeout");
            continue;
        }
        // Deliver every datagram, draining the receiver after each one.
        while let Some((from_a, contents, source, destination)) = pump.queue.pop_front() {
            let to = if from_a { &mut b } else { &mut a };
            let r = Receive::new(Protocol::Udp, source, destination, &contents).expect("parse");
            to.handle_input(Input::Receive(Instant::now(), r))
                .expect("receive");
            pump.drain(to, !from_a);
        }
    }
    let connect_ms = connect_ms.unwrap_or_else(|| offered.elapsed().as_secs_f64() * 1e3);
    let rate = (count * size) as f64 / started.elapsed().as_secs_f64() / 1e6;
    (connect_ms, rate)
}

/// Datagrams in flight between the two in-memory `Rtc`s, and what arrived
#[derive(Default)]
struct Pump {
    queue: std::collections::VecDeque<(bool, Vec<u8>, SocketAddr, SocketAddr)>,
    received: usize,
    open: bool,
    started: Option<Instant>,
    next: Option<Instant>,
}

impl Pump {
    /// Polls `rtc` until its timeout, queueing its datagrams
    fn drain(&mut self, rtc: &mut str0m::Rtc, is_a: bool) {
        loop {
            match rtc.poll_output().expect("poll") {
                str0m::Output::Timeout(t) => {
                    self.next = Some(self.next.map_or(t, |n| n.min(t)));
                    return;
                }
                str0m::Output::Transmit(t) => {
                    self.queue
                        .push_back((is_a, t.contents.to_vec(), t.source, t.destination));
                }
                str0m::Output::Event(str0m::Event::ChannelOpen(..)) if is_a => self.open = true,
                str0m::Output::Event(str0m::Event::ChannelData(_)) => self.received += 1,
                str0m::Output::Event(_) => {}
            }
        }
    }
}

/// Resident set size of this process in KiB
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Growth of the resident set per idle `Rtc`: ten lone sessions, then ten sessions in one
/// room (90 `Rtc`s); the difference of the two growths divided by 90
async fn memory(url: &str) {
    let settle = Duration::from_secs(1);
    tokio::time::sleep(settle).await;
    let base = rss_kib();
    let mut lone = Vec::new();
    for i in 0..10 {
        lone.push(join(url, &format!("lone{i}"), "solo", 100 + i).await);
    }
    tokio::time::sleep(settle).await;
    let with_lone = rss_kib();
    let joins = (0..10).map(|i| join(url, "idle", &format!("p{i}"), 200 + i as u64));
    let mut mesh = Vec::new();
    for (h, mut events) in futures_util::future::join_all(joins).await {
        connected(&mut events, 9).await;
        mesh.push((h, events));
    }
    tokio::time::sleep(settle).await;
    let with_mesh = rss_kib();
    let per_session = (with_lone - base) as f64 / 10.0;
    let rtcs = (with_mesh - with_lone) as f64 - 10.0 * per_session;
    println!("  per session (socket, thread, runtime, buffers): {per_session:.0} KiB");
    println!(
        "  per idle remote peer (one Rtc and its state): {:.0} KiB",
        rtcs / 90.0
    );
    println!(
        "  process RSS with 20 sessions and 90 Rtcs: {} KiB",
        with_mesh
    );
    for (h, _) in lone.into_iter().chain(mesh) {
        h.leave().await.expect("left");
    }
}
