//! Media that fits the network (issue 17): bandwidth estimation and adaptive bitrate in
//! virtual time — a capacity step, LTE-like capacity, a slow peer in a mesh, competing flows
//!
//! The tests run the named scenarios (or scaled copies of them, to stay fast) on a few
//! seeds and assert what a user sees: media keeps playing, on time, at a rate the path can
//! carry. `cargo test --release -p meshrtc-sim --test sim rate_sweep -- --ignored
//! --nocapture` runs the full scenarios on more seeds and prints every figure.

use std::path::Path;
use std::time::Duration;

use meshrtc_sim::rates::mean_over;
use meshrtc_sim::scenario::Outcome;
use meshrtc_sim::{HostId, MediaStreamId, Scenario, Sim};

use crate::util::{real_trace, scenarios_dir};

fn run_file(name: &str, seed: u64) -> Outcome {
    let path = scenarios_dir().join(format!("{name}.toml"));
    let s = Scenario::from_path(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    s.run(Some(seed)).unwrap()
}

fn run_text(text: &str, seed: u64) -> Outcome {
    let s = Scenario::parse(text, Path::new("rate-test.toml"))
        .unwrap_or_else(|e| panic!("scenario rejected: {e}"));
    s.run(Some(seed)).unwrap()
}

fn host(out: &Outcome, name: &str) -> HostId {
    HostId(
        out.report
            .hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}")),
    )
}

fn stream(sim: &Sim, from: HostId, kind: &str) -> MediaStreamId {
    find_stream(sim, from, kind).unwrap_or_else(|| panic!("no {kind} stream from {from:?}"))
}

fn find_stream(sim: &Sim, from: HostId, kind: &str) -> Option<MediaStreamId> {
    (0..sim.media_stream_count()).map(MediaStreamId).find(|&i| {
        let c = sim.media_stream_config(i);
        c.from == from && c.source.kind() == kind
    })
}

/// What one direction of a run showed within a window of capture times
#[derive(Debug, Default)]
struct Window {
    /// Video capture-to-render delay, p95, ms
    video_p95_ms: f64,
    /// Audio frames captured in the window that played late (over the stream's limit) or
    /// never, as a fraction of those sent
    audio_late: f64,
    /// Audio capture-to-playout delay, p99, ms
    audio_p99_ms: f64,
    /// Audio capture-to-playout delay, median, ms
    audio_p50_ms: f64,
    /// Longest time between two rendered video frames (by render time), ms
    video_gap_ms: f64,
    /// Video frames rendered
    video_frames: usize,
}

/// The `q` quantile of `sorted` (ascending)
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn window(sim: &Sim, from: HostId, to: HostId, start: Duration, end: Duration) -> Window {
    let mut w = Window::default();
    let inside = |t: Duration| t >= start && t < end;
    let video = find_stream(sim, from, "video");
    if let Some(st) = video.and_then(|v| sim.media_stats(v, to)) {
        let mut d: Vec<f64> = st
            .samples
            .iter()
            .filter(|s| inside(s.captured_at))
            .map(|s| s.delay.as_secs_f64() * 1000.0)
            .collect();
        w.video_frames = d.len();
        d.sort_by(f64::total_cmp);
        w.video_p95_ms = quantile(&d, 0.95);
        let mut shown: Vec<Duration> = st
            .samples
            .iter()
            .map(|s| s.captured_at + s.delay)
            .filter(|t| inside(*t))
            .collect();
        shown.sort();
        shown.insert(0, start);
        shown.push(end);
        w.video_gap_ms = shown
            .windows(2)
            .map(|p| (p[1] - p[0]).as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
    } else {
        w.video_gap_ms = (end - start).as_secs_f64() * 1000.0;
    }
    let a = stream(sim, from, "audio");
    let cfg = sim.media_stream_config(a);
    let frame = Duration::from_millis(20);
    let sent = ((end - start).as_secs_f64() / frame.as_secs_f64()).round();
    if let Some(st) = sim.media_stats(a, to) {
        let mut d: Vec<f64> = st
            .samples
            .iter()
            .filter(|s| inside(s.captured_at))
            .map(|s| s.delay.as_secs_f64() * 1000.0)
            .collect();
        let on_time = st
            .samples
            .iter()
            .filter(|s| inside(s.captured_at) && s.delay <= cfg.late_after)
            .count() as f64;
        w.audio_late = (1.0 - on_time / sent).max(0.0);
        d.sort_by(f64::total_cmp);
        w.audio_p99_ms = quantile(&d, 0.99);
        w.audio_p50_ms = quantile(&d, 0.5);
    } else {
        w.audio_late = 1.0;
    }
    w
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Mean sent (offered to the link) and video-sent rates of `from → to` over `(a, b]`
fn rates(sim: &Sim, from: HostId, to: HostId, a: f64, b: f64) -> (f64, f64) {
    let s = sim.rate_samples(from, to);
    (
        mean_over(s, secs(a), secs(b), |x| Some(x.sent_kbps)).unwrap_or(0.0),
        mean_over(s, secs(a), secs(b), |x| x.video_sent_kbps).unwrap_or(0.0),
    )
}

/// The capacity step's figures for one direction: drop at `drop`, back at `back`
#[derive(Debug)]
struct Step {
    /// Sent kbit/s over (drop + 2 s, drop + 4 s]
    sent_after_2s: f64,
    /// Sent kbit/s over (drop + 5 s, back]
    sent_low: f64,
    low: Window,
    whole: Window,
    /// Video kbit/s sent over the 5 s before the drop, and over (back + 5, back + 10]
    video_before: f64,
    video_after: f64,
}

/// The seeds of the rate measurements: `RATE_SEEDS` (comma-separated), or 1, 2 and 3
fn rate_seeds() -> Vec<u64> {
    std::env::var("RATE_SEEDS")
        .ok()
        .and_then(|s| s.split(',').map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3])
}

/// The capacity step's bounds (issue 17) counted over every direction of every seed: one
/// line to compare settings by, as single directions swing widely from seed to seed
fn print_step_summary(label: &str, steps: &[Step]) {
    let n = steps.len();
    if n == 0 {
        return;
    }
    let count = |f: &dyn Fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let mean = |f: &dyn Fn(&Step) -> f64| steps.iter().map(f).sum::<f64>() / n as f64;
    println!(
        "{label} summary, {n} directions: sent < 500 kbit/s 2-4 s after the drop {}/{n}; \
         low-phase video p95 < 200 ms {}/{n} (mean {:.0} ms); audio late < 1 % {}/{n} (mean \
         {:.1} %); no video gap > 1 s {}/{n}; video 5-10 s after the recovery >= 70 % of before \
         {}/{n}; means: sent in the low phase {:.0} kbit/s, video before {:.0}, after {:.0}",
        count(&|s| s.sent_after_2s < 500.0),
        count(&|s| s.low.video_p95_ms < 200.0),
        mean(&|s| s.low.video_p95_ms),
        count(&|s| s.low.audio_late < 0.01),
        mean(&|s| s.low.audio_late * 100.0),
        count(&|s| s.whole.video_gap_ms <= 1000.0),
        count(&|s| s.video_after >= 0.7 * s.video_before),
        mean(&|s| s.sent_low),
        mean(&|s| s.video_before),
        mean(&|s| s.video_after),
    );
}

fn step(sim: &Sim, from: HostId, to: HostId, drop: f64, back: f64) -> Step {
    Step {
        sent_after_2s: rates(sim, from, to, drop + 2.0, drop + 4.0).0,
        sent_low: rates(sim, from, to, drop + 5.0, back).0,
        low: window(sim, from, to, secs(drop + 5.0), secs(back)),
        whole: window(sim, from, to, secs(5.0), secs(back + 15.0)),
        video_before: rates(sim, from, to, drop - 5.0, drop).1,
        video_after: rates(sim, from, to, back + 5.0, back + 10.0).1,
    }
}

/// The capacity step scaled down to run in seconds: 320x180 VP8 at up to 400 kbit/s over
/// 1.6 Mbit/s → 200 kbit/s (the same 8× fall as 4 Mbit/s → 500 kbit/s) → 1.6 Mbit/s
fn small_step(adapt: bool) -> String {
    format!(
        r#"
name = "small-step"
duration_s = 36
[participant]
rate_adaptation = {adapt}
[[hosts]]
name = "alice"
[[hosts]]
name = "bob"
[link]
latency_ms = 25
jitter = {{ shape = "normal", std_ms = 1 }}
rate_kbps = 1600
queue_bytes = 24000
[[timeline]]
at_s = 12
action = "set-link"
from = "alice"
to = "bob"
both_ways = true
duration_s = 12
link = {{ rate_kbps = 200 }}
[[media]]
kind = "audio"
from = "*"
[[media]]
kind = "video"
codec = "vp8"
from = "*"
width = 320
height = 180
fps = 15
bitrate_kbps = 400
"#
    )
}

#[test]
#[ignore = "fails: seed 1 alice→bob in the 200 kbit/s phase sends 177 kbit/s yet audio is 100 % late and 2 video frames render (the queue filled before the estimate fell, see docs/rate/README.md, rate_timeline)"]
fn a_capacity_step_is_followed_down_and_back_up() {
    let (drop, back) = (12.0, 24.0);
    for seed in [1, 2] {
        let out = run_text(&small_step(true), seed);
        let fixed = run_text(&small_step(false), seed);
        let (a, b) = (host(&out, "alice"), host(&out, "bob"));
        for (from, to) in [(a, b), (b, a)] {
            let s = step(&out.sim, from, to, drop, back);
            let f = step(&fixed.sim, from, to, drop, back);
            eprintln!("seed {seed} {from:?}→{to:?}: adaptive {s:?}\n fixed {f:?}");
            // Down: below the new capacity once the estimate has followed.
            assert!(s.sent_low < 200.0, "seed {seed}: {s:?}");
            // Audio stays on time in the low phase, where fixed bitrates make it late.
            assert!(s.low.audio_late < 0.05, "seed {seed}: {s:?}");
            assert!(f.low.audio_late > 0.3, "seed {seed}: fixed {f:?}");
            assert!(s.low.video_p95_ms < 400.0, "seed {seed}: {s:?}");
            // Video keeps rendering all along.
            assert!(
                s.low.video_frames > 0 && s.whole.video_gap_ms < 3000.0,
                "{s:?}"
            );
            // Up again: most of the video rate is back within 10 s.
            assert!(s.video_after > 0.5 * s.video_before, "seed {seed}: {s:?}");
        }
    }
}

/// Once the queue of a capacity drop has drained, audio is on time again and the smaller
/// video is quick: lip-sync does not hold audio back for video that the queue made late,
/// and the jitter buffer forgets the queue half a second after the receiver saw it drain.
/// Seeds 1 and 4 are the two whose audio was late in the low phase before that (3.6 % and
/// 12.3 % of it, bob→alice; seeds 1–6 in `rate_sweep` print every direction)
#[test]
fn audio_is_on_time_once_the_queue_of_a_capacity_drop_has_drained() {
    for (seed, from, to, s) in capacity_steps(&[1, 4]) {
        assert!(
            s.low.audio_late < 0.01,
            "seed {seed} {from:?}→{to:?}: {s:?}"
        );
        assert!(
            s.low.video_p95_ms < 200.0,
            "seed {seed} {from:?}→{to:?}: {s:?}"
        );
    }
}

/// `scenarios/capacity-step.toml` (drop at 20 s, back at 40 s) run with each of `seeds`:
/// both directions' [`Step`] per seed
fn capacity_steps(seeds: &[u64]) -> Vec<(u64, HostId, HostId, Step)> {
    let mut steps = Vec::new();
    for &seed in seeds {
        let out = run_file("capacity-step", seed);
        let (a, b) = (host(&out, "alice"), host(&out, "bob"));
        for (from, to) in [(a, b), (b, a)] {
            steps.push((seed, from, to, step(&out.sim, from, to, 20.0, 40.0)));
        }
    }
    steps
}

/// After the capacity comes back, the video rate is back above 70 % of what it was within
/// 10 s: the keyframe of the step up in size no longer sets off str0m's overuse detection
/// (it is at most three frames' worth; at libwebrtc's nine, str0m's estimate fell to 0.85
/// of what was acknowledged just after it had found the path again). Seeds 1 and 7 are the
/// two whose video came back to 17–36 % before that (`rate_sweep` prints every direction)
#[test]
fn video_comes_back_after_a_capacity_drop() {
    for (seed, from, to, s) in capacity_steps(&[1, 7]) {
        eprintln!(
            "seed {seed} {from:?}→{to:?}: video {:.0} kbit/s before, {:.0} at 5-10 s after",
            s.video_before, s.video_after
        );
        assert!(
            s.video_after > 0.7 * s.video_before,
            "seed {seed} {from:?}→{to:?}: {s:?}"
        );
    }
}

/// Two meshrtc flows and an AIMD (TCP-like) flow through one queue, with
/// `RateConfig::compete` on: the issue's fairness bound (no flow below half its share after
/// 20 s), and video still rendering (at least 5 frames a second over 30–40 s). The media
/// figures of the last 10 s are printed: the share costs smoothness (docs/rate/README.md).
///
/// str0m's delay-based estimator alone backs off whenever the AIMD flow fills the queue;
/// without `compete` the meshrtc flows end at 121–139 kbit/s of their 1000 (see
/// `compete.rs`). Seeds: `RATE_SEEDS`, 1–3 by default.
#[test]
fn competing_flows_share_fairly() {
    for seed in rate_seeds() {
        let out = run_file("rate-competing-flows", seed);
        let sim = &out.sim;
        let carol = host(&out, "carol");
        let share = 3000.0 / 3.0;
        let cross = sim
            .cross_stats(0)
            .mean_kbps(secs(20.0), secs(40.0))
            .unwrap_or(0.0);
        let mut flows = vec![cross];
        for name in ["alice", "bob"] {
            let from = host(&out, name);
            let s = sim.rate_samples(from, carol);
            flows.push(mean_over(s, secs(20.0), secs(40.0), |x| Some(x.delivered_kbps)).unwrap());
            let w = window(sim, from, carol, secs(30.0), secs(40.0));
            eprintln!("seed {seed} {name}→carol 30-40 s: {w:?}");
            assert!(w.video_frames >= 50, "seed {seed} {name}: {w:?}");
        }
        eprintln!("seed {seed}: cross, alice, bob: {flows:?} kbit/s");
        assert!(
            flows.iter().all(|f| *f > share / 2.0),
            "seed {seed}: {flows:?}"
        );
    }
}

/// Audio over an LTE-like capacity: the synthetic trace of `scenarios/rate-cellular.toml`
/// scaled to 180p, with and without adaptation
///
/// The issue's bound (audio p99 under 200 ms) is not met on this synthetic trace, whose
/// fades are deep (see the report of issue 17); asserted: audio is far less late than with
/// fixed bitrates, and video keeps rendering.
#[test]
#[ignore = "fails at 180p, seed 1 phone→desk: audio p99 576 ms adaptive against 675 ms fixed (bound: below 0.75 of it), audio late 56 % against 100 % (2026-12-07)"]
fn adaptation_keeps_audio_closer_to_time_over_lte_like_capacity() {
    let text = |adapt: bool| {
        let t = std::fs::read_to_string(scenarios_dir().join("rate-cellular.toml"))
            .unwrap()
            .replace("width = 640", "width = 320")
            .replace("height = 360", "height = 180")
            .replace("fps = 30", "fps = 15")
            .replace("bitrate_kbps = 1200", "bitrate_kbps = 500")
            .replace("duration_s = 60", "duration_s = 30")
            .replace("stop_s = 58", "stop_s = 28");
        t.replace(
            "rate_adaptation = true",
            &format!("rate_adaptation = {adapt}"),
        )
    };
    let seed = 1;
    let out = run_text(&text(true), seed);
    let fixed = run_text(&text(false), seed);
    let (p, d) = (host(&out, "phone"), host(&out, "desk"));
    for (from, to) in [(p, d), (d, p)] {
        let w = window(&out.sim, from, to, secs(5.0), secs(27.0));
        let f = window(&fixed.sim, from, to, secs(5.0), secs(27.0));
        eprintln!("seed {seed} {from:?}→{to:?}: adaptive {w:?}\n fixed {f:?}");
        assert!(w.audio_late <= f.audio_late, "{w:?} {f:?}");
        assert!(w.audio_p99_ms < 0.75 * f.audio_p99_ms, "{w:?} {f:?}");
        assert!(w.video_frames > 100, "seed {seed}: {w:?}");
    }
}

/// The synthetic LTE-like trace is LTE-like: its rate swings by several times within
/// seconds and it has fades
#[test]
fn the_cellular_trace_varies_like_lte() {
    use meshrtc_sim::trace::{CapacityTrace, MAHIMAHI_PACKET_BYTES};
    let t = CapacityTrace::cellular(7, Duration::from_secs(120), 2_000_000).unwrap();
    assert_eq!(t.period(), Duration::from_secs(120));
    let again = CapacityTrace::cellular(7, Duration::from_secs(120), 2_000_000).unwrap();
    assert_eq!(t, again);
    let bits = t.len() as f64 * f64::from(MAHIMAHI_PACKET_BYTES) * 8.0;
    let mean = bits / 120.0;
    assert!((1_200_000.0..2_800_000.0).contains(&mean), "{mean}");
    assert!(CapacityTrace::cellular(7, Duration::from_millis(10), 2_000_000).is_err());
}

/// The real Mahimahi LTE traces (GPL data outside the repository: set `MESHRTC_TRACES` to
/// their folder, or keep them in `../shared/traces` beside it); skipped without them
#[test]
#[ignore = "needs the Mahimahi traces; run by rate_sweep too"]
fn audio_stays_on_time_over_real_lte_traces() {
    for (up, down) in lte_traces() {
        let out = lte_run(&up, &down, 1);
        let (p, d) = (host(&out, "phone"), host(&out, "desk"));
        for (from, to) in [(p, d), (d, p)] {
            let w = window(&out.sim, from, to, secs(5.0), secs(57.0));
            eprintln!("{up}: {from:?}→{to:?}: {w:?}");
            assert!(w.audio_p99_ms < 200.0, "{up}: {w:?}");
            assert!(w.video_frames > 100, "{up}: {w:?}");
        }
    }
}

/// What audio alone gets over the real LTE traces: no video, so no rate control, no
/// queue of our own making; what is left is the trace's own gaps between delivery
/// opportunities. The floor the issue's bound (audio p99 under 200 ms with video) is
/// measured against; printed per direction and seed (`RATE_SEEDS`)
#[test]
#[ignore = "needs the Mahimahi traces; a measurement"]
fn lte_audio_alone() {
    for (up, down) in lte_traces() {
        for &seed in &rate_seeds() {
            let out = run_text(&without_video(&lte_text(&up, &down)), seed);
            let (p, d) = (host(&out, "phone"), host(&out, "desk"));
            for (from, to) in [(p, d), (d, p)] {
                let w = window(&out.sim, from, to, secs(5.0), secs(57.0));
                println!(
                    "{} audio alone seed {seed} {from:?}→{to:?}: capture to playout p50 {:.0} \
                     ms, p99 {:.0} ms, late {:.1} %",
                    Path::new(&up).file_stem().unwrap().to_string_lossy(),
                    w.audio_p50_ms,
                    w.audio_p99_ms,
                    w.audio_late * 100.0
                );
            }
        }
    }
}

/// `text` without its video stream
fn without_video(text: &str) -> String {
    let start = text
        .find("[[media]]\nkind = \"video\"")
        .expect("a video stream");
    let end = text[start..].find("\n\n").map_or(text.len(), |e| start + e);
    format!("{}{}", &text[..start], &text[end..])
}

fn traces_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("MESHRTC_TRACES") {
        return Some(d.into());
    }
    real_trace("Verizon-LTE-short.up").and_then(|p| p.parent().map(Path::to_path_buf))
}

fn lte_traces() -> Vec<(String, String)> {
    let Some(dir) = traces_dir() else {
        eprintln!("skipped: no Mahimahi traces (set MESHRTC_TRACES)");
        return Vec::new();
    };
    ["Verizon-LTE-short", "TMobile-LTE-short"]
        .iter()
        .map(|n| {
            let p = |ext: &str| dir.join(format!("{n}.{ext}")).display().to_string();
            (p("up"), p("down"))
        })
        .collect()
}

fn lte_run(up: &str, down: &str, seed: u64) -> Outcome {
    run_text(&pushback_override(lte_text(up, down)), seed)
}

/// `scenarios/rate-cellular.toml` over the Mahimahi traces `up` (phone → desk) and `down`
fn lte_text(up: &str, down: &str) -> String {
    std::fs::read_to_string(scenarios_dir().join("rate-cellular.toml"))
        .unwrap()
        .replace(
            "cellular = { mean_kbps = 1500, seed = 11 }",
            &format!("capacity_trace = {up:?}"),
        )
        .replace(
            "cellular = { mean_kbps = 3000, seed = 12 }",
            &format!("capacity_trace = {down:?}"),
        )
}

/// The fast peers' video between themselves with and without a slow fifth peer: kbit/s
/// sent per fast pair over (10 s, 30 s]
fn fast_pairs_video(out: &Outcome) -> Vec<f64> {
    let fast: Vec<HostId> = (0..4).map(|i| host(out, &format!("p{i}"))).collect();
    let mut v = Vec::new();
    for &a in &fast {
        for &b in &fast {
            if a != b {
                v.push(rates(&out.sim, a, b, 10.0, 30.0).1);
            }
        }
    }
    v
}

/// The full scenarios on more seeds, with every figure printed
/// A scenario of the sweep, with the senders' pushback as `RATE_PUSHBACK` says (to
/// compare; the LTE traces' runs follow it too)
fn sweep_file(name: &str, seed: u64) -> Outcome {
    if std::env::var_os("RATE_PUSHBACK").is_none() {
        return run_file(name, seed);
    }
    let path = scenarios_dir().join(format!("{name}.toml"));
    let text = pushback_override(std::fs::read_to_string(&path).unwrap());
    run_text(&text, seed)
}

/// `text` with `pushback = $RATE_PUSHBACK` among the participant settings, if that is set
fn pushback_override(text: String) -> String {
    match std::env::var("RATE_PUSHBACK") {
        Ok(pushback) => with_participant(&text, &format!("pushback = {pushback}")),
        Err(_) => text,
    }
}

/// Whether the sweep runs `case` ("cellular": `rate-cellular` and the LTE traces, "slow":
/// the slow peer): `RATE_CASES` (comma-separated) names them, all when unset; the capacity
/// step always runs
fn sweep_case(case: &str) -> bool {
    std::env::var("RATE_CASES").map_or(true, |v| v.split(',').any(|c| c.trim() == case))
}

/// `text` with `line` added to its participant settings (after `rate_adaptation = true`)
fn with_participant(text: &str, line: &str) -> String {
    text.replace(
        "rate_adaptation = true",
        &format!("rate_adaptation = true\n{line}"),
    )
}

#[test]
#[ignore = "a sweep: minutes in release"]
fn rate_sweep() {
    let seeds = rate_seeds();
    let mut problems = Vec::new();
    let mut steps = Vec::new();
    let mut cellular = Vec::new();
    for &seed in &seeds {
        let out = sweep_file("capacity-step", seed);
        let (a, b) = (host(&out, "alice"), host(&out, "bob"));
        for (from, to) in [(a, b), (b, a)] {
            let s = step(&out.sim, from, to, 20.0, 40.0);
            println!(
                "capacity-step seed {seed} {from:?}→{to:?}: sent {:.0} kbit/s at 2-4 s after the \
                 drop, {:.0} in the low phase; low phase video p95 {:.0} ms, audio late {:.1} %; \
                 longest video gap {:.0} ms; video {:.0} kbit/s before, {:.0} at 5-10 s after \
                 the recovery ({:.0} %)",
                s.sent_after_2s,
                s.sent_low,
                s.low.video_p95_ms,
                s.low.audio_late * 100.0,
                s.whole.video_gap_ms,
                s.video_before,
                s.video_after,
                s.video_after / s.video_before * 100.0
            );
            if s.low.audio_late > 0.05 {
                problems.push(format!("capacity-step {seed}: {s:?}"));
            }
            steps.push(s);
        }
        if sweep_case("cellular") {
            let out = sweep_file("rate-cellular", seed);
            let (p, d) = (host(&out, "phone"), host(&out, "desk"));
            for (from, to) in [(p, d), (d, p)] {
                let w = window(&out.sim, from, to, secs(5.0), secs(57.0));
                println!("rate-cellular seed {seed} {from:?}→{to:?}: {w:?}");
                cellular.push(w);
            }
            for (up, down) in lte_traces() {
                let out = lte_run(&up, &down, seed);
                for (from, to) in [(p, d), (d, p)] {
                    let w = window(&out.sim, from, to, secs(5.0), secs(57.0));
                    println!("{up} seed {seed} {from:?}→{to:?}: {w:?}");
                    cellular.push(w);
                }
            }
        }
        if sweep_case("slow") {
            let slow = fast_pairs_video(&sweep_file("rate-slow-peer", seed));
            let base = fast_pairs_video(&sweep_file("rate-slow-peer-baseline", seed));
            let worst = slow
                .iter()
                .zip(&base)
                .map(|(s, b)| s / b)
                .fold(f64::INFINITY, f64::min);
            println!(
                "rate-slow-peer seed {seed}: fast pairs' video {:.0} kbit/s mean vs {:.0} without \
                 the slow peer; worst pair at {:.0} %",
                slow.iter().sum::<f64>() / slow.len() as f64,
                base.iter().sum::<f64>() / base.len() as f64,
                worst * 100.0
            );
            if worst < 0.7 {
                problems.push(format!("rate-slow-peer {seed}: worst pair at {worst}"));
            }
        }
    }
    print_step_summary("capacity-step", &steps);
    if !cellular.is_empty() {
        let n = cellular.len();
        let mean = |f: &dyn Fn(&Window) -> f64| cellular.iter().map(f).sum::<f64>() / n as f64;
        println!(
            "cellular summary (rate-cellular and the LTE traces), {n} directions: audio p99 < \
             200 ms {}/{n}; means: audio p99 {:.0} ms, audio late {:.0} %, video frames {:.0}",
            cellular.iter().filter(|w| w.audio_p99_ms < 200.0).count(),
            mean(&|w| w.audio_p99_ms),
            mean(&|w| w.audio_late * 100.0),
            mean(&|w| w.video_frames as f64),
        );
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// First time after `from_s` at which the 1 s mean sent rate of `from → to` is below `kbps`,
/// in seconds after `from_s`
fn below_after(sim: &Sim, from: HostId, to: HostId, from_s: f64, kbps: f64) -> Option<f64> {
    (0..200)
        .map(|i| from_s + 1.0 + f64::from(i) * 0.1)
        .find(|t| rates(sim, from, to, t - 1.0, *t).0 < kbps)
        .map(|t| t - from_s)
}

/// The capacity step (4 → 0.5 → 4 Mbit/s) as a browser's peer sees it: receivers send no
/// REMB, so only the sender's own view of the path counts. With pushback (round-trip
/// probes, `core/src/pushback.rs`) every direction that sent over 700 kbit/s before the drop
/// is below the new capacity within 2.5 s and its low-phase video p95 stays under half a
/// second; without it the slowest such direction takes over 3 s (seeds 1 and 2: 1.8–2.3 s
/// against 1.0–3.5 s).
#[test]
fn pushback_gets_a_sender_below_a_capacity_drop_without_the_receivers_help() {
    let (drop, back) = (20.0, 40.0);
    let text = std::fs::read_to_string(scenarios_dir().join("capacity-step.toml")).unwrap();
    let mut with = Vec::new();
    let mut without = Vec::new();
    for seed in [1, 2] {
        for pushback in [true, false] {
            let t = with_participant(&text, &format!("remb = false\npushback = {pushback}"));
            let out = run_text(&t, seed);
            let (a, b) = (host(&out, "alice"), host(&out, "bob"));
            for (from, to) in [(a, b), (b, a)] {
                let s = step(&out.sim, from, to, drop, back);
                if s.video_before < 700.0 {
                    continue;
                }
                let below = below_after(&out.sim, from, to, drop, 500.0).unwrap_or(f64::INFINITY);
                eprintln!(
                    "seed {seed} pushback {pushback} {from:?}→{to:?}: below 500 kbit/s {below:.1} s \
                     after the drop; low phase video p95 {:.0} ms, audio late {:.1} %",
                    s.low.video_p95_ms,
                    s.low.audio_late * 100.0
                );
                let v = if pushback { &mut with } else { &mut without };
                v.push((below, s.low.video_p95_ms));
            }
        }
    }
    assert!(
        with.len() >= 2 && without.len() >= 2,
        "{with:?} {without:?}"
    );
    for (below, p95) in &with {
        assert!(*below <= 2.5 && *p95 < 500.0, "with pushback: {with:?}");
    }
    // The slowest direction is the one a user notices.
    let slowest = |v: &[(f64, f64)]| v.iter().map(|x| x.0).fold(0.0, f64::max);
    assert!(
        slowest(&without) >= slowest(&with) + 0.8,
        "pushback should be sooner: {with:?} against {without:?}"
    );
}

/// The capacity step as a browser's peer sees it (no REMB), every figure of the low phase
/// printed: `RATE_SEEDS=1,2,3 cargo test --release -p meshrtc-sim --test sim
/// low_phase_without_remb -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: a minute in release"]
fn low_phase_without_remb() {
    let (drop, back) = (20.0, 40.0);
    let seeds = rate_seeds();
    let text = std::fs::read_to_string(scenarios_dir().join("capacity-step.toml")).unwrap();
    let text = pushback_override(with_participant(&text, "remb = false"));
    let mut steps = Vec::new();
    for seed in seeds {
        let out = run_text(&text, seed);
        let (a, b) = (host(&out, "alice"), host(&out, "bob"));
        for (from, to) in [(a, b), (b, a)] {
            let s = step(&out.sim, from, to, drop, back);
            let below = below_after(&out.sim, from, to, drop, 500.0).unwrap_or(f64::INFINITY);
            let low_video = rates(&out.sim, from, to, drop + 5.0, back).1;
            let est = mean_over(
                out.sim.rate_samples(from, to),
                secs(drop + 5.0),
                secs(back),
                |x| x.estimate_kbps,
            )
            .unwrap_or(f64::NAN);
            println!(
                "no-remb seed {seed} {from:?}→{to:?}: below 500 {below:.1} s after the drop; low \
                 phase video {low_video:.0} kbit/s, sent {:.0}, estimate {est:.0}; low video p95 \
                 {:.0} ms, audio late {:.1} %; longest video gap {:.0} ms (low phase {:.0}); \
                 video {:.0} before, {:.0} at 5-10 s after the recovery",
                s.sent_low,
                s.low.video_p95_ms,
                s.low.audio_late * 100.0,
                s.whole.video_gap_ms,
                s.low.video_gap_ms,
                s.video_before,
                s.video_after,
            );
            steps.push(s);
        }
    }
    print_step_summary("no-remb capacity-step", &steps);
}
