//! A tiny HTTP server on 127.0.0.1: serves the test page and takes its reports
//!
//! `GET /` and `GET /index.html` and `GET /app.js` serve `interop/page/`; `POST
//! /report?tag=TAG` stores the page's JSON report under TAG (the latest one wins). Nothing else.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Largest request head we read
const MAX_HEAD: usize = 64 * 1024;
/// Largest report we accept
const MAX_BODY: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct State {
    reports: Mutex<BTreeMap<String, Value>>,
    changed: Condvar,
}

/// The page server of one test
pub struct PageServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    /// Binds 127.0.0.1 on a free port and serves `interop/page/`
    pub fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let page_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("page");
        let (st, sp) = (state.clone(), stop.clone());
        thread::Builder::new()
            .name("page-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if sp.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (st, dir) = (st.clone(), page_dir.clone());
                    thread::spawn(move || {
                        // A broken connection only loses one report; the next one follows.
                        let _ = handle(conn, &dir, &st);
                    });
                }
            })?;
        Ok(Self { addr, state, stop })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The latest report of the page `tag`
    pub fn report(&self, tag: &str) -> Option<Value> {
        lock(&self.state.reports).get(tag).cloned()
    }

    /// Waits until the page `tag` sends a report that satisfies `pred`
    ///
    /// Fails at once when the page says it is in state `error`.
    pub fn wait(
        &self,
        tag: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut reports = lock(&self.state.reports);
        loop {
            if let Some(r) = reports.get(tag) {
                if pred(r) {
                    return Ok(r.clone());
                }
                if r["state"] == "error" {
                    return Err(format!(
                        "page {tag} failed while waiting for {what}: {}",
                        r["errors"]
                    ));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "page {tag}: no report with {what} within {timeout:?}"
                ));
            }
            reports = self
                .state
                .changed
                .wait_timeout(reports, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn handle(mut conn: TcpStream, page_dir: &std::path::Path, state: &State) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return respond(&mut conn, 431, "text/plain", b"head too large");
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut request = lines.next().unwrap_or("").split_whitespace();
    let method = request.next().unwrap_or("").to_string();
    let target = request.next().unwrap_or("").to_string();
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        return respond(&mut conn, 413, "text/plain", b"too large");
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    match (method.as_str(), path) {
        ("GET", "/" | "/index.html") => serve(&mut conn, page_dir, "index.html", "text/html"),
        ("GET", "/app.js") => serve(&mut conn, page_dir, "app.js", "text/javascript"),
        ("POST", "/report") => {
            let tag = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("tag="))
                .unwrap_or("page")
                .to_string();
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) => {
                    lock(&state.reports).insert(tag, v);
                    state.changed.notify_all();
                    respond(&mut conn, 204, "text/plain", b"")
                }
                Err(_) => respond(&mut conn, 400, "text/plain", b"not JSON"),
            }
        }
        _ => respond(&mut conn, 404, "text/plain", b"not found"),
    }
}

fn serve(
    conn: &mut TcpStream,
    dir: &std::path::Path,
    name: &str,
    content_type: &str,
) -> io::Result<()> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => respond(conn, 200, content_type, &bytes),
        Err(_) => respond(conn, 404, "text/plain", b"missing page file"),
    }
}

fn respond(conn: &mut TcpStream, code: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
    let reason = match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Write);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
