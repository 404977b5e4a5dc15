//! One remote peer: a `str0m::Rtc` plus the state the mesh keeps about it

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, IceCreds, Rtc};

use crate::codec::VideoCodec;
use crate::config::{CandidatePolicy, Config};
use crate::error::{CommandError, SdpRejection, TransportError};
use crate::event::{DataMessage, ReconnectKind};
use crate::ice::stun;
use crate::media::{video_codec_of, MediaConfig, MediaOut, PeerMedia};
use crate::pipeline::TrackId;
use crate::pushback::Pushback;
use crate::rate::{PeerRate, RateController};
use crate::recovery::Recovery;
use crate::shared::{TimeoutReason, Transmit};
use crate::signal::PeerInfo;
use crate::stats::{PeerStats, SecondWindow};
use crate::tracks::{self, RecvTrack, SendTrack};
use crate::window::SendWindow;

/// Below this many buffered bytes str0m tells us the channel can take more
const BUFFERED_LOW_THRESHOLD: usize = 64 * 1024;

/// str0m's send buffer per peer: the largest message we accept (256 KiB) must fit it in one
/// go, or a write would be refused forever
const SCTP_BUFFER: usize = crate::MAX_DATA_MESSAGE + BUFFERED_LOW_THRESHOLD;

/// Malformed media frames tolerated in one drain before the peer is failed (a bound, so a
/// str0m that kept returning the same error could not spin us forever)
const MAX_BAD_PACKETS: usize = 256;

/// Remote candidates queued before the remote description is known, at most
const MAX_QUEUED_CANDIDATES: usize = 64;

/// PRIORITY of our round-trip probes: a peer-reflexive candidate's (RFC 8445 §5.1.2.1),
/// which every ICE agent takes in a check
const PROBE_PRIORITY: u32 = (110 << 24) | (65_535 << 8) | 255;

/// Encrypted DTLS records remembered before the handshake completes, at most
const EARLY_RECORDS: usize = 64;

/// DTLS 1.2 records from the remote before the handshake completed.
///
/// Until the handshake completes the DTLS stack (dimpl 0.7) queues encrypted records
/// without its replay window: a repeat panics it, and one that is not the remote's (a stale
/// session on the same address, a forgery) fails the handshake when it is finally
/// decrypted. The remote's first encrypted record always follows its plaintext hello, and a
/// resent flight carries new sequence numbers, so encrypted records before any hello, and
/// repeats, are refused.
#[derive(Debug, Default)]
struct EarlyRecords {
    /// A plaintext handshake record (its hello) arrived
    heard_hello: bool,
    /// (epoch, sequence) of the first record of each encrypted datagram, bounded
    seen: Vec<(u16, u64)>,
}

/// The content type, epoch and sequence number of the DTLS 1.2 record a datagram starts
/// with (RFC 6347 header: type, version (2), epoch (2), sequence (6), length (2)), if it
/// starts with one
pub(crate) fn dtls_record_header(datagram: &[u8]) -> Option<(u8, u16, u64)> {
    let header = datagram.get(..13).filter(|h| (20..=25).contains(&h[0]))?;
    let epoch = u16::from_be_bytes([header[3], header[4]]);
    let mut seq = [0u8; 8];
    seq[2..].copy_from_slice(&header[5..11]);
    Some((header[0], epoch, u64::from_be_bytes(seq)))
}

impl EarlyRecords {
    /// Whether to refuse `datagram`; anything not a DTLS 1.2 record passes
    fn refuses(&mut self, datagram: &[u8]) -> bool {
        let Some((kind, epoch, seq)) = dtls_record_header(datagram) else {
            return false;
        };
        if epoch == 0 {
            self.heard_hello |= kind == 22;
            return false;
        }
        let key = (epoch, seq);
        if !self.heard_hello || self.seen.contains(&key) {
            return true;
        }
        // A handshake's own encrypted records are a handful; a flood of distinct ones is
        // garbage, and forgetting the oldest is safe.
        if self.seen.len() >= EARLY_RECORDS {
            self.seen.remove(0);
        }
        self.seen.push(key);
        false
    }
}

/// Who sent the offer on this connection
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Offerer,
    Answerer,
}

/// What a drained peer hands back to the participant
#[derive(Debug)]
pub(crate) enum PeerOutput {
    Transmit(Transmit),
    Connected(Duration),
    Data {
        label: String,
        message: DataMessage,
    },
    Media(MediaOut),
    /// Media of a separate track the remote sends us on an m-line of its own
    TrackMedia(TrackId, MediaOut),
    /// The remote asked for a keyframe of a separate track we send it
    TrackKeyframeWanted(TrackId, VideoCodec),
    /// The remote started or stopped sending us this kind (its m-line direction)
    RemoteSending(crate::MediaKind, bool),
    /// Queued messages larger than the remote's `max-message-size`, dropped unsent
    Undelivered(Vec<DataMessage>),
    Closed,
}

pub(crate) struct Peer {
    info: PeerInfo,
    role: Role,
    rtc: Rtc,
    created: Instant,
    now: Instant,
    pending_offer: Option<SdpPendingOffer>,
    has_remote_description: bool,
    queued_candidates: Vec<String>,
    channel: Option<ChannelId>,
    /// Open channels with their labels, in opening order
    labels: Vec<(ChannelId, String)>,
    send_queue: VecDeque<DataMessage>,
    /// The largest message the remote takes (its SDP `max-message-size`), once known
    remote_max_message: Option<usize>,
    /// Queued messages dropped for being larger than that, not yet reported
    oversized: Vec<DataMessage>,
    /// How much of the send queue str0m may hold at once
    window: SendWindow,
    connected_at: Option<Instant>,
    dtls_connected: bool,
    /// When DTLS first refused a datagram before the handshake completed (see
    /// [`HANDSHAKE_GRACE`])
    dtls_refused_at: Option<Instant>,
    /// str0m panicked on this connection: its `Rtc` is left alone until it is replaced
    panicked: bool,
    /// What came before the DTLS handshake completed (see [`Peer::refuses_early_record`])
    early_records: EarlyRecords,
    ice_disconnected_since: Option<Instant>,
    /// When a datagram last came from this peer
    last_received: Option<Instant>,
    /// Which connection of the remote its first description came from (fingerprint and SDP
    /// session id): another one means a new connection (it restarted, or reconnects in full)
    remote_connection: Option<String>,
    /// The remote connections this peer's earlier connections talked to (most recent
    /// last, bounded): an offer from one of them is late, for a connection we replaced
    retired_remotes: Vec<String>,
    /// Our offers sent whose answers have not come (answers come in order, so while more
    /// than one is out, an answer is for an older offer than the one waiting)
    offers_out: u32,
    /// Messages written to the channel whose bytes the channel has not confirmed yet, and
    /// their total size (a full reconnect reports them undelivered)
    unacked: VecDeque<DataMessage>,
    unacked_bytes: usize,
    /// When and how this connection heals
    pub(crate) recovery: Recovery,
    /// Why the connection broke for good, if it did (recovery replaces it)
    broken: Option<TransportError>,
    /// The last error of a connection this one replaced
    last_error: Option<TransportError>,
    /// How the current outage is being healed (for the events)
    reconnecting: Option<ReconnectKind>,
    /// The local addresses changed: the next ICE restart replaces the local candidates
    pub(crate) renew_candidates: bool,
    /// The server said it left (timed out) while our path to it worked: kept only while the
    /// path holds, never healed
    pub(crate) orphan: bool,
    /// An ICE restart is under way: the path counts as broken until ICE connects again
    restarting: bool,
    /// Our ICE restart offer waits for its answer
    restart_offered: bool,
    /// The remote's ICE user fragment (a new one in an offer is an ICE restart)
    remote_ufrag: Option<String>,
    /// ... and its ICE password (our round-trip probes are signed with it)
    remote_pwd: Option<String>,
    /// Whether str0m sends video with its estimator on and pushback is wanted (then the
    /// path is probed)
    bwe: bool,
    /// The local and remote address str0m last sent DTLS, RTP or RTCP on (the path in use)
    path: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// A probe to hand on with the next drain
    probe_out: Option<Transmit>,
    next_timeout: Instant,
    stats: PeerStats,
    media: PeerMedia,
    media_out: Vec<MediaOut>,
    jitter_config: crate::sync::JitterConfig,
    video_send_codec: Option<VideoCodec>,
    video_preference: Vec<VideoCodec>,
    /// Whether we use a data channel with this peer (else DTLS up counts as connected)
    wants_data: bool,
    /// Bandwidth estimate, encoding sent and send rates (see `rate`)
    pub(crate) rate: PeerRate,
    /// Our sending of audio and video to this peer is paused (the m-line says so)
    send_paused: [bool; 2],
    /// Whether we send audio and video at all (our capabilities)
    can_send: [bool; 2],
    /// Whether the remote sends us audio and video, as its m-line directions last said
    remote_sending: [bool; 2],
    /// Which remote candidates we use (trickled ones and those inside descriptions)
    candidate_policy: CandidatePolicy,
    /// Separate video tracks we send on m-lines of their own, and those waiting for one
    send_tracks: Vec<SendTrack>,
    wanted_tracks: Vec<TrackId>,
    /// Separate video tracks the remote sends us, and the m-lines its descriptions named
    recv_tracks: Vec<RecvTrack>,
    remote_track_mids: Vec<(Mid, TrackId)>,
    /// For the receive side of separate tracks
    media_config: MediaConfig,
    wallclock_anchor: Option<(Instant, std::time::SystemTime)>,
    /// Received media bytes per second, audio and video (for the received bitrate)
    received_rate: [SecondWindow; 2],
    /// RTP packets sent as str0m last reported them for this `Rtc`, audio and video
    egress_packets: [u64; 2],
}

/// Our media kind of str0m's
const fn kind_of(kind: MediaKind) -> crate::MediaKind {
    match kind {
        MediaKind::Audio => crate::MediaKind::Audio,
        MediaKind::Video => crate::MediaKind::Video,
    }
}

/// Index of a media kind in the per-kind arrays
const fn kind_index(kind: crate::MediaKind) -> usize {
    match kind {
        crate::MediaKind::Audio => 0,
        crate::MediaKind::Video => 1,
    }
}

/// The direction of an m-line that sends and receives as asked
const fn direction(send: bool, recv: bool) -> Direction {
    match (send, recv) {
        (true, true) => Direction::SendRecv,
        (true, false) => Direction::SendOnly,
        (false, true) => Direction::RecvOnly,
        (false, false) => Direction::Inactive,
    }
}

impl Peer {
    pub(crate) fn new(
        now: Instant,
        info: PeerInfo,
        role: Role,
        config: &Config,
        crypto: Arc<CryptoProvider>,
        cert: DtlsCert,
        creds: IceCreds,
    ) -> Self {
        // Probe transaction ids start with our first user fragment: per connection.
        let mut prefix = [0u8; 4];
        for (i, b) in creds.ufrag.bytes().take(4).enumerate() {
            prefix[i] = b;
        }
        let mut builder = Rtc::builder()
            .set_crypto_provider(crypto)
            .set_dtls_cert(cert)
            .set_local_ice_credentials(creds)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .set_sctp_max_buffered_amount(SCTP_BUFFER)
            // Sender reports every second for both kinds: lip-sync, latency and drift from
            // reports all start from the first pair of them.
            .set_rtcp_report_interval_audio(Duration::from_secs(1))
            .set_rtcp_report_interval_video(Duration::from_secs(1))
            // Our jitter buffer reorders audio; str0m should hand packets over at once.
            .set_reordering_size_audio(0)
            // An incomplete video frame waits this long for retransmission, then it is
            // dropped and we ask for a keyframe.
            .set_reordering_timeout_video(Some(config.media.max_video_wait))
            .clear_codecs();
        if config.capabilities.audio {
            builder = builder.enable_opus(true, false);
        }
        if config.capabilities.video {
            for c in &config.media.video_codecs {
                builder = match c {
                    VideoCodec::H264 => builder.enable_h264(true),
                    VideoCodec::Vp8 => builder.enable_vp8(true),
                    VideoCodec::Vp9 => builder.enable_vp9(true),
                };
            }
        }
        // Bandwidth estimation (TWCC) and str0m's pacer, which it turns on, when we may send
        // video; we ask it to probe up to all the media we would send.
        let rate = config.media.rate;
        let bwe = config.capabilities.video && rate.enabled;
        if bwe {
            builder = builder.enable_bwe(Some(Bitrate::bps(u64::from(rate.initial_bps))));
        }
        let mut rtc = builder.build(now);
        if bwe {
            let desired = RateController::for_media(&config.media).desired_bps();
            rtc.bwe()
                .set_desired_bitrate(Bitrate::bps(u64::from(desired)));
        }
        let info_caps = info.capabilities;
        let recovery = Recovery::new(
            config.recovery,
            config.seed ^ fingerprint_seed(&info.peer_id),
        );
        Self {
            info,
            role,
            rtc,
            created: now,
            now,
            pending_offer: None,
            has_remote_description: false,
            queued_candidates: Vec::new(),
            channel: None,
            labels: Vec::new(),
            send_queue: VecDeque::new(),
            remote_max_message: None,
            oversized: Vec::new(),
            window: SendWindow::new(SCTP_BUFFER),
            connected_at: None,
            dtls_connected: false,
            dtls_refused_at: None,
            panicked: false,
            early_records: EarlyRecords::default(),
            ice_disconnected_since: None,
            last_received: None,
            remote_connection: None,
            offers_out: 0,
            retired_remotes: Vec::new(),
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            recovery,
            broken: None,
            last_error: None,
            reconnecting: None,
            renew_candidates: false,
            orphan: false,
            restarting: false,
            restart_offered: false,
            remote_ufrag: None,
            remote_pwd: None,
            bwe: bwe && rate.pushback,
            path: None,
            probe_out: None,
            next_timeout: now,
            stats: PeerStats::default(),
            received_rate: [SecondWindow::new(now); 2],
            egress_packets: [0; 2],
            media: PeerMedia::new(&config.media, config.wallclock_anchor),
            media_out: Vec::new(),
            jitter_config: config.media.jitter,
            video_send_codec: None,
            video_preference: config.media.video_codecs.clone(),
            wants_data: config.capabilities.data,
            rate: PeerRate::with_probes(Pushback::new(prefix)),
            send_paused: [false; 2],
            can_send: [config.capabilities.audio, config.capabilities.video],
            remote_sending: [
                config.capabilities.audio && info_caps.audio,
                config.capabilities.video && info_caps.video,
            ],
            candidate_policy: config.candidate_policy,
            send_tracks: Vec::new(),
            wanted_tracks: Vec::new(),
            recv_tracks: Vec::new(),
            remote_track_mids: Vec::new(),
            media_config: config.media.clone(),
            wallclock_anchor: config.wallclock_anchor,
        }
    }

    /// Asks for an m-line of its own for separate video `track` (offered at the next
    /// [`direction_offer`](Self::direction_offer)); false if it has one or waits for one
    pub(crate) fn want_track(&mut self, track: TrackId) -> bool {
        if self.send_tracks.iter().any(|t| t.track == track) || self.wanted_tracks.contains(&track)
        {
            return false;
        }
        self.wanted_tracks.push(track);
        true
    }

    /// The codec separate `track` goes to this peer in, once its m-line is negotiated
    pub(crate) fn track_send_codec(&mut self, track: TrackId) -> Option<VideoCodec> {
        let t = self
            .send_tracks
            .iter_mut()
            .find(|t| t.track == track && t.confirmed)?;
        if t.codec.is_none() {
            let writer = self.rtc.writer(t.mid)?;
            let offered: Vec<VideoCodec> = writer
                .payload_params()
                .filter_map(|p| video_codec_of(p.spec().codec))
                .collect();
            t.codec = self
                .video_preference
                .iter()
                .copied()
                .find(|c| offered.contains(c));
        }
        t.codec
    }

    /// Whether the remote has had a frame of separate `track` (so no keyframe is owed)
    pub(crate) fn track_started(&self, track: TrackId) -> bool {
        self.send_tracks
            .iter()
            .any(|t| t.track == track && t.started)
    }

    /// Every separate track owes the remote a keyframe again (after a pause)
    pub(crate) fn restart_tracks(&mut self) {
        for t in &mut self.send_tracks {
            t.started = false;
        }
    }

    /// Writes one encoded frame of separate `track` on its m-line; false if not sent
    pub(crate) fn write_track_video(
        &mut self,
        track: TrackId,
        codec: VideoCodec,
        wallclock: Instant,
        ticks: i64,
        data: Arc<[u8]>,
    ) -> bool {
        if !self.can_send_media()
            || self.send_paused[1]
            || self.track_send_codec(track) != Some(codec)
        {
            return false;
        }
        let Some(mid) = self
            .send_tracks
            .iter()
            .find(|t| t.track == track)
            .map(|t| t.mid)
        else {
            return false;
        };
        if !self.write_video_on(mid, codec, wallclock, ticks, data) {
            return false;
        }
        if let Some(t) = self.send_tracks.iter_mut().find(|t| t.track == track) {
            t.started = true;
        }
        true
    }

    /// Our offer was dropped for the remote's (glare): m-lines it added are not there
    fn unconfirmed_tracks_lost(&mut self) {
        let wanted = &mut self.wanted_tracks;
        self.send_tracks.retain(|t| {
            if !t.confirmed && !wanted.contains(&t.track) {
                wanted.push(t.track);
            }
            t.confirmed
        });
    }

    /// The separate track received on `mid`, if any
    fn recv_track(&mut self, mid: Mid) -> Option<&mut RecvTrack> {
        self.recv_tracks.iter_mut().find(|t| t.mid == mid)
    }

    /// What str0m's bandwidth estimator may probe up to
    pub(crate) fn set_desired_bitrate(&mut self, bps: u32) {
        self.rtc
            .bwe()
            .set_desired_bitrate(Bitrate::bps(u64::from(bps)));
    }

    /// Starts str0m's bandwidth estimator afresh from `bps` (its only way to set the
    /// estimate; see [`Competition`](crate::compete::Competition))
    pub(crate) fn reset_estimate(&mut self, bps: u32) {
        self.rtc.bwe().reset(Bitrate::bps(u64::from(bps)));
    }

    /// Pauses or resumes what we send of `kind` to this peer; the m-line direction follows
    /// at the next [`direction_offer`](Self::direction_offer)
    pub(crate) fn set_send_paused(&mut self, kind: crate::MediaKind, paused: bool) {
        self.send_paused[kind_index(kind)] = paused;
    }

    /// Whether the remote sends us `kind`, as its m-line direction says
    pub(crate) fn remote_sending(&self, kind: crate::MediaKind) -> bool {
        self.remote_sending[kind_index(kind)]
    }

    /// An offer that brings the m-lines' send directions in line with what we want (a
    /// paused kind is `recvonly` or `inactive`), when one is needed and can be made now:
    /// the remote description is known and no offer of ours waits for its answer
    ///
    /// The receive half of each direction is left as the remote last set it.
    pub(crate) fn direction_offer(&mut self) -> Option<String> {
        if self.pending_offer.is_some() || !self.has_remote_description || !self.rtc.is_alive() {
            return None;
        }
        let mut changes = Vec::new();
        for (kind, mid) in [
            (crate::MediaKind::Audio, self.media.audio_mid),
            (crate::MediaKind::Video, self.media.video_mid),
        ] {
            let Some(mid) = mid else { continue };
            let Some(media) = self.rtc.media(mid) else {
                continue;
            };
            let current = media.direction();
            if media.disabled() {
                continue;
            }
            let want_send = !self.send_paused[kind_index(kind)] && self.can_send[kind_index(kind)];
            if current.is_sending() != want_send {
                changes.push((mid, direction(want_send, current.is_receiving())));
            }
        }
        // Separate video tracks follow the pause of video; new ones get their m-lines.
        let want_video = !self.send_paused[1] && self.can_send[1];
        for t in self.send_tracks.iter().filter(|t| t.confirmed) {
            let Some(media) = self.rtc.media(t.mid) else {
                continue;
            };
            if !media.disabled() && media.direction().is_sending() != want_video {
                changes.push((
                    t.mid,
                    direction(want_video, media.direction().is_receiving()),
                ));
            }
        }
        let add = if want_video {
            std::mem::take(&mut self.wanted_tracks)
        } else {
            Vec::new()
        };
        if changes.is_empty() && add.is_empty() {
            return None;
        }
        let mut api = self.rtc.sdp_api();
        for (mid, dir) in changes {
            api.set_direction(mid, dir);
        }
        let mut added = Vec::new();
        for track in &add {
            let mid = api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("meshrtc".into()),
                Some(tracks::track_msid(*track)),
                None,
            );
            added.push(SendTrack {
                track: *track,
                mid,
                confirmed: false,
                started: false,
                codec: None,
                egress_packets: 0,
            });
        }
        let Some((offer, pending)) = api.apply() else {
            self.wanted_tracks.extend(add);
            return None;
        };
        if !added.is_empty() {
            tracing::debug!(tracks = ?add, "offering m-lines for separate video tracks");
        }
        self.send_tracks.extend(added);
        self.pending_offer = Some(pending);
        self.offers_out = self.offers_out.saturating_add(1);
        Some(offer.to_sdp_string())
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// Messages waiting for the channel
    pub(crate) fn queued_messages(&self) -> usize {
        self.send_queue.len()
    }

    pub(crate) fn stats(&self) -> PeerStats {
        let mut s = self.stats.clone();
        s.connected = self.connected_at.is_some();
        s.connect_time = self.connected_at.map(|t| t - self.created);
        s.queued_messages = self.send_queue.len();
        s.is_offerer = self.role == Role::Offerer;
        s.circuit = self.recovery.circuit();
        s.clock_drift_ppm = self.media.drift_ppm();
        s.clock_drift_uncertainty_ppm = self.media.drift_uncertainty_ppm();
        s.clock_drift_estimate_ppm = self.media.drift_estimate_ppm();
        s.report_clock_drift_ppm = self.media.report_drift_ppm();
        // `s.audio`/`s.video` hold what earlier connections to this peer received (a full
        // reconnect carries them over): counters go on from there.
        if self.media.audio_mid.is_some() {
            let mut a = self.media.audio_stats();
            if let Some(earlier) = &s.audio {
                a.accumulate(earlier);
            }
            s.audio = Some(a);
        }
        if self.media.video_mid.is_some() {
            let mut v = self.media.video_stats();
            if let Some(earlier) = &s.video {
                v.accumulate(earlier);
            }
            s.video = Some(v);
        }
        s.media_traffic.audio_received_bps = self.received_rate[0].bps(self.now);
        s.media_traffic.video_received_bps = self.received_rate[1].bps(self.now);
        s
    }

    /// The media kind of `mid`, if it is our audio or video
    fn kind_of_mid(&self, mid: Mid) -> Option<crate::MediaKind> {
        if Some(mid) == self.media.audio_mid {
            Some(crate::MediaKind::Audio)
        } else if Some(mid) == self.media.video_mid {
            Some(crate::MediaKind::Video)
        } else {
            None
        }
    }

    /// Counts one encoded frame written to this peer
    fn count_sent(&mut self, kind: crate::MediaKind, bytes: usize) {
        let c = self.stats.media_traffic.count_mut(kind, true);
        c.bytes += bytes as u64;
        c.frames += 1;
    }

    pub(crate) fn accepts(&self, input: &str0m::Input<'_>) -> bool {
        self.rtc.accepts(input)
    }

    pub(crate) fn add_local_candidate(&mut self, c: Candidate) -> Option<String> {
        self.rtc
            .add_local_candidate(c)
            .map(Candidate::to_sdp_string)
    }

    /// Stops using a local candidate (a TURN allocation that was lost)
    pub(crate) fn invalidate_local_candidate(&mut self, c: &Candidate) {
        self.rtc.direct_api().invalidate_candidate(c);
    }

    /// Creates the offer: media lines for what either side can send, and the data channel
    pub(crate) fn create_offer(&mut self, config: &Config) -> String {
        let local = config.capabilities;
        let remote = self.info.capabilities;
        let mut api = self.rtc.sdp_api();
        let mut mids = Vec::new();
        for (kind, l, r) in [
            (MediaKind::Audio, local.audio, remote.audio),
            (MediaKind::Video, local.video, remote.video),
        ] {
            // We can only receive what we can decode, i.e. what we enabled locally.
            if !l {
                continue;
            }
            let dir = direction(!self.send_paused[kind_index(kind_of(kind))], r);
            let mid = api.add_media(kind, dir, Some("meshrtc".into()), None, None);
            mids.push((kind, mid));
        }
        // The data channel, when we want one; a peer with neither media nor data still
        // gets one, as there would be nothing to negotiate otherwise.
        if local.data || mids.is_empty() {
            api.add_channel(config.channel_label.clone());
        }
        let (offer, pending) = api
            .apply()
            .expect("a change with a new channel always yields an offer; panic means bug");
        for (kind, mid) in mids {
            self.media.set_mid(kind, mid);
        }
        self.pending_offer = Some(pending);
        self.offers_out = self.offers_out.saturating_add(1);
        offer.to_sdp_string()
    }

    pub(crate) fn accept_offer(&mut self, sdp: &str) -> Result<String, SdpRejection> {
        let sdp = &self.filter_candidates(sdp);
        check_sdp(sdp)?;
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| SdpRejection::Unparsable(e.to_string()))?;
        // A renegotiation drops our own offer, if any (str0m invalidates it); the remote
        // ignores it (perfect negotiation), so no answer to it comes.
        if self.pending_offer.take().is_some() {
            self.unconfirmed_tracks_lost();
        }
        self.offers_out = 0;
        self.restart_offered = false;
        let answer = self
            .guarded_sdp(|rtc| rtc.sdp_api().accept_offer(offer))?
            .map_err(|e| SdpRejection::Unacceptable(e.to_string()))?;
        self.on_remote_description(sdp);
        Ok(fill_rejected_media_lines(&answer.to_sdp_string(), sdp))
    }

    pub(crate) fn accept_answer(&mut self, sdp: &str) -> Result<(), SdpRejection> {
        if self.pending_offer.is_none() {
            return Err(SdpRejection::UnexpectedAnswer);
        }
        let sdp = &self.filter_candidates(sdp);
        check_sdp(sdp)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SdpRejection::Unparsable(e.to_string()))?;
        // An answer from a connection the remote has since replaced leaves our offer waiting
        // for the right one.
        if self.is_other_connection(sdp) && self.has_remote_description {
            return Err(SdpRejection::StaleAnswer);
        }
        // The answer to an offer we have since replaced with a newer one (ICE restarts sent
        // while the remote could not answer, delivered together later).
        if self.offers_out > 1 {
            self.offers_out -= 1;
            return Err(SdpRejection::StaleAnswer);
        }
        self.offers_out = 0;
        let pending = self
            .pending_offer
            .take()
            .expect("checked above; panic means bug");
        self.guarded_sdp(|rtc| rtc.sdp_api().accept_answer(pending, answer))?
            .map_err(|e| SdpRejection::Unacceptable(e.to_string()))?;
        // Track m-lines the answered offer added are there now; any of an offer it replaced
        // (an ICE restart made meanwhile) are not, and are offered again.
        let rtc = &self.rtc;
        let wanted = &mut self.wanted_tracks;
        self.send_tracks.retain_mut(|t| {
            if !t.confirmed {
                if rtc.media(t.mid).is_none() {
                    if !wanted.contains(&t.track) {
                        wanted.push(t.track);
                    }
                    return false;
                }
                t.confirmed = true;
            }
            true
        });
        self.on_remote_description(sdp);
        Ok(())
    }

    /// The description without the candidates the policy does not allow (counted): the
    /// policy holds for candidates inside an offer or answer as for trickled ones
    fn filter_candidates(&mut self, sdp: &str) -> String {
        let mut out = String::with_capacity(sdp.len());
        for line in sdp.split_inclusive('\n') {
            let is_candidate = line.trim_start().starts_with("a=candidate:");
            if is_candidate {
                if let Ok(Some(c)) = parse_candidate(line) {
                    if !self.candidate_policy.allows(c.addr()) {
                        self.stats.candidates_filtered += 1;
                        tracing::debug!(peer = %self.info.peer_id, addr = %c.addr(), "sdp candidate outside the policy dropped");
                        continue;
                    }
                }
            }
            out.push_str(line);
        }
        out
    }

    /// What the room told us about this peer
    pub(crate) fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// Whether this connection never got the remote's description (a new one that waits for
    /// its answer)
    pub(crate) fn is_fresh(&self) -> bool {
        !self.has_remote_description
    }

    /// The connection broke for good (str0m gave up on it)
    pub(crate) fn set_broken(&mut self, error: TransportError) {
        tracing::debug!(peer = %self.info.peer_id, %error, "connection broken");
        self.last_error = Some(error.clone());
        self.broken = Some(error);
    }

    /// The last transport error seen on this peer's connections
    pub(crate) fn last_error(&self) -> Option<TransportError> {
        self.last_error.clone()
    }

    /// Notes how the outage is being healed; true if that is news (an event is due)
    pub(crate) fn note_reconnecting(&mut self, kind: ReconnectKind) -> bool {
        let news = self.reconnecting != Some(kind);
        self.reconnecting = Some(kind);
        news
    }

    /// The server refused to relay one of our offers: its answer will not come
    pub(crate) fn offer_refused(&mut self) {
        self.offers_out = self.offers_out.saturating_sub(1);
    }

    /// Signaling dropped: offers sent on the old connection may never arrive, so the next
    /// answer counts as the one for the offer that waits
    pub(crate) fn offers_maybe_lost(&mut self) {
        self.offers_out = self.offers_out.min(1);
    }

    /// Whether this connection was up before `t` (it carried the data an outage from `t`
    /// held up)
    pub(crate) fn connected_before(&self, t: Instant) -> bool {
        self.connected_at.is_some_and(|c| c < t)
    }

    /// Whether reliable data written to the data channel waits for its confirmation
    pub(crate) fn has_unconfirmed_data(&self) -> bool {
        !self.unacked.is_empty()
    }

    /// The outage is over: how it was healed
    pub(crate) fn reconnected(&mut self) -> ReconnectKind {
        self.reconnecting
            .take()
            .unwrap_or(ReconnectKind::IceRestart)
    }

    /// Whether an offer of ours waits for its answer
    pub(crate) fn has_pending_offer(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// Whether `sdp` comes from a remote connection that one of this peer's earlier
    /// connections talked to (a late offer for a connection we have replaced)
    pub(crate) fn is_retired_connection(&self, sdp: &str) -> bool {
        sdp_connection(sdp).is_some_and(|c| self.retired_remotes.contains(&c))
    }

    /// Whether `sdp` comes from another connection than the one we have (its fingerprint or
    /// SDP session id differs from the remote's first)
    pub(crate) fn is_other_connection(&self, sdp: &str) -> bool {
        match (&self.remote_connection, sdp_connection(sdp)) {
            (Some(ours), Some(theirs)) => *ours != theirs,
            // We never heard from the remote on this connection (ours is a new offer): its
            // offer is for a connection of its own.
            (None, Some(_)) => true,
            _ => false,
        }
    }

    /// Starts an ICE restart: new credentials and, with `fresh` (after a network change),
    /// the current local candidates added again; returns the offer
    ///
    /// The local candidates are kept (str0m would clear them only when the answer comes,
    /// leaving none): a candidate whose address went away just finds no pair.
    pub(crate) fn ice_restart(&mut self, fresh: Option<&[Candidate]>) -> String {
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api
            .apply()
            .expect("an ICE restart always yields an offer; panic means bug");
        for c in fresh.unwrap_or_default() {
            self.rtc.add_local_candidate(c.clone());
        }
        self.pending_offer = Some(pending);
        self.offers_out = self.offers_out.saturating_add(1);
        self.stats.reconnects += 1;
        self.restart_offered = true;
        offer.to_sdp_string()
    }

    /// Takes over what the connection this one replaces still had: messages not yet
    /// written, the recovery state and the counters; returns the messages written but not
    /// confirmed (the old connection may or may not have delivered them)
    pub(crate) fn take_over(&mut self, old: &mut Peer) -> Vec<DataMessage> {
        self.send_queue = std::mem::take(&mut old.send_queue);
        self.recovery = std::mem::replace(&mut old.recovery, Recovery::new(Default::default(), 0));
        // The outage goes on, but the old connection's restarts are not for this one: it
        // connects (or, not in time, is dead and replaced).
        if let Some(since) = self.recovery.down_since() {
            self.recovery.continue_outage(since);
        }
        let reconnects = old.stats.reconnects + 1;
        // The old connection's media figures (with those it carried) go on in this one's.
        let earlier = old.stats();
        self.stats = std::mem::take(&mut old.stats);
        self.stats.audio = earlier.audio;
        self.stats.video = earlier.video;
        self.stats.reconnects = reconnects;
        self.stats.connected = false;
        self.last_error = old.broken.take().or(old.last_error.take());
        self.reconnecting = old.reconnecting;
        // Answers to the old connection's offers may still come; they are not for ours.
        self.offers_out = old.offers_out;
        self.retired_remotes = std::mem::take(&mut old.retired_remotes);
        if let Some(remote) = old.remote_connection.take() {
            if !self.retired_remotes.contains(&remote) {
                self.retired_remotes.push(remote);
            }
        }
        if self.retired_remotes.len() > 8 {
            self.retired_remotes.remove(0);
        }
        old.unacked_bytes = 0;
        old.unacked.drain(..).collect()
    }

    /// The connection came up and the remote has since closed it (DTLS close): it is
    /// leaving, or replacing the connection itself
    pub(crate) fn closed_by_remote(&self) -> bool {
        self.connected_at.is_some() && !self.rtc.is_alive() && self.broken.is_none()
    }

    /// How this peer's connection is doing at `now`
    pub(crate) fn health(&self, now: Instant, config: &Config) -> Health {
        if !self.rtc.is_alive() || self.broken.is_some() {
            return Health::Dead;
        }
        let Some(connected_at) = self.connected_at else {
            if now >= self.connecting_deadline(config) {
                return Health::Dead;
            }
            return Health::Connecting;
        };
        let heard = self.last_received.unwrap_or(connected_at).max(connected_at);
        let restarting = self.restarting || self.restart_offered;
        if restarting || self.ice_disconnected_since.is_some() || now >= heard + STALE_AFTER {
            return Health::Down;
        }
        Health::Up
    }

    /// When a connection that has not come up is given up: the connect timeout, or sooner
    /// once DTLS refused something during the handshake and it has not completed since
    fn connecting_deadline(&self, config: &Config) -> Instant {
        let timeout = self.created + config.connect_timeout;
        match self.dtls_refused_at {
            Some(t) if !self.dtls_connected => timeout.min(t + HANDSHAKE_GRACE),
            _ => timeout,
        }
    }

    /// When [`health`](Self::health) changes by itself, at the latest
    pub(crate) fn health_deadline(&self, config: &Config) -> Option<Instant> {
        let at = match self.connected_at {
            None => self.connecting_deadline(config),
            Some(c)
                if self.ice_disconnected_since.is_none()
                    && !self.restarting
                    && !self.restart_offered =>
            {
                self.last_received.unwrap_or(c).max(c) + STALE_AFTER
            }
            Some(_) => return None,
        };
        // A deadline that has passed was seen already (the health says so).
        (at > self.now).then_some(at)
    }

    fn on_remote_description(&mut self, sdp: &str) {
        if self.remote_connection.is_none() {
            self.remote_connection = sdp_connection(sdp);
        }
        // New ICE credentials on either side restart ICE: the path counts as broken until
        // str0m connects again.
        let ufrag = sdp_attribute(sdp, "a=ice-ufrag:").map(str::to_string);
        let theirs_changed = self.remote_ufrag.is_some() && ufrag != self.remote_ufrag;
        if std::mem::take(&mut self.restart_offered) || theirs_changed {
            self.restarting = true;
        }
        self.remote_ufrag = ufrag;
        self.remote_pwd = sdp_attribute(sdp, "a=ice-pwd:").map(str::to_string);
        if let Some(max) = sdp_max_message_size(sdp) {
            self.remote_max_message = Some(max);
        }
        self.has_remote_description = true;
        for (mid, track) in tracks::remote_tracks(sdp) {
            if !self.remote_track_mids.iter().any(|(m, _)| *m == mid)
                && self.remote_track_mids.len() < tracks::MAX_RECV_TRACKS
            {
                self.remote_track_mids.push((mid, track));
            }
        }
        for line in std::mem::take(&mut self.queued_candidates) {
            if let Ok(Some(c)) = parse_candidate(&line) {
                self.rtc.add_remote_candidate(c);
            }
        }
    }

    /// Queues a candidate line that arrived before this peer existed
    pub(crate) fn queue_remote_candidate(&mut self, line: String) {
        if self.queued_candidates.len() < MAX_QUEUED_CANDIDATES {
            self.queued_candidates.push(line);
        }
    }

    /// Adds a trickled remote candidate (an empty line means end of candidates)
    pub(crate) fn add_remote_candidate(
        &mut self,
        line: &str,
        policy: CandidatePolicy,
    ) -> Result<(), String> {
        let Some(c) = parse_candidate(line)? else {
            return Ok(());
        };
        if !policy.allows(c.addr()) {
            self.stats.candidates_filtered += 1;
            return Ok(());
        }
        if self.has_remote_description {
            self.rtc.add_remote_candidate(c);
        } else {
            self.queue_remote_candidate(line.to_string());
        }
        Ok(())
    }

    pub(crate) fn send(
        &mut self,
        message: DataMessage,
        max_queued: usize,
    ) -> Result<(), CommandError> {
        if let Some(max) = self.remote_max_message.filter(|max| message.len() > *max) {
            // The remote would refuse it (str0m's SCTP too): this send fails, the
            // connection goes on.
            return Err(CommandError::MessageTooLarge {
                len: message.len(),
                max,
            });
        }
        if self.send_queue.len() >= max_queued {
            return Err(CommandError::SendQueueFull(self.info.peer_id.clone()));
        }
        self.send_queue.push_back(message);
        Ok(())
    }

    /// Runs what is due at `now`: playout, and the `Rtc`'s timeout when it asked for one
    /// (or was given something to send); returns whether the `Rtc` was fed and so has to
    /// be drained
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Result<bool, TransportError> {
        self.now = self.now.max(now);
        self.media.handle_timeout(now, &mut self.media_out);
        let mut rtc_due = self.next_timeout <= now;
        if let Some(bps) = self.media.poll_rate_request(now) {
            // A queue is building on the path from this peer: ask it for less (REMB).
            let mid = self.media.audio_mid.or(self.media.video_mid);
            if let Some(mid) = mid {
                let mut api = self.rtc.direct_api();
                if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                    rx.request_remb(Bitrate::bps(u64::from(bps)));
                    rtc_due = true;
                }
            }
        }
        for t in &mut self.recv_tracks {
            t.media.handle_timeout(now, &mut t.out);
        }
        self.probe_path(now);
        // A playout tick alone leaves the `Rtc` be: feeding it a timeout it did not ask for,
        // and draining it after, costs as much as one it did (every 10 ms per peer).
        if !rtc_due {
            return Ok(false);
        }
        self.guarded(|p| {
            p.rtc
                .handle_input(str0m::Input::Timeout(now))
                .map_err(|e| TransportError::from_rtc(&e))?;
            Ok(true)
        })
    }

    /// Applies a remote description with `f`, containing a panic in str0m: the `Rtc` is
    /// then left alone and the connection counts as broken (recovery replaces it)
    fn guarded_sdp<T>(&mut self, f: impl FnOnce(&mut Rtc) -> T) -> Result<T, SdpRejection> {
        if self.panicked {
            return Err(SdpRejection::Unacceptable(
                "the connection is being replaced".into(),
            ));
        }
        self.catch_panic(|p| f(&mut p.rtc)).map_err(|error| {
            self.set_broken(error.clone());
            SdpRejection::Unacceptable(error.detail)
        })
    }

    /// Starts or stops probing the path's round trip (while str0m sends video with its
    /// estimator on, over a path that works), and sends a probe when one is due
    fn probe_path(&mut self, now: Instant) {
        let active = self.bwe
            && !self.panicked
            && self.rate.frames_sent > 0
            && self.dtls_connected
            && !self.restarting
            && !self.restart_offered
            && self.ice_disconnected_since.is_none();
        self.rate.pushback.set_active(now, active);
        if self.rate.pushback.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        let sent = self.rate.sent.bps(now);
        let estimate = self.rate.path_estimate_uncapped(now);
        let Some(probe) = self
            .rate
            .pushback
            .on_timeout(now, sent, estimate, self.path)
        else {
            return;
        };
        let (Some(ufrag), Some(pwd)) = (&self.remote_ufrag, &self.remote_pwd) else {
            return;
        };
        let local = self.rtc.direct_api().local_ice_credentials();
        let username = format!("{ufrag}:{}", local.ufrag);
        // Our role as str0m took it (the first offerer controls), with a tie-breaker that
        // loses any role conflict: should the roles disagree, the remote answers 487 and
        // keeps its own (RFC 8445 §7.3.1.1) rather than switching for a probe.
        let (role, tie_breaker) = match self.role {
            Role::Offerer => (stun::attr::ICE_CONTROLLING, 0),
            Role::Answerer => (stun::attr::ICE_CONTROLLED, u64::MAX),
        };
        let request =
            stun::Builder::new(stun::Class::Request, stun::method::BINDING, probe.tid, 96)
                .attr(stun::attr::USERNAME, username.as_bytes())
                .u32(stun::attr::PRIORITY, PROBE_PRIORITY)
                .attr(role, &tie_breaker.to_be_bytes())
                .integrity(pwd.as_bytes())
                .fingerprint()
                .finish();
        self.stats.datagrams_sent += 1;
        self.rate.sent.add(now, request.len());
        self.probe_out = Some(Transmit {
            source: probe.source,
            destination: probe.destination,
            contents: request,
        });
    }

    /// Whether `msg` answers one of our round-trip probes (then it is used up here)
    pub(crate) fn take_probe_answer(&mut self, now: Instant, msg: &stun::Message<'_>) -> bool {
        if !self.rate.pushback.owns(&msg.tid) {
            return false;
        }
        let Some(pwd) = &self.remote_pwd else {
            return false;
        };
        if !msg.verify_integrity(pwd.as_bytes()) {
            return false;
        }
        self.rate.pushback.on_answer(now, &msg.tid)
    }

    /// Runs `f` on this peer's `Rtc` and contains a panic in it. str0m has panicked on
    /// hostile input before (its changelog lists such fixes); a panic ends this connection
    /// (the error fails the peer and recovery replaces it), not the process or the room,
    /// and the `Rtc` is not fed or polled again.
    fn guarded<T: Default>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, TransportError>,
    ) -> Result<T, TransportError> {
        if self.panicked {
            return Ok(T::default());
        }
        self.catch_panic(f)?
    }

    /// Runs `f`; a panic in it marks this peer's `Rtc` as not to be used again and comes
    /// back as the error
    fn catch_panic<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<T, TransportError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))).map_err(|panic| {
            self.panicked = true;
            let error = TransportError::panicked(panic_detail(&*panic));
            tracing::warn!(peer = %self.info.peer_id, %error, "the connection is dropped");
            error
        })
    }

    /// The codec we send video with to this peer (first of our preference it accepted)
    pub(crate) fn video_send_codec(&mut self) -> Option<VideoCodec> {
        if self.video_send_codec.is_some() {
            return self.video_send_codec;
        }
        let mid = self.media.video_mid?;
        let writer = self.rtc.writer(mid)?;
        let offered: Vec<VideoCodec> = writer
            .payload_params()
            .filter_map(|p| video_codec_of(p.spec().codec))
            .collect();
        self.video_send_codec = self
            .video_preference
            .iter()
            .copied()
            .find(|c| offered.contains(c));
        self.video_send_codec
    }

    /// The codec we send video with, once known (see [`video_send_codec`](Self::video_send_codec))
    pub(crate) fn sent_video_codec(&self) -> Option<VideoCodec> {
        self.video_send_codec
    }

    /// Whether media written now would be sent (ICE and DTLS are up)
    pub(crate) fn can_send_media(&self) -> bool {
        self.dtls_connected && self.rtc.is_connected()
    }

    /// Writes one encoded audio frame; false if this peer does not take audio from us
    pub(crate) fn write_audio(&mut self, wallclock: Instant, ticks: i64, data: Arc<[u8]>) -> bool {
        if !self.can_send_media() || self.send_paused[0] {
            return false;
        }
        let Some(mid) = self.media.audio_mid else {
            return false;
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return false;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return false;
        };
        let t = MediaTime::new(ticks.max(0) as u64, Frequency::FORTY_EIGHT_KHZ);
        let len = data.len();
        match writer.write(pt, wallclock, t, data) {
            Ok(()) => {
                self.count_sent(crate::MediaKind::Audio, len);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "audio write refused");
                false
            }
        }
    }

    /// Writes one encoded video frame in `codec`; false if not sent
    pub(crate) fn write_video(
        &mut self,
        codec: VideoCodec,
        wallclock: Instant,
        ticks: i64,
        data: Arc<[u8]>,
    ) -> bool {
        if !self.can_send_media() || self.send_paused[1] || self.video_send_codec() != Some(codec) {
            return false;
        }
        let Some(mid) = self.media.video_mid else {
            return false;
        };
        self.write_video_on(mid, codec, wallclock, ticks, data)
    }

    /// Writes one encoded video frame in `codec` on the m-line `mid` (the main video's or a
    /// separate track's) and counts it; false if str0m would not take it
    fn write_video_on(
        &mut self,
        mid: Mid,
        codec: VideoCodec,
        wallclock: Instant,
        ticks: i64,
        data: Arc<[u8]>,
    ) -> bool {
        let Some(writer) = self.rtc.writer(mid) else {
            return false;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| video_codec_of(p.spec().codec) == Some(codec))
            .map(|p| p.pt())
        else {
            return false;
        };
        let t = MediaTime::new(ticks.max(0) as u64, Frequency::NINETY_KHZ);
        let len = data.len();
        match writer.write(pt, wallclock, t, data) {
            Ok(()) => {
                self.count_sent(crate::MediaKind::Video, len);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, %mid, "video write refused");
                false
            }
        }
    }

    /// A datagram of `len` bytes from this peer, parsed
    pub(crate) fn handle_receive(
        &mut self,
        input: str0m::Input<'_>,
        len: usize,
    ) -> Result<(), TransportError> {
        if let str0m::Input::Receive(t, _) = &input {
            self.now = self.now.max(*t);
            self.last_received = Some(self.now);
            self.media.handle_datagram(self.now, len);
        }
        self.stats.datagrams_received += 1;
        self.guarded(|p| p.receive_rtc(input))
    }

    fn receive_rtc(&mut self, input: str0m::Input<'_>) -> Result<(), TransportError> {
        match self.rtc.handle_input(input) {
            Ok(()) => Ok(()),
            // What DTLS refuses in a datagram is dropped, not fatal: before the handshake
            // completes nothing is authenticated (a plaintext alert or garbage from a
            // spoofed source must not end the connection); afterwards only an alert
            // (which then has to be authenticated) ends it.
            Err(str0m::RtcError::Dtls(e))
                if !self.dtls_connected || !e.to_string().contains("alert") =>
            {
                self.stats.dtls_rejected += 1;
                tracing::debug!(peer = %self.info.peer_id, error = %e, "datagram refused by dtls dropped");
                if !self.dtls_connected {
                    self.dtls_refused_at.get_or_insert(self.now);
                }
                Ok(())
            }
            Err(e) => Err(TransportError::from_rtc(&e)),
        }
    }

    /// Whether `datagram` is an encrypted DTLS record this peer's handshake must not see
    /// (see [`EarlyRecords`]); counted as refused by DTLS
    pub(crate) fn refuses_early_record(&mut self, datagram: &[u8]) -> bool {
        if self.dtls_connected || !self.early_records.refuses(datagram) {
            return false;
        }
        self.stats.dtls_rejected += 1;
        tracing::debug!(peer = %self.info.peer_id, "early encrypted dtls record dropped");
        true
    }

    pub(crate) fn close(&mut self) {
        // Closing an already closing Rtc is harmless; the error only says so.
        let _ = self.rtc.close();
    }

    /// Writes queued messages while the channel takes them; true if any was written
    fn flush(&mut self) -> Result<bool, TransportError> {
        let Some(id) = self.channel else {
            return Ok(false);
        };
        let Some(mut chan) = self.rtc.channel(id) else {
            return Ok(false);
        };
        let mut wrote = false;
        let buffered = chan.buffered_amount();
        // What the channel no longer holds was delivered: forget it, oldest first.
        while self.unacked_bytes > buffered {
            let Some(m) = self.unacked.pop_front() else {
                break;
            };
            self.unacked_bytes -= m.len();
        }
        self.window.update(self.now, buffered);
        while let Some(m) = self.send_queue.front() {
            if self.remote_max_message.is_some_and(|max| m.len() > max) {
                // Queued before the remote said how much it takes: dropped, reported.
                let m = self
                    .send_queue
                    .pop_front()
                    .expect("the front was just seen; panic means bug");
                tracing::debug!(peer = %self.info.peer_id, len = m.len(), "message over the remote's max-message-size dropped");
                self.oversized.push(m);
                continue;
            }
            if !self.window.admits() {
                break;
            }
            let binary = matches!(m, DataMessage::Binary(_));
            let accepted = chan
                .write(binary, m.as_bytes())
                .map_err(|e| TransportError::from_rtc(&e))?;
            if !accepted {
                break;
            }
            self.stats.messages_sent += 1;
            self.stats.bytes_sent += m.len() as u64;
            self.window.wrote(m.len());
            let m = self
                .send_queue
                .pop_front()
                .expect("the front was just written; panic means bug");
            self.unacked_bytes += m.len();
            self.unacked.push_back(m);
            wrote = true;
        }
        Ok(wrote)
    }

    /// Polls the `Rtc` until it returns a timeout, flushing the send queue as it opens
    pub(crate) fn drain(&mut self, out: &mut Vec<PeerOutput>) -> Result<(), TransportError> {
        let res = self.guarded(|p| p.drain_rtc(out));
        if !self.oversized.is_empty() {
            out.push(PeerOutput::Undelivered(std::mem::take(&mut self.oversized)));
        }
        res
    }

    /// Hands on the media's output (playout, frames) without polling the `Rtc`
    pub(crate) fn drain_media(&mut self, out: &mut Vec<PeerOutput>) {
        if let Some(t) = self.probe_out.take() {
            out.push(PeerOutput::Transmit(t));
        }
        if !self.media_out.is_empty() {
            out.extend(self.media_out.drain(..).map(PeerOutput::Media));
        }
        for t in &mut self.recv_tracks {
            let track = t.track;
            out.extend(t.out.drain(..).map(|m| PeerOutput::TrackMedia(track, m)));
        }
    }

    fn drain_rtc(&mut self, out: &mut Vec<PeerOutput>) -> Result<(), TransportError> {
        self.drain_media(out);
        loop {
            self.flush()?;
            let mut bad_in_a_row = 0;
            loop {
                let o = match self.rtc.poll_output() {
                    Ok(o) => o,
                    Err(str0m::RtcError::Packet(mid, pt, e)) if bad_in_a_row < MAX_BAD_PACKETS => {
                        // A remote frame that cannot be depacketized: drop it, count it,
                        // ask for a keyframe; the connection goes on.
                        bad_in_a_row += 1;
                        self.stats.malformed_media += 1;
                        tracing::debug!(%mid, %pt, error = %e, "dropped malformed media");
                        let now = self.now;
                        match self.recv_tracks.iter_mut().find(|t| t.mid == mid) {
                            Some(t) => t.media.handle_malformed(&mut self.rtc, mid, now),
                            None => self.media.handle_malformed(&mut self.rtc, mid, now),
                        }
                        continue;
                    }
                    Err(e) => return Err(TransportError::from_rtc(&e)),
                };
                match o {
                    str0m::Output::Timeout(t) => {
                        self.next_timeout = t;
                        break;
                    }
                    str0m::Output::Transmit(t) => {
                        // Media and DTLS go on the nominated pair; ICE checks may go on
                        // any (RFC 7983: STUN's first byte is 0–3).
                        if t.contents.first().is_some_and(|b| *b > 3) {
                            let path = Some((t.source, t.destination));
                            if self.path.is_some() && self.path != path {
                                // Round trips of another path say nothing of this one.
                                self.rate.pushback.forget_round_trips();
                            }
                            self.path = path;
                        }
                        self.stats.datagrams_sent += 1;
                        self.rate.sent.add(self.now, t.contents.len());
                        out.push(PeerOutput::Transmit(Transmit {
                            source: t.source,
                            destination: t.destination,
                            contents: t.contents.into(),
                        }));
                    }
                    str0m::Output::Event(e) => self.handle_event(e, out),
                }
            }
            self.drain_media(out);
            if !self.rtc.is_alive() {
                out.push(PeerOutput::Closed);
                return Ok(());
            }
            let writable = self.channel.is_some() && !self.send_queue.is_empty();
            if !writable || !self.flush()? {
                return Ok(());
            }
        }
    }

    fn handle_event(&mut self, e: RtcEvent, out: &mut Vec<PeerOutput>) {
        match e {
            RtcEvent::Connected => {
                self.dtls_connected = true;
                self.early_records = EarlyRecords::default();
                // Without a data channel, DTLS up is when media becomes usable.
                if !self.wants_data && self.connected_at.is_none() {
                    self.connected_at = Some(self.now);
                    out.push(PeerOutput::Connected(self.now - self.created));
                }
            }
            RtcEvent::IceConnectionStateChange(state) => match state {
                IceConnectionState::Disconnected => {
                    self.ice_disconnected_since.get_or_insert(self.now);
                }
                IceConnectionState::Connected | IceConnectionState::Completed => {
                    self.ice_disconnected_since = None;
                    self.restarting = false;
                }
                _ => {}
            },
            RtcEvent::ChannelOpen(id, label) => {
                if let Some(mut chan) = self.rtc.channel(id) {
                    chan.set_buffered_amount_low_threshold(BUFFERED_LOW_THRESHOLD);
                }
                self.labels.retain(|(c, _)| *c != id);
                self.labels.push((id, label));
                if self.channel.is_none() {
                    self.channel = Some(id);
                }
                if self.connected_at.is_none() {
                    self.connected_at = Some(self.now);
                    let connect_time = self.now - self.created;
                    // Connecting took at least four round trips (ICE check, DTLS and SCTP
                    // handshakes): a first, generous round trip for the send window's
                    // sample periods until str0m measures one.
                    self.window.handle_rtt(connect_time / 4);
                    out.push(PeerOutput::Connected(connect_time));
                }
            }
            RtcEvent::ChannelData(d) => {
                self.stats.messages_received += 1;
                self.stats.bytes_received += d.data.len() as u64;
                let label = self
                    .labels
                    .iter()
                    .find(|(c, _)| *c == d.id)
                    .map(|(_, l)| l.clone())
                    .unwrap_or_default();
                let message = if d.binary {
                    DataMessage::Binary(d.data)
                } else {
                    match String::from_utf8(d.data) {
                        Ok(s) => DataMessage::Text(s),
                        Err(e) => DataMessage::Binary(e.into_bytes()),
                    }
                };
                out.push(PeerOutput::Data { label, message });
            }
            RtcEvent::ChannelClose(id) => {
                self.labels.retain(|(c, _)| *c != id);
                if self.channel == Some(id) {
                    self.channel = self.labels.first().map(|(c, _)| *c);
                }
            }
            RtcEvent::PeerStats(s) => {
                // The participant names the candidate types (its transport knows them).
                self.stats.candidate_pair = s
                    .selected_candidate_pair
                    .as_ref()
                    .map(|p| crate::stats::CandidatePair::unnamed(p.local.addr, p.remote.addr));
                // RTCP's round trip when media flows (below), else the last STUN check's on
                // the selected pair (ICE consent checks run whatever flows). Not `s.rtt`:
                // str0m measures that from transport-wide congestion-control feedback, which
                // the remote sends every 50-100 ms, so it also counts how long the remote
                // held the feedback (10 ms more than the path in the simulator with audio,
                // 6-17 ms on loopback).
                let ice_rtt = s
                    .selected_candidate_pair
                    .as_ref()
                    .and_then(|p| p.current_round_trip_time);
                if let Some(rtt) = ice_rtt {
                    self.stats.rtt = Some(rtt);
                    self.window.handle_rtt(rtt);
                }
            }
            RtcEvent::MediaEgressStats(st) => {
                // Cumulative per stream of this `Rtc`: add what is new (a connection that
                // replaces this one starts from zero again, its counters carried over).
                if let Some(kind) = self.kind_of_mid(st.mid) {
                    let seen = &mut self.egress_packets[kind_index(kind)];
                    let new = st.packets.saturating_sub(*seen);
                    *seen = (*seen).max(st.packets);
                    self.stats.media_traffic.count_mut(kind, true).packets += new;
                } else if let Some(t) = self.send_tracks.iter_mut().find(|t| t.mid == st.mid) {
                    // A separate track's stream: video, counted from its own total.
                    let new = st.packets.saturating_sub(t.egress_packets);
                    t.egress_packets = t.egress_packets.max(st.packets);
                    self.stats
                        .media_traffic
                        .count_mut(crate::MediaKind::Video, true)
                        .packets += new;
                }
                // RTCP receiver reports: arrival minus our sender report's time minus the
                // delay the remote reports holding it (RFC 3550 LSR/DLSR).
                if let Some(rtt) = st.rtt {
                    self.stats.rtt = Some(rtt);
                    self.window.handle_rtt(rtt);
                }
                let (audio, video) = (self.media.audio_mid, self.media.video_mid);
                self.rate.handle_egress(audio, video, &st);
            }
            RtcEvent::Closed => out.push(PeerOutput::Closed),
            RtcEvent::MediaAdded(m) => {
                if self.send_tracks.iter().any(|t| t.mid == m.mid) {
                    // One of our separate tracks' m-lines, now negotiated.
                } else if let Some(&(_, track)) =
                    self.remote_track_mids.iter().find(|(mid, _)| *mid == m.mid)
                {
                    if m.kind == MediaKind::Video
                        && self.recv_tracks.len() < tracks::MAX_RECV_TRACKS
                        && !self.recv_tracks.iter().any(|t| t.mid == m.mid)
                    {
                        let mut media = PeerMedia::new(&self.media_config, self.wallclock_anchor);
                        media.set_mid(MediaKind::Video, m.mid);
                        self.recv_tracks.push(RecvTrack {
                            track,
                            mid: m.mid,
                            media,
                            out: Vec::new(),
                        });
                    }
                } else {
                    self.media.set_mid(m.kind, m.mid);
                }
            }
            RtcEvent::MediaChanged(m) => {
                let kind = if Some(m.mid) == self.media.audio_mid {
                    crate::MediaKind::Audio
                } else if Some(m.mid) == self.media.video_mid {
                    crate::MediaKind::Video
                } else {
                    return;
                };
                let sending = m.direction.is_receiving();
                let was = &mut self.remote_sending[kind_index(kind)];
                if *was != sending {
                    *was = sending;
                    out.push(PeerOutput::RemoteSending(kind, sending));
                }
            }
            RtcEvent::MediaData(d) => {
                // A separate track's media counts as video.
                let kind = self.kind_of_mid(d.mid).or_else(|| {
                    self.recv_tracks
                        .iter()
                        .any(|t| t.mid == d.mid)
                        .then_some(crate::MediaKind::Video)
                });
                if let Some(kind) = kind {
                    let bytes = d.data.len() as u64;
                    let (first, last) = (**d.seq_range.start(), **d.seq_range.end());
                    let packets = last.saturating_sub(first).saturating_add(1);
                    let c = self.stats.media_traffic.count_mut(kind, false);
                    c.bytes += bytes;
                    c.frames += 1;
                    c.packets += packets;
                    self.received_rate[kind_index(kind)].add(self.now, bytes);
                }
                let cfg = self.jitter_config;
                if let Some(i) = self.recv_tracks.iter().position(|t| t.mid == d.mid) {
                    let t = &mut self.recv_tracks[i];
                    t.media
                        .handle_media_data(&mut self.rtc, &cfg, d, &mut t.out);
                    return;
                }
                self.media
                    .handle_media_data(&mut self.rtc, &cfg, d, &mut self.media_out);
                // The first frame starts playout: schedule it.
            }
            RtcEvent::KeyframeRequest(r) if Some(r.mid) == self.media.video_mid => {
                if let Some(c) = self.video_send_codec() {
                    out.push(PeerOutput::Media(MediaOut::KeyframeWanted(c)));
                }
            }
            RtcEvent::KeyframeRequest(r) => {
                let codec = self
                    .send_tracks
                    .iter()
                    .find(|t| t.mid == r.mid)
                    .map(|t| (t.track, t.codec));
                if let Some((track, Some(c))) = codec {
                    out.push(PeerOutput::TrackKeyframeWanted(track, c));
                }
            }
            RtcEvent::SenderFeedback(f) if self.recv_tracks.iter().any(|t| t.mid == f.mid) => {
                if let Some(t) = self.recv_track(f.mid) {
                    t.media.handle_sender_report(
                        f.mid,
                        f.received_at,
                        f.sender_info.ntp_time,
                        f.sender_info.rtp_time.numer() as u32,
                    );
                }
            }
            RtcEvent::SenderFeedback(f) => {
                self.media.handle_sender_report(
                    f.mid,
                    f.received_at,
                    f.sender_info.ntp_time,
                    f.sender_info.rtp_time.numer() as u32,
                );
            }
            RtcEvent::EgressBitrateEstimate(kind) => self.rate.handle_estimate(kind, self.now),
            RtcEvent::MediaIngressStats(st) => {
                self.media.handle_ingress_stats(st.mid, st.loss, st.jitter);
                if let Some(rtt) = st.rtt {
                    self.stats.rtt = Some(rtt);
                    self.window.handle_rtt(rtt);
                }
            }
            _ => {}
        }
    }

    /// Whether the peer's connection or media has something due at `now` (the timeout its
    /// `Rtc` asked for, or a playout); recovery and health deadlines are not counted
    pub(crate) fn io_due(&self, now: Instant) -> bool {
        self.next_timeout <= now
            || self.media_timeout().is_some_and(|t| t <= now)
            || self.rate.pushback.poll_timeout().is_some_and(|t| t <= now)
    }

    /// The soonest playout or render of the main media and the separate tracks
    fn media_timeout(&self) -> Option<Instant> {
        self.recv_tracks
            .iter()
            .filter_map(|t| t.media.poll_timeout())
            .chain(self.media.poll_timeout())
            .min()
    }

    /// The next instant this peer needs a timeout; its recovery counts only while
    /// `signaling` is up (without it nothing can be done)
    pub(crate) fn next_timeout(
        &self,
        config: &Config,
        signaling: bool,
    ) -> (Instant, TimeoutReason) {
        let mut best = (
            self.next_timeout,
            TimeoutReason::Rtc(self.rtc.last_timeout_reason()),
        );
        if let Some(t) = self.media_timeout() {
            if t < best.0 {
                best = (t, TimeoutReason::Playout);
            }
        }
        if let Some(t) = self.rate.pushback.poll_timeout() {
            if t < best.0 {
                best = (t, TimeoutReason::Ice);
            }
        }
        let recovery = self.recovery.poll_timeout().filter(|_| signaling);
        let deadline = [self.health_deadline(config), recovery]
            .into_iter()
            .flatten()
            .min();
        if let Some(d) = deadline {
            if d < best.0 {
                best = (d, TimeoutReason::PeerDeadline);
            }
        }
        best
    }
}

/// How a peer's connection is doing
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// Not connected yet, within the connect timeout
    Connecting,
    /// Connected and heard from
    Up,
    /// The path is broken: ICE disconnected, or nothing heard for [`STALE_AFTER`]
    Down,
    /// It cannot come back by itself: closed, or never connected in time
    Dead,
}

/// How long a handshake may go on after DTLS refused one of its datagrams (a record of a
/// stale session on the same address, a forgery, a replay) before the connection is given
/// up and made again. Such a record can leave the handshake unable to complete (dimpl fails
/// it when the record is decrypted: `decryption failed`, `signature verification failed`),
/// and the connect timeout (15 s) was then the only way out; a handshake that is fine
/// completes within a few round trips.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// A connected peer sends something at least every few seconds (STUN consent checks, RTCP,
/// SCTP heartbeats); nothing for this long means the path is broken
const STALE_AFTER: Duration = Duration::from_secs(5);

/// A per-peer seed for the recovery's jitter, from its id
fn fingerprint_seed(id: &crate::signal::PeerId) -> u64 {
    id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The `a=fingerprint:` value of an SDP (the session's, or the first media section's)
/// Which connection of the remote an SDP describes: its DTLS fingerprint with the session id
/// of its `o=` line (RFC 3264 keeps that for the life of one connection; a participant may
/// reuse one certificate for all its connections, so the fingerprint alone does not tell)
fn sdp_connection(sdp: &str) -> Option<String> {
    let fingerprint = sdp_attribute(sdp, "a=fingerprint:")?;
    let session = sdp_attribute(sdp, "o=")
        .and_then(|o| o.split_whitespace().nth(1))
        .unwrap_or("");
    Some(format!("{fingerprint} {session}"))
}

/// The value of the first line of an SDP that starts with `prefix`
fn sdp_attribute<'a>(sdp: &'a str, prefix: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(prefix))
        .map(str::trim)
}

/// Gives every rejected media line of an answer (`m=video 0 PROTO` with no formats, which
/// str0m writes when no codec matches) the first format of the offer's line at the same
/// position, as RFC 3264 asks: browsers refuse an answer whose format list is empty
fn fill_rejected_media_lines(answer: &str, offer: &str) -> String {
    let offer_formats: Vec<&str> = offer
        .lines()
        .filter(|l| l.starts_with("m="))
        .map(|l| l.split_whitespace().nth(3).unwrap_or("0"))
        .collect();
    let mut index = 0;
    let mut out = String::with_capacity(answer.len() + 8);
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body.starts_with("m=") {
            let fields: Vec<&str> = body.split_whitespace().collect();
            if fields.len() == 3 && fields[1] == "0" {
                let fmt = offer_formats.get(index).copied().unwrap_or("0");
                out.push_str(&format!(
                    "{} {} {} {fmt}\r\n",
                    fields[0], fields[1], fields[2]
                ));
                index += 1;
                continue;
            }
            index += 1;
        }
        out.push_str(line);
    }
    out
}

/// The `max-message-size` of an SDP's data channel section (RFC 8841): 64 KiB when the
/// section has none, no limit for 0; `None` without a data channel section
fn sdp_max_message_size(sdp: &str) -> Option<usize> {
    let mut in_application = false;
    let mut found = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            if in_application {
                break;
            }
            in_application = line.starts_with("m=application");
            if in_application {
                found = Some(64 * 1024);
            }
        } else if let Some(v) = line
            .strip_prefix("a=max-message-size:")
            .filter(|_| in_application)
        {
            found = match v.trim().parse::<u64>() {
                Ok(0) => Some(usize::MAX),
                Ok(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                // Unreadable: the RFC's default.
                Err(_) => Some(64 * 1024),
            };
        }
    }
    found
}

/// The message of a caught panic
fn panic_detail(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Refuses what str0m 0.24 would panic on in a remote description: an RTX payload type
/// given two different `apt` (associated payload types) in one m-line, on one `a=fmtp`
/// line or across several (str0m 0.25 rejects it itself)
fn check_sdp(sdp: &str) -> Result<(), SdpRejection> {
    let mut apts: Vec<(&str, &str)> = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            apts.clear();
        }
        let Some((pt, params)) = line
            .strip_prefix("a=fmtp:")
            .and_then(|rest| rest.trim().split_once(' '))
        else {
            continue;
        };
        for param in params.split(';') {
            let Some(apt) = param.trim().strip_prefix("apt=") else {
                continue;
            };
            match apts.iter().find(|(p, _)| *p == pt) {
                Some((_, earlier)) if *earlier != apt => {
                    return Err(SdpRejection::Unparsable(format!(
                        "payload type {pt} has conflicting apt values {earlier} and {apt}"
                    )));
                }
                Some(_) => {}
                None => apts.push((pt, apt)),
            }
        }
    }
    Ok(())
}

/// Parses a trickled candidate line; `Ok(None)` is the end-of-candidates marker
pub(crate) fn parse_candidate(line: &str) -> Result<Option<Candidate>, String> {
    let line = line.trim();
    let line = line.strip_prefix("a=").unwrap_or(line);
    if line.is_empty() {
        return Ok(None);
    }
    Candidate::from_sdp_string(line)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DTLS 1.2 record header (and a byte of body) of `kind`, `epoch`, `seq`
    fn record(kind: u8, epoch: u16, seq: u64) -> Vec<u8> {
        let mut r = vec![kind, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&seq.to_be_bytes()[2..]);
        r.extend_from_slice(&[0, 1, 0]);
        r
    }

    #[test]
    fn encrypted_records_before_the_hello_and_repeats_are_refused() {
        let mut early = EarlyRecords::default();
        // Encrypted before any hello: stale or forged.
        assert!(early.refuses(&record(23, 1, 5)));
        assert!(early.refuses(&record(22, 1, 0)));
        // Plaintext passes, alerts too (they are handled further on).
        assert!(!early.refuses(&record(21, 0, 0)));
        assert!(!early.refuses(&record(22, 0, 0)));
        // After the hello the remote's Finished passes once; its resend (new sequence)
        // passes; a repeat of either does not.
        assert!(!early.refuses(&record(22, 1, 0)));
        assert!(!early.refuses(&record(22, 1, 1)));
        assert!(early.refuses(&record(22, 1, 0)));
        assert!(early.refuses(&record(22, 1, 1)));
        // Not DTLS 1.2 records: STUN, RTP, a DTLS 1.3 unified header, a short datagram.
        for other in [
            vec![0, 1, 0, 0],
            vec![0x80; 20],
            vec![0x2c; 20],
            vec![23, 0xfe],
        ] {
            assert!(!early.refuses(&other));
        }
        // Memory stays bounded whatever arrives.
        for seq in 0..10_000 {
            early.refuses(&record(23, 1, 100 + seq));
        }
        assert!(early.seen.len() <= EARLY_RECORDS);
    }

    #[test]
    fn rejected_media_lines_get_a_format_from_the_offer() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=x\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n";
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=y\r\nm=video 0 UDP/TLS/RTP/SAVPF \r\na=z\r\n";
        let fixed = fill_rejected_media_lines(answer, offer);
        assert_eq!(
            fixed,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=y\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=z\r\n"
        );
        // Nothing to fill: unchanged.
        let ok = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        assert_eq!(fill_rejected_media_lines(ok, offer), ok);
    }
}
