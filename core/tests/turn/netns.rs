//! Gatherers inside private network namespaces behind real Linux NAT
//!
//! `scripts/netns-nat.sh` builds two LANs behind NAT routers and a "public" namespace with
//! coturn. This test binary runs itself again inside each LAN namespace (`ip netns exec`)
//! as a *probe* — the `probe` test below, which does nothing unless `MESHRTC_PROBE` is set —
//! and talks to the probes over their stdin/stdout:
//!
//! ```text
//! probe → "@CAND <type> <addr>"... "@READY"        (after gathering from STUN and TURN)
//! test  → "RELAY <peer>"   probe → "@GOT relay <from>" | "@NONE relay"
//! test  → "DIRECT <peer>"  probe → "@GOT direct <from>" | "@NONE direct"
//! test  → "QUIT"
//! ```
//!
//! Needs root. Skips with a message when namespaces cannot be made, fails when `CI` is set.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshrtc::ice::{CandidateType, GatherEvent, IceTransportPolicy, ResolvedServer};

use crate::coturn::{self, Auth, Coturn};
use crate::harness::{Node, Peer};
use crate::nat::Nat;

const PUBLIC: &str = "198.51.100.1:3478";

/// One probe process in a namespace
struct Probe {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Probe {
    fn spawn(ns: &str, role: &str, env: &[(&str, &str)]) -> Self {
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(exe)
            .args(["--exact", "netns::probe", "--nocapture", "--test-threads=1"])
            .env("MESHRTC_PROBE", role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("probe starts");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print "test netns::probe ... " before our first line.
                if let Some(i) = line.find('@') {
                    if tx.send(line[i + 1..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            name: ns.to_owned(),
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("probe in {} said nothing", self.name))
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("probe stdin");
        self.stdin.flush().expect("flush");
    }

    /// Reads `@CAND` lines until `@READY`
    fn candidates(&self) -> Vec<(String, SocketAddr)> {
        let mut out = Vec::new();
        loop {
            let l = self.line();
            if l == "READY" {
                return out;
            }
            let parts: Vec<_> = l.split(' ').collect();
            match parts[..] {
                ["CAND", kind, addr] => out.push((kind.to_owned(), addr.parse().unwrap())),
                _ => panic!("probe in {}: {l}", self.name),
            }
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_of(cands: &[(String, SocketAddr)], kind: &str) -> SocketAddr {
    cands
        .iter()
        .find(|c| c.0 == kind)
        .unwrap_or_else(|| panic!("no {kind} candidate in {cands:?}"))
        .1
}

/// Both LANs gather, then exchange data through coturn relays and try a direct path
fn behind_nats(symmetric: bool) {
    if !coturn::available() {
        return;
    }
    let Some(nat) = Nat::up(symmetric) else {
        return;
    };
    let pub_ns = nat.ns("pub");
    let _server = Coturn::start_in_netns(
        &pub_ns,
        PUBLIC.parse().unwrap(),
        Auth::LongTerm {
            user: "alice",
            password: "s3cret",
        },
        || {
            let p = Probe::spawn(&pub_ns, "ping", &[("MESHRTC_PROBE_SERVER", PUBLIC)]);
            p.line() == "PONG"
        },
    );
    let mut a = Probe::spawn(
        &nat.ns("lan1"),
        "gather",
        &[("MESHRTC_PROBE_LOCAL", "10.0.1.2")],
    );
    let mut b = Probe::spawn(
        &nat.ns("lan2"),
        "gather",
        &[("MESHRTC_PROBE_LOCAL", "10.0.2.2")],
    );
    let (ca, cb) = (a.candidates(), b.candidates());

    // The server-reflexive address is the NAT's public address, not the LAN's.
    let (host_a, srflx_a, relay_a) = (
        addr_of(&ca, "host"),
        addr_of(&ca, "srflx"),
        addr_of(&ca, "relay"),
    );
    let (srflx_b, relay_b) = (addr_of(&cb, "srflx"), addr_of(&cb, "relay"));
    assert_eq!(host_a.ip().to_string(), "10.0.1.2");
    assert_eq!(srflx_a.ip().to_string(), "198.51.100.11");
    assert_eq!(srflx_b.ip().to_string(), "198.51.100.12");
    assert_eq!(relay_a.ip().to_string(), "198.51.100.1");

    // Through the relays: wrap → coturn → unwrap, both ways.
    a.send(&format!("RELAY {relay_b}"));
    b.send(&format!("RELAY {relay_a}"));
    assert_eq!(a.line(), format!("GOT relay {relay_b}"));
    assert_eq!(b.line(), format!("GOT relay {relay_a}"));

    // Directly between the server-reflexive addresses (UDP hole punching): works through
    // cone NATs, not through symmetric ones (their mapping towards the peer is another port).
    a.send(&format!("DIRECT {srflx_b}"));
    b.send(&format!("DIRECT {srflx_a}"));
    let (ga, gb) = (a.line(), b.line());
    if symmetric {
        assert_eq!((ga.as_str(), gb.as_str()), ("NONE direct", "NONE direct"));
    } else {
        assert_eq!(ga, format!("GOT direct {srflx_b}"));
        assert_eq!(gb, format!("GOT direct {srflx_a}"));
    }
    a.send("QUIT");
    b.send("QUIT");
}

#[test]
fn gather_and_relay_behind_cone_nats() {
    behind_nats(false);
}

#[test]
fn gather_and_relay_behind_symmetric_nats() {
    behind_nats(true);
}

/// The probe's side (a no-op unless `MESHRTC_PROBE` is set by the tests above)
#[test]
fn probe() {
    let Ok(role) = std::env::var("MESHRTC_PROBE") else {
        return;
    };
    match role.as_str() {
        "ping" => {
            let server = std::env::var("MESHRTC_PROBE_SERVER")
                .unwrap()
                .parse()
                .unwrap();
            let ok = coturn::stun_ping(server, Duration::from_secs(10), || false);
            println!("@{}", if ok { "PONG" } else { "NO PONG" });
        }
        "gather" => gather_probe(),
        "offer" | "answer" => rtc_probe(role == "offer"),
        other => panic!("unknown probe role {other}"),
    }
}

/// Gathers from the public STUN/TURN server inside a LAN namespace; prints the candidates
fn gather_in_lan() -> Node {
    let local: std::net::IpAddr = std::env::var("MESHRTC_PROBE_LOCAL")
        .unwrap()
        .parse()
        .unwrap();
    let sock = UdpSocket::bind(SocketAddr::new(local, 0)).expect("bind in the lan");
    let base = sock.local_addr().unwrap();
    let mut n = Node::with_socket(sock, base, IceTransportPolicy::All);
    let server: SocketAddr = PUBLIC.parse().unwrap();
    n.g.add_server(Instant::now(), ResolvedServer::stun(server))
        .unwrap();
    n.g.add_server(
        Instant::now(),
        ResolvedServer::turn(server, "alice", "s3cret"),
    )
    .unwrap();
    n.flush();
    n.run_until(Duration::from_secs(10), Node::complete);
    for e in &n.events {
        match e {
            GatherEvent::Candidate(c) => {
                println!("@CAND {} {}", CandidateType::from(c.kind()), c.addr())
            }
            GatherEvent::Complete => {}
            other => println!("@FAIL {other:?}"),
        }
    }
    println!("@READY");
    n
}

fn gather_probe() {
    let mut n = gather_in_lan();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines().map_while(Result::ok) {
        let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd {
            "RELAY" => {
                let peer: SocketAddr = arg.parse().unwrap();
                let from = exchange(&mut n, |n| {
                    n.send_relayed(peer, b"ping");
                    n.relayed.first().map(|r| r.0)
                });
                report("relay", from);
            }
            "DIRECT" => {
                let peer: SocketAddr = arg.parse().unwrap();
                let from = exchange(&mut n, |n| {
                    n.sock.send_to(b"punch", peer).unwrap();
                    n.direct.iter().find(|d| d.1 == b"punch").map(|d| d.0)
                });
                report("direct", from);
            }
            _ => break,
        }
        std::io::stdout().flush().unwrap();
    }
    // Be a good citizen: release the allocation.
    n.g.close(Instant::now());
    n.flush();
}

/// Sends every 20 ms for 3 s; keeps going 0.5 s after the first receipt so the peer hears us
fn exchange(
    n: &mut Node,
    mut send_and_check: impl FnMut(&mut Node) -> Option<SocketAddr>,
) -> Option<SocketAddr> {
    let end = Instant::now() + Duration::from_secs(3);
    let mut got: Option<(SocketAddr, Instant)> = None;
    while Instant::now() < end {
        if let Some(from) = send_and_check(n) {
            got.get_or_insert((from, Instant::now()));
        }
        if got.is_some_and(|g| g.1.elapsed() > Duration::from_millis(500)) {
            break;
        }
        let step_end = Instant::now() + Duration::from_millis(20);
        while Instant::now() < step_end {
            n.step(Duration::from_millis(5));
        }
    }
    got.map(|g| g.0)
}

fn report(what: &str, from: Option<SocketAddr>) {
    match from {
        Some(f) => println!("@GOT {what} {f}"),
        None => println!("@NONE {what}"),
    }
}

/// A str0m peer in a LAN namespace: offer/answer through the test, then connect with every
/// candidate (host, srflx, relay) and report the selected pair
fn rtc_probe(offerer: bool) {
    use str0m::change::{SdpAnswer, SdpOffer};
    let mut p = Peer::new(gather_in_lan());
    let mut stdin = std::io::stdin().lock();
    let mut read_sdp = || {
        let mut line = String::new();
        stdin.read_line(&mut line).unwrap();
        let json = line.trim().strip_prefix("SDP ").expect("an SDP line");
        serde_json::from_str::<String>(json).unwrap()
    };
    if offerer {
        let offer = p.offer();
        println!(
            "@SDP {}",
            serde_json::to_string(&offer.to_sdp_string()).unwrap()
        );
        let sdp = read_sdp();
        p.learn_remote(&sdp);
        let answer = SdpAnswer::from_sdp_string(&sdp).unwrap();
        p.accept(answer);
    } else {
        let sdp = read_sdp();
        p.learn_remote(&sdp);
        let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
        let answer = p.rtc.sdp_api().accept_offer(offer).unwrap();
        println!(
            "@SDP {}",
            serde_json::to_string(&answer.to_sdp_string()).unwrap()
        );
    }
    std::io::stdout().flush().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while !p.done() && Instant::now() < end {
        p.step(b"hello");
    }
    match p.pair {
        Some((local, remote)) if !p.got.is_empty() => {
            let t = p.node.g.local_type(local);
            println!("@PAIR {t} {local} {remote}");
        }
        _ => {
            eprintln!(
                "probe: no connection: open {:?}, got {}, pair {:?}, {:?}, events {:?}",
                p.open,
                p.got.len(),
                p.pair,
                p.node.g.stats(),
                p.node.events
            );
            println!("@NOPAIR");
        }
    }
    std::io::stdout().flush().unwrap();
    // Keep answering the peer's checks a little while it finishes, then release.
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        p.step(b"bye");
    }
    p.node.g.close(Instant::now());
    p.node.flush();
}

/// One side's selected pair: local type, local address, remote address, and the
/// candidates the other side signaled
type Selected = (String, SocketAddr, SocketAddr, Vec<(String, SocketAddr)>);

/// Two str0m peers behind the NATs connect; returns each one's selected pair
fn connect_str0m(symmetric: bool) -> Option<[Selected; 2]> {
    if !coturn::available() {
        return None;
    }
    let nat = Nat::up(symmetric)?;
    let pub_ns = nat.ns("pub");
    let _server = Coturn::start_in_netns(
        &pub_ns,
        PUBLIC.parse().unwrap(),
        Auth::LongTerm {
            user: "alice",
            password: "s3cret",
        },
        || {
            let p = Probe::spawn(&pub_ns, "ping", &[("MESHRTC_PROBE_SERVER", PUBLIC)]);
            p.line() == "PONG"
        },
    );
    let mut a = Probe::spawn(
        &nat.ns("lan1"),
        "offer",
        &[("MESHRTC_PROBE_LOCAL", "10.0.1.2")],
    );
    let mut b = Probe::spawn(
        &nat.ns("lan2"),
        "answer",
        &[("MESHRTC_PROBE_LOCAL", "10.0.2.2")],
    );
    let (ca, cb) = (a.candidates(), b.candidates());
    let offer = a.line();
    b.send(&offer);
    let answer = b.line();
    a.send(&answer);
    let parse = |l: String| {
        let parts: Vec<_> = l.split(' ').collect();
        match parts[..] {
            ["PAIR", t, local, remote] => (
                t.to_owned(),
                local.parse().unwrap(),
                remote.parse().unwrap(),
            ),
            _ => panic!("no connection: {l}"),
        }
    };
    let (pa, pb) = (parse(a.line()), parse(b.line()));
    eprintln!("selected pairs: {pa:?} / {pb:?}");
    Some([(pa.0, pa.1, pa.2, cb), (pb.0, pb.1, pb.2, ca)])
}

#[test]
fn str0m_connects_directly_through_cone_nats() {
    let Some(pairs) = connect_str0m(false) else {
        return;
    };
    for (i, (local_type, local, remote, remote_cands)) in pairs.iter().enumerate() {
        // Direct: from our LAN address (str0m sends srflx traffic from its host base) to the
        // other NAT's public address; coturn (198.51.100.1) is not on the path.
        assert_eq!(local_type, "host", "{pairs:?}");
        assert_eq!(local.ip().to_string(), format!("10.0.{}.2", i + 1));
        assert_eq!(remote.ip().to_string(), format!("198.51.100.1{}", 2 - i));
        let signaled = remote_cands
            .iter()
            .any(|c| c.0 == "srflx" && c.1 == *remote);
        assert!(
            signaled,
            "the peer's srflx candidate is the remote: {pairs:?}"
        );
    }
}

#[test]
fn str0m_connects_through_turn_behind_symmetric_nats() {
    let Some(pairs) = connect_str0m(true) else {
        return;
    };
    let relay_ip: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    for (local_type, _, remote, _) in &pairs {
        assert!(
            local_type == "relay" || remote.ip() == relay_ip,
            "symmetric NATs allow no direct path: {pairs:?}"
        );
    }
}
