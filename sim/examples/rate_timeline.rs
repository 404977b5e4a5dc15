//! Where the delay of a rate scenario comes from, over time: per direction and interval,
//! what the sender estimates (and the parts of it: str0m's, the receiver's request, our pushback cap, the desired bitrate str0m probes up to, the rate held against a loss-based flow), targets and sends (kbit/s), the wait of the last packet in the
//! bottleneck queue, the audio jitter buffer's target, the lip-sync delay added to audio, and
//! the capture-to-playout delays (count, p50, max) of audio and video captured in the interval
//!
//! `cargo run --release -p meshrtc-sim --example rate_timeline -- scenarios/capacity-step.toml [seed] [step_ms]`

use std::time::Duration;

use meshrtc_sim::{HostId, MediaStreamId, Scenario};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: rate_timeline FILE [SEED] [STEP_MS]");
    let seed = args.next().map(|s| s.parse().expect("a number"));
    let step = Duration::from_millis(args.next().map_or(1000, |s| s.parse().expect("ms")));
    let scenario = Scenario::from_path(std::path::Path::new(&path)).expect("a scenario");
    let mut p = scenario.prepare(seed).expect("it builds");
    let n = p.names.len();
    let mut rows = Vec::new();
    let mut t = Duration::ZERO;
    while t < p.duration {
        t += step;
        p.sim.run_until(t);
        for a in 0..n {
            for b in 0..n {
                if a == b {
                    continue;
                }
                let (ha, hb) = (HostId(a), HostId(b));
                let wait = p.sim.link_queue_wait(ha, hb).as_secs_f64() * 1000.0;
                let st = p
                    .sim
                    .peer_id(ha)
                    .cloned()
                    .and_then(|id| p.sim.peer_stats(hb, &id));
                let jb = st
                    .as_ref()
                    .and_then(|s| s.audio.as_ref())
                    .map_or((0.0, 0), |a| {
                        (
                            a.jitter_buffer.jitter_buffer_delay,
                            a.jitter_buffer.jitter_buffer_emitted_count,
                        )
                    });
                let (target, sync, av) = st.map_or((f64::NAN, f64::NAN, None), |s| {
                    (
                        s.audio
                            .as_ref()
                            .map_or(f64::NAN, |a| a.jitter_buffer.target_delay * 1000.0),
                        s.audio.as_ref().map_or(f64::NAN, |a| a.sync_delay_ms),
                        s.video.as_ref().and_then(|v| v.av_offset_ms),
                    )
                });
                // What the sender (a) says about its path to b.
                let rate = p
                    .sim
                    .peer_id(hb)
                    .cloned()
                    .and_then(|id| p.sim.peer_stats(ha, &id))
                    .and_then(|s| s.bitrate)
                    .unwrap_or_default();
                rows.push((t, a, b, wait, target, sync, av, jb, rate));
            }
        }
    }
    let stream = |from: usize, kind: &str| {
        (0..p.sim.media_stream_count())
            .map(MediaStreamId)
            .find(|&i| {
                let c = p.sim.media_stream_config(i);
                c.from == HostId(from) && c.source.kind() == kind
            })
    };
    let delays = |from: usize, to: usize, kind: &str, a: Duration, b: Duration| {
        let mut d: Vec<f64> = stream(from, kind)
            .and_then(|s| p.sim.media_stats(s, HostId(to)))
            .map(|st| {
                st.samples
                    .iter()
                    .filter(|x| x.captured_at >= a && x.captured_at < b)
                    .map(|x| x.delay.as_secs_f64() * 1000.0)
                    .collect()
            })
            .unwrap_or_default();
        d.sort_by(f64::total_cmp);
        let q = |q: f64| {
            if d.is_empty() {
                f64::NAN
            } else {
                d[((d.len() - 1) as f64 * q).round() as usize]
            }
        };
        (d.len(), q(0.5), q(1.0))
    };
    println!(
        "{:>7} {:>11} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>18} {:>18}",
        "t_s",
        "dir",
        "est",
        "twcc",
        "remb",
        "push",
        "want",
        "cmp",
        "tgt",
        "sent",
        "queue",
        "jb_held",
        "jb_tgt",
        "sync",
        "av_off",
        "audio n/p50/max",
        "video n/p50/max"
    );
    let mut last = std::collections::BTreeMap::new();
    for (t, a, b, backlog_ms, target, sync, av, (jd, jn), rate) in rows {
        let (pd, pn) = last.insert((a, b), (jd, jn)).unwrap_or((0.0, 0));
        let held = if jn > pn {
            (jd - pd) / (jn - pn) as f64 * 1000.0
        } else {
            f64::NAN
        };
        let (an, ap, am) = delays(a, b, "audio", t - step, t);
        let (vn, vp, vm) = delays(a, b, "video", t - step, t);
        println!(
            "{:>7.2} {:>11} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>7.0}ms {:>6.0}ms {:>6.0}ms {:>6.0}ms {:>8} {:>4}/{:>5.0}/{:>5.0}ms {:>4}/{:>5.0}/{:>5.0}ms",
            t.as_secs_f64(),
            format!("{}→{}", p.names[a], p.names[b]),
            rate.available_outgoing_kbps.unwrap_or(f64::NAN),
            rate.sender_estimate_kbps.unwrap_or(f64::NAN),
            rate.receiver_limit_kbps.unwrap_or(f64::NAN),
            rate.pushback_cap_kbps.unwrap_or(f64::NAN),
            rate.desired_kbps.unwrap_or(f64::NAN),
            rate.competing_kbps.unwrap_or(f64::NAN),
            rate.video_target_kbps.unwrap_or(f64::NAN),
            rate.video_sent_kbps.unwrap_or(f64::NAN) + rate.audio_sent_kbps.unwrap_or(f64::NAN),
            backlog_ms,
            held,
            target,
            sync,
            av.map_or("-".into(), |v| format!("{v:.0}ms")),
            an, ap, am, vn, vp, vm
        );
    }
}
