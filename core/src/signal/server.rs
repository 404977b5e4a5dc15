//! The signaling server's logic as a sans-IO state machine
//!
//! [`Server`] holds every room and connection and implements `contracts/signaling.md`;
//! a driver (the WebSocket server, the simulator) only moves frames in and out.
//!
//! # Call order
//!
//! * [`Server::handle_connect`] once when a connection opens, before anything else about it.
//! * [`Server::handle_text`] and [`Server::handle_binary`] for every frame it receives.
//! * [`Server::handle_disconnect`] once when the connection drops, unless the server asked to
//!   close it with [`ServerOutput::Close`] (calling it then anyway is harmless).
//! * After each `handle_*` call, drain [`Server::poll_output`] until it returns `None`.
//!
//! Inputs about a connection the server does not know (never connected, or already closed)
//! are ignored. Outputs come in a deterministic order, and peer ids the server assigns come
//! from [`ServerConfig::seed`], so the same inputs always give the same outputs.
//!
//! # Behaviour beyond the contract
//!
//! * A second `peer.announce` on an announced connection gets `-32602` (invalid params).
//! * `peer.disconnect` before announcing gets `-32000`, like every method but announce.
//! * A peer may address itself: `to` is its own id, which is in its room.
//! * A binary frame larger than `max_frame_bytes` gets `-32004`, a smaller one `-32600`.
//! * Every frame, valid or not, takes a rate-limit token.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use serde_json::Value;

use crate::signal::{
    empty_object, AnnounceResult, Capabilities, ClientFrame, ErrorCode, LeftReason, Notification,
    PeerId, PeerInfo, Request, RequestId, RoomId, RpcError, ServerFrame, MAX_FRAME_BYTES,
};

/// Limits and seed of a [`Server`]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Peers a room holds before `peer.announce` gets `-32001` (default 10)
    pub max_peers_per_room: usize,
    /// Largest text frame accepted, in bytes (default 64 KiB)
    pub max_frame_bytes: usize,
    /// Frames per second a connection earns back after spending its burst (default 50)
    pub rate_limit_per_sec: u32,
    /// Frames a connection may send at once (default 200)
    pub rate_limit_burst: u32,
    /// Seed of the generator of server-assigned peer ids (default 0)
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_peers_per_room: 10,
            max_frame_bytes: MAX_FRAME_BYTES,
            rate_limit_per_sec: 50,
            rate_limit_burst: 200,
            seed: 0,
        }
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

/// The signaling server: rooms, connections and the protocol between them
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    rng: fastrand::Rng,
    conns: BTreeMap<ConnId, Conn>,
    rooms: BTreeMap<RoomId, Room>,
    outputs: VecDeque<ServerOutput>,
}

impl Server {
    /// A relay with no rooms and no connections
    pub fn new(config: ServerConfig) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            conns: BTreeMap::new(),
            rooms: BTreeMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// A connection opened; it starts with a full rate-limit burst
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            tracing::warn!(?conn, "connect for a connection already open; ignored");
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                bucket: TokenBucket::new(now, self.config.rate_limit_burst),
                seat: None,
            },
        );
    }

    /// A text frame arrived on `conn`
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        let Some(allowed) = self.take_token(now, conn) else {
            return;
        };
        let parsed = ClientFrame::parse_with_limit(text, self.config.max_frame_bytes);
        if !allowed {
            // Answer to the request's id when it has one, but do not act on it.
            let id = match parsed {
                Ok(frame) => Some(frame.id),
                Err(failure) => failure.id,
            };
            self.send_error(conn, id, ErrorCode::RateLimited.into());
            return;
        }
        match parsed {
            Ok(frame) => self.handle_request(conn, frame),
            Err(failure) => {
                tracing::debug!(?conn, %failure, "bad frame");
                self.send(conn, &failure.into_response());
            }
        }
    }

    /// A binary frame of `len` bytes arrived on `conn`; the protocol has none
    ///
    /// The answer has `"id": null`; the connection stays open.
    pub fn handle_binary(&mut self, now: Instant, conn: ConnId, len: usize) {
        let Some(allowed) = self.take_token(now, conn) else {
            return;
        };
        let error = if !allowed {
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
    }

    /// The connection dropped (closed by the client, or timed out)
    ///
    /// Same as `peer.disconnect` without the response: the other peers of its room get
    /// `peer.left` with `reason`. `now` is unused; it keeps every input timestamped.
    pub fn handle_disconnect(&mut self, _now: Instant, conn: ConnId, reason: LeftReason) {
        let Some(gone) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(seat) = gone.seat {
            self.leave(seat, reason);
        }
    }

    /// The next thing the driver must do, in order; `None` when there is nothing left
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.outputs.pop_front()
    }

    /// Rooms with at least one peer
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Open connections, announced or not
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The peers of `room` in join order; empty if there is no such room
    pub fn peers_in(&self, room: &RoomId) -> Vec<PeerId> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.members.iter().map(|m| m.info.peer_id.clone()).collect()
        })
    }

    /// Takes a rate-limit token: `None` for an unknown connection, else whether one was left
    fn take_token(&mut self, now: Instant, conn: ConnId) -> Option<bool> {
        let Some(c) = self.conns.get_mut(&conn) else {
            tracing::debug!(?conn, "frame on an unknown connection; ignored");
            return None;
        };
        Some(c.bucket.try_take(
            now,
            self.config.rate_limit_per_sec,
            self.config.rate_limit_burst,
        ))
    }

    fn handle_request(&mut self, conn: ConnId, frame: ClientFrame) {
        let ClientFrame { id, request } = frame;
        let seat = self.conns.get(&conn).and_then(|c| c.seat.clone());
        match (request, seat) {
            (
                Request::Announce {
                    room,
                    peer_id,
                    capabilities,
                    metadata,
                    ..
                },
                seat,
            ) => {
                if let Some(seat) = seat {
                    let message = format!("already announced as {} in {}", seat.peer_id, seat.room);
                    let error = RpcError::new(ErrorCode::InvalidParams, message);
                    return self.send_error(conn, Some(id), error);
                }
                let capabilities = capabilities.unwrap_or_default();
                let metadata = metadata.unwrap_or_else(empty_object);
                self.announce(conn, id, room, peer_id, capabilities, metadata);
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
                self.forward(conn, id, &room, &to, Notification::Offer { from, sdp });
            }
            (
                Request::Answer { to, sdp },
                Some(Seat {
                    room,
                    peer_id: from,
                }),
            ) => {
                self.forward(conn, id, &room, &to, Notification::Answer { from, sdp });
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
                self.forward(conn, id, &room, &to, notification);
            }
        }
    }

    /// Seats the unannounced `conn` in `room`, or answers why not
    fn announce(
        &mut self,
        conn: ConnId,
        id: RequestId,
        room: RoomId,
        peer_id: Option<PeerId>,
        capabilities: Capabilities,
        metadata: Value,
    ) {
        let members = self.rooms.get(&room).map_or(&[][..], |r| &r.members);
        if members.len() >= self.config.max_peers_per_room {
            let message = format!(
                "room full: {room} has {} peers",
                self.config.max_peers_per_room
            );
            let error = RpcError::new(ErrorCode::RoomFull, message);
            return self.send_error(conn, Some(id), error);
        }
        let peer_id = match peer_id {
            Some(p) if members.iter().any(|m| m.info.peer_id == p) => {
                let message = format!("peer id {p} is already taken in {room}");
                let error = RpcError::new(ErrorCode::PeerIdTaken, message);
                return self.send_error(conn, Some(id), error);
            }
            Some(p) => p,
            None => self.fresh_peer_id(&room),
        };

        tracing::debug!(?conn, peer = %peer_id, %room, "peer joined");
        let info = PeerInfo {
            peer_id,
            capabilities,
            metadata,
        };
        let members = &mut self.rooms.entry(room.clone()).or_default().members;
        let peers: Vec<PeerInfo> = members.iter().map(|m| m.info.clone()).collect();
        let others: Vec<ConnId> = members.iter().map(|m| m.conn).collect();
        members.push(Member {
            conn,
            info: info.clone(),
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.seat = Some(Seat {
                room: room.clone(),
                peer_id: info.peer_id.clone(),
            });
        }
        let result = AnnounceResult::new(info.peer_id.clone(), room, peers);
        self.send_ok(conn, id, result.to_value());
        let joined = ServerFrame::Notification(Notification::Joined(info));
        self.broadcast(&others, &joined);
    }

    /// Answers `{}` to the sender and relays `notification` to peer `to` of `room`
    fn forward(
        &mut self,
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
            .map(|m| m.conn);
        let Some(target) = target else {
            let message = format!("unknown target peer: {to} is not in {room}");
            let error = RpcError::new(ErrorCode::UnknownTarget, message);
            return self.send_error(conn, Some(id), error);
        };
        self.send_ok(conn, id, empty_object());
        self.send(target, &ServerFrame::Notification(notification));
    }

    /// Answers `peer.disconnect` from an announced connection, then closes it
    fn disconnect(&mut self, conn: ConnId, id: RequestId) {
        self.send_ok(conn, id, empty_object());
        self.outputs.push_back(ServerOutput::Close { conn });
        if let Some(seat) = self.conns.remove(&conn).and_then(|c| c.seat) {
            self.leave(seat, LeftReason::Disconnect);
        }
    }

    /// Removes a seated peer from its room, telling the others; drops the room when empty
    fn leave(&mut self, seat: Seat, reason: LeftReason) {
        let Some(room) = self.rooms.get_mut(&seat.room) else {
            return;
        };
        room.members.retain(|m| m.info.peer_id != seat.peer_id);
        let others: Vec<ConnId> = room.members.iter().map(|m| m.conn).collect();
        if others.is_empty() {
            self.rooms.remove(&seat.room);
        }
        tracing::debug!(peer = %seat.peer_id, room = %seat.room, ?reason, "peer left");
        let left = Notification::Left {
            peer_id: seat.peer_id,
            reason,
        };
        self.broadcast(&others, &ServerFrame::Notification(left));
    }

    /// A UUID-v4-formatted peer id not yet taken in `room`
    fn fresh_peer_id(&mut self, room: &RoomId) -> PeerId {
        loop {
            let bits = (u128::from(self.rng.u64(..)) << 64) | u128::from(self.rng.u64(..));
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

    fn send(&mut self, conn: ConnId, frame: &ServerFrame) {
        self.outputs.push_back(ServerOutput::Send {
            conn,
            text: frame.to_json(),
        });
    }

    fn send_ok(&mut self, conn: ConnId, id: RequestId, result: Value) {
        self.send(conn, &ServerFrame::response_ok(id, result));
    }

    fn send_error(&mut self, conn: ConnId, id: Option<RequestId>, error: RpcError) {
        self.send(conn, &ServerFrame::response_err(id, error));
    }

    /// Sends one frame to several connections, serializing it once
    fn broadcast(&mut self, conns: &[ConnId], frame: &ServerFrame) {
        if conns.is_empty() {
            return;
        }
        let text = frame.to_json();
        self.outputs
            .extend(conns.iter().map(|&conn| ServerOutput::Send {
                conn,
                text: text.clone(),
            }));
    }
}

#[derive(Debug)]
struct Conn {
    bucket: TokenBucket,
    /// Where the connection is once it has announced
    seat: Option<Seat>,
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
}

#[derive(Debug)]
struct Member {
    conn: ConnId,
    info: PeerInfo,
}

impl Room {
    fn member(&self, peer_id: &PeerId) -> Option<&Member> {
        self.members.iter().find(|m| &m.info.peer_id == peer_id)
    }
}

/// A token bucket counting in billionths of a frame, so that refills are exact integers
#[derive(Debug)]
struct TokenBucket {
    level: u64,
    last: Instant,
}

impl TokenBucket {
    const SCALE: u64 = 1_000_000_000;

    fn new(now: Instant, burst: u32) -> Self {
        Self {
            level: u64::from(burst) * Self::SCALE,
            last: now,
        }
    }

    /// Refills for the time since the last call, then takes one token if there is one
    fn try_take(&mut self, now: Instant, per_sec: u32, burst: u32) -> bool {
        // One token per second is SCALE units per 10^9 ns, so each ns refills `per_sec` units.
        let refill = now
            .saturating_duration_since(self.last)
            .as_nanos()
            .saturating_mul(u128::from(per_sec));
        let cap = u64::from(burst) * Self::SCALE;
        let level = u128::from(self.level).saturating_add(refill);
        self.level = u64::try_from(level).map_or(cap, |level| level.min(cap));
        self.last = self.last.max(now);
        if self.level < Self::SCALE {
            return false;
        }
        self.level -= Self::SCALE;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    /// A relay plus a clock, decoding every output for the assertions
    struct Harness {
        relay: Server,
        now: Instant,
    }

    impl Harness {
        fn new() -> Self {
            Self::with_config(ServerConfig::default())
        }

        fn with_config(config: ServerConfig) -> Self {
            Self {
                relay: Server::new(config),
                now: base_instant(),
            }
        }

        fn connect(&mut self, conn: u64) {
            self.relay.handle_connect(self.now, ConnId(conn));
            assert!(self.drain().is_empty());
        }

        fn text(&mut self, conn: u64, text: &str) -> Vec<(u64, Option<ServerFrame>)> {
            self.relay.handle_text(self.now, ConnId(conn), text);
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
        fn drain(&mut self) -> Vec<(u64, Option<ServerFrame>)> {
            std::iter::from_fn(|| self.relay.poll_output())
                .map(|out| match out {
                    ServerOutput::Send { conn, text } => {
                        (conn.0, Some(ServerFrame::parse(&text).unwrap()))
                    }
                    ServerOutput::Close { conn } => (conn.0, None),
                })
                .collect()
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
        Instant::now()
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
        let first = AnnounceResult::new(pid("alice"), rid("demo"), vec![]);
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
        let second = AnnounceResult::new(pid("bob"), rid("demo"), vec![info("alice")]);
        assert_eq!(
            out,
            vec![
                (2, ok(7, second.to_value())),
                (1, note(Notification::Joined(bob.clone()))),
            ]
        );

        let out = h.join(3, "demo", "carol");
        let third = AnnounceResult::new(pid("carol"), rid("demo"), vec![info("alice"), bob]);
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
            ..ServerConfig::default()
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
            ..ServerConfig::default()
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
            ..ServerConfig::default()
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
            ..ServerConfig::default()
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
                seed,
                ..ServerConfig::default()
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
