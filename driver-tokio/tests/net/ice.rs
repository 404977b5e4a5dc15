//! The `meshrtc` binary across STUN/TURN servers and NATs: relay-only through a real coturn
//! on 127.0.0.1, every interface by default, and (as root) two peers in private network
//! namespaces behind Linux NAT — directly through cone NATs, through TURN behind symmetric
//! ones. Without coturn (or root, for the NATs) the tests skip with a message; with `CI` set
//! they fail instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::cli::{meshrtc, run, start_signal, start_signal_cmd, stderr_lines, wait, Reaper};
use crate::coturn::{self, Auth, Coturn};
use crate::nat::Nat;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

fn long_term() -> Auth<'static> {
    Auth::LongTerm {
        user: USER,
        password: PASSWORD,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshrtc-ice-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `meshrtc peer` in room `room` as `id` for `secs`, writing its stats to `dir/ID.json`;
/// `netns` runs it inside a network namespace
fn spawn_peer(
    netns: Option<&str>,
    url: &str,
    room: &str,
    id: &str,
    secs: &str,
    dir: &Path,
    extra: &[&str],
) -> Reaper {
    let mut cmd = match netns {
        Some(ns) => {
            // `ip netns exec` execs the program in place: the child's id is meshrtc's.
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_meshrtc")]);
            c
        }
        None => meshrtc(),
    };
    cmd.args(["peer", "--signal", url, "--room", room, "--id", id])
        .args(["--duration", secs, "--stats-json"])
        .arg(dir.join(format!("{id}.json")))
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Reaper::new(cmd.spawn().unwrap())
}

/// Waits for a peer and returns its stats about `other`
fn finish(child: Reaper, dir: &Path, id: &str, other: &str) -> Value {
    let out = wait(child, Duration::from_secs(40));
    assert!(
        out.status.success(),
        "{id} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let remote = json["remote"][other].clone();
    assert!(
        remote["connected"] == true,
        "{id} never connected to {other}: {json}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    remote
}

fn pair(remote: &Value) -> (String, String, SocketAddr, SocketAddr) {
    let p = &remote["candidate_pair"];
    let text = |k: &str| {
        p[k].as_str()
            .unwrap_or_else(|| panic!("no candidate_pair.{k} in {remote}"))
            .to_owned()
    };
    (
        text("local_type"),
        text("remote_type"),
        text("local").parse().unwrap(),
        text("remote").parse().unwrap(),
    )
}

fn turn_flags(server: SocketAddr) -> Vec<String> {
    [
        "--ice-server".into(),
        format!("turn:{server}?transport=udp"),
        "--ice-username".into(),
        USER.into(),
        "--ice-credential".into(),
        PASSWORD.into(),
    ]
    .to_vec()
}

#[test]
fn two_peers_connect_through_coturn_with_the_relay_policy() {
    if !coturn::available() {
        return;
    }
    let server = Coturn::start_with(long_term(), &["--verbose"]);
    let (_signal, url) = start_signal();
    let dir = temp_dir("relay");
    let mut flags = turn_flags(server.addr);
    flags.extend(
        [
            "--ice-policy",
            "relay",
            "--audio",
            "tone",
            "--bind",
            "127.0.0.1",
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let alice = spawn_peer(None, &url, "relay", "alice", "4", &dir, &flags);
    let bob = spawn_peer(None, &url, "relay", "bob", "5", &dir, &flags);
    let about_bob = finish(alice, &dir, "alice", "bob");
    let about_alice = finish(bob, &dir, "bob", "alice");
    for r in [&about_bob, &about_alice] {
        assert!(r["data"]["pongs_received"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["audio"]["frames_decoded"].as_u64().unwrap() >= 50, "{r}");
        let (local_type, remote_type, local, remote) = pair(r);
        assert_eq!(
            (local_type.as_str(), remote_type.as_str()),
            ("relay", "relay"),
            "{r}"
        );
        // Both ends of the pair are coturn's relayed addresses.
        for a in [local, remote] {
            assert_eq!(a.ip(), server.addr.ip());
            assert_ne!(a.port(), server.addr.port());
        }
    }
    // Each peer released its allocation when it left.
    let log = server.log();
    assert_eq!(
        log.matches("lifetime=0").count(),
        2,
        "two releases in coturn's log:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_bind_every_interface_is_a_host_candidate() {
    let any: SocketAddr = "[::]:0".parse().unwrap();
    let locals = meshrtc_driver::local_addresses(any, meshrtc::CandidatePolicy::Any).unwrap();
    if locals.is_empty() {
        eprintln!("skipped: this machine has no non-loopback interface address");
        return;
    }
    let (_signal, url) = start_signal();
    let dir = temp_dir("any");
    let alice = spawn_peer(None, &url, "any", "alice", "3", &dir, &[]);
    let bob = spawn_peer(None, &url, "any", "bob", "4", &dir, &[]);
    let about_bob = finish(alice, &dir, "alice", "bob");
    finish(bob, &dir, "bob", "alice");
    let (local_type, remote_type, local, remote) = pair(&about_bob);
    assert_eq!(
        (local_type.as_str(), remote_type.as_str()),
        ("host", "host")
    );
    // An interface address, not loopback, with the socket's port (no --bind).
    assert!(
        locals.iter().any(|a| a.ip() == local.ip()),
        "{local} in {locals:?}"
    );
    assert!(
        locals.iter().any(|a| a.ip() == remote.ip()),
        "{remote} in {locals:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_ice_flags_are_one_clear_line() {
    let cases: [(&[&str], &str); 5] = [
        (&["--ice-server", "turn:127.0.0.1:3478"], "--ice-username"),
        (&["--ice-server", "turns:127.0.0.1:5349"], "unsupported"),
        (&["--ice-server", "http://x"], "--ice-server"),
        (&["--ice-policy", "maybe"], "--ice-policy"),
        (&["--ice-username", "u"], "--ice-credential"),
    ];
    for (flags, needle) in cases {
        let mut cmd = meshrtc();
        cmd.args(["peer", "--signal", "ws://127.0.0.1:1/", "--room", "r"])
            .args(flags);
        let out = run(cmd, Duration::from_secs(10));
        assert!(!out.status.success(), "{flags:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{flags:?}: {lines:?}");
        assert!(lines[0].contains(needle), "{flags:?}: {lines:?}");
    }
}

// ---- behind Linux NAT ----

const PUBLIC: &str = "198.51.100.1";

/// Two peers in the private namespaces, coturn and the signaling server in the public one;
/// returns what each peer says about the other
fn through_nats(symmetric: bool) -> Option<[(Value, String); 2]> {
    if !coturn::available() {
        return None;
    }
    let nat = Nat::up(symmetric)?;
    let pub_ns = nat.ns("pub");
    let turn: SocketAddr = format!("{PUBLIC}:3478").parse().unwrap();
    let _server = Coturn::start_in_netns(&pub_ns, turn, long_term(), || ping_in(&pub_ns, turn));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pub_ns, env!("CARGO_BIN_EXE_meshrtc")])
        .args(["signal", "--listen", &format!("{PUBLIC}:0")])
        .env_remove("RUST_LOG");
    let (_signal, url) = start_signal_cmd(cmd);
    let dir = temp_dir(if symmetric { "symmetric" } else { "cone" });
    let mut flags = vec!["--ice-server".to_string(), format!("stun:{turn}")];
    flags.extend(turn_flags(turn));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = spawn_peer(Some(&nat.ns("lan1")), &url, "nat", "a", "5", &dir, &flags);
    let b = spawn_peer(Some(&nat.ns("lan2")), &url, "nat", "b", "6", &dir, &flags);
    let about_b = finish(a, &dir, "a", "b");
    let about_a = finish(b, &dir, "b", "a");
    let _ = std::fs::remove_dir_all(&dir);
    for r in [&about_a, &about_b] {
        assert!(r["data"]["pongs_received"].as_u64().unwrap() >= 1, "{r}");
    }
    eprintln!(
        "a: {}\nb: {}",
        about_b["candidate_pair"], about_a["candidate_pair"]
    );
    Some([(about_b, "1".into()), (about_a, "2".into())])
}

#[test]
fn cli_peers_connect_directly_through_cone_nats() {
    let Some(sides) = through_nats(false) else {
        return;
    };
    for (remote, lan) in &sides {
        let other = if lan == "1" { "2" } else { "1" };
        let (local_type, remote_type, local, peer) = pair(remote);
        // Direct: from our LAN address (srflx traffic leaves from its host base) to the other
        // NAT's public address, which the other peer learnt from STUN; coturn is not used.
        assert_eq!(local_type, "host", "{remote}");
        assert_eq!(local.ip().to_string(), format!("10.0.{lan}.2"));
        assert_eq!(remote_type, "srflx", "{remote}");
        assert_eq!(peer.ip().to_string(), format!("198.51.100.1{other}"));
    }
}

#[test]
fn cli_peers_connect_through_turn_behind_symmetric_nats() {
    let Some(sides) = through_nats(true) else {
        return;
    };
    for (remote, _) in &sides {
        let (local_type, remote_type, _, peer) = pair(remote);
        assert!(
            local_type == "relay" || remote_type == "relay",
            "symmetric NATs allow no direct path: {remote}"
        );
        if remote_type == "relay" {
            assert_eq!(peer.ip().to_string(), PUBLIC);
        }
    }
}

/// Whether a STUN server in namespace `ns` answers, asked from inside it (the test binary
/// runs itself there as the probe below)
fn ping_in(ns: &str, server: SocketAddr) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "ice::probe", "--nocapture", "--test-threads=1"])
        .env("MESHRTC_PROBE_SERVER", server.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("@PONG")
}

/// The probe's side (a no-op unless `MESHRTC_PROBE_SERVER` is set by [`ping_in`])
#[test]
fn probe() {
    let Ok(server) = std::env::var("MESHRTC_PROBE_SERVER") else {
        return;
    };
    let server = server.parse().unwrap();
    if coturn::stun_ping(server, Duration::from_secs(10), || false) {
        println!("@PONG");
    }
}
