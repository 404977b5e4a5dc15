//! Case 5: a room of three, one meshrtc peer per driver and Chromium, full mesh, data, audio
//! and video

use std::time::Duration;

use serde_json::{json, Value};

use crate::blocking::{BlockingMedia, BlockingPeer};
use crate::data::{check_pair, PageRole, PairExpect};
use crate::harness::{num, run, Checks, World, EXIT_SLACK, LONG_RUN, PAGE_START};
use crate::media::{check_media, media_args, MediaExpect, FPS, HEIGHT, WIDTH};

const PROBES: &[usize] = &[8, 1200, 16_384];

/// alpha (`meshrtc peer`, the tokio driver) joins first; Chromium joins second and offers to
/// alpha; bravo (the blocking driver, in this process: [`BlockingPeer`]) joins third and
/// offers to alpha and to Chromium (so Chromium is an offerer and an answerer in one room).
/// Everyone sends Opus audio and VP8 video at 320x180. Once Chromium's channel to bravo is
/// open, all stay 8 s, then bravo leaves, then alpha. Every pair must connect and carry at
/// least 5 pings and pongs each way, the echoed probes, and audio and video both ways (80% of
/// the 10 s minimums of `media`).
///
/// One gap: a peer reads its media statistics when it leaves, and a peer that left before is
/// no longer in them (its `audio`/`video` come out `null`). So alpha's view of bravo's media
/// cannot be checked; bravo's view of alpha's media is (bravo leaves first), and bravo's
/// audio callback must have played out alpha's and Chromium's audio.
#[test]
fn three_party_room() {
    run("three_party_room", |w: &mut World| {
        let hold = Duration::from_secs(8);
        let (args, query) = media_args(Some("vp8"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        w.spawn_peer("alpha", LONG_RUN, &args)?;
        w.peer("alpha").wait_joined(Duration::from_secs(20))?;
        w.open_page(
            "page",
            &format!("id=chromium&probe_sizes=8,1200,16384&{query}"),
        )?;
        w.wait_page_connected("page", "alpha", PAGE_START)?;
        let bravo = BlockingPeer::start(
            &w.signal.url,
            &w.room,
            "bravo",
            BlockingMedia {
                codec: meshrtc::codec::VideoCodec::Vp8,
                width: WIDTH,
                height: HEIGHT,
                fps: FPS,
            },
        )?;
        w.wait_page_connected("page", "bravo", Duration::from_secs(20))?;
        std::thread::sleep(hold);
        let bravo_played = bravo.chunks_played();
        let bravo = bravo.finish()?;
        w.peer("alpha").terminate();
        let alpha = w.finish_peer("alpha", EXIT_SLACK)?;
        let page = w.wait_page_saw_leave("page", "alpha")?;
        // bravo left first: its `peer.left` came before alpha's, or (the bug this checks
        // for) only when the server's resume grace ran out, 20 s later, as `"timeout"`.
        let bravo_left = w
            .wait_page_saw_leave("page", "bravo")
            .map_or(Value::Null, |r| r["peers"]["bravo"]["left"].clone());
        let mut c = Checks::new();
        for (mesh, id, role) in [
            (&alpha, "alpha", PageRole::Offerer),
            (&bravo, "bravo", PageRole::Answerer),
        ] {
            check_pair(
                &mut c,
                mesh,
                &page,
                &PairExpect {
                    min_pings: 5.0,
                    page_role: role,
                    probe_sizes: PROBES,
                    burst: 0.0,
                    page_id: "chromium",
                    mesh_id: id,
                },
            );
            let expect = MediaExpect {
                video: Some("vp8"),
                scale: 0.8,
            };
            check_media(&mut c, mesh, "chromium", &page["peers"][id], id, &expect);
        }
        // The meshrtc pair.
        for (stats, me, other) in [(&alpha, "alpha", "bravo"), (&bravo, "bravo", "alpha")] {
            c.equal(
                &format!("meshrtc {me}: remote.{other}.connected"),
                &stats["remote"][other]["connected"],
                &json!(true),
            );
            let remote = |what: &str| num(stats, &format!("remote.{other}.{what}"));
            c.at_least(
                &format!("meshrtc {me}: pongs_received from {other}"),
                remote("data.pongs_received"),
                5.0,
            );
        }
        // alpha → bravo media, as bravo saw it (see above for the other direction).
        let from_alpha = |what: &str| num(&bravo, &format!("remote.alpha.{what}"));
        c.at_least(
            "meshrtc bravo (blocking): audio.frames_decoded from alpha",
            from_alpha("audio.frames_decoded"),
            200.0,
        );
        c.at_least(
            "meshrtc bravo (blocking): video.frames_decoded from alpha",
            from_alpha("video.frames_decoded"),
            80.0,
        );
        // 8 s of 10 ms chunks from each of two peers, at 80%: what the callback played.
        c.at_least(
            "meshrtc bravo (blocking): audio chunks its callback played out",
            Some(bravo_played as f64),
            2.0 * 800.0 * 0.8,
        );
        // A clean leave is told to the room at once (not after the server's resume grace).
        c.equal(
            "page: bravo left, reason",
            &bravo_left,
            &json!("disconnect"),
        );
        c.equal(
            "page: peers it knew",
            &json!(page["peers"].as_object().map(|o| o.len())),
            &json!(2),
        );
        c.finish()
    });
}
