//! The world of one interop test: a signaling server, the page server, headless Chromium
//! pages and `meshrtc peer` processes, all on 127.0.0.1, with diagnostics on failure

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::http::PageServer;

/// Debian's Chromium; the tests use no other browser
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Every Chromium gets these flags (besides a fresh `--user-data-dir` and the page URL).
///
/// Loopback only: no background networking, no QUIC, no mDNS candidates
/// (`WebRtcHideLocalIpsWithMdns` off, so host candidates carry real addresses that the page
/// can filter), loopback allowed in peer connections; fake camera and microphone, no prompts.
/// `--enable-logging=stderr` puts the page's console in Chromium's log, which the
/// diagnostics show.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",
];

/// Time for a Chromium to start, load the page and announce
pub const PAGE_START: Duration = Duration::from_secs(30);

/// `--duration` of a peer that the test tells to leave (SIGTERM) when it is done
pub const LONG_RUN: Duration = Duration::from_secs(300);

/// Time for a `meshrtc peer` to leave and write its stats after its duration or SIGTERM
pub const EXIT_SLACK: Duration = Duration::from_secs(20);

/// Whether Chromium is here; `None` (after saying so) when the test should be skipped
///
/// Skips only when the browser is absent and `CI` is unset; under CI a missing browser fails.
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let path = PathBuf::from(CHROMIUM);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: {CHROMIUM} not found and CI is set, so this is a failure: install Debian's \
             chromium package (scripts/setup.sh does)"
        );
    }
    // Straight to stderr, past the test harness's capture, so that the skip is seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {CHROMIUM} not found. Install it with `apt-get install chromium` \
         (scripts/setup.sh does); with CI set, a missing browser is a failure."
    );
    None
}

/// Interop tests run one at a time: each starts a browser, and their timings matter.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `meshrtc` binary, built once per test run with the test binary's own profile
///
/// Cargo sets `CARGO_BIN_EXE_*` only for binaries of the tested package, so this runs
/// `cargo build -p meshrtc-tokio --bin meshrtc` once and takes `target/<profile>/meshrtc`.
/// `MESHRTC_BIN` names a prebuilt binary instead.
pub fn meshrtc_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MESHRTC_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/chromium-HASH
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps")
            .to_path_buf();
        // Tests in target/debug were built with the `test` profile: building the binary with
        // the same profile reuses every dependency already compiled for the tests (the `dev`
        // profile would compile them all again).
        let profile = match profile_dir.file_name().and_then(|s| s.to_str()) {
            Some("debug") | None => "test".to_string(),
            Some(other) => other.to_string(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("interop/ sits in the workspace");
        let status = Command::new(&cargo)
            .current_dir(workspace)
            .args([
                "build",
                "--quiet",
                "-p",
                "meshrtc-tokio",
                "--bin",
                "meshrtc",
            ])
            .args(["--profile", &profile])
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?} build: {e}"));
        assert!(
            status.success(),
            "cargo build -p meshrtc-tokio --bin meshrtc --profile {profile} failed: {status}"
        );
        let bin = profile_dir.join("meshrtc");
        assert!(
            bin.exists(),
            "built meshrtc but {} is missing (a --target build? set MESHRTC_BIN)",
            bin.display()
        );
        bin
    })
}

/// A scratch directory, removed on drop (kept when `MESHRTC_INTEROP_KEEP` is set)
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "meshrtc-interop-{name}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create a scratch directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("MESHRTC_INTEROP_KEEP").is_some() {
            let _ = writeln!(std::io::stderr(), "kept {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Lines a child writes on one of its pipes, kept and waitable
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    /// Reads `pipe` on a thread of its own until it closes
    fn capture(pipe: impl Read + Send + 'static) -> Self {
        let lines = Self::default();
        let l = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                l.0 .0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                l.0 .1.notify_all();
            }
        });
        lines
    }

    pub fn all(&self) -> Vec<String> {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = self
                .0
                 .1
                .wait_timeout(lines, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A child process, stopped on drop
pub struct Proc {
    child: Child,
    /// Started as the leader of its own process group (Chromium and its helpers)
    group: bool,
    status: Option<ExitStatus>,
    stopped: bool,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, group: bool) -> Result<Self, String> {
        if group {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Self {
            child,
            group,
            status: None,
            stopped: false,
        })
    }

    /// Waits for the process to exit on its own
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (to the whole group for Chromium), then SIGKILL after a grace period
    pub fn stop(&mut self) {
        if self.stopped || (self.status.is_some() && !self.group) {
            return;
        }
        self.stopped = true;
        let pid = self.child.id();
        if self.group {
            signal_group(pid, "TERM");
        } else if self.status.is_none() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        if self.wait_timeout(Duration::from_secs(3)).is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        if self.group {
            // Helpers (renderer, GPU, utility processes) that outlived the browser.
            signal_group(pid, "KILL");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Signals the process group led by `pid` (a group this test created)
fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The signaling server: `meshrtc signal --listen 127.0.0.1:0`
pub struct Signal {
    pub url: String,
    _proc: Proc,
}

impl Signal {
    fn start(dir: &Path) -> Result<Self, String> {
        let mut cmd = Command::new(meshrtc_bin());
        cmd.args(["signal", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&dir.join("signal.stderr"))?);
        let mut proc = Proc::spawn("meshrtc signal", &mut cmd, false)?;
        let out = Lines::capture(proc.child.stdout.take().expect("piped stdout"));
        let line = out
            .wait_for(Duration::from_secs(20), |l| {
                l.starts_with("listening on ws://")
            })
            .ok_or("meshrtc signal printed no `listening on ws://ADDR/` line within 20 s")?;
        let url = line["listening on ".len()..].trim().to_string();
        Ok(Self { url, _proc: proc })
    }
}

/// One `meshrtc peer` process
pub struct MeshPeer {
    pub id: String,
    proc: Proc,
    stdout: Lines,
    stderr_path: PathBuf,
    stats_path: PathBuf,
}

impl MeshPeer {
    /// Seen `joined room ... as ID` on stdout
    pub fn wait_joined(&self, timeout: Duration) -> Result<(), String> {
        self.stdout
            .wait_for(timeout, |l| l.starts_with("joined room"))
            .map(|_| ())
            .ok_or_else(|| format!("meshrtc peer {} did not join within {timeout:?}", self.id))
    }

    /// Waits for the exit after `--duration`; checks it is a success and reads the stats
    pub fn finish(&mut self, timeout: Duration) -> Result<Value, String> {
        let status = self.proc.wait_timeout(timeout).ok_or_else(|| {
            format!(
                "meshrtc peer {} still running {timeout:?} after its duration",
                self.id
            )
        })?;
        if !status.success() {
            return Err(format!("meshrtc peer {} exited with {status}", self.id));
        }
        let text = fs::read_to_string(&self.stats_path)
            .map_err(|e| format!("meshrtc peer {}: no stats file: {e}", self.id))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("meshrtc peer {}: stats file is not JSON: {e}", self.id))
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Asks the peer to leave now: on SIGTERM it leaves cleanly and writes its stats
    pub fn terminate(&mut self) {
        if self.proc.status.is_none() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &self.proc.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// One headless Chromium showing the test page
pub struct Browser {
    pub url: String,
    proc: Proc,
    log_path: PathBuf,
    _profile: TempDir,
}

impl Browser {
    /// Lines of Chromium's log that hold the page's console output
    pub fn console(&self) -> Vec<String> {
        fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_string)
            .collect()
    }
}

fn log_file(path: &Path) -> Result<File, String> {
    File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Everything one test runs
pub struct World {
    pub name: String,
    pub room: String,
    pub signal: Signal,
    pub pages: PageServer,
    chromium: PathBuf,
    browsers: BTreeMap<String, Browser>,
    peers: BTreeMap<String, MeshPeer>,
    dir: TempDir,
}

impl World {
    fn new(name: &str, chromium: PathBuf) -> Result<Self, String> {
        let dir = TempDir::new(name);
        let signal = Signal::start(dir.path())?;
        let pages = PageServer::start().map_err(|e| format!("page server: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            room: name.replace('_', "-"),
            signal,
            pages,
            chromium,
            browsers: BTreeMap::new(),
            peers: BTreeMap::new(),
            dir,
        })
    }

    /// Starts a Chromium on the page, in this world's room, reporting as `tag`
    ///
    /// `query` adds page parameters (`id=...&audio=1&...`, see `page/app.js`).
    pub fn open_page(&mut self, tag: &str, query: &str) -> Result<(), String> {
        let url = format!(
            "{}/index.html?ws={}&room={}&tag={}&{query}",
            self.pages.base_url(),
            encode(&self.signal.url),
            encode(&self.room),
            encode(tag)
        );
        let profile = TempDir::new("chromium-profile");
        let log_path = self.dir.path().join(format!("chromium-{tag}.log"));
        let mut cmd = Command::new(&self.chromium);
        cmd.args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(log_file(&log_path)?)
            .stderr(log_file(&log_path)?);
        let proc = Proc::spawn("chromium", &mut cmd, true)?;
        self.browsers.insert(
            tag.to_string(),
            Browser {
                url,
                proc,
                log_path,
                _profile: profile,
            },
        );
        Ok(())
    }

    /// Starts a Chromium on any `url` (the page `meshrtc signal` serves, say), under `tag`
    ///
    /// The page reports only if the URL tells it where (`report=`, see [`World::report_url`]).
    pub fn open_url(&mut self, tag: &str, url: &str) -> Result<(), String> {
        let profile = TempDir::new("chromium-profile");
        let log_path = self.dir.path().join(format!("chromium-{tag}.log"));
        let mut cmd = Command::new(&self.chromium);
        cmd.args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log_file(&log_path)?)
            .stderr(log_file(&log_path)?);
        let proc = Proc::spawn("chromium", &mut cmd, true)?;
        self.browsers.insert(
            tag.to_string(),
            Browser {
                url: url.to_string(),
                proc,
                log_path,
                _profile: profile,
            },
        );
        Ok(())
    }

    /// Where a page reports as `tag`: this world's page server, `POST /report?tag=TAG`
    pub fn report_url(&self, tag: &str) -> String {
        format!("{}/report?tag={}", self.pages.base_url(), encode(tag))
    }

    /// Waits until the page `tag` reports something `pred` accepts
    pub fn wait_page(
        &self,
        tag: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        self.pages.wait(tag, timeout, what, pred)
    }

    /// Waits until the page `tag` has announced
    pub fn wait_announced(&self, tag: &str) -> Result<Value, String> {
        self.wait_page(tag, PAGE_START, "state announced", |r| {
            r["state"] == "announced"
        })
    }

    /// Waits until the page `tag` has an open data channel with `peer`
    pub fn wait_page_connected(
        &self,
        tag: &str,
        peer: &str,
        timeout: Duration,
    ) -> Result<Value, String> {
        self.wait_page(tag, timeout, &format!("open channel to {peer}"), |r| {
            r["peers"][peer]["dc_state"] == "open"
        })
    }

    /// Waits until the page `tag` has seen `peer` leave (and took its last stats)
    pub fn wait_page_saw_leave(&self, tag: &str, peer: &str) -> Result<Value, String> {
        self.wait_page(tag, Duration::from_secs(10), &format!("{peer} left"), |r| {
            !r["peers"][peer]["left"].is_null()
        })
    }

    /// Closes the browser `tag` (its peers see it leave)
    pub fn close_page(&mut self, tag: &str) {
        if let Some(mut b) = self.browsers.remove(tag) {
            b.proc.stop();
        }
    }

    /// Starts `meshrtc peer --id ID --duration SECONDS` in this world's room, on loopback
    pub fn spawn_peer(
        &mut self,
        id: &str,
        duration: Duration,
        extra: &[&str],
    ) -> Result<(), String> {
        let stats_path = self.dir.path().join(format!("{id}.stats.json"));
        let stderr_path = self.dir.path().join(format!("{id}.stderr"));
        let mut cmd = Command::new(meshrtc_bin());
        cmd.args([
            "peer",
            "--signal",
            &self.signal.url,
            "--room",
            &self.room,
            "--id",
            id,
        ])
        .arg("--duration")
        .arg(format!("{}", duration.as_secs_f64()))
        .arg("--stats-json")
        .arg(&stats_path)
        .args(["--bind", "127.0.0.1"])
        .args(extra)
        // Data channels' state changes (few lines) for the diagnostics; RUST_LOG overrides.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG")
                .unwrap_or_else(|_| "warn,str0m::sctp=debug,str0m::channel=debug".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(&stderr_path)?);
        let mut proc = Proc::spawn(&format!("meshrtc peer {id}"), &mut cmd, false)?;
        let stdout = Lines::capture(proc.child.stdout.take().expect("piped stdout"));
        self.peers.insert(
            id.to_string(),
            MeshPeer {
                id: id.to_string(),
                proc,
                stdout,
                stderr_path,
                stats_path,
            },
        );
        Ok(())
    }

    pub fn peer(&mut self, id: &str) -> &mut MeshPeer {
        self.peers.get_mut(id).expect("a peer this test started")
    }

    /// Waits for the peer's exit and returns its stats JSON
    pub fn finish_peer(&mut self, id: &str, timeout: Duration) -> Result<Value, String> {
        self.peer(id).finish(timeout)
    }

    /// Chromium first: the page (`query`) announces, then `meshrtc peer --id mesh` joins and
    /// offers, stays `duration` and leaves. Returns meshrtc's stats and the page's last report.
    pub fn chromium_first(
        &mut self,
        query: &str,
        extra: &[&str],
        duration: Duration,
    ) -> Result<(Value, Value), String> {
        self.open_page("page", query)?;
        self.wait_announced("page")?;
        self.spawn_peer("mesh", duration, extra)?;
        let stats = self.finish_peer("mesh", duration + EXIT_SLACK)?;
        let page = self.wait_page_saw_leave("page", "mesh")?;
        Ok((stats, page))
    }

    /// meshrtc first: `meshrtc peer --id mesh` joins, then the page (`query`) announces and
    /// offers; once the page's data channel is open both stay `hold`, then the peer is told
    /// to leave (SIGTERM). Chromium's start-up time does not eat into `hold`.
    pub fn meshrtc_first(
        &mut self,
        query: &str,
        extra: &[&str],
        hold: Duration,
    ) -> Result<(Value, Value), String> {
        self.spawn_peer("mesh", LONG_RUN, extra)?;
        self.peer("mesh").wait_joined(Duration::from_secs(20))?;
        self.open_page("page", query)?;
        self.wait_page_connected("page", "mesh", PAGE_START)?;
        thread::sleep(hold);
        self.peer("mesh").terminate();
        let stats = self.finish_peer("mesh", EXIT_SLACK)?;
        let page = self.wait_page_saw_leave("page", "mesh")?;
        Ok((stats, page))
    }

    /// What to show when a test fails: page reports and consoles, peer outputs
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "==== diagnostics of {} (room {}, signal {})",
            self.name, self.room, self.signal.url
        );
        // meshrtc's side first: its warnings and figures are short, while a page's report
        // is long (CI's log keeps only a part of a failure's output).
        for (id, p) in &self.peers {
            let _ = writeln!(s, "---- meshrtc peer {id}");
            for l in p.stdout.all() {
                let _ = writeln!(s, "  stdout: {l}");
            }
            let err = p.stderr();
            let lines: Vec<&str> = err.lines().collect();
            for l in &lines[lines.len().saturating_sub(80)..] {
                let _ = writeln!(s, "  stderr: {l}");
            }
            if let Ok(stats) = fs::read_to_string(&p.stats_path) {
                let _ = writeln!(s, "  stats: {stats}");
            }
        }
        for (tag, b) in &self.browsers {
            let _ = writeln!(s, "---- page {tag}: {}", b.url);
            match self.pages.report(tag) {
                Some(r) => {
                    let _ = writeln!(s, "report: {}", compact_report(&r));
                }
                None => {
                    let _ = writeln!(s, "no report received");
                }
            }
            let console = b.console();
            let skip = console.len().saturating_sub(60);
            let _ = writeln!(s, "console ({} lines, last 60):", console.len());
            for l in &console[skip..] {
                let _ = writeln!(s, "  {l}");
            }
            if console.is_empty() {
                let log = fs::read_to_string(&b.log_path).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let _ = writeln!(s, "chromium log (last 30 lines):");
                for l in &lines[lines.len().saturating_sub(30)..] {
                    let _ = writeln!(s, "  {l}");
                }
            }
        }
        s
    }
}

/// A page report for the diagnostics: pretty, except that each `history` sample (a row of
/// numbers, up to 240 per peer) takes one line
fn compact_report(r: &Value) -> String {
    let mut r = r.clone();
    let mut rows = Vec::new();
    if let Some(peers) = r.get_mut("peers").and_then(Value::as_object_mut) {
        for (id, p) in peers.iter_mut() {
            if let Some(h) = p.get_mut("history").map(Value::take) {
                for row in h.as_array().into_iter().flatten() {
                    rows.push(format!("  history {id}: {row}"));
                }
            }
        }
    }
    let mut out = serde_json::to_string_pretty(&r).unwrap_or_default();
    for row in rows {
        out.push('\n');
        out.push_str(&row);
    }
    out
}

/// Runs one interop test: skips without Chromium (unless CI), serialises with the other
/// tests, and on failure panics with the diagnostics of everything it started
pub fn run(name: &str, body: impl FnOnce(&mut World) -> Result<(), String>) {
    let Some(chromium) = chromium_or_skip(name) else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let mut world = match World::new(name, chromium) {
        Ok(w) => w,
        Err(e) => panic!("{name}: cannot set up: {e}"),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&mut world)));
    let error = match outcome {
        Ok(Ok(())) => {
            eprintln!("{name}: passed in {:.1} s", started.elapsed().as_secs_f64());
            return;
        }
        Ok(Err(e)) => e,
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "panicked".into()),
    };
    let diagnostics = world.diagnostics();
    drop(world);
    panic!(
        "{name} failed after {:.1} s:\n{error}\n\n{diagnostics}",
        started.elapsed().as_secs_f64()
    );
}

/// Percent-encodes a query-string value
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The value at a dotted path (`remote.chromium.data.pings_sent`); `Null` when absent
pub fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// The number at a dotted path
pub fn num(v: &Value, path: &str) -> Option<f64> {
    at(v, path).as_f64()
}

/// Assertions that all run, then fail together with every miss listed
#[derive(Default)]
pub struct Checks {
    failed: Vec<String>,
    lines: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        self.lines
            .push(format!("{} {what}", if ok { "ok  " } else { "FAIL" }));
        if !ok {
            self.failed.push(what);
        }
    }

    pub fn at_least(&mut self, what: &str, got: Option<f64>, min: f64) {
        self.check(
            got.is_some_and(|g| g >= min),
            format!("{what} = {} (want >= {min})", show(got)),
        );
    }

    pub fn at_most(&mut self, what: &str, got: Option<f64>, max: f64) {
        self.check(
            got.is_some_and(|g| g <= max),
            format!("{what} = {} (want <= {max})", show(got)),
        );
    }

    pub fn equal(&mut self, what: &str, got: &Value, want: &Value) {
        self.check(got == want, format!("{what} = {got} (want {want})"));
    }

    /// Prints every check; `Err` with the misses if any
    pub fn finish(self) -> Result<(), String> {
        for l in &self.lines {
            eprintln!("  {l}");
        }
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} check(s) failed:\n  {}",
                self.failed.len(),
                self.failed.join("\n  ")
            ))
        }
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(|| "null".into(), |v| format!("{v}"))
}
