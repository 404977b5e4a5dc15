//! The signaling thread: one synchronous WebSocket to the server at a time
//!
//! The thread moves frames only. It opens a connection when the core thread asks (the core
//! session decides when, with its own backoff), reports it up or down, parses what the
//! server sends with [`ServerFrame::parse`] and writes the JSON the core thread gives it.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use meshrtc::signal::ServerFrame;
use meshrtc_driver::SignalUrl;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

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

/// How long opening a connection (TCP and the WebSocket handshake) may take
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the signaling thread tells the core thread
#[derive(Debug)]
pub(crate) enum SignalIn {
    /// A frame from the server
    Frame(ServerFrame),
    /// The connection asked for is up; nothing has been sent on it yet
    Up,
    /// The connection failed to open or is gone
    Down(String),
}

/// What the core thread tells the signaling thread
#[derive(Debug)]
pub(crate) enum SignalOut {
    /// Open a connection (after a `Down`, or the first)
    Connect,
    /// Send this JSON text frame
    Frame(String),
    /// Close the connection (what is queued before this is sent first)
    Disconnect,
}

pub(crate) type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to `url`, failing after `timeout`; the error names the URL and says why
fn connect(url: &str, timeout: Duration) -> Result<Ws, String> {
    let SignalUrl { host, port } = SignalUrl::parse(url).map_err(|e| e.to_string())?;
    let fail = |reason: String| format!("{url}: {reason}");
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
    /// The core thread asked to close
    Disconnect,
    /// The core thread is gone: the thread ends
    Finished,
    /// The connection broke
    Lost(String),
}

/// The thread's body: open a connection when asked, serve it until it ends, report
pub(crate) fn run(url: String, out: Receiver<SignalOut>, into_core: SyncSender<SignalIn>) {
    loop {
        // Wait for the core thread to ask for a connection; frames meanwhile have nowhere
        // to go (the core thread does not send any while it has no connection).
        match out.recv() {
            Ok(SignalOut::Connect) => {}
            Ok(SignalOut::Frame(_) | SignalOut::Disconnect) => continue,
            Err(_) => return,
        }
        let mut ws = match connect(&url, CONNECT_TIMEOUT) {
            Ok(ws) => ws,
            Err(reason) => {
                if into_core.send(SignalIn::Down(reason)).is_err() {
                    return;
                }
                continue;
            }
        };
        if into_core.send(SignalIn::Up).is_err() {
            return;
        }
        match serve(&mut ws, &out, &into_core) {
            End::Finished => {
                close(ws);
                return;
            }
            End::Disconnect => close(ws),
            End::Lost(reason) => {
                if into_core.send(SignalIn::Down(reason)).is_err() {
                    return;
                }
            }
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
                Ok(SignalOut::Disconnect) => return End::Disconnect,
                // Already connected: a second request changes nothing.
                Ok(SignalOut::Connect) => {}
                Err(TryRecvError::Disconnected) => return End::Finished,
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
    fn connect_refused_names_the_url() {
        // Bind then drop: the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("ws://127.0.0.1:{port}/");
        let err = connect(&url, Duration::from_secs(1)).unwrap_err();
        assert!(err.contains(&url), "{err}");
    }
}
