//! The adaptive audio jitter buffer over jittery links

use std::time::Duration;

use meshrtc_sim::{Action, Clock, Jitter};

use crate::{jittery, Call};

fn normal(ms: u64) -> Jitter {
    Jitter::Normal {
        std_dev: Duration::from_millis(ms),
    }
}

#[test]
fn mean_delay_and_late_loss_within_budget_for_sigma_10_20_40() {
    // (sigma ms, mean buffer delay budget ms); late loss at most 0.5% in each case.
    for (sigma, budget) in [(10, 60.0), (20, 100.0), (40, 175.0)] {
        for seed in [1, 2] {
            let mut call = Call::new(seed, jittery(50, normal(sigma)), Clock::default(), false);
            call.stream(60, false);
            let jb = call.stats().audio.unwrap().jitter_buffer;
            let late = jb.frames_late as f64 / jb.frames_received as f64;
            let delay = jb.mean_delay().unwrap().as_secs_f64() * 1000.0;
            eprintln!(
                "sigma {sigma} ms seed {seed}: mean buffer delay {delay:.1} ms, late {:.3}%, \
                 concealed {} samples",
                late * 100.0,
                jb.concealed_samples
            );
            assert!(delay <= budget, "sigma {sigma} seed {seed}: {delay} ms");
            assert!(late <= 0.005, "sigma {sigma} seed {seed}: late {late}");
        }
    }
}

#[test]
fn jitter_steps_up_then_down() {
    let mut call = Call::new(5, jittery(50, normal(5)), Clock::default(), false);
    let (a, b) = (call.a, call.b);
    let t0 = call.sim.elapsed();
    call.sim.schedule(
        t0 + Duration::from_secs(30),
        Action::SetLink {
            from: a,
            to: b,
            config: jittery(50, normal(40)),
        },
    );
    call.sim.schedule(
        t0 + Duration::from_secs(70),
        Action::SetLink {
            from: a,
            to: b,
            config: jittery(50, normal(5)),
        },
    );
    // One sample of the buffer's counters per second of the sender's clock.
    let mut samples = Vec::new();
    for _ in 0..110 {
        call.stream(1, false);
        let jb = call.stats().audio.unwrap().jitter_buffer;
        samples.push((
            jb.frames_late,
            jb.frames_received,
            jb.jitter_buffer_delay,
            jb.jitter_buffer_emitted_count,
        ));
    }
    let window = |from: usize, to: usize| {
        let (l0, r0, d0, e0) = samples[from];
        let (l1, r1, d1, e1) = samples[to];
        let late = (l1 - l0) as f64 / (r1 - r0).max(1) as f64;
        let delay = (d1 - d0) / (e1 - e0).max(1) as f64 * 1000.0;
        (late, delay)
    };
    // Up at 30 s: from 32 s on, late loss under 1% (10 s windows of 500 frames).
    for start in [32, 42, 52, 60] {
        let (late, _) = window(start, start + 10);
        assert!(late < 0.01, "late {late} in the 10 s from {start} s");
    }
    // Down at 70 s: by 100 s the delay is within 20 ms of what sigma 5 ms needed before.
    let (_, before) = window(15, 29);
    let (_, after) = window(100, 109);
    eprintln!("sigma 5 ms: delay {before:.1} ms before the step, {after:.1} ms 30 s after it");
    assert!((after - before).abs() <= 20.0, "{before} vs {after}");
}
