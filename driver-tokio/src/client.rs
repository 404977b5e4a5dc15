//! The signaling client: one WebSocket to the server, JSON-RPC frames in and out

use std::time::Duration;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::http::Uri;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use meshrtc::signal::{ClientFrame, ServerFrame};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// How long [`SignalClient::close`] waits for the server to finish the closing handshake
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
    /// Connects to `url` (`ws://host:port/path`), failing after `timeout`
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self> {
        let (host, port) = parse_url(url)?;
        let fail = |reason: String| Error::SignalConnect {
            url: url.to_string(),
            reason,
        };
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
    /// An error ([`Error::SignalLost`]) means the connection is unusable;
    /// [`recv`](Self::recv) will then report [`SignalEvent::Closed`].
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        if let Some(reason) = &self.closed {
            return Err(Error::SignalLost(reason.clone()));
        }
        let res = self.ws.send(Message::text(frame.to_json())).await;
        res.map_err(|e| {
            let reason = format!("send failed: {e}");
            self.closed = Some(reason.clone());
            Error::SignalLost(reason)
        })
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

/// Checks a signaling URL and returns its host and port
///
/// Only `ws://` is supported (no TLS); the port defaults to 80.
pub fn parse_url(url: &str) -> Result<(String, u16)> {
    let bad = |reason: &str| Error::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => return Err(bad("wss:// is not supported; use ws://")),
        Some(_) => return Err(bad("the scheme must be ws://")),
        None => return Err(bad("missing ws:// scheme")),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("missing host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("ws://127.0.0.1:8787/").unwrap(),
            ("127.0.0.1".to_string(), 8787)
        );
        assert_eq!(
            parse_url("ws://localhost/rpc").unwrap(),
            ("localhost".to_string(), 80)
        );
        assert_eq!(parse_url("ws://[::1]:9/").unwrap(), ("::1".to_string(), 9));
        for bad in [
            "",
            "127.0.0.1:8787",
            "http://x/",
            "wss://x/",
            "ws://",
            "not a url",
        ] {
            assert!(matches!(parse_url(bad), Err(Error::BadUrl { .. })), "{bad}");
        }
    }
}
