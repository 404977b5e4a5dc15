//! A session: one [`Participant`](meshrtc::Participant) on a UDP socket and a signaling
//! connection, driven by one OS thread

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshrtc::codec::I420Frame;
use meshrtc::signal::{PeerId, PeerInfo, RoomId, RpcError};
use meshrtc::{DataMessage, DropCounters, PeerStats, MAX_DATA_MESSAGE};

use crate::audio::{
    self, AudioCapture, AudioPlayout, PeerIndex, RtCounts, DEFAULT_CAPTURE_SLOTS,
    DEFAULT_PLAYOUT_SLOTS,
};
use crate::clock::{SharedClock, SystemClock};
use crate::driver::{self, Control, DataCommand, Joined, WaitMode};
use crate::signaling::{self, Backoff};
use crate::{Error, Result};

/// Default size of the UDP socket's kernel receive and send buffers
///
/// Linux's default (208 KiB) overflows on loopback when a data channel sends at full rate,
/// and every drop stalls SCTP for a retransmission timeout.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Default number of data commands queued between the handle and the core thread
///
/// When the queue is full, [`SessionHandle::send_data`] blocks: that is the back-pressure
/// an application sees when a peer's channel cannot keep up.
pub const DEFAULT_COMMAND_QUEUE: usize = 1024;

/// Signaling frames queued from the signaling thread to the core thread
///
/// Bounded so that a server flooding us is slowed down at its own socket; the core thread
/// empties the queue every loop turn.
pub(crate) const SIGNAL_QUEUE: usize = 1024;

/// How a [`Session`] is set up
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The signaling server, `ws://host:port/`
    pub signal_url: String,
    /// The room to join
    pub room: RoomId,
    /// Our peer id; `None` lets the server assign one (a reconnect re-announces it)
    pub peer_id: Option<PeerId>,
    /// Where the UDP socket binds; its address is the only local candidate (default
    /// `127.0.0.1:0`). It must be a specific unicast address.
    pub bind: SocketAddr,
    /// The participant's configuration (seed, capabilities, candidate policy, media, ...)
    ///
    /// `participant.seed` also seeds the core thread's `fastrand` generator, which str0m
    /// draws from.
    pub participant: meshrtc::Config,
    /// Kernel receive and send buffer size of the UDP socket
    pub socket_buffer: usize,
    /// Data commands queued between the handle and the core thread
    pub command_queue: usize,
    /// Slots of the capture ring (chunks the audio callback can push ahead of the core)
    pub capture_slots: usize,
    /// Slots of the playout ring (chunks waiting for the audio callback, all peers)
    pub playout_slots: usize,
    /// How long connecting to the server and announcing may take
    pub join_timeout: Duration,
    /// How the signaling thread waits between reconnection attempts
    pub reconnect: Backoff,
    /// Where the core thread reads the time
    pub clock: SharedClock,
    /// How the core thread waits on its socket
    pub wait: WaitMode,
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
            capture_slots: DEFAULT_CAPTURE_SLOTS,
            playout_slots: DEFAULT_PLAYOUT_SLOTS,
            join_timeout: Duration::from_secs(10),
            reconnect: Backoff::default(),
            clock: SharedClock::new(SystemClock),
            wait: WaitMode::default(),
        }
    }
}

/// Something that happened in a session; read from [`Events`] on an ordinary thread
///
/// Decoded audio does not come here: it goes to [`AudioPlayout`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// An event of the core (peer joined, connected, data received, video frame, left, ...)
    ///
    /// Never `meshrtc::Event::AudioPlayout`. After a signaling reconnect, peers that were
    /// connected all along may be reported again as `PeerJoined` (the new server announces
    /// them); their connections are not touched.
    Mesh(meshrtc::Event),
    /// A remote peer's audio got a [`PeerIndex`] on the playout ring (before its first chunk)
    AudioStreamStarted {
        /// The peer
        peer: PeerId,
        /// Its index in [`PlayoutInfo`](crate::PlayoutInfo)
        index: PeerIndex,
    },
    /// A remote peer left or failed; its index is free (after its last chunk)
    AudioStreamEnded {
        /// The peer
        peer: PeerId,
        /// The index it had
        index: PeerIndex,
    },
    /// The signaling connection is gone; the driver reconnects with backoff
    ///
    /// Connected peers keep working (their media does not depend on signaling); no new
    /// peer can reach us until [`Event::SignalingRestored`]. Edge-triggered: once per loss.
    SignalingLost {
        /// Why the connection ended
        reason: String,
    },
    /// The signaling connection is back and we re-announced with the same peer id
    ///
    /// `peers` are the peers the server lists in the room. Existing connections are kept
    /// as they are. Peers that joined while we were away and that we have no connection
    /// with cannot be reached yet: the core cannot offer to them outside a first join.
    SignalingRestored {
        /// The room as the server sees it (without us)
        peers: Vec<PeerInfo>,
    },
    /// The server refused our re-announce after a reconnect (other than "id taken", which
    /// is retried)
    RejoinFailed {
        /// The server's error
        error: RpcError,
    },
    /// A data message or video frame given to the handle was not sent (peer unknown or
    /// gone, no data channel, media not enabled, ...)
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
    /// Every remote peer that currently has a connection (connecting or connected)
    pub peers: BTreeMap<PeerId, PeerStats>,
    /// Input the core dropped
    pub drops: DropCounters,
    /// Whether the signaling connection is up
    pub signaling_connected: bool,
    /// Counters of the real-time audio path
    pub rt: RtCounts,
    /// Turns of the core thread's loop so far (each is one wait)
    pub loop_turns: u64,
}

/// A joined session: the control handle, the event stream and both ends of the real-time
/// audio path, each to be moved to the thread that uses it
#[derive(Debug)]
pub struct Session {
    /// Commands, statistics and leaving (ordinary threads)
    pub handle: SessionHandle,
    /// Everything that happens, in order (ordinary threads)
    pub events: Events,
    /// Captured PCM in (the audio callback)
    pub capture: AudioCapture,
    /// Decoded remote audio out (the audio callback)
    pub playout: AudioPlayout,
}

impl Session {
    /// Binds the UDP socket, connects to the signaling server, announces, and returns once
    /// the server accepted us (or after `config.join_timeout`)
    ///
    /// Starts two threads: the core thread, which owns the participant and the socket, and
    /// the signaling thread, which owns the WebSocket. Blocks the caller.
    pub fn join(config: SessionConfig) -> Result<Self> {
        if config.bind.ip().is_unspecified() || config.bind.ip().is_multicast() {
            return Err(Error::BadBindAddress(config.bind));
        }
        signaling::parse_url(&config.signal_url)?;
        let opus = config.participant.media.opus;
        let frame_samples = opus.frame_ms as usize * 48 * usize::from(opus.channels);
        let started = Instant::now();
        let socket = bind_udp(config.bind, config.socket_buffer)?;
        let local_addr = socket.local_addr().map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
        let ws = signaling::connect(&config.signal_url, config.join_timeout)?;

        let name = config
            .peer_id
            .as_ref()
            .map_or_else(|| "peer".to_string(), |p| p.as_str().to_string());
        let (signal_out_tx, signal_out_rx) = mpsc::channel();
        let (signal_in_tx, signal_in_rx) = mpsc::sync_channel(SIGNAL_QUEUE);
        let url = config.signal_url.clone();
        let backoff = config.reconnect;
        let connect_timeout = config.join_timeout;
        let signal_thread = std::thread::Builder::new()
            .name(thread_name("mrb-sig", &name))
            .spawn(move || {
                signaling::run(
                    ws,
                    url,
                    backoff,
                    connect_timeout,
                    signal_out_rx,
                    signal_in_tx,
                )
            })
            .map_err(Error::Spawn)?;

        let (capture, playout, source, sink) = audio::rings(
            config.capture_slots,
            config.playout_slots,
            frame_samples,
            opus.channels,
        );
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (control_tx, control_rx) = mpsc::channel();
        let (data_tx, data_rx) = mpsc::sync_channel(config.command_queue.max(1));
        let (event_tx, event_rx) = mpsc::channel();
        let join_timeout = config.join_timeout;
        let setup = driver::Setup {
            config,
            socket,
            local_addr,
            signal_out: signal_out_tx,
            signal_in: signal_in_rx,
            signal_thread,
            events: event_tx,
            ready: ready_tx,
            control: control_rx,
            data: data_rx,
            capture: source,
            playout: sink,
        };
        let core_thread = std::thread::Builder::new()
            .name(thread_name("mrb-core", &name))
            .spawn(move || driver::run(setup))
            .map_err(Error::Spawn)?;

        let mut handle = SessionHandle {
            peer_id: None,
            room: None,
            local_addr,
            control: control_tx,
            data: data_tx,
            thread: Some(core_thread),
        };
        let left = join_timeout.saturating_sub(started.elapsed());
        let joined = match ready_rx.recv_timeout(left) {
            Ok(Ok(joined)) => joined,
            Ok(Err(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => return Err(Error::JoinTimeout(join_timeout)),
            Err(RecvTimeoutError::Disconnected) => return Err(Error::SessionEnded),
        };
        let Joined { peer_id, room } = joined;
        handle.peer_id = Some(peer_id);
        handle.room = Some(room);
        Ok(Self {
            handle,
            events: Events { rx: event_rx },
            capture,
            playout,
        })
    }
}

/// Thread names show in `top -H` and `/proc/*/task/*/comm` (15 bytes at most there)
fn thread_name(prefix: &str, peer: &str) -> String {
    let mut name = format!("{prefix}-{peer}");
    name.truncate(15);
    name
}

/// Binds the UDP socket with large kernel buffers; reads block (with a timeout per turn)
fn bind_udp(addr: SocketAddr, buffer: usize) -> Result<UdpSocket> {
    let err = |source| Error::Bind { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(err)?;
    // The kernel may cap the sizes (net.core.rmem_max); what we get is still the most we
    // can have, so a refusal is not an error.
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        tracing::debug!(%e, "cannot set udp receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        tracing::debug!(%e, "cannot set udp send buffer");
    }
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}

/// Commands to a running session (not real-time safe: these may block and allocate)
///
/// Dropping the handle leaves the room as [`leave`](Self::leave) does. The handle is
/// `Sync`: share it by reference (or in an `Arc`) between threads.
#[derive(Debug)]
pub struct SessionHandle {
    peer_id: Option<PeerId>,
    room: Option<RoomId>,
    local_addr: SocketAddr,
    control: Sender<Control>,
    data: SyncSender<DataCommand>,
    thread: Option<JoinHandle<()>>,
}

impl SessionHandle {
    /// Our peer id (as chosen, or as the server assigned it)
    pub fn peer_id(&self) -> &PeerId {
        self.peer_id
            .as_ref()
            .expect("set before the handle is handed out; panic means bug")
    }

    /// The room we joined
    pub fn room(&self) -> &RoomId {
        self.room
            .as_ref()
            .expect("set before the handle is handed out; panic means bug")
    }

    /// The UDP socket's address, our only host candidate
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a data message to one peer; blocks while the command queue is full
    ///
    /// The core thread picks commands up within [`MAX_WAIT`](crate::MAX_WAIT). Messages
    /// queue in the core until the peer's channel opens; while the core's queue for the
    /// peer is full the core thread holds further data commands back, so this blocks too.
    /// A message that cannot be delivered (unknown peer, peer gone) is reported as
    /// [`Event::SendFailed`].
    pub fn send_data(&self, peer: &PeerId, message: DataMessage) -> Result<()> {
        check_size(&message)?;
        self.data
            .send(DataCommand::Send(peer.clone(), message))
            .map_err(|_| Error::SessionEnded)
    }

    /// Queues a data message to every peer that has a connection; blocks while the command
    /// queue is full
    ///
    /// Peers whose queue is full are skipped.
    pub fn broadcast(&self, message: DataMessage) -> Result<()> {
        check_size(&message)?;
        self.data
            .send(DataCommand::Broadcast(message))
            .map_err(|_| Error::SessionEnded)
    }

    /// Queues one captured video frame for every peer that takes video; blocks while the
    /// command queue is full
    ///
    /// `capture` is when the frame was captured, on the session's clock.
    pub fn send_video(&self, capture: Instant, frame: I420Frame) -> Result<()> {
        self.data
            .send(DataCommand::Video(capture, Box::new(frame)))
            .map_err(|_| Error::SessionEnded)
    }

    /// A snapshot of the session's counters (waits for the core thread's next turn)
    pub fn stats(&self) -> Result<SessionStats> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.control
            .send(Control::Stats(tx))
            .map_err(|_| Error::SessionEnded)?;
        rx.recv().map_err(|_| Error::SessionEnded)
    }

    /// Leaves the room and waits until both driver threads have ended
    ///
    /// Sends `peer.disconnect`, closes every peer (each gets a DTLS close), closes the
    /// WebSocket and releases the UDP socket before returning. Leaving a session that has
    /// already ended is not an error.
    pub fn leave(mut self) -> Result<()> {
        self.finish();
        Ok(())
    }

    /// Whether the core thread has ended
    pub fn is_closed(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn finish(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A closed channel means the core thread has ended already.
        let _ = self.control.send(Control::Leave);
        if thread.join().is_err() {
            tracing::error!("the core thread panicked");
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

fn check_size(message: &DataMessage) -> Result<()> {
    if message.len() > MAX_DATA_MESSAGE {
        return Err(meshrtc::Error::MessageTooLarge(message.len()).into());
    }
    Ok(())
}

/// The session's events, in order; ends when the core thread has finished
///
/// Events are buffered without limit, so read them promptly (not from the audio callback:
/// receiving may block and frees memory).
#[derive(Debug)]
pub struct Events {
    rx: Receiver<Event>,
}

impl Events {
    /// The next event, blocking; `None` once the session has ended and every event was read
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or once the session
    /// has ended
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next event if one is ready
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Iterator for Events {
    type Item = Event;

    /// Blocks for the next event; ends with the session
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}
