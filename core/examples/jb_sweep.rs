//! Scratch: the jitter buffer alone over synthetic arrival processes (not committed)
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshrtc::sync::jitter::{AudioDecode, AudioJitterBuffer, JitterConfig};

struct Ramp;

impl AudioDecode for Ramp {
    fn channels(&self) -> usize {
        1
    }
    fn decode(&mut self, _payload: &[u8]) -> Result<Vec<i16>, String> {
        Ok(vec![1; 960])
    }
    fn conceal(&mut self, samples: usize) -> Vec<i16> {
        vec![0; samples]
    }
    fn recover(&mut self, _next: &[u8], samples: usize) -> Option<Vec<i16>> {
        std::env::var("FEC").is_ok().then(|| vec![1; samples])
    }
}

fn gaussian(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[derive(Clone, Copy)]
enum Shape {
    Exp(f64),
    Pareto(f64, f64),
    Normal(f64),
    Uniform(f64),
    Step,
}

fn draw(shape: Shape, rng: &mut fastrand::Rng, i: usize) -> f64 {
    let u = 1.0 - rng.f64();
    match shape {
        Shape::Exp(m) => -m * u.ln(),
        Shape::Pareto(m, a) => m * (a - 1.0) * (u.powf(-1.0 / a) - 1.0),
        Shape::Normal(s) => s * gaussian(rng),
        Shape::Uniform(w) => w * (2.0 * rng.f64() - 1.0),
        Shape::Step => {
            let s = if (1500..3500).contains(&i) {
                0.040
            } else {
                0.005
            };
            s * gaussian(rng)
        }
    }
}

struct Res {
    delay: f64,
    playout: f64,
    concealed: f64,
    late: u64,
    lost: u64,
    p95: f64,
}

fn run(shape: Shape, base: f64, keep_order: bool, secs: f64, seed: u64) -> Res {
    let trace = std::env::var("TRACE").is_ok_and(|t| t == format!("{seed}{keep_order}"));
    let mut rng = fastrand::Rng::with_seed(seed);
    let t0 = Instant::now();
    let mut jb = AudioJitterBuffer::new(config(), Box::new(Ramp));
    let n = ((secs + 2.0) * 50.0) as usize;
    let mut last = 0.0f64;
    let mut arrivals: Vec<(f64, i64)> = (0..n)
        .map(|i| {
            let send = i as f64 * 0.02;
            let mut a = send + (base + draw(shape, &mut rng, i)).max(0.0);
            if keep_order {
                a = a.max(last);
                last = a;
            }
            (a, i as i64 * 960)
        })
        .collect();
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    let mut next = 0;
    let mut lat = Vec::new();
    let mut next_print = 0.0;
    loop {
        let t_arr = arrivals.get(next).map(|a| at(a.0));
        let t_tick = jb.poll_timeout();
        let t = match (t_arr, t_tick) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        if t > at(secs) {
            break;
        }
        if Some(t) == t_arr {
            let (_, m) = arrivals[next];
            jb.handle_frame(t, m, Arc::from(vec![0u8; 4]));
            next += 1;
        } else {
            jb.handle_timeout(t);
            while let Some(c) = jb.poll_chunk() {
                if trace && (c.playout - t0).as_secs_f64() >= next_print {
                    next_print += 0.5;
                    let play = (c.playout - t0).as_secs_f64();
                    let st = jb.stats();
                    println!(
                        "t {:5.1} delay {:6.1} target {:6.1} conc {:6.0} late {}",
                        play,
                        (play - c.media_ticks as f64 / 48000.0) * 1000.0,
                        st.target_delay * 1000.0,
                        st.concealed_samples as f64 / 48.0,
                        st.frames_late
                    );
                }
                if !c.concealed && c.playout > at(5.0) {
                    let play = (c.playout - t0).as_secs_f64();
                    lat.push(play - c.media_ticks as f64 / 48000.0);
                }
            }
        }
    }
    let s = jb.stats();
    lat.sort_by(f64::total_cmp);
    Res {
        delay: s.mean_delay().unwrap().as_secs_f64() * 1000.0,
        concealed: s.concealed_fraction().unwrap() * 100.0,
        playout: s.mean_playout_delay().unwrap().as_secs_f64() * 1000.0,
        late: s.frames_late,
        lost: s.frames_lost,
        p95: lat[(lat.len() as f64 * 0.95) as usize] * 1000.0,
    }
}

fn env(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn config() -> JitterConfig {
    let mut c = JitterConfig::default();
    if let Some(v) = env("LAMBDA") {
        c.delay_per_concealed_percent = Duration::from_secs_f64(v / 1000.0);
    }
    if let Some(v) = env("WINDOW") {
        c.window = Duration::from_secs_f64(v);
    }
    if let Some(v) = env("FAST") {
        c.fast_window = Duration::from_secs_f64(v);
    }
    if let Some(v) = env("HYST") {
        c.hysteresis = Duration::from_secs_f64(v / 1000.0);
    }
    c
}

fn main() {
    let secs: f64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120.0);
    let seeds: u64 = std::env::var("NSEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let cases = [
        ("pareto", Shape::Pareto(0.006, 2.5), 0.030),
        ("exp", Shape::Exp(0.020), 0.020),
        ("normal20", Shape::Normal(0.020), 0.100),
        ("normal10", Shape::Normal(0.010), 0.100),
        ("uniform30", Shape::Uniform(0.030), 0.050),
        ("step", Shape::Step, 0.2),
    ];
    let filter = std::env::args().nth(1);
    for (name, shape, base) in cases {
        if filter.as_deref().is_some_and(|f| !name.starts_with(f)) {
            continue;
        }
        for keep in [true, false] {
            let mut ds = Vec::new();
            let mut cs = Vec::new();
            let mut ps = Vec::new();
            let mut pl = Vec::new();
            let mut lates = 0;
            let mut losts = 0;
            for seed in 1..=seeds {
                let r = run(shape, base, keep, secs, seed);
                if std::env::var("PERSEED").is_ok() {
                    println!(
                        "  seed {seed}: jb {:.1} conc {:.3}% late {} lost {}",
                        r.delay, r.concealed, r.late, r.lost
                    );
                }
                ds.push(r.delay);
                pl.push(r.playout);
                cs.push(r.concealed);
                ps.push(r.p95);
                lates += r.late;
                losts += r.lost;
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let mm = |v: &[f64]| {
                (
                    v.iter().cloned().fold(f64::INFINITY, f64::min),
                    v.iter().cloned().fold(0.0, f64::max),
                )
            };
            let (d0, d1) = mm(&ds);
            let (c0, c1) = mm(&cs);
            let (p0, p1) = mm(&ps);
            println!(
                "{name:10} keep={keep:5}: jb {:6.1} [{d0:5.1}-{d1:5.1}] play {:6.1} conc {:.3}% [{c0:.3}-{c1:.3}] p95 {:6.1} [{p0:.1}-{p1:.1}] late {lates} lost {losts}",
                mean(&ds),
                mean(&pl),
                mean(&cs),
                mean(&ps),
            );
        }
    }
}
