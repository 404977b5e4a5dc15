//! The signaling thread: one synchronous WebSocket to the server, reconnected with backoff
//!
//! The thread moves frames only. It parses what the server sends with
//! [`ServerFrame::parse`] and hands typed frames to the core thread; it writes the JSON the
//! core thread gives it. When the connection drops it tells the core thread, waits (with
//! exponential backoff) and reconnects; what to say on the new connection is the core
//! thread's business.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use meshrtc::signal::ServerFrame;
use tungstenite::http::Uri;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::{Error, Result};

/// How long the signaling thread blocks reading the WebSocket before it checks for frames
/// to send
///
/// This bounds the extra latency of an outgoing signaling message (offers, answers,
/// candidates). Signaling is not on the media path; 10 ms costs a handshake a few tens of
/// milliseconds at most and keeps the idle thread at 100 wake-ups a second.
pub const SIGNAL_POLL: Duration = Duration::from_millis(10);

/// The largest frame accepted from a server
///
/// An announce result lists a whole room's metadata; 1 MiB is far above any legitimate
/// frame and still bounds memory.
const MAX_SERVER_FRAME: usize = 1024 * 1024;

/// How long closing waits for the server to finish the closing handshake
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// A write that takes longer than this means the server is gone
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the signaling thread waits between reconnection attempts
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first attempt after a loss
    pub initial: Duration,
    /// The longest wait; each failed attempt doubles the wait up to this
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 2 s
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

/// What the signaling thread tells the core thread
#[derive(Debug)]
pub(crate) enum SignalIn {
    /// A frame from the server
    Frame(ServerFrame),
    /// The connection is gone; the thread is reconnecting
    Lost(String),
    /// A new connection is up (after a `Lost`); nothing has been sent on it yet
    Connected,
}

/// What the core thread tells the signaling thread
#[derive(Debug)]
pub(crate) enum SignalOut {
    /// Send this JSON text frame
    Frame(String),
    /// Send what is queued, close the connection and end the thread
    Close,
}

pub(crate) type Ws = WebSocket<TcpStream>;

/// Checks that `url` is `ws://host:port/path` and returns where to connect
pub(crate) fn parse_url(url: &str) -> Result<(String, u16)> {
    let bad = |reason: &str| Error::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("ws") {
        return Err(bad("only ws:// is supported"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), uri.port_u16().unwrap_or(80)))
}

/// Opens a WebSocket to `url`, failing after `timeout`
pub(crate) fn connect(url: &str, timeout: Duration) -> Result<Ws> {
    let (host, port) = parse_url(url)?;
    let fail = |reason: String| Error::SignalConnect {
        url: url.to_string(),
        reason,
    };
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .collect();
    let mut last = String::from("no address");
    for addr in addrs {
        let tcp = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(t) => t,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        // Signaling frames are small and latency matters more than batching.
        let _ = tcp.set_nodelay(true);
        // The handshake may block at most `timeout`; then reads poll.
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(WRITE_TIMEOUT)))
            .map_err(|e| fail(e.to_string()))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_SERVER_FRAME))
            .max_frame_size(Some(MAX_SERVER_FRAME));
        let (ws, _response) = tungstenite::client::client_with_config(url, tcp, Some(config))
            .map_err(|e| fail(e.to_string()))?;
        ws.get_ref()
            .set_read_timeout(Some(SIGNAL_POLL))
            .map_err(|e| fail(e.to_string()))?;
        return Ok(ws);
    }
    Err(fail(last))
}

/// How one connection ended
enum End {
    /// The core thread asked to close (or is gone): the thread ends
    Finished,
    /// The connection broke
    Lost(String),
}

/// The thread's body: serve the connection, reconnect after a loss, until told to close
pub(crate) fn run(
    first: Ws,
    url: String,
    backoff: Backoff,
    connect_timeout: Duration,
    out: Receiver<SignalOut>,
    into_core: SyncSender<SignalIn>,
) {
    let mut ws = Some(first);
    let mut delay = backoff.initial;
    loop {
        if let Some(mut socket) = ws.take() {
            match serve(&mut socket, &out, &into_core) {
                End::Finished => {
                    close(socket);
                    return;
                }
                End::Lost(reason) => {
                    tracing::debug!(%reason, "signaling connection lost; reconnecting");
                    if into_core.send(SignalIn::Lost(reason)).is_err() {
                        return;
                    }
                    delay = backoff.initial;
                }
            }
        }
        if !wait_discarding(&out, delay) {
            return;
        }
        match connect(&url, connect_timeout) {
            Ok(socket) => {
                // Whatever the core queued before this point was meant for the old connection.
                if !wait_discarding(&out, Duration::ZERO) {
                    return;
                }
                tracing::debug!(%url, "signaling connection restored");
                if into_core.send(SignalIn::Connected).is_err() {
                    return;
                }
                ws = Some(socket);
            }
            Err(e) => {
                tracing::debug!(%e, ?delay, "signaling reconnect failed");
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}

/// Waits `delay` while no connection is up, dropping frames; false when told to close
fn wait_discarding(out: &Receiver<SignalOut>, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let next = if left.is_zero() {
            out.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            out.recv_timeout(left)
        };
        match next {
            Ok(SignalOut::Frame(_)) => continue,
            Ok(SignalOut::Close) | Err(RecvTimeoutError::Disconnected) => return false,
            Err(RecvTimeoutError::Timeout) => return true,
        }
    }
}

/// Moves frames both ways until the connection breaks or the core thread says close
fn serve(ws: &mut Ws, out: &Receiver<SignalOut>, into_core: &SyncSender<SignalIn>) -> End {
    loop {
        loop {
            match out.try_recv() {
                Ok(SignalOut::Frame(text)) => {
                    if let Err(e) = ws.send(Message::text(text)) {
                        return End::Lost(e.to_string());
                    }
                }
                Ok(SignalOut::Close) | Err(TryRecvError::Disconnected) => return End::Finished,
                Err(TryRecvError::Empty) => break,
            }
        }
        match ws.read() {
            Ok(Message::Text(text)) => match ServerFrame::parse(text.as_str()) {
                Ok(frame) => {
                    if into_core.send(SignalIn::Frame(frame)).is_err() {
                        return End::Finished;
                    }
                }
                Err(failure) => tracing::debug!(%failure, "invalid frame from signaling server"),
            },
            // Pings are answered by tungstenite on the next read or write.
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return End::Lost("closed by the server".into())
            }
            Err(e) => return End::Lost(e.to_string()),
        }
    }
}

/// Closes the WebSocket, waiting briefly for the server's close frame
fn close(mut ws: Ws) {
    if ws.close(None).is_err() {
        return;
    }
    let until = Instant::now() + CLOSE_GRACE;
    while Instant::now() < until {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("ws://127.0.0.1:8080/").unwrap(),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(parse_url("ws://[::1]:9/rpc").unwrap(), ("::1".into(), 9));
        assert_eq!(parse_url("ws://host/").unwrap(), ("host".into(), 80));
        assert!(matches!(
            parse_url("wss://host/"),
            Err(Error::BadUrl { .. })
        ));
        assert!(matches!(parse_url("nope"), Err(Error::BadUrl { .. })));
    }

    #[test]
    fn connect_refused_is_a_connect_error() {
        // Bind then drop: the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("ws://127.0.0.1:{port}/");
        assert!(matches!(
            connect(&url, Duration::from_secs(1)),
            Err(Error::SignalConnect { .. })
        ));
    }
}
