//! Playout timing proven in the simulator: jitter buffering, clock drift, latency
//!
//! Every figure here is measured in virtual time, so the assertions are exact and
//! repeatable; several seeds stand in for "over many runs".

mod drift;
mod jitter;

use std::collections::BTreeMap;
use std::time::Duration;

use meshrtc::codec::testsrc::{TestPattern, Tone};
use meshrtc::codec::VideoCodec;
use meshrtc::session::Event::Mesh;
use meshrtc::signal::{Capabilities, PeerId};
use meshrtc::{CandidatePolicy, Config, Event, PeerStats};
use meshrtc_sim::{Clock, HostId, HostOptions, Jitter, LinkConfig, Sim, SimConfig};

/// A two-party call: `a` sends, `b` receives and measures
pub struct Call {
    pub sim: Sim,
    pub a: HostId,
    pub b: HostId,
    /// Virtual capture time of each audio frame sent (index = frame number)
    audio_sent: Vec<Duration>,
    /// Virtual capture time of each video frame sent, by its RTP ticks
    video_sent: BTreeMap<i64, Duration>,
    local_start_ns: i128,
    audio_k: u64,
    video_k: u64,
}

pub fn config(audio: bool, video: bool) -> Config {
    let mut c = Config {
        capabilities: Capabilities {
            audio,
            video,
            data: true,
        },
        candidate_policy: CandidatePolicy::LoopbackOnly,
        ..Config::default()
    };
    c.media.video_codecs = vec![VideoCodec::Vp8];
    c.media.video.width = 160;
    c.media.video.height = 96;
    c.media.video.bitrate_bps = 300_000;
    c
}

pub fn jittery(latency_ms: u64, jitter: Jitter) -> LinkConfig {
    // Independent per-packet delays: jitter may reorder packets, as netem's does.
    LinkConfig {
        jitter,
        keep_order: false,
        ..LinkConfig::with_latency(Duration::from_millis(latency_ms))
    }
}

impl Call {
    /// Connects `a` (clock `clock_a`) and `b` over `a_to_b` (and a clean 20 ms link back)
    pub fn new(seed: u64, a_to_b: LinkConfig, clock_a: Clock, video: bool) -> Self {
        let mut sim = Sim::new(SimConfig {
            seed,
            ..SimConfig::default()
        });
        let a = sim.add_host_with(
            config(true, video),
            HostOptions {
                clock: clock_a,
                nat: None,
            },
        );
        let b = sim.add_host(config(true, video));
        sim.set_link(a, b, a_to_b).unwrap();
        sim.set_link(b, a, LinkConfig::with_latency(Duration::from_millis(20)))
            .unwrap();
        sim.join(a, "room", "a");
        sim.run_for(Duration::from_millis(50));
        sim.join(b, "room", "b");
        let ok = sim.run_until_cond(Duration::from_secs(10), |s| {
            s.participant(b).is_connected(&pid("a"))
        });
        assert!(ok, "call did not connect (seed {seed})");
        sim.run_for(Duration::from_millis(200));
        let local_start_ns = sim.clock(a).local_ns(sim.elapsed().as_nanos() as u64);
        Self {
            sim,
            a,
            b,
            audio_sent: Vec::new(),
            video_sent: BTreeMap::new(),
            local_start_ns,
            audio_k: 0,
            video_k: 0,
        }
    }

    /// Sends for `secs` seconds of the sender's own clock: 20 ms Opus frames and, with
    /// `video`, 30 fps; every tick lands exactly on the sender's local schedule
    pub fn stream(&mut self, secs: u64, video: bool) {
        let clock = self.sim.clock(self.a);
        let mut tone = Tone::new(48_000, 1);
        let mut pattern = TestPattern::new(160, 96);
        let end_audio = self.audio_k + secs * 50;
        let end_video = self.video_k + secs * 30;
        loop {
            let next_a = (self.audio_k < end_audio).then(|| {
                clock.virtual_at_or_after(self.local_start_ns + self.audio_k as i128 * 20_000_000)
            });
            let next_v = (video && self.video_k < end_video).then(|| {
                clock.virtual_at_or_after(
                    self.local_start_ns + (self.video_k as i128 * 1_000_000_000) / 30,
                )
            });
            let (t, is_audio) = match (next_a, next_v) {
                (Some(a), Some(v)) if a <= v => (a, true),
                (Some(a), None) => (a, true),
                (_, Some(v)) => (v, false),
                (None, None) => break,
            };
            self.sim.run_until(Duration::from_nanos(t));
            let at = self.sim.elapsed();
            if is_audio {
                let pcm = tone.next_samples(960);
                self.sim
                    .with(self.a, |p, now| p.send_audio(now, &pcm))
                    .unwrap();
                self.audio_sent.push(at);
                self.audio_k += 1;
            } else {
                let f = pattern.next_frame();
                let ticks = ((self.video_k as i128 * 90_000) / 30) as i64;
                self.sim
                    .with(self.a, |p, now| p.send_video(now, &f))
                    .unwrap();
                self.video_sent.insert(ticks, at);
                self.video_k += 1;
            }
        }
    }

    /// Mouth-to-ear latency of every played (not concealed) audio chunk, by playout time
    pub fn audio_latency(&self) -> Vec<(Duration, Duration)> {
        self.sim
            .events(self.b)
            .iter()
            .filter_map(|(at, e)| match e {
                Mesh(Event::AudioPlayout { chunk, .. }) if !chunk.concealed => {
                    let k = (chunk.media_ticks / 960) as usize;
                    let within = (chunk.media_ticks % 960) as f64 / 48_000.0;
                    let sent = *self.audio_sent.get(k)? + Duration::from_secs_f64(within);
                    Some((*at, at.checked_sub(sent)?))
                }
                _ => None,
            })
            .collect()
    }

    /// Capture-to-display latency of every video frame shown
    pub fn video_latency(&self) -> Vec<Duration> {
        self.sim
            .events(self.b)
            .iter()
            .filter_map(|(at, e)| match e {
                Mesh(Event::VideoFrame { media_ticks, .. }) => {
                    let sent = self.video_sent.get(media_ticks)?;
                    at.checked_sub(*sent)
                }
                _ => None,
            })
            .collect()
    }

    pub fn stats(&self) -> PeerStats {
        self.sim.peer_stats(self.b, &pid("a")).expect("b knows a")
    }
}

pub fn pid(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

/// The `q` quantile of durations
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn mouth_to_ear_under_50ms_and_video_under_100ms_at_sigma_5ms() {
    for seed in [1, 2, 3] {
        let link = jittery(
            20,
            Jitter::Normal {
                std_dev: Duration::from_millis(5),
            },
        );
        let mut call = Call::new(seed, link, Clock::default(), true);
        call.stream(20, true);
        let audio: Vec<Duration> = call
            .audio_latency()
            .into_iter()
            .filter(|(at, _)| *at > Duration::from_secs(5))
            .map(|(_, l)| l)
            .collect();
        let video: Vec<Duration> = call.video_latency();
        let (a95, v95) = (quantile(&audio, 0.95), quantile(&video, 0.95));
        eprintln!(
            "seed {seed}: audio p50 {:?} p95 {a95:?}, video p50 {:?} p95 {v95:?} ({} frames)",
            quantile(&audio, 0.5),
            quantile(&video, 0.5),
            video.len()
        );
        assert!(
            a95 < Duration::from_millis(50),
            "seed {seed}: audio p95 {a95:?}"
        );
        assert!(
            v95 < Duration::from_millis(100),
            "seed {seed}: video p95 {v95:?}"
        );
        assert!(
            video.len() > 500,
            "seed {seed}: {} video frames",
            video.len()
        );
    }
}
