//! Rate adaptation: one encode, many paths
//!
//! Each peer's `Rtc` estimates the bandwidth of its path (str0m's send-side estimator on
//! transport-wide congestion control feedback, TWCC); str0m's pacer spreads what is written
//! at about the estimate, so a keyframe leaves as a train of packets, not as a burst. This
//! module turns the estimates of all paths into what the participant's encoders do:
//!
//! * **The main encoding** follows the slowest path of the main group: its estimate, times
//!   [`RateConfig::usable`], less the audio on the wire, capped at the configured video
//!   bitrate ([`VideoEncoderConfig::bitrate_bps`](crate::codec::VideoEncoderConfig)). The
//!   encoders' degradation controller picks the size and frame rate for that bitrate.
//! * **A second, low encoding** for peers far below the rest: with the paths' video budgets
//!   sorted, the largest ratio between two neighbours splits them into a low group and a
//!   main group when it is at least [`RateConfig::low_enter_ratio`] (and stays split while it
//!   is at least [`RateConfig::low_leave_ratio`]). The low group gets its own encode at its
//!   slowest path's budget; one slow peer no longer drags everyone's quality down to its own.
//!   A second encode costs CPU (see the closing notes of issue 17 in `README.md`), but less
//!   than the alternative, temporal layers, costs in quality: VP8's base layer still carries
//!   half the bytes, and OpenH264 and VP9 (in real-time mode here) have none.
//! * **Hysteresis.** A target moves when the wanted one is more than
//!   [`RateConfig::deadband`] away, at most once per [`RateConfig::min_interval`]; a fall to
//!   below [`RateConfig::emergency`] of the current target applies at once (congestion is
//!   building a queue). The low group changes at most once per interval too, since every
//!   peer moved needs a keyframe of the encoding it moves to.
//! * **Audio is the last to go**: Opus keeps its configured bitrate while the slowest path
//!   has room for it and [`MIN_VIDEO_BPS`] of video; below that it steps down, to
//!   [`RateConfig::min_audio_bps`] at the least. FEC and the expected loss follow the
//!   worst loss RTCP receiver reports give for our audio
//!   ([`AudioParams::following_loss`](crate::codec::AudioParams::following_loss)).
//!
//! `RateController` is sans-IO and knows nothing of `Rtc`s: the participant hands it the
//! estimates and applies its `Decision`; `Route` keeps a peer on one encoding until a
//! keyframe of the next one is there to switch on.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use str0m::bwe::BweKind;
use str0m::media::Mid;
use str0m::stats::MediaEgressStats;

use crate::codec::degrade::QualityLimitation;
use crate::compete::Competition;
use crate::congestion::RemoteCap;
use crate::extreme::WindowMax;
use crate::media::{Encoding, MediaConfig};
use crate::pushback::Pushback;
use crate::signal::PeerId;

/// Lowest video bitrate the encoders take (their own floor)
pub const MIN_VIDEO_BPS: u32 = 50_000;

/// A second encoding is made only for a main group with at least this much video (a
/// 320x180 picture at 15 fps): below it a second encode is not worth its CPU
const MIN_MAIN_WITH_LOW_BPS: u32 = 250_000;

/// Bytes of headers per RTP packet on the wire: IPv4 (20), UDP (8), RTP (12), SRTP tag
/// (10) and header extensions (about 12)
const PACKET_OVERHEAD_BYTES: u32 = 62;

/// str0m's pacing rate as a multiple of its estimate (`pacer/control.rs`)
const PACING_FACTOR: f64 = 1.1;

/// How a participant adapts its media to the paths' bandwidth
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Estimate bandwidth and adapt (default false: no estimation, the encoders keep their
    /// configured bitrates). Off by default until it meets its bounds: with it on, str0m's
    /// pacer shifts arrival times enough to spoil the drift estimate (p95 error 28–92 ppm
    /// against 4–21 ppm off) and simulator runs are not byte-exact (docs/rate)
    pub enabled: bool,
    /// The estimate a path starts from, bit/s (libwebrtc's default: 300 kbit/s); str0m
    /// probes upwards from it at once
    pub initial_bps: u32,
    /// Share of a path's estimate that media may use (the rest: RTP headers of video,
    /// retransmissions, encoder overshoot)
    pub usable: f64,
    /// Give peers far below the rest a second, lower encoding
    pub low_encoding: bool,
    /// Split the paths into a low and a main group at a neighbour ratio of at least this
    pub low_enter_ratio: f64,
    /// ... and keep the split while the ratio at it is at least this
    pub low_leave_ratio: f64,
    /// Least time between two changes of a target (or of the low group)
    pub min_interval: Duration,
    /// A target moves only when the wanted one is more than this fraction away from it
    pub deadband: f64,
    /// A fall to below this fraction of the current target applies at once
    pub emergency: f64,
    /// Opus never goes below this bitrate for lack of bandwidth
    pub min_audio_bps: u32,
    /// As a receiver, ask a sender for less (RTCP REMB) when a queue builds on the path
    /// from it (see `congestion.rs`; browsers do not, so a test may turn it off to see a
    /// meshrtc sender as a browser's peer would)
    pub receiver_requests: bool,
    /// As a sender, probe each path's round trip while sending video and hold the sending
    /// rate below what was sent while a queue builds, before the estimate notices (see
    /// `pushback.rs`)
    pub pushback: bool,
    /// As a sender, let loss instead of delay set the rate towards a peer while a queue
    /// stands on its path though we send at our floor: a loss-based flow (a download)
    /// shares the path (see `compete.rs`; needs `pushback`'s round-trip probes). Default
    /// false: it wins the call its share of such a path (two calls beside an AIMD flow on
    /// 3 Mbit/s: 0.7–1.2 Mbit/s each instead of 0.13) but not a smooth one (video p95 mostly
    /// 300–460 ms instead of 180, freezes of about a second, a few up to 5.5 s; the starved
    /// call ran 10 fps at 50 kbit/s without freezes), and on a deep-queued cellular path it
    /// can mistake a fade for another flow (docs/rate/README.md)
    pub compete: bool,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            initial_bps: 300_000,
            usable: 0.85,
            low_encoding: true,
            low_enter_ratio: 2.0,
            low_leave_ratio: 1.4,
            min_interval: Duration::from_secs(1),
            deadband: 0.1,
            emergency: 0.75,
            min_audio_bps: 16_000,
            receiver_requests: true,
            pushback: true,
            compete: false,
        }
    }
}

/// Send-side rates towards one peer (`bitrate` in the stats of `contracts/cli.md`), kbit/s
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BitrateStats {
    /// The bandwidth estimate of the path to this peer
    pub available_outgoing_kbps: Option<f64>,
    /// The target of the video encoding this peer receives
    pub video_target_kbps: Option<f64>,
    /// Video sent to this peer over the last stats interval (RTP payload, with
    /// retransmissions)
    pub video_sent_kbps: Option<f64>,
    /// Audio sent to this peer over the last stats interval
    pub audio_sent_kbps: Option<f64>,
    /// Of the estimate's parts: str0m's own (TWCC) estimate, before the receiver's request
    /// and our pushback cap it
    pub sender_estimate_kbps: Option<f64>,
    /// Of the estimate's parts: the receiver's request (REMB) in force
    pub receiver_limit_kbps: Option<f64>,
    /// Of the estimate's parts: our pushback's cap while a queue drains
    pub pushback_cap_kbps: Option<f64>,
    /// What str0m's estimator was last told it may probe up to
    pub desired_kbps: Option<f64>,
    /// While a loss-based flow holds a queue on the path (with `RateConfig::compete`): the
    /// loss-driven rate we hold against it
    pub competing_kbps: Option<f64>,
}

/// The video we send to one peer
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VideoSendPeerStats {
    /// Frames written to this peer
    pub frames_sent: u64,
    /// Width of the last frame of the encoding this peer receives
    pub frame_width: Option<u32>,
    /// Its height
    pub frame_height: Option<u32>,
    /// Why that encoding is below the capture
    pub quality_limitation: QualityLimitation,
    /// Which encoding this peer receives
    pub encoding: Encoding,
}

/// What changed in one [`RateController::update`]
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Decision {
    /// A new target for the main encoding
    pub(crate) video_bps: Option<u32>,
    /// A new target for the low encoding, or `Some(None)`: no low encoding any more
    pub(crate) low_bps: Option<Option<u32>>,
    /// Peers to move to another encoding (each needs a keyframe of it)
    pub(crate) moves: Vec<(PeerId, Encoding)>,
    /// A new Opus bitrate
    pub(crate) audio_bps: Option<u32>,
}

#[cfg(test)]
impl Decision {
    /// Whether nothing changed
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A target and when it was set
#[derive(Debug, Clone, Copy, PartialEq)]
struct Target {
    bps: u32,
    at: Instant,
}

/// Decides the encoders' targets from the paths' estimates; see the [module docs](self)
#[derive(Debug, Clone)]
pub(crate) struct RateController {
    cfg: RateConfig,
    /// The configured video bitrate: the most the main encoding asks for
    max_video_bps: u32,
    /// The configured Opus bitrate and the header overhead of its packets
    max_audio_bps: u32,
    audio_overhead_bps: u32,
    main: Option<Target>,
    low: Option<Target>,
    low_peers: BTreeSet<PeerId>,
    low_changed: Option<Instant>,
    audio: Option<Target>,
}

impl RateController {
    /// A controller for video up to `max_video_bps` and Opus at `audio_bps` in frames of
    /// `audio_frame_ms`
    pub(crate) fn new(
        cfg: RateConfig,
        max_video_bps: u32,
        audio_bps: u32,
        audio_frame_ms: u32,
    ) -> Self {
        let packets_per_sec = 1000 / audio_frame_ms.max(1);
        Self {
            cfg,
            max_video_bps: max_video_bps.max(MIN_VIDEO_BPS),
            max_audio_bps: audio_bps,
            audio_overhead_bps: packets_per_sec * PACKET_OVERHEAD_BYTES * 8,
            main: None,
            low: None,
            low_peers: BTreeSet::new(),
            low_changed: None,
            audio: None,
        }
    }

    /// A controller for what `media` sends
    pub(crate) fn for_media(media: &MediaConfig) -> Self {
        Self::new(
            media.rate,
            media.video.bitrate_bps,
            media.opus.bitrate_bps,
            media.opus.frame_ms,
        )
    }

    /// What to ask str0m's estimator to probe up to: all the media we would send
    pub(crate) fn desired_bps(&self) -> u32 {
        self.estimate_for(self.max_video_bps + self.max_audio_bps + self.audio_overhead_bps)
    }

    /// Whether senders compete with loss-based flows (see [`RateConfig::compete`])
    pub(crate) fn competes(&self) -> bool {
        self.cfg.compete
    }

    /// The share of an estimate media may use
    pub(crate) fn usable(&self) -> f64 {
        self.cfg.usable
    }

    /// The estimate at and below which every target is at its floor (the least audio, its
    /// packet headers and the least video, with the headroom)
    pub(crate) fn floor_estimate(&self) -> u32 {
        self.estimate_for(self.least_audio_bps() + self.audio_overhead_bps + MIN_VIDEO_BPS)
    }

    /// The estimate whose usable share is `media` bit/s
    fn estimate_for(&self, media: u32) -> u32 {
        (f64::from(media) / self.cfg.usable) as u32
    }

    /// The least audio bitrate: the configured floor, or all of it for a low maximum
    fn least_audio_bps(&self) -> u32 {
        self.cfg.min_audio_bps.min(self.max_audio_bps)
    }

    /// The main encoding's target in force
    pub(crate) fn video_target(&self) -> Option<u32> {
        self.main.map(|t| t.bps)
    }

    /// The low encoding's target in force
    pub(crate) fn low_target(&self) -> Option<u32> {
        self.low.map(|t| t.bps)
    }

    /// The encoding a peer should receive
    pub(crate) fn encoding_of(&self, peer: &PeerId) -> Encoding {
        if self.low_peers.contains(peer) {
            Encoding::Low
        } else {
            Encoding::Main
        }
    }

    fn audio_bps(&self) -> u32 {
        self.audio.map_or(self.max_audio_bps, |t| t.bps)
    }

    /// Video str0m's pacer carries away on a path with `estimate`: it sends at
    /// [`PACING_FACTOR`] times the estimate, audio first
    pub(crate) fn video_drain(&self, estimate: u32) -> u32 {
        let paced = (f64::from(estimate) * PACING_FACTOR) as u32;
        // Never below the encoders' own floor: a path whose estimate barely covers the audio
        // (a receiver's request during a cellular fade) otherwise drained nothing, and every
        // frame after the next keyframe was skipped for as long as it lasted (12 s seen).
        paced
            .saturating_sub(self.audio_bps() + self.audio_overhead_bps)
            .max(MIN_VIDEO_BPS)
    }

    /// Video a path with `estimate` has room for, after headroom and audio
    fn budget(&self, estimate: u32) -> u32 {
        let usable = (f64::from(estimate) * self.cfg.usable) as u32;
        usable.saturating_sub(self.audio_bps() + self.audio_overhead_bps)
    }

    /// Re-decides at `now` from the estimates of the paths that receive video (peer and
    /// bit/s; peers without an estimate yet are left out); returns what changed
    pub(crate) fn update(&mut self, now: Instant, paths: &[(PeerId, u32)]) -> Decision {
        let mut d = Decision::default();
        if paths.is_empty() {
            // Nobody to send to: keep the targets for whoever comes next, forget the group.
            if !self.low_peers.is_empty() || self.low.is_some() {
                self.low_peers.clear();
                self.low = None;
                d.low_bps = Some(None);
            }
            return d;
        }
        self.update_audio(now, paths, &mut d);

        let mut sorted: Vec<(u32, &PeerId)> =
            // Beyond the configured bitrate a faster path gains nothing: capped before the
            // split, so that only a real loss of quality makes a second encode.
            paths
                .iter()
                .map(|(p, e)| (self.budget(*e).min(self.max_video_bps), p))
                .collect();
        sorted.sort();
        let low = self.split(now, &sorted);
        if low != self.low_peers {
            for (_, p) in &sorted {
                let (was, is) = (self.low_peers.contains(*p), low.contains(*p));
                if was != is {
                    let to = if is { Encoding::Low } else { Encoding::Main };
                    d.moves.push(((*p).clone(), to));
                }
            }
            // Peers that went away leave the group without a move.
            if sorted
                .iter()
                .any(|(_, p)| self.low_peers.contains(*p) != low.contains(*p))
            {
                self.low_changed = Some(now);
            }
            self.low_peers = low;
        }

        let group_min = |low: bool| {
            sorted
                .iter()
                .filter(|(_, p)| self.low_peers.contains(*p) == low)
                .map(|(b, _)| *b)
                .min()
        };
        let main_want = group_min(false)
            .expect("the main group is never empty; panic means bug")
            .clamp(MIN_VIDEO_BPS, self.max_video_bps);
        let low_want = group_min(true).map(|b| b.clamp(MIN_VIDEO_BPS, self.max_video_bps));
        let ceiling = self.max_video_bps;
        if let Some(bps) = step(&self.cfg, &mut self.main, main_want, ceiling, now) {
            d.video_bps = Some(bps);
        }
        match low_want {
            None => {
                if self.low.take().is_some() {
                    d.low_bps = Some(None);
                }
            }
            Some(want) if self.low.is_none() => {
                // A new low group starts at once, whatever the interval.
                self.low = Some(Target { bps: want, at: now });
                d.low_bps = Some(Some(want));
            }
            Some(want) => {
                if let Some(bps) = step(&self.cfg, &mut self.low, want, ceiling, now) {
                    d.low_bps = Some(Some(bps));
                }
            }
        }
        d
    }

    /// The low group for the sorted paths (slowest first); never all of them
    fn split(&self, now: Instant, sorted: &[(u32, &PeerId)]) -> BTreeSet<PeerId> {
        let n = sorted.len();
        if !self.cfg.low_encoding || n < 2 {
            return BTreeSet::new();
        }
        let present: BTreeSet<PeerId> = sorted
            .iter()
            .filter(|(_, p)| self.low_peers.contains(*p))
            .map(|(_, p)| (*p).clone())
            .collect();
        let settled = self
            .low_changed
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.min_interval);
        if !settled {
            // Within the interval the group keeps its members (less those that went away).
            return if present.len() < n {
                present
            } else {
                BTreeSet::new()
            };
        }
        let prefix = |k: usize| -> BTreeSet<PeerId> {
            sorted[..k].iter().map(|(_, p)| (*p).clone()).collect()
        };
        let ratio = |k: usize| f64::from(sorted[k].0) / f64::from(sorted[k - 1].0.max(1));
        // The current group, while it is still the slowest paths and still far enough below.
        let kc = present.len();
        if kc > 0 && kc < n && prefix(kc) == present && ratio(kc) >= self.cfg.low_leave_ratio {
            return present;
        }
        let (best, r) = (1..n)
            .map(|k| (k, ratio(k)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("n >= 2; panic means bug");
        // The main group must be worth a second encode.
        if r >= self.cfg.low_enter_ratio && sorted[best].0 >= MIN_MAIN_WITH_LOW_BPS {
            prefix(best)
        } else {
            BTreeSet::new()
        }
    }

    fn update_audio(&mut self, now: Instant, paths: &[(PeerId, u32)], d: &mut Decision) {
        let slowest = paths.iter().map(|(_, e)| *e).min().unwrap_or(u32::MAX);
        let room = ((f64::from(slowest) * self.cfg.usable) as u32)
            .saturating_sub(self.audio_overhead_bps + MIN_VIDEO_BPS);
        let want = room.clamp(self.least_audio_bps(), self.max_audio_bps);
        let before = self.audio_bps();
        // Audio steps down at once (it only does when video is at its floor already), and
        // back up no more than once per interval.
        let up_ok = self
            .audio
            .is_none_or(|t| now.saturating_duration_since(t.at) >= self.cfg.min_interval);
        let moved = (f64::from(want) < f64::from(before) * 0.95) || (want > before && up_ok);
        if moved {
            self.audio = Some(Target { bps: want, at: now });
            d.audio_bps = Some(want);
        }
    }
}

/// Moves a target toward `want` with hysteresis; the new target if it moved
fn step(
    cfg: &RateConfig,
    t: &mut Option<Target>,
    want: u32,
    ceiling: u32,
    now: Instant,
) -> Option<u32> {
    let Some(cur) = *t else {
        *t = Some(Target { bps: want, at: now });
        return Some(want);
    };
    let (want_f, cur_f) = (f64::from(want), f64::from(cur.bps));
    let settled = now.saturating_duration_since(cur.at) >= cfg.min_interval;
    let down = want_f < cur_f * (1.0 - cfg.deadband) && (settled || want_f < cur_f * cfg.emergency);
    let up = want_f > cur_f * (1.0 + cfg.deadband) && settled;
    // At the ceiling or the floor, the last gap closes too.
    let edge = settled && want != cur.bps && (want == MIN_VIDEO_BPS || want == ceiling);
    if down || up || edge {
        *t = Some(Target { bps: want, at: now });
        return Some(want);
    }
    None
}

/// Which encoding a peer is sent, and the one it moves to once that one has a keyframe
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Route {
    current: Encoding,
    pending: Option<Encoding>,
}

impl Route {
    /// The encoding whose keyframes this peer needs (the one it moves to, if it moves)
    pub(crate) fn wanted(&self) -> Encoding {
        self.pending.unwrap_or(self.current)
    }

    /// The encoding this peer is sent now
    pub(crate) fn current(&self) -> Encoding {
        self.current
    }

    /// Moves to `to` from its next keyframe on; true if a keyframe of it is needed
    pub(crate) fn move_to(&mut self, to: Encoding) -> bool {
        if self.current == to {
            self.pending = None;
            return false;
        }
        self.pending = Some(to);
        true
    }

    /// Picks the frame to send this peer among one capture's encodings (`(encoding,
    /// keyframe)` each): the keyframe of the encoding it moves to (and then it has moved),
    /// else the frame of its current encoding
    pub(crate) fn pick(&mut self, frames: &[(Encoding, bool)]) -> Option<usize> {
        if let Some(to) = self.pending {
            if let Some(i) = frames.iter().position(|&(e, key)| e == to && key) {
                self.current = to;
                self.pending = None;
                return Some(i);
            }
        }
        frames.iter().position(|&(e, _)| e == self.current)
    }
}

/// Bytes of IPv4 and UDP headers per datagram, charged by the path but not in its contents
const UDP_OVERHEAD_BYTES: usize = 28;

/// Length of one bucket of a [`SendMeter`]
const SEND_BUCKET: Duration = Duration::from_millis(100);

/// Buckets of a [`SendMeter`]: it measures over the last second
const SEND_BUCKETS: usize = 10;

/// Everything written towards one peer (media, retransmissions, padding and probes, RTCP,
/// data) over the last second, in 100 ms buckets
#[derive(Debug, Clone, Default)]
pub(crate) struct SendMeter {
    /// Start of the newest bucket
    start: Option<Instant>,
    /// Bytes per bucket, newest at `head`
    buckets: [u64; SEND_BUCKETS],
    head: usize,
    /// Since when the meter has counted
    since: Option<Instant>,
}

impl SendMeter {
    fn advance(&mut self, now: Instant) {
        let Some(start) = self.start else {
            self.start = Some(now);
            self.since = Some(now);
            return;
        };
        let steps = (now.saturating_duration_since(start).as_nanos() / SEND_BUCKET.as_nanos())
            .min(SEND_BUCKETS as u128 + 1) as usize;
        for _ in 0..steps.min(SEND_BUCKETS) {
            self.head = (self.head + 1) % SEND_BUCKETS;
            self.buckets[self.head] = 0;
        }
        if steps > 0 {
            let n = u32::try_from(
                now.saturating_duration_since(start).as_nanos() / SEND_BUCKET.as_nanos(),
            )
            .unwrap_or(u32::MAX);
            self.start = Some(start + SEND_BUCKET * n);
        }
    }

    /// Counts a datagram of `len` bytes sent at `now`
    pub(crate) fn add(&mut self, now: Instant, len: usize) {
        self.advance(now);
        self.buckets[self.head] += (len + UDP_OVERHEAD_BYTES) as u64;
    }

    /// The rate over the last second at `now`, bit/s (`None` before a second of counting)
    pub(crate) fn bps(&mut self, now: Instant) -> Option<u32> {
        self.advance(now);
        let since = self.since?;
        if now.saturating_duration_since(since) < SEND_BUCKET * SEND_BUCKETS as u32 {
            return None;
        }
        // The newest bucket is partly filled: the window is the nine full ones and it.
        let start = self.start?;
        let span = SEND_BUCKET * (SEND_BUCKETS as u32 - 1) + now.saturating_duration_since(start);
        let bytes: u64 = self.buckets.iter().sum();
        Some((bytes as f64 * 8.0 / span.as_secs_f64().max(1e-3)).min(f64::from(u32::MAX)) as u32)
    }
}

/// Least time between two updates of a [`PeerRate`]'s correction
const CORRECTION_INTERVAL: Duration = Duration::from_millis(500);

/// What the participant keeps per peer for rate adaptation
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerRate {
    /// The path's bandwidth estimate, bit/s
    pub(crate) estimate: Option<u32>,
    /// Everything sent towards the peer
    pub(crate) sent: SendMeter,
    /// The share of the estimate the targets are computed from (1 when what we send
    /// stays within the usable share; below when headers, retransmissions, probes and
    /// encoder overshoot make us send more than it), and when it last changed
    correction: Option<(f64, Instant)>,
    /// Whether the estimate changed since the participant last looked
    pub(crate) changed: bool,
    /// Which encoding the peer is sent
    pub(crate) route: Route,
    /// Video frames written to the peer
    pub(crate) frames_sent: u64,
    pub(crate) video_sent: RateMeter,
    pub(crate) audio_sent: RateMeter,
    /// The fraction of our audio the peer last reported lost (RTCP receiver reports)
    pub(crate) audio_loss: Option<f32>,
    /// The fraction of our video the peer last reported lost
    video_loss: Option<f32>,
    /// The peer's last request for less (REMB: its side of the path has a queue)
    remote_cap: Option<RemoteCap>,
    /// The desired bitrate str0m's estimator was last given
    desired: Option<u32>,
    /// The highest of str0m's estimates of the last [`DROP_WINDOW`]
    recent: WindowMax<u32>,
    /// After a drop, until str0m's estimate is back to [`DROP_SHARE`] of it: the highest
    /// estimate before the drop
    drop_peak: Option<u32>,
    /// Our round-trip probes of the path and the cap they put on the estimate
    pub(crate) pushback: Pushback,
    /// Since when str0m's estimate has stayed within 5% of the value here
    still: Option<(Instant, u32)>,
    /// Whether a loss-based flow shares the path, and the rate held against it
    pub(crate) compete: Competition,
}

/// What a path's estimate is made of at one moment (bit/s; see [`BitrateStats`])
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EstimateParts {
    /// str0m's own estimate
    pub(crate) sender: Option<u32>,
    /// The receiver's request in force
    pub(crate) receiver: Option<u32>,
    /// Our pushback's cap
    pub(crate) pushback: Option<u32>,
    /// What str0m was last told it may probe up to
    pub(crate) desired: Option<u32>,
    /// While competing with a loss-based flow, the target that replaces the rest
    pub(crate) competing: Option<u32>,
}

/// A fall of str0m's estimate below this share of its highest in [`DROP_WINDOW`] is a drop
/// of the path (str0m's own large-drop rule uses the same share)
const DROP_SHARE: f64 = 0.66;

/// How far back a drop is looked for
const DROP_WINDOW: Duration = Duration::from_secs(5);

/// After a drop, str0m may probe up to this many times its estimate (its probes go at up to
/// twice the desired bitrate: four times the estimate, as GoogCC's probes after a drop)
const DESIRED_OVER_ESTIMATE: f64 = 2.0;

/// ... but never below this
const MIN_DESIRED_BPS: u32 = 300_000;

/// How long an estimate stays put after a drop before the desired bitrate is nudged up, and
/// how long each nudge and each pause lasts (2 s brought back 169 of 192 directions of the
/// capacity step, 1 s 179: `docs/rate/README.md`)
const NUDGE_EVERY: Duration = Duration::from_secs(1);

/// How much a nudge raises the desired bitrate
const NUDGE: f64 = 1.25;

/// Reported loss from which str0m's estimate is loss-limited (its loss controller keeps
/// the estimate near the acknowledged rate; GoogCC holds between 2 and 10 %)
const LOSS_LIMITED: f32 = 0.02;

impl PeerRate {
    /// Rates of a new peer whose path `pushback` probes
    pub(crate) fn with_probes(pushback: Pushback) -> Self {
        Self {
            pushback,
            ..Self::default()
        }
    }

    /// The estimate the targets are computed from at `now`: str0m's, times a correction
    /// that closes the loop on what is actually sent
    ///
    /// The controller's budget leaves `usable` of the estimate to media; what leaves the
    /// participant also carries packet headers, retransmissions, feedback and encoder
    /// overshoot, which at low rates add up to more than the headroom. When everything sent
    /// over the last second exceeds the usable share of the estimate, the correction falls
    /// by the ratio (at most by a fifth per half second); when it is below, the correction
    /// grows back by a tenth per half second, up to 1.
    ///
    /// While the peer reports [`LOSS_LIMITED`] loss or more, the correction does not fall:
    /// str0m's loss controller then keeps the estimate near what is acknowledged, i.e. near
    /// what we send, so sending more than its usable share is no sign of overhead, and
    /// scaling it down would spiral (less sent, lower estimate, lower targets; on a lossy
    /// but uncongested path, video frames skipped for a budget the path did not need).
    ///
    /// Nor does it take the estimate below `floor`, the estimate at which every target is
    /// at its floor already: below it a lower correction changes nothing that is sent, it
    /// only delays the climb when the path recovers. At 130 kbit/s headers, feedback and
    /// probes alone exceeded the usable share, the correction sank to its least (0.3) and
    /// took 6 s to grow back after the path had (capacity step, seed 17).
    pub(crate) fn effective_estimate(
        &mut self,
        now: Instant,
        usable: f64,
        floor: u32,
    ) -> Option<u32> {
        let estimate = self.path_estimate(now)?;
        // A fresh request from the receiver already says what arrives: no correction down.
        let capped = self.remote_cap.is_some_and(|c| c.holding(now));
        let (mut corr, at) = self.correction.unwrap_or((1.0, now));
        let due = self
            .correction
            .is_none_or(|(_, t)| now.saturating_duration_since(t) >= CORRECTION_INTERVAL);
        if due {
            if let Some(sent) = self.sent.bps(now) {
                let allowed = f64::from(estimate) * usable;
                let sent = f64::from(sent);
                let lossy = [self.audio_loss, self.video_loss]
                    .into_iter()
                    .flatten()
                    .any(|l| l >= LOSS_LIMITED);
                if sent > allowed * 1.02 && !lossy && !capped {
                    corr *= (allowed / sent).max(0.8);
                } else if sent < allowed * 0.95 || lossy {
                    corr *= 1.1;
                }
                let least = (f64::from(floor) / f64::from(estimate.max(1))).clamp(0.3, 1.0);
                corr = corr.clamp(least, 1.0);
                tracing::debug!(
                    estimate,
                    sent = sent as u32,
                    correction = format!("{corr:.2}"),
                    lossy,
                    capped,
                    video_kbps = self.video_sent.kbps().map(|k| k as u32),
                    audio_kbps = self.audio_sent.kbps().map(|k| k as u32),
                    "rate: correction"
                );
            }
            self.correction = Some((corr, now));
        } else {
            self.correction = Some((corr, at));
        }
        Some((f64::from(estimate) * corr) as u32)
    }

    /// The path's estimate at `now`: str0m's, within what the receiver last asked for
    /// while that request stands (see [`RemoteCap`]: it grows back within seconds) and
    /// within what our round-trip probes allow (see [`Pushback`])
    ///
    /// While a loss-based flow shares the path, the rate held against it instead (see
    /// [`Competition`]): str0m's estimate, the receiver's requests and our pushback all see
    /// that flow's queue as ours.
    pub(crate) fn path_estimate(&self, now: Instant) -> Option<u32> {
        let estimate = self.path_estimate_uncapped(now);
        let estimate = match self.pushback.cap() {
            Some(cap) => Some(estimate.map_or(cap, |e| e.min(cap))),
            None => estimate,
        };
        self.compete.target().or(estimate)
    }

    /// The estimate's parts and the desired bitrate last set, for the stats
    pub(crate) fn estimate_parts(&self, now: Instant) -> EstimateParts {
        EstimateParts {
            sender: self.estimate,
            receiver: self.remote_cap.map(|c| c.limit(now)),
            pushback: self.pushback.cap(),
            desired: self.desired,
            competing: self.compete.target(),
        }
    }

    /// The path's estimate without our own pushback (see [`Pushback`])
    pub(crate) fn path_estimate_uncapped(&self, now: Instant) -> Option<u32> {
        let Some(cap) = self.remote_cap else {
            return self.estimate;
        };
        let limit = cap.limit(now);
        Some(self.estimate.map_or(limit, |e| e.min(limit)))
    }

    /// What str0m's estimator may probe up to at `now`: `full` (all the media we would
    /// send), below the receiver's standing request and our pushback; `Some` when that
    /// differs from what was last set
    ///
    /// After str0m's estimate dropped, and until it is back to [`DROP_SHARE`] of where it
    /// was, also not above [`DESIRED_OVER_ESTIMATE`] times that estimate: str0m's periodic
    /// probes while the sender is application-limited go at twice the desired bitrate, so
    /// with everything we would send desired (1.4 Mbit/s) they went at 2.8 Mbit/s into a
    /// path that had fallen to 500 kbit/s — a queue, a delay-based decrease to 0.85 of what
    /// was acknowledged. Near the estimate each probe still doubles it, as GoogCC's do. At
    /// the start of a call `full` stands, so the first probes reach the path's rate at once;
    /// a drop-free call never sees the limit.
    pub(crate) fn desired_change(&mut self, now: Instant, full: u32) -> Option<u32> {
        let want = self.remote_cap.map_or(full, |c| c.limit(now).min(full));
        // Nor above our own pushback: str0m's probes (padding) would fill the queue again.
        let want = self.pushback.cap().map_or(want, |c| c.min(want));
        // Nor, while competing, above the target: each reset of str0m's estimator starts
        // its initial probes again, at up to twice the desired bitrate, into a full queue.
        let want = self.compete.target().map_or(want, |t| t.min(want));
        let want = match self.estimate {
            Some(e) if self.drop_peak.is_some() => {
                let near = (f64::from(e) * DESIRED_OVER_ESTIMATE) as u32;
                let near = near.max(MIN_DESIRED_BPS);
                // An estimate that stays put below what we would send: every other
                // NUDGE_EVERY, a little more desired. A rise of the desired bitrate is what
                // makes str0m probe while we send below its estimate (its allocation probe).
                let still_for = self.still.map_or(Duration::ZERO, |(t, _)| now - t);
                let nudged = still_for >= NUDGE_EVERY
                    && (still_for.as_millis() / NUDGE_EVERY.as_millis()) % 2 == 1;
                if nudged {
                    want.min((f64::from(near) * NUDGE) as u32)
                } else {
                    want.min(near)
                }
            }
            _ => want,
        };
        // Small steps as the request grows back are not worth a call each.
        let set = self.desired.unwrap_or(full);
        let moved = want < set || f64::from(want) > f64::from(set) * 1.1 || want == full;
        if self.desired != Some(want) && moved {
            self.desired = Some(want);
            return Some(want);
        }
        None
    }

    /// Notes str0m's estimate `bps` at `now`: a drop when it is below [`DROP_SHARE`] of the
    /// highest of the last [`DROP_WINDOW`]
    fn note_drop(&mut self, now: Instant, bps: u32) {
        let highest = self.recent.push(now, bps, DROP_WINDOW);
        if f64::from(bps) < f64::from(highest) * DROP_SHARE {
            self.drop_peak = Some(self.drop_peak.map_or(highest, |p| p.max(highest)));
        } else if self
            .drop_peak
            .is_some_and(|p| f64::from(bps) >= f64::from(p) * DROP_SHARE)
        {
            self.drop_peak = None;
        }
    }

    /// A new estimate from str0m: its own (TWCC), or the receiver's request (REMB)
    pub(crate) fn handle_estimate(&mut self, kind: BweKind, now: Instant) {
        match kind {
            BweKind::Twcc { estimate, .. } => {
                let bps = estimate.as_u64().min(u64::from(u32::MAX)) as u32;
                self.note_drop(now, bps);
                if !self
                    .still
                    .is_some_and(|(_, e)| (f64::from(bps) / f64::from(e) - 1.0).abs() <= 0.05)
                {
                    self.still = Some((now, bps));
                }
                if self.estimate != Some(bps) {
                    self.estimate = Some(bps);
                    self.changed = true;
                }
            }
            BweKind::Remb { estimate, .. } => {
                let bps = estimate.as_u64().min(u64::from(u32::MAX)) as u32;
                // Two requests close together (one per media line): the lower stands.
                let keep = self
                    .remote_cap
                    .filter(|c| c.holding(now) && c.limit(now) <= bps);
                self.remote_cap = Some(keep.unwrap_or(RemoteCap::new(bps, now)));
                self.changed = true;
            }
            _ => {}
        }
    }

    /// str0m's send statistics of one media line
    pub(crate) fn handle_egress(
        &mut self,
        audio: Option<Mid>,
        video: Option<Mid>,
        st: &MediaEgressStats,
    ) {
        if Some(st.mid) == audio {
            self.audio_sent.sample(st.timestamp, st.bytes);
            if let Some(loss) = st.loss {
                self.audio_loss = Some(loss);
                self.compete.note_loss(st.timestamp, loss);
            }
        } else if Some(st.mid) == video {
            self.video_sent.sample(st.timestamp, st.bytes);
            if let Some(loss) = st.loss {
                self.video_loss = Some(loss);
                self.compete.note_loss(st.timestamp, loss);
            }
        }
    }
}

/// A send rate from str0m's cumulative byte counters, sampled once per stats interval
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RateMeter {
    last: Option<(Instant, u64)>,
    kbps: Option<f64>,
}

impl RateMeter {
    /// Records that `bytes` had been sent in total at `at`
    pub(crate) fn sample(&mut self, at: Instant, bytes: u64) {
        if let Some((t, b)) = self.last {
            let dt = at.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                self.kbps = Some(bytes.saturating_sub(b) as f64 * 8.0 / dt / 1000.0);
            }
        }
        self.last = Some((at, bytes));
    }

    /// The rate over the last interval, kbit/s
    pub(crate) fn kbps(&self) -> Option<f64> {
        self.kbps
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // reason: an arbitrary origin for virtual time

    use super::*;

    fn pid(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    /// A controller for 1.2 Mbit/s of video and 32 kbit/s of Opus in 20 ms packets; the
    /// figures below are worked out with a usable share of 0.9
    fn ctl() -> (RateController, Instant) {
        (
            RateController::new(usable_09(), 1_200_000, 32_000, 20),
            Instant::now(),
        )
    }

    fn usable_09() -> RateConfig {
        RateConfig {
            usable: 0.9,
            ..RateConfig::default()
        }
    }

    /// str0m's own estimate of `bps`
    fn twcc(bps: u64) -> BweKind {
        BweKind::Twcc {
            estimate: str0m::bwe::Bitrate::bps(bps),
            can_probe: true,
        }
    }

    fn at(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn the_main_target_follows_the_slowest_path_with_headroom_for_audio() {
        let (mut c, t0) = ctl();
        let d = c.update(t0, &[(pid("a"), 3_000_000), (pid("b"), 1_000_000)]);
        // 0.9 × 1 Mbit/s less 32 kbit/s of Opus and 24.8 kbit/s of its headers.
        assert_eq!(d.video_bps, Some(843_200));
        assert!(d.moves.is_empty(), "{d:?}");
        assert_eq!(d.low_bps, None);
        // Capped at the configured bitrate.
        let (mut c, t0) = ctl();
        let d = c.update(t0, &[(pid("a"), 30_000_000)]);
        assert_eq!(d.video_bps, Some(1_200_000));
        assert_eq!(
            c.desired_bps(),
            ((1_200_000 + 32_000 + 24_800) as f64 / 0.9) as u32
        );
    }

    #[test]
    fn small_moves_wait_big_falls_do_not() {
        let (mut c, t0) = ctl();
        let p = |e| [(pid("a"), e)];
        assert!(c.update(t0, &p(1_000_000)).video_bps.is_some());
        // Within the deadband: nothing.
        assert!(c.update(at(t0, 2.0), &p(1_050_000)).is_empty());
        // Up by more, but within the second since the last change: wait.
        c.update(at(t0, 3.0), &p(2_000_000));
        assert_eq!(c.update(at(t0, 3.5), &p(1_500_000)).video_bps, None);
        // A moderate fall within the second waits too...
        assert_eq!(c.update(at(t0, 3.6), &p(1_100_000)).video_bps, None);
        // ... a collapse does not.
        let d = c.update(at(t0, 3.7), &p(400_000));
        assert_eq!(d.video_bps, Some(303_200));
        // One change per second on the way back up.
        let mut changes = Vec::new();
        let mut t = 3.7;
        while t < 10.0 {
            t += 0.1;
            if let Some(bps) = c.update(at(t0, t), &p(2_000_000)).video_bps {
                changes.push((t, bps));
            }
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!((changes[0].0 - 4.7).abs() < 0.05, "{changes:?}");
        assert_eq!(c.video_target(), Some(1_200_000));
    }

    #[test]
    fn a_slow_peer_gets_the_low_encoding_and_the_rest_keep_their_quality() {
        let (mut c, t0) = ctl();
        let fast = [
            (pid("a"), 3_000_000),
            (pid("b"), 2_500_000),
            (pid("c"), 4_000_000),
        ];
        let mut paths = fast.to_vec();
        paths.push((pid("s"), 300_000));
        let d = c.update(t0, &paths);
        assert_eq!(d.video_bps, Some(1_200_000));
        assert_eq!(d.low_bps, Some(Some(213_200)));
        assert_eq!(d.moves, vec![(pid("s"), Encoding::Low)]);
        assert_eq!(c.encoding_of(&pid("s")), Encoding::Low);
        assert_eq!(c.encoding_of(&pid("a")), Encoding::Main);

        // The slow path improves a little: still far below, nothing moves.
        paths[3].1 = 600_000;
        let d = c.update(at(t0, 2.0), &paths);
        assert!(d.moves.is_empty(), "{d:?}");
        assert_eq!(d.low_bps, Some(Some(483_200)));
        // It catches up: back to the main encoding, no low encoding left.
        paths[3].1 = 2_000_000;
        let d = c.update(at(t0, 4.0), &paths);
        assert_eq!(d.moves, vec![(pid("s"), Encoding::Main)]);
        assert_eq!(d.low_bps, Some(None));
        assert_eq!(c.low_target(), None);
    }

    #[test]
    fn the_group_split_has_hysteresis_and_an_interval() {
        let (mut c, t0) = ctl();
        let mut paths = vec![(pid("a"), 2_000_000), (pid("s"), 700_000)];
        // Budgets 1200 k (capped) and 573 k: a ratio of 2.09 splits them.
        assert_eq!(c.update(t0, &paths).moves.len(), 1);
        // 1.42: between leave (1.4) and enter (2): stays split.
        paths[1].1 = 1_000_000;
        assert!(c.update(at(t0, 2.0), &paths).moves.is_empty());
        assert_eq!(c.encoding_of(&pid("s")), Encoding::Low);
        // Below 1.4: joins the main group again...
        paths[1].1 = 1_500_000;
        assert_eq!(
            c.update(at(t0, 3.0), &paths).moves,
            vec![(pid("s"), Encoding::Main)]
        );
        // ... and a fall right after waits for the interval before splitting again.
        paths[1].1 = 500_000;
        let d = c.update(at(t0, 3.5), &paths);
        assert!(d.moves.is_empty(), "{d:?}");
        let d = c.update(at(t0, 4.0), &paths);
        assert_eq!(d.moves, vec![(pid("s"), Encoding::Low)]);
    }

    #[test]
    fn no_low_encoding_when_it_is_off_or_not_worth_it() {
        let cfg = RateConfig {
            low_encoding: false,
            ..usable_09()
        };
        let mut c = RateController::new(cfg, 1_200_000, 32_000, 20);
        let t0 = Instant::now();
        let d = c.update(t0, &[(pid("a"), 3_000_000), (pid("s"), 300_000)]);
        assert!(d.moves.is_empty() && d.low_bps.is_none(), "{d:?}");
        assert_eq!(d.video_bps, Some(213_200));
        // Both paths slow: the faster one would get less than twice the floor.
        let (mut c, t0) = ctl();
        let d = c.update(t0, &[(pid("a"), 200_000), (pid("s"), 90_000)]);
        assert!(d.moves.is_empty(), "{d:?}");
    }

    #[test]
    fn audio_is_the_last_to_go() {
        let (mut c, t0) = ctl();
        // 200 kbit/s: video at its floor or above, Opus untouched.
        let d = c.update(t0, &[(pid("a"), 200_000)]);
        assert_eq!(d.audio_bps, None);
        // 100 kbit/s: 90 usable, less 24.8 of headers and 50 of video: 15.2 -> the floor.
        let d = c.update(at(t0, 1.0), &[(pid("a"), 100_000)]);
        assert_eq!(d.audio_bps, Some(16_000));
        assert_eq!(d.video_bps, Some(MIN_VIDEO_BPS));
        // Back up after the interval.
        assert_eq!(
            c.update(at(t0, 1.5), &[(pid("a"), 1_000_000)]).audio_bps,
            None
        );
        assert_eq!(
            c.update(at(t0, 2.5), &[(pid("a"), 1_000_000)]).audio_bps,
            Some(32_000)
        );
    }

    #[test]
    fn a_peer_switches_encoding_on_a_keyframe_of_the_new_one() {
        let mut r = Route::default();
        let both = |mk: bool, lk: bool| [(Encoding::Main, mk), (Encoding::Low, lk)];
        assert_eq!(r.pick(&both(false, false)), Some(0));
        assert!(r.move_to(Encoding::Low));
        assert_eq!(r.wanted(), Encoding::Low);
        // No low keyframe yet: still the main encoding.
        assert_eq!(r.pick(&both(true, false)), Some(0));
        assert_eq!(r.current(), Encoding::Main);
        // The keyframe: switch, and only one frame for this capture.
        assert_eq!(r.pick(&both(false, true)), Some(1));
        assert_eq!(r.current(), Encoding::Low);
        assert_eq!(r.pick(&both(false, false)), Some(1));
        // The low encoding produced nothing for a capture (frame-rate cap): nothing.
        assert_eq!(r.pick(&[(Encoding::Main, false)]), None);
        // Moving back before it switched cancels the move.
        assert!(r.move_to(Encoding::Main));
        assert!(!r.move_to(Encoding::Low));
        assert_eq!(r.wanted(), Encoding::Low);
    }

    #[test]
    fn the_send_meter_counts_the_last_second_with_headers() {
        let t0 = Instant::now();
        let mut m = SendMeter::default();
        // 100 datagrams of 97 bytes (125 with IPv4 and UDP) per second: 100 kbit/s.
        for i in 0..300 {
            m.add(at(t0, f64::from(i) * 0.01), 97);
            if i == 50 {
                assert_eq!(m.bps(at(t0, 0.5)), None, "less than a second counted");
            }
        }
        let bps = m.bps(at(t0, 3.0)).unwrap();
        assert!((95_000..=105_000).contains(&bps), "{bps}");
        // Silence: the window empties.
        assert_eq!(m.bps(at(t0, 10.0)), Some(0));
    }

    #[test]
    fn the_correction_closes_the_loop_on_what_is_sent() {
        let t0 = Instant::now();
        let mut r = PeerRate {
            estimate: Some(200_000),
            ..PeerRate::default()
        };
        // Sending 250 kbit/s on an estimate of 200 (180 usable): the estimate used falls,
        // a fifth per half second at most.
        let mut t = 0.0;
        let mut used = Vec::new();
        while t < 3.0 {
            // Five datagrams of 625 bytes (with headers) per 100 ms.
            for _ in 0..5 {
                r.sent.add(at(t0, t), 597);
            }
            t += 0.1;
            used.push(r.effective_estimate(at(t0, t), 0.9, 0).unwrap());
        }
        let last = *used.last().unwrap();
        assert!((60_000..150_000).contains(&last), "{used:?}");
        // Sending little: back up to the estimate, a tenth per half second.
        while t < 12.0 {
            r.sent.add(at(t0, t), 97);
            t += 0.1;
            used.push(r.effective_estimate(at(t0, t), 0.9, 0).unwrap());
        }
        assert_eq!(*used.last().unwrap(), 200_000, "{used:?}");
    }

    #[test]
    fn the_correction_stops_where_every_target_is_at_its_floor() {
        // 130 kbit/s estimated, 150 sent: headers, feedback and probes alone are more than
        // the usable share, and the targets are at their floors (about 101 kbit/s of
        // estimate for Opus at 16 kbit/s with headers and video at 50).
        let (ctl, t0) = ctl();
        let floor = ctl.floor_estimate();
        assert!((95_000..110_000).contains(&floor), "{floor}");
        let mut r = PeerRate {
            estimate: Some(130_000),
            ..PeerRate::default()
        };
        let mut t = 0.0;
        let mut used = 0;
        while t < 10.0 {
            for _ in 0..3 {
                r.sent.add(at(t0, t), 597);
            }
            t += 0.1;
            used = r.effective_estimate(at(t0, t), 0.9, floor).unwrap();
        }
        assert!(floor - used <= 1, "{used} against a floor of {floor}");
        // The path recovers: str0m's estimate goes to 2 Mbit/s and the estimate used
        // follows within a second and a half, not the 6 s from a correction of 0.3.
        r.estimate = Some(2_000_000);
        let recovered = (1..=30)
            .map(|i| t + f64::from(i) * 0.1)
            .find(|&s| {
                r.sent.add(at(t0, s), 597);
                r.effective_estimate(at(t0, s), 0.9, floor).unwrap() >= 1_500_000
            })
            .unwrap_or(f64::INFINITY);
        assert!(recovered - t <= 1.5, "{:.1} s", recovered - t);
    }

    #[test]
    fn a_loss_limited_estimate_is_not_corrected_down() {
        // 5 % of our media reported lost: str0m's estimate follows what is acknowledged, so
        // sending above its usable share is no overhead to correct for.
        let t0 = Instant::now();
        let mut r = PeerRate {
            estimate: Some(200_000),
            video_loss: Some(0.05),
            ..PeerRate::default()
        };
        let mut t = 0.0;
        while t < 3.0 {
            for _ in 0..5 {
                r.sent.add(at(t0, t), 597);
            }
            t += 0.1;
            assert_eq!(r.effective_estimate(at(t0, t), 0.9, 0), Some(200_000));
        }
        // Below the threshold, the same sending is corrected.
        r.video_loss = Some(0.01);
        while t < 6.0 {
            for _ in 0..5 {
                r.sent.add(at(t0, t), 597);
            }
            t += 0.1;
            r.effective_estimate(at(t0, t), 0.9, 0);
        }
        assert!(r.effective_estimate(at(t0, t), 0.9, 0).unwrap() < 150_000);
    }

    #[test]
    fn video_drains_at_the_pacing_rate_less_audio() {
        let (c, _) = ctl();
        // 1.1 × 200 kbit/s less 32 kbit/s of Opus and 24.8 kbit/s of its headers.
        assert_eq!(c.video_drain(200_000), 163_200);
        assert_eq!(c.video_drain(10_000), MIN_VIDEO_BPS);
    }

    #[test]
    fn meter_rates_from_counters() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        m.sample(t0, 1000);
        assert_eq!(m.kbps(), None);
        m.sample(at(t0, 0.5), 63_500);
        assert_eq!(m.kbps(), Some(1000.0));
    }

    #[test]
    fn after_a_drop_str0m_probes_near_its_estimate() {
        let t0 = Instant::now();
        let full = 1_400_000;
        let mut r = PeerRate::default();
        // A call ramping up: everything we would send is desired, so that the first probes
        // find the path's rate.
        for (i, bps) in [300_000, 900_000, 1_800_000, 2_500_000]
            .into_iter()
            .enumerate()
        {
            r.handle_estimate(twcc(bps), at(t0, i as f64));
            r.desired_change(at(t0, i as f64), full);
        }
        assert_eq!(r.desired, Some(full));
        // The path falls: str0m's estimate to 600 kbit/s within 5 s of 2.5 Mbit/s.
        r.handle_estimate(twcc(600_000), at(t0, 5.0));
        assert_eq!(r.desired_change(at(t0, 5.0), full), Some(1_200_000));
        r.handle_estimate(twcc(200_000), at(t0, 6.0));
        assert_eq!(r.desired_change(at(t0, 6.0), full), Some(400_000));
        // Never below the least desired.
        r.handle_estimate(twcc(100_000), at(t0, 7.0));
        assert_eq!(r.desired_change(at(t0, 7.0), full), Some(MIN_DESIRED_BPS));
        // It follows the estimate back up, as long as it is short of where it was...
        r.handle_estimate(twcc(450_000), at(t0, 12.0));
        assert_eq!(r.desired_change(at(t0, 12.0), full), Some(900_000));
        r.handle_estimate(twcc(1_200_000), at(t0, 25.0));
        assert_eq!(r.desired_change(at(t0, 25.0), full), Some(full));
        // (a limit of 2.4 Mbit/s is above everything we would send anyway)
        r.handle_estimate(twcc(1_500_000), at(t0, 26.0));
        assert_eq!(r.desired_change(at(t0, 26.0), full), None);
        // ... and once it is back to two thirds of the 2.5 Mbit/s before the drop, the limit
        // is gone for good: a gentle decrease (a delay-based 0.85) is no drop.
        r.handle_estimate(twcc(1_700_000), at(t0, 27.0));
        r.handle_estimate(twcc(1_450_000), at(t0, 28.0));
        assert_eq!(r.desired_change(at(t0, 28.0), full), None);
        assert!(r.drop_peak.is_none());
    }

    #[test]
    fn an_estimate_that_stays_put_after_a_drop_gets_nudged() {
        let t0 = Instant::now();
        let full = 1_400_000;
        let mut r = PeerRate::default();
        r.handle_estimate(twcc(2_500_000), t0);
        r.desired_change(t0, full);
        // A drop to 350 kbit/s, where str0m's estimate then stays (within 5%).
        r.handle_estimate(twcc(350_000), at(t0, 1.0));
        assert_eq!(r.desired_change(at(t0, 1.0), full), Some(700_000));
        r.handle_estimate(twcc(360_000), at(t0, 1.5));
        assert_eq!(r.desired_change(at(t0, 1.5), full), None);
        // A second still: a quarter more desired (a rise is what makes str0m probe while we
        // send below its estimate), for a second, then back, and again.
        assert_eq!(r.desired_change(at(t0, 2.0), full), Some(900_000));
        assert_eq!(r.desired_change(at(t0, 2.5), full), None);
        assert_eq!(r.desired_change(at(t0, 3.0), full), Some(720_000));
        assert_eq!(r.desired_change(at(t0, 4.0), full), Some(900_000));
        // An estimate that moves starts the count again.
        r.handle_estimate(twcc(500_000), at(t0, 4.5));
        assert_eq!(r.desired_change(at(t0, 4.5), full), Some(1_000_000));
        assert_eq!(r.desired_change(at(t0, 5.0), full), None);
        assert_eq!(r.desired_change(at(t0, 5.5), full), Some(1_250_000));
    }

    /// While competing with a loss-based flow, the target is the path's estimate, whatever
    /// str0m, the receiver or our pushback say, and str0m may probe no higher than it (each
    /// reset of its estimator starts its initial probes again)
    #[test]
    fn competing_sets_the_estimate_and_caps_the_desired_bitrate() {
        let t0 = Instant::now();
        let full = 2_400_000;
        let mut r = PeerRate::default();
        r.handle_estimate(twcc(110_000), t0);
        assert_eq!(r.desired_change(t0, full), Some(full));
        // str0m at our floor under a standing 80 ms queue for 6 s: competing begins at
        // str0m's estimate and grows (nothing lost, 150 kbit/s sent).
        let view = crate::compete::PathView {
            standing: Some(Duration::from_millis(80)),
            recent: Some(Duration::from_millis(80)),
            estimate: Some(110_000),
            sent: Some(150_000),
            floor: 100_000,
        };
        for i in 0..=24 {
            let now = at(t0, f64::from(i) * 0.25);
            r.compete.note_loss(now, 0.0);
            r.compete.update(now, view);
        }
        let target = r.compete.target().unwrap();
        assert!(target > 110_000 && target <= 235_000, "{target}");
        assert_eq!(r.path_estimate(at(t0, 6.0)), Some(target));
        assert_eq!(r.desired_change(at(t0, 6.0), full), Some(target));
        // The queue drains (the other flow left): str0m's estimate and the full desired
        // bitrate again.
        let drained = crate::compete::PathView {
            standing: Some(Duration::from_millis(5)),
            ..view
        };
        r.compete.update(at(t0, 7.0), drained);
        assert_eq!(r.path_estimate(at(t0, 7.0)), Some(110_000));
        assert_eq!(r.desired_change(at(t0, 7.0), full), Some(full));
    }
}
