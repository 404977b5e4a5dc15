//! The signaling client: one WebSocket to the server, JSON-RPC frames in and out

use std::time::Duration;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use meshrtc::signal::{ClientFrame, ServerFrame};
use tokio::net::TcpStream;

use meshrtc_driver::SignalUrl;

/// How long [`SignalClient::close`] waits for the server to finish the closing handshake
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long opening a connection (TCP and the WebSocket handshake) may take
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A frame the server does not take within this long means it is gone
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest frame the client accepts from a server
///
/// An announce result lists a whole room's metadata; 1 MiB is far above any legitimate
/// frame and still bounds memory.
const MAX_SERVER_FRAME: usize = 1024 * 1024;

/// What [`SignalClient::recv`] got
#[derive(Debug)]
pub enum SignalEvent {
    /// A response or notification from the server
    Frame(ServerFrame),
    /// A frame that is not a valid server frame (it is skipped; the connection goes on)
    Invalid(String),
    /// The connection is gone (closed by the server, or an IO error), with the reason
    Closed(String),
}

/// A WebSocket connection to a signaling server speaking `contracts/signaling.md`
///
/// WebSocket pings are answered automatically while [`recv`](Self::recv) is being polled.
#[derive(Debug)]
pub struct SignalClient {
    ws: WebSocketStream<TokioAdapter<TcpStream>>,
    closed: Option<String>,
}

impl SignalClient {
    /// Connects to `url` (`ws://host:port/path`), failing after `CONNECT_TIMEOUT`
    ///
    /// The error says why, naming the URL.
    pub async fn connect(url: String) -> Result<Self, String> {
        let url = url.as_str();
        let timeout = CONNECT_TIMEOUT;
        let SignalUrl { host, port } = SignalUrl::parse(url).map_err(|e| e.to_string())?;
        let fail = |reason: String| format!("{url}: {reason}");
        let connect = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            // Signaling frames are small and latency matters more than batching.
            let _ = tcp.set_nodelay(true);
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_SERVER_FRAME))
                .max_frame_size(Some(MAX_SERVER_FRAME));
            let (ws, _response) =
                async_tungstenite::tokio::client_async_with_config(url, tcp, Some(config))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            Ok(Self { ws, closed: None })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| fail(format!("timed out after {timeout:?}")))?
    }

    /// Sends one request frame
    ///
    /// An error (why the connection is unusable) means [`recv`](Self::recv) will report
    /// [`SignalEvent::Closed`]. A server that does not take the frame within
    /// `WRITE_TIMEOUT` counts as gone: the driver must never stall on signaling.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), String> {
        if let Some(reason) = &self.closed {
            return Err(reason.clone());
        }
        let sent =
            tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(Message::text(frame.to_json())));
        let reason = match sent.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("send failed: {e}"),
            Err(_) => format!("send took longer than {WRITE_TIMEOUT:?}"),
        };
        self.closed = Some(reason.clone());
        Err(reason)
    }

    /// Waits for the next frame from the server
    ///
    /// Cancel-safe: a frame is never lost when the future is dropped before it completes.
    /// After [`SignalEvent::Closed`] every call returns `Closed` again at once.
    pub async fn recv(&mut self) -> SignalEvent {
        loop {
            if let Some(reason) = &self.closed {
                return SignalEvent::Closed(reason.clone());
            }
            let msg = match self.ws.next().await {
                None => {
                    self.closed = Some("connection closed".into());
                    continue;
                }
                Some(Err(e)) => {
                    self.closed = Some(e.to_string());
                    continue;
                }
                Some(Ok(msg)) => msg,
            };
            match msg {
                Message::Text(text) => {
                    return match ServerFrame::parse(&text) {
                        Ok(frame) => SignalEvent::Frame(frame),
                        Err(e) => SignalEvent::Invalid(format!("{e}: {text}")),
                    }
                }
                Message::Binary(b) => {
                    return SignalEvent::Invalid(format!("binary frame of {} bytes", b.len()))
                }
                Message::Close(frame) => {
                    let reason = frame.map_or_else(
                        || "closed by server".to_string(),
                        |f| format!("closed by server: {} {}", f.code, f.reason),
                    );
                    self.closed = Some(reason);
                }
                // Pings are answered by tungstenite itself on the next read or write.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Closes the connection, waiting briefly for the server's side of the handshake
    pub async fn close(mut self) {
        if self.closed.is_some() {
            return;
        }
        let finish = async {
            if self.ws.close(None).await.is_err() {
                return;
            }
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, finish).await;
    }
}
