//! Starts a real coturn (`turnserver`) on 127.0.0.1 and a free port, for one test
//!
//! No configuration file is read (`-n`) and nothing outside a temporary directory is
//! written: the user database, the pid file and the log live there. The server is killed
//! when the [`Coturn`] is dropped (also when the test panics).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The realm every test server uses
pub const REALM: &str = "meshrtc.test";

/// How the server authenticates
pub enum Auth<'a> {
    /// Long-term credentials: one user
    LongTerm { user: &'a str, password: &'a str },
    /// TURN REST API (`use-auth-secret`) with a shared secret
    Secret(&'a str),
}

/// A running turnserver
pub struct Coturn {
    child: Child,
    /// Its STUN/TURN address
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// Whether turnserver is installed; when it is not, a test skips — unless `CI` is set,
/// where it must run
pub fn available() -> bool {
    let found = Command::new("turnserver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "turnserver (Debian package coturn) is missing; run scripts/setup.sh"
        );
        eprintln!("skipped: turnserver (coturn) is not installed; run scripts/setup.sh");
    }
    found
}

impl Coturn {
    /// Starts a server on 127.0.0.1 and waits until it answers a STUN binding request
    pub fn start(auth: Auth<'_>) -> Self {
        Self::start_with(auth, &[])
    }

    /// Starts a server with extra command-line arguments
    pub fn start_with(auth: Auth<'_>, extra: &[&str]) -> Self {
        for _attempt in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
            let mut server = Self::spawn(None, addr, &auth, extra);
            if stun_ping(addr, Duration::from_secs(10), || server.has_exited()) {
                return server;
            }
            // The port was taken between probing and binding, or the server died: retry.
            eprintln!("turnserver on {addr} did not answer:\n{}", server.log());
        }
        panic!("turnserver did not start");
    }

    /// Starts a server in a network namespace on `addr` (an address of that namespace);
    /// `ready` must wait until it answers a STUN binding request there
    pub fn start_in_netns(
        netns: &str,
        addr: SocketAddr,
        auth: Auth<'_>,
        ready: impl FnOnce() -> bool,
    ) -> Self {
        let server = Self::spawn(Some(netns), addr, &auth, &[]);
        assert!(
            ready(),
            "turnserver in {netns} did not answer:\n{}",
            server.log()
        );
        server
    }

    fn spawn(netns: Option<&str>, addr: SocketAddr, auth: &Auth<'_>, extra: &[&str]) -> Self {
        let ip = addr.ip().to_string();
        let port = addr.port();
        let dir = std::env::temp_dir().join(format!(
            "meshrtc-coturn-{}-{}-{port}",
            std::process::id(),
            netns.unwrap_or("root")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = std::fs::File::create(dir.join("turnserver.log")).expect("log file");
        let mut cmd = match netns {
            Some(ns) => {
                // `ip netns exec` execs turnserver in place: killing the child kills it.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "turnserver"]);
                c
            }
            None => Command::new("turnserver"),
        };
        cmd.args(["-n", "--no-cli", "--log-file", "stdout", "--simple-log"])
            .args(["--listening-ip", &ip, "--relay-ip", &ip])
            .args(["--listening-port", &port.to_string()])
            .args(["--realm", REALM])
            // UDP only, no TLS/DTLS listeners (no certificates needed), one relay thread.
            .args([
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
                "--no-tcp-relay",
                "-m",
                "1",
            ])
            // The loopback tests' peers are on 127.0.0.1: coturn refuses to relay to
            // loopback peers unless told to (a production server must not).
            .arg("--allow-loopback-peers")
            // Its user database and pid file stay in the temporary directory.
            .args([
                "--userdb",
                dir.join("turndb").to_str().expect("utf-8 temp dir"),
            ])
            .args([
                "--pidfile",
                dir.join("turnserver.pid").to_str().expect("utf-8"),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        match auth {
            Auth::LongTerm { user, password } => {
                cmd.args(["--lt-cred-mech", "--user", &format!("{user}:{password}")]);
            }
            Auth::Secret(secret) => {
                cmd.args(["--use-auth-secret", "--static-auth-secret", secret]);
            }
        }
        let child = cmd.spawn().expect("turnserver starts");
        Self { child, addr, dir }
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// What the server logged so far
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("turnserver log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends STUN binding requests to `server` until one is answered (true), or `within`
/// passes or `gave_up` says so (false)
pub fn stun_ping(server: SocketAddr, within: Duration, mut gave_up: impl FnMut() -> bool) -> bool {
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    let sock = UdpSocket::bind(any).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    // A bare STUN binding request (RFC 8489): type 0x0001, length 0, cookie, id.
    let mut req = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(b"meshrtcready");
    let start = Instant::now();
    let mut buf = [0; 1500];
    while start.elapsed() < within && !gave_up() {
        let _ = sock.send_to(&req, server);
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == server && n >= 20 && buf[0..2] == [1, 1] && buf[8..20] == req[8..20] {
                return true;
            }
        }
    }
    false
}

/// A UDP port that was free a moment ago
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("local addr").port()
}
