//! The media path: `Participant` against raw str0m, in memory and in virtual time
//!
//! One sender, one receiver, a 1 ms link without loss, and the same pre-encoded frames
//! through both stacks: Opus-sized audio (20 ms frames of 80 bytes, 32 kbit/s) and 360p30
//! video at 1 Mbit/s with a keyframe every 2 s (the core's synthetic frames: realistic
//! sizes, on the wire as Opus and VP8, so no codec work on either side). The clock is
//! virtual: each stack runs `CALL` of call as fast as it can, and the figure is how many
//! datagrams per wall second it moved.
//!
//! * raw str0m: two `Rtc`s built with the settings a meshrtc peer uses (codecs Opus and
//!   VP8, 1 s stats and RTCP report intervals, no audio reordering, the same video
//!   reordering wait), frames written with `Writer::write`, received as `MediaData`
//! * meshrtc pass-through: two `Participant`s (`MediaConfig::decode` false, announcing no
//!   data channel, which raw str0m does not open either), frames sent
//!   with `send_encoded_audio`/`send_encoded_video`, received as `EncodedAudio` and encoded
//!   `VideoFrame` events: the core's own per-packet work (routing, its media bookkeeping,
//!   lip-sync timing of video) on top of str0m's
//! * meshrtc playout: the same with the receiver playing out (`decode` true, synthetic
//!   decoders): the audio jitter buffer producing a 10 ms chunk every 10 ms and video
//!   frames released in sync, which raw str0m does not do at all

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshrtc::codec::synthetic::{SyntheticAudioEncoder, SyntheticVideoEncoder};
use meshrtc::codec::{I420Frame, VideoCodec, VideoEncoder, VideoEncoderConfig};
use meshrtc::signal::server::{ConnId, Server, ServerConfig, ServerOutput};
use meshrtc::signal::{PeerId, RoomId, ServerFrame};
use meshrtc::{CandidatePolicy, Config, Event, Input, Output, Participant, Receive};

use crate::Spread;

/// Virtual length of one measured call
const CALL: Duration = Duration::from_secs(20);
/// One-way delay of the in-memory link
const LINK: Duration = Duration::from_millis(1);
const AUDIO_EVERY: Duration = Duration::from_millis(20);
const VIDEO_FPS: u32 = 30;

/// Pre-encoded frames, reused in a cycle
struct Frames {
    audio: Vec<Bytes>,
    video: Vec<(Bytes, bool)>,
}

impl Frames {
    fn new() -> Self {
        let mut a = SyntheticAudioEncoder::new(20, 1, 32_000).expect("an audio encoder");
        let pcm = vec![0i16; a.frame_samples()];
        let audio = (0..500)
            .map(|i| a.encode(&pcm, AUDIO_EVERY * i).expect("a frame"))
            .collect();
        let cfg = VideoEncoderConfig {
            fps: VIDEO_FPS,
            ..VideoEncoderConfig::new(VideoCodec::Vp8, 640, 360)
        };
        let mut v = SyntheticVideoEncoder::new(cfg).expect("a video encoder");
        let black = I420Frame::black(640, 360);
        // 10 s: five keyframe intervals, so the cycle keeps the keyframe spacing.
        let video = (0..10 * VIDEO_FPS)
            .map(|i| {
                let e = v
                    .encode(&black, Duration::from_secs(1) * i / VIDEO_FPS)
                    .expect("encoded")
                    .expect("a frame");
                (e.data, e.keyframe)
            })
            .collect();
        Self { audio, video }
    }
}

/// What one run measured
struct Run {
    /// Datagrams from the sender to the receiver per wall second, while the call ran
    packets_per_s: f64,
    /// The same per CPU second of the bench thread (both ends run on it)
    packets_per_cpu_s: f64,
    /// Virtual seconds of call per wall second
    speed: f64,
    /// Frames the receiving application got (audio, video) against frames sent
    delivered: (usize, usize),
    sent: (usize, usize),
}

/// One side of an in-memory call
trait End {
    fn addr(&self) -> SocketAddr;
    fn handle_timeout(&mut self, now: Instant);
    /// Signaling frames are waiting (the other end sent some): drain me now
    fn has_signals(&self) -> bool {
        false
    }
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]);
    /// Drains the outputs: datagrams into `out`, received frames counted; the next timeout
    fn drain(&mut self, now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>) -> Instant;
    fn send_audio(&mut self, now: Instant, data: &Bytes);
    fn send_video(&mut self, now: Instant, data: &Bytes, keyframe: bool, index: u32);
    /// Audio and video frames the application received
    fn received(&self) -> (usize, usize);
    fn connected(&self) -> bool;
}

/// Datagrams in flight: (arrival, to the receiver?, from, bytes)
type Wire = VecDeque<(Instant, bool, SocketAddr, Vec<u8>)>;

/// Runs the two ends until `until` (virtual) or `done`; `media` sends frames from `a`
#[allow(clippy::too_many_arguments)]
fn run(
    a: &mut dyn End,
    b: &mut dyn End,
    now: &mut Instant,
    until: Instant,
    frames: Option<&Frames>,
    sent: &mut (usize, usize),
    to_b: &mut usize,
    done: &dyn Fn(&dyn End, &dyn End) -> bool,
) {
    let mut wire: Wire = VecDeque::new();
    let mut out = Vec::new();
    let mut next_a = a.drain(*now, &mut out);
    push(&mut wire, *now, true, a.addr(), &mut out);
    let mut next_b = b.drain(*now, &mut out);
    push(&mut wire, *now, false, b.addr(), &mut out);
    let start = *now;
    let mut next_audio = start;
    let mut video_index = 0u32;
    let video_at = |i: u32| start + Duration::from_secs(1) * i / VIDEO_FPS;
    while *now < until && !done(a, b) {
        if a.has_signals() {
            next_a = a.drain(*now, &mut out);
            push(&mut wire, *now, true, a.addr(), &mut out);
        }
        if b.has_signals() {
            next_b = b.drain(*now, &mut out);
            push(&mut wire, *now, false, b.addr(), &mut out);
        }
        let mut t = next_a.min(next_b).min(until);
        if frames.is_some() {
            t = t.min(next_audio).min(video_at(video_index));
        }
        if let Some((at, ..)) = wire.front() {
            t = t.min(*at);
        }
        *now = (*now).max(t);
        if let Some(f) = frames {
            if next_audio <= *now {
                a.send_audio(*now, &f.audio[sent.0 % f.audio.len()]);
                sent.0 += 1;
                next_audio += AUDIO_EVERY;
                next_a = a.drain(*now, &mut out);
                push(&mut wire, *now, true, a.addr(), &mut out);
                continue;
            }
            if video_at(video_index) <= *now {
                let (data, key) = &f.video[video_index as usize % f.video.len()];
                a.send_video(*now, data, *key, video_index);
                sent.1 += 1;
                video_index += 1;
                next_a = a.drain(*now, &mut out);
                push(&mut wire, *now, true, a.addr(), &mut out);
                continue;
            }
        }
        if wire.front().is_some_and(|(at, ..)| *at <= *now) {
            let (_, to_receiver, from, data) = wire.pop_front().expect("a datagram");
            if to_receiver {
                *to_b += 1;
                b.handle_datagram(*now, from, &data);
                next_b = b.drain(*now, &mut out);
                push(&mut wire, *now, false, b.addr(), &mut out);
            } else {
                a.handle_datagram(*now, from, &data);
                next_a = a.drain(*now, &mut out);
                push(&mut wire, *now, true, a.addr(), &mut out);
            }
            continue;
        }
        if next_a <= *now {
            a.handle_timeout(*now);
            next_a = a
                .drain(*now, &mut out)
                .max(*now + Duration::from_micros(100));
            push(&mut wire, *now, true, a.addr(), &mut out);
        }
        if next_b <= *now {
            b.handle_timeout(*now);
            next_b = b
                .drain(*now, &mut out)
                .max(*now + Duration::from_micros(100));
            push(&mut wire, *now, false, b.addr(), &mut out);
        }
    }
}

fn push(
    wire: &mut Wire,
    now: Instant,
    to_receiver: bool,
    from: SocketAddr,
    out: &mut Vec<(SocketAddr, Vec<u8>)>,
) {
    for (_, data) in out.drain(..) {
        wire.push_back((now + LINK, to_receiver, from, data));
    }
}

/// Connects, then measures `CALL` of media from `a` to `b`
fn measure(a: &mut dyn End, b: &mut dyn End, now: &mut Instant, frames: &Frames) -> Run {
    let mut none = (0, 0);
    let mut ignored = 0;
    let limit = *now + Duration::from_secs(10);
    run(a, b, now, limit, None, &mut none, &mut ignored, &|a, b| {
        a.connected() && b.connected()
    });
    assert!(a.connected() && b.connected(), "the pair did not connect");
    // Let the handshake's tail (channel open, first reports) settle.
    let settle = *now + Duration::from_millis(200);
    run(a, b, now, settle, None, &mut none, &mut ignored, &|_, _| {
        false
    });
    let before = b.received();
    let mut sent = (0, 0);
    let mut to_b = 0;
    let started = Instant::now();
    let cpu = crate::thread_cpu();
    let end = *now + CALL;
    run(
        a,
        b,
        now,
        end,
        Some(frames),
        &mut sent,
        &mut to_b,
        &|_, _| false,
    );
    let cpu = crate::thread_cpu() - cpu;
    let wall = started.elapsed().as_secs_f64();
    let after = b.received();
    Run {
        packets_per_s: to_b as f64 / wall,
        packets_per_cpu_s: to_b as f64 / cpu,
        speed: CALL.as_secs_f64() / wall,
        delivered: (after.0 - before.0, after.1 - before.1),
        sent,
    }
}

// ---- raw str0m ----

struct RawEnd {
    rtc: str0m::Rtc,
    addr: SocketAddr,
    audio: Option<str0m::media::Mid>,
    video: Option<str0m::media::Mid>,
    received: (usize, usize),
    connected: bool,
    audio_written: u64,
    video_start: Option<Instant>,
}

fn raw_pair(now: Instant) -> (RawEnd, RawEnd) {
    use str0m::media::{Direction, MediaKind};
    use str0m::{Candidate, Rtc};

    let crypto = std::sync::Arc::new(str0m::crypto::from_feature_flags());
    let build = |addr: SocketAddr| {
        let mut rtc = Rtc::builder()
            .set_crypto_provider(crypto.clone())
            .set_stats_interval(Some(Duration::from_secs(1)))
            .set_rtcp_report_interval_audio(Duration::from_secs(1))
            .set_rtcp_report_interval_video(Duration::from_secs(1))
            .set_reordering_size_audio(0)
            .set_reordering_timeout_video(Some(Duration::from_millis(300)))
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a candidate"));
        RawEnd {
            rtc,
            addr,
            audio: None,
            video: None,
            received: (0, 0),
            connected: false,
            audio_written: 0,
            video_start: None,
        }
    };
    let mut a = build("127.0.0.1:10000".parse().expect("an address"));
    let mut b = build("127.0.0.1:20000".parse().expect("an address"));
    let mut change = a.rtc.sdp_api();
    a.audio = Some(change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None));
    a.video = Some(change.add_media(MediaKind::Video, Direction::SendRecv, None, None, None));
    let (offer, pending) = change.apply().expect("an offer");
    let answer = b.rtc.sdp_api().accept_offer(offer).expect("an answer");
    a.rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    (a, b)
}

impl RawEnd {
    fn write(&mut self, mid: Option<str0m::media::Mid>, now: Instant, ticks: u64, data: &Bytes) {
        use str0m::format::Codec;
        let Some(mid) = mid else { return };
        let Some(w) = self.rtc.writer(mid) else {
            return;
        };
        let want = if mid == self.audio.expect("audio") {
            Codec::Opus
        } else {
            Codec::Vp8
        };
        let Some(pt) = w
            .payload_params()
            .find(|p| p.spec().codec == want)
            .map(|p| p.pt())
        else {
            return;
        };
        let freq = if want == Codec::Opus {
            str0m::media::Frequency::FORTY_EIGHT_KHZ
        } else {
            str0m::media::Frequency::NINETY_KHZ
        };
        let time = str0m::media::MediaTime::new(ticks, freq);
        w.write(pt, now, time, &data[..]).expect("written");
    }
}

impl End for RawEnd {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.rtc
            .handle_input(str0m::Input::Timeout(now))
            .expect("timeout");
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let r = str0m::net::Receive::new(str0m::net::Protocol::Udp, from, self.addr, data)
            .expect("parse");
        self.rtc
            .handle_input(str0m::Input::Receive(now, r))
            .expect("receive");
    }

    fn drain(&mut self, _now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>) -> Instant {
        loop {
            match self.rtc.poll_output().expect("poll") {
                str0m::Output::Timeout(t) => return t,
                str0m::Output::Transmit(t) => out.push((t.destination, t.contents.to_vec())),
                str0m::Output::Event(e) => match e {
                    str0m::Event::Connected => self.connected = true,
                    str0m::Event::MediaAdded(m) => match m.kind {
                        str0m::media::MediaKind::Audio => self.audio = Some(m.mid),
                        str0m::media::MediaKind::Video => self.video = Some(m.mid),
                    },
                    str0m::Event::MediaData(d) => {
                        if Some(d.mid) == self.audio {
                            self.received.0 += 1;
                        } else {
                            self.received.1 += 1;
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    fn send_audio(&mut self, now: Instant, data: &Bytes) {
        let ticks = self.audio_written * 960;
        self.audio_written += 1;
        self.write(self.audio, now, ticks, data);
    }

    fn send_video(&mut self, now: Instant, data: &Bytes, _keyframe: bool, _index: u32) {
        let start = *self.video_start.get_or_insert(now);
        let ticks = (now - start).as_micros() as u64 * 9 / 100;
        self.write(self.video, now, ticks, data);
    }

    fn received(&self) -> (usize, usize) {
        self.received
    }

    fn connected(&self) -> bool {
        self.connected
    }
}

// ---- meshrtc ----

/// The signaling server both participants talk to, with no delay, and what it has for each
struct Signaling {
    server: Server,
    inbox: [Vec<ServerFrame>; 2],
}

struct MeshEnd {
    part: Participant,
    addr: SocketAddr,
    peer: PeerId,
    /// Audio chunks (10 ms) or frames, and video frames, the application got
    received: (usize, usize),
    /// 10 ms chunks per audio frame counted (2 when playing out, 1 in pass-through)
    chunks_per_frame: usize,
    conn: usize,
    signaling: Rc<RefCell<Signaling>>,
}

fn mesh_pair(now: Instant, decode: bool) -> (MeshEnd, MeshEnd) {
    let mut server = Server::new(ServerConfig::default());
    server.handle_connect(now, ConnId(0));
    server.handle_connect(now, ConnId(1));
    let signaling = Rc::new(RefCell::new(Signaling {
        server,
        inbox: [Vec::new(), Vec::new()],
    }));
    let build = |conn: usize, me: &str, peer: &str| {
        let mut c = Config {
            seed: conn as u64 + 1,
            candidate_policy: CandidatePolicy::LoopbackOnly,
            ..Config::default()
        };
        c.capabilities.audio = true;
        c.capabilities.video = true;
        // Raw str0m opens no data channel either: the same work.
        c.capabilities.data = false;
        c.media.video_codecs = vec![VideoCodec::Vp8];
        c.media.video = VideoEncoderConfig::new(VideoCodec::Vp8, 640, 360);
        c.media.decode = decode;
        c.media.synthetic = true;
        let addr: SocketAddr = format!("127.0.0.{}:4000", conn + 1)
            .parse()
            .expect("an address");
        let mut part = Participant::new(c, now);
        part.add_local_candidate(addr).expect("a candidate");
        part.join(
            RoomId::new("media").expect("a room"),
            Some(PeerId::new(me).expect("an id")),
        )
        .expect("joined");
        MeshEnd {
            part,
            addr,
            peer: PeerId::new(peer).expect("a peer id"),
            received: (0, 0),
            chunks_per_frame: if decode { 2 } else { 1 },
            conn,
            signaling: signaling.clone(),
        }
    };
    (build(0, "alice", "bob"), build(1, "bob", "alice"))
}

impl End for MeshEnd {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn handle_timeout(&mut self, now: Instant) {
        let _ = self.part.handle_input(Input::Timeout(now));
    }

    fn has_signals(&self) -> bool {
        !self.signaling.borrow().inbox[self.conn].is_empty()
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let r = Receive {
            source: from,
            destination: self.addr,
            contents: data,
        };
        let _ = self.part.handle_input(Input::Receive(now, r));
    }

    fn drain(&mut self, now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>) -> Instant {
        loop {
            let frames = std::mem::take(&mut self.signaling.borrow_mut().inbox[self.conn]);
            for f in frames {
                let _ = self.part.handle_input(Input::Signal(now, f));
            }
            let next = loop {
                match self.part.poll_output() {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => out.push((t.destination, t.contents)),
                    Output::Signal(f) => {
                        let mut s = self.signaling.borrow_mut();
                        s.server
                            .handle_text(now, ConnId(self.conn as u64), &f.to_json());
                        while let Some(o) = s.server.poll_output() {
                            if let ServerOutput::Send { conn, text } = o {
                                let frame = ServerFrame::parse(&text).expect("a server frame");
                                s.inbox[conn.0 as usize].push(frame);
                            }
                        }
                    }
                    Output::Event(e) => match e {
                        Event::EncodedAudio { .. } => self.received.0 += 1,
                        Event::AudioPlayout { chunk, .. } if !chunk.concealed => {
                            self.received.0 += 1;
                        }
                        Event::VideoFrame { .. } => self.received.1 += 1,
                        _ => {}
                    },
                    // No STUN/TURN servers here: nothing to resolve.
                    Output::Resolve(_) => {}
                }
            };
            if !self.has_signals() {
                return next;
            }
        }
    }

    fn send_audio(&mut self, now: Instant, data: &Bytes) {
        self.part
            .send_encoded_audio(now, data.clone(), 960)
            .expect("audio sent");
    }

    fn send_video(&mut self, now: Instant, data: &Bytes, _keyframe: bool, _index: u32) {
        self.part
            .send_encoded_video(now, VideoCodec::Vp8, data.clone())
            .expect("video sent");
    }

    fn received(&self) -> (usize, usize) {
        (self.received.0 / self.chunks_per_frame, self.received.1)
    }

    fn connected(&self) -> bool {
        self.part.is_connected(&self.peer)
    }
}

/// The media-path table: interleaved rounds of the three stacks
pub fn media(rounds: usize) {
    println!(
        "== media path in memory: {} s of Opus-sized audio (50 frames/s) and 360p30 video \
         (1 Mbit/s) one way, pre-encoded; median (min-max) of {rounds} interleaved rounds ==",
        CALL.as_secs()
    );
    let frames = Frames::new();
    #[allow(clippy::disallowed_methods)] // the bench's virtual clock starts at a real instant
    let origin = Instant::now();
    let mut raw = Vec::new();
    let mut pass = Vec::new();
    let mut play = Vec::new();
    let mut check = Vec::new();
    for _ in 0..rounds {
        let mut now = origin;
        let (mut a, mut b) = raw_pair(now);
        let r = measure(&mut a, &mut b, &mut now, &frames);
        check.push(("raw str0m", r.sent, r.delivered));
        raw.push(r);
        for (decode, list) in [(false, &mut pass), (true, &mut play)] {
            let mut now = origin;
            let (mut a, mut b) = mesh_pair(now, decode);
            let r = measure(&mut a, &mut b, &mut now, &frames);
            let name = if decode {
                "meshrtc playout"
            } else {
                "meshrtc pass-through"
            };
            check.push((name, r.sent, r.delivered));
            list.push(r);
        }
    }
    let pps = |runs: &[Run]| {
        let mut v: Vec<f64> = runs.iter().map(|r| r.packets_per_s / 1e3).collect();
        Spread::of(&mut v)
    };
    let per_cpu = |runs: &[Run]| {
        let mut v: Vec<f64> = runs.iter().map(|r| r.packets_per_cpu_s / 1e3).collect();
        Spread::of(&mut v)
    };
    let speed = |runs: &[Run]| {
        let mut v: Vec<f64> = runs.iter().map(|r| r.speed).collect();
        Spread::of(&mut v).median
    };
    let (r, p, q) = (pps(&raw), pps(&pass), pps(&play));
    let (rc, pc, qc) = (per_cpu(&raw), per_cpu(&pass), per_cpu(&play));
    println!("  kpackets per wall second, then per CPU second of the bench thread:");
    println!(
        "  raw str0m              {r} ({:.0}x real time); per CPU s {rc}",
        speed(&raw)
    );
    println!(
        "  meshrtc pass-through   {p} ({:.0}x real time), {:.2}x str0m; per CPU s {pc}, {:.2}x str0m",
        speed(&pass),
        p.median / r.median,
        pc.median / rc.median
    );
    println!(
        "  meshrtc with playout   {q} ({:.0}x real time), {:.2}x str0m; per CPU s {qc}, {:.2}x str0m",
        speed(&play),
        q.median / r.median,
        qc.median / rc.median
    );
    let (name, sent, got) = check[check.len() - 1];
    println!(
        "  (packets: datagrams sender to receiver; last round {name}: {}/{} audio frames, \
         {}/{} video frames delivered)",
        got.0, sent.0, got.1, sent.1
    );
    for (name, sent, got) in check {
        // A stack that drops media is not doing the same work.
        assert!(
            got.0 * 100 >= sent.0 * 95 && got.1 * 100 >= sent.1 * 95,
            "{name}: delivered {got:?} of {sent:?} frames"
        );
    }
}
