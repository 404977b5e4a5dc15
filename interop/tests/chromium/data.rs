//! Connection both ways of the offer, and data both ways on the data channel

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{at, num, run, Checks, World};

/// How long a meshrtc peer and Chromium stay connected in these tests
const DURATION: Duration = Duration::from_secs(8);
/// Upper bound on connect time, offer to usable data channel, on loopback (seen: 30–80 ms;
/// the margin is for a loaded CI machine)
pub const CONNECT_MAX_MS: f64 = 3000.0;

/// Binary probe sizes the page sends at open and expects back byte for byte
const PROBE_SIZES: &[usize] = &[8, 1200, 16_384, 65_536];

fn probe_query(sizes: &[usize]) -> String {
    let list: Vec<String> = sizes.iter().map(ToString::to_string).collect();
    format!("probe_sizes={}", list.join(","))
}

/// Who sent the offer on the Chromium side of a pair
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PageRole {
    Offerer,
    Answerer,
}

/// What one meshrtc↔Chromium pair must show after a run
pub struct PairExpect<'a> {
    /// Pings each side must have answered (and so the other side received)
    pub min_pings: f64,
    pub page_role: PageRole,
    /// Sizes of the binary probes the page sent at open; all must come back unchanged
    pub probe_sizes: &'a [usize],
    /// Text probes sent in a burst at open that must all come back
    pub burst: f64,
    pub page_id: &'a str,
    pub mesh_id: &'a str,
}

/// Checks a data pair from both ends: meshrtc's stats JSON and the page's report
pub fn check_pair(c: &mut Checks, mesh: &Value, page: &Value, e: &PairExpect<'_>) {
    let m = at(mesh, &format!("remote.{}", e.page_id));
    let (pid, mid) = (e.page_id, e.mesh_id);
    // meshrtc's view
    c.equal(
        &format!("meshrtc {mid}: remote.{pid}.connected"),
        &m["connected"],
        &json!(true),
    );
    c.at_most(
        &format!("meshrtc {mid}: connect_ms to {pid}"),
        num(m, "connect_ms"),
        CONNECT_MAX_MS,
    );
    c.at_least(
        &format!("meshrtc {mid}: pings_sent to {pid}"),
        num(m, "data.pings_sent"),
        e.min_pings,
    );
    let pings = num(m, "data.pings_sent").unwrap_or(0.0);
    c.at_least(
        &format!("meshrtc {mid}: pongs_received from {pid} (pings_sent - 1 in flight)"),
        num(m, "data.pongs_received"),
        (pings - 1.0).max(e.min_pings),
    );
    // Chromium's pings and its echoed probes reach meshrtc too.
    c.at_least(
        &format!("meshrtc {mid}: messages_received from {pid}"),
        num(m, "data.messages_received"),
        num(m, "data.pongs_received").unwrap_or(0.0) + e.min_pings,
    );

    // Chromium's view
    let p = &page["peers"][mid];
    c.equal(&format!("page {pid}: errors"), &page["errors"], &json!([]));
    c.equal(
        &format!("page {pid}: candidate errors with {mid}"),
        &p["remote_cand_errors"],
        &json!([]),
    );
    let role = match e.page_role {
        PageRole::Offerer => "offerer",
        PageRole::Answerer => "answerer",
    };
    c.equal(
        &format!("page {pid}: role towards {mid}"),
        &p["role"],
        &json!(role),
    );
    c.equal(
        &format!("page {pid}: data channel label with {mid}"),
        &p["dc_label"],
        &json!("meshrtc"),
    );
    c.at_most(
        &format!("page {pid}: connect_ms to {mid}"),
        num(p, "connect_ms"),
        CONNECT_MAX_MS,
    );
    c.at_least(
        &format!("page {pid}: pings_received from {mid}"),
        num(p, "pings_received"),
        e.min_pings,
    );
    let page_pings = num(p, "pings_sent").unwrap_or(0.0);
    c.at_least(
        &format!("page {pid}: pings_sent to {mid}"),
        Some(page_pings),
        e.min_pings,
    );
    c.at_least(
        &format!("page {pid}: pongs_received from {mid} (pings_sent - 1 in flight)"),
        num(p, "pongs_received"),
        (page_pings - 1.0).max(e.min_pings),
    );
    c.equal(
        &format!("page {pid}: probes changed on the way back from {mid}"),
        &p["probes_bad"],
        &json!(0),
    );
    let sent = num(p, "probes_sent").unwrap_or(0.0);
    // The binary probes and the burst go out at open, so they must all be back; of the
    // per-second text probes the last two may still be in flight when the peer leaves.
    let at_open = e.burst + e.probe_sizes.len() as f64;
    c.at_least(
        &format!("page {pid}: probes echoed unchanged by {mid} (of {sent} sent)"),
        num(p, "probes_ok"),
        (sent - 2.0).max(at_open),
    );
    c.at_least(
        &format!("page {pid}: binary probe bytes echoed unchanged by {mid}"),
        num(p, "probe_bytes_ok"),
        e.probe_sizes.iter().sum::<usize>() as f64,
    );
    // Loopback only: the page sent only 127.0.0.1 candidates, and the pair it uses ends at
    // meshrtc's 127.0.0.1 address.
    c.at_least(
        &format!("page {pid}: loopback candidates sent to {mid}"),
        num(p, "local_cands_sent"),
        1.0,
    );
    let remote = p["stats"]["selected_pair"]["remote"].as_str().unwrap_or("");
    c.check(
        remote.starts_with("udp 127.0.0.1:"),
        format!("page {pid}: selected pair's remote end {remote:?} is udp 127.0.0.1"),
    );
}

/// Case 1: Chromium joins first, meshrtc is the newcomer and offers.
#[test]
fn chromium_first_meshrtc_offers() {
    run("chromium_first_meshrtc_offers", |w: &mut World| {
        let query = format!("id=chromium&{}", probe_query(PROBE_SIZES));
        let (stats, page) = w.chromium_first(&query, &[], DURATION)?;
        let mut c = Checks::new();
        check_pair(
            &mut c,
            &stats,
            &page,
            &PairExpect {
                min_pings: 5.0,
                page_role: PageRole::Answerer,
                probe_sizes: PROBE_SIZES,
                burst: 0.0,
                page_id: "chromium",
                mesh_id: "mesh",
            },
        );
        c.finish()
    });
}

/// Case 2: meshrtc joins first, Chromium is the newcomer and offers (and opens the channel).
#[test]
fn meshrtc_first_chromium_offers() {
    run("meshrtc_first_chromium_offers", |w: &mut World| {
        let query = format!("id=chromium&{}", probe_query(PROBE_SIZES));
        let (stats, page) = w.meshrtc_first(&query, &[], DURATION)?;
        let mut c = Checks::new();
        check_pair(
            &mut c,
            &stats,
            &page,
            &PairExpect {
                min_pings: 5.0,
                page_role: PageRole::Offerer,
                probe_sizes: PROBE_SIZES,
                burst: 0.0,
                page_id: "chromium",
                mesh_id: "mesh",
            },
        );
        c.finish()
    });
}

/// Case 3: data both ways, in volume: meshrtc pings Chromium and Chromium pings meshrtc
/// once a second and each answers with pongs; Chromium also sends a burst of 200 text
/// messages (ASCII and non-ASCII, 0–2000 characters) and binary messages of 8 B to 64 KiB,
/// which meshrtc must echo byte for byte, in order, on the same channel (contracts/cli.md).
#[test]
fn data_both_ways() {
    run("data_both_ways", |w: &mut World| {
        let query = format!("id=chromium&burst=200&{}", probe_query(PROBE_SIZES));
        let (stats, page) = w.chromium_first(&query, &[], DURATION)?;
        let mut c = Checks::new();
        check_pair(
            &mut c,
            &stats,
            &page,
            &PairExpect {
                min_pings: 5.0,
                page_role: PageRole::Answerer,
                probe_sizes: PROBE_SIZES,
                burst: 200.0,
                page_id: "chromium",
                mesh_id: "mesh",
            },
        );
        // meshrtc counted every message Chromium sent it: the burst, the binary probes,
        // the pings, the pongs and the per-second text probes.
        let p = &page["peers"]["mesh"];
        let from_page = num(p, "probes_sent").unwrap_or(0.0)
            + num(p, "pings_sent").unwrap_or(0.0)
            + num(p, "pongs_sent").unwrap_or(0.0);
        c.at_least(
            "meshrtc: messages_received from chromium (all the page sent, 3 may be in flight)",
            num(&stats, "remote.chromium.data.messages_received"),
            from_page - 3.0,
        );
        c.finish()
    });
}

/// Chromium with a camera and a microphone offers audio, video and data to a meshrtc peer
/// that sends nothing (`--audio none --video none`), as any web app would: meshrtc takes
/// Chromium's media (at least 200 Opus frames and 80 video frames over the 8 s) and the data
/// channel works both ways. (A core peer whose capabilities exclude a media kind hits interop
/// bug 1 here; the CLI always receives, see `media::video_codec_mismatch_chromium_offers`.)
#[test]
fn chromium_with_camera_offers_to_peer_sending_nothing() {
    run(
        "chromium_with_camera_offers_to_peer_sending_nothing",
        |w: &mut World| {
            let args = ["--audio", "none", "--video", "none"];
            let (stats, page) = w.meshrtc_first("id=chromium&audio=1&video=1", &args, DURATION)?;
            let mut c = Checks::new();
            check_pair(
                &mut c,
                &stats,
                &page,
                &PairExpect {
                    min_pings: 5.0,
                    page_role: PageRole::Offerer,
                    probe_sizes: &[],
                    burst: 0.0,
                    page_id: "chromium",
                    mesh_id: "mesh",
                },
            );
            let m = at(&stats, "remote.chromium");
            c.at_least(
                "meshrtc: audio.frames_decoded",
                num(m, "audio.frames_decoded"),
                200.0,
            );
            c.at_least(
                "meshrtc: video.frames_decoded",
                num(m, "video.frames_decoded"),
                80.0,
            );
            let s = &page["peers"]["mesh"]["stats"];
            c.equal(
                "page: inbound audio (meshrtc sends none)",
                &s["inbound_audio"],
                &Value::Null,
            );
            c.equal(
                "page: inbound video (meshrtc sends none)",
                &s["inbound_video"],
                &Value::Null,
            );
            c.finish()
        },
    );
}

/// A message between 128 KiB and the 256 KiB that meshrtc's SDP allows
/// (`a=max-message-size:262144`): Chromium sends 200 000 bytes, meshrtc must echo them, and
/// the channel must go on carrying pings and pongs.
#[test]
fn data_message_of_200_kb() {
    run("data_message_of_200_kb", |w: &mut World| {
        let sizes = [200_000];
        let query = format!("id=chromium&{}", probe_query(&sizes));
        let (stats, page) = w.chromium_first(&query, &[], DURATION)?;
        let mut c = Checks::new();
        check_pair(
            &mut c,
            &stats,
            &page,
            &PairExpect {
                min_pings: 5.0,
                page_role: PageRole::Answerer,
                probe_sizes: &sizes,
                burst: 0.0,
                page_id: "chromium",
                mesh_id: "mesh",
            },
        );
        c.finish()
    });
}

/// Loopback only on both ends: when Chromium offers (and so controls ICE), the pair it picks
/// must be 127.0.0.1 on its side too. Chromium gathers host candidates on every interface;
/// the page signals only the loopback one, yet Chromium also checks from its other addresses
/// (192.0.2.2 here) to meshrtc's 127.0.0.1, and meshrtc answers those checks from a
/// peer-reflexive candidate, so the pair in use runs 127.0.0.1 → 192.0.2.2.
#[test]
fn loopback_only_on_both_ends_when_chromium_offers() {
    run(
        "loopback_only_on_both_ends_when_chromium_offers",
        |w: &mut World| {
            let (_stats, page) = w.meshrtc_first("id=chromium", &[], Duration::from_secs(3))?;
            let mut c = Checks::new();
            let pair = &page["peers"]["mesh"]["stats"]["selected_pair"];
            for end in ["local", "remote"] {
                let addr = pair[end].as_str().unwrap_or("");
                c.check(
                    addr.starts_with("udp 127.0.0.1:"),
                    format!("page: selected pair's {end} end {addr:?} is udp 127.0.0.1"),
                );
            }
            c.finish()
        },
    );
}
