//! RTCP sender reports and audio/video sync, end to end in virtual time

use std::time::Duration;

use crate::codec::testsrc::{TestPattern, Tone};
use crate::codec::VideoCodec;
use crate::signal::Capabilities;
use crate::tests::{perfect, Mesh};
use crate::{Config, Event};

fn av() -> Config {
    let mut c = Config {
        capabilities: Capabilities {
            audio: true,
            video: true,
            data: true,
        },
        ..Config::default()
    };
    c.media.video_codecs = vec![VideoCodec::Vp8];
    c.media.video.width = 160;
    c.media.video.height = 96;
    c
}

/// p0 sends a tone and video for `secs`; video is stamped `video_lag` earlier than it is
/// sent (a camera pipeline that is slower than the microphone's)
fn run_av(m: &mut Mesh, secs: u64, video_lag: Duration) {
    run_av_with(m, secs, |_| video_lag);
}

/// As [`run_av`], with the video lag a function of the time since the start
fn run_av_with(m: &mut Mesh, secs: u64, video_lag: impl Fn(Duration) -> Duration) {
    let mut tone = Tone::new(48_000, 1);
    let mut pattern = TestPattern::new(160, 96);
    let mut k = 0u64;
    for step in 0..secs * 100 {
        if step % 2 == 0 {
            let pcm = tone.next_samples(960);
            m.with(0, |p, now| p.send_audio(now, &pcm)).unwrap();
        }
        if k * 100 / 3 <= step * 10 {
            let f = pattern.next_frame();
            let lag = video_lag(Duration::from_millis(step * 10));
            m.with(0, |p, now| p.send_video(now - lag, &f)).unwrap();
            k += 1;
        }
        m.run_for(Duration::from_millis(10));
    }
}

#[test]
fn sender_reports_arrive_at_least_every_second() {
    let mut m = Mesh::new(vec![av(), av()], perfect(15));
    m.connect_all();
    run_av(&mut m, 12, Duration::ZERO);
    let st = m.parts[1].peer_stats(&Mesh::id(0)).unwrap();
    let a = st.audio.unwrap();
    let v = st.video.unwrap();
    assert!(a.sender_reports >= 10, "{a:?}");
    assert!(v.sender_reports >= 10, "{v:?}");
    // A small allowance for the report riding on the next timeout after its due time.
    assert!(a.max_sender_report_interval_ms.unwrap() <= 1_050.0, "{a:?}");
    assert!(v.max_sender_report_interval_ms.unwrap() <= 1_050.0, "{v:?}");
}

/// The audio delay lip-sync adds, sampled from every audio chunk's media time vs playout
fn audio_delays(m: &Mesh) -> Vec<(Duration, f64)> {
    m.events[1]
        .iter()
        .filter_map(|(t, e)| match e {
            Event::AudioPlayout { chunk, .. } => {
                Some((*t, t.as_secs_f64() - chunk.media_ticks as f64 / 48_000.0))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn late_video_delays_audio_in_small_steps_until_in_sync() {
    let mut m = Mesh::new(vec![av(), av()], perfect(15));
    m.connect_all();
    // Video captured 150 ms before it is sent: audio must wait ~150 ms more.
    run_av(&mut m, 12, Duration::from_millis(150));
    let v = m.parts[1].peer_stats(&Mesh::id(0)).unwrap().video.unwrap();
    let a = m.parts[1].peer_stats(&Mesh::id(0)).unwrap().audio.unwrap();
    let offset = v.av_offset_ms.expect("lip-sync engaged");
    assert!(offset.abs() <= 20.0, "A/V offset {offset} ms, {a:?}");
    // Audio already waits in its jitter buffer; lip-sync adds the rest of the 150 ms.
    assert!(a.sync_delay_ms >= 90.0, "sync delay {} ms", a.sync_delay_ms);
    // No jump larger than 80 ms in any one second of playout.
    let d = audio_delays(&m);
    for w in d.windows(2) {
        assert!(
            (w[1].1 - w[0].1).abs() < 0.012,
            "a step of {:?}",
            w[1].1 - w[0].1
        );
    }
    for i in 0..d.len() {
        let j = d
            .iter()
            .position(|x| x.0 >= d[i].0 + Duration::from_secs(1));
        if let Some(j) = j {
            assert!(
                (d[j].1 - d[i].1).abs() <= 0.080 + 0.005,
                "{} ms in one second at {:?}",
                (d[j].1 - d[i].1) * 1000.0,
                d[i].0
            );
        }
    }
}

/// Video that lags for a while now and then (a sender's pacer holding frames after its
/// estimate fell: 300 ms for 0.6 s of every 3 s) does not hold audio back: lip-sync follows
/// what video usually needs (with the 90th percentile of the last 3 s, audio followed these
/// lags and was late for seconds in the simulator's capacity step)
#[test]
fn passing_video_lags_do_not_hold_audio_back() {
    let mut m = Mesh::new(vec![av(), av()], perfect(15));
    m.connect_all();
    run_av_with(&mut m, 12, |t| {
        if t.as_millis() % 3000 >= 2400 {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        }
    });
    let a = m.parts[1].peer_stats(&Mesh::id(0)).unwrap().audio.unwrap();
    assert!(a.sync_delay_ms < 20.0, "sync delay {} ms", a.sync_delay_ms);
    // Audio's delay after the first seconds stays within 20 ms of its least.
    let d: Vec<f64> = audio_delays(&m)
        .into_iter()
        .filter(|(t, _)| *t >= Duration::from_secs(4))
        .map(|(_, d)| d)
        .collect();
    let least = d.iter().copied().fold(f64::INFINITY, f64::min);
    let most = d.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(
        most - least < 0.020,
        "audio delay from {:.0} to {:.0} ms",
        least * 1000.0,
        most * 1000.0
    );
}

#[test]
fn early_video_waits_for_its_audio() {
    let mut m = Mesh::new(vec![av(), av()], perfect(15));
    m.connect_all();
    run_av(&mut m, 8, Duration::ZERO);
    let v = m.parts[1].peer_stats(&Mesh::id(0)).unwrap().video.unwrap();
    let a = m.parts[1].peer_stats(&Mesh::id(0)).unwrap().audio.unwrap();
    // Video arrives before its audio plays (the jitter buffer holds audio): it is held
    // and shown with its audio, and audio needs no extra delay.
    let offset = v.av_offset_ms.expect("lip-sync engaged");
    assert!(offset.abs() <= 15.0, "A/V offset {offset} ms");
    assert!(a.sync_delay_ms < 10.0, "sync delay {} ms", a.sync_delay_ms);
    assert!(v.frames_rendered >= 200, "{v:?}");
}
