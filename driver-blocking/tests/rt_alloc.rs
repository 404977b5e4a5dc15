//! The real-time path allocates nothing in steady state
//!
//! This binary installs a counting global allocator. It counts only while the current
//! thread has its `COUNTING` flag set, which the simulated audio callback sets around each
//! push and pop call; every other thread (the core thread, the signaling thread, the
//! server) allocates freely and is not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshrtc::codec::testsrc::Tone;
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::CandidatePolicy;
use meshrtc_blocking::{Event, Session, SessionConfig, SLOT_SAMPLES};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // `const` initialisation: reading it never allocates or registers a destructor.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: during thread teardown the flag may be gone; nothing is counted then.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// an atomic and a const-initialised thread-local.
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

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with counting on for this thread
fn counted<R>(f: impl FnOnce() -> R) -> R {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

fn config(url: &str, id: &str, seed: u64) -> SessionConfig {
    let mut c = SessionConfig::new(url, RoomId::new("alloc").unwrap());
    c.session.peer_id = Some(PeerId::new(id).unwrap());
    c.session.participant.seed = seed;
    c.session.participant.candidate_policy = CandidatePolicy::LoopbackOnly;
    c.session.participant.capabilities.audio = true;
    c
}

fn wait_connected(events: &meshrtc_blocking::Events) {
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

/// Thousands of push and pop calls on a live two-peer call, with audio flowing both ways,
/// allocate (and free) nothing
#[test]
fn push_and_pop_never_allocate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(meshrtc_tokio::SignalServer::bind(
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let a = Session::join(config(&server.url(), "alloc-a", 1)).unwrap();
    let b = Session::join(config(&server.url(), "alloc-b", 2)).unwrap();
    wait_connected(&a.events);
    wait_connected(&b.events);

    // Peer b's callback runs in the background so that a receives audio.
    let (mut b_cap, mut b_play) = (b.capture, b.playout);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b_stop = stop.clone();
    let b_thread = std::thread::spawn(move || {
        let mut tone = Tone::new(48_000, 1);
        let mut mic = [0i16; 480];
        let mut speaker = [0i16; SLOT_SAMPLES];
        while !b_stop.load(Ordering::Relaxed) {
            tone.fill(&mut mic);
            let _ = b_cap.push(&mic, Instant::now());
            while b_play.pop_into(&mut speaker).is_some() {}
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    // Peer a's callback: measured. 3000 turns of 1 ms, each one push and pops until empty.
    let (mut cap, mut play) = (a.capture, a.playout);
    let mut tone = Tone::new(48_000, 1);
    let mut mic = [0i16; 480];
    let mut speaker = [0i16; SLOT_SAMPLES];
    let (mut pushes, mut pops, mut empty_pops) = (0u64, 0u64, 0u64);
    // Warm-up outside the count: the first chunks make the core start the Opus encoder.
    for _ in 0..20 {
        let _ = cap.push(&mic, Instant::now());
        std::thread::sleep(Duration::from_millis(1));
    }
    // The counter counts: one allocation and one free, seen.
    let sanity = ALLOCATIONS.load(Ordering::Relaxed);
    counted(|| drop(std::hint::black_box(vec![0u8; 16])));
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - sanity, 2);

    let full_before = cap.counters().snapshot().capture_full;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for turn in 0..3000u32 {
        tone.fill(&mut mic);
        let now = Instant::now();
        counted(|| {
            // A chunk every other turn (5x real time), and now and then a burst that fills
            // the ring, so that the refusal path is measured too.
            let burst = if turn % 500 == 250 { 40 } else { 1 };
            if turn % 2 == 0 {
                for _ in 0..burst {
                    let _ = cap.push(&mic, now);
                    pushes += 1;
                }
            }
            loop {
                match play.pop_into(&mut speaker) {
                    Some(_) => pops += 1,
                    None => {
                        empty_pops += 1;
                        break;
                    }
                }
            }
            let _ = play.pop_with(|info, samples| info.samples + samples.len());
            let _ = (
                cap.free_slots(),
                play.available(),
                cap.counters().snapshot(),
            );
        });
        std::thread::sleep(Duration::from_millis(1));
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let refused = cap.counters().snapshot().capture_full - full_before;
    stop.store(true, Ordering::Relaxed);
    b_thread.join().unwrap();

    eprintln!(
        "pushes {pushes} ({refused} refused), pops {pops}, empty pops {empty_pops}, \
         allocations {allocations}, {:?}",
        a.handle.rt_counts()
    );
    assert_eq!(allocations, 0, "the real-time path allocated");
    assert!(pushes >= 1500 && empty_pops >= 3000);
    assert!(refused > 0, "the bursts never filled the ring");
    assert!(pops >= 100, "too little audio came through: {pops}");
    a.handle.leave().unwrap();
    b.handle.leave().unwrap();
}
