//! meshrtc on plain OS threads, for applications with a real-time audio thread
//!
//! The sans-IO core ([`meshrtc::session::Session`]) makes every protocol decision; this crate
//! only moves bytes and time in and out of it, with no async runtime:
//!
//! * the **core thread** owns the core session and a [`std::net::UdpSocket`]. It is the only
//!   thread that touches the session (no `Arc<Mutex<_>>`).
//! * the **signaling thread** owns a synchronous WebSocket ([`tungstenite`]) to the JSON-RPC
//!   server of `contracts/signaling.md`. It parses server frames with
//!   [`ServerFrame::parse`](meshrtc::signal::ServerFrame::parse), writes
//!   [`ClientFrame::to_json`](meshrtc::signal::ClientFrame::to_json), and opens a new
//!   connection when the session asks (the session decides when, with backoff).
//! * the application's **audio callback** owns [`AudioCapture`] and [`AudioPlayout`], the
//!   ends of two wait-free rings; other application threads use [`SessionHandle`] and
//!   [`Events`].
//!
//! # Example
//!
//! ```no_run
//! use std::time::Instant;
//! use meshrtc::signal::RoomId;
//! use meshrtc_blocking::{Session, SessionConfig, SLOT_SAMPLES};
//!
//! # fn main() -> meshrtc_blocking::Result<()> {
//! let mut config = SessionConfig::new("ws://127.0.0.1:8080/", RoomId::new("demo").unwrap());
//! config.session.participant.capabilities.audio = true;
//! let Session { handle, events, mut capture, mut playout } = Session::join(config)?;
//! // In the audio callback (every 10 ms): push what the microphone gave, pop what to play.
//! let mic = [0i16; 480];
//! let mut speaker = [0i16; SLOT_SAMPLES];
//! let _ = capture.push(&mic, Instant::now());
//! while let Some(info) = playout.pop_into(&mut speaker) {
//!     // mix speaker[..info.samples] for peer info.peer
//! }
//! // Elsewhere: events and commands.
//! while let Some(event) = events.try_recv() {
//!     println!("{event:?}");
//! }
//! handle.leave()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Run loop
//!
//! The core thread follows str0m's blocking example: after every mutation it drains
//! `poll_output` until `Output::Timeout(deadline)`, then
//!
//! 1. takes what the other threads left: control requests, signaling frames, whole Opus
//!    frames from the capture ring, data commands (at most [`SOURCE_BATCH`] of each kind per
//!    turn); each item is one mutation followed by a drain;
//! 2. if the deadline has passed (or is now), feeds `Input::Timeout` at once — a socket read
//!    timeout cannot be zero, and none is needed;
//! 3. otherwise sets the socket's read timeout to `min(deadline - now, MAX_WAIT)` and reads:
//!    a datagram is fed as `Input::Receive`; `WouldBlock`/`TimedOut` is a timeout, fed as
//!    `Input::Timeout` if the deadline has been reached. ([`WaitMode::Poll`] waits the same
//!    time in `poll(2)` instead.)
//!
//! **Waking the core thread.** The audio callback may not make system calls, so nothing can
//! wake the core thread early; instead its wait is bounded by [`MAX_WAIT`] (5 ms) and it
//! looks at the rings and channels every turn. A pushed audio chunk, a data command or a
//! signaling frame therefore waits at most one `MAX_WAIT` (plus the kernel's rounding, next
//! paragraph) before the core sees it.
//!
//! **Timer granularity.** Linux implements socket read timeouts (`SO_RCVTIMEO`) with
//! scheduler ticks, rounding up: on the development machine a 1 ms read timeout
//! returns after about 8 ms and a 5 ms one after about 12 ms, where `poll(2)` and
//! `thread::sleep` are accurate to about 0.1 ms. A datagram still wakes the thread at once;
//! only pure timer wake-ups (pacing, retransmissions, playout release) come late, and the
//! idle loop turns about 80 times a second instead of 200. In a two-peer call measured with
//! `examples/rt_bench.rs` (a 1 ms callback, so that it sees each chunk as soon as the core
//! releases it), chunks came out a median 7.8 ms (p99 17.9 ms) after their playout instant,
//! against 0.9 ms (p99 3.7 ms) with [`WaitMode::Poll`], which waits in `poll(2)` on a
//! non-blocking socket instead, for about 0.4 % of a core more. The default stays the read
//! timeout ([`WaitMode::ReadTimeout`]), as in str0m's blocking example;
//! [`RealtimeConfig::wait`] picks the other.
//!
//! # Real-time safety
//!
//! Exactly these calls are real-time safe (wait-free: no allocation, no lock, no system
//! call, bounded work): [`AudioCapture::push`], [`AudioCapture::free_slots`],
//! [`AudioCapture::is_closed`], [`AudioPlayout::pop_with`] (if its closure is),
//! [`AudioPlayout::pop_into`], [`AudioPlayout::available`], [`AudioPlayout::is_closed`],
//! and [`RtCounters::snapshot`] through `counters()`. Every method of [`SessionHandle`] and
//! [`Events`] may block or allocate. Dropping `AudioCapture` or `AudioPlayout` frees the
//! ring if the core thread has ended, so drop them outside the callback.
//!
//! # Signaling loss and reconnection
//!
//! Established peers do not need signaling: when the WebSocket drops, media and data keep
//! flowing, the session reports [`Event::SignalingLost`], and the signaling thread
//! reconnects with exponential [`Backoff`](meshrtc::session::Backoff). On the new connection the core thread
//! re-announces with the same peer id and room (the one request the driver writes itself,
//! since the core cannot re-announce) and reports [`Event::SignalingRestored`]. Peers that
//! join afterwards offer to us as usual. Limits that need the core: peers that joined while
//! we were away are not offered to; and if only our connection dropped while the server
//! stayed up, the server reports us as left and the other peers close our connections.
#![deny(missing_docs)]

mod audio;
mod clock;
mod driver;
mod session;
mod signaling;

pub use audio::{
    AudioCapture, AudioPlayout, PeerIndex, PlayoutInfo, PushError, RtCounters, RtCounts,
    MAX_AUDIO_PEERS, SLOT_SAMPLES,
};
pub use clock::SystemClock;
pub use driver::{WaitMode, MAX_WAIT, SOURCE_BATCH};
pub use meshrtc_driver::{
    Error, Result, SessionConfig, SignalUrl, DEFAULT_COMMAND_QUEUE, DEFAULT_SOCKET_BUFFER,
};
pub use session::{
    Event, Events, RealtimeConfig, Session, SessionHandle, Stats, DEFAULT_CAPTURE_SLOTS,
    DEFAULT_PLAYOUT_SLOTS,
};
pub use signaling::SIGNAL_POLL;

#[cfg(test)]
mod static_checks {
    use super::*;

    fn is_send<T: Send>() {}
    fn is_sync<T: Sync>() {}

    #[test]
    fn halves_can_move_to_their_threads() {
        is_send::<SessionHandle>();
        is_sync::<SessionHandle>();
        is_send::<Events>();
        is_send::<AudioCapture>();
        is_send::<AudioPlayout>();
        is_send::<Event>();
    }
}
