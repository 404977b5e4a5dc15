//! The audio jitter buffer fed arbitrary frames (media times, arrival times, payloads whose
//! decoded length and validity the input decides), drift, sync delay and timeouts
//!
//! Frames come either as the receive path hands them over (32-bit RTP timestamps through a
//! `TimestampUnwrapper`, arrival and media time into a `DriftEstimator` whose estimate, once
//! a second, sets the buffer's drift, as `PeerMedia` does) or as raw media times.
//!
//! Checked: no panic; every chunk has the chunk's length and the stream's channels; chunks
//! play in order; media time moves forward while playout runs (a pause after the sender
//! went quiet may restart it anywhere); a timeout produces the chunks due and no more; the buffer's next timeout
//! is never in the past after a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use meshrtc::sync::{
    AudioDecode, AudioJitterBuffer, DriftConfig, DriftEstimator, JitterConfig, TimestampUnwrapper,
};

/// A decoder whose output the payload decides: byte 0 picks the frame length (or an
/// error), so every frame duration Opus allows (and odd ones) reaches the buffer
struct ByteDecoder {
    channels: usize,
}

const FRAME_SAMPLES: [usize; 8] = [0, 120, 240, 480, 960, 1920, 2880, 5760];

impl AudioDecode for ByteDecoder {
    fn channels(&self) -> usize {
        self.channels
    }
    fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, String> {
        let Some(&b) = payload.first() else {
            return Err("empty".into());
        };
        let n = match b % 9 {
            8 => usize::from(b / 9) * 7,
            k => FRAME_SAMPLES[usize::from(k)],
        };
        if n == 0 {
            return Err("bad frame".into());
        }
        Ok(vec![i16::from(b); n * self.channels])
    }
    fn conceal(&mut self, samples: usize) -> Vec<i16> {
        vec![0; samples * self.channels]
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    stereo: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// An RTP packet's timestamp and payload, `after_us` after the previous input
    Rtp {
        after_us: u16,
        timestamp: u32,
        payload: Vec<u8>,
    },
    /// A frame arriving `after_us` after the previous input, at media time `ticks` (relative
    /// to the last frame's, or absolute)
    Frame {
        after_us: u16,
        ticks: i32,
        relative: bool,
        payload: Vec<u8>,
    },
    Timeout {
        after_ms: u16,
    },
    Drift(i16),
    SyncDelay(u16),
}

/// Decodes the input as libFuzzer's typed targets do (`arbitrary_take_rest`) and runs it
pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        run_input(input);
    }
}

fn run_input(input: Input) {
    let channels = if input.stereo { 2 } else { 1 };
    let config = JitterConfig::default();
    let chunk_samples = (config.rate as u128 * config.chunk.as_nanos() / 1_000_000_000) as usize;
    let mut jb = AudioJitterBuffer::new(config, Box::new(ByteDecoder { channels }));
    #[allow(clippy::disallowed_methods)] // reason: an anchor for virtual time
    let start = Instant::now();
    let mut now = start;
    let mut ticks = 0i64;
    let mut last_playout: Option<Instant> = None;
    let mut last_ticks_out: Option<i64> = None;
    let mut unwrap = TimestampUnwrapper::default();
    let mut drift = DriftEstimator::new(DriftConfig::default());
    let mut last_drift: Option<Instant> = None;
    for op in input.ops.into_iter().take(2_000) {
        match op {
            Op::Rtp {
                after_us,
                timestamp,
                payload,
            } => {
                now += Duration::from_micros(u64::from(after_us));
                ticks = unwrap.unwrap(timestamp);
                drift.handle_sample(0, now, ticks as f64 / f64::from(config.rate));
                if last_drift.is_none_or(|t| now >= t + Duration::from_secs(1)) {
                    last_drift = Some(now);
                    if let Some(e) = drift.estimate() {
                        assert!(e.ppm.is_finite(), "drift {e:?}");
                        jb.set_drift_ppm(e.ppm);
                    }
                }
                jb.handle_frame(now, ticks, Arc::from(payload));
            }
            Op::Frame {
                after_us,
                ticks: t,
                relative,
                payload,
            } => {
                now += Duration::from_micros(u64::from(after_us));
                ticks = if relative {
                    ticks + i64::from(t)
                } else {
                    i64::from(t)
                };
                jb.handle_frame(now, ticks, Arc::from(payload));
            }
            Op::Timeout { after_ms } => {
                now += Duration::from_millis(u64::from(after_ms % 2_000));
                jb.handle_timeout(now);
                let mut n = 0;
                while let Some(c) = jb.poll_chunk() {
                    n += 1;
                    assert_eq!(c.channels, channels);
                    assert_eq!(c.samples.len(), chunk_samples * channels, "chunk length");
                    assert!(c.playout <= now, "chunk from the future");
                    if let Some(p) = last_playout {
                        assert!(c.playout >= p, "chunks out of order");
                    }
                    if let Some(t) = last_ticks_out {
                        // Media time moves forward, within what speed changes allow.
                        assert!(
                            c.media_ticks >= t - chunk_samples as i64 * 2,
                            "media time went back"
                        );
                    }
                    last_playout = Some(c.playout);
                    last_ticks_out = Some(c.media_ticks);
                }
                // At most the chunks of the elapsed time since playout could have started.
                let bound = (now - start).as_millis() as usize / 10 + 2;
                assert!(n <= bound, "{n} chunks after {:?}", now - start);
                match jb.poll_timeout() {
                    Some(t) => assert!(t > now, "next timeout {t:?} not after now {now:?}"),
                    // Paused (the sender went quiet): the next frame starts a new timeline,
                    // which may lie anywhere (a sender that restarted its RTP clock).
                    None => last_ticks_out = None,
                }
            }
            Op::Drift(ppm) => jb.set_drift_ppm(f64::from(ppm)),
            Op::SyncDelay(ms) => jb.set_sync_delay(Duration::from_millis(u64::from(ms % 2_000))),
        }
        let s = jb.stats();
        assert!(s.target_delay.is_finite() && s.target_delay >= 0.0);
    }
}
