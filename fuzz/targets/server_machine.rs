//! The signaling server's state machine driven by arbitrary sequences of connections,
//! frames (valid requests and raw text), drops, written reports and time
//!
//! After every input the outputs are drained and checked: every frame sent parses as a
//! server frame, and `Server::check_invariants` holds (no room over its limit, nothing a
//! connection can make the server hold beyond its bounds, consistent bookkeeping).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use meshrtc::signal::auth::{mint_room_token, RoomClaims, Secret};
use meshrtc::signal::server::{ConnId, Server, ServerConfig, ServerOutput, Timestamp};
use meshrtc::signal::{
    AnnounceResult, ClientFrame, LeftReason, PeerId, Request, RequestId, RoomId, ServerFrame,
};

#[derive(Arbitrary, Debug)]
struct Input {
    grace_s: u8,
    auth: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect(u8),
    Disconnect(u8, u8),
    Request(u8, Req),
    Raw(u8, String),
    Binary(u8, u32),
    Written(u8, u8),
    /// Stops or resumes reading on a connection: its frames are no longer reported written
    Stall(u8, bool),
    Advance(u16),
    Timeout,
}

#[derive(Arbitrary, Debug)]
enum Req {
    Announce {
        room: u8,
        peer: Option<u8>,
        meta: u16,
        /// Use the resume token seen for this peer, if any
        resume: bool,
        /// 0: no token, 1: a valid one, 2: for another room, 3: expired, else garbage
        token: u8,
    },
    Offer {
        to: u8,
        len: u16,
    },
    Answer {
        to: u8,
        len: u16,
    },
    Candidate {
        to: u8,
        len: u8,
    },
    Disconnect,
}

const CONNS: u8 = 12;

fn room(r: u8) -> RoomId {
    RoomId::new(format!("room{}", r % 3)).unwrap()
}

fn peer(p: u8) -> PeerId {
    PeerId::new(format!("p{}", p % 8)).unwrap()
}

/// Decodes the input as libFuzzer's typed targets do (`arbitrary_take_rest`) and runs it
pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        run_input(input);
    }
}

fn run_input(input: Input) {
    let secret = Secret::new("fuzz-room-secret").unwrap();
    let config = ServerConfig {
        max_peers_per_room: 3,
        max_frame_bytes: 16 * 1024,
        rate_limit_burst: 40,
        rate_limit_bytes_burst: 64 * 1024,
        relay_bytes_burst: 32 * 1024,
        max_queue_bytes: 96 * 1024,
        max_queue_frames: 24,
        max_relay_share: 24 * 1024,
        max_held_frames: 6,
        max_held_bytes: 24 * 1024,
        max_metadata_bytes: 4 * 1024,
        max_room_metadata_bytes: 8 * 1024,
        max_result_bytes: 12 * 1024,
        announce_timeout: Duration::from_secs(5),
        resume_grace: Duration::from_secs(u64::from(input.grace_s % 4)),
        token_secret: input.auth.then(|| secret.clone()),
        seed: Some(7),
        ..ServerConfig::default()
    };
    let mut server = Server::new(config);
    let start = Instant::now();
    let unix0 = Duration::from_secs(1_700_000_000);
    let mut now = start;
    let at = |now: Instant| Timestamp::new(now, unix0 + (now - start));
    let mut stalled: BTreeSet<u64> = BTreeSet::new();
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    let mut next_id = 0i64;
    for op in input.ops.into_iter().take(400) {
        match op {
            Op::Connect(c) => server.handle_connect(at(now), ConnId(u64::from(c % CONNS))),
            Op::Disconnect(c, r) => {
                let reason = [
                    LeftReason::Disconnect,
                    LeftReason::Timeout,
                    LeftReason::Kicked,
                ][usize::from(r % 3)];
                server.handle_disconnect(at(now), ConnId(u64::from(c % CONNS)), reason);
            }
            Op::Request(c, req) => {
                next_id += 1;
                let request = match req {
                    Req::Announce {
                        room: r,
                        peer: p,
                        meta,
                        resume,
                        token,
                    } => {
                        let peer_id = p.map(peer);
                        let resume = if resume {
                            peer_id
                                .as_ref()
                                .and_then(|p| tokens.get(p.as_str()).cloned())
                        } else {
                            None
                        };
                        let claims = |room, exp| RoomClaims {
                            room,
                            sub: peer_id.clone(),
                            exp,
                            nbf: None,
                        };
                        let token = match token % 5 {
                            0 => None,
                            1 => Some(mint_room_token(&secret, &claims(room(r), 1_800_000_000))),
                            2 => Some(mint_room_token(
                                &secret,
                                &claims(room(r + 1), 1_800_000_000),
                            )),
                            3 => Some(mint_room_token(&secret, &claims(room(r), 1_600_000_000))),
                            _ => Some("x.y.z".into()),
                        };
                        let metadata = (meta > 0).then(
                            || serde_json::json!({ "m": "m".repeat(usize::from(meta % 6000)) }),
                        );
                        Request::Announce {
                            room: room(r),
                            peer_id,
                            capabilities: None,
                            metadata,
                            token,
                            resume,
                        }
                    }
                    Req::Offer { to, len } => Request::Offer {
                        to: peer(to),
                        sdp: "o".repeat(usize::from(len % 20_000)),
                    },
                    Req::Answer { to, len } => Request::Answer {
                        to: peer(to),
                        sdp: "a".repeat(usize::from(len % 20_000)),
                    },
                    Req::Candidate { to, len } => Request::IceCandidate {
                        to: peer(to),
                        candidate: "c".repeat(usize::from(len)),
                        sdp_mid: Some("0".into()),
                        sdp_m_line_index: Some(0),
                    },
                    Req::Disconnect => Request::Disconnect,
                };
                let frame = ClientFrame {
                    id: RequestId::Number(next_id),
                    request,
                };
                server.handle_text(at(now), ConnId(u64::from(c % CONNS)), &frame.to_json());
            }
            Op::Raw(c, text) => server.handle_text(at(now), ConnId(u64::from(c % CONNS)), &text),
            Op::Binary(c, len) => {
                server.handle_binary(at(now), ConnId(u64::from(c % CONNS)), len as usize);
            }
            Op::Written(c, n) => {
                server.handle_written(at(now), ConnId(u64::from(c % CONNS)), usize::from(n % 8));
            }
            Op::Stall(c, on) => {
                let c = u64::from(c % CONNS);
                if on {
                    stalled.insert(c);
                } else {
                    stalled.remove(&c);
                }
            }
            Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
            Op::Timeout => {
                if let Some(due) = server.poll_timeout() {
                    assert!(due >= start);
                    now = now.max(due);
                }
                server.handle_timeout(at(now));
            }
        }
        while let Some(out) = server.poll_output() {
            if let ServerOutput::Send { conn, text } = out {
                let frame = ServerFrame::parse(&text)
                    .unwrap_or_else(|e| panic!("the server sent an unparsable frame: {e}: {text}"));
                if let ServerFrame::Response { result: Ok(v), .. } = &frame {
                    if let Ok(r) = AnnounceResult::from_value(v) {
                        assert!(
                            text.len() <= 12 * 1024
                                || r.peers.iter().all(|p| p.metadata == serde_json::json!({}))
                        );
                        if let Some(t) = r.resume {
                            tokens.insert(r.peer_id.to_string(), t);
                        }
                    }
                }
                if !stalled.contains(&conn.0) {
                    server.handle_written(at(now), conn, 1);
                }
            }
        }
        if let Err(e) = server.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }
}
