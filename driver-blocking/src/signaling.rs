//! The signaling thread: one synchronous WebSocket to the server at a time
//!
//! The thread moves frames only. It opens a connection when the core thread asks (the core
//! session decides when, with its own backoff), reports it up or down, parses what the
//! server sends with [`ServerFrame::parse`] and writes the JSON the core thread gives it.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use meshrtc::signal::{ClientFrame, ServerFrame};
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
                    // Signaling is a few frames a second at most: naming them is cheap.
                    let method = ClientFrame::parse(&text).map_or("?", |f| f.request.method());
                    if let Err(e) = ws.send(Message::text(text)) {
                        tracing::debug!(%e, method, "signaling frame not written");
                        return End::Lost(e.to_string());
                    }
                    tracing::debug!(method, "signaling frame written");
                }
                Ok(SignalOut::Disconnect) => {
                    tracing::debug!("closing the signaling connection");
                    return End::Disconnect;
                }
                // Already connected: a second request changes nothing.
                Ok(SignalOut::Connect) => {}
                Err(TryRecvError::Disconnected) => return End::Finished,
                Err(TryRecvError::Empty) => break,
            }
        }
        match ws.read() {
            Ok(Message::Text(text)) => match ServerFrame::parse(text.as_str()) {
                Ok(frame) => {
                    // The core thread is gone. What it queued last (its `peer.disconnect`,
                    // when it left) must still be written: the next turn finds that in
                    // `out`, or finds `out` closed and empty. Returning at once would close
                    // the WebSocket without it, and the server would hold our place for
                    // its resume grace instead of telling the room we left.
                    if into_core.send(SignalIn::Frame(frame)).is_err() {
                        tracing::debug!("the core thread is gone; frame from the server dropped");
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

    /// The core thread leaves and ends while this thread is handing it a frame from the
    /// server (in a room, a peer that saw our DTLS close offers again at once): the queued
    /// `peer.disconnect` is still written before the WebSocket closes. It was not, once:
    /// the server then held our place for its resume grace and the room heard nothing.
    #[test]
    fn queued_frames_are_written_when_the_core_thread_is_gone() {
        use meshrtc::signal::{Notification, PeerId, Request, RequestId};
        use std::sync::mpsc;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            // Two offers: the first fills the core's channel, the second blocks the thread.
            for _ in 0..2 {
                let offer = ServerFrame::Notification(Notification::Offer {
                    from: PeerId::new("alpha").unwrap(),
                    sdp: "v=0".into(),
                });
                ws.send(Message::text(offer.to_json())).unwrap();
            }
            let mut methods = Vec::new();
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        let frame = ClientFrame::parse(t.as_str()).expect("a client frame");
                        methods.push(frame.request.method());
                    }
                    Ok(_) => {}
                    Err(_) => return methods,
                }
            }
        });
        let (out_tx, out_rx) = mpsc::channel();
        let (in_tx, in_rx) = mpsc::sync_channel(1);
        let thread = std::thread::spawn(move || run(url, out_rx, in_tx));
        out_tx.send(SignalOut::Connect).unwrap();
        assert!(matches!(
            in_rx.recv_timeout(Duration::from_secs(10)),
            Ok(SignalIn::Up)
        ));
        // The first offer fills the channel; the thread then reads the second and blocks
        // handing it over (reading it takes microseconds; this waits far longer).
        std::thread::sleep(Duration::from_millis(300));
        // The core thread leaves and ends: its last frames are queued, then both of its
        // channel ends go (the sender first, as when its driver is dropped).
        let bye = ClientFrame {
            id: RequestId::Number(9),
            request: Request::Disconnect,
        };
        out_tx.send(SignalOut::Frame(bye.to_json())).unwrap();
        out_tx.send(SignalOut::Disconnect).unwrap();
        drop(out_tx);
        drop(in_rx);
        thread.join().unwrap();
        assert_eq!(server.join().unwrap(), vec!["peer.disconnect"]);
    }

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
