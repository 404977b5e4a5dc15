//! Scenario files (TOML): hosts, links, clocks, timeline, traffic, duration and seed
//!
//! The format is documented with examples in `sim/README.md`. Parsing is strict: unknown
//! keys, values out of range and names that match no host are errors that name the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshrtc::codec::VideoCodec;
use meshrtc::ice::{IceServer, IceTransportPolicy};
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::{CandidatePolicy, Config};
use serde::Deserialize;

use crate::clock::Clock;
use crate::cross::{CrossModel, CrossTrafficConfig, SharedBottleneckConfig};
use crate::link::{Jitter, LinkConfig, Loss, QueueLimit, Rate};
use crate::media::{MediaSource, MediaStreamConfig};
use crate::nat::{NatConfig, NatFiltering, NatMapping, TurnServerSpec};
use crate::report::{self, Report, Series};
use crate::sim::{Action, FlowConfig, HostId, HostOptions, Sim, SimConfig};
use crate::trace::{resolve, CapacityTrace, PacketTrace};
use crate::Error;

/// A parsed scenario file
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name in reports (defaults to the file's stem)
    #[serde(default)]
    pub name: Option<String>,
    /// Free text
    #[serde(default)]
    pub description: Option<String>,
    /// Seed of every random choice (overridden by `--seed`)
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Virtual seconds to run
    pub duration_s: f64,
    /// The room every host joins
    #[serde(default = "default_room")]
    pub room: String,
    /// One-way delay between a host and the signaling server, in milliseconds
    #[serde(default = "default_signal_latency")]
    pub signal_latency_ms: f64,
    /// Seconds the signaling server holds a dropped peer's place for its resume
    /// (signaling.md version 2); 0, the default, reports it gone at once as version 1 did
    #[serde(default)]
    pub resume_grace_s: f64,
    /// Settings of every participant
    #[serde(default)]
    pub participant: ParticipantSpec,
    /// Public STUN/TURN servers (`[[servers]]`), named by hosts' `ice_servers`
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
    /// The hosts, in order
    pub hosts: Vec<HostSpec>,
    /// The link every directed pair of hosts starts with
    #[serde(default)]
    pub link: LinkSpec,
    /// Per-pair changes to that link
    #[serde(default)]
    pub links: Vec<LinkOverride>,
    /// Changes during the run
    #[serde(default)]
    pub timeline: Vec<TimelineEvent>,
    /// Measured data flows
    #[serde(default)]
    pub traffic: Vec<TrafficSpec>,
    /// Measured media streams (Opus audio, H.264/VP8/VP9 video)
    #[serde(default)]
    pub media: Vec<MediaSpec>,
    /// Queues several links share, in front of their own stages
    #[serde(default)]
    pub bottlenecks: Vec<BottleneckSpec>,
    /// Competing traffic into a shared bottleneck
    #[serde(default)]
    pub cross_traffic: Vec<CrossTrafficSpec>,
    /// The folder relative trace paths are resolved against (the scenario file's)
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_seed() -> u64 {
    1
}

fn default_room() -> String {
    "room".into()
}

fn default_signal_latency() -> f64 {
    5.0
}

/// Settings of every participant
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantSpec {
    /// Seconds a peer may take to connect before a full reconnect is tried
    pub connect_timeout_s: Option<f64>,
    /// Seconds a broken path waits before the first ICE restart
    pub restart_grace_s: Option<f64>,
    /// Seconds ICE restarts may try before a full reconnect
    pub reconnect_after_s: Option<f64>,
    /// Bandwidth estimation and rate adaptation (default false, as the core's)
    pub rate_adaptation: Option<bool>,
    /// A second, lower video encoding for peers far below the rest (default true)
    pub low_encoding: Option<bool>,
    /// Receivers ask senders for less when a queue builds (REMB; default true; browsers
    /// do not)
    pub remb: Option<bool>,
    /// Senders probe round trips and push back before the estimate falls (default true)
    pub pushback: Option<bool>,
    /// Senders let loss set their rate while a loss-based flow keeps a queue standing on
    /// the path (default false, as the core's)
    pub compete: Option<bool>,
}

/// A queue that several directed links share
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BottleneckSpec {
    /// Its name, which cross traffic refers to
    pub name: String,
    /// Its rate, kbit/s (> 0)
    pub rate_kbps: f64,
    /// Drop-tail limit in bytes (default 0: unlimited)
    #[serde(default)]
    pub queue_bytes: usize,
    /// The links through it
    pub links: Vec<PairSpec>,
}

/// A directed pair of hosts (`*` for every host)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSpec {
    /// Sending host
    pub from: String,
    /// Receiving host
    pub to: String,
}

/// Competing traffic into a shared bottleneck
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossTrafficSpec {
    /// Its name in reports
    #[serde(default = "default_cross")]
    pub name: String,
    /// The bottleneck it goes through
    pub bottleneck: String,
    /// `cbr` (constant rate) or `aimd` (a TCP Reno flow)
    pub model: CrossModelSpec,
    /// `cbr`: its rate; `aimd`: the rate it starts at (kbit/s)
    pub rate_kbps: f64,
    /// `aimd`: the round trip without queueing, milliseconds (default 40)
    pub rtt_ms: Option<f64>,
    /// Bytes per packet (default 1200)
    #[serde(default = "default_packet")]
    pub packet_bytes: usize,
    /// First packet, seconds
    #[serde(default)]
    pub start_s: f64,
    /// No packet from then on, seconds
    pub stop_s: Option<f64>,
}

/// How cross traffic sends
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrossModelSpec {
    /// Constant rate
    Cbr,
    /// Additive increase, multiplicative decrease
    Aimd,
}

fn default_cross() -> String {
    "cross".into()
}

fn default_packet() -> usize {
    1200
}

/// A public STUN/TURN server host (`turn-server-proto` in virtual time)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// The name hosts use in `ice_servers`
    pub name: String,
    /// The TURN username it accepts (long-term credentials)
    #[serde(default = "default_turn_user")]
    pub username: String,
    /// The TURN password
    #[serde(default = "default_turn_user")]
    pub password: String,
}

fn default_turn_user() -> String {
    "sim".into()
}

/// A NAT in front of a host, by its common name (RFC 4787 behaviours)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatSpec {
    /// No NAT: the host's address is public
    None,
    /// Endpoint-independent mapping and filtering
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering
    PortRestrictedCone,
    /// Address-and-port-dependent mapping and filtering
    Symmetric,
}

impl NatSpec {
    /// The NAT's behaviour (`None` for no NAT)
    pub fn config(self) -> Option<NatConfig> {
        Some(match self {
            Self::None => return None,
            Self::FullCone => NatConfig::full_cone(),
            Self::RestrictedCone => NatConfig::restricted_cone(),
            Self::PortRestrictedCone => NatConfig::port_restricted_cone(),
            Self::Symmetric => NatConfig::symmetric(),
        })
    }
}

/// Which candidates a host offers (`iceTransportPolicy`)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IcePolicySpec {
    /// Host, server-reflexive and relayed
    All,
    /// Relayed only
    Relay,
}

/// One host, or `count` hosts named `name0`, `name1`, …
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// The host's name, which is also its peer id (the prefix, with `count`)
    pub name: String,
    /// Make this many hosts, numbered from 0
    #[serde(default)]
    pub count: Option<usize>,
    /// Clock drift in parts per million (positive: fast), within ±2000
    #[serde(default)]
    pub ppm: f64,
    /// Clock offset in milliseconds (either sign)
    #[serde(default)]
    pub offset_ms: f64,
    /// Whether the host joins the room at `join_s` (else only by a timeline `join`)
    #[serde(default = "yes")]
    pub join: bool,
    /// When the host joins the room, in seconds
    #[serde(default)]
    pub join_s: f64,
    /// With `count`: milliseconds between consecutive hosts' joins
    #[serde(default)]
    pub stagger_ms: f64,
    /// The NAT in front of the host (default `none`)
    #[serde(default)]
    pub nat: Option<NatSpec>,
    /// Overrides the NAT's filtering (`endpoint-independent`, `address-dependent`,
    /// `address-and-port-dependent`)
    #[serde(default)]
    pub nat_filtering: Option<NatFiltering>,
    /// Overrides the NAT's mapping (`endpoint-independent`, `address-and-port-dependent`)
    #[serde(default)]
    pub nat_mapping: Option<NatMapping>,
    /// Seconds a NAT mapping lives after the last datagram out (default 120)
    #[serde(default)]
    pub nat_timeout_s: Option<f64>,
    /// Servers (names from `[[servers]]`) the host uses, each as `stun:` and `turn:` with
    /// the server's credentials
    #[serde(default)]
    pub ice_servers: Vec<String>,
    /// `all` (default) or `relay`
    #[serde(default)]
    pub ice_policy: Option<IcePolicySpec>,
}

impl HostSpec {
    /// The host's NAT, with its overrides
    fn nat_config(&self) -> Result<Option<NatConfig>, Error> {
        let base = self.nat.unwrap_or(NatSpec::None).config();
        let overridden = self.nat_filtering.is_some()
            || self.nat_mapping.is_some()
            || self.nat_timeout_s.is_some();
        let Some(mut c) = base else {
            if overridden {
                return Err(Error::Config(format!(
                    "host {:?}: nat_filtering, nat_mapping and nat_timeout_s need a nat",
                    self.name
                )));
            }
            return Ok(None);
        };
        if let Some(f) = self.nat_filtering {
            c.filtering = f;
        }
        if let Some(m) = self.nat_mapping {
            c.mapping = m;
        }
        if let Some(t) = self.nat_timeout_s {
            c.timeout = secs(positive("nat_timeout_s", t)?);
        }
        Ok(Some(c))
    }
}

/// A link description; every field is optional and overrides what it is applied to
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Base one-way delay, milliseconds
    pub latency_ms: Option<f64>,
    /// Jitter shape and size
    pub jitter: Option<JitterSpec>,
    /// Correlation of consecutive packets' jitter (0..1)
    pub delay_correlation: Option<f64>,
    /// Whether packets keep their order through the delay stage (default true)
    pub keep_order: Option<bool>,
    /// Random loss model
    pub loss: Option<LossSpec>,
    /// Duplication probability (0..1)
    pub duplicate: Option<f64>,
    /// Probability (0..1) that a packet is held back and overtaken
    pub reorder: Option<f64>,
    /// How long a reordered packet is held back, milliseconds
    pub reorder_delay_ms: Option<f64>,
    /// Bottleneck rate in kbit/s (0: unlimited); replaces a capacity trace
    pub rate_kbps: Option<f64>,
    /// Mahimahi capacity trace file (relative to the scenario file); replaces `rate_kbps`
    pub capacity_trace: Option<String>,
    /// A synthetic cellular capacity trace ([`CapacityTrace::cellular`]); replaces
    /// `rate_kbps` and `capacity_trace`
    pub cellular: Option<CellularSpec>,
    /// Drop-tail limit in bytes (0: unlimited)
    pub queue_bytes: Option<usize>,
    /// Drop-tail limit in packets (0: unlimited)
    pub queue_packets: Option<usize>,
    /// meshrtc packet trace file (relative to the scenario file); `""` removes it
    pub delay_trace: Option<String>,
}

/// A synthetic cellular capacity: `{ mean_kbps = 2000, seed = 3, period_s = 120 }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellularSpec {
    /// Mean capacity, kbit/s
    pub mean_kbps: f64,
    /// The trace's own seed (default 1), independent of the scenario's
    #[serde(default = "default_cellular_seed")]
    pub seed: u64,
    /// Length before it repeats, seconds (default 120)
    #[serde(default = "default_cellular_period")]
    pub period_s: f64,
}

fn default_cellular_seed() -> u64 {
    1
}

fn default_cellular_period() -> f64 {
    120.0
}

/// Jitter in a scenario: `{ shape = "normal", std_ms = 5 }` and so on
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "shape", rename_all = "kebab-case", deny_unknown_fields)]
pub enum JitterSpec {
    /// No jitter
    None,
    /// Uniform within ±`max_ms`
    Uniform {
        /// Half width, milliseconds
        max_ms: f64,
    },
    /// Normal with standard deviation `std_ms`
    Normal {
        /// Standard deviation, milliseconds
        std_ms: f64,
    },
    /// One-sided exponential with mean `mean_ms`
    Exponential {
        /// Mean, milliseconds
        mean_ms: f64,
    },
    /// One-sided Pareto (Lomax) with mean `mean_ms` and tail index `alpha` (> 1)
    Pareto {
        /// Mean, milliseconds
        mean_ms: f64,
        /// Tail index
        alpha: f64,
    },
}

/// Loss in a scenario: `{ model = "random", rate = 0.05 }` or
/// `{ model = "gilbert-elliott", p = 0.01, r = 0.3 }`
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LossSpec {
    /// No loss
    None,
    /// Independent (or correlated) random loss
    Random {
        /// Loss probability
        rate: f64,
        /// Correlation with the previous draw (default 0)
        #[serde(default)]
        correlation: f64,
    },
    /// Gilbert–Elliott bursts
    GilbertElliott {
        /// GOOD → BAD probability per packet
        p: f64,
        /// BAD → GOOD probability per packet (mean burst 1/r)
        r: f64,
        /// Loss probability in BAD (default 1)
        #[serde(default = "one")]
        loss_in_bad: f64,
        /// Loss probability in GOOD (default 0)
        #[serde(default)]
        loss_in_good: f64,
    },
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

/// A change to the link between two hosts
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOverride {
    /// Sending host (`*`: every host)
    pub from: String,
    /// Receiving host (`*`: every host)
    pub to: String,
    /// Apply to the reverse direction too
    #[serde(default)]
    pub both_ways: bool,
    /// The fields to change
    pub link: LinkSpec,
}

/// One timeline event: `at_s` and the keys of an [`ActionSpec`]
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct TimelineEvent {
    /// When, in seconds
    pub at_s: f64,
    /// What
    pub action: ActionSpec,
}

impl TryFrom<toml::Table> for TimelineEvent {
    type Error = String;

    fn try_from(mut table: toml::Table) -> Result<Self, Self::Error> {
        // serde's `flatten` cannot be combined with `deny_unknown_fields`, so `at_s` is taken
        // out here and the rest must be exactly one action.
        let at_s = match table.remove("at_s") {
            Some(toml::Value::Float(v)) => v,
            Some(toml::Value::Integer(v)) => v as f64,
            Some(_) => return Err("timeline: at_s must be a number".into()),
            None => return Err("timeline: an event needs at_s".into()),
        };
        let action = ActionSpec::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("timeline event at {at_s} s: {}", one_line(&e.to_string())))?;
        Ok(Self { at_s, action })
    }
}

/// What a timeline event does
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ActionSpec {
    /// Change a link's fields (for `duration_s`, then change them back)
    SetLink {
        /// Sending host (`*`: every host)
        from: String,
        /// Receiving host (`*`: every host)
        to: String,
        /// Apply to the reverse direction too
        #[serde(default)]
        both_ways: bool,
        /// Revert after this many seconds
        #[serde(default)]
        duration_s: Option<f64>,
        /// The fields to change
        link: Box<LinkSpec>,
    },
    /// Cut the link between two hosts, both ways (for `duration_s`, else until `repair`)
    Outage {
        /// One host (`*`: every host)
        from: String,
        /// The other host (`*`: every host)
        to: String,
        /// Cut only `from → to`
        #[serde(default)]
        one_way: bool,
        /// Repair after this many seconds
        #[serde(default)]
        duration_s: Option<f64>,
    },
    /// Repair a cut link, both ways
    Repair {
        /// One host
        from: String,
        /// The other host
        to: String,
        /// Repair only `from → to`
        #[serde(default)]
        one_way: bool,
    },
    /// Cut a host off from everything (signaling frames are held, as TCP would)
    Isolate {
        /// The host
        host: String,
        /// Reconnect after this many seconds
        #[serde(default)]
        duration_s: Option<f64>,
    },
    /// Reconnect an isolated host
    Reconnect {
        /// The host
        host: String,
    },
    /// The host joins the room (again, with a fresh participant, if it left)
    Join {
        /// The host
        host: String,
    },
    /// The host leaves the room
    Leave {
        /// The host
        host: String,
    },
    /// The signaling server restarts: every connection drops, every room is forgotten
    RestartServer,
    /// Cut a host's signaling only (for `duration_s`, else until `restore-signaling`); its
    /// media paths stay
    CutSignaling {
        /// The host
        host: String,
        /// Restore after this many seconds
        #[serde(default)]
        duration_s: Option<f64>,
    },
    /// Let a host reach the signaling server again
    RestoreSignaling {
        /// The host
        host: String,
    },
    /// The host moves to a new address (a network change)
    MoveHost {
        /// The host
        host: String,
    },
}

/// A measured flow of data messages
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// Stream name in the report
    #[serde(default = "default_stream")]
    pub name: String,
    /// Sending host (`*`: every host)
    pub from: String,
    /// Receiving host (`*`: every host)
    pub to: String,
    /// Messages per second
    pub rate_hz: f64,
    /// Message size in bytes (at least 24)
    #[serde(default = "default_size")]
    pub size_bytes: usize,
    /// First message, seconds
    #[serde(default)]
    pub start_s: f64,
    /// No message at or after this time, seconds
    #[serde(default)]
    pub stop_s: Option<f64>,
    /// A message whose one-way delay exceeds this is late, milliseconds
    #[serde(default = "default_late")]
    pub late_ms: f64,
}

/// Audio or video
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKindSpec {
    /// Opus audio
    Audio,
    /// H.264, VP8 or VP9 video
    Video,
}

/// A codec name
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecSpec {
    /// Opus (audio)
    Opus,
    /// H.264 constrained baseline (video)
    H264,
    /// VP8 (video)
    Vp8,
    /// VP9 (video)
    Vp9,
    /// Synthetic frames of realistic size and timing (audio or video; on the wire as Opus or
    /// VP8): no codec work. Every stream of the scenario must then be synthetic
    Synthetic,
}

impl CodecSpec {
    fn video(self) -> Option<VideoCodec> {
        match self {
            Self::Opus => None,
            Self::H264 => Some(VideoCodec::H264),
            Self::Vp8 | Self::Synthetic => Some(VideoCodec::Vp8),
            Self::Vp9 => Some(VideoCodec::Vp9),
        }
    }
}

/// A measured media stream: a test source (a 440 Hz tone or a moving test pattern)
/// captured on the sending host's own clock and sent to every peer it is connected to
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSpec {
    /// Stream name in the report (default: the kind)
    #[serde(default)]
    pub name: Option<String>,
    /// `audio` or `video`
    pub kind: MediaKindSpec,
    /// `opus` for audio (the default); `h264`, `vp8` (the default) or `vp9` for video;
    /// `synthetic` for either (every stream of the scenario, then)
    #[serde(default)]
    pub codec: Option<CodecSpec>,
    /// Sending host (`*`: every host); it sends to every peer it is connected to
    pub from: String,
    /// First capture, seconds
    #[serde(default)]
    pub start_s: f64,
    /// No capture at or after this time, seconds
    #[serde(default)]
    pub stop_s: Option<f64>,
    /// A frame played later than this after its capture is late, milliseconds (default 150
    /// for audio, 250 for video)
    #[serde(default)]
    pub late_ms: Option<f64>,
    /// Encoder target bitrate, kbit/s (default 32 for audio, 300 for video)
    #[serde(default)]
    pub bitrate_kbps: Option<f64>,
    /// Audio: Opus frame length, 10, 20 (the default), 40 or 60 ms
    #[serde(default)]
    pub frame_ms: Option<u32>,
    /// Audio: 1 (the default) or 2 channels
    #[serde(default)]
    pub channels: Option<u16>,
    /// Video: width in pixels, even (default 320)
    #[serde(default)]
    pub width: Option<u32>,
    /// Video: height in pixels, even (default 240)
    #[serde(default)]
    pub height: Option<u32>,
    /// Video: frames per second, 1..=120 (default 30)
    #[serde(default)]
    pub fps: Option<u32>,
    /// Video: seconds between periodic keyframes (default 2)
    #[serde(default)]
    pub keyframe_interval_s: Option<f64>,
}

impl MediaKindSpec {
    /// `audio` or `video`
    pub fn name(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }
}

impl MediaSpec {
    /// The stream's name in reports
    pub fn stream_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.name())
    }

    /// Checks that the keys fit the kind and the codec is one of the kind's; returns the
    /// video codec (`None` for audio)
    fn check(&self) -> Result<Option<VideoCodec>, Error> {
        let name = self.stream_name();
        let bad = |what: String| Err(Error::Config(format!("media {name}: {what}")));
        let (wrong_keys, codec): (&[(&str, bool)], _) = match self.kind {
            MediaKindSpec::Audio => (
                &[
                    ("width", self.width.is_some()),
                    ("height", self.height.is_some()),
                    ("fps", self.fps.is_some()),
                    ("keyframe_interval_s", self.keyframe_interval_s.is_some()),
                ],
                self.codec.unwrap_or(CodecSpec::Opus),
            ),
            MediaKindSpec::Video => (
                &[
                    ("frame_ms", self.frame_ms.is_some()),
                    ("channels", self.channels.is_some()),
                ],
                self.codec.unwrap_or(CodecSpec::Vp8),
            ),
        };
        let kind = self.kind.name();
        if let Some((key, _)) = wrong_keys.iter().find(|(_, set)| *set) {
            return bad(format!("{key} does not apply to {kind}"));
        }
        non_negative("start_s", self.start_s)?;
        if let Some(v) = self.stop_s {
            if non_negative("stop_s", v)? <= self.start_s {
                return bad(format!("stop_s {v} is not after start_s {}", self.start_s));
            }
        }
        if let Some(v) = self.late_ms {
            non_negative("late_ms", v)?;
        }
        if let Some(v) = self.bitrate_kbps {
            positive("bitrate_kbps", v)?;
        }
        if let Some(v) = self.keyframe_interval_s {
            positive("keyframe_interval_s", v)?;
        }
        match (self.kind, codec.video()) {
            (MediaKindSpec::Audio, None) => Ok(None),
            (MediaKindSpec::Audio, Some(_)) if codec == CodecSpec::Synthetic => Ok(None),
            (MediaKindSpec::Video, Some(c)) if codec == CodecSpec::Synthetic => Ok(Some(c)),
            (MediaKindSpec::Video, Some(c)) if c.is_supported() => Ok(Some(c)),
            (MediaKindSpec::Video, Some(c)) => {
                bad(format!("{} support is not compiled in", c.name()))
            }
            (MediaKindSpec::Audio, Some(c)) => bad(format!("{} is not an audio codec", c.name())),
            (MediaKindSpec::Video, None) => bad("opus is not a video codec".into()),
        }
    }
}

fn default_stream() -> String {
    "data".into()
}

fn default_size() -> usize {
    160
}

fn default_late() -> f64 {
    150.0
}

/// A scenario ready to run: the simulation and what the report needs to know
pub struct Prepared {
    /// The simulation, with hosts, links, timeline and flows in place
    pub sim: Sim,
    /// Host names, by host index
    pub names: Vec<String>,
    /// Scenario name
    pub name: String,
    /// The seed used
    pub seed: u64,
    /// When the run ends
    pub duration: Duration,
}

/// A finished run
pub struct Outcome {
    /// The report
    pub report: Report,
    /// One-way delay over time per directed pair and stream
    pub series: Vec<Series>,
    /// The simulation as it ended
    pub sim: Sim,
}

impl Scenario {
    /// Reads and parses a scenario file
    pub fn from_path(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut s = Self::parse(&text, path)?;
        if s.name.is_none() {
            s.name = path.file_stem().map(|n| n.to_string_lossy().into_owned());
        }
        Ok(s)
    }

    /// Parses scenario text; `path` names it in errors and anchors relative trace paths
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| Error::Scenario {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })?;
        s.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // Build the simulation once, so every error is reported before anything runs.
        s.prepare(None).map_err(|e| in_file(path, e))?;
        Ok(s)
    }

    /// Every host's name, in order (`count` expanded)
    fn host_names(&self) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        for h in &self.hosts {
            match h.count {
                Some(n) => names.extend((0..n).map(|i| format!("{}{i}", h.name))),
                None => names.push(h.name.clone()),
            }
        }
        let mut seen = BTreeMap::new();
        for n in &names {
            PeerId::new(n).map_err(|e| Error::Config(format!("host name {n:?}: {e:?}")))?;
            if seen.insert(n.clone(), ()).is_some() {
                return Err(Error::Config(format!("host {n:?} is defined twice")));
            }
        }
        Ok(names)
    }

    /// Builds the simulation with `seed` (the scenario's own if `None`)
    pub fn prepare(&self, seed: Option<u64>) -> Result<Prepared, Error> {
        let seed = seed.unwrap_or(self.seed);
        positive("duration_s", self.duration_s)?;
        non_negative("signal_latency_ms", self.signal_latency_ms)?;
        RoomId::new(&self.room).map_err(|e| Error::Config(format!("room: {e:?}")))?;
        let names = self.host_names()?;
        if names.is_empty() {
            return Err(Error::Config("no hosts".into()));
        }
        let mut traces = Traces::new(&self.base_dir);
        let default_link = self.link.apply(&LinkConfig::default(), &mut traces)?;
        default_link.validate()?;
        let mut sim = Sim::new(SimConfig {
            seed,
            signal_latency: ms(self.signal_latency_ms),
            default_link: default_link.clone(),
            resume_grace: secs(non_negative("resume_grace_s", self.resume_grace_s)?),
            ..SimConfig::default()
        });
        let mut participant = Config {
            candidate_policy: CandidatePolicy::LoopbackOnly,
            ..Config::default()
        };
        if let Some(s) = self.participant.connect_timeout_s {
            participant.connect_timeout = secs(positive("connect_timeout_s", s)?);
        }
        if let Some(s) = self.participant.restart_grace_s {
            participant.recovery.restart_grace = secs(positive("restart_grace_s", s)?);
        }
        if let Some(s) = self.participant.reconnect_after_s {
            participant.recovery.reconnect_after = secs(positive("reconnect_after_s", s)?);
        }
        if let Some(on) = self.participant.rate_adaptation {
            participant.media.rate.enabled = on;
        }
        if let Some(on) = self.participant.low_encoding {
            participant.media.rate.low_encoding = on;
        }
        if let Some(on) = self.participant.remb {
            participant.media.rate.receiver_requests = on;
        }
        if let Some(on) = self.participant.compete {
            participant.media.rate.compete = on;
        }
        if let Some(on) = self.participant.pushback {
            participant.media.rate.pushback = on;
        }
        let configs = self.host_configs(&names, &participant)?;
        // Servers first: hosts name their addresses.
        let mut servers = BTreeMap::new();
        for spec in &self.servers {
            let id = sim.add_turn_server(&TurnServerSpec {
                users: vec![(spec.username.clone(), spec.password.clone())],
            });
            if servers
                .insert(spec.name.as_str(), (sim.server_addr(id), spec))
                .is_some()
            {
                return Err(Error::Config(format!(
                    "server {:?} is defined twice",
                    spec.name
                )));
            }
        }
        let mut joins = Vec::new();
        for h in &self.hosts {
            let n = h.count.unwrap_or(1);
            for i in 0..n {
                let offset_ns = (h.offset_ms * 1e6).round();
                if !offset_ns.is_finite() || offset_ns.abs() > i64::MAX as f64 {
                    return Err(Error::Config(format!(
                        "offset_ms {} is out of range",
                        h.offset_ms
                    )));
                }
                let clock = Clock::new(offset_ns as i64, h.ppm)?;
                let mut config = configs[sim.host_count()].clone();
                for server in &h.ice_servers {
                    let Some((addr, spec)) = servers.get(server.as_str()) else {
                        return Err(Error::Config(format!(
                            "host {:?}: no server named {server:?} in [[servers]]",
                            h.name
                        )));
                    };
                    config
                        .ice_servers
                        .push(IceServer::new(format!("stun:{addr}")));
                    config.ice_servers.push(IceServer::with_credentials(
                        format!("turn:{addr}"),
                        spec.username.clone(),
                        spec.password.clone(),
                    ));
                }
                if h.ice_policy == Some(IcePolicySpec::Relay) {
                    if h.ice_servers.is_empty() {
                        return Err(Error::Config(format!(
                            "host {:?}: ice_policy relay needs ice_servers",
                            h.name
                        )));
                    }
                    config.ice_policy = IceTransportPolicy::Relay;
                }
                let nat = h.nat_config()?;
                let id = sim.add_host_with(config, HostOptions { clock, nat });
                let join = non_negative("join_s", h.join_s)?
                    + i as f64 * non_negative("stagger_ms", h.stagger_ms)? / 1000.0;
                if h.join {
                    joins.push((id, secs(join)));
                }
            }
        }
        // Links: the default everywhere, then overrides in file order.
        let mut current: BTreeMap<(usize, usize), LinkConfig> = BTreeMap::new();
        for o in &self.links {
            for (a, b) in pairs(&names, &o.from, &o.to, o.both_ways)? {
                let base = current.get(&(a, b)).unwrap_or(&default_link).clone();
                current.insert((a, b), o.link.apply(&base, &mut traces)?);
            }
        }
        for (&(a, b), cfg) in &current {
            sim.set_link(HostId(a), HostId(b), cfg.clone())?;
        }
        for (id, at) in joins {
            let action = Action::Join {
                host: id,
                room: self.room.clone(),
                peer_id: names[id.0].clone(),
            };
            sim.schedule(at, action);
        }
        // The timeline, in time order (stable for equal times); link changes are resolved
        // here, so a change with a duration reverts to what was there before it.
        for e in &self.timeline {
            non_negative("at_s", e.at_s)?;
        }
        let mut events: Vec<&TimelineEvent> = self.timeline.iter().collect();
        events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        let mut reverts: Vec<Revert> = Vec::new();
        for e in events {
            // Reverts due before this event happen first.
            reverts.sort_by(|a, b| a.0.total_cmp(&b.0));
            while reverts.first().is_some_and(|r| r.0 <= e.at_s) {
                let (at, list) = reverts.remove(0);
                for ((a, b), cfg) in list {
                    current.insert((a, b), cfg.clone());
                    sim.schedule(secs(at), set_link(a, b, cfg));
                }
            }
            let at = secs(e.at_s);
            self.schedule_event(
                &mut sim,
                &names,
                e,
                at,
                &mut current,
                &default_link,
                &mut traces,
                &mut reverts,
            )?;
        }
        reverts.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (at, list) in reverts {
            for ((a, b), cfg) in list {
                sim.schedule(secs(at), set_link(a, b, cfg));
            }
        }
        // Flows, in file order, each expanded over its pairs in host order.
        for t in &self.traffic {
            positive("rate_hz", t.rate_hz)?;
            non_negative("start_s", t.start_s)?;
            non_negative("late_ms", t.late_ms)?;
            for (a, b) in pairs(&names, &t.from, &t.to, false)? {
                sim.add_flow(FlowConfig {
                    name: t.name.clone(),
                    from: HostId(a),
                    to: HostId(b),
                    interval: Duration::from_nanos((1e9 / t.rate_hz).round().max(1.0) as u64),
                    size: t.size_bytes,
                    start: secs(t.start_s),
                    stop: t.stop_s.map(secs),
                    late_after: ms(t.late_ms),
                })?;
            }
        }
        // Shared bottlenecks and the cross traffic through them, in file order.
        let mut bottlenecks = Vec::new();
        for b in &self.bottlenecks {
            let mut links = Vec::new();
            for l in &b.links {
                for (x, y) in pairs(&names, &l.from, &l.to, false)? {
                    links.push((HostId(x), HostId(y)));
                }
            }
            sim.add_shared_bottleneck(SharedBottleneckConfig {
                name: b.name.clone(),
                bits_per_sec: (positive("rate_kbps", b.rate_kbps)? * 1000.0).round() as u64,
                queue: match b.queue_bytes {
                    0 => QueueLimit::Unlimited,
                    n => QueueLimit::Bytes(n),
                },
                links,
            })?;
            bottlenecks.push(b.name.clone());
        }
        for c in &self.cross_traffic {
            let Some(bottleneck) = bottlenecks.iter().position(|n| *n == c.bottleneck) else {
                return Err(Error::Config(format!(
                    "cross traffic {}: no bottleneck named {:?}",
                    c.name, c.bottleneck
                )));
            };
            let bits_per_sec = (positive("rate_kbps", c.rate_kbps)? * 1000.0).round() as u64;
            let model = match c.model {
                CrossModelSpec::Cbr => CrossModel::Cbr { bits_per_sec },
                CrossModelSpec::Aimd => CrossModel::Aimd {
                    start_bits_per_sec: bits_per_sec,
                    rtt: ms(positive("rtt_ms", c.rtt_ms.unwrap_or(40.0))?),
                },
            };
            sim.add_cross_traffic(CrossTrafficConfig {
                name: c.name.clone(),
                bottleneck,
                model,
                packet_bytes: c.packet_bytes,
                start: secs(non_negative("start_s", c.start_s)?),
                stop: c.stop_s.map(secs),
            })?;
        }
        // Media streams, in file order, each expanded over its senders in host order.
        for m in &self.media {
            for a in select(&names, &m.from)? {
                let config = &configs[a];
                let source = match m.kind {
                    MediaKindSpec::Audio => MediaSource::Audio {
                        frame: Duration::from_millis(u64::from(config.media.opus.frame_ms)),
                        channels: config.media.opus.channels,
                    },
                    MediaKindSpec::Video => MediaSource::Video {
                        width: config.media.video.width,
                        height: config.media.video.height,
                        fps: config.media.video.fps,
                    },
                };
                let late = m.late_ms.unwrap_or(match m.kind {
                    MediaKindSpec::Audio => 150.0,
                    MediaKindSpec::Video => 250.0,
                });
                sim.add_media_stream(MediaStreamConfig {
                    name: m.stream_name().to_string(),
                    from: HostId(a),
                    source,
                    start: secs(m.start_s),
                    stop: m.stop_s.map(secs),
                    late_after: ms(late),
                })?;
            }
        }
        Ok(Prepared {
            sim,
            names,
            name: self.name.clone().unwrap_or_else(|| "scenario".into()),
            seed,
            duration: secs(self.duration_s),
        })
    }

    /// Every host's participant configuration: `base` with the capabilities and codec
    /// settings the media streams need
    ///
    /// Every host receives every kind that any host sends, so each gets the capability;
    /// each offers every video codec in use, its own (what it sends) first.
    fn host_configs(&self, names: &[String], base: &Config) -> Result<Vec<Config>, Error> {
        let mut configs = vec![base.clone(); names.len()];
        let mut in_use: Vec<VideoCodec> = Vec::new();
        // Per host, the audio and the video stream it sends (with the video codec).
        type Sent<'a> = Option<(&'a MediaSpec, Option<VideoCodec>)>;
        let mut sends: Vec<[Sent<'_>; 2]> = vec![[None, None]; names.len()];
        for m in &self.media {
            let codec = m.check()?;
            if let Some(c) = codec {
                if !in_use.contains(&c) {
                    in_use.push(c);
                }
            }
            let slot = match m.kind {
                MediaKindSpec::Audio => 0,
                MediaKindSpec::Video => 1,
            };
            for a in select(names, &m.from)? {
                if let Some((other, _)) = sends[a][slot] {
                    return Err(Error::Config(format!(
                        "host {:?} sends two {} streams ({} and {}); a participant has one of each",
                        names[a],
                        m.kind.name(),
                        other.stream_name(),
                        m.stream_name()
                    )));
                }
                sends[a][slot] = Some((m, codec));
            }
        }
        let any_audio = self.media.iter().any(|m| m.kind == MediaKindSpec::Audio);
        let any_video = self.media.iter().any(|m| m.kind == MediaKindSpec::Video);
        let synthetic = self
            .media
            .iter()
            .filter(|m| m.codec == Some(CodecSpec::Synthetic))
            .count();
        if synthetic > 0 && synthetic < self.media.len() {
            return Err(Error::Config(
                "media: synthetic streams cannot be mixed with real codecs (every host would \
                 have to decode both); make every stream synthetic or none"
                    .into(),
            ));
        }
        for (config, [audio, video]) in configs.iter_mut().zip(sends) {
            config.capabilities.audio |= any_audio;
            config.capabilities.video |= any_video;
            config.media.synthetic = synthetic > 0;
            if any_video {
                config.media.video_codecs = in_use.clone();
            }
            if let Some((a, _)) = audio {
                let opus = &mut config.media.opus;
                opus.frame_ms = a.frame_ms.unwrap_or(20);
                opus.channels = a.channels.unwrap_or(1);
                opus.bitrate_bps = kbps("bitrate_kbps", a.bitrate_kbps.unwrap_or(32.0))?;
            }
            if let Some((v, Some(own))) = video {
                config.media.video_codecs.retain(|c| *c != own);
                config.media.video_codecs.insert(0, own);
                let enc = &mut config.media.video;
                enc.codec = own;
                enc.width = v.width.unwrap_or(320);
                enc.height = v.height.unwrap_or(240);
                enc.fps = v.fps.unwrap_or(30);
                enc.bitrate_bps = kbps("bitrate_kbps", v.bitrate_kbps.unwrap_or(300.0))?;
                enc.keyframe_interval = secs(v.keyframe_interval_s.unwrap_or(2.0));
            }
        }
        Ok(configs)
    }

    #[allow(clippy::too_many_arguments)] // reason: the compile state of one pass, kept local
    fn schedule_event(
        &self,
        sim: &mut Sim,
        names: &[String],
        e: &TimelineEvent,
        at: Duration,
        current: &mut BTreeMap<(usize, usize), LinkConfig>,
        default_link: &LinkConfig,
        traces: &mut Traces,
        reverts: &mut Vec<Revert>,
    ) -> Result<(), Error> {
        match &e.action {
            ActionSpec::SetLink {
                from,
                to,
                both_ways,
                duration_s,
                link,
            } => {
                let mut old = Vec::new();
                for (a, b) in pairs(names, from, to, *both_ways)? {
                    let before = current.get(&(a, b)).unwrap_or(default_link).clone();
                    let after = link.apply(&before, traces)?;
                    after.validate()?;
                    current.insert((a, b), after.clone());
                    sim.schedule(at, set_link(a, b, after));
                    old.push(((a, b), before));
                }
                if let Some(d) = duration_s {
                    reverts.push((e.at_s + positive("duration_s", *d)?, old));
                }
            }
            ActionSpec::Outage {
                from,
                to,
                one_way,
                duration_s,
            } => {
                for (a, b) in pairs(names, from, to, !one_way)? {
                    sim.schedule(
                        at,
                        Action::LinkDown {
                            from: HostId(a),
                            to: HostId(b),
                        },
                    );
                    if let Some(d) = duration_s {
                        sim.schedule(
                            at + secs(positive("duration_s", *d)?),
                            Action::LinkUp {
                                from: HostId(a),
                                to: HostId(b),
                            },
                        );
                    }
                }
            }
            ActionSpec::Repair { from, to, one_way } => {
                for (a, b) in pairs(names, from, to, !one_way)? {
                    sim.schedule(
                        at,
                        Action::LinkUp {
                            from: HostId(a),
                            to: HostId(b),
                        },
                    );
                }
            }
            ActionSpec::Isolate { host, duration_s } => {
                let h = HostId(find(names, host)?);
                sim.schedule(at, Action::Isolate(h));
                if let Some(d) = duration_s {
                    sim.schedule(at + secs(positive("duration_s", *d)?), Action::Reconnect(h));
                }
            }
            ActionSpec::Reconnect { host } => {
                sim.schedule(at, Action::Reconnect(HostId(find(names, host)?)));
            }
            ActionSpec::Join { host } => {
                let h = find(names, host)?;
                sim.schedule(
                    at,
                    Action::Join {
                        host: HostId(h),
                        room: self.room.clone(),
                        peer_id: names[h].clone(),
                    },
                );
            }
            ActionSpec::Leave { host } => {
                sim.schedule(at, Action::Leave(HostId(find(names, host)?)));
            }
            ActionSpec::RestartServer => sim.schedule(at, Action::RestartServer),
            ActionSpec::CutSignaling { host, duration_s } => {
                let h = HostId(find(names, host)?);
                sim.schedule(at, Action::CutSignaling(h));
                if let Some(d) = duration_s {
                    sim.schedule(
                        at + secs(positive("duration_s", *d)?),
                        Action::RestoreSignaling(h),
                    );
                }
            }
            ActionSpec::RestoreSignaling { host } => {
                sim.schedule(at, Action::RestoreSignaling(HostId(find(names, host)?)));
            }
            ActionSpec::MoveHost { host } => {
                sim.schedule(at, Action::MoveHost(HostId(find(names, host)?)));
            }
        }
        Ok(())
    }

    /// Builds and runs the scenario with `seed` (the scenario's own if `None`)
    pub fn run(&self, seed: Option<u64>) -> Result<Outcome, Error> {
        let Prepared {
            mut sim,
            names,
            name,
            seed,
            duration,
        } = self.prepare(seed)?;
        tracing::info!(scenario = %name, seed, ?duration, hosts = names.len(), "running");
        sim.run_until(duration);
        let report = report::build(&sim, &name, seed, &names, duration);
        let series = report::series(&sim, &names);
        Ok(Outcome {
            report,
            series,
            sim,
        })
    }
}

impl LinkSpec {
    /// `base` with this spec's fields applied
    pub fn apply(&self, base: &LinkConfig, traces: &mut Traces) -> Result<LinkConfig, Error> {
        let mut c = base.clone();
        if let Some(v) = self.latency_ms {
            c.latency = ms(non_negative("latency_ms", v)?);
        }
        if let Some(j) = &self.jitter {
            c.jitter = match *j {
                JitterSpec::None => Jitter::None,
                JitterSpec::Uniform { max_ms } => Jitter::Uniform {
                    max: ms(non_negative("max_ms", max_ms)?),
                },
                JitterSpec::Normal { std_ms } => Jitter::Normal {
                    std_dev: ms(non_negative("std_ms", std_ms)?),
                },
                JitterSpec::Exponential { mean_ms } => Jitter::Exponential {
                    mean: ms(non_negative("mean_ms", mean_ms)?),
                },
                JitterSpec::Pareto { mean_ms, alpha } => Jitter::Pareto {
                    mean: ms(non_negative("mean_ms", mean_ms)?),
                    shape: alpha,
                },
            };
        }
        if let Some(v) = self.delay_correlation {
            c.delay_correlation = v;
        }
        if let Some(v) = self.keep_order {
            c.keep_order = v;
        }
        if let Some(l) = &self.loss {
            c.loss = match *l {
                LossSpec::None => Loss::None,
                LossSpec::Random { rate, correlation } => Loss::Random {
                    probability: rate,
                    correlation,
                },
                LossSpec::GilbertElliott {
                    p,
                    r,
                    loss_in_bad,
                    loss_in_good,
                } => Loss::GilbertElliott {
                    p,
                    r,
                    loss_in_bad,
                    loss_in_good,
                },
            };
        }
        if let Some(v) = self.duplicate {
            c.duplicate = v;
        }
        if let Some(v) = self.reorder {
            c.reorder = v;
        }
        if let Some(v) = self.reorder_delay_ms {
            c.reorder_delay = ms(non_negative("reorder_delay_ms", v)?);
        }
        if let Some(cell) = &self.cellular {
            if self.rate_kbps.is_some() || self.capacity_trace.is_some() {
                return Err(Error::Config(
                    "set one of rate_kbps, capacity_trace and cellular".into(),
                ));
            }
            let mean = positive("cellular.mean_kbps", cell.mean_kbps)?;
            let period = secs(positive("cellular.period_s", cell.period_s)?);
            let trace = CapacityTrace::cellular(cell.seed, period, (mean * 1000.0) as u64)?;
            c.rate = Rate::Trace(Arc::new(trace));
        }
        match (self.rate_kbps, &self.capacity_trace) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "set rate_kbps or capacity_trace, not both".into(),
                ))
            }
            (Some(k), None) => {
                c.rate = if non_negative("rate_kbps", k)? == 0.0 {
                    Rate::Unlimited
                } else {
                    Rate::Constant {
                        bits_per_sec: (k * 1000.0).round().max(1.0) as u64,
                    }
                };
            }
            (None, Some(path)) => c.rate = Rate::Trace(traces.capacity(path)?),
            (None, None) => {}
        }
        match (self.queue_bytes, self.queue_packets) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "set queue_bytes or queue_packets, not both".into(),
                ))
            }
            (Some(0), None) | (None, Some(0)) => c.queue = QueueLimit::Unlimited,
            (Some(b), None) => c.queue = QueueLimit::Bytes(b),
            (None, Some(p)) => c.queue = QueueLimit::Packets(p),
            (None, None) => {}
        }
        if let Some(path) = &self.delay_trace {
            c.delay_trace = if path.is_empty() {
                None
            } else {
                Some(traces.packet(path)?)
            };
        }
        Ok(c)
    }
}

/// Trace files loaded for one scenario, each read once
pub struct Traces {
    base: PathBuf,
    capacity: BTreeMap<PathBuf, Arc<CapacityTrace>>,
    packet: BTreeMap<PathBuf, Arc<PacketTrace>>,
}

impl Traces {
    /// Traces resolved against `base` (the scenario file's folder)
    pub fn new(base: &Path) -> Self {
        Self {
            base: base.to_path_buf(),
            capacity: BTreeMap::new(),
            packet: BTreeMap::new(),
        }
    }

    fn capacity(&mut self, name: &str) -> Result<Arc<CapacityTrace>, Error> {
        let path = resolve(&self.base, name);
        if let Some(t) = self.capacity.get(&path) {
            return Ok(t.clone());
        }
        let t = Arc::new(CapacityTrace::from_path(&path)?);
        self.capacity.insert(path, t.clone());
        Ok(t)
    }

    fn packet(&mut self, name: &str) -> Result<Arc<PacketTrace>, Error> {
        let path = resolve(&self.base, name);
        if let Some(t) = self.packet.get(&path) {
            return Ok(t.clone());
        }
        let t = Arc::new(PacketTrace::from_path(&path)?);
        self.packet.insert(path, t.clone());
        Ok(t)
    }
}

/// Link changes to undo at a time (seconds): each pair with the configuration to restore
type Revert = (f64, Vec<((usize, usize), LinkConfig)>);

fn set_link(a: usize, b: usize, config: LinkConfig) -> Action {
    Action::SetLink {
        from: HostId(a),
        to: HostId(b),
        config,
    }
}

/// Host indices a name selects (`*`: all)
fn select(names: &[String], name: &str) -> Result<Vec<usize>, Error> {
    if name == "*" {
        return Ok((0..names.len()).collect());
    }
    find(names, name).map(|i| vec![i])
}

fn find(names: &[String], name: &str) -> Result<usize, Error> {
    names
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| Error::Config(format!("no host named {name:?}")))
}

/// Directed pairs `from → to` (and back, with `both_ways`), distinct hosts, in order
fn pairs(
    names: &[String],
    from: &str,
    to: &str,
    both_ways: bool,
) -> Result<Vec<(usize, usize)>, Error> {
    let froms = select(names, from)?;
    let tos = select(names, to)?;
    let mut out = Vec::new();
    for &a in &froms {
        for &b in &tos {
            if a == b {
                continue;
            }
            if !out.contains(&(a, b)) {
                out.push((a, b));
            }
            if both_ways && !out.contains(&(b, a)) {
                out.push((b, a));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Config(format!(
            "{from:?} → {to:?} names no pair of hosts"
        )));
    }
    Ok(out)
}

fn positive(name: &str, v: f64) -> Result<f64, Error> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(Error::Config(format!("{name} must be above 0, found {v}")))
    }
}

fn non_negative(name: &str, v: f64) -> Result<f64, Error> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(Error::Config(format!(
            "{name} must be 0 or more, found {v}"
        )))
    }
}

/// kbit/s as bit/s, within u32
fn kbps(name: &str, v: f64) -> Result<u32, Error> {
    let bps = (positive(name, v)? * 1000.0).round();
    if bps > f64::from(u32::MAX) {
        return Err(Error::Config(format!("{name} {v} is too large")));
    }
    Ok(bps as u32)
}

fn ms(v: f64) -> Duration {
    Duration::from_nanos((v * 1e6).round() as u64)
}

fn secs(v: f64) -> Duration {
    Duration::from_nanos((v * 1e9).round() as u64)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Config(message) => Error::Scenario {
            path: path.to_path_buf(),
            message,
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, Error> {
        Scenario::parse(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = r#"
        duration_s = 1
        [[hosts]]
        name = "a"
        [[hosts]]
        name = "b"
        ppm = 100
    "#;

    #[test]
    fn minimal_scenario_parses() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.host_names().unwrap(), vec!["a", "b"]);
        assert_eq!(s.seed, 1);
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("duration_s = 1\nhosts = []\nbogus = 1\n", "bogus"),
            (
                &format!("{MINIMAL}\n[link]\nlatency_ms = -1\n"),
                "latency_ms",
            ),
            (
                &format!("{MINIMAL}\n[[traffic]]\nfrom = \"a\"\nto = \"zz\"\nrate_hz = 1\n"),
                "zz",
            ),
            (
                &format!("{MINIMAL}\n[link]\nloss = {{ model = \"random\", rate = 2 }}\n"),
                "loss",
            ),
            (
                &format!("{MINIMAL}\n[link]\njitter = {{ shape = \"triangle\", max_ms = 2 }}\n"),
                "triangle",
            ),
            (
                "duration_s = 1\n[[hosts]]\nname = \"a\"\nppm = 5000\n",
                "ppm",
            ),
            (
                &format!("{MINIMAL}\n[link]\ncapacity_trace = \"/nonexistent/trace\"\n"),
                "nonexistent",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn count_expands_names() {
        let s = parse("duration_s = 1\n[[hosts]]\nname = \"p\"\ncount = 3\n").unwrap();
        assert_eq!(s.host_names().unwrap(), vec!["p0", "p1", "p2"]);
    }
}
