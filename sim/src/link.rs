//! One direction of an impaired link: a sans-IO, seeded model of what happens to a packet
//!
//! A packet offered to a [`Link`] at virtual time `now` goes through these stages, in order:
//!
//! 1. **Outage**: while the link is down ([`Link::set_up`]) every packet is dropped.
//! 2. **Packet trace** ([`LinkConfig::delay_trace`]): the next entry decides loss or delay.
//! 3. **Loss and duplication**, by [`str0m_netem::Netem`] (random loss with correlation,
//!    Gilbert–Elliott bursts, duplication), run with no delay of its own.
//! 4. **Bottleneck**: a FIFO queue served at a constant bit rate or by a Mahimahi capacity
//!    trace, with a finite drop-tail limit. A packet leaves once its last byte is sent.
//! 5. **Delay**: `latency + jitter` (or the trace's delay) from the moment it leaves the
//!    bottleneck. Jitter has a shape (uniform, normal, exponential, Pareto) and a correlation
//!    between consecutive packets that does not change its distribution (Gaussian copula).
//!    With [`LinkConfig::keep_order`] packets never overtake each other (a path of FIFO
//!    queues), otherwise jitter reorders them as Linux netem does.
//! 6. **Reordering**: with [`LinkConfig::reorder`], a packet is held back by
//!    [`LinkConfig::reorder_delay`] and is not waited for, so packets behind it overtake it.
//!
//! str0m-netem covers stage 3. Its own delay stage is not used: it has one jitter shape
//! (uniform, mixed with the last value for correlation, which narrows the distribution), it
//! delivers strictly by packet index so jitter never reorders but blocks, and its rate
//! limiter counts packets still in propagation against the queue limit.
//!
//! Every decision is drawn from generators seeded by [`Link::new`]; the packet's bytes never
//! matter, only the size given to [`Link::handle_packet`] (see [`charged_size`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m_netem::{
    GilbertElliot, Input as NetInput, LossModel, Netem, NetemConfig, Output as NetOutput,
    Probability, RandomLoss,
};

use crate::trace::{CapacityTrace, PacketTrace, MAHIMAHI_PACKET_BYTES};
use crate::Error;

/// Bytes of IPv4 and UDP headers added to every datagram's charged size
pub const IP_UDP_OVERHEAD: usize = 28;

/// The size charged to a DTLS handshake datagram, whatever its length
///
/// DTLS handshake datagrams differ in length by a byte or two from run to run (random keys
/// give DER signatures and certificates of varying length). A length-dependent serialization
/// time would make the whole run depend on that, so they are all charged one MTU-sized
/// packet. They are few (a handful per connection).
pub const DTLS_HANDSHAKE_CHARGE: usize = 1200;

/// The size a datagram counts for at a rate limit and in a queue
///
/// The datagram's length plus [`IP_UDP_OVERHEAD`], except DTLS handshake, change-cipher-spec
/// and alert records (first byte 20, 21 or 22, RFC 7983), which count
/// [`DTLS_HANDSHAKE_CHARGE`] whatever their length. Every other packet's length is the same
/// in every run.
pub fn charged_size(datagram: &[u8]) -> usize {
    match datagram.first() {
        Some(20..=22) => DTLS_HANDSHAKE_CHARGE,
        _ => datagram.len() + IP_UDP_OVERHEAD,
    }
}

/// The shape of the random delay added to a link's base latency
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Jitter {
    /// No jitter: every packet gets the base latency
    #[default]
    None,
    /// Uniform in `[-max, +max]` around the latency (netem's shape)
    Uniform {
        /// Half the width of the range
        max: Duration,
    },
    /// Normal with mean zero around the latency (the total delay is clamped at zero)
    Normal {
        /// The standard deviation
        std_dev: Duration,
    },
    /// One-sided exponential queueing delay added to the latency
    Exponential {
        /// The mean added delay
        mean: Duration,
    },
    /// One-sided heavy-tailed (Pareto type II, Lomax) queueing delay added to the latency
    ///
    /// With shape `α > 1` and scale `mean·(α − 1)`: `P(X > x) = (1 + x/scale)^-α`.
    Pareto {
        /// The mean added delay
        mean: Duration,
        /// The tail index α (> 1; smaller is heavier)
        shape: f64,
    },
}

impl Jitter {
    /// The mean of the added delay (before clamping at zero)
    pub fn mean(&self) -> Duration {
        match *self {
            Self::None | Self::Uniform { .. } | Self::Normal { .. } => Duration::ZERO,
            Self::Exponential { mean } | Self::Pareto { mean, .. } => mean,
        }
    }

    /// The `q` quantile (0 < q < 1) of the added delay, in nanoseconds (may be negative)
    pub fn quantile_ns(&self, q: f64) -> f64 {
        match *self {
            Self::None => 0.0,
            Self::Uniform { max } => max.as_nanos() as f64 * (2.0 * q - 1.0),
            Self::Normal { std_dev } => std_dev.as_nanos() as f64 * inverse_normal_cdf(q),
            Self::Exponential { mean } => -(mean.as_nanos() as f64) * (1.0 - q).ln(),
            Self::Pareto { mean, shape } => {
                let scale = mean.as_nanos() as f64 * (shape - 1.0);
                scale * ((1.0 - q).powf(-1.0 / shape) - 1.0)
            }
        }
    }
}

/// How packets are lost at random
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// No random loss
    #[default]
    None,
    /// Each packet is lost with `probability`; `correlation` (0..1) makes losses cluster
    /// (netem's model: the draw is mixed with the previous one)
    Random {
        /// Loss probability per packet
        probability: f64,
        /// Correlation with the previous draw (0 = independent)
        correlation: f64,
    },
    /// Gilbert–Elliott two-state bursts
    ///
    /// Per packet: in GOOD move to BAD with probability `p`, in BAD move to GOOD with
    /// probability `r`; then lose the packet with `loss_in_bad` (BAD) or `loss_in_good`
    /// (GOOD). The mean burst is `1/r` packets; with `loss_in_bad = 1` and
    /// `loss_in_good = 0` the loss rate is `p / (p + r)`.
    GilbertElliott {
        /// GOOD → BAD transition probability
        p: f64,
        /// BAD → GOOD transition probability (> 0)
        r: f64,
        /// Loss probability in BAD
        loss_in_bad: f64,
        /// Loss probability in GOOD
        loss_in_good: f64,
    },
}

impl Loss {
    /// The long-run loss rate this model gives
    pub fn expected_rate(&self) -> f64 {
        match *self {
            Self::None => 0.0,
            Self::Random { probability, .. } => probability,
            Self::GilbertElliott {
                p,
                r,
                loss_in_bad,
                loss_in_good,
            } => {
                if p + r == 0.0 {
                    return loss_in_good;
                }
                let bad = p / (p + r);
                bad * loss_in_bad + (1.0 - bad) * loss_in_good
            }
        }
    }

    fn to_netem(self) -> LossModel {
        let prob = |v: f64| Probability::new(v as f32);
        match self {
            Self::None => LossModel::None,
            Self::Random {
                probability,
                correlation,
            } => RandomLoss::new(prob(probability))
                .correlation(prob(correlation))
                .into(),
            Self::GilbertElliott {
                p,
                r,
                loss_in_bad,
                loss_in_good,
            } => {
                // netem takes mean durations (1/p, 1/r); p = 0 means never leave GOOD.
                let good = if p > 0.0 { (1.0 / p) as f32 } else { 0.0 };
                GilbertElliot::new()
                    .good_duration(good)
                    .bad_duration((1.0 / r) as f32)
                    .loss_in_bad(prob(loss_in_bad))
                    .loss_in_good(prob(loss_in_good))
                    .into()
            }
        }
    }
}

/// The capacity of a link's bottleneck
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Rate {
    /// No bottleneck: packets go straight to the delay stage
    #[default]
    Unlimited,
    /// A constant bit rate, counting [`charged_size`] bytes per packet
    Constant {
        /// Bits per second (> 0)
        bits_per_sec: u64,
    },
    /// A Mahimahi capacity trace, starting when the configuration is applied
    Trace(Arc<CapacityTrace>),
}

/// The drop-tail limit of a link's bottleneck queue
///
/// A packet that would make the queue (packets admitted but not yet fully sent, including
/// the one being sent) exceed the limit is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueLimit {
    /// No limit
    #[default]
    Unlimited,
    /// At most this many charged bytes
    Bytes(usize),
    /// At most this many packets
    Packets(usize),
}

/// The impairments of one direction of a link
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Base one-way delay
    pub latency: Duration,
    /// Random delay around or added to the latency
    pub jitter: Jitter,
    /// Correlation (0..1) of consecutive packets' jitter; the distribution stays the same
    pub delay_correlation: f64,
    /// Whether packets keep their order through the delay stage (a later packet waits for
    /// an earlier one); `false` lets jitter reorder them
    pub keep_order: bool,
    /// Random loss
    pub loss: Loss,
    /// Probability (0..1) that a packet is duplicated (the copy is delayed independently)
    pub duplicate: f64,
    /// Probability (0..1) that a packet is held back by `reorder_delay` and overtaken
    pub reorder: f64,
    /// How long a reordered packet is held back
    pub reorder_delay: Duration,
    /// Capacity of the bottleneck
    pub rate: Rate,
    /// Drop-tail limit of the bottleneck queue (ignored without a rate)
    pub queue: QueueLimit,
    /// A per-packet trace of delays and losses; its delay replaces `latency` and `jitter`
    pub delay_trace: Option<Arc<PacketTrace>>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Jitter::None,
            delay_correlation: 0.0,
            keep_order: true,
            loss: Loss::None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            rate: Rate::Unlimited,
            queue: QueueLimit::Unlimited,
            delay_trace: None,
        }
    }
}

impl LinkConfig {
    /// A perfect link with a fixed one-way delay
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }

    /// Checks every value's range; every constructor of a [`Link`] calls this
    pub fn validate(&self) -> Result<(), Error> {
        let prob = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::Config(format!("{name} {v} is not within 0..=1")))
            }
        };
        prob("delay_correlation", self.delay_correlation)?;
        if self.delay_correlation >= 1.0 {
            return Err(Error::Config("delay_correlation must be below 1".into()));
        }
        prob("duplicate", self.duplicate)?;
        prob("reorder", self.reorder)?;
        match self.loss {
            Loss::None => {}
            Loss::Random {
                probability,
                correlation,
            } => {
                prob("loss probability", probability)?;
                prob("loss correlation", correlation)?;
            }
            Loss::GilbertElliott {
                p,
                r,
                loss_in_bad,
                loss_in_good,
            } => {
                prob("gilbert-elliott p", p)?;
                prob("gilbert-elliott r", r)?;
                prob("loss_in_bad", loss_in_bad)?;
                prob("loss_in_good", loss_in_good)?;
                if r == 0.0 {
                    return Err(Error::Config(
                        "gilbert-elliott r must be above 0 (bursts must end)".into(),
                    ));
                }
            }
        }
        if let Jitter::Pareto { shape, .. } = self.jitter {
            if !(shape.is_finite() && shape > 1.0) {
                return Err(Error::Config(format!(
                    "pareto shape {shape} must be above 1 (for a finite mean)"
                )));
            }
        }
        if let Rate::Constant { bits_per_sec: 0 } = self.rate {
            return Err(Error::Config("rate must be above 0 bit/s".into()));
        }
        if self.delay_trace.is_some() && (self.jitter != Jitter::None || !self.latency.is_zero()) {
            return Err(Error::Config(
                "a delay trace replaces latency and jitter; set neither".into(),
            ));
        }
        Ok(())
    }
}

/// Why a packet was dropped
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The link was down
    Outage,
    /// The packet trace said `lost`
    Trace,
    /// Random or Gilbert–Elliott loss
    Loss,
    /// The bottleneck queue was full
    Queue,
}

/// What happens to one copy of a packet
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It arrives at this virtual time
    Deliver(Duration),
    /// It is dropped
    Drop(DropReason),
}

/// What happens to a packet offered to a link: its own verdict and, if it was duplicated,
/// the copy's
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fate {
    /// The packet's verdict
    pub verdict: Verdict,
    /// The duplicate's verdict, if the link duplicated it
    pub duplicate: Option<Verdict>,
}

impl Fate {
    /// The verdicts, the packet's first
    pub fn verdicts(&self) -> impl Iterator<Item = Verdict> {
        std::iter::once(self.verdict).chain(self.duplicate)
    }
}

/// Counters of one direction of a link
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Packets offered to the link
    pub offered: u64,
    /// Charged bytes offered
    pub bytes_offered: u64,
    /// Copies scheduled for delivery (packets plus duplicates, less drops)
    pub scheduled: u64,
    /// Copies that reached the other host
    pub delivered: u64,
    /// Charged bytes that reached the other host
    pub bytes_delivered: u64,
    /// Packets lost to random or Gilbert–Elliott loss
    pub lost: u64,
    /// Packets lost because the packet trace said so
    pub trace_lost: u64,
    /// Copies dropped because the bottleneck queue was full
    pub queue_dropped: u64,
    /// Copies dropped because the link was down when they entered or were to arrive
    pub outage_dropped: u64,
    /// Extra copies made by duplication
    pub duplicated: u64,
    /// Copies held back to be reordered
    pub reordered: u64,
}

/// A netem packet: only a token, since netem only decides loss and duplication here
#[derive(Debug, Clone, Copy)]
struct Token;

impl AsRef<[u8]> for Token {
    fn as_ref(&self) -> &[u8] {
        // netem asks for a length only for its rate limiter, which is not used.
        &[]
    }
}

/// One direction of a link: see the [module docs](self) for the stages
pub struct Link {
    config: LinkConfig,
    seed: u64,
    generation: u64,
    netem: Netem<Token>,
    /// netem wants `Instant`s; virtual times are placed after this
    netem_anchor: Instant,
    netem_last: Duration,
    rng: fastrand::Rng,
    /// Last correlated standard normal draw (delay correlation)
    z: Option<f64>,
    bottleneck: Bottleneck,
    /// Delivery time of the last packet that keeps order
    last_in_order: u64,
    trace_index: u64,
    up: bool,
    stats: LinkStats,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("config", &self.config)
            .field("up", &self.up)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link with `config`, its generators seeded from `seed`, created at virtual time `now`
    pub fn new(config: LinkConfig, seed: u64, now: Duration) -> Result<Self, Error> {
        config.validate()?;
        // netem only orders its instants; the real time of this anchor never matters.
        #[allow(clippy::disallowed_methods)] // reason: an anchor for netem, never read again
        let netem_anchor = Instant::now();
        let mut link = Self {
            netem: Netem::new(NetemConfig::new()),
            netem_anchor,
            netem_last: now,
            rng: fastrand::Rng::with_seed(0),
            z: None,
            bottleneck: Bottleneck::new(now),
            last_in_order: 0,
            trace_index: 0,
            up: true,
            stats: LinkStats::default(),
            config: config.clone(),
            seed,
            generation: 0,
        };
        link.apply(config, now);
        Ok(link)
    }

    /// Replaces the configuration at virtual time `now` (a timeline change)
    ///
    /// Packets already scheduled keep their times; later packets queue behind them. Random
    /// generators are reseeded from the link seed and a change counter. A capacity trace or
    /// packet trace that the change replaces restarts (at `now`, at its first line); one
    /// that stays the same goes on where it was.
    pub fn set_config(&mut self, config: LinkConfig, now: Duration) -> Result<(), Error> {
        config.validate()?;
        self.generation += 1;
        self.apply(config, now);
        Ok(())
    }

    fn apply(&mut self, config: LinkConfig, now: Duration) {
        let base = mix(self.seed, self.generation);
        let netem_config = NetemConfig::new()
            .loss(config.loss.to_netem())
            .duplicate(Probability::new(config.duplicate as f32))
            .seed(mix(base, 1));
        self.netem.set_config(netem_config);
        self.rng = fastrand::Rng::with_seed(mix(base, 2));
        self.z = None;
        let same_packet_trace = match (&self.config.delay_trace, &config.delay_trace) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same_packet_trace {
            self.trace_index = 0;
        }
        let same_capacity_trace = match (&self.config.rate, &config.rate) {
            (Rate::Trace(a), Rate::Trace(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same_capacity_trace || self.generation == 0 {
            self.bottleneck.reconfigure(&config.rate, now);
        }
        self.config = config;
    }

    /// The current configuration
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Takes the link down (every packet is dropped) or brings it back up
    pub fn set_up(&mut self, up: bool) {
        self.up = up;
    }

    /// Whether the link is up
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The link's counters
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// How long the last packet admitted to the bottleneck waited behind the queue before
    /// its first bit was sent (zero without a bottleneck)
    pub fn queue_wait(&self) -> Duration {
        Duration::from_nanos(self.bottleneck.last_wait)
    }

    /// Counts a copy that reached the other host (the caller checked the link was up)
    pub fn note_delivered(&mut self, charged: usize) {
        self.stats.delivered += 1;
        self.stats.bytes_delivered += charged as u64;
    }

    /// Counts a packet a shared bottleneck in front of this link dropped (offered to the
    /// link's path, dropped at a queue)
    pub fn note_shared_queue_drop(&mut self, charged: usize) {
        self.stats.offered += 1;
        self.stats.bytes_offered += charged as u64;
        self.stats.queue_dropped += 1;
    }

    /// Counts a copy dropped on arrival because the link was down by then
    pub fn note_outage_in_flight(&mut self) {
        self.stats.outage_dropped += 1;
    }

    /// Decides the fate of a packet of `charged` bytes offered at virtual time `now`
    ///
    /// Times must not go backwards between calls.
    pub fn handle_packet(&mut self, now: Duration, charged: usize) -> Fate {
        self.stats.offered += 1;
        self.stats.bytes_offered += charged as u64;
        let drop = |r| Fate {
            verdict: Verdict::Drop(r),
            duplicate: None,
        };
        if !self.up {
            self.stats.outage_dropped += 1;
            return drop(DropReason::Outage);
        }
        let traced = match &self.config.delay_trace {
            Some(trace) => {
                let e = trace.entry(self.trace_index);
                self.trace_index += 1;
                match e {
                    Some(d) => Some(d),
                    None => {
                        self.stats.trace_lost += 1;
                        return drop(DropReason::Trace);
                    }
                }
            }
            None => None,
        };
        let copies = self.netem_copies(now);
        if copies == 0 {
            self.stats.lost += 1;
            return drop(DropReason::Loss);
        }
        let now_ns = now.as_nanos() as u64;
        let verdict = self.one_copy(now_ns, charged, traced);
        let duplicate = (copies > 1).then(|| {
            self.stats.duplicated += 1;
            self.one_copy(now_ns, charged, traced)
        });
        Fate { verdict, duplicate }
    }

    /// How many copies netem lets through: 0 (lost), 1, or 2 (duplicated)
    fn netem_copies(&mut self, now: Duration) -> usize {
        let now = now.max(self.netem_last);
        self.netem_last = now;
        let at = self.netem_anchor + now;
        self.netem.handle_input(NetInput::Packet(at, Token));
        let mut copies = 0;
        while let Some(o) = self.netem.poll_output() {
            match o {
                NetOutput::Packet(Token) => copies += 1,
                // With no delay configured every packet is due at once.
                NetOutput::Timeout(_) => {}
            }
        }
        copies
    }

    fn one_copy(&mut self, now_ns: u64, charged: usize, traced: Option<u64>) -> Verdict {
        let Some(left) =
            self.bottleneck
                .admit(&self.config.rate, self.config.queue, now_ns, charged as u64)
        else {
            self.stats.queue_dropped += 1;
            return Verdict::Drop(DropReason::Queue);
        };
        let delay = match traced {
            Some(d) => d,
            None => self.sample_delay(),
        };
        let mut at = left.saturating_add(delay);
        if self.config.reorder > 0.0 && self.rng.f64() < self.config.reorder {
            self.stats.reordered += 1;
            at = at.saturating_add(self.config.reorder_delay.as_nanos() as u64);
        } else if self.config.keep_order {
            at = at.max(self.last_in_order);
            self.last_in_order = at;
        }
        self.stats.scheduled += 1;
        Verdict::Deliver(Duration::from_nanos(at))
    }

    /// Latency plus one jitter draw, in nanoseconds (never negative)
    fn sample_delay(&mut self) -> u64 {
        let latency = self.config.latency.as_nanos() as f64;
        if self.config.jitter == Jitter::None {
            return latency as u64;
        }
        let rho = self.config.delay_correlation;
        let jitter = self.config.jitter;
        let is_normal = matches!(jitter, Jitter::Normal { .. });
        // Independent draws take a uniform quantile (or a normal, for the normal shape)
        // directly. Correlated draws follow an AR(1) standard normal, mapped through its
        // CDF to the shape's quantile: the distribution stays the same, consecutive draws
        // are correlated (a Gaussian copula).
        let z = if rho == 0.0 {
            is_normal.then(|| standard_normal(&mut self.rng))
        } else {
            let e = standard_normal(&mut self.rng);
            let z = match self.z {
                Some(prev) => rho * prev + (1.0 - rho * rho).sqrt() * e,
                None => e,
            };
            self.z = Some(z);
            Some(z)
        };
        let added = match (jitter, z) {
            (Jitter::Normal { std_dev }, Some(z)) => std_dev.as_nanos() as f64 * z,
            (j, Some(z)) => j.quantile_ns(clamp_quantile(normal_cdf(z))),
            (j, None) => j.quantile_ns(clamp_quantile(self.rng.f64())),
        };
        (latency + added).max(0.0).round() as u64
    }
}

/// The bottleneck queue: FIFO, served at a constant rate or by a capacity trace
#[derive(Debug)]
pub(crate) struct Bottleneck {
    /// When the last admitted packet has been fully sent
    busy_until: u64,
    /// Admitted packets not yet fully sent: (leaves at, charged bytes)
    queue: VecDeque<(u64, u64)>,
    queued_bytes: u64,
    /// Where a capacity trace's time zero lies
    trace_start: u64,
    /// The opportunity used last and the bytes left in it
    last_opportunity: Option<(u64, u64)>,
    /// How long the last admitted packet waited behind the queue, ns
    last_wait: u64,
}

impl Bottleneck {
    pub(crate) fn new(now: Duration) -> Self {
        Self {
            busy_until: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            trace_start: now.as_nanos() as u64,
            last_opportunity: None,
            last_wait: 0,
        }
    }

    fn reconfigure(&mut self, rate: &Rate, now: Duration) {
        if let Rate::Trace(_) = rate {
            self.trace_start = now.as_nanos() as u64;
            self.last_opportunity = None;
        }
    }

    /// Admits a packet arriving at `now` (ns): when it leaves, or `None` if dropped
    pub(crate) fn admit(
        &mut self,
        rate: &Rate,
        limit: QueueLimit,
        now: u64,
        size: u64,
    ) -> Option<u64> {
        while self.queue.front().is_some_and(|&(left, _)| left <= now) {
            let (_, s) = self
                .queue
                .pop_front()
                .expect("front exists; panic means bug");
            self.queued_bytes -= s;
        }
        if *rate == Rate::Unlimited {
            return Some(now);
        }
        let full = match limit {
            QueueLimit::Unlimited => false,
            QueueLimit::Bytes(b) => self.queued_bytes + size > b as u64,
            QueueLimit::Packets(p) => self.queue.len() + 1 > p,
        };
        if full {
            return None;
        }
        let trace = match rate {
            Rate::Unlimited => return Some(now),
            Rate::Constant { bits_per_sec } => {
                let start = now.max(self.busy_until);
                self.last_wait = start - now;
                // ceil(size·8·1e9 / rate): the last bit leaves at this time.
                let tx = (size as u128 * 8 * 1_000_000_000).div_ceil(*bits_per_sec as u128);
                let left = start.saturating_add(tx as u64);
                return Some(self.push(left, size));
            }
            Rate::Trace(t) => t,
        };
        let start = now.max(self.busy_until);
        self.last_wait = start - now;
        let rel = start.saturating_sub(self.trace_start);
        // Continue in the last opportunity if it is not over and has bytes left.
        let (mut k, mut credit) = match self.last_opportunity {
            Some((k, left)) if trace.time_ns(k) >= rel && left > 0 => (k, left),
            Some((k, _)) if trace.time_ns(k) >= rel => (k + 1, MAHIMAHI_PACKET_BYTES as u64),
            Some((k, _)) => (
                trace.first_at_or_after(rel).max(k + 1),
                MAHIMAHI_PACKET_BYTES as u64,
            ),
            None => (trace.first_at_or_after(rel), MAHIMAHI_PACKET_BYTES as u64),
        };
        let mut remaining = size;
        loop {
            let used = credit.min(remaining);
            credit -= used;
            remaining -= used;
            if remaining == 0 {
                break;
            }
            k += 1;
            credit = MAHIMAHI_PACKET_BYTES as u64;
        }
        self.last_opportunity = Some((k, credit));
        let left = self.trace_start.saturating_add(trace.time_ns(k));
        Some(self.push(left, size))
    }

    fn push(&mut self, left: u64, size: u64) -> u64 {
        self.busy_until = left;
        self.queue.push_back((left, size));
        self.queued_bytes += size;
        left
    }
}

/// Keeps a quantile strictly inside (0, 1) so one-sided shapes stay finite
fn clamp_quantile(q: f64) -> f64 {
    q.clamp(1e-12, 1.0 - 1e-12)
}

/// splitmix64 of `a` and `b`: derives independent seeds
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal draw (Box–Muller, one of the pair)
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64(); // (0, 1]
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The standard normal CDF, Φ(z) = erfc(−z/√2)/2
fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Abramowitz & Stegun 7.1.26; absolute error < 1.5e-7)
fn erfc(x: f64) -> f64 {
    let ax = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * ax);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let tail = poly * (-ax * ax).exp();
    if x >= 0.0 {
        tail
    } else {
        2.0 - tail
    }
}

/// The inverse of the standard normal CDF, by bisection on [`normal_cdf`] (for expected
/// figures only, not per packet)
pub(crate) fn inverse_normal_cdf(q: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0f64, 10.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charged_size_rule() {
        assert_eq!(charged_size(&[22; 300]), DTLS_HANDSHAKE_CHARGE);
        assert_eq!(charged_size(&[22; 301]), DTLS_HANDSHAKE_CHARGE);
        assert_eq!(charged_size(&[20; 30]), DTLS_HANDSHAKE_CHARGE);
        assert_eq!(charged_size(&[23; 100]), 128);
        assert_eq!(charged_size(&[0; 100]), 128);
        assert_eq!(charged_size(&[]), IP_UDP_OVERHEAD);
    }

    #[test]
    fn normal_cdf_is_accurate() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.644_853_6) - 0.95).abs() < 1e-6);
        assert!((normal_cdf(-2.326_347_9) - 0.01).abs() < 1e-6);
        assert!((inverse_normal_cdf(0.95) - 1.644_853_6).abs() < 1e-5);
    }

    #[test]
    fn mix_spreads() {
        assert_ne!(mix(1, 2), mix(2, 1));
        assert_ne!(mix(0, 0), 0);
    }

    #[test]
    fn a_change_keeps_an_unchanged_capacity_trace_running() {
        let trace = Arc::new(CapacityTrace::from_offsets(vec![10]).unwrap());
        let cfg = LinkConfig {
            rate: Rate::Trace(trace.clone()),
            ..LinkConfig::default()
        };
        let mut link = Link::new(cfg.clone(), 1, Duration::ZERO).unwrap();
        let ms = Duration::from_millis;
        // Same trace, other loss: the opportunities stay at 10, 20, 30 ms.
        let lossy = LinkConfig {
            loss: Loss::Random {
                probability: 0.0,
                correlation: 0.0,
            },
            ..cfg.clone()
        };
        link.set_config(lossy, ms(3)).unwrap();
        assert_eq!(
            link.handle_packet(ms(4), 100).verdict,
            Verdict::Deliver(ms(10))
        );
        // Another trace restarts at the change: 17 + 10 ms.
        let other = LinkConfig {
            rate: Rate::Trace(Arc::new(CapacityTrace::from_offsets(vec![10]).unwrap())),
            ..cfg
        };
        link.set_config(other, ms(17)).unwrap();
        assert_eq!(
            link.handle_packet(ms(18), 100).verdict,
            Verdict::Deliver(ms(27))
        );
    }

    #[test]
    fn constant_rate_serializes() {
        // 8 kbit/s = 1000 B/s: 100 B take 100 ms each.
        let cfg = LinkConfig {
            rate: Rate::Constant { bits_per_sec: 8000 },
            ..LinkConfig::default()
        };
        let mut link = Link::new(cfg, 1, Duration::ZERO).unwrap();
        let a = link.handle_packet(Duration::ZERO, 100).verdict;
        let b = link.handle_packet(Duration::ZERO, 100).verdict;
        assert_eq!(a, Verdict::Deliver(Duration::from_millis(100)));
        assert_eq!(b, Verdict::Deliver(Duration::from_millis(200)));
    }
}
