//! The core thread: owns the participant and the UDP socket, and runs the loop
//!
//! Each turn: drain the participant, take what the other threads left in the channels and
//! the capture ring (each item is one mutation, followed by a drain), then block on the
//! socket with a read timeout of `min(deadline - now, MAX_WAIT)`, and feed what woke it.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshrtc::signal::{
    AnnounceResult, ClientFrame, ErrorCode, PeerId, Request, RequestId, RoomId, RpcError,
    ServerFrame,
};
use meshrtc::{DataMessage, Input, Output, Participant, Receive};
use rustix::event::{PollFd, PollFlags};
use serde_json::Value;

use crate::audio::{CaptureSource, PlayoutSink};
use crate::session::{Event, SessionConfig, SessionStats};
use crate::signaling::{Backoff, SignalIn, SignalOut};
use crate::{Error, Result};

/// The longest the core thread blocks on the socket before it looks at the command
/// channels, the signaling channel and the capture ring
///
/// Nothing on the real-time path may make a system call, so the audio callback cannot wake
/// the core thread; the core thread looks instead. 5 ms is half of a 10 ms audio callback
/// period: a pushed chunk waits 2.5 ms on average before it is encoded and sent. Data
/// commands and signaling frames wait as long. The wake-ups cost about 200 turns a second
/// while idle. Linux rounds socket read timeouts up to whole scheduler ticks, so with
/// [`WaitMode::ReadTimeout`] the effective bound can be longer (about 12 ms on the
/// development machine; see the crate docs).
pub const MAX_WAIT: Duration = Duration::from_millis(5);

/// The most items taken from each source (signaling, capture, data commands) in one turn,
/// so that a busy source cannot starve the socket
pub const SOURCE_BATCH: usize = 64;

/// A UDP datagram never exceeds this
const RECV_BUFFER: usize = 65_536;

/// How the core thread blocks until a datagram arrives or its wait is over
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaitMode {
    /// A socket read timeout (`SO_RCVTIMEO`) of the wait, as str0m's blocking example does
    ///
    /// One system call per turn when the timeout is unchanged. Linux counts the timeout in
    /// scheduler ticks and rounds up, so a timer wake-up can come several milliseconds late
    /// (1-5 ms timeouts took 8-12 ms on the development machine; see the crate docs).
    #[default]
    ReadTimeout,
    /// `poll(2)` on a non-blocking socket, with the wait rounded up to whole milliseconds
    ///
    /// Wakes within about a millisecond of the deadline whatever the kernel's tick; costs a
    /// second system call on turns that end in a timeout.
    Poll,
}

/// Everything the core thread starts with
pub(crate) struct Setup {
    pub(crate) config: SessionConfig,
    pub(crate) socket: UdpSocket,
    pub(crate) local_addr: SocketAddr,
    pub(crate) signal_out: Sender<SignalOut>,
    pub(crate) signal_in: Receiver<SignalIn>,
    pub(crate) signal_thread: JoinHandle<()>,
    pub(crate) events: Sender<Event>,
    pub(crate) ready: SyncSender<Result<Joined>>,
    pub(crate) control: Receiver<Control>,
    pub(crate) data: Receiver<DataCommand>,
    pub(crate) capture: CaptureSource,
    pub(crate) playout: PlayoutSink,
}

/// What the handle asks of the core thread, outside the data queue
#[derive(Debug)]
pub(crate) enum Control {
    Stats(SyncSender<SessionStats>),
    Leave,
}

/// Data-path commands (bounded queue: back-pressure)
#[derive(Debug)]
pub(crate) enum DataCommand {
    Send(PeerId, DataMessage),
    Broadcast(DataMessage),
    Video(Instant, Box<meshrtc::codec::I420Frame>),
}

/// What `Session::join` waits for
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) peer_id: PeerId,
    pub(crate) room: RoomId,
}

/// The core thread's body
pub(crate) fn run(setup: Setup) {
    // str0m draws from the thread-local generator; this thread drives exactly one core.
    fastrand::seed(setup.config.participant.seed);
    let Setup {
        config,
        socket,
        local_addr,
        signal_out,
        signal_in,
        signal_thread,
        events,
        ready,
        control,
        data,
        capture,
        playout,
    } = setup;
    let clock = config.clock.clone();
    let wait_mode = config.wait;
    if wait_mode == WaitMode::Poll {
        if let Err(e) = socket.set_nonblocking(true) {
            tracing::warn!(%e, "cannot make the socket non-blocking");
        }
    }
    let audio = config.participant.capabilities.audio;
    let mut participant = Participant::new(config.participant, clock.now());
    let started = participant
        .add_local_candidate(local_addr)
        .and_then(|()| participant.join(config.room, config.peer_id));
    let mut driver = Driver {
        participant,
        socket,
        local_addr,
        clock,
        signal_out,
        signal_in,
        signal_thread: Some(signal_thread),
        signal_up: true,
        rejoin_id: None,
        rejoin_at: None,
        rejoin_seq: 0,
        reconnect: config.reconnect,
        events,
        ready: Some(ready),
        control,
        data,
        data_open: true,
        stalled: None,
        capture,
        audio,
        audio_error_reported: false,
        playout,
        finished: false,
        wait_mode,
        read_timeout: None,
        turns: 0,
    };
    if let Err(e) = started {
        driver.fail_join(e.into());
    }
    driver.run();
    driver.shutdown();
}

/// Owns the participant and its IO; everything happens on one thread
struct Driver {
    participant: Participant,
    socket: UdpSocket,
    local_addr: SocketAddr,
    clock: crate::SharedClock,
    signal_out: Sender<SignalOut>,
    signal_in: Receiver<SignalIn>,
    signal_thread: Option<JoinHandle<()>>,
    /// Whether a signaling connection is up (frames for the server are dropped otherwise)
    signal_up: bool,
    /// The id of our re-announce after a reconnect, while its answer is outstanding
    rejoin_id: Option<RequestId>,
    /// When to retry a re-announce the server refused because the id was still taken
    rejoin_at: Option<Instant>,
    rejoin_seq: u64,
    reconnect: Backoff,
    events: Sender<Event>,
    ready: Option<SyncSender<Result<Joined>>>,
    control: Receiver<Control>,
    data: Receiver<DataCommand>,
    data_open: bool,
    /// A send the core could not queue yet (its queue for the peer is full)
    stalled: Option<(PeerId, DataMessage)>,
    capture: CaptureSource,
    audio: bool,
    audio_error_reported: bool,
    playout: PlayoutSink,
    /// Set when the loop is to end (leave, handle dropped, join refused)
    finished: bool,
    wait_mode: WaitMode,
    /// The read timeout the socket has now (saves a system call when unchanged)
    read_timeout: Option<Duration>,
    turns: u64,
}

impl Driver {
    /// The loop: drain, take from the sources, wait on the socket, feed, repeat
    fn run(&mut self) {
        let mut buf = vec![0u8; RECV_BUFFER];
        while !self.finished {
            self.turns += 1;
            self.drain();
            self.serve_sources();
            if self.finished {
                return;
            }
            let mut deadline = self.drain();
            if let Some(at) = self.rejoin_at {
                deadline = deadline.min(at);
            }
            let now = self.clock.now();
            let wait = deadline.saturating_duration_since(now);
            if wait.is_zero() {
                // Due (or overdue): no read timeout can be zero, and none is needed.
                self.timeout(now);
                continue;
            }
            match self.recv(&mut buf, wait.min(MAX_WAIT)) {
                Ok((len, source)) => {
                    let recv = Receive {
                        source,
                        destination: self.local_addr,
                        contents: &buf[..len],
                    };
                    let input = Input::Receive(self.clock.now(), recv);
                    if let Err(e) = self.participant.handle_input(input) {
                        tracing::debug!(%e, "datagram rejected");
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let now = self.clock.now();
                    if now >= deadline {
                        self.timeout(now);
                    }
                }
                // ICMP errors from an earlier send surface here; they are transient.
                Err(e) => tracing::debug!(%e, "udp receive error"),
            }
        }
    }

    /// Receives one datagram, waiting at most `wait`; `WouldBlock` or `TimedOut` when none
    /// came
    fn recv(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<(usize, SocketAddr)> {
        match self.wait_mode {
            WaitMode::ReadTimeout => {
                if self.read_timeout != Some(wait) {
                    self.socket.set_read_timeout(Some(wait))?;
                    self.read_timeout = Some(wait);
                }
                self.socket.recv_from(buf)
            }
            WaitMode::Poll => {
                match self.socket.recv_from(buf) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    other => return other,
                }
                let ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
                let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
                match rustix::event::poll(&mut fds, ms) {
                    Ok(0) => Err(ErrorKind::WouldBlock.into()),
                    Ok(_) => self.socket.recv_from(buf),
                    // A signal: count it as a timeout, the loop looks again.
                    Err(rustix::io::Errno::INTR) => Err(ErrorKind::WouldBlock.into()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    fn timeout(&mut self, now: Instant) {
        if self.rejoin_at.is_some_and(|at| at <= now) {
            self.rejoin_at = None;
            self.rejoin();
        }
        if let Err(e) = self.participant.handle_input(Input::Timeout(now)) {
            tracing::debug!(%e, "timeout rejected");
        }
    }

    /// Polls the participant until it returns its next deadline, carrying out every output
    fn drain(&mut self) -> Instant {
        loop {
            match self.participant.poll_output() {
                Output::Timeout(t) => return t,
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination) {
                        tracing::debug!(%e, to = %t.destination, "udp send failed");
                    }
                }
                Output::Signal(frame) => self.send_signal(&frame),
                Output::Event(e) => self.deliver(e),
            }
        }
    }

    fn send_signal(&mut self, frame: &ClientFrame) {
        if !self.signal_up {
            tracing::debug!(
                method = frame.request.method(),
                "no signaling connection; frame dropped"
            );
            return;
        }
        // A closed channel means the signaling thread has ended; shutdown will notice.
        let _ = self.signal_out.send(SignalOut::Frame(frame.to_json()));
    }

    fn emit(&self, event: Event) {
        // A dropped event stream only means nobody listens.
        let _ = self.events.send(event);
    }

    fn deliver(&mut self, event: meshrtc::Event) {
        match event {
            meshrtc::Event::AudioPlayout { peer, chunk } => {
                self.playout.deliver(peer, &chunk, &self.events);
                return;
            }
            meshrtc::Event::Announced {
                ref peer_id,
                ref room,
                ..
            } => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(Joined {
                        peer_id: peer_id.clone(),
                        room: room.clone(),
                    }));
                }
            }
            meshrtc::Event::SignalError {
                method: "peer.announce",
                ref error,
            } if self.ready.is_some() => {
                self.fail_join(Error::Rejected(error.clone()));
            }
            meshrtc::Event::PeerLeft { ref peer, .. }
            | meshrtc::Event::PeerFailed { ref peer, .. } => {
                self.playout.peer_gone(peer, &self.events);
            }
            _ => {}
        }
        self.emit(Event::Mesh(event));
    }

    /// `Session::join` fails with `error`; the loop ends
    fn fail_join(&mut self, error: Error) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error));
        }
        self.finished = true;
    }

    /// Takes what the other threads left for us; every item is one mutation and a drain
    fn serve_sources(&mut self) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Stats(reply)) => {
                    let _ = reply.send(self.stats());
                }
                // Every handle is gone, or one asked to leave.
                Ok(Control::Leave) | Err(TryRecvError::Disconnected) => {
                    self.finished = true;
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        for _ in 0..SOURCE_BATCH {
            match self.signal_in.try_recv() {
                Ok(msg) => {
                    self.handle_signal(msg);
                    self.drain();
                    if self.finished {
                        return;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // The signaling thread ended on its own (it only does when told to).
                    self.signaling_lost("signaling thread ended".into());
                    break;
                }
            }
        }
        self.serve_capture();
        self.serve_data();
    }

    fn serve_capture(&mut self) {
        if !self.audio {
            let dropped = self.capture.discard();
            if dropped > 0 && !self.audio_error_reported {
                self.audio_error_reported = true;
                self.emit(Event::SendFailed {
                    peer: None,
                    error: meshrtc::Error::MediaNotEnabled("audio"),
                });
            }
            return;
        }
        for _ in 0..SOURCE_BATCH {
            let Some((capture, pcm)) = self.capture.next_frame() else {
                break;
            };
            let sent = self.participant.send_audio(capture, pcm);
            if let Err(error) = sent {
                tracing::debug!(%error, "audio frame refused");
                if !self.audio_error_reported {
                    self.audio_error_reported = true;
                    self.emit(Event::SendFailed { peer: None, error });
                }
            }
            self.drain();
        }
    }

    fn serve_data(&mut self) {
        if let Some((peer, _)) = &self.stalled {
            if self.queue_is_full(peer) {
                return;
            }
            if let Some((peer, message)) = self.stalled.take() {
                self.send_now(peer, message);
                self.drain();
            }
        }
        if !self.data_open {
            return;
        }
        for _ in 0..SOURCE_BATCH {
            if self.stalled.is_some() {
                return;
            }
            let cmd = match self.data.try_recv() {
                Ok(cmd) => cmd,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.data_open = false;
                    return;
                }
            };
            match cmd {
                DataCommand::Send(peer, message) => {
                    if self.queue_is_full(&peer) {
                        self.stalled = Some((peer, message));
                        return;
                    }
                    self.send_now(peer, message);
                }
                DataCommand::Broadcast(message) => {
                    if let Err(error) = self.participant.broadcast(message) {
                        self.emit(Event::SendFailed { peer: None, error });
                    }
                }
                DataCommand::Video(capture, frame) => {
                    if let Err(error) = self.participant.send_video(capture, &frame) {
                        self.emit(Event::SendFailed { peer: None, error });
                    }
                }
            }
            self.drain();
        }
    }

    /// Whether the core would refuse a message to `peer` with `SendQueueFull`
    fn queue_is_full(&self, peer: &PeerId) -> bool {
        self.participant.send_room(peer) == Some(0)
    }

    fn send_now(&mut self, peer: PeerId, message: DataMessage) {
        if let Err(error) = self.participant.send_data(&peer, message) {
            self.emit(Event::SendFailed {
                peer: Some(peer),
                error,
            });
        }
    }

    fn handle_signal(&mut self, msg: SignalIn) {
        match msg {
            SignalIn::Frame(ServerFrame::Response {
                id: Some(id),
                result,
            }) if self.rejoin_id.as_ref() == Some(&id) => self.rejoined(result),
            SignalIn::Frame(frame) => {
                let input = Input::Signal(self.clock.now(), frame);
                if let Err(e) = self.participant.handle_input(input) {
                    tracing::debug!(%e, "signaling message rejected");
                }
            }
            SignalIn::Lost(reason) => self.signaling_lost(reason),
            SignalIn::Connected => {
                self.signal_up = true;
                self.rejoin();
            }
        }
    }

    fn signaling_lost(&mut self, reason: String) {
        if !self.signal_up {
            return;
        }
        self.signal_up = false;
        self.rejoin_id = None;
        self.rejoin_at = None;
        tracing::debug!(%reason, "signaling connection lost");
        if self.ready.is_some() {
            self.fail_join(Error::SignalLost(reason));
            return;
        }
        self.emit(Event::SignalingLost { reason });
    }

    /// Re-announces with the same peer id and room on a new signaling connection
    ///
    /// This is the one request the driver writes itself: the core has no way to re-announce
    /// without renegotiating (see the crate docs). The response is taken by its id and not
    /// shown to the core.
    fn rejoin(&mut self) {
        let (Some(me), Some(room)) = (self.participant.my_id(), self.participant.room()) else {
            return;
        };
        if !self.signal_up {
            return;
        }
        self.rejoin_seq += 1;
        let id = RequestId::String(format!("meshrtc-blocking.rejoin.{}", self.rejoin_seq));
        let config = self.participant.config();
        let frame = ClientFrame {
            id: id.clone(),
            request: Request::Announce {
                room: room.clone(),
                peer_id: Some(me.clone()),
                capabilities: Some(config.capabilities),
                metadata: Some(config.metadata.clone()),
                token: None,
                resume: None,
            },
        };
        self.rejoin_id = Some(id);
        self.send_signal(&frame);
    }

    fn rejoined(&mut self, result: std::result::Result<Value, RpcError>) {
        self.rejoin_id = None;
        let value = match result {
            Ok(v) => v,
            Err(error) if error.error_code() == Some(ErrorCode::PeerIdTaken) => {
                // The server still holds our old connection; it lets go after its timeout.
                tracing::debug!("peer id still taken after reconnect; retrying");
                self.rejoin_at = Some(self.clock.now() + self.reconnect.max);
                return;
            }
            Err(error) => {
                self.emit(Event::RejoinFailed { error });
                return;
            }
        };
        match AnnounceResult::from_value(&value) {
            Ok(announced) => {
                for p in &announced.peers {
                    if !self.participant.peer_ids().any(|id| *id == p.peer_id) {
                        tracing::warn!(
                            peer = %p.peer_id,
                            "peer joined while signaling was down; the core cannot offer to it"
                        );
                    }
                }
                self.emit(Event::SignalingRestored {
                    peers: announced.peers,
                });
            }
            Err(error) => self.emit(Event::RejoinFailed { error }),
        }
    }

    fn stats(&self) -> SessionStats {
        let peers = self
            .participant
            .peer_ids()
            .filter_map(|id| Some((id.clone(), self.participant.peer_stats(id)?)))
            .collect();
        SessionStats {
            peers,
            drops: self.participant.drop_counters(),
            signaling_connected: self.signal_up,
            rt: self.playout.counts(),
            loop_turns: self.turns,
        }
    }

    /// Leaves the room: `peer.disconnect`, close every peer, close the WebSocket, join the
    /// signaling thread; the socket is released when the driver is dropped
    fn shutdown(mut self) {
        self.participant.leave();
        self.drain();
        let _ = self.signal_out.send(SignalOut::Close);
        // The signaling thread may be blocked handing us a frame; let that fail.
        let Self {
            signal_in,
            signal_thread,
            socket,
            local_addr,
            ..
        } = self;
        drop(signal_in);
        if let Some(thread) = signal_thread {
            if thread.join().is_err() {
                tracing::error!("the signaling thread panicked");
            }
        }
        drop(socket);
        tracing::debug!(local = %local_addr, "session ended");
    }
}
