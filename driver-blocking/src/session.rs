//! Joining a room on plain threads, and the handles an application holds

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshrtc::codec::I420Frame;
use meshrtc::session::{self, Command, EventReceiver};
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::DataMessage;
use meshrtc_driver::{Error, Result, SessionConfig, JOIN_GRACE};

use crate::audio::{self, AudioCapture, AudioPlayout, RtCounters, RtCounts};
use crate::driver::{self, Control, Joined, WaitMode};
use crate::signaling;

pub use meshrtc::session::{Event, Stats};

/// Default capture slots: 320 ms of 10 ms chunks
pub const DEFAULT_CAPTURE_SLOTS: usize = 32;

/// Default playout slots: about 280 ms of 10 ms chunks from each of 9 remote peers
pub const DEFAULT_PLAYOUT_SLOTS: usize = 256;

/// Signaling frames queued from the signaling thread to the core thread
const SIGNAL_QUEUE: usize = 256;

/// The real-time side of a blocking session: ring sizes and how the core thread waits
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealtimeConfig {
    /// Slots of the capture ring (chunks the audio callback can push ahead of the core)
    pub capture_slots: usize,
    /// Slots of the playout ring (chunks waiting for the audio callback, all peers)
    pub playout_slots: usize,
    /// How the core thread waits on its socket
    pub wait: WaitMode,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            capture_slots: DEFAULT_CAPTURE_SLOTS,
            playout_slots: DEFAULT_PLAYOUT_SLOTS,
            wait: WaitMode::default(),
        }
    }
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
    /// Joins with the default [`RealtimeConfig`]; see [`join_with`](Self::join_with)
    pub fn join(config: SessionConfig) -> Result<Self> {
        Self::join_with(config, RealtimeConfig::default())
    }

    /// Binds the UDP socket, connects to the signaling server, announces, and returns once
    /// the server accepted us (or the join failed)
    ///
    /// Starts two threads: the core thread, which owns the core session and the socket,
    /// and the signaling thread, which owns the WebSocket. Blocks the caller.
    pub fn join_with(config: SessionConfig, rt: RealtimeConfig) -> Result<Self> {
        config.check()?;
        if config.bind.ip().is_unspecified() {
            // Without IP_PKTINFO on std sockets the local address of a datagram is unknown:
            // this driver binds one specific address (its host candidate).
            return Err(Error::BadBindAddress(config.bind));
        }
        let opus = config.session.participant.media.opus;
        let frame_samples = opus.frame_ms as usize * 48 * usize::from(opus.channels);
        let socket = meshrtc_driver::bind_udp(config.bind, config.socket_buffer)?;
        let local_addr = socket.local_addr().map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;

        let (signal_out_tx, signal_out_rx) = mpsc::channel();
        let (signal_in_tx, signal_in_rx) = mpsc::sync_channel(SIGNAL_QUEUE);
        let url = config.signal_url.clone();
        let signal_thread = std::thread::Builder::new()
            .name(config.thread_name("mrb-sig"))
            .spawn(move || signaling::run(url, signal_out_rx, signal_in_tx))
            .map_err(Error::Spawn)?;

        let (capture, playout, source, sink) = audio::rings(
            rt.capture_slots,
            rt.playout_slots,
            frame_samples,
            opus.channels,
        );
        let counters = capture.counters_handle();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (control_tx, control_rx) = mpsc::channel();
        let (cmd_tx, cmd_rx) = mpsc::sync_channel(config.command_queue.max(1));
        let (event_tx, event_rx) = session::event_queue(config.session.max_queued_media);
        let wait = config.session.join_timeout + JOIN_GRACE;
        let name = config.thread_name("mrb-core");
        let setup = driver::Setup {
            config,
            wait: rt.wait,
            socket,
            local_addr,
            signal_out: signal_out_tx,
            signal_in: signal_in_rx,
            signal_thread,
            events: event_tx,
            ready: ready_tx,
            control: control_rx,
            commands: cmd_rx,
            capture: source,
            playout: sink,
        };
        let core_thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || driver::run(setup))
            .map_err(Error::Spawn)?;

        let mut handle = SessionHandle {
            peer_id: None,
            room: None,
            local_addr,
            control: control_tx,
            commands: cmd_tx,
            counters,
            thread: Some(core_thread),
        };
        let Joined { peer_id, room } = match ready_rx.recv_timeout(wait) {
            Ok(Ok(joined)) => joined,
            Ok(Err(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => {
                return Err(Error::Join(session::JoinError::Timeout(wait)))
            }
            Err(RecvTimeoutError::Disconnected) => return Err(Error::SessionEnded),
        };
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

/// Commands to a running session (not real-time safe: these may block and allocate)
///
/// Dropping the handle leaves the room as [`leave`](Self::leave) does. The handle is
/// `Sync`: share it by reference (or in an `Arc`) between threads.
#[derive(Debug)]
pub struct SessionHandle {
    peer_id: Option<PeerId>,
    room: Option<RoomId>,
    local_addr: std::net::SocketAddr,
    control: mpsc::Sender<Control>,
    commands: SyncSender<Command>,
    counters: std::sync::Arc<RtCounters>,
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

    /// The UDP socket's address, our host candidate
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Queues a data message to one peer; blocks while the command queue is full
    ///
    /// The core thread picks commands up within [`MAX_WAIT`](crate::MAX_WAIT). Messages
    /// queue in the core until the peer's channel opens; while the core's queue for the
    /// peer is full the core thread holds further commands back, so this blocks too. A
    /// message that cannot be delivered (unknown peer, peer gone) is reported as
    /// [`Event::SendFailed`].
    pub fn send_data(&self, peer: &PeerId, message: DataMessage) -> Result<()> {
        message.check_size()?;
        self.command(Command::Send(peer.clone(), message))
    }

    /// Queues a data message to every peer that has a connection; blocks while the command
    /// queue is full
    ///
    /// Peers whose queue is full are skipped.
    pub fn broadcast(&self, message: DataMessage) -> Result<()> {
        message.check_size()?;
        self.command(Command::Broadcast(message))
    }

    /// Queues one captured video frame for every peer that takes video; blocks while the
    /// command queue is full
    ///
    /// `capture` is when the frame was captured, on the session's clock. (Audio goes
    /// through the real-time [`AudioCapture`] instead.)
    pub fn send_video(&self, capture: Instant, frame: I420Frame) -> Result<()> {
        self.command(Command::Video(capture, Box::new(frame)))
    }

    /// Queues one audio frame of an outgoing track (its own Opus stream: one Opus frame of
    /// interleaved PCM) for `peers`; blocks while the command queue is full (see
    /// [`meshrtc::Participant::send_audio_to`])
    ///
    /// Not for the audio callback: this allocates and may block. The default track, to
    /// every peer, goes through the real-time [`AudioCapture`]; per-peer tracks (an N−1
    /// mix, a track for some peers only) come from an ordinary thread, such as one running
    /// a [`meshrtc::pipeline::Pipeline`].
    pub fn send_audio_to(
        &self,
        track: meshrtc::pipeline::TrackId,
        capture: Instant,
        pcm: Vec<i16>,
        peers: Vec<PeerId>,
    ) -> Result<()> {
        self.command(Command::AudioTo(track, capture, pcm, peers))
    }

    /// Queues one video frame of an outgoing track (its own encoders) for `peers`; blocks
    /// while the command queue is full (see [`meshrtc::Participant::send_video_to`])
    pub fn send_video_to(
        &self,
        track: meshrtc::pipeline::TrackId,
        capture: Instant,
        frame: std::sync::Arc<I420Frame>,
        peers: Vec<PeerId>,
    ) -> Result<()> {
        self.command(Command::VideoTo(track, capture, frame, peers))
    }

    /// Pauses (`false`) or resumes sending `kind` to `peer`; the remote sees its m-line
    /// direction change (see [`meshrtc::Participant::set_sending`])
    pub fn set_sending(
        &self,
        peer: &PeerId,
        kind: meshrtc::MediaKind,
        sending: bool,
    ) -> Result<()> {
        self.command(Command::SetSending(peer.clone(), kind, sending))
    }

    /// Gives an outgoing video track m-lines of its own, so a peer can receive it next to
    /// our other video tracks (see [`meshrtc::Participant::add_video_track`])
    pub fn add_video_track(&self, track: meshrtc::pipeline::TrackId) -> Result<()> {
        self.command(Command::AddVideoTrack(track))
    }

    fn command(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| Error::SessionEnded)
    }

    /// A snapshot of the session's counters (waits for the core thread's next turn)
    pub fn stats(&self) -> Result<Stats> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.control
            .send(Control::Stats(tx))
            .map_err(|_| Error::SessionEnded)?;
        rx.recv().map_err(|_| Error::SessionEnded)
    }

    /// The counters of the real-time audio path (read without waiting)
    pub fn rt_counts(&self) -> RtCounts {
        self.counters.snapshot()
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

/// The session's events, in order; ends when the core thread has finished
///
/// Decoded audio does not come here: it goes to [`AudioPlayout`]. Bounded: video frames
/// not read in time are dropped oldest first and counted
/// ([`Stats::media_events_dropped`]); control events are never dropped. Read them on an
/// ordinary thread, not the audio callback (receiving may block and frees memory).
#[derive(Debug)]
pub struct Events {
    rx: EventReceiver,
}

impl Events {
    /// The next event, blocking; `None` once the session has ended and every event was read
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv()
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or once the session
    /// has ended
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout)
    }

    /// The next event if one is ready
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv()
    }
}

impl Iterator for Events {
    type Item = Event;

    /// Blocks for the next event; ends with the session
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}
