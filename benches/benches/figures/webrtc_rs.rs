//! Two webrtc-rs (crate `webrtc`) peers in this process, on loopback UDP only
//!
//! The same measurement as meshrtc's: a reliable ordered data channel, `total` bytes in
//! messages of `size` bytes from the offerer to the answerer, MB/s from the moment the
//! channel is open on the sending side until the last message arrives, and the longest
//! gap between two deliveries (a stall shows up there).
//!
//! Network rule: only 127.0.0.1 is ever used. Each peer binds one UDP socket on
//! `127.0.0.1:0` (webrtc-rs derives its host candidates from the sockets it binds; this
//! version has no IP or interface filter in its `SettingEngine`, binding is the filter),
//! has no STUN or TURN server, mDNS disabled, loopback candidates allowed and UDP over
//! IPv4 only. Every candidate gathered, and every candidate line of both descriptions, is
//! checked to be a 127.0.0.1 host candidate before the descriptions are exchanged; the run
//! stops otherwise. `MESHRTC_BENCH_VERBOSE=1` prints them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, Notify};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateType, RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// The buffered amount above which the sender pauses (`bufferedAmount` high-water mark),
/// as in webrtc-rs's own flow-control example; `MESHRTC_BENCH_WEBRTC_HIGH_KIB` overrides it
const BUFFERED_HIGH: u32 = 1024 * 1024;
/// The buffered amount below which a paused sender resumes (`bufferedamountlow`), as in
/// webrtc-rs's example; `MESHRTC_BENCH_WEBRTC_LOW_KIB` overrides it
const BUFFERED_LOW: u32 = 512 * 1024;

/// `name` (KiB) from the environment in bytes, or `default`
fn kib_from_env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |k| k * 1024)
}

/// Kernel socket buffer for webrtc-rs's sockets: meshrtc-tokio's default, or
/// `MESHRTC_BENCH_WEBRTC_SOCKET_KIB` (0 keeps the kernel's default)
pub fn socket_buffer() -> usize {
    std::env::var("MESHRTC_BENCH_WEBRTC_SOCKET_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(meshrtc_tokio::DEFAULT_SOCKET_BUFFER, |k| k * 1024)
}

fn verbose() -> bool {
    std::env::var_os("MESHRTC_BENCH_VERBOSE").is_some_and(|v| v != "0")
}

/// webrtc-rs's tokio runtime, with the UDP sockets it binds given `buffer` bytes of kernel
/// receive and send buffer, as meshrtc-tokio gives its own (`DEFAULT_SOCKET_BUFFER`)
///
/// webrtc 0.21 binds its sockets itself and has no setting for their buffers; its
/// `Runtime::wrap_udp_socket` is where every bound socket passes, so this runtime sizes them
/// there and hands everything else to `TokioRuntime` unchanged.
#[derive(Debug)]
struct BufferedRuntime {
    inner: TokioRuntime,
    buffer: usize,
}

impl Runtime for BufferedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let s = socket2::SockRef::from(&socket);
        if self.buffer > 0 {
            s.set_recv_buffer_size(self.buffer)?;
            s.set_send_buffer_size(self.buffer)?;
        }
        if verbose() {
            println!(
                "    webrtc-rs socket {:?}: receive buffer {} B, send buffer {} B",
                socket.local_addr(),
                s.recv_buffer_size()?,
                s.send_buffer_size()?
            );
        }
        self.inner.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio, sized socket buffers"
    }
}

/// Events of one peer connection the bench waits for
struct Handler {
    name: &'static str,
    gathered: Arc<Notify>,
    connected: Arc<Notify>,
    failed: Arc<Notify>,
    /// The answerer's remote data channel
    channel: Mutex<Option<oneshot::Sender<Arc<dyn DataChannel>>>>,
}

impl Handler {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            gathered: Arc::new(Notify::new()),
            connected: Arc::new(Notify::new()),
            failed: Arc::new(Notify::new()),
            channel: Mutex::new(None),
        })
    }
}

/// Wrapper so that one `Arc<Handler>` can be kept by the bench and given to webrtc-rs
struct Shared(Arc<Handler>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Shared {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let c = &event.candidate;
        if verbose() {
            println!(
                "    webrtc-rs {} gathered {} {}:{} ({:?})",
                self.0.name, c.typ, c.address, c.port, c.protocol
            );
        }
        // The descriptions are checked again before they are exchanged; this catches a
        // stray candidate as early as it appears.
        assert!(
            c.address == "127.0.0.1" && c.typ == RTCIceCandidateType::Host,
            "webrtc-rs {} gathered a non-loopback candidate {}:{} ({}); stopping",
            self.0.name,
            c.address,
            c.port,
            c.typ
        );
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.0.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        match state {
            RTCPeerConnectionState::Connected => self.0.connected.notify_one(),
            RTCPeerConnectionState::Failed => self.0.failed.notify_one(),
            _ => {}
        }
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        // Hand it over and return at once: the driver waits for this callback.
        let tx = self.0.channel.lock().expect("not poisoned").take();
        if let Some(tx) = tx {
            let _ = tx.send(data_channel);
        }
    }
}

async fn peer(handler: &Arc<Handler>) -> impl PeerConnection {
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(true)
        .with_network_types(vec![rtc::ice::network_type::NetworkType::Udp4]);
    let settings = match std::env::var("MESHRTC_BENCH_WEBRTC_RWND_KIB") {
        Ok(k) => settings.with_sctp_max_receive_buffer_size(
            k.parse::<u32>()
                .expect("MESHRTC_BENCH_WEBRTC_RWND_KIB: KiB")
                * 1024,
        ),
        Err(_) => settings,
    }
    .build();
    PeerConnectionBuilder::new()
        // No ICE servers: no STUN, no TURN, host candidates only.
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_handler(Arc::new(Shared(handler.clone())))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .with_runtime(Arc::new(BufferedRuntime {
            inner: TokioRuntime,
            buffer: socket_buffer(),
        }))
        .build()
        .await
        .expect("a webrtc-rs peer connection")
}

/// Waits for `notify`, failing if `failed` fires first or time runs out
async fn wait(what: &str, notify: &Notify, failed: &Notify) {
    tokio::select! {
        () = notify.notified() => {}
        () = failed.notified() => panic!("webrtc-rs: connection failed waiting for {what}"),
        () = tokio::time::sleep(Duration::from_secs(20)) => {
            panic!("webrtc-rs: timed out waiting for {what}")
        }
    }
}

/// The local description once gathering is complete, checked to hold only 127.0.0.1 host
/// candidates (and at least one)
async fn gathered_description(pc: &impl PeerConnection, h: &Handler) -> RTCSessionDescription {
    wait("ICE gathering", &h.gathered, &h.failed).await;
    let desc = pc.local_description().await.expect("a local description");
    let candidates: Vec<&str> = desc
        .sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .collect();
    assert!(
        !candidates.is_empty(),
        "webrtc-rs {}: no candidate in the description",
        h.name
    );
    for c in &candidates {
        // foundation component transport priority address port "typ" type ...
        let f: Vec<&str> = c.split_whitespace().collect();
        let loopback_host = f.len() >= 8 && f[4] == "127.0.0.1" && f[6] == "typ" && f[7] == "host";
        assert!(
            loopback_host,
            "webrtc-rs {}: a non-loopback candidate in the description: {c}; stopping",
            h.name
        );
        if verbose() {
            println!("    webrtc-rs {} describes a={c}", h.name);
        }
    }
    desc
}

/// MB/s from the offerer to the answerer, and the longest gap between two deliveries in ms
pub async fn loopback(size: usize, total: usize) -> (f64, f64) {
    let count = total / size;
    let off_h = Handler::new("offerer");
    let ans_h = Handler::new("answerer");
    let (channel_tx, channel_rx) = oneshot::channel();
    *ans_h.channel.lock().expect("not poisoned") = Some(channel_tx);

    let offerer = peer(&off_h).await;
    let answerer = peer(&ans_h).await;

    // Reliable and ordered, as meshrtc's channel is (the defaults).
    let dc = offerer
        .create_data_channel("bench", Some(RTCDataChannelInit::default()))
        .await
        .expect("a data channel");

    // Offer/answer with complete candidate lists (no trickling), checked before exchange.
    let offer = offerer.create_offer(None).await.expect("an offer");
    offerer
        .set_local_description(offer)
        .await
        .expect("offer applied");
    let offer = gathered_description(&offerer, &off_h).await;
    answerer
        .set_remote_description(offer)
        .await
        .expect("offer accepted");
    let answer = answerer.create_answer(None).await.expect("an answer");
    answerer
        .set_local_description(answer)
        .await
        .expect("answer applied");
    let answer = gathered_description(&answerer, &ans_h).await;
    offerer
        .set_remote_description(answer)
        .await
        .expect("answer accepted");
    wait("connected (offerer)", &off_h.connected, &off_h.failed).await;
    wait("connected (answerer)", &ans_h.connected, &ans_h.failed).await;

    let remote = tokio::time::timeout(Duration::from_secs(20), channel_rx)
        .await
        .expect("the remote data channel in time")
        .expect("the remote data channel");

    // Set by the sender when its channel is open, before the first message goes out.
    let started: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, Duration, Instant)>(1);
    let receiver = tokio::spawn({
        let started = started.clone();
        async move {
            let mut received = 0;
            let mut bytes = 0;
            let mut last: Option<Instant> = None;
            let mut max_gap = Duration::ZERO;
            while let Some(event) = remote.poll().await {
                match event {
                    DataChannelEvent::OnMessage(msg) => {
                        let now = Instant::now();
                        let prev = last.or_else(|| started.get().copied()).unwrap_or(now);
                        max_gap = max_gap.max(now.saturating_duration_since(prev));
                        last = Some(now);
                        received += 1;
                        bytes += msg.data.len();
                        if received == count {
                            let _ = done_tx.send((bytes, max_gap, now)).await;
                        }
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        }
    });

    let low = kib_from_env("MESHRTC_BENCH_WEBRTC_LOW_KIB", BUFFERED_LOW);
    let high = kib_from_env("MESHRTC_BENCH_WEBRTC_HIGH_KIB", BUFFERED_HIGH);
    dc.set_buffered_amount_low_threshold(low)
        .await
        .expect("low threshold set");
    dc.set_buffered_amount_high_threshold(high)
        .await
        .expect("high threshold set");
    let sender = tokio::spawn({
        let started = started.clone();
        async move {
            let payload = BytesMut::from(vec![0x5a; size].as_slice());
            let mut open = false;
            let mut paused = false;
            let mut sent = 0;
            let mut pauses = 0u64;
            // Flow control as a browser application does it: send while the buffered
            // amount is under the high-water mark, pause on `OnBufferedAmountHigh`, resume
            // on `OnBufferedAmountLow`. Events are drained without waiting between sends.
            while sent < count {
                let event = if !open || paused {
                    dc.poll().await
                } else {
                    match dc.poll().now_or_never() {
                        Some(event) => event,
                        None => {
                            dc.send(payload.clone()).await.expect("sent");
                            sent += 1;
                            continue;
                        }
                    }
                };
                match event {
                    Some(DataChannelEvent::OnOpen) => {
                        let _ = started.set(Instant::now());
                        open = true;
                    }
                    Some(DataChannelEvent::OnBufferedAmountHigh) => {
                        paused = true;
                        pauses += 1;
                    }
                    Some(DataChannelEvent::OnBufferedAmountLow) => paused = false,
                    Some(DataChannelEvent::OnClose) | None => panic!("webrtc-rs: channel closed"),
                    Some(_) => {}
                }
            }
            (dc, pauses)
        }
    });

    let (bytes, max_gap, finished) = tokio::time::timeout(Duration::from_secs(120), done_rx.recv())
        .await
        .expect("webrtc-rs: all data in time")
        .expect("webrtc-rs: receiver alive");
    let (dc, pauses) = sender.await.expect("sender done");
    assert_eq!(bytes, count * size, "webrtc-rs: every byte, in its message");
    let secs = finished
        .saturating_duration_since(*started.get().expect("started"))
        .as_secs_f64();
    if verbose() {
        println!(
            "    webrtc-rs sender paused {pauses} times on the high-water mark \
             ({} KiB, resuming under {} KiB)",
            high / 1024,
            low / 1024
        );
    }
    let _ = dc.close().await;
    let _ = offerer.close().await;
    let _ = answerer.close().await;
    receiver.abort();
    (
        (count * size) as f64 / secs / 1e6,
        max_gap.as_secs_f64() * 1e3,
    )
}
