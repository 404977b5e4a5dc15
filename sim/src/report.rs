//! The run report: per directed pair and stream, with a stable field order
//!
//! Every figure comes from virtual time or from counters, so the same scenario and seed give
//! the same report byte for byte. Times are in milliseconds rounded to the microsecond
//! (seconds for points in the run); a figure that cannot be measured is `null`.

use std::time::Duration;

use meshrtc::session::Event;
use meshrtc::signal::PeerId;
use meshrtc::PeerStats;
use serde::Serialize;

use crate::link::LinkStats;
use crate::media::{MediaSource, MediaStreamId};
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
    pub rejected_inputs: u64,
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
    /// Media streams `from` sends, as `to` played them, in scenario order
    pub media: Vec<MediaReport>,
}

/// One media stream of a pair: what the receiver played of what the sender captured
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaReport {
    /// Stream name
    pub name: String,
    /// `audio` or `video`
    pub kind: String,
    /// The codec the sender prefers (`opus`, `h264`, `vp8`, `vp9`; `synthetic` for synthetic
    /// frames)
    pub codec: String,
    /// Frames handed to the sender's participant while the pair was connected
    pub sent: u64,
    /// Distinct frames played out (audio) or rendered (video)
    pub played: u64,
    /// Frames sent and never played, captured longer than the lateness limit before the end
    pub lost: u64,
    /// Frames sent and not played yet, captured within the lateness limit before the end
    pub pending: u64,
    /// Played frames whose capture-to-playout delay exceeded the lateness limit
    pub late: u64,
    /// The lateness limit, milliseconds
    pub late_after_ms: f64,
    /// Captures while the pair was not connected (not sent to this receiver)
    pub not_connected: u64,
    /// Frames the sender's participant refused (for the whole stream)
    pub send_failed: u64,
    /// Video frames rendered twice
    pub duplicates: u64,
    /// Video frames rendered after a later one
    pub out_of_order: u64,
    /// Audio playout chunks (10 ms) that were concealment, in whole or in part
    pub concealed_chunks: u64,
    /// Playout events that matched no captured frame (0 unless something is wrong)
    pub unmatched: u64,
    /// Capture-to-playout delay of played frames (virtual time)
    pub delay_ms: Option<DelayReport>,
    /// The longest time without playout between the first and the last, milliseconds
    pub longest_gap_ms: Option<f64>,
    /// What the receiver's core reports about this sender's media
    pub receiver: Option<ReceiverReport>,
}

/// The receiver's core statistics about one sender's media ([`meshrtc::PeerStats`])
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceiverReport {
    /// Estimated drift of the sender's clock against the receiver's, from packet arrivals,
    /// ppm; `null` while smaller than its uncertainty
    pub clock_drift_ppm: Option<f64>,
    /// Half the 95% interval of that estimate, ppm
    pub clock_drift_uncertainty_ppm: Option<f64>,
    /// Estimated drift of the sender's clock from its RTCP sender reports (its wall clock
    /// against our arrival times), ppm; `null` while smaller than its uncertainty
    pub report_clock_drift_ppm: Option<f64>,
    /// The truth: the sender's clock rate over the receiver's, less one, ppm
    pub true_clock_drift_ppm: f64,
    /// Audio receive statistics (audio streams)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioReceiverReport>,
    /// Video receive statistics (video streams)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoReceiverReport>,
}

/// The core's audio receive statistics ([`meshrtc::media::AudioStats`])
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioReceiverReport {
    /// Frames that reached the jitter buffer
    pub frames_received: u64,
    /// Frames decoded
    pub frames_decoded: u64,
    /// Frames never received by the time they were due (concealed)
    pub frames_lost: u64,
    /// Frames that arrived after their time had been played
    pub frames_late: u64,
    /// Frames dropped (buffer full, duplicates)
    pub frames_discarded: u64,
    /// Frames that failed to decode
    pub decode_errors: u64,
    /// Frames missing when due, decoded from the next frame's redundancy (Opus in-band FEC)
    pub frames_recovered: u64,
    /// Audio played out, concealment included, milliseconds (W3C `totalSamplesReceived`)
    pub played_ms: f64,
    /// Audio synthesised by concealment, milliseconds
    pub concealed_ms: f64,
    /// `concealed_ms / played_ms` (W3C `concealedSamples / totalSamplesReceived`)
    pub concealed_fraction: Option<f64>,
    /// Audio inserted to slow playout down, milliseconds
    pub inserted_ms: f64,
    /// Audio removed to speed playout up, milliseconds
    pub removed_ms: f64,
    /// Mean time from a frame's arrival to its decoding per decoded sample (W3C
    /// `jitterBufferDelay / jitterBufferEmittedCount`), milliseconds, on the receiver's clock
    pub jitter_buffer_delay_ms: Option<f64>,
    /// Mean time from a frame's arrival to the playout of each of its samples per played
    /// sample (concealment counting zero), milliseconds
    pub playout_delay_ms: Option<f64>,
    /// Mean target delay over emitted samples, milliseconds
    pub jitter_buffer_target_delay_ms: Option<f64>,
    /// The target delay at the end, milliseconds
    pub target_delay_ms: f64,
    /// Fraction of RTP packets lost on the way (str0m's receiver statistics)
    pub packets_lost_fraction: Option<f64>,
    /// RTP interarrival jitter, milliseconds
    pub jitter_ms: Option<f64>,
    /// RTCP sender reports received
    pub sender_reports: u64,
    /// Extra delay lip-sync adds to audio at the end, milliseconds
    pub sync_delay_ms: f64,
}

/// The core's video receive statistics ([`meshrtc::media::VideoStats`])
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoReceiverReport {
    /// The codec received
    pub codec: Option<String>,
    /// Encoded frames received
    pub frames_received: u64,
    /// Frames decoded
    pub frames_decoded: u64,
    /// Frames handed to the application
    pub frames_rendered: u64,
    /// Keyframes received
    pub keyframes: u64,
    /// Frames that failed to decode
    pub decode_errors: u64,
    /// Keyframe requests (PLI) sent
    pub plis_sent: u64,
    /// Audio/video offset of the last frame rendered (+ = video late), milliseconds
    pub av_offset_ms: Option<f64>,
    /// RTCP sender reports received
    pub sender_reports: u64,
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
    /// The selected candidate pair's types, `local/remote` (`host/srflx`, `relay/prflx`…)
    pub candidate_pair: Option<String>,
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

/// A figure rounded to three decimals (microseconds for milliseconds), never `-0`
fn r3(v: f64) -> f64 {
    // Adding +0 turns -0 into +0, so a figure that rounds to nothing prints as `0.0`.
    (v * 1000.0).round() / 1000.0 + 0.0
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

/// Input the core dropped as the remote side's fault
fn rejected(d: meshrtc::DropCounters) -> u64 {
    d.malformed_datagrams + d.unroutable_datagrams + d.bad_signals + d.bad_candidates
}

fn host_report(sim: &Sim, host: HostId, name: &str) -> HostReport {
    let p = sim.participant(host);
    let connected_peers = p.peer_ids().filter(|id| p.is_connected(id)).count();
    let (mut failed, mut left) = (0, 0);
    for (_, e) in sim.events(host) {
        match e {
            Event::Mesh(meshrtc::Event::PeerFailed { .. }) => failed += 1,
            Event::Mesh(meshrtc::Event::PeerLeft { .. }) => left += 1,
            _ => {}
        }
    }
    let clock = sim.clock(host);
    HostReport {
        name: name.to_string(),
        clock_ppm: clock.ppm(),
        clock_offset_ms: clock.offset_ns() as f64 / 1e6,
        connected_peers,
        rejected_inputs: rejected(p.drop_counters()) + sim.errors(host).len() as u64,
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
        media: (0..sim.media_stream_count())
            .map(MediaStreamId)
            .filter(|&m| sim.media_stream_config(m).from == a)
            .map(|m| media_report(sim, m, b, duration))
            .collect(),
    }
}

fn media_report(sim: &Sim, id: MediaStreamId, to: HostId, end: Duration) -> MediaReport {
    let config = sim.media_stream_config(id);
    let from = config.from;
    let audio = matches!(config.source, MediaSource::Audio { .. });
    let codec = if sim.host_config(from).media.synthetic {
        "synthetic".to_string()
    } else if audio {
        "opus".to_string()
    } else {
        sim.host_config(from)
            .media
            .video_codecs
            .first()
            .map_or("none", |c| c.name())
            .to_string()
    };
    let st = sim.media_stats(id, to).cloned().unwrap_or_default();
    let (lost, pending) = sim.media_unplayed(id, to, end);
    let delays: Vec<Duration> = st.samples.iter().map(|x| x.delay).collect();
    let receiver = sim
        .peer_id(from)
        .and_then(|p| sim.peer_stats(to, p))
        .map(|p| {
            let (ps, pr) = (sim.clock(from).ppb() as f64, sim.clock(to).ppb() as f64);
            ReceiverReport {
                clock_drift_ppm: p.clock_drift_ppm.map(r3),
                clock_drift_uncertainty_ppm: p.clock_drift_uncertainty_ppm.map(r3),
                report_clock_drift_ppm: p.report_clock_drift_ppm.map(r3),
                true_clock_drift_ppm: r3(((1e9 + ps) / (1e9 + pr) - 1.0) * 1e6),
                audio: p.audio.as_ref().filter(|_| audio).map(audio_report),
                video: p.video.as_ref().filter(|_| !audio).map(video_report),
            }
        });
    MediaReport {
        name: config.name.clone(),
        kind: config.source.kind().to_string(),
        codec,
        sent: st.sent,
        played: st.played,
        lost,
        pending,
        late: st.late,
        late_after_ms: ms(config.late_after),
        not_connected: st.not_connected,
        send_failed: sim.media_send_failed(id),
        duplicates: st.duplicates,
        out_of_order: st.out_of_order,
        concealed_chunks: st.concealed_chunks,
        unmatched: st.unmatched,
        delay_ms: delay_report(&delays),
        longest_gap_ms: st.longest_gap.map(ms),
        receiver,
    }
}

fn audio_report(a: &meshrtc::media::AudioStats) -> AudioReceiverReport {
    let jb = &a.jitter_buffer;
    let rate = f64::from(meshrtc::media::AUDIO_RATE) / 1000.0;
    let per_emitted = |sum: f64| {
        (jb.jitter_buffer_emitted_count > 0)
            .then(|| r3(sum / jb.jitter_buffer_emitted_count as f64 * 1000.0))
    };
    AudioReceiverReport {
        frames_received: jb.frames_received,
        frames_decoded: jb.frames_decoded,
        frames_lost: jb.frames_lost,
        frames_late: jb.frames_late,
        frames_discarded: jb.frames_discarded,
        decode_errors: jb.decode_errors,
        frames_recovered: jb.frames_recovered,
        played_ms: r3(jb.total_samples_received as f64 / rate),
        concealed_ms: r3(jb.concealed_samples as f64 / rate),
        concealed_fraction: jb.concealed_fraction().map(|f| (f * 1e6).round() / 1e6),
        inserted_ms: r3(jb.inserted_samples_for_deceleration as f64 / rate),
        removed_ms: r3(jb.removed_samples_for_acceleration as f64 / rate),
        jitter_buffer_delay_ms: per_emitted(jb.jitter_buffer_delay),
        playout_delay_ms: jb
            .mean_playout_delay()
            .map(|d| r3(d.as_secs_f64() * 1000.0)),
        jitter_buffer_target_delay_ms: per_emitted(jb.jitter_buffer_target_delay),
        target_delay_ms: r3(jb.target_delay * 1000.0),
        packets_lost_fraction: a
            .packets_lost_fraction
            .map(|f| (f64::from(f) * 1e6).round() / 1e6),
        jitter_ms: a.jitter.map(|j| r3(f64::from(j) / rate)),
        sender_reports: a.sender_reports,
        sync_delay_ms: r3(a.sync_delay_ms),
    }
}

fn video_report(v: &meshrtc::media::VideoStats) -> VideoReceiverReport {
    VideoReceiverReport {
        codec: v.codec.map(|c| c.name().to_string()),
        frames_received: v.frames_received,
        frames_decoded: v.frames_decoded,
        frames_rendered: v.frames_rendered,
        keyframes: v.keyframes,
        decode_errors: v.decode_errors,
        plis_sent: v.plis_sent,
        av_offset_ms: v.av_offset_ms.map(r3),
        sender_reports: v.sender_reports,
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
        candidate_pair: s
            .candidate_pair
            .as_ref()
            .map(|p| format!("{}/{}", p.local_type.as_str(), p.remote_type.as_str())),
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

/// One-way delay over time per directed pair and stream (data flows, then media streams'
/// capture-to-playout delay), for plots
pub fn series(sim: &Sim, names: &[String]) -> Vec<Series> {
    let mut out = flow_series(sim, names);
    for id in (0..sim.media_stream_count()).map(MediaStreamId) {
        let c = sim.media_stream_config(id);
        for (to, name) in names.iter().enumerate() {
            let Some(st) = sim.media_stats(id, HostId(to)) else {
                continue;
            };
            if st.samples.is_empty() {
                continue;
            }
            let mut points: Vec<(f64, f64)> = st
                .samples
                .iter()
                .map(|x| (s(x.captured_at), ms(x.delay)))
                .collect();
            // In capture order, as the data flows are in send order.
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            out.push(Series {
                label: format!("{} → {name} {}", names[c.from.0], c.name),
                points,
            });
        }
    }
    out
}

fn flow_series(sim: &Sim, names: &[String]) -> Vec<Series> {
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
