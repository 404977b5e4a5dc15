//! The signaling server's logic as a sans-IO state machine
//!
//! [`Server`] holds every room and connection and implements `contracts/signaling.md`
//! (version 2: resume, room tokens, ICE servers); a driver (the WebSocket server, the
//! simulator) only moves frames and time in and out. Room membership and every relaying
//! decision live here, so that a driver spanning several nodes only has to carry frames.
//!
//! # Call order
//!
//! In the style of quinn's and str0m's state machines: feed inputs with `handle_*`, then take
//! what to do with `poll_*`.
//!
//! * [`Server::handle_connect`] once when a connection opens, before anything else about it.
//! * [`Server::handle_text`] and [`Server::handle_binary`] for every frame it receives.
//! * [`Server::handle_written`] as frames the server sent on a connection leave the driver
//!   (written to the socket, or delivered): the server counts what waits for each
//!   connection and refuses or ends on that count ([`ServerConfig::max_queue_bytes`]).
//! * [`Server::handle_disconnect`] once when the connection drops, unless the server asked to
//!   close it with [`ServerOutput::Close`] (calling it then anyway is harmless).
//! * [`Server::handle_timeout`] when the instant [`Server::poll_timeout`] returned has come
//!   (calling it earlier or more often is harmless). The server's deadlines are the end of
//!   a dropped peer's resume grace and of an unannounced connection's time to announce.
//! * After each `handle_*` call, drain [`Server::poll_output`] until it returns `None`, then
//!   ask [`Server::poll_timeout`] again: any input may move the next deadline.
//!
//! Every input carries its time as a [`Timestamp`]: the monotonic instant (an `Instant`
//! converts into one) and, when the driver knows it, the wall-clock time, which room tokens
//! and TURN credentials need. The server never reads a clock: between inputs that carry the
//! wall clock it advances the last one it was given by the monotonic time.
//!
//! Inputs about a connection the server does not know (never connected, or already closed)
//! are ignored. Outputs come in a deterministic order. Resume tokens and server-assigned peer
//! ids come from the operating system's generator, or from [`ServerConfig::seed`] when one is
//! set (the simulator), so that the same inputs then give the same outputs.
//!
//! # Resume
//!
//! A connection that drops without `peer.disconnect` keeps its place for
//! [`ServerConfig::resume_grace`]: the room is told nothing, and notifications addressed to
//! the peer are held (up to [`ServerConfig::max_held_frames`] and
//! [`ServerConfig::max_held_bytes`]; beyond that, or when the grace runs out, the peer is
//! ended with `peer.left` reason `"timeout"`). A new connection announcing with the peer's
//! resume token, room and id takes the place back: the result says `"resumed": true` and the
//! held notifications follow in order. A grace of zero is version 1: the room hears
//! `peer.left` at once and results carry no token.
//!
//! # Behaviour beyond the contract
//!
//! * A second `peer.announce` on an announced connection gets `-32602` (invalid params).
//! * `peer.disconnect` before announcing gets `-32000`, like every method but announce.
//! * A peer may address itself: `to` is its own id, which is in its room.
//! * A binary frame larger than `max_frame_bytes` gets `-32004`, a smaller one `-32600`.
//! * Every frame, valid or not, takes a rate-limit token.
//! * A valid resume token for a peer whose old connection the server still thinks is open
//!   takes the place over at once: the old connection is closed without `peer.left`, and what
//!   was still in flight to it is lost. The capabilities and metadata of a resuming announce
//!   are ignored: the room keeps what it was told when the peer joined.
//! * A resume token is issued once per place and stays the same when the place is resumed.
//! * On a server that requires room tokens, an announce with a valid resume token needs no
//!   room token: the place was authorized when it was taken (the room token may have
//!   expired since).
//! * A connection the server ends (it did not read, or did not announce in time) is dropped
//!   like any other: an announced peer's place is held for the grace.
//! * Metadata is forwarded as compact JSON, or verbatim as it arrived when that is shorter
//!   (never larger than it arrived); announces over the metadata limits get `-32602`.
//!
//! # Limits
//!
//! Every limit is in [`ServerConfig`]. What a client can make the server hold is bounded
//! per connection: rate buckets by frames and by bytes, one relay bucket per room member,
//! what waits unwritten for it (`max_queue_*`), what is held for it while dropped
//! (`max_held_*`) and its metadata (`max_metadata_bytes`). A member flooding another is
//! refused (`-32005`) by its relay bucket or its share of the target's queue before the
//! target notices; only a connection that does not read what is sent to it is ended.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::signal::auth::{turn_rest_credential, verify_room_token, Secret};
use crate::signal::{
    empty_object, Capabilities, ClientFrame, ErrorCode, IceServer, LeftReason, NodeId,
    Notification, PeerId, Request, RequestId, RoomId, RpcError, ServerFrame, MAX_FRAME_BYTES,
};

mod cluster;

use self::cluster::PendingClaim;
pub use self::cluster::{Claim, ClaimOutcome, ClusterEvent, ClusterMember, ClusterOutput, Place};

/// Limits, grace and seed of a [`Server`]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Peers a room holds before `peer.announce` gets `-32001` (default 10); held places count
    pub max_peers_per_room: usize,
    /// Largest text frame accepted, in bytes (default 64 KiB)
    pub max_frame_bytes: usize,
    /// Frames per second a connection earns back after spending its burst (default 50)
    pub rate_limit_per_sec: u32,
    /// Frames a connection may send at once (default 200)
    pub rate_limit_burst: u32,
    /// Bytes per second a connection earns back after spending its byte burst (default 64 KiB)
    pub rate_limit_bytes_per_sec: u32,
    /// Bytes a connection may send at once (default 512 KiB); frames beyond get `-32005`
    pub rate_limit_bytes_burst: u32,
    /// Bytes per second one peer may have relayed to one other peer after spending its
    /// burst (default 32 KiB); beyond, the sender gets `-32005` and the target nothing
    pub relay_bytes_per_sec: u32,
    /// Bytes one peer may have relayed to one other peer at once (default 256 KiB)
    pub relay_bytes_burst: u32,
    /// Bytes the server may have sent on a connection that the driver has not yet reported
    /// written ([`Server::handle_written`]) (default 2.25 MiB: at least `max_result_bytes`
    /// plus `max_held_bytes`, what a resume sends at once). A relay that would pass it is
    /// refused to its sender with `-32005`; a response or server notification that would
    /// pass it ends the connection: a client that does not read is dropped, never the peers
    /// sending to it.
    pub max_queue_bytes: usize,
    /// Frames the server may have sent on a connection that are not yet written
    /// (default 1024); as `max_queue_bytes`
    pub max_queue_frames: usize,
    /// Bytes relayed from one sender that may wait unwritten on one target's connection
    /// (default 256 KiB), so that one flooder cannot fill a victim's queue for everyone
    pub max_relay_share: usize,
    /// Largest metadata of one peer, in bytes as the server stores and forwards it (never
    /// more than it arrived as) (default 16 KiB); larger gets `-32602`
    pub max_metadata_bytes: usize,
    /// Metadata bytes of all peers of a room together (default 256 KiB), so that an
    /// announce result listing the room stays far below a client's frame cap; an announce
    /// whose metadata does not fit gets `-32602`
    pub max_room_metadata_bytes: usize,
    /// Largest announce result, in bytes (default 1 MiB, the clients' frame cap); should a
    /// result exceed it (a room limit set very high), listed peers' metadata is sent as `{}`,
    /// largest first, until it fits
    pub max_result_bytes: usize,
    /// How long a connection may stay unannounced before the server closes it (default
    /// 10 s; zero = no limit). Failed announces do not extend it.
    pub announce_timeout: Duration,
    /// How long the place of a dropped connection is held for a resume (default 20 s);
    /// zero turns resume off (version 1 behaviour). Sent to clients in whole seconds.
    pub resume_grace: Duration,
    /// Notifications held for a dropped peer before it is ended at once (default 256)
    pub max_held_frames: usize,
    /// Bytes of notifications held for a dropped peer before it is ended at once (default 1 MiB)
    pub max_held_bytes: usize,
    /// The secret room tokens are signed with; when set, `peer.announce` needs a valid
    /// `token` (JWT, HS256) for its room and id, or gets `-32006` (default none)
    pub token_secret: Option<Secret>,
    /// ICE servers every announce result carries (default none)
    pub ice_servers: Vec<IceServer>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`): when set,
    /// each `turn:`/`turns:` entry of `ice_servers` gets credentials minted per announce in
    /// the TURN REST form, valid for `turn_ttl` (default none)
    pub turn_secret: Option<Secret>,
    /// How long minted TURN credentials stay valid (default 1 hour)
    pub turn_ttl: Duration,
    /// Seed for server-assigned peer ids and resume tokens; `None` (the default) draws them
    /// from the operating system. Only a simulation should set one: seeded tokens are
    /// predictable.
    pub seed: Option<u64>,
    /// This server's name when it is one node of several sharing rooms (default none: the
    /// server holds its rooms alone). A node asks a shared room store to seat peers
    /// ([`ClusterOutput::Claim`]) and tells other nodes what their members must hear
    /// ([`ClusterOutput::Publish`]); see [`Server::poll_cluster`].
    pub node: Option<NodeId>,
    /// On a node: how long another node's member may be missing from the room store's
    /// listings ([`Server::handle_room_listing`]) before it is ended as `"timeout"`
    /// (default 10 s), so that a store restart does not end members before their nodes
    /// restore them
    pub missing_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_peers_per_room: 10,
            max_frame_bytes: MAX_FRAME_BYTES,
            rate_limit_per_sec: 50,
            rate_limit_burst: 200,
            rate_limit_bytes_per_sec: 64 * 1024,
            rate_limit_bytes_burst: 512 * 1024,
            relay_bytes_per_sec: 32 * 1024,
            relay_bytes_burst: 256 * 1024,
            max_queue_bytes: 2 * 1024 * 1024 + 256 * 1024,
            max_queue_frames: 1024,
            max_relay_share: 256 * 1024,
            max_metadata_bytes: 16 * 1024,
            max_room_metadata_bytes: 256 * 1024,
            max_result_bytes: 1024 * 1024,
            announce_timeout: Duration::from_secs(10),
            resume_grace: Duration::from_secs(20),
            max_held_frames: 256,
            max_held_bytes: 1024 * 1024,
            token_secret: None,
            ice_servers: Vec::new(),
            turn_secret: None,
            turn_ttl: Duration::from_secs(3600),
            seed: None,
            node: None,
            missing_grace: Duration::from_secs(10),
        }
    }
}

/// The time of an input: the monotonic instant and, when the driver knows it, the wall clock
///
/// An [`Instant`] converts into a timestamp without a wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// The monotonic time of the input
    pub mono: Instant,
    /// The wall-clock time at `mono`, as time since 1970-01-01 00:00:00 UTC
    pub unix: Option<Duration>,
}

impl Timestamp {
    /// A timestamp with both clocks, read together
    pub fn new(mono: Instant, unix: Duration) -> Self {
        Self {
            mono,
            unix: Some(unix),
        }
    }
}

impl From<Instant> for Timestamp {
    fn from(mono: Instant) -> Self {
        Self { mono, unix: None }
    }
}

/// A connection as the driver numbers it
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Something the driver must do
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOutput {
    /// Send `text` as one WebSocket text frame on `conn`
    Send {
        /// The connection to send on
        conn: ConnId,
        /// The JSON-RPC frame
        text: String,
    },
    /// Close `conn` after sending what was queued for it
    ///
    /// The server has already forgotten the connection.
    Close {
        /// The connection to close
        conn: ConnId,
    },
}

/// Counters of what a [`Server`] has done since it was created
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Frames received (text and binary)
    pub frames_in: u64,
    /// Bytes of frames received
    pub bytes_in: u64,
    /// Frames sent (including held frames once delivered)
    pub frames_out: u64,
    /// Bytes of frames sent
    pub bytes_out: u64,
    /// Error responses sent, by numeric code
    pub errors: BTreeMap<i64, u64>,
    /// Frames refused with `-32005`
    pub rate_limited: u64,
    /// Places held after a dropped connection
    pub held: u64,
    /// Places taken back with a resume token
    pub resumed: u64,
    /// Held places ended: grace over, or too much held for them
    pub expired: u64,
    /// Connections ended because what waited unwritten for them passed the limit
    pub evicted: u64,
    /// Connections closed for not announcing in time
    pub announce_timeouts: u64,
    /// Relays refused to their sender (relay rate, share or target queue full)
    pub relays_refused: u64,
    /// Announce results sent with some metadata left out to fit `max_result_bytes`
    pub degraded_results: u64,
}

/// The signaling server: rooms, connections and the protocol between them
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    rng: Rng,
    conns: BTreeMap<ConnId, Conn>,
    rooms: BTreeMap<RoomId, Room>,
    outputs: VecDeque<ServerOutput>,
    /// Ends of resume graces
    held_deadlines: BTreeSet<(Instant, RoomId, PeerId)>,
    /// Ends of the time to announce of unannounced connections
    announce_deadlines: BTreeSet<(Instant, ConnId)>,
    /// Held places to end once the current input is handled
    to_end: Vec<(RoomId, PeerId)>,
    /// Connections to end once the current input is handled
    to_evict: Vec<ConnId>,
    /// The last wall-clock reading, with the monotonic time it was taken at
    wall: Option<(Instant, Duration)>,
    stats: ServerStats,
    /// What a node asks of the room store and of other nodes, in order
    cluster: VecDeque<ClusterOutput>,
    /// Announces waiting for the room store, by connection (kept when the connection drops)
    claims: BTreeMap<ConnId, PendingClaim>,
    /// Events from other nodes for rooms with announces waiting for the room store
    deferred: VecDeque<ClusterEvent>,
}

impl Server {
    /// A server with no rooms and no connections
    pub fn new(config: ServerConfig) -> Self {
        Self {
            rng: Rng::new(config.seed),
            config,
            conns: BTreeMap::new(),
            rooms: BTreeMap::new(),
            outputs: VecDeque::new(),
            held_deadlines: BTreeSet::new(),
            announce_deadlines: BTreeSet::new(),
            to_end: Vec::new(),
            to_evict: Vec::new(),
            wall: None,
            stats: ServerStats::default(),
            cluster: VecDeque::new(),
            claims: BTreeMap::new(),
            deferred: VecDeque::new(),
        }
    }

    /// The configuration the server was created with
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// A connection opened; it starts with a full rate-limit burst
    pub fn handle_connect(&mut self, now: impl Into<Timestamp>, conn: ConnId) {
        let now = self.observe(now.into());
        if self.conns.contains_key(&conn) {
            tracing::warn!(?conn, "connect for a connection already open; ignored");
            return;
        }
        let mut c = Conn::new(now, &self.config);
        if !self.config.announce_timeout.is_zero() {
            let until = now + self.config.announce_timeout;
            c.announce_deadline = Some(until);
            self.announce_deadlines.insert((until, conn));
        }
        self.conns.insert(conn, c);
    }

    /// A text frame arrived on `conn`
    pub fn handle_text(&mut self, now: impl Into<Timestamp>, conn: ConnId, text: &str) {
        let now = self.observe(now.into());
        let Some(allowed) = self.take_token(now, conn, text.len()) else {
            return;
        };
        let parsed = ClientFrame::parse_with_limit(text, self.config.max_frame_bytes);
        if !allowed {
            // Answer to the request's id when it has one, but do not act on it.
            let id = match parsed {
                Ok(frame) => Some(frame.id),
                Err(failure) => failure.id,
            };
            self.stats.rate_limited += 1;
            self.send_error(conn, id, ErrorCode::RateLimited.into());
        } else {
            match parsed {
                Ok(frame) => self.handle_request(now, conn, frame, text),
                Err(failure) => {
                    tracing::debug!(?conn, %failure, "bad frame");
                    self.send_error(conn, failure.id, failure.error);
                }
            }
        }
        self.settle(now);
    }

    /// A binary frame of `len` bytes arrived on `conn`; the protocol has none
    ///
    /// The answer has `"id": null`; the connection stays open.
    pub fn handle_binary(&mut self, now: impl Into<Timestamp>, conn: ConnId, len: usize) {
        let now = self.observe(now.into());
        let Some(allowed) = self.take_token(now, conn, len) else {
            return;
        };
        let error = if !allowed {
            self.stats.rate_limited += 1;
            ErrorCode::RateLimited.into()
        } else if len > self.config.max_frame_bytes {
            RpcError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "message too large: {len} > {} bytes",
                    self.config.max_frame_bytes
                ),
            )
        } else {
            RpcError::new(ErrorCode::InvalidRequest, "binary frames are not supported")
        };
        self.send_error(conn, None, error);
        self.settle(now);
    }

    /// The connection dropped (closed by the client, timed out, or closed by the driver)
    ///
    /// An announced peer's place is held for the resume grace; with a grace of zero this is
    /// `peer.disconnect` without the response: the other peers of its room get `peer.left`
    /// with `reason`.
    pub fn handle_disconnect(
        &mut self,
        now: impl Into<Timestamp>,
        conn: ConnId,
        reason: LeftReason,
    ) {
        let now = self.observe(now.into());
        let Some(gone) = self.remove_conn(conn) else {
            return;
        };
        if let Some(seat) = gone.seat {
            self.drop_seat(now, conn, seat, reason);
        }
        self.settle(now);
    }

    /// `frames` more of the frames sent on `conn` have left the driver, in order
    ///
    /// Until then they count against [`ServerConfig::max_queue_bytes`] and
    /// [`ServerConfig::max_queue_frames`].
    pub fn handle_written(&mut self, now: impl Into<Timestamp>, conn: ConnId, frames: usize) {
        let _ = self.observe(now.into());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.written(frames);
        }
    }

    /// Time has come: ends the held places whose grace is over
    pub fn handle_timeout(&mut self, now: impl Into<Timestamp>) {
        let now = self.observe(now.into());
        while let Some(first) = self.held_deadlines.first() {
            if first.0 > now {
                break;
            }
            let (_, room, peer_id) = self.held_deadlines.pop_first().expect("not empty");
            tracing::debug!(peer = %peer_id, %room, "resume grace over");
            self.to_end.push((room, peer_id));
        }
        while let Some(&(until, conn)) = self.announce_deadlines.first() {
            if until > now {
                break;
            }
            tracing::debug!(?conn, "no announce in time; closing");
            self.stats.announce_timeouts += 1;
            self.remove_conn(conn);
            self.outputs.push_back(ServerOutput::Close { conn });
        }
        self.settle(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due; `None` when nothing waits
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held_deadlines.first().map(|d| d.0);
        let announce = self.announce_deadlines.first().map(|d| d.0);
        held.into_iter().chain(announce).min()
    }

    /// The next thing the driver must do, in order; `None` when there is nothing left
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.outputs.pop_front()
    }

    /// Rooms with at least one peer (held places included)
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Open connections, announced or not
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Peers in every room, held places included (on a node: this node's own peers)
    pub fn peer_count(&self) -> usize {
        self.rooms
            .values()
            .flat_map(|r| &r.members)
            .filter(|m| !m.is_remote())
            .count()
    }

    /// Places held for a dropped connection, waiting for a resume
    pub fn held_count(&self) -> usize {
        self.held_deadlines.len()
    }

    /// What the server has done so far
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The peers of `room` in join order, held places included; empty if there is no such room
    pub fn peers_in(&self, room: &RoomId) -> Vec<PeerId> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.members.iter().map(|m| m.peer_id.clone()).collect()
        })
    }

    /// The wall-clock time at `now`, from the last reading a driver gave
    fn unix_at(&self, now: Instant) -> Option<Duration> {
        let (at, unix) = self.wall?;
        Some(if now >= at {
            unix.saturating_add(now - at)
        } else {
            unix.saturating_sub(at - now)
        })
    }

    /// Notes the wall clock an input carries; returns its monotonic time
    fn observe(&mut self, now: Timestamp) -> Instant {
        if let Some(unix) = now.unix {
            self.wall = Some((now.mono, unix));
        }
        now.mono
    }

    /// Takes a rate-limit token: `None` for an unknown connection, else whether one was left
    fn take_token(&mut self, now: Instant, conn: ConnId, len: usize) -> Option<bool> {
        let Some(c) = self.conns.get_mut(&conn) else {
            tracing::debug!(?conn, "frame on an unknown connection; ignored");
            return None;
        };
        self.stats.frames_in += 1;
        self.stats.bytes_in += len as u64;
        let cfg = &self.config;
        let frame = c
            .frames
            .try_take(now, 1, cfg.rate_limit_per_sec, cfg.rate_limit_burst);
        // Bytes are only spent on frames that are let through.
        let bytes = frame
            && c.bytes.try_take(
                now,
                len as u64,
                cfg.rate_limit_bytes_per_sec,
                cfg.rate_limit_bytes_burst,
            );
        Some(bytes)
    }

    /// Forgets a connection and its deadline
    fn remove_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        if let Some(until) = c.announce_deadline {
            self.announce_deadlines.remove(&(until, conn));
        }
        Some(c)
    }

    /// The connection announced: it no longer has a deadline to do so
    /// Seats `conn` as `peer_id` in `room` (its announce deadline ends) and sends it the
    /// announce result `text`
    fn seat_conn(&mut self, conn: ConnId, room: &RoomId, peer_id: PeerId, text: String) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if let Some(until) = c.announce_deadline.take() {
                self.announce_deadlines.remove(&(until, conn));
            }
            c.seat = Some(Seat {
                room: room.clone(),
                peer_id,
            });
        }
        self.push_send(conn, text, Origin::Own);
    }

    fn handle_request(&mut self, now: Instant, conn: ConnId, frame: ClientFrame, text: &str) {
        let ClientFrame { id, request } = frame;
        let seat = self.conns.get(&conn).and_then(|c| c.seat.clone());
        match (request, seat) {
            (
                Request::Announce {
                    room,
                    peer_id,
                    capabilities,
                    metadata,
                    token,
                    resume,
                },
                seat,
            ) => {
                if let Some(seat) = seat {
                    let message = format!("already announced as {} in {}", seat.peer_id, seat.room);
                    let error = RpcError::new(ErrorCode::InvalidParams, message);
                    return self.send_error(conn, Some(id), error);
                }
                let announce = Announce {
                    room,
                    peer_id,
                    capabilities: capabilities.unwrap_or_default(),
                    metadata: stored_metadata(metadata.as_ref(), text),
                    token,
                    resume,
                };
                self.announce(now, conn, id, announce);
            }
            (_, None) => {
                let message = "not announced: send peer.announce first";
                self.send_error(
                    conn,
                    Some(id),
                    RpcError::new(ErrorCode::NotAnnounced, message),
                );
            }
            (Request::Disconnect, Some(_)) => self.disconnect(conn, id),
            (
                Request::Offer { to, sdp },
                Some(Seat {
                    room,
                    peer_id: from,
                }),
            ) => {
                self.forward(now, conn, id, &room, &to, Notification::Offer { from, sdp });
            }
            (
                Request::Answer { to, sdp },
                Some(Seat {
                    room,
                    peer_id: from,
                }),
            ) => {
                self.forward(
                    now,
                    conn,
                    id,
                    &room,
                    &to,
                    Notification::Answer { from, sdp },
                );
            }
            (
                Request::IceCandidate {
                    to,
                    candidate,
                    sdp_mid,
                    sdp_m_line_index,
                },
                Some(Seat {
                    room,
                    peer_id: from,
                }),
            ) => {
                let notification = Notification::IceCandidate {
                    from,
                    candidate,
                    sdp_mid,
                    sdp_m_line_index,
                };
                self.forward(now, conn, id, &room, &to, notification);
            }
        }
    }

    /// Seats the unannounced `conn`: takes a held place back, or joins afresh, or answers why not
    fn announce(&mut self, now: Instant, conn: ConnId, id: RequestId, a: Announce) {
        if self.claims.contains_key(&conn) {
            let message = "an announce is already in progress on this connection";
            let error = RpcError::new(ErrorCode::InvalidParams, message);
            return self.send_error(conn, Some(id), error);
        }
        if let Some(peer_id) = self.resumable(&a) {
            // The token was issued to an authorized announce: no room token needed again.
            return self.resume(now, conn, id, a.room, peer_id);
        }
        if self.config.node.is_some() && a.resume.is_some() && a.peer_id.is_some() {
            // The place may be held by another node: the room store knows.
            return self.claim(conn, id, a, true);
        }
        self.announce_fresh(now, conn, id, a);
    }

    /// Seats `conn` in a new place, or answers why not (on a node: asks the room store)
    fn announce_fresh(&mut self, now: Instant, conn: ConnId, id: RequestId, mut a: Announce) {
        match self.authorize(now, &a) {
            Ok(Some(granted)) if a.peer_id.is_none() => a.peer_id = Some(granted),
            Ok(_) => {}
            Err(message) => {
                tracing::debug!(?conn, room = %a.room, %message, "announce refused");
                let error = RpcError::new(ErrorCode::Unauthorized, message);
                return self.send_error(conn, Some(id), error);
            }
        }
        let meta_len = a.metadata.get().len();
        if meta_len > self.config.max_metadata_bytes {
            let message = format!(
                "metadata too large: {meta_len} > {} bytes",
                self.config.max_metadata_bytes
            );
            let error = RpcError::new(ErrorCode::InvalidParams, message);
            return self.send_error(conn, Some(id), error);
        }
        if self.config.node.is_some() {
            // Room full, id taken and room metadata are decided by the room store, at once
            // for every node.
            if a.peer_id.is_none() {
                a.peer_id = Some(self.fresh_peer_id(&a.room));
            }
            return self.claim(conn, id, a, false);
        }
        let (members, room_meta) = self
            .rooms
            .get(&a.room)
            .map_or((&[][..], 0), |r| (&r.members[..], r.metadata_bytes));
        if members.len() >= self.config.max_peers_per_room {
            let message = format!(
                "room full: {} has {} peers",
                a.room, self.config.max_peers_per_room
            );
            let error = RpcError::new(ErrorCode::RoomFull, message);
            return self.send_error(conn, Some(id), error);
        }
        let peer_id = match a.peer_id {
            Some(p) if members.iter().any(|m| m.peer_id == p) => {
                let message = format!("peer id {p} is already taken in {}", a.room);
                let error = RpcError::new(ErrorCode::PeerIdTaken, message);
                return self.send_error(conn, Some(id), error);
            }
            Some(p) => p,
            None => self.fresh_peer_id(&a.room),
        };
        if room_meta + meta_len > self.config.max_room_metadata_bytes {
            let message = format!(
                "metadata too large for room {}: {meta_len} bytes, {} of {} left",
                a.room,
                self.config
                    .max_room_metadata_bytes
                    .saturating_sub(room_meta),
                self.config.max_room_metadata_bytes
            );
            let error = RpcError::new(ErrorCode::InvalidParams, message);
            return self.send_error(conn, Some(id), error);
        }
        let room = a.room;
        let resume = if self.config.resume_grace.is_zero() {
            None
        } else {
            self.rng.token()
        };

        tracing::debug!(?conn, peer = %peer_id, %room, "peer joined");
        let member = Member {
            peer_id: peer_id.clone(),
            capabilities: a.capabilities,
            metadata: a.metadata,
            link: Link::Live(conn),
            resume,
        };
        let joined = notification_text("peer.joined", &PeerOut::of(&member));
        let ice_servers = self.ice_servers_for(now, &peer_id);
        let entry = self.rooms.entry(room.clone()).or_default();
        let others: Vec<PeerId> = entry.members.iter().map(|m| m.peer_id.clone()).collect();
        let result = ResultOut {
            peer_id: &peer_id,
            room: &room,
            peers: entry.members.iter().map(PeerOut::of).collect(),
            ice_servers: &ice_servers,
            resume: member.resume.as_deref(),
            resume_grace_s: grace_secs(self.config.resume_grace),
            resumed: false,
        };
        let text = result_text(&id, result, self.config.max_result_bytes, &mut self.stats);
        entry.metadata_bytes += meta_len;
        entry.members.push(member);
        self.seat_conn(conn, &room, peer_id, text);
        for peer in others {
            self.deliver(&room, &peer, joined.clone());
        }
    }

    /// Checks the announce's room token when the server requires one
    ///
    /// `Ok(Some(id))` is the peer id the token grants (its `sub`), `Err` why it is refused.
    fn authorize(&self, now: Instant, a: &Announce) -> Result<Option<PeerId>, String> {
        let Some(secret) = &self.config.token_secret else {
            return Ok(None);
        };
        let Some(token) = &a.token else {
            return Err("unauthorized: this server requires a room token".into());
        };
        let Some(unix) = self.unix_at(now) else {
            tracing::warn!("a room token arrived but the driver never gave the wall clock");
            return Err("unauthorized: the server cannot check token times".into());
        };
        let claims =
            verify_room_token(secret, token, unix).map_err(|e| format!("unauthorized: {e}"))?;
        if claims.room != a.room {
            return Err(format!(
                "unauthorized: the token is for room {}",
                claims.room
            ));
        }
        match (&claims.sub, &a.peer_id) {
            (Some(sub), Some(asked)) if sub != asked => {
                Err(format!("unauthorized: the token is for peer id {sub}"))
            }
            _ => Ok(claims.sub),
        }
    }

    /// The peer whose held (or live) place the announce's resume token reclaims, if any
    fn resumable(&self, a: &Announce) -> Option<PeerId> {
        let token = a.resume.as_deref()?;
        let peer_id = a.peer_id.as_ref()?;
        let member = self.rooms.get(&a.room)?.member(peer_id)?;
        let expected = member.resume.as_deref()?;
        constant_time_eq(expected.as_bytes(), token.as_bytes()).then(|| peer_id.clone())
    }

    /// Gives `peer_id`'s place in `room` to `conn` and sends what was held for it
    fn resume(&mut self, now: Instant, conn: ConnId, id: RequestId, room: RoomId, peer_id: PeerId) {
        let ice_servers = self.ice_servers_for(now, &peer_id);
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(m) = r.members.iter_mut().find(|m| m.peer_id == peer_id) else {
            return;
        };
        let (held, old) = match std::mem::replace(&mut m.link, Link::Live(conn)) {
            Link::Held { until, frames, .. } => {
                self.held_deadlines
                    .remove(&(until, room.clone(), peer_id.clone()));
                (frames, None)
            }
            // The old connection is still open as far as we know: the token holder wins.
            Link::Live(old) => (VecDeque::new(), Some(old)),
            // Not resumable here (no token is kept for remote members).
            Link::Remote { .. } => (VecDeque::new(), None),
        };
        let result = ResultOut {
            peer_id: &peer_id,
            room: &room,
            peers: r
                .members
                .iter()
                .filter(|m| m.peer_id != peer_id)
                .map(PeerOut::of)
                .collect(),
            ice_servers: &ice_servers,
            resume: r.member(&peer_id).and_then(|m| m.resume.as_deref()),
            resume_grace_s: grace_secs(self.config.resume_grace),
            resumed: true,
        };
        let text = result_text(&id, result, self.config.max_result_bytes, &mut self.stats);
        if let Some(old) = old {
            tracing::debug!(?old, ?conn, peer = %peer_id, %room, "resume takes over a live connection");
            self.remove_conn(old);
            self.outputs.push_back(ServerOutput::Close { conn: old });
        }
        tracing::debug!(?conn, peer = %peer_id, %room, held = held.len(), "peer resumed");
        self.stats.resumed += 1;
        self.seat_conn(conn, &room, peer_id, text);
        for text in held {
            self.push_send(conn, text, Origin::Server);
        }
    }

    /// Answers `{}` to the sender and relays `notification` to peer `to` of `room`, or
    /// answers why not
    fn forward(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: RequestId,
        room: &RoomId,
        to: &PeerId,
        notification: Notification,
    ) {
        let target = self
            .rooms
            .get(room)
            .and_then(|r| r.member(to))
            .map(|m| match &m.link {
                Link::Live(c) => Ok(Some(*c)),
                Link::Held { .. } => Ok(None),
                Link::Remote { node, .. } => Err(node.clone()),
            });
        let Some(target) = target else {
            let message = format!("unknown target peer: {to} is not in {room}");
            let error = RpcError::new(ErrorCode::UnknownTarget, message);
            return self.send_error(conn, Some(id), error);
        };
        let text = ServerFrame::Notification(notification).to_json();
        let target = match target {
            Ok(target) => target,
            Err(node) => return self.forward_remote(now, conn, id, room, to, node, text),
        };
        if let Err(message) = self.admit_relay(now, conn, room, to, target, text.len()) {
            tracing::debug!(?conn, peer = %to, %message, "relay refused");
            self.stats.relays_refused += 1;
            self.stats.rate_limited += 1;
            let error = RpcError::new(ErrorCode::RateLimited, message);
            return self.send_error(conn, Some(id), error);
        }
        if self.overflows_held(room, to, text.len()) {
            // The contract ends such a peer at once; the sender hears that it left.
            let message = format!("unknown target peer: {to} left {room}");
            let error = RpcError::new(ErrorCode::UnknownTarget, message);
            self.send_error(conn, Some(id), error);
            return self.deliver(room, to, text);
        }
        self.send_ok(conn, id, empty_object());
        match target {
            Some(target) => self.push_send(target, text, Origin::Relay(conn)),
            None => self.deliver(room, to, text),
        }
    }

    /// Whether `from` may have `len` more bytes relayed to `to` (on `target`, when live)
    ///
    /// Takes from the sender's relay bucket for `to` when it may.
    fn admit_relay(
        &mut self,
        now: Instant,
        from: ConnId,
        room: &RoomId,
        to: &PeerId,
        target: Option<ConnId>,
        len: usize,
    ) -> Result<(), String> {
        let cfg = &self.config;
        if let Some(t) = target.and_then(|t| self.conns.get(&t)) {
            let q = &t.queue;
            if q.frames.len() >= cfg.max_queue_frames || q.bytes + len > cfg.max_queue_bytes {
                return Err(format!("rate limited: {to} is not keeping up"));
            }
            if q.from(from) + len > cfg.max_relay_share {
                return Err(format!(
                    "rate limited: too much of yours still waiting for {to}"
                ));
            }
        }
        let members = self.rooms.get(room).map_or(0, |r| r.members.len());
        let Some(c) = self.conns.get_mut(&from) else {
            return Err("unknown connection".into());
        };
        if !c.relay.contains_key(to) && c.relay.len() >= members.max(cfg.max_peers_per_room) {
            // Targets that left: forget their buckets before taking a new one.
            let room = self.rooms.get(room);
            c.relay
                .retain(|p, _| room.is_some_and(|r| r.member(p).is_some()));
        }
        let bucket = c
            .relay
            .entry(to.clone())
            .or_insert_with(|| TokenBucket::new(now, u64::from(cfg.relay_bytes_burst)));
        if !bucket.try_take(
            now,
            len as u64,
            cfg.relay_bytes_per_sec,
            cfg.relay_bytes_burst,
        ) {
            return Err(format!("rate limited: too many bytes to {to}"));
        }
        Ok(())
    }

    /// Whether `len` more bytes for a held member would overflow what is held for it
    fn overflows_held(&self, room: &RoomId, peer_id: &PeerId, len: usize) -> bool {
        let link = self
            .rooms
            .get(room)
            .and_then(|r| r.member(peer_id))
            .map(|m| &m.link);
        match link {
            Some(Link::Held {
                frames,
                bytes,
                overflowed,
                ..
            }) => {
                *overflowed
                    || frames.len() >= self.config.max_held_frames
                    || bytes + len > self.config.max_held_bytes
            }
            _ => false,
        }
    }

    /// Sends a server notification to a member: on its connection, or into its held queue
    ///
    /// A held queue that overflows ends the member once the current input is handled.
    fn deliver(&mut self, room: &RoomId, peer_id: &PeerId, text: String) {
        let (max_frames, max_bytes) = (self.config.max_held_frames, self.config.max_held_bytes);
        let Some(m) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.members.iter_mut().find(|m| &m.peer_id == peer_id))
        else {
            return;
        };
        match &mut m.link {
            Link::Live(conn) => {
                let conn = *conn;
                self.push_send(conn, text, Origin::Server);
            }
            // Its own node tells it: every node hears membership news for its members.
            Link::Remote { .. } => {}
            Link::Held {
                frames,
                bytes,
                overflowed,
                ..
            } => {
                if *overflowed {
                    return;
                }
                if frames.len() >= max_frames || *bytes + text.len() > max_bytes {
                    tracing::debug!(peer = %peer_id, %room, "too much held for a dropped peer; ending it");
                    *overflowed = true;
                    self.to_end.push((room.clone(), peer_id.clone()));
                    return;
                }
                *bytes += text.len();
                frames.push_back(text);
            }
        }
    }

    /// Answers `peer.disconnect` from an announced connection, then closes it
    fn disconnect(&mut self, conn: ConnId, id: RequestId) {
        self.send_ok(conn, id, empty_object());
        self.outputs.push_back(ServerOutput::Close { conn });
        if let Some(seat) = self.remove_conn(conn).and_then(|c| c.seat) {
            self.leave(&seat.room, &seat.peer_id, LeftReason::Disconnect);
        }
    }

    /// A seated connection is gone: holds its place for the grace, or ends it
    fn drop_seat(&mut self, now: Instant, conn: ConnId, seat: Seat, reason: LeftReason) {
        let grace = self.config.resume_grace;
        let Some(m) = self
            .rooms
            .get_mut(&seat.room)
            .and_then(|r| r.members.iter_mut().find(|m| m.peer_id == seat.peer_id))
        else {
            return;
        };
        if m.link != Link::Live(conn) {
            return;
        }
        if grace.is_zero() || m.resume.is_none() {
            return self.leave(&seat.room, &seat.peer_id, reason);
        }
        let until = now + grace;
        m.link = Link::Held {
            until,
            frames: VecDeque::new(),
            bytes: 0,
            overflowed: false,
        };
        tracing::debug!(?conn, peer = %seat.peer_id, room = %seat.room, "connection dropped; place held");
        self.stats.held += 1;
        self.held_deadlines.insert((until, seat.room, seat.peer_id));
    }

    /// Ends the connections queued in `to_evict` and the held places queued in `to_end`,
    /// until none are left (ending one may queue others)
    fn settle(&mut self, now: Instant) {
        loop {
            if let Some(conn) = self.to_evict.pop() {
                let Some(gone) = self.remove_conn(conn) else {
                    continue;
                };
                tracing::debug!(?conn, "connection does not read what it is sent; dropped");
                self.stats.evicted += 1;
                self.outputs.push_back(ServerOutput::Close { conn });
                if let Some(seat) = gone.seat {
                    self.drop_seat(now, conn, seat, LeftReason::Kicked);
                }
                continue;
            }
            let Some((room, peer_id)) = self.to_end.pop() else {
                return;
            };
            let held_until = self
                .rooms
                .get(&room)
                .and_then(|r| r.member(&peer_id))
                .and_then(|m| match m.link {
                    Link::Held { until, .. } => Some(until),
                    Link::Live(_) | Link::Remote { .. } => None,
                });
            let Some(until) = held_until else {
                continue;
            };
            self.held_deadlines
                .remove(&(until, room.clone(), peer_id.clone()));
            self.stats.expired += 1;
            self.leave(&room, &peer_id, LeftReason::Timeout);
        }
    }

    /// Removes a member from its room, telling the others; drops the room when empty
    fn leave(&mut self, room_id: &RoomId, peer_id: &PeerId, reason: LeftReason) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some(at) = room.members.iter().position(|m| &m.peer_id == peer_id) else {
            return;
        };
        let gone = room.members.remove(at);
        room.metadata_bytes -= gone.metadata.get().len();
        let others: Vec<PeerId> = room.members.iter().map(|m| m.peer_id.clone()).collect();
        let remote_nodes = room.remote_nodes();
        // A node keeps a room while it has members of its own there.
        if room.members.iter().all(Member::is_remote) {
            self.rooms.remove(room_id);
        }
        if self.config.node.is_some() && !gone.is_remote() {
            self.cluster.push_back(ClusterOutput::Release {
                room: room_id.clone(),
                peer_id: peer_id.clone(),
            });
            for node in remote_nodes {
                let event = ClusterEvent::Left {
                    room: room_id.clone(),
                    peer_id: peer_id.clone(),
                    reason,
                };
                self.cluster
                    .push_back(ClusterOutput::Publish { node, event });
            }
        }
        tracing::debug!(peer = %peer_id, room = %room_id, ?reason, "peer left");
        let left = Notification::Left {
            peer_id: peer_id.clone(),
            reason,
        };
        let text = ServerFrame::Notification(left).to_json();
        for other in others {
            self.deliver(room_id, &other, text.clone());
        }
    }

    /// The ICE servers for `peer_id`'s announce result, TURN credentials minted when the
    /// server has a TURN secret
    ///
    /// Without the wall clock no credential can be minted: entries that need one are left
    /// out rather than sent unusable.
    fn ice_servers_for(&self, now: Instant, peer_id: &PeerId) -> Vec<IceServer> {
        let Some(secret) = &self.config.turn_secret else {
            return self.config.ice_servers.clone();
        };
        let expiry = self
            .unix_at(now)
            .map(|unix| unix.saturating_add(self.config.turn_ttl).as_secs());
        let mut minted = None;
        let mut servers = Vec::with_capacity(self.config.ice_servers.len());
        for server in &self.config.ice_servers {
            let is_turn = server.urls.iter().any(|u| {
                let u = u.to_ascii_lowercase();
                u.starts_with("turn:") || u.starts_with("turns:")
            });
            if !is_turn || server.username.is_some() {
                servers.push(server.clone());
                continue;
            }
            let Some(expiry) = expiry else {
                tracing::warn!("no wall clock from the driver: TURN credentials left out");
                continue;
            };
            let (username, credential) = minted
                .get_or_insert_with(|| turn_rest_credential(secret, peer_id, expiry))
                .clone();
            servers.push(IceServer {
                urls: server.urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }

    /// A UUID-v4-formatted peer id not yet taken in `room`
    fn fresh_peer_id(&mut self, room: &RoomId) -> PeerId {
        loop {
            let bits = self.rng.u128();
            // Version 4, variant 0b10.
            let bits = (bits & !(0xf << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62);
            let hex = format!("{bits:032x}");
            let uuid = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            // A UUID is 36 characters of hex digits and '-'.
            let peer_id = PeerId::new(uuid).expect("a UUID is a valid peer id");
            let taken = self
                .rooms
                .get(room)
                .is_some_and(|r| r.member(&peer_id).is_some());
            if !taken {
                return peer_id;
            }
        }
    }

    /// Queues `text` for `conn`, counting it against the connection's unwritten limits
    ///
    /// A response or server notification that does not fit ends the connection (it does
    /// not read); relays were admitted against the same limits before.
    fn push_send(&mut self, conn: ConnId, text: String, origin: Origin) {
        let (max_frames, max_bytes) = (self.config.max_queue_frames, self.config.max_queue_bytes);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.evicting {
            return;
        }
        if c.queue.frames.len() >= max_frames || c.queue.bytes + text.len() > max_bytes {
            c.evicting = true;
            self.to_evict.push(conn);
            return;
        }
        c.queue.push(text.len(), origin);
        self.stats.frames_out += 1;
        self.stats.bytes_out += text.len() as u64;
        self.outputs.push_back(ServerOutput::Send { conn, text });
    }

    fn send_ok(&mut self, conn: ConnId, id: RequestId, result: Value) {
        let text = ServerFrame::response_ok(id, result).to_json();
        self.push_send(conn, text, Origin::Own);
    }

    fn send_error(&mut self, conn: ConnId, id: Option<RequestId>, error: RpcError) {
        *self.stats.errors.entry(error.code).or_default() += 1;
        let text = ServerFrame::response_err(id, error).to_json();
        self.push_send(conn, text, Origin::Own);
    }

    /// Checks the server's invariants, for tests and fuzzing: no room over its limit, every
    /// bound on what a connection can make the server hold, and consistent bookkeeping
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let cfg = &self.config;
        let mut live = 0;
        for (id, room) in &self.rooms {
            if room.members.iter().all(Member::is_remote) {
                return Err(format!("room {id} is empty but kept"));
            }
            // A node's view of other nodes' members may lag the room store's.
            if cfg.node.is_none() && room.members.len() > cfg.max_peers_per_room {
                return Err(format!("room {id} has {} peers", room.members.len()));
            }
            let meta: usize = room.members.iter().map(|m| m.metadata.get().len()).sum();
            if meta != room.metadata_bytes
                || (cfg.node.is_none() && meta > cfg.max_room_metadata_bytes)
            {
                return Err(format!(
                    "room {id} metadata {meta} / {}",
                    room.metadata_bytes
                ));
            }
            for m in &room.members {
                if m.metadata.get().len() > cfg.max_metadata_bytes {
                    return Err(format!("{} has oversized metadata", m.peer_id));
                }
                match &m.link {
                    Link::Remote { .. } => {}
                    Link::Live(conn) => {
                        live += 1;
                        let seat = self.conns.get(conn).and_then(|c| c.seat.as_ref());
                        if !seat.is_some_and(|s| &s.room == id && s.peer_id == m.peer_id) {
                            return Err(format!(
                                "{} is live on {conn:?}, not seated there",
                                m.peer_id
                            ));
                        }
                    }
                    Link::Held {
                        until,
                        frames,
                        bytes,
                        ..
                    } => {
                        if frames.len() > cfg.max_held_frames || *bytes > cfg.max_held_bytes {
                            return Err(format!("{} holds {} frames", m.peer_id, frames.len()));
                        }
                        if *bytes != frames.iter().map(String::len).sum::<usize>() {
                            return Err(format!("{} held bytes miscounted", m.peer_id));
                        }
                        if !self
                            .held_deadlines
                            .contains(&(*until, id.clone(), m.peer_id.clone()))
                        {
                            return Err(format!("{} is held without a deadline", m.peer_id));
                        }
                    }
                }
            }
        }
        let seated = self.conns.values().filter(|c| c.seat.is_some()).count();
        if seated != live {
            return Err(format!("{seated} seated connections, {live} live members"));
        }
        if self.held_deadlines.len() + live != self.peer_count() {
            return Err("held deadlines do not match held members".into());
        }
        for (conn, c) in &self.conns {
            let q = &c.queue;
            if q.frames.len() > cfg.max_queue_frames || q.bytes > cfg.max_queue_bytes {
                return Err(format!("{conn:?} has {} bytes unwritten", q.bytes));
            }
            if q.bytes != q.frames.iter().map(|f| f.0).sum::<usize>()
                || q.by_origin.values().sum::<usize>()
                    != q.frames
                        .iter()
                        .filter(|f| f.1.is_some())
                        .map(|f| f.0)
                        .sum::<usize>()
                || q.by_origin.values().any(|&b| b > cfg.max_relay_share)
            {
                return Err(format!("{conn:?} queue miscounted"));
            }
            if c.relay.len() > cfg.max_peers_per_room + 1 {
                return Err(format!("{conn:?} keeps {} relay buckets", c.relay.len()));
            }
            if c.seat.is_some() == c.announce_deadline.is_some() && !cfg.announce_timeout.is_zero()
            {
                return Err(format!("{conn:?} announce deadline out of step"));
            }
        }
        if self.announce_deadlines.len() > self.conns.len() {
            return Err("stale announce deadlines".into());
        }
        Ok(())
    }
}

/// The grace in whole seconds, as announce results carry it
fn grace_secs(grace: Duration) -> u64 {
    // A sub-second grace still holds places: do not tell clients it is off.
    grace.as_secs() + u64::from(grace.subsec_nanos() > 0)
}

/// The metadata to store for an announce: as few bytes as it takes, never more than it
/// arrived as
///
/// `value` is the parsed `metadata` (an object, or absent for `{}`); `frame` the text it
/// came in. The compact form is kept unless the text as sent is shorter (numbers such as
/// `1e5` grow when re-serialised), in which case that text is kept verbatim.
fn stored_metadata(value: Option<&Value>, frame: &str) -> Box<RawValue> {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(borrow, default)]
        params: Option<Params<'a>>,
    }
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow, default)]
        metadata: Option<&'a RawValue>,
    }
    let compact = || {
        let text = value.map_or_else(|| "{}".to_string(), Value::to_string);
        RawValue::from_string(text).expect("serde_json writes valid JSON")
    };
    let Some(value) = value else {
        return compact();
    };
    // A frame with duplicate keys on the way to the metadata fails here: keep the compact form.
    let sent = serde_json::from_str::<Frame<'_>>(frame)
        .ok()
        .and_then(|f| f.params)
        .and_then(|p| p.metadata);
    let compact = compact();
    match sent {
        Some(sent) if sent.get().len() < compact.get().len() && value.is_object() => {
            sent.to_owned()
        }
        _ => compact,
    }
}

/// A member as announce results and `peer.joined` list it
#[derive(Serialize)]
struct PeerOut<'a> {
    peer_id: &'a PeerId,
    capabilities: &'a Capabilities,
    metadata: &'a RawValue,
}

impl<'a> PeerOut<'a> {
    fn of(m: &'a Member) -> Self {
        Self {
            peer_id: &m.peer_id,
            capabilities: &m.capabilities,
            metadata: &m.metadata,
        }
    }
}

/// An announce result, in the field order of [`crate::signal::AnnounceResult`]
#[derive(Serialize)]
struct ResultOut<'a> {
    peer_id: &'a PeerId,
    room: &'a RoomId,
    peers: Vec<PeerOut<'a>>,
    #[serde(skip_serializing_if = "<[IceServer]>::is_empty")]
    ice_servers: &'a [IceServer],
    #[serde(skip_serializing_if = "Option::is_none")]
    resume: Option<&'a str>,
    resume_grace_s: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resumed: bool,
}

/// The response carrying an announce result; lists metadata as `{}` (largest first) while
/// the text exceeds `max_bytes`
fn result_text(
    id: &RequestId,
    mut result: ResultOut<'_>,
    max_bytes: usize,
    stats: &mut ServerStats,
) -> String {
    #[derive(Serialize)]
    struct Response<'a, 'b> {
        jsonrpc: &'static str,
        id: &'a RequestId,
        result: &'a ResultOut<'b>,
    }
    let write = |result: &ResultOut<'_>| {
        // Cannot fail: string keys only.
        serde_json::to_string(&Response {
            jsonrpc: "2.0",
            id,
            result,
        })
        .expect("announce result serializes to JSON")
    };
    let mut text = write(&result);
    if text.len() <= max_bytes {
        return text;
    }
    let empty: &RawValue = EMPTY_OBJECT();
    let mut order: Vec<usize> = (0..result.peers.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(result.peers[i].metadata.get().len()));
    for i in order {
        if text.len() <= max_bytes || result.peers[i].metadata.get().len() <= 2 {
            break;
        }
        let before = result.peers[i].metadata.get().len();
        result.peers[i].metadata = empty;
        text = write(&result);
        tracing::debug!(peer = %result.peers[i].peer_id, before, "metadata left out of a result");
    }
    stats.degraded_results += 1;
    tracing::warn!(
        room = %result.room,
        bytes = text.len(),
        max_bytes,
        "announce result too large: some metadata left out"
    );
    text
}

/// `{}` as a raw value
#[allow(non_snake_case)]
fn EMPTY_OBJECT() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| RawValue::from_string("{}".into()).expect("{} is JSON"))
}

/// A notification whose params are already typed for the wire
fn notification_text<T: Serialize>(method: &'static str, params: &T) -> String {
    #[derive(Serialize)]
    struct Out<'a, T> {
        jsonrpc: &'static str,
        method: &'static str,
        params: &'a T,
    }
    serde_json::to_string(&Out {
        jsonrpc: "2.0",
        method,
        params,
    })
    .expect("notification serializes to JSON")
}

/// What an announce asks for, defaults applied
struct Announce {
    room: RoomId,
    peer_id: Option<PeerId>,
    capabilities: Capabilities,
    /// As the server stores and forwards it
    metadata: Box<RawValue>,
    token: Option<String>,
    resume: Option<String>,
}

/// Who made the server send a frame
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A response to the connection's own request
    Own,
    /// The server: membership news, held notifications
    Server,
    /// A relay from the member on this connection
    Relay(ConnId),
}

#[derive(Debug)]
struct Conn {
    frames: TokenBucket,
    bytes: TokenBucket,
    /// Bytes relayed to each target, by target id (at most a room's worth)
    relay: BTreeMap<PeerId, TokenBucket>,
    /// Where the connection is once it has announced
    seat: Option<Seat>,
    /// Until when it may stay unannounced
    announce_deadline: Option<Instant>,
    /// Frames sent and not yet reported written
    queue: OutQueue,
    /// About to be ended: send nothing more
    evicting: bool,
}

impl Conn {
    fn new(now: Instant, config: &ServerConfig) -> Self {
        Self {
            frames: TokenBucket::new(now, u64::from(config.rate_limit_burst)),
            bytes: TokenBucket::new(now, u64::from(config.rate_limit_bytes_burst)),
            relay: BTreeMap::new(),
            seat: None,
            announce_deadline: None,
            queue: OutQueue::default(),
            evicting: false,
        }
    }
}

/// Frames sent on a connection that the driver has not reported written, oldest first
#[derive(Debug, Default)]
struct OutQueue {
    /// Length and, for relays, the sending connection
    frames: VecDeque<(usize, Option<ConnId>)>,
    bytes: usize,
    /// Bytes waiting per relaying connection
    by_origin: BTreeMap<ConnId, usize>,
}

impl OutQueue {
    fn push(&mut self, len: usize, origin: Origin) {
        let from = match origin {
            Origin::Relay(from) => {
                *self.by_origin.entry(from).or_default() += len;
                Some(from)
            }
            Origin::Own | Origin::Server => None,
        };
        self.frames.push_back((len, from));
        self.bytes += len;
    }

    fn written(&mut self, frames: usize) {
        for _ in 0..frames {
            let Some((len, from)) = self.frames.pop_front() else {
                return;
            };
            self.bytes -= len;
            if let Some(from) = from {
                if let Some(b) = self.by_origin.get_mut(&from) {
                    *b -= len;
                    if *b == 0 {
                        self.by_origin.remove(&from);
                    }
                }
            }
        }
    }

    /// Bytes from `from` waiting here
    fn from(&self, from: ConnId) -> usize {
        self.by_origin.get(&from).copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
struct Seat {
    room: RoomId,
    peer_id: PeerId,
}

#[derive(Debug, Default)]
struct Room {
    /// Members in join order
    members: Vec<Member>,
    /// Bytes of the members' metadata together
    metadata_bytes: usize,
}

#[derive(Debug)]
struct Member {
    peer_id: PeerId,
    capabilities: Capabilities,
    metadata: Box<RawValue>,
    link: Link,
    /// The token that takes this place back; `None` when resume is off
    resume: Option<String>,
}

/// How a member is reached
#[derive(Debug, PartialEq, Eq)]
enum Link {
    /// On an open connection
    Live(ConnId),
    /// Through another node of the cluster
    Remote {
        node: NodeId,
        /// Since when the room store's listings of the room lack it
        missing: Option<Instant>,
    },
    /// Not at all: its connection dropped and the place is held until `until`
    Held {
        until: Instant,
        /// Notifications for it, in order
        frames: VecDeque<String>,
        bytes: usize,
        /// Too much was held: the place is about to end, hold nothing more
        overflowed: bool,
    },
}

impl Room {
    fn member(&self, peer_id: &PeerId) -> Option<&Member> {
        self.members.iter().find(|m| &m.peer_id == peer_id)
    }

    fn member_mut(&mut self, peer_id: &PeerId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| &m.peer_id == peer_id)
    }

    /// The other nodes that have members here, each once
    fn remote_nodes(&self) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter_map(|m| match &m.link {
                Link::Remote { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Member {
    fn is_remote(&self) -> bool {
        matches!(self.link, Link::Remote { .. })
    }
}

/// Where resume tokens and server-assigned ids come from
enum Rng {
    /// A seeded generator: deterministic, for simulations
    Seeded(fastrand::Rng),
    /// The operating system's generator
    Os,
}

impl fmt::Debug for Rng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Seeded(_) => f.write_str("Seeded"),
            Self::Os => f.write_str("Os"),
        }
    }
}

impl Rng {
    fn new(seed: Option<u64>) -> Self {
        seed.map_or(Self::Os, |seed| {
            Self::Seeded(fastrand::Rng::with_seed(seed))
        })
    }

    /// 128 random bits; `None` if the operating system's generator failed
    fn try_u128(&mut self) -> Option<u128> {
        match self {
            Self::Seeded(rng) => Some(rng.u128(..)),
            Self::Os => {
                let mut bytes = [0u8; 16];
                match getrandom::fill(&mut bytes) {
                    Ok(()) => Some(u128::from_le_bytes(bytes)),
                    Err(e) => {
                        tracing::error!(%e, "the operating system's random generator failed");
                        None
                    }
                }
            }
        }
    }

    /// Bits for an id: from the generator, or from a non-cryptographic one if it failed
    fn u128(&mut self) -> u128 {
        self.try_u128().unwrap_or_else(|| fastrand::u128(..))
    }

    /// A resume token: 128 random bits as 32 hex digits; `None` if no secure bits were had
    fn token(&mut self) -> Option<String> {
        self.try_u128().map(|bits| format!("{bits:032x}"))
    }
}

/// Compares two byte strings in time that depends only on their lengths
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token bucket counting in billionths of a unit, so that refills are exact integers
#[derive(Debug)]
struct TokenBucket {
    level: u64,
    last: Instant,
}

impl TokenBucket {
    const SCALE: u64 = 1_000_000_000;

    fn new(now: Instant, burst: u64) -> Self {
        Self {
            level: burst.saturating_mul(Self::SCALE),
            last: now,
        }
    }

    /// Refills for the time since the last call, then takes `n` units if there are that many
    fn try_take(&mut self, now: Instant, n: u64, per_sec: u32, burst: u32) -> bool {
        // One unit per second is SCALE per 10^9 ns, so each ns refills `per_sec` billionths.
        let refill = now
            .saturating_duration_since(self.last)
            .as_nanos()
            .saturating_mul(u128::from(per_sec));
        let cap = u64::from(burst).saturating_mul(Self::SCALE);
        let level = u128::from(self.level).saturating_add(refill);
        self.level = u64::try_from(level).map_or(cap, |level| level.min(cap));
        self.last = self.last.max(now);
        let cost = n.saturating_mul(Self::SCALE);
        if self.level < cost {
            return false;
        }
        self.level -= cost;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::signal::auth::{mint_room_token, RoomClaims};
    use crate::signal::{AnnounceResult, PeerInfo};

    /// A relay plus a clock, decoding every output for the assertions
    struct Harness {
        relay: Server,
        now: Instant,
        start: Instant,
        /// The wall clock at `start`, when the test gives one; it runs with `now`
        unix: Option<Duration>,
        /// Connections that read nothing: what is sent to them is never written
        stalled: BTreeSet<u64>,
    }

    impl Harness {
        /// A version 1 server: no resume grace, seeded
        fn new() -> Self {
            Self::with_config(v1())
        }

        fn with_config(config: ServerConfig) -> Self {
            Self {
                relay: Server::new(config),
                now: base_instant(),
                start: base_instant(),
                unix: None,
                stalled: BTreeSet::new(),
            }
        }

        fn connect(&mut self, conn: u64) {
            self.relay.handle_connect(self.now, ConnId(conn));
            assert!(self.drain().is_empty());
        }

        fn text(&mut self, conn: u64, text: &str) -> Vec<(u64, Option<ServerFrame>)> {
            let now = Timestamp {
                mono: self.now,
                unix: self.unix.map(|u| u + (self.now - self.start)),
            };
            self.relay.handle_text(now, ConnId(conn), text);
            self.drain()
        }

        fn request(
            &mut self,
            conn: u64,
            id: i64,
            request: Request,
        ) -> Vec<(u64, Option<ServerFrame>)> {
            let frame = ClientFrame {
                id: RequestId::Number(id),
                request,
            };
            self.text(conn, &frame.to_json())
        }

        /// Outputs as (conn, frame); a `Close` is `None`
        ///
        /// Sends are written at once, as a driver whose clients all read would report,
        /// except on `stalled` connections.
        fn drain(&mut self) -> Vec<(u64, Option<ServerFrame>)> {
            let out: Vec<_> = std::iter::from_fn(|| self.relay.poll_output()).collect();
            let decoded = out
                .into_iter()
                .map(|out| match out {
                    ServerOutput::Send { conn, text } => {
                        if !self.stalled.contains(&conn.0) {
                            self.relay.handle_written(self.now, conn, 1);
                        }
                        (conn.0, Some(ServerFrame::parse(&text).unwrap()))
                    }
                    ServerOutput::Close { conn } => (conn.0, None),
                })
                .collect();
            self.relay.check_invariants().unwrap();
            decoded
        }

        /// Connects `conn` and announces it as `peer` in `room`, returning every output
        fn join(&mut self, conn: u64, room: &str, peer: &str) -> Vec<(u64, Option<ServerFrame>)> {
            self.connect(conn);
            self.request(conn, 1, announce(room, Some(peer)))
        }
    }

    // The server never reads the clock; its tests need one real instant to start from.
    #[allow(clippy::disallowed_methods)]
    fn base_instant() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    /// Version 1 behaviour (no resume), seeded
    fn v1() -> ServerConfig {
        ServerConfig {
            resume_grace: Duration::ZERO,
            seed: Some(0),
            ..ServerConfig::default()
        }
    }

    /// An announce result of a version 1 server, as [`v1`] answers
    fn result(peer_id: PeerId, room: RoomId, peers: Vec<PeerInfo>) -> AnnounceResult {
        let mut r = AnnounceResult::new(peer_id, room, peers);
        r.resume_grace_s = Some(0);
        r
    }

    fn pid(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn rid(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    fn announce(room: &str, peer: Option<&str>) -> Request {
        Request::Announce {
            room: rid(room),
            peer_id: peer.map(pid),
            capabilities: None,
            metadata: None,
            token: None,
            resume: None,
        }
    }

    fn offer(to: &str) -> Request {
        Request::Offer {
            to: pid(to),
            sdp: "v=0\r\n".into(),
        }
    }

    fn ok(id: i64, result: Value) -> Option<ServerFrame> {
        Some(ServerFrame::response_ok(RequestId::Number(id), result))
    }

    fn note(n: Notification) -> Option<ServerFrame> {
        Some(ServerFrame::Notification(n))
    }

    fn info(peer: &str) -> PeerInfo {
        PeerInfo {
            peer_id: pid(peer),
            capabilities: Capabilities::default(),
            metadata: json!({}),
        }
    }

    /// Asserts the outputs are exactly one error to `conn` with `code` and `id`
    fn assert_error(
        out: &[(u64, Option<ServerFrame>)],
        conn: u64,
        code: ErrorCode,
        id: Option<i64>,
    ) {
        let [(
            to,
            Some(ServerFrame::Response {
                id: got,
                result: Err(e),
            }),
        )] = out
        else {
            panic!("expected one error response, got {out:?}");
        };
        assert_eq!(*to, conn);
        assert_eq!(e.error_code(), Some(code), "{e:?}");
        assert_eq!(*got, id.map(RequestId::Number));
    }

    #[test]
    fn announce_lists_earlier_peers_and_notifies_them() {
        let mut h = Harness::new();
        let out = h.join(1, "demo", "alice");
        let first = result(pid("alice"), rid("demo"), vec![]);
        assert_eq!(out, vec![(1, ok(1, first.to_value()))]);

        h.connect(2);
        let caps = Capabilities {
            audio: true,
            video: false,
            data: true,
        };
        let out = h.request(
            2,
            7,
            Request::Announce {
                room: rid("demo"),
                peer_id: Some(pid("bob")),
                capabilities: Some(caps),
                metadata: Some(json!({"name": "Bob"})),
                token: None,
                resume: None,
            },
        );
        let bob = PeerInfo {
            peer_id: pid("bob"),
            capabilities: caps,
            metadata: json!({"name": "Bob"}),
        };
        let second = result(pid("bob"), rid("demo"), vec![info("alice")]);
        assert_eq!(
            out,
            vec![
                (2, ok(7, second.to_value())),
                (1, note(Notification::Joined(bob.clone()))),
            ]
        );

        let out = h.join(3, "demo", "carol");
        let third = result(pid("carol"), rid("demo"), vec![info("alice"), bob]);
        assert_eq!(
            out,
            vec![
                (3, ok(1, third.to_value())),
                (1, note(Notification::Joined(info("carol")))),
                (2, note(Notification::Joined(info("carol")))),
            ]
        );
        assert_eq!(
            h.relay.peers_in(&rid("demo")),
            vec![pid("alice"), pid("bob"), pid("carol")]
        );
    }

    #[test]
    fn offer_answer_and_candidate_are_relayed_verbatim() {
        let mut h = Harness::new();
        h.join(1, "r", "alice");
        h.join(2, "r", "bob");

        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n\"quoted\" é\u{1}";
        let out = h.request(
            2,
            2,
            Request::Offer {
                to: pid("alice"),
                sdp: sdp.into(),
            },
        );
        assert_eq!(
            out,
            vec![
                (2, ok(2, json!({}))),
                (
                    1,
                    note(Notification::Offer {
                        from: pid("bob"),
                        sdp: sdp.into()
                    })
                ),
            ]
        );

        let out = h.request(
            1,
            2,
            Request::Answer {
                to: pid("bob"),
                sdp: "answer".into(),
            },
        );
        assert_eq!(
            out,
            vec![
                (1, ok(2, json!({}))),
                (
                    2,
                    note(Notification::Answer {
                        from: pid("alice"),
                        sdp: "answer".into()
                    })
                ),
            ]
        );

        for (mid, index) in [(Some("0".to_string()), Some(0)), (None, None)] {
            let out = h.request(
                2,
                3,
                Request::IceCandidate {
                    to: pid("alice"),
                    candidate: "candidate:1 1 udp 1 1.2.3.4 5 typ host".into(),
                    sdp_mid: mid.clone(),
                    sdp_m_line_index: index,
                },
            );
            assert_eq!(
                out,
                vec![
                    (2, ok(3, json!({}))),
                    (
                        1,
                        note(Notification::IceCandidate {
                            from: pid("bob"),
                            candidate: "candidate:1 1 udp 1 1.2.3.4 5 typ host".into(),
                            sdp_mid: mid,
                            sdp_m_line_index: index,
                        })
                    ),
                ]
            );
        }

        // End of candidates, relayed as the exact text the contract describes.
        h.relay.handle_text(
            h.now,
            ConnId(1),
            r#"{"jsonrpc":"2.0","id":9,"method":"peer.ice_candidate","params":{"to":"bob","candidate":"","sdp_mid":null,"sdp_m_line_index":null}}"#,
        );
        let texts: Vec<_> = std::iter::from_fn(|| h.relay.poll_output()).collect();
        assert_eq!(
            texts,
            vec![
                ServerOutput::Send {
                    conn: ConnId(1),
                    text: r#"{"jsonrpc":"2.0","id":9,"result":{}}"#.into()
                },
                ServerOutput::Send {
                    conn: ConnId(2),
                    text: r#"{"jsonrpc":"2.0","method":"peer.ice_candidate","params":{"from":"alice","candidate":"","sdp_mid":null,"sdp_m_line_index":null}}"#.into()
                },
            ]
        );
    }

    #[test]
    fn leaving_notifies_the_room_and_removes_it_when_empty() {
        let mut h = Harness::new();
        h.join(1, "r", "alice");
        h.join(2, "r", "bob");
        h.join(3, "r", "carol");

        let out = h.request(2, 5, Request::Disconnect);
        let left = |reason| {
            note(Notification::Left {
                peer_id: pid("bob"),
                reason,
            })
        };
        assert_eq!(
            out,
            vec![
                (2, ok(5, json!({}))),
                (2, None),
                (1, left(LeftReason::Disconnect)),
                (3, left(LeftReason::Disconnect)),
            ]
        );
        assert_eq!(h.relay.connection_count(), 2);
        // The server forgot the closed connection: later input about it is ignored.
        assert!(h.request(2, 6, offer("alice")).is_empty());
        h.relay
            .handle_disconnect(h.now, ConnId(2), LeftReason::Disconnect);
        assert!(h.drain().is_empty());

        h.relay
            .handle_disconnect(h.now, ConnId(3), LeftReason::Timeout);
        assert_eq!(
            h.drain(),
            vec![(
                1,
                note(Notification::Left {
                    peer_id: pid("carol"),
                    reason: LeftReason::Timeout
                })
            )]
        );
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Kicked);
        assert!(h.drain().is_empty());
        assert_eq!(h.relay.room_count(), 0);
        assert_eq!(h.relay.connection_count(), 0);
        assert!(h.relay.peers_in(&rid("r")).is_empty());
    }

    #[test]
    fn rooms_are_isolated() {
        let mut h = Harness::new();
        assert_eq!(h.join(1, "a", "alice").len(), 1);
        assert_eq!(
            h.join(2, "b", "bob").len(),
            1,
            "no peer.joined across rooms"
        );
        // The same peer id may be used in another room.
        assert_eq!(h.join(3, "b", "alice").len(), 2);
        assert_eq!(h.relay.room_count(), 2);

        let out = h.request(2, 2, offer("alice"));
        assert_eq!(
            out,
            vec![
                (2, ok(2, json!({}))),
                (
                    3,
                    note(Notification::Offer {
                        from: pid("bob"),
                        sdp: "v=0\r\n".into()
                    })
                )
            ],
            "the offer reaches alice of room b only"
        );
        let out = h.request(1, 2, offer("bob"));
        assert_error(&out, 1, ErrorCode::UnknownTarget, Some(2));

        h.relay
            .handle_disconnect(h.now, ConnId(2), LeftReason::Disconnect);
        assert_eq!(
            h.drain(),
            vec![(
                3,
                note(Notification::Left {
                    peer_id: pid("bob"),
                    reason: LeftReason::Disconnect
                })
            )]
        );
    }

    #[test]
    fn every_error_code_is_answered_and_changes_nothing() {
        use ErrorCode::*;
        let config = ServerConfig {
            max_peers_per_room: 2,
            ..v1()
        };
        let mut h = Harness::with_config(config);
        h.connect(1);

        assert_error(&h.text(1, "{"), 1, ParseError, None);
        assert_error(&h.text(1, "[]"), 1, InvalidRequest, None);
        assert_error(
            &h.text(1, r#"{"jsonrpc":"2.0","method":"peer.disconnect"}"#),
            1,
            InvalidRequest,
            None,
        );
        h.relay.handle_binary(h.now, ConnId(1), 10);
        assert_error(&h.drain(), 1, InvalidRequest, None);
        h.relay.handle_binary(h.now, ConnId(1), MAX_FRAME_BYTES + 1);
        assert_error(&h.drain(), 1, MessageTooLarge, None);
        assert_error(
            &h.text(1, r#"{"jsonrpc":"2.0","id":4,"method":"peer.nope"}"#),
            1,
            MethodNotFound,
            Some(4),
        );
        assert_error(
            &h.text(
                1,
                r#"{"jsonrpc":"2.0","id":5,"method":"peer.announce","params":{"room":"no way"}}"#,
            ),
            1,
            InvalidParams,
            Some(5),
        );
        assert_error(&h.request(1, 6, offer("x")), 1, NotAnnounced, Some(6));
        assert_error(
            &h.request(1, 7, Request::Disconnect),
            1,
            NotAnnounced,
            Some(7),
        );
        let big = ClientFrame {
            id: RequestId::Number(8),
            request: Request::Offer {
                to: pid("x"),
                sdp: "x".repeat(MAX_FRAME_BYTES),
            },
        };
        assert_error(&h.text(1, &big.to_json()), 1, MessageTooLarge, None);
        assert_eq!(h.relay.room_count(), 0);

        assert_eq!(h.request(1, 9, announce("r", Some("alice"))).len(), 1);
        assert_error(
            &h.request(1, 10, announce("r", Some("other"))),
            1,
            InvalidParams,
            Some(10),
        );
        assert_error(
            &h.request(1, 11, offer("ghost")),
            1,
            UnknownTarget,
            Some(11),
        );
        h.connect(2);
        assert_error(
            &h.request(2, 12, announce("r", Some("alice"))),
            2,
            PeerIdTaken,
            Some(12),
        );
        assert_eq!(h.request(2, 13, announce("r", Some("bob"))).len(), 2);
        h.connect(3);
        assert_error(
            &h.request(3, 14, announce("r", Some("carol"))),
            3,
            RoomFull,
            Some(14),
        );
        assert_error(
            &h.request(3, 15, announce("r", None)),
            3,
            RoomFull,
            Some(15),
        );
        assert_eq!(h.relay.peers_in(&rid("r")), vec![pid("alice"), pid("bob")]);
        // The connection that got errors still works.
        assert_eq!(h.request(3, 16, announce("s", Some("carol"))).len(), 1);

        let config = ServerConfig {
            rate_limit_burst: 0,
            ..v1()
        };
        let mut h = Harness::with_config(config);
        h.connect(1);
        assert_error(
            &h.request(1, 17, announce("r", None)),
            1,
            RateLimited,
            Some(17),
        );
        assert_error(&h.text(1, "nonsense"), 1, RateLimited, None);
        assert_eq!(h.relay.room_count(), 0);
    }

    #[test]
    fn oversize_frames_follow_the_configured_limit() {
        let config = ServerConfig {
            max_frame_bytes: 2 * MAX_FRAME_BYTES,
            ..v1()
        };
        let mut h = Harness::with_config(config);
        h.join(1, "r", "a");
        h.join(2, "r", "b");
        let sdp = "s".repeat(MAX_FRAME_BYTES + 10);
        let out = h.request(1, 2, Request::Offer { to: pid("b"), sdp });
        assert_eq!(out.len(), 2);
        let sdp = "s".repeat(2 * MAX_FRAME_BYTES);
        let out = h.request(1, 3, Request::Offer { to: pid("b"), sdp });
        assert_error(&out, 1, ErrorCode::MessageTooLarge, None);
    }

    #[test]
    fn rate_limit_kicks_in_and_recovers() {
        let config = ServerConfig {
            rate_limit_per_sec: 10,
            rate_limit_burst: 5,
            ..v1()
        };
        let mut h = Harness::with_config(config);
        h.join(1, "r", "alice");
        h.join(2, "r", "bob");
        // Announce took one token of conn 1; four are left.
        for id in 0..4 {
            assert_eq!(h.request(1, id, offer("bob")).len(), 2);
        }
        let out = h.request(1, 4, offer("bob"));
        assert_error(&out, 1, ErrorCode::RateLimited, Some(4));
        // A limited frame is not processed: bob gets nothing.
        assert_error(
            &h.request(1, 5, Request::Disconnect),
            1,
            ErrorCode::RateLimited,
            Some(5),
        );
        assert_eq!(h.relay.peers_in(&rid("r")).len(), 2);
        // Bob has his own bucket.
        assert_eq!(h.request(2, 1, offer("alice")).len(), 2);

        // 10 per second: one token every 100 ms.
        h.now += Duration::from_millis(99);
        assert_error(
            &h.request(1, 6, offer("bob")),
            1,
            ErrorCode::RateLimited,
            Some(6),
        );
        h.now += Duration::from_millis(1);
        assert_eq!(h.request(1, 7, offer("bob")).len(), 2);
        assert_error(
            &h.request(1, 8, offer("bob")),
            1,
            ErrorCode::RateLimited,
            Some(8),
        );

        // A long pause refills up to the burst only.
        h.now += Duration::from_secs(3600);
        for id in 0..5 {
            assert_eq!(h.request(1, 10 + id, offer("bob")).len(), 2);
        }
        assert_error(
            &h.request(1, 20, offer("bob")),
            1,
            ErrorCode::RateLimited,
            Some(20),
        );

        // A clock going backwards neither refills nor panics.
        let earlier = h.now - Duration::from_secs(1);
        h.relay.handle_text(earlier, ConnId(1), "x");
        assert_error(&h.drain(), 1, ErrorCode::RateLimited, None);
    }

    #[test]
    fn many_cycles_leave_nothing_behind() {
        let mut h = Harness::new();
        h.connect(0);
        h.request(0, 1, announce("base", Some("resident")));
        for i in 1..=100u64 {
            let room = if i % 2 == 0 { "base" } else { "other" };
            h.connect(i);
            let out = h.request(i, 1, announce(room, None));
            assert!(!out.is_empty());
            if i % 3 == 0 {
                h.request(i, 2, Request::Disconnect);
            } else {
                h.relay
                    .handle_disconnect(h.now, ConnId(i), LeftReason::Timeout);
                h.drain();
            }
            h.now += Duration::from_millis(10);
        }
        assert_eq!(h.relay.room_count(), 1);
        assert_eq!(h.relay.connection_count(), 1);
        h.relay
            .handle_disconnect(h.now, ConnId(0), LeftReason::Disconnect);
        assert!(h.drain().is_empty());
        assert_eq!(h.relay.room_count(), 0);
        assert_eq!(h.relay.connection_count(), 0);
        assert!(h.relay.outputs.is_empty());
    }

    #[test]
    fn assigned_ids_are_uuids_and_deterministic() {
        fn assigned(seed: u64) -> Vec<String> {
            let mut h = Harness::with_config(ServerConfig {
                seed: Some(seed),
                ..v1()
            });
            (0..5)
                .map(|conn| {
                    h.connect(conn);
                    let out = h.request(conn, 1, announce("r", None));
                    let Some((_, Some(ServerFrame::Response { result: Ok(v), .. }))) = out.first()
                    else {
                        panic!("no announce result: {out:?}");
                    };
                    AnnounceResult::from_value(v).unwrap().peer_id.to_string()
                })
                .collect()
        }
        let ids = assigned(42);
        assert_eq!(ids, assigned(42));
        assert_ne!(ids, assigned(43));
        for id in &ids {
            let groups: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(id
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
        }
    }

    #[test]
    fn unknown_and_duplicate_connections_are_ignored() {
        let mut h = Harness::new();
        assert!(h.text(9, EXAMPLE_OFFER).is_empty());
        h.relay.handle_binary(h.now, ConnId(9), 1);
        h.relay
            .handle_disconnect(h.now, ConnId(9), LeftReason::Timeout);
        assert!(h.drain().is_empty());
        assert_eq!(h.relay.connection_count(), 0);

        h.join(1, "r", "alice");
        h.relay.handle_connect(h.now, ConnId(1));
        assert_eq!(h.relay.connection_count(), 1);
        assert_eq!(h.relay.peers_in(&rid("r")), vec![pid("alice")]);
    }

    /// A server with resume on (grace 20 s), seeded
    fn v2() -> ServerConfig {
        ServerConfig {
            seed: Some(1),
            ..ServerConfig::default()
        }
    }

    /// The announce result among `out`, sent to `conn`
    fn result_for(out: &[(u64, Option<ServerFrame>)], conn: u64) -> AnnounceResult {
        out.iter()
            .find_map(|(to, f)| match f {
                Some(ServerFrame::Response { result: Ok(v), .. }) if *to == conn => {
                    AnnounceResult::from_value(v).ok()
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no announce result for {conn} in {out:?}"))
    }

    fn resume_announce(room: &str, peer: &str, token: &str) -> Request {
        Request::Announce {
            room: rid(room),
            peer_id: Some(pid(peer)),
            capabilities: None,
            metadata: None,
            token: None,
            resume: Some(token.into()),
        }
    }

    #[test]
    fn dropped_peer_resumes_with_held_notifications_in_order() {
        let mut h = Harness::with_config(v2());
        let alice = result_for(&h.join(1, "r", "alice"), 1);
        let token = alice.resume.clone().expect("a resume token");
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(alice.resume_grace_s, Some(20));
        assert!(!alice.resumed);
        h.join(2, "r", "bob");
        h.join(3, "r", "carol");
        assert_ne!(
            result_for(&h.join(4, "s", "dave"), 4).resume,
            Some(token.clone())
        );

        // Alice's connection dies: nobody hears of it.
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
        assert!(h.drain().is_empty());
        assert_eq!(h.relay.held_count(), 1);
        assert_eq!(
            h.relay.poll_timeout(),
            Some(h.now + Duration::from_secs(20))
        );
        assert_eq!(
            h.relay.peers_in(&rid("r")),
            vec![pid("alice"), pid("bob"), pid("carol")]
        );

        // What is addressed to her meanwhile is answered as usual and held.
        h.now += Duration::from_secs(5);
        assert_eq!(h.request(2, 2, offer("alice")), vec![(2, ok(2, json!({})))]);
        let candidate = Request::IceCandidate {
            to: pid("alice"),
            candidate: "candidate:1".into(),
            sdp_mid: None,
            sdp_m_line_index: None,
        };
        assert_eq!(h.request(3, 2, candidate), vec![(3, ok(2, json!({})))]);
        h.request(2, 3, Request::Disconnect);
        // A newcomer lists her (her place is held) and she is told of it later.
        let erin = result_for(&h.join(5, "r", "erin"), 5);
        let listed: Vec<_> = erin.peers.iter().map(|p| p.peer_id.as_str()).collect();
        assert_eq!(listed, ["alice", "carol"]);

        // She comes back on a new connection within the grace.
        h.now += Duration::from_secs(10);
        h.connect(6);
        let out = h.request(6, 1, resume_announce("r", "alice", &token));
        let result = result_for(&out, 6);
        assert!(result.resumed);
        assert_eq!(result.resume, Some(token));
        let listed: Vec<_> = result.peers.iter().map(|p| p.peer_id.as_str()).collect();
        assert_eq!(listed, ["carol", "erin"]);
        let rest: Vec<_> = out[1..].to_vec();
        assert_eq!(
            rest,
            vec![
                (
                    6,
                    note(Notification::Offer {
                        from: pid("bob"),
                        sdp: "v=0\r\n".into()
                    })
                ),
                (
                    6,
                    note(Notification::IceCandidate {
                        from: pid("carol"),
                        candidate: "candidate:1".into(),
                        sdp_mid: None,
                        sdp_m_line_index: None
                    })
                ),
                (
                    6,
                    note(Notification::Left {
                        peer_id: pid("bob"),
                        reason: LeftReason::Disconnect
                    })
                ),
                (6, note(Notification::Joined(info("erin")))),
            ],
            "held notifications, in order, and nothing to anyone else"
        );
        assert_eq!(h.relay.held_count(), 0);
        assert_eq!(h.relay.poll_timeout(), None);
        // She is reachable again on the new connection.
        let out = h.request(3, 3, offer("alice"));
        assert_eq!(out[1].0, 6);
        assert_eq!(h.relay.stats().resumed, 1);
    }

    #[test]
    fn held_place_ends_with_timeout_when_the_grace_runs_out() {
        let mut h = Harness::with_config(v2());
        h.join(1, "r", "alice");
        h.join(2, "r", "bob");
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Disconnect);
        let due = h.now + Duration::from_secs(20);
        assert_eq!(h.relay.poll_timeout(), Some(due));
        h.relay.handle_timeout(due - Duration::from_nanos(1));
        assert!(h.drain().is_empty(), "not yet");
        h.relay.handle_timeout(due);
        assert_eq!(
            h.drain(),
            vec![(
                2,
                note(Notification::Left {
                    peer_id: pid("alice"),
                    reason: LeftReason::Timeout
                })
            )]
        );
        assert_eq!(h.relay.poll_timeout(), None);
        assert_eq!(h.relay.peers_in(&rid("r")), vec![pid("bob")]);
        // Her token is dead now; the id is free for anyone.
        h.connect(3);
        let out = h.request(3, 1, resume_announce("r", "alice", "00"));
        let result = result_for(&out, 3);
        assert!(!result.resumed);
        assert_eq!(out.len(), 2, "a fresh join, announced to bob: {out:?}");

        // The last member's place held alone keeps the room; its end removes it.
        h.relay
            .handle_disconnect(h.now, ConnId(2), LeftReason::Timeout);
        h.relay
            .handle_disconnect(h.now, ConnId(3), LeftReason::Timeout);
        assert_eq!(h.relay.room_count(), 1);
        h.now += Duration::from_secs(21);
        h.relay.handle_timeout(h.now);
        assert!(h.drain().is_empty());
        assert_eq!(h.relay.room_count(), 0);
        assert_eq!(h.relay.stats().expired, 3);
    }

    #[test]
    fn held_queue_overflow_ends_the_peer_at_once() {
        for (frames, bytes, sdp_len) in [(256, usize::MAX, 10), (usize::MAX, 1024 * 1024, 60_000)] {
            let mut h = Harness::with_config(ServerConfig {
                max_held_frames: frames,
                max_held_bytes: bytes,
                rate_limit_burst: 10_000,
                rate_limit_bytes_burst: u32::MAX,
                relay_bytes_burst: u32::MAX,
                ..v2()
            });
            h.join(1, "r", "alice");
            h.join(2, "r", "bob");
            h.relay
                .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
            let big = Request::Offer {
                to: pid("alice"),
                sdp: "x".repeat(sdp_len),
            };
            let mut sent = 0;
            let out = loop {
                let out = h.request(2, sent, big.clone());
                if out.len() != 1 {
                    break out;
                }
                sent += 1;
                assert!(sent < 10_000);
            };
            let fits = if frames == 256 {
                256
            } else {
                1024 * 1024 / (sdp_len + 60)
            };
            assert!(
                (fits as i64 - sent).abs() <= 1,
                "{sent} frames held, limit {fits}"
            );
            assert_eq!(out.len(), 2, "{out:?}");
            assert_error(&out[..1], 2, ErrorCode::UnknownTarget, Some(sent));
            assert_eq!(
                out[1],
                (
                    2,
                    note(Notification::Left {
                        peer_id: pid("alice"),
                        reason: LeftReason::Timeout
                    })
                )
            );
            assert_eq!(h.relay.held_count(), 0);
            assert_eq!(h.relay.poll_timeout(), None);
        }
    }

    #[test]
    fn a_bad_resume_token_is_a_fresh_announce() {
        let mut h = Harness::with_config(v2());
        let token = result_for(&h.join(1, "r", "alice"), 1).resume.unwrap();
        h.join(2, "s", "alice");
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
        h.connect(3);
        let mut wrong = token.clone().into_bytes();
        wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();
        // Wrong token, another room's alice, another id: the held place is still taken.
        assert_error(
            &h.request(3, 1, resume_announce("r", "alice", &wrong)),
            3,
            ErrorCode::PeerIdTaken,
            Some(1),
        );
        assert_error(
            &h.request(3, 2, announce("r", Some("alice"))),
            3,
            ErrorCode::PeerIdTaken,
            Some(2),
        );
        let other = result_for(&h.request(3, 3, resume_announce("r", "zed", &token)), 3);
        assert!(!other.resumed);
        assert_eq!(h.relay.held_count(), 1);
        // Right token, wrong room: alice of room s is live and unaffected.
        h.connect(4);
        assert_error(
            &h.request(4, 1, resume_announce("s", "alice", &token)),
            4,
            ErrorCode::PeerIdTaken,
            Some(1),
        );
        let out = h.request(4, 2, resume_announce("r", "alice", &token));
        assert!(result_for(&out, 4).resumed);
    }

    #[test]
    fn a_valid_token_takes_over_a_connection_still_open() {
        let mut h = Harness::with_config(v2());
        let token = result_for(&h.join(1, "r", "alice"), 1).resume.unwrap();
        h.join(2, "r", "bob");
        // Alice reconnects before the server noticed her old connection died.
        h.connect(3);
        let out = h.request(3, 1, resume_announce("r", "alice", &token));
        assert_eq!(out[0], (1, None), "the old connection is closed");
        assert!(result_for(&out, 3).resumed);
        assert_eq!(out.len(), 2, "bob hears nothing: {out:?}");
        // The old connection's late drop changes nothing.
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
        assert!(h.drain().is_empty());
        assert_eq!(h.relay.held_count(), 0);
        assert_eq!(h.request(2, 5, offer("alice"))[1].0, 3);
        // And she can drop and resume again with the same token.
        h.relay
            .handle_disconnect(h.now, ConnId(3), LeftReason::Timeout);
        h.connect(4);
        assert!(result_for(&h.request(4, 1, resume_announce("r", "alice", &token)), 4).resumed);
    }

    #[test]
    fn grace_zero_is_version_1() {
        let mut h = Harness::new();
        let alice = result_for(&h.join(1, "r", "alice"), 1);
        assert_eq!(alice.resume, None);
        assert_eq!(alice.resume_grace_s, Some(0));
        h.join(2, "r", "bob");
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
        assert_eq!(
            h.drain(),
            vec![(
                2,
                note(Notification::Left {
                    peer_id: pid("alice"),
                    reason: LeftReason::Timeout
                })
            )]
        );
        assert_eq!(h.relay.poll_timeout(), None);
    }

    #[test]
    fn held_places_count_towards_the_room_limit() {
        let mut h = Harness::with_config(ServerConfig {
            max_peers_per_room: 2,
            ..v2()
        });
        h.join(1, "r", "alice");
        h.join(2, "r", "bob");
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
        h.connect(3);
        assert_error(
            &h.request(3, 1, announce("r", Some("carol"))),
            3,
            ErrorCode::RoomFull,
            Some(1),
        );
    }

    #[test]
    fn resume_tokens_come_from_the_os_unless_seeded() {
        let tokens = |seed| {
            let mut h = Harness::with_config(ServerConfig {
                seed,
                ..ServerConfig::default()
            });
            (0..3)
                .map(|i| {
                    result_for(&h.join(i, "r", &format!("p{i}")), i)
                        .resume
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let os = tokens(None);
        assert_ne!(os, tokens(None));
        assert_ne!(os[0], os[1]);
        assert_eq!(tokens(Some(5)), tokens(Some(5)));
        assert_ne!(tokens(Some(5)), tokens(Some(6)));
    }

    fn room_secret() -> Secret {
        Secret::new("room-secret").unwrap()
    }

    /// A v2 server requiring room tokens, at wall-clock second 1_000_000
    fn authenticated() -> Harness {
        let mut h = Harness::with_config(ServerConfig {
            token_secret: Some(room_secret()),
            ..v2()
        });
        h.unix = Some(Duration::from_secs(1_000_000));
        h
    }

    fn token(room: &str, sub: Option<&str>, exp: u64, nbf: Option<u64>) -> String {
        let claims = RoomClaims {
            room: rid(room),
            sub: sub.map(pid),
            exp,
            nbf,
        };
        mint_room_token(&room_secret(), &claims)
    }

    fn announce_with(room: &str, peer: Option<&str>, token: Option<String>) -> Request {
        Request::Announce {
            room: rid(room),
            peer_id: peer.map(pid),
            capabilities: None,
            metadata: None,
            token,
            resume: None,
        }
    }

    #[test]
    fn room_tokens_are_required_and_checked() {
        use ErrorCode::Unauthorized;
        let mut h = authenticated();
        h.join(9, "r", "resident");
        // join() sent no token: refused, and the room is untouched.
        assert_eq!(h.relay.peers_in(&rid("r")), Vec::<PeerId>::new());
        h.connect(1);
        let later = 1_000_100;
        let forged = {
            let claims = RoomClaims {
                room: rid("r"),
                sub: None,
                exp: later,
                nbf: None,
            };
            mint_room_token(&Secret::new("guess").unwrap(), &claims)
        };
        let refused = [
            None,
            Some("garbage".to_string()),
            Some(forged),
            Some(token("other", None, later, None)),
            Some(token("r", Some("bob"), later, None)),
            Some(token("r", None, 1_000_000, None)),
            Some(token("r", None, later, Some(1_000_001))),
        ];
        for (i, t) in refused.into_iter().enumerate() {
            let out = h.request(1, i as i64, announce_with("r", Some("alice"), t.clone()));
            assert_error(&out, 1, Unauthorized, Some(i as i64));
            assert!(h.relay.peers_in(&rid("r")).is_empty(), "{t:?}");
        }
        assert_eq!(h.relay.stats().errors.get(&-32006), Some(&8));
        // The same connection then gets in with a good token.
        let good = token("r", Some("alice"), later, Some(1_000_000));
        let out = h.request(1, 10, announce_with("r", Some("alice"), Some(good)));
        assert_eq!(result_for(&out, 1).peer_id, pid("alice"));
        // A token without sub admits any id; with sub and no id asked, sub is the id.
        h.connect(2);
        let out = h.request(
            2,
            1,
            announce_with("r", Some("zed"), Some(token("r", None, later, None))),
        );
        assert_eq!(result_for(&out, 2).peer_id, pid("zed"));
        h.connect(3);
        let out = h.request(
            3,
            1,
            announce_with("r", None, Some(token("r", Some("carol"), later, None))),
        );
        assert_eq!(result_for(&out, 3).peer_id, pid("carol"));
        // Checked before the room's state: a stranger learns nothing about it.
        h.connect(4);
        assert_error(
            &h.request(4, 1, announce_with("r", Some("alice"), None)),
            4,
            Unauthorized,
            Some(1),
        );
        assert_error(
            &h.request(
                4,
                2,
                announce_with("r", Some("alice"), Some(token("r", None, later, None))),
            ),
            4,
            ErrorCode::PeerIdTaken,
            Some(2),
        );
        // Time moves with the monotonic clock between wall-clock readings.
        h.now += Duration::from_secs(100);
        h.unix = None;
        h.connect(5);
        let expired = token("r", Some("dave"), later, None);
        assert_error(
            &h.request(5, 1, announce_with("r", None, Some(expired))),
            5,
            Unauthorized,
            Some(1),
        );
    }

    #[test]
    fn resume_needs_no_fresh_room_token() {
        let mut h = authenticated();
        h.connect(1);
        let t = token("r", Some("alice"), 1_000_010, None);
        let resume = result_for(
            &h.request(1, 1, announce_with("r", Some("alice"), Some(t))),
            1,
        )
        .resume
        .unwrap();
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
        // The room token has expired meanwhile; the resume token still takes the place back.
        h.now += Duration::from_secs(15);
        h.connect(2);
        assert!(result_for(&h.request(2, 1, resume_announce("r", "alice", &resume)), 2).resumed);
    }

    #[test]
    fn without_a_wall_clock_tokens_cannot_be_checked() {
        let mut h = authenticated();
        h.unix = None;
        h.connect(1);
        let t = token("r", None, u64::MAX, None);
        assert_error(
            &h.request(1, 1, announce_with("r", None, Some(t))),
            1,
            ErrorCode::Unauthorized,
            Some(1),
        );
    }

    #[test]
    fn announce_results_carry_ice_servers_with_minted_turn_credentials() {
        let stun = IceServer::new("stun:127.0.0.1:3478");
        let turn = IceServer {
            urls: vec![
                "turn:127.0.0.1:3478?transport=udp".into(),
                "turns:127.0.0.1:5349".into(),
            ],
            username: None,
            credential: None,
        };
        let fixed = IceServer {
            urls: vec!["turn:10.0.0.1:3478".into()],
            username: Some("static".into()),
            credential: Some("pw".into()),
        };
        let config = ServerConfig {
            ice_servers: vec![stun.clone(), turn.clone(), fixed.clone()],
            turn_secret: Some(Secret::new("north-sea-secret").unwrap()),
            turn_ttl: Duration::from_secs(3600),
            ..v2()
        };
        let mut h = Harness::with_config(config);
        h.unix = Some(Duration::from_secs(1_700_000_000));
        let alice = result_for(&h.join(1, "r", "alice"), 1);
        // The credential is the OpenSSL-checked vector of `signal::auth`.
        let minted = IceServer {
            username: Some("1700003600:alice".into()),
            credential: Some("XNu2e1NVrQEGzUB75NhB3SrIHpE=".into()),
            ..turn.clone()
        };
        assert_eq!(alice.ice_servers, vec![stun.clone(), minted, fixed.clone()]);
        // Per peer and per announce: bob's are his own, and a resume mints afresh.
        h.now += Duration::from_secs(10);
        let bob = result_for(&h.join(2, "r", "bob"), 2);
        assert_eq!(
            bob.ice_servers[1].username.as_deref(),
            Some("1700003610:bob")
        );
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
        h.now += Duration::from_secs(5);
        h.connect(3);
        let token = alice.resume.unwrap();
        let back = result_for(&h.request(3, 1, resume_announce("r", "alice", &token)), 3);
        assert_eq!(
            back.ice_servers[1].username.as_deref(),
            Some("1700003615:alice")
        );

        // Without a TURN secret the list goes out as configured; without a wall clock the
        // entries that need minting are left out.
        let mut h = Harness::with_config(ServerConfig {
            ice_servers: vec![stun.clone(), turn.clone()],
            ..v2()
        });
        assert_eq!(
            result_for(&h.join(1, "r", "a"), 1).ice_servers,
            vec![stun.clone(), turn.clone()]
        );
        let mut h = Harness::with_config(ServerConfig {
            ice_servers: vec![stun.clone(), turn, fixed.clone()],
            turn_secret: Some(Secret::new("s").unwrap()),
            ..v2()
        });
        assert_eq!(
            result_for(&h.join(1, "r", "a"), 1).ice_servers,
            vec![stun, fixed]
        );
    }

    fn offer_of(to: &str, len: usize) -> Request {
        Request::Offer {
            to: pid(to),
            sdp: "x".repeat(len),
        }
    }

    fn is_error(out: &[(u64, Option<ServerFrame>)], conn: u64, code: ErrorCode) -> bool {
        out.iter().any(|(to, f)| {
            *to == conn
                && matches!(f, Some(ServerFrame::Response { result: Err(e), .. }) if e.error_code() == Some(code))
        })
    }

    fn left_peers(out: &[(u64, Option<ServerFrame>)]) -> Vec<String> {
        out.iter()
            .filter_map(|(_, f)| match f {
                Some(ServerFrame::Notification(Notification::Left { peer_id, .. })) => {
                    Some(peer_id.to_string())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_member_flooding_another_is_refused_and_the_victim_stays() {
        let mut h = Harness::with_config(v2());
        h.join(1, "r", "mallory");
        h.join(2, "r", "bob");
        h.join(3, "r", "carol");
        // Mallory floods bob with 40 KB offers, 20 a second (well within the frame rate).
        let mut refused = 0;
        let mut relayed = 0;
        for i in 0..200 {
            h.now += Duration::from_millis(50);
            let out = h.request(1, i, offer_of("bob", 40_000));
            assert!(left_peers(&out).is_empty(), "nobody leaves: {out:?}");
            if is_error(&out, 1, ErrorCode::RateLimited) {
                refused += 1;
            } else {
                relayed += 1;
            }
            // Carol's candidates to bob still go through every time.
            if i % 10 == 0 {
                let out = h.request(3, 1000 + i, offer_of("bob", 300));
                assert_eq!(out.len(), 2, "carol relayed to bob: {out:?}");
            }
        }
        // 10 s of flooding at 800 KB/s: the relay budget (256 KiB + 32 KiB/s) passes
        // about 15 of the 200; the rest is refused to mallory.
        assert!((10..=20).contains(&relayed), "{relayed} relayed");
        assert_eq!(refused + relayed, 200);
        assert_eq!(h.relay.stats().evicted, 0);
        assert_eq!(h.relay.peers_in(&rid("r")).len(), 3);
        assert_eq!(h.relay.connection_count(), 3);
        // Mallory is not punished beyond that: after a pause she may send again.
        h.now += Duration::from_secs(10);
        assert_eq!(h.request(1, 999, offer_of("bob", 300)).len(), 2);
    }

    #[test]
    fn rate_limits_count_bytes_as_well_as_frames() {
        let mut h = Harness::with_config(ServerConfig {
            rate_limit_bytes_per_sec: 10_000,
            rate_limit_bytes_burst: 50_000,
            relay_bytes_burst: u32::MAX,
            ..v2()
        });
        h.join(1, "r", "alice");
        h.join(2, "r", "bob");
        // Few frames, many bytes: the byte bucket (50 kB) runs out on the fifth 12 kB frame.
        let codes: Vec<bool> = (0..6)
            .map(|i| {
                is_error(
                    &h.request(1, i, offer_of("bob", 12_000)),
                    1,
                    ErrorCode::RateLimited,
                )
            })
            .collect();
        assert_eq!(codes, [false, false, false, false, true, true]);
        // 10 kB/s: a second and a half later one more fits.
        h.now += Duration::from_millis(1500);
        assert_eq!(h.request(1, 7, offer_of("bob", 12_000)).len(), 2);
        assert!(is_error(
            &h.request(1, 8, offer_of("bob", 12_000)),
            1,
            ErrorCode::RateLimited
        ));
    }

    #[test]
    fn a_connection_that_does_not_read_is_dropped_not_the_peers_sending_to_it() {
        let mut h = Harness::with_config(ServerConfig {
            max_queue_frames: 64,
            max_relay_share: 64 * 1024,
            ..v2()
        });
        h.join(1, "r", "alice");
        h.join(3, "r", "carol");
        h.join(2, "r", "bob");
        // Bob stops reading his socket.
        h.stalled.insert(2);
        // Alice and carol keep sending to him: once their share of his queue is full they
        // are refused, never dropped.
        let mut refused = [0; 2];
        for i in 0..40 {
            h.now += Duration::from_millis(100);
            for (k, from) in [1, 3].into_iter().enumerate() {
                let out = h.request(from, i, offer_of("bob", 4000));
                assert!(
                    !out.iter().any(|(_, f)| f.is_none()),
                    "nobody is closed: {out:?}"
                );
                refused[k] += usize::from(is_error(&out, from, ErrorCode::RateLimited));
            }
        }
        assert!(refused.iter().all(|&r| r > 0), "{refused:?}");
        assert_eq!(h.relay.connection_count(), 3);
        // Bob keeps sending requests without reading the answers: his own queue fills and
        // he is the one dropped (his place held for a resume, as for any dropped connection).
        let mut closed = false;
        for i in 0..100 {
            let out = h.request(
                2,
                100 + i,
                Request::Offer {
                    to: pid("alice"),
                    sdp: "s".into(),
                },
            );
            if out.contains(&(2, None)) {
                closed = true;
                break;
            }
        }
        assert!(closed, "bob was not dropped");
        assert_eq!(h.relay.stats().evicted, 1);
        assert_eq!(h.relay.held_count(), 1);
        assert_eq!(h.relay.connection_count(), 2);
        // Alice and carol carry on.
        assert_eq!(h.request(1, 500, offer("carol")).len(), 2);
        assert_eq!(h.request(3, 500, offer("alice")).len(), 2);
        h.now += Duration::from_secs(21);
        h.relay.handle_timeout(h.now);
        assert_eq!(left_peers(&h.drain()), ["bob", "bob"]);
    }

    #[test]
    fn server_news_that_does_not_fit_drops_the_reader_only() {
        let mut h = Harness::with_config(ServerConfig {
            max_queue_frames: 8,
            ..v1()
        });
        h.join(1, "r", "sleepy");
        h.stalled.insert(1);
        // A churning room: joins and leaves are news for sleepy, who reads none of it.
        for i in 0..10 {
            h.join(10 + i, "r", &format!("p{i}"));
            h.request(10 + i, 2, Request::Disconnect);
        }
        assert_eq!(h.relay.stats().evicted, 1);
        assert!(h.relay.peers_in(&rid("r")).is_empty());
        assert_eq!(h.relay.connection_count(), 0);
    }

    #[test]
    fn unannounced_connections_are_closed_after_the_announce_timeout() {
        let mut h = Harness::with_config(ServerConfig {
            announce_timeout: Duration::from_secs(10),
            ..v2()
        });
        let start = h.now;
        h.connect(1);
        h.connect(2);
        h.now += Duration::from_secs(5);
        h.connect(3);
        assert_eq!(
            h.relay.poll_timeout(),
            Some(start + Duration::from_secs(10))
        );
        // A failed announce does not buy time; a good one ends the deadline.
        assert_error(&h.text(1, "{"), 1, ErrorCode::ParseError, None);
        h.request(2, 1, announce("r", Some("bob")));
        h.now = start + Duration::from_secs(10);
        h.relay.handle_timeout(h.now);
        assert_eq!(h.drain(), vec![(1, None)]);
        assert_eq!(h.relay.stats().announce_timeouts, 1);
        assert_eq!(
            h.relay.poll_timeout(),
            Some(start + Duration::from_secs(15))
        );
        h.now += Duration::from_secs(60);
        h.relay.handle_timeout(h.now);
        assert_eq!(h.drain(), vec![(3, None)]);
        assert_eq!(h.relay.connection_count(), 1);
        assert_eq!(h.relay.poll_timeout(), None);
    }

    #[test]
    fn metadata_is_never_forwarded_larger_than_it_arrived() {
        let mut h = Harness::with_config(v2());
        h.join(1, "r", "alice");
        h.connect(2);
        // Numbers like 1e5 grow when re-serialised (100000.0): this one arrives as written.
        let meta = format!(r#"{{"n":[{}1e5]}}"#, "1e5,".repeat(2000));
        let frame = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{{"room":"r","peer_id":"bob","metadata":{meta}}}}}"#
        );
        h.relay.handle_text(h.now, ConnId(2), &frame);
        let out: Vec<_> = std::iter::from_fn(|| h.relay.poll_output()).collect();
        let ServerOutput::Send { conn, text } = &out[1] else {
            panic!("{out:?}");
        };
        assert_eq!(conn.0, 1);
        assert!(
            text.contains(&meta),
            "peer.joined carries the metadata as sent"
        );
        // Whitespace and escapes are compacted away when that is shorter.
        h.connect(3);
        let spaced = r#"{"jsonrpc":"2.0","id":1,"method":"peer.announce","params":{"room":"r","peer_id":"carol","metadata":{ "name" :   "Ca\u0072ol" }}}"#;
        h.relay.handle_text(h.now, ConnId(3), spaced);
        let out: Vec<_> = std::iter::from_fn(|| h.relay.poll_output()).collect();
        let ServerOutput::Send { text, .. } = &out[1] else {
            panic!("{out:?}");
        };
        assert!(text.ends_with(r#""metadata":{"name":"Carol"}}}"#), "{text}");
    }

    #[test]
    fn metadata_limits_keep_announce_results_under_the_client_cap() {
        let meta = |n: usize| Some(json!({ "blob": "m".repeat(n) }));
        let join_with = |h: &mut Harness, conn: u64, peer: &str, m: Option<Value>| {
            h.connect(conn);
            h.request(
                conn,
                1,
                Request::Announce {
                    room: rid("r"),
                    peer_id: Some(pid(peer)),
                    capabilities: None,
                    metadata: m,
                    token: None,
                    resume: None,
                },
            )
        };
        let mut h = Harness::with_config(ServerConfig {
            max_metadata_bytes: 1000,
            max_room_metadata_bytes: 2500,
            ..v2()
        });
        assert_error(
            &join_with(&mut h, 1, "a", meta(1000)),
            1,
            ErrorCode::InvalidParams,
            Some(1),
        );
        assert_eq!(join_with(&mut h, 2, "b", meta(900)).len(), 1);
        assert_eq!(join_with(&mut h, 3, "c", meta(900)).len(), 2);
        // The room's budget is spent: a third big one is refused, a small one is not.
        assert_error(
            &join_with(&mut h, 4, "d", meta(900)),
            4,
            ErrorCode::InvalidParams,
            Some(1),
        );
        assert_eq!(join_with(&mut h, 5, "e", None).len(), 3);
        // Leaving gives the budget back.
        h.request(2, 9, Request::Disconnect);
        assert!(
            result_for(&join_with(&mut h, 6, "d", meta(900)), 6)
                .peers
                .len()
                == 2
        );

        // A room limit set far above what results can carry: results are cut to fit,
        // newcomers still get in.
        let mut h = Harness::with_config(ServerConfig {
            max_peers_per_room: 100,
            max_room_metadata_bytes: usize::MAX,
            ..v2()
        });
        for i in 0..80 {
            let out = join_with(&mut h, i, &format!("p{i}"), meta(15_000));
            assert_eq!(out.len(), i as usize + 1);
        }
        h.connect(100);
        h.request(100, 1, announce("r", Some("late")));
        // Read the raw text of the result to measure it.
        let mut h2 = h;
        h2.connect(101);
        h2.relay.handle_text(
            h2.now,
            ConnId(101),
            &ClientFrame {
                id: RequestId::Number(1),
                request: announce("r", Some("later")),
            }
            .to_json(),
        );
        let ServerOutput::Send { text, .. } = h2.relay.poll_output().unwrap() else {
            panic!("no result");
        };
        assert!(text.len() <= 1024 * 1024, "{} bytes", text.len());
        let ServerFrame::Response { result: Ok(v), .. } = ServerFrame::parse(&text).unwrap() else {
            panic!("not a result");
        };
        assert_eq!(AnnounceResult::from_value(&v).unwrap().peers.len(), 81);
        assert!(h2.relay.stats().degraded_results >= 1);
    }

    #[test]
    fn random_traffic_keeps_every_invariant() {
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut h = Harness::with_config(ServerConfig {
                max_peers_per_room: 4,
                max_queue_frames: 32,
                max_held_frames: 8,
                max_relay_share: 8 * 1024,
                resume_grace: Duration::from_secs(rng.u64(0..3)),
                ..v2()
            });
            let mut tokens: Vec<(String, String)> = Vec::new();
            let rooms = ["a", "b"];
            for _ in 0..3000 {
                let conn = rng.u64(0..12);
                match rng.u8(0..12) {
                    0 => h.connect(conn),
                    1 => {
                        h.relay
                            .handle_disconnect(h.now, ConnId(conn), LeftReason::Timeout);
                        h.drain();
                    }
                    2 => {
                        if rng.bool() {
                            h.stalled.insert(conn);
                        } else {
                            h.stalled.remove(&conn);
                        }
                    }
                    3 => h.now += Duration::from_millis(rng.u64(0..1500)),
                    4 => {
                        h.relay.handle_timeout(h.now);
                        h.drain();
                    }
                    5 | 6 => {
                        let peer = format!("p{}", rng.u8(0..6));
                        let room = rooms[rng.usize(0..2)];
                        let resume = tokens
                            .iter()
                            .find(|(p, _)| *p == peer)
                            .map(|(_, t)| t.clone())
                            .filter(|_| rng.bool());
                        let out = h.request(
                            conn,
                            1,
                            Request::Announce {
                                room: rid(room),
                                peer_id: Some(pid(&peer)),
                                capabilities: None,
                                metadata: Some(json!({ "pad": "p".repeat(rng.usize(0..3000)) })),
                                token: None,
                                resume,
                            },
                        );
                        for (_, f) in out {
                            if let Some(ServerFrame::Response { result: Ok(v), .. }) = f {
                                if let Ok(r) = AnnounceResult::from_value(&v) {
                                    if let Some(t) = r.resume {
                                        tokens.retain(|(p, _)| *p != r.peer_id.as_str());
                                        tokens.push((r.peer_id.to_string(), t));
                                    }
                                }
                            }
                        }
                    }
                    7 => {
                        h.request(conn, 2, Request::Disconnect);
                    }
                    8 => {
                        let written = rng.usize(0..4);
                        h.relay.handle_written(h.now, ConnId(conn), written);
                    }
                    _ => {
                        let to = format!("p{}", rng.u8(0..6));
                        h.request(conn, 3, offer_of(&to, rng.usize(1..6000)));
                    }
                }
            }
        }
    }

    #[test]
    fn a_full_held_queue_is_delivered_whole_on_resume() {
        let mut h = Harness::with_config(ServerConfig {
            rate_limit_burst: 10_000,
            rate_limit_bytes_burst: u32::MAX,
            relay_bytes_burst: u32::MAX,
            ..v2()
        });
        let token = result_for(&h.join(1, "r", "alice"), 1).resume.unwrap();
        h.join(2, "r", "bob");
        h.relay
            .handle_disconnect(h.now, ConnId(1), LeftReason::Timeout);
        // Just under the held limits: 1 MiB in 255 frames.
        let sdp_len = 1024 * 1024 / 255 - 80;
        for i in 0..255 {
            assert_eq!(h.request(2, i, offer_of("alice", sdp_len)).len(), 1);
        }
        assert_eq!(h.relay.held_count(), 1);
        h.connect(3);
        let out = h.request(3, 1, resume_announce("r", "alice", &token));
        assert!(result_for(&out, 3).resumed);
        assert_eq!(out.len(), 256, "the result and every held offer");
        assert!(out.iter().all(|(to, f)| *to == 3 && f.is_some()));
        assert_eq!(h.relay.stats().evicted, 0);
    }

    const EXAMPLE_OFFER: &str =
        r#"{"jsonrpc":"2.0","id":2,"method":"peer.offer","params":{"to":"alice","sdp":"v=0..."}}"#;

    #[test]
    fn garbage_never_disturbs_the_room() {
        let mut h = Harness::new();
        h.join(1, "r", "alice");
        h.join(2, "r", "bob");
        let mut rng = fastrand::Rng::with_seed(7);
        let valid = ClientFrame {
            id: RequestId::Number(1),
            request: offer("alice"),
        }
        .to_json();
        for _ in 0..1000 {
            let mut bytes = valid.clone().into_bytes();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            let text = String::from_utf8_lossy(&bytes);
            h.now += Duration::from_millis(50);
            for (to, frame) in h.text(2, &text) {
                // Only bob hears about his own frames, unless one still is a valid offer.
                if to == 1 {
                    assert!(matches!(frame, Some(ServerFrame::Notification(_))));
                }
            }
        }
        assert_eq!(h.relay.peers_in(&rid("r")), vec![pid("alice"), pid("bob")]);
    }
}
