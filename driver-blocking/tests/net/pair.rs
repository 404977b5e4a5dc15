//! Two peers: blocking with tokio, and blocking with blocking

use meshrtc::DataMessage;
use meshrtc_blocking::{Event, RealtimeConfig, Session, WaitMode};

use crate::util::*;

fn text_from(e: &Event, from: &meshrtc::signal::PeerId) -> Option<String> {
    match e {
        Event::Mesh(meshrtc::Event::DataReceived {
            peer,
            message: DataMessage::Text(t),
            ..
        }) if peer == from => Some(t.clone()),
        _ => None,
    }
}

fn tokio_text_from(e: &Event, from: &meshrtc::signal::PeerId) -> Option<String> {
    match e {
        Event::Mesh(meshrtc::Event::DataReceived {
            peer,
            message: DataMessage::Text(t),
            ..
        }) if peer == from => Some(t.clone()),
        _ => None,
    }
}

/// The tokio driver offers (it joins second), the blocking driver answers; data both ways,
/// audio from the blocking peer to the tokio peer
#[test]
fn blocking_and_tokio_exchange_data_and_audio() {
    let rt = runtime();
    let server = server(&rt);
    let url = server.url();
    let (blk, tok) = (pid("blk"), pid("tok"));

    let Session {
        handle,
        events,
        capture,
        playout,
    } = join_blocking(&url, "pair", "blk");
    let (t_handle, mut t_events) = join_tokio(&rt, &url, "pair", "tok");

    assert_eq!(connected(&events, 1), vec![tok.clone()]);
    assert_eq!(connected_tokio(&rt, &mut t_events, 1), vec![blk.clone()]);

    handle
        .send_data(&tok, DataMessage::Text("from blocking".into()))
        .unwrap();
    rt.block_on(t_handle.send_data(&blk, DataMessage::Text("from tokio".into())))
        .unwrap();
    let got = wait_tokio(&rt, &mut t_events, "data from blk", |e| {
        tokio_text_from(e, &blk)
    });
    assert_eq!(got, "from blocking");
    let got = wait_for(&events, "data from tok", |e| text_from(e, &tok));
    assert_eq!(got, "from tokio");

    // Half a second of audible tone from the blocking peer's callback at the tokio peer.
    let audio = AudioLoop::start(capture, playout);
    tokio_hears(&rt, &mut t_events, &blk, 50);

    // And the other way: the tokio peer sends a tone frame every 20 ms; the blocking
    // peer's audio callback pops it from its playout ring.
    let sender = t_handle.clone();
    let tone_task = rt.spawn(async move {
        let mut tone = meshrtc::codec::testsrc::Tone::new(48_000, 1);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
        for _ in 0..150 {
            tick.tick().await;
            let now = std::time::Instant::now();
            if sender
                .send_audio(now, tone.next_samples(960))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut idx = Indices::default();
    let tok_at_blk = idx.wait(&events, &tok, |_| {});
    audio.wait_audible(tok_at_blk, 0, 50, "blocking hears tokio");
    rt.block_on(tone_task).unwrap();

    audio.stop();
    handle.leave().unwrap();
    rt.block_on(t_handle.leave()).unwrap();
}

/// Two blocking peers with simulated audio callbacks: audio and data both ways; one waits
/// with a read timeout, the other with `poll(2)`
#[test]
fn two_blocking_peers_audio_and_data_both_ways() {
    let rt = runtime();
    let server = server(&rt);
    let url = server.url();
    let (a_id, b_id) = (pid("ba"), pid("bb"));

    let a = join_blocking(&url, "duo", "ba");
    let b_config = blocking_config(&url, "duo", "bb");
    let rt_config = RealtimeConfig {
        wait: WaitMode::Poll,
        ..RealtimeConfig::default()
    };
    let b = Session::join_with(b_config, rt_config).unwrap();
    assert_eq!(connected(&a.events, 1), vec![b_id.clone()]);
    assert_eq!(connected(&b.events, 1), vec![a_id.clone()]);

    a.handle
        .send_data(&b_id, DataMessage::Binary(vec![1, 2, 3]))
        .unwrap();
    b.handle
        .broadcast(DataMessage::Text("hi a".into()))
        .unwrap();
    let got = wait_for(&b.events, "data from a", |e| match e {
        Event::Mesh(meshrtc::Event::DataReceived { message, .. }) => Some(message.clone()),
        _ => None,
    });
    assert_eq!(got, DataMessage::Binary(vec![1, 2, 3]));
    assert_eq!(
        wait_for(&a.events, "data from b", |e| text_from(e, &b_id)),
        "hi a"
    );

    let a_audio = AudioLoop::start(a.capture, a.playout);
    let b_audio = AudioLoop::start(b.capture, b.playout);
    let mut a_idx = Indices::default();
    let mut b_idx = Indices::default();
    let b_at_a = a_idx.wait(&a.events, &b_id, |_| {});
    let a_at_b = b_idx.wait(&b.events, &a_id, |_| {});
    a_audio.wait_audible(b_at_a, 0, 50, "a hears b");
    b_audio.wait_audible(a_at_b, 0, 50, "b hears a");

    let stats = a.handle.stats().unwrap();
    assert!(stats.signaling_connected);
    let rt_counts = a.handle.rt_counts();
    assert!(rt_counts.capture_pushed >= 50, "{rt_counts:?}");
    assert!(rt_counts.playout_pushed >= 50, "{rt_counts:?}");
    assert_eq!(rt_counts.playout_full, 0, "{rt_counts:?}");
    assert!(stats.peers[&b_id].connected);

    drop(a_audio);
    drop(b_audio);
    a.handle.leave().unwrap();
    b.handle.leave().unwrap();
}
