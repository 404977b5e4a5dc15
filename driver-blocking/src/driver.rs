//! The core thread: owns the core session and the UDP socket, and runs the loop
//!
//! Each turn: drain the session, take what the other threads left in the channels and the
//! capture ring (each item is one mutation, followed by a drain), then block on the socket
//! with a read timeout of `min(deadline - now, MAX_WAIT)`, and feed what woke it.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use meshrtc::clock::SharedClock;
use meshrtc::ice::Resolution;
use meshrtc::session::{self, Command, Event, EventSender, Input, Output, Stats};
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::Receive;
use meshrtc_driver::{Error, Result, SessionConfig};
use rustix::event::{PollFd, PollFlags};

use crate::audio::{CaptureSource, PlayoutSink};
use crate::clock::SystemClock;
use crate::signaling::{SignalIn, SignalOut};

/// The longest the core thread blocks on the socket before it looks at the command
/// channels, the signaling channel and the capture ring
///
/// Nothing on the real-time path may make a system call, so the audio callback cannot wake
/// the core thread; the core thread looks instead. 5 ms is half of a 10 ms audio callback
/// period: a pushed chunk waits 2.5 ms on average before it is encoded and sent. Commands
/// and signaling frames wait as long. The wake-ups cost about 200 turns a second while
/// idle. Linux rounds socket read timeouts up to whole scheduler ticks, so with
/// [`WaitMode::ReadTimeout`] the effective bound can be longer (about 12 ms on the
/// development machine; see the crate docs).
pub const MAX_WAIT: Duration = Duration::from_millis(5);

/// The most items taken from each source (signaling, capture, commands) in one turn, so
/// that a busy source cannot starve the socket
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
    pub(crate) wait: WaitMode,
    pub(crate) socket: UdpSocket,
    pub(crate) local_addr: SocketAddr,
    pub(crate) signal_out: Sender<SignalOut>,
    pub(crate) signal_in: Receiver<SignalIn>,
    pub(crate) signal_thread: JoinHandle<()>,
    pub(crate) events: EventSender,
    pub(crate) ready: SyncSender<Result<Joined>>,
    pub(crate) control: Receiver<Control>,
    pub(crate) commands: Receiver<Command>,
    pub(crate) capture: CaptureSource,
    pub(crate) playout: PlayoutSink,
}

/// What the handle asks of the core thread, outside the command queue
#[derive(Debug)]
pub(crate) enum Control {
    Stats(SyncSender<Stats>),
    Leave,
}

/// What `Session::join` waits for
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) peer_id: PeerId,
    pub(crate) room: RoomId,
}

/// The core thread's body
pub(crate) fn run(setup: Setup) {
    let Setup {
        config,
        wait,
        socket,
        local_addr,
        signal_out,
        signal_in,
        signal_thread,
        events,
        ready,
        control,
        commands,
        capture,
        playout,
    } = setup;
    // str0m draws from the thread-local generator; this thread drives exactly one core.
    fastrand::seed(config.session.participant.seed);
    if wait == WaitMode::Poll {
        if let Err(e) = socket.set_nonblocking(true) {
            tracing::warn!(%e, "cannot make the socket non-blocking");
        }
    }
    let clock = config
        .clock
        .unwrap_or_else(|| SharedClock::new(SystemClock));
    let mut session_config = config.session;
    // Video encodes are timed on the same clock (CPU overload drops frames).
    let encode_clock = &mut session_config.participant.encode_clock;
    encode_clock.get_or_insert_with(|| clock.clone());
    let mut session = session::Session::new(session_config, clock.now(), Some(SystemTime::now()));
    let mut driver = Driver {
        socket,
        local_addr,
        clock,
        signal_out,
        signal_in,
        events,
        batch: Vec::new(),
        ready: Some(ready),
        control,
        commands,
        commands_open: true,
        capture,
        playout,
        wait,
        read_timeout: None,
        resolved: mpsc::channel(),
    };
    if let Err(e) = session.participant_mut().add_local_candidate(local_addr) {
        driver.fail(Error::Command(e));
        return;
    }
    driver.run(&mut session);
    driver.events.close();
    // The signaling thread ends once its channel from us is gone.
    drop(driver);
    if signal_thread.join().is_err() {
        tracing::error!("the signaling thread panicked");
    }
    tracing::debug!(local = %local_addr, "session ended");
}

/// The core thread's IO; the session is passed in so that its drains can borrow both
struct Driver {
    socket: UdpSocket,
    local_addr: SocketAddr,
    clock: SharedClock,
    signal_out: Sender<SignalOut>,
    signal_in: Receiver<SignalIn>,
    events: EventSender,
    /// Events of the current drain, handed over in one go
    batch: Vec<Event>,
    ready: Option<SyncSender<Result<Joined>>>,
    control: Receiver<Control>,
    commands: Receiver<Command>,
    commands_open: bool,
    capture: CaptureSource,
    playout: PlayoutSink,
    wait: WaitMode,
    /// The read timeout the socket has now (saves a system call when unchanged)
    read_timeout: Option<Duration>,
    /// STUN/TURN server names resolved on helper threads
    resolved: (Sender<Vec<Resolution>>, Receiver<Vec<Resolution>>),
}

impl Driver {
    /// The loop: drain, take from the sources, wait on the socket, feed, repeat
    fn run(&mut self, s: &mut session::Session) {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            self.playout.count_turn();
            self.drain(s);
            self.serve_sources(s);
            let deadline = self.drain(s);
            if s.is_finished() {
                return;
            }
            let now = self.clock.now();
            let wait = deadline.saturating_duration_since(now);
            if wait.is_zero() {
                // Due (or overdue): no read timeout can be zero, and none is needed.
                s.handle_input(Input::Timeout(now));
                continue;
            }
            match self.recv(&mut buf, wait.min(MAX_WAIT)) {
                Ok((len, source)) => {
                    let recv = Receive {
                        source,
                        destination: self.local_addr,
                        contents: &buf[..len],
                    };
                    s.handle_input(Input::Receive(self.clock.now(), recv));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let now = self.clock.now();
                    if now >= deadline {
                        s.handle_input(Input::Timeout(now));
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
        match self.wait {
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

    /// Polls the session until it returns its next deadline, carrying out every output
    fn drain(&mut self, s: &mut session::Session) -> Instant {
        let deadline = loop {
            match s.poll_output() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination) {
                        tracing::debug!(%e, to = %t.destination, "udp send failed");
                    }
                }
                // A closed channel means the signaling thread has ended; the session
                // hears of it from the signaling channel.
                Output::Signal(frame) => {
                    let _ = self.signal_out.send(SignalOut::Frame(frame.to_json()));
                }
                Output::Connect => {
                    let _ = self.signal_out.send(SignalOut::Connect);
                }
                Output::Disconnect => {
                    let _ = self.signal_out.send(SignalOut::Disconnect);
                }
                Output::Event(e) => self.deliver(e),
                Output::Resolve(endpoints) => {
                    // The system resolver blocks: never on this thread.
                    let tx = self.resolved.0.clone();
                    let spawned = std::thread::Builder::new()
                        .name("mrb-resolve".into())
                        .spawn(move || {
                            let _ = tx.send(meshrtc_driver::resolve_blocking(endpoints));
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(%e, "cannot start a resolver thread");
                    }
                }
            }
        };
        self.events.push_all(&mut self.batch);
        deadline
    }

    fn deliver(&mut self, event: Event) {
        match &event {
            Event::Mesh(meshrtc::Event::AudioPlayout { peer, chunk }) => {
                self.playout.deliver(peer, chunk);
                return;
            }
            Event::AudioStreamStarted { peer, slot } => self.playout.start(peer, *slot),
            Event::AudioStreamEnded { slot, .. } => self.playout.end(*slot),
            Event::Joined { peer_id, room, .. } => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(Joined {
                        peer_id: peer_id.clone(),
                        room: room.clone(),
                    }));
                }
            }
            Event::JoinFailed(error) => self.fail(Error::Join(error.clone())),
            _ => {}
        }
        self.batch.push(event);
    }

    /// `Session::join` fails with `error`
    fn fail(&mut self, error: Error) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error));
        }
    }

    /// Takes what the other threads left for us; every item is one mutation and a drain
    fn serve_sources(&mut self, s: &mut session::Session) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Stats(reply)) => {
                    let mut stats = s.stats();
                    stats.media_events_dropped = self.events.dropped_media();
                    let _ = reply.send(stats);
                }
                // Every handle is gone, or one asked to leave.
                Ok(Control::Leave) | Err(TryRecvError::Disconnected) => {
                    s.leave();
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        for _ in 0..SOURCE_BATCH {
            let input = match self.signal_in.try_recv() {
                Ok(SignalIn::Frame(frame)) => Input::Signal(self.clock.now(), frame),
                Ok(SignalIn::Up) => Input::SignalingUp(self.clock.now()),
                Ok(SignalIn::Down(reason)) => Input::SignalingDown(self.clock.now(), reason),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let reason = "signaling thread ended".to_string();
                    s.handle_input(Input::SignalingDown(self.clock.now(), reason));
                    break;
                }
            };
            s.handle_input(input);
            self.drain(s);
        }
        while let Ok(answers) = self.resolved.1.try_recv() {
            s.handle_input(Input::Resolved(self.clock.now(), answers));
            self.drain(s);
        }
        for _ in 0..SOURCE_BATCH {
            let Some((capture, pcm)) = self.capture.next_frame() else {
                break;
            };
            if let Err(error) = s.send_audio(capture, pcm) {
                tracing::debug!(%error, "audio frame refused");
            }
            self.drain(s);
        }
        for _ in 0..SOURCE_BATCH {
            if !self.commands_open || !s.wants_commands() {
                break;
            }
            match self.commands.try_recv() {
                Ok(cmd) => {
                    s.handle_input(Input::Command(self.clock.now(), cmd));
                    self.drain(s);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.commands_open = false,
            }
        }
    }
}
