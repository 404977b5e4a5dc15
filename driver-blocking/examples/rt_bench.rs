//! Figures for the blocking driver: real-time call latency, allocations, CPU per driver
//!
//! Not a timed test: run it and read the printed table.
//!
//! ```text
//! cargo run --release -p meshrtc-blocking --example rt_bench [-- --seconds N] [SECTION...]
//! ```
//!
//! Sections (all by default):
//!
//! * `rt`: a two-peer blocking call, once per `WaitMode`: 10 ms audio callbacks, then 1 ms
//!   callbacks at real time (a chunk every 10th; the lateness of a popped chunk is then the
//!   core thread's release lateness to within a millisecond), and for the default mode 1 ms
//!   callbacks pushing a chunk each (ten times real time).
//!   Every `push`, `pop_into` and empty pop of peer `a`'s callback is timed on its own
//!   (`Instant` before and after, ~25 ns of overhead included); allocations inside those calls
//!   are counted by this binary's global allocator; the lateness of each popped chunk is its
//!   pop time minus the playout instant the core gave it.
//! * `cpu`: several pairs at once for N seconds, CPU time per thread from
//!   `/proc/self/task/*/schedstat`, summed per peer and driver: a blocking 2-peer audio call
//!   (both ways; once per `WaitMode`), a blocking → tokio and a blocking → blocking one-way audio call (the
//!   receivers do the same work on different drivers), and an idle connected pair on each
//!   driver. The tokio driver has no audio-send API yet, so no tokio → anything audio.
//! * `timer`: what a socket read timeout (`SO_RCVTIMEO`) and `thread::sleep` really wait.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::Tone;
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::CandidatePolicy;
use meshrtc_blocking::{
    AudioCapture, AudioPlayout, Event, Events, RealtimeConfig, Session, SessionConfig,
    SessionHandle, WaitMode, SLOT_SAMPLES,
};

// ---- counting allocator: counts only on threads that ask for it ----

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn set_counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}

// ---- helpers ----

fn pid(s: &str) -> PeerId {
    PeerId::new(s).expect("a valid peer id")
}

fn participant(id: &str, audio: bool) -> meshrtc::Config {
    let mut c = meshrtc::Config {
        seed: id.bytes().map(u64::from).sum(),
        candidate_policy: CandidatePolicy::LoopbackOnly,
        ..Default::default()
    };
    c.capabilities.audio = audio;
    c
}

fn join_blocking(url: &str, room: &str, id: &str, audio: bool, wait: WaitMode) -> Session {
    let mut c = SessionConfig::new(url, RoomId::new(room).expect("a valid room"));
    c.session.peer_id = Some(pid(id));
    c.session.participant = participant(id, audio);
    let rt = RealtimeConfig {
        wait,
        ..RealtimeConfig::default()
    };
    Session::join_with(c, rt).unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn join_tokio(
    rt: &tokio::runtime::Runtime,
    url: &str,
    room: &str,
    id: &str,
    audio: bool,
) -> (meshrtc_tokio::SessionHandle, meshrtc_tokio::Events) {
    let mut c = SessionConfig::new(url, RoomId::new(room).expect("a valid room"));
    c.session.peer_id = Some(pid(id));
    c.session.participant = participant(id, audio);
    rt.block_on(meshrtc_tokio::Session::join(c))
        .unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn wait_connected(events: &Events) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Some(Event::Mesh(meshrtc::Event::PeerConnected { .. })) => return,
            Some(_) => {}
            None => panic!("not connected within 10 s"),
        }
    }
}

fn wait_connected_tokio(rt: &tokio::runtime::Runtime, events: &mut meshrtc_tokio::Events) {
    rt.block_on(async {
        let wait = async {
            while let Some(e) = events.recv().await {
                if let Event::Mesh(meshrtc::Event::PeerConnected { .. }) = e {
                    return;
                }
            }
            panic!("tokio session ended");
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("tokio peer connected within 10 s");
    });
}

/// min, p50, p99, p99.9 and max of `v` (sorted in place), in the unit of `v`
fn quantiles(v: &mut [u64]) -> [u64; 5] {
    if v.is_empty() {
        return [0; 5];
    }
    v.sort_unstable();
    let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    [v[0], q(0.5), q(0.99), q(0.999), v[v.len() - 1]]
}

fn row(name: &str, v: &mut [u64], unit: &str) {
    let n = v.len();
    let [min, p50, p99, p999, max] = quantiles(v);
    println!(
        "  {name:<30} n={n:>5}  min {min:>6}  p50 {p50:>6}  p99 {p99:>6}  p99.9 {p999:>6}  max {max:>6} {unit}"
    );
}

// ---- rt section ----

/// Timings one callback thread collected, in nanoseconds (lateness in microseconds)
#[derive(Default)]
struct Timings {
    push: Vec<u64>,
    pop: Vec<u64>,
    empty_pop: Vec<u64>,
    late_us: Vec<u64>,
    allocations: u64,
}

/// A measured callback: `turns` callbacks every `period`, pushing one 10 ms chunk each
fn measured_callback(
    mut capture: AudioCapture,
    mut playout: AudioPlayout,
    period: Duration,
    turns: usize,
    push_every: usize,
) -> JoinHandle<(Timings, AudioCapture, AudioPlayout)> {
    std::thread::Builder::new()
        .name("cb-measured".into())
        .spawn(move || {
            let mut t = Timings {
                push: Vec::with_capacity(turns),
                pop: Vec::with_capacity(turns * 4),
                empty_pop: Vec::with_capacity(turns),
                late_us: Vec::with_capacity(turns * 4),
                allocations: 0,
            };
            let mut tone = Tone::new(48_000, 1);
            let mut mic = [0i16; 480];
            let mut speaker = [0i16; SLOT_SAMPLES];
            let mut next = Instant::now();
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for turn in 0..turns {
                if turn % push_every == 0 {
                    tone.fill(&mut mic);
                    let t0 = Instant::now();
                    set_counting(true);
                    let _ = capture.push(&mic, t0);
                    set_counting(false);
                    let t1 = Instant::now();
                    t.push.push((t1 - t0).as_nanos() as u64);
                }
                loop {
                    let s = Instant::now();
                    set_counting(true);
                    let got = playout.pop_into(&mut speaker);
                    set_counting(false);
                    let e = Instant::now();
                    let ns = (e - s).as_nanos() as u64;
                    match got {
                        Some(info) => {
                            if t.pop.len() < t.pop.capacity() {
                                t.pop.push(ns);
                                t.late_us
                                    .push(e.saturating_duration_since(info.playout).as_micros()
                                        as u64);
                            }
                        }
                        None => {
                            t.empty_pop.push(ns);
                            break;
                        }
                    }
                }
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            t.allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
            (t, capture, playout)
        })
        .expect("spawn")
}

/// An unmeasured 10 ms callback (the other side of the call)
fn plain_callback(
    name: &str,
    mut capture: Option<AudioCapture>,
    mut playout: AudioPlayout,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("cb-{name}"))
        .spawn(move || {
            let mut tone = Tone::new(48_000, 1);
            let mut mic = [0i16; 480];
            let mut speaker = [0i16; SLOT_SAMPLES];
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(c) = capture.as_mut() {
                    tone.fill(&mut mic);
                    let _ = c.push(&mic, Instant::now());
                }
                while playout.pop_into(&mut speaker).is_some() {}
                next += Duration::from_millis(10);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
        .expect("spawn")
}

fn rt_section(url: &str, seconds: u64, wait: WaitMode, stress: bool) {
    println!("== real-time calls: two blocking peers, audio both ways, {wait:?} ==");
    let room = format!("rt-{wait:?}");
    let a = join_blocking(url, &room, "rt-a", true, wait);
    let b = join_blocking(url, &room, "rt-b", true, wait);
    wait_connected(&a.events);
    wait_connected(&b.events);
    let stop = Arc::new(AtomicBool::new(false));
    let other = plain_callback("rt-b", Some(b.capture), b.playout, stop.clone());

    let turns = (seconds * 100) as usize;
    let (mut t, capture, playout) =
        measured_callback(a.capture, a.playout, Duration::from_millis(10), turns, 1)
            .join()
            .expect("the measured callback");
    println!("  10 ms callbacks for {seconds} s:");
    row("push (10 ms chunk)", &mut t.push, "ns");
    row("pop_into (a chunk)", &mut t.pop, "ns");
    row("pop_into (empty ring)", &mut t.empty_pop, "ns");
    row("chunk lateness at pop", &mut t.late_us, "µs");
    println!("  allocations inside push/pop: {}", t.allocations);
    let loop_turns = a.handle.rt_counts().loop_turns;
    println!(
        "  core thread loop turns: {:.0}/s",
        loop_turns as f64 / seconds as f64
    );

    // 1 ms callbacks at real time (a chunk every 10th): a popped chunk's lateness is now
    // the core thread's release lateness, to within a millisecond.
    let (mut s, capture, playout) =
        measured_callback(capture, playout, Duration::from_millis(1), 5000, 10)
            .join()
            .expect("the 1 ms callback");
    println!("  1 ms callbacks x 5000, a chunk every 10th (real time):");
    row("push (10 ms chunk)", &mut s.push, "ns");
    row("pop_into (a chunk)", &mut s.pop, "ns");
    row("pop_into (empty ring)", &mut s.empty_pop, "ns");
    row("chunk lateness at pop", &mut s.late_us, "µs");
    println!("  allocations inside push/pop: {}", s.allocations);
    if stress {
        let (mut s, _capture, _playout) =
            measured_callback(capture, playout, Duration::from_millis(1), 5000, 1)
                .join()
                .expect("the stress callback");
        println!("  1 ms callbacks x 5000, a chunk each (10x real time):");
        row("push (10 ms chunk)", &mut s.push, "ns");
        row("pop_into (a chunk)", &mut s.pop, "ns");
        row("pop_into (empty ring)", &mut s.empty_pop, "ns");
        println!("  allocations inside push/pop: {}", s.allocations);
    }
    println!("  peer a: {:?}", a.handle.rt_counts());
    stop.store(true, Ordering::Relaxed);
    other.join().expect("the other callback");
    a.handle.leave().expect("leave");
    b.handle.leave().expect("leave");
}

// ---- cpu section ----

/// CPU nanoseconds per thread name, from /proc/self/task/*/{comm,schedstat}
fn thread_cpu() -> BTreeMap<(String, u64), u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let tid: u64 = entry
            .file_name()
            .to_string_lossy()
            .parse()
            .unwrap_or_default();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        out.insert((comm.trim().to_string(), tid), ns);
    }
    out
}

/// CPU time of the threads whose name starts with each prefix, between two snapshots
fn cpu_between(
    before: &BTreeMap<(String, u64), u64>,
    after: &BTreeMap<(String, u64), u64>,
    prefix: &str,
) -> Duration {
    let ns: u64 = after
        .iter()
        .filter(|((name, _), _)| name.starts_with(prefix))
        .map(|(k, v)| v.saturating_sub(before.get(k).copied().unwrap_or(0)))
        .sum();
    Duration::from_nanos(ns)
}

fn cpu_section(rt: &tokio::runtime::Runtime, url: &str, seconds: u64) {
    println!("== CPU per peer, all pairs running at once for {seconds} s ==");
    let stop = Arc::new(AtomicBool::new(false));
    let mut callbacks = Vec::new();
    let mut blocking: Vec<(&str, SessionHandle)> = Vec::new();
    let mut tokio_handles = Vec::new();

    // A blocking 2-peer audio call, both ways.
    let ca = join_blocking(url, "call", "ca", true, WaitMode::ReadTimeout);
    let cb = join_blocking(url, "call", "cb", true, WaitMode::ReadTimeout);
    wait_connected(&ca.events);
    wait_connected(&cb.events);
    callbacks.push(plain_callback(
        "ca",
        Some(ca.capture),
        ca.playout,
        stop.clone(),
    ));
    callbacks.push(plain_callback(
        "cb",
        Some(cb.capture),
        cb.playout,
        stop.clone(),
    ));
    blocking.push(("ca", ca.handle));
    blocking.push(("cb", cb.handle));

    // One-way audio to a tokio receiver and to a blocking receiver.
    let pa = join_blocking(url, "callp", "pa", true, WaitMode::Poll);
    let pb = join_blocking(url, "callp", "pb", true, WaitMode::Poll);
    wait_connected(&pa.events);
    wait_connected(&pb.events);
    callbacks.push(plain_callback(
        "pa",
        Some(pa.capture),
        pa.playout,
        stop.clone(),
    ));
    callbacks.push(plain_callback(
        "pb",
        Some(pb.capture),
        pb.playout,
        stop.clone(),
    ));
    blocking.push(("pa", pa.handle));
    blocking.push(("pb", pb.handle));

    let sx = join_blocking(url, "one-t", "sx", true, WaitMode::ReadTimeout);
    let (rt_handle, mut rt_events) = join_tokio(rt, url, "one-t", "rt", true);
    wait_connected(&sx.events);
    wait_connected_tokio(rt, &mut rt_events);
    callbacks.push(plain_callback(
        "sx",
        Some(sx.capture),
        sx.playout,
        stop.clone(),
    ));
    let sy = join_blocking(url, "one-b", "sy", true, WaitMode::ReadTimeout);
    let rb = join_blocking(url, "one-b", "rb", true, WaitMode::ReadTimeout);
    wait_connected(&sy.events);
    wait_connected(&rb.events);
    callbacks.push(plain_callback(
        "sy",
        Some(sy.capture),
        sy.playout,
        stop.clone(),
    ));
    callbacks.push(plain_callback("rb", None, rb.playout, stop.clone()));
    blocking.push(("sx", sx.handle));
    blocking.push(("sy", sy.handle));
    blocking.push(("rb", rb.handle));
    // The tokio receiver's events are read (and dropped) as an application would.
    let rt_reader = rt.spawn(async move {
        let mut chunks = 0u64;
        while let Some(e) = rt_events.recv().await {
            if let Event::Mesh(meshrtc::Event::AudioPlayout { .. }) = e {
                chunks += 1;
            }
        }
        chunks
    });
    tokio_handles.push(rt_handle);

    // Idle connected pairs, data only.
    let (ti, mut ti_events) = join_tokio(rt, url, "idle-t", "ti", false);
    let (tj, mut tj_events) = join_tokio(rt, url, "idle-t", "tj", false);
    wait_connected_tokio(rt, &mut ti_events);
    wait_connected_tokio(rt, &mut tj_events);
    let bi = join_blocking(url, "idle-b", "bi", false, WaitMode::ReadTimeout);
    let bj = join_blocking(url, "idle-b", "bj", false, WaitMode::ReadTimeout);
    wait_connected(&bi.events);
    wait_connected(&bj.events);
    blocking.push(("bi", bi.handle));
    blocking.push(("bj", bj.handle));
    tokio_handles.push(ti);
    tokio_handles.push(tj);

    // Let the jitter buffers settle, then measure.
    std::thread::sleep(Duration::from_secs(1));
    let turns_before: Vec<u64> = blocking
        .iter()
        .map(|(_, h)| h.rt_counts().loop_turns)
        .collect();
    let before = thread_cpu();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let after = thread_cpu();
    let wall = started.elapsed();
    let turns_after: Vec<u64> = blocking
        .iter()
        .map(|(_, h)| h.rt_counts().loop_turns)
        .collect();
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
    let show = |label: &str, driver: &str, prefixes: &[String], turns: Option<f64>| {
        let total: Duration = prefixes
            .iter()
            .map(|p| cpu_between(&before, &after, p))
            .sum();
        let turns = turns.map_or_else(String::new, |t| format!("  {t:>6.0} loop turns/s"));
        println!(
            "  {label:<44} {driver:<9} {:>6.2} % of a core{turns}",
            pct(total)
        );
    };
    let turns_per_s = |id: &str| {
        let i = blocking
            .iter()
            .position(|(n, _)| *n == id)
            .expect("a known peer");
        Some((turns_after[i] - turns_before[i]) as f64 / wall.as_secs_f64())
    };
    let b = |id: &str| vec![format!("mrb-core-{id}"), format!("mrb-sig-{id}")];
    let t = |id: &str| vec![format!("meshrtc-{id}")];
    println!("  (driver threads only: core + signaling; callbacks listed apart)");
    show(
        "2-peer call, both ways: peer ca",
        "blocking",
        &b("ca"),
        turns_per_s("ca"),
    );
    show(
        "2-peer call, both ways: peer cb",
        "blocking",
        &b("cb"),
        turns_per_s("cb"),
    );
    show(
        "2-peer call, both ways (WaitMode::Poll): pa",
        "blocking",
        &b("pa"),
        turns_per_s("pa"),
    );
    show(
        "2-peer call, both ways (WaitMode::Poll): pb",
        "blocking",
        &b("pb"),
        turns_per_s("pb"),
    );
    show("one-way audio, receiver", "tokio", &t("rt"), None);
    show(
        "one-way audio, receiver",
        "blocking",
        &b("rb"),
        turns_per_s("rb"),
    );
    show(
        "one-way audio, sender (to tokio)",
        "blocking",
        &b("sx"),
        turns_per_s("sx"),
    );
    show(
        "one-way audio, sender (to blocking)",
        "blocking",
        &b("sy"),
        turns_per_s("sy"),
    );
    show("idle connected pair, each peer", "tokio", &t("ti"), None);
    show(
        "idle connected pair, each peer",
        "blocking",
        &b("bi"),
        turns_per_s("bi"),
    );
    show(
        "10 ms callback thread (push + pop)",
        "-",
        &["cb-ca".to_string()],
        None,
    );
    show(
        "10 ms callback thread (pop only)",
        "-",
        &["cb-rb".to_string()],
        None,
    );

    stop.store(true, Ordering::Relaxed);
    for c in callbacks {
        c.join().expect("a callback");
    }
    for (_, h) in blocking {
        h.leave().expect("leave");
    }
    for h in tokio_handles {
        rt.block_on(h.leave()).expect("leave");
    }
    let chunks = rt.block_on(rt_reader).unwrap_or(0);
    println!("  (the tokio receiver got {chunks} audio chunks in all)");
}

// ---- timer section ----

fn timer_section() {
    println!("== what a wait really takes (50 waits each) ==");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a socket");
    let mut buf = [0u8; 16];
    for ms in [1u64, 5] {
        let asked = Duration::from_millis(ms);
        socket.set_read_timeout(Some(asked)).expect("set timeout");
        let mut us: Vec<u64> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let _ = socket.recv_from(&mut buf);
                t.elapsed().as_micros() as u64
            })
            .collect();
        row(&format!("socket read timeout {ms} ms"), &mut us, "µs");
        let mut us: Vec<u64> = (0..50)
            .map(|_| {
                let t = Instant::now();
                std::thread::sleep(asked);
                t.elapsed().as_micros() as u64
            })
            .collect();
        row(&format!("thread::sleep {ms} ms"), &mut us, "µs");
    }
}

fn main() {
    let mut seconds = 10;
    let mut picked = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds takes a number")
            }
            "--bench" => {}
            other => picked.push(other.to_string()),
        }
    }
    let wants = |s: &str| picked.is_empty() || picked.iter().any(|p| p == s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .expect("a runtime");
    let server = rt
        .block_on(meshrtc_tokio::SignalServer::bind(
            "127.0.0.1:0".parse().expect("an address"),
        ))
        .expect("a server");
    let url = server.url();
    if wants("timer") {
        timer_section();
    }
    if wants("rt") {
        rt_section(&url, seconds, WaitMode::ReadTimeout, true);
        rt_section(&url, seconds, WaitMode::Poll, false);
    }
    if wants("cpu") {
        cpu_section(&rt, &url, seconds);
    }
    drop(server);
}
