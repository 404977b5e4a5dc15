//! A session on tokio: the core's [`meshrtc::session::Session`] on a UDP socket and a
//! WebSocket, driven by one task on its own thread
//!
//! The driver only waits and moves bytes; every decision (joining, re-announcing after a
//! lost signaling connection, back-pressure, test media, statistics) is the core session's.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use meshrtc::clock::SharedClock;
use meshrtc::codec::I420Frame;
use meshrtc::ice::Resolution;
use meshrtc::pipeline::TrackId;
use meshrtc::session::{self, Command, EventReceiver, EventSender, Input, Output};
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::{DataMessage, MediaKind, Receive};
use meshrtc_driver::{Error, Result, SessionConfig, JOIN_GRACE};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::client::{SignalClient, SignalEvent};
use crate::clock::TokioClock;
use crate::udp::{Outbox, RecvBuf, UdpIo};

pub use meshrtc::session::{Event, Stats};

/// Queued datagrams are sent once they reach this many bytes or this many datagrams, even in
/// the middle of a drain: GSO batches big enough to save system calls, small enough that the
/// remote starts on them (and acknowledges) while we go on. The count matters for small
/// datagrams: acknowledgements held back until a whole receive batch is done would leave the
/// sender waiting.
const OUTBOX_SEND_BYTES: usize = 16 * 1024;
const OUTBOX_SEND_DATAGRAMS: usize = 8;

/// Entry point: joins a room and spawns the driver
#[derive(Debug)]
pub struct Session;

impl Session {
    /// Binds the UDP socket, connects to the signaling server, announces, and returns once
    /// the server accepted us
    ///
    /// Must be called within a tokio runtime. The driver runs on its own thread with a
    /// single-threaded tokio runtime, so that the thread-local `fastrand` str0m uses is
    /// seeded from the participant's seed. The returned handle and events work from any
    /// runtime.
    pub async fn join(config: SessionConfig) -> Result<(SessionHandle, Events)> {
        config.check()?;
        let wait = config.session.join_timeout + JOIN_GRACE;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_queue.max(1));
        let (event_tx, event_rx) = session::event_queue(config.session.max_queued_media);
        std::thread::Builder::new()
            .name(config.thread_name("meshrtc"))
            .spawn(move || drive(config, ready_tx, ctl_rx, cmd_rx, event_tx))
            .map_err(Error::Spawn)?;
        let joined = tokio::time::timeout(wait, ready_rx)
            .await
            .map_err(|_| Error::Join(session::JoinError::Timeout(wait)))?
            .map_err(|_| Error::SessionEnded)??;
        let handle = SessionHandle {
            peer_id: joined.peer_id,
            room: joined.room,
            local_addr: joined.local_addr,
            ctl: ctl_tx,
            commands: cmd_tx,
        };
        Ok((handle, Events { rx: event_rx }))
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
    local_addr: std::net::SocketAddr,
    ctl: mpsc::UnboundedSender<Control>,
    commands: mpsc::Sender<Command>,
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

    /// The UDP socket's address, our host candidate
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Queues a data message to one peer
    ///
    /// Waits while the command queue is full. Messages queue in the core until the peer's
    /// channel opens; while the core's queue for the peer is full the driver holds further
    /// commands back, so this waits too. A message that cannot be delivered (unknown
    /// peer, peer gone) is reported as [`Event::SendFailed`].
    pub async fn send_data(&self, peer: &PeerId, message: DataMessage) -> Result<()> {
        message.check_size()?;
        self.command(Command::Send(peer.clone(), message)).await
    }

    /// Queues a data message to every peer that has a connection
    ///
    /// Peers whose queue is full are skipped.
    pub async fn broadcast(&self, message: DataMessage) -> Result<()> {
        message.check_size()?;
        self.command(Command::Broadcast(message)).await
    }

    /// Sends one frame of captured audio (one Opus frame of interleaved PCM, as configured
    /// in the participant's `media.opus`) to every peer, captured at `capture`
    pub async fn send_audio(&self, capture: Instant, pcm: Vec<i16>) -> Result<()> {
        self.command(Command::Audio(capture, pcm)).await
    }

    /// Sends one captured video frame to every peer (encoded once per codec in use)
    pub async fn send_video(&self, capture: Instant, frame: I420Frame) -> Result<()> {
        self.command(Command::Video(capture, Box::new(frame))).await
    }

    /// Sends one audio frame of an outgoing track (its own Opus stream) to `peers`
    ///
    /// See [`meshrtc::Participant::send_audio_to`]; a [`meshrtc::pipeline::Pipeline`]
    /// names the track and its recipients.
    pub async fn send_audio_to(
        &self,
        track: TrackId,
        capture: Instant,
        pcm: Vec<i16>,
        peers: Vec<PeerId>,
    ) -> Result<()> {
        self.command(Command::AudioTo(track, capture, pcm, peers))
            .await
    }

    /// Sends one video frame of an outgoing track (its own encoders) to `peers`
    ///
    /// See [`meshrtc::Participant::send_video_to`].
    pub async fn send_video_to(
        &self,
        track: TrackId,
        capture: Instant,
        frame: Arc<I420Frame>,
        peers: Vec<PeerId>,
    ) -> Result<()> {
        self.command(Command::VideoTo(track, capture, frame, peers))
            .await
    }

    /// Pauses (`false`) or resumes sending `kind` to `peer`; the remote sees its m-line
    /// direction change ([`meshrtc::Event::RemoteMediaState`])
    pub async fn set_sending(&self, peer: &PeerId, kind: MediaKind, sending: bool) -> Result<()> {
        self.command(Command::SetSending(peer.clone(), kind, sending))
            .await
    }

    /// Gives an outgoing video track m-lines of its own, so a peer can receive it next to
    /// our other video tracks (see [`meshrtc::Participant::add_video_track`])
    pub async fn add_video_track(&self, track: TrackId) -> Result<()> {
        self.command(Command::AddVideoTrack(track)).await
    }

    async fn command(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::SessionEnded)
    }

    /// A snapshot of the session's counters
    pub async fn stats(&self) -> Result<Stats> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Control::Stats(tx))
            .map_err(|_| Error::SessionEnded)?;
        rx.await.map_err(|_| Error::SessionEnded)
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

/// The session's events, in order; ends (`None`) when the driver has finished
///
/// Bounded: media events (audio chunks, video frames) that are not read in time are
/// dropped oldest first and counted ([`Stats::media_events_dropped`]); control events
/// are never dropped. See [`meshrtc::session::EventSender`].
#[derive(Debug)]
pub struct Events {
    rx: EventReceiver,
}

impl Events {
    /// The next event; `None` once the session has ended and every event was read
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.rx.poll_recv(cx)).await
    }

    /// The next event if one is ready
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv()
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

// ---- the driver ----

#[derive(Debug)]
enum Control {
    Stats(oneshot::Sender<Stats>),
    Leave(oneshot::Sender<()>),
}

struct Joined {
    peer_id: PeerId,
    room: RoomId,
    local_addr: std::net::SocketAddr,
}

/// What woke the driver
enum Wake {
    Control(Option<Control>),
    Command(Option<Command>),
    Udp(std::io::Result<usize>),
    Signal(SignalEvent),
    Connected(std::result::Result<Box<SignalClient>, String>),
    Resolved(Vec<Resolution>),
    Timer,
}

/// The driver thread's body
fn drive(
    config: SessionConfig,
    ready: oneshot::Sender<Result<Joined>>,
    ctl: mpsc::UnboundedReceiver<Control>,
    commands: mpsc::Receiver<Command>,
    events: EventSender,
) {
    // str0m draws from the thread-local generator; this thread drives exactly one core.
    fastrand::seed(config.session.participant.seed);
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
        let udp = match UdpIo::bind(config.bind, config.socket_buffer) {
            Ok(u) => u,
            Err(e) => {
                let _ = ready.send(Err(e));
                return None;
            }
        };
        let clock = config
            .clock
            .clone()
            .unwrap_or_else(|| SharedClock::new(TokioClock));
        let now = clock.now();
        let policy = config.session.participant.candidate_policy;
        let mut session_config = config.session;
        // Video encodes are timed on the same clock (CPU overload drops frames).
        let encode_clock = &mut session_config.participant.encode_clock;
        encode_clock.get_or_insert_with(|| clock.clone());
        let mut session = session::Session::new(session_config, now, Some(SystemTime::now()));
        // The bound address, or every interface's when bound on the wildcard.
        let locals = match meshrtc_driver::local_addresses(udp.local_addr(), policy) {
            Ok(l) => l,
            Err(source) => {
                let addr = udp.local_addr();
                let _ = ready.send(Err(Error::Bind { addr, source }));
                return None;
            }
        };
        if locals.is_empty() {
            tracing::warn!(bind = %udp.local_addr(), "no usable local address: no host candidate");
        }
        for addr in locals {
            if let Err(e) = session.participant_mut().add_local_candidate(addr) {
                let _ = ready.send(Err(e.into()));
                return None;
            }
        }
        tracing::debug!(local = %udp.local_addr(), "session started");
        let (resolved_tx, resolved) = mpsc::unbounded_channel();
        let driver = Driver {
            session,
            udp,
            outbox: Outbox::default(),
            signal_url: config.signal_url,
            signal: None,
            connecting: None,
            clock,
            events,
            batch: Vec::new(),
            ready: Some(ready),
            resolved_tx,
        };
        driver.run(ctl, commands, resolved).await
    });
    // The driver (and with it the socket) is gone; tell `leave` it may return.
    if let Some(reply) = left {
        let _ = reply.send(());
    }
}

/// Owns the session and its IO; everything happens on one task
struct Driver {
    session: session::Session,
    udp: UdpIo,
    /// Datagrams from drains, sent together before the loop waits again
    outbox: Outbox,
    signal_url: String,
    signal: Option<SignalClient>,
    connecting: Option<Connecting>,
    clock: SharedClock,
    events: EventSender,
    /// Events of the current drain, handed over in one go
    batch: Vec<Event>,
    ready: Option<oneshot::Sender<Result<Joined>>>,
    /// Where name lookups for STUN/TURN servers report
    resolved_tx: mpsc::UnboundedSender<Vec<Resolution>>,
}

/// How long a STUN/TURN server name lookup may take before it counts as failed
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

impl Driver {
    /// The loop: drain, wait for one thing, feed it, repeat; returns the `leave` reply
    async fn run(
        mut self,
        mut ctl: mpsc::UnboundedReceiver<Control>,
        mut commands: mpsc::Receiver<Command>,
        mut resolved: mpsc::UnboundedReceiver<Vec<Resolution>>,
    ) -> Option<oneshot::Sender<()>> {
        let mut buf = RecvBuf::new();
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut commands_open = true;
        let mut leave_reply = None;
        loop {
            let deadline = self.drain().await;
            if self.session.is_finished() {
                break;
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
            let take_commands = commands_open && self.session.wants_commands();
            let wake = tokio::select! {
                c = ctl.recv() => Wake::Control(c),
                c = commands.recv(), if take_commands => Wake::Command(c),
                r = self.udp.recv(&mut buf) => Wake::Udp(r),
                s = next_signal(&mut self.signal) => Wake::Signal(s),
                c = connected(&mut self.connecting) => Wake::Connected(c),
                Some(r) = resolved.recv() => Wake::Resolved(r),
                () = &mut timer, if !due => Wake::Timer,
                () = std::future::ready(()), if due => Wake::Timer,
            };
            let now = self.clock.now();
            match wake {
                Wake::Control(Some(Control::Stats(reply))) => {
                    let _ = reply.send(self.stats());
                }
                Wake::Control(Some(Control::Leave(reply))) => {
                    leave_reply = Some(reply);
                    self.session.leave();
                }
                Wake::Control(None) => self.session.leave(),
                Wake::Command(Some(cmd)) => {
                    self.command(now, cmd).await;
                    // Commands that queued up meanwhile are served in the same wake-up,
                    // without a trip through the select.
                    for _ in 1..session::COMMAND_BATCH {
                        if !self.session.wants_commands() {
                            break;
                        }
                        let Ok(cmd) = commands.try_recv() else {
                            break;
                        };
                        self.command(self.clock.now(), cmd).await;
                    }
                }
                Wake::Command(None) => commands_open = false,
                Wake::Udp(Ok(filled)) => {
                    for (source, dst_ip, contents) in buf.datagrams(filled) {
                        let recv = Receive {
                            source,
                            destination: self.udp.destination(dst_ip),
                            contents,
                        };
                        self.session
                            .handle_input(Input::Receive(self.clock.now(), recv));
                        // Drain after every mutation, before the next datagram.
                        self.drain().await;
                    }
                }
                // UDP errors (e.g. an ICMP port unreachable surfacing) are transient.
                Wake::Udp(Err(e)) => tracing::debug!(%e, "udp receive error"),
                Wake::Signal(SignalEvent::Frame(frame)) => {
                    self.session.handle_input(Input::Signal(now, frame));
                }
                Wake::Signal(SignalEvent::Invalid(reason)) => {
                    tracing::debug!(%reason, "invalid frame from signaling server");
                }
                Wake::Signal(SignalEvent::Closed(reason)) => {
                    self.signal = None;
                    self.session.handle_input(Input::SignalingDown(now, reason));
                }
                Wake::Connected(Ok(client)) => {
                    self.signal = Some(*client);
                    self.session.handle_input(Input::SignalingUp(now));
                }
                Wake::Connected(Err(reason)) => {
                    self.session.handle_input(Input::SignalingDown(now, reason));
                }
                Wake::Timer => self.session.handle_input(Input::Timeout(now)),
                Wake::Resolved(answers) => {
                    self.session.handle_input(Input::Resolved(now, answers));
                }
            }
        }
        self.udp.send_all(&mut self.outbox).await;
        self.events.close();
        tracing::debug!(local = %self.udp.local_addr(), "session ended");
        leave_reply
    }

    /// Carries out one application command; media commands are written to str0m at once,
    /// so a drain follows them (data commands only queue in the core until the next drain)
    async fn command(&mut self, now: Instant, cmd: Command) {
        let media = matches!(
            cmd,
            Command::Audio(..)
                | Command::Video(..)
                | Command::AudioTo(..)
                | Command::VideoTo(..)
                | Command::SetSending(..)
                | Command::AddVideoTrack(..)
        );
        self.session.handle_input(Input::Command(now, cmd));
        if media {
            self.drain().await;
        }
    }

    /// Polls the session until it returns its next deadline, carrying out every output
    async fn drain(&mut self) -> Instant {
        let deadline = loop {
            match self.session.poll_output() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let max = self.udp.max_segments();
                    let (source, destination) = self.udp.addresses(t.source, t.destination);
                    self.outbox.push(source, destination, &t.contents, max);
                    if self.outbox.bytes() >= OUTBOX_SEND_BYTES
                        || self.outbox.datagrams() >= OUTBOX_SEND_DATAGRAMS
                    {
                        self.udp.send_all(&mut self.outbox).await;
                    }
                }
                Output::Signal(frame) => {
                    let sent = match &mut self.signal {
                        Some(signal) => signal.send(&frame).await,
                        None => continue,
                    };
                    if let Err(reason) = sent {
                        self.signal = None;
                        let now = self.clock.now();
                        self.session.handle_input(Input::SignalingDown(now, reason));
                    }
                }
                Output::Connect => {
                    let url = self.signal_url.clone();
                    self.connecting = Some(SignalClient::connect(url).boxed());
                }
                Output::Disconnect => {
                    self.connecting = None;
                    if let Some(signal) = self.signal.take() {
                        signal.close().await;
                    }
                }
                Output::Event(e) => self.deliver(e),
                Output::Resolve(endpoints) => self.resolve(endpoints),
            }
        };
        self.events.push_all(&mut self.batch);
        deadline
    }

    /// Looks STUN/TURN server names up on tokio's resolver; the answers come back as one
    /// [`Input::Resolved`]
    fn resolve(&self, endpoints: Vec<meshrtc::ice::ServerEndpoint>) {
        let tx = self.resolved_tx.clone();
        tokio::spawn(async move {
            let mut answers = Vec::with_capacity(endpoints.len());
            for endpoint in endpoints {
                let addrs = match endpoint.lookup() {
                    Some((host, port)) => {
                        let lookup = tokio::net::lookup_host((host.to_owned(), port));
                        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                            Ok(Ok(addrs)) => Ok(addrs.collect()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!("no answer within {RESOLVE_TIMEOUT:?}")),
                        }
                    }
                    None => Ok(endpoint.url.socket_addr().into_iter().collect()),
                };
                answers.push(Resolution { endpoint, addrs });
            }
            // The driver may have ended meanwhile.
            let _ = tx.send(answers);
        });
    }

    fn deliver(&mut self, event: Event) {
        match &event {
            Event::Joined { peer_id, room, .. } => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(Joined {
                        peer_id: peer_id.clone(),
                        room: room.clone(),
                        local_addr: self.udp.local_addr(),
                    }));
                }
            }
            Event::JoinFailed(error) => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(Error::Join(error.clone())));
                }
            }
            _ => {}
        }
        self.batch.push(event);
    }

    fn stats(&self) -> Stats {
        let mut stats = self.session.stats();
        stats.media_events_dropped = self.events.dropped_media();
        stats
    }
}

async fn next_signal(signal: &mut Option<SignalClient>) -> SignalEvent {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

type Connecting = BoxFuture<'static, std::result::Result<SignalClient, String>>;

async fn connected(
    connecting: &mut Option<Connecting>,
) -> std::result::Result<Box<SignalClient>, String> {
    let Some(fut) = connecting else {
        return std::future::pending().await;
    };
    let res = fut.await;
    *connecting = None;
    res.map(Box::new)
}
