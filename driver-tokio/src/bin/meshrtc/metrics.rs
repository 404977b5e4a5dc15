//! `meshrtc peer --metrics ADDR`: the session's per-peer figures as Prometheus text at
//! `http://ADDR/metrics`, through `prometheus-client` (as `meshrtc signal --metrics`)
//!
//! Every scrape asks the running session for a fresh snapshot ([`SessionHandle::stats`]), so
//! the figures are as current as the scrape. Remote peers are told apart by the `remote`
//! label. A figure that is not measured (no RTT yet, no audio negotiated) is left out, never
//! given a made-up value.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshrtc::signal::PeerId;
use meshrtc::MediaKind;
use meshrtc_tokio::{Event as SessionEvent, SessionHandle, Stats};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Largest request head read
const MAX_HEAD: usize = 8 * 1024;

/// The remote peers in the room now, from the session's events (the statistics also hold
/// the last figures of peers that left)
#[derive(Debug, Clone, Default)]
pub(crate) struct Presence(Arc<Mutex<BTreeSet<PeerId>>>);

impl Presence {
    /// Follows one session event
    pub(crate) fn on_event(&self, event: &SessionEvent) {
        let SessionEvent::Mesh(event) = event else {
            return;
        };
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            meshrtc::Event::PeerConnected { peer, .. }
            | meshrtc::Event::PeerReconnected { peer, .. } => {
                set.insert(peer.clone());
            }
            meshrtc::Event::PeerLeft { peer, .. } | meshrtc::Event::PeerFailed { peer, .. } => {
                set.remove(peer);
            }
            _ => {}
        }
    }

    fn contains(&self, peer: &PeerId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }
}

/// Binds `addr` before joining, so that a port in use fails at once
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Serves `/metrics` from `handle` on `listener` until the process ends
pub(crate) fn serve(listener: TcpListener, handle: SessionHandle, presence: Presence) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (handle, presence) = (handle.clone(), presence.clone());
            tokio::spawn(async move {
                if tokio::time::timeout(Duration::from_secs(10), answer(stream, &handle, &presence))
                    .await
                    .is_err()
                {
                    tracing::debug!("metrics request timed out");
                }
            });
        }
    });
}

async fn answer(mut stream: TcpStream, handle: &SessionHandle, presence: &Presence) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too large\n",
            )
            .await;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" || path != "/metrics" {
        return respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await;
    }
    match handle.stats().await {
        Ok(stats) => {
            let text = render(&stats, |p| presence.contains(p));
            respond(&mut stream, "200 OK", prometheus_text::CONTENT_TYPE, &text).await;
        }
        Err(_) => {
            respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                "session ended\n",
            )
            .await
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One family per figure; a sample per remote peer (and per direction where it has one)
struct Families {
    connected: Family<Labels, Gauge>,
    rtt: Family<Labels, FloatGauge>,
    loss: Family<Labels, FloatGauge>,
    jitter_buffer: Family<Labels, FloatGauge>,
    concealed: Family<Labels, Counter<f64, AtomicU64>>,
    audio_frames: Family<Labels, Counter>,
    video_frames: Family<Labels, Counter>,
    keyframes: Family<Labels, Counter>,
    reconnects: Family<Labels, Counter>,
    data_bytes: Family<Labels, Counter>,
    messages: Family<Labels, Counter>,
    datagrams: Family<Labels, Counter>,
    drift: Family<Labels, FloatGauge>,
    latency: Family<Labels, FloatGauge>,
    media_bytes: Family<Labels, Counter>,
    media_packets: Family<Labels, Counter>,
    media_frames: Family<Labels, Counter>,
    media_received_bitrate: Family<Labels, Gauge>,
    available_outgoing: Family<Labels, Gauge>,
    video_target: Family<Labels, Gauge>,
}

fn labels(remote: &str) -> Labels {
    vec![("remote".to_string(), remote.to_string())]
}

/// `remote`, `kind` (`audio`, `video`) and, when given, `direction` (`in`, `out`)
fn labels_kind(remote: &str, kind: MediaKind, direction: Option<&str>) -> Labels {
    let mut l = vec![
        ("remote".to_string(), remote.to_string()),
        ("kind".to_string(), kind.to_string()),
    ];
    if let Some(d) = direction {
        l.push(("direction".to_string(), d.to_string()));
    }
    l
}

fn labels_dir(remote: &str, direction: &str) -> Labels {
    vec![
        ("remote".to_string(), remote.to_string()),
        ("direction".to_string(), direction.to_string()),
    ]
}

/// The snapshot as Prometheus text (format 0.0.4)
///
/// `present` says whether a remote peer is in the room now; peers that left keep their
/// counters but are not `connected`.
pub(crate) fn render(stats: &Stats, present: impl Fn(&PeerId) -> bool) -> String {
    let f = Families {
        connected: Family::default(),
        rtt: Family::default(),
        loss: Family::default(),
        jitter_buffer: Family::default(),
        concealed: Family::default(),
        audio_frames: Family::default(),
        video_frames: Family::default(),
        keyframes: Family::default(),
        reconnects: Family::default(),
        data_bytes: Family::default(),
        messages: Family::default(),
        datagrams: Family::default(),
        drift: Family::default(),
        latency: Family::default(),
        media_bytes: Family::default(),
        media_packets: Family::default(),
        media_frames: Family::default(),
        media_received_bitrate: Family::default(),
        available_outgoing: Family::default(),
        video_target: Family::default(),
    };
    let mut connected_peers = 0;
    for (id, s) in &stats.peers {
        let peer = id.as_str();
        let l = labels(peer);
        let connected = s.connected && present(id);
        connected_peers += usize::from(connected);
        f.connected.get_or_create(&l).set(i64::from(connected));
        if let Some(rtt) = s.rtt {
            f.rtt.get_or_create(&l).set(rtt.as_secs_f64());
        }
        f.reconnects.get_or_create(&l).inc_by(s.reconnects);
        for (dir, bytes, msgs, grams) in [
            (
                "in",
                s.bytes_received,
                s.messages_received,
                s.datagrams_received,
            ),
            ("out", s.bytes_sent, s.messages_sent, s.datagrams_sent),
        ] {
            let ld = labels_dir(peer, dir);
            f.data_bytes.get_or_create(&ld).inc_by(bytes);
            f.messages.get_or_create(&ld).inc_by(msgs);
            f.datagrams.get_or_create(&ld).inc_by(grams);
        }
        if let Some(d) = s.clock_drift_ppm {
            f.drift.get_or_create(&l).set(d);
        }
        if let Some(a) = &s.audio {
            let jb = &a.jitter_buffer;
            if let Some(loss) = a.packets_lost_fraction {
                f.loss.get_or_create(&l).set(f64::from(loss));
            }
            if let Some(d) = jb.mean_delay() {
                f.jitter_buffer.get_or_create(&l).set(d.as_secs_f64());
            }
            f.concealed
                .get_or_create(&l)
                .inc_by(jb.concealed_samples as f64 / 48_000.0);
            f.audio_frames.get_or_create(&l).inc_by(jb.frames_decoded);
            if let Some(last) = a.latency_ms.last() {
                f.latency.get_or_create(&l).set(last / 1000.0);
            }
        }
        if let Some(b) = &s.bitrate {
            let bps = |kbps: f64| (kbps * 1000.0).round() as i64;
            if let Some(k) = b.available_outgoing_kbps {
                f.available_outgoing.get_or_create(&l).set(bps(k));
            }
            if let Some(k) = b.video_target_kbps {
                f.video_target.get_or_create(&l).set(bps(k));
            }
        }
        if let Some(v) = &s.video {
            f.video_frames.get_or_create(&l).inc_by(v.frames_decoded);
            f.keyframes.get_or_create(&l).inc_by(v.keyframes);
        }
        let t = &s.media_traffic;
        for (kind, negotiated, received_bps) in [
            (MediaKind::Audio, s.audio.is_some(), t.audio_received_bps),
            (MediaKind::Video, s.video.is_some(), t.video_received_bps),
        ] {
            let (sent, received) = (t.count(kind, true), t.count(kind, false));
            if !negotiated && sent.bytes == 0 && received.bytes == 0 {
                continue;
            }
            for (dir, c) in [("in", received), ("out", sent)] {
                let lk = labels_kind(peer, kind, Some(dir));
                f.media_bytes.get_or_create(&lk).inc_by(c.bytes);
                f.media_packets.get_or_create(&lk).inc_by(c.packets);
                f.media_frames.get_or_create(&lk).inc_by(c.frames);
            }
            if let Some(bps) = received_bps {
                f.media_received_bitrate
                    .get_or_create(&labels_kind(peer, kind, None))
                    .set(i64::try_from(bps).unwrap_or(i64::MAX));
            }
        }
    }
    let mut r = Registry::with_prefix("meshrtc_peer");
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(connected_peers).unwrap_or(i64::MAX));
    r.register(
        "remotes_connected",
        "Remote peers with a usable connection",
        g,
    );
    let g: Gauge = Gauge::default();
    g.set(i64::from(stats.signaling_connected));
    r.register(
        "signaling_connected",
        "Whether the signaling connection is up",
        g,
    );
    for (name, help, value) in [
        (
            "signaling_losses",
            "Times the signaling connection was lost",
            stats.signaling_losses,
        ),
        (
            "signaling_restores",
            "Times a re-announce was accepted after a loss",
            stats.signaling_restores,
        ),
        (
            "media_events_dropped",
            "Media events dropped because the application did not read them in time",
            stats.media_events_dropped,
        ),
    ] {
        let c: Counter = Counter::default();
        c.inc_by(value);
        r.register(name, help, c);
    }
    r.register(
        "connected",
        "Whether the connection to the remote peer is usable",
        f.connected,
    );
    r.register(
        "rtt_seconds",
        "Round-trip time to the remote peer (RTCP/STUN)",
        f.rtt,
    );
    r.register(
        "audio_loss_ratio",
        "Fraction of the remote peer's audio packets lost on the way here",
        f.loss,
    );
    r.register(
        "jitter_buffer_seconds",
        "Mean time a decoded audio sample waited in the jitter buffer",
        f.jitter_buffer,
    );
    r.register(
        "audio_concealed_seconds",
        "Audio synthesised by loss concealment",
        f.concealed,
    );
    r.register(
        "audio_frames_decoded",
        "Audio frames decoded from the remote peer",
        f.audio_frames,
    );
    r.register(
        "audio_latency_seconds",
        "Capture-to-playout latency of the last measured audio frame",
        f.latency,
    );
    r.register(
        "video_frames_decoded",
        "Video frames decoded from the remote peer",
        f.video_frames,
    );
    r.register(
        "video_keyframes",
        "Video keyframes received from the remote peer",
        f.keyframes,
    );
    r.register(
        "reconnects",
        "ICE restarts and full reconnects with the remote peer",
        f.reconnects,
    );
    r.register(
        "data_bytes",
        "Data channel payload bytes (rate() of it is the data bitrate)",
        f.data_bytes,
    );
    r.register("data_messages", "Data channel messages", f.messages);
    r.register(
        "media_bytes",
        "Encoded media bytes (RTP payloads, no headers or retransmissions) by kind and direction; rate() of it is the media bitrate",
        f.media_bytes,
    );
    r.register(
        "media_packets",
        "RTP media packets by kind and direction (sent: as last reported, once a second, retransmissions included)",
        f.media_packets,
    );
    r.register(
        "media_frames",
        "Encoded media frames by kind and direction",
        f.media_frames,
    );
    r.register(
        "media_received_bits_per_second",
        "Received media bitrate (payload bits) over the last whole second",
        f.media_received_bitrate,
    );
    r.register(
        "datagrams",
        "UDP datagrams of the connection (media, data and ICE)",
        f.datagrams,
    );
    r.register(
        "clock_drift_ppm",
        "The remote sender's media clock against ours, in ppm",
        f.drift,
    );
    r.register(
        "available_outgoing_bits_per_second",
        "The bandwidth estimate of the path to the peer (with rate adaptation on)",
        f.available_outgoing,
    );
    r.register(
        "video_target_bits_per_second",
        "The target of the video encoding the peer receives (with rate adaptation on)",
        f.video_target,
    );
    let mut text = String::new();
    // Cannot fail: writing to a String.
    prometheus_text::encode(&mut text, &r).expect("metrics encode into a string");
    text
}
