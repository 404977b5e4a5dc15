//! `/metrics` of the signaling server: Prometheus text, counters that follow a room

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meshrtc_tokio::SignalServerConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// Samples by `name{labels}` as written
type Samples = BTreeMap<String, f64>;

/// Parses Prometheus text format 0.0.4 strictly: every line a `# HELP`, a `# TYPE` or a
/// sample of a declared metric with well-formed labels and a number; panics otherwise
fn parse_prometheus(text: &str) -> Samples {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    assert!(text.ends_with('\n'), "text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, what) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad comment line {line:?}"));
            assert!(is_name(name), "{line}");
            match kind {
                Some("HELP") => assert!(what.is_some(), "{line}"),
                Some("TYPE") => {
                    let t = what.unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "{line}"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                for pair in labels.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(is_name(k), "{line}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
                name
            }
        };
        assert!(is_name(name), "{line}");
        let t = types
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no # TYPE"));
        if t == "counter" {
            assert!(value >= 0.0, "{line}");
        }
        samples.insert(series.to_string(), value);
    }
    assert!(!samples.is_empty());
    samples
}

/// Checks `text` with the Prometheus project's own Python parser (Debian's
/// `python3-prometheus-client`); skipped with a message when it is missing, unless `CI` is set
fn check_with_python(text: &str) {
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\nn = sum(len(m.samples) for m in f(sys.stdin.read()))\nprint(n)\n";
    let python = "/usr/bin/python3";
    let probe = std::process::Command::new(python)
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: python3-prometheus-client is required (scripts/setup.sh installs it)"
        );
        eprintln!("skipping the python3-prometheus-client check: not installed");
        return;
    }
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejects the text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(n > 10, "{n} samples");
}

async fn scrape(addr: SocketAddr) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

async fn samples(addr: SocketAddr) -> Samples {
    let (head, body) = scrape(addr).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse_prometheus(&body)
}

fn get(s: &Samples, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("no {series} in {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_follow_a_room_filling_and_emptying() {
    bounded(async {
        let server = server_with(SignalServerConfig {
            metrics_addr: Some(loopback()),
            ..SignalServerConfig::default()
        })
        .await;
        let at = server.metrics_addr().expect("metrics listener");
        let empty = samples(at).await;
        assert_eq!(get(&empty, "meshrtc_signal_peers"), 0.0);
        assert_eq!(get(&empty, "meshrtc_signal_rooms"), 0.0);
        let (_, text) = scrape(at).await;
        check_with_python(&text);

        let mut peers = Vec::new();
        for id in ["a", "b", "c"] {
            let mut c = Raw::connect(&server).await;
            c.announce(1, "room", Some(id)).await;
            peers.push(c);
        }
        // Each hears of those after it.
        for (i, c) in peers.iter_mut().enumerate() {
            for _ in i + 1..3 {
                assert_eq!(c.expect().await["method"], "peer.joined");
            }
        }
        peers[0].request(2, "peer.dance", json!({})).await;
        peers[0].expect_error(-32601, json!(2)).await;
        let full = samples(at).await;
        assert_eq!(get(&full, "meshrtc_signal_peers"), 3.0);
        assert_eq!(get(&full, "meshrtc_signal_rooms"), 1.0);
        assert_eq!(get(&full, "meshrtc_signal_connections"), 3.0);
        assert_eq!(
            get(&full, r#"meshrtc_signal_errors_total{code="-32601"}"#),
            1.0
        );
        let frames_in = r#"meshrtc_signal_frames_total{direction="in"}"#;
        let frames_out = r#"meshrtc_signal_frames_total{direction="out"}"#;
        assert_eq!(get(&full, frames_in), 4.0);
        // 3 results, 3 peer.joined, 1 error.
        assert_eq!(get(&full, frames_out), 7.0);

        for (i, c) in peers.iter_mut().enumerate() {
            c.request(10 + i as i64, "peer.disconnect", json!({})).await;
        }
        counts_until(&server, Duration::from_secs(5), |c| c.tasks == 0).await;
        let after = samples(at).await;
        assert_eq!(get(&after, "meshrtc_signal_peers"), 0.0);
        assert_eq!(get(&after, "meshrtc_signal_rooms"), 0.0);
        assert_eq!(get(&after, "meshrtc_signal_connections"), 0.0);
        assert_eq!(get(&after, frames_in), 7.0);
        assert!(get(&after, frames_out) > get(&full, frames_out));
        assert_eq!(get(&after, "meshrtc_signal_accepted_total"), 3.0);
        let (_, text) = scrape(at).await;
        check_with_python(&text);
        // Anything but /metrics is 404 on that port.
        let mut tcp = TcpStream::connect(at).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    })
    .await;
}

/// `meshrtc peer --metrics`: the per-remote figures appear as a peer joins and media flows
/// (audio and video both ways: the media byte, packet and frame counters move, and their
/// rate agrees with the received-bitrate gauge), parse as Prometheus text (ours and the
/// Python client's), and follow the peer leaving
#[test]
fn peer_metrics_follow_a_call() {
    use std::io::BufRead;
    use std::process::Stdio;

    use crate::cli::{meshrtc, start_signal, wait, Reaper};

    let (server, url) = start_signal();
    let spawn = |id: &str, duration: &str, extra: &[&str]| {
        meshrtc()
            .args(["peer", "--signal", &url, "--room", "metrics", "--id", id])
            .args([
                "--duration",
                duration,
                "--bind",
                "127.0.0.1",
                "--audio",
                "tone",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Small video, so that two encoders do not load the machine.
    let video = [
        "--video", "testsrc", "--width", "160", "--height", "96", "--fps", "15",
    ];
    // Alice follows the path's estimate (her rate gauges are checked below); Bob does not.
    let alice_args: Vec<&str> = ["--metrics", "127.0.0.1:0", "--rate-adaptation"]
        .into_iter()
        .chain(video)
        .collect();
    let mut alice = spawn("alice", "30", &alice_args);
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = alice.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let alice = Reaper::new(alice);
    let addr: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("alice prints where her metrics are");
        if let Some(rest) = line.strip_prefix("metrics on http://") {
            break rest.trim_end_matches("/metrics").parse().unwrap();
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scrape_now = || rt.block_on(samples(addr));
    let alone = scrape_now();
    assert_eq!(get(&alone, "meshrtc_peer_remotes_connected"), 0.0);
    assert_eq!(get(&alone, "meshrtc_peer_signaling_connected"), 1.0);

    let bob = Reaper::new(spawn("bob", "7", &video));
    let bob_connected = r#"meshrtc_peer_connected{remote="bob"}"#;
    let frames = r#"meshrtc_peer_audio_frames_decoded_total{remote="bob"}"#;
    let media = |what: &str, kind: &str, dir: &str| {
        format!(
            r#"meshrtc_peer_media_{what}_total{{remote="bob",kind="{kind}",direction="{dir}"}}"#
        )
    };
    let flows = ["audio", "video"]
        .into_iter()
        .flat_map(|k| [(k, "in"), (k, "out")]);
    let mut during = alone;
    for _ in 0..100 {
        during = scrape_now();
        if during.get(bob_connected) == Some(&1.0)
            && during.get(frames).is_some_and(|f| *f >= 50.0)
            && during.contains_key(r#"meshrtc_peer_rtt_seconds{remote="bob"}"#)
            // Packets sent are reported once a second.
            && flows
                .clone()
                .all(|(k, d)| during.get(&media("packets", k, d)).is_some_and(|p| *p > 0.0))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The media counters move while audio and video flow both ways.
    let (t0, first) = (std::time::Instant::now(), during.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let later = scrape_now();
    let secs = t0.elapsed().as_secs_f64();
    for (kind, dir) in flows {
        for what in ["bytes", "packets", "frames"] {
            let key = media(what, kind, dir);
            assert!(
                get(&later, &key) > get(&first, &key),
                "{key} did not move: {first:?} {later:?}"
            );
        }
        // Each frame is at least one packet; payload bytes are at most a packet each.
        let (bytes, packets) = (
            get(&later, &media("bytes", kind, dir)),
            get(&later, &media("packets", kind, dir)),
        );
        assert!(
            packets >= 1.0 && bytes >= packets,
            "{kind} {dir}: {bytes} bytes in {packets} packets"
        );
    }
    // Audio is a steady Opus stream: the bitrate from the counter's rate and the gauge of
    // the last second agree (within a factor of 2) and are what Opus sends (6-256 kb/s).
    let key = media("bytes", "audio", "in");
    let rate = (get(&later, &key) - get(&first, &key)) * 8.0 / secs;
    let gauge = get(
        &later,
        r#"meshrtc_peer_media_received_bits_per_second{remote="bob",kind="audio"}"#,
    );
    assert!((6_000.0..256_000.0).contains(&rate), "audio in: {rate} b/s");
    assert!(
        gauge > rate / 2.0 && gauge < rate * 2.0,
        "gauge {gauge} b/s, rate {rate} b/s"
    );
    let video_in = get(
        &later,
        r#"meshrtc_peer_media_received_bits_per_second{remote="bob",kind="video"}"#,
    );
    assert!(video_in > 0.0, "video in: {video_in} b/s");
    assert_eq!(
        get(&during, "meshrtc_peer_remotes_connected"),
        1.0,
        "{during:?}"
    );
    assert!(get(&during, frames) >= 50.0, "{during:?}");
    let rtt = get(&during, r#"meshrtc_peer_rtt_seconds{remote="bob"}"#);
    assert!(rtt > 0.0 && rtt < 1.0, "{rtt}");
    // With rate adaptation: the path's estimate, and a video target within it.
    let estimate = get(
        &later,
        r#"meshrtc_peer_available_outgoing_bits_per_second{remote="bob"}"#,
    );
    let target = get(
        &later,
        r#"meshrtc_peer_video_target_bits_per_second{remote="bob"}"#,
    );
    assert!(
        estimate > 0.0 && target > 0.0 && target <= estimate,
        "estimate {estimate} b/s, video target {target} b/s"
    );
    let jb = get(
        &during,
        r#"meshrtc_peer_jitter_buffer_seconds{remote="bob"}"#,
    );
    assert!(jb > 0.0 && jb < 1.0, "{jb}");
    assert!(
        get(
            &during,
            r#"meshrtc_peer_datagrams_total{remote="bob",direction="in"}"#
        ) > 0.0
    );
    assert_eq!(
        get(&during, r#"meshrtc_peer_reconnects_total{remote="bob"}"#),
        0.0
    );
    let text = rt.block_on(scrape(addr)).1;
    check_with_python(&text);

    let out = wait(bob, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut after = during.clone();
    for _ in 0..100 {
        after = scrape_now();
        if get(&after, "meshrtc_peer_remotes_connected") == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get(&after, "meshrtc_peer_remotes_connected"),
        0.0,
        "{after:?}"
    );
    // Counters do not go back.
    assert!(
        after.get(frames).is_none_or(|f| *f >= get(&during, frames)),
        "{after:?}"
    );
    let key = media("bytes", "video", "in");
    assert!(
        after.get(&key).is_none_or(|b| *b >= get(&later, &key)),
        "{after:?}"
    );
    drop(alice);
    drop(server);
}
