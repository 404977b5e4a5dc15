//! SDP offers and answers edited from real ones into a participant: refused with an error
//! or used, never a panic; the participant carries on with its other peers
//!
//! Input: byte 0 picks the participant's capabilities and whether the edited SDP is an
//! offer to it or the answer to its own offer; the rest are line edits (see
//! `harness::mutate_sdp`).

use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use meshrtc::signal::{Notification, PeerInfo};

use super::harness::{caps, mutate_sdp, real_sdp, remote_id, Driven};

/// Decodes the input as libFuzzer's typed targets do (`arbitrary_take_rest`) and runs it
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(mode) = u8::arbitrary(&mut u) else {
        return;
    };
    let Ok(edits) = Vec::<(u8, u8, Vec<u8>)>::arbitrary_take_rest(u) else {
        return;
    };
    #[allow(clippy::disallowed_methods)] // reason: an anchor for virtual time
    let start = Instant::now();
    let remote = PeerInfo {
        peer_id: remote_id(0),
        capabilities: caps(7),
        metadata: serde_json::json!({}),
    };
    let honest = PeerInfo {
        peer_id: remote_id(1),
        capabilities: caps(7),
        metadata: serde_json::json!({}),
    };
    let (offer, answer) = real_sdp();
    if mode & 8 == 0 {
        // The remote joins after us: it offers, we answer.
        let mut d = Driven::joined(start, "me", caps(mode), &[honest]);
        d.notify(Notification::Joined(remote));
        d.notify(Notification::Offer {
            from: remote_id(0),
            sdp: mutate_sdp(offer, &edits),
        });
        finish(d, mode, &edits, offer);
    } else {
        // It was there before us: we offer (at the announce), it answers.
        let mut d = Driven::joined(start, "me", caps(mode), &[remote, honest]);
        d.notify(Notification::Answer {
            from: remote_id(0),
            sdp: mutate_sdp(answer, &edits),
        });
        finish(d, mode, &edits, offer);
    }
}

fn finish(mut d: Driven, mode: u8, edits: &[(u8, u8, Vec<u8>)], offer: &str) {
    // A second description on top (a renegotiation or a restart), then time.
    if mode & 16 != 0 {
        d.notify(Notification::Offer {
            from: remote_id(0),
            sdp: mutate_sdp(offer, &edits[edits.len() / 2..]),
        });
    }
    for _ in 0..4 {
        d.advance(Duration::from_millis(250), true);
    }
    // The honest peer is untouched by whatever the other one sent.
    assert!(
        d.p.peer_ids().any(|p| *p == remote_id(1)),
        "honest peer gone"
    );
}
