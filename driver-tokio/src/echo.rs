//! The data-channel behaviour of `meshrtc peer --data echo` (`contracts/cli.md`), and the
//! stats JSON of `meshrtc peer --stats-json`
//!
//! Once a second every connected peer gets `{"ping": N, "from": "ID"}` (N counts from 1 per
//! peer). A received `{"ping": N, ...}` is answered with `{"pong": N, "from": "ID"}`, a
//! `{"pong": ...}` with nothing, and anything else (text or binary) with the same bytes.
//!
//! [`Echo`] is that logic without IO (the blocking driver's examples and the interop tests
//! run it on their own sessions); [`run_echo`] wires it to a tokio session's events, a
//! ticker and the handle. [`StatsFile`] is the stats JSON, built from an echo report and
//! the core's [`PeerStats`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use meshrtc::signal::PeerId;
use meshrtc::{DataMessage, Event, PeerStats};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::session::{Event as SessionEvent, Events, SessionHandle};
use crate::Result;

/// How often pings go out and stats are sampled
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Pings remembered per peer while waiting for their pong
const MAX_OUTSTANDING: usize = 64;

/// What the echo application measured about one remote peer
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteReport {
    /// Whether the data channel to the peer was ever usable
    pub connected: bool,
    /// From offer to usable, as the core measured it
    pub connect_time: Option<Duration>,
    /// Pings sent to the peer
    pub pings_sent: u64,
    /// Pongs received from the peer
    pub pongs_received: u64,
    /// Every data message received from the peer (pings, pongs and others)
    pub messages_received: u64,
    /// Round-trip time: the core's RTCP figure when it has one, otherwise the median
    /// ping→pong round trip over the data channel; `None` when neither was measured
    pub rtt: Option<Duration>,
    /// Whether the data channel to the peer is usable now (it gets pings)
    pub present: bool,
}

#[derive(Debug, Default)]
struct Remote {
    report: RemoteReport,
    next_ping: u64,
    outstanding: VecDeque<(u64, Instant)>,
    ping_rtts: Vec<Duration>,
    core_rtt: Option<Duration>,
}

impl Remote {
    fn rtt(&self) -> Option<Duration> {
        if self.core_rtt.is_some() {
            return self.core_rtt;
        }
        let mut sorted = self.ping_rtts.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied()
    }
}

/// The echo logic for one local peer, without IO
///
/// # Example
///
/// ```
/// use std::time::Instant;
/// use meshrtc::signal::PeerId;
/// use meshrtc::{DataMessage, Event};
/// use meshrtc_tokio::echo::Echo;
///
/// let mut echo = Echo::new(PeerId::new("alice").unwrap());
/// let ping = Event::DataReceived {
///     peer: PeerId::new("bob").unwrap(),
///     label: "meshrtc".into(),
///     message: DataMessage::Text(r#"{"ping": 3, "from": "bob"}"#.into()),
/// };
/// // A ping is answered with a pong, to the peer it came from.
/// let replies = echo.handle_event(Instant::now(), &ping);
/// assert_eq!(
///     replies,
///     vec![(PeerId::new("bob").unwrap(), DataMessage::Text(r#"{"pong":3,"from":"alice"}"#.into()))]
/// );
/// ```
#[derive(Debug)]
pub struct Echo {
    me: PeerId,
    remotes: BTreeMap<PeerId, Remote>,
}

impl Echo {
    /// Echo logic for the local peer `me`
    pub fn new(me: PeerId) -> Self {
        Self {
            me,
            remotes: BTreeMap::new(),
        }
    }

    /// Handles one event of the core; returns the messages to send in reply
    pub fn handle_event(&mut self, now: Instant, event: &Event) -> Vec<(PeerId, DataMessage)> {
        match event {
            Event::Announced { peers, .. } => {
                for info in peers {
                    self.remotes.entry(info.peer_id.clone()).or_default();
                }
                Vec::new()
            }
            Event::PeerJoined(info) => {
                self.remotes.entry(info.peer_id.clone()).or_default();
                Vec::new()
            }
            Event::PeerConnected { peer, connect_time } => {
                let r = self.remotes.entry(peer.clone()).or_default();
                r.report.connected = true;
                r.report.present = true;
                r.report.connect_time = Some(*connect_time);
                Vec::new()
            }
            Event::PeerLeft { peer, .. } | Event::PeerFailed { peer, .. } => {
                if let Some(r) = self.remotes.get_mut(peer) {
                    r.report.present = false;
                }
                Vec::new()
            }
            Event::DataReceived { peer, message, .. } => {
                let r = self.remotes.entry(peer.clone()).or_default();
                r.report.messages_received += 1;
                match classify(message) {
                    Kind::Ping(n) => {
                        vec![(peer.clone(), DataMessage::Text(keyed("pong", n, &self.me)))]
                    }
                    Kind::Pong(n) => {
                        r.report.pongs_received += 1;
                        if let Some(n) = n {
                            if let Some(i) = r.outstanding.iter().position(|(m, _)| *m == n) {
                                let (_, sent) = r.outstanding[i];
                                r.outstanding.drain(..=i);
                                r.ping_rtts.push(now.saturating_duration_since(sent));
                            }
                        }
                        Vec::new()
                    }
                    Kind::Other => vec![(peer.clone(), message.clone())],
                }
            }
            _ => Vec::new(),
        }
    }

    /// The once-a-second pings: one to every connected peer
    pub fn tick(&mut self, now: Instant) -> Vec<(PeerId, DataMessage)> {
        let me = &self.me;
        self.remotes
            .iter_mut()
            .filter(|(_, r)| r.report.present)
            .map(|(peer, r)| {
                r.next_ping += 1;
                r.report.pings_sent += 1;
                let n = r.next_ping;
                if r.outstanding.len() == MAX_OUTSTANDING {
                    r.outstanding.pop_front();
                }
                r.outstanding.push_back((n, now));
                (peer.clone(), DataMessage::Text(keyed("ping", n, me)))
            })
            .collect()
    }

    /// Takes the round-trip times the core measured (`peers`: a driver's per-peer stats)
    pub fn record_stats<'a>(
        &mut self,
        peers: impl IntoIterator<Item = (&'a PeerId, &'a PeerStats)>,
    ) {
        for (peer, s) in peers {
            if let (Some(r), Some(rtt)) = (self.remotes.get_mut(peer), s.rtt) {
                r.core_rtt = Some(rtt);
            }
        }
    }

    /// What was measured so far, per remote peer seen in the room
    pub fn report(&self) -> BTreeMap<PeerId, RemoteReport> {
        self.remotes
            .iter()
            .map(|(peer, r)| {
                let mut report = r.report.clone();
                report.rtt = r.rtt();
                (peer.clone(), report)
            })
            .collect()
    }
}

/// `{"ping": N, "from": "ID"}` or `{"pong": N, "from": "ID"}`, keys in the contract's order
fn keyed(key: &str, n: u64, from: &PeerId) -> String {
    let from = Value::String(from.to_string());
    format!(r#"{{"{key}":{n},"from":{from}}}"#)
}

enum Kind {
    Ping(u64),
    Pong(Option<u64>),
    Other,
}

fn classify(message: &DataMessage) -> Kind {
    let DataMessage::Text(text) = message else {
        return Kind::Other;
    };
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return Kind::Other;
    };
    if let Some(n) = obj.get("ping").and_then(Value::as_u64) {
        return Kind::Ping(n);
    }
    if let Some(pong) = obj.get("pong") {
        return Kind::Pong(pong.as_u64());
    }
    Kind::Other
}

/// The stats file of `meshrtc peer --stats-json` (`contracts/cli.md`)
#[derive(Debug, Clone, Serialize)]
pub struct StatsFile {
    /// Our peer id
    pub peer_id: String,
    /// The room
    pub room: String,
    /// Every remote peer seen in the room, by id
    pub remote: BTreeMap<String, RemoteJson>,
}

/// One remote peer in the stats file; what was not measured is `null`
#[derive(Debug, Clone, Serialize)]
pub struct RemoteJson {
    /// Whether the peer was ever connected
    pub connected: bool,
    /// Offer to usable, in milliseconds
    pub connect_ms: Option<f64>,
    /// Audio received from the peer (see [`audio_json`])
    pub audio: Option<Value>,
    /// Video received from the peer (see [`video_json`])
    pub video: Option<Value>,
    /// The echo's data counters (`null` without a data channel)
    pub data: Option<DataJson>,
    /// What we send the peer (see [`bitrate_json`])
    pub bitrate: Value,
    /// Round-trip time in milliseconds
    pub rtt_ms: Option<f64>,
    /// Fraction of the peer's audio packets lost
    pub loss: Option<f64>,
    /// The peer's clock rate against ours, in ppm
    pub clock_drift_ppm: Option<f64>,
    /// The selected ICE candidate pair (see [`candidate_pair_json`])
    pub candidate_pair: Option<Value>,
    /// ICE restarts and full reconnects with the peer (cli.md version 2)
    pub reconnects: Option<u64>,
}

/// The data counters of one remote peer in the stats file
#[derive(Debug, Clone, Serialize)]
pub struct DataJson {
    /// Pings sent to the peer
    pub pings_sent: u64,
    /// Pongs received from the peer
    pub pongs_received: u64,
    /// Every message received from the peer
    pub messages_received: u64,
}

impl StatsFile {
    /// The stats file from an echo report and the core's per-peer statistics (read before
    /// leaving); `data`: whether the data echo ran
    pub fn new(
        peer_id: &PeerId,
        room: String,
        report: &BTreeMap<PeerId, RemoteReport>,
        media: &BTreeMap<PeerId, PeerStats>,
        data: bool,
    ) -> Self {
        let remote = report
            .iter()
            .map(|(peer, r)| {
                let st = media.get(peer);
                let json = RemoteJson {
                    connected: r.connected,
                    connect_ms: r.connect_time.map(millis),
                    audio: st.and_then(audio_json),
                    video: st.and_then(video_json),
                    bitrate: bitrate_json(st),
                    data: data.then_some(DataJson {
                        pings_sent: r.pings_sent,
                        pongs_received: r.pongs_received,
                        messages_received: r.messages_received,
                    }),
                    rtt_ms: r.rtt.map(millis),
                    reconnects: st.map(|s| s.reconnects),
                    loss: st
                        .and_then(|s| s.audio.as_ref())
                        .and_then(|a| a.packets_lost_fraction)
                        .map(f64::from),
                    clock_drift_ppm: st.and_then(|s| s.clock_drift_ppm),
                    candidate_pair: st.and_then(candidate_pair_json),
                };
                (peer.to_string(), json)
            })
            .collect();
        Self {
            peer_id: peer_id.to_string(),
            room,
            remote,
        }
    }
}

/// The `audio` object of the stats file, when audio was negotiated
pub fn audio_json(s: &PeerStats) -> Option<Value> {
    let a = s.audio.as_ref()?;
    let jb = &a.jitter_buffer;
    let mut lat = a.latency_ms.clone();
    lat.sort_by(f64::total_cmp);
    let q = |q: f64| (!lat.is_empty()).then(|| lat[((lat.len() - 1) as f64 * q).round() as usize]);
    Some(serde_json::json!({
        "frames_received": jb.frames_received,
        "frames_decoded": jb.frames_decoded,
        "jitter_buffer_ms": jb.mean_delay().map(millis),
        "concealed_ms": jb.concealed_samples as f64 / 48.0,
        "latency_ms_p50": q(0.5),
        "latency_ms_p95": q(0.95),
    }))
}

/// The `candidate_pair` object of the stats file (cli.md version 2), once ICE selected a
/// pair: `{"local_type": "host|srflx|prflx|relay", "remote_type": ..., "local": "IP:PORT",
/// "remote": "IP:PORT"}`
pub fn candidate_pair_json(s: &PeerStats) -> Option<Value> {
    let p = s.candidate_pair?;
    Some(serde_json::json!({
        "local_type": p.local_type.as_str(),
        "remote_type": p.remote_type.as_str(),
        "local": p.local.to_string(),
        "remote": p.remote.to_string(),
    }))
}

/// The `video` object of the stats file, when video was negotiated: what we received and
/// what we send (`contracts/cli.md` version 2), `null` where not measured
pub fn video_json(s: &PeerStats) -> Option<Value> {
    if s.video.is_none() && s.video_sent.is_none() {
        return None;
    }
    let v = s.video.as_ref();
    let sent = s.video_sent.as_ref();
    Some(serde_json::json!({
        "frames_received": v.map(|v| v.frames_received),
        "frames_decoded": v.map(|v| v.frames_decoded),
        "keyframes": v.map(|v| v.keyframes),
        "frames_sent": sent.map(|v| v.frames_sent),
        "frame_width": sent.and_then(|v| v.frame_width),
        "frame_height": sent.and_then(|v| v.frame_height),
        "quality_limitation": sent.map(|v| v.quality_limitation.as_str()),
    }))
}

/// The `bitrate` object of the stats file (`contracts/cli.md` version 2): the bandwidth
/// estimate towards the peer, the video target and the rates sent, kbit/s; `null` fields
/// (or all of it) where not measured
pub fn bitrate_json(s: Option<&PeerStats>) -> Value {
    let b = s.and_then(|s| s.bitrate).unwrap_or_default();
    serde_json::json!({
        "available_outgoing_kbps": b.available_outgoing_kbps,
        "video_target_kbps": b.video_target_kbps,
        "video_sent_kbps": b.video_sent_kbps,
        "audio_sent_kbps": b.audio_sent_kbps,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the echo behaviour on a joined session until `stop` completes (or the session
/// ends), then returns the report
///
/// `stop` is typically `tokio::time::sleep(duration)`. The caller leaves the session
/// afterwards. If `progress` is given, the report is published there on every tick and
/// whenever a peer connects or leaves.
pub async fn run_echo(
    handle: &SessionHandle,
    events: &mut Events,
    stop: impl Future<Output = ()>,
    progress: Option<&watch::Sender<BTreeMap<PeerId, RemoteReport>>>,
) -> Result<BTreeMap<PeerId, RemoteReport>> {
    run_echo_with(handle, events, stop, progress, |_| {}).await
}

/// [`run_echo`], showing every session event to `tap` first (to record media, say)
///
/// `tap` runs on the event loop: it should hand work off rather than block.
pub async fn run_echo_with(
    handle: &SessionHandle,
    events: &mut Events,
    stop: impl Future<Output = ()>,
    progress: Option<&watch::Sender<BTreeMap<PeerId, RemoteReport>>>,
    mut tap: impl FnMut(&SessionEvent),
) -> Result<BTreeMap<PeerId, RemoteReport>> {
    let mut echo = Echo::new(handle.peer_id().clone());
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(PING_INTERVAL);
    // The first tick is immediate; pings start one interval after joining.
    ticker.tick().await;
    let publish = |echo: &Echo| {
        if let Some(p) = progress {
            p.send_replace(echo.report());
        }
    };
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticker.tick() => {
                if let Ok(stats) = handle.stats().await {
                    echo.record_stats(&stats.peers);
                }
                for (peer, msg) in echo.tick(Instant::now()) {
                    handle.send_data(&peer, msg).await?;
                }
                publish(&echo);
            }
            event = events.recv() => {
                let Some(event) = event else {
                    break;
                };
                tap(&event);
                let notable = matches!(
                    &event,
                    SessionEvent::Mesh(
                        Event::PeerConnected { .. }
                            | Event::PeerLeft { .. }
                            | Event::PeerFailed { .. }
                    )
                );
                if let SessionEvent::SendFailed { peer, error } = &event {
                    tracing::debug!(?peer, %error, "send failed");
                }
                if let SessionEvent::Mesh(event) = &event {
                    for (peer, msg) in echo.handle_event(Instant::now(), event) {
                        handle.send_data(&peer, msg).await?;
                    }
                }
                if notable {
                    publish(&echo);
                }
            }
        }
    }
    if let Ok(stats) = handle.stats().await {
        echo.record_stats(&stats.peers);
    }
    publish(&echo);
    Ok(echo.report())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // reason: tests anchor virtual time at a real instant
mod tests {
    use super::*;

    fn pid(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn data(peer: &str, message: DataMessage) -> Event {
        Event::DataReceived {
            peer: pid(peer),
            label: "meshrtc".into(),
            message,
        }
    }

    fn connected(peer: &str) -> Event {
        Event::PeerConnected {
            peer: pid(peer),
            connect_time: Duration::from_millis(5),
        }
    }

    #[test]
    fn pings_pongs_and_echoes() {
        let now = Instant::now();
        let mut echo = Echo::new(pid("alice"));
        assert!(echo.tick(now).is_empty(), "no ping before a peer connects");
        echo.handle_event(now, &connected("bob"));

        let pings = echo.tick(now);
        assert_eq!(
            pings,
            vec![(
                pid("bob"),
                DataMessage::Text(r#"{"ping":1,"from":"alice"}"#.into())
            )]
        );

        let ping = DataMessage::Text(r#"{"ping": 7, "from": "bob"}"#.into());
        let out = echo.handle_event(now, &data("bob", ping));
        let DataMessage::Text(pong) = &out[0].1 else {
            panic!("text expected");
        };
        let pong: Value = serde_json::from_str(pong).unwrap();
        assert_eq!(pong, serde_json::json!({"pong": 7, "from": "alice"}));

        let pong = DataMessage::Text(r#"{"pong": 1, "from": "bob"}"#.into());
        let later = now + Duration::from_millis(3);
        assert!(echo.handle_event(later, &data("bob", pong)).is_empty());

        for other in [
            DataMessage::Text("hello".into()),
            DataMessage::Text(r#"{"x": 1}"#.into()),
            DataMessage::Binary(vec![1, 2, 3]),
        ] {
            let out = echo.handle_event(now, &data("bob", other.clone()));
            assert_eq!(out, vec![(pid("bob"), other)]);
        }

        let report = &echo.report()[&pid("bob")];
        assert!(report.connected);
        assert_eq!(report.pings_sent, 1);
        assert_eq!(report.pongs_received, 1);
        assert_eq!(report.messages_received, 5);
        assert_eq!(report.rtt, Some(Duration::from_millis(3)));
    }

    #[test]
    fn left_peers_get_no_pings() {
        let now = Instant::now();
        let mut echo = Echo::new(pid("alice"));
        echo.handle_event(now, &connected("bob"));
        echo.handle_event(
            now,
            &Event::PeerLeft {
                peer: pid("bob"),
                reason: meshrtc::LeaveReason::LocalLeave,
            },
        );
        assert!(echo.tick(now).is_empty());
        assert!(echo.report()[&pid("bob")].connected);
        assert!(!echo.report()[&pid("bob")].present);
    }
}
