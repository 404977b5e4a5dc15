//! Shared bottlenecks and cross traffic
//!
//! A shared bottleneck ([`SharedBottleneckConfig`]) is one FIFO queue, served at a
//! constant rate with a drop-tail limit, that several directed links pass through before
//! their own stages (a home uplink that several calls share, say): a packet of any of its
//! links enters the shared queue when it is sent and enters its link when its last bit has
//! left the queue.
//!
//! A cross-traffic flow ([`CrossTrafficConfig`]) sends packets into a shared bottleneck
//! that go nowhere else (a competing application's traffic): either at a constant rate
//! ([`CrossModel::Cbr`]) or with additive increase and multiplicative decrease
//! ([`CrossModel::Aimd`], a model of a TCP Reno flow: each delivered packet adds
//! `MSS² / (rate · rtt²)` to the rate, a loss halves it at most once per round trip; the
//! round trip is the base one plus the packet's queueing delay). What it got through is counted per [`CROSS_INTERVAL`].

use std::collections::BTreeMap;
use std::time::Duration;

use crate::link::{Bottleneck, QueueLimit, Rate};
use crate::sim::HostId;
use crate::Error;

/// How often a cross-traffic flow's delivered rate is sampled
pub const CROSS_INTERVAL: Duration = Duration::from_millis(250);

/// A queue several links share
#[derive(Debug, Clone, PartialEq)]
pub struct SharedBottleneckConfig {
    /// Its name in reports
    pub name: String,
    /// The rate it serves at, bit/s (> 0)
    pub bits_per_sec: u64,
    /// Its drop-tail limit
    pub queue: QueueLimit,
    /// The directed links (sender, receiver) that pass through it; a link passes through
    /// at most one shared bottleneck
    pub links: Vec<(HostId, HostId)>,
}

/// How a cross-traffic flow sends
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CrossModel {
    /// A constant rate, bit/s
    Cbr {
        /// Bits per second
        bits_per_sec: u64,
    },
    /// Additive increase, multiplicative decrease (a TCP Reno flow)
    Aimd {
        /// The rate it starts at, bit/s
        start_bits_per_sec: u64,
        /// Its round trip without queueing
        rtt: Duration,
    },
}

/// A flow of packets into a shared bottleneck that go nowhere else
#[derive(Debug, Clone, PartialEq)]
pub struct CrossTrafficConfig {
    /// Its name in reports
    pub name: String,
    /// Index of the bottleneck (in the order they were added)
    pub bottleneck: usize,
    /// How it sends
    pub model: CrossModel,
    /// Bytes per packet as charged at the bottleneck
    pub packet_bytes: usize,
    /// First packet
    pub start: Duration,
    /// No packet at or after this time (`None`: until the run ends)
    pub stop: Option<Duration>,
}

/// What a cross-traffic flow got through
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CrossStats {
    /// Packets sent into the bottleneck
    pub sent: u64,
    /// Packets the bottleneck dropped
    pub dropped: u64,
    /// Delivered kbit/s per [`CROSS_INTERVAL`], by the interval's end (counted when the
    /// last bit leaves the queue)
    pub delivered_kbps: Vec<(Duration, f64)>,
    /// Bytes delivered per interval index
    buckets: BTreeMap<u64, u64>,
}

impl CrossStats {
    /// Mean delivered rate over `(from, to]`, kbit/s (intervals ending in it)
    pub fn mean_kbps(&self, from: Duration, to: Duration) -> Option<f64> {
        let v: Vec<f64> = self
            .series()
            .into_iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .map(|(_, k)| k)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// Delivered kbit/s per interval, every interval from the first to the last delivery
    pub fn series(&self) -> Vec<(Duration, f64)> {
        let (Some((&first, _)), Some((&last, _))) = (
            self.buckets.first_key_value(),
            self.buckets.last_key_value(),
        ) else {
            return Vec::new();
        };
        (first..=last)
            .map(|i| {
                let bytes = self.buckets.get(&i).copied().unwrap_or(0);
                let kbps = bytes as f64 * 8.0 / CROSS_INTERVAL.as_secs_f64() / 1000.0;
                (CROSS_INTERVAL * (i as u32 + 1), kbps)
            })
            .collect()
    }
}

/// The shared bottlenecks of a simulation and the cross traffic through them
#[derive(Debug, Default)]
pub(crate) struct Shared {
    bottlenecks: Vec<(SharedBottleneckConfig, Bottleneck)>,
    /// Which bottleneck each link passes through
    by_link: BTreeMap<(usize, usize), usize>,
    flows: Vec<Flow>,
}

#[derive(Debug)]
struct Flow {
    config: CrossTrafficConfig,
    stats: CrossStats,
    /// The AIMD rate, bit/s
    rate: f64,
    last_decrease: Option<u64>,
}

/// What became of a packet at a shared bottleneck
pub(crate) enum Admitted {
    /// The link passes through no shared bottleneck
    NotShared,
    /// It leaves the shared queue at this virtual time (ns)
    Leaves(u64),
    /// The shared queue was full
    Dropped,
}

impl Shared {
    pub(crate) fn add_bottleneck(
        &mut self,
        config: SharedBottleneckConfig,
        hosts: usize,
    ) -> Result<usize, Error> {
        if config.bits_per_sec == 0 {
            return Err(Error::Config(format!(
                "bottleneck {}: rate must be above zero",
                config.name
            )));
        }
        let idx = self.bottlenecks.len();
        for &(a, b) in &config.links {
            if a == b || a.0 >= hosts || b.0 >= hosts {
                return Err(Error::Config(format!(
                    "bottleneck {}: a link needs two distinct existing hosts",
                    config.name
                )));
            }
            if self.by_link.insert((a.0, b.0), idx).is_some() {
                return Err(Error::Config(format!(
                    "bottleneck {}: a link passes through two shared bottlenecks",
                    config.name
                )));
            }
        }
        self.bottlenecks
            .push((config, Bottleneck::new(Duration::ZERO)));
        Ok(idx)
    }

    pub(crate) fn add_flow(&mut self, config: CrossTrafficConfig) -> Result<usize, Error> {
        if config.bottleneck >= self.bottlenecks.len() {
            return Err(Error::Config(format!(
                "cross traffic {}: no such bottleneck",
                config.name
            )));
        }
        if config.packet_bytes == 0 {
            return Err(Error::Config(format!(
                "cross traffic {}: packet_bytes must be above zero",
                config.name
            )));
        }
        let rate = match config.model {
            CrossModel::Cbr { bits_per_sec }
            | CrossModel::Aimd {
                start_bits_per_sec: bits_per_sec,
                ..
            } => bits_per_sec as f64,
        };
        if rate <= 0.0 {
            return Err(Error::Config(format!(
                "cross traffic {}: rate must be above zero",
                config.name
            )));
        }
        self.flows.push(Flow {
            config,
            stats: CrossStats::default(),
            rate,
            last_decrease: None,
        });
        Ok(self.flows.len() - 1)
    }

    pub(crate) fn flow_start(&self, i: usize) -> Duration {
        self.flows[i].config.start
    }

    pub(crate) fn flow_stats(&self, i: usize) -> &CrossStats {
        &self.flows[i].stats
    }

    pub(crate) fn flow_config(&self, i: usize) -> &CrossTrafficConfig {
        &self.flows[i].config
    }

    pub(crate) fn flow_count(&self) -> usize {
        self.flows.len()
    }

    pub(crate) fn bottleneck_configs(&self) -> impl Iterator<Item = &SharedBottleneckConfig> {
        self.bottlenecks.iter().map(|(c, _)| c)
    }

    /// A datagram of `size` charged bytes sent on the link `from → to` at `now` (ns)
    pub(crate) fn admit(&mut self, link: (usize, usize), now: u64, size: usize) -> Admitted {
        let Some(&b) = self.by_link.get(&link) else {
            return Admitted::NotShared;
        };
        match self.enter(b, now, size) {
            Some(left) => Admitted::Leaves(left),
            None => Admitted::Dropped,
        }
    }

    fn enter(&mut self, b: usize, now: u64, size: usize) -> Option<u64> {
        let (config, queue) = &mut self.bottlenecks[b];
        let rate = Rate::Constant {
            bits_per_sec: config.bits_per_sec,
        };
        queue.admit(&rate, config.queue, now, size as u64)
    }

    /// Sends flow `i`'s next packet at `now` (ns); when the one after is due, if any
    pub(crate) fn step_flow(&mut self, i: usize, now: u64) -> Option<u64> {
        let config = self.flows[i].config.clone();
        if config.stop.is_some_and(|s| now >= s.as_nanos() as u64) {
            return None;
        }
        let left = self.enter(config.bottleneck, now, config.packet_bytes);
        let f = &mut self.flows[i];
        f.stats.sent += 1;
        let bits = (config.packet_bytes * 8) as f64;
        match left {
            Some(left) => {
                let bucket = left / CROSS_INTERVAL.as_nanos() as u64;
                *f.stats.buckets.entry(bucket).or_insert(0) += config.packet_bytes as u64;
                if let CrossModel::Aimd { rtt, .. } = config.model {
                    let rtt = rtt.as_secs_f64() + (left - now) as f64 / 1e9;
                    f.rate += bits * bits / (f.rate * rtt * rtt);
                }
            }
            None => {
                f.stats.dropped += 1;
                if let CrossModel::Aimd { rtt, .. } = config.model {
                    let rtt_ns = rtt.as_nanos() as u64;
                    if f.last_decrease.is_none_or(|t| now >= t + rtt_ns) {
                        f.rate = (f.rate / 2.0).max(bits);
                        f.last_decrease = Some(now);
                    }
                }
            }
        }
        let gap = (bits / f.rate * 1e9).round().max(1.0) as u64;
        Some(now + gap)
    }
}
