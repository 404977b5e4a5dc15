//! Case 5: relay-only through a real coturn on 127.0.0.1, both offer directions
//!
//! Chromium (`iceTransportPolicy: "relay"`) and `meshrtc peer --ice-policy relay` get the
//! same TURN server (long-term credentials) and may only use relayed candidates, so every
//! packet goes through coturn: data both ways (pings, probes) and Opus both ways. Both sides
//! must name the selected pair relay/relay, and neither may have signaled another kind of
//! candidate. Without coturn (Debian package `coturn`) the tests skip, unless `CI` is set.

use std::time::Duration;

use serde_json::{json, Value};

use crate::coturn::{self, Auth, Coturn};
use crate::data::{check_pair, PageRole, PairExpect};
use crate::harness::{at, encode, num, run, Checks, World};
use crate::media::{check_media, media_args, MediaExpect};

/// How long the meshrtc peer and Chromium stay connected
const DURATION: Duration = Duration::from_secs(8);

const USER: &str = "interop";
const PASSWORD: &str = "relay-only";

fn server() -> Option<Coturn> {
    coturn::available().then(|| {
        Coturn::start(Auth::LongTerm {
            user: USER,
            password: PASSWORD,
        })
    })
}

/// The page's query and meshrtc's flags for relay-only through `server`, with audio
fn relay_setup(server: &Coturn) -> (String, Vec<String>) {
    let url = format!("turn:{}?transport=udp", server.addr);
    let (mut args, media) = media_args(None);
    let query = format!(
        "id=chromium&{media}&probe_sizes=8,1200&turn={}&turn_user={USER}&turn_pass={PASSWORD}&policy=relay",
        encode(&url)
    );
    for a in [
        "--ice-server",
        &url,
        "--ice-username",
        USER,
        "--ice-credential",
        PASSWORD,
        "--ice-policy",
        "relay",
    ] {
        args.push(a.to_string());
    }
    (query, args)
}

/// What both ends must show: data and audio through the relay, relay/relay pairs, relayed
/// candidates only
fn check_relayed(c: &mut Checks, stats: &Value, page: &Value, role: PageRole, server: &Coturn) {
    check_pair(
        c,
        stats,
        page,
        &PairExpect {
            min_pings: 4.0,
            page_role: role,
            probe_sizes: &[8, 1200],
            burst: 0.0,
            page_id: "chromium",
            mesh_id: "mesh",
        },
    );
    let p = &page["peers"]["mesh"];
    check_media(
        c,
        stats,
        "chromium",
        p,
        "mesh",
        &MediaExpect {
            video: None,
            scale: 0.6,
        },
    );
    // meshrtc's view of the pair: its relayed address to Chromium's, both on coturn.
    let m = at(stats, "remote.chromium.candidate_pair");
    c.equal(
        "meshrtc: candidate_pair.local_type",
        &m["local_type"],
        &json!("relay"),
    );
    c.equal(
        "meshrtc: candidate_pair.remote_type",
        &m["remote_type"],
        &json!("relay"),
    );
    let on_server = |v: &Value| {
        v.as_str()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .is_some_and(|a| a.ip() == server.addr.ip() && a.port() != server.addr.port())
    };
    c.check(
        on_server(&m["local"]) && on_server(&m["remote"]),
        format!("meshrtc: both ends of the pair are coturn relays: {m}"),
    );
    // Chromium's view: its local candidate is a relay, and it signaled nothing else.
    let local = p["stats"]["selected_pair"]["local"].as_str().unwrap_or("");
    c.check(
        local.ends_with(" relay"),
        format!("page: selected pair's local end {local:?} is a relay"),
    );
    let types = &p["local_cand_types"];
    c.at_least(
        "page: relayed candidates signaled",
        num(types, "relay"),
        1.0,
    );
    c.check(
        types
            .as_object()
            .is_some_and(|o| o.keys().all(|k| k == "relay")),
        format!("page: only relayed candidates signaled ({types})"),
    );
}

/// Chromium joins first, meshrtc offers
#[test]
fn relay_only_chromium_first_meshrtc_offers() {
    let Some(server) = server() else {
        return;
    };
    run(
        "relay_only_chromium_first_meshrtc_offers",
        |w: &mut World| {
            let (query, args) = relay_setup(&server);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (stats, page) = w.chromium_first(&query, &args, DURATION)?;
            let mut c = Checks::new();
            check_relayed(&mut c, &stats, &page, PageRole::Answerer, &server);
            c.finish()
        },
    );
}

/// meshrtc joins first, Chromium offers
#[test]
fn relay_only_meshrtc_first_chromium_offers() {
    let Some(server) = server() else {
        return;
    };
    run(
        "relay_only_meshrtc_first_chromium_offers",
        |w: &mut World| {
            let (query, args) = relay_setup(&server);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (stats, page) = w.meshrtc_first(&query, &args, DURATION)?;
            let mut c = Checks::new();
            check_relayed(&mut c, &stats, &page, PageRole::Offerer, &server);
            c.finish()
        },
    );
}
