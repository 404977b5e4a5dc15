//! `meshrtc peer`: join a room, send test media or files, run the data echo, record what
//! played out, serve metrics, leave, write stats

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use meshrtc::codec::VideoEncoderConfig;
use meshrtc::ice::IceServer;
use meshrtc::session::TestMedia;
use meshrtc::signal::{Capabilities, PeerId};
use meshrtc::{CandidatePolicy, PeerStats};
use meshrtc_tokio::echo::{self, Echo, RemoteReport, StatsFile};
use meshrtc_tokio::{Events, Session, SessionConfig, SessionHandle};

use crate::{media, metrics, millis, AudioMode, DataMode, PeerArgs, VideoCodec, VideoMode};

pub(crate) async fn run(args: PeerArgs) -> Result<(), String> {
    // Open the stats file first: a bad path fails before joining, not after the run.
    let mut stats_file = match &args.stats_json {
        Some(path) => Some(
            File::create(path)
                .map_err(|e| format!("cannot write stats file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let data = args.data == DataMode::Echo;
    let send_audio = args.audio == AudioMode::Tone;
    let send_video = args.video == VideoMode::Testsrc;
    if send_audio && args.audio_file.is_some() {
        return Err("give --audio tone or --audio-file, not both".into());
    }
    if send_video && args.video_file.is_some() {
        return Err("give --video testsrc or --video-file, not both".into());
    }
    // Files and the metrics port are checked before joining: bad input fails at once.
    let opus_channels = meshrtc::codec::OpusConfig::default().channels;
    let opus_frame_ms = meshrtc::codec::OpusConfig::default().frame_ms;
    let audio_file = match &args.audio_file {
        Some(path) => Some(media::AudioFile::open(path, opus_channels, opus_frame_ms)?),
        None => None,
    };
    let video_file = match &args.video_file {
        Some(path) => Some(media::VideoFile::open(path)?),
        None => None,
    };
    let (width, height, fps) = match &video_file {
        Some(v) => (v.info.width, v.info.height, v.fps(args.fps)),
        None => (args.width, args.height, args.fps),
    };
    let recorder = match &args.record {
        Some(dir) => Some(media::Recorder::start(dir)?),
        None => None,
    };
    let metrics_listener = match args.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let codecs = match args.video_codec {
        Some(VideoCodec::H264) => vec![meshrtc::codec::VideoCodec::H264],
        Some(VideoCodec::Vp8) => vec![meshrtc::codec::VideoCodec::Vp8],
        Some(VideoCodec::Vp9) => vec![meshrtc::codec::VideoCodec::Vp9],
        None => meshrtc::codec::VideoCodec::ALL.to_vec(),
    };
    let codec = codecs[0];
    let mut config = SessionConfig::new(args.signal.clone(), args.room.clone());
    config.session.peer_id = args.id.clone();
    config.bind = args.bind.unwrap_or_else(every_interface);
    config.session.participant.ice_servers = ice_servers(&args)?;
    config.session.participant.ice_policy = args.ice_policy;
    config.session.participant.seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    // We can always receive and play audio and video; we send what the flags say.
    config.session.participant.capabilities = Capabilities {
        audio: true,
        video: true,
        data,
    };
    config.session.participant.media.video_codecs = codecs;
    let mut video = VideoEncoderConfig::new(codec, width, height);
    video.fps = fps;
    video.bitrate_bps = bitrate_for(width, height, fps);
    config.session.participant.media.video = video;
    config.session.participant.media.rate.enabled = args.rate_adaptation;
    debug_assert_eq!(
        config.session.participant.media.opus.channels,
        opus_channels
    );
    config.session.test_media = Some(TestMedia {
        audio: send_audio,
        video: send_video.then_some((width, height, fps)),
    });
    if config.bind.ip().is_loopback() {
        // A loopback socket cannot reach any other address.
        config.session.participant.candidate_policy = CandidatePolicy::LoopbackOnly;
    }
    let (handle, mut events) = Session::join(config).await.map_err(|e| e.to_string())?;
    println!(
        "joined room {} as {} (udp {})",
        handle.room(),
        handle.peer_id(),
        handle.local_addr()
    );
    // The run ends after --duration, or earlier on SIGINT/SIGTERM; either way we leave
    // cleanly and write the stats.
    let duration = args.duration;
    let stop = async move {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            r = crate::signal::wait_for_termination() => {
                if r.is_err() {
                    // Cannot watch signals: run for the full duration.
                    tokio::time::sleep(duration).await;
                }
            }
        }
    };
    let presence = metrics::Presence::default();
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            println!("metrics on http://{addr}/metrics");
        }
        metrics::serve(listener, handle.clone(), presence.clone());
    }
    let sources = media::Sources::start(&handle, audio_file, video_file.map(|v| (v, fps)))?;
    let tap = |event: &meshrtc_tokio::Event| {
        presence.on_event(event);
        if let Some(r) = &recorder {
            r.on_event(event);
        }
    };
    let report = if data {
        echo::run_echo_with(&handle, &mut events, stop, None, tap)
            .await
            .map_err(|e| e.to_string())?
    } else {
        observe(&handle, &mut events, stop, tap).await
    };
    drop(sources);
    let peer_id = handle.peer_id().clone();
    let room = handle.room().to_string();
    // Media counters live in the core's per-peer statistics: read them before leaving.
    let media = handle.stats().await.map(|s| s.peers).unwrap_or_default();
    handle.leave().await.map_err(|e| e.to_string())?;
    print_summary(&report, &media);
    if let Some(recorder) = recorder {
        for line in recorder.finish()? {
            println!("{line}");
        }
    }
    if let Some(file) = &mut stats_file {
        let json = StatsFile::new(&peer_id, room, &report, &media, data);
        let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
        writeln!(file, "{text}")
            .and_then(|()| file.flush())
            .map_err(|e| format!("cannot write stats file: {e}"))?;
    }
    Ok(())
}

/// The wildcard for every interface: dual-stack where IPv6 exists, else IPv4 only
fn every_interface() -> SocketAddr {
    let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0);
    if std::net::UdpSocket::bind(v6).is_ok() {
        v6
    } else {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)
    }
}

/// The `--ice-server` URLs, the credentials attached to each (they are needed by `turn:`
/// ones, and checked here so a missing one fails before joining)
fn ice_servers(args: &PeerArgs) -> Result<Vec<IceServer>, String> {
    let servers: Vec<IceServer> = args
        .ice_servers
        .iter()
        .map(|url| IceServer {
            urls: vec![url.clone()],
            username: args.ice_username.clone(),
            credential: args.ice_credential.clone(),
        })
        .collect();
    for s in &servers {
        s.endpoints().map_err(|e| {
            format!("{e} (give --ice-username and --ice-credential for turn: servers)")
        })?;
    }
    Ok(servers)
}

/// `--data none`: only watch peers come and go
async fn observe(
    handle: &SessionHandle,
    events: &mut Events,
    stop: impl std::future::Future<Output = ()>,
    mut tap: impl FnMut(&meshrtc_tokio::Event),
) -> BTreeMap<PeerId, RemoteReport> {
    let mut echo = Echo::new(handle.peer_id().clone());
    let watch = async {
        while let Some(event) = events.recv().await {
            tap(&event);
            // No data channel: there is never anything to answer.
            if let meshrtc_tokio::Event::Mesh(event) = &event {
                let _ = echo.handle_event(Instant::now(), event);
            }
        }
    };
    tokio::select! {
        () = watch => {}
        () = stop => {}
    }
    if let Ok(stats) = handle.stats().await {
        echo.record_stats(&stats.peers);
    }
    echo.report()
}

/// A sensible bitrate for a resolution and frame rate, within 500 kbit/s - 5 Mbit/s
pub(crate) fn bitrate_for(width: u32, height: u32, fps: u32) -> u32 {
    let bits = u64::from(width) * u64::from(height) * u64::from(fps) / 10;
    bits.clamp(500_000, 5_000_000) as u32
}

fn print_summary(report: &BTreeMap<PeerId, RemoteReport>, media: &BTreeMap<PeerId, PeerStats>) {
    if report.is_empty() {
        println!("no other peer connected");
    }
    for (peer, r) in report {
        let connect = r.connect_time.map_or_else(
            || "never connected".to_string(),
            |d| format!("connected in {:.1} ms", millis(d)),
        );
        let rtt = r
            .rtt
            .map_or_else(|| "-".to_string(), |d| format!("{:.2} ms", millis(d)));
        let av = media.get(peer).map_or_else(String::new, |s| {
            let a = s
                .audio
                .as_ref()
                .map_or(0, |a| a.jitter_buffer.frames_decoded);
            let v = s.video.as_ref().map_or(0, |v| v.frames_decoded);
            format!(", audio frames {a}, video frames {v}")
        });
        println!(
            "{peer}: {connect}, pings sent {}, pongs received {}, messages received {}, rtt {rtt}{av}",
            r.pings_sent, r.pongs_received, r.messages_received
        );
    }
}
