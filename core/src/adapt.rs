//! Rate adaptation applied: the participant's peers and encoders driven by the
//! [`RateController`](crate::rate::RateController)
//!
//! The participant calls [`Adaptation::run`] after its inputs and [`send_video`] for each
//! captured frame; the decisions themselves are in [`rate`](crate::rate).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{AudioParams, I420Frame, VideoCodec};
use crate::compete;
use crate::config::Config;
use crate::error::CommandError;
use crate::media::{Encoders, Encoding, MediaConfig};
use crate::peer::Peer;
use crate::rate::{BitrateStats, RateController, VideoSendPeerStats};
use crate::signal::PeerId;
use crate::stats::PeerStats;

/// How often the targets are looked at when no estimate changed (loss reports, time
/// passing for the hysteresis)
const IDLE_INTERVAL: Duration = Duration::from_millis(250);

/// The participant's rate adaptation: the controller (none when it is off) and what it
/// applied last
pub(crate) struct Adaptation {
    ctl: Option<RateController>,
    last_run: Option<Instant>,
    /// The configured Opus settings, and the bitrate the controller wants for Opus
    base_audio: AudioParams,
    audio_bps: u32,
}

impl Adaptation {
    pub(crate) fn new(media: &MediaConfig) -> Self {
        Self {
            ctl: media.rate.enabled.then(|| RateController::for_media(media)),
            last_run: None,
            base_audio: AudioParams::of(&media.opus),
            audio_bps: media.opus.bitrate_bps,
        }
    }

    /// Re-decides the encoders' targets from the peers' estimates at `now` and applies
    /// them: bitrates, the low encoding and who gets it, Opus bitrate, FEC and expected
    /// loss
    pub(crate) fn run(
        &mut self,
        now: Instant,
        peers: &mut BTreeMap<PeerId, Peer>,
        encoders: &mut Encoders,
    ) {
        let Some(ctl) = &mut self.ctl else {
            return;
        };
        let changed = peers.values().any(|p| p.rate.changed);
        if !changed && self.last_run.is_some_and(|t| now < t + IDLE_INTERVAL) {
            return;
        }
        self.last_run = Some(now);
        let mut paths = Vec::with_capacity(peers.len());
        let (usable, floor) = (ctl.usable(), ctl.floor_estimate());
        let mut loss = None::<f32>;
        for (id, p) in peers.iter_mut() {
            p.rate.changed = false;
            if ctl.competes() {
                let r = &mut p.rate;
                let path = compete::PathView {
                    standing: r.pushback.standing_queue(now, compete::SPAN),
                    recent: r.pushback.standing_queue(now, compete::RECENT),
                    estimate: r.estimate,
                    // Read only while competing: reading the meter starts it.
                    sent: r.compete.target().and_then(|_| r.sent.bps(now)),
                    floor,
                };
                r.compete.update(now, path);
                if let Some(bps) = r.compete.reset_due(now, r.estimate) {
                    tracing::debug!(peer = %id, bps, "rate: str0m's estimate reset to the competing rate");
                    p.reset_estimate(bps);
                }
            }
            if let Some(l) = p.rate.audio_loss {
                loss = Some(loss.map_or(l, |m| m.max(l)));
            }
            if !p.can_send_media() || p.video_send_codec().is_none() {
                continue;
            }
            if let Some(e) = p.rate.effective_estimate(now, usable, floor) {
                paths.push((id.clone(), e));
            }
        }
        // str0m probes up to the desired bitrate: not above what a receiver with a queue
        // asked for (probes into that queue would only deepen it).
        let full = ctl.desired_bps();
        for p in peers.values_mut() {
            if let Some(bps) = p.rate.desired_change(now, full) {
                p.set_desired_bitrate(bps);
            }
        }
        let d = ctl.update(now, &paths);
        if let Some(bps) = d.audio_bps {
            self.audio_bps = bps;
        }
        if let Some(Some(bps)) = d.low_bps {
            encoders.set_low_encoding(now, Some(bps));
        }
        // Every peer on the encoding the controller wants for it; one that moves needs a
        // keyframe of the encoding it moves to (and keeps the old one until it comes).
        for (id, p) in peers.iter_mut() {
            let want = ctl.encoding_of(id);
            if p.rate.route.wanted() != want && p.rate.route.move_to(want) {
                if let Some(codec) = p.video_send_codec() {
                    tracing::debug!(peer = %id, ?want, "moving to another encoding");
                    encoders.request_keyframe_of(codec, want);
                }
            }
        }
        if d.low_bps == Some(None) {
            encoders.set_low_encoding(now, None);
        }
        if let Some(bps) = d.video_bps {
            tracing::debug!(bps, "video target");
            encoders.set_video_bitrate(now, bps);
        }
        // The frame budgets drain at what each group's slowest path carries of video.
        let mut drain = [None::<u32>; 2];
        for (id, p) in peers.iter_mut() {
            let Some(estimate) = p.rate.path_estimate(now) else {
                continue;
            };
            if !p.can_send_media() || p.video_send_codec().is_none() {
                continue;
            }
            let video = ctl.video_drain(estimate);
            let slot = &mut drain[usize::from(ctl.encoding_of(id) == Encoding::Low)];
            *slot = Some(slot.map_or(video, |d| d.min(video)));
        }
        encoders.set_budget_rates(drain[0], drain[1]);
        // Audio: the controller's bitrate; FEC and expected loss from the worst loss
        // reported (the same encode goes to everyone).
        let current = encoders.audio_params().unwrap_or(self.base_audio);
        let mut want = AudioParams {
            bitrate_bps: self.audio_bps,
            ..current
        };
        if let Some(loss) = loss {
            want = want.following_loss(loss);
        }
        if want != current {
            if let Err(e) = encoders.set_audio_params(want) {
                tracing::debug!(error = %e, ?want, "audio settings refused");
            }
        }
    }

    /// Fills in what `peer`'s statistics say about what we send it
    pub(crate) fn fill_stats(
        &self,
        peer: &Peer,
        encoders: &Encoders,
        media: &MediaConfig,
        now: Instant,
        s: &mut PeerStats,
    ) {
        let r = &peer.rate;
        let encoding = r.route.current();
        let kbps = |bps: u32| f64::from(bps) / 1000.0;
        let target = match (&self.ctl, encoding) {
            (None, _) => Some(media.video.bitrate_bps),
            (Some(c), Encoding::Main) => c.video_target(),
            (Some(c), Encoding::Low) => c.low_target(),
        };
        let codec = peer.sent_video_codec();
        let parts = r.estimate_parts(now);
        s.bitrate = Some(BitrateStats {
            available_outgoing_kbps: r.path_estimate(now).map(kbps),
            video_target_kbps: codec.and(target).map(kbps),
            video_sent_kbps: r.video_sent.kbps(),
            audio_sent_kbps: r.audio_sent.kbps(),
            sender_estimate_kbps: parts.sender.map(kbps),
            receiver_limit_kbps: parts.receiver.map(kbps),
            pushback_cap_kbps: parts.pushback.map(kbps),
            desired_kbps: parts.desired.map(kbps),
            competing_kbps: parts.competing.map(kbps),
        });
        s.video_sent = codec.map(|c| {
            let e = encoders.video_send_stats(c, encoding);
            VideoSendPeerStats {
                frames_sent: r.frames_sent,
                frame_width: e.map(|e| e.frame_width).filter(|w| *w > 0),
                frame_height: e.map(|e| e.frame_height).filter(|h| *h > 0),
                quality_limitation: encoders.quality_limitation(now),
                encoding,
            }
        });
    }
}

/// Encodes one captured frame once per codec in use (twice with a low encoding) and
/// writes each peer the frame of the encoding it gets; returns how many peers got a frame
/// and which peers to drain
///
/// With [`Config::encode_clock`] the encode is timed and a frame that would queue behind
/// a busy encoder is dropped ([`Encoders::should_encode`]); `now` is the participant's
/// time otherwise.
pub(crate) fn send_video(
    encoders: &mut Encoders,
    peers: &mut BTreeMap<PeerId, Peer>,
    config: &Config,
    now: Instant,
    capture: Instant,
    frame: &I420Frame,
) -> Result<(usize, Vec<PeerId>), CommandError> {
    let ticks = encoders.video_ticks(capture);
    let pts = Duration::from_micros((ticks.max(0) as u64 * 1000) / 90);
    let mut by_codec: BTreeMap<VideoCodec, Vec<PeerId>> = BTreeMap::new();
    for (id, peer) in peers.iter_mut() {
        if peer.can_send_media() {
            if let Some(c) = peer.video_send_codec() {
                by_codec.entry(c).or_default().push(id.clone());
            }
        }
    }
    if by_codec.is_empty() {
        return Ok((0, Vec::new()));
    }
    let clock = config.encode_clock.as_ref();
    let start = clock.map_or(now.max(capture), |c| c.now());
    if !encoders.should_encode(capture, start) {
        return Ok((0, Vec::new()));
    }
    let mut sent = 0;
    let mut touched = Vec::new();
    for (codec, ids) in by_codec {
        let frames =
            encoders.encode_video_encodings(&config.media, codec, frame, Some(capture), pts)?;
        let keys: Vec<(Encoding, bool)> = frames
            .iter()
            .map(|f| (f.encoding, f.video.keyframe))
            .collect();
        let data: Vec<Arc<[u8]>> = frames
            .iter()
            .map(|f| Arc::from(&f.video.data[..]))
            .collect();
        for id in ids {
            let peer = peers.get_mut(&id).expect("listed above; panic means bug");
            if let Some(i) = peer.rate.route.pick(&keys) {
                // One allocation per encoding, shared by every peer that gets it.
                if peer.write_video(codec, capture, ticks, data[i].clone()) {
                    peer.rate.frames_sent += 1;
                    sent += 1;
                }
            }
            touched.push(id);
        }
    }
    if let Some(c) = clock {
        let end = c.now();
        encoders.handle_encode_time(capture, end.saturating_duration_since(start), end);
    }
    Ok((sent, touched))
}
