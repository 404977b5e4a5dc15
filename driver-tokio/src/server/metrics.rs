//! Prometheus text (format 0.0.4) of a running server, through `prometheus-client`

use std::sync::atomic::{AtomicU64, Ordering};

use meshrtc::signal::server::ServerStats;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s text
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What the transport counts, beside the logic's [`ServerStats`]
#[derive(Debug, Default)]
pub(crate) struct DriverCounters {
    /// TCP connections accepted (before any cap)
    pub(crate) accepted: AtomicU64,
    /// Refused: the server holds `max_connections`
    pub(crate) refused_total: AtomicU64,
    /// Refused: the source address holds `max_connections_per_ip`
    pub(crate) refused_ip: AtomicU64,
    /// WebSocket handshakes refused for their `Origin`
    pub(crate) refused_origin: AtomicU64,
    /// Requests that were not HTTP, too large, or timed out before their head was read
    pub(crate) bad_requests: AtomicU64,
    /// Plain HTTP requests answered (page, health, errors)
    pub(crate) http_requests: AtomicU64,
    /// Connections dropped because a write made no progress for `write_timeout`
    pub(crate) write_stalls: AtomicU64,
    /// Connections dropped for not answering pings
    pub(crate) idle_timeouts: AtomicU64,
}

impl DriverCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The logic's side of the metrics, read from its task
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) rooms: usize,
    pub(crate) peers: usize,
    pub(crate) held: usize,
    pub(crate) connections: usize,
    pub(crate) stats: ServerStats,
}

type Labels = Vec<(String, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: usize) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn family(registry: &mut Registry, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let f: Family<Labels, Counter> = Family::default();
    for (v, n) in values {
        f.get_or_create(&vec![(label.to_string(), (*v).to_string())])
            .inc_by(*n);
    }
    registry.register(name, help, f);
}

/// Everything as Prometheus text
pub(crate) fn render(s: &Snapshot, d: &DriverCounters, tasks: usize) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut r = Registry::with_prefix("meshrtc_signal");
    gauge(&mut r, "rooms", "Rooms with at least one peer", s.rooms);
    gauge(
        &mut r,
        "peers",
        "Peers in rooms, held places included",
        s.peers,
    );
    gauge(
        &mut r,
        "peers_held",
        "Places held for a dropped connection",
        s.held,
    );
    gauge(
        &mut r,
        "connections",
        "Open WebSocket connections",
        s.connections,
    );
    gauge(
        &mut r,
        "connection_tasks",
        "Connection tasks, handshakes and HTTP included",
        tasks,
    );
    let st = &s.stats;
    family(
        &mut r,
        "frames",
        "WebSocket frames",
        "direction",
        &[("in", st.frames_in), ("out", st.frames_out)],
    );
    family(
        &mut r,
        "bytes",
        "Bytes of WebSocket frames",
        "direction",
        &[("in", st.bytes_in), ("out", st.bytes_out)],
    );
    let codes: Vec<(String, u64)> = st
        .errors
        .iter()
        .map(|(code, n)| (code.to_string(), *n))
        .collect();
    let codes: Vec<(&str, u64)> = codes.iter().map(|(c, n)| (c.as_str(), *n)).collect();
    family(
        &mut r,
        "errors",
        "Error responses by JSON-RPC code",
        "code",
        &codes,
    );
    counter(
        &mut r,
        "rate_limited",
        "Frames refused with -32005",
        st.rate_limited,
    );
    counter(
        &mut r,
        "relays_refused",
        "Relays refused to their sender (rate, share, target not keeping up)",
        st.relays_refused,
    );
    family(
        &mut r,
        "evicted",
        "Connections dropped by the server",
        "reason",
        &[
            ("unread_queue", st.evicted),
            ("write_stall", load(&d.write_stalls)),
            ("idle", load(&d.idle_timeouts)),
            ("no_announce", st.announce_timeouts),
        ],
    );
    family(
        &mut r,
        "refused",
        "Connections refused before the WebSocket handshake",
        "reason",
        &[
            ("max_connections", load(&d.refused_total)),
            ("max_connections_per_ip", load(&d.refused_ip)),
            ("origin", load(&d.refused_origin)),
            ("bad_request", load(&d.bad_requests)),
        ],
    );
    counter(
        &mut r,
        "accepted",
        "TCP connections accepted",
        load(&d.accepted),
    );
    counter(
        &mut r,
        "http_requests",
        "Plain HTTP requests answered",
        load(&d.http_requests),
    );
    counter(
        &mut r,
        "held",
        "Places held after a dropped connection",
        st.held,
    );
    counter(
        &mut r,
        "resumed",
        "Places taken back with a resume token",
        st.resumed,
    );
    counter(
        &mut r,
        "expired",
        "Held places ended (grace over or too much held)",
        st.expired,
    );
    counter(
        &mut r,
        "degraded_results",
        "Announce results sent with metadata left out to fit",
        st.degraded_results,
    );
    let mut text = String::new();
    // Cannot fail: writing to a String.
    prometheus_text::encode(&mut text, &r).expect("metrics encode into a string");
    text
}
