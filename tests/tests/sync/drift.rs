//! Clock-drift estimation from arrival times, against the simulator's drifting clocks

use std::time::Duration;

use meshrtc_sim::{Clock, Jitter};

use crate::{jittery, Call};

/// Runs 60 s calls from a sender at +-1000 ppm; returns the estimate errors in ppm
fn errors(jitter: Jitter, seeds: &[u64]) -> Vec<f64> {
    let mut out = Vec::new();
    for &seed in seeds {
        for ppm in [1000.0, -1000.0] {
            let clock = Clock::new(0, ppm).unwrap();
            let mut call = Call::new(seed, jittery(30, jitter), clock, true);
            call.stream(60, true);
            let stats = call.stats();
            let est = stats.clock_drift_ppm.expect("an estimate after 60 s");
            // The sender-report estimate: about 60 samples, so only a coarse check.
            let reports = stats.report_clock_drift_ppm.expect("a report estimate");
            eprintln!(
                "{jitter:?} seed {seed} truth {ppm}: estimate {est:.2} ppm (reports {reports:.1})"
            );
            assert!((reports - ppm).abs() < 300.0, "reports say {reports}");
            out.push((est - ppm).abs());
        }
    }
    out
}

fn p95(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.95).round() as usize]
}

#[test]
fn drift_without_jitter_within_1ppm() {
    let e = p95(errors(Jitter::None, &[1, 2]));
    assert!(e <= 1.0, "p95 error {e} ppm");
}

#[test]
fn drift_under_exponential_queueing_within_1ppm() {
    let e = p95(errors(
        Jitter::Exponential {
            mean: Duration::from_millis(10),
        },
        &[1, 2, 3],
    ));
    assert!(e <= 1.0, "p95 error {e} ppm");
}

#[test]
fn drift_under_uniform_jitter_within_4ppm() {
    let e = p95(errors(
        Jitter::Uniform {
            max: Duration::from_millis(20),
        },
        &[1, 2, 3],
    ));
    assert!(e <= 4.0, "p95 error {e} ppm");
}

#[test]
fn drift_under_normal_jitter_within_21ppm() {
    let e = p95(errors(
        Jitter::Normal {
            std_dev: Duration::from_millis(10),
        },
        &[1, 2, 3, 4],
    ));
    assert!(e <= 21.0, "p95 error {e} ppm");
}
