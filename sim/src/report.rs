//! The run report: per directed pair and stream, with a stable field order
//!
//! Every figure comes from virtual time or from counters, so the same scenario and seed give
//! the same report byte for byte. Times are in milliseconds rounded to the microsecond
//! (seconds for points in the run); a figure that cannot be measured is `null`.

use std::time::Duration;

use meshrtc::signal::PeerId;
use meshrtc::PeerStats;
use serde::Serialize;

use crate::link::LinkStats;
use crate::sim::{FlowId, FlowStats, HostId, Sim};

/// The whole report
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name
    pub scenario: String,
    /// The seed the run used
    pub seed: u64,
    /// Virtual seconds simulated
    pub duration_s: f64,
    /// Every host, in scenario order
    pub hosts: Vec<HostReport>,
    /// Every directed pair of distinct hosts, by sender then receiver
    pub pairs: Vec<PairReport>,
}

/// One host
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    /// Name (and peer id)
    pub name: String,
    /// Clock drift, parts per million
    pub clock_ppm: f64,
    /// Clock offset, milliseconds
    pub clock_offset_ms: f64,
    /// Peers with an open channel at the end
    pub connected_peers: usize,
    /// Inputs the participant rejected
    pub rejected_inputs: usize,
    /// Peers that failed (`PeerFailed` events)
    pub peers_failed: usize,
    /// Peers that left (`PeerLeft` events)
    pub peers_left: usize,
}

/// One directed pair `from → to`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairReport {
    /// Sender
    pub from: String,
    /// Receiver
    pub to: String,
    /// Whether `from` had an open channel to `to` at the end
    pub connected: bool,
    /// Virtual time `from` first saw the connection open, seconds
    pub connected_at_s: Option<f64>,
    /// Connect time `from` reported (offer to channel open, its own clock), milliseconds
    pub connect_ms: Option<f64>,
    /// Round-trip time `from` measured to `to` (its own clock), milliseconds
    pub rtt_ms: Option<f64>,
    /// What `from`'s participant counts about `to` (last sample if the peer went away)
    pub peer: Option<PeerStatsReport>,
    /// The link `from → to`
    pub link: LinkStats,
    /// Measured streams from `from` to `to`, in scenario order
    pub streams: Vec<StreamReport>,
}

/// The core's per-peer statistics ([`meshrtc::PeerStats`])
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerStatsReport {
    /// Whether this side sent the offer
    pub is_offerer: bool,
    /// Data messages written
    pub messages_sent: u64,
    /// Data messages received
    pub messages_received: u64,
    /// Data payload bytes written
    pub bytes_sent: u64,
    /// Data payload bytes received
    pub bytes_received: u64,
    /// Datagrams emitted
    pub datagrams_sent: u64,
    /// Datagrams accepted
    pub datagrams_received: u64,
    /// Messages still queued
    pub queued_messages: usize,
}

/// One measured stream of a pair
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamReport {
    /// Stream name
    pub name: String,
    /// Messages sent
    pub sent: u64,
    /// Distinct messages received
    pub received: u64,
    /// Messages never received, sent longer than the lateness limit before the end
    pub lost: u64,
    /// Messages not received yet, sent within the lateness limit before the end
    pub pending: u64,
    /// Received messages whose one-way delay exceeded the lateness limit
    pub late: u64,
    /// The lateness limit, milliseconds
    pub late_after_ms: f64,
    /// Messages received twice
    pub duplicates: u64,
    /// Messages received after a later one
    pub out_of_order: u64,
    /// Ticks skipped because the channel was not open
    pub not_connected: u64,
    /// Messages the sender's queue refused
    pub send_failed: u64,
    /// One-way delay of received messages
    pub delay_ms: Option<DelayReport>,
    /// The longest time between two consecutive arrivals, milliseconds
    pub longest_gap_ms: Option<f64>,
}

/// A delay distribution (nearest-rank percentiles), milliseconds
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelayReport {
    /// Mean
    pub mean: f64,
    /// Smallest
    pub min: f64,
    /// Median
    pub p50: f64,
    /// 95th percentile
    pub p95: f64,
    /// 99th percentile
    pub p99: f64,
    /// Largest
    pub max: f64,
}

/// One-way delay over time of one directed pair's stream (for plots)
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `from → to stream`
    pub label: String,
    /// (send time in seconds, delay in milliseconds), in send order
    pub points: Vec<(f64, f64)>,
}

/// Milliseconds, rounded to the microsecond
pub fn ms(d: Duration) -> f64 {
    let us = (d.as_nanos() + 500) / 1000;
    us as f64 / 1000.0
}

/// Seconds, rounded to the microsecond
fn s(d: Duration) -> f64 {
    ms(d) / 1000.0
}

/// Nearest-rank percentile of sorted values (`q` in 0..=1)
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The delay distribution of `delays` (`None` if empty)
pub fn delay_report(delays: &[Duration]) -> Option<DelayReport> {
    if delays.is_empty() {
        return None;
    }
    let mut sorted = delays.to_vec();
    sorted.sort_unstable();
    let total: u128 = sorted.iter().map(Duration::as_nanos).sum();
    let mean = Duration::from_nanos((total / sorted.len() as u128) as u64);
    Some(DelayReport {
        mean: ms(mean),
        min: ms(sorted[0]),
        p50: ms(percentile(&sorted, 0.50)),
        p95: ms(percentile(&sorted, 0.95)),
        p99: ms(percentile(&sorted, 0.99)),
        max: ms(sorted[sorted.len() - 1]),
    })
}

/// Builds the report of a finished run
pub fn build(sim: &Sim, scenario: &str, seed: u64, names: &[String], duration: Duration) -> Report {
    let hosts = names
        .iter()
        .enumerate()
        .map(|(i, name)| host_report(sim, HostId(i), name))
        .collect();
    let mut pairs = Vec::new();
    for (a, from) in names.iter().enumerate() {
        for (b, to) in names.iter().enumerate() {
            if a != b {
                pairs.push(pair_report(sim, HostId(a), HostId(b), from, to, duration));
            }
        }
    }
    Report {
        scenario: scenario.to_string(),
        seed,
        duration_s: s(duration),
        hosts,
        pairs,
    }
}

fn host_report(sim: &Sim, host: HostId, name: &str) -> HostReport {
    let p = sim.participant(host);
    let connected_peers = p.peer_ids().filter(|id| p.is_connected(id)).count();
    let (mut failed, mut left) = (0, 0);
    for (_, e) in sim.events(host) {
        match e {
            meshrtc::Event::PeerFailed { .. } => failed += 1,
            meshrtc::Event::PeerLeft { .. } => left += 1,
            _ => {}
        }
    }
    let clock = sim.clock(host);
    HostReport {
        name: name.to_string(),
        clock_ppm: clock.ppm(),
        clock_offset_ms: clock.offset_ns() as f64 / 1e6,
        connected_peers,
        rejected_inputs: sim.errors(host).len(),
        peers_failed: failed,
        peers_left: left,
    }
}

fn pair_report(
    sim: &Sim,
    a: HostId,
    b: HostId,
    from: &str,
    to: &str,
    duration: Duration,
) -> PairReport {
    let peer = PeerId::new(to).ok();
    let stats = peer.as_ref().and_then(|p| sim.peer_stats(a, p));
    let connect = peer.as_ref().and_then(|p| sim.connect_info(a, p));
    let connected = peer
        .as_ref()
        .is_some_and(|p| sim.participant(a).is_connected(p));
    let streams = (0..sim.flow_count())
        .map(FlowId)
        .filter(|&f| {
            let c = sim.flow_config(f);
            c.from == a && c.to == b
        })
        .map(|f| stream_report(sim, f, duration))
        .collect();
    PairReport {
        from: from.to_string(),
        to: to.to_string(),
        connected,
        connected_at_s: connect.map(|c| s(c.at)),
        connect_ms: connect.map(|c| ms(c.connect_time)),
        rtt_ms: stats.as_ref().and_then(|s| s.rtt).map(ms),
        peer: stats.as_ref().map(peer_report),
        link: sim.link_stats(a, b),
        streams,
    }
}

fn peer_report(s: &PeerStats) -> PeerStatsReport {
    PeerStatsReport {
        is_offerer: s.is_offerer,
        messages_sent: s.messages_sent,
        messages_received: s.messages_received,
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        datagrams_sent: s.datagrams_sent,
        datagrams_received: s.datagrams_received,
        queued_messages: s.queued_messages,
    }
}

fn stream_report(sim: &Sim, f: FlowId, end: Duration) -> StreamReport {
    let config = sim.flow_config(f);
    let st: &FlowStats = sim.flow_stats(f);
    let late_after = config.late_after;
    let delays: Vec<Duration> = st.samples.iter().map(|x| x.delay).collect();
    let late = delays.iter().filter(|&&d| d > late_after).count() as u64;
    let mut received = vec![false; st.sent_at.len()];
    for x in &st.samples {
        if let Some(r) = received.get_mut(x.seq as usize) {
            *r = true;
        }
    }
    let (mut lost, mut pending) = (0, 0);
    for (seq, &sent) in st.sent_at.iter().enumerate() {
        if received[seq] {
            continue;
        }
        if sent + late_after < end {
            lost += 1;
        } else {
            pending += 1;
        }
    }
    let longest_gap = st
        .samples
        .windows(2)
        .map(|w| (w[1].sent_at + w[1].delay).saturating_sub(w[0].sent_at + w[0].delay))
        .max();
    StreamReport {
        name: config.name.clone(),
        sent: st.sent,
        received: st.received,
        lost,
        pending,
        late,
        late_after_ms: ms(late_after),
        duplicates: st.duplicates,
        out_of_order: st.out_of_order,
        not_connected: st.not_connected,
        send_failed: st.send_failed,
        delay_ms: delay_report(&delays),
        longest_gap_ms: longest_gap.map(ms),
    }
}

/// One-way delay over time per directed pair and stream, for plots
pub fn series(sim: &Sim, names: &[String]) -> Vec<Series> {
    (0..sim.flow_count())
        .map(FlowId)
        .map(|f| {
            let c = sim.flow_config(f);
            let points = sim
                .flow_stats(f)
                .samples
                .iter()
                .map(|x| (s(x.sent_at), ms(x.delay)))
                .collect();
            Series {
                label: format!("{} → {} {}", names[c.from.0], names[c.to.0], c.name),
                points,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_the_microsecond() {
        assert_eq!(ms(Duration::from_nanos(20_123_499)), 20.123);
        assert_eq!(ms(Duration::from_nanos(20_123_500)), 20.124);
        assert_eq!(ms(Duration::from_millis(7)), 7.0);
        assert_eq!(ms(Duration::ZERO), 0.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.95), Duration::from_millis(95));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&v[..1], 0.5), Duration::from_millis(1));
    }
}
