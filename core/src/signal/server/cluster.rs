//! A [`Server`] that is one node of several sharing rooms
//!
//! With [`ServerConfig::node`] set, the server keeps deciding everything about its own
//! connections (parsing, limits, relaying, resume graces), and learns about the members other
//! nodes hold from a driver that carries three things between nodes:
//!
//! * **Claims.** Whether a room is full, an id taken or the room's metadata used up must be
//!   decided once for every node: the server asks a shared room store
//!   ([`ClusterOutput::Claim`]) and the driver answers with [`Server::handle_claim`]. A claim
//!   that carries a resume token moves a place held by another node here.
//! * **Events.** What another node's members must hear ([`ClusterOutput::Publish`]): a
//!   member joined, left or moved to this node, or a frame relayed to one of its members. The
//!   driver hands events from other nodes to [`Server::handle_cluster_event`].
//! * **Listings.** Events can be lost (a store restart, a node's death): the driver lists
//!   the store's members of each room the node has members in from time to time
//!   ([`Server::handle_room_listing`]), which adds members the node missed and ends members
//!   missing from the listings for [`ServerConfig::missing_grace`] (`peer.left`, reason
//!   `"timeout"`). The driver
//!   restores this node's own places into the store from [`Server::places`].
//!
//! A member that leaves is removed from the store with [`ClusterOutput::Release`]. A node
//! only keeps rooms where it has members of its own.
//!
//! Relays to another node's member are refused by the sender's relay bucket as usual; the
//! target's unwritten queue is counted on its own node, which drops a target that does not
//! read (its frames arrive as server notifications there).

use super::*;

/// A member of a room as the room store lists it
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Its id in the room
    pub peer_id: PeerId,
    /// The node its connection is on
    pub node: NodeId,
    /// As announced
    pub capabilities: Capabilities,
    /// As the server stores and forwards it
    pub metadata: Box<RawValue>,
}

/// An announce waiting for the room store: seat `member` in `room` if the store allows
#[derive(Clone, Debug)]
pub struct Claim {
    /// The announcing connection, to hand back with [`Server::handle_claim`]
    pub conn: ConnId,
    /// The room asked for
    pub room: RoomId,
    /// The new member (its node is this one)
    pub member: ClusterMember,
    /// The resume token the new place gets (`None` when resume is off)
    pub token: Option<String>,
    /// A resume: the token presented. The store moves the place here when it holds a place
    /// for `member.peer_id` with this token, and answers [`ClaimOutcome::NotResumable`]
    /// otherwise (without seating anything).
    pub resume: Option<String>,
}

/// What the room store decided about a [`Claim`]
#[derive(Clone, Debug)]
pub enum ClaimOutcome {
    /// Seated; `peers` are the others in the room, in join order
    Joined {
        /// The room's other members
        peers: Vec<ClusterMember>,
    },
    /// The place was moved here from `from`; `me` is the place as the store keeps it
    Resumed {
        /// The place, with the capabilities and metadata it joined with
        me: ClusterMember,
        /// Its resume token
        token: String,
        /// The node that held it
        from: NodeId,
        /// The room's other members, in join order
        peers: Vec<ClusterMember>,
    },
    /// The resume token does not match a place: handle the announce as a fresh one
    NotResumable,
    /// The room has `max_peers_per_room` members
    RoomFull,
    /// The id is taken in the room
    IdTaken,
    /// The room's metadata would pass `max_room_metadata_bytes`; `used` is what is taken
    RoomMetadataFull {
        /// Metadata bytes of the room's members
        used: usize,
    },
    /// The store could not be asked; the client is told to come back later
    Unavailable,
}

/// What a node asks of the room store and of other nodes
#[derive(Clone, Debug)]
pub enum ClusterOutput {
    /// Ask the room store; answer with [`Server::handle_claim`]
    Claim(Claim),
    /// Remove this node's place `peer_id` from `room` in the store (unless it moved on)
    Release {
        /// The room
        room: RoomId,
        /// The member that left
        peer_id: PeerId,
    },
    /// Deliver `event` to node `node` ([`Server::handle_cluster_event`] there)
    Publish {
        /// The node to tell
        node: NodeId,
        /// What to tell it
        event: ClusterEvent,
    },
}

/// What one node tells another about a room they share
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A member joined (its members get `peer.joined`)
    Joined {
        /// The room
        room: RoomId,
        /// Who
        member: ClusterMember,
    },
    /// A member left (its members get `peer.left`)
    Left {
        /// The room
        room: RoomId,
        /// Who
        peer_id: PeerId,
        /// Why
        reason: LeftReason,
    },
    /// A member resumed on `member.node`: nobody is told; a node that held the place
    /// forgets it and sends what it held for it on
    Moved {
        /// The room
        room: RoomId,
        /// Who, and where now
        member: ClusterMember,
    },
    /// A frame (a notification, as sent) for member `to`
    Relay {
        /// The room
        room: RoomId,
        /// The member it is for
        to: PeerId,
        /// The JSON-RPC notification
        text: String,
    },
}

impl ClusterEvent {
    /// The room it is about
    pub fn room(&self) -> &RoomId {
        match self {
            Self::Joined { room, .. }
            | Self::Left { room, .. }
            | Self::Moved { room, .. }
            | Self::Relay { room, .. } => room,
        }
    }
}

/// Events from other nodes kept while announces wait for the room store, at most
const MAX_DEFERRED_EVENTS: usize = 4096;

/// One of this node's places, as the room store should hold it
#[derive(Clone, Debug)]
pub struct Place {
    /// The room
    pub room: RoomId,
    /// The member (its node is this one)
    pub member: ClusterMember,
    /// Its resume token
    pub token: Option<String>,
}

/// An announce waiting for the room store
pub(super) struct PendingClaim {
    id: RequestId,
    peer_id: PeerId,
    token: Option<String>,
    announce: Announce,
}

impl fmt::Debug for PendingClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingClaim")
            .field("id", &self.id)
            .field("peer_id", &self.peer_id)
            .field("room", &self.announce.room)
            .finish_non_exhaustive()
    }
}

impl<'a> PeerOut<'a> {
    fn of_cluster(m: &'a ClusterMember) -> Self {
        Self {
            peer_id: &m.peer_id,
            capabilities: &m.capabilities,
            metadata: &m.metadata,
        }
    }
}

impl Server {
    /// The next thing this node asks of the room store or of another node; `None` when
    /// there is nothing (always, for a server that is not a node)
    ///
    /// Drain it after each `handle_*` call, like [`poll_output`](Self::poll_output).
    pub fn poll_cluster(&mut self) -> Option<ClusterOutput> {
        self.cluster.pop_front()
    }

    /// Rooms this node has members in
    pub fn node_rooms(&self) -> Vec<RoomId> {
        self.rooms.keys().cloned().collect()
    }

    /// This node's own places (live and held), as the room store should hold them
    pub fn places(&self) -> Vec<Place> {
        let Some(node) = &self.config.node else {
            return Vec::new();
        };
        let mut places = Vec::new();
        for (room, r) in &self.rooms {
            for m in r.members.iter().filter(|m| !m.is_remote()) {
                places.push(Place {
                    room: room.clone(),
                    member: m.as_cluster(node),
                    token: m.resume.clone(),
                });
            }
        }
        places
    }

    /// The room store decided about the claim of `conn`
    pub fn handle_claim(&mut self, now: impl Into<Timestamp>, conn: ConnId, outcome: ClaimOutcome) {
        let now = self.observe(now.into());
        let Some(p) = self.claims.remove(&conn) else {
            tracing::warn!(?conn, "a claim outcome nobody waits for; ignored");
            return;
        };
        let Some(node) = self.config.node.clone() else {
            return;
        };
        let open = self.conns.contains_key(&conn);
        let room = p.announce.room.clone();
        let refuse = |code: ErrorCode, message: String| RpcError::new(code, message);
        match outcome {
            ClaimOutcome::Joined { .. } if !open => {
                // The connection dropped meanwhile and nobody was told: give the place up.
                self.cluster.push_back(ClusterOutput::Release {
                    room: room.clone(),
                    peer_id: p.peer_id,
                });
            }
            ClaimOutcome::Joined { peers } => self.join_claimed(now, conn, &node, p, peers),
            ClaimOutcome::Resumed {
                me,
                token,
                from,
                peers,
            } => self.resume_claimed(now, conn, &node, p, me, token, from, peers),
            ClaimOutcome::NotResumable if open => {
                let a = Announce {
                    resume: None,
                    ..p.announce
                };
                self.announce_fresh(now, conn, p.id, a);
            }
            ClaimOutcome::NotResumable => {}
            ClaimOutcome::RoomFull => {
                let message = format!(
                    "room full: {room} has {} peers",
                    self.config.max_peers_per_room
                );
                self.send_error(conn, Some(p.id), refuse(ErrorCode::RoomFull, message));
            }
            ClaimOutcome::IdTaken => {
                let message = format!("peer id {} is already taken in {room}", p.peer_id);
                self.send_error(conn, Some(p.id), refuse(ErrorCode::PeerIdTaken, message));
            }
            ClaimOutcome::RoomMetadataFull { used } => {
                let max = self.config.max_room_metadata_bytes;
                let message = format!(
                    "metadata too large for room {room}: {} bytes, {} of {max} left",
                    p.announce.metadata.get().len(),
                    max.saturating_sub(used),
                );
                self.send_error(conn, Some(p.id), refuse(ErrorCode::InvalidParams, message));
            }
            ClaimOutcome::Unavailable => {
                // Not a contract code: JSON-RPC's internal error. The client comes back later.
                let error = RpcError {
                    code: -32603,
                    message: "room store unavailable: try again later".into(),
                    data: None,
                };
                self.send_error(conn, Some(p.id), error);
                if self.remove_conn(conn).is_some() {
                    self.outputs.push_back(ServerOutput::Close { conn });
                }
            }
        }
        self.replay_deferred(&room);
        self.settle(now);
    }

    /// Another node told this one `event`
    ///
    /// An event for a room where one of this node's announces waits for the room store is
    /// kept until the store has answered: the other node may have seen the member this
    /// node is seating before its claim's answer arrives here (they travel apart).
    pub fn handle_cluster_event(&mut self, now: impl Into<Timestamp>, event: ClusterEvent) {
        let now = self.observe(now.into());
        if self.config.node.is_none() {
            return;
        }
        let room = event.room().clone();
        if self.claims.values().any(|p| p.announce.room == room) {
            if self.deferred.len() >= MAX_DEFERRED_EVENTS {
                // Bounded: the room listings restore memberships; a lost relay is a lost
                // frame, as when a node dies.
                tracing::warn!(%room, "too many events waiting for claims; oldest dropped");
                self.deferred.pop_front();
            }
            self.deferred.push_back(event);
            return;
        }
        self.apply_cluster_event(event);
        self.settle(now);
    }

    /// Applies the events kept for `room` once no announce there waits any more
    fn replay_deferred(&mut self, room: &RoomId) {
        if self.deferred.is_empty() || self.claims.values().any(|p| &p.announce.room == room) {
            return;
        }
        let (ready, kept) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|e| e.room() == room);
        self.deferred = kept;
        for event in ready {
            self.apply_cluster_event(event);
        }
    }

    fn apply_cluster_event(&mut self, event: ClusterEvent) {
        let Some(node) = self.config.node.clone() else {
            return;
        };
        match event {
            ClusterEvent::Joined { room, member } => {
                if member.node != node {
                    self.learn(&room, member);
                }
            }
            ClusterEvent::Left {
                room,
                peer_id,
                reason,
            } => {
                let remote = self
                    .rooms
                    .get(&room)
                    .and_then(|r| r.member(&peer_id))
                    .is_some_and(Member::is_remote);
                if remote {
                    self.leave(&room, &peer_id, reason);
                }
            }
            ClusterEvent::Moved { room, member } => {
                if member.node != node {
                    self.moved_away(&room, member);
                }
            }
            ClusterEvent::Relay { room, to, text } => {
                let local = self
                    .rooms
                    .get(&room)
                    .and_then(|r| r.member(&to))
                    .is_some_and(|m| !m.is_remote());
                if local {
                    self.deliver(&room, &to, text);
                } else {
                    tracing::debug!(peer = %to, %room, "relay for a member not here; dropped");
                }
            }
        }
    }

    /// The room store's members of `room` right now, in join order
    ///
    /// Adds other nodes' members this node missed (its members get `peer.joined`), follows
    /// places that moved, and ends other nodes' members missing from the listings for
    /// [`ServerConfig::missing_grace`] (`peer.left`, reason `"timeout"`).
    pub fn handle_room_listing(
        &mut self,
        now: impl Into<Timestamp>,
        room: &RoomId,
        members: Vec<ClusterMember>,
    ) {
        let now = self.observe(now.into());
        let Some(node) = self.config.node.clone() else {
            return;
        };
        if !self.rooms.contains_key(room) {
            return;
        }
        let listed: BTreeSet<PeerId> = members.iter().map(|m| m.peer_id.clone()).collect();
        for m in members {
            if m.node == node {
                continue;
            }
            let here_local = self
                .rooms
                .get(room)
                .and_then(|r| r.member(&m.peer_id))
                .is_some_and(|x| !x.is_remote());
            if here_local {
                self.moved_away(room, m);
            } else {
                self.learn(room, m);
            }
        }
        let mut gone = Vec::new();
        let grace = self.config.missing_grace;
        if let Some(r) = self.rooms.get_mut(room) {
            for m in &mut r.members {
                if let Link::Remote { missing, .. } = &mut m.link {
                    if listed.contains(&m.peer_id) {
                        *missing = None;
                    } else {
                        let since = *missing.get_or_insert(now);
                        if now.saturating_duration_since(since) >= grace {
                            gone.push(m.peer_id.clone());
                        }
                    }
                }
            }
        }
        for peer_id in gone {
            tracing::debug!(peer = %peer_id, %room, "not in the room store any more");
            self.leave(room, &peer_id, LeftReason::Timeout);
        }
        self.settle(now);
    }

    /// Asks the room store to seat `conn` as `a` (a resume when `resuming`)
    pub(super) fn claim(&mut self, conn: ConnId, id: RequestId, a: Announce, resuming: bool) {
        let (Some(node), Some(peer_id)) = (self.config.node.clone(), a.peer_id.clone()) else {
            return;
        };
        let token = if resuming || self.config.resume_grace.is_zero() {
            None
        } else {
            self.rng.token()
        };
        let claim = Claim {
            conn,
            room: a.room.clone(),
            member: ClusterMember {
                peer_id: peer_id.clone(),
                node,
                capabilities: a.capabilities,
                metadata: a.metadata.clone(),
            },
            token: token.clone(),
            resume: if resuming { a.resume.clone() } else { None },
        };
        self.claims.insert(
            conn,
            PendingClaim {
                id,
                peer_id,
                token,
                announce: a,
            },
        );
        self.cluster.push_back(ClusterOutput::Claim(claim));
    }

    /// Answers `{}` and sends `text` to the node of `to`, or answers why not
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_remote(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: RequestId,
        room: &RoomId,
        to: &PeerId,
        node: NodeId,
        text: String,
    ) {
        if let Err(message) = self.admit_relay(now, conn, room, to, None, text.len()) {
            tracing::debug!(?conn, peer = %to, %message, "relay refused");
            self.stats.relays_refused += 1;
            self.stats.rate_limited += 1;
            let error = RpcError::new(ErrorCode::RateLimited, message);
            return self.send_error(conn, Some(id), error);
        }
        self.send_ok(conn, id, empty_object());
        let event = ClusterEvent::Relay {
            room: room.clone(),
            to: to.clone(),
            text,
        };
        self.cluster
            .push_back(ClusterOutput::Publish { node, event });
    }

    /// Seats `conn` in the place the store granted
    fn join_claimed(
        &mut self,
        now: Instant,
        conn: ConnId,
        node: &NodeId,
        p: PendingClaim,
        peers: Vec<ClusterMember>,
    ) {
        let PendingClaim {
            id,
            peer_id,
            token,
            announce: a,
        } = p;
        let room = a.room;
        let local = self
            .rooms
            .get(&room)
            .and_then(|r| r.member(&peer_id))
            .is_some_and(|m| !m.is_remote());
        if local {
            // The store lost this node's place (a restart) before it was restored: the
            // place here wins, and is restored with this node's next refresh.
            self.cluster.push_back(ClusterOutput::Release {
                room: room.clone(),
                peer_id: peer_id.clone(),
            });
            let message = format!("peer id {peer_id} is already taken in {room}");
            let error = RpcError::new(ErrorCode::PeerIdTaken, message);
            return self.send_error(conn, Some(id), error);
        }
        // Another node's member of that id known here is stale: the store said it is free.
        self.forget(&room, &peer_id);
        self.rooms.entry(room.clone()).or_default();
        for m in peers.iter().filter(|m| &m.node != node) {
            self.learn(&room, m.clone());
        }
        let meta_len = a.metadata.get().len();
        let member = Member {
            peer_id: peer_id.clone(),
            capabilities: a.capabilities,
            metadata: a.metadata,
            link: Link::Live(conn),
            resume: token,
        };
        let joined = notification_text("peer.joined", &PeerOut::of(&member));
        let announced = member.as_cluster(node);
        let ice_servers = self.ice_servers_for(now, &peer_id);
        let Some(entry) = self.rooms.get_mut(&room) else {
            return;
        };
        let locals: Vec<PeerId> = entry
            .members
            .iter()
            .filter(|m| !m.is_remote())
            .map(|m| m.peer_id.clone())
            .collect();
        let result = ResultOut {
            peer_id: &peer_id,
            room: &room,
            peers: peers.iter().map(PeerOut::of_cluster).collect(),
            ice_servers: &ice_servers,
            resume: member.resume.as_deref(),
            resume_grace_s: grace_secs(self.config.resume_grace),
            resumed: false,
        };
        let text = result_text(&id, result, self.config.max_result_bytes, &mut self.stats);
        entry.metadata_bytes += meta_len;
        entry.members.push(member);
        tracing::debug!(?conn, peer = %peer_id, %room, "peer joined (room store)");
        self.seat_conn(conn, &room, peer_id, text);
        for other in locals {
            self.deliver(&room, &other, joined.clone());
        }
        let nodes: BTreeSet<&NodeId> = peers.iter().map(|m| &m.node).collect();
        for n in nodes.into_iter().filter(|n| *n != node) {
            let event = ClusterEvent::Joined {
                room: room.clone(),
                member: announced.clone(),
            };
            self.cluster.push_back(ClusterOutput::Publish {
                node: n.clone(),
                event,
            });
        }
    }

    /// Gives `conn` the place the store moved here from node `from`
    #[allow(clippy::too_many_arguments)]
    fn resume_claimed(
        &mut self,
        now: Instant,
        conn: ConnId,
        node: &NodeId,
        p: PendingClaim,
        me: ClusterMember,
        token: String,
        from: NodeId,
        peers: Vec<ClusterMember>,
    ) {
        let room = p.announce.room;
        let peer_id = me.peer_id.clone();
        self.forget(&room, &peer_id);
        self.rooms.entry(room.clone()).or_default();
        for m in peers.iter().filter(|m| &m.node != node) {
            self.learn(&room, m.clone());
        }
        let open = self.conns.contains_key(&conn);
        let link = if open {
            Link::Live(conn)
        } else {
            // The connection dropped while the store moved the place: hold it here.
            let until = now + self.config.resume_grace;
            self.held_deadlines
                .insert((until, room.clone(), peer_id.clone()));
            self.stats.held += 1;
            Link::Held {
                until,
                frames: VecDeque::new(),
                bytes: 0,
                overflowed: false,
            }
        };
        let member = Member {
            peer_id: peer_id.clone(),
            capabilities: me.capabilities,
            metadata: me.metadata,
            link,
            resume: Some(token),
        };
        let moved = member.as_cluster(node);
        let ice_servers = self.ice_servers_for(now, &peer_id);
        let Some(entry) = self.rooms.get_mut(&room) else {
            return;
        };
        let result = ResultOut {
            peer_id: &peer_id,
            room: &room,
            peers: peers.iter().map(PeerOut::of_cluster).collect(),
            ice_servers: &ice_servers,
            resume: member.resume.as_deref(),
            resume_grace_s: grace_secs(self.config.resume_grace),
            resumed: true,
        };
        let text = result_text(&p.id, result, self.config.max_result_bytes, &mut self.stats);
        entry.metadata_bytes += member.metadata.get().len();
        entry.members.push(member);
        tracing::debug!(?conn, peer = %peer_id, %room, %from, "peer resumed from another node");
        self.stats.resumed += 1;
        if open {
            self.seat_conn(conn, &room, peer_id, text);
        }
        let mut nodes: BTreeSet<NodeId> = peers.into_iter().map(|m| m.node).collect();
        nodes.insert(from);
        nodes.remove(node);
        for n in nodes {
            let event = ClusterEvent::Moved {
                room: room.clone(),
                member: moved.clone(),
            };
            self.cluster
                .push_back(ClusterOutput::Publish { node: n, event });
        }
    }

    /// Notes another node's member; this node's members hear `peer.joined` if it is new
    fn learn(&mut self, room: &RoomId, m: ClusterMember) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        match r.member_mut(&m.peer_id) {
            Some(known) if known.is_remote() => {
                known.link = Link::Remote {
                    node: m.node,
                    missing: None,
                };
            }
            // Ours as far as we know; a listing or a `Moved` event settles it.
            Some(_) => {}
            None => {
                let member = Member {
                    peer_id: m.peer_id,
                    capabilities: m.capabilities,
                    metadata: m.metadata,
                    link: Link::Remote {
                        node: m.node,
                        missing: None,
                    },
                    resume: None,
                };
                let joined = notification_text("peer.joined", &PeerOut::of(&member));
                let locals: Vec<PeerId> = r
                    .members
                    .iter()
                    .filter(|x| !x.is_remote())
                    .map(|x| x.peer_id.clone())
                    .collect();
                r.metadata_bytes += member.metadata.get().len();
                r.members.push(member);
                for other in locals {
                    self.deliver(room, &other, joined.clone());
                }
            }
        }
    }

    /// A place of this node was taken over by `m.node` (a resume there): forget it without
    /// telling anybody; what was held for it goes on to its new node
    fn moved_away(&mut self, room: &RoomId, m: ClusterMember) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(known) = r.member_mut(&m.peer_id) else {
            return self.learn(room, m);
        };
        let remote = Link::Remote {
            node: m.node.clone(),
            missing: None,
        };
        let old = std::mem::replace(&mut known.link, remote);
        known.resume = None;
        match old {
            Link::Remote { .. } => {}
            Link::Live(conn) => {
                tracing::debug!(?conn, peer = %m.peer_id, %room, node = %m.node, "place resumed on another node");
                self.remove_conn(conn);
                self.outputs.push_back(ServerOutput::Close { conn });
            }
            Link::Held { until, frames, .. } => {
                tracing::debug!(peer = %m.peer_id, %room, node = %m.node, held = frames.len(), "held place resumed on another node");
                self.held_deadlines
                    .remove(&(until, room.clone(), m.peer_id.clone()));
                for text in frames {
                    let event = ClusterEvent::Relay {
                        room: room.clone(),
                        to: m.peer_id.clone(),
                        text,
                    };
                    self.cluster.push_back(ClusterOutput::Publish {
                        node: m.node.clone(),
                        event,
                    });
                }
            }
        }
        self.drop_room_if_remote_only(room);
    }

    /// Removes `peer_id` from `room` without telling anybody
    fn forget(&mut self, room: &RoomId, peer_id: &PeerId) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(at) = r.members.iter().position(|m| &m.peer_id == peer_id) else {
            return;
        };
        let gone = r.members.remove(at);
        r.metadata_bytes -= gone.metadata.get().len();
        match gone.link {
            Link::Remote { .. } => {}
            Link::Live(conn) => {
                self.remove_conn(conn);
                self.outputs.push_back(ServerOutput::Close { conn });
            }
            Link::Held { until, .. } => {
                self.held_deadlines
                    .remove(&(until, room.clone(), peer_id.clone()));
            }
        }
        self.drop_room_if_remote_only(room);
    }

    fn drop_room_if_remote_only(&mut self, room: &RoomId) {
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.members.iter().all(Member::is_remote))
        {
            self.rooms.remove(room);
        }
    }
}

impl Member {
    fn as_cluster(&self, node: &NodeId) -> ClusterMember {
        ClusterMember {
            peer_id: self.peer_id.clone(),
            node: node.clone(),
            capabilities: self.capabilities,
            metadata: self.metadata.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Nodes wired to an in-memory room store, as a driver wires them to Redis
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;

    /// Several nodes and the room store they share
    struct Cluster {
        nodes: Vec<Server>,
        /// Per room: (member, resume token), in join order
        store: BTreeMap<RoomId, Vec<(ClusterMember, Option<String>)>>,
        max_peers: usize,
        now: Instant,
        /// Claims not answered yet (node index, claim), when `hold_claims` is set
        held_claims: Vec<(usize, Claim)>,
        hold_claims: bool,
    }

    fn node_id(i: usize) -> NodeId {
        NodeId::new(format!("n{i}")).unwrap()
    }

    // The server never reads the clock; its tests need one real instant to start from.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    impl Cluster {
        fn new(n: usize, max_peers: usize) -> Self {
            let nodes = (0..n)
                .map(|i| {
                    Server::new(ServerConfig {
                        max_peers_per_room: max_peers,
                        seed: Some(i as u64),
                        node: Some(node_id(i)),
                        ..ServerConfig::default()
                    })
                })
                .collect();
            Self {
                nodes,
                store: BTreeMap::new(),
                max_peers,
                now: start(),
                held_claims: Vec::new(),
                hold_claims: false,
            }
        }

        /// Sends `frame` on `conn` of node `node`, runs the cluster until it is quiet and
        /// returns every frame sent, as (node, conn, JSON) (`null` for a close)
        fn send(&mut self, node: usize, conn: u64, frame: Value) -> Vec<(usize, u64, Value)> {
            self.nodes[node].handle_text(self.now, ConnId(conn), &frame.to_string());
            self.pump()
        }

        fn connect(&mut self, node: usize, conn: u64) {
            self.nodes[node].handle_connect(self.now, ConnId(conn));
        }

        fn announce(
            &mut self,
            node: usize,
            conn: u64,
            room: &str,
            peer: &str,
        ) -> Vec<(usize, u64, Value)> {
            self.connect(node, conn);
            let params = json!({"room": room, "peer_id": peer});
            self.send(node, conn, rpc(1, "peer.announce", params))
        }

        fn pump(&mut self) -> Vec<(usize, u64, Value)> {
            let mut frames = Vec::new();
            loop {
                let mut busy = false;
                for i in 0..self.nodes.len() {
                    while let Some(out) = self.nodes[i].poll_output() {
                        busy = true;
                        match out {
                            ServerOutput::Send { conn, text } => {
                                self.nodes[i].handle_written(self.now, conn, 1);
                                frames.push((i, conn.0, serde_json::from_str(&text).unwrap()));
                            }
                            ServerOutput::Close { conn } => frames.push((i, conn.0, Value::Null)),
                        }
                    }
                    while let Some(out) = self.nodes[i].poll_cluster() {
                        busy = true;
                        self.apply(i, out);
                    }
                    self.nodes[i].check_invariants().unwrap();
                }
                if !busy {
                    return frames;
                }
            }
        }

        fn apply(&mut self, from: usize, out: ClusterOutput) {
            match out {
                ClusterOutput::Claim(c) if self.hold_claims => self.held_claims.push((from, c)),
                ClusterOutput::Claim(c) => self.decide(from, c),
                ClusterOutput::Release { room, peer_id } => {
                    if let Some(r) = self.store.get_mut(&room) {
                        r.retain(|(m, _)| m.peer_id != peer_id || m.node != node_id(from));
                    }
                }
                ClusterOutput::Publish { node, event } => {
                    let to = self.index(&node);
                    self.nodes[to].handle_cluster_event(self.now, event);
                }
            }
        }

        fn index(&self, node: &NodeId) -> usize {
            (0..self.nodes.len())
                .find(|i| &node_id(*i) == node)
                .unwrap()
        }

        /// What the Redis script does
        fn decide(&mut self, from: usize, c: Claim) {
            let members = self.store.entry(c.room.clone()).or_default();
            let outcome = if let Some(presented) = &c.resume {
                match members
                    .iter_mut()
                    .find(|(m, _)| m.peer_id == c.member.peer_id)
                {
                    Some((m, Some(t))) if t == presented => {
                        let old = std::mem::replace(&mut m.node, node_id(from));
                        let me = m.clone();
                        let token = t.clone();
                        let peers = members
                            .iter()
                            .filter(|(m, _)| m.peer_id != c.member.peer_id)
                            .map(|(m, _)| m.clone())
                            .collect();
                        ClaimOutcome::Resumed {
                            me,
                            token,
                            from: old,
                            peers,
                        }
                    }
                    _ => ClaimOutcome::NotResumable,
                }
            } else if members.len() >= self.max_peers {
                ClaimOutcome::RoomFull
            } else if members.iter().any(|(m, _)| m.peer_id == c.member.peer_id) {
                ClaimOutcome::IdTaken
            } else {
                let peers = members.iter().map(|(m, _)| m.clone()).collect();
                members.push((c.member.clone(), c.token.clone()));
                ClaimOutcome::Joined { peers }
            };
            self.nodes[from].handle_claim(self.now, c.conn, outcome);
        }

        fn listing(&mut self, node: usize, room: &str) -> Vec<(usize, u64, Value)> {
            let room = RoomId::new(room).unwrap();
            let members = self
                .store
                .get(&room)
                .map(|r| r.iter().map(|(m, _)| m.clone()).collect())
                .unwrap_or_default();
            self.nodes[node].handle_room_listing(self.now, &room, members);
            self.pump()
        }
    }

    fn rpc(id: i64, method: &str, params: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    }

    /// The frames sent to (node, conn)
    fn to(frames: &[(usize, u64, Value)], node: usize, conn: u64) -> Vec<Value> {
        frames
            .iter()
            .filter(|(n, c, _)| *n == node && *c == conn)
            .map(|f| f.2.clone())
            .collect()
    }

    fn listed(result: &Value) -> Vec<String> {
        result["result"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn members_of_other_nodes_are_listed_joined_reached_and_left() {
        let mut c = Cluster::new(2, 3);
        let out = c.announce(0, 1, "r", "alice");
        assert!(listed(&to(&out, 0, 1)[0]).is_empty());
        let out = c.announce(1, 1, "r", "bob");
        assert_eq!(listed(&to(&out, 1, 1)[0]), ["alice"]);
        assert_eq!(to(&out, 0, 1)[0]["method"], "peer.joined");
        assert_eq!(to(&out, 0, 1)[0]["params"]["peer_id"], "bob");

        let offer = rpc(2, "peer.offer", json!({"to": "alice", "sdp": "v=0 b"}));
        let out = c.send(1, 1, offer);
        assert_eq!(
            to(&out, 1, 1),
            [json!({"jsonrpc": "2.0", "id": 2, "result": {}})]
        );
        assert_eq!(
            to(&out, 0, 1),
            [json!({"jsonrpc": "2.0", "method": "peer.offer",
                    "params": {"from": "bob", "sdp": "v=0 b"}})]
        );
        let out = c.send(1, 1, rpc(3, "peer.offer", json!({"to": "zed", "sdp": "x"})));
        assert_eq!(to(&out, 1, 1)[0]["error"]["code"], -32003);

        // Id taken and room full are the store's, whichever node is asked.
        let out = c.announce(1, 2, "r", "alice");
        assert_eq!(to(&out, 1, 2)[0]["error"]["code"], -32002);
        c.announce(0, 3, "r", "carol");
        let out = c.announce(1, 4, "r", "dave");
        assert_eq!(to(&out, 1, 4)[0]["error"]["code"], -32001);

        let out = c.send(0, 1, rpc(5, "peer.disconnect", json!({})));
        let left = json!({"peer_id": "alice", "reason": "disconnect"});
        assert_eq!(to(&out, 1, 1)[0]["params"], left);
        assert_eq!(to(&out, 0, 3)[0]["params"], left);
        assert_eq!(c.store[&RoomId::new("r").unwrap()].len(), 2);
    }

    #[test]
    fn events_that_overtake_a_claim_wait_for_it() {
        let mut c = Cluster::new(2, 10);
        c.announce(0, 1, "r", "alice");
        // Bob's claim is decided by the store, but its answer is late: alice's node already
        // sees bob and offers to him.
        c.hold_claims = true;
        c.announce(1, 1, "r", "bob");
        c.hold_claims = false;
        let (from, claim) = c.held_claims.pop().unwrap();
        let members = c.store.entry(claim.room.clone()).or_default();
        let peers: Vec<ClusterMember> = members.iter().map(|(m, _)| m.clone()).collect();
        members.push((claim.member.clone(), claim.token.clone()));
        c.nodes[0].handle_room_listing(c.now, &claim.room, {
            let mut all = peers.clone();
            all.push(claim.member.clone());
            all
        });
        let out = c.pump();
        assert_eq!(to(&out, 0, 1)[0]["params"]["peer_id"], "bob");
        let offer = rpc(2, "peer.offer", json!({"to": "bob", "sdp": "v=0 a"}));
        let out = c.send(0, 1, offer);
        assert!(to(&out, 1, 1).is_empty(), "delivered before bob is seated");
        c.nodes[from].handle_claim(c.now, claim.conn, ClaimOutcome::Joined { peers });
        let out = c.pump();
        let bob = to(&out, 1, 1);
        assert_eq!(listed(&bob[0]), ["alice"]);
        assert_eq!(bob[1]["method"], "peer.offer");
        assert_eq!(bob[1]["params"]["from"], "alice");
    }

    #[test]
    fn a_place_resumes_on_another_node_unseen_and_gets_what_was_held() {
        let mut c = Cluster::new(3, 10);
        let out = c.announce(0, 1, "r", "alice");
        let token = to(&out, 0, 1)[0]["result"]["resume"]
            .as_str()
            .unwrap()
            .to_string();
        c.announce(1, 1, "r", "bob");
        // Alice's connection drops; bob keeps talking to her.
        c.nodes[0].handle_disconnect(c.now, ConnId(1), LeftReason::Timeout);
        let out = c.send(
            1,
            1,
            rpc(2, "peer.offer", json!({"to": "alice", "sdp": "held"})),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        // She comes back on node 2 with her token.
        c.connect(2, 7);
        let params = json!({"room": "r", "peer_id": "alice", "resume": token});
        let out = c.send(2, 7, rpc(1, "peer.announce", params));
        let alice = to(&out, 2, 7);
        assert_eq!(alice[0]["result"]["resumed"], true, "{alice:?}");
        assert_eq!(listed(&alice[0]), ["bob"]);
        assert_eq!(alice[1]["params"]["sdp"], "held");
        assert!(to(&out, 1, 1).is_empty(), "bob saw {out:?}");
        assert_eq!(c.nodes[0].room_count(), 0);
        // Bob now reaches her on node 2.
        let out = c.send(
            1,
            1,
            rpc(3, "peer.offer", json!({"to": "alice", "sdp": "new"})),
        );
        assert_eq!(to(&out, 2, 7)[0]["params"]["sdp"], "new");
    }

    #[test]
    fn a_member_missing_from_the_store_is_ended_after_the_grace() {
        let mut c = Cluster::new(2, 10);
        c.announce(0, 1, "r", "alice");
        c.announce(1, 1, "r", "bob");
        // Bob's node dies: the store loses bob, nobody tells alice's node.
        c.store
            .get_mut(&RoomId::new("r").unwrap())
            .unwrap()
            .retain(|(m, _)| m.peer_id.as_str() != "bob");
        assert!(c.listing(0, "r").is_empty());
        c.now += Duration::from_secs(9);
        assert!(c.listing(0, "r").is_empty());
        c.now += Duration::from_secs(1);
        let out = c.listing(0, "r");
        assert_eq!(
            to(&out, 0, 1)[0]["params"],
            json!({"peer_id": "bob", "reason": "timeout"})
        );
    }
}
