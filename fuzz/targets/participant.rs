//! `Participant::handle_input` with arbitrary signaling (announce results, notifications,
//! raw frames, offers and answers edited from real ones), datagrams from remotes' addresses
//! and elsewhere, commands and time
//!
//! Checked after every input: no panic, the participant comes back to a timeout (no
//! endless drain), it knows at most the peers the room told it about.

use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use meshrtc::signal::{LeftReason, Notification, PeerInfo, RequestId, RpcError, ServerFrame};
use meshrtc::DataMessage;

use super::harness::{caps, mutate_sdp, real_sdp, remote_addr, remote_id, Driven};

#[derive(Arbitrary, Debug)]
struct Input {
    caps: u8,
    /// Peers already in the room at announce: their capability bytes (at most 3)
    present: Vec<u8>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A datagram from remote `from`'s address, first byte forced into a demultiplexing
    /// range by `kind` (RFC 7983) unless it is 0
    Datagram {
        from: u8,
        kind: u8,
        bytes: Vec<u8>,
    },
    /// A datagram from an address no remote uses
    Stranger {
        port: u16,
        bytes: Vec<u8>,
    },
    /// A server frame as raw text
    Raw(String),
    Joined {
        peer: u8,
        caps: u8,
        meta: String,
    },
    Left {
        peer: u8,
        reason: u8,
    },
    /// An offer edited from a real one
    Offer {
        from: u8,
        edits: Vec<(u8, u8, Vec<u8>)>,
    },
    /// An answer edited from a real one, or the participant's own offer turned around
    Answer {
        from: u8,
        own: bool,
        edits: Vec<(u8, u8, Vec<u8>)>,
    },
    Candidate {
        from: u8,
        text: String,
        real: bool,
    },
    /// A response to one of its requests (or to none)
    Response {
        pick: u8,
        error: bool,
        value: String,
    },
    Advance {
        ms: u16,
        to_deadline: bool,
    },
    SendData {
        to: u8,
        len: u16,
        binary: bool,
    },
    Broadcast {
        len: u16,
    },
    NetworkChange,
    SignalingLost,
    Rejoin,
}

/// Decodes the input as libFuzzer's typed targets do (`arbitrary_take_rest`) and runs it
pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        run_input(input);
    }
}

fn run_input(input: Input) {
    #[allow(clippy::disallowed_methods)] // reason: an anchor for virtual time
    let start = Instant::now();
    let present: Vec<PeerInfo> = input
        .present
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, c)| PeerInfo {
            peer_id: remote_id(i as u8),
            capabilities: caps(*c),
            metadata: serde_json::json!({}),
        })
        .collect();
    let mut d = Driven::joined(start, "me", caps(input.caps), &present);
    let (offer, answer) = real_sdp();
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Datagram {
                from,
                kind,
                mut bytes,
            } => {
                if let Some(b) = bytes.first_mut() {
                    *b = match kind % 5 {
                        1 => 20 + *b % 44,  // DTLS
                        2 => 128 + *b % 64, // RTP/RTCP
                        3 => *b % 4,        // STUN
                        _ => *b,
                    };
                }
                d.datagram(remote_addr(from), &bytes);
            }
            Op::Stranger { port, bytes } => {
                d.datagram(std::net::SocketAddr::from(([192, 0, 2, 7], port)), &bytes)
            }
            Op::Raw(text) => {
                if let Ok(frame) = ServerFrame::parse(&text) {
                    d.signal(frame);
                }
            }
            Op::Joined {
                peer,
                caps: c,
                meta,
            } => d.notify(Notification::Joined(PeerInfo {
                peer_id: remote_id(peer),
                capabilities: caps(c),
                metadata: serde_json::json!({ "m": meta }),
            })),
            Op::Left { peer, reason } => d.notify(Notification::Left {
                peer_id: remote_id(peer),
                reason: [
                    LeftReason::Disconnect,
                    LeftReason::Timeout,
                    LeftReason::Kicked,
                ][usize::from(reason % 3)],
            }),
            Op::Offer { from, edits } => d.notify(Notification::Offer {
                from: remote_id(from),
                sdp: mutate_sdp(offer, &edits),
            }),
            Op::Answer { from, own, edits } => {
                let base = match (&d.last_offer, own) {
                    (Some((_, o)), true) => o.clone(),
                    _ => answer.clone(),
                };
                d.notify(Notification::Answer {
                    from: remote_id(from),
                    sdp: mutate_sdp(&base, &edits),
                })
            }
            Op::Candidate { from, text, real } => {
                let candidate = if real {
                    let a = remote_addr(from);
                    format!(
                        "candidate:1 1 udp 2130706431 {} {} typ host",
                        a.ip(),
                        a.port()
                    )
                } else {
                    text
                };
                d.notify(Notification::IceCandidate {
                    from: remote_id(from),
                    candidate,
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                })
            }
            Op::Response { pick, error, value } => {
                let id = if d.requests.is_empty() || pick == 255 {
                    Some(RequestId::Number(i64::from(pick)))
                } else {
                    let (id, _) = d.requests.remove(usize::from(pick) % d.requests.len());
                    Some(id)
                };
                let result = if error {
                    Err(RpcError {
                        code: -32000 - i64::from(pick % 8),
                        message: value,
                        data: None,
                    })
                } else {
                    Ok(serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value)))
                };
                d.signal(ServerFrame::Response { id, result });
            }
            Op::Advance { ms, to_deadline } => {
                d.advance(Duration::from_millis(u64::from(ms % 10_000)), to_deadline)
            }
            Op::SendData { to, len, binary } => {
                let len = usize::from(len) * 8;
                let m = if binary {
                    DataMessage::Binary(vec![0xab; len])
                } else {
                    DataMessage::Text("t".repeat(len))
                };
                let _ = d.p.send_data(&remote_id(to), m);
                d.drain();
            }
            Op::Broadcast { len } => {
                let _ =
                    d.p.broadcast(DataMessage::Binary(vec![1; usize::from(len)]));
                d.drain();
            }
            Op::NetworkChange => {
                d.p.handle_network_change(d.now);
                d.drain();
            }
            Op::SignalingLost => {
                d.p.signaling_lost();
                d.drain();
            }
            Op::Rejoin => {
                d.p.rejoin();
                d.drain();
            }
        }
        // The harness only ever names four remotes.
        assert!(d.p.peer_ids().count() <= 4, "more peers than the room has");
        assert!(d.p.live_rtc_count() <= 4);
    }
}
