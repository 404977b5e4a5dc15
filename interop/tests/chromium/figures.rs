//! Figures, run by hand (ignored in CI):
//!
//! ```text
//! cargo test -p meshrtc-interop --test chromium -- --ignored connect_time --nocapture
//! ```

use std::time::Duration;

use crate::harness::{num, run, World, PAGE_START};

const RUNS: usize = 10;

pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn summary(what: &str, v: &[f64]) {
    if v.is_empty() {
        eprintln!("FIGURE {what}: no samples");
        return;
    }
    eprintln!(
        "FIGURE {what}: p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
        percentile(v, 0.5),
        percentile(v, 0.9),
        percentile(v, 0.0),
        percentile(v, 1.0),
        v.len()
    );
}

/// Connect time (offer to usable data channel) between meshrtc and Chromium, 10 runs each
/// way: meshrtc offering to one Chromium (ten meshrtc peers one after another), and Chromium
/// offering to one meshrtc peer (ten Chromium pages one after another).
#[test]
#[ignore = "a figure, run by hand"]
fn connect_time_p50_over_10_runs() {
    run("connect_time_p50_over_10_runs", |w: &mut World| {
        let (mut mesh_side, mut page_side) = (Vec::new(), Vec::new());
        w.open_page("page", "id=chromium")?;
        w.wait_announced("page")?;
        for i in 0..RUNS {
            let id = format!("mesh{i}");
            w.spawn_peer(&id, Duration::from_secs(2), &[])?;
            let stats = w.finish_peer(&id, Duration::from_secs(20))?;
            let page = w.wait_page_saw_leave("page", &id)?;
            mesh_side.extend(num(&stats, "remote.chromium.connect_ms"));
            page_side.extend(num(&page["peers"][&id], "connect_ms"));
        }
        summary("meshrtc offers, connect time seen by meshrtc", &mesh_side);
        summary("meshrtc offers, connect time seen by Chromium", &page_side);
        w.close_page("page");

        let (mut mesh_side, mut page_side) = (Vec::new(), Vec::new());
        w.spawn_peer("host", Duration::from_secs(600), &[])?;
        w.peer("host").wait_joined(Duration::from_secs(20))?;
        for i in 0..RUNS {
            let tag = format!("page{i}");
            w.open_page(&tag, &format!("id=chromium{i}"))?;
            let page = w.wait_page_connected(&tag, "host", PAGE_START)?;
            page_side.extend(num(&page["peers"]["host"], "connect_ms"));
            w.close_page(&tag);
        }
        w.peer("host").terminate();
        let stats = w.finish_peer("host", Duration::from_secs(20))?;
        for i in 0..RUNS {
            mesh_side.extend(num(&stats, &format!("remote.chromium{i}.connect_ms")));
        }
        summary("Chromium offers, connect time seen by meshrtc", &mesh_side);
        summary("Chromium offers, connect time seen by Chromium", &page_side);
        Ok(())
    });
}

/// Audio playout side by side on whatever path the loopback has: meshrtc sends Chromium a
/// tone and Chromium sends meshrtc its fake microphone, both Opus 20 ms, for 60 s each run;
/// prints Chromium's NetEq figures (W3C `jitterBufferDelay / jitterBufferEmittedCount`,
/// `concealedSamples / totalSamplesReceived`) beside meshrtc's jitter buffer's (the stats
/// file's `jitter_buffer_ms`, and `concealed_ms` over the audio played) and both RTTs.
///
/// Impair the path first, in a network namespace of its own so that nothing else on the
/// machine is affected, with `scripts/jitter-queue.py` (an NFQUEUE relay that delays each UDP
/// packet independently, so packets reorder, with the simulator's jitter shapes; see its
/// header):
///
/// ```text
/// unshare -n sh -c 'ip link set lo up &&
///   iptables -A OUTPUT -o lo -p udp -j NFQUEUE --queue-num 7 &&
///   (python3 scripts/jitter-queue.py --queue 7 --latency 20 exponential:20 &) &&
///   sleep 1 && JITTER_LABEL="20 ms + exponential 20 ms" cargo test --release \
///     -p meshrtc-interop --test chromium -- --ignored playout_side_by_side --nocapture'
/// ```
#[test]
#[ignore = "a figure, run by hand on an impaired loopback"]
fn playout_side_by_side_on_this_path() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let label = std::env::var("JITTER_LABEL").unwrap_or_else(|_| "unimpaired loopback".into());
    run("playout_side_by_side_on_this_path", |w: &mut World| {
        let hold = Duration::from_secs(60);
        let mut rows = Vec::new();
        for i in 0..runs {
            let id = format!("mesh{i}");
            let tag = format!("page{i}");
            w.spawn_peer(&id, hold + Duration::from_secs(120), &["--audio", "tone"])?;
            w.peer(&id).wait_joined(Duration::from_secs(20))?;
            w.open_page(&tag, &format!("id=chromium{i}&audio=1"))?;
            w.wait_page_connected(&tag, &id, PAGE_START)?;
            std::thread::sleep(hold);
            w.peer(&id).terminate();
            let stats = w.finish_peer(&id, Duration::from_secs(20))?;
            let page = w.wait_page_saw_leave(&tag, &id)?;
            w.close_page(&tag);
            let s = &page["peers"][&id]["stats"];
            let neteq_delay = num(s, "inbound_audio.jitter_buffer_delay").unwrap_or(0.0) * 1000.0
                / num(s, "inbound_audio.jitter_buffer_emitted_count")
                    .unwrap_or(0.0)
                    .max(1.0);
            let neteq_concealed = num(s, "inbound_audio.concealed_samples").unwrap_or(0.0)
                / num(s, "inbound_audio.total_samples_received")
                    .unwrap_or(0.0)
                    .max(1.0);
            let m = &stats["remote"][format!("chromium{i}")];
            let ours_delay = num(m, "audio.jitter_buffer_ms").unwrap_or(f64::NAN);
            let concealed_ms = num(m, "audio.concealed_ms").unwrap_or(f64::NAN);
            let decoded = num(m, "audio.frames_decoded").unwrap_or(0.0);
            let ours_concealed = concealed_ms / (decoded * 20.0 + concealed_ms).max(1.0);
            eprintln!(
                "FIGURE {label}, run {i}: NetEq {neteq_delay:.1} ms, {:.2}% concealed; \
                 meshrtc {ours_delay:.1} ms, {:.2}% concealed; RTT meshrtc {:?} ms, \
                 Chromium {:?} ms",
                neteq_concealed * 100.0,
                ours_concealed * 100.0,
                num(m, "rtt_ms"),
                num(&page["peers"][&id]["stats"], "selected_pair.rtt_ms"),
            );
            eprintln!(
                "DETAIL meshrtc audio {} page inbound_audio {}",
                m["audio"], s["inbound_audio"]
            );
            rows.push((neteq_delay, neteq_concealed, ours_delay, ours_concealed));
        }
        let range = |f: fn(&(f64, f64, f64, f64)) -> f64| {
            let v: Vec<f64> = rows.iter().map(f).collect();
            (percentile(&v, 0.0), percentile(&v, 1.0))
        };
        let (a, b) = range(|r| r.0);
        let (c, d) = range(|r| r.1 * 100.0);
        let (e, f) = range(|r| r.2);
        let (g, h) = range(|r| r.3 * 100.0);
        eprintln!(
            "FIGURE {label}: NetEq {a:.1}-{b:.1} ms, {c:.2}-{d:.2}% concealed; meshrtc \
             {e:.1}-{f:.1} ms, {g:.2}-{h:.2}% concealed ({runs} runs of 60 s)"
        );
        Ok(())
    });
}
