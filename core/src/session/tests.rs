//! The session's decisions, without a network: joining, failing to join, losing and
//! regaining signaling, back-pressure

use std::time::{Duration, Instant};

use super::*;
use crate::signal::server::{ConnId, Server, ServerConfig, ServerOutput};
use crate::signal::{LeftReason, ServerFrame};

/// Sessions and an in-memory signaling server; frames and datagrams cross at once (in
/// order, one at a time)
struct Bench {
    nodes: Vec<Node>,
    server: Server,
    next_conn: u64,
    now: Instant,
    /// Whether an `Output::Connect` succeeds
    reachable: bool,
}

struct Node {
    session: Session,
    addr: std::net::SocketAddr,
    conn: Option<ConnId>,
    events: Vec<Event>,
    connects: usize,
}

/// Work waiting to be carried out
enum Work {
    Datagram(usize, Transmit),
    Frame(usize, ServerFrame),
}

impl Bench {
    fn new(config: SessionConfig) -> Self {
        Self::with_server(config, ServerConfig::default())
    }

    fn with_server(config: SessionConfig, server: ServerConfig) -> Self {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut b = Self {
            nodes: Vec::new(),
            server: Server::new(server),
            next_conn: 0,
            now,
            reachable: true,
        };
        b.add(config);
        b
    }

    /// Adds a session (it connects and joins at once)
    fn add(&mut self, mut config: SessionConfig) -> usize {
        let i = self.nodes.len();
        config.participant.candidate_policy = crate::CandidatePolicy::LoopbackOnly;
        let addr: std::net::SocketAddr = format!("127.0.0.{}:5000", i + 1).parse().unwrap();
        let mut session = Session::new(config, self.now, None);
        session.participant_mut().add_local_candidate(addr).unwrap();
        self.nodes.push(Node {
            session,
            addr,
            conn: None,
            events: Vec::new(),
            connects: 0,
        });
        self.settle();
        i
    }

    /// Drains every session until nothing moves; returns the earliest deadline
    fn settle(&mut self) -> Instant {
        loop {
            let mut work = Vec::new();
            let mut deadline = self.now + Duration::from_secs(3600);
            for i in 0..self.nodes.len() {
                deadline = deadline.min(self.drain(i, &mut work));
            }
            if work.is_empty() {
                return deadline;
            }
            for w in work {
                match w {
                    Work::Datagram(to, t) => {
                        let recv = Receive {
                            source: t.source,
                            destination: t.destination,
                            contents: &t.contents,
                        };
                        let now = self.now;
                        self.nodes[to]
                            .session
                            .handle_input(Input::Receive(now, recv));
                    }
                    Work::Frame(to, frame) => {
                        let now = self.now;
                        self.nodes[to]
                            .session
                            .handle_input(Input::Signal(now, frame));
                    }
                }
            }
        }
    }

    fn drain(&mut self, i: usize, work: &mut Vec<Work>) -> Instant {
        loop {
            match self.nodes[i].session.poll_output() {
                Output::Timeout(t) => return t,
                Output::Transmit(t) => {
                    if let Some(to) = self.nodes.iter().position(|n| n.addr == t.destination) {
                        work.push(Work::Datagram(to, t));
                    }
                }
                Output::Signal(frame) => {
                    let conn = self.nodes[i].conn.expect("frames only while connected");
                    self.server.handle_text(self.now, conn, &frame.to_json());
                    self.pump_server(work);
                }
                Output::Connect => {
                    self.nodes[i].connects += 1;
                    let input = if self.reachable {
                        let conn = ConnId(self.next_conn);
                        self.next_conn += 1;
                        self.server.handle_connect(self.now, conn);
                        self.nodes[i].conn = Some(conn);
                        Input::SignalingUp(self.now)
                    } else {
                        Input::SignalingDown(self.now, "refused".into())
                    };
                    self.nodes[i].session.handle_input(input);
                }
                // No ice_servers in these tests.
                Output::Resolve(_) => {}
                Output::Disconnect => {
                    if let Some(conn) = self.nodes[i].conn.take() {
                        self.server
                            .handle_disconnect(self.now, conn, LeftReason::Disconnect);
                        self.pump_server(work);
                    }
                }
                Output::Event(e) => self.nodes[i].events.push(e),
            }
        }
    }

    fn pump_server(&mut self, work: &mut Vec<Work>) {
        while let Some(o) = self.server.poll_output() {
            if let ServerOutput::Send { conn, text } = o {
                if let Some(to) = self.nodes.iter().position(|n| n.conn == Some(conn)) {
                    let frame = ServerFrame::parse(&text).expect("the server's frames parse");
                    work.push(Work::Frame(to, frame));
                }
            }
        }
    }

    /// Runs timeouts until `until`
    fn run_until(&mut self, until: Instant) {
        loop {
            let next = self.settle();
            if next > until {
                self.now = until;
                return;
            }
            self.now = next.max(self.now);
            for n in &mut self.nodes {
                n.session.handle_input(Input::Timeout(self.now));
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Node `i`'s connection drops (the server sees it go too)
    fn drop_signaling(&mut self, i: usize) {
        if let Some(conn) = self.nodes[i].conn.take() {
            self.server
                .handle_disconnect(self.now, conn, LeftReason::Timeout);
            let mut work = Vec::new();
            self.pump_server(&mut work);
        }
        let now = self.now;
        self.nodes[i]
            .session
            .handle_input(Input::SignalingDown(now, "dropped".into()));
        self.settle();
    }

    fn count(&self, i: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.nodes[i].events.iter().filter(|e| f(e)).count()
    }

    fn session(&mut self, i: usize) -> &mut Session {
        &mut self.nodes[i].session
    }
}

fn config(id: &str) -> SessionConfig {
    let mut c = SessionConfig::new(RoomId::new("room").unwrap());
    c.peer_id = Some(PeerId::new(id).unwrap());
    c
}

#[test]
fn a_session_connects_joins_and_leaves() {
    let mut b = Bench::new(config("a"));
    assert_eq!(b.nodes[0].connects, 1);
    assert!(b.session(0).is_joined());
    assert!(
        matches!(b.nodes[0].events[0], Event::Joined { ref peer_id, .. } if peer_id.as_str() == "a")
    );
    assert_eq!(b.server.connection_count(), 1);
    b.session(0).leave();
    b.settle();
    assert!(b.session(0).is_finished());
    assert_eq!(
        b.server.connection_count(),
        0,
        "peer.disconnect, then closed"
    );
}

#[test]
fn an_unreachable_server_fails_the_join_at_once() {
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut s = Session::new(config("a"), now, None);
    assert!(matches!(s.poll_output(), Output::Connect));
    s.handle_input(Input::SignalingDown(now, "refused".into()));
    let Output::Event(Event::JoinFailed(JoinError::Unreachable(_))) = s.poll_output() else {
        panic!("expected an unreachable join failure");
    };
    assert!(matches!(s.poll_output(), Output::Timeout(_)));
    assert!(s.is_finished());
}

#[test]
fn a_silent_server_fails_the_join_after_the_timeout() {
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut c = config("a");
    c.join_timeout = Duration::from_secs(3);
    let mut s = Session::new(c, now, None);
    assert!(matches!(s.poll_output(), Output::Connect));
    s.handle_input(Input::SignalingUp(now));
    // The announce goes out and nothing ever answers.
    assert!(matches!(s.poll_output(), Output::Signal(_)));
    let Output::Timeout(t) = s.poll_output() else {
        panic!("expected the deadline");
    };
    assert_eq!(t, now + Duration::from_secs(3));
    s.handle_input(Input::Timeout(t));
    let mut failed = false;
    loop {
        match s.poll_output() {
            Output::Event(Event::JoinFailed(JoinError::Timeout(d))) => {
                assert_eq!(d, Duration::from_secs(3));
                failed = true;
            }
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    assert!(failed && s.is_finished());
}

#[test]
fn a_refused_announce_fails_the_join() {
    let mut first = Bench::new(config("same"));
    assert!(first.session(0).is_joined());
    // A second session on the same server with the same id.
    let mut second = Session::new(config("same"), first.now, None);
    assert!(matches!(second.poll_output(), Output::Connect));
    first.server.handle_connect(first.now, ConnId(99));
    second.handle_input(Input::SignalingUp(first.now));
    let Output::Signal(announce) = second.poll_output() else {
        panic!("expected the announce");
    };
    first
        .server
        .handle_text(first.now, ConnId(99), &announce.to_json());
    while let Some(o) = first.server.poll_output() {
        if let ServerOutput::Send { conn, text } = o {
            if conn == ConnId(99) {
                let frame = ServerFrame::parse(&text).unwrap();
                second.handle_input(Input::Signal(first.now, frame));
            }
        }
    }
    let mut refused = None;
    let mut disconnected = false;
    loop {
        match second.poll_output() {
            Output::Event(Event::JoinFailed(JoinError::Rejected(e))) => refused = Some(e),
            Output::Disconnect => disconnected = true,
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    assert_eq!(
        refused.and_then(|e| e.error_code()),
        Some(ErrorCode::PeerIdTaken)
    );
    assert!(disconnected && second.is_finished());
}

#[test]
fn lost_signaling_is_reopened_with_backoff_and_the_session_re_announces() {
    let mut b = Bench::new(config("a"));
    b.reachable = false;
    b.drop_signaling(0);
    assert_eq!(b.count(0, |e| matches!(e, Event::SignalingLost { .. })), 1);
    // Attempts are spaced by the backoff (1 s, 2 s, 4 s, ... with up to half random):
    // within 10 s a handful, not a tight loop.
    b.run_for(Duration::from_secs(10));
    let attempts = b.nodes[0].connects - 1;
    assert!((2..=6).contains(&attempts), "{attempts} attempts in 10 s");
    assert_eq!(
        b.count(0, |e| matches!(e, Event::SignalingLost { .. })),
        1,
        "one loss, however many attempts"
    );
    // The server comes back: the next attempt re-announces with the same id.
    b.reachable = true;
    b.run_for(Duration::from_secs(31));
    let restored: Vec<Duration> = b.nodes[0]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::SignalingRestored { after, .. } => Some(*after),
            _ => None,
        })
        .collect();
    assert_eq!(restored.len(), 1, "{:?}", b.nodes[0].events);
    assert!(restored[0] >= Duration::from_secs(10), "{restored:?}");
    assert!(b.session(0).is_signaling_up());
    assert_eq!(b.server.peers_in(&RoomId::new("room").unwrap()).len(), 1);
    assert_eq!(b.session(0).stats().signaling_restores, 1);
}

#[test]
fn a_dropped_connection_resumes_its_place_and_the_room_sees_nothing() {
    let mut b = Bench::new(config("a"));
    b.add(config("b"));
    b.run_for(Duration::from_secs(2));
    // The connection drops on our side only; the re-announce carries the resume token.
    b.nodes[0].conn.take().unwrap();
    let now = b.now;
    b.session(0)
        .handle_input(Input::SignalingDown(now, "dropped".into()));
    b.run_for(Duration::from_secs(3));
    let resumed: Vec<bool> = b.nodes[0]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::SignalingRestored { resumed, .. } => Some(*resumed),
            _ => None,
        })
        .collect();
    assert_eq!(resumed, vec![true]);
    assert_eq!(
        b.count(1, |e| matches!(
            e,
            Event::Mesh(crate::Event::PeerLeft { .. } | crate::Event::PeerJoined(_))
        )),
        0,
        "b never saw a leave or a join"
    );
    assert_eq!(b.server.peers_in(&RoomId::new("room").unwrap()).len(), 2);
}

#[test]
fn a_taken_id_after_a_reconnect_is_retried_until_the_server_lets_go() {
    // A server without resume (version 1 behaviour).
    let server = ServerConfig {
        resume_grace: Duration::ZERO,
        ..ServerConfig::default()
    };
    let mut b = Bench::with_server(config("a"), server);
    // The connection drops on our side only: the server still holds "a".
    let old = b.nodes[0].conn.take().unwrap();
    let now = b.now;
    b.session(0)
        .handle_input(Input::SignalingDown(now, "dropped".into()));
    b.run_for(Duration::from_secs(2));
    assert!(b.session(0).is_signaling_up(), "reconnected");
    assert_eq!(
        b.count(0, |e| matches!(e, Event::SignalingRestored { .. })),
        0,
        "the id is still taken"
    );
    // The server times the old connection out; a retry gets the id back.
    b.server.handle_disconnect(b.now, old, LeftReason::Timeout);
    b.run_for(Duration::from_secs(40));
    assert_eq!(
        b.count(0, |e| matches!(e, Event::SignalingRestored { .. })),
        1
    );
    assert_eq!(b.count(0, |e| matches!(e, Event::RejoinFailed { .. })), 0);
}

#[test]
fn a_full_peer_queue_stops_taking_commands_until_a_batch_fits() {
    let mut c = config("a");
    c.participant.max_queued_messages = 100;
    let mut b = Bench::new(c);
    b.add(config("b"));
    b.run_for(Duration::from_secs(2));
    let bob = PeerId::new("b").unwrap();
    assert!(b.session(0).participant().is_connected(&bob));
    // Fill the queue faster than the channel drains: nothing runs in between.
    let mut taken = 0;
    while b.session(0).wants_commands() && taken < 1000 {
        let now = b.now;
        let msg = DataMessage::Binary(vec![taken as u8; 16 * 1024]);
        b.session(0)
            .handle_input(Input::Command(now, Command::Send(bob.clone(), msg)));
        taken += 1;
    }
    assert!(
        !b.session(0).wants_commands(),
        "a full queue stops the commands"
    );
    assert!((100..1000).contains(&taken), "{taken}");
    // The channel drains; commands are wanted again once a whole batch fits.
    b.run_for(Duration::from_secs(5));
    assert!(b.session(0).wants_commands());
    let got = b.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Mesh(crate::Event::DataReceived { .. })))
        .count();
    assert_eq!(got, taken, "nothing lost, the stalled one included");
    assert_eq!(b.count(0, |e| matches!(e, Event::SendFailed { .. })), 0);
}

#[test]
fn a_send_to_an_unknown_peer_fails_without_stalling() {
    let mut b = Bench::new(config("a"));
    let now = b.now;
    let ghost = PeerId::new("ghost").unwrap();
    b.session(0).handle_input(Input::Command(
        now,
        Command::Send(ghost, DataMessage::Text("x".into())),
    ));
    b.settle();
    assert!(b.session(0).wants_commands());
    assert_eq!(
        b.count(0, |e| matches!(
            e,
            Event::SendFailed {
                error: CommandError::UnknownPeer(_),
                ..
            }
        )),
        1
    );
}

#[cfg(feature = "opus")]
#[test]
fn audio_streams_get_small_slots_announced_before_their_first_chunk() {
    let mut c = config("a");
    c.participant.capabilities.audio = true;
    let mut b = Bench::new(c);
    for id in ["b", "c"] {
        let mut c = config(id);
        c.participant.capabilities.audio = true;
        c.test_media = Some(TestMedia {
            audio: true,
            video: None,
        });
        b.add(c);
    }
    b.run_for(Duration::from_secs(3));
    let mut started = BTreeMap::new();
    let mut chunks_before_start = 0;
    for e in &b.nodes[0].events {
        match e {
            Event::AudioStreamStarted { peer, slot } => {
                assert!(*slot < 2, "slots are small: {slot}");
                started.insert(peer.clone(), *slot);
            }
            Event::Mesh(crate::Event::AudioPlayout { peer, .. }) if !started.contains_key(peer) => {
                chunks_before_start += 1;
            }
            _ => {}
        }
    }
    assert_eq!(started.len(), 2, "{started:?}");
    assert_eq!(chunks_before_start, 0);
    let slots: std::collections::BTreeSet<usize> = started.values().copied().collect();
    assert_eq!(slots.len(), 2, "distinct slots");
    // "b" leaves: its slot ends after its last chunk and is free for the next stream.
    b.session(1).leave();
    b.run_for(Duration::from_secs(1));
    let ended = b.nodes[0]
        .events
        .iter()
        .position(|e| matches!(e, Event::AudioStreamEnded { peer, .. } if peer.as_str() == "b"))
        .expect("b's stream ended");
    assert!(!b.nodes[0].events[ended..].iter().any(
        |e| matches!(e, Event::Mesh(crate::Event::AudioPlayout { peer, .. }) if peer.as_str() == "b")
    ));
}

#[test]
fn backoff_doubles_up_to_its_bound_with_jitter_below_the_full_wait() {
    let b = Backoff::default();
    let mut rng = fastrand::Rng::with_seed(1);
    for attempt in 0..10 {
        let full = Duration::from_secs(1 << attempt).min(Duration::from_secs(30));
        for _ in 0..20 {
            let d = b.delay(attempt, &mut rng);
            assert!(d <= full && d >= full / 2, "{attempt}: {d:?}");
        }
    }
}
