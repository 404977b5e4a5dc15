//! The UDP socket: large kernel buffers, batched receive (`recvmmsg`, GRO) and batched send
//! (GSO) via `quinn-udp`

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

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
        Ok(Self {
            socket,
            state,
            local,
        })
    }

    /// The bound address (a host candidate)
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
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
            match self.send(batch.destination, contents, segment_size).await {
                Ok(()) => {}
                Err(e) if segment_size.is_some() => {
                    // A kernel or device without working GSO (quinn-udp now knows and
                    // sends no more batches): the batch goes out datagram by datagram.
                    tracing::debug!(%e, "gso send failed; sending one by one");
                    for d in contents.chunks(batch.segment) {
                        if let Err(e) = self.send(batch.destination, d, None).await {
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
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
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

    /// Queues one datagram; `max_segments` is [`UdpIo::max_segments`]
    pub(crate) fn push(&mut self, destination: SocketAddr, contents: &[u8], max_segments: usize) {
        let start = self.data.len();
        self.count += 1;
        self.data.extend_from_slice(contents);
        let end = self.data.len();
        if let Some(b) = self.batches.last_mut() {
            let fits = b.destination == destination
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

    /// The datagrams of the first `filled` slots, GRO batches split at their stride
    pub(crate) fn datagrams(&self, filled: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta[..filled]
            .iter()
            .zip(self.data.chunks(SLOT_BYTES))
            .flat_map(|(meta, slot)| {
                let stride = meta.stride.max(1);
                slot[..meta.len].chunks(stride).map(move |d| (meta.addr, d))
            })
    }
}
