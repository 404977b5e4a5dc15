//! Case 4: audio (Opus) both ways, and video both ways with H.264, VP8 and VP9
//!
//! meshrtc sends `--audio tone --video testsrc --video-codec X` at 320x180, 30 fps; Chromium
//! sends its fake camera (about 20 fps whatever is asked) and microphone, with
//! `setCodecPreferences` leaving only codec X (plus rtx/red/ulpfec), so both directions must
//! use X. Each codec runs with either side offering. Over the 10 s each side must decode at
//! least 100 video frames (of ~300 and ~200 sent) and meshrtc at least 80% of what Chromium
//! encoded; meshrtc must decode at least 250 Opus frames (of ~500) and Chromium play out at
//! least 5 s of audio with at most 20% concealment.

use std::time::Duration;

use serde_json::{json, Value};

use crate::data::CONNECT_MAX_MS;
use crate::harness::{at, num, run, Checks, World};

/// How long the meshrtc peer and Chromium stay connected
const DURATION: Duration = Duration::from_secs(10);
pub const WIDTH: u32 = 320;
pub const HEIGHT: u32 = 180;
pub const FPS: u32 = 30;

/// Minimum video frames decoded on each side over 10 s: 100 of the ~300 (~200) sent
const MIN_VIDEO_FRAMES: f64 = 100.0;
/// Minimum Opus frames (20 ms) meshrtc decodes over 10 s: 250 of the ~500 sent
const MIN_AUDIO_FRAMES: f64 = 250.0;
/// Minimum audio samples Chromium plays out over 10 s: 5 s at 48 kHz
const MIN_AUDIO_SAMPLES: f64 = 240_000.0;
/// Largest share of Chromium's played-out audio that may be concealment
const MAX_CONCEALED: f64 = 0.2;

/// What media a meshrtc↔Chromium pair must show
pub struct MediaExpect<'a> {
    /// The video codec both ways; `None`: no video either way
    pub video: Option<&'a str>,
    /// Fraction of the 10 s minimums (for shorter runs)
    pub scale: f64,
}

/// `meshrtc peer` arguments and page query for audio and (optionally) video in `codec`
pub fn media_args(codec: Option<&str>) -> (Vec<String>, String) {
    let mut query = format!("audio=1&width={WIDTH}&height={HEIGHT}&fps={FPS}");
    let mut args: Vec<String> = vec!["--audio".into(), "tone".into()];
    if let Some(codec) = codec {
        query.push_str(&format!("&video=1&codec={codec}"));
        for a in ["--video", "testsrc", "--video-codec", codec] {
            args.push(a.into());
        }
        for (flag, v) in [("--width", WIDTH), ("--height", HEIGHT), ("--fps", FPS)] {
            args.push(flag.into());
            args.push(v.to_string());
        }
    }
    (args, query)
}

/// A rate from the page's history samples (`[t_ms, frames_decoded, frames_encoded,
/// samples, concealed]`): column `col` per second, from its first non-zero sample to the last
fn page_rate(peer: &Value, col: usize) -> Option<f64> {
    let h = peer["history"].as_array()?;
    let rows: Vec<(f64, f64)> = h
        .iter()
        .filter_map(|r| Some((r[0].as_f64()?, r[col].as_f64()?)))
        .collect();
    let first = rows.iter().find(|(_, f)| *f > 0.0)?;
    let last = rows.last()?;
    (last.0 > first.0).then(|| (last.1 - first.1) * 1000.0 / (last.0 - first.0))
}

fn fmt_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |f| format!("{f:.1}"))
}

/// Checks audio and video both ways between meshrtc `mid` (its stats JSON `mesh`) and the page
/// (`page_peer`: the page's entry for `mid`)
pub fn check_media(
    c: &mut Checks,
    mesh: &Value,
    pid: &str,
    page_peer: &Value,
    mid: &str,
    e: &MediaExpect<'_>,
) {
    let m = at(mesh, &format!("remote.{pid}"));
    let s = &page_peer["stats"];
    // Audio, meshrtc → Chromium
    let audio_codec = s["inbound_audio"]["codec"].as_str().unwrap_or("");
    c.check(
        audio_codec.to_ascii_lowercase().starts_with("audio/opus"),
        format!("page {pid}: inbound audio codec from {mid} {audio_codec:?} is Opus"),
    );
    let samples = num(s, "inbound_audio.total_samples_received");
    c.at_least(
        &format!("page {pid}: inbound audio total_samples_received from {mid}"),
        samples,
        MIN_AUDIO_SAMPLES * e.scale,
    );
    let concealed = num(s, "inbound_audio.concealed_samples").unwrap_or(f64::MAX);
    c.at_most(
        &format!("page {pid}: inbound audio concealed share from {mid}"),
        samples.map(|t| concealed / t.max(1.0)),
        MAX_CONCEALED,
    );
    // Audio, Chromium → meshrtc
    c.at_least(
        &format!("meshrtc {mid}: audio.frames_decoded from {pid}"),
        num(m, "audio.frames_decoded"),
        MIN_AUDIO_FRAMES * e.scale,
    );
    let Some(codec) = e.video else {
        c.equal(
            &format!("page {pid}: inbound video from {mid}"),
            &s["inbound_video"],
            &Value::Null,
        );
        c.check(
            num(m, "video.frames_decoded").unwrap_or(0.0) == 0.0,
            format!(
                "meshrtc {mid}: no video decoded from {pid} ({})",
                m["video"]
            ),
        );
        return;
    };
    let want = format!("video/{codec}");
    for dir in ["inbound_video", "outbound_video"] {
        let got = s[dir]["codec"].as_str().unwrap_or("");
        c.check(
            got.to_ascii_lowercase().starts_with(&want),
            format!("page {pid}: {dir} codec with {mid} {got:?} is {want}"),
        );
    }
    // Video, meshrtc → Chromium
    c.at_least(
        &format!("page {pid}: inbound video frames_decoded from {mid}"),
        num(s, "inbound_video.frames_decoded"),
        MIN_VIDEO_FRAMES * e.scale,
    );
    c.at_least(
        &format!("page {pid}: inbound video key_frames_decoded from {mid}"),
        num(s, "inbound_video.key_frames_decoded"),
        1.0,
    );
    c.equal(
        &format!("page {pid}: inbound video frame_width from {mid}"),
        &s["inbound_video"]["frame_width"],
        &json!(WIDTH),
    );
    // Video, Chromium → meshrtc
    let encoded = num(s, "outbound_video.frames_encoded");
    c.at_least(
        &format!("page {pid}: outbound video frames_encoded to {mid}"),
        encoded,
        MIN_VIDEO_FRAMES * e.scale,
    );
    c.at_least(
        &format!("meshrtc {mid}: video.frames_decoded from {pid}"),
        num(m, "video.frames_decoded"),
        MIN_VIDEO_FRAMES * e.scale,
    );
    c.at_least(
        &format!(
            "meshrtc {mid}: video.frames_decoded from {pid}, of the {} Chromium encoded (80%)",
            encoded.unwrap_or(0.0)
        ),
        num(m, "video.frames_decoded"),
        (0.8 * encoded.unwrap_or(0.0)).floor(),
    );
    c.at_least(
        &format!("meshrtc {mid}: video.keyframes from {pid}"),
        num(m, "video.keyframes"),
        1.0,
    );
}

fn media_case(w: &mut World, codec: Option<&str>, chromium_offers: bool) -> Result<(), String> {
    let (args, query) = media_args(codec);
    let query = format!("id=chromium&{query}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (stats, page) = if chromium_offers {
        w.meshrtc_first(&query, &args, DURATION)?
    } else {
        w.chromium_first(&query, &args, DURATION)?
    };
    if w.peer("mesh").stderr().contains("not available yet") {
        return Err(
            "`meshrtc peer` says audio and video are not available yet: media is not \
                    wired into the CLI"
                .into(),
        );
    }
    let m = at(&stats, "remote.chromium");
    let p = &page["peers"]["mesh"];
    let mut c = Checks::new();
    c.equal("page: errors", &page["errors"], &json!([]));
    c.equal(
        "meshrtc: remote.chromium.connected",
        &m["connected"],
        &json!(true),
    );
    c.at_most("meshrtc: connect_ms", num(m, "connect_ms"), CONNECT_MAX_MS);
    c.at_most("page: connect_ms", num(p, "connect_ms"), CONNECT_MAX_MS);
    check_media(
        &mut c,
        &stats,
        "chromium",
        p,
        "mesh",
        &MediaExpect {
            video: codec,
            scale: 1.0,
        },
    );
    if let Some(codec) = codec {
        // Figures: decoded frames per second each way.
        let connect_s = num(m, "connect_ms").unwrap_or(0.0) / 1000.0;
        let mesh_fps = num(m, "video.frames_decoded")
            .map(|f| f / (DURATION.as_secs_f64() - connect_s).max(1.0));
        let who = if chromium_offers {
            "Chromium"
        } else {
            "meshrtc"
        };
        eprintln!(
            "FIGURE video {codec} ({who} offers): Chromium decodes {} fps of meshrtc's {FPS} \
             fps; meshrtc decodes {} fps of Chromium's {} fps",
            fmt_rate(page_rate(p, 1)),
            fmt_rate(mesh_fps),
            fmt_rate(page_rate(p, 2)),
        );
    }
    c.finish()
}

/// Opus both ways, no video.
#[test]
fn audio_opus_both_ways() {
    run("audio_opus_both_ways", |w| media_case(w, None, false));
}

#[test]
fn video_h264_meshrtc_offers() {
    run("video_h264_meshrtc_offers", |w| {
        media_case(w, Some("h264"), false)
    });
}

#[test]
fn video_h264_chromium_offers() {
    run("video_h264_chromium_offers", |w| {
        media_case(w, Some("h264"), true)
    });
}

#[test]
fn video_vp8_meshrtc_offers() {
    run("video_vp8_meshrtc_offers", |w| {
        media_case(w, Some("vp8"), false)
    });
}

#[test]
fn video_vp8_chromium_offers() {
    run("video_vp8_chromium_offers", |w| {
        media_case(w, Some("vp8"), true)
    });
}

#[test]
fn video_vp9_meshrtc_offers() {
    run("video_vp9_meshrtc_offers", |w| {
        media_case(w, Some("vp9"), false)
    });
}

#[test]
fn video_vp9_chromium_offers() {
    run("video_vp9_chromium_offers", |w| {
        media_case(w, Some("vp9"), true)
    });
}

/// No common video codec: meshrtc sends VP8 only, Chromium takes H.264 only. Whoever offers,
/// the video line must be declined cleanly while audio and data flow.
fn codec_mismatch(w: &mut World, chromium_offers: bool) -> Result<(), String> {
    let (args, _) = media_args(Some("vp8"));
    let (_, query) = media_args(Some("h264"));
    let query = format!("id=chromium&{query}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (stats, page) = if chromium_offers {
        w.meshrtc_first(&query, &args, DURATION)?
    } else {
        w.chromium_first(&query, &args, DURATION)?
    };
    let m = at(&stats, "remote.chromium");
    let p = &page["peers"]["mesh"];
    let mut c = Checks::new();
    c.equal("page: errors", &page["errors"], &json!([]));
    c.equal(
        "meshrtc: remote.chromium.connected",
        &m["connected"],
        &json!(true),
    );
    c.at_least(
        "meshrtc: pongs_received",
        num(m, "data.pongs_received"),
        5.0,
    );
    c.at_least("page: pongs_received", num(p, "pongs_received"), 5.0);
    check_media(
        &mut c,
        &stats,
        "chromium",
        p,
        "mesh",
        &MediaExpect {
            video: None,
            scale: 1.0,
        },
    );
    c.finish()
}

#[test]
fn video_codec_mismatch_meshrtc_offers() {
    run("video_codec_mismatch_meshrtc_offers", |w| {
        codec_mismatch(w, false)
    });
}

#[test]
fn video_codec_mismatch_chromium_offers() {
    run("video_codec_mismatch_chromium_offers", |w| {
        codec_mismatch(w, true)
    });
}
