//! `meshrtc demo`: an embedded signaling server and N peers on loopback, full mesh

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use meshrtc::signal::server::ServerConfig;
use meshrtc::signal::{PeerId, RoomId};
use meshrtc::CandidatePolicy;
use meshrtc_tokio::echo::{self, RemoteReport};
use meshrtc_tokio::{Session, SessionConfig, SignalServer, SignalServerConfig};
use tokio::sync::watch;

use meshrtc::codec::{VideoCodec, VideoEncoderConfig};
use meshrtc::session::TestMedia;
use meshrtc::signal::Capabilities;
use meshrtc::PeerStats;

use crate::{loopback_any_port, millis, DemoArgs};

/// The demo's video sizes (width, height, fps), best first: the first the machine can carry
/// for the number of peers is used
const VIDEO_LADDER: [(u32, u32, u32); 5] = [
    (640, 360, 30),
    (480, 270, 30),
    (320, 180, 30),
    (320, 180, 15),
    (160, 90, 15),
];

/// CPU time of one video frame: a fixed part per encode or decode call and a part per
/// pixel; an encode counts as [`ENCODE_COST`] decodes. Fitted on this project's 2-core
/// machine with H.264: 4 peers at 640x360 30 fps took about one core, 10 peers at 160x90
/// 15 fps about 0.9 core (besides audio), 10 peers at 320x180 15 fps overloaded it.
const FRAME_FIXED_SECS: f64 = 0.45e-3;
const FRAME_PIXEL_SECS: f64 = 3.8e-9;
const ENCODE_COST: f64 = 3.0;

/// Share of the cores the demo's codecs may take: the rest is for the network, audio and
/// the progress line, so that handshakes and playout stay on time
const CODEC_SHARE: f64 = 0.5;

/// The best video size whose encodes (one per peer) and decodes (every peer decodes every
/// other) fit in [`CODEC_SHARE`] of `cores`; the smallest size if none does
fn video_for(peers: usize, cores: usize) -> (u32, u32, u32) {
    let n = peers as f64;
    let frames_per_fps = n * (n - 1.0) + ENCODE_COST * n;
    let budget = CODEC_SHARE * cores.max(1) as f64;
    VIDEO_LADDER
        .into_iter()
        .find(|&(w, h, fps)| {
            let per_frame = FRAME_FIXED_SECS + f64::from(w * h) * FRAME_PIXEL_SECS;
            f64::from(fps) * frames_per_fps * per_frame <= budget
        })
        .unwrap_or(VIDEO_LADDER[VIDEO_LADDER.len() - 1])
}

/// How often the progress line is redrawn on a terminal (elsewhere: once a second)
const PROGRESS_TTY: Duration = Duration::from_millis(200);

/// How often the demo checks whether its peers are done
const POLL: Duration = Duration::from_millis(20);

type Report = BTreeMap<PeerId, RemoteReport>;

pub(crate) async fn run(args: DemoArgs) -> Result<(), String> {
    let n = usize::from(args.peers);
    let config = SignalServerConfig {
        rooms: ServerConfig {
            max_peers_per_room: n,
            ..ServerConfig::default()
        },
        ..SignalServerConfig::default()
    };
    let server = SignalServer::bind_with(loopback_any_port(), config)
        .await
        .map_err(|e| e.to_string())?;
    let room = RoomId::new("demo").expect("a valid literal id; panic means bug");
    let ids: Vec<PeerId> = (1..=n)
        .map(|i| PeerId::new(format!("peer{i}")).expect("a valid id; panic means bug"))
        .collect();

    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let video_size = video_for(n, cores);
    let started = Instant::now();
    let joins = ids.iter().enumerate().map(|(i, id)| {
        let mut config = SessionConfig::new(server.url(), room.clone());
        config.session.peer_id = Some(id.clone());
        config.session.participant.seed = i as u64 + 1;
        config.session.participant.candidate_policy = CandidatePolicy::LoopbackOnly;
        config.session.participant.capabilities = Capabilities {
            audio: true,
            video: args.video,
            data: true,
        };
        let (w, h, fps) = video_size;
        let mut video = VideoEncoderConfig::new(VideoCodec::H264, w, h);
        video.fps = fps;
        video.bitrate_bps = crate::peer::bitrate_for(w, h, fps);
        config.session.participant.media.video = video;
        config.session.test_media = Some(TestMedia {
            audio: true,
            video: args.video.then_some(video_size),
        });
        Session::join(config)
    });
    let mut sessions = Vec::with_capacity(n);
    for joined in futures_util::future::join_all(joins).await {
        sessions.push(joined.map_err(|e| e.to_string())?);
    }
    let (w, h, fps) = video_size;
    let video = if args.video {
        format!(", {w}x{h} {fps} fps H.264 video (sized for {n} peers on {cores} cores)")
    } else {
        String::new()
    };
    println!(
        "{n} peers joined room {room} in {:.1} ms (data, Opus audio{video})",
        millis(started.elapsed()),
    );

    let mut watchers = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for (handle, mut events) in sessions {
        let (tx, rx) = watch::channel(Report::new());
        watchers.push((handle.peer_id().clone(), rx));
        let duration = args.duration;
        tasks.push(tokio::spawn(async move {
            let report = echo::run_echo(
                &handle,
                &mut events,
                tokio::time::sleep(duration),
                Some(&tx),
            )
            .await;
            let media = handle.stats().await.map(|s| s.peers).unwrap_or_default();
            let _ = handle.leave().await;
            report.map(|r| (r, media))
        }));
    }

    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        PROGRESS_TTY
    } else {
        Duration::from_secs(1)
    };
    let pairs = n * (n - 1) / 2;
    let run_started = Instant::now();
    let mut next_draw = tokio::time::Instant::now() + every;
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(POLL).await;
        let finishing = tasks.iter().all(|t| t.is_finished());
        if tokio::time::Instant::now() < next_draw && !finishing {
            continue;
        }
        next_draw += every;
        let reports: Vec<(PeerId, Report)> = watchers
            .iter()
            .map(|(id, rx)| (id.clone(), rx.borrow().clone()))
            .collect();
        let table = pair_rows(&reports, &BTreeMap::new());
        let connected = table.iter().filter(|r| r.connected).count();
        let messages: u64 = table.iter().map(|r| r.messages).sum();
        eprint!(
            "\r{:>5.1}s / {:.0}s  pairs connected {connected}/{pairs}  data messages {messages}   ",
            run_started.elapsed().as_secs_f64(),
            args.duration.as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();

    let mut reports = Vec::with_capacity(n);
    let mut media = BTreeMap::new();
    for ((id, _), task) in watchers.iter().zip(tasks) {
        let (report, stats) = task
            .await
            .map_err(|e| format!("peer {id} crashed: {e}"))?
            .map_err(|e| format!("peer {id}: {e}"))?;
        reports.push((id.clone(), report));
        media.insert(id.clone(), stats);
    }
    server.shutdown().await;

    let rows = pair_rows(&reports, &media);
    print_table(&rows);
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.connected)
        .map(|r| format!("{} <-> {}", r.a, r.b))
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "{} of {pairs} pairs failed to connect: {}",
            failed.len(),
            failed.join(", ")
        ));
    }
    println!("all {pairs} pairs connected");
    Ok(())
}

/// One peer pair as both ends saw it
struct PairRow {
    a: PeerId,
    b: PeerId,
    connected: bool,
    /// The later of the two ends' connect times
    connect: Option<Duration>,
    /// Data messages received by both ends from each other
    messages: u64,
    /// Mean of the two ends' round-trip times
    rtt: Option<Duration>,
    /// Capture-to-playout audio latency, both directions pooled (ms): p50, p95
    latency: Option<(f64, f64)>,
    /// Mean audio jitter-buffer delay of the two directions (ms)
    jitter_ms: Option<f64>,
    /// Worse of the two directions' audio loss fractions
    loss: Option<f64>,
    /// How fast the second peer's clock runs against the first's (ppm), from both directions
    /// (see [`pair_drift`]); `None` while it cannot be told apart from zero
    drift: Option<f64>,
}

type Media = BTreeMap<PeerId, BTreeMap<PeerId, PeerStats>>;

/// What `at` measured of `from`
fn stats<'a>(media: &'a Media, at: &PeerId, from: &PeerId) -> Option<&'a PeerStats> {
    media.get(at)?.get(from)
}

fn pair_rows(reports: &[(PeerId, Report)], media: &Media) -> Vec<PairRow> {
    let mut rows = Vec::new();
    for (i, (a, ra)) in reports.iter().enumerate() {
        for (b, rb) in &reports[i + 1..] {
            let ab = ra.get(b).cloned().unwrap_or_default();
            let ba = rb.get(a).cloned().unwrap_or_default();
            let rtts: Vec<Duration> = [ab.rtt, ba.rtt].into_iter().flatten().collect();
            let ends: Vec<&PeerStats> = [stats(media, a, b), stats(media, b, a)]
                .into_iter()
                .flatten()
                .collect();
            let audio: Vec<_> = ends.iter().filter_map(|s| s.audio.as_ref()).collect();
            let mut lat: Vec<f64> = audio
                .iter()
                .flat_map(|a| a.latency_ms.iter().copied())
                .collect();
            lat.sort_by(f64::total_cmp);
            let q = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
            let jitter: Vec<f64> = audio
                .iter()
                .filter_map(|a| a.jitter_buffer.mean_delay().map(millis))
                .collect();
            rows.push(PairRow {
                a: a.clone(),
                b: b.clone(),
                connected: ab.connected && ba.connected,
                connect: ab.connect_time.max(ba.connect_time),
                messages: ab.messages_received + ba.messages_received,
                rtt: (!rtts.is_empty()).then(|| rtts.iter().sum::<Duration>() / rtts.len() as u32),
                latency: (!lat.is_empty()).then(|| (q(0.5), q(0.95))),
                jitter_ms: (!jitter.is_empty())
                    .then(|| jitter.iter().sum::<f64>() / jitter.len() as f64),
                loss: audio
                    .iter()
                    .filter_map(|a| a.packets_lost_fraction.map(f64::from))
                    .reduce(f64::max),
                drift: pair_drift(stats(media, a, b), stats(media, b, a)),
            });
        }
    }
    rows
}

/// How fast b's clock runs against a's (ppm), from what a measured of b and b of a
///
/// Clock drift reads with opposite signs in the two directions (b fast for a is a slow for
/// b), while a change of delay on the machine (a busy start, other load) reads with the same
/// sign in both: half the difference keeps the first and cancels the second. Shown only when
/// it is larger than its 95% interval; with one direction alone, that direction's figure.
fn pair_drift(at_a: Option<&PeerStats>, at_b: Option<&PeerStats>) -> Option<f64> {
    let view = |s: Option<&PeerStats>| {
        let s = s?;
        Some((s.clock_drift_estimate_ppm?, s.clock_drift_uncertainty_ppm?))
    };
    match (view(at_a), view(at_b)) {
        (Some((x, ux)), Some((y, uy))) => {
            let (d, u) = ((x - y) / 2.0, ux.hypot(uy) / 2.0);
            (d.abs() >= u).then_some(d)
        }
        _ => [at_a, at_b]
            .into_iter()
            .flatten()
            .find_map(|s| s.clock_drift_ppm),
    }
}

fn print_table(rows: &[PairRow]) {
    println!(
        "{:<20} {:>10} {:>9} {:>8} {:>12} {:>12} {:>10} {:>6} {:>10}",
        "pair",
        "connect_ms",
        "messages",
        "rtt_ms",
        "latency_p50",
        "latency_p95",
        "jitter_ms",
        "loss",
        "drift_ppm"
    );
    let dash = "-";
    for r in rows {
        let pair = format!("{} <-> {}", r.a, r.b);
        let connect = r
            .connect
            .filter(|_| r.connected)
            .map_or_else(|| "failed".to_string(), |d| format!("{:.1}", millis(d)));
        let rtt = r
            .rtt
            .map_or_else(|| dash.to_string(), |d| format!("{:.2}", millis(d)));
        let num = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| dash.to_string(), |x| format!("{x:.digits$}"))
        };
        let (p50, p95) = (r.latency.map(|l| l.0), r.latency.map(|l| l.1));
        println!(
            "{pair:<20} {connect:>10} {:>9} {rtt:>8} {:>12} {:>12} {:>10} {:>6} {:>10}",
            r.messages,
            num(p50, 1),
            num(p95, 1),
            num(r.jitter_ms, 1),
            num(r.loss, 3),
            num(r.drift, 1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_shrinks_as_peers_grow_and_cores_shrink() {
        assert_eq!(video_for(4, 2), (640, 360, 30));
        assert_eq!(video_for(6, 2), (320, 180, 30));
        assert_eq!(video_for(10, 2), (160, 90, 15));
        assert_eq!(video_for(10, 8), (480, 270, 30));
        assert_eq!(video_for(2, 1), (640, 360, 30));
        // Never nothing: the smallest size when even that is too much.
        assert_eq!(video_for(10, 0), (160, 90, 15));
        let mut last = u64::MAX;
        for peers in 2..=10 {
            let (w, h, fps) = video_for(peers, 2);
            let px = u64::from(w * h * fps);
            assert!(px <= last, "{peers} peers: {w}x{h}@{fps}");
            last = px;
        }
    }

    fn drift(estimate: f64, uncertainty: f64) -> PeerStats {
        PeerStats {
            clock_drift_estimate_ppm: Some(estimate),
            clock_drift_uncertainty_ppm: Some(uncertainty),
            clock_drift_ppm: (estimate.abs() >= uncertainty).then_some(estimate),
            ..PeerStats::default()
        }
    }

    #[test]
    fn a_pair_shows_drift_only_when_the_directions_disagree_in_sign() {
        // b 40 ppm fast for a, a 40 ppm slow for b: a drift of 40.
        let shown = pair_drift(Some(&drift(42.0, 20.0)), Some(&drift(-38.0, 20.0)));
        assert!((shown.unwrap() - 40.0).abs() < 1e-9);
        // Both directions' delay shrinking alike (a busy start): no drift, although each
        // direction alone would show one.
        assert_eq!(
            pair_drift(Some(&drift(30.0, 20.0)), Some(&drift(26.0, 20.0))),
            None
        );
        // One direction only: its own figure, gated by its own interval.
        assert_eq!(pair_drift(Some(&drift(30.0, 20.0)), None), Some(30.0));
        assert_eq!(pair_drift(None, Some(&drift(10.0, 20.0))), None);
    }
}
