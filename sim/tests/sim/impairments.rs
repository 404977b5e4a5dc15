//! Each impairment measured against its configuration over many synthetic packets
//!
//! Tolerances are stated next to each assertion; they are at least four standard deviations
//! of the estimate, and the generators are seeded, so the tests cannot flake.

use std::time::Duration;

use meshrtc_sim::link::DropReason;
use meshrtc_sim::{Jitter, Link, LinkConfig, Loss, QueueLimit, Rate, Verdict};

use crate::util::{lag1_correlation, mean, quantile};

/// Offers `n` packets of `size` bytes, `spacing` apart from time zero; returns
/// (send time, verdicts) per packet
fn offer(
    link: &mut Link,
    n: usize,
    spacing: Duration,
    size: usize,
) -> Vec<(Duration, Vec<Verdict>)> {
    (0..n)
        .map(|i| {
            let at = spacing * i as u32;
            let fate = link.handle_packet(at, size);
            (at, fate.verdicts().collect())
        })
        .collect()
}

/// One-way delays in milliseconds of every delivered first copy
fn delays_ms(out: &[(Duration, Vec<Verdict>)]) -> Vec<f64> {
    out.iter()
        .filter_map(|(at, v)| match v[0] {
            Verdict::Deliver(t) => Some((t - *at).as_secs_f64() * 1000.0),
            Verdict::Drop(_) => None,
        })
        .collect()
}

fn link(config: LinkConfig) -> Link {
    Link::new(config, 42, Duration::ZERO).unwrap()
}

#[test]
fn random_loss_of_5_percent_measures_5_percent() {
    let mut l = link(LinkConfig {
        loss: Loss::Random {
            probability: 0.05,
            correlation: 0.0,
        },
        ..LinkConfig::default()
    });
    let n = 200_000;
    let out = offer(&mut l, n, Duration::from_millis(1), 200);
    let lost = out
        .iter()
        .filter(|(_, v)| v[0] == Verdict::Drop(DropReason::Loss))
        .count();
    let rate = lost as f64 / n as f64;
    eprintln!(
        "random loss: configured 5 %, measured {:.3} %",
        rate * 100.0
    );
    // σ = sqrt(0.05·0.95/200000) = 0.05 %; tolerance ±0.25 % (5σ).
    assert!((rate - 0.05).abs() < 0.0025, "measured {rate}");
    assert_eq!(l.stats().lost, lost as u64);
}

#[test]
fn gilbert_elliott_gives_its_loss_rate_and_burst_length() {
    // p/(p+r) = 10 % loss, mean burst 1/r = 3.33 packets.
    let loss = Loss::GilbertElliott {
        p: 1.0 / 30.0,
        r: 0.3,
        loss_in_bad: 1.0,
        loss_in_good: 0.0,
    };
    assert!((loss.expected_rate() - 0.10).abs() < 1e-9);
    let mut l = link(LinkConfig {
        loss,
        ..LinkConfig::default()
    });
    let n = 300_000;
    let out = offer(&mut l, n, Duration::from_millis(1), 200);
    let lost: Vec<bool> = out
        .iter()
        .map(|(_, v)| matches!(v[0], Verdict::Drop(_)))
        .collect();
    let rate = lost.iter().filter(|&&x| x).count() as f64 / n as f64;
    let mut bursts = Vec::new();
    let mut run = 0;
    for &x in &lost {
        if x {
            run += 1;
        } else if run > 0 {
            bursts.push(run as f64);
            run = 0;
        }
    }
    let burst = mean(&bursts);
    eprintln!(
        "gilbert-elliott: configured 10 % in bursts of 3.333, measured {:.3} % in bursts of {burst:.3}",
        rate * 100.0
    );
    // ~9000 bursts: the rate is within ±1 % absolute, the mean burst within ±0.25 packets.
    assert!((rate - 0.10).abs() < 0.01, "loss rate {rate}");
    assert!((burst - 1.0 / 0.3).abs() < 0.25, "mean burst {burst}");
    // Far burstier than independent loss at the same rate (mean run 1/(1-0.1) = 1.11).
    assert!(burst > 2.5);
}

#[test]
fn duplication_rate_matches() {
    let mut l = link(LinkConfig {
        duplicate: 0.02,
        latency: Duration::from_millis(10),
        ..LinkConfig::default()
    });
    let n = 200_000;
    let out = offer(&mut l, n, Duration::from_millis(1), 200);
    let dups = out.iter().filter(|(_, v)| v.len() == 2).count();
    let rate = dups as f64 / n as f64;
    eprintln!(
        "duplication: configured 2 %, measured {:.3} %",
        rate * 100.0
    );
    // σ = 0.03 %; tolerance ±0.15 %.
    assert!((rate - 0.02).abs() < 0.0015, "measured {rate}");
    assert_eq!(l.stats().duplicated, dups as u64);
    // Both copies arrive.
    assert!(out
        .iter()
        .filter(|(_, v)| v.len() == 2)
        .all(|(_, v)| v.iter().all(|x| matches!(x, Verdict::Deliver(_)))));
}

/// Mean and 95th percentile of the delay for a jitter shape, against the shape's own
/// figures; with and without delay correlation
fn check_shape(jitter: Jitter, rho: f64) -> Vec<f64> {
    let latency = Duration::from_millis(50);
    let mut l = link(LinkConfig {
        latency,
        jitter,
        delay_correlation: rho,
        keep_order: false,
        ..LinkConfig::default()
    });
    let n = 200_000;
    let d = delays_ms(&offer(&mut l, n, Duration::from_millis(20), 200));
    assert_eq!(d.len(), n);
    let want_mean = 50.0 + jitter.mean().as_secs_f64() * 1000.0;
    let want_p95 = 50.0 + jitter.quantile_ns(0.95) / 1e6;
    let (m, p95) = (mean(&d), quantile(&d, 0.95));
    eprintln!(
        "{jitter:?} ρ={rho}: mean {m:.3} ms (want {want_mean:.3}), p95 {p95:.3} ms (want {want_p95:.3}), lag-1 correlation {:.3}",
        lag1_correlation(&d)
    );
    // Independent draws: the estimates' σ are below 0.03 ms (mean) and 0.13 ms (p95).
    // Correlated (ρ = 0.8) draws carry about a ninth of the information: 3x the σ.
    let (tol_mean, tol_p95) = if rho == 0.0 { (0.15, 0.6) } else { (0.45, 1.5) };
    assert!(
        (m - want_mean).abs() < tol_mean,
        "{jitter:?} ρ={rho}: mean {m} want {want_mean}"
    );
    assert!(
        (p95 - want_p95).abs() < tol_p95,
        "{jitter:?} ρ={rho}: p95 {p95} want {want_p95}"
    );
    d
}

fn shapes() -> [Jitter; 4] {
    [
        Jitter::Uniform {
            max: Duration::from_millis(10),
        },
        Jitter::Normal {
            std_dev: Duration::from_millis(5),
        },
        Jitter::Exponential {
            mean: Duration::from_millis(5),
        },
        Jitter::Pareto {
            mean: Duration::from_millis(5),
            shape: 3.0,
        },
    ]
}

#[test]
fn every_jitter_shape_gives_its_mean_and_p95() {
    for j in shapes() {
        let d = check_shape(j, 0.0);
        // Independent: no correlation between consecutive packets.
        let c = lag1_correlation(&d);
        assert!(c.abs() < 0.02, "{j:?}: lag-1 correlation {c}");
    }
}

#[test]
fn delay_correlation_keeps_the_distribution_and_correlates() {
    for j in shapes() {
        let d = check_shape(j, 0.8);
        let c = lag1_correlation(&d);
        match j {
            // The normal shape is the AR(1) process itself: correlation ρ.
            Jitter::Normal { .. } => assert!((c - 0.8).abs() < 0.02, "{j:?}: {c}"),
            // Other shapes map it through their quantile function, which keeps most of it.
            _ => assert!(c > 0.6, "{j:?}: {c}"),
        }
    }
}

#[test]
fn jitter_reorders_only_without_keep_order() {
    let jitter = Jitter::Normal {
        std_dev: Duration::from_millis(10),
    };
    for keep_order in [true, false] {
        let mut l = link(LinkConfig {
            latency: Duration::from_millis(50),
            jitter,
            keep_order,
            ..LinkConfig::default()
        });
        let out = offer(&mut l, 10_000, Duration::from_millis(1), 200);
        let arrivals: Vec<Duration> = out
            .iter()
            .map(|(_, v)| match v[0] {
                Verdict::Deliver(t) => t,
                Verdict::Drop(_) => unreachable!(),
            })
            .collect();
        let inversions = arrivals.windows(2).filter(|w| w[1] < w[0]).count();
        if keep_order {
            assert_eq!(inversions, 0);
        } else {
            assert!(inversions > 1000, "{inversions}");
        }
    }
}

#[test]
fn reordering_holds_back_its_share_of_packets() {
    let mut l = link(LinkConfig {
        latency: Duration::from_millis(20),
        reorder: 0.05,
        reorder_delay: Duration::from_millis(10),
        ..LinkConfig::default()
    });
    let n = 100_000;
    let out = offer(&mut l, n, Duration::from_millis(1), 200);
    let arrivals: Vec<Duration> = out
        .iter()
        .map(|(_, v)| match v[0] {
            Verdict::Deliver(t) => t,
            Verdict::Drop(_) => unreachable!(),
        })
        .collect();
    // A packet is reordered if a packet sent after it arrives before it.
    let mut reordered = 0;
    let mut min_later = Duration::MAX;
    for &a in arrivals.iter().rev() {
        if a > min_later {
            reordered += 1;
        }
        min_later = min_later.min(a);
    }
    let rate = reordered as f64 / n as f64;
    eprintln!("reordering: configured 5 %, measured {:.3} %", rate * 100.0);
    // σ = 0.07 %; tolerance ±0.35 %.
    assert!((rate - 0.05).abs() < 0.0035, "measured {rate}");
    // Held back by exactly the configured delay; every held packet is overtaken (the last
    // packet, if held, has nothing behind it to overtake it).
    let held = out
        .iter()
        .filter(|(at, v)| v[0] == Verdict::Deliver(*at + Duration::from_millis(30)))
        .count();
    assert_eq!(l.stats().reordered, held as u64);
    assert!(held.abs_diff(reordered) <= 1, "{held} {reordered}");
}

#[test]
fn rate_limit_gives_its_throughput_and_drops_at_the_tail() {
    // 1 Mbit/s bottleneck, 20 kB queue, offered 2 Mbit/s of 1000-byte packets for 10 s.
    let mut l = link(LinkConfig {
        latency: Duration::from_millis(10),
        rate: Rate::Constant {
            bits_per_sec: 1_000_000,
        },
        queue: QueueLimit::Bytes(20_000),
        ..LinkConfig::default()
    });
    let out = offer(&mut l, 2500, Duration::from_millis(4), 1000);
    let delivered: Vec<Duration> = out
        .iter()
        .filter_map(|(_, v)| match v[0] {
            Verdict::Deliver(t) => Some(t),
            _ => None,
        })
        .collect();
    let dropped = out
        .iter()
        .filter(|(_, v)| v[0] == Verdict::Drop(DropReason::Queue))
        .count();
    // Throughput over the busy period: exactly one packet per 8 ms (1 Mbit/s).
    let span = *delivered.last().unwrap() - delivered[0];
    let bps = (delivered.len() - 1) as f64 * 8000.0 / span.as_secs_f64();
    assert!((bps - 1_000_000.0).abs() < 1.0, "throughput {bps}");
    // Half the offered load is dropped at the tail (±1 %).
    let share = dropped as f64 / out.len() as f64;
    eprintln!(
        "rate limit 1 Mbit/s, 20 kB queue, 2 Mbit/s offered: throughput {bps:.1} bit/s, tail drops {:.2} %",
        share * 100.0
    );
    assert!((share - 0.5).abs() < 0.01, "dropped share {share}");
    assert_eq!(l.stats().queue_dropped, dropped as u64);
    // The queue bounds the delay: 20 kB at 1 Mbit/s is 160 ms, plus latency.
    let worst = delays_ms(&out).into_iter().fold(0.0, f64::max);
    assert!(worst <= 10.0 + 160.0 + 1e-6, "worst delay {worst}");
    assert!(worst >= 10.0 + 150.0, "the queue filled: {worst}");

    // Below the rate nothing queues: the delay is serialization plus latency.
    let mut l = link(LinkConfig {
        latency: Duration::from_millis(10),
        rate: Rate::Constant {
            bits_per_sec: 1_000_000,
        },
        queue: QueueLimit::Packets(5),
        ..LinkConfig::default()
    });
    let d = delays_ms(&offer(&mut l, 1000, Duration::from_millis(10), 1000));
    assert!(d.iter().all(|&x| (x - 18.0).abs() < 1e-6), "{:?}", &d[..3]);
}

#[test]
fn packet_limited_queue_drops_at_the_tail() {
    let mut l = link(LinkConfig {
        rate: Rate::Constant {
            bits_per_sec: 80_000,
        },
        queue: QueueLimit::Packets(3),
        ..LinkConfig::default()
    });
    // A burst of 10 packets of 100 bytes (10 ms each at 80 kbit/s): 3 fit.
    let out = offer(&mut l, 10, Duration::ZERO, 100);
    let kept: Vec<Verdict> = out.iter().map(|(_, v)| v[0]).collect();
    assert_eq!(
        kept[..4],
        [
            Verdict::Deliver(Duration::from_millis(10)),
            Verdict::Deliver(Duration::from_millis(20)),
            Verdict::Deliver(Duration::from_millis(30)),
            Verdict::Drop(DropReason::Queue),
        ]
    );
    assert_eq!(l.stats().queue_dropped, 7);
}

#[test]
fn a_link_that_is_down_drops_everything() {
    let mut l = link(LinkConfig::with_latency(Duration::from_millis(5)));
    l.set_up(false);
    let out = offer(&mut l, 100, Duration::from_millis(1), 100);
    assert!(out
        .iter()
        .all(|(_, v)| v[..] == [Verdict::Drop(DropReason::Outage)]));
    l.set_up(true);
    let v = l.handle_packet(Duration::from_secs(1), 100).verdict;
    assert_eq!(v, Verdict::Deliver(Duration::from_millis(1005)));
    assert_eq!(l.stats().outage_dropped, 100);
}

#[test]
fn same_seed_same_fates_and_a_change_reseeds() {
    let cfg = LinkConfig {
        latency: Duration::from_millis(30),
        jitter: Jitter::Exponential {
            mean: Duration::from_millis(4),
        },
        delay_correlation: 0.3,
        loss: Loss::Random {
            probability: 0.1,
            correlation: 0.0,
        },
        duplicate: 0.01,
        reorder: 0.01,
        ..LinkConfig::default()
    };
    let run = |seed: u64| {
        let mut l = Link::new(cfg.clone(), seed, Duration::ZERO).unwrap();
        offer(&mut l, 5000, Duration::from_millis(2), 300)
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn bad_configurations_are_rejected() {
    let bad = [
        LinkConfig {
            loss: Loss::Random {
                probability: 1.5,
                correlation: 0.0,
            },
            ..LinkConfig::default()
        },
        LinkConfig {
            loss: Loss::GilbertElliott {
                p: 0.1,
                r: 0.0,
                loss_in_bad: 1.0,
                loss_in_good: 0.0,
            },
            ..LinkConfig::default()
        },
        LinkConfig {
            jitter: Jitter::Pareto {
                mean: Duration::from_millis(1),
                shape: 1.0,
            },
            ..LinkConfig::default()
        },
        LinkConfig {
            rate: Rate::Constant { bits_per_sec: 0 },
            ..LinkConfig::default()
        },
        LinkConfig {
            delay_correlation: 1.0,
            ..LinkConfig::default()
        },
    ];
    for c in bad {
        assert!(Link::new(c.clone(), 1, Duration::ZERO).is_err(), "{c:?}");
    }
}
