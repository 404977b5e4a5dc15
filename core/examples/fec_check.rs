//! Scratch (not committed): which Opus modes and FEC the test tone gets
use meshrtc::codec::testsrc::Tone;
use meshrtc::codec::{OpusConfig, OpusDecoder, OpusEncoder};
fn main() {
    for loss in [0u8, 5, 10, 20] {
        let mut enc = OpusEncoder::new(OpusConfig {
            expected_loss_pct: loss,
            ..OpusConfig::default()
        })
        .unwrap();
        let mut tone = Tone::new(48_000, 1);
        let mut fec = 0;
        let mut configs = std::collections::BTreeMap::new();
        for _ in 0..200 {
            let pcm = tone.next_samples(960);
            let p = enc.encode(&pcm).unwrap();
            *configs.entry(p[0] >> 3).or_insert(0) += 1;
            fec += OpusDecoder::packet_has_fec(&p) as u32;
        }
        println!("loss {loss}%: toc configs {configs:?}, with fec {fec}/200");
    }
}
