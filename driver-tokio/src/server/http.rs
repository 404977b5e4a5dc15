//! The HTTP side of the signaling port: reading a request head, plain responses, and the
//! socket wrapper that replays the head to the WebSocket handshake and notes write progress

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest request head read, in bytes; larger gets 431
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// When a connection last wrote bytes to its socket
#[derive(Debug)]
pub(crate) struct Progress {
    base: Instant,
    /// Nanoseconds after `base`
    last: AtomicU64,
}

impl Progress {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn mark(&self) {
        let ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(ns, Ordering::Relaxed);
    }

    /// The last time bytes were written
    pub(crate) fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// A TCP connection whose first bytes (the request head already read) are read again, and
/// whose writes mark [`Progress`]
#[derive(Debug)]
pub(crate) struct ConnStream {
    head: Vec<u8>,
    at: usize,
    tcp: TcpStream,
    progress: Arc<Progress>,
}

impl ConnStream {
    pub(crate) fn new(tcp: TcpStream, progress: Arc<Progress>) -> Self {
        Self {
            head: Vec::new(),
            at: 0,
            tcp,
            progress,
        }
    }

    /// Reads until the end of an HTTP request head (`\r\n\r\n`), keeping the bytes to be
    /// read again; `Ok(None)` if the peer closed first, an error if the head is too large
    pub(crate) async fn read_head(&mut self) -> io::Result<Option<Head>> {
        let mut buf = [0u8; 2048];
        loop {
            if let Some(end) = find_head_end(&self.head) {
                return Head::parse(&self.head[..end]).map(Some);
            }
            if self.head.len() >= MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            let want = buf.len().min(MAX_HEAD - self.head.len());
            let n = self.tcp.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.head.extend_from_slice(&buf[..n]);
        }
    }

    /// Writes a whole response and closes the sending side
    pub(crate) async fn respond(&mut self, response: &Response<'_>, head_only: bool) {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
            response.status,
            response.reason,
            response.content_type,
            response.body.len()
        );
        for (name, value) in response.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(response.body);
        }
        let write = async {
            self.tcp.write_all(&bytes).await?;
            self.tcp.shutdown().await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), write).await {
            tracing::debug!(%e, "http response not written in time");
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

impl AsyncRead for ConnStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.head.len() {
            let n = buf.remaining().min(me.head.len() - me.at);
            buf.put_slice(&me.head[me.at..me.at + n]);
            me.at += n;
            if me.at == me.head.len() {
                me.head = Vec::new();
                me.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                me.progress.mark();
            }
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// What the server needs of a request head
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) method: String,
    /// The path without the query
    pub(crate) path: String,
    /// `Upgrade: websocket` was asked for
    pub(crate) upgrade: bool,
    pub(crate) origin: Option<String>,
}

impl Head {
    fn parse(bytes: &[u8]) -> io::Result<Self> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        match req.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(bad("incomplete head")),
            Err(e) => return Err(bad(&e.to_string())),
        }
        let target = req.path.unwrap_or("/");
        let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::trim)
        };
        let upgrade = header("upgrade").is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        });
        Ok(Self {
            method: req.method.unwrap_or("").to_string(),
            path,
            upgrade,
            origin: header("origin").map(str::to_string),
        })
    }
}

/// A complete, small HTTP response
pub(crate) struct Response<'a> {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) headers: &'a [(&'static str, &'static str)],
    pub(crate) body: &'a [u8],
}

impl<'a> Response<'a> {
    pub(crate) fn text(status: u16, reason: &'static str, body: &'a str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            headers: &[],
            body: body.as_bytes(),
        }
    }
}

/// An origin as compared against the allowlist: lower case, no trailing slash
pub(crate) fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_for_what_routing_needs() {
        let head = Head::parse(
            b"GET /rpc?x=1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\nOrigin: https://App.example/ \r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/rpc");
        assert!(head.upgrade);
        assert_eq!(head.origin.as_deref(), Some("https://App.example/"));
        assert_eq!(
            normalize_origin("https://App.example/"),
            "https://app.example"
        );
        let plain = Head::parse(b"HEAD /?room=r&id=i HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((plain.path.as_str(), plain.upgrade), ("/", false));
        assert!(Head::parse(b"\x00\x01 nonsense\r\n\r\n").is_err());
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }
}
