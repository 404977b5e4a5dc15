//! The browser client that `meshrtc signal` serves at `GET /` (driver-tokio/src/page/), in
//! headless Chromium with a fake camera and microphone, in a room with two `meshrtc peer`s

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{encode, num, run, Checks, World, EXIT_SLACK, LONG_RUN, PAGE_START};

/// The page as embedded in the binary
const PAGE: &str = include_str!("../../../driver-tokio/src/page/index.html");

/// Light media for two shared cores: 320x180 at 15 fps
const PEER_MEDIA: &[&str] = &[
    "--audio", "tone", "--video", "testsrc", "--width", "320", "--height", "180", "--fps", "15",
];

/// The page at the signaling server's own address (ws://ADDR/ → http://ADDR/)
fn page_url(w: &World, id: &str, extra: &str) -> String {
    let http = w.signal.url.replacen("ws://", "http://", 1);
    format!(
        "{http}?room={}&id={id}&net=loopback&report={}{extra}",
        encode(&w.room),
        encode(&w.report_url("client"))
    )
}

fn page_peer<'a>(page: &'a Value, peer: &str) -> &'a Value {
    &page["peers"][peer]
}

/// alpha (`meshrtc peer`, audio tone and test video) is in the room first; the page opens at
/// `/?room=R&id=browser` and joins at once, offering to alpha; then bravo joins and offers to
/// both (so the page is offerer and answerer). The page says one chat line to each peer when
/// its channel opens. After 6 s together both peers leave.
///
/// Checked from the page's own state (what it shows in its tiles): each peer's connection
/// and channel are up, remote video frames were decoded and the first one drawn, audio
/// samples arrived, the stats panel has RTT and bitrate figures, pings were answered, and its
/// chat line came back (the echo). Checked from each peer's `--stats-json`: the browser
/// connected, its audio and video frames were decoded there, and its pongs arrived.
#[test]
fn browser_client_page() {
    run("browser_client_page", |w: &mut World| {
        w.spawn_peer("alpha", LONG_RUN, PEER_MEDIA)?;
        w.peer("alpha").wait_joined(Duration::from_secs(20))?;
        let url = page_url(w, "browser", "&say=hello%20from%20the%20page");
        w.open_url("client", &url)?;
        let first = w.wait_page("client", PAGE_START, "first video frame from alpha", |r| {
            !page_peer(r, "alpha")["first_video_frame_ms"].is_null()
        })?;
        w.spawn_peer("bravo", LONG_RUN, PEER_MEDIA)?;
        w.wait_page(
            "client",
            Duration::from_secs(30),
            "first video frame from bravo",
            |r| !page_peer(r, "bravo")["first_video_frame_ms"].is_null(),
        )?;
        std::thread::sleep(Duration::from_secs(6));
        let page = w.wait_page("client", Duration::from_secs(5), "a fresh report", |_| true)?;
        w.peer("alpha").terminate();
        w.peer("bravo").terminate();
        let alpha = w.finish_peer("alpha", EXIT_SLACK)?;
        let bravo = w.finish_peer("bravo", EXIT_SLACK)?;

        let mut c = Checks::new();
        c.equal("page: state", &page["state"], &json!("joined"));
        c.equal("page: id", &page["id"], &json!("browser"));
        c.equal("page: errors", &page["errors"], &json!([]));
        for (id, stats) in [("alpha", &alpha), ("bravo", &bravo)] {
            let p = page_peer(&page, id);
            let n = |what: &str| num(p, what);
            c.equal(
                &format!("page: {id} connection"),
                &p["connection"],
                &json!("connected"),
            );
            c.equal(
                &format!("page: {id} data channel"),
                &p["dc"],
                &json!("open"),
            );
            c.at_least(
                &format!("page: {id} video frames decoded"),
                n("stats.frames_decoded"),
                30.0,
            );
            c.at_least(
                &format!("page: {id} audio samples received"),
                n("stats.audio_samples"),
                48_000.0,
            );
            c.at_least(
                &format!("page: {id} frame width"),
                n("stats.frame_width"),
                320.0,
            );
            c.at_least(
                &format!("page: {id} video in kbit/s"),
                n("stats.video_in_kbps"),
                10.0,
            );
            c.at_least(
                &format!("page: {id} audio in kbit/s"),
                n("stats.audio_in_kbps"),
                5.0,
            );
            c.at_least(&format!("page: {id} out kbit/s"), n("stats.out_kbps"), 10.0);
            c.check(
                !p["stats"]["rtt_ms"].is_null(),
                format!("page: {id} rtt_ms = {}", p["stats"]["rtt_ms"]),
            );
            c.check(
                !p["stats"]["jitter_buffer_ms"].is_null(),
                format!(
                    "page: {id} jitter_buffer_ms = {}",
                    p["stats"]["jitter_buffer_ms"]
                ),
            );
            c.at_least(
                &format!("page: {id} pongs received"),
                n("pongs_received"),
                3.0,
            );
            c.at_least(
                &format!("page: {id} pings received (answered)"),
                n("pings_received"),
                3.0,
            );
            c.at_least(&format!("page: {id} chat lines sent"), n("chat_sent"), 1.0);
            c.at_least(
                &format!("page: {id} chat lines echoed back"),
                n("chat_delivered"),
                1.0,
            );

            let from = |what: &str| num(stats, &format!("remote.browser.{what}"));
            c.equal(
                &format!("meshrtc {id}: remote.browser.connected"),
                &stats["remote"]["browser"]["connected"],
                &json!(true),
            );
            c.at_least(
                &format!("meshrtc {id}: audio frames decoded from the page"),
                from("audio.frames_decoded"),
                150.0,
            );
            c.at_least(
                &format!("meshrtc {id}: video frames decoded from the page"),
                from("video.frames_decoded"),
                30.0,
            );
            c.at_least(
                &format!("meshrtc {id}: pongs from the page"),
                from("data.pongs_received"),
                3.0,
            );
            // Pings, pongs and the echoed chat line.
            c.at_least(
                &format!("meshrtc {id}: messages from the page"),
                from("data.messages_received"),
                from("data.pongs_received").unwrap_or(0.0) + 2.0,
            );
        }
        let load_to_frame = num(page_peer(&first, "alpha"), "first_video_frame_ms");
        eprintln!(
            "browser_client_page: page load to first remote video frame {:.0} ms; the page is {} bytes in the binary",
            load_to_frame.unwrap_or(f64::NAN),
            PAGE.len()
        );
        c.finish()
    });
}
