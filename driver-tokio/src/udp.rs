//! The UDP socket: large kernel buffers, batched receive (`recvmmsg`, GRO) and batched send
//! (GSO) via `quinn-udp`
//!
//! A socket bound on the wildcard serves every interface address: the local address of each
//! datagram received comes from the kernel (`IP_PKTINFO`, quinn-udp's `dst_ip`), and each
//! datagram sent names its source address the same way, so that a reply leaves from the
//! address (host candidate) the peer sent to. A dual-stack `[::]` socket sees IPv4 peers
//! under IPv4-mapped addresses; they are mapped back before the core sees them and mapped
//! again when sending.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagram slots filled by one receive call
///
/// Eight `recvmmsg` slots already empty a loopback burst in a few calls; more only cost
/// memory (each slot holds a GRO batch).
const RECV_SLOTS: usize = 8;

/// Bytes of one receive slot: the largest UDP payload, which also bounds a GRO batch
const SLOT_BYTES: usize = 64 * 1024;

/// A bound UDP socket with `quinn-udp`'s per-socket state
#[derive(Debug)]
pub(crate) struct UdpIo {
    socket: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    /// Bound on the wildcard: addresses come from and go to the kernel per datagram
    wildcard: bool,
    /// A dual-stack IPv6 socket: IPv4 addresses travel IPv4-mapped
    dual_stack: bool,
}

impl UdpIo {
    /// Binds `addr` with receive and send buffers of `buffer_bytes`
    /// ([`meshrtc_driver::bind_udp`]); must be called inside a tokio runtime
    pub(crate) fn bind(addr: SocketAddr, buffer_bytes: usize) -> meshrtc_driver::Result<Self> {
        let err = |source| meshrtc_driver::Error::Bind { addr, source };
        let std_socket = meshrtc_driver::bind_udp(addr, buffer_bytes)?;
        std_socket.set_nonblocking(true).map_err(err)?;
        let state = UdpSocketState::new(UdpSockRef::from(&std_socket)).map_err(err)?;
        let socket = UdpSocket::from_std(std_socket).map_err(err)?;
        let local = socket.local_addr().map_err(err)?;
        let wildcard = local.ip().is_unspecified();
        Ok(Self {
            socket,
            state,
            local,
            wildcard,
            dual_stack: wildcard && local.is_ipv6(),
        })
    }

    /// The bound address (the host candidate, or the wildcard with the port)
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The local address a datagram arrived on, as the core wants it: the bound address,
    /// or (on the wildcard) the interface address the kernel reported
    pub(crate) fn destination(&self, dst_ip: Option<IpAddr>) -> SocketAddr {
        match dst_ip {
            Some(ip) if self.wildcard => SocketAddr::new(ip.to_canonical(), self.local.port()),
            _ => self.local,
        }
    }

    /// The source IP to put on a datagram from `source` (`None`: the bound address is the
    /// source anyway) and the destination as this socket's family writes it
    pub(crate) fn addresses(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> (Option<IpAddr>, SocketAddr) {
        if !self.wildcard {
            return (None, destination);
        }
        let map = |ip: IpAddr| match ip {
            IpAddr::V4(v4) if self.dual_stack => IpAddr::V6(v4.to_ipv6_mapped()),
            other => other,
        };
        let src = (!source.ip().is_unspecified()).then(|| map(source.ip()));
        (
            src,
            SocketAddr::new(map(destination.ip()), destination.port()),
        )
    }

    /// Waits for datagrams and receives a batch into `buf`; returns how many slots were filled
    ///
    /// Cancel-safe: nothing is received unless the future completes.
    pub(crate) async fn recv(&self, buf: &mut RecvBuf) -> io::Result<usize> {
        let RecvBuf { data, meta } = buf;
        self.socket
            .async_io(Interest::READABLE, || {
                let mut chunks = data.chunks_mut(SLOT_BYTES);
                let mut slices: [IoSliceMut<'_>; RECV_SLOTS] = std::array::from_fn(|_| {
                    // RecvBuf::new allocates exactly RECV_SLOTS slots; panic means bug.
                    IoSliceMut::new(chunks.next().expect("one chunk per slot"))
                });
                self.state
                    .recv(UdpSockRef::from(&self.socket), &mut slices, meta)
            })
            .await
    }

    /// Most datagrams one send may carry (GSO segments); 1 where the OS has no GSO
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments().min(MAX_SEGMENTS)
    }

    /// Sends every datagram of `outbox` (a batch per system call where GSO allows) and
    /// empties it, waiting while the kernel buffer is full
    ///
    /// UDP is unreliable, so a datagram the OS refuses is logged and dropped.
    pub(crate) async fn send_all(&self, outbox: &mut Outbox) {
        for batch in &outbox.batches {
            let contents = &outbox.data[batch.start..batch.end];
            let segments = contents.len().div_ceil(batch.segment);
            let segment_size = (segments > 1).then_some(batch.segment);
            match self
                .send(batch.source, batch.destination, contents, segment_size)
                .await
            {
                Ok(()) => {}
                Err(e) if segment_size.is_some() => {
                    // A kernel or device without working GSO (quinn-udp now knows and
                    // sends no more batches): the batch goes out datagram by datagram.
                    tracing::debug!(%e, "gso send failed; sending one by one");
                    for d in contents.chunks(batch.segment) {
                        if let Err(e) = self.send(batch.source, batch.destination, d, None).await {
                            tracing::debug!(%e, to = %batch.destination, "udp send failed");
                        }
                    }
                }
                Err(e) => tracing::debug!(%e, to = %batch.destination, "udp send failed"),
            }
        }
        outbox.clear();
    }

    async fn send(
        &self,
        source: Option<IpAddr>,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: source,
        };
        self.socket
            .async_io(Interest::WRITABLE, || {
                self.state
                    .try_send(UdpSockRef::from(&self.socket), &transmit)
            })
            .await
    }
}

/// GSO segments per send at most (Linux takes 64)
const MAX_SEGMENTS: usize = 64;

/// Bytes per GSO send at most: a UDP datagram's limit, with room for headers
const MAX_BATCH_BYTES: usize = 65_000;

/// Datagrams waiting to be sent, coalesced into GSO batches: runs of datagrams to one
/// destination, all of one size but the last, which may be shorter
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    data: Vec<u8>,
    count: usize,
    batches: Vec<Batch>,
}

#[derive(Debug)]
struct Batch {
    /// The source IP to name (wildcard sockets), see [`UdpIo::addresses`]
    source: Option<IpAddr>,
    destination: SocketAddr,
    segment: usize,
    start: usize,
    end: usize,
    /// A shorter datagram ended the batch
    closed: bool,
}

impl Outbox {
    fn clear(&mut self) {
        self.batches.clear();
        self.data.clear();
        self.count = 0;
    }

    /// Bytes waiting
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Datagrams waiting
    pub(crate) fn datagrams(&self) -> usize {
        self.count
    }

    /// Queues one datagram; `source` and `destination` as [`UdpIo::addresses`] gives them,
    /// `max_segments` is [`UdpIo::max_segments`]
    pub(crate) fn push(
        &mut self,
        source: Option<IpAddr>,
        destination: SocketAddr,
        contents: &[u8],
        max_segments: usize,
    ) {
        let start = self.data.len();
        self.count += 1;
        self.data.extend_from_slice(contents);
        let end = self.data.len();
        if let Some(b) = self.batches.last_mut() {
            let fits = b.destination == destination
                && b.source == source
                && !b.closed
                && !contents.is_empty()
                && contents.len() <= b.segment
                && (b.end - b.start) / b.segment < max_segments
                && end - b.start <= MAX_BATCH_BYTES;
            if fits {
                b.end = end;
                b.closed = contents.len() < b.segment;
                return;
            }
        }
        self.batches.push(Batch {
            source,
            destination,
            segment: contents.len().max(1),
            start,
            end,
            closed: false,
        });
    }
}

/// Buffers for one batched receive
#[derive(Debug)]
pub(crate) struct RecvBuf {
    data: Box<[u8]>,
    meta: [RecvMeta; RECV_SLOTS],
}

impl RecvBuf {
    pub(crate) fn new() -> Self {
        Self {
            data: vec![0; RECV_SLOTS * SLOT_BYTES].into_boxed_slice(),
            meta: [RecvMeta::default(); RECV_SLOTS],
        }
    }

    /// The datagrams of the first `filled` slots, GRO batches split at their stride: the
    /// source (IPv4-mapped addresses as IPv4), the local IP it arrived on when the kernel
    /// said (see [`UdpIo::destination`]), the bytes
    pub(crate) fn datagrams(
        &self,
        filled: usize,
    ) -> impl Iterator<Item = (SocketAddr, Option<IpAddr>, &[u8])> {
        self.meta[..filled]
            .iter()
            .zip(self.data.chunks(SLOT_BYTES))
            .flat_map(|(meta, slot)| {
                let stride = meta.stride.max(1);
                let source = meshrtc_driver::canonical(meta.addr);
                slot[..meta.len]
                    .chunks(stride)
                    .map(move |d| (source, meta.dst_ip, d))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A wildcard socket answers from the address it was reached on (here two loopback
    /// addresses of one socket), over IPv4 on a dual-stack socket
    #[tokio::test]
    async fn wildcard_socket_replies_from_the_address_it_was_reached_on() {
        let io = UdpIo::bind("[::]:0".parse().unwrap(), 1 << 16).unwrap();
        let port = io.local_addr().port();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = RecvBuf::new();
        for local in ["127.0.0.1", "127.0.0.2"] {
            let local: SocketAddr = SocketAddr::new(local.parse().unwrap(), port);
            peer.send_to(b"hello", local).unwrap();
            let filled = tokio::time::timeout(Duration::from_secs(2), io.recv(&mut buf))
                .await
                .expect("a datagram")
                .unwrap();
            let (source, dst, contents) = buf.datagrams(filled).next().unwrap();
            assert_eq!(source, peer.local_addr().unwrap(), "mapped back to IPv4");
            assert_eq!(io.destination(dst), local, "the address it was sent to");
            assert_eq!(contents, b"hello");

            let (src, to) = io.addresses(local, source);
            let mut outbox = Outbox::default();
            outbox.push(src, to, b"reply", io.max_segments());
            io.send_all(&mut outbox).await;
            let mut got = [0; 8];
            let (n, from) = peer.recv_from(&mut got).unwrap();
            assert_eq!((&got[..n], from), (&b"reply"[..], local));
        }
    }

    #[test]
    fn specific_sockets_need_no_addresses() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let io = UdpIo::bind("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
            let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
            assert_eq!(io.addresses(io.local_addr(), peer), (None, peer));
            assert_eq!(
                io.destination(Some("127.0.0.2".parse().unwrap())),
                io.local_addr()
            );
        });
    }
}
