//! Rates over time: what each directed pair's link carried, its capacity, and what the
//! sender's core estimated and aimed for, sampled at a fixed interval
//!
//! The sending rate is the link's offered bytes (datagram plus 28 bytes of IPv4/UDP
//! headers, as charged at the bottleneck) over each interval, so it counts everything the
//! sender's participant emitted towards that peer: media, retransmissions, padding and
//! probes, RTCP, data.

use std::collections::BTreeMap;
use std::time::Duration;

use meshrtc::PeerStats;

use crate::link::{LinkStats, Rate};

/// One sample of one directed pair
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSample {
    /// End of the interval (virtual time since the start)
    pub at: Duration,
    /// Bytes offered to the link over the interval, as kbit/s
    pub sent_kbps: f64,
    /// Bytes delivered by the link over the interval, as kbit/s
    pub delivered_kbps: f64,
    /// The link's bottleneck rate at the end of the interval (`None`: unlimited or a trace)
    pub capacity_kbps: Option<f64>,
    /// The sender's bandwidth estimate for the path
    pub estimate_kbps: Option<f64>,
    /// The target of the video encoding the receiver gets
    pub video_target_kbps: Option<f64>,
    /// Video the sender's core counted as sent to the receiver (its 1 s meter)
    pub video_sent_kbps: Option<f64>,
    /// Width of the video the receiver gets
    pub frame_width: Option<u32>,
}

/// The samples of every pair, and the counters of the last sample
#[derive(Debug, Default)]
pub(crate) struct RateLog {
    last: BTreeMap<(usize, usize), (u64, u64)>,
    samples: BTreeMap<(usize, usize), Vec<RateSample>>,
}

impl RateLog {
    /// Records one pair at `at`, `interval` after its previous sample
    pub(crate) fn record(
        &mut self,
        pair: (usize, usize),
        at: Duration,
        interval: Duration,
        link: Option<(&LinkStats, &Rate)>,
        sender: Option<&PeerStats>,
    ) {
        let (offered, delivered, capacity) = match link {
            Some((s, rate)) => (
                s.bytes_offered,
                s.bytes_delivered,
                match rate {
                    Rate::Constant { bits_per_sec } => Some(*bits_per_sec as f64 / 1000.0),
                    _ => None,
                },
            ),
            None => (0, 0, None),
        };
        let (o0, d0) = self
            .last
            .insert(pair, (offered, delivered))
            .unwrap_or((0, 0));
        let per_sec = |bytes: u64| bytes as f64 * 8.0 / interval.as_secs_f64() / 1000.0;
        let bitrate = sender.and_then(|s| s.bitrate);
        let video = sender.and_then(|s| s.video_sent);
        self.samples.entry(pair).or_default().push(RateSample {
            at,
            sent_kbps: round(per_sec(offered.saturating_sub(o0))),
            delivered_kbps: round(per_sec(delivered.saturating_sub(d0))),
            capacity_kbps: capacity,
            estimate_kbps: bitrate.and_then(|b| b.available_outgoing_kbps).map(round),
            video_target_kbps: bitrate.and_then(|b| b.video_target_kbps).map(round),
            video_sent_kbps: bitrate.and_then(|b| b.video_sent_kbps).map(round),
            frame_width: video.and_then(|v| v.frame_width),
        });
    }

    /// The samples of the pair `from → to`, in time order
    pub(crate) fn samples(&self, pair: (usize, usize)) -> &[RateSample] {
        self.samples.get(&pair).map_or(&[], Vec::as_slice)
    }
}

/// To a thousandth (a bit per second), so that reports stay byte-identical across runs
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0 + 0.0
}

/// Every pair's samples as CSV, one line per pair and sample (pairs by sender, then
/// receiver); an empty field is a figure that was not measured
pub fn csv(sim: &crate::Sim, names: &[String]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "time_s,from,to,sent_kbps,delivered_kbps,capacity_kbps,estimate_kbps,\
         video_target_kbps,video_sent_kbps,frame_width\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
    for (a, from) in names.iter().enumerate() {
        for (b, to) in names.iter().enumerate() {
            if a == b {
                continue;
            }
            for s in sim.rate_samples(crate::HostId(a), crate::HostId(b)) {
                // Writing to a String cannot fail.
                let _ = writeln!(
                    out,
                    "{:.3},{from},{to},{:.1},{:.1},{},{},{},{},{}",
                    s.at.as_secs_f64(),
                    s.sent_kbps,
                    s.delivered_kbps,
                    opt(s.capacity_kbps),
                    opt(s.estimate_kbps),
                    opt(s.video_target_kbps),
                    opt(s.video_sent_kbps),
                    s.frame_width.map_or(String::new(), |w| w.to_string()),
                );
            }
        }
    }
    out
}

/// Mean of `f` over the samples whose interval ends within `(from, to]`
pub fn mean_over(
    samples: &[RateSample],
    from: Duration,
    to: Duration,
    f: impl Fn(&RateSample) -> Option<f64>,
) -> Option<f64> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.at > from && s.at <= to)
        .filter_map(f)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Every pair's rates as plot series (`from → to sent`, `… capacity`, `… estimate`,
/// `… video target`), pairs that sent nothing left out
pub fn series(sim: &crate::Sim, names: &[String]) -> Vec<crate::report::Series> {
    type Pick = fn(&RateSample) -> Option<f64>;
    let picks: [(&str, Pick); 4] = [
        ("sent", |s| Some(s.sent_kbps)),
        ("capacity", |s| s.capacity_kbps),
        ("estimate", |s| s.estimate_kbps),
        ("video target", |s| s.video_target_kbps),
    ];
    let mut out = Vec::new();
    for (a, from) in names.iter().enumerate() {
        for (b, to) in names.iter().enumerate() {
            let samples = sim.rate_samples(crate::HostId(a), crate::HostId(b));
            if a == b || samples.iter().all(|s| s.sent_kbps == 0.0) {
                continue;
            }
            for (what, pick) in picks {
                let points: Vec<(f64, f64)> = samples
                    .iter()
                    .filter_map(|s| pick(s).map(|v| (s.at.as_secs_f64(), v)))
                    .collect();
                if !points.is_empty() {
                    out.push(crate::report::Series {
                        label: format!("{from} → {to} {what}"),
                        points,
                    });
                }
            }
        }
    }
    out
}
