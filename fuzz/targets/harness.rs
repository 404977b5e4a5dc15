//! A participant under test driven without a server: the harness plays the signaling server
//! (announce results, notifications) and every remote, so each fuzz input reaches the
//! participant the way a hostile room or network would

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meshrtc::signal::{
    AnnounceResult, Capabilities, ClientFrame, Notification, PeerId, PeerInfo, Request, RequestId,
    RoomId, ServerFrame,
};
use meshrtc::{Config, Input, Output, Participant, Receive};

/// Outputs drained after one input, at most: more means the participant loops
const MAX_OUTPUTS: usize = 100_000;

/// The participant's own address
pub const LOCAL: &str = "10.0.0.1:5000";

/// The address remote `i` sends from (also its trickled candidate)
pub fn remote_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, i % 4 + 1], 6000))
}

/// Remote `i`'s peer id
pub fn remote_id(i: u8) -> PeerId {
    PeerId::new(format!("r{}", i % 4)).unwrap()
}

fn room() -> RoomId {
    RoomId::new("fuzz").unwrap()
}

/// The capabilities of byte `b` (low three bits)
pub fn caps(b: u8) -> Capabilities {
    Capabilities {
        audio: b & 1 != 0,
        video: b & 2 != 0,
        data: b & 4 != 0,
    }
}

/// A participant and the harness's view of it
pub struct Driven {
    /// The participant
    pub p: Participant,
    /// Virtual now
    pub now: Instant,
    /// Its next deadline
    pub deadline: Instant,
    /// Ids of its requests not answered yet, oldest first
    pub requests: Vec<(RequestId, &'static str)>,
    /// The last offer and answer it sent (SDP)
    pub last_offer: Option<(PeerId, String)>,
    /// See `last_offer`
    pub last_answer: Option<(PeerId, String)>,
}

impl Driven {
    /// A participant with `caps` joined to the room as `me`, its announce answered with
    /// `peers` already there
    pub fn joined(start: Instant, me: &str, caps: Capabilities, peers: &[PeerInfo]) -> Self {
        let config = Config {
            seed: 1,
            secret_seed: Some(1),
            capabilities: caps,
            ..Config::default()
        };
        let mut p = Participant::new(config, start);
        p.add_local_candidate(LOCAL.parse().unwrap()).unwrap();
        p.join(room(), Some(PeerId::new(me).unwrap())).unwrap();
        let mut d = Self {
            p,
            now: start,
            deadline: start,
            requests: Vec::new(),
            last_offer: None,
            last_answer: None,
        };
        d.drain();
        let id = d
            .requests
            .iter()
            .find(|(_, m)| *m == "peer.announce")
            .map(|(id, _)| id.clone())
            .expect("join sends peer.announce");
        let result = AnnounceResult {
            peer_id: PeerId::new(me).unwrap(),
            room: room(),
            peers: peers.to_vec(),
            ice_servers: Vec::new(),
            resume: None,
            resume_grace_s: None,
            resumed: false,
        };
        d.signal(ServerFrame::Response {
            id: Some(id),
            result: Ok(result.to_value()),
        });
        d
    }

    /// Drains every output; panics if the participant does not come back to a timeout
    pub fn drain(&mut self) {
        for _ in 0..MAX_OUTPUTS {
            match self.p.poll_output() {
                Output::Timeout(t) => {
                    self.deadline = t;
                    return;
                }
                Output::Transmit(t) => {
                    assert!(!t.contents.is_empty(), "empty datagram sent");
                }
                Output::Signal(ClientFrame { id, request }) => {
                    let method = request.method();
                    match request {
                        Request::Offer { to, sdp } => self.last_offer = Some((to, sdp)),
                        Request::Answer { to, sdp } => self.last_answer = Some((to, sdp)),
                        _ => {}
                    }
                    if self.requests.len() >= 64 {
                        self.requests.remove(0);
                    }
                    self.requests.push((id, method));
                }
                Output::Event(_) => {}
                // No resolver here: the names stay unresolved (no STUN/TURN servers).
                Output::Resolve(_) => {}
            }
        }
        panic!("no timeout after {MAX_OUTPUTS} outputs: the participant loops");
    }

    /// Hands it a signaling frame, then drains
    pub fn signal(&mut self, frame: ServerFrame) {
        let _ = self.p.handle_input(Input::Signal(self.now, frame));
        self.drain();
    }

    /// Hands it a notification, then drains
    pub fn notify(&mut self, n: Notification) {
        self.signal(ServerFrame::Notification(n));
    }

    /// Hands it a datagram from `source`, then drains
    pub fn datagram(&mut self, source: SocketAddr, contents: &[u8]) {
        let recv = Receive {
            source,
            destination: LOCAL.parse().unwrap(),
            contents,
        };
        let _ = self.p.handle_input(Input::Receive(self.now, recv));
        self.drain();
    }

    /// Moves time on by `d` (at least to the deadline when `to_deadline`) and times out
    pub fn advance(&mut self, d: Duration, to_deadline: bool) {
        self.now += d;
        if to_deadline && self.deadline > self.now {
            self.now = self.deadline.min(self.now + Duration::from_secs(30));
        }
        let _ = self.p.handle_input(Input::Timeout(self.now));
        self.drain();
    }
}

/// A real offer and its real answer between two participants with every capability, made
/// once per process: what SDP mutations start from
pub fn real_sdp() -> &'static (String, String) {
    static SDP: OnceLock<(String, String)> = OnceLock::new();
    SDP.get_or_init(|| {
        #[allow(clippy::disallowed_methods)] // reason: an anchor for virtual time
        let start = Instant::now();
        let all = caps(7);
        let info = |id: &str| PeerInfo {
            peer_id: PeerId::new(id).unwrap(),
            capabilities: all,
            metadata: serde_json::json!({}),
        };
        let mut a = Driven::joined(start, "a", all, &[]);
        let mut b = Driven::joined(start, "b", all, &[info("a")]);
        a.notify(Notification::Joined(info("b")));
        let (offerer, answerer, from, to) = if b.last_offer.is_some() {
            (&mut b, &mut a, "b", "a")
        } else {
            (&mut a, &mut b, "a", "b")
        };
        let (_, offer) = offerer.last_offer.clone().expect("one side offers");
        answerer.notify(Notification::Offer {
            from: PeerId::new(from).unwrap(),
            sdp: offer.clone(),
        });
        let (_, answer) = answerer.last_answer.clone().expect("the other answers");
        let _ = to;
        (offer, answer)
    })
}

/// Edits an SDP line by line as `ops` say: each op is (line index, action, bytes)
pub fn mutate_sdp(sdp: &str, ops: &[(u8, u8, Vec<u8>)]) -> String {
    let mut lines: Vec<String> = sdp.lines().map(str::to_string).collect();
    for (at, action, bytes) in ops.iter().take(16) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let i = usize::from(*at) % lines.len();
        let text = String::from_utf8_lossy(bytes).into_owned();
        match action % 8 {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => lines[i] = text,
            3 => lines.insert(i, text),
            // Keep the attribute name, replace its value.
            4 => {
                let name = lines[i].split([':', '=']).next().unwrap_or("").to_string();
                let sep = if lines[i].contains(':') { ":" } else { "=" };
                lines[i] = format!("{name}{sep}{text}");
            }
            5 => {
                let l = &mut lines[i];
                let cut = usize::from(bytes.first().copied().unwrap_or(0)).min(l.len());
                let cut = (0..=cut)
                    .rev()
                    .find(|c| l.is_char_boundary(*c))
                    .unwrap_or(0);
                l.truncate(cut);
            }
            // Swap two lines.
            6 => {
                let j = usize::from(bytes.first().copied().unwrap_or(0)) % lines.len();
                lines.swap(i, j);
            }
            _ => lines[i].push_str(&text),
        }
    }
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    out
}
