//! The `meshrtc` binary, black-box

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A child process that is killed if the test ends, or panics, before waiting for it: a
/// failed assertion must not leave a `meshrtc signal` running
pub(crate) struct Reaper(Option<Child>);

impl Reaper {
    pub(crate) fn new(child: Child) -> Self {
        Self(Some(child))
    }

    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The child, now the caller's to wait for
    fn take(mut self) -> Child {
        self.0.take().expect("a child")
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn meshrtc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshrtc"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs `cmd` to completion; kills it and fails the test after `limit`
pub(crate) fn run(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(Reaper::new(child), limit)
}

pub(crate) fn wait(child: Reaper, limit: Duration) -> Output {
    let pid = child.id();
    let child = child.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Our own child, ended by its id.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("meshrtc did not finish within {limit:?}");
        }
    }
}

pub(crate) fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `meshrtc signal --listen 127.0.0.1:0`, returning the child and its URL
pub(crate) fn start_signal() -> (Reaper, String) {
    start_signal_with(&[])
}

fn start_signal_with(extra: &[&str]) -> (Reaper, String) {
    let mut cmd = meshrtc();
    cmd.args(["signal", "--listen", "127.0.0.1:0"]).args(extra);
    let (child, url) = start_signal_cmd(cmd);
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with('/'),
        "{url}"
    );
    (child, url)
}

/// Starts a `meshrtc signal` command line and reads its URL from the first line it prints
pub(crate) fn start_signal_cmd(mut cmd: Command) -> (Reaper, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Reaper::new(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("signal printed its listening line");
    let url = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("listening on "))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, url)
}

/// Sends `signal` (e.g. `-TERM`) to our own child, by its id, and waits for it to exit
fn signal(child: Reaper, signal: &str) -> Output {
    Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    wait(child, Duration::from_secs(10))
}

fn terminate(child: Reaper) -> Output {
    signal(child, "-TERM")
}

#[test]
fn signal_and_two_peers_exchange_data_and_write_stats() {
    let (server, url) = start_signal();
    let dir = std::env::temp_dir().join(format!("meshrtc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Alice stays 3.5 s; bob would stay a minute but is interrupted once alice is done:
    // both leave cleanly and write their stats.
    let spawn_peer = |id: &str, duration: &str| {
        meshrtc()
            .args(["peer", "--signal", &url, "--room", "cli", "--id", id])
            .args([
                "--duration",
                duration,
                "--bind",
                "127.0.0.1",
                "--data",
                "echo",
            ])
            .arg("--stats-json")
            .arg(dir.join(format!("{id}.json")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Reaper::new)
            .unwrap()
    };
    let alice = spawn_peer("alice", "3.5");
    let bob = spawn_peer("bob", "60");
    let out = wait(alice, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "alice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "alice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = signal(bob, "-INT");
    assert!(
        out.status.success(),
        "bob: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "bob: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        let text = std::fs::read_to_string(dir.join(format!("{me}.json"))).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["peer_id"], me);
        assert_eq!(v["room"], "cli");
        let r = &v["remote"][other];
        assert_eq!(r["connected"], true, "{text}");
        let connect_ms = r["connect_ms"].as_f64().unwrap();
        assert!(connect_ms > 0.0 && connect_ms < 5000.0, "{text}");
        let data = &r["data"];
        let pings = data["pings_sent"].as_u64().unwrap();
        let pongs = data["pongs_received"].as_u64().unwrap();
        let received = data["messages_received"].as_u64().unwrap();
        assert!(pings >= 2, "{text}");
        assert!(pongs >= 1 && pongs <= pings, "{text}");
        assert!(received > pongs, "pongs plus the other's pings: {text}");
        assert!(r["rtt_ms"].as_f64().unwrap() > 0.0, "{text}");
        // Audio and video are negotiated (every peer can receive them) but nobody sent any:
        // zero frames, and no loss or drift figure made up from nothing.
        for kind in ["audio", "video"] {
            let frames = &r[kind]["frames_received"];
            assert!(frames.is_null() || frames == 0, "{kind}: {text}");
        }
        for unmeasured in ["loss", "clock_drift_ppm"] {
            assert!(r[unmeasured].is_null(), "{unmeasured}: {text}");
        }
        assert!(r["audio"]["latency_ms_p50"].is_null(), "{text}");
        assert_eq!(v["remote"].as_object().unwrap().len(), 1, "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = terminate(server);
    assert!(
        out.status.success(),
        "signal exits 0 on SIGTERM: {:?}",
        out.status
    );
}

#[test]
fn help_works_for_every_subcommand() {
    for args in [
        &["--help"][..],
        &["signal", "--help"],
        &["peer", "--help"],
        &["demo", "--help"],
    ] {
        let mut cmd = meshrtc();
        cmd.args(args);
        let out = run(cmd, Duration::from_secs(10));
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: meshrtc"), "{args:?}: {text}");
    }
    let mut cmd = meshrtc();
    cmd.args(["peer", "--help"]);
    let text = String::from_utf8(run(cmd, Duration::from_secs(10)).stdout).unwrap();
    for flag in [
        "--signal",
        "--room",
        "--id",
        "--audio",
        "--video",
        "--video-codec",
        "--data",
        "--duration",
        "--stats-json",
        "--bind",
        "--width",
        "--height",
        "--fps",
    ] {
        assert!(text.contains(flag), "peer --help lists {flag}");
    }
}

#[test]
fn bad_input_exits_non_zero_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().map(|a| (a, taken)).unwrap();
    // A port nothing listens on, for an unreachable Redis.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = (free.local_addr().unwrap(), ());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["peer".into(), "--bogus".into()], "--bogus"),
        (vec!["bogus".into()], "bogus"),
        (vec![], "subcommand"),
        (
            vec!["signal".into(), "--listen".into(), "nowhere".into()],
            "--listen",
        ),
        (
            vec!["signal".into(), "--listen".into(), taken.0.to_string()],
            "cannot listen",
        ),
        (
            ["peer", "--signal", "http://127.0.0.1:1/", "--room", "r"]
                .map(String::from)
                .to_vec(),
            "ws://",
        ),
        (
            [
                "peer",
                "--signal",
                "ws://127.0.0.1:1/",
                "--room",
                "bad room",
            ]
            .map(String::from)
            .to_vec(),
            "--room",
        ),
        (
            [
                "peer",
                "--signal",
                "ws://127.0.0.1:1/",
                "--room",
                "r",
                "--audio",
                "loud",
            ]
            .map(String::from)
            .to_vec(),
            "--audio",
        ),
        (
            [
                "peer",
                "--signal",
                "ws://127.0.0.1:1/",
                "--room",
                "r",
                "--stats-json",
                "/nonexistent/dir/s.json",
            ]
            .map(String::from)
            .to_vec(),
            "stats",
        ),
        (
            [
                "peer",
                "--signal",
                "ws://127.0.0.1:1/",
                "--room",
                "r",
                "--bind",
                "0.0.0.0",
            ]
            .map(String::from)
            .to_vec(),
            "--bind",
        ),
        (
            ["demo", "--peers", "11"].map(String::from).to_vec(),
            "--peers",
        ),
        (
            ["signal", "--redis", "http://127.0.0.1:1", "--node-id", "a"]
                .map(String::from)
                .to_vec(),
            "--redis",
        ),
        (
            ["signal", "--redis", "redis://127.0.0.1:1"]
                .map(String::from)
                .to_vec(),
            "--node-id",
        ),
        (
            [
                "signal",
                "--redis",
                "redis://127.0.0.1:1",
                "--node-id",
                "bad id",
            ]
            .map(String::from)
            .to_vec(),
            "--node-id",
        ),
        (
            [
                "signal",
                "--listen",
                "127.0.0.1:0",
                "--redis",
                &format!("redis://{}", free.0),
                "--node-id",
                "a",
            ]
            .map(String::from)
            .to_vec(),
            "redis",
        ),
    ];
    for (args, needle) in cases {
        let mut cmd = meshrtc();
        cmd.args(&args);
        let out = run(cmd, Duration::from_secs(15));
        assert!(!out.status.success(), "{args:?} must fail");
        let lines = stderr_lines(&out);
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: one line on stderr, got {lines:?}"
        );
        assert!(lines[0].starts_with("error: "), "{args:?}: {lines:?}");
        assert!(
            lines[0].contains(needle),
            "{args:?}: {lines:?} should mention {needle}"
        );
    }
    drop(taken);
}

#[test]
fn unreachable_server_is_one_clear_line() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", free.local_addr().unwrap());
    drop(free);
    let mut cmd = meshrtc();
    cmd.args(["peer", "--signal", &url, "--room", "r", "--duration", "1"]);
    let out = run(cmd, Duration::from_secs(15));
    assert!(!out.status.success());
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("cannot connect to signaling server"),
        "{lines:?}"
    );
}

#[test]
fn media_flags_send_a_tone_and_a_test_pattern() {
    let (server, url) = start_signal();
    let dir = std::env::temp_dir().join(format!("meshrtc-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Bob leaves first, so alice is still there when bob reads his stats.
    let spawn_peer = |id: &str, media: &[&str]| {
        let duration = if id == "bob" { "3.5" } else { "5" };
        meshrtc()
            .args(["peer", "--signal", &url, "--room", "media", "--id", id])
            .args(["--duration", duration, "--bind", "127.0.0.1"])
            .args(media)
            .args(["--width", "320", "--height", "240", "--fps", "15"])
            .arg("--stats-json")
            .arg(dir.join(format!("{id}.json")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Reaper::new)
            .unwrap()
    };
    let alice = spawn_peer(
        "alice",
        &[
            "--audio",
            "tone",
            "--video",
            "testsrc",
            "--video-codec",
            "h264",
        ],
    );
    let bob = spawn_peer("bob", &["--video-codec", "h264"]);
    for (name, child) in [("alice", alice), ("bob", bob)] {
        let out = wait(child, Duration::from_secs(30));
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(dir.join("bob.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let r = &v["remote"]["alice"];
    // About 3.5 s of media after connecting: 20 ms audio frames and 15 fps video.
    let audio = r["audio"]["frames_decoded"].as_u64().expect(&text);
    let video = r["video"]["frames_decoded"].as_u64().expect(&text);
    assert!(audio >= 100, "audio frames {audio}: {text}");
    assert!(video >= 30, "video frames {video}: {text}");
    assert!(r["video"]["keyframes"].as_u64().unwrap() >= 1, "{text}");
    let p50 = r["audio"]["latency_ms_p50"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 < 1000.0, "latency {p50}: {text}");
    assert!(
        r["audio"]["jitter_buffer_ms"].as_f64().unwrap() > 0.0,
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    terminate(server);
}

#[test]
fn demo_connects_every_pair() {
    let mut cmd = meshrtc();
    cmd.args(["demo", "--peers", "3", "--duration", "2"]);
    let out = run(cmd, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all 3 pairs connected"), "{stdout}");
    for pair in ["peer1 <-> peer2", "peer1 <-> peer3", "peer2 <-> peer3"] {
        assert!(stdout.contains(pair), "{stdout}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("pairs connected 3/3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_honours_max_peers_per_room() {
    let (server, url) = start_signal_with(&["--max-peers-per-room", "1"]);
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    crate::util::bounded(async {
        let mut first = crate::util::Raw::connect_addr(addr, "/").await.unwrap();
        first.announce(1, "small", Some("a")).await;
        let mut second = crate::util::Raw::connect_addr(addr, "/rpc").await.unwrap();
        second
            .request(1, "peer.announce", serde_json::json!({"room": "small"}))
            .await;
        second.expect_error(-32001, serde_json::json!(1)).await;
    })
    .await;
    assert!(terminate(server).status.success());
}

#[test]
fn data_none_reports_null_data() {
    let (server, url) = start_signal();
    let dir = std::env::temp_dir().join(format!("meshrtc-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let children: Vec<Reaper> = ["carol", "dave"]
        .into_iter()
        .map(|id| {
            meshrtc()
                .args(["peer", "--signal", &url, "--room", "quiet", "--id", id])
                .args(["--duration", "2", "--data", "none", "--bind", "127.0.0.1"])
                .arg("--stats-json")
                .arg(dir.join(format!("{id}.json")))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map(Reaper::new)
                .unwrap()
        })
        .collect();
    for child in children {
        let out = wait(child, Duration::from_secs(20));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(dir.join("carol.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let dave = &v["remote"]["dave"];
    assert_eq!(dave["connected"], true, "{text}");
    assert!(dave["data"].is_null(), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    terminate(server);
}

/// A file holding `contents` in a fresh temporary directory, removed when dropped
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "meshrtc-cli-{}-{name}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn addr_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

fn mint(secret: &TempFile, extra: &[&str]) -> String {
    let mut cmd = meshrtc();
    cmd.args(["token", "--secret-file", secret.path()])
        .args(extra);
    let out = run(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {text:?}");
    assert_eq!(lines[0].split('.').count(), 3, "a JWT: {text:?}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_minted_by_the_cli_admits_to_a_server_requiring_tokens() {
    let secret = TempFile::new("room.secret", "correct horse battery staple\n");
    let (server, url) = start_signal_with(&["--token-secret-file", secret.path()]);
    let alice = mint(&secret, &["--room", "r", "--id", "alice", "--ttl", "60"]);
    let anyone = mint(&secret, &["--room", "r"]);
    let other_room = mint(&secret, &["--room", "elsewhere"]);
    let wrong = TempFile::new("other.secret", "guess\n");
    let forged = mint(&wrong, &["--room", "r"]);
    crate::util::bounded(async {
        let addr = addr_of(&url);
        let mut c = crate::util::Raw::connect_addr(addr, "/").await.unwrap();
        let announce = |id: i64, token: Option<&str>, peer: &str| {
            let mut p = serde_json::json!({"room": "r", "peer_id": peer});
            if let Some(t) = token {
                p["token"] = serde_json::json!(t);
            }
            (id, p)
        };
        for (id, token, peer) in [
            (1, None, "alice"),
            (2, Some(other_room.as_str()), "alice"),
            (3, Some(forged.as_str()), "alice"),
            (4, Some(alice.as_str()), "mallory"),
        ] {
            let (id, p) = announce(id, token, peer);
            c.request(id, "peer.announce", p).await;
            c.expect_error(-32006, serde_json::json!(id)).await;
        }
        let (id, p) = announce(5, Some(&alice), "alice");
        c.request(id, "peer.announce", p).await;
        assert_eq!(c.expect().await["result"]["peer_id"], "alice");
        let mut d = crate::util::Raw::connect_addr(addr, "/").await.unwrap();
        let (id, p) = announce(1, Some(&anyone), "dave");
        d.request(id, "peer.announce", p).await;
        assert_eq!(d.expect().await["result"]["peer_id"], "dave");
    })
    .await;
    assert!(terminate(server).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_hands_out_ice_servers_resume_and_metrics() {
    let turn_secret = TempFile::new("turn.secret", "north-sea-secret\n");
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let metrics_port = metrics_port.to_string();
    let (server, url) = start_signal_with(&[
        "--ice-server",
        "stun:127.0.0.1:3478",
        "--ice-server",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-secret-file",
        turn_secret.path(),
        "--turn-ttl",
        "600",
        "--resume-grace",
        "7",
        "--metrics",
        &metrics_port,
        "--allow-origin",
        "https://ok.example",
    ]);
    crate::util::bounded(async {
        let mut c = crate::util::Raw::connect_addr(addr_of(&url), "/")
            .await
            .unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let result = c.announce(1, "r", Some("alice")).await;
        assert_eq!(result["resume_grace_s"], 7);
        assert_eq!(result["resume"].as_str().map(str::len), Some(32));
        let ice = &result["ice_servers"];
        assert_eq!(ice[0], serde_json::json!({"urls": ["stun:127.0.0.1:3478"]}));
        assert_eq!(
            ice[1]["urls"],
            serde_json::json!(["turn:127.0.0.1:3478?transport=udp"])
        );
        let username = ice[1]["username"].as_str().unwrap();
        let (expiry, peer) = username.split_once(':').unwrap();
        assert_eq!(peer, "alice");
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            (before + 600..=before + 602).contains(&expiry),
            "{expiry} vs {before}"
        );
        let secret = meshrtc::signal::auth::Secret::new("north-sea-secret").unwrap();
        let (_, credential) = meshrtc::signal::auth::turn_rest_credential(
            &secret,
            &meshrtc::signal::PeerId::new("alice").unwrap(),
            expiry,
        );
        assert_eq!(ice[1]["credential"], credential.as_str());

        // The metrics port answers Prometheus text.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&metrics_port).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("\nmeshrtc_signal_peers 1\n"), "{text}");

        // A browser page from another origin cannot open a WebSocket.
        let mut tcp = tokio::net::TcpStream::connect(addr_of(&url)).await.unwrap();
        let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://evil.example\r\n\r\n";
        tcp.write_all(upgrade.as_bytes()).await.unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    })
    .await;
    assert!(terminate(server).status.success());
}

#[test]
fn signal_and_token_refuse_bad_secrets_and_urls_with_one_line() {
    let empty = TempFile::new("empty.secret", " \n");
    let good = TempFile::new("good.secret", "s3cret");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["signal", "--token-secret-file", "/nonexistent/secret"],
            "cannot read token secret file",
        ),
        (
            vec!["signal", "--token-secret-file", empty.path()],
            "is empty",
        ),
        (vec!["signal", "--ice-server", "http://x:1"], "--ice-server"),
        (
            vec!["signal", "--turn-secret-file", good.path()],
            "--turn-secret-file",
        ),
        (vec!["signal", "--resume-grace", "x"], "--resume-grace"),
        (vec!["signal", "--metrics", "nowhere"], "--metrics"),
        (vec!["token", "--room", "r"], "--secret-file"),
        (
            vec!["token", "--secret-file", good.path(), "--room", "bad room"],
            "--room",
        ),
        (
            vec!["token", "--secret-file", "/nonexistent/s", "--room", "r"],
            "cannot read secret file",
        ),
    ];
    for (args, needle) in cases {
        let mut cmd = meshrtc();
        cmd.args(&args);
        let out = run(cmd, Duration::from_secs(15));
        assert!(!out.status.success(), "{args:?} must fail");
        let lines = stderr_lines(&out);
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: one line on stderr, got {lines:?}"
        );
        assert!(lines[0].starts_with("error: "), "{args:?}: {lines:?}");
        assert!(
            lines[0].contains(needle),
            "{args:?}: {lines:?} should mention {needle}"
        );
    }
    let mut cmd = meshrtc();
    cmd.args(["signal", "--help"]);
    let text = String::from_utf8(run(cmd, Duration::from_secs(10)).stdout).unwrap();
    for flag in [
        "--resume-grace",
        "--token-secret-file",
        "--allow-origin",
        "--ice-server",
        "--turn-secret-file",
        "--turn-ttl",
        "--metrics",
        "--redis",
        "--node-id",
    ] {
        assert!(text.contains(flag), "signal --help lists {flag}");
    }
    let mut cmd = meshrtc();
    cmd.args(["token", "--help"]);
    let text = String::from_utf8(run(cmd, Duration::from_secs(10)).stdout).unwrap();
    for flag in ["--secret-file", "--room", "--id", "--ttl"] {
        assert!(text.contains(flag), "token --help lists {flag}");
    }
}

/// Issue 16 with real processes: `meshrtc signal` is killed mid-call and started again on
/// the same port. Audio and echo pongs between the two peers keep flowing across it, both
/// sessions reconnect and announce afresh, and a peer joining the new server reaches both.
#[test]
fn a_killed_signal_server_restarted_on_its_port_does_not_stop_a_call() {
    let (server, url) = start_signal();
    let port = url
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches('/')
        .to_string();
    let dir = std::env::temp_dir().join(format!("meshrtc-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spawn_peer = |id: &str, duration: &str| {
        meshrtc()
            .args(["peer", "--signal", &url, "--room", "restart", "--id", id])
            .args(["--duration", duration, "--bind", "127.0.0.1"])
            .args(["--data", "echo", "--audio", "tone"])
            .arg("--stats-json")
            .arg(dir.join(format!("{id}.json")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Reaper::new)
            .unwrap()
    };
    let alice = spawn_peer("alice", "14");
    let bob = spawn_peer("bob", "14");
    std::thread::sleep(Duration::from_secs(3));
    // SIGKILL: no goodbye to anyone; the port is free again at once.
    let _ = signal(server, "-KILL");
    std::thread::sleep(Duration::from_secs(2));
    let (server, url2) = start_signal_with_listen(&format!("127.0.0.1:{port}"));
    assert_eq!(url2, url);
    // Reconnects back off from 1 s (at most 2 s after the second failure).
    std::thread::sleep(Duration::from_secs(4));
    let carol = spawn_peer("carol", "4");
    let mut outs = Vec::new();
    for (name, child) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        let out = wait(child, Duration::from_secs(40));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outs.push(out);
    }
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        let text = std::fs::read_to_string(dir.join(format!("{me}.json"))).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let r = &v["remote"][other];
        assert_eq!(r["connected"], true, "{text}");
        // The call never broke: no reconnect of the media path was needed.
        assert_eq!(r["reconnects"].as_u64().unwrap_or(0), 0, "{text}");
        // About 14 s of 20 ms audio frames and a ping a second, answered throughout.
        let audio = r["audio"]["frames_decoded"].as_u64().expect(&text);
        assert!(audio >= 600, "{me} decoded {audio} audio frames: {text}");
        let pings = r["data"]["pings_sent"].as_u64().unwrap();
        let pongs = r["data"]["pongs_received"].as_u64().unwrap();
        assert!(pings >= 10 && pongs + 1 >= pings, "{me}: {text}");
        // And the peer that joined the restarted server reached us.
        assert_eq!(v["remote"]["carol"]["connected"], true, "{me}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    terminate(server);
}

fn start_signal_with_listen(listen: &str) -> (Reaper, String) {
    let mut cmd = meshrtc();
    cmd.args(["signal", "--listen", listen]);
    start_signal_cmd(cmd)
}

/// A network namespace holding only loopback, removed on drop
struct Netns(String);

impl Netns {
    /// A fresh namespace, or `None` (with a message) where this process may not make one;
    /// under `CI` it must work
    fn new(tag: &str) -> Option<Self> {
        let name = format!("mrtc-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot create a network namespace (needs root and iproute2)"
            );
            eprintln!("skipped: cannot create a network namespace (needs root and iproute2)");
            return None;
        }
        let ns = Self(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c.env_remove("RUST_LOG");
        c
    }

    fn run(&self, args: &[&str]) {
        let status = self.command(args[0]).args(&args[1..]).status().unwrap();
        assert!(status.success(), "{args:?} in {}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Issue 16 with real sockets: two `meshrtc peer`s whose UDP is dropped by an iptables rule
/// for 30 s (signaling, over TCP, stays up) restart ICE and reconnect once the rule goes;
/// audio and pongs flow again
#[test]
fn peers_whose_udp_is_blocked_for_30s_reconnect_after_the_rule_goes() {
    let Some(ns) = Netns::new("drop") else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_meshrtc");
    let mut cmd = ns.command(bin);
    cmd.args(["signal", "--listen", "127.0.0.1:0"]);
    let (server, url) = start_signal_cmd(cmd);
    let dir = std::env::temp_dir().join(format!("meshrtc-drop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spawn_peer = |id: &str| {
        ns.command(bin)
            .args(["peer", "--signal", &url, "--room", "drop", "--id", id])
            .args(["--duration", "48", "--bind", "127.0.0.1"])
            .args(["--data", "echo", "--audio", "tone"])
            .arg("--stats-json")
            .arg(dir.join(format!("{id}.json")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Reaper::new)
            .unwrap()
    };
    let alice = spawn_peer("alice");
    let bob = spawn_peer("bob");
    std::thread::sleep(Duration::from_secs(5));
    let rule = ["INPUT", "-p", "udp", "-j", "DROP"];
    ns.run(&[&["iptables", "-A"][..], &rule[..]].concat());
    std::thread::sleep(Duration::from_secs(30));
    ns.run(&[&["iptables", "-D"][..], &rule[..]].concat());
    for (name, child) in [("alice", alice), ("bob", bob)] {
        let out = wait(child, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        let text = std::fs::read_to_string(dir.join(format!("{me}.json"))).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let r = &v["remote"][other];
        assert!(r["reconnects"].as_u64().unwrap() >= 1, "{me}: {text}");
        // About 5 s of audio before the block (50 frames a second), then 13 s after it:
        // at least 4 s more means the connection came back (it took 5-6 s here).
        let audio = r["audio"]["frames_decoded"].as_u64().expect(&text);
        assert!(audio >= 450, "{me} decoded {audio} audio frames: {text}");
        // A ping a second: at most 5 pongs before the block.
        let pongs = r["data"]["pongs_received"].as_u64().unwrap();
        assert!(pongs >= 9, "{me}: {pongs} pongs: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(server);
}
