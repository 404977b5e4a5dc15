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
            let port = free_udp_port();
            let dir = std::env::temp_dir().join(format!("meshrtc-coturn-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let log = std::fs::File::create(dir.join("turnserver.log")).expect("log file");
            let mut cmd = Command::new("turnserver");
            cmd.args(["-n", "--no-cli", "--log-file", "stdout", "--simple-log"])
                .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
                .args(["--listening-port", &port.to_string()])
                .args(["--realm", REALM])
                // UDP only, no TLS/DTLS listeners (no certificates needed), one relay thread.
                .args(["--no-tcp", "--no-tls", "--no-dtls", "--no-tcp-relay", "-m", "1"])
                // The tests' peers are on 127.0.0.1: coturn refuses to relay to loopback
                // peers unless told to (a production server must not).
                .arg("--allow-loopback-peers")
                .args(["--userdb", dir.join("turndb").to_str().expect("utf-8 temp dir")])
                .args(["--pidfile", dir.join("turnserver.pid").to_str().expect("utf-8")])
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
            let mut server = Self {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir,
            };
            if server.wait_ready(Duration::from_secs(10)) {
                return server;
            }
            // The port was taken between probing and binding, or the server died: retry.
            eprintln!("turnserver on {port} did not answer:\n{}", server.log());
        }
        panic!("turnserver did not start");
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        // A bare STUN binding request (RFC 8489): type 0x0001, length 0, cookie, id.
        let mut req = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(b"meshrtcready");
        #[allow(clippy::disallowed_methods)] // reason: waits for a real process
        let start = Instant::now();
        let mut buf = [0; 1500];
        while start.elapsed() < within {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let _ = sock.send_to(&req, self.addr);
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if from == self.addr && n >= 20 && buf[0..2] == [1, 1] && buf[8..20] == req[8..20] {
                    return true;
                }
            }
        }
        false
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

/// A UDP port that was free a moment ago
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("local addr").port()
}
