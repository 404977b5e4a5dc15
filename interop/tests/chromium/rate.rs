//! Issue 17's comparison with libwebrtc: the same capacity step for meshrtc and Chromium
//!
//! A figure, run by hand as root in a network namespace of its own (it reshapes `lo`):
//!
//! ```text
//! unshare -n bash -c 'ip link set lo up && cargo test --release -p meshrtc-interop \
//!   --test chromium -- --ignored capacity_step_side_by_side --nocapture'
//! ```
//!
//! UDP on `lo` goes through a `tc` HTB class with a 60 kB FIFO (the simulator's
//! capacity-step queue; no added delay) at 4 Mbit/s, then 500 kbit/s for [`LOW`], then
//! 4 Mbit/s again; TCP (signaling, the page's reports) is not shaped. Every datagram crosses `lo`
//! once, so both directions share the one queue: each case has one video sender, 720p30 VP8,
//! and the other side sends audio and nearly nothing else (Chromium's camera track disabled:
//! black frames). The page sends a data-channel probe four times a second that meshrtc
//! echoes, so the round trip through the queue is measured the same way in both cases.
//!
//! - **meshrtc sends** (`--rate-adaptation`): its sending rate from its Prometheus counters
//!   (`--metrics`), every 0.5 s.
//! - **Chromium sends**: its sending rate and estimate (`availableOutgoingBitrate`) from
//!   `getStats`, every 0.5 s.
//!
//! Reported per case: the sending rate before the step, how long after the drop the rate
//! (over 1 s) is first below the capacity, the rate and the probe round trip (p50, p95) from
//! 5 s after the drop to the end of the low phase, and the rate 10 s after the recovery
//! against before the drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::figures::percentile;
use crate::harness::{run, World, LONG_RUN, PAGE_START};

/// Capacity before and after the low phase, kbit/s
const HIGH_KBPS: u32 = 4000;
/// Capacity of the low phase, kbit/s
const LOW_KBPS: u32 = 500;
/// How long the path runs at each stage
const BEFORE: Duration = Duration::from_secs(20);
const LOW: Duration = Duration::from_secs(20);
const AFTER: Duration = Duration::from_secs(20);

/// Puts UDP on `lo` through an HTB class at `kbps` with a 60 kB FIFO; everything else
/// unshaped (this VM's kernel has no netem, so no added delay)
fn shape(kbps: u32) -> Result<(), String> {
    let sh = |args: &str| -> Result<(), String> {
        let out = Command::new("tc")
            .args(args.split_whitespace())
            .output()
            .map_err(|e| format!("tc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tc {args}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let class = format!(
        "class {{}} dev lo parent 1: classid 1:20 htb rate {kbps}kbit ceil {kbps}kbit burst 3k"
    );
    if sh(&class.replace("{}", "change")).is_ok() {
        return Ok(());
    }
    let _ = sh("qdisc del dev lo root");
    sh("qdisc add dev lo root handle 1: htb default 10")?;
    sh("class add dev lo parent 1: classid 1:10 htb rate 10gbit")?;
    sh(&class.replace("{}", "add"))?;
    sh("qdisc add dev lo parent 1:20 handle 20: bfifo limit 60000")?;
    sh("filter add dev lo parent 1: protocol ip prio 1 u32 match ip protocol 17 0xff flowid 1:20")
}

/// A free TCP port on 127.0.0.1
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("bound").port()
}

/// meshrtc's Prometheus text
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of metric `name` whose labels include every one of `labels`
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// (seconds since the start, value) samples
type Series = Vec<(f64, f64)>;

/// The rate (bit/s) of a byte counter, over `span` seconds ending at each sample
fn rate_of(bytes: &Series, span: f64) -> Series {
    let mut out = Vec::new();
    for (i, &(t, b)) in bytes.iter().enumerate() {
        if let Some(&(t0, b0)) = bytes[..i].iter().rev().find(|(t0, _)| t - t0 >= span) {
            out.push((t, (b - b0) * 8.0 / (t - t0)));
        }
    }
    out
}

/// The values of `s` sampled in `from..to`
fn values_in(s: &Series, from: f64, to: f64) -> Vec<f64> {
    s.iter()
        .filter(|(t, _)| (from..to).contains(t))
        .map(|p| p.1)
        .collect()
}

fn mean_in(s: &Series, from: f64, to: f64) -> f64 {
    let v = values_in(s, from, to);
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn percentile_in(s: &Series, from: f64, to: f64, q: f64) -> f64 {
    let v = values_in(s, from, to);
    if v.is_empty() {
        return f64::NAN;
    }
    percentile(&v, q)
}

/// What one case measured, on a common clock (seconds from the start of the high phase)
struct Case {
    who: &'static str,
    /// Video bytes sent so far
    sent_bytes: Series,
    /// The sender's estimate, bit/s (Chromium only)
    estimate: Series,
    /// Data-channel probe round trips, ms
    rtt: Series,
}

impl Case {
    fn report(&self) {
        let drop = BEFORE.as_secs_f64();
        let up = drop + LOW.as_secs_f64();
        let end = up + AFTER.as_secs_f64();
        let rate = rate_of(&self.sent_bytes, 1.0);
        let before = mean_in(&rate, drop - 10.0, drop);
        let adapt = rate
            .iter()
            .find(|(t, r)| *t > drop + 1.0 && *r < f64::from(LOW_KBPS) * 1000.0)
            .map(|(t, _)| t - drop);
        let low = mean_in(&rate, drop + 5.0, up);
        let after = mean_in(&rate, up + 9.0, (up + 11.0).min(end));
        let est_low = mean_in(&self.estimate, drop + 5.0, up);
        eprintln!(
            "FIGURE capacity step, {} sends: before the drop {:.0} kbit/s; below capacity {} \
             after the drop; low phase (from 5 s) {:.0} kbit/s{}, probe RTT p50 {:.0} ms, p95 \
             {:.0} ms (before the drop p50 {:.0} ms); 10 s after the recovery {:.0} kbit/s \
             ({:.0}% of before)",
            self.who,
            before / 1e3,
            adapt.map_or("never".to_string(), |a| format!("{a:.1} s")),
            low / 1e3,
            if self.estimate.is_empty() {
                String::new()
            } else {
                format!(" (estimate {:.0} kbit/s)", est_low / 1e3)
            },
            percentile_in(&self.rtt, drop + 5.0, up, 0.5),
            percentile_in(&self.rtt, drop + 5.0, up, 0.95),
            percentile_in(&self.rtt, drop - 10.0, drop, 0.5),
            after / 1e3,
            after / before.max(1.0) * 100.0,
        );
        for (t, r) in &rate {
            if (t * 2.0).round() as i64 % 2 == 0 {
                let rtt = self
                    .rtt
                    .iter()
                    .filter(|(s, _)| (t - 1.0..*t).contains(s))
                    .map(|p| p.1)
                    .fold(f64::NAN, f64::max);
                let est = self
                    .estimate
                    .iter()
                    .rfind(|(s, _)| s <= t)
                    .map_or(f64::NAN, |p| p.1 / 1e3);
                eprintln!(
                    "TIMELINE {} t={t:5.1} s sent {:6.0} kbit/s estimate {est:6.0} kbit/s rtt max {rtt:5.0} ms",
                    self.who,
                    r / 1e3
                );
            }
        }
    }
}

/// From the page's report, on the test's clock: video bytes sent, its estimate, probe round trips
fn page_series(page: &Value, peer: &str, page_ms_at_start: f64) -> (Series, Series, Series) {
    let p = &page["peers"][peer];
    let t = |ms: f64| (ms - page_ms_at_start) / 1000.0;
    let mut sent = Vec::new();
    let mut estimate = Vec::new();
    for h in p["history"].as_array().into_iter().flatten() {
        let ms = h[0].as_f64().unwrap_or(0.0);
        sent.push((t(ms), h[6].as_f64().unwrap_or(0.0)));
        if let Some(e) = h[7].as_f64() {
            estimate.push((t(ms), e));
        }
    }
    let rtt = p["probe_rtts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((t(r[0].as_f64()?), r[1].as_f64()?)))
        .collect();
    (sent, estimate, rtt)
}

/// The page's clock (ms) at the moment of this call, within a report interval's latency
fn page_now(w: &World, tag: &str) -> Result<f64, String> {
    let seq = w.wait_page(tag, PAGE_START, "a report", |_| true)?["seq"]
        .as_u64()
        .unwrap_or(0);
    let r = w.wait_page(tag, Duration::from_secs(5), "a new report", |r| {
        r["seq"].as_u64().unwrap_or(0) > seq
    })?;
    Ok(r["now_ms"].as_f64().unwrap_or(0.0))
}

/// Runs one case: meshrtc `args`, the page `query`; returns what it measured
fn case(
    w: &mut World,
    who: &'static str,
    tag: &str,
    args: &[&str],
    query: &str,
) -> Result<Case, String> {
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut extra: Vec<&str> = args.to_vec();
    extra.extend(["--metrics", &metrics]);
    let id = format!("mesh-{tag}");
    shape(HIGH_KBPS)?;
    w.spawn_peer(&id, LONG_RUN, &extra)?;
    w.peer(&id).wait_joined(Duration::from_secs(20))?;
    w.open_page(tag, &format!("id=chromium-{tag}&{query}"))?;
    w.wait_page_connected(tag, &id, PAGE_START)?;
    // Let both settle (bandwidth estimates ramp up) before the clock starts.
    thread::sleep(Duration::from_secs(5));
    let page_ms_at_start = page_now(w, tag)?;
    let start = Instant::now();
    let mut mesh_bytes = Vec::new();
    let mut mesh_estimate = Vec::new();
    let stages = [
        (BEFORE, Some(LOW_KBPS)),
        (LOW, Some(HIGH_KBPS)),
        (AFTER, None),
    ];
    for (len, next) in stages {
        let until = Instant::now() + len;
        while Instant::now() < until {
            if let Some(text) = scrape(port) {
                let t = start.elapsed().as_secs_f64();
                let remote = format!("remote=\"chromium-{tag}\"");
                let video_out = [remote.as_str(), "kind=\"video\"", "direction=\"out\""];
                if let Some(b) = metric(&text, "meshrtc_peer_media_bytes_total", &video_out) {
                    mesh_bytes.push((t, b));
                }
                let name = "meshrtc_peer_available_outgoing_bits_per_second";
                if let Some(e) = metric(&text, name, &[remote.as_str()]) {
                    mesh_estimate.push((t, e));
                }
            }
            thread::sleep(Duration::from_millis(500));
        }
        if let Some(kbps) = next {
            shape(kbps)?;
        }
    }
    let page = w.wait_page(tag, Duration::from_secs(5), "a report", |_| true)?;
    w.peer(&id).terminate();
    let _ = w.finish_peer(&id, Duration::from_secs(20));
    w.close_page(tag);
    let (page_sent, estimate, rtt) = page_series(&page, &id, page_ms_at_start);
    Ok(if who == "meshrtc" {
        Case {
            who,
            sent_bytes: mesh_bytes,
            estimate: mesh_estimate,
            rtt,
        }
    } else {
        Case {
            who,
            sent_bytes: page_sent,
            estimate,
            rtt,
        }
    })
}

/// Removes the shaping from `lo` when dropped (the test failing included)
struct Unshape;

impl Drop for Unshape {
    fn drop(&mut self) {
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", "lo", "root"])
            .status();
    }
}

/// Whether this is a network namespace holding nothing but `lo` (where reshaping `lo`
/// disturbs nobody)
fn alone_with_lo() -> bool {
    // /proc/net is the calling process's namespace (/sys/class/net may still show the host's).
    std::fs::read_to_string("/proc/net/dev").is_ok_and(|dev| {
        dev.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .all(|name| name.trim() == "lo")
    })
}

#[test]
#[ignore = "a figure, run by hand as root in a network namespace of its own (it reshapes lo)"]
fn capacity_step_side_by_side() {
    if !alone_with_lo() {
        eprintln!(
            "SKIPPED capacity_step_side_by_side: it reshapes lo; run it in a network namespace \
             of its own (unshare -n), see interop/tests/chromium/rate.rs"
        );
        return;
    }
    let _unshape = Unshape;
    run("capacity_step_side_by_side", |w: &mut World| {
        let video = "audio=1&video=1&codec=vp8&width=1280&height=720&fps=30&probe_hz=4";
        let mesh = case(
            w,
            "meshrtc",
            "a",
            &[
                "--audio",
                "tone",
                "--video",
                "testsrc",
                "--video-codec",
                "vp8",
                "--width",
                "1280",
                "--height",
                "720",
                "--fps",
                "30",
                "--rate-adaptation",
            ],
            &format!("{video}&mute_video=1"),
        )?;
        let chromium = case(w, "Chromium", "b", &["--audio", "tone"], video)?;
        mesh.report();
        chromium.report();
        Ok(())
    });
}
