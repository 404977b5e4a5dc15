//! Case 5: a room of three, two meshrtc peers and Chromium, full mesh, data, audio and video

use std::time::Duration;

use serde_json::json;

use crate::data::{check_pair, PageRole, PairExpect};
use crate::harness::{num, run, Checks, World, EXIT_SLACK, LONG_RUN, PAGE_START};
use crate::media::{check_media, media_args, MediaExpect};

const PROBES: &[usize] = &[8, 1200, 16_384];

/// alpha joins first; Chromium joins second and offers to alpha; bravo joins third and offers
/// to alpha and to Chromium (so Chromium is an offerer and an answerer in one room). Everyone
/// sends Opus audio and VP8 video at 320x180. Once Chromium's channel to bravo is open, all
/// stay 8 s, then alpha is told to leave, then bravo. Every pair must connect and carry at
/// least 5 pings and pongs each way, the echoed probes, and audio and video both ways (80% of
/// the 10 s minimums of `media`).
///
/// One gap: `meshrtc peer` reads its media statistics when it leaves, and a peer that left
/// before is no longer in them (its `audio`/`video` come out `null`). So bravo's view of
/// alpha's media cannot be checked; alpha's view of bravo's media is (alpha leaves first).
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
        w.spawn_peer("bravo", LONG_RUN, &args)?;
        w.wait_page_connected("page", "bravo", Duration::from_secs(20))?;
        std::thread::sleep(hold);
        w.peer("alpha").terminate();
        let alpha = w.finish_peer("alpha", EXIT_SLACK)?;
        w.peer("bravo").terminate();
        let bravo = w.finish_peer("bravo", EXIT_SLACK)?;
        let page = w.wait_page_saw_leave("page", "alpha")?;
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
        // bravo → alpha media, as alpha saw it (see above for the other direction).
        let from_bravo = |what: &str| num(&alpha, &format!("remote.bravo.{what}"));
        c.at_least(
            "meshrtc alpha: audio.frames_decoded from bravo",
            from_bravo("audio.frames_decoded"),
            200.0,
        );
        c.at_least(
            "meshrtc alpha: video.frames_decoded from bravo",
            from_bravo("video.frames_decoded"),
            80.0,
        );
        c.equal(
            "page: peers it knew",
            &json!(page["peers"].as_object().map(|o| o.len())),
            &json!(2),
        );
        c.finish()
    });
}
