//! A session: one [`Participant`] on a UDP socket and a signaling connection, driven by one task

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use meshrtc::codec::testsrc::{SourceFrame, TestSources};
use meshrtc::codec::I420Frame;
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::{
    DataMessage, DropCounters, Input, Output, Participant, PeerStats, Receive, MAX_DATA_MESSAGE,
};
use tokio::sync::{mpsc, oneshot};

use crate::client::{SignalClient, SignalEvent};
use crate::clock::{SharedClock, TokioClock};
use crate::udp::{Outbox, RecvBuf, UdpIo};
use crate::{Error, Result};

/// Default size of the UDP socket's kernel receive and send buffers
///
/// Linux's default (208 KiB) overflows on loopback when a data channel sends at full rate,
/// and every drop stalls SCTP for a retransmission timeout.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Default number of data commands (`send`, `broadcast`) queued between a handle and its driver
///
/// When the queue is full, [`SessionHandle::send`] waits: that is the back-pressure an
/// application sees when a peer's channel cannot keep up.
pub const DEFAULT_COMMAND_QUEUE: usize = 1024;

/// Data commands served per wake-up at most, so that a busy application cannot starve
/// the socket and the timer
const DATA_BATCH: usize = 64;

/// Queued datagrams are sent once they reach this many bytes or this many datagrams, even in
/// the middle of a drain: GSO batches big enough to save system calls, small enough that the
/// remote starts on them (and acknowledges) while we go on. The count matters for small
/// datagrams: acknowledgements held back until a whole receive batch is done would leave the
/// sender waiting.
const OUTBOX_SEND_BYTES: usize = 16 * 1024;
const OUTBOX_SEND_DATAGRAMS: usize = 8;

/// How a [`Session`] is set up
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The signaling server, `ws://host:port/`
    pub signal_url: String,
    /// The room to join
    pub room: RoomId,
    /// Our peer id; `None` lets the server assign one
    pub peer_id: Option<PeerId>,
    /// Where the UDP socket binds; its address is the only local candidate (default
    /// `127.0.0.1:0`). It must be a specific unicast address.
    pub bind: SocketAddr,
    /// The participant's configuration (seed, capabilities, candidate policy, ...)
    ///
    /// `participant.seed` also seeds the driver thread's `fastrand` generator, which str0m
    /// draws from.
    pub participant: meshrtc::Config,
    /// Kernel receive and send buffer size of the UDP socket
    pub socket_buffer: usize,
    /// Data commands queued between the handle and the driver
    pub command_queue: usize,
    /// How long connecting to the server and announcing may take
    pub join_timeout: Duration,
    /// Where the driver reads the time
    pub clock: SharedClock,
    /// Test media to send on a schedule once joined (`meshrtc peer --audio tone --video
    /// testsrc`); `None` sends only what the application hands over
    pub test_sources: Option<TestSources>,
}

impl SessionConfig {
    /// A configuration with defaults for everything but the server and the room
    pub fn new(signal_url: impl Into<String>, room: RoomId) -> Self {
        Self {
            signal_url: signal_url.into(),
            room,
            peer_id: None,
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            participant: meshrtc::Config::default(),
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            command_queue: DEFAULT_COMMAND_QUEUE,
            join_timeout: Duration::from_secs(10),
            clock: SharedClock::new(TokioClock),
            test_sources: None,
        }
    }
}

/// Something that happened in a session
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// An event of the core (peer joined, connected, data received, left, failed, ...)
    Mesh(meshrtc::Event),
    /// The signaling connection is gone
    ///
    /// Connected peers keep working; no new peer can join us. Emitted at most once.
    SignalingLost {
        /// Why the connection ended
        reason: String,
    },
    /// A data message given to [`SessionHandle::send`] or [`SessionHandle::broadcast`] was
    /// not sent (the peer is unknown or gone, or has no data channel)
    SendFailed {
        /// The peer, for a unicast send
        peer: Option<PeerId>,
        /// Why
        error: meshrtc::Error,
    },
}

/// A snapshot of a session's counters
#[derive(Debug, Clone)]
pub struct SessionStats {
    /// Every remote peer that has a connection (connecting or connected), and the last
    /// figures of those that left
    pub peers: BTreeMap<PeerId, PeerStats>,
    /// Input the core dropped
    pub drops: DropCounters,
    /// Whether the signaling connection is still up
    pub signaling_connected: bool,
}

/// Entry point: joins a room and spawns the driver
#[derive(Debug)]
pub struct Session;

impl Session {
    /// Binds the UDP socket, connects to the signaling server, announces, and returns once the
    /// server accepted us
    ///
    /// Must be called within a tokio runtime (it times the join with tokio's timer).
    ///
    /// The driver runs on its own thread with a single-threaded tokio runtime, so that the
    /// thread-local `fastrand` str0m uses is seeded from `config.participant.seed`. The
    /// returned handle and event stream work from any runtime.
    pub async fn join(config: SessionConfig) -> Result<(SessionHandle, EventStream)> {
        if config.bind.ip().is_unspecified() || config.bind.ip().is_multicast() {
            return Err(Error::BadBindAddress(config.bind));
        }
        crate::client::parse_url(&config.signal_url)?;
        let join_timeout = config.join_timeout;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(config.command_queue.max(1));
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let name = format!(
            "meshrtc-{}",
            config.peer_id.as_ref().map_or("peer", |p| p.as_str())
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || drive(config, ready_tx, ctl_rx, data_rx, event_tx))
            .map_err(Error::Spawn)?;
        let joined = tokio::time::timeout(join_timeout, ready_rx)
            .await
            .map_err(|_| Error::JoinTimeout(join_timeout))?
            .map_err(|_| Error::SessionEnded)??;
        let handle = SessionHandle {
            peer_id: joined.peer_id,
            room: joined.room,
            local_addr: joined.local_addr,
            ctl: ctl_tx,
            data: data_tx,
        };
        Ok((handle, EventStream { rx: event_rx }))
    }
}

/// Commands to a running session
///
/// Cloning gives another handle to the same session. When every handle is dropped the
/// session leaves the room as [`leave`](Self::leave) does.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    peer_id: PeerId,
    room: RoomId,
    local_addr: SocketAddr,
    ctl: mpsc::UnboundedSender<Control>,
    data: mpsc::Sender<DataCommand>,
}

impl SessionHandle {
    /// Our peer id (as chosen, or as the server assigned it)
    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }

    /// The room we joined
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The UDP socket's address, our only host candidate
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a data message to one peer
    ///
    /// Waits while the command queue is full. Messages queue in the core until the peer's
    /// channel opens; while the core's queue for the peer is full the driver holds further
    /// data commands back, so this waits too. A message that cannot be delivered (unknown
    /// peer, peer gone) is reported as [`Event::SendFailed`].
    pub async fn send(&self, peer: &PeerId, message: DataMessage) -> Result<()> {
        check_size(&message)?;
        self.data
            .send(DataCommand::Send(peer.clone(), message))
            .await
            .map_err(|_| Error::SessionEnded)
    }

    /// Queues a data message to every peer that has a connection
    ///
    /// Peers whose queue is full are skipped.
    pub async fn broadcast(&self, message: DataMessage) -> Result<()> {
        check_size(&message)?;
        self.data
            .send(DataCommand::Broadcast(message))
            .await
            .map_err(|_| Error::SessionEnded)
    }

    /// A snapshot of the session's counters
    pub async fn stats(&self) -> Result<SessionStats> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Control::Stats(tx))
            .map_err(|_| Error::SessionEnded)?;
        rx.await.map_err(|_| Error::SessionEnded)
    }

    /// Sends one frame of captured audio (one Opus frame of interleaved PCM, as configured
    /// in `participant.media.opus`) to every peer; stamped with the driver's time on arrival
    pub async fn send_audio(&self, pcm: Vec<i16>) -> Result<()> {
        self.data
            .send(DataCommand::Audio(pcm))
            .await
            .map_err(|_| Error::SessionEnded)
    }

    /// Sends one captured video frame to every peer (encoded once per codec in use)
    pub async fn send_video(&self, frame: I420Frame) -> Result<()> {
        self.data
            .send(DataCommand::Video(Box::new(frame)))
            .await
            .map_err(|_| Error::SessionEnded)
    }

    /// Leaves the room and waits until the driver has finished
    ///
    /// Sends `peer.disconnect`, closes every peer, closes the signaling connection and
    /// releases the UDP socket before returning. Leaving a session that has already ended
    /// is not an error.
    pub async fn leave(self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Control::Leave(tx)).is_err() {
            return Ok(());
        }
        // The driver answers after it dropped the socket; a closed channel means it had
        // already ended.
        let _ = rx.await;
        Ok(())
    }

    /// Whether the driver has ended
    pub fn is_closed(&self) -> bool {
        self.ctl.is_closed()
    }
}

fn check_size(message: &DataMessage) -> Result<()> {
    if message.len() > MAX_DATA_MESSAGE {
        return Err(meshrtc::Error::MessageTooLarge(message.len()).into());
    }
    Ok(())
}

/// The session's events, in order; ends (`None`) when the driver has finished
///
/// Events are buffered without limit, so read them promptly.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl EventStream {
    /// The next event; `None` once the session has ended and every event was read
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures_util::Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

// ---- the driver ----

#[derive(Debug)]
enum Control {
    Stats(oneshot::Sender<SessionStats>),
    Leave(oneshot::Sender<()>),
}

#[derive(Debug)]
enum DataCommand {
    Send(PeerId, DataMessage),
    Broadcast(DataMessage),
    Audio(Vec<i16>),
    Video(Box<I420Frame>),
}

struct Joined {
    peer_id: PeerId,
    room: RoomId,
    local_addr: SocketAddr,
}

/// What woke the driver
enum Wake {
    Control(Option<Control>),
    Data(Option<DataCommand>),
    Udp(std::io::Result<usize>),
    Signal(SignalEvent),
    Timer,
}

impl Wake {
    fn kind(&self) -> &'static str {
        match self {
            Self::Control(_) => "control",
            Self::Data(_) => "data",
            Self::Udp(_) => "udp",
            Self::Signal(_) => "signal",
            Self::Timer => "timer",
        }
    }
}

/// The driver thread's body
fn drive(
    config: SessionConfig,
    ready: oneshot::Sender<Result<Joined>>,
    ctl: mpsc::UnboundedReceiver<Control>,
    data: mpsc::Receiver<DataCommand>,
    events: mpsc::UnboundedSender<Event>,
) {
    // str0m draws from the thread-local generator; this thread drives exactly one core.
    fastrand::seed(config.participant.seed);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(Error::Spawn(e)));
            return;
        }
    };
    let left = runtime.block_on(async move {
        let driver = match Driver::start(config, ready, events).await {
            Ok(d) => d,
            Err((ready, e)) => {
                let _ = ready.send(Err(e));
                return None;
            }
        };
        driver.run(ctl, data).await
    });
    // The driver (and with it the socket) is gone; tell `leave` it may return.
    if let Some(reply) = left {
        let _ = reply.send(());
    }
}

/// Owns the participant and its IO; everything happens on one task
struct Driver {
    participant: Participant,
    udp: UdpIo,
    /// Datagrams from drains, sent together before the loop waits again
    outbox: Outbox,
    signal: Option<SignalClient>,
    clock: SharedClock,
    events: mpsc::UnboundedSender<Event>,
    ready: Option<oneshot::Sender<Result<Joined>>>,
    /// A send the core could not queue yet (its queue for the peer is full)
    stalled: Option<(PeerId, DataMessage)>,
    /// The core's send queue limit per peer
    max_queued: usize,
    /// Set when the announce was refused: the driver ends
    refused: bool,
    sources: Option<TestSources>,
}

impl Driver {
    async fn start(
        config: SessionConfig,
        ready: oneshot::Sender<Result<Joined>>,
        events: mpsc::UnboundedSender<Event>,
    ) -> std::result::Result<Self, (oneshot::Sender<Result<Joined>>, Error)> {
        let udp = match UdpIo::bind(config.bind, config.socket_buffer) {
            Ok(u) => u,
            Err(source) => {
                let e = Error::Bind {
                    addr: config.bind,
                    source,
                };
                return Err((ready, e));
            }
        };
        let signal = match SignalClient::connect(&config.signal_url, config.join_timeout).await {
            Ok(s) => s,
            Err(e) => return Err((ready, e)),
        };
        let clock = config.clock.clone();
        let mut pconfig = config.participant;
        let max_queued = pconfig.max_queued_messages.max(1);
        // Capture-to-playout latency needs our instants on str0m's wall-clock time base:
        // read both clocks together once.
        pconfig
            .wallclock_anchor
            .get_or_insert_with(|| (clock.now(), SystemTime::now()));
        let mut participant = Participant::new(pconfig, clock.now());
        if let Err(e) = participant.add_local_candidate(udp.local_addr()) {
            return Err((ready, e.into()));
        }
        if let Err(e) = participant.join(config.room, config.peer_id) {
            return Err((ready, e.into()));
        }
        tracing::debug!(local = %udp.local_addr(), "session started");
        Ok(Self {
            participant,
            udp,
            outbox: Outbox::default(),
            signal: Some(signal),
            clock,
            events,
            ready: Some(ready),
            stalled: None,
            max_queued,
            refused: false,
            sources: config.test_sources,
        })
    }

    /// The loop: drain, wait for one thing, feed it, repeat; returns the `leave` reply
    async fn run(
        mut self,
        mut ctl: mpsc::UnboundedReceiver<Control>,
        mut data: mpsc::Receiver<DataCommand>,
    ) -> Option<oneshot::Sender<()>> {
        let mut buf = RecvBuf::new();
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut data_open = true;
        loop {
            let mut deadline = self.drain().await;
            if self.refused {
                return None;
            }
            if self.ready.is_none() {
                // Joined: test sources run from now on.
                if let Some(src) = &mut self.sources {
                    src.start(self.clock.now());
                    if let Some(t) = src.poll_timeout() {
                        deadline = deadline.min(t);
                    }
                }
            }
            if self.stalled.is_some() {
                self.retry_stalled().await;
            }
            self.udp.send_all(&mut self.outbox).await;
            let wait = deadline.saturating_duration_since(self.clock.now());
            // A deadline that has passed is served at once: tokio's timer would round it up
            // to its next millisecond tick, and a handshake has several of them. Other
            // ready sources still get their fair turn in the select.
            let due = wait.is_zero();
            if !due {
                timer.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            let take_data = data_open && self.stalled.is_none();
            let wake = tokio::select! {
                c = ctl.recv() => Wake::Control(c),
                d = data.recv(), if take_data => Wake::Data(d),
                r = self.udp.recv(&mut buf) => Wake::Udp(r),
                s = next_signal(&mut self.signal) => Wake::Signal(s),
                () = &mut timer, if !due => Wake::Timer,
                () = std::future::ready(()), if due => Wake::Timer,
            };
            tracing::trace!(wake = wake.kind(), ?wait, reason = ?self.participant.last_timeout_reason(), "woke");
            match wake {
                Wake::Control(Some(Control::Stats(reply))) => {
                    let _ = reply.send(self.stats());
                }
                Wake::Control(Some(Control::Leave(reply))) => {
                    self.shutdown().await;
                    return Some(reply);
                }
                Wake::Control(None) => {
                    self.shutdown().await;
                    return None;
                }
                Wake::Data(Some(cmd)) => {
                    let mut wrote_media = self.handle_data(cmd);
                    // Commands that queued up meanwhile are served in the same wake-up,
                    // without a trip through the select. Data messages only queue in the
                    // core (it writes them to str0m at the next drain, all together); a
                    // media frame is written at once, so a drain follows it.
                    for _ in 1..DATA_BATCH {
                        if self.stalled.is_some() {
                            break;
                        }
                        let Ok(cmd) = data.try_recv() else {
                            break;
                        };
                        if wrote_media {
                            self.drain().await;
                        }
                        wrote_media = self.handle_data(cmd);
                    }
                }
                Wake::Data(None) => data_open = false,
                Wake::Udp(Ok(filled)) => {
                    let local = self.udp.local_addr();
                    for (source, contents) in buf.datagrams(filled) {
                        let recv = Receive {
                            source,
                            destination: local,
                            contents,
                        };
                        let input = Input::Receive(self.clock.now(), recv);
                        if let Err(e) = self.participant.handle_input(input) {
                            tracing::debug!(%e, "datagram rejected");
                        }
                        // Drain after every mutation, before the next datagram.
                        self.drain().await;
                    }
                }
                Wake::Udp(Err(e)) => {
                    // UDP errors (e.g. an ICMP port unreachable surfacing) are transient.
                    tracing::debug!(%e, "udp receive error");
                }
                Wake::Signal(SignalEvent::Frame(frame)) => {
                    let input = Input::Signal(self.clock.now(), frame);
                    if let Err(e) = self.participant.handle_input(input) {
                        tracing::debug!(%e, "signaling message rejected");
                    }
                }
                Wake::Signal(SignalEvent::Invalid(reason)) => {
                    tracing::debug!(%reason, "invalid frame from signaling server");
                }
                Wake::Signal(SignalEvent::Closed(reason)) => self.signaling_lost(reason),
                Wake::Timer => {
                    self.send_due_sources().await;
                    let input = Input::Timeout(self.clock.now());
                    if let Err(e) = self.participant.handle_input(input) {
                        tracing::debug!(%e, "timeout rejected");
                    }
                }
            }
        }
    }

    /// Polls the participant until it returns its next deadline, carrying out every output
    async fn drain(&mut self) -> Instant {
        loop {
            match self.participant.poll_output() {
                Output::Timeout(t) => return t,
                Output::Transmit(t) => {
                    let max = self.udp.max_segments();
                    self.outbox.push(t.destination, &t.contents, max);
                    if self.outbox.bytes() >= OUTBOX_SEND_BYTES
                        || self.outbox.datagrams() >= OUTBOX_SEND_DATAGRAMS
                    {
                        self.udp.send_all(&mut self.outbox).await;
                    }
                }
                Output::Signal(frame) => {
                    let Some(signal) = &mut self.signal else {
                        tracing::debug!(
                            method = frame.request.method(),
                            "no signaling connection; frame dropped"
                        );
                        continue;
                    };
                    if let Err(e) = signal.send(&frame).await {
                        self.signaling_lost(e.to_string());
                    }
                }
                Output::Event(e) => self.deliver(e),
            }
        }
    }

    fn deliver(&mut self, event: meshrtc::Event) {
        match &event {
            meshrtc::Event::Announced { peer_id, room, .. } => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(Joined {
                        peer_id: peer_id.clone(),
                        room: room.clone(),
                        local_addr: self.udp.local_addr(),
                    }));
                }
            }
            meshrtc::Event::SignalError { method, error } if *method == "peer.announce" => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(Error::Rejected(error.clone())));
                    self.refused = true;
                }
            }
            _ => {}
        }
        // A dropped event stream only means nobody listens.
        let _ = self.events.send(Event::Mesh(event));
    }

    fn signaling_lost(&mut self, reason: String) {
        if self.signal.take().is_none() {
            return;
        }
        tracing::debug!(%reason, "signaling connection lost");
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(Error::SignalLost(reason.clone())));
            self.refused = true;
        }
        let _ = self.events.send(Event::SignalingLost { reason });
    }

    /// Sends every test-source frame that is due, each followed by a drain
    async fn send_due_sources(&mut self) {
        let now = self.clock.now();
        loop {
            let Some((capture, frame)) = self.sources.as_mut().and_then(|s| s.poll_frame(now))
            else {
                return;
            };
            let res = match frame {
                SourceFrame::Audio(pcm) => self.participant.send_audio(capture, &pcm),
                SourceFrame::Video(f) => self.participant.send_video(capture, &f),
            };
            if let Err(e) = res {
                tracing::debug!(%e, "test source frame not sent");
            }
            self.drain().await;
        }
    }

    /// Carries out one command; true if it wrote media (which wants a drain before the next)
    fn handle_data(&mut self, cmd: DataCommand) -> bool {
        match cmd {
            DataCommand::Audio(pcm) => {
                if let Err(e) = self.participant.send_audio(self.clock.now(), &pcm) {
                    tracing::debug!(%e, "audio frame not sent");
                }
                return true;
            }
            DataCommand::Video(frame) => {
                if let Err(e) = self.participant.send_video(self.clock.now(), &frame) {
                    tracing::debug!(%e, "video frame not sent");
                }
                return true;
            }
            DataCommand::Send(peer, message) => {
                if self.queue_is_full(&peer) {
                    self.stalled = Some((peer, message));
                    return false;
                }
                self.send_now(peer, message);
            }
            DataCommand::Broadcast(message) => {
                if let Err(error) = self.participant.broadcast(message) {
                    let _ = self.events.send(Event::SendFailed { peer: None, error });
                }
            }
        }
        false
    }

    async fn retry_stalled(&mut self) {
        let Some((peer, _)) = &self.stalled else {
            return;
        };
        // Resume once a whole batch fits: taking commands one at a time as the queue drains
        // would wake the application's sending task for every message.
        if self
            .participant
            .send_room(peer)
            .is_some_and(|room| room < DATA_BATCH.min(self.max_queued))
        {
            return;
        }
        if let Some((peer, message)) = self.stalled.take() {
            self.send_now(peer, message);
            self.drain().await;
        }
    }

    /// Whether the core would refuse a message to `peer` with `SendQueueFull`
    fn queue_is_full(&self, peer: &PeerId) -> bool {
        self.participant.send_room(peer) == Some(0)
    }

    fn send_now(&mut self, peer: PeerId, message: DataMessage) {
        if let Err(error) = self.participant.send_data(&peer, message) {
            let _ = self.events.send(Event::SendFailed {
                peer: Some(peer),
                error,
            });
        }
    }

    fn stats(&self) -> SessionStats {
        let peers = self
            .participant
            .peer_ids()
            .chain(self.participant.departed_peer_ids())
            .filter_map(|id| Some((id.clone(), self.participant.peer_stats(id)?)))
            .collect();
        SessionStats {
            peers,
            drops: self.participant.drop_counters(),
            signaling_connected: self.signal.is_some(),
        }
    }

    /// Leaves the room: `peer.disconnect`, close every peer, close the WebSocket
    async fn shutdown(&mut self) {
        self.participant.leave();
        self.drain().await;
        self.udp.send_all(&mut self.outbox).await;
        if let Some(signal) = self.signal.take() {
            signal.close().await;
        }
        tracing::debug!(local = %self.udp.local_addr(), "session ended");
    }
}

async fn next_signal(signal: &mut Option<SignalClient>) -> SignalEvent {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
