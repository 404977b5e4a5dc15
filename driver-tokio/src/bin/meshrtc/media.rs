//! Real media for `meshrtc peer`: `--audio-file in.wav` and `--video-file in.y4m` (looped, sent
//! in real time) and `--record DIR` (per remote peer, what was played out: `DIR/<peer>.wav`,
//! 48 kHz PCM after the jitter buffer, and `DIR/<peer>.y4m`, the decoded video as rendered)
//!
//! The files are read and written with the core's [`meshrtc::pipeline::files`] (WAV of any
//! common rate and channel count is resampled to 48 kHz there). Sources run on threads of
//! their own that pace themselves on an absolute schedule and hand frames to the session;
//! recording runs on a thread of its own fed by a bounded queue, so that a slow disk drops
//! frames (counted) instead of holding up the session's events.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshrtc::codec::I420Frame;
use meshrtc::media::VideoPayload;
use meshrtc::pipeline::files::{FileError, WavReader, WavWriter, Y4mInfo, Y4mReader, Y4mWriter};
use meshrtc::signal::PeerId;
use meshrtc_tokio::{Event as SessionEvent, SessionHandle};

/// A WAV file to send: checked (and its first frame read) before joining
pub(crate) struct AudioFile {
    path: PathBuf,
    channels: u16,
    frame_samples: usize,
}

impl AudioFile {
    /// Opens `path` as audio of `channels` (the Opus channel count) in frames of `frame_ms`
    pub(crate) fn open(path: &Path, channels: u16, frame_ms: u32) -> Result<Self, String> {
        let file = Self {
            path: path.to_path_buf(),
            channels,
            frame_samples: 48 * frame_ms as usize * usize::from(channels),
        };
        let mut reader = file.reader()?;
        let mut buf = vec![0; file.frame_samples];
        let n = reader.read(&mut buf).map_err(|e| file.error(&e))?;
        if n == 0 {
            return Err(format!("{}: no audio samples", path.display()));
        }
        Ok(file)
    }

    fn reader(&self) -> Result<WavReader<BufReader<File>>, String> {
        let f = File::open(&self.path)
            .map_err(|e| format!("cannot read audio file {}: {e}", self.path.display()))?;
        WavReader::new(BufReader::new(f), self.channels).map_err(|e| self.error(&e))
    }

    fn error(&self, e: &FileError) -> String {
        format!("audio file {}: {e}", self.path.display())
    }
}

/// A Y4M file to send: checked (header and first frame) before joining
pub(crate) struct VideoFile {
    path: PathBuf,
    /// The stream's header
    pub(crate) info: Y4mInfo,
}

impl VideoFile {
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let mut reader = open_y4m(path)?;
        let info = reader.info().clone();
        match reader.next_frame() {
            Ok(Some(_)) => Ok(Self {
                path: path.to_path_buf(),
                info,
            }),
            Ok(None) => Err(format!("{}: no video frames", path.display())),
            Err(e) => Err(format!("video file {}: {e}", path.display())),
        }
    }

    /// Frames per second: the header's, else `fallback`
    pub(crate) fn fps(&self, fallback: u32) -> u32 {
        self.info
            .fps()
            .map_or(fallback, |f| f.round().clamp(1.0, 240.0) as u32)
    }
}

fn open_y4m(path: &Path) -> Result<Y4mReader<BufReader<File>>, String> {
    let f =
        File::open(path).map_err(|e| format!("cannot read video file {}: {e}", path.display()))?;
    Y4mReader::new(BufReader::new(f)).map_err(|e| format!("video file {}: {e}", path.display()))
}

/// The threads that send the files; they stop when dropped
pub(crate) struct Sources {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Sources {
    /// Starts sending `audio` and `video` (looped) on `handle`, from now on
    pub(crate) fn start(
        handle: &SessionHandle,
        audio: Option<AudioFile>,
        video: Option<(VideoFile, u32)>,
    ) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        if let Some(audio) = audio {
            let (handle, stop, rt) = (handle.clone(), stop.clone(), rt.clone());
            let period = Duration::from_micros(
                (audio.frame_samples / usize::from(audio.channels)) as u64 * 1_000_000 / 48_000,
            );
            let mut reader = audio.reader()?;
            let t = std::thread::Builder::new()
                .name("meshrtc-audio-file".into())
                .spawn(move || {
                    paced(&stop, period, |capture| {
                        let mut pcm = vec![0i16; audio.frame_samples];
                        let mut n = 0;
                        let mut rewinds = 0;
                        while n < pcm.len() {
                            let got = match reader.read(&mut pcm[n..]) {
                                Ok(got) => got,
                                Err(e) => {
                                    tracing::warn!(error = %audio.error(&e), "audio file stops");
                                    return false;
                                }
                            };
                            n += got;
                            if got == 0 {
                                // The end: loop from the start (a file that gives nothing
                                // twice in a row is not looped forever).
                                rewinds += 1;
                                match audio.reader() {
                                    Ok(r) if rewinds < 3 => reader = r,
                                    _ => return false,
                                }
                            }
                        }
                        rt.block_on(handle.send_audio(capture, pcm)).is_ok()
                    });
                })
                .map_err(|e| format!("cannot start the audio file thread: {e}"))?;
            threads.push(t);
        }
        if let Some((video, fps)) = video {
            let (handle, stop) = (handle.clone(), stop.clone());
            let period = Duration::from_secs_f64(1.0 / f64::from(fps.max(1)));
            let mut reader = open_y4m(&video.path)?;
            let t = std::thread::Builder::new()
                .name("meshrtc-video-file".into())
                .spawn(move || {
                    paced(&stop, period, |capture| {
                        let frame = match reader.next_frame() {
                            Ok(Some(f)) => f,
                            Ok(None) => {
                                // The end: loop from the start.
                                let Ok(mut r) = open_y4m(&video.path) else {
                                    return false;
                                };
                                let Ok(Some(f)) = r.next_frame() else {
                                    return false;
                                };
                                reader = r;
                                f
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "video file stops");
                                return false;
                            }
                        };
                        rt.block_on(handle.send_video(capture, frame)).is_ok()
                    });
                })
                .map_err(|e| format!("cannot start the video file thread: {e}"))?;
            threads.push(t);
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Calls `frame(capture)` every `period` on an absolute schedule until `stop` or `frame`
/// says no; a late thread skips the frames it missed rather than bursting them
fn paced(stop: &AtomicBool, period: Duration, mut frame: impl FnMut(Instant) -> bool) {
    let start = Instant::now();
    let mut k: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start + period * k;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > period * 5 {
            // Far behind (a suspended process): start the schedule again from now.
            k = ((now - start).as_secs_f64() / period.as_secs_f64()) as u32;
            continue;
        }
        if !frame(due) {
            return;
        }
        k = k.saturating_add(1);
    }
}

/// Items queued for the recording thread
enum Item {
    Audio(PeerId, Vec<i16>, u16),
    Video(PeerId, Box<I420Frame>, i64),
}

/// Frames queued for the disk before new ones are dropped (about 2 s of 30 fps video)
const RECORD_QUEUE: usize = 256;

/// `--record DIR`: per remote peer, the audio played out and the video rendered
pub(crate) struct Recorder {
    tx: Option<SyncSender<Item>>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<Vec<String>, String>>>,
}

impl Recorder {
    /// Records into `dir` (created if missing)
    pub(crate) fn start(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create record directory {}: {e}", dir.display()))?;
        // Fail before joining if the directory is not writable.
        let probe = dir.join(".meshrtc-record-check");
        File::create(&probe)
            .map_err(|e| format!("cannot write in record directory {}: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let (tx, rx) = sync_channel(RECORD_QUEUE);
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("meshrtc-record".into())
            .spawn(move || write_all(&dir, &rx))
            .map_err(|e| format!("cannot start the recording thread: {e}"))?;
        Ok(Self {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            thread: Some(thread),
        })
    }

    /// Takes what to record from one session event
    pub(crate) fn on_event(&self, event: &SessionEvent) {
        let SessionEvent::Mesh(event) = event else {
            return;
        };
        let item = match event {
            meshrtc::Event::AudioPlayout { peer, chunk } => Item::Audio(
                peer.clone(),
                chunk.samples.clone(),
                u16::try_from(chunk.channels).unwrap_or(1),
            ),
            meshrtc::Event::VideoFrame {
                peer,
                payload: VideoPayload::Decoded(frame),
                media_ticks,
                ..
            } => Item::Video(peer.clone(), frame.clone(), *media_ticks),
            _ => return,
        };
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(item) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes every file; returns one line per file written
    pub(crate) fn finish(mut self) -> Result<Vec<String>, String> {
        drop(self.tx.take());
        let mut lines = self.thread.take().map_or_else(
            || Ok(Vec::new()),
            |t| {
                t.join()
                    .unwrap_or_else(|_| Err("recording thread panicked".into()))
            },
        )?;
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            lines.push(format!(
                "recording dropped {dropped} frames (disk too slow)"
            ));
        }
        Ok(lines)
    }
}

/// One remote peer's video file: the first frame waits for the second, whose media time
/// gives the frame rate of the Y4M header
struct VideoTrack {
    first: Option<(Box<I420Frame>, i64)>,
    writer: Option<Y4mWriter<BufWriter<File>>>,
}

fn write_all(dir: &Path, rx: &Receiver<Item>) -> Result<Vec<String>, String> {
    let mut audio: BTreeMap<PeerId, WavWriter<BufWriter<File>>> = BTreeMap::new();
    let mut video: BTreeMap<PeerId, VideoTrack> = BTreeMap::new();
    let file = |peer: &PeerId, ext: &str| -> Result<BufWriter<File>, String> {
        // Peer ids are [A-Za-z0-9_.-]{1,64}: a plain file name with the extension added.
        let path = dir.join(format!("{peer}.{ext}"));
        File::create(&path)
            .map(BufWriter::new)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))
    };
    let mut failed: Option<String> = None;
    for item in rx {
        if failed.is_some() {
            continue; // drain, so the session never blocks on us
        }
        let res = match item {
            Item::Audio(peer, samples, channels) => (|| {
                if !audio.contains_key(&peer) {
                    let w = WavWriter::new(file(&peer, "wav")?, channels.clamp(1, 2))
                        .map_err(|e| e.to_string())?;
                    audio.insert(peer.clone(), w);
                }
                let w = audio.get_mut(&peer).expect("inserted above");
                w.write(&samples)
                    .map_err(|e| format!("recording {peer}.wav: {e}"))
            })(),
            Item::Video(peer, frame, ticks) => (|| {
                let t = video.entry(peer.clone()).or_insert(VideoTrack {
                    first: None,
                    writer: None,
                });
                if let Some(w) = &mut t.writer {
                    return w
                        .write_frame(&frame)
                        .map_err(|e| format!("recording {peer}.y4m: {e}"));
                }
                let Some((first, first_ticks)) = t.first.take() else {
                    t.first = Some((frame, ticks));
                    return Ok(());
                };
                let fps = fps_between(first_ticks, ticks);
                let mut w = Y4mWriter::new(file(&peer, "y4m")?, first.width, first.height, fps, 1)
                    .map_err(|e| e.to_string())?;
                w.write_frame(&first)
                    .and_then(|()| w.write_frame(&frame))
                    .map_err(|e| format!("recording {peer}.y4m: {e}"))?;
                t.writer = Some(w);
                Ok(())
            })(),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "recording stops");
            failed = Some(e);
        }
    }
    let mut lines = Vec::new();
    for (peer, w) in audio {
        let frames = w.frames_written();
        w.finish()
            .map_err(|e| format!("finishing {peer}.wav: {e}"))?;
        lines.push(format!(
            "recorded {peer}.wav: {:.2} s of audio",
            frames as f64 / 48_000.0
        ));
    }
    for (peer, t) in video {
        let (frames, w) = match (t.writer, t.first) {
            (Some(w), _) => (w.frames_written(), w),
            (None, Some((first, _))) => {
                let mut w = Y4mWriter::new(file(&peer, "y4m")?, first.width, first.height, 30, 1)
                    .map_err(|e| e.to_string())?;
                w.write_frame(&first).map_err(|e| e.to_string())?;
                (1, w)
            }
            (None, None) => continue,
        };
        w.finish()
            .map_err(|e| format!("finishing {peer}.y4m: {e}"))?;
        lines.push(format!("recorded {peer}.y4m: {frames} frames"));
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(lines),
    }
}

/// Frames per second from two frames' media times (90 kHz), 1..=120 (30 when unclear)
fn fps_between(a: i64, b: i64) -> u32 {
    let d = b.saturating_sub(a);
    if d <= 0 {
        return 30;
    }
    (90_000.0 / d as f64).round().clamp(1.0, 120.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rate_from_media_time() {
        assert_eq!(fps_between(0, 3000), 30);
        assert_eq!(fps_between(1000, 7000), 15);
        assert_eq!(fps_between(5, 5), 30);
        assert_eq!(fps_between(0, 10_000_000), 1);
    }
}
